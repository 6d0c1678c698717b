//! Markdown: the source is the text (so chunking can break at its headings); headings and the
//! title are read from it.

use crate::{Extracted, Format, Heading};

/// Extracts a Markdown document from its decoded text.
pub(crate) fn extract(text: &str) -> Extracted {
    let headings = headings(text);
    let title = front_matter_title(text).or_else(|| headings.iter().find(|h| h.level == 1).map(|h| h.text.clone()));
    crate::unpaged(Format::Markdown, text.to_owned(), title, headings)
}

/// ATX (`## x`) and setext (`x` over `===`/`---`) headings outside fenced code blocks.
pub(crate) fn headings(text: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    let mut offset = 0;
    let mut prev: Option<(usize, &str)> = None;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim_end();
        let indented = t.starts_with("    ") || t.starts_with('\t');
        let lead = t.trim_start();
        if let Some(f) = fence {
            if lead.starts_with(f) {
                fence = None;
            }
            prev = None;
            continue;
        }
        if !indented && (lead.starts_with("```") || lead.starts_with("~~~")) {
            fence = Some(&lead[..3]);
            prev = None;
            continue;
        }
        let hashes = lead.bytes().take_while(|&b| b == b'#').count();
        if !indented && (1..=6).contains(&hashes) && (lead.len() == hashes || lead[hashes..].starts_with([' ', '\t'])) {
            let body = lead[hashes..].trim().trim_end_matches('#').trim_end();
            if !body.is_empty() {
                out.push(Heading {
                    level: hashes as u8,
                    text: inline_text(body),
                    offset: start,
                });
            }
            prev = None;
            continue;
        }
        if !indented
            && lead.len() >= 2
            && (lead.bytes().all(|b| b == b'=') || lead.bytes().all(|b| b == b'-'))
            && let Some((pstart, ptext)) = prev
        {
            let level = if lead.starts_with('=') { 1 } else { 2 };
            out.push(Heading {
                level,
                text: inline_text(ptext),
                offset: pstart,
            });
            prev = None;
            continue;
        }
        let plain = !t.is_empty() && !indented && !lead.starts_with(['-', '*', '>', '|', '<']);
        prev = plain.then_some((start, t.trim()));
    }
    out
}

/// Strips the commonest inline markup from heading text: emphasis, code and link targets.
fn inline_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '_' | '`' => {}
            ']' if chars.peek() == Some(&'(') => {
                for d in chars.by_ref() {
                    if d == ')' {
                        break;
                    }
                }
            }
            '[' => {}
            _ => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// `title:` in YAML front matter.
fn front_matter_title(text: &str) -> Option<String> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---")?;
    rest[..end].lines().find_map(|l| {
        let v = l.strip_prefix("title:")?.trim().trim_matches(['"', '\'']);
        (!v.is_empty()).then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_skip_code_and_read_setext() {
        let md = "# Top\n\ntext\n\n```\n# not a heading\n```\n\nSub\n---\n\n### *Deep* [link](x)\n";
        let h = headings(md);
        let got: Vec<(u8, &str)> = h.iter().map(|h| (h.level, h.text.as_str())).collect();
        assert_eq!(got, vec![(1, "Top"), (2, "Sub"), (3, "Deep link")]);
        assert_eq!(&md[h[1].offset..h[1].offset + 3], "Sub");
    }
}
