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

use crate::retrieve::{RetrieveError, Retriever, SearchHit, SearchMode, SearchRequest};
use ragpipe_core::UserId;
use ragpipe_store::conversations;
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

/// The first `n` questions of each kind, in their order.
pub fn first_per_kind(questions: &[EvalQuestion], n: usize) -> Vec<EvalQuestion> {
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    questions
        .iter()
        .filter(|q| {
            let count = taken.entry(q.kind.as_str()).or_default();
            *count += 1;
            *count <= n
        })
        .cloned()
        .collect()
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

/// 1-based rank of the first hit that is, or lists in `also_in`, a gold document: a passage
/// collapsed into a better-ranked copy still answers from the gold document, and the result says
/// so.
pub fn first_relevant_hit(hits: &[SearchHit], gold: &[String]) -> Option<usize> {
    hits.iter()
        .position(|h| {
            std::iter::once(h.filename.as_str())
                .chain(h.also_in.iter().map(|a| a.filename.as_str()))
                .any(|f| gold.iter().any(|g| g == f))
        })
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
        let rank = first_relevant_hit(&hits, &q.documents);
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

// ---------------------------------------------------------------------------------------------
// Answer evaluation (`ragpipe eval --answers`): every question asked through the agent, the
// answer scored against the question's gold documents and quote.

/// Words that carry no content, per language of the sets (en, de, fr). A quote's content words
/// are its words minus the union of the three lists: the sets' languages share few stop words
/// with each other's content words, and a union needs no language detection.
const STOP_WORDS: &[&str] = &[
    // en
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "being", "but", "by",
    "can", "could", "did", "do", "does", "each", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i",
    "if", "in", "into", "is", "it", "its", "may", "more", "most", "must", "no", "not", "of", "on", "one", "only", "or",
    "other", "our", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "to", "up", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "you", "your", // de
    "aber", "alle", "als", "am", "an", "auch", "auf", "aus", "bei", "bis", "das", "dass", "dem", "den", "der", "des",
    "die", "dies", "diese", "dieser", "dieses", "durch", "ein", "eine", "einem", "einen", "einer", "eines", "er", "es",
    "für", "hat", "ich", "ihr", "im", "in", "ist", "kann", "mit", "nach", "nicht", "noch", "nur", "ob", "oder", "sich",
    "sie", "sind", "so", "um", "und", "von", "vor", "wenn", "werden", "wie", "wird", "zu", "zum", "zur",
    // fr
    "au", "aux", "avec", "ce", "ces", "cette", "dans", "de", "des", "du", "elle", "en", "est", "et", "il", "ils", "la",
    "le", "les", "leur", "mais", "ne", "ou", "par", "pas", "peut", "plus", "pour", "qu", "que", "qui", "sa", "se",
    "ses", "si", "son", "sont", "sur", "un", "une",
];

/// Whether `word` (lowercase) is a stop word of any of the sets' languages.
pub fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.contains(&word)
}

/// The content words of `text`: lowercase alphanumeric words (split at anything else), stop
/// words of en/de/fr removed, each once, in order of first appearance.
pub fn content_words(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !is_stop_word(w))
        .filter(|w| seen.insert(w.clone()))
        .collect()
}

/// Answer support: the share of `quote`'s content words that occur (as words) in `answer`;
/// 0 when the quote has none.
pub fn answer_support(quote: &str, answer: &str) -> f64 {
    let wanted = content_words(quote);
    if wanted.is_empty() {
        return 0.0;
    }
    let have: std::collections::HashSet<String> = content_words(answer).into_iter().collect();
    wanted.iter().filter(|w| have.contains(*w)).count() as f64 / wanted.len() as f64
}

/// Phrasings of "the documents do not cover this", lowercase: the offline responder's own
/// refusals (`ragpipe_llm::NOT_COVERED` and the notes before it) and what chat models following
/// `prompts/system.md` write, in the sets' languages.
const REFUSAL_PHRASES: &[&str] = &[
    // The offline responder.
    "the documents do not cover this",
    "no passages were retrieved",
    "none of the retrieved passages matches",
    // Chat models, en.
    "documents do not cover",
    "documents don't cover",
    "do not answer",
    "does not answer",
    "don't answer",
    "doesn't answer",
    "do not contain",
    "does not contain",
    "don't contain",
    "doesn't contain",
    "do not mention",
    "does not mention",
    "don't mention",
    "doesn't mention",
    "do not provide",
    "does not provide",
    "don't provide",
    "doesn't provide",
    "do not say",
    "does not say",
    "do not include",
    "does not include",
    "not covered",
    "not mentioned",
    "no information",
    "cannot find",
    "can't find",
    "could not find",
    "couldn't find",
    "unable to find",
    "cannot answer",
    "can't answer",
    "not able to answer",
    // de
    "nicht beantwortet",
    "beantworten die frage nicht",
    "enthalten keine",
    "keine informationen",
    "keine angaben",
    "nicht abgedeckt",
    "nicht erwähnt",
    // fr
    "ne couvrent pas",
    "ne répondent pas",
    "ne contiennent pas",
    "ne mentionnent pas",
    "aucune information",
    "pas d'information",
];

/// Whether `answer` says that the documents do not cover the question (see
/// [`REFUSAL_PHRASES`]). Apostrophes are normalised, so "don’t" counts as "don't".
pub fn is_refusal(answer: &str) -> bool {
    let text = answer.to_lowercase().replace(['’', '‘'], "'");
    let text = crate::eval::normalise_whitespace(&text);
    REFUSAL_PHRASES.iter().any(|p| text.contains(p))
}

/// The `[n]` markers of `answer` (each number once) that name none of the sources in the
/// prompt, whose numbers are `in_prompt`.
pub fn invalid_citations(answer: &str, in_prompt: &[u32]) -> Vec<u32> {
    crate::sources::cited_numbers(answer)
        .into_iter()
        .filter(|n| !in_prompt.contains(n))
        .collect()
}

/// One question's answer, scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerResult {
    /// The question's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Whether the corpus answers it.
    pub answerable: bool,
    /// How the answer ended (`complete`, `failed`, ...).
    pub status: String,
    /// Distinct `[n]` markers in the answer.
    pub markers: usize,
    /// Markers naming no source of the prompt.
    pub invalid_markers: Vec<u32>,
    /// Filenames of the cited chunks' documents, one per cited source.
    pub cited: Vec<String>,
    /// Cited sources whose document is a gold document.
    pub cited_gold: usize,
    /// Whether the answer says the documents do not cover the question.
    pub refused: bool,
    /// Share of the gold quote's content words in the answer (answerable questions).
    pub support: Option<f64>,
    /// The answer's text.
    pub answer: String,
}

impl AnswerResult {
    /// Scores `answer` to `question`, given the numbers of the sources in its prompt and the
    /// filenames of the sources it cites (`cited`, one per valid citation).
    pub fn score(
        question: &EvalQuestion,
        status: &str,
        answer: &str,
        in_prompt: &[u32],
        cited: Vec<String>,
    ) -> AnswerResult {
        let answerable = !question.is_unanswerable();
        let cited_gold = cited.iter().filter(|f| question.documents.contains(f)).count();
        AnswerResult {
            id: question.id.clone(),
            kind: question.kind.clone(),
            answerable,
            status: status.to_owned(),
            markers: crate::sources::cited_numbers(answer).len(),
            invalid_markers: invalid_citations(answer, in_prompt),
            cited,
            cited_gold,
            refused: is_refusal(answer),
            support: question
                .quote
                .as_deref()
                .filter(|_| answerable)
                .map(|q| answer_support(q, answer)),
            answer: answer.to_owned(),
        }
    }
}

/// Answer figures over a group of questions (all, or one kind).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerFigures {
    /// `all`, or the kind.
    pub kind: String,
    /// Questions asked.
    pub questions: usize,
    /// Answerable questions among them.
    pub answerable: usize,
    /// Share of `[n]` markers naming a source in the prompt (1 when there are none).
    pub citation_validity: f64,
    /// Markers counted for validity.
    pub markers: usize,
    /// Share of the cited sources of answerable questions whose document is a gold document
    /// (None when nothing was cited).
    pub citation_precision: Option<f64>,
    /// Cited sources counted for precision.
    pub cited: usize,
    /// Mean answer support over the answerable questions (None when there are none).
    pub answer_support: Option<f64>,
    /// Share of the unanswerable questions whose answer refuses (None when there are none).
    pub refusal_rate: Option<f64>,
    /// Share of the answerable questions whose answer refuses (None when there are none).
    pub false_refusal_rate: Option<f64>,
}

impl AnswerFigures {
    /// The figures of `results`, labelled `kind`.
    pub fn of(kind: &str, results: &[&AnswerResult]) -> AnswerFigures {
        let share = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
        let answerable: Vec<&&AnswerResult> = results.iter().filter(|r| r.answerable).collect();
        let unanswerable = results.len() - answerable.len();
        let markers: usize = results.iter().map(|r| r.markers).sum();
        let invalid: usize = results.iter().map(|r| r.invalid_markers.len()).sum();
        let cited: usize = answerable.iter().map(|r| r.cited.len()).sum();
        let cited_gold: usize = answerable.iter().map(|r| r.cited_gold).sum();
        let supports: Vec<f64> = answerable.iter().filter_map(|r| r.support).collect();
        AnswerFigures {
            kind: kind.to_owned(),
            questions: results.len(),
            answerable: answerable.len(),
            citation_validity: share(markers - invalid, markers).unwrap_or(1.0),
            markers,
            citation_precision: share(cited_gold, cited),
            cited,
            answer_support: (!supports.is_empty()).then(|| supports.iter().sum::<f64>() / supports.len() as f64),
            refusal_rate: share(
                results.iter().filter(|r| !r.answerable && r.refused).count(),
                unanswerable,
            ),
            false_refusal_rate: share(answerable.iter().filter(|r| r.refused).count(), answerable.len()),
        }
    }
}

/// The answer evaluation of a question set: figures overall and per kind, and every answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerReport {
    /// The chat model that answered (`extractive` offline).
    pub model: String,
    /// Figures over all questions.
    pub overall: AnswerFigures,
    /// Figures per question kind, in kind order.
    pub by_kind: Vec<AnswerFigures>,
    /// Every answer, scored.
    pub results: Vec<AnswerResult>,
}

impl AnswerReport {
    /// The report of `results`, answered by `model`.
    pub fn from_results(model: &str, results: Vec<AnswerResult>) -> AnswerReport {
        let mut kinds: Vec<String> = results.iter().map(|r| r.kind.clone()).collect();
        kinds.sort();
        kinds.dedup();
        let by_kind = kinds
            .iter()
            .map(|k| AnswerFigures::of(k, &results.iter().filter(|r| &r.kind == k).collect::<Vec<_>>()))
            .collect();
        AnswerReport {
            model: model.to_owned(),
            overall: AnswerFigures::of("all", &results.iter().collect::<Vec<_>>()),
            by_kind,
            results,
        }
    }
}

/// Why an answer evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum AnswerEvalError {
    /// A database step failed.
    #[error("{doing}: {source}")]
    Store {
        /// What was being done.
        doing: String,
        /// The error.
        source: ragpipe_store::StoreError,
    },
    /// Answering failed in a way the agent returns rather than records.
    #[error("answering {id}: {source}")]
    Answer {
        /// The question.
        id: String,
        /// The error.
        source: crate::answer::AnswerError,
    },
}

/// Asks every question of `questions` as `user` through the agent (a conversation per
/// question, [`ragpipe_store::conversations::ask`], then [`crate::answer::answer`]), reads the
/// answer, its citations and its prompt's sources back from the database, and scores them. A
/// follow-up is asked after its `previous` question, in the same conversation.
pub async fn evaluate_answers(
    ctx: &crate::answer::AnswerContext,
    user: UserId,
    questions: &[EvalQuestion],
) -> Result<AnswerReport, AnswerEvalError> {
    let mut results = Vec::with_capacity(questions.len());
    for q in questions {
        let store_err = |doing: &str| {
            let doing = format!("{doing} ({})", q.id);
            move |source| AnswerEvalError::Store { doing, source }
        };
        let store = ctx.store();
        let mut tx = store.user_tx(user).await.map_err(store_err("opening a transaction"))?;
        let conversation = conversations::create(&mut tx, Some(&format!("eval {}", q.id)))
            .await
            .map_err(store_err("creating a conversation"))?;
        tx.commit().await.map_err(store_err("committing the conversation"))?;
        let conversation = ragpipe_core::ConversationId(conversation.id);
        if let Some(previous) = q.previous.as_deref() {
            ask_one(ctx, user, conversation, previous, &q.id).await?;
        }
        let asked = ask_one(ctx, user, conversation, &q.question, &q.id).await?;
        let mut tx = store.user_tx(user).await.map_err(store_err("opening a transaction"))?;
        let message = conversations::message(&mut tx, ragpipe_core::MessageId(asked.assistant_message.id))
            .await
            .map_err(store_err("reading the answer"))?;
        let request = conversations::request(&mut tx, asked.request_id)
            .await
            .map_err(store_err("reading the agent request"))?;
        tx.rollback().await.map_err(store_err("ending the read"))?;
        let context: Vec<crate::sources::ContextEntry> = request
            .results
            .get("context")
            .cloned()
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let citations: Vec<crate::sources::Citation> =
            serde_json::from_value(message.citations.clone()).unwrap_or_default();
        let in_prompt: Vec<u32> = context.iter().map(|c| c.n).collect();
        results.push(AnswerResult::score(
            q,
            &message.status,
            &message.content,
            &in_prompt,
            citations
                .into_iter()
                .map(|c| cited_document(&c, &context, &q.documents))
                .collect(),
        ));
    }
    Ok(AnswerReport::from_results(ctx.chat().model(), results))
}

/// The document a citation is counted for: a gold document when the cited source is one or
/// lists one in its `also_in` (the same passage), else the cited source's own.
fn cited_document(
    citation: &crate::sources::Citation,
    context: &[crate::sources::ContextEntry],
    gold: &[String],
) -> String {
    context
        .iter()
        .find(|e| e.n == citation.n)
        .into_iter()
        .flat_map(|e| e.also_in.iter().map(|a| &a.filename))
        .find(|f| gold.contains(f) && !gold.contains(&citation.filename))
        .cloned()
        .unwrap_or_else(|| citation.filename.clone())
}

/// Asks `text` in `conversation` and answers it in place (no queue: the job `ask` queued finds
/// the request ended and skips it).
async fn ask_one(
    ctx: &crate::answer::AnswerContext,
    user: UserId,
    conversation: ragpipe_core::ConversationId,
    text: &str,
    id: &str,
) -> Result<conversations::Asked, AnswerEvalError> {
    let store_err = |doing: &str| {
        let doing = format!("{doing} ({id})");
        move |source| AnswerEvalError::Store { doing, source }
    };
    let config = ctx.config();
    let settings = conversations::AskSettings {
        model: ctx.chat().model(),
        retrieval_mode: None,
        k: None,
        max_attempts: config.worker.max_attempts,
    };
    let mut tx = ctx
        .store()
        .user_tx(user)
        .await
        .map_err(store_err("opening a transaction"))?;
    let asked = conversations::ask(&mut tx, conversation, text, &settings)
        .await
        .map_err(store_err("asking"))?;
    tx.commit().await.map_err(store_err("committing the question"))?;
    let job = conversations::AgentJob {
        user_id: user,
        request_id: asked.request_id,
    };
    crate::answer::answer(ctx, job, true)
        .await
        .map_err(|source| AnswerEvalError::Answer {
            id: id.to_owned(),
            source,
        })?;
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_per_kind_keeps_the_order_and_every_kind() {
        let q = |id: &str, kind: &str| EvalQuestion {
            id: id.into(),
            kind: kind.into(),
            question: "?".into(),
            documents: vec![],
            quote: None,
            split: None,
            previous: None,
        };
        let set = [
            q("a", "keyword"),
            q("b", "paraphrase"),
            q("c", "keyword"),
            q("d", "keyword"),
            q("e", "paraphrase"),
        ];
        let ids: Vec<String> = first_per_kind(&set, 2).into_iter().map(|q| q.id).collect();
        assert_eq!(ids, ["a", "b", "c", "e"]);
        assert!(first_per_kind(&set, 0).is_empty());
    }

    #[test]
    fn ranks_count_only_gold_documents() {
        let gold = vec!["b.md".to_owned(), "c.md".to_owned()];
        assert_eq!(first_relevant_rank(["a.md", "a.md", "c.md"], &gold), Some(3));
        assert_eq!(first_relevant_rank(["a.md"], &gold), None);
    }

    fn hit(filename: &str, also_in: &[&str]) -> SearchHit {
        SearchHit {
            chunk_id: 1,
            document_id: uuid::Uuid::nil(),
            filename: filename.into(),
            chunk_index: 0,
            page_first: None,
            page_last: None,
            heading_path: Vec::new(),
            score: 1.0,
            vector_rank: None,
            text_rank: None,
            vector_similarity: None,
            text_score: None,
            content: String::new(),
            highlight: None,
            also_in: also_in
                .iter()
                .map(|f| ragpipe_store::search::AlsoIn {
                    document_id: uuid::Uuid::nil(),
                    filename: (*f).into(),
                    chunk_id: 2,
                })
                .collect(),
        }
    }

    #[test]
    fn a_gold_document_collapsed_into_a_better_copy_counts_where_the_copy_ranks() {
        let gold = vec!["b.md".to_owned()];
        let hits = [hit("a.md", &[]), hit("c.pdf", &["x.md", "b.md"]), hit("b.md", &[])];
        assert_eq!(first_relevant_hit(&hits, &gold), Some(2));
        assert_eq!(first_relevant_hit(&hits[..1], &gold), None);
    }

    #[test]
    fn a_citation_of_a_copy_of_the_gold_passage_counts_as_gold() {
        use crate::sources::{AlsoIn, Citation, ContextEntry};
        let entry = |n: u32, filename: &str, also: &[&str]| ContextEntry {
            n,
            chunk_id: i64::from(n),
            document_id: uuid::Uuid::nil(),
            filename: filename.into(),
            pages: None,
            heading_path: Vec::new(),
            score: 1.0,
            also_in: also
                .iter()
                .map(|f| AlsoIn {
                    document_id: uuid::Uuid::nil(),
                    filename: (*f).into(),
                })
                .collect(),
        };
        let context = [entry(1, "copy.pdf", &["gold.md"]), entry(2, "other.md", &[])];
        let citation = |n: u32, filename: &str| Citation {
            n,
            chunk_id: i64::from(n),
            document_id: uuid::Uuid::nil(),
            filename: filename.into(),
            pages: None,
        };
        let gold = vec!["gold.md".to_owned()];
        assert_eq!(cited_document(&citation(1, "copy.pdf"), &context, &gold), "gold.md");
        assert_eq!(cited_document(&citation(2, "other.md"), &context, &gold), "other.md");
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

    #[test]
    fn content_words_drop_stop_words_of_each_language() {
        assert_eq!(content_words("The cache is flushed, the CACHE!"), ["cache", "flushed"]);
        assert_eq!(content_words("Die Datei wird gelöscht"), ["datei", "gelöscht"]);
        assert_eq!(content_words("Le fichier est supprimé"), ["fichier", "supprimé"]);
        assert!(content_words("of the and").is_empty());
    }

    #[test]
    fn support_is_the_share_of_quote_words_in_the_answer() {
        let quote = "The default timeout is 30 seconds.";
        assert_eq!(answer_support(quote, "Timeout: 30 seconds by default [1]"), 1.0);
        assert_eq!(answer_support(quote, "The default is 30 [1]."), 0.5);
        assert_eq!(answer_support(quote, "The documents do not cover this."), 0.0);
        assert_eq!(answer_support("the of", "anything"), 0.0);
    }

    #[test]
    fn refusals_are_recognised_in_their_usual_phrasings() {
        for refusal in [
            "No chat model is configured (set RAGPIPE_CHAT_BASE_URL to use one). The documents do not cover this.",
            "No chat model is configured, and no passages were retrieved for this question.",
            "The provided documents don’t mention a maximum size.",
            "Die Dokumente enthalten keine Angaben dazu.",
            "Les documents ne couvrent pas cette question.",
        ] {
            assert!(is_refusal(refusal), "{refusal}");
        }
        assert!(!is_refusal("Set the timeout with --timeout [1]."));
    }

    #[test]
    fn invalid_citations_name_sources_not_in_the_prompt() {
        assert_eq!(invalid_citations("A [1]. B [4][2]. C [1-3]", &[1, 2, 3]), vec![4]);
        assert!(invalid_citations("no markers", &[]).is_empty());
    }

    #[test]
    fn answer_figures_split_answerable_and_unanswerable() {
        let question = |id: &str, kind: &str, gold: &[&str]| EvalQuestion {
            id: id.into(),
            kind: kind.into(),
            question: "q?".into(),
            documents: gold.iter().map(|g| (*g).to_owned()).collect(),
            quote: (!gold.is_empty()).then(|| "alpha beta gamma delta".to_owned()),
            split: None,
            previous: None,
        };
        let results = vec![
            // Cites the gold document and a wrong one, half the quote's words.
            AnswerResult::score(
                &question("a", "keyword", &["g.md"]),
                "complete",
                "alpha beta [1][2]",
                &[1, 2],
                vec!["g.md".into(), "x.md".into()],
            ),
            // A false refusal, with an invalid marker.
            AnswerResult::score(
                &question("b", "keyword", &["g.md"]),
                "complete",
                "The documents do not cover this [7].",
                &[1],
                vec![],
            ),
            // A right refusal.
            AnswerResult::score(
                &question("c", UNANSWERABLE, &[]),
                "complete",
                "The documents do not cover this.",
                &[1],
                vec![],
            ),
        ];
        let report = AnswerReport::from_results("extractive", results);
        let all = &report.overall;
        assert_eq!((all.questions, all.answerable, all.markers), (3, 2, 3));
        assert!((all.citation_validity - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(all.citation_precision, Some(0.5));
        assert_eq!(all.answer_support, Some(0.25));
        assert_eq!(all.refusal_rate, Some(1.0));
        assert_eq!(all.false_refusal_rate, Some(0.5));
        assert_eq!(
            report.by_kind.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>(),
            ["keyword", UNANSWERABLE]
        );
        assert_eq!(report.by_kind[1].answer_support, None);
        assert_eq!(report.by_kind[0].refusal_rate, None);
    }
}
