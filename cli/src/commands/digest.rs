//! `imagesync digest`.

use imagesync_engine::{Engine, Reference};

/// The digest on stdout; on 404, what the server said, and whether it is a registry at
/// all (a web server that is not one answers `GET /v2/` with 404).
pub(super) async fn run(engine: &Engine, r: &Reference) -> anyhow::Result<()> {
    let client = engine.client(r);
    match client.resolve(r).await {
        Ok(d) => {
            println!("{d}");
            Ok(())
        }
        Err(e) if e.is_not_found() => match client.is_registry().await {
            // Exit code 1, not 3: nothing says the image is gone.
            Ok(false) => Err(anyhow::anyhow!(
                "resolving {r}: {e}: {} is not a registry (GET /v2/ answered 404)",
                r.registry()
            )),
            _ => Err(anyhow::Error::new(e).context(format!("resolving {r}"))),
        },
        Err(e) => Err(anyhow::Error::new(e).context(format!("resolving {r}"))),
    }
}
