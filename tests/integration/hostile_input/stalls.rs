//! Clients that stop taking their response: each loses its slot after
//! `client_send_timeout_secs`, so a few cannot keep everyone else out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{setup_with, Setup, SAFETY};

/// Larger than the kernel's socket buffers and hyper's together, so a client that reads
/// nothing really stalls the body.
const BIG: usize = 16 * 1024 * 1024;
/// Below a sixteenth of the default archive memory bound (256 MiB), so after its first read
/// from disk it is served from the memory tier: one shared copy, no file reads.
const HELD_IN_MEMORY: usize = 12 * 1024 * 1024;

async fn stalling_setup(max_connections: &str) -> (Setup, String) {
    stalling_setup_of(max_connections, BIG).await
}

async fn stalling_setup_of(max_connections: &str, size: usize) -> (Setup, String) {
    let s = setup_with(
        Some(&[size]),
        &[
            ("MAX_CONNECTIONS", max_connections),
            ("CLIENT_SEND_TIMEOUT_SECS", "1"),
            // Idle connections stay: only the send timeout may free the slots here.
            ("CLIENT_HEADER_TIMEOUT_SECS", "300"),
        ],
    )
    .await;
    let url =
        crate::support::proxy::dist_url(&s.proxy.url, &format!("bench/blob-{size}"), "1.0.0").await;
    // Stored first, so the stalled reads are of the stored archive, not of a download.
    let whole = crate::support::proxy::get(&url).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body.len() > size);
    let path = url
        .strip_prefix(&s.proxy.url)
        .expect("dist URL on the proxy")
        .to_string();
    (s, path)
}

/// Asks for `path` over HTTP/1 with a tiny receive buffer, reads the start of a 200 (a
/// connection still being closed may take the slot, so a 503 is tried again), then no more.
async fn stalled_http1(s: &Setup, path: &str) -> TcpStream {
    let started = Instant::now();
    loop {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let mut stream = socket.connect(s.addr()).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut head = [0u8; 12];
        tokio::time::timeout(SAFETY, stream.read_exact(&mut head))
            .await
            .expect("an answer within the safety net")
            .expect("a status line");
        if head.starts_with(b"HTTP/1.1 200") {
            return stream;
        }
        assert!(head.starts_with(b"HTTP/1.1 503"), "{head:?}");
        assert!(started.elapsed() < SAFETY, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/healthz` on new connections until one is answered 200; how long that took.
async fn until_served(s: &Setup) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, _) =
            crate::support::proxy::try_get(&format!("{}/healthz", s.proxy.url), &[]).await;
        if status == StatusCode::OK {
            return started.elapsed();
        }
        assert!(started.elapsed() < SAFETY, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until it holds `sample` (connections being freed may still refuse some).
async fn wait_for_metric(s: &Setup, sample: &str) {
    let started = Instant::now();
    loop {
        let (status, _, body) =
            crate::support::proxy::try_get(&format!("{}/metrics", s.proxy.url), &[]).await;
        let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
        if status == StatusCode::OK && body.contains(sample) {
            return;
        }
        assert!(started.elapsed() < SAFETY, "no {sample} in {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http1_clients_that_stop_reading_lose_their_slot_after_the_send_timeout() {
    let (s, path) = stalling_setup("2").await;
    http1_stalls_are_cut(s, &path, BIG).await;
}

/// An archive held in memory is handed to hyper in slices, so a client that stops reading
/// it is found out as for one read from disk (one frame of the whole archive would have
/// ended the body at once, and the watchdog with it).
#[tokio::test]
async fn http1_clients_that_stop_reading_an_archive_held_in_memory_lose_their_slot() {
    let (s, path) = stalling_setup_of("2", HELD_IN_MEMORY).await;
    http1_stalls_are_cut(s, &path, HELD_IN_MEMORY).await;
}

/// Two stalled HTTP/1 clients hold both slots of `s` until the send timeout frees them.
async fn http1_stalls_are_cut(s: Setup, path: &str, size: usize) {
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_http1(&s, path).await);
    }
    // Both slots are held (the proxy may still be taking the requests, so this may take a
    // moment to show), and then freed by the send timeout, not by the clients.
    let waited = until_served(&s).await;
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    wait_for_metric(
        &s,
        "composer_proxy_responses_stalled_total{protocol=\"http1\"} 2\n",
    )
    .await;
    for stream in &mut stalled {
        // Closed by the proxy: what is buffered, then EOF or a reset.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(SAFETY, stream.read_to_end(&mut sink))
            .await
            .expect("closed within the safety net");
        assert!(read.is_err() || sink.len() < size, "{} bytes", sink.len());
    }
    s.still_serves().await;
}

#[tokio::test]
async fn h2c_streams_with_a_shut_window_are_reset_after_the_send_timeout() {
    // Slots to spare: this is about streams, and the connection stays open.
    let (s, path) = stalling_setup("8").await;
    let stream = TcpStream::connect(s.addr()).await.expect("connect");
    // A zero stream window: the proxy may send headers, never a byte of a body.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .adaptive_window(false)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let started = Instant::now();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let request = Request::get(format!("http://proxy{path}"))
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("headers");
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.into_body());
    }
    // Another connection is served while the streams are stalled.
    assert_eq!(
        crate::support::proxy::get(&format!("{}/healthz", s.proxy.url))
            .await
            .status,
        StatusCode::OK
    );
    crate::support::proxy::assert_reset_after_a_second(bodies, started).await;
    wait_for_metric(
        &s,
        "composer_proxy_responses_stalled_total{protocol=\"http2\"} 4\n",
    )
    .await;
    // The connection itself stays usable: a stream that reads is served in full.
    assert!(!sender.is_closed());
    s.still_serves().await;
}
