//! The set's tag filter: the engine's [`imagesync_engine::tagset`], shared with the
//! Terraform data source `imagesync_tags`, so a filter means the same in both.

use imagesync_engine::tagset::{CompiledFilter, TagFilter};

use crate::api::ImageSyncSet;

/// The set's filter, compiled; the error names the field (`spec.include`, ...), for a
/// `Ready=False` condition with reason `InvalidSpec`.
pub fn compile(set: &ImageSyncSet) -> Result<CompiledFilter, String> {
    let s = &set.spec;
    TagFilter {
        include: s.include.clone(),
        exclude: s.exclude.clone(),
        semver: s.semver.clone(),
        latest: s.latest,
    }
    .compile()
    .map_err(|e| format!("spec.{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(filter: serde_json::Value) -> ImageSyncSet {
        let mut spec = serde_json::json!({"source": "r.example/a", "destination": "r.example/b"});
        spec.as_object_mut()
            .unwrap()
            .extend(filter.as_object().unwrap().clone());
        ImageSyncSet::new("s", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn filter_errors_name_the_spec_field() {
        let e = compile(&set(serde_json::json!({"include": "(unclosed"}))).unwrap_err();
        assert!(e.starts_with("spec.include: "), "{e}");
        let e = compile(&set(serde_json::json!({"semver": ">=banana"}))).unwrap_err();
        assert!(e.starts_with("spec.semver: "), "{e}");
    }

    #[test]
    fn the_filter_selects_like_the_data_source() {
        let f = compile(&set(
            serde_json::json!({"semver": ">=1.25, <2", "exclude": ".*-rc.*"}),
        ))
        .unwrap();
        let tags: Vec<String> = [
            "1.24.0",
            "1.25.1",
            "1.26.0",
            "2.0.0",
            "latest",
            "1.26.0-rc1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            f.select(&tags),
            vec!["1.25.1".to_string(), "1.26.0".to_string()]
        );
    }
}
