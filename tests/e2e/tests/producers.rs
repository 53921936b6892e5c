//! End-to-end tests: images that real tools made, copied with imagesync, then consumed by
//! real clients. buildah builds images (OCI and Docker schema 2, gzip and zstd layers, a manifest list of several platforms); the Helm library pushes a
//! chart as an OCI artifact. After each copy containerd pulls the destination by the printed
//! `id` (every platform) and `ctr images check` reports it complete; the Helm library pulls
//! the mirrored chart and it is byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use imagesync_e2e::buildah::{Buildah, PushFormat};
use imagesync_e2e::containerd::Containerd;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::Registry;
use serde_json::Value;

use crate::image::imagesync_copy;

/// Two layers of made-up files; `seed` makes the contents differ per image.
fn layers(seed: u64) -> Vec<Vec<(&'static str, Vec<u8>)>> {
    vec![
        vec![
            ("/bin/app", fixtures::random_bytes(seed, 40_000)),
            ("/etc/app.conf", format!("seed={seed}\n").into_bytes()),
        ],
        vec![("/srv/data.bin", fixtures::random_bytes(seed + 1, 120_000))],
    ]
}

/// The layer media types of the manifest `repo@digest` on `reg`.
async fn layer_types(reg: &Registry, repo: &str, digest: &str) -> Vec<String> {
    let (_, body) = fixtures::get_manifest(reg.addr(), repo, digest)
        .await
        .unwrap_or_else(|| panic!("{repo}@{digest} missing"));
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// buildah images in OCI and Docker formats with gzip and zstd layers, and
/// manifest lists of two platforms in both formats: each copied with `imagesync copy`, the
/// id is the producer's digest, and containerd pulls it by id, complete.
#[tokio::test]
async fn buildah_images_of_every_format_and_compression_are_pulled_by_id_after_a_copy() {
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let insecure = [src.addr(), dst.addr()];
    let buildah = Buildah::new();
    let ctd = Containerd::start();
    buildah.image("app", "amd64", &layers(300));

    // Uncompressed layers are not among them: buildah 1.28's `push --disable-compression`
    // still writes gzip layers (checked by hand on Debian 12's 1.28.2).
    let cases = [
        ("oci", "gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("oci", "zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        (
            "v2s2",
            "gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ];
    for (i, (format, compression, layer_type)) in (0u64..).zip(cases) {
        // Layers of their own: buildah 1.28 reuses a layer the registry already has in
        // another compression instead of compressing it as asked.
        let name = format!("app-{format}-{compression}");
        buildah.image(&name, "amd64", &layers(400 + 10 * i));
        let repo = format!("buildah/{format}-{compression}");
        let pushed = buildah.push(
            &name,
            &src.reference(&format!("{repo}:1")),
            PushFormat {
                format,
                compression,
            },
        );
        let types = layer_types(&src, &repo, &pushed).await;
        assert_eq!(types, [layer_type, layer_type], "{format}/{compression}");
        let id = imagesync_copy(
            &src.reference(&format!("{repo}:1")),
            &dst.reference(&format!("mirror/{repo}:1")),
            &insecure,
        );
        assert_eq!(id, format!("{}/mirror/{repo}@{pushed}", dst.addr()));
        ctd.pull_and_check(&id);
    }

    // Manifest lists: linux/amd64 and linux/arm64, every image pushed with the list.
    buildah.image("app-arm64", "arm64", &layers(310));
    for (format, list_type) in [
        ("oci", fixtures::OCI_INDEX),
        ("v2s2", fixtures::DOCKER_LIST),
    ] {
        let list = format!("list-{format}");
        let repo = format!("buildah/{list}");
        let digest = buildah.push_manifest_list(
            &list,
            &["app", "app-arm64"],
            &src.reference(&format!("{repo}:1")),
            format,
        );
        let (media_type, body) = fixtures::get_manifest(src.addr(), &repo, &digest)
            .await
            .expect("list pushed");
        let index: Value = serde_json::from_slice(&body).unwrap();
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| {
                let p = &m["platform"];
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or("?"),
                    p["architecture"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert_eq!(media_type, list_type);
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{media_type}");
        let id = imagesync_copy(
            &src.reference(&format!("{repo}:1")),
            &dst.reference(&format!("mirror/{repo}:1")),
            &insecure,
        );
        assert_eq!(id, format!("{}/mirror/{repo}@{digest}", dst.addr()));
        ctd.pull_and_check(&id);
    }
}

fn chart_oci(args: &[&str]) -> Value {
    let python = std::env::var("IMAGESYNC_E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/chart_oci.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "chart_oci.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("chart_oci.py JSON")
}

/// The project's chart, pushed as an OCI artifact by the Helm library, copied with
/// `imagesync copy`, pulled back from the mirror by the Helm library: the same archive.
#[tokio::test]
async fn helm_chart_pushed_by_helm_is_pulled_identical_from_the_mirror() {
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let work = tempfile::tempdir().unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/imagesync");
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("Chart.yaml version");
    let version = version.as_str();
    let pushed = chart_oci(&[
        "push",
        &chart.display().to_string(),
        &work.path().display().to_string(),
        &format!("oci://{}/charts", src.addr()),
    ]);
    let id = imagesync_copy(
        &src.reference(&format!("charts/imagesync:{version}")),
        &dst.reference(&format!("mirror/charts/imagesync:{version}")),
        &[src.addr(), dst.addr()],
    );
    let (_, manifest) = fixtures::get_manifest(src.addr(), "charts/imagesync", version)
        .await
        .expect("chart manifest");
    assert_eq!(
        id,
        format!(
            "{}/mirror/charts/imagesync@{}",
            dst.addr(),
            fixtures::sha256(&manifest)
        )
    );
    let dest: PathBuf = work.path().join("pulled");
    let pulled = chart_oci(&[
        "pull",
        &format!("oci://{}/mirror/charts/imagesync", dst.addr()),
        version,
        &dest.display().to_string(),
    ]);
    assert_eq!(pulled["digest"], pushed["digest"]);
    let a = std::fs::read(pushed["archive"].as_str().unwrap()).unwrap();
    let b = std::fs::read(pulled["archive"].as_str().unwrap()).unwrap();
    assert!(
        a == b,
        "the mirrored chart archive differs from the pushed one"
    );
}

/// The Terraform path: a buildah manifest list mirrored by `terraform apply` (the real
/// Terraform 1.11.4 and the provider); containerd pulls the resource's `id` output, every
/// platform, complete.
#[tokio::test]
async fn terraform_id_of_a_buildah_manifest_list_is_pulled_by_containerd() {
    use crate::terraform::{resource, Tf};
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let buildah = Buildah::new();
    buildah.image("tf-amd64", "amd64", &layers(500));
    buildah.image("tf-arm64", "arm64", &layers(510));
    let digest = buildah.push_manifest_list(
        "tf-list",
        &["tf-amd64", "tf-arm64"],
        &src.reference("buildah/tf:1"),
        "oci",
    );
    let tf = Tf::new("1.11.4");
    let output = "output \"id\" {\n  value = imagesync.app.id\n}\n";
    tf.config(
        &[&src, &dst],
        &format!(
            "{}{output}",
            resource(
                "app",
                &src.reference("buildah/tf:1"),
                &dst.reference("mirror/tf:1")
            )
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let id = tf.output("id").await;
    assert_eq!(id, format!("{}/mirror/tf@{digest}", dst.addr()));
    let ctd = Containerd::start();
    ctd.pull_and_check(&id);
}
