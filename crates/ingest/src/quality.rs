//! How close an extracted text is to a reference text (pdftotext's, for the extraction
//! benchmark and the producer fixtures' test): the bag-of-words F1 of lower-cased alphanumeric
//! runs, with ligature characters spelled out on both sides as the extractor writes them
//! (pdftotext keeps `ﬁ` as one character, which would make "ﬁle" and "file" different words).

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
}
