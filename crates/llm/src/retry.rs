//! When to retry a failed model call and how long to wait: exponential backoff with jitter,
//! never shorter than the server's `Retry-After`.

use crate::LlmError;
use ragpipe_core::config::ModelEndpoint;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retry settings for one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`max_retries` in the endpoint's settings).
    pub max_retries: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Longest backoff between two attempts.
    pub max_delay: Duration,
    /// Longest `Retry-After` waited for in place. A server asking for more is not waited on:
    /// the error goes to the caller (still transient, with its `retry_after`) so a job can be
    /// rescheduled instead of holding a worker.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The policy for an endpoint: its `max_retries`, 250 ms doubling up to 20 s, and at most
    /// 60 s of `Retry-After` waited in place.
    pub fn for_endpoint(endpoint: &ModelEndpoint) -> RetryPolicy {
        RetryPolicy {
            max_retries: endpoint.max_retries,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The wait before retry number `retry` (0 for the first retry) after `error`, or `None`
    /// when the call should fail: the error is not transient, the retries are used up, or the
    /// server asked for a longer wait than [`RetryPolicy::max_retry_after`].
    pub fn delay(&self, retry: u32, error: &LlmError) -> Option<Duration> {
        if !error.kind().is_retryable() || retry >= self.max_retries {
            return None;
        }
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_delay);
        // "Equal jitter": half fixed, half random, so retries spread out but never bunch at 0.
        let half = exp / 2;
        let jittered = half + half.mul_f64(rand::rng().random_range(0.0..=1.0));
        match error.retry_after() {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// Requests, retries and 429s of one embedder or chat model since it was built, failed calls
/// included (the per-call counts in [`crate::Embedded`] and [`crate::ChatStream`] only exist
/// when the call succeeds). Monotonic, for Prometheus counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallTotals {
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Requests that retried a failed one.
    pub retries: u64,
    /// Responses that were HTTP 429.
    pub rate_limited: u64,
}

/// The shared, lock-free counters behind [`CallTotals`].
#[derive(Debug, Default)]
pub(crate) struct CallCounters {
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
}

impl CallCounters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn totals(&self) -> CallTotals {
        CallTotals {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_core::ErrorKind;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(10),
        }
    }

    fn status(status: u16, retry_after: Option<Duration>, kind: ErrorKind) -> LlmError {
        LlmError::Status {
            context: "test".into(),
            status,
            message: String::new(),
            retry_after,
            kind,
        }
    }

    #[test]
    fn backs_off_exponentially_within_bounds() {
        let p = policy();
        let e = status(500, None, ErrorKind::Transient);
        for retry in 0..3 {
            let exp = Duration::from_millis(100 * (1 << retry));
            let d = p.delay(retry, &e).expect("retryable");
            assert!(d >= exp / 2 && d <= exp, "retry {retry}: {d:?}");
        }
        assert_eq!(p.delay(3, &e), None, "retries used up");
    }

    #[test]
    fn honours_retry_after_and_gives_up_on_permanent() {
        let p = policy();
        let e = status(429, Some(Duration::from_secs(2)), ErrorKind::Transient);
        assert!(p.delay(0, &e).expect("retryable") >= Duration::from_secs(2));
        let long = status(429, Some(Duration::from_secs(3600)), ErrorKind::Transient);
        assert_eq!(p.delay(0, &long), None);
        assert_eq!(p.delay(0, &status(400, None, ErrorKind::Permanent)), None);
    }
}
