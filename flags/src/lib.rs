//! The flags the `imagesync` CLI and `imagesync-controller` share, as `clap::Args`
//! groups each front end flattens into its own command line, and the one logging
//! set-up both use.
//!
//! - [`RegistryFlags`]: how registries are reached (insecure registries, extra CA
//!   certificates, parallel blob transfers, the Docker config file with credentials);
//!   [`RegistryFlags::engine_config`] turns them into an
//!   [`imagesync_engine::EngineConfigBuilder`].
//! - [`LogFlags`]: the log format; [`LogFlags::init`] installs the `tracing` subscriber.
//!
//! Every flag also reads an `IMAGESYNC_*` environment variable, the same one in both
//! front ends. The Terraform provider has no command line and does not use this crate
//! (it must not depend on clap); what it shares with the others, such as the duration
//! parser, lives in the engine.

mod log;
mod registry;

pub use log::{JsonStyle, LogFlags, LogFormat, LogSetup};
pub use registry::{insecure_registry, RegistryFlags};
