//! Job payloads and enqueueing. Jobs are written with the rows they are about, in the same
//! transaction (an upload and its ingest job commit together or not at all); workers consume
//! them through apalis' PostgreSQL storage (`workers/*`).

use crate::operator::Reason;
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
        let args = serde_json::to_vec(job).map_err(|e| StoreError::Codec {
            context: "encoding a job",
            source: Box::new(e),
        })?;
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
            other => StoreError::Codec {
                context: "enqueueing jobs",
                source: Box::new(other),
            },
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

/// Deletes the `apalis.workers` rows of `queue` whose worker has not beaten its heartbeat for
/// `silent_for` and holds no job, and returns how many went. Every restart leaves its
/// predecessor's row behind (names are unique per start), and nothing else removes them.
///
/// What makes it safe: a row holding a `Running` or `Queued` job is kept, because the job
/// queue re-queues such a job only through its worker's row (`reenqueue_orphaned` joins on
/// it); it clears the job's `lock_by` when it does, and a later call removes the row. Finished
/// and failed jobs keep `lock_by` (a foreign key to the row) only as a record: it is cleared
/// for the deleted workers (a failed job is retried whatever its `lock_by` says). The rows are
/// locked first, so a worker that is in fact alive and registers a job meanwhile keeps its row;
/// a live worker whose row went (it stalled for `silent_for`) fails its next heartbeat and is
/// restarted under a new name by its supervisor.
pub async fn remove_dead_workers(
    store: &crate::Store,
    queue: &str,
    silent_for: std::time::Duration,
) -> Result<u64, StoreError> {
    let silent_for_us = i64::try_from(silent_for.as_micros()).unwrap_or(i64::MAX);
    let mut tx = store.operator_tx(Reason::Queue).await?;
    let dead: Vec<String> = sqlx::query_scalar!(
        "SELECT w.id FROM apalis.workers w \
         WHERE w.worker_type = $1 \
           AND w.last_seen < now() - make_interval(secs => $2::float8 / 1e6) \
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j \
                           WHERE j.lock_by = w.id AND j.status IN ('Running', 'Queued')) \
         ORDER BY w.id \
         FOR UPDATE OF w SKIP LOCKED",
        queue,
        silent_for_us as f64,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("finding dead workers"))?;
    if dead.is_empty() {
        return Ok(0);
    }
    // Re-checked under the rows' locks: a job locked by one of them since the select (which a
    // dead worker cannot do, but a stalled one could) keeps it.
    sqlx::query!(
        "UPDATE apalis.jobs SET lock_by = NULL \
         WHERE lock_by = ANY($1) AND status NOT IN ('Running', 'Queued')",
        &dead,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("releasing dead workers' finished jobs"))?;
    let removed = sqlx::query!(
        "DELETE FROM apalis.workers w WHERE w.id = ANY($1) \
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
        &dead,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("removing dead workers"))?
    .rows_affected();
    tx.commit().await?;
    Ok(removed)
}

/// Beats worker `worker`'s heartbeat on `queue` (its row's `last_seen`), as the queue itself
/// does while the worker takes jobs, and says whether the row is still there. The queue stops
/// beating once the worker begins to shut down, while the worker still finishes the jobs it
/// runs; without this, another worker would take such a job over after three missed beats and
/// run it a second time (a second model call paid for), and the first run's end would not be
/// recorded.
pub async fn keep_alive(store: &crate::Store, queue: &str, worker: &str) -> Result<bool, StoreError> {
    let mut tx = store.operator_tx(Reason::Queue).await?;
    let beaten = sqlx::query!(
        "UPDATE apalis.workers SET last_seen = now() WHERE id = $1 AND worker_type = $2",
        worker,
        queue,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("beating a worker's heartbeat"))?
    .rows_affected();
    tx.commit().await?;
    Ok(beaten > 0)
}

/// How long a job that failed for a transient reason waits before its next attempt: exponential
/// in the attempts made so far (0 for the first), with full jitter in `[c/2, c]`, from 0.5 s up
/// to a minute. The one backoff of both job queues.
pub fn retry_delay(attempt: usize) -> std::time::Duration {
    let ceiling_ms = 500u64.saturating_mul(1 << attempt.min(7)).min(60_000);
    std::time::Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

/// Schedules the next attempt of job `task_id` of `queue`, which is failing now, `delay` from
/// now: the queue takes a failed job again only once its `run_at` has passed. A worker calls
/// this before it hands the failure back, instead of sleeping in the job and holding its slot;
/// the queue's own bookkeeping of the failure (status, attempts) leaves `run_at` as set here.
///
/// When the delay is over, the workers of `queue` are woken the way a new job wakes them (the
/// queue's `NOTIFY`), so the retry starts on time; if this process is gone by then, the
/// workers' periodic fetch (every heartbeat) finds the job.
pub async fn delay_retry(
    store: &crate::Store,
    queue: &str,
    task_id: &str,
    delay: std::time::Duration,
) -> Result<(), StoreError> {
    let delay_us = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
    let mut tx = store.operator_tx(Reason::Queue).await?;
    sqlx::query!(
        "UPDATE apalis.jobs SET run_at = now() + make_interval(secs => $2::float8 / 1e6) WHERE id = $1",
        task_id,
        delay_us as f64,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("scheduling a job's retry"))?;
    tx.commit().await?;
    let store = store.clone();
    let (queue, task_id) = (queue.to_owned(), task_id.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let woken = store.notify_queue(&queue, &task_id).await;
        if let Err(e) = woken {
            // Harmless: the workers' next fetch finds the job.
            tracing::debug!(error = %e, job = %task_id, "could not wake the workers for a retry");
        }
    });
    Ok(())
}

impl crate::Store {
    /// Wakes the workers of `queue` the way a new job `task_id` does (apalis' `NOTIFY`).
    async fn notify_queue(&self, queue: &str, task_id: &str) -> Result<(), StoreError> {
        let mut tx = self.operator_tx(Reason::Queue).await?;
        sqlx::query!(
            "SELECT pg_notify('apalis::job::insert', \
                    json_build_object('job_type', $1::text, 'id', $2::text, 'run_at', now())::text)",
            queue,
            task_id,
        )
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("waking a queue's workers"))?;
        tx.commit().await
    }

    /// The job queue's storage for jobs `J`, for a worker to consume (the queue's own SQL runs
    /// on the store's pool).
    pub fn job_storage<J>(&self) -> apalis_postgres::PostgresStorage<J> {
        apalis_postgres::PostgresStorage::new(&self.pool)
    }
}
