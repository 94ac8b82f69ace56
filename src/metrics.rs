//! Prometheus metrics with fixed label sets: route kind, status class, cache status, upstream
//! request kind and outcome are all small enums, never a path or a Host header, so the number
//! of series is bounded whatever clients send.
//!
//! Counters and histograms are recorded as requests happen; cache sizes and the key status are
//! read from their owners when `/metrics` is scraped ([`Gauges`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod bucket;
mod changes;
mod histogram;
mod limits;
mod requests;
mod traffic;

use histogram::Histogram;

pub use bucket::{BucketMetrics, BucketOp, LeaseOutcome, UploadOutcome};
pub use changes::{ChangesMetrics, PollOutcome};
pub use limits::{LimitMetrics, NotifyOutcome};
pub use traffic::{Slot, SLOT_SECS};

#[derive(Default)]
struct Families {
    /// By (upstream name, request kind, outcome): names come from the configuration only.
    upstream: BTreeMap<(Arc<str>, &'static str, &'static str), u64>,
    upstream_duration: BTreeMap<(Arc<str>, &'static str), Histogram>,
    key_rejections: BTreeMap<(Arc<str>, usize), u64>,
}

#[derive(Default)]
pub struct Metrics {
    /// What every request updates, in shards by thread.
    requests: requests::Sharded,
    /// Upstream exchanges, far rarer than requests.
    families: Mutex<Families>,
    /// Atomics rather than `families`: they change on every accepted connection, and a
    /// connection flood must not contend on the lock requests use.
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    connections_outside_allowlist: AtomicU64,
    /// Downloads the usage record's queue had no room for: an atomic, as it is counted on
    /// the request path exactly when the proxy is busiest.
    usage_dropped: AtomicU64,
    /// The upstreams' changes feeds.
    pub changes: ChangesMetrics,
    /// Stalled responses and install notifications.
    pub limits: LimitMetrics,
    /// The shared bucket, when `object_store_url` is set.
    pub bucket: BucketMetrics,
}

/// Values owned elsewhere, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub metadata_entries: u64,
    pub metadata_bytes: u64,
    pub metadata_max_bytes: u64,
    pub archive_entries: u64,
    pub archive_bytes: u64,
    pub archive_max_bytes: u64,
    pub archive_evictions: u64,
    pub archive_single_flight_waits: u64,
    pub response_buffer_bytes: u64,
    /// Per upstream: `None` until it has answered with the keys once.
    pub key_accepted: Vec<(Arc<str>, Option<bool>)>,
    pub integrity: IntegrityGauges,
    /// Whether the bucket answers; `None` without `object_store_url`.
    pub bucket_up: Option<bool>,
    /// Served versions a known advisory covers, as of the last look; `None` before one.
    pub served_advisory_versions: Option<u64>,
}

/// The cache directory's health and the checks on stored archives.
#[derive(Clone, Copy, Debug, Default)]
pub struct IntegrityGauges {
    /// `None` when the directory cannot even be read.
    pub writable: Option<bool>,
    pub free_bytes: Option<u64>,
    pub min_free_bytes: u64,
    pub metadata_write_errors: u64,
    pub archive_write_errors: u64,
    pub temp_bytes: u64,
    pub temp_swept: u64,
    pub unstored: u64,
    pub damaged_on_serve: u64,
    pub damaged_by_scrub: u64,
    pub scrubbed_archives: u64,
    pub scrubbed_bytes: u64,
}

/// How an upstream exchange ended, for `composer_proxy_upstream_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Ok,
    NotModified,
    NotFound,
    Rejected,
    Error,
    Unreachable,
    Timeout,
}

impl UpstreamOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::NotModified => "not_modified",
            UpstreamOutcome::NotFound => "not_found",
            UpstreamOutcome::Rejected => "rejected",
            UpstreamOutcome::Error => "error",
            UpstreamOutcome::Unreachable => "unreachable",
            UpstreamOutcome::Timeout => "timeout",
        }
    }

    pub fn from_status(status: u16) -> Self {
        match status {
            200..=299 => UpstreamOutcome::Ok,
            304 => UpstreamOutcome::NotModified,
            401 | 403 => UpstreamOutcome::Rejected,
            404 | 410 => UpstreamOutcome::NotFound,
            _ => UpstreamOutcome::Error,
        }
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Families)) {
        // A poisoned lock only means a panic elsewhere mid-update; the counts stay usable.
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut families);
    }

    /// One answered request; `bytes` is what was sent, `duration` until the body ended.
    /// One answered request; `view` when it was asked in a view (one lock for both, as this
    /// runs for every request).
    pub fn record_request(
        &self,
        route: &'static str,
        status: u16,
        cache: &'static str,
        bytes: u64,
        duration: Duration,
        view: Option<&Arc<str>>,
    ) {
        self.requests.record(&requests::Answered {
            route,
            status,
            cache,
            bytes,
            duration,
            view,
        });
    }

    /// The last 24 hours of traffic up to `now`, oldest slot first.
    pub fn traffic(&self, now: SystemTime) -> Vec<Slot> {
        self.requests.traffic(now)
    }

    /// One upstream exchange (until response headers).
    pub fn record_upstream(
        &self,
        upstream: &Arc<str>,
        kind: &'static str,
        outcome: UpstreamOutcome,
        took: Duration,
    ) {
        self.with(|f| {
            *f.upstream
                .entry((upstream.clone(), kind, outcome.as_str()))
                .or_default() += 1;
            f.upstream_duration
                .entry((upstream.clone(), kind))
                .or_default()
                .observe(took);
        });
    }

    /// Upstream refused key pair number `index` of its configured list.
    pub fn record_key_rejection(&self, upstream: &Arc<str>, index: usize) {
        self.with(|f| {
            *f.key_rejections
                .entry((upstream.clone(), index))
                .or_default() += 1
        });
    }

    /// A client connection is being served; pair with [`Metrics::connection_closed`].
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A client connection turned away because `max_connections` were being served.
    pub fn record_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A download not recorded because the usage record's queue was full.
    pub fn record_usage_dropped(&self) {
        self.usage_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection from a peer neither in `allow` nor in `trusted_proxies`.
    pub fn record_connection_outside_allowlist(&self) {
        self.connections_outside_allowlist
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let requests = self.requests.total();
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut out;

        let version = [(env!("CARGO_PKG_VERSION"), 1)];
        single_label(
            out,
            "composer_proxy_build_info",
            "gauge",
            "Always 1; the version is a label.",
            "version",
            version,
        );

        unlabelled(
            out,
            "composer_proxy_connections_open",
            "gauge",
            "Client connections being served now (at most max_connections).",
            self.connections_open.load(Ordering::Relaxed),
        );
        header(
            out,
            "composer_proxy_connections_refused_total",
            "counter",
            "Client connections refused at accept: max_connections were being served, or the peer is outside the allowlist.",
        );
        let _ = writeln!(
            out,
            "composer_proxy_connections_refused_total{{reason=\"max_connections\"}} {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "composer_proxy_connections_refused_total{{reason=\"allowlist\"}} {}",
            self.connections_outside_allowlist.load(Ordering::Relaxed)
        );

        header(
            out,
            "composer_proxy_requests_total",
            "counter",
            "Requests answered, by route kind, status class and cache status.",
        );
        for ((route, class, cache), n) in &requests.requests {
            let _ = writeln!(
                out,
                "composer_proxy_requests_total{{route=\"{route}\",status=\"{class}\",cache=\"{cache}\"}} {n}"
            );
        }
        single_label(
            out,
            "composer_proxy_served_bytes_total",
            "counter",
            "Response body bytes sent to clients, by route kind.",
            "route",
            &requests.served_bytes,
        );
        header(
            out,
            "composer_proxy_request_duration_seconds",
            "histogram",
            "Time from request to the end of the response body, by route kind.",
        );
        for (route, h) in &requests.request_duration {
            h.render(
                out,
                "composer_proxy_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        header(
            out,
            "composer_proxy_view_requests_total",
            "counter",
            "Requests answered in a view (a [[view]] table), by view and status class.",
        );
        for ((view, class), n) in &requests.view_requests {
            let _ = writeln!(
                out,
                "composer_proxy_view_requests_total{{view=\"{view}\",status=\"{class}\"}} {n}"
            );
        }
        header(
            out,
            "composer_proxy_view_served_bytes_total",
            "counter",
            "Response body bytes sent in a view, by view.",
        );
        for (view, n) in &requests.view_bytes {
            let _ = writeln!(
                out,
                "composer_proxy_view_served_bytes_total{{view=\"{view}\"}} {n}"
            );
        }
        single_label(
            out,
            "composer_proxy_stale_responses_total",
            "counter",
            "Responses served from cache marked stale (revalidating, or upstream failing).",
            "route",
            &requests.stale,
        );

        header(
            out,
            "composer_proxy_upstream_requests_total",
            "counter",
            "Upstream requests by kind (metadata, archive, notify, advisories, filter, list) and outcome.",
        );
        for ((upstream, kind, outcome), n) in &families.upstream {
            let _ = writeln!(
                out,
                "composer_proxy_upstream_requests_total{{upstream=\"{upstream}\",kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        header(
            out,
            "composer_proxy_upstream_request_duration_seconds",
            "histogram",
            "Time until upstream's response headers, by request kind.",
        );
        for ((upstream, kind), h) in &families.upstream_duration {
            h.render(
                out,
                "composer_proxy_upstream_request_duration_seconds",
                &format!("upstream=\"{upstream}\",kind=\"{kind}\""),
            );
        }
        header(out, "composer_proxy_upstream_key_accepted", "gauge", "1 when upstream last accepted the key pair, 0 when it rejected it (absent before the first answer).");
        for (upstream, accepted) in &gauges.key_accepted {
            if let Some(accepted) = accepted {
                let _ = writeln!(
                    out,
                    "composer_proxy_upstream_key_accepted{{upstream=\"{upstream}\"}} {}",
                    u8::from(*accepted)
                );
            }
        }
        header(
            out,
            "composer_proxy_upstream_key_rejections_total",
            "counter",
            "Rejections of each configured key pair, by upstream and its position in that upstream's list (0 = primary).",
        );
        for ((upstream, key), n) in &families.key_rejections {
            let _ = writeln!(
                out,
                "composer_proxy_upstream_key_rejections_total{{upstream=\"{upstream}\",key=\"{key}\"}} {n}"
            );
        }

        let by_cache =
            |metadata: u64, archives: u64| [("metadata", metadata), ("archives", archives)];
        single_label(
            out,
            "composer_proxy_cache_entries",
            "gauge",
            "Entries held: metadata documents in memory, archives on disk.",
            "cache",
            by_cache(gauges.metadata_entries, gauges.archive_entries),
        );
        single_label(
            out,
            "composer_proxy_cache_bytes",
            "gauge",
            "Bytes held: metadata in memory, archives on disk.",
            "cache",
            by_cache(gauges.metadata_bytes, gauges.archive_bytes),
        );
        single_label(
            out,
            "composer_proxy_cache_max_bytes",
            "gauge",
            "Configured bound of each cache.",
            "cache",
            by_cache(gauges.metadata_max_bytes, gauges.archive_max_bytes),
        );
        single_label(
            out,
            "composer_proxy_cache_evictions_total",
            "counter",
            "Entries removed to keep a cache within its bound.",
            "cache",
            [("archives", gauges.archive_evictions)],
        );
        single_label(
            out,
            "composer_proxy_single_flight_waits_total",
            "counter",
            "Requests that joined a fetch already in progress instead of asking upstream again.",
            "kind",
            [("archive", gauges.archive_single_flight_waits)],
        );
        unlabelled(
            out,
            "composer_proxy_usage_dropped_total",
            "counter",
            "Archives served but not in the usage record: its queue was full (the disk did not keep up).",
            self.usage_dropped.load(Ordering::Relaxed),
        );
        if let Some(versions) = gauges.served_advisory_versions {
            unlabelled(
                out,
                "composer_proxy_served_versions_with_advisories",
                "gauge",
                "Package versions served within the usage record's last 30 days that a known security advisory covers, as of the last look (every 15 minutes, and on each status page view); the status page lists them.",
                versions,
            );
        }
        self.changes.render(out);
        self.limits.render(out, gauges.response_buffer_bytes);
        render_integrity(out, &gauges.integrity);
        if let Some(up) = gauges.bucket_up {
            self.bucket.render(out, up);
        }
        std::mem::take(out)
    }
}

fn render_integrity(out: &mut String, g: &IntegrityGauges) {
    header(out, "composer_proxy_cache_writable", "gauge", "1 when the cache directory takes writes (a probe file written, flushed and fsynced), 0 when not; absent when it cannot be read.");
    if let Some(writable) = g.writable {
        let _ = writeln!(out, "composer_proxy_cache_writable {}", u8::from(writable));
    }
    header(
        out,
        "composer_proxy_cache_free_bytes",
        "gauge",
        "Free space on the cache volume.",
    );
    if let Some(free) = g.free_bytes {
        let _ = writeln!(out, "composer_proxy_cache_free_bytes {free}");
    }
    header(
        out,
        "composer_proxy_cache_min_free_bytes",
        "gauge",
        "Configured free-space floor (cache_min_free_bytes).",
    );
    let _ = writeln!(
        out,
        "composer_proxy_cache_min_free_bytes {}",
        g.min_free_bytes
    );
    single_label(
        out,
        "composer_proxy_cache_write_errors_total",
        "counter",
        "Cache writes that failed (nothing was committed; the previous copy stayed).",
        "cache",
        [
            ("metadata", g.metadata_write_errors),
            ("archives", g.archive_write_errors),
        ],
    );
    header(out, "composer_proxy_cache_temp_bytes", "gauge", "Bytes in temporary files at the last sweep (downloads in progress and leftovers); they count against the archive bound.");
    let _ = writeln!(out, "composer_proxy_cache_temp_bytes {}", g.temp_bytes);
    header(
        out,
        "composer_proxy_cache_temp_swept_total",
        "counter",
        "Temporary files of dead processes removed while running.",
    );
    let _ = writeln!(
        out,
        "composer_proxy_cache_temp_swept_total {}",
        g.temp_swept
    );
    header(
        out,
        "composer_proxy_archives_unstored_total",
        "counter",
        "Archives served complete and verified but not stored: the cache write failed, or upstream sent no length and no checksum.",
    );
    let _ = writeln!(out, "composer_proxy_archives_unstored_total {}", g.unstored);
    single_label(
        out,
        "composer_proxy_archives_damaged_total",
        "counter",
        "Stored archives found damaged and removed, by who found them.",
        "found_by",
        [("serve", g.damaged_on_serve), ("scrub", g.damaged_by_scrub)],
    );
    header(
        out,
        "composer_proxy_scrub_archives_total",
        "counter",
        "Stored archives read back by the scrub.",
    );
    let _ = writeln!(
        out,
        "composer_proxy_scrub_archives_total {}",
        g.scrubbed_archives
    );
    header(
        out,
        "composer_proxy_scrub_bytes_total",
        "counter",
        "Bytes read back by the scrub.",
    );
    let _ = writeln!(out, "composer_proxy_scrub_bytes_total {}", g.scrubbed_bytes);
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one sample without labels.
fn unlabelled(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A family with one label: its header, then one sample per `(label value, value)`.
fn single_label<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) {
    header(out, name, kind, help);
    for (l, v) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

#[cfg(test)]
mod tests;
