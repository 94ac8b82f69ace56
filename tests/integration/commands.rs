//! The administrative commands, run as the real binary against the in-process mock
//! repo.magento.com: `check` verdicts and exit statuses, `warm` on a lock file made by the real
//! Composer client, and through a running proxy without keys (`--via`), the `cache` chores
//! beside a running proxy, and `lock migrate` without keys followed by a real
//! `composer install` through the proxy.
//!
//! The binary is a child process, so tests run on a multi-threaded runtime: the mock and the
//! in-process proxy keep serving while a test awaits the child or blocks on Composer.

use crate::support;

mod cache;
mod lock;
mod warm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use sha1::{Digest, Sha1};
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::downloads::DownloadsMock;
use support::github::GitHubApiMock;
use support::mock_upstream::{
    MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY,
};
use support::process::created_secret;
use support::proxy::{base_env, get, TestProxy};

const PRODUCT: &str = "magento/product-community-edition";
/// Enough modules for a lock of a few dozen packages; the e2e tests cover Magento's size.
const MODULES: usize = 20;

struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Panics with the whole output unless the command exited with `status`.
    fn expect_status(&self, status: i32) -> &Run {
        assert_eq!(
            self.status,
            Some(status),
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The number after `label: ` at the start of a line of stdout.
    fn count(&self, label: &str) -> usize {
        let prefix = format!("{label}: ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or_else(|| panic!("no `{label}: N` line in\n{}", self.stdout))
    }

    fn assert_no_keys(&self) {
        for text in [&self.stdout, &self.stderr] {
            assert!(
                !text.contains(TEST_PUBLIC_KEY) && !text.contains(TEST_PRIVATE_KEY),
                "a key was printed:\n{text}"
            );
        }
    }
}

/// Runs the binary with exactly these settings (nothing inherited from the test's environment).
async fn composer_proxy(args: &[&str], env: &[(String, String)]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the binary runs");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a CI job without the keys has: the upstream's URL, and `extra`.
fn keyless_env(upstream: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![(
        "COMPOSER_PROXY_UPSTREAM_URL".to_string(),
        upstream.to_string(),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The test proxy's settings with `cache` as the cache directory.
fn env_with_cache(upstream: &str, cache: &Path) -> Vec<(String, String)> {
    let mut env = base_env(upstream);
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        cache.to_str().expect("utf-8 path").into(),
    ));
    env
}

fn composer(project: &ComposerProject, args: &[&str]) -> String {
    tokio::task::block_in_place(|| project.run_ok(args))
}

async fn v1_mock(modules: usize) -> (Arc<Catalogue>, MockUpstream) {
    let catalogue = Arc::new(Catalogue::magento(modules));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    (catalogue, mock)
}

/// A lock made the old way, by Composer straight against `mock` with the keys: the project
/// and its composer.lock.
fn locked_directly(mock: &MockUpstream) -> (ComposerProject, String) {
    let direct = ComposerProject::new(&mock.url(), &[(PRODUCT, "2.4.6")]).with_http_basic(
        &mock.addr().to_string(),
        TEST_PUBLIC_KEY,
        TEST_PRIVATE_KEY,
    );
    composer(&direct, &["install", "--no-progress"]);
    let lock = std::fs::read_to_string(direct.path().join("composer.lock")).expect("read lock");
    (direct, lock)
}

/// Locked packages that have an archive (everything but metapackages).
fn locked_archives(project: &ComposerProject, catalogue: &Catalogue) -> Vec<(String, String)> {
    project
        .locked_versions()
        .into_iter()
        .filter(|(name, version)| {
            catalogue
                .version(name, version)
                .unwrap_or_else(|| panic!("{name} {version} is not in the catalogue"))
                .archive
                .is_some()
        })
        .collect()
}

/// `archives/<aa>/<key>.bin` files and their descriptions' package names.
fn stored_archives(cache: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(cache.join("archives")).expect("archives dir") {
        for file in std::fs::read_dir(shard.expect("shard").path()).expect("shard dir") {
            let path = file.expect("file").path();
            if path.extension().is_some_and(|e| e == "bin") {
                let meta: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(path.with_extension("json")).expect("description"),
                )
                .expect("description is JSON");
                let package = meta["package"].as_str().expect("package").to_string();
                found.push((path, package));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_ok_with_the_packages_the_key_sees() {
    for protocol in [Protocol::V1, Protocol::P2] {
        let catalogue = Arc::new(Catalogue::magento(3));
        let mock = MockUpstream::start(MockOptions::new(protocol, catalogue.clone())).await;
        let run = composer_proxy(&["check"], &base_env(&mock.url())).await;
        run.expect_status(0).assert_no_keys();
        assert_eq!(
            run.stdout.lines().next(),
            Some(
                format!(
                    "OK: upstream accepted the key pair; {} packages visible",
                    catalogue.packages.len()
                )
                .as_str()
            ),
            "{protocol:?}: {}",
            run.stdout
        );
        assert_eq!(mock.count_without_credentials(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_asks_github_whether_it_accepts_the_token() {
    const GOOD: &str = "ghp_accepted0123456789";
    let (_, mock) = v1_mock(2).await;
    let api = GitHubApiMock::start(Some(GOOD)).await;
    let env = |token: &str| {
        let mut env = base_env(&mock.url());
        env.push(("COMPOSER_PROXY_GITHUB_API_URL".into(), api.url()));
        env.push(("COMPOSER_PROXY_GITHUB_TOKEN".into(), token.into()));
        env
    };
    let run = composer_proxy(&["check"], &env(GOOD)).await;
    run.expect_status(0).assert_no_keys();
    assert!(
        run.stdout
            .contains("github: OK: the API accepts the token; 5000 of 5000 requests left"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(GOOD));

    let revoked = "ghp_revoked0123456789";
    let run = composer_proxy(&["check"], &env(revoked)).await;
    run.expect_status(3).assert_no_keys();
    assert!(
        run.stdout.contains("github: TOKEN REJECTED"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(revoked) && !run.stderr.contains(revoked));

    let asked = api.requests();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|r| r.path == "/rate_limit"));
    assert!(mock.requests().iter().all(|r| !r
        .authorization
        .clone()
        .unwrap_or_default()
        .contains("ghp_")));

    let mut without = base_env(&mock.url());
    without.push(("COMPOSER_PROXY_GITHUB_API_URL".into(), api.url()));
    let run = composer_proxy(&["check"], &without).await;
    run.expect_status(0);
    assert!(run.stdout.contains("github: no token"), "{}", run.stdout);
    assert_eq!(api.requests().len(), 2, "nothing to ask without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_asks_the_release_endpoint_whether_it_takes_the_token() {
    const MAGE_ID: &str = "MAG000111222";
    const TOKEN: &str = "dl-token-0123456789abcdef";
    let (_, mock) = v1_mock(2).await;
    let downloads = DownloadsMock::start(MAGE_ID, TOKEN, Vec::new()).await;
    let mut env = base_env(&mock.url());
    env.push(("COMPOSER_PROXY_DOWNLOADS_URL".into(), downloads.url()));
    env.push(("COMPOSER_PROXY_DOWNLOADS_MAGE_ID".into(), MAGE_ID.into()));
    env.push(("COMPOSER_PROXY_DOWNLOADS_TOKEN".into(), TOKEN.into()));
    let run = composer_proxy(&["check"], &env).await;
    run.expect_status(0);
    assert!(
        run.stdout
            .contains("downloads: OK: the release-download endpoint accepts"),
        "{}",
        run.stdout
    );
    downloads.set_reject(true);
    let run = composer_proxy(&["check", "--json"], &env).await;
    run.expect_status(3);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(report["services"]["downloads"]["verdict"], "keys_rejected");
    assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_rejected_keys_and_what_to_check() {
    let (_, mock) = v1_mock(3).await;
    mock.set_reject_keys(true);
    let run = composer_proxy(&["check"], &base_env(&mock.url())).await;
    run.expect_status(3).assert_no_keys();
    assert!(run.stdout.starts_with("KEYS REJECTED: "), "{}", run.stdout);
    assert!(
        run.stdout.contains("Commerce Marketplace account"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tries_every_fallback_key_pair_on_its_own() {
    let (_, mock) = v1_mock(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fallback = dir.path().join("fallback-keys");
    let spare = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    );
    std::fs::write(&fallback, format!("{}:{}\n", spare.0, spare.1)).expect("write");
    let mut env = base_env(&mock.url());
    env.push((
        "COMPOSER_PROXY_FALLBACK_KEYS_FILE".into(),
        fallback.to_str().expect("utf-8").into(),
    ));
    // The primary pair works; the spare would only fail once the proxy needed it.
    let run = composer_proxy(&["check"], &env).await;
    run.expect_status(3).assert_no_keys();
    assert!(run.stdout.starts_with("KEYS REJECTED: "), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("key pair 1 of 2 (public_key/private_key): OK: "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("key pair 2 of 2 (fallback_keys_file): KEYS REJECTED: "),
        "{}",
        run.stdout
    );
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(spare.0) && !text.contains(spare.1), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_an_unreachable_upstream() {
    let (_, mock) = v1_mock(3).await;
    let url = mock.url();
    mock.stop().await;
    let run = composer_proxy(&["check"], &base_env(&url)).await;
    run.expect_status(4).assert_no_keys();
    assert!(
        run.stdout.starts_with("UPSTREAM UNREACHABLE: "),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_keys_says_so_and_asks_nobody() {
    let (_, mock) = v1_mock(3).await;
    let env: Vec<(String, String)> = base_env(&mock.url())
        .into_iter()
        .filter(|(k, _)| !k.ends_with("_KEY"))
        .collect();
    let run = composer_proxy(&["check"], &env).await;
    run.expect_status(6);
    assert!(
        run.stdout.starts_with("NO KEYS CONFIGURED: "),
        "{}",
        run.stdout
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_an_untrusted_certificate_from_an_outage() {
    let addr = untrusted_tls_server().await;
    let run = composer_proxy(&["check"], &base_env(&format!("https://{addr}"))).await;
    run.expect_status(5).assert_no_keys();
    assert!(run.stdout.starts_with("TLS PROBLEM: "), "{}", run.stdout);
    assert!(run.stdout.contains("upstream_ca_file"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_still_exit_64() {
    let mut env = base_env("ftp://nowhere");
    env.push(("COMPOSER_PROXY_CACHE_DIR".into(), "/nonexistent".into()));
    for args in [
        &["check"][..],
        &["warm", "--lock", "composer.lock"],
        &["cache", "stats"],
        &["lock", "migrate", "composer.lock"],
    ] {
        composer_proxy(args, &env).await.expect_status(64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_help_lists_every_exit_status() {
    let run = composer_proxy(&["check", "--help"], &[]).await;
    run.expect_status(0);
    for line in [
        "0   OK",
        "3   KEYS REJECTED",
        "4   UPSTREAM UNREACHABLE",
        "5   TLS PROBLEM",
        "6   NO KEYS CONFIGURED",
        "7   UPSTREAM ERROR",
        "64  the configuration is invalid",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }
}

/// A TLS listener whose self-signed certificate no client trusts; it completes no handshake.
async fn untrusted_tls_server() -> std::net::SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // The client refuses the certificate, so the handshake fails; nothing to serve.
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    addr
}
