//! The operational endpoints: readiness (with its reasons) and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use http::{Response, StatusCode};
use serde_json::json;

use super::respond::set;
use super::{full, ResponseBody};
use crate::cache::{cache_verdict, CacheProbe, WriteKind};
use crate::error::json_response;
use crate::metrics::{Gauges, IntegrityGauges};
use crate::upstream::KeyVerdict;
use crate::AppState;

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
pub(super) async fn ready(state: &Arc<AppState>) -> Response<ResponseBody> {
    let mut reasons: Vec<String> = Vec::new();
    let mut degraded: Vec<String> = Vec::new();
    let probe = cache_probe(state).await;
    let recent_failure = state.archives.disk().health().recent_failure();
    match cache_verdict(
        &probe.readable,
        &probe.writable,
        probe.space,
        state.archives.min_free_bytes(),
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

pub(super) async fn metrics(state: &Arc<AppState>) -> Response<ResponseBody> {
    let metadata = state.metadata.stats().await;
    let archives = state.archives.stats();
    let probe = cache_probe(state).await;
    let health = state.archives.disk().health();
    let integrity = IntegrityGauges {
        writable: probe.readable.is_ok().then_some(probe.writable.is_ok()),
        free_bytes: probe.space.map(|s| s.available_bytes),
        min_free_bytes: state.archives.min_free_bytes(),
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
