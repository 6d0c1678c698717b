//! Documents: upload, listing, reading, deleting, and their pipeline state.

use crate::jobs::{INGEST_QUEUE, IngestJob, enqueue};
use crate::{StoreError, UserTx};
use chrono::{DateTime, Utc};
use ragpipe_core::{DocumentId, DocumentStatus};
use serde::Serialize;
use uuid::Uuid;

/// A checked statement that returns [`Document`] rows: `$head` + the document's columns +
/// `$tail` (each a string literal), with its arguments.
macro_rules! query_documents {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Document,
            $head + r#"id, user_id, filename, content_type, byte_size, encode(sha256, 'hex') AS "sha256!", status,
                progress, error, title, language, page_count, chunk_count, failed_pages, warnings, metadata,
                embedding_model, chunk_max_tokens, chunk_overlap_tokens, tokenizer, extractor_version, reprocess,
                created_at, updated_at, ready_at "# + $tail
            $(, $arg)*
        )
    };
}

/// A document as its owner sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Name it was uploaded with.
    pub filename: String,
    /// Detected format's content type.
    pub content_type: String,
    /// Size of the original bytes.
    pub byte_size: i64,
    /// sha256 of the original bytes, hex.
    pub sha256: String,
    /// Pipeline state (`queued|extracting|chunking|embedding|ready|failed`).
    pub status: String,
    /// Fraction of the current run done.
    pub progress: f32,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Title found in the document.
    pub title: Option<String>,
    /// Detected language.
    pub language: Option<String>,
    /// Pages (PDF) or sections.
    pub page_count: Option<i32>,
    /// Chunks in the current set.
    pub chunk_count: i32,
    /// Pages that could not be extracted, with reasons.
    pub failed_pages: serde_json::Value,
    /// What the text is missing although the document has it, by kind and page:
    /// `[{"code": "undecodable_text_layer", "pages": [3, 4]}]`.
    pub warnings: serde_json::Value,
    /// Caller-supplied metadata.
    pub metadata: serde_json::Value,
    /// Model that embedded the current chunks.
    pub embedding_model: Option<String>,
    /// Chunk size used.
    pub chunk_max_tokens: Option<i32>,
    /// Chunk overlap used.
    pub chunk_overlap_tokens: Option<i32>,
    /// Tokenizer used.
    pub tokenizer: Option<String>,
    /// Extractor that produced the current chunks.
    pub extractor_version: Option<String>,
    /// Pending reprocessing (`{"run", "stage", ...}`; with `"error"` when it failed and the
    /// current chunk set was kept), or `None`.
    pub reprocess: Option<serde_json::Value>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it last became ready.
    pub ready_at: Option<DateTime<Utc>>,
}

impl Document {
    /// The typed status; a value the type does not know is an error, not a guess.
    pub fn status(&self) -> Result<DocumentStatus, StoreError> {
        crate::rows::parse_status(&self.status)
    }
}

/// An upload to store.
#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    /// Name it was uploaded with.
    pub filename: &'a str,
    /// Content type of the detected format.
    pub content_type: &'a str,
    /// The original bytes.
    pub bytes: &'a [u8],
    /// Their sha256.
    pub sha256: [u8; 32],
    /// Caller-supplied metadata (a JSON object).
    pub metadata: serde_json::Value,
}

impl<'a> NewDocument<'a> {
    /// An upload of `bytes`, their sha256 computed here.
    pub fn new(filename: &'a str, content_type: &'a str, bytes: &'a [u8], metadata: serde_json::Value) -> Self {
        use sha2::{Digest, Sha256};
        NewDocument {
            filename,
            content_type,
            bytes,
            sha256: Sha256::digest(bytes).into(),
            metadata,
        }
    }
}

/// What storing an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    /// The document (new, or the one the user already had with the same bytes).
    #[serde(flatten)]
    pub document: Document,
    /// False when identical bytes were already uploaded by this user.
    pub created: bool,
}

/// Stores an upload and enqueues its ingest job, in the caller's transaction. Bytes the user
/// already uploaded return the existing document and enqueue nothing.
pub async fn create(tx: &mut UserTx, new: &NewDocument<'_>, max_attempts: u32) -> Result<Stored, StoreError> {
    let user = tx.user_id();
    let id = DocumentId::new();
    let inserted = query_documents!(
        "INSERT INTO documents (id, user_id, filename, content_type, byte_size, sha256, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, sha256) DO NOTHING RETURNING ",
        "",
        id.0,
        user.0,
        new.filename,
        new.content_type,
        new.bytes.len() as i64,
        &new.sha256[..],
        &new.metadata,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("inserting a document"))?;
    let Some(document) = inserted else {
        let existing = query_documents!(
            "SELECT ",
            "FROM documents WHERE user_id = $1 AND sha256 = $2",
            user.0,
            &new.sha256[..],
        )
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::db("reading the existing document"))?;
        return Ok(Stored {
            document: existing,
            created: false,
        });
    };
    sqlx::query!(
        "INSERT INTO document_blobs (document_id, user_id, bytes) VALUES ($1, $2, $3)",
        id.0,
        user.0,
        new.bytes,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("storing the document's bytes"))?;
    enqueue(tx, INGEST_QUEUE, &[IngestJob::upload(user, id)], max_attempts).await?;
    Ok(Stored {
        document,
        created: true,
    })
}

/// One document, or `NotFound` (also for another user's id: ids do not leak).
pub async fn get(tx: &mut UserTx, id: DocumentId) -> Result<Document, StoreError> {
    query_documents!("SELECT ", "FROM documents WHERE id = $1", id.0)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("reading a document"))?
        .ok_or(StoreError::NotFound("document"))
}

/// Newest first, `limit` at a time, after the `before` id of the previous page.
pub async fn list(
    tx: &mut UserTx,
    status: Option<DocumentStatus>,
    before: Option<DocumentId>,
    limit: u32,
) -> Result<Vec<Document>, StoreError> {
    query_documents!(
        "SELECT ",
        "FROM documents \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
        status.map(|s| s.as_str()),
        before.map(|b| b.0),
        i64::from(limit.clamp(1, 1000)),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing documents"))
}

/// Deletes a document; its bytes and chunks go with it (foreign keys cascade).
pub async fn delete(tx: &mut UserTx, id: DocumentId) -> Result<(), StoreError> {
    let deleted = sqlx::query!("DELETE FROM documents WHERE id = $1", id.0)
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("deleting a document"))?
        .rows_affected();
    if deleted == 0 {
        Err(StoreError::NotFound("document"))
    } else {
        Ok(())
    }
}

/// The original bytes.
pub async fn bytes(tx: &mut UserTx, id: DocumentId) -> Result<Vec<u8>, StoreError> {
    sqlx::query_scalar!("SELECT bytes FROM document_blobs WHERE document_id = $1", id.0)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("reading a document's bytes"))?
        .ok_or(StoreError::NotFound("document"))
}

/// Moves a document to a pipeline stage (not `ready`/`failed`: see `chunks::replace` and
/// [`fail`]), counting an attempt when it starts over from `extracting`.
pub async fn set_stage(
    tx: &mut UserTx,
    id: DocumentId,
    status: DocumentStatus,
    progress: f32,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE documents SET status = $2, progress = $3, error = NULL, updated_at = now(), \
         attempts = attempts + (CASE WHEN $2 = 'extracting' THEN 1 ELSE 0 END) WHERE id = $1",
        id.0,
        status.as_str(),
        progress.clamp(0.0, 1.0),
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("updating a document's status"))?;
    Ok(())
}

/// Marks a document failed with a readable reason. Its previous chunk set, if any, is kept.
pub async fn fail(tx: &mut UserTx, id: DocumentId, error: &str) -> Result<(), StoreError> {
    // A ready document is never failed: a reprocessing that fails keeps its chunk set (the run
    // records why, reprocess::fail).
    sqlx::query!(
        "UPDATE documents SET status = 'failed', error = $2, updated_at = now() WHERE id = $1 AND status <> 'ready'",
        id.0,
        error,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("marking a document failed"))?;
    Ok(())
}
