//! Reconcile decisions against a fake Kubernetes API server (kube's `tower-test` mock
//! service, as kube-rs `controller-rs` does) and, where a check needs one, a fake
//! registry on 127.0.0.1: the common paths in milliseconds, without etcd. The real
//! kube-apiserver and registry cover the same paths end to end in `tests/e2e`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use imagesync_engine::auth::StaticProvider;
use imagesync_engine::{CredentialProvider, Engine, EngineConfig};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

use super::{reconcile, Context};
use crate::api::{reasons, DeletionPolicy, ImageSync, ImageSyncSpec, ImageSyncStatus, FINALIZER};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyStore};
use crate::Error;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// One request the fake API server answered.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answers every request with its own body (what a PATCH or create returns is close
/// enough for the client), recording them, until the client is dropped.
fn fake_api_server(mut handle: Handle) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let answer = answer(&path, &body);
            log.lock().unwrap().push(Seen { method, path, body });
            send.send_response(Response::builder().body(Body::from(answer)).unwrap());
        }
    });
    seen
}

/// A body the client accepts for `path`: the Event as sent, or an `ImageSync`.
fn answer(path: &str, body: &Value) -> Vec<u8> {
    if path.contains("/events") {
        return serde_json::to_vec(body).unwrap();
    }
    serde_json::to_vec(&object("app", None)).unwrap()
}

fn object(destination_tag: &str, status: Option<ImageSyncStatus>) -> ImageSync {
    let mut obj = ImageSync::new(
        "app",
        ImageSyncSpec {
            source: "127.0.0.1:1/src/app:1".into(),
            destination: format!("127.0.0.1:1/mirror/app:{destination_tag}"),
            resync_interval: None,
            deletion_policy: DeletionPolicy::Delete,
            delete_layers: true,
            source_secret_ref: None,
            destination_secret_ref: None,
            suspend: false,
            referrers: true,
            referrer_types: Vec::new(),
            platforms: Vec::new(),
        },
    );
    obj.metadata.namespace = Some("team-a".into());
    obj.metadata.uid = Some("uid-1".into());
    obj.metadata.generation = Some(1);
    obj.metadata.finalizers = Some(vec![FINALIZER.into()]);
    obj.status = status;
    obj
}

fn context(client: Client, engine: Engine) -> Context {
    let creds: Arc<dyn CredentialProvider> = Arc::new(StaticProvider::new());
    let events = Events::new(client.clone(), "imagesync.dev/test", "test");
    Context::new(
        client,
        engine,
        creds,
        Arc::new(Metrics::new()),
        events,
        Duration::from_secs(300),
    )
}

/// A mock-API context whose engine may reach only `registries` (none: any registry
/// request fails to connect, which the tests would see).
fn mock(registries: Vec<String>) -> (Context, Arc<Mutex<Vec<Seen>>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let engine = Engine::new(EngineConfig {
        insecure_registries: registries,
        ..EngineConfig::default()
    })
    .unwrap();
    let seen = fake_api_server(handle);
    let mut ctx = context(client, engine);
    // Requeues are the resync interval itself here: moving them onto a tick is
    // `gate::tests::waits_end_on_the_nearest_tick`'s.
    ctx.check_tick = Duration::ZERO;
    (ctx, seen)
}

fn requests(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<(Method, String)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect()
}

const STATUS: &str = "/apis/imagesync.dev/v1alpha1/namespaces/team-a/imagesyncs/app/status";
const OBJECT: &str = "/apis/imagesync.dev/v1alpha1/namespaces/team-a/imagesyncs/app";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

#[tokio::test]
async fn a_new_object_gets_the_finalizer_before_anything_else() {
    let (ctx, seen) = mock(Vec::new());
    let mut obj = object("1", None);
    obj.metadata.finalizers = None;
    let action = reconcile(Arc::new(obj), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(requests(&seen), [(Method::PATCH, OBJECT.to_string())]);
    let patch = seen.lock().unwrap()[0].body.to_string();
    assert!(patch.contains(FINALIZER), "{patch}");
}

#[tokio::test]
async fn a_suspended_object_writes_status_and_touches_no_registry() {
    let (ctx, seen) = mock(Vec::new());
    let mut obj = object("1", None);
    obj.spec.suspend = true;
    let action = reconcile(Arc::new(obj), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(requests(&seen), [(Method::PATCH, STATUS.to_string())]);
    let status = &seen.lock().unwrap()[0].body["status"];
    assert_eq!(status["conditions"][0]["reason"], reasons::SUSPENDED);
    assert_eq!(status["conditions"][0]["status"], "False");
}

#[tokio::test]
async fn an_out_of_range_resync_interval_is_reported_without_a_finalizer() {
    let (ctx, seen) = mock(Vec::new());
    let mut obj = object("1", None);
    obj.metadata.finalizers = None;
    obj.spec.resync_interval = Some("1s".into());
    let error = reconcile(Arc::new(obj), Arc::new(ctx)).await.unwrap_err();
    assert!(matches!(error, Error::InvalidSpec(_)), "{error}");
    assert!(error.is_permanent());
    assert_eq!(
        requests(&seen),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, STATUS.to_string())
        ]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].body["reason"], reasons::INVALID_SPEC);
    assert_eq!(
        seen[1].body["status"]["conditions"][0]["reason"],
        reasons::INVALID_SPEC
    );
}

#[tokio::test]
async fn a_policy_denial_is_reported_before_any_registry_request() {
    let (ctx, seen) = mock(Vec::new());
    let policy = Policy::parse(
        "rules:\n  - name: team-b\n    namespaces: [team-b]\n    sources: ['**']\n    destinations: ['**']\n",
    )
    .unwrap();
    let ctx = ctx.with_policy(Arc::new(PolicyStore::with_policy(policy)));
    let error = reconcile(Arc::new(object("1", None)), Arc::new(ctx))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), reasons::POLICY_DENIED);
    assert_eq!(
        requests(&seen),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, STATUS.to_string())
        ]
    );
}

fn deleting(mut obj: ImageSync) -> ImageSync {
    obj.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    obj
}

#[tokio::test]
async fn deleting_an_object_that_wrote_nothing_only_releases_the_finalizer() {
    let (ctx, seen) = mock(Vec::new());
    let obj = deleting(object("1", None));
    let action = reconcile(Arc::new(obj), Arc::new(ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(requests(&seen), [(Method::PATCH, OBJECT.to_string())]);
    let patch = seen.lock().unwrap()[0].body.to_string();
    assert!(
        patch.contains("remove") || patch.contains("finalizers"),
        "{patch}"
    );
}

#[tokio::test]
async fn deleting_an_adopted_destination_leaves_it_in_place() {
    let (ctx, seen) = mock(Vec::new());
    let status = ImageSyncStatus {
        destination_digest: Some(DIGEST.into()),
        source_digest: Some(DIGEST.into()),
        synced_destination: Some("127.0.0.1:1/mirror/app:1".into()),
        ownership: Some(crate::api::Ownership::Adopted),
        ..ImageSyncStatus::default()
    };
    let obj = deleting(object("1", Some(status)));
    reconcile(Arc::new(obj), Arc::new(ctx)).await.unwrap();
    assert_eq!(
        requests(&seen),
        [
            (Method::POST, EVENTS.to_string()),
            (Method::PATCH, OBJECT.to_string())
        ]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].body["reason"], "LeftInPlace");
}

// === with a fake registry (HEAD answers only) ===

/// A fake registry on 127.0.0.1 that answers every manifest HEAD with `DIGEST` and
/// counts them.
async fn fake_registry() -> (SocketAddr, Arc<Mutex<u32>>) {
    use axum::http::{HeaderMap, StatusCode};
    let heads = Arc::new(Mutex::new(0u32));
    let count = heads.clone();
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { StatusCode::OK }))
        .fallback(move |method: Method, uri: axum::http::Uri| {
            let count = count.clone();
            async move {
                let mut headers = HeaderMap::new();
                if method == Method::HEAD && uri.path().contains("/manifests/sha256-") {
                    // The referrers probe: no fallback or cosign tag here.
                    *count.lock().unwrap() += 1;
                    return (StatusCode::NOT_FOUND, headers);
                }
                if method == Method::HEAD {
                    *count.lock().unwrap() += 1;
                    headers.insert("docker-content-digest", DIGEST.parse().unwrap());
                    headers.insert(
                        "content-type",
                        "application/vnd.oci.image.index.v1+json".parse().unwrap(),
                    );
                    headers.insert("content-length", "100".parse().unwrap());
                    return (StatusCode::OK, headers);
                }
                (StatusCode::NOT_FOUND, headers)
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, heads)
}

fn at(addr: SocketAddr, mut obj: ImageSync) -> ImageSync {
    obj.spec.source = format!("{addr}/src/app:1");
    obj.spec.destination = format!("{addr}/mirror/app:1");
    if let Some(s) = obj.status.as_mut() {
        s.synced_destination = Some(obj.spec.destination.clone());
    }
    obj
}

#[tokio::test]
async fn an_in_sync_object_is_checked_with_two_heads_and_one_status_write() {
    let (addr, heads) = fake_registry().await;
    let (ctx, seen) = mock(vec![addr.to_string()]);
    let status = ImageSyncStatus {
        source_digest: Some(DIGEST.into()),
        destination_digest: Some(DIGEST.into()),
        ownership: Some(crate::api::Ownership::Written),
        ..ImageSyncStatus::default()
    };
    let obj = at(addr, object("1", Some(status)));
    let ctx = Arc::new(ctx);
    let action = reconcile(Arc::new(obj.clone()), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    // Source and destination, and the referrers probe's two (spec.referrers defaults on).
    assert_eq!(*heads.lock().unwrap(), 4);
    // Only the status write (lastCheckTime, Ready=True): no copy, no Event.
    assert_eq!(requests(&seen), [(Method::PATCH, STATUS.to_string())]);
    let status = seen.lock().unwrap()[0].body["status"].clone();
    assert_eq!(status["conditions"][0]["reason"], reasons::SYNCED);
    assert_eq!(status["ownership"], json!("Written"));

    // The watch event of that write: the gate skips it, no request anywhere.
    reconcile(Arc::new(obj), ctx).await.unwrap();
    assert_eq!(*heads.lock().unwrap(), 4);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A re-check that finds what status records writes nothing to the API (four HEADs
/// only), until `lastCheckTime` is `CHECK_TIME_REFRESH` old: then one status write
/// refreshing it.
#[tokio::test]
async fn a_recheck_that_finds_nothing_new_writes_no_status_until_the_check_time_is_old() {
    let (addr, heads) = fake_registry().await;
    let first = ImageSyncStatus {
        source_digest: Some(DIGEST.into()),
        destination_digest: Some(DIGEST.into()),
        ownership: Some(crate::api::Ownership::Written),
        ..ImageSyncStatus::default()
    };
    let (ctx, seen) = mock(vec![addr.to_string()]);
    let obj = at(addr, object("1", Some(first)));
    reconcile(Arc::new(obj.clone()), Arc::new(ctx))
        .await
        .unwrap();
    let written: ImageSyncStatus =
        serde_json::from_value(seen.lock().unwrap()[0].body["status"].clone()).unwrap();
    assert!(written.last_check_time.is_some());

    // The next check (a fresh gate) of the object as stored: nothing to write.
    let (ctx, seen) = mock(vec![addr.to_string()]);
    let mut stored = obj.clone();
    stored.status = Some(written.clone());
    let action = reconcile(Arc::new(stored.clone()), Arc::new(ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(*heads.lock().unwrap(), 8, "the check ran");
    assert_eq!(requests(&seen), []);

    // Recorded 11 minutes ago: refreshed, nothing else changed.
    let (ctx, seen) = mock(vec![addr.to_string()]);
    let old = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(660);
    stored.status.as_mut().unwrap().last_check_time = Some(Time(old));
    reconcile(Arc::new(stored), Arc::new(ctx)).await.unwrap();
    assert_eq!(requests(&seen), [(Method::PATCH, STATUS.to_string())]);
    let refreshed: ImageSyncStatus =
        serde_json::from_value(seen.lock().unwrap()[0].body["status"].clone()).unwrap();
    assert!(refreshed.last_check_time.unwrap().0 > old);
    assert_eq!(refreshed.conditions, written.conditions);
    assert_eq!(refreshed.destination_digest, written.destination_digest);
}
