//! In-process mock of repo.magento.com, of a vendor's Private Packagist repository (served
//! under a path, HTTP Basic `token` + licence key) and of packagist.org itself (open-ended,
//! public, minified, dists on another host).
//!
//! The proxy's integration tests need an upstream they control completely: one that
//! checks the Marketplace key pair on every request, serves the v1 "providers"
//! protocol with its sha256 chain (per-package files gzip-compressed whether or not the
//! client asked), or Composer 2 `metadata-url` files, and that can be told to
//! misbehave: reject the keys, fail, stall, cut archives short or corrupt them
//! (including faults only a zip check can catch, for archives without a published
//! shasum), change packages.json, redirect archives to a second origin that must never
//! see the keys, or stop entirely. It records every request so tests can count upstream
//! traffic (the proxy's whole point is to keep it low) and check that credentials were
//! sent, and only where they belong.
//!
//! All JSON is serialised the way PHP's `json_encode` does by default (slashes escaped
//! as `\/`) and every hash is over the exact bytes sent before any gzip, because that
//! is what Composer verifies. See DESIGN.md §1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use composer_proxy::composer::minify;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::catalogue::{Catalogue, FixtureVersion};

/// Which repository protocol the mock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Composer 1 "providers" protocol, as repo.magento.com serves it.
    V1,
    /// Composer 2 `metadata-url` protocol with `available-packages`.
    P2,
}

pub struct MockOptions {
    pub protocol: Protocol,
    pub catalogue: Arc<Catalogue>,
    pub public_key: String,
    pub private_key: String,
    /// Answer archive requests on the main host with a 302 to a second origin.
    pub redirect_archives: bool,
    /// P2 only: serve metadata in Composer's MetadataMinifier format.
    pub minify_p2: bool,
    /// Path every route is served under, e.g. "/hyva-project" (no trailing slash), as for a
    /// Private Packagist customer repository; "" serves at the root. URL templates in
    /// packages.json then start with it, since Composer drops a repository URL's path for
    /// templates that start with `/`.
    pub path_prefix: String,
    /// Answer 401 to requests without the accepted key pair. false: a public repository
    /// such as packagist.org, which answers everyone (Authorization is still recorded).
    pub require_credentials: bool,
    /// P2 only: list every name in `available-packages` (a finite repository). false: an
    /// open-ended one like packagist.org, answering 404 for names it lacks.
    pub available_packages: bool,
    /// Dist URLs point straight at the second origin (a dist host, like
    /// codeload.github.com), with GitHub's `/{vendor}/{name}/legacy.zip/{reference}` paths
    /// for versions that have a reference; the main host then serves no archives.
    pub dists_on_second_host: bool,
    /// With `dists_on_second_host`: dist URLs name GitHub's API at this origin
    /// (`/repos/{vendor}/{name}/zipball/{reference}`), as packagist.org's do; the API (a
    /// `GitHubApiMock`) redirects them to the second host, which plays codeload.
    pub github_api: Option<String>,
    /// The origin the documents name instead of the mock's own: a front that stands in front
    /// of it (several accounts' view of one repository).
    pub advertised_url: Option<String>,
    /// Absolute URL templates in packages.json (`metadata-url`, `notify-batch`, `search`),
    /// as packagist.org writes them.
    pub absolute_urls: bool,
    /// P2 only: a `metadata-changes-url` feed at `/metadata/changes.json`, as packagist.org
    /// offers it, announcing what `publish_version` changes.
    pub changes_feed: bool,
    /// P2 only: packagist.org's advisory, filter and list APIs (`super::advisories`).
    pub apis: bool,
}

impl MockOptions {
    /// Typical options: the given protocol, fixed 32-character keys, no redirect, no
    /// minification.
    pub fn new(protocol: Protocol, catalogue: Arc<Catalogue>) -> MockOptions {
        MockOptions {
            protocol,
            catalogue,
            public_key: TEST_PUBLIC_KEY.to_string(),
            private_key: TEST_PRIVATE_KEY.to_string(),
            redirect_archives: false,
            minify_p2: false,
            path_prefix: String::new(),
            require_credentials: true,
            available_packages: true,
            dists_on_second_host: false,
            github_api: None,
            advertised_url: None,
            absolute_urls: false,
            changes_feed: false,
            apis: false,
        }
    }

    /// A vendor's Private Packagist customer repository: p2 with `available-packages`,
    /// everything under `path_prefix`, HTTP Basic with user `token` and the licence key.
    pub fn vendor_repository(
        catalogue: Arc<Catalogue>,
        path_prefix: &str,
        licence_key: &str,
    ) -> MockOptions {
        MockOptions {
            path_prefix: path_prefix.trim_end_matches('/').to_string(),
            public_key: "token".to_string(),
            private_key: licence_key.to_string(),
            ..MockOptions::new(Protocol::P2, catalogue)
        }
    }

    /// packagist.org: minified p2, no `available-packages` (a 404 for every name it lacks),
    /// no credentials asked for, absolute URL templates, dists on a second origin that the
    /// metadata names directly (no redirect), and its advisory, filter and list APIs.
    pub fn packagist_like(catalogue: Arc<Catalogue>) -> MockOptions {
        MockOptions {
            apis: true,
            public_key: String::new(),
            private_key: String::new(),
            minify_p2: true,
            require_credentials: false,
            available_packages: false,
            dists_on_second_host: true,
            absolute_urls: true,
            ..MockOptions::new(Protocol::P2, catalogue)
        }
    }
}

/// Marketplace keys are 32 characters each; these look the part.
pub const TEST_PUBLIC_KEY: &str = "0123456789abcdef0123456789abcdef";
pub const TEST_PRIVATE_KEY: &str = "fedcba9876543210fedcba9876543210";

/// Archive responses that are wrong in ways only the archive itself shows: without a
/// published shasum, only checking the zip (its structure and every entry's CRC) can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFault {
    /// The announced length of bytes that are not a zip (they do not start with `PK`).
    Garbage,
    /// The real archive with one byte inverted inside the first entry's compressed data,
    /// so that entry no longer inflates to its CRC.
    FlipByte,
    /// A consistent response of half the archive: Content-Length says half, half is sent
    /// (what a relay that rewrote the length would produce).
    LyingLength,
    /// HTTP/1.1 with neither Content-Length nor Transfer-Encoding, `Connection: close`:
    /// the first 30,000 bytes (half, for smaller archives), then a clean close. Written on
    /// the raw socket, because hyper cannot send a close-delimited body.
    CloseDelimitedCut,
}

/// Metadata answers (every main-host GET outside `/archives/`) that are 200 and unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataFault {
    NotJson,
    /// JSON, but not the object Composer documents are.
    WrongShape,
    /// `Content-Encoding: gzip` over bytes that start like gzip and do not inflate.
    BadGzip,
}

/// A fixed 200 answer for one path of the main host, whatever was asked (the feed's `since`,
/// an API's body): an oversized document, a feed answer with a long backlog.
#[derive(Clone)]
pub struct Canned {
    pub body: Bytes,
    /// Announce the length; else the body goes out chunked, its size known only at the end.
    pub content_length: bool,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Percent-decoded path, without the query.
    pub path: String,
    pub raw_path_and_query: String,
    pub authorization: Option<String>,
    /// The Authorization header carried the key pair the mock currently accepts.
    pub credentials_ok: bool,
    pub if_modified_since: Option<String>,
    pub accept_encoding: Option<String>,
    pub user_agent: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct MockUpstream {
    state: Arc<State>,
    addr: SocketAddr,
    archive_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    servers: Mutex<Vec<JoinHandle<()>>>,
}

impl MockUpstream {
    /// Binds 127.0.0.1:0 (and a second port for the archive host when
    /// `redirect_archives` or `dists_on_second_host`) and starts serving.
    pub async fn start(opts: MockOptions) -> MockUpstream {
        let main_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the mock upstream to 127.0.0.1:0");
        let addr = main_listener
            .local_addr()
            .expect("local address of the mock upstream");
        let archive_listener = if opts.redirect_archives || opts.dists_on_second_host {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("binding the mock archive host to 127.0.0.1:0"),
            )
        } else {
            None
        };
        let archive_addr = archive_listener.as_ref().map(|l| {
            l.local_addr()
                .expect("local address of the mock archive host")
        });

        let base_url = format!("http://{addr}");
        let archive_base_url = archive_addr.map(|a| format!("http://{a}"));
        let advertised = opts
            .advertised_url
            .clone()
            .unwrap_or_else(|| base_url.clone());
        let files = Files::build(&opts, &advertised, archive_base_url.as_deref());
        // Whole seconds, because HTTP dates have no finer resolution and the
        // If-Modified-Since comparison must be exact.
        let last_modified = httpdate::parse_http_date(&httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or(SystemTime::UNIX_EPOCH);

        let state = Arc::new(State {
            base_url,
            path_prefix: opts.path_prefix.clone(),
            require_credentials: opts.require_credentials,
            api_names: match opts.apis {
                true => opts
                    .catalogue
                    .packages
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
                false => Vec::new(),
            },
            archive_base_url,
            files,
            last_modified: Mutex::new(last_modified),
            root_revision: Mutex::new(None),
            keys: Mutex::new((opts.public_key, opts.private_key)),
            reject_keys: AtomicBool::new(false),
            failure: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            truncate_archives: AtomicI64::new(0),
            stall_archives: AtomicBool::new(false),
            corrupt_archives: AtomicBool::new(false),
            archive_fault: Mutex::new(None),
            metadata_fault: Mutex::new(None),
            canned: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            archive_records: Mutex::new(Vec::new()),
            recorded: tokio::sync::Notify::new(),
            feed: Mutex::new(FeedLog::default()),
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut servers = vec![tokio::spawn(serve(
            main_listener,
            state.clone(),
            Host::Main,
            shutdown_rx.clone(),
        ))];
        if let Some(listener) = archive_listener {
            servers.push(tokio::spawn(serve(
                listener,
                state.clone(),
                Host::Archives,
                shutdown_rx,
            )));
        }

        MockUpstream {
            state,
            addr,
            archive_addr,
            shutdown,
            servers: Mutex::new(servers),
        }
    }

    /// "http://127.0.0.1:PORT", no trailing slash: the origin.
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The repository URL a client lists: `url()`, or with a path prefix
    /// "http://127.0.0.1:PORT/prefix/".
    pub fn repo_url(&self) -> String {
        if self.state.path_prefix.is_empty() {
            self.url()
        } else {
            format!("{}{}/", self.state.base_url, self.state.path_prefix)
        }
    }

    /// The path prefix every route is served under ("" for the root).
    #[allow(dead_code)] // Only the benchmark's mock (examples/mock_upstream.rs) uses it.
    pub fn path_prefix(&self) -> &str {
        &self.state.path_prefix
    }

    /// The absolute dist URL the mock publishes for `name` `version`, if it has an archive.
    pub fn dist_url(&self, name: &str, version: &str) -> Option<String> {
        self.state
            .files
            .dist_urls
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The second origin that serves archives when `redirect_archives` is on.
    pub fn archive_host_url(&self) -> Option<String> {
        self.state.archive_base_url.clone()
    }

    pub fn archive_host_addr(&self) -> Option<SocketAddr> {
        self.archive_addr
    }

    /// Everything the main host received, in arrival order (rejected requests too).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.records).clone()
    }

    /// Everything the archive host received, in arrival order.
    pub fn archive_host_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.archive_records).clone()
    }

    /// Main-host requests for exactly this percent-decoded path (query ignored; the path as
    /// received, path prefix included).
    pub fn count(&self, path: &str) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Main-host requests whose percent-decoded path starts with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }

    /// Main-host requests whose Authorization was missing or not the accepted pair.
    pub fn count_without_credentials(&self) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| !r.credentials_ok)
            .count()
    }

    /// Forgets the requests recorded so far, on both hosts.
    /// Waits until the main host has received a request matching `pred` and returns it.
    /// Callers bound the wait with a timeout.
    pub async fn wait_for_request(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        loop {
            let notified = self.state.recorded.notified();
            tokio::pin!(notified);
            // Register before looking, so a request recorded in between is not missed.
            notified.as_mut().enable();
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return r;
            }
            notified.await;
        }
    }

    pub fn reset_counts(&self) {
        lock(&self.state.records).clear();
        lock(&self.state.archive_records).clear();
    }

    /// Answer every main-host request with 401, as if the key pair had been disabled.
    pub fn set_reject_keys(&self, on: bool) {
        self.state.reject_keys.store(on, Ordering::SeqCst);
    }

    /// Answer every request (both hosts) with this status and a JSON warning.
    pub fn set_failure(&self, status: Option<u16>) {
        *lock(&self.state.failure) = status;
    }

    /// Wait this long before each response (both hosts).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Archives: send the full Content-Length, then about half the bytes, then close.
    pub fn set_truncate_archives(&self, on: bool) {
        self.state
            .truncate_archives
            .store(if on { -1 } else { 0 }, Ordering::SeqCst);
    }

    /// Cuts only the next `n` archive responses short, then serves them whole again.
    pub fn truncate_next_archives(&self, n: i64) {
        self.state.truncate_archives.store(n, Ordering::SeqCst);
    }

    /// Sends the first half of each archive, then nothing more (the connection stays open).
    pub fn set_stall_archives(&self, on: bool) {
        self.state.stall_archives.store(on, Ordering::SeqCst);
    }

    /// Archives: full length, altered bytes (the sha1 no longer matches).
    pub fn set_corrupt_archives(&self, on: bool) {
        self.state.corrupt_archives.store(on, Ordering::SeqCst);
    }

    /// Archives whose metadata publishes no shasum are answered with `fault` (both hosts,
    /// whatever the Range); archives with a published shasum are served as usual.
    /// `CloseDelimitedCut` assumes HTTP/1.1, as the proxy's upstream client speaks it.
    pub fn set_metadata_fault(&self, fault: Option<MetadataFault>) {
        *lock(&self.state.metadata_fault) = fault;
    }

    /// Polls of the changes feed that carried a position (the first one only asks where to
    /// start).
    pub fn feed_polls(&self) -> usize {
        lock(&self.state.records)
            .iter()
            .filter(|r| {
                r.path == "/metadata/changes.json" && r.raw_path_and_query.contains("since=")
            })
            .count()
    }

    /// Answers `path` with `answer` from now on; `None` goes back to the real document.
    pub fn set_canned(&self, path: &str, answer: Option<Canned>) {
        let mut canned = lock(&self.state.canned);
        match answer {
            Some(answer) => canned.insert(path.to_string(), answer),
            None => canned.remove(path),
        };
    }

    pub fn set_archive_fault(&self, fault: Option<ArchiveFault>) {
        *lock(&self.state.archive_fault) = fault;
    }

    /// Publishes a new packages.json: same repository, one more field (`x-mock-revision`)
    /// so its bytes and hash change, and a later Last-Modified, so a revalidation gets it.
    pub fn change_root(&self) {
        let mut last_modified = lock(&self.state.last_modified);
        let now = httpdate::parse_http_date(&httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        *last_modified = now.max(*last_modified + Duration::from_secs(1));
        let mut revision = lock(&self.state.root_revision);
        let number = revision.as_ref().map_or(1, |(n, _)| n + 1);
        let original = self
            .state
            .files
            .get("/packages.json")
            .expect("the mock serves packages.json");
        let mut root: Value =
            serde_json::from_slice(&original.plain).expect("the mock's packages.json is JSON");
        root["x-mock-revision"] = json!(number);
        let plain = php_json(&root);
        let file = File {
            gzip: Bytes::from(gzip(&plain)),
            plain: Bytes::from(plain),
            kind: FileKind::Revalidated,
        };
        *revision = Some((number, file));
    }

    /// Publishes `version` of `name` (a copy of its first tagged version) in a new p2 file with a
    /// later Last-Modified, and announces it on the changes feed, dated in the same second. The
    /// next `lagging_fetches` requests for the file still get the previous one, as from a CDN
    /// that has not caught up.
    pub fn publish_version(&self, name: &str, version: &str, lagging_fetches: u32) {
        let path = format!("/p2/{name}.json");
        let mut feed = lock(&self.state.feed);
        let (current, previous_modified) = match feed.published.get(&path) {
            Some(p) => (p.file.clone(), p.modified),
            None => (
                self.state.file(&path).expect("a published p2 file"),
                self.last_modified(),
            ),
        };
        let mut body: Value = serde_json::from_slice(&current.plain).expect("p2 JSON");
        let minified = body["minified"] == "composer/2.0";
        let listed = body["packages"][name].as_array().expect("versions").clone();
        let mut versions = if minified { expand(&listed) } else { listed };
        let mut added = versions[0].clone();
        added["version"] = json!(version);
        added["version_normalized"] = json!(format!("{version}.0"));
        versions.push(added);
        body["packages"][name] = json!(if minified {
            minify::minify(&versions).expect("versions are objects")
        } else {
            versions
        });
        let plain = php_json(&body);
        let now = httpdate::parse_http_date(&httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let modified = now.max(previous_modified + Duration::from_secs(1));
        let secs = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let time = feed_time(SystemTime::now()).max(secs * 10_000 + 1234);
        feed.actions.push(("update", name.to_string(), time));
        let file = File {
            gzip: Bytes::from(gzip(&plain)),
            plain: Bytes::from(plain),
            kind: FileKind::Revalidated,
        };
        let published = Published {
            file,
            modified,
            previous: (current, previous_modified),
            lagging_fetches,
        };
        feed.published.insert(path, published);
    }

    /// Accept this key pair from now on (and only this one).
    pub fn set_accepted_keys(&self, public: &str, private: &str) {
        *lock(&self.state.keys) = (public.to_string(), private.to_string());
    }

    /// Exact bytes the mock serves for `path` (percent-decoded, relative to the path prefix),
    /// before any gzip. For building expectations: `/packages.json`, `/p/…$hash.json`,
    /// `/p2/….json`.
    pub fn file_bytes(&self, path: &str) -> Option<Bytes> {
        self.state.file(path).map(|f| f.plain)
    }

    /// The Last-Modified the mock sends for packages.json and p2 files.
    pub fn last_modified(&self) -> SystemTime {
        *lock(&self.state.last_modified)
    }

    /// Stops accepting on both hosts without waiting; existing connections are
    /// closed by the server tasks as soon as they run.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops accepting on both hosts, closes every open connection, and returns once
    /// the listening sockets are closed (connecting is then refused).
    pub async fn stop(&self) {
        self.shutdown();
        let servers = std::mem::take(&mut *lock(&self.servers));
        for server in servers {
            // A server task only ends by returning; a JoinError would mean it
            // panicked, which the test should hear about.
            server.await.expect("mock upstream server task");
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Main,
    Archives,
}

struct State {
    base_url: String,
    /// See `MockOptions::path_prefix`.
    path_prefix: String,
    require_credentials: bool,
    /// With `MockOptions::apis`, the names its list API lists; else empty.
    api_names: Vec<String>,
    archive_base_url: Option<String>,
    files: Files,
    /// Moves forward when `change_root` publishes a new packages.json.
    last_modified: Mutex<SystemTime>,
    /// The packages.json published by `change_root`, and how many times it was called.
    root_revision: Mutex<Option<(u64, File)>>,
    keys: Mutex<(String, String)>,
    reject_keys: AtomicBool,
    failure: Mutex<Option<u16>>,
    delay: Mutex<Duration>,
    /// Archive responses still to cut short; negative: all of them.
    truncate_archives: AtomicI64,
    stall_archives: AtomicBool,
    corrupt_archives: AtomicBool,
    archive_fault: Mutex<Option<ArchiveFault>>,
    metadata_fault: Mutex<Option<MetadataFault>>,
    /// By path (without the query).
    canned: Mutex<HashMap<String, Canned>>,
    records: Mutex<Vec<RecordedRequest>>,
    archive_records: Mutex<Vec<RecordedRequest>>,
    /// Woken on every recorded request, so tests can wait for one instead of polling.
    recorded: tokio::sync::Notify,
    feed: Mutex<FeedLog>,
}

/// The changes feed: what `publish_version` announced, and the files it published.
#[derive(Default)]
struct FeedLog {
    /// (type, package, time in 10000ths of a second), as packagist.org dates them.
    actions: Vec<(&'static str, String, u64)>,
    /// By path.
    published: HashMap<String, Published>,
}

struct Published {
    file: File,
    modified: SystemTime,
    /// The file it replaced and its Last-Modified, served while `lagging_fetches` lasts.
    previous: (File, SystemTime),
    lagging_fetches: u32,
}

impl State {
    /// The document served at `path` now.
    fn file(&self, path: &str) -> Option<File> {
        if path == "/packages.json" {
            if let Some((_, file)) = &*lock(&self.root_revision) {
                return Some(file.clone());
            }
        }
        self.files.get(path).cloned()
    }
}

/// A poisoned lock only means another test thread panicked; the data is still
/// usable and the mock must not add a second panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Pre-built responses
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// packages.json and p2 files: revalidated with If-Modified-Since.
    Revalidated,
    /// v1 provider listings: content-addressed.
    Listing,
    /// v1 per-package files: content-addressed and always gzip-compressed.
    AlwaysGzip,
}

#[derive(Clone)]
struct File {
    plain: Bytes,
    gzip: Bytes,
    kind: FileKind,
}

struct ArchiveEntry {
    bytes: Bytes,
    entitled: bool,
    /// The metadata carries its sha1 (`dist.shasum`); `ArchiveFault`s spare these.
    shasum_published: bool,
}

/// Every response body the mock can serve, built once at start: the metadata embeds
/// the mock's own URL, and hashes must be stable for the whole run.
struct Files {
    /// Keyed by path relative to the path prefix.
    by_path: HashMap<String, File>,
    /// Keyed by path on the host that serves them (relative to the path prefix on the main
    /// host).
    archives: HashMap<String, ArchiveEntry>,
    /// (name, version) → the absolute dist URL published in the metadata.
    dist_urls: HashMap<(String, String), String>,
    /// Whether the main host answers archive paths (false: they live on the dist host).
    archives_on_main: bool,
}

impl Files {
    fn build(opts: &MockOptions, base_url: &str, archive_base_url: Option<&str>) -> Files {
        let catalogue = &opts.catalogue;
        let prefix = opts.path_prefix.as_str();
        let mut by_path = HashMap::new();
        let mut archives = HashMap::new();
        let mut dist_urls = HashMap::new();
        // Where archives live: (origin and prefix of their URLs, path of one version).
        let dist_host = archive_base_url.filter(|_| opts.dists_on_second_host);
        let dist_base = match dist_host {
            Some(host) => host.to_string(),
            None => format!("{base_url}{prefix}"),
        };
        let dist_path = |name: &str, v: &FixtureVersion| match v.reference(name) {
            Some(reference) if dist_host.is_some() => format!("/{name}/legacy.zip/{reference}"),
            _ => Catalogue::archive_path(name, &v.version_normalized),
        };

        let dist_url = |name: &str, v: &FixtureVersion| match (&opts.github_api, v.reference(name))
        {
            (Some(api), Some(reference)) if dist_host.is_some() => {
                format!("{api}/repos/{name}/zipball/{reference}")
            }
            _ => format!("{dist_base}{}", dist_path(name, v)),
        };
        let version_metadata =
            |name: &str, v: &FixtureVersion| v.metadata(name, &dist_url(name, v));

        for package in &catalogue.packages {
            for v in &package.versions {
                if let Some(archive) = &v.archive {
                    let path = dist_path(&package.name, v);
                    dist_urls.insert(
                        (package.name.clone(), v.version.clone()),
                        dist_url(&package.name, v),
                    );
                    archives.insert(
                        path,
                        ArchiveEntry {
                            bytes: archive.bytes.clone(),
                            entitled: package.name != Catalogue::not_entitled_name(),
                            shasum_published: v.publish_shasum,
                        },
                    );
                }
            }
        }
        // URL templates: relative to the origin (so with the prefix), or absolute.
        let template_base = if opts.absolute_urls {
            format!("{base_url}{prefix}")
        } else {
            prefix.to_string()
        };

        let mut add = |path: String, plain: Vec<u8>, kind: FileKind| {
            let gzip = gzip(&plain);
            by_path.insert(
                path,
                File {
                    plain: Bytes::from(plain),
                    gzip: Bytes::from(gzip),
                    kind,
                },
            );
        };

        match opts.protocol {
            Protocol::V1 => {
                let mut includes = Map::new();
                // One provider listing per entitlement the catalogue names ("ce", "ext", …).
                let mut listings: Vec<&str> =
                    catalogue.packages.iter().map(|p| p.listing).collect();
                listings.sort_unstable();
                listings.dedup();
                for listing in listings {
                    let mut providers = Map::new();
                    for package in catalogue.packages.iter().filter(|p| p.listing == listing) {
                        let mut versions = Map::new();
                        for v in &package.versions {
                            versions.insert(v.version.clone(), version_metadata(&package.name, v));
                        }
                        let mut packages = Map::new();
                        packages.insert(package.name.clone(), Value::Object(versions));
                        let bytes = php_json(&json!({ "packages": packages }));
                        let hash = sha256_hex(&bytes);
                        providers.insert(package.name.clone(), json!({ "sha256": hash }));
                        add(
                            format!("/p/{}${hash}.json", package.name),
                            bytes,
                            FileKind::AlwaysGzip,
                        );
                    }
                    let bytes = php_json(&json!({ "providers": providers }));
                    let hash = sha256_hex(&bytes);
                    add(
                        format!("/p/provider-{listing}${hash}.json"),
                        bytes,
                        FileKind::Listing,
                    );
                    includes.insert(
                        format!("p/provider-{listing}$%hash%.json"),
                        json!({ "sha256": hash }),
                    );
                }
                let root = json!({
                    "packages": [],
                    "notify-batch": format!("{template_base}/downloads/"),
                    "providers-url": format!("{template_base}/p/%package%$%hash%.json"),
                    "search": format!("{template_base}/search.json?q=%query%&type=%type%"),
                    "provider-includes": includes,
                });
                add(
                    "/packages.json".to_string(),
                    php_json(&root),
                    FileKind::Revalidated,
                );
            }
            Protocol::P2 => {
                for package in &catalogue.packages {
                    for dev in [false, true] {
                        let versions: Vec<Value> = package
                            .versions
                            .iter()
                            .filter(|v| v.is_dev() == dev)
                            .map(|v| version_metadata(&package.name, v))
                            .collect();
                        let mut packages = Map::new();
                        let body = if opts.minify_p2 {
                            // As packagist.org does, with Composer's MetadataMinifier.
                            let minified = minify::minify(&versions).expect("versions are objects");
                            packages.insert(package.name.clone(), Value::Array(minified));
                            json!({ "packages": packages, "minified": "composer/2.0" })
                        } else {
                            packages.insert(package.name.clone(), Value::Array(versions));
                            json!({ "packages": packages })
                        };
                        let suffix = if dev { "~dev" } else { "" };
                        add(
                            format!("/p2/{}{suffix}.json", package.name),
                            php_json(&body),
                            FileKind::Revalidated,
                        );
                    }
                }
                let names: Vec<&str> = catalogue.packages.iter().map(|p| p.name.as_str()).collect();
                let mut root = Map::new();
                root.insert("packages".into(), json!([]));
                root.insert(
                    "metadata-url".into(),
                    json!(format!("{template_base}/p2/%package%.json")),
                );
                if opts.available_packages {
                    root.insert("available-packages".into(), json!(names));
                }
                root.insert(
                    "notify-batch".into(),
                    json!(format!("{template_base}/downloads/")),
                );
                root.insert(
                    "search".into(),
                    json!(format!("{template_base}/search.json?q=%query%&type=%type%")),
                );
                if opts.changes_feed {
                    root.insert(
                        "metadata-changes-url".into(),
                        json!(format!("{template_base}/metadata/changes.json")),
                    );
                }
                if opts.apis {
                    root.extend(super::advisories::root_entries(&format!(
                        "{base_url}{prefix}"
                    )));
                }
                let root = Value::Object(root);
                add(
                    "/packages.json".to_string(),
                    php_json(&root),
                    FileKind::Revalidated,
                );
            }
        }

        Files {
            by_path,
            archives,
            dist_urls,
            archives_on_main: dist_host.is_none(),
        }
    }

    fn get(&self, path: &str) -> Option<&File> {
        self.by_path.get(path)
    }
}

/// `json_encode` with PHP's default flags: compact, `/` escaped as `\/`. A `/` can
/// only occur inside JSON strings, so escaping it after serialising is exact.
pub fn php_json(value: &Value) -> Vec<u8> {
    let compact = serde_json::to_string(value).expect("serialising a serde_json::Value");
    compact.replace('/', "\\/").into_bytes()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(bytes)
        .expect("gzip into memory cannot fail");
    encoder.finish().expect("gzip into memory cannot fail")
}

/// Decodes a body by the gzip magic bytes (upstream bodies may be gzip-compressed
/// without being asked); anything else is returned as it is.
pub fn gunzip_if_needed(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        if GzDecoder::new(bytes).read_to_end(&mut out).is_ok() {
            return out;
        }
    }
    bytes.to_vec()
}

/// Composer\MetadataMinifier\MetadataMinifier::expand, the proxy's own (PHP quirks included).
pub fn expand(versions: &[Value]) -> Vec<Value> {
    minify::expand(versions).expect("a version list PHP expands")
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

type Body = BoxBody<Bytes, io::Error>;

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    host: Host,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                // Accept errors (e.g. out of file descriptors) are transient; the
                // client that caused it sees a reset, the mock carries on.
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_connection(stream, state.clone(), host));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Closing the listener first makes new connections be refused; aborting the
    // connection tasks drops their sockets, closing every open connection.
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, host: Host) {
    let tap = Arc::new(ConnectionTap::default());
    let io = TokioIo::new(TappedStream {
        inner: stream,
        tap: tap.clone(),
        raw: RawReply::Off,
    });
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let tap = tap.clone();
        async move { Ok::<_, Infallible>(handle(&state, host, &tap, request).await) }
    });
    // Errors here are the client going away or a deliberately truncated body.
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

async fn handle(
    state: &State,
    host: Host,
    tap: &Arc<ConnectionTap>,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    // Bounded: notify-batch bodies are small; anything bigger is recorded as empty.
    let body = match Limited::new(body, 1 << 20).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let raw_path = parts.uri.path().to_string();
    let path = percent_encoding::percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let header_string = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let authorization = header_string(header::AUTHORIZATION);
    let credentials_ok = authorization
        .as_deref()
        .is_some_and(|a| credentials_match(a, &lock(&state.keys)));
    let record = RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        raw_path_and_query: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| raw_path.clone()),
        authorization,
        credentials_ok,
        if_modified_since: header_string(header::IF_MODIFIED_SINCE),
        accept_encoding: header_string(header::ACCEPT_ENCODING),
        user_agent: header_string(header::USER_AGENT),
        headers: parts.headers.clone(),
        body,
    };
    let records = match host {
        Host::Main => &state.records,
        Host::Archives => &state.archive_records,
    };
    lock(records).push(record.clone());
    state.recorded.notify_waiters();

    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let failure = *lock(&state.failure);
    if let Some(status) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json_error(
            status,
            &format!(
                "The repository is temporarily unavailable (HTTP {}), please try again later",
                status.as_u16()
            ),
        );
    }

    let fault = *lock(&state.metadata_fault);
    if let (Some(fault), Host::Main) = (fault, host) {
        if !record.path.starts_with("/archives/") {
            let (body, gzip): (&'static [u8], bool) = match fault {
                MetadataFault::NotJson => (b"<html>maintenance</html>", false),
                MetadataFault::WrongShape => (b"[\"a list\"]", false),
                MetadataFault::BadGzip => (b"\x1f\x8b\x08\x00not a deflate stream", true),
            };
            let mut builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len());
            if gzip {
                builder = builder.header(header::CONTENT_ENCODING, "gzip");
            }
            return respond(builder, full(Bytes::from_static(body)));
        }
    }

    let canned = lock(&state.canned).get(&record.path).cloned();
    if let (Some(canned), Host::Main) = (canned, host) {
        let builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json");
        if canned.content_length {
            let builder = builder.header(header::CONTENT_LENGTH, canned.body.len());
            return respond(builder, full(canned.body));
        }
        // A stream without a size hint: hyper sends it chunked.
        let chunks: Vec<Result<Frame<Bytes>, io::Error>> = (0..canned.body.len())
            .step_by(64 * 1024)
            .map(|at| {
                let end = (at + 64 * 1024).min(canned.body.len());
                Ok(Frame::data(canned.body.slice(at..end)))
            })
            .collect();
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        return respond(builder, BodyExt::boxed(stream));
    }

    match host {
        Host::Main => handle_main(state, tap, &record).await,
        Host::Archives => handle_archive_host(state, tap, &record),
    }
}

async fn handle_main(
    state: &State,
    tap: &Arc<ConnectionTap>,
    record: &RecordedRequest,
) -> Response<Body> {
    if state.reject_keys.load(Ordering::SeqCst) {
        return unauthorized("The access keys you provided have been disabled or revoked");
    }
    if state.require_credentials && !record.credentials_ok {
        return unauthorized("Invalid credentials");
    }

    // Everything lives under the path prefix; the rest of this function sees paths without it.
    let prefix = state.path_prefix.as_str();
    let (Some(path), Some(raw_path_and_query)) = (
        under_prefix(&record.path, prefix),
        under_prefix(&record.raw_path_and_query, prefix),
    ) else {
        return json_error(StatusCode::NOT_FOUND, "Not found");
    };
    let is_read = record.method == "GET" || record.method == "HEAD";
    if path.starts_with("/archives/") && is_read && state.files.archives_on_main {
        let Some(entry) = state.files.archives.get(path) else {
            return json_error(StatusCode::NOT_FOUND, "Archive not found");
        };
        if !entry.entitled {
            return json_error(
                StatusCode::NOT_FOUND,
                "The requested package is not available for your access keys",
            );
        }
        if let Some(archive_host) = &state.archive_base_url {
            let location = format!("{archive_host}{raw_path_and_query}");
            return respond(
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(header::LOCATION, location)
                    .header(header::CONTENT_TYPE, "text/html; charset=UTF-8"),
                full(Bytes::new()),
            );
        }
        return archive_response(state, tap, record, entry);
    }

    let query = raw_path_and_query.split_once('?').map_or("", |(_, q)| q);
    let api = (!state.api_names.is_empty()).then(|| {
        super::advisories::answer(&record.method, path, query, &record.body, &state.api_names)
    });
    if let Some((status, body)) = api.flatten() {
        let body = Bytes::from(php_json(&body));
        return respond(
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len()),
            full(body),
        );
    }
    match (record.method.as_str(), path) {
        ("POST", "/downloads/") => json_response(StatusCode::OK, br#"{"status":"success"}"#),
        ("GET" | "HEAD", "/search.json") => {
            json_response(StatusCode::OK, br#"{"results":[],"total":0}"#)
        }
        ("GET" | "HEAD", "/metadata/changes.json") => changes_response(state, raw_path_and_query),
        ("GET" | "HEAD", _) => {
            if let Some((file, modified)) = published_file(state, path) {
                return file_response(&file, modified, record);
            }
            match state.file(path) {
                Some(file) => file_response(&file, *lock(&state.last_modified), record),
                None => json_error(StatusCode::NOT_FOUND, "Not found"),
            }
        }
        _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
    }
}

/// `path` without `prefix`, when it lies below it (always, for an empty prefix).
fn under_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    path.strip_prefix(prefix)
        .filter(|rest| rest.starts_with('/'))
}

fn handle_archive_host(
    state: &State,
    tap: &Arc<ConnectionTap>,
    record: &RecordedRequest,
) -> Response<Body> {
    let is_read = record.method == "GET" || record.method == "HEAD";
    match state.files.archives.get(&record.path) {
        Some(entry) if is_read && entry.entitled => archive_response(state, tap, record, entry),
        _ => json_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// A file `publish_version` replaced: the new one, or the previous while it lags.
fn published_file(state: &State, path: &str) -> Option<(File, SystemTime)> {
    let mut feed = lock(&state.feed);
    let published = feed.published.get_mut(path)?;
    if published.lagging_fetches > 0 {
        published.lagging_fetches -= 1;
        return Some(published.previous.clone());
    }
    Some((published.file.clone(), published.modified))
}

/// packagist.org's unit of feed time: 10000ths of a second.
fn feed_time(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| (d.as_micros() / 100) as u64)
}

/// packagist.org's feed: 400 with the current timestamp without `since`, `resync` for a
/// `since` over 24 h old, else the actions dated after it.
fn changes_response(state: &State, path_and_query: &str) -> Response<Body> {
    let now = feed_time(SystemTime::now());
    let feed = lock(&state.feed);
    let timestamp = feed.actions.iter().map(|a| a.2).fold(now, u64::max);
    let since = path_and_query
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("since=")))
        .and_then(|v| v.parse::<u64>().ok());
    let (status, body) = match since {
        None => (
            StatusCode::BAD_REQUEST,
            json!({"error": "Invalid or missing \"since\" query parameter", "timestamp": timestamp}),
        ),
        Some(since) if since + 24 * 3600 * 10_000 < now => (
            StatusCode::OK,
            json!({"actions": [{"type": "resync", "package": "*", "time": now}], "timestamp": timestamp}),
        ),
        Some(since) => {
            let actions: Vec<Value> = feed
                .actions
                .iter()
                .filter(|a| a.2 > since)
                .map(
                    |(kind, package, time)| json!({"type": kind, "package": package, "time": time}),
                )
                .collect();
            (
                StatusCode::OK,
                json!({"actions": actions, "timestamp": timestamp}),
            )
        }
    };
    let body = Bytes::from(php_json(&body));
    respond(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len()),
        full(body),
    )
}

fn file_response(file: &File, modified: SystemTime, record: &RecordedRequest) -> Response<Body> {
    let last_modified = httpdate::fmt_http_date(modified);
    let mut builder = Response::builder().header(header::CONTENT_TYPE, "application/json");
    if file.kind == FileKind::Revalidated {
        builder = builder.header(header::LAST_MODIFIED, &last_modified);
        let fresh = record
            .if_modified_since
            .as_deref()
            .and_then(|since| httpdate::parse_http_date(since).ok())
            .is_some_and(|since| since >= modified);
        if fresh {
            return respond(builder.status(StatusCode::NOT_MODIFIED), full(Bytes::new()));
        }
    }
    let gzipped = file.kind == FileKind::AlwaysGzip
        || accepts_gzip(record.accept_encoding.as_deref().unwrap_or(""));
    let body = if gzipped {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        file.gzip.clone()
    } else {
        file.plain.clone()
    };
    respond(
        builder
            .status(StatusCode::OK)
            .header(header::VARY, "Accept-Encoding")
            .header(header::CONTENT_LENGTH, body.len()),
        full(body),
    )
}

fn archive_response(
    state: &State,
    tap: &Arc<ConnectionTap>,
    record: &RecordedRequest,
    entry: &ArchiveEntry,
) -> Response<Body> {
    let bytes = &entry.bytes;
    if !entry.shasum_published {
        if let Some(fault) = *lock(&state.archive_fault) {
            return faulty_archive(fault, tap, bytes);
        }
    }
    // `Range: bytes=N-`, the only form a resuming client needs, as S3 and CDNs answer it.
    let start = record
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n < bytes.len());
    let (builder, bytes) = match start {
        Some(n) => (
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {n}-{}/{}", bytes.len() - 1, bytes.len()),
                ),
            bytes.slice(n..),
        ),
        None => (Response::builder().status(StatusCode::OK), bytes.clone()),
    };
    let builder = builder
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, bytes.len());
    if state.stall_archives.load(Ordering::SeqCst) {
        let half = bytes.slice(..bytes.len() / 2);
        return respond(builder, BoxBody::new(StalledBody { first: Some(half) }));
    }
    let truncate = state
        .truncate_archives
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n > 0).then(|| n - 1)
        })
        .map(|_| true)
        .unwrap_or_else(|n| n < 0);
    if truncate {
        let half = bytes.slice(..bytes.len() / 2);
        return respond(
            builder,
            BoxBody::new(TruncatedBody {
                first: Some(half),
                tap: tap.clone(),
                mark: None,
            }),
        );
    }
    if state.corrupt_archives.load(Ordering::SeqCst) {
        return respond(builder, full(corrupt(&bytes)));
    }
    respond(builder, full(bytes))
}

/// A whole 200 response for `fault`, whatever the request's Range.
fn faulty_archive(fault: ArchiveFault, tap: &ConnectionTap, bytes: &Bytes) -> Response<Body> {
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/zip");
    let body = match fault {
        ArchiveFault::Garbage => garbage(bytes.len()),
        ArchiveFault::FlipByte => flip_inside_first_entry(bytes),
        ArchiveFault::LyingLength => bytes.slice(..bytes.len() / 2),
        ArchiveFault::CloseDelimitedCut => {
            let cut = (bytes.len() / 2).min(30_000);
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nConnection: close\r\n\r\n";
            let mut raw = BytesMut::from(head.as_bytes());
            raw.extend_from_slice(&bytes[..cut]);
            *lock(&tap.raw_reply) = Some(raw.freeze());
            // Never reaches the client: the connection's stream sends the raw reply instead.
            return respond(builder, full(Bytes::new()));
        }
    };
    respond(
        builder.header(header::CONTENT_LENGTH, body.len()),
        full(body),
    )
}

/// `len` pseudo-random bytes that do not start like a zip (`PK`).
fn garbage(len: usize) -> Bytes {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    if out.first() == Some(&b'P') {
        out[0] = b'Q';
    }
    Bytes::from(out)
}

/// The archive with one byte inverted in the middle of its first entry's compressed data
/// (after the local header: 30 bytes, the name and the extra field).
fn flip_inside_first_entry(bytes: &[u8]) -> Bytes {
    assert!(
        bytes.len() > 30 && bytes.starts_with(b"PK\x03\x04"),
        "a fixture archive starts with a local file header"
    );
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
    let compressed_len = u32::from_le_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]) as usize;
    let data = 30 + u16_at(26) + u16_at(28);
    // Sizes may be deferred to a data descriptor (0 here); a few bytes in is then still data.
    let offset = data
        + if compressed_len > 8 {
            compressed_len / 2
        } else {
            4
        };
    let mut altered = bytes.to_vec();
    altered[offset] = !altered[offset];
    Bytes::from(altered)
}

/// Same length, different bytes: every 997th byte inverted (plus the middle one, so
/// even tiny files change).
fn corrupt(bytes: &[u8]) -> Bytes {
    let mut altered = bytes.to_vec();
    let middle = altered.len() / 2;
    for (i, b) in altered.iter_mut().enumerate() {
        if i % 997 == 500 || i == middle {
            *b = !*b;
        }
    }
    Bytes::from(altered)
}

fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

fn credentials_match(authorization: &str, keys: &(String, String)) -> bool {
    let Some((scheme, encoded)) = authorization.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{}:{}", keys.0, keys.1).as_bytes()
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn respond(builder: http::response::Builder, body: Body) -> Response<Body> {
    builder.body(body).unwrap_or_else(|_| {
        let mut response = Response::new(full(Bytes::from_static(b"mock: bad response")));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

fn json_response(status: StatusCode, body: &'static [u8]) -> Response<Body> {
    respond(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len()),
        full(Bytes::from_static(body)),
    )
}

fn json_error(status: StatusCode, warning: &str) -> Response<Body> {
    let body = Bytes::from(php_json(&json!({ "warning": warning })));
    respond(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len()),
        full(body),
    )
}

fn unauthorized(warning: &str) -> Response<Body> {
    let mut response = json_error(StatusCode::UNAUTHORIZED, warning);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Magento Repository\""),
    );
    response
}

// ---------------------------------------------------------------------------
// Connections (flushes, raw replies) and truncation
// ---------------------------------------------------------------------------

/// What the handlers of one connection share with its socket: flushes (see
/// `TruncatedBody`) and a raw reply to send instead of hyper's response.
#[derive(Default)]
struct ConnectionTap {
    /// Flushes of the socket. hyper flushes its write buffer completely before it flushes
    /// the socket, so a flush seen after the truncated body's data was handed over proves
    /// that data reached the kernel.
    count: AtomicU64,
    waker: Mutex<Option<Waker>>,
    /// Bytes (status line, headers, body) to write on the raw socket in place of the
    /// response hyper is about to write; the socket is then shut down.
    raw_reply: Mutex<Option<Bytes>>,
}

impl ConnectionTap {
    fn flushed(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

/// Progress of a raw reply on one connection.
enum RawReply {
    Off,
    Writing(Bytes),
    ShuttingDown,
    /// Sent and shut down: hyper's writes are discarded, its reads see end of stream.
    Done,
}

/// The connection's socket as hyper sees it: counts flushes and, once a handler queued a
/// raw reply, writes that instead of hyper's bytes. hyper writes a response only after its
/// handler returned and after the previous response was written, so the raw reply replaces
/// exactly the response of the request that queued it.
struct TappedStream {
    inner: TcpStream,
    tap: Arc<ConnectionTap>,
    raw: RawReply,
}

impl TappedStream {
    /// Drives a queued raw reply: `Ready(Ok(true))` once it is sent and the socket shut
    /// down, `Ready(Ok(false))` when there is none (hyper's bytes go through).
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match &mut self.raw {
                RawReply::Off => match lock(&self.tap.raw_reply).take() {
                    Some(bytes) => self.raw = RawReply::Writing(bytes),
                    None => return Poll::Ready(Ok(false)),
                },
                RawReply::Writing(bytes) if bytes.is_empty() => self.raw = RawReply::ShuttingDown,
                RawReply::Writing(bytes) => match Pin::new(&mut self.inner).poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => bytes.advance(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                RawReply::ShuttingDown => match Pin::new(&mut self.inner).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.raw = RawReply::Done,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                RawReply::Done => return Poll::Ready(Ok(true)),
            }
        }
    }
}

impl AsyncRead for TappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.raw, RawReply::Done) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.poll_raw(cx) {
            Poll::Ready(Ok(true)) => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Ok(false)) => Pin::new(&mut self.inner).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.poll_raw(cx) {
            Poll::Ready(Ok(true)) => Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum())),
            Poll::Ready(Ok(false)) => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = match self.poll_raw(cx) {
            Poll::Ready(Ok(true)) => Poll::Ready(Ok(())),
            Poll::Ready(Ok(false)) => Pin::new(&mut self.inner).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        if result.is_ready() {
            self.tap.flushed();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.raw, RawReply::Done) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Yields the first half of an archive, waits until it has been flushed to the
/// socket, then fails: hyper then drops the connection with fewer bytes sent than the
/// Content-Length announced, which is exactly what a cut-short upstream looks like.
struct TruncatedBody {
    first: Option<Bytes>,
    tap: Arc<ConnectionTap>,
    mark: Option<u64>,
}

/// Half an archive, then silence: a transfer that hangs (for killing the proxy mid-download).
struct StalledBody {
    first: Option<Bytes>,
}

impl http_body::Body for StalledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            // Never woken: the connection ends only when the mock shuts down.
            None => Poll::Pending,
        }
    }
}

impl http_body::Body for TruncatedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        // hyper has buffered the data by the time it polls again; any flush counted
        // from now on happened after that data was written out.
        let count = self.tap.count.load(Ordering::SeqCst);
        let mark = *self.mark.get_or_insert(count);
        *lock(&self.tap.waker) = Some(cx.waker().clone());
        if self.tap.count.load(Ordering::SeqCst) > mark {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock upstream: archive deliberately truncated",
            ))));
        }
        Poll::Pending
    }
}
