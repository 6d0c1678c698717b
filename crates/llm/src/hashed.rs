//! The offline embedder: deterministic feature hashing, no model and no network.
//!
//! A text becomes a bag of features (lower-cased word unigrams, word bigrams, and the
//! character 3- and 4-grams of each word), each hashed to one of `dim` coordinates with a
//! hashed sign, summed and L2-normalised. Texts that share words or word stems share
//! coordinates, so cosine similarity ranks them closer; that is enough for the demo and the
//! tests to search meaningfully (it is lexical, not semantic: synonyms are not close).
//!
//! The hash is FNV-1a with a SplitMix64 finaliser, written out here so vectors stay identical
//! across Rust versions and machines: they are stored in the database and compared with
//! vectors computed later.

/// Weight of a word as written.
const UNIGRAM: f32 = 0.6;
/// Weight of a word's light stem ("embeddings" and "embedding" share "embedd").
const STEM: f32 = 0.8;
/// Weight of a word that carries little meaning on its own ("the", "of").
const STOPWORD: f32 = 0.1;
/// Weight of two consecutive words.
const BIGRAM: f32 = 0.6;
/// Total weight shared by the character n-grams of one word.
const CHAR_NGRAMS: f32 = 0.8;
/// Longest word whose character n-grams are hashed (longer "words" are hashes, ids, base64).
const MAX_NGRAM_WORD_CHARS: usize = 32;

/// Deterministic hashed embeddings of a fixed dimension. Cheap to copy; thread-safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashedEmbedder {
    dim: usize,
}

impl HashedEmbedder {
    /// An embedder producing `dim`-dimensional vectors (at least 1).
    pub fn new(dim: usize) -> HashedEmbedder {
        HashedEmbedder { dim: dim.max(1) }
    }

    /// The vectors' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The unit-length vector of `text`. The same text always gives the same vector; an empty
    /// text gives a fixed unit vector (never the zero vector, whose cosine distance is NaN).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        let mut previous: Option<String> = None;
        let mut previous_stop = true;
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let word = word.to_lowercase();
            let stop = is_stopword(&word);
            if stop {
                self.add(&mut v, &[b"w", word.as_bytes()], STOPWORD);
            } else {
                self.add(&mut v, &[b"w", word.as_bytes()], UNIGRAM);
                self.add(&mut v, &[b"s", stem(&word).as_bytes()], STEM);
            }
            if let Some(prev) = &previous
                && !(stop && previous_stop)
            {
                self.add(&mut v, &[b"b", prev.as_bytes(), b" ", word.as_bytes()], BIGRAM);
            }
            if !stop {
                self.add_char_ngrams(&mut v, &word);
            }
            previous = Some(word);
            previous_stop = stop;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        } else {
            let (index, sign) = self.slot(&[b"empty"]);
            v[index] = sign;
        }
        v
    }

    fn add_char_ngrams(&self, v: &mut [f32], word: &str) {
        let chars: Vec<char> = std::iter::once('<')
            .chain(word.chars())
            .chain(std::iter::once('>'))
            .collect();
        if chars.len() > MAX_NGRAM_WORD_CHARS + 2 {
            return;
        }
        let grams = (3..=4usize).map(|n| chars.len().saturating_sub(n - 1)).sum::<usize>();
        if grams == 0 {
            return;
        }
        let weight = CHAR_NGRAMS / (grams as f32).sqrt();
        let mut buf = [0u8; 16];
        for n in 3..=4usize {
            for window in chars.windows(n) {
                let mut len = 0;
                for c in window {
                    len += c.encode_utf8(&mut buf[len..]).len();
                }
                self.add(v, &[b"c", &buf[..len]], weight);
            }
        }
    }

    fn add(&self, v: &mut [f32], parts: &[&[u8]], weight: f32) {
        let (index, sign) = self.slot(parts);
        v[index] += sign * weight;
    }

    fn slot(&self, parts: &[&[u8]]) -> (usize, f32) {
        let h = hash(parts);
        let index = ((h & 0xffff_ffff) % self.dim as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        (index, sign)
    }
}

/// FNV-1a over the parts (each followed by a separator byte), then SplitMix64's finaliser so
/// every output bit depends on every input bit.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Common English function words, down-weighted so that shared grammar does not make
/// unrelated texts look alike.
pub(crate) fn is_stopword(word: &str) -> bool {
    const STOPWORDS: &[&str] = &[
        "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
        "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "if", "in",
        "into", "is", "it", "its", "may", "more", "most", "no", "not", "of", "on", "one", "or", "other", "our", "she",
        "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they",
        "this", "those", "to", "up", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will",
        "with", "would", "you", "your",
    ];
    STOPWORDS.binary_search(&word).is_ok()
}

/// A light English stem: common inflection suffixes removed when at least four characters
/// remain. Crude on purpose; it only has to make inflections meet.
pub(crate) fn stem(word: &str) -> &str {
    for suffix in ["ings", "ing", "ed", "es", "s"] {
        if let Some(base) = word.strip_suffix(suffix)
            && base.chars().count() >= 4
        {
            return base;
        }
    }
    word
}

/// Cosine similarity of two vectors of equal length (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        assert!(is_stopword("the") && is_stopword("a") && is_stopword("your") && !is_stopword("pgvector"));
    }

    #[test]
    fn deterministic_and_normalised() {
        let e = HashedEmbedder::new(384);
        let a = e.embed("PostgreSQL stores the chunks with their embeddings.");
        assert_eq!(a, e.embed("PostgreSQL stores the chunks with their embeddings."));
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        let empty = e.embed("  ... ");
        assert!((empty.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fixed_values_do_not_drift() {
        // Stored vectors must stay comparable with new ones: any change to the hashing shows here.
        let v = HashedEmbedder::new(8).embed("hello world");
        let rounded: Vec<i32> = v.iter().map(|x| (x * 1000.0).round() as i32).collect();
        assert_eq!(
            rounded, FIXED,
            "update FIXED only together with a re-embedding migration"
        );
    }
    const FIXED: [i32; 8] = [153, -191, -497, -153, -153, 0, -804, 0];

    #[test]
    fn texts_sharing_words_are_closer() {
        let e = HashedEmbedder::new(384);
        let q = e.embed("How do I configure the embedding model's batch size?");
        let near = e.embed("The embedding batch size is configured with RAGPIPE_EMBEDDING_BATCH_SIZE.");
        let far = e.embed("Quarterly revenue grew by ten percent in the northern region.");
        assert!(
            cosine(&q, &near) > cosine(&q, &far) + 0.2,
            "{} vs {}",
            cosine(&q, &near),
            cosine(&q, &far)
        );
        // Character n-grams make inflections close.
        let a = e.embed("embeddings");
        let b = e.embed("embedding");
        let c = e.embed("revenue");
        assert!(
            cosine(&a, &b) > 0.5 && cosine(&a, &c) < 0.2,
            "{} {}",
            cosine(&a, &b),
            cosine(&a, &c)
        );
    }

    #[test]
    fn non_latin_text_has_structure() {
        let e = HashedEmbedder::new(256);
        let a = e.embed("Индекс HNSW ускоряет поиск ближайших соседей");
        let b = e.embed("поиск ближайших соседей через индекс");
        let c = e.embed("日本語の文書を分割する");
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2);
    }
}
