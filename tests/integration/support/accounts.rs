//! repo.magento.com as several Commerce Marketplace accounts see it: one front per set of
//! accounts, in front of a `MockUpstream` that holds every package. Each account's key pair
//! sees its own entitlements, listing by listing: `packages.json` names only its provider
//! listings, and package files and archives outside them answer 404, as repo.magento.com does
//! for a missing entitlement. An account can be disabled (401 with a JSON warning, as for a
//! revoked key or an unpaid invoice). Every request is recorded with the account it came from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::catalogue::Catalogue;
use super::mock_upstream::{php_json, MockUpstream, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY};
use super::proxy;

/// One Marketplace account: its key pair and the provider listings it is entitled to.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: &'static str,
    pub public_key: String,
    pub private_key: String,
    pub listings: Vec<&'static str>,
}

/// One request the front received: the account whose key it carried (None: no known key).
#[derive(Clone, Debug)]
pub struct AccountRequest {
    pub account: Option<&'static str>,
    pub path: String,
    pub status: u16,
}

struct State {
    /// The mock holding every package; set once it is started with the front's URL.
    base: Mutex<Option<String>>,
    accounts: Vec<Account>,
    disabled: Mutex<Vec<&'static str>>,
    /// Package name → its listing.
    listing_of: HashMap<String, &'static str>,
    /// Archive path → package name.
    archive_of: HashMap<String, String>,
    requests: Mutex<Vec<AccountRequest>>,
}

pub struct AccountsMock {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl AccountsMock {
    /// Binds 127.0.0.1:0 for the accounts of a repository holding `catalogue`. Requests are
    /// answered once [`AccountsMock::set_base`] names the mock behind it, started with
    /// `advertised_url` set to [`AccountsMock::url`] so its documents point here.
    pub async fn start(catalogue: &Catalogue, accounts: Vec<Account>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the accounts mock");
        let addr = listener.local_addr().expect("its address");
        let mut listing_of = HashMap::new();
        let mut archive_of = HashMap::new();
        for package in &catalogue.packages {
            listing_of.insert(package.name.clone(), package.listing);
            for v in &package.versions {
                archive_of.insert(
                    Catalogue::archive_path(&package.name, &v.version_normalized),
                    package.name.clone(),
                );
            }
        }
        let state = Arc::new(State {
            base: Mutex::new(None),
            accounts,
            disabled: Mutex::new(Vec::new()),
            listing_of,
            archive_of,
            requests: Mutex::new(Vec::new()),
        });
        let server = super::serve::spawn(listener, state.clone(), |state, request| async move {
            handle(&state, request).await
        });
        AccountsMock {
            addr,
            state,
            server,
        }
    }

    pub fn set_base(&self, base: &MockUpstream) {
        *lock(&self.state.base) = Some(base.url());
    }

    /// The repository URL every account shares.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on the account's key pair is refused, as when it is disabled in the
    /// Marketplace or its invoice is unpaid.
    pub fn disable(&self, account: &'static str) {
        lock(&self.state.disabled).push(account);
    }

    /// Reinstates an account `disable` cut off (an invoice paid).
    pub fn enable(&self, account: &'static str) {
        lock(&self.state.disabled).retain(|a| *a != account);
    }

    pub fn requests(&self) -> Vec<AccountRequest> {
        lock(&self.state.requests).clone()
    }

    /// Paths of the archives an account downloaded with success.
    pub fn archives_by(&self, account: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.account == Some(account) && r.status == 200)
            .filter(|r| r.path.starts_with("/archives/"))
            .map(|r| r.path)
            .collect()
    }
}

impl Drop for AccountsMock {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn basic(public: &str, private: &str) -> String {
    let pair = format!("{public}:{private}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn json_error(status: StatusCode, warning: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({ "warning": warning })).expect("json");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("header"),
    );
    response
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let account = state
        .accounts
        .iter()
        .find(|a| basic(&a.public_key, &a.private_key) == authorization);
    let response = answer(state, account, &request, &path).await;
    lock(&state.requests).push(AccountRequest {
        account: account.map(|a| a.name),
        path,
        status: response.status().as_u16(),
    });
    response
}

async fn answer(
    state: &State,
    account: Option<&Account>,
    request: &Request<Incoming>,
    path: &str,
) -> Response<Full<Bytes>> {
    let Some(account) = account else {
        return json_error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    };
    if lock(&state.disabled).contains(&account.name) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "The access keys you provided have been disabled or revoked",
        );
    }
    let entitled = |name: &str| {
        state
            .listing_of
            .get(name)
            .is_some_and(|l| account.listings.contains(l))
    };
    let missing = || {
        json_error(
            StatusCode::NOT_FOUND,
            "The requested package is not available for your access keys",
        )
    };
    if let Some(listing) = path
        .strip_prefix("/p/provider-")
        .and_then(|rest| rest.split('$').next())
    {
        if !account.listings.contains(&listing) {
            return missing();
        }
    } else if let Some(name) = path
        .strip_prefix("/p/")
        .and_then(|rest| rest.split('$').next())
    {
        if !entitled(name) {
            return missing();
        }
    } else if path.starts_with("/archives/") {
        let known = state.archive_of.get(path);
        if !known.is_some_and(|name| entitled(name)) {
            return missing();
        }
    }
    let mut forwarded = vec![("authorization", basic(TEST_PUBLIC_KEY, TEST_PRIVATE_KEY))];
    // The root is rewritten here, so it is asked for uncompressed.
    let passed = if path == "/packages.json" {
        &["if-modified-since"][..]
    } else {
        &["if-modified-since", "accept-encoding"][..]
    };
    for &name in passed {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            forwarded.push((name, value.to_string()));
        }
    }
    let headers: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let method = if request.method() == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    let base = lock(&state.base).clone().expect("set_base before use");
    let reply = proxy::request(method, &format!("{base}{path}"), &headers, Bytes::new()).await;
    let body = if path == "/packages.json" && reply.status == StatusCode::OK {
        // Only this account's listings.
        let mut root: Value = serde_json::from_slice(&reply.body).expect("the base root");
        if let Some(includes) = root["provider-includes"].as_object_mut() {
            includes.retain(|key, _| {
                let listing = key
                    .strip_prefix("p/provider-")
                    .and_then(|rest| rest.split('$').next())
                    .unwrap_or_default();
                account.listings.contains(&listing)
            });
        }
        Bytes::from(php_json(&root))
    } else {
        reply.body
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = reply.status;
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::LAST_MODIFIED,
    ] {
        if let Some(value) = reply.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}
