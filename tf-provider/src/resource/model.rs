//! The resource's attributes ([`Model`]) and what they parse to ([`Target`]).

use std::collections::BTreeMap;
use std::time::Duration;

use imagesync_engine::{Reference, ReferrerPolicy};

use super::attr;
use crate::backend::{Backend, Target};
use crate::codec::Value;
use crate::diag::Diagnostic;
use crate::timeouts::DEFAULT_TIMEOUT;

/// The resource's attributes. Each is a [`Value`] so null and unknown survive.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// `id`.
    pub id: Value,
    /// `source`.
    pub source: Value,
    /// `destination`.
    pub destination: Value,
    /// `source_digest`.
    pub source_digest: Value,
    /// `delete_layers`.
    pub delete_layers: Value,
    /// `namespace` (Kubernetes mode; null in direct mode).
    pub namespace: Value,
    /// `name` (Kubernetes mode; null in direct mode).
    pub name: Value,
    /// `timeouts { create, delete }` (null when absent).
    pub timeouts: Value,
    /// `referrers` (bool; null before the plan fills in `true`).
    pub referrers: Value,
    /// `referrer_types` (list of strings, or null).
    pub referrer_types: Value,
    /// `copied_referrers` (list of `{digest, artifact_type}`).
    pub copied_referrers: Value,
    /// `platforms` (list of strings, null when absent).
    pub platforms: Value,
    /// `resync_interval` (Kubernetes mode).
    pub resync_interval: Value,
    /// `source_secret_ref = { name }` (Kubernetes mode).
    pub source_secret_ref: Value,
    /// `destination_secret_ref = { name }` (Kubernetes mode).
    pub destination_secret_ref: Value,
}

impl Model {
    /// Reads an object value; `None` for a null object.
    pub fn from_value(v: &Value) -> Option<Model> {
        if v.is_null() {
            return None;
        }
        Some(Model {
            id: v.get(attr::ID).clone(),
            source: v.get(attr::SOURCE).clone(),
            destination: v.get(attr::DESTINATION).clone(),
            source_digest: v.get(attr::SOURCE_DIGEST).clone(),
            delete_layers: v.get(attr::DELETE_LAYERS).clone(),
            namespace: v.get(attr::NAMESPACE).clone(),
            name: v.get(attr::NAME).clone(),
            timeouts: v.get(attr::TIMEOUTS).clone(),
            referrers: v.get(attr::REFERRERS).clone(),
            referrer_types: v.get(attr::REFERRER_TYPES).clone(),
            copied_referrers: v.get(attr::COPIED_REFERRERS).clone(),
            platforms: v.get(attr::PLATFORMS).clone(),
            resync_interval: v.get(attr::RESYNC_INTERVAL).clone(),
            source_secret_ref: v.get(attr::SOURCE_SECRET_REF).clone(),
            destination_secret_ref: v.get(attr::DESTINATION_SECRET_REF).clone(),
        })
    }

    /// The object value (every attribute of the schema present).
    pub fn to_value(&self) -> Value {
        let mut m = BTreeMap::new();
        m.insert(attr::ID.to_string(), self.id.clone());
        m.insert(attr::SOURCE.to_string(), self.source.clone());
        m.insert(attr::DESTINATION.to_string(), self.destination.clone());
        m.insert(attr::SOURCE_DIGEST.to_string(), self.source_digest.clone());
        m.insert(attr::DELETE_LAYERS.to_string(), self.delete_layers.clone());
        m.insert(attr::NAMESPACE.to_string(), self.namespace.clone());
        m.insert(attr::NAME.to_string(), self.name.clone());
        m.insert(attr::TIMEOUTS.to_string(), self.timeouts.clone());
        m.insert(attr::REFERRERS.to_string(), self.referrers.clone());
        m.insert(
            attr::REFERRER_TYPES.to_string(),
            self.referrer_types.clone(),
        );
        m.insert(
            attr::COPIED_REFERRERS.to_string(),
            self.copied_referrers.clone(),
        );
        m.insert(attr::PLATFORMS.to_string(), self.platforms.clone());
        m.insert(
            attr::RESYNC_INTERVAL.to_string(),
            self.resync_interval.clone(),
        );
        m.insert(
            attr::SOURCE_SECRET_REF.to_string(),
            self.source_secret_ref.clone(),
        );
        m.insert(
            attr::DESTINATION_SECRET_REF.to_string(),
            self.destination_secret_ref.clone(),
        );
        Value::Object(m)
    }

    pub(super) fn empty() -> Model {
        Model {
            id: Value::Null,
            source: Value::Null,
            destination: Value::Null,
            source_digest: Value::Null,
            delete_layers: Value::Null,
            namespace: Value::Null,
            name: Value::Null,
            timeouts: Value::Null,
            referrers: Value::Null,
            referrer_types: Value::Null,
            copied_referrers: Value::Null,
            platforms: Value::Null,
            resync_interval: Value::Null,
            source_secret_ref: Value::Null,
            destination_secret_ref: Value::Null,
        }
    }

    /// `referrers` and `referrer_types` as the engine's policy.
    pub(super) fn referrer_policy(&self) -> Result<ReferrerPolicy, Diagnostic> {
        let types: Vec<String> = self
            .referrer_types
            .as_list()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        ReferrerPolicy::checked(self.referrers.as_bool().unwrap_or(true), &types).map_err(|e| {
            Diagnostic::error("Invalid referrer_types", e.to_string()).at(attr::REFERRER_TYPES)
        })
    }

    /// The timeout `which`. Plans reject invalid values (see [`crate::timeouts`]); one
    /// still in a state written by an earlier version falls back to the default, so
    /// read and destroy keep working.
    fn timeout(&self, which: &str) -> Duration {
        crate::timeouts::timeout(&self.timeouts, which).unwrap_or_else(|d| {
            tracing::warn!(detail = %d.detail, "invalid timeouts.{which} in state; using the default");
            DEFAULT_TIMEOUT
        })
    }

    /// The parsed target; `Ok(None)` while source or destination is unknown.
    pub(super) fn target(&self) -> Result<Option<Target>, Diagnostic> {
        let source = parse_ref(&self.source, attr::SOURCE)?;
        let destination = parse_ref(&self.destination, attr::DESTINATION)?;
        let (Some(source), Some(destination)) = (source, destination) else {
            return Ok(None);
        };
        Ok(Some(Target {
            source,
            destination,
            destination_text: self.destination.as_str().unwrap_or_default().to_string(),
            delete_layers: self.delete_layers.as_bool().unwrap_or(true),
            namespace: self.namespace.as_str().map(str::to_string),
            name: self.name.as_str().map(str::to_string),
            create_timeout: self.timeout("create"),
            delete_timeout: self.timeout("delete"),
            only_blobs: None,
            referrers: self.referrer_policy()?,
            referrers_probe: None,
            owned_referrers: Vec::new(),
            platforms: crate::spec_fields::platforms(&self.platforms)
                .map_err(|d| d.at(attr::PLATFORMS))?,
            known: None,
            kube: crate::spec_fields::KubeSpec::of(self),
        }))
    }
}

/// `copied_referrers` for `list`.
pub(crate) fn referrers_value(list: &[imagesync_engine::Referrer]) -> Value {
    Value::List(
        list.iter()
            .map(|r| {
                Value::Object(BTreeMap::from([
                    ("digest".to_string(), Value::String(r.digest.to_string())),
                    (
                        "artifact_type".to_string(),
                        Value::String(r.artifact_type.clone()),
                    ),
                ]))
            })
            .collect(),
    )
}

/// Parses a reference attribute; `Ok(None)` when the value is unknown or null.
pub(super) fn parse_ref(value: &Value, attribute: &str) -> Result<Option<Reference>, Diagnostic> {
    match value {
        Value::String(s) => Reference::parse(s).map(Some).map_err(|e| {
            Diagnostic::error(
                format!("Invalid image reference in {attribute:?}"),
                format!(
                    "{e}\n\nWrite a reference like \"registry.example.com/team/app:1.2\" or \
                     \"docker.io/library/busybox@sha256:<64 hex>\" (lowercase repository)."
                ),
            )
            .at(attribute)
        }),
        Value::Unknown | Value::Null => Ok(None),
        _ => Err(Diagnostic::error(format!("{attribute:?} must be a string"), "").at(attribute)),
    }
}

/// Sets the namespace and name of the backend's object (see [`Backend::identity`]) where
/// `missing` holds; a name that cannot be derived (unknown destination) becomes
/// `no_name`. False in direct mode, which has no object.
pub(super) fn fill_identity(
    backend: &dyn Backend,
    m: &mut Model,
    missing: fn(&Value) -> bool,
    no_name: Value,
) -> bool {
    let Some(identity) = backend.identity(m.destination.as_str()) else {
        return false;
    };
    if missing(&m.namespace) {
        m.namespace = Value::String(identity.namespace);
    }
    if missing(&m.name) {
        m.name = identity.name.map_or(no_name, Value::String);
    }
    true
}
