//! The status page (`/status`, HTML) and its facts (`/status.json`): what ops ask of a running
//! proxy and `/readyz` or Prometheus do not answer at a glance. Which account was cut off, since
//! when, and what that costs; who pulled what; which served versions have known advisories;
//! storage; traffic. Gathered from the running state without asking upstream anything, except
//! the advisory lookups of served versions, whose answers the proxy remembers anyway.
//!
//! Read-only by construction: the page has no form and no script, and every action stays in
//! the CLI. It never holds a secret: tokens appear by name, upstreams by URL without user
//! information, and errors in the words the log uses, which never carry keys.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::cache::metadata::FeedStatus;
use crate::metrics::{Slot, SLOT_SECS};
use crate::upstream::KeyVerdict;
use crate::usage::report::{gather as gather_usage, Filter};
use crate::usage::Line;
use crate::AppState;

pub mod advisories;
mod chart;
pub mod downloads;
mod page;
pub mod replicas;

pub use page::render;

/// A moment, written as RFC 3339 UTC in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub SystemTime);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(self.0))
    }
}

/// Something that went wrong, and when.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub at: Time,
    pub text: String,
}

/// Everything the page shows; `/status.json` is this.
#[derive(Debug, Serialize)]
pub struct Status {
    pub generated: Time,
    pub version: &'static str,
    pub public_url: String,
    /// `/readyz`'s HTTP status and body, exactly: the two never disagree.
    pub readiness_status: u16,
    pub readiness: Value,
    pub upstreams: Vec<UpstreamStatus>,
    pub views: Vec<ViewStatus>,
    pub tokens: Tokens,
    pub downloads: Downloads,
    pub advisories: Arc<advisories::Found>,
    pub storage: Storage,
    pub traffic: Traffic,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// Without user information: keys never appear here.
    pub url: String,
    /// `ok`, `degraded` or `down`, and why, as `/readyz` says.
    pub health: String,
    pub reason: Option<String>,
    /// `accepted`, `rejected`, `unknown` (not asked yet) or `none` (no keys configured).
    pub credentials: &'static str,
    pub credentials_since: Option<Time>,
    /// The last time upstream answered for its root in this process.
    pub last_refresh: Option<Time>,
    pub last_refresh_error: Option<Event>,
    /// The last failure of any request to it, in words.
    pub last_error: Option<Event>,
    pub failing_since: Option<Time>,
    pub misbehaving_since: Option<Time>,
    /// Names its last listing has; `None` before one was seen.
    pub packages: Option<usize>,
    /// Whether the listing is complete (open-ended repositories such as packagist.org have
    /// none: they answer for any name).
    pub listed: bool,
    /// Names no other account of its repository lists: what losing its keys would cost.
    pub only_here: Option<OnlyHere>,
    pub feed: Option<Feed>,
}

#[derive(Debug, Serialize)]
pub struct OnlyHere {
    pub count: usize,
    /// The first few, by name.
    pub names: Vec<String>,
}

/// Names of `only_here` listed on the page.
const ONLY_HERE_SHOWN: usize = 20;

#[derive(Debug, Serialize)]
pub struct Feed {
    pub position: Option<u64>,
    /// Seconds since it last answered.
    pub lag_secs: Option<u64>,
    pub vouching: bool,
    pub awaited: usize,
}

impl From<FeedStatus> for Feed {
    fn from(f: FeedStatus) -> Self {
        Feed {
            position: f.position,
            lag_secs: f.answered_ago.map(|d| d.as_secs()),
            vouching: f.vouching,
            awaited: f.awaited,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ViewStatus {
    pub name: String,
    pub url: String,
    /// The line that points a project at it.
    pub composer_config: String,
    pub upstreams: Vec<ViewMember>,
    pub tokens: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ViewMember {
    pub name: String,
    /// Names it brings into the view; `None`: open-ended, decided name by name.
    pub packages: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Tokens {
    /// Where they are kept (a path, or the bucket's object).
    pub location: String,
    pub require_tokens: bool,
    pub error: Option<String>,
    pub list: Vec<TokenStatus>,
}

/// A token as `tokens list` shows it: never its secret or its hash.
#[derive(Debug, Serialize)]
pub struct TokenStatus {
    pub name: String,
    pub state: &'static str,
    pub created: String,
    pub last_used: Option<Time>,
    /// Empty: organisation-wide.
    pub views: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Downloads {
    /// `None`: the usage record is off.
    pub retention_days: Option<u64>,
    pub replicas: usize,
    pub error: Option<String>,
    #[serde(flatten)]
    pub summary: downloads::Summary,
}

#[derive(Debug, Serialize)]
pub struct Storage {
    pub cache_dir: String,
    pub archive_bytes: u64,
    pub archive_max_bytes: u64,
    pub archive_entries: u64,
    pub metadata_bytes: u64,
    pub metadata_max_bytes: u64,
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub min_free_bytes: u64,
    pub writable: bool,
    pub memory_bytes: u64,
    pub memory_max_bytes: u64,
    pub memory_entries: u64,
    pub response_buffer_bytes: u64,
    pub bucket: Option<BucketStatus>,
    pub scrub: Scrub,
}

#[derive(Debug, Serialize)]
pub struct BucketStatus {
    pub url: String,
    pub reachable: bool,
    pub failing_since: Option<Time>,
    pub replicas: Vec<replicas::Seen>,
}

#[derive(Debug, Serialize)]
pub struct Scrub {
    /// Seconds between passes; `None`: the scrub is off.
    pub interval_secs: Option<u64>,
    pub last: Option<ScrubPass>,
}

#[derive(Debug, Serialize)]
pub struct ScrubPass {
    pub finished: Time,
    pub took_secs: u64,
    pub checked: u64,
    pub bytes: u64,
    pub damaged: u64,
}

#[derive(Debug, Serialize)]
pub struct Traffic {
    pub slot_secs: u64,
    pub slots: Vec<Slot>,
}

/// The moment `ago` before `now`.
fn before(now: SystemTime, ago: Option<Duration>) -> Option<Time> {
    ago.and_then(|d| now.checked_sub(d)).map(Time)
}

fn event((at, text): (SystemTime, String)) -> Event {
    Event { at: Time(at), text }
}

/// The URL with any user information taken out.
fn without_userinfo(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// The usage record's lines of the last 30 days: disk, and the bucket when there is one.
async fn usage_lines(state: &AppState) -> (Vec<Line>, usize, Option<String>) {
    let Some(settings) = state.usage.settings() else {
        return (Vec::new(), 0, None);
    };
    let since = SystemTime::now().checked_sub(downloads::WINDOWS[2].1);
    let filter = Filter {
        since,
        ..Filter::default()
    };
    match gather_usage(&settings.dir, state.usage.bucket(), &filter).await {
        Ok(gathered) => (gathered.lines, gathered.replicas, None),
        Err(e) => (Vec::new(), 0, Some(e.to_string())),
    }
}

/// What the page reads of the usage record, condensed: the lines themselves (30 days can be
/// millions) are held only while they are counted.
#[derive(Debug)]
pub struct UsageFacts {
    pub summary: downloads::Summary,
    pub served: advisories::ServedVersions,
    pub replicas: usize,
    pub error: Option<String>,
}

/// How long the condensed usage record is reused: a page reloaded by several people reads the
/// record once, and a download shows within this long.
const USAGE_REUSE: Duration = Duration::from_secs(5);

/// The costly parts of the page, gathered one at a time and reused: the usage record and the
/// advisory lookups of what it says was served.
#[derive(Default)]
pub struct Cache {
    usage: tokio::sync::Mutex<Option<(Instant, Arc<UsageFacts>)>>,
    pub advisories: advisories::Scan,
}

impl Cache {
    async fn usage(&self, state: &AppState) -> Arc<UsageFacts> {
        let mut last = self.usage.lock().await;
        if let Some((at, facts)) = &*last {
            if at.elapsed() < USAGE_REUSE {
                return facts.clone();
            }
        }
        let (lines, replicas, error) = usage_lines(state).await;
        let facts = Arc::new(UsageFacts {
            summary: downloads::summarise(&lines, SystemTime::now()),
            served: advisories::served(&lines),
            replicas,
            error,
        });
        *last = Some((Instant::now(), facts.clone()));
        facts
    }
}

/// The advisories of served versions, for the background pass that keeps the metric current.
pub async fn scan_served(state: &AppState) {
    let usage = state.status.usage(state).await;
    state.status.advisories.run(state, &usage.served).await;
}

fn upstream_status(state: &AppState, readiness: &Value, now: SystemTime) -> Vec<UpstreamStatus> {
    state
        .upstreams
        .iter()
        .map(|u| {
            let ready = &readiness["upstreams"][&*u.name];
            let last_view = u.metadata.last_view();
            let refreshes = u.metadata.refreshes();
            let credentials = match (u.client.has_credentials(), u.client.key_verdict()) {
                (false, _) => "none",
                (true, KeyVerdict::Accepted) => "accepted",
                (true, KeyVerdict::Rejected) => "rejected",
                (true, KeyVerdict::Unknown) => "unknown",
            };
            let listed = last_view
                .as_ref()
                .is_some_and(|v| v.finite_names().is_some());
            let only_here = listed
                .then(|| state.upstreams.only_listed_by(u))
                .flatten()
                .map(|names| OnlyHere {
                    count: names.len(),
                    names: names.into_iter().take(ONLY_HERE_SHOWN).collect(),
                });
            UpstreamStatus {
                name: u.name.to_string(),
                url: without_userinfo(u.client.base()),
                health: ready["status"].as_str().unwrap_or("unknown").to_string(),
                reason: ready["reason"].as_str().map(str::to_string),
                credentials,
                credentials_since: u.client.key_verdict_since().map(Time),
                last_refresh: refreshes.succeeded.map(Time),
                last_refresh_error: refreshes.failed.map(event),
                last_error: u.client.last_error().map(event),
                failing_since: before(now, u.client.down_for()),
                misbehaving_since: before(now, u.client.misbehaving_for()),
                packages: last_view.as_ref().map(|v| v.names().len()),
                listed,
                only_here,
                feed: u.metadata.feed_status().map(Feed::from),
            }
        })
        .collect()
}

async fn tokens(state: &AppState) -> Tokens {
    let (list, error) = match state.tokens.listing().await {
        Ok((records, used)) => {
            let list = records
                .into_iter()
                .map(|t| TokenStatus {
                    last_used: used
                        .get(&t.sha256)
                        .map(|secs| Time(SystemTime::UNIX_EPOCH + Duration::from_secs(*secs))),
                    name: t.name,
                    state: t.state.as_str(),
                    created: t.created,
                    views: t.views,
                })
                .collect();
            (list, None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Tokens {
        location: state.tokens.location(),
        require_tokens: state.access().require_tokens,
        error,
        list,
    }
}

fn views(state: &AppState, tokens: &Tokens) -> Vec<ViewStatus> {
    state
        .views()
        .iter()
        .map(|view| {
            let counts = state.upstreams.view_counts(view);
            ViewStatus {
                name: view.name.to_string(),
                url: format!("{}/", view.url),
                composer_config: format!(
                    "composer config repositories.{} composer {}/",
                    view.name, view.url
                ),
                upstreams: counts
                    .into_iter()
                    .map(|(name, packages)| ViewMember { name, packages })
                    .collect(),
                tokens: tokens
                    .list
                    .iter()
                    .filter(|t| t.views.iter().any(|v| **v == *view.name))
                    .map(|t| t.name.clone())
                    .collect(),
            }
        })
        .collect()
}

async fn storage(state: &Arc<AppState>, now: SystemTime) -> Storage {
    let probe = crate::routes::cache_probe(state).await;
    let archives = state.archives.stats();
    let metadata = state.upstreams.metadata_stats().await;
    let bucket = match &state.bucket {
        Some(bucket) => Some(BucketStatus {
            url: bucket.describe().to_string(),
            reachable: bucket.down_for().is_none(),
            failing_since: before(now, bucket.down_for()),
            replicas: replicas::seen(bucket, now).await,
        }),
        None => None,
    };
    Storage {
        cache_dir: state.archives.disk().root().display().to_string(),
        archive_bytes: archives.bytes,
        archive_max_bytes: archives.max_bytes,
        archive_entries: archives.entries,
        metadata_bytes: metadata.bytes,
        metadata_max_bytes: metadata.max_bytes,
        free_bytes: probe.space.map(|s| s.available_bytes),
        total_bytes: probe.space.map(|s| s.total_bytes),
        min_free_bytes: state.archives.min_free_bytes(),
        writable: probe.writable.is_ok(),
        memory_bytes: archives.memory_bytes,
        memory_max_bytes: archives.memory_max_bytes,
        memory_entries: archives.memory_entries,
        response_buffer_bytes: archives.response_buffer_bytes,
        bucket,
        scrub: Scrub {
            interval_secs: state.scrub_interval().map(|d| d.as_secs()),
            last: state.archives.last_scrub().map(|p| ScrubPass {
                finished: Time(p.finished),
                took_secs: p.took.as_secs(),
                checked: p.checked,
                bytes: p.bytes,
                damaged: p.damaged,
            }),
        },
    }
}

/// Gathers every fact the page shows.
pub async fn gather(state: &Arc<AppState>) -> Status {
    let now = SystemTime::now();
    let (ready_status, readiness) = crate::routes::readiness(state).await;
    let tokens = tokens(state).await;
    let usage = state.status.usage(state).await;
    let advisories = state.status.advisories.run(state, &usage.served).await;
    Status {
        generated: Time(now),
        version: env!("CARGO_PKG_VERSION"),
        public_url: state.public_url.clone(),
        readiness_status: ready_status.as_u16(),
        upstreams: upstream_status(state, &readiness, now),
        readiness,
        views: views(state, &tokens),
        tokens,
        downloads: Downloads {
            retention_days: state
                .usage
                .settings()
                .map(|s| s.retention.as_secs() / 86_400),
            replicas: usage.replicas,
            error: usage.error.clone(),
            summary: usage.summary.clone(),
        },
        advisories,
        storage: storage(state, now).await,
        traffic: Traffic {
            slot_secs: SLOT_SECS,
            slots: state.metrics.traffic(now),
        },
    }
}
