//! Self-tests of the test support code: they pin down how the mock upstream behaves
//! (so the proxy's tests can rely on it) and prove with the real Composer client that
//! the fixture catalogue is installable. If one of these fails, fix the mock before
//! believing any proxy test.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{
    expand, gunzip_if_needed, sha256_hex, MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY,
    TEST_PUBLIC_KEY,
};

/// Bound on every single HTTP exchange in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&gunzip_if_needed(&self.body)).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn basic(public: &str, private: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{public}:{private}"))
    )
}

fn good_auth() -> String {
    basic(TEST_PUBLIC_KEY, TEST_PRIVATE_KEY)
}

/// One request through hyper-util's legacy client (which neither follows redirects
/// nor decodes gzip, so the tests see exactly what the mock sent).
async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .expect("building a request");
    let exchange = async {
        let response = client.request(request).await.expect("request to the mock");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("request to {url} timed out"))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers).await
}

async fn get_authed(url: &str) -> Reply {
    get(url, &[("authorization", &good_auth())]).await
}

async fn start(protocol: Protocol, modules: usize) -> (MockUpstream, Arc<Catalogue>) {
    let catalogue = Arc::new(Catalogue::magento(modules));
    let mock = MockUpstream::start(MockOptions::new(protocol, catalogue.clone())).await;
    (mock, catalogue)
}

fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(bytes))
}

#[test]
fn catalogue_is_deterministic_and_well_formed() {
    let a = Catalogue::magento(25);
    let b = Catalogue::magento(25);
    assert_eq!(a.packages.len(), 25 + 4);
    let mut uids = std::collections::HashSet::new();
    let (mut null_refs, mut real_refs, mut shasums, mut empty_shasums) = (0, 0, 0, 0);
    for (pa, pb) in a.packages.iter().zip(&b.packages) {
        assert_eq!(pa.name, pb.name);
        for (va, vb) in pa.versions.iter().zip(&pb.versions) {
            assert!(uids.insert(va.uid), "duplicate uid {}", va.uid);
            match (&va.archive, &vb.archive) {
                (Some(x), Some(y)) => {
                    assert_eq!(
                        x.bytes, y.bytes,
                        "{} {} not deterministic",
                        pa.name, va.version
                    );
                    assert_eq!(x.sha1, sha1_hex(&x.bytes));
                    assert!(x.files.iter().any(|(p, _)| p == "composer.json"));
                    if va.reference_null {
                        null_refs += 1
                    } else {
                        real_refs += 1
                    }
                    if va.publish_shasum {
                        shasums += 1
                    } else {
                        empty_shasums += 1
                    }
                }
                (None, None) => assert_eq!(va.package_type, "metapackage"),
                _ => panic!("archive presence differs"),
            }
        }
    }
    assert!(null_refs > 5 && real_refs > 5 && shasums > 5 && empty_shasums > 5);
    let names: Vec<&str> = a.packages.iter().map(|p| p.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!(
        Catalogue::archive_path("magento/module-m001", "100.4.7.0"),
        "/archives/magento/module-m001/magento-module-m001-100.4.7.0.zip"
    );
    let big = a
        .version("magento/framework", "103.0.7")
        .and_then(|v| v.archive.as_ref())
        .expect("framework archive");
    assert!(
        big.bytes.len() > 200 * 1024,
        "the big archive is incompressible"
    );
    assert_eq!(
        a.package("vendorx/extension-a").map(|p| p.listing),
        Some("ext")
    );
}

#[tokio::test]
async fn v1_hash_chain_verifies_from_packages_json_to_package_files() {
    let (mock, catalogue) = start(Protocol::V1, 12).await;
    let base = mock.url();

    let root = get_authed(&format!("{base}/packages.json")).await;
    assert_eq!(root.status, StatusCode::OK);
    assert!(root.header(header::LAST_MODIFIED).is_some());
    let raw = String::from_utf8_lossy(&root.body).into_owned();
    assert!(
        raw.contains(r#""providers-url":"\/p\/%package%$%hash%.json""#),
        "{raw}"
    );
    let root_json = root.json();
    let providers_url = root_json["providers-url"].as_str().expect("providers-url");
    let includes = root_json["provider-includes"]
        .as_object()
        .expect("provider-includes");
    assert_eq!(includes.len(), 2);

    let mut seen = Vec::new();
    for (template, meta) in includes {
        let hash = meta["sha256"].as_str().expect("listing sha256");
        let listing = get_authed(&format!("{base}/{}", template.replace("%hash%", hash))).await;
        assert_eq!(listing.status, StatusCode::OK, "{template}");
        assert_eq!(sha256_hex(&gunzip_if_needed(&listing.body)), hash);
        for (name, meta) in listing.json()["providers"].as_object().expect("providers") {
            let hash = meta["sha256"].as_str().expect("package sha256");
            let url = format!(
                "{base}{}",
                providers_url
                    .replace("%package%", name)
                    .replace("%hash%", hash)
            );
            // No Accept-Encoding: repo.magento.com gzips anyway.
            let file = get_authed(&url).await;
            assert_eq!(file.status, StatusCode::OK, "{url}");
            assert_eq!(file.header(header::CONTENT_ENCODING), Some("gzip"));
            assert!(file.body.starts_with(&[0x1f, 0x8b]));
            let plain = gunzip_if_needed(&file.body);
            assert_eq!(sha256_hex(&plain), hash, "{name}");
            let json: Value = serde_json::from_slice(&plain).expect("package file JSON");
            let versions = json["packages"][name.as_str()]
                .as_object()
                .expect("versions keyed by version");
            let fixture = catalogue.package(name).expect("listed package exists");
            assert_eq!(versions.len(), fixture.versions.len());
            for v in &fixture.versions {
                let published = &versions[v.version.as_str()];
                assert_eq!(published["uid"], v.uid);
                assert_eq!(
                    published["version_normalized"],
                    v.version_normalized.as_str()
                );
                if let Some(archive) = &v.archive {
                    let dist_url = published["dist"]["url"].as_str().expect("dist url");
                    assert_eq!(
                        dist_url,
                        format!(
                            "{base}{}",
                            Catalogue::archive_path(name, &v.version_normalized)
                        )
                    );
                    let shasum = published["dist"]["shasum"].as_str().expect("shasum");
                    assert_eq!(shasum.is_empty(), !v.publish_shasum);
                    if v.publish_shasum {
                        assert_eq!(shasum, archive.sha1);
                    }
                    assert_eq!(published["dist"]["reference"].is_null(), v.reference_null);
                }
            }
            seen.push(name.clone());
        }
    }
    seen.sort();
    let all: Vec<String> = catalogue.packages.iter().map(|p| p.name.clone()).collect();
    assert_eq!(seen, all);

    // Wrong hash or unknown package: 404.
    let wrong = get_authed(&format!(
        "{base}/p/magento/framework${}.json",
        "0".repeat(64)
    ))
    .await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
    let unknown = get_authed(&format!("{base}/p/symfony/console${}.json", "0".repeat(64))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(mock.count_without_credentials(), 0);
}

#[tokio::test]
async fn packages_json_revalidates_with_if_modified_since() {
    let (mock, _) = start(Protocol::V1, 2).await;
    let url = format!("{}/packages.json", mock.url());
    let first = get_authed(&url).await;
    let last_modified = first
        .header(header::LAST_MODIFIED)
        .expect("Last-Modified")
        .to_string();
    let again = get(
        &url,
        &[
            ("authorization", &good_auth()),
            ("if-modified-since", &last_modified),
        ],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let older = httpdate::fmt_http_date(mock.last_modified() - Duration::from_secs(3600));
    let stale = get(
        &url,
        &[
            ("authorization", &good_auth()),
            ("if-modified-since", &older),
        ],
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, first.body);
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(
        recorded[1].if_modified_since.as_deref(),
        Some(&*last_modified)
    );
}

#[tokio::test]
async fn credentials_are_required_and_rotatable() {
    let (mock, _) = start(Protocol::V1, 2).await;
    let url = format!("{}/packages.json", mock.url());

    let none = get(&url, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.header(header::CONTENT_TYPE), Some("application/json"));
    assert!(none.json()["warning"].is_string());

    let wrong = get(&url, &[("authorization", &basic(TEST_PUBLIC_KEY, "nope"))]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get_authed(&url).await.status, StatusCode::OK);
    assert_eq!(mock.count_without_credentials(), 2);
    assert_eq!(mock.count("/packages.json"), 3);

    mock.set_reject_keys(true);
    let rejected = get_authed(&url).await;
    assert_eq!(rejected.status, StatusCode::UNAUTHORIZED);
    assert!(rejected.json()["warning"].is_string());
    mock.set_reject_keys(false);

    let (public, private) = ("a".repeat(32), "b".repeat(32));
    mock.set_accepted_keys(&public, &private);
    assert_eq!(get_authed(&url).await.status, StatusCode::UNAUTHORIZED);
    let rotated = get(&url, &[("authorization", &basic(&public, &private))]).await;
    assert_eq!(rotated.status, StatusCode::OK);

    mock.reset_counts();
    assert_eq!(mock.count("/packages.json"), 0);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn dollar_may_be_percent_encoded() {
    let (mock, _) = start(Protocol::V1, 2).await;
    let root = get_authed(&format!("{}/packages.json", mock.url()))
        .await
        .json();
    let hash = root["provider-includes"]["p/provider-ce$%hash%.json"]["sha256"]
        .as_str()
        .expect("ce listing hash")
        .to_string();
    let raw = get_authed(&format!("{}/p/provider-ce${hash}.json", mock.url())).await;
    let encoded = get_authed(&format!("{}/p/provider-ce%24{hash}.json", mock.url())).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(encoded.status, StatusCode::OK);
    assert_eq!(raw.body, encoded.body);
    let decoded_path = format!("/p/provider-ce${hash}.json");
    assert_eq!(mock.count(&decoded_path), 2);
    assert_eq!(mock.count_prefix("/p/provider-"), 2);
    let last = mock.requests().pop().expect("recorded");
    assert_eq!(
        last.raw_path_and_query,
        format!("/p/provider-ce%24{hash}.json")
    );
    assert_eq!(last.path, decoded_path);
}

#[tokio::test]
async fn archives_match_their_published_shasum() {
    let (mock, catalogue) = start(Protocol::V1, 3).await;
    for package in &catalogue.packages {
        for v in &package.versions {
            let Some(archive) = &v.archive else { continue };
            let url = format!(
                "{}{}",
                mock.url(),
                Catalogue::archive_path(&package.name, &v.version_normalized)
            );
            let reply = get_authed(&url).await;
            if package.name == Catalogue::not_entitled_name() {
                assert_eq!(reply.status, StatusCode::NOT_FOUND);
                assert!(reply.json()["warning"].is_string());
                continue;
            }
            assert_eq!(reply.status, StatusCode::OK, "{url}");
            assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/zip"));
            assert_eq!(
                reply.header(header::CONTENT_LENGTH),
                Some(archive.bytes.len().to_string().as_str())
            );
            assert_eq!(sha1_hex(&reply.body), archive.sha1);
            assert_eq!(reply.body, archive.bytes);
        }
    }
    let missing = get_authed(&format!(
        "{}/archives/nope/nope/nope-1.0.0.0.zip",
        mock.url()
    ))
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let other = get_authed(&format!("{}/anything/else", mock.url())).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert!(other.json()["warning"].is_string());
}

#[tokio::test]
async fn archive_redirect_goes_to_a_second_host_without_credentials() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mut opts = MockOptions::new(Protocol::V1, catalogue.clone());
    opts.redirect_archives = true;
    let mock = MockUpstream::start(opts).await;
    let archive_host = mock.archive_host_url().expect("archive host");
    assert_ne!(archive_host, mock.url());

    let v = catalogue
        .version("magento/framework", "103.0.7")
        .expect("fixture");
    let path = Catalogue::archive_path("magento/framework", &v.version_normalized);

    let unauthenticated = get(&format!("{}{path}", mock.url()), &[]).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    let redirect = get_authed(&format!("{}{path}", mock.url())).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    let location = redirect
        .header(header::LOCATION)
        .expect("Location")
        .to_string();
    assert_eq!(location, format!("{archive_host}{path}"));

    let archive = get(&location, &[]).await;
    assert_eq!(archive.status, StatusCode::OK);
    assert_eq!(
        archive.body,
        v.archive.as_ref().expect("framework archive").bytes
    );
    let received = mock.archive_host_requests();
    assert_eq!(received.len(), 1);
    assert!(received[0].authorization.is_none());
    assert_eq!(received[0].path, path);
    // The archive host serves nothing but archives.
    let json = get(&format!("{archive_host}/packages.json"), &[]).await;
    assert_eq!(json.status, StatusCode::NOT_FOUND);
}

/// Sends one raw HTTP/1.1 request and reads until the server closes the connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: String) -> (String, Vec<u8>) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the mock");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut received = Vec::new();
        // A reset instead of a clean close is also an end of the response.
        let _ = stream.read_to_end(&mut received).await;
        received
    };
    let received = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("raw exchange timed out");
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    (
        String::from_utf8_lossy(&received[..split]).into_owned(),
        received[split + 4..].to_vec(),
    )
}

#[tokio::test]
async fn truncated_archives_announce_the_full_length_and_stop_halfway() {
    let (mock, catalogue) = start(Protocol::V1, 2).await;
    let v = catalogue
        .version("magento/framework", "103.0.7")
        .expect("fixture");
    let archive = v.archive.as_ref().expect("archive");
    let path = Catalogue::archive_path("magento/framework", &v.version_normalized);
    mock.set_truncate_archives(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
        mock.addr(),
        good_auth()
    );
    let (head, body) = raw_exchange(mock.addr(), request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", archive.bytes.len())),
        "{head}"
    );
    assert_eq!(body.len(), archive.bytes.len() / 2);
    assert_eq!(body, archive.bytes[..body.len()]);

    mock.set_truncate_archives(false);
    mock.set_corrupt_archives(true);
    let corrupt = get_authed(&format!("{}{path}", mock.url())).await;
    assert_eq!(corrupt.status, StatusCode::OK);
    assert_eq!(corrupt.body.len(), archive.bytes.len());
    assert_ne!(sha1_hex(&corrupt.body), archive.sha1);
    mock.set_corrupt_archives(false);
    let fine = get_authed(&format!("{}{path}", mock.url())).await;
    assert_eq!(sha1_hex(&fine.body), archive.sha1);
}

#[tokio::test]
async fn failure_delay_and_stop() {
    let (mock, _) = start(Protocol::V1, 2).await;
    let url = format!("{}/packages.json", mock.url());

    mock.set_failure(Some(503));
    let failed = get_authed(&url).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.json()["warning"].is_string());
    mock.set_failure(Some(500));
    assert_eq!(
        get_authed(&url).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    mock.set_failure(None);

    mock.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get_authed(&url).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    mock.set_delay(Duration::ZERO);

    // An idle keep-alive connection must be closed by stop().
    let mut idle = TcpStream::connect(mock.addr()).await.expect("connect");
    idle.write_all(
        format!(
            "GET /search.json HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            good_auth()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(REQUEST_TIMEOUT, idle.read(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    tokio::time::timeout(REQUEST_TIMEOUT, mock.stop())
        .await
        .expect("stop in time");
    let closed = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "open connection closed by stop()");
    assert!(TcpStream::connect(mock.addr()).await.is_err());
}

#[tokio::test]
async fn p2_minified_metadata_expands_to_the_catalogue() {
    let catalogue = Arc::new(Catalogue::magento(12));
    let mut opts = MockOptions::new(Protocol::P2, catalogue.clone());
    opts.minify_p2 = true;
    let mock = MockUpstream::start(opts).await;
    let base = mock.url();

    let root = get_authed(&format!("{base}/packages.json")).await.json();
    assert_eq!(root["metadata-url"], "/p2/%package%.json");
    let available: Vec<&str> = root["available-packages"]
        .as_array()
        .expect("available-packages")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(available.len(), catalogue.packages.len());

    for package in &catalogue.packages {
        for dev in [false, true] {
            let suffix = if dev { "~dev" } else { "" };
            let url = format!("{base}/p2/{}{suffix}.json", package.name);
            let reply = get_authed(&url).await;
            assert_eq!(reply.status, StatusCode::OK, "{url}");
            assert!(reply.header(header::CONTENT_ENCODING).is_none());
            let json = reply.json();
            assert_eq!(json["minified"], "composer/2.0");
            let minified = json["packages"][package.name.as_str()]
                .as_array()
                .expect("version list")
                .clone();
            let expected: Vec<Value> = package
                .versions
                .iter()
                .filter(|v| v.is_dev() == dev)
                .map(|v| {
                    let url = format!(
                        "{base}{}",
                        Catalogue::archive_path(&package.name, &v.version_normalized)
                    );
                    v.metadata(&package.name, &url)
                })
                .collect();
            assert_eq!(expand(&minified), expected, "{url}");
        }
    }
    let framework_dev = get_authed(&format!("{base}/p2/magento/framework~dev.json"))
        .await
        .json();
    assert_eq!(
        framework_dev["packages"]["magento/framework"][0]["version"],
        "dev-2.4-develop"
    );

    // gzip only on request, and 304 on revalidation.
    let url = format!("{base}/p2/magento/framework.json");
    let gz = get(
        &url,
        &[("authorization", &good_auth()), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(gz.header(header::CONTENT_ENCODING), Some("gzip"));
    assert_eq!(
        gunzip_if_needed(&gz.body),
        mock.file_bytes("/p2/magento/framework.json")
            .expect("served file")
    );
    let since = gz
        .header(header::LAST_MODIFIED)
        .expect("Last-Modified")
        .to_string();
    let not_modified = get(
        &url,
        &[
            ("authorization", &good_auth()),
            ("if-modified-since", &since),
        ],
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let unknown = get_authed(&format!("{base}/p2/symfony/console.json")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // v1 paths do not exist in a p2 repository.
    let v1 = get_authed(&format!("{base}/p/magento/framework$0.json")).await;
    assert_eq!(v1.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn notify_batch_and_search() {
    let (mock, _) = start(Protocol::V1, 1).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = Bytes::from_static(
        br#"{"downloads":[{"name":"magento/framework","version":"103.0.7.0"}]}"#,
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/downloads/", mock.url()))
        .header("authorization", good_auth())
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let recorded = mock.requests();
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].body, body);
    let search = get_authed(&format!("{}/search.json?q=x&type=", mock.url())).await;
    assert_eq!(search.status, StatusCode::OK);
    assert_eq!(mock.count("/search.json"), 1);
}

/// Runs a composer command off the async runtime's worker threads.
async fn composer_blocking(project: Arc<ComposerProject>, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        project.run_ok(&args)
    })
    .await
    .expect("composer task")
}

fn installs_product(mock: &MockUpstream) -> ComposerProject {
    let host = mock.addr().to_string();
    ComposerProject::new(
        &mock.url(),
        &[("magento/product-community-edition", "2.4.7")],
    )
    .with_http_basic(&host, TEST_PUBLIC_KEY, TEST_PRIVATE_KEY)
}

fn assert_product_installed(project: &ComposerProject, catalogue: &Catalogue) {
    let locked = project.locked_versions();
    assert_eq!(
        locked
            .get("magento/product-community-edition")
            .map(String::as_str),
        Some("2.4.7")
    );
    assert_eq!(
        locked.get("magento/framework").map(String::as_str),
        Some("103.0.7")
    );
    assert_eq!(
        locked.get("vendorx/extension-a").map(String::as_str),
        Some("1.1.0")
    );
    assert!(!locked.contains_key(Catalogue::not_entitled_name()));
    assert_installed_matches(project, catalogue, "magento/framework", "103.0.7");
    assert_installed_matches(project, catalogue, "magento/module-m001", "100.4.7");
    assert_installed_matches(project, catalogue, "magento/module-m014", "100.4.7");
    assert_installed_matches(project, catalogue, "magento/module-m020", "100.4.7");
    assert_installed_matches(project, catalogue, "vendorx/extension-a", "1.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_composer_installs_from_the_p2_mock() {
    let catalogue = Arc::new(Catalogue::magento(20));
    let mut opts = MockOptions::new(Protocol::P2, catalogue.clone());
    opts.minify_p2 = true;
    let mock = MockUpstream::start(opts).await;
    let project = Arc::new(installs_product(&mock));

    composer_blocking(project.clone(), &["update"]).await;
    assert_product_installed(&project, &catalogue);
    assert_eq!(mock.count_without_credentials(), 0);
    // available-packages keeps Composer from asking for names the repository lacks.
    for r in mock.requests() {
        if let Some(file) = r.path.strip_prefix("/p2/") {
            let name = file.trim_end_matches(".json").trim_end_matches("~dev");
            assert!(catalogue.package(name).is_some(), "asked for {}", r.path);
        }
    }
    assert_eq!(mock.count_prefix("/archives/"), 1 + 20 + 1);
    assert_eq!(mock.count("/downloads/"), 1);
    // With minimum-stability "stable" Composer never asks for ~dev files.
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.path.ends_with("~dev.json"))
            .count(),
        0
    );

    // Updating again with a warm cache revalidates every metadata file with
    // If-Modified-Since (answered 304) and downloads nothing.
    mock.reset_counts();
    composer_blocking(project.clone(), &["update"]).await;
    let metadata: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/packages.json" || r.path.starts_with("/p2/"))
        .collect();
    // packages.json, the product, the framework, 20 modules, the extension.
    assert_eq!(metadata.len(), 1 + 1 + 1 + 20 + 1);
    assert!(metadata.iter().all(|r| r.if_modified_since.is_some()));
    assert_eq!(mock.count_prefix("/archives/"), 0);

    // A second install from the lock with an empty cache downloads everything again
    // and revalidates nothing (installs from a lock never read metadata).
    mock.reset_counts();
    std::fs::remove_dir_all(project.path().join("vendor")).expect("remove vendor");
    project.fresh_cache();
    composer_blocking(project.clone(), &["install"]).await;
    assert_product_installed(&project, &catalogue);
    assert_eq!(mock.count_prefix("/archives/"), 1 + 20 + 1);
    assert_eq!(mock.count_prefix("/p2/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_composer_installs_from_the_v1_mock_with_redirected_archives() {
    let catalogue = Arc::new(Catalogue::magento(20));
    let mut opts = MockOptions::new(Protocol::V1, catalogue.clone());
    opts.redirect_archives = true;
    let mock = MockUpstream::start(opts).await;
    let project = Arc::new(installs_product(&mock));

    composer_blocking(project.clone(), &["update"]).await;
    assert_product_installed(&project, &catalogue);
    assert_eq!(mock.count_without_credentials(), 0);
    let cdn = mock.archive_host_requests();
    assert_eq!(cdn.len(), 1 + 20 + 1);
    assert!(
        cdn.iter().all(|r| r.authorization.is_none()),
        "Composer must not send the keys to another host"
    );
}

#[test]
fn composer_runs_are_bounded_by_a_timeout() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (mock, _) = runtime.block_on(start(Protocol::P2, 1));
    // The mock stalls far longer than the harness lets composer run.
    mock.set_delay(Duration::from_secs(120));
    let project = ComposerProject::new(&mock.url(), &[("magento/framework", "103.0.7")])
        .with_http_basic(&mock.addr().to_string(), TEST_PUBLIC_KEY, TEST_PRIVATE_KEY)
        .with_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| project.run(&["update"])));
    let message = match outcome {
        Ok(output) => panic!("composer finished despite the stalled upstream: {output:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(message.contains("did not finish within"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(mock.count("/packages.json"), 1);
}
