//! Issue 20, "One disabled account or one bad feed answer must not stop every install", its
//! second half: no upstream answer is read without a byte limit, a feed answer's work never
//! holds up requests, and a client's advisory question larger than one upstream request is
//! asked in batches. A packagist-like mock (changes feed, advisory API) in front of the real
//! binary, whose memory is read from /proc.

use crate::support;
use crate::support::blocking;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use support::advisories::ADVISORIES_PATH;
use support::catalogue::Catalogue;
use support::mock_upstream::{Canned, MockOptions, MockUpstream};
use support::process::ProxyProcess;
use support::proxy::{get, listen_env, post_form};

const FEED: &str = "/metadata/changes.json";
const PSR_LOG_P2: &str = "/p2/psr/log.json";
/// The bound on the proxy's memory while it is fed such answers.
const MAX_RSS_KB: u64 = 128 * 1024;

/// packagist.org in miniature (feed, APIs) and the binary in front of it, with `env` on top.
async fn packagist_and_proxy(
    env: &[(&str, &str)],
) -> (MockUpstream, ProxyProcess, tempfile::TempDir) {
    let mut opts = MockOptions::packagist_like(Arc::new(Catalogue::packagist()));
    opts.changes_feed = true;
    let mock = MockUpstream::start(opts).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("composer-proxy.toml");
    let toml = format!(
        "[[upstream]]\nname = \"packagist\"\nurl = \"{}\"\nallowed_hosts = [\"{}\"]\n",
        mock.url(),
        mock.archive_host_url().expect("dist host")
    );
    std::fs::write(&config, toml).expect("config");
    let mut all = listen_env();
    all.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        dir.path().join("cache").display().to_string(),
    ));
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = config.display().to_string();
    let proxy = blocking(|| ProxyProcess::start_with_args(&["--config", &config], &all));
    (mock, proxy, dir)
}

/// packagist.org's unit of feed time: 10000ths of a second.
fn feed_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| (d.as_micros() / 100) as u64)
}

/// A feed answer of `actions` update actions for names no one asked for, about `bytes` long
/// when `actions` is `None`.
fn feed_answer(prefix: &str, actions: Option<usize>, bytes: usize) -> Bytes {
    let now = feed_now();
    let mut body = String::with_capacity(bytes + 1024);
    body.push_str("{\"actions\":[");
    let mut n = 0;
    while actions.map_or(body.len() < bytes, |a| n < a) {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"type\":\"update\",\"package\":\"{prefix}/pkg-{n:07}\",\"time\":{now}}}"
        ));
        n += 1;
    }
    body.push_str(&format!("],\"timestamp\":{now}}}"));
    Bytes::from(body)
}

/// The proxy's peak resident memory (VmHWM), in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// Asks for the cached p2 file every 100 ms until the mock has answered `polls` more feed
/// polls (at most 60 s): every answer must be a 200 within a second. Returns how many asked.
async fn cached_file_stays_served(mock: &MockUpstream, url: &str, polls: usize, what: &str) {
    let target = mock.feed_polls() + polls;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut asked = 0;
    while mock.feed_polls() < target {
        assert!(Instant::now() < deadline, "{what}: the feed was not polled");
        let reply = tokio::time::timeout(Duration::from_secs(1), get(url))
            .await
            .unwrap_or_else(|_| panic!("{what}: request {asked} got no answer within 1 s"));
        assert_eq!(reply.status, StatusCode::OK, "{what}: request {asked}");
        asked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(asked > 0, "{what}: nothing was asked during the polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_or_long_feed_answer_never_holds_up_requests_or_memory() {
    let (mock, proxy, _dir) =
        packagist_and_proxy(&[("COMPOSER_PROXY_METADATA_CHANGES_POLL_SECS", "1")]).await;
    let url = format!("{}{PSR_LOG_P2}", proxy.url);
    assert_eq!(get(&url).await.status, StatusCode::OK, "cached");
    let fetched = mock.count(PSR_LOG_P2);
    // The feed has a position once it answered a poll with `since`.
    cached_file_stays_served(&mock, &url, 1, "a quiet feed").await;

    // A feed that announces the cached file's old change on every poll costs no request.
    let old = Bytes::from(
        json!({"actions": [{"type": "update", "package": "psr/log", "time": 10_000}],
               "timestamp": feed_now()})
        .to_string(),
    );
    mock.set_canned(
        FEED,
        Some(Canned {
            body: old,
            content_length: true,
        }),
    );
    cached_file_stays_served(&mock, &url, 3, "an old change announced again").await;
    assert_eq!(
        mock.count(PSR_LOG_P2),
        fetched,
        "a change the cached file already holds is not asked for again"
    );

    let huge = feed_answer("flood", None, 50 * 1024 * 1024);
    for content_length in [true, false] {
        mock.set_canned(
            FEED,
            Some(Canned {
                body: huge.clone(),
                content_length,
            }),
        );
        let what = format!("a 50 MB feed answer (Content-Length: {content_length})");
        cached_file_stays_served(&mock, &url, 2, &what).await;
    }
    let warned = blocking(|| {
        proxy.wait_for_logs(2, |line| {
            line.to_string().contains("upstream_answer_too_large")
                && line.to_string().contains("upstream_feed_max_bytes")
                && line.to_string().contains(FEED)
        })
    });
    assert!(
        warned.is_some(),
        "each oversized feed answer is warned about, naming the URL and the setting: {}",
        proxy.log_text()
    );

    // A day-long outage's backlog: 50,000 changes to names not cached here.
    mock.set_canned(
        FEED,
        Some(Canned {
            body: feed_answer("backlog", Some(50_000), 0),
            content_length: true,
        }),
    );
    cached_file_stays_served(&mock, &url, 2, "50,000 actions for uncached names").await;
    let resync = blocking(|| {
        proxy.wait_for_log(|line| line.to_string().contains("more files than are cached"))
    });
    assert!(
        resync.is_some(),
        "a feed answer announcing more files than are cached is taken as a resync: {}",
        proxy.log_text()
    );
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/p2/backlog/") || r.path.starts_with("/p2/flood/")),
        "no announced name that is not cached is fetched"
    );

    let peak = peak_rss_kb(proxy.pid);
    // The figure for the record (`-- --nocapture`).
    eprintln!("the proxy's peak RSS through these feed answers: {peak} kB");
    assert!(
        peak < MAX_RSS_KB,
        "the proxy's peak RSS was {peak} kB, over {MAX_RSS_KB} kB"
    );
    mock.stop().await;
}

/// 200 KB of JSON that upstream could well send, over the 64 KiB limits of this test.
fn padded(document: Value) -> Bytes {
    let text = document.to_string();
    let inner = text.strip_suffix('}').expect("an object");
    Bytes::from(format!("{inner}{}}}", " ".repeat(200 * 1024)))
}

/// GETs `url` (or POSTs `form`) until the mock has answered `path` once more (at most 30 s),
/// each answer a 200 with the same JSON as `before`.
async fn served_unchanged_while_asked(
    mock: &MockUpstream,
    path: &str,
    url: &str,
    form: Option<&str>,
    before: &Value,
) {
    let asked = mock.count(path);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.count(path) == asked {
        assert!(Instant::now() < deadline, "{path} was never asked again");
        let reply = match form {
            Some(form) => post_form(url, form).await,
            None => get(url).await,
        };
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        assert_eq!(
            &reply.json(),
            before,
            "{url}: the cached copy keeps serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And once the oversized answer was read and refused.
    let reply = match form {
        Some(form) => post_form(url, form).await,
        None => get(url).await,
    };
    assert_eq!(reply.status, StatusCode::OK, "{url} after the refusal");
    assert_eq!(&reply.json(), before, "{url} after the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_root_p2_and_advisory_answers_leave_the_cached_copies_serving() {
    let limit = "65536";
    let (mock, proxy, _dir) = packagist_and_proxy(&[
        ("COMPOSER_PROXY_METADATA_CHANGES_POLL_SECS", "0"),
        ("COMPOSER_PROXY_METADATA_TTL_SECS", "1"),
        ("COMPOSER_PROXY_ADVISORIES_TTL_SECS", "1"),
        ("COMPOSER_PROXY_UPSTREAM_METADATA_MAX_BYTES", limit),
        ("COMPOSER_PROXY_UPSTREAM_API_MAX_BYTES", limit),
    ])
    .await;
    let root_url = format!("{}/packages.json", proxy.url);
    let p2_url = format!("{}{PSR_LOG_P2}", proxy.url);
    let advisories_url = format!("{}/api/security-advisories/", proxy.url);
    let form = "packages[]=psr/log";
    let root = get(&root_url).await;
    let p2 = get(&p2_url).await;
    let advisories = post_form(&advisories_url, form).await;
    for reply in [&root, &p2, &advisories] {
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert!(
        advisories.json()["advisories"]["psr/log"].is_array(),
        "the advisory the mock publishes: {}",
        advisories.json()
    );

    // Announced and chunked, as either can come.
    let cases = [
        (
            "/packages.json",
            json!({"packages": {}}),
            true,
            &root_url,
            None,
        ),
        (
            PSR_LOG_P2,
            json!({"packages": {"psr/log": []}}),
            false,
            &p2_url,
            None,
        ),
        (
            ADVISORIES_PATH,
            json!({"advisories": {}}),
            false,
            &advisories_url,
            Some(form),
        ),
    ];
    for (path, document, content_length, _, _) in &cases {
        mock.set_canned(
            path,
            Some(Canned {
                body: padded(document.clone()),
                content_length: *content_length,
            }),
        );
    }
    for ((path, _, _, url, form), before) in cases.iter().zip([&root, &p2, &advisories]) {
        served_unchanged_while_asked(&mock, path, url, *form, &before.json()).await;
        let warned = blocking(|| {
            proxy.wait_for_log(|line| {
                let line = line.to_string();
                line.contains("upstream_answer_too_large")
                    && line.contains(path)
                    && line.contains(limit)
            })
        });
        assert!(
            warned.is_some(),
            "the oversized answer of {path} is warned about with its URL and limit: {}",
            proxy.log_text()
        );
    }
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_question_of_63000_names_is_asked_in_batches_upstream_accepts() {
    let (mock, proxy, _dir) = packagist_and_proxy(&[]).await;
    // Four-character names (`a/bc`, then `ab/c`): 63,000 of them fit in just under 1 MiB.
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let c = |i: usize| char::from(CHARS[i % CHARS.len()]);
    let n = CHARS.len();
    let mut names: Vec<String> = (0..n * n * n)
        .map(|i| format!("{}/{}{}", c(i / (n * n)), c(i / n), c(i)))
        .chain((0..n * n * n).map(|i| format!("{}{}/{}", c(i / (n * n)), c(i / n), c(i))))
        .take(62_999)
        .collect();
    names.push("psr/log".into());
    let form: String = names
        .iter()
        .map(|n| format!("packages[]={n}"))
        .collect::<Vec<_>>()
        .join("&");
    assert!(form.len() < 1024 * 1024, "just under 1 MiB: {}", form.len());
    let reply = post_form(&format!("{}/api/security-advisories/", proxy.url), &form).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.json()["advisories"]["psr/log"].is_array());
    let asked: Vec<usize> = mock
        .requests()
        .iter()
        .filter(|r| r.path == ADVISORIES_PATH)
        .map(|r| {
            url::form_urlencoded::parse(&r.body)
                .filter(|(k, _)| k.starts_with("packages["))
                .count()
        })
        .collect();
    assert_eq!(
        asked.iter().sum::<usize>(),
        names.len(),
        "every name asked once"
    );
    assert!(
        asked.iter().all(|&n| n <= 1000),
        "no upstream request carries more names than PHP's max_input_vars lets it read: {asked:?}"
    );
    mock.stop().await;
}
