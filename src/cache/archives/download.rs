//! One archive download: upstream attempts (resumed when cut short), verification, commit.
//!
//! Bytes go to a locked temporary file as they arrive. When that write fails (a full disk),
//! the rest go to memory and the download carries on: its clients get the complete, verified
//! archive, which is then not stored, and eviction is asked to make room.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha1::{Digest, Sha1};
use tokio::sync::watch;

use super::flight::{Spill, SPILL_BUDGET_BYTES};
use super::framing::{self, Framing};
use super::index::EvictionTrigger;
use super::integrity::{check_zip, Assembled, Digests, StoredArchive};
use super::shared::Origin;
use super::{lock, Inner, Progress, MAX_ATTEMPTS, WRITE_CHUNK};
use crate::cache::{create_temp, WriteKind};
use crate::composer::{Checksum, DistSource};
use crate::error::{ProxyError, Resource};
use crate::upstream::{RequestKind, UpstreamClient, UpstreamError};

/// Why one upstream attempt ended early.
enum AttemptError {
    /// Cut short or failed to connect: worth resuming.
    Retry(ProxyError),
    /// Wrong status, wrong bytes: retrying cannot help.
    Fatal(ProxyError),
}

pub(super) struct Download {
    pub(super) inner: Arc<Inner>,
    /// The client of the upstream whose metadata named this archive.
    pub(super) upstream: Arc<UpstreamClient>,
    pub(super) key: String,
    pub(super) source: DistSource,
    pub(super) tx: watch::Sender<Progress>,
}

/// How a download that verified ended.
enum Fetched {
    Stored(u64),
    /// Another process stored it while this one waited.
    ByPeer,
    /// Served complete and verified, but not stored, for this reason.
    NotStored(String),
}

/// State of the bytes received so far, across attempts.
pub(super) struct Received {
    file: Option<Arc<std::fs::File>>,
    temp: PathBuf,
    pub(super) digests: Digests,
    pub(super) written: u64,
    /// Set once a write failed: bytes from its `start` on are in memory.
    spill: Option<Arc<Spill>>,
    pub(super) len: Option<u64>,
    /// The first answer's strong validator, which a resumed request must match.
    validator: Option<HeaderValue>,
    /// Why these bytes must not be stored even when they verify.
    unstorable: Option<String>,
}

impl Download {
    pub(super) async fn run(self) {
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
        let package = &self.source.package;
        match result {
            Ok(Fetched::Stored(bytes)) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(package = %package, bytes, elapsed_ms, "archive stored");
            }
            Ok(Fetched::ByPeer) => {
                tracing::debug!(package = %package, "archive stored by another process");
            }
            Ok(Fetched::NotStored(reason)) => {
                self.inner.unstored.fetch_add(1, Ordering::Relaxed);
                // Info: the failed write behind it was logged at warn when its run began.
                tracing::info!(event = "archive_not_stored", package = %package, reason = %reason, "archive streamed through complete and verified, but not stored");
            }
            Err(e) => {
                self.inner.downloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(package = %package, error = %e, "archive download failed; nothing stored");
                self.tx.send_modify(|p| p.outcome = Some(Err(Arc::new(e))));
                return;
            }
        }
        self.tx.send_modify(|p| p.outcome = Some(Ok(())));
    }

    /// Fetches and verifies the archive, then stores it if it can.
    async fn fetch(&self) -> Result<Fetched, ProxyError> {
        let path = self
            .inner
            .disk
            .archive_path(&self.key)
            .ok_or_else(|| ProxyError::Cache(io::Error::other("bad archive key")))?;
        let _peer_lock = self.wait_for_peers(&path).await?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(Fetched::ByPeer);
        }
        let mut received = Received {
            file: None,
            temp: self.inner.disk.temp_path(),
            digests: Digests::for_checksum(self.source.checksum()),
            written: 0,
            spill: None,
            len: None,
            validator: None,
            unstorable: None,
        };
        let (verified, origin) = self.fetch_tiers(&mut received).await;
        if verified.is_ok() {
            let (_, _, crc32) = received.digests.finish();
            self.tx.send_modify(|p| p.crc32 = Some(crc32));
        }
        let outcome = match verified {
            Err(e) => Err(e),
            Ok(()) => match received.unstorable.take() {
                Some(why) => Ok(Fetched::NotStored(why)),
                None => match self.commit(&received, &path).await {
                    Ok(()) => {
                        if let Origin::Upstream(lease) = origin {
                            self.offer(&path, &received, lease);
                        }
                        return Ok(Fetched::Stored(received.written));
                    }
                    Err(e) => {
                        self.inner.disk.health().write_failed(
                            WriteKind::Archives,
                            "storing an archive",
                            &e,
                        );
                        self.make_room(received.written);
                        Ok(Fetched::NotStored(format!("the cache write failed: {e}")))
                    }
                },
            },
        };
        // Readers keep the file open; the name goes now, so nothing partial is left behind.
        if received.file.is_some() {
            let _ = tokio::fs::remove_file(&received.temp).await;
        }
        outcome
    }

    pub(super) async fn transfer(&self, received: &mut Received) -> Result<(), ProxyError> {
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
        let upstream = &self.upstream;
        let resume_from = received.written;
        let resume = framing::resume_headers(
            resume_from,
            self.source.checksum().is_some(),
            received.validator.as_ref(),
        );
        let resumed = resume.is_some();
        let response = upstream
            .send(
                RequestKind::Archive,
                Method::GET,
                self.source.url(),
                resume.unwrap_or_default(),
                Bytes::new(),
            )
            .await
            .map_err(|e| {
                let e = ProxyError::from(e);
                if e.is_rate_limit() {
                    Fatal(e)
                } else {
                    Retry(e)
                }
            })?;
        let mismatch = |what: &str| {
            Fatal(ProxyError::ArchiveMismatch(format!(
                "{}: {what}",
                self.source.package
            )))
        };
        // Bytes of this response that repeat what was already received, re-read (when the
        // upstream ignores `Range`, or was not asked to honour it) and checked against it
        // rather than trusted.
        let mut skip = 0;
        // Clients were told a length once the first answer came; every later answer must
        // agree with it.
        let announced = received.file.is_some() || received.spill.is_some();
        match response.status {
            StatusCode::OK => {
                skip = resume_from;
                let len = framing::content_length(&response.headers);
                if announced && len != received.len {
                    return Err(mismatch(
                        "upstream changed the archive's length between attempts",
                    ));
                }
                if !announced {
                    received.len = len;
                    received.validator = framing::strong_validator(&response.headers);
                }
            }
            StatusCode::PARTIAL_CONTENT if resumed => {
                if framing::content_range_start(&response.headers) != Some(resume_from) {
                    return Err(mismatch("upstream resumed at the wrong offset"));
                }
                if self.source.checksum().is_none()
                    && framing::strong_validator(&response.headers) != received.validator
                {
                    return Err(mismatch(
                        "upstream changed the archive while it was resumed",
                    ));
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
        // Without a checksum, nothing else tells a cut from the end; any attempt counts.
        let close = framing::framing(response.version, &response.headers) == Framing::Close;
        if close && self.source.checksum().is_none() {
            received.unstorable =
                Some("upstream sent it with no length (a close-delimited body)".into());
        }
        self.open_temp(received).await;
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
                if skip == 0
                    && prefix_check.clone().finalize() != received.digests.sha1.clone().finalize()
                {
                    return Err(mismatch(
                        "upstream sent different bytes when the transfer was retried",
                    ));
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
                return Err(mismatch(&format!(
                    "received {} bytes, {expected} announced",
                    received.written
                )));
            }
        }
        Ok(())
    }

    /// Creates the temporary file once upstream has answered, and lets clients follow. If it
    /// cannot be created, every byte goes to memory.
    pub(super) async fn open_temp(&self, received: &mut Received) {
        if !(received.file.is_none() && received.spill.is_none()) {
            return;
        }
        let temp = received.temp.clone();
        let created = tokio::task::spawn_blocking(move || create_temp(&temp))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match created {
            Ok(file) => received.file = Some(Arc::new(file)),
            Err(e) => self.spill_from(received, &e),
        }
        let (file, spill, len) = (received.file.clone(), received.spill.clone(), received.len);
        self.tx.send_modify(|p| {
            p.started = true;
            p.file = file;
            p.spill = spill;
            p.len = len;
        });
    }

    /// A write to the temporary file failed: from `received.written` on, bytes are kept in
    /// memory, and the archive will not be stored.
    fn spill_from(&self, received: &mut Received, error: &io::Error) {
        self.inner.disk.health().write_failed(
            WriteKind::Archives,
            "writing an archive download",
            error,
        );
        received.unstorable = Some(format!("the cache write failed: {error}"));
        let spill = Arc::new(Spill::new(received.written, self.inner.spilled.clone()));
        received.spill = Some(spill.clone());
        self.tx.send_modify(|p| p.spill = Some(spill));
        self.make_room(received.len.unwrap_or(0));
    }

    /// Asks eviction, in the background, to free space for the next downloads.
    fn make_room(&self, needed_bytes: u64) {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.evict_for_space(needed_bytes));
    }

    /// Appends `pending` to what was received and lets readers see it. Fails only when the
    /// disk failed and the memory budget for streaming through is used up.
    pub(super) async fn write(
        &self,
        received: &mut Received,
        pending: &mut BytesMut,
    ) -> Result<(), ProxyError> {
        if pending.is_empty() {
            return Ok(());
        }
        let data = pending.split().freeze();
        received.digests.update(&data);
        let offset = received.written;
        let n = data.len() as u64;
        if received.spill.is_none() {
            let written = match received.file.clone() {
                Some(file) => {
                    let chunk = data.clone();
                    tokio::task::spawn_blocking(move || file.write_all_at(&chunk, offset))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                }
                None => Err(io::Error::other("no temporary file")),
            };
            if let Err(e) = written {
                self.spill_from(received, &e);
            }
        }
        if let Some(spill) = &received.spill {
            if !spill.push(offset, data) {
                return Err(ProxyError::Cache(io::Error::other(format!(
                    "the cache cannot be written and the memory for streaming archives through \
                     ({} MiB) is in use by other downloads",
                    SPILL_BUDGET_BYTES / 1024 / 1024
                ))));
            }
        }
        received.written += n;
        let written = received.written;
        self.tx.send_modify(|p| p.written = written);
        Ok(())
    }

    /// Checks what arrived: the published checksum, or (for a zip without one) its structure.
    pub(super) async fn verify(&self, received: &Received) -> Result<(), ProxyError> {
        let package = &self.source.package;
        if let Some(expected) = self.source.checksum() {
            return received
                .digests
                .check(expected)
                .map_err(|why| ProxyError::ArchiveMismatch(format!("{package}: {why}")));
        }
        if !self.source.is_zip {
            return Ok(());
        }
        let (file, spill) = (received.file.clone(), received.spill.clone());
        let on_disk = spill.as_ref().map_or(received.written, |s| s.start);
        let chunks = spill.map(|s| s.chunks()).unwrap_or_default();
        let assembled = Assembled::new(file, on_disk, chunks, received.written);
        let checked = tokio::task::spawn_blocking(move || check_zip(assembled))
            .await
            .map_err(io::Error::other)?;
        checked.map_err(|why| {
            ProxyError::ArchiveMismatch(format!(
                "{package}: {why} (upstream publishes no checksum for it)"
            ))
        })
    }

    /// Syncs the temporary file, writes the description and renames the archive into the
    /// store, then keeps the store in bounds.
    async fn commit(&self, received: &Received, path: &Path) -> io::Result<()> {
        let (sha1, sha256, crc32) = received.digests.finish();
        let checksum = self.source.checksum();
        let meta = StoredArchive {
            package: self.source.package.clone(),
            url: self.source.url().to_string(),
            shasum: checksum.and_then(Checksum::sha1).map(str::to_string),
            md5: checksum.and_then(Checksum::md5).map(str::to_string),
            len: received.written,
            sha1: Some(sha1),
            sha256: Some(sha256),
            crc32: Some(crc32),
        };
        let description = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let file = received
            .file
            .clone()
            .ok_or_else(|| io::Error::other("no temporary file"))?;
        let inner = self.inner.clone();
        let (key, temp, path) = (self.key.clone(), received.temp.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            // The description goes first: an archive is never without one, while a
            // description without its archive (after a crash here) is harmless, and removed
            // by `cache purge`.
            let meta_path = inner
                .disk
                .archive_meta_path(&key)
                .ok_or_else(|| io::Error::other("bad archive key"))?;
            inner.disk.write_atomic_blocking(&meta_path, &description)?;
            inner.disk.commit(&temp, &path)
        })
        .await
        .map_err(io::Error::other)??;
        self.inner
            .disk
            .health()
            .write_succeeded(WriteKind::Archives);
        lock(&self.inner.index).insert(&self.key, received.written, SystemTime::now());
        let inner = self.inner.clone();
        // Evict before the flight reports success, so the bound holds whenever a download
        // has finished.
        tokio::task::spawn_blocking(move || inner.evict_if_needed(EvictionTrigger::Stored))
            .await
            .map_err(io::Error::other)?;
        Ok(())
    }
}
