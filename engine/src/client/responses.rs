//! Registry answers to results: error statuses and the distribution error body to
//! typed [`Error`]s (with the real HTTP status), `Retry-After`, and `Link` headers.

use std::time::Duration;

use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::Response;

use super::{Operation, MAX_ERROR_BODY_BYTES};
use crate::error::{classify, Error, Result};

/// How long an error answer's body may take to arrive.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer when its status is a success, else the error it stands for.
pub(super) async fn success(op: Operation, reference: &str, resp: Response) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(error_from_response(op, reference, resp).await)
}

/// `Ok(false)` for "not found", `Ok(true)` for success, the error otherwise.
pub(super) fn present(result: Result<Response>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first [`MAX_ERROR_BODY_BYTES`] of an error body (less if it stalls).
async fn error_body(resp: Response) -> Vec<u8> {
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_ERROR_BODY_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    body
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all(reqwest::header::LINK) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            if part.contains("rel=\"next\"") || part.contains("rel=next") {
                let start = part.find('<')? + 1;
                let end = part.find('>')?;
                return part.get(start..end).map(str::to_string);
            }
        }
    }
    None
}

/// `Retry-After` as seconds or an HTTP date; a date in the past is zero.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Turns an error response into an [`Error`], reading the distribution error body.
pub(crate) async fn error_from_response(op: Operation, reference: &str, resp: Response) -> Error {
    let operation = op.label();
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers());
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("error")
        .to_string();
    // An error body is small: read at most MAX_ERROR_BODY_BYTES of it, for at most
    // ERROR_BODY_TIMEOUT; a registry that stalls here still gets its status reported.
    let body = error_body(resp).await;
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<Body>(&body) {
        Ok(b) if !b.errors.is_empty() => {
            let code = b.errors[0].code.clone();
            let msg = b
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            (
                Some(code).filter(|c| !c.is_empty()),
                if msg.is_empty() { reason } else { msg },
            )
        }
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let msg = if text.is_empty() || text.len() > 300 {
                reason
            } else {
                text.to_string()
            };
            (None, msg)
        }
    };
    Error::Registry {
        kind: classify(status, code.as_deref()),
        operation,
        reference: reference.to_string(),
        status,
        code,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static("</v2/a/tags/list?last=b&n=2>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?last=b&n=2"));
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(">x<; rel=next"),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn retry_after_dates_and_huge_values() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(u64::MAX)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 99999999999 08:49:37 GMT"),
        );
        assert_eq!(parse_retry_after(&h), None);
    }
}
