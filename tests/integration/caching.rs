//! The caches, at the HTTP level against the mock repo.magento.com: one upstream fetch per
//! object however many clients ask, nothing partial ever stored or served as complete, the
//! size bound, restarts with upstream down, replicas sharing a directory, the stale policy
//! when upstream rejects the keys, freshness from a packagist-like changes feed, and release
//! files of the legacy download endpoint.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use serde_json::Value;
use support::cache_dir::{files_below, stored_archives};
use support::catalogue::Catalogue;
use support::composer::ComposerProject;
use support::downloads::{DownloadsMock, Listed, ReleaseFile};
use support::mock_upstream::{expand, MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::{
    after_first_chunk, base_env, dist_url, downloads_env, get, get_with, listen_env, request,
    try_get, Reply, TestProxy,
};

const FRAMEWORK: &str = "magento/framework";

/// A framework version whose metadata publishes the archive's sha1, and its archive bytes.
fn verified_framework(catalogue: &Catalogue) -> (String, String, Bytes) {
    let version = catalogue
        .package(FRAMEWORK)
        .expect("framework")
        .versions
        .iter()
        .find(|v| v.publish_shasum && v.archive.is_some() && !v.is_dev())
        .expect("a framework version with a published shasum");
    let archive = version.archive.as_ref().expect("archive");
    (
        version.version.clone(),
        Catalogue::archive_path(FRAMEWORK, &version.version_normalized),
        archive.bytes.clone(),
    )
}

fn stored_bytes(cache_dir: &Path) -> u64 {
    stored_archives(cache_dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

async fn v1_mock(catalogue: &Arc<Catalogue>) -> MockUpstream {
    MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_for_one_archive_make_one_upstream_request() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let (version, upstream_path, expected) = verified_framework(&catalogue);
    let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
    // A slow upstream keeps the download in progress while all fifty requests arrive.
    mock.set_delay(Duration::from_millis(300));

    let replies = join_all((0..50).map(|_| get(&url))).await;
    assert_eq!(mock.count(&upstream_path), 1, "one upstream fetch");
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.body, expected,
            "every client gets the archive's bytes"
        );
    }
    assert!(
        replies
            .iter()
            .any(|r| r.headers.get("x-cache").is_some_and(|v| v == "MISS")),
        "the first clients were streamed to while the archive was fetched"
    );
    assert_eq!(stored_archives(&proxy.cache_dir).len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_for_one_p2_file_make_one_upstream_request() {
    for protocol in [Protocol::V1, Protocol::P2] {
        let catalogue = Arc::new(Catalogue::magento(4));
        let mock = MockUpstream::start(MockOptions::new(protocol, catalogue.clone())).await;
        let proxy = TestProxy::start(&mock.url()).await;
        mock.set_delay(Duration::from_millis(300));

        // Fully cold: the fifty requests also race the root fetch and, for a v1 upstream, the
        // background build of the Composer 1 chain, which reads every package file too.
        let url = format!("{}/p2/{FRAMEWORK}.json", proxy.url);
        let replies = join_all((0..50).map(|_| get(&url))).await;
        let first = &replies[0];
        assert_eq!(first.status, StatusCode::OK, "{protocol:?}");
        assert!(first.json()["packages"][FRAMEWORK].is_array());
        for reply in &replies {
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, first.body, "{protocol:?}: identical bytes");
        }
        if protocol == Protocol::V1 {
            proxy.wait_for_v1_chain().await;
        }
        let upstream = match protocol {
            Protocol::V1 => mock.count_prefix(&format!("/p/{FRAMEWORK}$")),
            Protocol::P2 => mock.count(&format!("/p2/{FRAMEWORK}.json")),
        };
        assert_eq!(upstream, 1, "{protocol:?}: one upstream fetch");
        assert_eq!(
            mock.count("/packages.json"),
            1,
            "{protocol:?}: one root fetch"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_transfer_cut_short_is_resumed_and_the_client_gets_the_whole_archive() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let (version, upstream_path, expected) = verified_framework(&catalogue);
    let url = dist_url(&proxy.url, FRAMEWORK, &version).await;

    mock.truncate_next_archives(1);
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, expected);
    let asked: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == upstream_path)
        .collect();
    assert_eq!(
        asked.len(),
        2,
        "the first transfer broke off, the second resumed it"
    );
    let range = asked[1]
        .headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .expect("the retry asks for the rest only");
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .expect("bytes=N-");
    assert!(from > 0 && from < expected.len(), "{range}");
    assert_eq!(stored_archives(&proxy.cache_dir).len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn truncated_or_corrupt_archives_leave_nothing_and_are_fetched_again() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let framework = catalogue.package(FRAMEWORK).expect("framework");
    // Corruption is caught by the published sha1; truncation by the announced length, so any
    // other release does for that case.
    let (verified, verified_path, verified_bytes) = verified_framework(&catalogue);
    let other = framework
        .versions
        .iter()
        .find(|v| v.archive.is_some() && !v.is_dev() && v.version != verified)
        .expect("a second framework release");
    let cases = [
        (
            "truncated",
            other.version.clone(),
            Catalogue::archive_path(FRAMEWORK, &other.version_normalized),
            other.archive.as_ref().expect("archive").bytes.clone(),
        ),
        ("corrupt", verified, verified_path, verified_bytes),
    ];
    for (what, version, upstream_path, expected) in cases {
        let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
        match what {
            "truncated" => mock.set_truncate_archives(true),
            _ => mock.set_corrupt_archives(true),
        }
        let (status, _, body) = try_get(&url, &[]).await;
        match body {
            // Headers went out before the transfer failed, so the body must break off.
            Ok(bytes) => assert_ne!(
                status,
                StatusCode::OK,
                "{what}: a complete 200 with {} bytes",
                bytes.len()
            ),
            Err(_) => assert_eq!(status, StatusCode::OK),
        }
        let attempts = mock.count(&upstream_path);
        assert!(attempts >= 1, "{what}: upstream was asked");
        assert!(
            stored_archives(&proxy.cache_dir).is_empty(),
            "{what}: nothing stored"
        );
        assert!(
            files_below(&proxy.cache_dir.join("tmp")).is_empty(),
            "{what}: no temporary file left"
        );

        mock.set_truncate_archives(false);
        mock.set_corrupt_archives(false);
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.body, expected,
            "{what}: the next request fetches again"
        );
        assert_eq!(mock.count(&upstream_path), attempts + 1);
        assert_eq!(stored_archives(&proxy.cache_dir).len(), 1);
        for file in stored_archives(&proxy.cache_dir) {
            std::fs::remove_file(file).expect("remove");
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn the_archive_store_stays_within_its_size_bound() {
    // 40 modules with 64 KiB each, two releases: about 5 MiB of archives against a 1 MiB bound.
    let catalogue = Arc::new(Catalogue::magento_with_module_payload(40, 64 * 1024));
    let mock = v1_mock(&catalogue).await;
    let bound: u64 = 1024 * 1024;
    let mut env = base_env(&mock.url());
    env.push((
        "COMPOSER_PROXY_ARCHIVE_CACHE_MAX_BYTES".into(),
        bound.to_string(),
    ));
    let proxy = TestProxy::start_with(env, None).await;

    let mut fetched = 0u64;
    let mut last = None;
    for package in catalogue
        .packages
        .iter()
        .filter(|p| p.name.starts_with("magento/module-m"))
    {
        for version in package.versions.iter().filter(|v| !v.is_dev()) {
            let url = dist_url(&proxy.url, &package.name, &version.version).await;
            let reply = get(&url).await;
            assert_eq!(reply.status, StatusCode::OK);
            fetched += reply.body.len() as u64;
            let stored = stored_bytes(&proxy.cache_dir);
            assert!(
                stored <= bound,
                "{stored} bytes stored after {fetched} fetched; bound {bound}"
            );
            last = Some((url, reply.body));
        }
    }
    assert!(fetched > 4 * bound, "the test wrote well past the bound");
    let stats = proxy.state.archives.stats();
    assert!(stats.evictions > 0);
    assert!(stats.bytes <= bound);

    // The most recent archive survived eviction and is served without asking upstream.
    let (url, body) = last.expect("something fetched");
    mock.reset_counts();
    let again = get(&url).await;
    assert_eq!(again.body, body);
    assert_eq!(again.headers.get("x-cache").expect("x-cache"), "HIT");
    assert_eq!(mock.count_prefix("/archives/"), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn with_upstream_down_a_restarted_proxy_serves_everything_it_fetched() {
    for protocol in [Protocol::V1, Protocol::P2] {
        let catalogue = Arc::new(Catalogue::magento(4));
        let mock = MockUpstream::start(MockOptions::new(protocol, catalogue.clone())).await;
        let cache = tempfile::tempdir().expect("cache dir");
        let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
        let (version, _, expected) = verified_framework(&catalogue);
        let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
        assert_eq!(get(&url).await.body, expected);
        let p2 = get(&format!("{}/p2/{FRAMEWORK}.json", proxy.url)).await;
        proxy.stop().await;
        mock.stop().await;

        let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
        let root = get(&format!("{}/packages.json", proxy.url)).await;
        assert_eq!(root.status, StatusCode::OK, "{protocol:?}");
        assert_eq!(root.headers.get("x-cache").expect("x-cache"), "STALE");
        assert!(root
            .headers
            .get("warning")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|w| w.starts_with("110 ")));
        let p2_again = get(&format!("{}/p2/{FRAMEWORK}.json", proxy.url)).await;
        assert_eq!(p2_again.status, StatusCode::OK, "{protocol:?}");
        // The public URL differs (a new port), the packages do not.
        let versions = |v: &Value| v["packages"][FRAMEWORK].as_array().map(Vec::len);
        assert_eq!(versions(&p2_again.json()), versions(&p2.json()));
        let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
        let archive = get(&url).await;
        assert_eq!(archive.status, StatusCode::OK, "{protocol:?}");
        assert_eq!(archive.body, expected);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn archives_answer_head_and_if_none_match() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let (version, upstream_path, expected) = verified_framework(&catalogue);
    let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
    let first = get(&url).await;
    let etag = first
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_string();

    let head = request(http::Method::HEAD, &url, &[], Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers.get("content-length").expect("length"),
        &expected.len().to_string()
    );
    let revalidated = get_with(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(mock.count(&upstream_path), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn replicas_sharing_a_cache_directory_fetch_each_archive_once() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let a = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let b = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let (version, upstream_path, expected) = verified_framework(&catalogue);
    let url_a = dist_url(&a.url, FRAMEWORK, &version).await;
    let url_b = dist_url(&b.url, FRAMEWORK, &version).await;
    mock.set_delay(Duration::from_millis(300));

    // Both replicas miss at once: one fetches, the other waits for its lock and serves the file.
    let (ra, rb) = tokio::join!(get(&url_a), get(&url_b));
    assert_eq!(ra.body, expected);
    assert_eq!(rb.body, expected);
    assert_eq!(mock.count(&upstream_path), 1, "one fetch for both replicas");

    // A third replica started later finds it on disk.
    let c = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let url_c = dist_url(&c.url, FRAMEWORK, &version).await;
    let rc = get(&url_c).await;
    assert_eq!(rc.body, expected);
    assert_eq!(rc.headers.get("x-cache").expect("x-cache"), "HIT");
    assert_eq!(mock.count(&upstream_path), 1);
    for proxy in [a, b, c] {
        proxy.stop().await;
    }
}

#[tokio::test]
async fn rejected_keys_stop_cached_metadata_unless_the_stale_policy_allows_it() {
    for stale_on_rejection in [false, true] {
        let catalogue = Arc::new(Catalogue::magento(4));
        let mock = v1_mock(&catalogue).await;
        let mut env = base_env(&mock.url());
        env.push((
            "COMPOSER_PROXY_STALE_ON_KEY_REJECTION".into(),
            stale_on_rejection.to_string(),
        ));
        let proxy = TestProxy::start_with(env, None).await;
        let cached = format!("{}/p2/{FRAMEWORK}.json", proxy.url);
        let (version, _, _) = verified_framework(&catalogue);
        let archive = dist_url(&proxy.url, FRAMEWORK, &version).await;

        // The key is disabled in the Marketplace account; the next upstream request says so.
        mock.set_reject_keys(true);
        let uncached = get(&archive).await;
        assert_eq!(uncached.status, StatusCode::BAD_GATEWAY);
        assert!(uncached.warning().contains("key"), "{}", uncached.warning());

        let reply = get(&cached).await;
        if stale_on_rejection {
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "the policy keeps serving the cache"
            );
        } else {
            assert_eq!(
                reply.status,
                StatusCode::BAD_GATEWAY,
                "a revoked key shows at once, cache or not"
            );
            assert!(reply.warning().contains("key"), "{}", reply.warning());
        }
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_during_a_download_no_partial_archive_is_served() {
    use http_body_util::BodyExt;

    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = v1_mock(&catalogue).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let mut env = base_env(&mock.url());
    env.retain(|(k, _)| k != "COMPOSER_PROXY_LISTEN");
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        cache.path().to_str().expect("utf-8").into(),
    ));
    let mut process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let (version, upstream_path, expected) = verified_framework(&catalogue);
    let url = dist_url(&process.url, FRAMEWORK, &version).await;

    // Upstream sends half the archive and then hangs; the client receives what the proxy
    // passed on, so the partial download is certainly on disk when the process is killed.
    mock.set_stall_archives(true);
    let body = after_first_chunk(&url).await;
    tokio::task::block_in_place(|| process.kill_9());
    assert!(
        body.collect().await.is_err(),
        "the client sees a broken transfer"
    );
    assert!(
        stored_archives(cache.path()).is_empty(),
        "nothing partial under an archive name"
    );
    let partial = files_below(&cache.path().join("tmp"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .any(|len| len > 0 && len < expected.len() as u64);
    assert!(
        partial,
        "the killed download left its partial file in tmp/ only"
    );

    // Restarted (upstream healthy again): the archive is fetched afresh, whole.
    mock.set_stall_archives(false);
    let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let url = dist_url(&proxy.url, FRAMEWORK, &version).await;
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers.get("x-cache").expect("x-cache"), "MISS");
    assert_eq!(reply.body, expected);
    assert_eq!(mock.count(&upstream_path), 2);
    proxy.stop().await;
}

const PSR_LOG: &str = "psr/log";
const PSR_LOG_P2: &str = "/p2/psr/log.json";
const FEED: &str = "/metadata/changes.json";

/// packagist.org in miniature with its changes feed, and a proxy polling it every second.
async fn packagist_with_feed(metadata_ttl_secs: u64) -> (MockUpstream, TestProxy) {
    let mut opts = MockOptions::packagist_like(Arc::new(Catalogue::packagist()));
    opts.changes_feed = true;
    let mock = MockUpstream::start(opts).await;
    let proxy = proxy_polling(&mock, metadata_ttl_secs, None).await;
    (mock, proxy)
}

async fn proxy_polling(
    mock: &MockUpstream,
    metadata_ttl_secs: u64,
    cache: Option<&Path>,
) -> TestProxy {
    let toml = format!(
        "[[upstream]]\nname = \"packagist\"\nurl = \"{}\"\nallowed_hosts = [\"{}\"]\n",
        mock.url(),
        mock.archive_host_url().expect("dist host")
    );
    let mut env = listen_env();
    env.push((
        "COMPOSER_PROXY_METADATA_CHANGES_POLL_SECS".into(),
        "1".into(),
    ));
    env.push((
        "COMPOSER_PROXY_METADATA_TTL_SECS".into(),
        metadata_ttl_secs.to_string(),
    ));
    TestProxy::start_with_file(&toml, env, cache).await
}

/// Waits (at most 30 s) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The versions in the proxy's p2 file of `name`, expanded.
fn versions(reply: &Reply, name: &str) -> Vec<String> {
    let json = reply.json();
    let listed = json["packages"][name].as_array().expect("versions").clone();
    expand(&listed)
        .iter()
        .filter_map(|v| v["version"].as_str().map(str::to_string))
        .collect()
}

/// GETs the proxy's p2 file of `name` at `url` until it lists `version` (at most 30 s); with
/// `only_hits`, every answer must come from the cache as fresh.
async fn wait_for_version(url: &str, name: &str, version: &str, only_hits: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get(url).await;
        assert_eq!(reply.status, StatusCode::OK);
        if only_hits {
            assert_eq!(
                x_cache(&reply),
                "HIT",
                "no request waits for or asks upstream"
            );
        }
        let seen = versions(&reply, name);
        if seen.iter().any(|v| v == version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{version} never served: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn x_cache(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn metric_line(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_published_upstream_is_served_after_the_next_feed_poll() {
    // A day-long TTL: only the feed can make the proxy ask for the file again.
    let (mock, proxy) = packagist_with_feed(86_400).await;
    let project = ComposerProject::new(&proxy.url, &[(PSR_LOG, "^3.0")]);
    tokio::task::block_in_place(|| project.run_ok(&["update", "--no-install"]));
    assert_eq!(project.locked_versions()[PSR_LOG], "3.0.0");
    assert_eq!(mock.count(PSR_LOG_P2), 1);
    let polled = mock.feed_polls();
    wait_until("two feed polls", || mock.feed_polls() >= polled + 2).await;

    mock.publish_version(PSR_LOG, "3.0.2", 0);
    let url = format!("{}/p2/{PSR_LOG}.json", proxy.url);
    wait_for_version(&url, PSR_LOG, "3.0.2", true).await;

    // One more upstream request for the file, conditional, made right after a feed poll.
    let records = mock.requests();
    let asked: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].path == PSR_LOG_P2)
        .collect();
    assert_eq!(
        asked.len(),
        2,
        "the first fetch and the one the feed caused"
    );
    let refetch = &records[asked[1]];
    assert!(refetch.if_modified_since.is_some(), "a conditional refetch");
    assert!(
        records[..asked[1]]
            .iter()
            .rev()
            .find(|r| r.path != PSR_LOG_P2)
            .is_some_and(|r| r.path == FEED),
        "the refetch follows a feed poll"
    );

    // Composer, revalidating its own cache against the proxy, sees the new version.
    tokio::task::block_in_place(|| project.run_ok(&["update", "--no-install"]));
    assert_eq!(project.locked_versions()[PSR_LOG], "3.0.2");
    assert_eq!(
        mock.count(PSR_LOG_P2),
        2,
        "Composer's requests were all hits"
    );
    let metrics = get(&format!("{}/metrics", proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(
        metric_line(&text, "composer_proxy_metadata_changes_actions_total{upstream=\"packagist\",type=\"update\"}").as_deref(),
        Some("composer_proxy_metadata_changes_actions_total{upstream=\"packagist\",type=\"update\"} 1")
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_lagging_behind_the_feed_is_refetched_on_a_later_poll_and_a_restart_resumes_the_feed(
) {
    let mut opts = MockOptions::packagist_like(Arc::new(Catalogue::packagist()));
    opts.changes_feed = true;
    let mock = MockUpstream::start(opts).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let proxy = proxy_polling(&mock, 86_400, Some(cache.path())).await;
    let url = format!("{}/p2/{PSR_LOG}.json", proxy.url);
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let polled = mock.feed_polls();
    wait_until("two feed polls", || mock.feed_polls() >= polled + 2).await;

    // The first fetch after the announcement still gets the old file (a CDN behind).
    mock.publish_version(PSR_LOG, "3.0.2", 1);
    wait_until("the lagging fetch", || mock.count(PSR_LOG_P2) == 2).await;
    let reply = get(&url).await;
    if mock.count(PSR_LOG_P2) == 2 {
        assert!(
            !versions(&reply, PSR_LOG).contains(&"3.0.2".to_string()),
            "the lagging file is not taken for the change"
        );
    }
    wait_until("the retry", || mock.count(PSR_LOG_P2) == 3).await;
    let records = mock.requests();
    let asked: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].path == PSR_LOG_P2)
        .collect();
    assert!(
        records[asked[1]..asked[2]].iter().any(|r| r.path == FEED),
        "retried on a later poll"
    );
    wait_for_version(&url, PSR_LOG, "3.0.2", false).await;
    assert_eq!(
        mock.count(PSR_LOG_P2),
        3,
        "no request of its own in between"
    );
    let metrics = get(&format!("{}/metrics", proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(
            "composer_proxy_metadata_changes_lag_retries_total{upstream=\"packagist\"} 1"
        ),
        "{text}"
    );

    // A file not cached when its change was announced, first asked for while the CDN is still
    // behind: what it got is checked against the change and refetched all the same.
    let (stdlib, stdlib_p2) = ("laminas/laminas-stdlib", "/p2/laminas/laminas-stdlib.json");
    mock.publish_version(stdlib, "3.19.1", 1);
    let polled = mock.feed_polls();
    wait_until("two feed polls", || mock.feed_polls() >= polled + 2).await;
    let url = format!("{}/p2/{stdlib}.json", proxy.url);
    let cold = get(&url).await;
    assert!(!versions(&cold, stdlib).contains(&"3.19.1".to_string()));
    wait_for_version(&url, stdlib, "3.19.1", false).await;
    assert_eq!(
        mock.count(stdlib_p2),
        2,
        "the lagging fetch and the poller's"
    );
    proxy.stop().await;

    // Restarted, the proxy resumes from the feed's position instead of starting over.
    let before = mock.count(FEED);
    let proxy = proxy_polling(&mock, 86_400, Some(cache.path())).await;
    wait_until("a feed poll", || mock.count(FEED) > before).await;
    let first = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == FEED)
        .nth(before)
        .expect("the poll after the restart");
    assert!(first.raw_path_and_query.contains("since="), "{first:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_feed_answers_the_ttl_is_not_needed_and_when_it_fails_it_applies_again() {
    let (mock, proxy) = packagist_with_feed(1).await;
    let url = format!("{}/p2/{PSR_LOG}.json", proxy.url);
    // The feed is followed once the upstream's root is known.
    assert_eq!(
        get(&format!("{}/packages.json", proxy.url)).await.status,
        StatusCode::OK
    );
    wait_until("the feed's first poll", || mock.feed_polls() >= 1).await;
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let polled = mock.feed_polls();
    wait_until("three more feed polls", || mock.feed_polls() >= polled + 3).await;
    let reply = get(&url).await;
    assert_eq!(
        x_cache(&reply),
        "HIT",
        "past its TTL, vouched for by the feed"
    );
    assert_eq!(mock.count(PSR_LOG_P2), 1);

    // The feed fails (so does everything): three intervals on, the TTL rule is back.
    mock.set_failure(Some(503));
    let failing_since = mock.count(FEED);
    wait_until("four failed polls", || {
        mock.count(FEED) >= failing_since + 4
    })
    .await;
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(x_cache(&reply), "STALE");
    wait_until("a TTL revalidation", || mock.count(PSR_LOG_P2) == 2).await;
    proxy.stop().await;
}

const MAGE_ID: &str = "MAG000111222";
const DOWNLOAD_TOKEN: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3";

/// A proxy in front of `mock` with release downloads from `downloads`.
async fn releases_proxy(mock: &MockUpstream, downloads: &DownloadsMock) -> TestProxy {
    let mut env = base_env(&mock.url());
    env.extend(downloads_env(&downloads.url(), MAGE_ID, DOWNLOAD_TOKEN));
    TestProxy::start_with(env, None).await
}

#[tokio::test]
async fn a_release_file_arrives_byte_exact_once_from_upstream_then_from_the_store() {
    let catalogue = Arc::new(Catalogue::magento(1));
    let mock = v1_mock(&catalogue).await;
    let current = ReleaseFile::new("Magento-CE-2.4.6.tar.gz", 700_000, Listed::Md5);
    let old = ReleaseFile::new("magento-1.9.4.5.tar.bz2", 90_000, Listed::NoMd5);
    let downloads =
        DownloadsMock::start(MAGE_ID, DOWNLOAD_TOKEN, vec![current.clone(), old.clone()]).await;
    let proxy = releases_proxy(&mock, &downloads).await;
    let url = format!("{}/releases/file/{}", proxy.url, current.name);
    // A slow endpoint keeps the first fetch in progress while every client asks.
    downloads.set_delay(Duration::from_millis(300));
    let replies = join_all((0..10).map(|_| get(&url))).await;
    downloads.set_delay(Duration::ZERO);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body == current.bytes, "byte-exact release file");
        assert_eq!(reply.headers["content-type"], "application/gzip");
    }
    assert_eq!(downloads.count(&format!("file/{}", current.name)), 1);
    assert_eq!(downloads.count("info/json"), 1, "the listing, fetched once");

    let again = get(&url).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["x-cache"], "HIT");
    assert!(again.body == current.bytes);
    assert_eq!(downloads.count(&format!("file/{}", current.name)), 1);
    assert_eq!(stored_archives(&proxy.cache_dir).len(), 1);

    // An old file without an md5 in the listing still comes through whole.
    let old_url = format!("{}/releases/file/{}", proxy.url, old.name);
    let reply = get(&old_url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == old.bytes);
    assert_eq!(stored_archives(&proxy.cache_dir).len(), 2);
    let missing = get(&format!("{}/releases/file/no-such-release.zip", proxy.url)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.warning().contains("no-such-release.zip"));
}

#[tokio::test]
async fn a_release_file_that_fails_its_md5_is_never_stored_nor_served_complete() {
    let catalogue = Arc::new(Catalogue::magento(1));
    let mock = v1_mock(&catalogue).await;
    let damaged = ReleaseFile::new("Magento-CE-2.4.7.tar.gz", 500_000, Listed::WrongMd5);
    let downloads = DownloadsMock::start(MAGE_ID, DOWNLOAD_TOKEN, vec![damaged.clone()]).await;
    let proxy = releases_proxy(&mock, &downloads).await;
    let url = format!("{}/releases/file/{}", proxy.url, damaged.name);
    for attempt in 1..=2 {
        let (status, headers, body) = try_get(&url, &[]).await;
        if status == StatusCode::OK {
            // Headers went out while it was fetched: the body announced breaks off instead.
            assert_eq!(headers["content-length"], damaged.bytes.len().to_string());
            assert!(body.is_err(), "a transfer that does not complete");
        } else {
            assert_eq!(status, StatusCode::BAD_GATEWAY);
        }
        assert!(stored_archives(&proxy.cache_dir).is_empty());
        // Nothing stored: the next request fetches it again.
        assert_eq!(downloads.count(&format!("file/{}", damaged.name)), attempt);
    }
}
