//! Errors on the request path and the one place they become responses.
//!
//! Clients are Composer processes that hold no upstream credentials, so no upstream refusal
//! ever becomes a 401 (Composer would prompt for a password or fail with "You must be using
//! the interactive console"). The one 401 is the proxy's own: a missing or unknown client
//! token when tokens are required, which the client is expected to hold in auth.json. Bodies are `{"warning": "…"}` because Composer prints that field as
//! "Warning from <host>: …"; the detail goes to the log once, where the error is mapped.

use http::{header, HeaderValue, Response, StatusCode};

use crate::composer::ProtocolError;
use crate::upstream::UpstreamError;

/// What the upstream said no to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Metadata,
    Archive,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // Client problems.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// `allow` is what the `Allow` header lists: the methods the target does accept.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("client address {0} is not in the allowlist")]
    Forbidden(std::net::IpAddr),
    #[error("client address {0} may not read the status page")]
    StatusForbidden(std::net::IpAddr),
    #[error("a trusted proxy sent an unusable X-Forwarded-For")]
    BadForwardedFor,
    #[error("no client token")]
    TokenMissing,
    #[error("unknown client token")]
    TokenUnknown,
    #[error("client token {0:?} is disabled")]
    TokenDisabled(std::sync::Arc<str>),
    #[error("client token {0:?} was deleted")]
    TokenDeleted(std::sync::Arc<str>),
    /// A token bound to views, used outside them: its views' names, with their URLs where they
    /// still exist.
    #[error("client token {token:?} is bound to other views")]
    OutsideViews {
        token: std::sync::Arc<str>,
        views: Vec<(String, Option<String>)>,
    },
    #[error("the token file cannot be read")]
    TokenStoreUnavailable,
    #[error("request path longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request body declared or found larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body of a type other than JSON")]
    UnsupportedMediaType,
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),

    // Upstream problems.
    #[error("upstream rejected the key pair with HTTP {status}")]
    KeysRejected { status: u16, keys_configured: bool },
    /// The legacy release-download endpoint refused the MAGEID and download access token.
    #[error("the release-download endpoint rejected the download access token with HTTP {status}")]
    DownloadTokenRejected { status: u16 },
    #[error("upstream refused access to {what:?} with HTTP 403")]
    UpstreamForbidden { what: Resource },
    #[error("upstream has no {what:?} at {detail}")]
    UpstreamNotFound { what: Resource, detail: String },
    #[error("upstream answered HTTP {0}")]
    UpstreamStatus(u16),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream metadata is unusable: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("archive failed verification: {0}")]
    ArchiveMismatch(String),

    /// An upstream that might own a package name could not be asked, so whether a lower one
    /// may serve it is unknown.
    #[error("upstream {upstream:?} could not be asked: {source}")]
    OwnerUnknown {
        upstream: String,
        source: Box<ProxyError>,
    },

    /// The one account of a repository whose last listing has a package is refused (its key
    /// pair rejected): the package cannot be served, and no other repository may serve it.
    #[error("upstream account {upstream:?} alone lists the package and is refused: {source}")]
    AccountRejected {
        upstream: String,
        source: Box<ProxyError>,
    },

    /// What went wrong with one upstream of several, named (an account, a vendor repository).
    #[error("upstream {upstream:?}: {source}")]
    Via {
        upstream: String,
        source: Box<ProxyError>,
    },

    /// An upstream's answer to an API (security advisories, filter lists, names) was needed
    /// and it could not be asked, with no earlier answer to serve instead.
    #[error("upstream {upstream:?} could not be asked for {what}: {source}")]
    ApiUnavailable {
        upstream: String,
        what: &'static str,
        source: Box<ProxyError>,
    },

    /// One failure shared by every request that waited on the same single-flight fetch.
    #[error(transparent)]
    Shared(std::sync::Arc<ProxyError>),

    // Our own problems.
    #[error("cache error: {0}")]
    Cache(#[from] std::io::Error),
}

impl ProxyError {
    /// Maps an unexpected upstream status for a resource to the error clients understand.
    pub fn from_upstream_status(
        status: StatusCode,
        what: Resource,
        keys_configured: bool,
        detail: &str,
    ) -> Self {
        match status.as_u16() {
            401 => ProxyError::KeysRejected {
                status: 401,
                keys_configured,
            },
            403 => ProxyError::UpstreamForbidden { what },
            404 | 410 => ProxyError::UpstreamNotFound {
                what,
                detail: detail.to_string(),
            },
            other => ProxyError::UpstreamStatus(other),
        }
    }

    /// Upstream refused the key pair itself (not one package): what the stale policy is about.
    pub fn is_key_rejection(&self) -> bool {
        match self {
            ProxyError::KeysRejected { .. } | ProxyError::DownloadTokenRejected { .. } => true,
            ProxyError::UpstreamForbidden {
                what: Resource::Metadata,
            } => true,
            ProxyError::Shared(inner) => inner.is_key_rejection(),
            ProxyError::Via { source, .. } => source.is_key_rejection(),
            _ => false,
        }
    }

    /// What one account of a repository may be refused while another is not: its key pair
    /// (401, or 403 for metadata) or a missing entitlement (403 or 404 for an archive).
    pub fn is_account_refusal(&self) -> bool {
        match self {
            ProxyError::KeysRejected { .. }
            | ProxyError::UpstreamForbidden { .. }
            | ProxyError::UpstreamNotFound { .. } => true,
            ProxyError::Shared(inner) => inner.is_account_refusal(),
            ProxyError::Via { source, .. } => source.is_account_refusal(),
            _ => false,
        }
    }

    /// Upstream answered, with a body that cannot be used: it is up, but misbehaving.
    pub fn is_bad_answer(&self) -> bool {
        match self {
            ProxyError::Protocol(_)
            | ProxyError::Upstream(UpstreamError::Invalid(_) | UpstreamError::TooLarge { .. }) => {
                true
            }
            ProxyError::Shared(inner) => inner.is_bad_answer(),
            ProxyError::Via { source, .. } => source.is_bad_answer(),
            _ => false,
        }
    }

    /// Upstream said the thing does not exist (so the answer may be remembered briefly).
    pub fn is_not_found(&self) -> bool {
        match self {
            ProxyError::UpstreamNotFound { .. } => true,
            ProxyError::Shared(inner) => inner.is_not_found(),
            ProxyError::Via { source, .. } => source.is_not_found(),
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_warning().0
    }

    /// Status and client-facing message. Exhaustive on purpose: a new variant must decide here
    /// what Composer is told.
    fn status_and_warning(&self) -> (StatusCode, String) {
        match self {
            ProxyError::Shared(inner) => inner.status_and_warning(),
            ProxyError::Via { upstream, source } => {
                let (status, warning) = source.status_and_warning();
                (status, format!("Upstream repository \"{upstream}\": {warning}"))
            }
            ProxyError::OwnerUnknown { upstream, source } => {
                let (status, warning) = source.status_and_warning();
                // Whatever the upstream said, the truth for the client is "could not ask": a
                // 4xx here would let Composer look elsewhere.
                (
                    could_not_ask(status),
                    format!("Upstream repository \"{upstream}\" could not be asked whether it has this package, so composer-proxy cannot tell which repository owns it: {warning}"),
                )
            }
            ProxyError::AccountRejected { upstream, source } => {
                let (status, warning) = source.status_and_warning();
                // Not a 404: Composer would look for the name in the next repository.
                (
                    could_not_ask(status),
                    format!("Upstream account \"{upstream}\" is the only account of its repository whose listing has this package, and it is refused, so composer-proxy cannot serve it: {warning}"),
                )
            }
            ProxyError::ApiUnavailable { upstream, what, source } => {
                let (status, warning) = source.status_and_warning();
                // A 4xx would tell Composer the repository has nothing to say; it has not
                // been asked.
                (
                    could_not_ask(status),
                    format!("Upstream repository \"{upstream}\" could not be asked for {what} and composer-proxy has no earlier answer to serve instead: {warning}"),
                )
            }
            ProxyError::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("Bad request: {why}")),
            ProxyError::NotFound(what) => (StatusCode::NOT_FOUND, format!("Not found: {what}")),
            ProxyError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed: this proxy accepts GET and HEAD, and POST for install notifications and the security advisory and filter list APIs".into(),
            ),
            ProxyError::Forbidden(ip) => (
                StatusCode::FORBIDDEN,
                format!("composer-proxy does not serve {ip}: the address is not in its allowlist (setting `allow`)"),
            ),
            ProxyError::StatusForbidden(ip) => (
                StatusCode::FORBIDDEN,
                format!("The status page is not open to {ip}: it is for the networks in the setting `status_allow` (loopback only by default)"),
            ),
            ProxyError::BadForwardedFor => (
                StatusCode::BAD_REQUEST,
                "Bad request: a trusted reverse proxy (setting `trusted_proxies`) sent an X-Forwarded-For header without a usable client address".into(),
            ),
            ProxyError::TokenMissing => (
                StatusCode::UNAUTHORIZED,
                "composer-proxy requires a client token. Ask the proxy's administrator for one (composer-proxy tokens create --name NAME) and add it to auth.json for this proxy's host, e.g. composer config --global http-basic.HOST NAME TOKEN".into(),
            ),
            ProxyError::TokenUnknown => (
                StatusCode::UNAUTHORIZED,
                "composer-proxy does not know this client token (mistyped, or from another proxy). Check the http-basic or bearer entry for this proxy's host in auth.json, or ask the proxy's administrator for a new token.".into(),
            ),
            ProxyError::TokenDisabled(name) => (
                StatusCode::FORBIDDEN,
                format!("The client token \"{name}\" is disabled on composer-proxy. Ask the proxy's administrator to enable it again (composer-proxy tokens enable {name}) or to issue a new one."),
            ),
            ProxyError::OutsideViews { token, views } => {
                let usable: Vec<String> = views
                    .iter()
                    .map(|(name, url)| match url {
                        Some(url) => format!("{url} (view {name})"),
                        None => format!("view {name}, which no longer exists"),
                    })
                    .collect();
                // The URLs first: Composer shows only the first 200 characters.
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "The client token \"{token}\" is for {}, not this URL. Use that URL as the repository URL, or ask the proxy's administrator to bind the token to more views (composer-proxy tokens views {token} --view VIEW).",
                        if usable.is_empty() { "no view that exists".to_string() } else { usable.join(", ") }
                    ),
                )
            }
            ProxyError::TokenStoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "composer-proxy cannot read its client token file, so it accepts no token until it can (see the proxy's log).".into(),
            ),
            ProxyError::TokenDeleted(name) => (
                StatusCode::FORBIDDEN,
                format!("The client token \"{name}\" was deleted on composer-proxy. Ask the proxy's administrator for a new token and replace it in auth.json."),
            ),
            ProxyError::UriTooLong { limit } => (
                StatusCode::URI_TOO_LONG,
                format!("URI too long: composer-proxy serves no path longer than {limit} bytes"),
            ),
            ProxyError::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large: composer-proxy accepts at most {limit} bytes here"),
            ),
            ProxyError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type: install notifications must be application/json".into(),
            ),
            ProxyError::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                format!("Request body not received within {} s (setting `client_body_timeout_secs`)", limit.as_secs()),
            ),
            ProxyError::KeysRejected { status, keys_configured: true } => (
                StatusCode::BAD_GATEWAY,
                format!("The upstream repository rejected the organisation's key pair (HTTP {status}). Check in the Commerce Marketplace account (My Profile > Access Keys) that the key pair configured in composer-proxy still exists and is enabled, and that the account is in good standing; then update the proxy's keys."),
            ),
            ProxyError::KeysRejected { status, keys_configured: false } => (
                StatusCode::BAD_GATEWAY,
                format!("The upstream repository requires credentials (HTTP {status}) but composer-proxy has no key pair configured. Set COMPOSER_PROXY_PUBLIC_KEY and COMPOSER_PROXY_PRIVATE_KEY (or a key file or auth.json) on the proxy."),
            ),
            ProxyError::DownloadTokenRejected { status } => (
                StatusCode::BAD_GATEWAY,
                format!("Magento's release-download endpoint rejected the organisation's download access token (HTTP {status}). Check in the magento.com account (My Account > Account Settings > Downloads Access Token) that the MAGEID and token configured in composer-proxy ([downloads] mage_id and token) are current: generating a new token disables the old one. Then update the proxy's setting."),
            ),
            ProxyError::UpstreamForbidden { what: Resource::Archive } => (
                StatusCode::FORBIDDEN,
                "The upstream repository refused this archive (HTTP 403): the organisation's Marketplace account may lack the entitlement for it, or its access has lapsed.".into(),
            ),
            ProxyError::UpstreamForbidden { what: Resource::Metadata } => (
                StatusCode::FORBIDDEN,
                "The upstream repository refused access to this metadata (HTTP 403) for the organisation's key pair.".into(),
            ),
            ProxyError::UpstreamNotFound { what: Resource::Archive, .. } => (
                StatusCode::NOT_FOUND,
                "The upstream repository has no archive for this package version for the organisation's key pair (HTTP 404): the Marketplace account may lack the entitlement, or its access (licence, subscription, invoice) has lapsed.".into(),
            ),
            ProxyError::UpstreamNotFound { what: Resource::Metadata, detail } => {
                (StatusCode::NOT_FOUND, format!("Not found upstream: {detail}"))
            }
            ProxyError::UpstreamStatus(status) => (
                StatusCode::BAD_GATEWAY,
                format!("The upstream repository answered HTTP {status}; composer-proxy has no cached copy to serve instead."),
            ),
            ProxyError::Upstream(UpstreamError::Timeout(during)) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("The upstream repository timed out ({during}); composer-proxy has no cached copy to serve instead."),
            ),
            ProxyError::Upstream(UpstreamError::Unreachable(_)) => (
                StatusCode::BAD_GATEWAY,
                "The upstream repository is unreachable; composer-proxy has no cached copy to serve instead.".into(),
            ),
            ProxyError::Upstream(UpstreamError::Tls(_)) => (
                StatusCode::BAD_GATEWAY,
                "composer-proxy could not establish a trusted TLS connection to the upstream repository (see the proxy's log).".into(),
            ),
            ProxyError::Upstream(UpstreamError::TooManyRedirects(n)) => (
                StatusCode::BAD_GATEWAY,
                format!("The upstream repository redirected more than {n} times."),
            ),
            ProxyError::Upstream(UpstreamError::RateLimited { retry_after, has_token: false }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("GitHub's rate limit for this archive's host is used up (retry in {} s). The proxy's administrator can set github_token (or github_token_file) so GitHub dists are fetched with a token.", retry_after.as_secs()),
            ),
            ProxyError::Upstream(UpstreamError::RateLimited { retry_after, has_token: true }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("GitHub's rate limit for composer-proxy's github_token is used up (retry in {} s); archives already cached still install.", retry_after.as_secs()),
            ),
            ProxyError::Upstream(UpstreamError::Invalid(_) | UpstreamError::TooLarge { .. })
            | ProxyError::Protocol(_) => (
                StatusCode::BAD_GATEWAY,
                "The upstream repository sent metadata composer-proxy could not use (see the proxy's log).".into(),
            ),
            ProxyError::ArchiveMismatch(_) => (
                StatusCode::BAD_GATEWAY,
                "The upstream repository sent an archive that does not match its published checksum; nothing was cached. Try again later.".into(),
            ),
            ProxyError::Cache(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "composer-proxy could not use its cache directory (see the proxy's log).".into(),
            ),
        }
    }

    /// The methods to name in `Allow` when this is a 405.
    fn allow(&self) -> Option<&'static str> {
        match self {
            ProxyError::MethodNotAllowed { allow } => Some(allow),
            ProxyError::Shared(inner) => inner.allow(),
            _ => None,
        }
    }

    /// Seconds to name in `Retry-After` when the answer is "not now".
    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::Upstream(UpstreamError::RateLimited { retry_after, .. }) => {
                Some(retry_after.as_secs())
            }
            ProxyError::Shared(inner) => inner.retry_after(),
            ProxyError::Via { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// Not worth asking again at once: the answer would be the same.
    pub fn is_rate_limit(&self) -> bool {
        self.retry_after().is_some()
    }

    /// The JSON response Composer shows to its user.
    pub fn to_response(&self) -> Response<bytes::Bytes> {
        let (status, warning) = self.status_and_warning();
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        let mut response = json_response(status, &serde_json::json!({ "warning": warning }));
        if let Some(allow) = self.allow() {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The status for "an upstream could not be asked": the upstream's own 5xx, else 502.
fn could_not_ask(status: StatusCode) -> StatusCode {
    if status.is_server_error() {
        status
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<bytes::Bytes> {
    let bytes = bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let len = bytes.len();
    let mut response = Response::new(bytes);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        // Only the proxy's own client tokens are asked for this way; upstream 401s become 502.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"composer-proxy\""),
        );
    }
    response
}

#[cfg(test)]
mod troubleshooting;

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ProxyError) -> (u16, String) {
        let r = e.to_response();
        let json: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        (
            r.status().as_u16(),
            json["warning"].as_str().expect("warning").to_string(),
        )
    }

    #[test]
    fn upstream_401_becomes_502_never_401() {
        let (status, warning) = body(&ProxyError::from_upstream_status(
            StatusCode::UNAUTHORIZED,
            Resource::Metadata,
            true,
            "",
        ));
        assert_eq!(status, 502);
        assert!(
            warning.contains("rejected the organisation's key pair"),
            "{warning}"
        );
        assert!(warning.contains("Marketplace"), "{warning}");
        let (status, warning) = body(&ProxyError::KeysRejected {
            status: 401,
            keys_configured: false,
        });
        assert_eq!(status, 502);
        assert!(warning.contains("no key pair configured"), "{warning}");
    }

    #[test]
    fn a_rejected_download_token_is_a_502_that_says_what_to_check() {
        let e = ProxyError::Shared(std::sync::Arc::new(ProxyError::DownloadTokenRejected {
            status: 401,
        }));
        let (status, warning) = body(&e);
        assert_eq!(status, 502);
        for words in ["download access token", "MAGEID", "disables the old one"] {
            assert!(warning.contains(words), "{warning}");
        }
        assert!(e.is_key_rejection());
    }

    #[test]
    fn archive_404_names_the_entitlement() {
        let (status, warning) = body(&ProxyError::from_upstream_status(
            StatusCode::NOT_FOUND,
            Resource::Archive,
            true,
            "x",
        ));
        assert_eq!(status, 404);
        assert!(warning.contains("entitlement"), "{warning}");
    }

    #[test]
    fn method_not_allowed_names_what_the_target_accepts() {
        let r = ProxyError::MethodNotAllowed { allow: "POST" }.to_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        let shared = ProxyError::Shared(std::sync::Arc::new(ProxyError::MethodNotAllowed {
            allow: "GET, HEAD",
        }));
        assert_eq!(shared.to_response().headers()[header::ALLOW], "GET, HEAD");
        assert!(!ProxyError::NotFound("x".into())
            .to_response()
            .headers()
            .contains_key(header::ALLOW));
    }

    #[test]
    fn oversized_and_slow_requests_get_their_own_statuses() {
        assert_eq!(body(&ProxyError::UriTooLong { limit: 1024 }).0, 414);
        assert_eq!(body(&ProxyError::BodyTooLarge { limit: 1 }).0, 413);
        assert_eq!(body(&ProxyError::UnsupportedMediaType).0, 415);
        let (status, warning) = body(&ProxyError::BodyTimeout(std::time::Duration::from_secs(30)));
        assert_eq!(status, 408);
        assert!(warning.contains("client_body_timeout_secs"), "{warning}");
    }

    #[test]
    fn timeouts_are_504_and_unreachable_502() {
        assert_eq!(
            body(&ProxyError::Upstream(UpstreamError::Timeout("x"))).0,
            504
        );
        assert_eq!(
            body(&ProxyError::Upstream(UpstreamError::Unreachable(
                "x".into()
            )))
            .0,
            502
        );
        assert_eq!(body(&ProxyError::UpstreamStatus(503)).0, 502);
    }
}
