//! Issue 21, "Each client sees only what it is entitled to": `[[view]]` tables and client tokens
//! bound to them. Two Marketplace accounts whose listings differ (the agency's, with an
//! extension only it bought; a client's, with a module only the client bought), a vendor
//! repository and a packagist-like upstream that also serves the extension's name. One view per
//! client, one view without repo.magento.com, a token per view and an organisation-wide one.
//! The proxy runs as the real binary; the real Composer client installs through it.

use crate::accounts::{command, mixed, Mixed, AGENCY, CLIENT, CLIENT_MODULE, EXTENSION, SHARED};
use crate::support;
use crate::support::blocking;

use std::process::Command;

use base64::Engine as _;
use http::StatusCode;
use support::composer::ComposerProject;
use support::process::{created_secret, ProxyProcess};
use support::proxy::{get, get_with, listen_env};

const THEME: (&str, &str) = ("hyva-themes/magento2-default-theme", "^1.3");

struct Setup {
    m: Mixed,
    proxy: ProxyProcess,
    /// The `--config` file and what it holds.
    config: std::path::PathBuf,
    toml: String,
    _dir: tempfile::TempDir,
    /// Tokens by name: `acme-ci` (view acme), `globex-ci` (view globex), `ops` (everywhere).
    tokens: Vec<(&'static str, String)>,
}

impl Setup {
    fn token(&self, name: &str) -> &str {
        &self
            .tokens
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a token of that name")
            .1
    }

    fn bearer(&self, name: &str) -> String {
        format!("Bearer {}", self.token(name))
    }

    /// A project at `url` with `token` for the proxy's host in auth.json.
    fn project(&self, url: &str, token: &str, require: &[(&str, &str)]) -> ComposerProject {
        let host = self.proxy.url.trim_start_matches("http://").to_string();
        ComposerProject::new(url, require).with_http_basic(&host, token, self.token(token))
    }
}

/// The accounts' `mixed()` set-up with three views, as the binary with a trace log.
async fn setup() -> Setup {
    let m = mixed().await;
    let toml = format!(
        "{}\n[[view]]\nname = \"acme\"\nupstreams = [\"{AGENCY}\", \"hyva\", \"packagist\"]\n\n\
         [[view]]\nname = \"globex\"\nupstreams = [\"{CLIENT}\", \"hyva\", \"packagist\"]\n\n\
         [[view]]\nname = \"oss\"\nupstreams = [\"hyva\", \"packagist\"]\n",
        m.toml
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("composer-proxy.toml");
    std::fs::write(&file, &toml).expect("config");
    let mut env = listen_env();
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        dir.path().join("cache").display().to_string(),
    ));
    env.push(("COMPOSER_PROXY_LOG_LEVEL".into(), "trace".into()));
    let config = file.to_str().expect("utf-8").to_string();
    let mut tokens = Vec::new();
    for (name, views) in [
        ("acme-ci", &["--view", "acme"][..]),
        ("globex-ci", &["--view", "globex"][..]),
        ("ops", &[][..]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
            .args(["--config", &config, "tokens", "create", "--name", name])
            .args(views)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("tokens create runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        tokens.push((name, created_secret(&stdout)));
    }
    let proxy = blocking(|| ProxyProcess::start_with_args(&["--config", &config], &env));
    Setup {
        m,
        proxy,
        config: file,
        toml,
        _dir: dir,
        tokens,
    }
}

fn requirements(own: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut require = SHARED.to_vec();
    require.extend([(own, "*"), THEME]);
    require
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_installs_its_own_and_nothing_of_the_other() {
    let s = setup().await;
    let url = |view: &str| format!("{}/{view}", s.proxy.url);

    // Each view's token installs its client's project, byte for byte.
    let acme = s.project(&url("acme"), "acme-ci", &requirements(EXTENSION));
    blocking(|| acme.run_ok(&["install", "--no-progress"]));
    let names = s.m.assert_installed(&acme);
    assert!(names.iter().any(|n| n == EXTENSION), "{names:?}");
    let globex = s.project(&url("globex"), "globex-ci", &requirements(CLIENT_MODULE));
    blocking(|| globex.run_ok(&["install", "--no-progress"]));
    let names = s.m.assert_installed(&globex);
    assert!(names.iter().any(|n| n == CLIENT_MODULE), "{names:?}");
    // The shared packages came with the client's own account for the client's view.
    assert!(!s.m.front.archives_by(CLIENT).is_empty());

    // The other client's extension is not in a view: 404 for its metadata, and Composer
    // cannot find it.
    for (view, token, other) in [
        ("globex", "globex-ci", EXTENSION),
        ("acme", "acme-ci", CLIENT_MODULE),
    ] {
        let reply = get_with(
            &format!("{}/p2/{other}.json", url(view)),
            &[("authorization", &s.bearer(token))],
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{view}: {:?}",
            reply.body
        );
        let root = get_with(
            &format!("{}/packages.json", url(view)),
            &[("authorization", &s.bearer(token))],
        )
        .await;
        assert_eq!(root.status, StatusCode::OK);
        let available = root.json()["available-packages"].clone();
        assert!(
            available
                .as_array()
                .is_none_or(|a| !a.iter().any(|n| n == other)),
            "{view} offers {other}: {available}"
        );
        let project = s.project(&url(view), token, &[(other, "*")]);
        let run = blocking(|| project.run(&["install", "--no-progress"]));
        assert!(!run.status.success(), "{view} installed {other}");
    }

    // Its archive URL, taken from the other view's lock file, is refused.
    let lock = acme.lock();
    let dist = lock["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == EXTENSION))
        .and_then(|p| p["dist"]["url"].as_str())
        .expect("the extension's dist URL")
        .to_string();
    let stolen = get_with(&dist, &[("authorization", &s.bearer("globex-ci"))]).await;
    assert_eq!(stolen.status, StatusCode::FORBIDDEN, "{:?}", stolen.body);
    assert!(
        stolen.warning().contains(&url("globex")),
        "{}",
        stolen.warning()
    );
    let own = get_with(&dist, &[("authorization", &s.bearer("acme-ci"))]).await;
    assert_eq!(own.status, StatusCode::OK);

    // A bound token on the merged root or on another view: 403 with a warning Composer
    // prints, naming the URL it may use.
    for target in [s.proxy.url.clone(), url("globex")] {
        let reply = get_with(
            &format!("{target}/packages.json"),
            &[("authorization", &s.bearer("acme-ci"))],
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{target}");
        assert!(
            reply.warning().contains(&url("acme")),
            "{}",
            reply.warning()
        );
    }
    let wrong = s.project(&s.proxy.url, "acme-ci", &[SHARED[0]]);
    let run = blocking(|| wrong.run(&["install", "--no-progress"]));
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("acme-ci"),
        "Composer shows the warning: {stderr}"
    );

    // A view's URL without a token: 401, though require_tokens is off. The merged root
    // needs none.
    let bare = get(&format!("{}/packages.json", url("acme"))).await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&format!("{}/packages.json", s.proxy.url)).await.status,
        StatusCode::OK
    );

    // The organisation-wide token works everywhere.
    for target in [s.proxy.url.clone(), url("acme"), url("globex")] {
        let reply = get_with(
            &format!("{target}/packages.json"),
            &[("authorization", &s.bearer("ops"))],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{target}");
    }
    let everything = s.project(
        &s.proxy.url,
        "ops",
        &[(EXTENSION, "*"), (CLIENT_MODULE, "*")],
    );
    blocking(|| everything.run_ok(&["install", "--no-progress"]));

    // The log names the token and the view of each request and refusal.
    let log = s.proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"token\":\"acme-ci\"") && l.contains("\"view\":\"acme\"")),
        "no access line with token and view"
    );
    assert!(log.contains("outside_views"), "the refusal is logged");
    let metrics = get(&format!("{}/metrics", s.proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("composer_proxy_view_requests_total{view=\"acme\",status=\"2xx\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_never_leak_through_validators_ownership_or_logs() {
    let s = setup().await;
    let url = |view: &str| format!("{}/{view}", s.proxy.url);

    // A view without repo.magento.com: the extension repo.magento.com owns is not in it,
    // though packagist serves a package of that name.
    let oss = get_with(
        &format!("{}/p2/{EXTENSION}.json", url("oss")),
        &[("authorization", &s.bearer("ops"))],
    )
    .await;
    assert_eq!(oss.status, StatusCode::NOT_FOUND, "{:?}", oss.body);
    let merged = get(&format!("{}/p2/{EXTENSION}.json", s.proxy.url)).await;
    assert_eq!(merged.status, StatusCode::OK);
    assert!(
        s.m.others.packagist.catalogue.package(EXTENSION).is_some(),
        "the fixture: packagist has the name too"
    );
    // Its own names are there.
    let theme = get_with(
        &format!("{}/p2/{}.json", url("oss"), THEME.0),
        &[("authorization", &s.bearer("ops"))],
    )
    .await;
    assert_eq!(theme.status, StatusCode::OK);

    // Validators are per view, and access comes before any 304.
    let framework = SHARED[0].0;
    let in_acme = get_with(
        &format!("{}/p2/{framework}.json", url("acme")),
        &[("authorization", &s.bearer("acme-ci"))],
    )
    .await;
    assert_eq!(in_acme.status, StatusCode::OK);
    let etag = in_acme.headers["etag"].to_str().expect("etag").to_string();
    let modified = in_acme.headers["last-modified"]
        .to_str()
        .expect("last-modified")
        .to_string();
    let again = get_with(
        &format!("{}/p2/{framework}.json", url("acme")),
        &[
            ("authorization", &s.bearer("acme-ci")),
            ("if-none-match", &etag),
        ],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED, "its own validator");
    for (token, expected) in [
        ("acme-ci", StatusCode::FORBIDDEN),
        ("globex-ci", StatusCode::OK),
    ] {
        for validator in [("if-none-match", &etag), ("if-modified-since", &modified)] {
            let bearer = s.bearer(token);
            let reply = get_with(
                &format!("{}/p2/{framework}.json", url("globex")),
                &[
                    ("authorization", &bearer),
                    (validator.0, validator.1.as_str()),
                ],
            )
            .await;
            if validator.0 == "if-modified-since" && token == "globex-ci" {
                // The time alone cannot tell views apart; only access and the ETag can.
                assert_ne!(reply.status, StatusCode::FORBIDDEN);
                continue;
            }
            assert_eq!(reply.status, expected, "{token} with {validator:?}");
        }
    }

    // A view added to the file applies on a reload, without a restart.
    let initech = format!("{}/packages.json", url("initech"));
    let ops = s.bearer("ops");
    assert_eq!(
        get_with(&initech, &[("authorization", &ops)]).await.status,
        StatusCode::NOT_FOUND
    );
    let toml = format!(
        "{}\n[[view]]\nname = \"initech\"\nupstreams = [\"hyva\"]\n",
        s.toml
    );
    std::fs::write(&s.config, toml).expect("config");
    s.proxy.signal("HUP");
    let changed = blocking(|| {
        s.proxy
            .wait_for_log(|line| line.to_string().contains("views_changed"))
    });
    assert!(changed.is_some(), "the reload was never logged");
    let reply = get_with(&initech, &[("authorization", &ops)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let available = &reply.json()["available-packages"];
    assert_eq!(available.as_array().map(Vec::len), Some(2), "{available}");

    // Client tokens never reach an upstream and never appear in the log.
    let project = s.project(&url("acme"), "acme-ci", &requirements(EXTENSION));
    blocking(|| project.run_ok(&["install", "--no-progress"]));
    let log = s.proxy.log_text();
    let upstream_auth: Vec<String> = [&s.m.base, &s.m.others.hyva.mock, &s.m.others.packagist.mock]
        .iter()
        .flat_map(|mock| mock.requests())
        .filter_map(|r| r.authorization)
        .collect();
    assert!(s.m.front.requests().iter().all(|r| r.account.is_some()));
    for (name, secret) in &s.tokens {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"));
        for needle in [secret.as_str(), basic.as_str()] {
            assert!(!log.contains(needle), "token {name} in the log");
            assert!(
                upstream_auth.iter().all(|a| !a.contains(needle)),
                "token {name} sent upstream"
            );
        }
    }
    // Positive control: the tokens were used, and the log names them.
    assert!(log.contains("\"token\":\"acme-ci\""));
}

/// `check` reports each view: what it can install per account (repo.magento.com's two
/// accounts list different packages), what only one of its accounts provides, and packagist
/// as open-ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_each_view_can_install() {
    let m = mixed().await;
    let toml = format!(
        "{}\n[[view]]\nname = \"acme\"\nupstreams = [\"{AGENCY}\", \"hyva\", \"packagist\"]\n\n\
         [[view]]\nname = \"globex\"\nupstreams = [\"{CLIENT}\", \"hyva\", \"packagist\"]\n\n\
         [[view]]\nname = \"both\"\nupstreams = [\"{AGENCY}\", \"{CLIENT}\"]\n",
        m.toml
    );
    let (status, stdout, stderr) = command(&toml, &["check", "--json"]).await;
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let member = |view: &str, upstream: &str| {
        report["views"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == view))
            .and_then(|v| v["upstreams"].as_array())
            .and_then(|u| u.iter().find(|u| u["name"] == upstream))
            .cloned()
            .unwrap_or_else(|| panic!("{view}/{upstream} in {report}"))
    };
    let names = |value: &serde_json::Value, key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {value}"))
            .iter()
            .map(|n| n.as_str().expect("a name").to_string())
            .collect()
    };
    let shared = m.catalogue.packages.len() - 2;
    let agency = member("acme", AGENCY);
    let acme_names = names(&agency, "names");
    assert_eq!(acme_names.len(), shared + 1, "{agency}");
    assert!(
        acme_names.iter().any(|n| n == EXTENSION) && !acme_names.iter().any(|n| n == CLIENT_MODULE)
    );
    let client = member("globex", CLIENT);
    let globex_names = names(&client, "names");
    assert!(
        globex_names.iter().any(|n| n == CLIENT_MODULE)
            && !globex_names.iter().any(|n| n == EXTENSION)
    );
    // Alone in its view, an account provides all it brings; beside the other, only its own.
    assert_eq!(names(&agency, "only_this_account"), acme_names);
    assert_eq!(
        names(&member("both", AGENCY), "only_this_account"),
        vec![EXTENSION]
    );
    assert_eq!(
        names(&member("both", CLIENT), "only_this_account"),
        vec![CLIENT_MODULE]
    );
    assert_eq!(member("acme", "hyva")["packages"], 2);
    assert_eq!(member("globex", "packagist")["reach"], "open_ended");
    assert_eq!(
        member("globex", "packagist")["names"],
        serde_json::Value::Null
    );
    let both = report["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "both"))
        .expect("view both");
    assert_eq!(both["packages"], shared + 2);

    let (status, text, _) = command(&toml, &["check"]).await;
    assert_eq!(status, Some(0), "{text}");
    for line in [
        "view globex (/globex/)".to_string(),
        format!("    only this account provides 1 package: {EXTENSION}"),
        format!("    only this account provides 1 package: {CLIENT_MODULE}"),
        "any name it serves that no higher upstream owns".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} in {text}");
    }
}
