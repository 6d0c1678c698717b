//! Collapsing duplicate passages in a ranked list: the same text uploaded twice (as PDF and
//! DOCX, or as two versions), or repeated inside one document, would otherwise fill several of
//! the `k` places with one passage. Pure: ranked hits in, distinct hits out.
//!
//! Two hits are one passage when their normalised texts (lowercase, letters and digits only,
//! single spaces) are equal, or when their word 3-shingle sets have a Jaccard similarity of at
//! least [`NEAR_DUPLICATE`]. The best-ranked of them is kept and the others are listed on it in
//! `also_in`.

use super::{AlsoIn, SearchHit};

/// Jaccard similarity of word 3-shingles at and above which two passages are one. At 0.9 two
/// 200-token chunks differ by at most a few words (a changed date, a fixed typo, a page
/// number), while consecutive chunks of one document (which share only their overlap) and
/// passages that merely quote the same sentence stay apart.
pub const NEAR_DUPLICATE: f64 = 0.9;

/// Words per shingle.
const SHINGLE: usize = 3;

/// A passage's fingerprint: its normalised words and their shingles.
struct Fingerprint {
    normalised: String,
    /// The shingles' hashes, sorted and without repeats (a merge counts the common ones).
    shingles: Vec<u64>,
}

impl Fingerprint {
    fn of(text: &str) -> Fingerprint {
        let normalised = normalise(text);
        let words: Vec<&str> = normalised.split(' ').filter(|w| !w.is_empty()).collect();
        let mut shingles: Vec<u64> = if words.len() < SHINGLE {
            vec![hash(&words)]
        } else {
            words.windows(SHINGLE).map(hash).collect()
        };
        shingles.sort_unstable();
        shingles.dedup();
        Fingerprint { normalised, shingles }
    }

    fn same_passage(&self, other: &Fingerprint) -> bool {
        if self.normalised == other.normalised {
            return true;
        }
        let (a, b) = (self.shingles.len(), other.shingles.len());
        // |A ∩ B| <= min, |A ∪ B| >= max: a size ratio under the threshold cannot reach it.
        if a.min(b) == 0 || (a.min(b) as f64) < NEAR_DUPLICATE * a.max(b) as f64 {
            return false;
        }
        jaccard(&self.shingles, &other.shingles) >= NEAR_DUPLICATE
    }
}

/// FNV-1a over the words, each ended by a byte no normalised word contains: fast, and a
/// collision only ever merges two shingles of the few dozen texts compared.
fn hash(words: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Lowercase letters and digits, every other run of characters one space.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    }
    let end = out.trim_end().len();
    out.truncate(end);
    out
}

/// Jaccard similarity of two shingle sets.
/// |A ∩ B| / |A ∪ B| of two sorted sets without repeats, by one merge.
fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - common;
    if union == 0 { 1.0 } else { common as f64 / union as f64 }
}

/// Jaccard similarity of the word 3-shingles of two texts (after [`normalise`]).
pub fn similarity(a: &str, b: &str) -> f64 {
    jaccard(&Fingerprint::of(a).shingles, &Fingerprint::of(b).shingles)
}

/// The first `k` distinct passages of `ranked` (best first), each with the hits it stands for
/// in `also_in`, in rank order. Only the kept hits' duplicates are looked for; a hit after the
/// `k`-th distinct passage is dropped unless it duplicates one of them.
pub fn collapse(ranked: Vec<SearchHit>, k: usize) -> Vec<SearchHit> {
    let mut kept: Vec<(SearchHit, Fingerprint)> = Vec::with_capacity(k.min(ranked.len()));
    for hit in ranked {
        let print = Fingerprint::of(&hit.content);
        if let Some((first, _)) = kept.iter_mut().find(|(_, p)| p.same_passage(&print)) {
            first.also_in.push(AlsoIn {
                document_id: hit.document_id,
                filename: hit.filename,
                chunk_id: hit.chunk_id,
            });
        } else if kept.len() < k {
            kept.push((hit, print));
        }
    }
    kept.into_iter().map(|(hit, _)| hit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn hit(chunk_id: i64, doc: u128, content: &str) -> SearchHit {
        SearchHit {
            chunk_id,
            document_id: Uuid::from_u128(doc),
            filename: format!("doc{doc}.txt"),
            chunk_index: 0,
            page_first: None,
            page_last: None,
            heading_path: Vec::new(),
            score: 1.0 / chunk_id as f64,
            vector_rank: None,
            text_rank: Some(chunk_id),
            vector_similarity: None,
            text_score: None,
            content: content.to_owned(),
            highlight: None,
            also_in: Vec::new(),
        }
    }

    /// Forty distinct words, as a passage.
    fn passage() -> Vec<String> {
        (0..40).map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn normalising_ignores_case_whitespace_and_punctuation() {
        assert_eq!(
            normalise("  Fonts are\nEMBEDDED -- as  subsets. "),
            "fonts are embedded as subsets"
        );
        assert_eq!(normalise("Größe: 12 pt!"), "größe 12 pt");
    }

    /// One word changed in forty: 3 of the 38 shingles change on each side, Jaccard 35/41 =
    /// 0.854, below the threshold. A changed last word: one shingle each side, 37/39 = 0.949.
    #[test]
    fn the_near_duplicate_threshold_is_jaccard_0_9() {
        let base = passage();
        let mut middle = base.clone();
        middle[20] = "changed".into();
        let mut last = base.clone();
        last[39] = "changed".into();
        let (base, middle, last) = (base.join(" "), middle.join(" "), last.join(" "));
        let below = similarity(&base, &middle);
        let above = similarity(&base, &last);
        assert!((below - 35.0 / 41.0).abs() < 1e-9 && below < NEAR_DUPLICATE, "{below}");
        assert!((above - 37.0 / 39.0).abs() < 1e-9 && above >= NEAR_DUPLICATE, "{above}");

        let hits = vec![hit(1, 1, &base), hit(2, 2, &middle), hit(3, 3, &last)];
        let out = collapse(hits, 5);
        assert_eq!(out.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(out[0].also_in.iter().map(|a| a.chunk_id).collect::<Vec<_>>(), vec![3]);
        assert!(out[1].also_in.is_empty());
    }

    #[test]
    fn k_results_are_k_distinct_passages_and_the_best_is_kept() {
        let text = passage().join(" ");
        let hits = vec![
            hit(1, 1, &text),
            hit(2, 2, &text.to_uppercase().replace(' ', "\n ")),
            hit(3, 3, "another passage entirely"),
            hit(4, 4, &format!("{text}.")),
            hit(5, 5, "a third one"),
            hit(6, 6, "a fourth one, beyond k"),
            hit(7, 7, &text),
        ];
        let out = collapse(hits, 3);
        assert_eq!(out.iter().map(|h| h.chunk_id).collect::<Vec<_>>(), vec![1, 3, 5]);
        let also: Vec<(i64, &str)> = out[0]
            .also_in
            .iter()
            .map(|a| (a.chunk_id, a.filename.as_str()))
            .collect();
        assert_eq!(also, vec![(2, "doc2.txt"), (4, "doc4.txt"), (7, "doc7.txt")]);
        assert_eq!(out[0].also_in[0].document_id, Uuid::from_u128(2));
    }

    #[test]
    fn short_passages_compare_whole() {
        assert!(Fingerprint::of("Next chapter").same_passage(&Fingerprint::of("next  CHAPTER.")));
        assert!(!Fingerprint::of("Next chapter").same_passage(&Fingerprint::of("Previous chapter")));
        assert!(!Fingerprint::of("").same_passage(&Fingerprint::of("text")));
    }
}
