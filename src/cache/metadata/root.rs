//! The upstream root (`packages.json`) and everything derived from it, the [`View`]: restored
//! from disk at start, revalidated once per TTL (in the background while the previous copy is
//! served), refetched after a failure only once the back-off allows.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::freshness::{next_step, Refresh, Step};
use super::v1::{Listing, V1Chain};
use super::{CacheStatus, MetadataCache, PersistedRoot};
use crate::composer::apis::RootApis;
use crate::composer::{self, Document, ProxyRoot, UpstreamRoot};
use crate::error::{ProxyError, Resource};
use crate::upstream::{KeyVerdict, MetadataResponse, Validators};

/// Everything derived from one upstream `packages.json`.
#[derive(Debug)]
pub struct View {
    /// When upstream last confirmed this root; `None` when loaded from disk at start-up.
    pub(super) validated_at: Option<Instant>,
    pub(super) validators: Validators,
    pub(super) upstream_sha256: String,
    pub(super) upstream: UpstreamRoot,
    pub(super) listings: Arc<Vec<Listing>>,
    /// v1: name → upstream sha256 of its per-package file; empty for p2 upstreams.
    pub(super) packages: Arc<BTreeMap<String, String>>,
    /// Every package name the upstream offers, when it says (always for v1).
    pub(super) names: Option<Arc<Vec<String>>>,
    pub(super) v1_chain: Option<Arc<V1Chain>>,
    /// The APIs beside the metadata that the proxy may ask on the upstream's behalf.
    pub(super) apis: Arc<RootApis>,
    pub root: Document,
}

impl View {
    /// Whether upstream has `name`: `None` when it does not say (p2 without a name list).
    pub fn knows(&self, name: &str) -> Option<bool> {
        match &self.upstream {
            UpstreamRoot::V1 { .. } => Some(self.packages.contains_key(name)),
            UpstreamRoot::P2 {
                available_package_patterns: Some(_),
                ..
            } => None,
            UpstreamRoot::P2 { .. } => self
                .names
                .as_ref()
                .map(|n| n.binary_search_by(|x| x.as_str().cmp(name)).is_ok()),
        }
    }

    /// Whether any name it lists starts with `vendor` (`vendor/`). Names are sorted.
    pub fn lists_vendor(&self, vendor: &str) -> bool {
        let names = self.names();
        let first = names.partition_point(|n| n.as_str() < vendor);
        names.get(first).is_some_and(|n| n.starts_with(vendor))
    }

    pub fn apis(&self) -> &RootApis {
        &self.apis
    }

    pub fn names(&self) -> &[String] {
        self.names.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Every name the upstream offers, when that list is complete: then it is finite, and
    /// whether it has a name is known without asking it.
    pub fn finite_names(&self) -> Option<&[String]> {
        match &self.upstream {
            UpstreamRoot::P2 {
                available_package_patterns: Some(_),
                ..
            } => None,
            _ => self.names.as_deref().map(Vec::as_slice),
        }
    }

    /// A copy marked as confirmed by upstream just now, with the validators it answered with.
    pub(super) fn with_validation(&self, validators: Validators) -> View {
        View {
            validated_at: Some(Instant::now()),
            validators,
            ..self.shallow_clone()
        }
    }

    /// The same view; every large part is shared behind an `Arc`.
    pub(super) fn shallow_clone(&self) -> View {
        View {
            validated_at: self.validated_at,
            validators: self.validators.clone(),
            upstream_sha256: self.upstream_sha256.clone(),
            upstream: self.upstream.clone(),
            listings: self.listings.clone(),
            packages: self.packages.clone(),
            names: self.names.clone(),
            v1_chain: self.v1_chain.clone(),
            apis: self.apis.clone(),
            root: self.root.clone(),
        }
    }
}

impl MetadataCache {
    /// Loads the last upstream root from disk, so the proxy can serve after a restart even if
    /// upstream is down. A missing or unusable copy just means starting cold.
    pub async fn restore(self: &Arc<Self>) {
        let path = self.disk.state_path(self.namespace(), "root.json");
        let Some(text) = self.disk.load_shared_metadata(&path).await else {
            return;
        };
        let Ok(saved) = serde_json::from_slice::<PersistedRoot>(&text) else {
            tracing::warn!(path = %path.display(), "ignoring unreadable saved upstream root");
            return;
        };
        let validators = Validators {
            last_modified: saved.last_modified,
            etag: saved.etag,
        };
        match self
            .build_view(Bytes::from(saved.body), validators, None, false)
            .await
        {
            Ok(view) => {
                tracing::info!(
                    packages = view.names().len(),
                    "restored upstream metadata from cache"
                );
                self.install(Arc::new(view));
                self.clone().spawn_chain_build();
            }
            Err(e) => tracing::warn!(error = %e, "saved upstream root could not be used"),
        }
    }

    /// The current view, refreshing it as the TTL demands. Only a cold start waits for
    /// upstream; otherwise the cached view is served and refreshed in the background.
    pub async fn view(self: &Arc<Self>) -> Result<(Arc<View>, CacheStatus), ProxyError> {
        if !self.stale_on_key_rejection && self.upstream.key_verdict() == KeyVerdict::Rejected {
            // A revoked or unpaid licence must show at once, not after the cache expires: ask
            // again (at most once per back-off window) and serve nothing until it is accepted.
            let view = Box::pin(self.refresh_after_rejection()).await?;
            return Ok((view, CacheStatus::Revalidated));
        }
        match self.current() {
            Some(view) if self.is_fresh(&view) => Ok((view, CacheStatus::Hit)),
            Some(view) => {
                self.clone().spawn_refresh();
                Ok((view, CacheStatus::Stale))
            }
            // Boxed, as above: a hit's future should not carry the refresh's room.
            None => {
                let view = Box::pin(self.refresh()).await?;
                Ok((view, CacheStatus::Miss))
            }
        }
    }

    pub(super) fn spawn_refresh(self: Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "upstream packages.json refresh failed; serving cached metadata");
            }
            self.refreshing.store(false, Ordering::Release);
        });
    }

    /// Revalidates the upstream root (single flight) and installs the resulting view.
    pub(super) async fn refresh(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::WhenStale).await
    }

    /// Asks upstream again after it rejected the keys, even if the cached view is fresh.
    pub(super) async fn refresh_after_rejection(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::AfterRejection).await
    }

    /// Asks upstream now, whatever the TTL and back-off say (after new keys were loaded).
    pub async fn revalidate_now(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::Now).await
    }

    pub fn stale_on_key_rejection(&self) -> bool {
        self.stale_on_key_rejection
    }

    pub(super) async fn refresh_inner(
        self: &Arc<Self>,
        mode: Refresh,
    ) -> Result<Arc<View>, ProxyError> {
        let mut last_failure = self.refresh_lock.lock().await;
        let current = self.current();
        let rejected_now =
            mode == Refresh::AfterRejection && self.upstream.key_verdict() == KeyVerdict::Rejected;
        let step = next_step(
            mode,
            current.as_ref().map(|view| self.is_fresh(view)),
            rejected_now,
            last_failure.as_ref().map(|(at, _)| at.elapsed()),
            self.retry_after_failure,
        );
        match (step, &current, &*last_failure) {
            (Step::UseCurrent, Some(view), _) => return Ok(view.clone()),
            (Step::RepeatFailure, _, Some((_, error))) => {
                return Err(ProxyError::Shared(error.clone()))
            }
            _ => {}
        }
        match self.fetch_root(current.as_deref()).await {
            Ok(mut view) => {
                *last_failure = None;
                self.note_refresh(Ok(()));
                let mut installed = None;
                self.update(|latest| {
                    // A chain the background build installed while this fetch ran still fits
                    // when the listings are unchanged.
                    if let Some(latest) = latest {
                        if view.v1_chain.is_none() && latest.packages == view.packages {
                            view.v1_chain = latest.v1_chain.clone();
                            if view.v1_chain.is_some() {
                                view.root = self.root_document(&view, SystemTime::now());
                            }
                        }
                    }
                    let view = Arc::new(view);
                    installed = Some(view.clone());
                    Some(view)
                });
                self.clone().spawn_chain_build();
                installed.ok_or_else(|| {
                    ProxyError::Cache(std::io::Error::other("metadata state lock poisoned"))
                })
            }
            Err(e) => {
                self.note_refresh(Err(e.to_string()));
                let e = Arc::new(e);
                *last_failure = Some((Instant::now(), e.clone()));
                Err(ProxyError::Shared(e))
            }
        }
    }

    pub(super) async fn fetch_root(&self, current: Option<&View>) -> Result<View, ProxyError> {
        let url = composer::root_url(self.upstream.base());
        let response = self
            .upstream
            .get_metadata(&url, current.map(|v| &v.validators))
            .await?;
        match response {
            MetadataResponse::NotModified => match current {
                Some(view) => {
                    tracing::debug!("upstream packages.json not modified");
                    Ok(view.with_validation(view.validators.clone()))
                }
                None => Err(ProxyError::UpstreamStatus(304)),
            },
            MetadataResponse::Fresh { body, validators } => {
                if let Some(view) = current {
                    if view.upstream_sha256 == composer::sha256_hex(&body) {
                        self.upstream.note_body(&Ok(()));
                        return Ok(view.with_validation(validators));
                    }
                }
                let view = self
                    .build_view(body.clone(), validators.clone(), current, true)
                    .await;
                self.upstream.note_body(&view);
                let view = view?;
                let saved = PersistedRoot {
                    body: String::from_utf8_lossy(&body).into_owned(),
                    last_modified: validators.last_modified,
                    etag: validators.etag,
                };
                let bytes = serde_json::to_vec(&saved).unwrap_or_default();
                self.disk
                    .save_shared_metadata(
                        &self.disk.state_path(self.namespace(), "root.json"),
                        &bytes,
                        "packages.json",
                    )
                    .await;
                tracing::info!(
                    packages = view.names().len(),
                    "upstream packages.json changed"
                );
                Ok(view)
            }
            MetadataResponse::Status(status) => {
                if status == http::StatusCode::FORBIDDEN {
                    // For the repository root, 403 means the account, not one package.
                    self.upstream.note_key_verdict(KeyVerdict::Rejected);
                }
                Err(ProxyError::from_upstream_status(
                    status,
                    Resource::Metadata,
                    self.upstream.has_credentials(),
                    "packages.json",
                ))
            }
        }
    }

    /// Builds a view from an upstream root, fetching (or loading) its listings.
    pub(super) async fn build_view(
        &self,
        body: Bytes,
        validators: Validators,
        previous: Option<&View>,
        validated: bool,
    ) -> Result<View, ProxyError> {
        let upstream = composer::parse_root(&body, self.upstream.base())?;
        let now = SystemTime::now();
        let (listings, packages, names) = match &upstream {
            UpstreamRoot::V1 { includes, .. } => {
                let base = composer::repository_base(self.upstream.base());
                let mut listings = Vec::new();
                let mut all = BTreeMap::new();
                // All listings at once: on a cold start each is a full upstream round trip.
                let fetched = futures_util::future::join_all(includes.iter().map(|include| {
                    let path = include.path_for(&include.sha256);
                    let url = format!("{base}/{path}");
                    async move { self.content_addressed(&url, &include.sha256, &path).await }
                }))
                .await;
                for (include, bytes) in includes.iter().zip(fetched) {
                    let packages = composer::parse_listing(&bytes?)?;
                    all.extend(packages.iter().map(|(k, v)| (k.clone(), v.clone())));
                    listings.push(Listing {
                        include: include.clone(),
                        packages,
                    });
                }
                let names: Vec<String> = all.keys().cloned().collect();
                (listings, all, Some(Arc::new(names)))
            }
            UpstreamRoot::P2 {
                available_packages, ..
            } => {
                let names = available_packages.clone().map(|mut n| {
                    n.sort();
                    n.dedup();
                    Arc::new(n)
                });
                (Vec::new(), BTreeMap::new(), names)
            }
        };
        // The chain only depends on the listings, so an unchanged set keeps it.
        let v1_chain = previous.and_then(|p| {
            (*p.packages == packages && !packages.is_empty())
                .then(|| p.v1_chain.clone())
                .flatten()
        });
        let mut view = View {
            validated_at: validated.then(Instant::now),
            validators,
            upstream_sha256: composer::sha256_hex(&body),
            upstream,
            listings: Arc::new(listings),
            packages: Arc::new(packages),
            names,
            v1_chain,
            apis: Arc::new(self.reachable_apis(&body)),
            root: Document::new(Bytes::new(), now),
        };
        view.root = self.root_document(&view, now);
        Ok(view)
    }

    /// The root's APIs the proxy may ask: those on the upstream's origin or an allowed host.
    /// Each other one is named in the log when a root is read (at start and when it changes).
    fn reachable_apis(&self, body: &[u8]) -> RootApis {
        let apis = composer::apis::parse_root_apis(body, self.upstream.base());
        let (apis, refused) =
            apis.reachable(|url| self.rewriter.upstream_url(url.as_str()).is_some());
        for (key, url) in refused {
            tracing::warn!(
                event = "upstream_api_not_allowed",
                upstream = %self.upstream.name(),
                key,
                %url,
                "the upstream's packages.json points {key} at {}, which is neither its url nor \
                 one of its allowed_hosts: clients of the proxy are not offered it; add that \
                 origin to allowed_hosts to offer it",
                url.origin().ascii_serialization()
            );
        }
        apis
    }

    pub(super) fn root_document(&self, view: &View, now: SystemTime) -> Document {
        let patterns = match &view.upstream {
            UpstreamRoot::P2 {
                available_package_patterns,
                ..
            } => available_package_patterns.as_deref(),
            UpstreamRoot::V1 { .. } => None,
        };
        self.rewriter.root_document(
            &ProxyRoot {
                available_packages: view.names.as_deref().map(Vec::as_slice),
                available_package_patterns: patterns,
                search: view.names.is_some(),
                v1_includes: view.v1_chain.as_ref().map(|c| c.includes.as_slice()),
                apis: &view.apis,
            },
            now,
        )
    }
}
