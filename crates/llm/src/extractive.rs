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

/// The opening every offline answer starts with.
pub const NO_MODEL_NOTICE: &str = "No chat model is configured (set RAGPIPE_CHAT_BASE_URL to use one)";

/// The extractive answer to `question` from `sources`.
pub(crate) fn answer(question: &str, sources: &[SourcePassage]) -> String {
    let picks = best_sentences(question, sources, MAX_SENTENCES);
    if picks.is_empty() {
        let why = if sources.is_empty() {
            "and no passages were retrieved for this question."
        } else {
            "and none of the retrieved passages matches the question."
        };
        return format!("{NO_MODEL_NOTICE}, {why}");
    }
    let mut out = format!("{NO_MODEL_NOTICE}, so this answer quotes the passages that best match the question:\n\n");
    for (sentence, number) in picks {
        out.push_str(&format!("- {sentence} [{number}]\n"));
    }
    out
}

/// Up to `k` `(sentence, source number)` pairs, best first, that share the most informative
/// words with the question (terms weighted by rarity across all candidate sentences).
pub(crate) fn best_sentences(question: &str, sources: &[SourcePassage], k: usize) -> Vec<(String, u32)> {
    let query: HashSet<String> = terms(question).collect();
    if query.is_empty() {
        return Vec::new();
    }
    let candidates: Vec<(String, u32, HashSet<String>)> = sources
        .iter()
        .flat_map(|s| sentences(&s.text).into_iter().map(move |sentence| (sentence, s.number)))
        .map(|(sentence, number)| {
            let t = terms(&sentence).collect();
            (sentence, number, t)
        })
        .collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for (_, _, t) in &candidates {
        for term in t {
            *df.entry(term.as_str()).or_default() += 1;
        }
    }
    let n = candidates.len() as f64;
    let mut scored: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, (sentence, _, t))| {
            let matched: f64 = query
                .iter()
                .filter(|q| t.contains(*q))
                .map(|q| (1.0 + n / df.get(q.as_str()).copied().unwrap_or(1) as f64).ln())
                .sum();
            let words = sentence.split_whitespace().count() as f64;
            (matched > 0.0).then(|| (matched / (1.0 + words / 50.0), i))
        })
        .collect();
    // Best score first; ties keep source order, so the best-ranked source wins.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut seen = HashSet::new();
    scored
        .into_iter()
        .filter(|(_, i)| seen.insert(candidates[*i].0.to_lowercase()))
        .take(k)
        .map(|(_, i)| (candidates[i].0.clone(), candidates[i].1))
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
/// "embedding" and "embedded" meet at "embedd").
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !is_stopword(w))
        .map(|w| stem(&w).to_owned())
}

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
        let a = answer("How are chunks embedded, and in what batches?", &sources());
        assert!(a.starts_with(NO_MODEL_NOTICE), "{a}");
        assert!(a.contains("Chunks are embedded in batches of 64 inputs. [1]"), "{a}");
        let b = answer("Which index makes vector search fast?", &sources());
        assert!(
            b.contains("The HNSW index speeds up vector search over embeddings. [2]"),
            "{b}"
        );
    }

    #[test]
    fn says_so_when_nothing_matches() {
        let a = answer("What is the capital of Peru?", &sources());
        assert!(a.contains("none of the retrieved passages matches"), "{a}");
        let b = answer("What is the capital of Peru?", &[]);
        assert!(b.contains("no passages were retrieved"), "{b}");
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
