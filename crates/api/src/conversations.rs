//! `/v1/conversations`: create, list, read messages, ask. Asking writes the question, the
//! answer-to-be, the agent request and its job in one transaction; with
//! `Accept: text/event-stream` the response is the answer's event stream ([`crate::sse`]),
//! otherwise `202 Accepted` with the ids and where to follow the answer.

use crate::body::{JsonBody, OptionalJsonBody};
use crate::params::{IdPath, Query};
use crate::schemas;
use crate::sse::{StreamsClosing, answer_stream, wants_event_stream};
use crate::{AppState, Auth, Error, ErrorBody};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ragpipe_agent::Cursor;
use ragpipe_agent::retrieve::SearchMode;
use ragpipe_core::{ConversationId, MessageId};
use ragpipe_store::conversations::{self, AskSettings, Asked, Conversation, Message};
use ragpipe_store::quotas;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Conversations or messages per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Longest question, in bytes.
pub const MAX_QUESTION_BYTES: usize = 32 * 1024;
/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// The body of `POST /v1/conversations` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"title": "Lighthouse maintenance"}))]
pub struct NewConversation {
    /// A title of at most 200 characters (default: the first question, shortened).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub title: Option<String>,
}

/// `POST /v1/conversations`: 201 with the conversation.
#[utoipa::path(
    post,
    operation_id = "create_conversation",
    path = "/v1/conversations",
    tag = "conversations",
    summary = "Create a conversation",
    description = "The body is optional; without a title the first question, shortened, becomes the title.",
    request_body(content = Option<NewConversation>, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = schemas::Conversation),
        (status = 400, description = "Broken JSON, a field of the wrong type, an unknown field, a NUL \
            character, a title over 200 characters (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 413, description = "The JSON body is over 2 MiB (`request_too_large`)", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    OptionalJsonBody(body): OptionalJsonBody<NewConversation>,
) -> Result<(StatusCode, Json<Conversation>), Error> {
    if let Some(t) = &body.title
        && t.chars().count() > MAX_TITLE_CHARS
    {
        return Err(Error::bad_request(format!(
            "title is longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let conversation = conversations::create(&mut tx, body.title.as_deref()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

/// Paging of `GET /v1/conversations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size; values outside 1..=200 are clamped (default 50).
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<u32>,
    /// The `next_before` cursor of the previous page.
    pub before: Option<Uuid>,
}

/// A page of conversations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationPage {
    /// Most recently active first.
    #[schema(value_type = Vec<schemas::Conversation>)]
    pub conversations: Vec<Conversation>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<Uuid>,
}

/// `GET /v1/conversations`: the caller's conversations, most recently active first.
#[utoipa::path(
    get,
    operation_id = "list_conversations",
    path = "/v1/conversations",
    tag = "conversations",
    summary = "List conversations, most recently active first",
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = ConversationPage),
        (status = 400, description = "A malformed or unknown parameter, a NUL character in one \
            (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<ListParams>,
) -> Result<Json<ConversationPage>, Error> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    // May come from the read replica; the caller's own writes are always in it.
    let mut tx = state.store.read_tx(auth.user_id).await?;
    let conversations = conversations::list(&mut tx, params.before.map(ConversationId), limit).await?;
    tx.commit().await?;
    let next_before = (conversations.len() == limit as usize)
        .then(|| conversations.last().map(|c| c.id))
        .flatten();
    Ok(Json(ConversationPage {
        conversations,
        next_before,
    }))
}

/// Paging of `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageParams {
    /// Page size; values outside 1..=200 are clamped (default 50).
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: Option<u32>,
    /// The `next_after` cursor of the previous page.
    pub after: Option<Uuid>,
}

/// A page of messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    /// Oldest first.
    #[schema(value_type = Vec<schemas::Message>)]
    pub messages: Vec<Message>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<Uuid>,
}

/// `GET /v1/conversations/{id}/messages`: its messages, oldest first (404 for another user's).
#[utoipa::path(
    get,
    operation_id = "list_messages",
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    summary = "A conversation's messages, oldest first",
    params(("id" = Uuid, Path, description = "The conversation's id"), MessageParams),
    responses(
        (status = 200, description = "A page", body = MessagePage),
        (status = 400, description = "An `id` that is not a UUID, a malformed or unknown parameter \
            (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such conversation of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
    ),
)]
pub async fn messages(
    State(state): State<AppState>,
    auth: Auth,
    IdPath(id): IdPath,
    Query(params): Query<MessageParams>,
) -> Result<Json<MessagePage>, Error> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    // May come from the read replica; the caller's own questions are always in it.
    let mut tx = state.store.read_tx(auth.user_id).await?;
    let messages = conversations::messages(&mut tx, ConversationId(id), params.after.map(MessageId), limit).await?;
    tx.commit().await?;
    let next_after = (messages.len() == limit as usize)
        .then(|| messages.last().map(|m| m.id))
        .flatten();
    Ok(Json(MessagePage { messages, next_after }))
}

/// The body of `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"content": "How large are the batches?", "mode": "hybrid", "k": 8}))]
pub struct NewQuestion {
    /// The question (at most 32 KiB, not blank).
    #[schema(min_length = 1)]
    pub content: String,
    /// Retrieval mode for this question (default: the conversation's, `hybrid`).
    #[serde(default)]
    #[schema(value_type = Option<schemas::SearchMode>)]
    pub mode: Option<SearchMode>,
    /// Passages to retrieve, 1..=100 (default: the conversation's, 8).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<u32>,
}

/// What asking returns without an event stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AskResponse {
    /// What was written.
    #[serde(flatten)]
    #[schema(value_type = schemas::Asked)]
    pub asked: Asked,
    /// Where the answer's events are: `/v1/messages/{id}/events` of the answer (`GET`,
    /// resumable with `Last-Event-ID`).
    pub events_url: String,
}

/// `POST /v1/conversations/{id}/messages`: asks a question. With `Accept: text/event-stream`
/// the answer's event stream; otherwise 202 with the messages and the events URL.
#[utoipa::path(
    post,
    operation_id = "ask",
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    summary = "Ask a question",
    description = "Stores the question, the answer to be (status `streaming`, empty), the agent \
        request and its job in one transaction; a worker retrieves passages and writes the answer. \
        With `Accept: text/event-stream` the response is the answer's event stream (as \
        `GET /v1/messages/{id}/events` from the start); otherwise 202 with the ids and `events_url`.",
    params(("id" = Uuid, Path, description = "The conversation's id")),
    request_body(content = NewQuestion, content_type = "application/json"),
    responses(
        (status = 202, description = "Asked; follow the answer at `events_url`", body = AskResponse),
        (status = 200, description = "With `Accept: text/event-stream`: the answer's server-sent \
            events (see the AnswerEvent schema for their order and ids). The stream ends after \
            `done` or `error`.", content_type = "text/event-stream", body = String,
            headers(("X-Accel-Buffering" = String, description = "`no`: buffering proxies pass events through as they come")),
            example = json!(crate::openapi::ANSWER_EVENTS_EXAMPLE)),
        (status = 400, description = "An `id` that is not a UUID, broken JSON, a field of the wrong \
            type, an unknown field, a NUL character in a string, empty `content` or `k` outside \
            1..=100 (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such conversation of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
        (status = 413, description = "The question is longer than 32 KiB (`question_too_large`), or \
            the body over 2 MiB (`request_too_large`)", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 429, description = "The caller's monthly token budget is used up until the period \
            rolls over (`token_budget_exceeded`, naming the budget and the use; see `GET /v1/usage`)", body = ErrorBody),
    ),
)]
pub async fn ask(
    State(state): State<AppState>,
    auth: Auth,
    IdPath(id): IdPath,
    headers: HeaderMap,
    closing: Option<Extension<StreamsClosing>>,
    JsonBody(question): JsonBody<NewQuestion>,
) -> Result<Response, Error> {
    if question.content.trim().is_empty() {
        return Err(Error::bad_request("content is empty"));
    }
    if question.content.len() > MAX_QUESTION_BYTES {
        return Err(Error::too_large(
            "question_too_large",
            format!(
                "the question is {} bytes; at most {MAX_QUESTION_BYTES}",
                question.content.len()
            ),
        ));
    }
    if let Some(k) = question.k
        && !(1..=100).contains(&k)
    {
        return Err(Error::bad_request(format!("k is {k}; it must be 1..=100")));
    }
    let settings = AskSettings {
        model: &state.config.chat.model,
        retrieval_mode: question.mode.map(SearchMode::as_str),
        k: question.k,
        max_attempts: state.config.worker.max_attempts,
    };
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let asked = conversations::ask(&mut tx, ConversationId(id), &question.content, &settings).await?;
    // Checked after the question is written, so that another user's or a missing conversation
    // is still a 404; when the month's tokens are used up the transaction rolls back (429).
    quotas::check_question(&mut tx).await.map_err(crate::usage::refused)?;
    tx.commit().await?;
    let message = MessageId(asked.assistant_message.id);
    tracing::info!(conversation_id = %id, message_id = %message, request_id = %asked.request_id, "question asked");
    metrics::counter!("ragpipe_questions_total").increment(1);
    if wants_event_stream(&headers) {
        let closing = closing.map(|Extension(c)| c);
        return answer_stream(&state, auth.user_id, message, Cursor::Start, closing).await;
    }
    let events_url = format!("/v1/messages/{message}/events");
    Ok((StatusCode::ACCEPTED, Json(AskResponse { asked, events_url })).into_response())
}
