//! A tokenizer for content streams and CMaps: PostScript-like syntax read iteratively, so no
//! input can overflow the stack, and with every collection bounded.

/// An operand: what precedes an operator in a content stream or CMap.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Num(f32),
    Str(Vec<u8>),
    Name(Vec<u8>),
    /// Elements of an array; nested arrays are flattened into their parent.
    Array(Vec<Operand>),
    /// A dictionary or other value whose content text extraction does not need.
    Other,
}

impl Operand {
    pub(crate) fn num(&self) -> Option<f32> {
        match self {
            Operand::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// Most operands kept before an operator; the rest are dropped (no real operator takes more,
/// and CMap blocks hold at most 100 entries of 3 operands).
const MAX_OPERANDS: usize = 4096;
/// Most elements of one array.
const MAX_ARRAY: usize = 1 << 16;

pub(crate) struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
}

fn is_white(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t' | 0x0c | 0)
}

fn is_delim(c: u8) -> bool {
    matches!(c, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

enum Tok<'a> {
    Operand(Operand),
    ArrOpen,
    ArrClose,
    DictOpen,
    DictClose,
    Op(&'a [u8]),
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Lexer { b, pos: 0 }
    }

    /// Reads operands into `stack` (cleared first) up to the next operator, and returns the
    /// operator; `None` at the end of input.
    pub(crate) fn next_op(&mut self, stack: &mut Vec<Operand>) -> Option<&'a [u8]> {
        stack.clear();
        // Open arrays (elements collected so far); nested arrays flatten into the outermost.
        let mut array: Option<Vec<Operand>> = None;
        let mut array_depth = 0usize;
        let mut dict_depth = 0usize;
        loop {
            let tok = self.token()?;
            if dict_depth > 0 {
                match tok {
                    Tok::DictOpen => dict_depth += 1,
                    Tok::DictClose => {
                        dict_depth -= 1;
                        if dict_depth == 0 && array.is_none() && stack.len() < MAX_OPERANDS {
                            stack.push(Operand::Other);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match tok {
                Tok::DictOpen => dict_depth = 1,
                Tok::DictClose => {}
                Tok::ArrOpen => {
                    array_depth += 1;
                    array.get_or_insert_with(Vec::new);
                }
                Tok::ArrClose => {
                    if array_depth > 0 {
                        array_depth -= 1;
                        if array_depth == 0
                            && let Some(a) = array.take()
                            && stack.len() < MAX_OPERANDS
                        {
                            stack.push(Operand::Array(a));
                        }
                    }
                }
                Tok::Operand(o) => match array.as_mut() {
                    Some(a) => {
                        if a.len() < MAX_ARRAY {
                            a.push(o);
                        }
                    }
                    None => {
                        if stack.len() < MAX_OPERANDS {
                            stack.push(o);
                        }
                    }
                },
                Tok::Op(op) => {
                    if array.is_some() {
                        // An operator inside an array is malformed; treat `true`/`false`/`null`
                        // and junk alike as a value.
                        if let Some(a) = array.as_mut()
                            && a.len() < MAX_ARRAY
                        {
                            a.push(Operand::Other);
                        }
                        continue;
                    }
                    match op {
                        b"true" | b"false" | b"null" => {
                            if stack.len() < MAX_OPERANDS {
                                stack.push(Operand::Other);
                            }
                        }
                        _ => return Some(op),
                    }
                }
            }
        }
    }

    /// Skips inline image data after `ID`, up to and including `EI`.
    pub(crate) fn skip_inline_image(&mut self) {
        let b = self.b;
        let mut i = self.pos + 1;
        while i + 1 < b.len() {
            if b[i] == b'E'
                && b[i + 1] == b'I'
                && is_white(b[i - 1])
                && (i + 2 == b.len() || is_white(b[i + 2]) || is_delim(b[i + 2]))
            {
                self.pos = i + 2;
                return;
            }
            i += 1;
        }
        self.pos = b.len();
    }

    fn token(&mut self) -> Option<Tok<'a>> {
        let b = self.b;
        loop {
            while self.pos < b.len() && is_white(b[self.pos]) {
                self.pos += 1;
            }
            let c = *b.get(self.pos)?;
            match c {
                b'%' => {
                    while self.pos < b.len() && b[self.pos] != b'\n' && b[self.pos] != b'\r' {
                        self.pos += 1;
                    }
                }
                b'(' => return Some(Tok::Operand(Operand::Str(self.literal()))),
                b'<' => {
                    if b.get(self.pos + 1) == Some(&b'<') {
                        self.pos += 2;
                        return Some(Tok::DictOpen);
                    }
                    return Some(Tok::Operand(Operand::Str(self.hex())));
                }
                b'>' => {
                    self.pos += 1;
                    if b.get(self.pos) == Some(&b'>') {
                        self.pos += 1;
                        return Some(Tok::DictClose);
                    }
                }
                b'[' => {
                    self.pos += 1;
                    return Some(Tok::ArrOpen);
                }
                b']' => {
                    self.pos += 1;
                    return Some(Tok::ArrClose);
                }
                b'{' | b'}' | b')' => self.pos += 1,
                b'/' => {
                    self.pos += 1;
                    return Some(Tok::Operand(Operand::Name(self.name())));
                }
                b'+' | b'-' | b'.' | b'0'..=b'9' => return Some(self.number()),
                _ => {
                    let start = self.pos;
                    while self.pos < b.len() && !is_white(b[self.pos]) && !is_delim(b[self.pos]) {
                        self.pos += 1;
                    }
                    return Some(Tok::Op(&b[start..self.pos]));
                }
            }
        }
    }

    fn number(&mut self) -> Tok<'a> {
        let b = self.b;
        let start = self.pos;
        self.pos += 1;
        while self.pos < b.len() && matches!(b[self.pos], b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E') {
            self.pos += 1;
        }
        let s = &b[start..self.pos];
        // Lenient like readers: "--5" or "5.-" still mean something; junk means 0.
        let parsed = std::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<f32>().ok())
            .or_else(|| {
                let t: String = s
                    .iter()
                    .map(|&c| c as char)
                    .filter(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                let v = t.parse::<f32>().ok()?;
                Some(if s.first() == Some(&b'-') { -v } else { v })
            });
        Tok::Operand(Operand::Num(parsed.filter(|v| v.is_finite()).unwrap_or(0.0)))
    }

    fn name(&mut self) -> Vec<u8> {
        let b = self.b;
        let mut out = Vec::new();
        while self.pos < b.len() && !is_white(b[self.pos]) && !is_delim(b[self.pos]) {
            let c = b[self.pos];
            if c == b'#'
                && let Some(v) = b
                    .get(self.pos + 1..self.pos + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                self.pos += 3;
                continue;
            }
            out.push(c);
            self.pos += 1;
        }
        out
    }

    fn hex(&mut self) -> Vec<u8> {
        let b = self.b;
        self.pos += 1;
        let mut out = Vec::new();
        let mut hi: Option<u8> = None;
        while self.pos < b.len() {
            let c = b[self.pos];
            self.pos += 1;
            let v = match c {
                b'>' => break,
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => continue,
            };
            match hi.take() {
                None => hi = Some(v),
                Some(h) => out.push(h << 4 | v),
            }
        }
        if let Some(h) = hi {
            out.push(h << 4);
        }
        out
    }

    fn literal(&mut self) -> Vec<u8> {
        let b = self.b;
        self.pos += 1;
        let mut out = Vec::new();
        let mut depth = 1usize;
        while self.pos < b.len() {
            let c = b[self.pos];
            self.pos += 1;
            match c {
                b'(' => {
                    depth += 1;
                    out.push(c);
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                    out.push(c);
                }
                b'\\' => {
                    let Some(&e) = b.get(self.pos) else { break };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'\r' => {
                            if b.get(self.pos) == Some(&b'\n') {
                                self.pos += 1;
                            }
                        }
                        b'\n' => {}
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match b.get(self.pos) {
                                    Some(&d @ b'0'..=b'7') => {
                                        v = v * 8 + u32::from(d - b'0');
                                        self.pos += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push(v as u8);
                        }
                        other => out.push(other),
                    }
                }
                b'\r' => {
                    // An end of line inside a string is a single \n.
                    if b.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    out.push(b'\n');
                }
                _ => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_operators_with_their_operands() {
        let mut lx = Lexer::new(b"BT /F1 12 Tf [(Hel) -20 (lo\\051)] TJ <48 65>Tj ET % c\n<</A [1 2]>> BDC");
        let mut st = Vec::new();
        assert_eq!(lx.next_op(&mut st), Some(&b"BT"[..]));
        assert_eq!(lx.next_op(&mut st), Some(&b"Tf"[..]));
        assert_eq!(st, vec![Operand::Name(b"F1".to_vec()), Operand::Num(12.0)]);
        assert_eq!(lx.next_op(&mut st), Some(&b"TJ"[..]));
        assert_eq!(
            st,
            vec![Operand::Array(vec![
                Operand::Str(b"Hel".to_vec()),
                Operand::Num(-20.0),
                Operand::Str(b"lo)".to_vec())
            ])]
        );
        assert_eq!(lx.next_op(&mut st), Some(&b"Tj"[..]));
        assert_eq!(st, vec![Operand::Str(b"He".to_vec())]);
        assert_eq!(lx.next_op(&mut st), Some(&b"ET"[..]));
        assert_eq!(lx.next_op(&mut st), Some(&b"BDC"[..]));
        assert_eq!(st, vec![Operand::Other]);
        assert_eq!(lx.next_op(&mut st), None);
    }

    #[test]
    fn deep_nesting_is_flat_and_bounded() {
        let mut input = vec![b'['; 100_000];
        input.extend(vec![b']'; 100_000]);
        input.extend_from_slice(b" TJ");
        let mut st = Vec::new();
        assert_eq!(Lexer::new(&input).next_op(&mut st), Some(&b"TJ"[..]));
    }
}
