//! The committed CRD YAML must be exactly what `crdgen` prints
//! (regenerate with `cargo run -p imagesync-api --bin crdgen > crds/imagesyncs.imagesync.dev.yaml`),
//! and the Helm chart ships byte-identical copies of `crds/` (no Helm needed to check).

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = repo_root().join("crds/imagesyncs.imagesync.dev.yaml");
    let committed = std::fs::read_to_string(path).unwrap();
    let generated = imagesync_api::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/imagesyncs.imagesync.dev.yaml is stale; regenerate it with \
         `cargo run -p imagesync-api --bin crdgen > crds/imagesyncs.imagesync.dev.yaml`"
    );
}

#[test]
fn crd_has_no_cel_and_keeps_the_status_subresource() {
    let generated = imagesync_api::crd_yaml().unwrap();
    assert!(
        !generated.contains("x-kubernetes-validations"),
        "CEL needs Kubernetes 1.25+"
    );
    assert!(generated.contains("status: {}"));
    assert!(generated.contains("- isync"));
}

#[test]
fn chart_crds_are_byte_identical_to_the_generated_crds() {
    let chart_crds = repo_root().join("charts/imagesync/crds");
    let generated = repo_root().join("crds");
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        names
    };
    let ours = names(&chart_crds);
    assert!(
        !ours.is_empty(),
        "the chart ships no CRD in {}",
        chart_crds.display()
    );
    assert_eq!(
        ours,
        names(&generated),
        "chart crds/ and crds/ hold different files"
    );
    for name in ours {
        let a = std::fs::read(chart_crds.join(&name)).expect("chart CRD");
        let b = std::fs::read(generated.join(&name)).expect("generated CRD");
        assert!(
            a == b,
            "charts/imagesync/crds/{name} differs from crds/{name}: copy crds/ into the chart"
        );
    }
}
