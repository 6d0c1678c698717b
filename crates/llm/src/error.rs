//! The one error type of model calls, classified where the failure arises so that callers
//! (the embedding retry loop here, the job layer above) retry by class, never by message.

use ragpipe_core::ErrorKind;
use std::time::Duration;

/// A failed model call or an unusable model setting.
///
/// Every variant knows its [`ErrorKind`]: HTTP statuses are classified when the response
/// arrives (429, 408, 5xx transient; other 4xx permanent; "context length exceeded" and 413
/// context-too-long), timeouts, lost connections and bodies cut short are transient, malformed
/// responses and wrong dimensions are permanent.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The server answered with a non-success status.
    #[error("{context}: HTTP {status}: {message}")]
    Status {
        /// What was being done, e.g. `embedding 64 inputs with text-embedding-3-small at http://…`.
        context: String,
        /// The HTTP status code.
        status: u16,
        /// The server's error message (from its JSON error object when it sent one).
        message: String,
        /// How long the server asked us to wait (`retry-after-ms` or `Retry-After`).
        retry_after: Option<Duration>,
        /// The classification decided from the status and the error code.
        kind: ErrorKind,
    },
    /// No response (or, while streaming, no event) within the configured time.
    #[error("{context}: no response within {}s", after.as_secs_f64())]
    Timeout {
        /// What was being done.
        context: String,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The connection could not be made or was lost (including a body cut mid-stream).
    #[error("{context}: connection failed: {message}")]
    Connection {
        /// What was being done.
        context: String,
        /// The transport's description.
        message: String,
    },
    /// The body ended in the middle of a JSON document: the connection closed early on a
    /// response that had no length to check it against (no `Content-Length`, not chunked, so
    /// the transport saw a clean end). A lost connection, not a malformed answer.
    #[error("{context}: the response ended early, after {received_bytes} bytes: {source}")]
    Truncated {
        /// What was being done.
        context: String,
        /// Bytes of the body (or of the event) that arrived.
        received_bytes: usize,
        /// The parser's end-of-input error.
        source: serde_json::Error,
    },
    /// A chat stream ended without a finish reason (llama.cpp's server cuts in-flight
    /// streams this way when a new request arrives); the partial answer is not complete.
    #[error("{context}: the stream ended after {deltas} deltas without a finish reason")]
    StreamIncomplete {
        /// What was being done.
        context: String,
        /// Content deltas received before the end.
        deltas: usize,
    },
    /// The server sent an error object inside an otherwise successful stream.
    #[error("{context}: the server reported an error mid-stream: {message}")]
    StreamError {
        /// What was being done.
        context: String,
        /// The server's message.
        message: String,
        /// The classification decided from the error code.
        kind: ErrorKind,
    },
    /// The response could not be understood (not the OpenAI wire format, wrong item count,
    /// non-finite numbers).
    #[error("{context}: unreadable response: {message}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong with it.
        message: String,
    },
    /// The embedding model returned vectors of another dimension than configured.
    #[error(
        "embedding model {model} returned {got}-dimensional vectors but embedding.dim is {expected}; \
         set RAGPIPE_EMBEDDING_DIM to {got} (and re-embed) or use a model with {expected} dimensions"
    )]
    DimensionMismatch {
        /// The model name.
        model: String,
        /// The configured dimension (`embedding.dim`).
        expected: usize,
        /// The dimension the model returned.
        got: usize,
    },
    /// A setting cannot be used (bad URL or key, unknown tokenizer, malformed price table).
    #[error("{setting}: {message}")]
    InvalidConfig {
        /// The setting, as named in `ragpipe.toml`.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The local embedding model could not be loaded or run.
    #[error("{context}: {source}")]
    LocalModel {
        /// What was being done, with the file or the batch.
        context: String,
        /// The underlying failure (file system, tokenizer, encoder).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An input is longer than the model reads (the local model refuses rather than cut it).
    #[error("{context}: {tokens} tokens, but the model reads at most {max_tokens}")]
    InputTooLong {
        /// What was being done.
        context: String,
        /// Tokens of the input, by the model's tokenizer.
        tokens: usize,
        /// The model's limit.
        max_tokens: usize,
    },
    /// Offloaded CPU work (tokenising, hashing) did not complete.
    #[error("{context}: background task failed: {message}")]
    Task {
        /// What was being done.
        context: String,
        /// Why (the task panicked or was cancelled).
        message: String,
    },
}

impl LlmError {
    /// How this failure should be handled: retried, given up, or the input shortened.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LlmError::Status { kind, .. } | LlmError::StreamError { kind, .. } => *kind,
            LlmError::Timeout { .. }
            | LlmError::Connection { .. }
            | LlmError::Truncated { .. }
            | LlmError::StreamIncomplete { .. } => ErrorKind::Transient,
            LlmError::Protocol { .. }
            | LlmError::DimensionMismatch { .. }
            | LlmError::InvalidConfig { .. }
            | LlmError::LocalModel { .. }
            | LlmError::Task { .. } => ErrorKind::Permanent,
            LlmError::InputTooLong { .. } => ErrorKind::ContextTooLong,
        }
    }

    /// How long the server asked the caller to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server refused the request for rate limiting (HTTP 429).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, LlmError::Status { status: 429, .. })
    }
}

/// Classifies an HTTP error status with the server's error code, type and message.
///
/// `insufficient_quota` (OpenAI's "out of credit" 429) is permanent: waiting does not help.
/// Context-length errors are recognised by the codes and messages of OpenAI, vLLM, llama.cpp
/// and Ollama, which all answer 400 for them.
pub(crate) fn classify_status(status: u16, code: Option<&str>, error_type: Option<&str>, message: &str) -> ErrorKind {
    let is = |needle: &str| code == Some(needle) || error_type == Some(needle);
    if is("insufficient_quota") {
        return ErrorKind::Permanent;
    }
    // Only client errors can mean "too long": a 429 about tokens per minute is a rate limit.
    let client_error = (400..500).contains(&status) && status != 429;
    if status == 413
        || (client_error
            && (is("context_length_exceeded") || is("exceed_context_size_error") || mentions_context_length(message)))
    {
        return ErrorKind::ContextTooLong;
    }
    match status {
        408 | 409 | 425 | 429 => ErrorKind::Transient,
        s if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

fn mentions_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "maximum context length",
        "context length exceeded",
        "exceeds the available context size",
        "context window",
        "too many tokens",
        "input is too long",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(
            classify_status(429, None, Some("rate_limit_error"), "slow down"),
            ErrorKind::Transient
        );
        assert_eq!(
            classify_status(429, Some("insufficient_quota"), None, "pay up"),
            ErrorKind::Permanent
        );
        assert_eq!(classify_status(503, None, None, "overloaded"), ErrorKind::Transient);
        assert_eq!(classify_status(401, None, None, "bad key"), ErrorKind::Permanent);
        assert_eq!(
            classify_status(400, Some("context_length_exceeded"), None, ""),
            ErrorKind::ContextTooLong
        );
        assert_eq!(
            classify_status(400, None, None, "This model's maximum context length is 8192 tokens"),
            ErrorKind::ContextTooLong
        );
        assert_eq!(classify_status(413, None, None, ""), ErrorKind::ContextTooLong);
    }

    #[test]
    fn errors_report_their_kind_and_wait() {
        let e = LlmError::Status {
            context: "embedding 3 inputs".into(),
            status: 429,
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(2)),
            kind: ErrorKind::Transient,
        };
        assert!(e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.kind(), ErrorKind::Transient);
        let d = LlmError::DimensionMismatch {
            model: "m".into(),
            expected: 384,
            got: 768,
        };
        assert_eq!(d.kind(), ErrorKind::Permanent);
        assert!(d.to_string().contains("384") && d.to_string().contains("768"), "{d}");
    }
}
