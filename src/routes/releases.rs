//! The release-download routes (`releases/info/…`, `releases/file/<name>`): answered only when
//! `[downloads]` is configured; release files are served by the archive handler dists use.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Response, StatusCode};

use super::handlers::serve_archive;
use super::respond::{set, set_cache_status, set_length};
use super::{empty, full, ResponseBody};
use crate::cache::metadata::CacheStatus;
use crate::error::ProxyError;
use crate::releases::{file_error, Releases};
use crate::AppState;

fn configured(state: &AppState) -> Result<&Arc<Releases>, ProxyError> {
    state.releases.as_ref().ok_or_else(|| {
        ProxyError::NotFound(
            "release downloads are not configured on this proxy ([downloads] mage_id and token)"
                .into(),
        )
    })
}

pub(super) async fn release_info(
    state: &Arc<AppState>,
    path: &str,
    head: bool,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let (answer, cache) = configured(state)?.info(path).await?;
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    let content_type = if answer.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    set(h, header::CONTENT_TYPE, content_type);
    // The endpoint's answers are passed on as text or JSON, never sniffed into something else.
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set_length(h, answer.body.len() as u64);
    set_cache_status(h, cache);
    if !head {
        *response.body_mut() = full(answer.body.clone());
    }
    Ok((response, Some(cache)))
}

pub(super) async fn release_file(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    name: &str,
    head: bool,
) -> Result<(Response<ResponseBody>, Option<CacheStatus>), ProxyError> {
    let releases = configured(state)?;
    let source = releases
        .file_source(name)
        .await
        .map_err(|e| file_error(e, name))?;
    serve_archive(
        state,
        &releases.client,
        &source,
        headers,
        head,
        content_type(name),
    )
    .await
    .map_err(|e| file_error(e, name))
}

/// The media type of a release archive, from its name.
fn content_type(name: &str) -> &'static str {
    if name.ends_with(".zip") {
        "application/zip"
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        "application/gzip"
    } else if name.ends_with(".tar.bz2") {
        "application/x-bzip2"
    } else {
        "application/octet-stream"
    }
}
