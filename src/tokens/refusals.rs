//! Rate limit of the `token_refused` warnings: a CI job retrying with a revoked token, or a
//! client guessing tokens, would otherwise write a warning per request. Each (client, token
//! name, reason) is logged at most once per [`INTERVAL`], with how many refusals went unlogged
//! (a new reason, such as a token just disabled, is news and logged at once); the refusals
//! themselves are always answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one warning per (client, token) this often.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Pairs remembered at most; past it, the expired ones are forgotten, and if none has expired
/// the new pair shares one slot with every other newcomer.
const MAX_PAIRS: usize = 4096;

type Pair = (IpAddr, Option<Arc<str>>, &'static str);

#[derive(Default)]
pub struct RefusalLog {
    seen: Mutex<HashMap<Option<Pair>, (Instant, u64)>>,
}

impl RefusalLog {
    /// `Some(n)` when this refusal is to be logged, `n` being how many of the pair's were
    /// not logged since its last warning; `None` when it is to be counted only.
    pub fn admit(
        &self,
        client: IpAddr,
        token: Option<&Arc<str>>,
        reason: &'static str,
        now: Instant,
    ) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = Some((client, token.cloned(), reason));
        if !seen.contains_key(&key) && seen.len() >= MAX_PAIRS {
            seen.retain(|_, (at, _)| now.duration_since(*at) < INTERVAL);
            if seen.len() >= MAX_PAIRS {
                key = None;
            }
        }
        match seen.get_mut(&key) {
            Some((at, unlogged)) if now.duration_since(*at) < INTERVAL => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                *at = now;
                Some(std::mem::take(unlogged))
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_and_token_is_logged_once_per_interval_with_the_unlogged_count() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let ci: Arc<str> = "ci".into();
        assert_eq!(log.admit(a, Some(&ci), "unknown", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(
                log.admit(a, Some(&ci), "unknown", t0 + Duration::from_secs(1)),
                None
            );
        }
        // Another client, another token (or none): logged on their own.
        assert_eq!(log.admit(b, Some(&ci), "unknown", t0), Some(0));
        assert_eq!(log.admit(a, None, "unknown", t0), Some(0));
        assert_eq!(log.admit(a, Some(&ci), "unknown", t0 + INTERVAL), Some(5));
        assert_eq!(log.admit(a, Some(&ci), "unknown", t0 + INTERVAL), None);
        // The same token refused for a new reason (just disabled) is news.
        assert_eq!(log.admit(a, Some(&ci), "disabled", t0 + INTERVAL), Some(0));
    }

    #[test]
    fn the_map_is_bounded_and_newcomers_share_a_slot_when_full() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..MAX_PAIRS as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            assert_eq!(log.admit(ip, None, "unknown", t0), Some(0));
        }
        let late: IpAddr = "192.0.2.1".parse().expect("ip");
        let later: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(log.admit(late, None, "unknown", t0), Some(0));
        assert_eq!(
            log.admit(later, None, "unknown", t0),
            None,
            "shares the newcomers' slot"
        );
        assert!(log.seen.lock().expect("lock").len() <= MAX_PAIRS + 1);
        // Once the old pairs expire they are forgotten.
        assert_eq!(log.admit(later, None, "unknown", t0 + INTERVAL), Some(0));
        assert_eq!(log.seen.lock().expect("lock").len(), 1);
    }
}
