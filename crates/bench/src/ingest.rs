//! `ragpipe-bench ingest`: ingestion throughput on a generated corpus (or the files of
//! `--documents`), against the ceiling of a plain `COPY` of the same chunk and posting rows into
//! tables with the same indexes, measured in the same run (the ratio is what to compare across
//! machines). With `--versus-embedding-url`, the same corpus is ingested a second time with
//! embeddings from that server, and the two runs' times are compared.

use crate::common::{ScratchDatabase, create_user, measurement_pool, peak_rss_mib, upload_corpus, wait_until_settled};
use crate::storage::{self, StorageReport};
use anyhow::Context;
use clap::Args;
use ragpipe_core::config::{EmbeddingProvider, ModelEndpoint};
use ragpipe_core::{Config, UserId};
use ragpipe_store::{Store, documents};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
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
    /// Ingest the files of this directory (every format ingest reads) instead of a generated
    /// corpus, e.g. `fixtures/eval-unseen/documents`.
    #[arg(long)]
    pub documents: Option<PathBuf>,
    /// Database created (dropped first) for the run, on the configured server.
    #[arg(long, default_value = "ragpipe_bench")]
    pub database: String,
    /// After the run, ingest the same corpus again in the same command with embeddings from
    /// this OpenAI-compatible server (same model name and dimension; e.g. the MiniLM server of
    /// `scripts/real-models`), and print the ratio of the two runs' times.
    #[arg(long)]
    pub versus_embedding_url: Option<String>,
    /// The cap on a chunk's tokens (cl100k) for the `--versus-embedding-url` run: the
    /// server's model must read every chunk whole (`scripts/real-models env` uses 200 for
    /// MiniLM's 256 word pieces).
    #[arg(long, default_value_t = 200)]
    pub versus_max_input_tokens: u32,
    /// Concurrent requests to the `--versus-embedding-url` server (`scripts/real-models env`: 1,
    /// as the server computes one request at a time).
    #[arg(long, default_value_t = 1)]
    pub versus_concurrency: u32,
    /// After the run, ingest the same corpus again into this existing database (a populated
    /// one, e.g. the corpus `ragpipe-bench search --keep` left), which is neither recreated nor
    /// dropped, and compare the two rates. The first run's database is the empty-table baseline.
    #[arg(long)]
    pub into: Option<String>,
    /// With `--into`: ingest as this existing user (by email) instead of a new one, so the
    /// writes land among that user's chunks, statistics and postings.
    #[arg(long, requires = "into")]
    pub into_user: Option<String>,
}

/// What one ingest run measured.
struct RunFigures {
    documents: usize,
    ready: i64,
    chunks: i64,
    bytes: usize,
    seconds: f64,
}

impl RunFigures {
    fn print(&self, label: &str) {
        println!(
            "  {label}: {:.1} s, {} documents ({} ready), {} chunks: {:.2} documents/s, {:.0} chunks/s, {:.2} MB/s",
            self.seconds,
            self.documents,
            self.ready,
            self.chunks,
            self.ready as f64 / self.seconds,
            self.chunks as f64 / self.seconds,
            self.bytes as f64 / 1e6 / self.seconds
        );
    }
}

/// The corpus of a run: generated, or the files of a directory.
enum Source<'a> {
    Generated { docs: usize, words: usize },
    Files(&'a [(String, Vec<u8>)]),
}

pub async fn run(config: Config, args: BenchIngestArgs) -> anyhow::Result<()> {
    let files = match &args.documents {
        Some(dir) => Some(read_files(dir)?),
        None => None,
    };
    let source = match &files {
        Some(files) => Source::Files(files),
        None => Source::Generated {
            docs: args.docs,
            words: args.words,
        },
    };
    let rss_before = peak_rss_mib().unwrap_or(0.0);
    let embedder = describe_embedding(&config.embedding);
    let (figures, copy, storage) = ingest_once(config.clone(), &args.database, &source, true).await?;
    let peak = peak_rss_mib().unwrap_or(0.0);
    let (copy_rate, chunks_only_rate) = copy.unwrap_or_default();
    let rate = figures.chunks as f64 / figures.seconds;
    println!(
        "ingest benchmark: {} documents ({} ready), {} chunks, {:.1} MB; embeddings: {embedder}",
        figures.documents,
        figures.ready,
        figures.chunks,
        figures.bytes as f64 / 1e6
    );
    figures.print("pipeline");
    println!("  ceiling (COPY of the same chunk and posting rows, same indexes): {copy_rate:.0} chunks/s");
    println!("  of which the chunk rows alone: {chunks_only_rate:.0} chunks/s");
    println!("  pipeline / ceiling: {:.2}", rate / copy_rate);
    println!("  peak RSS: {peak:.0} MiB (before the run {rss_before:.0} MiB)");
    let (storage, vacuumed) = storage;
    storage.print();
    println!(
        "after VACUUM FULL (the live rows alone; a plain vacuum leaves the files as they are and their free space for later writes):"
    );
    vacuumed.print();

    if let Some(into) = &args.into {
        let populated = ingest_into(config.clone(), into, args.into_user.as_deref(), &source).await?;
        println!("into the populated database {into} ({}):", populated.existing);
        populated.figures.print("pipeline");
        println!(
            "  rate into the populated database / into the empty one: {:.2}",
            (populated.figures.chunks as f64 / populated.figures.seconds) / rate
        );
    }

    let Some(url) = &args.versus_embedding_url else {
        return Ok(());
    };
    let mut versus = config;
    versus.embedding.provider = Some(EmbeddingProvider::Api.as_str().to_owned());
    versus.embedding.base_url = Some(url.clone());
    versus.embedding.max_input_tokens = args.versus_max_input_tokens;
    versus.embedding.concurrency = args.versus_concurrency;
    versus.fit_chunks_to_embedding();
    let versus_embedder = describe_embedding(&versus.embedding);
    let (other, _, _) = ingest_once(versus, &format!("{}_versus", args.database), &source, false).await?;
    println!("versus: the same corpus with embeddings from {versus_embedder}");
    other.print("pipeline");
    println!(
        "  time {embedder} / {versus_embedder}: {:.2} ({:.2}x as fast)",
        figures.seconds / other.seconds,
        other.seconds / figures.seconds
    );
    Ok(())
}

fn describe_embedding(endpoint: &ModelEndpoint) -> String {
    match endpoint.embedding_provider() {
        EmbeddingProvider::Api => format!(
            "{} at {}",
            endpoint.model,
            endpoint.base_url.as_deref().unwrap_or("(no base URL)")
        ),
        EmbeddingProvider::Local => format!("{} in-process", endpoint.model),
        EmbeddingProvider::Hashed => format!("{} (offline)", endpoint.model),
    }
}

/// The files of `dir` that ingest reads, by name.
fn read_files(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for path in crate::common::files_in(dir)? {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if ragpipe_ingest::detect(&bytes).is_ok() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            files.push((name, bytes));
        }
    }
    anyhow::ensure!(!files.is_empty(), "no document ingest reads in {}", dir.display());
    Ok(files)
}

/// Uploads the corpus into a fresh database `name`, runs the workers until every document is
/// ready or failed, and measures it; with `ceiling`, also the COPY ceiling of its rows.
async fn ingest_once(
    config: Config,
    name: &str,
    source: &Source<'_>,
    ceiling: bool,
) -> anyhow::Result<(RunFigures, Option<(f64, f64)>, (StorageReport, StorageReport))> {
    let scratch = ScratchDatabase::open(config, name, true).await?;
    let config = Arc::new(scratch.config.clone());
    let measured = async {
        let store = Store::connect(&config).await?;
        store.migrate(&config.embedding).await?;
        let db = measurement_pool(&config).await?;
        let user = create_user(&store, "bench@example.com").await?;
        let measured = measure_once(&store, &db, &config, source, ceiling, user).await;
        let storage = storage::measure(&db).await;
        // Then the same without the dead row versions the run left (each chunk-set write adds
        // blocks to the text index and merges some), which autovacuum would reclaim for reuse.
        let vacuumed = match sqlx::raw_sql("VACUUM FULL").execute(&db).await {
            Ok(_) => storage::measure(&db).await,
            Err(e) => Err(e.into()),
        };
        db.close().await;
        let (figures, copy) = measured?;
        Ok::<_, anyhow::Error>((figures, copy, (storage?, vacuumed?)))
    }
    .await;
    let dropped = scratch.drop().await;
    let figures = measured?;
    dropped?;
    Ok(figures)
}

/// A run into a database that already holds a corpus.
struct PopulatedRun {
    figures: RunFigures,
    /// What the database held before, said.
    existing: String,
}

/// Uploads the corpus into the existing database `name` as `user_email` (or a new user) and
/// runs the workers until every document settles. The database is kept as it was, plus this
/// corpus.
async fn ingest_into(
    config: Config,
    name: &str,
    user_email: Option<&str>,
    source: &Source<'_>,
) -> anyhow::Result<PopulatedRun> {
    let scratch = ScratchDatabase::open(config, name, false).await?;
    let config = Arc::new(scratch.config.clone());
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await?;
    let db = measurement_pool(&config).await?;
    let (chunks, users): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM document_chunks), (SELECT count(*) FROM users)")
            .fetch_one(&db)
            .await
            .with_context(|| format!("reading what {name} holds"))?;
    let user = match user_email {
        Some(email) => UserId(
            sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                .bind(email)
                .fetch_one(&db)
                .await
                .with_context(|| format!("finding the user {email} in {name}"))?,
        ),
        None => create_user(&store, &format!("bench-into-{}@example.com", uuid::Uuid::now_v7())).await?,
    };
    let existing = format!(
        "{chunks} chunks of {users} users; as {}",
        user_email.unwrap_or("a new user")
    );
    let figures = measure_once(&store, &db, &config, source, false, user).await;
    db.close().await;
    Ok(PopulatedRun {
        figures: figures?.0,
        existing,
    })
}

/// [`ingest_once`] on its scratch database: `store` for what the product does, `db` for the
/// benchmark's own SQL.
async fn measure_once(
    store: &Store,
    db: &PgPool,
    config: &Arc<Config>,
    source: &Source<'_>,
    ceiling: bool,
    user: UserId,
) -> anyhow::Result<(RunFigures, Option<(f64, f64)>)> {
    // What this run uploads is what was created from here on (the database may hold more).
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(db)
        .await
        .context("reading the server's clock")?;
    let started = Instant::now();
    let (documents, bytes) = match source {
        Source::Generated { docs, words } => {
            eprintln!("generating {docs} documents of {words} words");
            let bytes = upload_corpus(store, user, *docs, *words, config.worker.max_attempts).await?;
            (*docs, bytes)
        }
        Source::Files(files) => (
            files.len(),
            upload_files(store, user, files, config.worker.max_attempts).await?,
        ),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let workers = ragpipe_cli::workers::spawn(store, config, shutdown.clone())?;
    let settled = wait_until_settled(db, user).await;
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = workers.await;
    settled?;
    let (ready, chunks): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'ready'), coalesce(sum(chunk_count), 0)::bigint \
         FROM documents WHERE user_id = $1 AND created_at >= $2",
    )
    .bind(user.0)
    .bind(since)
    .fetch_one(db)
    .await
    .context("counting the ingested documents and chunks")?;
    // The ceiling: the same rows, COPY'd into tables with the same indexes (the chunks, and the
    // text leg's postings that the chunk-set write also makes).
    let copy = if ceiling {
        Some(copy_ceiling(db).await.context("measuring the COPY ceiling")?)
    } else {
        None
    };
    Ok((
        RunFigures {
            documents,
            ready,
            chunks,
            bytes,
            seconds,
        },
        copy,
    ))
}

/// Uploads `files` for `user` as ingest's upload does (each queues its job); returns their bytes.
async fn upload_files(
    store: &Store,
    user: UserId,
    files: &[(String, Vec<u8>)],
    max_attempts: u32,
) -> anyhow::Result<usize> {
    let mut tx = store.user_tx(user).await?;
    let mut total = 0;
    for (name, bytes) in files {
        let format = ragpipe_ingest::detect(bytes).with_context(|| format!("reading {name}"))?;
        documents::create(
            &mut tx,
            &documents::NewDocument::new(name, format.content_type(), bytes, serde_json::json!({})),
            max_attempts,
        )
        .await?;
        total += bytes.len();
    }
    tx.commit().await?;
    Ok(total)
}

/// Chunks per second of a binary `COPY` of the pipeline's chunk rows and posting blocks into
/// empty copies of their tables with the same indexes, both timed; and of the chunk rows alone.
async fn copy_ceiling(db: &PgPool) -> anyhow::Result<(f64, f64)> {
    let chunk_columns = "document_id, user_id, chunk_index, content, token_count, page_first, page_last, heading_path, byte_start, byte_end, embedding, embedding_model";
    let block_columns = "user_id, lexeme, first_chunk, offsets, stats";
    let mut conn = db.acquire().await?;
    let mut secs = 0.0;
    let mut chunk_secs = 0.0;
    for (table, copy_table, columns) in [
        ("document_chunks", "chunk_copy_ceiling", chunk_columns),
        ("search_blocks", "block_copy_ceiling", block_columns),
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
