//! Plan/apply/read logic against a fake backend (the real Terraform runs are in
//! tests/e2e/tests/terraform.rs).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use imagesync_engine::{Digest, Reference};

use super::*;
use crate::backend::{make_id, Backend, BackendError, Deleted, Observed, Synced, Target};

fn digest(n: u8) -> Digest {
    format!("sha256:{}", hex(n)).parse().unwrap()
}

fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[derive(Debug, Default)]
struct Fake {
    tags: Mutex<HashMap<String, Digest>>,
    calls: Mutex<Vec<String>>,
    fail_digest: Mutex<Option<u16>>,
    /// The registry refuses manifest DELETEs (`storage.delete.enabled: false`).
    deletes_disabled: Mutex<bool>,
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
    fn resolves_at_plan(&self) -> bool {
        true
    }

    async fn digest(&self, r: &Reference) -> Result<Option<Digest>, BackendError> {
        self.calls.lock().unwrap().push(format!("digest {r}"));
        if let Some(status) = *self.fail_digest.lock().unwrap() {
            return Err(registry_error(status));
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
        self.tags.lock().unwrap().insert(key(d), src.clone());
        Ok(Synced {
            id: make_id(&t.destination_text, d, &src),
            source_digest: src.clone(),
            destination_digest: src,
        })
    }

    async fn delete(&self, t: &Target, expect: Option<Digest>) -> Result<Deleted, BackendError> {
        let (d, layers) = (&t.destination, t.delete_layers);
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete {d} {expect:?} {layers}"));
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
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

async fn created(fake: &Fake) -> Model {
    let planned = plan(fake, None, Some(config(s(SRC), DST))).await;
    assert!(planned.diags.is_empty(), "{:?}", planned.diags);
    let applied = apply(fake, None, planned.state, Private::default()).await;
    assert!(applied.diags.is_empty(), "{:?}", applied.diags);
    applied.state.unwrap()
}

#[tokio::test]
async fn create_plans_the_source_digest_and_copies_it_by_digest() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let planned = plan(&fake, None, Some(config(s(SRC), DST))).await;
    let state = planned.state.clone().unwrap();
    assert_eq!(state.source_digest, s(digest(1).as_str()));
    assert!(state.id.is_unknown());
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
async fn plan_after_create_is_a_no_op_and_tag_move_forces_replacement() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let state = created(&fake).await;
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    assert_eq!(p.state.as_ref(), Some(&state));
    assert!(p.requires_replace.is_empty());

    fake.tags
        .lock()
        .unwrap()
        .insert(key(&Reference::parse(SRC).unwrap()), digest(2));
    let p = plan(&fake, Some(state.clone()), Some(state.clone())).await;
    assert_eq!(p.requires_replace, vec![attr::SOURCE_DIGEST]);
    let planned = p.state.unwrap();
    assert_eq!(planned.source_digest, s(digest(2).as_str()));
    assert!(planned.id.is_unknown());
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
    assert!(p.state.unwrap().id.is_unknown());

    // Errors other than not-found keep the state and report.
    *fake.fail_digest.lock().unwrap() = Some(401);
    let (kept, diags) = read(&fake, state.clone()).await;
    assert_eq!(kept, Some(state.clone()));
    assert!(
        diags[0].error && diags[0].summary.contains("unauthorized"),
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
    let state = created(&fake).await;
    let private = Private {
        written: Some(digest(1)),
    };
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
    let applied = apply(&fake, Some(state.clone()), None, private).await;
    assert!(applied.diags.is_empty());
    assert_eq!(fake.get(DST), None);
    assert!(fake
        .calls()
        .last()
        .unwrap()
        .ends_with(&format!("Some({}) true", digest(1))));
    // Already gone: success.
    let applied = apply(&fake, Some(state), None, Private::default()).await;
    assert!(applied.diags.is_empty() && applied.state.is_none());
}

#[tokio::test]
async fn destroy_on_a_registry_without_deletes_warns_and_leaves_the_image() {
    let fake = Fake::with(&[(SRC, digest(1))]);
    let state = created(&fake).await;
    *fake.deletes_disabled.lock().unwrap() = true;
    let private = Private {
        written: Some(digest(1)),
    };
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

#[test]
fn durations_parse_like_go() {
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("5x"), None);
    let mut m = config(s(SRC), DST);
    assert_eq!(m.timeout("create"), DEFAULT_TIMEOUT);
    m.timeouts = Value::Object([("create".to_string(), s("2m"))].into());
    assert_eq!(m.timeout("create"), Duration::from_secs(120));
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

#[test]
fn private_state_round_trips() {
    let p = Private {
        written: Some(digest(7)),
    };
    assert_eq!(Private::decode(&p.encode()), p);
    assert_eq!(Private::decode(b""), Private::default());
    assert_eq!(Private::decode(b"garbage"), Private::default());
}
