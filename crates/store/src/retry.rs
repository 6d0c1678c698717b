//! Retrying database work that failed for a transient reason (see [`crate::sqlx_error_kind`]):
//! a dropped or reset connection, the server terminating a backend, a serialization failure or
//! a deadlock. Long commands (`ragpipe ingest`, `ask`, `reprocess`, `demo`) poll through
//! [`retry`], so one dropped connection costs a pause instead of the whole command; the
//! workers' supervisor and the message feed back off with the same [`Backoff`].
//!
//! Only work that is safe to run twice may be retried: reads, and writes that are idempotent
//! (an upload of identical bytes returns the document already created).

use crate::StoreError;
use ragpipe_core::ErrorKind;
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// Capped exponential backoff with jitter: the n-th delay is drawn from `[c/2, c]` where
/// `c = min(cap, base · 2ⁿ)`. The jitter keeps many processes that lost the database at the same
/// moment from coming back in lockstep; the floor keeps the delay from collapsing to zero.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays from about `base` (first) doubling up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, failures: 0 }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.cap)
            .max(Duration::from_millis(1));
        self.failures = self.failures.saturating_add(1);
        let ceiling_ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(rand::random_range(ceiling_ms.div_ceil(2)..=ceiling_ms))
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How long and how fast to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// Give up (returning the last error) once the failures have lasted this long.
    pub give_up_after: Duration,
}

impl RetryPolicy {
    /// For commands polling the database: 0.2 s doubling to 5 s, for up to two minutes (a
    /// database restart or failover fits; a database gone for good is reported).
    pub const POLLING: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(5),
        give_up_after: Duration::from_secs(120),
    };

    /// A fresh backoff with this policy's delays.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.base, self.cap)
    }
}

/// Whether retrying `error` in this process can help: it is transient, and the pool is still
/// open (a closed pool means this process is shutting down).
pub fn worth_retrying(error: &StoreError) -> bool {
    let closed = matches!(
        error,
        StoreError::Database {
            source: sqlx::Error::PoolClosed,
            ..
        } | StoreError::Connect {
            source: sqlx::Error::PoolClosed,
            ..
        }
    );
    error.kind() == ErrorKind::Transient && !closed
}

/// Runs `op` until it succeeds, fails permanently, or has failed transiently for longer than
/// `policy.give_up_after`; `what` names the work in the warnings logged before each retry.
pub async fn retry<T, Fut>(what: &str, policy: RetryPolicy, op: impl FnMut() -> Fut) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_when(what, policy, worth_retrying, op).await
}

/// [`retry`] for errors of another type: `retryable` says which are worth another attempt.
pub async fn retry_when<T, E: Display, Fut>(
    what: &str,
    policy: RetryPolicy,
    retryable: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff = policy.backoff();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if retryable(&e) && started.elapsed() < policy.give_up_after => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    what,
                    attempt = backoff.failures(),
                    retry_in_ms = wait.as_millis() as u64,
                    "transient database error; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds = [(50, 100), (100, 200), (200, 400), (400, 800), (500, 1000), (500, 1000)];
        for (low, high) in bounds {
            let d = b.next_delay().as_millis() as u64;
            assert!((low..=high).contains(&d), "{d} ms not in {low}..={high}");
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_permanent_ones_are_not() {
        let policy = RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            give_up_after: Duration::from_secs(5),
        };
        let lost = || StoreError::Database {
            context: "reading",
            source: sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
        };
        let mut calls = 0;
        let value = retry("test", policy, || {
            calls += 1;
            let result = if calls < 3 { Err(lost()) } else { Ok(calls) };
            async move { result }
        })
        .await
        .expect("succeeds on the third call");
        assert_eq!(value, 3);

        let mut calls = 0;
        let err = retry("test", policy, || {
            calls += 1;
            async { Err::<(), _>(StoreError::NotFound("document")) }
        })
        .await
        .expect_err("permanent");
        assert!(matches!(err, StoreError::NotFound(_)));
        assert_eq!(calls, 1);

        let mut calls = 0;
        retry("test", policy, || {
            calls += 1;
            async {
                Err::<(), _>(StoreError::Database {
                    context: "reading",
                    source: sqlx::Error::PoolClosed,
                })
            }
        })
        .await
        .expect_err("closed pool");
        assert_eq!(calls, 1, "a closed pool is not retried in this process");
    }
}
