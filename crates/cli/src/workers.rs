//! `ragpipe worker`, and the in-process workers that `serve` and `ingest` start.

use anyhow::Context;
use ragpipe_core::Config;
use ragpipe_store::Store;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the workers of this process; they stop when `shutdown` is cancelled.
pub fn spawn(
    store: &Store,
    config: &Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let ingest = ragpipe_ingest_worker::spawn(store.clone(), Arc::clone(config), shutdown.clone());
    let agent = ragpipe_agent_worker::spawn(store.clone(), Arc::clone(config), shutdown);
    Ok(tokio::spawn(async move {
        let (i, a) = tokio::join!(ingest, agent);
        i.context("ingest worker task")?.map_err(anyhow::Error::msg)?;
        a.context("agent worker task")?.map_err(anyhow::Error::msg)
    }))
}

/// `ragpipe worker`: consumes the queues until SIGTERM, then finishes what it holds and exits.
pub async fn run(config: Config, concurrency: Option<u32>, metrics_listen: Option<String>) -> anyhow::Result<()> {
    let mut config = config;
    if let Some(n) = concurrency {
        config.worker.concurrency = n.max(1);
    }
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    let shutdown = crate::shutdown::on_signal();
    let ops = match metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let state = ragpipe_api::AppState::new(store.clone(), Arc::clone(&config)).map_err(anyhow::Error::msg)?;
            let router = ragpipe_api::ops_router(state);
            let stop = shutdown.clone();
            eprintln!("ragpipe worker: metrics on http://{addr}/metrics");
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    eprintln!(
        "ragpipe worker: consuming the ingest and agent queues with concurrency {}",
        config.worker.concurrency
    );
    spawn(&store, &config, shutdown.clone())?
        .await
        .context("worker task")??;
    shutdown.cancel();
    if let Some(ops) = ops {
        ops.await.context("metrics server task")?.context("serving metrics")?;
    }
    Ok(())
}
