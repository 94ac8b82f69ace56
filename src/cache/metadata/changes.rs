//! Freshness from the upstream's changes feed (`metadata-changes-url`, as packagist.org offers
//! it). Polled every `metadata_changes_poll_secs`: each change it announces for a cached p2 file
//! is refetched at once, so while the feed answers, cached files need no revalidation per TTL
//! and a client request never waits for (or causes) an upstream request for one.
//!
//! The feed counts time in its own unit (packagist: 10000ths of a second). A request without
//! `since` answers 400 with the current timestamp: the position to start from. The position is
//! kept in the upstream's state directory, so a restart resumes there (over 24 h later the feed
//! answers `resync`, and every cached file is then stale). A file fetched after an announced
//! change can still be the older one (a CDN behind): it is accepted only when its Last-Modified
//! is not older than the change, else refetched on the next polls; after `MAX_LAG_POLLS` the TTL
//! takes over for that file. Changes announced for files not cached are remembered as long, so
//! a file first fetched on a request from a CDN still behind is refetched the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use super::freshness::{Announced, FeedCover};
use super::MetadataCache;
use crate::composer::UpstreamRoot;
use crate::metrics::{ChangesMetrics, Metrics, PollOutcome};
use crate::upstream::{Answer, RequestKind};

mod answer;

use answer::{parse_changes, parse_timestamp, plan, postdates, reflects, Cause, Changes};

/// The feed is trusted while its last answer is younger than this many poll intervals.
const HEALTHY_INTERVALS: u32 = 3;
/// Polls that refetch a file still older than its announced change before the TTL takes over.
const MAX_LAG_POLLS: u32 = 10;
/// Files with outstanding changes at most; beyond that the feed stops vouching (as on resync).
const MAX_PENDING: usize = 10_000;
/// Announced files refetched at once.
const REFETCH_CONCURRENCY: usize = 8;

/// An announced change upstream does not serve yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    time: u64,
    polls: u32,
}

#[derive(Default)]
struct FeedState {
    /// The feed's URL and its position: the `since` of the next poll.
    position: Option<(Url, u64)>,
    /// The saved position was looked for.
    restored: bool,
    /// Since when every change is reported (files confirmed later are covered).
    covering_since: Option<Instant>,
    resynced_at: Option<Instant>,
    last_success: Option<Instant>,
    /// The feed is failing and that was logged.
    down: bool,
    /// The feed is out of the upstream's reach and that was logged.
    out_of_reach: bool,
    pending: HashMap<String, Pending>,
    /// Changes announced lately for files that were not cached: one fetched on a request soon
    /// after may come from a CDN that is behind, so it is checked against the change.
    recent: HashMap<String, (u64, Instant)>,
}

/// Where a changes feed stands, for the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedStatus {
    /// The `since` of the next poll, in the feed's own unit.
    pub position: Option<u64>,
    /// How long ago it last answered: how far behind upstream the proxy may be.
    pub answered_ago: Option<Duration>,
    /// Whether it answers often enough to keep cached files fresh without revalidation.
    pub vouching: bool,
    /// Files whose announced change upstream does not serve yet.
    pub awaited: usize,
}

/// One upstream's feed: where it is, whether it answers, what it announced.
pub(super) struct Feed {
    every: Option<Duration>,
    /// When this process began: every file it holds in memory was confirmed later.
    started: Instant,
    state: Mutex<FeedState>,
}

impl Feed {
    pub(super) fn new(every: Option<Duration>) -> Self {
        Self {
            every,
            started: Instant::now(),
            state: Mutex::new(FeedState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self, state: &FeedState) -> bool {
        match (self.every, state.last_success) {
            (Some(every), Some(at)) => at.elapsed() < every * HEALTHY_INTERVALS,
            _ => false,
        }
    }

    /// Where the feed stands; `None` while it was never asked (no feed, or none yet).
    pub(super) fn status(&self) -> Option<FeedStatus> {
        let state = self.lock();
        if state.position.is_none() && !state.down {
            return None;
        }
        Some(FeedStatus {
            position: state.position.as_ref().map(|(_, since)| *since),
            answered_ago: state.last_success.map(|at| at.elapsed()),
            vouching: self.healthy(&state),
            awaited: state.pending.len(),
        })
    }

    /// What the feed vouches for now, and what it announced about `file`.
    pub(super) fn verdict(&self, file: &str) -> (FeedCover, Announced) {
        let state = self.lock();
        let cover = FeedCover {
            covering_for: state
                .covering_since
                .filter(|_| self.healthy(&state))
                .map(|t| t.elapsed()),
            resynced_ago: state.resynced_at.map(|t| t.elapsed()),
        };
        let announced = match state.pending.get(file) {
            None => Announced::Nothing,
            Some(p) if p.polls >= MAX_LAG_POLLS => Announced::GaveUp,
            Some(_) => Announced::Awaited,
        };
        (cover, announced)
    }

    /// `file` was revalidated or forgotten on a request: a change the poller gave up on is
    /// settled (one it still awaits stays its business).
    pub(super) fn settled(&self, file: &str) {
        let mut state = self.lock();
        if state
            .pending
            .get(file)
            .is_some_and(|p| p.polls >= MAX_LAG_POLLS)
        {
            state.pending.remove(file);
        }
    }

    /// Forgets changes announced for uncached files too long ago to matter; once per poll,
    /// not per announcement, which made a long answer quadratic under the lock.
    fn prune_recent(&self, state: &mut FeedState) {
        let horizon = self.every.unwrap_or_default() * MAX_LAG_POLLS;
        state.recent.retain(|_, (_, at)| at.elapsed() < horizon);
    }

    /// A change dated `time` was announced for `file`, which is not cached.
    fn announced_uncached(&self, state: &mut FeedState, file: String, time: u64) {
        if state.recent.len() < MAX_PENDING {
            state.recent.insert(file, (time, Instant::now()));
        }
    }

    /// `file` was just fetched on a request: when it is older than a change announced lately,
    /// the poller refetches it like a file cached when the change was announced.
    pub(super) fn fetched(&self, file: &str, last_modified: Option<&str>) {
        let mut state = self.lock();
        let Some(&(time, _)) = state.recent.get(file) else {
            return;
        };
        if reflects(last_modified, time) {
            state.recent.remove(file);
        } else {
            state
                .pending
                .entry(file.to_string())
                .or_insert(Pending { time, polls: 0 });
        }
    }

    /// Changes were lost: nothing confirmed before `at` is vouched for.
    fn lost_track(state: &mut FeedState, at: Instant) {
        state.covering_since = Some(at);
        state.resynced_at = Some(at);
        state.pending.clear();
        state.recent.clear();
    }
}

/// What refetching one announced file came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refreshed {
    /// Upstream serves the change (or something newer).
    Current,
    /// Upstream no longer has the file: forgotten, memory and disk.
    Gone,
    /// Upstream still serves a file older than the change.
    Lagging,
    /// Upstream failed, or the file was being revalidated already: tried again next poll.
    Failed,
    /// Not cached: nothing to refresh.
    NotCached,
}

/// The feed's position, as saved in the upstream's state directory.
#[derive(Serialize, Deserialize)]
struct SavedPosition {
    url: String,
    timestamp: u64,
}

impl MetadataCache {
    /// Polls the upstream's changes feed for as long as the process runs (when the setting is
    /// on). Each poll looks at the current root, so a feed that appears later is followed.
    pub async fn follow_changes(self: Arc<Self>, metrics: Arc<Metrics>) {
        let Some(every) = self.feed.every else {
            return;
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.poll_changes(&metrics.changes).await;
        }
    }

    async fn poll_changes(self: &Arc<Self>, metrics: &ChangesMetrics) {
        let Some(view) = self.current() else {
            return;
        };
        let UpstreamRoot::P2 {
            metadata_url,
            metadata_changes_url: Some(feed_url),
            ..
        } = &view.upstream
        else {
            return;
        };
        let upstream = self.upstream.name().clone();
        if self.rewriter.upstream_url(feed_url.as_str()).is_none() {
            let mut state = self.feed.lock();
            if !std::mem::replace(&mut state.out_of_reach, true) {
                tracing::warn!(
                    upstream = %upstream,
                    feed = %feed_url,
                    "the upstream's metadata-changes-url is outside its url origin and its \
                     allowed_hosts, so it is not followed and p2 files are revalidated per \
                     metadata_ttl_secs; add its origin to allowed_hosts to follow it"
                );
            }
            return;
        }
        let position = self.feed_position(feed_url).await;
        let asked = Instant::now();
        let answer = match position {
            None => self.feed_start(feed_url).await.map(|timestamp| Changes {
                timestamp,
                ..Changes::default()
            }),
            Some(since) => self.feed_changes(feed_url, since).await,
        };
        let changes = match answer {
            Ok(changes) => changes,
            Err(error) => {
                metrics.record_poll(&upstream, PollOutcome::Error);
                let mut state = self.feed.lock();
                if !self.feed.healthy(&state) && !std::mem::replace(&mut state.down, true) {
                    tracing::warn!(upstream = %upstream, feed = %feed_url, error = %error, "the changes feed is failing; p2 files are revalidated per metadata_ttl_secs until it answers again");
                } else {
                    tracing::debug!(upstream = %upstream, error = %error, "changes feed poll failed");
                }
                return;
            }
        };
        let announced = changes.announced.len();
        let cached = self.cached_fewer_than(announced).await;
        let resync = changes.resync || cached.is_some();
        let applied = if resync {
            Feed::lost_track(&mut self.feed.lock(), asked);
            match cached {
                Some(cached) if !changes.resync => tracing::info!(
                    upstream = %upstream,
                    announced,
                    cached,
                    "the changes feed announced more files than are cached, so it is taken as a \
                     resync rather than scanned: every cached p2 file is revalidated on its next \
                     request"
                ),
                _ => {
                    tracing::info!(upstream = %upstream, "the changes feed lost track (resync): every cached p2 file is revalidated on its next request")
                }
            }
            BTreeMap::from([("resync", 1)])
        } else {
            self.apply(metadata_url.as_str(), changes.announced, metrics)
                .await
        };
        {
            let mut state = self.feed.lock();
            if position.is_none() {
                state.covering_since = Some(asked);
            }
            state.position = Some((feed_url.clone(), changes.timestamp));
            state.last_success = Some(Instant::now());
            if std::mem::replace(&mut state.down, false) {
                tracing::info!(upstream = %upstream, "the changes feed answers again");
            }
        }
        self.save_position(feed_url, changes.timestamp).await;
        let outcome = if resync {
            PollOutcome::Resync
        } else {
            PollOutcome::Ok
        };
        metrics.record_poll(&upstream, outcome);
        for (action, n) in &applied {
            metrics.record_actions(&upstream, action, *n);
        }
        let count = |a: &str| applied.get(a).copied().unwrap_or(0);
        if applied.is_empty() {
            tracing::debug!(upstream = %upstream, timestamp = changes.timestamp, "changes feed polled");
        } else {
            tracing::info!(
                upstream = %upstream,
                updated = count("update"),
                deleted = count("delete"),
                resync = count("resync"),
                "applied the changes the feed announced for cached p2 files"
            );
        }
    }

    /// How many p2 files this replica caches, when that is fewer than `announced`: a feed
    /// answer announcing more files than that (a backlog after an outage, a runaway feed) is
    /// taken as a resync of what is cached instead of a list to look up name by name.
    async fn cached_fewer_than(&self, announced: usize) -> Option<usize> {
        // Every file held in memory is on disk too: most answers stop here.
        if announced == 0 || announced as u64 <= self.p2_files.entry_count() {
            return None;
        }
        let disk = self.disk.clone();
        let namespace = self.namespace().map(str::to_string);
        let cached = tokio::task::spawn_blocking(move || {
            disk.count_url_states(namespace.as_deref(), announced)
        })
        .await
        .unwrap_or(announced);
        (cached < announced).then_some(cached)
    }

    /// Refetches the announced files that are cached, and those still awaited; returns how
    /// many actions of each type were applied to cached files. At most
    /// [`REFETCH_CONCURRENCY`] refetches run at once, and each result is recorded on its own
    /// under the feed's lock, which requests take too: they never wait for more than one.
    async fn apply(
        self: &Arc<Self>,
        template: &str,
        announced: BTreeMap<String, (Cause, u64)>,
        metrics: &ChangesMetrics,
    ) -> BTreeMap<&'static str, u64> {
        let awaited: Vec<(String, u64)> = {
            let mut state = self.feed.lock();
            self.feed.prune_recent(&mut state);
            state
                .pending
                .iter()
                .filter(|(_, p)| p.polls < MAX_LAG_POLLS)
                .map(|(file, p)| (file.clone(), p.time))
                .collect()
        };
        let mut results = futures_util::stream::iter(plan(announced, awaited))
            .map(|(file, (cause, time))| async move {
                let outcome = self.refresh_announced(template, &file, cause, time).await;
                (file, cause, time, outcome)
            })
            .buffer_unordered(REFETCH_CONCURRENCY);
        let upstream = self.upstream.name();
        let mut applied = BTreeMap::new();
        while let Some((file, cause, time, outcome)) = results.next().await {
            let mut state = self.feed.lock();
            if outcome == Refreshed::NotCached {
                state.pending.remove(&file);
                if cause != Cause::Retry {
                    self.feed.announced_uncached(&mut state, file, time);
                }
                continue;
            }
            if cause != Cause::Retry {
                *applied.entry(cause.as_str()).or_default() += 1;
            }
            if matches!(outcome, Refreshed::Current | Refreshed::Gone) {
                state.pending.remove(&file);
                continue;
            }
            if outcome == Refreshed::Lagging {
                metrics.record_lag_retry(upstream);
            }
            let pending = state
                .pending
                .entry(file.clone())
                .or_insert(Pending { time, polls: 0 });
            if cause != Cause::Retry {
                // A new change: wait for it afresh.
                *pending = Pending {
                    time: time.max(pending.time),
                    polls: 0,
                };
            }
            pending.polls += 1;
            if pending.polls == MAX_LAG_POLLS {
                tracing::warn!(upstream = %upstream, file = %file, polls = MAX_LAG_POLLS, "upstream still serves a p2 file older than the change its feed announced; it is revalidated per metadata_ttl_secs from now on");
            }
        }
        let mut state = self.feed.lock();
        if state.pending.len() > MAX_PENDING {
            tracing::warn!(upstream = %upstream, files = state.pending.len(), "too many announced changes upstream does not serve yet; every cached p2 file is revalidated on its next request");
            Feed::lost_track(&mut state, Instant::now());
        }
        applied
    }

    /// One conditional refetch of a cached file (memory or disk) after a change dated `time`.
    async fn refresh_announced(
        self: &Arc<Self>,
        template: &str,
        file: &str,
        cause: Cause,
        time: u64,
    ) -> Refreshed {
        let url = template.replace("%package%", file);
        let existing = match self.p2_files.get(file).await {
            Some(entry) => entry,
            None => match self.load_local_p2(&url, file).await {
                Some(entry) => entry,
                None => return Refreshed::NotCached,
            },
        };
        if cause == Cause::Update && postdates(existing.validators.last_modified.as_deref(), time) {
            return Refreshed::Current;
        }
        // A revalidation in flight may have been answered before the change: wait for the next
        // poll rather than race it.
        if !self.claim_p2_revalidation(file) {
            return Refreshed::Failed;
        }
        let outcome = match self.fetch_p2(&url, file, Some(&existing)).await {
            Ok(entry) if reflects(entry.validators.last_modified.as_deref(), time) => {
                self.p2_files.insert(file.to_string(), entry).await;
                Refreshed::Current
            }
            Ok(_) => Refreshed::Lagging,
            Err(e) if e.is_not_found() => {
                self.p2_files.invalidate(file).await;
                let path = self.disk.url_state_path(self.namespace(), &url);
                let _ = tokio::fs::remove_file(path).await;
                Refreshed::Gone
            }
            Err(e) => {
                tracing::debug!(file, error = %e, "refetching an announced p2 file failed");
                Refreshed::Failed
            }
        };
        self.release_p2_revalidation(file);
        outcome
    }

    /// The feed's current position: in memory, or saved by an earlier run for the same feed
    /// (then everything this process fetched is covered from the start).
    async fn feed_position(&self, url: &Url) -> Option<u64> {
        if !self.feed.lock().restored {
            let path = self.disk.state_path(self.namespace(), "changes.json");
            let saved = tokio::fs::read(&path)
                .await
                .ok()
                .and_then(|bytes| serde_json::from_slice::<SavedPosition>(&bytes).ok());
            let mut state = self.feed.lock();
            state.restored = true;
            if let Some(saved) = saved.filter(|s| s.url == url.as_str()) {
                state.position = Some((url.clone(), saved.timestamp));
                state.covering_since = Some(self.feed.started);
            }
        }
        let state = self.feed.lock();
        state
            .position
            .as_ref()
            .filter(|(u, _)| u == url)
            .map(|(_, t)| *t)
    }

    async fn save_position(&self, url: &Url, timestamp: u64) {
        let saved = SavedPosition {
            url: url.to_string(),
            timestamp,
        };
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        let path = self.disk.state_path(self.namespace(), "changes.json");
        self.disk
            .save_metadata(&path, &bytes, "the changes feed position")
            .await;
    }

    /// Where to start: the feed answers a request without `since` with its current timestamp
    /// (packagist.org with a 400).
    async fn feed_start(&self, url: &Url) -> Result<u64, String> {
        let (status, body) = self.feed_get(url.as_str()).await?;
        if status != StatusCode::BAD_REQUEST && !status.is_success() {
            return Err(format!("answered {status}"));
        }
        parse_timestamp(&body).ok_or_else(|| format!("answered {status} without a timestamp"))
    }

    async fn feed_changes(&self, url: &Url, since: u64) -> Result<Changes, String> {
        let mut url = url.clone();
        url.query_pairs_mut()
            .append_pair("since", &since.to_string());
        let (status, body) = self.feed_get(url.as_str()).await?;
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        parse_changes(&body)
    }

    /// One GET of the feed, bounded by the metadata timeout: its status and decoded body.
    async fn feed_get(&self, url: &str) -> Result<(StatusCode, Bytes), String> {
        let work = async {
            let mut extra = HeaderMap::new();
            extra.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            let response = self
                .upstream
                .send(RequestKind::Metadata, Method::GET, url, extra, Bytes::new())
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status;
            let body = self
                .upstream
                .read_answer(Answer::Feed, url, response)
                .await
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        };
        tokio::time::timeout(self.upstream.metadata_timeout, work)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "Tue, 14 Nov 2023 22:13:19 GMT";
    const NEW: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const EVENT: u64 = 17_000_000_001_234;

    #[test]
    fn a_file_fetched_soon_after_a_change_was_announced_is_checked_against_it() {
        let feed = Feed::new(Some(Duration::from_secs(30)));
        feed.announced_uncached(&mut feed.lock(), "a/b".into(), EVENT);
        feed.fetched("other/name", Some(OLD));
        assert_eq!(feed.verdict("other/name").1, Announced::Nothing);
        // From a CDN still behind: the poller is to refetch it, requests wait for that.
        feed.fetched("a/b", Some(OLD));
        assert_eq!(feed.verdict("a/b").1, Announced::Awaited);

        let feed = Feed::new(Some(Duration::from_secs(30)));
        feed.announced_uncached(&mut feed.lock(), "a/b".into(), EVENT);
        feed.fetched("a/b", Some(NEW));
        assert_eq!(feed.verdict("a/b").1, Announced::Nothing);
        assert!(feed.lock().recent.is_empty(), "settled by the fetch");
    }

    #[test]
    fn the_feed_vouches_only_while_it_answers() {
        let feed = Feed::new(Some(Duration::from_secs(30)));
        assert_eq!(feed.verdict("a/b").0.covering_for, None, "not polled yet");
        {
            let mut state = feed.lock();
            state.covering_since = Some(Instant::now());
            state.last_success = Some(Instant::now());
        }
        assert!(feed.verdict("a/b").0.covering_for.is_some());
        feed.lock().last_success = Instant::now().checked_sub(Duration::from_secs(91));
        assert_eq!(
            feed.verdict("a/b").0.covering_for,
            None,
            "three intervals without an answer"
        );
    }
}
