//! Hostile clients, byte for byte over raw sockets: framing tricks, traversal in every encoding,
//! other hosts, other methods, oversized and slow input, and more connections than allowed.
//! Every case checks the exact answer (or that the connection is closed), that the mock
//! upstream was never asked because of it, that nothing was written beside the cache
//! directory, and that the proxy still serves a normal request afterwards.

use crate::support;

mod notifications;
mod stalls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::catalogue::Catalogue;
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::proxy::{base_env, TestProxy};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A safety net only: no test waits this long unless the proxy misbehaves.
const SAFETY: Duration = Duration::from_secs(30);

/// A proxy in front of the mock, its cache directory alone in a parent directory so a test
/// can show that nothing was written beside it.
struct Setup {
    mock: MockUpstream,
    proxy: TestProxy,
    parent: TempDir,
    /// What traversal attempts try to create: unique to this run, so finding it anywhere
    /// means the proxy wrote it.
    target: String,
}

/// `settings` are `COMPOSER_PROXY_*` names without the prefix.
async fn setup(settings: &[(&str, &str)]) -> Setup {
    setup_with(None, settings).await
}

/// As [`setup`], with a package `bench/blob-<n>` per entry of `blobs`.
async fn setup_with(blobs: Option<&[usize]>, settings: &[(&str, &str)]) -> Setup {
    let catalogue = Arc::new(match blobs {
        Some(lens) => Catalogue::with_sized_archives(2, lens),
        None => Catalogue::magento(2),
    });
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    let parent = tempfile::tempdir().expect("tempdir");
    let mut env = base_env(&mock.url());
    env.extend(
        settings
            .iter()
            .map(|(k, v)| (format!("COMPOSER_PROXY_{k}"), (*v).to_string())),
    );
    let proxy = TestProxy::start_with(env, Some(&parent.path().join("cache"))).await;
    let unique = parent
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 temp name")
        .trim_start_matches('.')
        .to_string();
    Setup {
        mock,
        proxy,
        parent,
        target: format!("escaped-{unique}"),
    }
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    fn upstream_untouched(&self, why: &str) {
        let seen: Vec<String> = self
            .mock
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.raw_path_and_query))
            .collect();
        assert!(seen.is_empty(), "{why} reached the upstream: {seen:?}");
    }

    /// The parent holds the cache directory and nothing else, and no file named like the
    /// traversal target exists under it or beside it.
    fn nothing_outside_the_cache(&self) {
        let beside: Vec<String> = names_in(self.parent.path());
        assert_eq!(beside, ["cache"], "files beside the cache directory");
        let above = self.parent.path().parent().expect("temp dir has a parent");
        assert!(
            !names_in(above).iter().any(|n| n.contains(&self.target)),
            "{} appeared in {}",
            self.target,
            above.display()
        );
        let mut stack = vec![self.parent.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(&self.target),
                    "{} was created",
                    entry.path().display()
                );
                if entry.file_type().expect("file type").is_dir() {
                    stack.push(entry.path());
                }
            }
        }
    }

    /// The ending of every test: the proxy still serves Composer, the cache directory is used
    /// (so the checks above looked at a live one), and nothing escaped it.
    async fn still_serves(&self) {
        let mut client = Client::connect(self.addr()).await;
        client
            .send(b"GET /packages.json HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            .await;
        let reply = client.response().await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let root: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON root");
        assert!(root["metadata-url"].is_string(), "{root}");
        assert!(self.mock.count("/packages.json") >= 1);
        self.nothing_outside_the_cache();
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One response as it came off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `warning` of the proxy's JSON error body.
    fn warning(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON body");
        json["warning"].as_str().expect("a warning").to_string()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first response in `bytes` and how many bytes it took, once it is all there. `at_eof`:
/// no more bytes will come, so a response without Content-Length ends here.
fn split_response(bytes: &[u8], at_eof: bool) -> Option<(RawResponse, usize)> {
    let head_len = find(bytes, b"\r\n\r\n")? + 4;
    let head = String::from_utf8(bytes[..head_len].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
    let end = match length {
        Some(len) if bytes.len() >= head_len + len => head_len + len,
        None if at_eof => bytes.len(),
        _ => return None,
    };
    let response = RawResponse {
        status,
        headers,
        body: bytes[head_len..end].to_vec(),
    };
    Some((response, end))
}

/// A raw client connection; bytes read past one response are kept for the next.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr)
                .await
                .expect("connect to the proxy"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// One response: the head, then its Content-Length body (or all up to EOF without one).
    async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(SAFETY, async {
            let mut at_eof = false;
            loop {
                if let Some((response, used)) = split_response(&self.buf, at_eof) {
                    self.buf.drain(..used);
                    return response;
                }
                assert!(
                    !at_eof,
                    "closed before a whole response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                let mut chunk = [0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await.expect("read");
                self.buf.extend_from_slice(&chunk[..n]);
                at_eof = n == 0;
            }
        })
        .await
        .expect("a response within the safety net")
    }

    /// Waits until the proxy closes the connection (EOF or reset) and returns whatever came
    /// before that; fails if it is still open when the safety net runs out.
    async fn closed(&mut self) -> Vec<u8> {
        let ended = tokio::time::timeout(SAFETY, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the proxy kept the connection open for {SAFETY:?}"
        );
        std::mem::take(&mut self.buf)
    }
}

/// Sends one request on a fresh connection and returns the response and whatever the proxy
/// sent after it before closing.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (RawResponse, Vec<u8>) {
    let mut client = Client::connect(addr).await;
    client.send(request).await;
    let response = client.response().await;
    let after = client.closed().await;
    (response, after)
}

fn get(target: &[u8]) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    request
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_nothing_is_smuggled() {
    let s = setup(&[]).await;
    // CL.TE: by Content-Length the body is "0\r\n\r" and the rest a new request; by chunked
    // framing the body ends at "0\r\n\r\n" and the GET is a second request. Either way the
    // GET must never be served, and neither request may reach upstream.
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let request = format!(
            "POST /downloads/ HTTP/1.1\r\nHost: proxy\r\n{order}\r\n0\r\n\r\n\
             GET /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n"
        );
        let (reply, after) = exchange(s.addr(), request.as_bytes()).await;
        assert_eq!(reply.status, 400, "{order}: {reply:?}");
        assert!(reply.warning().contains("Transfer-Encoding"), "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(
            after.is_empty(),
            "a second response: {}",
            String::from_utf8_lossy(&after)
        );
    }
    // A plain chunked body is refused the same way: it cannot be told apart from the above.
    let (reply, _) = exchange(
        s.addr(),
        b"POST /downloads/ HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 400);
    s.upstream_untouched("a smuggling attempt");
    s.still_serves().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_overlong_uris_414() {
    let s = setup(&[]).await;
    let big = format!(
        "GET /packages.json HTTP/1.1\r\nHost: proxy\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (reply, _) = exchange(s.addr(), big.as_bytes()).await;
    assert_eq!(reply.status, 431, "one huge header");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /packages.json HTTP/1.1\r\nHost: proxy\r\n{many}\r\n");
    let (reply, _) = exchange(s.addr(), many.as_bytes()).await;
    assert_eq!(reply.status, 431, "too many headers");

    let long = format!("/p2/magento/{}.json", "a".repeat(4096));
    let (reply, _) = exchange(s.addr(), &get(long.as_bytes())).await;
    assert_eq!(reply.status, 414, "{reply:?}");
    assert!(reply.warning().contains("URI too long"), "{reply:?}");
    // Longer than the whole header buffer: hyper refuses it before routing.
    let longer = format!("/p2/magento/{}.json", "a".repeat(70 * 1024));
    let (reply, _) = exchange(s.addr(), &get(longer.as_bytes())).await;
    assert_eq!(reply.status, 431);
    s.upstream_untouched("oversized input");
    s.still_serves().await;
}

#[tokio::test]
async fn invalid_utf8_in_the_path_is_a_bad_request() {
    let s = setup(&[]).await;
    for path in [
        &b"/p2/magento/\xff\xfe.json"[..],
        b"/p2/magento/\xc3.json",
        b"/p2/magento/\xc3\xa9.json",
        b"/dists/magento/\xff/0123456789abcdef0123456789abcdef.zip",
    ] {
        let (reply, _) = exchange(s.addr(), &get(path)).await;
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(path));
    }
    s.upstream_untouched("non-UTF-8 paths");
    s.still_serves().await;
}

#[tokio::test]
async fn traversal_in_every_encoding_is_refused_and_writes_nothing() {
    let s = setup(&[]).await;
    let t = &s.target;
    // Ways to climb two directories up to `t`.
    let escapes = [
        format!("../../{t}"),
        format!("%2e%2e/%2e%2e/{t}"),
        format!("%2E%2e/%2E%2e/{t}"),
        format!(".%2e/.%2e/{t}"),
        format!("..%2f..%2f{t}"),
        format!("..%2F..%2F{t}"),
        format!("..%252f..%252f{t}"),
        format!("%252e%252e/%252e%252e/{t}"),
        format!("..\\..\\{t}"),
        format!("..%5c..%5c{t}"),
        format!("..%5C..%5C{t}"),
        format!("../../{t}%00"),
        format!("%00/../../{t}"),
    ];
    let hash = "a".repeat(64);
    for escape in &escapes {
        for path in [
            format!("/p2/magento/{escape}.json"),
            format!("/p2/{escape}.json"),
            format!("/dists/magento/framework/{escape}.zip"),
            format!("/dists/{escape}/0123456789abcdef0123456789abcdef.zip"),
            format!("/p/magento/{escape}${hash}.json"),
            format!("/p/{escape}.json"),
        ] {
            let (reply, _) = exchange(s.addr(), &get(path.as_bytes())).await;
            assert_eq!(reply.status, 400, "{path}: {reply:?}");
        }
    }
    s.upstream_untouched("traversal");
    s.nothing_outside_the_cache();
    s.still_serves().await;
}

#[tokio::test]
async fn absolute_form_targets_naming_other_hosts_are_refused() {
    let s = setup(&[]).await;
    let upstream = s.mock.addr();
    for target in [
        // The real upstream's own address: still not for a client to name.
        format!("http://{upstream}/packages.json"),
        format!("http://{upstream}/archives/magento/framework/x.zip"),
        "http://evil.example/packages.json".to_string(),
        "https://evil.example/p2/magento/framework.json".to_string(),
        format!("http://{}/packages.json", s.addr()),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: keep-alive\r\n\r\n");
        let (reply, after) = exchange(s.addr(), request.as_bytes()).await;
        assert_eq!(reply.status, 400, "{target}: {reply:?}");
        assert!(reply.warning().contains("not a forward proxy"), "{reply:?}");
        // Closed even though the client asked to keep it.
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(after.is_empty());
    }
    s.upstream_untouched("an absolute-form target");
    // A Host header naming another host changes nothing: URLs come from the configuration.
    let mut client = Client::connect(s.addr()).await;
    client
        .send(b"GET /packages.json HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert!(!String::from_utf8_lossy(&reply.body).contains("evil.example"));
    s.still_serves().await;
}

#[tokio::test]
async fn connect_is_405_not_a_tunnel() {
    let s = setup(&[]).await;
    for request in [
        &b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"[..],
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    ] {
        let mut client = Client::connect(s.addr()).await;
        client.send(request).await;
        let reply = client.response().await;
        assert_eq!(reply.status, 405, "{reply:?}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD, POST"));
        assert!(reply.warning().contains("Method not allowed"));
        // What a tunnel client sends next is never read as HTTP, nor relayed.
        let _ = client.stream.write_all(b"\x16\x03\x01\x02\x00\x01").await;
        assert!(client.closed().await.is_empty());
    }
    s.upstream_untouched("CONNECT");
    s.still_serves().await;
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let s = setup(&[]).await;
    for (request, allow) in [
        (
            &b"PUT /p2/magento/framework.json HTTP/1.1\r\nHost: proxy\r\nContent-Length: 5\r\n\r\nhello"[..],
            "GET, HEAD, POST",
        ),
        (
            b"DELETE /p2/magento/framework.json HTTP/1.1\r\nHost: proxy\r\n\r\n",
            "GET, HEAD, POST",
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\n\r\n", "GET, HEAD, POST"),
        (
            b"OPTIONS /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n",
            "GET, HEAD, POST",
        ),
        (
            b"TRACE /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n",
            "GET, HEAD, POST",
        ),
        (
            b"PATCH /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n",
            "GET, HEAD, POST",
        ),
        (
            b"PURGE /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n",
            "GET, HEAD, POST",
        ),
        // Allowed methods on the wrong route name what that route accepts.
        (
            b"POST /packages.json HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "GET, HEAD",
        ),
        (
            b"GET /downloads/ HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
            "POST",
        ),
    ] {
        let (reply, _) = exchange(s.addr(), request).await;
        let line = String::from_utf8_lossy(&request[..request.len().min(30)]).into_owned();
        assert_eq!(reply.status, 405, "{line}: {reply:?}");
        assert_eq!(reply.header("allow"), Some(allow), "{line}");
        assert!(reply.warning().contains("Method not allowed"), "{line}");
    }
    s.upstream_untouched("other methods");
    s.still_serves().await;
}

/// Sends `bytes` one at a time, `every` apart, until they run out or the proxy hangs up; then
/// keeps its side open, as a slowloris does (dropping the writer would send a FIN, which the
/// proxy would rightly take as the end of the request).
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        for b in bytes {
            ticks.tick().await;
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Ends with the test's runtime.
        std::future::pending::<()>().await;
        drop(writer);
    });
}

/// Reads until the proxy hangs up (EOF or reset) and returns what it sent before.
async fn read_until_closed(mut reader: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(SAFETY, async {
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the proxy kept a slow client for {SAFETY:?}; it sent {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let s = setup(&[("CLIENT_HEADER_TIMEOUT_SECS", "1")]).await;
    // A head that never ends: a header byte every 100 ms, 40 s of them, past the safety net.
    let stream = TcpStream::connect(s.addr()).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /packages.json HTTP/1.1\r\nHost: proxy\r\nX-Slow: ")
        .await
        .expect("send");
    trickle(writer, vec![b'a'; 400], Duration::from_millis(100));
    let seen = read_until_closed(reader).await;
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));

    // The HTTP/2 preface trickled in keeps hyper deciding between HTTP/1 and HTTP/2, where
    // its header timeout does not run yet.
    let stream = TcpStream::connect(s.addr()).await.expect("connect");
    let (reader, writer) = stream.into_split();
    trickle(
        writer,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r".to_vec(),
        Duration::from_millis(200),
    );
    let seen = read_until_closed(reader).await;
    assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));
    s.upstream_untouched("a slow request head");
    s.still_serves().await;
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed() {
    let s = setup(&[("CLIENT_HEADER_TIMEOUT_SECS", "1")]).await;
    // Keep-alive after one answered request, then nothing.
    let mut client = Client::connect(s.addr()).await;
    client
        .send(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), None, "kept alive");
    assert!(client.closed().await.is_empty());

    // Connected, never a byte: hyper has not even told HTTP/1 from HTTP/2 yet.
    let mut silent = Client::connect(s.addr()).await;
    assert!(silent.closed().await.is_empty());

    // HTTP/2 (prior knowledge) with no stream ever opened: the proxy's SETTINGS, then a close.
    let mut h2 = Client::connect(s.addr()).await;
    h2.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    let seen = h2.closed().await;
    assert!(!seen.starts_with(b"HTTP/1"), "{seen:?}");
    s.upstream_untouched("idle connections");
    s.still_serves().await;
}

#[tokio::test]
async fn slow_notification_bodies_get_408_and_oversized_ones_413() {
    let s = setup(&[("CLIENT_BODY_TIMEOUT_SECS", "1")]).await;
    let stream = TcpStream::connect(s.addr()).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /downloads/ HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        )
        .await
        .expect("send");
    // 200 bytes at 10 a second: 20 s for a body that must arrive within 1 s.
    trickle(writer, vec![b' '; 200], Duration::from_millis(100));
    let seen = read_until_closed(reader).await;
    let (reply, used) = split_response(&seen, true).expect("a response before the close");
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(
        reply.warning().contains("client_body_timeout_secs"),
        "{reply:?}"
    );
    assert_eq!(used, seen.len(), "nothing after the 408");

    // A declared 2 MiB body is refused at once; `100 Continue` is never sent, so a client
    // that waits for it never transfers the body.
    let mut client = Client::connect(s.addr()).await;
    client
        .send(b"POST /downloads/ HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.warning().contains("too large"), "{reply:?}");
    assert!(client.closed().await.is_empty());
    s.upstream_untouched("refused notification bodies");
    s.still_serves().await;
}

#[tokio::test]
async fn connections_over_max_connections_get_503_until_one_closes() {
    // A long idle limit: the two held connections must outlive a slow test run.
    let s = setup(&[
        ("MAX_CONNECTIONS", "2"),
        ("CLIENT_HEADER_TIMEOUT_SECS", "300"),
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(s.addr()).await;
        client
            .send(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
            .await;
        assert_eq!(client.response().await.status, 200);
        held.push(client);
    }

    let mut third = Client::connect(s.addr()).await;
    third
        .send(b"GET /packages.json HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await;
    let reply = third.response().await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        r#"{"warning":"composer-proxy is serving its maximum number of connections (setting max_connections); try again"}"#
    );
    assert!(third.closed().await.is_empty());
    s.upstream_untouched("a refused connection");

    let metrics = scrape(&mut held[0]).await;
    assert!(
        metrics.contains("composer_proxy_connections_open 2\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("composer_proxy_connections_refused_total{reason=\"max_connections\"} 1\n"),
        "{metrics}"
    );

    // The slot is freed when the proxy notices the close, so wait (bounded) for the gauge,
    // which goes down only after the slot is free.
    drop(held.pop());
    let deadline = Instant::now() + SAFETY;
    while !scrape(&mut held[0])
        .await
        .contains("composer_proxy_connections_open 1\n")
    {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted"
        );
    }
    s.still_serves().await;
}

/// `/metrics` over a kept-alive connection.
async fn scrape(client: &mut Client) -> String {
    client
        .send(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body).expect("UTF-8 metrics")
}
