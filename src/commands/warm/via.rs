//! `warm --via URL`: every locked archive downloaded from a running proxy, as Composer would
//! download it, so that proxy fetches, verifies and stores each one. Neither the keys nor the
//! cache directory are needed here (both are the proxy's): only its URL and, when it requires
//! them, a client token, sent to that URL's origin alone.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use url::Url;

use super::{Locked, Outcome, Plan, ServedBy};
use crate::commands::CommandError;
use crate::config::{Config, Credentials, KeySource, Secret, UpstreamConfig, CLIENT_TOKEN_VAR};
use crate::metrics::Metrics;
use crate::upstream::{GitHub, RequestKind, StreamingResponse, UpstreamClient, UpstreamError};

/// An error answer is a JSON warning of a few hundred bytes; beyond this it is not read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The running proxy, reached with the client the proxy itself uses for its upstreams.
pub(super) struct Proxy {
    client: UpstreamClient,
    /// Its URL as clients use it, without a trailing slash.
    base: String,
    /// Per upstream (by position): the name it is served under, for `[[upstream]]` tables.
    prefixes: Vec<Option<String>>,
    has_token: bool,
}

impl Proxy {
    pub(super) fn new(
        config: &Config,
        base: &str,
        token: Option<&Secret>,
    ) -> Result<Proxy, CommandError> {
        let url = Url::parse(base).map_err(|e| CommandError::Usage(format!("--via: {e}")))?;
        let Some(first) = config.upstreams.first() else {
            return Err(CommandError::Usage("no upstream is configured".into()));
        };
        // The first upstream's timeouts: the proxy answers no slower than it is answered.
        let settings = UpstreamConfig {
            name: "via".into(),
            named: false,
            url,
            allowed_hosts: Vec::new(),
            // Composer's http-basic with the token as password, which the proxy accepts.
            credentials: token.map(|token| Credentials {
                public_key: Secret::new("token"),
                private_key: token.clone(),
                source: KeySource::Settings,
            }),
            fallback: Vec::new(),
            ca_file: None,
            ..first.clone()
        };
        let github = Arc::new(GitHub::new(&config.github));
        let client = UpstreamClient::new(&settings, github, Arc::new(Metrics::default()))
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(Proxy {
            client,
            base: base.to_string(),
            prefixes: config
                .upstreams
                .iter()
                .map(|u| u.named.then(|| u.name.clone()))
                .collect(),
            has_token: token.is_some(),
        })
    }

    /// The proxy's `packages.json`, before fanning out, so a wrong URL or a refused token is
    /// one clear message rather than a failure per package.
    pub(super) async fn check(&self) -> Result<(), CommandError> {
        let url = format!("{}/packages.json", self.base);
        let cannot = |why: String| anyhow::anyhow!("cannot use the proxy at {}: {why}", self.base);
        let response = self
            .client
            .send(
                RequestKind::Metadata,
                Method::GET,
                &url,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .map_err(|e| cannot(describe(&e)))?;
        if response.status != StatusCode::OK {
            return Err(cannot(self.refusal(response).await).into());
        }
        Ok(())
    }

    pub(super) async fn warm(&self, package: &Locked, plan: Plan) -> Outcome {
        match plan {
            Plan::Fetch { key, ext, upstream } => {
                let url = self.dist_url(&package.name, &key, &ext, &upstream);
                self.download(&url).await.unwrap_or_else(Outcome::Failed)
            }
            Plan::Nothing => Outcome::Nothing,
            Plan::Skip(why) => Outcome::Skipped(why),
        }
    }

    /// Where the proxy serves an archive: under the prefix of the upstream the lock names, as
    /// that upstream's own documents do, else at the merged URL, where the package's owner
    /// serves it.
    fn dist_url(&self, package: &str, key: &str, ext: &str, upstream: &ServedBy) -> String {
        let prefix = match upstream {
            ServedBy::Upstream(i) => self.prefixes.get(*i).cloned().flatten(),
            ServedBy::Named(Some(name)) => {
                self.prefixes.iter().flatten().find(|p| *p == name).cloned()
            }
            ServedBy::Named(None) => None,
        };
        let base = match prefix {
            Some(prefix) => format!("{}/{prefix}", self.base),
            None => self.base.clone(),
        };
        format!("{base}/dists/{package}/{key}.{ext}")
    }

    /// Reads the archive to its end: the proxy stores it only once it is whole and verified,
    /// and a response it cuts short is an error here.
    async fn download(&self, url: &str) -> Result<Outcome, String> {
        let response = self
            .client
            .send(
                RequestKind::Archive,
                Method::GET,
                url,
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .map_err(|e| describe(&e))?;
        if response.status != StatusCode::OK {
            return Err(self.refusal(response).await);
        }
        let cached = response
            .headers
            .get("x-cache")
            .is_some_and(|v| v.as_bytes() == b"HIT");
        let mut body = response.body;
        let read = async {
            let mut received = 0u64;
            loop {
                let frame = tokio::time::timeout(self.client.read_timeout, body.frame())
                    .await
                    .map_err(|_| "the proxy stopped sending the archive".to_string())?;
                match frame {
                    None => return Ok(received),
                    Some(Err(e)) => return Err(format!("the download broke off: {e}")),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            received += data.len() as u64;
                        }
                    }
                }
            }
        };
        let received = tokio::time::timeout(self.client.archive_timeout, read)
            .await
            .map_err(|_| "timed out downloading the archive".to_string())??;
        Ok(if cached {
            Outcome::Cached
        } else {
            Outcome::Fetched(received)
        })
    }

    /// An answer other than 200, with the proxy's JSON warning when it sent one.
    async fn refusal(&self, response: StreamingResponse) -> String {
        let status = response.status;
        let warning = self
            .client
            .read_body(response.body, MAX_ERROR_BODY, None)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .and_then(|json| json.get("warning")?.as_str().map(str::to_string));
        let mut why = format!("HTTP {}", status.as_u16());
        if let Some(warning) = warning {
            why += &format!(": {warning}");
        }
        if status == StatusCode::UNAUTHORIZED && !self.has_token {
            why += &format!(" (pass --token or set {CLIENT_TOKEN_VAR})");
        }
        why
    }
}

/// A failed exchange in words about the proxy (the client's own say "upstream").
fn describe(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Unreachable(detail) => format!("unreachable: {detail}"),
        UpstreamError::Tls(detail) => format!("TLS handshake failed: {detail}"),
        UpstreamError::Timeout(what) => format!("timed out {what}"),
        UpstreamError::TooManyRedirects(n) => format!("more than {n} redirects"),
        UpstreamError::Invalid(detail) => format!("an unusable answer: {detail}"),
        UpstreamError::TooLarge { .. } | UpstreamError::RateLimited { .. } => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    #[test]
    fn archives_are_asked_for_under_the_prefix_of_the_upstream_the_lock_names() {
        let file = "[[upstream]]\nname = \"magento\"\nurl = \"https://repo.magento.com\"\n\
                    [[upstream]]\nname = \"hyva\"\nurl = \"https://hyva-themes.repo.packagist.com\"\n";
        let sources = Sources {
            file: Some(("test.toml".into(), file.into())),
            env: Default::default(),
        };
        let config = Config::load(&sources).expect("valid");
        let proxy = Proxy::new(&config, "https://proxy.example/composer", None).expect("client");
        let key = "a".repeat(32);
        let url = |served: ServedBy| proxy.dist_url("vendor/x", &key, "zip", &served);
        let tail = format!("dists/vendor/x/{key}.zip");
        assert_eq!(
            url(ServedBy::Upstream(1)),
            format!("https://proxy.example/composer/hyva/{tail}")
        );
        assert_eq!(
            url(ServedBy::Named(Some("magento".into()))),
            format!("https://proxy.example/composer/magento/{tail}")
        );
        // A prefix no upstream has (the path of another public URL), or none: the merged URL.
        for served in [
            ServedBy::Named(Some("elsewhere".into())),
            ServedBy::Named(None),
        ] {
            assert_eq!(
                url(served),
                format!("https://proxy.example/composer/{tail}")
            );
        }
    }
}
