//! `imagesync-controller`: see `imagesync-controller --help`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One rustls crypto provider for the process (aws-lc-rs, as everywhere in the workspace).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    imagesync_controller::args::Args::parse_and_run().await
}
