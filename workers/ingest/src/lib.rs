//! The ingest job: extract → chunk → embed → store, for one document.
//!
//! Delivery is at least once, so the handler is idempotent: it derives everything from the
//! document's row and bytes, replaces the chunk set in one transaction, and records each model
//! call as it completes, with its vectors in the user's embedding cache, in one transaction
//! keyed once per call: every call is billed once, whether the job then succeeds, fails or is
//! killed, and a retry takes the vectors from the cache instead of calling again. Errors
//! decide what happens next: a permanent one (bad file, over a limit) marks the document
//! `failed` with the reason and ends the job; a transient one (model API, database connection)
//! returns an error so the queue retries it after a backoff; the last attempt marks the
//! document failed so nothing is left `embedding` forever.
//!
//! One module each: the context built once per process (`context`), the pipeline's stages
//! (`pipeline`), embedding through the user's cache (`embedding`), the error (`error`), and the
//! queue's work for the workers' one skeleton, [`ragpipe_worker`] (`worker`: [`IngestQueue`]).

mod context;
mod embedding;
mod error;
mod pipeline;
mod worker;

pub use context::{IngestContext, chunker_for, model_limit};
pub use error::JobError;
pub use pipeline::{Outcome, ingest_document};
pub use worker::{IngestQueue, WorkerError, run, spawn, spawn_supervised};
