//! The CRD YAML committed in `crds/` (and copied into the Helm chart).

use kube::CustomResourceExt;

use crate::ImageSync;

/// The `ImageSync` CRD as YAML, exactly as committed in `crds/imagesyncs.imagesync.dev.yaml`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(&ImageSync::crd())
}
