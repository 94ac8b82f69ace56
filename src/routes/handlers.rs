//! The archive and search routes, and reading a bounded request body.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use super::respond::{etag_matches, set, set_cache_status, set_length};
use super::{empty, full, ResponseBody};
use crate::cache::archives::Archive;
use crate::cache::metadata::CacheStatus;
use crate::composer::DistSource;
use crate::error::{json_response, ProxyError};
use crate::upstream::UpstreamClient;
use crate::upstreams::Upstream;
use crate::views::ClientView;
use crate::AppState;

/// A dist, with the version it is of (for the usage record).
pub(super) async fn archive(
    state: &Arc<AppState>,
    upstream: &Arc<Upstream>,
    headers: &HeaderMap,
    package: &str,
    key: &str,
    head: bool,
) -> Result<
    (
        (Response<ResponseBody>, Option<CacheStatus>),
        Option<String>,
    ),
    ProxyError,
> {
    let source = upstream.metadata.dist_source(package, key).await?;
    // From the dist type, as the URL's extension is: GitHub's zipball URLs have none.
    let content_type = if source.is_zip {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    let answer = serve_archive(
        state,
        &upstream.client,
        &source,
        headers,
        head,
        content_type,
    )
    .await?;
    Ok((answer, source.version.clone()))
}

/// Slices of an archive held in memory handed to hyper at a time.
const MEMORY_FRAME: usize = 256 * 1024;

/// An archive held in memory, handed to hyper in slices of the one shared copy. hyper asks
/// for the next slice only once the last is on its way, and that is the progress the
/// send-stall watchdog counts: one frame of a whole large archive would end the body at once,
/// and a client that then stopped reading would never be found out.
///
/// Between slices the response yields to the runtime. Slices in memory are always ready, so
/// without it one connection whose client reads fast was written to for as long as its socket
/// took bytes, while others waited: with 64 concurrent 5 MB downloads a few responses took 3
/// to 5 times as long as nginx's slowest (whose sendfile sends at most 2 MB per turn). Files
/// read from disk yield by themselves, at every read.
fn memory_body(bytes: Bytes) -> ResponseBody {
    if bytes.len() <= MEMORY_FRAME {
        return full(bytes);
    }
    let len = bytes.len();
    let frames = futures_util::stream::unfold(0, move |at| {
        let bytes = bytes.clone();
        async move {
            if at >= len {
                return None;
            }
            if at > 0 {
                tokio::task::yield_now().await;
            }
            let end = (at + MEMORY_FRAME).min(len);
            Some((
                Ok::<_, std::io::Error>(Frame::data(bytes.slice(at..end))),
                end,
            ))
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// An archive from the store (fetched with `client` if it must be), with its ETag, 304 and
/// HEAD: dists and release files alike.
pub(super) async fn serve_archive(
    state: &Arc<AppState>,
    client: &Arc<UpstreamClient>,
    source: &DistSource,
    headers: &HeaderMap,
    head: bool,
    content_type: &'static str,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let key = source.store_key();
    // The first half of the store key, quoted; built without `fmt`, and its one buffer becomes
    // the header's.
    let mut etag = String::with_capacity(34);
    etag.push('"');
    etag.push_str(&key[..32]);
    etag.push('"');
    let not_modified = etag_matches(headers, &etag);
    let mut response = Response::new(empty());
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(etag)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok((response, Some(CacheStatus::Hit)));
    }
    let (archive, cache) = state.archives.get(client, source, key).await?;
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE, content_type);
    set_cache_status(h, cache);
    let (len, body) = match archive {
        Archive::Memory(bytes) => (Some(bytes.len() as u64), memory_body(bytes)),
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
        set_length(h, len);
    }
    if !head {
        *response.body_mut() = body;
    }
    Ok((response, Some(cache)))
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

/// Names that match the query, from the names each upstream lists (merged: every upstream's,
/// each name once; upstreams that list no names, or cannot be asked, add none).
pub(super) async fn search(
    state: &Arc<AppState>,
    single: Option<Arc<Upstream>>,
    view: Option<&ClientView>,
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
            // A view's names are those of its own upstreams that it admits.
            let among = state
                .upstreams
                .iter()
                .filter(|u| view.is_none_or(|v| v.includes(u)));
            for upstream in among {
                match upstream.metadata.search(&q).await {
                    Ok(found) => names.extend(found),
                    Err(e) => {
                        tracing::debug!(upstream = %upstream.name, error = %e, "search skipped an upstream")
                    }
                }
            }
            if let Some(view) = view {
                names.retain(|n| view.config.admits(n));
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
