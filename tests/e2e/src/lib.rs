//! The end-to-end test harness: real registries on loopback ([`registry`]), a
//! fault-injecting proxy ([`proxy`]), a token server for `auth: token` registries
//! ([`token`]), image fixtures pushed with raw HTTP ([`fixtures`]), the controller
//! launcher ([`controller`]), and [`bin`] to find the workspace's binaries.
//!
//! Helpers panic with context when the environment is broken: they are for tests.

pub mod buildah;
pub mod containerd;
pub mod controller;
pub mod fixtures;
pub mod kube;
pub mod proxy;
pub mod referrers_layer;
pub mod registry;
pub mod tls;
pub mod token;

use std::path::PathBuf;

/// The path of workspace binary `name` built by cargo (`cargo build --workspace --bins`):
/// `$CARGO_BIN_EXE_<name>` when cargo set it, else `target/<profile>/<name>` next to the
/// running test executable. Panics with a hint when it is missing.
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/e2e-HASH -> target/debug/NAME
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join(name));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(&t).join("debug").join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "binary {name:?} not found (looked in {candidates:?}); build it first: cargo build --workspace --bins"
    )
}

/// Whether this process runs as root (uid 0 in `/proc/self/status`): containerd and
/// buildah's chroot isolation need it, as on CI.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The cache for slow-to-build test components: `$IMAGESYNC_E2E_CACHE` or
/// `~/.cache/imagesync-e2e`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGESYNC_E2E_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("imagesync-e2e")
}
