//! Issue 11, "Every repository a Magento project needs, behind one URL", Done means 1: the real
//! Composer client installs through one proxy URL in front of three mocked upstreams at once,
//! as Composer itself would if it listed them in that order (DESIGN.md §3 "Several
//! upstreams", UPSTREAMS.md §2):
//! - `magento`: a v1 repo.magento.com with Marketplace keys;
//! - `hyva`: a Private Packagist vendor repository under a path (`/hyva-project/`), HTTP Basic
//!   `token` + licence key;
//! - `packagist`: packagist.org in miniature: minified p2, open-ended (404 for names it lacks),
//!   public, its dists on a second origin (a "codeload") listed in `allowed_hosts`.
//!
//! One test drives Composer straight at the three mocks with credentials (the benchmark's
//! baseline), so a failure elsewhere is the proxy's, not the fixtures'. The proxy runs
//! in-process from a TOML file, or as the real binary where exit statuses and the JSON log
//! matter. Waits are on log lines or bounded polls (≤ 30 s), never on time.

use crate::support;
use crate::support::blocking;

/// `composer audit`, filter lists and the name list through the proxy.
mod advisories;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, assert_locked_installed, ComposerProject};
use support::mock_upstream::{
    expand, gunzip_if_needed, sha256_hex, MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY,
    TEST_PUBLIC_KEY,
};
use support::process::ProxyProcess;
use support::proxy::{base_env, get, get_with, Reply, TestProxy};
use support::upstreams::{HyvaSecrets, Upstream, Upstreams, HYVA_LICENCE, HYVA_PREFIX, NAMES};

/// Modules in the Magento metapackage: enough for a tree, small enough for two cores.
const MODULES: usize = 3;
const PRODUCT: &str = "magento/product-community-edition";
/// In the Magento catalogue ("ext" listing) and, with other bytes, in packagist's.
const EXTENSION: &str = "vendorx/extension-a";
const THEME: &str = "hyva-themes/magento2-default-theme";
const THEME_MODULE: &str = "hyva-themes/magento2-theme-module";
/// A name no upstream has: not in either finite listing, a 404 from packagist.
const NEVER_SEEN: &str = "nobody/never-seen";
/// Name/value pairs: requirements (name, constraint) or settings (variable, value).
type Pairs<'a> = &'a [(&'a str, &'a str)];
/// Bound of every poll and wait.
const WAIT: Duration = Duration::from_secs(30);

/// The Magento project of Done means 1: the product and its extension from `magento`, the
/// theme from `hyva` (it also needs `psr/log`), libraries and a `magento/` name from
/// `packagist`.
const PROJECT: Pairs = &[
    (PRODUCT, "2.4.7"),
    (THEME, "^1.3"),
    ("laminas/laminas-stdlib", "^3.18"),
    ("magento/magento-composer-installer", "^0.4"),
];

fn composer(project: &ComposerProject, args: &[&str]) -> String {
    blocking(|| project.run_ok(args))
}

/// Polls `step` every 100 ms until it is `Ok`, for at most `WAIT`; the last `Err` says why not.
async fn poll<T>(what: &str, mut step: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match step().await {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what}: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Through the merged URL: each package from its owner, under `<proxy>/<owner>/dists/`.
fn assert_installed_from_owners<'a>(
    project: &ComposerProject,
    up: &'a Upstreams,
    proxy_url: &str,
) -> BTreeMap<&'a str, usize> {
    assert_locked_installed(project, |name, _| {
        let owner = up.owner(name);
        let prefix = format!("{proxy_url}/{}/dists/", owner.name);
        (owner.name, &*owner.catalogue, prefix)
    })
}

fn assert_each_upstream_installed(counts: &BTreeMap<&str, usize>) {
    for name in NAMES {
        assert!(
            counts.get(name).is_some_and(|n| *n > 0),
            "nothing from {name}: {counts:?}"
        );
    }
}

fn locked_version(project: &ComposerProject, name: &str) -> String {
    let locked = project.locked_versions();
    locked
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not locked: {locked:?}"))
}

/// The versions of `name` in a p2 reply, expanded when minified.
fn p2_versions(reply: &Reply, name: &str) -> Vec<Value> {
    let json = reply.json();
    let versions = json["packages"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no versions of {name} in {json}"))
        .clone();
    if json["minified"] == "composer/2.0" {
        expand(&versions)
    } else {
        versions
    }
}

/// The User-Agent of the Composer client itself ("Composer/2.5.5 (Linux; …; PHP 8.2…)"),
/// not of the proxy (whose own starts "Composer/2 (composer-proxy/").
fn is_composer_itself(user_agent: Option<&str>) -> bool {
    user_agent.is_some_and(|a| a.starts_with("Composer/") && !a.contains("composer-proxy"))
}

/// Every request on every mock and the dist host, with its `is_composer_itself` verdict.
fn callers(up: &Upstreams) -> Vec<(&'static str, String, bool)> {
    let mut out = Vec::new();
    for u in up.all() {
        let all = u
            .mock
            .requests()
            .into_iter()
            .chain(u.mock.archive_host_requests());
        for r in all {
            let composer = is_composer_itself(r.user_agent.as_deref());
            out.push((u.name, format!("{} {}", r.method, r.path), composer));
        }
    }
    out
}

/// Composer's URL resolution: a template starting with `/` joins the repository's origin.
fn resolve(repo_url: &str, template: &str) -> String {
    if template.starts_with('/') {
        let origin_end = repo_url.find("://").map_or(0, |i| i + 3);
        let origin = match repo_url[origin_end..].find('/') {
            Some(slash) => &repo_url[..origin_end + slash],
            None => repo_url,
        };
        format!("{origin}{template}")
    } else {
        template.to_string()
    }
}

/// Follows the Composer 1 chain of the repository at `repo_url` as Composer does, checking
/// every sha256: packages.json (once it advertises `provider-includes`), each listing
/// (relative to the repository URL), one package file per listing (through `providers-url`).
/// Every file lives under `<repo_url>/p/` and every dist URL starts with `dist_base`.
async fn assert_v1_chain(repo_url: &str, dist_base: &str) {
    let base = repo_url.trim_end_matches('/');
    let root = poll("provider-includes in packages.json", async || {
        let root = get(&format!("{base}/packages.json")).await;
        if root.status != StatusCode::OK {
            return Err(format!("HTTP {}", root.status));
        }
        let json = root.json();
        json.get("provider-includes")
            .is_some()
            .then_some(json.clone())
            .ok_or(json.to_string())
    })
    .await;
    let providers_url = resolve(base, root["providers-url"].as_str().expect("providers-url"));
    assert!(
        providers_url.starts_with(&format!("{base}/p/")),
        "providers-url {providers_url}"
    );
    let includes = root["provider-includes"]
        .as_object()
        .expect("provider-includes");
    assert!(!includes.is_empty(), "no provider listings");
    for (template, meta) in includes {
        let hash = meta["sha256"].as_str().expect("sha256");
        let url = format!("{base}/{}", template.replace("%hash%", hash));
        assert!(url.starts_with(&format!("{base}/p/")), "listing {url}");
        let listing = get(&url).await;
        assert_eq!(listing.status, StatusCode::OK, "{url}");
        let body = gunzip_if_needed(&listing.body);
        assert_eq!(sha256_hex(&body), hash, "{url} does not match its hash");
        let listing: Value = serde_json::from_slice(&body).expect("listing JSON");
        let providers = listing["providers"].as_object().expect("providers");
        let (name, meta) = providers.iter().next().expect("a provider");
        let hash = meta["sha256"].as_str().expect("sha256");
        let url = providers_url
            .replace("%package%", name)
            .replace("%hash%", hash);
        let file = get(&url).await;
        assert_eq!(file.status, StatusCode::OK, "{url}");
        let body = gunzip_if_needed(&file.body);
        assert_eq!(sha256_hex(&body), hash, "{url} does not match its hash");
        let file: Value = serde_json::from_slice(&body).expect("package file JSON");
        for (version, data) in file["packages"][name].as_object().expect("versions") {
            if let Some(dist) = data["dist"]["url"].as_str() {
                assert!(dist.starts_with(dist_base), "{name} {version}: dist {dist}");
            }
        }
    }
}

/// The baseline the proxy must equal: Composer listing the three mocks itself, with their
/// credentials. Also pins the fixtures the other tests rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_the_project_straight_from_the_three_mocks_with_credentials() {
    let up = Upstreams::start(MODULES).await;
    // The one shared name really differs between the two copies, so bytes tell them apart.
    let archive = |u: &Upstream| {
        let version = u
            .catalogue
            .version(EXTENSION, "1.1.0")
            .expect("extension 1.1.0");
        version.archive.clone().expect("an archive").bytes
    };
    assert_ne!(archive(&up.magento), archive(&up.packagist));
    assert!(up.hyva.catalogue.package(EXTENSION).is_none());
    let magento_names: BTreeSet<&str> = up
        .magento
        .catalogue
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert!(!magento_names.contains("magento/magento-composer-installer"));
    assert!(up
        .hyva
        .catalogue
        .packages
        .iter()
        .all(|p| !magento_names.contains(p.name.as_str())));

    let project = up.direct_project(PROJECT);
    // Resolution is what is checked here: the audit after an update reads every installed
    // name's p2 file from each repository whose advisories are in its metadata (packagist.org's
    // are), owned or not.
    composer(&project, &["update", "--no-progress", "--no-audit"]);
    let counts = assert_locked_installed(&project, |name, version| {
        let owner = up.owner(name);
        let url = owner
            .mock
            .dist_url(name, version)
            .expect("a published dist");
        (owner.name, &*owner.catalogue, url)
    });
    assert_each_upstream_installed(&counts);
    assert_eq!(locked_version(&project, EXTENSION), "1.1.0");
    // Composer's own canonical rule: the lower repository is never asked for an owned name.
    assert_eq!(up.packagist.mock.count("/p2/vendorx/extension-a.json"), 0);

    // The mocks behave as the tests through the proxy assume.
    let callers = callers(&up);
    assert!(
        callers.iter().all(|c| c.2),
        "not Composer's user agent: {callers:?}"
    );
    let hyva = up.hyva.mock.requests();
    assert!(
        !hyva.is_empty()
            && hyva
                .iter()
                .all(|r| r.credentials_ok && r.path.starts_with("/hyva-project/"))
    );
    let packagist = up.packagist.mock.requests();
    assert!(!packagist.is_empty() && packagist.iter().all(|r| r.authorization.is_none()));
    let dists = up.packagist.mock.archive_host_requests();
    assert!(!dists.is_empty() && dists.iter().all(|r| r.authorization.is_none()));
    let minified = get(&format!("{}/p2/{EXTENSION}.json", up.packagist.mock.url())).await;
    let versions = p2_versions(&minified, EXTENSION);
    // Only expansion gives the later versions their `name`.
    assert!(
        versions.iter().all(|v| v["name"] == EXTENSION),
        "{versions:?}"
    );
    assert_eq!(versions.len(), 2);
    let missing = get(&format!("{}/p2/{NEVER_SEEN}.json", up.packagist.mock.url())).await;
    assert_eq!(
        missing.status,
        StatusCode::NOT_FOUND,
        "packagist is open-ended"
    );
    let root = get(&format!("{}/packages.json", up.packagist.mock.url()))
        .await
        .json();
    assert!(root.get("available-packages").is_none(), "{root}");
    let auth = format!("Basic {}", base64_basic("token", HYVA_LICENCE));
    let outside = get_with(
        &format!("{}/packages.json", up.hyva.mock.url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        outside.status,
        StatusCode::NOT_FOUND,
        "the vendor repository lives under its path"
    );
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_installs_a_project_from_three_upstreams_byte_exact() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;

    let root = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(root.status, StatusCode::OK);
    let json = root.json();
    assert_eq!(
        json["metadata-url"],
        format!("{}/p2/%package%.json", proxy.url)
    );
    assert!(
        json.get("available-packages").is_none()
            && json.get("available-package-patterns").is_none(),
        "packagist is open-ended: {json}"
    );
    let text = String::from_utf8_lossy(&root.body);
    for u in up.all() {
        let origins = [Some(u.mock.addr()), u.mock.archive_host_addr()];
        for addr in origins.into_iter().flatten() {
            assert!(
                !text.contains(&addr.to_string()),
                "{} advertised: {text}",
                u.name
            );
        }
    }

    // No auth.json, packagist.org disabled: the proxy is the only repository.
    let project = ComposerProject::new(&proxy.url, PROJECT);
    composer(&project, &["update", "--no-progress"]);
    let counts = assert_installed_from_owners(&project, &up, &proxy.url);
    assert_each_upstream_installed(&counts);
    assert_eq!(locked_version(&project, "psr/log"), "3.0.0");
    // The client only ever talked to the proxy (notify-batch and search included).
    let direct: Vec<_> = callers(&up).into_iter().filter(|c| c.2).collect();
    assert!(
        direct.is_empty(),
        "Composer itself called a mock: {direct:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_two_upstreams_serve_comes_only_from_the_higher_one() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;

    let merged = get(&format!("{}/p2/{EXTENSION}.json", proxy.url)).await;
    assert_eq!(merged.status, StatusCode::OK);
    let versions = p2_versions(&merged, EXTENSION);
    let found: BTreeSet<&str> = versions
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(
        found,
        BTreeSet::from(["1.0.0", "1.1.0"]),
        "only magento's versions, never packagist's 1.2.0"
    );
    for v in &versions {
        let url = v["dist"]["url"].as_str().expect("dist url");
        assert!(
            url.starts_with(&format!("{}/magento/dists/", proxy.url)),
            "{url}"
        );
    }

    let project = ComposerProject::new(&proxy.url, &[(EXTENSION, "^1.0")]);
    composer(&project, &["update", "--no-progress"]);
    assert_eq!(locked_version(&project, EXTENSION), "1.1.0");
    assert_installed_matches(&project, &up.magento.catalogue, EXTENSION, "1.1.0");

    for path in [
        format!("/p2/{EXTENSION}.json"),
        format!("/p2/{EXTENSION}~dev.json"),
    ] {
        assert_eq!(
            up.packagist.mock.count(&path),
            0,
            "packagist was asked for {path}"
        );
        let hyva_path = format!("{HYVA_PREFIX}{path}");
        assert_eq!(
            up.hyva.mock.count(&hyva_path),
            0,
            "hyva was asked for {hyva_path}"
        );
    }
    let dists = up.packagist.mock.archive_host_requests();
    assert!(
        dists
            .iter()
            .all(|r| !r.path.starts_with(&format!("/{EXTENSION}/"))),
        "packagist's archive was fetched"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstreams_credentials_reach_only_its_own_origin() {
    let up = Upstreams::start(MODULES).await;
    // hyva's key pair from COMPOSER_PROXY_UPSTREAM_HYVA_{PUBLIC,PRIVATE}_KEY only.
    let proxy = up.proxy(HyvaSecrets::InEnv, &[]).await;
    let project = ComposerProject::new(&proxy.url, PROJECT);
    composer(&project, &["update", "--no-progress"]);
    assert_each_upstream_installed(&assert_installed_from_owners(&project, &up, &proxy.url));

    // The two key pairs differ, so "accepted" on each mock means its own pair.
    for u in [&up.magento, &up.hyva] {
        let requests = u.mock.requests();
        assert!(!requests.is_empty(), "{} was never asked", u.name);
        for r in requests {
            assert!(
                r.credentials_ok,
                "{} got {} {} without its own key pair",
                u.name, r.method, r.path
            );
        }
    }
    let hyva = up.hyva.mock.requests();
    assert!(
        hyva.iter().all(|r| r.path.starts_with("/hyva-project/")),
        "hyva asked outside its path"
    );
    for (what, requests) in [
        ("packagist", up.packagist.mock.requests()),
        ("the dist host", up.packagist.mock.archive_host_requests()),
    ] {
        assert!(!requests.is_empty(), "{what} was never asked");
        for r in requests {
            assert!(
                r.authorization.is_none(),
                "{what} got an Authorization header on {} {}",
                r.method,
                r.path
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_packagist_stopped_its_names_install_from_cache_and_unknown_names_are_5xx() {
    let up = Upstreams::start(MODULES).await;
    // Metadata turns stale within a second, so the installs below meet the stopped upstream.
    let proxy = up
        .proxy(
            HyvaSecrets::InToml,
            &[("COMPOSER_PROXY_METADATA_TTL_SECS", "1")],
        )
        .await;
    let packagist_only = [
        ("psr/log", "^3.0"),
        ("laminas/laminas-stdlib", "^3.18"),
        ("magento/magento-composer-installer", "^0.4"),
    ];
    let warm_up = ComposerProject::new(&proxy.url, &packagist_only);
    composer(&warm_up, &["update", "--no-progress"]);
    up.packagist.mock.stop().await;
    up.magento.mock.reset_counts();
    up.hyva.mock.reset_counts();
    poll("packagist's psr/log served stale", async || {
        let reply = get(&format!("{}/packagist/p2/psr/log.json", proxy.url)).await;
        let cache = reply
            .headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        (reply.status == StatusCode::OK && cache == "STALE")
            .then_some(())
            .ok_or(format!("HTTP {}, X-Cache {cache:?}", reply.status))
    })
    .await;

    // A new client (fresh vendor/ and Composer cache) resolving everything from scratch.
    let project = ComposerProject::new(&proxy.url, PROJECT);
    composer(&project, &["update", "--no-progress"]);
    assert_each_upstream_installed(&assert_installed_from_owners(&project, &up, &proxy.url));
    // The others served normally: what was not cached came from them now.
    assert!(
        up.magento.mock.count_prefix("/archives/") > 0,
        "magento served no archive"
    );
    assert!(
        up.hyva.mock.count_prefix("/hyva-project/archives/") > 0,
        "hyva served no archive"
    );

    // Could not ask packagist: a 5xx naming it, never a 404 (Composer would move on).
    let reply = get(&format!("{}/p2/{NEVER_SEEN}.json", proxy.url)).await;
    assert!(
        [502, 503, 504].contains(&reply.status.as_u16()),
        "{NEVER_SEEN}: HTTP {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.warning().contains("packagist"), "{}", reply.warning());

    let ready = poll("/readyz reporting packagist degraded", async || {
        let reply = get(&format!("{}/readyz", proxy.url)).await;
        let json = reply.json();
        let degraded = json["degraded"].as_str().unwrap_or("");
        (reply.status == StatusCode::OK && degraded.contains("packagist"))
            .then_some(json.clone())
            .ok_or(format!("HTTP {}: {json}", reply.status))
    })
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let status = |name: &str| {
        ready["upstreams"][name]["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        ["degraded", "down"].contains(&status("packagist").as_str()),
        "{ready}"
    );
    assert_eq!(status("magento"), "ok", "{ready}");
    assert_eq!(status("hyva"), "ok", "{ready}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_installs_alone_from_its_own_prefix() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;
    // packagist alone has no owner above it: its own vendorx/extension-a 1.2.0 installs.
    let cases: [(&Upstream, Pairs, (&str, &str)); 3] = [
        (&up.magento, &[(PRODUCT, "2.4.7")], (EXTENSION, "1.1.0")),
        (&up.hyva, &[(THEME_MODULE, "^1.3")], (THEME_MODULE, "1.3.6")),
        (
            &up.packagist,
            &[("laminas/laminas-stdlib", "^3.18"), (EXTENSION, "^1.0")],
            (EXTENSION, "1.2.0"),
        ),
    ];
    for (u, require, (name, version)) in cases {
        let repo = format!("{}/{}/", proxy.url, u.name);
        let root = get(&format!("{repo}packages.json")).await;
        assert_eq!(root.status, StatusCode::OK, "{repo}packages.json");
        assert_eq!(
            root.json()["metadata-url"],
            format!("{repo}p2/%package%.json")
        );
        let project = ComposerProject::new(&repo, require);
        composer(&project, &["update", "--no-progress"]);
        let dists = format!("{repo}dists/");
        let counts =
            assert_locked_installed(&project, |_, _| (u.name, &*u.catalogue, dists.clone()));
        assert!(
            counts.get(u.name).is_some_and(|n| *n > 0),
            "{}: nothing installed",
            u.name
        );
        assert_eq!(locked_version(&project, name), version, "{} alone", u.name);
    }
    // The v1 upstream also keeps its Composer 1 chain, under its own prefix.
    let magento = format!("{}/magento/", proxy.url);
    assert_v1_chain(&magento, &format!("{magento}dists/")).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flat_configuration_still_works_and_its_cache_is_served_after_a_restart() {
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let flat = || base_env(&mock.url());
    let install = |proxy_url: &str| {
        let project = ComposerProject::new(proxy_url, &[(PRODUCT, "2.4.7")]);
        composer(&project, &["update", "--no-progress"]);
        let dists = format!("{proxy_url}/dists/");
        let counts = assert_locked_installed(&project, |_, _| ("flat", &*catalogue, dists.clone()));
        assert!(counts["flat"] > MODULES, "{counts:?}");
    };

    let proxy = TestProxy::start_with(flat(), Some(cache.path())).await;
    assert_v1_chain(&proxy.url, &format!("{}/dists/", proxy.url)).await;
    install(&proxy.url);
    proxy.stop().await;

    // Same cache directory, new process: nothing is fetched again (a conditional
    // packages.json and forwarded install notifications aside).
    mock.reset_counts();
    let restarted = TestProxy::start_with(flat(), Some(cache.path())).await;
    install(&restarted.url);
    let refetched: Vec<String> = mock
        .requests()
        .into_iter()
        .filter(|r| !(r.path == "/packages.json" && r.if_modified_since.is_some()))
        .filter(|r| !(r.method == "POST" && r.path == "/downloads/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        refetched.is_empty(),
        "fetched again after the restart: {refetched:?}"
    );

    // And with the upstream gone, the cache alone installs.
    mock.stop().await;
    install(&restarted.url);
    restarted.stop().await;
}

/// Runs the binary with `serve --config <toml>` and `env`, expects exit status 64 and returns
/// its stderr. A binary that starts serving instead is killed after `WAIT`, failing the test.
fn refused(toml: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, toml).expect("writing the config file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .args(["serve", "--config", file.to_str().expect("utf-8 path")])
        .env_clear()
        .env("COMPOSER_PROXY_LISTEN", "127.0.0.1:0")
        .env("COMPOSER_PROXY_CACHE_DIR", dir.path().join("cache"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "started instead of refusing:\n{toml}\n{env:?}\n{}",
                reader.join().unwrap_or_default()
            );
        }
        // Exit is an event with no notification in std; poll it, bounded by the deadline.
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    assert_eq!(status.code(), Some(64), "{toml}\n{env:?}\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_configurations_exit_64_naming_the_setting() {
    let up = Upstreams::start(MODULES).await;
    let good = up.toml(HyvaSecrets::InToml);
    // The same file without a mistake starts, so every refusal below is about the mistake.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, &good).expect("writing the config file");
    let env = [(
        "COMPOSER_PROXY_CACHE_DIR".to_string(),
        dir.path().join("cache").display().to_string(),
    )];
    let started = blocking(|| {
        ProxyProcess::start_with_args(&["--config", file.to_str().expect("utf-8")], &env)
    });
    drop(started);

    let magento_url = up.magento.mock.url();
    let flat_in_file = format!("upstream_url = \"{magento_url}\"\n\n{good}");
    // A whole flat key pair, so the only thing wrong is mixing the two forms.
    let flat_keys = [
        ("COMPOSER_PROXY_PUBLIC_KEY", TEST_PUBLIC_KEY),
        ("COMPOSER_PROXY_PRIVATE_KEY", TEST_PRIVATE_KEY),
    ];
    let flat: [(&str, Pairs, &[&str]); 3] = [
        (
            &good,
            &[("COMPOSER_PROXY_UPSTREAM_URL", magento_url.as_str())],
            &["upstream_url"],
        ),
        (&flat_in_file, &[], &["upstream_url"]),
        (&good, &flat_keys, &["public_key", "private_key"]),
    ];
    for (toml, env, settings) in flat {
        let stderr = blocking(|| refused(toml, env));
        let named = settings.iter().find(|s| stderr.contains(*s));
        let named = named.unwrap_or_else(|| panic!("flat {settings:?} not named: {stderr}"));
        assert!(
            stderr.replace(named, "").contains("upstream"),
            "[[upstream]] not named: {stderr}"
        );
    }

    let hyva_name = "name = \"hyva\"";
    let long = "a".repeat(33);
    let bad_names = [
        "p",
        "p2",
        "dists",
        "downloads",
        "healthz",
        "Hyva",
        "hyva_themes",
        "",
        long.as_str(),
    ];
    for bad in bad_names {
        let toml = good.replace(hyva_name, &format!("name = \"{bad}\""));
        let stderr = blocking(|| refused(&toml, &[]));
        assert!(stderr.contains("name"), "name {bad:?}: {stderr}");
    }

    let twice = good.replace("name = \"packagist\"", "name = \"magento\"");
    let stderr = blocking(|| refused(&twice, &[]));
    assert!(
        stderr.contains("name") && stderr.contains("magento"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_names_the_owning_upstream_in_access_lines_and_metrics() {
    let up = Upstreams::start(MODULES).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, up.toml(HyvaSecrets::InEnv)).expect("writing the config file");
    let mut env = up.env(HyvaSecrets::InEnv, &[]);
    env.retain(|(k, _)| k != "COMPOSER_PROXY_LISTEN");
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        dir.path().join("cache").display().to_string(),
    ));
    let process = blocking(|| {
        ProxyProcess::start_with_args(&["--config", file.to_str().expect("utf-8")], &env)
    });

    let asked = [
        ("/p2/magento/framework.json", "magento"),
        ("/p2/hyva-themes/magento2-theme-module.json", "hyva"),
        ("/p2/psr/log.json", "packagist"),
        ("/hyva/p2/hyva-themes/magento2-default-theme.json", "hyva"),
    ];
    for (path, owner) in asked {
        let reply = get(&format!("{}{path}", process.url)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let line = blocking(|| {
            process.wait_for_log(|v| v["target"] == "composer_proxy::access" && v["path"] == path)
        })
        .unwrap_or_else(|| panic!("no access line for {path}: {}", process.log_text()));
        assert_eq!(line["upstream"], owner, "{path}: {line}");
    }

    let metrics = get(&format!("{}/metrics", process.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for name in NAMES {
        let label = format!("upstream=\"{name}\"");
        assert!(
            text.lines()
                .any(|l| l.starts_with("composer_proxy_upstream_requests_total{")
                    && l.contains(&label)),
            "no upstream request counted for {name}:\n{text}"
        );
    }
    // Label values come only from the configured names.
    for value in label_values(&text, "upstream") {
        assert!(NAMES.contains(&value), "upstream label {value:?}:\n{text}");
    }
    drop(process);
}

/// Every value of label `key` in a Prometheus text exposition.
fn label_values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
        else {
            continue;
        };
        // Label values here never hold `,` or `"` (names, kinds, outcomes).
        for pair in labels.0.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                if k.trim() == key {
                    values.push(v.trim_matches('"'));
                }
            }
        }
    }
    values
}

/// Runs `composer-proxy --config FILE ARGS` on the proxy's cache directory.
fn command(config: &std::path::Path, cache_dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .env_clear()
        .env("COMPOSER_PROXY_CACHE_DIR", cache_dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The archives `cache stats` counts for `upstream`.
fn archives_of(stats: &str, upstream: &str) -> usize {
    let prefix = format!("  upstream {upstream}: ");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no archive count for {upstream} in:\n{stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_work_per_upstream() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;
    let project = ComposerProject::new(&proxy.url, PROJECT);
    composer(&project, &["update", "--no-progress"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("composer-proxy.toml");
    std::fs::write(&config, up.toml(HyvaSecrets::InToml)).expect("config file");

    let (status, stats) = blocking(|| command(&config, &proxy.cache_dir, &["cache", "stats"]));
    assert_eq!(status, 0, "{stats}");
    let before: BTreeMap<&str, usize> =
        NAMES.iter().map(|n| (*n, archives_of(&stats, n))).collect();
    assert!(before.values().all(|n| *n > 0), "{stats}");

    let (status, verified) = blocking(|| {
        command(
            &config,
            &proxy.cache_dir,
            &["cache", "verify", "--upstream", "hyva"],
        )
    });
    assert_eq!(status, 0, "{verified}");
    let expected = format!("verified {} archives", before["hyva"]);
    assert!(verified.contains(&expected), "{expected:?} in {verified}");

    let (status, purged) = blocking(|| {
        command(
            &config,
            &proxy.cache_dir,
            &["cache", "purge", "--upstream", "packagist"],
        )
    });
    assert_eq!(status, 0, "{purged}");
    let (_, stats) = blocking(|| command(&config, &proxy.cache_dir, &["cache", "stats"]));
    assert_eq!(archives_of(&stats, "packagist"), 0, "{stats}");
    assert_eq!(archives_of(&stats, "magento"), before["magento"], "{stats}");
    assert_eq!(archives_of(&stats, "hyva"), before["hyva"], "{stats}");

    let (status, refused) = blocking(|| {
        command(
            &config,
            &proxy.cache_dir,
            &["cache", "verify", "--upstream", "nosuch"],
        )
    });
    assert_eq!(status, 64, "{refused}");
    assert!(refused.contains("nosuch"), "{refused}");
    proxy.stop().await;
}
