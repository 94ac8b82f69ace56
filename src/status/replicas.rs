//! Replicas sharing a bucket say they are alive: each writes `replicas/<name>` (its name,
//! version, start and the time of writing) every [`BEAT`], and removes it when it stops. The
//! status page lists those written within [`RECENT`], so ops see how many replicas share the
//! bucket without asking the orchestrator.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use crate::bucket::{Area, Bucket};

/// How often a replica writes its object.
pub const BEAT: Duration = Duration::from_secs(60);
/// Replicas whose object is younger than this are listed.
pub const RECENT: Duration = Duration::from_secs(300);

/// One replica as its object says. The field names are the object's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub replica: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// When it last wrote its object (RFC 3339, UTC).
    pub seen: String,
}

fn now_text() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Writes this replica's object every [`BEAT`] until the task is dropped; a failed write is the
/// bucket's health to report, not this loop's.
pub async fn beat(bucket: Arc<Bucket>, replica: String) {
    let started = now_text();
    let mut ticker = tokio::time::interval(BEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if bucket.usable() {
            write(&bucket, &replica, &started).await;
        }
    }
}

async fn write(bucket: &Bucket, replica: &str, started: &str) {
    let seen = Seen {
        replica: replica.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: started.to_string(),
        seen: now_text(),
    };
    let bytes = serde_json::to_vec(&seen).unwrap_or_default();
    let _ = bucket
        .put(
            &bucket.path(Area::Replicas, replica),
            PutPayload::from(bytes),
        )
        .await;
}

/// Removes this replica's object at shutdown, so it leaves the list at once.
pub async fn leave(bucket: &Bucket, replica: &str) {
    let _ = bucket.delete(&bucket.path(Area::Replicas, replica)).await;
}

/// The replicas that wrote their object within [`RECENT`] of `now`, by name. A bucket that
/// cannot be listed gives none: its reachability is shown beside.
pub async fn seen(bucket: &Bucket, now: SystemTime) -> Vec<Seen> {
    let Ok(listed) = bucket.list(Area::Replicas, "").await else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    for (name, _) in listed {
        let Ok(Some(object)) = bucket.get(&bucket.path(Area::Replicas, &name)).await else {
            continue;
        };
        let Ok(replica) = serde_json::from_slice::<Seen>(&object.bytes) else {
            continue;
        };
        let recent = humantime::parse_rfc3339(&replica.seen)
            .is_ok_and(|at| now.duration_since(at).map_or(true, |ago| ago < RECENT));
        if recent {
            seen.push(replica);
        }
    }
    seen.sort_by(|a, b| a.replica.cmp(&b.replica));
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_that_wrote_lately_are_listed_and_leave_when_they_stop() {
        let bucket = Bucket::in_memory("status");
        let started = now_text();
        write(&bucket, "two", &started).await;
        write(&bucket, "one", &started).await;
        let listed = seen(&bucket, SystemTime::now()).await;
        let names: Vec<&str> = listed.iter().map(|s| s.replica.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(listed[0].version, env!("CARGO_PKG_VERSION"));
        // Seen from a moment past RECENT, neither is.
        let later = SystemTime::now() + RECENT + Duration::from_secs(1);
        assert!(seen(&bucket, later).await.is_empty());
        leave(&bucket, "one").await;
        let names: Vec<String> = seen(&bucket, SystemTime::now())
            .await
            .into_iter()
            .map(|s| s.replica)
            .collect();
        assert_eq!(names, ["two"]);
    }
}
