//! The serving threads: one per CPU, each running a single-threaded runtime that serves the
//! connections handed to it, from their first byte to their end.
//!
//! On the work-stealing runtime a connection's task ran on whichever worker the I/O driver
//! woke, so its state (hyper's buffers, the per-connection context, the cache lines of its
//! counters) moved between cores from one request to the next. Measured on 2 CPUs with wrk
//! sharing them, a cached p2 file cost 6.7 µs of user time per request that way and 4.7 µs on a
//! single worker (bench/run.sh, `BENCH_ONLY=hits`). A thread per CPU keeps each connection, as
//! each nginx worker does, on one core.
//!
//! One accept loop (on the caller's runtime) hands each connection to the thread serving the
//! fewest. Threads accepting from a shared listener themselves were uneven: when wrk opened its
//! 64 connections at once, the thread awake at that moment sometimes took all of them, and the
//! proxy served from one core (about 100,000 p2 answers a second instead of 160,000).
//!
//! What a request spawns (a background refresh, an HTTP/2 stream) runs on its own thread's
//! runtime. Work shared by all threads (upstream connections, caches, the usage record) goes
//! through the same `Send` types as before; the background tasks of [`crate::Proxy::run`] stay
//! on the runtime that called it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::Accepting;

/// How long a serving thread's runtime waits for its blocking tasks (a file being written)
/// once the drain is over.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// Blocking tasks (file opens and writes) all serving threads may run at once: tokio's default
/// for one runtime, shared out, so more CPUs do not mean more threads.
const BLOCKING_THREADS: usize = 512;

/// A connection handed to a serving thread: the socket leaves the accepting runtime's reactor
/// and joins the thread's; the drain's watch goes with it.
type Handed = (std::net::TcpStream, SocketAddr, Watcher);

/// One serving thread as the accept loop sees it.
struct Worker {
    connections: mpsc::UnboundedSender<Handed>,
    /// Connections it serves now (handed and not yet ended).
    load: Arc<AtomicUsize>,
}

/// One connection counted in its serving thread's load until dropped.
pub(super) struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The serving threads, and the signals that stop them.
pub(super) struct Workers {
    workers: Vec<Worker>,
    threads: Vec<JoinHandle<()>>,
    /// Dropped once the drain is over: the threads then drop their runtimes, closing what is
    /// left.
    done: Option<watch::Sender<()>>,
}

/// Starts one serving thread per CPU the process may use. Dropping what this returns (the
/// proxy's run future was dropped, as tests do) stops them too.
pub(super) fn start(accepting: Arc<Accepting>) -> Workers {
    let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (done, done_rx) = watch::channel(());
    let mut workers = Vec::with_capacity(count);
    let mut threads = Vec::with_capacity(count);
    for index in 0..count {
        let (connections, mut handed) = mpsc::unbounded_channel::<Handed>();
        let load = Arc::new(AtomicUsize::new(0));
        let accepting = accepting.clone();
        let (mut done, thread_load) = (done_rx.clone(), load.clone());
        let started = std::thread::Builder::new()
            .name(format!("serve-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads((BLOCKING_THREADS / count).max(8))
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
                    while let Some((stream, peer, watcher)) = handed.recv().await {
                        let load = Load(thread_load.clone());
                        match TcpStream::from_std(stream) {
                            Ok(stream) => accepting.serve(stream, peer, watcher, load),
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                            }
                        }
                    }
                    // Its connections are served on here until the drain is over.
                    let _ = done.changed().await;
                });
                runtime.shutdown_timeout(BLOCKING_GRACE);
            });
        match started {
            Ok(thread) => {
                threads.push(thread);
                workers.push(Worker { connections, load });
            }
            Err(e) => tracing::error!(
                event = "serving_thread_failed",
                error = %e,
                "cannot start a serving thread"
            ),
        }
    }
    if workers.is_empty() {
        tracing::error!(
            event = "serving_thread_failed",
            "no serving thread started: nothing is served"
        );
    }
    Workers {
        workers,
        threads,
        done: Some(done),
    }
}

impl Workers {
    /// Hands an accepted connection to the thread serving the fewest (the first of equals).
    pub(super) fn dispatch(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        };
        worker.load.fetch_add(1, Ordering::Relaxed);
        if worker.connections.send((stream, peer, watcher)).is_err() {
            // The thread is gone (its runtime failed to start): the connection closes.
            worker.load.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Stops handing out connections: each thread serves what it was handed, then waits for
    /// [`Workers::finish`].
    pub(super) fn stop_accepting(&mut self) {
        self.workers.clear();
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
