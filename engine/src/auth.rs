//! Credentials: the [`CredentialProvider`] trait and its implementations.
//!
//! Sources are tried in order by [`ChainProvider`], first match wins:
//! explicit credentials ([`StaticProvider`]), Docker `config.json`
//! ([`DockerConfigProvider`]), Google application default credentials
//! ([`GoogleProvider`]) and finally anonymous (no credential). Front ends add their
//! own providers (the controller reads Kubernetes Secrets).
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` and `Display` never show the value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// A secret string. Never printed; zeroed in memory when dropped (`secrecy`).
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(secrecy::SecretString::from(value.into()))
    }
    /// The secret value; only for building request headers.
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret as _;
        self.0.expose_secret()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A credential for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (Basic auth, or the token server's Basic login).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: Secret,
    },
    /// An OAuth2 refresh token (Docker config `identitytoken`).
    IdentityToken(Secret),
}

impl Credential {
    /// Basic credential from `user` and `password`.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credential {
        Credential::Basic {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// Parses `USER:PASS` (the password may contain ':').
    pub fn parse_user_pass(input: &str) -> Result<Credential> {
        match input.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credential::basic(u, p)),
            _ => Err(Error::Config(
                "credentials must be given as USER:PASSWORD (the user may not be empty)".into(),
            )),
        }
    }
}

/// A source of registry credentials.
///
/// `registry` is the normalised registry name of a [`crate::Reference`]: `docker.io` for
/// Docker Hub, otherwise `host[:port]`. `Ok(None)` means "nothing from this source".
#[async_trait]
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    /// The credential for `registry`, if this source has one.
    async fn credential(&self, registry: &str) -> Result<Option<Credential>>;
}

/// No credentials at all (anonymous pulls, including the anonymous token challenge).
#[derive(Debug, Default, Clone)]
pub struct Anonymous;

#[async_trait]
impl CredentialProvider for Anonymous {
    async fn credential(&self, _registry: &str) -> Result<Option<Credential>> {
        Ok(None)
    }
}

/// Explicit credentials: per registry, and/or one for every registry.
#[derive(Debug, Default, Clone)]
pub struct StaticProvider {
    by_registry: HashMap<String, Credential>,
    any: Option<Credential>,
}

impl StaticProvider {
    /// An empty provider.
    pub fn new() -> StaticProvider {
        StaticProvider::default()
    }
    /// Adds a credential for one registry (`host[:port]`; Docker Hub aliases accepted).
    pub fn with(mut self, registry: &str, credential: Credential) -> StaticProvider {
        self.by_registry
            .insert(normalise_registry(registry), credential);
        self
    }
    /// A credential used for every registry not listed explicitly.
    pub fn with_default(mut self, credential: Credential) -> StaticProvider {
        self.any = Some(credential);
        self
    }
    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty() && self.any.is_none()
    }
}

#[async_trait]
impl CredentialProvider for StaticProvider {
    async fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        Ok(self
            .by_registry
            .get(registry)
            .or(self.any.as_ref())
            .cloned())
    }
}

/// Tries providers in order; the first `Some` wins. Errors stop the chain.
#[derive(Debug, Clone, Default)]
pub struct ChainProvider {
    providers: Vec<Arc<dyn CredentialProvider>>,
}

impl ChainProvider {
    /// An empty chain (anonymous).
    pub fn new() -> ChainProvider {
        ChainProvider::default()
    }
    /// Appends a provider.
    pub fn push(mut self, provider: Arc<dyn CredentialProvider>) -> ChainProvider {
        self.providers.push(provider);
        self
    }
    /// The usual chain: `explicit`, Docker config (if readable), Google ADC, anonymous.
    pub fn standard(explicit: StaticProvider, docker_config: Option<PathBuf>) -> ChainProvider {
        let mut chain = ChainProvider::new();
        if !explicit.is_empty() {
            chain = chain.push(Arc::new(explicit));
        }
        chain
            .push(Arc::new(DockerConfigProvider::new(docker_config)))
            .push(Arc::new(GoogleProvider::from_environment()))
    }
}

#[async_trait]
impl CredentialProvider for ChainProvider {
    async fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        for p in &self.providers {
            if let Some(c) = p.credential(registry).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// Maps registry spellings (URLs, Docker Hub aliases, upper case, `:443`) to the
/// engine's registry name, with [`crate::reference::canonical_registry`]. A spelling
/// that is not a valid registry host is returned lower-cased, so it matches nothing.
pub fn normalise_registry(input: &str) -> String {
    let s = input
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or(s);
    crate::reference::canonical_registry(s).unwrap_or_else(|_| s.to_ascii_lowercase())
}

// === Docker config ===

/// Reads Docker's `config.json`: `auths` (base64 `auth`, `identitytoken`), `credHelpers`
/// and `credsStore` (running `docker-credential-NAME get`).
#[derive(Debug, Clone)]
pub struct DockerConfigProvider {
    path: Option<PathBuf>,
}

#[derive(serde::Deserialize, Default)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl DockerConfigProvider {
    /// `path` or, when `None`, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub fn new(path: Option<PathBuf>) -> DockerConfigProvider {
        DockerConfigProvider { path }
    }

    fn resolve_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.path {
            return Some(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(Path::new(&dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
    }

    async fn load(&self, path: &Path) -> Result<Option<DockerConfigFile>> {
        match tokio::fs::read(path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Config(format!(
                    "docker config {}: invalid JSON: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.path.is_none() => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("reading docker config {}", path.display()),
                source: e,
            }),
        }
    }
}

/// Parses the contents of a Docker config file (or a `.dockerconfigjson` Secret) and
/// returns the static credential for `registry` from its `auths`.
pub fn docker_config_auth(json: &[u8], registry: &str) -> Result<Option<Credential>> {
    let cfg: DockerConfigFile = serde_json::from_slice(json)
        .map_err(|e| Error::Config(format!("docker config: invalid JSON: {e}")))?;
    auth_from_entries(&cfg.auths, registry)
}

fn auth_from_entries(
    auths: &HashMap<String, DockerAuthEntry>,
    registry: &str,
) -> Result<Option<Credential>> {
    let entry = auths
        .iter()
        .find(|(k, _)| normalise_registry(k) == registry)
        .map(|(_, v)| v);
    let Some(entry) = entry else { return Ok(None) };
    if let Some(token) = entry.identity_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(Secret::new(token))));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| Error::Credentials {
                registry: registry.into(),
                message: "docker config `auth` is not valid base64".into(),
            })?;
        let text = String::from_utf8(decoded).map_err(|_| Error::Credentials {
            registry: registry.into(),
            message: "docker config `auth` is not UTF-8".into(),
        })?;
        return Credential::parse_user_pass(&text)
            .map(Some)
            .map_err(|_| Error::Credentials {
                registry: registry.into(),
                message: "docker config `auth` must decode to USER:PASSWORD".into(),
            });
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credential::basic(u.clone(), p.clone())));
    }
    Ok(None)
}

/// Whether `name` may name a credential helper: `[A-Za-z0-9._-]+` (a config file
/// must not pick a path or shell syntax for the program we run).
pub fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>> {
    use tokio::io::AsyncWriteExt;
    if !valid_helper_name(helper) {
        return Err(Error::Credentials {
            registry: registry.into(),
            message: "docker config names a credential helper that is not [A-Za-z0-9._-]+".into(),
        });
    }
    let program = format!("docker-credential-{helper}");
    // Docker Hub's credentials are stored under the legacy index URL.
    let server = if registry == DOCKER_HUB {
        crate::reference::DOCKER_HUB_LEGACY_INDEX.to_string()
    } else {
        registry.to_string()
    };
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Credentials {
            registry: registry.into(),
            message: format!("cannot run credential helper {program}: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| Error::Io {
                context: format!("writing to {program}"),
                source: e,
            })?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| Error::Credentials {
            registry: registry.into(),
            message: format!("credential helper {program} did not answer within 30s"),
        })?
        .map_err(|e| Error::Io {
            context: format!("running {program}"),
            source: e,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The helper protocol reports "credentials not found" on stdout.
        if stdout.contains("credentials not found") || stderr.contains("credentials not found") {
            return Ok(None);
        }
        return Err(Error::Credentials {
            registry: registry.into(),
            message: format!("credential helper {program} failed ({})", out.status),
        });
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|_| Error::Credentials {
            registry: registry.into(),
            message: format!(
                "credential helper {program} printed something that is not its JSON answer"
            ),
        })?;
    if answer.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(Secret::new(answer.secret))));
    }
    Ok(Some(Credential::basic(answer.username, answer.secret)))
}

#[async_trait]
impl CredentialProvider for DockerConfigProvider {
    async fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        let Some(path) = self.resolve_path() else {
            return Ok(None);
        };
        let Some(cfg) = self.load(&path).await? else {
            return Ok(None);
        };
        if let Some(helper) = cfg
            .cred_helpers
            .iter()
            .find(|(k, _)| normalise_registry(k) == registry)
            .map(|(_, v)| v)
        {
            return run_helper(helper, registry).await;
        }
        if let Some(found) = auth_from_entries(&cfg.auths, registry)? {
            return Ok(Some(found));
        }
        if let Some(store) = cfg.creds_store.as_deref().filter(|s| !s.is_empty()) {
            return run_helper(store, registry).await;
        }
        Ok(None)
    }
}

// === Google ===

/// A source of Google OAuth2 access tokens (implemented over `gcp_auth`; tests inject fakes).
#[async_trait]
pub trait GoogleTokenSource: Send + Sync {
    /// A currently valid access token.
    async fn access_token(&self) -> Result<Secret>;
}

struct GcpAuthSource(Arc<dyn gcp_auth::TokenProvider>);

#[async_trait]
impl GoogleTokenSource for GcpAuthSource {
    async fn access_token(&self) -> Result<Secret> {
        // gcp_auth caches the token and refreshes it shortly before it expires.
        let token = self
            .0
            .token(&["https://www.googleapis.com/auth/cloud-platform"])
            .await
            .map_err(|e| Error::Credentials {
                registry: "gcr.io".into(),
                message: format!("Google application default credentials: {e}"),
            })?;
        Ok(Secret::new(token.as_str()))
    }
}

/// Google application default credentials for `gcr.io`, `*.gcr.io` and `*-docker.pkg.dev`
/// (user `oauth2accesstoken`). The ADC lookup happens on first use, for a Google host
/// only, and gives up after `probe_timeout` so nothing stalls outside Google Cloud.
pub struct GoogleProvider {
    source: OnceCell<Option<Arc<dyn GoogleTokenSource>>>,
    probe_timeout: Duration,
}

impl fmt::Debug for GoogleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleProvider")
            .field("probed", &self.source.initialized())
            .finish()
    }
}

impl GoogleProvider {
    /// Uses `gcp_auth`'s lookup (env var, gcloud, metadata server) lazily.
    pub fn from_environment() -> GoogleProvider {
        GoogleProvider {
            source: OnceCell::new(),
            probe_timeout: Duration::from_secs(5),
        }
    }

    /// Uses the given token source (tests, or callers with their own Google auth).
    pub fn with_source(source: Arc<dyn GoogleTokenSource>) -> GoogleProvider {
        GoogleProvider {
            source: OnceCell::new_with(Some(Some(source))),
            probe_timeout: Duration::from_secs(5),
        }
    }

    /// True for hosts served by Google's registries.
    pub fn is_google_registry(registry: &str) -> bool {
        let host = registry.split(':').next().unwrap_or(registry);
        host == "gcr.io" || host.ends_with(".gcr.io") || host.ends_with("-docker.pkg.dev")
    }

    async fn source(&self) -> Option<Arc<dyn GoogleTokenSource>> {
        self.source
            .get_or_init(|| async {
                match tokio::time::timeout(self.probe_timeout, gcp_auth::provider()).await {
                    Ok(Ok(p)) => Some(Arc::new(GcpAuthSource(p)) as Arc<dyn GoogleTokenSource>),
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "no Google application default credentials; Google registries are accessed anonymously");
                        None
                    }
                    Err(_) => {
                        tracing::info!("Google credential lookup timed out; Google registries are accessed anonymously");
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

#[async_trait]
impl CredentialProvider for GoogleProvider {
    async fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        if !Self::is_google_registry(registry) {
            return Ok(None);
        }
        let Some(source) = self.source().await else {
            return Ok(None);
        };
        let token = source.access_token().await?;
        Ok(Some(Credential::Basic {
            username: "oauth2accesstoken".into(),
            password: token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Credential::basic("user", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("user"));
    }

    #[test]
    fn docker_config_auths_decode() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"identitytoken":"tok"}}}"#;
        assert_eq!(
            docker_config_auth(json, "docker.io").unwrap(),
            Some(Credential::basic("user", "pa:ss"))
        );
        assert_eq!(
            docker_config_auth(json, "127.0.0.1:5000").unwrap(),
            Some(Credential::IdentityToken(Secret::new("tok")))
        );
        assert_eq!(docker_config_auth(json, "quay.io").unwrap(), None);
    }

    #[tokio::test]
    async fn credential_helper_names_are_checked_before_running_anything() {
        assert!(valid_helper_name("ecr-login"));
        assert!(valid_helper_name("desktop.exe"));
        for bad in ["", "../../tmp/x", "a b", "x;rm", "/bin/sh", "a\nb"] {
            assert!(!valid_helper_name(bad), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, br#"{"credHelpers":{"r.example":"../../../bin/sh"}}"#).unwrap();
        let err = DockerConfigProvider::new(Some(path))
            .credential("r.example")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("[A-Za-z0-9._-]+"), "{err}");
    }

    struct Fake;
    #[async_trait]
    impl GoogleTokenSource for Fake {
        async fn access_token(&self) -> Result<Secret> {
            Ok(Secret::new("ya29.fake"))
        }
    }

    #[tokio::test]
    async fn google_provider_only_answers_google_hosts() {
        let p = GoogleProvider::with_source(Arc::new(Fake));
        assert_eq!(
            p.credential("europe-west1-docker.pkg.dev").await.unwrap(),
            Some(Credential::basic("oauth2accesstoken", "ya29.fake"))
        );
        assert!(p.credential("eu.gcr.io").await.unwrap().is_some());
        assert_eq!(p.credential("quay.io").await.unwrap(), None);
    }

    #[tokio::test]
    async fn lazy_google_probe_does_not_delay_other_registries() {
        let p = GoogleProvider::from_environment();
        let start = std::time::Instant::now();
        assert_eq!(p.credential("127.0.0.1:5000").await.unwrap(), None);
        assert!(start.elapsed() < Duration::from_millis(50));
        assert!(
            !p.source.initialized(),
            "a non-Google registry must not trigger the ADC probe"
        );
    }
}
