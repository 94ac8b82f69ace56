//! Issue 21, "who took what": the usage record. The accounts' `mixed()` set-up with a view per
//! client and a token bound to each; the real Composer client installs a project through each
//! view, and `composer-proxy usage --json` (the real binary) lists exactly the archives each
//! token downloaded, with version, view and the account that served them; after a restart on
//! the same cache directory the old records are still there beside the new. Two replicas that
//! share a bucket (moto's S3 server) each record their own downloads, and the command run with
//! either replica's settings lists both.

use crate::accounts::{mixed, Mixed, AGENCY, CLIENT, CLIENT_MODULE, EXTENSION, SHARED};
use crate::support;
use crate::support::blocking;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::bucket::{replica_env, Moto, PREFIX};
use support::catalogue::Catalogue;
use support::composer::ComposerProject;
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::{created_secret, ProxyProcess};
use support::proxy::{dist_url, get, listen_env};

const THEME: (&str, &str) = ("hyva-themes/magento2-default-theme", "^1.3");
/// Bound of every wait for the record to show a download (it is written within 5 s).
const WAIT: Duration = Duration::from_secs(30);

/// `composer-proxy [--config FILE] <args>` with exactly `env`: (exit status, stdout, stderr).
fn command(config: Option<&Path>, env: &[(String, String)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer-proxy"));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

/// One grouped row as the identity the tests compare: package, version, view, token,
/// upstream.
pub(crate) type Key = (String, String, Option<String>, Option<String>, String);

fn key_of(row: &Value) -> Key {
    let text = |field: &str| row[field].as_str().map(str::to_string);
    (
        text("package").expect("package"),
        text("version").expect("version"),
        text("view"),
        text("token"),
        text("upstream").expect("upstream"),
    )
}

/// `usage --json` with `args`, polled (bounded) until `done` holds for its rows.
fn usage_rows(
    config: Option<&Path>,
    env: &[(String, String)],
    args: &[&str],
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut all = vec!["usage", "--json"];
    all.extend(args);
    loop {
        let (ok, out) = command(config, env, &all);
        assert!(ok, "usage failed: {out}");
        let rows: Vec<Value> = serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("usage --json is JSON ({e}): {out}"))
            .as_array()
            .expect("a list of rows")
            .clone();
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "the record never showed what was expected: {rows:#?}"
        );
        // The record is a file another process writes: poll it, bounded by the deadline.
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) struct Views {
    pub(crate) m: Mixed,
    pub(crate) config: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) tokens: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl Views {
    pub(crate) fn start(&self) -> ProxyProcess {
        let config = self.config.to_str().expect("utf-8");
        blocking(|| ProxyProcess::start_with_args(&["--config", config], &self.env))
    }

    pub(crate) fn secret(&self, name: &str) -> &str {
        &self
            .tokens
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a token of that name")
            .1
    }

    /// Installs `own` (and the shared packages and the theme) through `view` with `token`;
    /// returns what the record must then hold for it.
    pub(crate) fn install(
        &self,
        proxy: &ProxyProcess,
        view: &str,
        token: &str,
        own: &str,
    ) -> BTreeSet<Key> {
        let host = proxy.url.trim_start_matches("http://");
        let mut require = SHARED.to_vec();
        require.extend([(own, "*"), THEME]);
        let project = ComposerProject::new(&format!("{}/{view}", proxy.url), &require)
            .with_http_basic(host, token, self.secret(token));
        blocking(|| project.run_ok(&["install", "--no-progress"]));
        self.m.assert_installed(&project);
        let account = if view == "acme" { AGENCY } else { CLIENT };
        let lock = project.lock();
        lock["packages"]
            .as_array()
            .expect("locked packages")
            .iter()
            .filter(|p| p.get("dist").is_some())
            .map(|p| {
                let name = p["name"].as_str().expect("name").to_string();
                // The owner among the upstreams, in their order; a view's Magento packages
                // come with the view's own account.
                let upstream = if self.m.catalogue.package(&name).is_some() {
                    account
                } else if self.m.others.hyva.catalogue.package(&name).is_some() {
                    "hyva"
                } else {
                    "packagist"
                };
                (
                    name,
                    p["version"].as_str().expect("version").to_string(),
                    Some(view.to_string()),
                    Some(token.to_string()),
                    upstream.to_string(),
                )
            })
            .collect()
    }
}

/// `mixed()` with a view per client and a token bound to each, the binary's cache in a
/// directory of its own.
pub(crate) async fn views() -> Views {
    let m = mixed().await;
    let toml = format!(
        "{}\n[[view]]\nname = \"acme\"\nupstreams = [\"{AGENCY}\", \"hyva\", \"packagist\"]\n\n\
         [[view]]\nname = \"globex\"\nupstreams = [\"{CLIENT}\", \"hyva\", \"packagist\"]\n",
        m.toml
    );
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("composer-proxy.toml");
    std::fs::write(&config, &toml).expect("config");
    let mut env = listen_env();
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        dir.path().join("cache").display().to_string(),
    ));
    let mut tokens = Vec::new();
    for (name, view) in [("acme-ci", "acme"), ("globex-ci", "globex")] {
        let args = ["tokens", "create", "--name", name, "--view", view];
        let (ok, out) = command(Some(&config), &env, &args);
        assert!(ok, "{out}");
        tokens.push((name, created_secret(&out)));
    }
    Views {
        m,
        config,
        env,
        tokens,
        _dir: dir,
    }
}

fn counts(rows: &[Value]) -> Vec<(Key, u64)> {
    rows.iter()
        .map(|r| (key_of(r), r["count"].as_u64().expect("count")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_s_downloads_are_listed_and_survive_a_restart() {
    let s = views().await;
    let mut proxy = s.start();
    let acme = s.install(&proxy, "acme", "acme-ci", EXTENSION);
    let globex = s.install(&proxy, "globex", "globex-ci", CLIENT_MODULE);
    assert!(acme.iter().any(|k| k.0 == EXTENSION && k.4 == AGENCY));
    assert!(globex.iter().any(|k| k.0 == CLIENT_MODULE && k.4 == CLIENT));
    let expected: BTreeSet<Key> = acme.union(&globex).cloned().collect();
    // Metadata and HEADs are not downloads; the merged root needs no token and has no view.
    let merged = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(merged.status, StatusCode::OK);

    let config = Some(s.config.as_path());
    let rows = blocking(|| usage_rows(config, &s.env, &[], |rows| rows.len() >= expected.len()));
    let listed: BTreeSet<Key> = rows.iter().map(key_of).collect();
    assert_eq!(listed, expected, "{rows:#?}");
    assert!(rows.iter().all(|r| r["count"] == 1), "{rows:#?}");
    assert!(rows
        .iter()
        .all(|r| r["last"].as_str().is_some_and(|t| t.ends_with('Z'))));

    // The filters: one token's downloads, one package by a pattern, a time.
    let (ok, out) = command(config, &s.env, &["usage", "--json", "--token", "globex-ci"]);
    assert!(ok, "{out}");
    let only: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    let only: BTreeSet<Key> = only.iter().map(key_of).collect();
    assert_eq!(only, globex);
    let (ok, table) = command(
        config,
        &s.env,
        &["usage", "--package", "vendorx/*", "--since", "30d"],
    );
    assert!(ok, "{table}");
    assert!(table.starts_with("PACKAGE"), "{table}");
    let lines: Vec<&str> = table.lines().filter(|l| l.contains(EXTENSION)).collect();
    assert_eq!(lines.len(), 1, "{table}");
    assert!(
        lines[0].contains("acme-ci") && lines[0].contains(AGENCY),
        "{table}"
    );
    let (ok, out) = command(
        config,
        &s.env,
        &["usage", "--json", "--since", "2000-01-01"],
    );
    assert!(ok && out.contains(EXTENSION), "{out}");
    let (ok, out) = command(config, &s.env, &["usage", "--since", "soon"]);
    assert!(!ok && out.contains("--since"), "{out}");

    // A restart on the same cache directory appends to the record.
    proxy.signal("TERM");
    assert!(proxy.wait().success());
    let proxy = s.start();
    let again = s.install(&proxy, "acme", "acme-ci", EXTENSION);
    assert_eq!(again, acme, "the same project downloads the same archives");
    let rows = blocking(|| {
        usage_rows(config, &s.env, &[], |rows| {
            rows.iter().filter(|r| r["count"] == 2).count() >= acme.len()
        })
    });
    let mut expected_counts: Vec<(Key, u64)> = expected
        .iter()
        .map(|k| (k.clone(), if acme.contains(k) { 2 } else { 1 }))
        .collect();
    expected_counts.sort();
    let mut listed = counts(&rows);
    listed.sort();
    assert_eq!(listed, expected_counts);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_bucket_each_record_and_either_lists_both() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::P2, catalogue.clone())).await;
    let moto = Moto::start();
    let caches: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("cache"))
        .collect();
    let envs: Vec<_> = caches
        .iter()
        .map(|c| replica_env(&mock, &moto.endpoint(), c.path()))
        .collect();
    let replicas: Vec<_> = blocking(|| envs.iter().map(|e| ProxyProcess::start(e)).collect());

    // Each replica serves one package's archive.
    let mut expected = BTreeSet::new();
    for (replica, name) in replicas
        .iter()
        .zip(["magento/module-m001", "magento/framework"])
    {
        let version = catalogue
            .package(name)
            .expect("in the catalogue")
            .versions
            .iter()
            .find(|v| v.archive.is_some() && !v.is_dev())
            .expect("a release")
            .version
            .clone();
        let url = dist_url(&replica.url, name, &version).await;
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::OK);
        expected.insert((name.to_string(), version, None, None, "default".to_string()));
    }

    // Either replica's settings (its own cache directory, the shared bucket) list both, each
    // once: a replica's own segment and its copy in the bucket are one record.
    for env in &envs {
        let rows = blocking(|| usage_rows(None, env, &[], |rows| rows.len() >= 2));
        let listed: BTreeSet<Key> = rows.iter().map(key_of).collect();
        assert_eq!(listed, expected, "{rows:#?}");
        assert!(rows.iter().all(|r| r["count"] == 1), "{rows:#?}");
    }
    // One folder per replica in the bucket.
    let folders: BTreeSet<String> = moto
        .list("usage")
        .await
        .into_iter()
        .filter_map(|(key, _)| {
            let below = key.strip_prefix(&format!("{PREFIX}/usage/"))?;
            below
                .split_once('/')
                .map(|(replica, _)| replica.to_string())
        })
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    // Either replica's status page sees both, and both downloads (the record is shared).
    for replica in &replicas {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = get(&format!("{}/status.json", replica.url)).await.json();
            let seen = status["storage"]["bucket"]["replicas"]
                .as_array()
                .map_or(0, Vec::len);
            if seen == 2 && status["downloads"]["totals"][0] == 2 {
                assert_eq!(status["storage"]["bucket"]["reachable"], true);
                break;
            }
            assert!(Instant::now() < deadline, "{status:#}");
            // Another process writes the bucket: poll, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(replicas);
}
