//! `POST /v1/search`: hybrid, vector or text search over the caller's chunks.
//!
//! Body: `{"query": "...", "mode": "hybrid"|"vector"|"text", "k": 10, "document_ids": [...],
//! "metadata": {...}, "highlight": false}` (only `query` is required). The search runs in the
//! caller's [`ragpipe_store::UserTx`], so only their chunks can come back; a document id of
//! another user filters everything out rather than erroring (ids do not leak).

use crate::body::JsonBody;
use crate::schemas;
use crate::{AppState, Auth, Error, ErrorBody};
use axum::Json;
use axum::extract::State;
use ragpipe_agent::retrieve::{QueryUsage, RerankReport};
use ragpipe_agent::{RetrieveError, SearchHit, SearchMode, SearchRequest};
use ragpipe_core::ErrorKind;
use serde::Serialize;

/// What a search returns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    /// The mode that ran.
    #[schema(value_type = schemas::SearchMode)]
    pub mode: SearchMode,
    /// Results asked for.
    pub k: u32,
    /// At most `k` distinct passages, best first.
    #[schema(value_type = Vec<schemas::SearchHit>)]
    pub hits: Vec<SearchHit>,
    /// What the rerank stage did (absent when no reranker is configured,
    /// `RAGPIPE_RERANK_BASE_URL`): whether the hits are in its order, and if not, why the
    /// fused order was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = schemas::RerankReport, required = false)]
    pub rerank: Option<RerankReport>,
    /// Present (true) when the query is longer than the embedding model reads (the local
    /// model: 256 word pieces): its vector is of the query's head; the text leg read all of it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub query_truncated: bool,
}

/// `POST /v1/search`.
#[utoipa::path(
    post,
    operation_id = "search",
    path = "/v1/search",
    tag = "search",
    summary = "Search the caller's chunks",
    description = "Hybrid (BM25 and vector, fused by weighted reciprocal rank), vector or text search \
        over the caller's chunks only. A document id of another user filters everything out rather \
        than erroring.",
    request_body(content = schemas::SearchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The hits, best first", body = SearchResponse),
        (status = 400, description = "Broken JSON, a field of the wrong type, an unknown field, a NUL \
            character in a string or key, an empty or over-long query, `k` outside 1..=100, more than \
            1000 document ids, metadata not an object (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "The JSON body is over 2 MiB (`request_too_large`)", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "The embedding model or the database is unavailable for now \
            (`unavailable`, with `Retry-After`)", body = ErrorBody),
    ),
)]
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
