//! `lock migrate` without keys, followed by a real `composer install` through the proxy; and
//! which commands read the key sources at all.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_lock_installs_through_the_proxy_without_credentials() {
    let (catalogue, mock) = v1_mock(MODULES).await;
    let (_, original) = locked_directly(&mock);
    assert!(original.contains(&format!("\"url\": \"{}/archives/", mock.url())));

    // The same project on a machine without credentials, with the lock migrated there: the
    // command has the upstream's URL and no key pair.
    let proxy = TestProxy::start(&mock.url()).await;
    let project = ComposerProject::new(&mock.url(), &[(PRODUCT, "2.4.6")]);
    let lock = project.path().join("composer.lock");
    std::fs::write(&lock, &original).expect("copy lock");
    let run = composer_proxy(
        &[
            "lock",
            "migrate",
            lock.to_str().expect("utf-8"),
            "--public-url",
            &proxy.url,
        ],
        &keyless_env(&mock.url(), &[]),
    )
    .await;
    run.expect_status(0).assert_no_keys();
    let locked = project.locked_versions().len();
    let archives = locked_archives(&project, &catalogue);
    assert!(
        run.stdout.starts_with(&format!(
            "rewrote {} dist URLs and {locked} notification URLs",
            archives.len()
        )),
        "{}",
        run.stdout
    );

    // Only url and notification-url lines changed, each to the proxy.
    let migrated = std::fs::read_to_string(&lock).expect("read migrated lock");
    let (old_lines, new_lines): (Vec<&str>, Vec<&str>) =
        (original.lines().collect(), migrated.lines().collect());
    assert_eq!(old_lines.len(), new_lines.len());
    let mut changed = 0;
    for (old, new) in old_lines.iter().zip(&new_lines) {
        if old == new {
            continue;
        }
        changed += 1;
        let key = |line: &str| {
            line.trim_start()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(key(old), key(new));
        assert!(
            ["\"url\"", "\"notification-url\""].contains(&key(old).as_str()),
            "{old} -> {new}"
        );
        assert!(new.contains(&format!("\"{}/", proxy.url)), "{new}");
    }
    assert_eq!(changed, archives.len() + locked);
    assert!(original.ends_with('\n') == migrated.ends_with('\n'));

    // Installing from it needs no credentials and fetches every archive through the proxy.
    mock.reset_counts();
    composer(&project, &["install", "--no-progress"]);
    for (name, version) in &archives {
        assert_installed_matches(&project, &catalogue, name, version);
    }
    let requests = mock.requests();
    let archive_requests = requests
        .iter()
        .filter(|r| r.path.starts_with("/archives/"))
        .count();
    assert_eq!(archive_requests, archives.len());
    for r in &requests {
        assert!(
            r.credentials_ok
                && r.user_agent
                    .as_deref()
                    .is_some_and(|ua| ua.contains("composer-proxy")),
            "{} {} did not come through the proxy",
            r.method,
            r.path
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_migrate_needs_a_public_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("composer.lock");
    std::fs::write(&lock, "{\"packages\": []}\n").expect("write");
    let lock = lock.to_str().expect("utf-8");
    let env = base_env("https://repo.magento.com");
    let run = composer_proxy(&["lock", "migrate", lock], &env).await;
    run.expect_status(64);
    assert!(run.stderr.contains("--public-url"), "{}", run.stderr);
    let mut with_setting = env.clone();
    with_setting.push((
        "COMPOSER_PROXY_PUBLIC_URL".into(),
        "http://proxy.internal:8080".into(),
    ));
    let run = composer_proxy(&["lock", "migrate", lock], &with_setting).await;
    run.expect_status(0);
    assert!(run.stdout.contains("nothing to rewrite"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_commands_that_send_the_keys_read_them() {
    let (_, mock) = v1_mock(1).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("composer.lock");
    std::fs::write(&lock, "{\"packages\": []}\n").expect("write");
    let lock = lock.to_str().expect("utf-8");
    // Key sources a CI job's configuration may name but not have: reading them fails.
    let missing = dir.path().join("not-mounted");
    let missing = missing.to_str().expect("utf-8");
    let env = keyless_env(
        &mock.url(),
        &[
            ("COMPOSER_PROXY_PUBLIC_KEY_FILE", missing),
            ("COMPOSER_PROXY_PRIVATE_KEY_FILE", missing),
            ("COMPOSER_PROXY_FALLBACK_KEYS_FILE", missing),
            ("COMPOSER_PROXY_PUBLIC_URL", &proxy.url),
            (
                "COMPOSER_PROXY_CACHE_DIR",
                dir.path().join("cache").to_str().expect("utf-8"),
            ),
        ],
    );
    let run = composer_proxy(&["lock", "migrate", lock], &env).await;
    run.expect_status(0);
    let run = composer_proxy(&["warm", "--lock", lock, "--via", &proxy.url], &env).await;
    run.expect_status(0);
    assert_eq!(run.count("failed"), 0);
    // Those that use the keys still need them, and say which source failed.
    for args in [&["warm", "--lock", lock][..], &["check"]] {
        let run = composer_proxy(args, &env).await;
        run.expect_status(64);
        assert!(run.stderr.contains("public_key_file"), "{}", run.stderr);
    }
    assert!(
        !dir.path().join("cache").exists(),
        "no cache directory made"
    );
    proxy.stop().await;
}
