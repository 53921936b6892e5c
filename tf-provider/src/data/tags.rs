//! `data "imagesync_tags"`: the tags of a repository, every page of the tag list, through
//! the engine's tag filter ([`imagesync_engine::tagset`]). With `for_each`, one
//! `imagesync` resource per tag mirrors a tag set.

use std::collections::BTreeMap;

use imagesync_engine::tagset::{FilterError, TagFilter, MAX_LATEST};
use imagesync_engine::{Engine, Reference};

use super::{known_string, reference, required, Diags};
use crate::backend::BackendError;
use crate::codec::Value;
use crate::diag::Diagnostic;
use crate::proto::tfplugin6::Schema;
use crate::schema::{attr, block, Mode, LIST_OF_STRING, STRING};

/// The data source's type name.
pub const TYPE: &str = "imagesync_tags";

const REPOSITORY: &str = "repository";
const LATEST: &str = "latest";
const EXAMPLE: &str = "registry.example.com/team/app";
const NUMBER: &[u8] = br#""number""#;

/// The schema.
pub fn schema() -> Schema {
    use Mode::*;
    Schema {
        version: 0,
        block: Some(block(
            vec![
                attr(
                    REPOSITORY,
                    STRING,
                    Required,
                    false,
                    "Repository to list, without a tag, e.g. `docker.io/library/busybox`.",
                ),
                attr(
                    "include",
                    STRING,
                    Optional,
                    false,
                    "Keep only tags this regular expression (Rust `regex` syntax) matches as a whole, e.g. `v?1\\\\.2[0-9]\\\\..*`. At most 1024 characters.",
                ),
                attr(
                    "exclude",
                    STRING,
                    Optional,
                    false,
                    "Drop tags this regular expression matches as a whole, e.g. `.*-(rc|beta).*`.",
                ),
                attr(
                    "semver",
                    STRING,
                    Optional,
                    false,
                    "Keep only tags that are versions (`1.2.3`, `v1.2.3`, or `1.2` as 1.2.0) matching this constraint, e.g. `>=1.25, <2`. Pre-releases match only a constraint naming a pre-release of the same version.",
                ),
                attr(
                    LATEST,
                    NUMBER,
                    Optional,
                    false,
                    "Keep only the highest N versions (1 to 1000) among the tags the other filters keep; tags that are not versions are dropped.",
                ),
                attr(
                    "tags",
                    LIST_OF_STRING,
                    Computed,
                    false,
                    "The selected tags, each once: in byte order, or with `latest` the highest version first.",
                ),
            ],
            vec![],
            "Lists the tags of a repository (every page), filtered by regular expressions, a semver constraint and `latest`.",
        )),
    }
}

/// A repository: a reference without a tag or digest.
fn repository(config: &Value) -> Result<Option<Reference>, Diagnostic> {
    let Some(r) = reference(config, REPOSITORY, EXAMPLE)? else {
        return Ok(None);
    };
    let text = known_string(config, REPOSITORY)?.unwrap_or_default();
    let tagged = r.tag().is_some_and(|t| text.ends_with(&format!(":{t}")));
    if tagged || r.digest().is_some() {
        return Err(Diagnostic::error(
            format!("Invalid {REPOSITORY:?}"),
            format!(
                "{text:?} names a tag or digest; write the repository only, e.g. {EXAMPLE:?}, and \
                 select tags with `include`, `exclude`, `semver` or `latest`."
            ),
        )
        .at(REPOSITORY));
    }
    Ok(Some(r))
}

fn filter_diagnostic(e: &FilterError) -> Diagnostic {
    let field = e.field().name();
    Diagnostic::error(format!("Invalid {field:?} tag filter"), e.to_string()).at(field)
}

fn latest(config: &Value) -> Result<Option<u32>, Diagnostic> {
    let bad = || {
        Diagnostic::error(
            format!("Invalid {LATEST:?} tag filter"),
            format!("latest: must be a whole number between 1 and {MAX_LATEST}"),
        )
        .at(LATEST)
    };
    match config.get(LATEST) {
        Value::Null | Value::Unknown => Ok(None),
        Value::Int(n) => u32::try_from(*n).map(Some).map_err(|_| bad()),
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX) => {
            Ok(Some(*f as u32))
        }
        _ => Err(bad()),
    }
}

/// The filter fields, each checked on its own (all errors at once; unknown fields
/// skipped). `Ok` holds the filter of the known fields.
fn filter(config: &Value) -> Result<TagFilter, Diags> {
    let mut diags = Vec::new();
    let mut string = |attribute: &str| match known_string(config, attribute) {
        Ok(v) => v.map(str::to_string),
        Err(d) => {
            diags.push(d);
            None
        }
    };
    let mut f = TagFilter {
        include: string("include"),
        exclude: string("exclude"),
        semver: string("semver"),
        latest: None,
    };
    match latest(config) {
        Ok(n) => f.latest = n,
        Err(d) => diags.push(d),
    }
    let fields = [
        TagFilter {
            include: f.include.clone(),
            ..TagFilter::default()
        },
        TagFilter {
            exclude: f.exclude.clone(),
            ..TagFilter::default()
        },
        TagFilter {
            semver: f.semver.clone(),
            ..TagFilter::default()
        },
        TagFilter {
            latest: f.latest,
            ..TagFilter::default()
        },
    ];
    for one in fields {
        if let Err(e) = one.compile() {
            diags.push(filter_diagnostic(&e));
        }
    }
    if diags.is_empty() {
        Ok(f)
    } else {
        Err(diags)
    }
}

/// Checks a literal `repository` and every literal filter.
pub fn validate(config: &Value) -> Diags {
    let mut diags: Diags = repository(config).err().into_iter().collect();
    if let Err(more) = filter(config) {
        diags.extend(more);
    }
    diags
}

/// The computed attributes.
pub async fn read(engine: &Engine, config: &Value) -> Result<BTreeMap<String, Value>, Diagnostic> {
    let repo = required(repository(config)?, REPOSITORY)?;
    let compiled = filter(config)
        .map_err(|d| {
            d.into_iter()
                .next()
                .unwrap_or_else(|| Diagnostic::error("Invalid tag filter", ""))
        })?
        .compile()
        .map_err(|e| filter_diagnostic(&e))?;
    let all = engine.list_tags(&repo).await.map_err(|e| {
        crate::resource::error_diagnostic(
            "Cannot list the tags",
            &BackendError::Engine(e),
            Some(REPOSITORY),
        )
    })?;
    let tags = compiled.select(&all);
    tracing::debug!(repository = %repo.repo_name(), listed = all.len(), selected = tags.len(), "tags listed");
    Ok(BTreeMap::from([(
        "tags".to_string(),
        Value::List(tags.into_iter().map(Value::String).collect()),
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::PathStep;

    fn config(pairs: &[(&str, Value)]) -> Value {
        let mut m: BTreeMap<String, Value> = [("repository", "127.0.0.1:5000/src/app")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.clone());
        }
        Value::Object(m)
    }

    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    fn paths(diags: &Diags) -> Vec<String> {
        diags
            .iter()
            .map(|d| match &d.path[..] {
                [PathStep::Attr(a)] => a.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn valid_filters_and_unknown_values_pass() {
        let ok = config(&[
            ("include", s(r"v?1\.2[0-9]\..*")),
            ("exclude", s(".*-rc.*")),
            ("semver", s(">=1.25, <2")),
            ("latest", Value::Int(5)),
        ]);
        assert_eq!(validate(&ok), vec![]);
        let unknown = config(&[
            ("repository", Value::Unknown),
            ("include", Value::Unknown),
            ("latest", Value::Unknown),
        ]);
        assert_eq!(validate(&unknown), vec![]);
        assert_eq!(
            latest(&config(&[("latest", Value::Float(3.0))])),
            Ok(Some(3))
        );
    }

    /// Every bad field is reported at once, each at its attribute, with the reason.
    #[test]
    fn invalid_filters_are_reported_at_their_attributes() {
        let bad = config(&[
            ("include", s("(unclosed")),
            ("exclude", s("(a{1000}){1000}")),
            ("semver", s(">=banana")),
            ("latest", Value::Int(0)),
        ]);
        let diags = validate(&bad);
        assert_eq!(paths(&diags), ["include", "exclude", "semver", "latest"]);
        assert!(diags[0]
            .detail
            .starts_with("include: not a usable regular expression"));
        assert!(
            diags[1].detail.contains("size limit"),
            "{}",
            diags[1].detail
        );
        assert!(diags[2].detail.contains("not a version constraint"));
        assert_eq!(diags[3].detail, "latest: must be between 1 and 1000, not 0");
        assert_eq!(diags[0].summary, "Invalid \"include\" tag filter");
        for n in [
            Value::Int(-1),
            Value::Float(2.5),
            Value::Int(1 << 40),
            s("3"),
        ] {
            let d = validate(&config(&[("latest", n.clone())]));
            assert_eq!(paths(&d), ["latest"], "{n:?}");
        }
        let d = validate(&config(&[("latest", Value::Int(1001))]));
        assert_eq!(d[0].detail, "latest: must be between 1 and 1000, not 1001");
    }

    #[test]
    fn the_repository_has_no_tag_or_digest() {
        for bad in [
            "127.0.0.1:5000/src/app:1.2",
            "busybox:latest",
            "127.0.0.1:5000/src/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "UPPER/case",
        ] {
            let d = validate(&config(&[("repository", s(bad))]));
            assert_eq!(paths(&d), ["repository"], "{bad}");
        }
        for ok in ["127.0.0.1:5000/src/app", "busybox", "localhost:5000/a/b/c"] {
            assert_eq!(validate(&config(&[("repository", s(ok))])), vec![], "{ok}");
        }
    }
}
