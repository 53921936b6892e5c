//! The per-credential engine cache: one engine per namespace and credential set (the
//! object's Secrets chained before the standard credentials, which the policy may
//! withhold per registry).

use std::sync::Arc;

use imagesync_engine::{CredentialProvider, Digest, Engine, Reference};
use kube::ResourceExt;

use crate::api::{ImageSync, SecretRef};
use crate::credentials::{AmbientFor, SecretCredentials};
use crate::policy::Ambient;
use crate::{Error, Result};

use super::Context;

/// Engines kept (one per namespace and credential set); beyond, the cache starts over.
const MAX_ENGINES: usize = 1024;

impl Context {
    /// The engine for `obj` copying between the registries of `source` and
    /// `destination`: one per namespace and credential set (the object's Secrets, read
    /// now, chained before the standard credentials, which the policy may withhold per
    /// registry). Engines are never shared across namespaces, so neither are their blob
    /// locations: a tenant cannot have another tenant's layer mounted into its repository.
    pub(crate) async fn engine_for(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
        ambient: Ambient,
    ) -> Result<Engine> {
        let refs: Vec<&SecretRef> = [
            &obj.spec.destination_secret_ref,
            &obj.spec.source_secret_ref,
        ]
        .into_iter()
        .flatten()
        .collect();
        let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let (creds, secrets_key) = if refs.is_empty() {
            (SecretCredentials::default(), String::new())
        } else {
            SecretCredentials::load(&self.client, &namespace, &refs).await?
        };
        let registries = ambient.registries(source.registry(), destination.registry());
        Ok(
            self.namespace_engine(&namespace, &secrets_key, registries, |ambient| {
                if refs.is_empty() {
                    ambient
                } else {
                    creds.chained_before(ambient)
                }
            }),
        )
    }

    /// The engine without the object's Secrets (they are unusable), ambient credentials
    /// as the policy allows.
    pub(super) fn engine_without_secrets(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
        ambient: Ambient,
    ) -> Engine {
        let namespace = obj.namespace().unwrap_or_default();
        let registries = ambient.registries(source.registry(), destination.registry());
        self.namespace_engine(&namespace, "", registries, |ambient| ambient)
    }

    /// The cached engine of `namespace` with the credential set named `secrets_key`,
    /// ambient credentials limited to `registries` (all when `None`).
    pub(super) fn namespace_engine(
        &self,
        namespace: &str,
        secrets_key: &str,
        registries: Option<std::collections::BTreeSet<String>>,
        credentials: impl FnOnce(Arc<dyn CredentialProvider>) -> Arc<dyn CredentialProvider>,
    ) -> Engine {
        let mut key = format!("ns:{namespace}|{secrets_key}");
        if let Some(r) = &registries {
            key.push_str("|ambient:");
            key.push_str(&r.iter().cloned().collect::<Vec<_>>().join(","));
        }
        self.cached_engine(key, || {
            let ambient: Arc<dyn CredentialProvider> = match registries {
                None => self.base_credentials.clone(),
                Some(r) => Arc::new(AmbientFor::new(Some(r), self.base_credentials.clone())),
            };
            credentials(ambient)
        })
    }

    pub(super) fn cached_engine(
        &self,
        key: String,
        credentials: impl FnOnce() -> Arc<dyn CredentialProvider>,
    ) -> Engine {
        let mut engines = match self.engines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = engines.get(&key) {
            return e.clone();
        }
        if engines.len() > MAX_ENGINES {
            engines.clear();
        }
        let engine = self.engine.with_credentials(credentials());
        engines.insert(key, engine.clone());
        engine
    }

    pub(super) async fn head(
        &self,
        engine: &Engine,
        reference: &Reference,
        what: &str,
    ) -> Result<Option<Digest>> {
        engine
            .digest(reference)
            .await
            .map_err(|source| Error::Engine {
                context: format!("check {what} {reference}"),
                source,
            })
    }
}
