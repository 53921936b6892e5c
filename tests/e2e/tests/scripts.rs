//! The set-up scripts the README's two commands run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Issue 20, item 17: install-deps.sh waits for a dpkg lock held by another apt instead
/// of failing at once. Uses a fake `apt-get` (a script recording its arguments) on a PATH
/// without the packages, since the real one would install them.
#[test]
fn install_deps_waits_for_the_dpkg_lock_fake_apt_get() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("apt-args");
    let fake = bin.join("apt-get");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A fake python3 whose Helm-library check passes (no pip run).
    let py = bin.join("python3");
    std::fs::write(&py, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Only what the script itself needs besides the packages it checks for.
    for tool in ["id", "sh", "bash"] {
        if let Ok(p) = which(tool) {
            std::os::unix::fs::symlink(p, bin.join(tool)).unwrap();
        }
    }
    let out = std::process::Command::new("/bin/bash")
        .arg(script("install-deps.sh"))
        .env("PATH", &bin)
        .env("IMAGESYNC_APT_LOCK_TIMEOUT", "42")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let args = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = args.lines().collect();
    assert!(lines.len() >= 2, "update and install: {args}");
    for l in &lines {
        assert!(l.contains("-o DPkg::Lock::Timeout=42"), "{l}");
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("install") && l.contains("docker-registry")));
    assert!(stderr.contains("waits up to 42s"), "{stderr}");
}

fn which(tool: &str) -> std::io::Result<PathBuf> {
    for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return std::fs::canonicalize(p);
        }
    }
    Err(std::io::Error::other(format!("{tool} not found")))
}

/// Issue 16: build-kube-apiserver.sh takes the Debian mirror from the machine's apt
/// sources (deb822 first, then one-line entries) instead of a hard-coded URL. Checks the
/// entries it would write (`--print-apt-sources`) for fake /etc/apt trees; nothing is
/// built or installed.
#[test]
fn kube_apiserver_apt_sources_use_the_configured_mirror() {
    let print = |etc: &Path| {
        let out = std::process::Command::new("/bin/bash")
            .arg(script("build-kube-apiserver.sh"))
            .arg("--print-apt-sources")
            .env("APT_ETC", etc)
            .env("DEBIAN_CODENAME", "bookworm")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let uris: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("URIs: "))
            .map(String::from)
            .collect();
        assert_eq!(uris.len(), 2, "{text}");
        assert!(text.contains("Types: deb-src") && text.contains("Suites: bullseye"));
        uris
    };
    let dir = tempfile::tempdir().unwrap();
    let deb822 = dir.path().join("deb822");
    std::fs::create_dir_all(deb822.join("sources.list.d")).unwrap();
    std::fs::write(
        deb822.join("sources.list.d/debian.sources"),
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n\
         Components: main\n\n# the archive\nTypes: deb\nURIs: https://mirror.test/debian/\n\
         Suites: bookworm bookworm-updates\nComponents: main\n",
    )
    .unwrap();
    assert_eq!(print(&deb822), ["https://mirror.test/debian"; 2]);

    let one_line = dir.path().join("one-line");
    std::fs::create_dir_all(&one_line).unwrap();
    std::fs::write(
        one_line.join("sources.list"),
        "# deb http://commented.test/debian bookworm main\n\
         deb [arch=amd64 signed-by=/k.gpg] http://ftp.test/debian bookworm main\n",
    )
    .unwrap();
    assert_eq!(print(&one_line), ["http://ftp.test/debian"; 2]);

    // Nothing configured: Debian's own redirector, with a warning.
    assert_eq!(
        print(&dir.path().join("empty")),
        ["http://deb.debian.org/debian"; 2]
    );
}
