//! Logging: `tracing` with text or JSON output (`--log-format`, shared with the CLI),
//! filtered by `RUST_LOG` (default `info`, kube's own chatter at `warn`). The set-up
//! itself is the one in `imagesync-flags`.

pub use imagesync_flags::LogFormat;
use imagesync_flags::{JsonStyle, LogFlags, LogSetup};

/// The controller's logging: `RUST_LOG`, JSON with the event's fields at the top level.
const SETUP: LogSetup<'static> = LogSetup {
    filter_env: "RUST_LOG",
    default_filter: "info,kube_runtime=warn,kube_client=warn",
    always: &[],
    ansi: None,
    json: JsonStyle::Flat,
};

/// Installs the global subscriber (writes to stderr).
pub fn init(format: LogFormat) {
    if let Err(e) = (LogFlags { log_format: format }).init(&SETUP) {
        eprintln!("logging already initialised: {e}");
    }
}
