//! Package archives on disk.
//!
//! An archive is streamed to the client while it is written to a temporary file; it is renamed
//! into the store only when it is whole (length as announced, sha1 as the metadata promises).
//! The last chunk is held back until that check passes, so a client never receives a corrupt
//! or truncated archive as a complete response: it sees the connection break instead.
//! The store key includes the promised shasum, so an archive that changed upstream is a new
//! entry rather than a mismatch with an old one.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::cache::metadata::CacheStatus;
use crate::cache::CacheDir;
use crate::composer::{sha256_hex, DistSource};
use crate::error::{ProxyError, Resource};
use crate::upstream::UpstreamClient;

/// Chunks buffered between the upstream reader and a slow client.
const CHANNEL_DEPTH: usize = 16;

/// An archive ready to be sent.
pub enum Archive {
    /// Stored and verified.
    File { file: tokio::fs::File, len: u64 },
    /// Being fetched; the receiver yields chunks, then an error if verification fails.
    Streaming {
        chunks: mpsc::Receiver<Result<Bytes, io::Error>>,
        len: Option<u64>,
    },
}

pub struct ArchiveStore {
    disk: Arc<CacheDir>,
    upstream: Arc<UpstreamClient>,
}

impl ArchiveStore {
    pub fn new(disk: Arc<CacheDir>, upstream: Arc<UpstreamClient>) -> Self {
        Self { disk, upstream }
    }

    /// The store key: the upstream URL plus the promised checksum.
    pub fn store_key(source: &DistSource) -> String {
        sha256_hex(format!("{}\n{}", source.url, source.shasum.as_deref().unwrap_or("")).as_bytes())
    }

    fn path_for(&self, source: &DistSource) -> Result<PathBuf, ProxyError> {
        self.disk
            .archive_path(&Self::store_key(source))
            .ok_or_else(|| ProxyError::Cache(io::Error::other("bad archive key")))
    }

    /// Opens a stored archive or starts fetching it.
    pub async fn open(&self, source: &DistSource) -> Result<(Archive, CacheStatus), ProxyError> {
        let path = self.path_for(source)?;
        if let Ok(file) = tokio::fs::File::open(&path).await {
            let len = file.metadata().await?.len();
            return Ok((Archive::File { file, len }, CacheStatus::Hit));
        }
        let response = self
            .upstream
            .send(Method::GET, &source.url, HeaderMap::new(), Bytes::new())
            .await?;
        if response.status != StatusCode::OK {
            return Err(ProxyError::from_upstream_status(
                response.status,
                Resource::Archive,
                self.upstream.has_credentials(),
                &source.package,
            ));
        }
        let len = response
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let temp = self.disk.temp_path();
        let file = tokio::fs::File::create(&temp).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let job = Download {
            disk: self.disk.clone(),
            upstream: self.upstream.clone(),
            source: source.clone(),
            temp,
            path,
            expected_len: len,
        };
        tokio::spawn(job.run(response.body, file, tx));
        Ok((Archive::Streaming { chunks: rx, len }, CacheStatus::Miss))
    }
}

struct Download {
    disk: Arc<CacheDir>,
    upstream: Arc<UpstreamClient>,
    source: DistSource,
    temp: PathBuf,
    path: PathBuf,
    expected_len: Option<u64>,
}

impl Download {
    async fn run(
        self,
        body: hyper::body::Incoming,
        file: tokio::fs::File,
        tx: mpsc::Sender<Result<Bytes, io::Error>>,
    ) {
        let started = Instant::now();
        let outcome = self.copy(body, file, &tx).await;
        match outcome {
            Ok((held, bytes)) => {
                if let Some(chunk) = held {
                    let _ = tx.send(Ok(chunk)).await;
                }
                tracing::info!(
                    package = %self.source.package,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "archive stored"
                );
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&self.temp).await;
                tracing::warn!(package = %self.source.package, error = %e, "archive download failed; nothing stored");
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        }
    }

    /// Copies the body to the file and the client, verifies, commits. Returns the held-back
    /// last chunk, to be released only once the archive is known to be whole.
    async fn copy(
        &self,
        mut body: hyper::body::Incoming,
        mut file: tokio::fs::File,
        tx: &mpsc::Sender<Result<Bytes, io::Error>>,
    ) -> Result<(Option<Bytes>, u64), ProxyError> {
        let deadline = Instant::now() + self.upstream.archive_timeout;
        let mut sha1 = Sha1::new();
        let mut total: u64 = 0;
        let mut held: Option<Bytes> = None;
        // A client that went away must not stop the download: the archive is still cached.
        let mut client_gone = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait = remaining.min(self.upstream.read_timeout);
            let frame = tokio::time::timeout(wait, body.frame())
                .await
                .map_err(|_| crate::upstream::UpstreamError::Timeout("reading an archive"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                crate::upstream::UpstreamError::Unreachable(format!(
                    "archive transfer broke off: {e}"
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sha1.update(&data);
            total += data.len() as u64;
            file.write_all(&data).await?;
            if let Some(previous) = held.replace(data) {
                if !client_gone && tx.send(Ok(previous)).await.is_err() {
                    client_gone = true;
                }
            }
        }
        if let Some(expected) = self.expected_len {
            if expected != total {
                return Err(ProxyError::ArchiveMismatch(format!(
                    "{}: received {total} of {expected} bytes",
                    self.source.package
                )));
            }
        }
        let actual = hex::encode(sha1.finalize());
        if let Some(expected) = &self.source.shasum {
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(ProxyError::ArchiveMismatch(format!(
                    "{}: sha1 {actual}, metadata promises {expected}",
                    self.source.package
                )));
            }
        }
        file.sync_all().await?;
        drop(file);
        self.disk.commit(&self.temp, &self.path).await?;
        Ok((held, total))
    }
}
