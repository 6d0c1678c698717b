//! `ragpipe worker`, and the in-process workers that `serve` and `ingest` start.

use anyhow::Context;
use ragpipe_core::Config;
use ragpipe_ingest_worker::WorkerError;
use ragpipe_store::Store;
use ragpipe_store::liveness::Liveness;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the workers of this process; they stop when `shutdown` is cancelled.
pub fn spawn(
    store: &Store,
    config: &Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    spawn_reporting(store, config, shutdown, &Liveness::new())
}

/// Starts the ingest and agent workers of this process, each supervised (restarted with
/// capped exponential backoff and jitter whenever its queue connection fails, for as long as
/// the process runs) and reporting into `liveness` (`ingest`, `agent`, `message_feed`). They
/// stop when `shutdown` is cancelled. The task ends with an error only when a worker cannot
/// start at all (a misconfiguration); the other worker is then stopped too.
pub fn spawn_reporting(
    store: &Store,
    config: &Arc<Config>,
    shutdown: CancellationToken,
    liveness: &Liveness,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let stop = shutdown.child_token();
    let mut ingest = ragpipe_ingest_worker::spawn_supervised(store.clone(), Arc::clone(config), stop.clone(), liveness);
    let mut agent = ragpipe_agent_worker::spawn_supervised(store.clone(), Arc::clone(config), stop.clone(), liveness);
    Ok(tokio::spawn(async move {
        let outcome = |name: &str, r: Result<Result<(), WorkerError>, tokio::task::JoinError>| {
            r.with_context(|| format!("{name} worker task"))?
                .map_err(anyhow::Error::from)
        };
        // Whichever ends first: on a failure, stop the other and report the failure.
        let (first, rest, rest_name) = tokio::select! {
            r = &mut ingest => (outcome("ingest", r), agent, "agent"),
            r = &mut agent => (outcome("agent", r), ingest, "ingest"),
        };
        if first.is_err() {
            stop.cancel();
        }
        let second = outcome(rest_name, rest.await);
        first.and(second)
    }))
}

/// `ragpipe worker`: consumes the queues until SIGTERM, then finishes what it holds and exits.
/// A worker whose database connection fails is restarted; the process exits non-zero only
/// when a worker cannot start at all.
pub async fn run(config: Config, concurrency: Option<u32>, metrics_listen: Option<String>) -> anyhow::Result<()> {
    let mut config = config;
    if let Some(n) = concurrency {
        config.worker.concurrency = n.max(1);
    }
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    let shutdown = crate::shutdown::on_signal();
    let liveness = Liveness::new();
    let ops = match metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let state = ragpipe_api::AppState::new(store.clone(), Arc::clone(&config))
                .context("setting up the metrics listener")?
                .with_liveness(liveness.clone());
            let stop = shutdown.clone();
            eprintln!("ragpipe worker: metrics on http://{addr}/metrics");
            Some(tokio::spawn(ragpipe_api::serve_ops(state, listener, async move {
                stop.cancelled().await
            })))
        }
        None => None,
    };
    eprintln!(
        "ragpipe worker: consuming the ingest and agent queues with concurrency {}",
        config.worker.concurrency
    );
    spawn_reporting(&store, &config, shutdown.clone(), &liveness)?
        .await
        .context("worker task")??;
    shutdown.cancel();
    if let Some(ops) = ops {
        ops.await.context("metrics server task")?.context("serving metrics")?;
    }
    Ok(())
}
