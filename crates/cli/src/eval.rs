//! `ragpipe eval [--mode M]... [--k K] [--split S] [--fixtures DIR] [--json]`: retrieval
//! quality on a question set; `ragpipe eval --answers [--split S] [--fixtures DIR] [--json]`:
//! answer quality, every question asked through the agent (`eval::evaluate_answers`).
//!
//! Two layouts of DIR are understood:
//! - the fixtures folder (`fixtures`, the default): the corpus is `fixtures/documents`, less the
//!   deliberately hostile ones, and `fixtures/eval/documents`; the questions are
//!   `fixtures/eval/questions.jsonl`;
//! - an eval set folder (`fixtures/eval-unseen`): `DIR/documents` and `DIR/questions.jsonl`.
//!
//! Self-contained: it makes sure a dedicated eval user exists (one per set, so two sets'
//! corpora never mix), uploads the corpus for that user — uploads dedupe by sha256, so a second
//! run uploads nothing — ingests any that are not done yet inline with the configured embedding
//! model, checks that every question's quote occurs in a chunk of its gold document, then asks
//! the questions of the chosen split in each mode and prints recall@k and MRR@10 at document
//! level, overall and per question kind. Unanswerable questions are counted, not asked.

use anyhow::{Context, bail};
use clap::Args;
use ragpipe_agent::Retriever;
use ragpipe_agent::eval::{self, EvalQuestion, ModeReport, Split};
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
    /// The fixtures directory (default: ./fixtures, else the source tree's), or an eval set
    /// directory holding `documents/` and `questions.jsonl` (e.g. fixtures/eval-unseen).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Which half of a split set to ask: tune, test or all (questions without a split are in
    /// every half).
    #[arg(long, default_value = "all", value_name = "SPLIT")]
    pub split: Split,
    /// Print every question's rank and top documents.
    #[arg(long)]
    pub verbose: bool,
    /// Evaluate answers instead of retrieval: ask every question of the split through the
    /// agent (offline: the extractive responder) and report citation validity, citation
    /// precision, answer support and refusals, overall and per kind.
    #[arg(long)]
    pub answers: bool,
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
    /// Instead of the report, write each answerable question's vector-leg and text-leg hits
    /// (top 100 each, with similarity and BM25 score) to FILE as JSON lines, for studying
    /// fusion methods outside the database.
    #[arg(long, value_name = "FILE")]
    pub dump_legs: Option<PathBuf>,
    /// Ask only the first N questions of each kind of the split, in file order (for a slow
    /// model: a sample that keeps every kind).
    #[arg(long, value_name = "N")]
    pub per_kind: Option<usize>,
}

pub async fn run(config: Config, args: EvalArgs) -> anyhow::Result<()> {
    let fixtures = args.fixtures.clone().unwrap_or_else(default_fixtures);
    let set = EvalSet::at(&fixtures);
    let all_questions = load_questions(&fixtures)?;
    let mut questions = eval::select_split(&all_questions, args.split);
    if let Some(n) = args.per_kind {
        questions = eval::first_per_kind(&questions, n);
    }
    if questions.is_empty() {
        bail!("no questions in the {} split of {}", args.split, fixtures.display());
    }
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await.context("migrating")?;
    ensure_eval_user(&store, &set).await?;
    let corpus = ingest_corpus(&store, &config, set.user, &fixtures).await?;
    check_quotes(&store, set.user, &corpus, &questions).await?;

    if args.answers {
        return run_answers(store, config, &args, &fixtures, set.user, corpus.len(), &questions).await;
    }
    let embedders = Embedders::new(&config.embedding).context("embedding model")?;
    let defaults = ragpipe_agent::retrieve::default_fusion_for(embedders.configured());
    let fusion = Fusion {
        vector_weight: args.vector_weight.unwrap_or(defaults.vector_weight),
        vector_k: args.vector_k.unwrap_or(defaults.vector_k),
        text_weight: args.text_weight.unwrap_or(defaults.text_weight),
        text_k: args.text_k.unwrap_or(defaults.text_k),
    };
    let retriever = Retriever::new(store, embedders).with_fusion(fusion);
    if let Some(path) = &args.dump_legs {
        return dump_legs(&retriever, set.user, &questions, path).await;
    }
    let modes = if args.modes.is_empty() {
        SearchMode::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    let mut reports = Vec::new();
    for mode in modes {
        reports.push(eval::evaluate(&retriever, set.user, &questions, mode, args.k).await?);
    }
    if args.json {
        let out = serde_json::json!({
            "embedding_model": config.embedding.model,
            "fixtures": fixtures.display().to_string(),
            "split": args.split,
            "documents": corpus.len(),
            "fusion": fusion,
            "reports": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_reports(&config, corpus.len(), args.split, &fusion, &reports, args.verbose);
    }
    Ok(())
}

/// `ragpipe eval --dump-legs FILE`: one JSON line per answerable question with each leg's
/// ranking on its own.
async fn dump_legs(retriever: &Retriever, user: UserId, questions: &[EvalQuestion], path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for q in questions.iter().filter(|q| !q.is_unanswerable()) {
        let mut legs = serde_json::Map::new();
        for mode in [SearchMode::Vector, SearchMode::Text] {
            let request = ragpipe_agent::retrieve::SearchRequest {
                mode,
                k: ragpipe_store::search::MAX_K,
                ..ragpipe_agent::retrieve::SearchRequest::new(q.question.clone())
            };
            let hits = retriever
                .search(user, &request)
                .await
                .with_context(|| format!("searching question {}", q.id))?;
            let rows: Vec<serde_json::Value> = hits
                .iter()
                .map(|h| {
                    serde_json::json!([
                        h.chunk_id,
                        h.filename,
                        h.vector_similarity.or(h.text_score),
                        h.also_in.iter().map(|a| a.filename.as_str()).collect::<Vec<_>>()
                    ])
                })
                .collect();
            legs.insert(mode.as_str().to_owned(), serde_json::Value::Array(rows));
        }
        let line = serde_json::json!({
            "id": q.id,
            "kind": q.kind,
            "split": q.split,
            "question": q.question,
            "documents": q.documents,
            "legs": legs,
        });
        writeln!(out, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `ragpipe eval --answers`: every question through the agent path, answers scored.
async fn run_answers(
    store: Store,
    config: Config,
    args: &EvalArgs,
    fixtures: &Path,
    user: UserId,
    documents: usize,
    questions: &[EvalQuestion],
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let ctx = ragpipe_agent::AnswerContext::new(store, config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("building the agent: {e}"))?;
    let started = std::time::Instant::now();
    let report = eval::evaluate_answers(&ctx, user, questions)
        .await
        .context("asking the questions")?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "embedding_model": config.embedding.model,
            "chat_model": report.model,
            "offline": ctx.chat().is_offline(),
            "fixtures": fixtures.display().to_string(),
            "split": args.split,
            "documents": documents,
            "seconds": seconds,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_answer_report(&config, &report, documents, args.split, seconds, args.verbose);
    }
    Ok(())
}

fn print_answer_report(
    config: &Config,
    report: &eval::AnswerReport,
    documents: usize,
    split: Split,
    seconds: f64,
    verbose: bool,
) {
    let figure = |f: Option<f64>| f.map_or("-".to_owned(), |f| format!("{f:.3}"));
    println!(
        "{} questions ({} answerable) of split {split} over {documents} documents, answered by {} with embeddings {}, in {seconds:.1} s",
        report.overall.questions, report.overall.answerable, report.model, config.embedding.model
    );
    println!(
        "{:<16} {:>5} {:>9} {:>10} {:>8} {:>8} {:>14}",
        "kind", "asked", "validity", "precision", "support", "refusal", "false refusal"
    );
    for f in std::iter::once(&report.overall).chain(&report.by_kind) {
        println!(
            "{:<16} {:>5} {:>9.3} {:>10} {:>8} {:>8} {:>14}",
            f.kind,
            f.questions,
            f.citation_validity,
            figure(f.citation_precision),
            figure(f.answer_support),
            figure(f.refusal_rate),
            figure(f.false_refusal_rate)
        );
    }
    let invalid: Vec<String> = report
        .results
        .iter()
        .filter(|r| !r.invalid_markers.is_empty())
        .map(|r| format!("{} {:?}", r.id, r.invalid_markers))
        .collect();
    if !invalid.is_empty() {
        println!(
            "\ninvalid citations (markers naming no source in the prompt): {}",
            invalid.join(", ")
        );
    }
    let unfinished: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.status != "complete")
        .map(|r| format!("{} ({})", r.id, r.status))
        .collect();
    if !unfinished.is_empty() {
        println!("answers not complete: {}", unfinished.join(", "));
    }
    if verbose {
        for r in &report.results {
            println!(
                "\n{} {} support {} refused {} cited {:?}\n{}",
                r.id,
                r.kind,
                figure(r.support),
                r.refused,
                r.cited,
                r.answer.trim_end()
            );
        }
    }
}

fn print_reports(
    config: &Config,
    documents: usize,
    split: Split,
    fusion: &Fusion,
    reports: &[ModeReport],
    verbose: bool,
) {
    let Some(first) = reports.first() else { return };
    let unanswerable = if first.unanswerable > 0 {
        format!(" (and {} unanswerable, not asked)", first.unanswerable)
    } else {
        String::new()
    };
    println!(
        "{} questions{unanswerable} of split {split} over {documents} documents, embeddings {} ({}-d); fusion: vector {}/(k={}) text {}/(k={})",
        first.questions,
        config.embedding.model,
        config.embedding.dim,
        fusion.vector_weight,
        fusion.vector_k,
        fusion.text_weight,
        fusion.text_k
    );
    println!("{:<8} {:>9} {:>7}", "mode", format!("recall@{}", first.k), "MRR@10");
    for r in reports {
        println!("{:<8} {:>9.3} {:>7.3}", r.mode.as_str(), r.recall, r.mrr);
    }
    if first.by_kind.len() > 1 {
        println!("\nper kind: recall@{} / MRR@10 (questions)", first.k);
        print!("{:<8}", "mode");
        for kind in &first.by_kind {
            print!(" {:>20}", format!("{} ({})", kind.kind, kind.questions));
        }
        println!();
        for r in reports {
            print!("{:<8}", r.mode.as_str());
            for kind in &r.by_kind {
                print!(" {:>20}", format!("{:.3} / {:.3}", kind.recall, kind.mrr));
            }
            println!();
        }
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

/// Which layout a fixtures directory has, and whose documents it is searched as.
struct EvalSet {
    /// The eval user of this set.
    user: UserId,
    /// Its email.
    email: String,
}

impl EvalSet {
    /// The set at `dir`: the fixtures folder's set is the eval user's; a set folder (one with
    /// its own `questions.jsonl`) gets a user of its own, derived from the folder's name, so
    /// its corpus is searched alone.
    fn at(dir: &Path) -> EvalSet {
        if !is_set_dir(dir) {
            return EvalSet {
                user: EVAL_USER,
                email: EVAL_EMAIL.to_owned(),
            };
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let digest = Sha256::digest(format!("ragpipe eval set {name}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        EvalSet {
            user: UserId(uuid::Builder::from_random_bytes(bytes).into_uuid()),
            email: format!("eval+{slug}@ragpipe.invalid"),
        }
    }
}

/// The eval user whose documents `ragpipe eval --fixtures DIR` searches: the eval user for the
/// fixtures folder, a user of the set's own for a set folder (derived from the folder's name).
pub fn set_user(dir: &Path) -> UserId {
    EvalSet::at(dir).user
}

/// Whether `dir` is an eval set folder (`documents/` and `questions.jsonl`) rather than the
/// fixtures folder.
fn is_set_dir(dir: &Path) -> bool {
    dir.join("questions.jsonl").is_file()
}

fn default_fixtures() -> PathBuf {
    let local = PathBuf::from("fixtures");
    if local.join("eval").is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The question set (`DIR/questions.jsonl` of a set folder, else `DIR/eval/questions.jsonl`).
pub fn load_questions(fixtures: &Path) -> anyhow::Result<Vec<EvalQuestion>> {
    let path = if is_set_dir(fixtures) {
        fixtures.join("questions.jsonl")
    } else {
        fixtures.join("eval/questions.jsonl")
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    eval::parse_questions(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Creates the set's eval user when missing, with its fixed id.
async fn ensure_eval_user(store: &Store, set: &EvalSet) -> anyhow::Result<()> {
    match users::get(store, set.user).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => {
            let new = users::NewUser {
                id: Some(set.user),
                email: set.email.clone(),
                display_name: Some("ragpipe eval".into()),
                ..Default::default()
            };
            users::create(store, &new)
                .await
                .with_context(|| format!("creating the eval user {} ({})", set.user, set.email))?;
            Ok(())
        }
        Err(e) => Err(e).context("reading the eval user"),
    }
}

/// Files of the eval corpus, sorted: for the fixtures folder, the fixture documents (not the
/// hostile ones, which exist to fail) and the eval documents; for a set folder, its documents.
pub fn corpus_files(fixtures: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let dirs = if is_set_dir(fixtures) {
        vec![fixtures.join("documents")]
    } else {
        vec![fixtures.join("documents"), fixtures.join("eval/documents")]
    };
    for dir in dirs {
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
            &documents::NewDocument::new(
                &name,
                format.content_type(),
                &bytes,
                serde_json::json!({"source": "ragpipe eval"}),
            ),
            config.worker.max_attempts,
        )
        .await?;
        tx.commit().await?;
        let id = DocumentId(stored.document.id);
        let status = if stored.document.status()?.is_terminal() {
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

/// Fails when a question's gold document is missing or no chunk of it contains its quote (so a
/// typo in the set, or an extraction change, shows up instead of silently lowering the
/// figures). Unanswerable questions have nothing to check.
pub async fn check_quotes(
    store: &Store,
    user: UserId,
    corpus: &[(String, DocumentId)],
    questions: &[EvalQuestion],
) -> anyhow::Result<()> {
    /// Chunks read per page.
    const PAGE: u32 = 1000;
    let mut tx = store.user_tx(user).await?;
    for q in questions {
        let (Some(gold), Some(quote)) = (q.documents.first(), q.quote.as_deref()) else {
            continue;
        };
        let Some((_, id)) = corpus.iter().find(|(name, _)| name == gold) else {
            bail!("{}: gold document {gold} is not in the corpus", q.id);
        };
        let quote = eval::normalise_whitespace(quote);
        let mut found = false;
        let mut offset = 0;
        loop {
            let chunks = ragpipe_store::chunks::list(&mut tx, *id, offset, PAGE)
                .await
                .with_context(|| format!("reading the chunks of {gold}"))?;
            if chunks
                .iter()
                .any(|c| eval::normalise_whitespace(&c.content).contains(&quote))
            {
                found = true;
                break;
            }
            if chunks.len() < PAGE as usize {
                break;
            }
            offset += PAGE;
        }
        if !found {
            bail!("{}: the quote is not in a chunk of {gold}: {quote:?}", q.id);
        }
    }
    tx.rollback().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    #[test]
    fn a_set_folder_has_its_own_questions_corpus_and_user() {
        let set = fixtures().join("eval-unseen");
        let questions = load_questions(&set).expect("the unseen questions");
        assert!(questions.iter().all(|q| q.split.is_some()));
        let files = corpus_files(&set).expect("the unseen corpus");
        assert!(
            files
                .iter()
                .all(|f| f.parent() == Some(set.join("documents").as_path()))
        );
        let user = EvalSet::at(&set);
        assert_ne!(user.user, EVAL_USER);
        // Derived from the folder's name, so every run (from any working directory) finds the
        // documents the previous one ingested.
        assert_eq!(user.user, EvalSet::at(&set.join("../eval-unseen/")).user);
        assert_eq!(user.email, "eval+eval-unseen@ragpipe.invalid");
    }

    #[test]
    fn the_fixtures_folder_keeps_the_old_layout() {
        let dir = fixtures();
        let questions = load_questions(&dir).expect("the fixture questions");
        assert!(questions.iter().all(|q| q.split.is_none()));
        assert_eq!(EvalSet::at(&dir).user, EVAL_USER);
        let files = corpus_files(&dir).expect("the fixture corpus");
        assert!(files.iter().any(|f| f.starts_with(dir.join("eval/documents"))));
        assert!(!files.iter().any(|f| f.starts_with(dir.join("eval-unseen"))));
    }
}
