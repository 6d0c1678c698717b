//! `/v1/messages/{id}`: read one message, cancel an answer being written. The event stream of
//! an answer is in [`crate::sse`].

use crate::params::IdPath;
use crate::schemas;
use crate::{AppState, Auth, Error, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ragpipe_core::{MessageId, MessageStatus};
use ragpipe_store::conversations::{self, Message};

/// `GET /v1/messages/{id}`: one message (an answer shows what has been written so far).
#[utoipa::path(
    get,
    operation_id = "get_message",
    path = "/v1/messages/{id}",
    tag = "messages",
    summary = "One message",
    description = "An answer being written shows the text flushed so far.",
    params(("id" = Uuid, Path, description = "The message's id")),
    responses(
        (status = 200, description = "The message", body = schemas::Message),
        (status = 400, description = "An `id` that is not a UUID (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such message of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
    ),
)]
pub async fn get(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<Json<Message>, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let message = conversations::message(&mut tx, MessageId(id)).await?;
    tx.commit().await?;
    Ok(Json(message))
}

/// `POST /v1/messages/{id}/cancel`: stops an answer being written; it keeps the text it has
/// and ends `cancelled` (the worker stops generating at its next delta). 200 with the message;
/// 200 again for one already cancelled; 409 for one that ended otherwise or is a question.
#[utoipa::path(
    post,
    operation_id = "cancel_answer",
    path = "/v1/messages/{id}/cancel",
    tag = "messages",
    summary = "Stop an answer being written",
    description = "The answer keeps the text it has and ends `cancelled`; the worker stops generating \
        at its next delta. Cancelling an answer already cancelled is a 200 again.",
    params(("id" = Uuid, Path, description = "The message's id")),
    responses(
        (status = 200, description = "The cancelled answer", body = schemas::Message),
        (status = 400, description = "An `id` that is not a UUID (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such message of the caller's: another user's is not found either (`not_found`)", body = ErrorBody),
        (status = 409, description = "The answer already ended otherwise (`answer_finished`) or the \
            message is a question (`not_an_answer`)", body = ErrorBody),
    ),
)]
pub async fn cancel(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<Json<Message>, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let message = conversations::cancel(&mut tx, MessageId(id)).await?;
    tx.commit().await?;
    match message.status()? {
        MessageStatus::Cancelled => {
            tracing::info!(message_id = %id, "answer cancelled");
            Ok(Json(message))
        }
        status if message.role != "assistant" => Err(Error::new(
            StatusCode::CONFLICT,
            "not_an_answer",
            format!(
                "message {id} is a {} message ({status}); only answers can be cancelled",
                message.role
            ),
        )),
        status => Err(Error::new(
            StatusCode::CONFLICT,
            "answer_finished",
            format!("the answer already ended ({status})"),
        )),
    }
}
