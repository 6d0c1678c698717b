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
use ragpipe_agent::AnswerContext;
use ragpipe_agent::MessageFeed;
use ragpipe_agent::answer::answer;
use ragpipe_core::{Config, SetupError};
use ragpipe_store::Store;
use ragpipe_store::conversations::AgentJob;
use ragpipe_store::jobs::AGENT_QUEUE;
use ragpipe_store::liveness::{Component, Failure, InFlight, Liveness, restart_backoff, supervise};
use ragpipe_store::retry::{RetryPolicy, retry};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, info, info_span, warn};

/// Answers in flight per unit of `worker.concurrency`: an answer waits on the model, not on the
/// CPU, and holds a database connection only for the instant of each flush.
pub const ANSWERS_PER_WORKER_SLOT: usize = 32;

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
                let wait = ragpipe_store::jobs::retry_delay(attempt.current());
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "answer failed; will retry");
                // The queue holds the job until then; this slot is free for other answers.
                if let Err(schedule) =
                    ragpipe_store::jobs::delay_retry(ctx.store(), AGENT_QUEUE, &task_id.to_string(), wait).await
                {
                    warn!(error = %schedule, "could not delay the retry; the queue retries at once");
                }
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

/// How long an agent worker row may go without a heartbeat before a starting worker removes it
/// (when it holds no job; see [`ragpipe_store::jobs::remove_dead_workers`]): ten heartbeats.
pub fn dead_worker_after(config: &Config) -> Duration {
    Duration::from_secs(config.worker.heartbeat_secs.max(1)).saturating_mul(10)
}

/// Runs an agent worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// answers in flight and returns. Unsupervised: it returns the first failure of its queue
/// connection ([`spawn`] restarts it).
pub async fn run(ctx: Arc<AnswerContext>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let in_flight = InFlight::default();
    let result = run_once(ctx, shutdown, None, in_flight.clone()).await;
    in_flight.wait().await;
    result.map_err(|e| e.message)
}

/// One run of an agent worker, beating `component`'s heartbeat with the queue's.
async fn run_once(
    ctx: Arc<AnswerContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    component: Option<Arc<Component>>,
    in_flight: InFlight,
) -> Result<(), Failure> {
    let config = Arc::clone(ctx.config());
    // Every start leaves its predecessor's worker row behind (names are unique per start).
    match ragpipe_store::jobs::remove_dead_workers(ctx.store(), AGENT_QUEUE, dead_worker_after(&config)).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, queue = AGENT_QUEUE, "removed dead workers' rows"),
        Err(e) => warn!(error = %e, queue = AGENT_QUEUE, "removing dead workers' rows failed"),
    }
    // LISTEN/NOTIFY wakes the worker the moment a question is committed: the time to the first
    // delta starts there.
    let backend = ctx
        .store()
        .job_storage::<AgentJob>()
        .with_config(queue_config(&config))
        .with_pubsub();
    // Unique per process, so a restarted process never inherits (and keeps alive) the jobs of
    // the one that died.
    let name = ragpipe_store::jobs::worker_name("agent");
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx)
        .data(in_flight)
        .concurrency(concurrency(&config))
        // The queue announces each heartbeat it wrote to its worker row.
        .on_event(move |_, event| {
            if let (Event::HeartBeat, Some(c)) = (event, &component) {
                c.heartbeat();
            }
        })
        .build(handle_in_flight);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| Failure::transient(format!("agent worker: {e}")))
}

/// Starts a supervised agent worker on the current runtime: restarted with backoff whenever
/// its queue connection fails, stopped when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    spawn_supervised(store, config, shutdown, &Liveness::new())
}

/// [`spawn`], reporting into `liveness` as the component `agent`, and the process's message
/// feed (which the worker watches for cancellations) as `message_feed`.
pub fn spawn_supervised(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
    liveness: &Liveness,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let heartbeat = Duration::from_secs(config.worker.heartbeat_secs.max(1));
    let component = liveness.register("agent", Some(AGENT_QUEUE), heartbeat);
    let liveness = liveness.clone();
    tokio::spawn(async move {
        // The context shares the process's feed; start it here, riding out a database that is
        // briefly away, so that a dropped connection at start-up is not taken for a bad setup.
        let feed = retry("starting the message feed", RetryPolicy::POLLING, || {
            MessageFeed::shared(&store)
        })
        .await
        .map_err(SetupError::of("message feed"));
        let ctx = match feed {
            Ok(feed) => {
                liveness.add(feed.component());
                AnswerContext::new(store, config).await
            }
            Err(e) => Err(e),
        };
        // The report of a process part that cannot start: the whole chain, as text.
        let ctx = ctx.map_err(|e| e.to_string());
        let ctx = match ctx {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => {
                component.dead(&e);
                return Err(e);
            }
        };
        let in_flight = InFlight::default();
        let supervised = supervise(Arc::clone(&component), shutdown.clone(), restart_backoff(), || {
            let stop = shutdown.clone();
            run_once(
                Arc::clone(&ctx),
                async move { stop.cancelled().await },
                Some(Arc::clone(&component)),
                in_flight.clone(),
            )
        });
        let result = supervised.await;
        // Jobs of instances that failed under them may still be running: let them finish.
        in_flight.wait().await;
        result.map_err(|e| e.message)
    })
}

/// The job handler the queue calls: [`handle`] in a task of its own (tracked by `in_flight`), so
/// that a job outlives a worker instance whose queue connection fails under it.
async fn handle_in_flight(
    job: AgentJob,
    ctx: Data<Arc<AnswerContext>>,
    in_flight: Data<InFlight>,
    attempt: Attempt,
    task_id: TaskId,
) -> Result<(), BoxDynError> {
    in_flight
        .spawn(handle(job, ctx, attempt, task_id))
        .await
        .map_err(|e| Box::new(e) as BoxDynError)?
}
