//! The request observer: sees every HTTP request the engine sends to a registry.

use std::sync::Arc;

/// Called once per HTTP request the engine sends to a registry, retries included, with
/// the registry, the operation (`"HEAD manifest"`, `"PUT blob"`, ...) and the HTTP status
/// (`None` when the request failed without an answer).
#[derive(Clone)]
pub struct RequestObserver(Arc<ObserveFn>);

type ObserveFn = dyn Fn(&str, &'static str, Option<u16>) + Send + Sync;

impl RequestObserver {
    /// Wraps a callback.
    pub fn new(f: impl Fn(&str, &'static str, Option<u16>) + Send + Sync + 'static) -> Self {
        RequestObserver(Arc::new(f))
    }

    pub(crate) fn observe(&self, registry: &str, operation: &'static str, status: Option<u16>) {
        (self.0)(registry, operation, status)
    }
}

impl std::fmt::Debug for RequestObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestObserver")
    }
}
