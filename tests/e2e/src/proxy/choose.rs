//! Which requests get a fault: the plan's target, its mode (counts, cycles, a seeded
//! draw) and, for a mixed plan, which fault.

use std::sync::atomic::Ordering;

use super::{Fault, FaultPlan, Mode, Shared, Target};

pub(super) fn matches(target: Target, method: &hyper::Method, path: &str) -> bool {
    if path == "/v2/" || path == "/v2" {
        return false;
    }
    match target {
        Target::Any => true,
        Target::BlobGets => {
            method == hyper::Method::GET
                && path.contains("/blobs/")
                && !path.contains("/blobs/uploads")
        }
        Target::Uploads => path.contains("/blobs/uploads"),
        Target::Manifests => path.contains("/manifests/"),
        Target::ManifestPuts => method == hyper::Method::PUT && path.contains("/manifests/"),
    }
}

/// SplitMix64: a small, well-mixed, deterministic hash step.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic 64-bit value from the seed, the request key and its occurrence.
fn draw(seed: u64, key: &str, occurrence: usize, salt: u64) -> u64 {
    let mut h = splitmix(seed ^ salt.wrapping_mul(0x100_0000_01B3));
    for b in key.bytes() {
        h = splitmix(h ^ u64::from(b));
    }
    splitmix(h ^ occurrence as u64)
}

/// Whether this candidate gets the fault, and the occurrence number of its key.
pub(super) fn should_fault(s: &Shared, plan: &FaultPlan, key: &str) -> (bool, usize) {
    let n = s.candidates.fetch_add(1, Ordering::SeqCst);
    let occurrence = {
        let mut seen = s.per_request.lock();
        let count = seen.entry(key.to_string()).or_insert(0);
        *count += 1;
        *count
    };
    let fault = match plan.mode {
        Mode::Off => false,
        Mode::FirstN(k) => n < k,
        Mode::EveryNth(k) => n.is_multiple_of(k.max(1)),
        Mode::PerRequest(k) => occurrence <= k,
        Mode::Cycle { fail, pass } => (occurrence - 1) % (fail + pass).max(1) < fail,
        Mode::Always => true,
        Mode::Random { percent, seed } => draw(seed, key, occurrence, 1) % 100 < u64::from(percent),
    };
    (fault, occurrence)
}

/// The concrete fault for one request of a [`Fault::Mix`] plan.
pub(super) fn pick(seed: u64, key: &str, occurrence: usize) -> Fault {
    const MIX: [Fault; 9] = [
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimited {
            retry_after_secs: 0,
        },
        Fault::ResetMidBody,
        Fault::Truncated,
        Fault::ShortBody,
        Fault::Corrupt,
        Fault::Latency {
            before_headers_ms: 300,
            mid_body_ms: 0,
        },
        Fault::Latency {
            before_headers_ms: 0,
            mid_body_ms: 300,
        },
    ];
    MIX[(draw(seed, key, occurrence, 2) % MIX.len() as u64) as usize]
}

/// `METHOD path [digest]`, with upload session ids replaced by `*`.
pub(super) fn request_key(method: &hyper::Method, uri: &hyper::Uri) -> String {
    let path = uri.path();
    let path = match path.find("/blobs/uploads/") {
        Some(i) => format!("{}/blobs/uploads/*", &path[..i]),
        None => path.to_string(),
    };
    let digest = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find(|p| p.starts_with("digest=") || p.starts_with("mount="))
        })
        .unwrap_or("");
    format!("{method} {path} {digest}")
}
