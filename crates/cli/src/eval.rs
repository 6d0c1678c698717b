//! `ragpipe eval [--mode M]... [--k K] [--json]`: retrieval quality on the fixture set.
//!
//! Self-contained: it makes sure a dedicated eval user exists, uploads the fixture documents
//! (`fixtures/documents`, less the deliberately hostile ones, and `fixtures/eval/documents`)
//! for that user — uploads dedupe by sha256, so a second run uploads nothing — ingests any that
//! are not done yet inline with the configured embedding model, checks that every question's
//! quote occurs in its gold document, then asks `fixtures/eval/questions.jsonl` in each mode and
//! prints recall@k and MRR@10 at document level.

use anyhow::{Context, bail};
use clap::Args;
use ragpipe_agent::Retriever;
use ragpipe_agent::eval::{self, EvalQuestion, ModeReport};
use ragpipe_core::{Config, DocumentId, UserId};
use ragpipe_ingest_worker::{IngestContext, Outcome, ingest_document};
use ragpipe_llm::Embedders;
use ragpipe_store::jobs::IngestJob;
use ragpipe_store::search::{Fusion, SearchMode};
use ragpipe_store::{Store, StoreError, documents, users};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// The eval user's id: fixed, so every run finds the documents the previous one ingested.
pub const EVAL_USER: UserId = UserId(Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0e7a_1000));
/// Its email.
const EVAL_EMAIL: &str = "eval@ragpipe.invalid";

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Modes to evaluate (repeatable; default: hybrid, vector and text).
    #[arg(long = "mode", value_name = "MODE")]
    pub modes: Vec<SearchMode>,
    /// The k of recall@k.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
    /// The fixtures directory (default: ./fixtures, else the source tree's).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Print every question's rank and top documents.
    #[arg(long)]
    pub verbose: bool,
    /// Override the fusion: vector leg weight (for measuring; default: the built-in fusion).
    #[arg(long)]
    pub vector_weight: Option<f64>,
    /// Override the fusion: vector leg RRF constant.
    #[arg(long)]
    pub vector_k: Option<f64>,
    /// Override the fusion: text leg weight.
    #[arg(long)]
    pub text_weight: Option<f64>,
    /// Override the fusion: text leg RRF constant.
    #[arg(long)]
    pub text_k: Option<f64>,
}

pub async fn run(config: Config, args: EvalArgs) -> anyhow::Result<()> {
    let fixtures = args.fixtures.clone().unwrap_or_else(default_fixtures);
    let questions = load_questions(&fixtures)?;
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await.context("migrating")?;
    ensure_eval_user(&store).await?;
    let corpus = ingest_corpus(&store, &config, EVAL_USER, &fixtures).await?;
    check_quotes(&store, EVAL_USER, &corpus, &questions).await?;

    let embedders = Embedders::new(&config.embedding).context("embedding model")?;
    let defaults = ragpipe_agent::retrieve::default_fusion_for(embedders.configured());
    let fusion = Fusion {
        vector_weight: args.vector_weight.unwrap_or(defaults.vector_weight),
        vector_k: args.vector_k.unwrap_or(defaults.vector_k),
        text_weight: args.text_weight.unwrap_or(defaults.text_weight),
        text_k: args.text_k.unwrap_or(defaults.text_k),
    };
    let retriever = Retriever::new(store, embedders).with_fusion(fusion);
    let modes = if args.modes.is_empty() {
        SearchMode::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    let mut reports = Vec::new();
    for mode in modes {
        reports.push(eval::evaluate(&retriever, EVAL_USER, &questions, mode, args.k).await?);
    }
    if args.json {
        let out = serde_json::json!({
            "embedding_model": config.embedding.model,
            "documents": corpus.len(),
            "fusion": fusion,
            "reports": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_reports(&config, corpus.len(), &fusion, &reports, args.verbose);
    }
    Ok(())
}

fn print_reports(config: &Config, documents: usize, fusion: &Fusion, reports: &[ModeReport], verbose: bool) {
    let Some(first) = reports.first() else { return };
    println!(
        "{} questions over {documents} documents, embeddings {} ({}-d); fusion: vector {}/(k={}) text {}/(k={})",
        first.questions,
        config.embedding.model,
        config.embedding.dim,
        fusion.vector_weight,
        fusion.vector_k,
        fusion.text_weight,
        fusion.text_k
    );
    let kinds: Vec<&str> = first.recall_by_kind.iter().map(|(k, _)| k.as_str()).collect();
    print!("{:<8} {:>9} {:>7}", "mode", format!("recall@{}", first.k), "MRR@10");
    for kind in &kinds {
        print!(" {:>13}", kind);
    }
    println!();
    for r in reports {
        print!("{:<8} {:>9.3} {:>7.3}", r.mode.as_str(), r.recall, r.mrr);
        for (_, recall) in &r.recall_by_kind {
            print!(" {:>13.3}", recall);
        }
        println!();
    }
    if verbose {
        for r in reports {
            println!("\n{}:", r.mode);
            for q in &r.results {
                let rank = q.rank.map_or("-".to_owned(), |r| r.to_string());
                println!("  {:<4} {:<12} rank {:>2}  {}", q.id, q.kind, rank, q.top.join(", "));
            }
        }
    }
}

fn default_fixtures() -> PathBuf {
    let local = PathBuf::from("fixtures");
    if local.join("eval").is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The question set.
pub fn load_questions(fixtures: &Path) -> anyhow::Result<Vec<EvalQuestion>> {
    let path = fixtures.join("eval/questions.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    eval::parse_questions(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Creates the eval user when missing, with its fixed id.
async fn ensure_eval_user(store: &Store) -> anyhow::Result<()> {
    match users::get(store, EVAL_USER).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => {
            let new = users::NewUser {
                id: Some(EVAL_USER),
                email: EVAL_EMAIL.into(),
                display_name: Some("ragpipe eval".into()),
                ..Default::default()
            };
            users::create(store, &new)
                .await
                .with_context(|| format!("creating the eval user {EVAL_USER} ({EVAL_EMAIL})"))?;
            Ok(())
        }
        Err(e) => Err(e).context("reading the eval user"),
    }
}

/// Files of the eval corpus: the fixture documents (not the hostile ones, which exist to fail)
/// and the eval documents, sorted.
pub fn corpus_files(fixtures: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [fixtures.join("documents"), fixtures.join("eval/documents")] {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_file() && !name.starts_with('.') && !name.starts_with("hostile-") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Uploads the corpus for `user` and ingests what is not ready yet; returns the ready
/// documents as (filename, id).
pub async fn ingest_corpus(
    store: &Store,
    config: &Config,
    user: UserId,
    fixtures: &Path,
) -> anyhow::Result<Vec<(String, DocumentId)>> {
    let ctx = IngestContext::new(store.clone(), Arc::new(config.clone())).map_err(|e| anyhow::anyhow!(e))?;
    let mut ready = Vec::new();
    for path in corpus_files(fixtures)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let Ok(format) = ragpipe_ingest::detect(&bytes) else {
            continue;
        };
        let mut tx = store.user_tx(user).await?;
        let stored = documents::create(
            &mut tx,
            &documents::NewDocument {
                filename: &name,
                content_type: format.content_type(),
                bytes: &bytes,
                sha256: Sha256::digest(&bytes).into(),
                metadata: serde_json::json!({"source": "ragpipe eval"}),
            },
            config.worker.max_attempts,
        )
        .await?;
        tx.commit().await?;
        let id = DocumentId(stored.document.id);
        let status = if stored.document.status().is_terminal() {
            stored.document.status
        } else {
            // The upload also queued a job; a worker that picks it up later finds the document
            // done and skips it.
            let job = IngestJob::upload(user, id);
            match ingest_document(&ctx, &job, &format!("eval-{id}")).await {
                Ok(Outcome::Ready { .. } | Outcome::Skipped) => "ready".to_owned(),
                Ok(Outcome::Failed(reason)) => {
                    tracing::warn!(file = %name, %reason, "eval document failed");
                    "failed".to_owned()
                }
                Err(e) => bail!("ingesting {name}: {e}"),
            }
        };
        if status == "ready" {
            ready.push((name, id));
        }
    }
    Ok(ready)
}

/// Fails when a question's gold document is missing or does not contain its quote (so a typo
/// in the set, or an extraction change, shows up instead of silently lowering the figures).
pub async fn check_quotes(
    store: &Store,
    user: UserId,
    corpus: &[(String, DocumentId)],
    questions: &[EvalQuestion],
) -> anyhow::Result<()> {
    let mut tx = store.user_tx(user).await?;
    for q in questions {
        let gold = &q.documents[0];
        let Some((_, id)) = corpus.iter().find(|(name, _)| name == gold) else {
            bail!("{}: gold document {gold} is not in the corpus", q.id);
        };
        let chunks = ragpipe_store::chunks::list(&mut tx, *id, 0, 1000).await?;
        let quote = eval::normalise_whitespace(&q.quote);
        if !chunks
            .iter()
            .any(|c| eval::normalise_whitespace(&c.content).contains(&quote))
        {
            bail!("{}: the quote is not in {gold}: {:?}", q.id, q.quote);
        }
    }
    tx.rollback().await?;
    Ok(())
}
