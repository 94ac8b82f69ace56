//! One archive download: upstream attempts (resumed when cut short), verification, commit.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha1::{Digest, Sha1};
use tokio::sync::watch;

use super::{lock, Inner, Progress, StoredArchive, MAX_ATTEMPTS, PEER_POLL, WRITE_CHUNK};
use crate::composer::DistSource;
use crate::error::{ProxyError, Resource};
use crate::upstream::{RequestKind, UpstreamError};

/// Why one upstream attempt ended early.
enum AttemptError {
    /// Cut short or failed to connect: worth resuming.
    Retry(ProxyError),
    /// Wrong status, wrong bytes: retrying cannot help.
    Fatal(ProxyError),
}

pub(super) struct Download {
    pub(super) inner: Arc<Inner>,
    pub(super) key: String,
    pub(super) source: DistSource,
    pub(super) tx: watch::Sender<Progress>,
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
}
