//! Segment files: one per replica and UTC hour, `<replica>/2026-11-01T09.jsonl`, one JSON line
//! per download.
//!
//! Hourly rather than daily: the bounds remove whole segments, so an hour is how finely
//! `usage_max_bytes` and the age bound cut; with a bucket the segment being written is
//! uploaded whole every few seconds while it changes, and an hour's lines keep that upload
//! small; and the command skips segments older than `--since` by name without reading them.
//! At 90 days that is at most 2,160 small files per replica. Names sort by time.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::UsageSettings;

const HOUR_SECS: u64 = 3600;
const EXTENSION: &str = ".jsonl";

/// A segment's hour, since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName(u64);

impl SegmentName {
    /// The segment a download at `at` belongs to.
    pub fn of(at: SystemTime) -> SegmentName {
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        SegmentName(secs / HOUR_SECS)
    }

    /// `2026-11-01T09.jsonl`, or `None` for any other name.
    pub fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(EXTENSION)?;
        if stem.len() != 13 || stem.as_bytes().get(10) != Some(&b'T') {
            return None;
        }
        let start = humantime::parse_rfc3339(&format!("{stem}:00:00Z")).ok()?;
        Some(SegmentName::of(start))
    }

    pub fn file_name(self) -> String {
        format!("{self}{EXTENSION}")
    }

    /// When the last download it can hold happened (exclusive).
    pub fn end(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs((self.0 + 1) * HOUR_SECS)
    }
}

impl std::fmt::Display for SegmentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = UNIX_EPOCH + Duration::from_secs(self.0 * HOUR_SECS);
        let text = humantime::format_rfc3339_seconds(start).to_string();
        f.write_str(text.get(..13).unwrap_or(&text))
    }
}

/// A segment and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub name: SegmentName,
    pub bytes: u64,
}

/// The segments to remove, oldest first: every one whose hour ended more than `retention`
/// before `now`; then, with `max_bytes`, the oldest of the rest until the rest fit in it.
/// Pure, so the rule is tested without files.
pub fn expired(
    segments: &[Segment],
    now: SystemTime,
    retention: Duration,
    max_bytes: Option<u64>,
) -> Vec<SegmentName> {
    let mut sorted = segments.to_vec();
    sorted.sort_by_key(|s| s.name);
    let oldest_kept = now.checked_sub(retention).unwrap_or(UNIX_EPOCH);
    let (old, mut kept): (Vec<_>, Vec<_>) = sorted
        .into_iter()
        .partition(|s| s.name.end() <= oldest_kept);
    let mut removed: Vec<SegmentName> = old.iter().map(|s| s.name).collect();
    if let Some(max_bytes) = max_bytes {
        let mut total: u64 = kept.iter().map(|s| s.bytes).sum();
        kept.reverse();
        while total > max_bytes {
            let Some(oldest) = kept.pop() else { break };
            total -= oldest.bytes;
            removed.push(oldest.name);
        }
    }
    removed
}

/// The segments in one replica's folder; anything else there is left alone.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut segments = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) else {
            continue;
        };
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                segments.push(Segment {
                    name,
                    bytes: meta.len(),
                });
            }
        }
    }
    segments.sort_by_key(|s| s.name);
    Ok(segments)
}

/// What [`enforce`] left: this replica's bytes, and its segments it removed.
#[derive(Debug, Default)]
pub struct Kept {
    pub bytes: u64,
    pub removed: Vec<SegmentName>,
}

/// Applies the bounds under `usage` (`root`): age to every replica's folder, size to
/// `replica`'s own. Blocking.
pub fn enforce(
    root: &Path,
    replica: &str,
    settings: &UsageSettings,
    now: SystemTime,
) -> std::io::Result<Kept> {
    let mut kept = Kept::default();
    let folders = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(kept),
        Err(e) => return Err(e),
    };
    for folder in folders.flatten() {
        let own = folder.file_name().to_str() == Some(replica);
        let dir = folder.path();
        if !dir.is_dir() {
            continue;
        }
        let segments = list(&dir)?;
        let max_bytes = own.then_some(settings.max_bytes);
        let removed = expired(&segments, now, settings.retention, max_bytes);
        for name in &removed {
            match std::fs::remove_file(dir.join(name.file_name())) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if own {
            kept.bytes = segments
                .iter()
                .filter(|s| !removed.contains(&s.name))
                .map(|s| s.bytes)
                .sum();
            kept.removed = removed;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).expect("time")
    }

    fn segment(hour: &str, bytes: u64) -> Segment {
        Segment {
            name: SegmentName::parse(&format!("{hour}.jsonl")).expect("name"),
            bytes,
        }
    }

    #[test]
    fn names_are_utc_hours_and_round_trip() {
        let name = SegmentName::of(at("2026-11-01T09:59:59Z"));
        assert_eq!(name.file_name(), "2026-11-01T09.jsonl");
        assert_eq!(SegmentName::parse("2026-11-01T09.jsonl"), Some(name));
        assert_eq!(name.end(), at("2026-11-01T10:00:00Z"));
        assert_ne!(SegmentName::of(at("2026-11-01T10:00:00Z")), name);
        for bad in [
            "2026-11-01T09.json",
            "2026-11-01.jsonl",
            "2026-11-01T25.jsonl",
            "../x.jsonl",
            "2026-11-01 09.jsonl",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_older_than_the_retention_go_whole_hours_at_a_time() {
        let now = at("2026-11-30T12:30:00Z");
        let segments = [
            segment("2026-10-31T11", 10),
            segment("2026-10-31T12", 10),
            segment("2026-10-31T13", 10),
            segment("2026-11-30T12", 10),
        ];
        // 30 days before now is 2026-10-31T12:30: the 11 o'clock hour is wholly older, the 12
        // o'clock hour still holds downloads within it.
        let removed = expired(&segments, now, 30 * DAY, None);
        assert_eq!(removed, vec![segments[0].name]);
        assert!(expired(&segments, now, 90 * DAY, None).is_empty());
    }

    #[test]
    fn beyond_the_size_bound_the_oldest_go_first() {
        let now = at("2026-11-30T12:30:00Z");
        let segments = [
            segment("2026-11-30T12", 40),
            segment("2026-11-30T09", 30),
            segment("2026-11-30T10", 20),
            segment("2026-11-30T11", 10),
        ];
        let removed = expired(&segments, now, 90 * DAY, Some(70));
        assert_eq!(removed, vec![segments[1].name]);
        let removed = expired(&segments, now, 90 * DAY, Some(50));
        assert_eq!(removed, vec![segments[1].name, segments[2].name]);
        assert!(expired(&segments, now, 90 * DAY, Some(100)).is_empty());
        // Even the segment being written goes when it alone is past the bound.
        assert_eq!(expired(&segments, now, 90 * DAY, Some(0)).len(), 4);
    }

    #[test]
    fn enforce_ages_every_replica_and_bounds_only_its_own() {
        let root = tempfile::tempdir().expect("dir");
        let now = at("2026-11-30T12:30:00Z");
        for (replica, hour, bytes) in [
            ("own", "2026-08-01T00", 5),
            ("own", "2026-11-30T10", 30),
            ("own", "2026-11-30T11", 30),
            ("other", "2026-08-01T00", 5),
            ("other", "2026-11-30T10", 300),
        ] {
            let dir = root.path().join(replica);
            std::fs::create_dir_all(&dir).expect("dir");
            std::fs::write(
                dir.join(format!("{hour}.jsonl")),
                vec![b'x'; bytes as usize],
            )
            .expect("segment");
        }
        std::fs::write(root.path().join("own/notes.txt"), "kept").expect("other file");
        let settings = UsageSettings {
            dir: root.path().to_path_buf(),
            replica: "own".into(),
            retention: 90 * DAY,
            max_bytes: 40,
        };
        let kept = enforce(root.path(), "own", &settings, now).expect("enforce");
        assert_eq!(kept.bytes, 30);
        assert_eq!(kept.removed.len(), 2);
        let names = |replica: &str| -> Vec<String> {
            list(&root.path().join(replica))
                .expect("list")
                .iter()
                .map(|s| s.name.to_string())
                .collect()
        };
        assert_eq!(names("own"), ["2026-11-30T11"]);
        assert_eq!(names("other"), ["2026-11-30T10"]);
        assert!(root.path().join("own/notes.txt").exists());
    }
}
