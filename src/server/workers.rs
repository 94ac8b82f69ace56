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
//! Connections whose packets come in on the same CPU go to the same thread, while it serves not
//! many more than the least busy one ([`pick`]). The threads are not pinned: the kernel tends
//! to move a thread to the CPU that wakes it, and with its connections coming in on one CPU
//! that is one CPU, where their sockets' state is in the cache. Handed to whichever thread
//! served fewest, every thread served connections from every CPU and each answer's wake-up
//! crossed CPUs. That CPU is the network queue's with a multi-queue card, and the client's for
//! a client on the same machine. Measured with wrk on loopback (cached p2 file, 8 s runs, 6
//! each): where wrk's two threads connected from different CPUs, 145,000 to 168,000 answers a
//! second (3 runs of 6); in the others 119,000 to 127,000 (before: 123,000 to 131,000, one run
//! at 151,000). With every connection coming in on one CPU (a card with one queue) the
//! allowance shares them out nearly evenly: 64 split 35 / 29 over two threads
//! (docs/performance.md).
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
/// given those that came in on its CPU: [`EXTRA_CONNECTIONS`], and one [`EXTRA_SHARE`]th of
/// the least busy one's count once threads serve many. So connections arriving on one CPU only
/// are still shared out nearly evenly, and a thread's locality never costs much balance.
const EXTRA_CONNECTIONS: usize = 2;
const EXTRA_SHARE: usize = 8;

/// The load of a thread that cannot take connections: more than any thread serves, and with
/// [`pick`]'s allowance added still far from overflowing.
const GONE: usize = usize::MAX / 4;

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
    /// Each CPU's thread, by CPU number ([`homes`]).
    homes: Vec<Option<usize>>,
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
        homes: homes(&allowed_cpus(), workers.len()),
        workers,
        threads,
        done: Some(done),
    }
}

/// The thread for a connection whose CPU's thread is `home`, given how many each serves: `home`
/// while it serves at most [`EXTRA_CONNECTIONS`] and one [`EXTRA_SHARE`]th of the least busy
/// one's count more than the least busy, else the least busy (the first of equals).
fn pick(loads: &[usize], home: Option<usize>) -> Option<usize> {
    let (least_busy, &least) = loads.iter().enumerate().min_by_key(|(_, load)| **load)?;
    let allowed = least + EXTRA_CONNECTIONS + least / EXTRA_SHARE;
    match home {
        Some(home) if loads.get(home).is_some_and(|&load| load <= allowed) => Some(home),
        _ => Some(least_busy),
    }
}

/// Each CPU's thread, indexed by CPU number: the CPU's place among those the process may run
/// on, modulo the number of threads. Places, not numbers, so that a CPU set such as {1, 33} or
/// 4-7 spreads over the threads as 0-1 would. CPUs the process may not run on have none: no
/// thread could run where their connections come in.
fn homes(allowed: &[usize], threads: usize) -> Vec<Option<usize>> {
    let Some(&highest) = allowed.iter().max() else {
        return Vec::new();
    };
    let mut homes = vec![None; highest + 1];
    if threads > 0 {
        for (place, &cpu) in allowed.iter().enumerate() {
            if let Some(home) = homes.get_mut(cpu) {
                *home = Some(place % threads);
            }
        }
    }
    homes
}

/// The CPUs this process may run on (its affinity mask, which a container's cpuset narrows).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    rustix::thread::sched_getaffinity(None).map_or_else(
        |_| Vec::new(),
        |set| {
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&cpu| set.is_set(cpu))
                .collect()
        },
    )
}

/// Elsewhere no CPU is known for a connection ([`super::socket::incoming_cpu`]) either.
#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

impl Workers {
    /// Hands an accepted connection to the thread for the CPU it came in on, or to the one
    /// serving the fewest ([`pick`]).
    pub(super) fn dispatch(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        // One thread has nothing to choose from: no system call for it.
        let home = (self.workers.len() > 1)
            .then(|| super::socket::incoming_cpu(&stream))
            .flatten()
            .and_then(|cpu| self.homes.get(cpu).copied().flatten());
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        };
        let mut handed = (stream, peer, watcher);
        // A thread whose runtime failed to start takes nothing. Left at its load of 0 it would
        // stay the least busy and every connection handed to it would close; marked, it is
        // never chosen again and the connection goes to the next.
        for _ in 0..self.workers.len() {
            let Some(worker) = pick(&self.loads(), home).and_then(|index| self.workers.get(index))
            else {
                return;
            };
            worker.load.fetch_add(1, Ordering::Relaxed);
            match worker.connections.send(handed) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    worker.load.store(GONE, Ordering::Relaxed);
                    handed = back;
                }
            }
        }
        // No thread left to serve it: the connection closes.
    }

    /// How many connections each thread serves now.
    fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
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
        // The allowance grows by an eighth of the least busy one's count: 80 + 2 + 10.
        assert_eq!(pick(&[92, 80], Some(0)), Some(0));
        assert_eq!(pick(&[93, 80], Some(0)), Some(1));
        // No thread for the CPU: the least busy, the first of equals.
        assert_eq!(pick(&[2, 1, 1], None), Some(1));
        assert_eq!(pick(&[2, 1, 1], Some(3)), Some(1));
        assert_eq!(pick(&[], Some(0)), None);
    }

    #[test]
    fn cpus_map_to_threads_by_their_place_among_those_allowed() {
        // Two CPUs far apart (hyperthread siblings from a CPU manager) are two threads, not one.
        let siblings = homes(&[1, 33], 2);
        assert_eq!((siblings[1], siblings[33]), (Some(0), Some(1)));
        assert_eq!(siblings[0], None, "a CPU the process may not run on");
        assert_eq!(siblings.len(), 34);
        // A cpuset of 4-7 with four threads, and with three (a CPU quota): each thread has one,
        // the fourth CPU shares the first's.
        assert_eq!(
            homes(&[4, 5, 6, 7], 4)[4..],
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            homes(&[4, 5, 6, 7], 3)[4..],
            [Some(0), Some(1), Some(2), Some(0)]
        );
        assert!(homes(&[], 2).is_empty());
        assert_eq!(homes(&[0, 1], 0), [None, None]);
    }

    #[tokio::test]
    async fn a_thread_that_failed_to_start_is_passed_over_for_good() {
        let (stream, peer, client) = super::super::socket::accepted_loopback().await;
        // The first thread's runtime is gone (its receiver dropped); the second serves.
        let (gone, _) = mpsc::unbounded_channel::<Handed>();
        let (serving, mut taken) = mpsc::unbounded_channel::<Handed>();
        let workers = Workers {
            workers: vec![
                Worker {
                    connections: gone,
                    load: Arc::default(),
                },
                Worker {
                    connections: serving,
                    load: Arc::default(),
                },
            ],
            homes: vec![Some(0), Some(0)],
            threads: Vec::new(),
            done: None,
        };
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();

        workers.dispatch(stream, peer, graceful.watcher());

        let (handed, from, _) = taken.try_recv().expect("handed to the thread that serves");
        assert_eq!(from, peer);
        assert_eq!(handed.peer_addr().unwrap(), client.local_addr().unwrap());
        let loads = workers.loads();
        assert_eq!(loads, [GONE, 1]);
        // Not chosen again, even as the least busy or its CPU's thread.
        assert_eq!(pick(&loads, Some(0)), Some(1));
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
