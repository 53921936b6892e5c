//! Ownership of destination tags (issue 12, item 1): an object deletes only what its own
//! copy wrote, and of two objects naming one tag only the earlier one writes. Real
//! kube-apiserver, real `docker-registry`, the controller binary.

use std::time::Duration;

use imagesync_controller::api::{ImageSync, Ownership};
use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::registry::{AccessEntry, Registry};
use kube::api::{Patch, PatchParams};
use kube::Api;

use crate::controller::{
    cluster, image_sync_yaml, ready_with, reason, wait_event, wait_for, wait_gone, ControllerProc,
};

fn ownership_of(obj: &ImageSync) -> Option<Ownership> {
    obj.status.as_ref().and_then(|s| s.ownership)
}

fn writes_to<'a>(log: &'a [AccessEntry], repo: &str) -> Vec<&'a AccessEntry> {
    let prefix = format!("/v2/{repo}/");
    log.iter()
        .filter(|e| e.path.starts_with(&prefix))
        .filter(|e| matches!(e.method.as_str(), "PUT" | "POST" | "PATCH" | "DELETE"))
        .collect()
}

fn controller_args(regs: &[&Registry]) -> Vec<String> {
    regs.iter()
        .flat_map(|r| ["--insecure-registry".to_string(), r.addr().to_string()])
        .collect()
}

/// The attack: `source` = `destination` = a tag someone else pushed. Creating the object
/// finds the tag already holding the digest (adopted); deleting it must leave the tag.
/// Before the ownership record, the controller deleted it. Also: an object whose status
/// predates the ownership field (written here as the old controller wrote it) leaves its
/// tag, and a written object without a blob record keeps its layers.
#[tokio::test]
pub(crate) async fn adopted_tags_survive_deletion() {
    let (api, reg, src) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    let platform = fixtures::push_index(reg.addr(), "platform/api", "v3", 31).await;
    let args = controller_args(&[&reg, &src]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProc::start(api.kubeconfig(), api.dir(), "own", &args);

    let victim = reg.reference("platform/api:v3");
    api.apply_yaml(&image_sync_yaml("default", "adopt", &victim, &victim, ""));
    let obj = wait_for(
        &isyncs,
        "adopt",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &platform.digest),
    )
    .await;
    api.kubectl(&["delete", "isync", "-n", "default", "adopt", "--wait=false"]);
    wait_gone(&isyncs, "adopt", Duration::from_secs(60), &controller).await;
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "platform/api", "v3").await,
        200,
        "deleting the object deleted a tag it never wrote"
    );
    fixtures::assert_identical(reg.addr(), "platform/api", "v3", &platform).await;
    assert_eq!(ownership_of(&obj), Some(Ownership::Adopted));
    let note = wait_event(&client, "default", "adopt", "Adopted").await;
    assert!(note.contains("leaves the tag in place"), "{note}");
    let note = wait_event(&client, "default", "adopt", "LeftInPlace").await;
    assert!(note.contains("adopted"), "{note}");

    // A status written before ownership was tracked: the object is suspended (so the
    // controller does not touch its status) and its status is what the old controller
    // wrote for a synced object.
    let legacy = reg.reference("platform/api:legacy");
    let image = fixtures::push_index(reg.addr(), "platform/api", "legacy", 32).await;
    api.apply_yaml(&image_sync_yaml(
        "default",
        "legacy",
        &victim,
        &legacy,
        "suspend: true",
    ));
    wait_for(
        &isyncs,
        "legacy",
        Duration::from_secs(30),
        "Suspended",
        Some(&controller),
        |o| reason(o).as_deref() == Some("Suspended"),
    )
    .await;
    let old_status = serde_json::json!({"status": {
        "sourceDigest": image.digest, "destinationDigest": image.digest,
        "syncedDestination": legacy,
        "id": format!("{}/platform/api@{}", reg.addr(), image.digest),
    }});
    isyncs
        .patch_status(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(&old_status),
        )
        .await
        .unwrap();
    api.kubectl(&["delete", "isync", "-n", "default", "legacy", "--wait=false"]);
    wait_gone(&isyncs, "legacy", Duration::from_secs(60), &controller).await;
    let note = wait_event(&client, "default", "legacy", "LeftInPlace").await;
    assert!(note.contains("before ownership was tracked"), "{note}");
    fixtures::assert_identical(reg.addr(), "platform/api", "legacy", &image).await;

    // Written by the object, but no record of uploaded blobs (as after an upgrade): the
    // tag goes, every layer stays (uploaded from another registry, so a record would
    // name them all).
    let source = fixtures::push_image(src.addr(), "src/app", "1", FixtureSpec::seeded(33)).await;
    api.apply_yaml(&image_sync_yaml(
        "default",
        "norecord",
        &src.reference("src/app:1"),
        &reg.reference("mirror/app:1"),
        "",
    ));
    let obj = wait_for(
        &isyncs,
        "norecord",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &source.digest),
    )
    .await;
    assert_eq!(ownership_of(&obj), Some(Ownership::Written));
    let forget = serde_json::json!({"status": {"uploadedBlobs": null}});
    isyncs
        .patch_status("norecord", &PatchParams::default(), &Patch::Merge(&forget))
        .await
        .unwrap();
    api.kubectl(&[
        "delete",
        "isync",
        "-n",
        "default",
        "norecord",
        "--wait=false",
    ]);
    wait_gone(&isyncs, "norecord", Duration::from_secs(60), &controller).await;
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "mirror/app", "1").await,
        404,
        "the tag this object wrote is deleted"
    );
    for blob in source.blobs.iter() {
        assert_eq!(
            fixtures::blob_status(reg.addr(), "mirror/app", blob).await,
            200,
            "layer {blob} kept without a record"
        );
    }
}

/// Two objects in two namespaces name one tag: the later one gets `DestinationConflict`
/// naming the earlier one and writes nothing; deleting it deletes nothing. When the
/// earlier one is deleted it leaves the tag for the waiting one, which then copies its
/// own image and owns the tag (its deletion removes it).
#[tokio::test]
pub(crate) async fn the_later_of_two_objects_on_one_tag_waits() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    api.create_namespace("team-a").await;
    api.create_namespace("team-b").await;
    let image_a = fixtures::push_index(src.addr(), "a", "1", 41).await;
    let image_b = fixtures::push_index(src.addr(), "b", "1", 42).await;
    let args = controller_args(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProc::start(api.kubeconfig(), api.dir(), "conflict", &args);
    let team_a: Api<ImageSync> = Api::namespaced(client.clone(), "team-a");
    let team_b: Api<ImageSync> = Api::namespaced(client.clone(), "team-b");
    let tag = dst.reference("shared/app:1");

    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "first",
        &src.reference("a:1"),
        &tag,
        "",
    ));
    wait_for(
        &team_a,
        "first",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &image_a.digest),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creationTimestamp
    dst.clear_access_log();
    let later = image_sync_yaml("team-b", "later", &src.reference("b:1"), &tag, "");
    api.apply_yaml(&later);
    let obj = wait_for(
        &team_b,
        "later",
        Duration::from_secs(30),
        "DestinationConflict",
        Some(&controller),
        |o| reason(o).as_deref() == Some("DestinationConflict"),
    )
    .await;
    let cond = obj.ready_condition().unwrap();
    assert_eq!(cond.status, "False");
    assert!(cond.message.contains("team-a/first"), "{}", cond.message);
    let record = obj
        .status
        .as_ref()
        .and_then(|s| s.conflict.clone())
        .unwrap();
    assert_eq!(
        (record.namespace.as_str(), record.name.as_str()),
        ("team-a", "first")
    );
    assert_eq!(
        record.written_digest.as_deref(),
        Some(image_a.digest.as_str())
    );
    // Several re-checks (resyncInterval 2s): the later object never writes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = dst.access_log_settled().await;
    assert!(writes_to(&log, "shared/app").is_empty(), "{log:?}");
    fixtures::assert_identical(dst.addr(), "shared/app", "1", &image_a).await;
    let a = team_a.get("first").await.unwrap();
    assert!(ready_with(&a, &image_a.digest), "{:?}", a.status);

    // Deleting the waiting object deletes nothing.
    api.kubectl(&["delete", "isync", "-n", "team-b", "later", "--wait=false"]);
    wait_gone(&team_b, "later", Duration::from_secs(30), &controller).await;
    let log = dst.access_log_settled().await;
    assert!(writes_to(&log, "shared/app").is_empty(), "{log:?}");
    fixtures::assert_identical(dst.addr(), "shared/app", "1", &image_a).await;

    // Waiting again; then the holder goes: the tag is left for the waiting object, which
    // copies its own image and owns it.
    api.apply_yaml(&later);
    wait_for(
        &team_b,
        "later",
        Duration::from_secs(30),
        "DestinationConflict",
        Some(&controller),
        |o| reason(o).as_deref() == Some("DestinationConflict"),
    )
    .await;
    api.kubectl(&["delete", "isync", "-n", "team-a", "first", "--wait=false"]);
    wait_gone(&team_a, "first", Duration::from_secs(30), &controller).await;
    let note = wait_event(&client, "team-a", "first", "LeftInPlace").await;
    assert!(note.contains("team-b/later"), "{note}");
    let obj = wait_for(
        &team_b,
        "later",
        Duration::from_secs(30),
        "Ready after the holder left",
        Some(&controller),
        |o| ready_with(o, &image_b.digest),
    )
    .await;
    assert_eq!(ownership_of(&obj), Some(Ownership::Written));
    assert!(obj.status.as_ref().unwrap().conflict.is_none());
    fixtures::assert_identical(dst.addr(), "shared/app", "1", &image_b).await;
    api.kubectl(&["delete", "isync", "-n", "team-b", "later", "--wait=false"]);
    wait_gone(&team_b, "later", Duration::from_secs(30), &controller).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "shared/app", "1").await,
        404
    );
}

/// The handover keeps ownership when the waiting object wants the same image: it finds
/// the tag holding the digest the holder wrote, owns it (not adopted), and its deletion
/// removes it.
#[tokio::test]
pub(crate) async fn a_handed_over_tag_is_owned_by_the_next_object() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let image = fixtures::push_index(src.addr(), "a", "1", 51).await;
    let args = controller_args(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProc::start(api.kubeconfig(), api.dir(), "handover", &args);
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    let tag = dst.reference("app:1");
    let source = src.reference("a:1");
    api.apply_yaml(&image_sync_yaml("default", "old", &source, &tag, ""));
    wait_for(
        &isyncs,
        "old",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.apply_yaml(&image_sync_yaml("default", "new", &source, &tag, ""));
    wait_for(
        &isyncs,
        "new",
        Duration::from_secs(30),
        "DestinationConflict",
        Some(&controller),
        |o| reason(o).as_deref() == Some("DestinationConflict"),
    )
    .await;
    api.kubectl(&["delete", "isync", "-n", "default", "old", "--wait=false"]);
    wait_gone(&isyncs, "old", Duration::from_secs(30), &controller).await;
    let obj = wait_for(
        &isyncs,
        "new",
        Duration::from_secs(30),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert_eq!(ownership_of(&obj), Some(Ownership::Written));
    fixtures::assert_identical(dst.addr(), "app", "1", &image).await;
    api.kubectl(&["delete", "isync", "-n", "default", "new", "--wait=false"]);
    wait_gone(&isyncs, "new", Duration::from_secs(30), &controller).await;
    assert_eq!(fixtures::manifest_status(dst.addr(), "app", "1").await, 404);
}
