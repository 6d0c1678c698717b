//! Asking: a question and the agent rows behind it (session, request, job), and what the
//! worker reads and records of the request.

use super::{AgentJob, MESSAGE_EVENTS_CHANNEL, Message, TITLE_CHARS};
use crate::jobs::{AGENT_QUEUE, enqueue};
use crate::rows::parse_status;
use crate::{StoreError, UserTx};
use ragpipe_core::{ConversationId, MessageId, MessageStatus, RequestStatus};
use serde::Serialize;
use uuid::Uuid;

/// How a question is to be answered.
#[derive(Debug, Clone)]
pub struct AskSettings<'a> {
    /// Chat model recorded on the session (when created) and the assistant message.
    pub model: &'a str,
    /// Retrieval mode for this question (`hybrid`, `vector`, `text`); none: the session's.
    pub retrieval_mode: Option<&'a str>,
    /// Passages to retrieve for this question; none: the session's.
    pub k: Option<u32>,
    /// Attempts of the agent job before it is given up.
    pub max_attempts: u32,
}

/// What [`ask`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Asked {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The agent session.
    pub session_id: Uuid,
    /// The agent request.
    pub request_id: Uuid,
    /// The question.
    pub user_message: Message,
    /// The answer to be (status `streaming`, empty).
    pub assistant_message: Message,
}

/// Asks `content` in `conversation`: in the caller's transaction, the user message, the
/// assistant message (`streaming`), the conversation's agent session if missing, the agent
/// request (chained to the previous one) and the agent job. Questions in one conversation are
/// serialised by a row lock on it, so the request chain has no forks.
pub async fn ask(
    tx: &mut UserTx,
    conversation: ConversationId,
    content: &str,
    settings: &AskSettings<'_>,
) -> Result<Asked, StoreError> {
    let user = tx.user_id();
    sqlx::query_scalar!(
        "SELECT id FROM copilot_conversations WHERE id = $1 FOR UPDATE",
        conversation.0
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("locking a conversation"))?
    .ok_or(StoreError::NotFound("conversation"))?;
    sqlx::query!(
        "INSERT INTO agent_sessions (id, user_id, conversation_id, model) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (conversation_id, user_id) DO NOTHING",
        Uuid::now_v7(),
        user.0,
        conversation.0,
        settings.model,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("creating an agent session"))?;
    let session = sqlx::query!(
        "SELECT id, retrieval_mode, k, last_request_id FROM agent_sessions WHERE conversation_id = $1",
        conversation.0,
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("reading the agent session"))?;
    let session_id = session.id;
    let mode = match settings.retrieval_mode {
        Some(mode) => mode.to_owned(),
        None => session.retrieval_mode,
    };
    let k = match settings.k {
        Some(k) => k as i32,
        None => session.k,
    };
    let previous = session.last_request_id;

    let (user_message_id, assistant_message_id, request_id) = (MessageId::new(), MessageId::new(), Uuid::now_v7());
    macro_rules! insert_message {
        ($($arg:expr),*) => {
            query_messages!(
                "INSERT INTO copilot_messages (id, conversation_id, user_id, role, content, status, model) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
                "",
                $($arg),*
            )
        };
    }
    let user_message = insert_message!(
        user_message_id.0,
        conversation.0,
        user.0,
        "user",
        content,
        "complete",
        None::<&str>
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("storing the question"))?;
    let assistant_message = insert_message!(
        assistant_message_id.0,
        conversation.0,
        user.0,
        "assistant",
        "",
        "streaming",
        Some(settings.model)
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("creating the answer message"))?;
    sqlx::query!(
        "INSERT INTO agent_requests (id, user_id, session_id, conversation_id, user_message_id, assistant_message_id, \
                                     previous_request_id, retrieval) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        request_id,
        user.0,
        session_id,
        conversation.0,
        user_message_id.0,
        assistant_message_id.0,
        previous,
        serde_json::json!({"mode": mode, "k": k}),
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("creating the agent request"))?;
    let title: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    let title: String = title.chars().take(TITLE_CHARS).collect();
    sqlx::query!(
        "WITH s AS (UPDATE agent_sessions SET last_request_id = $2, updated_at = now() WHERE id = $3) \
         UPDATE copilot_conversations SET updated_at = now(), title = coalesce(title, nullif($4, '')) WHERE id = $1",
        conversation.0,
        request_id,
        session_id,
        title,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("updating the conversation"))?;
    enqueue(
        tx,
        AGENT_QUEUE,
        &[AgentJob {
            user_id: user,
            request_id,
        }],
        settings.max_attempts,
    )
    .await?;
    Ok(Asked {
        conversation_id: conversation.0,
        session_id,
        request_id,
        user_message,
        assistant_message,
    })
}

/// An agent request with what the worker needs to answer it.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// Id.
    pub id: Uuid,
    /// Its session.
    pub session_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The question's message.
    pub user_message_id: Uuid,
    /// The answer's message.
    pub assistant_message_id: Uuid,
    /// `queued|running|completed|failed|cancelled`.
    pub status: String,
    /// `{"mode", "k"}`.
    pub retrieval: serde_json::Value,
    /// What the agent has produced so far (`context`, `finish_reason`, ...).
    pub results: serde_json::Value,
    /// The question.
    pub question: String,
    /// The answer message's status.
    pub message_status: String,
    /// Bytes of the answer flushed so far.
    pub message_bytes: i64,
}

impl AgentRequest {
    /// The request's typed status; a value the type does not know is an error.
    pub fn status(&self) -> Result<RequestStatus, StoreError> {
        parse_status(&self.status)
    }

    /// The answer message's typed status; a value the type does not know is an error.
    pub fn message_status(&self) -> Result<MessageStatus, StoreError> {
        parse_status(&self.message_status)
    }
}

/// An agent request, or `NotFound`.
pub async fn request(tx: &mut UserTx, id: Uuid) -> Result<AgentRequest, StoreError> {
    sqlx::query_as!(
        AgentRequest,
        r#"SELECT r.id, r.session_id, r.conversation_id, r.user_message_id, r.assistant_message_id, r.status,
                r.retrieval, r.results, q.content AS question, a.status AS message_status,
                octet_length(a.content)::bigint AS "message_bytes!"
         FROM agent_requests r
         JOIN copilot_messages q ON q.id = r.user_message_id
         JOIN copilot_messages a ON a.id = r.assistant_message_id
         WHERE r.id = $1"#,
        id,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading an agent request"))?
    .ok_or(StoreError::NotFound("agent request"))
}

/// One message of the history before a question.
#[derive(Debug, Clone)]
pub struct HistoryMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
    /// Its status.
    pub status: String,
}

/// Up to `limit` messages of the conversation before `before` (a message of it), oldest first.
pub async fn history(
    tx: &mut UserTx,
    conversation: ConversationId,
    before: MessageId,
    limit: u32,
) -> Result<Vec<HistoryMessage>, StoreError> {
    let mut rows = sqlx::query_as!(
        HistoryMessage,
        "SELECT role, content, status FROM copilot_messages \
         WHERE conversation_id = $1 AND role IN ('user', 'assistant') \
           AND (created_at, id) < (SELECT created_at, id FROM copilot_messages WHERE id = $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3",
        conversation.0,
        before.0,
        i64::from(limit),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the conversation's history"))?;
    rows.reverse();
    Ok(rows)
}

/// Marks the request running (again, on a retry). Returns false when it already ended.
pub async fn start(tx: &mut UserTx, request: Uuid) -> Result<bool, StoreError> {
    let n = sqlx::query!(
        "UPDATE agent_requests SET status = 'running', started_at = coalesce(started_at, now()), progress = 0.05 \
         WHERE id = $1 AND status IN ('queued', 'running')",
        request,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("starting an agent request"))?
    .rows_affected();
    Ok(n == 1)
}

/// Merges `results` (a JSON object) into the request's results and announces the change on its
/// answer message (listeners show the retrieved context as soon as it is known).
pub async fn merge_results(
    tx: &mut UserTx,
    request: Uuid,
    results: &serde_json::Value,
    progress: f32,
) -> Result<(), StoreError> {
    query_notifying!(
        "WITH r AS (UPDATE agent_requests SET results = results || $2, progress = greatest(progress, $3) \
                    WHERE id = $1 RETURNING assistant_message_id), \
              m AS (SELECT m.id, octet_length(m.content)::bigint AS bytes, m.status \
                    FROM r JOIN copilot_messages m ON m.id = r.assistant_message_id) \
         SELECT pg_notify($4, ",
        ") FROM m",
        request,
        results,
        progress.clamp(0.0, 1.0),
        MESSAGE_EVENTS_CHANNEL,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("recording the agent's results"))?;
    Ok(())
}
