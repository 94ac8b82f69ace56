//! Package archives on disk.
//!
//! - **One fetch per archive.** Concurrent misses for one archive join a single download (a
//!   "flight"). The download writes a temporary file; every client of the flight reads that
//!   file at its own pace, so a slow client never slows the download or the other clients, and
//!   a client that goes away never stops it.
//! - **Nothing partial or wrong is ever complete.** Readers are kept one byte behind the writer
//!   until the archive is verified (`integrity.rs` says how, with and without a published
//!   sha1), so a client can only receive the whole body once it is; on failure it sees the
//!   connection break. A transfer cut short is resumed a few times before the flight fails. The
//!   file is flushed, fsynced and renamed into the store only when whole. Stored archives are
//!   checked again on every serve (`stored.rs`) and by a background scrub (`scrub.rs`).
//! - **A full disk costs storage, not installs.** When the cache cannot be written, clients
//!   still get the complete, verified archive, streamed through (`download.rs`), and eviction
//!   makes room.
//! - **Replicas share the directory.** A download holds an advisory lock on a per-archive lock
//!   file, so another process sharing the cache waits for it and then serves the stored file
//!   instead of fetching again. Removing a file never disturbs a download another process is
//!   serving from it: open descriptors keep the data.
//! - **Bounded by size.** Least recently used archives are removed when the store (with the
//!   temporary files of downloads) grows past its bound, or the volume's free space falls
//!   below its floor. Use is tracked in memory and, at most every few minutes per file, as the file's
//!   modification time, so replicas evicting from a shared directory see each other's use.
//! - **Hot small archives stay in memory** (bounded by bytes), because reading a 100 KB file
//!   through the blocking pool costs more than the request itself.
//!
//! The store key covers the upstream URL and the promised shasum, so an archive that changed
//! upstream is a new entry rather than a mismatch with the old one.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use crate::bucket::Bucket;
use crate::cache::metadata::CacheStatus;
use crate::cache::{CacheDir, DiskSpace};
use crate::composer::DistSource;
use crate::error::ProxyError;
use crate::upstream::{Exchanges, UpstreamClient, UpstreamNote, EXCHANGE};

mod budget;
mod download;
mod flight;
mod framing;
mod index;
pub mod integrity;
mod scrub;
mod shared;
mod stored;

use download::Download;
pub use flight::FlightReader;
use flight::Progress;
pub(crate) use index::scan;
use index::{EvictionTrigger, Index};
pub use integrity::StoredArchive;
pub use scrub::{ScrubPass, ScrubSettings};
pub use stored::{read_description, StoredReader};

/// Upstream attempts per download; a transfer cut short is resumed this many times less one.
const MAX_ATTEMPTS: u32 = 3;
/// Bytes gathered from upstream before one write; keeps blocking-pool round trips few.
const WRITE_CHUNK: usize = 128 * 1024;
/// Bytes read per step when a client follows a download in progress.
const READ_CHUNK: u64 = 256 * 1024;
/// Archives up to this size are kept in memory once served from disk.
const MEMORY_OBJECT_SMALL: u64 = 2 * 1024 * 1024;
/// Larger archives are kept in memory too, up to this share of the memory tier's bound and at
/// most [`MEMORY_OBJECT_LARGE`]: a hot 5 MB archive served from memory is written to the socket
/// from one shared copy, where from disk every response read it into buffers of its own first
/// (0.74x nginx's throughput, whose sendfile needs no such copy).
const MEMORY_OBJECT_SHARE: u64 = 16;
const MEMORY_OBJECT_LARGE: u64 = 32 * 1024 * 1024;
/// Eviction brings the store down to this share of its bound, so it runs once per tenth of
/// the bound written rather than after every download.
const LOW_WATER_PERCENT: u64 = 90;
/// How stale this process's view of the directory may be before eviction rescans it; other
/// replicas add files it does not see otherwise.
const RESCAN_INTERVAL: Duration = Duration::from_secs(60);
/// How often a served archive's modification time is refreshed on disk (its use, for other
/// replicas' eviction).
const TOUCH_INTERVAL: Duration = Duration::from_secs(600);
/// How often a process waiting for another's download checks its lock.
const PEER_POLL: Duration = Duration::from_millis(50);
/// Descriptions kept in memory, so a hit reads its description file once, not every time.
const DESCRIPTIONS_KEPT: u64 = 100_000;

/// An archive ready to be sent.
pub enum Archive {
    /// Stored, verified and small: served from memory.
    Memory(Bytes),
    /// Stored; checked as it is read.
    File(StoredReader),
    /// Being fetched; yields the bytes as they arrive, then ends or fails.
    Streaming {
        reader: FlightReader,
        len: Option<u64>,
    },
}

/// A small archive held in memory, and the file it was read from (by inode): the copy is
/// served only while that file is still the one in the store.
#[derive(Clone)]
struct MemoryEntry {
    bytes: Bytes,
    ino: u64,
}

/// The store's bounds and maintenance, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    pub max_bytes: u64,
    /// Memory for small archives; 0 turns the memory tier off.
    pub memory_bytes: u64,
    /// Eviction keeps at least this much of the volume free.
    pub min_free_bytes: u64,
}

impl From<&crate::config::Config> for StoreSettings {
    fn from(config: &crate::config::Config) -> Self {
        Self {
            max_bytes: config.archive_cache_max_bytes,
            memory_bytes: config.archive_memory_cache_max_bytes,
            min_free_bytes: config.cache_min_free_bytes,
        }
    }
}

/// The free-space floor to enforce: as configured, but at most a quarter of the volume, where
/// a larger floor would make every archive stored evict all the others. Said in the log.
fn effective_floor(configured: u64, space: Option<DiskSpace>) -> u64 {
    let Some(space) = space else {
        return configured;
    };
    let cap = space.total_bytes / 4;
    if configured > cap {
        tracing::warn!(
            cache_min_free_bytes = configured,
            volume_bytes = space.total_bytes,
            floor_bytes = cap,
            "cache_min_free_bytes is more than a quarter of the cache volume; a quarter of it is \
             kept free instead"
        );
        return cap;
    }
    configured
}

/// Figures for `/metrics` and `cache stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchiveStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub memory_bytes: u64,
    pub memory_entries: u64,
    pub memory_max_bytes: u64,
    pub evictions: u64,
    pub single_flight_waits: u64,
    /// Bytes of chunks read for clients and not yet sent.
    pub response_buffer_bytes: u64,
    pub downloads_failed: u64,
    /// Downloads served complete but not stored (the cache write failed).
    pub unstored: u64,
    pub damaged_on_serve: u64,
    pub damaged_by_scrub: u64,
    pub scrubbed_archives: u64,
    pub scrubbed_bytes: u64,
}

pub struct ArchiveStore {
    inner: Arc<Inner>,
}

struct Inner {
    disk: Arc<CacheDir>,
    flights: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    index: Mutex<Index>,
    memory: moka::sync::Cache<String, MemoryEntry>,
    /// Descriptions read, with the inode and length of the file each describes.
    descriptions: moka::sync::Cache<String, ((u64, u64), Arc<StoredArchive>)>,
    max_bytes: u64,
    min_free_bytes: u64,
    evicting: AtomicBool,
    evictions: AtomicU64,
    single_flight_waits: AtomicU64,
    downloads_failed: AtomicU64,
    unstored: AtomicU64,
    damaged_on_serve: AtomicU64,
    damaged_by_scrub: AtomicU64,
    scrubbed_archives: AtomicU64,
    scrubbed_bytes: AtomicU64,
    /// The last scrub pass that finished.
    last_scrub: Mutex<Option<ScrubPass>>,
    /// Bytes all downloads hold in memory after a failed write (see `flight::Spill`).
    spilled: Arc<AtomicU64>,
    /// Memory of the chunks being sent to clients.
    read_budget: budget::ReadBudget,
    /// The bucket tier between this disk and upstream (`object_store_url`).
    bucket: Option<Arc<Bucket>>,
    /// Bounds the uploads to the bucket in progress, each holding its archive in memory.
    uploads: Arc<tokio::sync::Semaphore>,
    /// This process, as named in the bucket's leases.
    holder: String,
    /// Archives up to this size go into `memory` (see [`MEMORY_OBJECT_SHARE`]).
    memory_object_max: u64,
}

type NoteSlot = Exchanges;

fn lock_note(slot: &NoteSlot) -> MutexGuard<'_, Vec<UpstreamNote>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock(mutex: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // A panic while holding the index lock cannot leave it inconsistent in a way that matters
    // more than serving: entries are advisory. Keep going with whatever is there.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ArchiveStore {
    /// Opens the store and reads the sizes and ages of what is already on disk.
    /// With `bucket`, it is the tier between the disk and upstream.
    pub async fn open(
        disk: Arc<CacheDir>,
        settings: StoreSettings,
        bucket: Option<Arc<Bucket>>,
    ) -> io::Result<Self> {
        let root = disk.archives_root();
        let scanned = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .map_err(io::Error::other)??;
        let volume = disk.root().to_path_buf();
        let space = tokio::task::spawn_blocking(move || DiskSpace::of(&volume).ok())
            .await
            .ok()
            .flatten();
        let min_free_bytes = effective_floor(settings.min_free_bytes, space);
        let memory = moka::sync::Cache::builder()
            .max_capacity(settings.memory_bytes)
            .weigher(|_key: &String, value: &MemoryEntry| {
                u32::try_from(value.bytes.len()).unwrap_or(u32::MAX)
            })
            .build();
        let mut index = Index {
            entries: HashMap::new(),
            total: 0,
            scanned_at: Instant::now(),
        };
        index.replace(scanned);
        let inner = Arc::new(Inner {
            disk,
            flights: Mutex::new(HashMap::new()),
            index: Mutex::new(index),
            memory,
            descriptions: moka::sync::Cache::new(DESCRIPTIONS_KEPT),
            max_bytes: settings.max_bytes,
            min_free_bytes,
            evicting: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
            single_flight_waits: AtomicU64::new(0),
            downloads_failed: AtomicU64::new(0),
            unstored: AtomicU64::new(0),
            damaged_on_serve: AtomicU64::new(0),
            damaged_by_scrub: AtomicU64::new(0),
            scrubbed_archives: AtomicU64::new(0),
            scrubbed_bytes: AtomicU64::new(0),
            last_scrub: Mutex::new(None),
            spilled: Arc::new(AtomicU64::new(0)),
            read_budget: budget::ReadBudget::default(),
            bucket,
            uploads: Arc::new(tokio::sync::Semaphore::new(shared::UPLOADS_AT_ONCE)),
            holder: shared::holder_name(),
            memory_object_max: (settings.memory_bytes / MEMORY_OBJECT_SHARE)
                .clamp(MEMORY_OBJECT_SMALL, MEMORY_OBJECT_LARGE),
        });
        let start = inner.clone();
        tokio::task::spawn_blocking(move || {
            start.log_bound_against_volume();
            // A smaller bound than last run's contents takes effect at start, not at the next
            // write.
            start.evict_if_needed(EvictionTrigger::Start);
        });
        Ok(Self { inner })
    }

    /// Sweeps temporary files of dead processes (then keeps the store in bounds, as they count
    /// against it) every `sweep_every`, and scrubs the store with `scrub`. Runs until dropped.
    pub async fn maintain(&self, sweep_every: Duration, scrub: Option<ScrubSettings>) {
        let sweeper = async {
            let mut ticker = tokio::time::interval(sweep_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let inner = self.inner.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    inner.disk.sweep_temp().log();
                    inner.evict_if_needed(EvictionTrigger::Sweep);
                })
                .await;
            }
        };
        let scrubber = async {
            let Some(scrub) = scrub else {
                return std::future::pending::<()>().await;
            };
            let start = tokio::time::Instant::now() + scrub.interval;
            let mut ticker = tokio::time::interval_at(start, scrub.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.inner.scrub_pass(scrub.max_bytes_per_sec).await;
            }
        };
        tokio::join!(sweeper, scrubber);
    }

    /// The free-space floor in force (see [`effective_floor`]).
    pub fn min_free_bytes(&self) -> u64 {
        self.inner.min_free_bytes
    }

    /// The cache directory the store lives in.
    pub fn disk(&self) -> &Arc<CacheDir> {
        &self.inner.disk
    }

    pub async fn remove_own_temp(&self) -> usize {
        self.inner.disk.remove_own_temp().await
    }

    pub fn stats(&self) -> ArchiveStats {
        let index = lock(&self.inner.index);
        ArchiveStats {
            entries: index.entries.len() as u64,
            bytes: index.total,
            max_bytes: self.inner.max_bytes,
            memory_bytes: self.inner.memory.weighted_size(),
            memory_entries: self.inner.memory.entry_count(),
            memory_max_bytes: self.inner.memory.policy().max_capacity().unwrap_or(0),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            single_flight_waits: self.inner.single_flight_waits.load(Ordering::Relaxed),
            response_buffer_bytes: self.inner.read_budget.in_use(),
            downloads_failed: self.inner.downloads_failed.load(Ordering::Relaxed),
            unstored: self.inner.unstored.load(Ordering::Relaxed),
            damaged_on_serve: self.inner.damaged_on_serve.load(Ordering::Relaxed),
            damaged_by_scrub: self.inner.damaged_by_scrub.load(Ordering::Relaxed),
            scrubbed_archives: self.inner.scrubbed_archives.load(Ordering::Relaxed),
            scrubbed_bytes: self.inner.scrubbed_bytes.load(Ordering::Relaxed),
        }
    }

    /// The last scrub pass that finished in this process.
    pub fn last_scrub(&self) -> Option<ScrubPass> {
        *self
            .inner
            .last_scrub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stored archive, joins the download in progress, or starts one. `key` is
    /// [`DistSource::store_key`] of `source`, which the caller already needed for the ETag.
    /// A download fetches with `upstream`'s client: its key pair goes to its origin only.
    pub async fn get(
        &self,
        upstream: &Arc<UpstreamClient>,
        source: &DistSource,
        key: &str,
    ) -> Result<(Archive, CacheStatus), ProxyError> {
        if let Some(archive) = self.inner.lookup(key).await? {
            return Ok((archive, CacheStatus::Hit));
        }
        let (mut progress, leader_note) = self.inner.join_or_start(upstream, key, source);
        loop {
            {
                let p = progress.borrow_and_update();
                if let Some(Err(e)) = &p.outcome {
                    return Err(ProxyError::Shared(e.clone()));
                }
                if p.started {
                    let len = p.len;
                    drop(p);
                    // The request that started the download reports its upstream exchange.
                    let notes = leader_note.as_ref().map(|n| lock_note(n).clone());
                    for note in notes.into_iter().flatten() {
                        crate::upstream::note_exchange(note);
                    }
                    let reader = FlightReader {
                        progress,
                        pos: 0,
                        crc: crc32fast::Hasher::new(),
                        budget: self.inner.read_budget.clone(),
                    };
                    return Ok((Archive::Streaming { reader, len }, CacheStatus::Miss));
                }
                if matches!(p.outcome, Some(Ok(()))) {
                    break;
                }
            }
            if progress.changed().await.is_err() {
                return Err(ProxyError::Cache(io::Error::other(
                    "archive download stopped unexpectedly",
                )));
            }
        }
        // Another process sharing the cache directory stored it while this one waited.
        match self.inner.lookup(key).await? {
            Some(archive) => Ok((archive, CacheStatus::Hit)),
            None => Err(ProxyError::Cache(io::Error::other(
                "archive stored by another process vanished before it could be read",
            ))),
        }
    }
}

impl Inner {
    /// Says at start whether the configured bound fits the volume; where it does not, the
    /// free-space floor is what bounds the store. Blocking.
    fn log_bound_against_volume(&self) {
        let stored_bytes = lock(&self.index).total;
        let Ok(space) = self.disk.disk_space() else {
            tracing::warn!("cannot read the cache volume's free space; only archive_cache_max_bytes bounds the store");
            return;
        };
        let room = stored_bytes + space.available_bytes.saturating_sub(self.min_free_bytes);
        if room < self.max_bytes {
            tracing::warn!(
                event = "archive_bound_exceeds_volume",
                max_bytes = self.max_bytes,
                stored_bytes,
                available_bytes = space.available_bytes,
                min_free_bytes = self.min_free_bytes,
                "archive_cache_max_bytes is more than the cache volume can hold ({room} bytes \
                 stored or free above cache_min_free_bytes); storing an archive evicts older \
                 ones to keep cache_min_free_bytes free instead, so lower the bound to what \
                 the volume holds"
            );
        } else {
            tracing::info!(
                max_bytes = self.max_bytes,
                stored_bytes,
                available_bytes = space.available_bytes,
                min_free_bytes = self.min_free_bytes,
                "archive store opened"
            );
        }
    }

    /// Records a use; now and then also on disk, for replicas sharing the directory.
    fn mark_used(self: &Arc<Self>, key: &str, len: u64) {
        let now = SystemTime::now();
        let touch = {
            let mut index = lock(&self.index);
            match index.entries.get_mut(key) {
                Some(entry) => {
                    entry.used = now;
                    let due = now
                        .duration_since(entry.touched)
                        .is_ok_and(|age| age >= TOUCH_INTERVAL);
                    if due {
                        entry.touched = now;
                    }
                    due
                }
                None => {
                    // Stored by another process since the last scan.
                    index.insert(key, len, now);
                    false
                }
            }
        };
        if touch {
            if let Some(path) = self.disk.archive_path(key) {
                tokio::task::spawn_blocking(move || {
                    // Losing a use record only makes eviction slightly less accurate.
                    let _ = std::fs::File::open(path).and_then(|f| f.set_modified(now));
                });
            }
        }
    }

    /// The flight for `key`: the one in progress, or a new one (then with the slot its upstream
    /// exchange is recorded in, for the starting request's access-log line).
    fn join_or_start(
        self: &Arc<Self>,
        upstream: &Arc<UpstreamClient>,
        key: &str,
        source: &DistSource,
    ) -> (watch::Receiver<Progress>, Option<NoteSlot>) {
        let mut flights = self
            .flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(progress) = flights.get(key) {
            self.single_flight_waits.fetch_add(1, Ordering::Relaxed);
            return (progress.clone(), None);
        }
        let (tx, rx) = watch::channel(Progress::default());
        flights.insert(key.to_string(), rx.clone());
        let download = Download {
            inner: self.clone(),
            upstream: upstream.clone(),
            key: key.to_string(),
            source: source.clone(),
            tx,
        };
        let note: NoteSlot = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(EXCHANGE.scope(note.clone(), download.run()));
        (rx, Some(note))
    }

    fn forget_flight(&self, key: &str) {
        self.flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_floor_is_at_most_a_quarter_of_the_volume() {
        const GIB: u64 = 1024 * 1024 * 1024;
        let volume = |total_bytes| {
            Some(DiskSpace {
                available_bytes: 0,
                total_bytes,
            })
        };
        assert_eq!(effective_floor(GIB, volume(100 * GIB)), GIB);
        assert_eq!(effective_floor(GIB, volume(2 * GIB)), GIB / 2);
        assert_eq!(effective_floor(GIB, None), GIB);
    }
}
