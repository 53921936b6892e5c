//! End-to-end tests: the controller binary against the real kube-apiserver and registries
//! (sync, heal, follow and delete; permanent errors and their reasons; a kill mid-copy;
//! leader election; the chart's RBAC; moved destinations and refused deletes; watches
//! scoped to one namespace), and the cluster helpers other modules share.
//!
//! Over 600 lines because it is one module per area (the controller's behaviours): each
//! test is one scenario against real components, and its set-up is spelled out so a failure
//! reads alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imagesync_api::ImageSync;
use imagesync_e2e::fixtures::{self, FixtureSpec, Target};
use imagesync_e2e::kube::{client_for, ApiServer};
use imagesync_e2e::proxy::{Fault, FaultPlan, FaultProxy, Mode, Target as FaultTarget};
use imagesync_e2e::registry::{Registry, RegistryOptions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

// === harness ===

pub(crate) fn crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/imagesyncs.imagesync.dev.yaml")
}

/// A kube-apiserver with the ImageSync CRD installed.
pub(crate) async fn cluster() -> ApiServer {
    let api = ApiServer::start().await;
    api.apply_crd(&crd_path()).await;
    api
}

/// A running `imagesync-controller` process (the harness's launcher); SIGKILLed on drop.
pub(crate) use imagesync_e2e::controller::ControllerProcess as ControllerProc;
use imagesync_e2e::controller::Launch;

/// Starts the controller for a scenario: logs to `<log_dir>/controller-<label>.log` at
/// debug level, on a free metrics port, with the resync floor lowered to 1s.
pub(crate) fn start_controller(
    kubeconfig: &Path,
    log_dir: &Path,
    label: &str,
    args: &[&str],
) -> ControllerProc {
    controller_with_env(kubeconfig, log_dir, label, args, &[])
}

/// [`start_controller`] with extra environment variables.
pub(crate) fn controller_with_env(
    kubeconfig: &Path,
    log_dir: &Path,
    label: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> ControllerProc {
    let log = log_dir.join(format!("controller-{label}.log"));
    let launch = Launch::new(kubeconfig, &log)
        .args(args)
        .env("RUST_LOG", "info,imagesync_controller=debug")
        // The scenarios re-check every 2s; the production floor is 10s.
        .env("IMAGESYNC_MIN_RESYNC_INTERVAL", "1s");
    env.iter().fold(launch, |l, (k, v)| l.env(k, v)).start()
}

pub(crate) fn image_sync_yaml(ns: &str, name: &str, src: &str, dst: &str, extra: &str) -> String {
    let mut y = format!(
        "apiVersion: imagesync.dev/v1alpha1\nkind: ImageSync\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  source: {src:?}\n  destination: {dst:?}\n  resyncInterval: 2s\n"
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str("  ");
        y.push_str(line);
        y.push('\n');
    }
    y
}

/// Polls `name` until `pred` holds; panics with the last state and the controller log.
pub(crate) async fn wait_for(
    api: &Api<ImageSync>,
    name: &str,
    timeout: Duration,
    what: &str,
    controller: Option<&ControllerProc>,
    pred: impl Fn(&ImageSync) -> bool,
) -> ImageSync {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if pred(&obj) {
                return obj;
            }
            last = Some(obj);
        }
        if Instant::now() > deadline {
            let log = controller.map(|c| c.log_text()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {name}: {what}\nlast: {:#?}\ncontroller log (newest first):\n{}",
                last.and_then(|o| o.status),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn wait_gone(
    api: &Api<ImageSync>,
    name: &str,
    timeout: Duration,
    controller: &ControllerProc,
) {
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name} was not deleted\n{}",
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn reason(obj: &ImageSync) -> Option<String> {
    obj.ready_condition().map(|c| c.reason.clone())
}

pub(crate) fn ready_with(obj: &ImageSync, digest: &str) -> bool {
    obj.is_ready()
        && obj
            .status
            .as_ref()
            .and_then(|s| s.destination_digest.as_deref())
            == Some(digest)
}

/// Event reasons recorded for `name` in `ns`.
pub(crate) async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

pub(crate) async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let evs = event_reasons(client, ns, name).await;
        if let Some((_, note)) = evs.iter().find(|(r, _)| r == reason) {
            return note.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event for {ns}/{name}; events: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn delete_manifest(addr: &str, repo: &str, digest: &str) {
    let status = reqwest::Client::new()
        .delete(format!("http://{addr}/v2/{repo}/manifests/{digest}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202, "DELETE {repo}@{digest}");
}

pub(crate) fn dockerconfig_secret(
    ns: &str,
    name: &str,
    registry: &str,
    user: &str,
    pass: &str,
) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = b64.encode(format!("{user}:{pass}"));
    let json = format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        b64.encode(json)
    )
}

// === scenarios ===

/// Apply → Ready with digests and an identical image; destination deleted → healed;
/// new source image → followed; overwritten destination → restored; re-checks are
/// HEAD-only; delete → tag gone while a second tag and shared layers survive; Orphan
/// keeps everything.
#[tokio::test]
pub(crate) async fn controller_syncs_heals_follows_and_deletes() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let ns = "default";
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), ns);
    let first = fixtures::push_index(src.addr(), "app", "1", 1).await;

    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "main",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            dst.addr(),
        ],
    );
    let dst_ref = dst.reference("mirror/app:1");
    api.apply_yaml(&image_sync_yaml(
        ns,
        "mirror",
        &src.reference("app:1"),
        &dst_ref,
        "",
    ));

    // Ready=True, digests equal the source index digest, bytes identical.
    let obj = wait_for(
        &isyncs,
        "mirror",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| o.is_ready(),
    )
    .await;
    let status = obj.status.clone().unwrap();
    assert_eq!(status.source_digest.as_deref(), Some(first.digest.as_str()));
    assert_eq!(
        status.destination_digest.as_deref(),
        Some(first.digest.as_str())
    );
    assert_eq!(
        status.id.as_deref(),
        Some(format!("{}/mirror/app@{}", dst.addr(), first.digest).as_str())
    );
    assert_eq!(status.observed_generation, obj.metadata.generation);
    assert!(status.last_sync_time.is_some() && status.last_check_time.is_some());
    assert_eq!(reason(&obj).as_deref(), Some("Synced"));
    assert!(obj
        .finalizers()
        .iter()
        .any(|f| f == "imagesync.dev/cleanup"));
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &first).await;
    wait_event(&client, ns, "mirror", "Synced").await;
    let table = api.kubectl(&["get", "isync", "-n", ns]);
    assert!(
        table.contains("DIGEST") && table.contains(&first.digest) && table.contains("True"),
        "{table}"
    );

    // Re-checks are HEAD-only: no manifest GET, no blob traffic, while nothing changes.
    src.clear_access_log();
    dst.clear_access_log();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (name, reg) in [("source", &src), ("destination", &dst)] {
        let log = reg.access_log_settled().await;
        let heads = log
            .iter()
            .filter(|e| e.method == "HEAD" && e.is_manifest())
            .count();
        assert!(heads >= 2, "{name}: expected HEAD re-checks, saw {log:?}");
        let other: Vec<_> = log
            .iter()
            .filter(|e| !(e.method == "HEAD" && e.is_manifest()) && e.path != "/v2/")
            .collect();
        assert!(
            other.is_empty(),
            "{name}: re-checks must be HEAD only, saw {other:?}"
        );
    }

    // Destination deleted out of band → healed within the interval.
    let synced_at = status.last_sync_time.clone();
    delete_manifest(dst.addr(), "mirror/app", &first.digest).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", "1").await,
        404
    );
    let healed_deadline = Instant::now();
    wait_for(
        &isyncs,
        "mirror",
        Duration::from_secs(20),
        "healed",
        Some(&controller),
        |o| o.is_ready() && o.status.as_ref().and_then(|s| s.last_sync_time.clone()) != synced_at,
    )
    .await;
    assert!(healed_deadline.elapsed() < Duration::from_secs(15));
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &first).await;
    wait_event(&client, ns, "mirror", "DestinationMissing").await;

    // New image on the source tag → destination and status follow.
    let second = fixtures::push_index(src.addr(), "app", "1", 2).await;
    assert_ne!(first.digest, second.digest);
    wait_for(
        &isyncs,
        "mirror",
        Duration::from_secs(20),
        "follows source",
        Some(&controller),
        |o| {
            ready_with(o, &second.digest)
                && o.status.as_ref().and_then(|s| s.source_digest.as_deref())
                    == Some(second.digest.as_str())
        },
    )
    .await;
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &second).await;
    let note = wait_event(&client, ns, "mirror", "SourceChanged").await;
    assert!(
        note.contains(&first.digest) && note.contains(&second.digest),
        "{note}"
    );

    // Someone overwrites the destination tag → restored, with a Warning.
    let intruder = fixtures::push_index(dst.addr(), "mirror/app", "1", 3).await;
    assert_eq!(
        fixtures::get_manifest(dst.addr(), "mirror/app", "1")
            .await
            .map(|(_, b)| fixtures::sha256(&b)),
        Some(intruder.digest.clone())
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = fixtures::get_manifest(dst.addr(), "mirror/app", "1")
            .await
            .map(|(_, b)| fixtures::sha256(&b));
        if now.as_deref() == Some(second.digest.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "overwritten destination not restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_event(&client, ns, "mirror", "DestinationOverwritten").await;

    // Deletion: a second tag on the same digest and layers shared with another image in
    // the repository survive; the tag is gone.
    Target::plain(dst.addr())
        .put_manifest("mirror/app", "keep", &second.media_type, &second.manifest)
        .await
        .unwrap();
    let spec = FixtureSpec {
        seed: 50,
        shared_layers: 1,
        ..FixtureSpec::default()
    };
    let sharer_src = fixtures::push_image(
        src.addr(),
        "solo",
        "1",
        FixtureSpec {
            seed: 51,
            shared_layers: 1,
            ..FixtureSpec::default()
        },
    )
    .await;
    let sharer = fixtures::push_image(dst.addr(), "mirror/solo", "other", spec).await;
    api.apply_yaml(&image_sync_yaml(
        ns,
        "solo",
        &src.reference("solo:1"),
        &dst.reference("mirror/solo:1"),
        "",
    ));
    wait_for(
        &isyncs,
        "solo",
        Duration::from_secs(30),
        "solo Ready",
        Some(&controller),
        |o| ready_with(o, &sharer_src.digest),
    )
    .await;
    let shared = sharer_src
        .layers
        .iter()
        .find(|l| sharer.layers.contains(l))
        .expect("fixtures share a layer")
        .clone();
    let unshared: Vec<&String> = sharer_src
        .layers
        .iter()
        .filter(|l| !sharer.layers.contains(l))
        .collect();
    assert!(!unshared.is_empty());

    api.kubectl(&[
        "delete",
        "isync",
        "mirror",
        "solo",
        "-n",
        ns,
        "--wait=false",
    ]);
    wait_gone(&isyncs, "mirror", Duration::from_secs(30), &controller).await;
    wait_gone(&isyncs, "solo", Duration::from_secs(30), &controller).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", "1").await,
        404,
        "tag deleted"
    );
    fixtures::assert_identical(dst.addr(), "mirror/app", "keep", &second).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/solo", "1").await,
        404
    );
    assert_eq!(
        fixtures::blob_status(dst.addr(), "mirror/solo", &shared).await,
        200,
        "shared layer kept"
    );
    for l in unshared {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "mirror/solo", l).await,
            404,
            "unshared layer {l} deleted"
        );
    }
    fixtures::assert_identical(dst.addr(), "mirror/solo", "other", &sharer).await;
    wait_event(&client, ns, "solo", "Deleted").await;

    // Orphan leaves everything.
    api.apply_yaml(&image_sync_yaml(
        ns,
        "orphan",
        &src.reference("app:1"),
        &dst.reference("mirror/orphan:1"),
        "deletionPolicy: Orphan",
    ));
    wait_for(
        &isyncs,
        "orphan",
        Duration::from_secs(30),
        "orphan Ready",
        Some(&controller),
        |o| ready_with(o, &second.digest),
    )
    .await;
    api.kubectl(&["delete", "isync", "orphan", "-n", ns, "--wait=false"]);
    wait_gone(&isyncs, "orphan", Duration::from_secs(30), &controller).await;
    fixtures::assert_identical(dst.addr(), "mirror/orphan", "1", &second).await;

    // Metrics and health endpoints.
    let (code, text) = controller.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains("imagesync_syncs_total{result=\"synced\"}"),
        "{text}"
    );
    assert!(
        text.contains("imagesync_drift_detected_total{kind=\"destination_missing\"}"),
        "{text}"
    );
    assert!(controller.metric("imagesync_bytes_copied_total").await > 0.0);
    // Every registry HTTP request is counted by operation and status.
    for series in [
        "imagesync_registry_requests_total{operation=\"HEAD manifest\",status=\"200\"}",
        "imagesync_registry_requests_total{operation=\"HEAD manifest\",status=\"404\"}",
        "imagesync_registry_requests_total{operation=\"PUT manifest\",status=\"201\"}",
    ] {
        assert!(text.contains(series), "missing {series} in {text}");
    }
    assert_eq!(controller.get("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(controller.get("/readyz").await.map(|r| r.0), Some(200));
}

/// Bad reference, missing source and wrong credentials → Ready=False with the documented
/// reason, and nothing is deleted; the right credentials from a Secret then work.
#[tokio::test]
pub(crate) async fn controller_reports_permanent_errors_with_reasons() {
    let (api, src, private) = tokio::join!(
        cluster(),
        Registry::start(),
        Registry::start_with(RegistryOptions {
            htpasswd: Some(("mirror".into(), "s3cret".into())),
            ..RegistryOptions::default()
        })
    );
    let client = api.client().await;
    let ns = "default";
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), ns);
    let image = fixtures::push_index(src.addr(), "app", "1", 7).await;
    // 429 with a Retry-After longer than the controller waits in place (10 s).
    let limited = FaultProxy::start(
        src.addr(),
        FaultPlan {
            fault: Fault::RateLimited {
                retry_after_secs: 15,
            },
            target: FaultTarget::Manifests,
            mode: Mode::Always,
        },
    )
    .await;
    let limited_addr = limited.addr();
    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "errors",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            private.addr(),
            "--insecure-registry",
            &limited_addr,
        ],
    );
    api.apply_yaml(&image_sync_yaml(
        ns,
        "limited",
        &format!("{limited_addr}/app:1"),
        &src.reference("copy/limited:1"),
        "",
    ));

    api.apply_yaml(&image_sync_yaml(
        ns,
        "badref",
        "not a reference!",
        &src.reference("x:1"),
        "",
    ));
    api.apply_yaml(&image_sync_yaml(
        ns,
        "missing",
        &src.reference("nope:1"),
        &src.reference("copy/nope:1"),
        "",
    ));
    api.apply_yaml(&dockerconfig_secret(
        ns,
        "wrong",
        private.addr(),
        "mirror",
        "wrong-password",
    ));
    api.apply_yaml(&dockerconfig_secret(
        ns,
        "right",
        private.addr(),
        "mirror",
        "s3cret",
    ));
    let dst = private.reference("mirror/app:1");
    api.apply_yaml(&image_sync_yaml(
        ns,
        "wrongcreds",
        &src.reference("app:1"),
        &dst,
        "destinationSecretRef: {name: wrong}",
    ));
    // Its own tag: two objects naming one tag would make the later one wait
    // (DestinationConflict) before its Secret is read.
    api.apply_yaml(&image_sync_yaml(
        ns,
        "nosecret",
        &src.reference("app:1"),
        &private.reference("mirror/nosecret:1"),
        "destinationSecretRef: {name: does-not-exist}",
    ));

    for (name, want) in [
        ("badref", "InvalidReference"),
        ("missing", "SourceNotFound"),
        ("wrongcreds", "Unauthorized"),
        ("nosecret", "InvalidSecret"),
        ("limited", "RateLimited"),
    ] {
        let obj = wait_for(
            &isyncs,
            name,
            Duration::from_secs(40),
            want,
            Some(&controller),
            |o| reason(o).as_deref() == Some(want),
        )
        .await;
        let cond = obj.ready_condition().unwrap();
        assert_eq!(cond.status, "False", "{name}");
        assert!(!cond.message.is_empty(), "{name}");
        assert!(!cond.message.contains("s3cret") && !cond.message.contains("wrong-password"));
    }
    // 429: Retry-After is honoured (no hot retry loop), then the object recovers.
    let seen = limited.requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        limited.requests() <= seen + 1,
        "retried during Retry-After: {} requests in 5 s",
        limited.requests() - seen
    );
    limited.set_plan(FaultPlan::none());
    wait_for(
        &isyncs,
        "limited",
        Duration::from_secs(40),
        "Ready after 429",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;

    // Nothing was written or deleted.
    assert_eq!(private.manifest_status("mirror/app", "1").await, 404);
    assert_eq!(fixtures::manifest_status(src.addr(), "app", "1").await, 200);
    let log = controller.log_text();
    assert!(
        !log.contains("s3cret") && !log.contains("wrong-password"),
        "secrets leaked into logs"
    );

    // Deleting a failed object does not touch anything and is not stuck.
    api.kubectl(&[
        "delete",
        "isync",
        "missing",
        "badref",
        "-n",
        ns,
        "--wait=false",
    ]);
    wait_gone(&isyncs, "missing", Duration::from_secs(20), &controller).await;
    wait_gone(&isyncs, "badref", Duration::from_secs(20), &controller).await;
    assert_eq!(fixtures::manifest_status(src.addr(), "app", "1").await, 200);

    // Fixing the spec (the right Secret) recovers.
    api.apply_yaml(&image_sync_yaml(
        ns,
        "wrongcreds",
        &src.reference("app:1"),
        &dst,
        "destinationSecretRef: {name: right}",
    ));
    wait_for(
        &isyncs,
        "wrongcreds",
        Duration::from_secs(40),
        "Ready with Secret",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert_eq!(private.manifest_status("mirror/app", "1").await, 200);
}

/// SIGKILL while blobs are uploading, then restart: the copy completes and the
/// destination tag never points at an incomplete image.
#[tokio::test]
pub(crate) async fn controller_killed_mid_copy_completes_after_restart() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let ns = "default";
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), ns);
    let big = fixtures::push_index_with(
        src.addr(),
        "big",
        "1",
        FixtureSpec {
            seed: 11,
            layers: 12,
            layer_size: 4 * 1024 * 1024,
            ..FixtureSpec::default()
        },
    )
    .await;
    let args = [
        "--insecure-registry",
        src.addr(),
        "--insecure-registry",
        dst.addr(),
    ];
    let first = start_controller(api.kubeconfig(), api.dir(), "killed", &args);
    dst.clear_access_log();
    api.apply_yaml(&image_sync_yaml(
        ns,
        "big",
        &src.reference("big:1"),
        &dst.reference("mirror/big:1"),
        "",
    ));

    // Kill as soon as the destination saw blob uploads but before the tag exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dst.access_log().iter().any(|e| e.is_upload()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no upload started\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();
    let tag = fixtures::get_manifest(dst.addr(), "mirror/big", "1").await;
    assert!(
        tag.is_none(),
        "the tag was written before the copy completed (or the copy was too fast to interrupt)"
    );
    let status = isyncs.get("big").await.unwrap();
    assert_eq!(reason(&status).as_deref(), Some("Syncing"));

    let second = start_controller(api.kubeconfig(), api.dir(), "restarted", &args);
    wait_for(
        &isyncs,
        "big",
        Duration::from_secs(90),
        "Ready after restart",
        Some(&second),
        |o| ready_with(o, &big.digest),
    )
    .await;
    fixtures::assert_identical(dst.addr(), "mirror/big", "1", &big).await;
    // Every manifest PUT to the tag happened after all of the image's blobs were in place:
    // the tag PUT is the last write.
    let log = dst.access_log_settled().await;
    let last_write = log
        .iter()
        .rposition(|e| e.method == "PUT" || e.method == "PATCH" || e.method == "POST")
        .unwrap();
    assert!(
        log[last_write].path.ends_with("/manifests/1"),
        "last write was {:?}",
        log[last_write]
    );
}

/// Two controllers with leader election: only the leader reconciles; killing it hands
/// over to the other.
#[tokio::test]
pub(crate) async fn leader_election_hands_over_when_the_leader_dies() {
    let (api, reg) = tokio::join!(cluster(), Registry::start());
    let client = api.client().await;
    let ns = "default";
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), ns);
    let image = fixtures::push_index(reg.addr(), "app", "1", 21).await;
    let args = [
        "--insecure-registry",
        reg.addr(),
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        "--lease-duration",
        "3s",
    ];
    let mut a = start_controller(api.kubeconfig(), api.dir(), "a", &args);
    let mut b = start_controller(api.kubeconfig(), api.dir(), "b", &args);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);

    // Exactly one leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Ok(Some(l)) = leases.get_opt("imagesync-controller").await {
            if let Some(h) = l.spec.and_then(|s| s.holder_identity) {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader elected\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for i in 0..3 {
        api.apply_yaml(&image_sync_yaml(
            ns,
            &format!("le{i}"),
            &reg.reference("app:1"),
            &reg.reference(&format!("mirror/le{i}:1")),
            "",
        ));
    }
    for i in 0..3 {
        wait_for(
            &isyncs,
            &format!("le{i}"),
            Duration::from_secs(30),
            "Ready",
            None,
            |o| ready_with(o, &image.digest),
        )
        .await;
    }
    let (ra, rb) = (
        a.metric("imagesync_reconciles_total").await,
        b.metric("imagesync_reconciles_total").await,
    );
    let (la, lb) = (
        a.metric("imagesync_leader").await,
        b.metric("imagesync_leader").await,
    );
    assert!(
        (ra > 0.0 && rb == 0.0 && la == 1.0 && lb == 0.0)
            || (rb > 0.0 && ra == 0.0 && lb == 1.0 && la == 0.0),
        "exactly one controller must reconcile: a={ra} (leader {la}), b={rb} (leader {lb})"
    );
    let (leader, follower) = if la == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(leader.log_text().contains(&holder) || follower.log_text().contains(&holder));

    // Kill the leader (no clean release): the follower takes over after the lease expires.
    leader.kill();
    api.apply_yaml(&image_sync_yaml(
        ns,
        "after",
        &reg.reference("app:1"),
        &reg.reference("mirror/after:1"),
        "",
    ));
    wait_for(
        &isyncs,
        "after",
        Duration::from_secs(40),
        "Ready after handover",
        Some(follower),
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert_eq!(follower.metric("imagesync_leader").await, 1.0);
    assert!(follower.metric("imagesync_reconciles_total").await > 0.0);
    let new_holder = leases
        .get("imagesync-controller")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap();
    assert_ne!(new_holder, holder);
    assert!(follower.is_running());
}

/// The RBAC the Helm chart grants, exactly.
pub(crate) const CHART_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: imagesync-controller
rules:
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncs/finalizers"]
  verbs: ["update"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncsets/status"]
  verbs: ["patch"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncsets/finalizers"]
  verbs: ["update"]
- apiGroups: ["imagesync.dev"]
  resources: ["imagesyncs"]
  verbs: ["create", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: imagesync-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: imagesync-controller
subjects:
- kind: ServiceAccount
  name: imagesync-controller
  namespace: imagesync-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: imagesync-controller-leader-election
  namespace: imagesync-system
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: imagesync-controller-leader-election
  namespace: imagesync-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: imagesync-controller-leader-election
subjects:
- kind: ServiceAccount
  name: imagesync-controller
  namespace: imagesync-system
"#;

/// The controller authenticated as a ServiceAccount token (TokenRequest) with exactly
/// the chart's RBAC: leader election, sync with a Secret, status, events, deletion.
#[tokio::test]
pub(crate) async fn controller_works_with_exactly_the_chart_rbac() {
    let (api, src, private) = tokio::join!(
        cluster(),
        Registry::start(),
        Registry::start_with(RegistryOptions {
            htpasswd: Some(("pusher".into(), "pw-123".into())),
            ..RegistryOptions::default()
        })
    );
    let admin = api.client().await;
    api.create_namespace("imagesync-system").await;
    api.create_namespace("team-a").await;
    api.apply_yaml(CHART_RBAC);
    let sa_kubeconfig = api
        .service_account_kubeconfig("imagesync-system", "imagesync-controller")
        .await;
    // The token really is the ServiceAccount, and RBAC really applies.
    let sa_client = client_for(&sa_kubeconfig).await;
    let forbidden: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(sa_client.clone(), "team-a");
    assert!(matches!(
        forbidden.list(&ListParams::default()).await,
        Err(kube::Error::Api(s)) if s.code == 403
    ));

    let image = fixtures::push_index(src.addr(), "app", "1", 31).await;
    let controller = start_controller(
        &sa_kubeconfig,
        api.dir(),
        "sa",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            private.addr(),
            "--leader-elect",
            "--leader-election-namespace",
            "imagesync-system",
        ],
    );
    api.apply_yaml(&dockerconfig_secret(
        "team-a",
        "push",
        private.addr(),
        "pusher",
        "pw-123",
    ));
    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "app",
        &src.reference("app:1"),
        &private.reference("mirror/app:1"),
        "destinationSecretRef: {name: push}",
    ));
    let isyncs: Api<ImageSync> = Api::namespaced(admin.clone(), "team-a");
    wait_for(
        &isyncs,
        "app",
        Duration::from_secs(60),
        "Ready as ServiceAccount",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert_eq!(private.manifest_status("mirror/app", "1").await, 200);
    wait_event(&admin, "team-a", "app", "Synced").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "imagesync-system");
    assert!(leases
        .get_opt("imagesync-controller")
        .await
        .unwrap()
        .is_some());

    api.kubectl(&["delete", "isync", "app", "-n", "team-a", "--wait=false"]);
    wait_gone(&isyncs, "app", Duration::from_secs(30), &controller).await;
    assert_eq!(private.manifest_status("mirror/app", "1").await, 404);
    let log = controller.log_text();
    assert!(
        !log.contains("forbidden"),
        "permission errors in the controller log:\n{log}"
    );
    assert!(!log.contains("pw-123"));
}

/// Changing `spec.destination` deletes the old tag (ours) and syncs the new one; a
/// registry that refuses deletes gives a Warning event and the object still goes away;
/// `suspend` stops checks; `--log-format json` logs JSON.
#[tokio::test]
pub(crate) async fn controller_moves_destinations_and_survives_refused_deletes() {
    let (api, src, dst, nodelete) = tokio::join!(
        cluster(),
        Registry::start(),
        Registry::start(),
        Registry::start_with(RegistryOptions {
            delete_enabled: false,
            ..RegistryOptions::default()
        })
    );
    let client = api.client().await;
    let ns = "default";
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), ns);
    let image = fixtures::push_index(src.addr(), "app", "1", 41).await;
    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "moves",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            dst.addr(),
            "--insecure-registry",
            nodelete.addr(),
            "--log-format",
            "json",
        ],
    );

    // Move the destination: old tag removed, new one written.
    let a = dst.reference("mirror/a:1");
    let b = dst.reference("mirror/b:1");
    api.apply_yaml(&image_sync_yaml(
        ns,
        "mover",
        &src.reference("app:1"),
        &a,
        "",
    ));
    wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(40),
        "Ready at a",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    api.apply_yaml(&image_sync_yaml(
        ns,
        "mover",
        &src.reference("app:1"),
        &b,
        "",
    ));
    wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(40),
        "Ready at b",
        Some(&controller),
        |o| {
            ready_with(o, &image.digest)
                && o.status
                    .as_ref()
                    .and_then(|s| s.synced_destination.as_deref())
                    == Some(b.as_str())
        },
    )
    .await;
    fixtures::assert_identical(dst.addr(), "mirror/b", "1", &image).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/a", "1").await,
        404,
        "old destination deleted"
    );
    wait_event(&client, ns, "mover", "DestinationChanged").await;

    // A registry that refuses deletes: Warning event, finalizer released, tag left.
    api.apply_yaml(&image_sync_yaml(
        ns,
        "stuck",
        &src.reference("app:1"),
        &nodelete.reference("mirror/app:1"),
        "",
    ));
    wait_for(
        &isyncs,
        "stuck",
        Duration::from_secs(40),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    api.kubectl(&["delete", "isync", "stuck", "-n", ns, "--wait=false"]);
    wait_gone(&isyncs, "stuck", Duration::from_secs(30), &controller).await;
    let note = wait_event(&client, ns, "stuck", "DeleteFailed").await;
    assert!(note.contains("not deleted"), "{note}");
    fixtures::assert_identical(nodelete.addr(), "mirror/app", "1", &image).await;

    // Suspended objects are not checked: a deleted destination stays deleted.
    api.apply_yaml(&image_sync_yaml(
        ns,
        "mover",
        &src.reference("app:1"),
        &b,
        "suspend: true",
    ));
    wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(20),
        "Suspended",
        Some(&controller),
        |o| reason(o).as_deref() == Some("Suspended"),
    )
    .await;
    delete_manifest(dst.addr(), "mirror/b", &image.digest).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/b", "1").await,
        404
    );
    api.apply_yaml(&image_sync_yaml(
        ns,
        "mover",
        &src.reference("app:1"),
        &b,
        "suspend: false",
    ));
    wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(30),
        "resumed",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    fixtures::assert_identical(dst.addr(), "mirror/b", "1", &image).await;

    // JSON logs: one object per line.
    let log = controller.log_text();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );
}

/// The chart's single-namespace variant: the controller watches one namespace
/// (`IMAGESYNC_NAMESPACE`) with only namespaced Roles (no ClusterRole), and leaves other
/// namespaces alone.
#[tokio::test]
pub(crate) async fn controller_watches_only_its_namespace_with_roles() {
    let (api, reg) = tokio::join!(cluster(), Registry::start());
    let admin = api.client().await;
    for ns in ["imagesync-system", "team-a", "team-b"] {
        api.create_namespace(ns).await;
    }
    // The same rules as a Role and RoleBinding in the watched namespace.
    let rbac = CHART_RBAC
        .replace(
            "kind: ClusterRoleBinding\nmetadata:\n  name: imagesync-controller\n",
            "kind: RoleBinding\nmetadata:\n  name: imagesync-controller\n  namespace: team-a\n",
        )
        .replace(
            "kind: ClusterRole\nmetadata:\n  name: imagesync-controller\n",
            "kind: Role\nmetadata:\n  name: imagesync-controller\n  namespace: team-a\n",
        )
        .replace("  kind: ClusterRole\n", "  kind: Role\n");
    assert!(!rbac.contains("ClusterRole"), "{rbac}");
    api.apply_yaml(&rbac);
    let kubeconfig = api
        .service_account_kubeconfig("imagesync-system", "imagesync-controller")
        .await;
    let image = fixtures::push_index(reg.addr(), "app", "1", 61).await;
    let controller = controller_with_env(
        &kubeconfig,
        api.dir(),
        "ns",
        &["--insecure-registry", reg.addr(), "--leader-elect"],
        &[
            ("IMAGESYNC_NAMESPACE", "team-a"),
            ("POD_NAMESPACE", "imagesync-system"),
        ],
    );
    for ns in ["team-a", "team-b"] {
        api.apply_yaml(&image_sync_yaml(
            ns,
            "app",
            &reg.reference("app:1"),
            &reg.reference(&format!("{ns}/app:1")),
            "",
        ));
    }
    let a: Api<ImageSync> = Api::namespaced(admin.clone(), "team-a");
    let b: Api<ImageSync> = Api::namespaced(admin.clone(), "team-b");
    wait_for(
        &a,
        "app",
        Duration::from_secs(60),
        "Ready in team-a",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = b.get("app").await.unwrap();
    assert!(
        other.status.is_none(),
        "team-b was reconciled: {:?}",
        other.status
    );
    assert!(other.finalizers().is_empty());
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "team-b/app", "1").await,
        404
    );
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "imagesync-system");
    assert!(leases
        .get_opt("imagesync-controller")
        .await
        .unwrap()
        .is_some());
    let log = controller.log_text();
    assert!(!log.contains("forbidden"), "permission errors:\n{log}");
}
