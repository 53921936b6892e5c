//! Platform selection: which platforms of a multi-platform source a sync copies.
//!
//! - No selection: the source manifest as it is (the default; the digest is kept).
//! - One platform of an index: that child manifest, byte for byte; the destination's
//!   digest is the source child's digest.
//! - Several: a new index holding only the selected entries (as the source wrote them, in
//!   the source's order), with every other field of the source index (annotations
//!   included). It is serialised canonically (keys sorted, no whitespace), so the same
//!   source and the same selection always give the same digest, whatever order the
//!   platforms were listed in and whichever front end asked.
//! - A single-platform source either has the selected platform (read from its config)
//!   and is copied as it is, or the selection is an error.
//! - A platform the source does not have is an error naming the platforms it has.
//!
//! What the selection gives depends only on the source manifest's bytes (and, for a
//! single-platform source, its config), which its digest pins; so a caller that knows the
//! result for a source digest need not read the source again ([`crate::Selection`]).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The most platforms one selection may name.
pub const MAX_PLATFORMS: usize = 64;
/// The longest component (`os`, `architecture`, `variant`) of a platform string.
pub const MAX_COMPONENT: usize = 32;

/// An `os/architecture[/variant]` platform, e.g. `linux/amd64` or `linux/arm64/v8`.
///
/// Components are lower-case ASCII letters, digits and `_`, 1 to 32 characters each (the
/// values Go and the OCI image spec use). Matching follows containerd's normalisation:
/// `arm64` without a variant is `arm64/v8`, `arm` without one is `arm/v7`, and
/// `x86_64`/`aarch64` are `amd64`/`arm64`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// Parses and validates `os/architecture[/variant]`.
    pub fn parse(input: &str) -> Result<Platform> {
        let invalid = |reason: String| Error::InvalidPlatform {
            input: input.chars().take(100).collect(),
            reason,
        };
        let parts: Vec<&str> = input.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(invalid(
                "expected os/architecture or os/architecture/variant, e.g. linux/amd64 or linux/arm64/v8".into(),
            ));
        }
        for (part, name) in parts.iter().zip(["os", "architecture", "variant"]) {
            check_component(part, name).map_err(invalid)?;
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// The operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The CPU architecture, e.g. `arm64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The variant, e.g. `v8`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The form two platforms are compared in.
    fn normalized(&self) -> (String, String, String) {
        normalize(&self.os, &self.architecture, self.variant.as_deref())
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Platform> {
        Platform::parse(s)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Parses a list of platform strings (at most [`MAX_PLATFORMS`]).
pub fn parse_platforms<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<Platform>> {
    if inputs.len() > MAX_PLATFORMS {
        return Err(Error::InvalidPlatform {
            input: format!("{} platforms", inputs.len()),
            reason: format!("at most {MAX_PLATFORMS} platforms may be selected"),
        });
    }
    inputs.iter().map(|s| Platform::parse(s.as_ref())).collect()
}

fn check_component(part: &str, name: &str) -> std::result::Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {name} is empty"));
    }
    if part.len() > MAX_COMPONENT {
        return Err(format!(
            "the {name} is longer than {MAX_COMPONENT} characters"
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "the {name} may hold only lower-case letters, digits and '_', not {c:?}"
        ));
    }
    Ok(())
}

fn normalize(os: &str, architecture: &str, variant: Option<&str>) -> (String, String, String) {
    let variant = variant.unwrap_or("");
    let (arch, variant) = match architecture {
        "x86_64" | "x86-64" => ("amd64", variant),
        "aarch64" | "arm64" => ("arm64", if variant == "v8" { "" } else { variant }),
        "arm" if variant.is_empty() => ("arm", "v7"),
        a => (a, variant),
    };
    (os.to_string(), arch.to_string(), variant.to_string())
}

mod select;
pub(crate) use select::{listed, pick, Pick};

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn platform_strings_are_validated() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm64/v8").variant(), Some("v8"));
        assert_eq!(p("windows/amd64").os(), "windows");
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/",
            "linux/arm64/v8/x",
            "Linux/amd64",
            "linux/amd64 ",
            "linux/am d64",
            "linux/amd64\n",
            "linux\\amd64",
            "linux/../amd64",
        ] {
            let e = Platform::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
        let long = format!("linux/{}", "a".repeat(MAX_COMPONENT + 1));
        assert!(Platform::parse(&long).is_err());
        let many: Vec<String> = (0..=MAX_PLATFORMS).map(|_| "linux/amd64".into()).collect();
        assert!(parse_platforms(&many).is_err());
    }

    #[test]
    fn matching_follows_containerd_normalisation() {
        assert_eq!(
            p("linux/arm64").normalized(),
            p("linux/arm64/v8").normalized()
        );
        assert_eq!(p("linux/arm").normalized(), p("linux/arm/v7").normalized());
        assert_ne!(
            p("linux/arm/v6").normalized(),
            p("linux/arm/v7").normalized()
        );
        assert_eq!(
            normalize("linux", "x86_64", None),
            p("linux/amd64").normalized()
        );
    }
}
