//! The command line: flags, the checks of their values (a bad value exits with code 2
//! and says what is wrong), and help texts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use imagesync_engine::{duration, Credential, Digest, Platform};
use imagesync_flags::{LogFlags, RegistryFlags};
use secrecy::{ExposeSecret as _, SecretString};

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

    /// How registries are reached (the flags the controller has too).
    #[command(flatten)]
    pub(crate) registry: RegistryFlags,

    /// Credentials for both registries of the command (source and destination),
    /// USER:PASSWORD. Never sent to another host, except to a registry's token realm
    /// over HTTPS.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_CREDS",
        hide_env_values = true,
        value_parser = secret
    )]
    pub(crate) creds: Option<SecretString>,

    /// Credentials for the source registry, USER:PASSWORD.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_SRC_CREDS",
        help_heading = COPY_ONLY,
        hide_env_values = true,
        value_parser = secret
    )]
    pub(crate) src_creds: Option<SecretString>,

    /// Credentials for the destination registry, USER:PASSWORD.
    #[arg(
        long,
        value_name = "USER:PASS",
        global = true,
        env = "IMAGESYNC_DEST_CREDS",
        hide_env_values = true,
        value_parser = secret
    )]
    pub(crate) dest_creds: Option<SecretString>,

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

    /// The longest one copy may take: seconds, or a duration such as 90m or 6h.
    #[arg(
        long,
        value_name = "DURATION",
        global = true,
        env = "IMAGESYNC_SYNC_DEADLINE",
        default_value = "6h",
        value_parser = deadline,
        help_heading = COPY_ONLY,
    )]
    pub(crate) sync_deadline: Duration,

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

    /// The log format (the flag the controller has too).
    #[command(flatten)]
    pub(crate) log: LogFlags,

    /// Never draw a progress bar, even on a terminal.
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
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
        #[command(flatten)]
        referrers: ReferrerArgs,
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

/// `--sync-deadline`: whole seconds (as before durations were accepted), or a Go-style
/// duration (the shared parser: checked arithmetic, nothing overflows).
fn deadline(s: &str) -> Result<Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s} seconds is too long"));
    }
    duration::parse_checked(s).map_err(|e| format!("{e}: write seconds, or e.g. 90m or 6h"))
}

/// `--creds`-style values, held as secrets (redacted, wiped on drop) from the start.
fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s))
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

/// The clap command: the shared `--jobs` is listed with the flags of copy only.
fn command() -> clap::Command {
    Args::command().mut_arg("jobs", |a| a.help_heading(COPY_ONLY))
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
            if let Err(msg) = check_creds(flag, v.as_ref().map(|s| s.expose_secret())) {
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
    fn deadlines_are_seconds_or_durations_and_never_overflow() {
        assert_eq!(deadline("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(deadline("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(deadline("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "soon",
            "-5",
            "99999999999999999999",
            "99999999999999999999h",
        ] {
            assert!(deadline(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jobs_is_listed_with_the_copy_only_flags() {
        let help = command().render_help().to_string();
        let (common, copy_only) = help.split_once(COPY_ONLY).unwrap();
        assert!(
            !common.contains("--jobs") && copy_only.contains("--jobs"),
            "{help}"
        );
        assert!(common.contains("--insecure-registry"), "{help}");
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

/// Which signatures, attestations and SBOMs (referrers) follow the image.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ReferrerArgs {
    /// Also copy the image's signatures, attestations and SBOMs: cosign's
    /// sha256-<hex>.sig/.att/.sbom tags, the OCI referrers API and the sha256-<hex>
    /// fallback tag (the default). Costs a few requests per image and child.
    #[arg(long, overrides_with = "no_referrers")]
    pub(crate) referrers: bool,
    /// Copy the image only, without its signatures, attestations and SBOMs.
    #[arg(long, overrides_with = "referrers")]
    pub(crate) no_referrers: bool,
    /// Copy only referrers of this artifact type (repeatable), e.g.
    /// application/vnd.dev.cosign.simplesigning.v1+json for cosign signatures.
    #[arg(long = "referrer-type", value_name = "MEDIA-TYPE")]
    pub(crate) referrer_types: Vec<String>,
}

impl ReferrerArgs {
    /// The engine's policy (invalid media types are refused).
    pub(crate) fn policy(&self) -> anyhow::Result<imagesync_engine::ReferrerPolicy> {
        imagesync_engine::ReferrerPolicy::checked(!self.no_referrers, &self.referrer_types)
            .map_err(|e| anyhow::anyhow!("--referrer-type: {e}"))
    }
}
