//! The one launcher of the `imagesync-controller` binary as a local process, used by
//! the controller, Helm and Terraform tests: [`Launch`] says how, [`ControllerProcess`]
//! is the running process (killed on drop), with its log and metrics endpoint.

// A test helper: a broken environment panics with context (see the crate docs).
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use parking_lot::{Mutex, MutexGuard};

/// How to start the controller.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// `KUBECONFIG`.
    pub kubeconfig: PathBuf,
    /// The log file (stdout and stderr, appended).
    pub log: PathBuf,
    /// Flags.
    pub args: Vec<String>,
    /// Extra environment (after `IMAGESYNC_NAMESPACE` and `POD_NAMESPACE` are removed).
    pub env: Vec<(String, String)>,
    /// The `--metrics-addr` already in `args`; `None`: a free loopback port is added.
    pub metrics_addr: Option<String>,
}

impl Launch {
    /// A launch with `kubeconfig`, logging to `log`.
    pub fn new(kubeconfig: &Path, log: &Path) -> Launch {
        Launch {
            kubeconfig: kubeconfig.to_path_buf(),
            log: log.to_path_buf(),
            ..Launch::default()
        }
    }

    /// Adds flags.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Records the `--metrics-addr` the flags already give.
    pub fn metrics_addr(mut self, addr: &str) -> Launch {
        self.metrics_addr = Some(addr.into());
        self
    }

    /// Starts the process.
    pub fn start(self) -> ControllerProcess {
        let (metrics_addr, extra) = match self.metrics_addr {
            Some(addr) => (addr, Vec::new()),
            None => {
                let addr = format!(
                    "127.0.0.1:{}",
                    crate::registry::free_port().expect("free port")
                );
                (addr.clone(), vec!["--metrics-addr".to_string(), addr])
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("controller log file");
        let child = Command::new(crate::bin("imagesync-controller"))
            .args(&extra)
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("IMAGESYNC_NAMESPACE")
            .env_remove("POD_NAMESPACE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().expect("controller log file"))
            .stderr(file)
            .spawn()
            .expect("starting imagesync-controller");
        ControllerProcess {
            child: Mutex::new(child),
            metrics_addr,
            log: self.log,
        }
    }
}

/// A running `imagesync-controller` process; SIGKILLed on drop.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Mutex<Child>,
    /// Where `/metrics` (and, unless moved, `/healthz` and `/readyz`) are served.
    pub metrics_addr: String,
    /// The log file.
    pub log: PathBuf,
}

impl ControllerProcess {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// The exit status, once it exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("waiting for the controller")
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Panics with the log when it exited.
    pub fn assert_running(&self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "imagesync-controller exited ({status}):\n{}",
                self.log_text()
            );
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM (what the kubelet sends), then the exit status once it exited; panics with
    /// the log when it still runs after `within`.
    pub fn terminate(&self, within: std::time::Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {}", self.pid());
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the controller did not exit within {within:?} of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET http://<metrics_addr><path>`: status and body.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("http://{}{path}", self.metrics_addr))
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// The value of an unlabelled metric (0 when absent, -1 when unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        let Some((_, text)) = self.get("/metrics").await else {
            return -1.0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
