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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha1::{Digest, Sha1};
use tokio::sync::watch;

use crate::cache::metadata::CacheStatus;
use crate::cache::CacheDir;
use crate::composer::{sha256_hex, DistSource};
use crate::error::{ProxyError, Resource};
use crate::upstream::{RequestKind, UpstreamClient, UpstreamError, UpstreamNote, EXCHANGE};

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

/// This process's view of the stored archives.
struct Index {
    entries: HashMap<String, IndexEntry>,
    total: u64,
    scanned_at: Instant,
}

struct IndexEntry {
    len: u64,
    /// Last use, by this process or (through the file's mtime) another one.
    used: SystemTime,
    /// When the file's mtime was last set to record a use.
    touched: SystemTime,
}

/// What a flight has done so far; readers watch it.
#[derive(Clone, Default)]
struct Progress {
    /// The temporary file, once upstream answered; shared by the writer and every reader.
    file: Option<Arc<std::fs::File>>,
    len: Option<u64>,
    written: u64,
    /// `Some(Ok)`: verified and stored. Without a file, another process stored it.
    outcome: Option<Result<(), Arc<ProxyError>>>,
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

impl Index {
    fn replace(&mut self, scanned: Vec<(String, u64, SystemTime)>) {
        let mut entries = HashMap::with_capacity(scanned.len());
        let mut total = 0;
        for (key, len, mtime) in scanned {
            let used = match self.entries.get(&key) {
                Some(known) => known.used.max(mtime),
                None => mtime,
            };
            total += len;
            entries.insert(
                key,
                IndexEntry {
                    len,
                    used,
                    touched: mtime,
                },
            );
        }
        self.entries = entries;
        self.total = total;
        self.scanned_at = Instant::now();
    }

    fn insert(&mut self, key: &str, len: u64, now: SystemTime) {
        if let Some(old) = self.entries.insert(
            key.to_string(),
            IndexEntry {
                len,
                used: now,
                touched: now,
            },
        ) {
            self.total -= old.len;
        }
        self.total += len;
    }
}

/// Lists `archives/<aa>/<key>.bin` with sizes and modification times.
pub(crate) fn scan(root: &Path) -> io::Result<Vec<(String, u64, SystemTime)>> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(root)? {
        let Ok(shard) = shard else { continue };
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".bin")) else {
                continue;
            };
            // A file removed by another process between listing and stat is simply gone.
            let Ok(meta) = file.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((key.to_string(), meta.len(), mtime));
        }
    }
    Ok(found)
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

    /// Removes least recently used archives while the store is over its bound. Blocking.
    fn evict_if_needed(&self, force_scan: bool) {
        {
            let index = lock(&self.index);
            let over = index.total > self.max_bytes;
            let stale = index.scanned_at.elapsed() >= RESCAN_INTERVAL;
            if !over && !stale && !force_scan {
                return;
            }
        }
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let root = self.disk.archives_root();
        let victims = match scan(&root) {
            Ok(scanned) => {
                let mut index = lock(&self.index);
                index.replace(scanned);
                let low_water = self.max_bytes / 100 * LOW_WATER_PERCENT;
                let mut victims = Vec::new();
                if index.total > self.max_bytes {
                    let mut by_age: Vec<(SystemTime, String)> = index
                        .entries
                        .iter()
                        .map(|(k, e)| (e.used, k.clone()))
                        .collect();
                    by_age.sort();
                    for (_, key) in by_age {
                        if index.total <= low_water {
                            break;
                        }
                        if let Some(entry) = index.entries.remove(&key) {
                            index.total -= entry.len;
                            victims.push((key, entry.len));
                        }
                    }
                }
                victims
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the archive store for eviction");
                Vec::new()
            }
        };
        for (key, len) in victims {
            self.memory.invalidate(&key);
            if let Some(path) = self.disk.archive_path(&key) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(key = %key, bytes = len, "archive evicted");
                    }
                    // Another replica evicted it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(key = %key, error = %e, "cannot evict archive"),
                }
            }
            for extra in [
                self.disk.archive_lock_path(&key),
                self.disk.archive_meta_path(&key),
            ]
            .into_iter()
            .flatten()
            {
                let _ = std::fs::remove_file(extra);
            }
        }
        self.evicting.store(false, Ordering::Release);
    }
}

/// A client following a download: reads the shared temporary file up to what is written.
pub struct FlightReader {
    progress: watch::Receiver<Progress>,
    pos: u64,
}

impl FlightReader {
    /// The next chunk, `None` at the verified end, or an error if the download failed.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let (file, limit, complete) = {
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
                (p.file.clone(), limit, complete)
            };
            if self.pos < limit {
                let file = file?;
                let pos = self.pos;
                let n = (limit - pos).min(READ_CHUNK);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n as usize];
                    file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
                if read.is_ok() {
                    self.pos += n;
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

/// Why one upstream attempt ended early.
enum AttemptError {
    /// Cut short or failed to connect: worth resuming.
    Retry(ProxyError),
    /// Wrong status, wrong bytes: retrying cannot help.
    Fatal(ProxyError),
}

struct Download {
    inner: Arc<Inner>,
    key: String,
    source: DistSource,
    tx: watch::Sender<Progress>,
}

/// State of the bytes received so far, across attempts.
struct Received {
    file: Option<Arc<std::fs::File>>,
    temp: PathBuf,
    sha1: Sha1,
    written: u64,
    len: Option<u64>,
}

impl Download {
    async fn run(self) {
        // Whatever happens, the flight ends here: later requests must start afresh.
        struct Forget<'a>(&'a Inner, &'a str);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget_flight(self.1);
            }
        }
        let started = Instant::now();
        let result = {
            let _forget = Forget(&self.inner, &self.key);
            self.fetch().await
        };
        match result {
            Ok(Some(bytes)) => {
                tracing::info!(
                    package = %self.source.package,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "archive stored"
                );
                self.tx.send_modify(|p| p.outcome = Some(Ok(())));
            }
            Ok(None) => {
                tracing::debug!(package = %self.source.package, "archive stored by another process");
                self.tx.send_modify(|p| p.outcome = Some(Ok(())));
            }
            Err(e) => {
                self.inner.downloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(package = %self.source.package, error = %e, "archive download failed; nothing stored");
                self.tx.send_modify(|p| p.outcome = Some(Err(Arc::new(e))));
            }
        }
    }

    /// Fetches, verifies and stores the archive. `Ok(None)`: another process stored it.
    async fn fetch(&self) -> Result<Option<u64>, ProxyError> {
        let path = self
            .inner
            .disk
            .archive_path(&self.key)
            .ok_or_else(|| ProxyError::Cache(io::Error::other("bad archive key")))?;
        let _peer_lock = self.wait_for_peers(&path).await?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(None);
        }
        let mut received = Received {
            file: None,
            temp: self.inner.disk.temp_path(),
            sha1: Sha1::new(),
            written: 0,
            len: None,
        };
        let result = self.transfer(&mut received).await;
        let stored = match result {
            Ok(()) => self.commit(&mut received, &path).await,
            Err(e) => Err(e),
        };
        if stored.is_err() && received.file.is_some() {
            let _ = tokio::fs::remove_file(&received.temp).await;
        }
        stored.map(|()| Some(received.written))
    }

    /// Takes the per-archive lock shared with other processes; while another holds it, waits
    /// (it is fetching the same archive). Locking is an optimisation: where the filesystem
    /// cannot lock, every process fetches for itself, and atomic renames keep that safe.
    async fn wait_for_peers(&self, path: &Path) -> Result<Option<std::fs::File>, ProxyError> {
        let Some(lock_path) = self.inner.disk.archive_lock_path(&self.key) else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.inner.upstream.archive_timeout;
        let mut logged = false;
        loop {
            let attempt = lock_path.clone();
            let taken =
                tokio::task::spawn_blocking(move || -> io::Result<Option<std::fs::File>> {
                    if let Some(parent) = attempt.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&attempt)?;
                    match file.try_lock() {
                        Ok(()) => Ok(Some(file)),
                        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                        Err(std::fs::TryLockError::Error(e)) => Err(e),
                    }
                })
                .await
                .map_err(io::Error::other)?;
            match taken {
                Ok(Some(file)) => return Ok(Some(file)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "archive lock unavailable; fetching without it");
                    return Ok(None);
                }
            }
            if !logged {
                tracing::debug!(package = %self.source.package, "another process is fetching this archive; waiting for it");
                logged = true;
            }
            if Instant::now() >= deadline || tokio::fs::try_exists(path).await.unwrap_or(false) {
                return Ok(None);
            }
            tokio::time::sleep(PEER_POLL).await;
        }
    }

    async fn transfer(&self, received: &mut Received) -> Result<(), ProxyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(received).await {
                Ok(()) => return Ok(()),
                Err(AttemptError::Retry(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(
                        package = %self.source.package,
                        error = %e,
                        received = received.written,
                        attempt,
                        "archive transfer cut short; resuming"
                    );
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(AttemptError::Retry(e) | AttemptError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// One upstream request: the whole archive, or the rest of it after `received.written`.
    async fn attempt(&self, received: &mut Received) -> Result<(), AttemptError> {
        use AttemptError::{Fatal, Retry};
        let upstream = &self.inner.upstream;
        let mut headers = HeaderMap::new();
        let resume_from = received.written;
        if resume_from > 0 {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes={resume_from}-")) {
                headers.insert(header::RANGE, range);
            }
        }
        let response = upstream
            .send(
                RequestKind::Archive,
                Method::GET,
                &self.source.url,
                headers,
                Bytes::new(),
            )
            .await
            .map_err(|e| Retry(e.into()))?;
        // Bytes of this response that repeat what was already received, re-read (when the
        // upstream ignores `Range`) and checked against it rather than trusted.
        let mut skip = 0;
        match response.status {
            StatusCode::OK => {
                skip = resume_from;
                if received.len.is_none() {
                    received.len = content_length(&response.headers);
                }
            }
            StatusCode::PARTIAL_CONTENT if resume_from > 0 => {
                if content_range_start(&response.headers) != Some(resume_from) {
                    return Err(Fatal(ProxyError::ArchiveMismatch(format!(
                        "{}: upstream resumed at the wrong offset",
                        self.source.package
                    ))));
                }
            }
            status if resume_from > 0 && status.is_server_error() => {
                return Err(Retry(ProxyError::UpstreamStatus(status.as_u16())));
            }
            status => {
                return Err(Fatal(ProxyError::from_upstream_status(
                    status,
                    Resource::Archive,
                    upstream.has_credentials(),
                    &self.source.package,
                )));
            }
        }
        if received.file.is_none() {
            let temp = received.temp.clone();
            let file = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .open(temp)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|e| Fatal(e.into()))?;
            let file = Arc::new(file);
            received.file = Some(file.clone());
            let len = received.len;
            self.tx.send_modify(|p| {
                p.file = Some(file);
                p.len = len;
            });
        }
        let mut prefix_check = Sha1::new();
        let mut body = response.body;
        let deadline = Instant::now() + upstream.archive_timeout;
        let mut pending = BytesMut::new();
        loop {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(upstream.read_timeout);
            let frame = match tokio::time::timeout(wait, body.frame()).await {
                Err(_) => Err(UpstreamError::Timeout("reading an archive")),
                Ok(None) => break,
                Ok(Some(Err(e))) => Err(UpstreamError::Unreachable(format!(
                    "archive transfer broke off: {e}"
                ))),
                Ok(Some(Ok(frame))) => Ok(frame),
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    // Keep what arrived intact, so the next attempt resumes after it.
                    self.write(received, &mut pending).await.map_err(Fatal)?;
                    return Err(Retry(e.into()));
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if skip > 0 {
                let take = data.len().min(usize::try_from(skip).unwrap_or(usize::MAX));
                prefix_check.update(&data[..take]);
                skip -= take as u64;
                data = data.slice(take..);
                if skip == 0 && prefix_check.clone().finalize() != received.sha1.clone().finalize()
                {
                    return Err(Fatal(ProxyError::ArchiveMismatch(format!(
                        "{}: upstream sent different bytes when the transfer was retried",
                        self.source.package
                    ))));
                }
            }
            if data.is_empty() {
                continue;
            }
            pending.extend_from_slice(&data);
            if pending.len() >= WRITE_CHUNK {
                self.write(received, &mut pending).await.map_err(Fatal)?;
            }
        }
        self.write(received, &mut pending).await.map_err(Fatal)?;
        if skip > 0 {
            return Err(Retry(ProxyError::ArchiveMismatch(format!(
                "{}: retried transfer ended before the part already received",
                self.source.package
            ))));
        }
        if let Some(expected) = received.len {
            if received.written < expected {
                return Err(Retry(ProxyError::ArchiveMismatch(format!(
                    "{}: received {} of {expected} bytes",
                    self.source.package, received.written
                ))));
            }
            if received.written > expected {
                return Err(Fatal(ProxyError::ArchiveMismatch(format!(
                    "{}: received {} bytes, {expected} announced",
                    self.source.package, received.written
                ))));
            }
        }
        Ok(())
    }

    /// Appends `pending` to the temporary file and lets readers see it.
    async fn write(
        &self,
        received: &mut Received,
        pending: &mut BytesMut,
    ) -> Result<(), ProxyError> {
        if pending.is_empty() {
            return Ok(());
        }
        let data = pending.split().freeze();
        let Some(file) = received.file.clone() else {
            return Err(ProxyError::Cache(io::Error::other("no temporary file")));
        };
        received.sha1.update(&data);
        let offset = received.written;
        let n = data.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(io::Error::other)??;
        received.written += n;
        let written = received.written;
        self.tx.send_modify(|p| p.written = written);
        Ok(())
    }

    /// Verifies the checksum, syncs and renames into the store, then keeps the store in bounds.
    async fn commit(&self, received: &mut Received, path: &Path) -> Result<(), ProxyError> {
        let actual = hex::encode(received.sha1.clone().finalize());
        if let Some(expected) = &self.source.shasum {
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(ProxyError::ArchiveMismatch(format!(
                    "{}: sha1 {actual}, metadata promises {expected}",
                    self.source.package
                )));
            }
        }
        let Some(file) = received.file.clone() else {
            return Err(ProxyError::Cache(io::Error::other("no temporary file")));
        };
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(io::Error::other)??;
        // The description goes first: an archive is never without one, while a description
        // without its archive (after a crash here) is harmless and swept by eviction.
        if let Some(meta_path) = self.inner.disk.archive_meta_path(&self.key) {
            let meta = StoredArchive {
                package: self.source.package.clone(),
                url: self.source.url.clone(),
                shasum: self.source.shasum.clone(),
                len: received.written,
                sha1: Some(actual),
            };
            let bytes = serde_json::to_vec(&meta).map_err(io::Error::other)?;
            self.inner.disk.write_atomic(&meta_path, &bytes).await?;
        }
        self.inner.disk.commit(&received.temp, path).await?;
        lock(&self.inner.index).insert(&self.key, received.written, SystemTime::now());
        let inner = self.inner.clone();
        // Evict before the flight reports success, so the bound holds whenever a download
        // has finished.
        tokio::task::spawn_blocking(move || inner.evict_if_needed(false))
            .await
            .map_err(io::Error::other)?;
        Ok(())
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The first byte position of a `Content-Range: bytes first-last/total` header.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/200"),
        );
        assert_eq!(content_range_start(&h), Some(100));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("items 1-2/3"),
        );
        assert_eq!(content_range_start(&h), None);
    }

    #[test]
    fn index_replace_keeps_the_newer_use() {
        let mut index = Index {
            entries: HashMap::new(),
            total: 0,
            scanned_at: Instant::now(),
        };
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let new = SystemTime::UNIX_EPOCH + Duration::from_secs(200);
        index.insert("a", 10, new);
        index.replace(vec![("a".into(), 10, old), ("b".into(), 5, old)]);
        assert_eq!(index.total, 15);
        assert_eq!(index.entries["a"].used, new);
        assert_eq!(index.entries["b"].used, old);
    }
}
