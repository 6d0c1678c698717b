//! The agent: retrieval over a user's chunks, prompt assembly within a token budget, streaming
//! answers into messages.
//!
//! - [`retrieve`]: [`Retriever`] embeds a query and runs one hybrid search statement in the
//!   user's transaction; fusion weights chosen by measurement ([`retrieve::DEFAULT_FUSION`]);
//!   an optional rerank stage over the fused top N ([`Searched`], [`RerankReport`]).
//! - [`followup`]: what a follow-up question searches for ([`followup::retrieval_query`]: the
//!   earlier questions' salient terms carried over).
//! - [`eval`]: the retrieval evaluation behind `ragpipe eval` (recall@k, MRR@10 per mode).
//! - [`prompt`]: the templates of `prompts/` (embedded, overridable) and prompt assembly within
//!   the chat model's token budget.
//! - [`sources`]: numbered sources, `[n]` citations found in an answer.
//! - [`answer`]: one question answered: retrieve, prompt, stream the model into the assistant
//!   message (flushed at a bounded interval), complete/fail/cancel it, one usage event; a
//!   follow-up is condensed into a standalone query first (chat model) or carried over.
//! - [`feed`] (re-exported from `ragpipe_store::feed`): change signals of assistant messages
//!   (PostgreSQL LISTEN), one connection per process, so readers and the worker learn of changes
//!   wherever they were made.
//! - [`follow`]: the SSE protocol's events derived from the message row, resumable at any
//!   event id.

pub mod answer;
pub mod eval;
pub mod follow;
pub mod followup;
pub mod prompt;
pub mod retrieve;
pub mod sources;

pub use ragpipe_store::feed;

pub use answer::{AnswerContext, AnswerError, FlushPolicy, Outcome};
pub use feed::MessageFeed;
pub use follow::{AnswerEvent, Cursor, Follower};
pub use prompt::{Prompt, Prompts};
pub use retrieve::{
    QueryUsage, RerankReport, RetrieveError, Retriever, SearchHit, SearchMode, SearchRequest, Searched,
};
