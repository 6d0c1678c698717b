//! Naming a format from the bytes alone: magic numbers first, then the content. The file name
//! and the client's content type are never trusted.

use crate::{ExtractError, Format, text};

/// Detects the format of `bytes`.
///
/// Fails with [`ExtractError::Empty`] for no bytes and [`ExtractError::Unsupported`], naming
/// what was detected, for anything that is not PDF, text, Markdown, HTML or DOCX.
pub fn detect(bytes: &[u8]) -> Result<Format, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    if is_pdf(bytes) {
        return Ok(Format::Pdf);
    }
    if let Some(name) = binary_magic(bytes) {
        return match name {
            "ZIP archive" => zip_kind(bytes),
            other => Err(unsupported(other)),
        };
    }
    if !text::looks_like_text(bytes) {
        return Err(unsupported("binary data"));
    }
    let sample = text::decode_prefix(bytes, 16 * 1024);
    Ok(classify_text(&sample))
}

/// Whether the bytes are a PDF: `%PDF-` at the start, or within the first KiB after junk, as
/// readers accept (a mail or HTTP header saved with the file, a MacBinary header). Junk is only
/// taken for junk when the header starts a line or follows binary bytes, and the file ends
/// like a PDF (`%%EOF` in its last KiB, where readers look for it): a text file that quotes a
/// PDF header (a generator script's `b"%PDF-1.4"`, a Markdown page about PDF syntax) is text.
fn is_pdf(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"%PDF-") {
        return true;
    }
    let head = &bytes[..bytes.len().min(1024)];
    let Some(at) = memfind(head, b"%PDF-") else {
        return false;
    };
    let junk = &bytes[..at];
    let line_start = matches!(junk.last(), Some(b'\n' | b'\r'));
    let binary_junk = junk
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c));
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    (line_start || binary_junk) && memfind(tail, b"%%EOF").is_some()
}

fn unsupported(what: &str) -> ExtractError {
    ExtractError::Unsupported {
        detected: what.to_owned(),
    }
}

fn binary_magic(b: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"PK\x03\x04", "ZIP archive"),
        (b"PK\x05\x06", "ZIP archive"),
        (b"\x89PNG\r\n\x1a\n", "PNG image"),
        (b"\xff\xd8\xff", "JPEG image"),
        (b"GIF87a", "GIF image"),
        (b"GIF89a", "GIF image"),
        (b"II*\x00", "TIFF image"),
        (b"MM\x00*", "TIFF image"),
        (b"RIFF", "RIFF media (WebP, WAV or AVI)"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
            "legacy Microsoft Office document (.doc/.xls/.ppt)",
        ),
        (b"{\\rtf", "RTF document"),
        (b"%!PS", "PostScript document"),
        (b"\x1f\x8b", "gzip archive"),
        (b"BZh", "bzip2 archive"),
        (b"\xfd7zXZ\x00", "xz archive"),
        (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
        (b"Rar!", "RAR archive"),
        (b"\x7fELF", "ELF executable"),
        (b"MZ", "Windows executable"),
        (b"\x00\x00\x01\x00", "icon image"),
        (b"ID3", "MP3 audio"),
        (b"OggS", "Ogg media"),
        (b"fLaC", "FLAC audio"),
        (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
        (b"SQLite format 3\x00", "SQLite database"),
        (b"AT&TFORM", "DjVu document"),
    ];
    // ISO base media (MP4, MOV, HEIC): "ftyp" at offset 4.
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return Some("MP4/QuickTime media");
    }
    MAGICS.iter().find(|(m, _)| b.starts_with(m)).map(|(_, name)| *name)
}

/// DOCX is a ZIP with a `word/document.xml` part. The part names sit in plain bytes in the
/// local headers and the central directory, so a search finds them without unpacking.
fn zip_kind(bytes: &[u8]) -> Result<Format, ExtractError> {
    if memfind(bytes, b"word/document.xml").is_some() {
        Ok(Format::Docx)
    } else if memfind(bytes, b"xl/workbook.xml").is_some() {
        Err(unsupported("Excel spreadsheet (XLSX)"))
    } else if memfind(bytes, b"ppt/presentation.xml").is_some() {
        Err(unsupported("PowerPoint presentation (PPTX)"))
    } else if memfind(bytes, b"application/vnd.oasis.opendocument").is_some() {
        Err(unsupported("OpenDocument file (ODT/ODS/ODP)"))
    } else if memfind(bytes, b"META-INF/container.xml").is_some() {
        Err(unsupported("EPUB book"))
    } else {
        Err(unsupported("ZIP archive"))
    }
}

/// Tells HTML, Markdown and plain text apart from the decoded start of a text file.
pub(crate) fn classify_text(sample: &str) -> Format {
    let lower_head: String = sample
        .trim_start()
        .chars()
        .take(1024)
        .flat_map(char::to_lowercase)
        .collect();
    if lower_head.starts_with("<!doctype html")
        || lower_head.starts_with("<html")
        || lower_head.starts_with("<?xml") && lower_head.contains("<html")
        || ["<html", "<head>", "<body", "<title>", "<meta "]
            .iter()
            .filter(|t| lower_head.contains(*t))
            .count()
            >= 2
    {
        return Format::Html;
    }
    if lower_head.starts_with('<')
        && ["<p>", "<div", "<h1", "<h2", "<ul>", "<table"]
            .iter()
            .any(|t| lower_head.contains(t))
    {
        return Format::Html;
    }
    if markdown_score(sample) >= 2 {
        return Format::Markdown;
    }
    Format::Text
}

/// Counts Markdown constructs that plain text rarely has. YAML front matter (Jekyll, Hugo,
/// MkDocs pages) counts as much as a heading.
fn markdown_score(sample: &str) -> u32 {
    let mut score = if crate::markdown::split_front_matter(sample).0.is_some() {
        2
    } else {
        0
    };
    let mut prev_nonempty = false;
    for line in sample.lines().take(400) {
        let t = line.trim_end();
        let hashes = t.bytes().take_while(|&b| b == b'#').count();
        let strong =
            (1..=6).contains(&hashes) && t[hashes..].starts_with(' ') || t.starts_with("```") || t.starts_with("~~~");
        let setext = prev_nonempty && t.len() >= 3 && (t.bytes().all(|b| b == b'=') || t.bytes().all(|b| b == b'-'));
        let weak =
            setext || t.contains("](") && t.contains('[') || ["- [", "* ", "> ", "| "].iter().any(|p| t.starts_with(p));
        score += if strong { 2 } else { u32::from(weak) };
        prev_nonempty = !t.is_empty();
        if score >= 4 {
            break;
        }
    }
    score
}

pub(crate) fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        match haystack[i..haystack.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_from_bytes() {
        assert_eq!(detect(b"%PDF-1.4\n"), Ok(Format::Pdf));
        assert_eq!(
            detect(b"junk\n%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n"),
            Ok(Format::Pdf)
        );
        assert_eq!(detect(b"\x00\x11MacBinary%PDF-1.3\n%%EOF"), Ok(Format::Pdf));
        assert_eq!(detect(b"hello world\n"), Ok(Format::Text));
        assert_eq!(
            detect(b"# Title\n\nSome *text* and [a link](http://x).\n"),
            Ok(Format::Markdown)
        );
        assert_eq!(
            detect(b"<!DOCTYPE html><html><body><p>x</p></body></html>"),
            Ok(Format::Html)
        );
        assert_eq!(
            detect(b"---\ntitle: Notes\n---\n\nPlain words, nothing else.\n"),
            Ok(Format::Markdown)
        );
        // Text that quotes a PDF header is text (`fixtures/documents/_source/gen_hostile.py`).
        assert_eq!(
            detect(b"def pdf():\n    out = bytearray(b\"%PDF-1.4\\n\")\n    out += b\"%%%%EOF\"\n"),
            Ok(Format::Text)
        );
        let md = b"# PDF syntax\n\nA file starts with:\n\n```\n%PDF-1.7\n```\n\nand more.\n";
        assert_eq!(detect(md), Ok(Format::Markdown));
        assert_eq!(detect(b""), Err(ExtractError::Empty));
        assert!(
            matches!(detect(b"\x89PNG\r\n\x1a\n...."), Err(ExtractError::Unsupported { detected }) if detected == "PNG image")
        );
        assert!(matches!(
            detect(&[0u8, 1, 2, 3, 200, 201, 0, 0, 7, 8]),
            Err(ExtractError::Unsupported { .. })
        ));
    }
}
