//! Quality on the test half of the unseen set (`fixtures/eval-unseen`), as `ragpipe eval
//! --fixtures fixtures/eval-unseen --split test` and `ragpipe eval --answers ...` measure it: a
//! fresh database, the set's 965 documents ingested with the default (offline hashed)
//! embeddings, the test half's answerable questions searched in each mode, and every question of
//! the half asked through the agent and answered by the offline extractive responder.
//!
//! Fails when a figure drops below the floor recorded in `fixtures/eval-unseen/floor.json`
//! (just under the measured values; BENCHMARKS.md has them with their command), when hybrid
//! falls below either of its own legs in recall@5 or MRR@10, or when an answer cites a number
//! that was not in its prompt. Not a timing check: nothing here depends on speed.

mod search_support;

use ragpipe_agent::AnswerContext;
use ragpipe_agent::eval::{self, EvalQuestion, ModeReport, Split};
use ragpipe_agent::{Retriever, SearchMode};
use ragpipe_core::Config;
use ragpipe_llm::Embedders;
use search_support::*;
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;

const SET: &str = "eval-unseen";

#[derive(Debug, Deserialize)]
struct Floor {
    k: usize,
    retrieval: RetrievalFloor,
    answers: AnswerFloor,
}

#[derive(Debug, Deserialize)]
struct RetrievalFloor {
    hybrid_recall: f64,
    hybrid_mrr: f64,
}

#[derive(Debug, Deserialize)]
struct AnswerFloor {
    citation_precision: f64,
    answer_support: f64,
    refusal: f64,
}

fn floor() -> Floor {
    let text = std::fs::read_to_string(fixtures().join(SET).join("floor.json")).expect("floor.json");
    serde_json::from_str(&text).expect("floor.json parses")
}

fn test_half() -> Vec<EvalQuestion> {
    let text = std::fs::read_to_string(fixtures().join(SET).join("questions.jsonl")).expect("questions.jsonl");
    let all = eval::parse_questions(&text).expect("the unseen set parses");
    eval::select_split(&all, Split::Test)
}

fn print(report: &ModeReport) {
    eprintln!(
        "{:<7} recall@{} {:.3}  MRR@10 {:.3}  {:?}",
        report.mode.as_str(),
        report.k,
        report.recall,
        report.mrr,
        report
            .by_kind
            .iter()
            .map(|k| format!("{} {:.3}/{:.3}", k.kind, k.recall, k.mrr))
            .collect::<Vec<_>>()
    );
}

#[sqlx::test(migrations = false)]
async fn the_test_half_stays_above_its_floors_and_hybrid_holds_against_both_legs(pool: PgPool) {
    let config = Config::defaults();
    let store = migrated(pool, &config).await;
    let user = new_user(&store, "eval-unseen@example.com").await;
    let files = set_documents(SET);
    let ready = ingest_concurrently(&store, &config, user, &files, 4).await;
    assert_eq!(ready.len(), files.len(), "every document of the set ingests");
    let questions = test_half();
    let floor = floor();

    // Retrieval, per mode.
    let retriever = Retriever::new(store.clone(), Embedders::new(&config.embedding).expect("embedder"));
    let mut reports = Vec::new();
    for mode in SearchMode::ALL {
        let report = eval::evaluate(&retriever, user, &questions, mode, floor.k)
            .await
            .expect("evaluate");
        print(&report);
        reports.push(report);
    }
    let by_mode = |m: SearchMode| reports.iter().find(|r| r.mode == m).expect("mode");
    let hybrid = by_mode(SearchMode::Hybrid);
    assert!(hybrid.questions >= 150, "{} answerable questions", hybrid.questions);
    assert!(
        hybrid.recall >= floor.retrieval.hybrid_recall && hybrid.mrr >= floor.retrieval.hybrid_mrr,
        "hybrid recall@{} {:.3} / MRR@10 {:.3} below the floor {:.3} / {:.3}",
        floor.k,
        hybrid.recall,
        hybrid.mrr,
        floor.retrieval.hybrid_recall,
        floor.retrieval.hybrid_mrr
    );
    for leg in [by_mode(SearchMode::Vector), by_mode(SearchMode::Text)] {
        assert_hybrid_holds_against(hybrid, leg);
    }

    // Answers, through the agent.
    let ctx = AnswerContext::new(store, Arc::new(config)).await.expect("agent");
    assert!(ctx.chat().is_offline());
    let report = eval::evaluate_answers(&ctx, user, &questions).await.expect("answers");
    print_answer_report(&report);
    let all = &report.overall;
    assert_eq!(all.questions, questions.len());
    let unfinished: Vec<&String> = report
        .results
        .iter()
        .filter(|r| r.status != "complete")
        .map(|r| &r.id)
        .collect();
    assert!(unfinished.is_empty(), "unfinished answers: {unfinished:?}");
    assert_eq!(
        all.citation_validity, 1.0,
        "an answer cites a number its prompt did not hold"
    );
    let precision = all.citation_precision.expect("answers cite sources");
    let support = all.answer_support.expect("answerable questions");
    let refusal = all.refusal_rate.expect("unanswerable questions");
    let f = &floor.answers;
    assert!(
        precision >= f.citation_precision,
        "citation precision {precision:.3} < {}",
        f.citation_precision
    );
    assert!(
        support >= f.answer_support,
        "answer support {support:.3} < {}",
        f.answer_support
    );
    assert!(
        refusal >= f.refusal,
        "refusal on unanswerable questions {refusal:.3} < {}",
        f.refusal
    );
}
