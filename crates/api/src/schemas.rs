//! The JSON shapes, for the OpenAPI document ([`crate::openapi`]), of what handlers answer
//! with but other crates define: store rows (`Document`, `Message`, ...), the agent's search
//! request and hits, the answer's stream events. These types are never built: they only
//! describe. Several of their sources carry JSON columns (`warnings`, `reprocess`,
//! `citations`) whose shape only the API promises, so the description lives here, beside the
//! handlers, rather than in the crates that store them. `tests/tests/api_openapi.rs` validates
//! real responses against the document, so a description that drifts from what is sent fails.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A document's pipeline state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocumentStatus {
    /// Waiting for a worker.
    Queued,
    /// Text is being extracted.
    Extracting,
    /// The text is being cut into chunks.
    Chunking,
    /// The chunks are being embedded.
    Embedding,
    /// Searchable.
    Ready,
    /// Ingestion failed (`error` says why).
    Failed,
}

/// A stage of the ingest pipeline a reprocessing starts again from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Extract the text again.
    Extract,
    /// Cut the text into chunks again.
    Chunk,
    /// Embed the chunks again.
    Embed,
}

/// What the text of a document is missing although the document has it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentWarning {
    /// `undecodable_text_layer`: these pages draw text in fonts that map glyphs to no
    /// characters, so search cannot find their words.
    #[schema(example = "undecodable_text_layer")]
    pub code: WarningCode,
    /// The pages, from 1.
    #[schema(value_type = Vec<u32>, minimum = 1)]
    pub pages: Vec<u32>,
}

/// The kinds of document warning.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// Text drawn in fonts that map glyphs to no characters.
    UndecodableTextLayer,
}

/// The document's pending background reprocessing. Cleared when the new chunk set replaces
/// the old one; a run that failed stays with its `error` (the old chunk set was kept).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reprocess {
    /// The reprocessing run it belongs to (`api-...` for a request to
    /// `POST /v1/documents/{id}/reprocess`).
    pub run: String,
    /// The stage it starts again from.
    pub stage: Stage,
    /// Chunk size of the new chunk set.
    pub chunk_max_tokens: u32,
    /// Overlap of the new chunk set.
    pub chunk_overlap_tokens: u32,
    /// Model for the new vectors.
    pub embedding_model: String,
    /// Present (true) when the owner asked for it through this API: its model calls count
    /// against their quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub by_owner: Option<bool>,
    /// Why the run failed on this document.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub error: Option<String>,
}

/// A document: its status, progress, error, counts, metadata and the settings of its current
/// chunk set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Document {
    /// Its id (time-ordered: newer documents have greater ids).
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// The name it was uploaded with.
    #[schema(example = "guide.md")]
    pub filename: String,
    /// The detected format's content type.
    #[schema(example = "text/markdown")]
    pub content_type: String,
    /// Size of the uploaded bytes.
    pub byte_size: i64,
    /// sha256 of the uploaded bytes, hex.
    pub sha256: String,
    /// Where it is in the pipeline.
    pub status: DocumentStatus,
    /// Fraction of the current run done, 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: f32,
    /// Why it failed, when it did.
    #[schema(required = true)]
    pub error: Option<String>,
    /// The title found in the document.
    #[schema(required = true)]
    pub title: Option<String>,
    /// The detected language.
    #[schema(required = true)]
    pub language: Option<String>,
    /// Pages (PDF) or sections.
    #[schema(required = true)]
    pub page_count: Option<i32>,
    /// Chunks in the current set.
    pub chunk_count: i32,
    /// Pages that could not be extracted, with the reasons.
    #[schema(value_type = Vec<Object>)]
    pub failed_pages: Vec<serde_json::Value>,
    /// What the text is missing although the document has it, by kind and page.
    pub warnings: Vec<DocumentWarning>,
    /// The metadata given with the upload (a JSON object; `{}` when none was).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The model that embedded the current chunks.
    #[schema(required = true)]
    pub embedding_model: Option<String>,
    /// Chunk size of the current set.
    #[schema(required = true)]
    pub chunk_max_tokens: Option<i32>,
    /// Chunk overlap of the current set.
    #[schema(required = true)]
    pub chunk_overlap_tokens: Option<i32>,
    /// Tokenizer that counted the chunks' tokens.
    #[schema(required = true)]
    pub tokenizer: Option<String>,
    /// Version of the extractor that produced the current chunks.
    #[schema(required = true)]
    pub extractor_version: Option<String>,
    /// The pending background reprocessing; null when none.
    #[schema(required = true)]
    pub reprocess: Option<Reprocess>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it last became ready.
    #[schema(required = true)]
    pub ready_at: Option<DateTime<Utc>>,
}

/// A document as an upload returns it, with whether it is new.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredDocument {
    /// The document (new, or the one the caller already had with the same bytes).
    #[serde(flatten)]
    pub document: Document,
    /// False when the same bytes were already uploaded: that document is returned and nothing
    /// is queued.
    pub created: bool,
}

/// One chunk of a document's text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chunk {
    /// Its id (what search hits and citations call `chunk_id`).
    pub id: i64,
    /// Its position in the document, from 0.
    pub chunk_index: i32,
    /// Its text.
    pub content: String,
    /// Its length in the tokenizer's tokens.
    pub token_count: i32,
    /// First page it covers (paged formats).
    #[schema(required = true)]
    pub page_first: Option<i32>,
    /// Last page it covers (paged formats).
    #[schema(required = true)]
    pub page_last: Option<i32>,
    /// The headings it is under, outermost first.
    pub heading_path: Vec<String>,
    /// Where it starts in the extracted text, in bytes.
    pub byte_start: i32,
    /// Where it ends in the extracted text, in bytes.
    pub byte_end: i32,
    /// The model its vector is from, if it has one.
    #[schema(required = true)]
    pub embedding_model: Option<String>,
    /// Whether it has a vector.
    pub embedded: bool,
    /// Whether search can find it.
    pub searchable: bool,
}

/// A conversation: questions and their answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Conversation {
    /// Its id.
    pub id: Uuid,
    /// The title given, or the first question, shortened.
    #[schema(required = true)]
    pub title: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The last question asked (or the creation).
    pub updated_at: DateTime<Utc>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A question.
    User,
    /// An answer.
    Assistant,
}

/// Where a message is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// An answer being written.
    Streaming,
    /// Written in full (questions are always complete).
    Complete,
    /// The answer failed; `error` says why and the text written so far is kept.
    Failed,
    /// The answer was stopped; it keeps the text written so far.
    Cancelled,
}

/// Pages a passage covers (paged formats).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Pages {
    /// First page, from 1.
    pub first: i32,
    /// Last page.
    pub last: i32,
}

/// A source an answer cites.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Citation {
    /// The number the answer cites it by (`[n]`).
    #[schema(minimum = 1)]
    pub n: u32,
    /// The chunk.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// The pages it covers; null for formats without pages.
    #[schema(required = true)]
    pub pages: Option<Pages>,
}

/// A passage an answer was given.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextEntry {
    /// The number the answer cites it by (`[n]`).
    #[schema(minimum = 1)]
    pub n: u32,
    /// The chunk.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// The pages it covers; null for formats without pages.
    #[schema(required = true)]
    pub pages: Option<Pages>,
    /// The headings it is under, outermost first.
    pub heading_path: Vec<String>,
    /// Retrieval score.
    pub score: f64,
    /// Other documents holding the same passage (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub also_in: Option<Vec<SamePassage>>,
}

/// Another document holding the same passage as a source of an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SamePassage {
    /// The document.
    pub document_id: Uuid,
    /// Its filename.
    pub filename: String,
}

/// A question or an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    /// Its id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// The text; while streaming, what has been flushed so far.
    pub content: String,
    /// Where it is.
    pub status: MessageStatus,
    /// Sources the answer cited, in order of first citation.
    pub citations: Vec<Citation>,
    /// The model that wrote the answer.
    #[schema(required = true)]
    pub model: Option<String>,
    /// Prompt tokens of the answer.
    #[schema(required = true)]
    pub prompt_tokens: Option<i32>,
    /// Completion tokens of the answer.
    #[schema(required = true)]
    pub completion_tokens: Option<i32>,
    /// Why it failed.
    #[schema(required = true)]
    pub error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the answer ended.
    #[schema(required = true)]
    pub completed_at: Option<DateTime<Utc>>,
}

/// What asking wrote.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Asked {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The conversation's agent session.
    pub session_id: Uuid,
    /// The agent request answering this question.
    pub request_id: Uuid,
    /// The question.
    pub user_message: Message,
    /// The answer to be: `streaming`, empty.
    pub assistant_message: Message,
}

/// How a search ranks chunks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 and vector similarity, fused by weighted reciprocal rank.
    Hybrid,
    /// Vector similarity to the query's embedding.
    Vector,
    /// BM25 over the chunks' text; the query is not embedded.
    Text,
}

/// The body of `POST /v1/search` (only `query` is required).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"query": "how large are batches?", "mode": "hybrid", "k": 5, "highlight": true}))]
pub struct SearchRequest {
    /// The question or keywords (at most 4096 bytes, not blank).
    #[schema(min_length = 1)]
    pub query: String,
    /// Default `hybrid`; `text` does not embed the query.
    #[schema(required = false)]
    pub mode: SearchMode,
    /// Hits to return, 1..=100.
    #[schema(required = false, minimum = 1, maximum = 100, default = 10)]
    pub k: u32,
    /// Only these documents (empty: all). A document id of another user filters everything
    /// out rather than erroring.
    #[schema(required = false, max_items = 1000)]
    pub document_ids: Vec<Uuid>,
    /// Only documents whose metadata contains this object (JSON containment).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Whether hits carry a `highlight` snippet.
    #[schema(required = false, default = false)]
    pub highlight: bool,
}

/// Another chunk with the same or a near-identical text as a hit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlsoIn {
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// The chunk.
    pub chunk_id: i64,
}

/// One hit of a search.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    /// The chunk.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's filename.
    pub filename: String,
    /// The chunk's position in its document.
    pub chunk_index: i32,
    /// First page it covers (paged formats).
    #[schema(required = true)]
    pub page_first: Option<i32>,
    /// Last page it covers (paged formats).
    #[schema(required = true)]
    pub page_last: Option<i32>,
    /// The headings it is under, outermost first.
    pub heading_path: Vec<String>,
    /// Fused score, higher is better; comparable within one search only.
    pub score: f64,
    /// 1-based rank in the vector leg, when it ranked there.
    #[schema(required = true)]
    pub vector_rank: Option<i64>,
    /// 1-based rank in the text leg, when it ranked there.
    #[schema(required = true)]
    pub text_rank: Option<i64>,
    /// Cosine similarity to the query.
    #[schema(required = true)]
    pub vector_similarity: Option<f64>,
    /// BM25 score.
    #[schema(required = true)]
    pub text_score: Option<f64>,
    /// The chunk's text.
    pub content: String,
    /// Best fragments with the query's terms in `**`, when asked for and a term matched.
    #[schema(required = true)]
    pub highlight: Option<String>,
    /// Other chunks with the same or a near-identical text (a normalised word 3-shingle
    /// Jaccard of at least 0.9), ranked below this hit and left out of `hits` for it, best
    /// first; so `hits` are distinct passages.
    pub also_in: Vec<AlsoIn>,
}

/// What the rerank stage of a search did. When the reranker fails, the hits are in the fused
/// order and `reason` says why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RerankReport {
    /// Whether the hits are in the reranker's order.
    pub applied: bool,
    /// The reranker's model.
    pub model: String,
    /// Fused hits the reranker ordered.
    pub reranked: u32,
    /// The reranker's scores of the returned hits it ordered, in order (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub scores: Option<Vec<Option<f64>>>,
    /// Why the fused order was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub reason: Option<String>,
}

/// How `GET /v1/usage` groups usage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per UTC day (`YYYY-MM-DD`).
    Day,
    /// Per model.
    Model,
    /// Per kind (`embedding`, `chat`).
    Kind,
}

/// Usage summed over some events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageTotals {
    /// Usage events summed.
    pub events: i64,
    /// Model requests made.
    pub requests: i64,
    /// Input tokens sent to models.
    pub prompt_tokens: i64,
    /// Output tokens.
    pub completion_tokens: i64,
    /// Input tokens served from the embedding cache (not in `prompt_tokens`, not charged).
    pub cached_tokens: i64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: i64,
    /// The part of `total_tokens` that counts against quotas (reprocessing runs by an
    /// operator are reported but not charged).
    pub charged_tokens: i64,
    /// From the price table in force when each event was recorded.
    pub cost: f64,
}

/// One group of usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageRow {
    /// The day (`YYYY-MM-DD`), model or kind (`embedding`, `chat`) of the row.
    pub key: String,
    /// Its sums.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Where a budget's limit comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// The caller's plan.
    Plan,
    /// An override for this user.
    User,
}

/// A budget and its use.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Budget {
    /// The limit; null: unlimited.
    #[schema(required = true)]
    pub limit: Option<i64>,
    /// What is used of it.
    pub used: i64,
    /// Whether the limit is the plan's or an override for this user.
    pub source: BudgetSource,
}

/// The caller's budgets and their use in the current period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuotaStatus {
    /// The caller's plan.
    pub plan: String,
    /// Start of the token period: the first instant of the current calendar month, UTC.
    pub period_start: DateTime<Utc>,
    /// Tokens used since `period_start` (uploads and questions; not operators' reprocessing).
    pub monthly_tokens: Budget,
    /// Bytes of the caller's documents.
    pub storage_bytes: Budget,
}

/// `event: message` (id `message`): the ids involved.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: message")]
pub struct MessageEvent {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The question's message.
    #[schema(required = true)]
    pub user_message_id: Option<Uuid>,
    /// The answer's message.
    pub message_id: Uuid,
    /// The agent request.
    #[schema(required = true)]
    pub request_id: Option<Uuid>,
}

/// `event: context` (id `context`): the passages the model was given.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: context")]
pub struct ContextEvent {
    /// Numbered, best first.
    pub sources: Vec<ContextEntry>,
}

/// `event: delta` (id: the byte offset in the message's content where the delta ends): more
/// of the answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: delta")]
pub struct DeltaEvent {
    /// The text.
    pub text: String,
}

/// `event: usage` (id `usage`): tokens the answer used.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: usage")]
pub struct UsageEvent {
    /// The model.
    #[schema(required = true)]
    pub model: Option<String>,
    /// Prompt tokens.
    #[schema(required = true)]
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    #[schema(required = true)]
    pub completion_tokens: Option<i32>,
    /// Cost, from the price table.
    #[schema(required = true)]
    pub cost: Option<f64>,
}

/// `event: done` (id `done`): the answer ended normally or was cancelled.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: done")]
pub struct DoneEvent {
    /// Why it ended: `stop`, `length`, ... or `cancelled`.
    pub finish_reason: String,
    /// The message's status.
    pub status: MessageStatus,
    /// The sources the answer cited.
    pub citations: Vec<Citation>,
}

/// `event: error` (id `error`; no id when the stream broke): the answer failed, or the stream
/// was interrupted.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(title = "event: error")]
pub struct ErrorEvent {
    /// `answer_failed` (the answer failed; the text written so far is kept) or
    /// `stream_interrupted` (reconnect with `Last-Event-ID`).
    pub code: String,
    /// Readable explanation.
    pub message: String,
}

/// One server-sent event of an answer. `event:` names it, `data:` is one JSON object, `id:`
/// resumes after it. In order: `message` (id `message`), `context` (id `context`; absent when
/// the answer ended before retrieval), any number of `delta` (id: the byte offset in the
/// message's content where the delta ends), then `usage` (id `usage`) and `done` (id `done`)
/// for a complete answer, `done` alone for a cancelled one, or `error` (id `error`) for a
/// failed one. An `error` event without an id (code `stream_interrupted`) means the stream
/// broke: reconnect with the last id. A `: keep-alive` comment is sent after 10 s of silence.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnswerEvent {
    /// `event: message`.
    Message(MessageEvent),
    /// `event: context`.
    Context(ContextEvent),
    /// `event: delta`.
    Delta(DeltaEvent),
    /// `event: usage`.
    Usage(UsageEvent),
    /// `event: done`.
    Done(DoneEvent),
    /// `event: error`.
    Error(ErrorEvent),
}

/// The body of `GET /healthz` and of a ready `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    pub status: HealthStatus,
}

/// The values of a health status.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The process is up (`/healthz`).
    Ok,
    /// The process can serve (`/readyz`).
    Ready,
}

/// The multipart body of `POST /v1/documents`: one or more `file` parts, each optionally
/// followed by a `metadata` part (a JSON object) for that file.
#[derive(Debug, ToSchema)]
pub struct UploadForm {
    /// The files' bytes; each part's filename is kept. The format is detected from the bytes.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub file: Vec<Vec<u8>>,
    /// A JSON object for the file part before it.
    #[schema(value_type = Option<Vec<String>>)]
    pub metadata: Option<Vec<String>>,
}
