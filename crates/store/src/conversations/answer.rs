//! Writing an answer: the assistant message is the replay log (text only appended while it
//! streams, guarded by the length the writer expects), ended by completing, failing or
//! cancelling it; and reading it back from a byte offset.

use super::{MESSAGE_EVENTS_CHANNEL, Message, MessageEvent, message};
use crate::rows::parse_status;
use crate::{StoreError, UserTx};
use ragpipe_core::{MessageId, MessageStatus};
use uuid::Uuid;

/// What became of a write to a streaming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written; the content is now this many bytes long.
    Done {
        /// Bytes of content.
        bytes: i64,
    },
    /// Not written: the message is no longer streaming (cancelled, or ended by another run of
    /// the job), or its length is not the one the writer expected (another writer appended).
    Refused {
        /// Its status.
        status: MessageStatus,
        /// Its length in bytes.
        bytes: i64,
    },
}

async fn refused(tx: &mut UserTx, message: MessageId) -> Result<Written, StoreError> {
    let row = sqlx::query!(
        r#"SELECT status, octet_length(content)::bigint AS "bytes!" FROM copilot_messages WHERE id = $1"#,
        message.0,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading a message's state"))?
    .ok_or(StoreError::NotFound("message"))?;
    Ok(Written::Refused {
        status: parse_status(&row.status)?,
        bytes: row.bytes,
    })
}

/// Appends `text` to a streaming message whose content is `expected_bytes` long, and announces
/// it. Nothing is written when the message stopped streaming or has another length.
pub async fn append(
    tx: &mut UserTx,
    message: MessageId,
    expected_bytes: i64,
    text: &str,
) -> Result<Written, StoreError> {
    let row = query_notifying!(
        r#"WITH u AS (UPDATE copilot_messages SET content = content || $3, updated_at = now()
                    WHERE id = $1 AND status = 'streaming' AND octet_length(content) = $2::bigint
                    RETURNING id, octet_length(content)::bigint AS bytes, status)
         SELECT bytes AS "bytes!", pg_notify($4, "#,
        ") FROM u",
        message.0,
        expected_bytes,
        text,
        MESSAGE_EVENTS_CHANNEL,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("appending to a message"))?;
    match row {
        Some(row) => Ok(Written::Done { bytes: row.bytes }),
        None => refused(tx, message).await,
    }
}

/// How an answer ended, for [`complete`] and [`fail`].
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    /// The request.
    pub request: Uuid,
    /// Its answer message.
    pub message: MessageId,
    /// Length the writer expects the message to have before `tail`.
    pub expected_bytes: i64,
    /// Text received but not yet flushed.
    pub tail: &'a str,
    /// Model that wrote it.
    pub model: &'a str,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost of the call.
    pub cost: f64,
    /// Merged into the request's results (e.g. `{"finish_reason": "stop"}`).
    pub results: serde_json::Value,
}

/// Completes a streaming answer: the last text, its citations, model and token counts; the
/// request `completed` with its tokens and cost. Refused (nothing written) when the message is
/// no longer streaming or has another length.
pub async fn complete(
    tx: &mut UserTx,
    ending: &Ending<'_>,
    citations: &serde_json::Value,
) -> Result<Written, StoreError> {
    let row = query_notifying!(
        r#"WITH u AS (UPDATE copilot_messages SET content = content || $3, status = 'complete', citations = $4,
                           model = $5, prompt_tokens = $6, completion_tokens = $7, updated_at = now(), completed_at = now()
                    WHERE id = $1 AND status = 'streaming' AND octet_length(content) = $2::bigint
                    RETURNING id, octet_length(content)::bigint AS bytes, status)
         SELECT bytes AS "bytes!", pg_notify($8, "#,
        ") FROM u",
        ending.message.0,
        ending.expected_bytes,
        ending.tail,
        citations,
        ending.model,
        clamp_i32(ending.prompt_tokens),
        clamp_i32(ending.completion_tokens),
        MESSAGE_EVENTS_CHANNEL,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("completing an answer"))?;
    ended(tx, ending, row.map(|r| r.bytes), "completed", None).await
}

/// Fails a streaming answer with `error`, keeping its text (the tail is appended when the
/// length is the expected one; otherwise the text stays as it is). The request fails too.
/// Refused only when the message is no longer streaming.
pub async fn fail(tx: &mut UserTx, ending: &Ending<'_>, error: &str) -> Result<Written, StoreError> {
    let row = query_notifying!(
        r#"WITH u AS (UPDATE copilot_messages SET
                           content = CASE WHEN octet_length(content) = $2::bigint THEN content || $3 ELSE content END,
                           status = 'failed', error = $4, model = $5, prompt_tokens = $6, completion_tokens = $7,
                           updated_at = now(), completed_at = now()
                    WHERE id = $1 AND status = 'streaming'
                    RETURNING id, octet_length(content)::bigint AS bytes, status)
         SELECT bytes AS "bytes!", pg_notify($8, "#,
        ") FROM u",
        ending.message.0,
        ending.expected_bytes,
        ending.tail,
        error,
        ending.model,
        clamp_i32(ending.prompt_tokens),
        clamp_i32(ending.completion_tokens),
        MESSAGE_EVENTS_CHANNEL,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("failing an answer"))?;
    ended(tx, ending, row.map(|r| r.bytes), "failed", Some(error)).await
}

/// After an ending statement: the message is now `bytes` long and its request ends with
/// `status`, or (`None`: the statement wrote nothing) the write was refused.
async fn ended(
    tx: &mut UserTx,
    ending: &Ending<'_>,
    bytes: Option<i64>,
    status: &str,
    error: Option<&str>,
) -> Result<Written, StoreError> {
    let Some(bytes) = bytes else {
        return refused(tx, ending.message).await;
    };
    end_request(tx, ending, status, error).await?;
    Ok(Written::Done { bytes })
}

/// Records what a cancelled answer had used (the message keeps the text it had when it was
/// cancelled) and ends its request.
pub async fn settle_cancelled(tx: &mut UserTx, ending: &Ending<'_>) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE copilot_messages SET model = $2, prompt_tokens = $3, completion_tokens = $4, updated_at = now() \
         WHERE id = $1 AND status = 'cancelled'",
        ending.message.0,
        ending.model,
        clamp_i32(ending.prompt_tokens),
        clamp_i32(ending.completion_tokens),
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording a cancelled answer's usage"))?;
    end_request(tx, ending, "cancelled", None).await
}

async fn end_request(
    tx: &mut UserTx,
    ending: &Ending<'_>,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE agent_requests SET status = $2, error = $3, prompt_tokens = $4, completion_tokens = $5, \
                cost = ($6::float8)::numeric, results = results || $7, progress = 1, \
                finished_at = coalesce(finished_at, now()) \
         WHERE id = $1",
        ending.request,
        status,
        error,
        clamp_i32(ending.prompt_tokens),
        clamp_i32(ending.completion_tokens),
        ending.cost,
        &ending.results,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("ending an agent request"))?;
    Ok(())
}

/// Fails an answer whose job was given up before it could write (retrieval kept failing, the
/// prompt could not be built): the message keeps whatever text it has.
pub async fn give_up(tx: &mut UserTx, request: Uuid, error: &str) -> Result<(), StoreError> {
    query_notifying!(
        "WITH r AS (UPDATE agent_requests SET status = 'failed', error = $2, progress = 1, \
                           finished_at = coalesce(finished_at, now()) \
                    WHERE id = $1 AND status IN ('queued', 'running') RETURNING assistant_message_id), \
              u AS (UPDATE copilot_messages m SET status = 'failed', error = $2, updated_at = now(), completed_at = now() \
                    FROM r WHERE m.id = r.assistant_message_id AND m.status = 'streaming' \
                    RETURNING m.id, octet_length(m.content)::bigint AS bytes, m.status) \
         SELECT pg_notify($3, ",
        ") FROM u",
        request,
        error,
        MESSAGE_EVENTS_CHANNEL,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("failing an agent request"))?;
    Ok(())
}

/// Cancels a streaming answer: the message `cancelled` with the text it has, its request
/// `cancelled`. Returns the message as it is now; one that already ended is returned unchanged
/// (check its status). `NotFound` for another user's message.
pub async fn cancel(tx: &mut UserTx, message_id: MessageId) -> Result<Message, StoreError> {
    let cancelled = query_messages!(
        "UPDATE copilot_messages SET status = 'cancelled', updated_at = now(), completed_at = now() \
         WHERE id = $1 AND role = 'assistant' AND status = 'streaming' RETURNING ",
        "",
        message_id.0,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("cancelling an answer"))?;
    let Some(m) = cancelled else {
        return message(tx, message_id).await;
    };
    sqlx::query!(
        "UPDATE agent_requests SET status = 'cancelled', finished_at = coalesce(finished_at, now()) \
         WHERE assistant_message_id = $1 AND status IN ('queued', 'running')",
        message_id.0,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("cancelling an agent request"))?;
    let event = MessageEvent {
        message_id: m.id,
        bytes: m.content.len() as i64,
        status: MessageStatus::Cancelled,
    };
    sqlx::query!("SELECT pg_notify($1, $2)", MESSAGE_EVENTS_CHANNEL, event.payload())
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("announcing a cancellation"))?;
    Ok(m)
}

/// An assistant message as a stream reader sees it: its state, the text after a byte offset,
/// and what its request recorded.
#[derive(Debug, Clone)]
pub struct AnswerState {
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// `user` or `assistant`.
    pub role: String,
    /// Its status.
    pub status: MessageStatus,
    /// Length of its content in bytes.
    pub bytes: i64,
    /// The content's bytes after the offset asked for (not necessarily valid UTF-8 if the
    /// offset was not a character boundary; the reader checks).
    pub tail: Vec<u8>,
    /// Model.
    pub model: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    pub completion_tokens: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    /// Citations.
    pub citations: serde_json::Value,
    /// The agent request behind it (none for user messages).
    pub request_id: Option<Uuid>,
    /// The question it answers.
    pub user_message_id: Option<Uuid>,
    /// Its status.
    pub request_status: Option<String>,
    /// Its results (`context`, `finish_reason`).
    pub results: serde_json::Value,
    /// Its cost.
    pub cost: Option<f64>,
}

/// The state of message `id` with its content after byte `from` (`NotFound` for another
/// user's message).
pub async fn answer_state(tx: &mut UserTx, id: MessageId, from: i64) -> Result<AnswerState, StoreError> {
    let row = sqlx::query!(
        r#"SELECT m.id AS message_id, m.conversation_id, m.role, m.status, octet_length(m.content)::bigint AS "bytes!",
                CASE WHEN octet_length(m.content) > $2::bigint THEN substring(convert_to(m.content, 'UTF8') FROM ($2::bigint + 1)::int)
                     ELSE ''::bytea END AS "tail!",
                m.model, m.prompt_tokens, m.completion_tokens, m.error, m.citations,
                r.id AS "request_id?", r.user_message_id AS "user_message_id?", r.status AS "request_status?",
                coalesce(r.results, '{}'::jsonb) AS "results!", r.cost::float8 AS cost
         FROM copilot_messages m LEFT JOIN agent_requests r ON r.assistant_message_id = m.id
         WHERE m.id = $1"#,
        id.0,
        from.max(0),
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading an answer's state"))?
    .ok_or(StoreError::NotFound("message"))?;
    Ok(AnswerState {
        message_id: row.message_id,
        conversation_id: row.conversation_id,
        role: row.role,
        status: parse_status(&row.status)?,
        bytes: row.bytes,
        tail: row.tail,
        model: row.model,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        error: row.error,
        citations: row.citations,
        request_id: row.request_id,
        user_message_id: row.user_message_id,
        request_status: row.request_status,
        results: row.results,
        cost: row.cost,
    })
}

fn clamp_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
