//! One bound on the memory of archive bytes read for responses: every chunk read from a file
//! for a client holds its size against [`BUDGET_BYTES`] until hyper has sent it and dropped it.
//! Read sizes adapt: full chunks while the budget is mostly free, smaller ones as it fills (so
//! many concurrent downloads share it instead of queueing), and a read waits for room when
//! even the smallest does not fit. Without it each response held up to a full chunk in flight,
//! and 1,000 downloads took over 600 MB.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::READ_CHUNK;

/// Bytes of all responses' read chunks in memory at once, at most.
pub const BUDGET_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest read: below it, system calls and frames cost more than the memory saved.
pub const MIN_READ: u64 = 16 * 1024;
/// The budget is counted in these units (a semaphore's permits are a `u32`).
const UNIT: u64 = 1024;

/// The share of the budget one read may take when `free` of `budget` bytes are free.
pub fn read_size(free: u64, budget: u64) -> u64 {
    // Full chunks while half the budget is free; then in proportion to what is free, so the
    // chunk size falls as the number of readers grows.
    let half = (budget / 2).max(1);
    let size = READ_CHUNK.saturating_mul(free.min(half)) / half;
    // A power of two, so sizes stay few and aligned.
    let size = if size == 0 { 0 } else { 1 << size.ilog2() };
    size.clamp(MIN_READ, READ_CHUNK)
}

#[derive(Clone)]
pub struct ReadBudget {
    units: Arc<Semaphore>,
}

impl Default for ReadBudget {
    fn default() -> Self {
        Self {
            units: Arc::new(Semaphore::new((BUDGET_BYTES / UNIT) as usize)),
        }
    }
}

/// A chunk's bytes with its share of the budget, given back when the last `Bytes` of it drops.
struct Held {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl ReadBudget {
    /// Bytes of the budget held now.
    pub fn in_use(&self) -> u64 {
        BUDGET_BYTES - self.units.available_permits() as u64 * UNIT
    }

    /// Reads up to `max` bytes of `file` at `pos` (exactly as many unless `max` is larger
    /// than the read size the budget allows now).
    /// Takes `bytes` of the budget now, or `None` while that much is not free.
    pub fn try_hold(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).ok()?;
        self.units.clone().try_acquire_many_owned(units).ok()
    }

    pub async fn read_at(&self, file: Arc<std::fs::File>, pos: u64, max: u64) -> io::Result<Bytes> {
        let free = self.units.available_permits() as u64 * UNIT;
        let n = max.min(read_size(free, BUDGET_BYTES));
        let units = u32::try_from(n.div_ceil(UNIT)).map_err(io::Error::other)?;
        let permit = self
            .units
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            let mut bytes = vec![0; usize::try_from(n).map_err(io::Error::other)?];
            file.read_exact_at(&mut bytes, pos)?;
            Ok(Bytes::from_owner(Held {
                bytes,
                _permit: permit,
            }))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_shrink_as_the_budget_fills_and_never_below_the_minimum() {
        let b = BUDGET_BYTES;
        assert_eq!(read_size(b, b), READ_CHUNK);
        assert_eq!(read_size(b / 2, b), READ_CHUNK);
        assert_eq!(read_size(b / 4, b), READ_CHUNK / 2);
        assert_eq!(read_size(b / 8, b), READ_CHUNK / 4);
        assert_eq!(read_size(b / 5, b), READ_CHUNK / 4, "rounded down");
        assert_eq!(read_size(b / 64, b), MIN_READ);
        assert_eq!(read_size(0, b), MIN_READ);
        assert_eq!(read_size(0, 0), MIN_READ);
    }

    #[tokio::test]
    async fn a_chunk_holds_its_share_until_the_last_copy_is_dropped() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&[7u8; 100_000]).expect("write");
        let file = Arc::new(file);
        let budget = ReadBudget::default();
        let chunk = budget
            .read_at(file.clone(), 10, 50_000)
            .await
            .expect("read");
        assert_eq!(chunk.len(), 50_000);
        assert!(chunk.iter().all(|&b| b == 7));
        let held = 50_000u64.div_ceil(UNIT) * UNIT;
        assert_eq!(budget.in_use(), held);
        let part = chunk.slice(1..2);
        drop(chunk);
        assert_eq!(budget.in_use(), held, "a slice still holds it");
        drop(part);
        assert_eq!(budget.in_use(), 0);
        let short = budget.read_at(file, 99_990, 20).await;
        assert!(short.is_err(), "past the end is an error, as before");
        assert_eq!(budget.in_use(), 0);
    }
}
