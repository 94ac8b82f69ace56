//! The cache directory: its layout, and the one way files get into it (temporary file, flush,
//! fsync, rename), so a crash, a full disk or a concurrent replica never leaves a half-written
//! file under a name that is later served.
//!
//! Every file name below the cache directory is derived from a hash the proxy computed itself,
//! never from client input, so no request can address a file outside it.

pub mod archives;
mod health;
pub mod metadata;
mod shared_metadata;
mod sweep;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::composer::is_hex_digest;

pub use health::{
    cache_verdict, is_network_filesystem, CacheHealth, CacheProbe, DiskSpace, WriteKind,
};
pub use sweep::SweepReport;

#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    counter: AtomicU64,
    /// Prefix of this instance's temporary files: unique among processes (pid) and among
    /// proxies in one process (start time), so shutdown removes only its own.
    instance: String,
    health: CacheHealth,
    /// On NFS & co. a stat can stall: such calls go through the blocking pool.
    network_filesystem: bool,
    /// The bucket persisted metadata is shared through, when `object_store_url` is set.
    bucket: std::sync::OnceLock<std::sync::Arc<crate::bucket::Bucket>>,
}

impl CacheDir {
    /// Creates the layout (if needed) and sweeps stale temporary files.
    pub async fn open(root: &Path) -> io::Result<Self> {
        for sub in ["metadata", "archives", "locks", "tmp"] {
            tokio::fs::create_dir_all(root.join(sub)).await?;
        }
        let mut dir = Self::at(root);
        // A live replica holds a lock on each of its temporary files; the rest are leftovers.
        let dir = tokio::task::spawn_blocking(move || {
            dir.network_filesystem = is_network_filesystem(&dir.root);
            dir.sweep_temp().log();
            dir
        })
        .await
        .map_err(io::Error::other)?;
        Ok(dir)
    }

    /// The layout at `root`, as it is: nothing is created or swept. For the `cache` commands,
    /// which only read and unlink.
    pub fn at(root: &Path) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
            instance: format!("{}-{started}", std::process::id()),
            health: CacheHealth::default(),
            network_filesystem: false,
            bucket: std::sync::OnceLock::new(),
        }
    }

    /// Whether the directory is on a network filesystem (known after [`CacheDir::open`]).
    pub fn is_on_network_filesystem(&self) -> bool {
        self.network_filesystem
    }

    /// Write failures, free space and temporary files, for `/readyz` and `/metrics`.
    pub fn health(&self) -> &CacheHealth {
        &self.health
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a content-addressed metadata document (raw upstream bytes, already verified).
    pub fn metadata_path(&self, sha256: &str) -> Option<PathBuf> {
        // Upstream listings are read case-insensitively; the file name is always lower case.
        let sha256 = sha256.to_ascii_lowercase();
        is_hex_digest(&sha256, 64).then(|| {
            self.root
                .join("metadata")
                .join(&sha256[..2])
                .join(format!("{sha256}.json"))
        })
    }

    /// Path of a named metadata document the proxy keeps (e.g. the upstream root).
    /// Kept per upstream, under `metadata/upstreams/<name>/` for an `[[upstream]]` table (two
    /// Marketplace accounts share a URL but not what they see); the flat configuration's
    /// upstream keeps `metadata/` itself, the layout of the versions before tables, so an
    /// upgrade takes its cache over as it is.
    pub fn state_path(&self, upstream: Option<&str>, name: &'static str) -> PathBuf {
        self.state_root(upstream).join(name)
    }

    fn state_root(&self, upstream: Option<&str>) -> PathBuf {
        let metadata = self.root.join("metadata");
        match upstream {
            Some(name) => metadata.join("upstreams").join(name),
            None => metadata,
        }
    }

    /// Path of a revalidated upstream document (a p2 file of a p2-native upstream), named by
    /// the sha256 of its URL, in the upstream's directory (see [`CacheDir::state_path`]).
    pub fn url_state_path(&self, upstream: Option<&str>, url: &str) -> PathBuf {
        let key = crate::composer::sha256_hex(url.as_bytes());
        self.state_root(upstream)
            .join("p2")
            .join(&key[..2])
            .join(format!("{key}.json"))
    }

    /// How many revalidated upstream documents (p2 files) `upstream` keeps on disk, counted no
    /// further than `enough`: the changes feed only needs to know whether there are that many.
    /// Blocking: run it off the async workers.
    pub fn count_url_states(&self, upstream: Option<&str>, enough: usize) -> usize {
        let Ok(shards) = std::fs::read_dir(self.state_root(upstream).join("p2")) else {
            return 0;
        };
        let mut count = 0;
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for _ in files.flatten() {
                count += 1;
                if count >= enough {
                    return count;
                }
            }
        }
        count
    }

    /// Path of an archive, from its store key (a hex digest).
    pub fn archive_path(&self, key: &str) -> Option<PathBuf> {
        is_hex_digest(key, 64).then(|| {
            // Built in one buffer (`/archives/ab/` + 64 digits + `.bin` is 81 bytes past the
            // root): this runs for every archive served.
            let mut path = PathBuf::with_capacity(self.root.as_os_str().len() + 96);
            path.push(&self.root);
            path.push("archives");
            path.push(&key[..2]);
            path.push(key);
            path.as_mut_os_string().push(".bin");
            path
        })
    }

    /// The description stored beside an archive (package, upstream URL, promised sha1), so
    /// offline commands can purge by package and re-verify without the metadata.
    pub fn archive_meta_path(&self, key: &str) -> Option<PathBuf> {
        self.archive_path(key).map(|p| p.with_extension("json"))
    }

    /// The directory holding the archive shards.
    pub fn archives_root(&self) -> PathBuf {
        self.root.join("archives")
    }

    /// The directory holding upstream metadata (the root and content-addressed documents).
    pub fn metadata_root(&self) -> PathBuf {
        self.root.join("metadata")
    }

    /// The directory of temporary files (writes and downloads in progress).
    pub fn temp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The lock file a process holds while it fetches an archive, from the archive's key.
    pub fn archive_lock_path(&self, key: &str) -> Option<PathBuf> {
        is_hex_digest(key, 64).then(|| {
            self.root
                .join("locks")
                .join(&key[..2])
                .join(format!("{key}.lock"))
        })
    }

    /// A fresh temporary file name, unique across processes sharing the directory.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", self.instance))
    }

    /// Removes this instance's temporary files (at shutdown: downloads that did not finish
    /// within the grace period). Returns how many were removed.
    pub async fn remove_own_temp(&self) -> usize {
        let Ok(mut entries) = tokio::fs::read_dir(self.root.join("tmp")).await else {
            return 0;
        };
        let prefix = format!("{}-", self.instance);
        let mut removed = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let mine = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix));
            if mine && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Writes `bytes` to `path` atomically: a locked temporary file, written, flushed and
    /// fsynced, then renamed over `path`. Any error (a full disk shows at write, flush or
    /// fsync) removes the temporary file and leaves the previous `path` untouched.
    pub async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let temp = self.temp_path();
        let bytes = bytes.to_vec();
        let target = path.to_path_buf();
        // std, not tokio::fs: tokio's File keeps a failed background write's error for the next
        // call and `sync_all` does not report it, so a full disk used to commit empty files.
        tokio::task::spawn_blocking(move || write_then_rename(&temp, &target, &bytes))
            .await
            .map_err(io::Error::other)?
    }

    /// [`CacheDir::write_atomic`], for code already off the async threads. Blocking.
    pub fn write_atomic_blocking(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        write_then_rename(&self.temp_path(), path, bytes)
    }

    /// Saves a metadata document; a failure is logged and counted here, once, and never stops
    /// serving what was just fetched (it only means the next start has to fetch it again).
    pub async fn save_metadata(&self, path: &Path, bytes: &[u8], what: &str) -> bool {
        match self.write_atomic(path, bytes).await {
            Ok(()) => {
                self.health.write_succeeded(WriteKind::Metadata);
                true
            }
            Err(e) => {
                self.health.write_failed(WriteKind::Metadata, what, &e);
                false
            }
        }
    }

    /// Whether the cache directory takes writes: a small file written, flushed, fsynced and
    /// removed in `tmp/`.
    pub async fn probe_writable(&self) -> io::Result<()> {
        let probe = self.temp_path();
        tokio::task::spawn_blocking(move || {
            let result = write_synced(&probe, b"ready");
            let _ = std::fs::remove_file(&probe);
            result
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether the cache directory can be read at all (else nothing can be served from it).
    pub async fn probe_readable(&self) -> io::Result<()> {
        let root = self.metadata_root();
        tokio::task::spawn_blocking(move || std::fs::read_dir(root).map(drop))
            .await
            .map_err(io::Error::other)?
    }

    /// Reads, writes and measures the cache directory, for `/readyz` and `/metrics`.
    pub async fn probe(&self) -> CacheProbe {
        let readable = self.probe_readable().await.map_err(|e| e.to_string());
        let writable = self.probe_writable().await.map_err(|e| e.to_string());
        let root = self.root.clone();
        let space = tokio::task::spawn_blocking(move || DiskSpace::of(&root).ok())
            .await
            .ok()
            .flatten();
        CacheProbe {
            readable,
            writable,
            space,
        }
    }

    /// Free space on the volume holding the cache. Blocking (one statvfs call).
    pub fn disk_space(&self) -> io::Result<DiskSpace> {
        DiskSpace::of(&self.root)
    }

    /// Bytes in temporary files right now (and remembered for `/metrics`). Blocking.
    pub fn measure_temp(&self) -> u64 {
        let bytes = std::fs::read_dir(self.temp_root())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        self.health.set_temp_bytes(bytes);
        bytes
    }

    /// Removes temporary files no process owns any more (killed downloads). Blocking.
    pub fn sweep_temp(&self) -> SweepReport {
        let report = sweep::sweep(&self.temp_root(), &format!("{}-", self.instance));
        self.health.set_temp_bytes(report.remaining_bytes);
        self.health.add_swept(report.removed_files);
        report
    }

    /// Renames a complete, synced temporary file into place. Blocking.
    pub fn commit(&self, temp: &Path, path: &Path) -> io::Result<()> {
        rename_into(temp, path)
    }
}

fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let result = write_synced(temp, bytes).and_then(|()| rename_into(temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

/// Creates `path` (new, locked so sweepers in other processes leave it alone), writes `bytes`,
/// flushes and fsyncs it. Blocking.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_temp(path)?;
    file.write_all(bytes)?;
    file.flush()?;
    file.sync_all()
}

/// A new temporary file, read-write, holding the advisory lock that marks it as owned.
/// Blocking. Where the filesystem cannot lock, the file still works; sweepers then rely on its
/// age alone.
pub fn create_temp(path: &Path) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)?;
    // Blocking: a sweeper's probe holds the lock only for an instant, and the file must end
    // up locked for as long as it is open.
    if let Err(e) = file.lock() {
        tracing::debug!(error = %e, "temporary files cannot be locked here");
    }
    Ok(file)
}

fn rename_into(temp: &Path, path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_only_come_from_hex_digests() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = CacheDir::open(tmp.path()).await.expect("open");
        assert!(dir.metadata_path("../../etc/passwd").is_none());
        assert!(dir.metadata_path(&"a".repeat(63)).is_none());
        assert!(dir.archive_path("..").is_none());
        let p = dir.metadata_path(&"ab".repeat(32)).expect("path");
        assert!(p.starts_with(tmp.path()));
        // The layout archives are stored in: a change would lose every stored archive.
        let key = "ef".repeat(32);
        for (path, extension) in [
            (dir.archive_path(&key), "bin"),
            (dir.archive_meta_path(&key), "json"),
        ] {
            let expected = tmp.path().join("archives").join("ef");
            assert_eq!(path, Some(expected.join(format!("{key}.{extension}"))));
        }
    }

    #[tokio::test]
    async fn atomic_write_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = CacheDir::open(tmp.path()).await.expect("open");
        let p = dir.metadata_path(&"cd".repeat(32)).expect("path");
        dir.write_atomic(&p, b"hello").await.expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"hello");
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp"))
                .expect("dir")
                .count(),
            0
        );
    }

    /// An upgrade takes over the cache of the versions before `[[upstream]]` tables: the flat
    /// upstream's files are exactly where they were.
    #[test]
    fn the_flat_upstream_keeps_the_layout_of_earlier_versions() {
        let dir = CacheDir::at(Path::new("/cache"));
        assert_eq!(
            dir.state_path(None, "root.json"),
            Path::new("/cache/metadata/root.json")
        );
        let url = "https://repo.example/p2/a/b.json";
        let key = crate::composer::sha256_hex(url.as_bytes());
        assert_eq!(
            dir.url_state_path(None, url),
            Path::new("/cache/metadata/p2")
                .join(&key[..2])
                .join(format!("{key}.json"))
        );
        assert_eq!(
            dir.state_path(Some("hyva"), "root.json"),
            Path::new("/cache/metadata/upstreams/hyva/root.json")
        );
    }
}
