//! `ragpipe bench ingest`: ingestion throughput on a generated corpus, against the ceiling of a
//! plain `COPY` of the same chunk rows into a table with the same indexes, measured in the same
//! run (the ratio is what to compare across machines).

use crate::bench::{Rng, ScratchDatabase};
use clap::Args;
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, documents, users};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A vocabulary of pronounceable words and a Zipf-like sampler over it: a few words are very
/// common, most are rare, as in real text.
struct Corpus {
    words: Vec<String>,
    rng: Rng,
}

impl Corpus {
    fn new() -> Corpus {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "st", "tr", "pl", "gr",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io"];
        const CODAS: &[&str] = &["", "n", "r", "s", "t", "l", "m", "nd", "rk", "st"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut words = Vec::with_capacity(8000);
        for _ in 0..8000 {
            let syllables = 1 + rng.below(3);
            let mut w = String::new();
            for _ in 0..syllables {
                w.push_str(ONSETS[rng.below(ONSETS.len())]);
                w.push_str(VOWELS[rng.below(VOWELS.len())]);
                w.push_str(CODAS[rng.below(CODAS.len())]);
            }
            words.push(w);
        }
        Corpus { words, rng }
    }

    fn word(&mut self) -> &str {
        // Rank ~ 1/u: squaring a uniform draw skews it toward the head of the vocabulary.
        let u = (self.rng.next() % 1_000_000) as f64 / 1_000_000.0;
        let rank = ((u * u * u) * self.words.len() as f64) as usize;
        &self.words[rank.min(self.words.len() - 1)]
    }

    fn document(&mut self, n: usize, words: usize) -> String {
        let mut out = format!("# Generated document {n}\n\n");
        let mut written = 0;
        let mut section = 0;
        while written < words {
            if written % 600 == 0 {
                section += 1;
                out.push_str(&format!("## Section {section} {}\n\n", self.word().to_owned()));
            }
            let len = 60 + self.rng.below(60);
            for i in 0..len {
                if i > 0 {
                    out.push(' ');
                }
                let w = self.word().to_owned();
                out.push_str(&w);
                if self.rng.below(14) == 0 {
                    out.push('.');
                }
            }
            out.push_str(".\n\n");
            written += len;
        }
        out
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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
    let mut corpus = Corpus::new();
    let mut total_bytes = 0usize;
    let rss_before = peak_rss_mib().unwrap_or(0.0);
    let started = Instant::now();
    // Each document is generated, uploaded and dropped in turn, so the process holds one at a
    // time and peak memory measures the pipeline, not the corpus.
    let mut tx = store.user_tx(user).await?;
    for i in 0..args.docs {
        let text = corpus.document(i, args.words);
        total_bytes += text.len();
        let new = documents::NewDocument {
            filename: &format!("doc-{i:04}.md"),
            content_type: "text/markdown",
            bytes: text.as_bytes(),
            sha256: Sha256::digest(text.as_bytes()).into(),
            metadata: serde_json::json!({}),
        };
        documents::create(&mut tx, &new, config.worker.max_attempts).await?;
    }
    tx.commit().await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = crate::workers::spawn(&store, &config, shutdown.clone())?;
    loop {
        let mut tx = store.user_tx(user).await?;
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE status NOT IN ('ready', 'failed')")
            .fetch_one(tx.conn())
            .await?;
        drop(tx);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    // The ceiling: the same rows, COPY'd into a table with the same indexes.
    let copy_rate = copy_ceiling(&store).await?;
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
    println!("  ceiling (COPY of the same chunk rows, same indexes): {copy_rate:.0} rows/s");
    println!("  pipeline / ceiling: {:.2}", rate / copy_rate);
    println!("  peak RSS: {peak:.0} MiB (before the run {rss_before:.0} MiB)");
    store.pool().close().await;
    let _ = scratch.drop().await;
    Ok(())
}

async fn copy_ceiling(store: &Store) -> anyhow::Result<f64> {
    let columns = "document_id, user_id, chunk_index, content, token_count, page_first, page_last, heading_path, byte_start, byte_end, embedding, embedding_model";
    let mut conn = store.pool().acquire().await?;
    sqlx::query("CREATE TABLE chunk_copy_ceiling (LIKE document_chunks INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)")
        .execute(&mut *conn)
        .await?;
    let mut out = conn
        .copy_out_raw(&format!("COPY document_chunks ({columns}) TO STDOUT (FORMAT binary)"))
        .await?;
    let mut data = Vec::new();
    use futures::StreamExt;
    while let Some(chunk) = out.next().await {
        data.extend_from_slice(&chunk?);
    }
    drop(out);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM document_chunks")
        .fetch_one(&mut *conn)
        .await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY chunk_copy_ceiling ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE chunk_copy_ceiling").execute(&mut *conn).await?;
    Ok(rows as f64 / secs)
}
