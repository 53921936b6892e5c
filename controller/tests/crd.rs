//! The committed CRD YAML must be exactly what `crdgen` prints
//! (regenerate with `cargo run -p imagesync-controller --bin crdgen > crds/imagesyncs.imagesync.dev.yaml`).

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/imagesyncs.imagesync.dev.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    let generated = imagesync_controller::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/imagesyncs.imagesync.dev.yaml is stale; regenerate it with \
         `cargo run -p imagesync-controller --bin crdgen > crds/imagesyncs.imagesync.dev.yaml`"
    );
}

#[test]
fn crd_has_no_cel_and_keeps_the_status_subresource() {
    let generated = imagesync_controller::crd_yaml().unwrap();
    assert!(
        !generated.contains("x-kubernetes-validations"),
        "CEL needs Kubernetes 1.25+"
    );
    assert!(generated.contains("status: {}"));
    assert!(generated.contains("- isync"));
}
