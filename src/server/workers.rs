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
//! One accept loop (on the caller's runtime) hands each connection to a thread. Threads
//! accepting from a shared listener themselves were uneven: when wrk opened its 64 connections
//! at once, the thread awake at that moment sometimes took all of them, and the proxy served
//! from one core (about 100,000 p2 answers a second instead of 160,000).
//!
//! Connections whose packets come in on the same CPU go to the same thread, while it serves
//! no more than a few more than the least busy one ([`pick`]). Each thread is then woken from
//! one CPU, the kernel keeps it there, and its sockets' state stays in that CPU's cache; handed
//! to whichever thread served fewest, every thread served connections from every CPU and each
//! answer's wake-up crossed CPUs. That CPU is the network queue's with a multi-queue card, and
//! the client's with a client on the same machine (nginx in front, a CI runner, wrk). With
//! wrk's two threads connecting from the two CPUs, cached p2 answers went from about 125,000 a
//! second (4.9 to 5.2 µs of kernel time each) to 145,000 to 168,000 (3.2 to 4.2 µs); where all
//! connections come in on one CPU (a card with one queue, or wrk's threads both on one CPU
//! when they connected), the allowance shares them out as before (docs/performance.md).
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

/// How many more connections than the least busy thread a thread may serve and still be
/// given those that came in on its CPU: a few, and an eighth more once threads serve many, so
/// that connections arriving on one CPU only are still shared out nearly evenly.
const EXTRA_FOR_LOCALITY: usize = 2;

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

/// The thread for a connection that came in on `cpu`, given how many each serves: the one
/// for that CPU while it serves at most [`EXTRA_FOR_LOCALITY`] (and an eighth) more than the
/// least busy, else the least busy (the first of equals). CPUs beyond the threads' number
/// share threads in turn.
fn pick(loads: &[usize], cpu: Option<usize>) -> Option<usize> {
    let (least_busy, &least) = loads.iter().enumerate().min_by_key(|(_, load)| **load)?;
    let home = cpu.map(|cpu| cpu % loads.len());
    match home {
        Some(home) if loads[home] <= least + EXTRA_FOR_LOCALITY + least / 8 => Some(home),
        _ => Some(least_busy),
    }
}

impl Workers {
    /// Hands an accepted connection to the thread for the CPU it came in on, or to the one
    /// serving the fewest ([`pick`]).
    pub(super) fn dispatch(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let loads: Vec<usize> = self
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect();
        let Some(worker) = pick(&loads, super::socket::incoming_cpu(&stream))
            .and_then(|index| self.workers.get(index))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_its_cpus_thread_unless_that_one_is_well_ahead() {
        // The CPU's thread, busier or not, while within the allowance.
        assert_eq!(pick(&[3, 1], Some(0)), Some(0));
        assert_eq!(pick(&[1, 3], Some(1)), Some(1));
        assert_eq!(pick(&[0, 0], Some(1)), Some(1));
        // Past it, the least busy.
        assert_eq!(pick(&[4, 1], Some(0)), Some(1));
        // The allowance grows by an eighth of the least busy's count.
        assert_eq!(pick(&[90, 80], Some(0)), Some(0));
        assert_eq!(pick(&[93, 80], Some(0)), Some(1));
        // CPUs numbered beyond the threads share them in turn.
        assert_eq!(pick(&[5, 5, 5], Some(7)), Some(1));
        // Not known: the least busy, the first of equals.
        assert_eq!(pick(&[2, 1, 1], None), Some(1));
        assert_eq!(pick(&[], Some(0)), None);
    }

    #[test]
    fn connections_from_one_cpu_only_are_still_shared_out() {
        let mut loads = [0usize; 2];
        for _ in 0..1000 {
            let at = pick(&loads, Some(0)).unwrap();
            loads[at] += 1;
        }
        // Within the allowance of each other: 2 and an eighth.
        assert!(loads[0] <= loads[1] + 2 + loads[1] / 8, "{loads:?}");
        assert!(loads[1] >= 450, "{loads:?}");
    }
}
