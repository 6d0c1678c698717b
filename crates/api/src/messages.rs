//! `/v1/messages/{id}`: read one message, cancel an answer being written. The event stream of
//! an answer is in [`crate::sse`].

use crate::params::IdPath;
use crate::{AppState, Auth, Error};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ragpipe_core::{MessageId, MessageStatus};
use ragpipe_store::conversations::{self, Message};

/// `GET /v1/messages/{id}`: one message (an answer shows what has been written so far).
pub async fn get(State(state): State<AppState>, auth: Auth, IdPath(id): IdPath) -> Result<Json<Message>, Error> {
    let mut tx = state.store.user_tx(auth.user_id).await?;
    let message = conversations::message(&mut tx, MessageId(id)).await?;
    tx.commit().await?;
    Ok(Json(message))
}

/// `POST /v1/messages/{id}/cancel`: stops an answer being written; it keeps the text it has
/// and ends `cancelled` (the worker stops generating at its next delta). 200 with the message;
/// 200 again for one already cancelled; 409 for one that ended otherwise or is a question.
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
