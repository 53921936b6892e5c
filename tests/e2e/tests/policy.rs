//! Controller tenant safety (issue 8): the policy file, Secret rules and secret hygiene,
//! against the real kube-apiserver and registry.
//!
//! Over 600 lines because it is one module per area (the policy rules): each test is one
//! scenario against real components, and its set-up is spelled out so a failure reads
//! alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imagesync_api::ImageSync;
use imagesync_e2e::fixtures;
use imagesync_e2e::registry::{AccessEntry, Registry, RegistryOptions};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::controller::{
    cluster, controller_with_env, dockerconfig_secret, event_reasons, image_sync_yaml, ready_with,
    reason, start_controller, wait_event, wait_for, wait_gone, ControllerProc,
};

const CONTROLLER_NS: &str = "imagesync-system";
const DEPLOYMENT: &str = "imagesync-controller";

/// A policy directory laid out like a ConfigMap volume: `policy.yaml -> ..data/policy.yaml`
/// and `..data -> ..<version>`, updated by swapping the `..data` symlink atomically.
struct PolicyDir {
    dir: PathBuf,
    version: u32,
}

impl PolicyDir {
    fn new(parent: &Path, text: &str) -> PolicyDir {
        let dir = parent.join("policy");
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = PolicyDir { dir, version: 0 };
        p.write(text);
        std::os::unix::fs::symlink("..data/policy.yaml", p.path()).unwrap();
        p
    }

    fn path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    fn arg(&self) -> String {
        self.path().display().to_string()
    }

    /// What the kubelet does when the ConfigMap changes.
    fn write(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("policy.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// A Docker config directory for the controller's own ("ambient") credentials.
fn ambient_docker_config(parent: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    let dir = parent.join("ambient-docker");
    std::fs::create_dir_all(&dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

fn is_write(e: &AccessEntry) -> bool {
    matches!(e.method.as_str(), "PUT" | "POST" | "PATCH" | "DELETE")
}

/// Requests of the registry log touching repository `repo`.
fn touching<'a>(log: &'a [AccessEntry], repo: &str) -> Vec<&'a AccessEntry> {
    let prefix = format!("/v2/{repo}/");
    log.iter().filter(|e| e.path.starts_with(&prefix)).collect()
}

fn denied_with(obj: &ImageSync, needle: &str) -> bool {
    obj.ready_condition().is_some_and(|c| {
        c.status == "False" && c.reason == "PolicyDenied" && c.message.contains(needle)
    })
}

/// Every Event in `namespaces` (reason, note).
async fn all_events(client: &Client, namespaces: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ns in namespaces {
        let api: Api<Event> = Api::namespaced(client.clone(), ns);
        for e in api.list(&ListParams::default()).await.unwrap().items {
            out.push((e.reason.unwrap_or_default(), e.note.unwrap_or_default()));
        }
    }
    out
}

/// No secret (nor its base64 forms) in the controller log, any Event or any ImageSync
/// (status included) of `namespaces`.
async fn assert_no_secrets(
    client: &Client,
    controller: &ControllerProc,
    namespaces: &[&str],
    secrets: &[&str],
) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles: Vec<String> = Vec::new();
    for s in secrets {
        needles.push(s.to_string());
        needles.push(b64.encode(s));
    }
    let log = controller.log_text();
    assert!(
        log.lines().count() > 50,
        "expected a full debug log, got:\n{log}"
    );
    let events = all_events(client, namespaces).await;
    assert!(!events.is_empty());
    let mut objects = String::new();
    for ns in namespaces {
        let api: Api<ImageSync> = Api::namespaced(client.clone(), ns);
        for o in api.list(&ListParams::default()).await.unwrap().items {
            objects.push_str(&serde_json::to_string(&o).unwrap());
        }
    }
    for n in &needles {
        for (i, line) in log.lines().enumerate() {
            assert!(!line.contains(n.as_str()), "secret in log line {i}: {line}");
        }
        for (reason, note) in &events {
            assert!(
                !note.contains(n.as_str()),
                "secret in Event {reason}: {note}"
            );
        }
        assert!(!objects.contains(n.as_str()), "secret in an ImageSync");
    }
    // Credential pairs too (user:password, as in Basic auth and docker configs).
    assert!(
        !log.contains("Authorization: Basic")
            && !log.to_lowercase().contains("authorization\": \"basic")
    );
}

fn teams_policy(src: &str, private: &str, team_a_destinations: &str) -> String {
    format!(
        r#"# Team A mirrors into its own area with the controller's credentials.
rules:
  - name: team-a
    namespaces: [team-a]
    sources: ["{src}/src/**"]
    destinations: [{team_a_destinations}]
    ambientCredentials: {{source: true, destination: true}}
  # Team B may push only with its own Secret.
  - name: team-b
    namespaces: [team-b]
    sources: ["{src}/src/**"]
    destinations: ["{private}/dst/b/*"]
    ambientCredentials: {{source: true, destination: false}}
  - name: quarantine
    action: Deny
    namespaceSelector:
      matchLabels: {{imagesync.dev/quarantine: "true"}}
    sources: ["**"]
    destinations: ["**"]
  - name: team-c
    namespaces: ["team-c*"]
    sources: ["**"]
    destinations: ["**"]
"#
    )
}

/// Two teams with different rules; a denied object stays denied and never reaches the
/// registry, not even on deletion; a synced object the policy later denies is deleted
/// without a registry request; nothing secret appears in logs (debug), Events or status.
#[tokio::test]
pub(crate) async fn teams_get_only_what_their_rule_allows_and_denied_objects_never_touch_the_registry(
) {
    const USER: &str = "mirror";
    const PASS: &str = "Pa55-policy-e2e-8c1f";
    let (api, src, private) = tokio::join!(
        cluster(),
        Registry::start(),
        Registry::start_with(RegistryOptions {
            htpasswd: Some((USER.into(), PASS.into())),
            ..RegistryOptions::default()
        })
    );
    let client = api.client().await;
    for ns in ["team-a", "team-b", "team-d", CONTROLLER_NS] {
        api.create_namespace(ns).await;
    }
    api.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-c-jail\n  labels:\n    imagesync.dev/quarantine: \"true\"\n",
    );
    let image = fixtures::push_index(src.addr(), "src/app", "1", 81).await;
    let mut policy = PolicyDir::new(
        api.dir(),
        &teams_policy(
            src.addr(),
            private.addr(),
            &format!("\"{}/dst/a/*\"", private.addr()),
        ),
    );
    let docker = ambient_docker_config(api.dir(), private.addr(), USER, PASS);
    let policy_arg = policy.arg();
    let controller = controller_with_env(
        api.kubeconfig(),
        api.dir(),
        "teams",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            private.addr(),
            "--policy-file",
            &policy_arg,
            "--policy-reload-interval",
            "1s",
            "--deployment-name",
            DEPLOYMENT,
        ],
        &[
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("POD_NAMESPACE", CONTROLLER_NS),
            ("RUST_LOG", "debug"),
        ],
    );
    let src_ref = src.reference("src/app:1");
    let obj = |ns: &str, name: &str, dst: &str, extra: &str| {
        image_sync_yaml(ns, name, &src_ref, &private.reference(dst), extra)
    };
    api.apply_yaml(&dockerconfig_secret(
        "team-b",
        "push",
        private.addr(),
        USER,
        PASS,
    ));
    api.apply_yaml(&obj("team-a", "allowed", "dst/a/app:1", ""));
    api.apply_yaml(&obj("team-a", "intrude", "dst/b/intrude:1", ""));
    api.apply_yaml(&obj("team-b", "nosecret", "dst/b/app:1", ""));
    api.apply_yaml(&obj(
        "team-b",
        "withsecret",
        "dst/b/ok:1",
        "destinationSecretRef: {name: push}",
    ));
    api.apply_yaml(&obj("team-c-jail", "jailed", "dst/c/app:1", ""));
    api.apply_yaml(&obj("team-d", "norule", "dst/d/app:1", ""));

    let api_a: Api<ImageSync> = Api::namespaced(client.clone(), "team-a");
    let api_b: Api<ImageSync> = Api::namespaced(client.clone(), "team-b");
    let api_c: Api<ImageSync> = Api::namespaced(client.clone(), "team-c-jail");
    let api_d: Api<ImageSync> = Api::namespaced(client.clone(), "team-d");
    let t = Duration::from_secs(60);
    let c = Some(&controller);
    // Team A: its own area with the controller's credentials.
    wait_for(&api_a, "allowed", t, "team A Ready", c, |o| {
        ready_with(o, &image.digest)
    })
    .await;
    // Team B: only with its own Secret; without it the controller's credentials are
    // withheld, so the registry answers 401.
    wait_for(&api_b, "withsecret", t, "team B Ready", c, |o| {
        ready_with(o, &image.digest)
    })
    .await;
    wait_for(&api_b, "nosecret", t, "team B Unauthorized", c, |o| {
        reason(o).as_deref() == Some("Unauthorized")
    })
    .await;
    // Denied: another team's area, a quarantined namespace, a namespace without a rule.
    let intrude = wait_for(&api_a, "intrude", t, "PolicyDenied", c, |o| {
        denied_with(
            o,
            "rule \"team-a\" matches the namespace but not the destination",
        )
    })
    .await;
    assert!(
        intrude
            .ready_condition()
            .unwrap()
            .message
            .contains(&format!("{}/dst/b/intrude:1", private.addr())),
        "{:?}",
        intrude.ready_condition()
    );
    wait_for(&api_c, "jailed", t, "denied by rule", c, |o| {
        denied_with(o, "denied by policy rule \"quarantine\"")
    })
    .await;
    wait_for(&api_d, "norule", t, "no rule", c, |o| {
        denied_with(o, "no rule matches the namespace")
    })
    .await;
    let note = wait_event(&client, "team-a", "intrude", "PolicyDenied").await;
    assert!(note.contains("team-a"), "{note}");
    wait_event(&client, "team-d", "norule", "PolicyDenied").await;

    // They stay denied (several resync intervals later), and nothing reached the
    // registry for them: no request at all for denied objects, no write for team B's
    // object without a Secret, and the tags are absent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (api, name) in [(&api_a, "intrude"), (&api_c, "jailed"), (&api_d, "norule")] {
        let o = api.get(name).await.unwrap();
        assert_eq!(reason(&o).as_deref(), Some("PolicyDenied"), "{name}");
        assert!(o.status.as_ref().unwrap().destination_digest.is_none());
    }
    let log = private.access_log_settled().await;
    for repo in ["dst/b/intrude", "dst/c/app", "dst/d/app"] {
        assert_eq!(touching(&log, repo), Vec::<&AccessEntry>::new(), "{repo}");
    }
    let nosecret: Vec<_> = touching(&log, "dst/b/app")
        .into_iter()
        .filter(|e| is_write(e) || e.status != 401)
        .collect();
    assert!(nosecret.is_empty(), "team B without Secret: {nosecret:?}");
    assert!(
        !touching(&log, "dst/b/app").is_empty(),
        "team B's object was tried (and refused by the registry)"
    );
    for (repo, tag) in [
        ("dst/b/intrude", "1"),
        ("dst/c/app", "1"),
        ("dst/d/app", "1"),
        ("dst/b/app", "1"),
    ] {
        assert_eq!(private.manifest_status(repo, tag).await, 404, "{repo}");
    }
    assert_eq!(private.manifest_status("dst/b/ok", "1").await, 200);
    assert_eq!(private.manifest_status("dst/a/app", "1").await, 200);

    // Deleting denied objects makes no registry request.
    private.clear_access_log();
    api.kubectl(&["delete", "isync", "intrude", "-n", "team-a", "--wait=false"]);
    api.kubectl(&[
        "delete",
        "isync",
        "jailed",
        "-n",
        "team-c-jail",
        "--wait=false",
    ]);
    wait_gone(&api_a, "intrude", Duration::from_secs(20), &controller).await;
    wait_gone(&api_c, "jailed", Duration::from_secs(20), &controller).await;
    let log = private.access_log_settled().await;
    for repo in ["dst/b/intrude", "dst/c/app"] {
        assert_eq!(touching(&log, repo), Vec::<&AccessEntry>::new(), "{repo}");
    }

    // The policy changes (no restart): team A's area moves. The synced object is denied
    // within a bound (reload every 1 s + an immediate re-evaluation), and deleting it
    // then leaves its tag in place without any registry request.
    policy.write(&teams_policy(
        src.addr(),
        private.addr(),
        &format!("\"{}/dst/a/new/*\"", private.addr()),
    ));
    let started = Instant::now();
    wait_for(
        &api_a,
        "allowed",
        Duration::from_secs(15),
        "denied after the policy change",
        c,
        |o| denied_with(o, "not the destination"),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(controller.metric("imagesync_policy_generation").await >= 2.0);
    private.clear_access_log();
    api.kubectl(&["delete", "isync", "allowed", "-n", "team-a", "--wait=false"]);
    wait_gone(&api_a, "allowed", Duration::from_secs(20), &controller).await;
    let log = private.access_log_settled().await;
    assert_eq!(touching(&log, "dst/a/app"), Vec::<&AccessEntry>::new());
    assert_eq!(private.manifest_status("dst/a/app", "1").await, 200);
    let events = event_reasons(&client, "team-a", "allowed").await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "PolicyDenied" && n.contains("app:1 left in place")),
        "{events:?}"
    );
    // An allowed object still cleans up on deletion.
    api.kubectl(&[
        "delete",
        "isync",
        "withsecret",
        "-n",
        "team-b",
        "--wait=false",
    ]);
    wait_gone(&api_b, "withsecret", Duration::from_secs(30), &controller).await;
    assert_eq!(private.manifest_status("dst/b/ok", "1").await, 404);

    // Secret hygiene over the whole run (log level debug).
    assert_no_secrets(
        &client,
        &controller,
        &["team-a", "team-b", "team-c-jail", "team-d", CONTROLLER_NS],
        &[PASS, &format!("{USER}:{PASS}")],
    )
    .await;
}

/// A rewritten policy applies without a restart; an invalid one keeps the previous policy
/// and is reported in the log, a metric and a Warning Event on the controller's
/// Deployment; an invalid policy at startup stops the controller with a clear error.
#[tokio::test]
pub(crate) async fn policy_reloads_without_restart_and_an_invalid_policy_keeps_the_last_good_one() {
    let (api, reg) = tokio::join!(cluster(), Registry::start());
    let client = api.client().await;
    api.create_namespace("team-a").await;
    api.create_namespace(CONTROLLER_NS).await;
    let image = fixtures::push_index(reg.addr(), "src/app", "1", 82).await;
    let rule = |dst: &str| {
        format!(
            "rules:\n  - name: team-a\n    namespaces: [team-a]\n    sources: [\"{r}/src/**\"]\n    destinations: [\"{r}/{dst}\"]\n",
            r = reg.addr()
        )
    };
    let mut policy = PolicyDir::new(api.dir(), &rule("dst/one/*"));
    let policy_arg = policy.arg();
    let controller = controller_with_env(
        api.kubeconfig(),
        api.dir(),
        "reload",
        &[
            "--insecure-registry",
            reg.addr(),
            "--policy-file",
            &policy_arg,
            "--policy-reload-interval",
            "1s",
            "--deployment-name",
            DEPLOYMENT,
        ],
        &[("POD_NAMESPACE", CONTROLLER_NS)],
    );
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "team-a");
    let c = Some(&controller);
    let src_ref = reg.reference("src/app:1");
    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "two",
        &src_ref,
        &reg.reference("dst/two/app:1"),
        "resyncInterval: 1h",
    ));
    wait_for(&isyncs, "two", Duration::from_secs(40), "denied", c, |o| {
        denied_with(o, "not the destination")
    })
    .await;
    assert_eq!(controller.metric("imagesync_policy_generation").await, 1.0);

    // Allowed by the rewritten file: synced without a restart, well before the object's
    // own 1 h resync (the new policy re-evaluates every object).
    policy.write(&rule("dst/two/*"));
    let started = Instant::now();
    wait_for(
        &isyncs,
        "two",
        Duration::from_secs(20),
        "Ready after the policy change",
        c,
        |o| ready_with(o, &image.digest),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(controller.metric("imagesync_policy_generation").await, 2.0);
    let (_, metrics) = controller.get("/metrics").await.unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("imagesync_policy_info{"))
            .count(),
        1,
        "{metrics}"
    );

    // A syntax error: the last good policy stays (metric, Event, log).
    policy.write("rules: [ {name: broken, namespaces: [team-a]\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while controller
        .metric("imagesync_policy_reload_errors_total")
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", controller.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let note = wait_event(&client, CONTROLLER_NS, DEPLOYMENT, "PolicyInvalid").await;
    assert!(
        note.contains("policy is not valid") && note.contains("keeping policy generation 2"),
        "{note}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), CONTROLLER_NS);
    let ev = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("PolicyInvalid"))
        .unwrap();
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let regarding = ev.regarding.unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Deployment"));
    assert_eq!(regarding.api_version.as_deref(), Some("apps/v1"));
    let log = controller.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("policy reload failed")),
        "{log}"
    );
    assert_eq!(controller.metric("imagesync_policy_generation").await, 2.0);
    // Still generation 2: a new object to dst/two syncs, one to dst/one is denied.
    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "two-b",
        &src_ref,
        &reg.reference("dst/two/b:1"),
        "",
    ));
    api.apply_yaml(&image_sync_yaml(
        "team-a",
        "one",
        &src_ref,
        &reg.reference("dst/one/app:1"),
        "",
    ));
    wait_for(&isyncs, "two-b", Duration::from_secs(30), "Ready", c, |o| {
        ready_with(o, &image.digest)
    })
    .await;
    wait_for(&isyncs, "one", Duration::from_secs(30), "denied", c, |o| {
        denied_with(o, "not the destination")
    })
    .await;
    // The same bad content is reported once, not every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        controller
            .metric("imagesync_policy_reload_errors_total")
            .await,
        1.0
    );
    // A valid but wrong policy (a rule without destinations) is refused too.
    policy.write("rules:\n  - name: x\n    namespaces: [team-a]\n    sources: ['**']\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    while controller
        .metric("imagesync_policy_reload_errors_total")
        .await
        < 2.0
    {
        assert!(Instant::now() < deadline, "{}", controller.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(controller.metric("imagesync_policy_generation").await, 2.0);

    // An invalid policy at startup: the controller refuses to start.
    let bad = api.dir().join("bad-policy.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: x\n    namespaces: [a]\n    sources: ['[']\n    destinations: ['**']\n",
    )
    .unwrap();
    let refused = start_controller(
        api.kubeconfig(),
        api.dir(),
        "bad-policy",
        &["--policy-file", bad.to_str().unwrap()],
    );
    wait_exit_failure(
        refused,
        &["--policy-file", "policy rule \"x\": sources: pattern \"[\""],
    )
    .await;
    let missing = start_controller(
        api.kubeconfig(),
        api.dir(),
        "missing-policy",
        &["--policy-file", "/nonexistent/policy.yaml"],
    );
    wait_exit_failure(missing, &["reading policy file /nonexistent/policy.yaml"]).await;
}

/// Waits (20 s at most) for `proc` to exit unsuccessfully with every `needle` in its log.
async fn wait_exit_failure(proc: ControllerProc, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = proc.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let text = proc.log_text();
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
}

/// Secret references resolve only in the object's own namespace, only docker config
/// Secret types are used (the legacy `kubernetes.io/dockercfg` included), and the
/// controller's own credentials are not a fallback when the policy withholds them.
#[tokio::test]
pub(crate) async fn secrets_must_be_docker_config_types_from_the_objects_own_namespace() {
    const USER: &str = "pusher";
    const PASS: &str = "Secr3t-types-e2e-55aa";
    const TOKEN_PASS: &str = "T0ken-user-pass-e2e-77bb";
    let (api, src, private, tokens) = tokio::join!(
        cluster(),
        Registry::start(),
        Registry::start_with(RegistryOptions {
            htpasswd: Some((USER.into(), PASS.into())),
            ..RegistryOptions::default()
        }),
        // Bearer tokens from a token server, logged into with an OAuth2 refresh token.
        Registry::start_with(RegistryOptions {
            token_auth: true,
            htpasswd: Some((USER.into(), TOKEN_PASS.into())),
            ..RegistryOptions::default()
        })
    );
    let client = api.client().await;
    for ns in ["team-a", "team-b"] {
        api.create_namespace(ns).await;
    }
    let image = fixtures::push_index(src.addr(), "src/app", "1", 83).await;
    let policy = PolicyDir::new(
        api.dir(),
        "rules:\n  - name: everyone\n    namespaces: ['*']\n    sources: ['**']\n    destinations: ['**']\n",
    );
    let docker = ambient_docker_config(api.dir(), private.addr(), USER, PASS);
    let policy_arg = policy.arg();
    let controller = controller_with_env(
        api.kubeconfig(),
        api.dir(),
        "secrets",
        &[
            "--insecure-registry",
            src.addr(),
            "--insecure-registry",
            private.addr(),
            "--insecure-registry",
            tokens.addr(),
            "--policy-file",
            &policy_arg,
        ],
        &[
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = b64.encode(format!("{USER}:{PASS}"));
    // The right credentials, but in an Opaque Secret.
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: opaque\n  namespace: team-b\ntype: Opaque\ndata:\n  .dockerconfigjson: {}\n",
        b64.encode(format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, private.addr()))
    ));
    // The legacy format (`.dockercfg`: the auths map alone).
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: legacy\n  namespace: team-b\ntype: kubernetes.io/dockercfg\ndata:\n  .dockercfg: {}\n",
        b64.encode(format!(r#"{{"{}":{{"auth":"{auth}"}}}}"#, private.addr()))
    ));
    // An identity token (the registry's token server exchanges it for JWTs).
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n  namespace: team-b\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        b64.encode(
            serde_json::json!({"auths": {tokens.addr(): {"auth": b64.encode("<token>:"),
                "identitytoken": imagesync_e2e::token::REFRESH_TOKEN}}})
            .to_string()
        )
    ));
    // A valid Secret, but in team A's namespace.
    api.apply_yaml(&dockerconfig_secret(
        "team-a",
        "team-a-push",
        private.addr(),
        USER,
        PASS,
    ));
    let src_ref = src.reference("src/app:1");
    let obj = |name: &str, dst: &str, secret: &str| {
        image_sync_yaml(
            "team-b",
            name,
            &src_ref,
            &private.reference(dst),
            &format!("destinationSecretRef: {{name: {secret}}}"),
        )
    };
    api.apply_yaml(&obj("opaque", "dst/opaque:1", "opaque"));
    api.apply_yaml(&obj("elsewhere", "dst/elsewhere:1", "team-a-push"));
    api.apply_yaml(&obj("legacy", "dst/legacy:1", "legacy"));
    api.apply_yaml(&image_sync_yaml(
        "team-b",
        "tokens",
        &src_ref,
        &tokens.reference("dst/tokens:1"),
        "destinationSecretRef: {name: token}",
    ));
    let isyncs: Api<ImageSync> = Api::namespaced(client.clone(), "team-b");
    let c = Some(&controller);
    let t = Duration::from_secs(60);
    let o = wait_for(&isyncs, "opaque", t, "SecretTypeUnsupported", c, |o| {
        reason(o).as_deref() == Some("SecretTypeUnsupported")
    })
    .await;
    let msg = &o.ready_condition().unwrap().message;
    assert!(
        msg.contains("team-b/opaque") && msg.contains("type Opaque"),
        "{msg}"
    );
    let o = wait_for(&isyncs, "elsewhere", t, "InvalidSecret", c, |o| {
        reason(o).as_deref() == Some("InvalidSecret")
    })
    .await;
    let msg = &o.ready_condition().unwrap().message;
    assert!(
        msg.contains("team-b/team-a-push") && msg.contains("not found"),
        "{msg}"
    );
    wait_for(
        &isyncs,
        "legacy",
        t,
        "Ready with a dockercfg Secret",
        c,
        |o| ready_with(o, &image.digest),
    )
    .await;
    wait_for(
        &isyncs,
        "tokens",
        t,
        "Ready with an identity token",
        c,
        |o| ready_with(o, &image.digest),
    )
    .await;
    let issued = tokens.token_server().unwrap().requests();
    assert!(
        issued
            .iter()
            .any(|r| r.issued && r.user.as_deref() == Some(USER)),
        "{issued:?}"
    );
    wait_event(&client, "team-b", "opaque", "SecretTypeUnsupported").await;
    // Neither the other namespace's Secret nor the controller's own credentials were
    // used: nothing was written.
    for repo in ["dst/opaque", "dst/elsewhere"] {
        assert_eq!(private.manifest_status(repo, "1").await, 404, "{repo}");
    }
    let log = private.access_log_settled().await;
    for repo in ["dst/opaque", "dst/elsewhere"] {
        let writes: Vec<_> = touching(&log, repo)
            .into_iter()
            .filter(|e| is_write(e))
            .collect();
        assert!(writes.is_empty(), "{repo}: {writes:?}");
    }
    assert_no_secrets(
        &client,
        &controller,
        &["team-a", "team-b"],
        &[
            PASS,
            &format!("{USER}:{PASS}"),
            TOKEN_PASS,
            imagesync_e2e::token::REFRESH_TOKEN,
            // Every JWT (the registry's bearer tokens) starts with `{"` in base64url.
            "eyJ",
        ],
    )
    .await;
}

/// Issue 12, item 3, on the real controller: a source registry denied by its canonical
/// name stays denied in every other spelling (case, trailing dot, zero-padded port,
/// `localhost` in capitals), and numeric IPv4 shorthand is an invalid reference. None of
/// these objects sends a single request to the registry, while an allowed object next to
/// them syncs.
#[tokio::test]
pub(crate) async fn every_spelling_of_a_denied_registry_is_denied_and_never_contacted() {
    let (api, denied, dst) = tokio::join!(cluster(), Registry::start(), Registry::start());
    let client = api.client().await;
    api.create_namespace("spell").await;
    let image = fixtures::push_image(
        denied.addr(),
        "src/app",
        "1",
        fixtures::FixtureSpec::seeded(192),
    )
    .await;
    let port = denied.addr().rsplit_once(':').unwrap().1.to_string();
    denied.access_log_settled().await;
    denied.clear_access_log();
    let policy = format!(
        r#"
rules:
  - {{name: no-denied, action: Deny, namespaces: ["*"], sources: ["127.0.0.1:{port}/**", "localhost:{port}/**"], destinations: ["**"]}}
  - {{name: rest, namespaces: ["*"], sources: ["**"], destinations: ["**"], ambientCredentials: {{source: true, destination: true}}}}
"#
    );
    let policy = PolicyDir::new(api.dir(), &policy);
    let policy_arg = policy.arg();
    let insecure: Vec<String> = [
        denied.addr().to_string(),
        dst.addr().to_string(),
        format!("localhost:{port}"),
    ]
    .into_iter()
    .collect();
    let mut args = vec!["--policy-file", policy_arg.as_str()];
    for i in &insecure {
        args.extend(["--insecure-registry", i.as_str()]);
    }
    let controller = start_controller(api.kubeconfig(), api.dir(), "spellings", &args);
    let denied_spellings = [
        format!("127.0.0.1.:{port}/src/app:1"),
        format!("127.0.0.1:0{port}/src/app:1"),
        format!("LOCALHOST:{port}/src/app:1"),
        format!("Localhost.:{port}/src/app:1"),
    ];
    let invalid_spellings = [
        format!("127.1:{port}/src/app:1"),
        format!("2130706433:{port}/src/app:1"),
        format!("0x7f.0.0.1:{port}/src/app:1"),
    ];
    let all: Vec<&String> = denied_spellings.iter().chain(&invalid_spellings).collect();
    for (i, src) in all.iter().enumerate() {
        api.apply_yaml(&image_sync_yaml(
            "spell",
            &format!("s{i}"),
            src,
            &dst.reference(&format!("dst/s{i}:1")),
            "",
        ));
    }
    // The control: the same image, allowed, from the destination registry's own copy.
    fixtures::push_image(
        dst.addr(),
        "src/app",
        "1",
        fixtures::FixtureSpec::seeded(192),
    )
    .await;
    api.apply_yaml(&image_sync_yaml(
        "spell",
        "allowed",
        &dst.reference("src/app:1"),
        &dst.reference("dst/allowed:1"),
        "",
    ));
    let objs: Api<ImageSync> = Api::namespaced(client.clone(), "spell");
    let t = Duration::from_secs(60);
    let c = Some(&controller);
    wait_for(&objs, "allowed", t, "the allowed object syncs", c, |o| {
        ready_with(o, &image.digest)
    })
    .await;
    for (i, src) in all.iter().enumerate() {
        let want = if i < denied_spellings.len() {
            "PolicyDenied"
        } else {
            "InvalidReference"
        };
        let o = wait_for(&objs, &format!("s{i}"), t, want, c, |o| {
            reason(o).as_deref() == Some(want)
        })
        .await;
        assert!(
            o.status.as_ref().unwrap().destination_digest.is_none(),
            "{src}"
        );
    }
    let log = denied.access_log_settled().await;
    assert!(log.is_empty(), "the denied registry was contacted: {log:?}");
    for i in 0..all.len() {
        assert_eq!(dst.manifest_status(&format!("dst/s{i}"), "1").await, 404);
    }
}
