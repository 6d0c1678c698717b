//! The unseen evaluation set (`fixtures/eval-unseen`) is consistent, without a database: every
//! question parses, the halves are balanced per kind, unanswerable questions name nothing,
//! follow-ups carry their previous turn, and every answerable question's quote occurs in one
//! chunk of its first gold document as the ingest pipeline extracts and chunks it — the check
//! `ragpipe eval` makes against the stored chunks, so an extraction change that moves a quote
//! shows up here first (rebuild the set with `scripts/eval-corpus/questions.py`).

mod search_support;

use ragpipe_agent::eval::{self, EvalQuestion, Split};
use ragpipe_core::Config;
use ragpipe_ingest::{ChunkSettings, Chunker, Limits};
use search_support::fixtures;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn set_dir() -> PathBuf {
    fixtures().join("eval-unseen")
}

fn questions() -> Vec<EvalQuestion> {
    let text = std::fs::read_to_string(set_dir().join("questions.jsonl")).expect("questions.jsonl");
    eval::parse_questions(&text).expect("the unseen set parses")
}

#[test]
fn the_set_is_large_split_in_halves_and_labelled() {
    let questions = questions();
    assert!(questions.len() >= 300, "{} questions", questions.len());
    let documents = std::fs::read_dir(set_dir().join("documents"))
        .expect("documents")
        .count();
    assert!(documents >= 500, "{documents} documents");

    let mut halves: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for q in &questions {
        let entry = halves.entry(q.kind.as_str()).or_default();
        match q.split {
            Some(Split::Tune) => entry.0 += 1,
            Some(Split::Test) => entry.1 += 1,
            other => panic!("{}: split {other:?}", q.id),
        }
        match q.kind.as_str() {
            "unanswerable" => assert!(q.documents.is_empty() && q.quote.is_none(), "{}", q.id),
            "follow-up" => assert!(q.previous.is_some(), "{}: no previous turn", q.id),
            "keyword" | "paraphrase" | "multi-sentence" => assert!(q.previous.is_none(), "{}", q.id),
            other => panic!("{}: unknown kind {other}", q.id),
        }
    }
    for (kind, (tune, test)) in &halves {
        // Stratified by kind and source: each source's group differs by at most one.
        assert!(tune.abs_diff(*test) <= 9, "{kind}: tune {tune}, test {test}");
    }
    let paraphrases = questions.iter().filter(|q| q.kind == "paraphrase").count();
    assert!(paraphrases * 3 >= questions.len(), "{paraphrases} paraphrases");
    for kind in ["follow-up", "multi-sentence", "unanswerable"] {
        let n = questions.iter().filter(|q| q.kind == kind).count();
        assert!(n * 100 >= questions.len() * 8, "only {n} {kind} questions");
    }
}

#[test]
fn every_quote_is_in_a_chunk_of_its_gold_document() {
    let config = Config::defaults();
    let limits = Limits::from_config(&config.limits);
    let chunker = Chunker::new(ChunkSettings::from_config(&config.chunking)).expect("chunker");
    let questions = questions();
    let gold: BTreeSet<&str> = questions
        .iter()
        .filter_map(|q| q.documents.first().map(String::as_str))
        .collect();
    let mut chunks_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in gold {
        let bytes = std::fs::read(set_dir().join("documents").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc = ragpipe_ingest::extract(&bytes, &limits).unwrap_or_else(|e| panic!("extracting {name}: {e}"));
        let chunks = chunker
            .chunk(&doc)
            .iter()
            .map(|c| eval::normalise_whitespace(&c.content))
            .collect();
        chunks_of.insert(name, chunks);
    }
    let mut missing = Vec::new();
    for q in &questions {
        let (Some(gold), Some(quote)) = (q.documents.first(), q.quote.as_deref()) else {
            continue;
        };
        let quote = eval::normalise_whitespace(quote);
        if !chunks_of[gold.as_str()].iter().any(|c| c.contains(&quote)) {
            missing.push(format!("{} ({gold}): {quote:?}", q.id));
        }
    }
    assert!(
        missing.is_empty(),
        "quotes not found in a chunk:\n{}",
        missing.join("\n")
    );
}
