//! A **referrers-serving layer**: a loopback HTTP proxy in front of a real distribution
//! 2.8 registry, which has no OCI 1.1 referrers API, that adds one. No registry in this
//! harness implements the API, so the engine's API path is tested against this layer;
//! the end-to-end claim for real registries rests on the fallback-tag and cosign-tag
//! paths.
//!
//! What it adds:
//! - a manifest PUT that the registry accepted and whose body has a `subject` is
//!   remembered, and the answer gets `OCI-Subject: <subject digest>`;
//! - `GET /v2/<name>/referrers/<digest>` answers an image index of the remembered
//!   descriptors (`artifactType` filter applied, `OCI-Filters-Applied` set).
//!
//! Everything else is forwarded unchanged (bodies buffered: test fixtures are small).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

type Body = Full<Bytes>;

struct Shared {
    upstream: String,
    client: reqwest::Client,
    /// `(repository, subject digest)` to the descriptors of its referrers.
    index: Mutex<HashMap<(String, String), Vec<Value>>>,
    /// `METHOD path?query` of every request, in order.
    log: Mutex<Vec<String>>,
}

/// A running referrers-serving layer; stops on drop.
pub struct ReferrersLayer {
    addr: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReferrersLayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReferrersLayer {
    /// Serves `127.0.0.1:PORT` (random) in front of the plain-HTTP registry `upstream`.
    pub async fn start(upstream: &str) -> Result<ReferrersLayer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the referrers layer")?;
        let addr = listener.local_addr()?.to_string();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            client,
            index: Mutex::default(),
            log: Mutex::default(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let s = s.clone();
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::io::Error>(handle(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(ReferrersLayer { addr, shared, task })
    }

    /// `127.0.0.1:PORT` of the layer.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The descriptors the layer lists for `subject` in `repository`.
    pub fn referrers(&self, repository: &str, subject: &str) -> Vec<Value> {
        lock(&self.shared.index)
            .get(&(repository.to_string(), subject.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// `METHOD path?query` of every request so far.
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }
}

fn answer(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

async fn handle(s: &Shared, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    lock(&s.log).push(format!("{} {}", req.method(), req.uri()));
    if req.method() == hyper::Method::GET {
        if let Some((repo, subject)) = split(&path, "/referrers/") {
            return list(s, &repo, &subject, req.uri().query());
        }
    }
    match forward(s, req).await {
        Ok(r) => r,
        Err(e) => answer(StatusCode::BAD_GATEWAY, Bytes::from(format!("{e:#}"))),
    }
}

/// `/v2/<repo><sep><rest>` to `(repo, rest)`.
fn split(path: &str, sep: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    let (repo, tail) = rest.rsplit_once(sep)?;
    Some((repo.to_string(), tail.to_string()))
}

fn list(s: &Shared, repo: &str, subject: &str, query: Option<&str>) -> Response<Body> {
    let wanted = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("artifactType=")))
        .map(|t| t.replace("%2F", "/").replace("%2B", "+"));
    let entries: Vec<Value> = lock(&s.index)
        .get(&(repo.to_string(), subject.to_string()))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| wanted.as_deref().is_none_or(|t| e["artifactType"] == t))
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let mut r = answer(StatusCode::OK, Bytes::from(body.to_string()));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if wanted.is_some() {
        h.insert(
            "oci-filters-applied",
            hyper::header::HeaderValue::from_static("artifactType"),
        );
    }
    r
}

async fn forward(s: &Shared, req: Request<hyper::body::Incoming>) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = s
        .client
        .request(parts.method.clone(), format!("http://{}{pq}", s.upstream));
    for (k, v) in parts.headers.iter() {
        if ![
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "upgrade",
        ]
        .contains(&k.as_str())
        {
            out = out.header(k, v);
        }
    }
    let resp = out.body(body.clone()).send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await?;
    let mut r = answer(status, bytes);
    for (k, v) in headers.iter() {
        if k != "transfer-encoding" && k != "connection" {
            r.headers_mut().insert(k, v.clone());
        }
    }
    let manifest_put = parts.method == hyper::Method::PUT && status == StatusCode::CREATED;
    if let Some((repo, _)) = split(parts.uri.path(), "/manifests/").filter(|_| manifest_put) {
        let media_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(subject) = remember(s, &repo, &media_type, &body) {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&subject) {
                r.headers_mut().insert("oci-subject", v);
            }
        }
    }
    Ok(r)
}

/// Records a pushed manifest with a `subject`; returns the subject's digest.
fn remember(s: &Shared, repo: &str, media_type: &str, body: &[u8]) -> Option<String> {
    let m: Value = serde_json::from_slice(body).ok()?;
    let subject = m["subject"]["digest"].as_str()?.to_string();
    let artifact_type = m["artifactType"]
        .as_str()
        .or_else(|| m["config"]["mediaType"].as_str())
        .unwrap_or("")
        .to_string();
    let mut entry = json!({
        "mediaType": media_type,
        "digest": crate::fixtures::sha256(body),
        "size": body.len(),
        "artifactType": artifact_type,
    });
    if let Some(a) = m.get("annotations") {
        entry["annotations"] = a.clone();
    }
    let mut index = lock(&s.index);
    let list = index
        .entry((repo.to_string(), subject.clone()))
        .or_default();
    if !list.iter().any(|e| e["digest"] == entry["digest"]) {
        list.push(entry);
    }
    Some(subject)
}
