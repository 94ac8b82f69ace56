//! Issue 12, "packagist.org through the proxy": GitHub dists. The packagist-like mock publishes
//! its dists as GitHub API zipball URLs; a GitHub API mock redirects them to the mock's second
//! host (codeload) and, like the real API, lets an address without a token make 60 requests,
//! then answers 403 with `X-RateLimit-Remaining: 0`. The real Composer client installs through
//! the proxy; the mocks count requests and the Authorization each carried.

use crate::support;
use crate::support::blocking;

use std::sync::Arc;

use http::{header, StatusCode};
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::github::{GitHubApiMock, UNAUTHENTICATED_LIMIT};
use support::mock_upstream::{MockOptions, MockUpstream};
use support::proxy::{dist_url, get, listen_env, TestProxy};

const TOKEN: &str = "ghp_0123456789abcdefTESTTOKEN";

struct GitHubSetup {
    catalogue: Arc<Catalogue>,
    api: GitHubApiMock,
    packagist: MockUpstream,
    proxy: TestProxy,
}

/// packagist with `libraries` packages whose dists are on the GitHub API mock, and a proxy in
/// front of it with `token` as its github_token (or none).
async fn github_setup(libraries: usize, token: Option<&str>) -> GitHubSetup {
    let catalogue = Arc::new(Catalogue::packagist_libraries(libraries));
    let api = GitHubApiMock::start(token).await;
    let packagist = MockUpstream::start(MockOptions {
        github_api: Some(api.url()),
        ..MockOptions::packagist_like(catalogue.clone())
    })
    .await;
    let codeload = packagist.archive_host_url().expect("codeload host");
    api.set_codeload(&codeload);
    let toml = format!(
        "github_api_url = \"{}\"\ngithub_codeload_url = \"{codeload}\"\n\n[[upstream]]\nname = \"packagist\"\nurl = \"{}\"\n",
        api.url(),
        packagist.url(),
    );
    let mut env = listen_env();
    if let Some(token) = token {
        env.push(("COMPOSER_PROXY_GITHUB_TOKEN".into(), token.into()));
    }
    let proxy = TestProxy::start_with_file(&toml, env, None).await;
    GitHubSetup {
        catalogue,
        api,
        packagist,
        proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_more_dists_than_the_api_allows_install_from_codeload() {
    let libraries = UNAUTHENTICATED_LIMIT + 5;
    let setup = github_setup(libraries, None).await;
    let names: Vec<String> = setup
        .catalogue
        .packages
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let require: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "^1.0")).collect();
    let project = ComposerProject::new(&setup.proxy.url, &require);
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    for name in &names {
        assert_installed_matches(&project, &setup.catalogue, name, "1.1.0");
    }
    assert!(
        setup.api.requests().is_empty(),
        "without a token nothing goes to the API: {:?}",
        setup.api.requests()
    );
    let codeload = setup.packagist.archive_host_requests();
    assert_eq!(
        codeload.len(),
        libraries,
        "one codeload download per package"
    );
    assert!(codeload.iter().all(|r| r.authorization.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_it_reaches_only_the_api_and_dev_main_installs() {
    let setup = github_setup(3, Some(TOKEN)).await;
    let require = [
        ("tooling/lib-000", "dev-main"),
        ("tooling/lib-001", "^1.0"),
        ("tooling/lib-002", "1.0.0"),
    ];
    let project = ComposerProject::new(&setup.proxy.url, &require);
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    assert_installed_matches(&project, &setup.catalogue, "tooling/lib-000", "dev-main");
    assert_installed_matches(&project, &setup.catalogue, "tooling/lib-001", "1.1.0");
    assert_installed_matches(&project, &setup.catalogue, "tooling/lib-002", "1.0.0");
    let lock = project.lock();
    let main = lock["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "tooling/lib-000"))
        .expect("lib-000 locked");
    assert_eq!(main["version"], "dev-main");

    let api = setup.api.requests();
    assert_eq!(api.len(), 3, "each zipball through the API once: {api:?}");
    let expected = format!("token {TOKEN}");
    assert!(
        api.iter()
            .all(|r| r.authorization.as_deref() == Some(expected.as_str())),
        "every API request carries the token, none goes unauthenticated: {api:?}"
    );
    let codeload = setup.packagist.archive_host_requests();
    assert_eq!(codeload.len(), 3);
    let elsewhere = setup.packagist.requests().into_iter().chain(codeload);
    for request in elsewhere {
        let auth = request.authorization.unwrap_or_default();
        assert!(
            !auth.contains(TOKEN),
            "the token went to {}: {auth}",
            request.path
        );
    }

    // A second install (fresh Composer cache) is served from the proxy's cache.
    project.clean_install_state();
    project.fresh_cache();
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    assert_eq!(
        setup.api.requests().len(),
        3,
        "stored after the first download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_api_becomes_a_503_with_retry_after_naming_the_token() {
    let setup = github_setup(1, Some(TOKEN)).await;
    setup.api.exhaust();
    let url = dist_url(&setup.proxy.url, "tooling/lib-000", "1.0.0").await;
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[header::RETRY_AFTER], "1800");
    let warning = reply.json()["warning"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(warning.contains("github_token"), "{warning}");
    assert!(!warning.contains("ghp_"), "{warning}");
    // Not retried: the answer would be the same.
    assert_eq!(setup.api.requests().len(), 1);
    assert!(setup.packagist.archive_host_requests().is_empty());
}
