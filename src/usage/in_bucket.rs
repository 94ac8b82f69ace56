//! The usage record in the bucket (`object_store_url`): each replica uploads its own segment
//! files as objects `PREFIX/usage/<replica>/<segment>`, so no two writers ever touch one
//! object and no conditional write is needed. A segment is uploaded whole whenever its size
//! differs from what this replica last uploaded (checked every [`UPLOAD_INTERVAL`]): the
//! segment being written reaches the bucket within a few seconds of a download, and a
//! finished one is not uploaded again. The bounds apply here as on disk: age to every
//! replica's objects (replicas that are gone leave nothing behind for long), size to this
//! replica's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::segments::{self, Segment, SegmentName};
use super::UsageSettings;
use crate::bucket::{Area, Bucket, BucketError};

/// How often this replica's changed segments are uploaded: with the writer's immediate
/// append, a download is in the bucket within about this long.
pub const UPLOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How often expired objects are looked for.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// A bucket request the writer waits for at most (copying a segment down).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One replica's segment in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub replica: String,
    pub segment: Segment,
}

/// Every replica's segments in the bucket.
pub async fn list(bucket: &Bucket) -> Result<Vec<Stored>, BucketError> {
    let listed = bucket.list(Area::Usage, "").await?;
    Ok(listed
        .into_iter()
        .filter_map(|(name, bytes)| {
            let (replica, file) = name.split_once('/')?;
            Some(Stored {
                replica: replica.to_string(),
                segment: Segment {
                    name: SegmentName::parse(file)?,
                    bytes,
                },
            })
        })
        .collect())
}

/// A segment's object; `None` when there is none (or the bucket cannot say).
pub async fn read(
    bucket: &Bucket,
    replica: &str,
    name: SegmentName,
) -> Result<Option<Bytes>, BucketError> {
    let path = bucket.path(Area::Usage, &format!("{replica}/{}", name.file_name()));
    Ok(bucket.get(&path).await?.map(|o| o.bytes))
}

/// [`read`] for the writer: bounded, and skipped while the bucket is down.
pub(super) async fn segment(bucket: &Bucket, replica: &str, name: SegmentName) -> Option<Bytes> {
    if !bucket.usable() {
        return None;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, read(bucket, replica, name)).await {
        Ok(Ok(found)) => found,
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Uploads this replica's segments while they change, and keeps the bucket's within bounds.
#[derive(Clone)]
pub(super) struct Uploader {
    bucket: Arc<Bucket>,
    settings: UsageSettings,
    /// Each segment's size as last uploaded (or found in the bucket at start).
    uploaded: Arc<Mutex<HashMap<SegmentName, u64>>>,
}

impl Uploader {
    pub(super) fn new(bucket: Arc<Bucket>, settings: UsageSettings) -> Uploader {
        Uploader {
            bucket,
            settings,
            uploaded: Arc::default(),
        }
    }

    pub(super) async fn run(self) {
        // What is there already need not be uploaded again after a restart.
        if let Ok(stored) = list(&self.bucket).await {
            let mut uploaded = self.uploaded.lock().unwrap_or_else(|p| p.into_inner());
            for s in stored.iter().filter(|s| s.replica == self.settings.replica) {
                uploaded.insert(s.segment.name, s.segment.bytes);
            }
        }
        let mut upload = tokio::time::interval(UPLOAD_INTERVAL);
        upload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(RETENTION_INTERVAL);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = upload.tick() => self.upload_changed().await,
                _ = retention.tick() => self.keep_within_bounds().await,
            }
        }
    }

    /// Uploads every local segment of this replica whose size is not the one uploaded.
    pub(super) async fn upload_changed(&self) {
        if !self.bucket.usable() {
            return;
        }
        let dir = self.settings.dir.join(&self.settings.replica);
        let local = match tokio::task::spawn_blocking(move || segments::list(&dir)).await {
            Ok(Ok(local)) => local,
            Ok(Err(_)) | Err(_) => return,
        };
        for segment in local {
            let known = self
                .uploaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&segment.name)
                .copied();
            if known == Some(segment.bytes) {
                continue;
            }
            let file = self
                .settings
                .dir
                .join(&self.settings.replica)
                .join(segment.name.file_name());
            let Ok(bytes) = tokio::fs::read(&file).await else {
                continue;
            };
            let len = bytes.len() as u64;
            let path = self.bucket.path(
                Area::Usage,
                &format!("{}/{}", self.settings.replica, segment.name.file_name()),
            );
            match self.bucket.put(&path, bytes.into()).await {
                Ok(()) => {
                    self.uploaded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(segment.name, len);
                }
                Err(e) => {
                    tracing::debug!(error = %e, segment = %segment.name, "usage segment not uploaded; tried again shortly");
                    return;
                }
            }
        }
    }

    /// Removes objects past the age bound (any replica's) and this replica's oldest beyond
    /// the size bound.
    async fn keep_within_bounds(&self) {
        if !self.bucket.usable() {
            return;
        }
        let Ok(stored) = list(&self.bucket).await else {
            return;
        };
        let mut by_replica: HashMap<&str, Vec<Segment>> = HashMap::new();
        for s in &stored {
            by_replica.entry(&s.replica).or_default().push(s.segment);
        }
        let now = SystemTime::now();
        for (replica, segments) in by_replica {
            let own = replica == self.settings.replica;
            let max_bytes = own.then_some(self.settings.max_bytes);
            for name in segments::expired(&segments, now, self.settings.retention, max_bytes) {
                let path = self
                    .bucket
                    .path(Area::Usage, &format!("{replica}/{}", name.file_name()));
                if self.bucket.delete(&path).await.is_ok() && own {
                    self.uploaded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, replica: &str) -> UsageSettings {
        UsageSettings {
            dir: dir.to_path_buf(),
            replica: replica.into(),
            retention: Duration::from_secs(90 * 86_400),
            max_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn changed_segments_are_uploaded_under_the_replica_and_listed() {
        let bucket = Bucket::in_memory("team/proxy");
        let dir = tempfile::tempdir().expect("dir");
        let name = SegmentName::of(SystemTime::now());
        let file = dir.path().join("r1").join(name.file_name());
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dir");
        std::fs::write(&file, "{\"a\":1}\n").expect("segment");
        let uploader = Uploader::new(bucket.clone(), settings(dir.path(), "r1"));
        uploader.upload_changed().await;
        let stored = list(&bucket).await.expect("list");
        assert_eq!(
            stored,
            vec![Stored {
                replica: "r1".into(),
                segment: Segment { name, bytes: 8 }
            }]
        );
        std::fs::write(&file, "{\"a\":1}\n{\"a\":2}\n").expect("segment grows");
        uploader.upload_changed().await;
        let copy = read(&bucket, "r1", name)
            .await
            .expect("read")
            .expect("there");
        assert_eq!(&copy[..], b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(segment(&bucket, "r2", name).await, None);
    }
}
