//! End-to-end tests: the controller's container image. `images/build-controller-image.sh`
//! builds it with buildah (from the debug binary CI has already built), `imagesync copy`
//! mirrors it as a user would, containerd pulls it by the printed id and runs it the way the
//! chart's Pod spec does (uid 65532, read-only root, no capabilities, no new privileges,
//! the default seccomp profile) on the host network against the real kube-apiserver.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use imagesync_api::ImageSync;
use imagesync_e2e::containerd::Containerd;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::{free_port, Registry};
use kube::Api;
use serde_json::Value;

use crate::controller::{cluster, image_sync_yaml, ready_with, wait_for};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the image script on `binary`, pushing to `dest` (plain HTTP); returns the digest.
pub(crate) fn build_image(binary: &Path, dest: &str) -> String {
    build_image_of("imagesync-controller", binary, dest)
}

/// The image script for `--bin name`.
fn build_image_of(name: &str, binary: &Path, dest: &str) -> String {
    let script = repo_root().join("images/build-controller-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--bin", name])
        .arg("--binary")
        .arg(binary)
        .args(["--push", &format!("docker://{dest}"), "--tls-verify=false"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "script printed {digest:?}");
    digest
}

/// `imagesync copy SRC DST` between plain-HTTP loopback registries; returns the printed id.
pub(crate) fn imagesync_copy(src: &str, dst: &str, insecure: &[&str]) -> String {
    let mut cmd = Command::new(imagesync_e2e::bin("imagesync"));
    cmd.args(["copy", src, dst, "--no-progress"]);
    for r in insecure {
        cmd.args(["--insecure-registry", r]);
    }
    let out = cmd
        .env_remove("IMAGESYNC_CREDS")
        .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
        .output()
        .unwrap_or_else(|e| panic!("running imagesync: {e}"));
    assert!(
        out.status.success(),
        "imagesync copy {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn get_json(url: &str, accept: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(url)
        .header("accept", accept)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The image config of `repo@digest` on `reg`.
async fn image_config(reg: &Registry, repo: &str, digest: &str) -> Value {
    let base = reg.url();
    let manifest = get_json(
        &format!("{base}/v2/{repo}/manifests/{digest}"),
        fixtures::OCI_MANIFEST,
    )
    .await;
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    get_json(&format!("{base}/v2/{repo}/blobs/{config}"), "*/*").await
}

/// An admin kubeconfig with the CA inline, in a folder of its own that uid 65532 can read
/// (mounted read-only into the container).
fn container_kubeconfig(api: &imagesync_e2e::kube::ApiServer) -> PathBuf {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let ca = std::fs::read(api.dir().join("certs/apiserver.crt")).expect("apiserver CA");
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let admin = std::fs::read_to_string(api.kubeconfig()).expect("admin kubeconfig");
    let text: String = admin
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("certificate-authority:") {
                format!("    certificate-authority-data: {ca}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let dir = api.dir().join("container-kube");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config"), text).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("config"), std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

/// containerd's default capability set (oci.populateDefaultUnixSpec).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A controller container: `ctr run` of the image with the chart Pod's restrictions.
struct Running<'a> {
    ctd: &'a Containerd,
    id: String,
    child: Child,
    log: PathBuf,
    metrics: String,
}

impl<'a> Running<'a> {
    /// `command` is the image's ENTRYPOINT followed by the args (what the kubelet runs).
    fn start(
        ctd: &'a Containerd,
        image: &str,
        id: &str,
        kube_dir: &Path,
        command: &[String],
        metrics: &str,
    ) -> Running<'a> {
        let mount = format!(
            "type=bind,src={},dst=/var/run/imagesync-kube,options=rbind:ro",
            kube_dir.display()
        );
        let mut extra = vec!["--net-host", "--read-only", "--seccomp"];
        // capabilities.drop: [ALL]. ctr's CAP_ALL leaves the bounding set alone, so drop
        // each capability of containerd's default set by name.
        for cap in DEFAULT_CAPS {
            extra.extend(["--cap-drop", cap]);
        }
        extra.extend([
            "--mount",
            &mount,
            "--env",
            "KUBECONFIG=/var/run/imagesync-kube/config",
            "--env",
            "POD_NAMESPACE=default",
            "--env",
            "RUST_LOG=info,imagesync_controller=debug",
        ]);
        let log = ctd.dir().join(format!("{id}.log"));
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let child = ctd.run(id, image, &extra, &args, &log);
        Running {
            ctd,
            id: id.to_owned(),
            child,
            log,
            metrics: metrics.to_owned(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the task's pid (panics with the log when the container exits first).
    fn pid(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self.ctd.task_pid(&self.id) {
                return pid;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "container {} exited ({status}):\n{}",
                    self.id,
                    self.log_text()
                );
            }
            assert!(Instant::now() < deadline, "container {} never ran", self.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `path` on the metrics listener answers 200 and returns the body.
    async fn get_ok(&mut self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("http://{}{path}", self.metrics);
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status().is_success() {
                    return resp.text().await.unwrap_or_default();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "container {} exited ({status}):\n{}",
                    self.id,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered 200:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILLs the task and waits for `ctr run --rm` to remove the container.
    fn stop(mut self) {
        self.ctd.kill_task(&self.id);
        let _ = self.child.wait();
    }
}

/// The `Name:` fields of /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The process runs as the chart's securityContext says.
fn assert_restricted(pid: u32) {
    assert_eq!(proc_status(pid, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(proc_status(pid, "Gid"), "65532\t65532\t65532\t65532");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2", "seccomp filter mode");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("root mount");
    let options = root.split(' ').nth(5).unwrap_or_default();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root file system not read-only: {root}"
    );
}

/// The controller Deployment's args as the chart renders them with `values` (the real Helm
/// library through helmctl.py).
fn chart_args(values: &Value) -> Vec<String> {
    let python = std::env::var("IMAGESYNC_E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo_root().join("tests/e2e/helm/helmctl.py"))
        .arg("render")
        .arg(repo_root().join("charts/imagesync"))
        .args(["--name", "isync", "--namespace", "default"])
        .args(["--values-json", &values.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running helmctl.py: {e}"));
    assert!(
        out.status.success(),
        "helmctl render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: Value = serde_json::from_slice(&out.stdout).expect("render JSON");
    let deploy = rendered["objects"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["kind"] == "Deployment"))
        .expect("a Deployment")
        .clone();
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["runAsUser"], 65532);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

/// Two builds of the image give one digest; the mirrored image (pulled by id by
/// containerd) runs as the chart's Pod would, reconciles an ImageSync to Ready and serves
/// /healthz and /metrics; then again with the chart's own flags.
#[tokio::test]
async fn controller_image_is_reproducible_and_reconciles_under_containerd() {
    let (api, origin, mirror) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let binary = imagesync_e2e::bin("imagesync-controller");
    let version = env!("CARGO_PKG_VERSION");

    // Reproducible: two builds from fresh stores, pushed to two repositories.
    let started = Instant::now();
    let first = build_image(
        &binary,
        &origin.reference(&format!("imagesync-controller:{version}")),
    );
    let build_time = started.elapsed();
    let second = build_image(
        &binary,
        &origin.reference(&format!("rebuild/imagesync-controller:{version}")),
    );
    assert_eq!(first, second, "two builds of the same binary differ");
    eprintln!("image {first} built in {build_time:?}");
    let tags = get_json(
        &format!("{}/v2/imagesync-controller/tags/list", origin.url()),
        "*/*",
    )
    .await;
    assert_eq!(tags["tags"], serde_json::json!([version]), "no latest tag");

    let config = image_config(&origin, "imagesync-controller", &first).await;
    assert_eq!(config["config"]["User"], "65532:65532");
    let entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/imagesync-controller"]);
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.title"],
        "imagesync-controller"
    );
    assert_eq!(labels["org.opencontainers.image.version"], version);

    // Mirrored as a user would, pulled by the printed id.
    let insecure = [origin.addr(), mirror.addr()];
    let id = imagesync_copy(
        &origin.reference(&format!("imagesync-controller:{version}")),
        &mirror.reference(&format!("mirror/imagesync-controller:{version}")),
        &insecure,
    );
    assert_eq!(
        id,
        format!("{}/mirror/imagesync-controller@{first}", mirror.addr())
    );
    let ctd = Containerd::start();
    ctd.pull_and_check(&id);

    // Run as the chart's Pod: reconcile an ImageSync, serve /healthz and /metrics.
    let kube_dir = container_kubeconfig(&api);
    let isyncs: Api<ImageSync> = Api::namespaced(api.client().await, "default");
    let app = fixtures::push_index(origin.addr(), "app", "1", 151).await;
    api.apply_yaml(&image_sync_yaml(
        "default",
        "from-image",
        &origin.reference("app:1"),
        &mirror.reference("synced/app:1"),
        "",
    ));
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let mut command = entrypoint.clone();
    // The scenario objects re-check every 2s; the production floor is 10s.
    command.extend(["--metrics-addr".into(), metrics.clone()]);
    command.extend(["--min-resync-interval".into(), "1s".into()]);
    for r in insecure {
        command.extend(["--insecure-registry".into(), r.to_owned()]);
    }
    let mut run = Running::start(&ctd, &id, "ctl-plain", &kube_dir, &command, &metrics);
    assert_restricted(run.pid());
    assert_eq!(run.get_ok("/healthz").await.trim(), "ok");
    wait_for(
        &isyncs,
        "from-image",
        Duration::from_secs(60),
        "Ready",
        None,
        |o| ready_with(o, &app.digest),
    )
    .await;
    fixtures::assert_identical(mirror.addr(), "synced/app", "1", &app).await;
    let text = run.get_ok("/metrics").await;
    assert!(text.contains("imagesync_"), "{text}");
    run.stop();

    // The chart's own flags (metrics on a loopback port instead of 0.0.0.0:8080).
    let values = serde_json::json!({"insecureRegistries": insecure, "minResyncInterval": "1s"});
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let mut command = entrypoint;
    command.extend(chart_args(&values).into_iter().map(|a| {
        if a.starts_with("--metrics-addr=") {
            format!("--metrics-addr={metrics}")
        } else {
            a
        }
    }));
    assert!(
        command.iter().any(|a| a.starts_with("--log-format=")),
        "{command:?}"
    );
    let app2 = fixtures::push_index(origin.addr(), "app", "2", 152).await;
    api.apply_yaml(&image_sync_yaml(
        "default",
        "from-chart-flags",
        &origin.reference("app:2"),
        &mirror.reference("synced/app:2"),
        "",
    ));
    let mut run = Running::start(&ctd, &id, "ctl-chart", &kube_dir, &command, &metrics);
    assert_restricted(run.pid());
    assert_eq!(run.get_ok("/healthz").await.trim(), "ok");
    wait_for(
        &isyncs,
        "from-chart-flags",
        Duration::from_secs(60),
        "Ready",
        None,
        |o| ready_with(o, &app2.digest),
    )
    .await;
    assert!(run.get_ok("/metrics").await.contains("imagesync_"));
    run.stop();
}

/// The image script never writes a `latest` tag: it refuses before building or pushing.
#[test]
fn image_script_refuses_a_latest_tag() {
    let script = repo_root().join("images/build-controller-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--binary", "/nonexistent", "--push"])
        .arg("docker://127.0.0.1:9/imagesync-controller:latest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to write a 'latest' tag"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI image (same script, `--bin imagesync`), run by containerd read-only as 65532
/// on the host network, copies an image between loopback registries and prints its id.
#[tokio::test]
async fn cli_image_copies_an_image_when_run_by_containerd() {
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let version = env!("CARGO_PKG_VERSION");
    let cli = imagesync_e2e::bin("imagesync");
    let digest = build_image_of(
        "imagesync",
        &cli,
        &src.reference(&format!("imagesync:{version}")),
    );
    let config = image_config(&src, "imagesync", &digest).await;
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/imagesync"])
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"],
        "imagesync"
    );

    let app = fixtures::push_index(src.addr(), "app", "1", 161).await;
    let ctd = Containerd::start();
    let image = format!("{}/imagesync@{digest}", src.addr());
    ctd.pull_and_check(&image);
    let log = ctd.dir().join("cli.log");
    let mut extra = vec!["--net-host", "--read-only", "--seccomp"];
    for cap in DEFAULT_CAPS {
        extra.extend(["--cap-drop", cap]);
    }
    let (from, to) = (src.reference("app:1"), dst.reference("copied/app:1"));
    let command = [
        "/usr/local/bin/imagesync",
        "copy",
        &from,
        &to,
        "--no-progress",
        "--insecure-registry",
        src.addr(),
        "--insecure-registry",
        dst.addr(),
    ];
    let mut child = ctd.run("cli-copy", &image, &extra, &command, &log);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "CLI container failed: {output}");
    assert!(
        output.contains(&format!("{}/copied/app@{}", dst.addr(), app.digest)),
        "{output}"
    );
    fixtures::assert_identical(dst.addr(), "copied/app", "1", &app).await;
}
