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

use crate::rows::parse_status;
use crate::{StoreError, UserTx};
use chrono::{DateTime, Utc};
use ragpipe_core::{ConversationId, MessageId, MessageStatus, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The channel assistant-message changes are announced on.
pub const MESSAGE_EVENTS_CHANNEL: &str = "ragpipe_message_events";

/// A checked statement that announces a message change: `$head` + the SQL expression of a
/// [`MessageEvent`]'s payload, over columns named `id`, `bytes` and `status` + `$tail` (each a
/// string literal), with its arguments. The one place the database side of the format is
/// written.
macro_rules! query_notifying {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query!($head + "id::text || ':' || bytes || ':' || status" + $tail $(, $arg)*)
    };
}

/// A checked statement that returns [`Conversation`] rows: `$head` + its columns + `$tail`.
macro_rules! query_conversations {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(Conversation, $head + "id, title, created_at, updated_at " + $tail $(, $arg)*)
    };
}

/// A checked statement that returns [`Message`] rows: `$head` + its columns + `$tail`.
macro_rules! query_messages {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Message,
            $head
                + "id, conversation_id, role, content, status, citations, model, prompt_tokens, completion_tokens, \
                   error, created_at, updated_at, completed_at "
                + $tail
            $(, $arg)*
        )
    };
}

mod answer;
mod ask;

pub use answer::*;
pub use ask::*;

/// One [`MESSAGE_EVENTS_CHANNEL`] notification: a message changed, it is now `bytes` long and
/// `status`. Its payload is `message_id:bytes:status`; [`MessageEvent::payload`] and
/// `query_notifying!` write it, [`MessageEvent::parse`] reads it.
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
#[derive(Debug, Clone, Serialize)]
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

/// A message as its owner sees it.
#[derive(Debug, Clone, Serialize)]
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

/// Creates a conversation.
pub async fn create(tx: &mut UserTx, title: Option<&str>) -> Result<Conversation, StoreError> {
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    let user = tx.user_id().0;
    query_conversations!(
        "INSERT INTO copilot_conversations (id, user_id, title) VALUES ($1, $2, $3) RETURNING ",
        "",
        ConversationId::new().0,
        user,
        title,
    )
    .fetch_one(tx.conn())
    .await
    .map_err(StoreError::db("creating a conversation"))
}

/// One conversation, or `NotFound` (also for another user's).
pub async fn get(tx: &mut UserTx, id: ConversationId) -> Result<Conversation, StoreError> {
    query_conversations!("SELECT ", "FROM copilot_conversations WHERE id = $1", id.0)
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
    query_conversations!(
        "SELECT ",
        "FROM copilot_conversations \
         WHERE $1::uuid IS NULL OR (updated_at, id) < (SELECT updated_at, id FROM copilot_conversations WHERE id = $1) \
         ORDER BY updated_at DESC, id DESC LIMIT $2",
        before.map(|b| b.0),
        i64::from(limit.clamp(1, 1000)),
    )
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
    query_messages!(
        "SELECT ",
        "FROM copilot_messages WHERE conversation_id = $1 \
         AND ($2::uuid IS NULL OR (created_at, id) > (SELECT created_at, id FROM copilot_messages WHERE id = $2)) \
         ORDER BY created_at, id LIMIT $3",
        conversation.0,
        after.map(|a| a.0),
        i64::from(limit.clamp(1, 1000)),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("listing messages"))
}

/// One message, or `NotFound` (also for another user's).
pub async fn message(tx: &mut UserTx, id: MessageId) -> Result<Message, StoreError> {
    query_messages!("SELECT ", "FROM copilot_messages WHERE id = $1", id.0)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::db("reading a message"))?
        .ok_or(StoreError::NotFound("message"))
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
