//! Serving the API to the network with limits a slow or greedy client cannot get past: request headers must
//! arrive within a timeout (a request whose headers never finish is dropped, not held), the server holds at
//! most `max_connections` connections (the next one waits in the kernel's backlog until one closes), and a
//! stop lets the requests under way finish. `axum::serve` offers none of these knobs, so this is the loop it
//! would run, on hyper's HTTP/1 connection builder, which has them. Request bodies get their own timeout in
//! the router (`nimbus_api::router`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt as _;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client has to send a request's headers (the first, and each next on a kept-alive
    /// connection).
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to `drain` for the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    // Told to every connection when the server stops: each finishes its request under way, then closes.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // What `into_make_service_with_connect_info` would give handlers: the peer's address.
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = async { stop.wait_for(|stopping| *stopping).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection gives its permit back when it ends.
    let all_ended = permits.acquire_many(max as u32);
    if tokio::time::timeout(drain, all_ended).await.is_err() {
        tracing::warn!("stopping with requests still under way");
    }
}
