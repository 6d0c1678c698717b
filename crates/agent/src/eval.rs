//! Retrieval evaluation: a question set with gold documents (`fixtures/eval/questions.jsonl`,
//! `fixtures/eval-unseen/questions.jsonl`), run through a [`Retriever`], scored at document
//! level: recall@k (a gold document's chunk is among the top k) and MRR@10 (one over the rank
//! of the first such chunk, 0 past 10).
//!
//! A set may be split into a tuning half and a test half (`split` on each question); a question
//! without a split belongs to both. Unanswerable questions (kind `unanswerable`, no gold
//! document) are counted but take no part in recall and MRR.
//!
//! The metrics are pure functions; [`evaluate`] only runs the searches.

use crate::retrieve::{RetrieveError, Retriever, SearchMode, SearchRequest};
use ragpipe_core::UserId;
use serde::{Deserialize, Serialize};

/// Rank cut-off of the reciprocal rank.
pub const MRR_CUTOFF: usize = 10;

/// The kind of a question that the corpus does not answer.
pub const UNANSWERABLE: &str = "unanswerable";
/// The kind of a question that needs the previous turn.
pub const FOLLOW_UP: &str = "follow-up";

/// One question of the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalQuestion {
    /// Stable id (`q01`, `apache-007`, ...), for reports.
    pub id: String,
    /// `keyword`, `paraphrase`, `multi-detail`, `multi-sentence`, `follow-up` or
    /// `unanswerable`.
    pub kind: String,
    /// The question as a user would type it.
    pub question: String,
    /// Filenames of the documents that answer it (usually one; none when unanswerable).
    pub documents: Vec<String>,
    /// A passage of the (first) gold document that answers it, verbatim; none when
    /// unanswerable.
    pub quote: Option<String>,
    /// `tune` or `test`; none means the question is in every split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// For a follow-up: the previous turn's question, without which this one is ambiguous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl EvalQuestion {
    /// Whether the corpus holds no answer (so retrieval has nothing to find).
    pub fn is_unanswerable(&self) -> bool {
        self.kind == UNANSWERABLE
    }

    /// Whether the question belongs to `split` (a question without a split is in all).
    pub fn in_split(&self, split: Split) -> bool {
        match (split, self.split) {
            (Split::All, _) | (_, None) => true,
            (wanted, Some(own)) => wanted == own,
        }
    }
}

/// A half of a split question set, or all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The half that defaults are chosen on.
    Tune,
    /// The held-out half that figures are reported on.
    Test,
    /// Both halves.
    All,
}

impl Split {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Tune => "tune",
            Split::Test => "test",
            Split::All => "all",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Split, String> {
        match s {
            "tune" => Ok(Split::Tune),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            other => Err(format!("unknown split {other:?} (expected tune, test or all)")),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The questions of `split`, in set order.
pub fn select_split(questions: &[EvalQuestion], split: Split) -> Vec<EvalQuestion> {
    questions.iter().filter(|q| q.in_split(split)).cloned().collect()
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
        if q.is_unanswerable() {
            if !q.documents.is_empty() || q.quote.is_some() {
                return Err(format!(
                    "line {}: {} is unanswerable but names a gold document or quote",
                    n + 1,
                    q.id
                ));
            }
        } else if q.documents.is_empty() {
            return Err(format!("line {}: {} has no gold document", n + 1, q.id));
        } else if q.quote.as_deref().is_none_or(|quote| quote.trim().is_empty()) {
            return Err(format!("line {}: {} has no quote", n + 1, q.id));
        }
        if q.split == Some(Split::All) {
            return Err(format!("line {}: {}: a question's split is tune or test", n + 1, q.id));
        }
        if q.kind == FOLLOW_UP && q.previous.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return Err(format!(
                "line {}: {} is a follow-up without a previous question",
                n + 1,
                q.id
            ));
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

/// One question kind's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    /// The kind.
    pub kind: String,
    /// Questions of that kind asked.
    pub questions: usize,
    /// recall@k at document level.
    pub recall: f64,
    /// MRR@10 at document level.
    pub mrr: f64,
}

/// A mode's figures over the question set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: SearchMode,
    /// The k of recall@k.
    pub k: usize,
    /// Questions asked (answerable ones only).
    pub questions: usize,
    /// Unanswerable questions in the set, not asked: retrieval has nothing to find for them.
    pub unanswerable: usize,
    /// recall@k at document level.
    pub recall: f64,
    /// MRR@10 at document level.
    pub mrr: f64,
    /// recall@k per question kind, in kind order.
    pub recall_by_kind: Vec<(String, f64)>,
    /// recall@k and MRR@10 per question kind, in kind order.
    pub by_kind: Vec<KindReport>,
    /// Every question's outcome.
    pub results: Vec<QuestionResult>,
}

impl ModeReport {
    /// Figures from per-question results (of answerable questions).
    pub fn from_results(mode: SearchMode, k: usize, results: Vec<QuestionResult>) -> ModeReport {
        let ranks: Vec<Option<usize>> = results.iter().map(|r| r.rank).collect();
        let mut kinds: Vec<String> = results.iter().map(|r| r.kind.clone()).collect();
        kinds.sort();
        kinds.dedup();
        let by_kind: Vec<KindReport> = kinds
            .into_iter()
            .map(|kind| {
                let ranks: Vec<Option<usize>> = results.iter().filter(|r| r.kind == kind).map(|r| r.rank).collect();
                KindReport {
                    kind,
                    questions: ranks.len(),
                    recall: recall_at(&ranks, k),
                    mrr: mrr(&ranks, MRR_CUTOFF),
                }
            })
            .collect();
        ModeReport {
            mode,
            k,
            questions: results.len(),
            unanswerable: 0,
            recall: recall_at(&ranks, k),
            mrr: mrr(&ranks, MRR_CUTOFF),
            recall_by_kind: by_kind.iter().map(|r| (r.kind.clone(), r.recall)).collect(),
            by_kind,
            results,
        }
    }
}

/// Asks every answerable question in `mode` as `user` and scores the answers. A follow-up is
/// asked alone, without its previous turn (which is what a retriever that ignores the
/// conversation sees).
pub async fn evaluate(
    retriever: &Retriever,
    user: UserId,
    questions: &[EvalQuestion],
    mode: SearchMode,
    k: usize,
) -> Result<ModeReport, RetrieveError> {
    let depth = k.max(MRR_CUTOFF);
    let mut results = Vec::with_capacity(questions.len());
    let mut unanswerable = 0;
    for q in questions {
        if q.is_unanswerable() {
            unanswerable += 1;
            continue;
        }
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
    Ok(ModeReport {
        unanswerable,
        ..ModeReport::from_results(mode, k, results)
    })
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
        assert!(
            parse_questions(r#"{"id": "q", "kind": "k", "question": "q", "documents": ["a"], "quote": null}"#).is_err()
        );
        assert_eq!(normalise_whitespace(" a\n b  c "), "a b c");
    }

    #[test]
    fn split_sets_load_their_new_fields() {
        let text = [
            r#"{"id": "a", "kind": "paraphrase", "question": "q?", "documents": ["a.md"], "quote": "x", "split": "tune"}"#,
            r#"{"id": "b", "kind": "follow-up", "question": "and its default?", "documents": ["a.md"], "quote": "x", "split": "test", "previous": "What does --foo do?"}"#,
            r#"{"id": "c", "kind": "unanswerable", "question": "q?", "documents": [], "quote": null, "split": "test"}"#,
        ]
        .join("\n");
        let parsed = parse_questions(&text).expect("parse");
        assert_eq!(parsed[0].split, Some(Split::Tune));
        assert_eq!(parsed[1].previous.as_deref(), Some("What does --foo do?"));
        assert!(parsed[2].is_unanswerable() && parsed[2].quote.is_none());
        // The old format (no split, no previous) still loads.
        let old = r#"{"id": "q1", "kind": "keyword", "question": "q?", "documents": ["a.md"], "quote": "x"}"#;
        let parsed_old = parse_questions(old).expect("parse");
        assert_eq!((parsed_old[0].split, parsed_old[0].previous.as_deref()), (None, None));
    }

    #[test]
    fn split_sets_reject_inconsistent_questions() {
        for bad in [
            // An unanswerable question with a gold document or a quote.
            r#"{"id": "c", "kind": "unanswerable", "question": "q?", "documents": ["a.md"], "quote": null}"#,
            r#"{"id": "c", "kind": "unanswerable", "question": "q?", "documents": [], "quote": "x"}"#,
            // A follow-up without its previous turn.
            r#"{"id": "b", "kind": "follow-up", "question": "and?", "documents": ["a.md"], "quote": "x"}"#,
            // `all` is a filter, not a half.
            r#"{"id": "a", "kind": "keyword", "question": "q?", "documents": ["a.md"], "quote": "x", "split": "all"}"#,
            r#"{"id": "a", "kind": "keyword", "question": "q?", "documents": ["a.md"], "quote": "x", "split": "dev"}"#,
        ] {
            assert!(parse_questions(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn the_split_filter_keeps_unsplit_questions_in_every_half() {
        let q = |id: &str, split| EvalQuestion {
            id: id.into(),
            kind: "keyword".into(),
            question: "q?".into(),
            documents: vec!["a.md".into()],
            quote: Some("x".into()),
            split,
            previous: None,
        };
        let set = vec![
            q("tune", Some(Split::Tune)),
            q("test", Some(Split::Test)),
            q("both", None),
        ];
        let ids = |split| select_split(&set, split).into_iter().map(|q| q.id).collect::<Vec<_>>();
        assert_eq!(ids(Split::Tune), ["tune", "both"]);
        assert_eq!(ids(Split::Test), ["test", "both"]);
        assert_eq!(ids(Split::All), ["tune", "test", "both"]);
        assert_eq!("test".parse::<Split>(), Ok(Split::Test));
        assert!("dev".parse::<Split>().is_err());
    }

    #[test]
    fn kind_reports_carry_recall_and_mrr() {
        let r = |kind: &str, rank| QuestionResult {
            id: String::new(),
            kind: kind.into(),
            rank,
            top: vec![],
        };
        let report = ModeReport::from_results(
            SearchMode::Hybrid,
            5,
            vec![r("follow-up", Some(2)), r("follow-up", None), r("keyword", Some(1))],
        );
        let follow_up = &report.by_kind[0];
        assert_eq!((follow_up.kind.as_str(), follow_up.questions), ("follow-up", 2));
        assert_eq!((follow_up.recall, follow_up.mrr), (0.5, 0.25));
        assert_eq!(report.by_kind[1].mrr, 1.0);
    }
}
