//! The auth challenge (`WWW-Authenticate`), the credential lookup, and bearer tokens
//! by scope set.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;

use super::transport::sensitive;
use super::{Client, Operation, MAX_TOKEN_BYTES};
use crate::auth::{Credential, Secret};
use crate::error::{Error, Result};

/// How long a looked-up credential is reused.
const CREDENTIAL_TTL: Duration = Duration::from_secs(300);

/// The longest a token is cached, whatever the token server says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`: the credential goes to the registry itself.
    Basic,
    /// `Bearer realm=... service=...`: a token from the realm.
    Bearer {
        /// The token server URL.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
    },
}

/// Parses one `WWW-Authenticate` value; `None` for schemes other than Basic and Bearer
/// and for a Bearer challenge without a realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
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
pub(super) struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope set, with the instant they stop being used.
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

/// When a token with the token server's `expires_in` stops being used: 10% (at least
/// 5 s) early, 60 s when not given, between 10 s and a day, never overflowing.
pub fn token_expiry(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(60).max(10)).min(MAX_TOKEN_LIFETIME);
    let margin = (lifetime / 10).max(Duration::from_secs(5));
    let usable = lifetime.saturating_sub(margin);
    now.checked_add(usable).unwrap_or(now)
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Any JSON number; out-of-range or negative values count as "not given".
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

impl Client {
    /// Remembers a challenge the registry sent; forgets tokens.
    pub(super) async fn learn_challenge(&self, challenge: Challenge) {
        let mut state = self.inner.auth.lock().await;
        let changed = state.challenge.as_ref() != Some(&challenge);
        state.challenge = Some(challenge);
        state.tokens.clear();
        drop(state);
        tracing::debug!(registry = %self.inner.registry, changed, "auth challenge answered");
    }

    /// The `Authorization` value for `scopes` under the known challenge.
    pub(super) async fn auth_header(&self, scopes: &[Scope]) -> Result<Option<HeaderValue>> {
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
        let what = format!("token for {}", self.inner.registry);
        // Before any credential goes there.
        let realm_url = self.check_realm(&what, realm)?;
        let credential = self.credential().await?;
        let op = Operation::GetToken;
        let build = |http: &reqwest::Client| {
            token_request(
                http,
                realm_url.clone(),
                service,
                &scopes,
                credential.as_ref(),
            )
        };
        let body = self
            .retrying(op, &what, |_| async {
                let req = build(&self.inner.http)
                    .build()
                    .map_err(|e| self.transport_error(op, &what, e))?;
                let resp = self.send_once(op, &what, req).await?;
                let resp = super::responses::success(op, &what, resp).await?;
                self.read_capped(op, &what, resp, MAX_TOKEN_BYTES, "token answer")
                    .await
            })
            .await?;
        let bad = |reason: &str| Error::BadResponse {
            operation: op.label(),
            reference: what.clone(),
            status: StatusCode::OK.as_u16(),
            reason: reason.to_string(),
            transient: false,
        };
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| bad("the token server's answer is not a token JSON document"))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("the token server returned no token"))?;
        let expires_in = answer
            .expires_in
            .as_ref()
            .and_then(serde_json::Value::as_u64);
        let secret = Secret::new(token);
        let expiry = token_expiry(Instant::now(), expires_in);
        self.inner
            .auth
            .lock()
            .await
            .tokens
            .insert(key, (secret.clone(), expiry));
        Ok(secret)
    }

    /// Forgets cached tokens (after a 401 with a token we believed valid).
    pub(super) async fn forget_tokens(&self) {
        self.inner.auth.lock().await.tokens.clear();
    }
}

/// The token request: OAuth2 refresh-token POST for identity tokens, GET with Basic
/// credentials otherwise (or anonymous).
fn token_request(
    http: &reqwest::Client,
    realm: url::Url,
    service: Option<&str>,
    scopes: &[Scope],
    credential: Option<&Credential>,
) -> reqwest::RequestBuilder {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = service {
        query.push(("service", s.to_string()));
    }
    for s in scopes {
        query.push(("scope", s.render()));
    }
    match credential {
        Some(Credential::IdentityToken(refresh)) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh.expose())
                .append_pair("client_id", "imagesync");
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            for s in scopes {
                form.append_pair("scope", &s.render());
            }
            http.post(realm)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.finish())
        }
        Some(Credential::Basic { username, password }) => http
            .get(realm)
            .query(&query)
            .basic_auth(username, Some(password.expose())),
        None => http.get(realm).query(&query),
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
    fn a_token_lifetime_of_u64_max_does_not_overflow() {
        let now = Instant::now();
        let exp = token_expiry(now, Some(u64::MAX));
        assert!(exp > now && exp <= now + MAX_TOKEN_LIFETIME);
        assert_eq!(token_expiry(now, Some(0)), now + Duration::from_secs(5));
        assert_eq!(token_expiry(now, None), now + Duration::from_secs(54));
    }
}
