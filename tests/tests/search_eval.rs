//! Retrieval quality on the fixture set (`fixtures/eval/`), as `ragpipe eval` measures it: a
//! fresh database, the eval corpus ingested with the default (offline hashed) embeddings, every
//! question asked in each mode. Fails when hybrid recall@5 drops below the floor recorded in
//! `fixtures/eval/floor.json`, or when hybrid falls below either of its legs.

mod search_support;

use ragpipe_agent::eval::{self, Floor, ModeReport};
use ragpipe_agent::{Retriever, SearchMode};
use ragpipe_core::Config;
use ragpipe_llm::Embedders;
use ragpipe_store::search::Fusion;
use search_support::*;
use sqlx::PgPool;

fn questions() -> Vec<eval::EvalQuestion> {
    let text = std::fs::read_to_string(fixtures().join("eval/questions.jsonl")).expect("questions");
    eval::parse_questions(&text).expect("question set parses")
}

fn floor() -> Floor {
    let text = std::fs::read_to_string(fixtures().join("eval/floor.json")).expect("floor.json");
    serde_json::from_str(&text).expect("floor.json parses")
}

async fn reports(retriever: &Retriever, user: ragpipe_core::UserId, k: usize) -> Vec<ModeReport> {
    let questions = questions();
    assert!(questions.len() >= 25, "the set has {} questions", questions.len());
    let mut out = Vec::new();
    for mode in SearchMode::ALL {
        let report = eval::evaluate(retriever, user, &questions, mode, k)
            .await
            .expect("evaluate");
        eprintln!(
            "{:<7} recall@{k} {:.3}  MRR@10 {:.3}  {:?}",
            mode.as_str(),
            report.recall,
            report.mrr,
            report.recall_by_kind
        );
        out.push(report);
    }
    out
}

#[sqlx::test(migrations = false)]
async fn hybrid_recall_stays_above_the_recorded_floor_and_holds_against_both_legs(pool: PgPool) {
    let config = Config::defaults();
    let store = migrated(pool, &config).await;
    let user = new_user(&store, "eval@example.com").await;
    let corpus = ingest(&store, &config, user, &eval_corpus(), no_metadata).await;
    // Every question's gold document is in the corpus and contains its quote.
    for q in questions() {
        assert!(
            corpus.iter().any(|(name, _)| q.documents.contains(name)),
            "{}: no gold document ingested",
            q.id
        );
    }
    let floor = floor();
    assert_eq!(floor.mode, SearchMode::Hybrid);
    let retriever = Retriever::new(store, Embedders::new(&config.embedding).expect("embedder"));
    let reports = reports(&retriever, user, floor.k).await;
    let by_mode = |m: SearchMode| reports.iter().find(|r| r.mode == m).expect("mode");
    let (hybrid, vector, text) = (
        by_mode(SearchMode::Hybrid),
        by_mode(SearchMode::Vector),
        by_mode(SearchMode::Text),
    );
    assert!(
        hybrid.recall >= floor.recall,
        "hybrid recall@{} {:.3} is below the floor {:.3}",
        floor.k,
        hybrid.recall,
        floor.recall
    );
    for leg in [vector, text] {
        assert_hybrid_holds_against(hybrid, leg);
    }
}

/// Measures a grid of fusion settings on the fixture set (run by hand:
/// `cargo nextest run -p ragpipe-tests -E 'binary(search_eval)' --run-ignored only --no-capture`).
#[sqlx::test(migrations = false)]
#[ignore = "measurement, not a check"]
async fn sweep_fusion_settings(pool: PgPool) {
    let config = Config::defaults();
    let store = migrated(pool, &config).await;
    let user = new_user(&store, "eval@example.com").await;
    ingest(&store, &config, user, &eval_corpus(), no_metadata).await;
    let questions = questions();
    let base = Retriever::new(store, Embedders::new(&config.embedding).expect("embedder"));
    for mode in [SearchMode::Vector, SearchMode::Text] {
        let r = eval::evaluate(&base, user, &questions, mode, 5)
            .await
            .expect("evaluate");
        eprintln!("{:<7} recall@5 {:.3} MRR@10 {:.3}", mode.as_str(), r.recall, r.mrr);
    }
    for text_weight in [1.0, 1.5, 2.0, 2.5, 3.0] {
        for (vector_k, text_k) in [
            (60.0, 60.0),
            (60.0, 20.0),
            (60.0, 10.0),
            (100.0, 20.0),
            (60.0, 30.0),
            (20.0, 20.0),
        ] {
            let fusion = Fusion {
                vector_weight: 1.0,
                vector_k,
                text_weight,
                text_k,
            };
            let retriever = base.clone().with_fusion(fusion);
            let r = eval::evaluate(&retriever, user, &questions, SearchMode::Hybrid, 5)
                .await
                .expect("evaluate");
            eprintln!(
                "hybrid text_weight {text_weight:.1} vector_k {vector_k:>4} text_k {text_k:>4}: recall@5 {:.3} MRR@10 {:.3}",
                r.recall, r.mrr
            );
        }
    }
}
