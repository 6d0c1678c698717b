//! The ingest job: extract → chunk → embed → store, for one document.
//!
//! Delivery is at least once, so the handler is idempotent: it derives everything from the
//! document's row and bytes, replaces the chunk set in one transaction, and records each model
//! call as it completes, with its vectors in the user's embedding cache, in one transaction
//! keyed once per call: every call is billed once, whether the job then succeeds, fails or is
//! killed, and a retry takes the vectors from the cache instead of calling again. Errors
//! decide what happens next: a permanent one (bad file, over a limit) marks the document
//! `failed` with the reason and ends the job; a transient one (model API, database connection)
//! returns an error so the queue retries it after a backoff; the last attempt marks the
//! document failed so nothing is left `embedding` forever.

use apalis::prelude::*;
use futures::StreamExt;
use ragpipe_core::{Config, DocumentStatus, ErrorKind, SetupError};
use ragpipe_ingest::{ChunkSettings, Chunker, Extracted, Limits, ModelLimit};
use ragpipe_llm::{Embedder, Embedders, PriceTable};
use ragpipe_store::chunks::{ChunkSetInfo, NewChunk};
use ragpipe_store::documents::Document;
use ragpipe_store::jobs::{INGEST_QUEUE, IngestJob};
use ragpipe_store::reprocess::{Pending, Stage};
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::usage::{NewUsage, UsageKind, UsageOrigin};
use ragpipe_store::{Store, StoreError, documents, embedding_cache, embedding_models};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{Instrument, info, info_span, warn};

/// Chunks embedded between two progress updates.
const EMBED_SLICE: usize = 256;

/// Everything an ingest job needs, built once per process and shared by all jobs.
pub struct IngestContext {
    store: Store,
    config: Arc<Config>,
    embedders: Embedders,
    chunker: Arc<Chunker>,
    /// Chunkers for other settings or models (reprocessing runs), built once each.
    chunkers: std::sync::Mutex<HashMap<(u32, u32, String), Arc<Chunker>>>,
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

/// The limit chunks must hold to for `embedder` beyond the chunker's own: a local model's input
/// limit in its own word pieces (it refuses longer inputs rather than cut them); none for the
/// other providers, whose limit is `embedding.max_input_tokens`, already the chunk size's cap.
pub fn model_limit(embedder: &Embedder) -> Option<ModelLimit> {
    let model = Arc::clone(embedder.local_model()?);
    Some(ModelLimit {
        max_tokens: model.max_input_tokens(),
        // A text the tokenizer cannot read cannot be sent either: count it as over the limit.
        count: Arc::new(move |text: &str| model.count_tokens(text).unwrap_or(usize::MAX / 2)),
    })
}

/// The chunker ingest uses for `embedder`: `settings`, capped by the model's own limit when
/// the embedder is a local model ([`model_limit`]). `ragpipe extract --chunks` and the
/// benchmarks build theirs here too, so that they cut what ingest cuts.
pub fn chunker_for(settings: ChunkSettings, embedder: &Embedder) -> Result<Chunker, ragpipe_ingest::ChunkError> {
    let chunker = Chunker::new(settings)?;
    Ok(match model_limit(embedder) {
        Some(limit) => chunker.with_model_limit(limit),
        None => chunker,
    })
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
    pub fn new(store: Store, config: Arc<Config>) -> Result<IngestContext, SetupError> {
        let embedders = Embedders::new(&config.embedding).map_err(SetupError::of("embedding model"))?;
        let chunker = chunker_for(ChunkSettings::from_config(&config.chunking), embedders.configured())
            .map_err(SetupError::of("chunker"))?;
        let prices = PriceTable::from_setting(config.prices.as_deref()).map_err(SetupError::of("RAGPIPE_PRICES"))?;
        Ok(IngestContext {
            store,
            limits: Limits::from_config(&config.limits),
            config,
            embedders,
            chunker: Arc::new(chunker),
            chunkers: Default::default(),
            prices,
        })
    }

    /// The embedder of `model`: the configured one, or another recorded model (with its own
    /// dimension and endpoint) that a reprocessing run moves documents to.
    async fn embedder_for(&self, model: &str) -> Result<Embedder, JobError> {
        if model == self.embedders.configured().model() {
            return Ok(self.embedders.configured().clone());
        }
        let recorded = embedding_models::get(&self.store, model).await?.ok_or_else(|| {
            JobError::permanent(format!(
                "embedding model {model:?} is not recorded: configure it (RAGPIPE_EMBEDDING_MODEL, _DIM, \
                 _BASE_URL) and run `ragpipe migrate` before reprocessing to it"
            ))
        })?;
        self.embedders
            .get(&recorded.model, recorded.dim as u32, recorded.base_url.as_deref())
            .map_err(|e| JobError::permanent(format!("embedding model {model}: {e}")))
    }

    /// The chunker for `max_tokens`/`overlap_tokens` with the configured tokenizer, holding
    /// chunks to `embedder`'s input limit when it is a local model ([`model_limit`]).
    fn chunker_for(&self, max_tokens: u32, overlap_tokens: u32, embedder: &Embedder) -> Result<Arc<Chunker>, JobError> {
        let configured = self.chunker.settings();
        if (configured.max_tokens, configured.overlap_tokens) == (max_tokens, overlap_tokens)
            && embedder.model() == self.embedders.configured().model()
        {
            return Ok(Arc::clone(&self.chunker));
        }
        let key = (max_tokens, overlap_tokens, embedder.model().to_owned());
        let mut chunkers = self
            .chunkers
            .lock()
            .map_err(|_| JobError::permanent("chunker registry poisoned"))?;
        if let Some(c) = chunkers.get(&key) {
            return Ok(Arc::clone(c));
        }
        let settings = ChunkSettings {
            max_tokens,
            overlap_tokens,
            tokenizer: configured.tokenizer.clone(),
        };
        let chunker = Arc::new(
            chunker_for(settings, embedder)
                .map_err(|e| JobError::permanent(format!("chunk settings {max_tokens}/{overlap_tokens}: {e}")))?,
        );
        chunkers.insert(key, Arc::clone(&chunker));
        Ok(chunker)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Runs the pipeline for one document. `job_key` identifies the job across retries (its usage
/// event's idempotency key is derived from it).
///
/// A first ingest runs every stage, with the document's status following them. A reprocessing
/// job (`job.reprocess`) does what its run asks on the document's `reprocess` column: a ready
/// document keeps its status and its current chunk set, which stays searchable, until the new
/// set (or, for the `embed` stage, the new vectors of the same chunks) replaces it in one
/// transaction; a failed document goes through every stage again.
pub async fn ingest_document(ctx: &IngestContext, job: &IngestJob, job_key: &str) -> Result<Outcome, JobError> {
    let store = &ctx.store;
    let doc_id = job.document_id;
    let mut tx = store.user_tx(job.user_id).await?;
    let document = match documents::get(&mut tx, doc_id).await {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => return Ok(Outcome::Skipped),
        Err(e) => return Err(e.into()),
    };
    let pending = match &job.reprocess {
        None if document.status()?.is_terminal() => return Ok(Outcome::Skipped),
        None => None,
        Some(run) => match Pending::from_column(document.reprocess.as_ref()) {
            Some(p) if &p.run == run && p.in_flight() => Some(p),
            // Done, failed, or superseded by another run.
            _ => return Ok(Outcome::Skipped),
        },
    };
    // A ready document is redone in the background: no status changes, old chunks searchable.
    let background = pending.is_some() && document.status()? == DocumentStatus::Ready;
    let run = pending.as_ref().map(|p| p.run.as_str());
    let embedder = match &pending {
        Some(p) => ctx.embedder_for(&p.embedding_model).await?,
        None => ctx.embedders.configured().clone(),
    };
    let mut tx = if background && let Some(p) = pending.as_ref().filter(|p| p.stage == Stage::Embed) {
        tx.commit().await?;
        if let Some(outcome) = reembed(ctx, job, &document, p, &embedder, job_key).await? {
            return Ok(outcome);
        }
        // The stored chunks are longer than the new model reads (a move to the local model):
        // they are cut again from the text, for it, below.
        store.user_tx(job.user_id).await?
    } else {
        tx
    };
    if !background {
        documents::set_stage(&mut tx, doc_id, DocumentStatus::Extracting, 0.05).await?;
    }
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

    if !background {
        set_stage(ctx, job, DocumentStatus::Chunking, 0.25).await?;
    }
    let started = Instant::now();
    let chunker = match &pending {
        Some(p) => ctx.chunker_for(p.chunk_max_tokens, p.chunk_overlap_tokens, &embedder)?,
        None => Arc::clone(&ctx.chunker),
    };
    let chunking = Arc::clone(&chunker);
    let (extracted, chunks) = tokio::task::spawn_blocking(move || {
        let chunks = chunking.chunk(&extracted);
        (extracted, chunks)
    })
    .instrument(info_span!("chunk"))
    .await
    .map_err(|e| JobError::permanent(format!("chunking crashed: {e}")))?;
    stage_seconds("chunk", started);
    if chunks.is_empty() {
        return fail(ctx, job, "no extractable text").await;
    }

    if !background {
        set_stage(ctx, job, DocumentStatus::Embedding, 0.3).await?;
    }
    let started = Instant::now();
    let texts: Vec<(&str, u32)> = chunks.iter().map(|c| (c.content.as_str(), c.token_count)).collect();
    let ledger = Ledger {
        job,
        job_key,
        origin: origin_of(pending.as_ref()),
    };
    let (vectors, spent) = embed_cached(ctx, &embedder, &texts, &document.filename, &ledger, !background).await?;
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
    let warnings = serde_json::to_value(&extracted.warnings).unwrap_or_default();
    let settings = chunker.settings();
    let model = embedder.model();
    let mut tx = store.user_tx(job.user_id).await?;
    // The document may have been deleted while it was being embedded: then there is nothing to
    // store (and the chunk insert would violate its foreign key).
    match documents::get(&mut tx, doc_id).await {
        Err(StoreError::NotFound(_)) => return Ok(Outcome::Skipped),
        Err(e) => return Err(e.into()),
        // Another run took the document over while this one worked: leave it to that run.
        Ok(now) if run.is_some() && Pending::from_column(now.reprocess.as_ref()).map(|p| p.run).as_deref() != run => {
            return Ok(Outcome::Skipped);
        }
        Ok(_) => {}
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
            warnings,
            run,
        },
    )
    .await?;
    record_usage(&mut tx, &ledger, model, &spent).await?;
    tx.commit().await?;
    stage_seconds("store", started);
    Ok(Outcome::Ready { chunks: rows.len() })
}

/// The `embed` stage alone: the document's chunks, as stored, get vectors by `embedder`'s model
/// in one update; their text, and so the text search, do not change. `None` when a stored chunk
/// is longer than the model reads ([`model_limit`]): the document must be chunked again for it
/// rather than have its chunks cut.
async fn reembed(
    ctx: &IngestContext,
    job: &IngestJob,
    document: &Document,
    pending: &Pending,
    embedder: &Embedder,
    job_key: &str,
) -> Result<Option<Outcome>, JobError> {
    let doc_id = job.document_id;
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    let chunks = ragpipe_store::chunks::texts(&mut tx, doc_id).await?;
    tx.commit().await?;
    if chunks.is_empty() {
        return fail(ctx, job, "no chunks to re-embed").await.map(Some);
    }
    if let Some(limit) = model_limit(embedder) {
        let contents: Vec<String> = chunks.iter().map(|c| c.content.clone()).collect();
        let fits = tokio::task::spawn_blocking(move || contents.iter().all(|c| (limit.count)(c) <= limit.max_tokens))
            .await
            .map_err(|e| JobError::permanent(format!("counting chunk tokens crashed: {e}")))?;
        if !fits {
            return Ok(None);
        }
    }
    let started = Instant::now();
    let texts: Vec<(&str, u32)> = chunks
        .iter()
        .map(|c| (c.content.as_str(), c.token_count as u32))
        .collect();
    let ledger = Ledger {
        job,
        job_key,
        origin: origin_of(Some(pending)),
    };
    let (vectors, spent) = embed_cached(ctx, embedder, &texts, &document.filename, &ledger, false).await?;
    stage_seconds("embed", started);
    let started = Instant::now();
    let ids: Vec<i64> = chunks.iter().map(|c| c.id).collect();
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    match documents::get(&mut tx, doc_id).await {
        Err(StoreError::NotFound(_)) => return Ok(Some(Outcome::Skipped)),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    ragpipe_store::chunks::reembed(&mut tx, doc_id, &ids, &vectors, embedder.model(), Some(&pending.run)).await?;
    record_usage(&mut tx, &ledger, embedder.model(), &spent).await?;
    tx.commit().await?;
    stage_seconds("store", started);
    Ok(Some(Outcome::Ready { chunks: ids.len() }))
}

/// What the cache saved a chunk set: input tokens whose vectors came from the user's cache
/// without any model call by this job (the calls themselves are recorded one by one, as they
/// complete, by [`record_call`]).
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    cached_tokens: u64,
}

/// Who a job's model calls are recorded for, and under which keys.
struct Ledger<'a> {
    job: &'a IngestJob,
    job_key: &'a str,
    origin: UsageOrigin,
}

impl Ledger<'_> {
    /// The prefix of the keys of this job's model calls, whatever the attempt.
    fn call_prefix(&self) -> String {
        format!("ingest:{}:call:", self.job_key)
    }
}

/// Vectors for `texts` (text, token count) by `embedder`: from the user's embedding cache where
/// it has them, from the model for the rest (each distinct text once). Each model call, as it
/// completes, is recorded with its vectors in one transaction ([`record_call`]), so a call is
/// in the ledger once whether the job then succeeds, fails or is killed, and a retry finds its
/// vectors in the cache. When a call fails for good, the calls in flight are still awaited and
/// recorded, no new one starts, and the first error is returned. With `progress`, the
/// document's progress moves through the embedding stage.
async fn embed_cached(
    ctx: &IngestContext,
    embedder: &Embedder,
    texts: &[(&str, u32)],
    filename: &str,
    ledger: &Ledger<'_>,
    progress: bool,
) -> Result<(Vec<Vec<f32>>, Spent), JobError> {
    let (model, dim) = (embedder.model(), embedder.dim() as u32);
    let hashes: Vec<[u8; 32]> = texts.iter().map(|(t, _)| embedding_cache::text_hash(t)).collect();
    let mut tx = ctx.store.user_tx(ledger.job.user_id).await?;
    let cached = embedding_cache::lookup(&mut tx, model, dim, &hashes).await?;
    tx.commit().await?;
    // Vectors an earlier attempt of this job paid for are not a saving of the cache.
    let own = ledger.call_prefix();
    let mut served = HashSet::new();
    let mut known: HashMap<[u8; 32], Vec<f32>> = HashMap::with_capacity(texts.len());
    for (hash, entry) in cached {
        if !entry.usage_key.as_deref().is_some_and(|k| k.starts_with(&own)) {
            served.insert(hash);
        }
        known.insert(hash, entry.vector);
    }
    let mut seen = HashSet::new();
    let misses: Vec<usize> = (0..texts.len())
        .filter(|&i| !known.contains_key(&hashes[i]) && seen.insert(hashes[i]))
        .collect();
    let counts: Vec<usize> = misses.iter().map(|&i| texts[i].1 as usize).collect();
    let stop = AtomicBool::new(false);
    let (misses_ref, stop_ref) = (&misses, &stop);
    let mut calls = futures::stream::iter(embedder.plan(&counts))
        .map(|range| async move {
            let slice = &misses_ref[range];
            if stop_ref.load(Ordering::Relaxed) {
                return (slice, None);
            }
            let inputs: Vec<String> = slice.iter().map(|&j| texts[j].0.to_owned()).collect();
            let result = embedder
                .embed(&inputs)
                .instrument(info_span!("embed", inputs = inputs.len()))
                .await;
            (slice, Some(result))
        })
        .buffer_unordered(embedder.concurrency());
    let mut failed: Option<JobError> = None;
    let mut embedded_inputs = 0usize;
    let mut reported = 0usize;
    while let Some((slice, result)) = calls.next().await {
        let embedded = match result {
            None => continue,
            Some(Ok(embedded)) => embedded,
            Some(Err(e)) => {
                metrics::counter!("ragpipe_embedding_errors_total").increment(1);
                stop.store(true, Ordering::Relaxed);
                failed.get_or_insert(JobError {
                    kind: e.kind(),
                    message: format!("embedding {filename}: {e}"),
                });
                continue;
            }
        };
        metrics::counter!("ragpipe_embedding_requests_total").increment(u64::from(embedded.requests));
        metrics::counter!("ragpipe_embedding_retries_total").increment(u64::from(embedded.retries));
        metrics::counter!("ragpipe_embedding_rate_limited_total").increment(u64::from(embedded.rate_limited));
        metrics::counter!("ragpipe_embedding_tokens_total").increment(embedded.prompt_tokens);
        if embedded.truncated > 0 {
            // The chunker fits chunks to the model's limit, so this is a defect to see, not a
            // state to live with: part of those chunks is not in their vectors.
            warn!(
                document = %filename,
                chunks = embedded.truncated,
                model = embedder.model(),
                "chunks longer than the embedding model reads were cut before embedding"
            );
        }
        let entries: Vec<([u8; 32], &[f32])> = slice
            .iter()
            .zip(&embedded.vectors)
            .map(|(&j, v)| (hashes[j], v.as_slice()))
            .collect();
        record_call(ctx, ledger, embedder, &entries, &embedded).await?;
        for (&j, vector) in slice.iter().zip(embedded.vectors) {
            known.insert(hashes[j], vector);
        }
        embedded_inputs += slice.len();
        if progress && failed.is_none() && embedded_inputs - reported >= EMBED_SLICE && embedded_inputs < misses.len() {
            reported = embedded_inputs;
            let done = embedded_inputs as f32 / misses.len() as f32;
            set_stage(ctx, ledger.job, DocumentStatus::Embedding, 0.3 + 0.65 * done).await?;
        }
    }
    drop(calls);
    if let Some(e) = failed {
        return Err(e);
    }
    let mut spent = Spent::default();
    let mut counted = HashSet::new();
    let mut vectors = Vec::with_capacity(texts.len());
    for (i, hash) in hashes.iter().enumerate() {
        // A text repeated in the chunk set was served once, by the cache or by the model.
        if served.contains(hash) && counted.insert(*hash) {
            spent.cached_tokens += u64::from(texts[i].1);
        }
        let vector = known
            .get(hash)
            .cloned()
            .ok_or_else(|| JobError::permanent(format!("embedding {filename}: no vector for chunk {i}")))?;
        vectors.push(vector);
    }
    metrics::counter!("ragpipe_embedding_cached_tokens_total").increment(spent.cached_tokens);
    Ok((vectors, spent))
}

/// Records one completed model call: its vectors in the user's cache and its usage event, in
/// one transaction, under a key made once for the call, so that replaying the transaction
/// (after a lost connection) cannot count the call twice.
async fn record_call(
    ctx: &IngestContext,
    ledger: &Ledger<'_>,
    embedder: &Embedder,
    entries: &[([u8; 32], &[f32])],
    embedded: &ragpipe_llm::Embedded,
) -> Result<(), JobError> {
    let (model, dim) = (embedder.model(), embedder.dim() as u32);
    let key = format!("{}{}", ledger.call_prefix(), uuid::Uuid::new_v4());
    let usage = NewUsage {
        kind: UsageKind::Embedding,
        model,
        prompt_tokens: embedded.prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
        requests: embedded.requests,
        cost: ctx.prices.cost(model, embedded.prompt_tokens, 0),
        idempotency_key: key.clone(),
        document_id: Some(ledger.job.document_id.0),
        message_id: None,
        request_id: None,
        origin: ledger.origin,
    };
    // A lost connection must not lose the record: the call was made and billed. Retried as
    // long as a polling command rides out a database restart.
    retry("recording an embedding call", RetryPolicy::POLLING, || async {
        let mut tx = ctx.store.user_tx(ledger.job.user_id).await?;
        embedding_cache::insert(&mut tx, model, dim, entries, &key).await?;
        ragpipe_store::usage::record(&mut tx, &usage).await?;
        tx.commit().await
    })
    .await
    .map_err(JobError::from)
}

/// What the cache served a job, recorded once (keyed by the job, so a retry records nothing
/// new) with the chunk set; nothing when it served nothing. The model calls have their own
/// events. An operator's reprocessing run's is marked as such, so quotas do not charge it.
async fn record_usage(
    tx: &mut ragpipe_store::UserTx,
    ledger: &Ledger<'_>,
    model: &str,
    spent: &Spent,
) -> Result<(), JobError> {
    if spent.cached_tokens == 0 {
        return Ok(());
    }
    ragpipe_store::usage::record(
        tx,
        &NewUsage {
            kind: UsageKind::Embedding,
            model,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: spent.cached_tokens,
            requests: 0,
            cost: 0.0,
            idempotency_key: format!("ingest:{}", ledger.job_key),
            document_id: Some(ledger.job.document_id.0),
            message_id: None,
            request_id: None,
            origin: ledger.origin,
        },
    )
    .await?;
    Ok(())
}

/// Who is charged for a job's model calls: the user, unless an operator's reprocessing run
/// (not the owner's own request) caused them.
fn origin_of(pending: Option<&Pending>) -> UsageOrigin {
    match pending {
        Some(p) if !p.by_owner => UsageOrigin::Reprocess,
        _ => UsageOrigin::User,
    }
}

async fn set_stage(
    ctx: &IngestContext,
    job: &IngestJob,
    status: DocumentStatus,
    progress: f32,
) -> Result<(), JobError> {
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    documents::set_stage(&mut tx, job.document_id, status, progress).await?;
    tx.commit().await?;
    Ok(())
}

/// Fails the job's document for good: a first ingest (or a failed document's reprocessing)
/// marks it failed with the reason; a ready document's reprocessing keeps its chunk set and
/// records the reason with the run.
async fn fail(ctx: &IngestContext, job: &IngestJob, reason: &str) -> Result<Outcome, JobError> {
    record_failure(ctx, job, reason).await?;
    Ok(Outcome::Failed(reason.to_owned()))
}

/// [`fail`]'s write, in one transaction: safe to run again.
async fn record_failure(ctx: &IngestContext, job: &IngestJob, reason: &str) -> Result<(), StoreError> {
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    documents::fail(&mut tx, job.document_id, reason).await?;
    if let Some(run) = &job.reprocess {
        ragpipe_store::reprocess::fail(&mut tx, job.document_id, run, reason).await?;
    }
    tx.commit().await
}

fn stage_seconds(stage: &'static str, started: Instant) {
    metrics::histogram!("ragpipe_ingest_stage_seconds", "stage" => stage).record(started.elapsed().as_secs_f64());
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
        match ingest_document(&ctx, &job, &task_id.to_string()).await {
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
                let wait = ragpipe_store::jobs::retry_delay(attempt.current());
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "ingest failed; will retry");
                // The queue holds the job until then; this slot is free for other jobs.
                if let Err(schedule) =
                    ragpipe_store::jobs::delay_retry(&ctx.store, INGEST_QUEUE, &task_id.to_string(), wait).await
                {
                    warn!(error = %schedule, "could not delay the retry; the queue retries at once");
                }
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
                // Recording the failure rides out a dropped connection; if the database stays
                // away, the job fails with that cause and the document is not silently left
                // half-done.
                let recorded = retry("recording a failed document", RetryPolicy::POLLING, || {
                    record_failure(&ctx, &job, &reason)
                })
                .await;
                match recorded {
                    Ok(()) => Ok(()),
                    Err(record) => {
                        tracing::error!(error = %record, reason = %reason, "the document's failure could not be recorded");
                        Err(Box::new(record) as BoxDynError)
                    }
                }
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

use ragpipe_store::liveness;

/// How long an ingest worker row may go without a heartbeat before a starting worker removes
/// it (when it holds no job; see [`ragpipe_store::jobs::remove_dead_workers`]): ten heartbeats,
/// where the queue takes over a worker's jobs after three.
pub fn dead_worker_after(config: &Config) -> Duration {
    Duration::from_secs(config.worker.heartbeat_secs.max(1)).saturating_mul(10)
}

/// Runs an ingest worker until `shutdown` resolves; then it stops taking jobs, finishes the
/// ones in flight and returns. Unsupervised: it returns the first failure of its queue
/// connection ([`spawn`] restarts it).
pub async fn run(ctx: Arc<IngestContext>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let in_flight = liveness::InFlight::default();
    let result = run_once(ctx, shutdown, None, in_flight.clone()).await;
    in_flight.wait().await;
    result.map_err(|e| e.message)
}

/// One run of an ingest worker, beating `component`'s heartbeat with the queue's.
async fn run_once(
    ctx: Arc<IngestContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    component: Option<Arc<liveness::Component>>,
    in_flight: liveness::InFlight,
) -> Result<(), liveness::Failure> {
    // Every start leaves its predecessor's worker row behind (names are unique per start).
    match ragpipe_store::jobs::remove_dead_workers(&ctx.store, INGEST_QUEUE, dead_worker_after(&ctx.config)).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, queue = INGEST_QUEUE, "removed dead workers' rows"),
        Err(e) => warn!(error = %e, queue = INGEST_QUEUE, "removing dead workers' rows failed"),
    }
    // Chunks reference their model, and a model keeps its dimension: check both before taking jobs.
    let configured = ctx.embedders.configured();
    embedding_models::ensure(
        &ctx.store,
        configured.model(),
        configured.dim() as u32,
        ctx.config.embedding.base_url.as_deref(),
    )
    .await
    .map_err(|e| liveness::Failure {
        kind: e.kind(),
        message: format!("embedding model {}: {e}", configured.model()),
    })?;
    let concurrency = ctx.config.worker.concurrency.max(1) as usize;
    // LISTEN/NOTIFY wakes the worker the moment a job is committed; polling alone backs off
    // while idle, so an upload after a quiet spell would wait seconds.
    let backend = ctx
        .store
        .job_storage::<IngestJob>()
        .with_config(queue_config(&ctx.config))
        .with_pubsub();
    // The worker id is its name: unique per process, so a restarted process never inherits (and
    // keeps alive) the jobs of the one that died.
    let name = ragpipe_store::jobs::worker_name("ingest");
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx)
        .data(in_flight)
        .concurrency(concurrency)
        // The queue announces each heartbeat it wrote to its worker row.
        .on_event(move |_, event| {
            if let (Event::HeartBeat, Some(c)) = (event, &component) {
                c.heartbeat();
            }
        })
        .build(handle_in_flight);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| liveness::Failure::transient(format!("ingest worker: {e}")))
}

/// Starts a supervised ingest worker on the current runtime: restarted with backoff whenever
/// its queue connection fails, stopped when `shutdown` is cancelled.
pub fn spawn(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    spawn_supervised(store, config, shutdown, &liveness::Liveness::new())
}

/// [`spawn`], reporting into `liveness` as the component `ingest`.
pub fn spawn_supervised(
    store: Store,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
    liveness: &liveness::Liveness,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let heartbeat = Duration::from_secs(config.worker.heartbeat_secs.max(1));
    let component = liveness.register("ingest", Some(INGEST_QUEUE), heartbeat);
    tokio::spawn(async move {
        let ctx = match IngestContext::new(store, config) {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => {
                // The report of a process part that cannot start: the whole chain, as text.
                let message = e.to_string();
                component.dead(&message);
                return Err(message);
            }
        };
        let in_flight = liveness::InFlight::default();
        let supervised = liveness::supervise(
            Arc::clone(&component),
            shutdown.clone(),
            liveness::restart_backoff(),
            || {
                let stop = shutdown.clone();
                run_once(
                    Arc::clone(&ctx),
                    async move { stop.cancelled().await },
                    Some(Arc::clone(&component)),
                    in_flight.clone(),
                )
            },
        );
        let result = supervised.await;
        // Jobs of instances that failed under them may still be running: let them finish.
        in_flight.wait().await;
        result.map_err(|e| e.message)
    })
}

/// The job handler the queue calls: [`handle`] in a task of its own (tracked by `in_flight`), so
/// that a job outlives a worker instance whose queue connection fails under it.
async fn handle_in_flight(
    job: IngestJob,
    ctx: Data<Arc<IngestContext>>,
    in_flight: Data<liveness::InFlight>,
    attempt: Attempt,
    task_id: TaskId,
) -> Result<(), BoxDynError> {
    in_flight
        .spawn(handle(job, ctx, attempt, task_id))
        .await
        .map_err(|e| Box::new(e) as BoxDynError)?
}
