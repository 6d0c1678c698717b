//! `ragpipe-bench`: the benchmarks, kept out of the production `ragpipe` binary. Each prints a
//! baseline measured in the same run beside its figures (BENCHMARKS.md records them with their
//! commands). Run as `cargo run --release -p ragpipe-bench -- <benchmark>`; the configuration is
//! the same as `ragpipe`'s (environment variables, optional `ragpipe.toml`).
//!
//! This crate is a place where runtime `sqlx::query` calls are allowed: its measurement SQL
//! (creating and dropping scratch databases, bulk loads of a generated corpus, counts, samples
//! of `pg_stat_activity`, `VACUUM`, the `COPY` ceiling) runs on a pool of its own opened from
//! the configured database URL ([`common::measurement_pool`]), never on the store's. What the
//! product does (uploads, searches, reprocessing runs, the workers) goes through the public
//! `ragpipe_store::Store` API and the `ragpipe` commands' library, as the product runs it.

mod common;
mod embed;
mod followup;
mod ingest;
mod reprocess;
mod search;
mod storage;

use clap::{Parser, Subcommand};
use ragpipe_core::Config;
use std::process::ExitCode;

/// ragpipe's benchmarks: each measures against a baseline taken in the same run.
#[derive(Parser, Debug)]
#[command(name = "ragpipe-bench", version, about)]
struct Cli {
    #[command(flatten)]
    config: ragpipe_cli::ConfigFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ingestion throughput on a generated corpus against a COPY ceiling.
    Ingest(ingest::BenchIngestArgs),
    /// Search latency at 100,000 chunks against the bare HNSW query.
    Search(search::BenchSearchArgs),
    /// Reprocessing throughput (re-ingest, re-embed, re-chunk) against a first ingestion.
    Reprocess(reprocess::BenchReprocessArgs),
    /// Follow-up retrieval with and without the conversation (and the reranker, if set).
    Followup(followup::BenchFollowupArgs),
    /// The local embedding model's throughput against an embeddings server of the same model.
    Embed(embed::BenchEmbedArgs),
    /// Bytes on disk per chunk of every table and index of a database, against the raw payload.
    Storage(storage::BenchStorageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ragpipe_cli::run_main(cli.config, |config| run(config, cli.command))
}

async fn run(config: Config, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Ingest(args) => ingest::run(config, args).await,
        Command::Search(args) => search::run(config, args).await,
        Command::Reprocess(args) => reprocess::run(config, args).await,
        Command::Followup(args) => followup::run(config, args).await,
        Command::Embed(args) => embed::run(config, args).await,
        Command::Storage(args) => storage::run(config, args).await,
    }?;
    Ok(ExitCode::SUCCESS)
}
