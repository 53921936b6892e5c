//! Real buildah (Debian's 1.28) as an image producer, offline: its own vfs store in a temp
//! dir, chroot isolation, images built `from scratch` (nothing is run inside them), pushed
//! over plain HTTP to loopback registries in the format and layer compression asked for.
//!
//! Needs root (as CI runs) and `buildah` from `scripts/install-deps.sh`.

use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// A buildah store.
pub struct Buildah {
    dir: TempDir,
}

/// What `buildah push` writes: the manifest format and the layers' compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushFormat {
    /// `oci` or `v2s2` (Docker schema 2).
    pub format: &'static str,
    /// `gzip` or `zstd` (buildah 1.28 ignores `--disable-compression` on push).
    pub compression: &'static str,
}

impl Default for Buildah {
    fn default() -> Self {
        Self::new()
    }
}

impl Buildah {
    /// A fresh, empty store. Panics when buildah is missing.
    pub fn new() -> Buildah {
        assert!(
            crate::is_root(),
            "this test needs root (as CI runs it): containerd and buildah run without a rootless setup"
        );
        assert!(
            crate::have("buildah"),
            "buildah not found on PATH: run tests/e2e/scripts/install-deps.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("imagesync-buildah-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        Buildah { dir }
    }

    /// Runs `buildah --root .. --runroot .. --storage-driver vfs ARGS` and returns its
    /// stdout, trimmed. Panics with its stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let d = self.dir.path();
        let out = Command::new("buildah")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running buildah: {e}"));
        assert!(
            out.status.success(),
            "buildah {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A scratch folder that lives as long as the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Commits image `name` for `arch` (linux) from scratch with one layer per entry of
    /// `layers` (each a list of `(path, contents)` files) and an entrypoint label. Each
    /// layer is its own commit, so the image really has `layers.len()` layers.
    pub fn image(&self, name: &str, arch: &str, layers: &[Vec<(&str, Vec<u8>)>]) {
        let mut base = "scratch".to_owned();
        for (i, files) in layers.iter().enumerate() {
            let ctr = self.run(&["from", "--quiet", &base]);
            let stage = self.dir().join(format!("stage-{name}-{arch}-{i}"));
            for (path, contents) in files {
                let file = stage.join(path.trim_start_matches('/'));
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
                }
                std::fs::write(&file, contents).unwrap_or_else(|e| panic!("{e}"));
            }
            self.run(&[
                "copy",
                "--quiet",
                &ctr,
                &format!("{}/", stage.display()),
                "/",
            ]);
            self.run(&[
                "config",
                "--os",
                "linux",
                "--arch",
                arch,
                "--label",
                &format!("dev.imagesync.e2e.layer={i}"),
                "--entrypoint",
                r#"["/bin/app"]"#,
                &ctr,
            ]);
            let tag = format!("{name}-{arch}-layer{i}");
            self.run(&["commit", "--quiet", "--rm", &ctr, &tag]);
            base = tag;
        }
        self.run(&["tag", &base, name]);
    }

    /// Pushes local image `name` to `docker://dest` (plain HTTP) and returns the pushed
    /// manifest's digest.
    pub fn push(&self, name: &str, dest: &str, how: PushFormat) -> String {
        let digestfile = self.dir().join("digest");
        let mut args = vec![
            "push",
            "--quiet",
            "--tls-verify=false",
            "--format",
            how.format,
        ];
        let compression = format!("--compression-format={}", how.compression);
        args.push(&compression);
        let digest_arg = digestfile.display().to_string();
        args.extend(["--digestfile", &digest_arg, name]);
        let dest = format!("docker://{dest}");
        args.push(&dest);
        self.run(&args);
        std::fs::read_to_string(&digestfile)
            .unwrap_or_else(|e| panic!("buildah wrote no digest file: {e}"))
            .trim()
            .to_owned()
    }

    /// Builds a manifest list `list` from local images `images` and pushes it with every
    /// image (`manifest push --all`) to `docker://dest` in `format`. Returns the list's
    /// digest.
    pub fn push_manifest_list(
        &self,
        list: &str,
        images: &[&str],
        dest: &str,
        format: &str,
    ) -> String {
        self.run(&["manifest", "create", list]);
        for image in images {
            self.run(&[
                "manifest",
                "add",
                list,
                &format!("containers-storage:localhost/{image}"),
            ]);
        }
        let digestfile = self.dir().join("list-digest");
        let digest_arg = digestfile.display().to_string();
        self.run(&[
            "manifest",
            "push",
            "--quiet",
            "--all",
            "--tls-verify=false",
            "--format",
            format,
            "--digestfile",
            &digest_arg,
            list,
            &format!("docker://{dest}"),
        ]);
        std::fs::read_to_string(&digestfile)
            .unwrap_or_else(|e| panic!("buildah wrote no digest file: {e}"))
            .trim()
            .to_owned()
    }
}
