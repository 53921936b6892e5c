//! The one retry layer. Every registry operation runs as attempts under one budget:
//! at most `max_attempts` attempts within `deadline`, backoff with jitter between them
//! (or the registry's `Retry-After`), and one rule for what is worth another attempt
//! ([`Error::is_retryable`]). An attempt sends each request once; only a fresh auth
//! challenge re-sends it, once per operation. An operation that gave up is never
//! retried by an enclosing one (exhausted retries are not retryable), so budgets do not
//! multiply.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::challenge::{parse_challenge, Scope};
use super::{responses, Client};
use crate::config::RetryPolicy;
use crate::error::{Error, Result};

/// What a request (or a group of requests retried together) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Operation {
    HeadManifest,
    GetManifest,
    PutManifest,
    DeleteManifest,
    HeadBlob,
    GetBlob,
    StartUpload,
    PatchBlob,
    PutBlob,
    CancelUpload,
    DeleteBlob,
    GetTags,
    GetReferrers,
    GetToken,
    GetBase,
}

impl Operation {
    /// The label in errors, logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Operation::HeadManifest => "HEAD manifest",
            Operation::GetManifest => "GET manifest",
            Operation::PutManifest => "PUT manifest",
            Operation::DeleteManifest => "DELETE manifest",
            Operation::HeadBlob => "HEAD blob",
            Operation::GetBlob => "GET blob",
            Operation::StartUpload => "POST upload",
            Operation::PatchBlob => "PATCH blob",
            Operation::PutBlob => "PUT blob",
            Operation::CancelUpload => "DELETE upload",
            Operation::DeleteBlob => "DELETE blob",
            Operation::GetTags => "GET tags",
            Operation::GetReferrers => "GET referrers",
            Operation::GetToken => "GET token",
            Operation::GetBase => "GET /v2/",
        }
    }

    /// Whether a redirect answer is the operation's result (blob GETs are redirected
    /// to storage, followed by hand without credentials).
    pub(crate) fn takes_redirects(self) -> bool {
        self == Operation::GetBlob
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, honouring `Retry-After` when given.
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        // Exponential from half the base delay, doubled per attempt and capped at half
        // the longest delay, plus jitter of up to as much again: a delay in
        // [exp/2, exp), exp = base * 2^(attempt-1) capped at `max_delay`.
        let steps = attempt.saturating_sub(1).min(16) as usize;
        backon::ExponentialBuilder::new()
            .with_min_delay(self.base_delay / 2)
            .with_max_delay(self.max_delay / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(steps)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// After attempt `attempt` (started at `started`) failed with `err`: the delay
    /// before the next one, or the error to give up with.
    pub(crate) fn next(
        &self,
        label: &'static str,
        reference: &str,
        attempt: u32,
        started: Instant,
        err: Error,
    ) -> std::result::Result<Duration, Error> {
        if !err.is_retryable() {
            return Err(err);
        }
        // A Retry-After longer than we are willing to wait: retrying earlier would only
        // be refused again, so hand the RateLimited error (with its Retry-After) back.
        if err
            .retry_after()
            .is_some_and(|ra| ra > self.max_retry_after)
        {
            return Err(err);
        }
        let delay = self.delay(attempt, err.retry_after());
        let out_of_time = started.elapsed().saturating_add(delay) > self.deadline;
        if attempt >= self.max_attempts || out_of_time {
            return Err(Error::RetriesExhausted {
                operation: label,
                reference: reference.to_string(),
                attempts: attempt,
                last: Box::new(err),
            });
        }
        Ok(delay)
    }
}

impl Client {
    /// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails with
    /// an error that is not retryable, or the operation's budget is spent.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        op: Operation,
        what: &str,
        attempt: F,
    ) -> Result<T>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut n: u32 = 0;
        loop {
            n += 1;
            match attempt(n).await {
                Ok(t) => return Ok(t),
                Err(err) => {
                    let delay = self.inner.retry.next(op.label(), what, n, started, err)?;
                    tracing::warn!(
                        operation = op.label(),
                        reference = what,
                        attempt = n,
                        delay_ms = delay.as_millis() as u64,
                        "retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sleeps before the next attempt of a caller's own loop (the copy of one blob), or
    /// returns the error when attempts or the deadline are used up. The same budget
    /// rules as [`Client::retrying`].
    pub(crate) async fn backoff(
        &self,
        operation: &'static str,
        reference: &str,
        attempt: u32,
        started: Instant,
        err: Error,
    ) -> Result<()> {
        let shown = err.to_string();
        let delay = self
            .inner
            .retry
            .next(operation, reference, attempt, started, err)?;
        tracing::warn!(operation, reference, attempt, delay_ms = delay.as_millis() as u64, error = %shown, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One attempt of a request: sent with the auth header for `scopes` (own origin
    /// only); a 401 with a challenge, the first time in this operation (`reauthed`),
    /// is answered and the request sent again. Error statuses become errors.
    pub(super) async fn attempt(
        &self,
        op: Operation,
        what: &str,
        scopes: &[Scope],
        reauthed: &AtomicBool,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response> {
        loop {
            let resp = self.send_authorized(op, what, scopes, build).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !reauthed.swap(true, Ordering::SeqCst) {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if let Some(c) = challenge {
                    self.learn_challenge(c).await;
                    continue;
                }
            }
            if op.takes_redirects() && resp.status().is_redirection() {
                return Ok(resp);
            }
            return responses::success(op, what, resp).await;
        }
    }

    /// A request retried as one operation; returns the successful answer.
    pub(super) async fn request(
        &self,
        op: Operation,
        what: &str,
        scopes: &[Scope],
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response> {
        let reauthed = AtomicBool::new(false);
        self.retrying(op, what, |_| {
            self.attempt(op, what, scopes, &reauthed, build)
        })
        .await
    }

    /// A request and the read of its body (at most `cap` bytes), retried together.
    pub(crate) async fn request_body(
        &self,
        op: Operation,
        what: &str,
        scopes: &[Scope],
        cap: u64,
        kind: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Answer> {
        let reauthed = AtomicBool::new(false);
        self.retrying(op, what, |_| async {
            let resp = self.attempt(op, what, scopes, &reauthed, build).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = self.read_capped(op, what, resp, cap, kind).await?;
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
        .await
    }
}

/// A successful answer read whole.
pub(crate) struct Answer {
    /// The HTTP status the registry sent.
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: bytes::Bytes,
}

impl Client {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let d1 = p.delay(1, None);
        let d4 = p.delay(4, None);
        assert!(
            d1 <= p.base_delay && d4 >= p.base_delay * 4,
            "{d1:?} {d4:?}"
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(p.delay(30, None) <= p.max_delay);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(u64::MAX))),
            p.max_retry_after
        );
    }

    fn transient() -> Error {
        Error::Stalled {
            operation: "GET manifest",
            reference: "r".into(),
            after: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_budget_holds_and_exhaustion_is_final() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let t = Instant::now();
        assert!(p.next("x", "r", 1, t, transient()).is_ok());
        assert!(p.next("x", "r", 2, t, transient()).is_ok());
        let given_up = p.next("x", "r", 3, t, transient()).unwrap_err();
        assert!(matches!(
            given_up,
            Error::RetriesExhausted { attempts: 3, .. }
        ));
        // An enclosing operation does not retry an exhausted one.
        assert!(!given_up.is_retryable());
        let late = Instant::now().checked_sub(p.deadline).unwrap_or(t);
        if late != t {
            assert!(p.next("x", "r", 1, late, transient()).is_err());
        }
    }
}
