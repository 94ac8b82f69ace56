//! The monitoring files in `deploy/monitoring/` name only metrics the proxy really exports.
//!
//! A dashboard panel or an alert on a misspelt or renamed metric does not fail: it shows "no
//! data" or never fires, and nobody notices until the outage it was meant to catch. So this
//! test reads the Grafana dashboard and the Prometheus rules, collects every
//! `composer_proxy_*` name they mention, runs the real proxy in front of the mock
//! repo.magento.com, and checks each name against the `# TYPE` lines of its `/metrics`.

use crate::support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use http::StatusCode;
use support::catalogue::Catalogue;
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::proxy::{get, TestProxy};

const PREFIX: &str = "composer_proxy_";

/// Files whose metric names must exist, relative to the repository root.
const MONITORING_FILES: &[&str] = &[
    "deploy/monitoring/grafana-dashboard.json",
    "deploy/monitoring/alerts.yaml",
];

/// Series suffixes of a histogram (or summary) family; the family itself has no series.
const FAMILY_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn read_repo_file(rel: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), rel].iter().collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `composer_proxy_…` identifier in `text`. Identifiers are matched whole: a name
/// preceded by another identifier character (`x_composer_proxy_…`, recording rules such as
/// `job:composer_proxy_…`) is someone else's, and upper-case `COMPOSER_PROXY_*` environment
/// variables do not match at all.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(PREFIX) {
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// Whether `/metrics` exposes `name`: as a family of its own, or as a `_bucket`/`_sum`/
/// `_count` series of a histogram or summary family.
fn is_exported(exposition: &str, name: &str) -> bool {
    let declares = |family: &str, kinds: &[&str]| {
        exposition.lines().any(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some("#")
                && words.next() == Some("TYPE")
                && words.next() == Some(family)
                && words
                    .next()
                    .is_some_and(|kind| kinds.is_empty() || kinds.contains(&kind))
        })
    };
    declares(name, &[])
        || FAMILY_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|family| declares(family, &["histogram", "summary"]))
        })
}

#[test]
fn metric_names_are_found_whole() {
    let text = r#"sum(rate(composer_proxy_requests_total{cache="HIT"}[5m])) / x_composer_proxy_other
        job:composer_proxy_recorded:rate5m COMPOSER_PROXY_LISTEN
        histogram_quantile(0.9, rate(composer_proxy_request_duration_seconds_bucket[5m]))"#;
    assert_eq!(
        metric_names(text).into_iter().collect::<Vec<_>>(),
        [
            "composer_proxy_request_duration_seconds_bucket",
            "composer_proxy_requests_total"
        ]
    );
}

#[test]
fn histogram_series_resolve_to_their_family() {
    let exposition = "# HELP composer_proxy_x_seconds Time.\n\
                      # TYPE composer_proxy_x_seconds histogram\n\
                      # TYPE composer_proxy_y_count counter\n";
    assert!(is_exported(exposition, "composer_proxy_x_seconds_bucket"));
    assert!(is_exported(exposition, "composer_proxy_x_seconds_count"));
    assert!(is_exported(exposition, "composer_proxy_y_count"));
    assert!(!is_exported(exposition, "composer_proxy_y"));
    assert!(!is_exported(exposition, "composer_proxy_x"));
}

#[tokio::test]
async fn every_metric_named_by_the_dashboard_and_alerts_is_exported() {
    let mut wanted = BTreeSet::new();
    for rel in MONITORING_FILES {
        let text = read_repo_file(rel);
        if rel.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"));
        }
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{rel} names no composer_proxy_* metric");
        wanted.extend(names);
    }
    // Guards the scanner itself: the dashboard's first panels are built on this one.
    assert!(
        wanted.contains("composer_proxy_requests_total"),
        "{wanted:?}"
    );

    // Traffic that touches every route kind and both caches, so that families whose
    // exposition depends on having been used have been.
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let proxy = TestProxy::start(&mock.url()).await;
    assert_eq!(
        get(&format!("{}/healthz", proxy.url)).await.status,
        StatusCode::OK
    );
    let root = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(root.status, StatusCode::OK);
    let p2 = get(&format!("{}/p2/magento/module-m001.json", proxy.url)).await;
    assert_eq!(p2.status, StatusCode::OK);
    let dist_url = p2.json()["packages"]["magento/module-m001"][0]["dist"]["url"]
        .as_str()
        .expect("a dist url")
        .to_string();
    for _ in 0..2 {
        assert_eq!(get(&dist_url).await.status, StatusCode::OK);
    }
    assert_eq!(
        get(&format!("{}/readyz", proxy.url)).await.status,
        StatusCode::OK
    );
    // Keys refused, so the key families get a series. The answer does not matter here (the
    // background Composer 1 chain build may already have fetched this package).
    mock.set_reject_keys(true);
    get(&format!("{}/p2/magento/module-m002.json", proxy.url)).await;
    mock.set_reject_keys(false);

    let metrics = get(&format!("{}/metrics", proxy.url)).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let exposition = String::from_utf8(metrics.body.to_vec()).expect("UTF-8 exposition");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !is_exported(&exposition, name))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/monitoring names metrics that /metrics does not export: {missing:?}\n\
         --- /metrics ---\n{exposition}"
    );
    proxy.stop().await;
    mock.stop().await;
}
