//! The offline responder: with no chat model configured, answer with the sentences of the
//! retrieved sources that best match the question, each with its citation marker, and say
//! plainly that no model wrote it. Pure functions; [`crate::ChatModel`] streams the result.

use crate::chat::SourcePassage;
use crate::hashed::{is_stopword, stem};
use std::collections::{HashMap, HashSet};

/// Most sentences quoted.
const MAX_SENTENCES: usize = 3;
/// Longest sentence quoted whole, in words; longer ones are cut with an ellipsis.
const MAX_SENTENCE_WORDS: usize = 60;
/// Shortest sentence worth quoting, in words (headings and list stubs are shorter).
const MIN_SENTENCE_WORDS: usize = 4;

/// How sentences are chosen. The defaults were chosen on the tuning half of
/// `fixtures/eval-unseen` (`ragpipe eval --answers --split tune`; BENCHMARKS.md, "Answer
/// quality").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selection {
    /// Least share of the question's term weight that the best sentence must match; below it
    /// the answer says the documents do not cover the question.
    pub min_coverage: f64,
    /// A further sentence is quoted only when its score is at least this share of the best's.
    pub keep_ratio: f64,
    /// Weight of the previous question's terms (a follow-up leans on them), relative to the
    /// question's own.
    pub previous_weight: f64,
    /// Score lost per rank of the source (retrieval order is evidence too).
    pub rank_decay: f64,
}

impl Selection {
    /// The tuned defaults: on the tuning half, the lowest `min_coverage` whose refusal rate on
    /// unanswerable questions reaches 0.8, then the best citation precision + answer support
    /// (grid in `tests/tests/answer_eval.rs`, `sweep_extractive_selection`).
    pub const DEFAULT: Selection = Selection {
        min_coverage: 0.4,
        keep_ratio: 0.5,
        previous_weight: 0.6,
        rank_decay: 0.1,
    };
}

impl Default for Selection {
    fn default() -> Selection {
        Selection::DEFAULT
    }
}

/// The opening every offline answer starts with.
pub const NO_MODEL_NOTICE: &str = "No chat model is configured (set RAGPIPE_CHAT_BASE_URL to use one)";

/// What the offline responder says when the sources do not answer the question.
pub const NOT_COVERED: &str = "The documents do not cover this.";

/// The extractive answer to `question` from `sources` (`previous`: the conversation's previous
/// question, if any).
pub(crate) fn answer(question: &str, previous: Option<&str>, sources: &[SourcePassage]) -> String {
    answer_with(question, previous, sources, &Selection::DEFAULT)
}

/// [`answer`] with explicit selection parameters.
pub fn answer_with(question: &str, previous: Option<&str>, sources: &[SourcePassage], selection: &Selection) -> String {
    if sources.is_empty() {
        return format!("{NO_MODEL_NOTICE}, and no passages were retrieved for this question. {NOT_COVERED}");
    }
    let picks = best_sentences(question, previous, sources, MAX_SENTENCES, selection);
    if picks.is_empty() {
        return format!(
            "{NO_MODEL_NOTICE}, and none of the retrieved passages matches the question closely enough. {NOT_COVERED}"
        );
    }
    let mut out = format!("{NO_MODEL_NOTICE}, so this answer quotes the passages that best match the question:\n\n");
    for (sentence, number) in picks {
        let sentence = defuse_markers(&sentence);
        out.push_str(&format!("- {sentence} [{number}]\n"));
    }
    out
}

/// `sentence` with its own bracketed numbers (a manual's `[9]` reference) in parentheses, so
/// that the only `[n]` markers of an answer are the responder's citations of its sources.
fn defuse_markers(sentence: &str) -> String {
    let mut out = String::with_capacity(sentence.len());
    let mut rest = sentence;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close)
                if close > 0
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, ',' | ';' | '-' | '–' | ' ')) =>
            {
                out.push('(');
                out.push_str(&after[..close]);
                out.push(')');
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The question of an offline prompt: the last user message holds the laid-out sources, then
/// the question (`prompts/question.md`), so the question is what follows the last source's
/// text, less a leading label such as `Question:`. Without sources (or when the sources are not
/// found in it), the whole message.
pub(crate) fn question_of<'a>(message: &'a str, sources: &[SourcePassage]) -> &'a str {
    let after = sources
        .iter()
        .filter(|s| !s.text.trim().is_empty())
        .filter_map(|s| message.rfind(s.text.trim()).map(|at| at + s.text.trim().len()))
        .max()
        .map_or(message, |end| &message[end..]);
    let trimmed = after.trim();
    if let Some((label, rest)) = trimmed.split_once(':')
        && !label.is_empty()
        && label.len() <= 12
        && label.chars().all(char::is_alphabetic)
        && !rest.trim().is_empty()
    {
        return rest.trim();
    }
    trimmed
}

/// Up to `k` `(sentence, source number)` pairs, best first, chosen by the question: each
/// sentence of the sources is scored by the question's terms it contains, each weighted by its
/// rarity across the sources (IDF), as a share of the question's whole weight, so that a term
/// no source has counts against every sentence. The best sentence must reach
/// `min_coverage`; the others must come within `keep_ratio` of it.
pub(crate) fn best_sentences(
    question: &str,
    previous: Option<&str>,
    sources: &[SourcePassage],
    k: usize,
    selection: &Selection,
) -> Vec<(String, u32)> {
    let mut weights: HashMap<String, f64> = HashMap::new();
    for t in terms(question) {
        weights.insert(t, 1.0);
    }
    if let Some(previous) = previous {
        for t in terms(previous) {
            weights.entry(t).or_insert(selection.previous_weight);
        }
    }
    if weights.is_empty() {
        return Vec::new();
    }
    let source_terms: Vec<HashSet<String>> = sources.iter().map(|s| terms(&s.text).collect()).collect();
    let n = sources.len() as f64;
    let idf = |term: &str| {
        let df = source_terms.iter().filter(|t| t.contains(term)).count() as f64;
        (1.0 + n / df.max(0.5)).ln()
    };
    let weighted: Vec<(String, f64)> = weights.into_iter().map(|(t, w)| (t.clone(), w * idf(&t))).collect();
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let candidates: Vec<(String, u32, f64)> = sources
        .iter()
        .enumerate()
        .flat_map(|(rank, s)| {
            sentences(&s.text)
                .into_iter()
                .map(move |sentence| (sentence, s.number, rank))
        })
        .map(|(sentence, number, rank)| {
            let t: HashSet<String> = terms(&sentence).collect();
            let matched: f64 = weighted.iter().filter(|(q, _)| t.contains(q)).map(|(_, w)| w).sum();
            let coverage = matched / total;
            (
                sentence,
                number,
                coverage * (1.0 - selection.rank_decay * rank as f64).max(0.0),
            )
        })
        .filter(|(_, _, score)| *score > 0.0)
        .collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Best score first; ties keep source order, so the best-ranked source wins.
    order.sort_by(|a, b| candidates[*b].2.total_cmp(&candidates[*a].2).then(a.cmp(b)));
    let Some(best) = order.first().map(|i| candidates[*i].2) else {
        return Vec::new();
    };
    if best < selection.min_coverage {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    order
        .into_iter()
        .filter(|i| candidates[*i].2 >= best * selection.keep_ratio)
        .filter(|i| seen.insert(candidates[*i].0.to_lowercase()))
        .take(k)
        .map(|i| (candidates[i].0.clone(), candidates[i].1))
        .collect()
}

/// The sentences of a passage: split at paragraph breaks and after `.`, `!`, `?` (and their
/// CJK forms) followed by a space, whitespace collapsed, too-short ones dropped, long ones cut.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut start = 0;
        let mut chars = flat.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let terminal = matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|(_, n)| *n == ' ');
            let cjk_terminal = matches!(c, '。' | '！' | '？');
            if terminal || cjk_terminal {
                let end = i + c.len_utf8();
                push_sentence(&mut out, &flat[start..end]);
                start = end;
            }
        }
        push_sentence(&mut out, &flat[start..]);
    }
    out
}

fn push_sentence(out: &mut Vec<String>, sentence: &str) {
    let sentence = sentence.trim().trim_start_matches(['-', '*', '#', '>', ' ']);
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let cjk = sentence.chars().any(|c| c as u32 >= 0x2E80);
    if words.len() < MIN_SENTENCE_WORDS && !(cjk && sentence.chars().count() >= 8) {
        return;
    }
    if words.len() > MAX_SENTENCE_WORDS {
        out.push(format!("{}…", words[..MAX_SENTENCE_WORDS].join(" ")));
    } else {
        out.push(sentence.to_owned());
    }
}

/// The informative words of a text, lower-cased and lightly stemmed ("embeddings",
/// "embedding" and "embedded" meet at "embedd"), cut to [`STEM_CHARS`] characters so that
/// longer derivations meet too ("configuration", "configured": "configu").
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !is_stopword(w) && !OTHER_STOP_WORDS.contains(&w.as_str()))
        .map(|w| stem(&w).chars().take(STEM_CHARS).collect())
}

/// Longest term kept, in characters.
const STEM_CHARS: usize = 7;

/// German and French words that carry no content (the English ones are the embedder's), and
/// question words that a sentence answering the question does not repeat.
const OTHER_STOP_WORDS: &[&str] = &[
    "aber", "alle", "als", "am", "auch", "auf", "aus", "bei", "bis", "das", "dass", "dem", "den", "der", "des", "die",
    "dies", "diese", "dieser", "durch", "ein", "eine", "einem", "einen", "einer", "eines", "er", "es", "für", "hat",
    "ich", "ihr", "im", "ist", "kann", "mit", "nach", "nicht", "noch", "nur", "ob", "oder", "sich", "sie", "sind",
    "um", "und", "von", "vor", "wenn", "werden", "wie", "wird", "zu", "zum", "zur", "was", "wo", "welche", "welcher",
    "warum", "wann", "gibt", "man", "mein", "meine", "ich", "au", "aux", "avec", "ce", "ces", "cette", "dans", "de",
    "des", "du", "elle", "en", "est", "et", "il", "ils", "la", "le", "les", "leur", "mais", "ne", "ou", "par", "pas",
    "peut", "plus", "pour", "qu", "que", "qui", "quoi", "quel", "quelle", "comment", "sa", "se", "ses", "si", "son",
    "sont", "sur", "un", "une", "je", "mon", "ma", "mes", "est-ce", "use", "using", "get", "want", "need", "way",
    "make", "me", "my", "tell", "know", "possible", "happen",
];

/// Cuts `text` into small deltas (a few words each, whitespace kept) whose concatenation is
/// `text`, the way a model streams.
pub(crate) fn deltas(text: &str, words_per_delta: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    for piece in text.split_inclusive(char::is_whitespace) {
        current.push_str(piece);
        if piece.ends_with(char::is_whitespace) {
            words += 1;
        }
        if words >= words_per_delta.max(1) {
            out.push(std::mem::take(&mut current));
            words = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<SourcePassage> {
        vec![
            SourcePassage {
                number: 1,
                text: "ragpipe stores documents in PostgreSQL. Chunks are embedded in batches of 64 inputs. \
                       The worker retries transient failures."
                    .into(),
            },
            SourcePassage {
                number: 2,
                text: "The HNSW index speeds up vector search over embeddings.\n\nIt is built with m=16.".into(),
            },
        ]
    }

    #[test]
    fn quotes_matching_sentences_with_citations() {
        let a = answer("How are chunks embedded, and in what batches?", None, &sources());
        assert!(a.starts_with(NO_MODEL_NOTICE), "{a}");
        assert!(a.contains("Chunks are embedded in batches of 64 inputs. [1]"), "{a}");
        let b = answer("Which index makes vector search fast?", None, &sources());
        assert!(
            b.contains("The HNSW index speeds up vector search over embeddings. [2]"),
            "{b}"
        );
    }

    #[test]
    fn says_so_when_nothing_matches() {
        let a = answer("What is the capital of Peru?", None, &sources());
        assert!(a.contains("none of the retrieved passages matches"), "{a}");
        let b = answer("What is the capital of Peru?", None, &[]);
        assert!(b.contains("no passages were retrieved"), "{b}");
    }

    #[test]
    fn refusals_say_the_documents_do_not_cover_it() {
        let a = answer("What is the capital of Peru?", None, &sources());
        assert!(a.ends_with(NOT_COVERED), "{a}");
        // One common word of the question is not enough.
        let b = answer("How are Peruvian llamas embedded in Andean culture?", None, &sources());
        assert!(b.ends_with(NOT_COVERED), "{b}");
    }

    #[test]
    fn the_question_is_found_after_the_sources() {
        let sources = sources();
        let message = format!(
            "Sources:\n\n[1] a.md\n{}\n\n[2] b.md\n{}\n\nQuestion: Which index is used?",
            sources[0].text, sources[1].text
        );
        assert_eq!(question_of(&message, &sources), "Which index is used?");
        assert_eq!(question_of("Question: Why?", &[]), "Why?");
        assert_eq!(question_of("plain question", &[]), "plain question");
    }

    #[test]
    fn a_follow_up_leans_on_the_previous_question() {
        let alone = answer("What is it built with?", None, &sources());
        assert!(!alone.contains("HNSW"), "{alone}");
        let with = answer(
            "What is it built with?",
            Some("Tell me about the HNSW index."),
            &sources(),
        );
        assert!(with.contains("It is built with m=16. [2]"), "{with}");
        assert!(
            with.contains("The HNSW index speeds up vector search over embeddings. [2]"),
            "{with}"
        );
    }

    #[test]
    fn quoted_reference_numbers_are_not_citations() {
        assert_eq!(
            defuse_markers("See the ISO standard [9] and a[i] [1, 2]."),
            "See the ISO standard (9) and a[i] (1, 2)."
        );
        let sources = vec![SourcePassage {
            number: 1,
            text: "The flag setting follows the ISO standard [9] for Prolog systems.".into(),
        }];
        let a = answer("Which standard does the flag setting follow?", None, &sources);
        assert!(a.contains("ISO standard (9) for Prolog systems. [1]"), "{a}");
    }

    #[test]
    fn sentences_are_split_and_bounded() {
        let s = sentences(
            "First sentence has words. Version 1.2 is fine here! Short.\n\n# Heading\n\nA "
                .to_owned()
                .as_str(),
        );
        assert_eq!(s, vec!["First sentence has words.", "Version 1.2 is fine here!"]);
        let long = sentences(&"word ".repeat(100));
        assert!(long[0].ends_with('…') && long[0].split_whitespace().count() == MAX_SENTENCE_WORDS);
    }

    #[test]
    fn deltas_rebuild_the_text() {
        let text = "No chat model is configured, so:\n\n- one [1]\n";
        let d = deltas(text, 2);
        assert!(d.len() > 3);
        assert_eq!(d.concat(), text);
    }
}
