//! Why a document could not be extracted or chunked.

use ragpipe_core::ErrorKind;
use serde::Serialize;

/// Why extraction failed. The `Display` text is the reason a user sees on a failed document,
/// so it says what was wrong in words, not in parser jargon.
#[derive(Debug, Clone, Serialize, thiserror::Error, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExtractError {
    /// The file has no bytes at all.
    #[error("the file is empty")]
    Empty,
    /// The bytes are not in a format ragpipe reads.
    #[error("unsupported format: {detected} (ragpipe reads PDF, plain text, Markdown, HTML and DOCX)")]
    Unsupported {
        /// What the bytes look like, e.g. "PNG image" or "binary data".
        detected: String,
    },
    /// The PDF is encrypted and does not open with an empty password.
    #[error("the PDF is encrypted with a password; upload an unprotected copy")]
    Encrypted,
    /// The document has no text layer (a scanned PDF, an empty page set); OCR is out of scope.
    #[error("no extractable text (a scanned or image-only document? OCR is not supported)")]
    NoExtractableText,
    /// Every page with text draws it in fonts whose glyphs map to no characters, so the text
    /// layer exists but cannot be read (old TeX bitmap fonts, unnamed Type 3 glyphs).
    #[error(
        "the text layer cannot be decoded ({} {}): its fonts map glyphs to no characters",
        if pages.len() == 1 { "page" } else { "pages" },
        page_list(pages)
    )]
    UndecodableText {
        /// 1-based pages that draw text that cannot be decoded.
        pages: Vec<u32>,
    },
    /// The input is over one of the configured [`crate::Limits`].
    #[error("{what} is over the limit of {limit}")]
    TooLarge {
        /// What was measured, with its unit, e.g. "page count" or "decompressed stream size (bytes)".
        what: String,
        /// The configured limit.
        limit: u64,
    },
    /// The file is damaged or not what its first bytes claim.
    #[error("malformed {format}: {reason}")]
    Malformed {
        /// The detected format, e.g. "PDF".
        format: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Extraction took longer than the configured limit.
    #[error("extraction took longer than the limit of {seconds} s")]
    Timeout {
        /// The configured limit, in seconds.
        seconds: u64,
    },
    /// A parser panicked; the panic was caught and the document failed instead of the process.
    #[error("the extractor crashed on this file ({0}); please report it with the file")]
    Panicked(String),
}

impl ExtractError {
    /// How the job layer should treat this failure: every extraction error is permanent,
    /// since running the same bytes through the same code again gives the same result.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Permanent
    }

    pub(crate) fn malformed(format: &str, reason: impl Into<String>) -> Self {
        ExtractError::Malformed {
            format: format.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn too_large(what: &str, limit: u64) -> Self {
        ExtractError::TooLarge {
            what: what.to_owned(),
            limit,
        }
    }
}

/// `1-3, 5` for pages 1, 2, 3 and 5.
fn page_list(pages: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < pages.len() {
        let mut j = i;
        while j + 1 < pages.len() && pages[j + 1] == pages[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&pages[i].to_string());
        if j > i {
            out.push('-');
            out.push_str(&pages[j].to_string());
        }
        i = j + 1;
    }
    out
}

/// Why a [`crate::Chunker`] could not be built.
#[derive(Debug, Clone, Serialize, thiserror::Error, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkError {
    /// The tokenizer name is not one tiktoken knows.
    #[error("unknown tokenizer {name:?} (known: cl100k_base, o200k_base, p50k_base, p50k_edit, r50k_base)")]
    UnknownTokenizer {
        /// The name that was asked for.
        name: String,
    },
    /// The tokenizer failed to initialise.
    #[error("initialising tokenizer {name}: {reason}")]
    Tokenizer {
        /// The tokenizer.
        name: String,
        /// Why it failed.
        reason: String,
    },
    /// The sizes do not make sense together.
    #[error("invalid chunk settings: {0}")]
    InvalidSettings(String),
}

impl ChunkError {
    /// Every chunker error is a configuration mistake: permanent.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Permanent
    }
}
