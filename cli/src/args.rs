//! The command line: flags, the checks of their values (a bad value exits with code 2
//! and says what is wrong), and help texts.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use imagesync_engine::{Credential, Digest, Platform};

/// The exit codes, shown at the end of every `--help` (the README has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0  success (for delete, also \"already gone\")
  1  any other failure: bad input, network, TLS, integrity
  2  bad command line (unknown flag, bad flag value, missing argument)
  3  not found (404, MANIFEST_UNKNOWN, NAME_UNKNOWN, BLOB_UNKNOWN)
  4  unauthorized or denied (401/403)
  5  refused to avoid data loss (--expect-digest does not match the tag)
  6  delete on a registry that does not allow deletes: a warning, nothing changed";

/// The help heading of the flags only `copy` uses (accepted by every command, so that
/// scripts passing them everywhere keep working).
const COPY_ONLY: &str = "Options of copy only (digest and delete ignore them)";

#[derive(Parser)]
#[command(
    name = "imagesync",
    version,
    about = "Copy container images between OCI registries, byte for byte",
    after_help = EXIT_CODES
)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,

    /// Registry (HOST:PORT) reached over plain HTTP instead of verified HTTPS. Repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        global = true,
        env = "IMAGESYNC_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_parser = insecure_registry
    )]
    pub(crate) insecure_registries: Vec<String>,

    /// PEM bundle of extra CA certificates to trust.
    #[arg(long, value_name = "PATH", global = true, env = "IMAGESYNC_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// Blobs transferred at once (1 to 256).
    #[arg(
        short = 'j',
        help_heading = COPY_ONLY,
        long,
        value_name = "N",
        default_value_t = 4,
        global = true,
        env = "IMAGESYNC_JOBS",
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub(crate) jobs: u16,

    /// Credentials for both registries of the command (source and destination),
    /// USER:PASSWORD. Never sent to another host, except to a registry's token realm
    /// over HTTPS.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_CREDS",
        hide_env_values = true
    )]
    pub(crate) creds: Option<String>,

    /// Credentials for the source registry, USER:PASSWORD.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_SRC_CREDS",
        help_heading = COPY_ONLY,
        hide_env_values = true
    )]
    pub(crate) src_creds: Option<String>,

    /// Credentials for the destination registry, USER:PASSWORD.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_DEST_CREDS",
        hide_env_values = true
    )]
    pub(crate) dest_creds: Option<String>,

    /// Docker config file (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        env = "IMAGESYNC_DOCKER_CONFIG"
    )]
    pub(crate) docker_config: Option<PathBuf>,

    /// File remembering which repository of a registry holds which blob, so that later
    /// copies mount shared layers instead of uploading them again (default:
    /// $XDG_CACHE_HOME/imagesync/blobs.json, else ~/.cache/imagesync/blobs.json).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        env = "IMAGESYNC_BLOB_CACHE",
        help_heading = COPY_ONLY
    )]
    pub(crate) blob_cache: Option<PathBuf>,

    /// Neither read nor write the blob cache.
    #[arg(
        long,
        global = true,
        conflicts_with = "blob_cache",
        help_heading = COPY_ONLY
    )]
    pub(crate) no_blob_cache: bool,

    /// The longest one copy may take, in seconds (default 6 hours).
    #[arg(
        long,
        value_name = "SECONDS",
        global = true,
        env = "IMAGESYNC_SYNC_DEADLINE",
        default_value_t = 6 * 3600,
        help_heading = COPY_ONLY,
    )]
    pub(crate) sync_deadline: u64,

    /// The slowest a blob may move, in bytes per second, before its transfer is
    /// abandoned and retried (0: no minimum).
    #[arg(
        long,
        value_name = "BYTES_PER_SEC",
        global = true,
        env = "IMAGESYNC_MIN_TRANSFER_RATE",
        default_value_t = 10 * 1024,
        help_heading = COPY_ONLY,
    )]
    pub(crate) min_transfer_rate: u64,

    /// A host that may be reached on an internal address (loopback, link-local,
    /// private) even when a redirect, upload location or token realm leaves the
    /// registry's host. Repeatable. The registries of the command and insecure
    /// registries are always allowed.
    #[arg(long = "allow-internal-host", value_name = "HOST", global = true)]
    pub(crate) allow_internal_hosts: Vec<String>,

    /// Copy only this platform, OS/ARCH[/VARIANT] (e.g. linux/amd64, linux/arm64/v8).
    /// Repeatable. One platform copies that child manifest byte for byte; several write a
    /// deterministic index of just those. `digest` prints the digest such a copy gives.
    /// Default: every platform, digest preserved.
    #[arg(
        long = "platform",
        value_name = "OS/ARCH[/VARIANT]",
        global = true,
        env = "IMAGESYNC_PLATFORMS",
        value_delimiter = ',',
        value_parser = platform
    )]
    pub(crate) platforms: Vec<Platform>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub(crate) log_format: LogFormat,

    /// Never draw a progress bar, even on a terminal.
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Copy SRC to DST (all platforms, digest preserved); prints the id `repo@sha256:...`.
    #[command(override_usage = "imagesync copy [OPTIONS] <SOURCE> <DESTINATION>", after_help = EXIT_CODES)]
    Copy {
        /// Source image reference.
        source: String,
        /// Destination image reference.
        destination: String,
    },
    /// Print the digest REF resolves to (HEAD request only).
    #[command(override_usage = "imagesync digest [OPTIONS] <REFERENCE>", after_help = EXIT_CODES)]
    Digest {
        /// Image reference.
        reference: String,
    },
    /// Remove DST's tag safely (other tags on the same digest survive), then unshared layers.
    ///
    /// On a registry that does not allow deletes, prints a warning, changes nothing and
    /// exits with code 6.
    ///
    /// Layers: the CLI keeps no record of what it uploaded, so it deletes every layer of
    /// the image that no other tag (including `sha256-<hex>` referrer tags and cosign's
    /// `.sig`, `.att` and `.sbom` tags) and no manifest listed by the registry's referrers
    /// API still uses. Manifests that no tag or referrer names (an image pulled only by
    /// digest, e.g. one whose tag moved) are invisible to it and can lose shared layers:
    /// use --keep-layers in repositories that hold such images.
    #[command(override_usage = "imagesync delete [OPTIONS] <DESTINATION>", after_help = EXIT_CODES)]
    Delete {
        /// Destination image reference.
        destination: String,
        /// Only delete if the tag still points at this digest.
        #[arg(long, value_name = "sha256:HEX", value_parser = digest)]
        expect_digest: Option<Digest>,
        /// Keep the layers (only remove the tag / manifest).
        #[arg(long)]
        keep_layers: bool,
    },
}

/// `--insecure-registry`: `HOST` or `HOST:PORT` (IPv6 in brackets), no scheme, path or
/// spaces, as the provider and the chart's schema accept.
fn insecure_registry(s: &str) -> Result<String, String> {
    const EXAMPLE: &str = "write HOST:PORT, e.g. 127.0.0.1:5000";
    if let Some((_, rest)) = s.split_once("://") {
        return Err(format!(
            "a registry address has no scheme ({EXAMPLE}: `{}`)",
            rest.trim_end_matches('/')
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-[]:".contains(c);
    if s.is_empty() || !s.chars().all(allowed) {
        return Err(format!(
            "not a registry address (letters, digits, '.', '-', ':' and brackets only; {EXAMPLE})"
        ));
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("not a registry address ({EXAMPLE})")),
            },
            None => return Err("an IPv6 address needs its closing ']'".into()),
        },
        None => match s.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("write an IPv6 address in brackets, e.g. [::1]:5000".into())
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    if host.is_empty() {
        return Err(format!("the host is missing ({EXAMPLE})"));
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err(format!("{p:?} is not a port (1 to 65535)"));
        }
    }
    Ok(s.to_string())
}

/// `--platform`: `os/architecture[/variant]`, checked as the engine (and the CRD) do.
fn platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).map_err(|e| e.to_string())
}

/// `--expect-digest`: `sha256:` and 64 lowercase hex digits.
fn digest(s: &str) -> Result<Digest, String> {
    s.parse::<Digest>().map_err(|_| {
        "not a digest: write sha256: followed by 64 lowercase hex digits, as `imagesync digest` prints it"
            .to_string()
    })
}

/// `--creds`-style values: `USER:PASSWORD`. The value is never echoed (it may be a
/// password or token typed without its user).
fn check_creds(flag: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if Credential::parse_user_pass(v).is_err() => Err(format!(
            "invalid value for '{flag}': write USER:PASSWORD (user, a ':', then the password; the value is not shown)"
        )),
        _ => Ok(()),
    }
}

/// The clap command.
fn command() -> clap::Command {
    Args::command()
}

impl Args {
    /// Parses the command line; on a bad one, the clap error (exit code 2).
    pub(crate) fn parse_checked() -> Result<Args, clap::Error> {
        let mut cmd = command();
        let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
        let args = Args::from_arg_matches(&matches)?;
        for (flag, v) in [
            ("--creds", &args.creds),
            ("--src-creds", &args.src_creds),
            ("--dest-creds", &args.dest_creds),
        ] {
            if let Err(msg) = check_creds(flag, v.as_deref()) {
                return Err(cmd.error(clap::error::ErrorKind::ValueValidation, msg));
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn insecure_registry_values_are_host_port_only() {
        for ok in [
            "127.0.0.1:5000",
            "localhost",
            "reg.example:443",
            "[::1]:5000",
            "[::1]",
        ] {
            assert_eq!(insecure_registry(ok).unwrap(), ok);
        }
        for bad in [
            "bad host",
            "http://127.0.0.1:5101",
            "127.0.0.1:5000/path",
            "",
            ":5000",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "::1",
            "[::1",
        ] {
            assert!(insecure_registry(bad).is_err(), "{bad:?}");
        }
        assert!(insecure_registry("http://127.0.0.1:5101")
            .unwrap_err()
            .contains("`127.0.0.1:5101`"));
    }

    #[test]
    fn creds_errors_never_show_the_value() {
        let e = check_creds("--creds", Some("s3cr3t-token")).unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(check_creds("--creds", Some("u:p")).is_ok());
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }
}
