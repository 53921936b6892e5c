//! Crash safety and races (issue 7): SIGKILL at many points of a copy, two controllers
//! without leader election, two Terraform applies on one destination.
//!
//! Kill points are request ordinals at the destination: a [`KillProxy`] in front of the
//! destination registry holds the Nth request (and every later one) before the registry
//! sees it, SIGKILLs the copying process, and lets held requests fail only after the
//! process is reaped. So the registry's view at a kill point is exactly "requests
//! 1..N-1 (and whatever was already in flight)", whatever the machine's load.
//!
//! Over 600 lines because it is one module per area (the kill points and races): each test
//! is one scenario against real components, and its set-up is spelled out so a failure
//! reads alone.

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
    /// Tag PUTs wait until this many are waiting, then all go on together.
    gate: Option<usize>,
    at_gate: usize,
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

    /// Manifest PUTs by tag wait until `n` of them are waiting (or 60 s passed), then all
    /// go on at once: `n` writers race for tags with their whole images uploaded.
    fn gate_tag_puts(&self, n: usize) {
        let mut st = lock(&self.shared.state);
        st.gate = Some(n);
        st.at_gate = 0;
    }

    /// Tag PUTs that passed the gate.
    fn gated(&self) -> usize {
        lock(&self.shared.state).at_gate
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
    if req.method() == hyper::Method::PUT
        && kind(req.method(), req.uri().path()) == "PUT manifest by tag"
    {
        let gate = {
            let mut st = lock(&s.state);
            st.gate.inspect(|_| st.at_gate += 1)
        };
        if let Some(n) = gate {
            let deadline = Instant::now() + Duration::from_secs(60);
            while lock(&s.state).at_gate < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
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

/// Reads a plain-HTTP registry with one client (building a client per request, as the
/// fixtures helpers do, costs more than the request here).
struct Dest {
    client: reqwest::Client,
    addr: String,
}

impl Dest {
    fn new(reg: &Registry) -> Dest {
        Dest {
            client: reqwest::Client::new(),
            addr: reg.addr().to_string(),
        }
    }

    async fn get_once(&self, repo: &str, reference: &str) -> reqwest::Response {
        self.client
            .get(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header(
                reqwest::header::ACCEPT,
                [
                    fixtures::OCI_INDEX,
                    fixtures::OCI_MANIFEST,
                    fixtures::DOCKER_LIST,
                    fixtures::DOCKER_MANIFEST,
                ]
                .join(", "),
            )
            .send()
            .await
            .unwrap()
    }

    /// Media type and bytes of `repo:reference` (None on 404).
    async fn get(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        // distribution's filesystem driver rewrites a tag's link file in place, so a read
        // racing a tag write can get a 500: read again (a dangling tag stays a 404/500
        // for good and still fails below).
        let mut tries = 0;
        let resp = loop {
            tries += 1;
            let resp = self.get_once(repo, reference).await;
            if resp.status().is_server_error() && tries < 10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            break resp;
        };
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            resp.status().is_success(),
            "GET {repo}:{reference}: {}",
            resp.status()
        );
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((ct, resp.bytes().await.unwrap().to_vec()))
    }

    async fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        self.client
            .head(format!("http://{}/v2/{repo}/blobs/{digest}", self.addr))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The digest `repo:tag` points at (None when absent).
    async fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        self.get(repo, tag).await.map(|(_, b)| fixtures::sha256(&b))
    }

    /// What `repo:tag` holds (None when absent), after checking that every child manifest
    /// and blob it references is present. Panics (with `context`) on a dangling reference:
    /// one missing while the tag still points at the manifest that references it (a
    /// reference that goes missing because the tag is being moved or deleted at that
    /// moment is a legitimate race with the checker: walk again).
    async fn complete(&self, repo: &str, tag: &str, context: &str) -> Option<(String, Vec<u8>)> {
        'walk: for _ in 0..20 {
            let (ct, bytes) = self.get(repo, tag).await?;
            let digest = fixtures::sha256(&bytes);
            let mut missing = Vec::new();
            let mut stack = vec![bytes.clone()];
            while let Some(b) = stack.pop() {
                let (children, blobs) = references(&b);
                for child in children {
                    match self.get(repo, &child).await {
                        Some((_, cb)) => {
                            assert_eq!(fixtures::sha256(&cb), child, "{context}: child bytes");
                            stack.push(cb);
                        }
                        None => missing.push(format!("manifest {child}")),
                    }
                }
                for blob in blobs {
                    if self.blob_status(repo, &blob).await != 200 {
                        missing.push(format!("blob {blob}"));
                    }
                }
            }
            if missing.is_empty() {
                return Some((ct, bytes));
            }
            if self.tag_digest(repo, tag).await.as_deref() != Some(digest.as_str()) {
                eprintln!("{context}: {repo}:{tag} moved off {digest} while checked (missing {missing:?}); again");
                continue 'walk;
            }
            panic!("{context}: {repo}:{tag} ({digest}) references missing {missing:?}");
        }
        panic!("{context}: {repo}:{tag} kept moving while being checked");
    }

    /// `repo:tag` is absent, or it is exactly one of `images` (bytes, media type, every
    /// child and blob). Returns the index in `images` of the one it holds.
    async fn absent_or_one_of(
        &self,
        repo: &str,
        tag: &str,
        images: &[&Pushed],
        context: &str,
    ) -> Option<usize> {
        // One GET: the tag may move meanwhile (racing writers); the walk goes by digest.
        let (ct, bytes) = self.complete(repo, tag, context).await?;
        let d = fixtures::sha256(&bytes);
        let Some(i) = images.iter().position(|img| img.digest == d) else {
            panic!("{context}: {repo}:{tag} holds {d}, none of the expected images");
        };
        assert_eq!(bytes, images[i].manifest, "{context}: manifest bytes");
        assert_eq!(ct, images[i].media_type, "{context}: media type");
        Some(i)
    }

    /// Pushes the index of `spec` to `repo:1` with raw HTTP.
    async fn push_index(&self, repo: &str, spec: &FixtureSpec) -> Pushed {
        let target = fixtures::Target {
            base: format!("http://{}", self.addr),
            client: self.client.clone(),
            basic: None,
        };
        target.push_index(repo, "1", spec).await.unwrap()
    }

    /// `repo:tag` holds exactly `image`.
    async fn identical(&self, repo: &str, tag: &str, image: &Pushed, context: &str) {
        assert_eq!(
            self.absent_or_one_of(repo, tag, &[image], context).await,
            Some(0),
            "{context}: {repo}:{tag} is missing"
        );
    }
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
    cmd.args(["--no-progress", "--no-blob-cache", "copy", src, dst])
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
    let check = Dest::new(&dst);
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
    check
        .identical("crash/calibrate", "1", &image, "calibration")
        .await;

    let points = spread(22, total);
    assert!(points.len() >= 20, "{points:?}");
    let mut exercised = Vec::new();
    for (i, &n) in points.iter().enumerate() {
        let repo = format!("crash/p{i}");
        let dst_ref = format!("{}/{repo}:1", proxy.addr());
        let update = i % 2 == 1;
        if update {
            check.push_index(&repo, &crash_spec(72)).await;
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
        let held = check
            .absent_or_one_of(&repo, "1", &[&image, &old], &context)
            .await;
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
        check.identical(&repo, "1", &image, &context).await;
    }
    eprintln!(
        "CLI: {} kill points over {total} destination requests in {:?}: {}",
        exercised.len(),
        started.elapsed(),
        exercised.join(", ")
    );
}

// === controller ===

/// Creates `ns/name` copying `source` to `destination` (re-checks every 2 s).
async fn create_image_sync(
    client: &kube::Client,
    ns: &str,
    name: &str,
    source: &str,
    destination: &str,
) {
    use imagesync_api::ImageSync;
    let obj: ImageSync = serde_json::from_value(serde_json::json!({
        "apiVersion": "imagesync.dev/v1alpha1",
        "kind": "ImageSync",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": source, "destination": destination, "resyncInterval": "2s"},
    }))
    .unwrap();
    kube::Api::<ImageSync>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &obj)
        .await
        .unwrap();
}

/// Whether every `(namespace, name)` is Ready with `digest`.
async fn all_ready(client: &kube::Client, objects: &[(String, String)], digest: &str) -> bool {
    use imagesync_api::ImageSync;
    for (ns, name) in objects {
        let api = kube::Api::<ImageSync>::namespaced(client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(o)) if crate::controller::ready_with(&o, digest) => {}
            _ => return false,
        }
    }
    true
}

/// The harness of [`controller_killed_at_22_points_converges`].
struct ControllerCrash {
    api: imagesync_e2e::kube::ApiServer,
    client: kube::Client,
    src: Registry,
    dst: Registry,
    check: Dest,
    image: Pushed,
    old: Pushed,
}

/// What one round did.
struct Round {
    proxy: KillProxy,
    objects: Vec<(String, String)>,
    repos: Vec<String>,
    requests: usize,
    report: String,
}

impl ControllerCrash {
    fn args(&self, proxies: &[&KillProxy], ns: Option<&str>, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "--insecure-registry".to_string(),
            self.src.addr().to_string(),
        ];
        for p in proxies {
            a.push("--insecure-registry".into());
            a.push(p.addr().to_string());
        }
        if let Some(ns) = ns {
            a.push("--namespace".into());
            a.push(ns.to_string());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Round `r` in namespace `crash-r{r}`: two objects behind a fresh kill proxy (in odd
    /// rounds the destinations already hold another image), a controller watching only
    /// that namespace, killed at the `n`th destination request; `None` runs to Ready.
    async fn round(&self, r: usize, n: Option<usize>) -> Round {
        use crate::controller::start_controller;
        let round_started = Instant::now();
        let ns = format!("crash-r{r}");
        self.api.create_namespace(&ns).await;
        let proxy = KillProxy::start(self.dst.addr()).await;
        proxy.arm(n.unwrap_or(usize::MAX));
        let update = r % 2 == 1;
        let mut objects = Vec::new();
        let mut repos = Vec::new();
        for m in 0..2 {
            let repo = format!("crash/r{r}-{m}");
            if update {
                self.check.push_index(&repo, &crash_spec(82)).await;
            }
            let name = format!("obj{m}");
            create_image_sync(
                &self.client,
                &ns,
                &name,
                &self.src.reference("app:1"),
                &format!("{}/{repo}:1", proxy.addr()),
            )
            .await;
            objects.push((ns.clone(), name));
            repos.push(repo);
        }
        let a = self.args(&[&proxy], Some(&ns), &[]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let prepared = round_started.elapsed();
        let c = start_controller(self.api.kubeconfig(), self.api.dir(), &ns, &a);
        proxy.set_pid(c.pid());
        let deadline = Instant::now() + Duration::from_secs(120);
        let Some(n) = n else {
            while !all_ready(&self.client, &objects, &self.image.digest).await {
                assert!(
                    Instant::now() < deadline,
                    "calibration: not Ready\n{}",
                    c.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.kill();
            let requests = proxy.requests();
            return Round {
                proxy,
                objects,
                repos,
                requests,
                report: String::new(),
            };
        };
        // A round that copies with fewer requests than calibrated reaches `n` with the
        // re-checks (HEAD every 2 s) that follow.
        let fired = loop {
            if let Some(f) = proxy.fired() {
                break f;
            }
            assert!(
                Instant::now() < deadline,
                "round {r}: kill point {n} not reached\n{}",
                c.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Reap it, then let the held requests fail.
        while c.is_running() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.kill();
        proxy.release();
        let context = format!("controller kill point {n} ({})", fired.request);
        let mut held = Vec::new();
        for repo in &repos {
            let h = self
                .check
                .absent_or_one_of(repo, "1", &[&self.image, &self.old], &context)
                .await;
            if update {
                assert!(h.is_some(), "{context}: {repo}: the old tag vanished");
            }
            held.push(match h {
                None => "absent",
                Some(0) => "new",
                Some(_) => "old",
            });
        }
        Round {
            proxy,
            objects,
            repos,
            requests: n,
            report: format!(
                "#{n} {} (tags: {}, {:.1}s+{:.1}s)",
                fired.request,
                held.join("+"),
                prepared.as_secs_f64(),
                (round_started.elapsed() - prepared).as_secs_f64()
            ),
        }
    }
}

/// SIGKILL `imagesync-controller` at 22 destination-request ordinals, one per round
/// (three rounds at a time). Each round has its own namespace (its controller watches
/// only that one) with two `ImageSync` objects copying a 10-blob index behind a fresh
/// kill proxy; in every other round the destination tags already hold another image.
/// After each kill every destination tag of the round is absent or a complete image (the
/// old or the new one); then one restarted controller (all namespaces) makes every
/// object Ready with the source digest and a byte-identical image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn controller_killed_at_22_points_converges() {
    use crate::controller::{cluster, start_controller};
    use futures::StreamExt;

    let started = Instant::now();
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let image = fixtures::push_index_with(src.addr(), "app", "1", crash_spec(81)).await;
    let old = fixtures::push_index_with(src.addr(), "old", "1", crash_spec(82)).await;
    let h = ControllerCrash {
        api,
        client,
        src,
        check: Dest::new(&dst),
        dst,
        image,
        old,
    };

    // Calibrate: the destination requests of a round without a kill.
    let calibration = h.round(0, None).await;
    let total = calibration.requests;
    let points = spread(22, total);
    let mut rounds: Vec<Round> = futures::stream::iter(
        points
            .iter()
            .enumerate()
            .map(|(i, &n)| h.round(i + 1, Some(n))),
    )
    .buffered(3)
    .collect()
    .await;
    let kills = rounds.len();
    let report: Vec<String> = rounds.iter().map(|r| r.report.clone()).collect();
    rounds.push(calibration);

    // Restart: everything converges.
    let restarted = Instant::now();
    let proxies: Vec<&KillProxy> = rounds.iter().map(|r| &r.proxy).collect();
    let a = h.args(&proxies, None, &["--concurrency", "16"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let c = start_controller(h.api.kubeconfig(), h.api.dir(), "final", &a);
    let objects: Vec<(String, String)> = rounds.iter().flat_map(|r| r.objects.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_ready(&h.client, &objects, &h.image.digest).await {
        assert!(
            Instant::now() < deadline,
            "not every object Ready after the restart\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for repo in rounds.iter().flat_map(|r| r.repos.iter()) {
        h.check
            .identical(repo, "1", &h.image, "after the restart")
            .await;
    }
    eprintln!(
        "controller: {kills} kill points over {total} destination requests per round, {} objects, converged {:.1}s after the restart, {:?} in all: {}",
        objects.len(),
        restarted.elapsed().as_secs_f64(),
        started.elapsed(),
        report.join(", ")
    );
}

// === two controllers without leader election ===

/// Two controllers, both without `--leader-elect`, reconcile the same objects:
/// - six objects copy one image to six tags of one repository at the same time, then
///   three are deleted while both run: the deleted tags go, the others stay complete
///   (their shared layers survive);
/// - two owners (`team-a/owner`, `team-b/owner`) name the SAME tag with different
///   images. Both controllers see both objects and judge alike: the earlier one holds the
///   tag, the later gets `DestinationConflict` and never writes (the tag holds only
///   team-a's image, sample after sample). Deleting the holder leaves the tag for the
///   waiting object (the tag is never absent or incomplete), which then writes its own
///   image and owns the tag. A new team-a object is the later one now: it waits, and
///   deleting it deletes nothing; deleting `team-b/owner` removes the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn two_controllers_without_leader_election() {
    use crate::controller::{
        cluster, event_reasons, image_sync_yaml, ready_with, reason, start_controller, wait_event,
        wait_for, wait_gone,
    };
    use imagesync_api::ImageSync;
    use kube::Api;

    let started = Instant::now();
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let check = Dest::new(&dst);
    let shared = fixtures::push_index_with(src.addr(), "shared", "1", crash_spec(91)).await;
    let image_a = fixtures::push_index_with(src.addr(), "owner-a", "1", crash_spec(92)).await;
    let image_b = fixtures::push_index_with(src.addr(), "owner-b", "1", crash_spec(93)).await;
    let args = [
        "--insecure-registry",
        src.addr(),
        "--insecure-registry",
        dst.addr(),
    ];
    let c1 = start_controller(api.kubeconfig(), api.dir(), "one", &args);
    let c2 = start_controller(api.kubeconfig(), api.dir(), "two", &args);
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");

    // Six objects, one repository.
    let mut yaml = String::new();
    for i in 0..6 {
        yaml.push_str(&image_sync_yaml(
            "default",
            &format!("same-repo-{i}"),
            &src.reference("shared:1"),
            &dst.reference(&format!("same/app:t{i}")),
            "",
        ));
        yaml.push_str("---\n");
    }
    api.apply_yaml(&yaml);
    for i in 0..6 {
        wait_for(
            &isyncs,
            &format!("same-repo-{i}"),
            Duration::from_secs(90),
            "Ready",
            Some(&c1),
            |o| ready_with(o, &shared.digest),
        )
        .await;
    }
    for i in 0..6 {
        check
            .identical("same/app", &format!("t{i}"), &shared, "all Ready")
            .await;
    }
    api.kubectl(&[
        "delete",
        "isync",
        "-n",
        "default",
        "same-repo-0",
        "same-repo-2",
        "same-repo-4",
        "--wait=false",
    ]);
    for i in [0, 2, 4] {
        wait_gone(
            &isyncs,
            &format!("same-repo-{i}"),
            Duration::from_secs(60),
            &c1,
        )
        .await;
    }
    for i in 0..6 {
        let tag = format!("t{i}");
        let present = check
            .absent_or_one_of("same/app", &tag, &[&shared], "same repo")
            .await;
        if i % 2 == 0 {
            assert!(present.is_none(), "deleted object's tag {tag} survived");
        } else {
            assert!(present.is_some(), "tag {tag} of a live object was deleted");
            let obj = isyncs.get(&format!("same-repo-{i}")).await.unwrap();
            assert!(ready_with(&obj, &shared.digest), "{:?}", obj.status);
        }
    }
    // Both controllers did reconcile.
    for c in [&c1, &c2] {
        assert!(
            c.metric("imagesync_reconciles_total").await > 0.0,
            "{}",
            c.log_text()
        );
    }

    // Two owners, one tag: team-a/owner is created first and holds it; team-b/owner
    // waits (DestinationConflict, judged the same way by both controllers) and never
    // writes, so the tag holds team-a's image all along.
    api.create_namespace("team-a").await;
    api.create_namespace("team-b").await;
    let contested = dst.reference("contested/app:1");
    let owner = |ns: &str, name: &str, source: &str, extra: &str| {
        image_sync_yaml(ns, name, &src.reference(source), &contested, extra)
    };
    api.apply_yaml(&format!(
        "{}---\n{}",
        owner("team-a", "owner", "owner-a:1", ""),
        owner("team-b", "owner", "owner-b:1", "")
    ));
    let team_a: Api<ImageSync> = Api::namespaced(client.clone(), "team-a");
    let team_b: Api<ImageSync> = Api::namespaced(client.clone(), "team-b");
    wait_for(
        &team_a,
        "owner",
        Duration::from_secs(60),
        "a Ready",
        Some(&c1),
        |o| ready_with(o, &image_a.digest),
    )
    .await;
    let waiting = wait_for(
        &team_b,
        "owner",
        Duration::from_secs(30),
        "b DestinationConflict",
        Some(&c1),
        |o| reason(o).as_deref() == Some("DestinationConflict"),
    )
    .await;
    let message = waiting.ready_condition().unwrap().message.clone();
    assert!(message.contains("team-a/owner"), "{message}");
    // Many re-checks of both objects by both controllers: only team-a's image, ever.
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let held = check
            .absent_or_one_of("contested/app", "1", &[&image_a, &image_b], "contested")
            .await;
        assert_eq!(held, Some(0), "the waiting object wrote the tag");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_events = event_reasons(&client, "team-b", "owner").await;
    assert!(
        !b_events
            .iter()
            .any(|(r, _)| r == "Synced" || r == "DestinationOverwritten"),
        "{b_events:?}"
    );

    // Deleting the holder leaves the tag for the waiting object (never dangling, never
    // absent), which then copies its own image and owns the tag.
    api.kubectl(&["delete", "isync", "-n", "team-a", "owner", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = check
            .absent_or_one_of("contested/app", "1", &[&image_a, &image_b], "handover")
            .await;
        assert!(held.is_some(), "the tag vanished during the handover");
        if held == Some(1) && team_a.get_opt("owner").await.unwrap().is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "team-b/owner did not take the tag\n{}",
            c1.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let note = wait_event(&client, "team-a", "owner", "LeftInPlace").await;
    assert!(note.contains("team-b/owner"), "{note}");
    wait_for(
        &team_b,
        "owner",
        Duration::from_secs(30),
        "b Ready",
        Some(&c1),
        |o| ready_with(o, &image_b.digest),
    )
    .await;

    // A new team-a object is now the later one: it waits for team-b/owner, and deleting
    // it deletes nothing.
    api.apply_yaml(&owner("team-a", "second", "owner-a:1", ""));
    let second = wait_for(
        &team_a,
        "second",
        Duration::from_secs(30),
        "second DestinationConflict",
        Some(&c1),
        |o| reason(o).as_deref() == Some("DestinationConflict"),
    )
    .await;
    let message = second.ready_condition().unwrap().message.clone();
    assert!(message.contains("team-b/owner"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    check
        .identical("contested/app", "1", &image_b, "while team-a/second waits")
        .await;
    api.kubectl(&["delete", "isync", "-n", "team-a", "second", "--wait=false"]);
    wait_gone(&team_a, "second", Duration::from_secs(60), &c1).await;
    check
        .identical(
            "contested/app",
            "1",
            &image_b,
            "after deleting team-a/second",
        )
        .await;
    let b = team_b.get("owner").await.unwrap();
    assert!(ready_with(&b, &image_b.digest), "{:?}", b.status);

    // Deleting team-b/owner, which wrote the tag, removes it.
    api.kubectl(&["delete", "isync", "-n", "team-b", "owner", "--wait=false"]);
    wait_gone(&team_b, "owner", Duration::from_secs(60), &c1).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "contested/app", "1").await,
        404
    );
    assert!(c1.is_running() && c2.is_running());
    eprintln!(
        "two controllers: {samples} samples of the contested tag while team-b/owner waited, all team-a's; {:?}",
        started.elapsed()
    );
}

// === two Terraform applies ===

/// Two Terraform working directories (1.11.4) whose resources copy different images to
/// the same destination tag, applied at the same time: both applies end (success or a
/// clear error), the tag holds one complete image, and the winner's state `id` names it.
/// Destroying the loser (its digest is no longer at the tag) leaves the tag with a
/// warning; destroying the winner removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn two_terraform_applies_race_on_one_destination() {
    use crate::terraform::{combined, resource, Tf};

    let started = Instant::now();
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let check = Dest::new(&dst);
    let images = [
        fixtures::push_index_with(src.addr(), "a", "1", crash_spec(101)).await,
        fixtures::push_index_with(src.addr(), "b", "1", crash_spec(102)).await,
    ];
    // Both tag PUTs wait for each other at the proxy: the applies really race.
    let gate = KillProxy::start(dst.addr()).await;
    gate.gate_tag_puts(2);
    let destination = format!("{}/race/app:1", gate.addr());
    let tfs = [Tf::new("1.11.4"), Tf::new("1.11.4")];
    for (tf, source) in tfs.iter().zip(["a:1", "b:1"]) {
        tf.config_with(
            &format!(
                "insecure_registries = [\"{}\", \"{}\"]",
                src.addr(),
                gate.addr()
            ),
            &resource("app", &src.reference(source), &destination),
        );
        tf.init().await;
    }
    let apply = ["apply", "-auto-approve", "-input=false", "-no-color"];
    let (out_a, out_b) = tokio::join!(tfs[0].run(&apply), tfs[1].run(&apply));
    let outs = [out_a, out_b];
    let gated = gate.gated();
    assert_eq!(gated, 2, "both applies must reach the tag PUT");
    let mut succeeded = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        if out.status.success() {
            succeeded.push(i);
        } else {
            // A clear error, not a crash.
            let text = combined(out);
            assert!(
                text.contains("Error:"),
                "apply {i} failed without a diagnostic:\n{text}"
            );
            assert!(!text.contains("panic"), "apply {i}:\n{text}");
        }
    }
    assert!(
        !succeeded.is_empty(),
        "neither apply succeeded:\n{}\n{}",
        combined(&outs[0]),
        combined(&outs[1])
    );
    let Some(held) = check
        .absent_or_one_of("race/app", "1", &[&images[0], &images[1]], "after the race")
        .await
    else {
        panic!("no tag after two applies");
    };
    check
        .identical("race/app", "1", &images[held], "after the race")
        .await;
    let winner = held;
    let loser = 1 - held;
    assert!(
        succeeded.contains(&winner),
        "the image at the tag comes from a failed apply"
    );
    let id = |i: usize| format!("{}/race/app@{}", gate.addr(), images[i].digest);
    assert_eq!(
        tfs[winner].state_values("imagesync.app").await["id"],
        id(winner)
    );

    let destroy = ["destroy", "-auto-approve", "-input=false", "-no-color"];
    if succeeded.contains(&loser) {
        assert_eq!(
            tfs[loser].state_values("imagesync.app").await["id"],
            id(loser)
        );
        // The loser's destroy refreshes (its id now names the winner's digest) but deletes
        // only what it wrote: nothing.
        let out = tfs[loser].run(&destroy).await;
        let text = combined(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("not ours"), "expected a warning:\n{text}");
        check
            .identical(
                "race/app",
                "1",
                &images[winner],
                "after the loser's destroy",
            )
            .await;
    }
    let out = tfs[winner].run(&destroy).await;
    assert!(out.status.success(), "{}", combined(&out));
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "race/app", "1").await,
        404
    );
    eprintln!(
        "terraform race: {} tag PUTs released together, applies succeeded {succeeded:?}, winner {winner}, {:?}",
        gated,
        started.elapsed()
    );
}
