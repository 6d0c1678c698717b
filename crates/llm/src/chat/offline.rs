//! The offline provider: the extractive responder (`crate::extractive`) answering from the
//! request's sources, streamed in small deltas with locally counted usage, so that the demo and
//! the tests need no network.

use super::{ChatEvent, ChatModel, ChatRequest, ChatStream, FinishReason, Role, count_prompt_tokens};
use crate::{LlmError, extractive};

impl ChatModel {
    /// The extractive answer to `request`, cut to `max_tokens` (finish reason `length` then).
    pub(super) fn stream_offline(&self, request: &ChatRequest, max_tokens: u32) -> ChatStream {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatMessage, SourcePassage};
    use crate::tokens::TokenCounter;
    use futures::StreamExt;

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
}
