//! Token counting with tiktoken, one encoder per encoding for the whole process.
//!
//! Building an encoder takes 60–90 ms (FACTS.md), so each is built once, on first use, and
//! shared: [`TokenCounter`] is a `Copy` handle to a process-wide encoder. Constructing one with
//! [`TokenCounter::for_encoding`] at start-up moves that cost out of the first request.

use crate::LlmError;
use std::fmt;
use tiktoken_rs::CoreBPE;

/// The tiktoken encodings ragpipe can count with (`chunking.tokenizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `cl100k_base`: GPT-3.5/4 and `text-embedding-3-*`; the default.
    Cl100kBase,
    /// `o200k_base`: GPT-4o and later.
    O200kBase,
    /// `p50k_base`: Codex-era models.
    P50kBase,
    /// `r50k_base` (`gpt2`): GPT-3.
    R50kBase,
}

impl Encoding {
    /// The encoding's tiktoken name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kBase => "o200k_base",
            Encoding::P50kBase => "p50k_base",
            Encoding::R50kBase => "r50k_base",
        }
    }

    /// Parses a tiktoken encoding name.
    pub fn from_name(name: &str) -> Result<Encoding, LlmError> {
        match name.trim() {
            "cl100k_base" => Ok(Encoding::Cl100kBase),
            "o200k_base" => Ok(Encoding::O200kBase),
            "p50k_base" => Ok(Encoding::P50kBase),
            "r50k_base" | "gpt2" => Ok(Encoding::R50kBase),
            other => Err(LlmError::InvalidConfig {
                setting: "chunking.tokenizer",
                message: format!(
                    "unknown tiktoken encoding {other:?} (known: cl100k_base, o200k_base, p50k_base, r50k_base)"
                ),
            }),
        }
    }
}

/// A cheap, copyable handle to the process-wide encoder of one encoding.
#[derive(Clone, Copy)]
pub struct TokenCounter {
    encoding: Encoding,
    bpe: &'static CoreBPE,
}

impl fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCounter")
            .field("encoding", &self.encoding.name())
            .finish()
    }
}

impl Default for TokenCounter {
    fn default() -> Self {
        TokenCounter::new(Encoding::Cl100kBase)
    }
}

impl TokenCounter {
    /// The counter for `encoding`, building its encoder if this is the first use in the process.
    pub fn new(encoding: Encoding) -> TokenCounter {
        // The singletons parse vocabularies embedded in tiktoken-rs; they cannot fail on
        // outside input.
        let bpe = match encoding {
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::P50kBase => tiktoken_rs::p50k_base_singleton(),
            Encoding::R50kBase => tiktoken_rs::r50k_base_singleton(),
        };
        TokenCounter { encoding, bpe }
    }

    /// The counter for the encoding named `name` (as in `chunking.tokenizer`).
    pub fn for_encoding(name: &str) -> Result<TokenCounter, LlmError> {
        Encoding::from_name(name).map(TokenCounter::new)
    }

    /// The encoding this counter uses.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Number of tokens in `text`, special-token lookalikes counted as ordinary text.
    pub fn count(&self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.bpe.encode_ordinary(text).len()
    }

    /// The longest prefix of `text` with at most `max_tokens` tokens, cut on a character
    /// boundary (a token can end inside a multi-byte character).
    pub fn truncate<'a>(&self, text: &'a str, max_tokens: usize) -> &'a str {
        self.truncate_counted(text, max_tokens).0
    }

    /// Like [`TokenCounter::truncate`], also returning the prefix's token count (at most
    /// `max_tokens`), so callers that need both tokenise once.
    pub fn truncate_counted<'a>(&self, text: &'a str, max_tokens: usize) -> (&'a str, usize) {
        // Every token is at least one byte, so a text no longer than the limit in bytes fits.
        if text.len() <= max_tokens {
            return (text, self.count(text));
        }
        let tokens = self.bpe.encode_ordinary(text);
        if tokens.len() <= max_tokens {
            return (text, tokens.len());
        }
        // Ordinary encoding is lossless: the first k tokens' bytes are exactly a prefix of
        // `text`. Re-encoding that prefix alone can split its last word differently, so the
        // count is checked and the cut moved back a token until it fits.
        let mut keep = max_tokens;
        loop {
            let byte_len = self.bpe.decode_bytes(&tokens[..keep]).map(|b| b.len()).unwrap_or(0);
            let prefix = &text[..floor_char_boundary(text, byte_len)];
            let count = self.count(prefix);
            if count <= max_tokens || keep == 0 {
                return (prefix, count);
            }
            keep -= 1;
        }
    }
}

/// The largest index `<= i` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Tokens in `text` with `cl100k_base`, the default encoding.
pub fn count_tokens(text: &str) -> usize {
    TokenCounter::default().count(text)
}

/// The longest prefix of `text` with at most `max_tokens` `cl100k_base` tokens.
pub fn truncate_to_tokens(text: &str, max_tokens: usize) -> &str {
    TokenCounter::default().truncate(text, max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_truncates() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let n = count_tokens(&text);
        assert!(n > 100, "{n}");
        let cut = truncate_to_tokens(&text, 10);
        assert!(text.starts_with(cut));
        assert_eq!(count_tokens(cut), 10);
        assert_eq!(truncate_to_tokens("short", 10), "short");
        assert_eq!(truncate_to_tokens(&text, 0), "");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let text = "日本語のテキストを分割します。".repeat(10);
        for n in 0..40 {
            let (cut, count) = TokenCounter::default().truncate_counted(&text, n);
            assert!(text.starts_with(cut));
            assert!(count <= n, "{count} > {n}");
            assert_eq!(count, count_tokens(cut));
        }
    }

    #[test]
    fn encodings_by_name() {
        assert_eq!(
            TokenCounter::for_encoding("o200k_base").map(|t| t.encoding()).ok(),
            Some(Encoding::O200kBase)
        );
        let err = TokenCounter::for_encoding("bert").expect_err("bert is not a tiktoken encoding");
        assert!(err.to_string().contains("bert"), "{err}");
    }
}
