//! Embedding a chunk set through the user's embedding cache: lookup first, only the misses to
//! the model, and each model call recorded (vectors and usage event) as it completes.

use crate::pipeline::Progress;
use crate::{IngestContext, JobError};
use futures::StreamExt;
use ragpipe_core::DocumentStatus;
use ragpipe_llm::Embedder;
use ragpipe_store::embedding_cache;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::reprocess::Pending;
use ragpipe_store::retry::{RetryPolicy, retry};
use ragpipe_store::usage::{NewUsage, UsageKind, UsageOrigin};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{Instrument, info_span, warn};

/// Chunks embedded between two progress updates.
const EMBED_SLICE: usize = 256;

/// What the cache saved a chunk set: input tokens whose vectors came from the user's cache
/// without any model call by this job (the calls themselves are recorded one by one, as they
/// complete, by [`record_call`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Spent {
    cached_tokens: u64,
}

/// Who a job's model calls are recorded for, and under which keys.
pub(crate) struct Ledger<'a> {
    pub(crate) job: &'a IngestJob,
    pub(crate) job_key: &'a str,
    pub(crate) origin: UsageOrigin,
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
/// recorded, no new one starts, and the first error is returned. With progress shown, the
/// document's progress moves through the embedding stage.
pub(crate) async fn embed_cached(
    ctx: &IngestContext,
    embedder: &Embedder,
    texts: &[(&str, u32)],
    filename: &str,
    ledger: &Ledger<'_>,
    progress: Progress,
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
        if failed.is_none() && embedded_inputs - reported >= EMBED_SLICE && embedded_inputs < misses.len() {
            reported = embedded_inputs;
            let done = embedded_inputs as f32 / misses.len() as f32;
            progress
                .enter(ctx, ledger.job, DocumentStatus::Embedding, 0.3 + 0.65 * done)
                .await?;
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
pub(crate) async fn record_usage(
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
pub(crate) fn origin_of(pending: Option<&Pending>) -> UsageOrigin {
    match pending {
        Some(p) if !p.by_owner => UsageOrigin::Reprocess,
        _ => UsageOrigin::User,
    }
}
