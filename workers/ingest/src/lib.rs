//! The ingest job: extract → chunk → embed → store, for one document.
//!
//! Delivery is at least once, so the handler is idempotent: it derives everything from the
//! document's row and bytes, replaces the chunk set in one transaction, and records usage with
//! a key derived from the job id. Errors decide what happens next: a permanent one (bad file,
//! over a limit) marks the document `failed` with the reason and ends the job; a transient one
//! (model API, database connection) returns an error so the queue retries it after a backoff;
//! the last attempt marks the document failed so nothing is left `embedding` forever.

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use ragpipe_core::{Config, DocumentStatus, ErrorKind};
use ragpipe_ingest::{ChunkSettings, Chunker, Extracted, Limits};
use ragpipe_llm::{Embedder, PriceTable};
use ragpipe_store::chunks::{ChunkSetInfo, NewChunk};
use ragpipe_store::jobs::{INGEST_QUEUE, IngestJob};
use ragpipe_store::usage::{NewUsage, UsageKind, UsageOrigin};
use ragpipe_store::{Store, StoreError, documents};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, info, info_span, warn};

/// Chunks embedded between two progress updates.
const EMBED_SLICE: usize = 256;

/// Everything an ingest job needs, built once per process and shared by all jobs.
pub struct IngestContext {
    store: Store,
    config: Arc<Config>,
    embedder: Embedder,
    chunker: Arc<Chunker>,
    limits: Limits,
    prices: PriceTable,
}

/// A failed ingest step, classified.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// Whether retrying can help.
    pub kind: ErrorKind,
    /// What went wrong, readable by the document's owner.
    pub message: String,
}

impl JobError {
    fn permanent(message: impl Into<String>) -> JobError {
        JobError {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> JobError {
        JobError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// How a job ended (when it did not fail in a retryable way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The document is ready with this many chunks.
    Ready {
        /// Chunks stored.
        chunks: usize,
    },
    /// The document failed permanently with this reason.
    Failed(String),
    /// Nothing to do (already ready or failed, or deleted).
    Skipped,
}

impl IngestContext {
    /// Builds the models and the chunker from the configuration.
    pub fn new(store: Store, config: Arc<Config>) -> Result<IngestContext, String> {
        let embedder = Embedder::new(&config.embedding).map_err(|e| format!("embedding model: {e}"))?;
        let chunker =
            Chunker::new(ChunkSettings::from_config(&config.chunking)).map_err(|e| format!("chunker: {e}"))?;
        let prices = PriceTable::from_setting(config.prices.as_deref()).map_err(|e| format!("RAGPIPE_PRICES: {e}"))?;
        Ok(IngestContext {
            store,
            limits: Limits::from_config(&config.limits),
            config,
            embedder,
            chunker: Arc::new(chunker),
            prices,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Runs the whole pipeline for one document. `job_key` identifies the job across retries (its
/// usage event's idempotency key is derived from it).
pub async fn ingest_document(ctx: &IngestContext, job: IngestJob, job_key: &str) -> Result<Outcome, JobError> {
    let store = &ctx.store;
    let doc_id = job.document_id;
    let mut tx = store.user_tx(job.user_id).await?;
    let document = match documents::get(&mut tx, doc_id).await {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => return Ok(Outcome::Skipped),
        Err(e) => return Err(e.into()),
    };
    if document.status().is_terminal() {
        return Ok(Outcome::Skipped);
    }
    documents::set_stage(&mut tx, doc_id, DocumentStatus::Extracting, 0.05).await?;
    let bytes = documents::bytes(&mut tx, doc_id).await?;
    tx.commit().await?;

    let started = Instant::now();
    let limits = ctx.limits.clone();
    let extracted = tokio::task::spawn_blocking(move || ragpipe_ingest::extract(&bytes, &limits))
        .instrument(info_span!("extract"))
        .await
        .map_err(|e| JobError::permanent(format!("extraction crashed: {e}")))?;
    stage_seconds("extract", started);
    let extracted: Extracted = match extracted {
        Ok(x) => x,
        Err(e) => return fail(ctx, job, &e.to_string()).await,
    };

    set_stage(ctx, job, DocumentStatus::Chunking, 0.25).await?;
    let started = Instant::now();
    let chunker = Arc::clone(&ctx.chunker);
    let (extracted, chunks) = tokio::task::spawn_blocking(move || {
        let chunks = chunker.chunk(&extracted);
        (extracted, chunks)
    })
    .instrument(info_span!("chunk"))
    .await
    .map_err(|e| JobError::permanent(format!("chunking crashed: {e}")))?;
    stage_seconds("chunk", started);
    if chunks.is_empty() {
        return fail(ctx, job, "no extractable text").await;
    }

    set_stage(ctx, job, DocumentStatus::Embedding, 0.3).await?;
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(chunks.len());
    let (mut prompt_tokens, mut requests) = (0u64, 0u32);
    for (i, slice) in chunks.chunks(EMBED_SLICE).enumerate() {
        let inputs: Vec<String> = slice.iter().map(|c| c.content.clone()).collect();
        let embedded = ctx
            .embedder
            .embed(&inputs)
            .instrument(info_span!("embed", inputs = inputs.len()))
            .await
            .map_err(|e| {
                metrics::counter!("ragpipe_embedding_errors_total").increment(1);
                JobError {
                    kind: e.kind(),
                    message: format!("embedding {}: {e}", document.filename),
                }
            })?;
        metrics::counter!("ragpipe_embedding_requests_total").increment(u64::from(embedded.requests));
        metrics::counter!("ragpipe_embedding_retries_total").increment(u64::from(embedded.retries));
        metrics::counter!("ragpipe_embedding_rate_limited_total").increment(u64::from(embedded.rate_limited));
        metrics::counter!("ragpipe_embedding_tokens_total").increment(embedded.prompt_tokens);
        prompt_tokens += embedded.prompt_tokens;
        requests += embedded.requests;
        vectors.extend(embedded.vectors);
        let done = ((i + 1) * EMBED_SLICE).min(chunks.len()) as f32 / chunks.len() as f32;
        if (i + 1) * EMBED_SLICE < chunks.len() {
            set_stage(ctx, job, DocumentStatus::Embedding, 0.3 + 0.65 * done).await?;
        }
    }
    stage_seconds("embed", started);

    let started = Instant::now();
    let rows: Vec<NewChunk> = chunks
        .into_iter()
        .zip(vectors)
        .map(|(c, embedding)| NewChunk {
            index: c.index,
            content: c.content,
            token_count: c.token_count,
            page_first: c.page_first,
            page_last: c.page_last,
            heading_path: c.heading_path,
            byte_range: c.byte_range,
            embedding,
        })
        .collect();
    let failed_pages = serde_json::to_value(&extracted.failed_pages).unwrap_or_default();
    let settings = ctx.chunker.settings();
    let model = ctx.embedder.model();
    let mut tx = store.user_tx(job.user_id).await?;
    // The document may have been deleted while it was being embedded: then there is nothing to
    // store (and the chunk insert would violate its foreign key).
    if matches!(documents::get(&mut tx, doc_id).await, Err(StoreError::NotFound(_))) {
        return Ok(Outcome::Skipped);
    }
    ragpipe_store::chunks::replace(
        &mut tx,
        doc_id,
        &rows,
        &ChunkSetInfo {
            embedding_model: model,
            max_tokens: settings.max_tokens,
            overlap_tokens: settings.overlap_tokens,
            tokenizer: &settings.tokenizer,
            extractor_version: extracted.extractor_version,
            title: extracted.title.as_deref(),
            language: extracted.language.as_deref(),
            page_count: Some(extracted.pages.len() as u32).filter(|n| *n > 0),
            failed_pages,
        },
    )
    .await?;
    ragpipe_store::usage::record(
        &mut tx,
        &NewUsage {
            kind: UsageKind::Embedding,
            model,
            prompt_tokens,
            completion_tokens: 0,
            cached_tokens: 0,
            requests,
            cost: ctx.prices.cost(model, prompt_tokens, 0),
            idempotency_key: format!("ingest:{job_key}"),
            document_id: Some(doc_id.0),
            message_id: None,
            request_id: None,
            origin: UsageOrigin::User,
        },
    )
    .await?;
    tx.commit().await?;
    stage_seconds("store", started);
    Ok(Outcome::Ready { chunks: rows.len() })
}

async fn set_stage(ctx: &IngestContext, job: IngestJob, status: DocumentStatus, progress: f32) -> Result<(), JobError> {
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    documents::set_stage(&mut tx, job.document_id, status, progress).await?;
    tx.commit().await?;
    Ok(())
}

async fn fail(ctx: &IngestContext, job: IngestJob, reason: &str) -> Result<Outcome, JobError> {
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    documents::fail(&mut tx, job.document_id, reason).await?;
    tx.commit().await?;
    Ok(Outcome::Failed(reason.to_owned()))
}

fn stage_seconds(stage: &'static str, started: Instant) {
    metrics::histogram!("ragpipe_ingest_stage_seconds", "stage" => stage).record(started.elapsed().as_secs_f64());
}

/// Backoff before a transient failure is handed back to the queue (the queue itself retries
/// at once): exponential in the attempt, with full jitter, capped at a minute.
fn backoff(attempt: usize) -> Duration {
    let ceiling_ms = 500u64.saturating_mul(1 << attempt.min(7)).min(60_000);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

async fn handle(
    job: IngestJob,
    ctx: Data<Arc<IngestContext>>,
    attempt: Attempt,
    task_id: TaskId,
) -> Result<(), BoxDynError> {
    let span = info_span!("ingest", document_id = %job.document_id, user_id = %job.user_id, job_id = %task_id, attempt = attempt.current());
    async move {
        let max_attempts = ctx.config.worker.max_attempts.max(1) as usize;
        match ingest_document(&ctx, job, &task_id.to_string()).await {
            Ok(outcome) => {
                let label = match &outcome {
                    Outcome::Ready { .. } => "ready",
                    Outcome::Failed(_) => "failed",
                    Outcome::Skipped => "skipped",
                };
                metrics::counter!("ragpipe_ingest_documents_total", "outcome" => label).increment(1);
                info!(?outcome, "ingest finished");
                Ok(())
            }
            Err(e) if e.kind.is_retryable() && attempt.current() + 1 < max_attempts => {
                metrics::counter!("ragpipe_ingest_retries_total").increment(1);
                let wait = backoff(attempt.current());
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "ingest failed; will retry");
                tokio::time::sleep(wait).await;
                Err(Box::new(e) as BoxDynError)
            }
            Err(e) => {
                let reason = if e.kind.is_retryable() {
                    format!("gave up after {} attempts: {}", attempt.current() + 1, e.message)
                } else {
                    e.message.clone()
                };
                warn!(error = %reason, "ingest failed permanently");
                metrics::counter!("ragpipe_ingest_documents_total", "outcome" => "failed").increment(1);
                let _ = fail(&ctx, job, &reason).await;
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

/// The queue configuration ingest workers consume with.
pub fn queue_config(config: &Config) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(INGEST_QUEUE)
        .heartbeat_interval(Duration::from_secs(config.worker.heartbeat_secs.max(1)))
        .missed_heartbeats(3)
        .batch_size(config.worker.concurrency.max(1) as usize)
}

/// Runs an ingest worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// ones in flight and returns.
pub async fn run(ctx: Arc<IngestContext>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    // Chunks reference their model, and a model keeps its dimension: check both before taking jobs.
    ragpipe_store::embedding_models::ensure(
        &ctx.store,
        ctx.embedder.model(),
        ctx.embedder.dim() as u32,
        ctx.config.embedding.base_url.as_deref(),
    )
    .await
    .map_err(|e| format!("embedding model {}: {e}", ctx.embedder.model()))?;
    let concurrency = ctx.config.worker.concurrency.max(1) as usize;
    // LISTEN/NOTIFY wakes the worker the moment a job is committed; polling alone backs off
    // while idle, so an upload after a quiet spell would wait seconds.
    let backend = PostgresStorage::<IngestJob>::new(ctx.store.pool())
        .with_config(queue_config(&ctx.config))
        .with_pubsub();
    // The worker id is its name: unique per process, so a restarted process never inherits (and
    // keeps alive) the jobs of the one that died.
    let name = ragpipe_store::jobs::worker_name("ingest");
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx)
        .concurrency(concurrency)
        .build(handle);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| format!("ingest worker: {e}"))
}

/// Starts an ingest worker on the current runtime; it stops when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let ctx = Arc::new(IngestContext::new(store, config)?);
        run(ctx, async move { shutdown.cancelled().await }).await
    })
}
