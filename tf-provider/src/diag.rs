//! Diagnostics: what the user sees in Terraform's output, with attribute paths.

use crate::proto::tfplugin6 as pb;

/// One diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub error: bool,
    /// The one-line summary.
    pub summary: String,
    /// Details and what to do about it.
    pub detail: String,
    /// The attribute concerned (top-level name, then nested steps), if any.
    pub path: Vec<PathStep>,
}

/// A step in an attribute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    /// An attribute or block name.
    Attr(String),
    /// An element of a list.
    Index(i64),
}

impl Diagnostic {
    /// An error.
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
        Diagnostic {
            error: true,
            summary: summary.into(),
            detail: detail.into(),
            path: Vec::new(),
        }
    }

    /// A warning.
    pub fn warning(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
        Diagnostic {
            error: false,
            ..Diagnostic::error(summary, detail)
        }
    }

    /// Points the diagnostic at a top-level attribute.
    pub fn at(mut self, attribute: &str) -> Diagnostic {
        self.path = vec![PathStep::Attr(attribute.to_string())];
        self
    }

    /// Points the diagnostic at a nested path.
    pub fn at_path(mut self, path: Vec<PathStep>) -> Diagnostic {
        self.path = path;
        self
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.error)
}

/// An attribute path for the wire.
pub fn path_to_proto(path: &[PathStep]) -> pb::AttributePath {
    use pb::attribute_path::step::Selector;
    pb::AttributePath {
        steps: path
            .iter()
            .map(|s| pb::attribute_path::Step {
                selector: Some(match s {
                    PathStep::Attr(a) => Selector::AttributeName(a.clone()),
                    PathStep::Index(i) => Selector::ElementKeyInt(*i),
                }),
            })
            .collect(),
    }
}

/// Diagnostics for the wire.
pub fn to_proto(diags: Vec<Diagnostic>) -> Vec<pb::Diagnostic> {
    diags
        .into_iter()
        .map(|d| pb::Diagnostic {
            severity: if d.error {
                pb::diagnostic::Severity::Error as i32
            } else {
                pb::diagnostic::Severity::Warning as i32
            },
            summary: d.summary,
            detail: d.detail,
            attribute: (!d.path.is_empty()).then(|| path_to_proto(&d.path)),
        })
        .collect()
}
