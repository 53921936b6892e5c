//! The engine's configuration: what the front ends set, and what the registry client
//! reads. Nothing here talks to a registry.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use crate::auth::{self, CredentialProvider};
use crate::observer::RequestObserver;

/// How long the engine waits overall for one registry operation, by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// Settings shared by every registry the engine talks to.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `host:port` of registries reached over plain HTTP. Everything else uses HTTPS
    /// with certificate verification.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM bundle) trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Blobs over 1 MiB transferred at once per image (default 4); as many smaller ones
    /// run beside them.
    pub jobs: usize,
    /// Where credentials come from.
    pub credentials: Arc<dyn CredentialProvider>,
    /// Retry and timeout behaviour.
    pub retry: RetryPolicy,
    /// `User-Agent` sent to registries.
    pub user_agent: String,
    /// Sees every HTTP request sent to a registry (metrics).
    pub observer: Option<RequestObserver>,
    /// A file remembering which repository of a registry holds which blob, so that
    /// separate runs mount shared layers instead of uploading them again (`None`: the
    /// engine remembers only for its own lifetime).
    pub blob_cache: Option<PathBuf>,
    /// The sync deadline and the minimum blob transfer rate.
    pub limits: Limits,
    /// Which internal addresses the engine may connect to.
    pub addresses: AddressPolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            insecure_registries: Vec::new(),
            ca_file: None,
            jobs: 4,
            credentials: Arc::new(auth::Anonymous),
            retry: RetryPolicy::default(),
            user_agent: format!("imagesync/{}", env!("CARGO_PKG_VERSION")),
            observer: None,
            blob_cache: None,
            limits: Limits::default(),
            addresses: AddressPolicy::default(),
        }
    }
}

impl EngineConfig {
    /// A builder starting from the defaults: the one way the front ends (CLI,
    /// controller, Terraform provider) set up an engine.
    ///
    /// ```
    /// use imagesync_engine::{Engine, EngineConfig};
    /// let config = EngineConfig::builder()
    ///     .insecure_registries(vec!["127.0.0.1:5000".into()])
    ///     .jobs(8)
    ///     .user_agent("my-tool/1.0")
    ///     .build();
    /// assert_eq!(config.jobs, 8);
    /// let _engine = Engine::new(config);
    /// ```
    pub fn builder() -> EngineConfigBuilder {
        EngineConfigBuilder::default()
    }
}

/// Builds an [`EngineConfig`]; every setting not given keeps its default.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct EngineConfigBuilder {
    config: EngineConfig,
}

impl EngineConfigBuilder {
    /// `host:port` of registries reached over plain HTTP.
    pub fn insecure_registries(mut self, registries: Vec<String>) -> Self {
        self.config.insecure_registries = registries;
        self
    }

    /// A PEM bundle of extra CA certificates (`None`: the system roots only).
    pub fn ca_file(mut self, path: Option<PathBuf>) -> Self {
        self.config.ca_file = path;
        self
    }

    /// Blobs over 1 MiB transferred at once per image (smaller ones run beside them).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.config.jobs = jobs;
        self
    }

    /// Where credentials come from.
    pub fn credentials(mut self, credentials: Arc<dyn CredentialProvider>) -> Self {
        self.config.credentials = credentials;
        self
    }

    /// Retry and timeout behaviour.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// The `User-Agent` sent to registries.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.config.user_agent = user_agent.into();
        self
    }

    /// Sees every HTTP request sent to a registry.
    pub fn observer(mut self, observer: RequestObserver) -> Self {
        self.config.observer = Some(observer);
        self
    }

    /// The blob-location file (`None`: remembered in memory only).
    pub fn blob_cache(mut self, path: Option<PathBuf>) -> Self {
        self.config.blob_cache = path;
        self
    }

    /// The sync deadline and the minimum blob transfer rate.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Which internal addresses the engine may connect to.
    pub fn addresses(mut self, addresses: AddressPolicy) -> Self {
        self.config.addresses = addresses;
        self
    }

    /// The configuration.
    pub fn build(self) -> EngineConfig {
        self.config
    }
}

/// Retry and timeout behaviour for registry requests.
///
/// One operation (a manifest HEAD/GET/PUT, a tag-list page, a token request, or the
/// whole transfer of one blob) makes at most `max_attempts` attempts within `deadline`;
/// an attempt that meets a fresh auth challenge is re-sent once with credentials.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per operation (first try included).
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
            deadline: DEFAULT_DEADLINE,
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Time limits that keep a slow or trickling registry from holding a sync forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest one [`crate::Engine::sync`] may take, everything included (default
    /// 6 hours). When it passes the sync fails as a transient error; the tag was not
    /// written.
    pub sync_deadline: Duration,
    /// The slowest a blob may move, in bytes per second (default 10 KiB/s; 0: no
    /// minimum). One attempt of a blob of `size` bytes may take the stall timeout plus
    /// `size / min_blob_rate`; then it fails as a transient error and is retried.
    pub min_blob_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sync_deadline: Duration::from_secs(6 * 3600),
            min_blob_rate: 10 * 1024,
        }
    }
}

/// Which internal addresses a connection may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InternalAddresses {
    /// Any address (no check).
    Allowed,
    /// Internal addresses only for hosts the user named: the registries the engine was
    /// asked to use, insecure registries and the allow list. A redirect, upload
    /// `Location`, `Link` or token realm on another host that resolves to an internal
    /// address is refused. The default (CLI, Terraform provider).
    RegistryHosts,
    /// Internal addresses only for insecure registries and the allow list; even a
    /// registry named in a request is refused (the controller: specs come from tenants).
    ListedOnly,
}

/// Refusal of internal targets: loopback (127.0.0.0/8, `::1`), link-local
/// (169.254.0.0/16, `fe80::/10`), private (10/8, 172.16/12, 192.168/16), shared
/// (100.64/10), unspecified (0.0.0.0/8, `::`) and unique-local (`fc00::/7`) addresses,
/// checked after DNS resolution. Clones share the set of registry hosts learned.
#[derive(Clone, Debug)]
pub struct AddressPolicy {
    mode: InternalAddresses,
    allowed: Vec<String>,
    registries: Arc<RwLock<HashSet<String>>>,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy::new(InternalAddresses::RegistryHosts)
    }
}

impl AddressPolicy {
    /// A policy of `mode` with an empty allow list.
    pub fn new(mode: InternalAddresses) -> AddressPolicy {
        AddressPolicy {
            mode,
            allowed: Vec::new(),
            registries: Arc::default(),
        }
    }

    /// Adds `host` (a name or an address, optionally with `:port`, which is ignored) to
    /// the allow list.
    pub fn allow(mut self, host: &str) -> AddressPolicy {
        self.allowed.push(host_only(host));
        self
    }

    /// The mode.
    pub fn mode(&self) -> InternalAddresses {
        self.mode
    }

    /// Remembers the host of a registry the engine was asked to use (only counts in
    /// [`InternalAddresses::RegistryHosts`] mode).
    pub(crate) fn learn_registry(&self, host: &str) {
        if self.mode != InternalAddresses::RegistryHosts {
            return;
        }
        let host = host_only(host);
        self.registries.write().insert(host);
    }

    /// Adds the hosts of insecure registries (always allowed).
    pub(crate) fn with_insecure(mut self, insecure: &[String]) -> AddressPolicy {
        self.allowed.extend(insecure.iter().map(|h| host_only(h)));
        self
    }

    /// Whether a connection to `ip`, reached by the name (or address) `host`, is allowed.
    pub(crate) fn permits(&self, host: &str, ip: std::net::IpAddr) -> bool {
        if self.mode == InternalAddresses::Allowed || !is_internal(ip) {
            return true;
        }
        let host = host_only(host);
        if self.allowed.contains(&host) {
            return true;
        }
        self.registries.read().contains(&host)
    }
}

/// `host` of `host`, `host:port`, `[v6]:port` or `[v6]`, lower case.
pub(crate) fn host_only(input: &str) -> String {
    let s = input.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let host = if let Some(rest) = s.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if s.matches(':').count() == 1 {
        s.split(':').next().unwrap_or(s)
    } else {
        s
    };
    host.to_ascii_lowercase()
}

/// Loopback, link-local, private, shared, unspecified and unique-local addresses.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for a in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn hosts_without_ports() {
        assert_eq!(host_only("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(host_only("Registry.Example:443"), "registry.example");
        assert_eq!(host_only("[::1]:5000"), "::1");
        assert_eq!(host_only("::1"), "::1");
        assert_eq!(host_only("http://localhost:80/x"), "localhost");
    }

    #[test]
    fn the_builder_sets_what_it_is_given_and_keeps_the_defaults() {
        let default = EngineConfig::default();
        let c = EngineConfig::builder().build();
        assert_eq!(
            (c.jobs, c.user_agent.as_str(), c.limits.clone()),
            (default.jobs, default.user_agent.as_str(), default.limits)
        );
        let c = EngineConfig::builder()
            .insecure_registries(vec!["127.0.0.1:5000".into()])
            .ca_file(Some("/ca.pem".into()))
            .jobs(9)
            .user_agent("x/1")
            .blob_cache(Some("/b.json".into()))
            .limits(Limits {
                sync_deadline: Duration::from_secs(5),
                min_blob_rate: 0,
            })
            .retry(RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            })
            .addresses(AddressPolicy::new(InternalAddresses::ListedOnly))
            .observer(RequestObserver::new(|_, _, _| {}))
            .build();
        assert_eq!(c.insecure_registries, ["127.0.0.1:5000"]);
        assert_eq!(c.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!((c.jobs, c.user_agent.as_str()), (9, "x/1"));
        assert_eq!(c.limits.sync_deadline, Duration::from_secs(5));
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.addresses.mode(), InternalAddresses::ListedOnly);
        assert!(c.observer.is_some() && c.blob_cache.is_some());
    }

    #[test]
    fn registry_hosts_are_allowed_only_when_learned() {
        let p = AddressPolicy::default();
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!p.permits("127.0.0.1", lo));
        p.learn_registry("127.0.0.1:5000");
        assert!(p.clone().permits("127.0.0.1", lo));
        assert!(!p.permits("127.0.0.2", "127.0.0.2".parse().unwrap()));
        assert!(p.permits("example.org", "93.184.215.14".parse().unwrap()));
        let listed = AddressPolicy::new(InternalAddresses::ListedOnly);
        listed.learn_registry("127.0.0.1:5000");
        assert!(!listed.permits("127.0.0.1", lo));
        assert!(listed
            .with_insecure(&["127.0.0.1:5000".into()])
            .permits("127.0.0.1", lo));
    }
}
