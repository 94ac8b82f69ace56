//! Starts the real proxy in-process on `127.0.0.1:0`, configured exactly as the binary would
//! be (through `Config::load` with `COMPOSER_PROXY_*` variables and, optionally, the text of a
//! `--config` TOML file), plus a small HTTP client for asserting on raw responses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use composer_proxy::config::{Config, Sources};
use composer_proxy::{AppState, Proxy};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::mock_upstream::{TEST_PRIVATE_KEY, TEST_PUBLIC_KEY};

pub struct TestProxy {
    pub url: String,
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub cache_dir: PathBuf,
    /// Keeps the cache directory alive when the proxy owns it.
    _cache: Option<TempDir>,
    /// Keeps the directory of the `--config` file alive, if there is one.
    _config: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Settings every test proxy gets: loopback, an ephemeral port, the mock's key pair.
pub fn base_env(upstream_url: &str) -> Vec<(String, String)> {
    vec![
        ("COMPOSER_PROXY_LISTEN".into(), "127.0.0.1:0".into()),
        ("COMPOSER_PROXY_UPSTREAM_URL".into(), upstream_url.into()),
        ("COMPOSER_PROXY_PUBLIC_KEY".into(), TEST_PUBLIC_KEY.into()),
        ("COMPOSER_PROXY_PRIVATE_KEY".into(), TEST_PRIVATE_KEY.into()),
    ]
}

/// A proxy's settings for the release-download endpoint at `url`.
pub fn downloads_env(url: &str, mage_id: &str, token: &str) -> Vec<(String, String)> {
    vec![
        ("COMPOSER_PROXY_DOWNLOADS_URL".into(), url.into()),
        ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID".into(), mage_id.into()),
        ("COMPOSER_PROXY_DOWNLOADS_TOKEN".into(), token.into()),
    ]
}

/// Loopback and an ephemeral port: the only settings a file-configured test proxy needs from
/// the environment.
pub fn listen_env() -> Vec<(String, String)> {
    vec![("COMPOSER_PROXY_LISTEN".into(), "127.0.0.1:0".into())]
}

impl TestProxy {
    /// A proxy with its own fresh cache directory in front of `upstream_url`.
    pub async fn start(upstream_url: &str) -> TestProxy {
        Self::start_with(base_env(upstream_url), None).await
    }

    /// A proxy with the given settings; `cache_dir` lets a test restart on the same cache.
    pub async fn start_with(env: Vec<(String, String)>, cache_dir: Option<&Path>) -> TestProxy {
        Self::start_sources(None, env, cache_dir).await
    }

    /// A proxy configured by the TOML text `config` (written to a `composer-proxy.toml` of
    /// its own and passed as `--config` would pass it) plus `env`; the cache directory as in
    /// `start_with`. `env` should hold at least `COMPOSER_PROXY_LISTEN` (see `listen_env`).
    pub async fn start_with_file(
        config: &str,
        env: Vec<(String, String)>,
        cache_dir: Option<&Path>,
    ) -> TestProxy {
        let dir = tempfile::tempdir().expect("config tempdir");
        let path = dir.path().join("composer-proxy.toml");
        std::fs::write(&path, config).expect("writing the config file");
        let mut proxy = Self::start_sources(Some((path, config.to_string())), env, cache_dir).await;
        proxy._config = Some(dir);
        proxy
    }

    async fn start_sources(
        file: Option<(PathBuf, String)>,
        mut env: Vec<(String, String)>,
        cache_dir: Option<&Path>,
    ) -> TestProxy {
        let (owned, dir) = match cache_dir {
            Some(dir) => (None, dir.to_path_buf()),
            None => {
                let tmp = tempfile::tempdir().expect("cache tempdir");
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        env.push((
            "COMPOSER_PROXY_CACHE_DIR".into(),
            dir.to_str().expect("utf-8 temp path").into(),
        ));
        let sources = Sources {
            file,
            env: env.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let config = Config::load(&sources)
            .unwrap_or_else(|e| panic!("the test configuration is invalid: {e}"));
        let proxy = Proxy::bind(&config).await.expect("proxy binds");
        let addr = proxy.local_addr();
        let url = proxy.public_url().to_string();
        let state = proxy.state.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        TestProxy {
            url,
            addr,
            state,
            cache_dir: dir,
            _cache: owned,
            _config: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits until the one upstream's rewritten Composer 1 chain is built.
    pub async fn wait_for_v1_chain(&self) {
        self.state
            .upstreams
            .only()
            .expect("one upstream")
            .metadata
            .wait_for_v1_chain()
            .await;
    }

    /// Shuts the proxy down and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Drops the proxy's run future without a shutdown, as a test's runtime ending does.
    pub async fn abandon(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn warning(&self) -> String {
        self.json()["warning"]
            .as_str()
            .expect("a warning field")
            .to_string()
    }
}

/// One request; the body is returned as received (no decompression).
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Full::new(body)).expect("request"))
        .await
        .expect("proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A form POST, as Composer sends the advisory API its package names.
pub async fn post_form(url: &str, form: &str) -> Reply {
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    request(Method::POST, url, &headers, Bytes::from(form.to_string())).await
}

pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[], Bytes::new()).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, Bytes::new()).await
}

/// One GET whose body may break off: the status and headers, and the body or why it failed.
pub async fn try_get(
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("proxy answers");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

/// Whether a GET of `url` ended as a whole 200: not when the answer was another status, its
/// body broke off, or the connection closed before any answer (an upstream cut short before
/// the proxy's first byte went out).
pub async fn whole_ok(url: &str) -> bool {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let Ok(response) = client.get(url.parse().expect("uri")).await else {
        return false;
    };
    response.status() == StatusCode::OK && response.into_body().collect().await.is_ok()
}

/// GETs `url`, expects a 200 and waits for its first non-empty chunk; returns the rest of the
/// body, for a test to see how it ends (a download the test is about to interrupt).
pub async fn after_first_chunk(url: &str) -> hyper::body::Incoming {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .get(url.parse().expect("uri"))
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first chunk")
        .expect("no error yet");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    body
}

/// The proxy's dist URL for `name` at `version`, from the p2 file it serves.
pub async fn dist_url(proxy_url: &str, name: &str, version: &str) -> String {
    let p2 = get(&format!("{proxy_url}/p2/{name}.json")).await;
    assert_eq!(p2.status, StatusCode::OK, "p2 file of {name}");
    let json = p2.json();
    let versions = json["packages"][name].as_array().expect("versions");
    let found = versions
        .iter()
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("{name} {version} in the p2 file"));
    found["dist"]["url"].as_str().expect("dist url").to_string()
}

/// Each of `bodies`, HTTP/2 responses whose stream window the client kept shut from
/// `started` on, ends in a reset rather than a complete body, within the proxy's
/// `client_send_timeout_secs` of 1 (at least 1 s, well under 15 s).
pub async fn assert_reset_after_a_second(
    bodies: Vec<hyper::body::Incoming>,
    started: std::time::Instant,
) {
    for mut body in bodies {
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame())
            .await
            .expect("the stream ends within the safety net");
        assert!(
            matches!(ended, Some(Err(_))),
            "reset, not a complete body: {ended:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(15),
        "{took:?}"
    );
}
