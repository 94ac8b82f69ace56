//! The send-stall limit (`client_send_timeout_secs`): a response body that makes no progress
//! for that long is cut off, so a client that stops reading cannot keep its connection slot,
//! file handle and buffers.
//!
//! Progress is a body frame taken by hyper: hyper only asks for the next chunk once the last
//! one fits in its buffers (HTTP/1) or the stream has window for it (HTTP/2), so a client that
//! reads nothing, or keeps its HTTP/2 window shut, stops the frames. The unit being cut off is
//! the task that serves the response. For HTTP/1 that is the connection (closed); for HTTP/2
//! every stream runs in a task of its own, spawned through [`StallExecutor`], and dropping it
//! resets that stream alone (h2 sends `RST_STREAM` for a stream whose handles are gone).
//!
//! The response's body finds the watch of its own task through a task-local: hyper polls the
//! service future (where the body is made) inside the stream's task for HTTP/2 and inside the
//! connection's for HTTP/1.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

tokio::task_local! {
    static PROGRESS: SendProgress;
}

/// A response being sent: whom to, and when it last made progress.
struct Sending {
    last: Instant,
    peer: SocketAddr,
    path: Arc<str>,
}

/// The progress of the response (at most one at a time) that one task is sending.
///
/// Nothing here wakes the watchdog: it sleeps until the earliest moment a stall could be due
/// and then reads the state. Waking it at each response's start and end (as a watch channel
/// did) cost two extra polls of the connection's task per request for a limit that is
/// checked once a minute.
#[derive(Clone)]
pub(super) struct SendProgress(Arc<Mutex<Option<Sending>>>);

impl SendProgress {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Sending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watch of the task polling this, if it is a connection or stream being served.
    pub(super) fn current() -> Option<Self> {
        PROGRESS.try_with(Clone::clone).ok()
    }

    pub(super) async fn scope<F: Future>(&self, f: F) -> F::Output {
        PROGRESS.scope(self.clone(), f).await
    }

    /// A response body is handed to hyper: from now on it must make progress.
    pub(super) fn begin(&self, peer: SocketAddr, path: Arc<str>) {
        *self.lock() = Some(Sending {
            last: Instant::now(),
            peer,
            path,
        });
    }

    /// A frame was taken.
    pub(super) fn progressed(&self) {
        if let Some(sending) = &mut *self.lock() {
            sending.last = Instant::now();
        }
    }

    /// The body has ended (or was dropped): waiting for the next request is not a stall.
    pub(super) fn end(&self) {
        *self.lock() = None;
    }

    /// Resolves when a response has made no progress for `limit`, with whom it was for; never
    /// while no response is being sent. A response that begins while this sleeps makes its
    /// first progress after the sleep began, so waking `limit` after that still finds it
    /// within its allowance and sleeps again until its own deadline.
    async fn stalled(&self, limit: Duration) -> (SocketAddr, Arc<str>) {
        loop {
            let wake = match &*self.lock() {
                Some(s) if s.last.elapsed() >= limit => return (s.peer, s.path.clone()),
                Some(s) => s.last + limit,
                None => Instant::now() + limit,
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    /// Runs `serve` (a connection or stream) until it ends, or until its response stalls;
    /// then it is dropped, which closes or resets it. `true` when it was cut off.
    pub(super) async fn watch<F: Future>(
        &self,
        serve: F,
        limit: Duration,
        metrics: &Metrics,
        http2: bool,
    ) -> Option<F::Output> {
        tokio::select! {
            ended = self.scope(serve) => Some(ended),
            (peer, path) = self.stalled(limit) => {
                metrics.limits.record_stalled(http2);
                tracing::warn!(
                    event = "client_stalled",
                    client = %peer.ip(),
                    path = %path,
                    protocol = if http2 { "HTTP/2" } else { "HTTP/1" },
                    timeout_secs = limit.as_secs(),
                    "the client took nothing of its response for client_send_timeout_secs; {}",
                    if http2 { "stream reset" } else { "connection closed" },
                );
                None
            }
        }
    }
}

/// Runs each HTTP/2 stream in a task of its own, cut off when its response stalls.
#[derive(Clone)]
pub(super) struct StallExecutor {
    pub(super) limit: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl<F> hyper::rt::Executor<F> for StallExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let this = self.clone();
        tokio::spawn(async move {
            SendProgress::new()
                .watch(fut, this.limit, &this.metrics, true)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().expect("addr")
    }

    #[tokio::test]
    async fn a_response_without_progress_is_cut_off_and_one_with_progress_is_not() {
        let metrics = Metrics::default();
        let progress = SendProgress::new();
        let limit = Duration::from_millis(300);
        // Progress every 100 ms for 1 s, then the body ends: never cut off.
        let served = progress
            .watch(
                async {
                    let p = SendProgress::current().expect("in scope");
                    p.begin(peer(), "/a".into());
                    for _ in 0..10 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        p.progressed();
                    }
                    p.end();
                    // Waiting for the next request is no stall.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
                limit,
                &metrics,
                false,
            )
            .await;
        assert!(served.is_some());
        let started = tokio::time::Instant::now();
        let cut = progress
            .watch(
                async {
                    SendProgress::current()
                        .expect("in scope")
                        .begin(peer(), "/b".into());
                    std::future::pending::<()>().await
                },
                limit,
                &metrics,
                true,
            )
            .await;
        assert!(cut.is_none());
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
        let out = metrics.render(&crate::metrics::Gauges::default());
        assert!(out.contains("composer_proxy_responses_stalled_total{protocol=\"http2\"} 1\n"));
        assert!(out.contains("composer_proxy_responses_stalled_total{protocol=\"http1\"} 0\n"));
    }
}
