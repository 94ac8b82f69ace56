//! Counters of the shared bucket (`object_store_url`): whether it answers, archive lookups in
//! it, uploads and their outcomes, errors by operation, and the cross-replica leases.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{header, single_label};

/// What became of a verified archive offered to the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    Created,
    /// Another replica stored it first: as good as created.
    Exists,
    /// Not offered: the bucket was unreachable, or the archive too large for one PUT.
    Skipped,
    Failed,
}

/// A bucket operation that failed (for `composer_proxy_bucket_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketOp {
    Get,
    Put,
    Delete,
    List,
    Probe,
}

/// How a replica came to fetch an archive upstream, or not, under the cross-replica lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This replica took the lease and fetched.
    Acquired,
    /// Another replica held it and the archive appeared in the bucket while waiting.
    Waited,
    /// The holder's lease expired (or it never stored the archive): fetched after all.
    TakenOver,
    /// No lease could be had or read (bucket failing): fetched without one.
    Unavailable,
}

#[derive(Default)]
pub struct BucketMetrics {
    hits: AtomicU64,
    misses: AtomicU64,
    uploads: [AtomicU64; 4],
    errors: [AtomicU64; 5],
    leases: [AtomicU64; 4],
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl BucketMetrics {
    /// An archive missing locally looked up in the bucket: found (`true`) or not.
    pub fn record_lookup(&self, found: bool) {
        bump(if found { &self.hits } else { &self.misses });
    }

    pub fn record_upload(&self, outcome: UploadOutcome) {
        bump(&self.uploads[outcome as usize]);
    }

    pub fn record_error(&self, op: BucketOp) {
        bump(&self.errors[op as usize]);
    }

    pub fn record_lease(&self, outcome: LeaseOutcome) {
        bump(&self.leases[outcome as usize]);
    }

    /// Rendered only when a bucket is configured: `up` is whether it answers now.
    pub(super) fn render(&self, out: &mut String, up: bool) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(
            out,
            "composer_proxy_bucket_up",
            "gauge",
            "1 when the bucket (object_store_url) answered the last request, 0 while it fails (archives then come from the local tiers or upstream, unstored in it).",
        );
        let _ = writeln!(out, "composer_proxy_bucket_up {}", u8::from(up));
        single_label(
            out,
            "composer_proxy_bucket_lookups_total",
            "counter",
            "Archives missing locally looked up in the bucket, by result.",
            "result",
            [("hit", load(&self.hits)), ("miss", load(&self.misses))],
        );
        single_label(
            out,
            "composer_proxy_bucket_uploads_total",
            "counter",
            "Verified archives offered to the bucket, by outcome (exists: another replica stored it first).",
            "outcome",
            [
                ("created", load(&self.uploads[UploadOutcome::Created as usize])),
                ("exists", load(&self.uploads[UploadOutcome::Exists as usize])),
                ("skipped", load(&self.uploads[UploadOutcome::Skipped as usize])),
                ("failed", load(&self.uploads[UploadOutcome::Failed as usize])),
            ],
        );
        single_label(
            out,
            "composer_proxy_bucket_errors_total",
            "counter",
            "Bucket requests that failed, by operation.",
            "op",
            [
                ("get", load(&self.errors[BucketOp::Get as usize])),
                ("put", load(&self.errors[BucketOp::Put as usize])),
                ("delete", load(&self.errors[BucketOp::Delete as usize])),
                ("list", load(&self.errors[BucketOp::List as usize])),
                ("probe", load(&self.errors[BucketOp::Probe as usize])),
            ],
        );
        single_label(
            out,
            "composer_proxy_bucket_leases_total",
            "counter",
            "Cold archive fetches under the cross-replica lease, by how this replica came to fetch or not.",
            "outcome",
            [
                ("acquired", load(&self.leases[LeaseOutcome::Acquired as usize])),
                ("waited", load(&self.leases[LeaseOutcome::Waited as usize])),
                ("taken_over", load(&self.leases[LeaseOutcome::TakenOver as usize])),
                ("unavailable", load(&self.leases[LeaseOutcome::Unavailable as usize])),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_under_their_labels() {
        let m = BucketMetrics::default();
        m.record_lookup(true);
        m.record_lookup(false);
        m.record_lookup(false);
        m.record_upload(UploadOutcome::Exists);
        m.record_error(BucketOp::Probe);
        m.record_lease(LeaseOutcome::TakenOver);
        let mut out = String::new();
        m.render(&mut out, false);
        for expected in [
            "composer_proxy_bucket_up 0\n",
            "composer_proxy_bucket_lookups_total{result=\"hit\"} 1\n",
            "composer_proxy_bucket_lookups_total{result=\"miss\"} 2\n",
            "composer_proxy_bucket_uploads_total{outcome=\"exists\"} 1\n",
            "composer_proxy_bucket_uploads_total{outcome=\"created\"} 0\n",
            "composer_proxy_bucket_errors_total{op=\"probe\"} 1\n",
            "composer_proxy_bucket_leases_total{outcome=\"taken_over\"} 1\n",
        ] {
            assert!(out.contains(expected), "missing {expected} in\n{out}");
        }
    }
}
