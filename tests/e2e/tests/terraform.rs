//! End-to-end tests: the Terraform provider under the real Terraform CLI (1.11.4 through
//! `dev_overrides`, 1.0.3 and 0.13.4 through a filesystem mirror; 0.13 speaks plugin
//! protocol 5, the others 6) against real registries.
//!
//! Over 600 lines because it is one module per area (the Terraform versions and
//! lifecycles): each test is one scenario against real components, and its set-up is
//! spelled out so a failure reads alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use imagesync_e2e::fixtures::{self, FixtureSpec, Pushed, Target};
use imagesync_e2e::kube::ApiServer;
use imagesync_e2e::registry::{Registry, RegistryOptions};

pub(crate) const PROVIDER: &str = "terraform-provider-imagesync";
pub(crate) const PROVIDER_VERSION: &str = "0.1.0";

pub(crate) static FETCH: Mutex<()> = Mutex::new(());

/// The Terraform binary of `version` (fetched once into the e2e cache by the script).
pub(crate) fn terraform_bin(version: &str) -> PathBuf {
    let _serial = FETCH.lock().unwrap_or_else(|p| p.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/terraform-fetch.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(version)
        .output()
        .expect("run terraform-fetch.sh");
    assert!(
        out.status.success(),
        "terraform-fetch.sh {version} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    PathBuf::from(path)
}

/// How Terraform finds the locally built provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Install {
    DevOverrides,
    FilesystemMirror,
}

/// One Terraform working directory with its own CLI config.
pub(crate) struct Tf {
    pub(crate) version: &'static str,
    pub(crate) bin: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cli_config: PathBuf,
    pub(crate) install: Install,
}

impl Tf {
    pub(crate) fn new(version: &'static str) -> Tf {
        let bin = terraform_bin(version);
        let provider = imagesync_e2e::bin(PROVIDER);
        let dir = tempfile::Builder::new()
            .prefix("imagesync-tf-")
            .tempdir()
            .unwrap();
        let cli_config = dir.path().join("terraformrc");
        // 0.13 has no dev_overrides (0.14+); test both installation methods.
        let install = if version == "1.11.4" {
            Install::DevOverrides
        } else {
            Install::FilesystemMirror
        };
        let rc = match install {
            Install::DevOverrides => format!(
                "provider_installation {{\n  dev_overrides {{\n    \"imagesync/imagesync\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
                provider.parent().unwrap().display()
            ),
            Install::FilesystemMirror => {
                let mirror = dir.path().join("mirror");
                let platform = mirror
                    .join("registry.terraform.io/imagesync/imagesync")
                    .join(PROVIDER_VERSION)
                    .join("linux_amd64");
                std::fs::create_dir_all(&platform).unwrap();
                std::os::unix::fs::symlink(&provider, platform.join(format!("{PROVIDER}_v{PROVIDER_VERSION}"))).unwrap();
                format!(
                    "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"imagesync/imagesync\"]\n  }}\n}}\n",
                    mirror.display()
                )
            }
        };
        std::fs::write(&cli_config, rc).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        Tf {
            version,
            bin,
            dir,
            cli_config,
            install,
        }
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Writes `main.tf`: the provider block for `registries` plus `resources`.
    pub(crate) fn config(&self, registries: &[&Registry], resources: &str) {
        let insecure: Vec<String> = registries
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        self.config_with(
            &format!("insecure_registries = [{}]", insecure.join(", ")),
            resources,
        );
    }

    /// Writes `main.tf` with `provider_body` inside the provider block.
    pub(crate) fn config_with(&self, provider_body: &str, resources: &str) {
        let text = format!(
            r#"terraform {{
  required_providers {{
    imagesync = {{ source = "imagesync/imagesync" }}
  }}
}}

provider "imagesync" {{
  {provider_body}
}}

{resources}
"#
        );
        std::fs::write(self.work().join("main.tf"), text).unwrap();
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    pub(crate) async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .current_dir(self.work())
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
            .env("RUST_LOG", "info")
            .env_remove("TF_LOG")
            .env_remove("TF_PLUGIN_CACHE_DIR")
            .env_remove("TF_REATTACH_PROVIDERS")
            .env_remove("TF_DATA_DIR")
            .kill_on_drop(true);
        cmd.envs(env.iter().copied());
        match tokio::time::timeout(Duration::from_secs(300), cmd.output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => panic!("terraform {args:?}: {e}"),
            Err(_) => panic!("terraform {} {args:?} timed out", self.version),
        }
    }

    /// Runs and asserts success.
    pub(crate) async fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "terraform {} {args:?} failed:\n--- stdout\n{}\n--- stderr\n{}",
            self.version,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    pub(crate) async fn init(&self) {
        if self.install == Install::FilesystemMirror {
            self.ok(&["init", "-input=false", "-no-color"]).await;
        }
    }

    pub(crate) async fn apply(&self, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "-auto-approve", "-input=false", "-no-color"];
        args.extend_from_slice(extra);
        self.ok(&args).await
    }

    /// Plans into a file and returns each resource's actions (`terraform show -json`).
    pub(crate) async fn plan_actions(&self) -> BTreeMap<String, Vec<String>> {
        self.ok(&["plan", "-input=false", "-no-color", "-out=tfplan"])
            .await;
        let shown = self.ok(&["show", "-json", "tfplan"]).await;
        let json = json_in(&shown.stdout);
        let mut out = BTreeMap::new();
        for rc in json["resource_changes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let actions = rc["change"]["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            out.insert(rc["address"].as_str().unwrap().to_string(), actions);
        }
        out
    }

    pub(crate) async fn output(&self, name: &str) -> String {
        let out = self.ok(&["output", "-json"]).await;
        json_in(&out.stdout)[name]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Attribute values of the resource `imagesync.NAME` in the state (`state pull`:
    /// the 0.13 vendor build's `show -json` without a plan file crashes).
    pub(crate) async fn state_values(&self, address: &str) -> serde_json::Value {
        let name = address.strip_prefix("imagesync.").unwrap();
        let out = self.ok(&["state", "pull"]).await;
        let json = json_in(&out.stdout);
        json["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "imagesync" && r["name"] == name && r["mode"] == "managed")
            .unwrap_or_else(|| panic!("{address} not in state: {json}"))["instances"][0]
            ["attributes"]
            .clone()
    }
}

/// stdout and stderr (the 0.13 vendor build prints diagnostics on stdout).
pub(crate) fn combined(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The JSON document in Terraform's stdout (the 0.13 vendor build prefixes stdout).
pub(crate) fn json_in(stdout: &[u8]) -> serde_json::Value {
    let s = text(stdout);
    let start = s.find('{').unwrap_or_else(|| panic!("no JSON in: {s}"));
    serde_json::from_str(s[start..].trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

pub(crate) fn actions(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The digest the tag `repo:tag` on `reg` points at (None when absent).
pub(crate) async fn tag_digest(reg: &Registry, repo: &str, tag: &str) -> Option<String> {
    fixtures::get_manifest(reg.addr(), repo, tag)
        .await
        .map(|(_, bytes)| fixtures::sha256(&bytes))
}

pub(crate) fn spec(seed: u64) -> FixtureSpec {
    // One layer shared by every image of this test (for the shared-layer check).
    FixtureSpec {
        seed,
        layers: 2,
        layer_size: 16 * 1024,
        shared_layers: 1,
        ..FixtureSpec::default()
    }
}

pub(crate) fn resource(name: &str, source: &str, destination: &str) -> String {
    format!("resource \"imagesync\" \"{name}\" {{\n  source      = \"{source}\"\n  destination = \"{destination}\"\n}}\n")
}

pub(crate) async fn writes(reg: &Registry) -> Vec<String> {
    reg.access_log_settled()
        .await
        .into_iter()
        .filter(|e| matches!(e.method.as_str(), "PUT" | "POST" | "PATCH" | "DELETE"))
        .map(|e| format!("{} {}", e.method, e.path))
        .collect()
}

/// The scenario from the issue, on one Terraform version.
pub(crate) async fn scenario(version: &'static str) {
    let a = Registry::start().await;
    let b = Registry::start().await;
    let tf = Tf::new(version);
    let src1 = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(11)).await;
    let output = "output \"id\" {\n  value = imagesync.app.id\n}\n";
    let app = |source: &str| {
        format!(
            "{}{output}",
            resource("app", &a.reference(source), &b.reference("dst/app:v1"))
        )
    };
    tf.config(&[&a, &b], &app("src/app:v1"));
    tf.init().await;

    // Create: id is the destination repository at the multi-arch index digest.
    tf.apply(&[]).await;
    let id = tf.output("id").await;
    assert_eq!(id, format!("{}/dst/app@{}", b.addr(), src1.digest));
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src1.digest.as_str())
    );
    for child in &src1.children {
        assert_eq!(
            fixtures::manifest_status(b.addr(), "dst/app", child).await,
            200
        );
    }
    let values = tf.state_values("imagesync.app").await;
    assert_eq!(values["source_digest"], src1.digest.as_str());
    assert_eq!(values["delete_layers"], true);

    // Plan right after: no changes, and only HEAD requests for manifests.
    a.clear_access_log();
    b.clear_access_log();
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );
    for reg in [&a, &b] {
        let log = reg.access_log_settled().await;
        assert!(
            log.iter().any(|e| e.is_manifest()),
            "no manifest request seen: {log:?}"
        );
        assert!(
            log.iter()
                .filter(|e| e.is_manifest())
                .all(|e| e.method == "HEAD"),
            "plan made non-HEAD manifest requests: {log:?}"
        );
    }

    // Destination deleted out of band: the plan shows a create; apply heals.
    let del = reqwest::Client::new()
        .delete(format!(
            "http://{}/v2/dst/app/manifests/{}",
            b.addr(),
            src1.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 202);
    assert_eq!(tag_digest(&b, "dst/app", "v1").await, None);
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["create"])
    );
    tf.apply(&[]).await;
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src1.digest.as_str())
    );

    // Destination tag now points elsewhere: drift, re-synced in place.
    fixtures::push_index_with(b.addr(), "dst/app", "v1", spec(99)).await;
    assert_ne!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src1.digest.as_str())
    );
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    tf.apply(&[]).await;
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src1.digest.as_str())
    );
    assert_eq!(tf.output("id").await, id);

    // A new image pushed to the source tag: the plan shows an in-place re-sync (the
    // earlier image stays, untagged, until destroy; see `friction`).
    let src2 = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(12)).await;
    assert_ne!(src2.digest, src1.digest);
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    tf.apply(&[]).await;
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src2.digest.as_str())
    );
    let id2 = tf.output("id").await;
    assert_eq!(id2, format!("{}/dst/app@{}", b.addr(), src2.digest));
    assert_eq!(
        tf.state_values("imagesync.app").await["source_digest"],
        src2.digest.as_str()
    );

    // The source retagged to the same digest: in-place update, nothing copied.
    Target::plain(a.addr())
        .put_manifest("src/app", "v2", &src2.media_type, &src2.manifest)
        .await
        .unwrap();
    tf.config(&[&a, &b], &app("src/app:v2"));
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    b.clear_access_log();
    tf.apply(&[]).await;
    assert_eq!(
        writes(&b).await,
        Vec::<String>::new(),
        "the in-place update wrote to the destination"
    );
    assert_eq!(tf.output("id").await, id2);
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );

    // Destroy: our tag goes; another tag on the same digest and shared layers stay.
    Target::plain(b.addr())
        .put_manifest("dst/app", "keep", &src2.media_type, &src2.manifest)
        .await
        .unwrap();
    let other = fixtures::push_index_with(b.addr(), "dst/app", "other", spec(13)).await;
    let shared: Vec<&String> = src2
        .layers
        .iter()
        .filter(|l| other.layers.contains(l))
        .collect();
    assert!(!shared.is_empty(), "fixtures should share a layer");
    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
    assert_eq!(
        tag_digest(&b, "dst/app", "keep").await.as_deref(),
        Some(src2.digest.as_str())
    );
    assert_eq!(
        tag_digest(&b, "dst/app", "other").await.as_deref(),
        Some(other.digest.as_str())
    );
    for layer in shared {
        assert_eq!(fixtures::blob_status(b.addr(), "dst/app", layer).await, 200);
    }

    // Import SOURCE,DESTINATION, then a plan with no changes.
    Target::plain(b.addr())
        .put_manifest("dst/app", "imported", &src2.media_type, &src2.manifest)
        .await
        .unwrap();
    let imported = format!(
        "{}output \"id\" {{\n  value = imagesync.app.id\n}}\n",
        resource(
            "app",
            &a.reference("src/app:v2"),
            &b.reference("dst/app:imported")
        )
    );
    tf.config(&[&a, &b], &imported);
    let bad = tf
        .run(&[
            "import",
            "-input=false",
            "-no-color",
            "imagesync.app",
            "no-comma-here",
        ])
        .await;
    assert!(!bad.status.success());
    assert!(
        combined(&bad).contains("Invalid import ID"),
        "{}",
        combined(&bad)
    );
    let import_id = format!(
        "{},{}",
        a.reference("src/app:v2"),
        b.reference("dst/app:imported")
    );
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "imagesync.app",
        &import_id,
    ])
    .await;
    let values = tf.state_values("imagesync.app").await;
    assert_eq!(
        values["id"],
        format!("{}/dst/app@{}", b.addr(), src2.digest).as_str()
    );
    assert_eq!(values["source_digest"], src2.digest.as_str());
    assert_eq!(
        values["destination"],
        b.reference("dst/app:imported").as_str()
    );
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );

    // An invalid reference: an error diagnostic that names the attribute.
    let invalid = format!(
        "{imported}{}",
        resource(
            "bad",
            &format!("{}/src/App:v1", a.addr()),
            &b.reference("dst/bad:v1")
        )
    );
    tf.config(&[&a, &b], &invalid);
    let out = tf.run(&["plan", "-input=false", "-no-color"]).await;
    assert!(
        !out.status.success(),
        "plan with an invalid reference succeeded"
    );
    let err = combined(&out);
    assert!(
        err.contains("Invalid image reference in \"source\""),
        "{err}"
    );
    assert!(err.contains("in resource \"imagesync\" \"bad\""), "{err}");
    assert!(err.contains("src/App:v1"), "{err}");
}

/// 30 resources with -parallelism=10, plus one whose source is unknown at plan time.
pub(crate) async fn parallel(version: &'static str) {
    let a = Registry::start().await;
    let b = Registry::start().await;
    let tf = Tf::new(version);
    let src: Pushed = fixtures::push_index_with(a.addr(), "src/many", "v1", spec(21)).await;
    let resources = format!(
        r#"resource "imagesync" "many" {{
  count       = 30
  source      = "{}"
  destination = "{}/dst/many${{count.index}}:v1"
}}

# Its source is the id of another resource: unknown when planning the first apply.
resource "imagesync" "chained" {{
  source      = imagesync.many[0].id
  destination = "{}"
}}
"#,
        a.reference("src/many:v1"),
        b.addr(),
        b.reference("dst/chained:v1")
    );
    tf.config(&[&a, &b], &resources);
    tf.init().await;
    let planned = tf.plan_actions().await;
    assert_eq!(planned.len(), 31);
    assert!(
        planned.values().all(|a| *a == actions(&["create"])),
        "{planned:?}"
    );
    tf.apply(&["-parallelism=10"]).await;
    for i in 0..30 {
        assert_eq!(
            tag_digest(&b, &format!("dst/many{i}"), "v1")
                .await
                .as_deref(),
            Some(src.digest.as_str()),
            "dst/many{i}"
        );
    }
    assert_eq!(
        tag_digest(&b, "dst/chained", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
    let planned = tf.plan_actions().await;
    assert!(
        planned.values().all(|a| *a == actions(&["no-op"])),
        "{planned:?}"
    );
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-input=false",
        "-no-color",
        "-parallelism=10",
    ])
    .await;
    for i in 0..30 {
        assert_eq!(
            fixtures::manifest_status(b.addr(), &format!("dst/many{i}"), "v1").await,
            404
        );
    }
    // The source is never touched.
    assert_eq!(
        tag_digest(&a, "src/many", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
}

/// A TLS registry with Basic auth: `ca_file` and `registry_auth` work; with a wrong
/// password the refresh fails with an error and the resource stays in state (never "gone").
pub(crate) async fn auth_and_tls(version: &'static str) {
    let a = Registry::start().await;
    let b = Registry::start_with(RegistryOptions {
        tls: true,
        htpasswd: Some(("mirror".into(), "s3cret-pass".into())),
        ..RegistryOptions::default()
    })
    .await;
    let tf = Tf::new(version);
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(31)).await;
    let provider = |password: &str| {
        format!(
            "insecure_registries = [\"{}\"]\n  ca_file = \"{}\"\n  registry_auth {{\n    address  = \"{}\"\n    username = \"mirror\"\n    password = \"{password}\"\n  }}",
            a.addr(),
            b.ca_pem_path().unwrap().display(),
            b.addr()
        )
    };
    let resources = resource(
        "app",
        &a.reference("src/app:v1"),
        &b.reference("dst/app:v1"),
    );
    tf.config_with(&provider("s3cret-pass"), &resources);
    tf.init().await;
    tf.apply(&[]).await;
    assert_eq!(
        tf.state_values("imagesync.app").await["id"],
        format!("{}/dst/app@{}", b.addr(), src.digest).as_str()
    );
    assert_eq!(b.manifest_status("dst/app", "v1").await, 200);

    tf.config_with(&provider("wrong-pass"), &resources);
    let out = tf.run(&["plan", "-input=false", "-no-color"]).await;
    assert!(
        !out.status.success(),
        "plan with a wrong password succeeded"
    );
    let all = combined(&out);
    assert!(
        all.contains("Cannot read the destination image: authentication failed"),
        "{all}"
    );
    assert!(
        !all.contains("wrong-pass"),
        "the password leaked into the output: {all}"
    );
    // Still in state, still at the registry.
    assert_eq!(
        tf.state_values("imagesync.app").await["source_digest"],
        src.digest.as_str()
    );
    assert_eq!(b.manifest_status("dst/app", "v1").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_auth_and_tls() {
    auth_and_tls("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_auth_and_tls() {
    auth_and_tls("0.13.4").await;
}

/// Started by hand, the provider explains itself and exits.
#[test]
pub(crate) fn provider_binary_refuses_to_run_without_terraform() {
    let out = std::process::Command::new(imagesync_e2e::bin(PROVIDER))
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout (no handshake)");
    assert!(
        text(&out.stderr).contains("This binary is a plugin"),
        "{}",
        text(&out.stderr)
    );
}

/// Plain gRPC when Terraform disables plugin TLS (TF_DISABLE_PLUGIN_TLS): Terraform sends
/// no `PLUGIN_CLIENT_CERT` and the provider serves on its private Unix socket.
pub(crate) async fn without_plugin_tls(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(51)).await;
    let tf = Tf::new(version);
    tf.config(
        &[&a, &b],
        &resource(
            "app",
            &a.reference("src/app:v1"),
            &b.reference("dst/app:v1"),
        ),
    );
    tf.init().await;
    let out = tf
        .run_env(
            &["apply", "-auto-approve", "-input=false", "-no-color"],
            &[("TF_DISABLE_PLUGIN_TLS", "1"), ("TF_LOG", "debug")],
        )
        .await;
    let all = combined(&out);
    assert!(out.status.success(), "{all}");
    // The provider's own log line (Terraform shows it with TF_LOG=debug).
    let sockets: Vec<PathBuf> = all
        .lines()
        .filter(|l| l.contains("serving socket="))
        .map(|l| {
            assert!(l.contains("tls=false"), "{l}");
            let path = l.split("socket=").nth(1).unwrap();
            PathBuf::from(path.split_whitespace().next().unwrap())
        })
        .collect();
    assert!(!sockets.is_empty(), "not served on a Unix socket: {all}");
    // Terraform stops each provider process through go-plugin's Shutdown: every
    // socket directory is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for socket in &sockets {
        assert!(
            !socket.parent().unwrap().exists(),
            "left behind: {}",
            socket.display()
        );
    }
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_without_plugin_tls() {
    without_plugin_tls("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_0_3_without_plugin_tls() {
    without_plugin_tls("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_without_plugin_tls() {
    without_plugin_tls("0.13.4").await;
}

/// Started as Terraform starts it but with no client certificate (reattach/debug, old
/// clients), the provider serves on a Unix socket in a private directory (mode 0700),
/// never on a TCP port, and removes the directory when stopped.
#[test]
pub(crate) fn provider_without_client_cert_serves_on_a_private_unix_socket() {
    use std::io::BufRead as _;
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let base = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(imagesync_e2e::bin(PROVIDER))
        .env("TF_PLUGIN_MAGIC_COOKIE", imagesync_e2e_cookie())
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .env("PLUGIN_UNIX_SOCKET_DIR", base.path())
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(&fields[..3], &["1", "6", "unix"], "{line:?}");
    assert_eq!((fields[4], fields[5]), ("grpc", ""), "{line:?}");
    let socket = PathBuf::from(fields[3]);
    let dir = socket.parent().unwrap().to_path_buf();
    assert_eq!(dir.parent(), Some(base.path()), "{line:?}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket directory mode {mode:o}");
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    std::os::unix::net::UnixStream::connect(&socket).expect("the socket accepts connections");

    // SIGTERM (to this child, by its id): it stops and cleans up.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "provider did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !dir.exists(),
        "socket directory left behind: {}",
        dir.display()
    );
}

/// Terraform's magic cookie (go-plugin handshake).
fn imagesync_e2e_cookie() -> &'static str {
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"
}

/// A running `imagesync-controller` (the harness's launcher); killed on drop.
pub(crate) use imagesync_e2e::controller::ControllerProcess as Controller;

/// The ImageSync objects in `default`, as JSON.
pub(crate) fn imagesyncs(api: &ApiServer) -> Vec<serde_json::Value> {
    let out = api.kubectl(&["get", "imagesyncs", "-n", "default", "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The controller for Kubernetes-mode tests (CRD applied, re-checks every 2 s).
pub(crate) async fn kube_controller(api: &ApiServer, a: &Registry, b: &Registry) -> Controller {
    api.apply_crd(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/imagesyncs.imagesync.dev.yaml"),
    )
    .await;
    imagesync_e2e::controller::Launch::new(api.kubeconfig(), &api.dir().join("controller.log"))
        .args([
            "--insecure-registry",
            a.addr(),
            "--insecure-registry",
            b.addr(),
        ])
        .args(["--default-resync-interval", "2s"])
        .start()
}

/// Kubernetes mode against a real kube-apiserver v1.20.2 and the real controller: apply
/// creates the object and returns the controller's `id`; a deleted destination heals with
/// no Terraform run; destroy removes the object (after the finalizer) and the image.
pub(crate) async fn kubernetes_mode(version: &'static str) {
    let (api, a, b) = tokio::join!(ApiServer::start(), Registry::start(), Registry::start());
    let _controller = kube_controller(&api, &a, &b).await;
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(41)).await;
    let tf = Tf::new(version);
    tf.config_with(
        &format!(
            "kubernetes {{\n    config_path = \"{}\"\n    namespace   = \"default\"\n  }}",
            api.kubeconfig().display()
        ),
        &format!(
            "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  timeouts {{\n    create = \"2m\"\n    delete = \"2m\"\n  }}\n}}\n\noutput \"id\" {{\n  value = imagesync.app.id\n}}\n",
            a.reference("src/app:v1"),
            b.reference("dst/app:v1")
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let id = tf.output("id").await;
    assert_eq!(id, format!("{}/dst/app@{}", b.addr(), src.digest));
    let objects = imagesyncs(&api);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(
        objects[0]["spec"]["source"],
        a.reference("src/app:v1").as_str()
    );
    assert_eq!(objects[0]["status"]["id"], id.as_str());
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
    let values = tf.state_values("imagesync.app").await;
    assert_eq!(values["namespace"], "default");
    assert_eq!(values["name"], objects[0]["metadata"]["name"]);

    // The destination deleted out of band: the controller heals it, no Terraform run.
    let del = reqwest::Client::new()
        .delete(format!(
            "http://{}/v2/dst/app/manifests/{}",
            b.addr(),
            src.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while tag_digest(&b, "dst/app", "v1").await.as_deref() != Some(src.digest.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the controller did not heal the destination"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );

    // The object deleted out of band (the controller removes the image too): the refresh
    // drops it from state, the plan shows a create, and apply brings both back.
    let name = objects[0]["metadata"]["name"].as_str().unwrap().to_string();
    api.kubectl(&[
        "delete",
        "imagesync",
        &name,
        "-n",
        "default",
        "--wait=true",
        "--timeout=90s",
    ]);
    assert!(imagesyncs(&api).is_empty());
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["create"])
    );
    tf.apply(&[]).await;
    assert_eq!(imagesyncs(&api).len(), 1);
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
    assert_eq!(tf.output("id").await, id);

    // Destroy: the object goes (finalizer done) and so does the image.
    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(imagesyncs(&api).is_empty());
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
}

/// Replacements in Kubernetes mode: a new `name` forces one. With
/// `create_before_destroy` the new object is created while the old one still holds the
/// destination tag (the controller says `DestinationConflict`); the provider takes that
/// as the expected handover, the old object's destroy leaves the tag for the new one, and
/// the new one owns it (its destroy removes it). The tag is never absent. A plain
/// replacement (destroy, then create) also completes.
pub(crate) async fn kubernetes_mode_replacements(version: &'static str) {
    let (api, a, b) = tokio::join!(ApiServer::start(), Registry::start(), Registry::start());
    let _controller = kube_controller(&api, &a, &b).await;
    let src = fixtures::push_index_with(a.addr(), "src/app", "v1", spec(43)).await;
    let tf = Tf::new(version);
    let configure = |name: &str, cbd: bool| {
        let lifecycle = if cbd {
            "  lifecycle {\n    create_before_destroy = true\n  }\n"
        } else {
            ""
        };
        tf.config_with(
            &format!(
                "kubernetes {{\n    config_path = \"{}\"\n    namespace   = \"default\"\n  }}",
                api.kubeconfig().display()
            ),
            &format!(
                "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  name        = \"{name}\"\n{lifecycle}  timeouts {{\n    create = \"2m\"\n    delete = \"2m\"\n  }}\n}}\n\noutput \"id\" {{\n  value = imagesync.app.id\n}}\n",
                a.reference("src/app:v1"),
                b.reference("dst/app:v1")
            ),
        );
    };
    let names = |api: &ApiServer| -> Vec<String> {
        imagesyncs(api)
            .iter()
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    configure("app-old", true);
    tf.init().await;
    tf.apply(&[]).await;
    let id = format!("{}/dst/app@{}", b.addr(), src.digest);
    assert_eq!(tf.output("id").await, id);

    // create_before_destroy: sample the tag while the replacement runs.
    configure("app-new", true);
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let watching = watching.clone();
        let addr = b.addr().to_string();
        tokio::spawn(async move {
            let mut missing = 0;
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                if fixtures::manifest_status(&addr, "dst/app", "v1").await != 200 {
                    missing += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            missing
        })
    };
    let out = tf.apply(&[]).await;
    let text = combined(&out);
    assert!(
        text.contains("create replacement and then destroy") || text.contains("+/-"),
        "expected a replacement:\n{text}"
    );
    assert_eq!(tf.output("id").await, id);
    assert_eq!(names(&api), ["app-new"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let obj = imagesyncs(&api).pop().unwrap();
        let ready = obj["status"]["conditions"][0]["status"] == "True";
        if ready && obj["status"]["ownership"] == "Written" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "app-new did not take the tag over: {obj}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let missing = sampler.await.unwrap();
    assert_eq!(missing, 0, "the tag was absent during the replacement");
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );

    // A plain replacement: destroy (the tag goes), then create (it comes back).
    configure("app-plain", false);
    tf.apply(&[]).await;
    assert_eq!(names(&api), ["app-plain"]);
    assert_eq!(tf.output("id").await, id);
    assert_eq!(
        tag_digest(&b, "dst/app", "v1").await.as_deref(),
        Some(src.digest.as_str())
    );

    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(imagesyncs(&api).is_empty());
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", "v1").await,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_kubernetes_mode_replacements() {
    kubernetes_mode_replacements("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_kubernetes_mode() {
    kubernetes_mode("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_0_3_kubernetes_mode() {
    kubernetes_mode("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_kubernetes_mode() {
    kubernetes_mode("0.13.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_scenario() {
    scenario("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_0_3_scenario() {
    scenario("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_scenario_protocol_5() {
    scenario("0.13.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_11_4_parallel_30() {
    parallel("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_1_0_3_parallel_30() {
    parallel("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn terraform_0_13_4_parallel_30() {
    parallel("0.13.4").await;
}

/// Direct mode: adoption, the blob record and hostile timeouts (issue 12).
#[path = "terraform_ownership.rs"]
mod ownership;

/// Direct mode, issue 20: a stopped source, a moved source tag, `id` at plan time,
/// diagnostics.
#[path = "terraform_friction.rs"]
mod friction;
