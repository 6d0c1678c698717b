//! Conversations, their messages, and the agent rows behind each question.
//!
//! A question is written in one transaction ([`ask`]): the user message, the assistant message
//! (status `streaming`, empty), the conversation's agent session if it has none, the agent
//! request chained to the session's previous one, and the agent job. The worker then fills the
//! assistant message in place: [`append`] adds flushed text, [`complete`], [`fail`] end it, and
//! the API's [`cancel`] stops it. Every change to an assistant message sends a
//! [`MESSAGE_EVENTS_CHANNEL`] notification (delivered at commit) whose payload is only
//! `message_id:byte_length:status`: listeners re-read the row, through their own user
//! transaction, so no text leaves row-level security through the notification.
//!
//! The row is the replay log: text is only ever appended while the message is `streaming`, and
//! appends are guarded by the length the writer expects, so two writers can never interleave
//! and a byte offset into `content` names the same text forever.

use crate::jobs::{AGENT_QUEUE, enqueue};
use crate::rows::{column, parse_status};
use crate::{StoreError, UserTx};
use chrono::{DateTime, Utc};
use ragpipe_core::{ConversationId, MessageId, MessageStatus, RequestStatus, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The channel assistant-message changes are announced on.
pub const MESSAGE_EVENTS_CHANNEL: &str = "ragpipe_message_events";

/// The SQL expression of a [`MessageEvent`]'s payload, over columns named `id`, `bytes` and
/// `status` (a macro, so that the statements can `concat!` it): the one place the database
/// side of the format is written.
macro_rules! message_event_payload {
    () => {
        "id::text || ':' || bytes || ':' || status"
    };
}

/// One [`MESSAGE_EVENTS_CHANNEL`] notification: a message changed, it is now `bytes` long and
/// `status`. Its payload is `message_id:bytes:status`; [`MessageEvent::payload`] and
/// `message_event_payload!` write it, [`MessageEvent::parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageEvent {
    /// The message.
    pub message_id: Uuid,
    /// Its content's length in bytes.
    pub bytes: i64,
    /// Its status.
    pub status: MessageStatus,
}

impl MessageEvent {
    /// The notification payload.
    pub fn payload(&self) -> String {
        format!("{}:{}:{}", self.message_id, self.bytes, self.status)
    }

    /// Reads a payload; `None` if it is not one.
    pub fn parse(payload: &str) -> Option<MessageEvent> {
        let mut parts = payload.splitn(3, ':');
        let message_id = Uuid::parse_str(parts.next()?).ok()?;
        let bytes = parts.next()?.parse().ok()?;
        let status = parts.next()?.parse().ok()?;
        Some(MessageEvent {
            message_id,
            bytes,
            status,
        })
    }
}

/// Longest title derived from a first question, in characters.
const TITLE_CHARS: usize = 80;

/// Answer one question: everything else is read from the agent request's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentJob {
    /// Owner, to act as.
    pub user_id: UserId,
    /// The agent request.
    pub request_id: Uuid,
}

/// A conversation as its owner sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Conversation {
    /// Id.
    pub id: Uuid,
    /// Title (the first question, shortened, unless one was given).
    pub title: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last question asked (or creation).
    pub updated_at: DateTime<Utc>,
}

const CONVERSATION_COLUMNS: &str = "id, title, created_at, updated_at";

/// A message as its owner sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Message {
    /// Id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// `user` or `assistant`.
    pub role: String,
    /// The text (while streaming: what has been flushed so far).
    pub content: String,
    /// `streaming`, `complete`, `failed` or `cancelled`.
    pub status: String,
    /// Sources the answer referenced: `[{"n", "chunk_id", "document_id", "filename", "pages"}]`.
    pub citations: serde_json::Value,
    /// Model that wrote it.
    pub model: Option<String>,
    /// Prompt tokens of the answer.
    pub prompt_tokens: Option<i32>,
    /// Tokens of the answer.
    pub completion_tokens: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it stopped changing.
    pub completed_at: Option<DateTime<Utc>>,
}

impl Message {
    /// The typed status; a value the type does not know is an error, not a guess.
    pub fn status(&self) -> Result<MessageStatus, StoreError> {
        parse_status(&self.status)
    }
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, role, content, status, citations, model, prompt_tokens, \
     completion_tokens, error, created_at, updated_at, completed_at";

/// Creates a conversation.
pub async fn create(tx: &mut UserTx, title: Option<&str>) -> Result<Conversation, StoreError> {
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO copilot_conversations (id, user_id, title) VALUES ($1, $2, $3) RETURNING {CONVERSATION_COLUMNS}"
    )))
    .bind(ConversationId::new().0)
    .bind(tx.user_id().0)
    .bind(title)
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("creating a conversation"))
}

/// One conversation, or `NotFound` (also for another user's).
pub async fn get(tx: &mut UserTx, id: ConversationId) -> Result<Conversation, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM copilot_conversations WHERE id = $1"
    )))
    .bind(id.0)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading a conversation"))?
    .ok_or(StoreError::NotFound("conversation"))
}

/// Most recently active first, `limit` at a time, after the `before` conversation of the
/// previous page.
pub async fn list(
    tx: &mut UserTx,
    before: Option<ConversationId>,
    limit: u32,
) -> Result<Vec<Conversation>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM copilot_conversations \
         WHERE $1::uuid IS NULL OR (updated_at, id) < (SELECT updated_at, id FROM copilot_conversations WHERE id = $1) \
         ORDER BY updated_at DESC, id DESC LIMIT $2"
    )))
    .bind(before.map(|b| b.0))
    .bind(i64::from(limit.clamp(1, 1000)))
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing conversations"))
}

/// The conversation's messages, oldest first, `limit` at a time after the `after` message.
/// `NotFound` when the conversation is not the caller's.
pub async fn messages(
    tx: &mut UserTx,
    conversation: ConversationId,
    after: Option<MessageId>,
    limit: u32,
) -> Result<Vec<Message>, StoreError> {
    get(tx, conversation).await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM copilot_messages WHERE conversation_id = $1 \
         AND ($2::uuid IS NULL OR (created_at, id) > (SELECT created_at, id FROM copilot_messages WHERE id = $2)) \
         ORDER BY created_at, id LIMIT $3"
    )))
    .bind(conversation.0)
    .bind(after.map(|a| a.0))
    .bind(i64::from(limit.clamp(1, 1000)))
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing messages"))
}

/// One message, or `NotFound` (also for another user's).
pub async fn message(tx: &mut UserTx, id: MessageId) -> Result<Message, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM copilot_messages WHERE id = $1"
    )))
    .bind(id.0)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading a message"))?
    .ok_or(StoreError::NotFound("message"))
}

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
    sqlx::query("SELECT id FROM copilot_conversations WHERE id = $1 FOR UPDATE")
        .bind(conversation.0)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("locking a conversation"))?
        .ok_or(StoreError::NotFound("conversation"))?;
    sqlx::query(
        "INSERT INTO agent_sessions (id, user_id, conversation_id, model) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (conversation_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(user.0)
    .bind(conversation.0)
    .bind(settings.model)
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("creating an agent session"))?;
    let session =
        sqlx::query("SELECT id, retrieval_mode, k, last_request_id FROM agent_sessions WHERE conversation_id = $1")
            .bind(conversation.0)
            .fetch_one(tx.conn())
            .await
            .map_err(StoreError::db("reading the agent session"))?;
    let session_id: Uuid = column(&session, "id")?;
    let mode = match settings.retrieval_mode {
        Some(mode) => mode.to_owned(),
        None => column(&session, "retrieval_mode")?,
    };
    let k = match settings.k {
        Some(k) => k as i32,
        None => column(&session, "k")?,
    };
    let previous: Option<Uuid> = column(&session, "last_request_id")?;

    let (user_message_id, assistant_message_id, request_id) = (MessageId::new(), MessageId::new(), Uuid::now_v7());
    let insert_message = format!(
        "INSERT INTO copilot_messages (id, conversation_id, user_id, role, content, status, model) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {MESSAGE_COLUMNS}"
    );
    let user_message: Message = sqlx::query_as(sqlx::AssertSqlSafe(insert_message.clone()))
        .bind(user_message_id.0)
        .bind(conversation.0)
        .bind(user.0)
        .bind("user")
        .bind(content)
        .bind("complete")
        .bind(None::<&str>)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::db("storing the question"))?;
    let assistant_message: Message = sqlx::query_as(sqlx::AssertSqlSafe(insert_message))
        .bind(assistant_message_id.0)
        .bind(conversation.0)
        .bind(user.0)
        .bind("assistant")
        .bind("")
        .bind("streaming")
        .bind(settings.model)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::db("creating the answer message"))?;
    sqlx::query(
        "INSERT INTO agent_requests (id, user_id, session_id, conversation_id, user_message_id, assistant_message_id, \
                                     previous_request_id, retrieval) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(request_id)
    .bind(user.0)
    .bind(session_id)
    .bind(conversation.0)
    .bind(user_message_id.0)
    .bind(assistant_message_id.0)
    .bind(previous)
    .bind(serde_json::json!({"mode": mode, "k": k}))
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("creating the agent request"))?;
    let title: String = content.split_whitespace().collect::<Vec<_>>().join(" ");
    let title: String = title.chars().take(TITLE_CHARS).collect();
    sqlx::query(
        "WITH s AS (UPDATE agent_sessions SET last_request_id = $2, updated_at = now() WHERE id = $3) \
         UPDATE copilot_conversations SET updated_at = now(), title = coalesce(title, nullif($4, '')) WHERE id = $1",
    )
    .bind(conversation.0)
    .bind(request_id)
    .bind(session_id)
    .bind(title)
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
#[derive(Debug, Clone, sqlx::FromRow)]
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
    sqlx::query_as(
        "SELECT r.id, r.session_id, r.conversation_id, r.user_message_id, r.assistant_message_id, r.status, \
                r.retrieval, r.results, q.content AS question, a.status AS message_status, \
                octet_length(a.content)::bigint AS message_bytes \
         FROM agent_requests r \
         JOIN copilot_messages q ON q.id = r.user_message_id \
         JOIN copilot_messages a ON a.id = r.assistant_message_id \
         WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading an agent request"))?
    .ok_or(StoreError::NotFound("agent request"))
}

/// One message of the history before a question.
#[derive(Debug, Clone, sqlx::FromRow)]
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
    let mut rows: Vec<HistoryMessage> = sqlx::query_as(
        "SELECT role, content, status FROM copilot_messages \
         WHERE conversation_id = $1 AND role IN ('user', 'assistant') \
           AND (created_at, id) < (SELECT created_at, id FROM copilot_messages WHERE id = $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(conversation.0)
    .bind(before.0)
    .bind(i64::from(limit))
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading the conversation's history"))?;
    rows.reverse();
    Ok(rows)
}

/// Marks the request running (again, on a retry). Returns false when it already ended.
pub async fn start(tx: &mut UserTx, request: Uuid) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE agent_requests SET status = 'running', started_at = coalesce(started_at, now()), progress = 0.05 \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(request)
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
    sqlx::query(concat!(
        "WITH r AS (UPDATE agent_requests SET results = results || $2, progress = greatest(progress, $3) \
                    WHERE id = $1 RETURNING assistant_message_id), \
              m AS (SELECT m.id, octet_length(m.content)::bigint AS bytes, m.status \
                    FROM r JOIN copilot_messages m ON m.id = r.assistant_message_id) \
         SELECT pg_notify($4, ",
        message_event_payload!(),
        ") FROM m"
    ))
    .bind(request)
    .bind(results)
    .bind(progress.clamp(0.0, 1.0))
    .bind(MESSAGE_EVENTS_CHANNEL)
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording the agent's results"))?;
    Ok(())
}

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
    let row = sqlx::query("SELECT status, octet_length(content)::bigint AS bytes FROM copilot_messages WHERE id = $1")
        .bind(message.0)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("reading a message's state"))?
        .ok_or(StoreError::NotFound("message"))?;
    let status: String = column(&row, "status")?;
    Ok(Written::Refused {
        status: parse_status(&status)?,
        bytes: column(&row, "bytes")?,
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
    let row = sqlx::query(concat!(
        "WITH u AS (UPDATE copilot_messages SET content = content || $3, updated_at = now() \
                    WHERE id = $1 AND status = 'streaming' AND octet_length(content) = $2 \
                    RETURNING id, octet_length(content)::bigint AS bytes, status) \
         SELECT bytes, pg_notify($4, ",
        message_event_payload!(),
        ") FROM u"
    ))
    .bind(message.0)
    .bind(expected_bytes)
    .bind(text)
    .bind(MESSAGE_EVENTS_CHANNEL)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("appending to a message"))?;
    match row {
        Some(row) => Ok(Written::Done {
            bytes: column(&row, "bytes")?,
        }),
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
    let row = sqlx::query(concat!(
        "WITH u AS (UPDATE copilot_messages SET content = content || $3, status = 'complete', citations = $4, \
                           model = $5, prompt_tokens = $6, completion_tokens = $7, updated_at = now(), completed_at = now() \
                    WHERE id = $1 AND status = 'streaming' AND octet_length(content) = $2 \
                    RETURNING id, octet_length(content)::bigint AS bytes, status) \
         SELECT bytes, pg_notify($8, ",
        message_event_payload!(),
        ") FROM u"
    ),
    )
    .bind(ending.message.0)
    .bind(ending.expected_bytes)
    .bind(ending.tail)
    .bind(citations)
    .bind(ending.model)
    .bind(clamp_i32(ending.prompt_tokens))
    .bind(clamp_i32(ending.completion_tokens))
    .bind(MESSAGE_EVENTS_CHANNEL)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("completing an answer"))?;
    let Some(row) = row else {
        return refused(tx, ending.message).await;
    };
    end_request(tx, ending, "completed", None).await?;
    Ok(Written::Done {
        bytes: column(&row, "bytes")?,
    })
}

/// Fails a streaming answer with `error`, keeping its text (the tail is appended when the
/// length is the expected one; otherwise the text stays as it is). The request fails too.
/// Refused only when the message is no longer streaming.
pub async fn fail(tx: &mut UserTx, ending: &Ending<'_>, error: &str) -> Result<Written, StoreError> {
    let row = sqlx::query(concat!(
        "WITH u AS (UPDATE copilot_messages SET \
                           content = CASE WHEN octet_length(content) = $2 THEN content || $3 ELSE content END, \
                           status = 'failed', error = $4, model = $5, prompt_tokens = $6, completion_tokens = $7, \
                           updated_at = now(), completed_at = now() \
                    WHERE id = $1 AND status = 'streaming' \
                    RETURNING id, octet_length(content)::bigint AS bytes, status) \
         SELECT bytes, pg_notify($8, ",
        message_event_payload!(),
        ") FROM u"
    ))
    .bind(ending.message.0)
    .bind(ending.expected_bytes)
    .bind(ending.tail)
    .bind(error)
    .bind(ending.model)
    .bind(clamp_i32(ending.prompt_tokens))
    .bind(clamp_i32(ending.completion_tokens))
    .bind(MESSAGE_EVENTS_CHANNEL)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("failing an answer"))?;
    let Some(row) = row else {
        return refused(tx, ending.message).await;
    };
    end_request(tx, ending, "failed", Some(error)).await?;
    Ok(Written::Done {
        bytes: column(&row, "bytes")?,
    })
}

/// Records what a cancelled answer had used (the message keeps the text it had when it was
/// cancelled) and ends its request.
pub async fn settle_cancelled(tx: &mut UserTx, ending: &Ending<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE copilot_messages SET model = $2, prompt_tokens = $3, completion_tokens = $4, updated_at = now() \
         WHERE id = $1 AND status = 'cancelled'",
    )
    .bind(ending.message.0)
    .bind(ending.model)
    .bind(clamp_i32(ending.prompt_tokens))
    .bind(clamp_i32(ending.completion_tokens))
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
    sqlx::query(
        "UPDATE agent_requests SET status = $2, error = $3, prompt_tokens = $4, completion_tokens = $5, \
                cost = ($6::float8)::numeric, results = results || $7, progress = 1, \
                finished_at = coalesce(finished_at, now()) \
         WHERE id = $1",
    )
    .bind(ending.request)
    .bind(status)
    .bind(error)
    .bind(clamp_i32(ending.prompt_tokens))
    .bind(clamp_i32(ending.completion_tokens))
    .bind(ending.cost)
    .bind(&ending.results)
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("ending an agent request"))?;
    Ok(())
}

/// Fails an answer whose job was given up before it could write (retrieval kept failing, the
/// prompt could not be built): the message keeps whatever text it has.
pub async fn give_up(tx: &mut UserTx, request: Uuid, error: &str) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "WITH r AS (UPDATE agent_requests SET status = 'failed', error = $2, progress = 1, \
                           finished_at = coalesce(finished_at, now()) \
                    WHERE id = $1 AND status IN ('queued', 'running') RETURNING assistant_message_id), \
              u AS (UPDATE copilot_messages m SET status = 'failed', error = $2, updated_at = now(), completed_at = now() \
                    FROM r WHERE m.id = r.assistant_message_id AND m.status = 'streaming' \
                    RETURNING m.id, octet_length(m.content)::bigint AS bytes, m.status) \
         SELECT pg_notify($3, ",
        message_event_payload!(),
        ") FROM u"
    ),
    )
    .bind(request)
    .bind(error)
    .bind(MESSAGE_EVENTS_CHANNEL)
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("failing an agent request"))?;
    Ok(())
}

/// Cancels a streaming answer: the message `cancelled` with the text it has, its request
/// `cancelled`. Returns the message as it is now; one that already ended is returned unchanged
/// (check its status). `NotFound` for another user's message.
pub async fn cancel(tx: &mut UserTx, message_id: MessageId) -> Result<Message, StoreError> {
    let cancelled: Option<Message> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE copilot_messages SET status = 'cancelled', updated_at = now(), completed_at = now() \
         WHERE id = $1 AND role = 'assistant' AND status = 'streaming' RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(message_id.0)
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("cancelling an answer"))?;
    let Some(m) = cancelled else {
        return message(tx, message_id).await;
    };
    sqlx::query(
        "UPDATE agent_requests SET status = 'cancelled', finished_at = coalesce(finished_at, now()) \
         WHERE assistant_message_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(message_id.0)
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("cancelling an agent request"))?;
    let event = MessageEvent {
        message_id: m.id,
        bytes: m.content.len() as i64,
        status: MessageStatus::Cancelled,
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(MESSAGE_EVENTS_CHANNEL)
        .bind(event.payload())
        .execute(tx.conn())
        .await
        .map_err(StoreError::db("announcing a cancellation"))?;
    Ok(m)
}

/// An assistant message as a stream reader sees it: its state, the text after a byte offset,
/// and what its request recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AnswerState {
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// `user` or `assistant`.
    pub role: String,
    /// Its status.
    #[sqlx(try_from = "String")]
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
    sqlx::query_as(
        "SELECT m.id AS message_id, m.conversation_id, m.role, m.status, octet_length(m.content)::bigint AS bytes, \
                CASE WHEN octet_length(m.content) > $2 THEN substring(convert_to(m.content, 'UTF8') FROM $2::int + 1) \
                     ELSE ''::bytea END AS tail, \
                m.model, m.prompt_tokens, m.completion_tokens, m.error, m.citations, \
                r.id AS request_id, r.user_message_id, r.status AS request_status, coalesce(r.results, '{}'::jsonb) AS results, \
                r.cost::float8 AS cost \
         FROM copilot_messages m LEFT JOIN agent_requests r ON r.assistant_message_id = m.id \
         WHERE m.id = $1",
    )
    .bind(id.0)
    .bind(from.max(0))
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading an answer's state"))?
    .ok_or(StoreError::NotFound("message"))
}

fn clamp_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_events_round_trip_and_refuse_what_is_not_one() {
        let event = MessageEvent {
            message_id: Uuid::now_v7(),
            bytes: 42,
            status: MessageStatus::Streaming,
        };
        assert_eq!(event.payload(), format!("{}:42:streaming", event.message_id));
        assert_eq!(MessageEvent::parse(&event.payload()), Some(event));
        assert_eq!(MessageEvent::parse("nonsense"), None);
        assert_eq!(MessageEvent::parse(&format!("{}:x:complete", event.message_id)), None);
    }
}
