//! What goes to stderr: engine logs (off unless `IMAGESYNC_LOG` asks), step lines,
//! warnings and the final error. In `--log-format json` every line is one JSON object
//! (the tracing JSON format); in text, plain lines, coloured only on a terminal and
//! never when `NO_COLOR` is set.

use std::io::IsTerminal;

use imagesync_flags::{JsonStyle, LogFlags, LogFormat, LogSetup};

/// The tracing target of the CLI's own lines (always shown, whatever `IMAGESYNC_LOG` says).
const TARGET: &str = "imagesync::cli";

/// Engine logs when `IMAGESYNC_LOG` is unset: errors only (retries are reported by the
/// command itself, once).
const DEFAULT_FILTER: &str = "error";

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// Whether stderr may carry ANSI colour codes.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the logging (the set-up shared with the controller): `IMAGESYNC_LOG`
/// filters the engine's logs, the CLI's own lines are always shown.
pub(crate) fn init_logging(flags: LogFlags) {
    let _ = FORMAT.set(flags.log_format);
    let always = [format!("{TARGET}=info")];
    let always: Vec<&str> = always.iter().map(String::as_str).collect();
    let _ = flags.init(&LogSetup {
        filter_env: "IMAGESYNC_LOG",
        default_filter: DEFAULT_FILTER,
        always: &always,
        ansi: Some(colour()),
        json: JsonStyle::Nested,
    });
}

/// A step or result line (text: as is; json: an INFO object).
pub(crate) fn info(line: &str) {
    if json() {
        tracing::info!(target: TARGET, "{line}");
    } else {
        eprintln!("{line}");
    }
}

/// A warning (text: `warning: ...`; json: a WARN object).
pub(crate) fn warn(line: &str) {
    if json() {
        tracing::warn!(target: TARGET, "{line}");
    } else {
        eprintln!("warning: {line}");
    }
}

/// The final error (text: `error: ...`; json: an ERROR object).
pub(crate) fn error(line: &str) {
    if json() {
        tracing::error!(target: TARGET, "{line}");
    } else {
        eprintln!("error: {line}");
    }
}

/// Whether the raw command line (or `IMAGESYNC_LOG_FORMAT`) asks for JSON logs, for
/// errors before parsing ends.
pub(crate) fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
        || std::env::var("IMAGESYNC_LOG_FORMAT").is_ok_and(|v| v == "json")
}

/// A command-line error as one JSON object per line of its text (exit code 2 follows).
pub(crate) fn clap_error_json(err: &clap::Error) {
    let text = err.render().to_string();
    let message = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "{{\"level\":\"ERROR\",\"fields\":{{\"message\":{}}},\"target\":\"{TARGET}\"}}",
        json_string(&message)
    );
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An error and its causes, each said once: a cause whose text is already the end of
/// the one before is not repeated, and a context already at the start of the one
/// before (`HEAD manifest X: ...` under `HEAD manifest X: gave up ...`) is dropped.
pub(crate) fn chain(err: &anyhow::Error) -> String {
    let texts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    let mut parts: Vec<String> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let mut own = text.as_str();
        if let Some(next) = texts.get(i + 1) {
            if let Some(head) = own.strip_suffix(next.as_str()) {
                own = head.trim_end_matches(": ").trim_end_matches(':');
            }
        }
        if own.is_empty() {
            continue;
        }
        if let Some(prev) = parts.last_mut() {
            if prev.contains(own) {
                continue;
            }
            // `prev` ends with `own`'s leading context: keep only what is new.
            if let Some((ctx, rest)) = own.split_once(": ") {
                if prev.starts_with(ctx) || prev.ends_with(ctx) {
                    if !prev.contains(rest) {
                        parts.push(rest.to_string());
                    }
                    continue;
                }
            }
        }
        parts.push(own.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(String, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_context_is_said_once() {
        let e = |s: &str, src: Option<E>| E(s.into(), src.map(Box::new));
        let io = e("Connection refused (os error 111)", None);
        let hyper = e("client error (Connect)", Some(io));
        let req = e("error sending request", Some(hyper));
        let transport = e("HEAD manifest r:1: error sending request", Some(req));
        let gave_up = e(
            "HEAD manifest r:1: gave up after 6 attempts: HEAD manifest r:1: error sending request",
            Some(transport),
        );
        let err = anyhow::Error::new(gave_up).context("resolving r:1");
        assert_eq!(
            chain(&err),
            "resolving r:1: HEAD manifest r:1: gave up after 6 attempts: error sending request: \
             client error (Connect): Connection refused (os error 111)"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
