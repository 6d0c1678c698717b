//! `ragpipe bench ingest`: ingestion throughput on a generated corpus, against the ceiling of a
//! plain `COPY` of the same chunk and posting rows into tables with the same indexes, measured
//! in the same run (the ratio is what to compare across machines).

use crate::bench::{ScratchDatabase, peak_rss_mib, upload_corpus, wait_until_settled};
use clap::Args;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, users};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchIngestArgs {
    /// Documents in the generated corpus.
    #[arg(long, default_value_t = 500)]
    pub docs: usize,
    /// Words per document (about 40 chunks of 512 tokens at the default: generated words are about 5 tokens each).
    #[arg(long, default_value_t = 4_400)]
    pub words: usize,
    /// Database created (dropped first) for the run, on the configured server.
    #[arg(long, default_value = "ragpipe_bench")]
    pub database: String,
}

pub async fn run(config: Config, args: BenchIngestArgs) -> anyhow::Result<()> {
    let scratch = ScratchDatabase::open(config, &args.database, true).await?;
    let config = scratch.config.clone();
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await?;
    let user = UserId::new();
    users::create(
        &store,
        &users::NewUser {
            email: "bench@example.com".into(),
            id: Some(user),
            ..Default::default()
        },
    )
    .await?;

    eprintln!("generating {} documents of {} words", args.docs, args.words);
    let rss_before = peak_rss_mib().unwrap_or(0.0);
    let started = Instant::now();
    let total_bytes = upload_corpus(&store, user, args.docs, args.words, config.worker.max_attempts).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = crate::workers::spawn(&store, &config, shutdown.clone())?;
    wait_until_settled(&store, user).await?;
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = workers.await;
    let mut tx = store.user_tx(user).await?;
    let (ready, chunks): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'ready'), coalesce(sum(chunk_count), 0)::bigint FROM documents",
    )
    .fetch_one(tx.conn())
    .await?;
    drop(tx);
    let peak = peak_rss_mib().unwrap_or(0.0);

    // The ceiling: the same rows, COPY'd into tables with the same indexes (the chunks, and the
    // text leg's postings that the chunk-set write also makes).
    let (copy_rate, chunks_only_rate) = copy_ceiling(&store).await?;
    let rate = chunks as f64 / elapsed;
    println!(
        "ingest benchmark: {} documents ({ready} ready), {chunks} chunks, {:.1} MB",
        args.docs,
        total_bytes as f64 / 1e6
    );
    println!(
        "  pipeline: {elapsed:.1} s, {:.2} documents/s, {rate:.0} chunks/s, {:.2} MB/s",
        ready as f64 / elapsed,
        total_bytes as f64 / 1e6 / elapsed
    );
    println!("  ceiling (COPY of the same chunk and posting rows, same indexes): {copy_rate:.0} chunks/s");
    println!("  of which the chunk rows alone: {chunks_only_rate:.0} chunks/s");
    println!("  pipeline / ceiling: {:.2}", rate / copy_rate);
    println!("  peak RSS: {peak:.0} MiB (before the run {rss_before:.0} MiB)");
    store.pool().close().await;
    let _ = scratch.drop().await;
    Ok(())
}

/// Chunks per second of a binary `COPY` of the pipeline's chunk rows and posting rows into
/// empty copies of their tables with the same indexes, both timed; and of the chunk rows alone.
async fn copy_ceiling(store: &Store) -> anyhow::Result<(f64, f64)> {
    let chunk_columns = "document_id, user_id, chunk_index, content, token_count, page_first, page_last, heading_path, byte_start, byte_end, embedding, embedding_model";
    let posting_columns = "user_id, lexeme, chunk_id, tf, token_count";
    let mut conn = store.pool().acquire().await?;
    let mut secs = 0.0;
    let mut chunk_secs = 0.0;
    for (table, copy_table, columns) in [
        ("document_chunks", "chunk_copy_ceiling", chunk_columns),
        ("search_postings", "posting_copy_ceiling", posting_columns),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {copy_table} (LIKE {table} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)"
        )))
        .execute(&mut *conn)
        .await?;
        let mut out = conn
            .copy_out_raw(&format!("COPY {table} ({columns}) TO STDOUT (FORMAT binary)"))
            .await?;
        let mut data = Vec::new();
        use futures::StreamExt;
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
        drop(out);
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw(&format!("COPY {copy_table} ({columns}) FROM STDIN (FORMAT binary)"))
            .await?;
        copy.send(data).await?;
        copy.finish().await?;
        secs += started.elapsed().as_secs_f64();
        if table == "document_chunks" {
            chunk_secs = secs;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {copy_table}")))
            .execute(&mut *conn)
            .await?;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM document_chunks")
        .fetch_one(&mut *conn)
        .await?;
    Ok((rows as f64 / secs, rows as f64 / chunk_secs))
}
