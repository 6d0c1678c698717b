//! `/v1/documents`: upload, list, read, chunks, delete, reprocess. Every handler acts through the caller's
//! [`ragpipe_store::UserTx`], so row-level security decides what it can see: another user's id
//! is simply not there (404, never 403).

use crate::body::OptionalJsonBody;
use crate::params::{IdPath, Query};
use crate::upload::{self, UploadLimits, UploadedFile};
use crate::{AppState, Auth, Error};
use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use ragpipe_core::{DocumentId, DocumentStatus};
use ragpipe_ingest::{ExtractError, Format};
use ragpipe_store::chunks::{self, StoredChunk};
use ragpipe_store::documents::{self, Document, NewDocument, Stored};
use ragpipe_store::reprocess::{Plan, Stage, Target};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Documents per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page of documents.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Chunks per page when the client does not say.
pub const DEFAULT_CHUNK_PAGE_SIZE: u32 = 100;
/// Largest page of chunks.
pub const MAX_CHUNK_PAGE_SIZE: u32 = 1000;

/// What an upload returns: one entry per `file` part, in order, each with `created`.
#[derive(Debug, Serialize)]
pub struct UploadResponse {
    /// The stored (or already existing) documents.
    pub documents: Vec<Stored>,
}

/// `POST /v1/documents`. 201 when every file is new, 200 when at least one was already there
/// (same bytes as a document the caller has: that document is returned, nothing is queued).
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadResponse>), Error> {
    let mut multipart = multipart.map_err(|e| Error::bad_request(e.body_text()))?;
    let limits = UploadLimits::from_config(&state.config.limits);
    let files = upload::read_files(&mut multipart, limits, inspect).await?;

    // All files of the request, or none: rows, bytes and ingest jobs commit together.
    let mut tx = state.store.user_tx(auth.user_id).await?;
    upload::check_quotas(&mut tx, files.iter().map(|(f, i)| (f.bytes.len() as u64, i.sha256))).await?;
    let mut stored = Vec::with_capacity(files.len());
    for (file, inspected) in &files {
        let metadata = file
            .metadata
            .clone()
            .map(serde_json::Value::Object)
            .unwrap_or_else(|| serde_json::json!({}));
        let new = NewDocument {
            filename: &file.filename,
            content_type: inspected.format.content_type(),
            bytes: &file.bytes,
            sha256: inspected.sha256,
            metadata,
        };
        stored.push(documents::create(&mut tx, &new, state.config.worker.max_attempts).await?);
    }
    tx.commit().await?;

    for (s, (file, inspected)) in stored.iter().zip(&files) {
        tracing::info!(
            document_id = %s.document.id,
            created = s.created,
            format = inspected.format.as_str(),
            bytes = file.bytes.len(),
            "document uploaded"
        );
        let outcome = if s.created { "created" } else { "existing" };
        metrics::counter!("ragpipe_uploads_total", "outcome" => outcome).increment(1);
        if s.created {
            metrics::counter!("ragpipe_upload_bytes_total").increment(file.bytes.len() as u64);
        }
    }
    let status = if stored.iter().all(|s| s.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(UploadResponse { documents: stored })))
}

/// What is learnt from a file's bytes before it is stored.
#[derive(Debug, Clone, Copy)]
pub struct Inspected {
    /// The detected format.
    pub format: Format,
    /// sha256 of the bytes.
    pub sha256: [u8; 32],
}

/// Detects the format and hashes the bytes, off the async threads (a file may be 100 MB).
async fn inspect(file: UploadedFile) -> Result<(UploadedFile, Inspected), Error> {
    let (file, detected, sha256) = tokio::task::spawn_blocking(move || {
        let detected = ragpipe_ingest::detect(&file.bytes);
        let sha256: [u8; 32] = Sha256::digest(&file.bytes).into();
        (file, detected, sha256)
    })
    .await
    .map_err(|e| Error::internal(format!("inspecting an upload: {e}")))?;
    match detected {
        Ok(format) => Ok((file, Inspected { format, sha256 })),
        Err(ExtractError::Empty) => Err(Error::new(
            StatusCode::BAD_REQUEST,
            "empty_file",
            format!("{} is empty", file.filename),
        )),
        // "report.png: unsupported format: PNG image (ragpipe reads PDF, ...)"
        Err(e) => Err(Error::unsupported_media_type(format!("{}: {e}", file.filename))),
    }
}

/// Query of `GET /v1/documents`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only documents in this status.
    pub status: Option<DocumentStatus>,
    /// Page size (default 50, at most 200).
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub before: Option<Uuid>,
}

/// A page of documents, newest first.
#[derive(Debug, Serialize)]
pub struct DocumentPage {
    /// The documents.
    pub documents: Vec<Document>,
    /// Pass as `before` for the next page; null on the last page.
    pub next: Option<Uuid>,
}

/// `GET /v1/documents?status=&limit=&before=`: keyset pagination by id (ids are time-ordered
/// UUIDv7, so newest first), stable while documents are added.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<ListParams>,
) -> Result<Json<DocumentPage>, Error> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(Error::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let mut tx = state.store.user_tx(auth.user_id).await?;
    // One more than asked tells whether there is a next page without a count query.
    let mut documents = documents::list(&mut tx, params.status, params.before.map(DocumentId), limit + 1).await?;
    tx.commit().await?;
    let next = if documents.len() > limit as usize {
        documents.truncate(limit as usize);
        documents.last().map(|d| d.id)
    } else {
        None
    };
    Ok(Json(DocumentPage { documents, next }))
}

/// `GET /v1/documents/{id}`: status, progress, error, page and chunk counts, metadata.
pub async fn get(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<Json<Document>, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let document = documents::get(&mut tx, DocumentId(id)).await?;
    tx.commit().await?;
    Ok(Json(document))
}

/// Query of `GET /v1/documents/{id}/chunks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkParams {
    /// Chunks to skip (by position).
    pub offset: Option<u32>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A page of a document's chunks, in order.
#[derive(Debug, Serialize)]
pub struct ChunkPage {
    /// The document.
    pub document_id: Uuid,
    /// Chunks in the document's current set.
    pub total: i32,
    /// The offset of the first chunk here.
    pub offset: u32,
    /// The chunks.
    pub chunks: Vec<StoredChunk>,
    /// Pass as `offset` for the next page; null on the last page.
    pub next_offset: Option<u32>,
}

/// `GET /v1/documents/{id}/chunks?offset=&limit=`.
pub async fn chunks(
    State(state): State<AppState>,
    auth: Auth,
    IdPath(id): IdPath,
    Query(params): Query<ChunkParams>,
) -> Result<Json<ChunkPage>, Error> {
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(DEFAULT_CHUNK_PAGE_SIZE);
    if !(1..=MAX_CHUNK_PAGE_SIZE).contains(&limit) {
        return Err(Error::bad_request(format!(
            "limit must be between 1 and {MAX_CHUNK_PAGE_SIZE}"
        )));
    }
    let id = DocumentId(id);
    let mut tx = state.store.user_tx(auth.user_id).await?;
    // The document first, so that a missing (or another user's) document is a 404, not an
    // empty list.
    let document = documents::get(&mut tx, id).await?;
    let chunks = chunks::list(&mut tx, id, offset, limit).await?;
    tx.commit().await?;
    let end = offset.saturating_add(chunks.len() as u32);
    let next_offset =
        (chunks.len() == limit as usize && i64::from(end) < i64::from(document.chunk_count)).then_some(end);
    Ok(Json(ChunkPage {
        document_id: document.id,
        total: document.chunk_count,
        offset,
        chunks,
        next_offset,
    }))
}

/// `DELETE /v1/documents/{id}`: 204; the bytes and chunks go with it (foreign keys cascade).
pub async fn delete(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<StatusCode, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    documents::delete(&mut tx, DocumentId(id)).await?;
    tx.commit().await?;
    tracing::info!(document_id = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/documents/{id}/reprocess`; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReprocessRequest {
    /// Redo from this stage (`extract`, `chunk`, `embed`); default: the earliest stage whose
    /// settings differ from the target, or `extract` when none does.
    pub stage: Option<Stage>,
    /// Chunk size for the new set (default: the configured one).
    pub chunk_max_tokens: Option<u32>,
    /// Chunk overlap for the new set (default: the configured one).
    pub chunk_overlap_tokens: Option<u32>,
    /// Embedding model for the new vectors (default: the configured one); must be recorded.
    pub embedding_model: Option<String>,
}

/// `POST /v1/documents/{id}/reprocess`: 202 with the document, whose `reprocess` field shows
/// the pending run; a ready document stays ready and searchable until the new chunk set
/// replaces the old one. 409 while a reprocessing of it is in flight, 422 for a bad setting.
/// No body: every default.
pub async fn reprocess(
    State(state): State<AppState>,
    auth: Auth,
    IdPath(id): IdPath,
    OptionalJsonBody(request): OptionalJsonBody<ReprocessRequest>,
) -> Result<(StatusCode, Json<Document>), Error> {
    let config = &state.config;
    let target = Target {
        chunk_max_tokens: request.chunk_max_tokens.unwrap_or(config.chunking.max_tokens),
        chunk_overlap_tokens: request.chunk_overlap_tokens.unwrap_or(config.chunking.overlap_tokens),
        embedding_model: request
            .embedding_model
            .clone()
            .unwrap_or_else(|| config.embedding.model.clone()),
        extractor_version: ragpipe_ingest::EXTRACTOR_VERSION.to_owned(),
        stage: request.stage,
    };
    let unprocessable = |message: String| Error::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_setting", message);
    if target.chunk_max_tokens == 0 || target.chunk_max_tokens > 8192 {
        return Err(unprocessable(format!(
            "chunk_max_tokens is {}; it must be 1..=8192",
            target.chunk_max_tokens
        )));
    }
    if target.chunk_overlap_tokens >= target.chunk_max_tokens {
        return Err(unprocessable(format!(
            "chunk_overlap_tokens ({}) must be smaller than chunk_max_tokens ({})",
            target.chunk_overlap_tokens, target.chunk_max_tokens
        )));
    }
    if target.embedding_model != config.embedding.model
        && ragpipe_store::embedding_models::get(&state.store, &target.embedding_model)
            .await?
            .is_none()
    {
        return Err(unprocessable(format!(
            "embedding model {:?} is not served here",
            target.embedding_model
        )));
    }
    let document = DocumentId(id);
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let candidate = ragpipe_store::reprocess::candidate(&mut tx, document).await?;
    // A request of its own: one run per call.
    let run = format!("api-{}", Uuid::new_v4().simple());
    let stage = match candidate.plan(&run, &target) {
        Plan::InFlight => {
            return Err(Error::new(
                StatusCode::CONFLICT,
                "conflict",
                "the document is already being reprocessed",
            ));
        }
        Plan::Busy => {
            return Err(Error::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the document is still being ingested ({})", candidate.status),
            ));
        }
        Plan::Redo(stage) => stage,
        // Nothing differs: the caller still asked, so everything is redone.
        Plan::Done => Stage::Extract,
    };
    // The owner asked: the model calls are theirs, within their budget.
    ragpipe_store::quotas::check_question(&mut tx)
        .await
        .map_err(crate::usage::refused)?;
    let pending = ragpipe_store::reprocess::Pending {
        by_owner: true,
        ..target.pending(&run, stage)
    };
    let marked = ragpipe_store::reprocess::mark(&mut tx, &[(document, pending)], config.worker.max_attempts).await?;
    if marked.is_empty() {
        return Err(Error::new(
            StatusCode::CONFLICT,
            "conflict",
            "the document changed while its reprocessing was requested; try again",
        ));
    }
    let document = documents::get(&mut tx, document).await?;
    tx.commit().await?;
    tracing::info!(document_id = %id, %run, stage = stage.as_str(), "reprocessing requested");
    Ok((StatusCode::ACCEPTED, Json(document)))
}
