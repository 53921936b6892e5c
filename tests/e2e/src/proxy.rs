//! A fault-injecting HTTP reverse proxy in front of a plain-HTTP registry: answers some
//! requests with 500/503, 429 + `Retry-After`, or cuts blob downloads off mid-body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

/// What a faulty request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An error status (500, 502, 503, ...) without forwarding.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Forward, then close the connection after half of the response body (blob GETs;
    /// other requests are forwarded untouched).
    ResetMidBody,
    /// Forward, flipping one byte in the middle of the response body (blob GETs: the
    /// content no longer matches its digest).
    Corrupt,
    /// Refuse monolithic blob uploads (`PUT` of an upload session with a body) with
    /// 405 `UNSUPPORTED`, like registries that only take chunked `PATCH` uploads.
    RefuseMonolithic,
}

/// Which requests count as candidates for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every request except the `/v2/` ping.
    Any,
    /// `GET /v2/<repo>/blobs/<digest>`.
    BlobGets,
    /// Blob upload requests (`/blobs/uploads/...`).
    Uploads,
    /// Manifest requests of any method.
    Manifests,
}

/// When candidates get the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never (a transparent proxy).
    Off,
    /// The first `n` candidates, then never again.
    FirstN(usize),
    /// Every `n`th candidate (1st, n+1th, ...): each retry of a failed request succeeds
    /// for `n >= 2`.
    EveryNth(usize),
    /// Each distinct request (method, path and `digest=`; upload session ids ignored)
    /// fails its first `n` times, then passes: every retry pattern converges, whatever
    /// the concurrency.
    PerRequest(usize),
    /// Every candidate, forever.
    Always,
}

/// The proxy's fault plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// What to inject.
    pub fault: Fault,
    /// Where.
    pub target: Target,
    /// When.
    pub mode: Mode,
}

impl FaultPlan {
    /// A transparent proxy.
    pub fn none() -> FaultPlan {
        FaultPlan {
            fault: Fault::Status(500),
            target: Target::Any,
            mode: Mode::Off,
        }
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    plan: Mutex<FaultPlan>,
    candidates: AtomicUsize,
    per_request: Mutex<std::collections::HashMap<String, usize>>,
    injected: AtomicUsize,
    requests: AtomicUsize,
    addr: SocketAddr,
}

/// A running proxy; stops on drop.
pub struct FaultProxy {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Proxies `127.0.0.1:PORT` (random) to the plain-HTTP registry at `upstream`
    /// (`host:port`). Panics if it cannot bind.
    pub async fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        match Self::try_start(upstream, plan).await {
            Ok(p) => p,
            Err(e) => panic!("starting the fault proxy: {e:#}"),
        }
    }

    /// Like [`FaultProxy::start`] but returns the error.
    pub async fn try_start(upstream: &str, plan: FaultPlan) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("proxy HTTP client")?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            client,
            plan: Mutex::new(plan),
            candidates: AtomicUsize::new(0),
            per_request: Mutex::new(std::collections::HashMap::new()),
            injected: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            addr,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(FaultProxy { shared, task })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> String {
        self.shared.addr.to_string()
    }

    /// Replaces the plan and resets the counters.
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.plan) = plan;
        self.shared.candidates.store(0, Ordering::SeqCst);
        lock(&self.shared.per_request).clear();
    }

    /// Faults injected so far.
    pub fn faults_injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Requests handled so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn matches(target: Target, method: &hyper::Method, path: &str) -> bool {
    if path == "/v2/" || path == "/v2" {
        return false;
    }
    match target {
        Target::Any => true,
        Target::BlobGets => {
            method == hyper::Method::GET
                && path.contains("/blobs/")
                && !path.contains("/blobs/uploads")
        }
        Target::Uploads => path.contains("/blobs/uploads"),
        Target::Manifests => path.contains("/manifests/"),
    }
}

fn should_fault(s: &Shared, plan: &FaultPlan, method: &hyper::Method, uri: &hyper::Uri) -> bool {
    let n = s.candidates.fetch_add(1, Ordering::SeqCst);
    match plan.mode {
        Mode::Off => false,
        Mode::FirstN(k) => n < k,
        Mode::EveryNth(k) => n.is_multiple_of(k.max(1)),
        Mode::PerRequest(k) => {
            let key = request_key(method, uri);
            let mut seen = lock(&s.per_request);
            let count = seen.entry(key).or_insert(0);
            *count += 1;
            *count <= k
        }
        Mode::Always => true,
    }
}

/// `METHOD path [digest]`, with upload session ids replaced by `*`.
fn request_key(method: &hyper::Method, uri: &hyper::Uri) -> String {
    let path = uri.path();
    let path = match path.find("/blobs/uploads/") {
        Some(i) => format!("{}/blobs/uploads/*", &path[..i]),
        None => path.to_string(),
    };
    let digest = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find(|p| p.starts_with("digest=") || p.starts_with("mount="))
        })
        .unwrap_or("");
    format!("{method} {path} {digest}")
}

async fn handle(s: &Shared, req: Request<hyper::body::Incoming>) -> Response<Body> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let plan = *lock(&s.plan);
    let path = req.uri().path().to_string();
    let fault = matches(plan.target, req.method(), &path)
        && should_fault(s, &plan, req.method(), req.uri());
    let mut cut = false;
    let mut corrupt = false;
    if fault {
        match plan.fault {
            Fault::Status(code) => {
                s.injected.fetch_add(1, Ordering::SeqCst);
                return status(code, None);
            }
            Fault::RateLimited { retry_after_secs } => {
                s.injected.fetch_add(1, Ordering::SeqCst);
                return status(429, Some(retry_after_secs));
            }
            Fault::RefuseMonolithic => {
                let has_body = req
                    .headers()
                    .get(hyper::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n > 0);
                if req.method() == hyper::Method::PUT
                    && path.contains("/blobs/uploads/")
                    && has_body
                {
                    s.injected.fetch_add(1, Ordering::SeqCst);
                    let mut r = Response::new(full(
                        r#"{"errors":[{"code":"UNSUPPORTED","message":"monolithic uploads refused by the fault proxy"}]}"#
                            .to_string(),
                    ));
                    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                    return r;
                }
            }
            Fault::Corrupt => {
                corrupt = req.method() == hyper::Method::GET;
                if corrupt {
                    s.injected.fetch_add(1, Ordering::SeqCst);
                }
            }
            Fault::ResetMidBody => {
                cut = req.method() == hyper::Method::GET;
                if cut {
                    s.injected.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    match forward(s, req, cut, corrupt).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = Response::new(full(format!("proxy: {e:#}")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

fn full(s: String) -> Body {
    http_body_util::Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn status(code: u16, retry_after: Option<u64>) -> Response<Body> {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if code == StatusCode::TOO_MANY_REQUESTS {
        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected by the fault proxy"}]}"#
    } else {
        r#"{"errors":[{"code":"UNKNOWN","message":"injected by the fault proxy"}]}"#
    };
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
    }
    r
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

async fn forward(
    s: &Shared,
    req: Request<hyper::body::Incoming>,
    cut: bool,
    corrupt: bool,
) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{}{pq}", s.upstream);
    let mut out = s.client.request(parts.method.clone(), &url);
    for (k, v) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let has_body = parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
        || parts.headers.contains_key(hyper::header::TRANSFER_ENCODING);
    if has_body {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        out = out.body(reqwest::Body::wrap_stream(stream));
    }
    let resp = out.send().await.context("forwarding")?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    let upstream_prefix = format!("http://{}", s.upstream);
    for (k, v) in resp.headers().iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == reqwest::header::LOCATION {
            let l = v
                .to_str()
                .unwrap_or("")
                .replace(&upstream_prefix, &format!("http://{}", s.addr));
            builder = builder.header(k.as_str(), l);
        } else {
            builder = builder.header(k.as_str(), v.as_bytes());
        }
    }
    let is_head = parts.method == hyper::Method::HEAD;
    let body: Body = if is_head {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        let limit = if cut {
            resp.content_length().map(|n| n / 2).unwrap_or(0)
        } else {
            u64::MAX
        };
        let flip_at = if corrupt {
            resp.content_length().map(|n| n / 2)
        } else {
            None
        };
        let mut sent: u64 = 0;
        let stream = resp
            .bytes_stream()
            .map_err(std::io::Error::other)
            .map(move |chunk| {
                let chunk = chunk?;
                if sent >= limit {
                    return Ok(Frame::data(Bytes::new()));
                }
                let room = limit - sent;
                let chunk = if chunk.len() as u64 > room {
                    chunk.slice(..room as usize)
                } else {
                    chunk
                };
                let chunk = match flip_at {
                    Some(at) if at >= sent && at < sent + chunk.len() as u64 => {
                        let mut bytes = chunk.to_vec();
                        bytes[(at - sent) as usize] ^= 0xFF;
                        Bytes::from(bytes)
                    }
                    _ => chunk,
                };
                sent += chunk.len() as u64;
                Ok(Frame::data(chunk))
            });
        // After the cut (and a pause, so the headers and the partial body are flushed),
        // end with an error so hyper aborts the connection.
        let stream = if cut {
            stream
                .chain(futures::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    Err(std::io::Error::other("connection reset by the fault proxy"))
                }))
                .boxed()
        } else {
            stream.boxed()
        };
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    builder.body(body).context("building the response")
}
