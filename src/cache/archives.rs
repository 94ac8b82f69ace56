//! Package archives on disk.
//!
//! - **One fetch per archive.** Concurrent misses for one archive join a single download (a
//!   "flight"). The download writes a temporary file; every client of the flight reads that
//!   file at its own pace, so a slow client never slows the download or the other clients, and
//!   a client that goes away never stops it.
//! - **Nothing partial is ever complete.** Readers are kept one byte behind the writer until the
//!   archive has its announced length and the sha1 the metadata promises, so a client can only
//!   receive the whole body once it is verified; on failure it sees the connection break. A
//!   transfer cut short is resumed (with `Range`, or by re-reading and checking the prefix)
//!   a few times before the flight fails. The file is fsynced and renamed into the store only
//!   when whole.
//! - **Replicas share the directory.** A download holds an advisory lock on a per-archive lock
//!   file, so another process sharing the cache waits for it and then serves the stored file
//!   instead of fetching again. Removing a file never disturbs a download another process is
//!   serving from it: open descriptors keep the data.
//! - **Bounded by size.** Least recently used archives are removed when the store grows past
//!   its bound. Use is tracked in memory and, at most every few minutes per file, as the file's
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

use crate::cache::metadata::CacheStatus;
use crate::cache::CacheDir;
use crate::composer::{sha256_hex, DistSource};
use crate::error::ProxyError;
use crate::upstream::{UpstreamClient, UpstreamNote, EXCHANGE};

mod download;
mod flight;
mod index;

use download::Download;
pub use flight::FlightReader;
use flight::Progress;
pub(crate) use index::scan;
use index::Index;

/// Upstream attempts per download; a transfer cut short is resumed this many times less one.
const MAX_ATTEMPTS: u32 = 3;
/// Bytes gathered from upstream before one write; keeps blocking-pool round trips few.
const WRITE_CHUNK: usize = 128 * 1024;
/// Bytes read per step when a client follows a download in progress.
const READ_CHUNK: u64 = 256 * 1024;
/// Archives up to this size are kept in memory once served from disk.
const MEMORY_OBJECT_MAX: u64 = 2 * 1024 * 1024;
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

/// An archive ready to be sent.
pub enum Archive {
    /// Stored, verified and small: served from memory.
    Memory(Bytes),
    /// Stored and verified.
    File { file: tokio::fs::File, len: u64 },
    /// Being fetched; yields the bytes as they arrive, then ends or fails.
    Streaming {
        reader: FlightReader,
        len: Option<u64>,
    },
}

/// What is stored beside each archive (`<key>.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StoredArchive {
    pub package: String,
    /// The upstream URL (never carries credentials: those go in a header).
    pub url: String,
    pub shasum: Option<String>,
    pub len: u64,
    /// sha1 of the bytes stored, whether or not upstream promised one, so `cache verify` can
    /// check every archive. Absent from descriptions written before it was recorded.
    #[serde(default)]
    pub sha1: Option<String>,
}

/// Figures for `/metrics` and `cache stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchiveStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub memory_bytes: u64,
    pub evictions: u64,
    pub single_flight_waits: u64,
    pub downloads_failed: u64,
}

pub struct ArchiveStore {
    inner: Arc<Inner>,
}

struct Inner {
    disk: Arc<CacheDir>,
    upstream: Arc<UpstreamClient>,
    flights: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    index: Mutex<Index>,
    memory: moka::sync::Cache<String, Bytes>,
    max_bytes: u64,
    evicting: AtomicBool,
    evictions: AtomicU64,
    single_flight_waits: AtomicU64,
    downloads_failed: AtomicU64,
}

type NoteSlot = Arc<Mutex<Option<UpstreamNote>>>;

fn lock_note(slot: &NoteSlot) -> MutexGuard<'_, Option<UpstreamNote>> {
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
    pub async fn open(
        disk: Arc<CacheDir>,
        upstream: Arc<UpstreamClient>,
        max_bytes: u64,
        memory_bytes: u64,
    ) -> io::Result<Self> {
        let root = disk.archives_root();
        let scanned = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .map_err(io::Error::other)??;
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_key: &String, value: &Bytes| u32::try_from(value.len()).unwrap_or(u32::MAX))
            .build();
        let mut index = Index {
            entries: HashMap::new(),
            total: 0,
            scanned_at: Instant::now(),
        };
        index.replace(scanned);
        let inner = Arc::new(Inner {
            disk,
            upstream,
            flights: Mutex::new(HashMap::new()),
            index: Mutex::new(index),
            memory,
            max_bytes,
            evicting: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
            single_flight_waits: AtomicU64::new(0),
            downloads_failed: AtomicU64::new(0),
        });
        // A smaller bound than last run's contents takes effect at start, not at the next write.
        let start = inner.clone();
        tokio::task::spawn_blocking(move || start.evict_if_needed(true));
        Ok(Self { inner })
    }

    /// The store key: the upstream URL plus the promised checksum.
    pub fn store_key(source: &DistSource) -> String {
        sha256_hex(format!("{}\n{}", source.url, source.shasum.as_deref().unwrap_or("")).as_bytes())
    }

    /// Whether the cache directory takes writes (for `/readyz`): a small file written, synced
    /// and removed in `tmp/`.
    pub async fn probe_writable(&self) -> io::Result<()> {
        let probe = self.inner.disk.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&probe).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, b"ready").await?;
            file.sync_all().await
        }
        .await;
        let _ = tokio::fs::remove_file(&probe).await;
        result
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
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            single_flight_waits: self.inner.single_flight_waits.load(Ordering::Relaxed),
            downloads_failed: self.inner.downloads_failed.load(Ordering::Relaxed),
        }
    }

    /// Opens a stored archive, joins the download in progress, or starts one. `key` is
    /// [`ArchiveStore::store_key`] of `source`, which the caller already needed for the ETag.
    pub async fn get(
        &self,
        source: &DistSource,
        key: &str,
    ) -> Result<(Archive, CacheStatus), ProxyError> {
        if let Some(archive) = self.inner.lookup(key).await? {
            return Ok((archive, CacheStatus::Hit));
        }
        let (mut progress, leader_note) = self.inner.join_or_start(key, source);
        loop {
            {
                let p = progress.borrow_and_update();
                if let Some(Err(e)) = &p.outcome {
                    return Err(ProxyError::Shared(e.clone()));
                }
                if p.file.is_some() {
                    let len = p.len;
                    drop(p);
                    // The request that started the download reports its upstream exchange.
                    if let Some(note) = leader_note.as_ref().and_then(|n| *lock_note(n)) {
                        crate::upstream::note_exchange(note);
                    }
                    let reader = FlightReader { progress, pos: 0 };
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
    /// A stored archive, or `None` when it must be fetched.
    async fn lookup(self: &Arc<Self>, key: &str) -> Result<Option<Archive>, ProxyError> {
        if let Some(bytes) = self.memory.get(key) {
            self.mark_used(key, bytes.len() as u64);
            return Ok(Some(Archive::Memory(bytes)));
        }
        let Some(path) = self.disk.archive_path(key) else {
            return Err(ProxyError::Cache(io::Error::other("bad archive key")));
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata().await?.len();
        self.mark_used(key, len);
        if len <= MEMORY_OBJECT_MAX && self.memory.policy().max_capacity() != Some(0) {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await?;
            let bytes = Bytes::from(buf);
            self.memory.insert(key.to_string(), bytes.clone());
            return Ok(Some(Archive::Memory(bytes)));
        }
        Ok(Some(Archive::File { file, len }))
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
            key: key.to_string(),
            source: source.clone(),
            tx,
        };
        let note: NoteSlot = Arc::new(Mutex::new(None));
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
