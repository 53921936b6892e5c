//! Direct mode, issue 20 (what a new user hits first), with real Terraform 1.11.4 against
//! real distribution registries:
//! - a moved source tag copies the new image and moves the tag in place; the earlier
//!   image still pulls by its `id` until destroy, with `create_before_destroy` too and
//!   without a warning;
//! - `id` is known at plan time;
//! - with the source registry stopped, plan and destroy warn and go on (destroy touches
//!   only the destination), and the diagnostic carries the root cause, not the kind.

use imagesync_e2e::fixtures;
use imagesync_e2e::registry::Registry;

use super::{actions, combined, json_in, spec, tag_digest, Tf};

/// The planned `after` value of `imagesync.NAME`'s `id` (`None`: unknown at plan time).
async fn planned_id(tf: &Tf, name: &str) -> Option<String> {
    tf.ok(&["plan", "-input=false", "-no-color", "-out=tfplan"])
        .await;
    let shown = json_in(&tf.ok(&["show", "-json", "tfplan"]).await.stdout);
    let change = shown["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rc| rc["address"] == format!("imagesync.{name}"))
        .unwrap_or_else(|| panic!("no change for {name}: {shown}"))["change"]
        .clone();
    if change["after_unknown"]["id"] == true {
        return None;
    }
    change["after"]["id"].as_str().map(str::to_string)
}

pub(crate) async fn friction(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let tf = Tf::new(version);
    let src1 = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(81)).await;
    let resources = format!(
        "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  lifecycle {{\n    create_before_destroy = true\n  }}\n}}\noutput \"id\" {{\n  value = imagesync.app.id\n}}\n",
        a.reference("src/app:v1"),
        b.reference("dst/app:v1")
    );
    tf.config(&[&a, &b], &resources);
    tf.init().await;
    let id1 = format!("{}/dst/app@{}", b.addr(), src1.digest);
    assert_eq!(
        planned_id(&tf, "app").await.as_deref(),
        Some(id1.as_str()),
        "id unknown at plan time"
    );
    tf.apply(&[]).await;
    assert_eq!(tf.output("id").await, id1);

    // The source tag moves: an in-place update whose new id is known in the plan.
    let src2 = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(82)).await;
    assert_ne!(src2.digest, src1.digest);
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    let id2 = format!("{}/dst/app@{}", b.addr(), src2.digest);
    assert_eq!(planned_id(&tf, "app").await.as_deref(), Some(id2.as_str()));
    let out = combined(&tf.apply(&[]).await);
    // The only warning is Terraform's own about `dev_overrides`.
    assert_eq!(out.matches("Warning:").count(), 1, "{out}");
    assert!(!out.contains("not ours"), "{out}");
    assert_eq!(tf.output("id").await, id2);
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src2.digest.as_str())
    );
    // Whatever is pinned to the old id still pulls: the manifest and every blob.
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", &src1.digest).await,
        200
    );
    for child in &src1.children {
        assert_eq!(
            fixtures::manifest_status(b.addr(), "dst/app", child).await,
            200
        );
    }
    for blob in &src1.blobs {
        assert_eq!(
            fixtures::blob_status(b.addr(), "dst/app", blob).await,
            200,
            "{blob}"
        );
    }

    // The source registry goes away: plan warns with the root cause and keeps the state.
    drop(a);
    let out = tf.ok(&["plan", "-input=false", "-no-color"]).await;
    let all = combined(&out);
    assert!(all.contains("Cannot check the source image"), "{all}");
    assert!(all.contains("Connection refused"), "{all}");
    assert!(!all.contains(": transient"), "{all}");
    assert!(all.contains("No changes"), "{all}");
    assert_eq!(
        tf.state_values("imagesync.app").await["source_digest"],
        src2.digest.as_str()
    );
    // Destroy (and the refresh before it) goes on: the tag and the earlier image go.
    let out = tf
        .ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    let all = combined(&out);
    assert!(all.contains("Destroy complete"), "{all}");
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", &src1.digest).await,
        404,
        "the earlier image was left behind"
    );

    // `terraform validate` (no provider configured) catches malformed literals.
    tf.config(
        &[&b],
        &format!(
            "resource \"imagesync\" \"bad\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  name        = \"Not_A_Name\"\n}}\n",
            b.reference("src/App:v1"),
            b.reference("dst/app:v1")
        ),
    );
    let out = tf.run(&["validate", "-no-color"]).await;
    let all = combined(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("Invalid image reference in \"source\""),
        "{all}"
    );
    assert!(all.contains("Invalid \"name\""), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_moved_tag_stopped_source_and_plan_time_id() {
    friction("1.11.4").await;
}
