//! Where a request may go, and with what: the registry's credentials only to its own
//! origin, never from HTTPS down to plain HTTP (unless the user listed the host as
//! insecure), token realms only over HTTPS (or to a listed host), and no connection to
//! an internal address nobody configured, checked after DNS resolution.

use std::net::{IpAddr, SocketAddr};

use url::{Host, Url};

use super::{Client, Operation};
use crate::config::AddressPolicy;
use crate::error::{Error, Result};

/// A URL as it may appear in errors and logs: no user info, no query, no fragment
/// (pre-signed storage URLs and upload `_state` are secrets).
pub(crate) fn scrub(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_string(),
    }
}

impl Client {
    /// Whether `url` has the registry's own scheme, host and port.
    pub(super) fn same_origin(&self, url: &Url) -> bool {
        self.inner
            .origin
            .as_ref()
            .is_some_and(|o| url.origin() == *o)
    }

    fn registry_is_https(&self) -> bool {
        self.inner.base.starts_with("https://")
    }

    /// Whether the user listed `url`'s host (`host:port`, or the host alone) as insecure.
    fn listed_insecure(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host_port = url
            .port_or_known_default()
            .map(|p| format!("{host}:{p}"))
            .unwrap_or_else(|| host.to_string());
        self.inner
            .network
            .insecure
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&host_port) || e.eq_ignore_ascii_case(host))
    }

    fn refused(&self, op: Operation, what: &str, url: &str, reason: &str) -> Error {
        tracing::warn!(registry = %self.inner.registry, operation = op.label(), target = %scrub(url), reason, "request refused");
        Error::Refused {
            operation: op.label(),
            reference: what.to_string(),
            target: scrub(url),
            reason: reason.to_string(),
        }
    }

    /// A `Location` or `Link` target, relative ones resolved against the registry.
    pub(crate) fn resolve_location(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    /// Checks a URL about to be requested: HTTP(S) only, no HTTPS-to-HTTP downgrade
    /// (unless the host is listed as insecure), and no internal address literal the
    /// policy does not allow (names are checked by the resolver after DNS).
    pub(super) fn check_target(&self, op: Operation, what: &str, url: &Url) -> Result<()> {
        if self.same_origin(url) {
            return Ok(());
        }
        match url.scheme() {
            "https" => {}
            "http" if !self.registry_is_https() || self.listed_insecure(url) => {}
            "http" => {
                return Err(self.refused(
                    op,
                    what,
                    url.as_str(),
                    "the registry is HTTPS; plain HTTP is only used for hosts listed as insecure",
                ))
            }
            _ => return Err(self.refused(op, what, url.as_str(), "not an HTTP(S) URL")),
        }
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err(self.refused(op, what, url.as_str(), "no host")),
        };
        if self.inner.network.addresses.permits(&ip.to_string(), ip) {
            return Ok(());
        }
        Err(self.refused(op, what, url.as_str(), INTERNAL))
    }

    /// Checks a token realm before the registry's credentials go there: HTTPS, or a
    /// host listed as insecure, or (for a plain-HTTP registry) the registry's own host.
    pub(super) fn check_realm(&self, what: &str, realm: &str) -> Result<Url> {
        let op = Operation::GetToken;
        let url = Url::parse(realm)
            .map_err(|_| self.refused(op, what, realm, "the token realm is not a URL"))?;
        let registry_host = self.inner.origin.as_ref().and_then(|o| match o {
            url::Origin::Tuple(_, h, _) => Some(h.to_string()),
            url::Origin::Opaque(_) => None,
        });
        let ok = match url.scheme() {
            "https" => true,
            "http" => {
                self.listed_insecure(&url)
                    || (!self.registry_is_https()
                        && url.host_str().map(str::to_string) == registry_host)
            }
            _ => false,
        };
        if !ok {
            return Err(self.refused(
                op,
                what,
                realm,
                "credentials go to a token realm only over HTTPS, or to a host listed as insecure",
            ));
        }
        self.check_target(op, what, &url)?;
        Ok(url)
    }
}

const INTERNAL: &str =
    "an internal address (loopback, link-local, private or unique-local) nobody configured";

/// The resolver's refusal, found again in a transport error's source chain.
#[derive(Debug)]
pub(crate) struct AddressRefused {
    host: String,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves only to {INTERNAL}", self.host)
    }
}

impl std::error::Error for AddressRefused {}

/// The [`AddressRefused`] somewhere in `err`'s sources, if any.
pub(crate) fn refused_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a AddressRefused> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<AddressRefused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

impl AddressRefused {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }
}

/// A DNS resolver that drops the addresses the policy refuses, and fails when none is
/// left: a public name resolving to an internal address is refused too.
pub(crate) struct GuardedResolver {
    pub(crate) policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(&host, a.ip()))
                .collect();
            if kept.is_empty() && !found.is_empty() {
                return Err(Box::new(AddressRefused { host }) as Box<_>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Network;
    use crate::config::{InternalAddresses, Limits};

    /// A client for `host` (no request is ever sent here).
    fn client(host: &str, insecure: &[&str], policy: AddressPolicy) -> Client {
        let insecure: Vec<String> = insecure.iter().map(|s| s.to_string()).collect();
        policy.learn_registry(host);
        Client::new(
            reqwest::Client::new(),
            host.to_string(),
            host.to_string(),
            insecure.iter().any(|h| h == host),
            std::sync::Arc::new(crate::auth::Anonymous),
            crate::config::RetryPolicy::default(),
            None,
            Network {
                addresses: policy.with_insecure(&insecure),
                insecure,
                limits: Limits::default(),
            },
        )
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_the_registrys_own_origin_is_the_same_origin() {
        let c = client("127.0.0.1:5000", &[], AddressPolicy::default());
        assert!(c.same_origin(&url("https://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=s")));
        assert!(!c.same_origin(&url("http://127.0.0.1:5000/v2/")));
        assert!(!c.same_origin(&url("https://127.0.0.1:5001/v2/")));
        assert!(!c.same_origin(&url("https://localhost:5000/v2/")));
    }

    #[test]
    fn an_https_registry_is_never_followed_to_plain_http_unless_listed() {
        let c = client(
            "127.0.0.1:5000",
            &["127.0.0.1:6000"],
            AddressPolicy::default(),
        );
        let op = Operation::GetBlob;
        let err = c
            .check_target(op, "r", &url("http://127.0.0.1:7000/blob?sig=secret"))
            .unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(c
            .check_target(op, "r", &url("http://127.0.0.1:6000/blob"))
            .is_ok());
        assert!(c
            .check_target(op, "r", &url("ftp://127.0.0.1:5000/x"))
            .is_err());
    }

    #[test]
    fn internal_literals_need_a_configured_host() {
        let c = client("127.0.0.1:5000", &[], AddressPolicy::default());
        let op = Operation::GetBlob;
        assert!(c
            .check_target(op, "r", &url("https://127.0.0.1:9999/x"))
            .is_ok());
        assert!(c
            .check_target(op, "r", &url("https://127.0.0.2:9999/x"))
            .is_err());
        assert!(c
            .check_target(op, "r", &url("https://[::1]:9999/x"))
            .is_err());
        let open = client(
            "127.0.0.1:5000",
            &[],
            AddressPolicy::new(InternalAddresses::Allowed),
        );
        assert!(open
            .check_target(op, "r", &url("https://127.0.0.2:9999/x"))
            .is_ok());
        let listed = client(
            "127.0.0.1:5000",
            &[],
            AddressPolicy::new(InternalAddresses::ListedOnly).allow("127.0.0.2"),
        );
        assert!(listed
            .check_target(op, "r", &url("https://127.0.0.2:9999/x"))
            .is_ok());
        assert!(listed
            .check_target(op, "r", &url("https://127.0.0.3:9999/x"))
            .is_err());
    }

    #[test]
    fn token_realms_need_https_a_listed_host_or_the_plain_registrys_own_host() {
        let https = client("127.0.0.1:5000", &[], AddressPolicy::default());
        assert!(https
            .check_realm("r", "http://127.0.0.1:5001/token")
            .is_err());
        assert!(https
            .check_realm("r", "https://127.0.0.1:5001/token")
            .is_ok());
        let plain = client(
            "127.0.0.1:5000",
            &["127.0.0.1:5000"],
            AddressPolicy::default(),
        );
        assert!(plain
            .check_realm("r", "http://127.0.0.1:5001/token")
            .is_ok());
        assert!(plain
            .check_realm("r", "http://127.0.0.2:5001/token")
            .is_err());
        assert!(plain.check_realm("r", "not a url").is_err());
    }

    #[test]
    fn scrubbed_urls_lose_queries_and_user_info() {
        assert_eq!(
            scrub("https://u:p@s3.example/bucket/blob?X-Amz-Signature=abc#f"),
            "https://s3.example/bucket/blob"
        );
        assert_eq!(
            scrub("/v2/a/blobs/uploads/1?_state=secret"),
            "/v2/a/blobs/uploads/1"
        );
    }
}
