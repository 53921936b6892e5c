//! Platform selection through every front end (issue 18): the CLI's `--platform`,
//! Terraform's `platforms` (1.11.4 and 1.0.3, direct and Kubernetes mode), the CRD's
//! `spec.platforms` with the real kube-apiserver and controller; plus the Kubernetes-mode
//! parity of the provider (`resync_interval`, `source_secret_ref`,
//! `destination_secret_ref`). skopeo checks what was written.

use std::time::Duration;

use imagesync_controller::api::ImageSync;
use imagesync_e2e::registry::{Registry, RegistryOptions};
use kube::Api;
use serde_json::Value;

use crate::controller::{
    cluster, dockerconfig_secret, event_reasons, image_sync_yaml, reason, start_controller,
    wait_for,
};
use crate::platforms::{
    push_platform_index, skopeo_pull, skopeo_raw, AMD64, ARM64_V8, PPC64LE, S390X,
};
use crate::terraform::{actions, combined, imagesyncs, kube_controller, tag_digest, text, Tf};

async fn imagesync(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(imagesync_e2e::bin("imagesync"))
        .args(args)
        .args(["--no-progress", "--no-blob-cache"])
        .env_remove("IMAGESYNC_CREDS")
        .env_remove("IMAGESYNC_LOG")
        .env_remove("IMAGESYNC_PLATFORMS")
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .output()
        .await
        .unwrap()
}

fn digest_of(id: &str) -> &str {
    id.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
}

// === CLI ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_platform_flag_selects_and_names_what_is_missing() {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let idx = push_platform_index(&a.target(), "app", "1", 1811, &[AMD64, ARM64_V8, S390X]).await;
    let insecure = [
        "--insecure-registry",
        a.addr(),
        "--insecure-registry",
        b.addr(),
    ];
    let copy = |dst: String, platforms: Vec<&'static str>| {
        let src = a.reference("app:1");
        let mut args: Vec<String> = vec!["copy".into(), src, dst];
        args.extend(insecure.iter().map(|s| s.to_string()));
        for p in platforms {
            args.push("--platform".into());
            args.push(p.into());
        }
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            imagesync(&refs).await
        }
    };
    // One platform: the child, byte for byte.
    let out = copy(b.reference("one/app:1"), vec!["linux/arm64/v8"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let child = idx.child("linux/arm64/v8");
    assert_eq!(text(&out.stdout), format!("{}/one/app@{child}\n", b.addr()));
    assert_eq!(
        imagesync_e2e::fixtures::sha256(&skopeo_raw(&b.reference("one/app:1")).await),
        child
    );
    // Several: one index, the same digest whatever the order.
    let first = copy(b.reference("two/app:1"), vec!["linux/amd64", "linux/s390x"]).await;
    let second = copy(
        b.reference("again/app:1"),
        vec!["linux/s390x", "linux/amd64"],
    )
    .await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(second.status.success(), "{}", text(&second.stderr));
    let (d1, d2) = (text(&first.stdout), text(&second.stdout));
    assert_eq!(digest_of(d1.trim()), digest_of(d2.trim()));
    assert_ne!(digest_of(d1.trim()), idx.digest);
    let raw = skopeo_raw(&b.reference("two/app:1")).await;
    let written: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(written["manifests"].as_array().unwrap().len(), 2);
    skopeo_pull(&b.reference("two/app:1")).await;
    // `digest --platform` prints what a copy with that selection gives (no copy).
    let out = imagesync(&[
        "digest",
        &a.reference("app:1"),
        "--platform",
        "linux/s390x",
        "--platform",
        "linux/amd64",
        "--insecure-registry",
        a.addr(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), digest_of(d1.trim()));

    // A platform the source lacks: exit 1, the available ones named, nothing written.
    let out = copy(b.reference("x/app:1"), vec!["linux/ppc64le"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("linux/ppc64le") && err.contains("linux/amd64, linux/arm64/v8, linux/s390x"),
        "{err}"
    );
    assert_eq!(b.manifest_status("x/app", "1").await, 404);
    // A malformed platform: a bad command line (exit 2) naming the flag.
    for bad in ["linux", "Linux/AMD64", "linux/arm64/v8/x", "linux/amd64 "] {
        let out = copy(b.reference("y/app:1"), vec![bad]).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("--platform"),
            "{}",
            text(&out.stderr)
        );
    }
    let _ = PPC64LE;
}

// === Terraform, direct mode ===

fn tf_resource(name: &str, source: &str, destination: &str, extra: &str) -> String {
    format!(
        "resource \"imagesync\" \"{name}\" {{\n  source      = \"{source}\"\n  destination = \"{destination}\"\n  {extra}\n}}\n\noutput \"{name}\" {{\n  value = imagesync.{name}.id\n}}\n"
    )
}

async fn terraform_direct(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let target = a.target();
    let idx = push_platform_index(&target, "app", "1", 1812, &[AMD64, ARM64_V8]).await;
    let tf = Tf::new(version);
    let resources = [
        tf_resource(
            "one",
            &a.reference("app:1"),
            &b.reference("one/app:1"),
            "platforms = [\"linux/arm64/v8\"]",
        ),
        tf_resource(
            "two",
            &a.reference("app:1"),
            &b.reference("two/app:1"),
            "platforms = [\"linux/amd64\", \"linux/arm64/v8\"]",
        ),
        tf_resource(
            "owt",
            &a.reference("app:1"),
            &b.reference("owt/app:1"),
            "platforms = [\"linux/arm64/v8\", \"linux/amd64\"]",
        ),
    ]
    .concat();
    tf.config(&[&a, &b], &resources);
    tf.init().await;
    // The plan already knows the ids.
    let plan = tf
        .ok(&["plan", "-input=false", "-no-color", "-out=tfplan"])
        .await;
    let shown = crate::terraform::json_in(&tf.ok(&["show", "-json", "tfplan"]).await.stdout);
    let planned_one = shown["planned_values"]["outputs"]["one"]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("id unknown at plan: {}", text(&plan.stdout)))
        .to_string();
    tf.apply(&[]).await;
    let one = tf.output("one").await;
    assert_eq!(one, planned_one);
    assert_eq!(digest_of(&one), idx.child("linux/arm64/v8"));
    assert_eq!(
        imagesync_e2e::fixtures::sha256(&skopeo_raw(&b.reference("one/app:1")).await),
        digest_of(&one)
    );
    let two = tf.output("two").await;
    let owt = tf.output("owt").await;
    assert_eq!(
        digest_of(&two),
        digest_of(&owt),
        "same selection, same digest"
    );
    let raw = skopeo_raw(&b.reference("two/app:1")).await;
    assert_eq!(imagesync_e2e::fixtures::sha256(&raw), digest_of(&two));
    skopeo_pull(&b.reference("two/app:1")).await;
    assert_eq!(
        tf.state_values("imagesync.two").await["source_digest"],
        digest_of(&two)
    );

    // Nothing changed: the plan knows the selection (private state) and sends HEADs
    // only, at both registries.
    a.clear_access_log();
    b.clear_access_log();
    let planned = tf.plan_actions().await;
    for r in ["imagesync.one", "imagesync.two", "imagesync.owt"] {
        assert_eq!(planned[r], actions(&["no-op"]), "{r}");
    }
    for reg in [&a, &b] {
        let log = reg.access_log_settled().await;
        assert!(log.iter().any(|e| e.is_manifest()), "{log:?}");
        let other: Vec<_> = log
            .iter()
            .filter(|e| e.is_manifest() && e.method != "HEAD")
            .collect();
        assert!(other.is_empty(), "{other:?}");
    }

    // The source gains a platform: no changes. The source index is read once per
    // resource (its digest changed); the destination still sees HEADs only.
    push_platform_index(&target, "app", "1", 1812, &[AMD64, ARM64_V8, S390X]).await;
    a.clear_access_log();
    b.clear_access_log();
    let planned = tf.plan_actions().await;
    for r in ["imagesync.one", "imagesync.two", "imagesync.owt"] {
        assert_eq!(planned[r], actions(&["no-op"]), "{r}");
    }
    let dst_log = b.access_log_settled().await;
    assert!(
        dst_log
            .iter()
            .filter(|e| e.is_manifest())
            .all(|e| e.method == "HEAD"),
        "{dst_log:?}"
    );
    let src_gets = a
        .access_log_settled()
        .await
        .into_iter()
        .filter(|e| e.is_manifest() && e.method == "GET")
        .count();
    assert!(
        src_gets <= 3,
        "{src_gets} GETs of the source index for 3 resources"
    );
    tf.apply(&[]).await;
    assert_eq!(tf.output("two").await, two);
    assert_eq!(tf.output("one").await, one);

    // A platform the source lacks: the plan fails naming those it has.
    tf.config(
        &[&a, &b],
        &tf_resource(
            "one",
            &a.reference("app:1"),
            &b.reference("one/app:1"),
            "platforms = [\"linux/ppc64le\"]",
        ),
    );
    let out = tf.run(&["plan", "-input=false", "-no-color"]).await;
    assert!(!out.status.success());
    // Terraform wraps diagnostics: compare with the line breaks taken out.
    let all = combined(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(all.contains("linux/ppc64le"), "{all}");
    assert!(
        all.contains("linux/amd64, linux/arm64/v8, linux/s390x"),
        "{all}"
    );

    // `terraform validate` refuses malformed platform strings and duplicates.
    for bad in [
        "[\"linux\"]",
        "[\"Linux/AMD64\"]",
        "[\"linux/arm64/v8/extra\"]",
        "[\"linux/amd64\", \"linux/amd64\"]",
    ] {
        tf.config(
            &[&a, &b],
            &tf_resource(
                "one",
                &a.reference("app:1"),
                &b.reference("one/app:1"),
                &format!("platforms = {bad}"),
            ),
        );
        let out = tf.run(&["validate", "-no-color"]).await;
        assert!(!out.status.success(), "validate accepted {bad}");
        assert!(combined(&out).contains("platforms"), "{}", combined(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_platforms() {
    terraform_direct("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_3_platforms() {
    terraform_direct("1.0.3").await;
}

// === Terraform, Kubernetes mode ===

const USER: &str = "mirror";
const PASS: &str = "s3cret-platforms";

async fn terraform_kubernetes(version: &'static str) {
    let (api, a, b) = tokio::join!(
        imagesync_e2e::kube::ApiServer::start(),
        Registry::start_with(RegistryOptions {
            htpasswd: Some((USER.into(), PASS.into())),
            ..RegistryOptions::default()
        }),
        Registry::start_with(RegistryOptions {
            htpasswd: Some((USER.into(), PASS.into())),
            ..RegistryOptions::default()
        })
    );
    let _controller = kube_controller(&api, &a, &b).await;
    for (name, reg) in [("src-creds", &a), ("dst-creds", &b)] {
        api.apply_yaml(&dockerconfig_secret(
            "default",
            name,
            reg.addr(),
            USER,
            PASS,
        ));
    }
    let idx = push_platform_index(&a.target(), "app", "1", 1813, &[AMD64, ARM64_V8]).await;
    let tf = Tf::new(version);
    let provider = format!(
        "kubernetes {{\n    config_path = \"{}\"\n    namespace   = \"default\"\n  }}",
        api.kubeconfig().display()
    );
    let body = |platforms: &str, interval: &str| {
        tf_resource(
            "app",
            &a.reference("app:1"),
            &b.reference("dst/app:1"),
            &format!(
                "platforms = {platforms}\n  resync_interval = \"{interval}\"\n  source_secret_ref = {{ name = \"src-creds\" }}\n  destination_secret_ref = {{ name = \"dst-creds\" }}\n  timeouts {{\n    create = \"2m\"\n    delete = \"2m\"\n  }}"
            ),
        )
    };
    tf.config_with(&provider, &body("[\"linux/arm64/v8\"]", "30s"));
    tf.init().await;
    tf.apply(&[]).await;
    let id = tf.output("app").await;
    assert_eq!(
        id,
        format!("{}/dst/app@{}", b.addr(), idx.child("linux/arm64/v8"))
    );
    let objects = imagesyncs(&api);
    assert_eq!(objects.len(), 1, "{objects:?}");
    let spec = &objects[0]["spec"];
    assert_eq!(spec["platforms"], serde_json::json!(["linux/arm64/v8"]));
    assert_eq!(spec["resyncInterval"], "30s");
    assert_eq!(spec["sourceSecretRef"]["name"], "src-creds");
    assert_eq!(spec["destinationSecretRef"]["name"], "dst-creds");
    // The destination needs credentials (only the Secret has them): check with skopeo.
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{USER}:{PASS}"))
        .arg(format!("docker://{}", b.reference("dst/app:1")))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(imagesync_e2e::fixtures::sha256(&out.stdout), digest_of(&id));
    assert_eq!(
        tag_digest(&b, "dst/app", "1").await,
        None,
        "anonymous reads fail"
    );
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );
    // A change of the selection and of the interval: in place.
    tf.config_with(
        &provider,
        &body("[\"linux/amd64\", \"linux/arm64/v8\"]", "45s"),
    );
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    tf.apply(&[]).await;
    let two = tf.output("app").await;
    assert_ne!(two, id);
    assert_eq!(imagesyncs(&api)[0]["spec"]["resyncInterval"], "45s");

    // `terraform validate` checks the new attributes as the CRD does.
    for (bad, attr) in [
        (body("[\"linux\"]", "30s"), "platforms"),
        (body("[\"linux/amd64\"]", "3 seconds"), "resync_interval"),
        (
            body("[\"linux/amd64\"]", "30s").replace("src-creds", "Bad_Name"),
            "source_secret_ref",
        ),
    ] {
        tf.config_with(&provider, &bad);
        let out = tf.run(&["validate", "-no-color"]).await;
        assert!(!out.status.success(), "validate accepted {attr}");
        assert!(combined(&out).contains(attr), "{}", combined(&out));
    }
    tf.config_with(
        &provider,
        &body("[\"linux/amd64\", \"linux/arm64/v8\"]", "45s"),
    );
    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(imagesyncs(&api).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_kubernetes_mode_parity() {
    terraform_kubernetes("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_3_kubernetes_mode_parity() {
    terraform_kubernetes("1.0.3").await;
}

// === controller and CRD ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_selects_platforms_and_a_gained_platform_is_not_drift() {
    let (api, src, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "default");
    let target = src.target();
    let idx = push_platform_index(&target, "app", "1", 1814, &[AMD64, ARM64_V8]).await;
    let controller = start_controller(
        api.kubeconfig(),
        api.dir(),
        "platforms",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            dst.addr(),
        ],
    );
    api.apply_yaml(&image_sync_yaml(
        "default",
        "one",
        &src.reference("app:1"),
        &dst.reference("one/app:1"),
        "platforms: [linux/arm64/v8]",
    ));
    api.apply_yaml(&image_sync_yaml(
        "default",
        "two",
        &src.reference("app:1"),
        &dst.reference("two/app:1"),
        "platforms: [linux/amd64, linux/arm64]",
    ));
    api.apply_yaml(&image_sync_yaml(
        "default",
        "missing",
        &src.reference("app:1"),
        &dst.reference("missing/app:1"),
        "platforms: [linux/ppc64le]",
    ));
    let t = Duration::from_secs(60);
    let child = idx.child("linux/arm64/v8").to_string();
    let one = wait_for(
        &isyncs,
        "one",
        t,
        "one platform synced",
        Some(&controller),
        |o| crate::controller::ready_with(o, &child),
    )
    .await;
    let st = one.status.unwrap();
    assert_eq!(st.source_digest.as_deref(), Some(idx.digest.as_str()));
    assert_eq!(st.id, Some(format!("{}/one/app@{child}", dst.addr())));
    let two = wait_for(
        &isyncs,
        "two",
        t,
        "two platforms synced",
        Some(&controller),
        |o| o.is_ready(),
    )
    .await;
    let two_digest = two.status.unwrap().destination_digest.unwrap();
    let raw = skopeo_raw(&dst.reference("two/app:1")).await;
    assert_eq!(imagesync_e2e::fixtures::sha256(&raw), two_digest);
    skopeo_pull(&dst.reference("two/app:1")).await;
    let missing = wait_for(
        &isyncs,
        "missing",
        t,
        "PlatformNotFound",
        Some(&controller),
        |o| reason(o).as_deref() == Some("PlatformNotFound"),
    )
    .await;
    let message = missing.ready_condition().unwrap().message.clone();
    assert!(
        message.contains("linux/ppc64le") && message.contains("linux/amd64, linux/arm64/v8"),
        "{message}"
    );
    assert_eq!(dst.manifest_status("missing/app", "1").await, 404);

    // The source gains a platform: the controller records the new source digest, the
    // destinations keep their digests, and no drift is reported.
    let after = push_platform_index(&target, "app", "1", 1814, &[AMD64, ARM64_V8, S390X]).await;
    let two_now = wait_for(
        &isyncs,
        "two",
        t,
        "the new source digest checked",
        Some(&controller),
        |o| {
            o.status.as_ref().and_then(|s| s.source_digest.as_deref())
                == Some(after.digest.as_str())
        },
    )
    .await;
    assert!(two_now.is_ready());
    assert_eq!(
        two_now.status.unwrap().destination_digest.as_deref(),
        Some(two_digest.as_str())
    );
    let events = event_reasons(&client, "default", "two").await;
    assert!(
        !events.iter().any(|(r, _)| r == "SourceChanged"),
        "a gained platform is not drift: {events:?}"
    );
    assert_eq!(
        imagesync_e2e::fixtures::sha256(&skopeo_raw(&dst.reference("two/app:1")).await),
        two_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_schema_refuses_invalid_platform_strings() {
    let api = cluster().await;
    for bad in [
        "[linux]",
        "[Linux/AMD64]",
        "[linux/arm64/v8/extra]",
        "[\"linux/amd64 \"]",
        "[linux/amd64, linux/amd64]",
    ] {
        let yaml = image_sync_yaml(
            "default",
            "bad",
            "127.0.0.1:1/app:1",
            "127.0.0.1:1/copy:1",
            &format!("platforms: {bad}"),
        );
        let result =
            imagesync_e2e::kube::kubectl(api.kubeconfig(), &["apply", "-f", "-"], Some(&yaml));
        let err = result.expect_err(&format!("the apiserver accepted platforms: {bad}"));
        assert!(err.contains("spec.platforms"), "{bad}: {err}");
    }
    let ok = image_sync_yaml(
        "default",
        "good",
        "127.0.0.1:1/app:1",
        "127.0.0.1:1/copy:1",
        "platforms: [linux/amd64, linux/arm64/v8, windows/amd64]",
    );
    imagesync_e2e::kube::kubectl(api.kubeconfig(), &["apply", "-f", "-"], Some(&ok)).unwrap();
}
