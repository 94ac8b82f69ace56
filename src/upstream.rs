//! The one pooled HTTP client that talks to the upstream repository.
//!
//! It adds the key pair to requests for the upstream's own origin and to nothing else, follows
//! redirects itself (so it can drop the key pair when a redirect leaves that origin), enforces
//! connect, read and total timeouts, and decodes gzip metadata. Callers only ever pass URLs the
//! proxy built from upstream metadata, never one a client supplied.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::composer;
use crate::config::{AnswerLimits, Credentials, UpstreamConfig};
use crate::error::ProxyError;
use crate::metrics::{Metrics, UpstreamOutcome};

mod body;
mod exchange;
mod github;
mod health;
mod keys;

pub use exchange::{
    note_exchange, Answer, Exchanges, KeyVerdict, MetadataResponse, RequestKind, StreamingResponse,
    UpstreamError, UpstreamNote, Validators, EXCHANGE,
};
pub use github::GitHub;
use health::Health;
use keys::{KeyRing, MARKETPLACE_ADVICE};

pub struct UpstreamClient {
    /// The configured name: log fields and metric labels.
    name: Arc<str>,
    /// Origins other than `base` that this upstream's documents point to.
    allowed_hosts: Vec<Url>,
    /// `KeyVerdict` as a number, updated by every answer from the upstream origin.
    key_verdict: AtomicU8,
    /// When the verdict last changed (first set, rejected, accepted again).
    key_verdict_since: Mutex<Option<SystemTime>>,
    keys: RwLock<Arc<KeyRing>>,
    metrics: Arc<Metrics>,
    /// GitHub, where dists of packagist-style upstreams live; shared by all upstreams.
    github: Arc<GitHub>,
    health: Health,
    /// What ops should check when the credentials are rejected, for the log.
    rejection_advice: &'static str,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Url,
    user_agent: HeaderValue,
    max_redirects: u8,
    limits: AnswerLimits,
    pub read_timeout: Duration,
    pub metadata_timeout: Duration,
    pub archive_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(
        cfg: &UpstreamConfig,
        github: Arc<GitHub>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| {
                anyhow::anyhow!(
                    "invalid setting `upstream_ca_file`: cannot read {}: {e}",
                    path.display()
                )
            })? {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!(
                        "invalid setting `upstream_ca_file`: bad PEM in {}: {e}",
                        path.display()
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("invalid setting `upstream_ca_file`: {e}"))?;
                added += 1;
            }
            if added == 0 {
                anyhow::bail!(
                    "invalid setting `upstream_ca_file`: no certificate in {}",
                    path.display()
                );
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .build(https);

        Ok(Self {
            name: Arc::from(cfg.name.as_str()),
            allowed_hosts: cfg.allowed_hosts.clone(),
            key_verdict: AtomicU8::new(KeyVerdict::Unknown as u8),
            keys: RwLock::new(Arc::new(KeyRing::new(&cfg.key_pairs()))),
            metrics,
            github,
            health: Health::default(),
            key_verdict_since: Mutex::new(None),
            rejection_advice: MARKETPLACE_ADVICE,
            client,
            base: cfg.url.clone(),
            user_agent: HeaderValue::from_static(concat!(
                "Composer/2 (composer-proxy/",
                env!("CARGO_PKG_VERSION"),
                ")"
            )),
            max_redirects: cfg.max_redirects,
            limits: cfg.limits,
            read_timeout: cfg.read_timeout,
            metadata_timeout: cfg.metadata_timeout,
            archive_timeout: cfg.archive_timeout,
        })
    }

    /// The same client whose rejected credentials the log explains with `advice` (what to
    /// check, and where) instead of the Marketplace's access keys.
    pub fn with_rejection_advice(mut self, advice: &'static str) -> Self {
        self.rejection_advice = advice;
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn github(&self) -> &GitHub {
        &self.github
    }

    pub fn allowed_hosts(&self) -> &[Url] {
        &self.allowed_hosts
    }

    pub fn has_credentials(&self) -> bool {
        !self.ring().headers.is_empty()
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the key pairs (a reload); the first one is used from the next request on, and
    /// upstream's verdict on the old keys no longer counts.
    pub fn set_key_pairs(&self, credentials: &[Credentials]) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeyRing::new(credentials));
        self.key_verdict
            .store(KeyVerdict::Unknown as u8, Ordering::Release);
    }

    /// How long upstream has been failing, if it is.
    pub fn down_for(&self) -> Option<Duration> {
        self.health.down_for()
    }

    /// How long the metadata upstream sends has been unusable, if it is.
    pub fn misbehaving_for(&self) -> Option<Duration> {
        self.health.misbehaving_for()
    }

    fn note_health(&self, up: bool, detail: &str) {
        self.health
            .note_reachable(&self.name, &self.base, up, detail);
    }

    /// Records what came of parsing a metadata body upstream sent. Only a bad answer (not
    /// JSON, wrong shape, wrong hash) counts against it; other failures on the way (a second
    /// fetch, the disk) say nothing about the body.
    pub fn note_body<T>(&self, parsed: &Result<T, ProxyError>) {
        match parsed {
            Ok(_) => self.health.note_answer(&self.name, &self.base, Ok(())),
            Err(e) if e.is_bad_answer() => {
                self.health
                    .note_answer(&self.name, &self.base, Err(&e.to_string()))
            }
            Err(_) => {}
        }
    }

    /// When the current key verdict was first reached: `None` before any answer.
    pub fn key_verdict_since(&self) -> Option<SystemTime> {
        *self
            .key_verdict_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The last failure upstream caused, in words, and when: kept after it recovers.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.health.last_error()
    }

    pub fn key_verdict(&self) -> KeyVerdict {
        match self.key_verdict.load(Ordering::Acquire) {
            x if x == KeyVerdict::Accepted as u8 => KeyVerdict::Accepted,
            x if x == KeyVerdict::Rejected as u8 => KeyVerdict::Rejected,
            _ => KeyVerdict::Unknown,
        }
    }

    /// Records what upstream said about the keys; a change is an event ops want in the log.
    pub fn note_key_verdict(&self, verdict: KeyVerdict) {
        let previous = self.key_verdict.swap(verdict as u8, Ordering::AcqRel);
        if previous == verdict as u8 {
            return;
        }
        *self
            .key_verdict_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
        match verdict {
            KeyVerdict::Rejected => {
                self.health
                    .note_error(format!("rejected the key pair: {}", self.rejection_advice));
                tracing::error!(
                    event = "key_rejected",
                    upstream = %self.name,
                    "upstream rejected the key pair: {}",
                    self.rejection_advice
                )
            }
            KeyVerdict::Accepted if previous == KeyVerdict::Rejected as u8 => tracing::info!(
                event = "key_accepted",
                upstream = %self.name,
                "upstream accepts the key pair again"
            ),
            _ => {}
        }
    }

    fn note(&self, status: Option<u16>, took: Duration) -> UpstreamNote {
        UpstreamNote {
            upstream: self.name.clone(),
            status,
            took,
        }
    }

    /// Only the configured upstream's origin ever sees the key pair.
    fn is_upstream_origin(&self, url: &Url) -> bool {
        composer::same_origin(&self.base, url)
    }

    /// Sends one request and follows redirects; returns the final response's head and body.
    /// When upstream rejects the key pair in use and another is configured, the request is
    /// repeated with the next one, which stays in use from then on.
    pub async fn send(
        &self,
        kind: RequestKind,
        method: Method,
        url: &str,
        extra: HeaderMap,
        body: Bytes,
    ) -> Result<StreamingResponse, UpstreamError> {
        let mut url = self
            .github
            .route(Url::parse(url).map_err(|e| UpstreamError::Invalid(format!("bad URL: {e}")))?);
        let mut method = method;
        let mut body = body;
        let ring = self.ring();
        let mut key = ring.active.load(Ordering::Acquire);
        let mut redirects = 0;
        loop {
            let origin = self.is_upstream_origin(&url);
            let mut builder = Request::builder().method(method.clone()).uri(url.as_str());
            let headers = builder.headers_mut().ok_or_else(|| {
                UpstreamError::Invalid(format!("cannot build a request for {url}"))
            })?;
            headers.extend(extra.clone());
            headers.insert(header::USER_AGENT, self.user_agent.clone());
            if origin {
                if let Some(auth) = ring.headers.get(key) {
                    headers.insert(header::AUTHORIZATION, auth.clone());
                }
            } else if let Some(token) = self.github.authorization(&url) {
                headers.insert(header::AUTHORIZATION, token);
            }
            let request = builder
                .body(Full::new(body.clone()))
                .map_err(|e| UpstreamError::Invalid(format!("cannot build a request: {e}")))?;
            let started = Instant::now();
            let sent = tokio::time::timeout(self.read_timeout, self.client.request(request)).await;
            let took = started.elapsed();
            let response = match sent {
                Err(_) => {
                    self.metrics.record_upstream(
                        &self.name,
                        kind.as_str(),
                        UpstreamOutcome::Timeout,
                        took,
                    );
                    note_exchange(self.note(None, took));
                    self.note_health(false, "timed out");
                    return Err(UpstreamError::Timeout("waiting for response headers"));
                }
                Ok(Err(e)) => {
                    self.metrics.record_upstream(
                        &self.name,
                        kind.as_str(),
                        UpstreamOutcome::Unreachable,
                        took,
                    );
                    note_exchange(self.note(None, took));
                    let detail = describe_client_error(&e);
                    self.note_health(false, &detail);
                    return Err(client_error(&e, detail));
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            let outcome = if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                UpstreamOutcome::Ok
            } else {
                UpstreamOutcome::from_status(status.as_u16())
            };
            self.metrics
                .record_upstream(&self.name, kind.as_str(), outcome, took);
            note_exchange(self.note(Some(status.as_u16()), took));
            self.note_health(!status.is_server_error(), status.as_str());
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                if redirects == self.max_redirects {
                    return Err(UpstreamError::TooManyRedirects(self.max_redirects));
                }
                redirects += 1;
                let Some(location) = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                else {
                    return Err(UpstreamError::Invalid(format!(
                        "{status} without a Location header"
                    )));
                };
                let next = url.join(location).map_err(|e| {
                    UpstreamError::Invalid(format!("redirect to a bad URL {location:?}: {e}"))
                })?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(UpstreamError::Invalid(format!(
                        "redirect to a non-HTTP URL {}",
                        next.scheme()
                    )));
                }
                tracing::debug!(from = %url, to = %next, %status, "upstream redirect");
                if status == StatusCode::SEE_OTHER
                    || (method == Method::POST
                        && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
                {
                    method = Method::GET;
                    body = Bytes::new();
                }
                url = next;
                continue;
            }
            if let Some(limited) = self.github.rate_limited(&url, status, response.headers()) {
                let has_token = self.github.has_token();
                tracing::warn!(
                    event = "github_rate_limited",
                    upstream = %self.name,
                    retry_after_secs = limited.retry_after.as_secs(),
                    has_token,
                    "GitHub's rate limit is exhausted; {}",
                    if has_token {
                        "the github_token's hourly allowance is used up"
                    } else {
                        "set github_token (or github_token_file) so GitHub dists are fetched with a token"
                    }
                );
                return Err(UpstreamError::RateLimited {
                    retry_after: limited.retry_after,
                    has_token,
                });
            }
            if origin && status == StatusCode::UNAUTHORIZED && key < ring.headers.len() {
                self.metrics.record_key_rejection(&self.name, key);
                if key + 1 < ring.headers.len() {
                    tracing::warn!(
                        event = "key_rejected",
                        upstream = %self.name,
                        key,
                        next = key + 1,
                        "upstream rejected key pair {key}; switching to key pair {}",
                        key + 1
                    );
                    key += 1;
                    // Later requests start with the key that works; a reload returns to the first.
                    let _ = ring.active.fetch_max(key, Ordering::AcqRel);
                    continue;
                }
            }
            if origin {
                if status == StatusCode::UNAUTHORIZED {
                    self.note_key_verdict(KeyVerdict::Rejected);
                } else if status.is_success() || status == StatusCode::NOT_MODIFIED {
                    self.note_key_verdict(KeyVerdict::Accepted);
                }
            }
            let (parts, body) = response.into_parts();
            return Ok(StreamingResponse {
                status,
                version: parts.version,
                headers: parts.headers,
                body,
            });
        }
    }

    /// GETs a metadata document, conditionally when validators are given, and returns it
    /// decoded; the whole exchange is bounded by the metadata timeout.
    pub async fn get_metadata(
        &self,
        url: &str,
        validators: Option<&Validators>,
    ) -> Result<MetadataResponse, UpstreamError> {
        let started = Instant::now();
        let work = async {
            let mut extra = HeaderMap::new();
            extra.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            if let Some(v) = validators {
                if let Some(lm) = v
                    .last_modified
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    extra.insert(header::IF_MODIFIED_SINCE, lm);
                }
                if let Some(etag) = v
                    .etag
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    extra.insert(header::IF_NONE_MATCH, etag);
                }
            }
            let response = self
                .send(RequestKind::Metadata, Method::GET, url, extra, Bytes::new())
                .await?;
            if response.status == StatusCode::NOT_MODIFIED {
                return Ok(MetadataResponse::NotModified);
            }
            if !response.status.is_success() {
                return Ok(MetadataResponse::Status(response.status));
            }
            let validators = Validators::from_headers(&response.headers);
            let body = self
                .read_answer(Answer::Metadata, url, response)
                .await
                .inspect_err(|e| {
                    if matches!(
                        e,
                        UpstreamError::Invalid(_) | UpstreamError::TooLarge { .. }
                    ) {
                        self.health
                            .note_answer(&self.name, &self.base, Err(&e.to_string()));
                    }
                })?;
            Ok(MetadataResponse::Fresh { body, validators })
        };
        let result = tokio::time::timeout(self.metadata_timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout("fetching metadata"))?;
        tracing::debug!(
            url,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "upstream metadata"
        );
        result
    }
}

/// A failed exchange as [`UpstreamError::Tls`] when rustls is anywhere in its cause, else
/// [`UpstreamError::Unreachable`].
fn client_error(e: &hyper_util::client::legacy::Error, detail: String) -> UpstreamError {
    if is_tls_failure(e) {
        UpstreamError::Tls(detail)
    } else {
        UpstreamError::Unreachable(detail)
    }
}

fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    // hyper-rustls and tokio-rustls wrap the rustls error in `io::Error`s (twice, as of
    // hyper-rustls 0.27), and `io::Error::source` skips the error it wraps: look inside.
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref);
    if wrapped.is_some_and(|w| is_tls_failure(w)) {
        return true;
    }
    e.source().is_some_and(is_tls_failure)
}

/// hyper's client errors hide the interesting part (refused, DNS, TLS) in their sources.
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_inside_io_errors_are_tls_failures() {
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_tls_failure(&handshake));
        let rewrapped = std::io::Error::other(handshake);
        assert!(is_tls_failure(&rewrapped));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&refused));
    }
}
