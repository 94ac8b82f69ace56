//! The listener: accepts TCP (and TLS) connections, serves HTTP/1.1 and HTTP/2 on them with
//! hyper, writes one access-log line per request, and drains in-flight responses on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::upstream::{UpstreamNote, EXCHANGE};
use crate::{routes, AppState};

/// Slow or stalled clients (slowloris) lose their connection after this long without
/// completing the request headers, and TLS handshakes are bounded the same way.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Request headers larger than this are refused (hyper answers 431).
const MAX_HEADER_BYTES: usize = 64 * 1024;

pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    grace: Duration,
}

impl Server {
    pub fn new(listener: TcpListener, state: Arc<AppState>, grace: Duration) -> Self {
        Self {
            listener,
            state,
            grace,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then waits up to the grace period for in-flight
    /// requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(256);
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = service(self.state.clone(), peer);
            let builder = builder.clone();
            // The acceptor is read per connection, so a reloaded certificate serves new
            // connections while established ones keep theirs.
            match self.state.tls_acceptor() {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(
                            HEADER_READ_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(client = %peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let conn = builder
                            .serve_connection(TokioIo::new(tls), service)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(self.listener);
        tracing::info!(
            grace_secs = self.grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
}

type ResponseFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<routes::ResponseBody>, Infallible>> + Send>,
>;

/// The router as a tower service, bound to one connection's peer address.
#[derive(Clone)]
struct ProxyService {
    state: Arc<AppState>,
    peer: SocketAddr,
}

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = http::Response<routes::ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> ResponseFuture {
        let (state, peer) = (self.state.clone(), self.peer);
        Box::pin(async move {
            let started = Instant::now();
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let version = request.version();
            let upstream: NoteSlot = Arc::new(Mutex::new(None));
            let (response, outcome) = EXCHANGE
                .scope(
                    upstream.clone(),
                    routes::handle(state.clone(), request, peer),
                )
                .await;
            let record = AccessRecord {
                state,
                started,
                peer,
                method,
                path,
                version,
                status: response.status().as_u16(),
                cache: outcome.cache.map_or("BYPASS", |c| c.as_str()),
                route: outcome.route,
                client: outcome.client,
                token: outcome.token,
                upstream,
            };
            let announced = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            // The line is written when the body ends, so it has the bytes really sent and the
            // whole duration (an archive download, not just its headers).
            Ok(response.map(|inner| {
                AccessBody {
                    inner,
                    sent: 0,
                    announced,
                    record: Some(record),
                }
                .boxed_unsync()
            }))
        })
    }
}

type NoteSlot = Arc<Mutex<Option<UpstreamNote>>>;

/// What the access-log line says about one request, known once the response is chosen.
struct AccessRecord {
    state: Arc<AppState>,
    started: Instant,
    peer: SocketAddr,
    method: http::Method,
    path: String,
    version: http::Version,
    status: u16,
    cache: &'static str,
    route: &'static str,
    /// Set when a trusted proxy named the client.
    client: Option<std::net::IpAddr>,
    token: Option<Arc<str>>,
    upstream: NoteSlot,
}

impl AccessRecord {
    fn write(self, sent: u64, complete: bool) {
        let duration = self.started.elapsed();
        self.state
            .metrics
            .record_request(self.route, self.status, self.cache, sent, duration);
        let upstream = *self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        let upstream_status = upstream.and_then(|n| n.status);
        let upstream_ms = upstream.map(|n| n.took.as_millis() as u64);
        tracing::info!(
            target: "composer_proxy::access",
            client = %self.client.unwrap_or(self.peer.ip()),
            peer = self.client.map(|_| tracing::field::display(self.peer.ip())),
            token = self.token.as_deref(),
            method = %self.method,
            path = %self.path,
            version = ?self.version,
            status = self.status,
            bytes = sent,
            duration_ms = duration.as_millis() as u64,
            cache = self.cache,
            route = self.route,
            upstream_status,
            upstream_ms,
            complete,
            "request"
        );
    }
}

/// A response body that counts what is sent and writes the access-log line when it ends, fails,
/// or is dropped (the client went away).
struct AccessBody {
    inner: routes::ResponseBody,
    sent: u64,
    /// Content-Length: hyper stops polling once that much is sent, so the end may never be
    /// seen as such.
    announced: Option<u64>,
    record: Option<AccessRecord>,
}

impl AccessBody {
    fn finish(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.write(self.sent, complete);
        }
    }
}

impl http_body::Body for AccessBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessBody {
    fn drop(&mut self) {
        // An empty body may never be polled; a sized one is done once all of it went out.
        let complete =
            http_body::Body::is_end_stream(&self.inner) || self.announced == Some(self.sent);
        self.finish(complete);
    }
}

/// The per-connection service. Layers, outermost first: mark credentials sensitive so no
/// layer or debug output can print them; then the router, which logs the access line.
fn service(
    state: Arc<AppState>,
    peer: SocketAddr,
) -> TowerToHyperService<tower_http::sensitive_headers::SetSensitiveRequestHeaders<ProxyService>> {
    let svc = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
        ]))
        .service(ProxyService { state, peer });
    TowerToHyperService::new(svc)
}
