//! When cached metadata is used as it is, and when upstream is asked again: pure rules over
//! ages and durations, so they are tested without a clock or a socket.

use std::time::Duration;

/// Why the root is being refreshed; decides whether freshness and the failure back-off apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refresh {
    /// A request needs the root: a fresh copy will do.
    WhenStale,
    /// Upstream just refused the keys on another request: ask again, unless it failed lately.
    AfterRejection,
    /// A reload or an operator: ask now, whatever the back-off.
    Now,
}

/// What a root refresh does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Answer with the view at hand.
    UseCurrent,
    /// Answer with the failure of the last attempt (no view to fall back on).
    RepeatFailure,
    /// Ask upstream.
    Fetch,
}

/// Whether something upstream confirmed `age` ago is still fresh (`None`: never confirmed by
/// this process, e.g. loaded from disk at start-up).
pub(super) fn is_fresh(age: Option<Duration>, ttl: Duration) -> bool {
    age.is_some_and(|age| age < ttl)
}

/// What an upstream's changes feed vouches for at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FeedCover {
    /// While the feed answers: how long ago it began to report every change (its first answer
    /// in this process, or its last resync). `None`: no feed, or it is failing.
    pub covering_for: Option<Duration>,
    /// How long ago the feed said it had lost track of changes (`resync`).
    pub resynced_ago: Option<Duration>,
}

/// What the feed said about one p2 file that is not settled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Announced {
    /// Nothing outstanding.
    Nothing,
    /// A change was announced and upstream still serves an older file: the poller refetches it.
    Awaited,
    /// The poller stopped waiting for that change.
    GaveUp,
}

/// What a request for a cached p2 file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum P2Step {
    /// Serve it as fresh.
    Use,
    /// Serve it as stale and revalidate it in the background.
    Revalidate,
    /// Serve it as stale; the feed's poller is already refetching it.
    Wait,
}

/// The step for a p2 file upstream confirmed `age` ago (`None`: read back from disk). A healthy
/// feed vouches for every file confirmed since it began covering; otherwise (and for a file the
/// poller gave up on) the TTL decides. Nothing confirmed before a resync is fresh.
pub(super) fn p2_step(
    age: Option<Duration>,
    ttl: Duration,
    feed: FeedCover,
    announced: Announced,
) -> P2Step {
    if announced == Announced::Awaited {
        return P2Step::Wait;
    }
    let before_resync = match (age, feed.resynced_ago) {
        (Some(age), Some(resync)) => age > resync,
        _ => false,
    };
    let covered = announced == Announced::Nothing
        && age
            .zip(feed.covering_for)
            .is_some_and(|(age, covering)| age <= covering);
    if !before_resync && (covered || is_fresh(age, ttl)) {
        P2Step::Use
    } else {
        P2Step::Revalidate
    }
}

/// The next step of a root refresh. `current` is the freshness of the view at hand, if any;
/// `failed_ago` the age of the last failed attempt, if it failed; `rejected_now` whether
/// upstream rejects the keys at this moment (then a view at hand is not good enough).
pub(super) fn next_step(
    mode: Refresh,
    current: Option<bool>,
    rejected_now: bool,
    failed_ago: Option<Duration>,
    retry_after_failure: Duration,
) -> Step {
    if current == Some(true) && !rejected_now && mode != Refresh::Now {
        return Step::UseCurrent;
    }
    let backing_off = failed_ago.is_some_and(|ago| ago < retry_after_failure);
    if backing_off && mode != Refresh::Now {
        return if current.is_some() && !rejected_now {
            Step::UseCurrent
        } else {
            Step::RepeatFailure
        };
    }
    Step::Fetch
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    const RETRY: Duration = Duration::from_secs(10);
    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn fresh_means_confirmed_by_upstream_within_the_ttl() {
        assert!(is_fresh(Some(SECS(299)), TTL));
        assert!(!is_fresh(Some(SECS(300)), TTL));
        assert!(!is_fresh(None, TTL), "loaded from disk: revalidate first");
    }

    #[test]
    fn a_healthy_feed_vouches_for_files_confirmed_since_it_began_covering() {
        let feed = FeedCover {
            covering_for: Some(SECS(3600)),
            resynced_ago: None,
        };
        let step = |age, announced| p2_step(age, TTL, feed, announced);
        // Long past the TTL, still fresh: the feed would have announced a change.
        assert_eq!(step(Some(SECS(3000)), Announced::Nothing), P2Step::Use);
        // Confirmed before the feed began: only the TTL speaks for it.
        assert_eq!(
            step(Some(SECS(4000)), Announced::Nothing),
            P2Step::Revalidate
        );
        assert_eq!(step(None, Announced::Nothing), P2Step::Revalidate);
        // A change announced and not yet served: the poller is on it, requests do not ask.
        assert_eq!(step(Some(SECS(1)), Announced::Awaited), P2Step::Wait);
        // Given up: back to the TTL.
        assert_eq!(step(Some(SECS(10)), Announced::GaveUp), P2Step::Use);
        assert_eq!(step(Some(SECS(301)), Announced::GaveUp), P2Step::Revalidate);
    }

    #[test]
    fn without_a_healthy_feed_the_ttl_decides_and_a_resync_makes_everything_older_stale() {
        let none = FeedCover::default();
        assert_eq!(
            p2_step(Some(SECS(299)), TTL, none, Announced::Nothing),
            P2Step::Use
        );
        assert_eq!(
            p2_step(Some(SECS(300)), TTL, none, Announced::Nothing),
            P2Step::Revalidate
        );
        let resynced = FeedCover {
            covering_for: Some(SECS(5)),
            resynced_ago: Some(SECS(5)),
        };
        assert_eq!(
            p2_step(Some(SECS(6)), TTL, resynced, Announced::Nothing),
            P2Step::Revalidate,
            "within the TTL, but confirmed before the feed lost track"
        );
        assert_eq!(
            p2_step(Some(SECS(4)), TTL, resynced, Announced::Nothing),
            P2Step::Use
        );
    }

    #[test]
    fn a_fresh_view_is_used_unless_the_keys_were_just_rejected_or_asked_for_now() {
        let step = |mode, rejected| next_step(mode, Some(true), rejected, None, RETRY);
        assert_eq!(step(Refresh::WhenStale, false), Step::UseCurrent);
        assert_eq!(step(Refresh::AfterRejection, true), Step::Fetch);
        assert_eq!(step(Refresh::Now, false), Step::Fetch);
    }

    #[test]
    fn after_a_failure_upstream_is_left_alone_for_a_while() {
        let recent = Some(SECS(3));
        // A stale view is served meanwhile; without one, the failure is repeated.
        let stale = next_step(Refresh::WhenStale, Some(false), false, recent, RETRY);
        assert_eq!(stale, Step::UseCurrent);
        let none = next_step(Refresh::WhenStale, None, false, recent, RETRY);
        assert_eq!(none, Step::RepeatFailure);
        let rejected = next_step(Refresh::AfterRejection, Some(false), true, recent, RETRY);
        assert_eq!(rejected, Step::RepeatFailure);
        // Then it is asked again, and an operator can always ask at once.
        let later = next_step(
            Refresh::WhenStale,
            Some(false),
            false,
            Some(SECS(11)),
            RETRY,
        );
        assert_eq!(later, Step::Fetch);
        assert_eq!(
            next_step(Refresh::Now, None, false, recent, RETRY),
            Step::Fetch
        );
    }
}
