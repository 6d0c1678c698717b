//! `ragpipe-bench reprocess`: what reprocessing costs, against a first ingestion of the same
//! corpus measured in the same run (the ratios are what to compare across machines).
//!
//! On a scratch database, with the offline hashed embedder (the model costs nothing there, so
//! the figures are ragpipe's own work: extraction, chunking, the embedding cache, the database):
//!
//! 1. the generated corpus of `ragpipe-bench ingest` is uploaded as the API uploads and ingested through
//!    the queue by the process's workers;
//! 2. every document is re-ingested through reprocessing (`ragpipe reprocess --all --stage
//!    extract`): extracted and chunked again, every vector served by the embedding cache;
//! 3. every document is re-embedded with a second model of another dimension (`--embedding-model
//!    bench-hash-256`): the chunks are kept, only their vectors change;
//! 4. every document is re-chunked at another size (`--chunk-tokens 256 --overlap 32`), which
//!    needs new vectors for (nearly) every text.
//!
//! Phases 2 to 4 run through the code of `ragpipe reprocess` (plan, bounded enqueueing,
//! following the run); the workers run throughout, as a `ragpipe worker` fleet would.
//!
//! Autovacuum is off on the scratch database's tables: after each phase the dead rows and index
//! entries it left are vacuumed, timed apart, so no phase pays for its predecessor's cleanup at
//! an unpredictable moment (pgvector's HNSW vacuum is heavy) and each phase's own cleanup cost is
//! shown.

use crate::common::{
    Corpus, ScratchDatabase, create_user, measurement_pool, peak_rss_mib, reset_peak_rss, upload_corpus,
    wait_until_settled,
};
use anyhow::{Context, bail};
use clap::Args;
use ragpipe_cli::reprocess::{ReprocessArgs, RunResult};
use ragpipe_core::Config;
use ragpipe_store::reprocess::{self, Stage};
use ragpipe_store::{Store, embedding_models};
use serde::Serialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct BenchReprocessArgs {
    /// Documents in the generated corpus (the generator of `ragpipe-bench ingest`).
    #[arg(long, default_value_t = 500)]
    pub docs: usize,
    /// Words per document (about 40 chunks of 512 tokens at the default).
    #[arg(long, default_value_t = 4_400)]
    pub words: usize,
    /// Database created (dropped first) for the run, on the configured server.
    #[arg(long, default_value = "ragpipe_bench_reprocess")]
    pub database: String,
    /// Keep the database after the run.
    #[arg(long)]
    pub keep: bool,
    /// Most documents of a reprocessing run in the queue at once (`ragpipe reprocess
    /// --max-in-flight`; the same default).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_in_flight: u32,
    /// The model phase 3 re-embeds with (offline hashed, recorded for the run).
    #[arg(long, value_name = "NAME", default_value = "bench-hash-256")]
    pub embedding_model: String,
    /// Its dimension (other than the configured model's).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub embedding_dim: u32,
    /// Chunk size phase 4 re-chunks to.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub chunk_tokens: u32,
    /// Chunk overlap phase 4 re-chunks to.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub overlap: u32,
    /// Leave out phase 4 (re-chunking).
    #[arg(long)]
    pub no_rechunk: bool,
    /// Phase 3 inserts every vector into the new model's HNSW index as it writes it (`ragpipe
    /// reprocess --keep-index`), instead of building the index once at the end: the baseline of
    /// the deferred build.
    #[arg(long)]
    pub keep_index: bool,
    /// `maintenance_work_mem` for the deferred index build (`ragpipe reprocess --index-memory`).
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    pub index_memory: String,
    /// Only write the generated corpus into DIR as Markdown files (for `ragpipe ingest`) and exit.
    #[arg(long, value_name = "DIR")]
    pub write_corpus: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    /// What it did.
    name: &'static str,
    /// The equivalent command.
    command: String,
    /// Documents it finished.
    documents: u64,
    /// Chunks it stored or re-embedded.
    chunks: u64,
    /// Wall time.
    seconds: f64,
    /// Texts the model was asked to embed (new embedding cache entries).
    texts_embedded: u64,
    /// Chunks whose vector the embedding cache served (or another chunk of the same text).
    chunks_from_cache: u64,
    /// Tokens sent to the model (usage events).
    model_tokens: u64,
    /// Tokens served by the cache (usage events).
    cached_tokens: u64,
    /// Documents the phase failed on.
    failed: u64,
    /// Peak resident memory of the process during the phase.
    peak_rss_mib: Option<f64>,
    /// `VACUUM ANALYZE` of the database right after the phase: the cleanup it left.
    vacuum_seconds: f64,
    /// CPU time of this process (workers, driver) during the phase.
    cpu_seconds: Option<f64>,
    /// The database's backends over the phase, sampled: average active backends by what they
    /// were doing (`CPU`: running or waiting for a core; otherwise the wait event).
    database_activity: Vec<(String, f64)>,
}

impl Phase {
    fn chunks_per_second(&self) -> f64 {
        self.chunks as f64 / self.seconds
    }

    /// Chunks a second, the vacuum of what the phase left counted in its time.
    fn chunks_per_second_with_vacuum(&self) -> f64 {
        self.chunks as f64 / (self.seconds + self.vacuum_seconds)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    documents: usize,
    bytes: usize,
    embedding_model: String,
    embedding_dim: u32,
    second_model: String,
    second_dim: u32,
    worker_concurrency: u32,
    max_in_flight: u32,
    phases: Vec<Phase>,
    /// Phase 3's chunks/s over phase 2's.
    reembed_over_ingest: f64,
    reembed_over_reingest: f64,
    /// The same, each phase's seconds counting the vacuum of what it left.
    reembed_over_reingest_with_vacuum: f64,
    /// Whether the per-phase peak RSS could be measured (else it is the process's peak so far).
    peak_rss_per_phase: bool,
    /// Correctness checks; a failed one fails the command.
    checks: Vec<String>,
    /// The target: re-embedding only clearly cheaper than re-ingesting.
    target: String,
}

pub async fn run(config: Config, args: BenchReprocessArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.write_corpus {
        return write_corpus(dir, args.docs, args.words);
    }
    let mut config = config;
    // The offline hashed embedder, whatever is configured: the figures are ragpipe's own work.
    if config.embedding_provider() != ragpipe_core::config::EmbeddingProvider::Hashed {
        let defaults = Config::defaults();
        config.embedding.model = defaults.embedding.model;
        config.embedding.dim = defaults.embedding.dim;
        config.embedding.base_url = None;
        config.embedding.provider = Some("hashed".into());
    }
    if args.embedding_model == config.embedding.model || args.embedding_dim == config.embedding.dim {
        bail!(
            "--embedding-model/--embedding-dim must differ from the configured model ({}, {}-d)",
            config.embedding.model,
            config.embedding.dim
        );
    }
    if !args.no_rechunk
        && (args.chunk_tokens, args.overlap) == (config.chunking.max_tokens, config.chunking.overlap_tokens)
    {
        bail!("--chunk-tokens/--overlap are the configured chunk settings: phase 4 would have nothing to do");
    }
    let scratch = ScratchDatabase::open(config, &args.database, true).await?;
    let config = Arc::new(scratch.config.clone());
    let report = async {
        let store = Store::connect(&config).await?;
        let db = measurement_pool(&config).await?;
        let report = bench(&store, &db, &config, &args).await;
        db.close().await;
        report
    }
    .await;
    if args.keep {
        eprintln!("kept database {}", args.database);
    } else {
        scratch.drop().await?;
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.checks.iter().any(|c| c.starts_with("FAILED")) {
        bail!("a check failed (see above)");
    }
    Ok(())
}

/// The four phases on the scratch database: `store` for what the product does, `db` for the
/// benchmark's own SQL.
async fn bench(store: &Store, db: &PgPool, config: &Arc<Config>, args: &BenchReprocessArgs) -> anyhow::Result<Report> {
    store.migrate(&config.embedding).await?;
    reprocess::check_admin(store).await?;
    sqlx::raw_sql(
        "DO $$ DECLARE t regclass; BEGIN \
             FOR t IN SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace \
                      WHERE c.relkind = 'r' AND n.nspname IN ('public', 'apalis') LOOP \
                 EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false)', t); \
             END LOOP; END $$",
    )
    .execute(db)
    .await
    .context("turning autovacuum off on the scratch database")?;
    let user = create_user(store, "bench@example.com").await?;
    let per_phase_rss = reset_peak_rss();
    let sampler = ActivitySampler::start(db);
    let mut checks = Vec::new();
    let mut phases = Vec::new();

    // 1. Upload and ingest, as `ragpipe-bench ingest` does.
    eprintln!("1. ingesting {} generated documents of {} words", args.docs, args.words);
    let before = Counters::read(db).await?;
    sampler.take();
    let started = Instant::now();
    let bytes = upload_corpus(store, user, args.docs, args.words, config.worker.max_attempts).await?;
    let stop = CancellationToken::new();
    let workers = ragpipe_cli::workers::spawn(store, config, stop.clone())?;
    let result = async {
        wait_until_settled(db, user).await?;
        let seconds = started.elapsed().as_secs_f64();
        let (ready, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'ready'), count(*) FILTER (WHERE status = 'failed') FROM documents",
        )
        .fetch_one(db)
        .await?;
        let mut ingest = Counters::read(db).await?.phase(
            &before,
            "ingest",
            "upload + `ragpipe worker` (as `ragpipe-bench ingest`)".into(),
            ready as u64,
            failed as u64,
            seconds,
            sampler.take(),
        );
        ingest.vacuum_seconds = vacuum(db).await?;
        if failed > 0 {
            checks.push(format!("FAILED: {failed} documents failed their first ingest"));
        }
        phases.push(ingest);
        reprocess_phases(store, db, config, args, &sampler, &mut phases, &mut checks).await
    }
    .await;
    sampler.stop();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), workers).await;
    result?;

    let ingest_rate = phases[0].chunks_per_second();
    let rate = |name: &str, with_vacuum: bool| {
        phases
            .iter()
            .find(|p| p.name == name)
            .map(|p| {
                if with_vacuum {
                    p.chunks_per_second_with_vacuum()
                } else {
                    p.chunks_per_second()
                }
            })
            .unwrap_or(f64::NAN)
    };
    let reembed_over_reingest = rate("re-embed", false) / rate("re-ingest", false);
    let reembed_over_reingest_with_vacuum = rate("re-embed", true) / rate("re-ingest", true);
    let reembed_over_ingest = rate("re-embed", false) / ingest_rate;
    let target = format!(
        "target (a whole-corpus re-embed >= {GOAL:.1}x the chunks/s of the full first ingestion): {} \
         ({reembed_over_ingest:.2}x; first ingest {ingest_rate:.0} chunks/s; {reembed_over_reingest:.2}x a re-ingestion)",
        if reembed_over_ingest >= GOAL { "met" } else { "missed" }
    );
    Ok(Report {
        documents: args.docs,
        bytes,
        embedding_model: config.embedding.model.clone(),
        embedding_dim: config.embedding.dim,
        second_model: args.embedding_model.clone(),
        second_dim: args.embedding_dim,
        worker_concurrency: config.worker.concurrency,
        max_in_flight: args.max_in_flight,
        phases,
        reembed_over_ingest,
        reembed_over_reingest,
        reembed_over_reingest_with_vacuum,
        peak_rss_per_phase: per_phase_rss,
        checks,
        target,
    })
}

/// The goal: a whole-corpus re-embed at least this many times the chunks/s of the full first
/// ingestion, in the same run.
const GOAL: f64 = 3.0;

/// Phases 2 to 4, each a `ragpipe reprocess` run over every document, with its checks.
async fn reprocess_phases(
    store: &Store,
    db: &PgPool,
    config: &Config,
    args: &BenchReprocessArgs,
    sampler: &ActivitySampler,
    phases: &mut Vec<Phase>,
    checks: &mut Vec<String>,
) -> anyhow::Result<()> {
    let base = || ReprocessArgs {
        all: true,
        users: Vec::new(),
        documents: Vec::new(),
        status: None,
        since: None,
        from_embedding_model: None,
        extractor_version: None,
        embedding_model: None,
        chunk_tokens: None,
        overlap: None,
        stage: None,
        dry_run: false,
        max_in_flight: args.max_in_flight,
        no_local_workers: true,
        keep_index: args.keep_index,
        index_memory: args.index_memory.clone(),
        json: args.json,
    };
    let shutdown = ragpipe_cli::shutdown::on_signal();
    let first = chunk_stats(db).await?;
    let every = |phase: &Phase, checks: &mut Vec<String>| {
        if phase.documents != args.docs as u64 || phase.failed > 0 {
            checks.push(format!(
                "FAILED: {} finished {} of {} documents, failed {}",
                phase.name, phase.documents, args.docs, phase.failed
            ));
        }
    };

    // 2. Full re-ingestion: extract and chunk again; every text is in the embedding cache.
    eprintln!("2. re-ingesting every document (--stage extract)");
    let phase = reprocess_phase(
        store,
        db,
        config,
        "re-ingest",
        "--stage extract".into(),
        ReprocessArgs {
            stage: Some(Stage::Extract),
            ..base()
        },
        sampler,
        &shutdown,
    )
    .await?;
    let after = chunk_stats(db).await?;
    checks.push(check(
        phase.texts_embedded == 0 && phase.model_tokens == 0 && after.chunks == first.chunks,
        format!(
            "re-ingest: {} chunks before and after, {} texts sent to the model, {} of {} chunks served by the cache",
            first.chunks, phase.texts_embedded, phase.chunks_from_cache, phase.chunks
        ),
    ));
    every(&phase, checks);
    phases.push(phase);

    // 3. Re-embed only, to a model of another dimension recorded as `ragpipe migrate` records one.
    embedding_models::ensure(store, &args.embedding_model, args.embedding_dim, None)
        .await
        .with_context(|| format!("recording {}", args.embedding_model))?;
    eprintln!("3. re-embedding every document with {}", args.embedding_model);
    let before = chunk_stats(db).await?;
    let phase = reprocess_phase(
        store,
        db,
        config,
        "re-embed",
        format!("--embedding-model {}", args.embedding_model),
        ReprocessArgs {
            embedding_model: Some(args.embedding_model.clone()),
            ..base()
        },
        sampler,
        &shutdown,
    )
    .await?;
    let after = chunk_stats(db).await?;
    let (old_chunks, wrong_dim, old_documents): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM document_chunks WHERE embedding_model IS DISTINCT FROM $1), \
                (SELECT count(*) FROM document_chunks WHERE vector_dims(embedding) <> $2), \
                (SELECT count(*) FROM documents WHERE embedding_model IS DISTINCT FROM $1)",
    )
    .bind(&args.embedding_model)
    .bind(args.embedding_dim as i32)
    .fetch_one(db)
    .await?;
    checks.push(check(
        old_chunks == 0 && wrong_dim == 0 && old_documents == 0,
        format!(
            "re-embed: {old_chunks} chunks and {old_documents} documents left on another model, {wrong_dim} vectors \
             not {}-d",
            args.embedding_dim
        ),
    ));
    checks.push(check(
        after == before,
        format!(
            "re-embed: chunks kept ({} chunks, highest id {} before; {}, {} after)",
            before.chunks, before.max_id, after.chunks, after.max_id
        ),
    ));
    every(&phase, checks);
    phases.push(phase);

    // 4. Re-chunk at another size, back on the configured model.
    if !args.no_rechunk {
        eprintln!(
            "4. re-chunking every document to {}/{} with {}",
            args.chunk_tokens, args.overlap, config.embedding.model
        );
        let phase = reprocess_phase(
            store,
            db,
            config,
            "re-chunk",
            format!("--chunk-tokens {} --overlap {}", args.chunk_tokens, args.overlap),
            ReprocessArgs {
                chunk_tokens: Some(args.chunk_tokens),
                overlap: Some(args.overlap),
                ..base()
            },
            sampler,
            &shutdown,
        )
        .await?;
        let stale: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM documents WHERE chunk_max_tokens IS DISTINCT FROM $1 \
             OR chunk_overlap_tokens IS DISTINCT FROM $2 OR embedding_model IS DISTINCT FROM $3",
        )
        .bind(args.chunk_tokens as i32)
        .bind(args.overlap as i32)
        .bind(&config.embedding.model)
        .fetch_one(db)
        .await?;
        checks.push(check(
            stale == 0,
            format!(
                "re-chunk: {stale} documents not at {}/{} on {}; {} of {} chunks served by the cache",
                args.chunk_tokens, args.overlap, config.embedding.model, phase.chunks_from_cache, phase.chunks
            ),
        ));
        every(&phase, checks);
        phases.push(phase);
    }
    Ok(())
}

fn check(ok: bool, what: String) -> String {
    format!("{}: {what}", if ok { "ok" } else { "FAILED" })
}

/// One `ragpipe reprocess` run (what `reprocess::run` does without a dry run, the workers being
/// this process's), timed from planning to the last document finished.
#[allow(clippy::too_many_arguments)]
async fn reprocess_phase(
    store: &Store,
    db: &PgPool,
    config: &Config,
    name: &'static str,
    flags: String,
    args: ReprocessArgs,
    sampler: &ActivitySampler,
    shutdown: &CancellationToken,
) -> anyhow::Result<Phase> {
    let before = Counters::read(db).await?;
    reset_peak_rss();
    sampler.take();
    let started = Instant::now();
    let selection = args.selection()?;
    let target = args.target(config);
    ragpipe_cli::reprocess::target_model(store, config, &target.embedding_model, false).await?;
    let run = reprocess::run_key(&selection, &target);
    let candidates = reprocess::candidates(store, &selection).await?;
    let result: RunResult =
        ragpipe_cli::reprocess::execute(store, config, &run, &target, &selection, candidates, &args, shutdown).await?;
    let seconds = started.elapsed().as_secs_f64();
    let activity = sampler.take();
    if result.interrupted {
        bail!("interrupted");
    }
    for f in &result.failed {
        eprintln!("  failed {}: {}", f.document_id, f.error);
    }
    let mut phase = Counters::read(db).await?.phase(
        &before,
        name,
        format!("ragpipe reprocess --all {flags}"),
        result.finished,
        result.failed.len() as u64,
        seconds,
        activity,
    );
    phase.vacuum_seconds = vacuum(db).await?;
    Ok(phase)
}

/// Vacuums and analyzes the scratch database; returns the seconds it took.
async fn vacuum(db: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE)")
        .execute(db)
        .await
        .context("vacuuming")?;
    Ok(started.elapsed().as_secs_f64())
}

/// Totals read before and after a phase.
struct Counters {
    cpu_seconds: Option<f64>,
    cache_entries: i64,
    prompt_tokens: i64,
    cached_tokens: i64,
    chunks: ChunkStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
struct ChunkStats {
    chunks: i64,
    max_id: i64,
}

async fn chunk_stats(db: &PgPool) -> anyhow::Result<ChunkStats> {
    Ok(
        sqlx::query_as("SELECT count(*) AS chunks, coalesce(max(id), 0) AS max_id FROM document_chunks")
            .fetch_one(db)
            .await?,
    )
}

impl Counters {
    /// Read on the measurement pool (every user's rows).
    async fn read(db: &PgPool) -> anyhow::Result<Counters> {
        let (cache_entries, prompt_tokens, cached_tokens): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM embedding_cache), \
                    (SELECT coalesce(sum(prompt_tokens), 0)::int8 FROM usage_events), \
                    (SELECT coalesce(sum(cached_tokens), 0)::int8 FROM usage_events)",
        )
        .fetch_one(db)
        .await?;
        Ok(Counters {
            cpu_seconds: cpu_seconds(),
            cache_entries,
            prompt_tokens,
            cached_tokens,
            chunks: chunk_stats(db).await?,
        })
    }

    /// The phase that ran between `before` and these totals.
    #[allow(clippy::too_many_arguments)]
    fn phase(
        &self,
        before: &Counters,
        name: &'static str,
        command: String,
        documents: u64,
        failed: u64,
        seconds: f64,
        database_activity: Vec<(String, f64)>,
    ) -> Phase {
        let texts_embedded = (self.cache_entries - before.cache_entries).max(0) as u64;
        let chunks = self.chunks.chunks as u64;
        Phase {
            name,
            command,
            documents,
            chunks,
            seconds,
            texts_embedded,
            chunks_from_cache: chunks.saturating_sub(texts_embedded),
            model_tokens: (self.prompt_tokens - before.prompt_tokens).max(0) as u64,
            cached_tokens: (self.cached_tokens - before.cached_tokens).max(0) as u64,
            failed,
            peak_rss_mib: peak_rss_mib(),
            vacuum_seconds: 0.0,
            cpu_seconds: self.cpu_seconds.zip(before.cpu_seconds).map(|(a, b)| a - b),
            database_activity,
        }
    }
}

fn print_report(r: &Report) {
    let chunks = r.phases.first().map_or(0, |p| p.chunks);
    println!(
        "reprocess benchmark: {} documents, {:.1} MB, {chunks} chunks after the first ingest",
        r.documents,
        r.bytes as f64 / 1e6
    );
    println!(
        "embeddings: the offline hashed embedder ({}, {}-d; phase 3 moves to {}, {}-d): the model costs nothing, \
         so the figures are ragpipe's own work (extraction, chunking, embedding cache, database)",
        r.embedding_model, r.embedding_dim, r.second_model, r.second_dim
    );
    println!(
        "workers: {} ingest jobs at once; reprocessing runs keep at most {} documents in the queue (--max-in-flight)",
        r.worker_concurrency, r.max_in_flight
    );
    println!();
    let ingest = r.phases.first().map_or(f64::NAN, Phase::chunks_per_second);
    println!(
        "{:<10} {:>5} {:>7} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>10} {:>8} {:>7}  command",
        "phase",
        "docs",
        "chunks",
        "seconds",
        "vacuum",
        "docs/s",
        "chunks/s",
        "vs ingest",
        "embedded",
        "from cache",
        "peak RSS",
        "CPU s"
    );
    for p in &r.phases {
        println!(
            "{:<10} {:>5} {:>7} {:>8.1} {:>7.1} {:>7.2} {:>9.0} {:>9.2} {:>9} {:>10} {:>8} {:>7}  {}",
            p.name,
            p.documents,
            p.chunks,
            p.seconds,
            p.vacuum_seconds,
            p.documents as f64 / p.seconds,
            p.chunks_per_second(),
            p.chunks_per_second() / ingest,
            p.texts_embedded,
            p.chunks_from_cache,
            p.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0} MiB")),
            p.cpu_seconds.map_or("-".into(), |s| format!("{s:.1}")),
            p.command
        );
    }
    println!();
    println!(
        "re-embed only / full first ingestion (chunks/s): {:.2}; / full re-ingestion: {:.2}; counting the vacuum of what each left: {:.2}{}",
        r.reembed_over_ingest,
        r.reembed_over_reingest,
        r.reembed_over_reingest_with_vacuum,
        if r.peak_rss_per_phase {
            ""
        } else {
            "  (peak RSS: the process's so far, per-phase reset unavailable)"
        }
    );
    for p in &r.phases {
        if p.failed > 0 {
            println!("{}: {} documents failed", p.name, p.failed);
        }
        println!(
            "{}: {} tokens sent to the model, {} served by the embedding cache",
            p.name, p.model_tokens, p.cached_tokens
        );
    }
    println!("database backends (average active, by what they were doing; CPU includes waiting for a core):");
    for p in &r.phases {
        let activity: Vec<String> = p
            .database_activity
            .iter()
            .take(4)
            .map(|(what, n)| format!("{what} {n:.2}"))
            .collect();
        println!("  {}: {}", p.name, activity.join(", "));
    }
    for c in &r.checks {
        println!("{c}");
    }
    println!("{}", r.target);
}

/// Writes the corpus `ragpipe-bench ingest` and this benchmark generate, one Markdown file a document.
fn write_corpus(dir: &std::path::Path, docs: usize, words: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut corpus = Corpus::new();
    let mut bytes = 0;
    for i in 0..docs {
        let text = corpus.document(i, words);
        bytes += text.len();
        let path = dir.join(Corpus::filename(i));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "wrote {docs} documents ({:.1} MB) into {}",
        bytes as f64 / 1e6,
        dir.display()
    );
    Ok(())
}

/// CPU time (user + system) of this process so far, in seconds (Linux, `/proc/self/stat`, whose
/// times are in USER_HZ, 100 a second).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Samples what the scratch database's active backends are doing, every 100 ms, on its own
/// connection (it does not count itself).
struct ActivitySampler {
    counts: Arc<std::sync::Mutex<(u64, std::collections::BTreeMap<String, u64>)>>,
    stop: CancellationToken,
}

impl ActivitySampler {
    fn start(db: &PgPool) -> ActivitySampler {
        let counts: Arc<std::sync::Mutex<(u64, std::collections::BTreeMap<String, u64>)>> = Arc::default();
        let stop = CancellationToken::new();
        let (pool, shared, stopped) = (db.clone(), Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            let Ok(mut conn) = pool.acquire().await else {
                return;
            };
            loop {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT CASE WHEN backend_type = 'autovacuum worker' THEN 'autovacuum' \
                                 ELSE coalesce(wait_event_type || ':' || wait_event, 'CPU') END, count(*) \
                     FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                       AND ((backend_type = 'client backend' AND state = 'active') \
                            OR backend_type = 'autovacuum worker') \
                     GROUP BY 1",
                )
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_default();
                if let Ok(mut c) = shared.lock() {
                    c.0 += 1;
                    for (what, n) in rows {
                        *c.1.entry(what).or_default() += n as u64;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.cancelled() => return,
                }
            }
        });
        ActivitySampler { counts, stop }
    }

    /// The average active backends by activity since the last call, busiest first.
    fn take(&self) -> Vec<(String, f64)> {
        let Ok(mut c) = self.counts.lock() else {
            return Vec::new();
        };
        let (samples, counts) = std::mem::take(&mut *c);
        let mut out: Vec<(String, f64)> = counts
            .into_iter()
            .map(|(what, n)| (what, n as f64 / samples.max(1) as f64))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for ActivitySampler {
    /// Stops sampling, so the connection it holds goes back to the pool (whose `close` waits
    /// for it) however the benchmark ends.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
