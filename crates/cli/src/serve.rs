//! `ragpipe serve`: the HTTP API and, unless told otherwise, the workers, in one process; the
//! operations endpoints (`/metrics`, `/readyz` with details) on a listener of their own.

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
    /// Address of the operations endpoints, /metrics, /healthz and /readyz (default:
    /// RAGPIPE_OPS_LISTEN); unauthenticated, keep it private.
    #[arg(long)]
    pub ops_listen: Option<String>,
    /// Serve the API only; leave the queues to `ragpipe worker` processes.
    #[arg(long)]
    pub no_workers: bool,
}

pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(ops_listen) = args.ops_listen {
        config.ops_listen = ops_listen;
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
    // Both addresses are taken before any work starts, so a busy port fails the start.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listening on {} (the API)", config.listen))?;
    let ops_listener = tokio::net::TcpListener::bind(&config.ops_listen)
        .await
        .with_context(|| format!("listening on {} (the operations endpoints)", config.ops_listen))?;
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
    let shown = |l: &tokio::net::TcpListener, configured: &str| {
        l.local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| configured.to_owned())
    };
    eprintln!(
        "ragpipe serving on http://{}{}; metrics on http://{}/metrics",
        shown(&listener, &config.listen),
        if args.no_workers {
            " (API only)"
        } else {
            " with workers"
        },
        shown(&ops_listener, &config.ops_listen),
    );
    let state = ragpipe_api::AppState::new(store, Arc::clone(&config))
        .map_err(anyhow::Error::msg)?
        .with_liveness(liveness);
    let stop = shutdown.clone();
    let ops = tokio::spawn(ragpipe_api::serve_ops(state.clone(), ops_listener, async move {
        stop.cancelled().await
    }));
    let stop = shutdown.clone();
    let served = ragpipe_api::serve(state, listener, async move { stop.cancelled().await })
        .await
        .context("serving HTTP");
    shutdown.cancel();
    let ops_served = ops.await.context("operations endpoints task");
    if let Some(w) = workers {
        w.await.context("worker task")??;
    }
    served?;
    ops_served?.context("serving the operations endpoints")?;
    Ok(())
}
