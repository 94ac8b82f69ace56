//! End to end: Debian's real `composer` client, with no credentials anywhere, installs and
//! updates a Magento-sized tree through the proxy in front of the mock repo.magento.com, and
//! the installed files are compared with the archives byte for byte.
//!
//! Composer runs as a child process, so the test runtime is multi-threaded and the blocking
//! wait happens in `block_in_place`, leaving the in-process proxy free to serve it.

use crate::support;

use std::sync::Arc;
use std::time::Instant;

use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::proxy::{base_env, TestProxy};

/// Modules in the metapackage; with the framework, the extension and the metapackage itself
/// the install has well over 100 packages.
const MODULES: usize = 110;
const PRODUCT: &str = "magento/product-community-edition";

fn composer(project: &ComposerProject, args: &[&str]) -> String {
    tokio::task::block_in_place(|| project.run_ok(args))
}

/// Every package of a product release installed, each equal to its archive.
fn assert_release_installed(
    project: &ComposerProject,
    catalogue: &Catalogue,
    product_version: &str,
) {
    let product = catalogue
        .version(PRODUCT, product_version)
        .expect("product version");
    let locked = project.locked_versions();
    let mut checked = 0;
    for (name, _) in &product.require {
        let version = locked
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in composer.lock"));
        assert_installed_matches(project, catalogue, name, version);
        checked += 1;
    }
    assert!(checked > 100, "only {checked} packages checked");
}

async fn install_update_and_reinstall(protocol: Protocol, redirect_archives: bool) {
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mut opts = MockOptions::new(protocol, catalogue.clone());
    opts.redirect_archives = redirect_archives;
    let mock = MockUpstream::start(opts).await;
    let proxy = TestProxy::start(&mock.url()).await;

    // Cold: nothing cached anywhere.
    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    let started = Instant::now();
    composer(&project, &["install", "--no-progress"]);
    let cold = started.elapsed();
    assert_release_installed(&project, &catalogue, "2.4.6");
    let cold_requests = mock.requests().len();
    let cold_archives = mock.count_prefix("/archives/");
    if redirect_archives {
        let host = mock.archive_host_requests();
        assert_eq!(
            host.len(),
            cold_archives,
            "every archive came from the second host"
        );
        for r in host {
            assert!(
                r.authorization.is_none(),
                "{} carried credentials to another host",
                r.path
            );
        }
    }

    // Update to the next release through the same proxy.
    let mut json = project.composer_json();
    json["require"][PRODUCT] = "2.4.7".into();
    project.write_composer_json(&json);
    composer(&project, &["update", "--no-progress"]);
    assert_release_installed(&project, &catalogue, "2.4.7");

    // Warm: a new client with an empty Composer cache, installing from the lock just made.
    let warm_project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.7")]);
    std::fs::copy(
        project.path().join("composer.lock"),
        warm_project.path().join("composer.lock"),
    )
    .expect("copy lock");
    mock.reset_counts();
    let started = Instant::now();
    composer(&warm_project, &["install", "--no-progress"]);
    let warm = started.elapsed();
    assert_release_installed(&warm_project, &catalogue, "2.4.7");
    let warm_archives = mock.count_prefix("/archives/");
    assert_eq!(
        warm_archives, 0,
        "a warm proxy serves every archive from its cache"
    );

    let all = mock.requests();
    let metadata: Vec<_> = all
        .iter()
        .filter(|r| r.method != "POST" && r.path != "/downloads/")
        .collect();
    assert!(
        metadata.len() <= 1
            && metadata
                .iter()
                .all(|r| r.path == "/packages.json" && r.if_modified_since.is_some()),
        "a warm install costs at most one conditional packages.json: {:?}",
        metadata.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert_eq!(
        mock.count_without_credentials(),
        0,
        "every upstream request carried the keys"
    );
    eprintln!(
        "e2e {protocol:?} redirect={redirect_archives}: cold install {:.2}s ({cold_requests} upstream requests, {cold_archives} archives), \
         warm install {:.2}s ({} upstream requests, {warm_archives} archives)",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        all.len()
    );

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_and_updates_a_magento_tree_from_a_v1_upstream() {
    install_update_and_reinstall(Protocol::V1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_through_a_p2_native_upstream() {
    install_update_and_reinstall(Protocol::P2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_redirected_to_another_host_never_receive_the_keys() {
    install_update_and_reinstall(Protocol::V1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_from_cache_with_upstream_down_before_and_after_a_restart() {
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let env = || {
        let mut env = base_env(&mock.url());
        // Expire metadata quickly, so the installs below really meet an unreachable upstream
        // when revalidating rather than a still-fresh cache.
        env.push(("COMPOSER_PROXY_METADATA_TTL_SECS".into(), "1".into()));
        env
    };
    let proxy = TestProxy::start_with(env(), Some(cache.path())).await;
    let warm_up = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    composer(&warm_up, &["install", "--no-progress"]);
    mock.stop().await;

    // Resolving from scratch (no lock, empty Composer cache) needs every kind of document.
    let offline = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    composer(&offline, &["update", "--no-progress"]);
    assert_release_installed(&offline, &catalogue, "2.4.6");
    proxy.stop().await;

    let restarted = TestProxy::start_with(env(), Some(cache.path())).await;
    let after_restart = ComposerProject::new(&restarted.url, &[(PRODUCT, "2.4.6")]);
    composer(&after_restart, &["update", "--no-progress"]);
    assert_release_installed(&after_restart, &catalogue, "2.4.6");
    restarted.stop().await;
}
