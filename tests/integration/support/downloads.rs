//! A mock of Magento's legacy release-download endpoint (`[downloads]`), below
//! `/products/downloads/` as the real one: HTTP Basic with user = MAGEID and password = the
//! download access token (401 otherwise), `info/help`, `info/files`, `info/versions`,
//! `info/filter/…`, `info/json` (category → list of `{"file_name", "md5", "size"}`, old files
//! without md5) and `file/<name>` with a Content-Length. It counts requests by path and keeps
//! the Authorization each carried; switches reject every token, fail with 500, and delay
//! answers. `info/help` quotes the credentials it was called with in a usage line: the worst
//! case of an answer that repeats a secret, which the proxy must not pass on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use md5::{Digest, Md5};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Where the endpoint's paths start, as on www.magentocommerce.com.
pub const PREFIX: &str = "/products/downloads/";

/// What `info/json` says of a file's md5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The md5 of the bytes served.
    Md5,
    /// An md5 the bytes served do not have.
    WrongMd5,
    /// No md5, as for old files.
    NoMd5,
}

/// One release file: its name, bytes and listing.
#[derive(Clone, Debug)]
pub struct ReleaseFile {
    pub name: String,
    pub bytes: Bytes,
    pub listed: Listed,
}

impl ReleaseFile {
    /// A file of `len` bytes of a pattern that depends on the name.
    pub fn new(name: &str, len: usize, listed: Listed) -> ReleaseFile {
        let seed = name
            .bytes()
            .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
        let bytes: Vec<u8> = (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect();
        ReleaseFile {
            name: name.into(),
            bytes: Bytes::from(bytes),
            listed,
        }
    }

    pub fn md5(&self) -> String {
        hex::encode(Md5::digest(&self.bytes))
    }
}

struct State {
    mage_id: String,
    token: String,
    files: Vec<ReleaseFile>,
    counts: Mutex<HashMap<String, usize>>,
    authorizations: Mutex<Vec<Option<String>>>,
    reject: AtomicBool,
    failing: AtomicBool,
    delay_ms: AtomicU64,
}

pub struct DownloadsMock {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl DownloadsMock {
    /// Binds 127.0.0.1:0, accepting exactly `mage_id` and `token`.
    pub async fn start(mage_id: &str, token: &str, files: Vec<ReleaseFile>) -> DownloadsMock {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the downloads mock");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(State {
            mage_id: mage_id.into(),
            token: token.into(),
            files,
            counts: Mutex::default(),
            authorizations: Mutex::default(),
            reject: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
        });
        let server = super::serve::spawn(listener, state.clone(), |state, request| async move {
            handle(&state, &request).await
        });
        DownloadsMock {
            addr,
            state,
            server,
        }
    }

    /// What `[downloads] url` is set to.
    pub fn url(&self) -> String {
        format!("http://{}{PREFIX}", self.addr)
    }

    /// Requests for `path` below the prefix (e.g. `file/x.zip`, `info/json`).
    pub fn count(&self, path: &str) -> usize {
        let counts = self.state.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(path).copied().unwrap_or(0)
    }

    /// The Authorization header of every request, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        let list = self.state.authorizations.lock();
        list.unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers 401 to every request, as when the token was replaced by a new one.
    pub fn set_reject(&self, on: bool) {
        self.state.reject.store(on, Ordering::SeqCst);
    }

    /// Answers 500 to every request.
    pub fn set_failing(&self, on: bool) {
        self.state.failing.store(on, Ordering::SeqCst);
    }

    /// Waits this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The `info/json` document it serves.
    pub fn listing(&self) -> serde_json::Value {
        listing(&self.state.files)
    }
}

impl Drop for DownloadsMock {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn listing(files: &[ReleaseFile]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let mut entry = serde_json::json!({"file_name": f.name, "size": f.bytes.len()});
            match f.listed {
                Listed::Md5 => entry["md5"] = f.md5().into(),
                Listed::WrongMd5 => entry["md5"] = "0".repeat(32).into(),
                Listed::NoMd5 => {}
            }
            entry
        })
        .collect();
    serde_json::json!({ "ce-full": entries })
}

async fn handle(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let below = path.strip_prefix(PREFIX).unwrap_or(path).to_string();
    *state
        .counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(below.clone())
        .or_default() += 1;
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .authorizations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(authorization.clone());
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", state.mage_id, state.token))
    );
    if state.reject.load(Ordering::SeqCst) || authorization.as_deref() != Some(&expected) {
        return reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "Unauthorized".into(),
        );
    }
    if state.failing.load(Ordering::SeqCst) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "".into());
    }
    let names = || {
        let names: Vec<&str> = state.files.iter().map(|f| f.name.as_str()).collect();
        names.join("\n")
    };
    match below.split_once('/') {
        Some(("info", "help")) => {
            let usage = format!(
                "Usage: curl https://{}:{}@www.magentocommerce.com{PREFIX}file/NAME\n",
                state.mage_id, state.token
            );
            reply(StatusCode::OK, "text/plain", usage.into())
        }
        Some(("info", "files")) => reply(StatusCode::OK, "text/plain", names().into()),
        Some(("info", "versions")) => reply(StatusCode::OK, "text/plain", "2.4.6\n2.4.7\n".into()),
        Some(("info", "json")) => {
            let body = serde_json::to_vec(&listing(&state.files)).expect("json");
            reply(StatusCode::OK, "application/json", body.into())
        }
        Some(("info", filter)) if filter.starts_with("filter/") => {
            let word = filter
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .replace('*', "");
            let matching: Vec<&str> = state
                .files
                .iter()
                .map(|f| f.name.as_str())
                .filter(|n| n.contains(&word))
                .collect();
            reply(StatusCode::OK, "text/plain", matching.join("\n").into())
        }
        Some(("file", name)) => match state.files.iter().find(|f| f.name == name) {
            Some(file) => reply(
                StatusCode::OK,
                "application/octet-stream",
                file.bytes.clone(),
            ),
            None => reply(StatusCode::NOT_FOUND, "text/plain", "no such file".into()),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().expect("header"));
    response
}
