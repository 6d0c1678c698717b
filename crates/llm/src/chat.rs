//! Streaming chat: over any OpenAI-compatible `/chat/completions` endpoint, or the offline
//! extractive responder.
//!
//! What every stream guarantees, whichever provider serves it: zero or more
//! [`ChatEvent::Delta`]s, then exactly one [`ChatEvent::Usage`], then exactly one
//! [`ChatEvent::Finish`] as the last item — or, instead of the last two, one `Err` item after
//! which the stream ends. A stream that ends without a finish reason is an error
//! ([`LlmError::StreamIncomplete`]), never a silently short answer.

use crate::LlmError;
use crate::embed::ClientOptions;
use crate::extractive;
use crate::retry::{CallCounters, CallTotals, RetryPolicy};
use crate::tokens::TokenCounter;
use crate::transport::{ApiClient, map_error, stream_error};
use async_openai::types::stream::StreamResponse;
use futures::{Stream, StreamExt};
use ragpipe_core::config::ModelEndpoint;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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

type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, LlmError>> + Send>>;

/// A chat answer as it arrives: a `Stream` of `Result<ChatEvent, LlmError>` (see the module
/// documentation for the order guaranteed), plus the request counts of how it was obtained.
/// Dropping it closes the connection, which is how a generation is cancelled.
pub struct ChatStream {
    events: EventStream,
    requests: u32,
    retries: u32,
    rate_limited: u32,
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

/// Answers questions by streaming. Cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone, Debug)]
pub struct ChatModel {
    inner: Arc<ChatInner>,
}

#[derive(Debug)]
struct ChatInner {
    model: String,
    max_output_tokens: u32,
    tokens: TokenCounter,
    retry: RetryPolicy,
    counters: CallCounters,
    api: Option<ApiClient>,
}

impl ChatModel {
    /// The chat model for `endpoint` (the `chat` section of the configuration): the API at its
    /// `base_url`, or the offline extractive responder when there is none.
    pub fn new(endpoint: &ModelEndpoint) -> Result<ChatModel, LlmError> {
        ChatModel::with_options(endpoint, ClientOptions::for_endpoint(endpoint))
    }

    /// Like [`ChatModel::new`] with explicit retry and tokenizer settings.
    pub fn with_options(endpoint: &ModelEndpoint, options: ClientOptions) -> Result<ChatModel, LlmError> {
        let api = match endpoint.base_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => Some(ApiClient::new(endpoint, url, "chat")?),
        };
        Ok(ChatModel {
            inner: Arc::new(ChatInner {
                model: endpoint.model.clone(),
                max_output_tokens: endpoint.max_output_tokens,
                tokens: options.tokens,
                retry: options.retry,
                counters: CallCounters::default(),
                api,
            }),
        })
    }

    /// The model name sent to the server and recorded on messages and usage.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// Requests, retries and 429s since this model was built, across all its clones and
    /// streams, failed ones included.
    pub fn totals(&self) -> CallTotals {
        self.inner.counters.totals()
    }

    /// Whether this is the offline extractive responder (no network).
    pub fn is_offline(&self) -> bool {
        self.inner.api.is_none()
    }

    /// Starts answering `request`.
    ///
    /// Over the API this resolves once the first piece of the answer has arrived (or the
    /// answer ended empty): every failure before that point — HTTP 429/5xx, timeouts, lost
    /// connections, a stream cut before any content — is retried with backoff, waiting at least
    /// what `Retry-After` asks, and only the last failure is returned. After it, failures are
    /// `Err` items of the stream and are not retried (the caller already has part of the
    /// answer). The request timeout applies to the response headers and again to every gap
    /// between two events.
    pub async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        let inner = &self.inner;
        let max_tokens = if request.max_tokens == 0 {
            inner.max_output_tokens.max(1)
        } else {
            request.max_tokens
        };
        match &inner.api {
            None => Ok(self.stream_offline(&request, max_tokens)),
            Some(api) => self.stream_api(api, &request, max_tokens).await,
        }
    }

    fn stream_offline(&self, request: &ChatRequest, max_tokens: u32) -> ChatStream {
        let tokens = self.inner.tokens;
        // The last user message is the sources and the question; an earlier one is the
        // previous question of the conversation, which a follow-up leans on.
        let mut users = request.messages.iter().rev().filter(|m| m.role == Role::User);
        let question = users
            .next()
            .map_or("", |m| extractive::question_of(&m.content, &request.sources));
        let previous = users.next().map(|m| m.content.as_str());
        let full = extractive::answer(question, previous, &request.sources);
        let (text, completion_tokens) = tokens.truncate_counted(&full, max_tokens as usize);
        let reason = if text.len() < full.len() {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let mut events: Vec<Result<ChatEvent, LlmError>> = extractive::deltas(text, 3)
            .into_iter()
            .map(|d| Ok(ChatEvent::Delta(d)))
            .collect();
        events.push(Ok(ChatEvent::Usage {
            prompt_tokens: count_prompt_tokens(&tokens, &request.messages),
            completion_tokens: completion_tokens as u64,
            counted_locally: true,
        }));
        events.push(Ok(ChatEvent::Finish { reason }));
        ChatStream {
            events: Box::pin(futures::stream::iter(events)),
            requests: 0,
            retries: 0,
            rate_limited: 0,
        }
    }

    async fn stream_api(
        &self,
        api: &ApiClient,
        request: &ChatRequest,
        max_tokens: u32,
    ) -> Result<ChatStream, LlmError> {
        let inner = &self.inner;
        let context = format!("chat with {} at {}", inner.model, api.base_url);
        let body = WireRequest {
            model: &inner.model,
            messages: &request.messages,
            max_tokens,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
        };
        // Counted only if the server reports no usage, at the end, off the time to first token.
        let messages: Arc<[ChatMessage]> = request.messages.clone().into();
        let (mut requests, mut retries, mut rate_limited) = (0u32, 0u32, 0u32);
        loop {
            requests += 1;
            inner.counters.request();
            let error = match self.open(api, &body, &context, &messages).await {
                Ok(state) => {
                    let events =
                        futures::stream::unfold(state, |mut s| async move { s.next_event().await.map(|e| (e, s)) });
                    return Ok(ChatStream {
                        events: Box::pin(events),
                        requests,
                        retries,
                        rate_limited,
                    });
                }
                Err(error) => error,
            };
            if error.is_rate_limited() {
                rate_limited += 1;
                inner.counters.rate_limited();
            }
            let Some(wait) = inner.retry.delay(retries, &error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, wait_ms = wait.as_millis() as u64, retry = retries + 1, "chat request failed before its first delta; retrying");
            retries += 1;
            inner.counters.retry();
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends the request and reads until the first content delta or the end of the answer.
    async fn open(
        &self,
        api: &ApiClient,
        body: &WireRequest<'_>,
        context: &str,
        messages: &Arc<[ChatMessage]>,
    ) -> Result<ApiStream, LlmError> {
        let opened = tokio::time::timeout(api.timeout, api.client.chat().create_stream_byot::<_, WireChunk>(body))
            .await
            .map_err(|_| LlmError::Timeout {
                context: context.to_owned(),
                after: api.timeout,
            })?
            .map_err(|e| map_error(context, e))?;
        let mut state = ApiStream {
            inner: opened,
            pending: VecDeque::new(),
            context: context.to_owned(),
            idle_timeout: api.timeout,
            tokens: self.inner.tokens,
            messages: messages.clone(),
            answer: String::new(),
            deltas: 0,
            finish: None,
            usage: None,
            done: false,
        };
        while !state
            .pending
            .iter()
            .any(|e| matches!(e, ChatEvent::Delta(_) | ChatEvent::Finish { .. }))
        {
            state.fill().await?;
        }
        Ok(state)
    }
}

/// The request body: exactly the fields every OpenAI-compatible server honours.
#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    /// `max_tokens`, not `max_completion_tokens`: llama.cpp ignores the latter.
    max_tokens: u32,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One streamed chunk, read leniently: only what ragpipe uses, every field optional.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// The state of an API stream: chunks in, events out.
struct ApiStream {
    inner: StreamResponse<WireChunk>,
    pending: VecDeque<ChatEvent>,
    context: String,
    idle_timeout: Duration,
    tokens: TokenCounter,
    /// The prompt, counted at the end when the server reports no usage.
    messages: Arc<[ChatMessage]>,
    /// The answer so far, counted at the end when the server reports no usage. Bounded by
    /// `max_tokens`.
    answer: String,
    deltas: usize,
    finish: Option<FinishReason>,
    usage: Option<WireUsage>,
    done: bool,
}

impl ApiStream {
    async fn next_event(&mut self) -> Option<Result<ChatEvent, LlmError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    /// Reads one chunk (or the end) and queues the events it yields.
    async fn fill(&mut self) -> Result<(), LlmError> {
        match tokio::time::timeout(self.idle_timeout, self.inner.next()).await {
            Err(_) if self.finish.is_none() => Err(LlmError::Timeout {
                context: format!("{} (after {} deltas)", self.context, self.deltas),
                after: self.idle_timeout,
            }),
            Ok(Some(Err(e))) if self.finish.is_none() => Err(map_error(&self.context, e)),
            // Once the finish reason is in, the answer is whole: a server that then stalls or
            // drops the connection instead of sending `[DONE]` costs only its usage report.
            Err(_) | Ok(Some(Err(_))) => {
                tracing::warn!(context = %self.context, "chat stream broke after its finish reason; answer kept");
                self.end()
            }
            Ok(None) => self.end(),
            Ok(Some(Ok(chunk))) => self.absorb(chunk),
        }
    }

    fn absorb(&mut self, chunk: WireChunk) -> Result<(), LlmError> {
        if let Some(error) = chunk.error {
            return Err(stream_error(&self.context, &error));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        // A first role-only delta, empty deltas and usage-only chunks (no choices) yield nothing.
        if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
            if let Some(content) = choice.delta.and_then(|d| d.content)
                && !content.is_empty()
            {
                self.answer.push_str(&content);
                self.deltas += 1;
                self.pending.push_back(ChatEvent::Delta(content));
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish = Some(FinishReason::from_wire(&reason));
            }
        }
        Ok(())
    }

    /// The body ended: complete if a finish reason came, otherwise the answer was cut.
    fn end(&mut self) -> Result<(), LlmError> {
        let Some(reason) = self.finish.take() else {
            return Err(LlmError::StreamIncomplete {
                context: self.context.clone(),
                deltas: self.deltas,
            });
        };
        let usage = match self.usage.take() {
            Some(u) => ChatEvent::Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                counted_locally: false,
            },
            None => ChatEvent::Usage {
                prompt_tokens: count_prompt_tokens(&self.tokens, &self.messages),
                completion_tokens: self.tokens.count(&self.answer) as u64,
                counted_locally: true,
            },
        };
        self.pending.push_back(usage);
        self.pending.push_back(ChatEvent::Finish { reason });
        self.done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> ChatModel {
        let mut ep = crate::embed::tests::endpoint(8);
        ep.model = "ragpipe-extractive-v1".into();
        ep.max_output_tokens = 1024;
        ChatModel::new(&ep).expect("offline chat")
    }

    async fn collect(stream: ChatStream) -> Vec<ChatEvent> {
        stream.map(|e| e.expect("offline never fails")).collect().await
    }

    #[tokio::test]
    async fn offline_answer_streams_citations_usage_and_finish() {
        let model = offline();
        assert!(model.is_offline());
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("Answer from the sources."),
                ChatMessage::user("How big are embedding batches?"),
            ],
            max_tokens: 0,
            sources: vec![
                SourcePassage {
                    number: 1,
                    text: "Embedding batches hold at most 64 inputs each.".into(),
                },
                SourcePassage {
                    number: 2,
                    text: "Unrelated text about the weather today.".into(),
                },
            ],
        };
        let events = collect(model.stream(request.clone()).await.expect("stream")).await;
        let text: String = events
            .iter()
            .filter_map(|e| {
                if let ChatEvent::Delta(d) = e {
                    Some(d.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert!(text.contains("No chat model is configured"), "{text}");
        assert!(
            text.contains("Embedding batches hold at most 64 inputs each. [1]"),
            "{text}"
        );
        assert!(!text.contains("[2]"), "{text}");
        assert!(
            events.iter().filter(|e| matches!(e, ChatEvent::Delta(_))).count() > 5,
            "small deltas"
        );
        let n = events.len();
        assert_eq!(
            events[n - 1],
            ChatEvent::Finish {
                reason: FinishReason::Stop
            }
        );
        let tokens = TokenCounter::default();
        assert_eq!(
            events[n - 2],
            ChatEvent::Usage {
                prompt_tokens: count_prompt_tokens(&tokens, &request.messages),
                completion_tokens: tokens.count(&text) as u64,
                counted_locally: true
            }
        );
    }

    #[tokio::test]
    async fn offline_answer_respects_max_tokens() {
        let request = ChatRequest {
            messages: vec![ChatMessage::user("embedding batches")],
            max_tokens: 5,
            sources: vec![SourcePassage {
                number: 1,
                text: "Embedding batches hold at most 64 inputs each.".into(),
            }],
        };
        let events = collect(offline().stream(request).await.expect("stream")).await;
        assert_eq!(
            events.last(),
            Some(&ChatEvent::Finish {
                reason: FinishReason::Length
            })
        );
        assert!(events.iter().any(|e| matches!(
            e,
            ChatEvent::Usage {
                completion_tokens: 5,
                ..
            }
        )));
    }

    #[test]
    fn request_wire_format_uses_plain_strings_and_max_tokens() {
        let messages = vec![ChatMessage::system("s"), ChatMessage::user("u")];
        let body = WireRequest {
            model: "m",
            messages: &messages,
            max_tokens: 7,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
        };
        let json = serde_json::to_value(&body).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({
                "model": "m",
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                "max_tokens": 7,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn finish_reasons_round_trip() {
        for r in ["stop", "length", "content_filter", "tool_calls", "weird"] {
            assert_eq!(FinishReason::from_wire(r).as_str(), r);
        }
    }
}
