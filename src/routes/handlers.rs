//! The archive, install-notification and search routes.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use super::respond::{etag_matches, set};
use super::{empty, full, ResponseBody};
use crate::cache::archives::{Archive, ArchiveStore};
use crate::cache::metadata::CacheStatus;
use crate::composer::DistSource;
use crate::error::{json_response, ProxyError};
use crate::upstream::{RequestKind, UpstreamClient};
use crate::upstreams::Upstream;
use crate::AppState;

/// Largest install-notification body accepted; Composer sends a few hundred bytes per package.
pub const MAX_NOTIFY_BYTES: usize = 1024 * 1024;

pub(super) async fn archive(
    state: &Arc<AppState>,
    upstream: &Arc<Upstream>,
    headers: &HeaderMap,
    package: &str,
    key: &str,
    head: bool,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let source = upstream.metadata.dist_source(package, key).await?;
    // From the dist type, as the URL's extension is: GitHub's zipball URLs have none.
    let content_type = if source.is_zip {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    serve_archive(
        state,
        &upstream.client,
        &source,
        headers,
        head,
        content_type,
    )
    .await
}

/// An archive from the store (fetched with `client` if it must be), with its ETag, 304 and
/// HEAD: dists and release files alike.
pub(super) async fn serve_archive(
    state: &Arc<AppState>,
    client: &Arc<UpstreamClient>,
    source: &DistSource,
    headers: &HeaderMap,
    head: bool,
    content_type: &str,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let key = ArchiveStore::store_key(source);
    let etag = format!("\"{}\"", &key[..32]);
    let mut response = Response::new(empty());
    let h = response.headers_mut();
    set(h, header::ETAG, &etag);
    if etag_matches(headers, &etag) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok((response, Some(CacheStatus::Hit)));
    }
    let (archive, cache) = state.archives.get(client, source, &key).await?;
    let h = response.headers_mut();
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
/// time (`client_body_timeout_secs`); anything else is not a ping from Composer. In the merged
/// repository the downloads are split by owning upstream, and each upstream that takes
/// notifications gets its own.
pub(super) async fn notify(
    state: &Arc<AppState>,
    single: Option<Arc<Upstream>>,
    body: Incoming,
) -> Result<Response<ResponseBody>, ProxyError> {
    let payload = read_body(state, body, MAX_NOTIFY_BYTES).await?;
    let state = state.clone();
    tokio::spawn(async move {
        match single {
            Some(upstream) => forward_notification(&upstream, payload).await,
            None => split_notification(&state, &payload).await,
        }
    });
    Ok(json_response(StatusCode::OK, &json!({"status": "success"})).map(full))
}

/// Reads a whole request body of at most `limit` bytes within `client_body_timeout_secs`.
pub(super) async fn read_body(
    state: &AppState,
    body: Incoming,
    limit: usize,
) -> Result<bytes::Bytes, ProxyError> {
    let too_large = ProxyError::BodyTooLarge { limit };
    // A declared length is checked before any byte is read (and before hyper would send a
    // `100 Continue`), so the body is never transferred.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large);
    }
    let timeout = state.client_limits.body_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body unreadable");
            Err(ProxyError::BadRequest(
                "the request body could not be read".into(),
            ))
        }
        Err(_) => Err(ProxyError::BodyTimeout(timeout)),
    }
}

/// Sends each owning upstream the downloads of its packages. Owners come from the same rule
/// as everything else (from cache, for packages just installed); a package whose owner cannot
/// be told is left out.
async fn split_notification(state: &AppState, payload: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(payload) else {
        tracing::debug!("install notification is not JSON; not forwarded");
        return;
    };
    let Some(downloads) = body.get("downloads").and_then(|d| d.as_array()) else {
        return;
    };
    let mut by_owner: Vec<(Arc<Upstream>, Vec<serde_json::Value>)> = Vec::new();
    for download in downloads {
        let Some(name) = download.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let Ok(Some(owner)) = state.upstreams.owner(&name.to_ascii_lowercase()).await else {
            continue;
        };
        match by_owner.iter_mut().find(|(u, _)| Arc::ptr_eq(u, &owner)) {
            Some((_, list)) => list.push(download.clone()),
            None => by_owner.push((owner, vec![download.clone()])),
        }
    }
    for (upstream, list) in by_owner {
        let part = json!({ "downloads": list });
        let bytes = serde_json::to_vec(&part).unwrap_or_default();
        forward_notification(&upstream, bytes.into()).await;
    }
}

async fn forward_notification(upstream: &Upstream, payload: bytes::Bytes) {
    let Some(url) = upstream.metadata.notify_url().await else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match upstream
        .client
        .send(RequestKind::Notify, Method::POST, &url, headers, payload)
        .await
    {
        Ok(r) if r.status.is_success() => {
            tracing::debug!(upstream = %upstream.name, "install notification forwarded")
        }
        Ok(r) => {
            tracing::warn!(upstream = %upstream.name, status = %r.status, "upstream refused the install notification")
        }
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, error = %e, "install notification not forwarded")
        }
    }
}

/// Names that match the query, from the names each upstream lists (merged: every upstream's,
/// each name once; upstreams that list no names, or cannot be asked, add none).
pub(super) async fn search(
    state: &Arc<AppState>,
    single: Option<Arc<Upstream>>,
    query: &str,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let q = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let names = match single {
        Some(upstream) => upstream.metadata.search(&q).await?,
        None => {
            let mut names = Vec::new();
            for upstream in state.upstreams.iter() {
                match upstream.metadata.search(&q).await {
                    Ok(found) => names.extend(found),
                    Err(e) => {
                        tracing::debug!(upstream = %upstream.name, error = %e, "search skipped an upstream")
                    }
                }
            }
            names.sort();
            names.dedup();
            names.truncate(1000);
            names
        }
    };
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
