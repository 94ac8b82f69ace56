//! Who gets in: the network allowlist with `X-Forwarded-For` from trusted and untrusted peers,
//! and client tokens through their whole lifecycle, issued and revoked with the real
//! `composer-proxy tokens` command and presented by the real Composer client from auth.json.
//!
//! Composer runs as a child process, so these tests use a multi-threaded runtime and wait for
//! it in `block_in_place`, leaving the in-process proxy free to serve it.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::catalogue::Catalogue;
use support::composer::ComposerProject;
use support::downloads::{DownloadsMock, Listed, ReleaseFile};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::{created_secret, ProxyProcess};
use support::proxy::{base_env, downloads_env, get, get_with, Reply, TestProxy};

const PRODUCT: &str = "magento/product-community-edition";

async fn proxy_with(mock: &MockUpstream, settings: &[(&str, &str)]) -> TestProxy {
    let mut env = base_env(&mock.url());
    env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestProxy::start_with(env, None).await
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    // The test client connects from 127.0.0.1, which is not allowed itself: only the clients
    // a trusted proxy names can get in.
    let proxy = proxy_with(
        &mock,
        &[
            ("COMPOSER_PROXY_ALLOW", "10.0.0.0/8"),
            ("COMPOSER_PROXY_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    let root = format!("{}/packages.json", proxy.url);
    let status = |xff: &'static str| {
        let root = root.clone();
        async move {
            let headers: Vec<(&str, &str)> = if xff.is_empty() {
                vec![]
            } else {
                vec![("x-forwarded-for", xff)]
            };
            get_with(&root, &headers).await
        }
    };

    let denied = status("203.0.113.9").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied.warning().contains("203.0.113.9"),
        "{}",
        denied.warning()
    );
    // A client cannot forge its way in by writing an allowed address on the left: the
    // rightmost address the trusted proxy appended is the client.
    assert_eq!(
        status("10.1.2.3, 203.0.113.9").await.status,
        StatusCode::FORBIDDEN
    );
    // The trusted proxy itself, naming nobody, is not in the allowlist either.
    assert_eq!(status("").await.status, StatusCode::FORBIDDEN);
    let garbage = status("10.1.2.3, not-an-address").await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(
        garbage.warning().contains("X-Forwarded-For"),
        "{}",
        garbage.warning()
    );
    assert!(
        mock.requests().is_empty(),
        "refused requests never reach the upstream"
    );

    assert_eq!(status("10.1.2.3").await.status, StatusCode::OK);
    assert_eq!(status("203.0.113.9, 10.1.2.3").await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let proxy = proxy_with(
        &mock,
        &[
            ("COMPOSER_PROXY_ALLOW", "10.0.0.0/8"),
            ("COMPOSER_PROXY_TRUSTED_PROXIES", "192.0.2.1/32"),
        ],
    )
    .await;
    let reply = get_with(
        &format!("{}/packages.json", proxy.url),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.warning().contains("127.0.0.1"), "{}", reply.warning());

    // With the default allowlist, a forged outside address does not lock a local client out.
    let open = proxy_with(&mock, &[]).await;
    let reply = get_with(
        &format!("{}/packages.json", open.url),
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Runs `composer-proxy tokens ARGS` on the token file, as an administrator would.
fn tokens(tokens_file: &Path, public_url: &str, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .arg("tokens")
        .args(args)
        .env_clear()
        .env("COMPOSER_PROXY_TOKENS_FILE", tokens_file)
        .env("COMPOSER_PROXY_PUBLIC_URL", public_url)
        .env("COMPOSER_PROXY_REQUIRE_TOKENS", "true")
        .output()
        .expect("composer-proxy tokens runs");
    output
}

fn tokens_ok(tokens_file: &Path, public_url: &str, args: &[&str]) -> String {
    let output = tokens(tokens_file, public_url, args);
    assert!(
        output.status.success(),
        "tokens {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A token change must reach the running proxy within a second: asks until the answer is
/// `expected`, for at most that long after the change was made.
async fn within_a_second(url: &str, headers: &[(&str, &str)], expected: StatusCode) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let reply = get_with(url, headers).await;
        if reply.status == expected {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "still {} a second after the token change",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn release_downloads_are_behind_the_allowlist_and_client_tokens_too() {
    let catalogue = Arc::new(Catalogue::magento(1));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let file = ReleaseFile::new("Magento-CE-2.4.6.tar.gz", 2000, Listed::Md5);
    let downloads = DownloadsMock::start("MAG1", "tok3n", vec![file.clone()]).await;
    let releases = downloads_env(&downloads.url(), "MAG1", "tok3n");
    let settings = |extra: &[(&str, &str)]| {
        let mut env = base_env(&mock.url());
        env.extend(releases.clone());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let paths = [
        "/releases/info/json".to_string(),
        format!("/releases/file/{}", file.name),
    ];

    let outside =
        TestProxy::start_with(settings(&[("COMPOSER_PROXY_ALLOW", "10.0.0.0/8")]), None).await;
    for path in &paths {
        let reply = get(&format!("{}{path}", outside.url)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(
        downloads.authorizations().is_empty(),
        "nothing was asked upstream"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_file = dir.path().join("tokens.json");
    let file_setting = tokens_file.to_str().expect("utf-8");
    let guarded = TestProxy::start_with(
        settings(&[
            ("COMPOSER_PROXY_REQUIRE_TOKENS", "true"),
            ("COMPOSER_PROXY_TOKENS_FILE", file_setting),
        ]),
        None,
    )
    .await;
    let secret = created_secret(&tokens_ok(
        &tokens_file,
        &guarded.url,
        &["create", "--name", "ci"],
    ));
    let bearer = format!("Bearer {secret}");
    for path in &paths {
        let url = format!("{}{path}", guarded.url);
        let refused = get(&url).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(refused.warning().contains("client token"), "{path}");
        let allowed = within_a_second(&url, &[("authorization", &bearer)], StatusCode::OK).await;
        assert!(!allowed.body.is_empty(), "{path}");
    }
}

fn composer_run(project: &ComposerProject, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| project.run(args))
}

fn combined(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifecycle_with_composer_and_auth_json() {
    let catalogue = Arc::new(Catalogue::magento(3));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let data = tempfile::tempdir().expect("tempdir");
    let tokens_file = data.path().join("tokens.json");
    let proxy = proxy_with(
        &mock,
        &[
            ("COMPOSER_PROXY_REQUIRE_TOKENS", "true"),
            (
                "COMPOSER_PROXY_TOKENS_FILE",
                tokens_file.to_str().expect("utf-8"),
            ),
        ],
    )
    .await;
    let host = proxy.addr.to_string();
    let root = format!("{}/packages.json", proxy.url);

    // No token: 401 asking for Basic credentials, and Composer tells its user why.
    let reply = get(&root).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.headers["www-authenticate"],
        "Basic realm=\"composer-proxy\""
    );
    let anonymous = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    let output = composer_run(
        &anonymous,
        &["install", "--no-progress", "--no-interaction"],
    );
    assert!(!output.status.success());
    let text = combined(&output);
    assert!(text.contains("requires a client token"), "{text}");
    assert!(text.contains("401"), "{text}");
    // Probes and scrapes need no token.
    for path in ["/healthz", "/metrics"] {
        assert_eq!(
            get(&format!("{}{path}", proxy.url)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }

    // Issue: the secret is printed once, with the auth.json entry for this host.
    let created = tokens_ok(&tokens_file, &proxy.url, &["create", "--name", "ci-runner"]);
    let secret = created_secret(&created);
    assert!(
        created.contains(&format!("http-basic.{host} ci-runner {secret}")),
        "{created}"
    );
    let stored = std::fs::read_to_string(&tokens_file).expect("token file");
    assert!(
        !stored.contains(&secret),
        "the secret is stored only hashed"
    );

    // A new token is accepted within a second; Composer installs with it in auth.json, as
    // http-basic and as bearer.
    let bearer_header = format!("Bearer {secret}");
    within_a_second(&root, &[("authorization", &bearer_header)], StatusCode::OK).await;
    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]).with_http_basic(
        &host,
        "ci-runner",
        &secret,
    );
    tokio::task::block_in_place(|| project.run_ok(&["install", "--no-progress"]));
    assert!(project
        .installed_file("magento/framework", "composer.json")
        .is_some());
    let bearer =
        ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]).with_bearer(&host, &secret);
    tokio::task::block_in_place(|| bearer.run_ok(&["install", "--no-progress"]));

    // Last use shows in the list, which never shows the secret or its hash.
    proxy.state.tokens.flush_last_use();
    let list = tokens_ok(&tokens_file, &proxy.url, &["list", "--json"]);
    let listed: Value = serde_json::from_str(&list).expect("json list");
    assert_eq!(listed[0]["name"], "ci-runner");
    assert_eq!(listed[0]["state"], "active");
    assert!(listed[0]["last_used"].is_string(), "{list}");
    let table = tokens_ok(&tokens_file, &proxy.url, &["list"]);
    let hash = serde_json::from_str::<Value>(&stored).expect("json")["tokens"][0]["sha256"]
        .as_str()
        .expect("hash")
        .to_string();
    for output in [&list, &table] {
        assert!(
            !output.contains(&secret) && !output.contains(&hash),
            "{output}"
        );
    }

    // A wrong token is 401; Composer, holding credentials, gives up instead of prompting.
    let wrong = get_with(&root, &[("authorization", "Bearer cpt_not-a-real-token")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.warning().contains("does not know this client token"));

    // Disabling takes effect on the very next request, with no restart and no waiting.
    let with_token = [("authorization", format!("Bearer {secret}"))];
    let with_token: Vec<(&str, &str)> = with_token.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Revocation applies to the running proxy within a second, without a restart.
    tokens_ok(&tokens_file, &proxy.url, &["disable", "ci-runner"]);
    let refused = within_a_second(&root, &with_token, StatusCode::FORBIDDEN).await;
    assert!(
        refused.warning().contains("\"ci-runner\" is disabled"),
        "{}",
        refused.warning()
    );
    project.fresh_cache();
    project.clean_install_state();
    let output = composer_run(&project, &["install", "--no-progress", "--no-interaction"]);
    assert!(!output.status.success());
    let text = combined(&output);
    assert!(text.contains("\"ci-runner\" is disabled"), "{text}");

    tokens_ok(&tokens_file, &proxy.url, &["enable", "ci-runner"]);
    within_a_second(&root, &with_token, StatusCode::OK).await;
    tokio::task::block_in_place(|| project.run_ok(&["install", "--no-progress"]));

    tokens_ok(&tokens_file, &proxy.url, &["delete", "ci-runner"]);
    let deleted = within_a_second(&root, &with_token, StatusCode::FORBIDDEN).await;
    assert!(
        deleted.warning().contains("\"ci-runner\" was deleted"),
        "{}",
        deleted.warning()
    );
    project.fresh_cache();
    project.clean_install_state();
    let output = composer_run(&project, &["install", "--no-progress", "--no-interaction"]);
    assert!(!output.status.success());
    assert!(combined(&output).contains("was deleted"));
    // Deleted for good: it cannot be enabled again.
    assert!(!tokens(&tokens_file, &proxy.url, &["enable", "ci-runner"])
        .status
        .success());
}

#[test]
fn refusals_are_logged_with_reason_and_token_name_never_the_secret() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = runtime.block_on(MockUpstream::start(MockOptions::new(
        Protocol::V1,
        catalogue,
    )));
    let data = tempfile::tempdir().expect("tempdir");
    let tokens_file = data.path().join("tokens.json");
    let env: Vec<(String, String)> = base_env(&mock.url())
        .into_iter()
        .filter(|(k, _)| k != "COMPOSER_PROXY_LISTEN")
        .chain([
            ("COMPOSER_PROXY_REQUIRE_TOKENS".into(), "true".into()),
            (
                "COMPOSER_PROXY_TOKENS_FILE".into(),
                tokens_file.to_str().expect("utf-8").into(),
            ),
            (
                "COMPOSER_PROXY_CACHE_DIR".into(),
                data.path().join("cache").to_str().expect("utf-8").into(),
            ),
        ])
        .collect();
    let proxy = ProxyProcess::start(&env);
    let secret = created_secret(&tokens_ok(
        &tokens_file,
        &proxy.url,
        &["create", "--name", "alice"],
    ));
    let root = format!("{}/packages.json", proxy.url);
    let bearer = format!("Bearer {secret}");
    runtime.block_on(async {
        within_a_second(&root, &[("authorization", &bearer)], StatusCode::OK).await;
        assert_eq!(get(&root).await.status, StatusCode::UNAUTHORIZED);
    });
    tokens_ok(&tokens_file, &proxy.url, &["disable", "alice"]);
    runtime.block_on(within_a_second(
        &root,
        &[("authorization", &bearer)],
        StatusCode::FORBIDDEN,
    ));

    let served = proxy
        .wait_for_log(|v| v["message"] == "request" && v["status"] == 200 && v["route"] == "root")
        .unwrap_or_else(|| panic!("no access line: {}", proxy.log_text()));
    assert_eq!(served["token"], "alice", "{served}");
    let is_refusal =
        |v: &Value, reason: &str| v["event"] == "token_refused" && v["reason"] == reason;
    let missing = proxy
        .wait_for_log(|v| is_refusal(v, "missing"))
        .unwrap_or_else(|| panic!("no refusal logged: {}", proxy.log_text()));
    assert!(missing["token"].is_null(), "{missing}");
    let disabled = proxy
        .wait_for_log(|v| is_refusal(v, "disabled"))
        .unwrap_or_else(|| panic!("no refusal logged: {}", proxy.log_text()));
    assert_eq!(disabled["token"], "alice", "{disabled}");
    assert!(!proxy.log_text().contains(&secret));
}
