//! End-to-end tests: the Helm chart in `charts/imagesync`, driven by the real Helm library
//! (PyPI `helm-python-sdk`, Helm v4's Go SDK) through `tests/e2e/helm/helmctl.py`.
//!
//! Over 600 lines because it is one module per area (the chart's settings): each test is
//! one scenario against real components, and its set-up is spelled out so a failure reads
//! alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use imagesync_e2e::controller::Launch;
use imagesync_e2e::kube::ApiServer;
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
    render_as(RELEASE, RELEASE_NS, values)
}

fn render_as(release: &str, namespace: &str, values: Value) -> Rendered {
    let values = values.to_string();
    let out = helmctl(&[
        "render",
        &chart_arg(),
        "--name",
        release,
        "--namespace",
        namespace,
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
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncsets"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncsets/status"],
         "verbs": ["patch"]},
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncsets/finalizers"],
         "verbs": ["update"]},
        {"apiGroups": ["imagesync.dev"], "resources": ["imagesyncs"],
         "verbs": ["create", "delete"]},
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
        policy_values(),
        shared_cluster_values(),
        json!({"metrics": {"localhostOnly": true}}),
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
            "--default-resync-interval=5m",
            "--min-resync-interval=10s",
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

    let mut crds: Vec<&str> = r
        .crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    crds.sort_unstable();
    assert_eq!(
        crds,
        ["imagesyncs.imagesync.dev", "imagesyncsets.imagesync.dev"],
        "the chart ships the ImageSync and ImageSyncSet CRDs"
    );
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
        "allowInternalRegistries": ["registry.corp.internal"],
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
            "--allow-internal-registry=registry.corp.internal",
            "--ca-file=/etc/imagesync/ca/ca.crt",
            "--metrics-addr=0.0.0.0:8080",
            "--log-format=text",
            "--default-resync-interval=90s",
            "--min-resync-interval=10s",
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
        // Issue 20, item 15: an enabled policy without rules would deny everything.
        (json!({"policy": {"enabled": true}}), "/policy/rules"),
        (
            json!({"policy": {"enabled": true, "rules": []}}),
            "/policy/rules",
        ),
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
    .expect_err("two CA sources must be rejected");
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

// === against the real kube-apiserver v1.20.2 ===

/// The test API server (the shared harness), with raw JSON requests as admin or as a
/// ServiceAccount.
struct Kube {
    server: ApiServer,
    admin: kube::Client,
}

/// A raw request; `(status, body)` with status 200 for any success.
async fn raw(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("content-type", "application/json")
        .body(bytes)
        .expect("request");
    match client.request_text(req).await {
        Ok(text) => (200, serde_json::from_str(&text).unwrap_or(Value::Null)),
        Err(kube::Error::Api(status)) => (
            status.code,
            json!({"message": status.message, "reason": status.reason}),
        ),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

impl Kube {
    async fn start() -> Kube {
        let server = ApiServer::start().await;
        let admin = server.client().await;
        Kube { server, admin }
    }

    fn kubeconfig_arg(&self) -> String {
        self.server.kubeconfig().display().to_string()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        raw(&self.admin, http::Method::GET, path, None).await
    }

    async fn create(&self, path: &str, body: Value) -> Value {
        let (status, out) = raw(&self.admin, http::Method::POST, path, Some(&body)).await;
        assert_eq!(status, 200, "POST {path}: {out}");
        out
    }

    async fn create_namespace(&self, name: &str) {
        self.server.create_namespace(name).await;
    }
}

/// Whether `client` may do `verb` on `resource` (`res` or `res/sub`) in `namespace`
/// (SelfSubjectAccessReview, answered by the server's RBAC authorizer).
async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "subresource": subresource, "namespace": namespace}}});
    let (status, out) = raw(
        client,
        http::Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(&review),
    )
    .await;
    assert_eq!(status, 200, "SelfSubjectAccessReview: {out}");
    out["status"]["allowed"] == true
}

/// The REST path of a rendered object.
fn object_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let name = obj["metadata"]["name"].as_str().expect("name");
    let plural = match obj["kind"].as_str().expect("kind") {
        "Deployment" => "deployments",
        "Service" => "services",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "ServiceMonitor" => "servicemonitors",
        "CustomResourceDefinition" => "customresourcedefinitions",
        "NetworkPolicy" => "networkpolicies",
        other => panic!("object_path: unexpected kind {other}"),
    };
    let prefix = if api_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api_version}")
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}

/// `want` is contained in `have` (objects: every key of `want`, recursively; arrays: same
/// length, element-wise). Returns the first difference.
fn contained(want: &Value, have: &Value, at: &str) -> Result<(), String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                let child = h
                    .get(k)
                    .ok_or_else(|| format!("{at}.{k} dropped by the server"))?;
                contained(v, child, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
            .iter()
            .zip(h)
            .enumerate()
            .try_for_each(|(i, (w, h))| contained(w, h, &format!("{at}[{i}]"))),
        _ if want == have => Ok(()),
        _ => Err(format!("{at}: rendered {want}, server has {have}")),
    }
}

/// Every object of the release exists on the server with every rendered field intact (a
/// 1.20 server silently drops fields it does not know).
/// The controller's args as the chart rendered them (read back from the server), with the
/// value of each `--flag=` in `replace` swapped for a local one (the metrics listener on a
/// free loopback port, the policy file's path on this machine).
async fn rendered_controller_args(kube: &Kube, replace: &[(&str, &str)]) -> Vec<String> {
    let (_, deploy) = kube
        .get(&format!(
            "/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/{FULLNAME}"
        ))
        .await;
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("deployment args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .map(|a| {
            replace
                .iter()
                .find(|(flag, _)| a.starts_with(&format!("{flag}=")))
                .map_or(a.clone(), |(flag, value)| format!("{flag}={value}"))
        })
        .collect()
}

async fn assert_release_stored(kube: &Kube, objects: &[Value]) {
    assert!(!objects.is_empty(), "release has no objects");
    for obj in objects {
        let path = object_path(obj);
        let (status, stored) = kube.get(&path).await;
        assert_eq!(status, 200, "{path} not on the server: {stored}");
        let mut want = obj.clone();
        if let Some(m) = want.as_object_mut() {
            m.remove("__template");
        }
        if let Err(diff) = contained(&want, &stored, &path) {
            panic!("server changed the object: {diff}");
        }
    }
}

async fn assert_release_gone(kube: &Kube, objects: &[Value]) {
    for obj in objects {
        let path = object_path(obj);
        let (status, _) = kube.get(&path).await;
        assert_eq!(status, 404, "{path} survived helm uninstall");
    }
}

fn helm_install(
    kube: &Kube,
    release: &str,
    namespace: &str,
    values: &Value,
) -> Result<Value, HelmFailure> {
    helmctl(&[
        "install",
        &chart_arg(),
        "--kubeconfig",
        &kube.kubeconfig_arg(),
        "--name",
        release,
        "--namespace",
        namespace,
        "--values-json",
        &values.to_string(),
    ])
}

fn helm_upgrade(kube: &Kube, release: &str, namespace: &str, values: &Value) -> Value {
    helmctl(&[
        "upgrade",
        &chart_arg(),
        "--kubeconfig",
        &kube.kubeconfig_arg(),
        "--name",
        release,
        "--namespace",
        namespace,
        "--values-json",
        &values.to_string(),
    ])
    .unwrap_or_else(|f| panic!("helm upgrade {release} {values}: {f:?}"))
}

fn helm_uninstall(kube: &Kube, release: &str, namespace: &str) {
    helmctl(&[
        "uninstall",
        "--kubeconfig",
        &kube.kubeconfig_arg(),
        "--name",
        release,
        "--namespace",
        namespace,
    ])
    .unwrap_or_else(|f| panic!("helm uninstall {release}: {f:?}"));
}

fn objects(out: &Value) -> Vec<Value> {
    out["objects"].as_array().cloned().unwrap_or_default()
}

/// Names of Helm's release records (Secrets `sh.helm.release.v1.<release>.v<N>`).
async fn release_records(kube: &Kube, namespace: &str) -> Vec<String> {
    let (status, list) = kube
        .get(&format!(
            "/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm"
        ))
        .await;
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A minimal stand-in for the Prometheus Operator's ServiceMonitor CRD (kind and group
/// only, any fields accepted): enough to show the chart's ServiceMonitor is accepted where
/// the CRD exists.
fn service_monitor_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_installs_upgrades_and_uninstalls_on_kube_apiserver_1_20() {
    let kube = Kube::start().await;
    let ns = "imagesync-system";
    let crd_path =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/imagesyncs.imagesync.dev";
    assert_eq!(
        kube.get(crd_path).await.0,
        404,
        "fresh server has no ImageSync CRD"
    );

    // 0. Bad values fail the install itself, before any release object reaches the server.
    let failure = helm_install(&kube, "isync", ns, &json!({"logFormat": "xml"}))
        .expect_err("install with an invalid logFormat must fail");
    assert!(
        failure.stderr.contains("/logFormat") && failure.stderr.contains("'text', 'json'"),
        "unclear failure: {failure:?}"
    );
    // (Helm applies crds/ before it validates values, so the CRD may exist now; nothing
    // else may.)
    assert_eq!(release_records(&kube, ns).await, Vec::<String>::new());
    for o in &render(json!({})).objects {
        assert_eq!(
            kube.get(&object_path(o)).await.0,
            404,
            "a rejected install created {}",
            object_path(o)
        );
    }

    // 1. Default values: every object accepted as rendered, CRD installed from crds/.
    let installed =
        helm_install(&kube, "isync", ns, &json!({})).unwrap_or_else(|f| panic!("install: {f:?}"));
    let default_objects = objects(&installed);
    assert_eq!(default_objects.len(), 5, "{default_objects:?}");
    assert_release_stored(&kube, &default_objects).await;
    let (status, crd) = kube.get(crd_path).await;
    assert_eq!(status, 200, "helm installed the CRD from crds/: {crd}");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
    assert_eq!(installed["release"]["status"], "deployed");
    assert!(
        installed["notes"]
            .as_str()
            .unwrap_or_default()
            .contains("kind: ImageSync"),
        "{installed}"
    );

    // 2. Upgrade to single-namespace + 2 replicas: Role instead of ClusterRole, Lease Role,
    //    rolling strategy; the ClusterRole and its binding are removed.
    kube.create_namespace("team-a").await;
    let variant = json!({"watchNamespace": "team-a", "replicas": 2,
                         "caBundle": {"secretName": "registry-ca"},
                         "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "m@p.iam.gserviceaccount.com"}}});
    let upgraded = objects(&helm_upgrade(&kube, "isync", ns, &variant));
    assert_release_stored(&kube, &upgraded).await;
    let kinds: Vec<&str> = upgraded.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(!kinds.contains(&"ClusterRole"), "{kinds:?}");
    assert_eq!(
        kube.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/isync-imagesync")
            .await
            .0,
        404
    );
    let (_, deploy) = kube
        .get("/apis/apps/v1/namespaces/imagesync-system/deployments/isync-imagesync")
        .await;
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(deploy["spec"]["replicas"], 2);

    // 3. And back (Recreate again: the server must accept the strategy switch).
    let back = objects(&helm_upgrade(&kube, "isync", ns, &json!({})));
    assert_release_stored(&kube, &back).await;
    let (_, deploy) = kube
        .get("/apis/apps/v1/namespaces/imagesync-system/deployments/isync-imagesync")
        .await;
    assert_eq!(deploy["spec"]["strategy"], json!({"type": "Recreate"}));
    for o in &upgraded {
        if o["kind"] == "Role" || o["kind"] == "RoleBinding" {
            assert_eq!(
                kube.get(&object_path(o)).await.0,
                404,
                "{} left behind by the upgrade",
                object_path(o)
            );
        }
    }

    // 4. ServiceMonitor on a server without the Prometheus Operator CRDs: a clear failure,
    //    nothing created.
    kube.create_namespace("monitoring-test").await;
    let sm_values = json!({"metrics": {"serviceMonitor": {"enabled": true}}});
    let failure = helm_install(&kube, "isync-sm", "monitoring-test", &sm_values)
        .expect_err("ServiceMonitor without its CRD must fail");
    assert!(
        failure.stderr.contains(
            r#"no matches for kind "ServiceMonitor" in version "monitoring.coreos.com/v1""#
        ),
        "unclear failure: {failure:?}"
    );
    let sm_render = render_as("isync-sm", "monitoring-test", sm_values.clone());
    assert_eq!(sm_render.objects.len(), 6, "{:?}", sm_render.kinds());
    for o in &sm_render.objects {
        assert_eq!(
            kube.get(&object_path(o)).await.0,
            404,
            "failed install created {}",
            object_path(o)
        );
    }
    let _ = helmctl(&[
        "uninstall",
        "--kubeconfig",
        &kube.kubeconfig_arg(),
        "--name",
        "isync-sm",
        "--namespace",
        "monitoring-test",
    ]);

    // ... and accepted once the ServiceMonitor CRD exists.
    kube.create(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        service_monitor_crd(),
    )
    .await;
    kube.server
        .wait_crd_established("servicemonitors.monitoring.coreos.com")
        .await;
    let sm_objects = objects(
        &helm_install(&kube, "isync-sm", "monitoring-test", &sm_values)
            .unwrap_or_else(|f| panic!("install with the ServiceMonitor CRD present: {f:?}")),
    );
    assert!(
        sm_objects.iter().any(|o| o["kind"] == "ServiceMonitor"),
        "{sm_objects:?}"
    );
    assert_release_stored(&kube, &sm_objects).await;

    // 5. Uninstall: nothing left but the CRD (Helm's CRD policy).
    helm_uninstall(&kube, "isync", ns);
    helm_uninstall(&kube, "isync-sm", "monitoring-test");
    assert_release_gone(&kube, &back).await;
    assert_release_gone(&kube, &sm_objects).await;
    assert_eq!(
        release_records(&kube, ns).await,
        Vec::<String>::new(),
        "release history left behind"
    );
    assert_eq!(
        release_records(&kube, "monitoring-test").await,
        Vec::<String>::new()
    );
    for (path, what) in [
        ("/api/v1/namespaces/imagesync-system/serviceaccounts?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "ServiceAccounts"),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "ClusterRoles"),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "ClusterRoleBindings"),
        ("/apis/rbac.authorization.k8s.io/v1/roles?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "Roles"),
        ("/apis/rbac.authorization.k8s.io/v1/rolebindings?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "RoleBindings"),
        ("/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "Deployments"),
        ("/api/v1/services?labelSelector=app.kubernetes.io%2Fname%3Dimagesync", "Services"),
    ] {
        let (status, list) = kube.get(path).await;
        assert_eq!(status, 200, "{path}: {list}");
        assert_eq!(list["items"], json!([]), "{what} left after uninstall");
    }
    assert_eq!(
        kube.get(crd_path).await.0,
        200,
        "the CRD stays after uninstall (Helm never deletes CRDs)"
    );
}

/// Polls `check` every 250 ms for up to `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn ready_condition(obj: &Value) -> Option<&Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_works_with_exactly_the_charts_service_account_permissions() {
    let kube = Kube::start().await;
    let registry = imagesync_e2e::registry::Registry::start().await;
    let reg = registry.addr().to_owned();
    let source = imagesync_e2e::fixtures::push_index(&reg, "src/app", "v1", 41).await;

    // Single-namespace install with leader election: the narrowest and the richest RBAC.
    kube.create_namespace("team-a").await;
    let values = json!({"watchNamespace": "team-a", "replicas": 2, "insecureRegistries": [reg],
                        "defaultResyncInterval": "5s", "logFormat": "text"});
    helm_install(&kube, RELEASE, RELEASE_NS, &values).unwrap_or_else(|f| panic!("install: {f:?}"));

    // The chart's ServiceAccount, with a token from the TokenRequest API.
    let sa_kubeconfig = kube
        .server
        .service_account_kubeconfig(RELEASE_NS, FULLNAME)
        .await;
    let sa = imagesync_e2e::kube::client_for(&sa_kubeconfig).await;

    // Granted: exactly the chart's rules, in the watched namespace / release namespace.
    for (verb, group, resource, ns) in [
        ("watch", "imagesync.dev", "imagesyncs", "team-a"),
        ("update", "imagesync.dev", "imagesyncs/finalizers", "team-a"),
        ("patch", "imagesync.dev", "imagesyncs/status", "team-a"),
        ("watch", "imagesync.dev", "imagesyncsets", "team-a"),
        ("patch", "imagesync.dev", "imagesyncsets/status", "team-a"),
        // ImageSyncSet children.
        ("create", "imagesync.dev", "imagesyncs", "team-a"),
        ("delete", "imagesync.dev", "imagesyncs", "team-a"),
        ("create", "events.k8s.io", "events", "team-a"),
        ("get", "", "secrets", "team-a"),
        ("update", "coordination.k8s.io", "leases", RELEASE_NS),
    ] {
        assert!(
            can_i(&sa, verb, group, resource, ns).await,
            "SA should be allowed to {verb} {resource} in {ns}"
        );
    }
    // Not granted: other verbs, other resources, other namespaces.
    for (verb, group, resource, ns) in [
        ("list", "", "secrets", "team-a"),
        ("watch", "", "secrets", "team-a"),
        ("get", "", "secrets", "default"),
        ("get", "", "secrets", RELEASE_NS),
        ("get", "", "configmaps", "team-a"),
        ("create", "", "pods", "team-a"),
        ("create", "", "events", "team-a"),
        ("create", "imagesync.dev", "imagesyncsets", "team-a"),
        ("delete", "imagesync.dev", "imagesyncsets", "team-a"),
        ("update", "imagesync.dev", "imagesyncsets/status", "team-a"),
        ("create", "imagesync.dev", "imagesyncs", "default"),
        ("delete", "imagesync.dev", "imagesyncs", "default"),
        ("list", "imagesync.dev", "imagesyncs", "default"),
        ("get", "imagesync.dev", "imagesyncs", "default"),
        ("create", "coordination.k8s.io", "leases", "team-a"),
        ("delete", "coordination.k8s.io", "leases", RELEASE_NS),
        ("patch", "apps", "deployments", RELEASE_NS),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "team-a",
        ),
    ] {
        assert!(
            !can_i(&sa, verb, group, resource, ns).await,
            "SA must not be allowed to {verb} {group}/{resource} in {ns}"
        );
    }
    // And the server really refuses such requests.
    for path in [
        "/api/v1/namespaces/team-a/secrets",
        "/api/v1/namespaces/default/secrets/anything",
        "/api/v1/namespaces/team-a/configmaps",
        "/apis/imagesync.dev/v1alpha1/imagesyncs",
    ] {
        let (status, body) = raw(&sa, http::Method::GET, path, None).await;
        assert_eq!(status, 403, "GET {path} as the ServiceAccount: {body}");
    }

    // Run the controller with the args the chart rendered (as stored by the server), only
    // moving the metrics listener to a free loopback port.
    let metrics_port = imagesync_e2e::registry::free_port().expect("free port");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let args = rendered_controller_args(&kube, &[("--metrics-addr", &metrics_addr)]).await;
    assert!(
        args.contains(&"--namespace=team-a".to_owned())
            && args.contains(&"--leader-elect".to_owned()),
        "{args:?}"
    );
    let log = kube.server.dir().join("controller.log");
    let controller = Launch::new(&sa_kubeconfig, &log)
        .args(&args)
        .metrics_addr(&metrics_addr)
        .env("RUST_LOG", "info")
        .start();

    // One object in the watched namespace, one outside it.
    let object = |name: &str, ns: &str| {
        json!({"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSync",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"source": format!("{reg}/src/app:v1"), "destination": format!("{reg}/dst/{ns}:v1")}})
    };
    kube.create(
        "/apis/imagesync.dev/v1alpha1/namespaces/team-a/imagesyncs",
        object("app", "team-a"),
    )
    .await;
    kube.create(
        "/apis/imagesync.dev/v1alpha1/namespaces/default/imagesyncs",
        object("app", "default"),
    )
    .await;

    let path = "/apis/imagesync.dev/v1alpha1/namespaces/team-a/imagesyncs/app";
    eventually(90, "ImageSync team-a/app Ready=True", || async {
        controller.assert_running();
        let (_, obj) = kube.get(path).await;
        ready_condition(&obj).is_some_and(|c| c["status"] == "True")
    })
    .await;
    let (_, obj) = kube.get(path).await;
    assert_eq!(
        obj["status"]["sourceDigest"],
        source.digest.as_str(),
        "{obj}"
    );
    assert_eq!(
        obj["status"]["destinationDigest"],
        source.digest.as_str(),
        "{obj}"
    );
    assert_eq!(ready_condition(&obj).expect("Ready")["reason"], "Synced");
    let (_, copied) = imagesync_e2e::fixtures::get_manifest(&reg, "dst/team-a", "v1")
        .await
        .expect("destination manifest");
    assert_eq!(
        copied, source.manifest,
        "destination index is byte-identical"
    );

    // Health endpoints, the Lease and the Events all worked with the chart's permissions.
    let readyz = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(readyz.status().as_u16(), 200);
    let (status, lease) = kube
        .get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{FULLNAME}"
        ))
        .await;
    assert_eq!(
        status, 200,
        "the controller holds the Lease named by the chart: {lease}"
    );
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );
    // Events are written next to the status patch: give them a moment.
    eventually(
        15,
        "an Event about team-a/app (events.k8s.io/v1)",
        || async {
            let (_, events) = kube
                .get("/apis/events.k8s.io/v1/namespaces/team-a/events")
                .await;
            events["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|e| e["regarding"]["name"] == "app"))
        },
    )
    .await;

    // The object outside the watched namespace is left alone.
    let (_, other) = kube
        .get("/apis/imagesync.dev/v1alpha1/namespaces/default/imagesyncs/app")
        .await;
    assert!(
        other.get("status").is_none_or(Value::is_null),
        "default/app was touched: {other}"
    );
    assert!(
        other["metadata"].get("finalizers").is_none(),
        "default/app got a finalizer: {other}"
    );

    // Deletion: the finalizer removes the destination tag, then releases the object.
    let (status, _) = raw(&kube.admin, http::Method::DELETE, path, None).await;
    assert_eq!(status, 200);
    eventually(60, "ImageSync team-a/app deleted", || async {
        controller.assert_running();
        kube.get(path).await.0 == 404
    })
    .await;
    assert_eq!(
        imagesync_e2e::fixtures::manifest_status(&reg, "dst/team-a", "v1").await,
        404
    );

    controller.assert_running();
    let text = controller.log_text();
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "the controller hit a permission the chart does not grant:\n{text}"
    );
    drop(controller);

    // Uninstall revokes everything: the token's ServiceAccount and bindings are gone.
    helm_uninstall(&kube, RELEASE, RELEASE_NS);
    let (status, _) = raw(
        &sa,
        http::Method::GET,
        "/apis/imagesync.dev/v1alpha1/namespaces/team-a/imagesyncs",
        None,
    )
    .await;
    assert!(
        status == 401 || status == 403,
        "the ServiceAccount still works after uninstall: {status}"
    );
}

/// No Docker engine runs here (the offline buildah build of the same image is built and
/// run in `image::`), so the Dockerfile is checked for consistency with the workspace and
/// the chart instead of being built.
#[test]
fn dockerfile_builds_the_controller_and_runs_as_the_charts_non_root_user() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    // `FROM ${ARG}` resolves to the ARG's default (the base images are build arguments, so
    // they can be pinned by digest); an `@sha256:` digest, where one is given, is checked
    // for form and then left aside.
    let arg_default = |name: &str| -> Option<String> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .map(str::to_owned)
    };
    let resolved: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .map(|l| {
            let image = l["FROM ".len()..].split(' ').next().unwrap_or_default();
            let image = match image.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                Some(arg) => arg_default(arg).unwrap_or_else(|| panic!("no ARG {arg}=default")),
                None => image.to_owned(),
            };
            let image = match image.split_once("@sha256:") {
                Some((name, hex)) => {
                    assert!(
                        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                        "malformed digest in {image}"
                    );
                    name.to_owned()
                }
                None => image,
            };
            let rest = l["FROM ".len()..].split_once(' ').map_or("", |(_, r)| r);
            format!(
                "FROM {image}{}{rest}",
                if rest.is_empty() { "" } else { " " }
            )
        })
        .collect();
    let froms: Vec<&str> = resolved.iter().map(String::as_str).collect();
    assert_eq!(froms.len(), 2, "multi-stage: build + runtime: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("FROM gcr.io/distroless/") && froms[1].ends_with(":nonroot"),
        "distroless non-root runtime: {froms:?}"
    );
    // The build stage's Rust is at least the workspace's rust-version.
    let workspace = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let msrv = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("rust-version");
    let image_rust = froms[0]["FROM rust:".len()..]
        .split('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let version = |v: &str| -> Vec<u32> {
        v.split('.')
            .map(|p| p.parse().expect("version number"))
            .collect()
    };
    assert!(
        version(&image_rust) >= version(&msrv),
        "rust:{image_rust} is older than rust-version {msrv}"
    );

    assert!(
        dockerfile.contains(
            "cargo build --release --locked -p imagesync-controller --bin imagesync-controller"
        ),
        "builds exactly the controller binary"
    );
    let controller_manifest = std::fs::read_to_string(repo_root().join("controller/Cargo.toml"))
        .expect("controller/Cargo.toml");
    assert!(
        controller_manifest.contains("name = \"imagesync-controller\""),
        "the [[bin]] the Dockerfile builds"
    );

    // Runs as the uid/gid the chart's securityContext expects, numerically (runAsNonRoot).
    let values = render(json!({}));
    let sc = &values.container()["securityContext"];
    let user = format!("USER {}:{}", sc["runAsUser"], sc["runAsGroup"]);
    assert!(lines.contains(&user.as_str()), "Dockerfile needs `{user}`");
    let entrypoint = lines
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert_eq!(
        *entrypoint,
        r#"ENTRYPOINT ["/usr/local/bin/imagesync-controller"]"#
    );
    assert!(dockerfile.contains(
        "COPY --from=build /out/imagesync-controller /usr/local/bin/imagesync-controller"
    ));
    let port = format!("EXPOSE {}", values.container()["ports"][0]["containerPort"]);
    assert!(lines.contains(&port.as_str()), "Dockerfile needs `{port}`");
    // The build context leaves out the (huge) target folder.
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must exclude target/"
    );
}

// === tenant policy ===

/// Values with a policy: a namespace-name rule, a label-selector rule and a deny rule.
fn policy_values() -> Value {
    json!({"policy": {"enabled": true, "reloadInterval": "2s", "rules": [
        {"name": "team-a", "namespaces": ["team-a", "team-a-*"],
         "sources": ["docker.io/library/*"], "destinations": ["registry.example.com/team-a/**"],
         "ambientCredentials": {"source": true, "destination": true}},
        {"name": "platform", "namespaceSelector": {"matchLabels": {"imagesync.dev/tenant": "platform"},
           "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
         "sources": ["**"], "destinations": ["registry.example.com/platform/**"]},
        {"name": "nobody", "action": "Deny", "namespaces": ["*"], "sources": ["**"], "destinations": ["**"]},
    ]}})
}

/// Every RBAC rule the release grants, over all Roles and ClusterRoles.
fn all_rbac_rules(r: &Rendered) -> Vec<Value> {
    r.objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn grants(rules: &[Value], resource: &str) -> bool {
    rules.iter().any(|r| {
        r["resources"]
            .as_array()
            .is_some_and(|res| res.iter().any(|x| x == resource || x == "*"))
    })
}

#[test]
fn policy_values_render_a_read_only_mounted_configmap_and_the_flags() {
    let r = render(policy_values());
    assert_hardened(&r);
    let cm = r.named("ConfigMap", "isync-imagesync-policy");
    assert_eq!(cm["metadata"]["namespace"], RELEASE_NS);
    let text = cm["data"]["policy.yaml"].as_str().expect("policy.yaml");
    // The controller's own parser accepts what the chart renders, with the same meaning.
    let policy = imagesync_controller::policy::Policy::parse(text)
        .unwrap_or_else(|e| panic!("rendered policy rejected: {e}\n{text}"));
    assert_eq!(policy.len(), 3);
    assert!(policy.needs_namespace_labels());
    let reference = |s: &str| imagesync_engine::Reference::parse(s).expect("reference");
    let none = std::collections::BTreeMap::new();
    assert!(matches!(
        policy.evaluate("team-a-dev", &none, &reference("alpine:3"), &reference("registry.example.com/team-a/x/alpine:3")),
        imagesync_controller::policy::Decision::Allow { rule: Some(ref n), .. } if n == "team-a"
    ));
    assert!(matches!(
        policy.evaluate("team-b", &none, &reference("alpine:3"), &reference("registry.example.com/team-a/alpine:3")),
        imagesync_controller::policy::Decision::Deny { ref message } if message.contains("\"nobody\"")
    ));

    let args = r.args();
    for want in [
        "--policy-file=/etc/imagesync/policy/policy.yaml",
        "--policy-reload-interval=2s",
        "--deployment-name=isync-imagesync",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
    }
    let mount = r.container()["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "policy")
        .cloned();
    // The whole directory, read-only, no subPath (subPath mounts never see updates).
    assert_eq!(
        mount,
        Some(json!({"name": "policy", "mountPath": "/etc/imagesync/policy", "readOnly": true}))
    );
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "policy")
        .cloned();
    assert_eq!(
        volume,
        Some(json!({"name": "policy", "configMap": {"name": "isync-imagesync-policy"}}))
    );
    // No checksum annotation: a policy change must not restart the Pod.
    assert!(
        pod.get("metadata").is_none()
            && r.one("Deployment")["spec"]["template"]["metadata"]
                .get("annotations")
                .is_none()
    );

    // RBAC: exactly the usual rules plus `get namespaces` (a rule selects by label), and
    // nothing on ConfigMaps for anyone.
    let mut want = controller_rules().as_array().cloned().expect("rules");
    want.push(json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}));
    assert_eq!(r.one("ClusterRole")["rules"], Value::Array(want));
    assert!(!grants(&all_rbac_rules(&r), "configmaps"));

    // Without a selector rule: no Namespace access; single namespace elsewhere: an events
    // Role in the release namespace for the Deployment's Events.
    let mut names_only = policy_values();
    names_only["policy"]["rules"]
        .as_array_mut()
        .expect("rules")
        .remove(1);
    names_only["watchNamespace"] = json!("team-a");
    let r = render(names_only);
    assert_eq!(r.named("Role", FULLNAME)["rules"], controller_rules());
    let events_role = r.named("Role", "isync-imagesync-events");
    assert_eq!(events_role["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(
        events_role["rules"],
        json!([{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}])
    );
    assert_eq!(
        r.named("RoleBinding", "isync-imagesync-events")["roleRef"]["name"],
        "isync-imagesync-events"
    );
    assert!(!grants(&all_rbac_rules(&r), "configmaps"));
    assert!(!grants(&all_rbac_rules(&r), "namespaces"));

    // Policy off (the default): no ConfigMap, no flag, no extra rules.
    let off = render(json!({}));
    assert!(off.all("ConfigMap").is_empty());
    assert!(!off.args().iter().any(|a| a.starts_with("--policy")));
    assert!(!grants(&all_rbac_rules(&off), "configmaps"));
}

#[test]
fn malformed_policy_values_are_rejected_with_a_message_naming_the_key() {
    let rule = json!({"name": "a", "namespaces": ["x"], "sources": ["**"], "destinations": ["**"]});
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut r = rule.clone();
        patch(&mut r);
        json!({"policy": {"enabled": true, "rules": [r]}})
    };
    let cases = [
        (
            with(&|r| {
                r.as_object_mut().expect("rule").remove("destinations");
            }),
            "/policy/rules/0",
        ),
        (
            with(&|r| r["ambientCredentials"] = json!({"destination": "yes"})),
            "/policy/rules/0/ambientCredentials/destination",
        ),
        (
            with(&|r| r["action"] = json!("Maybe")),
            "/policy/rules/0/action",
        ),
        (
            with(&|r| r["sources"] = json!([])),
            "/policy/rules/0/sources",
        ),
        (
            with(&|r| r["namespaceSelector"] = json!({"matchLabels": {"a": "b"}})),
            "/policy/rules/0",
        ),
        (
            with(&|r| r["namespace"] = json!("x")),
            "additional properties 'namespace'",
        ),
        (
            json!({"policy": {"enabled": true, "reloadInterval": "soon"}}),
            "/policy/reloadInterval",
        ),
        (json!({"policy": {"rules": "allow all"}}), "/policy/rules"),
    ];
    for (values, needle) in cases {
        let v = values.to_string();
        let failure = helmctl(&["validate", &chart_arg(), "--values-json", &v])
            .err()
            .unwrap_or_else(|| panic!("accepted malformed policy values {values}"));
        assert_eq!(failure.code, Some(3), "{values}: {failure:?}");
        assert!(
            failure.stderr.contains(needle),
            "{values}: message does not name {needle}: {}",
            failure.stderr
        );
    }
    assert_eq!(
        helmctl(&[
            "validate",
            &chart_arg(),
            "--values-json",
            &policy_values().to_string()
        ])
        .expect("the example policy is valid")["valid"],
        true
    );
}

/// The chart installed with a policy on a real kube-apiserver: its ServiceAccount can do
/// what the controller needs with the policy (read Namespaces for the selector, record
/// Events on the Deployment) but cannot read ConfigMaps; the controller run with the
/// rendered args (and the ConfigMap's content as its mounted file) enforces the policy.
#[tokio::test(flavor = "multi_thread")]
async fn charts_policy_is_enforced_with_the_charts_service_account_permissions() {
    let kube = Kube::start().await;
    let registry = imagesync_e2e::registry::Registry::start().await;
    let reg = registry.addr().to_owned();
    let source = imagesync_e2e::fixtures::push_index(&reg, "src/app", "v1", 42).await;
    kube.create_namespace("team-a").await;
    kube.create(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "platform-x", "labels": {"imagesync.dev/tenant": "platform"}}}),
    )
    .await;
    let values = json!({"insecureRegistries": [reg], "logFormat": "text", "defaultResyncInterval": "5s",
    "policy": {"enabled": true, "reloadInterval": "1s", "rules": [
        {"name": "team-a", "namespaces": ["team-a"], "sources": [format!("{reg}/src/**")],
         "destinations": [format!("{reg}/dst/a/*")]},
        {"name": "platform", "namespaceSelector": {"matchLabels": {"imagesync.dev/tenant": "platform"}},
         "sources": ["**"], "destinations": [format!("{reg}/dst/platform/*")]},
    ]}});
    helm_install(&kube, RELEASE, RELEASE_NS, &values).unwrap_or_else(|f| panic!("install: {f:?}"));
    let sa_kubeconfig = kube
        .server
        .service_account_kubeconfig(RELEASE_NS, FULLNAME)
        .await;
    let sa = imagesync_e2e::kube::client_for(&sa_kubeconfig).await;

    // The policy ConfigMap: the controller's ServiceAccount cannot read it (or any other);
    // the controller reads it from the mounted volume.
    for ns in [RELEASE_NS, "team-a"] {
        for verb in ["get", "list", "watch"] {
            assert!(
                !can_i(&sa, verb, "", "configmaps", ns).await,
                "SA may {verb} configmaps in {ns}"
            );
        }
    }
    let cm_path = format!("/api/v1/namespaces/{RELEASE_NS}/configmaps/{FULLNAME}-policy");
    assert_eq!(raw(&sa, http::Method::GET, &cm_path, None).await.0, 403);
    assert!(can_i(&sa, "get", "", "namespaces", "platform-x").await);
    assert!(!can_i(&sa, "list", "", "namespaces", "").await);
    assert!(can_i(&sa, "create", "events.k8s.io", "events", RELEASE_NS).await);

    // What the kubelet would mount.
    let (status, cm) = kube.get(&cm_path).await;
    assert_eq!(status, 200, "{cm}");
    let policy_dir = kube.server.dir().join("mounted-policy");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    let policy_file = policy_dir.join("policy.yaml");
    let good = cm["data"]["policy.yaml"]
        .as_str()
        .expect("policy.yaml")
        .to_owned();
    std::fs::write(&policy_file, &good).expect("policy file");

    let metrics_port = imagesync_e2e::registry::free_port().expect("free port");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let policy_path = policy_file.display().to_string();
    let args = rendered_controller_args(
        &kube,
        &[
            ("--metrics-addr", &metrics_addr),
            ("--policy-file", &policy_path),
        ],
    )
    .await;
    assert!(
        args.contains(&format!("--deployment-name={FULLNAME}")),
        "{args:?}"
    );
    let log = kube.server.dir().join("controller-policy.log");
    let controller = Launch::new(&sa_kubeconfig, &log)
        .args(&args)
        .metrics_addr(&metrics_addr)
        // The chart sets POD_NAMESPACE from the downward API.
        .env("POD_NAMESPACE", RELEASE_NS)
        .env("RUST_LOG", "info")
        .start();

    let object = |name: &str, ns: &str, dst: &str| {
        json!({"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSync",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"source": format!("{reg}/src/app:v1"), "destination": format!("{reg}/{dst}")}})
    };
    for (name, ns, dst) in [
        ("ok", "team-a", "dst/a/app:v1"),
        ("elsewhere", "team-a", "dst/platform/app:v1"),
        ("platform", "platform-x", "dst/platform/app:v1"),
    ] {
        kube.create(
            &format!("/apis/imagesync.dev/v1alpha1/namespaces/{ns}/imagesyncs"),
            object(name, ns, dst),
        )
        .await;
    }
    let path = |ns: &str, name: &str| {
        format!("/apis/imagesync.dev/v1alpha1/namespaces/{ns}/imagesyncs/{name}")
    };
    for (ns, name, status, reason) in [
        ("team-a", "ok", "True", "Synced"),
        ("platform-x", "platform", "True", "Synced"),
        ("team-a", "elsewhere", "False", "PolicyDenied"),
    ] {
        let p = path(ns, name);
        eventually(90, &format!("{ns}/{name} {reason}"), || async {
            controller.assert_running();
            let (_, obj) = kube.get(&p).await;
            ready_condition(&obj).is_some_and(|c| c["status"] == status && c["reason"] == reason)
        })
        .await;
    }
    let (_, obj) = kube.get(&path("team-a", "ok")).await;
    assert_eq!(obj["status"]["destinationDigest"], source.digest.as_str());
    assert_eq!(
        imagesync_e2e::fixtures::manifest_status(&reg, "dst/platform/app", "v1").await,
        200
    );

    // A bad policy: kept out, and the Warning Event on the Deployment is written with the
    // chart's permissions.
    std::fs::write(&policy_file, "rules: {oops").expect("policy file");
    eventually(30, "a PolicyInvalid Event on the Deployment", || async {
        controller.assert_running();
        let (_, events) = kube
            .get(&format!(
                "/apis/events.k8s.io/v1/namespaces/{RELEASE_NS}/events"
            ))
            .await;
        events["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| {
                e["reason"] == "PolicyInvalid"
                    && e["type"] == "Warning"
                    && e["regarding"]["kind"] == "Deployment"
                    && e["regarding"]["name"] == FULLNAME
            })
        })
    })
    .await;
    let (_, obj) = kube.get(&path("team-a", "ok")).await;
    assert_eq!(ready_condition(&obj).expect("Ready")["status"], "True");

    controller.assert_running();
    let text = controller.log_text();
    assert!(
        !text.to_lowercase().contains("forbidden"),
        "the controller hit a permission the chart does not grant:\n{text}"
    );
}

// === shared-cluster defaults (issue 12, item 6) ===

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every shared-cluster option at once: Secrets in listed namespaces only, the egress
/// NetworkPolicy, metrics on loopback, the image by digest.
fn shared_cluster_values() -> Value {
    json!({
        "image": {"digest": DIGEST},
        "rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-a", "team-b"]}},
        "networkPolicy": {"enabled": true, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
        "metrics": {"localhostOnly": true},
    })
}

fn secret_rules(r: &Rendered) -> Vec<(String, String)> {
    r.objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .filter(|o| grants(o["rules"].as_array().map_or(&[][..], |v| v), "secrets"))
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("<cluster>")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn secrets_scope_namespaces_grants_get_secrets_only_in_the_listed_namespaces() {
    // Default: one cluster-wide `get secrets`, as before.
    assert_eq!(
        secret_rules(&render(json!({}))),
        [("ClusterRole".to_owned(), "<cluster>".to_owned())]
    );

    let r = render(
        json!({"rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-a", "team-b"]}}}),
    );
    assert_hardened(&r);
    let mut without_secrets = controller_rules();
    without_secrets.as_array_mut().expect("rules").pop();
    assert_eq!(r.one("ClusterRole")["rules"], without_secrets);
    assert_eq!(
        secret_rules(&r),
        [
            ("Role".to_owned(), "team-a".to_owned()),
            ("Role".to_owned(), "team-b".to_owned())
        ]
    );
    for ns in ["team-a", "team-b"] {
        let role = r
            .all("Role")
            .into_iter()
            .find(|o| o["metadata"]["namespace"] == ns)
            .expect("Role");
        assert_eq!(role["metadata"]["name"], format!("{FULLNAME}-secrets"));
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
        );
        let binding = r
            .all("RoleBinding")
            .into_iter()
            .find(|o| o["metadata"]["namespace"] == ns)
            .expect("RoleBinding");
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{FULLNAME}-secrets")})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}])
        );
    }

    // `none`: no Secret access anywhere.
    assert!(secret_rules(&render(json!({"rbac": {"secrets": {"scope": "none"}}}))).is_empty());
    // With watchNamespace: the listed namespace must be the watched one.
    let r = render(json!({"watchNamespace": "team-a",
                          "rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-a"]}}}));
    assert_eq!(secret_rules(&r), [("Role".to_owned(), "team-a".to_owned())]);
    assert_eq!(r.named("Role", FULLNAME)["rules"], without_secrets);
}

#[test]
fn network_policy_denies_link_local_and_cluster_ranges_except_the_api_server_and_dns() {
    assert!(
        render(json!({})).all("NetworkPolicy").is_empty(),
        "off by default"
    );
    let r = render(json!({"networkPolicy": {"enabled": true,
        "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"]}}}));
    assert_hardened(&r);
    let np = r.one("NetworkPolicy");
    assert_eq!(np["metadata"]["namespace"], RELEASE_NS);
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        r.one("Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Egress"]));
    let egress = np["spec"]["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 3, "{egress:?}");
    assert_eq!(
        egress[0],
        json!({"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
               "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]})
    );
    assert_eq!(
        egress[1],
        json!({"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    );
    assert_eq!(
        egress[2],
        json!({"to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/8",
                "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10", "fc00::/7"]}}]})
    );
    // Extra rules are appended as given (e.g. an in-cluster registry).
    let extra = json!({"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 5000}]});
    let r = render(json!({"networkPolicy": {"enabled": true,
        "apiServer": {"cidrs": ["10.0.0.1/32"]}, "extraEgress": [extra]}}));
    assert_eq!(r.one("NetworkPolicy")["spec"]["egress"][3], extra);
}

#[test]
fn metrics_bind_address_and_localhost_only_move_the_probes_to_a_health_port() {
    let r = render(json!({"metrics": {"bindAddress": "::", "port": 9090}}));
    assert!(
        r.args().contains(&"--metrics-addr=[::]:9090".to_owned()),
        "{:?}",
        r.args()
    );
    assert_eq!(r.container()["livenessProbe"]["httpGet"]["port"], "metrics");

    for values in [
        json!({"metrics": {"localhostOnly": true}}),
        json!({"metrics": {"bindAddress": "127.0.0.1"}}),
    ] {
        let r = render(values.clone());
        let args = r.args();
        assert!(
            args.contains(&"--metrics-addr=127.0.0.1:8080".to_owned())
                && args.contains(&"--health-addr=0.0.0.0:8081".to_owned()),
            "{values}: {args:?}"
        );
        let c = r.container();
        assert_eq!(
            c["ports"],
            json!([{"name": "health", "containerPort": 8081, "protocol": "TCP"}])
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": "health"})
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"],
            json!({"path": "/readyz", "port": "health"})
        );
        assert!(
            r.all("Service").is_empty(),
            "{values}: no Service for a loopback listener"
        );
    }
    // The rendered flags are ones the controller accepts.
    let status = Command::new(imagesync_e2e::bin("imagesync-controller"))
        .args([
            "--metrics-addr=127.0.0.1:8080",
            "--health-addr=0.0.0.0:8081",
            "--help",
        ])
        .output()
        .expect("controller --help");
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("--health-addr"));
}

#[test]
fn image_digest_pins_the_controller_image() {
    let r = render(json!({"image": {"digest": DIGEST, "tag": "0.1.0"}}));
    assert_eq!(
        r.container()["image"],
        format!("ghcr.io/imagesync/imagesync-controller@{DIGEST}")
    );
    let r = render(shared_cluster_values());
    assert_eq!(
        r.container()["image"],
        format!("ghcr.io/imagesync/imagesync-controller@{DIGEST}")
    );
}

#[test]
fn bad_shared_cluster_values_are_rejected_with_a_message_naming_the_key() {
    let digest_err = json!({"image": {"digest": "sha256:short"}});
    for (values, needle) in [
        (digest_err, "/image/digest"),
        (
            json!({"rbac": {"secrets": {"scope": "some"}}}),
            "/rbac/secrets/scope",
        ),
        (
            json!({"rbac": {"secrets": {"scope": "namespaces", "namespaces": ["Team_A"]}}}),
            "/rbac/secrets/namespaces/0",
        ),
        (
            json!({"metrics": {"bindAddress": "localhost"}}),
            "/metrics/bindAddress",
        ),
        (
            json!({"networkPolicy": {"clusterCIDRs": ["10.0.0.0"]}}),
            "/networkPolicy/clusterCIDRs/0",
        ),
        (
            json!({"minResyncInterval": "99999999999999999999h"}),
            "/minResyncInterval",
        ),
        (
            json!({"defaultResyncInterval": "99999999999999999999h"}),
            "/defaultResyncInterval",
        ),
    ] {
        let failure = helmctl(&[
            "validate",
            &chart_arg(),
            "--values-json",
            &values.to_string(),
        ])
        .err()
        .unwrap_or_else(|| panic!("accepted invalid values {values}"));
        assert_eq!(failure.code, Some(3), "{values}: {failure:?}");
        assert!(
            failure.stderr.contains(needle),
            "{values}: {}",
            failure.stderr
        );
    }
    for (values, needle) in [
        (
            json!({"rbac": {"secrets": {"scope": "namespaces"}}}),
            "list at least one namespace",
        ),
        (
            json!({"rbac": {"secrets": {"namespaces": ["team-a"]}}}),
            "only with rbac.secrets.scope=namespaces",
        ),
        (
            json!({"watchNamespace": "team-a", "rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-b"]}}}),
            "team-b is not the watched namespace team-a",
        ),
        (
            json!({"networkPolicy": {"enabled": true}}),
            "networkPolicy.apiServer.cidrs",
        ),
        (
            json!({"metrics": {"localhostOnly": true, "serviceMonitor": {"enabled": true}}}),
            "loopback only",
        ),
        (
            json!({"metrics": {"localhostOnly": true, "healthPort": 8080}}),
            "metrics.healthPort must differ",
        ),
    ] {
        let failure = helmctl(&[
            "render",
            &chart_arg(),
            "--name",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--values-json",
            &values.to_string(),
        ])
        .err()
        .unwrap_or_else(|| panic!("rendered invalid values {values}"));
        assert!(
            failure.stderr.contains(needle),
            "{values}: {}",
            failure.stderr
        );
    }
}

/// The RoleBinding mode on the real API server: the chart's ServiceAccount may get Secrets
/// in the listed namespace and nowhere else, and the controller running with it reads a
/// Secret there while an object elsewhere naming a Secret gets `InvalidSecret`. The
/// NetworkPolicy is stored by a 1.20 server unchanged (nothing enforces it here: no CNI).
#[tokio::test(flavor = "multi_thread")]
async fn secrets_in_listed_namespaces_only_on_kube_apiserver_1_20() {
    let kube = Kube::start().await;
    let registry = imagesync_e2e::registry::Registry::start().await;
    let reg = registry.addr().to_owned();
    let source = imagesync_e2e::fixtures::push_index(&reg, "src/app", "v1", 43).await;
    for ns in ["team-a", "team-b"] {
        kube.create_namespace(ns).await;
    }
    let values = json!({"insecureRegistries": [reg], "logFormat": "text",
        "rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-a"]}},
        "networkPolicy": {"enabled": true, "apiServer": {"cidrs": ["127.0.0.1/32"]}}});
    let out = helm_install(&kube, RELEASE, RELEASE_NS, &values)
        .unwrap_or_else(|f| panic!("install: {f:?}"));
    assert_release_stored(&kube, &objects(&out)).await;

    let sa_kubeconfig = kube
        .server
        .service_account_kubeconfig(RELEASE_NS, FULLNAME)
        .await;
    let sa = imagesync_e2e::kube::client_for(&sa_kubeconfig).await;
    assert!(can_i(&sa, "get", "", "secrets", "team-a").await);
    for (verb, ns) in [
        ("get", "team-b"),
        ("get", "default"),
        ("get", RELEASE_NS),
        ("list", "team-a"),
        ("watch", "team-a"),
    ] {
        assert!(
            !can_i(&sa, verb, "", "secrets", ns).await,
            "SA must not {verb} secrets in {ns}"
        );
    }
    assert!(can_i(&sa, "patch", "imagesync.dev", "imagesyncs/status", "team-b").await);

    // The controller with exactly these permissions.
    let metrics_port = imagesync_e2e::registry::free_port().expect("free port");
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let args = rendered_controller_args(&kube, &[("--metrics-addr", &metrics_addr)]).await;
    let log = kube.server.dir().join("controller.log");
    let controller = Launch::new(&sa_kubeconfig, &log)
        .args(&args)
        .metrics_addr(&metrics_addr)
        .env("RUST_LOG", "info")
        .start();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = format!(
        r#"{{"auths":{{"{reg}":{{"auth":"{}"}}}}}}"#,
        b64.encode("u:p")
    );
    for ns in ["team-a", "team-b"] {
        kube.create(
            &format!("/api/v1/namespaces/{ns}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                   "type": "kubernetes.io/dockerconfigjson",
                   "data": {".dockerconfigjson": b64.encode(&config)}}),
        )
        .await;
        kube.create(
            &format!("/apis/imagesync.dev/v1alpha1/namespaces/{ns}/imagesyncs"),
            json!({"apiVersion": "imagesync.dev/v1alpha1", "kind": "ImageSync",
                   "metadata": {"name": "app"},
                   "spec": {"source": format!("{reg}/src/app:v1"),
                            "destination": format!("{reg}/dst/{ns}:v1"),
                            "destinationSecretRef": {"name": "creds"}}}),
        )
        .await;
    }
    let path = |ns: &str| format!("/apis/imagesync.dev/v1alpha1/namespaces/{ns}/imagesyncs/app");
    eventually(90, "team-a/app Ready=True with its Secret", || async {
        controller.assert_running();
        let (_, obj) = kube.get(&path("team-a")).await;
        ready_condition(&obj).is_some_and(|c| c["status"] == "True")
    })
    .await;
    let (_, obj) = kube.get(&path("team-a")).await;
    assert_eq!(obj["status"]["destinationDigest"], source.digest.as_str());
    eventually(60, "team-b/app InvalidSecret", || async {
        controller.assert_running();
        let (_, obj) = kube.get(&path("team-b")).await;
        ready_condition(&obj).is_some_and(|c| c["reason"] == "InvalidSecret")
    })
    .await;
    let (_, obj) = kube.get(&path("team-b")).await;
    let message = ready_condition(&obj).expect("Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("team-b/creds") && message.contains("cannot read it"),
        "{message}"
    );
    assert_eq!(
        imagesync_e2e::fixtures::manifest_status(&reg, "dst/team-b", "v1").await,
        404,
        "nothing copied for team-b"
    );
    controller.assert_running();
}
