//! composer-proxy: a caching, authenticating reverse proxy for Composer repositories such as
//! repo.magento.com. See ARCHITECTURE.md for where each concern lives.

pub mod access;
pub mod bucket;
pub mod cache;
pub mod commands;
pub mod composer;
pub mod config;
pub mod error;
pub mod metrics;
pub mod releases;
pub mod routes;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod upstreams;
pub mod usage;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::{ArcSwap, Guard};
use tokio::net::TcpListener;

use crate::access::Access;
use crate::cache::archives::{ArchiveStore, ScrubSettings, StoreSettings};
use crate::cache::CacheDir;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::releases::Releases;
use crate::tokens::Tokens;
use crate::upstreams::Upstreams;
use crate::views::Views;

/// Everything a request needs, shared by all connections.
pub struct AppState {
    /// The upstream repositories in priority order.
    pub upstreams: Upstreams,
    pub archives: ArchiveStore,
    /// The shared bucket (`object_store_url`), when one is configured.
    pub bucket: Option<Arc<bucket::Bucket>>,
    /// Legacy release downloads, when `[downloads]` is configured.
    pub releases: Option<Arc<Releases>>,
    access: ArcSwap<Access>,
    /// The `[[view]]`s; replaced whole on a reload.
    views: ArcSwap<Views>,
    pub tokens: Arc<Tokens>,
    /// `None` without TLS; replaced when certificates are reloaded.
    tls: Option<RwLock<tokio_rustls::TlsAcceptor>>,
    /// The last cache-directory probe, reused for a few seconds by `/readyz` and `/metrics`.
    pub disk_probe: tokio::sync::Mutex<Option<(std::time::Instant, cache::CacheProbe)>>,
    pub metrics: Arc<Metrics>,
    /// Maintenance of the archive store: sweeping and scrubbing.
    maintenance: (std::time::Duration, Option<ScrubSettings>),
    /// Path of the public URL (e.g. `/magento`), accepted in front of every route.
    pub path_prefix: String,
    pub public_url: String,
    pub client_limits: server::ClientLimits,
    /// Install notifications waiting to be forwarded, and those being sent.
    pub notifications: routes::Notifications,
    /// Who took which archive (`composer-proxy usage`).
    pub usage: usage::UsageRecord,
    /// The status page's costly facts, reused: the usage record condensed, and the last look
    /// for advisories covering served versions (also behind a metric).
    pub status: status::Cache,
    /// This process's name among replicas (the usage record's and the bucket's).
    pub replica: String,
}

impl AppState {
    /// The allowlist and token rules as of now; a reload replaces them for later requests.
    /// Hold it only briefly: a guard is not a reference count (that is what makes it cheap).
    pub fn access(&self) -> Guard<Arc<Access>> {
        self.access.load()
    }

    /// Time between scrub passes; `None` when the scrub is off.
    pub fn scrub_interval(&self) -> Option<std::time::Duration> {
        self.maintenance.1.map(|scrub| scrub.interval)
    }

    /// The views as of now; held as briefly as [`AppState::access`].
    pub fn views(&self) -> Guard<Arc<Views>> {
        self.views.load()
    }

    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls
            .as_ref()
            .map(|slot| slot.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Applies a reloaded configuration: key pairs, the allowlist and TLS certificates change
    /// in place; requests in flight keep what they started with. Settings that need a restart
    /// are named in the log.
    pub fn apply(self: &Arc<Self>, config: &Config) {
        self.upstreams.set_key_pairs(config);
        match (&self.releases, &config.downloads) {
            (Some(releases), Some(downloads)) => releases.set_credentials(downloads),
            (None, None) => {}
            _ => {
                tracing::warn!("turning release downloads ([downloads]) on or off needs a restart")
            }
        }
        let key_pairs: usize = config.upstreams.iter().map(|u| u.key_pairs().len()).sum();
        self.access.store(Arc::new(Access::from_config(config)));
        let current: Vec<_> = self.views().iter().map(|v| v.config.clone()).collect();
        if current != config.views {
            match Views::new(&config.views, &self.upstreams, &self.public_url) {
                Ok(views) => {
                    tracing::info!(
                        event = "views_changed",
                        views = config.views.len(),
                        "views reloaded"
                    );
                    self.views.store(Arc::new(views));
                }
                Err(e) => {
                    tracing::error!(error = %e, "views not reloaded; the running ones stay in effect")
                }
            }
        }
        if self.tokens.path().is_some_and(|p| p != config.tokens_file) {
            tracing::warn!("a new tokens_file needs a restart");
        }
        let bucket = config.object_store.as_ref().map(ToString::to_string);
        if bucket.as_deref() != self.bucket.as_ref().map(|b| b.describe()) {
            tracing::warn!("a new object_store_url needs a restart");
        }
        warn_if_no_tokens(config, &self.tokens);
        match (&self.tls, &config.tls) {
            (Some(slot), Some(files)) => match tls::acceptor(files) {
                Ok(acceptor) => *slot.write().unwrap_or_else(|p| p.into_inner()) = acceptor,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "TLS certificate reload failed; keeping the current one")
                }
            },
            (None, None) => {}
            _ => tracing::warn!("turning TLS on or off needs a restart"),
        }
        if server::ClientLimits::from(config) != self.client_limits {
            tracing::warn!("max_connections and the client timeouts change only on a restart");
        }
        tracing::info!(
            event = "config_reloaded",
            upstreams = config.upstreams.len(),
            key_pairs,
            "configuration reloaded"
        );
        // Learn at once whether the upstreams accept the new keys.
        for upstream in self.upstreams.iter() {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Err(e) = upstream.metadata.revalidate_now().await {
                    tracing::warn!(upstream = %upstream.name, error = %e, "upstream check after reload failed");
                }
            });
        }
    }
}

/// A bound, ready proxy; tests bind `127.0.0.1:0` and read the address before running it.
pub struct Proxy {
    server: server::Server,
    pub state: Arc<AppState>,
}

impl Proxy {
    /// Binds the listener and opens the caches. Fails on anything that would make serving
    /// impossible (address in use, unreadable TLS files, unusable cache directory).
    pub async fn bind(config: &Config) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (setting `listen`)", config.listen))?;
        let bound = listener.local_addr()?;
        let public_url = config.public_url_for(bound);
        let path_prefix = url::Url::parse(&public_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let disk = Arc::new(CacheDir::open(&config.cache_dir).await.with_context(|| {
            format!(
                "invalid setting `cache_dir`: cannot use {}",
                config.cache_dir.display()
            )
        })?);
        let metrics = Arc::new(Metrics::default());
        let bucket = config
            .object_store
            .as_ref()
            .map(|url| bucket::Bucket::open(url, metrics.clone()))
            .transpose()?;
        if let Some(bucket) = &bucket {
            disk.share_metadata(bucket.clone());
        }
        let upstreams = Upstreams::new(config, &public_url, &disk, &metrics)?;
        for upstream in upstreams.iter() {
            upstream.metadata.restore().await;
        }
        let views =
            Views::new(&config.views, &upstreams, &public_url).map_err(anyhow::Error::msg)?;
        let releases = match &config.downloads {
            Some(downloads) => Some(Arc::new(
                Releases::open(
                    downloads,
                    &config.github,
                    disk.clone(),
                    &metrics,
                    config.stale_on_key_rejection,
                )
                .await?,
            )),
            None => None,
        };
        let archives = ArchiveStore::open(disk, StoreSettings::from(config), bucket.clone())
            .await
            .context("cannot read the archive store in `cache_dir`")?;
        // With a bucket, the token file is the bucket's, shared by every replica.
        let tokens = Arc::new(match &bucket {
            Some(bucket) => Tokens::open_in_bucket(bucket.clone()).await,
            None => Tokens::open(config.tokens_file.clone()),
        });
        let usage = usage::UsageRecord::new(
            usage::UsageSettings::from_config(config),
            bucket.clone(),
            metrics.clone(),
        );
        let state = Arc::new(AppState {
            usage,
            archives,
            bucket,
            upstreams,
            releases,
            access: ArcSwap::from_pointee(Access::from_config(config)),
            views: ArcSwap::from_pointee(views),
            tokens,
            tls: tls.map(RwLock::new),
            disk_probe: tokio::sync::Mutex::new(None),
            metrics,
            maintenance: (
                config.cache_sweep_interval,
                config.scrub_interval.map(|interval| ScrubSettings {
                    interval,
                    max_bytes_per_sec: config.scrub_max_bytes_per_sec,
                }),
            ),
            path_prefix,
            public_url,
            client_limits: server::ClientLimits::from(config),
            notifications: routes::Notifications::default(),
            status: status::Cache::default(),
            replica: usage::replica_name(config),
        });
        Ok(Proxy {
            server: server::Server::new(listener, state.clone(), config.shutdown_grace),
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // The listener is bound; its address cannot be unavailable.
        self.server
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn public_url(&self) -> &str {
        &self.state.public_url
    }

    /// Serves until `shutdown` resolves, then drains and removes unfinished downloads.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // The token file is looked at off the request path, in a blocking task: requests only
        // read the snapshot, so a slow disk never holds them up.
        let tokens = self.state.tokens.clone();
        let recorder = tokio::spawn(async move {
            if tokens.in_bucket() {
                return tokens.follow_bucket().await;
            }
            let mut ticker = tokio::time::interval(tokens::REFRESH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_flush = std::time::Instant::now();
            loop {
                ticker.tick().await;
                let tokens = tokens.clone();
                let flush = last_flush.elapsed() >= LAST_USE_FLUSH;
                if flush {
                    last_flush = std::time::Instant::now();
                }
                let _ = tokio::task::spawn_blocking(move || {
                    tokens.refresh();
                    if flush {
                        tokens.flush_last_use();
                    }
                })
                .await;
            }
        });
        let usage = self.state.usage.start();
        let state = self.state.clone();
        let maintenance = tokio::spawn(async move {
            let (sweep_every, scrub) = state.maintenance;
            state.archives.maintain(sweep_every, scrub).await;
        });
        // Upstreams whose root offers a changes feed keep their p2 files fresh by it.
        let followers: Vec<_> = self
            .state
            .upstreams
            .iter()
            .map(|u| {
                let metrics = self.state.metrics.clone();
                tokio::spawn(u.metadata.clone().follow_changes(metrics))
            })
            .collect();
        // Replicas sharing a bucket show each other on the status page.
        let heartbeat =
            self.state.bucket.clone().map(|bucket| {
                tokio::spawn(status::replicas::beat(bucket, self.state.replica.clone()))
            });
        // Served versions are looked up in the advisories now and then, for the metric.
        let state = self.state.clone();
        let advisories = tokio::spawn(async move {
            // Not at start: a restart must not ask every upstream's advisories at once.
            let every = status::advisories::SCAN_INTERVAL;
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                status::scan_served(&state).await;
            }
        });
        self.server.run(shutdown).await;
        advisories.abort();
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
            if let Some(bucket) = &self.state.bucket {
                status::replicas::leave(bucket, &self.state.replica).await;
            }
        }
        recorder.abort();
        maintenance.abort();
        for follower in followers {
            follower.abort();
        }
        // After the drain: the downloads of the last responses are recorded too.
        self.state.usage.finish(usage).await;
        let tokens = self.state.tokens.clone();
        if tokens.in_bucket() {
            tokens.flush_last_use_to_bucket().await;
        } else {
            let _ = tokio::task::spawn_blocking(move || tokens.flush_last_use()).await;
        }
        let removed = self.state.archives.remove_own_temp().await;
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed temporary files of downloads that did not finish"
            );
        }
    }
}

/// How often the last use of client tokens is written out (only when a token was used in a
/// minute not yet recorded).
const LAST_USE_FLUSH: Duration = Duration::from_secs(1);

/// How often watched files (keys, auth.json, certificates) are checked for changes. Polling
/// also sees Kubernetes' symlink swaps of mounted secrets, which file events often miss.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Binds and serves with the given configuration until `shutdown` resolves. `reload` reads the
/// configuration again; it runs on SIGHUP and when a watched file changes.
pub async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, config::ConfigError> + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Taken before anything is served, not when the watcher task first runs: a file replaced
    // between start and that first poll would otherwise look unchanged and never be applied.
    let seen = fingerprint(&config.watched_files);
    let proxy = Proxy::bind(&config).await?;
    log_start(&config, &proxy);
    let reloader = tokio::spawn(reload_on_change(
        proxy.state.clone(),
        config.watched_files.clone(),
        seen,
        reload,
    ));
    proxy.run(shutdown).await;
    reloader.abort();
    Ok(())
}

/// (modified time, length) of each watched file: a change in either means a new secret.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

async fn reload_on_change(
    state: Arc<AppState>,
    mut watched: Vec<PathBuf>,
    mut seen: Vec<Option<(SystemTime, u64)>>,
    reload: impl Fn() -> Result<Config, config::ConfigError>,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let why = tokio::select! {
            () = signalled => "SIGHUP",
            _ = ticker.tick() => {
                let now = fingerprint(&watched);
                if now == seen {
                    continue;
                }
                seen = now;
                "a watched file changed"
            }
        };
        tracing::info!(reason = why, "reloading the configuration");
        match reload() {
            Ok(config) => {
                state.apply(&config);
                watched = config.watched_files.clone();
                seen = fingerprint(&watched);
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the running configuration stays in effect")
            }
        }
    }
}

fn log_start(config: &Config, proxy: &Proxy) {
    for upstream in &config.upstreams {
        match &upstream.credentials {
            Some(c) => {
                tracing::info!(upstream = %upstream.name, url = %upstream.url, source = c.source.as_str(), "upstream key pair configured")
            }
            None if upstream.named => {
                tracing::info!(upstream = %upstream.name, url = %upstream.url, "upstream without credentials")
            }
            None => tracing::warn!(
                "no upstream key pair configured: requests go upstream without credentials, and \
                 clients are told so if it refuses them (set COMPOSER_PROXY_PUBLIC_KEY and \
                 COMPOSER_PROXY_PRIVATE_KEY)"
            ),
        }
        if upstream.url.scheme() == "http" && upstream.credentials.is_some() {
            tracing::warn!(upstream = %upstream.name, url = %upstream.url, "upstream uses plain http: its key pair travels unencrypted");
        } else if upstream.url.scheme() == "http" {
            tracing::warn!(upstream = %upstream.name, url = %upstream.url, "upstream uses plain http");
        }
    }
    if config.public_url.is_none() && config.listen.ip().is_unspecified() {
        tracing::warn!("public_url is derived from an unspecified listen address; set public_url to the URL clients use");
    }
    warn_if_no_tokens(config, &proxy.state.tokens);
    if let Some(downloads) = &config.downloads {
        let from_files = downloads
            .credentials
            .as_ref()
            .is_some_and(|c| c.source == config::KeySource::KeyFiles);
        tracing::info!(url = %downloads.url, from_files, "release downloads configured: served under <public_url>/releases/");
    }
    match config.github.token_source {
        Some(source) => {
            tracing::info!(source, api = %config.github.api, "GitHub token configured: zipballs come through the API")
        }
        None => tracing::info!(
            codeload = %config.github.codeload,
            "no GitHub token: zipballs come straight from codeload (set github_token for private repositories)"
        ),
    }
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    tracing::info!(
        listen = %proxy.local_addr(),
        public_url = proxy.public_url(),
        upstream = %config.upstreams[0].url,
        upstreams = %names.join(","),
        tls = config.tls.is_some(),
        require_tokens = config.require_tokens,
        trusted_proxies = config.trusted_proxies.len(),
        cache_dir = %config.cache_dir.display(),
        object_store = %config.object_store.as_ref().map(ToString::to_string).unwrap_or_default(),
        "composer-proxy listening"
    );
}

/// Requiring tokens with none issued refuses every client: almost certainly a step forgotten.
/// A token file that cannot be used is said apart, since clients are then told 503, not 401.
fn warn_if_no_tokens(config: &Config, tokens: &Tokens) {
    if !config.require_tokens {
        return;
    }
    if !tokens.usable() {
        tracing::warn!(
            tokens_file = %tokens.location(),
            "require_tokens is on but the token file cannot be used: every request with a token \
             is answered 503 (and one without a token 401) until the file is fixed"
        );
    } else if tokens.active() == 0 {
        tracing::warn!(
            tokens_file = %tokens.location(),
            "require_tokens is on but no active token exists: every Composer request is refused \
             with 401 until one is created with `composer-proxy tokens create --name NAME`"
        );
    }
}
