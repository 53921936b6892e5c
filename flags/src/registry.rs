//! Registry flags: how registries are reached.

use std::path::PathBuf;
use std::sync::Arc;

use imagesync_engine::auth::{ChainProvider, StaticProvider};
use imagesync_engine::{CredentialProvider, EngineConfig, EngineConfigBuilder};

/// How registries are reached, shared by the CLI and the controller.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryFlags {
    /// Registry (HOST:PORT) reached over plain HTTP instead of verified HTTPS. Repeatable,
    /// or comma-separated in the variable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        global = true,
        env = "IMAGESYNC_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_parser = insecure_registry
    )]
    pub insecure_registries: Vec<String>,

    /// PEM bundle of extra CA certificates to trust.
    #[arg(long, value_name = "PATH", global = true, env = "IMAGESYNC_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Blobs over 1 MiB transferred at once per image (1 to 256); as many smaller ones run
    /// beside them.
    #[arg(
        short = 'j',
        long,
        value_name = "N",
        default_value_t = 4,
        global = true,
        env = "IMAGESYNC_JOBS",
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub jobs: u16,

    /// Docker config file with registry credentials (default: $DOCKER_CONFIG/config.json
    /// or ~/.docker/config.json).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        env = "IMAGESYNC_DOCKER_CONFIG"
    )]
    pub docker_config: Option<PathBuf>,
}

impl RegistryFlags {
    /// The standard credential chain: `explicit` first, then the Docker config file
    /// (`--docker-config` or its default) and the cloud helpers.
    pub fn credentials(&self, explicit: StaticProvider) -> Arc<dyn CredentialProvider> {
        Arc::new(ChainProvider::standard(
            explicit,
            self.docker_config.clone(),
        ))
    }

    /// An engine configuration with these flags (and `explicit` credentials first);
    /// the front end adds what is its own.
    pub fn engine_config(&self, explicit: StaticProvider) -> EngineConfigBuilder {
        EngineConfig::builder()
            .insecure_registries(self.insecure_registries.clone())
            .ca_file(self.ca_file.clone())
            .jobs(usize::from(self.jobs))
            .credentials(self.credentials(explicit))
    }
}

/// `--insecure-registry`: `HOST` or `HOST:PORT` (IPv6 in brackets), no scheme, path or
/// spaces, as the provider and the chart's schema accept.
pub fn insecure_registry(s: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryFlags,
    }

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
    fn flags_parse_and_reach_the_engine_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--insecure-registry",
            "127.0.0.1:5000",
            "--insecure-registry=[::1]:5001",
            "--ca-file",
            "/ca.pem",
            "-j",
            "7",
        ])
        .unwrap();
        let config = cli.registry.engine_config(StaticProvider::new()).build();
        assert_eq!(config.insecure_registries, ["127.0.0.1:5000", "[::1]:5001"]);
        assert_eq!(
            config.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(config.jobs, 7);
        assert_eq!(Cli::try_parse_from(["x"]).unwrap().registry.jobs, 4);
        for bad in [
            &["x", "-j", "0"][..],
            &["x", "--jobs", "257"],
            &["x", "--insecure-registry", "http://127.0.0.1:5000"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
