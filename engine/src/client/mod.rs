//! One registry endpoint: the distribution API's manifest, blob and tag operations over
//! one transport (caps, stall watchdog, where credentials may go), one retry layer,
//! and the auth challenge with its token cache.
//!
//! - [`transport`]: a single send, body reads with caps, the upload watchdog;
//! - [`retry`]: the operations, the attempt budget and deadline of each;
//! - [`challenge`]: `WWW-Authenticate`, credentials, tokens and scopes;
//! - [`target`]: which URLs a request may go to, and with which credentials;
//! - [`manifests`], [`blobs`], [`tags`]: the API families;
//! - [`responses`]: error answers to [`Error`](crate::Error)s.

mod blobs;
mod challenge;
mod manifests;
mod responses;
mod retry;
mod tags;
mod target;
mod tls;
mod transport;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::auth::CredentialProvider;
use crate::config::{AddressPolicy, Limits};
use crate::observer::RequestObserver;

pub use crate::config::RetryPolicy;
pub use blobs::Upload;
pub use challenge::{parse_challenge, token_expiry, Challenge, Scope};
pub use manifests::ManifestData;
pub(crate) use responses::next_link;
pub use responses::parse_retry_after;
pub(crate) use retry::Operation;
pub(crate) use tls::LazyVerifier;
pub(crate) use transport::build_http;

/// The largest manifest (or index) accepted, as containerd and containers/image do.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// The largest token server answer accepted.
pub const MAX_TOKEN_BYTES: u64 = 1024 * 1024;
/// The largest tag-list page accepted (1,000 tags of the longest legal name are 130 KiB;
/// registries that ignore `n` and add metadata, like GCR, need more).
pub const MAX_TAG_PAGE_BYTES: u64 = 8 * 1024 * 1024;
/// How much of an error answer's body is read (the rest is ignored).
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// The most tag-list pages followed for one listing.
pub const MAX_TAG_PAGES: usize = 1_000;
/// The most tags one listing may return.
pub const MAX_TAGS: usize = 500_000;

/// A client for one registry. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

/// Where a client may send what: its own origin, the hosts listed as insecure, and the
/// internal-address policy.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// `host:port` (or `host`) entries reached over plain HTTP.
    pub(crate) insecure: Vec<String>,
    /// Internal addresses allowed.
    pub(crate) addresses: AddressPolicy,
    /// The blob transfer rate floor.
    pub(crate) limits: Limits,
}

struct ClientInner {
    http: reqwest::Client,
    registry: String,
    /// `scheme://host[:port]`.
    base: String,
    /// The registry's own origin (scheme, host, port): the only one that gets its
    /// credentials. `None` if the host does not parse as a URL (then none does).
    origin: Option<url::Origin>,
    credentials: Arc<dyn CredentialProvider>,
    retry: RetryPolicy,
    network: Network,
    auth: Mutex<challenge::AuthState>,
    /// Set once the registry refused a monolithic upload; then chunked PATCH is used.
    chunked_only: AtomicBool,
    /// Set once the registry answered 404 on the referrers API: it has none (a registry
    /// with the API never answers 404 there), so it is not asked again.
    no_referrers_api: AtomicBool,
    /// How many connections [`Client::warm`] opened in all: the pool keeps them.
    warmed: AtomicUsize,
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .finish()
    }
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        http: reqwest::Client,
        registry: String,
        host: String,
        insecure: bool,
        credentials: Arc<dyn CredentialProvider>,
        retry: RetryPolicy,
        observer: Option<RequestObserver>,
        network: Network,
    ) -> Client {
        let scheme = if insecure { "http" } else { "https" };
        let base = format!("{scheme}://{host}");
        let origin = url::Url::parse(&base).ok().map(|u| u.origin());
        Client {
            inner: Arc::new(ClientInner {
                http,
                registry,
                base,
                origin,
                credentials,
                retry,
                network,
                auth: Mutex::new(challenge::AuthState::default()),
                chunked_only: AtomicBool::new(false),
                no_referrers_api: AtomicBool::new(false),
                warmed: AtomicUsize::new(0),
                observer,
            }),
        }
    }

    /// The registry answered 404 on the referrers API before.
    pub(crate) fn lacks_referrers_api(&self) -> bool {
        self.inner.no_referrers_api.load(Ordering::Relaxed)
    }

    /// Remembers that the registry has no referrers API.
    pub(crate) fn set_lacks_referrers_api(&self) {
        self.inner.no_referrers_api.store(true, Ordering::Relaxed);
    }

    /// Has `n` connections to the registry opened in the background while the caller's
    /// first requests are in flight, so that the parallel requests that follow find them
    /// in the pool instead of each paying a handshake (one round trip for TCP, more with
    /// TLS). The means are concurrent `GET /v2/` without credentials; their answers (a 401
    /// too) are read and dropped, and a failure is only logged. At most `n` in a client's
    /// life (those opened by earlier calls count): idle connections stay pooled for 60 s.
    /// Returns at once; needs a Tokio runtime.
    pub(crate) fn warm(&self, n: usize) {
        let before = self.inner.warmed.fetch_max(n, Ordering::Relaxed);
        let n = n.saturating_sub(before);
        if n == 0 {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            let pings = (0..n).map(|_| client.ping());
            for result in futures::future::join_all(pings).await {
                if let Err(error) = result {
                    tracing::debug!(registry = %client.inner.registry, %error, "connection warm-up failed");
                }
            }
        });
    }

    /// One `GET /v2/` without credentials, its answer read and dropped.
    async fn ping(&self) -> crate::error::Result<()> {
        let op = Operation::GetBase;
        let what = self.inner.registry.as_str();
        let req = self
            .inner
            .http
            .get(self.url("/v2/"))
            .build()
            .map_err(|e| self.transport_error(op, what, e))?;
        self.check_target(op, what, req.url())?;
        let resp = self.send_once(op, what, req).await?;
        self.read_capped(
            op,
            what,
            resp,
            MAX_ERROR_BODY_BYTES as u64,
            "base endpoint answer",
        )
        .await
        .map(drop)
    }

    /// Whether the server answers the distribution API's base endpoint `GET /v2/` as a
    /// registry does: anything but 404 (a 401 asks for credentials). Tells "not found"
    /// from "not a registry" in messages.
    pub async fn is_registry(&self) -> crate::error::Result<bool> {
        let what = self.inner.registry.clone();
        let url = self.url("/v2/");
        match self
            .request(Operation::GetBase, &what, &[], &|h| h.get(&url))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) if e.status().is_some() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// `base` + `path` (an absolute path of the registry API).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base, path)
    }

    fn blob_what(&self, repository: &str, digest: &crate::Digest) -> String {
        format!("{}/{}@{}", self.inner.registry, repository, digest)
    }
}
