//! The gRPC provider services. Protocols 5 and 6 share the message types (see
//! `proto/tfplugin5.proto`) and are thin adapters over [`Core`].

use std::sync::Arc;

use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::backend::{Backend, Direct};
use crate::codec::Value;
pub use crate::config::{provider_config, ProviderConfig};
use crate::diag::{self, Diagnostic, PathStep};
use crate::kube::Kube;
use crate::proto::tfplugin6::{self as pb, DynamicValue};
use crate::resource::{self, Model, Private};
use crate::schema;

/// State shared by every RPC.
#[derive(Debug, Default)]
pub struct Core {
    backend: RwLock<Option<Arc<dyn Backend>>>,
    /// What the data sources read registries with (in either mode).
    registry: crate::data::Registry,
    /// Requested by `GRPCController.Shutdown` (or SIGTERM).
    pub stop: crate::plugin::Stop,
}

type Diags = Vec<Diagnostic>;

fn decode(dv: Option<&DynamicValue>) -> Result<Value, Diagnostic> {
    let (m, j) = dv.map_or((&[][..], &[][..]), |d| (&d.msgpack[..], &d.json[..]));
    Value::from_dynamic(m, j)
        .map_err(|e| Diagnostic::error("Cannot decode a value from Terraform", e.to_string()))
}

fn encode(v: &Value) -> Result<DynamicValue, Diagnostic> {
    v.to_msgpack()
        .map(|msgpack| DynamicValue {
            msgpack,
            json: Vec::new(),
        })
        .map_err(|e| Diagnostic::error("Cannot encode a value for Terraform", e.to_string()))
}

fn encode_model(m: &Option<Model>) -> Result<DynamicValue, Diagnostic> {
    encode(&m.as_ref().map_or(Value::Null, Model::to_value))
}

fn check_type(type_name: &str) -> Result<(), Diagnostic> {
    if type_name == schema::RESOURCE_TYPE {
        Ok(())
    } else {
        Err(Diagnostic::error(
            format!("Unknown resource type {type_name:?}"),
            format!(
                "This provider has one resource type, {:?}.",
                schema::RESOURCE_TYPE
            ),
        ))
    }
}

impl Core {
    async fn backend(&self) -> Result<Arc<dyn Backend>, Diagnostic> {
        self.backend.read().await.clone().ok_or_else(|| {
            Diagnostic::error(
                "Provider not configured",
                "Terraform called the provider before configuring it; this is a bug.",
            )
        })
    }

    /// Installs a backend (tests use a fake one).
    pub async fn set_backend(&self, backend: Arc<dyn Backend>) {
        *self.backend.write().await = Some(backend);
    }

    fn schema() -> pb::get_provider_schema::Response {
        pb::get_provider_schema::Response {
            provider: Some(schema::provider()),
            resource_schemas: [(schema::RESOURCE_TYPE.to_string(), schema::resource())].into(),
            data_source_schemas: crate::data::schemas().into_iter().collect(),
            ..Default::default()
        }
    }

    fn validate_provider(config: Option<&DynamicValue>) -> Diags {
        match decode(config) {
            Ok(v) => {
                let (_, diags) = provider_config(&v);
                // Unknown values are fine at validation time.
                diags
                    .into_iter()
                    .filter(|d| !d.summary.contains("must be known"))
                    .collect()
            }
            Err(d) => vec![d],
        }
    }

    async fn configure(&self, config: Option<&DynamicValue>) -> Diags {
        let v = match decode(config) {
            Ok(v) => v,
            Err(d) => return vec![d],
        };
        let (cfg, mut diags) = provider_config(&v);
        if diag::has_errors(&diags) {
            return diags;
        }
        if let Some(kcfg) = cfg.kubernetes {
            // Data sources read registries directly, with the provider block's settings.
            let registry = Direct::new(cfg.direct).map(|d| d.engine().clone());
            self.registry.set(registry.map_err(|e| e.to_string())).await;
            match Kube::new(kcfg).await {
                Ok(kube) => self.set_backend(Arc::new(kube)).await,
                Err(e) => diags.push(
                    Diagnostic::error("Cannot set up the Kubernetes client", format!("{e:#}"))
                        .at("kubernetes"),
                ),
            }
            return diags;
        }
        let cfg = cfg.direct;
        let ca_file = cfg.ca_file.clone();
        match Direct::new(cfg) {
            Ok(direct) => {
                self.registry.set(Ok(direct.engine().clone())).await;
                self.set_backend(Arc::new(direct)).await
            }
            Err(e) => {
                let d = Diagnostic::error("Cannot set up the registry client", e.to_string());
                diags.push(if ca_file.is_some() {
                    d.at("ca_file")
                } else {
                    d
                });
            }
        }
        diags
    }

    fn validate_resource(req: &pb::validate_resource_config::Request) -> Diags {
        if let Err(d) = check_type(&req.type_name) {
            return vec![d];
        }
        match decode(req.config.as_ref()) {
            Ok(v) => resource::validate(&v),
            Err(d) => vec![d],
        }
    }

    fn upgrade(req: pb::upgrade_resource_state::Request) -> pb::upgrade_resource_state::Response {
        let run = || -> Result<DynamicValue, Diagnostic> {
            check_type(&req.type_name)?;
            let raw = req.raw_state.unwrap_or_default();
            let value = if !raw.json.is_empty() {
                Value::from_json(&raw.json)
                    .map_err(|e| Diagnostic::error("Cannot read the stored state", e.to_string()))?
            } else {
                Value::Object(
                    raw.flatmap
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                )
            };
            encode_model(&Some(resource::upgrade(value)))
        };
        match run() {
            Ok(v) => pb::upgrade_resource_state::Response {
                upgraded_state: Some(v),
                diagnostics: Vec::new(),
            },
            Err(d) => pb::upgrade_resource_state::Response {
                upgraded_state: None,
                diagnostics: diag::to_proto(vec![d]),
            },
        }
    }

    async fn read(&self, req: pb::read_resource::Request) -> pb::read_resource::Response {
        let run = async {
            check_type(&req.type_name)?;
            let current = Model::from_value(&decode(req.current_state.as_ref())?);
            let Some(current) = current else {
                return Ok((encode_model(&None)?, Vec::new()));
            };
            let backend = self.backend().await?;
            let (state, diags) = resource::read(backend.as_ref(), current).await;
            Ok::<_, Diagnostic>((encode_model(&state)?, diags))
        };
        match run.await {
            Ok((state, diags)) => pb::read_resource::Response {
                new_state: Some(state),
                diagnostics: diag::to_proto(diags),
                private: req.private,
            },
            Err(d) => pb::read_resource::Response {
                new_state: req.current_state,
                diagnostics: diag::to_proto(vec![d]),
                private: req.private,
            },
        }
    }

    async fn plan(
        &self,
        req: pb::plan_resource_change::Request,
    ) -> pb::plan_resource_change::Response {
        let run = async {
            check_type(&req.type_name)?;
            let prior = Model::from_value(&decode(req.prior_state.as_ref())?);
            let proposed = Model::from_value(&decode(req.proposed_new_state.as_ref())?);
            if proposed.is_none() {
                return Ok(resource::Planned::default());
            }
            let backend = self.backend().await?;
            Ok::<_, Diagnostic>(
                resource::plan_with_private(
                    backend.as_ref(),
                    prior,
                    proposed,
                    &Private::decode(&req.prior_private),
                )
                .await,
            )
        };
        match run.await {
            Ok(planned) => {
                let state = if diag::has_errors(&planned.diags) {
                    None
                } else {
                    planned
                        .state
                        .as_ref()
                        .map(|m| encode_model(&Some(m.clone())))
                };
                let mut diags = planned.diags;
                let planned_state = match state {
                    Some(Ok(s)) => Some(s),
                    Some(Err(d)) => {
                        diags.push(d);
                        None
                    }
                    None => encode_model(&None).ok(),
                };
                pb::plan_resource_change::Response {
                    planned_state,
                    requires_replace: planned
                        .requires_replace
                        .iter()
                        .map(|a| diag::path_to_proto(&[PathStep::Attr(a.to_string())]))
                        .collect(),
                    planned_private: req.prior_private,
                    diagnostics: diag::to_proto(diags),
                }
            }
            Err(d) => pb::plan_resource_change::Response {
                diagnostics: diag::to_proto(vec![d]),
                ..Default::default()
            },
        }
    }

    async fn apply(
        &self,
        req: pb::apply_resource_change::Request,
    ) -> pb::apply_resource_change::Response {
        let run = async {
            check_type(&req.type_name)?;
            let prior = Model::from_value(&decode(req.prior_state.as_ref())?);
            let planned = Model::from_value(&decode(req.planned_state.as_ref())?);
            let backend = self.backend().await?;
            let applied = resource::apply(
                backend.as_ref(),
                prior,
                planned,
                Private::decode(&req.planned_private),
            )
            .await;
            Ok::<_, Diagnostic>((encode_model(&applied.state)?, applied))
        };
        match run.await {
            Ok((state, applied)) => pb::apply_resource_change::Response {
                new_state: Some(state),
                private: applied.private.encode(),
                diagnostics: diag::to_proto(applied.diags),
            },
            Err(d) => pb::apply_resource_change::Response {
                new_state: req.prior_state,
                private: req.planned_private,
                diagnostics: diag::to_proto(vec![d]),
            },
        }
    }

    fn import(req: pb::import_resource_state::Request) -> pb::import_resource_state::Response {
        let run = || -> Result<DynamicValue, Diagnostic> {
            check_type(&req.type_name)?;
            encode_model(&Some(resource::import(&req.id)?))
        };
        match run() {
            Ok(state) => pb::import_resource_state::Response {
                imported_resources: vec![pb::import_resource_state::ImportedResource {
                    type_name: req.type_name,
                    state: Some(state),
                    // The user declared the tag as this resource's.
                    private: Private::imported().encode(),
                }],
                diagnostics: Vec::new(),
            },
            Err(d) => pb::import_resource_state::Response {
                imported_resources: Vec::new(),
                diagnostics: diag::to_proto(vec![d]),
            },
        }
    }

    fn validate_data_source(req: &pb::validate_data_resource_config::Request) -> Diags {
        match decode(req.config.as_ref()) {
            Ok(v) => crate::data::validate(&req.type_name, &v),
            Err(d) => vec![d],
        }
    }

    async fn read_data_source(
        &self,
        req: &pb::read_data_source::Request,
    ) -> pb::read_data_source::Response {
        let read = match decode(req.config.as_ref()) {
            Ok(config) => self.registry.read(&req.type_name, &config).await,
            Err(d) => Err(vec![d]),
        };
        match read.and_then(|state| encode(&state).map_err(|d| vec![d])) {
            Ok(state) => pb::read_data_source::Response {
                state: Some(state),
                diagnostics: Vec::new(),
            },
            Err(diags) => pb::read_data_source::Response {
                state: None,
                diagnostics: diag::to_proto(diags),
            },
        }
    }
}

/// The provider service, for both protocol versions.
#[derive(Debug, Clone, Default)]
pub struct ProviderService {
    core: Arc<Core>,
}

impl ProviderService {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> ProviderService {
        ProviderService { core }
    }
}

pub(crate) fn ok<T>(t: T) -> Result<Response<T>, Status> {
    Ok(Response::new(t))
}

// === impl protocol 6 ===

#[tonic::async_trait]
impl pb::provider_server::Provider for ProviderService {
    async fn get_provider_schema(
        &self,
        _: Request<pb::get_provider_schema::Request>,
    ) -> Result<Response<pb::get_provider_schema::Response>, Status> {
        ok(Core::schema())
    }

    async fn validate_provider_config(
        &self,
        req: Request<pb::validate_provider_config::Request>,
    ) -> Result<Response<pb::validate_provider_config::Response>, Status> {
        ok(pb::validate_provider_config::Response {
            diagnostics: diag::to_proto(Core::validate_provider(req.get_ref().config.as_ref())),
        })
    }

    async fn validate_resource_config(
        &self,
        req: Request<pb::validate_resource_config::Request>,
    ) -> Result<Response<pb::validate_resource_config::Response>, Status> {
        ok(pb::validate_resource_config::Response {
            diagnostics: diag::to_proto(Core::validate_resource(req.get_ref())),
        })
    }

    async fn validate_data_resource_config(
        &self,
        req: Request<pb::validate_data_resource_config::Request>,
    ) -> Result<Response<pb::validate_data_resource_config::Response>, Status> {
        ok(pb::validate_data_resource_config::Response {
            diagnostics: diag::to_proto(Core::validate_data_source(req.get_ref())),
        })
    }

    async fn upgrade_resource_state(
        &self,
        req: Request<pb::upgrade_resource_state::Request>,
    ) -> Result<Response<pb::upgrade_resource_state::Response>, Status> {
        ok(Core::upgrade(req.into_inner()))
    }

    async fn configure_provider(
        &self,
        req: Request<pb::configure_provider::Request>,
    ) -> Result<Response<pb::configure_provider::Response>, Status> {
        ok(pb::configure_provider::Response {
            diagnostics: diag::to_proto(self.core.configure(req.get_ref().config.as_ref()).await),
        })
    }

    async fn read_resource(
        &self,
        req: Request<pb::read_resource::Request>,
    ) -> Result<Response<pb::read_resource::Response>, Status> {
        ok(self.core.read(req.into_inner()).await)
    }

    async fn plan_resource_change(
        &self,
        req: Request<pb::plan_resource_change::Request>,
    ) -> Result<Response<pb::plan_resource_change::Response>, Status> {
        ok(self.core.plan(req.into_inner()).await)
    }

    async fn apply_resource_change(
        &self,
        req: Request<pb::apply_resource_change::Request>,
    ) -> Result<Response<pb::apply_resource_change::Response>, Status> {
        ok(self.core.apply(req.into_inner()).await)
    }

    async fn import_resource_state(
        &self,
        req: Request<pb::import_resource_state::Request>,
    ) -> Result<Response<pb::import_resource_state::Response>, Status> {
        ok(Core::import(req.into_inner()))
    }

    async fn read_data_source(
        &self,
        req: Request<pb::read_data_source::Request>,
    ) -> Result<Response<pb::read_data_source::Response>, Status> {
        ok(self.core.read_data_source(req.get_ref()).await)
    }

    async fn stop_provider(
        &self,
        _: Request<pb::stop_provider::Request>,
    ) -> Result<Response<pb::stop_provider::Response>, Status> {
        ok(pb::stop_provider::Response::default())
    }
}

mod v5;

#[cfg(test)]
mod tests {
    use super::*;

    /// The private state on the wire (the same messages serve protocols 5 and 6): import
    /// records ownership, read hands the bytes back unchanged, plan passes them on.
    #[tokio::test]
    async fn private_state_is_set_by_import_and_carried_by_read_and_plan() {
        let imported = Core::import(pb::import_resource_state::Request {
            type_name: schema::RESOURCE_TYPE.into(),
            id: "127.0.0.1:5000/src/app:1,127.0.0.1:6000/dst/app:1".into(),
        });
        let private = imported.imported_resources[0].private.clone();
        assert_eq!(
            Private::decode(&private).ownership,
            Some(resource::Ownership::Imported)
        );
        let core = Core::default();
        // A null current state needs no backend: read answers with the bytes it got.
        let read = core
            .read(pb::read_resource::Request {
                type_name: schema::RESOURCE_TYPE.into(),
                current_state: Some(encode(&Value::Null).unwrap()),
                private: private.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(read.private, private);
        let planned = core
            .plan(pb::plan_resource_change::Request {
                type_name: schema::RESOURCE_TYPE.into(),
                prior_state: Some(encode(&Value::Null).unwrap()),
                proposed_new_state: Some(encode(&Value::Null).unwrap()),
                prior_private: private.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(planned.planned_private, private);
    }

    /// The data sources are declared, and an unconfigured provider refuses to read them
    /// rather than answering with an empty state.
    #[tokio::test]
    async fn data_sources_are_declared_and_validated() {
        let schema = Core::schema();
        let mut names: Vec<&String> = schema.data_source_schemas.keys().collect();
        names.sort();
        assert_eq!(names, ["imagesync_image", "imagesync_tags"]);
        let config = Value::Object(
            [
                (
                    "repository".to_string(),
                    Value::String("127.0.0.1:5000/a".into()),
                ),
                ("semver".to_string(), Value::String("nope".into())),
            ]
            .into(),
        );
        let diags = Core::validate_data_source(&pb::validate_data_resource_config::Request {
            type_name: "imagesync_tags".into(),
            config: Some(encode(&config).unwrap()),
        });
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].path, vec![PathStep::Attr("semver".into())]);
        let unknown = Core::validate_data_source(&pb::validate_data_resource_config::Request {
            type_name: "imagesync_nope".into(),
            config: Some(encode(&Value::Null).unwrap()),
        });
        assert!(unknown[0].summary.contains("Unknown data source"));
        let read = Core::default()
            .read_data_source(&pb::read_data_source::Request {
                type_name: "imagesync_image".into(),
                config: Some(
                    encode(&Value::Object(
                        [(
                            "reference".to_string(),
                            Value::String("127.0.0.1:1/a:1".into()),
                        )]
                        .into(),
                    ))
                    .unwrap(),
                ),
                provider_meta: None,
            })
            .await;
        assert!(read.state.is_none());
        assert_eq!(read.diagnostics[0].summary, "Provider not configured");
    }

    #[test]
    fn schema_declares_the_resource_and_sensitive_password() {
        let schema = Core::schema();
        let resource = &schema.resource_schemas[schema::RESOURCE_TYPE];
        let names: Vec<&str> = resource
            .block
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        for n in [
            "id",
            "source",
            "destination",
            "source_digest",
            "delete_layers",
            "namespace",
            "name",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let provider = schema.provider.unwrap().block.unwrap();
        let auth = provider
            .block_types
            .iter()
            .find(|b| b.type_name == "registry_auth")
            .unwrap();
        let password = auth
            .block
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|a| a.name == "password")
            .unwrap();
        assert!(password.sensitive && password.required);
    }
}
