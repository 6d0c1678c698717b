//! The ingest queue's worker: [`IngestQueue`] is what the shared skeleton (`ragpipe-worker`)
//! runs for each `ragpipe.ingest` job; [`run`], [`spawn`] and [`spawn_supervised`] start it.

use crate::pipeline::record_failure;
use crate::{IngestContext, JobError, Outcome, ingest_document};
use apalis::prelude::BoxDynError;
use ragpipe_core::{Config, ErrorKind};
use ragpipe_store::jobs::{INGEST_QUEUE, IngestJob};
use ragpipe_store::liveness::{Failure, Liveness};
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::{Store, embedding_models};
pub use ragpipe_worker::WorkerError;
use ragpipe_worker::{JobAttempt, JobQueue};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

/// The `ragpipe.ingest` queue: each job runs [`ingest_document`]; a document that fails for good
/// is marked `failed` with the reason.
#[derive(Debug)]
pub enum IngestQueue {}

impl JobQueue for IngestQueue {
    type Context = IngestContext;
    type Job = IngestJob;
    type Outcome = Outcome;
    type Error = JobError;

    const NAME: &'static str = "ingest";
    const QUEUE: &'static str = INGEST_QUEUE;
    const RETRIES_TOTAL: &'static str = "ragpipe_ingest_retries_total";

    fn store(ctx: &IngestContext) -> &Store {
        ctx.store()
    }

    fn config(ctx: &IngestContext) -> &Config {
        &ctx.config
    }

    fn span(job: &IngestJob, job_id: &str, attempt: usize) -> tracing::Span {
        info_span!("ingest", document_id = %job.document_id, user_id = %job.user_id, job_id = %job_id, attempt = attempt)
    }

    /// Chunks reference their model, and a model keeps its dimension: both are checked before
    /// the worker takes jobs.
    async fn prepare(ctx: &IngestContext) -> Result<(), Failure> {
        let configured = ctx.embedders.configured();
        embedding_models::ensure(
            &ctx.store,
            configured.model(),
            configured.dim() as u32,
            ctx.config.embedding.base_url.as_deref(),
        )
        .await
        .map_err(|e| Failure {
            kind: e.kind(),
            message: format!("embedding model {}: {e}", configured.model()),
        })?;
        Ok(())
    }

    /// The job's id keys its usage events across attempts.
    async fn perform(ctx: &IngestContext, job: &IngestJob, job_id: &str, _: JobAttempt) -> Result<Outcome, JobError> {
        ingest_document(ctx, job, job_id).await
    }

    fn kind(error: &JobError) -> ErrorKind {
        error.kind
    }

    fn finished(outcome: &Outcome, _: Duration) {
        let label = match outcome {
            Outcome::Ready { .. } => "ready",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped => "skipped",
        };
        metrics::counter!("ragpipe_ingest_documents_total", "outcome" => label).increment(1);
        info!(?outcome, "ingest finished");
    }

    /// Marks the document failed (or, for a ready document's reprocessing, the run) with the
    /// reason, riding out a dropped connection; if the database stays away, the job fails with
    /// that cause and the document is not silently left half-done.
    async fn give_up(
        ctx: &IngestContext,
        job: &IngestJob,
        error: JobError,
        attempt: JobAttempt,
    ) -> Result<(), BoxDynError> {
        let reason = if error.kind.is_retryable() {
            format!("gave up after {} attempts: {}", attempt.previous + 1, error.message)
        } else {
            error.message
        };
        warn!(error = %reason, "ingest failed permanently");
        metrics::counter!("ragpipe_ingest_documents_total", "outcome" => "failed").increment(1);
        let recorded = retry("recording a failed document", RetryPolicy::POLLING, || {
            record_failure(ctx, job, &reason)
        })
        .await;
        recorded.map_err(|record| {
            tracing::error!(error = %record, reason = %reason, "the document's failure could not be recorded");
            Box::new(record) as BoxDynError
        })
    }
}

/// Runs an ingest worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// ones in flight and returns. Unsupervised: it returns the first failure of its queue
/// connection ([`spawn`] restarts it).
pub async fn run(
    ctx: Arc<IngestContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    ragpipe_worker::run::<IngestQueue>(ctx, shutdown).await
}

/// Starts a supervised ingest worker on the current runtime: restarted with backoff whenever
/// its queue connection fails, stopped when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
    spawn_supervised(store, config, shutdown, &Liveness::new())
}

/// [`spawn`], reporting into `liveness` as the component `ingest`.
pub fn spawn_supervised(
    store: Store,
    config: Arc<Config>,
    shutdown: CancellationToken,
    liveness: &Liveness,
) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
    let settings = Arc::clone(&config);
    ragpipe_worker::spawn_supervised::<IngestQueue, _, _>(&config, shutdown, liveness, || async move {
        IngestContext::new(store, settings)
    })
}
