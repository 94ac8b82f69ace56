//! What one upstream exchange is made of: its kinds, its outcomes and errors, validators, and
//! the record of every exchange a client request caused (for its access-log line).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper::body::Incoming;

/// Why an upstream exchange failed; the variants map one-to-one onto what clients are told.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (untrusted or expired certificate, wrong host name, not TLS at
    /// all): a configuration problem rather than an outage, so it is told apart.
    #[error("TLS handshake with upstream failed: {0}")]
    Tls(String),
    #[error("upstream timed out {0}")]
    Timeout(&'static str),
    #[error("upstream followed more than {0} redirects")]
    TooManyRedirects(u8),
    #[error("upstream sent an unusable response: {0}")]
    Invalid(String),
    /// An answer read whole was larger than its limit; the warning was logged where it was
    /// read, with the URL.
    #[error("upstream's answer is larger than {limit} bytes (setting {setting})")]
    TooLarge { limit: usize, setting: &'static str },
    /// GitHub's rate limit (a dist host, not the upstream itself) is used up.
    #[error("GitHub rate limit exhausted; retry in {retry_after:?}")]
    RateLimited {
        retry_after: Duration,
        has_token: bool,
    },
}

/// The kinds of upstream answer read whole into memory, each with its own byte limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Metadata,
    Feed,
    Api,
}

/// Conditional-request validators from a previous response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub last_modified: Option<String>,
    pub etag: Option<String>,
}

impl Validators {
    pub(super) fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            last_modified: get(header::LAST_MODIFIED),
            etag: get(header::ETAG),
        }
    }
}

/// A metadata fetch's result, with the status classes callers act on.
#[derive(Debug)]
pub enum MetadataResponse {
    /// 2xx with the decoded body.
    Fresh { body: Bytes, validators: Validators },
    /// 304 to a conditional request.
    NotModified,
    /// Any other final status (401, 403, 404, 5xx …).
    Status(StatusCode),
}

/// A response whose body the caller streams (archives).
pub struct StreamingResponse {
    pub status: StatusCode,
    /// HTTP/1.x bodies without a length end when the connection closes, so a cut looks
    /// complete; archives need to know.
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Incoming,
}

/// What upstream last said about the key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// No answer from the upstream origin yet.
    Unknown,
    Accepted,
    Rejected,
}

/// What kind of upstream request, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Metadata,
    Archive,
    Notify,
    /// The security advisory API.
    Advisories,
    /// The malware filter list summary and API.
    Filter,
    /// The package name list.
    List,
}

impl RequestKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RequestKind::Metadata => "metadata",
            RequestKind::Archive => "archive",
            RequestKind::Notify => "notify",
            RequestKind::Advisories => "advisories",
            RequestKind::Filter => "filter",
            RequestKind::List => "list",
        }
    }
}

/// The last upstream exchange made while answering one client request, for its access-log
/// line: status (none when unreachable) and time to response headers.
#[derive(Clone, Debug)]
pub struct UpstreamNote {
    /// The upstream's configured name.
    pub upstream: Arc<str>,
    pub status: Option<u16>,
    pub took: Duration,
}

/// Every upstream exchange made for one client request, in order: a request of the merged
/// repository may ask several upstreams before one owns the name.
pub type Exchanges = Arc<Mutex<Vec<UpstreamNote>>>;

tokio::task_local! {
    /// Set by the server around each request (and by a download around its task); upstream
    /// exchanges made there are recorded in it, for the access-log line.
    pub static EXCHANGE: Exchanges;
}

/// Records an exchange for the current request's access-log line, if there is one.
pub fn note_exchange(note: UpstreamNote) {
    let _ = EXCHANGE.try_with(|slot| {
        slot.lock().unwrap_or_else(|p| p.into_inner()).push(note);
    });
}
