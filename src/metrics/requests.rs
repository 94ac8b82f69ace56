//! The families every answered request updates, kept in shards: each thread records into a
//! shard of its own, and `/metrics` and the status page add them up.
//!
//! One lock for all of them made every request on every worker thread take the same mutex and
//! write the same maps, whose cache lines then moved between the cores with each request. A
//! thread's shard is locked by that thread alone (and by the rare reader), so the lock is
//! uncontended and its lines stay in the core's cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::histogram::Histogram;
use super::status_class;
use super::traffic::{Slot, Traffic};

/// More than the worker threads of most machines; threads beyond it share shards, which is
/// correct, only slower.
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, the same for every [`Sharded`] (threads are handed them in turn).
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The request families of one shard, or all of them added up.
#[derive(Default)]
pub(super) struct Requests {
    pub(super) requests: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    pub(super) served_bytes: BTreeMap<&'static str, u64>,
    pub(super) request_duration: BTreeMap<&'static str, Histogram>,
    pub(super) stale: BTreeMap<&'static str, u64>,
    /// By (view name, status class): names come from the configuration only.
    pub(super) view_requests: BTreeMap<(Arc<str>, &'static str), u64>,
    pub(super) view_bytes: BTreeMap<Arc<str>, u64>,
    /// The last 24 hours in slots, for the status page.
    traffic: Traffic,
}

/// What one answered request adds; see [`super::Metrics::record_request`].
pub(super) struct Answered<'a> {
    pub(super) route: &'static str,
    pub(super) status: u16,
    pub(super) cache: &'static str,
    pub(super) bytes: u64,
    pub(super) duration: Duration,
    pub(super) view: Option<&'a Arc<str>>,
}

impl Requests {
    fn record(&mut self, a: &Answered<'_>) {
        let class = status_class(a.status);
        if let Some(view) = a.view {
            *self.view_requests.entry((view.clone(), class)).or_default() += 1;
            *self.view_bytes.entry(view.clone()).or_default() += a.bytes;
        }
        *self.requests.entry((a.route, class, a.cache)).or_default() += 1;
        *self.served_bytes.entry(a.route).or_default() += a.bytes;
        self.traffic.record(SystemTime::now(), a.cache, a.bytes);
        self.request_duration
            .entry(a.route)
            .or_default()
            .observe(a.duration);
        if a.cache == "STALE" {
            *self.stale.entry(a.route).or_default() += 1;
        }
    }

    /// Adds `other`'s counts (its traffic is added by [`Sharded::traffic`]).
    fn add(&mut self, other: &Requests) {
        fn add_counts<K: Ord + Clone>(to: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
            for (key, n) in from {
                *to.entry(key.clone()).or_default() += n;
            }
        }
        add_counts(&mut self.requests, &other.requests);
        add_counts(&mut self.served_bytes, &other.served_bytes);
        add_counts(&mut self.stale, &other.stale);
        add_counts(&mut self.view_requests, &other.view_requests);
        add_counts(&mut self.view_bytes, &other.view_bytes);
        for (route, h) in &other.request_duration {
            self.request_duration.entry(route).or_default().add(h);
        }
    }
}

#[derive(Default)]
// Its own cache lines: neighbouring shards written by two cores must not share one.
#[repr(align(128))]
struct Shard(Mutex<Requests>);

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Requests> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts stay usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub(super) struct Sharded {
    shards: [Shard; SHARDS],
}

impl Sharded {
    pub(super) fn record(&self, answered: &Answered<'_>) {
        let shard = SHARD.with(|i| *i);
        self.shards[shard].lock().record(answered);
    }

    /// Every shard's counts added up.
    pub(super) fn total(&self) -> Requests {
        let mut total = Requests::default();
        for shard in &self.shards {
            total.add(&shard.lock());
        }
        total
    }

    /// The last 24 hours of traffic up to `now`, oldest slot first, all shards added up.
    pub(super) fn traffic(&self, now: SystemTime) -> Vec<Slot> {
        let mut total = Traffic::default().last_day(now);
        for shard in &self.shards {
            let day = shard.lock().traffic.last_day(now);
            for (sum, slot) in total.iter_mut().zip(day) {
                sum.requests += slot.requests;
                sum.hits += slot.hits;
                sum.misses += slot.misses;
                sum.bytes += slot.bytes;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered<'a>(route: &'static str, view: Option<&'a Arc<str>>) -> Answered<'a> {
        Answered {
            route,
            status: 200,
            cache: "HIT",
            bytes: 10,
            duration: Duration::from_millis(2),
            view,
        }
    }

    #[test]
    fn requests_recorded_on_several_threads_are_added_up() {
        let sharded = Sharded::default();
        let view: Arc<str> = "agency".into();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        sharded.record(&answered("p2", Some(&view)));
                    }
                });
            }
        });
        sharded.record(&answered("dist", None));
        let total = sharded.total();
        assert_eq!(total.requests[&("p2", "2xx", "HIT")], 400);
        assert_eq!(total.requests[&("dist", "2xx", "HIT")], 1);
        assert_eq!(total.served_bytes[&"p2"], 4000);
        assert_eq!(total.view_requests[&(view.clone(), "2xx")], 400);
        assert_eq!(total.view_bytes[&view], 4000);
        assert_eq!(total.request_duration[&"p2"].count(), 400);
        let day = sharded.traffic(SystemTime::now());
        assert_eq!(day.iter().map(|s| s.requests).sum::<u64>(), 401);
        assert_eq!(day.iter().map(|s| s.hits).sum::<u64>(), 401);
    }
}
