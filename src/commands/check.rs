//! `composer-proxy check`: do the configured key pairs work against the configured upstreams?
//!
//! It asks each upstream for `packages.json` exactly as the proxy would (same client, same TLS
//! roots, same timeouts) and, for a Composer 1 upstream, its provider listings, which say how
//! many packages the key may see. Each upstream gets one verdict line with its own exit status,
//! so a deploy pipeline can tell a revoked key from a network or certificate problem; the
//! command exits with the worst of them.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use crate::commands::{CommandError, EXIT_OK};
use crate::composer::{self, UpstreamRoot};
use crate::config::{Config, Credentials, GitHubConfig, KeySource, UpstreamConfig};
use crate::metrics::Metrics;
use crate::upstream::{GitHub, MetadataResponse, RequestKind, UpstreamClient, UpstreamError};

/// What `check` concluded; each has its own exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Upstream accepted the keys; how many packages they may see, when upstream says.
    Ok {
        packages: Option<usize>,
    },
    /// 401 (or 403 for `packages.json` or a listing): the key pair itself is refused.
    KeysRejected {
        status: u16,
    },
    Unreachable(String),
    Tls(String),
    NoKeysConfigured,
    /// Reachable, but the answer is not a usable Composer repository (5xx, 404, bad JSON).
    UpstreamError(String),
}

/// Exit statuses of `check`, also listed in its `--help` and the README.
pub const EXIT_KEYS_REJECTED: u8 = 3;
pub const EXIT_UNREACHABLE: u8 = 4;
pub const EXIT_TLS: u8 = 5;
pub const EXIT_NO_KEYS: u8 = 6;
pub const EXIT_UPSTREAM_ERROR: u8 = 7;

impl Verdict {
    pub fn exit_status(&self) -> u8 {
        match self {
            Verdict::Ok { .. } => EXIT_OK,
            Verdict::KeysRejected { .. } => EXIT_KEYS_REJECTED,
            Verdict::Unreachable(_) => EXIT_UNREACHABLE,
            Verdict::Tls(_) => EXIT_TLS,
            Verdict::NoKeysConfigured => EXIT_NO_KEYS,
            Verdict::UpstreamError(_) => EXIT_UPSTREAM_ERROR,
        }
    }

    /// How bad it is, to pick the worst of several upstreams: the account first (a rejected
    /// key pair needs someone to act), then the way there, then the answer.
    fn severity(&self) -> u8 {
        match self {
            Verdict::Ok { .. } => 0,
            Verdict::NoKeysConfigured => 1,
            Verdict::UpstreamError(_) => 2,
            Verdict::Tls(_) => 3,
            Verdict::Unreachable(_) => 4,
            Verdict::KeysRejected { .. } => 5,
        }
    }

    fn from_upstream_error(e: UpstreamError) -> Verdict {
        match e {
            UpstreamError::Unreachable(detail) => Verdict::Unreachable(detail),
            UpstreamError::Timeout(during) => Verdict::Unreachable(format!("timed out {during}")),
            UpstreamError::Tls(detail) => Verdict::Tls(detail),
            e @ (UpstreamError::TooManyRedirects(_)
            | UpstreamError::Invalid(_)
            | UpstreamError::RateLimited { .. }) => Verdict::UpstreamError(e.to_string()),
        }
    }
}

impl fmt::Display for Verdict {
    /// The verdict line: a fixed prefix scripts can match, then what it means.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok {
                packages: Some(n),
            } => write!(f, "OK: upstream accepted the key pair; {n} packages visible"),
            Verdict::Ok { packages: None } => write!(
                f,
                "OK: upstream accepted the key pair; it does not list its packages"
            ),
            Verdict::KeysRejected { status } => write!(
                f,
                "KEYS REJECTED: upstream answered HTTP {status} to the configured key pair"
            ),
            Verdict::Unreachable(detail) => write!(f, "UPSTREAM UNREACHABLE: {detail}"),
            Verdict::Tls(detail) => write!(f, "TLS PROBLEM: {detail}"),
            Verdict::NoKeysConfigured => write!(
                f,
                "NO KEYS CONFIGURED: composer-proxy has no key pair for the upstream"
            ),
            Verdict::UpstreamError(detail) => write!(
                f,
                "UPSTREAM ERROR: upstream answered, but not as a usable Composer repository: {detail}"
            ),
        }
    }
}

/// Runs the check and prints the verdict with what to do about it.
///
/// Every configured key pair (the primary and each fallback) is tried on its own: a fallback
/// that upstream refuses would only show when the proxy needs it. The verdict is OK when all
/// are accepted, else that of the first which is not.
pub async fn run(config: &Config) -> Result<u8, CommandError> {
    let mut worst = EXIT_OK;
    let mut worst_severity = 0;
    for (i, upstream) in config.upstreams.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let verdict = check_upstream(upstream, &config.github).await?;
        if verdict.severity() > worst_severity {
            worst_severity = verdict.severity();
            worst = verdict.exit_status();
        }
    }
    println!();
    if let Some(verdict) = check_github(config).await? {
        if verdict.severity() > worst_severity {
            worst = verdict.exit_status();
        }
    }
    Ok(worst)
}

/// Asks the GitHub API whether it accepts `github_token` (its `/rate_limit` endpoint, which
/// costs nothing of the allowance) and prints how much of the hour's allowance is left. Without
/// a token there is nothing to check: zipballs come from codeload, which needs none.
async fn check_github(config: &Config) -> Result<Option<Verdict>, CommandError> {
    let github = &config.github;
    let Some(source) = github.token_source else {
        println!(
            "github: no token: zipballs come straight from {} (public repositories only)",
            github.codeload
        );
        return Ok(None);
    };
    // Any upstream's client will do: the token goes to the API origin whichever sends it.
    let client = UpstreamClient::new(
        &config.upstreams[0],
        Arc::new(GitHub::new(github)),
        Arc::new(Metrics::default()),
    )
    .map_err(|e| CommandError::Usage(format!("{e:#}")))?;
    let url = format!("{}/rate_limit", github.api.as_str().trim_end_matches('/'));
    let sent = client
        .send(
            RequestKind::Metadata,
            http::Method::GET,
            &url,
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
        .await;
    let verdict = match sent {
        Ok(response) if response.status.is_success() => {
            let header = |name: &str| {
                response
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string()
            };
            println!(
                "github: OK: the API accepts the token; {} of {} requests left this hour",
                header("x-ratelimit-remaining"),
                header("x-ratelimit-limit")
            );
            println!("  token from: {source}");
            return Ok(Some(Verdict::Ok { packages: None }));
        }
        Ok(response) if response.status == StatusCode::UNAUTHORIZED => Verdict::KeysRejected {
            status: response.status.as_u16(),
        },
        Ok(response) => Verdict::UpstreamError(format!("HTTP {} for {url}", response.status)),
        Err(e) => Verdict::from_upstream_error(e),
    };
    match &verdict {
        Verdict::KeysRejected { status } => {
            println!("github: TOKEN REJECTED: the GitHub API answered HTTP {status} to the token");
            println!("  token from: {source}");
            println!(
                "  Create a new token (no scopes are needed for public repositories) and update \
                 github_token or github_token_file; a rotated file applies without a restart."
            );
        }
        other => {
            println!("github: {other}");
            println!("  token from: {source}");
            println!(
                "  Check that github_api_url ({}) is reachable from this host.",
                github.api
            );
        }
    }
    Ok(Some(verdict))
}

/// Checks one upstream, prints its verdict, and returns it.
async fn check_upstream(
    config: &UpstreamConfig,
    github: &GitHubConfig,
) -> Result<Verdict, CommandError> {
    let mut pairs: Vec<Option<Credentials>> = config.key_pairs().into_iter().map(Some).collect();
    // A named upstream may need no credentials (packagist.org): check it as it is.
    if pairs.is_empty() && config.named {
        pairs.push(None);
    }
    let mut results: Vec<(Option<KeySource>, Verdict)> = Vec::new();
    for pair in &pairs {
        let upstream = UpstreamConfig {
            credentials: pair.clone(),
            fallback: Vec::new(),
            ..config.clone()
        };
        // The only failure here is an unusable `upstream_ca_file`, named as a setting.
        let github = Arc::new(GitHub::new(github));
        let client = UpstreamClient::new(&upstream, github, Arc::new(Metrics::default()))
            .map_err(|e| CommandError::Usage(format!("{e:#}")))?;
        let verdict = probe(&client).await;
        // Only a refusal is about one key pair; anything else would repeat for the others.
        let stop = !matches!(verdict, Verdict::Ok { .. } | Verdict::KeysRejected { .. });
        results.push((pair.as_ref().map(|p| p.source), verdict));
        if stop {
            break;
        }
    }
    let verdict = results
        .iter()
        .map(|(_, v)| v)
        .find(|v| !matches!(v, Verdict::Ok { .. }))
        .or(results.first().map(|(_, v)| v))
        .unwrap_or(&Verdict::NoKeysConfigured);
    if config.named {
        println!("{}: {verdict}", config.name);
    } else {
        println!("{verdict}");
    }
    println!("  upstream: {}", config.url);
    let source = |s: &Option<KeySource>| s.map_or("none", KeySource::as_str);
    match results.as_slice() {
        [] => {}
        [(s, _)] => println!("  key pair from: {}", source(s)),
        several => {
            for (i, (s, v)) in several.iter().enumerate() {
                println!(
                    "  key pair {} of {} ({}): {v}",
                    i + 1,
                    pairs.len(),
                    source(s)
                );
            }
        }
    }
    for line in advice(verdict, config) {
        println!("  {line}");
    }
    Ok(verdict.clone())
}

/// What to check next, for each verdict.
fn advice(verdict: &Verdict, config: &UpstreamConfig) -> Vec<String> {
    let host = config.url.host_str().unwrap_or("the upstream");
    match verdict {
        Verdict::Ok { .. } => Vec::new(),
        Verdict::KeysRejected { .. } => vec![
            "Check in the Commerce Marketplace account (My Profile > Access Keys) that this key \
             pair exists and is enabled,"
                .into(),
            "that public_key holds the Public Key and private_key the Private Key (not swapped), \
             and that the account is in good standing (licences, invoices)."
                .into(),
        ],
        Verdict::Unreachable(_) => vec![format!(
            "Check DNS, firewalls and outbound proxies between this host and {host}, and \
             upstream_url."
        )],
        Verdict::Tls(_) => vec![
            format!("The certificate {host} presented is not trusted, has expired or names another host."),
            "If the upstream uses a private CA, set upstream_ca_file; check the system clock and \
             any TLS-intercepting proxy on the way."
                .into(),
        ],
        Verdict::NoKeysConfigured => vec![
            "Set public_key and private_key (COMPOSER_PROXY_PUBLIC_KEY, \
             COMPOSER_PROXY_PRIVATE_KEY), public_key_file and private_key_file, auth_json, or \
             COMPOSER_AUTH."
                .into(),
        ],
        Verdict::UpstreamError(_) => vec![format!(
            "Check that upstream_url names a Composer repository, and whether {host} reports an \
             outage."
        )],
    }
}

/// Asks upstream for `packages.json` and, for a v1 upstream, every provider listing.
async fn probe(client: &UpstreamClient) -> Verdict {
    let root_url = composer::root_url(client.base());
    let body = match fetch(client, &root_url).await {
        Ok(body) => body,
        Err(verdict) => return verdict,
    };
    let root = match composer::parse_root(&body, client.base()) {
        Ok(root) => root,
        Err(e) => return Verdict::UpstreamError(format!("packages.json: {e}")),
    };
    match root {
        UpstreamRoot::P2 {
            available_packages, ..
        } => Verdict::Ok {
            packages: available_packages.map(|names| names.iter().collect::<BTreeSet<_>>().len()),
        },
        UpstreamRoot::V1 { includes, .. } => {
            let base = composer::repository_base(client.base());
            let mut names = BTreeSet::new();
            for include in includes {
                let path = include.path_for(&include.sha256);
                let listing = match fetch(client, &format!("{base}/{path}")).await {
                    Ok(listing) => listing,
                    Err(verdict) => return verdict,
                };
                let parsed = composer::verify_sha256(&listing, &include.sha256, &path)
                    .and_then(|()| composer::parse_listing(&listing));
                match parsed {
                    Ok(packages) => names.extend(packages.into_keys()),
                    Err(e) => return Verdict::UpstreamError(e.to_string()),
                }
            }
            Verdict::Ok {
                packages: Some(names.len()),
            }
        }
    }
}

/// One metadata document, or the verdict its failure amounts to.
async fn fetch(client: &UpstreamClient, url: &str) -> Result<bytes::Bytes, Verdict> {
    match client.get_metadata(url, None).await {
        Ok(MetadataResponse::Fresh { body, .. }) => Ok(body),
        // For the repository's own documents a 403 is about the account, as the proxy
        // treats it (not about one package).
        Ok(MetadataResponse::Status(
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        )) => Err(Verdict::KeysRejected {
            status: status.as_u16(),
        }),
        Ok(MetadataResponse::Status(status)) => {
            Err(Verdict::UpstreamError(format!("HTTP {status} for {url}")))
        }
        Ok(MetadataResponse::NotModified) => Err(Verdict::UpstreamError(format!(
            "HTTP 304 to an unconditional request for {url}"
        ))),
        Err(e) => Err(Verdict::from_upstream_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_has_its_own_exit_status_and_prefix() {
        let verdicts = [
            Verdict::Ok { packages: Some(3) },
            Verdict::KeysRejected { status: 401 },
            Verdict::Unreachable("x".into()),
            Verdict::Tls("x".into()),
            Verdict::NoKeysConfigured,
            Verdict::UpstreamError("x".into()),
        ];
        let statuses: BTreeSet<u8> = verdicts.iter().map(Verdict::exit_status).collect();
        assert_eq!(statuses.len(), verdicts.len());
        assert!(!statuses.contains(&crate::commands::EXIT_CONFIG));
        assert!(!statuses.contains(&crate::commands::EXIT_FAILED));
        assert_eq!(
            verdicts[0].to_string(),
            "OK: upstream accepted the key pair; 3 packages visible"
        );
        for (v, prefix) in verdicts.iter().zip([
            "OK:",
            "KEYS REJECTED:",
            "UPSTREAM UNREACHABLE:",
            "TLS PROBLEM:",
            "NO KEYS CONFIGURED:",
            "UPSTREAM ERROR:",
        ]) {
            assert!(v.to_string().starts_with(prefix), "{v}");
        }
    }

    #[test]
    fn timeouts_count_as_unreachable() {
        assert_eq!(
            Verdict::from_upstream_error(UpstreamError::Timeout("waiting")).exit_status(),
            EXIT_UNREACHABLE
        );
    }
}
