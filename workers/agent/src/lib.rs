//! The agent job: answer one question (retrieve → prompt → stream into the assistant message),
//! on the apalis PostgreSQL queue `ragpipe.agent`.
//!
//! The work itself is [`ragpipe_agent::answer`]; this crate wires it to the queue. Delivery is
//! at least once and the handler is idempotent (see that module). Errors decide what happens
//! next: a transient one before any text was written (model 429/5xx/timeouts after the chat
//! client's own retries, a lost database connection) goes back to the queue with exponential
//! backoff and jitter; a permanent one, or the last attempt, ends the answer `failed` with the
//! reason, so nothing stays `streaming` forever.

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use ragpipe_agent::AnswerContext;
use ragpipe_agent::answer::answer;
use ragpipe_core::Config;
use ragpipe_store::Store;
use ragpipe_store::conversations::AgentJob;
use ragpipe_store::jobs::AGENT_QUEUE;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, info, info_span, warn};

/// Answers in flight per unit of `worker.concurrency`: an answer waits on the model, not on the
/// CPU, and holds a database connection only for the instant of each flush.
pub const ANSWERS_PER_WORKER_SLOT: usize = 32;

/// Backoff before a transient failure is handed back to the queue: exponential in the attempt,
/// with full jitter, capped at a minute.
fn backoff(attempt: usize) -> Duration {
    let ceiling_ms = 500u64.saturating_mul(1 << attempt.min(7)).min(60_000);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

async fn handle(
    job: AgentJob,
    ctx: Data<Arc<AnswerContext>>,
    attempt: Attempt,
    task_id: TaskId,
) -> Result<(), BoxDynError> {
    let span = info_span!("answer", request_id = %job.request_id, user_id = %job.user_id, job_id = %task_id, attempt = attempt.current());
    async move {
        let max_attempts = ctx.config().worker.max_attempts.max(1) as usize;
        let last_attempt = attempt.current() + 1 >= max_attempts;
        let started = Instant::now();
        match answer(&ctx, job, last_attempt).await {
            Ok(outcome) => {
                metrics::counter!("ragpipe_agent_answers_total", "outcome" => outcome.label()).increment(1);
                metrics::histogram!("ragpipe_agent_answer_seconds").record(started.elapsed().as_secs_f64());
                info!(?outcome, "answer finished");
                Ok(())
            }
            Err(e) if e.kind.is_retryable() && !last_attempt => {
                metrics::counter!("ragpipe_agent_retries_total").increment(1);
                let wait = backoff(attempt.current());
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "answer failed; will retry");
                tokio::time::sleep(wait).await;
                Err(Box::new(e) as BoxDynError)
            }
            // Recording the failure itself failed (the database is away): the queue retries, and
            // the next attempt ends the answer.
            Err(e) => {
                warn!(error = %e, "answer failed and could not be marked failed");
                Err(Box::new(e) as BoxDynError)
            }
        }
    }
    .instrument(span)
    .await
}

/// The queue configuration agent workers consume with.
pub fn queue_config(config: &Config) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(AGENT_QUEUE)
        .heartbeat_interval(Duration::from_secs(config.worker.heartbeat_secs.max(1)))
        .missed_heartbeats(3)
        .batch_size(concurrency(config))
}

/// Answers this process works on at once.
pub fn concurrency(config: &Config) -> usize {
    (config.worker.concurrency.max(1) as usize).saturating_mul(ANSWERS_PER_WORKER_SLOT)
}

/// Runs an agent worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// answers in flight and returns.
pub async fn run(ctx: Arc<AnswerContext>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let config = Arc::clone(ctx.config());
    // LISTEN/NOTIFY wakes the worker the moment a question is committed: the time to the first
    // delta starts there.
    let backend = PostgresStorage::<AgentJob>::new(ctx.store().pool())
        .with_config(queue_config(&config))
        .with_pubsub();
    // Unique per process, so a restarted process never inherits (and keeps alive) the jobs of
    // the one that died.
    let name = ragpipe_store::jobs::worker_name("agent");
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx)
        .concurrency(concurrency(&config))
        .build(handle);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| format!("agent worker: {e}"))
}

/// Starts an agent worker on the current runtime; it stops when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let ctx = Arc::new(AnswerContext::new(store, config).await?);
        run(ctx, async move { shutdown.cancelled().await }).await
    })
}
