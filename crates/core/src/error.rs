//! How an error should be handled: the one classification that drives retries.

use serde::{Deserialize, Serialize};

/// Classification of a failure, decided where the failure arises (model client, database,
/// extractor) so that the job layer retries by class, never by matching strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Worth retrying with backoff: 429, 5xx, timeouts, lost connections.
    Transient,
    /// Retrying cannot help: bad input, 4xx, unsupported format, over a limit.
    Permanent,
    /// The input is longer than the model accepts; the caller must shorten it.
    ContextTooLong,
}

impl ErrorKind {
    /// Whether a job failing with this kind should be retried.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}
