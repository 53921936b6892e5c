//! The policy file's format, the compiled policy and its decisions.
//!
//! Over 600 lines because of its unit tests (about 400 lines of code, the rest tests of
//! every matching rule), kept next to the code they pin down.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use imagesync_engine::{Digest, Reference};
use kube::core::{Expression, Selector, SelectorExt};
use serde::Deserialize;

use super::PolicyError;

// === File format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    name: String,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    namespace_selector: Option<SelectorSpec>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
    #[serde(default)]
    ambient_credentials: Ambient,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorSpec {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<ExpressionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionSpec {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

/// A label selector operator (as in Kubernetes).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What a matching rule does.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// The object may sync (and delete what it wrote).
    #[default]
    Allow,
    /// The object is denied.
    Deny,
}

/// Whether the controller's own credentials (Docker config, Google ADC) may be used.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Ambient {
    /// For the source registry.
    #[serde(default)]
    pub source: bool,
    /// For the destination registry.
    #[serde(default)]
    pub destination: bool,
}

impl Ambient {
    /// Both sides: the behaviour without a policy.
    pub const ALL: Ambient = Ambient {
        source: true,
        destination: true,
    };

    /// The registries the ambient credentials may be offered to, for a copy from
    /// `source` to `destination`; `None` means every registry (no restriction). A
    /// registry used by both sides gets them only when both sides allow them.
    pub fn registries(self, source: &str, destination: &str) -> Option<BTreeSet<String>> {
        if self == Ambient::ALL {
            return None;
        }
        let mut out = BTreeSet::new();
        if self.source && (source != destination || self.destination) {
            out.insert(source.to_string());
        }
        if self.destination && (source != destination || self.source) {
            out.insert(destination.to_string());
        }
        Some(out)
    }
}

// === Compiled policy ===

/// A parsed and validated policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    hash: String,
}

#[derive(Debug)]
struct Rule {
    name: String,
    action: Action,
    namespaces: NamespaceMatch,
    sources: Patterns,
    destinations: Patterns,
    ambient: Ambient,
}

#[derive(Debug)]
enum NamespaceMatch {
    Names(GlobSet),
    Selector(Selector),
}

struct Patterns {
    text: Vec<String>,
    set: GlobSet,
}

impl fmt::Debug for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.text).finish()
    }
}

impl Patterns {
    fn matches(&self, candidates: &[String]) -> bool {
        candidates.iter().any(|c| self.set.is_match(c))
    }
}

/// The strings a reference pattern is matched against: `registry/repo`, and that with
/// `:tag`. A reference that carries a digest is copied by that digest whatever its tag
/// says, so it is matched on `registry/repo` and `registry/repo@digest` only: a rule for
/// `busybox:1.*` says nothing about `busybox:1.36@sha256:<anything>`.
fn candidates(r: &Reference) -> Vec<String> {
    let repo = r.repo_name();
    let mut out = vec![repo.clone()];
    match (r.digest(), r.tag()) {
        (Some(d), _) => out.push(format!("{repo}@{d}")),
        (None, Some(t)) => out.push(format!("{repo}:{t}")),
        (None, None) => {}
    }
    out
}

/// A pattern's first segment, when it names a registry host without glob characters, is
/// written the way references are (the engine's one canonical spelling: lower case, no
/// trailing dot or `:443`, `docker.io` for Docker Hub's aliases).
fn normalise_pattern(pattern: &str) -> Result<String, String> {
    let Some((first, rest)) = pattern.split_once('/') else {
        return Ok(pattern.to_string());
    };
    let is_host =
        first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost");
    if !is_host {
        return Ok(pattern.to_string());
    }
    if first.contains(['*', '?', '[', '{', '\\']) {
        return Ok(format!("{}/{rest}", first.to_ascii_lowercase()));
    }
    let host = imagesync_engine::reference::canonical_registry(first)
        .map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    Ok(format!("{host}/{rest}"))
}

fn glob(pattern: &str, separator: bool) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(separator)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("pattern {pattern:?}: {e}"))
}

fn reference_patterns(list: Option<Vec<String>>, field: &str) -> Result<Patterns, String> {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        return Err(format!(
            "{field} must list at least one pattern (\"**\" matches everything)"
        ));
    }
    let mut builder = GlobSetBuilder::new();
    let mut text = Vec::new();
    for p in list {
        if p.trim().is_empty() {
            return Err(format!("{field} has an empty pattern"));
        }
        let p = normalise_pattern(&p).map_err(|e| format!("{field}: {e}"))?;
        builder.add(glob(&p, true).map_err(|e| format!("{field}: {e}"))?);
        text.push(p);
    }
    let set = builder.build().map_err(|e| format!("{field}: {e}"))?;
    Ok(Patterns { text, set })
}

fn namespace_match(
    names: Option<Vec<String>>,
    selector: Option<SelectorSpec>,
) -> Result<NamespaceMatch, String> {
    match (names, selector) {
        (Some(_), Some(_)) => Err("set either namespaces or namespaceSelector, not both".into()),
        (None, None) => Err("set namespaces (names or globs) or namespaceSelector".into()),
        (Some(names), None) => {
            if names.is_empty() {
                return Err("namespaces is empty (use [\"*\"] for every namespace)".into());
            }
            let mut builder = GlobSetBuilder::new();
            for n in &names {
                if n.trim().is_empty() {
                    return Err("namespaces has an empty entry".into());
                }
                builder.add(glob(n, false).map_err(|e| format!("namespaces: {e}"))?);
            }
            builder
                .build()
                .map(NamespaceMatch::Names)
                .map_err(|e| format!("namespaces: {e}"))
        }
        (None, Some(s)) => {
            let mut expressions = Vec::new();
            for e in s.match_expressions {
                if e.key.is_empty() {
                    return Err("namespaceSelector: an expression has an empty key".into());
                }
                match e.operator {
                    Operator::In | Operator::NotIn if e.values.is_empty() => {
                        return Err(format!(
                            "namespaceSelector: operator {:?} on {:?} needs values",
                            e.operator, e.key
                        ))
                    }
                    Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => {
                        return Err(format!(
                            "namespaceSelector: operator {:?} on {:?} takes no values",
                            e.operator, e.key
                        ))
                    }
                    _ => {}
                }
                let values = e.values.into_iter().collect();
                expressions.push(match e.operator {
                    Operator::In => Expression::In(e.key, values),
                    Operator::NotIn => Expression::NotIn(e.key, values),
                    Operator::Exists => Expression::Exists(e.key),
                    Operator::DoesNotExist => Expression::DoesNotExist(e.key),
                });
            }
            let mut selector: Selector = s.match_labels.into_iter().collect();
            selector.extend(expressions);
            Ok(NamespaceMatch::Selector(selector))
        }
    }
}

/// What the policy decided for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with these ambient credentials. `rule` is `None` without a policy.
    Allow {
        /// The rule that allowed it.
        rule: Option<String>,
        /// Ambient credentials allowed.
        ambient: Ambient,
    },
    /// Denied; the message names the rule (or says that none matched).
    Deny {
        /// For the `Ready` condition and the Event.
        message: String,
    },
}

impl Decision {
    /// Everything allowed (no policy file).
    pub const ALLOW_ALL: Decision = Decision::Allow {
        rule: None,
        ambient: Ambient::ALL,
    };
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile =
            serde_saphyr::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (i, spec) in file.rules.into_iter().enumerate() {
            let label = if spec.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                format!("{:?}", spec.name)
            };
            let bad = |reason: String| PolicyError::Rule {
                rule: label.clone(),
                reason,
            };
            if spec.name.trim().is_empty() {
                return Err(bad("every rule needs a name".into()));
            }
            if !names.insert(spec.name.clone()) {
                return Err(bad("the name is used by an earlier rule".into()));
            }
            let namespaces =
                namespace_match(spec.namespaces, spec.namespace_selector).map_err(bad)?;
            let sources = reference_patterns(spec.sources, "sources").map_err(bad)?;
            let destinations =
                reference_patterns(spec.destinations, "destinations").map_err(bad)?;
            rules.push(Rule {
                name: spec.name,
                action: spec.action,
                namespaces,
                sources,
                destinations,
                ambient: spec.ambient_credentials,
            });
        }
        Ok(Policy {
            rules,
            hash: Digest::of(text.as_bytes()).hex().to_string(),
        })
    }

    /// The SHA-256 (hex) of the document.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when a rule selects namespaces by label (the caller must read the Namespace).
    pub fn needs_namespace_labels(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.namespaces, NamespaceMatch::Selector(_)))
    }

    /// Decides for an object in `namespace` (with `labels`, when read) copying `source`
    /// to `destination`.
    pub fn evaluate(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        source: &Reference,
        destination: &Reference,
    ) -> Decision {
        let src = (format!("{}", DisplayRef(source)), candidates(source));
        let dst = (
            format!("{}", DisplayRef(destination)),
            candidates(destination),
        );
        self.decide(namespace, labels, src, dst)
    }

    /// Decides for an `ImageSyncSet` in `namespace` listing the tags of the repository
    /// of `source` to copy them to the repository of `destination` (their tags are
    /// ignored): only patterns that match the repositories themselves (`registry/repo`,
    /// `registry/team/**`) allow it. Each child `ImageSync` is then decided on its own
    /// tags by [`Policy::evaluate`].
    pub fn evaluate_repositories(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        source: &Reference,
        destination: &Reference,
    ) -> Decision {
        let src = (source.repo_name(), vec![source.repo_name()]);
        let dst = (destination.repo_name(), vec![destination.repo_name()]);
        self.decide(namespace, labels, src, dst)
    }

    /// The first matching rule's decision for a source and a destination, each given as
    /// its display text and the strings its patterns are matched against.
    fn decide(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        (src, source): (String, Vec<String>),
        (dst, destination): (String, Vec<String>),
    ) -> Decision {
        let mut near = Vec::new();
        for rule in &self.rules {
            let ns = match &rule.namespaces {
                NamespaceMatch::Names(set) => set.is_match(namespace),
                NamespaceMatch::Selector(s) => s.matches(labels),
            };
            if !ns {
                continue;
            }
            let s = rule.sources.matches(&source);
            let d = rule.destinations.matches(&destination);
            if s && d {
                return match rule.action {
                    Action::Allow => Decision::Allow {
                        rule: Some(rule.name.clone()),
                        ambient: rule.ambient,
                    },
                    Action::Deny => Decision::Deny {
                        message: format!(
                            "denied by policy rule {:?} (namespace {namespace}, source {src}, destination {dst})",
                            rule.name
                        ),
                    },
                };
            }
            let what = match (s, d) {
                (false, false) => format!(
                    "neither the source (allowed: {}) nor the destination (allowed: {})",
                    rule.sources.text.join(", "),
                    rule.destinations.text.join(", ")
                ),
                (false, true) => {
                    format!("not the source (allowed: {})", rule.sources.text.join(", "))
                }
                _ => format!(
                    "not the destination (allowed: {})",
                    rule.destinations.text.join(", ")
                ),
            };
            near.push(format!(
                "rule {:?} matches the namespace but {what}",
                rule.name
            ));
        }
        let mut message =
            format!("no policy rule allows copying {src} to {dst} in namespace {namespace}");
        if near.is_empty() {
            message.push_str(": no rule matches the namespace");
        } else {
            message.push_str(": ");
            message.push_str(&near.join("; "));
        }
        Decision::Deny { message }
    }
}

/// A normalised reference as the policy sees it (`registry/repo:tag` or `@digest`).
struct DisplayRef<'a>(&'a Reference);

impl fmt::Display for DisplayRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        f.write_str(&r.repo_name())?;
        if let Some(t) = r.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = r.digest() {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{load_file, PolicyStore};

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn eval(p: &Policy, ns: &str, src: &str, dst: &str) -> Decision {
        p.evaluate(ns, &BTreeMap::new(), &r(src), &r(dst))
    }

    fn allowed_by(d: &Decision) -> Option<&str> {
        match d {
            Decision::Allow { rule, .. } => rule.as_deref(),
            Decision::Deny { .. } => None,
        }
    }

    fn message(d: &Decision) -> &str {
        match d {
            Decision::Deny { message } => message,
            Decision::Allow { .. } => panic!("allowed: {d:?}"),
        }
    }

    /// An `ImageSyncSet` is decided on its repositories: a rule for the repositories
    /// (`registry/team/**`) allows it, a tag-only pattern neither allows nor denies it
    /// (its children are decided on their own tags).
    #[test]
    fn a_set_is_decided_on_its_repositories_and_its_children_on_their_tags() {
        let p = Policy::parse(
            r#"
rules:
  - {name: no-v1, action: Deny, namespaces: ["*"], sources: ["127.0.0.1:5000/team-a/app:v1*"], destinations: ["**"]}
  - {name: only-tag, namespaces: ["team-b"], sources: ["127.0.0.1:5000/team-b/app:2.*"], destinations: ["127.0.0.1:5001/team-b/**"]}
  - {name: team-a, namespaces: ["team-a"], sources: ["127.0.0.1:5000/team-a/**"], destinations: ["127.0.0.1:5001/team-a/**"]}
"#,
        )
        .unwrap();
        let repos = |ns: &str, src: &str, dst: &str| {
            p.evaluate_repositories(ns, &BTreeMap::new(), &r(src), &r(dst))
        };
        let set = repos(
            "team-a",
            "127.0.0.1:5000/team-a/app",
            "127.0.0.1:5001/team-a/app",
        );
        assert_eq!(allowed_by(&set), Some("team-a"));
        let elsewhere = repos(
            "team-a",
            "127.0.0.1:5000/team-a/app",
            "127.0.0.1:5001/team-b/app",
        );
        assert!(
            message(&elsewhere).contains("not the destination"),
            "{elsewhere:?}"
        );
        // A tag pattern does not allow listing the whole repository.
        let tag_only = repos(
            "team-b",
            "127.0.0.1:5000/team-b/app",
            "127.0.0.1:5001/team-b/app",
        );
        assert!(allowed_by(&tag_only).is_none(), "{tag_only:?}");
        // The children: the denied tag is denied, the others allowed.
        let child = |tag: &str| {
            eval(
                &p,
                "team-a",
                &format!("127.0.0.1:5000/team-a/app:{tag}"),
                &format!("127.0.0.1:5001/team-a/app:{tag}"),
            )
        };
        assert!(message(&child("v1.2")).contains("no-v1"));
        assert_eq!(allowed_by(&child("v2.0")), Some("team-a"));
    }

    /// Issue 12, item 3: every other spelling of a denied registry or image is denied
    /// too (or refused as an invalid reference), never let through by a later rule.
    #[test]
    fn every_spelling_of_a_denied_host_is_denied() {
        let p = Policy::parse(
            r#"
rules:
  - {name: no-prod, action: Deny, namespaces: ["*"], sources: ["europe-docker.pkg.dev/prod/**"], destinations: ["**"]}
  - {name: no-gcr, action: Deny, namespaces: ["*"], sources: ["gcr.io/**"], destinations: ["**"]}
  - {name: no-busybox-1, action: Deny, namespaces: ["*"], sources: ["docker.io/library/busybox:1.*"], destinations: ["**"]}
  - {name: no-loopback, action: Deny, namespaces: ["*"], sources: ["127.0.0.1:5000/**", "localhost:5000/**"], destinations: ["**"]}
  - {name: all, namespaces: ["*"], sources: ["**"], destinations: ["**"]}
"#,
        )
        .unwrap();
        let spellings = [
            "EUROPE-docker.pkg.dev/prod/x:1",
            "europe-docker.pkg.dev:443/prod/x:1",
            "europe-docker.pkg.dev:0443/prod/x:1",
            "europe-docker.pkg.dev./prod/x:1",
            "GCR.IO/x:1",
            "gcr.io:443/x:1",
            "gcr.io./x:1",
            "Index.Docker.IO/library/busybox:1.36",
            "index.docker.io:443/library/busybox:1.36",
            "registry-1.docker.io./library/busybox:1.36",
            "127.0.0.1.:5000/x:1",
            "127.0.0.1:05000/x:1",
            "LOCALHOST:5000/x:1",
            "127.1:5000/x:1",
            "2130706433:5000/x:1",
            "0x7f.0.0.1:5000/x:1",
            "0x7f.1:5000/x:1",
        ];
        for src in spellings {
            match Reference::parse(src) {
                Err(e) => assert!(e.to_string().contains("IPv4"), "{src}: {e}"),
                Ok(source) => {
                    let d = p.evaluate("t", &BTreeMap::new(), &source, &r("127.0.0.1:6000/d:1"));
                    assert_eq!(allowed_by(&d), None, "{src} was allowed: {d:?}");
                }
            }
        }
        // The canonical forms themselves, for contrast, and a neighbour that is allowed.
        assert_eq!(
            allowed_by(&eval(&p, "t", "gcr.io/x:1", "127.0.0.1:6000/d:1")),
            None
        );
        assert_eq!(
            allowed_by(&eval(
                &p,
                "t",
                "europe-docker.pkg.dev/dev/x:1",
                "127.0.0.1:6000/d:1"
            )),
            Some("all")
        );
    }

    /// A reference with a digest is copied by the digest: a rule about tags neither
    /// allows nor denies it, and a pattern in another spelling still matches.
    #[test]
    fn a_digest_reference_is_matched_on_its_digest_form() {
        let p = Policy::parse(
            r#"
rules:
  - {name: busybox-1, namespaces: ["*"], sources: ["docker.io/library/busybox:1.*"], destinations: ["**"]}
  - {name: pinned, namespaces: ["*"], sources: ["GCR.IO:443/p/app@sha256:*"], destinations: ["**"]}
"#,
        )
        .unwrap();
        let hex = "0".repeat(64);
        let dst = "127.0.0.1:6000/d:1";
        assert_eq!(
            allowed_by(&eval(&p, "t", "busybox:1.36", dst)),
            Some("busybox-1")
        );
        assert_eq!(
            allowed_by(&eval(&p, "t", &format!("busybox:1.36@sha256:{hex}"), dst)),
            None
        );
        assert_eq!(
            allowed_by(&eval(
                &p,
                "t",
                &format!("gcr.io/p/app:v1@sha256:{hex}"),
                dst
            )),
            Some("pinned")
        );
        // A pattern host that is numeric shorthand is an invalid policy, not a silent miss.
        let err = Policy::parse(
            "rules:\n  - {name: x, namespaces: [\"*\"], sources: [\"127.1:5000/**\"], destinations: [\"**\"]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("IPv4"), "{err}");
    }

    const TEAMS: &str = r#"
rules:
  - name: team-a
    namespaces: ["team-a", "team-a-*"]
    sources: ["docker.io/library/*", "127.0.0.1:5000/src/**"]
    destinations: ["127.0.0.1:5000/dst/a/*"]
    ambientCredentials: {source: true, destination: true}
  - name: team-b
    namespaces: [team-b]
    sources: ["**"]
    destinations: ["127.0.0.1:6000/dst/b/*"]
    ambientCredentials: {source: true}
  - name: block-c
    action: Deny
    namespaces: ["team-c"]
    sources: ["**"]
    destinations: ["**"]
  - name: team-c
    namespaces: ["team-c"]
    sources: ["**"]
    destinations: ["**"]
"#;

    #[test]
    fn globs_match_the_normalised_reference_and_star_stays_in_one_segment() {
        let p = Policy::parse(TEAMS).unwrap();
        let d = eval(&p, "team-a", "busybox", "127.0.0.1:5000/dst/a/app:1");
        assert_eq!(allowed_by(&d), Some("team-a"));
        assert_eq!(
            d,
            Decision::Allow {
                rule: Some("team-a".into()),
                ambient: Ambient::ALL
            }
        );
        // Globbed namespace names.
        assert_eq!(
            allowed_by(&eval(&p, "team-a-dev", "index.docker.io/library/alpine:3", "127.0.0.1:5000/dst/a/x@sha256:0000000000000000000000000000000000000000000000000000000000000000")),
            Some("team-a")
        );
        // `*` does not cross `/`; `**` does.
        assert_eq!(
            allowed_by(&eval(
                &p,
                "team-a",
                "busybox",
                "127.0.0.1:5000/dst/a/sub/app:1"
            )),
            None
        );
        assert_eq!(
            allowed_by(&eval(
                &p,
                "team-a",
                "127.0.0.1:5000/src/deep/er/app:1",
                "127.0.0.1:5000/dst/a/app:1"
            )),
            Some("team-a")
        );
        // docker.io/library/* does not match a user repository on Docker Hub.
        let d = eval(&p, "team-a", "someone/app:1", "127.0.0.1:5000/dst/a/app:1");
        assert!(message(&d).contains("not the source"), "{d:?}");
        // Another team's area.
        let d = eval(&p, "team-a", "busybox", "127.0.0.1:6000/dst/b/app:1");
        let m = message(&d);
        assert!(
            m.contains("rule \"team-a\" matches the namespace but not the destination"),
            "{m}"
        );
        assert!(m.contains("127.0.0.1:6000/dst/b/app:1"), "{m}");
    }

    #[test]
    fn first_matching_rule_wins_including_deny_rules() {
        let p = Policy::parse(TEAMS).unwrap();
        let d = eval(&p, "team-c", "busybox", "127.0.0.1:5000/anything:1");
        assert!(
            message(&d).starts_with("denied by policy rule \"block-c\""),
            "{d:?}"
        );
        let d = eval(&p, "team-b", "busybox", "127.0.0.1:6000/dst/b/app:1");
        assert_eq!(
            d,
            Decision::Allow {
                rule: Some("team-b".into()),
                ambient: Ambient {
                    source: true,
                    destination: false
                }
            }
        );
    }

    #[test]
    fn no_matching_rule_denies_and_says_so() {
        let p = Policy::parse(TEAMS).unwrap();
        let d = eval(&p, "team-z", "busybox", "127.0.0.1:5000/dst/a/app:1");
        assert!(
            message(&d).ends_with("no rule matches the namespace"),
            "{d:?}"
        );
        let empty = Policy::parse("rules: []").unwrap();
        assert!(empty.is_empty());
        assert!(matches!(
            eval(&empty, "x", "busybox", "busybox"),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn tags_can_be_restricted_and_docker_hub_aliases_in_patterns_are_normalised() {
        let p = Policy::parse(
            r#"
rules:
  - name: releases
    namespaces: ["*"]
    sources: ["index.docker.io/library/busybox:1.*"]
    destinations: ["reg.example/mirror/busybox"]
"#,
        )
        .unwrap();
        assert_eq!(
            allowed_by(&eval(
                &p,
                "x",
                "busybox:1.36",
                "reg.example/mirror/busybox:any"
            )),
            Some("releases")
        );
        assert_eq!(
            allowed_by(&eval(
                &p,
                "x",
                "busybox:latest",
                "reg.example/mirror/busybox:1"
            )),
            None
        );
        // Defaults: no ambient credentials.
        assert!(matches!(
            eval(&p, "x", "busybox:1.36", "reg.example/mirror/busybox:1"),
            Decision::Allow {
                ambient: Ambient {
                    source: false,
                    destination: false
                },
                ..
            }
        ));
    }

    #[test]
    fn namespace_selectors_use_match_labels_and_expressions() {
        let p = Policy::parse(
            r#"
rules:
  - name: prod
    namespaceSelector:
      matchLabels: {tier: prod}
      matchExpressions:
        - {key: team, operator: In, values: [a, b]}
        - {key: quarantine, operator: DoesNotExist}
    sources: ["**"]
    destinations: ["**"]
  - name: any-labelled
    namespaceSelector:
      matchExpressions:
        - {key: team, operator: Exists}
        - {key: team, operator: NotIn, values: [z]}
    sources: ["**"]
    destinations: ["reg.example/sandbox/**"]
"#,
        )
        .unwrap();
        assert!(p.needs_namespace_labels());
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let at = |l: &BTreeMap<String, String>, dst: &str| {
            allowed_by(&p.evaluate("ns", l, &r("busybox"), &r(dst))).map(str::to_string)
        };
        let prod_a = labels(&[("tier", "prod"), ("team", "a")]);
        assert_eq!(at(&prod_a, "reg.example/x:1").as_deref(), Some("prod"));
        let quarantined = labels(&[("tier", "prod"), ("team", "a"), ("quarantine", "1")]);
        assert_eq!(at(&quarantined, "reg.example/x:1"), None);
        assert_eq!(
            at(&quarantined, "reg.example/sandbox/x:1").as_deref(),
            Some("any-labelled")
        );
        assert_eq!(
            at(&labels(&[("team", "z")]), "reg.example/sandbox/x:1"),
            None
        );
        assert_eq!(at(&labels(&[]), "reg.example/sandbox/x:1"), None);
        assert!(!Policy::parse(TEAMS).unwrap().needs_namespace_labels());
    }

    #[test]
    fn invalid_files_are_rejected_with_a_reason() {
        for (doc, needle) in [
            ("rules: [", "not valid"),
            ("", "not valid"),
            ("rulez: []", "not valid"),
            ("rules:\n  - name: a\n    namespaces: [x]\n    sources: ['**']\n", "destinations must list"),
            ("rules:\n  - name: a\n    sources: ['**']\n    destinations: ['**']\n", "set namespaces"),
            ("rules:\n  - name: a\n    namespaces: [x]\n    namespaceSelector: {}\n    sources: ['**']\n    destinations: ['**']\n", "not both"),
            ("rules:\n  - namespaces: [x]\n    sources: ['**']\n    destinations: ['**']\n", "needs a name"),
            ("rules:\n  - name: a\n    namespaces: [x]\n    sources: ['[oops']\n    destinations: ['**']\n", "sources: pattern \"[oops\""),
            ("rules:\n  - name: a\n    namespaces: [x]\n    sources: ['**']\n    destinations: ['**']\n    ambientCredentials: {destination: yes-please}\n", "not valid"),
            ("rules:\n  - name: a\n    namespaces: [x]\n    sources: ['**']\n    destinations: ['**']\n    ambientCredential: {destination: true}\n", "not valid"),
            ("rules:\n  - name: a\n    namespaceSelector: {matchExpressions: [{key: k, operator: In}]}\n    sources: ['**']\n    destinations: ['**']\n", "needs values"),
            ("rules:\n  - name: a\n    namespaces: [x]\n    sources: ['**']\n    destinations: ['**']\n  - name: a\n    namespaces: [y]\n    sources: ['**']\n    destinations: ['**']\n", "used by an earlier rule"),
            ("rules:\n  - name: a\n    action: Maybe\n    namespaces: [x]\n    sources: ['**']\n    destinations: ['**']\n", "not valid"),
        ] {
            let e = Policy::parse(doc).expect_err(doc).to_string();
            assert!(e.contains(needle), "{doc:?}: {e}");
        }
    }

    #[test]
    fn ambient_registries_are_withheld_where_either_side_forbids_them() {
        let only_src = Ambient {
            source: true,
            destination: false,
        };
        assert_eq!(Ambient::ALL.registries("a", "b"), None);
        assert_eq!(
            only_src.registries("a", "b"),
            Some(BTreeSet::from(["a".to_string()]))
        );
        assert_eq!(only_src.registries("a", "a"), Some(BTreeSet::new()));
        assert_eq!(
            Ambient::default().registries("a", "b"),
            Some(BTreeSet::new())
        );
    }

    #[test]
    fn store_generations_and_file_loading() {
        let dir = std::env::temp_dir().join(format!("imagesync-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(&path, TEAMS).unwrap();
        let (policy, bytes) = load_file(&path).unwrap();
        assert_eq!(bytes, TEAMS.as_bytes());
        assert_eq!(policy.hash().len(), 64);
        let store = PolicyStore::with_policy(policy);
        let mut rx = store.subscribe();
        assert_eq!(store.generation(), 1);
        assert_eq!(store.replace(Policy::parse("rules: []").unwrap()), 2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        assert!(matches!(
            load_file(&dir.join("missing.yaml")),
            Err(PolicyError::Read { .. })
        ));
        assert_eq!(PolicyStore::allow_all().current().1, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
