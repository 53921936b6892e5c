//! Canary listeners: addresses that must never be reached (or only without
//! credentials).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::full;

/// What a [`Canary`] saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct CanaryShared {
    connections: AtomicUsize,
    requests: Mutex<Vec<CanaryRequest>>,
}

/// A listener that must never be reached, or reached only without credentials: counts
/// connections, records requests (with their `Authorization`), answers 404.
pub struct Canary {
    addr: SocketAddr,
    shared: Arc<CanaryShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    /// Listens on `ip:0` (a loopback address, e.g. `127.0.0.2`).
    pub async fn start(ip: &str) -> Canary {
        let listener = TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap_or_else(|e| panic!("binding a canary on {ip}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("canary address: {e}"));
        let shared = Arc::new(CanaryShared {
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                s.requests.lock().push(CanaryRequest {
                                    method: req.method().to_string(),
                                    target: req
                                        .uri()
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    authorization: req
                                        .headers()
                                        .get(hyper::header::AUTHORIZATION)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_string),
                                });
                                let mut r = Response::new(full(
                                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"canary"}]}"#
                                        .to_string(),
                                ));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                Ok::<_, std::io::Error>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Canary { addr, shared, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<CanaryRequest> {
        self.shared.requests.lock().clone()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}
