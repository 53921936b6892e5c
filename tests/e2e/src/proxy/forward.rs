//! Forwarding a request to the registry and its answer back, with body faults applied
//! on the way and `Location` pointed at the proxy.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};

use super::body::{faulty_stream, BodyFault};
use super::{body_len, Body, Shared};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Forwards the request; `None` when the request body was cut off on purpose (the
/// client gets no answer).
pub(super) async fn forward(
    s: &Shared,
    req: Request<hyper::body::Incoming>,
    request_fault: BodyFault,
    response_fault: BodyFault,
) -> Result<Option<Response<Body>>> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{}{pq}", s.upstream);
    let mut out = s.client.request(parts.method.clone(), &url);
    let request_len = body_len(&parts.headers);
    for (k, v) in parts.headers.iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == hyper::header::CONTENT_LENGTH && request_fault.short {
            let short = request_len.map(|n| n / 2).unwrap_or(0);
            out = out.header(k, short.to_string());
            continue;
        }
        out = out.header(k, v);
    }
    let has_body = parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
        || parts.headers.contains_key(hyper::header::TRANSFER_ENCODING);
    if request_fault.reset {
        // Swallow half of the upload, then drop the connection without an answer: the
        // registry never sees a complete request.
        let mut stream = body.into_data_stream();
        let half = request_len.map(|n| n / 2).unwrap_or(0);
        let mut read: u64 = 0;
        while read < half {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len() as u64,
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Ok(None);
    }
    if has_body {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        let stream = faulty_stream(stream, request_len, request_fault);
        out = out.body(reqwest::Body::wrap_stream(stream));
    }
    let resp = out.send().await.context("forwarding")?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    let upstream_prefix = format!("http://{}", s.upstream);
    let is_head = parts.method == hyper::Method::HEAD;
    let response_len = resp.content_length();
    for (k, v) in resp.headers().iter() {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == reqwest::header::LOCATION {
            let l = v
                .to_str()
                .unwrap_or("")
                .replace(&upstream_prefix, &format!("http://{}", s.addr));
            builder = builder.header(k.as_str(), l);
        } else if k == reqwest::header::CONTENT_LENGTH && response_fault.short && !is_head {
            let short = response_len.map(|n| n / 2).unwrap_or(0);
            builder = builder.header(k.as_str(), short.to_string());
        } else {
            builder = builder.header(k.as_str(), v.as_bytes());
        }
    }
    let body: Body = if is_head {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let stream =
            faulty_stream(stream, response_len, response_fault).map(|r| r.map(Frame::data));
        BodyExt::boxed_unsync(StreamBody::new(stream))
    };
    builder
        .body(body)
        .context("building the response")
        .map(Some)
}
