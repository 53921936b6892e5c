//! A real Kubernetes API server for tests: etcd plus kube-apiserver v1.20.2 (built from
//! Debian's source package by `scripts/build-kube-apiserver.sh`, cached outside the
//! repo) on random loopback ports, with RBAC on, an admin token, and ServiceAccount
//! tokens through TokenRequest. There is no scheduler or kubelet: controllers run as
//! local processes with a kubeconfig. Everything is killed on drop.
//!
//! ```no_run
//! # async fn demo() {
//! let api = imagesync_e2e::kube::ApiServer::start().await;
//! let client = api.client().await;
//! api.kubectl(&["get", "namespaces"]);
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;

use crate::registry::free_port;

/// The kube-apiserver binary: `$IMAGESYNC_KUBE_APISERVER`, else whatever
/// `scripts/build-kube-apiserver.sh` prints (instant once cached; about 7 minutes to
/// build the first time).
pub fn apiserver_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGESYNC_KUBE_APISERVER") {
        return PathBuf::from(p);
    }
    let cached = crate::cache_dir().join("kube-apiserver-1.20.2");
    if cached.is_file() {
        return cached;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-kube-apiserver.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    assert!(
        Path::new(&path).is_file(),
        "build script printed {path:?}, not a file"
    );
    PathBuf::from(path)
}

fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGESYNC_ETCD") {
        return PathBuf::from(p);
    }
    assert!(
        crate::have("etcd"),
        "etcd not found on PATH: run tests/e2e/scripts/install-deps.sh (Debian package etcd-server)"
    );
    PathBuf::from("etcd")
}

/// A running etcd + kube-apiserver pair.
pub struct ApiServer {
    dir: TempDir,
    etcd: Child,
    apiserver: Child,
    port: u16,
    admin_token: String,
    kubeconfig: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

fn random_hex(bytes: usize) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    hex::encode(crate::fixtures::random_bytes(seed, bytes))
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ApiServer {
    /// Starts etcd and kube-apiserver on free 127.0.0.1 ports and waits for `/readyz`.
    /// A port found free can be taken by a parallel test before etcd or kube-apiserver
    /// binds it; such a start is retried on fresh ports (up to 3 times).
    pub async fn start() -> ApiServer {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_start().await {
                Ok(server) => return server,
                Err(e) if tries < 3 && e.contains("address already in use") => {
                    eprintln!("kube test cluster: a port was taken meanwhile; retrying ({e})");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn try_start() -> Result<ApiServer, String> {
        let binary = apiserver_binary();
        let dir = tempfile::Builder::new()
            .prefix("imagesync-kube-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path().to_path_buf();

        // etcd
        let client_port = free_port().unwrap_or_else(|e| panic!("free port: {e}"));
        let peer_port = free_port().unwrap_or_else(|e| panic!("free port: {e}"));
        let etcd_log = std::fs::File::create(d.join("etcd.log")).unwrap_or_else(|e| panic!("{e}"));
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let etcd = Command::new(etcd_binary())
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
            ])
            .args(["--log-level", "warn", "--unsafe-no-fsync"])
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd: {e}"));

        // Keys and tokens
        let sa_key = d.join("sa.key");
        let sa_pub = d.join("sa.pub");
        openssl(&["genrsa", "-out", &sa_key.to_string_lossy(), "2048"]);
        openssl(&[
            "rsa",
            "-in",
            &sa_key.to_string_lossy(),
            "-pubout",
            "-out",
            &sa_pub.to_string_lossy(),
        ]);
        let admin_token = random_hex(16);
        std::fs::write(
            d.join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let port = free_port().unwrap_or_else(|e| panic!("free port: {e}"));
        let log =
            std::fs::File::create(d.join("kube-apiserver.log")).unwrap_or_else(|e| panic!("{e}"));
        let apiserver = Command::new(&binary)
            .args(["--etcd-servers", &etcd_url])
            .args(["--secure-port", &port.to_string()])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .args(["--authorization-mode", "RBAC"])
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-cluster-ip-range", "10.0.0.0/24"])
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .args(["--logtostderr=true", "--v=0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));

        let kubeconfig = d.join("admin.kubeconfig");
        let mut server = ApiServer {
            dir,
            etcd,
            apiserver,
            port,
            admin_token,
            kubeconfig,
        };
        server.wait_ready().await?;
        let ca = server.dir.path().join("certs/apiserver.crt");
        let text = kubeconfig_text(&server.url(), &ca, "admin", &server.admin_token);
        std::fs::write(&server.kubeconfig, text).unwrap_or_else(|e| panic!("{e}"));
        // The default namespace and the bootstrap RBAC roles appear shortly after readyz.
        server.wait_for_default_namespace().await;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = format!("{}/readyz", self.url());
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                return Err(format!(
                    "kube-apiserver exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                return Err(format!(
                    "etcd exited ({status}):\n{}",
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
                ));
            }
            let ok = http
                .get(&url)
                .bearer_auth(&self.admin_token)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 120 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_for_default_namespace(&self) {
        let client = self.client().await;
        let ns: Api<Namespace> = Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ns.get_opt("default").await.ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "namespace default never appeared"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of the apiserver's log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin kubeconfig (user `admin` in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A scratch folder that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// Runs `kubectl --kubeconfig admin ARGS`; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl with `input` on stdin; panics with its output when it fails.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        kubectl(&self.kubeconfig, args, input).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl apply -f -` of `yaml` (one or more documents).
    pub fn apply_yaml(&self, yaml: &str) -> String {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
    }

    /// Applies a CRD file and waits until it is Established.
    pub async fn apply_crd(&self, path: &Path) {
        self.kubectl(&["apply", "-f", &path.to_string_lossy()]);
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = text
            .lines()
            .skip_while(|l| !l.starts_with("metadata:"))
            .find_map(|l| l.trim().strip_prefix("name: "))
            .unwrap_or_else(|| panic!("no metadata.name in {}", path.display()))
            .to_string();
        self.wait_crd_established(&name).await;
    }

    /// Waits until CRD `name` is Established (its API is served).
    pub async fn wait_crd_established(&self, name: &str) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let established = crds
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                // Discovery of the new group can lag a moment behind the condition.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not established after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates namespace `name` (ignoring "already exists").
    pub async fn create_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }

    /// Creates ServiceAccount `namespace/name` if needed, mints a token for it with the
    /// TokenRequest API (valid for an hour) and writes a kubeconfig that uses it.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".to_string()],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let minted = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        let token = minted
            .status
            .map(|s| s.token)
            .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name} returned no token"));
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        let ca = self.dir.path().join("certs/apiserver.crt");
        let user = format!("system:serviceaccount:{namespace}:{name}");
        std::fs::write(&path, kubeconfig_text(&self.url(), &ca, &user, &token))
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }
}

fn kubeconfig_text(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user:?}
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: {user:?}
    namespace: default
current-context: e2e
",
        ca = ca.display()
    )
}

/// A client for `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"))
}

/// Runs kubectl against `kubeconfig`; `Err` carries its output.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("kubectl stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
