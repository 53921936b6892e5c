//! `imagesync digest`.

use imagesync_engine::{Engine, Platform, Reference};

/// The digest on stdout; on 404, what the server said, and whether it is a registry at
/// all (a web server that is not one answers `GET /v2/` with 404).
/// With `platforms`: the digest a copy with that selection gives (a HEAD and a GET of the
/// index).
pub(super) async fn run(
    engine: &Engine,
    r: &Reference,
    platforms: &[Platform],
) -> anyhow::Result<()> {
    if !platforms.is_empty() {
        match engine.resolve(r, platforms, None).await {
            Ok(Some(s)) => {
                println!("{}", s.digest);
                return Ok(());
            }
            // Not found: reported below, as without a selection.
            Ok(None) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("resolving {r}"))),
        }
    }
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
