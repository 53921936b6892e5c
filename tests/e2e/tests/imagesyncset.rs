//! `ImageSyncSet` (issue 17): one child `ImageSync` per matching tag, on the real
//! kube-apiserver v1.20.2 with real `docker-registry` instances and the controller
//! binary. Covers tags gained and lost under both deletion policies, the tenant policy
//! on the set and on each child, filters rejected by the CRD schema or reported as
//! `InvalidSpec`, forged children left alone, a failed tag list, the chart's RBAC, and the
//! registry requests a check costs.
//!
//! Over 600 lines because it is one module per area (the tag-set controller): each test is
//! one scenario against real components, with its set-up spelled out so a failure reads
//! alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imagesync_api::set::{SET_UID_LABEL, TAG_ANNOTATION};
use imagesync_api::{DeletionPolicy, ImageSync, ImageSyncSet};
use imagesync_controller::set::naming::child_name;
use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::kube::ApiServer;
use imagesync_e2e::registry::{AccessEntry, Registry};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::controller::{image_sync_yaml, start_controller, ControllerProc};

pub(crate) fn set_crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/imagesyncsets.imagesync.dev.yaml")
}

/// A kube-apiserver with both CRDs.
async fn cluster() -> ApiServer {
    let api = crate::controller::cluster().await;
    api.apply_crd(&set_crd_path()).await;
    api
}

fn insecure(regs: &[&Registry]) -> Vec<String> {
    regs.iter()
        .flat_map(|r| ["--insecure-registry".to_string(), r.addr().to_string()])
        .collect()
}

/// A set re-listing every 2s, its children re-checking every 2s; `extra` lines go under
/// `spec:`.
fn set_yaml(name: &str, src: &str, dst: &str, extra: &str) -> String {
    let mut y = format!(
        "apiVersion: imagesync.dev/v1alpha1\nkind: ImageSyncSet\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  source: {src:?}\n  destination: {dst:?}\n  resyncInterval: 2s\n"
    );
    let mut template = false;
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        template |= line.starts_with("template:");
        y.push_str("  ");
        y.push_str(line);
        y.push('\n');
    }
    if !template {
        y.push_str("  template:\n    resyncInterval: 2s\n");
    }
    y
}

/// Polls set `name` until `pred` holds; panics with its last status and the log.
async fn wait_set(
    api: &Api<ImageSyncSet>,
    name: &str,
    what: &str,
    controller: &ControllerProc,
    pred: impl Fn(&ImageSyncSet) -> bool,
) -> ImageSyncSet {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    loop {
        controller.assert_running();
        if let Ok(Some(set)) = api.get_opt(name).await {
            if pred(&set) {
                return set;
            }
            last = Some(set);
        }
        if Instant::now() > deadline {
            let log = controller.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for set {name}: {what}\nlast: {:#?}\ncontroller log (newest first):\n{}",
                last.and_then(|s| s.status),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn reason(set: &ImageSyncSet) -> Option<String> {
    set.ready_condition().map(|c| c.reason.clone())
}

fn message(set: &ImageSyncSet) -> String {
    set.ready_condition()
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// `(matched, ready, failed)` of the status.
fn counts(set: &ImageSyncSet) -> (i64, i64, i64) {
    let s = set.status.clone().unwrap_or_default();
    (
        s.matched.unwrap_or(-1),
        s.ready.unwrap_or(-1),
        s.failed.unwrap_or(-1),
    )
}

fn synced_with(set: &ImageSyncSet, matched: i64) -> bool {
    reason(set).as_deref() == Some("Synced")
        && counts(set) == (matched, matched, 0)
        && set.status.as_ref().and_then(|s| s.observed_generation) == set.metadata.generation
}

/// The children carrying the set's uid label, by tag (annotation).
async fn children(isyncs: &Api<ImageSync>, set: &ImageSyncSet) -> Vec<(String, ImageSync)> {
    let selector = format!("{SET_UID_LABEL}={}", set.uid().unwrap());
    let mut out: Vec<(String, ImageSync)> = isyncs
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.annotations()
                    .get(TAG_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
                c,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn tags_of(children: &[(String, ImageSync)]) -> Vec<&str> {
    children.iter().map(|(t, _)| t.as_str()).collect()
}

async fn push_tags(reg: &Registry, repo: &str, tags: &[&str], seed: u64) {
    for (i, tag) in tags.iter().enumerate() {
        let spec = FixtureSpec {
            layers: 1,
            layer_size: 1024,
            ..FixtureSpec::seeded(seed + i as u64)
        };
        fixtures::push_image(reg.addr(), repo, tag, spec).await;
    }
}

/// A set gains a tag pushed at the source and loses tags its new filter drops. `Orphan`
/// (the default) deletes the child and leaves the mirrored image; `Delete` deletes the
/// child and its destination tag. Children are owned through `ownerReferences`
/// (controller, blockOwnerDeletion), carry the set's policy, and `kubectl get isyncset`
/// shows the counts.
#[tokio::test]
pub(crate) async fn a_set_gains_and_loses_tags_under_both_deletion_policies() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    push_tags(
        &src,
        "src/app",
        &["1.0.0", "1.1.0", "2.0.0", "latest", "1.1.0-rc.1"],
        100,
    )
    .await;
    let args = insecure(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "sets", &args);

    let source = src.reference("src/app");
    let filter = "semver: \">=1.0, <2\"";
    api.apply_yaml(&set_yaml(
        "keep",
        &source,
        &dst.reference("mirror/keep"),
        filter,
    ));
    api.apply_yaml(&set_yaml(
        "drop",
        &source,
        &dst.reference("mirror/drop"),
        &format!("{filter}\ndeletionPolicy: Delete"),
    ));
    let keep = wait_set(&sets, "keep", "2 children Ready", &controller, |s| {
        synced_with(s, 2)
    })
    .await;
    let drop = wait_set(&sets, "drop", "2 children Ready", &controller, |s| {
        synced_with(s, 2)
    })
    .await;
    assert_eq!(
        keep.spec.deletion_policy,
        DeletionPolicy::Orphan,
        "Orphan is the default"
    );
    for (set, repo) in [(&keep, "mirror/keep"), (&drop, "mirror/drop")] {
        let kids = children(&isyncs, set).await;
        assert_eq!(tags_of(&kids), ["1.0.0", "1.1.0"]);
        for (tag, child) in &kids {
            assert_eq!(child.name_any(), child_name(&set.name_any(), tag));
            let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (
                    owner.kind.as_str(),
                    owner.uid.as_str(),
                    owner.controller,
                    owner.block_owner_deletion
                ),
                (
                    "ImageSyncSet",
                    set.uid().unwrap().as_str(),
                    Some(true),
                    Some(true)
                )
            );
            assert_eq!(child.spec.source, format!("{source}:{tag}"));
            assert_eq!(child.spec.deletion_policy, set.spec.deletion_policy);
            assert_eq!(fixtures::manifest_status(dst.addr(), repo, tag).await, 200);
        }
    }
    let table = api.kubectl(&["get", "isyncset", "-n", "default"]);
    let header = table.lines().next().unwrap_or_default();
    for column in ["MATCHED", "READY", "FAILED", "STATUS"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("keep ") && l.contains(" Synced ")),
        "{table}"
    );

    // A new matching tag at the source: a child at the next check.
    push_tags(&src, "src/app", &["1.2.0"], 200).await;
    for name in ["keep", "drop"] {
        wait_set(&sets, name, "3 children Ready", &controller, |s| {
            synced_with(s, 3)
        })
        .await;
    }
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/keep", "1.2.0").await,
        200
    );

    // The filter drops 1.0.0: its child goes; Orphan keeps the image, Delete removes it.
    let narrower = "semver: \">=1.1, <2\"";
    api.apply_yaml(&set_yaml(
        "keep",
        &source,
        &dst.reference("mirror/keep"),
        narrower,
    ));
    api.apply_yaml(&set_yaml(
        "drop",
        &source,
        &dst.reference("mirror/drop"),
        &format!("{narrower}\ndeletionPolicy: Delete"),
    ));
    for name in ["keep", "drop"] {
        let set = wait_set(&sets, name, "2 children Ready", &controller, |s| {
            synced_with(s, 2)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tags_of(&children(&isyncs, &set).await) != ["1.1.0", "1.2.0"] {
            assert!(
                Instant::now() < deadline,
                "{name}: the 1.0.0 child was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/keep", "1.0.0").await,
        200,
        "Orphan: the mirrored image of a tag that stopped matching stays"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while fixtures::manifest_status(dst.addr(), "mirror/drop", "1.0.0").await != 404 {
        assert!(
            Instant::now() < deadline,
            "Delete: the destination tag was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for tag in ["1.1.0", "1.2.0"] {
        assert_eq!(
            fixtures::manifest_status(dst.addr(), "mirror/drop", tag).await,
            200
        );
    }
    let note = crate::controller::wait_event(&client, "default", "keep", "ChildDeleted").await;
    assert!(
        note.contains("1.0.0") && note.contains("stays in the registry"),
        "{note}"
    );
    let note = crate::controller::wait_event(&client, "default", "drop", "ChildDeleted").await;
    assert!(note.contains("destination tag is deleted"), "{note}");
}

/// Objects the set does not own are never touched: one that carries the set's uid label
/// (forged) is neither counted, updated nor deleted; one that already has a child's name
/// makes the set report `NameConflict` and is left as it is.
#[tokio::test]
pub(crate) async fn objects_the_set_does_not_own_are_left_alone() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    push_tags(&src, "src/app", &["1.0.0", "unrelated"], 300).await;
    let args = insecure(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "forged", &args);
    let source = src.reference("src/app");
    let dst_repo = dst.reference("mirror/app");

    // The name the set will give tag 2.0.0's child, taken first by another object.
    let squatter = child_name("web", "2.0.0");
    api.apply_yaml(&image_sync_yaml(
        "default",
        &squatter,
        &src.reference("src/app:unrelated"),
        &dst.reference("other/app:x"),
        "suspend: true",
    ));
    api.apply_yaml(&set_yaml("web", &source, &dst_repo, "include: \"[0-9.]+\""));
    let set = wait_set(&sets, "web", "1 child Ready", &controller, |s| {
        synced_with(s, 1)
    })
    .await;

    // A forged child: the set's uid label, a stale tag, no owner reference.
    let forged = format!(
        "  labels:\n    {SET_UID_LABEL}: {}\n  annotations:\n    {TAG_ANNOTATION}: \"0.1\"\n",
        set.uid().unwrap()
    );
    let forged_yaml = image_sync_yaml(
        "default",
        "forged",
        &src.reference("src/app:unrelated"),
        &dst.reference("other/app:forged"),
        "suspend: true",
    )
    .replacen(
        "  namespace: default\n",
        &format!("  namespace: default\n{forged}"),
        1,
    );
    api.apply_yaml(&forged_yaml);

    push_tags(&src, "src/app", &["2.0.0"], 310).await;
    let set = wait_set(&sets, "web", "NameConflict", &controller, |s| {
        reason(s).as_deref() == Some("NameConflict")
    })
    .await;
    assert!(message(&set).contains(&squatter), "{}", message(&set));
    // Several more checks: the forged and the squatting objects stay as they were.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = isyncs.get("forged").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    assert_eq!(still.spec.destination, dst.reference("other/app:forged"));
    let squat = isyncs.get(&squatter).await.unwrap();
    assert_eq!(
        squat.spec.source,
        src.reference("src/app:unrelated"),
        "the squatter was rewritten"
    );
    assert!(squat.metadata.owner_references.is_none());
    let set = sets.get("web").await.unwrap();
    assert_eq!(
        set.status.as_ref().and_then(|s| s.children),
        Some(1),
        "{:?}",
        set.status
    );
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "mirror/app", "2.0.0").await,
        404,
        "no child was made for the squatted name"
    );

    // The squatter goes: the set makes its own child for 2.0.0.
    api.kubectl(&["delete", "isync", "-n", "default", &squatter]);
    wait_set(&sets, "web", "2 children Ready", &controller, |s| {
        synced_with(s, 2)
    })
    .await;
    assert!(
        isyncs.get_opt("forged").await.unwrap().is_some(),
        "the forged object was deleted"
    );
}

/// The tenant policy: a set whose destination repository no rule allows gets
/// `PolicyDenied`, lists nothing and creates no child; an allowed set's children are
/// each decided on their own tags, so a tag a rule denies has a `PolicyDenied` child
/// (counted as failed) and nothing is copied for it.
#[tokio::test]
pub(crate) async fn the_tenant_policy_applies_to_the_set_and_to_each_child() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    push_tags(&src, "src/app", &["1.0.0", "1.1.0-beta"], 400).await;
    let policy = format!(
        "rules:\n  - {{name: no-beta, action: Deny, namespaces: [\"*\"], sources: [\"{s}/src/app:*-beta\"], destinations: [\"**\"]}}\n  - {{name: team, namespaces: [default], sources: [\"{s}/src/**\"], destinations: [\"{d}/allowed/**\"], ambientCredentials: {{source: true, destination: true}}}}\n",
        s = src.addr(),
        d = dst.addr()
    );
    let policy_file = api.dir().join("set-policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let mut args = insecure(&[&src, &dst]);
    args.extend([
        "--policy-file".to_string(),
        policy_file.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "set-policy", &args);
    let source = src.reference("src/app");

    api.apply_yaml(&set_yaml(
        "denied",
        &source,
        &dst.reference("forbidden/app"),
        "",
    ));
    let set = wait_set(&sets, "denied", "PolicyDenied", &controller, |s| {
        reason(s).as_deref() == Some("PolicyDenied")
    })
    .await;
    assert!(
        message(&set).contains("not the destination"),
        "{}",
        message(&set)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(children(&isyncs, &set).await.is_empty());
    let listed = |log: &[AccessEntry]| log.iter().filter(|e| e.path.contains("/tags/list")).count();
    assert_eq!(
        listed(&src.access_log()),
        0,
        "a denied set listed the source's tags"
    );

    api.apply_yaml(&set_yaml(
        "allowed",
        &source,
        &dst.reference("allowed/app"),
        "",
    ));
    let set = wait_set(&sets, "allowed", "1 Ready, 1 failed", &controller, |s| {
        counts(s) == (2, 1, 1) && reason(s).as_deref() == Some("ChildrenFailed")
    })
    .await;
    let kids = children(&isyncs, &set).await;
    assert_eq!(tags_of(&kids), ["1.0.0", "1.1.0-beta"]);
    let beta = kids[1].1.ready_condition().unwrap();
    assert_eq!(beta.reason, "PolicyDenied", "{beta:?}");
    assert!(beta.message.contains("no-beta"), "{}", beta.message);
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "allowed/app", "1.0.0").await,
        200
    );
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "allowed/app", "1.1.0-beta").await,
        404
    );
}

/// Filters the schema can check are refused by the apiserver with the field's name;
/// a regular expression or semver constraint that does not compile makes the set
/// `Ready=False` with reason `InvalidSpec` and the filter's error, and no child.
#[tokio::test]
pub(crate) async fn invalid_filters_are_refused_by_the_schema_or_reported_as_invalid_spec() {
    let (api, src) = tokio::join!(cluster(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    push_tags(&src, "src/app", &["1.0.0"], 500).await;
    let args = insecure(&[&src]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "invalid", &args);
    let source = src.reference("src/app");
    let dst = src.reference("mirror/app");

    for (extra, field, says) in [
        ("latest: 0", "spec.latest", "greater than or equal to 1"),
        ("latest: 1001", "spec.latest", "less than or equal to 1000"),
        ("include: \"\"", "spec.include", "at least 1 chars long"),
        (
            "deletionPolicy: Keep",
            "spec.deletionPolicy",
            "Unsupported value",
        ),
        (
            "resyncInterval: soon",
            "spec.resyncInterval",
            "should match",
        ),
        (
            "template:\n  platforms: [\"Linux/AMD64\"]",
            "spec.template.platforms",
            "should match",
        ),
    ] {
        let yaml = set_yaml("bad", &source, &dst, extra);
        let err =
            imagesync_e2e::kube::kubectl(api.kubeconfig(), &["apply", "-f", "-"], Some(&yaml))
                .expect_err(extra);
        assert!(err.contains(field) && err.contains(says), "{extra}: {err}");
    }
    let tagged = set_yaml("bad", &format!("{source}:1.0.0"), &dst, "");
    let err = imagesync_e2e::kube::kubectl(api.kubeconfig(), &["apply", "-f", "-"], Some(&tagged))
        .expect_err("a tagged source");
    assert!(
        err.contains("spec.source") && err.contains("should match"),
        "{err}"
    );
    assert!(sets.get_opt("bad").await.unwrap().is_none());

    for (name, extra, field) in [
        ("regex", "include: \"(1\\\\.\"", "spec.include"),
        ("semver", "semver: \">=banana\"", "spec.semver"),
        ("interval", "resyncInterval: 999h", "spec.resyncInterval"),
    ] {
        api.apply_yaml(&set_yaml(name, &source, &dst, extra));
        let set = wait_set(&sets, name, "InvalidSpec", &controller, |s| {
            reason(s).as_deref() == Some("InvalidSpec")
        })
        .await;
        assert!(message(&set).contains(field), "{name}: {}", message(&set));
        assert!(children(&isyncs, &set).await.is_empty());
    }
    // Fixing the filter takes effect at once.
    api.apply_yaml(&set_yaml("regex", &source, &dst, "include: \"1\\\\..*\""));
    wait_set(&sets, "regex", "1 child Ready", &controller, |s| {
        synced_with(s, 1)
    })
    .await;
}

/// The request cost of a set's check: one tag-list page per check for up to 1000 tags
/// (never more often than `resyncInterval`, whatever the children's status writes
/// trigger), plus each child's own HEAD re-checks at the template's interval.
#[tokio::test]
pub(crate) async fn a_check_costs_one_tag_list_per_interval_plus_the_childrens_heads() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    const N: usize = 5;
    let tags: Vec<String> = (0..N).map(|i| format!("1.{i}.0")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    push_tags(&src, "src/app", &tag_refs, 600).await;
    let args = insecure(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "set-cost", &args);
    let yaml = set_yaml(
        "cost",
        &src.reference("src/app"),
        &dst.reference("mirror/app"),
        "resyncInterval: 3s\ntemplate:\n  resyncInterval: 3s\n  referrers: false",
    )
    .replace("  resyncInterval: 2s\n", "");
    api.apply_yaml(&yaml);
    wait_set(&sets, "cost", "every child Ready", &controller, |s| {
        synced_with(s, N as i64)
    })
    .await;

    src.clear_access_log();
    let window = Duration::from_secs(15);
    tokio::time::sleep(window).await;
    let log = src.access_log_settled().await;
    let lists = log.iter().filter(|e| e.path.contains("/tags/list")).count();
    let heads = log.iter().filter(|e| e.method == "HEAD").count();
    let reads = log
        .iter()
        .filter(|e| {
            e.method == "GET" && (e.path.contains("/blobs/") || e.path.contains("/manifests/"))
        })
        .count();
    let others = log.len() - lists - heads;
    let checks = window.as_secs() / 3;
    eprintln!(
        "set of {N} tags, {}s window, interval 3s: {lists} tag-list requests, {heads} HEADs at the source, {others} other requests",
        window.as_secs()
    );
    assert!(
        (checks as usize - 1..=checks as usize + 1).contains(&lists),
        "expected about {checks} tag lists in {window:?}, got {lists} (a hot loop lists more)"
    );
    // Each child HEADs its source once per check (and its destination at `dst`).
    assert!(
        heads >= N * (checks as usize - 1) && heads <= N * (checks as usize + 2),
        "{heads}"
    );
    assert_eq!(
        reads, 0,
        "a re-check that copies nothing reads no manifest or blob: {log:?}"
    );
    // The children's status writes re-trigger the set without a rewrite of any child.
    let created = "imagesync_set_children_total{result=\"created\"}";
    assert_eq!(controller.metric(created).await, N as f64);
    let updated = "imagesync_set_children_total{result=\"updated\"}";
    assert_eq!(controller.metric(updated).await, 0.0);
    let failed = "imagesync_set_tag_lists_total{result=\"error\"}";
    assert_eq!(controller.metric(failed).await, 0.0);
}

/// A tag list that fails (the source registry is gone: connection refused) is never
/// taken for "no tags": under `Delete`, the children and their destination tags stay,
/// and the set reports the error.
#[tokio::test]
pub(crate) async fn a_failed_tag_list_deletes_no_child() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    push_tags(&src, "src/app", &["1.0.0", "1.1.0"], 700).await;
    let args = insecure(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(api.kubeconfig(), api.dir(), "set-fail", &args);
    let yaml = set_yaml(
        "web",
        &src.reference("src/app"),
        &dst.reference("mirror/app"),
        "deletionPolicy: Delete",
    );
    api.apply_yaml(&yaml);
    let set = wait_set(&sets, "web", "2 children Ready", &controller, |s| {
        synced_with(s, 2)
    })
    .await;

    drop(src);
    let set_now = wait_set(&sets, "web", "the list error", &controller, |s| {
        reason(s).as_deref() == Some("RegistryError")
    })
    .await;
    assert!(
        message(&set_now).contains("list the tags of"),
        "{}",
        message(&set_now)
    );
    // Several intervals later: nothing was deleted.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let kids = children(&isyncs, &set).await;
    assert_eq!(tags_of(&kids), ["1.0.0", "1.1.0"]);
    assert!(kids
        .iter()
        .all(|(_, c)| c.metadata.deletion_timestamp.is_none()));
    for tag in ["1.0.0", "1.1.0"] {
        assert_eq!(
            fixtures::manifest_status(dst.addr(), "mirror/app", tag).await,
            200
        );
    }
    let set_now = sets.get("web").await.unwrap();
    assert_eq!(set_now.status.as_ref().and_then(|s| s.matched), Some(2));
}

/// The controller as a ServiceAccount with exactly the chart's RBAC: it reads sets,
/// writes their status, creates and deletes their children.
#[tokio::test]
pub(crate) async fn a_set_works_with_exactly_the_chart_rbac() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let sets: Api<ImageSyncSet> = Api::namespaced(client.clone(), "default");
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    api.create_namespace("imagesync-system").await;
    api.apply_yaml(crate::controller::CHART_RBAC);
    let sa_kubeconfig = api
        .service_account_kubeconfig("imagesync-system", "imagesync-controller")
        .await;
    push_tags(&src, "src/app", &["1.0.0", "1.1.0"], 800).await;
    let args = insecure(&[&src, &dst]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = start_controller(&sa_kubeconfig, api.dir(), "set-rbac", &args);
    let source = src.reference("src/app");
    let dst_repo = dst.reference("mirror/app");
    let policy = "deletionPolicy: Delete";
    api.apply_yaml(&set_yaml("web", &source, &dst_repo, policy));
    let set = wait_set(&sets, "web", "2 children Ready", &controller, |s| {
        synced_with(s, 2)
    })
    .await;

    api.apply_yaml(&set_yaml(
        "web",
        &source,
        &dst_repo,
        &format!("{policy}\ninclude: \"1\\\\.1\\\\..*\""),
    ));
    wait_set(&sets, "web", "1 child Ready", &controller, |s| {
        synced_with(s, 1)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tags_of(&children(&isyncs, &set).await) != ["1.1.0"]
        || fixtures::manifest_status(dst.addr(), "mirror/app", "1.0.0").await != 404
    {
        assert!(
            Instant::now() < deadline,
            "the 1.0.0 child and its tag were not deleted\n{}",
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let note = crate::controller::wait_event(&client, "default", "web", "ChildCreated").await;
    assert!(note.contains("1.0.0") || note.contains("1.1.0"), "{note}");
    assert!(
        !controller.log_text().contains("Forbidden"),
        "a request was forbidden:\n{}",
        controller.log_text()
    );
}
