//! A download in progress ("flight") and the clients following it.
//!
//! The download writes the bytes to a temporary file that every client reads at its own pace.
//! When a write fails (a full disk), the rest of the bytes are kept in memory instead (the
//! "spill"), so the clients still get the whole archive, streamed through; it is then not
//! stored.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use super::budget::ReadBudget;
use super::integrity::chunk_at;
use crate::error::ProxyError;

/// What a flight has done so far; readers watch it.
#[derive(Clone, Default)]
pub(super) struct Progress {
    /// Upstream answered and bytes are on their way: clients can follow.
    pub(super) started: bool,
    /// The temporary file, shared by the writer and every reader; `None` when it could not be
    /// created (then every byte is in `spill`).
    pub(super) file: Option<Arc<std::fs::File>>,
    /// Bytes from `spill.start` on, after a write to the temporary file failed.
    pub(super) spill: Option<Arc<Spill>>,
    pub(super) len: Option<u64>,
    pub(super) written: u64,
    /// CRC-32 of the whole archive, once it is verified: readers check what they read back
    /// from the temporary file (or memory) against it before their last byte.
    pub(super) crc32: Option<u32>,
    /// `Some(Ok)`: verified (and stored, unless it had to stream through). Without `started`,
    /// another process stored it.
    pub(super) outcome: Option<Result<(), Arc<ProxyError>>>,
}

/// Bytes of a download kept in memory because they could not be written to disk.
pub(super) struct Spill {
    pub(super) start: u64,
    chunks: RwLock<Vec<(u64, Bytes)>>,
    /// Bytes held by every spill of the process, against [`SPILL_BUDGET_BYTES`].
    budget: Arc<AtomicU64>,
    held: AtomicU64,
}

/// Memory all downloads together may hold while a full disk makes them stream through: past
/// it a download fails (its clients see a broken transfer and retry) rather than the process
/// being killed for want of memory.
pub(super) const SPILL_BUDGET_BYTES: u64 = 512 * 1024 * 1024;

impl Spill {
    pub(super) fn new(start: u64, budget: Arc<AtomicU64>) -> Self {
        Self {
            start,
            chunks: RwLock::new(Vec::new()),
            budget,
            held: AtomicU64::new(0),
        }
    }

    /// Appends the bytes at `offset` (the end of what is held so far); `false` when the
    /// budget has no room for them.
    pub(super) fn push(&self, offset: u64, bytes: Bytes) -> bool {
        let n = bytes.len() as u64;
        let reserved = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= SPILL_BUDGET_BYTES).then_some(used + n)
            })
            .is_ok();
        if reserved {
            self.held.fetch_add(n, Ordering::Relaxed);
            self.chunks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push((offset, bytes));
        }
        reserved
    }

    /// Up to `max` bytes from `pos`, without copying.
    fn read(&self, pos: u64, max: u64) -> Option<Bytes> {
        let chunks = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        let (bytes, within) = chunk_at(&chunks, pos)?;
        let n = (bytes.len() - within).min(usize::try_from(max).unwrap_or(usize::MAX));
        Some(bytes.slice(within..within + n))
    }

    pub(super) fn chunks(&self) -> Vec<(u64, Bytes)> {
        self.chunks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.budget
            .fetch_sub(self.held.load(Ordering::Relaxed), Ordering::AcqRel);
    }
}

/// A client following a download: reads what is written so far.
pub struct FlightReader {
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) pos: u64,
    pub(super) crc: crc32fast::Hasher,
    pub(super) budget: ReadBudget,
}

impl FlightReader {
    /// The next chunk, `None` at the verified end, or an error if the download failed.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let (file, spill, limit, complete, crc32) = {
                let p = self.progress.borrow_and_update();
                if let Some(Err(e)) = &p.outcome {
                    return Some(Err(io::Error::other(e.to_string())));
                }
                let complete = matches!(p.outcome, Some(Ok(())));
                // Hold the last byte back until the archive is verified: a client must not
                // see a complete response for bytes that may turn out to be wrong.
                let limit = if complete {
                    p.written
                } else {
                    p.written.saturating_sub(1)
                };
                (p.file.clone(), p.spill.clone(), limit, complete, p.crc32)
            };
            if self.pos < limit {
                let pos = self.pos;
                let read = match spill.as_ref().filter(|s| pos >= s.start) {
                    Some(spill) => spill
                        .read(pos, limit - pos)
                        .ok_or_else(|| io::Error::other("a received chunk is missing")),
                    None => {
                        let file_end = spill.as_ref().map_or(limit, |s| s.start.min(limit));
                        match file {
                            Some(file) => self.budget.read_at(file, pos, file_end - pos).await,
                            None => Err(io::Error::other("no temporary file")),
                        }
                    }
                };
                if let Ok(bytes) = &read {
                    self.pos += bytes.len() as u64;
                    self.crc.update(bytes);
                    let last = complete && self.pos == limit;
                    if last && crc32.is_some_and(|crc| crc != self.crc.clone().finalize()) {
                        return Some(Err(io::Error::other(
                            "archive bytes read back differ from those verified",
                        )));
                    }
                }
                return Some(read);
            }
            if complete {
                return None;
            }
            if self.progress.changed().await.is_err() {
                return Some(Err(io::Error::other("archive download stopped")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn a_reader_follows_the_file_then_the_spill_and_waits_for_verification() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"hello ").expect("write");
        let budget = Arc::new(AtomicU64::new(0));
        let spill = Arc::new(Spill::new(6, budget.clone()));
        assert!(spill.push(6, Bytes::from_static(b"wor")));
        assert!(spill.push(9, Bytes::from_static(b"ld")));
        assert_eq!(budget.load(Ordering::Relaxed), 5);
        let (tx, rx) = watch::channel(Progress {
            started: true,
            file: Some(Arc::new(file)),
            spill: Some(spill),
            len: Some(11),
            written: 11,
            crc32: None,
            outcome: None,
        });
        let mut reader = FlightReader {
            progress: rx,
            pos: 0,
            crc: crc32fast::Hasher::new(),
            budget: ReadBudget::default(),
        };
        let mut got = Vec::new();
        // Everything but the last byte, while the download is not verified yet.
        while got.len() < 10 {
            let chunk = reader.next_chunk().await.expect("chunk").expect("read");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, b"hello worl");
        tx.send_modify(|p| {
            p.crc32 = Some(crc32fast::hash(b"hello world"));
            p.outcome = Some(Ok(()));
        });
        let last = reader.next_chunk().await.expect("last").expect("read");
        assert_eq!(&last[..], b"d");
        assert!(reader.next_chunk().await.is_none());
        drop((reader, tx));
        assert_eq!(
            budget.load(Ordering::Relaxed),
            0,
            "the spill gave its memory back"
        );
    }

    #[test]
    fn spills_share_one_budget() {
        let budget = Arc::new(AtomicU64::new(SPILL_BUDGET_BYTES - 4));
        let spill = Spill::new(0, budget.clone());
        assert!(spill.push(0, Bytes::from_static(b"abcd")));
        assert!(!spill.push(4, Bytes::from_static(b"e")), "over budget");
        drop(spill);
        assert_eq!(budget.load(Ordering::Relaxed), SPILL_BUDGET_BYTES - 4);
    }

    #[tokio::test]
    async fn bytes_read_back_that_differ_from_the_verified_ones_break_the_transfer() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"hellO").expect("write");
        let (_tx, rx) = watch::channel(Progress {
            started: true,
            file: Some(Arc::new(file)),
            len: Some(5),
            written: 5,
            crc32: Some(crc32fast::hash(b"hello")),
            outcome: Some(Ok(())),
            ..Progress::default()
        });
        let mut reader = FlightReader {
            progress: rx,
            pos: 0,
            crc: crc32fast::Hasher::new(),
            budget: ReadBudget::default(),
        };
        assert!(reader.next_chunk().await.expect("a result").is_err());
    }
}
