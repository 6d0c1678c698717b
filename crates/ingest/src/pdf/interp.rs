//! Runs a page's content stream far enough to know where each piece of text is drawn, and
//! assembles the pieces into lines in the order the producer drew them (which is reading
//! order for the producers that matter, including multi-column layouts written column by
//! column; sorting by position would interleave columns).

use super::font::{Font, deref, get_dict, stream_bytes};
use super::lexer::{Lexer, Operand};
use crate::{Deadline, ExtractError};
use lopdf::{Dictionary, Document, Object, ObjectId};
use std::collections::HashMap;
use std::sync::Arc;

/// Fonts already read, by object id, shared across the pages of a document.
pub(crate) type FontCache = HashMap<ObjectId, Arc<Font>>;

#[derive(Clone, Copy, Debug)]
struct Matrix([f32; 6]);

impl Matrix {
    const IDENTITY: Matrix = Matrix([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    /// `self × other` (apply self first, then other), as PDF composes matrices.
    fn then(&self, o: &Matrix) -> Matrix {
        let [a, b, c, d, e, f] = self.0;
        let [oa, ob, oc, od, oe, of] = o.0;
        Matrix([
            a * oa + b * oc,
            a * ob + b * od,
            c * oa + d * oc,
            c * ob + d * od,
            e * oa + f * oc + oe,
            e * ob + f * od + of,
        ])
    }

    fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, e, f] = self.0;
        (x * a + y * c + e, x * b + y * d + f)
    }

    fn from_operands(st: &[Operand]) -> Option<Matrix> {
        if st.len() < 6 {
            return None;
        }
        let mut m = [0.0; 6];
        for (i, o) in st[st.len() - 6..].iter().enumerate() {
            m[i] = o.num()?;
        }
        Some(Matrix(m))
    }
}

/// A run of text drawn at one place, in device space (y up).
#[derive(Debug)]
struct Item {
    x: f32,
    y: f32,
    x_end: f32,
    size: f32,
    text: std::ops::Range<usize>,
}

/// A line of text on a page, with whether a paragraph break precedes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) text: String,
    pub(crate) para_before: bool,
    /// Largest font size on the line, in device units.
    pub(crate) size: f32,
}

#[derive(Clone)]
struct TextState {
    font: Arc<Font>,
    size: f32,
    char_space: f32,
    word_space: f32,
    scale: f32,
    leading: f32,
    rise: f32,
}

/// Everything one page's interpretation needs.
pub(crate) struct PageRun<'a> {
    pub(crate) doc: &'a Document,
    pub(crate) fonts: &'a mut FontCache,
    pub(crate) stream_limit: usize,
    pub(crate) deadline: &'a Deadline,
    buf: String,
    items: Vec<Item>,
    fallback: Arc<Font>,
    forms_seen: Vec<ObjectId>,
    /// Glyphs shown on the page, and how many of them the font maps to no text.
    glyphs: u32,
    undecoded: u32,
}

/// Fewest unmapped glyphs that make a page's text layer undecodable (a page with a handful
/// of unnamed symbols is not).
const MIN_UNDECODED: u32 = 16;

/// Deepest nesting of form XObjects followed.
const MAX_FORM_DEPTH: usize = 12;
/// Deepest `q` nesting kept; deeper saves are ignored (and their restores).
const MAX_GSTATE: usize = 256;

impl<'a> PageRun<'a> {
    pub(crate) fn new(
        doc: &'a Document,
        fonts: &'a mut FontCache,
        stream_limit: usize,
        deadline: &'a Deadline,
    ) -> Self {
        PageRun {
            doc,
            fonts,
            stream_limit,
            deadline,
            buf: String::new(),
            items: Vec::new(),
            fallback: Arc::new(Font::fallback()),
            forms_seen: Vec::new(),
            glyphs: 0,
            undecoded: 0,
        }
    }

    /// Interprets a content stream with its resources.
    pub(crate) fn run(
        &mut self,
        content: &[u8],
        resources: Option<&Dictionary>,
        base: Matrix0,
    ) -> Result<(), ExtractError> {
        self.run_inner(content, resources, base.0, 0)
    }

    fn font(&mut self, resources: Option<&Dictionary>, name: &[u8]) -> Arc<Font> {
        let doc = self.doc;
        let Some(fonts) = resources.and_then(|r| get_dict(doc, r, b"Font")) else {
            return self.fallback.clone();
        };
        match fonts.get(name) {
            Ok(Object::Reference(id)) => {
                if let Some(f) = self.fonts.get(id) {
                    return f.clone();
                }
                let font = match doc
                    .get_object(*id)
                    .ok()
                    .and_then(|o| deref(doc, o))
                    .and_then(|o| o.as_dict().ok())
                {
                    Some(d) => Arc::new(Font::load(doc, d, self.stream_limit)),
                    None => self.fallback.clone(),
                };
                self.fonts.insert(*id, font.clone());
                font
            }
            Ok(Object::Dictionary(d)) => Arc::new(Font::load(doc, d, self.stream_limit)),
            _ => self.fallback.clone(),
        }
    }

    fn run_inner(
        &mut self,
        content: &[u8],
        resources: Option<&Dictionary>,
        base: Matrix,
        depth: usize,
    ) -> Result<(), ExtractError> {
        let mut lx = Lexer::new(content);
        let mut st: Vec<Operand> = Vec::new();
        let mut ctm = base;
        let mut gstack: Vec<(Matrix, TextState)> = Vec::new();
        let mut skipped_saves = 0usize;
        let mut ts = TextState {
            font: self.fallback.clone(),
            size: 0.0,
            char_space: 0.0,
            word_space: 0.0,
            scale: 1.0,
            leading: 0.0,
            rise: 0.0,
        };
        let mut tm = Matrix::IDENTITY;
        let mut tlm = Matrix::IDENTITY;
        let mut ops = 0u32;
        while let Some(op) = lx.next_op(&mut st) {
            ops = ops.wrapping_add(1);
            if ops.is_multiple_of(4096) {
                self.deadline.check()?;
            }
            match op {
                b"q" => {
                    if gstack.len() < MAX_GSTATE {
                        gstack.push((ctm, ts.clone()));
                    } else {
                        skipped_saves += 1;
                    }
                }
                b"Q" => {
                    if skipped_saves > 0 {
                        skipped_saves -= 1;
                    } else if let Some((m, t)) = gstack.pop() {
                        ctm = m;
                        ts = t;
                    }
                }
                b"cm" => {
                    if let Some(m) = Matrix::from_operands(&st) {
                        ctm = m.then(&ctm);
                    }
                }
                b"BT" => {
                    tm = Matrix::IDENTITY;
                    tlm = Matrix::IDENTITY;
                }
                b"Tf" => {
                    if let [.., Operand::Name(name), Operand::Num(size)] = st.as_slice() {
                        ts.font = self.font(resources, name);
                        ts.size = *size;
                    } else if let [.., Operand::Num(size)] = st.as_slice() {
                        ts.size = *size;
                    }
                }
                b"Tc" => ts.char_space = last_num(&st).unwrap_or(ts.char_space),
                b"Tw" => ts.word_space = last_num(&st).unwrap_or(ts.word_space),
                b"Tz" => ts.scale = last_num(&st).map_or(ts.scale, |v| v / 100.0),
                b"TL" => ts.leading = last_num(&st).unwrap_or(ts.leading),
                b"Ts" => ts.rise = last_num(&st).unwrap_or(ts.rise),
                b"Td" | b"TD" => {
                    if let [.., Operand::Num(tx), Operand::Num(ty)] = st.as_slice() {
                        if op == b"TD" {
                            ts.leading = -ty;
                        }
                        tlm = Matrix([1.0, 0.0, 0.0, 1.0, *tx, *ty]).then(&tlm);
                        tm = tlm;
                    }
                }
                b"Tm" => {
                    if let Some(m) = Matrix::from_operands(&st) {
                        tlm = m;
                        tm = m;
                    }
                }
                b"T*" => {
                    tlm = Matrix([1.0, 0.0, 0.0, 1.0, 0.0, -ts.leading]).then(&tlm);
                    tm = tlm;
                }
                b"Tj" | b"'" | b"\"" => {
                    if op != b"Tj" {
                        if op == b"\"" && st.len() >= 3 {
                            ts.word_space = st[st.len() - 3].num().unwrap_or(ts.word_space);
                            ts.char_space = st[st.len() - 2].num().unwrap_or(ts.char_space);
                        }
                        tlm = Matrix([1.0, 0.0, 0.0, 1.0, 0.0, -ts.leading]).then(&tlm);
                        tm = tlm;
                    }
                    if let Some(Operand::Str(s)) = st.last() {
                        self.show(s, &ts, &mut tm, &ctm);
                    }
                }
                b"TJ" => {
                    if let Some(Operand::Array(a)) = st.last() {
                        for el in a {
                            match el {
                                Operand::Str(s) => self.show(s, &ts, &mut tm, &ctm),
                                Operand::Num(n) => {
                                    let tx = -n / 1000.0 * ts.size * ts.scale;
                                    tm = Matrix([1.0, 0.0, 0.0, 1.0, tx, 0.0]).then(&tm);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                b"ID" => lx.skip_inline_image(),
                b"Do" => {
                    if depth < MAX_FORM_DEPTH
                        && let Some(Operand::Name(name)) = st.last()
                    {
                        self.form(resources, name, &ctm, depth)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs a form XObject.
    fn form(
        &mut self,
        resources: Option<&Dictionary>,
        name: &[u8],
        ctm: &Matrix,
        depth: usize,
    ) -> Result<(), ExtractError> {
        let doc = self.doc;
        let Some(xobjects) = resources.and_then(|r| get_dict(doc, r, b"XObject")) else {
            return Ok(());
        };
        let Ok(Object::Reference(id)) = xobjects.get(name) else {
            return Ok(());
        };
        if self.forms_seen.contains(id) || self.forms_seen.len() > MAX_FORM_DEPTH {
            // Already on the stack: a cycle.
            return Ok(());
        }
        let id = *id;
        let Ok(Object::Stream(stream)) = doc.get_object(id) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form") {
            return Ok(());
        }
        let Some(content) = stream_bytes(doc, &Object::Reference(id), self.stream_limit) else {
            return Ok(());
        };
        let matrix = match stream.dict.get(b"Matrix").ok().and_then(|o| deref(doc, o)) {
            Some(Object::Array(a)) if a.len() == 6 => {
                let v: Vec<f32> = a
                    .iter()
                    .filter_map(|o| match deref(doc, o) {
                        Some(Object::Integer(i)) => Some(*i as f32),
                        Some(Object::Real(r)) => Some(*r),
                        _ => None,
                    })
                    .collect();
                if v.len() == 6 {
                    Matrix([v[0], v[1], v[2], v[3], v[4], v[5]])
                } else {
                    Matrix::IDENTITY
                }
            }
            _ => Matrix::IDENTITY,
        };
        let own = get_dict(doc, &stream.dict, b"Resources");
        self.forms_seen.push(id);
        let r = self.run_inner(&content, own.or(resources), matrix.then(ctm), depth + 1);
        self.forms_seen.pop();
        r
    }

    /// Shows a string: decodes its codes and advances the text matrix.
    fn show(&mut self, s: &[u8], ts: &TextState, tm: &mut Matrix, ctm: &Matrix) {
        if s.is_empty() {
            return;
        }
        let font = ts.font.clone();
        let trm0 = Matrix([ts.size * ts.scale, 0.0, 0.0, ts.size, 0.0, ts.rise]).then(&tm.then(ctm));
        let (x0, y0) = trm0.apply(0.0, 0.0);
        let size = trm0.0[2].hypot(trm0.0[3]) * font.size_scale;
        let start = self.buf.len();
        let mut rest = s;
        while !rest.is_empty() {
            let (code, n) = font.next_code(rest);
            let n = n.max(1);
            self.glyphs = self.glyphs.saturating_add(1);
            if !font.decode_into(code, n, &mut self.buf) {
                self.undecoded = self.undecoded.saturating_add(1);
            }
            let mut tx = font.width(code) * ts.size + ts.char_space;
            if n == 1 && code == 32 && font.is_simple() {
                tx += ts.word_space;
            }
            tx *= ts.scale;
            *tm = Matrix([1.0, 0.0, 0.0, 1.0, tx, 0.0]).then(tm);
            rest = &rest[n.min(rest.len())..];
        }
        let (x1, y1) = Matrix([ts.size * ts.scale, 0.0, 0.0, ts.size, 0.0, ts.rise])
            .then(&tm.then(ctm))
            .apply(0.0, 0.0);
        // Rotated text (a landscape table on a portrait page, a label up a margin) is laid out
        // in its own frame: the quarter turn nearest its baseline's direction becomes x, so
        // the line rules below hold. Text turned by less than 45 degrees (jittered glyphs, a
        // slanted title) stays in the page's frame.
        let (dx, dy) = (trm0.0[0], trm0.0[1]);
        let (x0, y0, x1) = if dx >= dy.abs() {
            (x0, y0, x1)
        } else if dy > dx.abs() {
            (y0, -x0, y1)
        } else if -dy > dx.abs() {
            (-y0, x0, -y1)
        } else {
            (-x0, -y0, -x1)
        };
        if self.buf.len() > start && x0.is_finite() && y0.is_finite() && x1.is_finite() {
            self.items.push(Item {
                x: x0,
                y: y0,
                x_end: x1,
                size: if size.is_finite() && size > 0.0 { size } else { 10.0 },
                text: start..self.buf.len(),
            });
        }
    }

    /// Whether the page draws text that cannot be read: at least [`MIN_UNDECODED`] glyphs,
    /// and most of its glyphs, in fonts that map them to no character.
    pub(crate) fn undecodable(&self) -> bool {
        self.undecoded >= MIN_UNDECODED && u64::from(self.undecoded) * 2 > u64::from(self.glyphs)
    }

    /// Lays the collected text out as lines.
    pub(crate) fn lines(self) -> Vec<Line> {
        let mut lines: Vec<RawLine> = Vec::new();
        let mut cur = RawLine::default();
        // Geometry of the current line: baseline, start x, end x, size of its first item.
        let mut geo: Option<(f32, f32, f32, f32)> = None;
        for it in &self.items {
            let text = &self.buf[it.text.clone()];
            let blank = text.trim().is_empty();
            if blank && geo.is_none() {
                continue;
            }
            match geo {
                None => {
                    cur.push(it, text.trim_start(), false);
                    geo = Some((it.y, it.x, it.x_end, it.size));
                }
                Some((y, x_start, x_end, size)) => {
                    let tall = size.max(it.size);
                    let same_line = (it.y - y).abs() < 0.5 * tall.min(size.max(1.0) * 2.0) && it.x > x_start - tall;
                    let gap = it.x - x_end;
                    // A short piece off the baseline drawn back over the line: a label's
                    // subscript drawn after the other labels of a figure. It goes on a line
                    // of its own, and `attach_fragments` puts it after the text it touches.
                    let stray = same_line
                        && gap < -0.5 * tall
                        && (it.y - y).abs() > 0.15 * tall
                        && is_fragment(text)
                        && !cur.text.ends_with(text);
                    if same_line && !stray {
                        // Overprinted duplicates (fake bold, shadows) draw the same text again
                        // in about the same place.
                        if gap < -0.3 * tall && !blank && cur.text.ends_with(text) {
                            continue;
                        }
                        let space = gap > 0.15 * tall && !cur.text.ends_with(' ') && !text.starts_with(' ');
                        cur.push(it, text, space);
                        geo = Some((y, x_start.min(it.x), x_end.max(it.x_end), size));
                    } else if !blank {
                        // A paragraph break: more than a blank line's worth of vertical
                        // space, a jump back up the page (next column or block), or a
                        // first-line indent.
                        let dy = y - it.y;
                        let indent = it.x - x_start;
                        let para =
                            dy > 1.9 * tall || dy < -tall || (dy > 0.0 && indent > 0.8 * tall && indent < 8.0 * tall);
                        lines.push(std::mem::take(&mut cur));
                        cur.para_before = para;
                        cur.push(it, text.trim_start(), false);
                        geo = Some((it.y, it.x, it.x_end, it.size));
                    }
                }
            }
        }
        lines.push(cur);
        attach_fragments(&mut lines);
        for l in &mut lines {
            compose_accents(l);
        }
        lines
            .into_iter()
            .filter(|l| !l.text.trim().is_empty())
            .map(|l| Line {
                text: tidy(&l.text),
                para_before: l.para_before,
                size: l.size,
            })
            .collect()
    }
}

/// A line being laid out: its text so far and where each piece of it was drawn.
#[derive(Default)]
struct RawLine {
    text: String,
    pieces: Vec<Piece>,
    para_before: bool,
    /// Largest font size of its non-blank pieces.
    size: f32,
}

/// Where one drawn item sits in a [`RawLine`]'s text and on the page.
struct Piece {
    range: std::ops::Range<usize>,
    x: f32,
    x_end: f32,
    y: f32,
    size: f32,
}

impl RawLine {
    fn push(&mut self, it: &Item, text: &str, space_before: bool) {
        if space_before {
            self.text.push(' ');
        }
        let start = self.text.len();
        self.text.push_str(text);
        if !text.trim().is_empty() {
            self.size = self.size.max(it.size);
        }
        self.pieces.push(Piece {
            range: start..self.text.len(),
            x: it.x,
            x_end: it.x_end,
            y: it.y,
            size: it.size,
        });
    }
}

/// Whether drawn text is short enough to be a sub- or superscript or a label's index (`a` of
/// R<sub>a</sub>): one to three characters, no space inside.
fn is_fragment(text: &str) -> bool {
    let t = text.trim();
    (1..=3).contains(&t.chars().count()) && !t.contains(char::is_whitespace)
}

/// How many earlier lines a fragment looks back through for the text it belongs to.
const ATTACH_LOOKBACK: usize = 64;

/// Moves the pieces of lines made only of fragments to the earlier line whose text they touch:
/// starting within a fifth of their size after that text's end (or slightly over it), at most
/// three quarters of their size above or below its baseline. Figures drawn label by label and
/// then index by index (`R`, `R`, ..., then `a`, `c`) read `Ra Rc` instead of `R R` and stray
/// letters. A fragment that touches nothing stays where it was.
fn attach_fragments(lines: &mut [RawLine]) {
    for i in 1..lines.len() {
        let (before, rest) = lines.split_at_mut(i);
        let line = &mut rest[0];
        if line.pieces.is_empty()
            || line.pieces.len() > 4
            || !line.pieces.iter().all(|p| is_fragment(&line.text[p.range.clone()]))
        {
            continue;
        }
        // Where each piece goes: (lines back from this one, piece index there).
        let targets: Vec<Option<(usize, usize)>> = line
            .pieces
            .iter()
            .map(|p| {
                before
                    .iter()
                    .rev()
                    .take(ATTACH_LOOKBACK)
                    .enumerate()
                    .find_map(|(back, l)| {
                        let k = l.pieces.iter().position(|q| {
                            let s = p.size.max(q.size);
                            let gap = p.x - q.x_end;
                            p.x > q.x && (-0.3 * s..=0.2 * s).contains(&gap) && (p.y - q.y).abs() < 0.75 * s
                        })?;
                        Some((back, k))
                    })
            })
            .collect();
        if targets.iter().all(Option::is_none) {
            continue;
        }
        let mut kept = RawLine {
            para_before: line.para_before,
            ..RawLine::default()
        };
        for (p, target) in line.pieces.drain(..).zip(targets) {
            let text = line.text[p.range.clone()].trim();
            let Some((back, k)) = target else {
                kept.text.push_str(if kept.text.is_empty() { "" } else { " " });
                let start = kept.text.len();
                kept.text.push_str(text);
                kept.size = kept.size.max(p.size);
                kept.pieces.push(Piece {
                    range: start..kept.text.len(),
                    ..p
                });
                continue;
            };
            let l = &mut before[before.len() - 1 - back];
            let at = l.pieces[k].range.end;
            l.text.insert_str(at, text);
            for q in &mut l.pieces {
                if q.range.start >= at {
                    q.range.start += text.len();
                    q.range.end += text.len();
                }
            }
            l.pieces[k].range.end += text.len();
            l.pieces[k].x_end = l.pieces[k].x_end.max(p.x_end);
        }
        *line = kept;
    }
}

/// Spacing accents as TeX's OT1 fonts (and others without precomposed letters) draw them: a
/// glyph of its own, kerned over the letter. Each with the letters it composes with, as pairs
/// of base letter and precomposed letter (generated with Python's `unicodedata.normalize`).
const ACCENTS: &[(char, &str)] = &[
    ('`', "AÀEÈIÌNǸOÒUÙWẀYỲaàeèiìnǹoòuùwẁyỳıìâầêềôồăằơờưừÂẦÊỀÔỒĂẰƠỜƯỪ"),
    (
        '´',
        "AÁCĆEÉGǴIÍKḰLĹMḾNŃOÓPṔRŔSŚUÚWẂYÝZŹaácćeégǵiíkḱlĺmḿnńoópṕrŕsśuúwẃyýzźıíâấêếôốăắơớưứÂẤÊẾÔỐĂẮƠỚƯỨ",
    ),
    ('ˆ', "AÂCĈEÊGĜHĤIÎJĴOÔSŜUÛWŴYŶZẐaâcĉeêgĝhĥiîjĵoôsŝuûwŵyŷzẑıîȷĵ"),
    ('˜', "AÃEẼIĨNÑOÕUŨVṼYỸaãeẽiĩnñoõuũvṽyỹıĩâẫêễôỗăẵơỡưữÂẪÊỄÔỖĂẴƠỠƯỮ"),
    ('¯', "AĀEĒGḠIĪOŌUŪYȲaāeēgḡiīoōuūyȳıī"),
    ('˘', "AĂEĔGĞIĬOŎUŬaăeĕgğiĭoŏuŭıĭ"),
    (
        '˙',
        "AȦBḂCĊDḊEĖFḞGĠHḢIİMṀNṄOȮPṖRṘSṠTṪWẆXẊYẎZŻaȧbḃcċdḋeėfḟgġhḣmṁnṅoȯpṗrṙsṡtṫwẇxẋyẏzż",
    ),
    ('¨', "AÄEËHḦIÏOÖUÜWẄXẌYŸaäeëhḧiïoötẗuüwẅxẍyÿıï"),
    ('˚', "AÅUŮaåuůwẘyẙ"),
    ('˝', "OŐUŰoőuű"),
    (
        'ˇ',
        "AǍCČDĎEĚGǦHȞIǏKǨLĽNŇOǑRŘSŠTŤUǓZŽaǎcčdďeěgǧhȟiǐjǰkǩlľnňoǒrřsštťuǔzžıǐȷǰ",
    ),
    ('¸', "CÇDḐEȨGĢHḨKĶLĻNŅRŖSŞTŢcçdḑeȩgģhḩkķlļnņrŗsştţ"),
    ('˛', "AĄEĘIĮOǪUŲaąeęiįoǫuųıį"),
];

fn is_accent(c: char) -> bool {
    ACCENTS.iter().any(|(a, _)| *a == c)
}

/// The precomposed letter for `base` under (or over) `accent`, if Unicode has one.
fn composed(accent: char, base: char) -> Option<char> {
    let (_, pairs) = ACCENTS.iter().find(|(a, _)| *a == accent)?;
    let mut it = pairs.chars();
    while let (Some(b), Some(c)) = (it.next(), it.next()) {
        if b == base {
            return Some(c);
        }
    }
    None
}

/// Joins an accent drawn as a glyph of its own to the letter it is drawn over: the piece after
/// it when that starts back under the accent (TeX's `H\`an` is `H`, `` ` ``, `an`: "Hàn", not
/// "H`an"), else the piece before it when the accent was drawn back over that piece's last
/// letter (the acute of Vietnamese "ế" after "ê"). An accent over nothing, or over a letter
/// Unicode has no precomposed form for, stays as it was.
fn compose_accents(line: &mut RawLine) {
    if !line.text.chars().any(is_accent) {
        return;
    }
    let pieces = std::mem::take(&mut line.pieces);
    let mut seps = Vec::with_capacity(pieces.len());
    let mut texts = Vec::with_capacity(pieces.len());
    let mut prev_end = 0;
    for p in &pieces {
        seps.push(line.text[prev_end..p.range.start].to_owned());
        texts.push(line.text[p.range.clone()].to_owned());
        prev_end = p.range.end;
    }
    let tail = line.text[prev_end..].to_owned();
    let mut dropped = vec![false; pieces.len()];
    for i in 0..pieces.len() {
        let mut chars = texts[i].trim().chars();
        let (Some(accent), None) = (chars.next(), chars.next()) else {
            continue;
        };
        if !is_accent(accent) {
            continue;
        }
        let a = &pieces[i];
        let s = a.size.max(1.0);
        if let Some(next) = pieces.get(i + 1)
            && next.x < a.x_end - 0.25 * s
            && next.x > a.x - 0.6 * s
            && let Some(first) = texts[i + 1].chars().next()
            && let Some(c) = composed(accent, first)
        {
            texts[i + 1].replace_range(..first.len_utf8(), c.encode_utf8(&mut [0; 4]));
            seps[i + 1] = std::mem::take(&mut seps[i]);
            dropped[i] = true;
        } else if i > 0
            && !dropped[i - 1]
            && a.x < pieces[i - 1].x_end - 0.25 * s
            && let Some(last) = texts[i - 1].chars().last()
            && let Some(c) = composed(accent, last)
        {
            let at = texts[i - 1].len() - last.len_utf8();
            texts[i - 1].replace_range(at.., c.encode_utf8(&mut [0; 4]));
            dropped[i] = true;
        }
    }
    let mut text = String::with_capacity(line.text.len());
    for (((mut p, sep), t), gone) in pieces.into_iter().zip(seps).zip(texts).zip(dropped) {
        if gone {
            continue;
        }
        text.push_str(&sep);
        p.range = text.len()..text.len() + t.len();
        text.push_str(&t);
        line.pieces.push(p);
    }
    text.push_str(&tail);
    line.text = text;
}

/// Matrix applied before the page's content (identity; reserved for page rotation).
#[derive(Clone, Copy)]
pub(crate) struct Matrix0(Matrix);

impl Default for Matrix0 {
    fn default() -> Self {
        Matrix0(Matrix::IDENTITY)
    }
}

fn last_num(st: &[Operand]) -> Option<f32> {
    st.last().and_then(Operand::num)
}

/// Collapses runs of spaces and tabs and trims the line.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.trim().chars() {
        if c == ' ' || c == '\t' || c == '\n' {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    out
}
