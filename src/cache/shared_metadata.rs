//! Persisted metadata shared through the bucket (`object_store_url`): the upstream roots, v1
//! listings and per-package files, p2 files and the release listing are written through to
//! `PREFIX/metadata/` under their names below `cache_dir/metadata/`, and read from there when
//! the local copy is missing, so a new replica with an empty `cache_dir` can serve while the
//! upstream is down. A plain put: a newer copy simply replaces an older one (content-addressed
//! documents never change, the rest are the latest the writer saw).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::bucket::{Area, Bucket};

use super::CacheDir;

/// A bucket read a request waits on at most; the upstream is asked after that.
const BUCKET_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl CacheDir {
    /// Shares persisted metadata through `bucket` from now on (set before anything is read).
    pub fn share_metadata(&self, bucket: Arc<Bucket>) {
        let _ = self.bucket.set(bucket);
    }

    /// The bucket and the object for a file under `metadata/`, when metadata is shared.
    fn shared(&self, path: &Path) -> Option<(&Arc<Bucket>, object_store::path::Path)> {
        let bucket = self.bucket.get()?;
        let relative = path.strip_prefix(self.metadata_root()).ok()?.to_str()?;
        Some((bucket, bucket.path(Area::Metadata, relative)))
    }

    /// [`CacheDir::save_metadata`], plus a copy to the bucket in the background: an answer
    /// never waits on the bucket, and a failing bucket only means other replicas fetch it.
    pub async fn save_shared_metadata(&self, path: &Path, bytes: &[u8], what: &str) -> bool {
        if let Some((bucket, object)) = self.shared(path).filter(|(b, _)| b.usable()) {
            let (bucket, payload) = (bucket.clone(), bytes.to_vec().into());
            tokio::spawn(async move {
                // The bucket logs and counts its own failures.
                let _ = bucket.put(&object, payload).await;
            });
        }
        self.save_metadata(path, bytes, what).await
    }

    /// A persisted metadata document: the local copy, else the bucket's (then kept locally);
    /// `None` when neither has it.
    pub async fn load_shared_metadata(&self, path: &Path) -> Option<Vec<u8>> {
        match tokio::fs::read(path).await {
            Ok(bytes) => return Some(bytes),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return None,
            Err(_) => {}
        }
        let (bucket, object) = self.shared(path).filter(|(b, _)| b.usable())?;
        let found = tokio::time::timeout(BUCKET_READ_TIMEOUT, bucket.get(&object))
            .await
            .ok()?
            .ok()??;
        self.save_metadata(path, &found.bytes, "metadata from the bucket")
            .await;
        Some(found.bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn metadata_is_written_through_and_read_back_by_a_replica_with_an_empty_directory() {
        let bucket = Bucket::in_memory("proxy");
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let first = CacheDir::open(a.path()).await.expect("open");
        first.share_metadata(bucket.clone());
        let path = first.state_path(Some("packagist"), "root.json");
        assert!(first.save_shared_metadata(&path, b"{}", "root").await);
        let object = bucket.path(Area::Metadata, "upstreams/packagist/root.json");
        // The copy is written in the background.
        for _ in 0..200 {
            if bucket.exists(&object).await.expect("answers") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(bucket.exists(&object).await.expect("answers"));

        let second = CacheDir::open(b.path()).await.expect("open");
        let path = second.state_path(Some("packagist"), "root.json");
        assert_eq!(second.load_shared_metadata(&path).await, None, "not shared");
        second.share_metadata(bucket);
        assert_eq!(
            second.load_shared_metadata(&path).await.as_deref(),
            Some(&b"{}"[..])
        );
        assert!(path.exists(), "kept locally from then on");
        let missing = second.state_path(Some("other"), "root.json");
        assert_eq!(second.load_shared_metadata(&missing).await, None);
    }
}
