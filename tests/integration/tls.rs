//! TLS as clients meet it. Debian's real Composer installs through the proxy over HTTPS with
//! nothing but a `cafile` (secure-http stays on, as by default) and speaks HTTP/2 to it;
//! certificates replaced on disk while the proxy runs reach new connections, leave open ones
//! working, and a broken replacement changes nothing but the log; and HTTP/2 streams whose
//! client shuts its window are reset after `client_send_timeout_secs`, as on the plain port.
//!
//! Composer speaks HTTP/2 through php-curl when libcurl has it: Debian 12's libcurl4 (7.88) is
//! built with nghttp2, so the packages `.ci/run` installs are enough.
//!
//! The real binary runs (`ProxyProcess`), so certificates are reloaded exactly as in
//! production, by its file watcher, and every wait is on a line of its JSON log. Composer and
//! the log waits block, so the runtime is multi-threaded and they run in `block_in_place`,
//! leaving the mock upstream free to serve.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::task::block_in_place;
use tokio_rustls::TlsConnector;

use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::base_env;

const PRODUCT: &str = "magento/product-community-edition";
/// Enough modules for Composer to download many archives at once over its connections.
const MODULES: usize = 20;
const RELOAD_FAILED: &str = "TLS certificate reload failed; keeping the current one";

/// A certificate authority made for one test; clients trust it through `cafile` or a root store.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate for 127.0.0.1 and localhost, signed by a [`TestCa`].
struct ServerCert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "composer-proxy test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Certificates differ by common name (and by key and serial, both random).
    fn server_cert(&self, common_name: &str) -> ServerCert {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .expect("temporary paths are UTF-8")
        .to_string()
}

/// A directory laid out like a mounted Kubernetes secret: `tls.crt` and `tls.key` are links
/// through `..data` to a directory per version, and an update swaps `..data` with one rename,
/// so the proxy can never read one version's certificate with the other's key.
struct SecretDir {
    dir: TempDir,
    version: u32,
}

impl SecretDir {
    fn new(cert: &ServerCert) -> SecretDir {
        let mut secret = SecretDir {
            dir: tempfile::tempdir().expect("secret directory"),
            version: 0,
        };
        secret.update(&cert.cert_pem, &cert.key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.path().join(name))
                .expect("secret file link");
        }
        secret
    }

    fn update(&mut self, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let version = format!("..version_{}", self.version);
        let data = self.dir.path().join(&version);
        std::fs::create_dir(&data).expect("secret version directory");
        write(&data.join("tls.crt"), cert_pem);
        write(&data.join("tls.key"), key_pem);
        let link = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).expect("new ..data link");
        std::fs::rename(&link, self.dir.path().join("..data")).expect("swapping ..data");
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

/// The real binary with TLS on, in front of `mock`, caching in `cache`.
fn start_proxy(mock: &MockUpstream, cert: &Path, key: &Path, cache: &Path) -> ProxyProcess {
    start_proxy_with(mock, cert, key, cache, &[])
}

/// As [`start_proxy`], with `settings` (`COMPOSER_PROXY_*` names without the prefix).
fn start_proxy_with(
    mock: &MockUpstream,
    cert: &Path,
    key: &Path,
    cache: &Path,
    settings: &[(&str, &str)],
) -> ProxyProcess {
    let mut env = base_env(&mock.url());
    env.extend([
        ("COMPOSER_PROXY_CACHE_DIR".to_string(), path_str(cache)),
        ("COMPOSER_PROXY_TLS_CERT".to_string(), path_str(cert)),
        ("COMPOSER_PROXY_TLS_KEY".to_string(), path_str(key)),
    ]);
    env.extend(
        settings
            .iter()
            .map(|(k, v)| (format!("COMPOSER_PROXY_{k}"), (*v).to_string())),
    );
    let process = block_in_place(|| ProxyProcess::start(&env));
    assert!(
        process.url.starts_with("https://127.0.0.1:"),
        "public URL {}",
        process.url
    );
    process
}

/// Opens a TLS connection that trusts only `ca_pem` and offers only HTTP/2, and returns an
/// HTTP/2 client on it with the certificate the proxy presented.
async fn connect(
    addr: &str,
    ca_pem: &str,
) -> (http2::SendRequest<Empty<Bytes>>, CertificateDer<'static>) {
    connect_with(addr, ca_pem, &http2::Builder::new(TokioExecutor::new())).await
}

/// As [`connect`], with the HTTP/2 settings of `builder`.
async fn connect_with(
    addr: &str,
    ca_pem: &str,
    builder: &http2::Builder<TokioExecutor>,
) -> (http2::SendRequest<Empty<Bytes>>, CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("TCP connection");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("IP name"), tcp)
        .await
        .expect("a TLS handshake the test CA vouches for");
    let session = tls.get_ref().1;
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 agreed");
    let presented = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned();
    let (sender, connection) = builder
        .handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, presented)
}

/// One GET on an open connection; fails if the connection was dropped.
async fn get(sender: &mut http2::SendRequest<Empty<Bytes>>, url: &str) -> StatusCode {
    get_body(sender, url).await.0
}

/// As [`get`], with the whole body.
async fn get_body(sender: &mut http2::SendRequest<Empty<Bytes>>, url: &str) -> (StatusCode, Bytes) {
    sender.ready().await.expect("the connection is still open");
    let response = sender
        .send_request(Request::get(url).body(Empty::new()).expect("request"))
        .await
        .expect("an answer on this connection");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    (status, body)
}

fn is_access_line(v: &Value) -> bool {
    v["target"] == "composer_proxy::access" && v["message"] == "request"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_over_https_with_a_cafile_and_http2() {
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let ca = TestCa::new();
    let server = ca.server_cert("composer-proxy test server");
    let files = tempfile::tempdir().expect("TLS files");
    let (ca_file, cert, key) = (
        files.path().join("ca.pem"),
        files.path().join("cert.pem"),
        files.path().join("key.pem"),
    );
    write(&ca_file, &ca.pem);
    write(&cert, &server.cert_pem);
    write(&key, &server.key_pem);
    let cache = tempfile::tempdir().expect("cache dir");
    let process = start_proxy(&mock, &cert, &key, cache.path());

    let project = ComposerProject::new(&process.url, &[(PRODUCT, "2.4.6")])
        .with_extra_config("cafile", json!(path_str(&ca_file)));
    assert!(
        project.composer_json()["config"]
            .get("secure-http")
            .is_none(),
        "secure-http is left at its default (on)"
    );
    block_in_place(|| project.run_ok(&["install", "--no-progress"]));

    let product = catalogue.version(PRODUCT, "2.4.6").expect("product");
    let locked = project.locked_versions();
    for (name, _) in &product.require {
        let version = locked
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in composer.lock"));
        assert_installed_matches(&project, &catalogue, name, version);
    }
    let lock = project.lock();
    let dist_urls: Vec<&str> = lock["packages"]
        .as_array()
        .expect("locked packages")
        .iter()
        .filter_map(|p| p["dist"]["url"].as_str())
        .collect();
    assert!(dist_urls.len() > MODULES, "{} archives", dist_urls.len());
    let proxy_dists = format!("{}/dists/", process.url);
    for url in &dist_urls {
        assert!(url.starts_with(&proxy_dists), "{url} is not the proxy's");
    }
    assert_eq!(
        mock.count_prefix("/archives/"),
        dist_urls.len(),
        "upstream served each archive once"
    );
    assert!(mock.count("/packages.json") >= 1);
    assert_eq!(
        mock.count_without_credentials(),
        0,
        "every upstream request carried the keys"
    );

    // The access log names the protocol of every request. Wait for the archive lines (the log
    // is written in the background), then every line Composer caused must be HTTP/2.
    let archive_lines = block_in_place(|| {
        process.wait_for_logs(dist_urls.len(), |v| {
            is_access_line(v) && v["route"] == "archive"
        })
    });
    assert!(archive_lines.is_some(), "{}", process.log_text());
    let requests: Vec<Value> = process
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(is_access_line)
        .collect();
    assert!(
        requests.len() > dist_urls.len(),
        "metadata and archive requests logged"
    );
    for request in &requests {
        assert_eq!(request["version"], "HTTP/2.0", "{request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let mock = MockUpstream::start(MockOptions::new(
        Protocol::V1,
        Arc::new(Catalogue::magento(1)),
    ))
    .await;
    let ca = TestCa::new();
    let a = ca.server_cert("composer-proxy test server A");
    let b = ca.server_cert("composer-proxy test server B, rotated");
    assert_ne!(a.der, b.der);
    let mut secret = SecretDir::new(&a);
    let cache = tempfile::tempdir().expect("cache dir");
    let process = start_proxy(&mock, &secret.cert(), &secret.key(), cache.path());
    let url = format!("{}/packages.json", process.url);

    let (mut open, presented) = connect(&process.listen, &ca.pem).await;
    assert!(presented == a.der, "the proxy starts with certificate A");
    assert_eq!(get(&mut open, &url).await, StatusCode::OK);

    // Rotated as Kubernetes updates a mounted secret; the proxy notices by itself.
    secret.update(&b.cert_pem, &b.key_pem);
    let reloaded = block_in_place(|| process.wait_for_log(|v| v["event"] == "config_reloaded"));
    assert!(reloaded.is_some(), "no reload: {}", process.log_text());
    assert!(
        !process.log_text().contains(RELOAD_FAILED),
        "{}",
        process.log_text()
    );

    let (mut fresh, presented) = connect(&process.listen, &ca.pem).await;
    assert!(presented == b.der, "a new connection gets certificate B");
    assert_eq!(get(&mut fresh, &url).await, StatusCode::OK);
    assert_eq!(
        get(&mut open, &url).await,
        StatusCode::OK,
        "the connection opened with certificate A still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replacement_certificate_is_logged_and_the_current_one_kept() {
    let mock = MockUpstream::start(MockOptions::new(
        Protocol::V1,
        Arc::new(Catalogue::magento(1)),
    ))
    .await;
    let ca = TestCa::new();
    let current = ca.server_cert("composer-proxy test server");
    let files = tempfile::tempdir().expect("TLS files");
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    write(&cert, &current.cert_pem);
    write(&key, &current.key_pem);
    let cache = tempfile::tempdir().expect("cache dir");
    let process = start_proxy(&mock, &cert, &key, cache.path());
    let url = format!("{}/packages.json", process.url);
    let (mut open, presented) = connect(&process.listen, &ca.pem).await;
    assert!(presented == current.der);

    // A certificate cut off half-way, as an interrupted copy leaves it, put in place the way
    // deploy tools do: written beside the old file, then renamed over it.
    let broken = &current.cert_pem[..current.cert_pem.len() / 2];
    let temporary = files.path().join("cert.pem.tmp");
    write(&temporary, broken);
    std::fs::rename(&temporary, &cert).expect("renaming over the certificate");

    let error = block_in_place(|| process.wait_for_log(|v| v["message"] == RELOAD_FAILED));
    let error = error.unwrap_or_else(|| panic!("no reload error: {}", process.log_text()));
    assert_eq!(error["level"], "ERROR");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("tls_cert")),
        "the error names the setting: {error}"
    );

    let (mut fresh, presented) = connect(&process.listen, &ca.pem).await;
    assert!(
        presented == current.der,
        "new connections still get the current certificate"
    );
    assert_eq!(get(&mut fresh, &url).await, StatusCode::OK);
    assert_eq!(get(&mut open, &url).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_with_a_shut_window_over_tls_are_reset_after_the_send_timeout() {
    // Larger than the socket buffers, TLS's and hyper's together, so a stream that takes
    // nothing really stalls its body.
    const BIG: usize = 16 * 1024 * 1024;
    /// A safety net only: nothing waits this long unless the proxy misbehaves.
    const SAFETY: Duration = Duration::from_secs(30);
    let name = format!("bench/blob-{BIG}");
    let catalogue = Arc::new(Catalogue::with_sized_archives(2, &[BIG]));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let ca = TestCa::new();
    let server = ca.server_cert("composer-proxy test server");
    let files = tempfile::tempdir().expect("TLS files");
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    write(&cert, &server.cert_pem);
    write(&key, &server.key_pem);
    let cache = tempfile::tempdir().expect("cache dir");
    let process = start_proxy_with(
        &mock,
        &cert,
        &key,
        cache.path(),
        &[
            ("CLIENT_SEND_TIMEOUT_SECS", "1"),
            // Slots to spare and idle connections kept: only the send timeout acts here.
            ("MAX_CONNECTIONS", "8"),
            ("CLIENT_HEADER_TIMEOUT_SECS", "300"),
        ],
    );

    // A client that reads, on a connection of its own; it stores the archive first, so the
    // stalled reads are of the file on disk.
    let (mut reader, _) = connect(&process.listen, &ca.pem).await;
    let (status, p2) = get_body(&mut reader, &format!("{}/p2/{name}.json", process.url)).await;
    assert_eq!(status, StatusCode::OK);
    let p2: Value = serde_json::from_slice(&p2).expect("p2 JSON");
    let url = p2["packages"][&name][0]["dist"]["url"]
        .as_str()
        .expect("a dist URL")
        .to_string();
    let (status, whole) = get_body(&mut reader, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(whole.len() > BIG);

    // A zero stream window: the proxy may send headers, never a byte of a body.
    let mut zero_window = http2::Builder::new(TokioExecutor::new());
    zero_window
        .initial_stream_window_size(0)
        .adaptive_window(false);
    let (mut stalled, _) = connect_with(&process.listen, &ca.pem, &zero_window).await;
    let started = Instant::now();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        stalled.ready().await.expect("the connection is open");
        let response = stalled
            .send_request(Request::get(&url).body(Empty::new()).expect("request"))
            .await
            .expect("headers");
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.into_body());
    }
    // The other client is served while the streams are stalled.
    let health = format!("{}/healthz", process.url);
    assert_eq!(get(&mut reader, &health).await, StatusCode::OK);
    crate::support::proxy::assert_reset_after_a_second(bodies, started).await;

    // Counted and logged as HTTP/2 stalls; the connection itself stays open, and the other
    // client is still served.
    let metrics = format!("{}/metrics", process.url);
    let sample = "composer_proxy_responses_stalled_total{protocol=\"http2\"} 4\n";
    loop {
        let (status, body) = get_body(&mut reader, &metrics).await;
        if status == StatusCode::OK && String::from_utf8_lossy(&body).contains(sample) {
            break;
        }
        assert!(started.elapsed() < SAFETY, "no {sample} in the metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = block_in_place(|| {
        process.wait_for_logs(4, |v| {
            v["event"] == "client_stalled" && v["protocol"] == "HTTP/2"
        })
    });
    assert!(logged.is_some(), "{}", process.log_text());
    assert!(!stalled.is_closed());
    assert_eq!(get(&mut reader, &health).await, StatusCode::OK);
}
