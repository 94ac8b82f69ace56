//! How one upstream is doing, as two separate states each logged once per change: whether it
//! can be reached (`upstream_down` / `upstream_up`), and whether what it answers can be used
//! (`upstream_misbehaving` / `upstream_answers_usable`). An upstream answering garbage is up,
//! so it is never taken for one that is down, nor flaps between the two.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use url::Url;

#[derive(Default)]
pub(super) struct Health {
    /// Since when upstream has been failing (unreachable, timing out or answering 5xx).
    down_since: Mutex<Option<Instant>>,
    /// Since when the bodies it sends have been unusable (not JSON, wrong shape, bad gzip).
    misbehaving_since: Mutex<Option<Instant>>,
    /// The last failure in words and when it happened, for the status page: kept after the
    /// upstream recovers, so ops can still see what went wrong.
    last_error: Mutex<Option<(SystemTime, String)>>,
}

fn since(slot: &Mutex<Option<Instant>>) -> Option<Duration> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|since| since.elapsed())
}

impl Health {
    pub(super) fn down_for(&self) -> Option<Duration> {
        since(&self.down_since)
    }

    pub(super) fn misbehaving_for(&self) -> Option<Duration> {
        since(&self.misbehaving_since)
    }

    pub(super) fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn note_error(&self, what: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), what));
    }

    pub(super) fn note_reachable(&self, name: &str, url: &Url, up: bool, detail: &str) {
        if !up {
            self.note_error(format!("failing: {detail}"));
        }
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        match (up, *since) {
            (false, None) => {
                *since = Some(Instant::now());
                tracing::warn!(event = "upstream_down", upstream = %name, url = %url, detail, "upstream is failing; serving from cache where possible");
            }
            (true, Some(started)) => {
                *since = None;
                tracing::info!(
                    event = "upstream_up",
                    upstream = %name,
                    down_secs = started.elapsed().as_secs(),
                    "upstream answers again"
                );
            }
            _ => {}
        }
    }

    /// `Err` carries why a body could not be used, for the log.
    pub(super) fn note_answer(&self, name: &str, url: &Url, usable: Result<(), &str>) {
        let mut since = self
            .misbehaving_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Err(detail) = usable {
            self.note_error(format!("unusable answer: {detail}"));
        }
        match (usable, *since) {
            (Err(detail), None) => {
                *since = Some(Instant::now());
                tracing::warn!(event = "upstream_misbehaving", upstream = %name, url = %url, detail, "upstream answers, but with metadata composer-proxy cannot use; serving from cache where possible");
            }
            (Ok(()), Some(started)) => {
                *since = None;
                tracing::info!(
                    event = "upstream_answers_usable",
                    upstream = %name,
                    misbehaving_secs = started.elapsed().as_secs(),
                    "upstream sends usable metadata again"
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_and_usability_are_tracked_apart() {
        let health = Health::default();
        let url = Url::parse("https://repo.example/").expect("url");
        health.note_reachable("r", &url, false, "500");
        assert!(health.down_for().is_some());
        // Reachable again, but answering garbage: up and misbehaving, not down.
        health.note_reachable("r", &url, true, "200");
        health.note_answer("r", &url, Err("not JSON"));
        assert!(health.down_for().is_none());
        assert!(health.misbehaving_for().is_some());
        // More garbage with 200s keeps both states as they are.
        health.note_reachable("r", &url, true, "200");
        health.note_answer("r", &url, Err("not JSON"));
        assert!(health.down_for().is_none() && health.misbehaving_for().is_some());
        health.note_answer("r", &url, Ok(()));
        assert!(health.misbehaving_for().is_none());
        // What went wrong last stays in words after the recovery.
        let (_, last) = health.last_error().expect("an error was seen");
        assert_eq!(last, "unusable answer: not JSON");
    }
}
