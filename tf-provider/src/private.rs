//! Private state: what this resource instance did at the destination.
//!
//! Terraform keeps these bytes next to the resource's state and hands them back on every
//! later call. Both protocols carry them the same way (tfplugin5 and tfplugin6): set by
//! the `private` field of the `ApplyResourceChange`, `ReadResource` and
//! `ImportResourceState` responses, passed back as `prior_private` (plan), `planned_private`
//! (apply) and `private` (read). `UpgradeResourceState` does not carry them: an upgrade
//! rewrites the value only and Terraform keeps the private bytes unchanged.
//!
//! The bytes are a small JSON object:
//! - `written`: the digest the last sync left at the destination (the only key earlier
//!   versions of the provider wrote);
//! - `ownership`: `written` (this resource's manifest PUT wrote the tag), `adopted` (the
//!   destination already held the digest when the resource was created) or `imported`;
//! - `uploaded`: the blobs this resource's copies uploaded (at most
//!   [`MAX_RECORDED_BLOBS`]), the only blobs its destroy may delete;
//! - `truncated`: more blobs were uploaded than recorded (the rest are kept on destroy).
//! - `previous`: digests this resource wrote to the tag before the source moved on (at
//!   most [`MAX_PREVIOUS`]). Their manifests stay, untagged, so an `id` pinned to them
//!   still pulls; destroy deletes them with the tag.
//! - `selected_from`: with `platforms`, the source index digest the selection in
//!   `source_digest` was made from, so a plan whose source still resolves to it needs no
//!   read of the source index (what a selection gives is fixed by that digest).
//!
//! A state written before ownership was recorded has no `ownership` and no `uploaded`:
//! its destroy keeps the earlier rule for the tag (delete it while it still points at the
//! digest in state, which the configuration declared) and keeps every layer.

use std::collections::BTreeSet;

use imagesync_engine::Digest;
use serde_json::{json, Map, Value as Json};

/// The most blob digests recorded per resource (about 75 KB of private state).
pub const MAX_RECORDED_BLOBS: usize = 1024;

/// The most earlier digests kept (untagged) for pinned users until destroy.
pub const MAX_PREVIOUS: usize = 64;

/// Private state larger than this is not read (it cannot be ours; treated as no record).
pub const MAX_PRIVATE_BYTES: usize = 128 * 1024;

/// How the resource came to manage its destination tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// This resource's own manifest PUT wrote the tag.
    Written,
    /// The destination already held the digest when the resource was created: nothing was
    /// written, so destroy leaves the tag.
    Adopted,
    /// `terraform import`: the user declared the tag as this resource's.
    Imported,
}

impl Ownership {
    fn as_str(self) -> &'static str {
        match self {
            Ownership::Written => "written",
            Ownership::Adopted => "adopted",
            Ownership::Imported => "imported",
        }
    }

    fn parse(s: &str) -> Option<Ownership> {
        match s {
            "written" => Some(Ownership::Written),
            "adopted" => Some(Ownership::Adopted),
            "imported" => Some(Ownership::Imported),
            _ => None,
        }
    }
}

/// Private state kept with the resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Private {
    /// Digest at the destination after the last sync (destroy deletes only while the tag
    /// still points at it).
    pub written: Option<Digest>,
    /// How the tag came to be managed; `None`: no record (an earlier provider version).
    pub ownership: Option<Ownership>,
    /// Blobs this resource's copies uploaded; `None`: no record (an earlier provider
    /// version, or imported).
    pub uploaded: Option<BTreeSet<Digest>>,
    /// More blobs were uploaded than [`MAX_RECORDED_BLOBS`]; only the recorded ones may go.
    pub truncated: bool,
    /// Digests this resource wrote before the tag moved on, oldest first; kept untagged
    /// until destroy.
    pub previous: Vec<Digest>,
    /// Referrer manifests (signatures, attestations, SBOMs) this resource's syncs wrote (at
    /// most [`MAX_RECORDED_REFERRERS`]): destroy removes them with the image.
    pub referrers: Vec<Digest>,
    /// The engine's referrers probe recorded at the last sync that looked at referrers:
    /// a plan compares the source's probe with it (two HEADs).
    pub referrers_probe: Option<String>,
    /// With `platforms`: the source digest the last sync's selection was made from.
    pub selected_from: Option<Digest>,
}

/// The most referrer digests recorded per resource.
pub const MAX_RECORDED_REFERRERS: usize = 512;
/// The longest referrers probe kept (two digests and their labels are far shorter).
const MAX_PROBE_BYTES: usize = 512;

impl Private {
    /// What an import records: the user declared the tag; no blobs were uploaded by us.
    pub fn imported() -> Private {
        Private {
            ownership: Some(Ownership::Imported),
            ..Private::default()
        }
    }

    /// Decodes. Empty, oversized or malformed bytes give "no record" (the default).
    pub fn decode(bytes: &[u8]) -> Private {
        if bytes.is_empty() || bytes.len() > MAX_PRIVATE_BYTES {
            return Private::default();
        }
        let Ok(Json::Object(v)) = serde_json::from_slice::<Json>(bytes) else {
            return Private::default();
        };
        let written = v
            .get("written")
            .and_then(Json::as_str)
            .and_then(|s| s.parse().ok());
        let ownership = v
            .get("ownership")
            .and_then(Json::as_str)
            .and_then(Ownership::parse);
        let uploaded = v.get("uploaded").and_then(Json::as_array).map(|list| {
            list.iter()
                .filter_map(|d| d.as_str().and_then(|s| s.parse().ok()))
                .take(MAX_RECORDED_BLOBS)
                .collect()
        });
        let truncated = v.get("truncated").and_then(Json::as_bool).unwrap_or(false);
        let previous = v
            .get("previous")
            .and_then(Json::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().and_then(|s| s.parse().ok()))
                    .take(MAX_PREVIOUS)
                    .collect()
            })
            .unwrap_or_default();
        let referrers = v
            .get("referrers")
            .and_then(Json::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().and_then(|s| s.parse().ok()))
                    .take(MAX_RECORDED_REFERRERS)
                    .collect()
            })
            .unwrap_or_default();
        let referrers_probe = v
            .get("referrers_probe")
            .and_then(Json::as_str)
            .filter(|s| s.len() <= MAX_PROBE_BYTES)
            .map(str::to_string);
        let selected_from = v
            .get("selected_from")
            .and_then(Json::as_str)
            .and_then(|s| s.parse().ok());
        Private {
            written,
            ownership,
            uploaded,
            truncated,
            previous,
            referrers,
            referrers_probe,
            selected_from,
        }
    }

    /// Encodes (empty when there is nothing to keep).
    pub fn encode(&self) -> Vec<u8> {
        if *self == Private::default() {
            return Vec::new();
        }
        let mut m = Map::new();
        if let Some(d) = &self.written {
            m.insert("written".into(), json!(d.as_str()));
        }
        if let Some(o) = self.ownership {
            m.insert("ownership".into(), json!(o.as_str()));
        }
        if let Some(blobs) = &self.uploaded {
            let list: Vec<&str> = blobs.iter().map(Digest::as_str).collect();
            m.insert("uploaded".into(), json!(list));
        }
        if self.truncated {
            m.insert("truncated".into(), json!(true));
        }
        if !self.previous.is_empty() {
            let list: Vec<&str> = self.previous.iter().map(Digest::as_str).collect();
            m.insert("previous".into(), json!(list));
        }
        if !self.referrers.is_empty() {
            let list: Vec<&str> = self.referrers.iter().map(Digest::as_str).collect();
            m.insert("referrers".into(), json!(list));
        }
        if let Some(p) = &self.referrers_probe {
            m.insert("referrers_probe".into(), json!(p));
        }
        if let Some(d) = &self.selected_from {
            m.insert("selected_from".into(), json!(d.as_str()));
        }
        Json::Object(m).to_string().into_bytes()
    }

    /// Adds referrers a sync wrote, keeping at most [`MAX_RECORDED_REFERRERS`] (the rest
    /// stay at the destination on destroy).
    pub fn record_referrers(&mut self, written: impl IntoIterator<Item = Digest>) {
        for d in written {
            if !self.referrers.contains(&d) && self.referrers.len() < MAX_RECORDED_REFERRERS {
                self.referrers.push(d);
            }
        }
    }

    /// Keeps `digest` (written by this resource, now replaced at the tag) until destroy.
    /// False when the record is full (the digest is then left to garbage collection).
    pub fn record_previous(&mut self, digest: Digest) -> bool {
        if self.previous.contains(&digest) {
            return true;
        }
        if self.previous.len() >= MAX_PREVIOUS {
            return false;
        }
        self.previous.push(digest);
        true
    }

    /// Adds blobs a copy uploaded, keeping at most [`MAX_RECORDED_BLOBS`].
    pub fn record_uploaded(&mut self, blobs: impl IntoIterator<Item = Digest>) {
        let set = self.uploaded.get_or_insert_with(BTreeSet::new);
        for blob in blobs {
            if set.len() >= MAX_RECORDED_BLOBS && !set.contains(&blob) {
                self.truncated = true;
                continue;
            }
            set.insert(blob);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers_and_their_probe_round_trip_and_are_capped() {
        let mut p = Private::default();
        p.record_referrers((0..600).map(digest));
        p.record_referrers([digest(1)]);
        assert_eq!(p.referrers.len(), MAX_RECORDED_REFERRERS);
        p.referrers_probe = Some("fallback=-;sig=-".into());
        assert_eq!(Private::decode(&p.encode()), p);
        let huge = format!(r#"{{"referrers_probe":"{}"}}"#, "x".repeat(4096));
        assert_eq!(Private::decode(huge.as_bytes()).referrers_probe, None);
    }

    fn digest(n: u32) -> Digest {
        format!("sha256:{:064x}", n).parse().unwrap()
    }

    #[test]
    fn round_trips_every_field() {
        let mut p = Private {
            written: Some(digest(7)),
            ownership: Some(Ownership::Adopted),
            selected_from: Some(digest(9)),
            ..Private::default()
        };
        p.record_uploaded([digest(1), digest(2)]);
        assert!(p.record_previous(digest(5)));
        assert_eq!(Private::decode(&p.encode()), p);
        for o in [Ownership::Written, Ownership::Imported] {
            let q = Private {
                ownership: Some(o),
                ..p.clone()
            };
            assert_eq!(Private::decode(&q.encode()), q);
        }
        assert_eq!(Private::decode(b""), Private::default());
        assert_eq!(Private::default().encode(), Vec::<u8>::new());
    }

    #[test]
    fn garbage_and_oversized_bytes_are_no_record() {
        assert_eq!(Private::decode(b"garbage"), Private::default());
        assert_eq!(Private::decode(b"[1,2]"), Private::default());
        let mut big = br#"{"ownership":"written","pad":""#.to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_PRIVATE_BYTES));
        big.extend(br#""}"#);
        assert_eq!(Private::decode(&big), Private::default());
    }

    #[test]
    fn state_of_an_earlier_version_has_no_ownership_and_no_blob_record() {
        // What the provider wrote before ownership was recorded.
        let old = format!(r#"{{"written":"{}"}}"#, digest(3));
        let p = Private::decode(old.as_bytes());
        assert_eq!(p.written, Some(digest(3)));
        assert_eq!(p.ownership, None);
        assert_eq!(p.uploaded, None);
    }

    #[test]
    fn the_previous_digests_are_bounded() {
        let mut p = Private::default();
        for n in 0..MAX_PREVIOUS as u32 {
            assert!(p.record_previous(digest(n)));
        }
        assert!(p.record_previous(digest(0)), "already kept");
        assert!(!p.record_previous(digest(9999)));
        assert_eq!(p.previous.len(), MAX_PREVIOUS);
        assert_eq!(Private::decode(&p.encode()), p);
    }

    #[test]
    fn the_blob_record_is_bounded_and_says_so() {
        let mut p = Private::default();
        p.record_uploaded((0..MAX_RECORDED_BLOBS as u32 + 10).map(digest));
        let set = p.uploaded.as_ref().unwrap();
        assert_eq!(set.len(), MAX_RECORDED_BLOBS);
        assert!(p.truncated);
        let bytes = p.encode();
        assert!(bytes.len() < MAX_PRIVATE_BYTES, "{} bytes", bytes.len());
        assert_eq!(Private::decode(&bytes), p);
        // A recorded blob seen again does not count as lost.
        let mut q = Private::default();
        q.record_uploaded((0..MAX_RECORDED_BLOBS as u32).map(digest));
        q.record_uploaded([digest(0)]);
        assert!(!q.truncated);
    }
}
