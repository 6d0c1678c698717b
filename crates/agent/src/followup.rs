//! Follow-up questions: what search is asked when a question leans on the conversation ("and
//! what is its default?").
//!
//! Offline, [`retrieval_query`] carries the previous questions' salient terms over: a question
//! that refers back (a pronoun, a demonstrative, a leading "and"/"und"/"et", in English, German
//! or French) or is too short to stand alone gets the rare words of the most recent earlier
//! questions appended. Salient means not a function word or a question word of those languages
//! ([`is_stop_word`]) and at least three characters long unless it holds a digit; identifiers
//! keep their inner punctuation (`KeepAliveTimeout`, `mod_userdir`, `--dropbox-batch-mode`).
//! Pure and deterministic: the same conversation always searches the same words.
//!
//! With a chat model, the agent condenses the conversation into a standalone query instead
//! (`prompts/condense.md`, [`crate::answer`]) and falls back to this when that call fails.

use crate::prompt::Prompts;
use ragpipe_llm::{ChatMessage, TokenCounter};

/// Tokens of earlier conversation sent to the condense prompt at most.
pub const CONDENSE_BUDGET: usize = 1024;
/// Tokens of one earlier message kept for the condense prompt (answers are long; their start
/// names the subject).
pub const CONDENSE_MESSAGE_TOKENS: usize = 192;
/// Most tokens the condensed query may have (`max_tokens` of the condense call).
pub const CONDENSE_MAX_TOKENS: u32 = 96;
/// Longest condensed query used, in bytes (search refuses longer ones).
const MAX_QUERY_BYTES: usize = 4096;

/// One earlier message of the conversation, for the condense prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Said<'a> {
    /// Whether the user said it (else the assistant).
    pub user: bool,
    /// Its text.
    pub text: &'a str,
}

/// The condense call's messages: the conversation (newest messages first until
/// [`CONDENSE_BUDGET`] tokens, each cut to [`CONDENSE_MESSAGE_TOKENS`], then laid out oldest
/// first) and the question, in `prompts/condense.md`.
pub fn condense_messages(
    prompts: &Prompts,
    tokens: &TokenCounter,
    earlier: &[Said<'_>],
    question: &str,
) -> Vec<ChatMessage> {
    let mut lines: Vec<String> = Vec::new();
    let mut used = 0;
    for said in earlier.iter().rev() {
        let text = tokens.truncate(said.text.trim(), CONDENSE_MESSAGE_TOKENS);
        if text.is_empty() {
            continue;
        }
        let line = format!(
            "{}: {}",
            if said.user { "User" } else { "Assistant" },
            text.replace('\n', " ")
        );
        let n = tokens.count(&line);
        if used + n > CONDENSE_BUDGET {
            break;
        }
        used += n;
        lines.push(line);
    }
    lines.reverse();
    vec![ChatMessage::user(prompts.render_condense(&lines.join("\n"), question))]
}

/// The model's condensed query, cleaned: its first non-empty line, without a leading label
/// or surrounding quotes. `None` when nothing usable is left.
pub fn clean_condensed(answer: &str) -> Option<String> {
    let line = answer.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = ["Standalone query:", "Query:", "standalone query:", "query:"]
        .iter()
        .find_map(|label| line.strip_prefix(label))
        .unwrap_or(line)
        .trim();
    let line = line
        .trim_matches(|c| matches!(c, '"' | '\'' | '`' | '“' | '”' | '«' | '»'))
        .trim();
    (!line.is_empty() && line.len() <= MAX_QUERY_BYTES).then(|| line.to_owned())
}

/// Own salient terms below which a question is taken to lean on the conversation.
pub const MIN_OWN_TERMS: usize = 4;
/// Most terms carried over from earlier questions.
pub const MAX_CARRIED_TERMS: usize = 8;

/// The query to search for `question` given the conversation's earlier user questions,
/// oldest first. Returns `question` unchanged when it stands alone or there is nothing to
/// carry; otherwise `question` followed by the salient terms of the latest earlier questions
/// (newest first, at most [`MAX_CARRIED_TERMS`], none the question already has).
pub fn retrieval_query(question: &str, previous: &[&str]) -> String {
    if previous.is_empty() || !leans_on_context(question) {
        return question.to_owned();
    }
    let own: Vec<String> = salient_terms(question).iter().map(|t| t.to_lowercase()).collect();
    let mut carried: Vec<String> = Vec::new();
    for earlier in previous.iter().rev() {
        for term in salient_terms(earlier) {
            let lower = term.to_lowercase();
            if carried.len() < MAX_CARRIED_TERMS
                && !own.contains(&lower)
                && !carried.iter().any(|c| c.to_lowercase() == lower)
            {
                carried.push(term);
            }
        }
        // The latest question usually names the subject; go further back only when it gave
        // almost nothing.
        if carried.len() >= 2 {
            break;
        }
    }
    if carried.is_empty() {
        return question.to_owned();
    }
    format!("{} {}", question.trim_end(), carried.join(" "))
}

/// Whether `question` needs the conversation to be searched: it refers back or has fewer
/// than [`MIN_OWN_TERMS`] salient terms.
pub fn leans_on_context(question: &str) -> bool {
    let words = words(question);
    let refers = words.iter().enumerate().any(|(i, w)| {
        let w = w.to_lowercase();
        REFERRING.contains(&w.as_str()) || (i == 0 && LEADING.contains(&w.as_str()))
    });
    refers || salient_terms(question).len() < MIN_OWN_TERMS
}

/// The salient terms of `text` in order, each once (case-insensitively).
pub fn salient_terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        let lower = w.to_lowercase();
        let n = w.chars().count();
        let long_enough = n >= 3 || (n == 2 && w.chars().any(|c| c.is_ascii_digit()));
        if long_enough && !is_stop_word(&lower) && !out.iter().any(|o| o.to_lowercase() == lower) {
            out.push(w.to_owned());
        }
    }
    out
}

/// Whitespace-separated words with surrounding punctuation trimmed (inner `-`, `_`, `.`, `/`
/// and `:` kept, so identifiers and options stay whole, leading dashes of options dropped);
/// French elisions (`l'`, `qu'`) dropped.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '?' | '!' | '(' | ')' | '"' | '«' | '»'))
        .map(|w| {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '_');
            let w = w.trim_matches(['-', '_']);
            match w.split_once(['\'', '’']) {
                Some((head, tail)) if head.chars().count() <= 2 && !tail.is_empty() => tail,
                _ => w,
            }
        })
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect()
}

/// Whether `lower` (a lower-cased word) is a function word or question word in English,
/// German or French, or a verb every question uses.
pub fn is_stop_word(lower: &str) -> bool {
    STOP.binary_search(&lower).is_ok()
}

/// Words that point back at an earlier turn.
const REFERRING: &[&str] = &[
    "it", "its", "it's", "that", "this", "these", "those", "they", "them", "their", "there", "one", "ones", "same",
    "else", "instead", "es", "das", "dies", "diese", "dieser", "dieses", "sie", "ihn", "ihm", "dabei", "dafür",
    "damit", "davon", "dazu", "il", "elle", "ils", "elles", "le", "la", "les", "ça", "cela", "celui", "celle", "ceux",
    "en", "y",
];

/// Words that, leading a question, continue the previous one.
const LEADING: &[&str] = &["and", "also", "but", "und", "aber", "et", "mais"];

/// Sorted (checked by a test) for binary search.
const STOP: &[&str] = &[
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "auch", "auf",
    "aus", "avec", "be", "bei", "bin", "bis", "but", "by", "can", "ce", "ces", "cette", "comment", "could", "dans",
    "das", "dass", "de", "dem", "den", "der", "des", "did", "die", "do", "does", "doing", "du", "ein", "eine", "einem",
    "einen", "einer", "es", "est", "et", "für", "get", "gibt", "give", "gives", "has", "have", "how", "i", "ich", "if",
    "il", "in", "into", "is", "ist", "it", "its", "je", "kann", "la", "le", "les", "make", "man", "me", "mit", "my",
    "nach", "not", "of", "on", "one", "or", "ou", "par", "pas", "pour", "quand", "que", "quel", "quelle", "quels",
    "qui", "quoi", "should", "sich", "sie", "sind", "so", "still", "sur", "than", "that", "the", "them", "then",
    "there", "these", "they", "this", "those", "to", "un", "und", "une", "use", "used", "using", "von", "was", "way",
    "we", "welche", "welcher", "welches", "what", "when", "where", "which", "who", "why", "wie", "will", "wird",
    "with", "wo", "would", "you", "your", "zu",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_list_is_sorted() {
        assert!(STOP.windows(2).all(|w| w[0] < w[1]), "STOP must be sorted and unique");
    }

    #[test]
    fn a_follow_up_carries_the_previous_subject() {
        assert_eq!(
            retrieval_query(
                "Is there any downside to making it really large?",
                &["What does KeepAliveTimeout control?"]
            ),
            "Is there any downside to making it really large? KeepAliveTimeout control"
        );
        assert_eq!(
            retrieval_query("And version 2?", &["Which compression can version 1 bundles use?"]),
            "And version 2? compression bundles"
        );
        assert_eq!(
            retrieval_query("Et s'il est vide ?", &["À quoi sert /etc/at.deny ?"]),
            "Et s'il est vide ? sert etc/at.deny"
        );
    }

    #[test]
    fn a_standalone_question_or_a_first_turn_is_unchanged() {
        let q = "How do I configure the HNSW index build parameters for pgvector?";
        assert_eq!(retrieval_query(q, &["What does KeepAliveTimeout control?"]), q);
        assert_eq!(retrieval_query("And its default?", &[]), "And its default?");
    }

    #[test]
    fn terms_already_asked_are_not_repeated_and_older_turns_fill_in() {
        assert_eq!(
            retrieval_query("Does XBitHack work on Windows?", &["What does XBitHack do?"]),
            "Does XBitHack work on Windows?"
        );
        assert_eq!(
            retrieval_query("and then?", &["What does rclone copyurl do?", "ok"]),
            "and then? rclone copyurl"
        );
    }

    #[test]
    fn the_condense_prompt_holds_the_conversation_within_its_budget() {
        let prompts = Prompts::embedded();
        let tokens = TokenCounter::default();
        let long = "word ".repeat(5000);
        let earlier = [
            Said {
                user: true,
                text: "What does KeepAliveTimeout control?",
            },
            Said {
                user: false,
                text: &long,
            },
        ];
        let messages = condense_messages(&prompts, &tokens, &earlier, "And its default?");
        assert_eq!(messages.len(), 1);
        let text = &messages[0].content;
        assert!(text.contains("User: What does KeepAliveTimeout control?"), "{text}");
        assert!(text.contains("Last question: And its default?"), "{text}");
        assert!(tokens.count(text) < CONDENSE_BUDGET + 300, "{}", tokens.count(text));
        // Oldest first.
        assert!(text.find("User:") < text.find("Assistant:"));
    }

    #[test]
    fn condensed_answers_are_cleaned() {
        assert_eq!(
            clean_condensed("\n  Standalone query: \"KeepAliveTimeout default value\"\nBecause...").as_deref(),
            Some("KeepAliveTimeout default value")
        );
        assert_eq!(clean_condensed("  \n \"\" "), None);
    }

    #[test]
    fn identifiers_keep_their_punctuation() {
        assert_eq!(
            salient_terms("What does --dropbox-batch-mode sync do with mod_userdir?"),
            vec!["dropbox-batch-mode", "sync", "mod_userdir"]
        );
    }
}
