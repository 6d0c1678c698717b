//! A document's chunk set: written whole, replacing the previous one in the same transaction.

use crate::{StoreError, UserTx};
use pgvector::Vector;
use ragpipe_core::DocumentId;
use serde::Serialize;

/// Separates heading path elements when they travel as one text value through `UNNEST`.
const PATH_SEPARATOR: char = '\u{1f}';

/// A chunk ready to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Position in the document.
    pub index: u32,
    /// The text.
    pub content: String,
    /// Its tokens.
    pub token_count: u32,
    /// First page it covers.
    pub page_first: Option<u32>,
    /// Last page it covers.
    pub page_last: Option<u32>,
    /// Headings above it.
    pub heading_path: Vec<String>,
    /// Byte range in the extracted text.
    pub byte_range: std::ops::Range<usize>,
    /// Its embedding.
    pub embedding: Vec<f32>,
}

/// What produced a chunk set, recorded on the document.
#[derive(Debug, Clone)]
pub struct ChunkSetInfo<'a> {
    /// Embedding model.
    pub embedding_model: &'a str,
    /// Chunk size.
    pub max_tokens: u32,
    /// Overlap.
    pub overlap_tokens: u32,
    /// Tokenizer.
    pub tokenizer: &'a str,
    /// Extractor version.
    pub extractor_version: &'a str,
    /// Title found.
    pub title: Option<&'a str>,
    /// Language found.
    pub language: Option<&'a str>,
    /// Pages.
    pub page_count: Option<u32>,
    /// Pages that failed, as JSON.
    pub failed_pages: serde_json::Value,
    /// Extraction warnings (pages whose text layer cannot be decoded), as JSON.
    pub warnings: serde_json::Value,
    /// The reprocessing run that produced the set, if one did: its pending mark is cleared and
    /// it is recorded as the document's last completed run.
    pub run: Option<&'a str>,
}

/// Replaces the document's chunks with `chunks` (one bulk insert) and marks it ready, all in the
/// caller's transaction: readers see the old set or the new one, never a mix or a half set.
pub async fn replace(
    tx: &mut UserTx,
    document: DocumentId,
    chunks: &[NewChunk],
    info: &ChunkSetInfo<'_>,
) -> Result<(), StoreError> {
    let user = tx.user_id();
    sqlx::query!("DELETE FROM document_chunks WHERE document_id = $1", document.0)
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("removing the previous chunk set"))?;
    let n = chunks.len();
    let mut index = Vec::with_capacity(n);
    let mut content = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut page_first = Vec::with_capacity(n);
    let mut page_last = Vec::with_capacity(n);
    let mut path = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut end = Vec::with_capacity(n);
    let mut embedding = Vec::with_capacity(n);
    for c in chunks {
        index.push(c.index as i32);
        content.push(c.content.as_str());
        tokens.push(c.token_count as i32);
        page_first.push(c.page_first.map(|p| p as i32));
        page_last.push(c.page_last.map(|p| p as i32));
        path.push(c.heading_path.join(&PATH_SEPARATOR.to_string()));
        start.push(c.byte_range.start as i32);
        end.push(c.byte_range.end as i32);
        embedding.push(Vector::from(c.embedding.clone()));
    }
    sqlx::query!(
        "INSERT INTO document_chunks (document_id, user_id, chunk_index, content, token_count, page_first, page_last, \
                                      heading_path, byte_start, byte_end, embedding, embedding_model) \
         SELECT $1, $2, i, c, t, pf, pl, CASE WHEN h = '' THEN '{}'::text[] ELSE string_to_array(h, $11) END, s, e, v, $12 \
         FROM UNNEST($3::int[], $4::text[], $5::int[], $6::int[], $7::int[], $8::text[], $9::int[], $10::int[], $13::vector[]) \
              AS u(i, c, t, pf, pl, h, s, e, v)",
        document.0,
        user.0,
        &index,
        &content as &[&str],
        &tokens,
        &page_first as &[Option<i32>],
        &page_last as &[Option<i32>],
        &path,
        &start,
        &end,
        PATH_SEPARATOR.to_string(),
        info.embedding_model,
        &embedding as &[Vector],
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("inserting the chunk set"))?;
    sqlx::query!(
        "UPDATE documents SET status = 'ready', progress = 1, error = NULL, chunk_count = $2, embedding_model = $3, \
         chunk_max_tokens = $4, chunk_overlap_tokens = $5, tokenizer = $6, extractor_version = $7, title = $8, \
         language = $9, page_count = $10, failed_pages = $11, warnings = $13, updated_at = now(), ready_at = now(), \
         reprocess = CASE WHEN reprocess ->> 'run' = $12 THEN NULL ELSE reprocess END, \
         last_reprocess_run = coalesce($12, last_reprocess_run) WHERE id = $1",
        document.0,
        n as i32,
        info.embedding_model,
        info.max_tokens as i32,
        info.overlap_tokens as i32,
        info.tokenizer,
        info.extractor_version,
        info.title,
        info.language,
        info.page_count.map(|p| p as i32),
        &info.failed_pages,
        info.run,
        &info.warnings,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("marking the document ready"))?;
    Ok(())
}

/// A chunk's text as stored, for embedding it again.
#[derive(Debug, Clone)]
pub struct ChunkText {
    /// Chunk id.
    pub id: i64,
    /// The text.
    pub content: String,
    /// Its tokens.
    pub token_count: i32,
}

/// The document's chunks, in order ([`reembed`] later checks the set is still the same).
pub async fn texts(tx: &mut UserTx, document: DocumentId) -> Result<Vec<ChunkText>, StoreError> {
    sqlx::query_as!(
        ChunkText,
        "SELECT id, content, token_count FROM document_chunks WHERE document_id = $1 ORDER BY chunk_index",
        document.0,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading a document's chunks"))
}

/// Replaces the vectors of the document's chunks (`vectors[i]` for chunk `ids[i]`) with ones by
/// `model`, in the caller's transaction, and records the model on the document; the chunks'
/// text is untouched, so search statistics do not change. Fails when the chunk set is no longer
/// the one `ids` came from.
pub async fn reembed(
    tx: &mut UserTx,
    document: DocumentId,
    ids: &[i64],
    vectors: &[Vec<f32>],
    model: &str,
    run: Option<&str>,
) -> Result<(), StoreError> {
    let embedding: Vec<Vector> = vectors.iter().map(|v| Vector::from(v.clone())).collect();
    let updated = sqlx::query!(
        "UPDATE document_chunks AS c SET embedding = u.v, embedding_model = $3 \
         FROM UNNEST($2::int8[], $4::vector[]) AS u(id, v) WHERE c.id = u.id AND c.document_id = $1",
        document.0,
        ids,
        model,
        &embedding as &[Vector],
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("replacing a document's vectors"))?
    .rows_affected();
    let current = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM document_chunks WHERE document_id = $1"#,
        document.0,
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("counting a document's chunks"))?;
    if updated != ids.len() as u64 || current != ids.len() as i64 {
        return Err(StoreError::Conflict(format!(
            "the chunk set changed while it was re-embedded ({updated} of {} chunks updated, {current} now)",
            ids.len()
        )));
    }
    sqlx::query!(
        "UPDATE documents SET embedding_model = $2, updated_at = now(), \
         reprocess = CASE WHEN reprocess ->> 'run' = $3 THEN NULL ELSE reprocess END, \
         last_reprocess_run = coalesce($3, last_reprocess_run) WHERE id = $1",
        document.0,
        model,
        run,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording a document's embedding model"))?;
    Ok(())
}

/// A stored chunk, as listed to its owner.
#[derive(Debug, Clone, Serialize)]
pub struct StoredChunk {
    /// Chunk id.
    pub id: i64,
    /// Position in the document.
    pub chunk_index: i32,
    /// The text.
    pub content: String,
    /// Its tokens.
    pub token_count: i32,
    /// First page.
    pub page_first: Option<i32>,
    /// Last page.
    pub page_last: Option<i32>,
    /// Headings above it.
    pub heading_path: Vec<String>,
    /// Start byte in the extracted text.
    pub byte_start: i32,
    /// End byte.
    pub byte_end: i32,
    /// Embedding model, when embedded.
    pub embedding_model: Option<String>,
    /// Whether it has an embedding.
    pub embedded: bool,
    /// Whether its full-text vector has any lexeme.
    pub searchable: bool,
}

/// The document's chunks in order, `limit` from `offset`.
pub async fn list(
    tx: &mut UserTx,
    document: DocumentId,
    offset: u32,
    limit: u32,
) -> Result<Vec<StoredChunk>, StoreError> {
    sqlx::query_as!(
        StoredChunk,
        r#"SELECT id, chunk_index, content, token_count, page_first, page_last, heading_path, byte_start, byte_end,
                embedding_model, embedding IS NOT NULL AS "embedded!", length(search_vector) > 0 AS "searchable!"
         FROM document_chunks WHERE document_id = $1 ORDER BY chunk_index OFFSET $2 LIMIT $3"#,
        document.0,
        i64::from(offset),
        i64::from(limit.clamp(1, 1000)),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing chunks"))
}
