//! The engine's error type. Every registry error carries the reference, the HTTP status
//! and the registry's error code, and maps to an [`ErrorKind`] callers can match on.
//!
//! Only [`ErrorKind::NotFound`] may ever be read as "the image is gone".

use std::time::Duration;

/// What kind of failure an [`Error`] is. Front ends decide retries, conditions and exit
/// codes from this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN`: the only "gone".
    NotFound,
    /// 401 or `UNAUTHORIZED`: missing or wrong credentials.
    Unauthorized,
    /// 403 or `DENIED`: authenticated but not allowed.
    Denied,
    /// 429 or `TOOMANYREQUESTS`.
    RateLimited,
    /// 405 or `UNSUPPORTED`: the registry does not implement the operation.
    Unsupported,
    /// Bad input from the caller: references, options, manifests we cannot handle.
    InvalidInput,
    /// Network failures, resets, 5xx, deadlines: worth retrying later.
    Transient,
    /// Content did not match its digest, or the registry stored something else.
    Integrity,
    /// Refused to act to avoid data loss (e.g. the tag now points elsewhere).
    Conflict,
}

impl ErrorKind {
    /// A short stable label for metrics and conditions.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Denied => "denied",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Transient => "transient",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Conflict => "conflict",
        }
    }
}

/// Errors of the sync engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference (or digest) the caller gave could not be parsed.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// What the caller wrote.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A platform string that is not `os/architecture[/variant]`.
    #[error("invalid platform {input:?}: {reason}")]
    InvalidPlatform {
        /// What the caller wrote (at most 100 characters of it).
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The source lacks a selected platform. Invalid input, never "not found": the
    /// image is there, the selection does not fit it.
    #[error("{reference} has no platform {}; it has {}", missing.join(", "), if available.is_empty() { "no platform it names".to_string() } else { available.join(", ") })]
    PlatformNotFound {
        /// The source manifest.
        reference: String,
        /// The selected platforms it lacks, as written.
        missing: Vec<String>,
        /// The platforms it has (index order; a single image's own).
        available: Vec<String>,
    },

    /// The registry answered with an error status.
    #[error("{operation} {reference}: {}", registry_message(*status, code.as_deref(), message))]
    Registry {
        /// The classified kind.
        kind: ErrorKind,
        /// What we were doing, e.g. "HEAD manifest".
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// HTTP status code.
        status: u16,
        /// The registry's error code (`MANIFEST_UNKNOWN`, ...), if it sent one.
        code: Option<String>,
        /// The registry's message, or the status text.
        message: String,
        /// `Retry-After` for 429/503 answers.
        retry_after: Option<Duration>,
    },

    /// A network or TLS failure talking to the registry.
    #[error("{operation} {reference}: {source}")]
    Transport {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },

    /// The TLS handshake failed: the certificate is not trusted, or the server does not
    /// speak TLS (a plain-HTTP registry reached over HTTPS). Another attempt cannot
    /// succeed, so it is not retried.
    #[error("{operation} {reference}: TLS with {registry} failed: {message}{}", tls_hint(registry, *plain_http))]
    Tls {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// The registry's `HOST:PORT` as written in the reference.
        registry: String,
        /// The TLS library's description of the failure.
        message: String,
        /// The answer was not TLS at all: the server seems to speak plain HTTP.
        plain_http: bool,
    },

    /// The registry sent nothing (or took none of an upload's bytes) for too long.
    #[error("{operation} {reference}: no progress for {}s (registry stalled)", after.as_secs())]
    Stalled {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// The stall timeout that ran out.
        after: Duration,
    },

    /// Content read or written did not match its digest.
    #[error("{reference}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image or blob reference concerned.
        reference: String,
        /// What the descriptor or reference said.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },

    /// A manifest we will not copy (schema 1, unknown media type, malformed JSON).
    #[error("{reference}: unsupported manifest ({media_type}): {reason}")]
    UnsupportedManifest {
        /// The manifest reference.
        reference: String,
        /// Its media type.
        media_type: String,
        /// Why it is rejected.
        reason: String,
    },

    /// Refused to delete: the tag points at another digest than the one we own.
    #[error("refusing to delete {reference}: it points at {actual}, not {expected} (not ours)")]
    NotOwned {
        /// The tag reference.
        reference: String,
        /// The digest we own.
        expected: String,
        /// What the tag points at now.
        actual: String,
    },

    /// Credentials could not be obtained (bad docker config, helper failure, ...).
    #[error("credentials for {registry}: {message}")]
    Credentials {
        /// The registry host.
        registry: String,
        /// What went wrong (never the secret itself).
        message: String,
    },

    /// Engine configuration problems (bad CA file, ...).
    #[error("configuration: {0}")]
    Config(String),

    /// Retries ran out, or the overall deadline passed; wraps the last error.
    #[error("{operation} {reference}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// What we were doing.
        operation: &'static str,
        /// The reference concerned.
        reference: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        #[source]
        last: Box<Error>,
    },

    /// A request the engine refused to send: credentials or a connection would have gone
    /// where they do not belong (another origin, plain HTTP after HTTPS, an internal
    /// address nobody configured).
    #[error("{operation} {reference}: refused to contact {target}: {reason}")]
    Refused {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// The target, without its query string.
        target: String,
        /// Why.
        reason: String,
    },

    /// A registry answer exceeded one of the engine's caps (body size, entries, pages).
    #[error("{operation} {reference}: {what} exceeds the limit of {limit}")]
    Limit {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// What was too big, e.g. "manifest body (bytes)".
        what: String,
        /// The cap.
        limit: u64,
    },

    /// A registry answered with a success status but a body or headers we cannot use.
    #[error("{operation} {reference}: HTTP {status}: {reason}")]
    BadResponse {
        /// What we were doing.
        operation: &'static str,
        /// The image or blob reference concerned.
        reference: String,
        /// The HTTP status the registry sent.
        status: u16,
        /// What is wrong.
        reason: String,
        /// Whether the kind is transient (worth another attempt) or invalid input.
        transient: bool,
    },

    /// A blob moved slower than the configured minimum rate.
    #[error("{operation} {reference}: slower than {min_rate} bytes/s (limit {}s for {size} bytes)", allowed.as_secs())]
    TooSlow {
        /// What we were doing.
        operation: &'static str,
        /// The blob concerned.
        reference: String,
        /// Its size.
        size: u64,
        /// The configured minimum rate.
        min_rate: u64,
        /// The time one attempt was allowed.
        allowed: Duration,
    },

    /// The sync deadline passed.
    #[error("{reference}: the sync did not finish within {}s", after.as_secs())]
    Deadline {
        /// The destination.
        reference: String,
        /// The deadline.
        after: Duration,
    },

    /// Local I/O (reading a CA file, a docker config, ...).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn registry_message(status: u16, code: Option<&str>, message: &str) -> String {
    match code {
        Some(c) => format!("HTTP {status} {c}: {message}"),
        None => format!("HTTP {status}: {message}"),
    }
}

fn tls_hint(registry: &str, plain_http: bool) -> String {
    if plain_http {
        format!(
            " (the server does not speak TLS; if {registry} serves plain HTTP, list it as an \
             insecure registry, e.g. `--insecure-registry {registry}`; an entry matches only \
             that exact HOST:PORT)"
        )
    } else {
        String::new()
    }
}

impl Error {
    /// The kind callers match on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. }
            | Error::InvalidPlatform { .. }
            | Error::PlatformNotFound { .. }
            | Error::UnsupportedManifest { .. }
            | Error::Config(_) => ErrorKind::InvalidInput,
            Error::Registry { kind, .. } => *kind,
            Error::Transport { .. }
            | Error::Tls { .. }
            | Error::Stalled { .. }
            | Error::Io { .. }
            | Error::TooSlow { .. }
            | Error::Deadline { .. } => ErrorKind::Transient,
            Error::Refused { .. } | Error::Limit { .. } => ErrorKind::InvalidInput,
            Error::BadResponse { transient, .. } => {
                if *transient {
                    ErrorKind::Transient
                } else {
                    ErrorKind::InvalidInput
                }
            }
            Error::DigestMismatch { .. } => ErrorKind::Integrity,
            Error::NotOwned { .. } => ErrorKind::Conflict,
            Error::Credentials { .. } => ErrorKind::Unauthorized,
            Error::RetriesExhausted { last, .. } => last.kind(),
        }
    }

    /// True only for "not found": the only error that may mean "the image is gone".
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// The HTTP status, when the registry answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Registry { status, .. } | Error::BadResponse { status, .. } => Some(*status),
            Error::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The registry's error code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Registry { code, .. } => code.as_deref(),
            Error::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// `Retry-After` from a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Registry { retry_after, .. } => *retry_after,
            Error::RetriesExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// Label for the `error` dimension of metrics.
    pub fn metric_label(&self) -> &'static str {
        self.kind().label()
    }

    /// Whether another attempt may succeed: the one rule the retry layer follows.
    /// Network failures, stalls, too-slow transfers, 5xx (but 501 and 505), 408 and 429
    /// answers and unusable success answers are; everything else (TLS failures, other
    /// 4xx, exhausted retries, so an inner operation's budget is never multiplied by an
    /// outer one) is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Stalled { .. } | Error::TooSlow { .. } => true,
            Error::Registry { kind, .. } => {
                *kind == ErrorKind::RateLimited || *kind == ErrorKind::Transient
            }
            Error::BadResponse { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Classifies a registry answer. `code` is the first error code of the JSON body.
pub(crate) fn classify(status: u16, code: Option<&str>) -> ErrorKind {
    match code {
        Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "BLOB_UPLOAD_UNKNOWN") => {
            return ErrorKind::NotFound
        }
        Some("UNAUTHORIZED") => return ErrorKind::Unauthorized,
        Some("DENIED") => return ErrorKind::Denied,
        Some("TOOMANYREQUESTS") => return ErrorKind::RateLimited,
        Some("UNSUPPORTED") => return ErrorKind::Unsupported,
        Some(
            "DIGEST_INVALID"
            | "MANIFEST_INVALID"
            | "MANIFEST_BLOB_UNKNOWN"
            | "NAME_INVALID"
            | "TAG_INVALID"
            | "SIZE_INVALID"
            | "MANIFEST_UNVERIFIED",
        ) if status < 500 => return ErrorKind::InvalidInput,
        _ => {}
    }
    match status {
        404 => ErrorKind::NotFound,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Denied,
        429 => ErrorKind::RateLimited,
        // 501 Not Implemented, 505 HTTP Version Not Supported: never going to work.
        405 | 501 | 505 => ErrorKind::Unsupported,
        408 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::InvalidInput,
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_not_found_codes_are_gone() {
        assert_eq!(classify(404, Some("MANIFEST_UNKNOWN")), ErrorKind::NotFound);
        assert_eq!(classify(404, Some("NAME_UNKNOWN")), ErrorKind::NotFound);
        assert_eq!(classify(404, None), ErrorKind::NotFound);
        assert_eq!(classify(401, Some("UNAUTHORIZED")), ErrorKind::Unauthorized);
        assert_eq!(classify(403, None), ErrorKind::Denied);
        assert_eq!(classify(429, None), ErrorKind::RateLimited);
        assert_eq!(classify(405, None), ErrorKind::Unsupported);
        assert_eq!(classify(503, None), ErrorKind::Transient);
        assert_eq!(classify(400, Some("UNSUPPORTED")), ErrorKind::Unsupported);
        assert_eq!(classify(501, None), ErrorKind::Unsupported);
    }

    fn answer(status: u16, code: Option<&str>) -> Error {
        Error::Registry {
            kind: classify(status, code),
            operation: "GET blob",
            reference: "r".into(),
            status,
            code: code.map(String::from),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn only_answers_that_may_change_are_retried() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(answer(status, None).is_retryable(), "{status}");
        }
        for status in [400, 404, 405, 409, 410, 413, 415, 501, 505] {
            assert!(!answer(status, None).is_retryable(), "{status}");
        }
        assert!(!answer(400, Some("UNKNOWN")).is_retryable());
        let tls = Error::Tls {
            operation: "HEAD manifest",
            reference: "127.0.0.1:5000/a:1".into(),
            registry: "127.0.0.1:5000".into(),
            message: "received corrupt message of type InvalidContentType".into(),
            plain_http: true,
        };
        assert!(!tls.is_retryable());
        assert!(
            tls.to_string()
                .contains("--insecure-registry 127.0.0.1:5000"),
            "{tls}"
        );
    }

    #[test]
    fn registry_error_message_names_reference_status_and_code() {
        let e = Error::Registry {
            kind: ErrorKind::Unauthorized,
            operation: "HEAD manifest",
            reference: "127.0.0.1:5000/a:b".into(),
            status: 401,
            code: Some("UNAUTHORIZED".into()),
            message: "authentication required".into(),
            retry_after: None,
        };
        let s = e.to_string();
        assert!(
            s.contains("127.0.0.1:5000/a:b") && s.contains("401") && s.contains("UNAUTHORIZED"),
            "{s}"
        );
        assert!(!e.is_not_found());
    }
}
