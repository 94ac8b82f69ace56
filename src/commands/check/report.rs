//! What `check` concluded, per upstream and for GitHub, and how it is told: verdict lines
//! with what to check next, the entitlement report of several accounts, or JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Value};

use crate::commands::EXIT_OK;
use crate::config::{KeySource, UpstreamConfig};
use crate::upstream::UpstreamError;

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

/// Exit statuses of `check`, also listed in its `--help` and docs/operations.md.
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
    pub fn severity(&self) -> u8 {
        match self {
            Verdict::Ok { .. } => 0,
            Verdict::NoKeysConfigured => 1,
            Verdict::UpstreamError(_) => 2,
            Verdict::Tls(_) => 3,
            Verdict::Unreachable(_) => 4,
            Verdict::KeysRejected { .. } => 5,
        }
    }

    pub fn from_upstream_error(e: UpstreamError) -> Verdict {
        match e {
            UpstreamError::Unreachable(detail) => Verdict::Unreachable(detail),
            UpstreamError::Timeout(during) => Verdict::Unreachable(format!("timed out {during}")),
            UpstreamError::Tls(detail) => Verdict::Tls(detail),
            e @ (UpstreamError::TooManyRedirects(_)
            | UpstreamError::Invalid(_)
            | UpstreamError::TooLarge { .. }
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

/// What to check next, for each verdict.
pub fn advice(verdict: &Verdict, config: &UpstreamConfig) -> Vec<String> {
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

impl Verdict {
    /// The verdict as a word for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Ok { .. } => "ok",
            Verdict::KeysRejected { .. } => "keys_rejected",
            Verdict::Unreachable(_) => "unreachable",
            Verdict::Tls(_) => "tls",
            Verdict::NoKeysConfigured => "no_keys",
            Verdict::UpstreamError(_) => "upstream_error",
        }
    }
}

/// What `check` found out about one upstream.
#[derive(Debug)]
pub struct UpstreamReport {
    pub name: String,
    pub named: bool,
    pub url: String,
    /// OK when every key pair was accepted, else that of the first that was not.
    pub verdict: Verdict,
    /// Each key pair tried (primary first), where it came from, and its verdict.
    pub pairs: Vec<(Option<KeySource>, Verdict)>,
    /// Every package name the key pair sees, when the upstream lists them.
    pub names: Option<BTreeSet<String>>,
    pub advice: Vec<String>,
    /// Of several accounts of one repository: the names no other account sees (`None` when
    /// that cannot be told).
    pub only_here: Option<Vec<String>>,
    /// The other accounts of the same repository.
    pub accounts: Vec<String>,
}

impl UpstreamReport {
    pub fn new(config: &UpstreamConfig, pairs: Vec<(Option<KeySource>, Verdict)>) -> Self {
        let verdict = pairs
            .iter()
            .map(|(_, v)| v)
            .find(|v| !matches!(v, Verdict::Ok { .. }))
            .or(pairs.first().map(|(_, v)| v))
            .cloned()
            .unwrap_or(Verdict::NoKeysConfigured);
        UpstreamReport {
            name: config.name.clone(),
            named: config.named,
            url: config.url.to_string(),
            advice: advice(&verdict, config),
            verdict,
            pairs,
            names: None,
            only_here: None,
            accounts: Vec::new(),
        }
    }
}

/// A service checked beside the upstreams: GitHub about `github_token`, the release-download
/// endpoint about the MAGEID and token.
#[derive(Debug)]
pub struct ServiceReport {
    /// `github` or `downloads`: its key in `--json`.
    pub name: &'static str,
    pub verdict: Verdict,
    /// The verdict line as printed.
    pub line: String,
    pub token_source: Option<&'static str>,
    pub advice: Vec<String>,
}

/// The entitlement report: for every repository configured as several accounts (tables with
/// the same URL), what each account alone reaches, which is what losing it would cost.
pub fn entitlements(reports: &mut [UpstreamReport]) {
    let mut by_url: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, report) in reports.iter().enumerate() {
        by_url.entry(report.url.clone()).or_default().push(i);
    }
    for members in by_url.into_values().filter(|m| m.len() > 1) {
        for &i in &members {
            let others: Vec<usize> = members.iter().copied().filter(|&j| j != i).collect();
            reports[i].accounts = others.iter().map(|&j| reports[j].name.clone()).collect();
            let seen_elsewhere: Option<Vec<&BTreeSet<String>>> =
                others.iter().map(|&j| reports[j].names.as_ref()).collect();
            let only_here = match (&reports[i].names, seen_elsewhere) {
                (Some(mine), Some(theirs)) => Some(
                    mine.iter()
                        .filter(|n| !theirs.iter().any(|t| t.contains(*n)))
                        .cloned()
                        .collect(),
                ),
                _ => None,
            };
            reports[i].only_here = only_here;
        }
    }
}

/// The text `check` prints.
pub fn text(reports: &[UpstreamReport], services: &[ServiceReport]) -> String {
    let mut out = String::new();
    let source = |s: &Option<KeySource>| s.map_or("none", KeySource::as_str);
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if r.named {
            out.push_str(&format!("{}: {}\n", r.name, r.verdict));
        } else {
            out.push_str(&format!("{}\n", r.verdict));
        }
        out.push_str(&format!("  upstream: {}\n", r.url));
        match r.pairs.as_slice() {
            [] => {}
            [(s, _)] => out.push_str(&format!("  key pair from: {}\n", source(s))),
            several => {
                for (n, (s, v)) in several.iter().enumerate() {
                    out.push_str(&format!(
                        "  key pair {} of {} ({}): {v}\n",
                        n + 1,
                        several.len(),
                        source(s)
                    ));
                }
            }
        }
        if !r.accounts.is_empty() {
            out.push_str(&match &r.only_here {
                Some(names) if names.is_empty() => format!(
                    "  only this account reaches: nothing ({} see everything it sees)\n",
                    r.accounts.join(", ")
                ),
                Some(names) => format!(
                    "  only this account reaches {} package{}: {}\n",
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
                None => "  only this account reaches: unknown (not every account could be asked)\n"
                    .to_string(),
            });
        }
        for line in &r.advice {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for g in services {
        out.push_str(&format!("\n{}\n", g.line));
        if let Some(source) = g.token_source {
            out.push_str(&format!("  token from: {source}\n"));
        }
        for line in &g.advice {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// The same, for `--json`.
pub fn json(reports: &[UpstreamReport], services: &[ServiceReport], exit: u8) -> Value {
    let upstreams: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "url": r.url,
                "verdict": r.verdict.code(),
                "message": r.verdict.to_string(),
                "exit_status": r.verdict.exit_status(),
                "packages": r.names.as_ref().map(BTreeSet::len),
                "key_pairs": r.pairs.iter().map(|(s, v)| json!({
                    "source": s.map(KeySource::as_str),
                    "verdict": v.code(),
                    "message": v.to_string(),
                })).collect::<Vec<_>>(),
                "other_accounts": r.accounts,
                "only_this_account": r.only_here,
                "advice": r.advice,
            })
        })
        .collect();
    json!({
        "exit_status": exit,
        "upstreams": upstreams,
        "services": services.iter().map(|g| (g.name.to_string(), json!({
            "verdict": g.verdict.code(),
            "message": g.line,
            "token_source": g.token_source,
            "advice": g.advice,
        }))).collect::<serde_json::Map<_, _>>(),
    })
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

    fn report(name: &str, url: &str, names: Option<&[&str]>) -> UpstreamReport {
        UpstreamReport {
            name: name.into(),
            named: true,
            url: url.into(),
            verdict: Verdict::Ok { packages: None },
            pairs: Vec::new(),
            names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            advice: Vec::new(),
            only_here: None,
            accounts: Vec::new(),
        }
    }

    #[test]
    fn each_account_is_told_what_only_it_reaches() {
        let magento = "https://repo.magento.com/";
        let mut reports = vec![
            report("agency", magento, Some(&["a/shared", "a/agency-only"])),
            report("client", magento, Some(&["a/shared", "a/client-only"])),
            report("packagist", "https://repo.packagist.org/", None),
        ];
        entitlements(&mut reports);
        assert_eq!(
            reports[0].only_here,
            Some(vec!["a/agency-only".to_string()])
        );
        assert_eq!(
            reports[1].only_here,
            Some(vec!["a/client-only".to_string()])
        );
        assert_eq!(reports[0].accounts, vec!["client".to_string()]);
        assert!(reports[2].accounts.is_empty() && reports[2].only_here.is_none());
        let text = text(&reports, &[]);
        assert!(
            text.contains("only this account reaches 1 package: a/agency-only"),
            "{text}"
        );

        // An account that could not be asked makes the others' report unknown, not empty.
        let mut reports = vec![
            report("agency", magento, Some(&["a/shared"])),
            report("client", magento, None),
        ];
        entitlements(&mut reports);
        assert_eq!(reports[0].only_here, None);
        let json = json(&reports, &[], 3);
        assert_eq!(json["upstreams"][0]["only_this_account"], Value::Null);
        assert_eq!(json["exit_status"], 3);
    }
}
