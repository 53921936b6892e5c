//! A real containerd (Debian's 1.6, with runc) as an image consumer: started without a
//! system service, with its own root, state and gRPC socket in a temp dir, and driven with
//! `ctr`. It pulls images over plain HTTP from loopback registries (verifying every digest)
//! and runs containers with the native snapshotter on the host network. Killed on drop.
//!
//! Needs root (as CI runs) and `containerd`, `ctr`, `runc` from
//! `scripts/install-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running containerd.
pub struct Containerd {
    child: Child,
    dir: TempDir,
    sock: PathBuf,
    namespace: String,
}

/// Plugins this harness does not use (the CRI plugin would set up a Kubernetes node;
/// the other snapshotters probe the host's file systems).
const DISABLED: &str = r#"["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt"]"#;

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers. Panics with its log if it
    /// cannot start.
    pub fn start() -> Containerd {
        assert!(
            crate::is_root(),
            "this test needs root (as CI runs it): containerd and buildah run without a rootless setup"
        );
        for tool in ["containerd", "ctr", "runc"] {
            assert!(
                crate::have(tool),
                "{tool} not found on PATH: run tests/e2e/scripts/install-deps.sh"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("imagesync-ctd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = {DISABLED}\n\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"warn\"\n",
            root = d.join("root").display().to_string(),
            state = d.join("state").display().to_string(),
            sock = sock.display().to_string(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::File::create(d.join("containerd.log")).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting containerd: {e}"));
        // runc keeps its state per namespace under /run/containerd/runc: a namespace of
        // our own keeps containers of concurrent tests (and other containerds) apart.
        let namespace = format!(
            "imagesync-e2e-{}",
            d.file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let mut c = Containerd {
            child,
            dir,
            sock,
            namespace,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            if self.sock.exists() && self.ctr(&["version"]).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready after 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A scratch folder that lives as long as containerd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket (`ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Runs `ctr -a SOCK ARGS`; `Err` carries its output.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running ctr: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "ctr {args:?} failed ({}): {}\n{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `ctr images pull --plain-http` of `reference` (every platform with `all_platforms`),
    /// unpacked for this machine's platform into the native snapshotter. containerd
    /// verifies every blob and manifest against its digest. Panics on failure.
    pub fn pull(&self, reference: &str, all_platforms: bool) {
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if all_platforms {
            args.push("--all-platforms");
        }
        args.push(reference);
        if let Err(e) = self.ctr(&args) {
            panic!("{e}\ncontainerd log:\n{}", self.log());
        }
    }

    /// The `STATUS` column of `ctr images check` for `reference` (e.g. `complete (3/3)`).
    pub fn check_status(&self, reference: &str) -> Option<String> {
        let out = self
            .ctr(&["images", "check"])
            .unwrap_or_else(|e| panic!("{e}"));
        out.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols.get(3..5).map(|s| s.join(" ")))?
        })
    }

    /// Pulls `reference` (every platform) and asserts that `ctr images check` finds it
    /// complete.
    pub fn pull_and_check(&self, reference: &str) {
        self.pull(reference, true);
        let status = self.check_status(reference);
        assert!(
            status.as_deref().is_some_and(|s| s.starts_with("complete")),
            "ctr images check {reference}: {status:?}\n{}",
            self.ctr(&["images", "check"]).unwrap_or_default()
        );
    }

    /// Starts `ctr run --rm` of `image` as container `id` in the foreground (a child
    /// process, output to `log`), with `extra` options before the image. Stop it with
    /// [`Containerd::kill_task`].
    pub fn run(&self, id: &str, image: &str, extra: &[&str], args: &[&str], log: &Path) -> Child {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{e}"));
        let err = file.try_clone().unwrap_or_else(|e| panic!("{e}"));
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(["run", "--rm", "--snapshotter", "native"])
            .args(extra)
            .args([image, id])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("ctr run: {e}"))
    }

    /// The host pid of container `id`'s task, once it runs.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr(&["tasks", "ls"]).ok()?;
        out.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id) && cols.get(2) == Some(&"RUNNING"))
                .then(|| cols.get(1)?.parse().ok())?
        })
    }

    /// SIGKILLs container `id`'s task (ignoring "not found").
    pub fn kill_task(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
    }
}

impl Containerd {
    /// Kills, waits for and deletes every task and container, so that no shim or mount
    /// outlives the test.
    fn remove_all(&self) {
        let ids = |what: &str| -> Vec<String> {
            self.ctr(&[what, "ls", "-q"])
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect()
        };
        for id in ids("tasks") {
            self.kill_task(&id);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.task_pid(&id).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
        }
        for id in ids("containers") {
            let _ = self.ctr(&["containers", "delete", &id]);
        }
    }

    /// Best effort: unmounts whatever is still mounted under the temp dir.
    fn unmount_leftovers(&self) {
        let prefix = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg(p).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.unmount_leftovers();
    }
}
