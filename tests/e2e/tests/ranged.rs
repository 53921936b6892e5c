//! Ranged reads of one large blob (issue 21), against the real distribution registry,
//! which serves `Range` on blob GETs. A fault proxy in front of the source logs every
//! request's `Range` header; its latency fault stands in for a far source (timings stay
//! in the bench: these tests only look at which requests were made and what arrived).
//! Over TLS, where the registry offers HTTP/2, the copy's requests must still be
//! HTTP/1.1, each in flight on a connection of its own.

use imagesync_e2e::fixtures::{self, FixtureSpec, Pushed};
use imagesync_e2e::proxy::{Fault, FaultPlan, FaultProxy, Mode, ProxyRecord, Target};
use imagesync_e2e::registry::{Registry, RegistryOptions};
use imagesync_engine::{Engine, EngineConfig, Reference, SyncOptions};

/// One 40 MiB layer: over the engine's 32 MiB threshold for ranged reads.
const LAYER: usize = 40 * 1024 * 1024;
const PART: u64 = 4 * 1024 * 1024;

fn big_layer_spec() -> FixtureSpec {
    FixtureSpec {
        seed: 21,
        layers: 1,
        layer_size: LAYER,
        ..FixtureSpec::default()
    }
}

async fn copy_through(plan: FaultPlan) -> (Vec<ProxyRecord>, Pushed, Registry) {
    let (src, dst) = tokio::join!(Registry::start(), Registry::start());
    let pushed = fixtures::push_image(src.addr(), "big", "1", big_layer_spec()).await;
    let proxy = FaultProxy::start(src.addr(), plan).await;
    let engine = Engine::new(EngineConfig {
        insecure_registries: vec![proxy.addr(), dst.addr().to_string()],
        ..EngineConfig::default()
    })
    .unwrap();
    let from = Reference::parse(&format!("{}/big:1", proxy.addr())).unwrap();
    let to = Reference::parse(&dst.reference("mirror/big:1")).unwrap();
    let outcome = engine
        .sync(&from, &to, &SyncOptions::default())
        .await
        .unwrap();
    assert!(outcome.id.ends_with(&pushed.digest), "{}", outcome.id);
    fixtures::assert_identical(dst.addr(), "mirror/big", "1", &pushed).await;
    let log = proxy.log();
    drop(src);
    (log, pushed, dst)
}

/// The `Range` headers of the GETs of `digest`, in the order the proxy saw them.
fn ranges_of(log: &[ProxyRecord], digest: &str) -> Vec<Option<String>> {
    log.iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{digest}")))
        .map(|r| r.range.clone())
        .collect()
}

/// Checks that the ranges (`bytes=a-b` or an open `bytes=a-`) start with the first part
/// and cover the blob exactly once; returns them sorted.
fn assert_cover_once(ranges: &[Option<String>], size: u64) -> Vec<(u64, Option<u64>)> {
    let mut parsed: Vec<(u64, Option<u64>)> = ranges
        .iter()
        .map(|r| {
            let r = r
                .as_deref()
                .expect("every GET of the large layer is ranged");
            let (a, b) = r.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
            (
                a.parse().unwrap(),
                (!b.is_empty()).then(|| b.parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        parsed[0],
        (0, Some(PART - 1)),
        "the first part first: {ranges:?}"
    );
    parsed.sort();
    let mut next = 0;
    for (a, b) in &parsed {
        assert_eq!(*a, next, "gap or overlap: {ranges:?}");
        next = b.map_or(size, |b| b + 1);
    }
    assert_eq!(next, size, "{ranges:?}");
    parsed
}

#[tokio::test]
async fn a_large_blob_from_a_slow_source_comes_in_parallel_ranges_and_arrives_whole() {
    // Every blob GET waits 300 ms before it is forwarded: the first 4 MiB part comes at
    // under 14 MiB/s, far below the engine's 64 MiB/s "near source" rate.
    let plan = FaultPlan {
        fault: Fault::Latency {
            before_headers_ms: 300,
            mid_body_ms: 0,
        },
        target: Target::BlobGets,
        mode: Mode::EveryNth(1),
    };
    let (log, pushed, _dst) = copy_through(plan).await;
    let layer = &pushed.layers[0];
    let size = LAYER as u64;
    let parts = assert_cover_once(&ranges_of(&log, layer), size);
    assert_eq!(
        parts.len() as u64,
        size.div_ceil(PART),
        "one GET per 4 MiB part: {parts:?}"
    );
    assert!(parts.iter().all(|(_, b)| b.is_some()), "{parts:?}");
    // The small config blob is one plain GET.
    let config: Vec<&String> = pushed.blobs.iter().filter(|b| *b != layer).collect();
    assert_eq!(ranges_of(&log, config[0]), vec![None]);
}

#[tokio::test]
async fn a_large_blob_from_a_near_source_arrives_whole_in_ranges_that_cover_it_once() {
    // Which strategy the engine picks depends on how fast the first part came; on an
    // idle machine loopback is far above the threshold and the rest is one streamed GET.
    // Either way the ranges cover the blob exactly once and the copy is byte-exact.
    let (log, pushed, _dst) = copy_through(FaultPlan::none()).await;
    let ranges = ranges_of(&log, &pushed.layers[0]);
    let parts = assert_cover_once(&ranges, LAYER as u64);
    if parts.len() == 2 {
        assert_eq!(
            parts[1],
            (PART, None),
            "the rest in one open range: {ranges:?}"
        );
    }
}

#[tokio::test]
async fn over_tls_a_copy_speaks_http1_so_parallel_transfers_do_not_share_one_connection() {
    // A TLS registry offers HTTP/2 through ALPN. Over HTTP/2 every request to a host
    // rides one TCP connection, so the ranged reads of a large blob and the `jobs`
    // parallel uploads would share one stream's window and one connection's shaping:
    // on a far link, no faster than one stream. The engine must ask for HTTP/1.1.
    let tls = || {
        Registry::start_with(RegistryOptions {
            tls: true,
            ..Default::default()
        })
    };
    let (src, dst) = tokio::join!(tls(), tls());
    let spec = FixtureSpec {
        seed: 2121,
        layers: 4,
        layer_size: 64 * 1024,
        ..FixtureSpec::default()
    };
    let pushed = src
        .target()
        .push_image("app", "1", &spec)
        .await
        .expect("pushing the fixture over TLS");
    // The registry does speak HTTP/2 to a client that offers it (reqwest with `http2`,
    // as this test crate builds it), and logs it as such.
    let h2 = src
        .http_client()
        .get(format!("{}/v2/", src.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let logged = src.access_log_settled().await;
    assert_eq!(
        logged.last().map(|e| e.protocol.as_str()),
        Some("HTTP/2.0"),
        "{logged:?}"
    );
    src.clear_access_log();

    let dir = tempfile::tempdir().unwrap();
    let cas = dir.path().join("cas.pem");
    let mut pem = std::fs::read(src.ca_pem_path().unwrap()).unwrap();
    pem.extend(std::fs::read(dst.ca_pem_path().unwrap()).unwrap());
    std::fs::write(&cas, pem).unwrap();
    let engine = Engine::new(EngineConfig {
        ca_file: Some(cas),
        ..EngineConfig::default()
    })
    .unwrap();
    let from = Reference::parse(&src.reference("app:1")).unwrap();
    let to = Reference::parse(&dst.reference("mirror/app:1")).unwrap();
    let outcome = engine
        .sync(&from, &to, &SyncOptions::default())
        .await
        .unwrap();
    assert!(outcome.id.ends_with(&pushed.digest), "{}", outcome.id);

    for (name, registry) in [("source", &src), ("destination", &dst)] {
        let log = registry.access_log_settled().await;
        assert!(
            log.iter().any(|e| e.is_blob() || e.is_upload()),
            "{name}: {log:?}"
        );
        let other: Vec<_> = log.iter().filter(|e| e.protocol != "HTTP/1.1").collect();
        assert!(
            other.is_empty(),
            "{name} saw requests not over HTTP/1.1: {other:?}"
        );
    }
    // And the copy is whole: every blob arrived.
    let check = dst.http_client();
    for blob in &pushed.blobs {
        let status = check
            .head(format!("{}/v2/mirror/app/blobs/{blob}", dst.url()))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "blob {blob}");
    }
}
