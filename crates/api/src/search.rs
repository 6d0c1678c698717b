//! `POST /v1/search`: hybrid, vector or text search over the caller's chunks.
//!
//! Body: `{"query": "...", "mode": "hybrid"|"vector"|"text", "k": 10, "document_ids": [...],
//! "metadata": {...}, "highlight": false}` (only `query` is required). The search runs in the
//! caller's [`ragpipe_store::UserTx`], so only their chunks can come back; a document id of
//! another user filters everything out rather than erroring (ids do not leak).

use crate::body::JsonBody;
use crate::{AppState, Auth, Error};
use axum::Json;
use axum::extract::State;
use ragpipe_agent::retrieve::{QueryUsage, RerankReport};
use ragpipe_agent::{RetrieveError, SearchHit, SearchMode, SearchRequest};
use ragpipe_core::ErrorKind;
use serde::Serialize;

/// What a search returns.
#[derive(Debug, Serialize)]
pub struct SearchResponse {
    /// The mode that ran.
    pub mode: SearchMode,
    /// Results asked for.
    pub k: u32,
    /// The hits, best first (at most `k`).
    pub hits: Vec<SearchHit>,
    /// What the rerank stage did (absent when no reranker is configured): whether the hits
    /// are in its order, and if not, why the fused order was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<RerankReport>,
    /// Present and true when the query was longer than the embedding model reads (the local
    /// model: 256 word pieces): its vector is of the query's head; the text leg read it all.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub query_truncated: bool,
}

/// `POST /v1/search`.
pub async fn search(
    State(state): State<AppState>,
    auth: Auth,
    JsonBody(request): JsonBody<SearchRequest>,
) -> Result<Json<SearchResponse>, Error> {
    let searched = state
        .retriever
        .search_ranked(auth.user_id, &request, &QueryUsage::search())
        .await
        .map_err(to_error)?;
    Ok(Json(SearchResponse {
        mode: request.mode,
        k: request.k,
        hits: searched.hits,
        rerank: searched.rerank,
        query_truncated: searched.query_truncated,
    }))
}

fn to_error(e: RetrieveError) -> Error {
    match e {
        RetrieveError::Invalid(message) => Error::bad_request(message),
        RetrieveError::Store(e) => e.into(),
        RetrieveError::Embedding(e) if e.kind() == ErrorKind::Transient => Error::unavailable(e),
        RetrieveError::Embedding(e) => Error::internal(e),
    }
}
