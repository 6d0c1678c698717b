//! Markdown: the source is the text (so chunking can break at its headings); headings and the
//! title are read from it.

use crate::{Extracted, Format, Heading};

/// Extracts a Markdown document from its decoded text. YAML front matter is metadata, not
/// text: its `title` is the document's title, and the block itself is left out of the text
/// (read as Markdown it would be a setext heading "title: ..."). HTML comments are not shown
/// by any renderer and often hold machine data (the YAML history blocks of Node-style API
/// docs), so they are left out too ([`strip_comments`]).
pub(crate) fn extract(text: &str) -> Extracted {
    let (front, body) = split_front_matter(text);
    let body = strip_comments(body);
    let body = body.as_str();
    let headings = headings(body);
    let title = front
        .and_then(front_matter_title)
        .or_else(|| headings.iter().find(|h| h.level == 1).map(|h| h.text.clone()));
    crate::unpaged(Format::Markdown, body.to_owned(), title, headings)
}

/// Longest front matter block read, in bytes; a longer one is not front matter.
const MAX_FRONT_MATTER: usize = 64 * 1024;

/// Splits YAML front matter off the start of a Markdown text: a `---` line, YAML whose first
/// line is a `key:` or a comment, and a closing `---` or `...` line. Returns the block's
/// content and the text after it; `(None, text)` when the text has none.
pub(crate) fn split_front_matter(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text.strip_prefix("---\n") else {
        return (None, text);
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t == "..." {
            let block = &rest[..offset];
            let looks_like_yaml = block
                .lines()
                .map(str::trim_end)
                .find(|l| !l.is_empty())
                .is_none_or(|first| first.starts_with('#') || is_yaml_key_line(first));
            if !looks_like_yaml {
                break;
            }
            return (Some(block), rest[offset + line.len()..].trim_start_matches('\n'));
        }
        offset += line.len();
        if offset > MAX_FRONT_MATTER {
            break;
        }
    }
    (None, text)
}

/// Removes HTML comments (`<!-- ... -->`, on one line or across lines) outside fenced and
/// indented code blocks and inline code spans. A line that held only a comment goes with it;
/// a paragraph break it stood for is kept. An unclosed comment runs to the end, as it does
/// in a browser.
pub(crate) fn strip_comments(text: &str) -> String {
    if !text.contains("<!--") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<&str> = None;
    let mut in_comment = false;
    // A comment-only line was dropped since the last line written.
    let mut gap = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        let lead = t.trim_start();
        if !in_comment {
            if let Some(f) = fence {
                if lead.starts_with(f) {
                    fence = None;
                }
                out.push_str(line);
                continue;
            }
            let indented = t.starts_with("    ") || t.starts_with('\t');
            if !indented && (lead.starts_with("```") || lead.starts_with("~~~")) {
                fence = Some(&lead[..3]);
            }
            if fence.is_some() || indented || !line.contains("<!--") {
                if gap && lead.is_empty() && (out.is_empty() || out.ends_with("\n\n")) {
                    // The comment's line and a blank line beside it: one paragraph break.
                    gap = false;
                    continue;
                }
                if gap && !lead.is_empty() && !out.is_empty() && !out.ends_with("\n\n") {
                    out.push('\n');
                }
                gap = false;
                out.push_str(line);
                continue;
            }
        }
        let mut kept = String::new();
        let mut rest = line;
        loop {
            if in_comment {
                match rest.find("-->") {
                    Some(e) => {
                        rest = &rest[e + 3..];
                        if kept.ends_with([' ', '\t']) {
                            rest = rest.trim_start_matches([' ', '\t']);
                        }
                        in_comment = false;
                    }
                    None => break,
                }
            }
            match rest.find("<!--") {
                // Inside an inline code span (an odd number of backticks before it): literal.
                Some(s) if (kept.matches('`').count() + rest[..s].matches('`').count()) % 2 == 1 => {
                    kept.push_str(&rest[..s + 4]);
                    rest = &rest[s + 4..];
                }
                Some(s) => {
                    kept.push_str(&rest[..s]);
                    rest = &rest[s + 4..];
                    in_comment = true;
                }
                None => {
                    kept.push_str(rest);
                    break;
                }
            }
        }
        if kept.trim().is_empty() {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        gap = false;
        out.push_str(kept.trim_end());
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `key:` or `key: value` at the start of a line, with a plain YAML key.
fn is_yaml_key_line(line: &str) -> bool {
    let Some((key, rest)) = line.split_once(':') else {
        return false;
    };
    !key.is_empty()
        && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && (rest.is_empty() || rest.starts_with([' ', '\t']))
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

/// The top-level `title:` of a front matter block, unquoted; `None` when it is absent, empty
/// or a block scalar (`|`, `>`) this reader does not unfold.
fn front_matter_title(block: &str) -> Option<String> {
    block.lines().find_map(|l| {
        let v = l.strip_prefix("title:")?.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if e == q && v.len() >= 2 => &v[1..v.len() - 1],
            _ => v.split(" #").next().unwrap_or(v).trim_end(),
        };
        (!v.is_empty() && !v.starts_with(['|', '>'])).then(|| v.to_owned())
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

    #[test]
    fn front_matter_gives_the_title_and_stays_out_of_the_text() {
        let md = "---\ntitle: \"Install guide\"\ntags: [setup]\n---\n\nIntro text.\n\n## Steps\n\nRun it.\n";
        let doc = extract(md);
        assert_eq!(doc.title.as_deref(), Some("Install guide"));
        assert_eq!(doc.text, "Intro text.\n\n## Steps\n\nRun it.\n");
        let got: Vec<(u8, &str)> = doc.headings.iter().map(|h| (h.level, h.text.as_str())).collect();
        assert_eq!(got, vec![(2, "Steps")]);
        assert_eq!(&doc.text[doc.headings[0].offset..][..8], "## Steps");

        // Without a title key the first H1 is the title; YAML's "..." also closes the block.
        let doc = extract("---\nauthor: me # a comment\n...\n# Real title\n\nBody.\n");
        assert_eq!(doc.title.as_deref(), Some("Real title"));
        assert!(doc.text.starts_with("# Real title"));
        assert_eq!(
            front_matter_title("title: Plain words # note\n").as_deref(),
            Some("Plain words")
        );
        assert_eq!(front_matter_title("title: >-\n  folded\n"), None);

        // A thematic break followed by prose is not front matter.
        let md = "---\nJust a paragraph after a rule.\n---\n";
        assert_eq!(split_front_matter(md), (None, md));
        // Nor is an unclosed block.
        assert_eq!(split_front_matter("---\ntitle: x\nno end\n").0, None);
    }

    #[test]
    fn html_comments_are_dropped_outside_code() {
        // The shape of Node's API docs: a YAML history block under each heading.
        let md = "## fs.access(path[, mode], callback)\n<!-- YAML\nadded: v0.11.15\nchanges:\n  - version: v7.6.0\n    pr-url: https://github.com/nodejs/node/pull/10739\n-->\n\n* `path` {string}\n\nTests a user's permissions.<!-- inline --> Done.\n\n```html\n<!-- kept in code -->\n```\n\n    <!-- kept, indented code -->\n\nUse `<!--` to open one.\nBefore\n<!-- gone -->\nAfter\n";
        assert_eq!(
            strip_comments(md),
            "## fs.access(path[, mode], callback)\n\n* `path` {string}\n\nTests a user's permissions. Done.\n\n```html\n<!-- kept in code -->\n```\n\n    <!-- kept, indented code -->\n\nUse `<!--` to open one.\nBefore\n\nAfter\n"
        );
        // Unclosed: to the end.
        assert_eq!(strip_comments("Text.\n<!-- never closed\nmore\n"), "Text.\n");
        let doc = extract("# T\n<!-- x -->\n## Sub\n");
        assert_eq!(doc.text, "# T\n\n## Sub\n");
        assert_eq!(&doc.text[doc.headings[1].offset..][..6], "## Sub");
    }
}
