//! The access log: one line per request, written when its response body has ended (or broke
//! off, or the client went away), so it has what was really sent; and the request metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::stall::SendProgress;
use super::{ConnectionContext, InFlight};
use crate::routes;
use crate::upstream::Exchanges;

/// What the access-log line says about one request, known once the response is chosen.
pub(super) struct AccessRecord {
    /// The connection's, not `AppState` itself: see [`super::ProxyService`].
    pub(super) conn: Arc<ConnectionContext>,
    pub(super) started: Instant,
    pub(super) method: http::Method,
    pub(super) path: Arc<str>,
    pub(super) version: http::Version,
    pub(super) status: u16,
    pub(super) cache: &'static str,
    pub(super) route: &'static str,
    /// Set when a trusted proxy named the client.
    pub(super) client: Option<std::net::IpAddr>,
    pub(super) token: Option<Arc<str>>,
    /// The view asked, when the request was for one.
    pub(super) view: Option<Arc<str>>,
    pub(super) upstream: Exchanges,
    pub(super) answered_by: Option<Arc<str>>,
}

impl AccessRecord {
    fn write(self, sent: u64, complete: bool) {
        let duration = self.started.elapsed();
        self.conn.state.metrics.record_request(
            self.route,
            self.status,
            self.cache,
            sent,
            duration,
            self.view.as_ref(),
        );
        let notes = std::mem::take(&mut *self.upstream.lock().unwrap_or_else(|p| p.into_inner()));
        // The upstream that answered, else the one last asked; its last exchange is the one the
        // line shows (a merged request may have asked others before it), and the count says
        // how many there were.
        let upstream = self
            .answered_by
            .clone()
            .or_else(|| notes.last().map(|n| n.upstream.clone()));
        let note = notes
            .iter()
            .rev()
            .find(|n| Some(&n.upstream) == upstream.as_ref())
            .or(notes.last());
        let upstream_status = note.and_then(|n| n.status);
        let upstream_ms = note.map(|n| n.took.as_millis() as u64);
        let upstream_requests = notes.len();
        let method = self.method.as_str();
        crate::telemetry::access(&crate::telemetry::AccessLine {
            client: self.client.unwrap_or(self.conn.peer.ip()),
            peer: self.client.map(|_| self.conn.peer.ip()),
            token: self.token.as_deref(),
            view: self.view.as_deref(),
            method,
            path: &self.path,
            version: self.version,
            status: self.status,
            bytes: sent,
            duration_ms: duration.as_millis() as u64,
            cache: self.cache,
            route: self.route,
            upstream: upstream.as_deref(),
            upstream_status,
            upstream_ms,
            upstream_requests,
            complete,
        });
    }
}

/// A response body that counts what is sent and writes the access-log line when it ends, fails,
/// or is dropped (the client went away).
pub(super) struct AccessBody {
    pub(super) inner: routes::ResponseBody,
    pub(super) sent: u64,
    /// Content-Length: hyper stops polling once that much is sent, so the end may never be
    /// seen as such.
    pub(super) announced: Option<u64>,
    pub(super) record: Option<AccessRecord>,
    /// Told of each frame taken, for the send-stall limit.
    pub(super) progress: Option<SendProgress>,
    /// Dropped with the body: the request is over for [`Activity`].
    pub(super) _in_flight: InFlight,
}

impl AccessBody {
    fn finish(&mut self, complete: bool) {
        if let Some(progress) = &self.progress {
            progress.end();
        }
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
                if let Some(progress) = &self.progress {
                    progress.progressed();
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
