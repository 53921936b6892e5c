//! Platform selection (issue 18) at the engine, against real registries, with skopeo as
//! the independent checker: one platform is that child byte for byte, several a
//! deterministic index of just those entries, a source gaining a platform is not drift,
//! and a platform the source lacks is an error naming the ones it has.
//!
//! The fixture helpers here are shared with the CLI, Terraform and controller scenarios.

use std::time::Duration;

use serde_json::{json, Value};

use imagesync_e2e::fixtures::{self, FixtureSpec, MediaKind, Target, OCI_INDEX};
use imagesync_e2e::registry::Registry;
use imagesync_engine::{
    Engine, EngineConfig, ErrorKind, Platform, Reference, RetryPolicy, Selection, SyncOptions,
};

use crate::engine::recording_observer;

/// A platform of a fixture index: `(os, architecture, variant)`.
pub(crate) type Plat = (&'static str, &'static str, Option<&'static str>);

pub(crate) const AMD64: Plat = ("linux", "amd64", None);
pub(crate) const ARM64_V8: Plat = ("linux", "arm64", Some("v8"));
pub(crate) const S390X: Plat = ("linux", "s390x", None);
pub(crate) const PPC64LE: Plat = ("linux", "ppc64le", None);

/// A pushed multi-platform index.
pub(crate) struct PlatformIndex {
    /// The index's digest.
    pub(crate) digest: String,
    /// `(platform string, child digest, child manifest bytes)` in index order.
    pub(crate) children: Vec<(String, String, Vec<u8>)>,
}

impl PlatformIndex {
    /// The child digest of `platform` (`os/arch[/variant]`).
    pub(crate) fn child(&self, platform: &str) -> &str {
        &self
            .children
            .iter()
            .find(|c| c.0 == platform)
            .unwrap_or_else(|| panic!("fixture has no {platform}"))
            .1
    }
}

/// Pushes an OCI index of one image per platform (children by digest, then the index
/// under `tag`), with index annotations. The child for a platform depends only on
/// `seed` and the platform, so pushing a superset later keeps the earlier children.
pub(crate) async fn push_platform_index(
    target: &Target,
    repo: &str,
    tag: &str,
    seed: u64,
    platforms: &[Plat],
) -> PlatformIndex {
    let mut entries = Vec::new();
    let mut children = Vec::new();
    for (os, arch, variant) in platforms {
        let label = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        let child_seed = seed
            .wrapping_mul(131)
            .wrapping_add(label.bytes().map(u64::from).sum::<u64>());
        let spec = FixtureSpec {
            seed: child_seed,
            layers: 2,
            layer_size: 16 * 1024,
            media: MediaKind::Oci,
            platform: (os.to_string(), arch.to_string()),
            ..FixtureSpec::default()
        };
        let child = target.push_image_at(repo, None, &spec).await.unwrap();
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        entries.push(json!({
            "mediaType": child.media_type,
            "digest": child.digest,
            "size": child.manifest.len(),
            "platform": platform,
            "annotations": {"dev.imagesync.e2e.platform": label},
        }));
        children.push((label, child.digest, child.manifest));
    }
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
        "annotations": {"org.opencontainers.image.title": "platforms fixture", "dev.imagesync.e2e.seed": seed.to_string()},
    }))
    .unwrap();
    let digest = target
        .put_manifest(repo, tag, OCI_INDEX, &manifest)
        .await
        .unwrap();
    PlatformIndex { digest, children }
}

fn engine_for(registries: &[&str]) -> Engine {
    Engine::new(EngineConfig {
        insecure_registries: registries.iter().map(|s| s.to_string()).collect(),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
        ..EngineConfig::default()
    })
    .unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn select(platforms: &[&str]) -> SyncOptions {
    SyncOptions {
        platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
        ..SyncOptions::default()
    }
}

/// `skopeo inspect --raw` of `reference` at a plain-HTTP registry: the exact bytes.
pub(crate) async fn skopeo_raw(reference: &str) -> Vec<u8> {
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pulls `reference` back with `skopeo copy` (every platform it has) into a directory:
/// skopeo reads every manifest and blob and checks each against its digest.
pub(crate) async fn skopeo_pull(reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("skopeo")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.path().join("image").display()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn have_skopeo() -> bool {
    let ok = imagesync_e2e::have("skopeo");
    if !ok {
        eprintln!("skopeo not installed; the platform tests need it as the checker");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_platform_is_that_child_byte_for_byte() {
    if !have_skopeo() {
        return;
    }
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let idx = push_platform_index(&src.target(), "app", "1", 1801, &[AMD64, ARM64_V8, S390X]).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("one/app:1")),
            &select(&["linux/arm64/v8"]),
        )
        .await
        .unwrap();
    let child = idx.child("linux/arm64/v8");
    assert_eq!(out.source_digest.to_string(), idx.digest);
    assert_eq!(out.destination_digest.to_string(), child);
    assert_eq!(out.id, format!("{}/one/app@{child}", dst.addr()));
    let raw = skopeo_raw(&dst.reference("one/app:1")).await;
    let want = &idx.children.iter().find(|c| c.1 == child).unwrap().2;
    assert_eq!(&raw, want, "the child manifest byte for byte");
    skopeo_pull(&dst.reference("one/app:1")).await;
    // The other platforms' manifests were not copied.
    for other in ["linux/amd64", "linux/s390x"] {
        assert_eq!(
            dst.manifest_status("one/app", idx.child(other)).await,
            404,
            "{other} must not be copied"
        );
    }
    // `linux/arm64` is the same platform (containerd's rule): the same digest.
    let again = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("one/app:1")),
            &select(&["linux/arm64"]),
        )
        .await
        .unwrap();
    assert!(again.up_to_date);
    assert_eq!(again.destination_digest, out.destination_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_platforms_give_a_deterministic_index_of_just_those() {
    if !have_skopeo() {
        return;
    }
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let idx = push_platform_index(&src.target(), "app", "1", 1802, &[AMD64, ARM64_V8, S390X]).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("two/app:1")),
            &select(&["linux/s390x", "linux/amd64"]),
        )
        .await
        .unwrap();
    assert_ne!(out.destination_digest.to_string(), idx.digest);
    let raw = skopeo_raw(&dst.reference("two/app:1")).await;
    assert_eq!(fixtures::sha256(&raw), out.destination_digest.to_string());
    let written: Value = serde_json::from_slice(&raw).unwrap();
    let digests: Vec<&str> = written["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    // Only the selected entries, in the source's order, as the source wrote them.
    assert_eq!(
        digests,
        [idx.child("linux/amd64"), idx.child("linux/s390x")]
    );
    assert_eq!(
        written["manifests"][1]["annotations"]["dev.imagesync.e2e.platform"],
        "linux/s390x"
    );
    // The index's other fields and annotations are kept.
    assert_eq!(written["mediaType"], OCI_INDEX);
    assert_eq!(written["schemaVersion"], 2);
    assert_eq!(
        written["annotations"]["org.opencontainers.image.title"],
        "platforms fixture"
    );
    skopeo_pull(&dst.reference("two/app:1")).await;
    assert_eq!(
        dst.manifest_status("two/app", idx.child("linux/arm64/v8"))
            .await,
        404
    );

    // The same selection, listed in another order, into another repository and by a
    // fresh engine: the same digest.
    let fresh = engine_for(&[src.addr(), dst.addr()]);
    let twice = fresh
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("again/app:1")),
            &select(&["linux/amd64", "linux/s390x"]),
        )
        .await
        .unwrap();
    assert!(!twice.up_to_date);
    assert_eq!(twice.destination_digest, out.destination_digest);
    assert_eq!(
        skopeo_raw(&dst.reference("again/app:1")).await,
        raw,
        "same bytes"
    );
    // Run again in place: nothing to do.
    let noop = fresh
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("again/app:1")),
            &select(&["linux/s390x", "linux/amd64"]),
        )
        .await
        .unwrap();
    assert!(noop.up_to_date);
    assert_eq!(noop.manifests_pushed, 0);
}

/// Manifest requests (HEAD or GET) an engine sent, by operation label.
fn manifest_requests(seen: &crate::engine::Seen) -> Vec<&'static str> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, op, _)| *op)
        .filter(|op| op.contains("manifest") || op.contains("blob"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_gains_a_platform_is_not_drift_and_a_recheck_stays_two_heads() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let two = [AMD64, ARM64_V8];
    let before = push_platform_index(&src.target(), "app", "1", 1803, &two).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let (s, d) = (r(&src.reference("app:1")), r(&dst.reference("m/app:1")));
    let opts = select(&["linux/amd64", "linux/arm64/v8"]);
    let first = e.sync(&s, &d, &opts).await.unwrap();
    let known = Selection {
        source_digest: first.source_digest.clone(),
        digest: first.destination_digest.clone(),
    };

    // A re-check that knows the last selection costs a HEAD at each side, nothing else.
    let (observer, seen) = recording_observer();
    let observed = Engine::new(EngineConfig {
        insecure_registries: vec![src.addr().to_string(), dst.addr().to_string()],
        observer: Some(observer),
        ..EngineConfig::default()
    })
    .unwrap();
    let with_known = SyncOptions {
        known: Some(known.clone()),
        ..opts.clone()
    };
    let noop = observed.sync(&s, &d, &with_known).await.unwrap();
    assert!(noop.up_to_date);
    assert_eq!(manifest_requests(&seen), ["HEAD manifest", "HEAD manifest"]);
    seen.lock().unwrap().clear();
    let resolved = observed
        .resolve(&s, &opts.platforms, Some(&known))
        .await
        .unwrap();
    assert_eq!(resolved, Some(known.clone()));
    assert_eq!(manifest_requests(&seen), ["HEAD manifest"]);
    seen.lock().unwrap().clear();
    // Without `known`, the selection is made again: one GET of the source index.
    let fresh = observed.resolve(&s, &opts.platforms, None).await.unwrap();
    assert_eq!(fresh, Some(known.clone()));
    assert_eq!(manifest_requests(&seen), ["HEAD manifest", "GET manifest"]);

    // The source gains s390x: another index digest, the same selection.
    let after =
        push_platform_index(&src.target(), "app", "1", 1803, &[AMD64, ARM64_V8, S390X]).await;
    assert_ne!(after.digest, before.digest);
    assert_eq!(after.child("linux/amd64"), before.child("linux/amd64"));
    let now = e
        .resolve(&s, &opts.platforms, Some(&known))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.source_digest.to_string(), after.digest);
    assert_eq!(now.digest, known.digest, "not drift");
    let synced = e.sync(&s, &d, &with_known).await.unwrap();
    assert!(synced.up_to_date, "nothing written");
    assert_eq!(synced.manifests_pushed, 0);
    assert_eq!(synced.destination_digest, known.digest);
    assert_eq!(synced.source_digest.to_string(), after.digest);
    // The whole image (no selection) did change.
    let whole = e.resolve(&s, &[], None).await.unwrap().unwrap();
    assert_eq!(whole.digest.to_string(), after.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_the_source_lacks_is_an_error_naming_the_ones_it_has() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    push_platform_index(&src.target(), "app", "1", 1804, &[AMD64, ARM64_V8]).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let err = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("x/app:1")),
            &select(&["linux/amd64", "linux/ppc64le"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!err.is_not_found(), "never 'gone': {err}");
    let text = err.to_string();
    assert!(text.contains("has no platform linux/ppc64le"), "{text}");
    assert!(
        text.contains("it has linux/amd64, linux/arm64/v8"),
        "{text}"
    );
    assert_eq!(
        dst.manifest_status("x/app", "1").await,
        404,
        "nothing tagged"
    );
    let err = e
        .resolve(
            &r(&src.reference("app:1")),
            &[Platform::parse("windows/amd64").unwrap()],
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("windows/amd64"), "{err}");
    let _ = PPC64LE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_platform_source_matches_or_is_an_error() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let arm = FixtureSpec {
        platform: ("linux".into(), "arm64".into()),
        ..FixtureSpec::seeded(1805)
    };
    let pushed = fixtures::push_image(src.addr(), "single", "1", arm).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let (s, d) = (r(&src.reference("single:1")), r(&dst.reference("single:1")));
    let out = e.sync(&s, &d, &select(&["linux/arm64/v8"])).await.unwrap();
    assert_eq!(out.destination_digest.to_string(), pushed.digest);
    fixtures::assert_identical(dst.addr(), "single", "1", &pushed).await;
    let err = e
        .sync(&s, &r(&dst.reference("other:1")), &select(&["linux/amd64"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string()
            .contains("has no platform linux/amd64; it has linux/arm64"),
        "{err}"
    );
    // Two platforms of a one-platform image: the one it lacks is named.
    let err = e
        .sync(&s, &d, &select(&["linux/arm64", "linux/amd64"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has no platform linux/amd64"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_known_selection_is_caught_not_copied() {
    // `known` claims a digest the source's selection does not give (a corrupted state):
    // the copy makes the selection again and refuses to write.
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let idx = push_platform_index(&src.target(), "app", "1", 1806, &[AMD64, ARM64_V8]).await;
    let e = engine_for(&[src.addr(), dst.addr()]);
    let bogus = SyncOptions {
        known: Some(Selection {
            source_digest: idx.digest.parse().unwrap(),
            digest: idx.child("linux/arm64/v8").parse().unwrap(),
        }),
        ..select(&["linux/amd64"])
    };
    let err = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("app:1")),
            &bogus,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(dst.manifest_status("app", "1").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_lying_about_a_selected_childs_size_is_refused() {
    // A hostile (or broken) source index whose entry for the selected platform gives a
    // size the child does not have: nothing is tagged.
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let target = src.target();
    let idx = push_platform_index(&target, "app", "1", 1807, &[AMD64, ARM64_V8]).await;
    let (_, bytes) = fixtures::get_manifest(src.addr(), "app", "1")
        .await
        .unwrap();
    let mut index: Value = serde_json::from_slice(&bytes).unwrap();
    index["manifests"][0]["size"] = json!(7);
    let lying = serde_json::to_vec(&index).unwrap();
    target
        .put_manifest("app", "lying", OCI_INDEX, &lying)
        .await
        .unwrap();
    let e = engine_for(&[src.addr(), dst.addr()]);
    let err = e
        .sync(
            &r(&src.reference("app:lying")),
            &r(&dst.reference("app:1")),
            &select(&["linux/amd64"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("7 bytes"), "{err}");
    assert_eq!(dst.manifest_status("app", "1").await, 404);
    assert_eq!(
        dst.manifest_status("app", idx.child("linux/amd64")).await,
        404
    );
}
