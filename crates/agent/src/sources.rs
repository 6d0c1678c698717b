//! The sources of an answer: the retrieved passages as the prompt numbers them, and the
//! citations an answer makes to them (`[n]` markers). Pure functions over plain data.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// A retrieved passage the answer may use, in rank order, before it is numbered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The chunk's id.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's file name.
    pub filename: String,
    /// First page the chunk covers, when the format has pages.
    pub page_first: Option<i32>,
    /// Last page the chunk covers.
    pub page_last: Option<i32>,
    /// Headings above the chunk, outermost first.
    pub heading_path: Vec<String>,
    /// Retrieval score (higher is better; its scale depends on the retrieval mode).
    pub score: f64,
    /// The passage's text.
    pub text: String,
    /// Other documents holding the same or a near-identical passage, left out of the sources
    /// for this one (`SearchHit::also_in`), best first.
    pub also_in: Vec<AlsoIn>,
}

/// Another document holding a source's passage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlsoIn {
    /// The document.
    pub document_id: Uuid,
    /// Its file name.
    pub filename: String,
}

/// Pages of a chunk, as clients see them (`{"first": 3, "last": 4}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pages {
    /// First page.
    pub first: i32,
    /// Last page.
    pub last: i32,
}

impl Pages {
    /// The page range of a chunk, if it has one.
    pub fn of(first: Option<i32>, last: Option<i32>) -> Option<Pages> {
        match (first, last) {
            (Some(first), Some(last)) => Some(Pages { first, last }),
            (Some(p), None) | (None, Some(p)) => Some(Pages { first: p, last: p }),
            (None, None) => None,
        }
    }
}

/// A source as it was laid out in the prompt, with its citation number: what the SSE
/// `context` event lists and what `agent_requests.results.context` keeps. The text is left out
/// (it is the chunk's, readable by its id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextEntry {
    /// The number the answer cites it by (`[n]`), from 1.
    pub n: u32,
    /// The chunk's id.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's file name.
    pub filename: String,
    /// Pages the chunk covers.
    pub pages: Option<Pages>,
    /// Headings above the chunk.
    #[serde(default)]
    pub heading_path: Vec<String>,
    /// Retrieval score.
    pub score: f64,
    /// Other documents holding the same passage (omitted when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_in: Vec<AlsoIn>,
}

impl ContextEntry {
    /// `source` numbered `n`.
    pub fn new(n: u32, source: &Source) -> ContextEntry {
        ContextEntry {
            n,
            chunk_id: source.chunk_id,
            document_id: source.document_id,
            filename: source.filename.clone(),
            pages: Pages::of(source.page_first, source.page_last),
            heading_path: source.heading_path.clone(),
            score: source.score,
            also_in: source.also_in.clone(),
        }
    }
}

/// A source the answer referenced: the shape of `copilot_messages.citations` entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The number the answer cites it by.
    pub n: u32,
    /// The chunk's id.
    pub chunk_id: i64,
    /// Its document.
    pub document_id: Uuid,
    /// The document's file name.
    pub filename: String,
    /// Pages the chunk covers.
    pub pages: Option<Pages>,
}

/// The numbers an answer cites, in order of first appearance, each once. Understands `[1]`,
/// `[1][2]`, `[1, 2]` and `[1-3]`; brackets holding anything else (`[a]`, `[]`, `[1.5]`) are
/// text, not citations.
pub fn cited_numbers(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inside = &after[..close];
        if let Some(numbers) = parse_citation(inside) {
            for n in numbers {
                if seen.insert(n) {
                    out.push(n);
                }
            }
            rest = &after[close + 1..];
        } else {
            rest = after;
        }
    }
    out
}

/// The numbers inside one `[...]`, or `None` when it is not a citation. Ranges are bounded so
/// that `[1-100000]` cannot allocate much.
fn parse_citation(inside: &str) -> Option<Vec<u32>> {
    const MAX_RANGE: u32 = 50;
    let inside = inside.trim();
    if inside.is_empty() || inside.len() > 40 {
        return None;
    }
    let mut numbers = Vec::new();
    for part in inside.split([',', ';']) {
        let part = part.trim();
        if let Some((a, b)) = part.split_once(['-', '–']) {
            let (a, b) = (number(a)?, number(b)?);
            if b < a || b - a > MAX_RANGE {
                return None;
            }
            numbers.extend(a..=b);
        } else {
            numbers.push(number(part)?);
        }
    }
    Some(numbers)
}

fn number(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n > 0)
}

/// The citations of `answer`: the context entries it cites by number, in order of first
/// citation. Numbers that match no entry (a model inventing `[9]` with 3 sources) are dropped.
pub fn citations(answer: &str, context: &[ContextEntry]) -> Vec<Citation> {
    cited_numbers(answer)
        .into_iter()
        .filter_map(|n| context.iter().find(|c| c.n == n))
        .map(|c| Citation {
            n: c.n,
            chunk_id: c.chunk_id,
            document_id: c.document_id,
            filename: c.filename.clone(),
            pages: c.pages,
        })
        .collect()
}

/// `text` without its citation markers (and the space before each), for sending an earlier
/// answer back to the model: its numbers referred to that turn's sources, not this one's.
pub fn strip_citations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if parse_citation(&after[..close]).is_some() => {
                out.push_str(rest[..open].trim_end_matches(' '));
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> ContextEntry {
        ContextEntry {
            n,
            chunk_id: i64::from(n) * 10,
            document_id: Uuid::nil(),
            filename: format!("doc{n}.pdf"),
            pages: Pages::of(Some(n as i32), None),
            heading_path: vec![],
            score: 1.0,
            also_in: vec![],
        }
    }

    #[test]
    fn finds_citation_forms_in_order_once() {
        assert_eq!(
            cited_numbers("A [2]. B [1][2]. C [3, 4]. D [5-7]."),
            vec![2, 1, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            cited_numbers("array[i] and [] and [1.5] and [0] and [x1]"),
            Vec::<u32>::new()
        );
        assert_eq!(cited_numbers("nested [[1]] and unclosed [2"), vec![1]);
        assert_eq!(cited_numbers("range too wide [1-1000]"), Vec::<u32>::new());
    }

    #[test]
    fn citations_keep_only_numbers_in_the_context() {
        let context = vec![entry(1), entry(2), entry(3)];
        let c = citations("Yes [3]. Also [9] and [1].", &context);
        assert_eq!(c.iter().map(|c| c.n).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(c[0].chunk_id, 30);
        assert_eq!(c[0].pages, Some(Pages { first: 3, last: 3 }));
    }

    #[test]
    fn stripping_removes_markers_only() {
        assert_eq!(
            strip_citations("Batches hold 64 inputs [1]. See a[i] [2][3]."),
            "Batches hold 64 inputs. See a[i]."
        );
        assert_eq!(strip_citations("no markers"), "no markers");
    }
}
