//! The error of an ingest step, classified: whether retrying can help, and what the owner
//! reads.

use ragpipe_core::ErrorKind;
use ragpipe_store::StoreError;

/// A failed ingest step, classified.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// Whether retrying can help.
    pub kind: ErrorKind,
    /// What went wrong, readable by the document's owner.
    pub message: String,
}

impl JobError {
    pub(crate) fn permanent(message: impl Into<String>) -> JobError {
        JobError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> JobError {
        JobError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}
