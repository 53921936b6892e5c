//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! `/healthz` fails (503) once the reconcile loop has stopped (it panicked or ended),
//! so the kubelet restarts a controller that would otherwise sit idle while looking
//! alive.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Shared state of the endpoints.
#[derive(Clone)]
pub struct ServerState {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Set once the API server answered and the `ImageSync` API is usable.
    pub ready: Arc<AtomicBool>,
    /// Cleared when the reconcile loop stopped: `/healthz` and `/readyz` then fail.
    pub healthy: Arc<AtomicBool>,
}

impl ServerState {
    /// State with fresh flags: healthy, not ready yet.
    pub fn new(metrics: Arc<Metrics>) -> ServerState {
        ServerState {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// The router with every endpoint (exposed for tests).
pub fn router(state: ServerState) -> Router {
    health_router(state.clone()).merge(
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(state),
    )
}

/// `/healthz` and `/readyz` only (served on `--health-addr` when that is set).
pub fn health_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.healthy.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reconcile loop stopped")
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if !state.healthy.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "reconcile loop stopped")
    } else if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Binds `addr` (an error names it).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    async fn start(router: Router) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router));
        addr
    }

    /// The wiring `args` relies on: clearing `healthy` (what happens when the reconcile
    /// task ends) turns `/healthz` and `/readyz` into 503 at once.
    #[tokio::test]
    async fn healthz_fails_once_the_reconcile_loop_stopped() {
        let state = ServerState::new(Arc::new(Metrics::new()));
        let addr = start(router(state.clone())).await;
        assert_eq!(get(addr, "/healthz").await, (200, "ok".into()));
        assert_eq!(get(addr, "/readyz").await.0, 503);
        state.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/metrics").await.0, 200);

        state.healthy.store(false, Ordering::SeqCst);
        assert_eq!(
            get(addr, "/healthz").await,
            (503, "reconcile loop stopped".into())
        );
        assert_eq!(get(addr, "/readyz").await.0, 503);
    }

    #[tokio::test]
    async fn the_health_router_serves_no_metrics() {
        let state = ServerState::new(Arc::new(Metrics::new()));
        let addr = start(health_router(state)).await;
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/metrics").await.0, 404);
    }
}
