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
    fn as_str(self) -> &'static str {
        match self {
            UsageKind::Embedding => "embedding",
            UsageKind::Chat => "chat",
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
}

/// Records the event unless one with the same idempotency key exists. Returns whether it was new.
pub async fn record(tx: &mut UserTx, e: &NewUsage<'_>) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO usage_events (user_id, kind, model, prompt_tokens, completion_tokens, requests, cost, \
                                   idempotency_key, document_id, message_id, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, ($7::float8)::numeric, $8, $9, $10, $11) ON CONFLICT (idempotency_key) DO NOTHING",
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
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording usage"))?
    .rows_affected();
    Ok(inserted == 1)
}
