//! Issue 14: signatures, attestations and SBOMs follow the image, on real distribution
//! 2.8 registries (the `sha256-<hex>` fallback tag and cosign's `.sig|.att|.sbom` tags),
//! verified at the mirror by an independent cosign verifier (the sigstore crate). The
//! OCI 1.1 referrers API path runs against the harness's referrers-serving layer
//! ([`imagesync_e2e::referrers_layer`]), since no registry here implements the API.
//!
//! Over 600 lines because it is one module per area (the referrer kinds and paths): each
//! test is one scenario against real components, and its set-up is spelled out so a failure
//! reads alone.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraint};
use sigstore::cosign::{ClientBuilder, CosignCapabilities};
use sigstore::crypto::{SigStoreSigner, SigningScheme};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

use imagesync_e2e::fixtures::{self, sha256, Pushed, Target, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use imagesync_e2e::referrers_layer::ReferrersLayer;
use imagesync_e2e::registry::Registry;
use imagesync_engine::artifact_types::{COSIGN_SIGNATURE, DSSE_ENVELOPE};
use imagesync_engine::{
    DeleteOptions, Digest, Engine, EngineConfig, Outcome, Reference, ReferrerPolicy, RetryPolicy,
    SyncOptions,
};

const SIMPLESIGNING: &str = COSIGN_SIGNATURE;
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const SPDX: &str = "text/spdx+json";
const INTOTO: &str = "application/vnd.in-toto+json";

pub(crate) fn engine(insecure: &[&str]) -> Engine {
    Engine::new(EngineConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
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

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

pub(crate) fn fallback_tag(digest: &str) -> String {
    digest.replace(':', "-")
}

/// A manifest pushed by a test: digest and exact bytes.
#[derive(Clone, Debug)]
pub(crate) struct Art {
    pub(crate) digest: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) blobs: Vec<String>,
}

/// A cosign-style tag manifest (plain image config, one layer per entry of `layers`:
/// media type, payload, annotations) pushed under `tag`.
async fn push_tag_manifest(
    t: &Target,
    repo: &str,
    tag: &str,
    layers: &[(String, Vec<u8>, Value)],
) -> Art {
    let mut descs = Vec::new();
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for (media_type, payload, annotations) in layers {
        let digest = t
            .push_blob(repo, Bytes::from(payload.clone()))
            .await
            .unwrap();
        diff_ids.push(digest.clone());
        blobs.push(digest.clone());
        descs.push(json!({"mediaType": media_type, "size": payload.len(), "digest": digest, "annotations": annotations}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {}, "created": "0001-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = t
        .push_blob(repo, Bytes::from(config.clone()))
        .await
        .unwrap();
    blobs.push(config_digest.clone());
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": IMAGE_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": descs,
    }))
    .unwrap();
    let digest = t
        .put_manifest(repo, tag, OCI_MANIFEST, &bytes)
        .await
        .unwrap();
    Art {
        digest,
        bytes,
        blobs,
    }
}

/// A cosign simple-signing layer for `subject`, claiming `identity`, signed by `signer`.
fn signature_layer(
    signer: &SigStoreSigner,
    identity: &str,
    subject: &str,
) -> (String, Vec<u8>, Value) {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": subject},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let signature =
        base64::engine::general_purpose::STANDARD.encode(signer.sign(&payload).unwrap());
    (
        SIMPLESIGNING.to_string(),
        payload,
        json!({ SIGNATURE_ANNOTATION: signature }),
    )
}

/// Signs `subject` the way `cosign sign --key` does without a transparency log: the
/// `sha256-<hex>.sig` tag with one layer per signature.
pub(crate) async fn cosign_sign(
    t: &Target,
    repo: &str,
    subject: &str,
    identity: &str,
    signers: &[&SigStoreSigner],
) -> Art {
    let layers: Vec<_> = signers
        .iter()
        .map(|s| signature_layer(s, identity, subject))
        .collect();
    let tag = format!("{}.sig", fallback_tag(subject));
    push_tag_manifest(t, repo, &tag, &layers).await
}

/// A cosign-style `.att` (DSSE envelope) or `.sbom` tag for `subject`.
async fn cosign_attach(t: &Target, repo: &str, subject: &str, suffix: &str, seed: u64) -> Art {
    let (media_type, body) = match suffix {
        "att" => (
            DSSE_ENVELOPE,
            json!({"payloadType": INTOTO, "payload": seed.to_string(), "signatures": []}),
        ),
        _ => (
            SPDX,
            json!({"spdxVersion": "SPDX-2.3", "name": seed.to_string()}),
        ),
    };
    let tag = format!("{}.{suffix}", fallback_tag(subject));
    let layer = (
        media_type.to_string(),
        serde_json::to_vec(&body).unwrap(),
        json!({}),
    );
    push_tag_manifest(t, repo, &tag, &[layer]).await
}

/// An OCI 1.1 artifact with `subject`, pushed by digest, and (unless `index` is false)
/// added to the subject's `sha256-<hex>` fallback index like an OCI 1.1 client does on a
/// registry without the referrers API.
pub(crate) async fn attach_fallback(
    t: &Target,
    repo: &str,
    subject: (&str, &str, usize),
    artifact_type: &str,
    seed: u64,
    index: bool,
) -> Art {
    let empty = t.push_blob(repo, Bytes::from_static(b"{}")).await.unwrap();
    let data = fixtures::random_bytes(seed, 512);
    let layer = t.push_blob(repo, Bytes::from(data)).await.unwrap();
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 512}],
        "subject": {"mediaType": subject.1, "digest": subject.0, "size": subject.2},
        "annotations": {"dev.imagesync.e2e.seed": seed.to_string()},
    }))
    .unwrap();
    let digest = sha256(&bytes);
    t.put_manifest(repo, &digest, OCI_MANIFEST, &bytes)
        .await
        .unwrap();
    if index {
        let entry = json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": artifact_type});
        add_fallback_entry(t, repo, subject.0, entry).await;
    }
    Art {
        digest,
        bytes,
        blobs: vec![empty, layer],
    }
}

/// Adds `entry` to `subject`'s fallback index (read-modify-write, as a test client).
async fn add_fallback_entry(t: &Target, repo: &str, subject: &str, entry: Value) {
    let addr = t.base.trim_start_matches("http://");
    let mut entries = fallback_entries(addr, repo, subject).await;
    entries.push(entry);
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    )
    .unwrap();
    t.put_manifest(repo, &fallback_tag(subject), OCI_INDEX, &index)
        .await
        .unwrap();
}

/// The digests listed by `subject`'s fallback index at `addr` (empty without one).
async fn fallback_entries(addr: &str, repo: &str, subject: &str) -> Vec<Value> {
    match fixtures::get_manifest(addr, repo, &fallback_tag(subject)).await {
        Some((_, b)) => serde_json::from_slice::<Value>(&b).unwrap()["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

fn digests(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Verifies `repo@digest` at `addr` with cosign's rules and `public_pem` (the sigstore
/// crate, an independent verifier): at least one signature layer from the `.sig` tag
/// whose signature the key verifies and whose payload names `digest`. Returns the
/// identities (`docker-reference`) of the verified layers.
pub(crate) async fn cosign_verify(
    addr: &str,
    repo: &str,
    digest: &str,
    public_pem: &str,
) -> Result<Vec<String>, String> {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    };
    let mut client = ClientBuilder::default()
        .with_oci_client_config(config)
        .build()
        .map_err(|e| e.to_string())?;
    let image: OciReference = format!("{addr}/{repo}@{digest}")
        .parse()
        .map_err(|e| format!("{e:?}"))?;
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &image)
        .await
        .map_err(|e| e.to_string())?;
    let verifier = PublicKeyVerifier::new(
        public_pem.as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .map_err(|e| e.to_string())?;
    let constraints: Vec<Box<dyn VerificationConstraint>> = vec![Box::new(verifier)];
    sigstore::cosign::verify_constraints(&layers, constraints.iter())
        .map_err(|e| format!("{e:?}"))?;
    let verifier = PublicKeyVerifier::new(
        public_pem.as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .map_err(|e| e.to_string())?;
    Ok(layers
        .iter()
        .filter(|l| verifier.verify(l).unwrap_or(false))
        .filter(|l| l.simple_signing.critical.image.docker_manifest_digest == digest)
        .map(|l| l.simple_signing.critical.identity.docker_reference.clone())
        .collect())
}

pub(crate) fn new_signer() -> (SigStoreSigner, String) {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .unwrap();
    let pem = signer
        .to_sigstore_keypair()
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    (signer, pem)
}

async fn sync(e: &Engine, src: &str, dst: &str, policy: ReferrerPolicy) -> Outcome {
    e.sync(
        &r(src),
        &r(dst),
        &SyncOptions {
            referrers: policy,
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap()
}

/// The referrers of a signed multi-arch image travel to the mirror byte for byte, by
/// every attachment a distribution 2.8 registry supports: the image index's cosign
/// `.sig` (verified at the mirror with the public key, accepting the source's identity),
/// `.att` and `.sbom` tags, an attestation in the index's fallback index, an SBOM in a
/// child's fallback index and a signature on the attestation (a referrer of a referrer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_multi_arch_image_is_verified_at_the_mirror() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let t = src.target();
    let image = fixtures::push_index(src.addr(), "team/app", "1", 140).await;
    let subject = (image.digest.as_str(), OCI_INDEX, image.manifest.len());
    let identity = format!("{}/team/app", src.addr());
    let (signer, public_pem) = new_signer();
    let sig = cosign_sign(&t, "team/app", &image.digest, &identity, &[&signer]).await;
    let att = cosign_attach(&t, "team/app", &image.digest, "att", 1).await;
    let sbom = cosign_attach(&t, "team/app", &image.digest, "sbom", 2).await;
    let provenance = attach_fallback(&t, "team/app", subject, INTOTO, 3, true).await;
    let child = &image.children[0];
    let (child_type, child_bytes) = fixtures::get_manifest(src.addr(), "team/app", child)
        .await
        .unwrap();
    let child_sbom = attach_fallback(
        &t,
        "team/app",
        (child, &child_type, child_bytes.len()),
        SPDX,
        4,
        true,
    )
    .await;
    let on_provenance = attach_fallback(
        &t,
        "team/app",
        (&provenance.digest, OCI_MANIFEST, provenance.bytes.len()),
        "application/vnd.example.signature",
        5,
        true,
    )
    .await;
    // The verifier sees the source signed, and the mirror not yet.
    assert_eq!(
        cosign_verify(src.addr(), "team/app", &image.digest, &public_pem)
            .await
            .unwrap(),
        vec![identity.clone()]
    );

    let e = engine(&[src.addr(), dst.addr()]);
    let outcome = sync(
        &e,
        &src.reference("team/app:1"),
        &dst.reference("mirror/app:1"),
        ReferrerPolicy::default(),
    )
    .await;
    fixtures::assert_identical(dst.addr(), "mirror/app", "1", &image).await;
    let got: Vec<String> = outcome
        .referrers
        .iter()
        .map(|x| x.digest.to_string())
        .collect();
    for a in [&sig, &att, &sbom, &provenance, &child_sbom, &on_provenance] {
        assert!(got.contains(&a.digest), "{} missing from {got:?}", a.digest);
        let (_, bytes) = fixtures::get_manifest(dst.addr(), "mirror/app", &a.digest)
            .await
            .unwrap();
        assert_eq!(bytes, a.bytes, "referrer bytes differ");
        for b in &a.blobs {
            assert_eq!(
                fixtures::blob_status(dst.addr(), "mirror/app", b).await,
                200
            );
        }
    }
    assert_eq!(outcome.referrers.len(), 6, "{:?}", outcome.referrers);
    assert!(outcome.referrers.iter().all(|x| x.written));
    let sig_ref = outcome
        .referrers
        .iter()
        .find(|x| x.digest.as_str() == sig.digest)
        .unwrap();
    assert_eq!(sig_ref.artifact_type, COSIGN_SIGNATURE);
    assert_eq!(
        sig_ref.tag.as_deref(),
        Some(format!("{}.sig", fallback_tag(&image.digest)).as_str())
    );
    for (suffix, art) in [("sig", &sig), ("att", &att), ("sbom", &sbom)] {
        let tag = format!("{}.{suffix}", fallback_tag(&image.digest));
        let (_, bytes) = fixtures::get_manifest(dst.addr(), "mirror/app", &tag)
            .await
            .unwrap();
        assert_eq!(bytes, art.bytes, "cosign tag {tag} differs");
    }
    assert_eq!(
        digests(&fallback_entries(dst.addr(), "mirror/app", &image.digest).await),
        vec![provenance.digest.clone()]
    );
    assert_eq!(
        digests(&fallback_entries(dst.addr(), "mirror/app", child).await),
        vec![child_sbom.digest.clone()]
    );
    assert_eq!(
        digests(&fallback_entries(dst.addr(), "mirror/app", &provenance.digest).await),
        vec![on_provenance.digest.clone()]
    );

    // The independent verifier accepts the mirror, with the source's identity, and a
    // different key is refused there (the check can fail).
    let identities = cosign_verify(dst.addr(), "mirror/app", &image.digest, &public_pem)
        .await
        .unwrap();
    assert_eq!(identities, vec![identity]);
    let (_, other_pem) = new_signer();
    assert!(
        cosign_verify(dst.addr(), "mirror/app", &image.digest, &other_pem)
            .await
            .is_err()
    );

    // A second sync finds everything in place and writes nothing.
    let again = sync(
        &e,
        &src.reference("team/app:1"),
        &dst.reference("mirror/app:1"),
        ReferrerPolicy::default(),
    )
    .await;
    assert!(again.up_to_date);
    assert_eq!(again.referrers.len(), 6);
    assert!(
        again.referrers.iter().all(|x| !x.written),
        "{:?}",
        again.referrers
    );
}

/// `referrers: off` copies only the image; an artifact-type list copies only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_off_and_artifact_type_filters() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let t = src.target();
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(141)).await;
    let (signer, pem) = new_signer();
    cosign_sign(&t, "a/b", &image.digest, "x", &[&signer]).await;
    let subject = (
        image.digest.as_str(),
        image.media_type.as_str(),
        image.manifest.len(),
    );
    let sbom = attach_fallback(&t, "a/b", subject, SPDX, 7, true).await;
    let e = engine(&[src.addr(), dst.addr()]);
    let off = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("off/b:1"),
        ReferrerPolicy::off(),
    )
    .await;
    assert!(off.referrers.is_empty());
    assert!(cosign_verify(dst.addr(), "off/b", &image.digest, &pem)
        .await
        .is_err());
    assert!(fallback_entries(dst.addr(), "off/b", &image.digest)
        .await
        .is_empty());

    let only_sboms = ReferrerPolicy {
        enabled: true,
        artifact_types: vec![SPDX.into()],
    };
    let some = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("some/b:1"),
        only_sboms,
    )
    .await;
    assert_eq!(some.referrers.len(), 1, "{:?}", some.referrers);
    assert_eq!(some.referrers[0].digest.as_str(), sbom.digest);
    assert_eq!(
        fixtures::manifest_status(
            dst.addr(),
            "some/b",
            &format!("{}.sig", fallback_tag(&image.digest))
        )
        .await,
        404
    );
}

/// A signature added at the source after the first sync: the two-request probe sees it,
/// and the next sync (the image itself up to date) copies it; then the probe is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_added_later_is_seen_by_the_probe_and_copied() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let t = src.target();
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(142)).await;
    let e = engine(&[src.addr(), dst.addr()]);
    let policy = ReferrerPolicy::default();
    let first = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        policy.clone(),
    )
    .await;
    assert!(first.referrers.is_empty());
    let source = r(&src.reference("a/b:1"));
    let digest = d(&image.digest);
    let recorded = first.referrers_probe.clone();
    assert!(recorded.is_some());
    assert!(!e
        .referrers_changed(&source, &digest, recorded.as_deref(), &policy)
        .await
        .unwrap());
    // No record (a state from before referrers) and nothing at the source: no change.
    assert!(!e
        .referrers_changed(&source, &digest, None, &policy)
        .await
        .unwrap());

    let (signer, pem) = new_signer();
    let identity = format!("{}/a/b", src.addr());
    let sig = cosign_sign(&t, "a/b", &image.digest, &identity, &[&signer]).await;
    assert!(e
        .referrers_changed(&source, &digest, recorded.as_deref(), &policy)
        .await
        .unwrap());
    assert!(!e
        .referrers_changed(
            &source,
            &digest,
            recorded.as_deref(),
            &ReferrerPolicy::off()
        )
        .await
        .unwrap());
    let second = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        policy.clone(),
    )
    .await;
    assert!(second.up_to_date);
    assert_eq!(second.referrers.len(), 1);
    assert!(second.referrers[0].written);
    cosign_verify(dst.addr(), "m/b", &image.digest, &pem)
        .await
        .unwrap();
    let known = second.referrers_probe.clone();
    assert_ne!(known, recorded);
    assert!(!e
        .referrers_changed(&source, &digest, known.as_deref(), &policy)
        .await
        .unwrap());

    // A second signer appends a layer to the `.sig` tag: the new tag (a superset) replaces
    // the mirror's, and both keys verify there.
    let (signer2, pem2) = new_signer();
    let both = cosign_sign(&t, "a/b", &image.digest, &identity, &[&signer, &signer2]).await;
    assert_ne!(both.digest, sig.digest);
    assert!(e
        .referrers_changed(&source, &digest, known.as_deref(), &policy)
        .await
        .unwrap());
    sync(&e, &src.reference("a/b:1"), &dst.reference("m/b:1"), policy).await;
    cosign_verify(dst.addr(), "m/b", &image.digest, &pem)
        .await
        .unwrap();
    cosign_verify(dst.addr(), "m/b", &image.digest, &pem2)
        .await
        .unwrap();
}

/// Hostile to data: the mirror's own `.sig` tag (someone signed the mirror) holds a
/// signature the source lacks; the sync leaves it alone instead of dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_signature_the_source_lacks_is_not_overwritten() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(143)).await;
    let (source_signer, _) = new_signer();
    let (mirror_signer, mirror_pem) = new_signer();
    let source_sig = cosign_sign(
        &src.target(),
        "a/b",
        &image.digest,
        "src",
        &[&source_signer],
    )
    .await;
    let e = engine(&[src.addr(), dst.addr()]);
    // The image is at the mirror and the mirror's operator signed it there.
    sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        ReferrerPolicy::off(),
    )
    .await;
    let theirs = cosign_sign(
        &dst.target(),
        "m/b",
        &image.digest,
        "mirror",
        &[&mirror_signer],
    )
    .await;
    let outcome = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        ReferrerPolicy::default(),
    )
    .await;
    assert!(outcome.referrers.is_empty(), "{:?}", outcome.referrers);
    let (_, bytes) = fixtures::get_manifest(
        dst.addr(),
        "m/b",
        &format!("{}.sig", fallback_tag(&image.digest)),
    )
    .await
    .unwrap();
    assert_eq!(bytes, theirs.bytes);
    // Nothing of the refused tag was copied, not even its blobs.
    for b in &source_sig.blobs {
        assert_eq!(
            fixtures::blob_status(dst.addr(), "m/b", b).await,
            404,
            "{b}"
        );
    }
    cosign_verify(dst.addr(), "m/b", &image.digest, &mirror_pem)
        .await
        .unwrap();
}

/// Delete removes what this owner copied (fallback entries, cosign tags, manifests) and
/// keeps referrers others attached at the mirror, and their fallback-index entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keeps_referrers_owned_by_others() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(144)).await;
    let subject = (
        image.digest.as_str(),
        image.media_type.as_str(),
        image.manifest.len(),
    );
    let (signer, _) = new_signer();
    let sig = cosign_sign(&src.target(), "a/b", &image.digest, "src", &[&signer]).await;
    let ours = attach_fallback(&src.target(), "a/b", subject, SPDX, 8, true).await;
    let e = engine(&[src.addr(), dst.addr()]);
    let outcome = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        ReferrerPolicy::default(),
    )
    .await;
    assert_eq!(outcome.referrers.len(), 2);
    // Someone else attaches their own attestation and SBOM at the mirror.
    let theirs = attach_fallback(&dst.target(), "m/b", subject, INTOTO, 9, true).await;
    let their_sbom = cosign_attach(&dst.target(), "m/b", &image.digest, "sbom", 10).await;
    assert_eq!(
        fallback_entries(dst.addr(), "m/b", &image.digest)
            .await
            .len(),
        2
    );

    let owned = DeleteOptions {
        expect_digest: Some(outcome.destination_digest.clone()),
        delete_layers: true,
        only_blobs: Some(outcome.uploaded.iter().cloned().collect()),
        referrers: outcome
            .referrers
            .iter()
            .filter(|x| x.written)
            .map(|x| x.digest.clone())
            .collect(),
    };
    let report = e.delete(&r(&dst.reference("m/b:1")), &owned).await.unwrap();
    assert!(report.manifest_deleted, "{report:?}");
    assert_eq!(
        digests(&fallback_entries(dst.addr(), "m/b", &image.digest).await),
        vec![theirs.digest.clone()]
    );
    for gone in [&sig.digest, &ours.digest] {
        assert_eq!(
            fixtures::manifest_status(dst.addr(), "m/b", gone).await,
            404,
            "{gone}"
        );
    }
    let sig_tag = format!("{}.sig", fallback_tag(&image.digest));
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "m/b", &sig_tag).await,
        404
    );
    for kept in [&theirs, &their_sbom] {
        assert_eq!(
            fixtures::manifest_status(dst.addr(), "m/b", &kept.digest).await,
            200
        );
        for b in &kept.blobs {
            assert_eq!(
                fixtures::blob_status(dst.addr(), "m/b", b).await,
                200,
                "blob {b} of theirs"
            );
        }
    }
    let sbom_tag = format!("{}.sbom", fallback_tag(&image.digest));
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "m/b", &sbom_tag).await,
        200
    );
    // Blobs only our referrers used are gone with them.
    let only_ours = ours
        .blobs
        .iter()
        .find(|b| !theirs.blobs.contains(b))
        .unwrap();
    assert_eq!(
        fixtures::blob_status(dst.addr(), "m/b", only_ours).await,
        404
    );
}

/// Four writers add their own referrers to one destination fallback index at the same
/// moment (four sources holding the same image with different attestations, mirrored
/// into one repository concurrently): no entry is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_fallback_index_lose_no_entry() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let spec = fixtures::FixtureSpec::seeded(145);
    let mut expected = Vec::new();
    let mut image = None;
    for i in 0..4u64 {
        let repo = format!("w{i}/app");
        let pushed = fixtures::push_image(src.addr(), &repo, "1", spec.clone()).await;
        let subject = (
            pushed.digest.as_str(),
            pushed.media_type.as_str(),
            pushed.manifest.len(),
        );
        let a = attach_fallback(&src.target(), &repo, subject, INTOTO, 20 + i, true).await;
        expected.push(a.digest);
        image = Some(pushed);
    }
    let image: Pushed = image.unwrap();
    // The image is already at the destination, so the writers meet at the index.
    let e0 = engine(&[src.addr(), dst.addr()]);
    sync(
        &e0,
        &src.reference("w0/app:1"),
        &dst.reference("m/app:base"),
        ReferrerPolicy::off(),
    )
    .await;
    let runs = (0..4).map(|i| {
        let e = engine(&[src.addr(), dst.addr()]);
        let (s, t) = (
            src.reference(&format!("w{i}/app:1")),
            dst.reference(&format!("m/app:{i}")),
        );
        async move { sync(&e, &s, &t, ReferrerPolicy::default()).await }
    });
    let outcomes = futures::future::join_all(runs).await;
    for o in &outcomes {
        assert_eq!(o.referrers.len(), 1);
    }
    let mut got = digests(&fallback_entries(dst.addr(), "m/app", &image.digest).await);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

/// The OCI 1.1 referrers API path, against the harness's referrers-serving layer (a
/// proxy that adds the API to distribution 2.8; no real registry here implements it):
/// referrers are discovered through the API at the source, and at a destination that
/// answers the push with `OCI-Subject` no fallback tag is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_api_path_against_the_referrers_serving_layer() {
    let src_registry = Registry::start().await;
    let dst_registry = Registry::start().await;
    let src = ReferrersLayer::start(src_registry.addr()).await.unwrap();
    let dst = ReferrersLayer::start(dst_registry.addr()).await.unwrap();
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(146)).await;
    let subject = (
        image.digest.as_str(),
        image.media_type.as_str(),
        image.manifest.len(),
    );
    // Pushed the OCI 1.1 way to a registry with the API: by digest, no fallback tag.
    let t = Target::plain(src.addr());
    let sbom = attach_fallback(&t, "a/b", subject, SPDX, 30, false).await;
    let att = attach_fallback(&t, "a/b", subject, INTOTO, 31, false).await;
    assert_eq!(src.referrers("a/b", &image.digest).len(), 2);
    assert_eq!(
        fixtures::manifest_status(src.addr(), "a/b", &fallback_tag(&image.digest)).await,
        404
    );

    let e = engine(&[src.addr(), dst.addr()]);
    let only_sboms = ReferrerPolicy {
        enabled: true,
        artifact_types: vec![SPDX.into()],
    };
    let outcome = sync(
        &e,
        &format!("{}/a/b:1", src.addr()),
        &format!("{}/m/b:1", dst.addr()),
        only_sboms,
    )
    .await;
    assert_eq!(outcome.referrers.len(), 1, "{:?}", outcome.referrers);
    assert_eq!(outcome.referrers[0].digest.as_str(), sbom.digest);
    let listed = digests(&dst.referrers("m/b", &image.digest));
    assert_eq!(listed, vec![sbom.digest.clone()]);
    // Discovered through the API, with the artifact-type filter sent to the registry.
    let asked = format!(
        "GET /v2/a/b/referrers/{}?artifactType=text%2Fspdx%2Bjson",
        image.digest
    );
    assert!(src.log().contains(&asked), "{:?}", src.log());
    assert!(!listed.contains(&att.digest));
    // The destination keeps referrers itself: no fallback tag.
    assert_eq!(
        fixtures::manifest_status(dst_registry.addr(), "m/b", &fallback_tag(&image.digest)).await,
        404
    );
    let (_, bytes) = fixtures::get_manifest(dst_registry.addr(), "m/b", &sbom.digest)
        .await
        .unwrap();
    assert_eq!(bytes, sbom.bytes);
}

/// Hostile source: its fallback index for the image also lists a manifest whose
/// `subject` is another image (someone else's SBOM, or a planted one). Only the image's
/// own referrers are copied; the foreign entry is skipped, not carried into the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_entry_for_another_subject_is_not_copied() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let t = src.target();
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(147)).await;
    let other = fixtures::push_image(
        src.addr(),
        "a/b",
        "other",
        fixtures::FixtureSpec::seeded(148),
    )
    .await;
    let subject = (
        image.digest.as_str(),
        image.media_type.as_str(),
        image.manifest.len(),
    );
    let own = attach_fallback(&t, "a/b", subject, SPDX, 40, true).await;
    let elsewhere = (
        other.digest.as_str(),
        other.media_type.as_str(),
        other.manifest.len(),
    );
    let planted = attach_fallback(&t, "a/b", elsewhere, SPDX, 41, false).await;
    let entry = json!({"mediaType": OCI_MANIFEST, "digest": planted.digest, "size": planted.bytes.len(), "artifactType": SPDX});
    add_fallback_entry(&t, "a/b", &image.digest, entry).await;
    assert_eq!(
        fallback_entries(src.addr(), "a/b", &image.digest)
            .await
            .len(),
        2
    );

    let e = engine(&[src.addr(), dst.addr()]);
    let outcome = sync(
        &e,
        &src.reference("a/b:1"),
        &dst.reference("m/b:1"),
        ReferrerPolicy::default(),
    )
    .await;
    let got: Vec<&str> = outcome
        .referrers
        .iter()
        .map(|x| x.digest.as_str())
        .collect();
    assert_eq!(got, vec![own.digest.as_str()]);
    assert_eq!(
        fixtures::manifest_status(dst.addr(), "m/b", &planted.digest).await,
        404
    );
    assert_eq!(
        digests(&fallback_entries(dst.addr(), "m/b", &image.digest).await),
        vec![own.digest.clone()]
    );
}

// === front ends ===

/// Terraform: `referrers` defaults to on; a no-change plan stays HEAD-only at
/// 2 + 2 requests per resource (the image's two HEADs and the referrers probe's two); a
/// signature added at the source later shows in the next plan and is copied by the
/// apply (verified at the mirror); `copied_referrers` lists it; destroy removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_plans_and_applies_a_signature_added_later() {
    use crate::terraform::{actions, resource, Tf};
    let a = Registry::start().await;
    let b = Registry::start().await;
    let tf = Tf::new("1.11.4");
    let image = fixtures::push_image(
        a.addr(),
        "src/app",
        "v1",
        fixtures::FixtureSpec::seeded(150),
    )
    .await;
    tf.config(
        &[&a, &b],
        &resource(
            "app",
            &a.reference("src/app:v1"),
            &b.reference("dst/app:v1"),
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    let v = tf.state_values("imagesync.app").await;
    assert_eq!(v["referrers"], true, "{v}");
    assert_eq!(v["copied_referrers"], json!([]), "{v}");

    let no_change_plan = || async {
        a.clear_access_log();
        b.clear_access_log();
        let planned = tf.plan_actions().await["imagesync.app"].clone();
        let mut log = a.access_log_settled().await;
        log.extend(b.access_log_settled().await);
        let manifests: Vec<_> = log.into_iter().filter(|e| e.is_manifest()).collect();
        (planned, manifests)
    };
    let (planned, requests) = no_change_plan().await;
    assert_eq!(planned, actions(&["no-op"]));
    assert!(requests.iter().all(|e| e.method == "HEAD"), "{requests:?}");
    assert_eq!(requests.len(), 4, "2 HEADs + 2 probe HEADs: {requests:?}");

    let (signer, pem) = new_signer();
    let identity = format!("{}/src/app", a.addr());
    let sig = cosign_sign(&a.target(), "src/app", &image.digest, &identity, &[&signer]).await;
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["update"])
    );
    tf.apply(&[]).await;
    let identities = cosign_verify(b.addr(), "dst/app", &image.digest, &pem)
        .await
        .unwrap();
    assert_eq!(identities, vec![identity]);
    let v = tf.state_values("imagesync.app").await;
    assert_eq!(
        v["copied_referrers"][0]["digest"],
        sig.digest.as_str(),
        "{v}"
    );
    assert_eq!(v["copied_referrers"][0]["artifact_type"], COSIGN_SIGNATURE);
    let (planned, requests) = no_change_plan().await;
    assert_eq!(planned, actions(&["no-op"]), "{requests:?}");
    assert_eq!(requests.len(), 4, "{requests:?}");

    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert_eq!(
        fixtures::manifest_status(b.addr(), "dst/app", &sig.digest).await,
        404
    );
    assert_eq!(
        fixtures::manifest_status(a.addr(), "src/app", &sig.digest).await,
        200
    );
}

/// Terraform `referrers = false`: the image only, and the plan stays at 2 HEADs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_referrers_off_copies_the_image_only() {
    use crate::terraform::{actions, Tf};
    let a = Registry::start().await;
    let b = Registry::start().await;
    let tf = Tf::new("1.11.4");
    let image = fixtures::push_image(
        a.addr(),
        "src/app",
        "v1",
        fixtures::FixtureSpec::seeded(152),
    )
    .await;
    let (signer, pem) = new_signer();
    cosign_sign(&a.target(), "src/app", &image.digest, "x", &[&signer]).await;
    tf.config(
        &[&a, &b],
        &format!(
            "resource \"imagesync\" \"app\" {{\n  source      = \"{}\"\n  destination = \"{}\"\n  referrers   = false\n}}\n",
            a.reference("src/app:v1"),
            b.reference("dst/app:v1")
        ),
    );
    tf.init().await;
    tf.apply(&[]).await;
    assert!(cosign_verify(b.addr(), "dst/app", &image.digest, &pem)
        .await
        .is_err());
    // The verifier's own requests are logged first.
    a.access_log_settled().await;
    b.access_log_settled().await;
    a.clear_access_log();
    b.clear_access_log();
    assert_eq!(
        tf.plan_actions().await["imagesync.app"],
        actions(&["no-op"])
    );
    let mut log = a.access_log_settled().await;
    log.extend(b.access_log_settled().await);
    let manifests: Vec<_> = log.into_iter().filter(|e| e.is_manifest()).collect();
    assert_eq!(manifests.len(), 2, "{manifests:?}");
}

/// The CLI: referrers follow by default, `--no-referrers` copies the image only, and a
/// `--referrer-type` that is not a media type is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_copies_referrers_unless_told_not_to() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let image =
        fixtures::push_image(src.addr(), "a/b", "1", fixtures::FixtureSpec::seeded(153)).await;
    let (signer, pem) = new_signer();
    cosign_sign(&src.target(), "a/b", &image.digest, "x", &[&signer]).await;
    let cli = |args: Vec<String>| {
        let mut all = vec![
            "--insecure-registry".to_string(),
            src.addr().to_string(),
            "--insecure-registry".to_string(),
            dst.addr().to_string(),
            "--no-progress".to_string(),
            "copy".to_string(),
        ];
        all.extend(args);
        std::process::Command::new(imagesync_e2e::bin("imagesync"))
            .args(all)
            .env("DOCKER_CONFIG", "/nonexistent-imagesync-test")
            .output()
            .unwrap()
    };
    let off = cli(vec![
        "--no-referrers".into(),
        src.reference("a/b:1"),
        dst.reference("off/b:1"),
    ]);
    assert!(off.status.success(), "{off:?}");
    assert!(cosign_verify(dst.addr(), "off/b", &image.digest, &pem)
        .await
        .is_err());
    let on = cli(vec![src.reference("a/b:1"), dst.reference("on/b:1")]);
    assert!(on.status.success(), "{on:?}");
    assert!(
        String::from_utf8_lossy(&on.stderr).contains("referrers: 1"),
        "{on:?}"
    );
    cosign_verify(dst.addr(), "on/b", &image.digest, &pem)
        .await
        .unwrap();
    dst.clear_access_log();
    let bad = cli(vec![
        "--referrer-type".into(),
        "not a type".into(),
        src.reference("a/b:1"),
        dst.reference("bad/b:1"),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a media type"),
        "{bad:?}"
    );
    assert!(dst.access_log_settled().await.is_empty());
}
