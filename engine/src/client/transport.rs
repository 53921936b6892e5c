//! The transport: the HTTP client, a single send under the stall timeout (with the
//! registry's credentials only for its own origin), and body reads with caps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{RequestBuilder, Response};

use super::challenge::Scope;
use super::target::{refused_in, scrub, GuardedResolver};
use super::{Client, Operation};
use crate::config::{EngineConfig, InternalAddresses};
use crate::error::{Error, Result};

/// The HTTP client, and its certificate verifier (see [`super::tls`]: the system's CA roots
/// are loaded when first needed; [`super::tls::LazyVerifier::prefetch`] starts that early).
pub(crate) fn build_http(
    config: &EngineConfig,
) -> Result<(reqwest::Client, Arc<super::tls::LazyVerifier>)> {
    let (tls, verifier) = super::tls::client_config(config.ca_file.as_deref())?;
    let mut builder = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(config.retry.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // HTTP/1.1 only, also where a registry or its blob storage offers HTTP/2 (TLS
        // registries do, through ALPN; the TLS configuration offers `http/1.1` only):
        // HTTP/2 carries every request to a host over one TCP connection, so the parallel
        // blob transfers and ranged reads would share one stream's window and one
        // connection's shaping, the limit they exist to get past. Each request in flight
        // gets its own connection from the pool instead.
        .http1_only()
        .tls_backend_preconfigured(tls)
        // Redirects are followed by hand so credentials never leak to blob storage.
        .redirect(reqwest::redirect::Policy::none());
    if config.addresses.mode() != InternalAddresses::Allowed {
        builder = builder.dns_resolver(Arc::new(GuardedResolver {
            policy: config
                .addresses
                .clone()
                .with_insecure(&config.insecure_registries),
        }));
    }
    let http = builder
        .build()
        .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
    Ok((http, verifier))
}

/// A header value that is never logged.
pub(super) fn sensitive(v: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::from_str(v).map_err(|_| {
        Error::Config("credential contains characters not allowed in an HTTP header".into())
    })?;
    h.set_sensitive(true);
    Ok(h)
}

impl Client {
    /// Reports one request (its status, or `None`) to the observer.
    pub(super) fn observe(&self, op: Operation, status: Option<u16>) {
        if let Some(o) = &self.inner.observer {
            o.observe(&self.inner.registry, op.label(), status);
        }
    }

    /// The error of a request the registry left unanswered for the stall timeout,
    /// reported to the observer as a request without an answer.
    pub(super) fn stalled(&self, op: Operation, what: &str) -> Error {
        self.observe(op, None);
        Error::Stalled {
            operation: op.label(),
            reference: what.to_string(),
            after: self.inner.retry.stall_timeout,
        }
    }

    /// A transport error, without the URL (it may carry a pre-signed query), or the
    /// refusal the resolver gave.
    pub(super) fn transport_error(&self, op: Operation, what: &str, e: reqwest::Error) -> Error {
        if let Some(r) = refused_in(&e) {
            return Error::Refused {
                operation: op.label(),
                reference: what.to_string(),
                target: r.host().to_string(),
                reason: r.to_string(),
            };
        }
        if let Some(tls) = tls_in(&e) {
            return Error::Tls {
                operation: op.label(),
                reference: what.to_string(),
                registry: self.inner.registry.clone(),
                message: tls.to_string(),
                plain_http: matches!(tls, rustls::Error::InvalidMessage(_)),
            };
        }
        Error::Transport {
            operation: op.label(),
            reference: what.to_string(),
            source: e.without_url(),
        }
    }

    /// Builds the request, checks where it goes, and attaches the auth header for
    /// `scopes` when it goes to the registry's own origin (never to another).
    pub(super) async fn prepare(
        &self,
        op: Operation,
        what: &str,
        scopes: &[Scope],
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<reqwest::Request> {
        let mut req = build(&self.inner.http)
            .build()
            .map_err(|e| self.transport_error(op, what, e))?;
        self.check_target(op, what, req.url())?;
        if self.same_origin(req.url()) {
            if let Some(h) = self.auth_header(scopes).await? {
                req.headers_mut().insert(AUTHORIZATION, h);
            }
        } else {
            tracing::debug!(registry = %self.inner.registry, operation = op.label(), target = %scrub(req.url().as_str()), "request to another origin, without credentials");
            req.headers_mut().remove(AUTHORIZATION);
        }
        Ok(req)
    }

    /// [`Client::prepare`], then sent once under the stall timeout.
    pub(super) async fn send_authorized(
        &self,
        op: Operation,
        what: &str,
        scopes: &[Scope],
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response> {
        let req = self.prepare(op, what, scopes, build).await?;
        self.send_once(op, what, req).await
    }

    /// Sends `req` without a time limit (uploads: the caller's watchdog decides).
    pub(super) async fn execute(
        &self,
        op: Operation,
        what: &str,
        req: reqwest::Request,
    ) -> Result<Response> {
        match self.inner.http.execute(req).await {
            Ok(resp) => {
                self.observe(op, Some(resp.status().as_u16()));
                Ok(resp)
            }
            Err(e) => {
                self.observe(op, None);
                Err(self.transport_error(op, what, e))
            }
        }
    }

    /// Sends `req`; fails when the registry does not answer within the stall timeout.
    pub(super) async fn send_once(
        &self,
        op: Operation,
        what: &str,
        req: reqwest::Request,
    ) -> Result<Response> {
        let sent = self.inner.http.execute(req);
        match tokio::time::timeout(self.inner.retry.stall_timeout, sent).await {
            Ok(Ok(resp)) => {
                self.observe(op, Some(resp.status().as_u16()));
                Ok(resp)
            }
            Ok(Err(e)) => {
                self.observe(op, None);
                Err(self.transport_error(op, what, e))
            }
            Err(_) => Err(self.stalled(op, what)),
        }
    }

    /// Reads a body of at most `cap` bytes; fails when it stops arriving for the stall
    /// timeout, or (as soon as it is known) when it is larger than `cap`.
    pub(super) async fn read_capped(
        &self,
        op: Operation,
        what: &str,
        resp: Response,
        cap: u64,
        kind: &str,
    ) -> Result<Bytes> {
        let too_big = || Error::Limit {
            operation: op.label(),
            reference: what.to_string(),
            what: format!("{kind} (bytes)"),
            limit: cap,
        };
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(too_big());
        }
        let stall = self.inner.retry.stall_timeout;
        let mut stream = resp.bytes_stream();
        let mut buf = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if (buf.len() as u64).saturating_add(chunk.len() as u64) > cap {
                        return Err(too_big());
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(Some(Err(e))) => return Err(self.transport_error(op, what, e)),
                Ok(None) => return Ok(buf.freeze()),
                Err(_) => {
                    return Err(Error::Stalled {
                        operation: op.label(),
                        reference: what.to_string(),
                        after: stall,
                    })
                }
            }
        }
    }
}

/// The TLS failure somewhere in `err`'s sources. rustls reports through `io::Error`s
/// (nested: hyper wraps the one tokio-rustls makes), whose `source()` skips the error
/// they wrap, so those are looked into by hand.
fn tls_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    let mut steps = 0;
    while let Some(e) = cur {
        steps += 1;
        if steps > 32 {
            return None;
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ca_file(contents: &[u8]) -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, contents).unwrap();
        let config = EngineConfig::builder().ca_file(Some(path)).build();
        build_http(&config).map(drop)
    }

    #[test]
    fn a_ca_file_without_certificates_or_with_a_damaged_one_is_refused_clearly() {
        let err = with_ca_file(b"not a certificate\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("contains no PEM certificates"), "{err}");
        let damaged = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = with_ca_file(damaged).unwrap_err().to_string();
        assert!(err.contains("not a PEM certificate bundle"), "{err}");
        let err = EngineConfig::builder()
            .ca_file(Some("/nonexistent-imagesync-ca.pem".into()))
            .build();
        let err = build_http(&err).map(drop).unwrap_err().to_string();
        assert!(err.contains("reading CA file"), "{err}");
    }
}
