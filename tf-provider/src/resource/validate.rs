//! `terraform validate`: what can be checked without the provider's configuration.

use super::{attr, parse_ref, Model};
use crate::codec::Value;
use crate::diag::Diagnostic;

/// Checks a resource configuration without the provider's (`terraform validate` does not
/// configure providers) and without values from variables or other resources (unknown
/// then): literal `source` and `destination` must parse, a literal `namespace` must be a
/// DNS-1123 label and `name` a DNS-1123 subdomain, literal `timeouts` must be valid
/// durations. Whether `namespace`/`name` may be used at all depends on the provider
/// block (Kubernetes mode) and is checked at plan, as are unknown values.
pub fn validate(config: &Value) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for a in [attr::SOURCE, attr::DESTINATION] {
        if let Err(d) = parse_ref(config.get(a), a) {
            diags.push(d);
        }
    }
    for (a, max, dots) in [(attr::NAMESPACE, 63, false), (attr::NAME, 253, true)] {
        if let Some(v) = config.get(a).as_str() {
            if !is_dns_name(v, max, dots) {
                let what = if dots { "subdomain" } else { "label" };
                diags.push(
                    Diagnostic::error(
                        format!("Invalid {a:?}"),
                        format!(
                            "{v:?} is not a Kubernetes object {a}: a DNS-1123 {what} (lowercase \
                             letters, digits and '-'{}, starting and ending with a letter or \
                             digit, at most {max} characters).",
                            if dots { ", '.'" } else { "" }
                        ),
                    )
                    .at(a),
                );
            }
        }
    }
    diags.extend(crate::timeouts::validate(config.get(attr::TIMEOUTS)));
    if let Some(m) = Model::from_value(config) {
        diags.extend(crate::spec_fields::validate(&m));
    }
    diags
}

/// A DNS-1123 label (`dots` false) or subdomain (`dots` true) of at most `max` bytes.
pub(crate) fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(ok_char)
        && edge(s.chars().next())
        && edge(s.chars().last())
        && !s.contains("..")
}
