//! What is asked: request paths are normalised and parsed into a [`Route`] (a pure function,
//! tested and fuzzed on its own), then each route kind is answered from the caches.
//!
//! Parsing is strict on purpose. Composer only ever percent-encodes `$` (as `%24`), so any
//! other escape, dot segment, backslash or control byte is refused with 400 before anything
//! else happens: such a path can never reach the cache directory or the upstream. Before the
//! path, [`screen`] refuses requests no Composer client sends (other methods, absolute-form
//! targets, chunked bodies).
//!
//! `path` parses, `respond` builds documents with their validators and encodings, `handlers`
//! answers the archive, notification and search routes, `apis` the security advisory, filter
//! list and name list routes, `releases` the legacy release downloads, `ops` the health,
//! readiness and metrics endpoints.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::access::BadForwardedFor;
use crate::cache::metadata::CacheStatus;
use crate::error::{json_response, ProxyError};
use crate::upstreams::{Among, Upstream};
use crate::views::{ClientView, Scope};
use crate::AppState;

use asked::{check_token, Asked};

pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

mod apis;
mod asked;
mod handlers;
mod notify;
mod ops;
mod path;
mod releases;
mod respond;

use handlers::{archive, search};
use notify::notify;
pub use notify::Notifications;
pub(crate) use ops::{cache_probe, readiness};
use ops::{metrics, ready};
pub use path::{
    is_release_file_name, normalize_path, parse_route, parse_target, Route, RouteError, Target,
    MAX_PATH_BYTES,
};
use releases::{release_file, release_info};
use respond::{document, set, set_length, view_document};

/// Outcome details the access log and metrics record.
pub struct Outcome {
    pub route: &'static str,
    pub cache: Option<CacheStatus>,
    /// The client, when a trusted proxy named another than the peer.
    pub client: Option<IpAddr>,
    /// The name of the client token presented, valid or not.
    pub token: Option<Arc<str>>,
    /// The upstream that answered (the package's owner, or the one asked for).
    pub upstream: Option<Arc<str>>,
    /// The view asked, when the request was for one.
    pub view: Option<Arc<str>>,
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
    state: &Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> (Response<ResponseBody>, Outcome) {
    let mut outcome = Outcome {
        route: "unknown",
        cache: None,
        client: None,
        token: None,
        upstream: None,
        view: None,
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
    let Target { upstream, route } = match parse_target(request.uri().path(), &state.path_prefix) {
        Ok(target) => target,
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
    let views = state.views();
    // `<public_url>/<name>/…`: that upstream's own repository, or a view.
    let scope = match upstream {
        None => Scope::Merged,
        Some(name) => match (state.upstreams.named(&name), views.get(&name)) {
            (Some(upstream), _) => Scope::Upstream(upstream.clone()),
            (None, Some(view)) => Scope::View(view.clone()),
            (None, None) => {
                let e = ProxyError::NotFound(format!("no upstream or view named {name:?}"));
                return (error_response(&e), outcome);
            }
        },
    };
    outcome.view = scope.view().cloned();
    if matches!(route, Route::Status | Route::StatusJson) && !access.allows_status(client) {
        return (
            error_response(&ProxyError::StatusForbidden(client)),
            outcome,
        );
    }
    let (binding, token) = if route.needs_token() {
        match check_token(
            state,
            &access,
            request.headers(),
            client,
            &scope,
            &views,
            &mut outcome,
        ) {
            Ok(checked) => checked,
            Err(e) => return (error_response(&e), outcome),
        }
    } else {
        (None, None)
    };
    // Snapshots are held only while deciding, never across an upstream fetch.
    drop(views);
    drop(access);
    let method = request.method().clone();
    let (allowed, allow) = match route {
        Route::Notify | Route::Advisories | Route::FilterEntries => {
            (method == Method::POST, "POST")
        }
        _ => (method == Method::GET || method == Method::HEAD, "GET, HEAD"),
    };
    if !allowed {
        return (
            error_response(&ProxyError::MethodNotAllowed { allow }),
            outcome,
        );
    }
    let head = method == Method::HEAD;
    let asked = Asked {
        scope,
        binding,
        token,
        head,
    };
    let result = answer(state, asked, route, request, &mut outcome).await;
    match result {
        Ok((response, cache)) => {
            outcome.cache = cache;
            (response, outcome)
        }
        Err(e) => (error_response(&e), outcome),
    }
}

/// What one route answers, in the merged repository, one upstream's own or a view.
async fn answer(
    state: &Arc<AppState>,
    asked: Asked,
    route: Route,
    request: Request<Incoming>,
    outcome: &mut Outcome,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let headers = request.headers();
    let head = asked.head;
    // With one upstream, the merged repository is that upstream's, Composer 1 included.
    let single = match &asked.scope {
        Scope::Upstream(upstream) => Some(upstream.clone()),
        Scope::Merged => state.upstreams.only().cloned(),
        Scope::View(_) => None,
    };
    let view = match &asked.scope {
        Scope::View(view) => Some(view.clone()),
        Scope::Merged | Scope::Upstream(_) => None,
    };
    let served_by = |upstream: &Arc<Upstream>, outcome: &mut Outcome| {
        outcome.upstream = Some(upstream.name.clone());
    };
    if let Scope::Upstream(upstream) = &asked.scope {
        // Per route below for packages; everything else lists what a bound token may not see.
        let package = match &route {
            Route::P2 { file } => Some(file.strip_suffix("~dev").unwrap_or(file)),
            Route::V1Package { name, .. } => Some(name.as_str()),
            Route::Dist { package, .. } => Some(package.as_str()),
            Route::Notify => Some(""),
            _ => None,
        };
        if package != Some("") {
            asked.check_package(upstream, package)?;
        }
    }
    match route {
        Route::Root => {
            let (doc, cache) = match (&view, &single) {
                (Some(view), _) => {
                    let (doc, cache) = Box::pin(state.upstreams.view_root(view)).await?;
                    return Ok((view_document(headers, &doc, cache, head, view), Some(cache)));
                }
                (None, Some(upstream)) => {
                    served_by(upstream, outcome);
                    let (view, cache) = upstream.metadata.view().await?;
                    (view.root.clone(), cache)
                }
                (None, None) => Box::pin(state.upstreams.merged_root()).await?,
            };
            Ok((document(headers, &doc, cache, head), Some(cache)))
        }
        Route::P2 { file } => {
            let name = file.strip_suffix("~dev").unwrap_or(&file);
            let upstream = owner(state, single.clone(), view.as_deref(), name).await?;
            let ((doc, cache), upstream) = if single.is_some() {
                (upstream.metadata.p2_file(&file).await?, upstream)
            } else {
                let file = &file;
                Box::pin(state.upstreams.with_accounts(
                    upstream,
                    name,
                    |u| asked.allows_account(u),
                    |u| async move { u.metadata.p2_file(file).await },
                ))
                .await?
            };
            served_by(&upstream, outcome);
            let response = match &view {
                Some(view) => view_document(headers, &doc, cache, head, view),
                None => document(headers, &doc, cache, head),
            };
            Ok((response, Some(cache)))
        }
        Route::V1Listing { path } => {
            let upstream = composer1(single)?;
            served_by(&upstream, outcome);
            let doc = upstream.metadata.v1_listing(&path).await?;
            let hit = CacheStatus::Hit;
            Ok((document(headers, &doc, hit, head), Some(hit)))
        }
        Route::V1Package { name, hash } => {
            let upstream = composer1(single)?;
            served_by(&upstream, outcome);
            let doc = Box::pin(upstream.metadata.v1_package_file(&name, &hash)).await?;
            let hit = CacheStatus::Hit;
            Ok((document(headers, &doc, hit, head), Some(hit)))
        }
        Route::Dist { package, key } => {
            // Also under one upstream's own URL (where merged metadata points dists): another
            // account of the same repository serves the same archive when this one is refused.
            let upstream = owner(state, single, view.as_deref(), &package).await?;
            let (package, key) = (&package, &key);
            let ((answer, version), upstream) = Box::pin(state.upstreams.with_accounts(
                upstream,
                package,
                |u| asked.allows_account(u),
                |u| async move { archive(state, &u, headers, package, key, head).await },
            ))
            .await?;
            served_by(&upstream, outcome);
            let status = answer.0.status();
            let account = (upstream.name.clone(), Some(&*upstream));
            asked.record_download(state, status, (package, version), account);
            Ok(answer)
        }
        Route::Notify => Box::pin(notify(state, single, request))
            .await
            .map(|response| (response, None)),
        Route::Search => {
            let query = request.uri().query().unwrap_or_default();
            Box::pin(search(state, single, view.as_deref(), query)).await
        }
        Route::Advisories => {
            let (parts, body) = request.into_parts();
            Box::pin(apis::advisories(
                state,
                among(single, &view),
                &parts.headers,
                body,
            ))
            .await
        }
        Route::FilterEntries => {
            let (parts, body) = request.into_parts();
            Box::pin(apis::filter_entries(
                state,
                among(single, &view),
                &parts.headers,
                body,
            ))
            .await
        }
        Route::FilterSummary => {
            Box::pin(apis::filter_summary(
                state,
                among(single, &view),
                headers,
                head,
            ))
            .await
        }
        Route::List => {
            let query = request.uri().query().unwrap_or_default();
            Box::pin(apis::list(
                state,
                among(single, &view),
                headers,
                query,
                head,
            ))
            .await
        }
        Route::Health => Ok((
            json_response(StatusCode::OK, &json!({"status": "ok"})).map(full),
            None,
        )),
        Route::Ready => Ok((Box::pin(ready(state)).await, None)),
        Route::Metrics => Ok((Box::pin(metrics(state)).await, None)),
        Route::Status | Route::StatusJson => {
            Ok((Box::pin(status_page(state, &route, head)).await, None))
        }
        Route::ReleaseInfo { path } => {
            outcome.upstream = Some(crate::config::RELEASES_NAME.into());
            Box::pin(release_info(state, &path, head)).await
        }
        Route::ReleaseFile { name } => {
            let releases: Arc<str> = crate::config::RELEASES_NAME.into();
            outcome.upstream = Some(releases.clone());
            let answer = Box::pin(release_file(state, headers, &name, head)).await?;
            let package = format!("{}/{name}", crate::config::RELEASES_NAME);
            asked.record_download(state, answer.0.status(), (&package, None), (releases, None));
            Ok(answer)
        }
    }
}

/// The status page or its JSON. Never cached anywhere (it is a snapshot, and shows who
/// downloaded what); the policy forbids any script or outside resource, so even a value that
/// escaped escaping could load or run nothing.
async fn status_page(state: &Arc<AppState>, route: &Route, head: bool) -> Response<ResponseBody> {
    let status = crate::status::gather(state).await;
    let (body, content_type) = match route {
        Route::StatusJson => (
            serde_json::to_vec_pretty(&status).unwrap_or_default(),
            "application/json",
        ),
        _ => (
            crate::status::render(&status).into_bytes(),
            "text/html; charset=utf-8",
        ),
    };
    let length = body.len() as u64;
    let mut response = Response::new(if head { empty() } else { full(body) });
    let headers = response.headers_mut();
    set(headers, header::CONTENT_TYPE, content_type);
    set_length(headers, length);
    set(headers, header::CACHE_CONTROL, "no-store");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    response
}

/// Which upstreams the advisory, filter and list APIs answer for.
fn among(single: Option<Arc<Upstream>>, view: &Option<Arc<ClientView>>) -> Among {
    match (single, view) {
        (Some(upstream), _) => Among::One(upstream),
        (None, Some(view)) => Among::View(view.clone()),
        (None, None) => Among::All,
    }
}

/// The upstream that serves package `name`: the one asked for, the view's account for it, or
/// its owner among all.
async fn owner(
    state: &AppState,
    single: Option<Arc<Upstream>>,
    view: Option<&ClientView>,
    name: &str,
) -> Result<Arc<Upstream>, ProxyError> {
    if let Some(upstream) = single {
        return Ok(upstream);
    }
    if let Some(view) = view {
        return Box::pin(state.upstreams.account_in_view(view, name))
            .await?
            .ok_or_else(|| {
                ProxyError::NotFound(format!("{name} is not in the view {:?}", &*view.name))
            });
    }
    Box::pin(state.upstreams.owner(name))
        .await?
        .ok_or_else(|| ProxyError::NotFound(format!("no configured repository has {name}")))
}

/// Composer 1 files exist per upstream: at its own URL, or when it is the only one.
fn composer1(single: Option<Arc<Upstream>>) -> Result<Arc<Upstream>, ProxyError> {
    single.ok_or_else(|| {
        ProxyError::NotFound(
            "the merged repository and views speak Composer 2 only; Composer 1 clients use each \
             upstream's own URL"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
