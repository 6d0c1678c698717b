//! HTML: a forgiving tag-soup reader that keeps what a reader of the page sees as content
//! (headings, paragraphs, lists, tables, the title) and drops scripts, styles and navigation.
//! The output is Markdown-shaped so chunking breaks at the page's headings.
//!
//! Navigation is dropped in two ways. By markup: `<nav>`, `role="navigation"`, and the class or
//! id names manual generators give their navigation bars (DocBook's `navheader`/`navfooter`,
//! breadcrumbs). By shape, for pages whose navigation is plain links ([`nav_lines`]): a line
//! made only of short links and separators ("Prev | Up | Home | Next", "Apache > HTTP Server >
//! Documentation") is dropped wherever it is outside a table, and a block of short link-only
//! lines (a site menu as a list) is dropped before the page's first heading or paragraph and
//! after its last. A paragraph with words of its own around its links is kept.

use crate::{Extracted, Format, markdown};
use std::ops::Range;

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
        let role_nav = tag.attrs_lower.contains("role=\"navigation\"")
            || tag.attrs_lower.contains("aria-hidden=\"true\"")
            || nav_class(&tag.attrs_lower);
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
        if name == "a" && !tag.attrs_lower.contains("href") {
            // An anchor, not a link.
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

/// Class or id names of navigation bars (whole names, compared lowercase).
const NAV_NAMES: &[&str] = &[
    "navheader",
    "navfooter",
    "breadcrumb",
    "breadcrumbs",
    "skip-link",
    "skiplink",
    "navbar",
];

/// Whether the tag's `class` or `id` names a navigation bar.
fn nav_class(attrs_lower: &str) -> bool {
    ["class", "id"].iter().any(|attr| {
        attr_value(attrs_lower, attr).is_some_and(|v| v.split_ascii_whitespace().any(|n| NAV_NAMES.contains(&n)))
    })
}

/// The value of `name=` in an attribute string (quoted or not).
fn attr_value<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(p) = attrs[from..].find(name) {
        let at = from + p;
        from = at + name.len();
        let before_ok = at == 0 || attrs.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = attrs[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        return Some(match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest
                .split(|c: char| c.is_ascii_whitespace() || c == '>')
                .next()
                .unwrap_or(""),
        });
    }
    None
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
    /// Start of the link being written, if any.
    link_open: Option<usize>,
    /// Byte ranges of `out` written inside `<a>` elements, in order.
    links: Vec<Range<usize>>,
    /// Offsets in `out` where a table row's line starts.
    table_rows: Vec<usize>,
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
                self.table_rows.push(self.out.len());
            }
            "a" => {
                self.end_link();
                self.link_open = Some(self.out.len());
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
            "a" => self.end_link(),
            _ if BLOCKS.contains(&name) => self.blank_line(),
            _ => {}
        }
    }

    fn end_link(&mut self) {
        if let Some(start) = self.link_open.take()
            && start < self.out.len()
        {
            self.links.push(start..self.out.len());
        }
    }

    fn finish(mut self) -> String {
        self.trim_trailing_spaces();
        self.end_link();
        let dropped = nav_lines(&self.out, &self.links, &self.table_rows);
        // Headings were written with their newlines turned into spaces; fold any blank
        // runs longer than one line.
        let mut out = String::with_capacity(self.out.len());
        let mut newlines = 0;
        for (n, line) in self.out.split('\n').enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() || dropped[n] {
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

/// Longest link text, in words, that a navigation line is made of.
const NAV_LINK_WORDS: usize = 6;
/// A line of text with at least this many words of its own ends the page's leading stretch
/// (and, read from the end, starts its trailing one).
const CONTENT_WORDS: usize = 8;
/// Characters that separate the links of a navigation bar.
const NAV_SEPARATORS: &[char] = &[
    '|', '»', '›', '·', '>', '/', '•', '←', '→', '«', '‹', '^', ',', '[', ']',
];

/// What one output line is, for navigation removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Blank,
    Heading,
    /// Only short links (and separators, list markers, or with `strong` a short label).
    /// `strong`: a bar of several links joined by separators, navigation wherever it is.
    Nav {
        strong: bool,
    },
    /// Anything else, with the number of words outside links.
    Text {
        words: usize,
    },
}

/// Which lines of `out` (split at `\n`) are navigation to drop: strong navigation lines
/// anywhere outside tables, and link-only lines before the first heading or
/// [`CONTENT_WORDS`]-word line and after the last.
fn nav_lines(out: &str, links: &[Range<usize>], table_rows: &[usize]) -> Vec<bool> {
    let mut kinds = Vec::new();
    let mut start = 0;
    for line in out.split('\n') {
        let range = start..start + line.len();
        start = range.end + 1;
        let in_table = table_rows.iter().any(|&r| range.contains(&r) || r == range.start);
        kinds.push(line_kind(out, range, links, in_table));
    }
    let stops = |k: &LineKind| {
        matches!(k, LineKind::Heading) || matches!(k, LineKind::Text { words } if *words >= CONTENT_WORDS)
    };
    let first = kinds.iter().position(stops).unwrap_or(kinds.len());
    let last = kinds.iter().rposition(stops).map_or(0, |l| l + 1);
    kinds
        .iter()
        .enumerate()
        .map(|(n, k)| match k {
            LineKind::Nav { strong: true } => true,
            LineKind::Nav { strong: false } => n < first || n >= last,
            _ => false,
        })
        .collect()
}

fn line_kind(out: &str, range: Range<usize>, links: &[Range<usize>], in_table: bool) -> LineKind {
    let line = &out[range.clone()];
    let lead = line.trim_start();
    if lead.is_empty() {
        return LineKind::Blank;
    }
    if lead.starts_with("# ") || lead.starts_with("## ") || lead.starts_with("### ") || lead.starts_with("#### ") {
        return LineKind::Heading;
    }
    // The line's text outside links (links blanked), and its link texts.
    let mut outside = String::with_capacity(line.len());
    let mut link_texts: Vec<String> = Vec::new();
    let mut in_link_prev = false;
    for (i, c) in line.char_indices() {
        let at = range.start + i;
        let in_link = links.iter().any(|l| l.contains(&at));
        if in_link {
            if !in_link_prev {
                link_texts.push(String::new());
            }
            if let Some(t) = link_texts.last_mut() {
                t.push(c);
            }
            outside.push(' ');
        } else {
            outside.push(c);
        }
        in_link_prev = in_link;
    }
    link_texts.retain(|t| t.chars().any(char::is_alphanumeric));
    let mut tokens = outside.split_whitespace().peekable();
    // A list marker is not a word.
    if let Some(t) = tokens.peek()
        && (*t == "-" || *t == "*" || (t.ends_with('.') && t[..t.len() - 1].bytes().all(|b| b.is_ascii_digit())))
    {
        tokens.next();
    }
    let mut words = 0;
    let mut separators = false;
    for t in tokens {
        if t.chars().any(char::is_alphanumeric) {
            words += 1;
        } else if t.contains(NAV_SEPARATORS) {
            separators = true;
        }
    }
    let links_n = link_texts.len();
    let short = link_texts
        .iter()
        .all(|t| t.split_whitespace().count() <= NAV_LINK_WORDS);
    if in_table || links_n == 0 || !short {
        return LineKind::Text { words };
    }
    let strong =
        (words == 0 && links_n >= 3) || (separators && ((links_n >= 2 && words == 0) || (links_n >= 3 && words <= 3)));
    if words == 0 || strong {
        LineKind::Nav { strong }
    } else {
        LineKind::Text { words }
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

    /// The header and footer of an Apache httpd manual page (as shipped in apache2-doc), and
    /// SQLite's site menu: navigation by shape, without a `<nav>`.
    #[test]
    fn drops_link_bars_and_menus_but_keeps_paragraphs_with_links() {
        let html = r##"<body><div id="page-header">
<p class="menu"><a href="./mod/">Modules</a> | <a href="./mod/directives.html">Directives</a> | <a href="http://wiki.apache.org/httpd/FAQ">FAQ</a> | <a href="./glossary.html">Glossary</a> | <a href="./sitemap.html">Sitemap</a></p>
<p class="apache">Apache HTTP Server Version 2.4</p></div>
<div id="path"><a href="http://www.apache.org/">Apache</a> &gt; <a href="http://httpd.apache.org/">HTTP Server</a> &gt; <a href="http://httpd.apache.org/docs/">Documentation</a> &gt; <a href="./">Version 2.4</a></div>
<div id="page-content"><h1>Binding to Addresses and Ports</h1>
<div class="toplang"><p><span>Available Languages: </span><a href="../de/bind.html">&nbsp;de&nbsp;</a> |
<a href="../en/bind.html">&nbsp;en&nbsp;</a> |
<a href="../fr/bind.html">&nbsp;fr&nbsp;</a></p></div>
<p>Configuring Apache HTTP Server to listen on specific addresses and ports.</p>
<ul id="toc"><li><a href="#overview">Overview</a></li><li><a href="#reload">Changing Listen configuration on restart</a></li></ul>
<p>See <a href="mod/core.html#virtualhost">VirtualHost</a> and <a href="mod/mpm_common.html#listen">Listen</a> for the directives that set this up.</p>
<table><tr><th><a href="a.html">mod_a</a></th><td><a href="b.html">mod_b</a></td><td><a href="c.html">mod_c</a></td></tr></table>
</div>
<div id="footer"><p class="apache">Copyright 2017 The Apache Software Foundation.<br>Licensed under the <a href="http://www.apache.org/licenses/LICENSE-2.0">Apache License, Version 2.0</a>.</p>
<p class="menu"><a href="./mod/">Modules</a> | <a href="./mod/directives.html">Directives</a> | <a href="http://wiki.apache.org/httpd/FAQ">FAQ</a> | <a href="./glossary.html">Glossary</a> | <a href="./sitemap.html">Sitemap</a></p></div>
<div class="menu"><ul><li><a href="index.html">Home</a><li><a href="about.html">About</a><li><a href="docs.html">Documentation</a></ul></div>
</body>"##;
        assert_eq!(
            extract(html).text,
            "Apache HTTP Server Version 2.4\n\n# Binding to Addresses and Ports\n\n\
             Configuring Apache HTTP Server to listen on specific addresses and ports.\n\n\
             - Overview\n- Changing Listen configuration on restart\n\n\
             See VirtualHost and Listen for the directives that set this up.\n\nmod_a | mod_b | mod_c\n\n\
             Copyright 2017 The Apache Software Foundation.\nLicensed under the Apache License, Version 2.0.\n"
        );
    }

    #[test]
    fn navigation_by_markup() {
        let html = r#"<div class="navheader"><table><tr><td><a href="p.html">Prev</a></td><td><a href="n.html">Next</a></td></tr></table></div>
<div role="navigation" aria-label="breadcrumbs navigation"><ul><li><a href="index.html">Docs</a> &raquo;</li></ul></div>
<p class="x">Body text with <a href="y.html">a link</a>.</p><ol class="breadcrumb"><li>Home</li></ol>"#;
        assert_eq!(extract(html).text, "Body text with a link.\n");
        assert!(nav_class(r#" class="navfooter""#) && nav_class(" id=breadcrumbs"));
        assert!(!nav_class(r#" class="navigational-tips""#) && !nav_class(r#" data-class="navbar""#));
    }
}
