//! Body faults: cut a body off (with or without a reset or a matching shorter length),
//! flip a byte, pause half-way.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

/// What to do to a body on its way through.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BodyFault {
    /// Stop after half of the body, then reset the connection.
    pub(super) reset: bool,
    /// Stop after half of the body, then end it cleanly (the announced length stays).
    pub(super) truncate: bool,
    /// Send half of the body with a matching `Content-Length`.
    pub(super) short: bool,
    /// Flip the middle byte.
    pub(super) corrupt: bool,
    /// Pause half-way.
    pub(super) pause: Duration,
}

impl BodyFault {
    fn any(&self) -> bool {
        self.reset || self.truncate || self.short || self.corrupt || !self.pause.is_zero()
    }
}

/// Applies `fault` to a body stream of `len` bytes (when known): limits, flips, pauses,
/// and what happens at the cut.
pub(super) fn faulty_stream<S>(
    stream: S,
    len: Option<u64>,
    fault: BodyFault,
) -> futures::stream::BoxStream<'static, std::result::Result<Bytes, std::io::Error>>
where
    S: futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
{
    if !fault.any() {
        return stream.boxed();
    }
    let half = len.map(|n| n / 2).unwrap_or(0);
    let limit = if fault.reset || fault.truncate || fault.short {
        half
    } else {
        u64::MAX
    };
    let flip_at = if fault.corrupt {
        len.map(|n| n / 2)
    } else {
        None
    };
    let pause = fault.pause;
    let mut sent: u64 = 0;
    let mut paused = pause.is_zero();
    let stream = stream.then(move |chunk| {
        let wait = if !paused && sent + chunk.as_ref().map(|c| c.len() as u64).unwrap_or(0) > half {
            paused = true;
            pause
        } else {
            Duration::ZERO
        };
        let out = chunk.map(|chunk| {
            if sent >= limit {
                return Bytes::new();
            }
            let room = limit - sent;
            let chunk = if chunk.len() as u64 > room {
                chunk.slice(..room as usize)
            } else {
                chunk
            };
            let chunk = match flip_at {
                Some(at) if at >= sent && at < sent + chunk.len() as u64 => {
                    let mut bytes = chunk.to_vec();
                    bytes[(at - sent) as usize] ^= 0xFF;
                    Bytes::from(bytes)
                }
                _ => chunk,
            };
            sent += chunk.len() as u64;
            chunk
        });
        async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            out
        }
    });
    if fault.reset {
        // After the cut (and a pause, so the headers and the partial body are flushed),
        // end with an error so hyper aborts the connection.
        stream
            .chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset by the fault proxy"))
            }))
            .boxed()
    } else {
        stream.boxed()
    }
}
