//! Client tokens shared through a bucket (a real S3-compatible server, moto's, started by the
//! tests): a token created with `composer-proxy tokens create` against the bucket is accepted by
//! every replica within a second, refused by every replica within a second of `tokens
//! disable`, concurrent `tokens create` commands all land in the file, and last use recorded
//! by the replicas shows in `tokens list`. Persisted metadata is shared the same way: a new
//! replica with an empty `cache_dir` installs while the upstream is down.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::bucket::Moto;
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::{created_secret, ProxyProcess};
use support::proxy::get_with;

/// How long a token change may take to reach every replica.
const PROPAGATION: Duration = Duration::from_secs(1);

/// A replica on the bucket at `endpoint` that requires client tokens.
fn replica_env(mock: &MockUpstream, endpoint: &str, cache: &Path) -> Vec<(String, String)> {
    let mut env = support::bucket::replica_env(mock, endpoint, cache);
    env.push(("COMPOSER_PROXY_REQUIRE_TOKENS".into(), "true".into()));
    env
}

/// Runs `composer-proxy tokens ARGS` with only the bucket's settings: no token file on disk is
/// shared with any replica, so whatever they learn comes through the bucket.
fn tokens(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .arg("tokens")
        .args(args)
        .env_clear()
        .envs(Moto::env(endpoint))
        .env("COMPOSER_PROXY_REQUIRE_TOKENS", "true")
        .output()
        .expect("composer-proxy tokens runs")
}

fn tokens_ok(endpoint: &str, args: &[&str]) -> String {
    let output = tokens(endpoint, args);
    assert!(
        output.status.success(),
        "tokens {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn listed(endpoint: &str) -> Vec<Value> {
    let out = tokens_ok(endpoint, &["list", "--json"]);
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .expect("a list")
        .clone()
}

/// Asks every replica until each answers `expected`; fails if one still does not after
/// [`PROPAGATION`] from `since`. Returns how long the slowest took.
async fn everywhere_within_a_second(
    replicas: &[ProxyProcess],
    secret: &str,
    expected: StatusCode,
    since: Instant,
) -> Duration {
    let bearer = format!("Bearer {secret}");
    let headers = [("authorization", bearer.as_str())];
    let mut slowest = Duration::ZERO;
    for replica in replicas {
        let url = format!("{}/packages.json", replica.url);
        loop {
            let status = get_with(&url, &headers).await.status;
            let elapsed = since.elapsed();
            if status == expected {
                slowest = slowest.max(elapsed);
                break;
            }
            assert!(
                elapsed < PROPAGATION,
                "{} still answers {status}, not {expected}, {elapsed:?} after the change",
                replica.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_changes_through_the_bucket_reach_every_replica_within_a_second() {
    let catalogue = Arc::new(Catalogue::magento(1));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let caches: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("cache"))
        .collect();
    let replicas: Vec<_> = tokio::task::block_in_place(|| {
        caches
            .iter()
            .map(|c| ProxyProcess::start(&replica_env(&mock, &endpoint, c.path())))
            .collect()
    });

    let out = tokio::task::block_in_place(|| tokens_ok(&endpoint, &["create", "--name", "ci"]));
    let created = Instant::now();
    let secret = created_secret(&out);
    let accepted = everywhere_within_a_second(&replicas, &secret, StatusCode::OK, created).await;
    eprintln!("a created token was accepted by all 3 replicas after {accepted:?}");

    tokio::task::block_in_place(|| tokens_ok(&endpoint, &["disable", "ci"]));
    let disabled = Instant::now();
    let refused =
        everywhere_within_a_second(&replicas, &secret, StatusCode::FORBIDDEN, disabled).await;
    eprintln!("a disabled token was refused by all 3 replicas after {refused:?}");
    // Nothing reached the replicas through their own directories.
    for cache in &caches {
        assert!(!cache.path().join("tokens.json").exists());
    }

    tokio::task::block_in_place(|| tokens_ok(&endpoint, &["enable", "ci"]));
    everywhere_within_a_second(&replicas, &secret, StatusCode::OK, Instant::now()).await;
    // The replicas write last use every few seconds; `tokens list` shows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = tokio::task::block_in_place(|| listed(&endpoint));
        if list[0]["last_used"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "no last use recorded: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn concurrent_token_commands_never_lose_each_others_change() {
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let names: Vec<String> = (0..4).map(|i| format!("runner-{i}")).collect();
    let commands: Vec<_> = names
        .iter()
        .map(|name| {
            let (endpoint, name) = (endpoint.clone(), name.clone());
            std::thread::spawn(move || tokens(&endpoint, &["create", "--name", &name]))
        })
        .collect();
    for command in commands {
        let output = command.join().expect("thread");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut stored: Vec<String> = listed(&endpoint)
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    stored.sort();
    assert_eq!(stored, names);
    // A second token of a name in use is refused, as with a file.
    let again = tokens(&endpoint, &["create", "--name", "runner-0"]);
    assert!(!again.status.success());
    assert_eq!(listed(&endpoint).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_installs_from_the_bucket_while_the_upstream_is_down() {
    const PRODUCT: &str = "magento/product-community-edition";
    let catalogue = Arc::new(Catalogue::magento(10));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let moto = Moto::start();
    let endpoint = moto.endpoint();
    let (cache_a, cache_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut env_a = replica_env(&mock, &endpoint, cache_a.path());
    env_a.retain(|(k, _)| k != "COMPOSER_PROXY_REQUIRE_TOKENS");
    let a = tokio::task::block_in_place(|| ProxyProcess::start(&env_a));
    let install = |url: String| {
        tokio::task::block_in_place(move || {
            let project = ComposerProject::new(&url, &[(PRODUCT, "2.4.7")]);
            project.run_ok(&["install", "--no-progress"]);
            project
        })
    };
    install(a.url.clone());
    let fetched = mock.count_prefix("/archives/");
    // Both tiers are written after the answers: wait until the bucket has everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    while moto.list("archives").await.len() < fetched || moto.list("metadata").await.is_empty() {
        assert!(Instant::now() < deadline, "the bucket never got everything");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metadata = moto.list("metadata").await;
    assert!(
        metadata.iter().any(|(key, _)| key.ends_with("/root.json")),
        "{metadata:?}"
    );
    mock.stop().await;
    drop(a);

    let mut env_b = env_a.clone();
    env_b.retain(|(k, _)| k != "COMPOSER_PROXY_CACHE_DIR");
    env_b.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        cache_b.path().to_str().expect("utf-8").into(),
    ));
    let b = tokio::task::block_in_place(|| ProxyProcess::start(&env_b));
    let project = install(b.url.clone());
    let locked = project.locked_versions();
    let product = catalogue.version(PRODUCT, "2.4.7").expect("product");
    for (name, _) in &product.require {
        assert_installed_matches(&project, &catalogue, name, &locked[name]);
    }
    assert!(
        cache_b
            .path()
            .join("metadata")
            .read_dir()
            .expect("metadata")
            .count()
            > 0,
        "the bucket's metadata is kept locally too"
    );
}
