//! `warm`: from the upstreams into a cache directory, and through a running proxy (`--via`)
//! without keys.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fills_a_fresh_cache_from_a_real_lock_and_then_finds_it_all_cached() {
    let (catalogue, mock) = v1_mock(MODULES).await;
    // A real lock, made by Composer through a proxy (its dist URLs are that proxy's).
    let proxy = TestProxy::start(&mock.url()).await;
    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    composer(&project, &["install", "--no-progress"]);
    proxy.stop().await;
    let locked = project.locked_versions().len();
    let archives = locked_archives(&project, &catalogue).len();
    assert!(archives > MODULES, "only {archives} archives in the lock");

    // A fresh cache directory, no proxy running.
    let cache = tempfile::tempdir().expect("cache dir");
    let env = env_with_cache(&mock.url(), cache.path());
    let lock = project.path().join("composer.lock");
    let lock = lock.to_str().expect("utf-8 path");
    mock.reset_counts();
    let run = composer_proxy(&["warm", "--lock", lock, "--concurrency", "4"], &env).await;
    run.expect_status(0).assert_no_keys();
    assert_eq!(run.count("fetched"), archives);
    assert_eq!(run.count("already cached"), 0);
    assert_eq!(run.count("nothing to fetch"), locked - archives);
    assert_eq!(run.count("skipped"), 0);
    assert_eq!(run.count("failed"), 0);
    assert_eq!(mock.count_prefix("/archives/"), archives);
    assert_eq!(stored_archives(cache.path()).len(), archives);
    // stderr is not a terminal here: no progress bar drawing, no log lines.
    assert!(
        !run.stderr.contains('\r') && !run.stderr.contains('\u{1b}'),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    mock.reset_counts();
    let again = composer_proxy(&["warm", "--lock", lock], &env).await;
    again.expect_status(0);
    assert_eq!(again.count("fetched"), 0);
    assert_eq!(again.count("already cached"), archives);
    assert_eq!(
        mock.count_prefix("/archives/"),
        0,
        "no archive fetched twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reports_each_failure_with_its_reason_and_fails() {
    let (catalogue, mock) = v1_mock(3).await;
    let dist = |name: &str| {
        let v = &catalogue.package(name).expect("package").versions[0];
        serde_json::json!({
            "name": name,
            "version": v.version,
            "type": v.package_type,
            "dist": {
                "type": "zip",
                "url": format!("{}{}", mock.url(), Catalogue::archive_path(name, &v.version_normalized)),
                "shasum": ""
            }
        })
    };
    let lock = serde_json::json!({
        "packages": [
            dist("magento/framework"),
            dist(Catalogue::not_entitled_name()),
            {"name": "symfony/console", "version": "v6.0.0", "type": "library",
             "dist": {"type": "zip", "url": "https://api.github.com/repos/symfony/console/zipball/abc"}},
            {"name": PRODUCT, "version": "2.4.6", "type": "metapackage"},
        ],
        "packages-dev": [dist("magento/module-m001")],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let lock_path = dir.path().join("composer.lock");
    std::fs::write(&lock_path, serde_json::to_vec_pretty(&lock).expect("json")).expect("write");
    let env = env_with_cache(&mock.url(), &dir.path().join("cache"));
    let run = composer_proxy(
        &["warm", "--lock", lock_path.to_str().expect("utf-8")],
        &env,
    )
    .await;
    run.expect_status(1);
    assert_eq!(run.count("fetched"), 2, "{}", run.stdout);
    assert_eq!(run.count("nothing to fetch"), 1);
    assert_eq!(run.count("skipped"), 1);
    assert_eq!(run.count("failed"), 1);
    let failure = format!("  {} ", Catalogue::not_entitled_name());
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&failure) && l.contains("entitlement")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  symfony/console v6.0.0: "),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_via_a_running_proxy_needs_no_keys_and_composer_then_installs_from_its_cache() {
    let (catalogue, mock) = v1_mock(MODULES).await;
    let (direct, original) = locked_directly(&mock);
    let archives = locked_archives(&direct, &catalogue);

    // The proxy holds the keys and requires client tokens.
    let cache = tempfile::tempdir().expect("cache dir");
    let mut env = env_with_cache(&mock.url(), cache.path());
    env.push(("COMPOSER_PROXY_REQUIRE_TOKENS".into(), "true".into()));
    let created = composer_proxy(&["tokens", "create", "--name", "ci"], &env).await;
    created.expect_status(0);
    let token = created_secret(&created.stdout);
    let proxy = TestProxy::start_with(env, Some(cache.path())).await;

    // A CI job with the lock, the upstream's URL and the proxy's, and no keys.
    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]).with_http_basic(
        &proxy.addr.to_string(),
        "ci",
        &token,
    );
    let lock = project.path().join("composer.lock");
    std::fs::write(&lock, &original).expect("copy lock");
    let lock = lock.to_str().expect("utf-8");
    let warm = [
        "warm",
        "--lock",
        lock,
        "--via",
        &proxy.url,
        "--concurrency",
        "4",
    ];
    mock.reset_counts();
    let refused = composer_proxy(&warm, &keyless_env(&mock.url(), &[])).await;
    refused.expect_status(1);
    assert!(
        refused.stderr.contains("HTTP 401")
            && refused.stderr.contains("COMPOSER_PROXY_CLIENT_TOKEN"),
        "{}",
        refused.stderr
    );
    assert_eq!(mock.count_prefix("/archives/"), 0);

    let ci = keyless_env(&mock.url(), &[("COMPOSER_PROXY_CLIENT_TOKEN", &token)]);
    let run = composer_proxy(&warm, &ci).await;
    run.expect_status(0).assert_no_keys();
    assert!(
        run.stdout.starts_with(&format!("{lock}: "))
            && run.stdout.contains(&format!("via {}", proxy.url)),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(&token) && !run.stderr.contains(&token));
    assert_eq!(run.count("fetched"), archives.len(), "{}", run.stdout);
    assert_eq!(run.count("already cached"), 0);
    assert_eq!(run.count("failed"), 0);
    assert_eq!(mock.count_prefix("/archives/"), archives.len());
    assert_eq!(stored_archives(cache.path()).len(), archives.len());

    // Again: the proxy has them all.
    mock.reset_counts();
    let again = composer_proxy(&warm, &ci).await;
    again.expect_status(0);
    assert_eq!(
        again.count("already cached"),
        archives.len(),
        "{}",
        again.stdout
    );
    assert_eq!(again.count("fetched"), 0);
    assert_eq!(mock.count_prefix("/archives/"), 0);

    // The lock migrated without keys; Composer, with only the client token, installs every
    // archive from the proxy's cache, and upstream is asked for none.
    composer_proxy(
        &["lock", "migrate", lock, "--public-url", &proxy.url],
        &keyless_env(&mock.url(), &[]),
    )
    .await
    .expect_status(0);
    composer(&project, &["install", "--no-progress"]);
    for (name, version) in &archives {
        assert_installed_matches(&project, &catalogue, name, version);
    }
    assert_eq!(mock.count_prefix("/archives/"), 0);
    proxy.stop().await;
}
