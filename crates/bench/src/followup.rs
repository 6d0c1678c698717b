//! `ragpipe-bench followup [--fixtures DIR] [--split S] [--k K] [--all-kinds] [--json]`:
//! retrieval of follow-up questions with and without the conversation, and of every question
//! with and without the configured reranker.
//!
//! Uses the set's eval user and corpus as `ragpipe eval --fixtures DIR` leaves them (uploaded
//! and ingested when missing). For each mode, every follow-up question of the split is searched
//! as asked (`alone`: what a retriever that ignores the conversation sees) and with the offline
//! carry-over of its previous turn ([`ragpipe_agent::followup::retrieval_query`]), scored at
//! document level (recall@k, MRR@10). With `--all-kinds`, every answerable question is asked
//! (follow-ups with the carry-over). When `RAGPIPE_RERANK_BASE_URL` is set, each variant is
//! also measured with the rerank stage.

use anyhow::{Context, bail};
use clap::Args;
use ragpipe_agent::eval::{self, FOLLOW_UP, MRR_CUTOFF, Split};
use ragpipe_agent::followup::retrieval_query;
use ragpipe_agent::{QueryUsage, Retriever, SearchMode, SearchRequest};
use ragpipe_cli::eval::{ingest_corpus, load_questions, set_user};
use ragpipe_core::Config;
use ragpipe_llm::{Embedders, Reranker};
use ragpipe_store::{Store, StoreError, users};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchFollowupArgs {
    /// The eval set directory (`documents/` and `questions.jsonl`).
    #[arg(long, value_name = "DIR", default_value = "fixtures/eval-unseen")]
    pub fixtures: PathBuf,
    /// Which half to ask: tune, test or all.
    #[arg(long, default_value = "test", value_name = "SPLIT")]
    pub split: Split,
    /// The k of recall@k.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Ask every answerable question, not only the follow-ups.
    #[arg(long)]
    pub all_kinds: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of the report.
#[derive(Debug, serde::Serialize)]
struct Row {
    mode: SearchMode,
    variant: String,
    questions: usize,
    recall: f64,
    mrr: f64,
    /// Searches whose rerank stage did not apply (reranker failures).
    rerank_failures: usize,
}

pub async fn run(config: Config, args: BenchFollowupArgs) -> anyhow::Result<()> {
    let questions = load_questions(&args.fixtures)?;
    let questions: Vec<_> = eval::select_split(&questions, args.split)
        .into_iter()
        .filter(|q| !q.is_unanswerable() && (args.all_kinds || q.kind == FOLLOW_UP))
        .collect();
    if questions.is_empty() {
        bail!(
            "no questions to ask in the {} split of {}",
            args.split,
            args.fixtures.display()
        );
    }
    let store = Store::connect(&config).await?;
    store.migrate(&config.embedding).await.context("migrating")?;
    let user = set_user(&args.fixtures);
    match users::get(&store, user).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => bail!(
            "the set's eval user does not exist yet: run `ragpipe eval --fixtures {}` first",
            args.fixtures.display()
        ),
        Err(e) => return Err(e).context("reading the eval user"),
    }
    let corpus = ingest_corpus(&store, &config, user, &args.fixtures).await?;

    let embedders = Embedders::new(&config.embedding).context("embedding model")?;
    let fused = Retriever::new(store, embedders);
    let reranker = Reranker::new(&config.rerank).context("reranker")?;
    let mut retrievers = vec![("", fused.clone())];
    if let Some(r) = reranker {
        retrievers.push((" + rerank", fused.with_reranker(Some(r))));
    }
    let variants: &[(&str, bool)] = if args.all_kinds {
        &[("as asked", false), ("carry-over", true)]
    } else {
        &[("alone", false), ("carry-over", true)]
    };
    let depth = args.k.max(MRR_CUTOFF) as u32;
    let mut rows = Vec::new();
    for mode in SearchMode::ALL {
        for (suffix, retriever) in &retrievers {
            for (variant, carry) in variants {
                let mut ranks = Vec::with_capacity(questions.len());
                let mut rerank_failures = 0;
                for q in &questions {
                    let query = match (&q.previous, carry) {
                        (Some(previous), true) => retrieval_query(&q.question, &[previous.as_str()]),
                        _ => q.question.clone(),
                    };
                    let request = SearchRequest {
                        mode,
                        k: depth,
                        ..SearchRequest::new(query)
                    };
                    let out = retriever
                        .search_ranked(user, &request, &QueryUsage::search())
                        .await
                        .with_context(|| format!("searching for {}", q.id))?;
                    rerank_failures += usize::from(out.rerank.as_ref().is_some_and(|r| !r.applied));
                    ranks.push(eval::first_relevant_hit(&out.hits, &q.documents));
                }
                rows.push(Row {
                    mode,
                    variant: format!("{variant}{suffix}"),
                    questions: ranks.len(),
                    recall: eval::recall_at(&ranks, args.k),
                    mrr: eval::mrr(&ranks, MRR_CUTOFF),
                    rerank_failures,
                });
            }
        }
    }
    if args.json {
        let out = serde_json::json!({
            "embedding_model": config.embedding.model,
            "rerank_model": config.rerank.base_url.as_ref().map(|_| &config.rerank.model),
            "fixtures": args.fixtures.display().to_string(),
            "split": args.split,
            "documents": corpus.len(),
            "k": args.k,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} questions ({}), {} split, {} documents, embedding model {}",
            questions.len(),
            if args.all_kinds { "all answerable" } else { "follow-ups" },
            args.split,
            corpus.len(),
            config.embedding.model
        );
        println!(
            "{:<8} {:<22} {:>9} {:>7}",
            "mode",
            "variant",
            format!("recall@{}", args.k),
            "MRR@10"
        );
        for r in &rows {
            let failures = if r.rerank_failures > 0 {
                format!("  ({} rerank failures)", r.rerank_failures)
            } else {
                String::new()
            };
            println!(
                "{:<8} {:<22} {:>9.3} {:>7.3}{failures}",
                r.mode.as_str(),
                r.variant,
                r.recall,
                r.mrr
            );
        }
    }
    Ok(())
}
