//! The accept loop of the small in-process mocks (GitHub's API, Marketplace accounts, release
//! downloads): every connection served with HTTP/1.1 or HTTP/2 by one handler.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves `handle` (given the mock's state and each request) on `listener` until the returned
/// task is aborted.
pub fn spawn<S, F, Fut>(listener: TcpListener, state: Arc<S>, handle: F) -> JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (state, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handle(state.clone(), request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                // Errors here are clients going away; the mock carries on.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
