//! Log lines gathered in memory by the threads that log them and written to stderr in batches
//! by one background thread.
//!
//! One access line per request made logging the largest cost of a cached answer: handing each
//! line to a writer thread woke that thread (a futex wake and two context switches) and cost a
//! `write(2)` per line. Here a line is appended to a buffer under a short lock; the writer
//! wakes only when a line arrives at an empty buffer, waits [`GATHER`] so that a busy proxy's
//! lines come together, and writes them in one call. A quiet proxy's line reaches stderr
//! within [`GATHER`]; a busy one's makes about a hundred writes a second instead of one per
//! request.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first one arrives.
const GATHER: Duration = Duration::from_millis(10);

/// Lines held while stderr is not taking them (a stuck log collector); past this, new lines
/// are dropped and counted rather than growing memory without bound.
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Lines refused because `lines` was full, reported with the next write.
    dropped: u64,
    /// The writer is waiting for a line (so the next one must wake it).
    idle: bool,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` given to the subscriber.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Writes what is still pending and stops the writer when dropped; keep it until exit.
pub struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

/// Starts the writer thread.
pub fn stderr() -> (BatchedStderr, FlushGuard) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
    });
    let for_thread = shared.clone();
    let writer = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(&for_thread, &mut io::stderr()))
        // Without the thread nothing would ever be written; the caller cannot go on silently.
        .expect("cannot start the log writer thread");
    (
        BatchedStderr {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            writer: Some(writer),
        },
    )
}

fn write_batches(shared: &Shared, out: &mut impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && pending.dropped == 0 && !pending.closed {
            pending.idle = true;
            pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        pending.idle = false;
        if !pending.closed {
            drop(pending);
            std::thread::sleep(GATHER);
            pending = shared.lock();
        }
        // Swapping keeps both buffers' capacity: no allocation per batch once warm.
        std::mem::swap(&mut batch, &mut pending.lines);
        let dropped = std::mem::take(&mut pending.dropped);
        let closed = pending.closed;
        drop(pending);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "composer-proxy: {dropped} log lines dropped: stderr was not taking them"
            );
        }
        // Nowhere to report a failing stderr; the lines are lost either way.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed && shared.lock().lines.is_empty() {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One event's line, appended whole: the subscriber formats a line completely and writes it
/// with one `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        if pending.lines.len() + line.len() > MAX_PENDING_BYTES {
            pending.dropped += 1;
        } else {
            pending.lines.extend_from_slice(line);
        }
        let wake = std::mem::take(&mut pending.idle);
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BatchedStderr {
    /// Appends one whole line (the access log's, formatted without the subscriber).
    pub(super) fn append(&self, line: &[u8]) -> io::Result<()> {
        LineWriter {
            shared: &self.shared,
        }
        .write_all(line)
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn start(sink: &Sink) -> (BatchedStderr, FlushGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let (for_thread, mut out) = (shared.clone(), sink.clone());
        let writer = std::thread::spawn(move || write_batches(&for_thread, &mut out));
        (
            BatchedStderr {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                writer: Some(writer),
            },
        )
    }

    #[test]
    fn every_line_is_written_in_order_and_the_guard_flushes_the_rest() {
        let sink = Sink::default();
        let (make, guard) = start(&sink);
        for i in 0..10_000 {
            make.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 10_000);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
    }

    #[test]
    fn a_quiet_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (make, _guard) = start(&sink);
        make.make_writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was never written"
            );
            std::thread::yield_now();
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"alone\n");
    }

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
        let shared = Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        };
        let line = vec![b'x'; 1024 * 1024];
        let mut writer = LineWriter { shared: &shared };
        for _ in 0..20 {
            writer.write_all(&line).unwrap();
        }
        let pending = shared.lock();
        assert_eq!(pending.lines.len(), 16 * 1024 * 1024);
        assert_eq!(pending.dropped, 4);
    }
}
