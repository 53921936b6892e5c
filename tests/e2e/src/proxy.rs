//! A fault-injecting HTTP reverse proxy in front of a plain-HTTP registry: answers some
//! requests with 500/503 or 429 + `Retry-After`, cuts bodies off mid-way (with or without
//! a matching shorter `Content-Length`), flips bytes, adds latency, or does a seeded
//! random mix of all of these.
//!
//! Response faults apply to what the registry sends back (blob and manifest GETs); the
//! body faults also apply to request bodies of blob uploads (`PUT`/`PATCH` under
//! `/blobs/uploads/`), so the destination side can be hurt too. Every request is
//! recorded ([`FaultProxy::log`]) with the fault it got.
//!
//! Which requests get a fault is in `choose`, body faults in `body`, hostile answers in
//! `hostile`, forwarding to the registry in `forward`; [`Canary`] listeners (addresses
//! that must not be reached) in `canary`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
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
    /// Forward, then close the connection after half of the response body (GETs), or
    /// after forwarding half of an upload's request body (uploads: no answer at all).
    ResetMidBody,
    /// Forward, flipping one byte in the middle of the response body (GETs: the content
    /// no longer matches its digest) or of an upload's request body.
    Corrupt,
    /// Refuse monolithic blob uploads (`PUT` of an upload session with a body) with
    /// 405 `UNSUPPORTED`, like registries that only take chunked `PATCH` uploads.
    RefuseMonolithic,
    /// Forward with the full `Content-Length` but end the body cleanly after half of it
    /// (GETs); the HTTP layer sees a body shorter than announced.
    Truncated,
    /// Forward only the first half of the body with a matching, shorter
    /// `Content-Length`: a well-formed answer (or upload) that only a size or digest
    /// check can catch.
    ShortBody,
    /// Forward after `before_headers_ms`, pausing `mid_body_ms` half-way through the
    /// response body.
    Latency {
        /// Delay before the request is forwarded (so before any response header).
        before_headers_ms: u64,
        /// Pause after half of the response body.
        mid_body_ms: u64,
    },
    /// Hostile: answer with `307` to the same path (and query) on `to`, or on
    /// `localhost:<to's port>` with `by_name` (a name that resolves to loopback).
    Redirect {
        /// Where the redirect points.
        to: SocketAddr,
        /// Use the name `localhost` instead of `to`'s address.
        by_name: bool,
    },
    /// Hostile: forward, then point the answer's `Location` (an upload session) at the
    /// same path and query on `to`.
    RewriteLocation {
        /// Where the rewritten `Location` points.
        to: SocketAddr,
    },
    /// Hostile: forward, then add a `Link: <http://to/...>; rel="next"` header (tag
    /// lists: the next page on another host).
    LinkTo {
        /// Where the next page is said to be.
        to: SocketAddr,
    },
    /// Hostile: answer 401 with a Bearer challenge whose realm is `http://realm/token`.
    Challenge {
        /// The realm's address.
        realm: SocketAddr,
    },
    /// Hostile: answer 200 with a chunked body of `bytes` bytes of manifest-like JSON
    /// (no `Content-Length`), generated as it is sent ([`FaultProxy::bytes_served`]).
    Endless {
        /// How many bytes to offer.
        bytes: u64,
    },
    /// Hostile: answer 200 with an OCI index of `entries` child manifests, generated as
    /// it is sent (chunked, no `Content-Length`).
    HugeIndex {
        /// How many entries.
        entries: u64,
    },
    /// Hostile: answer tag lists with one tag and a `Link` to a next page forever (each
    /// page a new URL), or (`cycle`) alternating between two pages.
    TagLoop {
        /// Alternate between two page URLs instead of always a new one.
        cycle: bool,
    },
    /// Hostile: forward, sending the answer's body at `bytes_per_sec`.
    Trickle {
        /// The rate.
        bytes_per_sec: u64,
    },
    /// One of the faults above (except `RefuseMonolithic` and the hostile ones), picked
    /// per request from the seed (see [`FaultPlan::random_mix`]).
    Mix {
        /// The seed the pick is derived from.
        seed: u64,
    },
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
    /// Manifest `PUT`s only (writes at the destination; reads pass).
    ManifestPuts,
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
    /// Each distinct request (as in `PerRequest`) fails `fail` times, passes `pass`
    /// times, and so on, forever: a retry that succeeds inside an attempt meets the next
    /// failure in the next attempt.
    Cycle {
        /// Failures per cycle.
        fail: usize,
        /// Passes per cycle.
        pass: usize,
    },
    /// Every candidate, forever.
    Always,
    /// Each candidate with probability `percent`/100, decided by hashing the seed, the
    /// request (as in `PerRequest`) and how often that request was seen: the same seed
    /// faults the same requests whatever the interleaving of concurrent requests.
    Random {
        /// Probability in percent (0..=100).
        percent: u8,
        /// The seed; print it when a test fails so the run can be reproduced.
        seed: u64,
    },
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

    /// Every request (but the ping) gets a fault with probability `percent`%, the fault
    /// picked from the whole range (500, 503, 429 with `Retry-After: 0`, resets,
    /// truncation, short bodies, corruption, latency), all derived from `seed`.
    pub fn random_mix(seed: u64, percent: u8) -> FaultPlan {
        FaultPlan {
            fault: Fault::Mix { seed },
            target: Target::Any,
            mode: Mode::Random { percent, seed },
        }
    }
}

/// One request the proxy handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRecord {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// `METHOD path digest=...` with upload session ids replaced by `*`: retries of one
    /// logical request share it.
    pub key: String,
    /// The fault injected into this request, if any.
    pub fault: Option<Fault>,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    plan: Mutex<FaultPlan>,
    candidates: AtomicUsize,
    per_request: Mutex<std::collections::HashMap<String, usize>>,
    injected: AtomicUsize,
    requests: AtomicUsize,
    log: Mutex<Vec<ProxyRecord>>,
    addr: SocketAddr,
    /// Body bytes of hostile answers handed to the connection so far.
    served: Arc<std::sync::atomic::AtomicU64>,
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
            .field("plan", &*self.shared.plan.lock())
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
            log: Mutex::new(Vec::new()),
            addr,
            served: Arc::default(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Reap finished connection tasks; the set aborts the rest on drop.
                while connections.try_join_next().is_some() {}
                let s = s.clone();
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { handle(&s, req).await }
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

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        *self.shared.plan.lock()
    }

    /// Replaces the plan and resets the counters (not the log).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock() = plan;
        self.shared.candidates.store(0, Ordering::SeqCst);
        self.shared.per_request.lock().clear();
    }

    /// Faults injected so far.
    pub fn faults_injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Requests handled so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request handled so far, in arrival order.
    pub fn log(&self) -> Vec<ProxyRecord> {
        self.shared.log.lock().clone()
    }

    /// Body bytes of generated hostile answers ([`Fault::Endless`],
    /// [`Fault::HugeIndex`], [`Fault::Trickle`]) the connection accepted so far.
    pub fn bytes_served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.shared.log.lock().clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

mod body;
mod canary;
mod choose;
mod forward;
mod hostile;

use body::BodyFault;
pub use canary::{Canary, CanaryRequest};
use choose::{matches, pick, request_key, should_fault};
use forward::forward;
use hostile::{hostile_answer, rewrite_answer};

async fn handle(
    s: &Shared,
    req: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Body>, std::io::Error> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let plan = *s.plan.lock();
    let path = req.uri().path().to_string();
    let key = request_key(req.method(), req.uri());
    let (hit, occurrence) = if matches(plan.target, req.method(), &path) {
        should_fault(s, &plan, &key)
    } else {
        (false, 0)
    };
    let fault = match plan.fault {
        Fault::Mix { seed } if hit => Some(pick(seed, &key, occurrence)),
        f if hit => Some(f),
        _ => None,
    };
    let method = req.method().clone();
    let is_get = method == hyper::Method::GET;
    let has_request_body = body_len(req.headers()).is_some_and(|n| n > 0)
        || req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
    let is_upload_body = has_request_body
        && path.contains("/blobs/uploads/")
        && (method == hyper::Method::PUT || method == hyper::Method::PATCH);
    let mut response = BodyFault::default();
    let mut request = BodyFault::default();
    let mut applied = None;
    let mut before_headers = Duration::ZERO;
    match fault {
        None => {}
        Some(f @ Fault::Status(code)) => {
            record(s, &req, key, Some(f));
            return Ok(status(code, None));
        }
        Some(f @ Fault::RateLimited { retry_after_secs }) => {
            record(s, &req, key, Some(f));
            return Ok(status(429, Some(retry_after_secs)));
        }
        Some(f @ Fault::RefuseMonolithic)
            if method == hyper::Method::PUT
                && path.contains("/blobs/uploads/")
                && has_request_body =>
        {
            record(s, &req, key, Some(f));
            let mut r = Response::new(full(
                r#"{"errors":[{"code":"UNSUPPORTED","message":"monolithic uploads refused by the fault proxy"}]}"#
                    .to_string(),
            ));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return Ok(r);
        }
        // Only monolithic PUTs are refused; everything else passes.
        Some(Fault::RefuseMonolithic) => {}
        Some(f @ (Fault::ResetMidBody | Fault::Truncated | Fault::ShortBody | Fault::Corrupt)) => {
            let target = if is_get {
                Some(&mut response)
            } else if is_upload_body {
                Some(&mut request)
            } else {
                None
            };
            if let Some(t) = target {
                match f {
                    Fault::ResetMidBody => t.reset = true,
                    // A clean early end of an upload body is a reset for the registry too.
                    Fault::Truncated if !is_get => t.reset = true,
                    Fault::Truncated => t.truncate = true,
                    Fault::ShortBody => t.short = true,
                    _ => t.corrupt = true,
                }
                applied = Some(f);
            }
        }
        Some(
            f @ Fault::Latency {
                before_headers_ms,
                mid_body_ms,
            },
        ) => {
            before_headers = Duration::from_millis(before_headers_ms);
            if is_get {
                response.pause = Duration::from_millis(mid_body_ms);
            }
            applied = Some(f);
        }
        Some(
            f @ (Fault::Redirect { .. }
            | Fault::Challenge { .. }
            | Fault::Endless { .. }
            | Fault::HugeIndex { .. }
            | Fault::TagLoop { .. }),
        ) => {
            record(s, &req, key, Some(f));
            return Ok(hostile_answer(s, f, req.uri()));
        }
        Some(
            f @ (Fault::RewriteLocation { .. } | Fault::LinkTo { .. } | Fault::Trickle { .. }),
        ) => {
            applied = Some(f);
        }
        // `Mix` was resolved above.
        Some(Fault::Mix { .. }) => {}
    }
    record(s, &req, key, applied);
    if !before_headers.is_zero() {
        tokio::time::sleep(before_headers).await;
    }
    let uri = req.uri().clone();
    match forward(s, req, request, response).await {
        Ok(Some(r)) => Ok(match applied {
            Some(
                f @ (Fault::RewriteLocation { .. } | Fault::LinkTo { .. } | Fault::Trickle { .. }),
            ) => rewrite_answer(s, f, &uri, r),
            _ => r,
        }),
        // The request body was cut off: no answer, the connection is dropped.
        Ok(None) => Err(std::io::Error::other("request reset by the fault proxy")),
        Err(e) => {
            let mut r = Response::new(full(format!("proxy: {e:#}")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(r)
        }
    }
}

fn record(s: &Shared, req: &Request<hyper::body::Incoming>, key: String, fault: Option<Fault>) {
    if fault.is_some() {
        s.injected.fetch_add(1, Ordering::SeqCst);
    }
    s.log.lock().push(ProxyRecord {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        key,
        fault,
        range: req
            .headers()
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
}

fn body_len(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
