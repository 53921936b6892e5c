//! Hostile answers: redirects elsewhere, foreign token realms, endless bodies, huge
//! indexes, tag-list loops, and hostile changes to forwarded answers (`Location` and
//! `Link` pointing elsewhere, a trickled body).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};

use super::{full, Body, Fault, Shared};

/// A body streamed from `chunks`, counting what the connection takes into `served`.
fn counted_body<S>(served: Arc<std::sync::atomic::AtomicU64>, chunks: S) -> Body
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    let stream = chunks.map(move |c| {
        served.fetch_add(c.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Frame::data(c))
    });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// `total` bytes: `prefix`, then `filler` repeated (64 KiB chunks), made as they go.
fn generated(prefix: String, filler: u8, total: u64) -> impl futures::Stream<Item = Bytes> + Send {
    const CHUNK: u64 = 64 * 1024;
    let head = Bytes::from(prefix);
    let rest = total.saturating_sub(head.len() as u64);
    let chunks = rest.div_ceil(CHUNK);
    futures::stream::once(async move { head }).chain(futures::stream::iter(0..chunks).map(
        move |i| {
            let n = if i + 1 == chunks {
                rest - i * CHUNK
            } else {
                CHUNK
            };
            Bytes::from(vec![filler; n as usize])
        },
    ))
}

pub(super) fn hostile_answer(s: &Shared, fault: Fault, uri: &hyper::Uri) -> Response<Body> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = Response::new(full(String::new()));
    match fault {
        Fault::Redirect { to, by_name } => {
            let host = if by_name {
                format!("localhost:{}", to.port())
            } else {
                to.to_string()
            };
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            set(
                &mut r,
                hyper::header::LOCATION,
                &format!("http://{host}{pq}"),
            );
        }
        Fault::Challenge { realm } => {
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            set(
                &mut r,
                hyper::header::WWW_AUTHENTICATE,
                &format!("Bearer realm=\"http://{realm}/token\",service=\"hostile\""),
            );
        }
        Fault::Endless { bytes } => {
            let prefix = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#;
            *r.body_mut() = counted_body(s.served.clone(), generated(prefix.into(), b'a', bytes));
            set(
                &mut r,
                hyper::header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            );
        }
        Fault::HugeIndex { entries } => {
            let entry = format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1}}"#,
                "0".repeat(64)
            );
            let head = Bytes::from(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
            );
            let entries_stream = futures::stream::iter(0..entries).map(move |i| {
                let sep = if i == 0 { "" } else { "," };
                Bytes::from(format!("{sep}{entry}"))
            });
            let stream = futures::stream::once(async move { head })
                .chain(entries_stream)
                .chain(futures::stream::once(async { Bytes::from_static(b"]}") }));
            *r.body_mut() = counted_body(s.served.clone(), stream);
            set(
                &mut r,
                hyper::header::CONTENT_TYPE,
                "application/vnd.oci.image.index.v1+json",
            );
        }
        Fault::TagLoop { cycle } => {
            let n = s.requests.load(Ordering::SeqCst);
            let next = if cycle { n % 2 } else { n };
            let path = uri.path();
            *r.body_mut() = full(format!(r#"{{"name":"loop","tags":["t{n}"]}}"#));
            set(&mut r, hyper::header::CONTENT_TYPE, "application/json");
            set(
                &mut r,
                hyper::header::LINK,
                &format!("<{path}?n=1&last=t{next}>; rel=\"next\""),
            );
        }
        _ => {}
    }
    r
}

/// Hostile changes to a forwarded answer.
pub(super) fn rewrite_answer(
    s: &Shared,
    fault: Fault,
    uri: &hyper::Uri,
    mut r: Response<Body>,
) -> Response<Body> {
    match fault {
        Fault::RewriteLocation { to } => {
            let loc = r
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(loc) = loc {
                let pq = match loc.find("/v2/") {
                    Some(i) => loc[i..].to_string(),
                    None => loc,
                };
                set(&mut r, hyper::header::LOCATION, &format!("http://{to}{pq}"));
            }
        }
        Fault::LinkTo { to } => {
            let path = uri.path();
            set(
                &mut r,
                hyper::header::LINK,
                &format!("<http://{to}{path}?n=1&last=zzz>; rel=\"next\""),
            );
        }
        Fault::Trickle { bytes_per_sec } => {
            let served = s.served.clone();
            let (parts, body) = r.into_parts();
            let per_tick = (bytes_per_sec / 10).max(1) as usize;
            let stream = body.into_data_stream().flat_map(move |chunk| {
                let pieces: Vec<Bytes> = match chunk {
                    Ok(c) => (0..c.len())
                        .step_by(per_tick)
                        .map(|i| c.slice(i..(i + per_tick).min(c.len())))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                futures::stream::iter(pieces)
            });
            let slow = stream.then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                piece
            });
            return Response::from_parts(parts, counted_body(served, slow));
        }
        _ => {}
    }
    r
}

fn set(r: &mut Response<Body>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}
