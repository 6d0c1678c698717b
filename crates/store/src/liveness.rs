//! Liveness of the long-running parts of a process (the queue workers, the message feed) and
//! the supervisor that keeps them running.
//!
//! A [`Component`] records its state and last heartbeat; a [`Liveness`] registry lists the
//! components of a process, for `/readyz` and `/metrics`. [`supervise`] runs a component again
//! whenever it ends or fails, after a capped exponential backoff with jitter, for as long as
//! the process runs; only the shutdown token (or a first start that cannot work, such as a
//! misconfiguration) ends it.
//!
//! Health is judged at read time from the clock, so a component that hangs without failing is
//! reported too: one that has not beaten its heartbeat for [`Component::stale_after`] is
//! *stale*, and one that has been down (starting or restarting without a heartbeat) for as
//! long is *dead*.

use crate::retry::Backoff;
use ragpipe_core::ErrorKind;
use serde::Serialize;
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a component is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Started, no heartbeat yet.
    Starting,
    /// Beating its heartbeat.
    Running,
    /// Failed; waiting to be started again.
    Restarting,
    /// Down for longer than its heartbeat allows, or given up on.
    Dead,
    /// Ended by the shutdown token.
    Stopped,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// When it last went down (none while running).
    down_since: Option<Instant>,
    last_heartbeat: Option<Instant>,
    restarts: u64,
    last_error: Option<String>,
}

/// One supervised part of a process: its state, heartbeat and restarts. Shared (`Arc`) between
/// the part itself, which beats, and the registry, which reads.
#[derive(Debug)]
pub struct Component {
    name: String,
    queue: Option<String>,
    heartbeat_interval: Duration,
    inner: Mutex<Inner>,
}

impl Component {
    /// A component named `name` (consuming `queue`, if it is a queue worker), expected to beat
    /// every `heartbeat_interval`.
    pub fn new(name: &str, queue: Option<&str>, heartbeat_interval: Duration) -> Arc<Component> {
        Arc::new(Component {
            name: name.to_owned(),
            queue: queue.map(str::to_owned),
            heartbeat_interval,
            inner: Mutex::new(Inner {
                state: State::Starting,
                down_since: Some(Instant::now()),
                last_heartbeat: None,
                restarts: 0,
                last_error: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few field writes: a panic cannot leave the record half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its name (`ingest`, `agent`, `message_feed`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue it consumes, if it is a queue worker.
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// How long without a heartbeat makes it stale, and how long down makes it dead: three
    /// heartbeat intervals (the job queue's own rule for taking over a worker's jobs) and a
    /// second of slack.
    pub fn stale_after(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(3) + Duration::from_secs(1)
    }

    /// How long a run may go without a heartbeat (or, just started, without its first one)
    /// before its supervisor takes it for hung and starts it again: three times
    /// [`Component::stale_after`], so `/readyz` reports it stale well before.
    pub fn hung_after(&self) -> Duration {
        self.stale_after().saturating_mul(3)
    }

    /// How long since its last heartbeat, or since `started` if that is later (a run that
    /// has just started has not had the time to beat).
    pub fn silent_since(&self, started: Instant) -> Duration {
        let last = self.lock().last_heartbeat.map_or(started, |t| t.max(started));
        last.elapsed()
    }

    /// It is (re)starting.
    pub fn starting(&self) {
        let mut inner = self.lock();
        inner.state = State::Starting;
        inner.down_since.get_or_insert_with(Instant::now);
    }

    /// It is alive and working.
    pub fn heartbeat(&self) {
        let mut inner = self.lock();
        inner.state = State::Running;
        inner.down_since = None;
        inner.last_heartbeat = Some(Instant::now());
    }

    /// It failed with `error` and will be started again.
    pub fn restarting(&self, error: &dyn Display) {
        let mut inner = self.lock();
        inner.state = State::Restarting;
        inner.down_since.get_or_insert_with(Instant::now);
        inner.restarts += 1;
        inner.last_error = Some(error.to_string());
    }

    /// It failed with `error` and will not be started again.
    pub fn dead(&self, error: &dyn Display) {
        let mut inner = self.lock();
        inner.state = State::Dead;
        inner.down_since.get_or_insert_with(Instant::now);
        inner.last_error = Some(error.to_string());
    }

    /// It ended because the process is shutting down.
    pub fn stopped(&self) {
        let mut inner = self.lock();
        inner.state = State::Stopped;
        inner.down_since.get_or_insert_with(Instant::now);
    }

    /// Whether it has ever beaten its heartbeat.
    pub fn ever_ran(&self) -> bool {
        self.lock().last_heartbeat.is_some()
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.lock().restarts
    }

    /// Its health now.
    pub fn report(&self) -> ComponentReport {
        let now = Instant::now();
        let stale_after = self.stale_after();
        let inner = self.lock();
        let heartbeat_age = inner.last_heartbeat.map(|t| now.saturating_duration_since(t));
        let down_for = inner.down_since.map(|t| now.saturating_duration_since(t));
        let mut state = inner.state;
        let problem = match inner.state {
            State::Running => match heartbeat_age {
                Some(age) if age > stale_after => Some(format!("no heartbeat for {:.0} s", age.as_secs_f64())),
                _ => None,
            },
            State::Starting | State::Restarting => match down_for {
                Some(down) if down > stale_after => {
                    state = State::Dead;
                    Some(format!("down for {:.0} s", down.as_secs_f64()))
                }
                // A process is not ready before its components first come up.
                _ if inner.last_heartbeat.is_none() => Some("not started yet".to_owned()),
                _ => None,
            },
            State::Dead => Some("given up".to_owned()),
            State::Stopped => Some("stopped".to_owned()),
        };
        let reason = problem.map(|p| match &inner.last_error {
            Some(e) if state != State::Stopped => format!("{p} ({} restarts; last error: {e})", inner.restarts),
            _ => p,
        });
        ComponentReport {
            name: self.name.clone(),
            queue: self.queue.clone(),
            state,
            up: state == State::Running && reason.is_none(),
            stale: state == State::Running && reason.is_some(),
            seconds_since_heartbeat: heartbeat_age.map(|a| a.as_secs_f64()),
            restarts: inner.restarts,
            last_error: inner.last_error.clone(),
            reason,
        }
    }
}

/// A component's health at one moment, as `/readyz` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentReport {
    /// Its name.
    pub name: String,
    /// The queue it consumes, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its state; `dead` also when it has been starting or restarting for too long.
    pub state: State,
    /// Running with a fresh heartbeat.
    pub up: bool,
    /// Running, but its heartbeat is older than it should be.
    pub stale: bool,
    /// Seconds since its last heartbeat (none before the first).
    pub seconds_since_heartbeat: Option<f64>,
    /// Times it was restarted after a failure.
    pub restarts: u64,
    /// Its last failure.
    pub last_error: Option<String>,
    /// Why it is not healthy (none when it is, including briefly while restarting after it
    /// has run; a component that has never run is not healthy).
    pub reason: Option<String>,
}

impl ComponentReport {
    /// Whether the process may be called ready as far as this component goes: running with a
    /// fresh heartbeat, or (after it first ran) down for less than its heartbeat allows.
    pub fn healthy(&self) -> bool {
        self.reason.is_none()
    }
}

/// The supervised components of a process. Cheap to clone; clones share the list.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    components: Arc<Mutex<Vec<Arc<Component>>>>,
}

impl Liveness {
    /// An empty registry.
    pub fn new() -> Liveness {
        Liveness::default()
    }

    /// Adds `component`, replacing any of the same name.
    pub fn add(&self, component: Arc<Component>) {
        let mut list = self.components.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|c| c.name != component.name);
        list.push(component);
    }

    /// A new component, added.
    pub fn register(&self, name: &str, queue: Option<&str>, heartbeat_interval: Duration) -> Arc<Component> {
        let component = Component::new(name, queue, heartbeat_interval);
        self.add(Arc::clone(&component));
        component
    }

    /// Every component's health, in the order they were added.
    pub fn report(&self) -> Vec<ComponentReport> {
        let list = self.components.lock().unwrap_or_else(PoisonError::into_inner).clone();
        list.iter().map(|c| c.report()).collect()
    }
}

/// Why one run of a supervised component ended.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// `Permanent` on a first start means the component cannot work as configured.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
}

impl Failure {
    /// A failure that starting again may cure.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
}

/// Jobs in flight, each in a task of its own, so that a job outlives the worker instance that
/// took it when that instance fails (its queue connection dropped) and its supervisor starts a
/// new one: the job finishes instead of being cut off mid-way. [`InFlight::wait`] waits for all
/// of them, for a graceful shutdown. (Its queue row, whose worker is gone, is taken over after
/// three missed heartbeats like any orphan; the idempotent handlers then find it done.)
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    lock: Arc<tokio::sync::RwLock<()>>,
}

impl InFlight {
    /// Runs `job` in a task of its own, tracked until it ends.
    pub fn spawn<F>(&self, job: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Fails only once `wait` has begun (shutdown): the job then runs untracked.
        let guard = Arc::clone(&self.lock).try_read_owned().ok();
        tokio::spawn(async move {
            let output = job.await;
            drop(guard);
            output
        })
    }

    /// Waits until every job spawned so far has ended.
    pub async fn wait(&self) {
        let _all_done = self.lock.write().await;
    }
}

/// The backoff between restarts: 0.5 s doubling to 30 s, with jitter.
pub fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

/// A run that lasted this long after coming up resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Runs `component` (one call of `run` is one run: it returns when the component stops or
/// fails) until `shutdown` is cancelled, starting it again after every failure or unexpected
/// end with a capped exponential backoff and jitter. A run that stays alive but stops beating
/// its heartbeat for [`Component::hung_after`] is hung: it is dropped and started again (the
/// jobs it holds run on in their own tasks, see [`InFlight`]). `run` must itself stop
/// promptly and gracefully when `shutdown` is cancelled (no watchdog then: draining may be
/// quiet). Returns `Err` only when the first start fails permanently (the component is then
/// reported dead).
pub async fn supervise<F, Fut>(
    component: Arc<Component>,
    shutdown: CancellationToken,
    mut backoff: Backoff,
    mut run: F,
) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    loop {
        component.starting();
        let started = Instant::now();
        let result = watch(&component, &shutdown, started, run()).await;
        if shutdown.is_cancelled() {
            component.stopped();
            return match result {
                Err(e) => {
                    tracing::warn!(component = component.name(), error = %e, "stopped with an error");
                    Ok(())
                }
                Ok(()) => Ok(()),
            };
        }
        let failure = match result {
            Ok(()) => Failure::transient("ended without being asked to"),
            Err(e) if e.kind == ErrorKind::Permanent && !component.ever_ran() => {
                tracing::error!(component = component.name(), error = %e, "cannot start; giving up");
                component.dead(&e);
                return Err(e);
            }
            Err(e) => e,
        };
        if component.ever_ran() && started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        component.restarting(&failure);
        let wait = backoff.next_delay();
        tracing::error!(
            component = component.name(),
            queue = component.queue(),
            error = %failure,
            restarts = component.restarts(),
            restart_in_ms = wait.as_millis() as u64,
            "failed; restarting"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {
                component.stopped();
                return Ok(());
            }
        }
    }
}

/// Awaits `run`, dropping it with a failure when it goes [`Component::hung_after`] without a
/// heartbeat while the process is not shutting down.
async fn watch(
    component: &Component,
    shutdown: &CancellationToken,
    started: Instant,
    run: impl std::future::Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    let hung_after = component.hung_after();
    let check_every = component
        .heartbeat_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    tokio::pin!(run);
    loop {
        tokio::select! {
            result = &mut run => return result,
            _ = tokio::time::sleep(check_every) => {
                let silent = component.silent_since(started);
                if !shutdown.is_cancelled() && silent > hung_after {
                    return Err(Failure::transient(format!(
                        "hung: no heartbeat for {:.0} s; dropped and started again",
                        silent.as_secs_f64()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_is_stale_without_heartbeats_and_dead_when_down_too_long() {
        let c = Component::new("agent", Some("ragpipe.agent"), Duration::from_millis(0));
        // stale_after is 1 s with a zero interval.
        let report = c.report();
        assert_eq!(report.state, State::Starting);
        assert!(!report.healthy(), "not ready before it first runs");
        c.heartbeat();
        let report = c.report();
        assert!(report.up && report.healthy());
        c.restarting(&"connection lost");
        let report = c.report();
        assert_eq!((report.state, report.restarts), (State::Restarting, 1));
        assert!(report.healthy(), "restarting, within its grace");
        assert!(!report.up);
        std::thread::sleep(Duration::from_millis(1100));
        let report = c.report();
        assert_eq!(report.state, State::Dead);
        assert!(report.reason.as_deref().is_some_and(|r| r.contains("connection lost")));
        c.heartbeat();
        assert!(c.report().healthy());
        std::thread::sleep(Duration::from_millis(1100));
        let report = c.report();
        assert!(report.stale && !report.healthy(), "{report:?}");
    }

    #[tokio::test]
    async fn supervise_restarts_until_shutdown() {
        let c = Component::new("ingest", Some("ragpipe.ingest"), Duration::from_secs(1));
        let shutdown = CancellationToken::new();
        let runs = std::sync::atomic::AtomicU32::new(0);
        let stop = shutdown.clone();
        let result = supervise(
            Arc::clone(&c),
            shutdown,
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            || {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let stop = stop.clone();
                async move {
                    if run == 4 {
                        stop.cancel();
                        return Ok(());
                    }
                    Err(Failure::transient("backend failed"))
                }
            },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(runs.into_inner(), 4);
        assert_eq!(c.restarts(), 3);
        assert_eq!(c.report().state, State::Stopped);
    }

    #[tokio::test]
    async fn jobs_in_flight_outlive_their_caller_and_are_waited_for() {
        let in_flight = InFlight::default();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let handle = in_flight.spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // The caller gives up on the job (as a failed worker drops its handler): it goes on.
        drop(handle);
        in_flight.wait().await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_run_that_stops_beating_is_dropped_and_started_again() {
        // hung_after is 3 s with a zero interval.
        let c = Component::new("ingest", Some("ragpipe.ingest"), Duration::from_millis(0));
        let shutdown = CancellationToken::new();
        let runs = std::sync::atomic::AtomicU32::new(0);
        let stop = shutdown.clone();
        let component = Arc::clone(&c);
        let started = Instant::now();
        let result = supervise(
            Arc::clone(&c),
            shutdown,
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            || {
                let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let stop = stop.clone();
                let component = Arc::clone(&component);
                async move {
                    if run == 2 {
                        stop.cancel();
                        return Ok(());
                    }
                    // Beats once, then hangs: alive, silent, never returning.
                    component.heartbeat();
                    std::future::pending::<()>().await;
                    Ok(())
                }
            },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(runs.into_inner(), 2, "started again");
        assert_eq!(c.restarts(), 1);
        assert!(
            c.report().last_error.is_some_and(|e| e.contains("hung")),
            "{:?}",
            c.report()
        );
        assert!(started.elapsed() >= c.hung_after());
    }

    #[tokio::test]
    async fn a_shutting_down_run_is_not_taken_for_hung() {
        let c = Component::new("ingest", None, Duration::from_millis(0));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        // Drains quietly for longer than hung_after, then ends.
        let result = supervise(Arc::clone(&c), shutdown, restart_backoff(), || async {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            Ok(())
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(c.restarts(), 0);
        assert_eq!(c.report().state, State::Stopped);
    }

    #[tokio::test]
    async fn a_permanent_failure_on_the_first_start_is_given_up() {
        let c = Component::new("ingest", None, Duration::from_secs(1));
        let result = supervise(Arc::clone(&c), CancellationToken::new(), restart_backoff(), || async {
            Err(Failure {
                kind: ErrorKind::Permanent,
                message: "dimension mismatch".into(),
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(c.report().state, State::Dead);
    }
}
