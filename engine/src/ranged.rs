//! Reading one large blob from a far source: ranged parallel GETs, delivered in order.
//!
//! Over a long, slow path one TCP stream moves far less than the link can: its rate is
//! capped by the window over the round-trip time, or by the provider's per-connection
//! shaping. For a blob of at least [`MIN_RANGED_SIZE`] the engine therefore asks for the
//! first [`PART`] bytes with a `Range` header and times the answer:
//!
//! - `200 OK` (the registry ignores ranges): that answer is the whole blob, streamed as
//!   usual;
//! - `206` and the part came fast (at least [`FAST_BYTES_PER_SEC`]: a near source): the
//!   rest comes in one more ranged GET, streamed, so memory stays at one chunk;
//! - `206` and the part came slowly: the rest comes in [`PART`]-sized ranges, up to
//!   [`PARALLEL_PARTS`] at a time, each read whole and handed on in order. Memory is at
//!   most `PARALLEL_PARTS x PART` for the blob.
//!
//! The upload stays one sequential stream (monolithic or chunked), and the caller still
//! checks the digest and size of everything it hands on. A `206` whose `Content-Range`
//! is not the range asked for, or a part longer or shorter than asked, fails the transfer
//! (the caller retries it as a whole, within its budget).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use reqwest::{Response, StatusCode};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;

/// Blobs smaller than this are read with one plain GET.
pub const MIN_RANGED_SIZE: u64 = 32 * 1024 * 1024;
/// The size of one ranged read.
pub const PART: u64 = 4 * 1024 * 1024;
/// Ranged reads of one blob in flight at once.
pub const PARALLEL_PARTS: usize = 4;
/// A first part that arrives at least this fast means a near source: one stream will do.
pub const FAST_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

// A ranged blob is longer than its first part, so the rest is never empty.
const _: () = assert!(MIN_RANGED_SIZE > PART);

/// The blob's bytes, in order, as a stream of chunks.
pub(crate) type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Opens the source side of one blob transfer (see the module docs for the strategy).
pub(crate) async fn open(src: &Client, repository: &str, desc: &Descriptor) -> Result<BlobStream> {
    if desc.size < MIN_RANGED_SIZE {
        return Ok(whole(src.get_blob(repository, &desc.digest).await?));
    }
    let started = Instant::now();
    let first = src
        .get_blob_range(repository, &desc.digest, Some((0, Some(PART - 1))))
        .await?;
    if first.status() == StatusCode::OK {
        tracing::debug!(digest = %desc.digest, "source ignores Range; one stream");
        return Ok(whole(first));
    }
    let what = format!("{repository}@{}", desc.digest);
    let head = read_part(first, &what, 0, PART, desc.size).await?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    let rate = PART as f64 / elapsed;
    let rest_first = PART;
    if rate >= FAST_BYTES_PER_SEC as f64 {
        let rest = src
            .get_blob_range(repository, &desc.digest, Some((rest_first, None)))
            .await?;
        check_partial(&rest, &what, rest_first, desc.size - 1, desc.size)?;
        return Ok(stream::once(async move { Ok(head) })
            .chain(whole(rest))
            .boxed());
    }
    tracing::debug!(
        digest = %desc.digest,
        size = desc.size,
        bytes_per_sec = rate as u64,
        parts = PARALLEL_PARTS,
        "slow source: ranged parallel reads"
    );
    let client = src.clone();
    let repository = repository.to_string();
    let desc = desc.clone();
    let size = desc.size;
    let parts = stream::iter(later_parts(size))
        .map(move |first| {
            let client = client.clone();
            let repository = repository.clone();
            let digest = desc.digest.clone();
            async move {
                let last = part_last(first, size);
                let what = format!("{repository}@{digest}");
                let resp = client
                    .get_blob_range(&repository, &digest, Some((first, Some(last))))
                    .await?;
                read_part(resp, &what, first, last - first + 1, size).await
            }
        })
        .buffered(PARALLEL_PARTS)
        .map_err(std::io::Error::other);
    Ok(stream::once(async move { Ok(head) }).chain(parts).boxed())
}

/// The first byte of every part after the first one.
fn later_parts(size: u64) -> impl Iterator<Item = u64> {
    (1..)
        .map(|i: u64| i.saturating_mul(PART))
        .take_while(move |s| *s < size)
}

/// The last byte of the part starting at `first` (`first < size`).
fn part_last(first: u64, size: u64) -> u64 {
    first.saturating_add(PART).min(size) - 1
}

fn whole(resp: Response) -> BlobStream {
    resp.bytes_stream().map_err(std::io::Error::other).boxed()
}

/// Reads a `206` answer holding exactly the `len` bytes from `first`.
async fn read_part(resp: Response, what: &str, first: u64, len: u64, size: u64) -> Result<Bytes> {
    let last = first + len - 1;
    check_partial(&resp, what, first, last, size)?;
    let status = resp.status().as_u16();
    let bad = |reason: String| Error::BadResponse {
        operation: "GET blob",
        reference: what.to_string(),
        status,
        reason,
        transient: true,
    };
    // `len` is at most PART (4 MiB), so the buffer is bounded.
    let cap = usize::try_from(len).map_err(|_| bad("part too large".into()))?;
    let mut buf = BytesMut::with_capacity(cap);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| bad(format!("reading bytes {first}-{last}: {e}")))?;
        if buf.len() + chunk.len() > cap {
            return Err(bad(format!(
                "more than the {len} bytes of range {first}-{last}"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() != cap {
        return Err(bad(format!(
            "range {first}-{last} ended after {} of {len} bytes",
            buf.len()
        )));
    }
    Ok(buf.freeze())
}

/// A `206` whose `Content-Range` is `bytes first-last/size` (or `/*`); anything else is a
/// bad answer.
fn check_partial(resp: &Response, what: &str, first: u64, last: u64, size: u64) -> Result<()> {
    let status = resp.status();
    let got = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    if status == StatusCode::PARTIAL_CONTENT && content_range_is(got, first, last, size) {
        return Ok(());
    }
    Err(Error::BadResponse {
        operation: "GET blob",
        reference: what.to_string(),
        status: status.as_u16(),
        reason: format!(
            "asked for bytes {first}-{last} of {size}, got {} with Content-Range {}",
            status.as_u16(),
            got.unwrap_or("(none)")
        ),
        transient: true,
    })
}

fn content_range_is(header: Option<&str>, first: u64, last: u64, size: u64) -> bool {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes ")) else {
        return false;
    };
    let Some((range, total)) = spec.split_once('/') else {
        return false;
    };
    let Some((a, b)) = range.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().ok() == Some(size);
    a.parse::<u64>().ok() == Some(first) && b.parse::<u64>().ok() == Some(last) && total_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_be_exactly_the_range_asked_for() {
        assert!(content_range_is(
            Some("bytes 0-4194303/50000000"),
            0,
            4_194_303,
            50_000_000
        ));
        assert!(content_range_is(Some("bytes 10-19/*"), 10, 19, 50));
        // Another range, another size, another unit, or none at all.
        assert!(!content_range_is(Some("bytes 0-9/50"), 10, 19, 50));
        assert!(!content_range_is(Some("bytes 10-20/50"), 10, 19, 50));
        assert!(!content_range_is(Some("bytes 10-19/51"), 10, 19, 50));
        assert!(!content_range_is(Some("items 10-19/50"), 10, 19, 50));
        assert!(!content_range_is(Some("bytes 10-19"), 10, 19, 50));
        assert!(!content_range_is(Some("bytes -19/50"), 10, 19, 50));
        assert!(!content_range_is(None, 10, 19, 50));
    }

    #[test]
    fn the_parts_cover_the_blob_once() {
        let size = 3 * PART + 17;
        let starts: Vec<u64> = later_parts(size).collect();
        assert_eq!(starts, vec![PART, 2 * PART, 3 * PART]);
        assert_eq!(part_last(PART, size), 2 * PART - 1);
        assert_eq!(part_last(3 * PART, size), size - 1);
        // A blob of exactly two parts: one later part, ending at the last byte.
        assert_eq!(later_parts(2 * PART).collect::<Vec<_>>(), vec![PART]);
        assert_eq!(part_last(PART, 2 * PART), 2 * PART - 1);
    }
}
