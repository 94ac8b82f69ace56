//! Which package versions the proxy served are covered by a known security advisory: every
//! version in the usage record's window, asked of the upstreams' advisory APIs (the same
//! requests Composer's audit makes through the proxy, answers remembered for
//! `advisories_ttl`), matched with Composer's constraint semantics
//! ([`crate::composer::advisories_match`]). The result is kept for a minute while the served
//! versions stay the same, so reloading the page asks nothing again; a background pass every
//! [`SCAN_INTERVAL`] keeps the metric current.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::Time;
use crate::composer::advisories_match::advisories_covering;
use crate::upstreams::Among;
use crate::usage::Line;
use crate::AppState;

/// How long one scan's result is reused for the same served versions.
const REUSE: Duration = Duration::from_secs(60);
/// How often the proxy scans on its own, for the metric.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(900);

/// Downloads of one package version: by whom, how often, when last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub views: BTreeSet<String>,
    pub tokens: BTreeSet<String>,
    pub downloads: u64,
    /// RFC 3339, as the record writes it (so it sorts as text).
    pub last: String,
}

/// The versions in `lines`, by (package, version). Release files and downloads without a
/// version have nothing an advisory could name.
pub fn served(lines: &[Line]) -> ServedVersions {
    let mut served = ServedVersions::new();
    for line in lines {
        let Some(version) = &line.version else {
            continue;
        };
        let entry = served
            .entry((line.package.clone(), version.clone()))
            .or_default();
        entry.views.extend(line.view.clone());
        entry.tokens.extend(line.token.clone());
        entry.downloads += 1;
        if line.time > entry.last {
            entry.last.clone_from(&line.time);
        }
    }
    served
}

/// A served version and one advisory that covers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Affected {
    pub package: String,
    pub version: String,
    pub advisory_id: String,
    pub title: String,
    pub severity: Option<String>,
    pub cve: Option<String>,
    pub link: Option<String>,
    pub affected_versions: String,
    pub views: Vec<String>,
    pub tokens: Vec<String>,
    pub downloads: u64,
    pub last: String,
}

/// An advisory for a served package whose affected versions could not be evaluated: shown,
/// never taken as covering nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub package: String,
    pub version: String,
    pub advisory_id: String,
    pub affected_versions: String,
    pub reason: String,
}

/// The advisories in `answer` (`{"advisories": {name: [...]}}`) covering each served version.
/// Pure.
pub fn matched(served: &ServedVersions, answer: &Value) -> (Vec<Affected>, Vec<Unreadable>) {
    let mut affected = Vec::new();
    let mut unreadable = Vec::new();
    for ((package, version), by) in served {
        let coverage = advisories_covering(answer, package, version);
        for advisory in coverage.covering {
            affected.push(Affected {
                package: package.clone(),
                version: version.clone(),
                advisory_id: advisory.advisory_id,
                title: advisory.title,
                severity: advisory.severity,
                cve: advisory.cve,
                link: advisory.link,
                affected_versions: advisory.affected_versions,
                views: by.views.iter().cloned().collect(),
                tokens: by.tokens.iter().cloned().collect(),
                downloads: by.downloads,
                last: by.last.clone(),
            });
        }
        for advisory in coverage.unreadable {
            unreadable.push(Unreadable {
                package: package.clone(),
                version: version.clone(),
                advisory_id: advisory.advisory_id,
                affected_versions: advisory.affected_versions,
                reason: advisory.reason,
            });
        }
    }
    (affected, unreadable)
}

/// One scan's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub checked: Time,
    /// Served versions looked up.
    pub versions: usize,
    /// Upstreams that offer an advisory API; with none, nothing can be found.
    pub sources: Vec<String>,
    pub affected: Vec<Affected>,
    pub unreadable: Vec<Unreadable>,
    /// Why the advisories could not be had, when they could not.
    pub error: Option<String>,
}

/// Served versions by (package, version).
pub type ServedVersions = BTreeMap<(String, String), Served>;

/// When a scan ran, the versions it looked up, and what it found.
type LastScan = (Instant, Vec<(String, String)>, Arc<Found>);

/// The last scan, reused for [`REUSE`] while the served versions are the same.
#[derive(Default)]
pub struct Scan {
    last: tokio::sync::Mutex<Option<LastScan>>,
    /// Versions with an advisory in the last scan, for `/metrics`; `None` before one.
    affected_versions: std::sync::Mutex<Option<u64>>,
}

impl Scan {
    /// Served versions covered by an advisory in the last scan.
    pub fn affected_versions(&self) -> Option<u64> {
        *self
            .affected_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The advisories covering the `served` versions: the last scan's if it is recent and
    /// looked up the same versions.
    pub async fn run(&self, state: &AppState, served: &ServedVersions) -> Arc<Found> {
        let looking_up: Vec<(String, String)> = served.keys().cloned().collect();
        let mut last = self.last.lock().await;
        if let Some((at, looked_up, found)) = &*last {
            if at.elapsed() < REUSE && *looked_up == looking_up {
                return found.clone();
            }
        }
        let found = Arc::new(scan(state, served).await);
        let versions: BTreeSet<(&str, &str)> = found
            .affected
            .iter()
            .map(|a| (a.package.as_str(), a.version.as_str()))
            .collect();
        if found.error.is_none() {
            *self
                .affected_versions
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(versions.len() as u64);
        }
        *last = Some((Instant::now(), looking_up, found.clone()));
        found
    }
}

async fn scan(state: &AppState, served: &ServedVersions) -> Found {
    let sources: Vec<String> = state
        .upstreams
        .iter()
        .filter(|u| {
            u.metadata
                .last_view()
                .is_some_and(|v| v.apis().advisories.is_some())
        })
        .map(|u| u.name.to_string())
        .collect();
    let mut found = Found {
        checked: Time(SystemTime::now()),
        versions: served.len(),
        sources,
        affected: Vec::new(),
        unreadable: Vec::new(),
        error: None,
    };
    if served.is_empty() || found.sources.is_empty() {
        return found;
    }
    let names: Vec<String> = served
        .keys()
        .map(|(package, _)| package.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match state.upstreams.advisories(Among::All, &names).await {
        Ok((answer, _, _)) => {
            (found.affected, found.unreadable) = matched(served, &answer);
        }
        Err(e) => found.error = Some(e.to_string()),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(package: &str, version: &str, view: &str, token: &str, time: &str) -> Line {
        Line {
            time: time.to_string(),
            package: package.to_string(),
            version: Some(version.to_string()),
            upstream: "u".to_string(),
            view: Some(view.to_string()),
            token: Some(token.to_string()),
        }
    }

    #[test]
    fn served_versions_covered_by_an_advisory_name_who_got_them() {
        let lines = [
            line(
                "psr/log",
                "3.0.0",
                "acme",
                "acme-ci",
                "2026-12-07T10:00:00.000Z",
            ),
            line(
                "psr/log",
                "3.0.0",
                "globex",
                "globex-ci",
                "2026-12-07T11:00:00.000Z",
            ),
            line(
                "psr/log",
                "1.1.4",
                "acme",
                "acme-ci",
                "2026-12-07T09:00:00.000Z",
            ),
            line(
                "vendorx/extension-a",
                "1.1.0",
                "acme",
                "acme-ci",
                "2026-12-07T08:00:00.000Z",
            ),
        ];
        let answer = json!({"advisories": {
            "psr/log": [{"advisoryId": "PKSA-1", "title": "Log <injection>", "cve": "CVE-2023-1",
                "link": "https://example.invalid/a", "severity": "high",
                "affectedVersions": ">=3.0.0,<3.0.1"}],
            "vendorx/extension-a": [{"advisoryId": "PKSA-2", "affectedVersions": "this is not a constraint"}],
        }});
        let (affected, unreadable) = matched(&served(&lines), &answer);
        assert_eq!(affected.len(), 1, "{affected:#?}");
        let a = &affected[0];
        assert_eq!(
            (a.package.as_str(), a.version.as_str()),
            ("psr/log", "3.0.0")
        );
        assert_eq!(a.views, ["acme", "globex"]);
        assert_eq!(a.tokens, ["acme-ci", "globex-ci"]);
        assert_eq!(a.downloads, 2);
        assert_eq!(a.last, "2026-12-07T11:00:00.000Z");
        assert_eq!(a.severity.as_deref(), Some("high"));
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].advisory_id, "PKSA-2");
    }
}
