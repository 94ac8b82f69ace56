//! Issue 13, "Every Marketplace credential the organisation holds": several Commerce
//! Marketplace accounts as one repository. Two `[[upstream]]` tables share repo.magento.com's
//! URL with different key pairs; a mock whose listings depend on the key (each account sees
//! the shared catalogue plus what it bought) counts which account fetched what. The real
//! Composer client installs through the proxy.

use crate::support;
use crate::support::blocking;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::accounts::{Account, AccountsMock};
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::{get, listen_env, TestProxy};

/// The agency's own account: Commerce and the extension it bought.
pub(crate) const AGENCY: &str = "agency";
/// A client's account: Commerce and a module only the client bought.
pub(crate) const CLIENT: &str = "client";
pub(crate) const EXTENSION: &str = "vendorx/extension-a";
pub(crate) const CLIENT_MODULE: &str = "magento/module-m003";
pub(crate) const SHARED: &[(&str, &str)] =
    &[("magento/framework", "*"), ("magento/module-m001", "*")];
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    catalogue: Arc<Catalogue>,
    /// The proxy's configuration, for the commands run as the real binary.
    toml: String,
    front: AccountsMock,
    _base: MockUpstream,
    proxy: TestProxy,
}

fn account(name: &'static str, seed: char, listings: &[&'static str]) -> Account {
    Account {
        name,
        public_key: std::iter::repeat_n(seed, 32).collect(),
        private_key: format!("{}", seed.to_ascii_uppercase()).repeat(32),
        listings: listings.to_vec(),
    }
}

/// The Magento catalogue with one module moved to a listing only the client account sees, the
/// two accounts in front of it, and a proxy with one table per account (agency first).
async fn setup() -> Setup {
    let mut catalogue = Catalogue::magento(3);
    for package in &mut catalogue.packages {
        if package.name == CLIENT_MODULE {
            package.listing = "client-only";
        }
    }
    let catalogue = Arc::new(catalogue);
    let agency = account(AGENCY, 'a', &["ce", "ext"]);
    let client = account(CLIENT, 'c', &["ce", "client-only"]);
    let front = AccountsMock::start(&catalogue, vec![agency.clone(), client.clone()]).await;
    let base = MockUpstream::start(MockOptions {
        advertised_url: Some(front.url()),
        ..MockOptions::new(Protocol::V1, catalogue.clone())
    })
    .await;
    front.set_base(&base);
    let table = |a: &Account| {
        format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\npublic_key = \"{}\"\nprivate_key = \"{}\"\n\n",
            a.name,
            front.url(),
            a.public_key,
            a.private_key
        )
    };
    let toml = format!("{}{}", table(&agency), table(&client));
    let proxy = TestProxy::start_with_file(&toml, listen_env(), None).await;
    Setup {
        catalogue,
        toml,
        front,
        _base: base,
        proxy,
    }
}

/// Every locked package is installed byte for byte from the catalogue.
fn assert_lock_installed(project: &ComposerProject, catalogue: &Catalogue) -> usize {
    let lock = project.lock();
    let packages = lock["packages"].as_array().expect("locked packages");
    let mut checked = 0;
    for package in packages.iter().filter(|p| p.get("dist").is_some()) {
        let name = package["name"].as_str().expect("name");
        let version = package["version"].as_str().expect("version");
        assert_installed_matches(project, catalogue, name, version);
        checked += 1;
    }
    checked
}

fn archive_of(catalogue: &Catalogue, name: &str) -> Vec<String> {
    let package = catalogue.package(name).expect("in the catalogue");
    package
        .versions
        .iter()
        .map(|v| Catalogue::archive_path(name, &v.version_normalized))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_install_a_project_that_needs_packages_from_both() {
    let s = setup().await;
    // The product needs every module, the client's included, and the agency's extension.
    let project = ComposerProject::new(
        &s.proxy.url,
        &[("magento/product-community-edition", "2.4.7")],
    );
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    assert!(assert_lock_installed(&project, &s.catalogue) > 3);

    let extension = archive_of(&s.catalogue, EXTENSION);
    let client_module = archive_of(&s.catalogue, CLIENT_MODULE);
    let by_agency = s.front.archives_by(AGENCY);
    let by_client = s.front.archives_by(CLIENT);
    assert!(
        by_agency.iter().any(|p| extension.contains(p)),
        "{by_agency:?}"
    );
    assert!(
        by_client.iter().any(|p| client_module.contains(p)),
        "{by_client:?}"
    );
    // Shared archives come with the first account; the second is asked only for its own.
    assert!(
        by_client.iter().all(|p| client_module.contains(p)),
        "{by_client:?}"
    );
    assert!(s.front.requests().iter().all(|r| r.account.is_some()));

    // One stored copy per archive, whichever account fetched it: a second install is served
    // from the store.
    let before = s.front.requests().len();
    let again = ComposerProject::new(
        &s.proxy.url,
        &[("magento/product-community-edition", "2.4.7")],
    );
    blocking(|| again.run_ok(&["install", "--no-progress"]));
    let archives_after: Vec<_> = s.front.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/archives/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(archives_after.is_empty(), "{archives_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_first_account_leaves_the_shared_packages_to_the_second() {
    let s = setup().await;
    // Both accounts' listings are in the proxy before the agency's key is cut off.
    let root = get(&format!("{}/packages.json", s.proxy.url)).await;
    assert_eq!(root.status, StatusCode::OK);
    s.front.disable(AGENCY);

    // Shared packages install, fetched with the client's key pair.
    let project = ComposerProject::new(&s.proxy.url, SHARED);
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    assert_eq!(assert_lock_installed(&project, &s.catalogue), 2);
    assert!(!s.front.archives_by(CLIENT).is_empty());
    assert!(s.front.archives_by(AGENCY).is_empty());

    // The client's own module too.
    let own = ComposerProject::new(&s.proxy.url, &[(CLIENT_MODULE, "*")]);
    blocking(|| own.run_ok(&["install", "--no-progress"]));

    // What only the agency had fails, with a warning that names the account and what to check.
    let reply = get(&format!("{}/p2/{EXTENSION}.json", s.proxy.url)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.body);
    let warning = reply.warning();
    assert!(warning.contains("\"agency\""), "{warning}");
    assert!(warning.contains("Commerce Marketplace"), "{warning}");
    let lost = ComposerProject::new(&s.proxy.url, &[(EXTENSION, "*")]);
    let run = blocking(|| lost.run(&["install", "--no-progress"]));
    assert!(!run.status.success(), "the extension cannot install");

    // Ready, degraded, the account named; its metric says rejected.
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = get(&format!("{}/readyz", s.proxy.url)).await;
        let json = ready.json();
        assert_eq!(ready.status, StatusCode::OK, "{json}");
        if json["degraded"]
            .as_str()
            .unwrap_or_default()
            .contains(AGENCY)
        {
            assert_eq!(json["upstreams"][CLIENT]["status"], "ok", "{json}");
            break;
        }
        assert!(Instant::now() < deadline, "never degraded: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get(&format!("{}/metrics", s.proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("composer_proxy_upstream_key_accepted{upstream=\"agency\"} 0"),
        "{text}"
    );
    assert!(text.contains("composer_proxy_upstream_key_accepted{upstream=\"client\"} 1"));
}

/// `composer-proxy --config <toml> <args>`, run as the real binary.
pub(crate) async fn command(toml: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("config dir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, toml).expect("config file");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .args(["--config", file.to_str().expect("utf-8 path")])
        .args(args)
        .env_clear()
        .env("COMPOSER_PROXY_CACHE_DIR", dir.path().join("cache"))
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_only_each_account_reaches() {
    let s = setup().await;
    let (status, stdout, stderr) = command(&s.toml, &["check"]).await;
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("only this account reaches 1 package: {EXTENSION}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "only this account reaches 1 package: {CLIENT_MODULE}"
        )),
        "{stdout}"
    );

    let (status, stdout, _) = command(&s.toml, &["check", "--json"]).await;
    assert_eq!(status, Some(0));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let upstream = |name: &str| {
        report["upstreams"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    assert_eq!(upstream(AGENCY)["verdict"], "ok");
    assert_eq!(
        upstream(AGENCY)["only_this_account"],
        serde_json::json!([EXTENSION])
    );
    assert_eq!(
        upstream(CLIENT)["only_this_account"],
        serde_json::json!([CLIENT_MODULE])
    );
    let shared = s.catalogue.packages.len() - 2;
    assert_eq!(upstream(AGENCY)["packages"], shared + 1);

    // Losing the agency's account: its verdict says so, and the command's exit status too.
    s.front.disable(AGENCY);
    let (status, stdout, _) = command(&s.toml, &["check", "--json"]).await;
    assert_eq!(status, Some(3), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["upstreams"][0]["verdict"], "keys_rejected");
    assert_eq!(
        report["upstreams"][1]["only_this_account"],
        serde_json::Value::Null
    );
}

/// Every account's key pair, as it could leak: raw, and as the Authorization header carries it.
fn account_needles(accounts: &[Account]) -> Vec<(String, String)> {
    use base64::Engine as _;
    let mut needles = Vec::new();
    for a in accounts {
        let pair = format!("{}:{}", a.public_key, a.private_key);
        needles.push((format!("{} public key", a.name), a.public_key.clone()));
        needles.push((format!("{} private key", a.name), a.private_key.clone()));
        needles.push((
            format!("{} basic", a.name),
            base64::engine::general_purpose::STANDARD.encode(pair),
        ));
    }
    needles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_key_appears_in_anything_the_proxy_emits() {
    let s = setup().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, &s.toml).expect("config");
    let env = vec![
        (
            "COMPOSER_PROXY_CACHE_DIR".to_string(),
            dir.path().join("cache").display().to_string(),
        ),
        ("COMPOSER_PROXY_LOG_LEVEL".to_string(), "trace".to_string()),
    ];
    let process = blocking(|| {
        ProxyProcess::start_with_args(&["--config", file.to_str().expect("utf-8")], &env)
    });
    let mut seen = String::new();
    let project = ComposerProject::new(
        &process.url,
        &[("magento/product-community-edition", "2.4.7")],
    );
    seen.push_str(&blocking(|| project.run_ok(&["install", "--no-progress"])));
    assert_eq!(
        fetch(&mut seen, &process.url, "/p2/nobody/none.json").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch(
            &mut seen,
            &process.url,
            &format!("/{AGENCY}/dists/{EXTENSION}/00000000000000000000000000000000.zip")
        )
        .await,
        StatusCode::NOT_FOUND
    );
    s.front.disable(AGENCY);
    // A fresh package file of the agency's is refused; its archive too.
    let fresh = ComposerProject::new(&process.url, &[(EXTENSION, "*")]);
    fresh.fresh_cache();
    seen.push_str(&String::from_utf8_lossy(
        &blocking(|| fresh.run(&["update", "--no-progress"])).stderr,
    ));
    for path in [
        format!("/p2/{EXTENSION}.json"),
        "/readyz".into(),
        "/metrics".into(),
    ] {
        fetch(&mut seen, &process.url, &path).await;
    }
    for args in [&["check"][..], &["check", "--json"][..]] {
        let (_, stdout, stderr) = command(&s.toml, args).await;
        seen.push_str(&stdout);
        seen.push_str(&stderr);
    }
    seen.push_str(&process.log_text());

    let accounts = [account(AGENCY, 'a', &[]), account(CLIENT, 'c', &[])];
    // Positive control: both key pairs really went to the repository.
    let used: Vec<_> = s
        .front
        .requests()
        .into_iter()
        .filter_map(|r| r.account)
        .collect();
    assert!(used.contains(&AGENCY) && used.contains(&CLIENT));
    assert!(seen.contains("key_rejected"), "the rejection was logged");
    for (what, needle) in account_needles(&accounts) {
        assert!(
            !seen.contains(&needle),
            "{what} appears in the proxy's output"
        );
    }
}

/// GETs `path` of the proxy at `url` and adds everything of the answer to `seen`.
async fn fetch(seen: &mut String, url: &str, path: &str) -> StatusCode {
    let reply = get(&format!("{url}{path}")).await;
    seen.push_str(&format!("{path} {} {:?} ", reply.status, reply.headers));
    seen.push_str(&String::from_utf8_lossy(&reply.body));
    reply.status
}

/// Issue 20: the accounts beside a vendor repository and a packagist-like upstream, in the
/// order of the black-box probe that found one rejected key stopping every install.
pub(crate) struct Mixed {
    pub(crate) catalogue: Arc<Catalogue>,
    pub(crate) front: AccountsMock,
    pub(crate) base: MockUpstream,
    pub(crate) others: support::upstreams::Upstreams,
    pub(crate) toml: String,
}

impl Mixed {
    /// Every locked package is installed byte for byte from its owner's catalogue; returns
    /// the names.
    pub(crate) fn assert_installed(&self, project: &ComposerProject) -> Vec<String> {
        let catalogues = [
            &self.catalogue,
            &self.others.hyva.catalogue,
            &self.others.packagist.catalogue,
        ];
        let lock = project.lock();
        let mut names = Vec::new();
        for package in lock["packages"].as_array().expect("locked packages") {
            let name = package["name"].as_str().expect("name");
            let version = package["version"].as_str().expect("version");
            let owner = catalogues
                .iter()
                .find(|c| c.package(name).is_some())
                .unwrap_or_else(|| panic!("no catalogue has {name}"));
            assert_installed_matches(project, owner, name, version);
            names.push(name.to_string());
        }
        names
    }
}

pub(crate) async fn mixed() -> Mixed {
    let Setup {
        catalogue,
        toml,
        front,
        _base,
        proxy,
    } = setup().await;
    proxy.stop().await;
    let others = support::upstreams::Upstreams::start(1).await;
    let toml = format!(
        "{toml}[[upstream]]\nname = \"hyva\"\nurl = \"{}\"\npublic_key = \"token\"\nprivate_key = \"{}\"\n\n\
         [[upstream]]\nname = \"packagist\"\nurl = \"{}\"\nallowed_hosts = [\"{}\"]\n",
        others.hyva.mock.repo_url(),
        support::upstreams::HYVA_LICENCE,
        others.packagist.mock.url(),
        others.dist_host(),
    );
    Mixed {
        catalogue,
        front,
        base: _base,
        others,
        toml,
    }
}

/// A project with names of every upstream: the shared Magento packages, the one only `keep`
/// lists, the vendor's theme (which needs packagist's `psr/log`) and a packagist library.
fn mixed_project(url: &str, keep_only: &str) -> ComposerProject {
    let mut require = SHARED.to_vec();
    require.extend([
        (keep_only, "*"),
        ("hyva-themes/magento2-default-theme", "^1.3"),
        ("laminas/laminas-stdlib", "^3.18"),
    ]);
    ComposerProject::new(url, &require)
}

/// The package only `rejected` lists answers 502 naming it: never a 404, and never
/// packagist's package of the same name (the extension is in both catalogues).
async fn assert_refused_naming(url: &str, package: &str, account: &str) {
    let reply = get(&format!("{url}/p2/{package}.json")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.body);
    let warning = reply.warning();
    assert!(warning.contains(&format!("\"{account}\"")), "{warning}");
}

/// Key pair `rejected` is cut off while the proxy runs. Installs that need nothing only it
/// lists keep working: through the same proxy, after a restart on its cache, and through a
/// proxy with an empty cache.
async fn installs_survive_a_rejected_account(rejected: &'static str, keep: &'static str) {
    let m = mixed().await;
    let only = |account: &str| {
        if account == AGENCY {
            EXTENSION
        } else {
            CLIENT_MODULE
        }
    };
    let cache = tempfile::tempdir().expect("cache dir");
    let proxy = TestProxy::start_with_file(&m.toml, listen_env(), Some(cache.path())).await;
    let warm = mixed_project(&proxy.url, only(keep));
    blocking(|| warm.run_ok(&["install", "--no-progress"]));
    let doomed = get(&format!("{}/p2/{}.json", proxy.url, only(rejected))).await;
    assert_eq!(doomed.status, StatusCode::OK);
    let dist = doomed.json()["packages"][only(rejected)][0]["dist"]["url"]
        .as_str()
        .expect("a dist URL")
        .to_string();
    m.front.disable(rejected);
    // The proxy learns of the rejection when it next uses the key pair: here, for an archive
    // only that account may download.
    let refused = get(&dist).await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_GATEWAY,
        "{:?}",
        refused.body
    );

    for _ in 0..2 {
        let project = mixed_project(&proxy.url, only(keep));
        blocking(|| project.run_ok(&["install", "--no-progress"]));
        let names = m.assert_installed(&project);
        for needed in [only(keep), "psr/log", "hyva-themes/magento2-theme-module"] {
            assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
        }
    }
    assert_refused_naming(&proxy.url, only(rejected), rejected).await;
    let ready = get(&format!("{}/readyz", proxy.url)).await.json();
    let reason = ready["upstreams"][rejected]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("only it lists answer 502"), "{ready}");
    assert!(reason.contains(only(rejected)), "{ready}");
    proxy.stop().await;

    // A restart on the same cache: the rejected account's listing comes from disk.
    let proxy = TestProxy::start_with_file(&m.toml, listen_env(), Some(cache.path())).await;
    let project = mixed_project(&proxy.url, only(keep));
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    assert_refused_naming(&proxy.url, only(rejected), rejected).await;
    proxy.stop().await;

    // An empty cache: the rejected account was never seen. What the others have installs, and
    // ops are told what cannot be told apart.
    let proxy = TestProxy::start_with_file(&m.toml, listen_env(), None).await;
    let project = mixed_project(&proxy.url, only(keep));
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    let ready = get(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(ready.status, StatusCode::OK);
    let ready = ready.json();
    let reason = ready["upstreams"][rejected]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("never seen"), "{ready}");
    assert!(
        ready["degraded"]
            .as_str()
            .unwrap_or_default()
            .contains(rejected),
        "{ready}"
    );
    if rejected == CLIENT {
        // Its module is under `magento/`, a vendor the agency lists: still never a lower
        // repository's, though nobody can say whether the client has it.
        let reply = get(&format!("{}/p2/{CLIENT_MODULE}.json", proxy.url)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.body);
    }

    // The key is reinstated: the account is back without a restart, its package with it.
    m.front.enable(rejected);
    let url = format!("{}/p2/{}.json", proxy.url, only(rejected));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let reply = get(&url).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rejected} never came back: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let project = mixed_project(&proxy.url, only(rejected));
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_first_account_stops_no_install_that_does_not_need_it() {
    installs_survive_a_rejected_account(AGENCY, CLIENT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_second_account_stops_no_install_that_does_not_need_it() {
    installs_survive_a_rejected_account(CLIENT, AGENCY).await;
}
