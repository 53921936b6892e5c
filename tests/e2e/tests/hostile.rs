//! A hostile or broken registry (issue 13): credentials only go to the registry's own
//! origin, no HTTPS-to-HTTP downgrade, no connection to an internal address nobody
//! configured, capped bodies and counts, a minimum blob rate and a sync deadline, and a
//! retry budget that holds per request. Every attack runs on loopback: real
//! distribution registries, the fault proxy's hostile answers and the token server's,
//! and canary listeners that must not be reached (or only without credentials).
//!
//! Over 600 lines because it is one module per area (the attacks): each test is one
//! scenario against real components, and its set-up is spelled out so a failure reads
//! alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagesync_e2e::fixtures::{self, FixtureSpec};
use imagesync_e2e::proxy::{Canary, Fault, FaultPlan, FaultProxy, Mode, Target};
use imagesync_e2e::registry::{Registry, RegistryOptions};
use imagesync_e2e::token::TokenAnswer;
use imagesync_engine::auth::{Credential, StaticProvider};
use imagesync_engine::{
    Engine, EngineConfig, Error, ErrorKind, Limits, Reference, RetryPolicy, SyncOptions,
};

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(5),
    }
}

fn config(insecure: &[&str]) -> EngineConfig {
    EngineConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        retry: retry(3),
        ..EngineConfig::default()
    }
}

fn with_creds(mut c: EngineConfig, registry: &str, user: &str, pass: &str) -> EngineConfig {
    c.credentials = Arc::new(StaticProvider::new().with(registry, Credential::basic(user, pass)));
    c
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn plan(fault: Fault, target: Target) -> FaultPlan {
    FaultPlan {
        fault,
        target,
        mode: Mode::Always,
    }
}

/// The innermost error (through exhausted retries).
fn root(e: &Error) -> &Error {
    match e {
        Error::RetriesExhausted { last, .. } => root(last),
        e => e,
    }
}

fn htpasswd() -> RegistryOptions {
    RegistryOptions {
        htpasswd: Some(("hostile-user".into(), "s3cret-password".into())),
        ..RegistryOptions::default()
    }
}

/// Bytes of upload data in the registry's storage (distribution keeps a session's
/// bytes in `_uploads/<id>/data` until it is committed or cancelled).
fn upload_bytes(reg: &Registry) -> u64 {
    fn walk(p: &std::path::Path, inside: bool) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                let here = inside || e.file_name() == "_uploads";
                if path.is_dir() {
                    walk(&path, here)
                } else if here && e.file_name() == "data" {
                    e.metadata().map(|m| m.len()).unwrap_or(0)
                } else {
                    0
                }
            })
            .sum()
    }
    walk(&reg.dir().join("data"), false)
}

// === credentials go only where they belong ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_location_on_another_port_never_gets_the_password() {
    let src = Registry::start().await;
    let dst = Registry::start_with(htpasswd()).await;
    let canary = Canary::start("127.0.0.1").await;
    let proxy = FaultProxy::start(
        dst.addr(),
        plan(
            Fault::RewriteLocation { to: canary.addr() },
            Target::Uploads,
        ),
    )
    .await;
    fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(1301)).await;
    let e = Engine::new(with_creds(
        config(&[src.addr(), &proxy.addr()]),
        &proxy.addr(),
        "hostile-user",
        "s3cret-password",
    ))
    .unwrap();
    let result = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&format!("{}/mirror:1", proxy.addr())),
            &SyncOptions::default(),
        )
        .await;
    assert!(result.is_err(), "the canary takes no uploads: {result:?}");
    let seen = canary.requests();
    assert!(!seen.is_empty(), "the upload went to the Location named");
    assert!(
        seen.iter().all(|q| q.authorization.is_none()),
        "credentials reached another origin: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_realm_on_an_unlisted_loopback_address_never_gets_credentials() {
    let src = Registry::start().await;
    let canary = Canary::start("127.0.0.2").await;
    let proxy = FaultProxy::start(
        src.addr(),
        plan(
            Fault::Challenge {
                realm: canary.addr(),
            },
            Target::Any,
        ),
    )
    .await;
    fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(1302)).await;
    let e = Engine::new(with_creds(
        config(&[&proxy.addr()]),
        &proxy.addr(),
        "user",
        "src-password",
    ))
    .unwrap();
    let err = e
        .digest(&r(&format!("{}/app:1", proxy.addr())))
        .await
        .unwrap_err();
    assert!(matches!(root(&err), Error::Refused { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(canary.connections(), 0, "{:?}", canary.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_never_sends_credentials_to_a_plain_http_realm() {
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        token_auth: true,
        ..htpasswd()
    })
    .await;
    let e = Engine::new(with_creds(
        EngineConfig {
            ca_file: reg.ca_pem_path().map(|p| p.to_path_buf()),
            ..config(&[])
        },
        reg.addr(),
        "hostile-user",
        "s3cret-password",
    ))
    .unwrap();
    let err = e.digest(&r(&reg.reference("app:1"))).await.unwrap_err();
    assert!(matches!(root(&err), Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("HTTPS"), "{err}");
    let token = reg.token_server().unwrap();
    assert!(
        token.requests().is_empty(),
        "the plain-HTTP realm was asked: {:?}",
        token.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_link_to_another_host_never_gets_the_password() {
    let reg = Registry::start_with(htpasswd()).await;
    reg.target()
        .push_image("app", "1", &FixtureSpec::seeded(1303))
        .await
        .unwrap();
    let canary = Canary::start("127.0.0.1").await;
    let proxy = FaultProxy::start(
        reg.addr(),
        plan(Fault::LinkTo { to: canary.addr() }, Target::Any),
    )
    .await;
    let e = Engine::new(with_creds(
        config(&[&proxy.addr()]),
        &proxy.addr(),
        "hostile-user",
        "s3cret-password",
    ))
    .unwrap();
    let reference = r(&format!("{}/app:1", proxy.addr()));
    let result = e.client(&reference).list_tags("app").await;
    assert!(result.is_err(), "the canary's page is a 404: {result:?}");
    let seen = canary.requests();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|q| q.authorization.is_none()),
        "credentials reached another origin: {seen:?}"
    );
}

// === no connection to internal addresses nobody configured ===

async fn redirected_source(to: Fault) -> (Registry, Registry, FaultProxy) {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(1304)).await;
    let proxy = FaultProxy::start(src.addr(), plan(to, Target::BlobGets)).await;
    (src, dst, proxy)
}

/// Copies from a source whose layer GETs are redirected to a canary listening on
/// `canary_host` (by address, or by the name `localhost`), and asserts the copy is refused
/// with no connection to the canary, no tag and no upload bytes at the destination.
async fn assert_layer_redirect_refused(canary_host: &str, by_name: bool) {
    let canary = Canary::start(canary_host).await;
    let (_src, dst, proxy) = redirected_source(Fault::Redirect {
        to: canary.addr(),
        by_name,
    })
    .await;
    let e = Engine::new(config(&[&proxy.addr(), dst.addr()])).unwrap();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(root(&err), Error::Refused { .. }), "{err}");
    assert!(!err.to_string().contains('?'), "no query strings: {err}");
    assert_eq!(canary.connections(), 0, "{:?}", canary.requests());
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
    assert_eq!(upload_bytes(&dst), 0, "nothing may land at the destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_redirect_to_an_unlisted_loopback_address_is_never_followed() {
    assert_layer_redirect_refused("127.0.0.2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_redirect_to_a_name_resolving_to_loopback_is_refused_after_dns() {
    // `localhost` is no registry of this sync: it resolves to loopback, so the guarded
    // resolver refuses it even though the registries themselves are on 127.0.0.1.
    assert_layer_redirect_refused("127.0.0.1", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_session_is_cancelled() {
    // The source serves other bytes than its digest says: the check fails at the end of
    // the stream, after most of it went into the destination's upload session, so the
    // engine cancels the session (DELETE). Distribution refuses to cancel a session
    // whose stored size no longer matches its `_state` (it keeps the partial data until
    // upload purging), so this checks the cancel request, not the storage.
    let (_src, dst, proxy) = redirected_source(Fault::Corrupt).await;
    // One blob at a time: the first failure ends the sync and drops transfers in flight.
    let e = Engine::new(EngineConfig {
        jobs: 1,
        retry: retry(1),
        ..config(&[&proxy.addr(), dst.addr()])
    })
    .unwrap();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
    let log = dst.access_log_settled().await;
    let session = |path: &str| path.split('?').next().unwrap_or("").to_string();
    let failed: std::collections::BTreeSet<String> = log
        .iter()
        .filter(|e| e.method == "PUT" && e.is_upload() && e.status >= 400)
        .map(|e| session(&e.path))
        .collect();
    let cancelled: std::collections::BTreeSet<String> = log
        .iter()
        .filter(|e| e.method == "DELETE" && e.is_upload())
        .map(|e| session(&e.path))
        .collect();
    assert!(!failed.is_empty(), "{log:?}");
    assert!(
        failed.is_subset(&cancelled),
        "failed {failed:?}, cancelled {cancelled:?}"
    );
}

// === caps ===

const CAP_SLACK: u64 = 16 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_manifest_is_refused_at_the_4_mib_cap() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let proxy = FaultProxy::start(
        src.addr(),
        plan(Fault::Endless { bytes: 1 << 30 }, Target::Manifests),
    )
    .await;
    let e = Engine::new(config(&[&proxy.addr(), dst.addr()])).unwrap();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(root(&err), Error::Limit { limit, .. } if *limit == 4 * 1024 * 1024),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let served = proxy.bytes_served();
    assert!(
        served < CAP_SLACK,
        "read {served} bytes of a 1 GiB manifest"
    );
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
}

/// Peak RSS (VmHWM, KiB) of the CLI copying from a source serving a 1 GiB manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stays_small_against_a_gigabyte_manifest() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let proxy = FaultProxy::start(
        src.addr(),
        plan(Fault::Endless { bytes: 1 << 30 }, Target::Manifests),
    )
    .await;
    let mut child = tokio::process::Command::new(imagesync_e2e::bin("imagesync"))
        .args([
            "copy",
            &format!("{}/app:1", proxy.addr()),
            &dst.reference("mirror:1"),
            "--no-blob-cache",
            "--insecure-registry",
            &format!("{},{}", proxy.addr(), dst.addr()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut peak_kib: u64 = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(!status.success());
    eprintln!("imagesync copy peak RSS: {} MiB", peak_kib / 1024);
    assert!(peak_kib > 0, "no RSS sample");
    assert!(peak_kib < 96 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    assert!(proxy.bytes_served() < CAP_SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entry_index_is_refused_at_the_body_cap() {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let proxy = FaultProxy::start(
        src.addr(),
        plan(Fault::HugeIndex { entries: 1_000_000 }, Target::Manifests),
    )
    .await;
    let e = Engine::new(config(&[&proxy.addr(), dst.addr()])).unwrap();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(root(&err), Error::Limit { .. }), "{err}");
    assert!(proxy.bytes_served() < CAP_SLACK);
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
}

async fn token_registry(answer: TokenAnswer) -> Registry {
    let reg = Registry::start_with(RegistryOptions {
        token_auth: true,
        ..htpasswd()
    })
    .await;
    reg.token_server().unwrap().set_answer(answer);
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_token_answer_is_refused_at_the_1_mib_cap() {
    let reg = token_registry(TokenAnswer::Huge {
        bytes: 100 * 1024 * 1024,
    })
    .await;
    let e = Engine::new(with_creds(
        config(&[reg.addr()]),
        reg.addr(),
        "hostile-user",
        "s3cret-password",
    ))
    .unwrap();
    let err = e.digest(&r(&reg.reference("app:1"))).await.unwrap_err();
    assert!(
        matches!(root(&err), Error::Limit { limit, .. } if *limit == 1024 * 1024),
        "{err}"
    );
    let served = reg.token_server().unwrap().bytes_served();
    assert!(served < CAP_SLACK, "read {served} bytes of a 100 MB token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lifetime_of_u64_max_does_not_panic_the_engine() {
    let src = Registry::start().await;
    let dst = token_registry(TokenAnswer::MaxExpiry).await;
    let pushed = fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(1305)).await;
    let e = Engine::new(with_creds(
        config(&[src.addr(), dst.addr()]),
        dst.addr(),
        "hostile-user",
        "s3cret-password",
    ))
    .unwrap();
    let out = e
        .sync(
            &r(&src.reference("app:1")),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.destination_digest.as_str(), pushed.digest);
    assert!(reg_issued(&dst) > 0, "tokens were issued");
}

fn reg_issued(reg: &Registry) -> usize {
    reg.token_server()
        .unwrap()
        .requests()
        .iter()
        .filter(|q| q.issued)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_tag_list_stops_at_the_page_cap_and_a_cycle_is_detected() {
    let reg = Registry::start().await;
    let proxy = FaultProxy::start(
        reg.addr(),
        plan(Fault::TagLoop { cycle: false }, Target::Any),
    )
    .await;
    let e = Engine::new(config(&[&proxy.addr()])).unwrap();
    let client = e.client(&r(&format!("{}/loop:x", proxy.addr())));
    let err = client.list_tags("loop").await.unwrap_err();
    assert!(
        matches!(root(&err), Error::Limit { limit, .. } if *limit == imagesync_engine::client::MAX_TAG_PAGES as u64),
        "{err}"
    );
    assert!(proxy.requests() <= imagesync_engine::client::MAX_TAG_PAGES + 1);

    proxy.set_plan(plan(Fault::TagLoop { cycle: true }, Target::Any));
    let before = proxy.requests();
    let err = client.list_tags("loop").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("already read"), "{err}");
    assert!(proxy.requests() - before <= 3);
}

// === slow registries ===

async fn trickling_source(seed: u64) -> (Registry, Registry, FaultProxy) {
    let src = Registry::start().await;
    let dst = Registry::start().await;
    let spec = FixtureSpec {
        layers: 1,
        layer_size: 256 * 1024,
        ..FixtureSpec::seeded(seed)
    };
    fixtures::push_image(src.addr(), "app", "1", spec).await;
    let proxy = FaultProxy::start(
        src.addr(),
        plan(
            Fault::Trickle {
                bytes_per_sec: 20 * 1024,
            },
            Target::BlobGets,
        ),
    )
    .await;
    (src, dst, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_blob_fails_its_attempts_at_the_minimum_rate() {
    let (_src, dst, proxy) = trickling_source(1306).await;
    let e = Engine::new(EngineConfig {
        retry: RetryPolicy {
            stall_timeout: Duration::from_secs(1),
            ..retry(2)
        },
        limits: Limits {
            min_blob_rate: 256 * 1024,
            ..Limits::default()
        },
        ..config(&[&proxy.addr(), dst.addr()])
    })
    .unwrap();
    let started = Instant::now();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    // The 256 KiB layer at 20 KiB/s would take 13 s per attempt; each attempt is
    // allowed 1 s (stall) + 1 s (size at 256 KiB/s) + 1 s.
    assert!(matches!(root(&err), Error::TooSlow { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_deadline_ends_a_slow_sync_without_a_tag() {
    let (_src, dst, proxy) = trickling_source(1307).await;
    let e = Engine::new(EngineConfig {
        limits: Limits {
            sync_deadline: Duration::from_secs(2),
            min_blob_rate: 0,
        },
        ..config(&[&proxy.addr(), dst.addr()])
    })
    .unwrap();
    let started = Instant::now();
    let err = e
        .sync(
            &r(&format!("{}/app:1", proxy.addr())),
            &r(&dst.reference("mirror:1")),
            &SyncOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(dst.manifest_status("mirror", "1").await, 404);
}

// === the retry bound ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_sent_at_most_max_attempts_times() {
    const N: u32 = 3;
    let src = Registry::start().await;
    let dst = Registry::start().await;
    fixtures::push_image(src.addr(), "app", "1", FixtureSpec::seeded(1308)).await;
    let proxy = FaultProxy::start(src.addr(), plan(Fault::Status(500), Target::BlobGets)).await;
    let e = Engine::new(EngineConfig {
        jobs: 1,
        retry: retry(N),
        ..config(&[&proxy.addr(), dst.addr()])
    })
    .unwrap();
    let from = r(&format!("{}/app:1", proxy.addr()));
    let to = r(&dst.reference("mirror:1"));
    let err = e
        .sync(&from, &to, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: N, .. }),
        "{err}"
    );
    let mut per_request = std::collections::HashMap::<String, u32>::new();
    for rec in proxy.log() {
        *per_request.entry(rec.key).or_default() += 1;
    }
    let blob_gets: Vec<_> = per_request
        .iter()
        .filter(|(k, _)| k.starts_with("GET ") && k.contains("/blobs/"))
        .collect();
    assert!(!blob_gets.is_empty());
    for (key, n) in &blob_gets {
        assert!(**n <= N, "{key} sent {n} times (bound {N})");
    }
    assert!(blob_gets.iter().any(|(_, n)| **n == N), "{blob_gets:?}");

    // Budgets do not multiply: each blob GET fails twice and then passes, and every
    // upload is reset. Retrying the GET inside each of the N transfer attempts would
    // send it N * N times; one retry layer sends it N times.
    let dst_proxy = FaultProxy::start(dst.addr(), plan(Fault::ResetMidBody, Target::Uploads)).await;
    proxy.set_plan(FaultPlan {
        fault: Fault::Status(500),
        target: Target::BlobGets,
        mode: Mode::Cycle {
            fail: N as usize - 1,
            pass: 1,
        },
    });
    proxy.clear_log();
    let e2 = Engine::new(EngineConfig {
        jobs: 1,
        retry: retry(N),
        ..config(&[&proxy.addr(), &dst_proxy.addr()])
    })
    .unwrap();
    let to = r(&format!("{}/mirror:1", dst_proxy.addr()));
    let err = e2
        .sync(&from, &to, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: N, .. }),
        "{err}"
    );
    let mut gets = std::collections::HashMap::<String, u32>::new();
    for rec in proxy.log().into_iter().filter(|q| q.method == "GET") {
        *gets.entry(rec.key).or_default() += 1;
    }
    assert!(gets.values().all(|n| *n <= N), "{gets:?}");
    assert!(gets.values().any(|n| *n == N), "{gets:?}");

    // A manifest HEAD: N attempts, no more.
    proxy.set_plan(plan(Fault::Status(503), Target::Manifests));
    proxy.clear_log();
    let err = e.digest(&from).await.unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: N, .. }),
        "{err}"
    );
    let heads = proxy.log().iter().filter(|q| q.method == "HEAD").count();
    assert_eq!(heads, N as usize);
}
