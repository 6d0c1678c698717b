//! Plain text: decoding bytes of unknown encoding into clean UTF-8.
//!
//! Order of trust: a byte-order mark, then a UTF-16 pattern of zero bytes, then strict UTF-8,
//! then Windows-1252 (a superset of Latin-1 that decodes every byte), so decoding never fails.

use crate::{Extracted, Format, push_clean};
use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE, WINDOWS_1252};

/// Extracts a plain-text document. The title is the first line when it looks like one.
pub(crate) fn extract_plain(bytes: &[u8]) -> Extracted {
    let text = decode(bytes);
    let title = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .filter(|l| l.chars().count() <= 120 && !l.ends_with('.'))
        .map(str::to_owned);
    crate::unpaged(Format::Text, text, title, Vec::new())
}

/// Decodes a whole text file into clean UTF-8 (see [`crate::push_clean`]), with `\n` line ends.
pub(crate) fn decode(bytes: &[u8]) -> String {
    let (encoding, body) = sniff(bytes);
    let (decoded, _) = encoding.decode_without_bom_handling(body);
    let mut out = String::with_capacity(decoded.len());
    let mut chars = decoded.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            // CRLF and lone CR both end a line.
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else {
            crate::push_clean_char(&mut out, c);
        }
    }
    out
}

/// Decodes at most the first `max` bytes, for classification.
pub(crate) fn decode_prefix(bytes: &[u8], max: usize) -> String {
    let (encoding, body) = sniff(bytes);
    let mut end = body.len().min(max);
    if encoding == UTF_8 {
        // Do not let a cut through a multi-byte sequence make valid UTF-8 look like Latin-1.
        while end < body.len() && end > 0 && (body[end] & 0xC0) == 0x80 {
            end -= 1;
        }
    } else if encoding != WINDOWS_1252 {
        end -= end % 2;
    }
    let mut out = String::new();
    push_clean(&mut out, &encoding.decode_without_bom_handling(&body[..end]).0);
    out
}

/// Picks the encoding and strips any byte-order mark.
fn sniff(bytes: &[u8]) -> (&'static Encoding, &[u8]) {
    if let Some((enc, bom_len)) = Encoding::for_bom(bytes) {
        return (enc, &bytes[bom_len..]);
    }
    if let Some(enc) = utf16_without_bom(bytes) {
        return (enc, bytes);
    }
    let sample = &bytes[..bytes.len().min(64 * 1024)];
    match std::str::from_utf8(sample) {
        Ok(_) => (UTF_8, bytes),
        // Only the cut at the sample's end is invalid.
        Err(e) if e.error_len().is_none() && std::str::from_utf8(bytes).is_ok() => (UTF_8, bytes),
        Err(_) if std::str::from_utf8(bytes).is_ok() => (UTF_8, bytes),
        Err(_) => (WINDOWS_1252, bytes),
    }
}

/// UTF-16 text without a BOM has a zero byte in every other position for ASCII-range text.
fn utf16_without_bom(bytes: &[u8]) -> Option<&'static Encoding> {
    let sample = &bytes[..bytes.len().min(4096) & !1];
    if sample.len() < 4 {
        return None;
    }
    let pairs = sample.len() / 2;
    let even_zero = sample.iter().step_by(2).filter(|&&b| b == 0).count();
    let odd_zero = sample.iter().skip(1).step_by(2).filter(|&&b| b == 0).count();
    if odd_zero * 10 >= pairs * 7 && even_zero * 20 <= pairs {
        Some(UTF_16LE)
    } else if even_zero * 10 >= pairs * 7 && odd_zero * 20 <= pairs {
        Some(UTF_16BE)
    } else {
        None
    }
}

/// Whether the bytes are text in some encoding rather than binary data.
pub(crate) fn looks_like_text(bytes: &[u8]) -> bool {
    if Encoding::for_bom(bytes).is_some() || utf16_without_bom(bytes).is_some() {
        return true;
    }
    let sample = &bytes[..bytes.len().min(8192)];
    let control = sample
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c | 0x1b))
        .count();
    // Real text files have next to no control bytes; binary data has about one in eight.
    control * 100 <= sample.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_decodes() {
        assert_eq!(decode("héllo\r\nwörld".as_bytes()), "héllo\nwörld");
        assert_eq!(decode(b"\xef\xbb\xbfbom"), "bom");
        assert_eq!(decode(b"caf\xe9 \x93quoted\x94"), "café “quoted”");
        let le: Vec<u8> = "\u{feff}hi ü".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(decode(&le), "hi ü");
        let be: Vec<u8> = "hi there ü".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode(&be), "hi there ü");
        assert_eq!(decode(b"a\x00b"), "ab");
    }
}
