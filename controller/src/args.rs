//! Command-line flags. The registry and log flags are the groups the CLI shares
//! (`imagesync-flags`); what the process does with them is in [`crate::app`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use imagesync_flags::{LogFlags, RegistryFlags};

use crate::duration;

/// A Go-style duration flag (`30s`, `5m`, `1h`): more than 0 and at most 720h.
#[derive(Clone, Copy, Debug)]
pub struct DurationArg(pub Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        duration::check_flag(s).map(DurationArg)
    }
}

/// `imagesync-controller`: keeps `ImageSync` destinations in sync with their sources.
///
/// Connects with the in-cluster configuration or `KUBECONFIG`.
#[derive(Parser, Debug)]
#[command(name = "imagesync-controller", version, about)]
pub struct Args {
    /// Watch only this namespace (empty: all namespaces).
    #[arg(long, env = "IMAGESYNC_NAMESPACE", default_value = "")]
    pub(crate) namespace: String,

    /// Objects reconciled at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: u16,

    /// How registries are reached (shared with the CLI).
    #[command(flatten)]
    pub(crate) registry: RegistryFlags,

    /// A registry host that may be on an internal address (repeatable, or
    /// comma-separated in the variable; a port is ignored). Every other loopback,
    /// link-local (cloud metadata), private or unique-local address is refused, checked
    /// after DNS resolution, whatever an ImageSync, a redirect, an upload `Location` or a
    /// token realm names; insecure registries are allowed too. `*` turns the check off.
    #[arg(
        long = "allow-internal-registry",
        value_name = "HOST",
        env = "IMAGESYNC_ALLOW_INTERNAL_REGISTRIES",
        value_delimiter = ','
    )]
    pub(crate) allow_internal_registries: Vec<String>,

    /// Address serving /metrics, /healthz and /readyz (for example 127.0.0.1:8080 to
    /// serve metrics on localhost only).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub(crate) metrics_addr: SocketAddr,

    /// Serve /healthz and /readyz on this address instead (for example when
    /// --metrics-addr is a loopback address and the kubelet must still probe the Pod).
    #[arg(long, value_name = "ADDR")]
    pub(crate) health_addr: Option<SocketAddr>,

    /// Run only while holding a coordination.k8s.io/v1 Lease (for several replicas).
    #[arg(long)]
    pub(crate) leader_elect: bool,

    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub(crate) leader_election_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "imagesync-controller")]
    pub(crate) lease_name: String,

    /// How long a Lease stays valid without renewal.
    #[arg(long, default_value = "15s")]
    pub(crate) lease_duration: DurationArg,

    /// The log format (shared with the CLI).
    #[command(flatten)]
    pub(crate) log: LogFlags,

    /// resyncInterval of objects that do not set one.
    #[arg(long, default_value = "5m")]
    pub(crate) default_resync_interval: DurationArg,

    /// Shortest spec.resyncInterval accepted (at least 1s); shorter values, like values
    /// over 720h, make the object Ready=False with reason InvalidSpec.
    #[arg(long, env = "IMAGESYNC_MIN_RESYNC_INTERVAL", default_value = "10s")]
    pub(crate) min_resync_interval: DurationArg,

    /// Tenant policy (YAML): which namespaces may copy what, with whose credentials.
    /// Without it every object is allowed and may use the controller's own credentials.
    #[arg(long, env = "IMAGESYNC_POLICY_FILE", value_name = "PATH")]
    pub(crate) policy_file: Option<PathBuf>,

    /// How often the policy file is re-read (a changed, valid file replaces the policy).
    #[arg(long, default_value = "10s")]
    pub(crate) policy_reload_interval: DurationArg,

    /// The controller's own Deployment (in the pod's namespace): controller-level Events,
    /// such as policy reload failures, are recorded on it (else on the Lease, if any).
    #[arg(long, env = "IMAGESYNC_DEPLOYMENT_NAME", value_name = "NAME")]
    pub(crate) deployment_name: Option<String>,
}

impl Args {
    /// Parses the command line and runs the controller until SIGTERM/SIGINT.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        Args::parse().run().await
    }

    /// Runs the controller ([`crate::app::run`]).
    pub async fn run(self) -> anyhow::Result<()> {
        crate::app::run(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_flags_parse() {
        let args = Args::try_parse_from([
            "imagesync-controller",
            "--policy-file",
            "/etc/imagesync/policy/policy.yaml",
            "--policy-reload-interval",
            "1s",
            "--deployment-name",
            "isync",
        ])
        .unwrap();
        assert_eq!(
            args.policy_file.as_deref(),
            Some(std::path::Path::new("/etc/imagesync/policy/policy.yaml"))
        );
        assert_eq!(args.policy_reload_interval.0, Duration::from_secs(1));
        assert_eq!(args.deployment_name.as_deref(), Some("isync"));
        assert!(Args::try_parse_from(["x", "--policy-reload-interval", "0s"]).is_err());
    }

    /// Huge durations in flags (which used to overflow `Instant` arithmetic later) are
    /// refused when parsing, with no panic.
    #[test]
    fn duration_flags_are_bounded() {
        for flag in [
            "--lease-duration",
            "--default-resync-interval",
            "--min-resync-interval",
            "--policy-reload-interval",
        ] {
            for bad in ["99999999999999999999h", "2562047h", "721h", "0s", "1x"] {
                assert!(
                    Args::try_parse_from(["x", flag, bad]).is_err(),
                    "{flag} {bad}"
                );
            }
            assert!(Args::try_parse_from(["x", flag, "720h"]).is_ok(), "{flag}");
        }
        let args = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(args.min_resync_interval.0, duration::MIN_RESYNC);
        assert!(args.health_addr.is_none());
        let args = Args::try_parse_from([
            "x",
            "--metrics-addr",
            "127.0.0.1:9090",
            "--health-addr",
            "0.0.0.0:8081",
        ])
        .unwrap();
        assert!(args.metrics_addr.ip().is_loopback());
        assert_eq!(args.health_addr.map(|a| a.port()), Some(8081));
    }
}
