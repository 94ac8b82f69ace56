//! composer-proxy: a caching, authenticating reverse proxy for Composer repositories such as
//! repo.magento.com. See ARCHITECTURE.md for where each concern lives.

pub mod access;
pub mod cache;
pub mod commands;
pub mod composer;
pub mod config;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::access::Access;
use crate::cache::archives::ArchiveStore;
use crate::cache::metadata::{MetadataCache, MetadataSettings};
use crate::cache::CacheDir;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// Everything a request needs, shared by all connections.
pub struct AppState {
    pub upstream: Arc<UpstreamClient>,
    pub metadata: Arc<MetadataCache>,
    pub archives: ArchiveStore,
    pub access: Access,
    pub metrics: Metrics,
    /// Path of the public URL (e.g. `/magento`), accepted in front of every route.
    pub path_prefix: String,
    pub public_url: String,
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
        let upstream = Arc::new(UpstreamClient::new(&config.upstream)?);
        let metadata = MetadataCache::new(
            upstream.clone(),
            disk.clone(),
            public_url.clone(),
            &MetadataSettings {
                ttl: config.metadata_ttl,
                max_bytes: config.metadata_cache_max_bytes,
                prefetch_concurrency: config.v1_prefetch_concurrency,
                negative_ttl: config.negative_ttl,
                stale_on_key_rejection: config.stale_on_key_rejection,
            },
        );
        metadata.restore().await;
        let archives = ArchiveStore::open(
            disk,
            upstream.clone(),
            config.archive_cache_max_bytes,
            config.archive_memory_cache_max_bytes,
        )
        .await
        .context("cannot read the archive store in `cache_dir`")?;
        let state = Arc::new(AppState {
            archives,
            upstream,
            metadata,
            access: Access::new(config.allow.clone()),
            metrics: Metrics::default(),
            path_prefix,
            public_url,
        });
        Ok(Proxy {
            server: server::Server::new(listener, state.clone(), tls, config.shutdown_grace),
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

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.server.run(shutdown).await;
    }
}

/// Binds and serves with the given configuration until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let proxy = Proxy::bind(&config).await?;
    log_start(&config, &proxy);
    proxy.run(shutdown).await;
    Ok(())
}

fn log_start(config: &Config, proxy: &Proxy) {
    match &config.upstream.credentials {
        Some(c) => tracing::info!(source = c.source.as_str(), "upstream key pair configured"),
        None => tracing::warn!(
            "no upstream key pair configured: requests go upstream without credentials, and \
             clients are told so if it refuses them (set COMPOSER_PROXY_PUBLIC_KEY and \
             COMPOSER_PROXY_PRIVATE_KEY)"
        ),
    }
    if config.upstream.url.scheme() == "http" {
        tracing::warn!(upstream = %config.upstream.url, "upstream uses plain http: the key pair travels unencrypted");
    }
    if config.public_url.is_none() && config.listen.ip().is_unspecified() {
        tracing::warn!("public_url is derived from an unspecified listen address; set public_url to the URL clients use");
    }
    tracing::info!(
        listen = %proxy.local_addr(),
        public_url = proxy.public_url(),
        upstream = %config.upstream.url,
        tls = config.tls.is_some(),
        cache_dir = %config.cache_dir.display(),
        "composer-proxy listening"
    );
}
