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

/// Why a process part (the API's state, a worker's context) could not be built from the
/// configuration: which piece, and the cause, kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SetupError {
    /// The piece that could not be built ("embedding model", "RAGPIPE_PRICES", ...).
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SetupError {
    /// For `map_err`: wraps a cause of building `what`.
    pub fn of<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: &'static str) -> impl FnOnce(E) -> SetupError {
        move |e| SetupError { what, source: e.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_error_names_the_piece_and_keeps_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = SetupError::of("prompt templates")(cause);
        assert_eq!(e.to_string(), "prompt templates: no such file");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
    }
}
