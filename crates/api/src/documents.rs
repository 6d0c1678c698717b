//! `/v1/documents`: upload, list, read, chunks, delete, reprocess. Every handler acts through the caller's
//! [`ragpipe_store::UserTx`], so row-level security decides what it can see: another user's id
//! is simply not there (404, never 403).

use crate::body::OptionalJsonBody;
use crate::params::{IdPath, Query};
use crate::schemas;
use crate::upload::{self, UploadLimits, UploadedFile};
use crate::{AppState, Auth, Error, ErrorBody};
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadResponse {
    /// The stored (or already existing) documents, one per `file` part, in order.
    #[schema(value_type = Vec<schemas::StoredDocument>)]
    pub documents: Vec<Stored>,
}

/// `POST /v1/documents`. 201 when every file is new, 200 when at least one was already there
/// (same bytes as a document the caller has: that document is returned, nothing is queued).
#[utoipa::path(
    post,
    operation_id = "upload_documents",
    path = "/v1/documents",
    tag = "documents",
    summary = "Upload one or more documents",
    description = "multipart/form-data: one or more `file` parts, each optionally followed by a \
        `metadata` part (a JSON object) for that file. The format is detected from the bytes. All \
        files are stored, with their ingest jobs, in one transaction, or none is. A file whose \
        bytes the caller already uploaded returns the existing document with `created: false`.",
    request_body(content = schemas::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Every file was new", body = UploadResponse),
        (status = 200, description = "At least one file was already there", body = UploadResponse),
        (status = 400, description = "Not a multipart body, a broken one, no `file` part, an empty \
            file (`empty_file`), metadata that is not a JSON object or has a NUL character \
            (`invalid_metadata`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "Over the per-file (`file_too_large`) or per-request \
            (`request_too_large`) limit, too many files, metadata too large, or over the caller's \
            storage budget (`storage_budget_exceeded`, naming the budget and the use)", body = ErrorBody),
        (status = 415, description = "A file is not PDF, text, Markdown, HTML or DOCX \
            (`unsupported_format`, naming what was detected)", body = ErrorBody),
        (status = 429, description = "The caller's monthly token budget is used up until the period \
            rolls over (`token_budget_exceeded`, naming the budget and the use; see `GET /v1/usage`)", body = ErrorBody),
    ),
)]
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only documents in this status.
    #[param(value_type = Option<schemas::DocumentStatus>)]
    pub status: Option<DocumentStatus>,
    /// Page size, 1..=200 (default 50).
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub before: Option<Uuid>,
}

/// A page of documents, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    /// The documents.
    #[schema(value_type = Vec<schemas::Document>)]
    pub documents: Vec<Document>,
    /// Pass as `before` for the next page; null on the last page.
    pub next: Option<Uuid>,
}

/// `GET /v1/documents?status=&limit=&before=`: keyset pagination by id (ids are time-ordered
/// UUIDv7, so newest first), stable while documents are added.
#[utoipa::path(
    get,
    operation_id = "list_documents",
    path = "/v1/documents",
    tag = "documents",
    summary = "List documents, newest first",
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = DocumentPage),
        (status = 400, description = "A `limit` outside 1..=200, an unknown status, a malformed \
            cursor, an unknown parameter, a NUL character in one (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
    ),
)]
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
    // A list may come from the read replica; the caller's own uploads are always in it.
    let mut tx = state.store.read_tx(auth.user_id).await?;
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
#[utoipa::path(
    get,
    operation_id = "get_document",
    path = "/v1/documents/{id}",
    tag = "documents",
    summary = "One document: status, progress, error, counts",
    params(("id" = Uuid, Path, description = "The document's id")),
    responses(
        (status = 200, description = "The document", body = schemas::Document),
        (status = 400, description = "An `id` that is not a UUID (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such document of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
    ),
)]
pub async fn get(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<Json<Document>, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let document = documents::get(&mut tx, DocumentId(id)).await?;
    tx.commit().await?;
    Ok(Json(document))
}

/// Query of `GET /v1/documents/{id}/chunks`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChunkParams {
    /// Chunks to skip (by position); the `next_offset` of the previous page.
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u32>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<u32>,
}

/// A page of a document's chunks, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChunkPage {
    /// The document.
    pub document_id: Uuid,
    /// Chunks in the document's current set.
    pub total: i32,
    /// The offset of the first chunk here.
    pub offset: u32,
    /// The chunks.
    #[schema(value_type = Vec<schemas::Chunk>)]
    pub chunks: Vec<StoredChunk>,
    /// Pass as `offset` for the next page; null on the last page.
    pub next_offset: Option<u32>,
}

/// `GET /v1/documents/{id}/chunks?offset=&limit=`.
#[utoipa::path(
    get,
    operation_id = "list_chunks",
    path = "/v1/documents/{id}/chunks",
    tag = "documents",
    summary = "A document's chunks, in order",
    params(("id" = Uuid, Path, description = "The document's id"), ChunkParams),
    responses(
        (status = 200, description = "A page", body = ChunkPage),
        (status = 400, description = "An `id` that is not a UUID, a `limit` outside 1..=1000, a \
            malformed or unknown parameter (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such document of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    delete,
    operation_id = "delete_document",
    path = "/v1/documents/{id}",
    tag = "documents",
    summary = "Delete a document with its bytes and chunks",
    params(("id" = Uuid, Path, description = "The document's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "An `id` that is not a UUID (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such document of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
    ),
)]
pub async fn delete(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<StatusCode, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    documents::delete(&mut tx, DocumentId(id)).await?;
    tx.commit().await?;
    tracing::info!(document_id = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/documents/{id}/reprocess`; every field is optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"stage": "chunk", "chunk_max_tokens": 256, "chunk_overlap_tokens": 32}))]
pub struct ReprocessRequest {
    /// Redo from this stage (`extract`, `chunk`, `embed`); default: the earliest stage whose
    /// settings differ from the target, or `extract` when none does.
    #[schema(value_type = Option<schemas::Stage>)]
    pub stage: Option<Stage>,
    /// Chunk size for the new set, 1..=8192 (default: the configured one).
    #[schema(minimum = 1, maximum = 8192)]
    pub chunk_max_tokens: Option<u32>,
    /// Chunk overlap for the new set, below `chunk_max_tokens` (default: the configured one).
    pub chunk_overlap_tokens: Option<u32>,
    /// Embedding model for the new vectors (default: the configured one); must be the
    /// configured one or one recorded on the server.
    pub embedding_model: Option<String>,
}

/// `POST /v1/documents/{id}/reprocess`: 202 with the document, whose `reprocess` field shows
/// the pending run; a ready document stays ready and searchable until the new chunk set
/// replaces the old one. 409 while a reprocessing of it is in flight, 422 for a bad setting.
/// No body: every default.
#[utoipa::path(
    post,
    operation_id = "reprocess_document",
    path = "/v1/documents/{id}/reprocess",
    tag = "documents",
    summary = "Reprocess a document in the background",
    description = "Runs the pipeline again from `stage` with the given chunk settings and embedding \
        model (defaults: the configured ones). A ready document stays `ready` and its current chunks \
        stay searchable until the new chunk set replaces them in one transaction; until then the \
        pending run is shown in the document's `reprocess` object. The body may be empty. The model \
        calls count against the caller's token budget.",
    params(("id" = Uuid, Path, description = "The document's id")),
    request_body(content = Option<ReprocessRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "Reprocessing was queued", body = schemas::Document),
        (status = 400, description = "An `id` that is not a UUID, broken JSON, a field of the wrong \
            type, an unknown field, a NUL character in a string (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such document of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
        (status = 409, description = "A reprocessing of the document is already in flight, or it is \
            still being ingested (`conflict`)", body = ErrorBody),
        (status = 413, description = "The JSON body is over 2 MiB (`request_too_large`)", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json` \
            (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "`chunk_max_tokens` outside 1..=8192, an overlap not below the \
            chunk size, or an embedding model not served here (`invalid_setting`)", body = ErrorBody),
        (status = 429, description = "The caller's monthly token budget is used up \
            (`token_budget_exceeded`)", body = ErrorBody),
    ),
)]
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
