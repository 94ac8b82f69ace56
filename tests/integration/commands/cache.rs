//! `cache stats | purge | verify` beside a running proxy.

use super::*;

/// Every stable archive of `name`, fetched through the proxy as Composer would.
async fn fetch_archives(proxy: &TestProxy, name: &str) -> Vec<(String, String)> {
    let p2 = get(&format!("{}/p2/{name}.json", proxy.url)).await.json();
    let mut fetched = Vec::new();
    for version in p2["packages"][name].as_array().expect("versions") {
        let url = version["dist"]["url"]
            .as_str()
            .expect("dist url")
            .to_string();
        let reply = get(&url).await;
        assert_eq!(reply.status, 200, "{url}");
        fetched.push((url, hex::encode(Sha1::digest(&reply.body))));
    }
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_work_beside_a_running_proxy() {
    let (_, mock) = v1_mock(3).await;
    // The cache outlives the proxy, for a last look after it stopped.
    let cache = tempfile::tempdir().expect("cache dir");
    let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let mut per_package = BTreeMap::new();
    for name in [
        "magento/framework",
        "magento/module-m001",
        "magento/module-m002",
    ] {
        per_package.insert(name, fetch_archives(&proxy, name).await);
    }
    // The Composer 1 chain build writes metadata in the background; let it finish first, so
    // what the commands see is settled.
    proxy.wait_for_v1_chain().await;
    let total: usize = per_package.values().map(Vec::len).sum();
    let env = env_with_cache(&mock.url(), &proxy.cache_dir);

    let stats = composer_proxy(&["cache", "stats"], &env).await;
    stats.expect_status(0);
    assert_eq!(stats.count("archives"), total, "{}", stats.stdout);
    assert!(stats.count("metadata") > 0, "{}", stats.stdout);
    assert_eq!(stats.count("temporary files"), 0);

    composer_proxy(&["cache", "verify"], &env)
        .await
        .expect_status(0);

    // Damage one stored archive of module-m001 (same length, one byte changed).
    let (damaged, _) = stored_archives(&proxy.cache_dir)
        .into_iter()
        .find(|(_, package)| package == "magento/module-m001")
        .expect("a stored archive of module-m001");
    let mut bytes = std::fs::read(&damaged).expect("read archive");
    bytes[10] ^= 0xff;
    std::fs::write(&damaged, bytes).expect("damage archive");

    let verify = composer_proxy(&["cache", "verify"], &env).await;
    verify.expect_status(1);
    let bad: Vec<&str> = verify
        .stdout
        .lines()
        .filter(|l| l.starts_with("BAD "))
        .collect();
    assert_eq!(bad.len(), 1, "{}", verify.stdout);
    assert!(bad[0].starts_with("BAD magento/module-m001 "), "{}", bad[0]);
    assert!(damaged.exists(), "verify without --remove removes nothing");

    let remove = composer_proxy(&["cache", "verify", "--remove"], &env).await;
    remove.expect_status(0);
    assert!(remove.stdout.contains("; removed"), "{}", remove.stdout);
    assert!(!damaged.exists() && !damaged.with_extension("json").exists());
    composer_proxy(&["cache", "verify"], &env)
        .await
        .expect_status(0);

    // Purge one package: only its archives go, and the proxy still serves it afterwards.
    let before = stored_archives(&proxy.cache_dir);
    let purge = composer_proxy(&["cache", "purge", "magento/framework"], &env).await;
    purge.expect_status(0);
    let after = stored_archives(&proxy.cache_dir);
    let framework = before
        .iter()
        .filter(|(_, p)| p == "magento/framework")
        .count();
    assert_eq!(framework, per_package["magento/framework"].len());
    assert!(after.iter().all(|(_, p)| p != "magento/framework"));
    assert_eq!(after.len(), before.len() - framework);
    assert!(
        purge.stdout.starts_with(&format!(
            "removed {framework} archives of magento/framework"
        )),
        "{}",
        purge.stdout
    );
    for (url, sha1) in &per_package["magento/framework"] {
        let reply = get(url).await;
        assert_eq!(reply.status, 200, "{url}");
        assert_eq!(&hex::encode(Sha1::digest(&reply.body)), sha1);
    }

    composer_proxy(&["cache", "purge", "not a name"], &env)
        .await
        .expect_status(2);

    // Everything.
    let purge_all = composer_proxy(&["cache", "purge"], &env).await;
    purge_all.expect_status(0);
    proxy.stop().await;
    let empty = composer_proxy(&["cache", "stats"], &env).await;
    assert_eq!(
        (empty.count("archives"), empty.count("metadata")),
        (0, 0),
        "{}",
        empty.stdout
    );
}
