//! Hostile `ImageSync` objects against the controller (issue 12, item 2), on the real
//! kube-apiserver v1.20.2 and real distribution registries: values of `resyncInterval`
//! that used to panic the controller or make it HEAD the registry in a loop, and a reconcile
//! task that dies while its replica holds the leader Lease.

use std::time::{Duration, Instant};

use imagesync_api::ImageSync;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::Registry;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::controller::{
    cluster, controller_with_env, crd_path, event_reasons, ready_with, reason, start_controller,
    wait_event, wait_for, wait_gone,
};

/// The `resyncInterval` pattern of the CRD before it was tightened (no length or digit
/// limits): objects stored under it are still in etcd after an upgrade, and admission
/// never re-checks them.
const OLD_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Refused by today's CRD schema; stored under the old one, kube-apiserver 1.20 refuses
/// every write to such an object (finalizer, status) until its spec is fixed, so the
/// controller can report it only with an Event. It panicked kube's duration parser.
const REFUSED_BY_SCHEMA: (&str, &str) = ("huge", "99999999999999999999h");

/// Each value once killed or froze the controller.
const HOSTILE: &[(&str, &str)] = &[
    // Parsed, then panicked adding it to an Instant (timer wheel limits).
    ("overflow", "2562047h"),
    // Parsed (kube goes through f64 seconds), then overflowed `Instant + Duration`.
    ("instant-overflow", "3000000000000000h"),
    // Over the 720h bound.
    ("too-long", "721h"),
    // A HEAD request per nanosecond.
    ("one-ns", "1ns"),
    ("zero", "0s"),
    // Below the floor (1s in the harness, 10s in production).
    ("sub-second", "999ms"),
];

fn object_yaml(name: &str, source: &str, destination: &str, interval: &str) -> String {
    format!(
        "apiVersion: imagesync.dev/v1alpha1\nkind: ImageSync\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  source: {source:?}\n  destination: {destination:?}\n  resyncInterval: {interval:?}\n"
    )
}

/// The CRD as it was before the tightened `resyncInterval` schema (written next to the
/// server's files).
fn old_crd(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(crd_path()).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("pattern: ^([0-9]{1,16}") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}pattern: {OLD_PATTERN}\n"));
        } else if trimmed == "maxLength: 32" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        out.contains(OLD_PATTERN),
        "the CRD has no resyncInterval pattern to loosen"
    );
    let path = dir.join("imagesyncs-before-bounds.yaml");
    std::fs::write(&path, out).unwrap();
    path
}

/// Every hostile interval: the current CRD refuses the unparseable one at admission; all
/// of them, stored under the old schema, reach the controller, which marks each
/// `Ready=False` reason `InvalidSpec` without a single registry request, stays up, and
/// keeps reconciling a healthy object beside them and one created after them.
#[tokio::test]
pub(crate) async fn hostile_resync_intervals_neither_crash_nor_loop_the_controller() {
    let (api, reg) = tokio::join!(cluster(), Registry::start());
    let client = api.client().await;
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    let image = fixtures::push_index(reg.addr(), "app", "1", 31).await;
    fixtures::push_index(reg.addr(), "hostile", "1", 32).await;

    // Admission with today's CRD: the 20-digit value and an over-long one are refused.
    for bad in [
        "99999999999999999999h",
        "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h",
    ] {
        let refused = imagesync_e2e::kube::kubectl(
            api.kubeconfig(),
            &["apply", "-f", "-"],
            Some(&object_yaml(
                "refused",
                &reg.reference("hostile:1"),
                &reg.reference("m/refused:1"),
                bad,
            )),
        )
        .expect_err("the CRD schema must refuse it");
        assert!(
            refused.contains("spec.resyncInterval"),
            "{bad}: refusal does not name the field: {refused}"
        );
    }

    // Objects stored before the schema was tightened, then the CRD upgraded again.
    api.apply_crd(&old_crd(api.dir())).await;
    for (name, interval) in HOSTILE.iter().chain([&REFUSED_BY_SCHEMA]) {
        api.apply_yaml(&object_yaml(
            name,
            &reg.reference("hostile:1"),
            &reg.reference(&format!("mirror/{name}:1")),
            interval,
        ));
    }
    api.apply_crd(&crd_path()).await;
    api.apply_yaml(&object_yaml(
        "healthy",
        &reg.reference("app:1"),
        &reg.reference("mirror/healthy:1"),
        "2s",
    ));

    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "hostile",
        &["--insecure-registry", reg.addr()],
    );
    wait_for(
        &isyncs,
        "healthy",
        Duration::from_secs(60),
        "healthy object Ready",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    for (name, interval) in HOSTILE {
        let obj = wait_for(
            &isyncs,
            name,
            Duration::from_secs(30),
            "InvalidSpec",
            Some(&controller),
            |o| reason(o).as_deref() == Some("InvalidSpec"),
        )
        .await;
        let c = obj.ready_condition().unwrap();
        assert_eq!(c.status, "False", "{name}");
        assert!(
            c.message.contains("spec.resyncInterval"),
            "{name} ({interval}): {}",
            c.message
        );
        assert!(
            obj.status
                .as_ref()
                .and_then(|s| s.destination_digest.as_ref())
                .is_none(),
            "{name} must not be copied"
        );
    }

    // The schema-refused object: a Warning Event, no finalizer, so deleting it is instant.
    let (huge, _) = REFUSED_BY_SCHEMA;
    let note = wait_event(&client, "default", huge, "InvalidSpec").await;
    assert!(note.contains("spec.resyncInterval"), "{note}");
    assert!(isyncs
        .get(huge)
        .await
        .unwrap()
        .metadata
        .finalizers
        .is_none());
    isyncs.delete(huge, &Default::default()).await.unwrap();
    wait_gone(&isyncs, huge, Duration::from_secs(10), &controller).await;
    for (name, _) in HOSTILE {
        let events = event_reasons(&client, "default", name).await;
        assert!(
            events.iter().any(|(r, _)| r == "InvalidSpec"),
            "{name}: {events:?}"
        );
    }

    // No request for the hostile objects' images at all (a 1ns interval used to mean a
    // HEAD loop), while the healthy object keeps being re-checked.
    reg.clear_access_log();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = reg.access_log_settled().await;
    let hostile: Vec<_> = log
        .iter()
        .filter(|e| {
            e.path.starts_with("/v2/hostile/")
                || (e.path.contains("/mirror/") && !e.path.contains("/mirror/healthy/"))
        })
        .collect();
    assert!(
        hostile.is_empty(),
        "{} requests for hostile objects in 6s: {:?}",
        hostile.len(),
        hostile.iter().take(5).collect::<Vec<_>>()
    );
    let heads = log
        .iter()
        .filter(|e| e.method == "HEAD" && e.path == "/v2/app/manifests/1")
        .count();
    assert!(
        (1..=12).contains(&heads),
        "the healthy object (2s) should be re-checked a few times in 6s, saw {heads} HEADs"
    );
    let requests = controller
        .get("/metrics")
        .await
        .map(|(_, text)| text)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("imagesync_registry_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(
        requests > 0.0 && requests < 200.0,
        "registry requests since start: {requests}"
    );

    // Still up and still reconciling: an object created now is synced.
    assert!(controller.is_running(), "{}", controller.log_text());
    assert_eq!(controller.get("/healthz").await.map(|r| r.0), Some(200));
    api.apply_yaml(&object_yaml(
        "after",
        &reg.reference("app:1"),
        &reg.reference("mirror/after:1"),
        "1m",
    ));
    wait_for(
        &isyncs,
        "after",
        Duration::from_secs(30),
        "an object created after the hostile ones is reconciled",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;

    // Fixing the spec makes the object work (the InvalidSpec state is not sticky).
    api.apply_yaml(&object_yaml(
        "one-ns",
        &reg.reference("hostile:1"),
        &reg.reference("mirror/one-ns:1"),
        "30s",
    ));
    wait_for(
        &isyncs,
        "one-ns",
        Duration::from_secs(30),
        "fixed spec synced",
        Some(&controller),
        |o| o.is_ready(),
    )
    .await;
    assert!(controller.is_running());
    assert!(
        !controller.log_text().contains("panicked"),
        "{}",
        controller.log_text()
    );
    controller.kill();
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("imagesync-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// A leader whose reconcile task panics (forced with the debug-build-only test hook
/// `IMAGESYNC_TEST_PANIC_RECONCILE_LOOP_AFTER`) exits non-zero and releases the Lease, so
/// the standby takes over at once instead of after the (here 60s) lease duration, and
/// reconciles.
#[tokio::test]
pub(crate) async fn a_dead_reconcile_task_releases_the_lease_and_the_standby_takes_over() {
    let (api, reg) = tokio::join!(cluster(), Registry::start());
    let client = api.client().await;
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let image = fixtures::push_index(reg.addr(), "app", "1", 33).await;
    let args = [
        "--insecure-registry",
        reg.addr(),
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        "--lease-duration",
        "60s",
    ];
    let doomed = controller_with_env(
        api.kubeconfig(),
        api.dir(),
        "doomed",
        &args,
        &[("IMAGESYNC_TEST_PANIC_RECONCILE_LOOP_AFTER", "4s")],
    );
    let doomed_pid = format!("_{}_", doomed.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lease_holder(&leases)
        .await
        .is_some_and(|h| h.contains(&doomed_pid))
    {
        assert!(
            Instant::now() < deadline,
            "doomed never led\n{}",
            doomed.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = start_controller(api.kubeconfig(), api.dir(), "standby", &args);

    // The panic: the process exits with a failure, after releasing the Lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = doomed.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running\n{}",
            doomed.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exited = Instant::now();
    assert!(!status.success(), "exit status {status:?}");
    let log = doomed.log_text();
    assert!(log.contains("the reconcile loop panicked"), "{log}");
    assert!(log.contains("released leadership"), "{log}");

    // The standby takes over well before the 60s lease would have expired.
    let standby_pid = format!("_{}_", standby.pid());
    while !lease_holder(&leases)
        .await
        .is_some_and(|h| h.contains(&standby_pid))
    {
        assert!(
            exited.elapsed() < Duration::from_secs(30),
            "standby did not take over\n{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.apply_yaml(&object_yaml(
        "after-panic",
        &reg.reference("app:1"),
        &reg.reference("mirror/after-panic:1"),
        "1m",
    ));
    wait_for(
        &isyncs,
        "after-panic",
        Duration::from_secs(30),
        "reconciled by the standby",
        Some(&standby),
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert!(exited.elapsed() < Duration::from_secs(50));
    assert_eq!(standby.metric("imagesync_leader").await, 1.0);
    assert!(standby.is_running());
    standby.kill();
}

/// Issue 13 (controller side): the controller refuses internal addresses an object names
/// unless the operator listed the registry. A TLS source registry on loopback, named
/// `localhost:PORT` (not an insecure or allowed registry), is refused after DNS: nothing
/// reaches it and the object reports the refusal. Listed with
/// `--allow-internal-registry localhost`, the same object syncs.
#[tokio::test]
pub(crate) async fn internal_registries_must_be_listed_by_the_operator() {
    use imagesync_e2e::registry::{Registry, RegistryOptions};
    let (api, src, dst) = tokio::join!(
        crate::controller::cluster(),
        Registry::start_with(RegistryOptions {
            tls: true,
            ..RegistryOptions::default()
        }),
        Registry::start()
    );
    let client = api.client().await;
    api.create_namespace("internal").await;
    let image = src
        .target()
        .push_image(
            "src/app",
            "1",
            &imagesync_e2e::fixtures::FixtureSpec::seeded(211),
        )
        .await
        .unwrap();
    src.access_log_settled().await;
    src.clear_access_log();
    let port = src.addr().rsplit_once(':').unwrap().1.to_string();
    let source = format!("localhost:{port}/src/app:1");
    let ca = src.ca_pem_path().unwrap().display().to_string();
    let base = ["--insecure-registry", dst.addr(), "--ca-file", ca.as_str()];
    let objs: kube::Api<imagesync_api::ImageSync> =
        kube::Api::namespaced(client.clone(), "internal");
    api.apply_yaml(&crate::controller::image_sync_yaml(
        "internal",
        "app",
        &source,
        &dst.reference("dst/app:1"),
        "",
    ));
    let refused = crate::controller::controller_with_env(
        api.kubeconfig(),
        api.dir(),
        "internal-refused",
        &base,
        &[("IMAGESYNC_ALLOW_INTERNAL_REGISTRIES", "")],
    );
    let o = crate::controller::wait_for(
        &objs,
        "app",
        std::time::Duration::from_secs(60),
        "refused",
        Some(&refused),
        |o| {
            o.ready_condition()
                .is_some_and(|c| c.status == "False" && c.message.contains("internal address"))
        },
    )
    .await;
    assert!(o.status.as_ref().unwrap().destination_digest.is_none());
    drop(refused);
    let log = src.access_log_settled().await;
    assert!(log.is_empty(), "the internal registry was reached: {log:?}");

    let mut args = base.to_vec();
    args.extend(["--allow-internal-registry", "localhost"]);
    let allowed =
        crate::controller::start_controller(api.kubeconfig(), api.dir(), "internal-allowed", &args);
    crate::controller::wait_for(
        &objs,
        "app",
        std::time::Duration::from_secs(60),
        "Ready once listed",
        Some(&allowed),
        |o| crate::controller::ready_with(o, &image.digest),
    )
    .await;
}
