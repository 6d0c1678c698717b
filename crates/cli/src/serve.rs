//! `ragpipe serve`: the HTTP API and, unless told otherwise, the workers, in one process.

use anyhow::Context;
use clap::Args;
use ragpipe_core::Config;
use ragpipe_store::Store;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default: RAGPIPE_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve the API only; leave the queues to `ragpipe worker` processes.
    #[arg(long)]
    pub no_workers: bool,
}

pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    let report = store
        .migrate(&config.embedding)
        .await
        .context("bringing the schema up to date")?;
    if !report.applied.is_empty() {
        eprintln!("applied {} migration(s)", report.applied.len());
    }
    let shutdown = crate::shutdown::on_signal();
    // Supervised workers report here, and `/readyz` and `/metrics` read it.
    let liveness = ragpipe_store::liveness::Liveness::new();
    let workers = if args.no_workers {
        None
    } else {
        Some(crate::workers::spawn_reporting(
            &store,
            &config,
            shutdown.clone(),
            &liveness,
        )?)
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    eprintln!(
        "ragpipe serving on http://{}{}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.listen.clone()),
        if args.no_workers {
            " (API only)"
        } else {
            " with workers"
        }
    );
    let state = ragpipe_api::AppState::new(store, Arc::clone(&config))
        .map_err(anyhow::Error::msg)?
        .with_liveness(liveness);
    let stop = shutdown.clone();
    ragpipe_api::serve(state, listener, async move { stop.cancelled().await })
        .await
        .context("serving HTTP")?;
    shutdown.cancel();
    if let Some(w) = workers {
        w.await.context("worker task")??;
    }
    Ok(())
}
