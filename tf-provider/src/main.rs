//! The provider binary: Terraform starts it and talks to it over gRPC.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Terraform reads go-plugin's protocol on stdout; logs go to stderr, which Terraform
    // shows with TF_LOG=debug. RUST_LOG picks the level (default info).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // One rustls crypto provider for every TLS client and server in the process (the
    // plugin's AutoMTLS needs aws-lc-rs for Terraform's P-521 certificate).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(terraform_provider_imagesync::plugin::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
