//! Job payloads and enqueueing. Jobs are written with the rows they are about, in the same
//! transaction (an upload and its ingest job commit together or not at all); workers consume
//! them through apalis' PostgreSQL storage (`workers/*`).

use crate::{StoreError, UserTx};
use apalis::prelude::TaskBuilder;
use ragpipe_core::{DocumentId, UserId};
use serde::{Deserialize, Serialize};

/// Queue of ingest jobs (apalis names queues after the Rust type unless told; this is the name).
pub const INGEST_QUEUE: &str = "ragpipe.ingest";
/// Queue of agent (question answering) jobs.
pub const AGENT_QUEUE: &str = "ragpipe.agent";

/// Ingest one document: extract, chunk, embed, store. Everything else is read from its row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestJob {
    /// Owner, to act as.
    pub user_id: UserId,
    /// The document.
    pub document_id: DocumentId,
    /// The reprocessing run this job belongs to (its target is on the document's `reprocess`
    /// column); `None` for an upload's first ingest. A job whose run is no longer the
    /// document's pending one does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocess: Option<String>,
}

impl IngestJob {
    /// The first ingest of an uploaded document.
    pub fn upload(user_id: UserId, document_id: DocumentId) -> IngestJob {
        IngestJob {
            user_id,
            document_id,
            reprocess: None,
        }
    }
}

/// Adds jobs to `queue` inside the caller's transaction.
pub async fn enqueue<T: Serialize>(
    tx: &mut UserTx,
    queue: &str,
    jobs: &[T],
    max_attempts: u32,
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut tasks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let args = serde_json::to_vec(job).map_err(|e| StoreError::Conflict(format!("encoding a job: {e}")))?;
        tasks.push(
            TaskBuilder::new(args)
                .max_attempts(max_attempts.max(1) as usize)
                .build(),
        );
    }
    apalis_postgres::queries::push_tasks(tx.conn(), queue, tasks)
        .await
        .map_err(|e| match e {
            apalis_postgres::Error::Database(source) => StoreError::Database {
                context: "enqueueing jobs",
                source,
            },
            other => StoreError::Conflict(format!("enqueueing jobs: {other}")),
        })
}

/// A worker name unique to this process and start: apalis uses the name as the worker's id, so
/// a restarted process must never reuse its predecessor's (it would keep the dead worker's jobs
/// alive instead of letting them be re-queued).
pub fn worker_name(kind: &str) -> String {
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
