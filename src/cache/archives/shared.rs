//! What replicas share: the per-archive lock in a shared `cache_dir`, and the bucket tier
//! (`object_store_url`) between the local disk and upstream.
//!
//! A local miss looks in the bucket first; an archive found there streams into the local tier
//! exactly as an upstream download does (clients follow it, it is verified, then committed).
//! On a bucket miss, replicas agree on one upstream fetch with a lease object
//! (`leases/<key>`, created conditionally, renewed by its holder, taken over once expired);
//! the others poll for the archive to appear. A verified download is offered to the bucket
//! after it is committed locally, in the background, with one conditional PUT: the object
//! appears whole or not at all, and a replica that finds one already there has lost nothing.
//! While the bucket fails, all of this is skipped and archives come from upstream, unstored in
//! it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, AttributeValue, Attributes, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::download::{Download, Received};
use super::{PEER_POLL, WRITE_CHUNK};
use crate::bucket::{Area, Bucket, Created, Updated};
use crate::error::ProxyError;
use crate::metrics::{LeaseOutcome, UploadOutcome};

/// A lease not renewed for this long is taken over; its holder renews it every third of it.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a replica waiting on another's lease looks for the archive.
const LEASE_POLL: Duration = Duration::from_millis(100);
/// Larger archives are not offered to the bucket: one PUT holds the archive in memory.
const UPLOAD_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Uploads in progress at once (each holds its archive in memory).
pub(super) const UPLOADS_AT_ONCE: usize = 2;
/// The user-metadata field carrying the archive's SHA-256, checked when it is read back.
const SHA256: &str = "sha256";

/// Where the bytes of a download came from.
pub(super) enum Origin {
    Bucket,
    /// From upstream, under this lease when one was had.
    Upstream(Option<Lease>),
}

#[derive(Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    /// Unix milliseconds; replicas' clocks are assumed to agree to well within `LEASE_TTL`.
    expires_ms: u64,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lease_body(holder: &str) -> PutPayload {
    let body = LeaseBody {
        holder: holder.to_string(),
        expires_ms: unix_ms(SystemTime::now() + LEASE_TTL),
    };
    PutPayload::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// This replica's right to fetch one archive upstream. Renewed while held; released (deleted)
/// when dropped, so replicas waiting for it fetch at once if this one stored nothing.
pub(super) struct Lease {
    bucket: Arc<Bucket>,
    path: ObjectPath,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn hold(bucket: &Arc<Bucket>, path: ObjectPath, version: UpdateVersion, holder: &str) -> Self {
        let (renew_bucket, renew_path, holder) = (bucket.clone(), path.clone(), holder.to_string());
        let renewer = tokio::spawn(async move {
            let mut version = version;
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match renew_bucket
                    .update(&renew_path, lease_body(&holder), version.clone())
                    .await
                {
                    Ok(Updated::Done(renewed)) => version = renewed,
                    // Taken over: another replica fetches too; nothing to hold any more.
                    Ok(Updated::Conflict) => return,
                    Err(_) => {}
                }
            }
        });
        Lease {
            bucket: bucket.clone(),
            path,
            renewer,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        let (bucket, path) = (self.bucket.clone(), self.path.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = bucket.delete(&path).await;
            });
        }
    }
}

/// Host name and pid, with a random part: unique among replicas, and readable in a lease.
pub(super) fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!(
        "{}-{}-{}",
        host.trim(),
        std::process::id(),
        hex::encode(random)
    )
}

enum Claim {
    /// Fetch upstream, under the lease when one was had.
    Fetch(Option<Lease>),
    /// The archive is in the bucket now.
    InBucket,
}

/// Waits for, or takes, the lease on `key`'s upstream fetch.
async fn claim(bucket: &Arc<Bucket>, key: &str, holder: &str, max_wait: Duration) -> Claim {
    let metrics = &bucket.metrics().bucket;
    let archive = bucket.path(Area::Archives, key);
    let path = bucket.path(Area::Leases, key);
    let deadline = Instant::now() + max_wait;
    let mut waited = false;
    let unavailable = || {
        metrics.record_lease(LeaseOutcome::Unavailable);
        Claim::Fetch(None)
    };
    loop {
        let taken = match bucket.create(&path, lease_body(holder)).await {
            Ok(Created::New(version)) => Some((version, LeaseOutcome::Acquired)),
            Ok(Created::Exists) => match bucket.get(&path).await {
                Err(_) => return unavailable(),
                // Released just now: its archive is probably there.
                Ok(None) => None,
                Ok(Some(lease)) => {
                    let expires = serde_json::from_slice::<LeaseBody>(&lease.bytes)
                        .map_or(0, |l| l.expires_ms);
                    if expires > unix_ms(SystemTime::now()) {
                        None
                    } else {
                        match bucket
                            .update(&path, lease_body(holder), lease.version)
                            .await
                        {
                            Ok(Updated::Done(version)) => Some((version, LeaseOutcome::TakenOver)),
                            Ok(Updated::Conflict) => None,
                            Err(_) => return unavailable(),
                        }
                    }
                }
            },
            Err(_) => return unavailable(),
        };
        // Stored since this replica looked (by the last holder, just before it let go)?
        let stored = bucket.exists(&archive).await;
        if let Some((version, outcome)) = taken {
            let lease = Lease::hold(bucket, path, version, holder);
            if matches!(stored, Ok(true)) {
                if waited {
                    metrics.record_lease(LeaseOutcome::Waited);
                }
                return Claim::InBucket;
            }
            metrics.record_lease(outcome);
            tracing::debug!(key, holder, outcome = ?outcome, "fetching under the lease");
            return Claim::Fetch(Some(lease));
        }
        match stored {
            Ok(true) => {
                metrics.record_lease(LeaseOutcome::Waited);
                return Claim::InBucket;
            }
            Ok(false) => {}
            Err(_) => return unavailable(),
        }
        if !waited {
            tracing::debug!(
                key,
                "another replica is fetching this archive; waiting for it"
            );
            waited = true;
        }
        if Instant::now() >= deadline {
            return unavailable();
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
}

/// How reading an archive from the bucket ended.
enum FromBucket {
    Missing,
    /// Every byte arrived; the SHA-256 recorded when it was stored, if any.
    Complete(Option<String>),
    /// Cut short: what arrived is kept, and upstream is asked for the rest.
    Broken,
    /// The bucket failed (it is now marked down): upstream, without a lease.
    Failed,
}

impl Download {
    /// Fetches the archive into `received` from the bucket or upstream, and verifies it.
    pub(super) async fn fetch_tiers(
        &self,
        received: &mut Received,
    ) -> (Result<(), ProxyError>, Origin) {
        let Some(bucket) = self.inner.bucket.as_ref().filter(|b| b.usable()).cloned() else {
            return (self.fetch_upstream(received).await, Origin::Upstream(None));
        };
        let mut lease = None;
        let mut looked = false;
        loop {
            match self.read_bucket(&bucket, received).await {
                Ok(FromBucket::Complete(sha256)) => {
                    let verified = self.verify_from_bucket(&bucket, received, sha256).await;
                    return (verified, Origin::Bucket);
                }
                Ok(FromBucket::Broken | FromBucket::Failed) => {
                    return (self.fetch_upstream(received).await, Origin::Upstream(None))
                }
                Ok(FromBucket::Missing) if !looked => {}
                // Said to be there, then gone (a lifecycle rule): upstream it is.
                Ok(FromBucket::Missing) => break,
                Err(e) => return (Err(e), Origin::Upstream(None)),
            }
            looked = true;
            let max_wait = self.upstream.archive_timeout;
            match claim(&bucket, &self.key, &self.inner.holder, max_wait).await {
                Claim::InBucket => continue,
                Claim::Fetch(held) => {
                    lease = held;
                    break;
                }
            }
        }
        (self.fetch_upstream(received).await, Origin::Upstream(lease))
    }

    async fn fetch_upstream(&self, received: &mut Received) -> Result<(), ProxyError> {
        self.transfer(received).await?;
        self.verify(received).await
    }

    /// Streams the bucket's copy into `received`, as an upstream transfer would.
    async fn read_bucket(
        &self,
        bucket: &Bucket,
        received: &mut Received,
    ) -> Result<FromBucket, ProxyError> {
        let path = bucket.path(Area::Archives, &self.key);
        let reading = match bucket.get_stream(&path).await {
            Ok(Some(reading)) => reading,
            Ok(None) => {
                bucket.metrics().bucket.record_lookup(false);
                return Ok(FromBucket::Missing);
            }
            Err(_) => return Ok(FromBucket::Failed),
        };
        bucket.metrics().bucket.record_lookup(true);
        received.len = Some(reading.meta.size);
        self.open_temp(received).await;
        let sha256 = reading
            .attributes
            .get(&Attribute::Metadata(SHA256.into()))
            .map(|v| v.as_ref().to_string());
        let mut body = reading.body;
        let mut pending = BytesMut::new();
        loop {
            // A bucket that stops sending is treated like an upstream that does.
            let chunk = match tokio::time::timeout(self.upstream.read_timeout, body.next()).await {
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| e.to_string()),
                Err(_) => Err("no data within the read timeout".to_string()),
            };
            match chunk {
                Ok(data) => {
                    pending.extend_from_slice(&data);
                    if pending.len() >= WRITE_CHUNK {
                        self.write(received, &mut pending).await?;
                    }
                }
                Err(e) => {
                    self.write(received, &mut pending).await?;
                    tracing::warn!(package = %self.source.package, error = %e, received = received.written, "reading an archive from the bucket broke off; fetching the rest upstream");
                    return Ok(FromBucket::Broken);
                }
            }
        }
        self.write(received, &mut pending).await?;
        if received.written != reading.meta.size {
            return Ok(FromBucket::Broken);
        }
        Ok(FromBucket::Complete(sha256))
    }

    /// A bucket copy must pass what an upstream download passes, and match the SHA-256 it was
    /// stored with; one that does not is removed from the bucket, so the next miss goes
    /// upstream instead of finding it again.
    async fn verify_from_bucket(
        &self,
        bucket: &Bucket,
        received: &Received,
        sha256: Option<String>,
    ) -> Result<(), ProxyError> {
        let (_, actual, _) = received.digests.finish();
        let mut verified = self.verify(received).await;
        if verified.is_ok() && sha256.is_some_and(|expected| expected != actual) {
            verified = Err(ProxyError::ArchiveMismatch(format!(
                "{}: the bucket's copy differs from the one stored",
                self.source.package
            )));
        }
        if let Err(e) = &verified {
            tracing::warn!(package = %self.source.package, error = %e, "damaged archive in the bucket; removing it");
            let _ = bucket.delete(&bucket.path(Area::Archives, &self.key)).await;
        }
        verified
    }

    /// Offers the archive just committed at `path` to the bucket, in the background; clients
    /// have it already. The lease, if any, is let go once the archive is there (or not).
    pub(super) fn offer(&self, path: &Path, received: &Received, lease: Option<Lease>) {
        let Some(bucket) = self.inner.bucket.clone() else {
            return;
        };
        let (_, sha256, _) = received.digests.finish();
        let uploads = self.inner.uploads.clone();
        let (key, package, len) = (
            self.key.clone(),
            self.source.package.clone(),
            received.written,
        );
        let path = path.to_path_buf();
        tokio::spawn(async move {
            let outcome = if len > UPLOAD_MAX_BYTES || !bucket.usable() {
                UploadOutcome::Skipped
            } else {
                let _permit = uploads.acquire().await;
                upload(&bucket, &key, path, sha256).await
            };
            bucket.metrics().bucket.record_upload(outcome);
            tracing::debug!(package = %package, outcome = ?outcome, "archive offered to the bucket");
            drop(lease);
        });
    }
}

async fn upload(bucket: &Bucket, key: &str, path: PathBuf, sha256: String) -> UploadOutcome {
    let read = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    let bytes = match read {
        Ok(bytes) => Bytes::from(bytes),
        // Evicted locally already: another miss will offer it again.
        Err(_) => return UploadOutcome::Skipped,
    };
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(SHA256.into()),
        AttributeValue::from(sha256),
    );
    attributes.insert(
        Attribute::ContentType,
        AttributeValue::from("application/octet-stream"),
    );
    let object = bucket.path(Area::Archives, key);
    match bucket.create_with(&object, bytes.into(), attributes).await {
        Ok(Created::New(_)) => UploadOutcome::Created,
        Ok(Created::Exists) => UploadOutcome::Exists,
        Err(e) => {
            tracing::warn!(error = %e, "storing an archive in the bucket failed");
            UploadOutcome::Failed
        }
    }
}

impl Download {
    /// Takes the per-archive lock shared with other processes; while another holds it, waits
    /// (it is fetching the same archive). Locking is an optimisation: where the filesystem
    /// cannot lock, every process fetches for itself, and atomic renames keep that safe.
    pub(super) async fn wait_for_peers(
        &self,
        path: &Path,
    ) -> Result<Option<std::fs::File>, ProxyError> {
        let Some(lock_path) = self.inner.disk.archive_lock_path(&self.key) else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.upstream.archive_timeout;
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
}

#[cfg(test)]
mod tests {

    use super::*;

    fn bucket() -> Arc<Bucket> {
        Bucket::in_memory("p")
    }

    const KEY: &str = "ab12";
    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn one_replica_takes_the_lease_and_the_others_wait_for_the_archive() {
        let b = bucket();
        let Claim::Fetch(Some(lease)) = claim(&b, KEY, "one", SHORT).await else {
            panic!("a free lease is taken");
        };
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { claim(&b, KEY, "two", Duration::from_secs(30)).await }
        });
        tokio::time::sleep(LEASE_POLL * 3).await;
        assert!(
            !waiter.is_finished(),
            "the second replica waits while the lease is held"
        );
        let archive = b.path(Area::Archives, KEY);
        b.create(&archive, "zip".into()).await.expect("stored");
        drop(lease);
        assert!(matches!(waiter.await.expect("task"), Claim::InBucket));
        let text = render(&b);
        assert!(text.contains("outcome=\"acquired\"} 1"), "{text}");
        assert!(text.contains("outcome=\"waited\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn a_held_lease_makes_others_fetch_themselves_only_after_their_wait() {
        let b = bucket();
        let Claim::Fetch(Some(_held)) = claim(&b, KEY, "one", SHORT).await else {
            panic!("a free lease is taken");
        };
        let started = Instant::now();
        assert!(matches!(
            claim(&b, KEY, "two", SHORT).await,
            Claim::Fetch(None)
        ));
        assert!(started.elapsed() >= SHORT);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_a_released_one_is_gone() {
        let b = bucket();
        let path = b.path(Area::Leases, KEY);
        let stale = serde_json::to_vec(&LeaseBody {
            holder: "killed".into(),
            expires_ms: unix_ms(SystemTime::now()) - 1,
        })
        .expect("json");
        b.create(&path, stale.into()).await.expect("lease");
        let Claim::Fetch(Some(lease)) = claim(&b, KEY, "two", SHORT).await else {
            panic!("an expired lease is taken over");
        };
        let held = b.get(&path).await.expect("answers").expect("present");
        let body: LeaseBody = serde_json::from_slice(&held.bytes).expect("lease body");
        assert!(body.holder == "two" && body.expires_ms > unix_ms(SystemTime::now()));
        assert!(render(&b).contains("outcome=\"taken_over\"} 1"));
        drop(lease);
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.get(&path).await.expect("answers").is_some() {
            assert!(
                Instant::now() < deadline,
                "the released lease is still there"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn render(b: &Bucket) -> String {
        b.metrics().render(&crate::metrics::Gauges {
            bucket_up: Some(true),
            ..Default::default()
        })
    }
}
