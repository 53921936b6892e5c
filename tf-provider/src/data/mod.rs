//! The data sources, `imagesync_image` ([`image`]) and `imagesync_tags` ([`tags`]).
//!
//! They copy nothing: they read the registry directly with the provider's registry
//! settings (`insecure_registries`, `ca_file`, `docker_config`, `registry_auth`), in
//! direct mode and in Kubernetes mode alike (where the controller, not Terraform, holds
//! the credentials of the `ImageSync` objects: the provider block's are used here).

pub mod image;
pub mod tags;

use imagesync_engine::{Engine, Reference};
use tokio::sync::RwLock;

use crate::codec::Value;
use crate::diag::Diagnostic;
use crate::proto::tfplugin6::Schema;

type Diags = Vec<Diagnostic>;

/// The data source schemas, by type name.
pub fn schemas() -> Vec<(String, Schema)> {
    vec![
        (image::TYPE.to_string(), image::schema()),
        (tags::TYPE.to_string(), tags::schema()),
    ]
}

fn unknown_type(type_name: &str) -> Diagnostic {
    Diagnostic::error(
        format!("Unknown data source {type_name:?}"),
        format!(
            "This provider has the data sources {:?} and {:?}.",
            image::TYPE,
            tags::TYPE
        ),
    )
}

/// `terraform validate` of a data source's configuration (no provider configured; values
/// from variables or other resources are unknown and not checked here).
pub fn validate(type_name: &str, config: &Value) -> Diags {
    match type_name {
        image::TYPE => image::validate(config),
        tags::TYPE => tags::validate(config),
        other => vec![unknown_type(other)],
    }
}

/// The registry engine the data sources read with, set when the provider is configured.
#[derive(Debug, Default)]
pub struct Registry {
    engine: RwLock<Option<Result<Engine, String>>>,
}

impl Registry {
    /// Installs the engine, or why it could not be built (reported when a data source is
    /// read, so that a Kubernetes-mode configuration without data sources still works).
    pub async fn set(&self, engine: Result<Engine, String>) {
        *self.engine.write().await = Some(engine);
    }

    async fn engine(&self) -> Result<Engine, Diagnostic> {
        match self.engine.read().await.as_ref() {
            Some(Ok(engine)) => Ok(engine.clone()),
            Some(Err(e)) => Err(Diagnostic::error(
                "Cannot set up the registry client for data sources",
                format!("{e}\n\nCheck `ca_file` in the provider block."),
            )),
            None => Err(Diagnostic::error(
                "Provider not configured",
                "Terraform read a data source before configuring the provider; this is a bug.",
            )),
        }
    }

    /// Reads data source `type_name` for `config`: the state to store (the configuration
    /// with the computed attributes filled in), or the errors.
    pub async fn read(&self, type_name: &str, config: &Value) -> Result<Value, Diags> {
        let diags = validate(type_name, config);
        if crate::diag::has_errors(&diags) {
            return Err(diags);
        }
        let engine = self.engine().await.map_err(|d| vec![d])?;
        let computed = match type_name {
            image::TYPE => image::read(&engine, config).await,
            tags::TYPE => tags::read(&engine, config).await,
            other => Err(unknown_type(other)),
        }
        .map_err(|d| vec![d])?;
        let mut state = match config {
            Value::Object(m) => m.clone(),
            _ => Default::default(),
        };
        state.extend(computed);
        Ok(Value::Object(state))
    }
}

/// A known string attribute (`Ok(None)`: null or unknown).
fn known_string<'a>(config: &'a Value, attribute: &str) -> Result<Option<&'a str>, Diagnostic> {
    match config.get(attribute) {
        Value::String(s) => Ok(Some(s)),
        Value::Null | Value::Unknown => Ok(None),
        _ => Err(Diagnostic::error(format!("{attribute:?} must be a string"), "").at(attribute)),
    }
}

/// Parses a reference attribute; `Ok(None)` while unknown or null.
fn reference(
    config: &Value,
    attribute: &str,
    example: &str,
) -> Result<Option<Reference>, Diagnostic> {
    let Some(s) = known_string(config, attribute)? else {
        return Ok(None);
    };
    Reference::parse(s).map(Some).map_err(|e| {
        Diagnostic::error(
            format!("Invalid {attribute:?}"),
            format!("{e}\n\nWrite it like {example:?} (lowercase repository)."),
        )
        .at(attribute)
    })
}

/// The value of a required attribute at read time (Terraform reads a data source only
/// once its configuration is known).
fn required<T>(value: Option<T>, attribute: &str) -> Result<T, Diagnostic> {
    value.ok_or_else(|| {
        Diagnostic::error(
            format!("{attribute:?} must be known when the data source is read"),
            "",
        )
        .at(attribute)
    })
}
