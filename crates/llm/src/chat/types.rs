//! What a chat call is made of: messages and sources in, a [`ChatStream`] of
//! [`ChatEvent`]s out, whichever provider answers.

use crate::LlmError;
use crate::tokens::TokenCounter;
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The person asking.
    User,
    /// The model.
    Assistant,
}

/// One message of the conversation sent to the model. The content is always sent as a plain
/// string (llama.cpp's server answers 500 to content given as an array of parts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A retrieved passage the answer may cite as `[number]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePassage {
    /// The citation number shown to the model and the reader.
    pub number: u32,
    /// The passage's text.
    pub text: String,
}

/// What to ask the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatRequest {
    /// The prompt, oldest message first; already within the model's context budget.
    pub messages: Vec<ChatMessage>,
    /// Most tokens in the answer, sent as `max_tokens` (0: the endpoint's `max_output_tokens`).
    pub max_tokens: u32,
    /// The sources laid out in the prompt. Only the offline responder reads them (a model
    /// reads them from the messages).
    pub sources: Vec<SourcePassage>,
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The answer is complete.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The provider's content filter stopped it.
    ContentFilter,
    /// The model asked to call a tool (not used by ragpipe).
    ToolCalls,
    /// A reason this crate does not know, as the server spelled it.
    Other(String),
}

impl FinishReason {
    /// Parses the wire value of `finish_reason`.
    pub fn from_wire(s: &str) -> FinishReason {
        match s {
            "stop" | "eos" | "end_turn" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    /// The OpenAI wire value (`stop`, `length`, …).
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Other(s) => s,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of a chat stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatEvent {
    /// The next piece of the answer (never empty).
    Delta(String),
    /// Tokens used, once, just before [`ChatEvent::Finish`].
    Usage {
        /// Tokens of the prompt.
        prompt_tokens: u64,
        /// Tokens of the answer.
        completion_tokens: u64,
        /// True when the server reported no usage (llama.cpp never does while streaming) and
        /// the counts are this crate's tiktoken counts of the messages and the answer.
        counted_locally: bool,
    },
    /// The answer ended normally; always the last item.
    Finish {
        /// Why it ended.
        reason: FinishReason,
    },
}

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, LlmError>> + Send>>;

/// A chat answer as it arrives: a `Stream` of `Result<ChatEvent, LlmError>` (see the module
/// documentation for the order guaranteed), plus the request counts of how it was obtained.
/// Dropping it closes the connection, which is how a generation is cancelled.
pub struct ChatStream {
    pub(super) events: EventStream,
    pub(super) requests: u32,
    pub(super) retries: u32,
    pub(super) rate_limited: u32,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("requests", &self.requests)
            .field("retries", &self.retries)
            .field("rate_limited", &self.rate_limited)
            .finish_non_exhaustive()
    }
}

impl ChatStream {
    /// HTTP requests made to open this stream, retries included (0 offline).
    pub fn requests(&self) -> u32 {
        self.requests
    }
    /// Attempts that failed before the first delta and were retried.
    pub fn retries(&self) -> u32 {
        self.retries
    }
    /// Attempts answered with HTTP 429.
    pub fn rate_limited(&self) -> u32 {
        self.rate_limited
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatEvent, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

/// Tokens of a prompt as OpenAI counts chat messages: each message's content plus 4 tokens of
/// framing, plus 3 that prime the answer. Used when the server reports no usage, and by
/// callers that budget prompts the same way.
pub fn count_prompt_tokens(tokens: &TokenCounter, messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| tokens.count(&m.content) as u64 + 4)
        .sum::<u64>()
        + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_round_trip() {
        for r in ["stop", "length", "content_filter", "tool_calls", "weird"] {
            assert_eq!(FinishReason::from_wire(r).as_str(), r);
        }
    }
}
