//! The cache directory: its layout, and the one way files get into it (temporary file, fsync,
//! rename), so a crash or a concurrent replica never leaves a half-written file under a name
//! that is later served.
//!
//! Every file name below the cache directory is derived from a hash the proxy computed itself,
//! never from client input, so no request can address a file outside it.

pub mod archives;
pub mod metadata;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;

/// Temporary files older than this are left over from a killed process (or a replica that
/// died) and are removed at start-up; younger ones may belong to a live replica.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    counter: AtomicU64,
    /// Prefix of this instance's temporary files: unique among processes (pid) and among
    /// proxies in one process (start time), so shutdown removes only its own.
    instance: String,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl CacheDir {
    /// Creates the layout (if needed) and sweeps stale temporary files.
    pub async fn open(root: &Path) -> io::Result<Self> {
        for sub in ["metadata", "archives", "locks", "tmp"] {
            tokio::fs::create_dir_all(root.join(sub)).await?;
        }
        let dir = Self::at(root);
        dir.sweep_temp().await;
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
        }
    }

    async fn sweep_temp(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(self.root.join("tmp")).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let old = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }

    /// Path of a content-addressed metadata document (raw upstream bytes, already verified).
    pub fn metadata_path(&self, sha256: &str) -> Option<PathBuf> {
        (is_hex(sha256) && sha256.len() == 64).then(|| {
            self.root
                .join("metadata")
                .join(&sha256[..2])
                .join(format!("{sha256}.json"))
        })
    }

    /// Path of a named metadata document the proxy keeps (e.g. the upstream root).
    pub fn state_path(&self, name: &'static str) -> PathBuf {
        self.root.join("metadata").join(name)
    }

    /// Path of a revalidated upstream document (a p2 file of a p2-native upstream), named by
    /// the sha256 of its URL.
    pub fn url_state_path(&self, url: &str) -> Option<PathBuf> {
        let key = crate::composer::sha256_hex(url.as_bytes());
        Some(
            self.root
                .join("metadata")
                .join("p2")
                .join(&key[..2])
                .join(format!("{key}.json")),
        )
    }

    /// Path of an archive, from its store key (a hex digest).
    pub fn archive_path(&self, key: &str) -> Option<PathBuf> {
        (is_hex(key) && key.len() >= 32).then(|| {
            self.root
                .join("archives")
                .join(&key[..2])
                .join(format!("{key}.bin"))
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
        (is_hex(key) && key.len() >= 32).then(|| {
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

    /// Writes `bytes` to `path` atomically.
    pub async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let temp = self.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await?;
            drop(file);
            self.commit(&temp, path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Renames a complete, synced temporary file into place.
    pub async fn commit(&self, temp: &Path, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(temp, path).await
    }
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
}
