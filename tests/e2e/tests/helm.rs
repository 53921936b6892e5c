//! End-to-end tests: the Helm chart in `charts/imagesync`, driven by the real Helm library
//! (PyPI `helm-python-sdk`, Helm v4's Go SDK) through `tests/e2e/helm/helmctl.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const RELEASE: &str = "isync";
const RELEASE_NS: &str = "imagesync-system";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/imagesync")
}

/// A failed `helmctl.py` run: its exit code (3 = values rejected, 4 = other Helm error) and
/// stderr.
#[derive(Debug)]
struct HelmFailure {
    code: Option<i32>,
    stderr: String,
}

/// Runs `helmctl.py SUBCOMMAND ARGS...` and parses its JSON output.
fn helmctl(args: &[&str]) -> Result<Value, HelmFailure> {
    let python = std::env::var("IMAGESYNC_E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repo_root().join("tests/e2e/helm/helmctl.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(HelmFailure {
            code: out.status.code(),
            stderr,
        });
    }
    Ok(serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("helmctl {args:?} printed no JSON ({e}); stderr: {stderr}")))
}

fn chart_arg() -> String {
    chart_dir().display().to_string()
}

/// Rendered chart: the objects (with `__template`), the NOTES and the chart's CRDs.
struct Rendered {
    objects: Vec<Value>,
    notes: String,
    crds: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {kind}, got {}",
            found.len()
        );
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name} in {:?}", self.kinds()))
    }

    fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        kinds.sort();
        kinds
    }

    fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    fn args(&self) -> Vec<String> {
        self.container()["args"]
            .as_array()
            .expect("container args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_owned())
            .collect()
    }
}

fn render(values: Value) -> Rendered {
    let values = values.to_string();
    let out = helmctl(&[
        "render",
        &chart_arg(),
        "--name",
        RELEASE,
        "--namespace",
        RELEASE_NS,
        "--values-json",
        &values,
    ])
    .unwrap_or_else(|f| panic!("render {values} failed: {f:?}"));
    let list = |key: &str| out[key].as_array().cloned().unwrap_or_default();
    Rendered {
        objects: list("objects"),
        notes: out["notes"].as_str().unwrap_or_default().to_owned(),
        crds: list("crds"),
    }
}

/// The rules the controller needs in the watched scope, exactly.
fn controller_rules() -> Value {
    json!([
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncs"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncs/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncs/finalizers"],
         "verbs": ["update"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ])
}

fn lease_rules() -> Value {
    json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "create", "update"]}])
}

const FULLNAME: &str = "isync-imagesync";

/// The hardening every variant must keep.
fn assert_hardened(r: &Rendered) {
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let c = r.container();
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "resources.{kind}.{res} missing: {c}"
            );
        }
    }
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    // The read-only root filesystem gets a writable /tmp and nothing else writable.
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"));
    assert!(
        mounts
            .iter()
            .all(|m| m["mountPath"] == "/tmp" || m["readOnly"] == true),
        "{mounts:?}"
    );
}

// === lint and render ===

#[test]
fn chart_lints_cleanly_in_strict_mode_for_every_variant() {
    for values in [
        json!({}),
        json!({"watchNamespace": "team-a"}),
        json!({"replicas": 2}),
        json!({"metrics": {"serviceMonitor": {"enabled": true}}}),
        json!({"caBundle": {"configMapName": "registry-ca"}, "insecureRegistries": ["127.0.0.1:5000"]}),
    ] {
        let report = helmctl(&[
            "lint",
            &chart_arg(),
            "--values-json",
            &values.to_string(),
            "--kube-version",
            "v1.20.2",
        ])
        .unwrap_or_else(|f| panic!("lint {values} failed: {f:?}"));
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(
            report["errors"],
            json!([]),
            "lint errors for {values}: {report}"
        );
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            serious.is_empty(),
            "lint warnings/errors for {values}: {serious:?}"
        );
    }
}

#[test]
fn default_render_is_hardened_and_cluster_scoped_with_exact_rbac() {
    let r = render(json!({}));
    assert_eq!(
        r.kinds(),
        [
            "ClusterRole/isync-imagesync",
            "ClusterRoleBinding/isync-imagesync",
            "Deployment/isync-imagesync",
            "Service/isync-imagesync-metrics",
            "ServiceAccount/isync-imagesync",
        ]
    );
    assert_hardened(&r);
    assert_eq!(
        r.args(),
        [
            "--concurrency=4",
            "--metrics-addr=0.0.0.0:8080",
            "--log-format=json",
            "--default-resync-interval=5m"
        ]
    );
    let deploy = r.one("Deployment");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(deploy["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(
        r.container()["image"],
        "ghcr.io/imagesync/imagesync-controller:0.1.0"
    );

    let role = r.one("ClusterRole");
    assert_eq!(role["rules"], controller_rules());
    let binding = r.one("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}])
    );
    assert!(
        r.all("Role").is_empty(),
        "no lease Role without leader election"
    );

    let svc = r.one("Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"],
        "the metrics Service selects the controller Pods"
    );
    assert_eq!(r.one("ServiceAccount")["metadata"].get("annotations"), None);
    assert!(
        r.notes.contains("kind: ImageSync"),
        "NOTES show a first ImageSync: {}",
        r.notes
    );
    assert!(
        r.notes.contains("apiVersion: imagesync.dev/v1alpha1"),
        "{}",
        r.notes
    );

    assert_eq!(r.crds.len(), 1, "the chart ships the ImageSync CRD");
    assert_eq!(r.crds[0]["metadata"]["name"], "imagesyncs.imagesync.dev");
}

#[test]
fn single_namespace_variant_grants_a_role_in_the_watched_namespace_only() {
    let r = render(json!({"watchNamespace": "team-a"}));
    assert!(
        r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty(),
        "{:?}",
        r.kinds()
    );
    let role = r.named("Role", FULLNAME);
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert_eq!(role["rules"], controller_rules());
    let binding = r.named("RoleBinding", FULLNAME);
    assert_eq!(binding["metadata"]["namespace"], "team-a");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}])
    );
    assert_hardened(&r);
    assert_eq!(r.args()[0], "--namespace=team-a");
    assert!(r.notes.contains("\"team-a\" only"), "{}", r.notes);
}

#[test]
fn two_replicas_turn_on_leader_election_with_a_lease_role_in_the_release_namespace() {
    let r = render(json!({"replicas": 2}));
    assert_hardened(&r);
    let deploy = r.one("Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let args = r.args();
    for want in [
        "--leader-elect",
        "--leader-election-namespace=imagesync-system",
        "--lease-name=isync-imagesync",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    let lease_role = r.named("Role", "isync-imagesync-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(lease_role["rules"], lease_rules());
    let lease_binding = r.named("RoleBinding", "isync-imagesync-leader-election");
    assert_eq!(lease_binding["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(
        lease_binding["roleRef"]["name"],
        "isync-imagesync-leader-election"
    );
    // Watching stays cluster-wide, with exactly the same rules.
    assert_eq!(r.one("ClusterRole")["rules"], controller_rules());

    // One replica with leader election asked for explicitly behaves the same.
    let one = render(json!({"leaderElection": {"enabled": true, "leaseName": "my-lease"}}));
    assert!(
        one.args().iter().any(|a| a == "--lease-name=my-lease"),
        "{:?}",
        one.args()
    );
    assert_eq!(
        one.named("Role", "isync-imagesync-leader-election")["rules"],
        lease_rules()
    );
}

#[test]
fn service_monitor_variant_scrapes_the_metrics_service() {
    let r = render(
        json!({"metrics": {"serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prom"}}}}),
    );
    assert_hardened(&r);
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}])
    );
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        r.one("Service")["spec"]["selector"]
    );
    assert_eq!(
        sm["spec"]["namespaceSelector"],
        json!({"matchNames": [RELEASE_NS]})
    );
}

#[test]
fn ca_bundle_insecure_registries_and_identity_annotations_reach_the_pod() {
    let r = render(json!({
        "caBundle": {"configMapName": "registry-ca", "key": "bundle.pem"},
        "insecureRegistries": ["127.0.0.1:5000", "mirror.local:8443"],
        "concurrency": 16,
        "logFormat": "text",
        "defaultResyncInterval": "90s",
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "mirror@p.iam.gserviceaccount.com"}},
    }));
    assert_hardened(&r);
    assert_eq!(
        r.args(),
        [
            "--concurrency=16",
            "--insecure-registry=127.0.0.1:5000",
            "--insecure-registry=mirror.local:8443",
            "--ca-file=/etc/imagesync/ca/ca.crt",
            "--metrics-addr=0.0.0.0:8080",
            "--log-format=text",
            "--default-resync-interval=90s",
        ]
    );
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let ca = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "ca-bundle")
        .expect("ca volume");
    assert_eq!(
        ca["configMap"],
        json!({"name": "registry-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]})
    );
    let mount = r.container()["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "ca-bundle")
        .cloned();
    assert_eq!(
        mount,
        Some(json!({"name": "ca-bundle", "mountPath": "/etc/imagesync/ca", "readOnly": true}))
    );
    assert_eq!(
        r.one("ServiceAccount")["metadata"]["annotations"],
        json!({"iam.gke.io/gcp-service-account": "mirror@p.iam.gserviceaccount.com"})
    );

    let from_secret = render(json!({"caBundle": {"secretName": "registry-ca-secret"}}));
    let pod = &from_secret.one("Deployment")["spec"]["template"]["spec"];
    let ca = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "ca-bundle")
        .expect("ca volume");
    assert_eq!(
        ca["secret"],
        json!({"secretName": "registry-ca-secret", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    assert!(from_secret
        .args()
        .iter()
        .any(|a| a == "--ca-file=/etc/imagesync/ca/ca.crt"));
}

#[test]
fn invalid_values_are_rejected_with_a_message_naming_the_key() {
    let cases = [
        (json!({"concurrency": 0}), "/concurrency"),
        (json!({"replicas": "2"}), "/replicas"),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (
            json!({"defaultResyncInterval": "5 minutes"}),
            "/defaultResyncInterval",
        ),
        (json!({"watchNamespace": "Team_A"}), "/watchNamespace"),
        (
            json!({"insecureRegistries": ["http://reg:5000"]}),
            "/insecureRegistries/0",
        ),
        (json!({"metrics": {"port": 70000}}), "/metrics/port"),
        (
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "/image/pullPolicy",
        ),
        (
            json!({"serviceAccount": {"annotations": {"a": 1}}}),
            "/serviceAccount/annotations/a",
        ),
        (json!({"replica": 2}), "additional properties 'replica'"),
    ];
    for (values, needle) in cases {
        // Schema validation alone, and a full render (what `helm install` does first).
        for sub in ["validate", "render"] {
            let v = values.to_string();
            let mut args = vec![sub, "--values-json", &v];
            let chart = chart_arg();
            args.insert(1, &chart);
            if sub == "render" {
                args.extend(["--name", RELEASE, "--namespace", RELEASE_NS]);
            }
            let failure = helmctl(&args)
                .err()
                .unwrap_or_else(|| panic!("{sub} accepted invalid values {values}"));
            assert_eq!(failure.code, Some(3), "{sub} {values}: {failure:?}");
            assert!(
                failure.stderr.contains(needle),
                "{sub} {values}: message does not name {needle}: {}",
                failure.stderr
            );
        }
    }
    // Both CA sources at once: rejected at render time with a clear message.
    let failure = helmctl(&[
        "render",
        &chart_arg(),
        "--name",
        RELEASE,
        "--namespace",
        RELEASE_NS,
        "--values-json",
        r#"{"caBundle": {"configMapName": "a", "secretName": "b"}}"#,
    ])
    .err()
    .expect("two CA sources must be rejected");
    assert!(
        failure
            .stderr
            .contains("set at most one of configMapName and secretName"),
        "{failure:?}"
    );
    // The defaults themselves are valid.
    assert_eq!(
        helmctl(&["validate", &chart_arg()]).expect("defaults valid")["valid"],
        true
    );
}

#[test]
fn values_reference_in_docs_matches_values_yaml() {
    let doc = repo_root().join("docs/helm.md");
    let report =
        helmctl(&["values-doc", &chart_arg(), &doc.display().to_string()]).expect("values-doc");
    assert!(report["rows"].as_u64().unwrap_or(0) >= 40, "{report}");
    assert_eq!(
        report["unknown"],
        json!([]),
        "rows for keys values.yaml does not have"
    );
    assert_eq!(
        report["mismatched"],
        json!([]),
        "defaults that differ from values.yaml"
    );
    assert_eq!(
        report["missing"],
        json!([]),
        "values.yaml keys the table does not document"
    );
}

#[test]
fn chart_crds_are_byte_identical_to_the_generated_crds() {
    let chart_crds = chart_dir().join("crds");
    let generated = repo_root().join("crds");
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        names
    };
    let ours = names(&chart_crds);
    assert!(
        !ours.is_empty(),
        "the chart ships no CRD in {}",
        chart_crds.display()
    );
    assert_eq!(
        ours,
        names(&generated),
        "chart crds/ and crds/ hold different files"
    );
    for name in ours {
        let a = std::fs::read(chart_crds.join(&name)).expect("chart CRD");
        let b = std::fs::read(generated.join(&name)).expect("generated CRD");
        assert!(
            a == b,
            "charts/imagesync/crds/{name} differs from crds/{name}: copy crds/ into the chart"
        );
    }
}
