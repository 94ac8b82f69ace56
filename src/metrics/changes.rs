//! Counters of the upstreams' changes feeds (`metadata-changes-url`): polls, the actions they
//! brought that were applied, and refetches that found a file lagging behind the feed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use super::header;

/// How one poll of a changes feed ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// Answered; its actions (if any) were applied.
    Ok,
    /// Answered with `resync`: every cached p2 file was marked stale.
    Resync,
    /// Unreachable, an error status, or an answer that could not be read.
    Error,
}

impl PollOutcome {
    fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::Resync => "resync",
            PollOutcome::Error => "error",
        }
    }
}

#[derive(Default)]
struct Counts {
    polls: BTreeMap<(Arc<str>, &'static str), u64>,
    /// By (upstream, action type: `update`, `delete`, `resync`).
    actions: BTreeMap<(Arc<str>, &'static str), u64>,
    lag_retries: BTreeMap<Arc<str>, u64>,
}

#[derive(Default)]
pub struct ChangesMetrics {
    counts: Mutex<Counts>,
}

impl ChangesMetrics {
    fn with(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn record_poll(&self, upstream: &Arc<str>, outcome: PollOutcome) {
        self.with(|c| {
            *c.polls
                .entry((upstream.clone(), outcome.as_str()))
                .or_default() += 1
        });
    }

    /// `n` actions of one type applied to cached files (names not cached are not counted).
    pub fn record_actions(&self, upstream: &Arc<str>, action: &'static str, n: u64) {
        if n > 0 {
            self.with(|c| *c.actions.entry((upstream.clone(), action)).or_default() += n);
        }
    }

    /// A refetch after an announced change got a file older than the change: tried again later.
    pub fn record_lag_retry(&self, upstream: &Arc<str>) {
        self.with(|c| *c.lag_retries.entry(upstream.clone()).or_default() += 1);
    }

    pub(super) fn render(&self, out: &mut String) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        header(
            out,
            "composer_proxy_metadata_changes_polls_total",
            "counter",
            "Polls of an upstream's changes feed (metadata-changes-url), by outcome.",
        );
        for ((upstream, outcome), n) in &c.polls {
            let _ = writeln!(
                out,
                "composer_proxy_metadata_changes_polls_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        header(
            out,
            "composer_proxy_metadata_changes_actions_total",
            "counter",
            "Actions of a changes feed applied to cached p2 files, by type.",
        );
        for ((upstream, action), n) in &c.actions {
            let _ = writeln!(
                out,
                "composer_proxy_metadata_changes_actions_total{{upstream=\"{upstream}\",type=\"{action}\"}} {n}"
            );
        }
        header(
            out,
            "composer_proxy_metadata_changes_lag_retries_total",
            "counter",
            "Refetches after an announced change that still got an older file (a lagging CDN), retried on a later poll.",
        );
        for (upstream, n) in &c.lag_retries {
            let _ = writeln!(
                out,
                "composer_proxy_metadata_changes_lag_retries_total{{upstream=\"{upstream}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_counters_render_per_upstream() {
        let m = ChangesMetrics::default();
        let packagist: Arc<str> = Arc::from("packagist");
        m.record_poll(&packagist, PollOutcome::Ok);
        m.record_poll(&packagist, PollOutcome::Ok);
        m.record_poll(&packagist, PollOutcome::Error);
        m.record_actions(&packagist, "update", 3);
        m.record_actions(&packagist, "delete", 0);
        m.record_lag_retry(&packagist);
        let mut text = String::new();
        m.render(&mut text);
        for expected in [
            "composer_proxy_metadata_changes_polls_total{upstream=\"packagist\",outcome=\"ok\"} 2",
            "composer_proxy_metadata_changes_polls_total{upstream=\"packagist\",outcome=\"error\"} 1",
            "composer_proxy_metadata_changes_actions_total{upstream=\"packagist\",type=\"update\"} 3",
            "composer_proxy_metadata_changes_lag_retries_total{upstream=\"packagist\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(
            !text.contains("type=\"delete\""),
            "nothing applied, no sample"
        );
    }
}
