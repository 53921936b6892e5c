//! A user-space model of a far, slow network link, for the WAN workloads of the bench.
//!
//! The kernel's netem is not available on these machines, so `bench-link` sits in front of a
//! registry on loopback as a TCP proxy and makes every connection through it behave like one
//! over a wide-area link:
//!
//! - **delay per direction**: a byte written by one side reaches the other side `delay`
//!   later (client to server `up`, server to client `down`), so a request/response round
//!   trip costs `up + down`, the RTT. Bytes in flight are not held back by the delay: the
//!   link is a pipe of that length, not a stop-and-wait relay;
//! - **a bandwidth cap per connection and direction**: bytes leave at most at `bits_per_sec`,
//!   as if each TCP stream were limited to that rate (what one stream over a long fat path
//!   gets in practice). Parallel connections each get the full rate;
//! - **connection set-up**: the TCP handshake costs one RTT before the first byte moves.
//!   The client's `connect()` still returns at once (the kernel completes the handshake on
//!   loopback), so a client that races a new connection against one about to come back to
//!   its pool finds the new one ready first, where over a real link the pooled one wins.
//!
//! It does not model loss, slow start or a shared bottleneck. The model is a delay line: each
//! chunk read from one side is timestamped, serialised onto the link after the chunks before
//! it (`len / rate`), and written to the other side `delay` after its last bit left. At most
//! [`WINDOW`] bytes per direction are in flight, so a fast sender is held back by TCP's own
//! flow control, and memory stays bounded whatever is copied through it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read from a socket at a time.
const CHUNK: usize = 64 * 1024;
/// Bytes in flight per direction of one connection (a large TCP window: 8 MiB is more than
/// the bandwidth-delay product of 150 ms at 100 Mbit/s, so the window never limits the
/// modelled link below its rate).
pub const WINDOW: usize = 8 * 1024 * 1024;

/// The link every connection through the proxy gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Delay from the client to the server.
    pub up: Duration,
    /// Delay from the server to the client.
    pub down: Duration,
    /// Rate cap per connection and direction, in bits per second; `None` is unlimited.
    pub bits_per_sec: Option<u64>,
}

impl Link {
    /// A symmetric link: half the round-trip time each way, `mbit` Mbit/s per connection.
    pub fn symmetric(rtt: Duration, mbit: Option<u64>) -> Link {
        Link {
            up: rtt / 2,
            down: rtt - rtt / 2,
            bits_per_sec: mbit.map(|m| m.saturating_mul(1_000_000)),
        }
    }

    /// The round-trip time: `up + down`.
    pub fn rtt(&self) -> Duration {
        self.up.saturating_add(self.down)
    }

    /// How long `bytes` occupy the link at the capped rate (zero when unlimited).
    pub fn serialisation(&self, bytes: usize) -> Duration {
        match self.bits_per_sec {
            Some(bps) if bps > 0 => {
                let bits = (bytes as u128).saturating_mul(8);
                let nanos = bits.saturating_mul(1_000_000_000) / u128::from(bps);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        }
    }
}

/// Accepts connections on `listener` for ever, relaying each to `upstream` over `link`.
pub async fn serve(listener: TcpListener, upstream: SocketAddr, link: Link) -> std::io::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream, link).await {
                eprintln!("bench-link: connection to {upstream}: {e}");
            }
        });
    }
}

/// One connection: the handshake's round trip, then both directions at once.
async fn relay(client: TcpStream, upstream: SocketAddr, link: Link) -> std::io::Result<()> {
    tokio::time::sleep(link.rtt()).await;
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (a, b) = tokio::join!(
        direction(client_read, server_write, link.up, link),
        direction(server_read, client_write, link.down, link),
    );
    a.and(b)
}

/// One direction of a connection: a reader that timestamps chunks and a writer that delivers
/// each at its modelled arrival time, joined by a channel that bounds the bytes in flight.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    link: Link,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(WINDOW / CHUNK);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            if tx.send((Instant::now(), buf)).await.is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer that the sender closed its side.
    };
    let writer = async move {
        let mut link_free = Instant::now();
        while let Some((read_at, buf)) = rx.recv().await {
            let start = read_at.max(link_free);
            link_free = start + link.serialisation(buf.len());
            tokio::time::sleep_until(link_free + delay).await;
            to.write_all(&buf).await?;
        }
        to.shutdown().await
    };
    let ((), written) = tokio::join!(reader, writer);
    written
}

/// Refuses a listen address that is not loopback: the bench only sends traffic to loopback.
pub fn check_loopback(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address (127.0.0.0/8 or ::1)"
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Against real sockets on loopback: an echo server behind the link. The assertions are
    //! lower bounds the model guarantees (a byte cannot arrive before its delay, nor faster
    //! than the cap), so they hold however slow or loaded the machine is.
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn start(link: Link) -> SocketAddr {
        let upstream = echo_server().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, upstream, link));
        addr
    }

    #[tokio::test]
    async fn each_round_trip_costs_the_rtt_and_the_handshake_one_more() {
        let link = Link {
            up: Duration::from_millis(30),
            down: Duration::from_millis(50),
            bits_per_sec: None,
        };
        let addr = start(link).await;
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 5];
        for round in 1..=3u32 {
            s.write_all(b"hello").await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            // The handshake's round trip plus one per request/response exchange.
            let floor = link.rtt() * (round + 1);
            assert!(
                t0.elapsed() >= floor,
                "round {round}: {:?} < {floor:?}",
                t0.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn the_cap_limits_each_connection_and_every_byte_arrives_in_order() {
        // 8 Mbit/s is 1 MB/s: 400 kB each way takes at least 0.4 s on the link.
        let link = Link::symmetric(Duration::from_millis(2), Some(8));
        let addr = start(link).await;
        let payload: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        let t0 = Instant::now();
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, payload, "bytes lost, added or reordered");
        let floor = link.serialisation(payload.len());
        assert!(floor >= Duration::from_millis(400), "{floor:?}");
        assert!(t0.elapsed() >= floor, "{:?} < {floor:?}", t0.elapsed());
    }

    #[test]
    fn serialisation_time_and_symmetric_split() {
        let link = Link::symmetric(Duration::from_millis(41), Some(100));
        assert_eq!(link.up, Duration::from_micros(20_500));
        assert_eq!(link.rtt(), Duration::from_millis(41));
        // 12.5 MB at 100 Mbit/s is one second.
        assert_eq!(link.serialisation(12_500_000), Duration::from_secs(1));
        assert_eq!(
            Link::symmetric(Duration::ZERO, None).serialisation(1 << 30),
            Duration::ZERO
        );
        // A zero rate counts as no cap (the CLI refuses it); no overflow for absurd values.
        let slow = Link::symmetric(Duration::ZERO, Some(0));
        assert_eq!(slow.bits_per_sec, Some(0));
        assert_eq!(slow.serialisation(usize::MAX), Duration::ZERO);
        let one_bit = Link {
            bits_per_sec: Some(1),
            ..slow
        };
        assert!(one_bit.serialisation(usize::MAX) > Duration::from_secs(1 << 33));
    }

    #[test]
    fn only_loopback_listen_addresses() {
        assert!(check_loopback(&"127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(check_loopback(&"[::1]:1".parse().unwrap()).is_ok());
        // The unspecified address (all interfaces): parsed only, never bound.
        assert!(check_loopback(&"0.0.0.0:1".parse().unwrap()).is_err());
    }
}
