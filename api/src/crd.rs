//! The CRD YAML committed in `crds/` (and copied into the Helm chart).

use kube::CustomResourceExt;

use crate::{ImageSync, ImageSyncSet};

/// The `ImageSync` CRD as YAML, exactly as committed in `crds/imagesyncs.imagesync.dev.yaml`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&ImageSync::crd())
}

/// The `ImageSyncSet` CRD as YAML, exactly as committed in
/// `crds/imagesyncsets.imagesync.dev.yaml`.
pub fn set_crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&ImageSyncSet::crd())
}

/// Every CRD: its file name in `crds/` and its YAML.
pub fn all_crds() -> Result<Vec<(&'static str, String)>, serde_saphyr::ser::Error> {
    Ok(vec![
        ("imagesyncs.imagesync.dev.yaml", crd_yaml()?),
        ("imagesyncsets.imagesync.dev.yaml", set_crd_yaml()?),
    ])
}
