//! What ops teams see and do: access-log fields, every metric family moving, `/readyz` with
//! reasons, key rotation by SIGHUP with a download in flight, fallback key pairs, SIGTERM
//! letting a download finish, and release downloads' info answers, stale and refused. Signals and logs need the real binary (`ProxyProcess`).

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use serde_json::Value;
use support::catalogue::Catalogue;
use support::downloads::{DownloadsMock, Listed, ReleaseFile};
use support::mock_upstream::{MetadataFault, MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::{base_env, downloads_env, get, get_with, TestProxy};

const FRAMEWORK: &str = "magento/framework";
const KEY_A: (&str, &str) = (
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "a-private-key-a-private-key-aaaa",
);
const KEY_B: (&str, &str) = (
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "b-private-key-b-private-key-bbbb",
);

async fn v1_mock() -> (Arc<Catalogue>, MockUpstream) {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    (catalogue, mock)
}

/// The proxy's dist URLs of every non-dev framework release, with the archives' bytes.
async fn framework_dists(catalogue: &Catalogue, proxy_url: &str) -> Vec<(String, Bytes)> {
    let p2 = get(&format!("{proxy_url}/p2/{FRAMEWORK}.json"))
        .await
        .json();
    let mut out = Vec::new();
    for v in p2["packages"][FRAMEWORK].as_array().expect("versions") {
        let version = v["version"].as_str().expect("version");
        let fixture = catalogue.version(FRAMEWORK, version).expect("fixture");
        if let (Some(url), Some(archive)) = (v["dist"]["url"].as_str(), &fixture.archive) {
            out.push((url.to_string(), archive.bytes.clone()));
        }
    }
    assert!(out.len() >= 2, "two framework archives");
    out
}

fn basic(pair: (&str, &str)) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", pair.0, pair.1))
    )
}

/// A client download that upstream is slow to answer: it is in flight once this returns.
async fn download_in_flight(
    mock: &MockUpstream,
    url: &str,
) -> tokio::task::JoinHandle<support::proxy::Reply> {
    mock.set_delay(Duration::from_millis(1500));
    let url = url.to_string();
    let in_flight = tokio::spawn(async move { get(&url).await });
    mock.wait_for_request(|r| r.path.starts_with("/archives/"))
        .await;
    in_flight
}

fn env_with_cache(mock: &MockUpstream, cache: &Path) -> Vec<(String, String)> {
    let mut env = base_env(&mock.url());
    env.retain(|(k, _)| k != "COMPOSER_PROXY_LISTEN");
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        cache.to_str().expect("utf-8").into(),
    ));
    env
}

/// Access-log lines (target `composer_proxy::access`) whose path is `path`.
fn access_lines(process: &ProxyProcess, path: &str) -> Vec<Value> {
    process
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "composer_proxy::access" && v["path"] == path)
        .collect()
}

fn assert_common_fields(line: &Value) {
    for field in [
        "timestamp",
        "client",
        "method",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "cache",
        "route",
    ] {
        assert!(!line[field].is_null(), "{field} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_carry_every_field_for_hits_misses_stale_answers_and_errors() {
    let (catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("cache");
    let env = env_with_cache(&mock, cache.path());
    let process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let dists = framework_dists(&catalogue, &process.url).await;
    let (url, bytes) = &dists[0];
    let archive_path = url
        .strip_prefix(&process.url)
        .expect("proxy URL")
        .to_string();
    assert_eq!(get(url).await.body, *bytes);
    assert_eq!(get(url).await.body, *bytes);
    let missing = get(&format!("{}/p2/nobody/nothing.json", process.url)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let lines = tokio::task::block_in_place(|| {
        process.wait_for_log(|v| {
            v["target"] == "composer_proxy::access" && v["path"] == "/p2/nobody/nothing.json"
        });
        access_lines(&process, &archive_path)
    });
    assert_eq!(lines.len(), 2, "{}", process.log_text());
    let (miss, hit) = (&lines[0], &lines[1]);
    for line in [miss, hit] {
        assert_common_fields(line);
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], bytes.len() as u64);
        assert_eq!(line["complete"], true);
        assert_eq!(line["route"], "archive");
    }
    assert_eq!(miss["cache"], "MISS");
    assert_eq!(
        miss["upstream_status"], 200,
        "the upstream exchange of a miss"
    );
    assert!(miss["upstream_ms"].is_u64());
    assert_eq!(hit["cache"], "HIT");
    assert!(hit["upstream_status"].is_null(), "a hit asks no one");
    let error = &access_lines(&process, "/p2/nobody/nothing.json")[0];
    assert_common_fields(error);
    assert_eq!(error["status"], 404);
    drop(process);

    // Restarted with upstream down: the saved root is served stale.
    mock.stop().await;
    let process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let root = get(&format!("{}/packages.json", process.url)).await;
    assert_eq!(root.status, StatusCode::OK);
    let stale = tokio::task::block_in_place(|| {
        process
            .wait_for_log(|v| {
                v["target"] == "composer_proxy::access" && v["path"] == "/packages.json"
            })
            .expect("an access line for packages.json")
    });
    assert_common_fields(&stale);
    assert_eq!(stale["cache"], "STALE");
    // The background revalidation meets the stopped upstream: an event of its own.
    let down =
        tokio::task::block_in_place(|| process.wait_for_log(|v| v["event"] == "upstream_down"));
    assert!(down.is_some(), "{}", process.log_text());
}

/// `name{labels} value` samples of the exposition text.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(proxy: &TestProxy) -> HashMap<String, f64> {
    let reply = get(&format!("{}/metrics", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    samples(&String::from_utf8_lossy(&reply.body))
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn every_metric_family_appears_and_moves() {
    let (catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("cache");
    let mut env = base_env(&mock.url());
    env.push(("COMPOSER_PROXY_UPSTREAM_RETRY_SECS".into(), "0".into()));
    let proxy = TestProxy::start_with(env.clone(), Some(cache.path())).await;
    let before = scrape(&proxy).await;
    let dists = framework_dists(&catalogue, &proxy.url).await;
    mock.set_delay(Duration::from_millis(300));
    let replies = join_all((0..20).map(|_| get(&dists[0].0))).await;
    assert!(replies.iter().all(|r| r.body == dists[0].1));
    mock.set_delay(Duration::ZERO);
    let after = scrape(&proxy).await;

    let moved = |name: &str| value(&after, name) > value(&before, name);
    for name in [
        "composer_proxy_requests_total{route=\"archive\",status=\"2xx\",cache=\"MISS\"}",
        "composer_proxy_requests_total{route=\"p2\",status=\"2xx\",cache=\"MISS\"}",
        "composer_proxy_served_bytes_total{route=\"archive\"}",
        "composer_proxy_request_duration_seconds_count{route=\"archive\"}",
        "composer_proxy_upstream_requests_total{upstream=\"default\",kind=\"archive\",outcome=\"ok\"}",
        "composer_proxy_upstream_requests_total{upstream=\"default\",kind=\"metadata\",outcome=\"ok\"}",
        "composer_proxy_upstream_request_duration_seconds_count{upstream=\"default\",kind=\"archive\"}",
        "composer_proxy_cache_entries{cache=\"archives\"}",
        "composer_proxy_cache_bytes{cache=\"archives\"}",
        "composer_proxy_cache_entries{cache=\"metadata\"}",
        "composer_proxy_single_flight_waits_total{kind=\"archive\"}",
    ] {
        assert!(moved(name), "{name} did not move: {:?}", after.get(name));
    }
    assert_eq!(
        value(
            &after,
            "composer_proxy_upstream_requests_total{upstream=\"default\",kind=\"archive\",outcome=\"ok\"}"
        ),
        1.0,
        "twenty clients, one upstream archive request"
    );
    assert_eq!(
        value(
            &after,
            "composer_proxy_upstream_key_accepted{upstream=\"default\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "composer_proxy_cache_max_bytes{cache=\"archives\"}"),
        21474836480.0
    );
    assert_eq!(
        value(
            &after,
            &format!(
                "composer_proxy_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    // Rejected keys: the gauge drops and the rejection is counted.
    mock.set_reject_keys(true);
    assert_eq!(get(&dists[1].0).await.status, StatusCode::BAD_GATEWAY);
    let rejected = scrape(&proxy).await;
    assert_eq!(
        value(
            &rejected,
            "composer_proxy_upstream_key_accepted{upstream=\"default\"}"
        ),
        0.0
    );
    assert!(
        value(
            &rejected,
            "composer_proxy_upstream_key_rejections_total{upstream=\"default\",key=\"0\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &rejected,
            "composer_proxy_upstream_requests_total{upstream=\"default\",kind=\"archive\",outcome=\"rejected\"}"
        ) >= 1.0
    );
    mock.set_reject_keys(false);
    proxy.stop().await;

    // Stale answers: a restart with upstream down serves the saved root.
    mock.stop().await;
    let proxy = TestProxy::start_with(env, Some(cache.path())).await;
    assert_eq!(
        get(&format!("{}/packages.json", proxy.url)).await.status,
        StatusCode::OK
    );
    let stale = scrape(&proxy).await;
    assert_eq!(
        value(
            &stale,
            "composer_proxy_stale_responses_total{route=\"root\"}"
        ),
        1.0
    );
    assert!(
        value(
            &stale,
            "composer_proxy_upstream_requests_total{upstream=\"default\",kind=\"metadata\",outcome=\"unreachable\"}"
        ) >= 1.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn evictions_are_counted() {
    let catalogue = Arc::new(Catalogue::magento_with_module_payload(12, 256 * 1024));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let mut env = base_env(&mock.url());
    env.push((
        "COMPOSER_PROXY_ARCHIVE_CACHE_MAX_BYTES".into(),
        "1048576".into(),
    ));
    let proxy = TestProxy::start_with(env, None).await;
    for n in 1..=8 {
        let name = format!("magento/module-m{n:03}");
        let p2 = get(&format!("{}/p2/{name}.json", proxy.url)).await.json();
        let url = p2["packages"][&name][0]["dist"]["url"]
            .as_str()
            .expect("dist")
            .to_string();
        assert_eq!(get(&url).await.status, StatusCode::OK);
    }
    let metrics = scrape(&proxy).await;
    assert!(
        value(
            &metrics,
            "composer_proxy_cache_evictions_total{cache=\"archives\"}"
        ) >= 1.0
    );
    assert!(value(&metrics, "composer_proxy_cache_bytes{cache=\"archives\"}") <= 1048576.0);
    proxy.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_with_the_reason_when_the_keys_are_rejected_and_back() {
    let (catalogue, mock) = v1_mock().await;
    let mut env = base_env(&mock.url());
    env.push(("COMPOSER_PROXY_UPSTREAM_RETRY_SECS".into(), "0".into()));
    let proxy = TestProxy::start_with(env, None).await;
    let ready = format!("{}/readyz", proxy.url);
    assert_eq!(get(&ready).await.status, StatusCode::OK);
    let dists = framework_dists(&catalogue, &proxy.url).await;

    mock.set_reject_keys(true);
    // The next upstream exchange tells the proxy.
    assert_eq!(get(&dists[0].0).await.status, StatusCode::BAD_GATEWAY);
    let refused = get(&ready).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["reason"], "upstream rejected the key pair");

    mock.set_reject_keys(false);
    let back = get(&ready).await;
    assert_eq!(
        back.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&back.body)
    );
    assert_eq!(back.json()["status"], "ready");
    proxy.stop().await;
}

#[tokio::test]
async fn the_fallback_key_pair_is_used_when_the_first_is_rejected() {
    let (catalogue, mock) = v1_mock().await;
    mock.set_accepted_keys(KEY_B.0, KEY_B.1);
    let dir = tempfile::tempdir().expect("dir");
    let fallback = dir.path().join("fallback-keys");
    std::fs::write(&fallback, format!("# rotation\n{}:{}\n", KEY_B.0, KEY_B.1)).expect("write");
    let mut env = base_env(&mock.url());
    env.retain(|(k, _)| !k.ends_with("_KEY"));
    env.push(("COMPOSER_PROXY_PUBLIC_KEY".into(), KEY_A.0.into()));
    env.push(("COMPOSER_PROXY_PRIVATE_KEY".into(), KEY_A.1.into()));
    env.push((
        "COMPOSER_PROXY_FALLBACK_KEYS_FILE".into(),
        fallback.to_str().expect("utf-8").into(),
    ));
    let proxy = TestProxy::start_with(env, None).await;
    let dists = framework_dists(&catalogue, &proxy.url).await;
    assert_eq!(get(&dists[0].0).await.body, dists[0].1);

    let requests = mock.requests();
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(basic(KEY_A).as_str())
    );
    assert!(
        !requests[0].credentials_ok,
        "the first key pair was refused"
    );
    let last = requests.last().expect("requests");
    assert_eq!(last.authorization.as_deref(), Some(basic(KEY_B).as_str()));
    // Once switched, the fallback is used first: one refusal in all.
    assert_eq!(requests.iter().filter(|r| !r.credentials_ok).count(), 1);
    let metrics = scrape(&proxy).await;
    assert_eq!(
        value(
            &metrics,
            "composer_proxy_upstream_key_rejections_total{upstream=\"default\",key=\"0\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "composer_proxy_upstream_key_accepted{upstream=\"default\"}"
        ),
        1.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_new_key_pair_takes_effect_without_dropping_a_download() {
    let (catalogue, mock) = v1_mock().await;
    mock.set_accepted_keys(KEY_A.0, KEY_A.1);
    let cache = tempfile::tempdir().expect("cache");
    let keys = tempfile::tempdir().expect("keys");
    let (public, private) = (keys.path().join("public"), keys.path().join("private"));
    std::fs::write(&public, KEY_A.0).expect("write");
    std::fs::write(&private, KEY_A.1).expect("write");
    let mut env = env_with_cache(&mock, cache.path());
    env.retain(|(k, _)| !k.ends_with("_KEY"));
    env.push((
        "COMPOSER_PROXY_PUBLIC_KEY_FILE".into(),
        public.to_str().expect("utf-8").into(),
    ));
    env.push((
        "COMPOSER_PROXY_PRIVATE_KEY_FILE".into(),
        private.to_str().expect("utf-8").into(),
    ));
    let process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let dists = framework_dists(&catalogue, &process.url).await;

    // A download in flight: upstream takes its time to answer.
    let in_flight = download_in_flight(&mock, &dists[0].0).await;

    // The key is rotated: upstream now only takes B, the files hold B, and ops send SIGHUP.
    mock.set_accepted_keys(KEY_B.0, KEY_B.1);
    std::fs::write(&public, KEY_B.0).expect("write");
    std::fs::write(&private, KEY_B.1).expect("write");
    process.signal("HUP");
    tokio::task::block_in_place(|| {
        process
            .wait_for_log(|v| v["event"] == "config_reloaded")
            .expect("the reload is logged")
    });
    let reply = in_flight.await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body, dists[0].1,
        "the download in flight finished whole"
    );

    mock.set_delay(Duration::ZERO);
    assert_eq!(
        get(&dists[1].0).await.body,
        dists[1].1,
        "the new key is in use"
    );
    let last = mock.requests().pop().expect("requests");
    assert_eq!(last.authorization.as_deref(), Some(basic(KEY_B).as_str()));
    let log = process.log_text();
    assert!(
        !log.contains(KEY_A.1) && !log.contains(KEY_B.1),
        "no key in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_download_in_flight_finish_and_leaves_no_temporary_files() {
    let (catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("cache");
    let env = env_with_cache(&mock, cache.path());
    let mut process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let dists = framework_dists(&catalogue, &process.url).await;
    let in_flight = download_in_flight(&mock, &dists[0].0).await;

    process.signal("TERM");
    let reply = in_flight.await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, dists[0].1);
    let status = tokio::task::block_in_place(|| process.wait());
    assert!(status.success(), "{status:?}");
    assert!(process.log_text().contains("shutdown signal received"));
    let leftovers = std::fs::read_dir(cache.path().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(leftovers, 0, "no temporary files left behind");
}

#[tokio::test]
async fn release_info_is_cached_served_stale_and_a_rejected_token_is_a_clear_502() {
    const MAGE_ID: &str = "MAG000333444";
    const TOKEN: &str = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";
    let (_, mock) = v1_mock().await;
    let file = ReleaseFile::new("Magento-CE-2.4.6.zip", 1000, Listed::Md5);
    let downloads = DownloadsMock::start(MAGE_ID, TOKEN, vec![file]).await;
    let mut env = base_env(&mock.url());
    env.extend(downloads_env(&downloads.url(), MAGE_ID, TOKEN));
    env.push(("COMPOSER_PROXY_METADATA_TTL_SECS".into(), "1".into()));
    let proxy = TestProxy::start_with(env, None).await;
    let files = format!("{}/releases/info/files", proxy.url);

    let first = get(&files).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "Magento-CE-2.4.6.zip");
    assert_eq!(first.headers["x-cache"], "MISS");
    assert_eq!(get(&files).await.headers["x-cache"], "HIT");
    assert_eq!(downloads.count("info/files"), 1);
    let json = get(&format!("{}/releases/info/json", proxy.url)).await;
    assert_eq!(json.headers["content-type"], "application/json");
    assert_eq!(json.json(), downloads.listing());
    let help = get(&format!("{}/releases/info/help", proxy.url)).await;
    let help = String::from_utf8_lossy(&help.body);
    assert!(help.contains(&format!("{MAGE_ID}:<token>@")) && !help.contains(TOKEN));

    // Once the answer is older than the TTL, a failing endpoint gets the last one, marked.
    downloads.set_failing(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let reply = get(&files).await;
        if reply.headers["x-cache"] == "STALE" {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, first.body);
    assert!(stale.headers.contains_key("warning"));
    let ready = get(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(ready.json()["releases"]["status"], "degraded");

    // A rejected token: 502 with what to check, never 401; degraded, not unready.
    downloads.set_failing(false);
    downloads.set_reject(true);
    let refused = get(&format!("{}/releases/info/versions", proxy.url)).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refused.headers["content-type"], "application/json");
    let warning = refused.warning();
    assert!(
        warning.contains("download access token") && warning.contains("disables the old one"),
        "{warning}"
    );
    let file = get(&format!("{}/releases/file/Magento-CE-2.4.6.zip", proxy.url)).await;
    assert_eq!(file.status, StatusCode::BAD_GATEWAY);
    let ready = get(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(ready.status, StatusCode::OK);
    let reason = ready.json()["releases"]["reason"].to_string();
    assert!(
        reason.contains("rejected the download access token"),
        "{reason}"
    );
    assert!(ready.json()["degraded"]
        .to_string()
        .contains("release downloads"));

    let metrics = scrape(&proxy).await;
    for route in ["release_info", "release_file"] {
        assert!(
            metrics.keys().any(
                |k| k.starts_with(&format!("composer_proxy_requests_total{{route=\"{route}\""))
            ),
            "{route}"
        );
    }
    assert!(value(
        &metrics,
        "composer_proxy_upstream_requests_total{upstream=\"releases\",kind=\"metadata\",outcome=\"ok\"}"
    ) >= 1.0);

    // Without [downloads] nothing is served there.
    let plain = TestProxy::start(&mock.url()).await;
    let none = get(&format!("{}/releases/info/help", plain.url)).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(
        none.warning().contains("not configured"),
        "{}",
        none.warning()
    );
    assert!(get(&format!("{}/readyz", plain.url)).await.json()["releases"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_token_file_at_start_is_logged_as_the_503_clients_get() {
    let (_catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("tempdir");
    std::fs::write(cache.path().join("tokens.json"), b"{not json").expect("write");
    let mut env = env_with_cache(&mock, cache.path());
    env.push(("COMPOSER_PROXY_REQUIRE_TOKENS".into(), "true".into()));
    let process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let warning = process
        .wait_for_log(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("require_tokens"))
        })
        .unwrap_or_else(|| panic!("no require_tokens warning: {}", process.log_text()));
    let message = warning["message"].as_str().expect("message");
    assert!(message.contains("503"), "{message}");
    assert!(!process.log_text().contains("refused with 401"));

    let with_token = get_with(
        &format!("{}/packages.json", process.url),
        &[("Authorization", "Bearer cpt_anything")],
    )
    .await;
    assert_eq!(with_token.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_garbage_is_up_but_misbehaving_and_does_not_flap() {
    let (_catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let mut env = env_with_cache(&mock, cache.path());
    // Every request asks upstream again, so each fault below is met.
    env.push(("COMPOSER_PROXY_UPSTREAM_RETRY_SECS".into(), "0".into()));
    mock.set_failure(Some(500));
    let process = tokio::task::block_in_place(|| ProxyProcess::start(&env));
    let root = format!("{}/packages.json", process.url);
    assert_eq!(get(&root).await.status, StatusCode::BAD_GATEWAY);
    mock.set_failure(None);

    for fault in [
        MetadataFault::NotJson,
        MetadataFault::BadGzip,
        MetadataFault::WrongShape,
        MetadataFault::NotJson,
    ] {
        mock.set_metadata_fault(Some(fault));
        let reply = get(&root).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{fault:?}");
        let warning = reply.warning();
        assert!(warning.contains("could not use"), "{fault:?}: {warning}");
        assert!(!warning.contains("unreachable"), "{fault:?}: {warning}");
    }
    let ready = get(&format!("{}/readyz", process.url)).await.json();
    let reason = ready["upstreams"]["default"]["reason"]
        .as_str()
        .expect("a reason");
    assert!(
        reason.contains("cannot use") && !reason.contains("unreachable"),
        "{reason}"
    );

    mock.set_metadata_fault(None);
    assert_eq!(get(&root).await.status, StatusCode::OK);
    let event = |name: &'static str| move |v: &Value| v["event"] == name;
    tokio::task::block_in_place(|| {
        process
            .wait_for_log(event("upstream_answers_usable"))
            .unwrap_or_else(|| panic!("no upstream_answers_usable: {}", process.log_text()));
        // The log is written in order: every event before that one is in by now.
        for (name, expected) in [
            ("upstream_down", 1),
            ("upstream_up", 1),
            ("upstream_misbehaving", 1),
            ("upstream_answers_usable", 1),
        ] {
            let found = process.wait_for_logs(1, event(name)).unwrap_or_default();
            assert_eq!(found.len(), expected, "{name}: {}", process.log_text());
        }
    });
}

#[tokio::test]
async fn an_open_file_limit_too_low_for_max_connections_lowers_it_or_refuses_the_start() {
    let (_catalogue, mock) = v1_mock().await;
    let cache = tempfile::tempdir().expect("cache dir");
    let env = env_with_cache(&mock, cache.path());
    // 1024 descriptors: 256 kept back, 2 per connection, so 384 of the default 4096.
    let mut lowered = ProxyProcess::start_with_open_files(1024, &env);
    let warning = lowered
        .wait_for_log(|v| v["serving"].is_number())
        .unwrap_or_else(|| panic!("no warning: {}", lowered.log_text()));
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["serving"], 384, "{warning}");
    assert_eq!(warning["max_connections"], 4096, "{warning}");
    assert_eq!(
        get(&format!("{}/healthz", lowered.url)).await.status,
        StatusCode::OK
    );
    lowered.kill_9();

    let (status, output) = ProxyProcess::refused_with_open_files(200, &env);
    assert_eq!(status.code(), Some(64), "{output}");
    assert!(output.contains("open-file limit (200)"), "{output}");
}
