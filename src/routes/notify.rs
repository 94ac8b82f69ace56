//! Install notifications: Composer's statistics ping after an install, accepted at once and
//! forwarded upstream in the background, so it can never fail or slow down an install.
//!
//! Everything about them is bounded, since each forward carries the organisation's keys and
//! costs memory until it is sent: bodies are small JSON only, forwards wait in a queue of
//! [`QUEUE`] (a notification arriving when it is full is dropped and counted), and at most
//! [`FORWARDERS`] are sent upstream at a time.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{full, ResponseBody};
use crate::error::{json_response, ProxyError};
use crate::metrics::NotifyOutcome;
use crate::upstream::RequestKind;
use crate::upstreams::Upstream;
use crate::AppState;

/// Largest install-notification body accepted. Composer sends under a hundred bytes per
/// package installed, so even a project of several hundred packages stays well below.
pub const MAX_NOTIFY_BYTES: usize = 64 * 1024;
/// Notifications accepted and not yet forwarded, at most; with [`MAX_NOTIFY_BYTES`] this
/// bounds their memory to 4 MiB.
const QUEUE: usize = 64;
/// Forwards in flight upstream at once.
const FORWARDERS: usize = 4;

/// The queue of forwards and the upstream requests they may make.
pub struct Notifications {
    queued: Arc<Semaphore>,
    sending: Arc<Semaphore>,
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            queued: Arc::new(Semaphore::new(QUEUE)),
            sending: Arc::new(Semaphore::new(FORWARDERS)),
        }
    }
}

/// Checks and reads the notification, then queues its forward. Its body is bounded in size and
/// in time (`client_body_timeout_secs`) and must be JSON; anything else is not a ping from
/// Composer. In the merged repository the downloads are split by owning upstream, and each
/// upstream that takes notifications gets its own.
pub(super) async fn notify(
    state: &Arc<AppState>,
    single: Option<Arc<Upstream>>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let refused = |e: ProxyError| {
        state
            .metrics
            .limits
            .record_notification(NotifyOutcome::Refused);
        e
    };
    let (parts, body) = request.into_parts();
    let payload = read_body(state, &parts.headers, body)
        .await
        .map_err(refused)?;
    let Some(permit) = state.notifications.queued.clone().try_acquire_owned().ok() else {
        state
            .metrics
            .limits
            .record_notification(NotifyOutcome::Dropped);
        tracing::debug!("install notification queue full; dropped");
        return Ok(accepted());
    };
    state
        .metrics
        .limits
        .record_notification(NotifyOutcome::Queued);
    let state = state.clone();
    tokio::spawn(async move {
        let _queued = permit;
        match single {
            Some(upstream) => forward_notification(&state, &upstream, payload).await,
            None => split_notification(&state, &payload).await,
        }
    });
    Ok(accepted())
}

/// What Composer is told whether or not the notification will be forwarded: it is statistics.
fn accepted() -> Response<ResponseBody> {
    json_response(StatusCode::OK, &json!({"status": "success"})).map(full)
}

async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ProxyError> {
    // Composer says `application/json`; a client that names another type is not Composer.
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let json = kind.to_str().ok().is_some_and(|k| {
            let essence = k.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        });
        if !json {
            return Err(ProxyError::UnsupportedMediaType);
        }
    }
    let payload = super::handlers::read_body(state, body, MAX_NOTIFY_BYTES).await?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return Err(ProxyError::BadRequest(
            "an install notification must be JSON".into(),
        ));
    }
    Ok(payload)
}

/// Sends each owning upstream the downloads of its packages. Owners come from the same rule
/// as everything else (from cache, for packages just installed); a package whose owner cannot
/// be told is left out.
async fn split_notification(state: &AppState, payload: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(payload) else {
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
        forward_notification(state, &upstream, bytes.into()).await;
    }
}

async fn forward_notification(state: &AppState, upstream: &Upstream, payload: Bytes) {
    let Some(url) = upstream.metadata.notify_url().await else {
        return;
    };
    // Closed never: the semaphore lives as long as the state.
    let Ok(_sending) = state.notifications.sending.acquire().await else {
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
