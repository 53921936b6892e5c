//! Referrers with a platform selection (issues 14 and 18), on the real registry: the
//! signatures, attestations and SBOMs that follow are those of the manifests that were
//! copied (the selected child, or the new index's selected children), not those of the
//! source index or of platforms left out.

use std::collections::BTreeSet;

use imagesync_e2e::fixtures::{self, OCI_MANIFEST};
use imagesync_e2e::registry::Registry;
use imagesync_engine::{Outcome, Reference, SyncOptions};

use crate::platforms::{push_platform_index, AMD64, ARM64_V8, S390X};
use crate::referrers::{
    attach_fallback, cosign_sign, cosign_verify, engine, fallback_tag, new_signer,
};

const SPDX: &str = "text/spdx+json";

fn options(platforms: &[&str]) -> SyncOptions {
    SyncOptions {
        platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
        ..SyncOptions::default()
    }
}

fn subjects(o: &Outcome) -> BTreeSet<String> {
    o.referrers.iter().map(|r| r.subject.to_string()).collect()
}

fn copied(o: &Outcome) -> BTreeSet<String> {
    o.referrers.iter().map(|r| r.digest.to_string()).collect()
}

/// A three-platform index whose index and every child are signed (cosign `.sig`), with an
/// SBOM on the amd64 child in its fallback index. Selecting one platform copies that
/// child with its own signature and SBOM; selecting two copies the new index with both
/// children's signatures. Neither takes the source index's signature (its subject is not
/// at the mirror) nor the signature of the platform left out. Each copied signature
/// verifies at the mirror with cosign's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_follow_the_selected_platforms() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let t = src.target();
    let image = push_platform_index(&t, "app", "1", 1814, &[AMD64, ARM64_V8, S390X]).await;
    let identity = format!("{}/app", src.addr());
    let (signer, pem) = new_signer();
    let index_sig = cosign_sign(&t, "app", &image.digest, &identity, &[&signer]).await;
    let mut child_sigs = Vec::new();
    for (_, child, _) in &image.children {
        child_sigs.push(cosign_sign(&t, "app", child, &identity, &[&signer]).await);
    }
    let amd64 = image.child("linux/amd64").to_string();
    let arm64 = image.child("linux/arm64/v8").to_string();
    let amd64_len = image.children[0].2.len();
    let sbom = attach_fallback(
        &t,
        "app",
        (&amd64, OCI_MANIFEST, amd64_len),
        SPDX,
        1815,
        true,
    )
    .await;
    let e = engine(&[src.addr(), dst.addr()]);
    let source = Reference::parse(&src.reference("app:1")).unwrap();

    // One platform: the child, byte for byte, with its own referrers.
    let one_dst = Reference::parse(&dst.reference("m/one:1")).unwrap();
    let one = e
        .sync(&source, &one_dst, &options(&["linux/amd64"]))
        .await
        .unwrap();
    assert_eq!(one.destination_digest.as_str(), amd64);
    assert_eq!(subjects(&one), BTreeSet::from([amd64.clone()]));
    assert_eq!(
        copied(&one),
        BTreeSet::from([child_sigs[0].digest.clone(), sbom.digest.clone()])
    );
    cosign_verify(dst.addr(), "m/one", &amd64, &pem)
        .await
        .unwrap();
    let index_sig_tag = format!("{}.sig", fallback_tag(&image.digest));
    assert!(fixtures::get_manifest(dst.addr(), "m/one", &index_sig_tag)
        .await
        .is_none());

    // Two platforms: a new index; the referrers of its two children follow.
    let two_dst = Reference::parse(&dst.reference("m/two:1")).unwrap();
    let two_opts = options(&["linux/amd64", "linux/arm64/v8"]);
    let two = e.sync(&source, &two_dst, &two_opts).await.unwrap();
    assert_ne!(two.destination_digest.as_str(), image.digest);
    assert_eq!(
        subjects(&two),
        BTreeSet::from([amd64.clone(), arm64.clone()])
    );
    assert_eq!(
        copied(&two),
        BTreeSet::from([
            child_sigs[0].digest.clone(),
            child_sigs[1].digest.clone(),
            sbom.digest.clone()
        ])
    );
    for child in [&amd64, &arm64] {
        cosign_verify(dst.addr(), "m/two", child, &pem)
            .await
            .unwrap();
    }
    for (repo, absent) in [
        ("m/two", index_sig_tag.clone()),
        (
            "m/two",
            format!("{}.sig", fallback_tag(image.child("linux/s390x"))),
        ),
    ] {
        assert!(fixtures::get_manifest(dst.addr(), repo, &absent)
            .await
            .is_none());
    }
    assert!(!copied(&two).contains(&index_sig.digest));

    // Up to date, with a full look asked for (a recorded probe that differs, as
    // Terraform passes when its plan saw a change): the children are read from the
    // destination's new index (the source does not have it) and a signature added to a
    // selected child since is copied.
    let (signer2, pem2) = new_signer();
    cosign_sign(&t, "app", &arm64, &identity, &[&signer, &signer2]).await;
    let again = e
        .sync(
            &source,
            &two_dst,
            &SyncOptions {
                referrers_probe: Some(String::new()),
                ..two_opts.clone()
            },
        )
        .await
        .unwrap();
    assert!(again.up_to_date);
    assert!(again.referrers_checked);
    assert_eq!(
        subjects(&again),
        BTreeSet::from([amd64.clone(), arm64.clone()])
    );
    cosign_verify(dst.addr(), "m/two", &arm64, &pem2)
        .await
        .unwrap();
}
