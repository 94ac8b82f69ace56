//! Traffic over the last 24 hours in 15-minute slots, for the status page's chart: requests,
//! answers from cache and from upstream, bytes sent. Kept in memory only: a restart starts an
//! empty chart, while the counters in `/metrics` are what long-term monitoring keeps.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The width of one slot.
pub const SLOT_SECS: u64 = 900;
/// Slots kept: 24 hours.
pub const SLOTS: usize = 96;

/// One slot's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Unix seconds at the slot's start.
    pub start: u64,
    pub requests: u64,
    /// Answered from a cache tier (fresh, stale or revalidated).
    pub hits: u64,
    /// Answered after a fetch from upstream.
    pub misses: u64,
    pub bytes: u64,
}

/// A ring of [`SLOTS`] slots indexed by slot number modulo its length; a slot left from an
/// earlier day is recognised by its start and reset before use.
#[derive(Debug)]
pub struct Traffic {
    slots: Box<[Slot; SLOTS]>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            slots: Box::new([Slot::default(); SLOTS]),
        }
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Traffic {
    /// One answered request; `cache` is the `X-Cache` word (`HIT`, `MISS`, `STALE`,
    /// `REVALIDATED`) or `-` for answers that are neither.
    pub fn record(&mut self, at: SystemTime, cache: &str, bytes: u64) {
        let number = unix_secs(at) / SLOT_SECS;
        let start = number * SLOT_SECS;
        let slot = &mut self.slots[(number % SLOTS as u64) as usize];
        if slot.start != start {
            *slot = Slot {
                start,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.bytes += bytes;
        match cache {
            "MISS" => slot.misses += 1,
            "HIT" | "STALE" | "REVALIDATED" => slot.hits += 1,
            _ => {}
        }
    }

    /// The last 24 hours up to `now`, oldest first, one entry per slot (empty ones included).
    pub fn last_day(&self, now: SystemTime) -> Vec<Slot> {
        let current = unix_secs(now) / SLOT_SECS;
        (0..SLOTS as u64)
            .rev()
            .map(|back| {
                let number = current.saturating_sub(back);
                let start = number * SLOT_SECS;
                let slot = self.slots[(number % SLOTS as u64) as usize];
                if slot.start == start {
                    slot
                } else {
                    Slot {
                        start,
                        ..Slot::default()
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requests_land_in_their_slot_and_old_slots_are_forgotten() {
        let mut traffic = Traffic::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        traffic.record(t0, "HIT", 100);
        traffic.record(t0 + Duration::from_secs(1), "MISS", 50);
        traffic.record(t0 + Duration::from_secs(2), "-", 7);
        let later = t0 + Duration::from_secs(SLOT_SECS * 3);
        traffic.record(later, "STALE", 1);
        let day = traffic.last_day(later);
        assert_eq!(day.len(), SLOTS);
        let last = day[SLOTS - 1];
        assert_eq!((last.requests, last.hits, last.misses), (1, 1, 0));
        let first = day[SLOTS - 4];
        assert_eq!(
            (first.requests, first.hits, first.misses, first.bytes),
            (3, 1, 1, 157)
        );
        assert!(day.windows(2).all(|w| w[1].start == w[0].start + SLOT_SECS));
        // A day later the same ring index holds a new slot; the old counts are gone.
        let next_day = t0 + Duration::from_secs(SLOT_SECS * SLOTS as u64);
        traffic.record(next_day, "MISS", 2);
        let day = traffic.last_day(next_day);
        assert_eq!(day.iter().map(|s| s.requests).sum::<u64>(), 2);
    }
}
