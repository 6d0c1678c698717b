//! The pipeline of one document: extract → chunk → embed → store, or a reprocessing run's
//! stage of it, with the document's status following the stages of a first ingest.

use crate::embedding::{Ledger, embed_cached, origin_of, record_usage};
use crate::{IngestContext, JobError, model_limit};
use ragpipe_core::DocumentStatus;
use ragpipe_ingest::{Chunk, Chunker, Extracted};
use ragpipe_llm::Embedder;
use ragpipe_store::chunks::{ChunkSetInfo, NewChunk};
use ragpipe_store::documents::Document;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::reprocess::{Pending, Stage};
use ragpipe_store::{StoreError, UserTx, documents};
use std::sync::Arc;
use std::time::Instant;
use tracing::{Instrument, info_span};

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
    let progress = if pending.is_some() && document.status()? == DocumentStatus::Ready {
        Progress::Hidden
    } else {
        Progress::Shown
    };
    let run = pending.as_ref().map(|p| p.run.as_str());
    let embedder = match &pending {
        Some(p) => ctx.embedder_for(&p.embedding_model).await?,
        None => ctx.embedders.configured().clone(),
    };
    let background_embed = pending
        .as_ref()
        .filter(|p| progress == Progress::Hidden && p.stage == Stage::Embed);
    let mut tx = if let Some(p) = background_embed {
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
    if progress == Progress::Shown {
        documents::set_stage(&mut tx, doc_id, DocumentStatus::Extracting, 0.05).await?;
    }
    let bytes = documents::bytes(&mut tx, doc_id).await?;
    tx.commit().await?;

    let extracted = match extract(ctx, bytes).await? {
        Ok(x) => x,
        Err(e) => return fail(ctx, job, &e.to_string()).await,
    };

    progress.enter(ctx, job, DocumentStatus::Chunking, 0.25).await?;
    let chunker = match &pending {
        Some(p) => ctx.chunker_for(p.chunk_max_tokens, p.chunk_overlap_tokens, &embedder)?,
        None => Arc::clone(&ctx.chunker),
    };
    let (extracted, chunks) = chunk(&chunker, extracted).await?;
    if chunks.is_empty() {
        return fail(ctx, job, "no extractable text").await;
    }

    progress.enter(ctx, job, DocumentStatus::Embedding, 0.3).await?;
    let started = Instant::now();
    let texts: Vec<(&str, u32)> = chunks.iter().map(|c| (c.content.as_str(), c.token_count)).collect();
    let ledger = Ledger {
        job,
        job_key,
        origin: origin_of(pending.as_ref()),
    };
    let (vectors, spent) = embed_cached(ctx, &embedder, &texts, &document.filename, &ledger, progress).await?;
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
    let stored = store_chunk_set(ctx, job, run, &extracted, &chunker, embedder.model(), &rows).await?;
    let Some(mut tx) = stored else {
        return Ok(Outcome::Skipped);
    };
    record_usage(&mut tx, &ledger, embedder.model(), &spent).await?;
    tx.commit().await?;
    stage_seconds("store", started);
    Ok(Outcome::Ready { chunks: rows.len() })
}

/// Whether the document's status follows the stages: it does for a first ingest and for a
/// failed document's reprocessing; a ready document reprocessed in the background keeps its
/// status (and its searchable chunks) until the replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The status and progress move with the stages.
    Shown,
    /// Nothing is written until the new chunk set replaces the old.
    Hidden,
}

impl Progress {
    /// Moves the document to `status` at `fraction` of the whole, when progress is shown.
    pub(crate) async fn enter(
        self,
        ctx: &IngestContext,
        job: &IngestJob,
        status: DocumentStatus,
        fraction: f32,
    ) -> Result<(), JobError> {
        match self {
            Progress::Shown => set_stage(ctx, job, status, fraction).await,
            Progress::Hidden => Ok(()),
        }
    }
}

/// The extract stage: the document's text from its bytes, off the async threads. The outer
/// error is the stage crashing; the inner one, the document's own (it fails the document).
async fn extract(
    ctx: &IngestContext,
    bytes: Vec<u8>,
) -> Result<Result<Extracted, ragpipe_ingest::ExtractError>, JobError> {
    let started = Instant::now();
    let limits = ctx.limits.clone();
    let extracted = tokio::task::spawn_blocking(move || ragpipe_ingest::extract(&bytes, &limits))
        .instrument(info_span!("extract"))
        .await
        .map_err(|e| JobError::permanent(format!("extraction crashed: {e}")))?;
    stage_seconds("extract", started);
    Ok(extracted)
}

/// The chunk stage: `extracted` cut by `chunker`, off the async threads.
async fn chunk(chunker: &Arc<Chunker>, extracted: Extracted) -> Result<(Extracted, Vec<Chunk>), JobError> {
    let started = Instant::now();
    let chunking = Arc::clone(chunker);
    let cut = tokio::task::spawn_blocking(move || {
        let chunks = chunking.chunk(&extracted);
        (extracted, chunks)
    })
    .instrument(info_span!("chunk"))
    .await
    .map_err(|e| JobError::permanent(format!("chunking crashed: {e}")))?;
    stage_seconds("chunk", started);
    Ok(cut)
}

/// The store stage: `rows` replace the document's chunk set, in the transaction returned (not
/// yet committed, so the caller's usage record commits with it). `None`, with nothing written,
/// when there is nothing to store any more: the document was deleted meanwhile (the chunk
/// insert would violate its foreign key), or another reprocessing run took it over.
async fn store_chunk_set(
    ctx: &IngestContext,
    job: &IngestJob,
    run: Option<&str>,
    extracted: &Extracted,
    chunker: &Chunker,
    model: &str,
    rows: &[NewChunk],
) -> Result<Option<UserTx>, JobError> {
    let failed_pages = serde_json::to_value(&extracted.failed_pages).unwrap_or_default();
    let warnings = serde_json::to_value(&extracted.warnings).unwrap_or_default();
    let settings = chunker.settings();
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    match documents::get(&mut tx, job.document_id).await {
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
        Ok(now) if run.is_some() && Pending::from_column(now.reprocess.as_ref()).map(|p| p.run).as_deref() != run => {
            return Ok(None);
        }
        Ok(_) => {}
    }
    ragpipe_store::chunks::replace(
        &mut tx,
        job.document_id,
        rows,
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
    Ok(Some(tx))
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
    let (vectors, spent) = embed_cached(ctx, embedder, &texts, &document.filename, &ledger, Progress::Hidden).await?;
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

/// Moves the document to `status` at `progress`, in a transaction of its own.
pub(crate) async fn set_stage(
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
pub(crate) async fn record_failure(ctx: &IngestContext, job: &IngestJob, reason: &str) -> Result<(), StoreError> {
    let mut tx = ctx.store.user_tx(job.user_id).await?;
    documents::fail(&mut tx, job.document_id, reason).await?;
    if let Some(run) = &job.reprocess {
        ragpipe_store::reprocess::fail(&mut tx, job.document_id, run, reason).await?;
    }
    tx.commit().await
}

/// Records how long `stage` took.
fn stage_seconds(stage: &'static str, started: Instant) {
    metrics::histogram!("ragpipe_ingest_stage_seconds", "stage" => stage).record(started.elapsed().as_secs_f64());
}
