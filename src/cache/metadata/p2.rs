//! p2 files: translated from v1 packages, or (for p2-native upstreams) fetched, revalidated in
//! the background (per TTL, or as the upstream's changes feed announces) and kept on disk.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::freshness::{p2_step, P2Step};
use super::{CacheStatus, MetadataCache, PersistedRoot};
use crate::composer::{self, Document, UpstreamRoot};
use crate::error::{ProxyError, Resource};
use crate::upstream::{MetadataResponse, Validators};

/// A p2 file from a p2-native upstream.
#[derive(Debug)]
pub struct P2Entry {
    pub doc: Document,
    pub(super) dists: composer::Dists,
    /// `None`: loaded from disk, not yet revalidated by this process.
    pub(super) validated_at: Option<Instant>,
    pub(super) validators: Validators,
}

impl MetadataCache {
    /// A p2 file (`vendor/name` or `vendor/name~dev`) for Composer 2 clients.
    pub async fn p2_file(
        self: &Arc<Self>,
        file: &str,
    ) -> Result<(Document, CacheStatus), ProxyError> {
        let (view, _) = self.view().await?;
        let name = file.strip_suffix("~dev").unwrap_or(file);
        if view.knows(name) == Some(false) {
            return Err(ProxyError::NotFound(format!(
                "package {name} is not in the upstream repository"
            )));
        }
        match &view.upstream {
            UpstreamRoot::V1 { .. } => {
                // One cache lookup for the common case, a hit.
                let (package, cache) = match self.cached_v1_package(&view, name).await {
                    Some(package) => (package, CacheStatus::Hit),
                    // Boxed: the fetch is large, and a hit's future should not carry its room.
                    None => (
                        Box::pin(self.v1_package(&view, name)).await?,
                        CacheStatus::Miss,
                    ),
                };
                let doc = if file.ends_with("~dev") {
                    &package.p2_dev
                } else {
                    &package.p2
                };
                Ok((doc.clone(), cache))
            }
            UpstreamRoot::P2 { metadata_url, .. } => {
                let entry = Box::pin(self.p2_native(metadata_url.as_str(), file)).await?;
                Ok((entry.0.doc.clone(), entry.1))
            }
        }
    }

    /// A p2 file of a p2-native upstream: fresh from cache; stale from cache while it is
    /// revalidated in the background; or fetched once however many clients ask at once.
    pub(super) async fn p2_native(
        self: &Arc<Self>,
        template: &str,
        file: &str,
    ) -> Result<(Arc<P2Entry>, CacheStatus), ProxyError> {
        let url = template.replace("%package%", file);
        if let Some(entry) = self.p2_files.get(file).await {
            return Ok(self.clone().serve_cached_p2(url, file, entry));
        }
        if self.not_found.contains_key(&url) {
            return Err(ProxyError::NotFound(format!(
                "package {file} (upstream said so recently)"
            )));
        }
        let entry = self
            .p2_files
            .try_get_with(file.to_string(), async {
                match self.load_p2(&url, file).await {
                    Some(saved) => Ok(saved),
                    None => self.fetch_p2(&url, file, None).await,
                }
            })
            .await
            .map_err(ProxyError::Shared)?;
        if entry.validated_at.is_none() {
            // Saved by an earlier run: served, and revalidated unless the feed is on it.
            return Ok(self.clone().serve_cached_p2(url, file, entry));
        }
        self.feed
            .fetched(file, entry.validators.last_modified.as_deref());
        Ok((entry, CacheStatus::Miss))
    }

    /// A cached p2 file as its freshness allows: as it is, or stale while it is revalidated in
    /// the background (or refetched by the changes feed's poller).
    fn serve_cached_p2(
        self: Arc<Self>,
        url: String,
        file: &str,
        entry: Arc<P2Entry>,
    ) -> (Arc<P2Entry>, CacheStatus) {
        let (feed, announced) = self.feed.verdict(file);
        let age = entry.validated_at.map(|t| t.elapsed());
        match p2_step(age, self.ttl, feed, announced) {
            P2Step::Use => (entry, CacheStatus::Hit),
            P2Step::Wait => (entry, CacheStatus::Stale),
            P2Step::Revalidate => {
                self.spawn_p2_revalidation(url, file.to_string(), entry.clone());
                (entry, CacheStatus::Stale)
            }
        }
    }

    /// One conditional request for a p2 file; a 404 is remembered for the negative TTL.
    pub(super) async fn fetch_p2(
        &self,
        url: &str,
        file: &str,
        existing: Option<&P2Entry>,
    ) -> Result<Arc<P2Entry>, ProxyError> {
        let response = self
            .upstream
            .get_metadata(url, existing.map(|e| &e.validators))
            .await?;
        match (response, existing) {
            (MetadataResponse::NotModified, Some(old)) => Ok(Arc::new(P2Entry {
                doc: old.doc.clone(),
                dists: old.dists.clone(),
                validated_at: Some(Instant::now()),
                validators: old.validators.clone(),
            })),
            (MetadataResponse::Fresh { body, validators }, _) => {
                let entry = self.p2_entry(file, &body, validators.clone(), Some(Instant::now()));
                self.upstream.note_body(&entry);
                // Kept only when usable: a restart must not load the garbage back.
                if entry.is_ok() {
                    self.save_p2(url, &body, &validators).await;
                }
                entry
            }
            (MetadataResponse::Status(status), _) => {
                let e = ProxyError::from_upstream_status(
                    status,
                    Resource::Metadata,
                    self.upstream.has_credentials(),
                    file,
                );
                if e.is_not_found() {
                    self.not_found.insert(url.to_string(), ()).await;
                }
                Err(e)
            }
            (MetadataResponse::NotModified, None) => Err(ProxyError::UpstreamStatus(304)),
        }
    }

    pub(super) fn p2_entry(
        &self,
        file: &str,
        body: &[u8],
        validators: Validators,
        validated_at: Option<Instant>,
    ) -> Result<Arc<P2Entry>, ProxyError> {
        let modified = validators
            .last_modified
            .as_deref()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .unwrap_or_else(SystemTime::now);
        let name = file.strip_suffix("~dev").unwrap_or(file);
        let (doc, dists) = self.rewriter.process_p2_file(name, body, modified)?;
        Ok(Arc::new(P2Entry {
            doc,
            dists,
            validated_at,
            validators,
        }))
    }

    /// Keeps a p2 file as upstream sent it, so a restart with upstream down still has it.
    pub(super) async fn save_p2(&self, url: &str, body: &Bytes, validators: &Validators) {
        let path = self.disk.url_state_path(self.namespace(), url);
        let saved = PersistedRoot {
            body: String::from_utf8_lossy(body).into_owned(),
            last_modified: validators.last_modified.clone(),
            etag: validators.etag.clone(),
        };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        self.disk
            .save_shared_metadata(&path, &bytes, "a p2 file")
            .await;
    }

    pub(super) async fn load_p2(&self, url: &str, file: &str) -> Option<Arc<P2Entry>> {
        let path = self.disk.url_state_path(self.namespace(), url);
        let text = self.disk.load_shared_metadata(&path).await?;
        self.saved_p2(file, &text)
    }

    /// The copy on this replica's own disk only: the changes feed must not ask the bucket
    /// about every name it announces.
    pub(super) async fn load_local_p2(&self, url: &str, file: &str) -> Option<Arc<P2Entry>> {
        let path = self.disk.url_state_path(self.namespace(), url);
        let text = tokio::fs::read(&path).await.ok()?;
        self.saved_p2(file, &text)
    }

    fn saved_p2(&self, file: &str, text: &[u8]) -> Option<Arc<P2Entry>> {
        let saved: PersistedRoot = serde_json::from_slice(text).ok()?;
        let validators = Validators {
            last_modified: saved.last_modified,
            etag: saved.etag,
        };
        self.p2_entry(file, saved.body.as_bytes(), validators, None)
            .ok()
    }

    /// Marks `file` as being revalidated; false when it already is.
    pub(super) fn claim_p2_revalidation(&self, file: &str) -> bool {
        self.p2_revalidating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(file.to_string())
    }

    pub(super) fn release_p2_revalidation(&self, file: &str) {
        self.p2_revalidating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(file);
    }

    pub(super) fn spawn_p2_revalidation(
        self: Arc<Self>,
        url: String,
        file: String,
        old: Arc<P2Entry>,
    ) {
        if !self.claim_p2_revalidation(&file) {
            return;
        }
        tokio::spawn(async move {
            match self.fetch_p2(&url, &file, Some(&old)).await {
                Ok(entry) => {
                    self.feed.settled(&file);
                    self.feed
                        .fetched(&file, entry.validators.last_modified.as_deref());
                    self.p2_files.insert(file.clone(), entry).await;
                }
                Err(e) if e.is_not_found() => {
                    tracing::info!(file = %file, "p2 file removed upstream; forgetting it");
                    self.p2_files.invalidate(&file).await;
                    self.feed.settled(&file);
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %file, "upstream failed; serving cached p2 file");
                }
            }
            self.release_p2_revalidation(&file);
        });
    }
}
