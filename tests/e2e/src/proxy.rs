//! A fault-injecting HTTP reverse proxy in front of a plain-HTTP registry: answers some
//! requests with 500/503 or 429 + `Retry-After`, cuts bodies off mid-way (with or without
//! a matching shorter `Content-Length`), flips bytes, adds latency, or does a seeded
//! random mix of all of these.
//!
//! Response faults apply to what the registry sends back (blob and manifest GETs); the
//! body faults also apply to request bodies of blob uploads (`PUT`/`PATCH` under
//! `/blobs/uploads/`), so the destination side can be hurt too. Every request is
//! recorded ([`FaultProxy::log`]) with the fault it got.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

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
        Target::ManifestPuts => method == hyper::Method::PUT && path.contains("/manifests/"),
    }
}

/// SplitMix64: a small, well-mixed, deterministic hash step.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic 64-bit value from the seed, the request key and its occurrence.
fn draw(seed: u64, key: &str, occurrence: usize, salt: u64) -> u64 {
    let mut h = splitmix(seed ^ salt.wrapping_mul(0x100_0000_01B3));
    for b in key.bytes() {
        h = splitmix(h ^ u64::from(b));
    }
    splitmix(h ^ occurrence as u64)
}

/// Whether this candidate gets the fault, and the occurrence number of its key.
fn should_fault(s: &Shared, plan: &FaultPlan, key: &str) -> (bool, usize) {
    let n = s.candidates.fetch_add(1, Ordering::SeqCst);
    let occurrence = {
        let mut seen = s.per_request.lock();
        let count = seen.entry(key.to_string()).or_insert(0);
        *count += 1;
        *count
    };
    let fault = match plan.mode {
        Mode::Off => false,
        Mode::FirstN(k) => n < k,
        Mode::EveryNth(k) => n.is_multiple_of(k.max(1)),
        Mode::PerRequest(k) => occurrence <= k,
        Mode::Cycle { fail, pass } => (occurrence - 1) % (fail + pass).max(1) < fail,
        Mode::Always => true,
        Mode::Random { percent, seed } => draw(seed, key, occurrence, 1) % 100 < u64::from(percent),
    };
    (fault, occurrence)
}

/// The concrete fault for one request of a [`Fault::Mix`] plan.
fn pick(seed: u64, key: &str, occurrence: usize) -> Fault {
    const MIX: [Fault; 9] = [
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimited {
            retry_after_secs: 0,
        },
        Fault::ResetMidBody,
        Fault::Truncated,
        Fault::ShortBody,
        Fault::Corrupt,
        Fault::Latency {
            before_headers_ms: 300,
            mid_body_ms: 0,
        },
        Fault::Latency {
            before_headers_ms: 0,
            mid_body_ms: 300,
        },
    ];
    MIX[(draw(seed, key, occurrence, 2) % MIX.len() as u64) as usize]
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

/// What to do to a body on its way through.
#[derive(Debug, Clone, Copy, Default)]
struct BodyFault {
    /// Stop after half of the body, then reset the connection.
    reset: bool,
    /// Stop after half of the body, then end it cleanly (the announced length stays).
    truncate: bool,
    /// Send half of the body with a matching `Content-Length`.
    short: bool,
    /// Flip the middle byte.
    corrupt: bool,
    /// Pause half-way.
    pause: Duration,
}

impl BodyFault {
    fn any(&self) -> bool {
        self.reset || self.truncate || self.short || self.corrupt || !self.pause.is_zero()
    }
}

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

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Applies `fault` to a body stream of `len` bytes (when known): limits, flips, pauses,
/// and what happens at the cut.
fn faulty_stream<S>(
    stream: S,
    len: Option<u64>,
    fault: BodyFault,
) -> futures::stream::BoxStream<'static, std::result::Result<Bytes, std::io::Error>>
where
    S: futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
{
    if !fault.any() {
        return stream.boxed();
    }
    let half = len.map(|n| n / 2).unwrap_or(0);
    let limit = if fault.reset || fault.truncate || fault.short {
        half
    } else {
        u64::MAX
    };
    let flip_at = if fault.corrupt {
        len.map(|n| n / 2)
    } else {
        None
    };
    let pause = fault.pause;
    let mut sent: u64 = 0;
    let mut paused = pause.is_zero();
    let stream = stream.then(move |chunk| {
        let wait = if !paused && sent + chunk.as_ref().map(|c| c.len() as u64).unwrap_or(0) > half {
            paused = true;
            pause
        } else {
            Duration::ZERO
        };
        let out = chunk.map(|chunk| {
            if sent >= limit {
                return Bytes::new();
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
            chunk
        });
        async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            out
        }
    });
    if fault.reset {
        // After the cut (and a pause, so the headers and the partial body are flushed),
        // end with an error so hyper aborts the connection.
        stream
            .chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset by the fault proxy"))
            }))
            .boxed()
    } else {
        stream.boxed()
    }
}

/// Forwards the request; `None` when the request body was cut off on purpose (the
/// client gets no answer).
async fn forward(
    s: &Shared,
    req: Request<hyper::body::Incoming>,
    request_fault: BodyFault,
    response_fault: BodyFault,
) -> Result<Option<Response<Body>>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{}{pq}", s.upstream);
    let mut out = s.client.request(parts.method.clone(), &url);
    let request_len = body_len(&parts.headers);
    for (k, v) in parts.headers.iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == hyper::header::CONTENT_LENGTH && request_fault.short {
            let short = request_len.map(|n| n / 2).unwrap_or(0);
            out = out.header(k, short.to_string());
            continue;
        }
        out = out.header(k, v);
    }
    let has_body = parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
        || parts.headers.contains_key(hyper::header::TRANSFER_ENCODING);
    if request_fault.reset {
        // Swallow half of the upload, then drop the connection without an answer: the
        // registry never sees a complete request.
        let mut stream = body.into_data_stream();
        let half = request_len.map(|n| n / 2).unwrap_or(0);
        let mut read: u64 = 0;
        while read < half {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Ok(None);
    }
    if has_body {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let stream = faulty_stream(stream, request_len, request_fault);
        out = out.body(reqwest::Body::wrap_stream(stream));
    }
    let resp = out.send().await.context("forwarding")?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    let upstream_prefix = format!("http://{}", s.upstream);
    let is_head = parts.method == hyper::Method::HEAD;
    let response_len = resp.content_length();
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
        } else if k == reqwest::header::CONTENT_LENGTH && response_fault.short && !is_head {
            let short = response_len.map(|n| n / 2).unwrap_or(0);
            builder = builder.header(k.as_str(), short.to_string());
        } else {
            builder = builder.header(k.as_str(), v.as_bytes());
        }
    }
    let body: Body = if is_head {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let stream =
            faulty_stream(stream, response_len, response_fault).map(|r| r.map(Frame::data));
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    builder
        .body(body)
        .context("building the response")
        .map(Some)
}

// === hostile answers ===

/// A body streamed from `chunks`, counting what the connection takes into `served`.
fn counted_body<S>(served: Arc<std::sync::atomic::AtomicU64>, chunks: S) -> Body
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    let stream = chunks.map(move |c| {
        served.fetch_add(c.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Frame::data(c))
    });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// `total` bytes: `prefix`, then `filler` repeated (64 KiB chunks), made as they go.
fn generated(prefix: String, filler: u8, total: u64) -> impl futures::Stream<Item = Bytes> + Send {
    const CHUNK: u64 = 64 * 1024;
    let head = Bytes::from(prefix);
    let rest = total.saturating_sub(head.len() as u64);
    let chunks = rest.div_ceil(CHUNK);
    futures::stream::once(async move { head }).chain(futures::stream::iter(0..chunks).map(
        move |i| {
            let n = if i + 1 == chunks {
                rest - i * CHUNK
            } else {
                CHUNK
            };
            Bytes::from(vec![filler; n as usize])
        },
    ))
}

fn hostile_answer(s: &Shared, fault: Fault, uri: &hyper::Uri) -> Response<Body> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = Response::new(full(String::new()));
    match fault {
        Fault::Redirect { to, by_name } => {
            let host = if by_name {
                format!("localhost:{}", to.port())
            } else {
                to.to_string()
            };
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            set(
                &mut r,
                hyper::header::LOCATION,
                &format!("http://{host}{pq}"),
            );
        }
        Fault::Challenge { realm } => {
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            set(
                &mut r,
                hyper::header::WWW_AUTHENTICATE,
                &format!("Bearer realm=\"http://{realm}/token\",service=\"hostile\""),
            );
        }
        Fault::Endless { bytes } => {
            let prefix = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#;
            *r.body_mut() = counted_body(s.served.clone(), generated(prefix.into(), b'a', bytes));
            set(
                &mut r,
                hyper::header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            );
        }
        Fault::HugeIndex { entries } => {
            let entry = format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1}}"#,
                "0".repeat(64)
            );
            let head = Bytes::from(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
            );
            let entries_stream = futures::stream::iter(0..entries).map(move |i| {
                let sep = if i == 0 { "" } else { "," };
                Bytes::from(format!("{sep}{entry}"))
            });
            let stream = futures::stream::once(async move { head })
                .chain(entries_stream)
                .chain(futures::stream::once(async { Bytes::from_static(b"]}") }));
            *r.body_mut() = counted_body(s.served.clone(), stream);
            set(
                &mut r,
                hyper::header::CONTENT_TYPE,
                "application/vnd.oci.image.index.v1+json",
            );
        }
        Fault::TagLoop { cycle } => {
            let n = s.requests.load(Ordering::SeqCst);
            let next = if cycle { n % 2 } else { n };
            let path = uri.path();
            *r.body_mut() = full(format!(r#"{{"name":"loop","tags":["t{n}"]}}"#));
            set(&mut r, hyper::header::CONTENT_TYPE, "application/json");
            set(
                &mut r,
                hyper::header::LINK,
                &format!("<{path}?n=1&last=t{next}>; rel=\"next\""),
            );
        }
        _ => {}
    }
    r
}

/// Hostile changes to a forwarded answer.
fn rewrite_answer(
    s: &Shared,
    fault: Fault,
    uri: &hyper::Uri,
    mut r: Response<Body>,
) -> Response<Body> {
    match fault {
        Fault::RewriteLocation { to } => {
            let loc = r
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(loc) = loc {
                let pq = match loc.find("/v2/") {
                    Some(i) => loc[i..].to_string(),
                    None => loc,
                };
                set(&mut r, hyper::header::LOCATION, &format!("http://{to}{pq}"));
            }
        }
        Fault::LinkTo { to } => {
            let path = uri.path();
            set(
                &mut r,
                hyper::header::LINK,
                &format!("<http://{to}{path}?n=1&last=zzz>; rel=\"next\""),
            );
        }
        Fault::Trickle { bytes_per_sec } => {
            let served = s.served.clone();
            let (parts, body) = r.into_parts();
            let per_tick = (bytes_per_sec / 10).max(1) as usize;
            let stream = body.into_data_stream().flat_map(move |chunk| {
                let pieces: Vec<Bytes> = match chunk {
                    Ok(c) => (0..c.len())
                        .step_by(per_tick)
                        .map(|i| c.slice(i..(i + per_tick).min(c.len())))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                futures::stream::iter(pieces)
            });
            let slow = stream.then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                piece
            });
            return Response::from_parts(parts, counted_body(served, slow));
        }
        _ => {}
    }
    r
}

fn set(r: &mut Response<Body>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

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
