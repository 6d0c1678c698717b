//! How close an extracted text is to a reference text (pdftotext's, for the extraction
//! benchmark and the producer fixtures' test): the bag-of-words F1 of lower-cased alphanumeric
//! runs, with ligature characters spelled out on both sides as the extractor writes them
//! (pdftotext keeps `ﬁ` as one character, which would make "ﬁle" and "file" different words).

use crate::running_key;
use std::collections::HashMap;

/// A word-level comparison of two texts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WordF1 {
    /// `2 * common / (ours + reference)`; 1.0 when both are empty.
    pub f1: f64,
    /// Words the two texts share (with multiplicity).
    pub common: usize,
    /// Words in the extracted text.
    pub ours: usize,
    /// Words in the reference.
    pub reference: usize,
}

/// Compares `ours` with `reference` word by word.
pub fn word_f1(ours: &str, reference: &str) -> WordF1 {
    let (a, b) = (words(ours), words(reference));
    let common: usize = a.iter().map(|(w, n)| (*n).min(b.get(w).copied().unwrap_or(0))).sum();
    let (na, nb): (usize, usize) = (a.values().sum(), b.values().sum());
    let f1 = if na + nb == 0 {
        1.0
    } else {
        2.0 * common as f64 / (na + nb) as f64
    };
    WordF1 {
        f1,
        common,
        ours: na,
        reference: nb,
    }
}

/// The pages of a pdftotext text (separated by form feeds), trimmed, less the lines the
/// extractor drops on purpose as running headers, footers and page numbers, by its own rule: a
/// line (digits aside) among the first or last three lines of a third of the pages or more, in
/// a text of three pages or more. pdftotext may put a header after the body, so the first and
/// last three lines of each page are candidates. F1 then measures text lost or garbled rather
/// than a choice both could make.
pub fn pages_without_running_lines(reference: &str) -> Vec<String> {
    const EDGE: usize = 3;
    let pages: Vec<Vec<&str>> = reference
        .split('\u{c}')
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
        .collect();
    let with_text = pages.iter().filter(|p| !p.is_empty()).count();
    let threshold = with_text.div_ceil(3).max(2);
    let mut counts: HashMap<String, usize> = HashMap::new();
    if with_text >= 3 {
        for p in &pages {
            let mut keys: Vec<String> = p
                .iter()
                .take(EDGE)
                .chain(p.iter().rev().take(EDGE))
                .map(|l| running_key(l))
                .collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                *counts.entry(k).or_default() += 1;
            }
        }
    }
    pages
        .iter()
        .map(|p| {
            let mut out = String::new();
            for (i, l) in p.iter().enumerate() {
                let edge = i < EDGE || i + EDGE >= p.len();
                if edge && counts.get(&running_key(l)).is_some_and(|&c| c >= threshold) {
                    continue;
                }
                out.push_str(l);
                out.push('\n');
            }
            out
        })
        .collect()
}

fn words(text: &str) -> HashMap<String, usize> {
    let mut spelled = String::with_capacity(text.len());
    for c in text.chars() {
        crate::push_clean_char(&mut spelled, c);
    }
    let mut counts = HashMap::new();
    for w in spelled.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ligatures_and_case_do_not_count_against_a_text() {
        let same = word_f1("The ﬁle is read.", "the file IS read");
        assert_eq!((same.f1, same.common, same.ours, same.reference), (1.0, 4, 4, 4));
        let half = word_f1("one two", "one three");
        assert!((half.f1 - 0.5).abs() < 1e-9);
        assert_eq!(word_f1("", "").f1, 1.0);
    }

    #[test]
    fn a_line_repeated_at_the_edge_of_a_third_of_the_pages_is_running() {
        let text = "Manual 1\nbody one\n\u{c}Manual 2\nbody two\n\u{c}Manual 3\nbody three\n";
        assert_eq!(
            pages_without_running_lines(text),
            ["body one\n", "body two\n", "body three\n"]
        );
        // Two pages are too few to tell a running line from text.
        assert_eq!(
            pages_without_running_lines("Manual 1\nx\n\u{c}Manual 2\ny\n")[0],
            "Manual 1\nx\n"
        );
    }
}
