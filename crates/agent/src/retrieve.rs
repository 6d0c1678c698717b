//! Retrieval: embed the query, then one hybrid search statement in the user's transaction
//! (`ragpipe_store::search`). The fusion weights and the legs' depth live here, chosen by
//! measurement on the tuning half of `fixtures/eval-unseen` (see [`DEFAULT_FUSION`]).

use ragpipe_core::{ErrorKind, UserId};
use ragpipe_llm::{Embedded, Embedder, Embedders, LlmError, PriceTable, Reranker};
use ragpipe_store::embedding_models::{self, EmbeddingModel};
use ragpipe_store::search::{self, Bm25, Fusion, MAX_DEPTH, MAX_K, MAX_MODELS, QueryVector, SearchQuery};
use ragpipe_store::usage::{NewUsage, UsageKind, UsageOrigin};
use ragpipe_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the list of embedding models with chunks is reused before it is read again.
pub const MODELS_REFRESH: Duration = Duration::from_secs(5);

pub use ragpipe_store::search::{SearchHit, SearchMode};

/// Results a search returns when the request does not say.
pub const DEFAULT_K: u32 = 10;

/// The fusion for a semantic embedding model: both legs weigh the same, with a steep RRF
/// constant (5), so that a chunk near the top of either leg wins over one ranked moderately by
/// both. Chosen on the **tuning half** of `fixtures/eval-unseen` (real manuals, 159 answerable
/// questions) with all-MiniLM-L6-v2 embeddings, by the smallest margin over the better leg in
/// recall@5 and MRR@10 (`scripts/eval-corpus/fusion-study.py`, which also tried convex
/// combinations of normalised scores and a per-query text weight from the query's rarest term;
/// none did better on the tuning half). Test half (reported, BENCHMARKS.md "Fusion"): hybrid
/// 0.658 / 0.548 against 0.589 / 0.477 for the vector leg and 0.620 / 0.489 for the text leg.
/// The previous constants (text weighted 2x, constants 20), tuned on the 42 questions of
/// `fixtures/eval/`, put hybrid below the vector leg on paraphrases.
pub const DEFAULT_FUSION: Fusion = Fusion {
    vector_weight: 1.0,
    vector_k: 5.0,
    text_weight: 1.0,
    text_k: 5.0,
};

/// The fusion for the offline hashed embedder, whose vectors are lexical, not semantic (a
/// weaker, noisier copy of the text leg): the text leg leads (weight 3, constant 5) and the
/// vector leg (constant 100) only breaks near-ties. Chosen on the tuning half of
/// `fixtures/eval-unseen` as [`DEFAULT_FUSION`] was: there no setting that let the hashed
/// vectors move chunks further held its gain on both halves, so hybrid equals the text leg on the
/// test half (0.646 / 0.529; vector 0.335 / 0.261). The CI floors
/// (`fixtures/eval/floor.json`, `fixtures/eval-unseen/floor.json`) hold this fusion's figures.
pub const OFFLINE_FUSION: Fusion = Fusion {
    vector_weight: 1.0,
    vector_k: 100.0,
    text_weight: 3.0,
    text_k: 5.0,
};

/// The measured fusion for a configured embedder: [`OFFLINE_FUSION`] for the offline hashed
/// embedder, [`DEFAULT_FUSION`] for a model served over the API.
pub fn default_fusion_for(embedder: &Embedder) -> Fusion {
    if embedder.is_offline() {
        OFFLINE_FUSION
    } else {
        DEFAULT_FUSION
    }
}

/// Candidates each leg contributes for `k` results: enough that a chunk ranked moderately by
/// both legs can win, bounded so the statement stays fast.
pub fn candidate_depth(k: u32) -> u32 {
    (k.saturating_mul(5)).clamp(50, 200).min(MAX_DEPTH)
}

/// The fused score of a chunk with these leg ranks: what the SQL computes, for tests and for
/// explaining a ranking.
pub fn fused_score(fusion: &Fusion, vector_rank: Option<u64>, text_rank: Option<u64>) -> f64 {
    fusion.score(vector_rank, text_rank)
}

/// Orders chunk ids by fused score given each leg's ranking (best first in each slice): the
/// reference implementation of the statement's fusion, without a database.
pub fn fuse(fusion: &Fusion, vector: &[i64], text: &[i64], k: usize) -> Vec<(i64, f64)> {
    let mut scored: std::collections::HashMap<i64, (Option<u64>, Option<u64>)> = std::collections::HashMap::new();
    for (i, id) in vector.iter().enumerate() {
        scored.entry(*id).or_default().0.get_or_insert(i as u64 + 1);
    }
    for (i, id) in text.iter().enumerate() {
        scored.entry(*id).or_default().1.get_or_insert(i as u64 + 1);
    }
    let mut out: Vec<(i64, f64)> = scored
        .into_iter()
        .map(|(id, (v, t))| (id, fusion.score(v, t)))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// A search as callers ask for it (the body of `POST /v1/search`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The question or keywords.
    pub query: String,
    /// `hybrid` (default), `vector` or `text`.
    #[serde(default)]
    pub mode: SearchMode,
    /// Results wanted, 1..=100 (default 10).
    #[serde(default = "default_k")]
    pub k: u32,
    /// Only these documents (empty: all).
    #[serde(default)]
    pub document_ids: Vec<Uuid>,
    /// Only documents whose metadata contains this JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Whether hits carry a highlighted snippet.
    #[serde(default)]
    pub highlight: bool,
}

fn default_k() -> u32 {
    DEFAULT_K
}

impl SearchRequest {
    /// A hybrid search for `query` with the default `k`.
    pub fn new(query: impl Into<String>) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            mode: SearchMode::default(),
            k: DEFAULT_K,
            document_ids: Vec::new(),
            metadata: None,
            highlight: false,
        }
    }

    /// Checks what the database would otherwise reject less clearly.
    pub fn validate(&self) -> Result<(), RetrieveError> {
        if self.query.trim().is_empty() {
            return Err(RetrieveError::Invalid("query is empty".into()));
        }
        if self.query.len() > 4096 {
            return Err(RetrieveError::Invalid(format!(
                "query is {} bytes; at most 4096",
                self.query.len()
            )));
        }
        if self.k == 0 || self.k > MAX_K {
            return Err(RetrieveError::Invalid(format!(
                "k is {}; it must be 1..={MAX_K}",
                self.k
            )));
        }
        if self.document_ids.len() > 1000 {
            return Err(RetrieveError::Invalid("at most 1000 document ids".into()));
        }
        if let Some(m) = &self.metadata
            && !m.is_object()
        {
            return Err(RetrieveError::Invalid("metadata must be a JSON object".into()));
        }
        Ok(())
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The request itself is wrong.
    #[error("invalid search: {0}")]
    Invalid(String),
    /// Embedding the query failed.
    #[error("embedding the query: {0}")]
    Embedding(#[from] LlmError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RetrieveError {
    /// Whether retrying can help.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RetrieveError::Invalid(_) => ErrorKind::Permanent,
            RetrieveError::Embedding(e) => e.kind(),
            RetrieveError::Store(e) => e.kind(),
        }
    }
}

/// Searches users' chunks. Cheap to clone; share one per process.
///
/// The vector leg ranks the chunks of the configured embedding model and of any other model
/// that still has chunks (while a reprocessing run moves documents from one model to another,
/// both, each with the query embedded by that model), so no document drops out of search
/// during a migration.
#[derive(Clone, Debug)]
pub struct Retriever {
    store: Store,
    embedders: Embedders,
    prices: PriceTable,
    fusion: Fusion,
    bm25: Bm25,
    refresh: Duration,
    models: Arc<Mutex<Option<ModelsRead>>>,
    reranker: Option<Reranker>,
}

/// The embedding models with chunks, and when that was read.
type ModelsRead = (Instant, Vec<EmbeddingModel>);

impl Retriever {
    /// A retriever with the measured defaults ([`default_fusion_for`] the configured embedder,
    /// [`Bm25::default`]) over `embedders` (their configured model is always searched).
    pub fn new(store: Store, embedders: Embedders) -> Retriever {
        Retriever {
            store,
            prices: PriceTable::default(),
            fusion: default_fusion_for(embedders.configured()),
            embedders,
            bm25: Bm25::default(),
            refresh: MODELS_REFRESH,
            models: Arc::default(),
            reranker: None,
        }
    }

    /// The same retriever reordering the fused top `reranker.top_n()` with `reranker` (none:
    /// no reranking, the default).
    pub fn with_reranker(mut self, reranker: Option<Reranker>) -> Retriever {
        self.reranker = reranker;
        self
    }

    /// The reranker in use, if any.
    pub fn reranker(&self) -> Option<&Reranker> {
        self.reranker.as_ref()
    }

    /// The same retriever pricing the query embeddings it records by `prices` (the default
    /// table prices every model at 0).
    pub fn with_prices(mut self, prices: PriceTable) -> Retriever {
        self.prices = prices;
        self
    }

    /// The same retriever with other fusion weights (for `ragpipe eval` and experiments).
    pub fn with_fusion(mut self, fusion: Fusion) -> Retriever {
        self.fusion = fusion;
        self
    }

    /// The same retriever re-reading which models have chunks after `refresh` (tests use zero).
    pub fn with_models_refresh(mut self, refresh: Duration) -> Retriever {
        self.refresh = refresh;
        self
    }

    /// The fusion in use.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The models searched: the configured one first, then every other model with chunks.
    async fn models(&self) -> Result<Vec<Embedder>, RetrieveError> {
        let cached = self.models.lock().ok().and_then(|m| {
            m.as_ref()
                .filter(|(at, _)| at.elapsed() < self.refresh)
                .map(|(_, v)| v.clone())
        });
        let recorded = match cached {
            Some(v) => v,
            None => {
                let v = embedding_models::with_chunks(&self.store).await?;
                if let Ok(mut m) = self.models.lock() {
                    *m = Some((Instant::now(), v.clone()));
                }
                v
            }
        };
        let configured = self.embedders.configured();
        let mut out = vec![configured.clone()];
        for m in recorded.iter().filter(|m| m.model != configured.model()) {
            if out.len() == MAX_MODELS {
                tracing::warn!(model = %m.model, "more embedding models with chunks than search ranks");
                break;
            }
            out.push(self.embedders.get(&m.model, m.dim as u32, m.base_url.as_deref())?);
        }
        Ok(out)
    }

    /// The `request.k` best chunks of `user` for the request, best first. Text mode does not
    /// embed the query. The query's model calls are recorded as the user's usage, keyed
    /// `search:{uuid}` ([`Retriever::search_for`]).
    pub async fn search(&self, user: UserId, request: &SearchRequest) -> Result<Vec<SearchHit>, RetrieveError> {
        self.search_for(user, request, &QueryUsage::search()).await
    }

    /// [`Retriever::search_for`] with what the rerank stage did. With a reranker configured,
    /// the fused top `max(k, top_n)` is fetched, its first `top_n` reordered by the reranker
    /// and the first `k` returned; the call is recorded as a `rerank` usage event keyed
    /// `{usage.key_prefix}rerank:{uuid}`. A reranker that fails (after its own retries) does
    /// not fail the search: the fused order is returned and [`RerankReport::reason`] says why.
    pub async fn search_ranked(
        &self,
        user: UserId,
        request: &SearchRequest,
        usage: &QueryUsage,
    ) -> Result<Searched, RetrieveError> {
        let Some(reranker) = &self.reranker else {
            let (hits, query_truncated) = self.fused(user, request, usage).await?;
            return Ok(Searched {
                hits,
                rerank: None,
                query_truncated,
            });
        };
        let k = request.k as usize;
        let widened = SearchRequest {
            k: request.k.max(reranker.top_n().min(MAX_K as usize) as u32),
            ..request.clone()
        };
        let (mut hits, query_truncated) = self.fused(user, &widened, usage).await?;
        let n = reranker.top_n().min(hits.len());
        let documents: Vec<&str> = hits[..n].iter().map(|h| h.content.as_str()).collect();
        let report = match reranker.rerank(&request.query, &documents).await {
            Ok(out) => {
                let call = NewUsage {
                    kind: UsageKind::Rerank,
                    model: reranker.model(),
                    prompt_tokens: out.tokens,
                    completion_tokens: 0,
                    cached_tokens: 0,
                    requests: out.requests,
                    cost: self.prices.cost(reranker.model(), out.tokens, 0),
                    idempotency_key: format!("{}rerank:{}", usage.key_prefix, Uuid::new_v4()),
                    document_id: None,
                    message_id: usage.message_id,
                    request_id: usage.request_id,
                    origin: UsageOrigin::User,
                };
                let recorded = ragpipe_store::retry::retry(
                    "recording a search's rerank call",
                    ragpipe_store::retry::RetryPolicy::POLLING,
                    || self.record_calls(user, std::slice::from_ref(&call)),
                )
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "recording a search's rerank call");
                }
                let mut slots: Vec<Option<SearchHit>> = hits.drain(..n).map(Some).collect();
                let mut reordered = Vec::with_capacity(n);
                let mut scores = Vec::with_capacity(n);
                for r in &out.order {
                    if let Some(hit) = slots.get_mut(r.index).and_then(Option::take) {
                        reordered.push(hit);
                        scores.push(r.score.is_finite().then_some(r.score));
                    }
                }
                reordered.append(&mut hits);
                hits = reordered;
                scores.truncate(k);
                RerankReport {
                    applied: true,
                    model: reranker.model().to_owned(),
                    reranked: n,
                    scores,
                    reason: None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "reranker failed; keeping the fused order");
                RerankReport {
                    applied: false,
                    model: reranker.model().to_owned(),
                    reranked: 0,
                    scores: Vec::new(),
                    reason: Some(rerank_failure(&e)),
                }
            }
        };
        hits.truncate(k);
        Ok(Searched {
            hits,
            rerank: Some(report),
            query_truncated,
        })
    }

    /// [`Retriever::search`], recording the query's model calls as `usage` says. Every call
    /// that succeeded is recorded once (a key made per call before any transaction), whether
    /// the search then succeeds or fails: with the search in its transaction, or, when that
    /// fails, in a transaction of its own. The offline hashed embedder makes no model call and
    /// records nothing.
    pub async fn search_for(
        &self,
        user: UserId,
        request: &SearchRequest,
        usage: &QueryUsage,
    ) -> Result<Vec<SearchHit>, RetrieveError> {
        Ok(self.search_ranked(user, request, usage).await?.hits)
    }

    /// The fused search, without the rerank stage, and whether an embedding model read only the
    /// head of the query.
    async fn fused(
        &self,
        user: UserId,
        request: &SearchRequest,
        usage: &QueryUsage,
    ) -> Result<(Vec<SearchHit>, bool), RetrieveError> {
        request.validate()?;
        let mut query_truncated = false;
        let mut embedded: Vec<(Embedder, Vec<f32>)> = Vec::new();
        let mut calls: Vec<NewUsage<'_>> = Vec::new();
        let mut failed: Option<LlmError> = None;
        // Declared before the models' embedders so the usage events can borrow model names.
        let models = if request.mode.uses_vector() {
            self.models().await?
        } else {
            Vec::new()
        };
        if !models.is_empty() {
            let query = std::slice::from_ref(&request.query);
            let results = futures::future::join_all(models.iter().map(|m| m.embed(query))).await;
            for (model, result) in models.iter().zip(results) {
                match result {
                    Ok(out) => {
                        // Calls to a model are recorded; the local model's too (no request, its
                        // word pieces at no cost), the offline hashed embedder's are not.
                        if out.requests > 0 || model.local_model().is_some() {
                            calls.push(self.query_call(model.model(), &out, usage));
                        }
                        if out.truncated > 0 {
                            query_truncated = true;
                            tracing::info!(
                                model = model.model(),
                                "the query is longer than the embedding model reads: its vector is of its head"
                            );
                        }
                        if let Some(vector) = out.vectors.into_iter().next() {
                            embedded.push((model.clone(), vector));
                        }
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = failed {
            // Another model's call succeeded and is billed although this search fails.
            self.record_calls(user, &calls).await?;
            return Err(e.into());
        }
        let vectors: Vec<QueryVector<'_>> = embedded
            .iter()
            .map(|(m, v)| QueryVector {
                model: m.model(),
                dim: m.dim() as u32,
                embedding: v,
            })
            .collect();
        let query = SearchQuery {
            text: &request.query,
            vectors: &vectors,
            mode: request.mode,
            k: request.k,
            depth: candidate_depth(request.k),
            document_ids: (!request.document_ids.is_empty()).then_some(request.document_ids.as_slice()),
            metadata: request.metadata.as_ref(),
            fusion: self.fusion,
            bm25: self.bm25,
            highlight: request.highlight,
            exact_scan_chunks: search::EXACT_SCAN_CHUNKS,
        };
        // Generic plans: the statement is the same every time, so planning it once per
        // connection saves ~1-2 ms of each search (Store::search_tx). The search may run on the
        // read replica (Store::search_read_tx); the query's model calls are then recorded on the
        // primary after it, otherwise in the same transaction.
        let searched = async {
            let mut tx = self.store.search_read_tx(user).await?;
            if tx.on_replica() {
                match search::search(&mut tx, &query).await {
                    Ok(hits) => {
                        tx.commit().await?;
                        self.record_calls(user, &calls).await?;
                        return Ok(hits);
                    }
                    // A standby cancels a query whose rows replay must remove (a recovery
                    // conflict), and may lose its connection: the primary answers instead.
                    Err(e) if e.kind() == ErrorKind::Transient => {
                        tracing::warn!(error = %e, "the search failed on the read replica; searching the primary");
                        drop(tx);
                        tx = self.store.search_tx(user).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            for call in &calls {
                ragpipe_store::usage::record(&mut tx, call).await?;
            }
            let hits = search::search(&mut tx, &query).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(hits)
        }
        .await;
        match searched {
            Ok(hits) => Ok((hits, query_truncated)),
            Err(e) => {
                // The calls were made and billed: record them on their own (the keys make a
                // record that did commit count once).
                let recorded = ragpipe_store::retry::retry(
                    "recording a failed search's query embeddings",
                    ragpipe_store::retry::RetryPolicy::POLLING,
                    || self.record_calls(user, &calls),
                )
                .await;
                if let Err(recording) = recorded {
                    tracing::warn!(error = %recording, "recording a failed search's query embeddings");
                }
                Err(e.into())
            }
        }
    }

    /// The usage event of one query embedding call.
    fn query_call<'a>(&self, model: &'a str, out: &Embedded, usage: &QueryUsage) -> NewUsage<'a> {
        NewUsage {
            kind: UsageKind::Embedding,
            model,
            prompt_tokens: out.prompt_tokens,
            completion_tokens: 0,
            cached_tokens: 0,
            requests: out.requests,
            cost: self.prices.cost(model, out.prompt_tokens, 0),
            idempotency_key: format!("{}{}", usage.key_prefix, Uuid::new_v4()),
            document_id: None,
            message_id: usage.message_id,
            request_id: usage.request_id,
            origin: UsageOrigin::User,
        }
    }

    /// Records query embedding calls in a transaction of their own.
    async fn record_calls(&self, user: UserId, calls: &[NewUsage<'_>]) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.user_tx(user).await?;
        for call in calls {
            ragpipe_store::usage::record(&mut tx, call).await?;
        }
        tx.commit().await
    }
}

/// Why the rerank stage was skipped, for whoever searched: the failure's class and what the
/// reranker said, without the endpoint's address (which the log has).
fn rerank_failure(e: &LlmError) -> String {
    let what = match e {
        LlmError::Status { status, message, .. } => format!("HTTP {status}: {message}"),
        LlmError::Timeout { after, .. } => format!("no answer within {}s", after.as_secs_f64()),
        LlmError::Connection { .. } | LlmError::Truncated { .. } => "the connection failed".to_owned(),
        LlmError::Protocol { message, .. } => format!("unreadable answer: {message}"),
        other => other.to_string(),
    };
    format!(
        "the reranker failed ({:?}: {what}); results are in fused order",
        e.kind()
    )
}

/// A search's hits and what the rerank stage did with them.
#[derive(Clone, Debug, Serialize)]
pub struct Searched {
    /// The hits, best first (at most `k`).
    pub hits: Vec<SearchHit>,
    /// The rerank stage's report; none when no reranker is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<RerankReport>,
    /// Whether the query was longer than an embedding model reads, so that its vector is of
    /// the query's head (the text leg read all of it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub query_truncated: bool,
}

/// What the rerank stage did with one search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankReport {
    /// Whether the hits are in the reranker's order (false: fused order).
    pub applied: bool,
    /// The reranker's model.
    pub model: String,
    /// Fused hits the reranker ordered.
    pub reranked: usize,
    /// The reranker's scores of the returned hits it ordered (the first `min(k, reranked)`),
    /// in order, when applied (none for a hit it left unscored).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Option<f64>>,
    /// Why the fused order was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a search's query embedding calls are recorded as: the key prefix (a fresh uuid per
/// call follows it) and the subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryUsage {
    /// Prefix of each call's idempotency key.
    pub key_prefix: String,
    /// The agent request the search is for.
    pub request_id: Option<Uuid>,
    /// The message the search is for.
    pub message_id: Option<Uuid>,
}

impl QueryUsage {
    /// A user's own search (`POST /v1/search`, `ragpipe search`): keys `search:{uuid}`.
    pub fn search() -> QueryUsage {
        QueryUsage {
            key_prefix: "search:".into(),
            request_id: None,
            message_id: None,
        }
    }

    /// The search of an agent request answering into `message`: keys
    /// `agent:{request}:query:{uuid}`.
    pub fn agent(request: Uuid, message: Uuid) -> QueryUsage {
        QueryUsage {
            key_prefix: format!("agent:{request}:query:"),
            request_id: Some(request),
            message_id: Some(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EQUAL: Fusion = Fusion {
        vector_weight: 1.0,
        vector_k: 60.0,
        text_weight: 1.0,
        text_k: 60.0,
    };

    #[test]
    fn a_chunk_ranked_by_both_legs_beats_one_ranked_first_by_one() {
        let fused = fuse(&EQUAL, &[1, 2, 3], &[4, 2, 5], 10);
        assert_eq!(fused[0].0, 2, "{fused:?}");
        // Ties (1 and 4 both first in one leg) break by id, so the order is total.
        assert_eq!(fused[1].0, 1);
        assert_eq!(fused[2].0, 4);
        assert_eq!(fused.len(), 5);
    }

    #[test]
    fn weights_and_constants_shift_the_balance() {
        let text_heavy = Fusion {
            vector_weight: 1.0,
            vector_k: 60.0,
            text_weight: 2.0,
            text_k: 60.0,
        };
        let fused = fuse(&text_heavy, &[1, 2], &[3, 4], 4);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), vec![3, 4, 1, 2]);
        // A small k makes the top of a leg count much more than its tail.
        let steep = Fusion { vector_k: 1.0, ..EQUAL };
        assert!(fused_score(&steep, Some(1), None) > 10.0 * fused_score(&steep, Some(20), None));
        assert!(fused_score(&EQUAL, Some(1), None) < 1.5 * fused_score(&EQUAL, Some(20), None));
    }

    #[test]
    fn a_single_leg_keeps_its_order() {
        let fused = fuse(&EQUAL, &[9, 3, 7], &[], 2);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), vec![9, 3]);
        assert_eq!(fused[0].1, 1.0 / 61.0);
        assert_eq!(fused_score(&EQUAL, None, None), 0.0);
    }

    #[test]
    fn duplicate_ids_in_a_leg_count_at_their_best_rank() {
        let fused = fuse(&EQUAL, &[1, 1, 2], &[], 3);
        assert_eq!(fused[0], (1, 1.0 / 61.0));
        assert_eq!(fused.len(), 2);
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(candidate_depth(1), 50);
        assert_eq!(candidate_depth(20), 100);
        assert_eq!(candidate_depth(100), 200);
        assert_eq!(candidate_depth(u32::MAX), 200);
    }

    #[test]
    fn requests_parse_with_defaults_and_are_checked() {
        let r: SearchRequest = serde_json::from_str(r#"{"query": "hnsw index"}"#).expect("parse");
        assert_eq!(r, SearchRequest::new("hnsw index"));
        let r: SearchRequest =
            serde_json::from_str(r#"{"query": "x", "mode": "text", "k": 3, "metadata": {"team": "a"}}"#)
                .expect("parse");
        assert_eq!((r.mode, r.k), (SearchMode::Text, 3));
        assert!(serde_json::from_str::<SearchRequest>(r#"{"query": "x", "mode": "fuzzy"}"#).is_err());
        assert!(serde_json::from_str::<SearchRequest>(r#"{"query": "x", "top": 3}"#).is_err());
        for bad in [
            SearchRequest::new("  "),
            SearchRequest {
                k: 0,
                ..SearchRequest::new("x")
            },
            SearchRequest {
                k: 101,
                ..SearchRequest::new("x")
            },
            SearchRequest {
                metadata: Some(serde_json::json!([1])),
                ..SearchRequest::new("x")
            },
        ] {
            assert!(matches!(bad.validate(), Err(RetrieveError::Invalid(_))), "{bad:?}");
        }
    }
}
