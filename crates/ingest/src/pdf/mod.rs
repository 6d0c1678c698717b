//! PDF text extraction on lopdf.
//!
//! lopdf parses the file structure (cross-reference tables and streams, object streams,
//! encryption with an empty user password, bounded decompression); this module reads each
//! page's content itself: its own tokenizer and text-state interpreter ([`interp`]) and font
//! decoding ([`font`]). Each page runs on its own behind `catch_unwind`, so one bad page fails
//! that page only. Afterwards running headers and footers are dropped and words hyphenated
//! across line ends are joined.

mod font;
mod interp;
mod lexer;
mod std14;

use crate::{Deadline, ExtractError, ExtractWarning, Extracted, Format, Heading, Limits, PageFailure, PageSpan};
use font::{deref, get_dict};
use interp::{FontCache, Line, Matrix0, PageRun};
use lopdf::{Dictionary, Document, LoadOptions, Object, ObjectId};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

const FORMAT: &str = "PDF";

/// Extracts the text layer of a PDF.
pub(crate) fn extract(bytes: &[u8], limits: &Limits, deadline: &Deadline) -> Result<Extracted, ExtractError> {
    let stream_limit = usize::try_from(limits.max_decompressed_bytes).unwrap_or(usize::MAX);
    let options = LoadOptions {
        max_decompressed_size: Some(stream_limit),
        ..LoadOptions::default()
    };
    let doc = Document::load_mem_with_options(bytes, options).map_err(|e| load_error(e, limits))?;
    if doc.trailer.get(b"Encrypt").is_ok() && doc.encryption_state.is_none() {
        return Err(ExtractError::Encrypted);
    }
    deadline.check()?;
    // A cyclic page tree lists the same page object again and again; keep its first place.
    let mut seen = std::collections::HashSet::new();
    let pages: std::collections::BTreeMap<u32, ObjectId> = doc
        .get_pages()
        .into_values()
        .filter(|id| seen.insert(*id))
        .zip(1u32..)
        .map(|(id, n)| (n, id))
        .collect();
    if pages.is_empty() {
        return Err(ExtractError::malformed(FORMAT, "the document has no pages"));
    }
    if pages.len() as u64 > u64::from(limits.max_pages) {
        return Err(ExtractError::too_large("page count", u64::from(limits.max_pages)));
    }
    let mut fonts = FontCache::new();
    let mut page_lines: Vec<Vec<Line>> = Vec::with_capacity(pages.len());
    let mut failed = Vec::new();
    let mut first_error = None;
    let mut undecodable_pages = Vec::new();
    let mut chars = 0u64;
    for (&number, &id) in &pages {
        deadline.check()?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            page_text(&doc, id, &mut fonts, stream_limit, deadline)
        }));
        let error = match result {
            Ok(Ok((lines, undecodable))) => {
                if undecodable {
                    undecodable_pages.push(number);
                }
                chars += lines.iter().map(|l| l.text.len() as u64).sum::<u64>();
                // Bytes bound characters from above; checked properly at the end.
                if chars > limits.max_chars.saturating_mul(4) {
                    return Err(ExtractError::too_large("extracted text (characters)", limits.max_chars));
                }
                page_lines.push(lines);
                continue;
            }
            Ok(Err(e @ ExtractError::Timeout { .. })) => return Err(e),
            Ok(Err(e)) => e,
            Err(panic) => ExtractError::Panicked(crate::panic_message(panic.as_ref())),
        };
        failed.push(PageFailure {
            page: number,
            reason: error.to_string(),
        });
        first_error.get_or_insert(error);
        page_lines.push(Vec::new());
    }
    if failed.len() == pages.len()
        && let Some(e) = first_error
    {
        return Err(e);
    }
    drop_running_lines(&mut page_lines);
    let numbers: Vec<u32> = pages.keys().copied().collect();
    let (text, spans, offsets) = assemble(&numbers, &page_lines);
    if text.trim().is_empty() {
        return Err(if undecodable_pages.is_empty() {
            ExtractError::NoExtractableText
        } else {
            ExtractError::UndecodableText {
                pages: undecodable_pages,
            }
        });
    }
    let mut warnings = Vec::new();
    if !undecodable_pages.is_empty() {
        warnings.push(ExtractWarning {
            code: crate::WARNING_UNDECODABLE_TEXT_LAYER,
            pages: undecodable_pages,
        });
    }
    let outline = catch_unwind(AssertUnwindSafe(|| outline_headings(&doc, &text, &spans))).unwrap_or_default();
    let (sized, size_title) = size_headings(&page_lines, &offsets);
    let headings = if outline.is_empty() { sized } else { outline };
    Ok(Extracted {
        format: Format::Pdf,
        text,
        pages: spans,
        page_count: pages.len() as u32,
        title: info_title(&doc).or(size_title),
        language: None,
        headings,
        failed_pages: failed,
        warnings,
        extractor_version: crate::EXTRACTOR_VERSION,
    })
}

fn load_error(e: lopdf::Error, limits: &Limits) -> ExtractError {
    use lopdf::{DecompressError, Error, ParseError};
    match e {
        Error::Decompress(DecompressError::MemoryLimitExceeded { .. }) => {
            ExtractError::too_large("decompressed stream size (bytes)", limits.max_decompressed_bytes)
        }
        Error::InvalidPassword | Error::Decryption(_) | Error::UnsupportedSecurityHandler(_) => ExtractError::Encrypted,
        Error::Parse(ParseError::InvalidFileHeader) => ExtractError::malformed(FORMAT, "no valid %PDF header"),
        Error::Parse(ParseError::EndOfInput) => ExtractError::malformed(FORMAT, "the file ends early (truncated?)"),
        Error::Xref(_) | Error::Parse(_) | Error::MissingXrefEntry | Error::InvalidOffset(_) => {
            ExtractError::malformed(
                FORMAT,
                format!("the file structure cannot be read ({e}); it may be truncated or damaged"),
            )
        }
        Error::ReferenceCycle(_) | Error::ReferenceLimit | Error::RecursionLimit => {
            ExtractError::malformed(FORMAT, format!("the object graph loops or nests too deeply ({e})"))
        }
        other => ExtractError::malformed(FORMAT, other.to_string()),
    }
}

/// The page's `/Resources`, inherited from the page tree when the page has none.
fn resources_of(doc: &Document, page: ObjectId) -> Option<&Dictionary> {
    let mut node = doc.get_dictionary(page).ok()?;
    for _ in 0..64 {
        if let Some(r) = get_dict(doc, node, b"Resources") {
            return Some(r);
        }
        node = match node.get(b"Parent").ok().and_then(|p| deref(doc, p)) {
            Some(Object::Dictionary(d)) => d,
            _ => return None,
        };
    }
    None
}

fn page_text(
    doc: &Document,
    page: ObjectId,
    fonts: &mut FontCache,
    stream_limit: usize,
    deadline: &Deadline,
) -> Result<(Vec<Line>, bool), ExtractError> {
    let content = doc
        .get_page_content_with_limit(page, stream_limit)
        .map_err(|e| match e {
            lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded { .. }) => {
                ExtractError::too_large("decompressed page content (bytes)", stream_limit as u64)
            }
            other => ExtractError::malformed(FORMAT, format!("reading the page content: {other}")),
        })?;
    let resources = resources_of(doc, page);
    let mut run = PageRun::new(doc, fonts, stream_limit, deadline);
    run.run(&content, resources, Matrix0::default())?;
    let undecodable = run.undecodable();
    Ok((run.lines(), undecodable))
}

/// Normalised form of a line for recognising running headers and footers: page numbers and
/// other digits do not count. Public so that the extraction benchmark applies the same rule to
/// the reference text it compares against.
pub fn running_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_digit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            last_digit = false;
            if !c.is_whitespace() {
                out.extend(c.to_lowercase());
            }
        }
    }
    out
}

/// How many lines at each end of a page are candidates for a running header or footer.
const EDGE_LINES: usize = 2;

/// Drops lines that recur at the top or bottom of many pages: running headers, footers and
/// page numbers, which would otherwise be repeated into every chunk.
///
/// A line set larger than the body text is a heading, and a heading that recurs is usually a
/// section continued over several pages (a slide deck repeats a slide's title on each of its
/// continuation slides): such a line goes only when it is on two pages in three, as a big
/// running title would be. Otherwise the section's title would be lost on every page.
fn drop_running_lines(pages: &mut [Vec<Line>]) {
    let with_text = pages.iter().filter(|p| !p.is_empty()).count();
    if with_text < 3 {
        return;
    }
    let threshold = with_text.div_ceil(3).max(2);
    let heading_threshold = (with_text * 2).div_ceil(3).max(threshold);
    let body = body_size_key(pages);
    let threshold_of = |l: &Line| {
        if body.is_some_and(|b| is_heading_size(size_key(l.size), b)) {
            heading_threshold
        } else {
            threshold
        }
    };
    let mut top: HashMap<String, usize> = HashMap::new();
    let mut bottom: HashMap<String, usize> = HashMap::new();
    for p in pages.iter() {
        let mut seen = Vec::new();
        for l in p.iter().take(EDGE_LINES) {
            let k = running_key(&l.text);
            if !seen.contains(&k) {
                *top.entry(k.clone()).or_default() += 1;
                seen.push(k);
            }
        }
        seen.clear();
        for l in p.iter().rev().take(EDGE_LINES) {
            let k = running_key(&l.text);
            if !seen.contains(&k) {
                *bottom.entry(k.clone()).or_default() += 1;
                seen.push(k);
            }
        }
    }
    for p in pages.iter_mut() {
        let n = p.len();
        let mut keep: Vec<bool> = vec![true; n];
        for (i, l) in p.iter().enumerate() {
            let k = running_key(&l.text);
            if k.len() > 200 {
                continue;
            }
            let threshold = threshold_of(l);
            if i < EDGE_LINES && top.get(&k).is_some_and(|&c| c >= threshold)
                || i + EDGE_LINES >= n && bottom.get(&k).is_some_and(|&c| c >= threshold)
            {
                keep[i] = false;
            }
        }
        if !keep.contains(&true) {
            // The whole page would go: it is content that repeats (identical pages), not a
            // header around content.
            continue;
        }
        let mut i = 0;
        p.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        if let Some(first) = p.first_mut() {
            first.para_before = false;
        }
    }
}

/// Joins pages and lines into the document text: lines by `\n`, paragraphs and pages by a
/// blank line; a word hyphenated across a line end is joined again.
fn assemble(numbers: &[u32], pages: &[Vec<Line>]) -> (String, Vec<PageSpan>, Vec<Vec<usize>>) {
    let mut text = String::new();
    let mut spans = Vec::with_capacity(pages.len());
    let mut offsets = Vec::with_capacity(pages.len());
    for (number, lines) in numbers.iter().zip(pages) {
        if !lines.is_empty() && !text.is_empty() {
            text.push_str("\n\n");
        }
        let start = text.len();
        let mut line_offsets = Vec::with_capacity(lines.len());
        for (j, line) in lines.iter().enumerate() {
            if j > 0 {
                if line.para_before {
                    text.push_str("\n\n");
                } else if let Some(cut) = hyphen_join(&text, &line.text) {
                    text.truncate(cut);
                } else {
                    text.push('\n');
                }
            }
            line_offsets.push(text.len());
            text.push_str(&line.text);
        }
        spans.push(PageSpan {
            number: *number,
            range: start..text.len(),
        });
        offsets.push(line_offsets);
    }
    (text, spans, offsets)
}

/// Font size as a histogram key (half-point buckets).
fn size_key(size: f32) -> i32 {
    (size * 2.0).round() as i32
}

/// The size of the body text: the size (key) that sets the most bytes.
fn body_size_key(pages: &[Vec<Line>]) -> Option<i32> {
    let mut hist: HashMap<i32, usize> = HashMap::new();
    for l in pages.iter().flatten() {
        *hist.entry(size_key(l.size)).or_default() += l.text.len();
    }
    hist.into_iter().max_by_key(|(k, n)| (*n, -*k)).map(|(k, _)| k)
}

/// Whether text of size `key` is set large enough over the body's to be a heading.
fn is_heading_size(key: i32, body: i32) -> bool {
    key as f32 >= body as f32 * 1.15
}

/// Headings and a title told by font size, for PDFs without an outline: lines set larger
/// than the body text, short, with letters, are headings; the larger, the higher. The title
/// is the largest text on the first page.
fn size_headings(pages: &[Vec<Line>], offsets: &[Vec<usize>]) -> (Vec<Heading>, Option<String>) {
    let total_lines = pages.iter().map(Vec::len).sum::<usize>();
    let Some(body) = body_size_key(pages) else {
        return (Vec::new(), None);
    };
    let is_heading = |l: &Line| {
        is_heading_size(size_key(l.size), body)
            && (2..=120).contains(&l.text.chars().count())
            && l.text.chars().any(char::is_alphabetic)
    };
    let mut levels: Vec<i32> = pages
        .iter()
        .flatten()
        .filter(|l| is_heading(l))
        .map(|l| size_key(l.size))
        .collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    let count = pages.iter().flatten().filter(|l| is_heading(l)).count();
    if count == 0 || count * 4 > total_lines {
        return (Vec::new(), None);
    }
    let mut headings = Vec::new();
    for (lines, offs) in pages.iter().zip(offsets) {
        for (l, &offset) in lines.iter().zip(offs) {
            if is_heading(l) {
                let level = levels.iter().position(|&k| k == size_key(l.size)).unwrap_or(0).min(5) as u8 + 1;
                headings.push(Heading {
                    level,
                    text: l.text.clone(),
                    offset,
                });
            }
        }
    }
    let title = pages.iter().find(|p| !p.is_empty()).and_then(|first| {
        let top = first.iter().map(|l| size_key(l.size)).max()?;
        let start = first.iter().position(|l| size_key(l.size) == top && is_heading(l))?;
        let parts: Vec<&str> = first[start..]
            .iter()
            .take_while(|l| size_key(l.size) == top)
            .take(3)
            .map(|l| l.text.as_str())
            .collect();
        Some(parts.join(" "))
    });
    (headings, title)
}

/// Where to cut `text` to join it to `next` without a hyphen, if `text` ends in a word broken
/// by a hyphen and `next` continues it in lower case.
fn hyphen_join(text: &str, next: &str) -> Option<usize> {
    let mut rev = text.char_indices().rev();
    let (pos, last) = rev.next()?;
    if last != '-' && last != '\u{ad}' {
        return None;
    }
    let (_, before) = rev.next()?;
    let next_first = next.chars().next()?;
    (before.is_alphabetic() && next_first.is_lowercase()).then_some(pos)
}

fn info_title(doc: &Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok().and_then(|o| deref(doc, o)) {
        Some(Object::Dictionary(d)) => d,
        _ => return None,
    };
    let title = lopdf::decode_text_string(deref(doc, info.get(b"Title").ok()?)?).ok()?;
    let mut clean = String::new();
    crate::push_clean(&mut clean, title.trim());
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower = clean.to_lowercase();
    (!clean.is_empty() && lower != "untitled" && !lower.ends_with(".dvi") && !lower.starts_with("microsoft word -"))
        .then_some(clean)
}

/// Headings from the document outline (bookmarks), placed where their title appears on their
/// page, or at the page start.
fn outline_headings(doc: &Document, text: &str, spans: &[PageSpan]) -> Vec<Heading> {
    let Ok(toc) = doc.get_toc() else { return Vec::new() };
    let mut out = Vec::new();
    for entry in toc.toc.iter().take(10_000) {
        let mut title = String::new();
        crate::push_clean(&mut title, entry.title.trim());
        if title.is_empty() {
            continue;
        }
        let Some(span) = spans.iter().find(|s| s.number as usize == entry.page) else {
            continue;
        };
        let page_text = &text[span.range.clone()];
        let offset = page_text
            .find(title.as_str())
            .map_or(span.range.start, |p| span.range.start + p);
        out.push(Heading {
            level: entry.level.clamp(1, 6) as u8,
            text: title,
            offset,
        });
    }
    out.sort_by_key(|h| h.offset);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> Line {
        Line {
            text: t.to_owned(),
            para_before: false,
            size: 10.0,
        }
    }

    #[test]
    fn hyphenated_words_rejoin_and_pages_are_spanned() {
        let (text, spans, _) = assemble(
            &[1, 2],
            &[vec![line("an exam-"), line("ple of text")], vec![line("Next page")]],
        );
        assert_eq!(text, "an example of text\n\nNext page");
        assert_eq!(&text[spans[1].range.clone()], "Next page");
        assert_eq!(hyphen_join("well-", "Known"), None);
    }

    #[test]
    fn a_heading_repeated_on_some_pages_stays() {
        // Six slides: a small running footer on each, and a large slide title continued over
        // the first three ("(cont.)" slides in other decks).
        let mut pages: Vec<Vec<Line>> = (1..=6)
            .map(|i| {
                let title = if i <= 3 {
                    "New Features".to_owned()
                } else {
                    format!("Topic {i}")
                };
                vec![
                    Line {
                        size: 24.0,
                        ..line(&title)
                    },
                    line(&["alpha", "beta", "gamma", "delta", "epsilon", "zeta"][i - 1].repeat(8)),
                    Line {
                        size: 8.0,
                        ..line(&format!("TUG 2003 conference, slide {i}"))
                    },
                ]
            })
            .collect();
        drop_running_lines(&mut pages);
        let texts: Vec<Vec<&str>> = pages
            .iter()
            .map(|p| p.iter().map(|l| l.text.as_str()).collect())
            .collect();
        for (i, p) in texts.iter().enumerate() {
            assert_eq!(p.len(), 2, "slide {}: {p:?}", i + 1);
            assert!(!p[1].starts_with("TUG"), "slide {}: {p:?}", i + 1);
        }
        assert_eq!(texts[2][0], "New Features");
    }

    #[test]
    fn running_headers_and_page_numbers_go() {
        let bodies = ["alpha", "beta", "gamma", "delta", "epsilon"];
        let mut pages: Vec<Vec<Line>> = (1..=5)
            .map(|i| {
                vec![
                    line("ACME Annual Report"),
                    line(bodies[i - 1]),
                    line(&format!("Page {i} of 5")),
                ]
            })
            .collect();
        drop_running_lines(&mut pages);
        for (i, p) in pages.iter().enumerate() {
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].text, bodies[i]);
        }
    }
}
