//! Following an answer as it is written: the events of the streaming protocol (DESIGN.md,
//! "Streaming protocol (SSE)") derived from the assistant message's row, so that any process
//! can serve them and a reader can resume anywhere.
//!
//! Events and their ids, in order:
//!
//! | event | id | data |
//! | --- | --- | --- |
//! | `message` | `message` | conversation, question, answer and request ids |
//! | `context` | `context` | the numbered sources |
//! | `delta` | byte offset of the answer's content after this delta | `{"text"}` |
//! | `usage` | `usage` | model, prompt and completion tokens, cost |
//! | `done` | `done` | finish reason (`stop`, `length`, `cancelled`, ...) and status |
//! | `error` | `error` | `{"code", "message"}` |
//!
//! A delta's id is where it ends in the row, so the row is the replay log: resuming after
//! delta id `n` sends the content from byte `n`, with no gap and no duplicate whatever was
//! flushed in between, also after the answer has finished. [`Cursor`] is that position.

use crate::feed::{MessageFeed, Subscription};
use crate::sources::ContextEntry;
use futures::Stream;
use ragpipe_core::{MessageId, MessageStatus, UserId};
use ragpipe_store::conversations::{self, AnswerState};
use ragpipe_store::{Store, StoreError};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;
use uuid::Uuid;

/// Histogram of a follower's reads of the answer's row after a signal: connection,
/// transaction and the read; a stage of the time from a model's token to a reader.
pub const READ_SECONDS: &str = "ragpipe_answer_stream_read_seconds";

/// Counter of the signals followers took, by what they did with them: `memory` (text sent from
/// what this process's writer committed), `nothing_new` (a signal for text already sent),
/// `awaiting_handover` (a notification of text this process's writer is about to hand over),
/// `read` (the row read again).
pub const SIGNALS_TOTAL: &str = "ragpipe_answer_stream_signals_total";

/// How often a follower re-reads the row with no signal (signals can be lost on reconnects).
const POLL_FALLBACK: Duration = Duration::from_secs(2);

/// One event of an answer's stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum AnswerEvent {
    /// The ids involved.
    Message {
        /// The conversation.
        conversation_id: Uuid,
        /// The question's message.
        user_message_id: Option<Uuid>,
        /// The answer's message.
        message_id: Uuid,
        /// The agent request.
        request_id: Option<Uuid>,
    },
    /// The sources the answer was given.
    Context {
        /// Numbered, best first.
        sources: Vec<ContextEntry>,
    },
    /// More of the answer.
    Delta {
        /// The text.
        text: String,
        /// Where it ends in the message's content, in bytes (the event's id).
        #[serde(skip)]
        end: i64,
    },
    /// Tokens the answer used.
    Usage {
        /// Model.
        model: Option<String>,
        /// Prompt tokens.
        prompt_tokens: Option<i32>,
        /// Completion tokens.
        completion_tokens: Option<i32>,
        /// Cost.
        cost: Option<f64>,
    },
    /// The answer ended normally or was cancelled.
    Done {
        /// Why it ended (`stop`, `length`, ..., or `cancelled`).
        finish_reason: String,
        /// The message's status.
        status: MessageStatus,
        /// The sources it cited.
        citations: serde_json::Value,
    },
    /// The answer failed; what it had is kept.
    Error {
        /// A stable code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

impl AnswerEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            AnswerEvent::Message { .. } => "message",
            AnswerEvent::Context { .. } => "context",
            AnswerEvent::Delta { .. } => "delta",
            AnswerEvent::Usage { .. } => "usage",
            AnswerEvent::Done { .. } => "done",
            AnswerEvent::Error { .. } => "error",
        }
    }

    /// The SSE event id (see the module documentation).
    pub fn id(&self) -> String {
        match self {
            AnswerEvent::Delta { end, .. } => end.to_string(),
            other => other.name().to_owned(),
        }
    }

    /// The event's data as JSON.
    pub fn data(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => m.remove("data").unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }
}

/// Where a reader is in an answer's stream: after which event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Nothing sent yet.
    Start,
    /// After `message`.
    Message,
    /// After `context`, or after the deltas that end at this byte offset.
    Content(i64),
    /// After `usage`.
    Usage,
    /// After `done` or `error`: nothing more.
    End,
}

/// A `Last-Event-ID` that no event of this protocol has.
#[derive(Debug, thiserror::Error)]
#[error("Last-Event-ID {0:?} is not an event id of this stream")]
pub struct BadEventId(pub String);

impl Cursor {
    /// The position after the event with this id (none: the start).
    pub fn after(last_event_id: Option<&str>) -> Result<Cursor, BadEventId> {
        let Some(id) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Cursor::Start);
        };
        Ok(match id {
            "message" => Cursor::Message,
            "context" => Cursor::Content(0),
            "usage" => Cursor::Usage,
            "done" | "error" => Cursor::End,
            n => Cursor::Content(
                n.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| BadEventId(id.chars().take(40).collect()))?,
            ),
        })
    }

    /// The content offset from which text is still to be sent.
    fn offset(self) -> i64 {
        match self {
            Cursor::Content(n) => n,
            _ => 0,
        }
    }
}

/// The events a reader at `cursor` gets from `state`, and the cursor after them. Pure.
pub fn next_events(cursor: Cursor, state: &AnswerState) -> Result<(Vec<AnswerEvent>, Cursor), BadEventId> {
    let mut events = Vec::new();
    let mut cursor = cursor;
    let terminal = state.status != MessageStatus::Streaming;
    loop {
        match cursor {
            Cursor::Start => {
                events.push(AnswerEvent::Message {
                    conversation_id: state.conversation_id,
                    user_message_id: state.user_message_id,
                    message_id: state.message_id,
                    request_id: state.request_id,
                });
                cursor = Cursor::Message;
            }
            Cursor::Message => {
                let context = state.results.get("context").cloned();
                match context {
                    Some(c) => {
                        let sources: Vec<ContextEntry> = serde_json::from_value(c).unwrap_or_default();
                        events.push(AnswerEvent::Context { sources });
                        cursor = Cursor::Content(0);
                    }
                    // No context yet: wait for it, unless the answer ended without one (or,
                    // which the worker never does, has text without one).
                    None if terminal || state.bytes > 0 => cursor = Cursor::Content(0),
                    None => return Ok((events, cursor)),
                }
            }
            Cursor::Content(offset) => {
                if offset > state.bytes {
                    return Err(BadEventId(offset.to_string()));
                }
                if offset < state.bytes {
                    // `state.tail` holds the bytes after the offset the row was read from,
                    // which is this cursor's when the caller read with `cursor.offset()`.
                    let text = String::from_utf8(state.tail.clone()).map_err(|_| BadEventId(offset.to_string()))?;
                    events.push(AnswerEvent::Delta { text, end: state.bytes });
                    cursor = Cursor::Content(state.bytes);
                    continue;
                }
                if !terminal {
                    return Ok((events, cursor));
                }
                match state.status {
                    MessageStatus::Complete => {
                        events.push(AnswerEvent::Usage {
                            model: state.model.clone(),
                            prompt_tokens: state.prompt_tokens,
                            completion_tokens: state.completion_tokens,
                            cost: state.cost,
                        });
                        cursor = Cursor::Usage;
                    }
                    MessageStatus::Failed => {
                        events.push(AnswerEvent::Error {
                            code: "answer_failed".into(),
                            message: state.error.clone().unwrap_or_else(|| "the answer failed".into()),
                        });
                        cursor = Cursor::End;
                    }
                    MessageStatus::Cancelled | MessageStatus::Streaming => {
                        events.push(done(state));
                        cursor = Cursor::End;
                    }
                }
            }
            Cursor::Usage => {
                if !terminal {
                    return Ok((events, cursor));
                }
                events.push(done(state));
                cursor = Cursor::End;
            }
            Cursor::End => return Ok((events, cursor)),
        }
    }
}

fn done(state: &AnswerState) -> AnswerEvent {
    let finish_reason = match state.status {
        MessageStatus::Cancelled => "cancelled".to_owned(),
        _ => state
            .results
            .get("finish_reason")
            .and_then(|r| r.as_str())
            .unwrap_or("stop")
            .to_owned(),
    };
    AnswerEvent::Done {
        finish_reason,
        status: state.status,
        citations: state.citations.clone(),
    }
}

/// Why an answer cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The message is not the caller's, does not exist, or is not an answer.
    #[error("message not found")]
    NotFound,
    /// The resume position is not in this answer.
    #[error(transparent)]
    BadEventId(#[from] BadEventId),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for FollowError {
    fn from(e: StoreError) -> FollowError {
        match e {
            StoreError::NotFound(_) => FollowError::NotFound,
            e => FollowError::Store(e),
        }
    }
}

/// A reader of one answer, acting as its owner.
pub struct Follower {
    store: Store,
    user: UserId,
    message: MessageId,
    subscription: Subscription,
    cursor: Cursor,
    pending: VecDeque<AnswerEvent>,
    /// The feed's resynchronisations seen (see [`crate::feed::Signal::resyncs`]).
    resyncs: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("message", &self.message)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Starts following `message` as `user` from `cursor`: subscribes, then reads the row, so
    /// no change is missed between the two. `NotFound` for a message that is not the user's
    /// answer; `BadEventId` for a position past its end.
    pub async fn open(
        store: &Store,
        feed: &MessageFeed,
        user: UserId,
        message: MessageId,
        cursor: Cursor,
    ) -> Result<Follower, FollowError> {
        let subscription = feed.subscribe(message);
        let mut follower = Follower {
            store: store.clone(),
            user,
            message,
            subscription,
            cursor,
            pending: VecDeque::new(),
            resyncs: 0,
        };
        let state = follower.replay().await?;
        if state.role != "assistant" {
            return Err(FollowError::NotFound);
        }
        follower.absorb(&state)?;
        Ok(follower)
    }

    /// The first read, which may come from the read replica ([`Store::read_tx`]). The replica's
    /// copy is used only for an answer that has ended: an ended answer's row no longer changes,
    /// so the replica's copy is the whole answer. An answer still being written, or one the
    /// replica does not have yet (asked through another process, say), is read from the primary,
    /// whose copy the feed's notifications are about.
    async fn replay(&self) -> Result<AnswerState, FollowError> {
        let mut tx = self.store.read_tx(self.user).await?;
        if tx.on_replica() {
            let read = conversations::answer_state(&mut tx, self.message, self.cursor.offset()).await;
            tx.commit().await?;
            match read {
                Ok(state) if state.status != MessageStatus::Streaming => return Ok(state),
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let state = conversations::answer_state(&mut tx, self.message, self.cursor.offset()).await?;
            tx.commit().await?;
            return Ok(state);
        }
        self.read().await
    }

    /// Reads the answer's row from the primary: every read after a notification.
    async fn read(&self) -> Result<AnswerState, FollowError> {
        let started = std::time::Instant::now();
        let mut tx = self.store.user_tx(self.user).await?;
        let state = conversations::answer_state(&mut tx, self.message, self.cursor.offset()).await?;
        tx.commit().await?;
        metrics::histogram!(READ_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(state)
    }

    fn absorb(&mut self, state: &AnswerState) -> Result<(), FollowError> {
        let (events, cursor) = next_events(self.cursor, state)?;
        self.pending.extend(events);
        self.cursor = cursor;
        Ok(())
    }

    /// The next event, waiting for the answer to progress; `None` after `done` or `error`.
    /// `idle` bounds the wait: `Ok(None)`-like silence is reported as [`Next::Idle`] so that
    /// the caller can send keep-alives.
    pub async fn next(&mut self, idle: Duration) -> Result<Next, FollowError> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Next::Event(event));
            }
            if self.cursor == Cursor::End {
                return Ok(Next::End);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Next::Idle);
            }
            let wait = (deadline - now).min(POLL_FALLBACK);
            if self.subscription.changed(wait).await && self.absorb_signal() {
                continue;
            }
            let state = self.read().await?;
            self.absorb(&state)?;
        }
    }

    /// Takes what the latest signal says without reading the row, when it can: while the
    /// answer streams and its context has been sent, text this process's writer committed
    /// ([`MessageFeed::wrote`]) is sent from memory, and a signal for text already sent needs
    /// nothing. False when the row must be read: the status changed, the feed reconnected
    /// (signals may be missing), or the text is not all here.
    fn absorb_signal(&mut self) -> bool {
        let signal = self.subscription.latest();
        let outcome = self.take_signal(&signal);
        metrics::counter!(SIGNALS_TOTAL, "outcome" => outcome).increment(1);
        outcome != "read"
    }

    fn take_signal(&mut self, signal: &crate::feed::Signal) -> &'static str {
        if signal.resyncs != self.resyncs {
            self.resyncs = signal.resyncs;
            return "read";
        }
        let Cursor::Content(offset) = self.cursor else {
            return "read";
        };
        if !matches!(signal.status, None | Some(MessageStatus::Streaming)) {
            return "read";
        }
        // Text from memory only when it reaches as far as the signals say the row does (a
        // notification can come before its writer hands the text over).
        if let Some(written) = &signal.written
            && written.end() >= signal.bytes
            && let Some(text) = written.after(offset)
            && !text.is_empty()
        {
            let end = written.end();
            self.pending.push_back(AnswerEvent::Delta {
                text: text.to_owned(),
                end,
            });
            self.cursor = Cursor::Content(end);
            return "memory";
        }
        if signal.bytes <= offset && signal.status.is_some() {
            return "nothing_new";
        }
        // Notified of a write whose text the writer here has not handed over yet: it will.
        if signal.writer_here && signal.status == Some(MessageStatus::Streaming) {
            return "awaiting_handover";
        }
        "read"
    }

    /// The events as a stream, ending after `done` or `error` (or a failure, as an `Err`).
    /// Silence is not reported; put keep-alives around it (axum's `Sse::keep_alive`).
    pub fn into_stream(self) -> impl Stream<Item = Result<AnswerEvent, FollowError>> + Send {
        futures::stream::unfold(Some(self), |follower| async move {
            let mut follower = follower?;
            loop {
                match follower.next(Duration::from_secs(3600)).await {
                    Ok(Next::Event(e)) => return Some((Ok(e), Some(follower))),
                    Ok(Next::Idle) => continue,
                    Ok(Next::End) => return None,
                    Err(e) => return Some((Err(e), None)),
                }
            }
        })
    }
}

/// What [`Follower::next`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// An event.
    Event(AnswerEvent),
    /// Nothing happened within the idle time.
    Idle,
    /// The stream ended (after `done` or `error`).
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: MessageStatus, content: &str, from: usize) -> AnswerState {
        AnswerState {
            message_id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            role: "assistant".into(),
            status,
            bytes: content.len() as i64,
            tail: content.as_bytes()[from.min(content.len())..].to_vec(),
            model: Some("m".into()),
            prompt_tokens: Some(10),
            completion_tokens: Some(3),
            error: (status == MessageStatus::Failed).then(|| "cut".to_owned()),
            citations: serde_json::json!([]),
            request_id: Some(Uuid::nil()),
            user_message_id: Some(Uuid::nil()),
            request_status: None,
            results: serde_json::json!({"context": [], "finish_reason": "stop"}),
            cost: Some(0.0),
        }
    }

    fn names(events: &[AnswerEvent]) -> Vec<String> {
        events.iter().map(|e| format!("{}#{}", e.name(), e.id())).collect()
    }

    #[test]
    fn a_whole_answer_in_order() {
        let (events, cursor) = next_events(Cursor::Start, &state(MessageStatus::Complete, "Hello [1]", 0)).expect("ok");
        assert_eq!(
            names(&events),
            [
                "message#message",
                "context#context",
                "delta#9",
                "usage#usage",
                "done#done"
            ]
        );
        assert_eq!(cursor, Cursor::End);
    }

    #[test]
    fn resuming_sends_only_what_was_missed() {
        let content = "héllo wörld";
        let cursor = Cursor::after(Some("3")).expect("id");
        let (events, _) = next_events(cursor, &state(MessageStatus::Complete, content, 3)).expect("ok");
        assert_eq!(
            events[0],
            AnswerEvent::Delta {
                text: "llo wörld".into(),
                end: content.len() as i64
            }
        );
        // Mid-character offsets are refused rather than sent as broken text.
        assert!(next_events(Cursor::Content(2), &state(MessageStatus::Complete, content, 2)).is_err());
        // Past the end is refused.
        assert!(next_events(Cursor::Content(99), &state(MessageStatus::Streaming, content, 99)).is_err());
        let (events, c) = next_events(
            Cursor::after(Some("usage")).expect("id"),
            &state(MessageStatus::Complete, content, 0),
        )
        .expect("ok");
        assert_eq!(names(&events), ["done#done"]);
        assert_eq!(c, Cursor::End);
        assert!(
            next_events(Cursor::End, &state(MessageStatus::Complete, content, 0))
                .expect("ok")
                .0
                .is_empty()
        );
        assert!(Cursor::after(Some("bogus")).is_err());
    }

    #[test]
    fn streaming_waits_and_endings_differ() {
        let mut s = state(MessageStatus::Streaming, "", 0);
        s.results = serde_json::json!({});
        let (events, cursor) = next_events(Cursor::Start, &s).expect("ok");
        assert_eq!(names(&events), ["message#message"]);
        assert_eq!(cursor, Cursor::Message);

        let (events, _) = next_events(Cursor::Content(0), &state(MessageStatus::Failed, "part", 0)).expect("ok");
        assert_eq!(names(&events), ["delta#4", "error#error"]);
        let (events, _) = next_events(Cursor::Content(4), &state(MessageStatus::Cancelled, "part", 4)).expect("ok");
        assert_eq!(names(&events), ["done#done"]);
        assert!(matches!(&events[0], AnswerEvent::Done { finish_reason, .. } if finish_reason == "cancelled"));
        assert_eq!(events[0].data()["finish_reason"], "cancelled");
    }
}
