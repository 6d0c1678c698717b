//! Streaming chat: over any OpenAI-compatible `/chat/completions` endpoint, or the offline
//! extractive responder.
//!
//! What every stream guarantees, whichever provider serves it: zero or more
//! [`ChatEvent::Delta`]s, then exactly one [`ChatEvent::Usage`], then exactly one
//! [`ChatEvent::Finish`] as the last item — or, instead of the last two, one `Err` item after
//! which the stream ends. A stream that ends without a finish reason is an error
//! ([`LlmError::StreamIncomplete`]), never a silently short answer.
//!
//! [`ChatModel`] picks the provider: the API client (`chat/api.rs`: the request, its retries
//! before the first delta, the stream's state) or the offline extractive responder
//! (`chat/offline.rs`); the types both speak are in `chat/types.rs`.

mod api;
mod offline;
mod types;

pub use types::{
    ChatEvent, ChatMessage, ChatRequest, ChatStream, FinishReason, Role, SourcePassage, count_prompt_tokens,
};

use crate::LlmError;
use crate::embed::ClientOptions;
use crate::retry::{CallCounters, CallTotals, RetryPolicy};
use crate::tokens::TokenCounter;
use crate::transport::ApiClient;
use ragpipe_core::config::ModelEndpoint;
use std::sync::Arc;

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
}
