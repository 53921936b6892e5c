//! The committed CRD YAML must be exactly what `crdgen` prints
//! (regenerate with `cargo run -p imagesync-api --bin crdgen > crds/imagesyncs.imagesync.dev.yaml`
//! and `... crdgen imagesyncsets > crds/imagesyncsets.imagesync.dev.yaml`),
//! and the Helm chart ships byte-identical copies of `crds/` (no Helm needed to check).

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_rust_types() {
    for (file, generated) in imagesync_api::all_crds().unwrap() {
        let path = repo_root().join("crds").join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let plural = file.split('.').next().unwrap();
        assert!(
            committed == generated,
            "crds/{file} is stale; regenerate it with \
             `cargo run -p imagesync-api --bin crdgen {plural} > crds/{file}`"
        );
    }
}

#[test]
fn crds_have_no_cel_and_keep_the_status_subresource() {
    for (file, generated) in imagesync_api::all_crds().unwrap() {
        assert!(
            !generated.contains("x-kubernetes-validations"),
            "{file}: CEL needs Kubernetes 1.25+"
        );
        assert!(generated.contains("status: {}"), "{file}");
    }
    assert!(imagesync_api::crd_yaml().unwrap().contains("- isync\n"));
    assert!(imagesync_api::set_crd_yaml()
        .unwrap()
        .contains("- isyncset\n"));
}

/// `kubectl get isyncset` shows the counts.
#[test]
fn the_set_crd_prints_its_counts() {
    let yaml = imagesync_api::set_crd_yaml().unwrap();
    for column in [".status.matched", ".status.ready", ".status.failed"] {
        assert!(yaml.contains(&format!("jsonPath: {column}")), "{column}");
    }
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
