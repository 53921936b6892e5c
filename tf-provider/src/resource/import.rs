//! Import (`SOURCE,DESTINATION`) and the upgrade of state written by earlier versions.

use imagesync_engine::Reference;

use super::Model;
use crate::codec::Value;
use crate::diag::Diagnostic;

/// `terraform import imagesync.NAME SOURCE,DESTINATION`.
pub fn import(id: &str) -> Result<Model, Diagnostic> {
    let bad = |detail: String| {
        Diagnostic::error(
            "Invalid import ID",
            format!(
                "{detail}\n\nImport with `terraform import imagesync.NAME SOURCE,DESTINATION`, for example \
                 `terraform import imagesync.app docker.io/library/busybox:1.36,registry.example.com/mirror/busybox:1.36`."
            ),
        )
    };
    let Some((source, destination)) = id.split_once(',') else {
        return Err(bad(format!("{id:?} has no comma.")));
    };
    let (source, destination) = (source.trim(), destination.trim());
    for (what, r) in [("source", source), ("destination", destination)] {
        if let Err(e) = Reference::parse(r) {
            return Err(bad(format!("The {what} is not a valid reference: {e}")));
        }
    }
    Ok(Model {
        // Replaced by the read that follows the import.
        id: Value::String(destination.to_string()),
        source: Value::String(source.to_string()),
        destination: Value::String(destination.to_string()),
        delete_layers: Value::Bool(true),
        referrers: Value::Bool(true),
        copied_referrers: Value::List(Vec::new()),
        ..Model::empty()
    })
}

/// Upgrades stored state (any earlier version, including the original Go provider's
/// version 1 state, which has no `delete_layers`).
pub fn upgrade(raw: Value) -> Model {
    let mut m = Model::from_value(&raw).unwrap_or_else(Model::empty);
    // The legacy flatmap form stores every value as a string.
    if let Value::String(s) = &m.delete_layers {
        m.delete_layers = Value::Bool(s != "false");
    }
    if m.delete_layers.is_null() {
        m.delete_layers = Value::Bool(true);
    }
    // Before referrers: on (the default), and nothing recorded yet.
    if !matches!(m.referrers, Value::Bool(_)) {
        m.referrers = Value::Bool(m.referrers.as_str() != Some("false"));
    }
    if !matches!(m.copied_referrers, Value::List(_)) {
        m.copied_referrers = Value::List(Vec::new());
    }
    if !matches!(m.referrer_types, Value::List(_)) {
        m.referrer_types = Value::Null;
    }
    for v in [&mut m.source_digest, &mut m.namespace, &mut m.name] {
        if v.as_str() == Some("") {
            *v = Value::Null;
        }
    }
    // Flatmap has no nested blocks we could read back.
    if !matches!(m.timeouts, Value::Object(_)) {
        m.timeouts = Value::Null;
    }
    m
}
