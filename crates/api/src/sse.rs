//! Server-sent events of an answer (DESIGN.md, "Streaming protocol (SSE)").
//!
//! The events come from [`ragpipe_agent::follow`]: derived from the assistant message's row and
//! woken by the process's [`MessageFeed`], so this process serves the stream whichever worker
//! writes the answer. Every event has an id; a delta's id is the byte offset where it ends in
//! the message, so `GET /v1/messages/{id}/events` with `Last-Event-ID` resumes with no gap and
//! no duplicate, during or after the answer. A client that goes away only ends its own stream:
//! the worker writes the answer whether or not anyone is listening. A server that shuts down
//! ends its open streams ([`StreamsClosing`]): graceful shutdown waits for every response, and
//! an answer may outlive the process; clients resume elsewhere with `Last-Event-ID`.

use crate::params::IdPath;
use crate::{AppState, Auth, Error, ErrorBody};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use ragpipe_agent::follow::FollowError;
use ragpipe_agent::{AnswerEvent, Cursor, Follower, MessageFeed};
use ragpipe_core::{MessageId, UserId};
use std::convert::Infallible;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A comment line is sent after this much silence, so that proxies and clients keep the
/// connection open while the model thinks.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Cancelled when the server begins to shut down ([`crate::serve`] sets it on the router):
/// open event streams then end without a terminal event, as if the connection dropped.
#[derive(Clone, Debug, Default)]
pub struct StreamsClosing(pub CancellationToken);

/// Whether the request asks for an event stream (`Accept: text/event-stream`).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")))
}

impl From<FollowError> for Error {
    fn from(e: FollowError) -> Error {
        match e {
            FollowError::NotFound => Error::not_found("message"),
            FollowError::BadEventId(e) => Error::bad_request(e.to_string()),
            FollowError::Store(e) => e.into(),
        }
    }
}

/// The event stream of answer `message` for `user`, from `cursor`. Fails before any byte is
/// sent (404 for a message that is not the user's answer, 400 for a bad `Last-Event-ID`).
/// The stream ends early, without a terminal event, when `closing` is cancelled.
pub async fn answer_stream(
    state: &AppState,
    user: UserId,
    message: MessageId,
    cursor: Cursor,
    closing: Option<StreamsClosing>,
) -> Result<Response, Error> {
    let feed = MessageFeed::shared(&state.store).await?;
    let follower = Follower::open(&state.store, &feed, user, message, cursor).await?;
    metrics::counter!("ragpipe_sse_streams_total").increment(1);
    let closing = closing.map(|c| c.0).unwrap_or_default();
    Ok(sse_response(
        follower.into_stream().take_until(closing.cancelled_owned()),
    ))
}

fn sse_response(events: impl Stream<Item = Result<AnswerEvent, FollowError>> + Send + 'static) -> Response {
    let stream = events.map(|item| {
        Ok::<Event, Infallible>(match item {
            Ok(event) => to_sse(&event),
            // The stream broke (the database went away). No id: a client reconnecting with
            // the last id it saw resumes where it was.
            Err(e) => {
                tracing::warn!(error = %e, "answer stream failed");
                Event::default()
                    .event("error")
                    .json_data(serde_json::json!({
                        "code": "stream_interrupted",
                        "message": "the event stream was interrupted; reconnect with Last-Event-ID",
                    }))
                    .unwrap_or_default()
            }
        })
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Tell buffering reverse proxies (nginx) to pass events through as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One protocol event as SSE.
pub fn to_sse(event: &AnswerEvent) -> Event {
    let data = event.data();
    Event::default()
        .event(event.name())
        .id(event.id())
        .json_data(&data)
        .unwrap_or_else(|_| Event::default().event(event.name()).id(event.id()).data("null"))
}

/// `GET /v1/messages/{id}/events`: the answer's events, from after `Last-Event-ID` when sent.
#[utoipa::path(
    get,
    operation_id = "answer_events",
    path = "/v1/messages/{id}/events",
    tag = "messages",
    summary = "An answer's events (server-sent events), resumable",
    description = "Derived from the answer's message row, so any API process serves the stream \
        whichever worker writes the answer, during the answer or after it. Send the id of the last \
        event received as `Last-Event-ID` to resume with no gap and no duplicate. Fails before the \
        stream starts with 404 (not the caller's answer) or 400 (an id this stream never sent).",
    params(
        ("id" = Uuid, Path, description = "The message's id"),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "The id of the last event \
            received: the stream resumes after it. Browsers' EventSource sends it on reconnect."),
    ),
    responses(
        (status = 200, description = "The answer's server-sent events (see the AnswerEvent schema \
            for their order and ids). The stream ends after `done` or `error`.",
            content_type = "text/event-stream", body = String,
            headers(("X-Accel-Buffering" = String, description = "`no`: buffering proxies pass events through as they come")),
            example = json!(crate::openapi::ANSWER_EVENTS_EXAMPLE)),
        (status = 400, description = "An `id` that is not a UUID, or a `Last-Event-ID` this stream \
            never sent (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No API key, or a malformed, unknown or revoked one (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "No such answer of the caller's: a question, or another user's \
            message, is not found either (`not_found`)", body = ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    auth: Auth,
    IdPath(id): IdPath,
    headers: HeaderMap,
    closing: Option<Extension<StreamsClosing>>,
) -> Result<Response, Error> {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let cursor = Cursor::after(last).map_err(|e| Error::bad_request(e.to_string()))?;
    answer_stream(
        &state,
        auth.user_id,
        MessageId(id),
        cursor,
        closing.map(|Extension(c)| c),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_are_read() {
        let mut h = HeaderMap::new();
        assert!(!wants_event_stream(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(wants_event_stream(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_event_stream(&h));
    }
}
