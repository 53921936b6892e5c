//! Direct mode, issue 12: destroy removes only what the resource wrote. A destination
//! that already held the image is adopted and left in place; only blobs this resource
//! uploaded are deletion candidates; hostile `timeouts` are a plan error. Real Terraform
//! (1.11.4, 1.0.3, and 0.13.4 on protocol 5) against real distribution registries.

use base64::Engine as _;
use imagesync_e2e::fixtures;
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
