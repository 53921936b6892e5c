//! Crash safety and races (issue 7): SIGKILL at many points of a copy, two controllers
//! without leader election, two Terraform applies on one destination.
//!
//! Kill points are request ordinals at the destination: a [`KillProxy`] in front of the
//! destination registry holds the Nth request (and every later one) before the registry
//! sees it, SIGKILLs the copying process, and lets held requests fail only after the
//! process is reaped. So the registry's view at a kill point is exactly "requests
//! 1..N-1 (and whatever was already in flight)", whatever the machine's load.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use imagesync_e2e::fixtures::{self, FixtureSpec, Pushed};
use imagesync_e2e::registry::Registry;
use tokio::net::TcpListener;

// === the kill proxy ===

/// What fired a kill.
#[derive(Clone, Debug)]
struct Fired {
    /// The ordinal of the held request (1-based, since [`KillProxy::arm`]).
    ordinal: usize,
    /// `METHOD kind` of that request (`PUT upload`, `HEAD blob`, ...).
    request: String,
}

#[derive(Default)]
struct KillState {
    trigger: Option<usize>,
    pid: Option<u32>,
    fired: Option<Fired>,
    holding: bool,
}

struct KillShared {
    upstream: String,
    addr: String,
    client: reqwest::Client,
    count: AtomicUsize,
    state: Mutex<KillState>,
}

/// A transparent reverse proxy that, once armed with `N`, SIGKILLs a process when the
/// Nth request arrives, holding that request and all later ones until [`KillProxy::release`].
struct KillProxy {
    shared: Arc<KillShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KillProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

impl KillProxy {
    async fn start(upstream: &str) -> KillProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(KillShared {
            upstream: upstream.to_string(),
            addr,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            count: AtomicUsize::new(0),
            state: Mutex::new(KillState::default()),
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
        KillProxy { shared, task }
    }

    fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Kill the process set with [`KillProxy::set_pid`] at the `n`th request from now.
    fn arm(&self, n: usize) {
        let mut st = lock(&self.shared.state);
        self.shared.count.store(0, Ordering::SeqCst);
        *st = KillState {
            trigger: Some(n),
            ..KillState::default()
        };
    }

    fn set_pid(&self, pid: u32) {
        lock(&self.shared.state).pid = Some(pid);
    }

    fn fired(&self) -> Option<Fired> {
        lock(&self.shared.state).fired.clone()
    }

    /// Requests seen since the last [`KillProxy::arm`].
    fn requests(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Held requests fail (the process that sent them is dead); later ones pass.
    fn release(&self) {
        let mut st = lock(&self.shared.state);
        st.holding = false;
        st.trigger = None;
    }
}

fn kind(method: &hyper::Method, path: &str) -> String {
    let what = if path == "/v2/" || path == "/v2" {
        "ping"
    } else if path.contains("/blobs/uploads") {
        "upload"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.contains("/manifests/sha256:") {
        "manifest by digest"
    } else if path.contains("/manifests/") {
        "manifest by tag"
    } else {
        "other"
    };
    format!("{method} {what}")
}

async fn handle(s: &KillShared, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let ordinal = s.count.fetch_add(1, Ordering::SeqCst) + 1;
    let (hold, fire) = {
        let mut st = lock(&s.state);
        if st.holding {
            (true, false)
        } else if st.trigger == Some(ordinal) {
            st.holding = true;
            st.trigger = None;
            st.fired = Some(Fired {
                ordinal,
                request: kind(req.method(), req.uri().path()),
            });
            (true, true)
        } else {
            (false, false)
        }
    };
    if fire {
        // The pid is set right after spawning; a request can only come after that.
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = lock(&s.state).pid {
                break Some(pid);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if let Some(pid) = pid {
            let _ = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await;
        }
    }
    if hold {
        while lock(&s.state).holding {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        return text_response(502, "held by the kill proxy");
    }
    match forward(s, req).await {
        Ok(r) => r,
        Err(e) => text_response(502, &format!("kill proxy: {e:#}")),
    }
}

fn text_response(code: u16, text: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
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
    s: &KillShared,
    req: Request<hyper::body::Incoming>,
) -> anyhow::Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = s
        .client
        .request(parts.method.clone(), format!("http://{}{pq}", s.upstream));
    for (k, v) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    if parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
        || parts.headers.contains_key(hyper::header::TRANSFER_ENCODING)
    {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        out = out.body(reqwest::Body::wrap_stream(stream));
    }
    let resp = out.send().await?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    let upstream = format!("http://{}", s.upstream);
    for (k, v) in resp.headers().iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == reqwest::header::LOCATION {
            let l = v
                .to_str()
                .unwrap_or("")
                .replace(&upstream, &format!("http://{}", s.addr));
            builder = builder.header(k.as_str(), l);
        } else {
            builder = builder.header(k.as_str(), v.as_bytes());
        }
    }
    let body: Body = if parts.method == hyper::Method::HEAD {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        let stream = resp
            .bytes_stream()
            .map_err(std::io::Error::other)
            .map_ok(Frame::data);
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    Ok(builder.body(body)?)
}

// === checks ===

/// The manifest and blob digests `bytes` (a manifest or index) references.
fn references(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let digests = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["digest"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let children = digests(&json["manifests"]);
    let mut blobs = digests(&json["layers"]);
    if let Some(c) = json["config"]["digest"].as_str() {
        blobs.push(c.to_string());
    }
    (children, blobs)
}

/// The digest `repo:tag` points at on the plain registry `addr` (None when absent),
/// after checking that every child manifest and blob it references is present there.
/// Panics (with `context`) on a dangling reference.
async fn tag_complete(addr: &str, repo: &str, tag: &str, context: &str) -> Option<String> {
    let (_, bytes) = fixtures::get_manifest(addr, repo, tag).await?;
    let digest = fixtures::sha256(&bytes);
    let mut stack = vec![bytes];
    while let Some(bytes) = stack.pop() {
        let (children, blobs) = references(&bytes);
        for child in children {
            let Some((_, b)) = fixtures::get_manifest(addr, repo, &child).await else {
                panic!("{context}: {repo}:{tag} ({digest}) references missing manifest {child}");
            };
            assert_eq!(fixtures::sha256(&b), child, "{context}: child bytes");
            stack.push(b);
        }
        for blob in blobs {
            let status = fixtures::blob_status(addr, repo, &blob).await;
            assert_eq!(
                status, 200,
                "{context}: {repo}:{tag} ({digest}) references missing blob {blob}"
            );
        }
    }
    Some(digest)
}

/// `repo:tag` is absent, or it is exactly one of `images` with everything it references.
/// Returns the index in `images` of the one it holds.
async fn absent_or_one_of(
    reg: &Registry,
    repo: &str,
    tag: &str,
    images: &[&Pushed],
    context: &str,
) -> Option<usize> {
    let d = tag_complete(reg.addr(), repo, tag, context).await?;
    let Some(i) = images.iter().position(|img| img.digest == d) else {
        panic!("{context}: {repo}:{tag} holds {d}, none of the expected images");
    };
    fixtures::assert_identical(reg.addr(), repo, tag, images[i]).await;
    Some(i)
}

/// A multi-blob 2-platform index: 2 x (4 layers + config) = 10 blobs of 16 KiB.
fn crash_spec(seed: u64) -> FixtureSpec {
    FixtureSpec {
        seed,
        layers: 4,
        layer_size: 16 * 1024,
        ..FixtureSpec::default()
    }
}

/// `count` distinct ordinals spread evenly over `1..=total`.
fn spread(count: usize, total: usize) -> Vec<usize> {
    assert!(
        total >= count,
        "only {total} requests for {count} kill points"
    );
    let mut v: Vec<usize> = (0..count)
        .map(|i| 1 + i * (total - 1) / (count - 1).max(1))
        .collect();
    v.dedup();
    v
}

// === CLI ===

fn cli_copy(src: &str, dst: &str, insecure: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(imagesync_e2e::bin("imagesync"));
    for i in insecure {
        cmd.args(["--insecure-registry", i]);
    }
    cmd.args(["--no-progress", "copy", src, dst])
        .env("RUST_LOG", "warn")
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// SIGKILL `imagesync copy` at 22 request ordinals spread over a whole copy of a
/// 10-blob 2-platform index (every other one an update of a tag holding another image);
/// after each kill the destination tag is absent or a complete image (the old or the
/// new one); a restarted copy converges to a byte-identical image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn cli_killed_at_22_points_converges() {
    let started = Instant::now();
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let image = fixtures::push_index_with(src.addr(), "app", "1", crash_spec(71)).await;
    // What odd kill points' destinations hold before the copy (an update, not a create).
    let old = fixtures::push_index_with(src.addr(), "old", "1", crash_spec(72)).await;
    let proxy = KillProxy::start(dst.addr()).await;
    let insecure = [src.addr(), proxy.addr()];
    let source = src.reference("app:1");

    // Calibrate: how many destination requests a whole copy makes.
    proxy.arm(usize::MAX);
    let out = cli_copy(
        &source,
        &format!("{}/crash/calibrate:1", proxy.addr()),
        &insecure,
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = proxy.requests();
    fixtures::assert_identical(dst.addr(), "crash/calibrate", "1", &image).await;

    let points = spread(22, total);
    assert!(points.len() >= 20, "{points:?}");
    let mut exercised = Vec::new();
    for (i, &n) in points.iter().enumerate() {
        let repo = format!("crash/p{i}");
        let dst_ref = format!("{}/{repo}:1", proxy.addr());
        let update = i % 2 == 1;
        if update {
            fixtures::push_index_with(dst.addr(), &repo, "1", crash_spec(72)).await;
        }
        proxy.arm(n);
        let mut child = cli_copy(&source, &dst_ref, &insecure).spawn().unwrap();
        proxy.set_pid(child.id().unwrap());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("copy neither finished nor was killed")
            .unwrap();
        let fired = proxy.fired();
        proxy.release();
        let Some(fired) = fired else {
            panic!("kill point {n}/{total} never reached; the copy exited with {status}");
        };
        assert_eq!(fired.ordinal, n);
        assert!(!status.success(), "killed copy exited 0 at {fired:?}");
        let context = format!("CLI kill point {n}/{total} ({})", fired.request);
        let held = absent_or_one_of(&dst, &repo, "1", &[&image, &old], &context).await;
        if update {
            // The old image stays complete until the new one replaces it.
            assert!(held.is_some(), "{context}: the old tag vanished");
        }
        exercised.push(format!(
            "#{n} {} (tag: {})",
            fired.request,
            match held {
                None => "absent",
                Some(0) => "new image",
                Some(_) => "old image",
            }
        ));

        // Restart: converges.
        proxy.arm(usize::MAX);
        let out = cli_copy(&source, &dst_ref, &insecure)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{context}: restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{}/{repo}@{}", proxy.addr(), image.digest),
            "{context}"
        );
        fixtures::assert_identical(dst.addr(), &repo, "1", &image).await;
    }
    eprintln!(
        "CLI: {} kill points over {total} destination requests in {:?}: {}",
        exercised.len(),
        started.elapsed(),
        exercised.join(", ")
    );
}
