//! Log flags and the one logging set-up of the front ends.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log flags, shared by the CLI and the controller.
#[derive(clap::Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogFlags {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "IMAGESYNC_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// How JSON lines are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonStyle {
    /// The event's fields under `"fields"` (the CLI's format).
    Nested,
    /// The event's fields at the top level, with the current span (the controller's).
    Flat,
}

/// What a front end logs by default, and how.
#[derive(Clone, Copy, Debug)]
pub struct LogSetup<'a> {
    /// The variable holding an `EnvFilter` directive (`RUST_LOG`, `IMAGESYNC_LOG`); unset
    /// or invalid: `default_filter`.
    pub filter_env: &'a str,
    /// The filter when the variable does not give one.
    pub default_filter: &'a str,
    /// Directives always added (e.g. the CLI's own lines at `info`).
    pub always: &'a [&'a str],
    /// ANSI colours: `Some` forces them on or off, `None` keeps the subscriber's default.
    pub ansi: Option<bool>,
    /// The JSON layout.
    pub json: JsonStyle,
}

impl LogFlags {
    /// Installs the global `tracing` subscriber, writing to stderr. Fails when one is
    /// installed already.
    pub fn init(&self, setup: &LogSetup<'_>) -> Result<(), String> {
        let mut filter = std::env::var(setup.filter_env)
            .ok()
            .and_then(|v| EnvFilter::try_new(v).ok())
            .unwrap_or_else(|| EnvFilter::new(setup.default_filter));
        for directive in setup.always {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
        let mut builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        if let Some(ansi) = setup.ansi {
            builder = builder.with_ansi(ansi);
        }
        let result = match (self.log_format, setup.json) {
            (LogFormat::Text, _) => builder.try_init(),
            (LogFormat::Json, JsonStyle::Nested) => builder.json().try_init(),
            (LogFormat::Json, JsonStyle::Flat) => builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .try_init(),
        };
        result.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        log: LogFlags,
    }

    #[test]
    fn log_format_parses() {
        assert_eq!(
            Cli::try_parse_from(["x"]).unwrap().log.log_format,
            LogFormat::Text
        );
        assert_eq!(
            Cli::try_parse_from(["x", "--log-format", "json"])
                .unwrap()
                .log
                .log_format,
            LogFormat::Json
        );
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }
}
