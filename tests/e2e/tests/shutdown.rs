//! The controller stops on SIGTERM (what the kubelet sends) within seconds: with the
//! `ImageSyncSet` CRD missing (an install whose CRDs Helm did not upgrade: that watch
//! never lists, and kube-runtime's graceful shutdown used to wait for its first list
//! forever), and with every CRD installed and objects being checked.

use std::time::{Duration, Instant};

use imagesync_api::ImageSync;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::Registry;
use kube::Api;

use crate::controller::{cluster, image_sync_yaml, start_controller, wait_for};
use crate::imagesyncset::set_crd_path;

#[tokio::test]
async fn sigterm_stops_the_controller_with_or_without_the_set_crd() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let isyncs: Api<ImageSync> = Api::namespaced(api.client().await, "default");
    fixtures::push_index(src.addr(), "app", "1", 1).await;
    let flags = [
        "--insecure-registry",
        src.addr(),
        "--insecure-registry",
        dst.addr(),
    ];
    api.apply_yaml(&image_sync_yaml(
        "default",
        "mirror",
        &src.reference("app:1"),
        &dst.reference("mirror/app:1"),
        "",
    ));

    // Only the ImageSync CRD: the object syncs, and SIGTERM still ends the process
    // (well before the 20s the controller grants reconciles in flight).
    let first = start_controller(api.kubeconfig(), api.dir(), "no-set-crd", &flags);
    wait_for(
        &isyncs,
        "mirror",
        Duration::from_secs(60),
        "Ready",
        Some(&first),
        |o| o.is_ready(),
    )
    .await;
    let status = first.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", first.log_text());
    let log = first.log_text();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("never listed these objects") && log.contains("ImageSyncSet"),
        "{log}"
    );

    // Every CRD installed, the object re-checked every 2s: a graceful stop.
    api.apply_crd(&set_crd_path()).await;
    let second = start_controller(api.kubeconfig(), api.dir(), "all-crds", &flags);
    // Reconciles running: the first check, then re-checks every 2s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.metric("imagesync_reconciles_total").await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no re-check: {}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = second.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", second.log_text());
    let log = second.log_text();
    assert!(
        log.contains("shutting down") && !log.contains("never listed"),
        "{log}"
    );
}
