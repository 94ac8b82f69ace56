//! A mock of api.github.com's zipball endpoint: it redirects to a codeload host (set once that
//! host is known), counts every request and the Authorization it carried, and behaves like the
//! real API's limit for unauthenticated clients: 60, then 403 with `X-RateLimit-Remaining: 0`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What GitHub allows a client without a token in an hour.
pub const UNAUTHENTICATED_LIMIT: usize = 60;

/// One request the API mock received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    codeload: Mutex<Option<String>>,
    token: Mutex<Option<String>>,
    requests: Mutex<Vec<ApiRequest>>,
    /// Every client's allowance is used up, token or not.
    exhausted: AtomicBool,
    /// Before every answer: a far-away API, as the other mocks' `set_delay`.
    delay: Mutex<Duration>,
}

pub struct GitHubApiMock {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl GitHubApiMock {
    /// Binds 127.0.0.1:0. Zipballs redirect to the codeload host given with
    /// [`GitHubApiMock::set_codeload`], and `token` (if any) is the one it accepts.
    pub async fn start(token: Option<&str>) -> GitHubApiMock {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the GitHub API mock");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(State::default());
        *state.token.lock().unwrap_or_else(|e| e.into_inner()) = token.map(str::to_string);
        let server = super::serve::spawn(listener, state.clone(), |state, request| async move {
            handle(&state, &request)
        });
        GitHubApiMock {
            addr,
            state,
            server,
        }
    }

    /// "http://127.0.0.1:PORT": what `github_api_url` is set to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_codeload(&self, url: &str) {
        *self
            .state
            .codeload
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(url.trim_end_matches('/').to_string());
    }

    /// Delays every answer from now on by `delay`.
    #[allow(dead_code)] // Only the benchmark's mock (examples/mock_upstream.rs) uses it.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// From now on every request gets the rate-limit answer, as when a token's 5,000 an hour
    /// are used up.
    pub fn exhaust(&self) {
        self.state.exhausted.store(true, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for GitHubApiMock {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn handle(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let unauthenticated_before = {
        let mut requests = state.requests.lock().unwrap_or_else(|e| e.into_inner());
        let before = requests
            .iter()
            .filter(|r| r.authorization.is_none())
            .count();
        requests.push(ApiRequest {
            path: path.clone(),
            authorization: authorization.clone(),
        });
        before
    };
    let expected = state
        .token
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|t| format!("token {t}"));
    let reply = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
        *response.status_mut() = status;
        response
    };
    let exhausted = state.exhausted.load(Ordering::SeqCst);
    match &authorization {
        _ if exhausted => return rate_limited(),
        None if unauthenticated_before >= UNAUTHENTICATED_LIMIT => return rate_limited(),
        None => {}
        Some(given) if Some(given) == expected.as_ref() => {}
        Some(_) => return reply(StatusCode::UNAUTHORIZED),
    }
    if path == "/rate_limit" {
        // As GitHub: free of charge, and telling the allowance of whoever asks.
        let mut response = reply(StatusCode::OK);
        let limit = if authorization.is_some() {
            "5000"
        } else {
            "60"
        };
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", limit.parse().expect("header"));
        headers.insert("x-ratelimit-remaining", limit.parse().expect("header"));
        return response;
    }
    // /repos/OWNER/REPO/zipball/REF → codeload's /OWNER/REPO/legacy.zip/REF
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let codeload = state
        .codeload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match (parts.as_slice(), codeload) {
        (["repos", owner, repo, "zipball", reference], Some(codeload)) => {
            let mut response = reply(StatusCode::FOUND);
            let location = format!("{codeload}/{owner}/{repo}/legacy.zip/{reference}");
            response
                .headers_mut()
                .insert(header::LOCATION, location.parse().expect("location"));
            response
        }
        _ => reply(StatusCode::NOT_FOUND),
    }
}

/// GitHub's answer once the hour's allowance is used up.
fn rate_limited() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"message":"API rate limit exceeded"}"#,
    )));
    *response.status_mut() = StatusCode::FORBIDDEN;
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", "60".parse().expect("header"));
    headers.insert("x-ratelimit-remaining", "0".parse().expect("header"));
    headers.insert("retry-after", "1800".parse().expect("header"));
    response
}
