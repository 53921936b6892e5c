//! The `imagesync` resource: validate, plan, apply, read, import and state upgrade,
//! written once against [`Backend`] and shared by protocols 5 and 6.
//!
//! Semantics (see the README and `docs/resources/imagesync.md`):
//! - Plan resolves the source tag by HEAD. A different digest than `source_digest` in
//!   state plans an in-place re-sync: copy the new image, move the tag, keep the previous
//!   digest (untagged) until destroy. `id` is planned as `<repo>@<source_digest>` whenever
//!   that digest is known (a copy keeps it). A `source` change that resolves to the same
//!   digest is an in-place update that copies nothing. An unknown `source` does not fail
//!   the plan; an unreachable source fails a create but only warns for an existing
//!   resource (destroy never needs the source).
//! - Read refreshes `id` from the destination (HEAD). Not found (and only that) removes
//!   the resource from state; a destination pointing at another digest than
//!   `source_digest` shows as drift and plans an in-place re-sync.
//! - Create and re-sync copy `source@<planned digest>`, never the tag again.
//! - Delete removes only what the resource wrote ([`apply`], [`crate::private`]): not a
//!   destination that already held the image at create (adopted), only while the tag
//!   still points at the digest written, and only blobs this resource uploaded.
//! - Kubernetes mode ([`crate::kube`]): plans do not look at registries (the controller
//!   follows the source); apply writes the `ImageSync` object and waits for `Ready`; read
//!   takes `id` and `source_digest` from its status; a gone object leaves the state.

use std::collections::BTreeMap;
use std::time::Duration;

use imagesync_engine::{Digest, ErrorKind, Reference, ReferrerPolicy};

use crate::backend::{Backend, BackendError, Target};
use crate::codec::Value;
use crate::diag::Diagnostic;
pub use crate::private::{Ownership, Private};
pub use crate::timeouts::{parse_duration, DEFAULT_TIMEOUT};

/// Attribute names.
pub mod attr {
    /// `id`.
    pub const ID: &str = "id";
    /// `source`.
    pub const SOURCE: &str = "source";
    /// `destination`.
    pub const DESTINATION: &str = "destination";
    /// `source_digest`.
    pub const SOURCE_DIGEST: &str = "source_digest";
    /// `delete_layers`.
    pub const DELETE_LAYERS: &str = "delete_layers";
    /// `namespace` (Kubernetes mode).
    pub const NAMESPACE: &str = "namespace";
    /// `name` (Kubernetes mode).
    pub const NAME: &str = "name";
    /// The `timeouts` block (Kubernetes mode).
    pub const TIMEOUTS: &str = "timeouts";
    /// `referrers`.
    pub const REFERRERS: &str = "referrers";
    /// `referrer_types`.
    pub const REFERRER_TYPES: &str = "referrer_types";
    /// `copied_referrers`.
    pub const COPIED_REFERRERS: &str = "copied_referrers";
    /// `platforms`.
    pub const PLATFORMS: &str = "platforms";
    /// `resync_interval` (Kubernetes mode).
    pub const RESYNC_INTERVAL: &str = "resync_interval";
    /// `source_secret_ref` (Kubernetes mode).
    pub const SOURCE_SECRET_REF: &str = "source_secret_ref";
    /// `destination_secret_ref` (Kubernetes mode).
    pub const DESTINATION_SECRET_REF: &str = "destination_secret_ref";
}

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

    fn empty() -> Model {
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
    fn referrer_policy(&self) -> Result<ReferrerPolicy, Diagnostic> {
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
    fn target(&self) -> Result<Option<Target>, Diagnostic> {
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
fn parse_ref(value: &Value, attribute: &str) -> Result<Option<Reference>, Diagnostic> {
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

pub use crate::backend::make_id;

/// The digest part of an `id`.
pub fn id_digest(id: &str) -> Option<Digest> {
    id.rsplit_once('@').and_then(|(_, d)| d.parse().ok())
}

/// Turns a backend error into a diagnostic with advice for its kind.
pub fn error_diagnostic(what: &str, err: &BackendError, attribute: Option<&str>) -> Diagnostic {
    let hint = match (err, err.kind()) {
        (BackendError::Kube(_), _) => {
            "Check the `kubernetes` provider block (kubeconfig, context, namespace), that the \
             ImageSync CRD is installed and that the credentials may manage imagesyncs."
        }
        (BackendError::Timeout(_), _) => {
            "Check that the imagesync controller is running, and the object's Ready condition \
             and Events (`kubectl describe imagesync NAME`)."
        }
        (_, kind) => match kind {
        ErrorKind::NotFound => "The image does not exist (the registry answered \"not found\").",
        ErrorKind::Unauthorized => {
            "The registry rejected the credentials. Configure a `registry_auth` block for it, \
             or log in so the Docker config (`docker_config`) has credentials."
        }
        ErrorKind::Denied => "The credentials are valid but not allowed to do this (check the repository permissions).",
        ErrorKind::RateLimited => "The registry is rate-limiting requests; try again later or authenticate.",
        ErrorKind::Transient => {
            "The registry could not be reached or failed. Check the address, the network, \
             `insecure_registries` for plain-HTTP registries and `ca_file` for private CAs."
        }
        ErrorKind::Unsupported => "The registry does not support this operation.",
        ErrorKind::InvalidInput => "Check the references and the provider configuration.",
        ErrorKind::Integrity => "Content did not match its digest; nothing was tagged.",
        ErrorKind::Conflict => "The destination changed meanwhile.",
        },
    };
    let d = Diagnostic::error(
        format!("{what}: {}", crate::diag::kind_summary(err.kind())),
        format!("{}\n\n{hint}", crate::diag::cause_chain(err)),
    );
    match attribute {
        Some(a) => d.at(a),
        None => d,
    }
}

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

/// The result of planning.
#[derive(Debug, Default)]
pub struct Planned {
    /// Planned state (`None`: destroy).
    pub state: Option<Model>,
    /// Attributes whose change forces replacement.
    pub requires_replace: Vec<&'static str>,
    /// Diagnostics.
    pub diags: Vec<Diagnostic>,
}

/// What plan found for the source.
enum Resolved {
    /// The digest (`Value::Unknown` while the source is unknown).
    Digest(Value),
    /// The registry said "not found".
    Missing,
    /// The registry could not answer (the error, for a diagnostic).
    Failed(Box<BackendError>),
}

/// Resolves the source's digest at plan time (with `platforms`, the selection's digest,
/// `known` sparing the read of the source index while the source is where it was).
/// `Err` for a malformed reference.
async fn plan_source_digest(
    backend: &dyn Backend,
    source: &Value,
    platforms: &[imagesync_engine::Platform],
    known: Option<&imagesync_engine::Selection>,
) -> Result<Resolved, Diagnostic> {
    let Some(reference) = parse_ref(source, attr::SOURCE)? else {
        return Ok(Resolved::Digest(Value::Unknown));
    };
    if !platforms.is_empty() {
        return Ok(match backend.resolve(&reference, platforms, known).await {
            Ok(Some(s)) => Resolved::Digest(Value::String(s.digest.to_string())),
            Ok(None) => Resolved::Missing,
            Err(e) => Resolved::Failed(Box::new(e)),
        });
    }
    if let Some(d) = reference.digest() {
        return Ok(Resolved::Digest(Value::String(d.to_string())));
    }
    Ok(match backend.digest(&reference).await {
        Ok(Some(d)) => Resolved::Digest(Value::String(d.to_string())),
        Ok(None) => Resolved::Missing,
        Err(e) => Resolved::Failed(Box::new(e)),
    })
}

/// The source digest a plan uses (`None`: not found). A create cannot do without the
/// source, so an unreachable registry is an error; an existing resource keeps the digest
/// it has (destroy, and the refresh before it, touch only the destination), with a warning.
fn resolved_digest(
    resolved: Resolved,
    existing: Option<&Value>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Value> {
    match resolved {
        Resolved::Digest(v) => Some(v),
        Resolved::Missing => None,
        // A selection the source cannot give (a platform it lacks) is the
        // configuration's fault, not the registry's: an error, existing resource or not.
        Resolved::Failed(e) if existing.is_some() && e.kind() != ErrorKind::InvalidInput => {
            let d = error_diagnostic("Cannot check the source image", &e, Some(attr::SOURCE));
            diags.push(
                Diagnostic::warning(
                    d.summary,
                    format!(
                    "{}\n\nThe copy at the destination and the state are kept as they are; the \
                     source is checked again on the next plan.",
                    d.detail
                ),
                )
                .at(attr::SOURCE),
            );
            existing.cloned()
        }
        Resolved::Failed(e) => {
            diags.push(error_diagnostic(
                "Cannot resolve the source image",
                &e,
                Some(attr::SOURCE),
            ));
            None
        }
    }
}

/// The `id` a sync of `source_digest` to `destination` will report, when certain: a copy
/// is byte for byte, so the destination holds the source's digest.
fn planned_id(planned: &Model, destination: Option<&Reference>) -> Value {
    match (
        destination,
        planned.source_digest.as_str(),
        planned.destination.as_str(),
    ) {
        (Some(dst), Some(d), Some(text)) => match d.parse::<Digest>() {
            Ok(d) => Value::String(make_id(text, dst, &d)),
            Err(_) => Value::Unknown,
        },
        _ => Value::Unknown,
    }
}

/// Plans a change. `prior` is the refreshed state, `proposed` Terraform's proposal.
pub async fn plan(backend: &dyn Backend, prior: Option<Model>, proposed: Option<Model>) -> Planned {
    plan_with_private(backend, prior, proposed, &Private::default()).await
}

/// [`plan`] with the prior private state: its record of the last selection spares a plan
/// with `platforms` the read of the source index while the source is unchanged, and its
/// referrers probe (recorded by the last apply) tells whether the referrers changed.
pub async fn plan_with_private(
    backend: &dyn Backend,
    prior: Option<Model>,
    proposed: Option<Model>,
    private: &Private,
) -> Planned {
    let Some(mut planned) = proposed else {
        return Planned::default();
    };
    let prior_for_referrers = prior.clone();
    let mut out = plan_image(backend, prior, &mut planned, private).await;
    if out.state.is_some() {
        if let Err(d) =
            plan_referrers(backend, prior_for_referrers.as_ref(), &mut planned, private).await
        {
            out.diags.push(d);
        }
        out.state = Some(planned);
    }
    out
}

/// `copied_referrers`: unknown (an apply copies them) when the resource is new or
/// re-synced, the options changed, or (direct mode, image unchanged) the source's
/// referrers probe differs from the one recorded; else the prior list. A probe that
/// fails only warns.
async fn plan_referrers(
    backend: &dyn Backend,
    prior: Option<&Model>,
    planned: &mut Model,
    private: &Private,
) -> Result<(), Diagnostic> {
    if planned.referrers.is_null() {
        planned.referrers = Value::Bool(true);
    }
    let policy = planned.referrer_policy()?;
    let Some(prior) = prior else {
        planned.copied_referrers = Value::Unknown;
        return Ok(());
    };
    let same_options = prior.referrers.as_bool().unwrap_or(true) == policy.enabled
        && prior.referrer_types == planned.referrer_types;
    let same_image = planned.source_digest.is_known()
        && planned.source_digest == prior.source_digest
        && planned.id == prior.id;
    if !same_options || !same_image || !prior.copied_referrers.is_known() {
        planned.copied_referrers = Value::Unknown;
        return Ok(());
    }
    planned.copied_referrers = prior.copied_referrers.clone();
    let (Ok(Some(mut target)), Some(digest)) = (
        planned.target(),
        planned
            .source_digest
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok()),
    ) else {
        return Ok(());
    };
    if target.platforms.len() > 1 && private.selected_from.as_ref() != Some(&digest) {
        // A new index of the selected platforms exists only at the destination: the
        // source has no referrer tags for it to probe (see the engine's probe).
        return Ok(());
    }
    target.referrers_probe = private.referrers_probe.clone();
    match backend.referrers_changed(&target, &digest).await {
        Ok(true) => planned.copied_referrers = Value::Unknown,
        Ok(false) => {}
        Err(e) => {
            return Err(Diagnostic::warning(
                "Cannot check the source's referrers",
                format!(
                    "{}\n\nThe recorded referrers are kept.",
                    crate::diag::cause_chain(&e)
                ),
            )
            .at(attr::REFERRERS))
        }
    }
    Ok(())
}

/// The image part of [`plan`].
async fn plan_image(
    backend: &dyn Backend,
    prior: Option<Model>,
    planned: &mut Model,
    private: &Private,
) -> Planned {
    let mut out = Planned::default();
    let direct = backend.resolves_at_plan();
    if planned.delete_layers.is_null() {
        planned.delete_layers = Value::Bool(true);
    }
    let destination = match parse_ref(&planned.destination, attr::DESTINATION) {
        Ok(d) => d,
        Err(d) => {
            out.diags.push(d);
            return out;
        }
    };
    out.diags
        .extend(crate::timeouts::validate(&planned.timeouts));
    out.diags.extend(crate::spec_fields::validate(planned));
    if !fill_identity(backend, planned, Value::is_null, Value::Unknown) {
        out.diags
            .extend(crate::spec_fields::kube_only_in_direct_mode(planned));
        for a in [attr::NAMESPACE, attr::NAME] {
            let v = if a == attr::NAMESPACE {
                &planned.namespace
            } else {
                &planned.name
            };
            if !v.is_null() {
                out.diags.push(
                    Diagnostic::error(
                        format!("{a:?} is only used in Kubernetes mode"),
                        "Remove it, or configure the provider's `kubernetes` block.",
                    )
                    .at(a),
                );
            }
        }
    }
    let platforms = match crate::spec_fields::platforms(&planned.platforms) {
        Ok(p) => p,
        Err(d) => {
            out.diags.push(d);
            return out;
        }
    };
    let known = apply::known_selection(prior.as_ref(), planned, private);
    let resolved = if direct {
        match plan_source_digest(backend, &planned.source, &platforms, known.as_ref()).await {
            Ok(r) => resolved_digest(r, prior.as_ref().map(|p| &p.source_digest), &mut out.diags),
            Err(d) => {
                out.diags.push(d);
                None
            }
        }
    } else {
        Some(Value::Unknown)
    };
    if crate::diag::has_errors(&out.diags) {
        return out;
    }
    let check_pinned = |digest: &Value, diags: &mut Vec<Diagnostic>| {
        if let (Some(dst), Some(d)) = (&destination, digest.as_str()) {
            if let Some(pinned) = dst.digest() {
                if pinned.as_str() != d {
                    diags.push(
                        Diagnostic::error(
                            "Destination digest does not match the source",
                            format!(
                                "The destination pins {pinned}, but the source resolves to {d}. A copy keeps \
                                 the digest, so it could never match; drop the digest from the destination."
                            ),
                        )
                        .at(attr::DESTINATION),
                    );
                }
            }
        }
    };

    match prior {
        None => {
            // Create. A source that does not exist yet (e.g. written by another resource
            // in the same apply) is resolved at apply time.
            planned.source_digest = resolved.unwrap_or(Value::Unknown);
            planned.id = if direct {
                planned_id(planned, destination.as_ref())
            } else {
                Value::Unknown
            };
            check_pinned(&planned.source_digest, &mut out.diags);
        }
        Some(prior) => {
            for (a, new, old) in [
                (attr::DESTINATION, &planned.destination, &prior.destination),
                (attr::NAMESPACE, &planned.namespace, &prior.namespace),
                (attr::NAME, &planned.name, &prior.name),
            ] {
                if new != old {
                    out.requires_replace.push(a);
                }
            }
            if !out.requires_replace.is_empty() {
                planned.source_digest = resolved.unwrap_or(Value::Unknown);
                planned.id = if direct {
                    planned_id(planned, destination.as_ref())
                } else {
                    Value::Unknown
                };
            } else if !direct {
                // Kubernetes mode: the controller follows the source; a spec change is
                // applied in place.
                let spec_changed = planned.platforms != prior.platforms
                    || planned.resync_interval != prior.resync_interval
                    || planned.source_secret_ref != prior.source_secret_ref
                    || planned.destination_secret_ref != prior.destination_secret_ref;
                if planned.source != prior.source
                    || planned.delete_layers != prior.delete_layers
                    || spec_changed
                {
                    planned.id = Value::Unknown;
                    planned.source_digest = Value::Unknown;
                } else {
                    planned.id = prior.id.clone();
                    planned.source_digest = prior.source_digest.clone();
                }
            } else {
                let current = match resolved {
                    Some(v) => v,
                    None => {
                        out.diags.push(
                            Diagnostic::warning(
                                "Source image not found",
                                format!(
                                    "{} does not exist (any more). The copy at the destination is kept; \
                                     nothing is re-synced until the source exists again.",
                                    planned.source.as_str().unwrap_or_default()
                                ),
                            )
                            .at(attr::SOURCE),
                        );
                        prior.source_digest.clone()
                    }
                };
                // The tag moved: an in-place re-sync that copies the new image, then moves
                // the tag; the digest it replaces stays (untagged) until destroy. Drift
                // (the destination tag elsewhere) re-syncs in place too.
                planned.source_digest = current;
                planned.id = planned_id(planned, destination.as_ref());
            }
            check_pinned(&planned.source_digest, &mut out.diags);
        }
    }
    out.state = Some(planned.clone());
    out
}

/// Sets the namespace and name of the backend's object (see [`Backend::identity`]) where
/// `missing` holds; a name that cannot be derived (unknown destination) becomes
/// `no_name`. False in direct mode, which has no object.
fn fill_identity(
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

mod apply;
pub use apply::{apply, Applied};

#[cfg(test)]
mod tests;
