//! Service-wide aggregates for monitoring: job queue depth and age, documents by status.
//!
//! These are the only reads that span users, and they return counts, never rows. They run as
//! the application role with no acting user, like every other query: the job tables are not
//! user data (ragpipe_app may read them), and documents are counted through the
//! `ragpipe_document_status_counts()` function (migration `..._metrics.sql`), which sees every
//! row's status and returns only counts.

use crate::operator::Reason;
use crate::{Store, StoreError};

/// Jobs waiting in one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// Queue name (`jobs::INGEST_QUEUE`, ...).
    pub queue: String,
    /// Jobs waiting to run: new ones and failed ones with attempts left (those may be waiting
    /// out a backoff). Jobs a worker has taken are not counted.
    pub waiting: i64,
    /// Seconds since the oldest waiting job became due; 0 when none is due.
    pub oldest_waiting_seconds: f64,
}

/// Documents in one status, across all users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    /// The status (`queued`, ..., `ready`, `failed`).
    pub status: String,
    /// How many documents are in it.
    pub documents: i64,
}

/// One reading of every monitoring aggregate, taken in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Queues with waiting jobs (a queue with none is absent).
    pub queues: Vec<QueueStats>,
    /// Statuses with documents (a status with none is absent).
    pub documents: Vec<StatusCount>,
}

/// Reads the queue and document aggregates.
pub async fn snapshot(store: &Store) -> Result<Snapshot, StoreError> {
    let mut tx = store.operator_tx(Reason::Monitoring).await?;
    // The filter is the predicate of apalis' partial fetch index, so this reads that index
    // (waiting jobs only), not every job ever run.
    let queues = sqlx::query_as!(
        QueueStats,
        r#"SELECT job_type AS queue, count(*) AS "waiting!",
                coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)::float8
                    AS "oldest_waiting_seconds!"
         FROM apalis.jobs
         WHERE status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)
         GROUP BY job_type ORDER BY job_type"#,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading job queue depth"))?;
    let documents = sqlx::query_as!(
        StatusCount,
        r#"SELECT status AS "status!", documents AS "documents!" FROM ragpipe_document_status_counts() ORDER BY status"#,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("counting documents by status"))?;
    tx.commit().await?;
    Ok(Snapshot { queues, documents })
}
