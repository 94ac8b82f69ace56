//! Package metadata: the upstream root, v1 listings and per-package files, fetched once,
//! verified against the upstream's sha256 chain, rewritten for the proxy and kept.
//!
//! The upstream root is the only thing that needs revalidating (once per TTL, with a
//! conditional request, in the background while the previous copy is served). v1 listings and
//! per-package files are content-addressed: a hash names exactly one document, so once fetched
//! and verified they are kept on disk for good and reprocessed from there after a restart.
//! The rewritten Composer 1 chain (listings naming the rewritten per-package hashes) needs every
//! package's rewritten hash, so it is built in the background after each new listing; until it
//! is complete `packages.json` offers only the Composer 2 protocol.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::CacheDir;
use crate::composer::{self, Document, ProcessedPackage, ProxyRoot, Rewriter, UpstreamRoot};
use crate::config::UpstreamConfig;
use crate::error::{ProxyError, Resource};
use crate::upstream::{KeyVerdict, MetadataResponse, UpstreamClient, Validators};
use crate::upstreams::Listed;

mod freshness;
mod p2;
mod v1;

use freshness::{is_fresh, next_step, Refresh, Step};

pub use p2::P2Entry;
use v1::{Listing, V1Chain};

/// How a metadata answer was produced; feeds the `X-Cache` header and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Served from cache while a refresh runs, or because upstream failed.
    Stale,
    /// Checked with upstream before answering.
    Revalidated,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
        }
    }
}

/// Everything derived from one upstream `packages.json`.
#[derive(Debug)]
pub struct View {
    /// When upstream last confirmed this root; `None` when loaded from disk at start-up.
    validated_at: Option<Instant>,
    validators: Validators,
    upstream_sha256: String,
    upstream: UpstreamRoot,
    listings: Arc<Vec<Listing>>,
    /// v1: name → upstream sha256 of its per-package file; empty for p2 upstreams.
    packages: Arc<BTreeMap<String, String>>,
    /// Every package name the upstream offers, when it says (always for v1).
    names: Option<Arc<Vec<String>>>,
    v1_chain: Option<Arc<V1Chain>>,
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
    fn with_validation(&self, validators: Validators) -> View {
        View {
            validated_at: Some(Instant::now()),
            validators,
            ..self.shallow_clone()
        }
    }

    /// The same view; every large part is shared behind an `Arc`.
    fn shallow_clone(&self) -> View {
        View {
            validated_at: self.validated_at,
            validators: self.validators.clone(),
            upstream_sha256: self.upstream_sha256.clone(),
            upstream: self.upstream.clone(),
            listings: self.listings.clone(),
            packages: self.packages.clone(),
            names: self.names.clone(),
            v1_chain: self.v1_chain.clone(),
            root: self.root.clone(),
        }
    }
}

/// What is persisted of the upstream root (and of p2-native files), so a restart with upstream
/// down still has them.
#[derive(Serialize, Deserialize)]
struct PersistedRoot {
    body: String,
    last_modified: Option<String>,
    etag: Option<String>,
}

/// The metadata cache's settings, from [`crate::config::Config`].
#[derive(Clone, Copy, Debug)]
pub struct MetadataSettings {
    pub ttl: Duration,
    pub max_bytes: u64,
    pub prefetch_concurrency: usize,
    pub negative_ttl: Duration,
    pub stale_on_key_rejection: bool,
    /// After a failed `packages.json` fetch, requests get that failure (or the cached view)
    /// for this long before upstream is asked again.
    pub retry_after_failure: Duration,
}

/// Figures for `/metrics`: rewritten documents held in memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetadataStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl MetadataStats {
    /// Sums another upstream's figures into these.
    pub fn add(&mut self, other: MetadataStats) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.max_bytes += other.max_bytes;
    }
}

impl MetadataSettings {
    /// One upstream's settings: its own TTLs where its table sets them.
    pub fn for_upstream(config: &crate::config::Config, upstream: &UpstreamConfig) -> Self {
        Self {
            ttl: upstream.metadata_ttl,
            max_bytes: config.metadata_cache_max_bytes,
            prefetch_concurrency: config.v1_prefetch_concurrency,
            negative_ttl: upstream.negative_ttl,
            stale_on_key_rejection: config.stale_on_key_rejection,
            retry_after_failure: config.upstream_retry,
        }
    }
}

pub struct MetadataCache {
    upstream: Arc<UpstreamClient>,
    disk: Arc<CacheDir>,
    /// The upstream's name when it is kept under its own directory (an `[[upstream]]` table).
    namespace: Option<String>,
    rewriter: Rewriter,
    /// When this process's rewrite configuration took effect: rewritten documents are never
    /// older than this, so clients revalidating with If-Modified-Since see a new public URL.
    rewriter_since: SystemTime,
    ttl: Duration,
    max_bytes: u64,
    prefetch_concurrency: usize,
    stale_on_key_rejection: bool,
    retry_after_failure: Duration,
    view: RwLock<Option<Arc<View>>>,
    /// Serializes root refreshes (concurrent misses make one upstream request) and remembers
    /// the last failure, so requests queued behind a failing refresh get its answer at once.
    refresh_lock: tokio::sync::Mutex<Option<(Instant, Arc<ProxyError>)>>,
    refreshing: AtomicBool,
    building_chain: tokio::sync::Mutex<()>,
    /// v1 per-package files by upstream sha256 (content-addressed, so never stale).
    packages: moka::future::Cache<String, Arc<ProcessedPackage>>,
    /// p2 files of p2-native upstreams by file name (`vendor/name` or `vendor/name~dev`).
    p2_files: moka::future::Cache<String, Arc<P2Entry>>,
    /// p2 files being revalidated in the background, so each is asked for once at a time.
    p2_revalidating: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Upstream URLs that answered 404, remembered for `negative_ttl`.
    not_found: moka::future::Cache<String, ()>,
    /// Counts completed Composer 1 chains, so callers can wait for one instead of polling.
    chains_built: tokio::sync::watch::Sender<u64>,
    /// Off for commands that only look up single packages (`warm`): the chain fetches every
    /// package file upstream lists.
    v1_chain_wanted: AtomicBool,
}

impl MetadataCache {
    /// `public_url` is where this upstream's repository is served: every URL in the documents
    /// it rewrites is built from it.
    pub fn new(
        upstream: Arc<UpstreamClient>,
        disk: Arc<CacheDir>,
        public_url: String,
        namespace: Option<String>,
        settings: &MetadataSettings,
    ) -> Arc<Self> {
        let MetadataSettings {
            ttl,
            max_bytes,
            prefetch_concurrency,
            negative_ttl,
            stale_on_key_rejection,
            retry_after_failure,
        } = *settings;
        let weigh = |_: &String, p: &Arc<ProcessedPackage>| p.weight();
        let rewriter = Rewriter {
            public_url,
            upstream: upstream.base().clone(),
            allowed_hosts: upstream.allowed_hosts().to_vec(),
        };
        Arc::new(Self {
            namespace,
            rewriter,
            rewriter_since: SystemTime::now(),
            upstream,
            disk,
            ttl,
            max_bytes,
            prefetch_concurrency,
            stale_on_key_rejection,
            retry_after_failure,
            view: RwLock::new(None),
            refresh_lock: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
            building_chain: tokio::sync::Mutex::new(()),
            packages: moka::future::Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(weigh)
                .build(),
            p2_files: moka::future::Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(|_: &String, e: &Arc<P2Entry>| {
                    u32::try_from(e.doc.weight() + e.dists.len() * 256).unwrap_or(u32::MAX)
                })
                .build(),
            p2_revalidating: std::sync::Mutex::new(std::collections::HashSet::new()),
            not_found: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(negative_ttl)
                .build(),
            chains_built: tokio::sync::watch::channel(0).0,
            v1_chain_wanted: AtomicBool::new(true),
        })
    }

    /// Whether this upstream lists `name`: from its listing or `available-packages` when it
    /// has one (no request), else by whether its p2 file for the name exists (open-ended
    /// repositories such as packagist.org), remembered like any p2 answer.
    pub async fn lists(self: &Arc<Self>, name: &str) -> Listed {
        let view = match self.view().await {
            Ok((view, _)) => view,
            Err(e) => return Listed::Unknown(e),
        };
        match view.knows(name) {
            Some(true) => Listed::Yes,
            Some(false) => Listed::No,
            None => match self.p2_file(name).await {
                Ok(_) => Listed::Yes,
                Err(e) if e.is_not_found() || matches!(e, ProxyError::NotFound(_)) => Listed::No,
                Err(e) => Listed::Unknown(e),
            },
        }
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The rewriter of this upstream's documents (for `lock migrate` and `warm`).
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }

    /// Never builds the Composer 1 chain in this process (see `v1_chain_wanted`).
    pub fn skip_v1_chain(&self) {
        self.v1_chain_wanted.store(false, Ordering::Release);
    }

    pub async fn stats(&self) -> MetadataStats {
        // moka counts lazily; settle pending inserts so a scrape sees what is held.
        self.packages.run_pending_tasks().await;
        self.p2_files.run_pending_tasks().await;
        MetadataStats {
            entries: self.packages.entry_count() + self.p2_files.entry_count(),
            bytes: self.packages.weighted_size() + self.p2_files.weighted_size(),
            max_bytes: self.max_bytes,
        }
    }

    fn current(&self) -> Option<Arc<View>> {
        self.view.read().ok().and_then(|v| v.clone())
    }

    fn install(&self, view: Arc<View>) {
        self.update(|_| Some(view));
    }

    /// Replaces the view with what `next` derives from the latest one, atomically, so a
    /// refresh and a background chain build cannot overwrite each other's result.
    fn update(&self, next: impl FnOnce(Option<&Arc<View>>) -> Option<Arc<View>>) {
        if let Ok(mut slot) = self.view.write() {
            if let Some(view) = next(slot.as_ref()) {
                *slot = Some(view);
            }
        }
    }

    fn is_fresh(&self, view: &View) -> bool {
        is_fresh(view.validated_at.map(|t| t.elapsed()), self.ttl)
    }

    /// Loads the last upstream root from disk, so the proxy can serve after a restart even if
    /// upstream is down. A missing or unusable copy just means starting cold.
    pub async fn restore(self: &Arc<Self>) {
        let path = self.disk.state_path(self.namespace(), "root.json");
        let Ok(text) = tokio::fs::read(&path).await else {
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
            let view = self.refresh_after_rejection().await?;
            return Ok((view, CacheStatus::Revalidated));
        }
        match self.current() {
            Some(view) if self.is_fresh(&view) => Ok((view, CacheStatus::Hit)),
            Some(view) => {
                self.clone().spawn_refresh();
                Ok((view, CacheStatus::Stale))
            }
            None => {
                let view = self.refresh().await?;
                Ok((view, CacheStatus::Miss))
            }
        }
    }

    fn spawn_refresh(self: Arc<Self>) {
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
    async fn refresh(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::WhenStale).await
    }

    /// Asks upstream again after it rejected the keys, even if the cached view is fresh.
    async fn refresh_after_rejection(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::AfterRejection).await
    }

    /// Asks upstream now, whatever the TTL and back-off say (after new keys were loaded).
    pub async fn revalidate_now(self: &Arc<Self>) -> Result<Arc<View>, ProxyError> {
        self.refresh_inner(Refresh::Now).await
    }

    pub fn stale_on_key_rejection(&self) -> bool {
        self.stale_on_key_rejection
    }

    async fn refresh_inner(self: &Arc<Self>, mode: Refresh) -> Result<Arc<View>, ProxyError> {
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
                let e = Arc::new(e);
                *last_failure = Some((Instant::now(), e.clone()));
                Err(ProxyError::Shared(e))
            }
        }
    }

    async fn fetch_root(&self, current: Option<&View>) -> Result<View, ProxyError> {
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
                        return Ok(view.with_validation(validators));
                    }
                }
                let view = self
                    .build_view(body.clone(), validators.clone(), current, true)
                    .await?;
                let saved = PersistedRoot {
                    body: String::from_utf8_lossy(&body).into_owned(),
                    last_modified: validators.last_modified,
                    etag: validators.etag,
                };
                let bytes = serde_json::to_vec(&saved).unwrap_or_default();
                self.disk
                    .save_metadata(
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
    async fn build_view(
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
            root: Document::new(Bytes::new(), now),
        };
        view.root = self.root_document(&view, now);
        Ok(view)
    }

    fn root_document(&self, view: &View, now: SystemTime) -> Document {
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
            },
            now,
        )
    }

    /// Where an archive the proxy advertised really lives.
    pub async fn dist_source(
        self: &Arc<Self>,
        package: &str,
        key: &str,
    ) -> Result<composer::DistSource, ProxyError> {
        let (view, _) = self.view().await?;
        let unknown =
            || ProxyError::NotFound(format!("archive {key} of {package} is not in the metadata"));
        if view.knows(package) == Some(false) {
            return Err(unknown());
        }
        let id = (package.to_string(), key.to_string());
        let found = match &view.upstream {
            UpstreamRoot::V1 { .. } => self
                .v1_package(&view, package)
                .await?
                .dists
                .get(&id)
                .cloned(),
            UpstreamRoot::P2 { metadata_url, .. } => {
                let mut found = None;
                for file in [package.to_string(), format!("{package}~dev")] {
                    if let Ok((entry, _)) = self.p2_native(metadata_url.as_str(), &file).await {
                        if let Some(d) = entry.dists.get(&id) {
                            found = Some(d.clone());
                            break;
                        }
                    }
                }
                found
            }
        };
        found.ok_or_else(unknown)
    }

    /// Package names matching any of the whitespace-separated terms, as Composer's own
    /// name search does.
    pub async fn search(self: &Arc<Self>, query: &str) -> Result<Vec<String>, ProxyError> {
        let (view, _) = self.view().await?;
        let terms: Vec<String> = query
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        Ok(view
            .names()
            .iter()
            .filter(|n| terms.is_empty() || terms.iter().any(|t| n.contains(t.as_str())))
            .take(1000)
            .cloned()
            .collect())
    }

    /// Where the upstream wants install notifications.
    pub async fn notify_url(self: &Arc<Self>) -> Option<String> {
        let (view, _) = self.view().await.ok()?;
        view.upstream.notify_batch().map(|u| u.to_string())
    }
}
