//! Legacy release downloads: Magento's full release archives from the download endpoint
//! (`[downloads]`), behind HTTP Basic with the account's MAGEID and download access token.
//!
//! - **`info/…` answers** (help, files, versions, json, filter) are small documents: fetched
//!   once per `metadata_ttl_secs` whatever the number of clients (single flight), and the last
//!   good answer is served stale while the endpoint fails. `info/json` is also kept on disk, so
//!   stored release files are found again after a restart with the endpoint down.
//! - **`file/<name>`** archives go through the one archive store, like dists: one fetch, clients
//!   streamed to as it arrives, verified before it is stored (against the md5 `info/json` lists
//!   for the file, where it lists one; older files have none and get the checks of dists
//!   without a checksum), committed atomically.
//! - **The token is a secret like the key pairs**: only the endpoint's origin sees it (the
//!   client is one more [`UpstreamClient`] with MAGEID and token as its key pair), and an
//!   answer that quotes it has it replaced before it is cached or served.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use url::Url;

use crate::cache::metadata::CacheStatus;
use crate::cache::CacheDir;
use crate::composer::{Checksum, DistSource};
use crate::config::{Credentials, GitHubConfig, UpstreamConfig, RELEASES_NAME};
use crate::error::{ProxyError, Resource};
use crate::metrics::Metrics;
use crate::upstream::{GitHub, KeyVerdict, MetadataResponse, UpstreamClient, UpstreamError};

/// Distinct `info/…` answers remembered for serving stale (`filter/…` has many spellings).
const INFO_ANSWERS_KEPT: u64 = 256;
/// What a rejected download token means, for the log.
const TOKEN_ADVICE: &str = "the MAGEID and download access token ([downloads] mage_id and \
    token) are not accepted: check them in the magento.com account (My Account > Account \
    Settings > Downloads Access Token); generating a new token disables the old one";
/// The file `info/json` is kept in, below the endpoint's metadata directory.
const SAVED_LISTING: &str = "info.json";

/// One `info/…` answer as served.
pub struct InfoAnswer {
    pub body: Bytes,
    /// The endpoint said it is JSON; anything else is served as plain text.
    pub json: bool,
    /// Each listed file's md5 (`None`: listed without one), parsed once, for `info/json`.
    listing: OnceLock<Result<HashMap<String, Option<String>>, String>>,
}

impl InfoAnswer {
    fn new(body: Bytes, json: bool) -> Self {
        Self {
            body,
            json,
            listing: OnceLock::new(),
        }
    }

    fn listing(&self) -> &Result<HashMap<String, Option<String>>, String> {
        self.listing.get_or_init(|| parse_listing(&self.body))
    }
}

pub struct Releases {
    pub client: Arc<UpstreamClient>,
    base: Url,
    /// Answers younger than the TTL; a miss is fetched once for all who ask.
    fresh: moka::future::Cache<String, Arc<InfoAnswer>>,
    /// The last good answer of each, however old: served while the endpoint fails.
    last: moka::sync::Cache<String, Arc<InfoAnswer>>,
    disk: Arc<CacheDir>,
    /// `stale_on_key_rejection`: a rejected token, too, is answered from `last`.
    stale_on_rejection: bool,
    /// The token as it could appear in an answer, replaced wherever it does.
    hidden: RwLock<Vec<String>>,
}

impl Releases {
    /// The endpoint's client and caches, with what was saved of `info/json` before.
    pub async fn open(
        cfg: &UpstreamConfig,
        github: &GitHubConfig,
        disk: Arc<CacheDir>,
        metrics: &Arc<Metrics>,
        stale_on_rejection: bool,
    ) -> anyhow::Result<Self> {
        // Its own GitHub without the token: the endpoint has no business with GitHub's API,
        // and a redirect there must not carry the organisation's token.
        let no_token = GitHubConfig {
            token: None,
            token_source: None,
            ..github.clone()
        };
        let client = UpstreamClient::new(cfg, Arc::new(GitHub::new(&no_token)), metrics.clone())?
            .with_rejection_advice(TOKEN_ADVICE);
        let releases = Self {
            client: Arc::new(client),
            base: cfg.url.clone(),
            fresh: moka::future::Cache::builder()
                .max_capacity(INFO_ANSWERS_KEPT)
                .time_to_live(cfg.metadata_ttl)
                .build(),
            last: moka::sync::Cache::new(INFO_ANSWERS_KEPT),
            disk,
            stale_on_rejection,
            hidden: RwLock::new(hidden_forms(cfg.credentials.as_ref())),
        };
        let saved = releases.saved_listing_path();
        if let Some(body) = releases.disk.load_shared_metadata(&saved).await {
            releases
                .last
                .insert("json".into(), Arc::new(InfoAnswer::new(body.into(), true)));
        }
        Ok(releases)
    }

    /// A reload: the new MAGEID and token apply from the next request on.
    pub fn set_credentials(&self, cfg: &UpstreamConfig) {
        self.client.set_key_pairs(&cfg.key_pairs());
        *self.hidden.write().unwrap_or_else(|p| p.into_inner()) =
            hidden_forms(cfg.credentials.as_ref());
    }

    /// Why `/readyz` should call release downloads degraded, if it should.
    pub fn degraded(&self) -> Option<String> {
        degraded(
            self.client.key_verdict() == KeyVerdict::Rejected,
            self.client.down_for(),
        )
    }

    /// The answer to `info/<path>` (`path` as the router parsed it).
    pub async fn info(&self, path: &str) -> Result<(Arc<InfoAnswer>, CacheStatus), ProxyError> {
        let fetched = self
            .fresh
            .entry(path.to_string())
            .or_try_insert_with(self.fetch_info(path))
            .await;
        match fetched {
            Ok(entry) => {
                let cache = if entry.is_fresh() {
                    CacheStatus::Miss
                } else {
                    CacheStatus::Hit
                };
                Ok((entry.into_value(), cache))
            }
            Err(e) => {
                let e = ProxyError::Shared(e);
                let may_be_stale =
                    !e.is_not_found() && (!e.is_key_rejection() || self.stale_on_rejection);
                match self.last.get(path).filter(|_| may_be_stale) {
                    Some(answer) => {
                        tracing::warn!(upstream = RELEASES_NAME, info = path, error = %e, "release-download endpoint failed; serving its last answer");
                        Ok((answer, CacheStatus::Stale))
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Where `file/<name>` comes from and what it must match: its md5 from `info/json` when
    /// listed with one.
    pub async fn file_source(&self, name: &str) -> Result<DistSource, ProxyError> {
        let (listing, _) = self.info("json").await?;
        let md5 = match listing.listing() {
            Ok(files) => files.get(name).cloned().flatten(),
            Err(why) => {
                return Err(ProxyError::Upstream(UpstreamError::Invalid(format!(
                    "info/json of the release-download endpoint: {why}"
                ))))
            }
        };
        let url = self
            .base
            .join(&format!("file/{name}"))
            .map_err(|e| ProxyError::BadRequest(format!("not a release file name: {e}")))?;
        Ok(DistSource::new(
            format!("{RELEASES_NAME}/{name}"),
            None,
            url.to_string(),
            md5.map(Checksum::Md5),
            name.ends_with(".zip"),
        ))
    }

    async fn fetch_info(&self, path: &str) -> Result<Arc<InfoAnswer>, ProxyError> {
        let url = self
            .base
            .join(&format!("info/{path}"))
            .map_err(|e| ProxyError::BadRequest(format!("not an info path: {e}")))?;
        let body = match self.client.get_metadata(url.as_str(), None).await? {
            MetadataResponse::Fresh { body, .. } => body,
            MetadataResponse::NotModified => {
                return Err(UpstreamError::Invalid("304 to an unconditional request".into()).into())
            }
            MetadataResponse::Status(status) => return Err(info_error(status, path)),
        };
        let body = self.hide_token(body);
        let json = serde_json::from_slice::<Value>(&body).is_ok();
        let answer = Arc::new(InfoAnswer::new(body.clone(), json));
        self.last.insert(path.to_string(), answer.clone());
        if path == "json" {
            let saved = self.saved_listing_path();
            self.disk
                .save_shared_metadata(&saved, &body, "saving the release listing")
                .await;
        }
        Ok(answer)
    }

    fn saved_listing_path(&self) -> std::path::PathBuf {
        self.disk.state_path(Some(RELEASES_NAME), SAVED_LISTING)
    }

    /// `body` with every form of the token in it replaced.
    fn hide_token(&self, body: Bytes) -> Bytes {
        let hidden = self.hidden.read().unwrap_or_else(|p| p.into_inner());
        let mut body = body;
        for secret in hidden.iter() {
            if let Some(replaced) = replace_all(&body, secret.as_bytes(), b"<token>") {
                body = replaced.into();
            }
        }
        body
    }
}

/// The forms in which a token could be quoted back: as it is, and URL-encoded (as in a
/// `https://MAGEID:TOKEN@…` usage line).
fn hidden_forms(credentials: Option<&Credentials>) -> Vec<String> {
    let Some(token) = credentials.map(|c| c.private_key.expose()) else {
        return Vec::new();
    };
    let encoded = utf8_percent_encode(token, NON_ALPHANUMERIC).to_string();
    let mut forms = vec![token.to_string()];
    if encoded != token {
        forms.push(encoded);
    }
    forms
}

/// `haystack` with every `needle` replaced, or `None` when there is none. Pure.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || !haystack.windows(needle.len()).any(|w| w == needle) {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What an endpoint status for `info/<what>` means for a client of the proxy: a rejected token
/// is the organisation's problem to fix (502 that says what to check), never a 401 to the client.
fn info_error(status: http::StatusCode, what: &str) -> ProxyError {
    match status.as_u16() {
        401 => ProxyError::DownloadTokenRejected { status: 401 },
        _ => ProxyError::from_upstream_status(
            status,
            Resource::Metadata,
            true,
            &format!("info/{what} of the release-download endpoint"),
        ),
    }
}

/// An archive-store failure of `file/<name>`, told as release downloads tell it.
pub fn file_error(e: ProxyError, name: &str) -> ProxyError {
    match innermost(&e) {
        ProxyError::KeysRejected { status, .. } => {
            ProxyError::DownloadTokenRejected { status: *status }
        }
        ProxyError::UpstreamNotFound { .. } => ProxyError::NotFound(format!(
            "the release-download endpoint has no file {name} for the organisation's MAGEID"
        )),
        _ => e,
    }
}

fn innermost(e: &ProxyError) -> &ProxyError {
    match e {
        ProxyError::Shared(inner) => innermost(inner),
        other => other,
    }
}

/// `info/json`: an object of categories, each a list of `{"file_name": …, "md5": …, …}`. An md5
/// that is not 32 hex digits counts as none: nothing could match it. Pure.
pub fn parse_listing(body: &[u8]) -> Result<HashMap<String, Option<String>>, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let categories = json
        .as_object()
        .ok_or("not an object of categories")?
        .values();
    let mut files = HashMap::new();
    for file in categories.filter_map(Value::as_array).flatten() {
        let Some(name) = file.get("file_name").and_then(Value::as_str) else {
            continue;
        };
        let md5 = file
            .get("md5")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .filter(|m| crate::composer::is_hex_digest(m, 32));
        files.insert(name.to_string(), md5);
    }
    Ok(files)
}

/// Release downloads are degraded when the token is rejected or the endpoint fails. They
/// never make the proxy unready: Composer installs do not depend on them. Pure.
fn degraded(rejected: bool, failing_for: Option<Duration>) -> Option<String> {
    if rejected {
        return Some(
            "the release-download endpoint rejected the download access token (check [downloads] \
             mage_id and token; a newly generated token disables the old one)"
                .into(),
        );
    }
    failing_for.map(|d| {
        format!(
            "the release-download endpoint has been unreachable or failing for {} s",
            d.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_gives_each_file_its_md5_and_old_files_none() {
        let md5 = "0123456789ABCDEF0123456789abcdef";
        let body = format!(
            r#"{{"ce-full": [{{"file_name": "Magento-CE-2.4.6.tar.gz", "md5": "{md5}", "size": 1}},
                             {{"file_name": "magento-1.9.0.0.zip"}}],
                 "patches": [{{"file_name": "odd.zip", "md5": "not-a-digest"}}, {{"no": "name"}}],
                 "notes": "not a list"}}"#
        );
        let files = parse_listing(body.as_bytes()).expect("parses");
        assert_eq!(
            files["Magento-CE-2.4.6.tar.gz"].as_deref(),
            Some(md5.to_ascii_lowercase().as_str())
        );
        assert_eq!(files["magento-1.9.0.0.zip"], None);
        assert_eq!(files["odd.zip"], None);
        assert_eq!(files.len(), 3);
        assert!(parse_listing(b"[1, 2]").is_err());
        assert!(parse_listing(b"<html>").is_err());
    }

    #[test]
    fn a_quoted_token_is_replaced_in_every_form() {
        let credentials = Credentials {
            public_key: crate::config::Secret::new("MAG1"),
            private_key: crate::config::Secret::new("t/k+n"),
            source: crate::config::KeySource::Settings,
        };
        let forms = hidden_forms(Some(&credentials));
        assert_eq!(forms, ["t/k+n", "t%2Fk%2Bn"]);
        let body = b"curl https://MAG1:t%2Fk%2Bn@host/info/help # or t/k+n, t/k+n";
        let mut out = body.to_vec();
        for form in &forms {
            out = replace_all(&out, form.as_bytes(), b"<token>").unwrap_or(out);
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            "curl https://MAG1:<token>@host/info/help # or <token>, <token>"
        );
        assert_eq!(replace_all(b"clean", b"t/k+n", b"x"), None);
        assert!(hidden_forms(None).is_empty());
    }

    #[test]
    fn endpoint_refusals_become_what_clients_are_told() {
        let rejected = info_error(http::StatusCode::UNAUTHORIZED, "json");
        assert!(matches!(
            rejected,
            ProxyError::DownloadTokenRejected { status: 401 }
        ));
        assert!(info_error(http::StatusCode::NOT_FOUND, "filter/x").is_not_found());
        assert_eq!(
            info_error(http::StatusCode::BAD_GATEWAY, "json").status(),
            502
        );
        let shared = ProxyError::Shared(Arc::new(ProxyError::KeysRejected {
            status: 401,
            keys_configured: true,
        }));
        assert!(matches!(
            file_error(shared, "a.zip"),
            ProxyError::DownloadTokenRejected { status: 401 }
        ));
        let missing = ProxyError::Shared(Arc::new(ProxyError::UpstreamNotFound {
            what: Resource::Archive,
            detail: "x".into(),
        }));
        let e = file_error(missing, "a.zip");
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("a.zip"), "{e}");
    }

    #[test]
    fn a_rejected_token_or_failing_endpoint_is_a_degradation_with_its_reason() {
        assert_eq!(degraded(false, None), None);
        let why = degraded(true, None).expect("rejected");
        assert!(why.contains("download access token"), "{why}");
        let why = degraded(false, Some(Duration::from_secs(90))).expect("failing");
        assert!(why.contains("90 s"), "{why}");
    }
}
