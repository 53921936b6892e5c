//! `imagesync`: copy, resolve and delete container images between registries.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use imagesync_engine::auth::{ChainProvider, StaticProvider};
use imagesync_engine::progress::{BlobAction, ProgressEvent};
use imagesync_engine::{
    AddressPolicy, Credential, DeleteOptions, Engine, EngineConfig, ErrorKind, InternalAddresses,
    Limits, Platform, Reference, SyncOptions,
};

mod args;
mod output;

use args::{Args, Command, LogFormat};

/// Exit codes, documented in the README.
mod exit {
    pub const FAILURE: u8 = 1;
    /// A bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const AUTH: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// `delete` on a registry that does not allow deletes: a warning, nothing changed.
    pub const DELETE_UNSUPPORTED: u8 = 6;
}

/// A command that ended with a warning (already printed) and a non-zero exit code.
#[derive(Debug)]
struct Warned(u8);

impl std::fmt::Display for Warned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "finished with a warning (exit code {})", self.0)
    }
}

impl std::error::Error for Warned {}

/// `$XDG_CACHE_HOME/imagesync/blobs.json`, else `~/.cache/imagesync/blobs.json`.
fn default_blob_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("imagesync").join("blobs.json"))
}

fn main() -> ExitCode {
    let args = match Args::parse_checked() {
        Ok(a) => a,
        Err(e) if e.use_stderr() && output::json_requested() => {
            output::clap_error_json(&e);
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => e.exit(),
    };
    output::init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(Warned(code)) = err.downcast_ref::<Warned>() {
                return ExitCode::from(*code);
            }
            output::error(&output::chain(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<imagesync_engine::Error>())
    else {
        return exit::FAILURE;
    };
    match e.kind() {
        ErrorKind::NotFound => exit::NOT_FOUND,
        ErrorKind::Unauthorized | ErrorKind::Denied => exit::AUTH,
        ErrorKind::Conflict => exit::REFUSED,
        _ => exit::FAILURE,
    }
}

fn parse_ref(input: &str, what: &str) -> anyhow::Result<Reference> {
    Reference::parse(input).with_context(|| {
        // `repo:a:b`: the engine blames the repository; the tag is what is wrong.
        let last = input.rsplit('/').next().unwrap_or(input);
        let name = last.split('@').next().unwrap_or(last);
        if name.matches(':').count() > 1 {
            format!("bad {what} reference (a tag may not contain ':')")
        } else {
            format!("bad {what} reference")
        }
    })
}

/// The credentials of the command line: `--creds` for the command's source and
/// destination registries only (never a default for other hosts), `--src-creds` and
/// `--dest-creds` for one side each (the destination's wins on a shared registry).
fn explicit_credentials(
    creds: Option<&str>,
    src_creds: Option<&str>,
    dest_creds: Option<&str>,
    src: Option<&Reference>,
    dst: Option<&Reference>,
) -> anyhow::Result<StaticProvider> {
    let mut explicit = StaticProvider::new();
    if let Some(c) = creds {
        let credential = Credential::parse_user_pass(c).context("--creds")?;
        for r in src.iter().chain(dst.iter()) {
            explicit = explicit.with(r.registry(), credential.clone());
        }
    }
    if let (Some(c), Some(r)) = (src_creds, src) {
        explicit = explicit.with(
            r.registry(),
            Credential::parse_user_pass(c).context("--src-creds")?,
        );
    }
    if let (Some(c), Some(r)) = (dest_creds, dst) {
        explicit = explicit.with(
            r.registry(),
            Credential::parse_user_pass(c).context("--dest-creds")?,
        );
    }
    Ok(explicit)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        command,
        insecure_registries,
        ca_file,
        jobs,
        creds,
        src_creds,
        dest_creds,
        docker_config,
        blob_cache,
        no_blob_cache,
        sync_deadline,
        min_transfer_rate,
        allow_internal_hosts,
        platforms,
        log_format,
        no_progress,
    } = args;
    // JSON logs: every stderr line is an object, so no progress bar.
    let no_progress = no_progress || log_format == LogFormat::Json;
    let blob_cache = if no_blob_cache {
        None
    } else {
        blob_cache.or_else(default_blob_cache)
    };

    let (src_ref, dst_ref) = match &command {
        Command::Copy {
            source,
            destination,
        } => (
            Some(parse_ref(source, "source")?),
            Some(parse_ref(destination, "destination")?),
        ),
        Command::Digest { reference } => (Some(parse_ref(reference, "image")?), None),
        Command::Delete { destination, .. } => (None, Some(parse_ref(destination, "destination")?)),
    };

    let explicit = explicit_credentials(
        creds.as_deref(),
        src_creds.as_deref(),
        dest_creds.as_deref(),
        src_ref.as_ref(),
        dst_ref.as_ref(),
    )?;
    let engine = Engine::new(EngineConfig {
        insecure_registries,
        ca_file,
        jobs: usize::from(jobs),
        credentials: Arc::new(ChainProvider::standard(explicit, docker_config)),
        blob_cache,
        limits: Limits {
            sync_deadline: std::time::Duration::from_secs(sync_deadline),
            min_blob_rate: min_transfer_rate,
        },
        addresses: allow_internal_hosts.iter().fold(
            AddressPolicy::new(InternalAddresses::RegistryHosts),
            |p, h| p.allow(h),
        ),
        ..EngineConfig::default()
    })
    .context("configuring the engine")?;

    match command {
        Command::Copy { .. } => {
            let (Some(src), Some(dst)) = (src_ref, dst_ref) else {
                anyhow::bail!("copy needs a source and a destination");
            };
            copy(&engine, &src, &dst, &platforms, no_progress).await
        }
        Command::Digest { .. } => {
            let Some(r) = src_ref else {
                anyhow::bail!("digest needs a reference")
            };
            digest(&engine, &r, &platforms).await
        }
        Command::Delete {
            expect_digest,
            keep_layers,
            ..
        } => {
            let Some(dst) = dst_ref else {
                anyhow::bail!("delete needs a destination")
            };
            let deleted = engine
                .delete(
                    &dst,
                    &DeleteOptions {
                        expect_digest,
                        delete_layers: !keep_layers,
                        only_blobs: None,
                    },
                )
                .await;
            let report = match deleted {
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    output::warn(&format!(
                        "{dst}: the registry does not allow deletes; the image was left in place ({e})"
                    ));
                    return Err(Warned(exit::DELETE_UNSUPPORTED).into());
                }
                other => other.with_context(|| format!("deleting {dst}"))?,
            };
            for w in &report.warnings {
                output::warn(w);
            }
            if report.already_gone {
                output::info(&format!("{dst}: already gone"));
            } else {
                output::info(&format!(
                    "{dst}: tag removed; manifest {}; {} blob(s) deleted, {} kept{}",
                    if report.manifest_deleted {
                        "deleted"
                    } else {
                        "kept (still referenced)"
                    },
                    report.blobs_deleted,
                    report.blobs_kept,
                    if report.kept_tags.is_empty() {
                        String::new()
                    } else {
                        format!("; other tags kept: {}", report.kept_tags.join(", "))
                    }
                ));
            }
            Ok(())
        }
    }
}

/// `digest`: the digest on stdout; on 404, what the server said, and whether it is a
/// registry at all (a web server that is not one answers `GET /v2/` with 404).
async fn digest(engine: &Engine, r: &Reference, platforms: &[Platform]) -> anyhow::Result<()> {
    if !platforms.is_empty() {
        // What a copy with this selection gives (a HEAD and a GET of the index).
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

async fn copy(
    engine: &Engine,
    src: &Reference,
    dst: &Reference,
    platforms: &[Platform],
    no_progress: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal() && !no_progress;
    let bar = if tty {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let bar_for_events = bar.clone();
    let blobs_total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let blobs_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (bt, bd) = (blobs_total.clone(), blobs_done.clone());
    let progress = move |event: ProgressEvent| {
        use std::sync::atomic::Ordering::Relaxed;
        match (&bar_for_events, event) {
            (Some(bar), ProgressEvent::Planned { blobs, bytes, .. }) => {
                bt.store(blobs, Relaxed);
                bar.set_length(bytes);
                bar.set_message(format!("0/{blobs} blobs"));
            }
            (Some(bar), ProgressEvent::Bytes(n)) => bar.inc(n),
            (Some(bar), ProgressEvent::Blob { size, action, .. }) => {
                if action != BlobAction::Uploaded {
                    bar.inc(size);
                }
                let done = bd.fetch_add(1, Relaxed) + 1;
                bar.set_message(format!("{done}/{} blobs", bt.load(Relaxed)));
            }
            (
                Some(bar),
                ProgressEvent::Retry {
                    what,
                    error,
                    attempt,
                },
            ) => {
                bar.println(format!(
                    "retrying {what} (attempt {attempt} failed: {error})"
                ));
            }
            (
                None,
                ProgressEvent::Planned {
                    blobs,
                    bytes,
                    manifests,
                },
            ) => {
                output::info(&format!(
                    "copying {blobs} blob(s), {bytes} bytes, {manifests} manifest(s)"
                ));
            }
            (
                None,
                ProgressEvent::Blob {
                    digest,
                    size,
                    action,
                },
            ) => {
                output::info(&format!("blob {digest} ({size} bytes): {action:?}"));
            }
            (
                None,
                ProgressEvent::Retry {
                    what,
                    error,
                    attempt,
                },
            ) => {
                output::warn(&format!(
                    "retrying {what} (attempt {attempt} failed: {error})"
                ));
            }
            _ => {}
        }
    };
    let options = SyncOptions {
        progress: Some(Arc::new(progress)),
        platforms: platforms.to_vec(),
        ..SyncOptions::default()
    };
    let result = engine.sync(src, dst, &options).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = result.with_context(|| format!("copying {src} to {dst}"))?;
    if outcome.up_to_date {
        output::info(&format!(
            "{dst} already up to date ({})",
            outcome.destination_digest
        ));
    } else {
        output::info(&format!(
            "copied in {:.1}s: {} bytes uploaded, {} blob(s) uploaded, {} mounted, {} already present, {} manifest(s)",
            started.elapsed().as_secs_f64(),
            outcome.bytes_uploaded,
            outcome.blobs_uploaded,
            outcome.blobs_mounted,
            outcome.blobs_skipped,
            outcome.manifests_pushed
        ));
    }
    println!("{}", outcome.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use imagesync_engine::CredentialProvider;

    #[tokio::test]
    async fn creds_apply_to_the_commands_registries_only() {
        let src = Reference::parse("127.0.0.1:5000/a:1").unwrap();
        let dst = Reference::parse("127.0.0.1:6000/b:1").unwrap();
        let p = explicit_credentials(Some("u:all"), None, Some("d:dst"), Some(&src), Some(&dst))
            .unwrap();
        assert_eq!(
            p.credential("127.0.0.1:5000").await.unwrap(),
            Some(Credential::basic("u", "all"))
        );
        assert_eq!(
            p.credential("127.0.0.1:6000").await.unwrap(),
            Some(Credential::basic("d", "dst"))
        );
        // A token realm or any other host the registries name gets nothing.
        assert_eq!(p.credential("127.0.0.2:7000").await.unwrap(), None);
        assert_eq!(p.credential("auth.example").await.unwrap(), None);
    }
}
