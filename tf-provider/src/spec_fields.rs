//! The resource attributes that are `ImageSync` spec fields: `platforms` (both modes),
//! `resync_interval`, `source_secret_ref` and `destination_secret_ref` (Kubernetes mode).
//! Each is checked as the CRD schema checks its field, so `terraform validate` (literal
//! values) and plan (all values) refuse what the apiserver would refuse.

use std::time::Duration;

use imagesync_engine::platform::{Platform, MAX_PLATFORMS};

use crate::codec::Value;
use crate::diag::Diagnostic;
use crate::resource::{attr, Model};

/// The Kubernetes-mode spec fields of one resource (known values only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeSpec {
    /// `spec.platforms`, as written.
    pub platforms: Vec<String>,
    /// `spec.resyncInterval`.
    pub resync_interval: Option<String>,
    /// `spec.sourceSecretRef.name`.
    pub source_secret: Option<String>,
    /// `spec.destinationSecretRef.name`.
    pub destination_secret: Option<String>,
}

impl KubeSpec {
    /// The fields of `m` (unknown or malformed values are left out; plan refuses those).
    pub fn of(m: &Model) -> KubeSpec {
        KubeSpec {
            platforms: strings(&m.platforms),
            resync_interval: m.resync_interval.as_str().map(str::to_string),
            source_secret: m.source_secret_ref.get("name").as_str().map(str::to_string),
            destination_secret: m
                .destination_secret_ref
                .get("name")
                .as_str()
                .map(str::to_string),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_list()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

/// The parsed `platforms` (empty when null or unknown).
pub fn platforms(v: &Value) -> Result<Vec<Platform>, Diagnostic> {
    check_platforms(v)?;
    Ok(strings(v)
        .iter()
        .filter_map(|s| Platform::parse(s).ok())
        .collect())
}

fn invalid(attribute: &str, detail: String) -> Diagnostic {
    Diagnostic::error(format!("Invalid {attribute:?}"), detail).at(attribute)
}

/// `platforms`: each known entry `os/architecture[/variant]`, each once (the CRD's
/// `x-kubernetes-list-type: set`), at most 64.
fn check_platforms(v: &Value) -> Result<(), Diagnostic> {
    let Some(list) = v.as_list() else {
        return Ok(());
    };
    if list.len() > MAX_PLATFORMS {
        return Err(invalid(
            attr::PLATFORMS,
            format!(
                "At most {MAX_PLATFORMS} platforms may be selected, not {}.",
                list.len()
            ),
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for p in list.iter().filter_map(Value::as_str) {
        if let Err(e) = Platform::parse(p) {
            return Err(invalid(attr::PLATFORMS, format!("{e}.")));
        }
        if seen.contains(&p) {
            return Err(invalid(attr::PLATFORMS, format!("{p:?} is listed twice.")));
        }
        seen.push(p);
    }
    Ok(())
}

/// The CRD's pattern for `spec.resyncInterval`: 1 to 4 groups of up to 16 digits, an
/// optional fraction of up to 9, and a unit.
fn matches_crd_pattern(s: &str) -> bool {
    let mut rest = s;
    let mut groups = 0;
    while !rest.is_empty() {
        groups += 1;
        let int = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=16).contains(&int) {
            return false;
        }
        rest = &rest[int..];
        if let Some(after) = rest.strip_prefix('.') {
            let frac = after.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=9).contains(&frac) {
                return false;
            }
            rest = &after[frac..];
        }
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(*u) && !(**u == "m" && rest.starts_with("ms")))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    (1..=4).contains(&groups)
}

fn check_resync_interval(v: &Value) -> Result<(), Diagnostic> {
    let Some(s) = v.as_str() else {
        return Ok(());
    };
    if s.len() > imagesync_engine::duration::MAX_LEN || !matches_crd_pattern(s) {
        return Err(invalid(
            attr::RESYNC_INTERVAL,
            format!(
                "{:?} is not a duration such as 30s, 5m or 1h30m (at most 4 parts, 32 characters).",
                s.chars().take(40).collect::<String>()
            ),
        ));
    }
    // The upper bound is the CRD's; the lower one is the controller's
    // `--min-resync-interval`, which the controller checks.
    const MAX: Duration = Duration::from_secs(720 * 3600);
    match imagesync_engine::duration::parse(s) {
        Some(d) if d >= Duration::from_secs(1) && d <= MAX => Ok(()),
        _ => Err(invalid(
            attr::RESYNC_INTERVAL,
            format!("{s} is out of range: at most 720h (and at least the controller's --min-resync-interval)."),
        )),
    }
}

/// A Secret reference: `{ name = "<DNS-1123 subdomain>" }`.
fn check_secret_ref(v: &Value, attribute: &str) -> Result<(), Diagnostic> {
    match v.get("name") {
        Value::String(n) if !crate::resource::is_dns_name(n, 253, true) => Err(invalid(
            attribute,
            format!("{n:?} is not a Secret name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.')."),
        )),
        _ => Ok(()),
    }
}

/// Every check of these attributes, on the known values of `m`.
pub fn validate(m: &Model) -> Vec<Diagnostic> {
    [
        check_platforms(&m.platforms),
        check_resync_interval(&m.resync_interval),
        check_secret_ref(&m.source_secret_ref, attr::SOURCE_SECRET_REF),
        check_secret_ref(&m.destination_secret_ref, attr::DESTINATION_SECRET_REF),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect()
}

/// Direct mode: the Kubernetes-only attributes must not be set.
pub fn kube_only_in_direct_mode(m: &Model) -> Vec<Diagnostic> {
    [
        (attr::RESYNC_INTERVAL, &m.resync_interval),
        (attr::SOURCE_SECRET_REF, &m.source_secret_ref),
        (attr::DESTINATION_SECRET_REF, &m.destination_secret_ref),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_null())
    .map(|(a, _)| {
        Diagnostic::error(
            format!("{a:?} is only used in Kubernetes mode"),
            "Remove it, or configure the provider's `kubernetes` block.",
        )
        .at(a)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    #[test]
    fn platforms_are_checked_as_the_crd_does() {
        assert!(check_platforms(&list(&["linux/amd64", "linux/arm64/v8"])).is_ok());
        assert!(check_platforms(&Value::Null).is_ok());
        assert!(check_platforms(&Value::List(vec![Value::Unknown])).is_ok());
        for bad in [
            list(&["linux"]),
            list(&["Linux/AMD64"]),
            list(&["linux/amd64", "linux/amd64"]),
            list(&["linux/arm64/v8/x"]),
            Value::List(vec![Value::String("linux/amd64".into()); MAX_PLATFORMS + 1]),
        ] {
            let d = check_platforms(&bad).unwrap_err();
            assert!(d.summary.contains("platforms"), "{d:?}");
        }
    }

    #[test]
    fn resync_intervals_match_the_crd_pattern_and_bounds() {
        for ok in ["30s", "5m", "1h30m", "1.5h", "720h", "1500ms"] {
            assert!(
                check_resync_interval(&Value::String(ok.into())).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "3 seconds",
            "5",
            "-5m",
            "1h1m1s1ms1ns",
            "721h",
            "0",
            "",
            "99999999999999999h",
        ] {
            assert!(
                check_resync_interval(&Value::String(bad.into())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secret_names_are_dns_subdomains() {
        let r = |n: &str| Value::Object([("name".to_string(), Value::String(n.into()))].into());
        assert!(check_secret_ref(&r("hub-creds"), "x").is_ok());
        assert!(check_secret_ref(&r("Bad_Name"), "x").is_err());
        assert!(check_secret_ref(&r(""), "x").is_err());
        assert!(check_secret_ref(&Value::Null, "x").is_ok());
    }
}
