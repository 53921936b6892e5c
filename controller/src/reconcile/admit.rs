//! What the tenant policy allows an object, and which other objects it competes with
//! for its destination.

use std::collections::BTreeMap;

use imagesync_engine::Reference;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt};
use tracing::debug;

use crate::api::ImageSync;
use crate::policy::{Ambient, Decision as PolicyDecision, Policy};
use crate::{Error, Result};

use super::{ownership, Context};

impl Context {
    /// What the tenant policy says about `obj` copying `source` to `destination` (the
    /// Namespace's labels are read only when a rule selects namespaces by label).
    pub async fn policy_decision(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
    ) -> Result<PolicyDecision> {
        let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        self.namespace_decision(&namespace, |policy, labels| {
            policy.evaluate(&namespace, labels, source, destination)
        })
        .await
    }

    /// What `decide` says with the policy in force and the labels of `namespace` (read
    /// only when a rule selects namespaces by label); everything is allowed without a
    /// policy.
    pub async fn namespace_decision(
        &self,
        namespace: &str,
        decide: impl FnOnce(&Policy, &BTreeMap<String, String>) -> PolicyDecision,
    ) -> Result<PolicyDecision> {
        let (Some(policy), _) = self.policy.current() else {
            return Ok(PolicyDecision::ALLOW_ALL);
        };
        let labels = if policy.needs_namespace_labels() {
            let api: Api<Namespace> = Api::all(self.client.clone());
            match api.get_opt(namespace).await {
                Ok(ns) => ns.and_then(|n| n.metadata.labels).unwrap_or_default(),
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    return Ok(PolicyDecision::Deny {
                        message: format!(
                            "the policy selects namespaces by label but the controller may not read namespace {namespace}: {}",
                            s.message
                        ),
                    })
                }
                Err(source) => {
                    return Err(Error::Kube {
                        context: format!("get namespace {namespace} (policy namespaceSelector)"),
                        source,
                    })
                }
            }
        } else {
            BTreeMap::new()
        };
        Ok(decide(&policy, &labels))
    }

    /// Like [`Context::policy_decision`], with a denial as [`Error::PolicyDenied`].
    pub(super) async fn policy_allows(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
    ) -> Result<Ambient> {
        match self.policy_decision(obj, source, destination).await? {
            PolicyDecision::Allow { rule, ambient } => {
                if let Some(rule) = rule {
                    debug!(rule = %rule, ?ambient, "allowed by policy");
                }
                Ok(ambient)
            }
            PolicyDecision::Deny { message } => Err(Error::PolicyDenied { message }),
        }
    }

    /// The other objects naming the tag `destination` names (canonically compared),
    /// earliest first, among those the policy allows to write it: an object that may
    /// never write a tag does not hold it.
    pub(super) async fn rivals(
        &self,
        obj: &ImageSync,
        destination: &Reference,
    ) -> Result<Vec<ImageSync>> {
        let Some(store) = self.store.get() else {
            return Ok(Vec::new());
        };
        // Only the objects whose destination ends like this one's can name its tag.
        let tail = ownership::repo_tail(&obj.spec.destination);
        let candidates: Vec<_> = self
            .destinations
            .named(tail)
            .iter()
            .filter_map(|r| store.get(r))
            .collect();
        let mut allowed = Vec::new();
        for other in ownership::competitors(obj, destination, &candidates) {
            let Ok(source) = Reference::parse(&other.spec.source) else {
                continue;
            };
            if let PolicyDecision::Allow { .. } =
                self.policy_decision(other, &source, destination).await?
            {
                allowed.push(other.clone());
            }
        }
        Ok(allowed)
    }
}
