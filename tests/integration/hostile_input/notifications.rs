//! Install notifications: small JSON bodies only, and a flood of them is bounded in memory and
//! in the upstream requests it causes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, StatusCode};

use super::{setup, SAFETY};
use crate::support::proxy::{get, request};

const PING: &[u8] =
    br#"{"downloads":[{"name":"magento/framework","version":"103.0.7.0","downloaded":true}]}"#;

#[tokio::test]
async fn large_or_non_json_notifications_are_refused_and_never_forwarded() {
    let s = setup(&[]).await;
    let url = format!("{}/downloads/", s.proxy.url);
    let json = [("content-type", "application/json")];
    // 100 KiB of valid JSON: larger than any Composer sends.
    let mut big = br#"{"downloads":[], "pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big.extend_from_slice(br#""}"#);
    let reply = request(Method::POST, &url, &json, Bytes::from(big)).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.warning()
    );
    let binary = Bytes::from_static(b"\x00\x01\x02PK\x03\x04 not json");
    let reply = request(
        Method::POST,
        &url,
        &[("content-type", "application/octet-stream")],
        binary.clone(),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        reply.warning()
    );
    assert!(
        reply.warning().contains("application/json"),
        "{}",
        reply.warning()
    );
    // Claiming JSON does not make it JSON.
    let reply = request(Method::POST, &url, &json, binary).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.warning());
    assert!(reply.warning().contains("JSON"), "{}", reply.warning());
    let metrics = get(&format!("{}/metrics", s.proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("composer_proxy_install_notifications_total{outcome=\"refused\"} 3\n"),
        "{text}"
    );
    s.upstream_untouched("refused notifications");
}

#[tokio::test]
async fn a_flood_of_notifications_is_queued_up_to_a_bound_and_forwarded_a_few_at_a_time() {
    let s = setup(&[]).await;
    // The root is cached first: forwarding needs its notify URL, and the delay below must hold
    // only the forwards.
    assert_eq!(
        get(&format!("{}/packages.json", s.proxy.url)).await.status,
        StatusCode::OK
    );
    s.mock.set_delay(Duration::from_secs(120));
    let url = format!("{}/downloads/", s.proxy.url);
    let replies = join_all((0..200).map(|_| {
        request(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            Bytes::from_static(PING),
        )
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let forwards = || {
        s.mock
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/downloads/")
            .count()
    };
    let started = Instant::now();
    while forwards() < 4 {
        assert!(started.elapsed() < SAFETY, "{} forwards", forwards());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every forward is held by the delay, so a fifth could only come from a fifth sender.
    let metrics = get(&format!("{}/metrics", s.proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(forwards(), 4);
    for sample in [
        "composer_proxy_install_notifications_total{outcome=\"queued\"} 64\n",
        "composer_proxy_install_notifications_total{outcome=\"dropped\"} 136\n",
    ] {
        assert!(text.contains(sample), "{sample} in {text}");
    }
}
