//! `composer-proxy check`: do the configured key pairs work against the configured upstreams?
//!
//! It asks each upstream for `packages.json` exactly as the proxy would (same client, same TLS
//! roots, same timeouts) and, for a Composer 1 upstream, its provider listings, which say which
//! packages the key may see. Each upstream gets one verdict line with its own exit status, so a
//! deploy pipeline can tell a revoked key from a network or certificate problem; the command
//! exits with the worst of them. Several accounts of one repository also get the entitlement
//! report: what each alone reaches. Each `[[view]]` gets its own: what it can install, per
//! account, and what only one of its accounts provides. GitHub is asked whether it accepts
//! `github_token`.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::StatusCode;

use crate::commands::{CommandError, EXIT_OK};
use crate::composer::{self, UpstreamRoot};
use crate::config::{Config, Credentials, GitHubConfig, KeySource, UpstreamConfig};
use crate::metrics::Metrics;
use crate::upstream::{GitHub, MetadataResponse, RequestKind, UpstreamClient};

mod report;
mod views;

use report::{ServiceReport, UpstreamReport};
pub use report::{
    Verdict, EXIT_KEYS_REJECTED, EXIT_NO_KEYS, EXIT_TLS, EXIT_UNREACHABLE, EXIT_UPSTREAM_ERROR,
};

/// Runs the check and prints the verdicts (as text, or as JSON with `json`) with what to do.
///
/// Every configured key pair (the primary and each fallback) is tried on its own: a fallback
/// that upstream refuses would only show when the proxy needs it. An upstream's verdict is OK
/// when all are accepted, else that of the first which is not.
pub async fn run(config: &Config, json: bool) -> Result<u8, CommandError> {
    let mut reports = Vec::with_capacity(config.upstreams.len());
    for upstream in &config.upstreams {
        reports.push(check_upstream(upstream, &config.github).await?);
    }
    report::entitlements(&mut reports);
    let views = views::reports(&config.views, &reports);
    let services: Vec<ServiceReport> =
        [check_github(config).await?, check_downloads(config).await?]
            .into_iter()
            .flatten()
            .collect();
    let worst = reports
        .iter()
        .map(|r| &r.verdict)
        .chain(services.iter().map(|s| &s.verdict))
        .max_by_key(|v| v.severity())
        .map_or(EXIT_OK, Verdict::exit_status);
    if json {
        let mut value = report::json(&reports, &services, worst);
        value["views"] = views::json(&views);
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", report::text(&reports, &services));
        print!("{}", views::text(&views));
    }
    Ok(worst)
}

/// Checks one upstream with each of its key pairs.
async fn check_upstream(
    config: &UpstreamConfig,
    github: &GitHubConfig,
) -> Result<UpstreamReport, CommandError> {
    let mut pairs: Vec<Option<Credentials>> = config.key_pairs().into_iter().map(Some).collect();
    // A named upstream may need no credentials (packagist.org): check it as it is.
    if pairs.is_empty() && config.named {
        pairs.push(None);
    }
    let mut results = Vec::new();
    let mut names = None;
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
        let (verdict, seen) = probe(&client).await;
        // What the proxy uses first is what its entitlements are.
        if results.is_empty() {
            names = seen;
        }
        // Only a refusal is about one key pair; anything else would repeat for the others.
        let stop = !matches!(verdict, Verdict::Ok { .. } | Verdict::KeysRejected { .. });
        results.push((pair.as_ref().map(|p| p.source), verdict));
        if stop {
            break;
        }
    }
    let mut report = UpstreamReport::new(config, results);
    report.names = names;
    Ok(report)
}

/// Asks the GitHub API whether it accepts `github_token` (its `/rate_limit` endpoint, which
/// costs nothing of the allowance), and how much of the hour's allowance is left. Without a
/// token there is nothing to ask: zipballs come from codeload, which needs none.
async fn check_github(config: &Config) -> Result<Option<ServiceReport>, CommandError> {
    let github = &config.github;
    let Some(source) = github.token_source else {
        return Ok(Some(ServiceReport {
            name: "github",
            verdict: Verdict::Ok { packages: None },
            line: format!(
                "github: no token: zipballs come straight from {} (public repositories only)",
                github.codeload
            ),
            token_source: None,
            advice: Vec::new(),
        }));
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
    let report = |verdict: Verdict, line: String, advice: Vec<String>| ServiceReport {
        name: "github",
        verdict,
        line,
        token_source: Some(source),
        advice,
    };
    Ok(Some(match sent {
        Ok(response) if response.status.is_success() => {
            let header = |name: &str| {
                response
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string()
            };
            report(
                Verdict::Ok { packages: None },
                format!(
                    "github: OK: the API accepts the token; {} of {} requests left this hour",
                    header("x-ratelimit-remaining"),
                    header("x-ratelimit-limit")
                ),
                Vec::new(),
            )
        }
        Ok(response) if response.status == StatusCode::UNAUTHORIZED => report(
            Verdict::KeysRejected { status: 401 },
            "github: TOKEN REJECTED: the GitHub API answered HTTP 401 to the token".into(),
            vec![
                "Create a new token (no scopes are needed for public repositories) and update \
                 github_token or github_token_file; a rotated file applies without a restart."
                    .into(),
            ],
        ),
        other => {
            let verdict = match other {
                Ok(response) => {
                    Verdict::UpstreamError(format!("HTTP {} for {url}", response.status))
                }
                Err(e) => Verdict::from_upstream_error(e),
            };
            report(
                verdict.clone(),
                format!("github: {verdict}"),
                vec![format!(
                    "Check that github_api_url ({}) is reachable from this host.",
                    github.api
                )],
            )
        }
    }))
}

/// Asks the release-download endpoint (`[downloads]`) for `info/help` with the MAGEID and
/// token, when they are configured: a rejected token shows here before a client needs a file.
async fn check_downloads(config: &Config) -> Result<Option<ServiceReport>, CommandError> {
    let Some(downloads) = &config.downloads else {
        return Ok(None);
    };
    let client = UpstreamClient::new(
        downloads,
        Arc::new(GitHub::new(&config.github)),
        Arc::new(Metrics::default()),
    )
    .map_err(|e| CommandError::Usage(format!("{e:#}")))?;
    let url = format!("{}/info/help", downloads.url.as_str().trim_end_matches('/'));
    let source = downloads.credentials.as_ref().map(|c| match c.source {
        KeySource::KeyFiles => "[downloads] mage_id_file/token_file",
        _ => "[downloads] mage_id/token",
    });
    let (verdict, line, advice) = match client.get_metadata(&url, None).await {
        Ok(MetadataResponse::Fresh { .. }) => (
            Verdict::Ok { packages: None },
            "downloads: OK: the release-download endpoint accepts the MAGEID and token".to_string(),
            Vec::new(),
        ),
        Ok(MetadataResponse::Status(StatusCode::UNAUTHORIZED)) => (
            Verdict::KeysRejected { status: 401 },
            "downloads: TOKEN REJECTED: the release-download endpoint answered HTTP 401"
                .to_string(),
            vec![
                "Check the MAGEID and the download access token (magento.com: My Account > \
                 Account Settings > Downloads Access Token); generating a new token disables \
                 the old one."
                    .to_string(),
            ],
        ),
        other => {
            let verdict = match other {
                Ok(MetadataResponse::Status(status)) => {
                    Verdict::UpstreamError(format!("HTTP {status} for {url}"))
                }
                Ok(_) => Verdict::UpstreamError(format!("an unexpected answer for {url}")),
                Err(e) => Verdict::from_upstream_error(e),
            };
            let line = format!("downloads: {verdict}");
            (
                verdict,
                line,
                vec![format!(
                    "Check that [downloads] url ({}) is reachable from this host.",
                    downloads.url
                )],
            )
        }
    };
    Ok(Some(ServiceReport {
        name: "downloads",
        verdict,
        line,
        token_source: source,
        advice,
    }))
}

/// Asks upstream for `packages.json` and, for a v1 upstream, every provider listing; returns
/// the verdict and the names the key pair sees, when the upstream lists them.
async fn probe(client: &UpstreamClient) -> (Verdict, Option<BTreeSet<String>>) {
    let root_url = composer::root_url(client.base());
    let body = match fetch(client, &root_url).await {
        Ok(body) => body,
        Err(verdict) => return (verdict, None),
    };
    let root = match composer::parse_root(&body, client.base()) {
        Ok(root) => root,
        Err(e) => return (Verdict::UpstreamError(format!("packages.json: {e}")), None),
    };
    let names: Option<BTreeSet<String>> = match root {
        UpstreamRoot::P2 {
            available_packages, ..
        } => available_packages.map(|names| names.into_iter().collect()),
        UpstreamRoot::V1 { includes, .. } => {
            let base = composer::repository_base(client.base());
            let mut names = BTreeSet::new();
            for include in includes {
                let path = include.path_for(&include.sha256);
                let listing = match fetch(client, &format!("{base}/{path}")).await {
                    Ok(listing) => listing,
                    Err(verdict) => return (verdict, None),
                };
                let parsed = composer::verify_sha256(&listing, &include.sha256, &path)
                    .and_then(|()| composer::parse_listing(&listing));
                match parsed {
                    Ok(packages) => names.extend(packages.into_keys()),
                    Err(e) => return (Verdict::UpstreamError(e.to_string()), None),
                }
            }
            Some(names)
        }
    };
    let packages = names.as_ref().map(BTreeSet::len);
    (Verdict::Ok { packages }, names)
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
