//! The API provider: a streaming `/chat/completions` request to any OpenAI-compatible server,
//! retried until its first delta, then read chunk by chunk into [`ChatEvent`]s.

use super::{ChatEvent, ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, count_prompt_tokens};
use crate::LlmError;
use crate::tokens::TokenCounter;
use crate::transport::{ApiClient, map_error, stream_error};
use async_openai::types::stream::StreamResponse;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

impl ChatModel {
    /// Streams `request` from the API (see [`ChatModel::stream`] for what is retried).
    pub(super) async fn stream_api(
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
}
