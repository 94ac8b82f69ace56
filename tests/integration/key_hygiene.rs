//! The key pair never leaves the proxy except towards the upstream, nor the download access
//! token except towards the release-download endpoint.
//!
//! The real binary runs with every crate logging at trace level. A full Composer install goes
//! through it, then every error path we can provoke: unknown packages and routes, bad paths
//! and methods, truncated and corrupt archives, upstream errors, timeouts, rejected keys, an
//! unreachable upstream, release downloads (an answer quoting the token, an md5 mismatch, a
//! rejected token), the `check` command and configuration errors; then a second replica
//! with client tokens required, a fallback key pair and a trusted proxy, reloaded by SIGHUP:
//! token and allowlist refusals, a bad X-Forwarded-For, 405/413/414/431. Then every byte the
//! proxy printed, every response (status line, headers, body), what Composer printed and
//! cached, and everything in the cache directory are searched for the keys: raw, as base64 of
//! `public:private` (what travels in the Authorization header), and URL-encoded. Nothing may
//! be found. A positive control proves the needles are the ones the upstream really received.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use support::catalogue::Catalogue;
use support::composer::ComposerProject;
use support::downloads::{DownloadsMock, Listed, ReleaseFile};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::{created_secret, ProxyProcess};
use support::proxy::{request, Reply};

/// A public key shaped like Marketplace's, and a private key with characters that base64 and
/// URL encoding both change, so each encoding is a distinct needle.
const PUBLIC: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const PRIVATE: &str = "pR1v+tE/k3Y=w1th&sp3c%al$ch4rs!~";
/// The organisation's GitHub token: configured too, and just as secret.
const GITHUB_TOKEN: &str = "ghp_k3yHyg13neT0kenNeverPrinted0042";
/// The account behind release downloads, and its download access token (secret; the MAGEID
/// alone is an account number, secret only together with the token).
const MAGE_ID: &str = "MAG004242424";
const DOWNLOAD_TOKEN: &str = "dL+t0k3n/w1th=sp3c&al%ch4rs~0042";

fn needles() -> Vec<(String, String)> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let b64url = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pair = format!("{PUBLIC}:{PRIVATE}");
    let download_pair = format!("{MAGE_ID}:{DOWNLOAD_TOKEN}");
    let mut needles = Vec::new();
    for (what, secret) in [
        ("public", PUBLIC),
        ("private", PRIVATE),
        ("pair", &pair),
        ("github token", GITHUB_TOKEN),
        ("download token", DOWNLOAD_TOKEN),
        ("download pair", &download_pair),
    ] {
        needles.push((format!("{what} raw"), secret.to_string()));
        needles.push((format!("{what} base64"), b64.encode(secret)));
        needles.push((format!("{what} base64url"), b64url.encode(secret)));
        needles.push((
            format!("{what} url-encoded"),
            utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        ));
        // As PHP's json_encode and some loggers write slashes.
        needles.push((format!("{what} json-escaped"), secret.replace('/', "\\/")));
    }
    needles
}

/// Every place searched, by name.
#[derive(Default)]
struct Haystack {
    parts: Vec<(String, Vec<u8>)>,
}

impl Haystack {
    fn add(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.parts.push((name.into(), bytes.into()));
    }

    fn add_reply(&mut self, name: &str, reply: &Reply) {
        let mut bytes = format!("{}\n", reply.status).into_bytes();
        for (k, v) in &reply.headers {
            bytes.extend_from_slice(k.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&reply.body);
        self.add(name, bytes);
    }

    /// Every file below `dir`, recursively.
    fn add_tree(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                self.add_tree(&path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                self.add(path.display().to_string(), bytes);
            }
        }
    }

    fn leaks(&self) -> Vec<String> {
        let needles = needles();
        let mut found = Vec::new();
        for (name, bytes) in &self.parts {
            for (what, needle) in &needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(format!("{what} in {name}"));
                }
            }
        }
        found
    }

    fn total_bytes(&self) -> usize {
        self.parts.iter().map(|(_, b)| b.len()).sum()
    }
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer-proxy"));
    cmd.env_clear();
    cmd
}

#[test]
fn keys_never_leave_the_proxy_except_towards_the_upstream() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let catalogue = Arc::new(Catalogue::magento(4));
    let mut opts = MockOptions::new(Protocol::V1, catalogue.clone());
    opts.public_key = PUBLIC.into();
    opts.private_key = PRIVATE.into();
    // Archives are answered with a redirect to a second origin, which must never see the keys.
    opts.redirect_archives = true;
    let mock = runtime.block_on(MockUpstream::start(opts));
    let release = ReleaseFile::new("Magento-CE-2.4.6.tar.gz", 300_000, Listed::Md5);
    let damaged = ReleaseFile::new("Magento-CE-2.4.7.tar.gz", 300_000, Listed::WrongMd5);
    let downloads = runtime.block_on(DownloadsMock::start(
        MAGE_ID,
        DOWNLOAD_TOKEN,
        vec![release.clone(), damaged.clone()],
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let env: Vec<(String, String)> = [
        ("COMPOSER_PROXY_UPSTREAM_URL", mock.url()),
        ("COMPOSER_PROXY_PUBLIC_KEY", PUBLIC.into()),
        ("COMPOSER_PROXY_PRIVATE_KEY", PRIVATE.into()),
        ("COMPOSER_PROXY_GITHUB_TOKEN", GITHUB_TOKEN.into()),
        ("COMPOSER_PROXY_DOWNLOADS_URL", downloads.url()),
        ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", MAGE_ID.into()),
        ("COMPOSER_PROXY_DOWNLOADS_TOKEN", DOWNLOAD_TOKEN.into()),
        ("COMPOSER_PROXY_CACHE_DIR", cache.display().to_string()),
        ("COMPOSER_PROXY_LOG_LEVEL", "trace".into()),
        ("COMPOSER_PROXY_UPSTREAM_READ_TIMEOUT_SECS", "1".into()),
        ("COMPOSER_PROXY_UPSTREAM_RETRY_SECS", "0".into()),
        ("COMPOSER_PROXY_METADATA_TTL_SECS", "1".into()),
        // Archives come from disk only, so a purged one must be fetched again.
        ("COMPOSER_PROXY_ARCHIVE_MEMORY_CACHE_MAX_BYTES", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut proxy = ProxyProcess::start(&env);
    let mut seen = Haystack::default();
    let fetch = |seen: &mut Haystack, method: Method, path: &str, headers: &[(&str, &str)]| {
        let url = format!("{}{path}", proxy.url);
        let reply = runtime.block_on(request(method.clone(), &url, headers, Bytes::new()));
        seen.add_reply(&format!("{method} {path}"), &reply);
        reply
    };
    let module = |n: usize| format!("magento/module-m{n:03}");
    let dist_of = |seen: &mut Haystack, package: &str| -> String {
        let p2 = fetch(seen, Method::GET, &format!("/p2/{package}.json"), &[]);
        assert_eq!(p2.status, StatusCode::OK, "{package}");
        let json = p2.json();
        let url = json["packages"][package][0]["dist"]["url"]
            .as_str()
            .expect("dist url")
            .to_string();
        url.strip_prefix(&proxy.url)
            .expect("proxied dist")
            .to_string()
    };

    // Error paths on a cold cache: archives cut short and corrupt, upstream 500, timeout.
    mock.set_truncate_archives(true);
    let truncated = dist_of(&mut seen, &module(1));
    let url = format!("{}{truncated}", proxy.url);
    assert!(
        !runtime.block_on(support::proxy::whole_ok(&url)),
        "a cut archive never ends as a 200"
    );
    mock.set_truncate_archives(false);
    mock.set_corrupt_archives(true);
    let corrupt = dist_of(&mut seen, &module(2));
    let url = format!("{}{corrupt}", proxy.url);
    assert!(
        !runtime.block_on(support::proxy::whole_ok(&url)),
        "a corrupt archive is not served whole"
    );
    mock.set_corrupt_archives(false);
    // Upstream metadata of a v1 upstream is fetched ahead, so archives show upstream errors.
    let erroring = dist_of(&mut seen, &module(3));
    let slow = dist_of(&mut seen, &module(4));
    mock.set_failure(Some(500));
    let failed = fetch(&mut seen, Method::GET, &erroring, &[]);
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    mock.set_failure(None);
    mock.set_delay(Duration::from_secs(3));
    let timed_out = fetch(&mut seen, Method::GET, &slow, &[]);
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    mock.set_delay(Duration::ZERO);

    // A full install with the real Composer client, verbose, from a cold Composer cache.
    let project = ComposerProject::new(
        &proxy.url,
        &[("magento/product-community-edition", "2.4.6")],
    );
    let output = project.run(&["install", "--no-progress", "-vvv"]);
    seen.add("composer stdout", output.stdout.clone());
    seen.add("composer stderr", output.stderr.clone());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seen.add_tree(&project.cache_dir());
    seen.add_tree(project.path());

    // Everything a client can ask for, and every refusal.
    for (method, path, headers) in [
        (Method::GET, "/packages.json", vec![]),
        (
            Method::GET,
            "/packages.json",
            vec![("accept-encoding", "gzip")],
        ),
        (Method::HEAD, "/packages.json", vec![]),
        (Method::GET, "/p2/magento/framework.json", vec![]),
        (Method::GET, "/p2/magento/framework~dev.json", vec![]),
        (Method::GET, "/p2/magento/not-licensed.json", vec![]),
        (Method::GET, "/search.json?q=magento", vec![]),
        (Method::GET, "/healthz", vec![]),
        (Method::GET, "/readyz", vec![]),
        (Method::GET, "/metrics", vec![]),
        (Method::GET, "/status", vec![]),
        (Method::GET, "/status.json", vec![]),
        (Method::GET, "/no/such/route", vec![]),
        (Method::GET, "/p2/%2e%2e/%2e%2e/etc/passwd.json", vec![]),
        (
            Method::GET,
            "/dists/magento/framework/..%2f..%2fkeys.zip",
            vec![],
        ),
        (Method::DELETE, "/packages.json", vec![]),
        (Method::POST, "/packages.json", vec![]),
        (
            Method::GET,
            "/dists/magento/framework/0123456789abcdef0123456789abcdef.zip",
            vec![],
        ),
        (
            Method::GET,
            "/packages.json",
            vec![("authorization", "Basic Zm9vOmJhcg==")],
        ),
    ] {
        fetch(&mut seen, method, path, &headers);
    }
    let archive = dist_of(&mut seen, &module(1));
    fetch(&mut seen, Method::GET, &archive, &[]);
    fetch(&mut seen, Method::HEAD, &archive, &[]);
    let notify = runtime.block_on(request(
        Method::POST,
        &format!("{}/downloads/", proxy.url),
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"downloads":[{"name":"magento/framework","version":"1.0.0"}]}"#),
    ));
    seen.add_reply("POST /downloads/", &notify);

    // Release downloads: an answer quoting the token, a file whole and one failing its md5,
    // an unknown file, then every path again with the token rejected.
    let release_paths = [
        "/releases/info/help".to_string(),
        "/releases/info/files".to_string(),
        "/releases/info/versions".to_string(),
        "/releases/info/json".to_string(),
        "/releases/info/filter/version/2.4.*".to_string(),
        format!("/releases/file/{}", release.name),
        "/releases/file/no-such-release.zip".to_string(),
        "/releases/file/..%2f..%2fetc%2fpasswd".to_string(),
    ];
    for path in &release_paths {
        fetch(&mut seen, Method::GET, path, &[]);
    }
    let whole = fetch(&mut seen, Method::GET, &release_paths[5], &[]);
    assert!(whole.status == StatusCode::OK && whole.body == release.bytes);
    fetch(&mut seen, Method::HEAD, &release_paths[5], &[]);
    let url = format!("{}/releases/file/{}", proxy.url, damaged.name);
    assert!(
        !runtime.block_on(support::proxy::whole_ok(&url)),
        "md5 mismatch"
    );
    downloads.set_reject(true);
    for path in release_paths
        .iter()
        .chain([&format!("/releases/file/{}", damaged.name)])
    {
        fetch(&mut seen, Method::GET, path, &[]);
    }
    let refused = fetch(&mut seen, Method::GET, "/releases/info/filter/x", &[]);
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(proxy
        .wait_for_log(|v| v["event"] == "key_rejected" && v["upstream"] == "releases")
        .is_some());
    fetch(&mut seen, Method::GET, "/readyz", &[]);
    downloads.set_reject(false);

    // Upstream rejects the key pair: the proxy explains it without quoting it.
    let purge = binary()
        .args(["cache", "purge", &module(1)])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("cache purge runs");
    assert!(purge.status.success());
    mock.set_reject_keys(true);
    let rejected = fetch(&mut seen, Method::GET, &archive, &[]);
    assert_eq!(rejected.status, StatusCode::BAD_GATEWAY);
    assert!(proxy
        .wait_for_log(|v| v["event"] == "key_rejected")
        .is_some());
    fetch(&mut seen, Method::GET, "/readyz", &[]);
    fetch(&mut seen, Method::GET, "/packages.json", &[]);
    fetch(&mut seen, Method::GET, "/metrics", &[]);
    // The status page names the rejected account and its last error: never its keys.
    for path in ["/status", "/status.json"] {
        let page = fetch(&mut seen, Method::GET, path, &[]);
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            String::from_utf8_lossy(&page.body).contains("rejected"),
            "{path}"
        );
    }

    // The `check` command, accepted and rejected, at trace level.
    for reject in [true, false] {
        mock.set_reject_keys(reject);
        let out = binary()
            .arg("check")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("check runs");
        seen.add(format!("check (reject={reject}) stdout"), out.stdout);
        seen.add(format!("check (reject={reject}) stderr"), out.stderr);
    }

    // Configuration errors next to valid keys, including a malformed fallback key line.
    let fallback = dir.path().join("fallback-keys");
    std::fs::write(&fallback, format!("{PUBLIC}{PRIVATE}\n")).expect("write");
    for (setting, value) in [
        ("COMPOSER_PROXY_LISTEN", "not-an-address".to_string()),
        (
            "COMPOSER_PROXY_FALLBACK_KEYS_FILE",
            fallback.display().to_string(),
        ),
        (
            "COMPOSER_PROXY_UPSTREAM_URL",
            format!("http://{PUBLIC}:{PRIVATE}@127.0.0.1/"),
        ),
        (
            "COMPOSER_PROXY_DOWNLOADS_URL",
            format!("http://{MAGE_ID}:{DOWNLOAD_TOKEN}@127.0.0.1/"),
        ),
        ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", String::new()),
    ] {
        let out = binary()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(setting, &value)
            .output()
            .expect("binary runs");
        assert_eq!(out.status.code(), Some(64), "{setting} is refused");
        seen.add(format!("{setting} error stdout"), out.stdout);
        seen.add(format!("{setting} error stderr"), out.stderr);
    }

    // A second replica on the same cache with client tokens required, behind a trusted proxy
    // (the test itself), with a fallback key pair, reloaded by SIGHUP: token refusals,
    // allowlist refusals, bad X-Forwarded-For and the request limits, at trace level too.
    let tokens_file = dir.path().join("tokens.json");
    let fallback_ok = dir.path().join("fallback-ok");
    std::fs::write(&fallback_ok, format!("{PUBLIC}:{PRIVATE}\n")).expect("write");
    let mut guarded_env = env.clone();
    guarded_env.extend(
        [
            ("COMPOSER_PROXY_REQUIRE_TOKENS", "true".to_string()),
            (
                "COMPOSER_PROXY_TOKENS_FILE",
                tokens_file.display().to_string(),
            ),
            ("COMPOSER_PROXY_TRUSTED_PROXIES", "127.0.0.1/32".to_string()),
            (
                "COMPOSER_PROXY_FALLBACK_KEYS_FILE",
                fallback_ok.display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let guarded = ProxyProcess::start(&guarded_env);
    let created = binary()
        .args(["tokens", "create", "--name", "ci-runner"])
        .envs(guarded_env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("tokens create runs");
    assert!(created.status.success());
    let token = created_secret(&String::from_utf8_lossy(&created.stdout));
    let bearer = format!("Bearer {token}");
    let guarded_fetch =
        |seen: &mut Haystack, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes| {
            let url = format!("{}{path}", guarded.url);
            let reply = runtime.block_on(request(method.clone(), &url, headers, body));
            seen.add_reply(&format!("guarded {method} {path}"), &reply);
            reply
        };
    // A token change reaches the replica within a second (asserted in access_control.rs);
    // here it is only waited for, bounded.
    let until_token_answer = |seen: &mut Haystack, expected: StatusCode| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let headers = [("authorization", bearer.as_str())];
        while guarded_fetch(seen, Method::GET, "/packages.json", &headers, Bytes::new()).status
            != expected
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the token never got {expected}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until_token_answer(&mut seen, StatusCode::OK);
    let long_path = format!("/p2/magento/{}.json", "a".repeat(2000));
    let huge_header = "x".repeat(70 * 1024);
    for (method, path, headers, body, expected) in [
        (Method::GET, "/packages.json", vec![], Bytes::new(), 401),
        (
            Method::GET,
            "/packages.json",
            vec![("authorization", "Bearer cpt_wrong")],
            Bytes::new(),
            401,
        ),
        (
            Method::GET,
            "/packages.json",
            vec![("authorization", "Basic bm90OmF0b2tlbg==")],
            Bytes::new(),
            401,
        ),
        (
            Method::GET,
            &archive,
            vec![("authorization", bearer.as_str())],
            Bytes::new(),
            200,
        ),
        (
            Method::GET,
            "/packages.json",
            vec![
                ("authorization", bearer.as_str()),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            Bytes::new(),
            403,
        ),
        (
            Method::GET,
            "/packages.json",
            vec![
                ("authorization", bearer.as_str()),
                ("x-forwarded-for", "10.1.1.1, garbage"),
            ],
            Bytes::new(),
            400,
        ),
        (
            Method::GET,
            &long_path,
            vec![("authorization", bearer.as_str())],
            Bytes::new(),
            414,
        ),
        (
            Method::GET,
            "/packages.json",
            vec![("x-padding", huge_header.as_str())],
            Bytes::new(),
            431,
        ),
        (
            Method::POST,
            "/downloads/",
            vec![
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            // Just over the 1 MiB limit: a body much larger than the socket buffers could still be
            // being written when the proxy answers 413 and closes, and the client would see a
            // broken pipe instead of the answer.
            Bytes::from(vec![b' '; 1024 * 1024 + 1]),
            413,
        ),
        (Method::PUT, "/packages.json", vec![], Bytes::new(), 405),
        (
            Method::GET,
            "/releases/info/json",
            vec![],
            Bytes::new(),
            401,
        ),
        (
            Method::GET,
            "/releases/info/json",
            vec![("authorization", bearer.as_str())],
            Bytes::new(),
            200,
        ),
    ] {
        let reply = guarded_fetch(&mut seen, method.clone(), path, &headers, body);
        assert_eq!(
            reply.status.as_u16(),
            expected,
            "{method} {}",
            &path[..path.len().min(60)]
        );
    }
    guarded.signal("HUP");
    assert!(guarded
        .wait_for_log(|v| v["event"] == "config_reloaded")
        .is_some());
    let disabled = binary()
        .args(["tokens", "disable", "ci-runner"])
        .envs(guarded_env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("tokens disable runs");
    seen.add("tokens disable stdout", disabled.stdout);
    seen.add("tokens disable stderr", disabled.stderr);
    until_token_answer(&mut seen, StatusCode::FORBIDDEN);
    for args in [&["tokens", "list"][..], &["tokens", "list", "--json"][..]] {
        let out = binary()
            .args(args)
            .envs(guarded_env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("tokens list runs");
        seen.add(format!("{args:?} stdout"), out.stdout);
    }
    guarded.signal("TERM");
    let mut guarded = guarded;
    assert!(guarded.wait().success());
    let guarded_log = guarded.log_text();
    assert!(guarded_log.contains("\"event\":\"token_refused\""));
    seen.add("guarded proxy output", guarded_log.clone());
    // The token secret is a secret too: only `tokens create` ever prints it.
    let token_needles = [
        token.clone(),
        base64::engine::general_purpose::STANDARD.encode(format!("ci-runner:{token}")),
    ];
    for needle in &token_needles {
        assert!(
            !guarded_log.contains(needle.as_str()),
            "the client token leaked into the log"
        );
    }

    // Upstream gone: answers from cache, and errors for what is not cached.
    runtime.block_on(mock.stop());
    fetch(&mut seen, Method::GET, "/packages.json", &[]);
    fetch(
        &mut seen,
        Method::GET,
        &format!("/p2/{}.json", module(6)),
        &[],
    );

    proxy.signal("TERM");
    assert!(proxy.wait().success());
    seen.add("proxy output", proxy.log_text());
    seen.add_tree(&cache);

    // The log really is at trace level, for every crate that logs: the filter is plain
    // `trace`, and the HTTP stacks' own trace lines are there too.
    let log = proxy.log_text();
    let traced: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "TRACE")
        .collect();
    let targets: std::collections::BTreeSet<String> = traced
        .iter()
        .filter_map(|v| v["target"].as_str())
        .map(|t| t.split("::").next().unwrap_or(t).to_string())
        .collect();
    assert!(
        traced.len() > 100,
        "too little traced to mean anything: {targets:?}"
    );
    assert!(
        targets.iter().any(|t| t != "composer_proxy"),
        "only this crate traced: {targets:?}"
    );

    // Positive control: the upstream received exactly the Basic credentials searched for, and
    // the archive host (another origin) never received any.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{PUBLIC}:{PRIVATE}"))
    );
    let upstream = mock.requests();
    assert!(!upstream.is_empty());
    assert!(upstream
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&expected)));
    // The download endpoint received the MAGEID and token on every request, nothing else did.
    let download_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{MAGE_ID}:{DOWNLOAD_TOKEN}"))
    );
    let received = downloads.authorizations();
    assert!(!received.is_empty());
    assert!(received
        .iter()
        .all(|a| a.as_deref() == Some(&download_basic)));
    let elsewhere = mock.archive_host_requests();
    assert!(
        !elsewhere.is_empty(),
        "archives were fetched from the other origin"
    );
    assert!(elsewhere
        .iter()
        .all(|r| r.authorization.is_none() && !r.raw_path_and_query.contains(PUBLIC)));

    let leaks = seen.leaks();
    assert!(
        leaks.is_empty(),
        "the keys leaked ({} bytes searched): {leaks:#?}",
        seen.total_bytes()
    );
}
