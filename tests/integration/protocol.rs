//! The proxy's Composer protocol, pinned at the HTTP level against the mock repo.magento.com:
//! the rewritten v1 hash chain, the v1 → p2 translation, `%24`, conditional requests, gzip,
//! notifications, search, and what clients are told when upstream fails.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use composer_proxy::composer::sha256_hex;
use flate2::read::GzDecoder;
use http::{Method, StatusCode};
use serde_json::Value;
use std::io::Read;
use support::catalogue::Catalogue;
use support::mock_upstream::{
    MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY,
};
use support::proxy::{base_env, get, get_with, request, TestProxy};

async fn v1_setup(modules: usize) -> (Arc<Catalogue>, MockUpstream, TestProxy) {
    let catalogue = Arc::new(Catalogue::magento(modules));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let proxy = TestProxy::start(&mock.url()).await;
    (catalogue, mock, proxy)
}

fn no_key_material(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.contains(TEST_PUBLIC_KEY) && !text.contains(TEST_PRIVATE_KEY),
        "key material in {text}"
    );
}

#[tokio::test]
async fn rewritten_v1_chain_verifies_like_composer_1_walks_it() {
    let (catalogue, mock, proxy) = v1_setup(12).await;
    assert_eq!(
        get(&format!("{}/packages.json", proxy.url)).await.status,
        StatusCode::OK
    );
    tokio::time::timeout(Duration::from_secs(30), proxy.wait_for_v1_chain())
        .await
        .expect("the v1 chain is built");

    let root = get(&format!("{}/packages.json", proxy.url)).await.json();
    let providers_url = root["providers-url"].as_str().expect("providers-url");
    assert_eq!(
        providers_url,
        format!("{}/p/%package%$%hash%.json", proxy.url)
    );
    assert_eq!(
        root["metadata-url"],
        format!("{}/p2/%package%.json", proxy.url)
    );
    let includes = root["provider-includes"]
        .as_object()
        .expect("provider-includes");
    assert_eq!(includes.len(), 2);
    let mut seen = 0;
    for (template, meta) in includes {
        let hash = meta["sha256"].as_str().expect("sha256");
        // Composer: baseUrl + '/' + template with %hash% replaced, then checks the sha256.
        let listing = get(&format!(
            "{}/{}",
            proxy.url,
            template.replace("%hash%", hash)
        ))
        .await;
        assert_eq!(listing.status, StatusCode::OK, "{template}");
        assert_eq!(
            sha256_hex(&listing.body),
            hash,
            "listing {template} matches its hash"
        );
        for (name, meta) in listing.json()["providers"].as_object().expect("providers") {
            let hash = meta["sha256"].as_str().expect("sha256");
            let url = providers_url
                .replace("%package%", name)
                .replace("%hash%", hash);
            let file = get(&url).await;
            assert_eq!(file.status, StatusCode::OK, "{url}");
            assert_eq!(
                sha256_hex(&file.body),
                hash,
                "package file of {name} matches its hash"
            );
            let json = file.json();
            for version in json["packages"][name]
                .as_object()
                .expect("versions")
                .values()
            {
                assert!(version["uid"].is_u64(), "uid kept for {name}");
                if let Some(url) = version["dist"]["url"].as_str() {
                    assert!(
                        url.starts_with(&format!("{}/dists/{name}/", proxy.url)),
                        "{url}"
                    );
                }
            }
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        catalogue.packages.len(),
        "every package is reachable through the chain"
    );
    assert_eq!(mock.count_without_credentials(), 0);
}

#[tokio::test]
async fn p2_files_are_translated_from_v1_with_dev_versions_split_out() {
    let (catalogue, _mock, proxy) = v1_setup(12).await;
    let stable = get(&format!("{}/p2/magento/framework.json", proxy.url)).await;
    assert_eq!(stable.status, StatusCode::OK);
    let dev = get(&format!("{}/p2/magento/framework~dev.json", proxy.url)).await;
    assert_eq!(dev.status, StatusCode::OK);
    let versions = |reply: &support::proxy::Reply| -> Vec<String> {
        let mut v: Vec<String> = reply.json()["packages"]["magento/framework"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v["version"].as_str().expect("version").to_string())
            .collect();
        v.sort();
        v
    };
    let fixture = catalogue.package("magento/framework").expect("fixture");
    let mut expected_stable: Vec<String> = fixture
        .versions
        .iter()
        .filter(|v| !v.is_dev())
        .map(|v| v.version.clone())
        .collect();
    let mut expected_dev: Vec<String> = fixture
        .versions
        .iter()
        .filter(|v| v.is_dev())
        .map(|v| v.version.clone())
        .collect();
    expected_stable.sort();
    expected_dev.sort();
    assert!(!expected_dev.is_empty());
    assert_eq!(versions(&stable), expected_stable);
    assert_eq!(versions(&dev), expected_dev);
    for v in stable.json()["packages"]["magento/framework"]
        .as_array()
        .expect("list")
    {
        assert_eq!(v["name"], "magento/framework");
        assert!(v["uid"].is_u64());
    }
}

#[tokio::test]
async fn dollar_sign_may_arrive_percent_encoded() {
    let (_catalogue, _mock, proxy) = v1_setup(3).await;
    get(&format!("{}/packages.json", proxy.url)).await;
    tokio::time::timeout(Duration::from_secs(30), proxy.wait_for_v1_chain())
        .await
        .expect("chain");
    let root = get(&format!("{}/packages.json", proxy.url)).await.json();
    let (template, meta) = root["provider-includes"]
        .as_object()
        .expect("includes")
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("one");
    let path = template.replace("%hash%", meta["sha256"].as_str().expect("hash"));
    let plain = get(&format!("{}/{path}", proxy.url)).await;
    let encoded = get(&format!("{}/{}", proxy.url, path.replace('$', "%24"))).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(encoded.status, StatusCode::OK);
    assert_eq!(plain.body, encoded.body);
}

#[tokio::test]
async fn if_modified_since_gets_304_with_an_empty_body() {
    let (_catalogue, _mock, proxy) = v1_setup(3).await;
    for path in ["/p2/magento/framework.json", "/packages.json"] {
        let first = get(&format!("{}{path}", proxy.url)).await;
        let lm = first.headers["last-modified"]
            .to_str()
            .expect("ascii")
            .to_string();
        let again = get_with(
            &format!("{}{path}", proxy.url),
            &[("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty());
        let old = get_with(
            &format!("{}{path}", proxy.url),
            &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")],
        )
        .await;
        assert_eq!(old.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn metadata_is_gzipped_only_for_clients_that_accept_it() {
    let (_catalogue, _mock, proxy) = v1_setup(3).await;
    let url = format!("{}/p2/magento/framework.json", proxy.url);
    let plain = get(&url).await;
    assert!(plain.headers.get("content-encoding").is_none());
    let zipped = get_with(&url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(zipped.headers["content-encoding"], "gzip");
    let mut decoded = Vec::new();
    GzDecoder::new(&zipped.body[..])
        .read_to_end(&mut decoded)
        .expect("gzip");
    assert_eq!(decoded, plain.body);
}

#[tokio::test]
async fn clients_own_authorization_is_never_forwarded() {
    let (_catalogue, mock, proxy) = v1_setup(3).await;
    let client_auth = "Basic Y2xpZW50OnNlY3JldA==";
    let reply = get_with(
        &format!("{}/p2/magento/framework.json", proxy.url),
        &[("authorization", client_auth)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let requests = mock.requests();
    assert!(!requests.is_empty());
    for r in requests {
        assert!(r.credentials_ok, "{} carried the proxy's keys", r.path);
        assert_ne!(r.authorization.as_deref(), Some(client_auth));
    }
}

#[tokio::test]
async fn unknown_packages_get_a_quick_404_without_asking_upstream() {
    let (_catalogue, mock, proxy) = v1_setup(3).await;
    get(&format!("{}/packages.json", proxy.url)).await;
    let before = mock.requests().len();
    for path in ["/p2/symfony/console.json", "/p2/symfony/console~dev.json"] {
        let reply = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.headers["content-type"], "application/json");
    }
    // The chain build may still be fetching package files, but never symfony's.
    assert!(mock
        .requests()
        .iter()
        .skip(before)
        .all(|r| !r.path.contains("symfony")));
}

#[tokio::test]
async fn archives_stream_through_byte_for_byte() {
    let (catalogue, mock, proxy) = v1_setup(3).await;
    let p2 = get(&format!("{}/p2/magento/module-m001.json", proxy.url))
        .await
        .json();
    for version in p2["packages"]["magento/module-m001"]
        .as_array()
        .expect("list")
    {
        let url = version["dist"]["url"].as_str().expect("dist url");
        let fixture = catalogue
            .version(
                "magento/module-m001",
                version["version"].as_str().expect("v"),
            )
            .expect("fixture");
        let archive = fixture.archive.as_ref().expect("archive");
        let reply = get(url).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, archive.bytes);
        assert_eq!(reply.headers["x-cache"], "MISS");
        let again = get(url).await;
        assert_eq!(again.body, archive.bytes);
        assert_eq!(again.headers["x-cache"], "HIT");
        let head = request(Method::HEAD, url, &[], Bytes::new()).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.headers["content-length"],
            archive.bytes.len().to_string().as_str()
        );
    }
    assert_eq!(
        mock.count_prefix("/archives/"),
        2,
        "one upstream fetch per archive"
    );
}

#[tokio::test]
async fn rejected_keys_become_502_with_a_marketplace_hint_never_401() {
    let (_catalogue, mock, proxy) = v1_setup(3).await;
    mock.set_reject_keys(true);
    for path in ["/packages.json", "/p2/magento/framework.json"] {
        let reply = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let warning = reply.warning();
        assert!(
            warning.contains("rejected the organisation's key pair"),
            "{warning}"
        );
        assert!(warning.contains("Marketplace"), "{warning}");
        no_key_material(&reply.body);
    }
}

#[tokio::test]
async fn proxy_without_keys_says_so_instead_of_passing_on_401() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let env = base_env(&mock.url())
        .into_iter()
        .filter(|(k, _)| !k.contains("_KEY"))
        .collect();
    let proxy = TestProxy::start_with(env, None).await;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.warning().contains("no key pair configured"),
        "{}",
        reply.warning()
    );
}

#[tokio::test]
async fn missing_entitlement_is_a_404_that_says_so() {
    let (_catalogue, _mock, proxy) = v1_setup(3).await;
    let name = Catalogue::not_entitled_name();
    let p2 = get(&format!("{}/p2/{name}.json", proxy.url)).await.json();
    let url = p2["packages"][name][0]["dist"]["url"]
        .as_str()
        .expect("dist url")
        .to_string();
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.warning().contains("entitlement"),
        "{}",
        reply.warning()
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_504() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let proxy = TestProxy::start(&format!("http://{closed}")).await;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.warning().contains("unreachable"),
        "{}",
        reply.warning()
    );

    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    mock.set_delay(Duration::from_secs(5));
    let mut env = base_env(&mock.url());
    env.push((
        "COMPOSER_PROXY_UPSTREAM_READ_TIMEOUT_SECS".into(),
        "1".into(),
    ));
    let proxy = TestProxy::start_with(env, None).await;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(reply.warning().contains("timed out"), "{}", reply.warning());
}

#[tokio::test]
async fn upstream_5xx_without_a_cached_copy_is_502() {
    let (_catalogue, mock, proxy) = v1_setup(2).await;
    mock.set_failure(Some(503));
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.warning().contains("HTTP 503"), "{}", reply.warning());
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_json() {
    let (_catalogue, mock, proxy) = v1_setup(2).await;
    let cases = [
        (
            Method::GET,
            "/p2/%2e%2e/secret.json",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/p2/a%2fb.json", StatusCode::BAD_REQUEST),
        (Method::GET, "/nothing-here", StatusCode::NOT_FOUND),
        (
            Method::DELETE,
            "/packages.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/packages.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/dists/magento/framework/0123456789abcdef0123456789abcdef.zip",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, status) in cases {
        let reply = request(
            method.clone(),
            &format!("{}{path}", proxy.url),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, status, "{method} {path}");
        assert!(!reply.warning().is_empty());
    }
    assert!(mock.requests().iter().all(|r| !r.path.contains("secret")));
}

#[tokio::test]
async fn install_notifications_are_forwarded_with_keys_and_never_fail_the_client() {
    let (_catalogue, mock, proxy) = v1_setup(2).await;
    let payload = Bytes::from_static(
        br#"{"downloads":[{"name":"magento/framework","version":"103.0.7.0","downloaded":true}]}"#,
    );
    let reply = request(
        Method::POST,
        &format!("{}/downloads/", proxy.url),
        &[("content-type", "application/json")],
        payload.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // Forwarding happens in the background; wait (bounded) for the mock to see it.
    let forwarded = tokio::time::timeout(
        Duration::from_secs(10),
        mock.wait_for_request(|r| r.method == "POST" && r.path == "/downloads/"),
    )
    .await
    .expect("notification reached upstream");
    assert!(forwarded.credentials_ok);
    assert_eq!(forwarded.body, payload);

    mock.set_failure(Some(500));
    let reply = request(
        Method::POST,
        &format!("{}/downloads/", proxy.url),
        &[],
        payload,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a failed forward is not the client's problem"
    );
}

#[tokio::test]
async fn search_answers_from_known_names() {
    let (_catalogue, _mock, proxy) = v1_setup(3).await;
    let reply = get(&format!("{}/search.json?q=module-m00&type=", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json: Value = reply.json();
    let names: Vec<&str> = json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "magento/module-m001",
            "magento/module-m002",
            "magento/module-m003"
        ]
    );
}

#[tokio::test]
async fn clients_outside_the_allowlist_get_403() {
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let mut env = base_env(&mock.url());
    env.push(("COMPOSER_PROXY_ALLOW".into(), "10.0.0.0/8".into()));
    let proxy = TestProxy::start_with(env, None).await;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.warning().contains("not in its allowlist"),
        "{}",
        reply.warning()
    );
    assert!(mock.requests().is_empty());
    // Turned away at accept, before taking one of the max_connections slots.
    let metrics = proxy
        .state
        .metrics
        .render(&composer_proxy::metrics::Gauges::default());
    assert!(
        metrics.contains("composer_proxy_connections_refused_total{reason=\"allowlist\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("composer_proxy_connections_open 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn p2_native_upstream_is_rewritten_and_served() {
    let catalogue = Arc::new(Catalogue::magento(3));
    let mut opts = MockOptions::new(Protocol::P2, catalogue.clone());
    opts.minify_p2 = true;
    let mock = MockUpstream::start(opts).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let root = get(&format!("{}/packages.json", proxy.url)).await.json();
    assert_eq!(
        root["metadata-url"],
        format!("{}/p2/%package%.json", proxy.url)
    );
    assert_eq!(
        root["available-packages"].as_array().expect("names").len(),
        catalogue.packages.len()
    );
    let p2 = get(&format!("{}/p2/magento/module-m001.json", proxy.url)).await;
    assert_eq!(p2.status, StatusCode::OK);
    let json = p2.json();
    let url = json["packages"]["magento/module-m001"][0]["dist"]["url"]
        .as_str()
        .expect("dist url");
    assert!(url.starts_with(&format!("{}/dists/", proxy.url)), "{url}");
    let archive = get(url).await;
    assert_eq!(archive.status, StatusCode::OK);
    let lm = p2.headers["last-modified"]
        .to_str()
        .expect("ascii")
        .to_string();
    let again = get_with(
        &format!("{}/p2/magento/module-m001.json", proxy.url),
        &[("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(mock.count_without_credentials(), 0);
}

#[tokio::test]
async fn a_failing_upstream_is_not_asked_again_by_every_waiting_request() {
    let (_catalogue, mock, proxy) = v1_setup(2).await;
    mock.set_failure(Some(503));
    for _ in 0..5 {
        let reply = get(&format!("{}/packages.json", proxy.url)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        mock.count("/packages.json"),
        1,
        "one upstream attempt serves every request in the back-off window"
    );
}

/// Connections are served by a thread per CPU, each on a runtime of its own: a stopped proxy,
/// and one whose run future was dropped (a test's runtime ending), must end them all, closing
/// their connections and the port, not leave threads serving with nobody to stop them.
#[tokio::test]
async fn a_stopped_or_dropped_proxy_closes_its_connections_and_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_catalogue, mock, proxy) = v1_setup(2).await;
    let addr = proxy.addr;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Served once, then idle on keep-alive: only the end of its serving thread closes it
    // before the idle limit.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .expect("send");
    let mut seen = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(r#"{"status":"ok"}"#) {
            match idle.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "{}", String::from_utf8_lossy(&seen));
    proxy.abandon().await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a connection stayed open 10 s after the run future was dropped: {closed:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts after the run future was dropped"
    );

    let proxy = TestProxy::start(&mock.url()).await;
    let addr = proxy.addr;
    let reply = get(&format!("{}/packages.json", proxy.url)).await;
    assert_eq!(reply.status, StatusCode::OK);
    proxy.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts after the proxy stopped"
    );
}
