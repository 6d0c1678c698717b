//! `ragpipe`: the one binary. Every subcommand reads the same configuration (environment
//! variables, optional `ragpipe.toml`; see the README's table).

mod admin;
mod ask;
mod demo;
mod doctor;
mod extract;
mod ingest;
mod search;
mod serve;
mod usage;

use ragpipe_cli::{eval, reprocess, shutdown, workers};

use clap::{Parser, Subcommand};
use ragpipe_core::Config;
use std::process::ExitCode;

/// Document ingestion and question answering on PostgreSQL + pgvector.
#[derive(Parser, Debug)]
#[command(name = "ragpipe", version, about)]
struct Cli {
    #[command(flatten)]
    config: ragpipe_cli::ConfigFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply database migrations (safe to run from several processes at once).
    Migrate {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the database, pgvector, migrations and model endpoints.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the main job end to end: migrate, ingest the fixture documents, search them.
    Demo(demo::DemoArgs),
    /// Serve the HTTP API (and, unless --no-workers, the workers) until SIGTERM.
    Serve(serve::ServeArgs),
    /// Run background workers until SIGTERM.
    Worker {
        /// Jobs processed at once (default: RAGPIPE_WORKER_CONCURRENCY).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9090).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// Upload files and directories, then wait until each document is ready or failed.
    Ingest(ingest::IngestArgs),
    /// Redo documents from the stage that needs it (new chunk settings, embedding model or
    /// extractor), through the job queue, resumably.
    Reprocess(reprocess::ReprocessArgs),
    /// Search a user's documents (hybrid, vector or text).
    Search(search::SearchArgs),
    /// Ask a question over a user's documents; the answer streams to the terminal.
    Ask(ask::AskArgs),
    /// Retrieval quality on the fixture set: recall@k and MRR@10 per mode.
    Eval(eval::EvalArgs),
    /// Print a file's extracted text or chunks, without touching the database.
    Extract(extract::ExtractArgs),
    /// Manage users.
    #[command(subcommand)]
    Users(admin::UsersCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Tokens and cost per day, model or kind (one user's, or every user's).
    Usage(usage::UsageArgs),
    /// Plans and their monthly token and storage budgets.
    #[command(subcommand)]
    Plans(admin::PlansCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ragpipe_cli::run_main(cli.config, |config| run(config, cli.command))
}

async fn run(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { json } => {
            let store = ragpipe_store::Store::connect(&config).await?;
            let report = store.migrate(&config.embedding).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            for r in &report.repaired {
                println!(
                    "migration {} had been applied from its earlier text of {}; added {}",
                    r.version, r.from_commit, r.added
                );
            }
            if report.applied.is_empty() {
                println!("schema is current (version {})", report.current.unwrap_or_default());
            } else {
                println!(
                    "applied {} migration(s); schema is at version {}",
                    report.applied.len(),
                    report.current.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => doctor::run(&config, json).await,
        Command::Demo(args) => demo::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Worker {
            concurrency,
            metrics_listen,
        } => workers::run(config, concurrency, metrics_listen)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Ingest(args) => Ok(if ingest::run(config, args).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Reprocess(args) => Ok(if reprocess::run(config, args).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Search(args) => search::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Ask(args) => ask::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Extract(args) => extract::run(&args, &config).map(|()| ExitCode::SUCCESS),
        Command::Users(cmd) => admin::users(&config, cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Keys(cmd) => admin::keys(&config, cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Usage(args) => usage::run(config, args).await.map(|()| ExitCode::SUCCESS),
        Command::Plans(cmd) => admin::plans(&config, cmd).await.map(|()| ExitCode::SUCCESS),
    }
}
