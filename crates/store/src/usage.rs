//! Usage events: append-only, idempotent by key.

use crate::{StoreError, UserTx};
use uuid::Uuid;

/// Kind of model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    /// Embedding requests.
    Embedding,
    /// A chat completion.
    Chat,
}

impl UsageKind {
    /// The name stored in `usage_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageKind::Embedding => "embedding",
            UsageKind::Chat => "chat",
        }
    }
}

/// Who caused a model call: the user (an upload, a question) or an operator's reprocessing run,
/// which quotas do not charge to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageOrigin {
    /// An upload or a question.
    #[default]
    User,
    /// A batch reprocessing run.
    Reprocess,
}

impl UsageOrigin {
    /// The name stored in `usage_events.origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOrigin::User => "user",
            UsageOrigin::Reprocess => "reprocess",
        }
    }
}

/// One usage event to record.
#[derive(Debug, Clone)]
pub struct NewUsage<'a> {
    /// Kind.
    pub kind: UsageKind,
    /// Model.
    pub model: &'a str,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens served from the embedding cache (not sent, not in `prompt_tokens`).
    pub cached_tokens: u64,
    /// Requests made.
    pub requests: u32,
    /// Cost in the price table's currency.
    pub cost: f64,
    /// Derived from the job and its subject so a retry records nothing new.
    pub idempotency_key: String,
    /// Document it was for.
    pub document_id: Option<Uuid>,
    /// Message it was for.
    pub message_id: Option<Uuid>,
    /// Agent request it was for.
    pub request_id: Option<Uuid>,
    /// Who caused it.
    pub origin: UsageOrigin,
}

/// Records the event unless one with the same idempotency key exists. Returns whether it was new.
pub async fn record(tx: &mut UserTx, e: &NewUsage<'_>) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO usage_events (user_id, kind, model, prompt_tokens, completion_tokens, requests, cost, \
                                   idempotency_key, document_id, message_id, request_id, cached_tokens, origin) \
         VALUES ($1, $2, $3, $4, $5, $6, ($7::float8)::numeric, $8, $9, $10, $11, $12, $13) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(tx.user_id().0)
    .bind(e.kind.as_str())
    .bind(e.model)
    .bind(e.prompt_tokens as i64)
    .bind(e.completion_tokens as i64)
    .bind(e.requests as i32)
    .bind(e.cost)
    .bind(&e.idempotency_key)
    .bind(e.document_id)
    .bind(e.message_id)
    .bind(e.request_id)
    .bind(e.cached_tokens as i64)
    .bind(e.origin.as_str())
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording usage"))?
    .rows_affected();
    Ok(inserted == 1)
}
