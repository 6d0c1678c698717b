//! Bytes to text to chunks.
//!
//! [`detect`] names a format from the bytes alone; [`extract`] turns the bytes into clean text
//! with page spans, headings, a title and a language; [`Chunker::chunk`] cuts that text into
//! token-exact chunks that know their pages and heading path.
//!
//! This crate is pure: no I/O, no database, no network. Everything is synchronous and
//! CPU-bound, so async callers run it in `spawn_blocking`. Nothing in it can take the process
//! down: [`extract`] catches panics from the parsers it uses, and every input is bounded by
//! [`Limits`].

mod chunk;
mod detect;
mod docx;
mod error;
mod html;
mod markdown;
mod pdf;
pub mod quality;
mod text;

use serde::Serialize;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

pub use chunk::{Chunk, ChunkSettings, Chunker, ModelLimit};
pub use detect::detect;
pub use error::{ChunkError, ExtractError};
pub use pdf::running_key;

/// Identifies the code that produced an [`Extracted`]; stored with every chunk set so that
/// reprocessing knows which documents an extractor change affects. Bump it whenever the
/// text this crate produces for the same bytes changes.
pub const EXTRACTOR_VERSION: &str = concat!("ragpipe-ingest/", env!("CARGO_PKG_VERSION"), "+x5");

/// Bounds on what one document may cost. Hostile input hits one of these and fails with
/// [`ExtractError::TooLarge`] or [`ExtractError::Timeout`] instead of exhausting the worker.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Limits {
    /// Largest input, in bytes.
    pub max_input_bytes: u64,
    /// Most pages of one PDF.
    pub max_pages: u32,
    /// Most bytes one compressed stream (or a DOCX part) may inflate to.
    pub max_decompressed_bytes: u64,
    /// Most characters of extracted text.
    pub max_chars: u64,
    /// Longest time extraction may take.
    pub timeout: Duration,
}

impl Limits {
    /// The limits configured for this deployment.
    pub fn from_config(c: &ragpipe_core::config::Limits) -> Self {
        Limits {
            max_input_bytes: c.max_file_bytes,
            max_pages: c.max_pages,
            max_decompressed_bytes: c.max_decompressed_bytes,
            max_chars: c.max_chars,
            timeout: Duration::from_secs(c.extract_timeout_secs),
        }
    }
}

impl Default for Limits {
    /// The same values as the configuration defaults.
    fn default() -> Self {
        Limits {
            max_input_bytes: 100 << 20,
            max_pages: 5000,
            max_decompressed_bytes: 256 << 20,
            max_chars: 50_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// A document format ragpipe reads.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// PDF (any version), text layer only.
    Pdf,
    /// Plain text in UTF-8, UTF-16 or Windows-1252.
    Text,
    /// CommonMark/GitHub-flavoured Markdown.
    Markdown,
    /// An HTML page.
    Html,
    /// A Word document (Office Open XML).
    Docx,
}

impl Format {
    /// Short lowercase name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Docx => "docx",
        }
    }

    /// The MIME type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Text => "text/plain",
            Format::Markdown => "text/markdown",
            Format::Html => "text/html",
            Format::Docx => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        }
    }

    /// Whether the extracted text is Markdown-shaped (headings as `#` lines), so chunking
    /// should break at headings before paragraphs.
    pub fn is_markdown_shaped(self) -> bool {
        matches!(self, Format::Markdown | Format::Html | Format::Docx)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One page of a paged document: its 1-based number and where its text lies in
/// [`Extracted::text`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PageSpan {
    /// 1-based page number.
    pub number: u32,
    /// Byte range of the page's text in [`Extracted::text`] (empty for a page without text).
    pub range: Range<usize>,
}

/// A heading found in the document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Heading {
    /// 1 (top) to 6.
    pub level: u8,
    /// The heading's text, without Markdown markers.
    pub text: String,
    /// Byte offset of the heading's line in [`Extracted::text`].
    pub offset: usize,
}

/// A page that could not be extracted; the rest of the document was.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PageFailure {
    /// 1-based page number.
    pub page: u32,
    /// Why, in words.
    pub reason: String,
}

/// Something a user should know about a document's text: part of it is missing, and why.
/// Serialised as `{"code": "undecodable_text_layer", "pages": [3, 4]}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExtractWarning {
    /// What happened, as a stable machine-readable code; see the `WARNING_*` constants.
    pub code: &'static str,
    /// 1-based pages it concerns, in order.
    pub pages: Vec<u32>,
}

/// Pages whose text is drawn in fonts that map their glyphs to no characters (no
/// `ToUnicode`, no usable encoding, glyph names that mean nothing): the page has a text layer,
/// but its text cannot be read, so search will not find it.
pub const WARNING_UNDECODABLE_TEXT_LAYER: &str = "undecodable_text_layer";

/// The text of one document and what is known about its structure.
///
/// Guarantees: `text` holds no NUL or other C0 control characters except `\n` and `\t`;
/// `pages` are in order, non-overlapping and on char boundaries of `text`; `headings` are in
/// order of their offsets.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Extracted {
    /// The detected format.
    pub format: Format,
    /// The text. Markdown-shaped (headings as `#` lines) for Markdown, HTML and DOCX.
    pub text: String,
    /// Page spans (PDF only; empty for formats without pages).
    pub pages: Vec<PageSpan>,
    /// Page count of the document, including pages that failed or had no text.
    pub page_count: u32,
    /// The document's own title where it has one.
    pub title: Option<String>,
    /// ISO 639-3 code of the main language, when it can be told reliably.
    pub language: Option<String>,
    /// Headings in document order.
    pub headings: Vec<Heading>,
    /// Pages that failed (PDF only); their text is missing from `text`.
    pub failed_pages: Vec<PageFailure>,
    /// What is missing from `text` although the document has it, by page (PDF only).
    pub warnings: Vec<ExtractWarning>,
    /// The extractor that produced this, see [`EXTRACTOR_VERSION`].
    pub extractor_version: &'static str,
}

/// Extracts the text of a document in any supported format.
///
/// Synchronous and CPU-bound; async callers run it in `spawn_blocking`. Never panics: a panic
/// in a parser is caught and returned as [`ExtractError::Panicked`].
pub fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(ExtractError::too_large("input size (bytes)", limits.max_input_bytes));
    }
    let deadline = Deadline::new(limits.timeout);
    match catch_unwind(AssertUnwindSafe(|| extract_inner(bytes, limits, &deadline))) {
        Ok(result) => result,
        Err(payload) => Err(ExtractError::Panicked(panic_message(payload.as_ref()))),
    }
}

fn extract_inner(bytes: &[u8], limits: &Limits, deadline: &Deadline) -> Result<Extracted, ExtractError> {
    let format = detect(bytes)?;
    let mut doc = match format {
        Format::Pdf => pdf::extract(bytes, limits, deadline)?,
        Format::Text => text::extract_plain(bytes),
        Format::Markdown => markdown::extract(&text::decode(bytes)),
        Format::Html => html::extract(&text::decode(bytes)),
        Format::Docx => docx::extract(bytes, limits)?,
    };
    if doc.text.chars().count() as u64 > limits.max_chars {
        return Err(ExtractError::too_large("extracted text (characters)", limits.max_chars));
    }
    if doc.text.trim().is_empty() {
        return Err(ExtractError::NoExtractableText);
    }
    debug_assert!(!doc.text.contains('\0'));
    doc.language = detect_language(&doc.text);
    Ok(doc)
}

/// A point in time after which extraction gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Option<Instant>,
    limit: Duration,
}

impl Deadline {
    fn new(limit: Duration) -> Self {
        Deadline {
            at: Instant::now().checked_add(limit),
            limit,
        }
    }

    /// Fails with [`ExtractError::Timeout`] once the deadline has passed.
    pub(crate) fn check(&self) -> Result<(), ExtractError> {
        match self.at {
            Some(at) if Instant::now() > at => Err(ExtractError::Timeout {
                seconds: self.limit.as_secs(),
            }),
            _ => Ok(()),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Language of the text from a sample of its start; `None` unless whatlang is confident.
fn detect_language(text: &str) -> Option<String> {
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let info = whatlang::detect(&text[..end])?;
    info.is_reliable().then(|| info.lang().code().to_owned())
}

/// Builds an [`Extracted`] without pages for the formats that have none.
pub(crate) fn unpaged(format: Format, text: String, title: Option<String>, headings: Vec<Heading>) -> Extracted {
    Extracted {
        format,
        text,
        pages: Vec::new(),
        page_count: 0,
        title,
        language: None,
        headings,
        failed_pages: Vec::new(),
        warnings: Vec::new(),
        extractor_version: EXTRACTOR_VERSION,
    }
}

/// Appends `s` to `out` without characters PostgreSQL `text` or a reader cannot use: NUL and
/// other C0/C1 controls (but `\n` and `\t`), U+FFFD and non-characters. Ligatures are expanded
/// and no-break spaces become spaces.
pub(crate) fn push_clean(out: &mut String, s: &str) {
    for c in s.chars() {
        push_clean_char(out, c);
    }
}

pub(crate) fn push_clean_char(out: &mut String, c: char) {
    match c {
        '\n' | '\t' => out.push(c),
        '\r' | '\u{0b}' | '\u{0c}' => out.push('\n'),
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{fffd}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {}
        '\u{a0}' | '\u{2007}' | '\u{202f}' => out.push(' '),
        // An invisible break opportunity in HTML, DOCX and text; PDF fonts map it to '-'.
        '\u{ad}' => {}
        '\u{fb00}' => out.push_str("ff"),
        '\u{fb01}' => out.push_str("fi"),
        '\u{fb02}' => out.push_str("fl"),
        '\u{fb03}' => out.push_str("ffi"),
        '\u{fb04}' => out.push_str("ffl"),
        '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
        _ => out.push(c),
    }
}
