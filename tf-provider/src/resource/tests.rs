//! Plan/apply/read logic against a fake backend (the real Terraform runs are in
//! tests/e2e/tests/terraform.rs).
//!
//! Over 600 lines because the two fakes (direct and Kubernetes mode) and the helpers are
//! shared by every test, and each test spells out one scenario of state, plan and apply.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use imagesync_engine::{Digest, Reference};

use super::*;
use crate::backend::{make_id, Backend, BackendError, Deleted, Observed, Synced, Target};
use crate::codec::Value;

fn digest(n: u8) -> Digest {
    format!("sha256:{}", hex(n)).parse().unwrap()
}

fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// The blob the fake "uploads" on every write.
fn uploaded_blob() -> Digest {
    digest(0xb1)
}

#[derive(Debug, Default)]
struct Fake {
    tags: Mutex<HashMap<String, Digest>>,
    calls: Mutex<Vec<String>>,
    fail_digest: Mutex<Option<u16>>,
    /// The registry refuses manifest DELETEs (`storage.delete.enabled: false`).
    deletes_disabled: Mutex<bool>,
    /// `only_blobs` of the last delete.
    last_only_blobs: Mutex<Option<BTreeSet<Digest>>>,
    /// Syncs fail (e.g. the registry is down).
    fail_sync: Mutex<bool>,
    /// Lookups of references on this registry host fail with a 503 (the host is down).
    down_host: Mutex<Option<String>>,
}

impl Fake {
    fn with(tags: &[(&str, Digest)]) -> Fake {
        let f = Fake::default();
        for (r, d) in tags {
            f.tags
                .lock()
                .unwrap()
                .insert(key(&Reference::parse(r).unwrap()), d.clone());
        }
        f
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn get(&self, r: &str) -> Option<Digest> {
        self.tags
            .lock()
            .unwrap()
            .get(&key(&Reference::parse(r).unwrap()))
            .cloned()
    }
}

fn key(r: &Reference) -> String {
    format!("{}:{}", r.repo_name(), r.manifest_ref())
}

fn registry_error(status: u16) -> BackendError {
    BackendError::Engine(imagesync_engine::Error::Registry {
        kind: match status {
            401 => imagesync_engine::ErrorKind::Unauthorized,
            404 => imagesync_engine::ErrorKind::NotFound,
            _ => imagesync_engine::ErrorKind::Transient,
        },
        operation: "HEAD manifest",
        reference: "x".into(),
        status,
        code: None,
        message: "nope".into(),
        retry_after: None,
    })
}

#[async_trait]
impl Backend for Fake {
    fn bookkeeper(&self) -> crate::backend::Bookkeeper {
        crate::backend::Bookkeeper::Resource
    }

    async fn digest(&self, r: &Reference) -> Result<Option<Digest>, BackendError> {
        self.calls.lock().unwrap().push(format!("digest {r}"));
        if let Some(status) = *self.fail_digest.lock().unwrap() {
            return Err(registry_error(status));
        }
        if let Some(host) = self.down_host.lock().unwrap().as_deref() {
            if r.to_string().starts_with(host) {
                return Err(registry_error(503));
            }
        }
        if let Some(d) = r.digest() {
            return Ok(Some(d.clone()));
        }
        Ok(self.tags.lock().unwrap().get(&key(r)).cloned())
    }

    async fn observe(&self, t: &Target) -> Result<Option<Observed>, BackendError> {
        Ok(self.digest(&t.destination).await?.map(|d| Observed {
            id: make_id(&t.destination_text, &t.destination, &d),
            source_digest: None,
        }))
    }

    async fn sync(&self, t: &Target, expect: Option<Digest>) -> Result<Synced, BackendError> {
        let (s, d) = (&t.source, &t.destination);
        self.calls
            .lock()
            .unwrap()
            .push(format!("sync {s} {d} {expect:?}"));
        if *self.fail_sync.lock().unwrap() {
            return Err(registry_error(503));
        }
        let src = match &expect {
            Some(e) => e.clone(),
            None => self
                .tags
                .lock()
                .unwrap()
                .get(&key(s))
                .cloned()
                .ok_or_else(|| registry_error(404))?,
        };
        let adopted = self.tags.lock().unwrap().insert(key(d), src.clone()) == Some(src.clone());
        Ok(Synced {
            id: make_id(&t.destination_text, d, &src),
            source_digest: src.clone(),
            destination_digest: src,
            adopted,
            // One blob uploaded per write: the "layer" UPLOADED.
            uploaded: if adopted {
                vec![]
            } else {
                vec![uploaded_blob()]
            },
            referrers: Default::default(),
            selected_from: None,
        })
    }

    async fn delete(&self, t: &Target, expect: Option<Digest>) -> Result<Deleted, BackendError> {
        let (d, layers) = (&t.destination, t.delete_layers);
        let only = t.only_blobs.as_ref().map(|b| b.len());
        self.calls.lock().unwrap().push(format!(
            "delete {d} {expect:?} {layers} only_blobs={only:?}"
        ));
        *self.last_only_blobs.lock().unwrap() = t.only_blobs.clone();
        let mut tags = self.tags.lock().unwrap();
        if *self.deletes_disabled.lock().unwrap() && tags.contains_key(&key(d)) {
            // What the engine answers when the registry refuses the manifest DELETE.
            return Err(BackendError::Engine(imagesync_engine::Error::Registry {
                kind: imagesync_engine::ErrorKind::Unsupported,
                operation: "DELETE manifest",
                reference: d.to_string(),
                status: 405,
                code: Some("UNSUPPORTED".into()),
                message:
                    "the registry does not allow deleting manifests; the image was left in place"
                        .into(),
                retry_after: None,
            }));
        }
        match tags.get(&key(d)) {
            None => Ok(Deleted {
                already_gone: true,
                warnings: vec![],
            }),
            Some(cur) if expect.as_ref().is_some_and(|e| e != cur) => {
                Err(BackendError::Engine(imagesync_engine::Error::NotOwned {
                    reference: d.to_string(),
                    expected: expect.unwrap().to_string(),
                    actual: cur.to_string(),
                }))
            }
            Some(_) => {
                tags.remove(&key(d));
                Ok(Deleted::default())
            }
        }
    }
}

const SRC: &str = "127.0.0.1:5000/src/app:1";
const DST: &str = "127.0.0.1:6000/dst/app:1";

fn config(source: Value, destination: &str) -> Model {
    Model {
        id: Value::Unknown,
        source,
        destination: Value::String(destination.into()),
        source_digest: Value::Unknown,
        delete_layers: Value::Null,
        namespace: Value::Null,
        name: Value::Null,
        timeouts: Value::Null,
        referrers: Value::Null,
        referrer_types: Value::Null,
        copied_referrers: Value::Unknown,
        platforms: Value::Null,
        resync_interval: Value::Null,
        source_secret_ref: Value::Null,
        destination_secret_ref: Value::Null,
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

async fn created(fake: &Fake) -> Model {
    created_with_private(fake).await.0
}

async fn created_with_private(fake: &Fake) -> (Model, Private) {
    let planned = plan(fake, None, Some(config(s(SRC), DST))).await;
    assert!(planned.diags.is_empty(), "{:?}", planned.diags);
    let applied = apply(fake, None, planned.state, Private::default()).await;
    assert!(applied.diags.is_empty(), "{:?}", applied.diags);
    (applied.state.unwrap(), applied.private)
}

#[tokio::test]
async fn create_plans_the_source_digest_and_copies_it_by_digest() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let planned = plan(&fake, None, Some(config(s(SRC), DST))).await;
    let state = planned.state.clone().unwrap();
    assert_eq!(state.source_digest, s(digest(1).as_str()));
    // Known at plan time: a copy keeps the digest.
    assert_eq!(
        state.id,
        s(&format!("127.0.0.1:6000/dst/app@{}", digest(1)))
    );
    assert_eq!(state.delete_layers, Value::Bool(true));
    // The tag moves between plan and apply: we still copy what was planned.
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(SRC).unwrap()), digest(9));
    let applied = apply(&fake, None, planned.state, Private::default()).await;
    let m = applied.state.unwrap();
    assert_eq!(m.id, s(&format!("127.0.0.1:6000/dst/app@{}", digest(1))));
    assert_eq!(applied.private.written, Some(digest(1)));
    assert!(fake
        .calls()
        .iter()
        .any(|c| c.contains("sync") && c.contains(&hex(1))));
}

#[tokio::test]
async fn id_of_a_digest_destination_is_the_destination() {
    let dst = format!("127.0.0.1:6000/dst/app@{}", digest(1));
    let fake = Fake::with(&[(SRC, digest(1))]);
    let planned = plan(&fake, None, Some(config(s(SRC), &dst))).await;
    let applied = apply(&fake, None, planned.state, Private::default()).await;
    assert_eq!(applied.state.unwrap().id, s(&dst));
    // A pinned destination that can never match is a plan error on `destination`.
    let other = format!("127.0.0.1:6000/dst/app@{}", digest(2));
    let planned = plan(&fake, None, Some(config(s(SRC), &other))).await;
    assert!(planned
        .diags
        .iter()
        .any(|d| d.error && d.path == vec![crate::diag::PathStep::Attr("destination".into())]));
}

#[tokio::test]
async fn unknown_source_does_not_fail_the_plan() {
    let fake = Fake::default();
    let planned = plan(&fake, None, Some(config(Value::Unknown, DST))).await;
    assert!(planned.diags.is_empty());
    assert!(planned.state.unwrap().source_digest.is_unknown());
    assert!(fake.calls().is_empty(), "no lookup for an unknown source");
}

#[tokio::test]
async fn a_moved_source_tag_is_an_in_place_re_sync_that_keeps_the_old_image_until_destroy() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let (state, private) = created_with_private(&fake).await;
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    assert_eq!(p.state.as_ref(), Some(&state));
    assert!(p.requires_replace.is_empty());

    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(SRC).unwrap()), digest(2));
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    assert!(
        p.requires_replace.is_empty(),
        "no replacement: nothing is deleted first"
    );
    let planned = p.state.unwrap();
    assert_eq!(planned.source_digest, s(digest(2).as_str()));
    let new_id = format!("127.0.0.1:6000/dst/app@{}", digest(2));
    assert_eq!(planned.id, s(&new_id), "the new id is known at plan time");
    let applied = apply(&fake, Some(state), Some(planned.clone()), private).await;
    assert!(applied.diags.is_empty(), "{:?}", applied.diags);
    // The re-sync also looked at the referrers (none in the fake).
    assert_eq!(planned.copied_referrers, Value::Unknown);
    let filled = Model {
        copied_referrers: Value::List(Vec::new()),
        ..planned
    };
    assert_eq!(applied.state, Some(filled));
    assert_eq!(fake.get(DST), Some(digest(2)));
    assert_eq!(applied.private.previous, vec![digest(1)]);
    assert!(
        !fake.calls().iter().any(|c| c.starts_with("delete")),
        "the re-sync deleted something: {:?}",
        fake.calls()
    );
    // Destroy deletes the earlier image (by digest) before the tag.
    let gone = apply(&fake, applied.state, None, applied.private).await;
    assert!(gone.state.is_none(), "{:?}", gone.diags);
    let deletes: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("delete"))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(
        deletes[0].contains(&format!("dst/app@{}", digest(1))),
        "{deletes:?}"
    );
    assert!(deletes[1].contains("dst/app:1"), "{deletes:?}");
}

#[tokio::test]
async fn an_unreachable_source_keeps_an_existing_resource_and_warns() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let state = created(&fake).await;
    *fake.down_host.lock().unwrap() = Some("127.0.0.1:5000".into());
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    assert!(!crate::diag::has_errors(&p.diags), "{:?}", p.diags);
    assert!(
        p.diags
            .iter()
            .any(|d| d.summary.starts_with("Cannot check the source image")),
        "{:?}",
        p.diags
    );
    assert_eq!(p.state.as_ref(), Some(&state), "state kept");
    assert!(p.diags.iter().all(|d| !d.summary.contains("transient")));
    // A new resource cannot be made without its source: an error.
    let p = plan(&fake, None, Some(config(s(SRC), DST))).await;
    assert!(crate::diag::has_errors(&p.diags), "{:?}", p.diags);
    // Destroy does not look at the source.
    let gone = apply(&fake, Some(state), None, Private::default()).await;
    assert!(gone.state.is_none(), "{:?}", gone.diags);
}

#[tokio::test]
async fn source_change_with_same_digest_is_in_place_without_copy() {
    let other = "127.0.0.1:5000/src/app:latest";
    let fake = Fake::with(&[(SRC, digest(1)), (other, digest(1))]);
    let state = created(&fake).await;
    let mut proposed = state.clone();
    proposed.source = s(other);
    let p = plan(&fake, Some(state.clone()), Some(proposed)).await;
    assert!(p.requires_replace.is_empty());
    let planned = p.state.unwrap();
    assert_eq!(planned.id, state.id);
    let before = fake.calls().len();
    let applied = apply(
        &fake,
        Some(state),
        Some(planned.clone()),
        Private::default(),
    )
    .await;
    assert_eq!(applied.state, Some(planned));
    assert_eq!(
        fake.calls().len(),
        before,
        "no backend call for an in-place update"
    );
}

#[tokio::test]
async fn read_removes_only_on_not_found_and_reports_drift() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let state = created(&fake).await;
    // Drift: the destination points elsewhere -> id shows it, plan re-syncs in place.
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(DST).unwrap()), digest(3));
    let (refreshed, diags) = read(&fake, state.clone()).await;
    assert!(diags.is_empty());
    let refreshed = refreshed.unwrap();
    assert_eq!(
        refreshed.id,
        s(&format!("127.0.0.1:6000/dst/app@{}", digest(3)))
    );
    let p = plan(&fake, Some(refreshed.clone()), Some(refreshed.clone())).await;
    assert!(p.requires_replace.is_empty());
    assert_eq!(
        p.state.unwrap().id,
        state.id,
        "planned back to the source's digest"
    );

    // Errors other than not-found keep the state and report.
    *fake.fail_digest.lock().unwrap() = Some(401);
    let (kept, diags) = read(&fake, state.clone()).await;
    assert_eq!(kept, Some(state.clone()));
    assert!(
        diags[0].error && diags[0].summary.contains("authentication failed"),
        "{diags:?}"
    );
    *fake.fail_digest.lock().unwrap() = Some(503);
    let (kept, _) = read(&fake, state.clone()).await;
    assert!(kept.is_some());

    // Not found: gone.
    *fake.fail_digest.lock().unwrap() = None;
    fake.tags
        .lock()
        .unwrap()
        .remove(&key(&Reference::parse(DST).unwrap()));
    let (gone, diags) = read(&fake, state).await;
    assert!(gone.is_none() && diags.is_empty());
}

#[tokio::test]
async fn destroy_deletes_only_what_we_wrote() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let (state, private) = created_with_private(&fake).await;
    assert_eq!(private.written, Some(digest(1)));
    assert_eq!(private.ownership, Some(Ownership::Written));
    // Someone else took the tag: warning, tag left alone, resource gone from state.
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(DST).unwrap()), digest(4));
    let applied = apply(&fake, Some(state.clone()), None, private.clone()).await;
    assert!(applied.state.is_none());
    assert!(applied.diags.iter().all(|d| !d.error) && !applied.diags.is_empty());
    assert_eq!(fake.get(DST), Some(digest(4)));
    // Ours: deleted with the expected digest and delete_layers.
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(DST).unwrap()), digest(1));
    let applied = apply(&fake, Some(state.clone()), None, private.clone()).await;
    assert!(applied.diags.is_empty(), "{:?}", applied.diags);
    assert_eq!(fake.get(DST), None);
    assert!(fake
        .calls()
        .last()
        .unwrap()
        .ends_with(&format!("Some({}) true only_blobs=Some(1)", digest(1))));
    // Only the blob this resource uploaded may be deleted.
    assert_eq!(
        *fake.last_only_blobs.lock().unwrap(),
        Some(BTreeSet::from([uploaded_blob()]))
    );
    // Already gone: success.
    let applied = apply(&fake, Some(state), None, private).await;
    assert!(applied.diags.is_empty() && applied.state.is_none());
}

#[tokio::test]
async fn destroy_on_a_registry_without_deletes_warns_and_leaves_the_image() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let (state, private) = created_with_private(&fake).await;
    *fake.deletes_disabled.lock().unwrap() = true;
    let applied = apply(&fake, Some(state), None, private).await;
    // Gone from state, with one warning (not an error) saying why the image stays.
    assert!(applied.state.is_none(), "{:?}", applied.state);
    assert_eq!(applied.diags.len(), 1, "{:?}", applied.diags);
    let d = &applied.diags[0];
    assert!(!d.error, "{d:?}");
    assert!(d.summary.contains("does not allow deletes"), "{d:?}");
    assert!(d.detail.contains("left in place"), "{d:?}");
    assert!(d.detail.contains(DST), "{d:?}");
    // The image is still there, and delete was asked exactly once.
    assert_eq!(fake.get(DST), Some(digest(1)));
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("delete "))
            .count(),
        1
    );
}

#[tokio::test]
async fn plan_errors_name_the_attribute() {
    let fake = Fake::default();
    let p = plan(
        &fake,
        None,
        Some(config(s("127.0.0.1:5000/Bad/Repo:1"), DST)),
    )
    .await;
    assert_eq!(p.diags.len(), 1);
    assert_eq!(
        p.diags[0].path,
        vec![crate::diag::PathStep::Attr("source".into())]
    );
    let diags = validate(&config(s(SRC), "a b").to_value());
    assert_eq!(
        diags[0].path,
        vec![crate::diag::PathStep::Attr("destination".into())]
    );
    assert!(validate(&config(Value::Unknown, DST).to_value()).is_empty());
    // A registry failure while planning is an error on `source`, never "gone".
    *fake.fail_digest.lock().unwrap() = Some(401);
    let p = plan(&fake, None, Some(config(s(SRC), DST))).await;
    assert!(
        p.diags[0].error && p.diags[0].path == vec![crate::diag::PathStep::Attr("source".into())]
    );
}

#[test]
fn import_takes_source_comma_destination() {
    let m = import(&format!("{SRC},{DST}")).unwrap();
    assert_eq!(m.source, s(SRC));
    assert_eq!(m.destination, s(DST));
    assert!(m.source_digest.is_null());
    assert!(import(SRC)
        .unwrap_err()
        .summary
        .contains("Invalid import ID"));
    assert!(import("a,B C").is_err());
}

#[tokio::test]
async fn read_after_import_fills_id_and_source_digest() {
    let fake = Fake::with(&[(DST, digest(5))]);
    let (m, diags) = read(&fake, import(&format!("{SRC},{DST}")).unwrap()).await;
    assert!(diags.is_empty());
    let m = m.unwrap();
    assert_eq!(m.id, s(&format!("127.0.0.1:6000/dst/app@{}", digest(5))));
    assert_eq!(m.source_digest, s(digest(5).as_str()));
}

#[test]
fn upgrade_fills_delete_layers_and_keeps_the_rest() {
    // The original Go provider's state (schema version 1).
    let raw = Value::from_json(
        format!(
            r#"{{"id":"x@{}","source":"{SRC}","destination":"{DST}","source_digest":"{}"}}"#,
            digest(1),
            digest(1)
        )
        .as_bytes(),
    )
    .unwrap();
    let m = upgrade(raw);
    assert_eq!(m.delete_layers, Value::Bool(true));
    assert_eq!(m.source, s(SRC));
    // Flatmap strings.
    let flat = Value::Object([("delete_layers".to_string(), s("false"))].into());
    assert_eq!(upgrade(flat).delete_layers, Value::Bool(false));
}

#[tokio::test]
async fn kubernetes_only_attributes_are_rejected_in_direct_mode() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let mut m = config(s(SRC), DST);
    m.namespace = s("team");
    let p = plan(&fake, None, Some(m)).await;
    assert!(p
        .diags
        .iter()
        .any(|d| d.error && d.path == vec![crate::diag::PathStep::Attr("namespace".into())]));
}

/// The attack of issue 12 on a fake registry: `source` = `destination` = someone
/// else's existing tag. Create adopts it (nothing written), destroy leaves it and warns.
#[tokio::test]
async fn a_destination_that_already_held_the_image_is_adopted_and_survives_destroy() {
    let theirs = "127.0.0.1:6000/platform/api:v3";
    for source in [theirs, SRC] {
        let fake = Fake::with(&[(theirs, digest(3)), (SRC, digest(3))]);
        let planned = plan(&fake, None, Some(config(s(source), theirs))).await;
        let applied = apply(&fake, None, planned.state, Private::default()).await;
        let state = applied.state.clone().unwrap();
        assert_eq!(applied.private.ownership, Some(Ownership::Adopted));
        assert_eq!(applied.private.uploaded, None, "nothing uploaded");
        assert!(
            applied
                .diags
                .iter()
                .any(|d| !d.error && d.summary.contains("adopted")),
            "{:?}",
            applied.diags
        );
        // The private state survives the refresh (echoed by ReadResource) and the plan.
        let private = Private::decode(&applied.private.encode());
        let destroyed = apply(&fake, Some(state), None, private).await;
        assert!(destroyed.state.is_none());
        assert_eq!(destroyed.diags.len(), 1, "{:?}", destroyed.diags);
        let d = &destroyed.diags[0];
        assert!(!d.error && d.summary.contains("left in place"), "{d:?}");
        assert!(d.detail.contains("platform/api:v3"), "{d:?}");
        assert_eq!(fake.get(theirs), Some(digest(3)), "their tag was deleted");
        assert!(
            fake.calls().iter().all(|c| !c.starts_with("delete ")),
            "{:?}",
            fake.calls()
        );
    }
}

/// Moving an adopted resource to another destination (a replacement) leaves the old tag.
#[tokio::test]
async fn replacing_an_adopted_resource_leaves_the_old_destination() {
    let fake = Fake::with(&[(SRC, digest(1)), (DST, digest(1))]);
    let planned = plan(&fake, None, Some(config(s(SRC), DST))).await;
    let first = apply(&fake, None, planned.state, Private::default()).await;
    let state = first.state.clone().unwrap();
    assert_eq!(first.private.ownership, Some(Ownership::Adopted));
    let mut moved = state.clone();
    moved.destination = s("127.0.0.1:6000/dst/app:2");
    let p = plan(&fake, Some(state.clone()), Some(moved)).await;
    assert_eq!(p.requires_replace, vec![attr::DESTINATION]);
    // Terraform applies a replacement as a destroy of the old instance and a create,
    // handing the old instance's private state to both.
    let gone = apply(&fake, Some(state), None, first.private.clone()).await;
    assert!(gone.state.is_none());
    assert_eq!(
        fake.get(DST),
        Some(digest(1)),
        "the adopted tag was deleted"
    );
    let new = apply(&fake, None, p.state, first.private.clone()).await;
    assert_eq!(new.private.ownership, Some(Ownership::Written));
    assert_eq!(fake.get("127.0.0.1:6000/dst/app:2"), Some(digest(1)));
}

/// An in-place re-sync that writes the tag takes ownership; one that finds it in place
/// keeps the record it had, and a failed one keeps it too.
#[tokio::test]
async fn re_syncs_update_the_record_and_failures_keep_it() {
    let fake = Fake::with(&[(SRC, digest(1)), (DST, digest(1))]);
    let planned = plan(&fake, None, Some(config(s(SRC), DST))).await;
    let adopted = apply(&fake, None, planned.state, Private::default()).await;
    let state = adopted.state.clone().unwrap();
    // Found in place again: still adopted.
    let mut drifted = state.clone();
    drifted.id = Value::Unknown;
    let again = apply(
        &fake,
        Some(state.clone()),
        Some(drifted.clone()),
        adopted.private.clone(),
    )
    .await;
    assert_eq!(again.private.ownership, Some(Ownership::Adopted));
    // A failed re-sync keeps the prior state and record.
    *fake.fail_sync.lock().unwrap() = true;
    let failed = apply(
        &fake,
        Some(state.clone()),
        Some(drifted.clone()),
        adopted.private.clone(),
    )
    .await;
    assert!(failed.diags.iter().any(|d| d.error));
    assert_eq!(failed.private, adopted.private);
    assert_eq!(failed.state, Some(state.clone()));
    *fake.fail_sync.lock().unwrap() = false;
    // The tag moved elsewhere and the re-sync wrote it back: now ours, with its blob.
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(DST).unwrap()), digest(9));
    let written = apply(&fake, Some(state), Some(drifted), adopted.private).await;
    assert_eq!(written.private.ownership, Some(Ownership::Written));
    assert_eq!(
        written.private.uploaded,
        Some(BTreeSet::from([uploaded_blob()]))
    );
}

/// `terraform import` takes ownership of the tag (the user declared it) but of no blob.
#[tokio::test]
async fn an_imported_resource_deletes_its_tag_but_no_layers() {
    let fake = Fake::with(&[(DST, digest(5))]);
    let private = Private::decode(&Private::imported().encode());
    assert_eq!(private.ownership, Some(Ownership::Imported));
    let (state, _) = read(&fake, import(&format!("{SRC},{DST}")).unwrap()).await;
    let applied = apply(&fake, state, None, private).await;
    assert!(applied.state.is_none());
    assert_eq!(fake.get(DST), None, "the imported tag was not deleted");
    assert_eq!(*fake.last_only_blobs.lock().unwrap(), Some(BTreeSet::new()));
    assert!(
        applied
            .diags
            .iter()
            .any(|d| !d.error && d.summary.contains("Layers of")),
        "{:?}",
        applied.diags
    );
}

/// Upgrade: a resource created by an earlier version (private state `{"written": ...}`
/// only) keeps the earlier rule for its tag and keeps every layer, with a warning.
#[tokio::test]
async fn a_resource_from_an_earlier_version_keeps_its_layers() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let state = created(&fake).await;
    let old = Private::decode(format!(r#"{{"written":"{}"}}"#, digest(1)).as_bytes());
    let applied = apply(&fake, Some(state.clone()), None, old).await;
    assert!(applied.state.is_none());
    assert_eq!(fake.get(DST), None);
    assert_eq!(*fake.last_only_blobs.lock().unwrap(), Some(BTreeSet::new()));
    assert!(
        applied
            .diags
            .iter()
            .any(|d| d.summary.contains("Layers of")),
        "{:?}",
        applied.diags
    );
    // delete_layers = false: no candidates either way, and no warning.
    let fake = Fake::with(&[(SRC, digest(1))]);
    let mut state = created(&fake).await;
    state.delete_layers = Value::Bool(false);
    let applied = apply(&fake, Some(state), None, Private::default()).await;
    assert!(applied.diags.is_empty(), "{:?}", applied.diags);
    assert_eq!(*fake.last_only_blobs.lock().unwrap(), None);
}

/// A hostile `timeouts { create = "99999999999999999999h" }` is a plan error on the
/// attribute (it used to be replaced by the default silently; a smaller huge value
/// overflowed the multiplication, and `Instant::now() + timeout` panics).
#[tokio::test]
async fn hostile_timeouts_are_a_plan_error_not_a_panic() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    for hostile in ["99999999999999999999h", "5124095576030432h", "25h"] {
        let mut m = config(s(SRC), DST);
        m.timeouts = Value::Object([("create".to_string(), s(hostile))].into());
        let diags = validate(&m.to_value());
        assert_eq!(diags.len(), 1, "{hostile}: {diags:?}");
        assert_eq!(
            diags[0].path,
            vec![
                crate::diag::PathStep::Attr("timeouts".into()),
                crate::diag::PathStep::Attr("create".into())
            ]
        );
        let p = plan(&fake, None, Some(m.clone())).await;
        assert!(p.diags.iter().any(|d| d.error), "{hostile}");
        assert!(p.state.is_none());
        // Already in a state: read and destroy still work, with the default timeout.
        let t = m.target().unwrap().unwrap();
        assert_eq!(t.create_timeout, DEFAULT_TIMEOUT);
    }
    let mut m = config(s(SRC), DST);
    m.timeouts = Value::Object([("delete".to_string(), s("2m"))].into());
    assert_eq!(
        m.target().unwrap().unwrap().delete_timeout,
        std::time::Duration::from_secs(120)
    );
}

/// `terraform validate`: what it can check without the provider block and without
/// variable values.
#[test]
fn validate_checks_literals_and_leaves_unknowns_to_plan() {
    let mut m = config(s("127.0.0.1:5000/src/App:1"), DST);
    assert!(validate(&m.to_value())
        .iter()
        .any(|d| d.error && d.summary.contains("\"source\"")));
    // A value from a variable is unknown at validate time: checked at plan.
    m.source = Value::Unknown;
    assert!(validate(&m.to_value()).is_empty());
    for (name, ok) in [
        ("web-1", true),
        ("a.b", true),
        ("Web", false),
        ("-x", false),
        ("a..b", false),
    ] {
        m.name = s(name);
        assert_eq!(validate(&m.to_value()).is_empty(), ok, "name {name}");
    }
    m.name = Value::Null;
    for (ns, ok) in [
        ("team-a", true),
        ("team.a", false),
        (&"x".repeat(64), false),
    ] {
        m.namespace = s(ns);
        assert_eq!(validate(&m.to_value()).is_empty(), ok, "namespace {ns}");
    }
}

/// A registry that refuses deletes: the earlier images kept for a moved tag do not make
/// destroy fail (it warns and leaves the state, as for the tag itself).
#[tokio::test]
async fn earlier_images_on_a_registry_without_deletes_do_not_block_destroy() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let (state, private) = created_with_private(&fake).await;
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(SRC).unwrap()), digest(2));
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    let applied = apply(&fake, Some(state), p.state, private).await;
    assert_eq!(applied.private.previous, vec![digest(1)]);
    // The fake answers "unsupported" for references it holds: hold the earlier digest.
    let earlier = format!("127.0.0.1:6000/dst/app@{}", digest(1));
    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(&earlier).unwrap()), digest(1));
    *fake.deletes_disabled.lock().unwrap() = true;
    let gone = apply(&fake, applied.state, None, applied.private).await;
    assert!(gone.state.is_none(), "{:?}", gone.diags);
    assert!(gone.diags.iter().all(|d| !d.error), "{:?}", gone.diags);
    assert!(
        gone.diags
            .iter()
            .any(|d| d.summary.contains("Earlier image")),
        "{:?}",
        gone.diags
    );
}

/// A fake Kubernetes-mode backend (no API server) naming objects like the real one.
#[derive(Debug)]
struct FakeKube;

#[async_trait]
impl Backend for FakeKube {
    fn bookkeeper(&self) -> crate::backend::Bookkeeper {
        crate::backend::Bookkeeper::Controller
    }

    async fn plan_source(
        &self,
        _: &Reference,
        _: &[imagesync_engine::Platform],
        _: Option<&imagesync_engine::Selection>,
    ) -> crate::backend::SourceAtPlan {
        crate::backend::SourceAtPlan::Followed
    }

    fn identity(&self, destination: Option<&str>) -> Option<crate::backend::Identity> {
        Some(crate::backend::Identity {
            namespace: "team".into(),
            name: destination.map(crate::kube::derive_name),
        })
    }

    async fn digest(&self, _: &Reference) -> Result<Option<Digest>, BackendError> {
        Ok(None)
    }

    async fn observe(&self, _: &Target) -> Result<Option<Observed>, BackendError> {
        Ok(Some(Observed {
            id: String::new(),
            source_digest: None,
        }))
    }

    async fn sync(&self, _: &Target, _: Option<Digest>) -> Result<Synced, BackendError> {
        Err(BackendError::Timeout("not used by this test".into()))
    }

    async fn delete(&self, _: &Target, _: Option<Digest>) -> Result<Deleted, BackendError> {
        Err(BackendError::Timeout("not used by this test".into()))
    }
}

/// The backend gives the object's namespace and name (plan, and read after an import);
/// direct mode, which has no object, refuses them.
#[tokio::test]
async fn the_backend_names_kubernetes_objects_and_direct_mode_refuses_names() {
    let dst = "127.0.0.1:6000/dst/app:1";
    let proposed = Model {
        source: Value::String("127.0.0.1:5000/src/app:1".into()),
        destination: Value::String(dst.into()),
        ..Model::empty()
    };
    let planned = plan(&FakeKube, None, Some(proposed.clone())).await;
    assert!(planned.diags.is_empty(), "{:?}", planned.diags);
    let state = planned.state.unwrap();
    assert_eq!(state.namespace, Value::String("team".into()));
    assert_eq!(state.name, Value::String(crate::kube::derive_name(dst)));

    let unknown = Model {
        destination: Value::Unknown,
        ..proposed.clone()
    };
    let planned = plan(&FakeKube, None, Some(unknown)).await;
    assert_eq!(planned.state.unwrap().name, Value::Unknown);

    let imported = import(&format!("127.0.0.1:5000/src/app:1,{dst}")).unwrap();
    let (state, diags) = read(&FakeKube, imported).await;
    assert!(diags.is_empty(), "{diags:?}");
    let state = state.unwrap();
    assert_eq!(state.namespace, Value::String("team".into()));
    assert_eq!(state.name, Value::String(crate::kube::derive_name(dst)));

    let named = Model {
        name: Value::String("mine".into()),
        ..proposed
    };
    let planned = plan(&Fake::default(), None, Some(named)).await;
    assert!(
        planned
            .diags
            .iter()
            .any(|d| d.summary.contains("only used in Kubernetes mode")),
        "{:?}",
        planned.diags
    );
}

/// A backend whose plans follow the source (the fake Kubernetes mode): an unchanged spec
/// keeps the refreshed `id` and digest without asking a registry, a changed one plans
/// both unknown (an in-place apply), and a new resource plans them unknown.
#[tokio::test]
async fn a_followed_source_plans_from_the_spec_not_the_registry() {
    let dst = "127.0.0.1:6000/dst/app:1";
    let proposed = Model {
        source: Value::String("127.0.0.1:5000/src/app:1".into()),
        destination: Value::String(dst.into()),
        ..Model::empty()
    };
    let created = plan(&FakeKube, None, Some(proposed)).await.state.unwrap();
    assert_eq!(created.id, Value::Unknown);
    assert_eq!(created.source_digest, Value::Unknown);

    let state = Model {
        id: Value::String(format!("127.0.0.1:6000/dst/app@{}", digest(1))),
        source_digest: Value::String(digest(1).to_string()),
        copied_referrers: Value::List(Vec::new()),
        ..created
    };
    let same = plan(&FakeKube, Some(state.clone()), Some(state.clone())).await;
    assert!(same.diags.is_empty(), "{:?}", same.diags);
    assert!(same.requires_replace.is_empty());
    let same = same.state.unwrap();
    assert_eq!(
        (&same.id, &same.source_digest),
        (&state.id, &state.source_digest)
    );

    let retagged = Model {
        source: Value::String("127.0.0.1:5000/src/app:2".into()),
        ..state.clone()
    };
    let changed = plan(&FakeKube, Some(state), Some(retagged)).await;
    assert!(changed.requires_replace.is_empty());
    let changed = changed.state.unwrap();
    assert_eq!(
        (changed.id, changed.source_digest),
        (Value::Unknown, Value::Unknown)
    );
}
