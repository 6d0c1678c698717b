//! Token-exact chunking with text-splitter and tiktoken, and the metadata each chunk carries.

use crate::{ChunkError, Extracted, Heading, PageSpan};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;

/// Longest piece of text handed to the splitter at once. text-splitter's cost grows faster
/// than linearly with the length of one string (8-11x slower on 13.9 MB as one string than
/// per document, FACTS.md), so long documents are cut at paragraph breaks into segments of
/// about this size first; a chunk never spans two segments.
const SEGMENT_BYTES: usize = 48 * 1024;

/// How text is cut into chunks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Largest chunk, in tokens.
    pub max_tokens: u32,
    /// Tokens shared by consecutive chunks (at most).
    pub overlap_tokens: u32,
    /// tiktoken encoding counting the tokens: `cl100k_base`, `o200k_base`, `p50k_base`,
    /// `p50k_edit`, `r50k_base` or `o200k_harmony`.
    pub tokenizer: String,
}

impl ChunkSettings {
    /// The settings configured for this deployment.
    pub fn from_config(c: &ragpipe_core::config::Chunking) -> Self {
        ChunkSettings {
            max_tokens: c.max_tokens,
            overlap_tokens: c.overlap_tokens,
            tokenizer: c.tokenizer.clone(),
        }
    }
}

impl Default for ChunkSettings {
    /// 512 tokens, 64 overlap, cl100k_base: the configuration defaults.
    fn default() -> Self {
        ChunkSettings {
            max_tokens: 512,
            overlap_tokens: 64,
            tokenizer: "cl100k_base".to_owned(),
        }
    }
}

/// One chunk of a document, ready to embed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Chunk {
    /// 0-based position in the document's chunk list.
    pub index: u32,
    /// The chunk's text: exactly `text[byte_range]` of the extracted text.
    pub content: String,
    /// Tokens in `content` by the configured tokenizer (no special tokens).
    pub token_count: u32,
    /// Where the chunk lies in [`Extracted::text`].
    pub byte_range: Range<usize>,
    /// First page the chunk touches (paged formats only).
    pub page_first: Option<u32>,
    /// Last page the chunk touches (paged formats only).
    pub page_last: Option<u32>,
    /// Headings in force where the chunk starts, outermost first.
    pub heading_path: Vec<String>,
}

/// Cuts extracted documents into chunks. Build it once and share it: building loads the
/// tokenizer (60-90 ms the first time in a process); chunking is then `&self` and
/// thread-safe.
pub struct Chunker {
    settings: ChunkSettings,
    bpe: &'static CoreBPE,
    model_limit: Option<ModelLimit>,
}

/// A second limit every chunk holds to: at most `max_tokens` as counted by `count`, the
/// embedding model's own tokenizer when it is not tiktoken's (the local model's word pieces,
/// special tokens included), so that the model reads every chunk whole.
#[derive(Clone)]
pub struct ModelLimit {
    /// The most tokens a chunk may be read as.
    pub max_tokens: usize,
    /// The model's count of a text.
    pub count: std::sync::Arc<dyn Fn(&str) -> usize + Send + Sync>,
}

impl std::fmt::Debug for ModelLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelLimit")
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// A token counter that remembers the sizes text-splitter asked for, keyed by the slice's
/// address and length, so the size of each final chunk is looked up instead of tokenizing
/// the chunk a second time (tokenizing is nearly all of chunking's cost).
///
/// With a [`ModelLimit`], a text's size is the larger of its tiktoken count and its model count
/// scaled to `max_tokens` units (`⌈model × max_tokens / limit⌉`): a chunk of at most
/// `max_tokens` is then within both limits.
/// A slice of the segment being split: address, length, hash of the text.
type SliceKey = (usize, usize, u64);
/// A slice's size as text-splitter sees it, and its tiktoken count.
type Sizes = (usize, usize);

struct MemoSizer<'a> {
    bpe: &'static CoreBPE,
    model_limit: Option<&'a ModelLimit>,
    max_tokens: usize,
    sizes: RefCell<HashMap<SliceKey, Sizes>>,
}

impl MemoSizer<'_> {
    fn count(&self, s: &str) -> (usize, usize) {
        // The address and length identify a slice of the segment being split; the hash makes
        // a temporary string that reuses a freed address unable to collide.
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(s, &mut h);
        let key = (s.as_ptr() as usize, s.len(), std::hash::Hasher::finish(&h));
        if let Some(&n) = self.sizes.borrow().get(&key) {
            return n;
        }
        let tiktoken = self.bpe.encode_ordinary(s).len();
        let size = match self.model_limit {
            None => tiktoken,
            Some(limit) => {
                let model = (limit.count)(s);
                tiktoken.max(model.saturating_mul(self.max_tokens).div_ceil(limit.max_tokens.max(1)))
            }
        };
        self.sizes.borrow_mut().insert(key, (size, tiktoken));
        (size, tiktoken)
    }
}

impl ChunkSizer for MemoSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk).0
    }
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The process-wide tokenizer for a tiktoken encoding name.
pub(crate) fn tokenizer(name: &str) -> Result<&'static CoreBPE, ChunkError> {
    use tiktoken_rs::*;
    let build: fn() -> &'static CoreBPE = match name {
        "cl100k_base" => cl100k_base_singleton,
        "o200k_base" => o200k_base_singleton,
        "o200k_harmony" => o200k_harmony_singleton,
        "p50k_base" => p50k_base_singleton,
        "p50k_edit" => p50k_edit_singleton,
        "r50k_base" | "gpt2" => r50k_base_singleton,
        _ => return Err(ChunkError::UnknownTokenizer { name: name.to_owned() }),
    };
    // The singletons decode embedded vocabularies; a failure there is a build defect, but
    // it must still not take the process down.
    std::panic::catch_unwind(build).map_err(|_| ChunkError::Tokenizer {
        name: name.to_owned(),
        reason: "vocabulary failed to load".into(),
    })
}

impl Chunker {
    /// Builds a chunker. Fails on an unknown tokenizer or sizes that do not fit together
    /// (`overlap_tokens` must be smaller than `max_tokens`, which must be at least 1).
    pub fn new(settings: ChunkSettings) -> Result<Chunker, ChunkError> {
        if settings.max_tokens == 0 {
            return Err(ChunkError::InvalidSettings("max_tokens must be at least 1".into()));
        }
        if settings.overlap_tokens >= settings.max_tokens {
            return Err(ChunkError::InvalidSettings(format!(
                "overlap_tokens {} must be smaller than max_tokens {}",
                settings.overlap_tokens, settings.max_tokens
            )));
        }
        let bpe = tokenizer(&settings.tokenizer)?;
        ChunkConfig::new(settings.max_tokens as usize)
            .with_overlap(settings.overlap_tokens as usize)
            .map_err(|e| ChunkError::InvalidSettings(e.to_string()))?;
        Ok(Chunker {
            bpe,
            settings,
            model_limit: None,
        })
    }

    /// This chunker with a second limit (the embedding model's own tokenizer and input limit):
    /// every chunk is then also at most `limit.max_tokens` by `limit.count`.
    pub fn with_model_limit(mut self, limit: ModelLimit) -> Chunker {
        self.model_limit = Some(limit);
        self
    }

    /// The embedding model's limit this chunker also holds chunks to, if any.
    pub fn model_limit(&self) -> Option<&ModelLimit> {
        self.model_limit.as_ref()
    }

    /// The settings this chunker was built with (recorded with every chunk set).
    pub fn settings(&self) -> &ChunkSettings {
        &self.settings
    }

    /// Tokens in `text` by this chunker's tokenizer.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }

    /// Cuts a document into chunks.
    ///
    /// Guarantees: chunks are in text order with increasing starts; each `content` is
    /// `doc.text[byte_range]`, non-empty, trimmed of surrounding whitespace and at most
    /// `max_tokens` tokens (and within the [`ModelLimit`], if one was given); together they cover every non-whitespace character of the text;
    /// consecutive chunks overlap by at most `overlap_tokens` tokens. The same text and
    /// settings always give the same chunks.
    pub fn chunk(&self, doc: &Extracted) -> Vec<Chunk> {
        let markdown = doc.format.is_markdown_shaped();
        let sizer = MemoSizer {
            bpe: self.bpe,
            model_limit: self.model_limit.as_ref(),
            max_tokens: self.settings.max_tokens as usize,
            sizes: RefCell::new(HashMap::new()),
        };
        let config = || {
            ChunkConfig::new(self.settings.max_tokens as usize)
                .with_overlap(self.settings.overlap_tokens as usize)
                .expect("overlap was checked against max_tokens in Chunker::new")
                .with_sizer(&sizer)
        };
        let (plain, md) = (TextSplitter::new(config()), MarkdownSplitter::new(config()));
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut path = HeadingCursor::new(&doc.headings);
        for seg in segments(&doc.text, markdown) {
            let piece = &doc.text[seg.clone()];
            let pieces: Box<dyn Iterator<Item = (usize, &str)>> = if markdown {
                Box::new(md.chunk_indices(piece))
            } else {
                Box::new(plain.chunk_indices(piece))
            };
            for (offset, content) in pieces {
                if content.is_empty() {
                    continue;
                }
                let start = seg.start + offset;
                let byte_range = start..start + content.len();
                // text-splitter keeps a line's indentation when a chunk starts at a line
                // (Markdown code), so a short chunk can be followed by one that contains it;
                // keep only the larger, so chunks stay in order.
                if let Some(last) = chunks.last() {
                    if last.byte_range.start <= byte_range.start && byte_range.end <= last.byte_range.end {
                        continue;
                    }
                    if byte_range.start <= last.byte_range.start && last.byte_range.end <= byte_range.end {
                        chunks.pop();
                    }
                }
                // text-splitter does not always hold a chunk to the model's count (a run of
                // punctuation, one tiktoken token, is a word piece per character: a line of 119
                // `=` in C comments); such a chunk is cut again until every piece fits.
                let mut ranges = Vec::new();
                match self.model_limit.as_ref() {
                    Some(limit) if (limit.count)(content) > limit.max_tokens => {
                        split_to_fit(&doc.text, byte_range, limit, &mut ranges);
                    }
                    _ => ranges.push(byte_range),
                }
                for byte_range in ranges {
                    let content = &doc.text[byte_range.clone()];
                    let (page_first, page_last) = page_range(&doc.pages, &byte_range);
                    chunks.push(Chunk {
                        index: chunks.len() as u32,
                        content: content.to_owned(),
                        token_count: sizer.count(content).1 as u32,
                        heading_path: path.at(byte_range.start),
                        byte_range,
                        page_first,
                        page_last,
                    });
                }
            }
            sizer.sizes.borrow_mut().clear();
        }
        chunks
    }
}

/// Cuts `text[range]` in two near its middle (at a line break, else a space, else any character
/// boundary), again and again, until every piece fits `limit` or is a single character; pieces
/// are trimmed of surrounding whitespace and listed in text order.
fn split_to_fit(text: &str, range: Range<usize>, limit: &ModelLimit, out: &mut Vec<Range<usize>>) {
    let piece = &text[range.clone()];
    if piece.chars().nth(1).is_none() || (limit.count)(piece) <= limit.max_tokens {
        out.push(range);
        return;
    }
    let (quarter, middle, three_quarters) = (piece.len() / 4, piece.len() / 2, piece.len() * 3 / 4);
    let nearest = |needle: char| {
        piece
            .match_indices(needle)
            .map(|(i, _)| i)
            .filter(|&i| quarter <= i && i <= three_quarters)
            .min_by_key(|&i| i.abs_diff(middle))
    };
    let cut = nearest('\n').or_else(|| nearest(' ')).unwrap_or_else(|| {
        let mut i = middle;
        while !piece.is_char_boundary(i) {
            i += 1;
        }
        i
    });
    for part in [range.start..range.start + cut, range.start + cut..range.end] {
        let part_text = &text[part.clone()];
        let trimmed_start = part.start + (part_text.len() - part_text.trim_start().len());
        let trimmed_end = part.end - (part_text.len() - part_text.trim_end().len());
        if trimmed_start < trimmed_end {
            split_to_fit(text, trimmed_start..trimmed_end, limit, out);
        }
    }
}

/// Cuts `text` into pieces of about [`SEGMENT_BYTES`] at the strongest break available:
/// a Markdown heading, a blank line, a line end, a space.
fn segments(text: &str, markdown: bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > SEGMENT_BYTES {
        let mut lo = start + SEGMENT_BYTES / 2;
        let mut hi = start + SEGMENT_BYTES;
        while !text.is_char_boundary(lo) {
            lo += 1;
        }
        while !text.is_char_boundary(hi) {
            hi -= 1;
        }
        let window = &text[lo..hi];
        let cut = markdown
            .then(|| window.rfind("\n#").map(|p| p + 1))
            .flatten()
            .or_else(|| window.rfind("\n\n").map(|p| p + 2))
            .or_else(|| window.rfind('\n').map(|p| p + 1))
            .or_else(|| window.rfind(' ').map(|p| p + 1))
            .map_or(hi, |p| lo + p);
        out.push(start..cut);
        start = cut;
    }
    if start < text.len() {
        out.push(start..text.len());
    }
    out
}

fn page_range(pages: &[PageSpan], r: &Range<usize>) -> (Option<u32>, Option<u32>) {
    if pages.is_empty() || r.is_empty() {
        return (None, None);
    }
    let first = pages.partition_point(|p| p.range.end <= r.start).min(pages.len() - 1);
    let last = pages
        .partition_point(|p| p.range.start < r.end)
        .saturating_sub(1)
        .max(first);
    (Some(pages[first].number), Some(pages[last].number))
}

/// The heading path in force at a byte offset; cheap for non-decreasing offsets.
struct HeadingCursor<'a> {
    headings: &'a [Heading],
    next: usize,
    stack: Vec<&'a Heading>,
}

impl<'a> HeadingCursor<'a> {
    fn new(headings: &'a [Heading]) -> Self {
        HeadingCursor {
            headings,
            next: 0,
            stack: Vec::new(),
        }
    }

    fn at(&mut self, offset: usize) -> Vec<String> {
        if self.next > 0 && self.headings.get(self.next - 1).is_some_and(|h| h.offset > offset) {
            self.next = 0;
            self.stack.clear();
        }
        while let Some(h) = self.headings.get(self.next).filter(|h| h.offset <= offset) {
            while self.stack.last().is_some_and(|top| top.level >= h.level) {
                self.stack.pop();
            }
            self.stack.push(h);
            self.next += 1;
        }
        self.stack.iter().map(|h| h.text.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_text_and_break_at_paragraphs() {
        let para = "word ".repeat(100) + "\n\n";
        let text = para.repeat(500);
        let segs = segments(&text, false);
        assert!(segs.len() > 1);
        assert_eq!(segs[0].start, 0);
        assert_eq!(segs.last().map(|s| s.end), Some(text.len()));
        for w in segs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert!(text[..w[0].end].ends_with("\n\n"));
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = ChunkSettings {
            max_tokens: 10,
            overlap_tokens: 10,
            tokenizer: "cl100k_base".into(),
        };
        assert!(matches!(Chunker::new(bad), Err(ChunkError::InvalidSettings(_))));
        let bad = ChunkSettings {
            tokenizer: "nope".into(),
            ..ChunkSettings::default()
        };
        assert!(matches!(Chunker::new(bad), Err(ChunkError::UnknownTokenizer { .. })));
    }

    #[test]
    fn a_model_limit_caps_chunks_by_the_models_count_too() {
        let mut doc = crate::extract(b"x", &crate::Limits::default()).expect("one letter is text");
        doc.text = "Ein ausgesprochen langes Wort folgt dem anderen. ".repeat(400);
        doc.text
            .push_str(&format!("\n/*\n {} \n hooks\n {} */\n", "=".repeat(119), "=".repeat(119)).repeat(20));
        // A stand-in for a model's word pieces: one per `=`, one per four other bytes, two
        // special tokens (a run of `=` is one tiktoken token but a piece per character).
        let count = |t: &str| t.chars().filter(|&c| c == '=').count() + t.len().div_ceil(4) + 2;
        let settings = ChunkSettings {
            max_tokens: 200,
            overlap_tokens: 20,
            tokenizer: "cl100k_base".into(),
        };
        let plain = Chunker::new(settings.clone()).expect("valid settings");
        assert!(
            plain.chunk(&doc).iter().any(|c| count(&c.content) > 64),
            "without the limit chunks are longer than the model reads"
        );
        let limited = Chunker::new(settings)
            .expect("valid settings")
            .with_model_limit(ModelLimit {
                max_tokens: 64,
                count: std::sync::Arc::new(count),
            });
        let chunks = limited.chunk(&doc);
        assert!(chunks.len() > 10);
        for c in &chunks {
            assert!(
                count(&c.content) <= 64,
                "{} model tokens: {:?}",
                count(&c.content),
                c.content
            );
            assert_eq!(
                c.token_count as usize,
                limited.count_tokens(&c.content),
                "tiktoken count kept"
            );
        }
        let covered: usize = chunks.iter().map(|c| c.content.split_whitespace().count()).sum();
        assert!(
            covered >= doc.text.split_whitespace().count(),
            "every word is in some chunk"
        );
    }
}
