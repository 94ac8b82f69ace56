//! The serving threads: one per CPU, each running a single-threaded runtime that accepts from
//! the shared listener and serves its connections to the end.
//!
//! On the work-stealing runtime a connection's task ran on whichever worker the I/O driver
//! woke, so its state (hyper's buffers, the per-connection context, the cache lines of its
//! counters) moved between cores from one request to the next. Measured on 2 CPUs with wrk
//! sharing them, a cached p2 file cost 6.7 µs of user time per request that way and 4.7 µs on a
//! single worker (bench/run.sh, `BENCH_ONLY=hits`). A thread per CPU keeps each connection,
//! like each nginx worker does, on one core; the kernel hands a new connection to whichever
//! thread's accept is ready first.
//!
//! What a request spawns (a background refresh, an HTTP/2 stream) runs on its own thread's
//! runtime. Work shared by all threads (upstream connections, caches, the usage record) goes
//! through the same `Send` types as before; the background tasks of [`crate::Proxy::run`] stay
//! on the runtime that called it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::Accepting;

/// How long a serving thread's runtime waits for its blocking tasks (a file being written)
/// once the drain is over.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// The serving threads, and the signals that stop them.
pub(super) struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Dropped to stop the accept loops.
    stop: Option<watch::Sender<()>>,
    /// Closed when every accept loop has stopped (each holds a sender).
    stopped: mpsc::Receiver<()>,
    /// Dropped once the drain is over: the threads then drop their runtimes, closing what is
    /// left.
    done: Option<watch::Sender<()>>,
}

/// Starts one serving thread per CPU on clones of `listener`. Dropping what this returns (the
/// proxy's run future was dropped, as tests do) stops them too.
pub(super) fn start(listener: std::net::TcpListener, accepting: Arc<Accepting>) -> Workers {
    let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (stop, stop_rx) = watch::channel(());
    let (done, done_rx) = watch::channel(());
    let (stopped_tx, stopped) = mpsc::channel(1);
    let mut threads = Vec::with_capacity(count);
    for index in 0..count {
        let listener = match listener.try_clone() {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(
                    event = "serving_thread_failed",
                    error = %e,
                    "cannot share the listener with a serving thread"
                );
                break;
            }
        };
        let accepting = accepting.clone();
        let (stop, mut done, stopped) = (stop_rx.clone(), done_rx.clone(), stopped_tx.clone());
        let started = std::thread::Builder::new()
            .name(format!("serve-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(
                            event = "serving_thread_failed",
                            error = %e,
                            "cannot start a serving thread's runtime"
                        );
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept(listener, &accepting, stop).await,
                        Err(e) => tracing::error!(
                            event = "serving_thread_failed",
                            error = %e,
                            "cannot listen on a serving thread"
                        ),
                    }
                    drop(stopped);
                    // Its connections are served on here until the drain is over.
                    let _ = done.changed().await;
                });
                runtime.shutdown_timeout(BLOCKING_GRACE);
            });
        match started {
            Ok(thread) => threads.push(thread),
            Err(e) => tracing::error!(
                event = "serving_thread_failed",
                error = %e,
                "cannot start a serving thread"
            ),
        }
    }
    if threads.is_empty() {
        tracing::error!(
            event = "serving_thread_failed",
            "no serving thread started: nothing is served"
        );
    }
    Workers {
        threads,
        stop: Some(stop),
        stopped,
        done: Some(done),
    }
}

/// Accepts until `stop`'s sender is dropped.
async fn accept(listener: TcpListener, accepting: &Arc<Accepting>, mut stop: watch::Receiver<()>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        accepting.serve(stream, peer);
    }
}

impl Workers {
    /// Stops every accept loop and waits until none accepts any more; returns what watches the
    /// connections still open, for the drain.
    pub(super) async fn stop_accepting(&mut self, accepting: &Accepting) -> GracefulShutdown {
        drop(self.stop.take());
        while self.stopped.recv().await.is_some() {}
        accepting
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            // Taken only here, and this runs once.
            .unwrap_or_default()
    }

    /// Ends the serving threads (closing any connection still open) and waits for them.
    pub(super) async fn finish(mut self) {
        drop(self.done.take());
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
