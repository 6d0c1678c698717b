//! Reprocessing: which documents a run has to redo and from which stage, marking them with the
//! run's target in the same transaction as their jobs, and following the run.
//!
//! A run is identified by a key derived from what it selects and wants (`ragpipe reprocess`
//! prints it), so the same command run again after an interruption is the same run: documents
//! it completed are skipped (`documents.last_reprocess_run`), documents still in the queue
//! (`documents.reprocess` without an error) are waited for, not enqueued a second time.
//!
//! A ready document keeps its status and its chunk set, which stays searchable, until its job
//! replaces the set in one transaction; a failed document goes through the pipeline again with
//! its status showing the stages.

use crate::jobs::{INGEST_QUEUE, IngestJob, enqueue};
use crate::operator::Reason;
use crate::{Store, StoreError, UserTx};
use chrono::{DateTime, Utc};
use ragpipe_core::{DocumentId, DocumentStatus, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where in the pipeline a document starts again. Later stages reuse what earlier ones made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Extract the text from the original bytes again (then chunk and embed).
    Extract,
    /// Chunk again with other settings (the text is extracted again too: it is not stored).
    Chunk,
    /// Embed the existing chunks with another model, reusing them as they are.
    Embed,
}

impl Stage {
    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Extract => "extract",
            Stage::Chunk => "chunk",
            Stage::Embed => "embed",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Stage, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "extract" => Ok(Stage::Extract),
            "chunk" => Ok(Stage::Chunk),
            "embed" => Ok(Stage::Embed),
            other => Err(format!("unknown stage {other:?} (extract, chunk or embed)")),
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run wants every selected document to end with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Chunk size in tokens.
    pub chunk_max_tokens: u32,
    /// Chunk overlap in tokens.
    pub chunk_overlap_tokens: u32,
    /// Embedding model.
    pub embedding_model: String,
    /// The extractor version of this build.
    pub extractor_version: String,
    /// Redo at least this stage on every selected document, even one that already matches
    /// (`None`: only what differs from the target).
    pub stage: Option<Stage>,
}

/// Which documents a run considers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Only these users' documents (empty: every user's).
    pub users: Vec<Uuid>,
    /// Only these documents (empty: any).
    pub documents: Vec<Uuid>,
    /// Only documents with this status.
    pub status: Option<DocumentStatus>,
    /// Only documents uploaded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only documents whose chunks are on this embedding model.
    pub embedding_model: Option<String>,
    /// Only documents extracted by this extractor version.
    pub extractor_version: Option<String>,
}

/// The key of the run that selects `selection` and wants `target`: the same command gives the
/// same key, so it resumes.
pub fn run_key(selection: &Selection, target: &Target) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(&(selection, target)).unwrap_or_default();
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

impl Target {
    /// What run `run` asks of a document it redoes from `stage`.
    pub fn pending(&self, run: &str, stage: Stage) -> Pending {
        Pending {
            run: run.to_owned(),
            stage,
            chunk_max_tokens: self.chunk_max_tokens,
            chunk_overlap_tokens: self.chunk_overlap_tokens,
            embedding_model: self.embedding_model.clone(),
            by_owner: false,
            error: None,
        }
    }
}

/// What a pending reprocessing asks of one document (`documents.reprocess`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The run.
    pub run: String,
    /// The stage the document starts again from.
    pub stage: Stage,
    /// Chunk size for the new chunk set.
    pub chunk_max_tokens: u32,
    /// Overlap for the new chunk set.
    pub chunk_overlap_tokens: u32,
    /// Model for the new vectors.
    pub embedding_model: String,
    /// Whether the document's owner asked for it (`POST /v1/documents/{id}/reprocess`): then
    /// its model calls count against their quota; an operator's batch run's do not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_owner: bool,
    /// Why the run failed on this document (its chunk set was kept), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Pending {
    /// Reads a document's `reprocess` column.
    pub fn from_column(value: Option<&serde_json::Value>) -> Option<Pending> {
        value.and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Whether its job is still to run (it has not failed).
    pub fn in_flight(&self) -> bool {
        self.error.is_none()
    }
}

/// One document as a run sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The document.
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Its status.
    pub status: String,
    /// Chunks in its current set.
    pub chunk_count: i32,
    /// Model of its current vectors.
    pub embedding_model: Option<String>,
    /// Chunk size of its current set.
    pub chunk_max_tokens: Option<i32>,
    /// Overlap of its current set.
    pub chunk_overlap_tokens: Option<i32>,
    /// Extractor of its current set.
    pub extractor_version: Option<String>,
    /// Pending reprocessing.
    pub reprocess: Option<serde_json::Value>,
    /// The run that last completed on it.
    pub last_reprocess_run: Option<String>,
}

/// What a run does with one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: it already matches the target, or this run already did it.
    Done,
    /// Its job is in the queue (this run's, or another's).
    InFlight,
    /// It is in the first ingest's pipeline (queued, extracting...); the run looks again later.
    Busy,
    /// Enqueue it from this stage.
    Redo(Stage),
}

impl Candidate {
    /// The pending reprocessing, if any.
    pub fn pending(&self) -> Option<Pending> {
        Pending::from_column(self.reprocess.as_ref())
    }

    /// What run `run` wanting `target` does with this document.
    pub fn plan(&self, run: &str, target: &Target) -> Plan {
        if self.pending().is_some_and(|p| p.in_flight()) {
            return Plan::InFlight;
        }
        if self.last_reprocess_run.as_deref() == Some(run) {
            return Plan::Done;
        }
        match self.status.parse::<DocumentStatus>() {
            Ok(DocumentStatus::Ready) => {}
            Ok(DocumentStatus::Failed) => return Plan::Redo(Stage::Extract),
            _ => return Plan::Busy,
        }
        let differs = if self.extractor_version.as_deref() != Some(target.extractor_version.as_str()) {
            Some(Stage::Extract)
        } else if self.chunk_max_tokens != Some(target.chunk_max_tokens as i32)
            || self.chunk_overlap_tokens != Some(target.chunk_overlap_tokens as i32)
        {
            Some(Stage::Chunk)
        } else if self.embedding_model.as_deref() != Some(target.embedding_model.as_str()) {
            Some(Stage::Embed)
        } else {
            None
        };
        // A document with no chunks has nothing to re-embed.
        let earliest = |a: Option<Stage>, b: Option<Stage>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match earliest(differs, target.stage) {
            Some(Stage::Embed) if self.chunk_count == 0 => Plan::Redo(Stage::Chunk),
            Some(stage) => Plan::Redo(stage),
            None => Plan::Done,
        }
    }
}

/// Fails unless the store's connection can read every user's documents (a superuser or a role
/// with BYPASSRLS, as `ragpipe migrate` uses): a batch run works across users.
pub async fn check_admin(store: &Store) -> Result<(), StoreError> {
    let mut tx = store.operator_tx(Reason::Shared).await?;
    let bypasses =
        sqlx::query_scalar!("SELECT rolsuper OR rolbypassrls AS bypasses FROM pg_roles WHERE rolname = current_user")
            .fetch_optional(tx.conn())
            .await
            .map_err(StoreError::db("checking the database role"))?;
    tx.commit().await?;
    if bypasses.flatten() == Some(true) {
        Ok(())
    } else {
        Err(StoreError::Config(
            "reprocessing across users needs a database role that bypasses row-level security \
             (a superuser or BYPASSRLS, like the one `ragpipe migrate` runs as)"
                .into(),
        ))
    }
}

/// The checked statement that reads [`Candidate`]s (`$1` users and `$2` documents, each empty
/// for all; `$3` status, `$4` created since, `$5` embedding model, `$6` extractor, each NULL for
/// any). It reads documents only: planning a run over a large corpus touches no chunk.
macro_rules! query_candidates {
    ($($arg:expr),* $(,)?) => {
        sqlx::query_as!(
            Candidate,
            "SELECT d.id, d.user_id, d.status, d.chunk_count, d.embedding_model, \
                    d.chunk_max_tokens, d.chunk_overlap_tokens, d.extractor_version, d.reprocess, d.last_reprocess_run \
             FROM documents AS d \
             WHERE (cardinality($1::uuid[]) = 0 OR d.user_id = ANY ($1)) \
               AND (cardinality($2::uuid[]) = 0 OR d.id = ANY ($2)) \
               AND ($3::text IS NULL OR d.status = $3) \
               AND ($4::timestamptz IS NULL OR d.created_at >= $4) \
               AND ($5::text IS NULL OR d.embedding_model = $5) \
               AND ($6::text IS NULL OR d.extractor_version = $6) \
             ORDER BY d.created_at, d.id",
            $($arg),*
        )
    };
}

/// The documents `selection` picks, with what a run needs to plan them, oldest first. Reads
/// across users: the store must connect as an admin role ([`check_admin`]).
pub async fn candidates(store: &Store, selection: &Selection) -> Result<Vec<Candidate>, StoreError> {
    let mut tx = store.operator_tx(Reason::Reprocess).await?;
    let candidates = query_candidates!(
        &selection.users,
        &selection.documents,
        selection.status.map(|s| s.as_str()),
        selection.since,
        selection.embedding_model.as_deref(),
        selection.extractor_version.as_deref(),
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("selecting documents to reprocess"))?;
    tx.commit().await?;
    Ok(candidates)
}

/// One document of the transaction's user, as a run sees it.
pub async fn candidate(tx: &mut UserTx, document: DocumentId) -> Result<Candidate, StoreError> {
    query_candidates!(
        &[] as &[Uuid],
        &[document.0] as &[Uuid],
        None::<&str>,
        None::<DateTime<Utc>>,
        None::<&str>,
        None::<&str>,
    )
    .fetch_optional(tx.conn())
    .await
    .map_err(StoreError::db("reading a document to reprocess"))?
    .ok_or(StoreError::NotFound("document"))
}

/// Marks `documents` (of the transaction's user) with their pending runs and enqueues their
/// jobs, in the caller's transaction: one `UPDATE` and one enqueue for the batch. A ready
/// document stays ready (its chunks stay searchable); a failed one is queued again. A document
/// that is gone, is neither ready nor failed, or already has a reprocessing in flight is left
/// alone and gets no job. Returns the documents marked.
pub async fn mark(
    tx: &mut UserTx,
    documents: &[(DocumentId, Pending)],
    max_attempts: u32,
) -> Result<Vec<DocumentId>, StoreError> {
    let ids: Vec<Uuid> = documents.iter().map(|(id, _)| id.0).collect();
    let values = documents
        .iter()
        .map(|(_, p)| serde_json::to_value(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Codec {
            context: "encoding a reprocessing run",
            source: Box::new(e),
        })?;
    let marked = sqlx::query_scalar!(
        "UPDATE documents AS d SET reprocess = u.pending, \
                status = CASE WHEN d.status = 'failed' THEN 'queued' ELSE d.status END, \
                error = CASE WHEN d.status = 'failed' THEN NULL ELSE d.error END, \
                progress = CASE WHEN d.status = 'failed' THEN 0 ELSE d.progress END, \
                updated_at = now() \
         FROM UNNEST($1::uuid[], $2::jsonb[]) AS u(id, pending) \
         WHERE d.id = u.id AND d.status IN ('ready', 'failed') AND (d.reprocess IS NULL OR d.reprocess ? 'error') \
         RETURNING d.id",
        &ids,
        &values,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("marking documents for reprocessing"))?;
    let user = tx.user_id();
    let jobs: Vec<IngestJob> = documents
        .iter()
        .filter(|(id, _)| marked.contains(&id.0))
        .map(|(id, pending)| IngestJob {
            user_id: user,
            document_id: *id,
            reprocess: Some(pending.run.clone()),
        })
        .collect();
    enqueue(tx, INGEST_QUEUE, &jobs, max_attempts).await?;
    Ok(jobs.into_iter().map(|j| j.document_id).collect())
}

/// [`mark`] in a transaction of its own for `user`; returns how many were marked.
pub async fn mark_many(
    store: &Store,
    user: UserId,
    documents: &[(DocumentId, Pending)],
    max_attempts: u32,
) -> Result<usize, StoreError> {
    let mut tx = store.user_tx(user).await?;
    let marked = mark(&mut tx, documents, max_attempts).await?;
    tx.commit().await?;
    Ok(marked.len())
}

/// Records that the run failed on a document: its chunk set (if any) is kept, and the error is
/// kept with the run for `ragpipe reprocess` to report (running it again retries).
pub async fn fail(tx: &mut UserTx, document: DocumentId, run: &str, error: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE documents SET reprocess = reprocess || jsonb_build_object('error', $3::text), updated_at = now() \
         WHERE id = $1 AND reprocess ->> 'run' = $2",
        document.0,
        run,
        error,
    )
    .execute(tx.conn())
    .await
    .map_err(StoreError::db("recording a failed reprocessing"))?;
    Ok(())
}

/// Where a run stands: its documents still in the queue, and those it failed on (with why).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    /// Documents whose job has not finished.
    pub in_flight: u64,
    /// Documents it failed on: (document, error).
    pub failed: Vec<(Uuid, String)>,
}

/// The state of run `run` (from the partial index on pending runs; across users, admin only).
pub async fn run_state(store: &Store, run: &str) -> Result<RunState, StoreError> {
    let mut tx = store.operator_tx(Reason::Reprocess).await?;
    let rows = sqlx::query!(
        "SELECT id, reprocess ->> 'error' AS error FROM documents WHERE reprocess IS NOT NULL AND reprocess ->> 'run' = $1",
        run,
    )
    .fetch_all(tx.conn())
    .await
    .map_err(StoreError::db("reading a run's documents"))?;
    tx.commit().await?;
    let mut state = RunState::default();
    for row in rows {
        let (id, error) = (row.id, row.error);
        match error {
            Some(e) => state.failed.push((id, e)),
            None => state.in_flight += 1,
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            chunk_max_tokens: 256,
            chunk_overlap_tokens: 32,
            embedding_model: "m2".into(),
            extractor_version: "x2".into(),
            stage: None,
        }
    }

    fn ready() -> Candidate {
        Candidate {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            status: "ready".into(),
            chunk_count: 3,
            embedding_model: Some("m2".into()),
            chunk_max_tokens: Some(256),
            chunk_overlap_tokens: Some(32),
            extractor_version: Some("x2".into()),
            reprocess: None,
            last_reprocess_run: None,
        }
    }

    #[test]
    fn the_earliest_stage_that_differs_is_redone() {
        let t = target();
        assert_eq!(ready().plan("r", &t), Plan::Done);
        let model = Candidate {
            embedding_model: Some("m1".into()),
            ..ready()
        };
        assert_eq!(model.plan("r", &t), Plan::Redo(Stage::Embed));
        let size = Candidate {
            chunk_max_tokens: Some(512),
            ..model.clone()
        };
        assert_eq!(size.plan("r", &t), Plan::Redo(Stage::Chunk));
        let old = Candidate {
            extractor_version: Some("x1".into()),
            ..size
        };
        assert_eq!(old.plan("r", &t), Plan::Redo(Stage::Extract));
        let empty = Candidate {
            chunk_count: 0,
            ..model
        };
        assert_eq!(empty.plan("r", &t), Plan::Redo(Stage::Chunk));
    }

    #[test]
    fn a_forced_stage_applies_to_matching_documents_once_per_run() {
        let t = Target {
            stage: Some(Stage::Chunk),
            ..target()
        };
        assert_eq!(ready().plan("r", &t), Plan::Redo(Stage::Chunk));
        let done = Candidate {
            last_reprocess_run: Some("r".into()),
            ..ready()
        };
        assert_eq!(done.plan("r", &t), Plan::Done);
        assert_eq!(done.plan("another run", &t), Plan::Redo(Stage::Chunk));
    }

    #[test]
    fn failed_busy_and_pending_documents() {
        let t = target();
        let failed = Candidate {
            status: "failed".into(),
            ..ready()
        };
        assert_eq!(failed.plan("r", &t), Plan::Redo(Stage::Extract));
        let busy = Candidate {
            status: "embedding".into(),
            ..ready()
        };
        assert_eq!(busy.plan("r", &t), Plan::Busy);
        let pending = Pending {
            run: "other".into(),
            stage: Stage::Embed,
            chunk_max_tokens: 1,
            chunk_overlap_tokens: 0,
            embedding_model: "m".into(),
            by_owner: false,
            error: None,
        };
        let queued = Candidate {
            reprocess: serde_json::to_value(&pending).ok(),
            ..ready()
        };
        assert_eq!(queued.plan("r", &t), Plan::InFlight);
        // A run that failed on the document leaves it to be tried again.
        let errored = Candidate {
            reprocess: serde_json::to_value(Pending {
                error: Some("boom".into()),
                ..pending
            })
            .ok(),
            embedding_model: Some("m1".into()),
            ..ready()
        };
        assert_eq!(errored.plan("r", &t), Plan::Redo(Stage::Embed));
    }

    #[test]
    fn run_keys_follow_what_the_run_selects_and_wants() {
        let s = Selection::default();
        assert_eq!(run_key(&s, &target()), run_key(&s, &target()));
        assert_ne!(
            run_key(&s, &target()),
            run_key(
                &s,
                &Target {
                    chunk_max_tokens: 128,
                    ..target()
                }
            )
        );
        let only_failed = Selection {
            status: Some(DocumentStatus::Failed),
            ..Selection::default()
        };
        assert_ne!(run_key(&s, &target()), run_key(&only_failed, &target()));
        assert_eq!(run_key(&s, &target()).len(), 16);
    }
}
