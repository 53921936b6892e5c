//! Issue 17, the Terraform half: the `imagesync_tags` and `imagesync_image` data sources
//! under real Terraform (1.11.4 through `dev_overrides`, 1.0.3 through a filesystem
//! mirror, both on protocol 6; the tag set and `validate` also on 0.13.4, protocol 5)
//! against real distribution registries:
//! - a `for_each` over `imagesync_tags` with regex and semver filters mirrors exactly
//!   the matching tags; a new matching tag at the source is exactly one `create` in the
//!   next plan, tags that do not match never appear; `latest` follows new versions;
//! - `imagesync_image` gives the digest, the pinned `id` and the platforms of a
//!   multi-platform index (checked against `skopeo inspect --raw`), a HEAD only for a
//!   single image and a HEAD and one GET for an index; a missing image is an error at
//!   `reference`;
//! - invalid filters are refused by `terraform validate`, each at its attribute;
//! - in Kubernetes mode the data sources read the registry directly too.

use std::collections::BTreeMap;

use imagesync_e2e::fixtures::{self, FixtureSpec, Target};
use imagesync_e2e::kube::ApiServer;
use imagesync_e2e::registry::Registry;
use serde_json::{json, Value};

use crate::platforms::{push_platform_index, skopeo_raw, AMD64, ARM64_V8, S390X};
use crate::terraform::{actions, combined, json_in, spec, tag_digest, Tf};

/// The value of output `name` (any type).
async fn output(tf: &Tf, name: &str) -> Value {
    let out = tf.ok(&["output", "-json"]).await;
    json_in(&out.stdout)[name]["value"].clone()
}

/// The planned actions of the `imagesync` resources only.
async fn resource_actions(tf: &Tf) -> BTreeMap<String, Vec<String>> {
    tf.plan_actions()
        .await
        .into_iter()
        .filter(|(address, _)| address.starts_with("imagesync."))
        .collect()
}

fn address(tag: &str) -> String {
    format!("imagesync.app[\"{tag}\"]")
}

/// The tag set of the docs: a regex and a semver filter select the tags, `for_each`
/// makes one `imagesync` resource per tag; a second data source keeps the newest two.
fn tag_set_config(a: &Registry, b: &Registry) -> String {
    let repo = a.reference("src/app");
    let dst = b.reference("dst/app");
    format!(
        r#"data "imagesync_tags" "app" {{
  repository = "{repo}"
  include    = "v?1\\.[0-9]+\\.[0-9]+"
  exclude    = "1\\.25\\.5"
  semver     = ">=1.25, <2"
}}

data "imagesync_tags" "newest" {{
  repository = "{repo}"
  semver     = "*"
  latest     = 2
}}

resource "imagesync" "app" {{
  for_each    = toset(data.imagesync_tags.app.tags)
  source      = "{repo}:${{each.key}}"
  destination = "{dst}:${{each.key}}"
}}

output "tags" {{
  value = data.imagesync_tags.app.tags
}}

output "newest" {{
  value = data.imagesync_tags.newest.tags
}}
"#
    )
}

async fn push_tags(a: &Registry, tags: &[&str], seed: u64) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for (i, tag) in tags.iter().enumerate() {
        let pushed = fixtures::push_image(a.addr(), "src/app", tag, spec(seed + i as u64)).await;
        digests.insert(tag.to_string(), pushed.digest);
    }
    digests
}

async fn tag_set(version: &'static str) {
    let (a, b) = tokio::join!(Registry::start(), Registry::start());
    let tf = Tf::new(version);
    // "latest" and "1.25" fail the regex (three numbers), "1.25.5" is excluded, 1.24.0
    // and 2.0.0 fail the constraint, 1.26.0-rc.1 is a pre-release the constraint does
    // not name.
    let first = [
        "latest",
        "1.24.0",
        "1.25",
        "1.25.0",
        "v1.25.1",
        "1.25.5",
        "1.26.0-rc.1",
        "2.0.0",
    ];
    let mut digests = push_tags(&a, &first, 300).await;
    tf.config(&[&a, &b], &tag_set_config(&a, &b));
    tf.init().await;
    tf.apply(&[]).await;
    assert_eq!(output(&tf, "tags").await, json!(["1.25.0", "v1.25.1"]));
    assert_eq!(output(&tf, "newest").await, json!(["2.0.0", "1.25.5"]));
    for tag in ["1.25.0", "v1.25.1"] {
        assert_eq!(
            tag_digest(&b, "dst/app", tag).await.as_deref(),
            Some(digests[tag].as_str()),
            "{tag}"
        );
    }
    for tag in ["latest", "1.24.0", "1.25", "1.25.5", "1.26.0-rc.1", "2.0.0"] {
        assert_eq!(
            fixtures::manifest_status(b.addr(), "dst/app", tag).await,
            404,
            "{tag} was mirrored"
        );
    }
    assert_eq!(
        resource_actions(&tf).await,
        BTreeMap::from([
            (address("1.25.0"), actions(&["no-op"])),
            (address("v1.25.1"), actions(&["no-op"])),
        ])
    );

    // New tags at the source: only 1.26.0 matches, and the next plan adds exactly it.
    let second = ["1.26.0", "1.26.1-rc.1", "3.0.0", "1.27", "1.26.0-alpine"];
    digests.extend(push_tags(&a, &second, 400).await);
    assert_eq!(
        resource_actions(&tf).await,
        BTreeMap::from([
            (address("1.25.0"), actions(&["no-op"])),
            (address("1.26.0"), actions(&["create"])),
            (address("v1.25.1"), actions(&["no-op"])),
        ])
    );
    tf.apply(&[]).await;
    assert_eq!(
        output(&tf, "tags").await,
        json!(["1.25.0", "1.26.0", "v1.25.1"])
    );
    assert_eq!(output(&tf, "newest").await, json!(["3.0.0", "2.0.0"]));
    assert_eq!(
        tag_digest(&b, "dst/app", "1.26.0").await.as_deref(),
        Some(digests["1.26.0"].as_str())
    );
    for tag in ["1.26.1-rc.1", "3.0.0", "1.27", "1.26.0-alpine"] {
        assert_eq!(
            fixtures::manifest_status(b.addr(), "dst/app", tag).await,
            404,
            "{tag} was mirrored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_for_each_over_a_tag_set() {
    tag_set("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_3_for_each_over_a_tag_set() {
    tag_set("1.0.3").await;
}

/// Protocol 5 (0.13 speaks only 5; the later versions pick 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_0_13_4_for_each_over_a_tag_set_protocol_5() {
    tag_set("0.13.4").await;
}

fn image_config(names: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (name, reference) in names {
        out.push_str(&format!(
            "data \"imagesync_image\" \"{name}\" {{\n  reference = \"{reference}\"\n}}\n\noutput \"{name}\" {{\n  value = data.imagesync_image.{name}\n}}\n\n"
        ));
    }
    out
}

/// The manifest requests in the access log of `repo`: `METHOD reference`.
async fn manifest_requests(reg: &Registry, repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/manifests/");
    reg.access_log_settled()
        .await
        .into_iter()
        .filter_map(|e| {
            e.path
                .strip_prefix(&prefix)
                .map(|r| format!("{} {r}", e.method))
        })
        .collect()
}

/// `(platform, digest)` of every entry of an index, read from its raw bytes.
fn index_platforms(raw: &[u8]) -> Vec<Value> {
    let index: Value = serde_json::from_slice(raw).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut label = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                label = format!("{label}/{v}");
            }
            json!({"platform": label, "digest": m["digest"]})
        })
        .collect()
}

async fn image(version: &'static str) {
    if !crate::platforms::have_skopeo() {
        return;
    }
    let a = Registry::start().await;
    let tf = Tf::new(version);
    let target = Target::plain(a.addr());
    let index =
        push_platform_index(&target, "src/multi", "v1", 17, &[AMD64, ARM64_V8, S390X]).await;
    let single = fixtures::push_image(a.addr(), "src/single", "v1", FixtureSpec::seeded(18)).await;
    let pinned = format!("{}@{}", a.reference("src/multi"), index.digest);
    tf.config(
        &[&a],
        &image_config(&[
            ("multi", a.reference("src/multi:v1")),
            ("single", a.reference("src/single:v1")),
            ("pinned", pinned.clone()),
        ]),
    );
    tf.init().await;
    tf.apply(&[]).await;

    // The index: skopeo's raw bytes hash to the digest, and list these platforms.
    let raw = skopeo_raw(&a.reference("src/multi:v1")).await;
    assert_eq!(fixtures::sha256(&raw), index.digest);
    let multi = output(&tf, "multi").await;
    assert_eq!(multi["digest"], index.digest.as_str());
    assert_eq!(
        multi["id"],
        format!("{}/src/multi@{}", a.addr(), index.digest).as_str()
    );
    assert_eq!(multi["platforms"], Value::Array(index_platforms(&raw)));
    let labels: Vec<&str> = multi["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["linux/amd64", "linux/arm64/v8", "linux/s390x"]);
    assert_eq!(
        multi["platforms"][1]["digest"],
        index.child("linux/arm64/v8")
    );
    // Pinned by digest: the same answer.
    let by_digest = output(&tf, "pinned").await;
    assert_eq!(by_digest["digest"], multi["digest"]);
    assert_eq!(by_digest["platforms"], multi["platforms"]);
    assert_eq!(by_digest["reference"], pinned.as_str());

    // A single image: its digest, no platforms.
    let raw = skopeo_raw(&a.reference("src/single:v1")).await;
    assert_eq!(fixtures::sha256(&raw), single.digest);
    let one = output(&tf, "single").await;
    assert_eq!(one["digest"], single.digest.as_str());
    assert_eq!(
        one["id"],
        format!("{}/src/single@{}", a.addr(), single.digest).as_str()
    );
    assert_eq!(one["platforms"], json!([]));

    // The cost of a read (a plan reads each data source once): a HEAD for the single
    // image, a HEAD and one GET of the index for the multi-platform one.
    a.clear_access_log();
    tf.ok(&["plan", "-input=false", "-no-color"]).await;
    assert_eq!(manifest_requests(&a, "src/single").await, ["HEAD v1"]);
    let mut multi_requests = manifest_requests(&a, "src/multi").await;
    multi_requests.sort();
    let by_digest = format!("GET {}", index.digest);
    assert_eq!(
        multi_requests,
        [
            by_digest.as_str(),
            by_digest.as_str(),
            &format!("HEAD {}", index.digest),
            "HEAD v1"
        ]
    );

    // A missing image, and a missing repository: an error at `reference`.
    for (name, reference) in [
        ("missing", a.reference("src/multi:nope")),
        ("norepo", a.reference("src/none:v1")),
    ] {
        tf.config(&[&a], &image_config(&[(name, reference.clone())]));
        let out = tf.run(&["plan", "-input=false", "-no-color"]).await;
        assert!(!out.status.success());
        let text = combined(&out);
        assert!(text.contains("Error: Image not found"), "{text}");
        assert!(
            text.contains(&format!("{reference} does not exist")),
            "{text}"
        );
        assert_at_attribute(&text, "imagesync_image", name, "reference");
    }
}

/// The diagnostic in Terraform's text output points at `attribute` of the data source:
/// the source line it quotes is that attribute's (not the block's first line).
fn assert_at_attribute(text: &str, kind: &str, name: &str, attribute: &str) {
    let header = format!("in data \"{kind}\" \"{name}\":");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(&header))
        .unwrap_or_else(|| panic!("no {header} in:\n{text}"));
    let quoted = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        quoted.contains(&format!("{attribute} =")),
        "the diagnostic quotes {quoted:?}, not {attribute}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_image_digest_id_and_platforms() {
    image("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_3_image_digest_id_and_platforms() {
    image("1.0.3").await;
}

/// `terraform validate` (no provider configured, no registry involved) refuses each bad
/// filter with a clear message at its attribute, all of them in one run.
async fn invalid_filters(version: &'static str) {
    let tf = Tf::new(version);
    let body = r#"data "imagesync_tags" "bad" {
  repository = "127.0.0.1:5000/src/app:1.0"
  include    = "(unclosed"
  exclude    = "(a{1000}){1000}"
  semver     = ">=banana"
  latest     = 0
}

data "imagesync_tags" "fraction" {
  repository = "127.0.0.1:5000/src/app"
  latest     = 2.5
}

data "imagesync_image" "bad" {
  reference = "Not A Reference"
}
"#;
    tf.config_with("insecure_registries = [\"127.0.0.1:5000\"]", body);
    tf.init().await;
    let main = std::fs::read_to_string(tf.work().join("main.tf")).unwrap();
    let line_of = |needle: &str| {
        main.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in main.tf"))
            + 1
    };
    let out = tf.run(&["validate", "-json", "-no-color"]).await;
    assert!(!out.status.success(), "{}", combined(&out));
    let json = json_in(&out.stdout);
    assert_eq!(json["valid"], false, "{json}");
    let diags = json["diagnostics"].as_array().unwrap();
    let expect = [
        (
            "repository = \"127.0.0.1:5000/src/app:1.0\"",
            "Invalid \"repository\"",
            "names a tag or digest",
        ),
        (
            "\"(unclosed\"",
            "Invalid \"include\" tag filter",
            "include: not a usable regular expression",
        ),
        (
            "\"(a{1000}){1000}\"",
            "Invalid \"exclude\" tag filter",
            "size limit",
        ),
        (
            "\">=banana\"",
            "Invalid \"semver\" tag filter",
            "semver: \">=banana\" is not a version constraint such as \">=1.25, <2\"",
        ),
        (
            "latest     = 0",
            "Invalid \"latest\" tag filter",
            "latest: must be between 1 and 1000, not 0",
        ),
        (
            "latest     = 2.5",
            "Invalid \"latest\" tag filter",
            "latest: must be a whole number between 1 and 1000",
        ),
        ("\"Not A Reference\"", "Invalid \"reference\"", "spaces"),
    ];
    for (needle, summary, detail) in expect {
        let line = line_of(needle) as u64;
        let found = diags.iter().any(|d| {
            d["severity"] == "error"
                && d["summary"] == summary
                && d["detail"].as_str().is_some_and(|t| t.contains(detail))
                && d["range"]["start"]["line"] == line
        });
        assert!(
            found,
            "no {summary:?} ({detail:?}) at line {line}:\n{json:#}"
        );
    }
    // Nothing else is an error (1.11.4 adds a warning about `dev_overrides`).
    let errors = diags.iter().filter(|d| d["severity"] == "error").count();
    assert_eq!(errors, expect.len(), "{json:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_invalid_filters_fail_validate() {
    invalid_filters("1.11.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_0_3_invalid_filters_fail_validate() {
    invalid_filters("1.0.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_0_13_4_invalid_filters_fail_validate_protocol_5() {
    invalid_filters("0.13.4").await;
}

/// Kubernetes mode: the data sources still read the registry directly, with the
/// provider block's `insecure_registries` (no controller, no object involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_data_sources_in_kubernetes_mode() {
    let (api, a) = tokio::join!(ApiServer::start(), Registry::start());
    let digests = push_tags(&a, &["1.0.0", "1.1.0", "2.0.0", "edge"], 500).await;
    let tf = Tf::new("1.11.4");
    tf.config_with(
        &format!(
            "insecure_registries = [\"{}\"]\n  kubernetes {{\n    config_path = \"{}\"\n    namespace   = \"default\"\n  }}",
            a.addr(),
            api.kubeconfig().display()
        ),
        &format!(
            "data \"imagesync_tags\" \"app\" {{\n  repository = \"{repo}\"\n  semver     = \"^1\"\n}}\n\ndata \"imagesync_image\" \"edge\" {{\n  reference = \"{repo}:edge\"\n}}\n\noutput \"tags\" {{\n  value = data.imagesync_tags.app.tags\n}}\n\noutput \"edge\" {{\n  value = data.imagesync_image.edge.digest\n}}\n",
            repo = a.reference("src/app")
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    assert_eq!(output(&tf, "tags").await, json!(["1.0.0", "1.1.0"]));
    assert_eq!(output(&tf, "edge").await, digests["edge"].as_str());
}

/// A repository of 1,201 tags: all of them listed, `latest` finds the highest among them,
/// and a read costs one tag-list request per page. (Debian's distribution 2.8 ignores
/// `n` and answers in one page; following `Link` pages, and their caps, is covered against
/// a proxy whose pages link on forever, `hostile::an_endless_tag_list_stops_at_the_page_cap_and_a_cycle_is_detected`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_1_11_4_a_repository_of_1201_tags() {
    use futures::StreamExt as _;
    let a = Registry::start().await;
    let image = fixtures::push_image(a.addr(), "src/app", "0.1.0", spec(600)).await;
    let target = Target::plain(a.addr());
    let tags: Vec<String> = (0..1200).map(|i| format!("1.{}.0", i)).collect();
    futures::stream::iter(tags.iter())
        .for_each_concurrent(16, |tag| {
            let (target, image) = (&target, &image);
            async move {
                target
                    .put_manifest("src/app", tag, &image.media_type, &image.manifest)
                    .await
                    .unwrap();
            }
        })
        .await;
    let tf = Tf::new("1.11.4");
    tf.config(
        &[&a],
        &format!(
            "data \"imagesync_tags\" \"all\" {{\n  repository = \"{repo}\"\n}}\n\ndata \"imagesync_tags\" \"newest\" {{\n  repository = \"{repo}\"\n  latest     = 2\n}}\n\noutput \"count\" {{\n  value = length(data.imagesync_tags.all.tags)\n}}\n\noutput \"newest\" {{\n  value = data.imagesync_tags.newest.tags\n}}\n",
            repo = a.reference("src/app")
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    assert_eq!(output(&tf, "count").await, json!(1201));
    assert_eq!(output(&tf, "newest").await, json!(["1.1199.0", "1.1198.0"]));
    a.clear_access_log();
    tf.ok(&["plan", "-input=false", "-no-color"]).await;
    let pages = a
        .access_log_settled()
        .await
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/v2/src/app/tags/list"))
        .count();
    // Two data sources, one page each.
    assert_eq!(pages, 2);
}
