//! Reading the JSON form back: a small scanner for what the outbox stores (an object of
//! column values, or an array of key values), without an intermediate document.
//!
//! Two kinds of trouble are kept apart: text that is not JSON at all (the whole payload is
//! refused), and a well-formed value that is not a column value (that column's `Err`, so the
//! reason can name it). Nothing is allocated: a value is handed over as [`Raw`], borrowed
//! from the input, which the worker copies into a wire row as it is; only a name with escapes
//! (rare) is unescaped into a string of its own.

use std::borrow::Cow;

pub use super::raw::Raw;
use super::raw::Sink;

/// One value as read: the value, or why it is not a column value.
pub(crate) type Read<'a> = Result<Raw<'a>, String>;

/// Hands each pair of the JSON object `bytes` to `f`, in document order. `Err` when the bytes
/// are not a JSON object (after `f` may have seen some pairs).
pub(crate) fn for_each_pair<'a>(
    bytes: &'a [u8],
    f: &mut dyn FnMut(&str, Read<'a>),
) -> Result<(), String> {
    let mut s = Scan::new(bytes).map_err(not_json)?;
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.what_instead("payload must be a JSON object of column values", not_json));
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        return s.end().map_err(not_json);
    }
    loop {
        s.ws();
        let name = s.string().map_err(not_json)?;
        s.ws();
        s.expect(b':').map_err(not_json)?;
        s.ws();
        let v = s.value().map_err(not_json)?;
        f(&name, v);
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => break,
            _ => return Err(not_json(s.error("expected `,` or `}`"))),
        }
    }
    s.end().map_err(not_json)
}

/// Hands each value of the JSON array `bytes` to `f`, in order. `Err` when the bytes are not
/// a JSON array.
pub(crate) fn for_each_element<'a>(
    bytes: &'a [u8],
    f: &mut dyn FnMut(Read<'a>),
) -> Result<(), String> {
    let mut s = Scan::new(bytes).map_err(not_json_key)?;
    s.ws();
    if s.peek() != Some(b'[') {
        return Err(s.what_instead("it must be a JSON array of key values", not_json_key));
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b']') {
        s.i += 1;
        return s.end().map_err(not_json_key);
    }
    loop {
        s.ws();
        f(s.value().map_err(not_json_key)?);
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b']') => break,
            _ => return Err(not_json_key(s.error("expected `,` or `]`"))),
        }
    }
    s.end().map_err(not_json_key)
}

fn not_json(e: String) -> String {
    format!("payload is not JSON: {e}")
}

fn not_json_key(e: String) -> String {
    format!("not JSON: {e}")
}

/// How many bytes of `b` come before the first that ends a plain run of string text: a
/// quote, a backslash or a control character. Eight bytes at a time while none is in them
/// (column values are mostly long runs of plain text), then byte by byte.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A high bit for each byte of `x` that is zero (and maybe for bytes above one that is:
    // the byte loop below finds the exact one).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // Bytes below 0x20, quotes, backslashes.
        let stop = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')));
        if stop != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    /// Arrays and objects open around the scanner: no column value nests, so a deep one is
    /// refused (as serde_json does past 128) before it can exhaust the stack.
    depth: usize,
}

/// The deepest nesting read (serde_json's limit).
const MAX_DEPTH: usize = 128;

impl<'a> Scan<'a> {
    fn new(bytes: &'a [u8]) -> Result<Scan<'a>, String> {
        let s = std::str::from_utf8(bytes)
            .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
        Ok(Scan::over(s))
    }

    fn over(s: &'a str) -> Scan<'a> {
        Scan {
            s,
            b: s.as_bytes(),
            i: 0,
            depth: 0,
        }
    }

    fn error(&self, what: &str) -> String {
        match self.peek() {
            None => format!("{what}, found the end"),
            Some(_) => format!("{what} at byte {}", self.i),
        }
    }

    /// Why the input is not what was `wanted`: what it is instead, or that it is not JSON.
    fn what_instead(&mut self, wanted: &str, not_json: fn(String) -> String) -> String {
        let kind = match self.peek() {
            Some(b'[') => "an array",
            Some(b'{') => "an object",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            Some(b'-' | b'0'..=b'9') => "a number",
            _ => return not_json(self.error("expected a value")),
        };
        match self.skip().and_then(|()| self.end()) {
            Ok(()) => format!("{wanted}, not {kind}"),
            Err(e) => not_json(e),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += usize::from(c.is_some());
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", c as char)))
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// A value: the outer `Err` is a syntax error, the inner one a value that is no column
    /// value.
    fn value(&mut self) -> Result<Read<'a>, String> {
        match self.peek() {
            Some(b'n') => self.literal("null").map(|()| Ok(Raw::Null)),
            Some(b't') => self.literal("true").map(|()| Ok(Raw::Integer(1))),
            Some(b'f') => self.literal("false").map(|()| Ok(Raw::Integer(0))),
            Some(b'"') => {
                let start = self.i;
                let mut len = 0usize;
                self.string_into(&mut len)?;
                Ok(Ok(Raw::Text {
                    json: &self.s[start..self.i],
                    len,
                }))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'{') => self.tagged(),
            Some(b'[') => self
                .skip()
                .map(|()| Err("an array is not a column value".to_string())),
            _ => Err(self.error("expected a value")),
        }
    }

    /// A number: an integer when written without a fraction or exponent, else a real
    /// (`±9e999` reads as ±infinity, as SQLite reads it).
    fn number(&mut self) -> Result<Read<'a>, String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = |s: &mut Scan| {
            let from = s.i;
            while matches!(s.peek(), Some(b'0'..=b'9')) {
                s.i += 1;
            }
            s.i > from
        };
        let int_start = self.i;
        if !digits(self) {
            return Err(self.error("expected a digit"));
        }
        if self.b[int_start] == b'0' && self.i - int_start > 1 {
            return Err(self.error("a number may not start with 0"));
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            if !digits(self) {
                return Err(self.error("expected a digit after `.`"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        let text = &self.s[start..self.i];
        if integer {
            return Ok(text
                .parse::<i64>()
                .map(Raw::Integer)
                .map_err(|_| format!("integer {text} does not fit in 64 signed bits")));
        }
        Ok(text
            .parse::<f64>()
            .map(|f| if f.is_nan() { Raw::Null } else { Raw::Real(f) })
            .map_err(|e| format!("number {text}: {e}")))
    }

    /// An object in value position: `{"blob": "<hex>"}`, or a real of an older queue,
    /// `{"real": "inf" | "-inf" | "nan"}`.
    fn tagged(&mut self) -> Result<Read<'a>, String> {
        self.i += 1;
        let mut pairs = 0;
        let mut found: Option<Read<'a>> = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                let key = self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
                pairs += 1;
                if self.peek() == Some(b'"') && (key == "blob" || key == "real") {
                    let text = self.string()?;
                    found = Some(match (&*key, text) {
                        ("blob", Cow::Borrowed(hex)) if is_hex(hex) => Ok(Raw::Blob { hex }),
                        ("blob", _) => Err("blob is not an even-length hex string".to_string()),
                        (_, t) if t == "inf" => Ok(Raw::Real(f64::INFINITY)),
                        (_, t) if t == "-inf" => Ok(Raw::Real(f64::NEG_INFINITY)),
                        (_, t) if t == "nan" => Ok(Raw::Null),
                        (_, other) => Err(format!("unknown real `{other}`")),
                    });
                } else {
                    self.skip()?;
                }
                self.ws();
                match self.next() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    _ => return Err(self.error("expected `,` or `}`")),
                }
            }
        }
        Ok(match found {
            Some(v) if pairs == 1 => v,
            _ => Err(
                "an object value must be {\"blob\": \"<hex>\"} (or an older queue's {\"real\": \"inf\" | \"-inf\" | \"nan\"})"
                    .to_string(),
            ),
        })
    }

    /// Skips any JSON value.
    fn skip(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested more than 128 deep"));
        }
        let skipped = self.skip_value();
        self.depth -= 1;
        skipped
    }

    fn skip_value(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(b'[') | Some(b'{') => {
                let close = if self.peek() == Some(b'[') {
                    b']'
                } else {
                    b'}'
                };
                let object = close == b'}';
                self.i += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if object {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip()?;
                    self.ws();
                    match self.next() {
                        Some(b',') => continue,
                        Some(c) if c == close => return Ok(()),
                        _ => return Err(self.error("expected `,` or a closing bracket")),
                    }
                }
            }
            _ => self.value().map(drop),
        }
    }

    /// A string, borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        let start = self.i + 1;
        let rest = &self.b[start.min(self.b.len())..];
        let plain = Some(plain_run(rest)).filter(|&n| rest.get(n) == Some(&b'"'));
        if let (Some(b'"'), Some(n)) = (self.peek(), plain) {
            self.i = start + n + 1;
            return Ok(Cow::Borrowed(&self.s[start..start + n]));
        }
        let mut out = String::new();
        self.string_into(&mut out)?;
        Ok(Cow::Owned(out))
    }

    /// Reads a string, handing its text, unescaped, to `sink` in pieces.
    fn string_into<S: Sink>(&mut self, sink: &mut S) -> Result<(), String> {
        self.expect(b'"')?;
        let mut start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.error("an unterminated string")),
                Some(b'"') => {
                    sink.put(&self.s[start..self.i]);
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    sink.put(&self.s[start..self.i]);
                    self.i += 1;
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return Err(self.error("an unknown escape")),
                    };
                    sink.put(c.encode_utf8(&mut [0; 4]));
                    start = self.i;
                }
                Some(0..=0x1f) => return Err(self.error("a control character in a string")),
                Some(_) => self.i += plain_run(&self.b[self.i..]),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("expected four hex digits"))?;
        self.i += 4;
        u32::from_str_radix(digits, 16).map_err(|e| e.to_string())
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if !self.s[self.i..].starts_with("\\u") {
                return Err(self.error("a lone leading surrogate"));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.error("a lone leading surrogate"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.error("a lone trailing surrogate"))
    }
}

/// Where each value of the JSON array `text` stands in it.
pub(crate) fn element_spans(text: &str) -> Result<Vec<std::ops::Range<usize>>, String> {
    let mut s = Scan::over(text);
    let mut out = Vec::new();
    s.ws();
    s.expect(b'[')?;
    s.ws();
    if s.peek() == Some(b']') {
        return Ok(out);
    }
    loop {
        s.ws();
        let start = s.i;
        s.skip()?;
        out.push(start..s.i);
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b']') => return Ok(out),
            _ => return Err(s.error("expected `,` or `]`")),
        }
    }
}

/// Appends the text of the JSON string `json` (quotes included), unescaped, to `out`.
pub(super) fn unescape_into(json: &str, out: &mut String) {
    let _ = Scan::over(json).string_into(out);
}

/// The text of the JSON string `json` (quotes included), unescaped; `None` if it is not one.
pub(crate) fn unescape(json: &str) -> Option<String> {
    let mut out = String::new();
    let mut s = Scan::over(json);
    s.string_into(&mut out).ok()?;
    s.end().ok()?;
    Some(out)
}

fn is_hex(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bytes of even-length hex text.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::plain_run;

    /// The run as a byte-by-byte reading finds it.
    fn naive(b: &[u8]) -> usize {
        b.iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .unwrap_or(b.len())
    }

    #[test]
    fn a_plain_run_ends_where_a_byte_by_byte_reading_ends_it() {
        // Every stopping byte and its neighbours, at every place in and around a word, among
        // plain ASCII and the bytes of multi-byte characters.
        let stops = [b'"', b'\\', 0x00, 0x1f, b'\n'];
        let near = [
            0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xa9, 0xff, b'a',
        ];
        for len in 0..24 {
            for fill in near {
                let plain = vec![fill; len];
                assert_eq!(plain_run(&plain), len);
                for at in 0..len {
                    for stop in stops {
                        let mut b = plain.clone();
                        b[at] = stop;
                        assert_eq!(plain_run(&b), naive(&b), "{b:?}");
                        // A second stop after the first changes nothing.
                        if at + 1 < len {
                            b[len - 1] = b'"';
                            assert_eq!(plain_run(&b), naive(&b), "{b:?}");
                        }
                    }
                }
            }
        }
        // Random bytes, mostly plain (so runs are long), any byte at all now and then.
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let len = rng.random_range(0..48);
            let b: Vec<u8> = (0..len)
                .map(|_| match rng.random_range(0..40) {
                    0 => rng.random(),
                    _ => rng.random_range(0x20..0x7f),
                })
                .collect();
            assert_eq!(plain_run(&b), naive(&b), "{b:?}");
        }
        let text = "Please renew — message 7 with some ünïcödé and \"quotes\".".as_bytes();
        for from in 0..text.len() {
            assert_eq!(plain_run(&text[from..]), naive(&text[from..]));
        }
    }
}
