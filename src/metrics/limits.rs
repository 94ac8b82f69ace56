//! Counters of the bounds that keep one client from taking the proxy down: responses cut off
//! because the client stopped taking them (`client_send_timeout_secs`), and install
//! notifications refused or dropped; and the memory of response chunks in flight.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{header, single_label};

/// What became of an install notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// Accepted and queued for forwarding.
    Queued,
    /// Accepted, but the forwarding queue was full: not forwarded.
    Dropped,
    /// Refused: too large, or not JSON.
    Refused,
}

#[derive(Default)]
pub struct LimitMetrics {
    stalled_http1: AtomicU64,
    stalled_http2: AtomicU64,
    notify_queued: AtomicU64,
    notify_dropped: AtomicU64,
    notify_refused: AtomicU64,
}

impl LimitMetrics {
    /// A response cut off after `client_send_timeout_secs` without progress.
    pub fn record_stalled(&self, http2: bool) {
        let counter = if http2 {
            &self.stalled_http2
        } else {
            &self.stalled_http1
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_notification(&self, outcome: NotifyOutcome) {
        let counter = match outcome {
            NotifyOutcome::Queued => &self.notify_queued,
            NotifyOutcome::Dropped => &self.notify_dropped,
            NotifyOutcome::Refused => &self.notify_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// With the gauge of archive chunks read for clients and not yet sent (owned by the store).
    pub(super) fn render(&self, out: &mut String, response_buffer_bytes: u64) {
        header(
            out,
            "composer_proxy_response_buffer_bytes",
            "gauge",
            "Bytes of archive chunks read for clients and not yet sent (bounded; read sizes shrink as it fills).",
        );
        let _ = writeln!(
            out,
            "composer_proxy_response_buffer_bytes {response_buffer_bytes}"
        );
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        single_label(
            out,
            "composer_proxy_responses_stalled_total",
            "counter",
            "Responses cut off because the client took nothing for client_send_timeout_secs (HTTP/2: the stream is reset; HTTP/1: the connection is closed).",
            "protocol",
            [
                ("http1", load(&self.stalled_http1)),
                ("http2", load(&self.stalled_http2)),
            ],
        );
        single_label(
            out,
            "composer_proxy_install_notifications_total",
            "counter",
            "Install notifications by outcome: queued for forwarding, dropped because the queue was full, or refused (too large, not JSON).",
            "outcome",
            [
                ("queued", load(&self.notify_queued)),
                ("dropped", load(&self.notify_dropped)),
                ("refused", load(&self.notify_refused)),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_and_notification_outcomes_are_counted_by_label() {
        let m = LimitMetrics::default();
        m.record_stalled(true);
        m.record_stalled(true);
        m.record_stalled(false);
        m.record_notification(NotifyOutcome::Dropped);
        let mut out = String::new();
        m.render(&mut out, 7);
        for expected in [
            "composer_proxy_responses_stalled_total{protocol=\"http1\"} 1\n",
            "composer_proxy_responses_stalled_total{protocol=\"http2\"} 2\n",
            "composer_proxy_install_notifications_total{outcome=\"dropped\"} 1\n",
            "composer_proxy_install_notifications_total{outcome=\"queued\"} 0\n",
            "composer_proxy_response_buffer_bytes 7\n",
        ] {
            assert!(out.contains(expected), "missing {expected} in\n{out}");
        }
    }
}
