//! GitHub as every upstream's dist host: zipballs fetched from codeload when there is no token
//! (the API would allow 60 an hour), the token added only for the API origin, and rate-limit
//! answers told apart from refusals.

use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use url::Url;

use crate::composer::{self, github::zipball};
use crate::config::GitHubConfig;

/// Shared by every upstream client; a reload swaps the token.
pub struct GitHub {
    api: Url,
    codeload: Url,
    token: RwLock<Option<HeaderValue>>,
}

/// A rate-limit answer: when to try again.
#[derive(Debug)]
pub(super) struct RateLimited {
    pub(super) retry_after: Duration,
}

impl GitHub {
    pub fn new(cfg: &GitHubConfig) -> Self {
        let github = Self {
            api: cfg.api.clone(),
            codeload: cfg.codeload.clone(),
            token: RwLock::new(None),
        };
        github.set_token(cfg);
        github
    }

    /// Applies a reloaded token (or its removal) from the next request on.
    pub fn set_token(&self, cfg: &GitHubConfig) {
        let value = cfg.token.as_ref().and_then(|t| {
            // Validated as printable ASCII when the configuration was read.
            let mut value = HeaderValue::from_str(&format!("token {}", t.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = value;
    }

    pub fn api(&self) -> &Url {
        &self.api
    }

    pub fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Where a request for `url` really goes: a zipball with no token to fetch it from the API
    /// goes straight to codeload, which serves the same bytes the API redirects to.
    pub(super) fn route(&self, url: Url) -> Url {
        if self.has_token() {
            return url;
        }
        match zipball(&self.api, &url)
            .and_then(|z| composer::github::codeload_url(&self.codeload, &z))
        {
            Some(direct) => direct,
            None => url,
        }
    }

    /// The token, for a request to the API origin only: never codeload, never anywhere else.
    pub(super) fn authorization(&self, url: &Url) -> Option<HeaderValue> {
        if !composer::same_origin(&self.api, url) {
            return None;
        }
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// GitHub's rate-limit answer: 429, or 403 with no requests remaining. Any other 403 is a
    /// refusal (a private repository, say) and stays one.
    pub(super) fn rate_limited(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<RateLimited> {
        let github =
            composer::same_origin(&self.api, url) || composer::same_origin(&self.codeload, url);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let exhausted = header("x-ratelimit-remaining").is_some_and(|r| r.trim() == "0");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && exhausted);
        if !github || !limited {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seconds = header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .or_else(|| {
                header("x-ratelimit-reset")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(|reset| reset.saturating_sub(now))
            })
            .unwrap_or(60);
        Some(RateLimited {
            retry_after: Duration::from_secs(seconds.clamp(1, 3600)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn github(token: Option<&str>) -> GitHub {
        GitHub::new(&GitHubConfig {
            api: Url::parse("https://api.github.com").expect("url"),
            codeload: Url::parse("https://codeload.github.com").expect("url"),
            token: token.map(Secret::new),
            token_source: token.map(|_| "github_token"),
        })
    }

    #[test]
    fn without_a_token_zipballs_go_to_codeload_and_with_one_to_the_api() {
        let dist = Url::parse("https://api.github.com/repos/a/b/zipball/0123").expect("url");
        assert_eq!(
            github(None).route(dist.clone()).as_str(),
            "https://codeload.github.com/a/b/legacy.zip/0123"
        );
        let with = github(Some("ghp_x"));
        assert_eq!(with.route(dist.clone()), dist);
        let auth = with.authorization(&dist).expect("token for the API");
        assert_eq!(auth, "token ghp_x");
        assert!(auth.is_sensitive());
        let codeload = Url::parse("https://codeload.github.com/a/b/legacy.zip/0123").expect("url");
        assert!(with.authorization(&codeload).is_none());
        assert!(with
            .authorization(&Url::parse("https://evil.example/").expect("url"))
            .is_none());
    }

    #[test]
    fn only_githubs_rate_limit_answers_count_as_such() {
        let g = github(None);
        let api = Url::parse("https://api.github.com/repos/a/b/zipball/1").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("retry-after", HeaderValue::from_static("120"));
        let limited = g
            .rate_limited(&api, StatusCode::FORBIDDEN, &headers)
            .expect("rate limited");
        assert_eq!(limited.retry_after, Duration::from_secs(120));
        assert!(g
            .rate_limited(&api, StatusCode::FORBIDDEN, &HeaderMap::new())
            .is_none());
        let other = Url::parse("https://example.com/x").expect("url");
        assert!(g
            .rate_limited(&other, StatusCode::TOO_MANY_REQUESTS, &headers)
            .is_none());
        assert!(g
            .rate_limited(&api, StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new())
            .is_some());
    }
}
