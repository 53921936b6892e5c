//! Bad input (issue 7): property tests of the reference parser and the manifest/index
//! parser. Every input gives an error or a correct result, never a panic; valid
//! references round-trip through `Display`, and `Reference::id` is well-formed.
//!
//! Case counts are modest so the whole file runs in seconds; set `PROPTEST_CASES` for a
//! longer run.
//!
//! Over 600 lines because each input family (digests, references, manifests and indexes,
//! auth challenges and headers) brings its own generators and checkers, kept next to
//! the properties they feed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use imagesync_engine::manifest::{Descriptor, Manifest, OCI_INDEX, OCI_MANIFEST};
use imagesync_engine::{Digest, ErrorKind, Reference};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        // No persistence files in the source tree; failures print the minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

/// `sha256:<hex>`, `sha512:<hex>`, unknown algorithms, wrong lengths, upper case,
/// non-hex characters, missing colon.
fn digest_like() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hex64().prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
        1 => ("[a-z0-9+._-]{1,10}", hex64()).prop_map(|(a, h)| format!("{a}:{h}")),
        1 => "[0-9a-f]{0,63}".prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9a-f]{65,80}".prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9A-F]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => "[0-9a-z]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => hex64(),
        1 => ".{0,80}",
    ]
}

fn is_valid_sha256(s: &str) -> bool {
    s.len() == 71
        && s.starts_with("sha256:")
        && s[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// === digests ===

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn digest_parse_accepts_exactly_sha256_hex(s in digest_like()) {
        match s.parse::<Digest>() {
            Ok(d) => {
                prop_assert!(is_valid_sha256(&s), "accepted {s:?}");
                prop_assert_eq!(d.as_str(), s.as_str());
                prop_assert_eq!(d.hex(), &s[7..]);
            }
            Err(e) => {
                prop_assert!(!is_valid_sha256(&s), "rejected valid {s:?}: {e}");
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
                if s.starts_with("sha512:") {
                    prop_assert!(e.to_string().contains("only sha256"), "{e}");
                }
            }
        }
    }
}

// === references ===

/// A host the parser must take as a registry: with a dot, a port, or `localhost`, in
/// its canonical spelling (a last label that is a number is an IPv4 address, which must
/// be a dotted quad, and `:443` is dropped: see `canonical_registry`).
fn host() -> impl Strategy<Value = String> {
    let label = "[a-z]([a-z0-9-]{0,8}[a-z0-9])?";
    prop_oneof![
        (label, "[a-z]{2,6}").prop_map(|(a, b)| format!("{a}.{b}")),
        (label, any::<u16>()).prop_map(|(a, p)| format!("{a}:{p}")),
        (label, "[a-z]{2,6}", any::<u16>()).prop_map(|(a, b, p)| format!("{a}.{b}:{p}")),
        Just("localhost".to_string()),
        any::<u16>().prop_map(|p| format!("localhost:{p}")),
        (0u8..=255, 0u8..=255, any::<u16>()).prop_map(|(a, b, p)| format!("10.{a}.{b}.1:{p}")),
    ]
    .prop_filter("not a Docker Hub alias", |h| {
        !imagesync_engine::reference::DOCKER_HUB_ALIASES.contains(&h.as_str())
    })
    .prop_filter("not the default HTTPS port", |h| !h.ends_with(":443"))
}

/// A repository path: 1-4 lowercase components with single separators.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}", 1..=4).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}"
}

proptest! {
    #![proptest_config(config(256))]

    /// Anything at all: an error naming the input, or a reference that round-trips.
    #[test]
    fn reference_parse_never_panics_on_arbitrary_strings(s in "\\PC{0,100}") {
        check_reference(&s)?;
    }

    /// Strings from the reference alphabet reach the deeper checks more often.
    #[test]
    fn reference_parse_never_panics_on_reference_like_strings(
        s in "[a-zA-Z0-9:/@._-]{0,60}(@sha256:[0-9a-f]{64})?"
    ) {
        check_reference(&s)?;
    }

    /// Generated valid references parse into their parts and re-display stably.
    #[test]
    fn valid_references_round_trip(
        host in host(),
        path in path(),
        tag in prop::option::of(tag()),
        digest in prop::option::of(hex64()),
    ) {
        let mut input = format!("{host}/{path}");
        if let Some(t) = &tag {
            input.push(':');
            input.push_str(t);
        }
        if let Some(d) = &digest {
            input.push_str("@sha256:");
            input.push_str(d);
        }
        let r = Reference::parse(&input).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
        prop_assert_eq!(r.registry(), host.as_str());
        prop_assert_eq!(r.api_host(), host.as_str());
        prop_assert_eq!(r.repository(), path.as_str());
        let want_tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.clone(),
        };
        prop_assert_eq!(r.tag().map(str::to_string), want_tag);
        prop_assert_eq!(r.digest().map(|d| d.hex().to_string()), digest.clone());
        let shown = r.to_string();
        if tag.is_some() || digest.is_some() {
            prop_assert_eq!(&shown, &input);
        }
        check_reference(&input)?;
    }

    /// Docker Hub spellings normalise to one repository, `library/` for official images.
    #[test]
    fn docker_hub_references_normalise(
        alias in prop::sample::select(vec!["", "docker.io/", "index.docker.io/", "registry-1.docker.io/", "registry.hub.docker.com/"]),
        path in path(),
        tag in tag(),
    ) {
        let input = format!("{alias}{path}:{tag}");
        // A first component with a dot is a host, not part of the path, when no alias
        // precedes it; skip those.
        prop_assume!(!alias.is_empty() || !path.split('/').next().unwrap_or("").contains('.') || !path.contains('/'));
        let r = Reference::parse(&input).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
        prop_assert_eq!(r.registry(), "docker.io");
        prop_assert_eq!(r.api_host(), "registry-1.docker.io");
        let want = if path.contains('/') { path.clone() } else { format!("library/{path}") };
        prop_assert_eq!(r.repository(), want.as_str());
        check_reference(&input)?;
    }
}

/// The contract of `Reference::parse` for one input.
fn check_reference(input: &str) -> Result<(), TestCaseError> {
    let r = match Reference::parse(input) {
        Ok(r) => r,
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", e);
            prop_assert!(
                e.to_string().contains(&format!("{input:?}")),
                "the error must name the input {:?}: {}",
                input,
                e
            );
            return Ok(());
        }
    };
    prop_assert!(!r.registry().is_empty() && !r.repository().is_empty());
    prop_assert!(r.tag().is_some() || r.digest().is_some());
    prop_assert!(r.repository().chars().all(|c| !c.is_ascii_uppercase()));
    // Display is a fixed point: it parses back to the same reference and displays the same.
    let shown = r.to_string();
    let again = Reference::parse(&shown).map_err(|e| {
        TestCaseError::fail(format!(
            "{input:?} displays as {shown:?}, which does not parse: {e}"
        ))
    })?;
    prop_assert_eq!(&again, &r, "{:?} -> {:?}", input, shown);
    prop_assert_eq!(again.to_string(), shown);
    // manifest_ref is the digest when pinned, else the tag.
    match r.digest() {
        Some(d) => prop_assert_eq!(r.manifest_ref(), d.as_str()),
        None => prop_assert_eq!(Some(r.manifest_ref()), r.tag()),
    }
    // id: <registry>/<repository>@sha256:<64 hex>, itself a parseable pinned reference.
    let d = Digest::of(input.as_bytes());
    let id = r.id(&d);
    prop_assert_eq!(&id, &format!("{}/{}@{}", r.registry(), r.repository(), d));
    let (repo, digest) = id.rsplit_once('@').unwrap();
    prop_assert!(is_valid_sha256(digest), "{}", id);
    prop_assert_eq!(repo, r.repo_name());
    let pinned = Reference::parse(&id)
        .map_err(|e| TestCaseError::fail(format!("id {id:?} does not parse: {e}")))?;
    prop_assert_eq!(pinned.digest(), Some(&d));
    prop_assert_eq!(pinned.repo_name(), r.repo_name());
    prop_assert_eq!(pinned.id(&d), id);
    Ok(())
}

// === manifests ===

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        digest_like().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "schemaVersion",
                    "mediaType",
                    "config",
                    "layers",
                    "manifests",
                    "blobs",
                    "digest",
                    "size",
                    "subject",
                    "annotations",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A size field: sane, huge, negative, fractional, or not a number.
fn size_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u64..10_000_000).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => Just(json!(18446744073709551616.0_f64)),
        1 => (i64::MIN..0).prop_map(Value::from),
        1 => Just(json!(1.5)),
        1 => Just(json!("12")),
        1 => Just(Value::Null),
    ]
}

fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(OCI_MANIFEST.to_string()),
        Just(OCI_INDEX.to_string()),
        Just(imagesync_engine::manifest::DOCKER_MANIFEST.to_string()),
        Just(imagesync_engine::manifest::DOCKER_MANIFEST_LIST.to_string()),
        Just(imagesync_engine::manifest::DOCKER_SCHEMA1.to_string()),
        Just(imagesync_engine::manifest::DOCKER_SCHEMA1_SIGNED.to_string()),
        Just(String::new()),
        "[a-z/.+-]{0,40}",
    ]
}

fn descriptor_value() -> impl Strategy<Value = Value> {
    (media_type(), digest_like(), size_value(), any::<bool>()).prop_map(|(mt, d, size, with_mt)| {
        let mut v = json!({"digest": d, "size": size});
        if with_mt {
            v["mediaType"] = Value::from(mt);
        }
        v
    })
}

/// Manifest-shaped JSON with every field possibly wrong.
fn manifest_value() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            Just(json!(2)),
            Just(json!(1)),
            Just(json!(-1)),
            Just(json!("2"))
        ]),
        prop::option::of(media_type()),
        prop::option::of(descriptor_value()),
        prop::option::of(prop::collection::vec(descriptor_value(), 0..5)),
        prop::option::of(prop::collection::vec(descriptor_value(), 0..5)),
    )
        .prop_map(|(schema, mt, config, layers, manifests)| {
            let mut v = json!({});
            if let Some(s) = schema {
                v["schemaVersion"] = s;
            }
            if let Some(mt) = mt {
                v["mediaType"] = Value::from(mt);
            }
            if let Some(c) = config {
                v["config"] = c;
            }
            if let Some(l) = layers {
                v["layers"] = Value::Array(l);
            }
            if let Some(m) = manifests {
                v["manifests"] = Value::Array(m);
            }
            v
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        ct in media_type(),
    ) {
        check_manifest(&ct, &bytes, None)?;
    }

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_json(v in json_value(), ct in media_type()) {
        check_manifest(&ct, &serde_json::to_vec(&v).unwrap(), Some(&v))?;
    }

    #[test]
    fn manifest_parse_checks_every_field(v in manifest_value(), ct in media_type()) {
        check_manifest(&ct, &serde_json::to_vec(&v).unwrap(), Some(&v))?;
    }

    /// Malformed JSON: a valid manifest cut short or with a byte replaced.
    #[test]
    fn manifest_parse_rejects_damaged_json(v in manifest_value(), cut in any::<prop::sample::Index>(), b in any::<u8>()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let at = cut.index(bytes.len());
        check_manifest(OCI_MANIFEST, &bytes[..at], None)?;
        let mut flipped = bytes.clone();
        flipped[at] = b;
        check_manifest(OCI_MANIFEST, &flipped, None)?;
    }
}

/// The contract of `Manifest::parse` for one input (`v`: the JSON, when it is JSON).
fn check_manifest(ct: &str, bytes: &[u8], v: Option<&Value>) -> Result<(), TestCaseError> {
    let parsed = Manifest::parse("127.0.0.1:5000/r@sha256:x", ct, bytes);
    let m = match parsed {
        Ok(m) => m,
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", e);
            prop_assert!(e.to_string().contains("127.0.0.1:5000/r"), "{}", e);
            return Ok(());
        }
    };
    // Accepted: every descriptor has a sha256 digest and a u64 size, and matches the JSON.
    let descriptors: Vec<Descriptor> = m
        .blobs()
        .into_iter()
        .chain(m.children().iter().cloned())
        .collect();
    for d in &descriptors {
        prop_assert!(is_valid_sha256(d.digest.as_str()), "{:?}", d);
    }
    let Some(v) = v else { return Ok(()) };
    let schema1 = v.get("schemaVersion") == Some(&json!(1))
        || [
            imagesync_engine::manifest::DOCKER_SCHEMA1,
            imagesync_engine::manifest::DOCKER_SCHEMA1_SIGNED,
        ]
        .iter()
        .any(|s| v.get("mediaType").and_then(Value::as_str).unwrap_or(ct) == *s);
    prop_assert!(!schema1, "schema 1 accepted: {}", v);
    let same = |field: &str, got: &[Descriptor]| -> Result<(), TestCaseError> {
        let want = v
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        prop_assert_eq!(want.len(), got.len(), "{}", field);
        for (w, g) in want.iter().zip(got) {
            prop_assert_eq!(
                w.get("digest").and_then(Value::as_str),
                Some(g.digest.as_str())
            );
            prop_assert_eq!(w.get("size").and_then(Value::as_u64), Some(g.size));
        }
        Ok(())
    };
    match &m {
        Manifest::Index { manifests } => {
            prop_assert!(v.get("manifests").is_some_and(Value::is_array), "{}", v);
            same("manifests", manifests)?;
            prop_assert!(m.blobs().is_empty());
        }
        Manifest::Image { config, layers } => {
            prop_assert!(v.get("manifests").is_none_or(Value::is_null), "{}", v);
            let mut want_layers = v
                .get("layers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            want_layers.extend(
                v.get("blobs")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            prop_assert_eq!(want_layers.len(), layers.len());
            prop_assert_eq!(
                config.is_some(),
                v.get("config").is_some_and(|c| !c.is_null())
            );
            prop_assert!(m.children().is_empty());
        }
    }
    Ok(())
}

#[test]
fn huge_negative_and_fractional_sizes() {
    let d = format!("sha256:{}", "a".repeat(64));
    let doc = |size: &str| {
        format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":2}},"layers":[{{"digest":"{d}","size":{size}}}]}}"#
        )
    };
    let m = Manifest::parse("r", OCI_MANIFEST, doc("18446744073709551615").as_bytes()).unwrap();
    assert_eq!(m.blobs()[1].size, u64::MAX);
    for bad in ["18446744073709551616", "-1", "1.5", "1e3", "\"12\"", "null"] {
        let err = Manifest::parse("r", OCI_MANIFEST, doc(bad).as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
    }
}

#[test]
fn digest_algorithms_other_than_sha256_are_rejected_clearly() {
    for (digest, needle) in [
        (format!("sha512:{}", "a".repeat(128)), "only sha256"),
        (format!("blake3:{}", "a".repeat(64)), "only sha256"),
        (format!("sha256:{}", "A".repeat(64)), "lowercase hex"),
        (format!("sha256:{}", "g".repeat(64)), "lowercase hex"),
        ("sha256:abc".to_string(), "64 hex"),
        ("a".repeat(64), "sha256:<64 hex"),
    ] {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{digest}","size":1}}]}}"#
        );
        let err = Manifest::parse("r", OCI_INDEX, doc.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{digest}");
        assert!(err.to_string().contains(needle), "{digest}: {err}");
        let err = Reference::parse(&format!("127.0.0.1:5000/r@{digest}")).unwrap_err();
        assert!(err.to_string().contains(needle), "{digest}: {err}");
    }
}

#[test]
fn deeply_nested_json_never_overflows_the_stack() {
    for depth in [200usize, 100_000] {
        let bomb = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        // The bomb as the document, or where a descriptor list belongs: an error.
        let err = Manifest::parse("r", OCI_INDEX, bomb.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "depth {depth}");
        let doc = format!(r#"{{"schemaVersion":2,"manifests":{bomb}}}"#);
        let err = Manifest::parse("r", OCI_INDEX, doc.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "depth {depth}");
        // In a field the parser ignores (annotations): skipped without recursion, so
        // no stack overflow, and the descriptor is read correctly.
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{}","size":1,"annotations":{bomb}}}]}}"#,
            "a".repeat(64)
        );
        let m = Manifest::parse("r", OCI_INDEX, doc.as_bytes()).unwrap();
        assert_eq!(m.children().len(), 1, "depth {depth}");
        assert_eq!(m.children()[0].size, 1);
    }
    // Indexes nested in indexes are fine to parse (each level is its own manifest; the
    // copy limits the depth it follows).
    let child = format!(
        r#"{{"mediaType":"{OCI_INDEX}","digest":"sha256:{}","size":10,"manifests":[{{"x":1}}]}}"#,
        "b".repeat(64)
    );
    let doc = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{child}]}}"#);
    let m = Manifest::parse("r", OCI_INDEX, doc.as_bytes()).unwrap();
    assert_eq!(m.children().len(), 1);
    assert_eq!(m.children()[0].media_type, OCI_INDEX);
}

// === registry answers (issue 13): the challenge parser, token lifetimes, Retry-After,
// and the index / layer caps ===

use imagesync_engine::client::{parse_challenge, parse_retry_after, token_expiry, Challenge};
use imagesync_engine::manifest::{MAX_INDEX_ENTRIES, MAX_LAYERS};

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn challenge_parser_never_panics(header in ".{0,300}") {
        let _ = parse_challenge(&header);
    }

    #[test]
    fn bearer_challenges_keep_realm_and_service_whatever_the_order_and_quoting(
        realm in "[ -~]{1,80}",
        service in "[ -~]{0,40}",
        scope in "[ -~]{0,40}",
        scheme in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER")],
        realm_first in any::<bool>(),
        spaces in "[ ]{0,3}",
    ) {
        let parts = if realm_first {
            [format!("realm={}", quoted(&realm)), format!("service={}", quoted(&service)), format!("scope={}", quoted(&scope))]
        } else {
            [format!("scope={}", quoted(&scope)), format!("service={}", quoted(&service)), format!("realm={}", quoted(&realm))]
        };
        let header = format!("{scheme} {}", parts.join(&format!(",{spaces}")));
        prop_assert_eq!(
            parse_challenge(&header),
            Some(Challenge::Bearer { realm: realm.clone(), service: Some(service.clone()) }),
            "{}", header
        );
    }

    #[test]
    fn token_lifetimes_never_overflow(expires_in in any::<Option<u64>>()) {
        let now = std::time::Instant::now();
        let exp = token_expiry(now, expires_in);
        prop_assert!(exp >= now);
        prop_assert!(exp <= now + std::time::Duration::from_secs(24 * 3600));
    }

    #[test]
    fn retry_after_never_panics(value in ".{0,60}", secs in any::<u64>()) {
        for v in [value, secs.to_string()] {
            let mut h = reqwest::header::HeaderMap::new();
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&v) {
                h.insert(reqwest::header::RETRY_AFTER, v);
                let _ = parse_retry_after(&h);
            }
        }
    }
}

fn descriptors(n: usize, media_type: &str) -> Vec<Value> {
    let d = format!("sha256:{}", "a".repeat(64));
    (0..n)
        .map(|_| json!({"mediaType": media_type, "digest": d, "size": 1}))
        .collect()
}

proptest! {
    #![proptest_config(config(12))]

    #[test]
    fn index_entries_are_capped(extra in -3i64..=3) {
        let n = (MAX_INDEX_ENTRIES as i64 + extra) as usize;
        let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors(n, OCI_MANIFEST)});
        let result = Manifest::parse("r", OCI_INDEX, body.to_string().as_bytes());
        if n > MAX_INDEX_ENTRIES {
            let err = result.unwrap_err();
            prop_assert_eq!(err.kind(), ErrorKind::InvalidInput);
            prop_assert!(err.to_string().contains("index entries"), "{}", err);
        } else {
            prop_assert_eq!(result.unwrap().children().len(), n);
        }
    }

    #[test]
    fn layers_are_capped(extra in -3i64..=3) {
        let n = (MAX_LAYERS as i64 + extra) as usize;
        let config = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 2});
        let body = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descriptors(n, "application/vnd.oci.image.layer.v1.tar")});
        let result = Manifest::parse("r", OCI_MANIFEST, body.to_string().as_bytes());
        if n > MAX_LAYERS {
            prop_assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidInput);
        } else {
            prop_assert_eq!(result.unwrap().blobs().len(), n + 1);
        }
    }
}
