//! Read: refresh the state from the destination (or the object's status).

use super::{attr, error_diagnostic, fill_identity, id_digest, Model};
use crate::backend::Backend;
use crate::codec::Value;
use crate::diag::Diagnostic;

/// Refreshes state from the destination (or, in Kubernetes mode, the object's status).
pub async fn read(backend: &dyn Backend, mut current: Model) -> (Option<Model>, Vec<Diagnostic>) {
    // Imported in Kubernetes mode: the object's default namespace and name.
    fill_identity(backend, &mut current, Value::is_null, Value::Null);
    let target = match current.target() {
        Ok(Some(t)) => t,
        Ok(None) => return (Some(current), Vec::new()),
        Err(d) => return (Some(current), vec![d]),
    };
    match backend.observe(&target).await {
        Ok(None) => {
            tracing::info!(destination = %target.destination, "gone; removing from state");
            (None, Vec::new())
        }
        Ok(Some(observed)) => {
            if !observed.id.is_empty() {
                if current.source_digest.is_null() {
                    // Just imported: what is at the destination is what we own.
                    current.source_digest =
                        Value::string_or_null(id_digest(&observed.id).map(|d| d.to_string()));
                }
                if let Some(d) = observed.source_digest {
                    current.source_digest = Value::String(d.to_string());
                }
                current.id = Value::String(observed.id);
            }
            if current.delete_layers.is_null() {
                current.delete_layers = Value::Bool(true);
            }
            if current.referrers.is_null() {
                current.referrers = Value::Bool(true);
            }
            if current.copied_referrers.is_null() {
                current.copied_referrers = Value::List(Vec::new());
            }
            (Some(current), Vec::new())
        }
        Err(e) => (
            Some(current),
            vec![error_diagnostic(
                "Cannot read the destination image",
                &e,
                Some(attr::DESTINATION),
            )],
        ),
    }
}
