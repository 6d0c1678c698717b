//! Fonts: from character codes in a shown string to Unicode text and glyph widths.
//!
//! Precedence follows what readers do: a `ToUnicode` CMap wins for the codes it maps; then
//! the font's encoding (a base encoding plus `Differences`, glyph names through the Adobe
//! Glyph List); then, for embedded Type 1 fonts with no `/Encoding`, the encoding built into
//! the font program (pdfTeX's Computer Modern fonts rely on it). Type0 fonts take 2-byte
//! codes (Identity-H) unless their CMap declares other code space ranges, and `Uni*-UCS2`
//! CMaps decode as UTF-16.

use super::lexer::{Lexer, Operand};
use super::std14;
use lopdf::{Dictionary, Document, Object};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Resolves references (bounded, so a reference cycle ends).
pub(crate) fn deref<'a>(doc: &'a Document, mut o: &'a Object) -> Option<&'a Object> {
    for _ in 0..32 {
        match o {
            Object::Reference(id) => o = doc.get_object(*id).ok()?,
            _ => return Some(o),
        }
    }
    None
}

pub(crate) fn dict_get<'a>(doc: &'a Document, d: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    deref(doc, d.get(key).ok()?)
}

pub(crate) fn get_dict<'a>(doc: &'a Document, d: &'a Dictionary, key: &[u8]) -> Option<&'a Dictionary> {
    match dict_get(doc, d, key)? {
        Object::Dictionary(d) => Some(d),
        Object::Stream(s) => Some(&s.dict),
        _ => None,
    }
}

fn get_name<'a>(doc: &'a Document, d: &'a Dictionary, key: &[u8]) -> Option<&'a [u8]> {
    dict_get(doc, d, key)?.as_name().ok()
}

fn num(o: &Object) -> Option<f32> {
    match o {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) => Some(*r),
        _ => None,
    }
}

fn get_num(doc: &Document, d: &Dictionary, key: &[u8]) -> Option<f32> {
    num(dict_get(doc, d, key)?)
}

/// Decompressed content of a stream object, bounded by `limit` bytes.
pub(crate) fn stream_bytes(doc: &Document, o: &Object, limit: usize) -> Option<Vec<u8>> {
    let s = deref(doc, o)?.as_stream().ok()?;
    if s.dict.get(b"Filter").is_err() {
        return (s.content.len() <= limit).then(|| s.content.clone());
    }
    s.decompressed_content_with_limit(limit).ok()
}

/// A CMap: code space ranges and code → Unicode mappings.
#[derive(Debug, Default)]
pub(crate) struct CMap {
    codespace: Vec<(u8, u32, u32)>,
    single: HashMap<(u8, u32), String>,
    ranges: Vec<Range>,
}

#[derive(Debug)]
struct Range {
    len: u8,
    lo: u32,
    hi: u32,
    dst: RangeDst,
}

#[derive(Debug)]
enum RangeDst {
    /// UTF-16 units; the last is incremented by the code's offset in the range.
    Base(Vec<u16>),
    Array(Vec<String>),
}

fn code_of(bytes: &[u8]) -> Option<(u8, u32)> {
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    Some((
        bytes.len() as u8,
        bytes.iter().fold(0u32, |a, &b| a << 8 | u32::from(b)),
    ))
}

fn utf16(bytes: &[u8]) -> String {
    let units = bytes.chunks(2).map(|c| {
        if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0])
        }
    });
    char::decode_utf16(units).filter_map(Result::ok).collect()
}

fn dst_string(o: &Operand) -> Option<String> {
    match o {
        Operand::Str(b) => Some(utf16(b)),
        Operand::Name(n) => glyph_str(&String::from_utf8_lossy(n)),
        _ => None,
    }
}

impl CMap {
    /// Parses a CMap program; unknown parts are skipped.
    pub(crate) fn parse(bytes: &[u8]) -> CMap {
        let mut cmap = CMap::default();
        let mut lx = Lexer::new(bytes);
        let mut st = Vec::new();
        let mut ops = 0usize;
        while let Some(op) = lx.next_op(&mut st) {
            ops += 1;
            if ops > 1_000_000 {
                break;
            }
            match op {
                b"endcodespacerange" => {
                    for pair in st.chunks_exact(2) {
                        if let (Operand::Str(lo), Operand::Str(hi)) = (&pair[0], &pair[1])
                            && let (Some((len, lo)), Some((_, hi))) = (code_of(lo), code_of(hi))
                        {
                            cmap.codespace.push((len, lo, hi));
                        }
                    }
                }
                b"endbfchar" => {
                    for pair in st.chunks_exact(2) {
                        if let (Operand::Str(src), Some(dst)) = (&pair[0], dst_string(&pair[1]))
                            && let Some(code) = code_of(src)
                        {
                            cmap.single.insert(code, dst);
                        }
                    }
                }
                b"endbfrange" => {
                    for t in st.chunks_exact(3) {
                        let (Operand::Str(lo), Operand::Str(hi)) = (&t[0], &t[1]) else {
                            continue;
                        };
                        let (Some((len, lo)), Some((_, hi))) = (code_of(lo), code_of(hi)) else {
                            continue;
                        };
                        if hi < lo {
                            continue;
                        }
                        let dst = match &t[2] {
                            Operand::Str(b) => RangeDst::Base(
                                b.chunks(2)
                                    .map(|c| {
                                        if c.len() == 2 {
                                            u16::from_be_bytes([c[0], c[1]])
                                        } else {
                                            u16::from(c[0])
                                        }
                                    })
                                    .collect(),
                            ),
                            Operand::Array(a) => {
                                RangeDst::Array(a.iter().map(|o| dst_string(o).unwrap_or_default()).collect())
                            }
                            _ => continue,
                        };
                        cmap.ranges.push(Range { len, lo, hi, dst });
                    }
                }
                _ => {}
            }
        }
        cmap.ranges.sort_by_key(|r| (r.lo, r.len));
        cmap
    }

    /// Unicode text for a code of `len` bytes.
    pub(crate) fn get(&self, len: u8, code: u32) -> Option<String> {
        if let Some(s) = self.single.get(&(len, code)) {
            return Some(s.clone());
        }
        let idx = self.ranges.partition_point(|r| r.lo <= code);
        for r in self.ranges[..idx].iter().rev().take(64) {
            if r.len == len && r.lo <= code && code <= r.hi {
                let off = code - r.lo;
                return match &r.dst {
                    RangeDst::Base(units) => {
                        let mut u = units.clone();
                        if let Some(last) = u.last_mut() {
                            *last = last.wrapping_add(off as u16);
                        }
                        Some(char::decode_utf16(u).filter_map(Result::ok).collect())
                    }
                    RangeDst::Array(a) => a.get(off as usize).cloned(),
                };
            }
        }
        None
    }

    /// Whether the CMap maps anything.
    fn is_empty(&self) -> bool {
        self.single.is_empty() && self.ranges.is_empty()
    }

    /// Length of the code at the start of `bytes` by the code space ranges; `None` without
    /// ranges.
    fn code_len(&self, bytes: &[u8]) -> Option<usize> {
        if self.codespace.is_empty() {
            return None;
        }
        for n in 1..=4u8 {
            let Some(prefix) = bytes.get(..usize::from(n)) else {
                break;
            };
            let Some((_, code)) = code_of(prefix) else { break };
            if self.codespace.iter().any(|&(len, lo, hi)| {
                len == n
                    && (0..n).all(|i| {
                        let shift = 8 * u32::from(n - 1 - i);
                        let (c, l, h) = ((code >> shift) & 0xff, (lo >> shift) & 0xff, (hi >> shift) & 0xff);
                        l <= c && c <= h
                    })
            }) {
                return Some(usize::from(n));
            }
        }
        None
    }
}

/// Unicode text for a glyph name (Adobe Glyph List, `uniXXXX`, `uXXXX`, `name.suffix`,
/// `a_b` ligature names).
pub(crate) fn glyph_str(name: &str) -> Option<String> {
    if let Some(s) = pdf_encoding::glyphname_to_unicode(name) {
        return Some(s.to_owned());
    }
    if let Some(hex) = name.strip_prefix("uni")
        && hex.len() >= 4
        && hex.len() % 4 == 0
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let units: Vec<u16> = (0..hex.len() / 4)
            .filter_map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).ok())
            .collect();
        return Some(char::decode_utf16(units).filter_map(Result::ok).collect());
    }
    if let Some(hex) = name.strip_prefix('u')
        && (4..=6).contains(&hex.len())
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .map(String::from);
    }
    if let Some((base, _)) = name.split_once('.')
        && !base.is_empty()
    {
        return glyph_str(base);
    }
    if name.contains('_') {
        let parts: Option<Vec<String>> = name.split('_').map(glyph_str).collect();
        return parts.map(|p| p.concat());
    }
    match name {
        // TeX fonts' names outside the glyph list.
        "ff" => Some("ff".into()),
        "ffi" => Some("ffi".into()),
        "ffl" => Some("ffl".into()),
        "dotlessj" => Some("ȷ".into()),
        "visiblespace" => Some("␣".into()),
        "suppress" => Some(String::new()),
        _ => None,
    }
}

/// pdfTeX names the glyphs of the bitmap (PK) fonts it embeds as Type 3 fonts `a0` to `a255`,
/// after their codes, and writes no `ToUnicode` and no font name: the names say nothing about
/// the characters (and `a1`..`a191` would read as Zapf Dingbats). The codes follow the TeX
/// font's encoding, which the glyphs in use tell apart: Russian text set in the LH fonts (T2A,
/// X2) draws mostly from 0xC0-0xFF, where those encodings have А-я in order; Latin text draws
/// mostly ASCII letters, which OT1, T1 and the Cyrillic encodings all keep at their ASCII
/// codes. Renames such glyphs to the characters their codes mean (`uniXXXX`); leaves fonts with
/// any other naming alone.
fn tex_bitmap_names(diffs: &mut [(u8, String)]) {
    // pdfTeX fills the gaps between the glyphs of a subset with `.notdef`.
    let named = || diffs.iter().filter(|(_, name)| name != ".notdef");
    if named().next().is_none()
        || !named().all(|(code, name)| {
            name.strip_prefix('a')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse() == Ok(*code))
        })
    {
        return;
    }
    let cyrillic = named().filter(|(c, _)| *c >= 0xC0).count();
    let latin = named().filter(|(c, _)| c.is_ascii_alphabetic()).count();
    let t2a = cyrillic > latin;
    for (code, name) in diffs.iter_mut().filter(|(_, name)| name != ".notdef") {
        let text = match *code {
            0x0B | 0x1B => "ff",
            0x0C | 0x1C => "fi",
            0x0D | 0x1D => "fl",
            0x0E | 0x1E => "ffi",
            0x0F | 0x1F => "ffl",
            _ => "",
        };
        let c = match *code {
            _ if !text.is_empty() => None,
            // ASCII but for the codes where OT1 has other glyphs (quotes, dashes, ¡ ¿).
            0x21..=0x7E if !b"\"<>\\_{|}".contains(code) => Some(char::from(*code)),
            0xC0..=0xFF if t2a => char::from_u32(0x0410 + u32::from(*code - 0xC0)),
            0x9C if t2a => Some('Ё'),
            0xBC if t2a => Some('ё'),
            0x9D if t2a => Some('№'),
            0xC0..=0xFF => Some(char::from(*code)),
            _ => None,
        };
        *name = match c {
            Some(c) => format!("uni{:04X}", u32::from(c)),
            None if !text.is_empty() => text.to_owned(),
            // A code whose meaning differs between the TeX encodings: no text.
            None => ".notdef".to_owned(),
        };
    }
}

/// WinAnsi and Latin-1 put the "hyphen" glyph at 0xAD (U+00AD, the soft hyphen), which PDF
/// fonts draw as a visible hyphen.
fn visible_hyphen(c: char) -> char {
    if c == '\u{ad}' { '-' } else { c }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Standard,
    WinAnsi,
    MacRoman,
    MacExpert,
    Symbol,
    Dingbats,
}

impl Base {
    fn from_name(n: &[u8]) -> Option<Base> {
        Some(match n {
            b"StandardEncoding" => Base::Standard,
            b"WinAnsiEncoding" | b"PDFDocEncoding" => Base::WinAnsi,
            b"MacRomanEncoding" => Base::MacRoman,
            b"MacExpertEncoding" => Base::MacExpert,
            _ => return None,
        })
    }

    fn get(self, code: u8) -> Option<char> {
        let map = match self {
            Base::Standard => &pdf_encoding::STANDARD,
            Base::WinAnsi => &pdf_encoding::WINANSI,
            Base::MacRoman => &pdf_encoding::MACROMAN,
            Base::MacExpert => &pdf_encoding::MACEXPERT,
            Base::Symbol => &pdf_encoding::SYMBOL,
            Base::Dingbats => &pdf_encoding::ZDINGBAT,
        };
        map.get(code)
    }
}

#[derive(Debug)]
enum Codes {
    /// One byte per code, decoded through a 256-entry table.
    Simple(Box<[Option<Box<str>>]>),
    /// Multi-byte codes (Type0).
    Composite {
        to_unicode: Option<CMap>,
        encoding_cmap: Option<CMap>,
        ucs2: bool,
    },
}

#[derive(Debug)]
enum Widths {
    Simple { first: u32, widths: Vec<f32>, missing: f32 },
    Cid { default: f32, map: HashMap<u32, f32> },
}

/// A font as far as text extraction needs it.
#[derive(Debug)]
pub(crate) struct Font {
    codes: Codes,
    widths: Widths,
    /// Glyph space units to text space (0.001, or a Type 3 font's FontMatrix).
    width_scale: f32,
    /// Vertical size factor of a Type 3 font's FontMatrix relative to 0.001.
    pub(crate) size_scale: f32,
}

impl Font {
    /// A font for text shown before any `Tf`, or with a font that cannot be read.
    pub(crate) fn fallback() -> Font {
        Font::simple_from(
            Base::Standard,
            &[],
            None,
            Widths::Simple {
                first: 0,
                widths: Vec::new(),
                missing: 500.0,
            },
        )
    }

    fn simple_from(base: Base, diffs: &[(u8, String)], to_unicode: Option<&CMap>, widths: Widths) -> Font {
        let mut table: Vec<Option<Box<str>>> = (0..=255u8)
            .map(|c| base.get(c).map(|ch| visible_hyphen(ch).to_string().into_boxed_str()))
            .collect();
        for (code, name) in diffs {
            table[usize::from(*code)] = glyph_str(name).map(String::into_boxed_str);
        }
        if let Some(cm) = to_unicode {
            for code in 0..=255u32 {
                if let Some(s) = cm.get(1, code).or_else(|| cm.get(2, code)) {
                    table[code as usize] = Some(s.into_boxed_str());
                }
            }
        }
        Font {
            codes: Codes::Simple(table.into_boxed_slice()),
            widths,
            width_scale: 0.001,
            size_scale: 1.0,
        }
    }

    /// Reads a font dictionary. Never fails: what cannot be read falls back to standard
    /// encoding and average widths.
    pub(crate) fn load(doc: &Document, d: &Dictionary, limit: usize) -> Font {
        let subtype = get_name(doc, d, b"Subtype").unwrap_or(b"Type1");
        let to_unicode = d
            .get(b"ToUnicode")
            .ok()
            .and_then(|o| stream_bytes(doc, o, limit))
            .map(|b| CMap::parse(&b))
            .filter(|c| !c.is_empty());
        if subtype == b"Type0" {
            return Self::load_type0(doc, d, to_unicode, limit);
        }
        let base_font = get_name(doc, d, b"BaseFont").unwrap_or(b"");
        let descriptor = get_dict(doc, d, b"FontDescriptor");
        let flags = descriptor.and_then(|fd| get_num(doc, fd, b"Flags")).unwrap_or(0.0) as u32;
        let symbolic_name =
            base_font.ends_with(b"Symbol") || base_font.ends_with(b"ZapfDingbats") || base_font.ends_with(b"Dingbats");
        let mut base = None;
        let mut diffs = Vec::new();
        match dict_get(doc, d, b"Encoding") {
            Some(Object::Name(n)) => base = Base::from_name(n),
            Some(Object::Dictionary(ed)) => {
                base = get_name(doc, ed, b"BaseEncoding").and_then(Base::from_name);
                if let Some(Object::Array(a)) = dict_get(doc, ed, b"Differences") {
                    let mut code = 0u32;
                    for o in a {
                        match deref(doc, o) {
                            Some(Object::Integer(i)) => code = (*i).clamp(0, 255) as u32,
                            Some(Object::Name(n)) => {
                                if code <= 255 {
                                    diffs.push((code as u8, String::from_utf8_lossy(n).into_owned()));
                                }
                                code += 1;
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
        let base = base.unwrap_or_else(|| {
            if base_font.ends_with(b"ZapfDingbats") || base_font.ends_with(b"Dingbats") {
                Base::Dingbats
            } else if symbolic_name {
                Base::Symbol
            } else if subtype == b"TrueType" {
                Base::WinAnsi
            } else {
                Base::Standard
            }
        });
        // An embedded Type 1 program without /Encoding in the dictionary carries its own.
        if dict_get(doc, d, b"Encoding").is_none()
            && let Some(ff) = descriptor.and_then(|fd| fd.get(b"FontFile").ok())
            && let Some(program) = stream_bytes(doc, ff, limit)
        {
            diffs = builtin_type1_encoding(&program).unwrap_or_default();
        } else if dict_get(doc, d, b"Encoding").is_none()
            && let Some(ff) = descriptor.and_then(|fd| fd.get(b"FontFile3").ok())
            && let Some(program) = stream_bytes(doc, ff, limit)
        {
            // The same for a CFF (Type 1C) program: its encoding and charset name the glyphs
            // (Distiller and Ghostscript write Cyrillic Type 1C fonts this way: `afii10017`).
            diffs = builtin_cff_encoding(&program);
        }
        let _ = flags;
        if subtype == b"Type3" {
            tex_bitmap_names(&mut diffs);
            // Other Type 3 glyph names that mean nothing (`box12`, `g7`): a printable ASCII
            // code is taken as itself, as poppler does; producers that keep ASCII codes are
            // read, and the rest stays undecodable and is reported.
            for (code, name) in &mut diffs {
                if (0x21..=0x7E).contains(code) && name != ".notdef" && glyph_str(name).is_none() {
                    *name = format!("uni{:04X}", u32::from(*code));
                }
            }
        }
        let first = d
            .get(b"FirstChar")
            .ok()
            .and_then(|o| deref(doc, o))
            .and_then(num)
            .unwrap_or(0.0)
            .max(0.0) as u32;
        let widths: Vec<f32> = match dict_get(doc, d, b"Widths") {
            Some(Object::Array(a)) => a.iter().map(|o| deref(doc, o).and_then(num).unwrap_or(0.0)).collect(),
            _ => Vec::new(),
        };
        let missing = descriptor
            .and_then(|fd| get_num(doc, fd, b"MissingWidth"))
            .filter(|w| *w > 0.0)
            .unwrap_or_else(|| {
                if base_font.windows(7).any(|w| w == b"Courier") {
                    600.0
                } else {
                    500.0
                }
            });
        let std14 = if widths.iter().any(|w| *w > 0.0) {
            None
        } else {
            Std14::from_base_font(base_font)
        };
        let mut font = Self::simple_from(
            base,
            &diffs,
            to_unicode.as_ref(),
            Widths::Simple { first, widths, missing },
        );
        // A font named without widths (the standard 14, allowed to omit them, and old
        // producers' Arial or Times New Roman): the reader's built-in metrics, as every viewer
        // does. With a flat average, word gaps come out wrong: "DVIPDFM x" for "DVIPDFMx".
        if let Some(std14) = std14
            && let Codes::Simple(table) = &font.codes
        {
            let widths = (0..=255usize)
                .map(|code| {
                    table[code]
                        .as_deref()
                        .and_then(|s| s.chars().next())
                        .and_then(|c| std14.width(c))
                        .unwrap_or(0.0)
                })
                .collect();
            let missing = std14.width(' ').unwrap_or(missing);
            font.widths = Widths::Simple {
                first: 0,
                widths,
                missing,
            };
        }
        if subtype == b"Type3"
            && let Some(Object::Array(m)) = dict_get(doc, d, b"FontMatrix")
        {
            let m: Vec<f32> = m.iter().filter_map(|o| deref(doc, o).and_then(num)).collect();
            if m.len() == 6 && m[0].is_finite() && m[3].is_finite() && m[0] != 0.0 {
                font.width_scale = m[0].abs();
                font.size_scale = font.type3_size_scale((m[3] / m[0]).abs());
            }
        }
        font
    }

    fn load_type0(doc: &Document, d: &Dictionary, to_unicode: Option<CMap>, limit: usize) -> Font {
        let mut ucs2 = false;
        let mut encoding_cmap = None;
        match dict_get(doc, d, b"Encoding") {
            Some(Object::Name(n)) => {
                let n = String::from_utf8_lossy(n);
                ucs2 = n.starts_with("Uni") && (n.contains("UCS2") || n.contains("UTF16"));
            }
            Some(Object::Stream(_)) => {
                encoding_cmap = d
                    .get(b"Encoding")
                    .ok()
                    .and_then(|o| stream_bytes(doc, o, limit))
                    .map(|b| CMap::parse(&b));
            }
            _ => {}
        }
        let descendant = match dict_get(doc, d, b"DescendantFonts") {
            Some(Object::Array(a)) => a.first().and_then(|o| deref(doc, o)).and_then(|o| o.as_dict().ok()),
            _ => None,
        };
        let mut default = 1000.0;
        let mut map = HashMap::new();
        if let Some(df) = descendant {
            default = get_num(doc, df, b"DW").unwrap_or(1000.0);
            if let Some(Object::Array(w)) = dict_get(doc, df, b"W") {
                let mut i = 0;
                while i < w.len() && map.len() < 1 << 17 {
                    let Some(first) = deref(doc, &w[i]).and_then(num) else {
                        break;
                    };
                    match w.get(i + 1).and_then(|o| deref(doc, o)) {
                        Some(Object::Array(ws)) => {
                            for (k, o) in ws.iter().enumerate() {
                                if let Some(v) = deref(doc, o).and_then(num) {
                                    map.insert(first as u32 + k as u32, v);
                                }
                            }
                            i += 2;
                        }
                        Some(o) => {
                            let (Some(last), Some(v)) =
                                (num(o), w.get(i + 2).and_then(|o| deref(doc, o)).and_then(num))
                            else {
                                break;
                            };
                            let (first, last) = (first as u32, (last as u32).min(first as u32 + (1 << 16)));
                            for c in first..=last {
                                map.insert(c, v);
                            }
                            i += 3;
                        }
                        None => break,
                    }
                }
            }
        }
        Font {
            codes: Codes::Composite {
                to_unicode,
                encoding_cmap,
                ucs2,
            },
            widths: Widths::Cid { default, map },
            width_scale: 0.001,
            size_scale: 1.0,
        }
    }

    /// Splits a shown string into codes: `(code, byte length)`.
    pub(crate) fn next_code(&self, bytes: &[u8]) -> (u32, usize) {
        match &self.codes {
            Codes::Simple(_) => (u32::from(bytes[0]), 1),
            Codes::Composite { encoding_cmap, .. } => {
                let n = encoding_cmap
                    .as_ref()
                    .and_then(|c| c.code_len(bytes))
                    .unwrap_or(2)
                    .min(bytes.len());
                (bytes[..n].iter().fold(0u32, |a, &b| a << 8 | u32::from(b)), n)
            }
        }
    }

    /// Appends the text of one code; returns whether the font maps the code to any text at
    /// all (a code it maps to an empty string, such as TeX's `suppress`, counts as mapped).
    pub(crate) fn decode_into(&self, code: u32, len: usize, out: &mut String) -> bool {
        match &self.codes {
            Codes::Simple(table) => {
                if let Some(s) = table.get(code as usize).and_then(|s| s.as_deref()) {
                    crate::push_clean(out, s);
                    return true;
                }
                false
            }
            Codes::Composite { to_unicode, ucs2, .. } => {
                if let Some(s) = to_unicode.as_ref().and_then(|c| c.get(len as u8, code)) {
                    crate::push_clean(out, &s);
                    true
                } else if *ucs2 && let Some(c) = char::from_u32(code) {
                    crate::push_clean_char(out, c);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// How much larger than its font size a Type 3 font draws. What its glyph space means is
    /// only known by drawing the glyphs, so it is guessed, as poppler does, from advances: an
    /// `m` is about 0.8 em in text fonts, the average letter about 0.5 em (poppler takes 0.6
    /// for `m`, which suits its lower word-gap threshold; these keep a usual font at 1), times
    /// the FontMatrix's aspect (`aspect` = |d / a|). Bitmap fonts from dvips and from Windows
    /// printer drivers use glyph spaces of 1 to 100 units per em: taking the FontMatrix as if
    /// it were 1000 units per em made their words glue together (a size 10x too large makes
    /// every gap look small) or fall apart into letter groups (10x too small).
    fn type3_size_scale(&self, aspect: f32) -> f32 {
        let Codes::Simple(table) = &self.codes else {
            return 1.0;
        };
        let advance = |c: u32| self.explicit_width(c).filter(|w| *w > 0.0).map(|_| self.width(c));
        let text = |c: u32| table[c as usize].as_deref();
        let m = (0..=255u32).find_map(|c| (text(c) == Some("m")).then(|| advance(c)).flatten());
        let em = if let Some(w) = m {
            Some(w / 0.8)
        } else {
            let letters: Vec<f32> = (0..=255u32)
                .filter(|&c| text(c).and_then(|s| s.chars().next()).is_some_and(char::is_alphabetic))
                .filter_map(advance)
                .collect();
            let all: Vec<f32> = (0..=255u32).filter_map(advance).collect();
            let pick = if letters.is_empty() { all } else { letters };
            (!pick.is_empty()).then(|| pick.iter().sum::<f32>() / pick.len() as f32 / 0.5)
        };
        let scale = em.map_or(aspect, |e| e * aspect);
        if scale.is_finite() && scale > 0.0 {
            scale.clamp(0.01, 100.0)
        } else {
            1.0
        }
    }

    /// The width a simple font's `/Widths` gives a code, in glyph space units.
    fn explicit_width(&self, code: u32) -> Option<f32> {
        match &self.widths {
            Widths::Simple { first, widths, .. } => {
                code.checked_sub(*first).and_then(|i| widths.get(i as usize)).copied()
            }
            Widths::Cid { .. } => None,
        }
    }

    /// Advance of a glyph in text space units per unit of font size.
    pub(crate) fn width(&self, code: u32) -> f32 {
        let w = match &self.widths {
            Widths::Simple { first, widths, missing } => code
                .checked_sub(*first)
                .and_then(|i| widths.get(i as usize))
                .copied()
                .filter(|w| *w > 0.0)
                .unwrap_or(*missing),
            Widths::Cid { default, map } => map.get(&code).copied().unwrap_or(*default),
        };
        w * self.width_scale
    }

    /// Whether a single-byte code 32 gets word spacing (`Tw`).
    pub(crate) fn is_simple(&self) -> bool {
        matches!(self.codes, Codes::Simple(_))
    }
}

/// One of the standard 14 fonts (or a common alias of one), whose widths a reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Std14 {
    Courier,
    Metrics(&'static [(&'static str, u16)], usize),
}

impl Std14 {
    /// The standard font a `/BaseFont` name means, ignoring a subset tag (`ABCDEF+`).
    fn from_base_font(name: &[u8]) -> Option<Std14> {
        let name = String::from_utf8_lossy(name);
        let name = match name.split_once('+') {
            Some((tag, rest)) if tag.len() == 6 && tag.bytes().all(|b| b.is_ascii_uppercase()) => rest,
            _ => &name,
        };
        let compact: String = name.chars().filter(|c| *c != ' ' && *c != '-' && *c != ',').collect();
        let lower = compact.to_ascii_lowercase();
        let bold = lower.contains("bold");
        let slanted = lower.contains("italic") || lower.contains("oblique");
        let style = usize::from(bold) * 2 + usize::from(slanted);
        if lower.starts_with("courier") {
            Some(Std14::Courier)
        } else if lower.starts_with("helvetica") || lower.starts_with("arial") {
            const FAMILY: [&[(&str, u16)]; 4] = [
                std14::HELVETICA,
                std14::HELVETICA_OBLIQUE,
                std14::HELVETICA_BOLD,
                std14::HELVETICA_BOLD_OBLIQUE,
            ];
            Some(Std14::Metrics(FAMILY[style], style))
        } else if lower.starts_with("times") {
            const FAMILY: [&[(&str, u16)]; 4] = [
                std14::TIMES_ROMAN,
                std14::TIMES_ITALIC,
                std14::TIMES_BOLD,
                std14::TIMES_BOLD_ITALIC,
            ];
            Some(Std14::Metrics(FAMILY[style], 4 + style))
        } else if lower == "symbol" {
            Some(Std14::Metrics(std14::SYMBOL, 8))
        } else {
            None
        }
    }

    /// Width of the glyph for `c`, in glyph space units (1/1000 em).
    fn width(self, c: char) -> Option<f32> {
        match self {
            Std14::Courier => Some(600.0),
            Std14::Metrics(table, slot) => {
                static BY_CHAR: [OnceLock<HashMap<char, u16>>; 9] = [const { OnceLock::new() }; 9];
                let map = BY_CHAR.get(slot)?.get_or_init(|| {
                    table
                        .iter()
                        .filter_map(|(name, w)| {
                            let s = glyph_str(name)?;
                            let mut chars = s.chars();
                            let c = chars.next()?;
                            chars.next().is_none().then_some((c, *w))
                        })
                        .collect()
                });
                map.get(&c).map(|w| f32::from(*w))
            }
        }
    }
}

/// The encoding built into a CFF font program (a PDF's `FontFile3` of subtype `Type1C`): each
/// code the program's encoding maps to a glyph whose charset name means a character, with that
/// name. Empty when the program cannot be read or maps nothing (a CID-keyed program has no
/// names).
fn builtin_cff_encoding(program: &[u8]) -> Vec<(u8, String)> {
    let Some(table) = ttf_parser::cff::Table::parse(program) else {
        return Vec::new();
    };
    (0..=255u8)
        .filter_map(|code| {
            let gid = table.glyph_index(code)?;
            if gid.0 == 0 {
                return None;
            }
            // A name that means nothing (a symbol font's `Pickup`) leaves the code to the base
            // encoding, as readers do, rather than to no text at all.
            let name = table.glyph_name(gid).filter(|n| glyph_str(n).is_some())?;
            Some((code, name.to_owned()))
        })
        .collect()
}

/// The `/Encoding` of a Type 1 font program: `dup <code> /<name> put` entries in its clear
/// text part; `None` for `StandardEncoding` or when there is none.
fn builtin_type1_encoding(program: &[u8]) -> Option<Vec<(u8, String)>> {
    let clear_end = crate::detect::memfind(program, b"eexec").unwrap_or(program.len());
    let clear = &program[..clear_end];
    let at = crate::detect::memfind(clear, b"/Encoding")?;
    let rest = &clear[at + 9..];
    if rest
        .iter()
        .take(40)
        .copied()
        .collect::<Vec<u8>>()
        .windows(16)
        .any(|w| w == b"StandardEncoding")
    {
        return None;
    }
    let mut lx = Lexer::new(rest);
    let mut st = Vec::new();
    let mut out = Vec::new();
    let mut pending: Vec<Operand> = Vec::new();
    while let Some(op) = lx.next_op(&mut st) {
        match op {
            b"dup" => pending.clear(),
            b"put" => {
                if let [Operand::Num(c), Operand::Name(n)] = st.as_slice()
                    && (0.0..=255.0).contains(c)
                {
                    out.push((*c as u8, String::from_utf8_lossy(n).into_owned()));
                }
            }
            b"def" | b"readonly" if !out.is_empty() => break,
            _ => {}
        }
        if out.len() > 256 {
            break;
        }
    }
    let _ = pending;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmap_maps_chars_and_ranges() {
        let cm = CMap::parse(
            b"1 begincodespacerange <0000> <FFFF> endcodespacerange\n2 beginbfchar <0003> <0020> <0011> <00660069> endbfchar\n\
              1 beginbfrange <0024> <0026> <0041> <0030> <0031> [<0078> <0079>] endbfrange",
        );
        assert_eq!(cm.get(2, 3).as_deref(), Some(" "));
        assert_eq!(cm.get(2, 0x11).as_deref(), Some("fi"));
        assert_eq!(cm.get(2, 0x25).as_deref(), Some("B"));
        assert_eq!(cm.get(2, 0x31).as_deref(), Some("y"));
        assert_eq!(cm.get(2, 0x99), None);
        assert_eq!(cm.code_len(&[0, 3, 0, 4]), Some(2));
    }

    #[test]
    fn glyph_names_resolve() {
        assert_eq!(glyph_str("A").as_deref(), Some("A"));
        assert_eq!(glyph_str("uni0041").as_deref(), Some("A"));
        assert_eq!(glyph_str("u1F600").as_deref(), Some("😀"));
        assert_eq!(glyph_str("a.sc").as_deref(), Some("a"));
        assert_eq!(glyph_str("f_f_i").as_deref(), Some("ffi"));
        assert_eq!(glyph_str("g123"), None);
    }

    #[test]
    fn standard_fonts_without_widths_get_their_metrics() {
        assert_eq!(Std14::from_base_font(b"Courier-Bold"), Some(Std14::Courier));
        let helvetica = Std14::from_base_font(b"Helvetica").expect("Helvetica is standard");
        assert_eq!(helvetica.width('M'), Some(833.0));
        assert_eq!(helvetica.width('i'), Some(222.0));
        assert_eq!(helvetica.width(' '), Some(278.0));
        let bold = Std14::from_base_font(b"ABCDEF+Arial,Bold").expect("Arial is Helvetica");
        assert_eq!(bold.width('i'), Some(278.0));
        let times = Std14::from_base_font(b"TimesNewRomanPS-ItalicMT").expect("Times");
        assert_eq!(times.width('a'), Some(500.0));
        assert_eq!(Std14::from_base_font(b"Symbol").and_then(|s| s.width('α')), Some(631.0));
        assert_eq!(Std14::from_base_font(b"CMR10"), None);
    }

    #[test]
    fn type1_builtin_encoding_is_read() {
        let prog = b"%!PS-AdobeFont-1.0: CMR10\n/Encoding 256 array\n0 1 255 {1 index exch /.notdef put} for\ndup 12 /fi put\ndup 65 /A put\nreadonly def\ncurrentfile eexec\x00\x01";
        let enc = builtin_type1_encoding(prog).unwrap_or_default();
        assert_eq!(enc, vec![(12, "fi".to_owned()), (65, "A".to_owned())]);
    }
}
