//! The downloads section: the most served packages and versions over 24 hours, 7 days and 30
//! days, overall, per view and per token, from the usage record's lines. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::usage::Line;

const DAY: Duration = Duration::from_secs(86_400);
/// The windows shown, by name.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("24h", DAY),
    ("7d", DAY.saturating_mul(7)),
    ("30d", DAY.saturating_mul(30)),
];
/// Rows kept per list: the page is read at a glance, `composer-proxy usage` has the rest.
pub const TOP: usize = 10;
/// Rows kept per view or token.
const GROUP_TOP: usize = 3;

/// Downloads of one version of a package in each window of [`WINDOWS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Count {
    pub package: String,
    pub version: Option<String>,
    /// One count per window, in the order of [`WINDOWS`].
    pub counts: [u64; 3],
}

/// The downloads of one view or one token; `name: None` for those made outside any view, or
/// without a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: Option<String>,
    /// Per window.
    pub totals: [u64; 3],
    /// The most downloaded versions of each window, together.
    pub top: Vec<Count>,
}

/// Every window's downloads: overall, per view and per token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The windows' names, in order.
    pub windows: Vec<&'static str>,
    pub totals: [u64; 3],
    /// The [`TOP`] most downloaded versions of each window, together, busiest first.
    pub top: Vec<Count>,
    pub by_view: Vec<Group>,
    pub by_token: Vec<Group>,
}

type Key<'a> = (&'a str, Option<&'a str>);
type Tally<'a> = HashMap<Key<'a>, [u64; 3]>;

/// The `n` most downloaded of each window, together, ordered by the shortest window's count,
/// then the longer ones' (ties by name).
fn top(tally: &Tally<'_>, n: usize) -> Vec<Count> {
    let mut chosen: BTreeSet<Key<'_>> = BTreeSet::new();
    for window in 0..WINDOWS.len() {
        let mut ranked: Vec<(&Key<'_>, u64)> = tally
            .iter()
            .map(|(key, counts)| (key, counts[window]))
            .filter(|(_, count)| *count > 0)
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        chosen.extend(ranked.into_iter().take(n).map(|(key, _)| *key));
    }
    let mut counts: Vec<Count> = chosen
        .into_iter()
        .map(|key| Count {
            package: key.0.to_string(),
            version: key.1.map(str::to_string),
            counts: tally[&key],
        })
        .collect();
    counts.sort_by(|a, b| {
        b.counts
            .cmp(&a.counts)
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.version.cmp(&b.version))
    });
    counts
}

fn totals(tally: &Tally<'_>) -> [u64; 3] {
    let mut totals = [0; 3];
    for counts in tally.values() {
        for (total, count) in totals.iter_mut().zip(counts) {
            *total += count;
        }
    }
    totals
}

fn groups(by: BTreeMap<Option<&str>, Tally<'_>>) -> Vec<Group> {
    let mut groups: Vec<Group> = by
        .into_iter()
        .map(|(name, tally)| Group {
            name: name.map(str::to_string),
            totals: totals(&tally),
            top: top(&tally, GROUP_TOP),
        })
        .collect();
    groups.sort_by(|a, b| b.totals.cmp(&a.totals).then_with(|| a.name.cmp(&b.name)));
    groups
}

/// Every window of [`WINDOWS`] up to `now`. A line whose time cannot be read is left out.
pub fn summarise(lines: &[Line], now: SystemTime) -> Summary {
    let mut all: Tally<'_> = HashMap::new();
    let mut by_view: BTreeMap<Option<&str>, Tally<'_>> = BTreeMap::new();
    let mut by_token: BTreeMap<Option<&str>, Tally<'_>> = BTreeMap::new();
    for line in lines {
        let Ok(at) = humantime::parse_rfc3339(&line.time) else {
            continue;
        };
        let age = now.duration_since(at).unwrap_or_default();
        let within: Vec<bool> = WINDOWS.iter().map(|(_, length)| age < *length).collect();
        if !within.contains(&true) {
            continue;
        }
        let key = (line.package.as_str(), line.version.as_deref());
        for tally in [
            &mut all,
            by_view.entry(line.view.as_deref()).or_default(),
            by_token.entry(line.token.as_deref()).or_default(),
        ] {
            let counts = tally.entry(key).or_default();
            for (count, inside) in counts.iter_mut().zip(&within) {
                *count += u64::from(*inside);
            }
        }
    }
    Summary {
        windows: WINDOWS.iter().map(|(name, _)| *name).collect(),
        totals: totals(&all),
        top: top(&all, TOP),
        by_view: groups(by_view),
        by_token: groups(by_token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        time: &str,
        package: &str,
        version: &str,
        view: Option<&str>,
        token: Option<&str>,
    ) -> Line {
        Line {
            time: time.to_string(),
            package: package.to_string(),
            version: Some(version.to_string()),
            upstream: "magento".to_string(),
            view: view.map(str::to_string),
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn windows_count_only_their_days_and_group_by_view_and_token() {
        let now = humantime::parse_rfc3339("2026-12-07T12:00:00Z").expect("time");
        let lines = [
            line(
                "2026-12-07T11:00:00Z",
                "a/x",
                "1.0.0",
                Some("acme"),
                Some("acme-ci"),
            ),
            line(
                "2026-12-07T10:00:00Z",
                "a/x",
                "1.0.0",
                Some("acme"),
                Some("acme-ci"),
            ),
            line("2026-12-07T09:00:00Z", "b/y", "2.0.0", None, None),
            line(
                "2026-12-03T09:00:00Z",
                "b/y",
                "2.0.0",
                Some("globex"),
                Some("globex-ci"),
            ),
            line(
                "2026-11-20T09:00:00Z",
                "c/z",
                "3.0.0",
                Some("globex"),
                Some("globex-ci"),
            ),
            line("2026-10-01T09:00:00Z", "d/old", "1.0.0", None, None),
            line("not a time", "e/bad", "1.0.0", None, None),
        ];
        let summary = summarise(&lines, now);
        assert_eq!(summary.windows, ["24h", "7d", "30d"]);
        assert_eq!(summary.totals, [3, 4, 5]);
        let rows: Vec<(&str, [u64; 3])> = summary
            .top
            .iter()
            .map(|c| (c.package.as_str(), c.counts))
            .collect();
        assert_eq!(
            rows,
            [("a/x", [2, 2, 2]), ("b/y", [1, 2, 2]), ("c/z", [0, 0, 1])]
        );
        let views: Vec<(Option<&str>, [u64; 3])> = summary
            .by_view
            .iter()
            .map(|g| (g.name.as_deref(), g.totals))
            .collect();
        assert_eq!(
            views,
            [
                (Some("acme"), [2, 2, 2]),
                (None, [1, 1, 1]),
                (Some("globex"), [0, 1, 2])
            ]
        );
        let globex = summary
            .by_token
            .iter()
            .find(|g| g.name.as_deref() == Some("globex-ci"))
            .expect("globex-ci's downloads");
        assert_eq!(globex.totals, [0, 1, 2]);
    }

    #[test]
    fn each_window_brings_its_own_top_versions() {
        let now = humantime::parse_rfc3339("2026-12-07T12:00:00Z").expect("time");
        // Many packages a month ago, once each; one today. Today's must be listed although a
        // month's ranking alone would cut it.
        let mut lines: Vec<Line> = (0..TOP + 5)
            .flat_map(|i| {
                let name = format!("v/p{i:02}");
                [
                    line("2026-11-20T11:00:00Z", &name, "1.0.0", None, None),
                    line("2026-11-20T11:00:00Z", &name, "1.0.0", None, None),
                ]
            })
            .collect();
        lines.push(line("2026-12-07T11:00:00Z", "z/today", "1.0.0", None, None));
        let summary = summarise(&lines, now);
        assert_eq!(summary.totals[2], 2 * (TOP + 5) as u64 + 1);
        assert_eq!(summary.top.len(), TOP + 1);
        assert_eq!(summary.top[0].package, "z/today");
    }
}
