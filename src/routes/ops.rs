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
/// How one upstream is doing, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Health {
    Ok,
    /// Served from cache, or partly: the reason says why.
    Degraded(String),
    /// Nothing of it can be served.
    Down(String),
}

impl Health {
    fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded(_) => "degraded",
            Health::Down(_) => "down",
        }
    }
}

/// An upstream's health from what is known of it. Pure.
///
/// An unreachable upstream whose metadata is cached is degraded, not down: serving from cache
/// is the proxy's job. A rejected key pair is down unless the stale policy serves the cache.
fn upstream_health(
    rejected: bool,
    stale_on_rejection: bool,
    failing_for: Option<Duration>,
    misbehaving_for: Option<Duration>,
    metadata: Result<(), String>,
) -> Health {
    if rejected {
        return if stale_on_rejection {
            Health::Degraded("rejected the key pair; serving cached data".into())
        } else {
            Health::Down("rejected the key pair".into())
        };
    }
    // Answering garbage is not being unreachable: the reason says which it is.
    let failing = failing_for
        .map(|d| format!("unreachable or failing for {} s", d.as_secs()))
        .or_else(|| {
            misbehaving_for.map(|d| {
                format!(
                    "answering with metadata composer-proxy cannot use for {} s",
                    d.as_secs()
                )
            })
        });
    match (metadata, failing) {
        (Ok(()), Some(failing)) => Health::Degraded(format!("{failing}; serving from cache")),
        (Err(_), Some(failing)) => Health::Down(failing),
        (Err(e), None) => Health::Down(format!("no metadata: {e}")),
        (Ok(()), None) => Health::Ok,
    }
}

/// Ready means: the cache directory can be read, and upstream metadata is at hand from an
/// upstream that has not rejected the key pair: from the one upstream, or from at least one
/// of several. An unreachable upstream alone does not make the proxy unready while it has a
/// cache to serve from (that is its job), nor does one of several being down while the others
/// serve, nor a cache that takes no writes or is short of space while archives can stream
/// through: all are reported as degraded, with their reasons.
pub(super) async fn ready(state: &Arc<AppState>) -> Response<ResponseBody> {
    let (status, body) = readiness(state).await;
    json_response(status, &body).map(full)
}

/// `/readyz`'s status and body; the status page shows exactly this, so the two never disagree.
pub(crate) async fn readiness(state: &Arc<AppState>) -> (StatusCode, serde_json::Value) {
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
    let mut upstreams = serde_json::Map::new();
    let mut down = Vec::new();
    let mut packages = 0;
    for upstream in state.upstreams.iter() {
        let view = upstream.metadata.view().await;
        let rejected = upstream.client.key_verdict() == KeyVerdict::Rejected;
        let mut health = upstream_health(
            rejected,
            upstream.metadata.stale_on_key_rejection(),
            upstream.client.down_for(),
            upstream.client.misbehaving_for(),
            view.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        // With several upstreams, what the rejection costs: which packages now fail.
        if let (true, Health::Down(why)) = (rejected && state.upstreams.len() > 1, &mut health) {
            why.push_str("; ");
            why.push_str(&state.upstreams.rejected_account_cost(upstream));
        }
        let mut entry = json!({"status": health.as_str()});
        if let Ok((view, _)) = &view {
            packages += view.names().len();
            entry["packages"] = json!(view.names().len());
            entry["composer1"] = json!(upstream.metadata.v1_ready());
        }
        // The flat configuration's one upstream is just "upstream", as it always was.
        let who = if upstream.named {
            format!("upstream {:?}", &*upstream.name)
        } else {
            "upstream".to_string()
        };
        match &health {
            Health::Ok => {}
            Health::Degraded(why) => {
                entry["reason"] = json!(why);
                degraded.push(format!("{who} {why}"));
            }
            Health::Down(why) => {
                entry["reason"] = json!(why);
                down.push(format!("{who} {why}"));
            }
        }
        upstreams.insert(upstream.name.to_string(), entry);
    }
    // Without the bucket, archives still come from the local tiers and upstream.
    if let Some(bucket) = &state.bucket {
        if !bucket.check().await {
            degraded.push(format!(
                "bucket {} unreachable or failing; archives are served from the local tiers and fetched from upstream without being stored in it, and client tokens are checked against the last copy read",
                bucket.describe()
            ));
        }
    }
    // Release downloads are an extra: at worst a degradation, whatever their state.
    let releases = state
        .releases
        .as_ref()
        .map(|releases| match releases.degraded() {
            None => json!({"status": "ok"}),
            Some(why) => {
                degraded.push(format!("release downloads: {why}"));
                json!({"status": "degraded", "reason": why})
            }
        });
    // Some upstreams serve: the others are a degradation, not a reason to stop taking traffic.
    if down.len() < state.upstreams.len() {
        degraded.extend(down);
    } else {
        reasons.extend(down);
    }
    let (status, mut body) = if reasons.is_empty() {
        let mut body = json!({"status": "ready", "packages": packages, "upstreams": upstreams});
        if let Some(only) = state.upstreams.only() {
            body["composer1"] = json!(only.metadata.v1_ready());
        }
        if !degraded.is_empty() {
            body["degraded"] = json!(degraded.join("; "));
        }
        (StatusCode::OK, body)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reason": reasons.join("; "), "upstreams": upstreams}),
        )
    };
    if let Some(releases) = releases {
        body["releases"] = releases;
    }
    (status, body)
}

pub(crate) async fn cache_probe(state: &Arc<AppState>) -> CacheProbe {
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
    let metadata = state.upstreams.metadata_stats().await;
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
        response_buffer_bytes: archives.response_buffer_bytes,
        key_accepted: state
            .upstreams
            .iter()
            .map(|u| {
                let accepted = match u.client.key_verdict() {
                    KeyVerdict::Accepted => Some(true),
                    KeyVerdict::Rejected => Some(false),
                    KeyVerdict::Unknown => None,
                };
                (u.name.clone(), accepted)
            })
            .collect(),
        integrity,
        bucket_up: state.bucket.as_ref().map(|b| b.down_for().is_none()),
        served_advisory_versions: state.status.advisories.affected_versions(),
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
    fn an_upstream_with_a_cache_is_degraded_when_failing_and_down_without_one() {
        let minute = Some(Duration::from_secs(60));
        assert_eq!(
            upstream_health(false, false, None, None, Ok(())),
            Health::Ok
        );
        assert!(matches!(
            upstream_health(false, false, minute, None, Ok(())),
            Health::Degraded(_)
        ));
        assert!(matches!(
            upstream_health(false, false, minute, None, Err("x".into())),
            Health::Down(_)
        ));
        assert!(matches!(
            upstream_health(false, false, None, None, Err("x".into())),
            Health::Down(_)
        ));
    }

    #[test]
    fn a_rejected_key_pair_is_down_unless_the_cache_may_be_served() {
        assert_eq!(
            upstream_health(true, false, None, None, Ok(())),
            Health::Down("rejected the key pair".into())
        );
        assert!(matches!(
            upstream_health(true, true, None, None, Ok(())),
            Health::Degraded(_)
        ));
    }

    #[test]
    fn an_upstream_answering_garbage_is_not_called_unreachable() {
        let minute = Some(Duration::from_secs(60));
        let Health::Degraded(why) = upstream_health(false, false, None, minute, Ok(())) else {
            panic!("degraded while the cache serves");
        };
        assert!(
            why.contains("cannot use") && !why.contains("unreachable"),
            "{why}"
        );
        let Health::Down(why) = upstream_health(false, false, None, minute, Err("x".into())) else {
            panic!("down without metadata");
        };
        assert!(
            why.contains("cannot use") && !why.contains("unreachable"),
            "{why}"
        );
    }
}
