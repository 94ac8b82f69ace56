//! Package metadata: the upstream root, v1 listings and per-package files, fetched once,
//! verified against the upstream's sha256 chain, rewritten for the proxy and kept.
//!
//! The upstream root is the only thing that needs revalidating (once per TTL, with a
//! conditional request, in the background while the previous copy is served), besides the p2
//! files of p2-native upstreams (per TTL, or as their changes feed announces). v1 listings and
//! per-package files are content-addressed: a hash names exactly one document, so once fetched
//! and verified they are kept on disk for good and reprocessed from there after a restart.
//! The rewritten Composer 1 chain (listings naming the rewritten per-package hashes) needs every
//! package's rewritten hash, so it is built in the background after each new listing; until it
//! is complete `packages.json` offers only the Composer 2 protocol.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use crate::cache::CacheDir;
use crate::composer::{self, ProcessedPackage, Rewriter, UpstreamRoot};
use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::upstream::UpstreamClient;
use crate::upstreams::Listed;

mod changes;
mod freshness;
mod p2;
mod root;
mod v1;

pub use changes::FeedStatus;
use freshness::is_fresh;
pub use p2::P2Entry;
pub use root::View;

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
    /// How often the upstream's changes feed is polled, if at all.
    pub changes_poll: Option<Duration>,
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
            // One bound for all: each upstream's cache gets its share.
            max_bytes: config.metadata_cache_max_bytes / config.upstreams.len().max(1) as u64,
            prefetch_concurrency: config.v1_prefetch_concurrency,
            negative_ttl: upstream.negative_ttl,
            stale_on_key_rejection: config.stale_on_key_rejection,
            retry_after_failure: config.upstream_retry,
            changes_poll: upstream.metadata_changes_poll,
        }
    }
}

/// How the upstream root's refreshes went in this process.
#[derive(Clone, Debug, Default)]
pub struct Refreshes {
    /// The last refresh upstream answered (changed or not).
    pub succeeded: Option<SystemTime>,
    /// The last refresh that failed, and why.
    pub failed: Option<(SystemTime, String)>,
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
    /// Read on every request without a lock: see [`MetadataCache::update`] for writers.
    view: ArcSwapOption<View>,
    /// Taken by writers of `view`, so one derives its view from the last one written.
    updating: Mutex<()>,
    /// Serializes root refreshes (concurrent misses make one upstream request) and remembers
    /// the last failure, so requests queued behind a failing refresh get its answer at once.
    refresh_lock: tokio::sync::Mutex<Option<(Instant, Arc<ProxyError>)>>,
    refreshing: AtomicBool,
    /// When the root was last had from upstream, and the last refresh that failed, in words:
    /// for the status page.
    refreshes: std::sync::Mutex<Refreshes>,
    building_chain: tokio::sync::Mutex<()>,
    /// v1 per-package files by upstream sha256 (content-addressed, so never stale).
    packages: moka::future::Cache<String, Arc<ProcessedPackage>>,
    /// p2 files of p2-native upstreams by file name (`vendor/name` or `vendor/name~dev`).
    p2_files: moka::future::Cache<String, Arc<P2Entry>>,
    /// p2 files being revalidated in the background, so each is asked for once at a time.
    p2_revalidating: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The upstream's changes feed, when its root offers one.
    feed: changes::Feed,
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
            changes_poll,
        } = *settings;
        let weigh = |_: &String, p: &Arc<ProcessedPackage>| p.weight();
        let rewriter = Rewriter {
            public_url,
            upstream: upstream.base().clone(),
            allowed_hosts: upstream.allowed_hosts().to_vec(),
            github_api: Some(upstream.github().api().clone()),
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
            view: ArcSwapOption::empty(),
            updating: Mutex::new(()),
            refresh_lock: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
            refreshes: std::sync::Mutex::default(),
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
            feed: changes::Feed::new(changes_poll),
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

    /// The last view installed, whatever has happened since: after the key pair was rejected,
    /// what the account listed before (restored from disk at start).
    pub fn last_view(&self) -> Option<Arc<View>> {
        self.current()
    }

    /// Whether the last listing seen has `name`: `None` when no listing was seen, or the
    /// upstream does not list its names.
    pub fn last_listed(&self, name: &str) -> Option<bool> {
        self.current().and_then(|view| view.knows(name))
    }

    /// Whether the last listing seen has any name under `vendor` (`vendor/`).
    pub fn lists_vendor(&self, vendor: &str) -> bool {
        self.current().is_some_and(|view| view.lists_vendor(vendor))
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn feed_status(&self) -> Option<FeedStatus> {
        self.feed.status()
    }

    pub fn refreshes(&self) -> Refreshes {
        self.refreshes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note_refresh(&self, outcome: Result<(), String>) {
        let mut refreshes = self.refreshes.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => refreshes.succeeded = Some(SystemTime::now()),
            Err(why) => refreshes.failed = Some((SystemTime::now(), why)),
        }
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
        self.view.load_full()
    }

    fn install(&self, view: Arc<View>) {
        self.update(|_| Some(view));
    }

    /// Replaces the view with what `next` derives from the latest one, atomically, so a
    /// refresh and a background chain build cannot overwrite each other's result.
    fn update(&self, next: impl FnOnce(Option<&Arc<View>>) -> Option<Arc<View>>) {
        let _writing = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(view) = next(self.view.load().as_ref()) {
            self.view.store(Some(view));
        }
    }

    fn is_fresh(&self, view: &View) -> bool {
        is_fresh(view.validated_at.map(|t| t.elapsed()), self.ttl)
    }

    /// Where an archive the proxy advertised really lives.
    pub async fn dist_source(
        self: &Arc<Self>,
        package: &str,
        key: &str,
    ) -> Result<Arc<composer::DistSource>, ProxyError> {
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
