//! End-to-end tests: the engine library against real distribution registries (exact copies
//! of images, indexes and artifacts; no-op and mounted copies; faults; TLS, basic, token
//! and anonymous-bearer auth; Docker config credentials; deletes and their layer rules).
//!
//! Over 600 lines because it is one module per area (the engine's operations): each test is
//! one scenario against real components, and its set-up is spelled out so a failure reads
//! alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use imagesync_e2e::fixtures::{self, FixtureSpec, MediaKind, Target};
use imagesync_e2e::proxy::{Fault, FaultPlan, FaultProxy, Mode, Target as FaultTarget};
use imagesync_e2e::registry::{Registry, RegistryOptions};
use imagesync_engine::auth::{ChainProvider, Credential, StaticProvider};
use imagesync_engine::{
    DeleteOptions, Engine, EngineConfig, ErrorKind, Reference, RetryPolicy, SyncOptions,
};

/// A retry policy that keeps fault tests fast.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
        deadline: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(30),
    }
}

/// `(registry, operation, status)` of every request an engine sent, as its
/// [`imagesync_engine::RequestObserver`] saw them.
pub(crate) type Seen = Arc<std::sync::Mutex<Vec<(String, &'static str, Option<u16>)>>>;

/// An observer that records every request into the returned [`Seen`].
pub(crate) fn recording_observer() -> (imagesync_engine::RequestObserver, Seen) {
    let seen: Seen = Default::default();
    let observer = imagesync_engine::RequestObserver::new({
        let seen = seen.clone();
        move |registry, operation, status| {
            seen.lock()
                .unwrap()
                .push((registry.to_string(), operation, status))
        }
    });
    (observer, seen)
}

fn engine(insecure: &[&str]) -> Engine {
    Engine::new(EngineConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        retry: fast_retry(),
        ..EngineConfig::default()
    })
    .unwrap()
}

fn engine_with(
    insecure: &[&str],
    ca: Option<&Path>,
    creds: Arc<dyn imagesync_engine::CredentialProvider>,
) -> Engine {
    Engine::new(EngineConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        ca_file: ca.map(Path::to_path_buf),
        credentials: creds,
        retry: fast_retry(),
        ..EngineConfig::default()
    })
    .unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

// === copy ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_copy_is_byte_identical_with_children_and_blobs() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "src/app", "1", 11).await;
    let e = engine(&[src.addr(), dst.addr()]);
    let out = e
        .sync(
            &r(&src.reference("src/app:1")),
            &r(&dst.reference("mirror/app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.source_digest.as_str(), pushed.digest);
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    assert_eq!(
        out.id,
        format!("{}/mirror/app@{}", dst.addr(), pushed.digest)
    );
    assert!(!out.up_to_date);
    assert_eq!(out.manifests_pushed, 3);
    assert_eq!(out.blobs_uploaded, pushed.blobs.len());
    assert_eq!(out.bytes_uploaded, pushed.blob_bytes);
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &pushed).await;

    // The index went last: its PUT is the final manifest write in the access log.
    let log = dst.access_log_settled().await;
    let puts: Vec<_> = log
        .iter()
        .filter(|e| e.method == "PUT" && e.is_manifest())
        .collect();
    assert_eq!(puts.len(), 3);
    assert_eq!(
        puts[2].path, "/v2/mirror/app/manifests/1",
        "tag must be written last: {puts:?}"
    );
    let last_blob_put = log
        .iter()
        .rposition(|e| e.method == "PUT" && e.is_upload())
        .unwrap();
    let first_manifest_put = log
        .iter()
        .position(|e| e.method == "PUT" && e.is_manifest())
        .unwrap();
    assert!(last_blob_put < first_manifest_put, "blobs before manifests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_oci_images_lists_and_artifacts_copy_exactly() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let e = engine(&[src.addr(), dst.addr()]);
    let docker = fixtures::push_image(
        src.addr(),
        "src/docker",
        "v1",
        FixtureSpec {
            media: MediaKind::Docker,
            layers: 4,
            ..FixtureSpec::seeded(21)
        },
    )
    .await;
    let oci = fixtures::push_image(src.addr(), "src/oci", "v1", FixtureSpec::seeded(22)).await;
    let list = fixtures::push_index_with(
        src.addr(),
        "src/list",
        "v1",
        FixtureSpec {
            media: MediaKind::Docker,
            ..FixtureSpec::seeded(23)
        },
    )
    .await;
    let artifact = fixtures::push_artifact(src.addr(), "src/oci", "sig", &oci, 24).await;
    for (repo, tag, pushed) in [
        ("src/docker", "v1", &docker),
        ("src/oci", "v1", &oci),
        ("src/list", "v1", &list),
        ("src/oci", "sig", &artifact),
    ] {
        let dst_repo = repo.replace("src/", "dst/");
        let out = e
            .sync(
                &r(&src.reference(&format!("{repo}:{tag}"))),
                &r(&dst.reference(&format!("{dst_repo}:{tag}"))),
                &SyncOptions::default(),
            )
            .await
            .unwrap_or_else(|err| panic!("{repo}:{tag}: {err}"));
        assert_eq!(
            out.destination_digest.as_str(),
            pushed.digest,
            "{repo}:{tag}"
        );
        fixtures::assert_identical(dst.addr(), &dst_repo, tag, pushed).await;
    }
    // The artifact kept its subject and artifactType (bytes are identical; check anyway).
    let (_, bytes) = fixtures::get_manifest(dst.addr(), "dst/oci", "sig")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["subject"]["digest"], oci.digest.as_str());
    assert_eq!(
        v["artifactType"],
        "application/vnd.imagesync.test.signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_copy_transfers_no_bytes() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 31).await;
    let e = engine(&[src.addr(), dst.addr()]);
    let (s, d) = (r(&src.reference("app:1")), r(&dst.reference("app:1")));
    let first = e.sync(&s, &d, &SyncOptions::default()).await.unwrap();
    assert!(first.bytes_uploaded > 0);
    dst.access_log_settled().await;
    dst.clear_access_log();
    let again = e.sync(&s, &d, &SyncOptions::default()).await.unwrap();
    assert!(again.up_to_date);
    assert_eq!(
        (
            again.bytes_uploaded,
            again.blobs_uploaded,
            again.manifests_pushed
        ),
        (0, 0, 0)
    );
    assert_eq!(again.id, first.id);
    let log = dst.access_log_settled().await;
    assert!(
        log.iter().all(|e| e.method == "HEAD" || e.path == "/v2/"),
        "no-op re-copy must only HEAD: {log:?}"
    );
    // The request observer sees the same: two HEADs, one per side (sent together, so in
    // either order), then the referrers probe's two HEADs at the source (its
    // `sha256-<hex>` and `.sig` tags: none here). Beside them, at most `jobs` (4) `GET /v2/`
    // per side open the connections a copy would need (the registry answers them 200;
    // those still in flight when the no-op returns are not seen).
    let (observer, seen) = recording_observer();
    let observed = Engine::new(EngineConfig {
        insecure_registries: vec![src.addr().to_string(), dst.addr().to_string()],
        retry: fast_retry(),
        observer: Some(observer),
        ..EngineConfig::default()
    })
    .unwrap();
    assert!(
        observed
            .sync(&s, &d, &SyncOptions::default())
            .await
            .unwrap()
            .up_to_date
    );
    let mut seen = seen.lock().unwrap().clone();
    for side in [src.addr(), dst.addr()] {
        let warm = (side.to_string(), "GET /v2/", Some(200));
        assert!(
            seen.iter().filter(|s| **s == warm).count() <= 4,
            "more than jobs warm-up requests to {side}: {seen:?}"
        );
        seen.retain(|s| *s != warm);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    seen[..2].sort();
    let mut sides = vec![
        (src.addr().to_string(), "HEAD manifest", Some(200)),
        (dst.addr().to_string(), "HEAD manifest", Some(200)),
    ];
    sides.sort();
    let probe = (src.addr().to_string(), "HEAD manifest", Some(404));
    assert_eq!(seen, [sides, vec![probe.clone(), probe]].concat());

    // Another tag in the same repository: every blob and child is skipped.
    let other = e
        .sync(&s, &r(&dst.reference("app:2")), &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(other.bytes_uploaded, 0);
    assert_eq!(other.blobs_uploaded, 0);
    assert_eq!(
        other.manifests_pushed, 1,
        "children already there, only the index is written"
    );
    fixtures::assert_identical(dst.addr(), "app", "2", &pushed).await;
}

/// A cold copy (destination tag missing) sends each small blob's upload session and
/// source GET with its HEAD. When the repository holds the blobs after all (written by
/// someone this engine never saw), nothing is uploaded and every session it opened is
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_copy_into_a_repository_that_holds_the_blobs_uploads_nothing_and_leaves_no_session()
{
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let spec = FixtureSpec {
        seed: 37,
        ..FixtureSpec::default()
    };
    let pushed = fixtures::push_image(src.addr(), "app", "1", spec).await;
    let s = r(&src.reference("app:1"));
    engine(&[src.addr(), dst.addr()])
        .sync(&s, &r(&dst.reference("app:1")), &SyncOptions::default())
        .await
        .unwrap();
    dst.access_log_settled().await;
    dst.clear_access_log();
    // A new engine knows nothing of the destination; the tag app:2 is missing.
    let out = engine(&[src.addr(), dst.addr()])
        .sync(&s, &r(&dst.reference("app:2")), &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((out.bytes_uploaded, out.blobs_uploaded), (0, 0), "{out:?}");
    assert_eq!(out.blobs_skipped, pushed.blobs.len(), "{out:?}");
    fixtures::assert_identical(dst.addr(), "app", "2", &pushed).await;
    let log = dst.access_log_settled().await;
    let sessions = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.contains("/blobs/uploads/"))
        .count();
    let cancelled = log
        .iter()
        .filter(|e| e.method == "DELETE" && e.path.contains("/blobs/uploads/") && e.status == 204)
        .count();
    assert!(
        sessions > 0,
        "no session was started with the HEADs: {log:?}"
    );
    assert_eq!(
        sessions, cancelled,
        "an upload session was left open: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|e| e.method == "PUT" && e.path.contains("/blobs/uploads/")),
        "a blob was uploaded: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_image_into_one_repository_both_succeed() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 35).await;
    let (e1, e2) = (
        engine(&[src.addr(), dst.addr()]),
        engine(&[src.addr(), dst.addr()]),
    );
    let s = r(&src.reference("app:1"));
    let (d1, d2) = (r(&dst.reference("app:a")), r(&dst.reference("app:b")));
    let opts = SyncOptions::default();
    let (a, b) = tokio::join!(e1.sync(&s, &d1, &opts), e2.sync(&s, &d2, &opts));
    assert_eq!(a.unwrap().destination_digest.as_str(), pushed.digest);
    assert_eq!(b.unwrap().destination_digest.as_str(), pushed.digest);
    fixtures::assert_identical(dst.addr(), "app", "a", &pushed).await;
    fixtures::assert_identical(dst.addr(), "app", "b", &pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_registry_copy_mounts_blobs() {
    let reg = Registry::start().await;
    let pushed = fixtures::push_index(reg.addr(), "team-a/app", "1", 41).await;
    let e = engine(&[reg.addr()]);
    reg.access_log_settled().await;
    reg.clear_access_log();
    let out = e
        .sync(
            &r(&reg.reference("team-a/app:1")),
            &r(&reg.reference("team-b/app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.blobs_mounted, pushed.blobs.len());
    assert_eq!(out.bytes_uploaded, 0);
    fixtures::assert_identical(reg.addr(), "team-b/app", "1", &pushed).await;
    let log = reg.access_log_settled().await;
    let mounts = log
        .iter()
        .filter(|e| e.method == "POST" && e.path.contains("mount=") && e.status == 201)
        .count();
    assert_eq!(mounts, pushed.blobs.len(), "{log:?}");
    assert!(
        !log.iter().any(|e| e.method == "GET" && e.is_blob()),
        "no blob was downloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_resolution_uses_head_only() {
    let reg = Registry::start().await;
    let pushed = fixtures::push_index(reg.addr(), "app", "1", 51).await;
    let e = engine(&[reg.addr()]);
    reg.access_log_settled().await;
    reg.clear_access_log();
    let d = e.digest(&r(&reg.reference("app:1"))).await.unwrap();
    assert_eq!(d.map(|d| d.to_string()), Some(pushed.digest.clone()));
    let pinned = e
        .digest(&r(&format!("{}/app@{}", reg.addr(), pushed.digest)))
        .await
        .unwrap();
    assert_eq!(pinned.map(|d| d.to_string()), Some(pushed.digest.clone()));
    assert_eq!(
        e.digest(&r(&reg.reference("app:missing"))).await.unwrap(),
        None
    );
    assert_eq!(
        e.digest(&r(&reg.reference("nothing/here:1")))
            .await
            .unwrap(),
        None
    );
    let log = reg.access_log_settled().await;
    let manifest_reqs: Vec<_> = log.iter().filter(|e| e.is_manifest()).collect();
    assert_eq!(manifest_reqs.len(), 4, "{log:?}");
    assert!(
        manifest_reqs.iter().all(|e| e.method == "HEAD"),
        "digest must use HEAD only: {log:?}"
    );
}

// === faults ===

async fn copy_through_proxy(plan: FaultPlan, proxy_in_front_of_source: bool) -> (Duration, usize) {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 61).await;
    let upstream = if proxy_in_front_of_source {
        src.addr()
    } else {
        dst.addr()
    };
    let proxy = FaultProxy::start(upstream, plan).await;
    let (s, d) = if proxy_in_front_of_source {
        (format!("{}/app:1", proxy.addr()), dst.reference("app:1"))
    } else {
        (src.reference("app:1"), format!("{}/app:1", proxy.addr()))
    };
    let e = engine(&[src.addr(), dst.addr(), &proxy.addr()]);
    let started = Instant::now();
    let out = e
        .sync(&r(&s), &r(&d), &SyncOptions::default())
        .await
        .unwrap_or_else(|err| panic!("{plan:?}: {err}"));
    let took = started.elapsed();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    fixtures::assert_identical(dst.addr(), "app", "1", &pushed).await;
    assert!(
        proxy.faults_injected() > 0,
        "the proxy injected nothing for {plan:?}"
    );
    (took, proxy.faults_injected())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_survives_500_and_503() {
    for code in [500, 503] {
        let plan = FaultPlan {
            fault: Fault::Status(code),
            target: FaultTarget::Any,
            mode: Mode::PerRequest(1),
        };
        copy_through_proxy(plan, true).await;
        copy_through_proxy(plan, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_honours_429_retry_after_including_uploads() {
    let plan = FaultPlan {
        fault: Fault::RateLimited {
            retry_after_secs: 1,
        },
        target: FaultTarget::Manifests,
        mode: Mode::FirstN(1),
    };
    let (took, n) = copy_through_proxy(plan, true).await;
    assert_eq!(n, 1);
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After: 1 must be waited for (took {took:?})"
    );
    let plan = FaultPlan {
        fault: Fault::RateLimited {
            retry_after_secs: 1,
        },
        target: FaultTarget::Uploads,
        mode: Mode::FirstN(2),
    };
    let (took, _) = copy_through_proxy(plan, false).await;
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After on uploads must be waited for (took {took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_survives_connection_resets_mid_blob() {
    let plan = FaultPlan {
        fault: Fault::ResetMidBody,
        target: FaultTarget::BlobGets,
        mode: Mode::PerRequest(1),
    };
    let (_, n) = copy_through_proxy(plan, true).await;
    assert!(n >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_faults_fail_the_copy_and_leave_no_tag() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    fixtures::push_index(src.addr(), "app", "1", 71).await;
    let e = engine(&[src.addr(), dst.addr()]);
    for fault in [Fault::ResetMidBody, Fault::Status(503)] {
        let proxy = FaultProxy::start(
            src.addr(),
            FaultPlan {
                fault,
                target: FaultTarget::BlobGets,
                mode: Mode::Always,
            },
        )
        .await;
        let e2 = engine(&[&proxy.addr(), dst.addr()]);
        let err = e2
            .sync(
                &r(&format!("{}/app:1", proxy.addr())),
                &r(&dst.reference("app:1")),
                &SyncOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        assert_eq!(
            fixtures::manifest_status(dst.addr(), "app", "1").await,
            404,
            "tag must be absent after {fault:?}"
        );
        assert_eq!(e.digest(&r(&dst.reference("app:1"))).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refusing_monolithic_uploads_gets_chunked_patches() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 73).await;
    let proxy = FaultProxy::start(
        dst.addr(),
        FaultPlan {
            fault: Fault::RefuseMonolithic,
            target: FaultTarget::Uploads,
            mode: Mode::Always,
        },
    )
    .await;
    let e = engine(&[src.addr(), &proxy.addr()]);
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&format!("{}/app:1", proxy.addr())),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    fixtures::assert_identical(dst.addr(), "app", "1", &pushed).await;
    assert!(proxy.faults_injected() >= 1);
    let log = dst.access_log_settled().await;
    let patches = log
        .iter()
        .filter(|e| e.method == "PATCH" && e.status == 202)
        .count();
    assert!(
        patches >= pushed.blobs.len(),
        "every blob goes up in PATCH chunks: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_fails_with_integrity_and_leaves_no_tag() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(75)).await;
    let proxy = FaultProxy::start(
        src.addr(),
        FaultPlan {
            fault: Fault::Corrupt,
            target: FaultTarget::BlobGets,
            mode: Mode::Always,
        },
    )
    .await;
    let e = engine(&[&proxy.addr(), dst.addr()]);
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(proxy.faults_injected() > 0);
    assert_eq!(fixtures::manifest_status(dst.addr(), "app", "1").await, 404);
    // No corrupted blob was committed at the destination.
    let log = dst.access_log_settled().await;
    assert!(
        !log.iter().any(|e| e.method == "PUT" && e.status == 201),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_tag_pointing_elsewhere_is_overwritten() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let want = fixtures::push_index(src.addr(), "app", "1", 77).await;
    let stale = fixtures::push_image(dst.addr(), "app", "1", FixtureSpec::seeded(78)).await;
    let e = engine(&[src.addr(), dst.addr()]);
    assert_eq!(
        e.digest(&r(&dst.reference("app:1")))
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        stale.digest
    );
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert!(!out.up_to_date);
    fixtures::assert_identical(dst.addr(), "app", "1", &want).await;
    // A pinned source digest that no longer matches the tag refuses to copy.
    let err = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("app:2")),
            &SyncOptions {
                expect_source_digest: Some(stale.digest.parse().unwrap()),
                ..SyncOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(fixtures::manifest_status(dst.addr(), "app", "2").await, 404);
}

// === references and errors ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_and_missing_images_give_documented_errors() {
    for bad in [
        "",
        "127.0.0.1:5000/Upper/Case:1",
        "repo@sha256:abc",
        "repo@md5:d41d8cd98f00b204e9800998ecf8427e",
        "has space:1",
        "a/../b:1",
    ] {
        let err = Reference::parse(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "error must name the input {bad:?}: {err}"
        );
    }
    let reg = Registry::start().await;
    let e = engine(&[reg.addr()]);
    let err = e
        .sync(
            &r(&reg.reference("no/such:1")),
            &r(&reg.reference("dst:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("no/such"), "{err}");
}

// === TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_ca_file() {
    let src = Registry::start().await;
    let tls = Registry::start_with(RegistryOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 81).await;
    let e = engine_with(
        &[src.addr()],
        tls.ca_pem_path(),
        Arc::new(imagesync_engine::auth::Anonymous),
    );
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&tls.reference("app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    assert_eq!(
        e.digest(&r(&tls.reference("app:1")))
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        pushed.digest
    );
    // Without the CA the certificate is not trusted.
    let untrusting = engine(&[src.addr()]);
    let err = untrusting
        .digest(&r(&tls.reference("app:1")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}

// === skopeo cross-check ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_sees_the_copied_image_intact() {
    if !imagesync_e2e::have("skopeo") {
        eprintln!("skopeo not installed; skipping the cross-check");
        return;
    }
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 91).await;
    let e = engine(&[src.addr(), dst.addr()]);
    e.sync(
        &r(&src.reference("app:1")),
        &r(&dst.reference("copy/app:1")),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    for reference in
        std::iter::once("1".to_string()).chain(pushed.children.iter().map(|c| c.to_string()))
    {
        let sep = if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let out = tokio::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/copy/app{sep}{reference}", dst.addr()))
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = if sep == ":" {
            pushed.digest.clone()
        } else {
            reference.clone()
        };
        assert_eq!(fixtures::sha256(&out.stdout), want);
    }
}

// === credentials ===

const USER: &str = "mirror-bot";
const PASS: &str = "s3cret-pa55";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls() {
    let src = Registry::start().await;
    let dst = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 101).await;
    // Raw pushes work against TLS + Basic too (harness check).
    let direct = dst
        .target()
        .push_image("direct", "1", &FixtureSpec::seeded(102))
        .await
        .unwrap();
    let creds = StaticProvider::new().with(dst.addr(), Credential::basic(USER, PASS));
    let e = engine_with(&[src.addr()], dst.ca_pem_path(), Arc::new(creds));
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    assert_eq!(
        e.digest(&r(&dst.reference("app:1")))
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        pushed.digest
    );
    let d = e.digest(&r(&dst.reference("direct:1"))).await.unwrap();
    assert_eq!(d.unwrap().as_str(), direct.digest);

    // Anonymous: unauthorized, never "not found".
    let anon = engine_with(
        &[],
        dst.ca_pem_path(),
        Arc::new(imagesync_engine::auth::Anonymous),
    );
    let err = anon.digest(&r(&dst.reference("app:1"))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_unauthorized_and_write_nothing() {
    let src = Registry::start().await;
    let basic = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    let token = Registry::start_with(RegistryOptions {
        token_auth: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    fixtures::push_index(src.addr(), "app", "1", 111).await;
    for dst in [&basic, &token] {
        let creds =
            StaticProvider::new().with(dst.addr(), Credential::basic(USER, "wrong-password"));
        let e = engine_with(
            &[src.addr(), token.addr()],
            dst.ca_pem_path(),
            Arc::new(creds),
        );
        let err = e
            .sync(
                &r(&src.reference("app:1")),
                &r(&dst.reference("app:1")),
                &SyncOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        assert_eq!(err.status(), Some(401), "{err}");
        assert!(
            !err.to_string().contains("wrong-password"),
            "secret leaked: {err}"
        );
        let log = dst.access_log_settled().await;
        assert!(
            !log.iter()
                .any(|e| matches!(e.method.as_str(), "POST" | "PUT" | "PATCH") && e.status < 400),
            "nothing may be written: {log:?}"
        );
    }
    // The registry's (token server's) message reaches the caller.
    let creds = StaticProvider::new().with(token.addr(), Credential::basic(USER, "wrong-password"));
    let e = engine_with(&[token.addr()], None, Arc::new(creds));
    let err = e.digest(&r(&token.reference("app:1"))).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid username or password"),
        "{err}"
    );
    let anon = engine(&[token.addr()]);
    assert_eq!(
        anon.digest(&r(&token.reference("app:1")))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unauthorized
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_copy_and_mount_between_repositories() {
    let src = Registry::start().await;
    let reg = Registry::start_with(RegistryOptions {
        token_auth: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 121).await;
    let creds = StaticProvider::new().with(reg.addr(), Credential::basic(USER, PASS));
    let e = engine_with(&[src.addr(), reg.addr()], None, Arc::new(creds));
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&reg.reference("team-a/app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    let out = e
        .sync(
            &r(&reg.reference("team-a/app:1")),
            &r(&reg.reference("team-b/app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.blobs_mounted, pushed.blobs.len(), "{out:?}");
    assert_eq!(out.bytes_uploaded, 0);
    let requests = reg.token_server().unwrap().requests();
    assert!(
        requests.iter().any(|t| t.issued
            && t.user.as_deref() == Some(USER)
            && t.scopes
                .contains(&"repository:team-b/app:pull,push".to_string())
            && t.scopes.contains(&"repository:team-a/app:pull".to_string())),
        "a mount needs one token with scopes on both repositories: {requests:?}"
    );
    assert_eq!(
        e.digest(&r(&reg.reference("team-b/app:1")))
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        pushed.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_challenge_like_public_registries() {
    // A token server that serves anyone (Docker Hub / quay.io style anonymous tokens).
    let src = Registry::start().await;
    let public = Registry::start_with(RegistryOptions {
        token_auth: true,
        ..Default::default()
    })
    .await;
    let dst = Registry::start().await;
    let pushed = fixtures::push_index(src.addr(), "library/app", "1", 125).await;
    let e = engine(&[src.addr(), public.addr(), dst.addr()]);
    e.sync(
        &r(&src.reference("library/app:1")),
        &r(&public.reference("library/app:1")),
        &SyncOptions::default(),
    )
    .await
    .unwrap();
    let out = e
        .sync(
            &r(&public.reference("library/app:1")),
            &r(&dst.reference("mirror/app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &pushed).await;
    let requests = public.token_server().unwrap().requests();
    assert!(
        requests.iter().all(|t| t.user.is_none()),
        "anonymous only: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|t| t.scopes == vec!["repository:library/app:pull".to_string()]),
        "{requests:?}"
    );
    // The raw registry really demands a token.
    assert_eq!(public.head_status("/v2/library/app/manifests/1").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_identity_token_uses_the_oauth2_refresh_flow() {
    use base64::Engine as _;
    let src = Registry::start().await;
    let reg = Registry::start_with(RegistryOptions {
        token_auth: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    let pushed = fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(127)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("<token>:");
    std::fs::write(
        &config,
        serde_json::json!({"auths": {reg.addr(): {"auth": auth, "identitytoken": imagesync_e2e::token::REFRESH_TOKEN}}})
            .to_string(),
    )
    .unwrap();
    let chain = ChainProvider::standard(StaticProvider::new(), Some(config));
    let e = engine_with(&[src.addr(), reg.addr()], None, Arc::new(chain));
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&reg.reference("app:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    let requests = reg.token_server().unwrap().requests();
    assert!(
        requests
            .iter()
            .all(|t| t.issued && t.user.as_deref() == Some(USER)),
        "{requests:?}"
    );
}

fn write_executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory on this process's `PATH` for credential helper scripts (added once).
fn helper_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.path().to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        // Edition 2021: set_var is safe; the only change is an extra directory in front.
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
        dir
    })
    .path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_auths_and_credential_helpers() {
    use base64::Engine as _;
    let src = Registry::start().await;
    let dst = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some((USER.into(), PASS.into())),
        ..Default::default()
    })
    .await;
    let pushed = fixtures::push_index(src.addr(), "app", "1", 131).await;
    let dir = tempfile::tempdir().unwrap();

    // auths with a base64 user:pass.
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(
        &config,
        serde_json::json!({"auths": {dst.addr(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let chain = ChainProvider::standard(StaticProvider::new(), Some(config.clone()));
    let e = engine_with(&[src.addr()], dst.ca_pem_path(), Arc::new(chain));
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("via-auths:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);

    // credHelpers: docker-credential-NAME on PATH answers `get` with the registry on stdin.
    let name = format!("imagesync-e2e-{}", std::process::id());
    let seen = dir.path().join("helper-saw");
    write_executable(
        &helper_dir().join(format!("docker-credential-{name}")),
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat > '{}'\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASS}\"}}' x\n",
            seen.display()
        ),
    );
    std::fs::write(
        &config,
        serde_json::json!({"credHelpers": {dst.addr(): name}}).to_string(),
    )
    .unwrap();
    let chain = ChainProvider::standard(StaticProvider::new(), Some(config.clone()));
    let e = engine_with(&[src.addr()], dst.ca_pem_path(), Arc::new(chain));
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("via-helper:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        dst.addr(),
        "the helper is asked for the registry"
    );

    // Explicit credentials win over the docker config.
    let chain = ChainProvider::standard(
        StaticProvider::new().with(dst.addr(), Credential::basic(USER, "wrong-password")),
        Some(config),
    );
    let e = engine_with(&[src.addr()], dst.ca_pem_path(), Arc::new(chain));
    let err = e
        .digest(&r(&dst.reference("via-helper:1")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
}

// === delete ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_tag_but_keeps_other_tags_on_the_digest() {
    let reg = Registry::start().await;
    let t = Target::plain(reg.addr());
    let pushed = t
        .push_image("app", "one", &FixtureSpec::seeded(141))
        .await
        .unwrap();
    t.put_manifest("app", "two", &pushed.media_type, &pushed.manifest)
        .await
        .unwrap();
    let e = engine(&[reg.addr()]);
    let report = e
        .delete(&r(&reg.reference("app:one")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(
        report.tag_removed && !report.manifest_deleted && !report.already_gone,
        "{report:?}"
    );
    assert_eq!(report.kept_tags, vec!["two".to_string()]);
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(pushed.digest.clone())
    );
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "app", "one").await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "app", "two").await,
        200
    );
    assert_eq!(
        e.digest(&r(&reg.reference("app:two")))
            .await
            .unwrap()
            .unwrap()
            .as_str(),
        pushed.digest
    );
    fixtures::assert_identical(reg.addr(), "app", "two", &pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_unshared_layers_and_keeps_shared_ones() {
    let reg = Registry::start().await;
    let t = Target::plain(reg.addr());
    let spec = |seed| FixtureSpec {
        layers: 3,
        shared_layers: 2,
        ..FixtureSpec::seeded(seed)
    };
    let a = t.push_image("app", "a", &spec(151)).await.unwrap();
    let b = t.push_image("app", "b", &spec(152)).await.unwrap();
    let shared: Vec<_> = a
        .blobs
        .iter()
        .filter(|x| b.blobs.contains(x))
        .cloned()
        .collect();
    let unshared: Vec<_> = a
        .blobs
        .iter()
        .filter(|x| !b.blobs.contains(x))
        .cloned()
        .collect();
    assert_eq!(
        (shared.len(), unshared.len()),
        (2, 2),
        "fixture: 2 shared layers; own layer + config"
    );
    let e = engine(&[reg.addr()]);
    let report = e
        .delete(&r(&reg.reference("app:a")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(report.tag_removed && report.manifest_deleted, "{report:?}");
    assert_eq!(report.blobs_deleted, 2, "{report:?}");
    assert_eq!(report.blobs_kept, 2, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(fixtures::manifest_status(reg.addr(), "app", "a").await, 404);
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "app", &a.digest).await,
        404
    );
    for blob in &unshared {
        assert_eq!(
            fixtures::blob_status(reg.addr(), "app", blob).await,
            404,
            "unshared {blob} must be gone"
        );
    }
    fixtures::assert_identical(reg.addr(), "app", "b", &b).await;

    // --keep-layers leaves every blob.
    let report = e
        .delete(
            &r(&reg.reference("app:b")),
            &DeleteOptions {
                expect_digest: None,
                delete_layers: false,
                only_blobs: None,
                referrers: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(
        report.manifest_deleted && report.blobs_deleted == 0,
        "{report:?}"
    );
    for blob in &b.blobs {
        assert_eq!(fixtures::blob_status(reg.addr(), "app", blob).await, 200);
    }
}

/// Issue 12, item 4: an image that no tag names (pushed by digest, or left behind by a
/// moved tag) shares its base layer with a new copy. Deleting the copy with the record
/// of what it uploaded keeps the base, so the old image still pulls by digest. Without
/// the record (the CLI's rule, the only rule before this change) the same delete takes
/// the base with it: the attack the record closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_the_upload_record_keeps_layers_of_untagged_images() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let spec = |seed| FixtureSpec {
        layers: 2,
        shared_layers: 1,
        ..FixtureSpec::seeded(seed)
    };
    let (s, d) = (Target::plain(src.addr()), Target::plain(dst.addr()));
    let old = d.push_image_at("app", None, &spec(171)).await.unwrap();
    s.push_image("app", "new", &spec(172)).await.unwrap();
    let base = old.layers[0].clone();
    let e = engine(&[src.addr(), dst.addr()]);
    let copy = |e: Engine| {
        let (from, to) = (r(&src.reference("app:new")), r(&dst.reference("app:1")));
        async move { e.sync(&from, &to, &SyncOptions::default()).await.unwrap() }
    };
    let outcome = copy(e.clone()).await;
    assert!(!outcome.up_to_date);
    // The base was already there: not uploaded, so not ours.
    assert_eq!(outcome.blobs_uploaded, 2, "{outcome:?}");
    assert_eq!(outcome.uploaded.len(), 2, "{outcome:?}");
    assert!(!outcome.uploaded.iter().any(|b| b.as_str() == base));

    let owned = DeleteOptions {
        expect_digest: Some(outcome.destination_digest.clone()),
        delete_layers: true,
        only_blobs: Some(outcome.uploaded.iter().cloned().collect()),
        referrers: Vec::new(),
    };
    let report = e.delete(&r(&dst.reference("app:1")), &owned).await.unwrap();
    assert!(report.manifest_deleted, "{report:?}");
    assert_eq!(report.blobs_deleted, 2, "{report:?}");
    assert_eq!(report.blobs_kept, 1, "{report:?}");
    for blob in &old.blobs {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "app", blob).await,
            200,
            "{blob}"
        );
    }
    for blob in &outcome.uploaded {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "app", blob.as_str()).await,
            404
        );
    }

    // The record-less rule (CLI): the untagged image is invisible and loses its base.
    let outcome = copy(e.clone()).await;
    let report = e
        .delete(&r(&dst.reference("app:1")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(report.manifest_deleted, "{report:?} {outcome:?}");
    assert_eq!(fixtures::blob_status(dst.addr(), "app", &base).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_an_index_removes_children_and_their_blobs() {
    let reg = Registry::start().await;
    let pushed = fixtures::push_index(reg.addr(), "app", "1", 161).await;
    let e = engine(&[reg.addr()]);
    let report = e
        .delete(&r(&reg.reference("app:1")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(report.manifest_deleted, "{report:?}");
    assert_eq!(report.blobs_deleted, pushed.blobs.len(), "{report:?}");
    for child in &pushed.children {
        assert_eq!(
            fixtures::manifest_status(reg.addr(), "app", child).await,
            404
        );
    }
    for blob in &pushed.blobs {
        assert_eq!(fixtures::blob_status(reg.addr(), "app", blob).await, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_mismatched_expect_digest_refuses_and_changes_nothing() {
    let reg = Registry::start().await;
    let pushed = fixtures::push_image(reg.addr(), "app", "1", FixtureSpec::seeded(171)).await;
    let other = fixtures::push_image(reg.addr(), "app", "other", FixtureSpec::seeded(172)).await;
    let e = engine(&[reg.addr()]);
    reg.access_log_settled().await;
    reg.clear_access_log();
    let err = e
        .delete(
            &r(&reg.reference("app:1")),
            &DeleteOptions {
                expect_digest: Some(other.digest.parse().unwrap()),
                delete_layers: true,
                only_blobs: None,
                referrers: Vec::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains(&pushed.digest), "{err}");
    let log = reg.access_log_settled().await;
    assert!(
        log.iter().all(|e| e.method == "HEAD" || e.method == "GET"),
        "nothing may change: {log:?}"
    );
    fixtures::assert_identical(reg.addr(), "app", "1", &pushed).await;

    // The matching digest deletes.
    let report = e
        .delete(
            &r(&reg.reference("app:1")),
            &DeleteOptions {
                expect_digest: Some(pushed.digest.parse().unwrap()),
                delete_layers: true,
                only_blobs: None,
                referrers: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(report.tag_removed, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_missing_tag_is_success() {
    let reg = Registry::start().await;
    fixtures::push_image(reg.addr(), "app", "1", FixtureSpec::seeded(181)).await;
    let e = engine(&[reg.addr()]);
    for missing in ["app:gone", "never/existed:1"] {
        let report = e
            .delete(&r(&reg.reference(missing)), &DeleteOptions::default())
            .await
            .unwrap();
        assert!(
            report.already_gone && report.tag_removed,
            "{missing}: {report:?}"
        );
    }
    let report = e
        .delete(&r(&reg.reference("app:1")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(report.manifest_deleted);
    let again = e
        .delete(&r(&reg.reference("app:1")), &DeleteOptions::default())
        .await
        .unwrap();
    assert!(again.already_gone, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_a_registry_with_deletes_disabled_is_a_clear_unsupported_and_changes_nothing() {
    let reg = Registry::start_with(RegistryOptions {
        delete_enabled: false,
        ..Default::default()
    })
    .await;
    let t = Target::plain(reg.addr());
    let pushed = t
        .push_image("app", "1", &FixtureSpec::seeded(191))
        .await
        .unwrap();
    // A second tag on the same digest forces the detach path (retag, delete the throw-away).
    let shared = t
        .push_image("shared", "one", &FixtureSpec::seeded(192))
        .await
        .unwrap();
    t.put_manifest("shared", "two", &shared.media_type, &shared.manifest)
        .await
        .unwrap();
    reg.access_log_settled().await;
    reg.clear_access_log();
    let e = engine(&[reg.addr()]);
    for (reference, repo, tag, image) in [
        ("app:1", "app", "1", &pushed),
        ("shared:one", "shared", "one", &shared),
    ] {
        let err = e
            .delete(&r(&reg.reference(reference)), &DeleteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert_eq!(err.status(), Some(405), "{err}");
        assert!(
            err.to_string()
                .contains("does not allow deleting manifests"),
            "{err}"
        );
        assert!(err.to_string().contains("left in place"), "{err}");
        // Nothing changed: the tag still points at the image, every blob is there.
        fixtures::assert_identical(reg.addr(), repo, tag, image).await;
    }
    fixtures::assert_identical(reg.addr(), "shared", "two", &shared).await;
    // The detach path ran and put the original back: retag to the throw-away, then restore.
    let log = reg.access_log_settled().await;
    let retags = log
        .iter()
        .filter(|e| e.method == "PUT" && e.path == "/v2/shared/manifests/one")
        .count();
    assert_eq!(retags, 2, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_scans_a_repository_with_hundreds_of_tags_in_seconds() {
    let reg = Registry::start().await;
    let t = Target::plain(reg.addr());
    let base = t
        .push_image("app", "target", &FixtureSpec::seeded(201))
        .await
        .unwrap();
    let (ct, bytes) = fixtures::get_manifest(reg.addr(), "app", "target")
        .await
        .unwrap();
    // 300 other tags, each on its own manifest (same blobs, different annotation).
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let puts = (0..300).map(|i| {
        v["annotations"] = serde_json::json!({"n": i.to_string()});
        let body = serde_json::to_vec(&v).unwrap();
        let (t, ct) = (t.clone(), ct.clone());
        async move {
            t.put_manifest("app", &format!("t{i}"), &ct, &body)
                .await
                .unwrap()
        }
    });
    let puts: Vec<_> = puts.collect();
    futures::stream::iter(puts)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let e = engine(&[reg.addr()]);
    let started = Instant::now();
    let report = e
        .delete(&r(&reg.reference("app:target")), &DeleteOptions::default())
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("delete scanned 300 tags in {took:?}");
    assert!(report.manifest_deleted, "{report:?}");
    assert_eq!(
        report.blobs_deleted, 0,
        "every blob is used by the other tags: {report:?}"
    );
    assert_eq!(report.blobs_kept, base.blobs.len());
    assert!(
        took < Duration::from_secs(15),
        "scan of 300 tags took {took:?}"
    );
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "app", "t299").await,
        200
    );
}

// === blob locations: mounts across runs ===

#[tokio::test]
async fn shared_layers_are_mounted_from_a_repository_an_earlier_run_wrote() {
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let spec = |seed| FixtureSpec {
        seed,
        layers: 3,
        shared_layers: 2,
        ..FixtureSpec::default()
    };
    let one = fixtures::push_image(src.addr(), "one", "1", spec(1)).await;
    let two = fixtures::push_image(src.addr(), "two", "1", spec(2)).await;
    let three = fixtures::push_image(src.addr(), "three", "1", spec(3)).await;
    let shared: Vec<String> = one
        .layers
        .iter()
        .filter(|l| two.layers.contains(l))
        .cloned()
        .collect();
    assert_eq!(shared.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("blobs.json");
    // A new engine per copy, like one CLI call per image: only the file carries over.
    let new_engine = || {
        Engine::new(EngineConfig {
            insecure_registries: vec![src.addr().to_string(), dst.addr().to_string()],
            retry: fast_retry(),
            blob_cache: Some(cache.clone()),
            ..EngineConfig::default()
        })
        .unwrap()
    };
    let out = new_engine()
        .sync(
            &r(&src.reference("one:1")),
            &r(&dst.reference("mirror/one:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.blobs_mounted, 0, "{out:?}");
    assert!(cache.exists(), "the cache file was not written");

    dst.access_log_settled().await;
    dst.clear_access_log();
    let out = new_engine()
        .sync(
            &r(&src.reference("two:1")),
            &r(&dst.reference("mirror/two:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.blobs_mounted, 2, "{out:?}");
    assert_eq!(out.blobs_uploaded, two.blobs.len() - 2, "{out:?}");
    fixtures::assert_identical(dst.addr(), "mirror/two", "1", &two).await;
    let log = dst.access_log_settled().await;
    for digest in &shared {
        assert!(
            log.iter().any(|e| e.method == "POST"
                && e.path.contains(&format!("mount={digest}"))
                && e.path.contains("from=mirror/one")
                && e.status == 201),
            "no mount of {digest} from mirror/one: {log:?}"
        );
    }

    // A source that does not hold a shared layer itself never gets it mounted from
    // another repository (a manifest naming someone else's blob gains nothing).
    let gone = &shared[0];
    let resp = reqwest::Client::new()
        .delete(format!("http://{}/v2/three/blobs/{gone}", src.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "blob delete in the source");
    dst.access_log_settled().await;
    dst.clear_access_log();
    let err = new_engine()
        .sync(
            &r(&src.reference("three:1")),
            &r(&dst.reference("mirror/three:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(
        fixtures::blob_status(dst.addr(), "mirror/three", gone).await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/three", "1").await,
        404
    );
    let log = dst.access_log_settled().await;
    assert!(
        !log.iter()
            .any(|e| e.method == "POST" && e.path.contains(&format!("mount={gone}"))),
        "{log:?}"
    );
    drop(three);
}
