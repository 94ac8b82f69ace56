//! Composer 1 metadata of a v1 upstream: content-addressed listings and per-package files
//! (fetched once, verified against the sha256 chain, kept), and the rewritten chain served to
//! Composer 1 clients, built in the background.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{MetadataCache, View};
use crate::composer::{self, Document, ProcessedPackage, ProviderInclude, UpstreamRoot};
use crate::error::{ProxyError, Resource};
use crate::upstream::MetadataResponse;

/// One listing of a v1 upstream and the packages it names.
#[derive(Debug)]
pub(super) struct Listing {
    pub(super) include: ProviderInclude,
    pub(super) packages: BTreeMap<String, String>,
}

/// The rewritten Composer 1 chain for one set of listings.
#[derive(Debug)]
pub(super) struct V1Chain {
    /// Served path (e.g. `p/provider-ce$<hash>.json`) → rewritten listing.
    pub(super) listings: HashMap<String, Document>,
    /// Listing template → rewritten listing hash, for `packages.json`.
    pub(super) includes: Vec<(String, String)>,
}

impl MetadataCache {
    /// A content-addressed upstream document: from disk when known, else fetched, verified and
    /// stored. Returns the decoded bytes.
    pub(super) async fn content_addressed(
        &self,
        url: &str,
        sha256: &str,
        what: &str,
    ) -> Result<Bytes, ProxyError> {
        let path = self.disk.metadata_path(sha256).ok_or_else(|| {
            ProxyError::Protocol(composer::ProtocolError::Shape(format!(
                "{what}: {sha256:?} is not a sha256"
            )))
        })?;
        if let Some(bytes) = self.disk.load_shared_metadata(&path).await {
            // Re-verify: the file could have been damaged on disk.
            if composer::verify_sha256(&bytes, sha256, what).is_ok() {
                return Ok(Bytes::from(bytes));
            }
            tracing::warn!(path = %path.display(), "cached metadata failed its hash; refetching");
        }
        match self.upstream.get_metadata(url, None).await? {
            MetadataResponse::Fresh { body, .. } => {
                let verified =
                    composer::verify_sha256(&body, sha256, what).map_err(ProxyError::from);
                self.upstream.note_body(&verified);
                verified?;
                // A full or read-only disk must not stop serving what was just fetched.
                self.disk.save_shared_metadata(&path, &body, what).await;
                Ok(body)
            }
            MetadataResponse::NotModified => Err(ProxyError::UpstreamStatus(304)),
            MetadataResponse::Status(status) => Err(ProxyError::from_upstream_status(
                status,
                Resource::Metadata,
                self.upstream.has_credentials(),
                what,
            )),
        }
    }

    /// A v1 package's processed file if it is in memory.
    pub(super) async fn cached_v1_package(
        &self,
        view: &View,
        name: &str,
    ) -> Option<Arc<ProcessedPackage>> {
        self.packages.get(view.packages.get(name)?).await
    }

    /// A v1 package, processed; single flight per upstream hash.
    pub async fn v1_package(
        &self,
        view: &View,
        name: &str,
    ) -> Result<Arc<ProcessedPackage>, ProxyError> {
        let UpstreamRoot::V1 { providers_url, .. } = &view.upstream else {
            return Err(ProxyError::NotFound(format!("package {name}")));
        };
        // The common case, a hit, builds no URL and takes no single-flight slot.
        if let Some(package) = self.cached_v1_package(view, name).await {
            return Ok(package);
        }
        let hash = view.packages.get(name).ok_or_else(|| {
            ProxyError::NotFound(format!("package {name} is not in the upstream repository"))
        })?;
        let url = providers_url
            .as_str()
            .replace("%package%", name)
            .replace("%hash%", hash);
        if self.not_found.contains_key(&url) {
            return Err(ProxyError::NotFound(format!(
                "package file of {name} (upstream said so recently)"
            )));
        }
        let result = self
            .packages
            .try_get_with(hash.clone(), async {
                let what = format!("package file of {name}");
                let bytes = self.content_addressed(&url, hash, &what).await?;
                // The first fetch time is the file's mtime: stable across restarts.
                let modified = self.disk.metadata_path(hash).map(tokio::fs::metadata);
                let modified = match modified {
                    Some(m) => m.await.and_then(|m| m.modified()).ok(),
                    None => None,
                }
                // Rewritten output also changes when the proxy's configuration does.
                .map_or_else(SystemTime::now, |m| m.max(self.rewriter_since));
                let processed = self.rewriter.process_v1_package(name, &bytes, modified)?;
                Ok::<_, ProxyError>(Arc::new(processed))
            })
            .await;
        if let Err(e) = &result {
            if e.is_not_found() {
                self.not_found.insert(url, ()).await;
            }
        }
        result.map_err(ProxyError::Shared)
    }

    /// A rewritten v1 listing, by the path the proxy's `packages.json` named.
    pub async fn v1_listing(self: &Arc<Self>, path: &str) -> Result<Document, ProxyError> {
        let (view, _) = self.view().await?;
        view.v1_chain
            .as_ref()
            .and_then(|c| c.listings.get(path).cloned())
            .ok_or_else(|| ProxyError::NotFound(format!("listing {path}")))
    }

    /// A rewritten v1 per-package file, by name and rewritten hash.
    pub async fn v1_package_file(
        self: &Arc<Self>,
        name: &str,
        hash: &str,
    ) -> Result<Document, ProxyError> {
        let (view, _) = self.view().await?;
        if view.knows(name) == Some(false) {
            return Err(ProxyError::NotFound(format!(
                "package {name} is not in the upstream repository"
            )));
        }
        let package = self.v1_package(&view, name).await?;
        match &package.v1 {
            Some(doc) if doc.sha256 == hash => Ok(doc.clone()),
            _ => Err(ProxyError::NotFound(format!("package file {name}${hash}"))),
        }
    }

    /// Builds the rewritten v1 chain for the current view, if it lacks one.
    pub(super) fn spawn_chain_build(self: Arc<Self>) {
        if !self.v1_chain_wanted.load(Ordering::Acquire) {
            return;
        }
        tokio::spawn(async move {
            let _guard = self.building_chain.lock().await;
            let Some(view) = self.current() else { return };
            if view.v1_chain.is_some() || view.listings.is_empty() {
                return;
            }
            let started = Instant::now();
            let chain = self.build_chain(&view).await;
            let chain = Arc::new(chain);
            let mut done = false;
            self.update(|latest| {
                // Superseded while building: the newer view gets its own build.
                let latest = latest.filter(|l| {
                    l.upstream_sha256 == view.upstream_sha256 && l.v1_chain.is_none()
                })?;
                let mut next = latest.shallow_clone();
                next.v1_chain = Some(chain.clone());
                next.root = self.root_document(&next, SystemTime::now());
                done = true;
                Some(Arc::new(next))
            });
            if done {
                tracing::info!(
                    packages = view.packages.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "composer 1 provider chain ready"
                );
                self.chains_built.send_modify(|n| *n += 1);
            }
        });
    }

    pub(super) async fn build_chain(&self, view: &View) -> V1Chain {
        let names: Vec<String> = view.packages.keys().cloned().collect();
        let results: Vec<(String, Result<String, ProxyError>)> = futures_util::stream::iter(names)
            .map(|name| async move {
                let hash = self.v1_package(view, &name).await.and_then(|p| {
                    p.v1.as_ref()
                        .map(|d| d.sha256.clone())
                        .ok_or_else(|| ProxyError::NotFound(name.clone()))
                });
                (name, hash)
            })
            .buffer_unordered(self.prefetch_concurrency)
            .collect()
            .await;
        let mut package_hashes = HashMap::new();
        for (name, result) in results {
            match result {
                Ok(hash) => {
                    package_hashes.insert(name, hash);
                }
                // A package upstream cannot serve is left out of the v1 listing, not the chain.
                Err(e) => {
                    tracing::warn!(package = %name, error = %e, "package left out of the composer 1 listing")
                }
            }
        }
        let now = SystemTime::now();
        let mut listings = HashMap::new();
        let mut includes = Vec::new();
        for listing in view.listings.iter() {
            let entries: BTreeMap<String, String> = listing
                .packages
                .keys()
                .filter_map(|n| package_hashes.get(n).map(|h| (n.clone(), h.clone())))
                .collect();
            let doc = composer::listing_document(&entries, now);
            includes.push((listing.include.template.clone(), doc.sha256.clone()));
            listings.insert(listing.include.path_for(&doc.sha256), doc);
        }
        V1Chain { listings, includes }
    }

    /// Whether the Composer 1 chain is complete for the current view (tests and readiness).
    pub fn v1_ready(&self) -> bool {
        self.current().is_some_and(|v| v.v1_chain.is_some())
    }

    /// Resolves once the current view has its Composer 1 chain.
    pub async fn wait_for_v1_chain(&self) {
        let mut built = self.chains_built.subscribe();
        while !self.v1_ready() {
            if built.changed().await.is_err() {
                return;
            }
        }
    }
}
