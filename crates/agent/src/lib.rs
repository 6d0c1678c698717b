//! The agent: retrieval over a user's chunks, prompt assembly within a token budget, streaming
//! answers into messages.
//!
//! - [`retrieve`]: [`Retriever`] embeds a query and runs one hybrid search statement in the
//!   user's transaction; fusion weights chosen by measurement ([`retrieve::DEFAULT_FUSION`]).
//! - [`eval`]: the retrieval evaluation behind `ragpipe eval` (recall@k, MRR@10 per mode).

pub mod eval;
pub mod retrieve;

pub use retrieve::{RetrieveError, Retriever, SearchHit, SearchMode, SearchRequest};
