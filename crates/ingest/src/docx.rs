//! DOCX (Office Open XML): paragraphs, headings, list items and tables in document order.
//! The output is Markdown-shaped so chunking breaks at the document's headings.

use crate::{ExtractError, Extracted, Format, Limits, markdown};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use std::collections::HashMap;
use std::io::{Cursor, Read};

const FORMAT: &str = "DOCX";

/// Extracts a DOCX document.
pub(crate) fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ExtractError::malformed(FORMAT, format!("not a readable ZIP archive: {e}")))?;
    let document = read_part(&mut zip, "word/document.xml", limits)?
        .ok_or_else(|| ExtractError::malformed(FORMAT, "no word/document.xml part"))?;
    let styles = read_part(&mut zip, "word/styles.xml", limits)?
        .map(|s| heading_styles(&s))
        .unwrap_or_default();
    let core_title = read_part(&mut zip, "docProps/core.xml", limits)?.and_then(|s| core_title(&s));
    let (text, style_title) = body_text(&document, &styles)?;
    let headings = markdown::headings(&text);
    let title = core_title
        .or(style_title)
        .or_else(|| headings.iter().find(|h| h.level == 1).map(|h| h.text.clone()));
    Ok(crate::unpaged(Format::Docx, text, title, headings))
}

/// Reads one part, bounded by the decompression limit (a ZIP bomb stops there).
fn read_part(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limits: &Limits,
) -> Result<Option<String>, ExtractError> {
    let file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(ExtractError::malformed(FORMAT, format!("reading {name}: {e}"))),
    };
    let limit = limits.max_decompressed_bytes;
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| ExtractError::malformed(FORMAT, format!("reading {name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(ExtractError::too_large("decompressed part size (bytes)", limit));
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn attr(e: &BytesStart<'_>, key: &str) -> Option<String> {
    e.try_get_attribute(key).ok().flatten().and_then(|a| {
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()
            .map(|v| v.into_owned())
    })
}

/// Style id → heading level (1..=6), and the ids of title styles as level 0.
fn heading_styles(xml: &str) -> HashMap<String, u8> {
    let mut map = HashMap::new();
    let mut reader = Reader::from_str(xml);
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                "style" => current = attr(&e, "w:styleId"),
                "name" => {
                    if let (Some(id), Some(name)) = (&current, attr(&e, "w:val")) {
                        let lower = name.to_ascii_lowercase();
                        if lower == "title" {
                            map.insert(id.clone(), 0);
                        } else if let Some(n) = lower.strip_prefix("heading ").and_then(|n| n.trim().parse::<u8>().ok())
                        {
                            map.insert(id.clone(), n.clamp(1, 6));
                        }
                    }
                }
                "outlineLvl" => {
                    if let (Some(id), Some(n)) = (&current, attr(&e, "w:val").and_then(|v| v.parse::<u8>().ok()))
                        && n < 9
                    {
                        map.entry(id.clone()).or_insert((n + 1).min(6));
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    map
}

fn core_title(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut in_title = false;
    let mut title = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == "title" => in_title = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == "title" => break,
            Ok(Event::Text(t)) if in_title => title.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) if in_title => push_ref(&mut title, &r),
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    let title = title.trim().to_owned();
    (!title.is_empty()).then_some(title)
}

fn push_ref(out: &mut String, r: &quick_xml::events::BytesRef<'_>) {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        out.push(c);
        return;
    }
    match &**r {
        "amp" => out.push('&'),
        "lt" => out.push('<'),
        "gt" => out.push('>'),
        "quot" => out.push('"'),
        "apos" => out.push('\''),
        _ => {}
    }
}

/// One paragraph being read.
#[derive(Default)]
struct Para {
    text: String,
    level: Option<u8>,
    list: bool,
}

/// Walks `w:body`: returns the Markdown-shaped text and the text of a Title-styled paragraph.
fn body_text(xml: &str, styles: &HashMap<String, u8>) -> Result<(String, Option<String>), ExtractError> {
    let mut reader = Reader::from_str(xml);
    let mut out = String::new();
    let mut title = None;
    let mut para: Option<Para> = None;
    // Cells of the innermost open row; nested tables flatten into their cell.
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut table_depth = 0usize;
    let mut in_text = false;
    let mut skip_depth = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ExtractError::malformed(FORMAT, format!("word/document.xml: {e}")))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    _ if skip_depth > 0 => skip_depth += 1,
                    "p" => para = Some(Para::default()),
                    "t" => in_text = true,
                    "delText" | "instrText" | "del" => skip_depth = 1,
                    "tbl" => table_depth += 1,
                    "tr" if table_depth == 1 => rows.push(Vec::new()),
                    "tc" if table_depth == 1 => {
                        if let Some(r) = rows.last_mut() {
                            r.push(String::new());
                        }
                    }
                    _ => para_property(&e, styles, para.as_mut()),
                }
            }
            Event::Empty(e) => match e.local_name().as_ref() {
                _ if skip_depth > 0 => {}
                "tab" => {
                    if let Some(p) = para.as_mut() {
                        p.text.push('\t');
                    }
                }
                "br" | "cr" => {
                    if let Some(p) = para.as_mut() {
                        p.text.push('\n');
                    }
                }
                _ => para_property(&e, styles, para.as_mut()),
            },
            Event::Text(t) if in_text && skip_depth == 0 => {
                if let Some(p) = para.as_mut() {
                    crate::push_clean(&mut p.text, &t.xml10_content());
                }
            }
            Event::GeneralRef(r) if in_text && skip_depth == 0 => {
                if let Some(p) = para.as_mut() {
                    push_ref(&mut p.text, &r);
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    _ if skip_depth > 0 => skip_depth -= 1,
                    "t" => in_text = false,
                    "p" => {
                        let Some(p) = para.take() else { continue };
                        let text = p.text.split_whitespace().collect::<Vec<_>>().join(" ");
                        if text.is_empty() {
                            continue;
                        }
                        if table_depth > 0 {
                            if let Some(cell) = rows.last_mut().and_then(|r| r.last_mut()) {
                                if !cell.is_empty() {
                                    cell.push(' ');
                                }
                                cell.push_str(&text);
                            }
                            continue;
                        }
                        match p.level {
                            Some(0) => {
                                title.get_or_insert_with(|| text.clone());
                                block(&mut out, &format!("# {text}"));
                            }
                            Some(n) => block(&mut out, &format!("{} {text}", "#".repeat(usize::from(n)))),
                            None if p.list => {
                                if !out.is_empty() && !out.ends_with('\n') {
                                    out.push('\n');
                                }
                                if out.ends_with("\n\n")
                                    || out.is_empty()
                                    || out.ends_with("\n") && last_line_is_item(&out)
                                {
                                    out.push_str("- ");
                                } else {
                                    out.push_str("\n- ");
                                }
                                out.push_str(&text);
                                out.push('\n');
                            }
                            None => block(&mut out, &text),
                        }
                    }
                    "tbl" => {
                        table_depth = table_depth.saturating_sub(1);
                        if table_depth == 0 {
                            let lines: Vec<String> = rows
                                .drain(..)
                                .map(|r| r.join(" | "))
                                .filter(|l| !l.trim().is_empty())
                                .collect();
                            if !lines.is_empty() {
                                block(&mut out, &lines.join("\n"));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok((out, title))
}

fn last_line_is_item(out: &str) -> bool {
    out.trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .is_some_and(|l| l.starts_with("- "))
}

/// Appends a paragraph-level block separated by a blank line.
fn block(out: &mut String, text: &str) {
    if !out.is_empty() {
        while !out.ends_with("\n\n") {
            out.push('\n');
        }
    }
    out.push_str(text);
    out.push('\n');
}

fn para_property(e: &BytesStart<'_>, styles: &HashMap<String, u8>, para: Option<&mut Para>) {
    let Some(p) = para else { return };
    match e.local_name().as_ref() {
        "pStyle" => {
            if let Some(id) = attr(e, "w:val") {
                let lower = id.to_ascii_lowercase();
                p.level = styles
                    .get(&id)
                    .copied()
                    .or_else(|| match lower.strip_prefix("heading") {
                        Some(n) => n.parse::<u8>().ok().map(|n| n.clamp(1, 6)),
                        None => (lower == "title").then_some(0),
                    });
                if lower.contains("list") {
                    p.list = true;
                }
            }
        }
        "outlineLvl" => {
            if let Some(n) = attr(e, "w:val").and_then(|v| v.parse::<u8>().ok()).filter(|n| *n < 9) {
                p.level.get_or_insert((n + 1).min(6));
            }
        }
        "numPr" => p.list = true,
        _ => {}
    }
}
