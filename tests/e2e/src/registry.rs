//! Real CNCF distribution registries (Debian's `docker-registry`, 2.8) on random
//! loopback ports: plain HTTP, TLS, htpasswd Basic auth, token auth, deletes on or off.
//! Each one runs in its own temp dir and is killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::tls::{self, TlsFiles};
use crate::token::{self, TokenServer};

/// How to run a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate from a throw-away CA ([`Registry::ca_pem_path`]).
    pub tls: bool,
    /// `auth: htpasswd` with this user (bcrypt). With `token_auth`, the token server's
    /// only user instead.
    pub htpasswd: Option<(String, String)>,
    /// `auth: token` with an in-process token server ([`Registry::token_server`]).
    pub token_auth: bool,
    /// `storage.delete.enabled`.
    pub delete_enabled: bool,
    /// With `token_auth`: the token server never grants access to another repository
    /// than the one being pushed, so cross-repository mounts are refused.
    pub token_refuses_cross_repository_mounts: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls: false,
            htpasswd: None,
            token_auth: false,
            delete_enabled: true,
            token_refuses_cross_repository_mounts: false,
        }
    }
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// HTTP method.
    pub method: String,
    /// Request path with query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// The request's protocol as the registry logged it: `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
}

impl AccessEntry {
    /// Whether this request read or wrote a manifest (`/v2/<repo>/manifests/<ref>`).
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }
    /// Whether this request addressed a blob (not an upload).
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/") && !self.path.contains("/blobs/uploads")
    }
    /// Whether this request was part of a blob upload.
    pub fn is_upload(&self) -> bool {
        self.path.contains("/blobs/uploads")
    }
}

/// A running registry. Killed (and its data removed) on drop.
pub struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    access: Arc<Mutex<Vec<AccessEntry>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    tls: Option<TlsFiles>,
    user: Option<(String, String)>,
    token_server: Option<TokenServer>,
    options: RegistryOptions,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("options", &self.options)
            .finish()
    }
}

/// The registry binary: `$IMAGESYNC_REGISTRY_BIN`, `/usr/bin/docker-registry` or `PATH`.
pub fn registry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGESYNC_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/bin/docker-registry");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("docker-registry")
}

impl Registry {
    /// A plain-HTTP registry with deletes enabled. Panics if it cannot start.
    pub async fn start() -> Registry {
        Self::start_with(RegistryOptions::default()).await
    }

    /// A registry with `options`. Panics (with the registry's output) if it cannot start.
    pub async fn start_with(options: RegistryOptions) -> Registry {
        match Self::try_start(options).await {
            Ok(r) => r,
            Err(e) => panic!("starting docker-registry: {e:#}"),
        }
    }

    /// Like [`Registry::start_with`] but returns the error.
    pub async fn try_start(options: RegistryOptions) -> Result<Registry> {
        let mut last = None;
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            match Self::start_once(options.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn start_once(options: RegistryOptions) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("imagesync-registry-")
            .tempdir()?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;

        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog: {{disabled: false}}\n\
             storage:\n  filesystem: {{rootdirectory: {data}}}\n  delete: {{enabled: {delete}}}\n  \
             maintenance: {{uploadpurging: {{enabled: false}}}}\n\
             http:\n  addr: {addr}\n  secret: imagesync-e2e-secret\n",
            data = data.display(),
            delete = options.delete_enabled,
        );
        let tls = if options.tls {
            let files = tls::write_server_tls(dir.path())?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                files.cert_pem.display(),
                files.key_pem.display()
            ));
            Some(files)
        } else {
            None
        };
        let mut token_server = None;
        if options.token_auth {
            let signing = tls::signing_cert()?;
            let bundle = dir.path().join("token-signer.pem");
            std::fs::write(&bundle, &signing.cert_pem)?;
            let policy = token::TokenPolicy {
                refuse_cross_repository_mounts: options.token_refuses_cross_repository_mounts,
            };
            let server =
                TokenServer::start_with(&signing, options.htpasswd.clone(), policy).await?;
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.realm(),
                token::SERVICE,
                token::ISSUER,
                bundle.display()
            ));
            token_server = Some(server);
        } else if let Some((user, pass)) = &options.htpasswd {
            let hash = bcrypt::hash(pass, 4).context("bcrypt")?;
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imagesync-e2e\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, &config)?;

        if !registry_binary().is_file() && !crate::have("docker-registry") {
            bail!(
                "{} not found: install it with tests/e2e/scripts/install-deps.sh",
                registry_binary().display()
            );
        }
        // A watchdog shell: the registry is killed when our end of its stdin closes, i.e.
        // on drop *or* when this process dies without running destructors (a test-runner
        // timeout), so no registry outlives its test.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(registry_binary())
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "running {} (install it with tests/e2e/scripts/install-deps.sh)",
                    registry_binary().display()
                )
            })?;
        let access = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let access = access.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(e) = parse_access_line(&line) {
                        access.lock().push(e);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock();
                    if s.len() < 2000 {
                        s.push(line);
                    }
                }
            });
        }
        let mut registry = Registry {
            child,
            addr,
            dir,
            access,
            stderr,
            tls,
            user: options.htpasswd.clone(),
            token_server,
            options,
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    self.stderr_text()
                );
            }
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "docker-registry did not listen on {} within 20s: {}",
                    self.addr,
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `addr/repo:tag` style reference to `path` (e.g. `"app:1"`) on this registry.
    pub fn reference(&self, path: &str) -> String {
        format!("{}/{path}", self.addr)
    }

    /// The options it was started with.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The CA certificate to trust (TLS registries only).
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_pem.as_path())
    }

    /// The htpasswd / token-server user.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.user.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The in-process token server (token-auth registries only).
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// The registry's temp dir (config, certificates, `data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Requests seen so far (from the registry's own access log). Lines are written
    /// when a response completes; see [`Registry::access_log_settled`].
    pub fn access_log(&self) -> Vec<AccessEntry> {
        self.access.lock().clone()
    }

    /// The access log once no new line arrived for 200 ms (the log is written
    /// asynchronously after each response).
    pub async fn access_log_settled(&self) -> Vec<AccessEntry> {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = self.access.lock().len();
            if n == last {
                return self.access_log();
            }
            last = n;
        }
    }

    /// Forgets the access log seen so far.
    pub fn clear_access_log(&self) {
        self.access.lock().clear();
    }

    /// The registry's stderr so far (its error log).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().join("\n")
    }

    /// A reqwest client that trusts this registry's CA (plain client otherwise).
    pub fn http_client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(t) = &self.tls {
            if let Ok(pem) = std::fs::read(&t.ca_pem) {
                if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
                    b = b.tls_certs_merge(certs);
                }
            }
        }
        match b.build() {
            Ok(c) => c,
            Err(e) => panic!("building an HTTP client: {e}"),
        }
    }

    /// A fixture [`crate::fixtures::Target`] for this registry (its URL, CA and Basic
    /// credentials). Token-auth registries are not supported by raw pushes: copy into
    /// them with the engine instead.
    pub fn target(&self) -> crate::fixtures::Target {
        crate::fixtures::Target {
            base: self.url(),
            client: self.http_client(),
            basic: if self.options.token_auth {
                None
            } else {
                self.user.clone()
            },
        }
    }

    /// HTTP status of a `HEAD` (with Basic credentials if any; no token dance) on `path`.
    pub async fn head_status(&self, path: &str) -> u16 {
        self.head(path, None).await
    }

    /// HTTP status of `HEAD /v2/<repo>/manifests/<reference>`, accepting every manifest
    /// type (with Basic credentials if any; no token dance).
    pub async fn manifest_status(&self, repo: &str, reference: &str) -> u16 {
        let accept = [
            crate::fixtures::OCI_INDEX,
            crate::fixtures::OCI_MANIFEST,
            crate::fixtures::DOCKER_LIST,
            crate::fixtures::DOCKER_MANIFEST,
        ]
        .join(", ");
        self.head(&format!("/v2/{repo}/manifests/{reference}"), Some(&accept))
            .await
    }

    async fn head(&self, path: &str, accept: Option<&str>) -> u16 {
        let mut req = self.http_client().head(format!("{}{path}", self.url()));
        if let (Some((u, p)), false) = (&self.user, self.options.token_auth) {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        match req.send().await {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("HEAD {path}: {e}"),
        }
    }
}

/// `sh -c WATCHDOG BINARY CONFIG`: runs the registry, kills it on stdin EOF, and exits
/// with the registry's status when it exits by itself.
/// (Background jobs get /dev/null as stdin unless redirected explicitly: hence fd 3.)
const WATCHDOG: &str = r#"exec 3<&0
"$0" serve "$1" & r=$!
(read _ignored <&3; kill "$r" 2>/dev/null) &
exec 3<&-
wait "$r""#;

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing stdin makes the watchdog kill the registry.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("probing a free port")?;
    Ok(l.local_addr()?.port())
}

/// Parses a combined-log-format line:
/// `127.0.0.1 - - [date] "HEAD /v2/a/manifests/1 HTTP/1.1" 200 0 "" "ua"`.
pub fn parse_access_line(line: &str) -> Option<AccessEntry> {
    let start = line.find('"')? + 1;
    let end = start + line[start..].find('"')?;
    let mut request = line[start..end].split(' ');
    let method = request.next()?.to_string();
    let path = request.next()?.to_string();
    let protocol = request.next()?.to_string();
    let status = line[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(AccessEntry {
        method,
        path,
        status,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_parse() {
        let e = parse_access_line(
            r#"127.0.0.1 - - [27/Nov/2026:10:51:54 +0000] "HEAD /v2/a/manifests/x HTTP/1.1" 200 2 "" "curl/7.88.1""#,
        )
        .unwrap();
        assert_eq!(
            e,
            AccessEntry {
                method: "HEAD".into(),
                path: "/v2/a/manifests/x".into(),
                status: 200,
                protocol: "HTTP/1.1".into(),
            }
        );
        assert!(e.is_manifest() && !e.is_blob());
        assert!(parse_access_line("time=... level=warning").is_none());
    }
}
