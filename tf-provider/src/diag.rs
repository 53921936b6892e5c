//! Diagnostics: what the user sees in Terraform's output, with attribute paths.

use imagesync_engine::ErrorKind;

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

/// A human summary of an error kind (never the kind's internal label).
pub fn kind_summary(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not found",
        ErrorKind::Unauthorized => "authentication failed",
        ErrorKind::Denied => "access denied",
        ErrorKind::RateLimited => "rate-limited by the registry",
        ErrorKind::Unsupported => "not supported by the registry",
        ErrorKind::InvalidInput => "invalid input",
        ErrorKind::Transient => "the registry could not be reached or failed",
        ErrorKind::Integrity => "content did not match its digest",
        ErrorKind::Conflict => "the destination changed meanwhile",
    }
}

/// The error and every cause under it, one per line, outermost first. A cause whose text
/// the line above already contains (errors that print their source inline) is skipped, so
/// each context appears once and the root cause (e.g. `Connection refused`) is shown.
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut lines = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        let shown = lines.last().is_some_and(|l| l.contains(&text));
        if !text.is_empty() && !shown {
            lines.push(text);
        }
        next = cause.source();
    }
    let mut out = lines[0].clone();
    for l in &lines[1..] {
        out.push_str("\n  caused by: ");
        out.push_str(l);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors that print their source inline, the way the engine's and reqwest's do.
    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn the_cause_chain_reaches_the_root_cause_and_shows_each_context_once() {
        let root = Layer(
            "tcp connect error: Connection refused (os error 111)".into(),
            None,
        );
        let client = Layer("client error (Connect)".into(), Some(Box::new(root)));
        let send = Layer(
            "error sending request for url (http://127.0.0.1:1/v2/)".into(),
            Some(Box::new(client)),
        );
        let top = Layer(
            "HEAD manifest 127.0.0.1:1/a:1: error sending request for url (http://127.0.0.1:1/v2/)"
                .into(),
            Some(Box::new(send)),
        );
        let chain = cause_chain(&top);
        assert!(chain.contains("Connection refused"), "{chain}");
        assert_eq!(chain.matches("error sending request").count(), 1, "{chain}");
        assert_eq!(chain.lines().count(), 3, "{chain}");
    }

    #[test]
    fn summaries_never_name_the_kind() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Unauthorized,
            ErrorKind::Denied,
            ErrorKind::RateLimited,
            ErrorKind::Unsupported,
            ErrorKind::InvalidInput,
            ErrorKind::Transient,
            ErrorKind::Integrity,
            ErrorKind::Conflict,
        ] {
            let s = kind_summary(kind);
            assert_ne!(s, kind.label());
            assert!(!s.contains('_'), "{s}");
        }
        assert!(!kind_summary(ErrorKind::Transient).contains("transient"));
    }
}
