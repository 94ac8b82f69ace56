//! The security advisory, malware filter list and package name list routes: requests are read
//! and checked here and answered by the upstreams that offer each API (`upstreams::apis`), all
//! of them in the merged repository, one in an upstream's own.

use std::sync::Arc;

use http::header::HeaderMap;
use http::Response;
use hyper::body::Incoming;

use super::handlers::read_body;
use super::respond::document;
use super::ResponseBody;
use crate::cache::metadata::CacheStatus;
use crate::composer::apis::{advisory_request, filter_request, ListQuery};
use crate::composer::Document;
use crate::error::ProxyError;
use crate::upstreams::{Among, Merged};
use crate::AppState;

/// Largest advisory or filter request body accepted: Composer sends about 40 bytes per
/// package, so this is some 25,000 packages.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;

type Answer = Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError>;

/// `POST` of `packages[]=a/b&…`: `{"advisories": {"a/b": [ … ]}}`.
pub(super) async fn advisories(
    state: &Arc<AppState>,
    among: Among,
    headers: &HeaderMap,
    body: Incoming,
) -> Answer {
    let body = read_body(state, body, MAX_API_BODY_BYTES).await?;
    let names = advisory_request(&body)
        .map_err(|why| ProxyError::BadRequest(format!("security advisory request: {why}")))?;
    answer(
        headers,
        state.upstreams.advisories(among, &names).await?,
        false,
    )
}

/// `POST` of `{"packages": ["pkg://composer/a/b", …], "lists": […]}`:
/// `{"filter": {list: [entries]}}`.
pub(super) async fn filter_entries(
    state: &Arc<AppState>,
    among: Among,
    headers: &HeaderMap,
    body: Incoming,
) -> Answer {
    let body = read_body(state, body, MAX_API_BODY_BYTES).await?;
    let (names, lists) = filter_request(&body)
        .map_err(|why| ProxyError::BadRequest(format!("filter list request: {why}")))?;
    let merged = state
        .upstreams
        .filter_entries(among, &names, &lists)
        .await?;
    answer(headers, merged, false)
}

/// `{"filter": {list: {name: constraint}}}`.
pub(super) async fn filter_summary(
    state: &Arc<AppState>,
    among: Among,
    headers: &HeaderMap,
    head: bool,
) -> Answer {
    answer(headers, state.upstreams.filter_summary(among).await?, head)
}

/// `{"packageNames": [ … ]}` for `?filter=`, `?vendor=`, `?type=`.
pub(super) async fn list(
    state: &Arc<AppState>,
    among: Among,
    headers: &HeaderMap,
    query: &str,
    head: bool,
) -> Answer {
    let query = ListQuery::parse(query);
    answer(
        headers,
        state.upstreams.package_names(among, &query).await?,
        head,
    )
}

/// A merged answer as a document: gzip when accepted, `Last-Modified` from its newest part
/// (so a client revalidating the summary gets a 304 until an upstream was asked again).
fn answer(headers: &HeaderMap, (value, cache, fetched): Merged, head: bool) -> Answer {
    let doc = Document::from_json(&value, fetched);
    Ok((document(headers, &doc, cache, head), Some(cache)))
}
