//! HTML: a forgiving tag-soup reader that keeps what a reader of the page sees as content
//! (headings, paragraphs, lists, tables, the title) and drops scripts, styles and navigation.
//! The output is Markdown-shaped so chunking breaks at the page's headings.

use crate::{Extracted, Format, markdown};

/// Elements whose whole content is dropped.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "nav", "iframe", "object", "canvas", "select", "button",
];
/// Elements that start a new paragraph.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "blockquote",
    "figure",
    "figcaption",
    "table",
    "ul",
    "ol",
    "dl",
    "dd",
    "dt",
    "form",
    "fieldset",
    "address",
    "details",
    "summary",
    "hr",
    "body",
    "center",
    "caption",
];

/// Extracts an HTML document from its decoded text.
pub(crate) fn extract(html: &str) -> Extracted {
    let mut w = Writer::default();
    let mut title: Option<String> = None;
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        w.text(&html[text_start..i]);
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            i = rest.find("-->").map_or(bytes.len(), |e| i + e + 3);
            text_start = i;
            continue;
        }
        let Some(tag) = parse_tag(rest) else {
            // A lone '<' is text.
            i += 1;
            w.text("<");
            text_start = i;
            continue;
        };
        i += tag.len;
        text_start = i;
        let name = tag.name.as_str();
        if tag.closing {
            w.close(name);
            continue;
        }
        let role_nav =
            tag.attrs_lower.contains("role=\"navigation\"") || tag.attrs_lower.contains("aria-hidden=\"true\"");
        if SKIPPED.contains(&name) || role_nav || name == "title" || name == "textarea" {
            if tag.self_closing {
                continue;
            }
            let end = find_close(html, i, name);
            if name == "title" && title.is_none() {
                let t = collapse(&html_escape::decode_html_entities(&html[i..end.0]));
                if !t.is_empty() {
                    title = Some(t);
                }
            }
            i = end.1;
            text_start = i;
            continue;
        }
        w.open(name, tag.self_closing);
    }
    w.text(&html[text_start.min(html.len())..]);
    let text = w.finish();
    let headings = markdown::headings(&text);
    let title = title.or_else(|| headings.iter().find(|h| h.level == 1).map(|h| h.text.clone()));
    crate::unpaged(Format::Html, text, title, headings)
}

struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    attrs_lower: String,
    len: usize,
}

/// Parses `<name attrs>` or `</name>` at the start of `s`; `None` when it is not a tag.
fn parse_tag(s: &str) -> Option<Tag> {
    let b = s.as_bytes();
    let mut j = 1;
    let closing = b.get(1) == Some(&b'/');
    if closing {
        j += 1;
    }
    let first = *b.get(j)?;
    if first == b'!' || first == b'?' {
        // Doctype, CDATA or processing instruction: skip to '>'.
        let end = s.find('>').map_or(s.len(), |e| e + 1);
        return Some(Tag {
            name: String::new(),
            closing: true,
            self_closing: true,
            attrs_lower: String::new(),
            len: end,
        });
    }
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = j + b[j..]
        .iter()
        .position(|c| !c.is_ascii_alphanumeric() && *c != b'-')
        .unwrap_or(b.len() - j);
    let name = s[j..name_end].to_ascii_lowercase();
    // Find the closing '>' outside quoted attribute values.
    let mut k = name_end;
    let mut quote: Option<u8> = None;
    while k < b.len() {
        match (quote, b[k]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b[k]),
            (None, b'>') => break,
            _ => {}
        }
        k += 1;
    }
    let attrs = &s[name_end..k.min(s.len())];
    Some(Tag {
        self_closing: attrs.trim_end().ends_with('/')
            || matches!(name.as_str(), "br" | "hr" | "img" | "meta" | "link" | "input"),
        attrs_lower: attrs.to_ascii_lowercase(),
        name,
        closing,
        len: (k + 1).min(s.len()),
    })
}

/// The byte range end of the content of `name` opened before `from`, and the position after
/// its closing tag (nested elements of the same name are counted).
fn find_close(html: &str, from: usize, name: &str) -> (usize, usize) {
    let lower = html[from..].to_ascii_lowercase();
    let open = format!("<{name}");
    let close = format!("</{name}");
    let raw = matches!(name, "script" | "style" | "textarea" | "title");
    let mut depth = 1;
    let mut pos = 0;
    while let Some(c) = lower[pos..].find(&close) {
        let c = pos + c;
        if !raw {
            depth += lower[pos..c].matches(&open).filter(|_| true).count();
        }
        depth -= 1;
        let after = lower[c..].find('>').map_or(lower.len(), |e| c + e + 1);
        if depth == 0 {
            return (from + c, from + after);
        }
        pos = after;
    }
    (html.len(), html.len())
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Builds the Markdown-shaped output.
#[derive(Default)]
struct Writer {
    out: String,
    pre: usize,
    heading: bool,
    lists: Vec<Option<u32>>,
    cell_in_row: usize,
}

impl Writer {
    fn text(&mut self, raw: &str) {
        if raw.is_empty() {
            return;
        }
        let decoded = html_escape::decode_html_entities(raw);
        if self.pre > 0 {
            crate::push_clean(&mut self.out, &decoded);
            return;
        }
        for (n, word) in decoded.split(|c: char| c.is_whitespace() && c != '\u{a0}').enumerate() {
            if word.is_empty() {
                if n == 0 {
                    self.space();
                }
                continue;
            }
            if n > 0 {
                self.space();
            }
            crate::push_clean(&mut self.out, word);
        }
        if decoded.ends_with(|c: char| c.is_whitespace()) {
            self.space();
        }
    }

    fn space(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
            self.out.push(' ');
        }
    }

    fn trim_trailing_spaces(&mut self) {
        let t = self.out.trim_end_matches(' ').len();
        self.out.truncate(t);
    }

    fn newline(&mut self) {
        self.trim_trailing_spaces();
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    fn blank_line(&mut self) {
        self.newline();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn open(&mut self, name: &str, self_closing: bool) {
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.blank_line();
                let level = usize::from(name.as_bytes()[1] - b'0');
                self.out.push_str(&"#".repeat(level));
                self.out.push(' ');
                self.heading = true;
            }
            "br" => self.newline(),
            "pre" => {
                self.blank_line();
                self.pre += 1;
            }
            "ul" | "ol" => {
                if self.lists.is_empty() {
                    self.blank_line();
                } else {
                    self.newline();
                }
                if !self_closing {
                    self.lists.push((name == "ol").then_some(0));
                }
            }
            "li" => {
                self.newline();
                let depth = self.lists.len().saturating_sub(1);
                self.out.push_str(&"  ".repeat(depth));
                match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        let marker = format!("{n}. ");
                        self.out.push_str(&marker);
                    }
                    _ => self.out.push_str("- "),
                }
            }
            "tr" => {
                self.newline();
                self.cell_in_row = 0;
            }
            "td" | "th" => {
                if self.cell_in_row > 0 {
                    self.trim_trailing_spaces();
                    self.out.push_str(" | ");
                }
                self.cell_in_row += 1;
            }
            _ if BLOCKS.contains(&name) => self.blank_line(),
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.heading = false;
                self.blank_line();
            }
            "pre" => {
                self.pre = self.pre.saturating_sub(1);
                self.blank_line();
            }
            "ul" | "ol" => {
                self.lists.pop();
                if self.lists.is_empty() {
                    self.blank_line();
                }
            }
            "li" | "tr" => self.newline(),
            _ if BLOCKS.contains(&name) => self.blank_line(),
            _ => {}
        }
    }

    fn finish(mut self) -> String {
        self.trim_trailing_spaces();
        // Headings were written with their newlines turned into spaces; fold any blank
        // runs longer than one line.
        let mut out = String::with_capacity(self.out.len());
        let mut newlines = 0;
        for line in self.out.split('\n') {
            let line = line.trim_end();
            if line.trim().is_empty() {
                newlines += 1;
                continue;
            }
            if !out.is_empty() {
                out.push_str(if newlines > 0 { "\n\n" } else { "\n" });
            }
            newlines = 0;
            out.push_str(line);
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = self.heading;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_content_and_drops_chrome() {
        let html = r#"<!DOCTYPE html><html><head><title>The &amp; Title</title><style>p{}</style>
<script>var x = "<p>no</p>";</script></head><body><nav><a href="/">Home</a></nav>
<h1>Main   heading</h1><p>First <b>para</b>graph.</p><ul><li>one</li><li>two</li></ul>
<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table></body></html>"#;
        let d = extract(html);
        assert_eq!(d.title.as_deref(), Some("The & Title"));
        assert_eq!(
            d.text,
            "# Main heading\n\nFirst paragraph.\n\n- one\n- two\n\na | b\n1 | 2\n"
        );
        assert_eq!(d.headings.len(), 1);
    }
}
