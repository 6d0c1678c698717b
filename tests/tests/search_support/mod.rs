//! Helpers shared by the `search_*` test binaries: a migrated store, users, and fixture
//! documents ingested inline (the real extract → chunk → embed → store job, without the queue).

#![allow(dead_code)]

use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_ingest_worker::{IngestContext, Outcome, ingest_document};
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::{Store, documents, users};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The eval documents (`fixtures/eval/documents`), sorted.
pub fn eval_documents() -> Vec<PathBuf> {
    files_in(&fixtures().join("eval/documents"))
}

/// The whole eval corpus as `ragpipe eval` builds it: the fixture documents less the hostile
/// ones, and the eval documents.
pub fn eval_corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = files_in(&fixtures().join("documents"))
        .into_iter()
        .filter(|p| !name(p).starts_with("hostile-"))
        .collect();
    files.extend(eval_documents());
    files
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

pub fn name(path: &Path) -> String {
    path.file_name().and_then(|n| n.to_str()).expect("file name").to_owned()
}

pub async fn migrated(pool: PgPool, config: &Config) -> Store {
    let store = Store::from_pool(pool);
    store.migrate(&config.embedding).await.expect("migrate");
    store
}

pub async fn new_user(store: &Store, email: &str) -> UserId {
    let user = users::create(
        store,
        &users::NewUser {
            email: email.into(),
            ..Default::default()
        },
    )
    .await
    .expect("user");
    UserId(user.id)
}

/// Uploads `files` for `user` (with the metadata `metadata` gives each filename) and runs each
/// one's ingest job inline. Returns the documents that ended ready, as (filename, id).
pub async fn ingest(
    store: &Store,
    config: &Config,
    user: UserId,
    files: &[PathBuf],
    metadata: impl Fn(&str) -> serde_json::Value,
) -> Vec<(String, DocumentId)> {
    let ctx = IngestContext::new(store.clone(), Arc::new(config.clone())).expect("ingest context");
    let mut ready = Vec::new();
    for path in files {
        let filename = name(path);
        let bytes = std::fs::read(path).expect("read fixture");
        let Ok(format) = ragpipe_ingest::detect(&bytes) else {
            continue;
        };
        let mut tx = store.user_tx(user).await.expect("tx");
        let stored = documents::create(
            &mut tx,
            &documents::NewDocument {
                filename: &filename,
                content_type: format.content_type(),
                bytes: &bytes,
                sha256: Sha256::digest(&bytes).into(),
                metadata: metadata(&filename),
            },
            8,
        )
        .await
        .expect("upload");
        tx.commit().await.expect("commit");
        let id = DocumentId(stored.document.id);
        let job = IngestJob::upload(user, id);
        match ingest_document(&ctx, &job, &format!("test-{id}")).await {
            Ok(Outcome::Ready { .. }) => ready.push((filename, id)),
            Ok(other) => eprintln!("{filename}: {other:?}"),
            Err(e) => panic!("ingesting {filename}: {e}"),
        }
    }
    ready
}

pub fn no_metadata(_: &str) -> serde_json::Value {
    serde_json::json!({})
}

/// [`ingest`] over `lanes` concurrent runs, each ingesting an interleaved share of `files`
/// (for corpora of hundreds of documents). Returns the ready documents, sorted by filename.
pub async fn ingest_concurrently(
    store: &Store,
    config: &Config,
    user: UserId,
    files: &[PathBuf],
    lanes: usize,
) -> Vec<(String, DocumentId)> {
    let lanes = lanes.max(1);
    let shares: Vec<Vec<PathBuf>> = (0..lanes)
        .map(|lane| files.iter().skip(lane).step_by(lanes).cloned().collect())
        .collect();
    let runs = shares
        .iter()
        .map(|share| ingest(store, config, user, share, no_metadata));
    let mut ready: Vec<(String, DocumentId)> = futures::future::join_all(runs).await.into_iter().flatten().collect();
    ready.sort_by(|a, b| a.0.cmp(&b.0));
    ready
}

/// The documents of an eval set folder (`fixtures/eval-unseen/documents`), sorted.
pub fn set_documents(set: &str) -> Vec<PathBuf> {
    files_in(&fixtures().join(set).join("documents"))
}

/// Prints an answer evaluation's figures, overall and per kind.
pub fn print_answer_report(report: &ragpipe_agent::eval::AnswerReport) {
    for f in std::iter::once(&report.overall).chain(&report.by_kind) {
        eprintln!(
            "{:<16} {:>3} validity {:.3} precision {:?} support {:?} refusal {:?} false refusal {:?}",
            f.kind,
            f.questions,
            f.citation_validity,
            f.citation_precision,
            f.answer_support,
            f.refusal_rate,
            f.false_refusal_rate
        );
    }
}

/// Fails unless hybrid's recall@k and MRR@10 are at least `leg`'s.
pub fn assert_hybrid_holds_against(hybrid: &ragpipe_agent::eval::ModeReport, leg: &ragpipe_agent::eval::ModeReport) {
    assert!(
        hybrid.recall >= leg.recall && hybrid.mrr >= leg.mrr,
        "hybrid (recall {:.3}, MRR {:.3}) falls below its {} leg (recall {:.3}, MRR {:.3})",
        hybrid.recall,
        hybrid.mrr,
        leg.mode,
        leg.recall,
        leg.mrr
    );
}
