//! Registry credentials from `kubernetes.io/dockerconfigjson` (and legacy
//! `kubernetes.io/dockercfg`) Secrets.
//!
//! The Secrets named by `spec.sourceSecretRef` / `spec.destinationSecretRef` are read
//! from the object's own namespace on every sync (never cached across syncs, never
//! logged) and offered to the engine before its standard chain (Docker config, Google
//! ADC, anonymous). The tenant policy can withhold that standard chain per registry
//! ([`AmbientFor`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use imagesync_engine::auth::{docker_config_auth, ChainProvider};
use imagesync_engine::{Credential, CredentialProvider};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::SecretRef;
use crate::{Error, Result};

/// The Secret type the controller accepts.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The data key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The legacy Secret type the controller accepts too (`~/.dockercfg` format).
pub const DOCKER_CFG_TYPE: &str = "kubernetes.io/dockercfg";
/// The data key of a `kubernetes.io/dockercfg` Secret.
pub const DOCKER_CFG_KEY: &str = ".dockercfg";

/// Docker configs loaded from Secrets, tried in order (destination Secret first, so the
/// push credential wins when both Secrets name the same registry).
#[derive(Clone, Default)]
pub struct SecretCredentials {
    configs: Vec<LoadedSecret>,
}

#[derive(Clone)]
struct LoadedSecret {
    /// `namespace/name`, for diagnostics only.
    name: String,
    json: Arc<Vec<u8>>,
}

impl fmt::Debug for SecretCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the contents are secret.
        f.debug_list()
            .entries(self.configs.iter().map(|c| &c.name))
            .finish()
    }
}

impl SecretCredentials {
    /// Reads the given Secrets of `namespace` (in order). Returns the provider and a key
    /// that changes whenever one of the Secrets changes (`name@resourceVersion`).
    pub async fn load(
        client: &Client,
        namespace: &str,
        refs: &[&SecretRef],
    ) -> Result<(Self, String)> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let mut configs = Vec::new();
        let mut key = String::new();
        for r in refs {
            if configs
                .iter()
                .any(|c: &LoadedSecret| c.name == format!("{namespace}/{}", r.name))
            {
                continue;
            }
            let secret_error = |reason: String| Error::Secret {
                namespace: namespace.to_string(),
                name: r.name.clone(),
                reason,
            };
            let secret = match api.get_opt(&r.name).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(secret_error("not found".into())),
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    return Err(secret_error(format!("cannot read it: {}", status.message)))
                }
                Err(source) => {
                    return Err(Error::Kube {
                        context: format!("get secret {namespace}/{}", r.name),
                        source,
                    })
                }
            };
            let type_ = secret.type_.as_deref().unwrap_or("Opaque");
            let data_key = match type_ {
                DOCKER_CONFIG_JSON_TYPE => DOCKER_CONFIG_JSON_KEY,
                DOCKER_CFG_TYPE => DOCKER_CFG_KEY,
                other => {
                    return Err(Error::SecretTypeUnsupported {
                        namespace: namespace.to_string(),
                        name: r.name.clone(),
                        type_: other.to_string(),
                    })
                }
            };
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(data_key))
                .map(|b| b.0.clone());
            let Some(raw) = data else {
                return Err(secret_error(format!("type {type_} but no {data_key} key")));
            };
            let invalid = || secret_error(format!("{data_key} is not a valid docker config"));
            let json = if type_ == DOCKER_CFG_TYPE {
                // The legacy format is the `auths` map alone.
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&raw).map_err(|_| invalid())?;
                serde_json::to_vec(&serde_json::json!({ "auths": map })).map_err(|_| invalid())?
            } else {
                raw
            };
            // Validate the JSON now so a broken Secret is reported as such.
            docker_config_auth(&json, "validate.invalid").map_err(|_| invalid())?;
            key.push_str(&format!(
                "{namespace}/{}@{};",
                r.name,
                secret.metadata.resource_version.as_deref().unwrap_or("")
            ));
            configs.push(LoadedSecret {
                name: format!("{namespace}/{}", r.name),
                json: Arc::new(json),
            });
        }
        Ok((SecretCredentials { configs }, key))
    }

    /// True when no Secret was loaded.
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// This provider first, then `fallback` (the engine's standard chain).
    pub fn chained_before(
        self,
        fallback: Arc<dyn CredentialProvider>,
    ) -> Arc<dyn CredentialProvider> {
        Arc::new(ChainProvider::new().push(Arc::new(self)).push(fallback))
    }

    /// From raw docker config JSON documents (tests).
    pub fn from_json(docs: Vec<(String, Vec<u8>)>) -> Self {
        SecretCredentials {
            configs: docs
                .into_iter()
                .map(|(name, json)| LoadedSecret {
                    name,
                    json: Arc::new(json),
                })
                .collect(),
        }
    }
}

#[async_trait]
impl CredentialProvider for SecretCredentials {
    async fn credential(&self, registry: &str) -> imagesync_engine::Result<Option<Credential>> {
        for c in &self.configs {
            if let Some(cred) = docker_config_auth(&c.json, registry)? {
                return Ok(Some(cred));
            }
        }
        Ok(None)
    }
}

/// The controller's standard credentials, offered only to the registries the tenant
/// policy allows them for (`None`: every registry, the behaviour without a policy).
#[derive(Debug)]
pub struct AmbientFor {
    registries: Option<BTreeSet<String>>,
    inner: Arc<dyn CredentialProvider>,
}

impl AmbientFor {
    /// `inner` for `registries` only.
    pub fn new(registries: Option<BTreeSet<String>>, inner: Arc<dyn CredentialProvider>) -> Self {
        AmbientFor { registries, inner }
    }
}

#[async_trait]
impl CredentialProvider for AmbientFor {
    async fn credential(&self, registry: &str) -> imagesync_engine::Result<Option<Credential>> {
        match &self.registries {
            Some(allowed) if !allowed.contains(registry) => Ok(None),
            _ => self.inner.credential(registry).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_secret_naming_the_registry_wins_and_debug_hides_contents() {
        let dst = br#"{"auths":{"127.0.0.1:5000":{"auth":"ZHN0OnB3"}}}"#.to_vec(); // dst:pw
        let src = br#"{"auths":{"127.0.0.1:5000":{"auth":"c3JjOnB3"},"src.example":{"auth":"c3JjOnB3"}}}"#.to_vec();
        let p = SecretCredentials::from_json(vec![("ns/dst".into(), dst), ("ns/src".into(), src)]);
        assert_eq!(
            p.credential("127.0.0.1:5000").await.ok().flatten(),
            Some(Credential::basic("dst", "pw"))
        );
        assert_eq!(
            p.credential("src.example").await.ok().flatten(),
            Some(Credential::basic("src", "pw"))
        );
        assert_eq!(p.credential("other.example").await.ok().flatten(), None);
        let debug = format!("{p:?}");
        let gated = AmbientFor::new(
            Some(BTreeSet::from(["src.example".to_string()])),
            Arc::new(p.clone()),
        );
        assert_eq!(
            gated.credential("127.0.0.1:5000").await.ok().flatten(),
            None
        );
        assert_eq!(
            gated.credential("src.example").await.ok().flatten(),
            Some(Credential::basic("src", "pw"))
        );
        let open = AmbientFor::new(None, Arc::new(p.clone()));
        assert!(open
            .credential("127.0.0.1:5000")
            .await
            .ok()
            .flatten()
            .is_some());
        assert!(
            debug.contains("ns/dst") && !debug.contains("ZHN0"),
            "{debug}"
        );
    }
}
