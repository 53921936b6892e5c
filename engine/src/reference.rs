//! Docker-style image references: parsing, Docker Hub normalisation and the `id` format.
//!
//! Grammar accepted: `[host[:port]/]path[:tag][@sha256:hex]`. The first path component
//! is a registry host when it contains a `.` or a `:`, or is `localhost`; otherwise the
//! reference is on Docker Hub.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The registry name users write for Docker Hub after normalisation.
pub const DOCKER_HUB: &str = "docker.io";
/// The API endpoint behind Docker Hub.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The legacy index URL Docker stores Docker Hub's credentials under (credential helpers).
pub const DOCKER_HUB_LEGACY_INDEX: &str = "https://index.docker.io/v1/";
/// Every spelling of Docker Hub's registry, all normalised to [`DOCKER_HUB`]: the one
/// list (references, credential lookup, the controller's policy all go through
/// [`canonical_registry`]).
pub const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
    "registry-1.docker.io",
];

/// A content digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    /// Builds a digest from a finished hasher.
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// `sha256:...` as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or(&self.0)
    }

    fn check(input: &str) -> Result<(), String> {
        let (alg, hex) = input
            .split_once(':')
            .ok_or_else(|| "a digest must look like sha256:<64 hex characters>".to_string())?;
        if alg != "sha256" {
            return Err(format!(
                "unsupported digest algorithm {alg:?} (only sha256 is supported)"
            ));
        }
        if hex.len() != 64 {
            return Err(format!(
                "a sha256 digest has 64 hex characters, this one has {}",
                hex.len()
            ));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("a sha256 digest may only contain lowercase hex characters".into());
        }
        Ok(())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Digest::check(s).map_err(|reason| Error::InvalidReference {
            input: s.to_string(),
            reason,
        })?;
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference. The error names the input and what is wrong with it.
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let bad = |reason: &str| Error::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(bad("the reference is empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "a reference may not contain spaces or control characters",
            ));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let digest = Digest::check(d)
                    .map(|_| Digest(d.to_string()))
                    .map_err(|r| bad(&r))?;
                (n, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' only if no '/' comes after it (host:port/repo).
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(bad("the repository name is empty"));
        }
        if let Some(t) = tag {
            check_tag(t).map_err(|r| bad(&r))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first.eq_ignore_ascii_case("localhost") =>
            {
                (
                    canonical_registry(first).map_err(|r| bad(&r))?,
                    rest.to_string(),
                )
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        check_path(&path).map_err(|r| bad(&r))?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Registry name as normalised (`docker.io` for Docker Hub, `host:port` otherwise).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host:port to send API requests to (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was written).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to put after `/manifests/`: the digest when present, else the tag.
    pub fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }

    /// `registry/repository`, normalised.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The `id` used by every front end: `<normalised repository>@<digest>`.
    pub fn id(&self, digest: &Digest) -> String {
        format!("{}@{}", self.repo_name(), digest)
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with another tag (digest dropped).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, Error> {
        check_tag(tag).map_err(|reason| Error::InvalidReference {
            input: tag.to_string(),
            reason,
        })?;
        Ok(Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if tag.len() > 128 {
        return Err("a tag may be at most 128 characters".into());
    }
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .map(|c| c.is_ascii_alphanumeric() || c == '_')
        .unwrap_or(false);
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "tag {tag:?} is invalid: use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// The one canonical spelling of a registry host, used by the reference parser, the
/// credential lookup and the controller's tenant policy, so that two spellings of one
/// registry can never be told apart by a rule or a credential:
/// - the host is lower-cased and loses a trailing dot (`GCR.IO.` is `gcr.io`);
/// - the HTTPS default port goes (`gcr.io:443` and `gcr.io:0443` are `gcr.io`), other
///   ports are written as plain numbers (`:05000` is `:5000`);
/// - Docker Hub's aliases (`index.docker.io`, `registry-1.docker.io`,
///   `registry.hub.docker.com`) are `docker.io`;
/// - a host that ends in a number must be a dotted-quad IPv4 address in plain decimal:
///   shorthand that resolvers also accept (`127.1`, `2130706433`, `0x7f.0.0.1`,
///   `0177.0.0.1`) is refused, since a policy could not recognise it.
///
/// The error says what is wrong, for an `InvalidReference`.
pub fn canonical_registry(host: &str) -> Result<String, String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!("registry port {p:?} is not a number between 0 and 65535")
                })?,
        ),
        None => None,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    check_host_name(&name)?;
    check_numeric_host(&name)?;
    let name = if DOCKER_HUB_ALIASES.contains(&name.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        name
    };
    Ok(match port {
        None | Some(443) => name,
        Some(p) => format!("{name}:{p}"),
    })
}

fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        || name.starts_with('.')
        || name.starts_with('-')
        || name.contains("..")
    {
        return Err(format!("registry host {name:?} is not a valid host name"));
    }
    Ok(())
}

/// URL parsers and resolvers read a host whose last label is a number as an IPv4
/// address, in many spellings; only the plain dotted quad is accepted.
fn check_numeric_host(name: &str) -> Result<(), String> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = |l: &str| {
        !l.is_empty()
            && (l.bytes().all(|b| b.is_ascii_digit())
                || (l.starts_with("0x") && l[2..].bytes().all(|b| b.is_ascii_hexdigit())))
    };
    if !numeric(last) {
        return Ok(());
    }
    let labels: Vec<&str> = name.split('.').collect();
    let plain = labels.len() == 4
        && labels.iter().all(|l| {
            l.bytes().all(|b| b.is_ascii_digit())
                && (l.len() == 1 || !l.starts_with('0'))
                && l.parse::<u8>().is_ok()
        });
    if plain {
        Ok(())
    } else {
        Err(format!(
            "registry host {name:?} is a numeric IPv4 shorthand; write the address as four decimal numbers (e.g. 127.0.0.1)"
        ))
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(
                "the repository name has an empty path component ('//' or a trailing '/')".into(),
            );
        }
        if component.contains("..") || component == "." {
            return Err(format!(
                "repository path component {component:?} is invalid ('..' is not allowed)"
            ));
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "repository names must be lowercase, {component:?} contains upper-case letters"
            ));
        }
        let ok_chars = component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        let ends_ok = component
            .chars()
            .next()
            .map(|c| c.is_ascii_alphanumeric())
            .unwrap_or(false)
            && component
                .chars()
                .last()
                .map(|c| c.is_ascii_alphanumeric())
                .unwrap_or(false);
        if !ok_chars || !ends_ok {
            return Err(format!(
                "repository path component {component:?} is invalid: use lowercase letters, digits and single separators ('.', '_', '-') between them"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_spellings_are_one_repository() {
        for input in [
            "busybox",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox",
            "index.docker.io/library/busybox",
            "registry.hub.docker.com/library/busybox",
            "registry.hub.docker.com/busybox:latest",
        ] {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.repo_name(), "docker.io/library/busybox", "{input}");
            assert_eq!(r.api_host(), "registry-1.docker.io");
            assert_eq!(r.tag(), Some("latest"));
        }
    }

    #[test]
    fn host_port_is_not_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/repo").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "repo");
        assert_eq!(r.tag(), Some("latest"));
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(r.id(&d), format!("127.0.0.1:5000/repo@sha256:{HEX}"));
        let r = Reference::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("v1"))
        );
    }

    #[test]
    fn tag_and_digest_resolve_by_digest() {
        let r = Reference::parse(&format!("gcr.io/p/busybox:1.32@sha256:{HEX}")).unwrap();
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.tag(), Some("1.32"));
        let r = Reference::parse(&format!("gcr.io/p/busybox@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), None);
    }

    #[test]
    fn bad_references_name_input_and_problem() {
        let cases = [
            ("", "empty"),
            ("gcr.io/p/BusyBox:1", "lowercase"),
            ("busybox@sha256:abc", "64 hex"),
            (&format!("busybox@md5:{HEX}") as &str, "algorithm"),
            ("busy box", "spaces"),
            ("gcr.io/p/../x", "'..'"),
            ("gcr.io/p/x:", "tag"),
            ("gcr.io//x", "empty path"),
        ];
        for (input, needle) in cases {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    }

    #[test]
    fn spellings_of_one_registry_are_one_registry() {
        for (input, registry) in [
            ("EUROPE-docker.pkg.dev/prod/x:1", "europe-docker.pkg.dev"),
            (
                "europe-docker.pkg.dev:443/prod/x:1",
                "europe-docker.pkg.dev",
            ),
            (
                "europe-docker.pkg.dev:0443/prod/x:1",
                "europe-docker.pkg.dev",
            ),
            ("europe-docker.pkg.dev./prod/x:1", "europe-docker.pkg.dev"),
            ("GCR.IO/x:1", "gcr.io"),
            ("gcr.io./x:1", "gcr.io"),
            ("gcr.io:443/x:1", "gcr.io"),
            ("Index.Docker.IO/library/busybox:1", "docker.io"),
            ("index.docker.io:443/library/busybox:1", "docker.io"),
            ("REGISTRY-1.docker.io./library/busybox:1", "docker.io"),
            ("127.0.0.1.:5000/x:1", "127.0.0.1:5000"),
            ("127.0.0.1:05000/x:1", "127.0.0.1:5000"),
            ("LOCALHOST:5000/x:1", "localhost:5000"),
        ] {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.registry(), registry, "{input}");
        }
    }

    #[test]
    fn numeric_ipv4_shorthand_is_refused() {
        for host in [
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "0x7f.1",
            "0177.0.0.1",
            "127.000.0.1",
            "127.0.0.256",
            "1.2.3.4.5",
        ] {
            let input = format!("{host}:5000/x:1");
            let err = Reference::parse(&input).unwrap_err().to_string();
            assert!(err.contains("numeric IPv4"), "{input}: {err}");
        }
        assert!(Reference::parse("127.0.0.1:5000/x").is_ok());
        assert!(Reference::parse("10.0.0.1/x").is_ok());
        // A port that is not plain digits is refused too.
        assert!(Reference::parse("gcr.io:+443/x").is_err());
    }

    #[test]
    fn display_round_trips() {
        for input in ["gcr.io/p/busybox:1.32", "127.0.0.1:5000/a/b:c"] {
            assert_eq!(Reference::parse(input).unwrap().to_string(), input);
        }
    }
}
