//! Selecting platforms from a source: which index entries match, the child or the new
//! index the destination gets, and its canonical serialisation (see [`super`]).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{normalize, Platform};
use crate::client::{Client, ManifestData, MAX_MANIFEST_BYTES};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::reference::{Digest, Reference};

/// An index entry's `platform` (OCI image index, Docker manifest list).
#[derive(Deserialize)]
struct EntryPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl EntryPlatform {
    fn label(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    platform: Option<EntryPlatform>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl Entry {
    /// Platforms an index lists for its images: buildx's attestation manifests
    /// (`unknown/unknown`, `vnd.docker.reference.type`) and entries without a platform
    /// are not platforms one can select.
    fn platform(&self) -> Option<&EntryPlatform> {
        let attestation = self
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
        self.platform
            .as_ref()
            .filter(|p| !attestation && !p.os.is_empty() && !p.architecture.is_empty())
    }
}

#[derive(Deserialize)]
struct Entries {
    #[serde(default)]
    manifests: Vec<Entry>,
}

/// The platforms `index` lists (as [`pick`] sees them: no attestations, no entries
/// without a platform), each as `os/architecture[/variant]` with its child's digest, in
/// the index's order. Labels that are not valid [`Platform`]s are left out.
pub(crate) fn listed(reference: &str, index: &ManifestData) -> Result<Vec<(Platform, Digest)>> {
    let entries: Entries =
        serde_json::from_slice(&index.bytes).map_err(|e| Error::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: index.media_type.clone(),
            reason: format!("not a valid index: {e}"),
        })?;
    let manifest = Manifest::parse(reference, &index.media_type, &index.bytes)?;
    Ok(entries
        .manifests
        .iter()
        .zip(manifest.children())
        .filter_map(|(e, d)| {
            let p = Platform::parse(&e.platform()?.label()).ok()?;
            Some((p, d.digest.clone()))
        })
        .collect())
}

/// What the destination's tag is to hold.
#[derive(Debug, Clone)]
pub(crate) enum Pick {
    /// The source manifest as it is.
    Whole(ManifestData),
    /// The one selected child of the source index (read when it is copied).
    Child(Descriptor),
    /// A new index of the selected children.
    Index(ManifestData),
}

impl Pick {
    /// The digest the destination's tag will have.
    pub(crate) fn digest(&self) -> &Digest {
        match self {
            Pick::Whole(m) | Pick::Index(m) => &m.digest,
            Pick::Child(d) => &d.digest,
        }
    }

    /// The manifest to tag at the destination (a selected child is read now, and checked
    /// against its descriptor's size and digest).
    pub(crate) async fn manifest(
        self,
        client: &Client,
        source: &Reference,
    ) -> Result<ManifestData> {
        let child = match self {
            Pick::Whole(m) | Pick::Index(m) => return Ok(m),
            Pick::Child(d) => d,
        };
        let r = source.with_digest(child.digest.clone());
        let data = client.get_manifest(&r).await?;
        crate::copy::checked_child(&r, &child, data)
    }
}

/// Applies `platforms` to the source manifest pinned by `source` (one GET; a
/// single-platform source costs a GET of its config too). An empty selection takes the
/// whole manifest.
pub(crate) async fn pick(
    client: &Client,
    source: &Reference,
    platforms: &[Platform],
) -> Result<Pick> {
    let top = client.get_manifest(source).await?;
    let reference = source.to_string();
    if platforms.is_empty() {
        return Ok(Pick::Whole(top));
    }
    match Manifest::parse(&reference, &top.media_type, &top.bytes)? {
        Manifest::Index { .. } => select_from_index(&reference, top, platforms),
        Manifest::Image { config, .. } => {
            let have = match config {
                Some(c) => image_platform(client, source, &c).await?,
                None => None,
            };
            let have = have.into_iter().collect::<Vec<_>>();
            let missing = missing(platforms, &have);
            if missing.is_empty() {
                Ok(Pick::Whole(top))
            } else {
                Err(not_found(&reference, missing, &have))
            }
        }
    }
}

/// The platform a single image's config names (`None` for configs without one, such
/// as artifacts).
async fn image_platform(
    client: &Client,
    source: &Reference,
    config: &Descriptor,
) -> Result<Option<EntryPlatform>> {
    if config.size > MAX_MANIFEST_BYTES {
        return Err(Error::Limit {
            operation: "GET blob",
            reference: format!("{}@{}", source.repository(), config.digest),
            what: "image config (bytes)".into(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let bytes = client
        .get_blob_bytes(source.repository(), &config.digest, MAX_MANIFEST_BYTES)
        .await?;
    Ok(serde_json::from_slice::<EntryPlatform>(&bytes)
        .ok()
        .filter(|p| !p.os.is_empty() && !p.architecture.is_empty()))
}

/// The selected platforms `have` lacks, as the caller wrote them.
fn missing(platforms: &[Platform], have: &[EntryPlatform]) -> Vec<String> {
    platforms
        .iter()
        .filter(|p| {
            let want = p.normalized();
            !have
                .iter()
                .any(|h| normalize(&h.os, &h.architecture, h.variant.as_deref()) == want)
        })
        .map(|p| p.to_string())
        .collect()
}

fn not_found(reference: &str, missing: Vec<String>, have: &[EntryPlatform]) -> Error {
    let mut available: Vec<String> = Vec::new();
    for label in have.iter().map(EntryPlatform::label) {
        if !available.contains(&label) {
            available.push(label);
        }
    }
    Error::PlatformNotFound {
        reference: reference.to_string(),
        missing,
        available,
    }
}

/// Each selected platform takes the first entry of the index that has it (as
/// containerd and Docker pick an entry when pulling); one entry is that child, several
/// a new index of them.
fn select_from_index(reference: &str, top: ManifestData, platforms: &[Platform]) -> Result<Pick> {
    let entries: Entries =
        serde_json::from_slice(&top.bytes).map_err(|e| Error::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: top.media_type.clone(),
            reason: format!("not a valid index: {e}"),
        })?;
    let listed: Vec<(usize, (String, String, String))> = entries
        .manifests
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            e.platform()
                .map(|p| (i, normalize(&p.os, &p.architecture, p.variant.as_deref())))
        })
        .collect();
    let mut chosen: Vec<usize> = Vec::new();
    let mut missing = Vec::new();
    for p in platforms {
        let want = p.normalized();
        match listed.iter().find(|(_, have)| *have == want) {
            Some((i, _)) if !chosen.contains(i) => chosen.push(*i),
            Some(_) => {}
            None => missing.push(p.to_string()),
        }
    }
    if !missing.is_empty() {
        let have: Vec<EntryPlatform> = entries
            .manifests
            .into_iter()
            .filter(|e| e.platform().is_some())
            .filter_map(|e| e.platform)
            .collect();
        return Err(not_found(reference, missing, &have));
    }
    chosen.sort_unstable();
    let manifest = Manifest::parse(reference, &top.media_type, &top.bytes)?;
    if let [only] = chosen[..] {
        return match manifest.children().get(only) {
            Some(d) => Ok(Pick::Child(d.clone())),
            None => Err(malformed(
                reference,
                &top.media_type,
                "index entry without a descriptor",
            )),
        };
    }
    let bytes = selected_index(reference, &top, &chosen)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::Limit {
            operation: "select platforms",
            reference: reference.to_string(),
            what: "index of the selected platforms (bytes)".into(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let bytes = Bytes::from(bytes);
    Ok(Pick::Index(ManifestData {
        digest: Digest::of(&bytes),
        media_type: top.media_type,
        bytes,
    }))
}

fn malformed(reference: &str, media_type: &str, reason: &str) -> Error {
    Error::UnsupportedManifest {
        reference: reference.to_string(),
        media_type: media_type.to_string(),
        reason: reason.to_string(),
    }
}

/// The source index with only the entries at `chosen` (ascending), serialised
/// canonically.
fn selected_index(reference: &str, top: &ManifestData, chosen: &[usize]) -> Result<Vec<u8>> {
    let mut index: Value = serde_json::from_slice(&top.bytes)
        .map_err(|e| malformed(reference, &top.media_type, &format!("not valid JSON: {e}")))?;
    let Some(Value::Array(entries)) = index.get_mut("manifests") else {
        return Err(malformed(
            reference,
            &top.media_type,
            "an index without manifests",
        ));
    };
    let kept: Vec<Value> = std::mem::take(entries)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| chosen.contains(i))
        .map(|(_, e)| e)
        .collect();
    *entries = kept;
    let mut out = Vec::with_capacity(top.bytes.len());
    canonical(&index, &mut out);
    Ok(out)
}

/// Canonical JSON: object keys sorted by their bytes, no insignificant whitespace,
/// strings escaped as serde_json does. Independent of serde_json's map order (its
/// `preserve_order` feature), so every build computes the same bytes.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => string(s, out),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn index(entries: &str) -> ManifestData {
        let bytes = Bytes::from(format!(
            r#"{{"schemaVersion": 2, "mediaType": "{}", "annotations": {{"b": "2", "a": "1"}}, "manifests": [{entries}]}}"#,
            crate::manifest::OCI_INDEX
        ));
        ManifestData {
            digest: Digest::of(&bytes),
            media_type: crate::manifest::OCI_INDEX.into(),
            bytes,
        }
    }

    fn entry(n: u8, platform: &str) -> String {
        format!(
            r#"{{"mediaType":"{}","digest":"sha256:{}","size":{n},"platform":{platform}}}"#,
            crate::manifest::OCI_MANIFEST,
            hex::encode([n; 32])
        )
    }

    fn three() -> ManifestData {
        index(&[
            entry(1, r#"{"os":"linux","architecture":"amd64"}"#),
            entry(2, r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#),
            entry(3, r#"{"architecture":"s390x","os":"linux"}"#),
            r#"{"mediaType":"x","digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444","size":4,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}"#.to_string(),
        ]
        .join(","))
    }

    fn select(top: ManifestData, platforms: &[&str]) -> Result<Pick> {
        let platforms: Vec<Platform> = platforms.iter().map(|s| p(s)).collect();
        select_from_index("r", top, &platforms)
    }

    #[test]
    fn one_platform_is_the_child_itself() {
        let Pick::Child(d) = select(three(), &["linux/arm64"]).unwrap() else {
            panic!("not a child")
        };
        assert_eq!(d.digest.hex(), hex::encode([2u8; 32]));
        // Two spellings of one platform are one platform.
        let pick = select(three(), &["linux/arm64", "linux/arm64/v8"]).unwrap();
        assert!(matches!(pick, Pick::Child(_)), "{pick:?}");
    }

    #[test]
    fn several_platforms_give_one_canonical_index_whatever_the_order() {
        let Pick::Index(a) = select(three(), &["linux/s390x", "linux/amd64"]).unwrap() else {
            panic!("not an index")
        };
        let Pick::Index(b) = select(three(), &["linux/amd64", "linux/s390x"]).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.digest, Digest::of(&a.bytes));
        assert_eq!(a.media_type, crate::manifest::OCI_INDEX);
        let text = std::str::from_utf8(&a.bytes).unwrap();
        let want = format!(
            r#"{{"annotations":{{"a":"1","b":"2"}},"manifests":[{{"digest":"sha256:{}","mediaType":"{m}","platform":{{"architecture":"amd64","os":"linux"}},"size":1}},{{"digest":"sha256:{}","mediaType":"{m}","platform":{{"architecture":"s390x","os":"linux"}},"size":3}}],"mediaType":"{}","schemaVersion":2}}"#,
            hex::encode([1u8; 32]),
            hex::encode([3u8; 32]),
            crate::manifest::OCI_INDEX,
            m = crate::manifest::OCI_MANIFEST,
        );
        assert_eq!(text, want);
    }

    #[test]
    fn an_unselected_platform_does_not_change_the_index() {
        let two = index(
            &[
                entry(1, r#"{"os":"linux","architecture":"amd64"}"#),
                entry(2, r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#),
            ]
            .join(","),
        );
        let sel = ["linux/amd64", "linux/arm64/v8"];
        let (Pick::Index(a), Pick::Index(b)) =
            (select(two, &sel).unwrap(), select(three(), &sel).unwrap())
        else {
            panic!("not indexes")
        };
        assert_eq!(a.digest, b.digest);
    }

    #[test]
    fn a_missing_platform_names_the_available_ones() {
        let e = select(three(), &["linux/amd64", "linux/ppc64le", "windows/amd64"]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(!e.is_not_found(), "never taken for 'gone'");
        let text = e.to_string();
        assert!(
            text.contains("linux/ppc64le") && text.contains("windows/amd64"),
            "{text}"
        );
        assert!(
            text.contains("linux/amd64, linux/arm64/v8, linux/s390x"),
            "{text}"
        );
        assert!(
            !text.contains("unknown"),
            "attestations are no platform: {text}"
        );
        // An attestation entry cannot be selected.
        assert!(select(three(), &["unknown/unknown"]).is_err());
    }

    #[test]
    fn the_first_entry_of_a_platform_wins() {
        let top = index(
            &[
                entry(1, r#"{"os":"linux","architecture":"amd64"}"#),
                entry(
                    5,
                    r#"{"os":"linux","architecture":"amd64","os.features":["zstd"]}"#,
                ),
                entry(2, r#"{"os":"linux","architecture":"arm64"}"#),
            ]
            .join(","),
        );
        let Pick::Child(d) = select(top, &["linux/amd64"]).unwrap() else {
            panic!("not a child")
        };
        assert_eq!(d.size, 1);
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes() {
        let v: Value =
            serde_json::from_str(r#"{"z":[1,{"b":"\u0041\"\n","a":null}],"a":true}"#).unwrap();
        let mut out = Vec::new();
        canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":true,"z":[1,{"a":null,"b":"A\"\n"}]}"#
        );
    }
}
