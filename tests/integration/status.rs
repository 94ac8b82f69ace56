//! Issue 22: the status page, read in a real browser. The usage tests' set-up (two Marketplace
//! accounts, a view per client over one of them plus the vendor repository and packagist, a
//! token bound to each view); the real Composer client installs through both views, then the
//! agency's key pair is disabled upstream. Headless Chromium (Debian's `chromium`) loads
//! `/status` with scripts allowed (the page has none to run) and the DOM it built must show
//! each section with the facts of this run; a screenshot is left in the test's temp directory.
//! `/status.json` carries the same facts, its readiness equals `/readyz`'s, and neither holds
//! a secret. A token bound to a view, and a client outside `status_allow`, are refused.

use crate::accounts::{AGENCY, CLIENT, CLIENT_MODULE, EXTENSION};
use crate::support;
use crate::support::blocking;
use crate::usage::{views, Views};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use http::StatusCode;
use serde_json::Value;
use support::catalogue::Catalogue;
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::proxy::{base_env, get, get_with, TestProxy};
use support::upstreams::HYVA_LICENCE;

const NOT_INSTALLED: &str =
    "chromium is not installed: run `apt-get install -y chromium` (or scripts/test, which installs it)";
/// Bound of every wait for the usage record to show the installs.
const WAIT: Duration = Duration::from_secs(30);

/// Runs headless Chromium with `args` and the URL; its stdout. Chromium needs a writable home
/// for its profile, so it gets a temporary one.
fn chromium(args: &[&str], url: &str) -> String {
    let home = tempfile::tempdir().expect("chromium home");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            home.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .env("HOME", home.path())
        .output()
        .unwrap_or_else(|e| panic!("{NOT_INSTALLED} ({e})"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn basic(name: &str, secret: &str) -> String {
    let pair = format!("{name}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The text of the element with `id` in `dom`, roughly: from its opening tag to the next
/// element of the same kind that opens a sibling section. Enough to tell which facts a section
/// shows.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page"));
    let rest = &dom[start..];
    let end = rest.find("</section>").unwrap_or(rest.len());
    &rest[..end]
}

/// `/status.json`, polled (bounded) until `done` holds.
async fn status_json(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = get(&format!("{url}/status.json")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let json = reply.json();
        if done(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "never seen: {json:#}");
        // The usage record is written by a thread of the proxy's: poll, bounded.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_accounts_views_downloads_and_advisories_in_a_browser() {
    let s: Views = views().await;
    let proxy = s.start();
    let acme = s.install(&proxy, "acme", "acme-ci", EXTENSION);
    let globex = s.install(&proxy, "globex", "globex-ci", CLIENT_MODULE);
    let downloads = (acme.len() + globex.len()) as u64;

    // The agency's key pair is disabled; the proxy learns it on its next use: an archive only
    // that account serves and nobody downloaded yet (1.0.0; the installs took 1.1.0).
    let p2 = get(&format!("{}/p2/{EXTENSION}.json", proxy.url))
        .await
        .json();
    let dist = p2["packages"][EXTENSION]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == "1.0.0")
        .and_then(|v| v["dist"]["url"].as_str())
        .expect("1.0.0's dist")
        .to_string();
    s.m.front.disable(AGENCY);
    assert_eq!(get(&dist).await.status, StatusCode::BAD_GATEWAY);

    let json = status_json(&proxy.url, |j| {
        j["downloads"]["totals"][0].as_u64() >= Some(downloads)
    })
    .await;

    // `/status.json` and `/readyz` agree: the same body and status.
    let ready = get(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(json["readiness"], ready.json());
    assert_eq!(json["readiness_status"], ready.status.as_u16());
    let upstream = |name: &str| {
        json["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {json:#}"))
            .clone()
    };
    let agency = upstream(AGENCY);
    assert_eq!(agency["credentials"], "rejected", "{agency:#}");
    assert!(agency["credentials_since"].is_string());
    assert_eq!(
        agency["health"],
        json["readiness"]["upstreams"][AGENCY]["status"]
    );
    let only: Vec<&str> = agency["only_here"]["names"]
        .as_array()
        .expect("names only the agency lists")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(only.contains(&EXTENSION), "{agency:#}");
    assert_eq!(upstream(CLIENT)["credentials"], "accepted");
    assert!(upstream("packagist")["listed"] == false);
    // Each token was used for its install, and is listed with its view and that use.
    for (token, view) in [("acme-ci", "acme"), ("globex-ci", "globex")] {
        let listed = json["tokens"]["list"]
            .as_array()
            .expect("tokens")
            .iter()
            .find(|t| t["name"] == token)
            .unwrap_or_else(|| panic!("{token} in {json:#}"));
        assert_eq!(listed["views"], serde_json::json!([view]));
        assert!(listed["last_used"].is_string(), "{listed:#}");
    }
    let affected = json["advisories"]["affected"]
        .as_array()
        .expect("advisories");
    let covering = |package: &str, id: &str| {
        affected
            .iter()
            .find(|a| a["package"] == package && a["advisory_id"] == id)
            .unwrap_or_else(|| panic!("{id} for {package} in {affected:#?}"))
    };
    let extension = covering(EXTENSION, "PKSA-vndx-2024-1");
    assert_eq!(extension["version"], "1.1.0");
    assert_eq!(extension["views"], serde_json::json!(["acme"]));
    assert_eq!(extension["tokens"], serde_json::json!(["acme-ci"]));
    let log = covering("psr/log", "PKSA-psr-2023-1");
    assert_eq!(log["views"], serde_json::json!(["acme", "globex"]));
    // An advisory for a version nobody was served is not listed.
    assert!(affected.iter().all(|a| a["advisory_id"] != "PKSA-none-1"));

    // The page in a real browser: the DOM it built, and what a person sees.
    let url = format!("{}/status", proxy.url);
    let dom = blocking(|| chromium(&["--dump-dom"], &url));
    std::fs::write(artifact("status-page.html"), &dom).expect("the DOM is kept");
    assert!(!dom.contains("<script"), "the page has no script");
    let row = section(&dom, &format!("upstream-{AGENCY}"));
    let row = &row[..row.find("</tr>").expect("the agency's row ends")];
    assert!(row.contains("rejected"), "{row}");
    assert!(row.contains(EXTENSION), "what losing it costs: {row}");
    let views = section(&dom, "views");
    for name in ["acme", "globex", "acme-ci", "globex-ci"] {
        assert!(views.contains(name), "{name} in {views}");
    }
    assert!(views.contains("composer config repositories.acme composer"));
    let shown = section(&dom, "downloads");
    for package in [EXTENSION, CLIENT_MODULE, "psr/log"] {
        assert!(shown.contains(package), "{package} in {shown}");
    }
    let advisories = section(&dom, "advisories");
    assert!(advisories.contains("PKSA-vndx-2024-1") && advisories.contains("CVE-2024-11111"));
    let storage = section(&dom, "storage");
    assert!(storage.contains("Disk: archives"), "{storage}");
    let traffic = section(&dom, "traffic");
    assert!(
        traffic.contains("<svg") && traffic.contains("Requests"),
        "{traffic}"
    );
    let shot = artifact("status-page.png");
    let _ = std::fs::remove_file(&shot);
    blocking(|| {
        chromium(
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,3700",
                "--hide-scrollbars",
            ],
            &url,
        )
    });
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());

    // No secret in the page or the JSON: the tokens' secrets and every account's keys.
    let html = get(&url).await;
    assert_eq!(
        html.headers["content-security-policy"]
            .to_str()
            .expect("ascii")
            .split(';')
            .next(),
        Some("default-src 'none'")
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&html.body),
        serde_json::to_string(&json).expect("json")
    );
    let mut secrets: Vec<String> = s.tokens.iter().map(|(_, secret)| secret.clone()).collect();
    // The accounts' key pairs (see `accounts::account`) and the vendor's licence key.
    for seed in ['a', 'c'] {
        secrets.push(seed.to_string().repeat(32));
        secrets.push(seed.to_ascii_uppercase().to_string().repeat(32));
    }
    secrets.push(HYVA_LICENCE.to_string());
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the status page"
        );
    }

    // A token bound to a view may not read it; an organisation-wide one may.
    let bound = basic("acme-ci", s.secret("acme-ci"));
    let refused = get_with(&url, &[("authorization", &bound)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.warning().contains("acme"), "{}", refused.warning());
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_in_status_allow_read_the_page() {
    // Behind a trusted balancer on loopback: the client is whoever it names.
    let catalogue = std::sync::Arc::new(Catalogue::magento(1));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let mut env = base_env(&mock.url());
    env.extend([
        (
            "COMPOSER_PROXY_TRUSTED_PROXIES".into(),
            "127.0.0.1/32".into(),
        ),
        ("COMPOSER_PROXY_STATUS_ALLOW".into(), "10.9.0.0/16".into()),
    ]);
    let proxy = TestProxy::start_with(env, None).await;
    for path in ["status", "status.json"] {
        let url = format!("{}/{path}", proxy.url);
        let outside = get_with(&url, &[("x-forwarded-for", "10.1.2.3")]).await;
        assert_eq!(outside.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            outside.warning().contains("status_allow"),
            "{}",
            outside.warning()
        );
        // The balancer itself is not in status_allow either.
        assert_eq!(get(&url).await.status, StatusCode::FORBIDDEN);
        let inside = get_with(&url, &[("x-forwarded-for", "10.9.8.7")]).await;
        assert_eq!(inside.status, StatusCode::OK, "{path}");
    }
    // Only at the top: under a view or upstream name it is no route.
    let nested = get(&format!("{}/magento/status", proxy.url)).await;
    assert_eq!(nested.status, StatusCode::NOT_FOUND);
    proxy.stop().await;
}
