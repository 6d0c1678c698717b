//! The agent job: answer one question (retrieve → prompt → stream into the assistant message),
//! on the apalis PostgreSQL queue `ragpipe.agent`.
//!
//! The work itself is [`ragpipe_agent::answer`]; this crate wires it to the queue through the
//! workers' one skeleton ([`ragpipe_worker`]), as [`AgentQueue`]. Delivery is
//! at least once and the handler is idempotent (see that module). Errors decide what happens
//! next: a transient one before any text was written (model 429/5xx/timeouts after the chat
//! client's own retries, a lost database connection) goes back to the queue with exponential
//! backoff and jitter; a permanent one, or the last attempt, ends the answer `failed` with the
//! reason, so nothing stays `streaming` forever.

use apalis::prelude::BoxDynError;
use ragpipe_agent::AnswerContext;
use ragpipe_agent::MessageFeed;
use ragpipe_agent::answer::{AnswerError, Outcome, answer};
use ragpipe_core::{Config, ErrorKind, SetupError};
use ragpipe_store::Store;
use ragpipe_store::conversations::AgentJob;
use ragpipe_store::jobs::AGENT_QUEUE;
use ragpipe_store::liveness::Liveness;
use ragpipe_store::retry::{RetryPolicy, retry};
pub use ragpipe_worker::WorkerError;
use ragpipe_worker::{JobAttempt, JobQueue};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

/// Answers in flight per unit of `worker.concurrency`: an answer waits on the model, not on the
/// CPU, and holds a database connection only for the instant of each flush.
pub const ANSWERS_PER_WORKER_SLOT: usize = 32;

/// Answers this process works on at once.
pub fn concurrency(config: &Config) -> usize {
    (config.worker.concurrency.max(1) as usize).saturating_mul(ANSWERS_PER_WORKER_SLOT)
}

/// The `ragpipe.agent` queue: each job answers one question ([`answer`]), which itself ends
/// the answer `failed` on a permanent error or the last attempt.
#[derive(Debug)]
pub enum AgentQueue {}

impl JobQueue for AgentQueue {
    type Context = AnswerContext;
    type Job = AgentJob;
    type Outcome = Outcome;
    type Error = AnswerError;

    const NAME: &'static str = "agent";
    const QUEUE: &'static str = AGENT_QUEUE;
    const RETRIES_TOTAL: &'static str = "ragpipe_agent_retries_total";

    fn store(ctx: &AnswerContext) -> &Store {
        ctx.store()
    }

    fn config(ctx: &AnswerContext) -> &Config {
        ctx.config()
    }

    fn concurrency(config: &Config) -> usize {
        concurrency(config)
    }

    fn span(job: &AgentJob, job_id: &str, attempt: usize) -> tracing::Span {
        info_span!("answer", request_id = %job.request_id, user_id = %job.user_id, job_id = %job_id, attempt = attempt)
    }

    async fn perform(
        ctx: &AnswerContext,
        job: &AgentJob,
        _: &str,
        attempt: JobAttempt,
    ) -> Result<Outcome, AnswerError> {
        answer(ctx, *job, attempt.is_last()).await
    }

    fn kind(error: &AnswerError) -> ErrorKind {
        error.kind
    }

    fn finished(outcome: &Outcome, elapsed: Duration) {
        metrics::counter!("ragpipe_agent_answers_total", "outcome" => outcome.label()).increment(1);
        metrics::histogram!("ragpipe_agent_answer_seconds").record(elapsed.as_secs_f64());
        info!(?outcome, "answer finished");
    }

    /// [`answer`] has already ended the answer `failed` if it could: an error here means
    /// recording the failure itself failed (the database is away), so the queue retries, and
    /// the next attempt ends the answer.
    async fn give_up(_: &AnswerContext, _: &AgentJob, error: AnswerError, _: JobAttempt) -> Result<(), BoxDynError> {
        warn!(error = %error, "answer failed and could not be marked failed");
        Err(Box::new(error))
    }
}

/// Runs an agent worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// answers in flight and returns. Unsupervised: it returns the first failure of its queue
/// connection ([`spawn`] restarts it).
pub async fn run(
    ctx: Arc<AnswerContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    ragpipe_worker::run::<AgentQueue>(ctx, shutdown).await
}

/// Starts a supervised agent worker on the current runtime: restarted with backoff whenever
/// its queue connection fails, stopped when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
    spawn_supervised(store, config, shutdown, &Liveness::new())
}

/// [`spawn`], reporting into `liveness` as the component `agent`, and the process's message
/// feed (which the worker watches for cancellations) as `message_feed`.
pub fn spawn_supervised(
    store: Store,
    config: Arc<Config>,
    shutdown: CancellationToken,
    liveness: &Liveness,
) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
    let settings = Arc::clone(&config);
    let feed_liveness = liveness.clone();
    ragpipe_worker::spawn_supervised::<AgentQueue, _, _>(&config, shutdown, liveness, || async move {
        // The context shares the process's feed; start it here, riding out a database that is
        // briefly away, so that a dropped connection at start-up is not taken for a bad setup.
        let feed = retry("starting the message feed", RetryPolicy::POLLING, || {
            MessageFeed::shared(&store)
        })
        .await
        .map_err(SetupError::of("message feed"));
        match feed {
            Ok(feed) => {
                feed_liveness.add(feed.component());
                AnswerContext::new(store, settings).await
            }
            Err(e) => Err(e),
        }
    })
}
