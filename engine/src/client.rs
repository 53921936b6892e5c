//! One registry endpoint: the auth challenge and token cache, retries with backoff,
//! typed errors, and the manifest, blob and tag operations of the distribution API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::Mutex;

use crate::auth::{Credential, CredentialProvider, Secret};
use crate::error::{classify, Error, ErrorKind, Result};
use crate::manifest::ACCEPT as MANIFEST_ACCEPT;
use crate::reference::{Digest, Reference};
use crate::{EngineConfig, RequestObserver};

/// Retry and timeout behaviour for registry requests.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request (first try included).
    pub max_attempts: u32,
    /// First backoff delay; doubled each attempt, with jitter.
    pub base_delay: Duration,
    /// Upper bound of one backoff delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` we are willing to wait.
    pub max_retry_after: Duration,
    /// Overall deadline for one operation, retries included.
    pub deadline: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for a registry's next bytes: its answer, the next part of a body,
    /// or (uploads) taking the next bytes we send. The attempt then fails as a transient
    /// error and is retried, so a registry that stops answering cannot hang a sync.
    pub stall_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
            deadline: crate::DEFAULT_DEADLINE,
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, honouring `Retry-After` when given.
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        // Full jitter in [exp/2, exp].
        let half = exp / 2;
        half + half.mul_f64(jitter())
    }
}

fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % 10_000) as f64 / 10_000.0
}

pub(crate) fn build_http(config: &EngineConfig) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(config.retry.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // Redirects are followed by hand so credentials never leak to blob storage.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| Error::Io {
            context: format!("reading CA file {}", path.display()),
            source: e,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::Config(format!(
                "CA file {}: not a PEM certificate bundle: {e}",
                path.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "CA file {} contains no PEM certificates",
                path.display()
            )));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((key, after)) = s.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        s = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
    })
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope set.
    tokens: HashMap<String, (Secret, Instant)>,
    /// The credential from the provider, and when it was looked up.
    credential: Option<(Option<Credential>, Instant)>,
}

/// An access scope for a token request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    repository: String,
    actions: &'static str,
}

impl Scope {
    /// Pull access to `repository`.
    pub fn pull(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            actions: "pull",
        }
    }
    /// Pull and push access to `repository`.
    pub fn push(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            actions: "pull,push",
        }
    }
    /// Delete access (plus pull) to `repository`.
    pub fn delete(repository: &str) -> Scope {
        Scope {
            repository: repository.to_string(),
            actions: "pull,push,delete",
        }
    }
    fn render(&self) -> String {
        format!("repository:{}:{}", self.repository, self.actions)
    }
}

/// A client for one registry. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    registry: String,
    base: String,
    credentials: Arc<dyn CredentialProvider>,
    retry: RetryPolicy,
    auth: Mutex<AuthState>,
    /// Set once the registry refused a monolithic upload; then chunked PATCH is used.
    chunked_only: AtomicBool,
    observer: Option<RequestObserver>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestData {
    /// Exact bytes.
    pub bytes: Bytes,
    /// `Content-Type` as served.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// What a blob upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Mounted from another repository.
    Mounted,
    /// The registry opened an upload session at this location.
    Session,
}

/// How long a looked-up credential is reused.
const CREDENTIAL_TTL: Duration = Duration::from_secs(300);

/// Chunk size used when a registry refuses monolithic uploads (ECR needs >= 5 MiB).
const CHUNK_SIZE: usize = 8 * 1024 * 1024;

/// How long an error answer's body may take to arrive.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish()
    }
}

impl Client {
    pub(crate) fn new(
        http: reqwest::Client,
        registry: String,
        host: String,
        insecure: bool,
        credentials: Arc<dyn CredentialProvider>,
        retry: RetryPolicy,
        observer: Option<RequestObserver>,
    ) -> Client {
        let scheme = if insecure { "http" } else { "https" };
        Client {
            inner: Arc::new(ClientInner {
                http,
                registry,
                base: format!("{scheme}://{host}"),
                credentials,
                retry,
                auth: Mutex::new(AuthState::default()),
                chunked_only: AtomicBool::new(false),
                observer,
            }),
        }
    }

    /// The retry policy in use.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// Reports one answered (or failed) request to the observer and passes it on.
    fn observed(
        &self,
        operation: &'static str,
        result: reqwest::Result<Response>,
    ) -> reqwest::Result<Response> {
        if let Some(o) = &self.inner.observer {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            o.observe(&self.inner.registry, operation, status);
        }
        result
    }

    /// The error of a request the registry left unanswered for the stall timeout,
    /// reported to the observer as a request without an answer.
    fn stalled(&self, operation: &'static str, reference: &str) -> Error {
        if let Some(o) = &self.inner.observer {
            o.observe(&self.inner.registry, operation, None);
        }
        Error::Stalled {
            operation,
            reference: reference.to_string(),
            after: self.inner.retry.stall_timeout,
        }
    }

    /// Sends `req`; fails when the registry does not answer within the stall timeout.
    async fn send_once(
        &self,
        operation: &'static str,
        reference: &str,
        req: RequestBuilder,
    ) -> Result<Response> {
        match tokio::time::timeout(self.inner.retry.stall_timeout, req.send()).await {
            Ok(result) => self
                .observed(operation, result)
                .map_err(|e| Error::Transport {
                    operation,
                    reference: reference.to_string(),
                    source: e,
                }),
            Err(_) => Err(self.stalled(operation, reference)),
        }
    }

    /// Reads a small body whole; fails when it stops arriving for the stall timeout.
    pub(crate) async fn body(
        &self,
        operation: &'static str,
        reference: &str,
        resp: Response,
    ) -> Result<Bytes> {
        let stall = self.inner.retry.stall_timeout;
        let mut stream = resp.bytes_stream();
        let mut buf = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    return Err(Error::Transport {
                        operation,
                        reference: reference.to_string(),
                        source: e,
                    })
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(_) => {
                    return Err(Error::Stalled {
                        operation,
                        reference: reference.to_string(),
                        after: stall,
                    })
                }
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base, path)
    }

    // === auth ===

    async fn auth_header(&self, scopes: &[Scope]) -> Result<Option<HeaderValue>> {
        let challenge = self.inner.auth.lock().await.challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match self.credential().await? {
                Some(Credential::Basic { username, password }) => {
                    let raw = format!("{username}:{}", password.expose());
                    let v = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    );
                    Ok(Some(sensitive(&v)?))
                }
                _ => Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let token = self.token(&realm, service.as_deref(), scopes).await?;
                Ok(Some(sensitive(&format!("Bearer {}", token.expose()))?))
            }
        }
    }

    /// The credential for this registry, looked up at most once per
    /// [`CREDENTIAL_TTL`] (Docker config reads and credential helpers are not free;
    /// Google access tokens expire, so the cache must not outlive them).
    async fn credential(&self) -> Result<Option<Credential>> {
        let mut state = self.inner.auth.lock().await;
        if let Some((c, at)) = &state.credential {
            if at.elapsed() < CREDENTIAL_TTL {
                return Ok(c.clone());
            }
        }
        let c = self
            .inner
            .credentials
            .credential(&self.inner.registry)
            .await?;
        state.credential = Some((c.clone(), Instant::now()));
        Ok(c)
    }

    async fn token(&self, realm: &str, service: Option<&str>, scopes: &[Scope]) -> Result<Secret> {
        let mut scopes: Vec<Scope> = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let key = scopes
            .iter()
            .map(Scope::render)
            .collect::<Vec<_>>()
            .join(" ");
        {
            let state = self.inner.auth.lock().await;
            if let Some((tok, exp)) = state.tokens.get(&key) {
                if Instant::now() < *exp {
                    return Ok(tok.clone());
                }
            }
        }
        let credential = self.credential().await?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s.to_string()));
        }
        for s in &scopes {
            query.push(("scope", s.render()));
        }
        let what = format!("token for {}", self.inner.registry);
        let resp = self
            .send_retrying("GET token", &what, || {
                let req = match &credential {
                    Some(Credential::IdentityToken(refresh)) => {
                        let mut form = url::form_urlencoded::Serializer::new(String::new());
                        form.append_pair("grant_type", "refresh_token")
                            .append_pair("refresh_token", refresh.expose())
                            .append_pair("client_id", "imagesync");
                        if let Some(s) = service {
                            form.append_pair("service", s);
                        }
                        for s in &scopes {
                            form.append_pair("scope", &s.render());
                        }
                        self.inner
                            .http
                            .post(realm)
                            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(form.finish())
                    }
                    Some(Credential::Basic { username, password }) => self
                        .inner
                        .http
                        .get(realm)
                        .query(&query)
                        .basic_auth(username, Some(password.expose())),
                    None => self.inner.http.get(realm).query(&query),
                };
                req
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_from_response("GET token", &what, resp).await);
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = self.body("GET token", &what, resp).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| Error::Registry {
            kind: ErrorKind::Unauthorized,
            operation: "GET token",
            reference: what.clone(),
            status: 200,
            code: None,
            message: "the token server's answer is not a token JSON document".into(),
            retry_after: None,
        })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Registry {
                kind: ErrorKind::Unauthorized,
                operation: "GET token",
                reference: what.clone(),
                status: 200,
                code: None,
                message: "the token server returned no token".into(),
                retry_after: None,
            })?;
        // Renew 10% (at least 5s) before the token server's expiry; default is 60s.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(10));
        let margin = (lifetime / 10).max(Duration::from_secs(5));
        let secret = Secret::new(token);
        self.inner.auth.lock().await.tokens.insert(
            key,
            (
                secret.clone(),
                Instant::now() + lifetime.saturating_sub(margin),
            ),
        );
        Ok(secret)
    }

    /// Forgets cached tokens (after a 401 with a token we believed valid).
    async fn forget_tokens(&self) {
        self.inner.auth.lock().await.tokens.clear();
    }

    // === request core ===

    /// Sends a request built by `build` (called again for each attempt) with the auth
    /// header for `scopes`, answering auth challenges and retrying transient failures.
    /// Returns the final response whatever its status; only transport errors and
    /// exhausted retries are errors here.
    pub(crate) async fn send(
        &self,
        operation: &'static str,
        reference: &str,
        scopes: &[Scope],
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let mut req = build(&self.inner.http);
            if let Some(h) = self.auth_header(scopes).await? {
                req = req.header(AUTHORIZATION, h);
            }
            let err = match self.send_once(operation, reference, req).await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    reauthenticated = true;
                    let challenge = resp
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge);
                    match challenge {
                        Some(c) => {
                            let mut state = self.inner.auth.lock().await;
                            let changed = state.challenge.as_ref() != Some(&c);
                            state.challenge = Some(c);
                            state.tokens.clear();
                            drop(state);
                            tracing::debug!(registry = %self.inner.registry, changed, "auth challenge answered");
                            attempt -= 1;
                            continue;
                        }
                        None => return Ok(resp),
                    }
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 429
                        || status == 502
                        || status == 503
                        || status == 504
                        || status == 500
                    {
                        let e = error_from_response(operation, reference, resp).await;
                        e
                    } else {
                        return Ok(resp);
                    }
                }
                Err(e) => e,
            };
            self.backoff(operation, reference, attempt, started, err)
                .await?;
        }
    }

    /// Like [`Client::send`] but without auth (token server requests).
    async fn send_retrying(
        &self,
        operation: &'static str,
        reference: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.send_once(operation, reference, build()).await {
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    error_from_response(operation, reference, resp).await
                }
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            self.backoff(operation, reference, attempt, started, err)
                .await?;
        }
    }

    /// Sleeps before the next attempt, or returns the error when attempts or the
    /// deadline are used up.
    pub(crate) async fn backoff(
        &self,
        operation: &'static str,
        reference: &str,
        attempt: u32,
        started: Instant,
        err: Error,
    ) -> Result<()> {
        let policy = &self.inner.retry;
        if !err.is_retryable() {
            return Err(err);
        }
        // A Retry-After longer than we are willing to wait: retrying earlier would only
        // be refused again, so hand the RateLimited error (with its Retry-After) back.
        if err
            .retry_after()
            .is_some_and(|ra| ra > policy.max_retry_after)
        {
            return Err(err);
        }
        let delay = policy.delay(attempt, err.retry_after());
        let out_of_time = started.elapsed() + delay > policy.deadline;
        if attempt >= policy.max_attempts || out_of_time {
            return Err(Error::RetriesExhausted {
                operation,
                reference: reference.to_string(),
                attempts: attempt,
                last: Box::new(err),
            });
        }
        tracing::warn!(operation, reference, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    // === manifests ===

    /// HEAD the manifest; returns its digest (GET if the header is missing).
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest> {
        let what = reference.to_string();
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            reference.repository(),
            reference.manifest_ref()
        ));
        let scopes = [Scope::pull(reference.repository())];
        let resp = self
            .send("HEAD manifest", &what, &scopes, |h| {
                h.head(&url).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_from_response("HEAD manifest", &what, resp).await);
        }
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        match header {
            Some(d) => {
                if let Some(pinned) = reference.digest() {
                    if *pinned != d {
                        return Err(Error::DigestMismatch {
                            reference: what,
                            expected: pinned.to_string(),
                            actual: d.to_string(),
                        });
                    }
                }
                Ok(d)
            }
            None => Ok(self.get_manifest(reference).await?.digest),
        }
    }

    /// GET the manifest bytes. Verified against the reference's digest when pinned.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<ManifestData> {
        let what = reference.to_string();
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            reference.repository(),
            reference.manifest_ref()
        ));
        let scopes = [Scope::pull(reference.repository())];
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .send("GET manifest", &what, &scopes, |h| {
                    h.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
                })
                .await?;
            if !resp.status().is_success() {
                return Err(error_from_response("GET manifest", &what, resp).await);
            }
            let media_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
                .unwrap_or_default();
            match self.body("GET manifest", &what, resp).await {
                Ok(bytes) => {
                    let digest = Digest::of(&bytes);
                    if let Some(pinned) = reference.digest() {
                        if *pinned != digest {
                            return Err(Error::DigestMismatch {
                                reference: what,
                                expected: pinned.to_string(),
                                actual: digest.to_string(),
                            });
                        }
                    }
                    return Ok(ManifestData {
                        bytes,
                        media_type,
                        digest,
                    });
                }
                Err(err) => {
                    self.backoff("GET manifest", &what, attempt, started, err)
                        .await?;
                }
            }
        }
    }

    /// PUT manifest bytes under `reference` (tag or digest); returns the digest the
    /// registry reports, checked against the bytes.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        let what = reference.to_string();
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            reference.repository(),
            reference.manifest_ref()
        ));
        let scopes = [Scope::push(reference.repository())];
        let expected = Digest::of(&bytes);
        let started = Instant::now();
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let resp = self
                .send("PUT manifest", &what, &scopes, |h| {
                    h.put(&url)
                        .header(CONTENT_TYPE, media_type)
                        .body(bytes.clone())
                })
                .await?;
            if resp.status().is_success() {
                break resp;
            }
            let err = error_from_response("PUT manifest", &what, resp).await;
            // Everything the manifest references is in place and its bytes hash to
            // `expected`, so "blob unknown" or "digest invalid" is the registry's storage
            // catching up (eventually consistent back ends; distribution's filesystem
            // driver rewriting a manifest another client pushes at the same moment).
            // Retry a few times before believing it.
            let settling = matches!(
                err.code(),
                Some("MANIFEST_BLOB_UNKNOWN" | "BLOB_UNKNOWN" | "DIGEST_INVALID")
            );
            if !settling || attempt >= 4 {
                return Err(err);
            }
            let transient = Error::Registry {
                kind: ErrorKind::Transient,
                operation: "PUT manifest",
                reference: what.clone(),
                status: err.status().unwrap_or(400),
                code: err.code().map(str::to_string),
                message: err.to_string(),
                retry_after: None,
            };
            self.backoff("PUT manifest", &what, attempt, started, transient)
                .await?;
        };
        if let Some(got) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if got != expected {
                return Err(Error::DigestMismatch {
                    reference: what,
                    expected: expected.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        Ok(expected)
    }

    /// DELETE a manifest by tag or digest. `Ok(false)` when it was already gone.
    pub async fn delete_manifest(&self, reference: &Reference) -> Result<bool> {
        let what = reference.to_string();
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            reference.repository(),
            reference.manifest_ref()
        ));
        let scopes = [Scope::delete(reference.repository())];
        let resp = self
            .send("DELETE manifest", &what, &scopes, |h| h.delete(&url))
            .await?;
        present("DELETE manifest", &what, resp).await
    }

    // === blobs ===

    /// Whether `repository` has the blob.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::pull(repository)];
        let resp = self
            .send("HEAD blob", &what, &scopes, |h| h.head(&url))
            .await?;
        present("HEAD blob", &what, resp).await
    }

    /// Opens a streaming GET of a blob (following redirects without credentials).
    pub async fn get_blob(&self, repository: &str, digest: &Digest) -> Result<Response> {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::pull(repository)];
        let resp = self
            .send("GET blob", &what, &scopes, |h| h.get(&url))
            .await?;
        if resp.status().is_redirection() {
            let target = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| self.resolve_location(l))
                .ok_or_else(|| Error::Registry {
                    kind: ErrorKind::Transient,
                    operation: "GET blob",
                    reference: what.clone(),
                    status: resp.status().as_u16(),
                    code: None,
                    message: "redirect without a Location".into(),
                    retry_after: None,
                })?;
            let resp = self
                .send_retrying("GET blob", &what, || self.inner.http.get(&target))
                .await?;
            if !resp.status().is_success() {
                return Err(error_from_response("GET blob", &what, resp).await);
            }
            return Ok(resp);
        }
        if !resp.status().is_success() {
            return Err(error_from_response("GET blob", &what, resp).await);
        }
        Ok(resp)
    }

    /// Starts an upload in `repository`, mounting from `mount_from` when given.
    /// Returns `(Upload::Mounted, None)` or `(Upload::Session, Some(location))`.
    pub async fn start_upload(
        &self,
        repository: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<(Upload, Option<String>)> {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        let mut path = format!("/v2/{repository}/blobs/uploads/");
        let mut scopes = vec![Scope::push(repository)];
        if let Some(from) = mount_from {
            path.push_str(&format!("?mount={digest}&from={from}"));
            scopes.push(Scope::pull(from));
        }
        let url = self.url(&path);
        let resp = self
            .send("POST upload", &what, &scopes, |h| {
                h.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount_from.is_some() => Ok((Upload::Mounted, None)),
            StatusCode::ACCEPTED | StatusCode::CREATED => {
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| self.resolve_location(l))
                    .ok_or_else(|| Error::Registry {
                        kind: ErrorKind::Transient,
                        operation: "POST upload",
                        reference: what.clone(),
                        status: resp.status().as_u16(),
                        code: None,
                        message: "upload started without a Location".into(),
                        retry_after: None,
                    })?;
                Ok((Upload::Session, Some(loc)))
            }
            _ => Err(error_from_response("POST upload", &what, resp).await),
        }
    }

    pub(crate) fn resolve_location(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    /// Finishes an upload session with a single PUT streaming `body` (`size` bytes).
    /// Falls back to chunked PATCH once a registry refuses monolithic uploads; the
    /// caller then has to retry with a fresh session and stream.
    pub async fn put_blob<S>(
        &self,
        repository: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        if self.inner.chunked_only.load(Ordering::Relaxed) {
            return self
                .put_blob_chunked(repository, location, digest, body)
                .await;
        }
        let url = with_digest_query(location, digest);
        // The upload may take long; it has stalled only when no byte moved (from the
        // source into the request) for the stall timeout.
        let started = Instant::now();
        let last_progress = Arc::new(AtomicU64::new(0));
        let progress = last_progress.clone();
        let body = body.inspect(move |_| {
            progress.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        let mut req = self
            .inner
            .http
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(h) = self.auth_header(&[Scope::push(repository)]).await? {
            req = req.header(AUTHORIZATION, h);
        }
        let stall = self.inner.retry.stall_timeout;
        let watchdog = async {
            loop {
                let idle = started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last_progress.load(Ordering::Relaxed)));
                if idle >= stall {
                    break;
                }
                tokio::time::sleep(stall - idle).await;
            }
        };
        let resp = tokio::select! {
            result = req.send() => self
                .observed("PUT blob", result)
                .map_err(|e| Error::Transport {
                    operation: "PUT blob",
                    reference: what.clone(),
                    source: e,
                })?,
            () = watchdog => return Err(self.stalled("PUT blob", &what)),
        };
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status().as_u16();
        let err = error_from_response("PUT blob", &what, resp).await;
        if status == 401 {
            // A token that expired mid-upload: forget it, the caller's retry gets a new one.
            self.forget_tokens().await;
            return Err(Error::Registry {
                kind: ErrorKind::Transient,
                operation: "PUT blob",
                reference: what,
                status,
                code: err.code().map(str::to_string),
                message: "token rejected during upload; retrying with a new token".into(),
                retry_after: None,
            });
        }
        if matches!(status, 400 | 405 | 411 | 413 | 416)
            && err.kind() != ErrorKind::Integrity
            && err.code() != Some("DIGEST_INVALID")
        {
            tracing::info!(registry = %self.inner.registry, %status, "monolithic upload refused; switching to chunked uploads");
            self.inner.chunked_only.store(true, Ordering::Relaxed);
            return Err(Error::Registry {
                kind: ErrorKind::Transient,
                operation: "PUT blob",
                reference: what,
                status,
                code: err.code().map(str::to_string),
                message: "monolithic upload refused; retrying in chunks".into(),
                retry_after: None,
            });
        }
        Err(err)
    }

    async fn put_blob_chunked<S>(
        &self,
        repository: &str,
        location: &str,
        digest: &Digest,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        let scopes = [Scope::push(repository)];
        let mut location = location.to_string();
        let mut offset: u64 = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
        let mut body = Box::pin(body);
        let mut done = false;
        let stall = self.inner.retry.stall_timeout;
        while !done {
            let next = tokio::time::timeout(stall, body.next())
                .await
                .map_err(|_| Error::Stalled {
                    operation: "GET blob",
                    reference: what.clone(),
                    after: stall,
                })?;
            match next {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::Io {
                        context: format!("reading {what}"),
                        source: e,
                    })
                }
                None => done = true,
            }
            if buf.len() >= CHUNK_SIZE || (done && !buf.is_empty()) {
                let chunk = Bytes::from(std::mem::take(&mut buf));
                let end = offset + chunk.len() as u64 - 1;
                let loc = location.clone();
                let resp = self
                    .send("PATCH blob", &what, &scopes, |h| {
                        h.patch(&loc)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header("Content-Range", format!("{offset}-{end}"))
                            .header(CONTENT_LENGTH, chunk.len())
                            .body(chunk.clone())
                    })
                    .await?;
                if !resp.status().is_success() {
                    return Err(error_from_response("PATCH blob", &what, resp).await);
                }
                if let Some(l) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                    location = self.resolve_location(l);
                }
                offset = end + 1;
            }
        }
        let url = with_digest_query(&location, digest);
        let resp = self
            .send("PUT blob", &what, &scopes, |h| {
                h.put(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_from_response("PUT blob", &what, resp).await);
        }
        Ok(())
    }

    /// DELETE a blob. `Ok(false)` when it was already gone.
    pub async fn delete_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let what = format!("{}/{}@{}", self.inner.registry, repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::delete(repository)];
        let resp = self
            .send("DELETE blob", &what, &scopes, |h| h.delete(&url))
            .await?;
        present("DELETE blob", &what, resp).await
    }

    // === tags ===

    /// Every tag of `repository`, following `Link` pagination.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let what = format!("{}/{}", self.inner.registry, repository);
        let scopes = [Scope::pull(repository)];
        let mut url = self.url(&format!("/v2/{repository}/tags/list?n=1000"));
        let mut tags = Vec::new();
        loop {
            let u = url.clone();
            let resp = self.send("GET tags", &what, &scopes, |h| h.get(&u)).await?;
            if !resp.status().is_success() {
                let err = error_from_response("GET tags", &what, resp).await;
                if err.is_not_found() {
                    return Ok(tags);
                }
                return Err(err);
            }
            let next = next_link(resp.headers()).map(|l| self.resolve_location(&l));
            #[derive(serde::Deserialize)]
            struct TagList {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let body = self.body("GET tags", &what, resp).await?;
            let list: TagList = serde_json::from_slice(&body).map_err(|e| Error::Registry {
                kind: ErrorKind::Transient,
                operation: "GET tags",
                reference: what.clone(),
                status: 200,
                code: None,
                message: format!("tag list is not JSON: {e}"),
                retry_after: None,
            })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) if n != url => url = n,
                _ => return Ok(tags),
            }
        }
    }
}

fn sensitive(v: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::from_str(v).map_err(|_| {
        Error::Config("credential contains characters not allowed in an HTTP header".into())
    })?;
    h.set_sensitive(true);
    Ok(h)
}

/// `Ok(true)` for a success, `Ok(false)` for "not found", the error otherwise.
async fn present(operation: &'static str, reference: &str, resp: Response) -> Result<bool> {
    if resp.status().is_success() {
        return Ok(true);
    }
    let err = error_from_response(operation, reference, resp).await;
    if err.is_not_found() {
        return Ok(false);
    }
    Err(err)
}

fn with_digest_query(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all(reqwest::header::LINK) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            if part.contains("rel=\"next\"") || part.contains("rel=next") {
                let start = part.find('<')? + 1;
                let end = part.find('>')?;
                return Some(part[start..end].to_string());
            }
        }
    }
    None
}

fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    when.duration_since(std::time::SystemTime::now())
        .ok()
        .or(Some(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form registries send.
fn httpdate_parse(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Turns an error response into an [`Error`], reading the distribution error body.
pub(crate) async fn error_from_response(
    operation: &'static str,
    reference: &str,
    resp: Response,
) -> Error {
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers());
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("error")
        .to_string();
    // An error body is small; a registry that stalls here still gets its status reported.
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, resp.bytes())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<Body>(&body) {
        Ok(b) if !b.errors.is_empty() => {
            let code = b.errors[0].code.clone();
            let msg = b
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            (
                Some(code).filter(|c| !c.is_empty()),
                if msg.is_empty() { reason } else { msg },
            )
        }
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let msg = if text.is_empty() || text.len() > 300 {
                reason
            } else {
                text.to_string()
            };
            (None, msg)
        }
    };
    Error::Registry {
        kind: classify(status, code.as_deref()),
        operation,
        reference: reference.to_string(),
        status,
        code,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let d1 = p.delay(1, None);
        let d4 = p.delay(4, None);
        assert!(
            d1 <= p.base_delay && d4 >= p.base_delay * 4,
            "{d1:?} {d4:?}"
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(p.delay(30, None) <= p.max_delay);
    }

    #[test]
    fn http_dates_parse() {
        let t = httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            784111777
        );
    }

    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static("</v2/a/tags/list?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=b&n=2"));
    }
}
