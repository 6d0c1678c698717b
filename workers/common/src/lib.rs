//! The one skeleton of the queue workers (`workers/ingest`, `workers/agent`): an apalis worker
//! on a PostgreSQL queue, woken by `NOTIFY`, with its concurrency and heartbeat; supervision
//! (restarted with backoff after a failure, reported into [`Liveness`]); graceful shutdown
//! (stop taking jobs, finish the ones in flight); and what a job's error decides.
//!
//! A queue's own work is a [`JobQueue`]: its context, its job payload, what one job does and
//! how it ends when it cannot be retried. Everything else is here, once:
//!
//! - Each job runs in a task of its own ([`InFlight`]), so it outlives a worker instance whose
//!   queue connection fails under it; shutdown waits for all of them.
//! - A retryable error before the last attempt schedules the next attempt through the queue
//!   ([`jobs::retry_delay`], [`jobs::delay_retry`]: the job's `run_at`, never a sleep holding
//!   the worker's slot) and hands the error back to the queue.
//! - Any other error goes to [`JobQueue::give_up`], which records the failure.
//! - Every start removes the queue's dead worker rows, and uses a worker name unique to the
//!   process and start, so a restart never adopts (and keeps alive) a dead worker's jobs.

use apalis::prelude::*;
use ragpipe_core::{Config, ErrorKind, SetupError};
use ragpipe_store::Store;
use ragpipe_store::jobs;
use ragpipe_store::liveness::{Component, Failure, InFlight, Liveness, restart_backoff, supervise};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

/// One queue's work, which the skeleton runs: implemented by each worker crate on a type of its
/// own (the context usually lives in another crate).
pub trait JobQueue: 'static {
    /// What every job shares, built once per process.
    type Context: Send + Sync + 'static;
    /// The job's payload, as enqueued (JSON).
    type Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static;
    /// How a job ended when it did not fail.
    type Outcome: Debug + Send;
    /// A failed attempt; [`JobQueue::kind`] says whether retrying can help.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The component's name in liveness reports, and the prefix of its worker names.
    const NAME: &'static str;
    /// The queue consumed.
    const QUEUE: &'static str;
    /// The counter incremented for every retry scheduled.
    const RETRIES_TOTAL: &'static str;

    /// The store the queue lives in.
    fn store(ctx: &Self::Context) -> &Store;

    /// The process's configuration.
    fn config(ctx: &Self::Context) -> &Config;

    /// Jobs one worker runs at once (also the queue's fetch batch).
    fn concurrency(config: &Config) -> usize {
        config.worker.concurrency.max(1) as usize
    }

    /// The span a job runs in: its ids, the queue's `job_id` and the attempt.
    fn span(job: &Self::Job, job_id: &str, attempt: usize) -> tracing::Span;

    /// What a worker checks before it takes jobs; a permanent failure on the first start means
    /// the worker cannot work as configured.
    fn prepare(ctx: &Self::Context) -> impl Future<Output = Result<(), Failure>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs one attempt of `job` (`job_id` is the queue's id, the same across attempts).
    fn perform(
        ctx: &Self::Context,
        job: &Self::Job,
        job_id: &str,
        attempt: JobAttempt,
    ) -> impl Future<Output = Result<Self::Outcome, Self::Error>> + Send;

    /// Whether `error` is worth another attempt.
    fn kind(error: &Self::Error) -> ErrorKind;

    /// Reports a job that ended without an error (metrics, a log line).
    fn finished(outcome: &Self::Outcome, elapsed: Duration);

    /// Ends a job that failed for good (a permanent error, or the last attempt): records the
    /// failure where its owner sees it. An error returned here goes back to the queue (as a
    /// failed attempt), so a failure that could not be recorded is not reported as success.
    fn give_up(
        ctx: &Self::Context,
        job: &Self::Job,
        error: Self::Error,
        attempt: JobAttempt,
    ) -> impl Future<Output = Result<(), BoxDynError>> + Send;
}

/// Which attempt of a job this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobAttempt {
    /// Attempts made before this one (0 for the first).
    pub previous: usize,
    /// Attempts allowed (`worker.max_attempts`, at least 1).
    pub max: usize,
}

impl JobAttempt {
    /// Whether no attempt follows this one whatever happens.
    pub fn is_last(&self) -> bool {
        self.previous + 1 >= self.max
    }
}

/// The queue configuration workers of `Q` consume with: its heartbeat, three missed heartbeats
/// before its jobs are taken over, and a fetch batch of its concurrency.
pub fn queue_config<Q: JobQueue>(config: &Config) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(Q::QUEUE)
        .heartbeat_interval(heartbeat(config))
        .missed_heartbeats(3)
        .batch_size(Q::concurrency(config))
}

/// The interval of the workers' heartbeats (`worker.heartbeat_secs`, at least a second).
pub fn heartbeat(config: &Config) -> Duration {
    Duration::from_secs(config.worker.heartbeat_secs.max(1))
}

/// How long a worker row may go without a heartbeat before a starting worker removes it (when
/// it holds no job; see [`jobs::remove_dead_workers`]): ten heartbeats, where the queue takes
/// over a worker's jobs after three.
pub fn dead_worker_after(config: &Config) -> Duration {
    heartbeat(config).saturating_mul(10)
}

/// Why a worker ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its context could not be built (a misconfiguration): it never took a job.
    #[error("the {queue} worker cannot start")]
    Setup {
        /// The worker's name ([`JobQueue::NAME`]).
        queue: &'static str,
        /// What could not be built, and why.
        #[source]
        source: SetupError,
    },
    /// Its queue connection failed (an unsupervised run ends with the first such failure; a
    /// supervised one only with a failure that starting again cannot cure).
    #[error("the {queue} worker's queue connection failed")]
    Queue {
        /// The worker's name ([`JobQueue::NAME`]).
        queue: &'static str,
        /// What happened.
        #[source]
        source: Failure,
    },
}

/// Runs a worker of `Q` until `shutdown` resolves; then it stops taking jobs, finishes the ones
/// in flight and returns. Unsupervised: it returns the first failure of its queue connection
/// ([`spawn_supervised`] restarts it).
pub async fn run<Q: JobQueue>(
    ctx: Arc<Q::Context>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let in_flight = InFlight::default();
    let result = run_once::<Q>(ctx, shutdown, None, in_flight.clone()).await;
    in_flight.wait().await;
    result.map_err(|source| WorkerError::Queue { queue: Q::NAME, source })
}

/// Starts a supervised worker of `Q` on the current runtime, reporting into `liveness` as the
/// component [`JobQueue::NAME`]: `context` builds its context (an error reports the component
/// dead, with the piece and its cause, and ends the task with it); then it runs, restarted with
/// backoff whenever its queue connection fails, until `shutdown` is cancelled, and the task
/// ends once the jobs in flight have.
pub fn spawn_supervised<Q, F, Fut>(
    config: &Config,
    shutdown: CancellationToken,
    liveness: &Liveness,
    context: F,
) -> tokio::task::JoinHandle<Result<(), WorkerError>>
where
    Q: JobQueue,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Q::Context, SetupError>> + Send + 'static,
{
    let component = liveness.register(Q::NAME, Some(Q::QUEUE), heartbeat(config));
    tokio::spawn(async move {
        let ctx = match context().await {
            Ok(ctx) => Arc::new(ctx),
            Err(source) => {
                component.dead(&source);
                return Err(WorkerError::Setup { queue: Q::NAME, source });
            }
        };
        let in_flight = InFlight::default();
        let supervised = supervise(Arc::clone(&component), shutdown.clone(), restart_backoff(), || {
            let stop = shutdown.clone();
            run_once::<Q>(
                Arc::clone(&ctx),
                async move { stop.cancelled().await },
                Some(Arc::clone(&component)),
                in_flight.clone(),
            )
        });
        let result = supervised.await;
        // Jobs of instances that failed under them may still be running: let them finish.
        in_flight.wait().await;
        result.map_err(|source| WorkerError::Queue { queue: Q::NAME, source })
    })
}

/// One run of a worker of `Q`, beating `component`'s heartbeat with the queue's.
async fn run_once<Q: JobQueue>(
    ctx: Arc<Q::Context>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    component: Option<Arc<Component>>,
    in_flight: InFlight,
) -> Result<(), Failure> {
    let config = Q::config(&ctx);
    // Every start leaves its predecessor's worker row behind (names are unique per start).
    match jobs::remove_dead_workers(Q::store(&ctx), Q::QUEUE, dead_worker_after(config)).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, queue = Q::QUEUE, "removed dead workers' rows"),
        Err(e) => warn!(error = %e, queue = Q::QUEUE, "removing dead workers' rows failed"),
    }
    Q::prepare(&ctx).await?;
    let concurrency = Q::concurrency(config);
    // LISTEN/NOTIFY wakes the worker the moment a job is committed; polling alone backs off
    // while idle, so a job after a quiet spell would wait seconds.
    let backend = Q::store(&ctx)
        .job_storage::<Q::Job>()
        .with_config(queue_config::<Q>(config))
        .with_pubsub();
    // The worker id is its name: unique per process and start, so a restarted process never
    // inherits (and keeps alive) the jobs of the one that died.
    let name = jobs::worker_name(Q::NAME);
    let (store, interval) = (Q::store(&ctx).clone(), heartbeat(config));
    let worker = WorkerBuilder::new(name.clone())
        .backend(backend)
        .data(ctx)
        .data(in_flight)
        .concurrency(concurrency)
        // The queue announces each heartbeat it wrote to its worker row.
        .on_event(move |_, event| {
            if let (Event::HeartBeat, Some(c)) = (event, &component) {
                c.heartbeat();
            }
        })
        .build(handle_in_flight::<Q>);
    // Once shutdown begins the queue stops beating this worker's heartbeat, but the worker
    // still finishes the jobs it runs: it beats on its own until they are done, or another
    // worker would take a job over after three missed beats and run it again.
    let draining = CancellationToken::new();
    let drain = draining.clone();
    let run = worker.run_until(async move {
        shutdown.await;
        drain.cancel();
        Ok::<(), std::io::Error>(())
    });
    tokio::pin!(run);
    let ran = tokio::select! {
        ran = &mut run => ran,
        () = draining.cancelled() => {
            let mut ticks = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    ran = &mut run => break ran,
                    _ = ticks.tick() => match jobs::keep_alive(&store, Q::QUEUE, &name).await {
                        Ok(true) => {}
                        Ok(false) => warn!(worker = %name, "the worker's row is gone while it finishes its jobs"),
                        Err(e) => warn!(error = %e, worker = %name, "beating the heartbeat while finishing jobs failed"),
                    },
                }
            }
        }
    };
    ran.map_err(|e| Failure::transient(format!("{} worker: {e}", Q::NAME)))
}

/// The job handler the queue calls: [`handle`] in a task of its own (tracked by `in_flight`), so
/// that a job outlives a worker instance whose queue connection fails under it.
async fn handle_in_flight<Q: JobQueue>(
    job: Q::Job,
    ctx: Data<Arc<Q::Context>>,
    in_flight: Data<InFlight>,
    attempt: Attempt,
    task_id: TaskId,
) -> Result<(), BoxDynError> {
    in_flight
        .spawn(handle::<Q>(
            job,
            Arc::clone(&ctx),
            attempt.current(),
            task_id.to_string(),
        ))
        .await
        .map_err(|e| Box::new(e) as BoxDynError)?
}

/// Runs one attempt of `job` and decides what its error means: a retryable one before the last
/// attempt is scheduled again through the queue; any other goes to [`JobQueue::give_up`].
async fn handle<Q: JobQueue>(
    job: Q::Job,
    ctx: Arc<Q::Context>,
    previous: usize,
    job_id: String,
) -> Result<(), BoxDynError> {
    let span = Q::span(&job, &job_id, previous);
    async move {
        let attempt = JobAttempt {
            previous,
            max: Q::config(&ctx).worker.max_attempts.max(1) as usize,
        };
        let started = Instant::now();
        match Q::perform(&ctx, &job, &job_id, attempt).await {
            Ok(outcome) => {
                Q::finished(&outcome, started.elapsed());
                Ok(())
            }
            Err(e) if Q::kind(&e).is_retryable() && !attempt.is_last() => {
                metrics::counter!(Q::RETRIES_TOTAL).increment(1);
                let wait = jobs::retry_delay(attempt.previous);
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "job failed; will retry");
                // The queue holds the job until then; this slot is free for other jobs.
                if let Err(schedule) = jobs::delay_retry(Q::store(&ctx), Q::QUEUE, &job_id, wait).await {
                    warn!(error = %schedule, "could not delay the retry; the queue retries at once");
                }
                Err(Box::new(e) as BoxDynError)
            }
            Err(e) => Q::give_up(&ctx, &job, e, attempt).await,
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_is_the_one_that_uses_up_max_attempts() {
        let attempts = |max| {
            (0..max)
                .map(|previous| JobAttempt { previous, max }.is_last())
                .collect::<Vec<_>>()
        };
        assert_eq!(attempts(1), [true]);
        assert_eq!(attempts(3), [false, false, true]);
        // `max` is at least 1 in use; a job retried past it (the queue's own count) stays last.
        assert!(JobAttempt { previous: 5, max: 3 }.is_last());
    }

    #[test]
    fn dead_workers_are_ten_heartbeats_silent() {
        let mut config = Config::defaults();
        config.worker.heartbeat_secs = 0;
        assert_eq!(heartbeat(&config), Duration::from_secs(1));
        config.worker.heartbeat_secs = 7;
        assert_eq!(dead_worker_after(&config), Duration::from_secs(70));
    }
}
