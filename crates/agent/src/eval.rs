//! Retrieval evaluation: a question set with gold documents (`fixtures/eval/questions.jsonl`),
//! run through a [`Retriever`], scored at document level: recall@k (a gold document's chunk is
//! among the top k) and MRR@10 (one over the rank of the first such chunk, 0 past 10).
//!
//! The metrics are pure functions; [`evaluate`] only runs the searches.

use crate::retrieve::{RetrieveError, Retriever, SearchMode, SearchRequest};
use ragpipe_core::UserId;
use serde::{Deserialize, Serialize};

/// Rank cut-off of the reciprocal rank.
pub const MRR_CUTOFF: usize = 10;

/// One question of the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalQuestion {
    /// Stable id (`q01`, ...), for reports.
    pub id: String,
    /// `keyword`, `paraphrase` or `multi-detail`.
    pub kind: String,
    /// The question as a user would type it.
    pub question: String,
    /// Filenames of the documents that answer it (usually one).
    pub documents: Vec<String>,
    /// A passage of the (first) gold document that answers it, verbatim.
    pub quote: String,
}

/// Parses a JSON Lines question set (blank lines and `//` comment lines are skipped).
pub fn parse_questions(jsonl: &str) -> Result<Vec<EvalQuestion>, String> {
    let mut out = Vec::new();
    for (n, line) in jsonl.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let q: EvalQuestion = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if q.documents.is_empty() {
            return Err(format!("line {}: {} has no gold document", n + 1, q.id));
        }
        if out.iter().any(|o: &EvalQuestion| o.id == q.id) {
            return Err(format!("line {}: duplicate id {}", n + 1, q.id));
        }
        out.push(q);
    }
    Ok(out)
}

/// Whitespace-normalised text, for checking that a quote occurs in a document (extraction
/// rewraps lines).
pub fn normalise_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based rank of the first hit whose filename is a gold document.
pub fn first_relevant_rank<'a>(hit_filenames: impl IntoIterator<Item = &'a str>, gold: &[String]) -> Option<usize> {
    hit_filenames
        .into_iter()
        .position(|f| gold.iter().any(|g| g == f))
        .map(|i| i + 1)
}

/// Fraction of questions whose first relevant rank is within `k`.
pub fn recall_at(ranks: &[Option<usize>], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / ranks.len() as f64
}

/// Mean of 1/rank over the questions, counting ranks past `cutoff` (and misses) as 0.
pub fn mrr(ranks: &[Option<usize>], cutoff: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    ranks
        .iter()
        .map(|r| match r {
            Some(r) if *r <= cutoff => 1.0 / *r as f64,
            _ => 0.0,
        })
        .sum::<f64>()
        / ranks.len() as f64
}

/// One question's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionResult {
    /// The question's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Rank of the first chunk of a gold document (within the top max(k, 10)).
    pub rank: Option<usize>,
    /// Filenames of the top hits, in order (at most k).
    pub top: Vec<String>,
}

/// A mode's figures over the question set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: SearchMode,
    /// The k of recall@k.
    pub k: usize,
    /// Questions asked.
    pub questions: usize,
    /// recall@k at document level.
    pub recall: f64,
    /// MRR@10 at document level.
    pub mrr: f64,
    /// recall@k per question kind, in kind order.
    pub recall_by_kind: Vec<(String, f64)>,
    /// Every question's outcome.
    pub results: Vec<QuestionResult>,
}

impl ModeReport {
    /// Figures from per-question results.
    pub fn from_results(mode: SearchMode, k: usize, results: Vec<QuestionResult>) -> ModeReport {
        let ranks: Vec<Option<usize>> = results.iter().map(|r| r.rank).collect();
        let mut kinds: Vec<String> = results.iter().map(|r| r.kind.clone()).collect();
        kinds.sort();
        kinds.dedup();
        let recall_by_kind = kinds
            .into_iter()
            .map(|kind| {
                let ranks: Vec<Option<usize>> = results.iter().filter(|r| r.kind == kind).map(|r| r.rank).collect();
                let recall = recall_at(&ranks, k);
                (kind, recall)
            })
            .collect();
        ModeReport {
            mode,
            k,
            questions: results.len(),
            recall: recall_at(&ranks, k),
            mrr: mrr(&ranks, MRR_CUTOFF),
            recall_by_kind,
            results,
        }
    }
}

/// Asks every question in `mode` as `user` and scores the answers.
pub async fn evaluate(
    retriever: &Retriever,
    user: UserId,
    questions: &[EvalQuestion],
    mode: SearchMode,
    k: usize,
) -> Result<ModeReport, RetrieveError> {
    let depth = k.max(MRR_CUTOFF);
    let mut results = Vec::with_capacity(questions.len());
    for q in questions {
        let request = SearchRequest {
            mode,
            k: depth as u32,
            ..SearchRequest::new(q.question.clone())
        };
        let hits = retriever.search(user, &request).await?;
        let rank = first_relevant_rank(hits.iter().map(|h| h.filename.as_str()), &q.documents);
        results.push(QuestionResult {
            id: q.id.clone(),
            kind: q.kind.clone(),
            rank,
            top: hits.iter().take(k).map(|h| h.filename.clone()).collect(),
        });
    }
    Ok(ModeReport::from_results(mode, k, results))
}

/// The recorded quality floor (`fixtures/eval/floor.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// Mode the floor applies to.
    pub mode: SearchMode,
    /// The k of recall@k.
    pub k: usize,
    /// Lowest acceptable recall@k.
    pub recall: f64,
    /// Where the figure comes from.
    #[serde(default)]
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_only_gold_documents() {
        let gold = vec!["b.md".to_owned(), "c.md".to_owned()];
        assert_eq!(first_relevant_rank(["a.md", "a.md", "c.md"], &gold), Some(3));
        assert_eq!(first_relevant_rank(["a.md"], &gold), None);
    }

    #[test]
    fn recall_and_mrr() {
        let ranks = [Some(1), Some(3), None, Some(12)];
        assert_eq!(recall_at(&ranks, 1), 0.25);
        assert_eq!(recall_at(&ranks, 5), 0.5);
        let expected = (1.0 + 1.0 / 3.0) / 4.0;
        assert!((mrr(&ranks, 10) - expected).abs() < 1e-12);
        assert_eq!(recall_at(&[], 5), 0.0);
        assert_eq!(mrr(&[], 10), 0.0);
    }

    #[test]
    fn reports_split_by_kind() {
        let r = |kind: &str, rank| QuestionResult {
            id: String::new(),
            kind: kind.into(),
            rank,
            top: vec![],
        };
        let report = ModeReport::from_results(
            SearchMode::Text,
            5,
            vec![r("keyword", Some(1)), r("keyword", None), r("paraphrase", Some(2))],
        );
        assert_eq!(report.questions, 3);
        assert_eq!(
            report.recall_by_kind,
            vec![("keyword".into(), 0.5), ("paraphrase".into(), 1.0)]
        );
    }

    #[test]
    fn question_sets_parse_and_reject_mistakes() {
        let line = r#"{"id": "q1", "kind": "keyword", "question": "q?", "documents": ["a.md"], "quote": "x"}"#;
        let parsed = parse_questions(&format!("// comment\n\n{line}\n")).expect("parse");
        assert_eq!(parsed.len(), 1);
        assert!(parse_questions(&format!("{line}\n{line}")).is_err(), "duplicate id");
        assert!(parse_questions(r#"{"id": "q", "kind": "k", "question": "q", "documents": [], "quote": ""}"#).is_err());
        assert_eq!(normalise_whitespace(" a\n b  c "), "a b c");
    }
}
