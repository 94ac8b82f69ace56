//! What is asked: request paths are normalised and parsed into a [`Route`] (a pure function,
//! tested and fuzzed on its own), then each route kind is answered from the caches.
//!
//! Parsing is strict on purpose. Composer only ever percent-encodes `$` (as `%24`), so any
//! other escape, dot segment, backslash or control byte is refused with 400 before anything
//! else happens: such a path can never reach the cache directory or the upstream. Before the
//! path, [`screen`] refuses requests no Composer client sends (other methods, absolute-form
//! targets, chunked bodies).

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use crate::access::{Access, BadForwardedFor};
use crate::cache::archives::{Archive, ArchiveStore};
use crate::cache::metadata::CacheStatus;
use crate::cache::{cache_verdict, CacheProbe, WriteKind};
use crate::composer::{self, Document};
use crate::error::{json_response, ProxyError};
use crate::metrics::{Gauges, IntegrityGauges};
use crate::tokens::Verdict;
use crate::upstream::{KeyVerdict, RequestKind};
use crate::AppState;

pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// Largest install-notification body accepted; Composer sends a few hundred bytes per package.
const MAX_NOTIFY_BYTES: usize = 1024 * 1024;
/// Longest request path served; Composer's are well under 200 bytes.
const MAX_PATH_BYTES: usize = 1024;

/// One request kind per route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Root,
    /// `vendor/name` or `vendor/name~dev`.
    P2 {
        file: String,
    },
    /// A rewritten v1 listing, by its path below the root (`p/provider-ce$<hash>.json`).
    V1Listing {
        path: String,
    },
    V1Package {
        name: String,
        hash: String,
    },
    Dist {
        package: String,
        key: String,
    },
    Notify,
    Search,
    Health,
    Ready,
    Metrics,
}

impl Route {
    /// Fixed label for logs and metrics: never the path itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Root => "root",
            Route::P2 { .. } => "p2",
            Route::V1Listing { .. } => "v1_listing",
            Route::V1Package { .. } => "v1_package",
            Route::Dist { .. } => "archive",
            Route::Notify => "notify",
            Route::Search => "search",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    BadPath(&'static str),
    TooLong,
    NotFound,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decodes the only escapes Composer produces (`%24` for `$`, and `%7E` for `~` from some
/// HTTP stacks) and refuses everything that could smuggle a separator or a second decoding.
pub fn normalize_path(raw: &str) -> Result<String, RouteError> {
    if !raw.starts_with('/') {
        return Err(RouteError::BadPath("path must start with /"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(RouteError::TooLong);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let escape = raw.get(i + 1..i + 3).unwrap_or_default();
                match escape.to_ascii_lowercase().as_str() {
                    "24" => out.push('$'),
                    "7e" => out.push('~'),
                    _ => return Err(RouteError::BadPath("unexpected percent-encoding in path")),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(RouteError::BadPath("backslash in path")),
            0x21..=0x7e => out.push(b as char),
            _ => {
                return Err(RouteError::BadPath(
                    "control, space or non-ASCII byte in path",
                ))
            }
        }
        i += 1;
    }
    for segment in out.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(RouteError::BadPath("dot segment in path"));
        }
    }
    Ok(out)
}

/// Parses a request path (with the public URL's path prefix, if any) into a route.
pub fn parse_route(raw: &str, prefix: &str) -> Result<Route, RouteError> {
    let path = normalize_path(raw)?;
    let path = match path.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() && rest.starts_with('/') => rest.to_string(),
        _ => path,
    };
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.iter().rev().skip(1).any(|s| s.is_empty()) {
        return Err(RouteError::BadPath("empty segment in path"));
    }
    let route = match segments.as_slice() {
        ["packages.json"] => Route::Root,
        ["healthz"] => Route::Health,
        ["readyz"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["search.json"] => Route::Search,
        ["downloads"] | ["downloads", ""] => Route::Notify,
        ["p2", vendor, file] => {
            let stem = file.strip_suffix(".json").ok_or(RouteError::NotFound)?;
            let (project, dev) = match stem.strip_suffix("~dev") {
                Some(p) => (p, true),
                None => (stem, false),
            };
            let name = format!("{vendor}/{project}");
            if !composer::is_package_name(&name) {
                return Err(RouteError::NotFound);
            }
            Route::P2 {
                file: if dev { format!("{name}~dev") } else { name },
            }
        }
        ["p", vendor, file] if file.contains('$') => {
            let stem = file.strip_suffix(".json").ok_or(RouteError::NotFound)?;
            let (project, hash) = stem.rsplit_once('$').ok_or(RouteError::NotFound)?;
            let name = format!("{vendor}/{project}");
            if composer::is_package_name(&name) && is_hex(hash, 64) {
                Route::V1Package {
                    name,
                    hash: hash.to_string(),
                }
            } else {
                return Err(RouteError::NotFound);
            }
        }
        ["p", ..] if path.ends_with(".json") => Route::V1Listing {
            path: path[1..].to_string(),
        },
        ["dists", vendor, project, file] => {
            let (key, ext) = file.split_once('.').ok_or(RouteError::NotFound)?;
            let name = format!("{vendor}/{project}");
            let ext_ok = !ext.is_empty()
                && ext.len() <= 8
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !composer::is_package_name(&name) || !is_hex(key, 32) || !ext_ok {
                return Err(RouteError::NotFound);
            }
            Route::Dist {
                package: name,
                key: key.to_string(),
            }
        }
        _ => return Err(RouteError::NotFound),
    };
    Ok(route)
}

/// Outcome details the access log and metrics record.
pub struct Outcome {
    pub route: &'static str,
    pub cache: Option<CacheStatus>,
    /// The client, when a trusted proxy named another than the peer.
    pub client: Option<IpAddr>,
    /// The name of the client token presented, valid or not.
    pub token: Option<Arc<str>>,
}

impl Route {
    /// Probes and scrapes come from orchestrators and monitoring, which hold no client token;
    /// they reveal nothing of the licensed code.
    fn needs_token(&self) -> bool {
        !matches!(self, Route::Health | Route::Ready | Route::Metrics)
    }
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn empty() -> ResponseBody {
    full(Bytes::new())
}

fn error_response(e: &ProxyError) -> Response<ResponseBody> {
    e.to_response().map(full)
}

/// Refuses, before the path is parsed, what no Composer client sends:
///
/// - a method other than GET, HEAD and POST (405), first, so that a CONNECT, whose
///   authority-form target has no path at all, is told it is the method that is wrong;
/// - an absolute-form target over HTTP/1 (`GET http://other.example/… HTTP/1.1`): this is not
///   a forward proxy, and a host a client names is never acted on. Over HTTP/2 hyper fills in
///   scheme and authority from the pseudo-headers of every request, so there it means nothing;
/// - `Transfer-Encoding` over HTTP/1. When a request carries both Content-Length and
///   Transfer-Encoding (the request smuggling trick), hyper frames the body as chunked, drops
///   Content-Length before the service sees it, and closes the connection after the response,
///   so a smuggled second request is never parsed; but the outer request would still be
///   served, and here it cannot be told from a plain chunked body. Composer never sends a
///   chunked body (curl and PHP's stream wrapper both send Content-Length), so all are refused.
fn screen<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return Err(ProxyError::MethodNotAllowed {
            allow: "GET, HEAD, POST",
        });
    }
    if request.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let uri = request.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(ProxyError::BadRequest(
            "absolute-form request target: composer-proxy is not a forward proxy; request the path only".into(),
        ));
    }
    if request.headers().contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding in a request: send the body with Content-Length".into(),
        ));
    }
    Ok(())
}

/// Answers one request. Never fails: errors become JSON responses here.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<ResponseBody>, Outcome) {
    let mut outcome = Outcome {
        route: "unknown",
        cache: None,
        client: None,
        token: None,
    };
    let access = state.access();
    let client = match access.client(peer.ip(), request.headers()) {
        Ok(client) => client,
        Err(BadForwardedFor) => {
            return (error_response(&ProxyError::BadForwardedFor), outcome);
        }
    };
    outcome.client = (client != peer.ip()).then_some(client);
    if !access.allows(client) {
        return (error_response(&ProxyError::Forbidden(client)), outcome);
    }
    if let Err(e) = screen(&request) {
        let mut response = error_response(&e);
        // Not a Composer client: nothing more is read from this connection.
        if request.version() < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return (response, outcome);
    }
    let route = match parse_route(request.uri().path(), &state.path_prefix) {
        Ok(route) => route,
        Err(RouteError::BadPath(why)) => {
            return (error_response(&ProxyError::BadRequest(why.into())), outcome)
        }
        Err(RouteError::TooLong) => {
            let too_long = ProxyError::UriTooLong {
                limit: MAX_PATH_BYTES,
            };
            return (error_response(&too_long), outcome);
        }
        Err(RouteError::NotFound) => {
            return (
                error_response(&ProxyError::NotFound("no such route".into())),
                outcome,
            )
        }
    };
    outcome.route = route.kind();
    if route.needs_token() {
        if let Err(e) = check_token(&state, &access, request.headers(), client, &mut outcome) {
            return (error_response(&e), outcome);
        }
    }
    let method = request.method().clone();
    let (allowed, allow) = match route {
        Route::Notify => (method == Method::POST, "POST"),
        _ => (method == Method::GET || method == Method::HEAD, "GET, HEAD"),
    };
    if !allowed {
        return (
            error_response(&ProxyError::MethodNotAllowed { allow }),
            outcome,
        );
    }
    let head = method == Method::HEAD;
    let result =
        match route {
            Route::Root => state.metadata.view().await.map(|(view, cache)| {
                (
                    document(request.headers(), &view.root, cache, head),
                    Some(cache),
                )
            }),
            Route::P2 { file } => {
                state.metadata.p2_file(&file).await.map(|(doc, cache)| {
                    (document(request.headers(), &doc, cache, head), Some(cache))
                })
            }
            Route::V1Listing { path } => state.metadata.v1_listing(&path).await.map(|doc| {
                (
                    document(request.headers(), &doc, CacheStatus::Hit, head),
                    Some(CacheStatus::Hit),
                )
            }),
            Route::V1Package { name, hash } => state
                .metadata
                .v1_package_file(&name, &hash)
                .await
                .map(|doc| {
                    (
                        document(request.headers(), &doc, CacheStatus::Hit, head),
                        Some(CacheStatus::Hit),
                    )
                }),
            Route::Dist { package, key } => {
                archive(&state, request.headers(), &package, &key, head).await
            }
            Route::Notify => notify(&state, request.into_body())
                .await
                .map(|response| (response, None)),
            Route::Search => search(&state, request.uri().query().unwrap_or_default()).await,
            Route::Health => Ok((
                json_response(StatusCode::OK, &json!({"status": "ok"})).map(full),
                None,
            )),
            Route::Ready => Ok((ready(&state).await, None)),
            Route::Metrics => Ok((metrics(&state).await, None)),
        };
    match result {
        Ok((response, cache)) => {
            outcome.cache = cache;
            (response, outcome)
        }
        Err(e) => (error_response(&e), outcome),
    }
}

/// Checks the client token when tokens are required. When they are not, a presented token
/// still names the client in the access log, and a bad one is logged (so a rollout can be
/// watched before `require_tokens` is turned on) but not refused.
fn check_token(
    state: &AppState,
    access: &Access,
    headers: &HeaderMap,
    client: IpAddr,
    outcome: &mut Outcome,
) -> Result<(), ProxyError> {
    if !access.require_tokens && !headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let verdict = state.tokens.check(headers);
    outcome.token = verdict.name().cloned();
    let Some(reason) = verdict.refusal() else {
        return Ok(());
    };
    if !access.require_tokens {
        if reason != "missing" {
            tracing::warn!(event = "token_refused", reason, token = verdict.name().map(|n| &**n), %client, enforced = false, "client token would be refused (require_tokens is off)");
        }
        return Ok(());
    }
    tracing::warn!(event = "token_refused", reason, token = verdict.name().map(|n| &**n), %client, "client token refused");
    Err(match verdict {
        Verdict::Disabled(name) => ProxyError::TokenDisabled(name),
        Verdict::Deleted(name) => ProxyError::TokenDeleted(name),
        Verdict::Unknown => ProxyError::TokenUnknown,
        Verdict::Unavailable => ProxyError::TokenStoreUnavailable,
        Verdict::Absent | Verdict::Valid(_) => ProxyError::TokenMissing,
    })
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

fn not_modified_since(headers: &HeaderMap, modified: SystemTime) -> bool {
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    // HTTP dates have whole seconds; compare at that precision.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    secs(modified) <= secs(since)
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        })
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A metadata document with validators, 304 and precomputed gzip.
fn document(
    headers: &HeaderMap,
    doc: &Document,
    cache: CacheStatus,
    head: bool,
) -> Response<ResponseBody> {
    let not_modified = if headers.contains_key(header::IF_NONE_MATCH) {
        etag_matches(headers, doc.etag.to_str().unwrap_or_default())
    } else {
        not_modified_since(headers, doc.last_modified)
    };
    let gzip = accepts_gzip(headers);
    let mut response = Response::new(empty());
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE, "application/json");
    h.insert(header::LAST_MODIFIED, doc.last_modified_header.clone());
    h.insert(header::ETAG, doc.etag.clone());
    set(h, header::VARY, "Accept-Encoding");
    set(
        h,
        header::HeaderName::from_static("x-cache"),
        cache.as_str(),
    );
    if cache == CacheStatus::Stale {
        set(
            h,
            header::WARNING,
            "110 composer-proxy \"Response is Stale\"",
        );
    }
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let body = if gzip {
        set(h, header::CONTENT_ENCODING, "gzip");
        doc.gzip.clone()
    } else {
        doc.identity.clone()
    };
    set(h, header::CONTENT_LENGTH, &body.len().to_string());
    if !head {
        *response.body_mut() = full(body);
    }
    response
}

async fn archive(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    package: &str,
    key: &str,
    head: bool,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let source = state.metadata.dist_source(package, key).await?;
    let key = ArchiveStore::store_key(&source);
    let etag = format!("\"{}\"", &key[..32]);
    let mut response = Response::new(empty());
    let h = response.headers_mut();
    set(h, header::ETAG, &etag);
    if etag_matches(headers, &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok((response, Some(CacheStatus::Hit)));
    }
    let (archive, cache) = state.archives.get(&source, &key).await?;
    let h = response.headers_mut();
    let content_type = if source.url.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(
        h,
        header::HeaderName::from_static("x-cache"),
        cache.as_str(),
    );
    let (len, body) = match archive {
        Archive::Memory(bytes) => (Some(bytes.len() as u64), full(bytes)),
        Archive::File(reader) => {
            let len = reader.byte_len();
            let stream = futures_util::stream::unfold(reader, |mut reader| async move {
                reader
                    .next_chunk()
                    .await
                    .map(|item| (item.map(Frame::data), reader))
            });
            (Some(len), StreamBody::new(stream).boxed_unsync())
        }
        Archive::Streaming { reader, len } => {
            let stream = futures_util::stream::unfold(reader, |mut reader| async move {
                reader
                    .next_chunk()
                    .await
                    .map(|item| (item.map(Frame::data), reader))
            });
            (len, StreamBody::new(stream).boxed_unsync())
        }
    };
    if let Some(len) = len {
        set(h, header::CONTENT_LENGTH, &len.to_string());
    }
    if !head {
        *response.body_mut() = body;
    }
    Ok((response, Some(cache)))
}

/// Accepts Composer's install notification and forwards it upstream in the background: a
/// statistics ping must never fail or slow down an install. Its body is bounded in size and in
/// time (`client_body_timeout_secs`); anything else is not a ping from Composer.
async fn notify(
    state: &Arc<AppState>,
    body: Incoming,
) -> Result<Response<ResponseBody>, ProxyError> {
    let too_large = ProxyError::BodyTooLarge {
        limit: MAX_NOTIFY_BYTES,
    };
    // A declared length is checked before any byte is read (and before hyper would send a
    // `100 Continue`), so the body is never transferred.
    if body.size_hint().lower() > MAX_NOTIFY_BYTES as u64 {
        return Err(too_large);
    }
    let limit = state.client_limits.body_timeout;
    let collected =
        tokio::time::timeout(limit, Limited::new(body, MAX_NOTIFY_BYTES).collect()).await;
    let payload = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(too_large),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "install notification body unreadable");
            return Err(ProxyError::BadRequest(
                "the request body could not be read".into(),
            ));
        }
        Err(_) => return Err(ProxyError::BodyTimeout(limit)),
    };
    let state = state.clone();
    tokio::spawn(async move {
        let Some(url) = state.metadata.notify_url().await else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match state
            .upstream
            .send(RequestKind::Notify, Method::POST, &url, headers, payload)
            .await
        {
            Ok(r) if r.status.is_success() => {
                tracing::debug!("install notification forwarded")
            }
            Ok(r) => {
                tracing::warn!(status = %r.status, "upstream refused the install notification")
            }
            Err(e) => tracing::warn!(error = %e, "install notification not forwarded"),
        }
    });
    Ok(json_response(StatusCode::OK, &json!({"status": "success"})).map(full))
}

async fn search(
    state: &Arc<AppState>,
    query: &str,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let q = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let names = state.metadata.search(&q).await?;
    let results: Vec<_> = names
        .iter()
        .map(|n| json!({"name": n, "description": ""}))
        .collect();
    let body = json!({"results": results, "total": names.len()});
    Ok((
        json_response(StatusCode::OK, &body).map(full),
        Some(CacheStatus::Hit),
    ))
}

/// How long a cache-directory write probe is trusted; probes every few seconds from several
/// orchestrators must not turn into a stream of disk writes.
const DISK_PROBE_TTL: Duration = Duration::from_secs(5);
/// From when an unreachable upstream is reported by `/readyz`.
const UPSTREAM_DOWN_REPORTED_AFTER: Duration = Duration::from_secs(300);

/// Ready means: the cache directory can be read, upstream metadata is at hand, and upstream
/// has not rejected the key pair. An unreachable upstream alone does not make the proxy
/// unready while it has a cache to serve from (that is its job), nor does a cache that takes
/// no writes or is short of space while archives can stream through: both are reported as
/// degraded.
async fn ready(state: &Arc<AppState>) -> Response<ResponseBody> {
    let mut reasons: Vec<String> = Vec::new();
    let mut degraded: Vec<String> = Vec::new();
    let probe = cache_probe(state).await;
    let recent_failure = state.archives.disk().health().recent_failure();
    match cache_verdict(
        &probe.readable,
        &probe.writable,
        probe.space,
        state.cache_min_free_bytes,
        recent_failure,
    ) {
        Ok(cache) => degraded.extend(cache),
        Err(e) => reasons.push(e),
    }
    let view = state.metadata.view().await;
    let rejected = state.upstream.key_verdict() == KeyVerdict::Rejected;
    if rejected {
        if state.metadata.stale_on_key_rejection() {
            degraded.push("upstream rejected the key pair; serving cached data".into());
        } else {
            reasons.push("upstream rejected the key pair".into());
        }
    }
    let down = state
        .upstream
        .down_for()
        .filter(|d| *d >= UPSTREAM_DOWN_REPORTED_AFTER)
        .map(|d| format!("upstream unreachable for {} min", d.as_secs() / 60));
    match (&view, down) {
        (Ok(_), Some(down)) => degraded.push(format!("{down}; serving from cache")),
        (Err(_), Some(down)) => reasons.push(down),
        (Err(e), None) if !rejected => reasons.push(format!("no upstream metadata: {e}")),
        _ => {}
    }
    let (status, body) = if reasons.is_empty() {
        let mut body = json!({"status": "ready"});
        if let Ok((view, _)) = &view {
            body["packages"] = json!(view.names().len());
            body["composer1"] = json!(state.metadata.v1_ready());
        }
        if !degraded.is_empty() {
            body["degraded"] = json!(degraded.join("; "));
        }
        (StatusCode::OK, body)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reason": reasons.join("; ")}),
        )
    };
    json_response(status, &body).map(full)
}

async fn cache_probe(state: &Arc<AppState>) -> CacheProbe {
    let mut last = state.disk_probe.lock().await;
    if let Some((at, probe)) = &*last {
        if at.elapsed() < DISK_PROBE_TTL {
            return probe.clone();
        }
    }
    let probe = state.archives.disk().probe().await;
    *last = Some((Instant::now(), probe.clone()));
    probe
}

async fn metrics(state: &Arc<AppState>) -> Response<ResponseBody> {
    let metadata = state.metadata.stats().await;
    let archives = state.archives.stats();
    let probe = cache_probe(state).await;
    let health = state.archives.disk().health();
    let integrity = IntegrityGauges {
        writable: probe.readable.is_ok().then_some(probe.writable.is_ok()),
        free_bytes: probe.space.map(|s| s.available_bytes),
        min_free_bytes: state.cache_min_free_bytes,
        metadata_write_errors: health.write_errors(WriteKind::Metadata),
        archive_write_errors: health.write_errors(WriteKind::Archives),
        temp_bytes: health.temp_bytes(),
        temp_swept: health.temp_swept(),
        unstored: archives.unstored,
        damaged_on_serve: archives.damaged_on_serve,
        damaged_by_scrub: archives.damaged_by_scrub,
        scrubbed_archives: archives.scrubbed_archives,
        scrubbed_bytes: archives.scrubbed_bytes,
    };
    let gauges = Gauges {
        metadata_entries: metadata.entries,
        metadata_bytes: metadata.bytes,
        metadata_max_bytes: metadata.max_bytes,
        archive_entries: archives.entries,
        archive_bytes: archives.bytes,
        archive_max_bytes: archives.max_bytes,
        archive_evictions: archives.evictions,
        archive_single_flight_waits: archives.single_flight_waits,
        key_accepted: match state.upstream.key_verdict() {
            KeyVerdict::Accepted => Some(true),
            KeyVerdict::Rejected => Some(false),
            KeyVerdict::Unknown => None,
        },
        integrity,
    };
    let mut response = Response::new(full(state.metrics.render(&gauges)));
    set(
        response.headers_mut(),
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composer_paths_route() {
        assert_eq!(parse_route("/packages.json", ""), Ok(Route::Root));
        assert_eq!(
            parse_route("/p2/magento/framework.json", ""),
            Ok(Route::P2 {
                file: "magento/framework".into()
            })
        );
        assert_eq!(
            parse_route("/p2/magento/framework~dev.json", ""),
            Ok(Route::P2 {
                file: "magento/framework~dev".into()
            })
        );
        let hash = "a".repeat(64);
        for sep in ["$", "%24"] {
            assert_eq!(
                parse_route(&format!("/p/magento/framework{sep}{hash}.json"), ""),
                Ok(Route::V1Package {
                    name: "magento/framework".into(),
                    hash: hash.clone()
                })
            );
        }
        assert_eq!(
            parse_route(&format!("/p/provider-ce%24{hash}.json"), ""),
            Ok(Route::V1Listing {
                path: format!("p/provider-ce${hash}.json")
            })
        );
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_route(&format!("/dists/magento/framework/{key}.zip"), ""),
            Ok(Route::Dist {
                package: "magento/framework".into(),
                key: key.into()
            })
        );
        assert_eq!(parse_route("/downloads/", ""), Ok(Route::Notify));
    }

    #[test]
    fn path_prefix_of_the_public_url_is_accepted() {
        assert_eq!(
            parse_route("/magento/packages.json", "/magento"),
            Ok(Route::Root)
        );
        assert_eq!(parse_route("/packages.json", "/magento"), Ok(Route::Root));
    }

    #[test]
    fn traversal_and_odd_encodings_are_bad_requests() {
        for path in [
            "/p2/../etc/passwd.json",
            "/p2/%2e%2e/x.json",
            "/p2/a%2fb.json",
            "/p2/a%252fb.json",
            "/p2/a\\b.json",
            "/p2/a%00.json",
            "/p2/a%5cb.json",
            "/./packages.json",
            "/p2/a/b%2E%2E.json",
            "/p2/a/\u{e9}.json",
            "/p2/a b.json",
            "/p2/a/b.json%",
        ] {
            assert!(
                matches!(parse_route(path, ""), Err(RouteError::BadPath(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn overlong_paths_are_too_long_not_just_bad() {
        let long = format!("/p2/magento/{}.json", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(parse_route(&long, ""), Err(RouteError::TooLong));
        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(parse_route(&longest, ""), Err(RouteError::NotFound));
    }

    fn request(method: &str, target: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
            .expect("request")
    }

    #[test]
    fn methods_other_than_get_head_post_are_refused_before_the_path() {
        for method in [
            "CONNECT", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "BREW",
        ] {
            // CONNECT's authority-form target has no path: still a 405, not a 400.
            let target = if method == "CONNECT" {
                "evil.example:443"
            } else {
                "/packages.json"
            };
            let refused = screen(&request(method, target, Version::HTTP_11));
            assert!(
                matches!(
                    refused,
                    Err(ProxyError::MethodNotAllowed {
                        allow: "GET, HEAD, POST"
                    })
                ),
                "{method}: {refused:?}"
            );
        }
        for method in ["GET", "HEAD", "POST"] {
            assert!(screen(&request(method, "/packages.json", Version::HTTP_11)).is_ok());
        }
    }

    #[test]
    fn absolute_form_targets_are_refused_over_http1_only() {
        for target in [
            "http://evil.example/packages.json",
            "https://127.0.0.1:1/packages.json",
        ] {
            for version in [Version::HTTP_10, Version::HTTP_11] {
                assert!(
                    matches!(
                        screen(&request("GET", target, version)),
                        Err(ProxyError::BadRequest(_))
                    ),
                    "{target} {version:?}"
                );
            }
            // HTTP/2 requests always carry scheme and authority.
            assert!(screen(&request("GET", target, Version::HTTP_2)).is_ok());
        }
    }

    #[test]
    fn request_bodies_must_not_be_chunked_over_http1() {
        let mut chunked = request("POST", "/downloads/", Version::HTTP_11);
        chunked.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(matches!(screen(&chunked), Err(ProxyError::BadRequest(_))));
        *chunked.version_mut() = Version::HTTP_2;
        assert!(screen(&chunked).is_ok());
    }

    #[test]
    fn unknown_shapes_are_not_found() {
        for path in [
            "/",
            "/p2/Magento/Framework.json",
            "/p2/magento.json",
            "/dists/magento/framework/../x.zip",
            "/dists/magento/framework/nothex.zip",
            "/p/magento/framework$abc.json",
            "/archives/magento/x.zip",
        ] {
            assert!(parse_route(path, "").is_err(), "{path}");
        }
    }

    #[test]
    fn gzip_negotiation_respects_q_zero() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&h));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("header"),
        );
        assert!(not_modified_since(&h, t));
        assert!(!not_modified_since(
            &h,
            t + std::time::Duration::from_secs(2)
        ));
    }
}
