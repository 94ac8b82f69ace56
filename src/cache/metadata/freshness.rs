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
