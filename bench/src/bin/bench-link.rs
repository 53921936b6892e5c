//! `bench-link`: a TCP proxy on loopback that makes every connection through it behave like
//! one over a far, slow link (delay per direction, a per-connection rate cap). The model is
//! described in `imagesync_bench::link`. Used by bench/wan.sh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use imagesync_bench::link::{check_loopback, serve, Link};

/// Relays connections to UPSTREAM as if over a wide-area link.
#[derive(Parser, Debug)]
#[command(name = "bench-link", version)]
struct Args {
    /// Address to listen on (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay connections (a registry on loopback).
    #[arg(long)]
    upstream: SocketAddr,
    /// Round-trip time in milliseconds, split evenly between the two directions.
    #[arg(long, default_value_t = 40)]
    rtt_ms: u64,
    /// Rate cap per connection and direction in Mbit/s (omit for no cap).
    #[arg(long)]
    mbit: Option<u64>,
    /// Write the bound address (host:port) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_loopback(&args.listen).map_err(anyhow::Error::msg)?;
    check_loopback(&args.upstream).map_err(anyhow::Error::msg)?;
    if args.mbit == Some(0) {
        bail!("--mbit must be at least 1 (omit it for no cap)");
    }
    let link = Link::symmetric(Duration::from_millis(args.rtt_ms), args.mbit);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    if let Some(file) = &args.addr_file {
        // Written whole, then renamed, so a reader never sees half an address.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    }
    eprintln!("bench-link: {bound} -> {} ({link:?})", args.upstream);
    serve(listener, args.upstream, link)
        .await
        .context("accepting connections")
}
