//! The commands: the engine every command uses is set up here, once; each command is
//! its own module.

use std::path::PathBuf;

use anyhow::Context as _;
use imagesync_engine::auth::StaticProvider;
use imagesync_engine::{AddressPolicy, Credential, Engine, InternalAddresses, Limits, Reference};
use imagesync_flags::LogFormat;
use secrecy::ExposeSecret as _;

use crate::args::{Args, Command};

mod copy;
mod delete;
mod digest;

/// Runs the command of `args`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (src, dst) = references(&args.command)?;
    let engine = engine(&args, src.as_ref(), dst.as_ref())?;
    // JSON logs: every stderr line is an object, so no progress bar.
    let no_progress = args.no_progress || args.log.log_format == LogFormat::Json;
    match (args.command, src, dst) {
        (Command::Copy { referrers, .. }, Some(src), Some(dst)) => {
            let policy = referrers.policy()?;
            copy::run(&engine, &src, &dst, &args.platforms, no_progress, policy).await
        }
        (Command::Digest { .. }, Some(r), _) => digest::run(&engine, &r, &args.platforms).await,
        (
            Command::Delete {
                expect_digest,
                keep_layers,
                ..
            },
            _,
            Some(dst),
        ) => delete::run(&engine, &dst, expect_digest, keep_layers).await,
        _ => anyhow::bail!("the command is missing a reference"),
    }
}

/// The references of the command: (source, destination); `digest`'s is the source.
fn references(command: &Command) -> anyhow::Result<(Option<Reference>, Option<Reference>)> {
    Ok(match command {
        Command::Copy {
            source,
            destination,
            ..
        } => (
            Some(parse_ref(source, "source")?),
            Some(parse_ref(destination, "destination")?),
        ),
        Command::Digest { reference } => (Some(parse_ref(reference, "image")?), None),
        Command::Delete { destination, .. } => (None, Some(parse_ref(destination, "destination")?)),
    })
}

/// The engine: the shared registry flags, the command line's credentials first, and
/// the CLI's own blob cache, limits and internal-address rule.
fn engine(args: &Args, src: Option<&Reference>, dst: Option<&Reference>) -> anyhow::Result<Engine> {
    let explicit = explicit_credentials(
        args.creds.as_ref().map(|s| s.expose_secret()),
        args.src_creds.as_ref().map(|s| s.expose_secret()),
        args.dest_creds.as_ref().map(|s| s.expose_secret()),
        src,
        dst,
    )?;
    let blob_cache = if args.no_blob_cache {
        None
    } else {
        args.blob_cache.clone().or_else(default_blob_cache)
    };
    let config = args
        .registry
        .engine_config(explicit)
        .blob_cache(blob_cache)
        .limits(Limits {
            sync_deadline: args.sync_deadline,
            min_blob_rate: args.min_transfer_rate,
        })
        .addresses(args.allow_internal_hosts.iter().fold(
            AddressPolicy::new(InternalAddresses::RegistryHosts),
            |p, h| p.allow(h),
        ))
        .build();
    Engine::new(config).context("configuring the engine")
}

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
