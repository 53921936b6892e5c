//! Issue 14, the controller's side: a signature added at the source after the first sync
//! is copied at the next check, recorded in `status.referrers`, verified at the mirror by
//! an independent cosign verifier (the sigstore crate), and removed with the object,
//! while the source keeps its own. Real distribution 2.8 registries and a real
//! kube-apiserver v1.20.2. Also Terraform in Kubernetes mode, which reads the referrers
//! back from the object.

use std::time::Duration;

use imagesync_api::ImageSync;
use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::registry::Registry;
use imagesync_engine::artifact_types::COSIGN_SIGNATURE;
use kube::api::DeleteParams;
use kube::Api;

use crate::controller::{cluster, image_sync_yaml, start_controller, wait_for, wait_gone};
use crate::referrers::{cosign_sign, cosign_verify, new_signer};

fn referrer_digests(o: &ImageSync) -> Vec<String> {
    o.status
        .as_ref()
        .map(|s| s.referrers.iter().map(|r| r.digest.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_copies_a_signature_added_later_and_deletes_only_its_own() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let isyncs: Api<ImageSync> = Api::namespaced(client, "default");
    let image = fixtures::push_image(src.addr(), "team/app", "1", FixtureSpec::seeded(171)).await;
    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "referrers",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            dst.addr(),
        ],
    );
    api.apply_yaml(&image_sync_yaml(
        "default",
        "signed",
        &src.reference("team/app:1"),
        &dst.reference("mirror/app:1"),
        "",
    ));
    let first = wait_for(
        &isyncs,
        "signed",
        Duration::from_secs(60),
        "Ready with no referrers",
        Some(&controller),
        |o| o.is_ready(),
    )
    .await;
    assert!(referrer_digests(&first).is_empty(), "{:?}", first.status);

    // Signed after the first sync: the next check (every 2s) copies the signature.
    let (signer, pem) = new_signer();
    let identity = format!("{}/team/app", src.addr());
    let sig = cosign_sign(
        &src.target(),
        "team/app",
        &image.digest,
        &identity,
        &[&signer],
    )
    .await;
    let signed = wait_for(
        &isyncs,
        "signed",
        Duration::from_secs(60),
        "the later signature in status.referrers",
        Some(&controller),
        |o| referrer_digests(o) == vec![sig.digest.clone()],
    )
    .await;
    let status = signed.status.clone().unwrap();
    assert_eq!(status.referrer_count, Some(1), "{status:?}");
    assert_eq!(status.referrers[0].artifact_type, COSIGN_SIGNATURE);
    assert!(status.referrers[0].written, "{status:?}");
    assert!(signed.is_ready());
    let identities = cosign_verify(dst.addr(), "mirror/app", &image.digest, &pem)
        .await
        .unwrap();
    assert_eq!(identities, vec![identity]);

    // Deleting the object removes the image and the signature it copied; the source
    // keeps its own.
    isyncs
        .delete("signed", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&isyncs, "signed", Duration::from_secs(60), &controller).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", &sig.digest).await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", &image.digest).await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(src.addr(), "team/app", &sig.digest).await,
        200
    );
    controller.assert_running();
}

/// Terraform in Kubernetes mode: `copied_referrers` comes from the object's
/// `status.referrers` (the controller copied them); destroy deletes the object, and the
/// controller removes the signature it wrote with the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_kubernetes_mode_reads_copied_referrers_from_status() {
    use crate::terraform::{imagesyncs, kube_controller, Tf};
    let (api, a, b) = tokio::join!(
        imagesync_e2e::kube::ApiServer::start(),
        Registry::start(),
        Registry::start()
    );
    let _controller = kube_controller(&api, &a, &b).await;
    let image = fixtures::push_image(a.addr(), "src/app", "v1", FixtureSpec::seeded(172)).await;
    let (signer, pem) = new_signer();
    let identity = format!("{}/src/app", a.addr());
    let sig = cosign_sign(&a.target(), "src/app", &image.digest, &identity, &[&signer]).await;
    let tf = Tf::new("1.11.4");
    tf.config_with(
        &format!(
            "kubernetes {{\n    config_path = \"{}\"\n    namespace   = \"default\"\n  }}",
            api.kubeconfig().display()
        ),
        &format!(
            "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  timeouts {{\n    create = \"2m\"\n    delete = \"2m\"\n  }}\n}}\n",
            a.reference("src/app:v1"),
            b.reference("dst/app:v1")
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let v = tf.state_values("imagesync.app").await;
    assert_eq!(
        v["copied_referrers"][0]["digest"],
        sig.digest.as_str(),
        "{v}"
    );
    assert_eq!(v["copied_referrers"][0]["artifact_type"], COSIGN_SIGNATURE);
    assert_eq!(
        v["copied_referrers"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    let objects = imagesyncs(&api);
    assert_eq!(objects[0]["status"]["referrerCount"], 1, "{objects:?}");
    cosign_verify(b.addr(), "dst/app", &image.digest, &pem)
        .await
        .unwrap();

    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(imagesyncs(&api).is_empty());
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", &sig.digest).await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(a.addr(), "src/app", &sig.digest).await,
        200
    );
}
