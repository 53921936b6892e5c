//! Ownership of destination tags (issue 12, item 1): an object deletes only what its own
//! copy wrote, and of two objects naming one tag only the earlier one writes. Real
//! kube-apiserver, real `docker-registry`, the controller binary.
//!
//! Over 600 lines because it is one module per area (the ownership cases): each test is one
//! scenario against real components, and its set-up is spelled out so a failure reads
//! alone.

use std::time::Duration;

use imagesync_api::{ImageSync, Ownership};
use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::registry::{AccessEntry, Registry};
use kube::api::{Patch, PatchParams};
use kube::Api;

use crate::controller::{
    cluster, image_sync_yaml, ready_with, reason, start_controller, wait_event, wait_for, wait_gone,
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
    let controller = start_controller(api.kubeconfig(), api.dir(), "own", &args);

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

    // Adopted, then moved: the adopted tag stays (Normal Event), the new one is written
    // and owned, and deleting the object removes only that one.
    let moved = reg.reference("platform/api:moved");
    api.apply_yaml(&image_sync_yaml("default", "mover", &victim, &victim, ""));
    wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(60),
        "Ready (adopted)",
        Some(&controller),
        |o| ready_with(o, &platform.digest) && ownership_of(o) == Some(Ownership::Adopted),
    )
    .await;
    api.apply_yaml(&image_sync_yaml("default", "mover", &victim, &moved, ""));
    let obj = wait_for(
        &isyncs,
        "mover",
        Duration::from_secs(60),
        "Ready at the new destination",
        Some(&controller),
        |o| {
            ready_with(o, &platform.digest)
                && o.status
                    .as_ref()
                    .and_then(|s| s.synced_destination.as_deref())
                    == Some(moved.as_str())
        },
    )
    .await;
    assert_eq!(ownership_of(&obj), Some(Ownership::Written));
    let note = wait_event(&client, "default", "mover", "DestinationChanged").await;
    assert!(note.contains("left in place"), "{note}");
    fixtures::assert_identical(reg.addr(), "platform/api", "v3", &platform).await;
    api.kubectl(&["delete", "isync", "-n", "default", "mover", "--wait=false"]);
    wait_gone(&isyncs, "mover", Duration::from_secs(60), &controller).await;
    assert_eq!(
        fixtures::manifest_status(reg.addr(), "platform/api", "moved").await,
        404,
        "the tag the object wrote is deleted"
    );
    fixtures::assert_identical(reg.addr(), "platform/api", "v3", &platform).await;

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
    let controller = start_controller(api.kubeconfig(), api.dir(), "conflict", &args);
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
    let controller = start_controller(api.kubeconfig(), api.dir(), "handover", &args);
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
    // The holder's record of uploaded blobs came with the tag.
    let mut inherited = obj
        .status
        .as_ref()
        .and_then(|s| s.uploaded_blobs.clone())
        .unwrap();
    inherited.sort();
    let mut wrote: Vec<String> = image.blobs.iter().chain(&image.children).cloned().collect();
    wrote.sort();
    assert_eq!(inherited, wrote);
    fixtures::assert_identical(dst.addr(), "app", "1", &image).await;
    api.kubectl(&["delete", "isync", "-n", "default", "new", "--wait=false"]);
    wait_gone(&isyncs, "new", Duration::from_secs(30), &controller).await;
    assert_eq!(fixtures::manifest_status(dst.addr(), "app", "1").await, 404);
    for blob in &image.blobs {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "app", blob).await,
            404,
            "inherited blob {blob} should be deleted with the tag"
        );
    }
}

// === tenants do not share blob locations (issue 12, item 5) ===

/// A source registry run by an attacker: it serves one image (`evil:1`) whose manifest
/// names a layer it does not have, and answers HEAD for that layer with 200 (the only
/// guard before a cross-repository mount). GETs of the layer get 404.
struct LyingSource {
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LyingSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Lies {
    manifest: Vec<u8>,
    config: Vec<u8>,
    stolen: String,
    stolen_size: u64,
}

fn answer(
    lies: &Lies,
    method: &hyper::Method,
    path: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let manifest_digest = fixtures::sha256(&lies.manifest);
    let config_digest = fixtures::sha256(&lies.config);
    let head = method == hyper::Method::HEAD;
    let ok = |ct: &str, digest: &str, body: &[u8], len: u64| {
        let headers = vec![
            ("content-type".to_string(), ct.to_string()),
            ("docker-content-digest".to_string(), digest.to_string()),
            ("content-length".to_string(), len.to_string()),
        ];
        (200, headers, if head { Vec::new() } else { body.to_vec() })
    };
    match path {
        "/v2/" | "/v2" => (200, Vec::new(), Vec::new()),
        p if p == "/v2/evil/manifests/1"
            || p == format!("/v2/evil/manifests/{manifest_digest}") =>
        {
            ok(
                "application/vnd.oci.image.manifest.v1+json",
                &manifest_digest,
                &lies.manifest,
                lies.manifest.len() as u64,
            )
        }
        p if p == format!("/v2/evil/blobs/{config_digest}") => ok(
            "application/octet-stream",
            &config_digest,
            &lies.config,
            lies.config.len() as u64,
        ),
        // The lie: "I have that layer" to HEAD, nothing to GET.
        p if p == format!("/v2/evil/blobs/{}", lies.stolen) && head => {
            let mut r = ok(
                "application/octet-stream",
                &lies.stolen,
                &[],
                lies.stolen_size,
            );
            r.2.clear();
            r
        }
        _ => (
            404,
            Vec::new(),
            br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#.to_vec(),
        ),
    }
}

impl LyingSource {
    async fn start(stolen: &str, stolen_size: u64) -> LyingSource {
        use http_body_util::Full;
        use std::convert::Infallible;
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": fixtures::sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": stolen, "size": stolen_size}],
        }))
        .unwrap();
        let lies = std::sync::Arc::new(Lies {
            manifest,
            config,
            stolen: stolen.to_string(),
            stolen_size,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let lies = lies.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (code, headers, body) = answer(&lies, req.method(), req.uri().path());
                        let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        for (k, v) in headers {
                            resp.headers_mut().insert(
                                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                v.parse().unwrap(),
                            );
                        }
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        LyingSource { addr, task }
    }
}

/// The size of `layer` in the manifest `repo:tag` of `addr`.
async fn layer_size(addr: &str, repo: &str, tag: &str, layer: &str) -> u64 {
    let (_, bytes) = fixtures::get_manifest(addr, repo, tag).await.unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == layer)
        .and_then(|l| l["size"].as_u64())
        .unwrap()
}

/// Team A mirrors a private image into the shared destination registry; the
/// controller learns where its layer lives. Team B's source (a registry it runs) names
/// that layer's digest and claims to hold it. With one blob-location table for every
/// namespace the controller mounted team A's layer into team B's repository with its own
/// credentials; with one table per namespace it tries to read the layer from team B's
/// source, which cannot serve it, and team B's repository never gets it.
#[tokio::test]
pub(crate) async fn a_tenant_cannot_mount_another_tenants_layer_by_naming_its_digest() {
    let (api, private, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    api.create_namespace("team-a").await;
    api.create_namespace("team-b").await;
    let secret =
        fixtures::push_image(private.addr(), "secret/app", "1", FixtureSpec::seeded(61)).await;
    let stolen = secret.layers[0].clone();
    let size = layer_size(private.addr(), "secret/app", "1", &stolen).await;
    let liar = LyingSource::start(&stolen, size).await;
    let args = controller_args(&[&private, &dst]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--insecure-registry", liar.addr.as_str()]);
    let controller = start_controller(api.kubeconfig(), api.dir(), "tenants", &args);
    let team_a: Api<ImageSync> = Api::namespaced(client.clone(), "team-a");
    let team_b: Api<ImageSync> = Api::namespaced(client.clone(), "team-b");

    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "private",
        &private.reference("secret/app:1"),
        &dst.reference("team-a/app:1"),
        "",
    ));
    wait_for(
        &team_a,
        "private",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &secret.digest),
    )
    .await;
    assert_eq!(
        fixtures::blob_status(dst.addr(), "team-a/app", &stolen).await,
        200
    );

    api.apply_yaml(&image_sync_yaml(
        "team-b",
        "thief",
        &format!("{}/evil:1", liar.addr),
        &dst.reference("team-b/app:1"),
        "",
    ));
    let obj = wait_for(
        &team_b,
        "thief",
        Duration::from_secs(60),
        "a failed copy",
        Some(&controller),
        |o| {
            o.ready_condition()
                .is_some_and(|c| c.status == "False" && c.reason != "Syncing")
                || o.is_ready()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a retry or two
    assert_eq!(
        fixtures::blob_status(dst.addr(), "team-b/app", &stolen).await,
        404,
        "team A's layer was mounted into team B's repository"
    );
    assert!(!obj.is_ready(), "{:?}", obj.status);
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "team-b/app", "1").await,
        404
    );
}

/// Issue 12, item 4: the destination repository holds an earlier image no tag names
/// (pulled by digest) that shares its base layer with the new image. The copy skips the
/// base (already there) and records only what it uploaded; deleting the object removes
/// the tag and those blobs, and the earlier image stays complete.
#[tokio::test]
pub(crate) async fn deletion_removes_only_the_blobs_this_object_uploaded() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let shared = |seed| FixtureSpec {
        shared_layers: 1,
        ..FixtureSpec::seeded(seed)
    };
    let earlier = dst
        .target()
        .push_image_at("mirror/app", None, &shared(71))
        .await
        .unwrap();
    let image = fixtures::push_image(src.addr(), "app", "1", shared(72)).await;
    let base = image.layers[0].clone();
    assert_eq!(
        earlier.layers[0], base,
        "the fixtures share their base layer"
    );
    let args = controller_args(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "blobs", &args);
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    api.apply_yaml(&image_sync_yaml(
        "default",
        "mirror",
        &src.reference("app:1"),
        &dst.reference("mirror/app:1"),
        "",
    ));
    let obj = wait_for(
        &isyncs,
        "mirror",
        Duration::from_secs(60),
        "Ready",
        Some(&controller),
        |o| ready_with(o, &image.digest),
    )
    .await;
    let recorded = obj.status.as_ref().and_then(|s| s.uploaded_blobs.clone());
    let mut expected: Vec<String> = image
        .blobs
        .iter()
        .filter(|b| **b != base)
        .cloned()
        .collect();
    expected.sort();
    let mut got = recorded.clone().unwrap_or_default();
    got.sort();

    api.kubectl(&["delete", "isync", "-n", "default", "mirror", "--wait=false"]);
    wait_gone(&isyncs, "mirror", Duration::from_secs(60), &controller).await;
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", "1").await,
        404
    );
    for blob in &expected {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "mirror/app", blob).await,
            404,
            "uploaded blob {blob} should be deleted"
        );
    }
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", &earlier.digest).await,
        200
    );
    for blob in &earlier.blobs {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "mirror/app", blob).await,
            200,
            "blob {blob} of the untagged earlier image was deleted"
        );
    }
    assert_eq!(got, expected, "uploaded blobs recorded: all but the base");
}
