//! Models for ragpipe: embeddings and streaming chat over any OpenAI-compatible API
//! (async-openai), with offline providers so that the demo and the tests need no network;
//! token counting (tiktoken-rs) and model prices.
//!
//! - [`Embedder`]: batched, concurrent, retried embeddings over an API; a sentence-embedding
//!   model run in-process ([`LocalModel`], [`LocalRuntime`]: `ragpipe-encoder` + tokenizers); or
//!   deterministic hashed vectors ([`HashedEmbedder`]).
//! - [`ChatModel`]: a [`ChatStream`] of deltas, usage and a finish reason, from the API or from
//!   the offline extractive responder.
//! - [`Reranker`]: a cross-encoder over the `/rerank` wire format (Cohere, Jina, TEI, vLLM).
//! - [`TokenCounter`], [`count_tokens`], [`truncate_to_tokens`]: process-wide tiktoken encoders.
//! - [`PriceTable`]: the cost of a call.
//! - [`LlmError`]: every failure, classified ([`LlmError::kind`]) where it arose.
//!
//! This crate never touches the database.

#![warn(missing_docs)]

pub mod batching;
pub mod chat;
pub mod embed;
pub mod error;
mod extractive;
pub mod hashed;
pub mod local;
pub mod prices;
pub mod rerank;
pub mod retry;
pub mod tokens;
mod transport;

pub use batching::plan_batches;
pub use chat::{
    ChatEvent, ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, Role, SourcePassage, count_prompt_tokens,
};
pub use embed::{ClientOptions, Embedded, Embedder, Embedders};
pub use error::LlmError;
pub use extractive::{NO_MODEL_NOTICE, NOT_COVERED, Selection, answer_with as extractive_answer};
pub use hashed::{HashedEmbedder, cosine};
pub use local::{LocalModel, LocalRuntime, OverLimit};
pub use prices::{ModelPrice, PriceTable};
pub use rerank::{Ranked, Reranked, Reranker};
pub use retry::{CallTotals, RetryPolicy};
pub use tokens::{Encoding, TokenCounter, count_tokens, truncate_to_tokens};
