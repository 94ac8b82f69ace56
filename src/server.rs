//! The listener: accepts TCP (and TLS) connections, serves HTTP/1.1 and HTTP/2 on them with
//! hyper, writes one access-log line per request, and drains in-flight responses on shutdown.
//!
//! Hostile clients are bounded here, before any request exists: at most `max_connections` are
//! served at once (the rest are turned away at accept), a TLS handshake and every request head
//! must arrive within `client_header_timeout_secs`, and a connection with no request in flight
//! is closed after that long too (see [`Activity`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::{Exchanges, EXCHANGE};
use crate::{routes, AppState};

mod access_log;
pub mod open_files;
mod socket;
mod stall;
mod workers;

use access_log::{AccessBody, AccessRecord};
use stall::{SendProgress, StallExecutor};

/// Request headers larger than this are refused (hyper answers 431).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Streams one HTTP/2 connection may have open at once. Composer opens up to 12 per connection
/// by default (`COMPOSER_MAX_PARALLEL_HTTP`, at most 50); more is no install's need, and each
/// open stream can hold a file handle and a read chunk.
const MAX_CONCURRENT_STREAMS: u32 = 64;
/// How long a connection over `max_connections` may take to receive its 503 and go away.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused connections are logged at most this often (see [`RefusalLog`]).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a client may take of the listener; changing these needs a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    pub max_connections: usize,
    /// For the TLS handshake, each request head, and each idle spell of a connection.
    pub header_timeout: Duration,
    /// For a whole request body (only install notifications have one).
    pub body_timeout: Duration,
    /// For each step of a response body; see [`stall`].
    pub send_timeout: Duration,
}

impl From<&Config> for ClientLimits {
    fn from(config: &Config) -> Self {
        Self {
            max_connections: config.max_connections,
            header_timeout: config.client_header_timeout,
            body_timeout: config.client_body_timeout,
            send_timeout: config.client_send_timeout,
        }
    }
}

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
    ///
    /// This task accepts; each connection is served by one of the serving threads, one per
    /// CPU with a runtime of its own ([`workers`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let listener = self.listener;
        let graceful = GracefulShutdown::new();
        let mut workers = workers::start(Arc::new(Accepting::new(&self.state)));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
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
            // Watched from here, so the drain below waits for it even before its thread has
            // taken it.
            workers.dispatch(stream, peer, graceful.watcher());
        }
        drop(listener);
        workers.stop_accepting();
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
        workers.finish().await;
    }
}

/// What the serving threads share to serve the connections handed to them.
struct Accepting {
    state: Arc<AppState>,
    builder: auto::Builder<StallExecutor>,
    permits: Arc<Semaphore>,
    limits: ClientLimits,
    refusal: Bytes,
    refusals: Mutex<RefusalLog>,
}

impl Accepting {
    fn new(state: &Arc<AppState>) -> Self {
        let limits = state.client_limits;
        let mut builder = auto::Builder::new(StallExecutor {
            limit: limits.send_timeout,
            metrics: state.metrics.clone(),
        });
        // No `header_read_timeout`: [`Activity`] bounds the wait for every request head.
        builder
            .http1()
            .header_read_timeout(None)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self {
            state: state.clone(),
            builder,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            refusal: refusal_response(),
            refusals: Mutex::new(RefusalLog::default()),
        }
    }

    /// Serves one accepted connection in a task of the calling thread's runtime, or turns it
    /// away. `watcher` holds the drain until it ends; `load` counts it in its thread's load.
    fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
        load: workers::Load,
    ) {
        let state = &self.state;
        let limits = self.limits;
        // The acceptor is read per connection, so a reloaded certificate serves new
        // connections while established ones keep theirs.
        let acceptor = state.tls_acceptor();
        // A peer that could never be served is turned away before it costs a permit, a TLS
        // handshake or hyper's parser: outsiders cannot use up `max_connections`. (A trusted
        // proxy is let through; its clients are checked per request.)
        if !state.access().admits_peer(peer.ip()) {
            state.metrics.record_connection_outside_allowlist();
            tracing::debug!(client = %peer.ip(), "connection from outside the allowlist refused");
            if acceptor.is_none() {
                tokio::spawn(refuse(stream, forbidden_response(peer.ip())));
            }
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            state.metrics.record_connection_refused();
            self.refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(limits.max_connections);
            // A TLS client cannot read a plain-text answer; closing is all it can be told.
            if acceptor.is_none() {
                tokio::spawn(refuse(stream, self.refusal.clone()));
            }
            return;
        };
        let open = OpenConnection::new(permit, state.metrics.clone());
        socket::tune(&stream);
        let activity = Activity::new();
        let service = service(state.clone(), peer, activity.clone());
        let conn = Connection {
            activity,
            peer,
            limits,
            metrics: state.metrics.clone(),
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _open = (open, load);
            let builder = &this.builder;
            let Some(acceptor) = acceptor else {
                serve(builder, TokioIo::new(stream), service, watcher, conn).await;
                return;
            };
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve(builder, TokioIo::new(tls), service, watcher, conn).await,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
            }
        });
    }
}

/// What serving one accepted connection needs besides hyper.
struct Connection {
    activity: Activity,
    peer: SocketAddr,
    limits: ClientLimits,
    metrics: Arc<Metrics>,
}

/// Serves one connection until it ends, until it has been idle for `client_header_timeout_secs`,
/// or until an HTTP/1 response has stalled for `client_send_timeout_secs` (HTTP/2 streams are
/// watched each in its own task: see [`stall`]).
async fn serve<I>(
    builder: &auto::Builder<StallExecutor>,
    io: I,
    service: Service,
    watcher: Watcher,
    conn: Connection,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Connection {
        activity,
        peer,
        limits,
        metrics,
    } = conn;
    let served = watcher.watch(builder.serve_connection(io, service).into_owned());
    let progress = SendProgress::new();
    let watched = progress.watch(served, limits.send_timeout, &metrics, false);
    tokio::select! {
        ended = watched => if let Some(Err(e)) = ended {
            tracing::debug!(client = %peer, error = %e, "connection ended with an error");
        },
        // Dropping the connection closes it; nothing is in flight to lose.
        () = activity.idle_for(limits.header_timeout) => {
            tracing::debug!(client = %peer, "closed an idle connection");
        }
    }
}

/// Requests in flight on one connection; a connection with none is idle, and one idle for
/// `client_header_timeout_secs` is closed.
///
/// This is the only timeout on waiting for a request head. It covers what hyper's own
/// `header_read_timeout` does (a head that trickles in, or none after a keep-alive answer: the
/// connection is idle from the end of its last response), and what that timeout cannot: the
/// bytes before hyper-util's `auto` builder has told HTTP/1 from HTTP/2 (a client that connects
/// and sends nothing, or trickles the HTTP/2 preface, would wait there forever), and an HTTP/2
/// connection with no stream open. Each would hold a `max_connections` permit for good: a
/// slowloris needs only as many sockets as the limit. A request counts as in flight from its
/// complete head until its response body ends, so long downloads and slow upstreams are never
/// cut.
///
/// Nothing here wakes the watchdog (see [`Activity::idle_for`]): hyper's timeout armed and
/// disarmed a timer for every request, and a watch channel here woke the connection's task
/// twice per request, for a limit that is checked once a minute.
#[derive(Clone)]
struct Activity(Arc<Mutex<Busy>>);

/// Requests in flight, and since when there have been none.
struct Busy {
    in_flight: usize,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Busy {
            in_flight: 0,
            idle_since: Instant::now(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request in flight until the returned guard is dropped.
    fn begin(&self) -> InFlight {
        self.lock().in_flight += 1;
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `limit`. It sleeps until the earliest
    /// moment that could be so and then looks: a request that began and ended meanwhile moved
    /// `idle_since` on, so it sleeps again until the new deadline.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let wake = {
                let busy = self.lock();
                if busy.in_flight > 0 {
                    Instant::now() + limit
                } else if busy.idle_since.elapsed() >= limit {
                    return;
                } else {
                    busy.idle_since + limit
                }
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// One request in flight; see [`Activity`].
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self.0.lock();
        busy.in_flight -= 1;
        if busy.in_flight == 0 {
            busy.idle_since = Instant::now();
        }
    }
}

/// A connection being served: holds one of the `max_connections` permits and counts in
/// `composer_proxy_connections_open` while it lives.
struct OpenConnection {
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self {
            permit: Some(permit),
            metrics,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // The slot is freed before the gauge goes down, so whoever sees the gauge lower can
        // rely on a new connection being served.
        drop(self.permit.take());
        self.metrics.connection_closed();
    }
}

/// Logs refused connections at warn, at most once per [`REFUSAL_LOG_INTERVAL`] with how many
/// were refused since the last line: under a connection flood a line per connection would
/// carry the flood on into the log pipeline (and its disk). The exact count is the metric
/// `composer_proxy_connections_refused_total`.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn note(&mut self, max_connections: usize) {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            refused = self.unlogged,
            max_connections,
            "serving the maximum number of connections; refusing new ones (setting max_connections)"
        );
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// The whole answer to a plain-HTTP connection over `max_connections`. It is written without
/// hyper, before the client's request is read: the connection is never served.
fn refusal_response() -> Bytes {
    let body = serde_json::json!({
        "warning": "composer-proxy is serving its maximum number of connections (setting max_connections); try again"
    })
    .to_string();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Most of a refused client's request head read before answering; Composer's are well under.
const REFUSAL_HEAD_LIMIT: usize = 16 * 1024;

/// The whole answer to a plain-HTTP connection from outside the allowlist, written like the
/// 503 above: the same words as the per-request 403, so curl shows ops what is wrong.
fn forbidden_response(ip: std::net::IpAddr) -> Bytes {
    let body = crate::error::ProxyError::Forbidden(ip).to_response();
    let (parts, body) = body.into_parts();
    let mut bytes = format!(
        "HTTP/1.1 {} Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        parts.status.as_u16(),
        body.len(),
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
}

/// Reads the request head, writes the canned answer (503 or 403) and closes, all within
/// [`REFUSAL_TIMEOUT`] so a client that does not read
/// cannot keep the socket. These sockets take no permit: however fast connections arrive, each
/// is gone within the timeout, while a permit would let a flood lock out served clients.
async fn refuse(mut stream: TcpStream, response: Bytes) {
    let answered = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        // Read the request head first: an HTTP client that gets an answer before it has sent
        // its request treats it as garbage instead of showing it.
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while head.len() < REFUSAL_HEAD_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes its side: closing with unread bytes
        // makes the kernel send a reset, which can destroy the 503 before the client reads it.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = answered {
        tracing::debug!(error = %e, "refused connection ended with an error");
    }
}

type ResponseFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<routes::ResponseBody>, Infallible>> + Send>,
>;

/// What every request on one connection shares.
pub(super) struct ConnectionContext {
    pub(super) state: Arc<AppState>,
    pub(super) peer: SocketAddr,
    activity: Activity,
}

/// The router as a tower service, bound to one connection. hyper-util clones the service for
/// every request (tower's `call` takes `&mut self`), so all of it is behind one `Arc` that only
/// this connection's task touches: cloning `AppState`'s own, which every connection shares,
/// moved its counter between the worker threads' caches several times per request.
#[derive(Clone)]
struct ProxyService(Arc<ConnectionContext>);

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
        let conn = self.0.clone();
        let in_flight = conn.activity.begin();
        Box::pin(async move {
            // Read here, not in `call`: for HTTP/2 this future runs in the stream's own task.
            let progress = SendProgress::current();
            let started = Instant::now();
            let method = request.method().clone();
            let path: Arc<str> = request.uri().path().into();
            let version = request.version();
            let upstream: Exchanges = Arc::new(Mutex::new(Vec::new()));
            let (response, outcome) = EXCHANGE
                .scope(
                    upstream.clone(),
                    routes::handle(&conn.state, request, conn.peer),
                )
                .await;
            // The line is written when the body ends, so it has the bytes really sent and the
            // whole duration (an archive download, not just its headers).
            if let Some(progress) = &progress {
                progress.begin(conn.peer, path.clone());
            }
            let record = AccessRecord {
                conn,
                started,
                method,
                path,
                version,
                status: response.status().as_u16(),
                cache: outcome.cache.map_or("BYPASS", |c| c.as_str()),
                route: outcome.route,
                client: outcome.client,
                token: outcome.token,
                view: outcome.view,
                upstream,
                answered_by: outcome.upstream,
            };
            let announced = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            Ok(response.map(|inner| {
                AccessBody {
                    inner,
                    sent: 0,
                    announced,
                    record: Some(record),
                    progress,
                    _in_flight: in_flight,
                }
                .boxed_unsync()
            }))
        })
    }
}

type Service = TowerToHyperService<SetSensitiveRequestHeaders<ProxyService>>;

/// The per-connection service. Layers, outermost first: mark credentials sensitive so no
/// layer or debug output can print them; then the router, which logs the access line.
fn service(state: Arc<AppState>, peer: SocketAddr, activity: Activity) -> Service {
    let svc = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
        ]))
        .service(ProxyService(Arc::new(ConnectionContext {
            state,
            peer,
            activity,
        })));
    TowerToHyperService::new(svc)
}
