//! A small Docker-style token server run in-process, for registries started with
//! `auth: token`. It checks Basic credentials and issues ES256 JWTs (with an `x5c`
//! header the registry verifies against its `rootcertbundle`) granting the requested
//! repository scopes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::tls::SigningCert;

/// One request the token server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user name from Basic auth (None: anonymous).
    pub user: Option<String>,
    /// The `scope` parameters, as sent.
    pub scopes: Vec<String>,
    /// Whether a token was issued (false: wrong credentials, 401).
    pub issued: bool,
    /// The scopes the token grants (`repository:NAME:ACTIONS`), as issued.
    pub granted: Vec<String>,
}

/// How the token server decides what to grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenPolicy {
    /// When a request pushes to a repository, grant nothing on any other repository: a
    /// cross-repository mount (`pull` on the source repository) is never allowed, like
    /// registries whose users may not read the repository a blob would come from.
    pub refuse_cross_repository_mounts: bool,
}

/// How the token server answers a request it grants (hostile variants for tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenAnswer {
    /// A signed token valid for 300 s.
    #[default]
    Normal,
    /// A signed token with `"expires_in": 18446744073709551615` (u64::MAX).
    MaxExpiry,
    /// A JSON answer of `bytes` bytes (chunked, no `Content-Length`) that never ends
    /// its token string, generated as it is sent.
    Huge {
        /// How many bytes to offer.
        bytes: u64,
    },
}

/// The token server: issuer, service and the users it accepts.
pub struct TokenServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    answer: Arc<Mutex<TokenAnswer>>,
    served: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// The `issuer` claim (must match the registry's `auth.token.issuer`).
pub const ISSUER: &str = "imagesync-e2e-token-issuer";
/// The refresh token (docker config `identitytoken`) the token server accepts for its user.
pub const REFRESH_TOKEN: &str = "imagesync-e2e-refresh-token";
/// The `service` (audience) the registry announces.
pub const SERVICE: &str = "imagesync-e2e-registry";

struct State {
    signer: aws_lc_rs::signature::EcdsaKeyPair,
    x5c: String,
    user: Option<(String, String)>,
    policy: TokenPolicy,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    answer: Arc<Mutex<TokenAnswer>>,
    served: Arc<std::sync::atomic::AtomicU64>,
}

impl TokenServer {
    /// Starts serving on a random loopback port. With `user`, only those credentials get
    /// tokens (anonymous callers get a token with no access, like public token servers);
    /// without, everyone gets what they ask for.
    pub async fn start(
        signing: &SigningCert,
        user: Option<(String, String)>,
    ) -> Result<TokenServer> {
        Self::start_with(signing, user, TokenPolicy::default()).await
    }

    /// Like [`TokenServer::start`], granting per `policy`.
    pub async fn start_with(
        signing: &SigningCert,
        user: Option<(String, String)>,
        policy: TokenPolicy,
    ) -> Result<TokenServer> {
        let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.key_pkcs8,
        )
        .map_err(|e| anyhow::anyhow!("loading the token signing key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the token server")?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let answer_mode = Arc::new(Mutex::new(TokenAnswer::Normal));
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let state = Arc::new(State {
            signer,
            x5c: STANDARD.encode(&signing.cert_der),
            user,
            policy,
            log: log.clone(),
            answer: answer_mode.clone(),
            served: served.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let form = match body.collect().await {
                                    Ok(b) => b.to_bytes(),
                                    Err(_) => Bytes::new(),
                                };
                                Ok::<_, Infallible>(respond(&state, &parts, &form))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(TokenServer {
            addr,
            log,
            answer: answer_mode,
            served,
            task,
        })
    }

    /// Changes how granted requests are answered.
    pub fn set_answer(&self, answer: TokenAnswer) {
        *self.answer.lock() = answer;
    }

    /// Body bytes of [`TokenAnswer::Huge`] answers the connection accepted so far.
    pub fn bytes_served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The realm URL for the registry config.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The answer, with the hostile variants applied.
fn respond(state: &State, parts: &http::request::Parts, form: &[u8]) -> Response<Body> {
    let normal = answer(state, parts, form);
    let mode = *state.answer.lock();
    if normal.status() != StatusCode::OK || mode == TokenAnswer::Normal {
        return normal.map(BodyExt::boxed_unsync);
    }
    match mode {
        TokenAnswer::Huge { bytes } => {
            const CHUNK: u64 = 64 * 1024;
            let served = state.served.clone();
            let chunks = bytes.div_ceil(CHUNK);
            let head = futures::stream::once(async { Bytes::from_static(b"{\"token\":\"") });
            let rest =
                futures::stream::iter(1..chunks).map(|_| Bytes::from(vec![b'a'; CHUNK as usize]));
            let stream = head.chain(rest).map(move |c| {
                served.fetch_add(c.len() as u64, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, Infallible>(hyper::body::Frame::data(c))
            });
            let mut r = Response::new(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
                stream,
            )));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => {
            // MaxExpiry: the same token, with the largest lifetime JSON can say.
            let (parts, body) = normal.into_parts();
            let max = async move {
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                v["expires_in"] = serde_json::Value::from(u64::MAX);
                Bytes::from(v.to_string())
            };
            let stream = futures::stream::once(max)
                .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
            Response::from_parts(
                parts,
                BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream)),
            )
        }
    }
}

fn answer(state: &State, parts: &http::request::Parts, form: &[u8]) -> Response<Full<Bytes>> {
    let query = parts.uri.query().unwrap_or("");
    let mut scopes = Vec::new();
    let mut service = None;
    let mut fields = std::collections::HashMap::new();
    // GET: query parameters; POST (OAuth2 form, identity tokens): the form body too.
    let pairs =
        url::form_urlencoded::parse(query.as_bytes()).chain(url::form_urlencoded::parse(form));
    for (k, v) in pairs {
        match k.as_ref() {
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
            "service" => service = Some(v.into_owned()),
            _ => {
                fields.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    let basic = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let presented = match fields.get("grant_type").map(String::as_str) {
        // An identity token (docker config `identitytoken`) stands for the configured user.
        Some("refresh_token") => {
            let user = state
                .user
                .as_ref()
                .map(|(u, _)| u.clone())
                .unwrap_or_default();
            if fields.get("refresh_token").map(String::as_str) == Some(REFRESH_TOKEN) {
                state.user.clone()
            } else {
                Some((user, "<invalid refresh token>".to_string()))
            }
        }
        Some("password") => Some((
            fields.get("username").cloned().unwrap_or_default(),
            fields.get("password").cloned().unwrap_or_default(),
        )),
        _ => basic,
    };
    let (authorised, user) = match (&state.user, &presented) {
        (None, p) => (true, p.as_ref().map(|(u, _)| u.clone())),
        (Some(want), Some(got)) if want == got => (true, Some(got.0.clone())),
        (Some(_), Some(got)) => {
            state.log.lock().push(TokenRequest {
                user: Some(got.0.clone()),
                scopes,
                issued: false,
                granted: Vec::new(),
            });
            return json(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"token server: invalid username or password"}]}"#.into(),
            );
        }
        // Anonymous: a token without access.
        (Some(_), None) => (false, None),
    };
    if service.as_deref().is_some_and(|s| s != SERVICE) {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"errors":[{"code":"DENIED","message":"unknown service"}]}"#.into(),
        );
    }
    let requested: Vec<(&str, &str, &str)> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some((kind, name, actions))
        })
        .collect();
    let pushed: Vec<&str> = requested
        .iter()
        .filter(|(kind, _, actions)| {
            *kind == "repository" && actions.split(',').any(|a| a == "push")
        })
        .map(|(_, name, _)| *name)
        .collect();
    let granted: Vec<(&str, &str, &str)> = if authorised {
        requested
            .iter()
            .filter(|(kind, name, _)| {
                // Refused: another repository than the one pushed to.
                let refused = state.policy.refuse_cross_repository_mounts
                    && *kind == "repository"
                    && !pushed.is_empty()
                    && !pushed.contains(name);
                !refused
            })
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    let access: Vec<serde_json::Value> = granted
        .iter()
        .map(|(kind, name, actions)| {
            serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let granted: Vec<String> = granted
        .iter()
        .map(|(kind, name, actions)| format!("{kind}:{name}:{actions}"))
        .collect();
    state.log.lock().push(TokenRequest {
        user: user.clone(),
        scopes: scopes.clone(),
        issued: true,
        granted,
    });
    match sign(state, user.as_deref().unwrap_or(""), access) {
        Ok(token) => json(
            StatusCode::OK,
            serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                .to_string(),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}).to_string(),
        ),
    }
}

fn sign(state: &State, subject: &str, access: Vec<serde_json::Value>) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [state.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{now}-{}", rand_u64()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sig = state
        .signer
        .sign(&rng, signing_input.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing the token: {e}"))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    ))
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"imagesync-e2e-token\""),
        );
    }
    resp
}
