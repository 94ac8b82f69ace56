//! Reading the record back for `composer-proxy usage`: every replica's segments on disk and,
//! with a bucket, in it; a replica's local segment and its bucket copy counted once; lines
//! filtered and grouped into rows.
//!
//! A local segment and its bucket copy are two snapshots of one file, one usually a prefix
//! of the other. They are merged line by line, each distinct line as often as the copy with
//! most of it has it: the longer copy wins, and a copy made before a cache directory was lost
//! and one written since both count.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;

use super::in_bucket;
use super::segments::{self, SegmentName};
use super::Line;
use crate::bucket::{Bucket, BucketError};
use crate::config::NamePattern;

/// `--since`: a duration back from `now` (`30d`, `12h`, `2w`), a UTC date (`2026-11-01`) or
/// an RFC 3339 time (`2026-11-01T09:00:00Z`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "--since {text:?}: expected a duration such as 30d or 12h, a date such as \
             2026-11-01, or a time such as 2026-11-01T09:00:00Z"
        )
    };
    if text.starts_with(|c: char| c.is_ascii_digit()) && !text.contains('-') {
        let back = humantime::parse_duration(text).map_err(|_| bad())?;
        return now.checked_sub(back).ok_or_else(bad);
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full).map_err(|_| bad())
}

/// Which downloads a report counts.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since: Option<SystemTime>,
    pub view: Option<String>,
    pub token: Option<String>,
    pub package: Option<NamePattern>,
}

impl Filter {
    fn admits(&self, line: &Line) -> bool {
        self.view
            .as_ref()
            .is_none_or(|v| line.view.as_ref() == Some(v))
            && self
                .token
                .as_ref()
                .is_none_or(|t| line.token.as_ref() == Some(t))
            && self
                .package
                .as_ref()
                .is_none_or(|p| p.matches(&line.package))
            && self.since.is_none_or(|since| {
                humantime::parse_rfc3339(&line.time).is_ok_and(|at| at >= since)
            })
    }

    /// Whether a segment can hold anything since `since`.
    fn wants(&self, name: SegmentName) -> bool {
        self.since.is_none_or(|since| name.end() > since)
    }
}

/// One row of the report: the downloads of one version of a package through one view with
/// one token from one account. The JSON form of the command is a list of these; the field
/// names are stable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub package: String,
    pub version: Option<String>,
    pub view: Option<String>,
    pub token: Option<String>,
    pub upstream: String,
    pub count: u64,
    /// The latest download's time, RFC 3339 UTC.
    pub last: String,
}

/// The lines read from every source.
#[derive(Debug, Default)]
pub struct Gathered {
    pub lines: Vec<Line>,
    /// Lines that are not a record (damaged, or from a newer version).
    pub unreadable: usize,
    /// Replicas whose segments were read.
    pub replicas: usize,
}

/// Reads every replica's segments under `dir` (`<cache_dir>/usage`) and, with a bucket, in
/// it, skipping segments wholly before `filter.since`.
pub async fn gather(
    dir: &Path,
    bucket: Option<&Bucket>,
    filter: &Filter,
) -> Result<Gathered, GatherError> {
    let mut copies: BTreeMap<(String, SegmentName), Vec<Bytes>> = BTreeMap::new();
    for (replica, name, bytes) in read_local(dir, filter)? {
        copies.entry((replica, name)).or_default().push(bytes);
    }
    if let Some(bucket) = bucket {
        for stored in in_bucket::list(bucket).await? {
            if !filter.wants(stored.segment.name) {
                continue;
            }
            let read = in_bucket::read(bucket, &stored.replica, stored.segment.name).await?;
            if let Some(bytes) = read {
                copies
                    .entry((stored.replica, stored.segment.name))
                    .or_default()
                    .push(bytes);
            }
        }
    }
    let mut gathered = Gathered::default();
    let mut replicas: Vec<&str> = copies.keys().map(|(r, _)| r.as_str()).collect();
    replicas.dedup();
    gathered.replicas = replicas.len();
    for copies in copies.values() {
        for line in merge_copies(copies) {
            match serde_json::from_slice::<Line>(line) {
                Ok(line) => gathered.lines.push(line),
                Err(_) => gathered.unreadable += 1,
            }
        }
    }
    Ok(gathered)
}

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("cannot read the usage record in {dir}: {source}")]
    Local {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the usage record in the bucket: {0}")]
    Bucket(#[from] BucketError),
}

fn read_local(
    dir: &Path,
    filter: &Filter,
) -> Result<Vec<(String, SegmentName, Bytes)>, GatherError> {
    let failed = |source| GatherError::Local {
        dir: dir.display().to_string(),
        source,
    };
    let folders = match std::fs::read_dir(dir) {
        Ok(folders) => folders,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(failed(e)),
    };
    let mut found = Vec::new();
    for folder in folders.flatten() {
        let Some(replica) = folder.file_name().to_str().map(str::to_string) else {
            continue;
        };
        for segment in segments::list(&folder.path()).map_err(failed)? {
            if !filter.wants(segment.name) {
                continue;
            }
            match std::fs::read(folder.path().join(segment.name.file_name())) {
                Ok(bytes) => found.push((replica.clone(), segment.name, Bytes::from(bytes))),
                // Removed by the bounds since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(e)),
            }
        }
    }
    Ok(found)
}

/// The complete lines of copies of one segment, each as often as the copy with most of it
/// has it. A last line without its newline is being written and is left out.
fn merge_copies(copies: &[Bytes]) -> Vec<&[u8]> {
    let mut most: HashMap<&[u8], usize> = HashMap::new();
    for copy in copies {
        let mut counts: HashMap<&[u8], usize> = HashMap::new();
        let complete = match copy.iter().rposition(|&b| b == b'\n') {
            Some(end) => &copy[..end],
            None => continue,
        };
        for line in complete.split(|&b| b == b'\n') {
            if !line.is_empty() {
                *counts.entry(line).or_default() += 1;
            }
        }
        for (line, n) in counts {
            let entry = most.entry(line).or_default();
            *entry = (*entry).max(n);
        }
    }
    let mut lines = Vec::new();
    for (line, n) in most {
        lines.extend(std::iter::repeat_n(line, n));
    }
    lines
}

/// The admitted lines grouped into rows, sorted by package, version, view, token, upstream.
pub fn group(lines: &[Line], filter: &Filter) -> Vec<Row> {
    type Key<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );
    let mut rows: BTreeMap<Key<'_>, (u64, &str)> = BTreeMap::new();
    for line in lines.iter().filter(|l| filter.admits(l)) {
        let key = (
            line.package.as_str(),
            line.version.as_deref(),
            line.view.as_deref(),
            line.token.as_deref(),
            line.upstream.as_str(),
        );
        let row = rows.entry(key).or_insert((0, ""));
        row.0 += 1;
        // The one time format sorts as text.
        if line.time.as_str() > row.1 {
            row.1 = &line.time;
        }
    }
    rows.into_iter()
        .map(
            |((package, version, view, token, upstream), (count, last))| Row {
                package: package.to_string(),
                version: version.map(str::to_string),
                view: view.map(str::to_string),
                token: token.map(str::to_string),
                upstream: upstream.to_string(),
                count,
                last: last.to_string(),
            },
        )
        .collect()
}

/// The rows as a table for people; `-` for no view (the merged root or an upstream's own
/// URL), no token and no version.
pub fn table(rows: &[Row]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.package.clone(),
                dash(&r.version),
                dash(&r.view),
                dash(&r.token),
                r.upstream.clone(),
                r.count.to_string(),
                // Seconds are enough for people.
                r.last.get(..19).map_or(r.last.clone(), |t| format!("{t}Z")),
            ]
        })
        .collect();
    let header = [
        "PACKAGE", "VERSION", "VIEW", "TOKEN", "UPSTREAM", "COUNT", "LAST",
    ];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                // Counts align right.
                5 => format!("{cell:>w$}"),
                _ => format!("{cell:<w$}"),
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).expect("time")
    }

    #[test]
    fn since_takes_durations_dates_and_times() {
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(parse_since("30d", now), Ok(at("2026-11-01T12:00:00Z")));
        assert_eq!(parse_since("12h", now), Ok(at("2026-12-01T00:00:00Z")));
        assert_eq!(parse_since("2w", now), Ok(at("2026-11-17T12:00:00Z")));
        assert_eq!(parse_since("1d 6h", now), Ok(at("2026-11-30T06:00:00Z")));
        assert_eq!(
            parse_since("2026-11-01", now),
            Ok(at("2026-11-01T00:00:00Z"))
        );
        assert_eq!(
            parse_since("2026-11-01T09:30:00Z", now),
            Ok(at("2026-11-01T09:30:00Z"))
        );
        assert_eq!(
            parse_since(" 2026-11-01 09:30:00 ", now),
            Ok(at("2026-11-01T09:30:00Z"))
        );
        for bad in [
            "",
            "30",
            "thirty days",
            "2026-13-01",
            "2026-11-01T25:00:00Z",
            "-3d",
        ] {
            let refused = parse_since(bad, now);
            assert!(refused.is_err(), "{bad:?}: {refused:?}");
        }
        let message = parse_since("soon", now).expect_err("refused");
        assert!(message.contains("30d"), "{message}");
    }

    fn line(time: &str, package: &str, view: Option<&str>, token: Option<&str>) -> Line {
        Line {
            time: time.into(),
            package: package.into(),
            version: Some("1.0.0".into()),
            upstream: "agency".into(),
            view: view.map(str::to_string),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn rows_group_count_and_keep_the_last_time() {
        let lines = [
            line(
                "2026-11-02T10:00:00.000Z",
                "vendorx/ext",
                Some("acme"),
                Some("ci"),
            ),
            line(
                "2026-11-03T10:00:00.000Z",
                "vendorx/ext",
                Some("acme"),
                Some("ci"),
            ),
            line(
                "2026-11-01T10:00:00.000Z",
                "vendorx/ext",
                Some("acme"),
                Some("ci"),
            ),
            line("2026-11-02T10:00:00.000Z", "vendorx/ext", None, None),
            line("2026-10-01T10:00:00.000Z", "magento/framework", None, None),
        ];
        let rows = group(&lines, &Filter::default());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].package, "magento/framework");
        let acme = rows
            .iter()
            .find(|r| r.view.as_deref() == Some("acme"))
            .expect("acme");
        assert_eq!(
            (acme.count, acme.last.as_str()),
            (3, "2026-11-03T10:00:00.000Z")
        );

        let since = Filter {
            since: Some(at("2026-11-02T00:00:00Z")),
            package: Some(NamePattern::parse("vendorx/*").expect("pattern")),
            token: Some("ci".into()),
            ..Filter::default()
        };
        let rows = group(&lines, &since);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].count, 2);
        let view = Filter {
            view: Some("globex".into()),
            ..Filter::default()
        };
        assert!(group(&lines, &view).is_empty());
        let text = table(&group(&lines, &Filter::default()));
        assert!(text.starts_with("PACKAGE"), "{text}");
        assert!(text.contains("2026-11-03T10:00:00Z"), "{text}");
    }

    #[test]
    fn a_segment_and_its_bucket_copy_count_once() {
        let a = "{\"n\":1}\n{\"n\":2}\n";
        let longer = Bytes::from(format!("{a}{{\"n\":2}}\n{{\"n\":3}}\n{{\"part"));
        let copies = [Bytes::from(a), longer.clone()];
        let merged = merge_copies(&copies);
        assert_eq!(merged.len(), 4, "{merged:?}");
        // A copy written after the directory was lost, beside the bucket's older one: both.
        let copies = [longer, Bytes::from("{\"n\":9}\n")];
        assert_eq!(merge_copies(&copies).len(), 5);
    }
}
