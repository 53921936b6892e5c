//! Direct mode, issue 12: destroy removes only what the resource wrote. A destination
//! that already held the image is adopted and left in place; only blobs this resource
//! uploaded are deletion candidates; hostile `timeouts` are a plan error. Real Terraform
//! (1.11.4, 1.0.3, and 0.13.4 on protocol 5) against real distribution registries.

use base64::Engine as _;
use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::registry::Registry;

use super::{combined, resource, spec, tag_digest, Tf};

/// The private state Terraform stored for `imagesync.NAME` (`state pull`, base64 JSON).
pub(crate) async fn private_of(tf: &Tf, name: &str) -> serde_json::Value {
    let out = tf.ok(&["state", "pull"]).await;
    let json = super::json_in(&out.stdout);
    let instance = json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "imagesync" && r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in state: {json}"))["instances"][0]
        .clone();
    let Some(b64) = instance["private"].as_str() else {
        return serde_json::Value::Null;
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

async fn destroy(tf: &Tf) -> String {
    combined(
        &tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
            .await,
    )
}

/// The attack: `source` = `destination` = someone else's existing tag, and a copy onto a
/// tag that already holds the same image. Apply, move one destination, destroy: both of
/// their tags survive, with a warning; the tag the resource did write goes.
pub(crate) async fn adopted_destination(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let tf = Tf::new(version);
    let theirs = fixtures::push_index_with(b.addr(), "platform/api", "v3", spec(61)).await;
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(62)).await;
    // Another team already mirrored the same image to the destination tag.
    let mirrored = fixtures::push_index_with(b.addr(), "dst/app", "v1", spec(62)).await;
    assert_eq!(mirrored.digest, src.digest);
    let resources = |mirror_tag: &str| {
        format!(
            "{}{}",
            resource(
                "theirs",
                &b.reference("platform/api:v3"),
                &b.reference("platform/api:v3")
            ),
            resource(
                "mirror",
                &a.reference("src/app:v1"),
                &b.reference(&format!("dst/app:{mirror_tag}"))
            )
        )
    };
    tf.config(&[&a, &b], &resources("v1"));
    tf.init().await;
    let out = combined(&tf.apply(&[]).await);
    assert!(out.contains("Destination was adopted"), "{out}");
    for name in ["theirs", "mirror"] {
        assert_eq!(
            private_of(&tf, name).await["ownership"],
            "adopted",
            "{name}"
        );
    }
    // A refresh and a no-op plan keep the record (ReadResource / PlanResourceChange).
    tf.ok(&["plan", "-input=false", "-no-color"]).await;
    assert_eq!(private_of(&tf, "theirs").await["ownership"], "adopted");

    // Moving the destination replaces the resource: the adopted old tag stays.
    tf.config(&[&a, &b], &resources("v2"));
    let out = combined(&tf.apply(&[]).await);
    assert!(out.contains("left in place"), "{out}");
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
    assert_eq!(
        tag_digest(&b, "dst/app", "v2").await.as_deref(),
        Some(src.digest.as_str())
    );
    assert_eq!(private_of(&tf, "mirror").await["ownership"], "written");

    let out = destroy(&tf).await;
    assert!(out.contains("left in place"), "{out}");
    assert_eq!(
        tag_digest(&b, "platform/api", "v3").await.as_deref(),
        Some(theirs.digest.as_str()),
        "destroy deleted someone else's tag"
    );
    for blob in &theirs.blobs {
        assert_eq!(
            fixtures::blob_status(b.addr(), "platform/api", blob).await,
            200
        );
    }
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str()),
        "destroy deleted the other team's mirror"
    );
    // The tag this resource wrote is deleted as before.
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v2").await,
        404
    );
}

/// Hostile `timeouts` values are a clear plan error on the attribute; the provider does
/// not crash and nothing is written. (Before, the first was replaced by the default
/// silently and the second overflowed: a panic in a debug build.)
pub(crate) async fn hostile_timeouts(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    fixtures::push_index_with(a.addr(), "src/app", "v1", spec(63)).await;
    let tf = Tf::new(version);
    let config = |create: &str| {
        tf.config(
            &[&a, &b],
            &format!(
                "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  timeouts {{\n    create = \"{create}\"\n  }}\n}}\n",
                a.reference("src/app:v1"),
                b.reference("dst/app:v1")
            ),
        )
    };
    config("1m");
    tf.init().await;
    for hostile in ["5124095576030432h", "99999999999999999999h"] {
        config(hostile);
        let out = tf
            .run(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .await;
        let all = combined(&out);
        assert!(!out.status.success(), "{hostile}: {all}");
        assert!(all.contains("Invalid timeouts.create"), "{all}");
        assert!(all.contains("between 1s and 24h"), "{all}");
        assert!(!all.contains("panicked"), "{all}");
        assert_eq!(tag_digest(&b, "dst/app", "v1").await, None);
    }
}

/// A spec sharing no layer with [`spec`]'s images.
fn unshared(seed: u64) -> FixtureSpec {
    FixtureSpec {
        shared_layers: 0,
        ..spec(seed)
    }
}

/// Issue 12 item 4: the destination repository holds an untagged earlier image (pushed
/// as `:old`, then `:old` overwritten). The resource copies an image sharing its base
/// layer, which is therefore not uploaded. Destroy deletes only the blobs this resource
/// uploaded: the earlier image still pulls by digest, the resource's own layers go.
pub(crate) async fn only_uploaded_layers(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let tf = Tf::new(version);
    let earlier = fixtures::push_index_with(b.addr(), "dst/app", "old", spec(71)).await;
    fixtures::push_index_with(b.addr(), "dst/app", "old", unshared(72)).await;
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(73)).await;
    let base: Vec<&String> = src
        .layers
        .iter()
        .filter(|l| earlier.layers.contains(l))
        .collect();
    let own: Vec<&String> = src
        .blobs
        .iter()
        .filter(|l| !earlier.blobs.contains(l))
        .collect();
    assert!(!base.is_empty() && !own.is_empty());
    tf.config(
        &[&a, &b],
        &resource(
            "app",
            &a.reference("src/app:v1"),
            &b.reference("dst/app:v1"),
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let private = private_of(&tf, "app").await;
    assert_eq!(private["ownership"], "written");
    let uploaded: Vec<&str> = private["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    for layer in &own {
        assert!(
            uploaded.contains(&layer.as_str()),
            "{layer} not recorded: {private}"
        );
    }
    for layer in &base {
        assert!(
            !uploaded.contains(&layer.as_str()),
            "{layer} was already there: {private}"
        );
    }

    destroy(&tf).await;
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", &earlier.digest).await,
        200
    );
    for blob in &earlier.blobs {
        assert_eq!(
            fixtures::blob_status(b.addr(), "dst/app", blob).await,
            200,
            "{blob} of the untagged earlier image was deleted"
        );
    }
    for blob in &own {
        assert_eq!(
            fixtures::blob_status(b.addr(), "dst/app", blob).await,
            404,
            "{blob} this resource uploaded was kept"
        );
    }
}

/// Upgrade: a resource created by an earlier provider version has private state
/// `{"written": ...}` only (what those versions wrote). Its destroy still deletes its tag
/// but keeps every layer, and says so.
pub(crate) async fn upgraded_without_record(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let tf = Tf::new(version);
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", unshared(74)).await;
    tf.config(
        &[&a, &b],
        &resource(
            "app",
            &a.reference("src/app:v1"),
            &b.reference("dst/app:v1"),
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let old = serde_json::json!({ "written": src.digest }).to_string();
    set_private(&tf, "app", old.as_bytes()).await;
    assert_eq!(
        private_of(&tf, "app").await["ownership"],
        serde_json::Value::Null
    );

    let out = destroy(&tf).await;
    assert!(out.contains("Layers of"), "{out}");
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
    for blob in &src.layers {
        assert_eq!(
            fixtures::blob_status(b.addr(), "dst/app", blob).await,
            200,
            "{blob}"
        );
    }
}

/// Replaces the private state of `imagesync.NAME` (`state pull`, edit, `state push`).
async fn set_private(tf: &Tf, name: &str, private: &[u8]) {
    let out = tf.ok(&["state", "pull"]).await;
    let mut state = super::json_in(&out.stdout);
    state["serial"] = serde_json::json!(state["serial"].as_u64().unwrap() + 1);
    let resources = state["resources"].as_array_mut().unwrap();
    let r = resources
        .iter_mut()
        .find(|r| r["type"] == "imagesync" && r["name"] == name)
        .unwrap();
    r["instances"][0]["private"] =
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(private));
    let path = tf.work().join("edited.tfstate");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    tf.ok(&["state", "push", "edited.tfstate"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_destroy_deletes_only_uploaded_layers() {
    only_uploaded_layers("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_destroy_deletes_only_uploaded_layers() {
    only_uploaded_layers("0.13.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_resource_without_blob_record_keeps_layers() {
    upgraded_without_record("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_resource_without_blob_record_keeps_layers() {
    upgraded_without_record("0.13.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_adopted_destination_survives_destroy() {
    adopted_destination("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_0_3_adopted_destination_survives_destroy() {
    adopted_destination("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_adopted_destination_survives_destroy() {
    adopted_destination("0.13.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_hostile_timeouts_are_a_plan_error() {
    hostile_timeouts("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_hostile_timeouts_are_a_plan_error() {
    hostile_timeouts("0.13.4").await;
}
