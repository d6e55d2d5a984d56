//! A strict, allocation-light JSON scanner for the two documents on the
//! verification hot path: the JOSE header and the JWT claims.
//!
//! It accepts exactly what [`super::json::parse_object`] accepts (RFC 8259
//! JSON, no duplicate member names at any depth, escapes compared after
//! decoding, nesting at most [`MAX_JSON_DEPTH`], no lone surrogates, nothing
//! after the value) but walks the bytes once: the input is checked as UTF-8
//! once, strings without escapes are borrowed, and skipped values are only
//! validated. A differential property test holds it to `parse_object`.

use std::borrow::Cow;

use super::json::{CowStr, MAX_JSON_DEPTH};

/// Why a document was refused; callers map it to one `TokenError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonError(pub &'static str);

pub(crate) type Result<T> = std::result::Result<T, JsonError>;

/// A JSON number, as an integer when it is one and fits, else as a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    /// A fraction, an exponent, or an integer outside `i64`.
    Float(f64),
}

/// A cursor over one JSON document.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    /// Object members still allowed, at any depth (duplicate detection is
    /// quadratic in the members of one object, so untrusted input is capped).
    members_left: usize,
}

impl<'a> Scanner<'a> {
    /// Starts a scan; the whole input must be UTF-8.
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|_| JsonError("not UTF-8"))?;
        Ok(Self {
            text,
            pos: 0,
            members_left: usize::MAX,
        })
    }

    /// Refuses documents with more than `max` object members in all.
    pub(crate) fn with_member_limit(mut self, max: usize) -> Self {
        self.members_left = max;
        self
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next non-whitespace byte, without consuming it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    fn eat(&mut self, want: u8) -> Result<()> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(JsonError("unexpected character"))
        }
    }

    /// Succeeds only when nothing but whitespace is left.
    pub(crate) fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(JsonError("trailing data")),
        }
    }

    /// Walks an object at `depth` (the object itself is one level deeper),
    /// calling `member` with each name; `member` must consume the value.
    pub(crate) fn object(
        &mut self,
        depth: u8,
        mut member: impl FnMut(&mut Self, CowStr<'a>, u8) -> Result<()>,
    ) -> Result<()> {
        let inner = deeper(depth)?;
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.members_left = self
                .members_left
                .checked_sub(1)
                .ok_or(JsonError("too many members"))?;
            let name = self.string()?;
            self.eat(b':')?;
            member(self, name, inner)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(JsonError("expected `,` or `}`")),
            }
        }
    }

    /// Walks an array at `depth`, calling `element` for each element, which
    /// it must consume.
    pub(crate) fn array(
        &mut self,
        depth: u8,
        mut element: impl FnMut(&mut Self, u8) -> Result<()>,
    ) -> Result<()> {
        let inner = deeper(depth)?;
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self, inner)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(JsonError("expected `,` or `]`")),
            }
        }
    }

    /// A string, borrowed when it holds no escape.
    pub(crate) fn string(&mut self) -> Result<CowStr<'a>> {
        self.eat(b'"')?;
        let b = self.bytes();
        let start = self.pos;
        // The common case: no escape. One tight pass to the first byte that
        // ends or complicates the string.
        let mut i = start + first_special(&b[start..]).ok_or(JsonError("unterminated string"))?;
        match b[i] {
            b'"' => {
                self.pos = i + 1;
                return Ok(CowStr(Cow::Borrowed(&self.text[start..i])));
            }
            b'\\' => {}
            _ => return Err(JsonError("control character in string")),
        }
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.text[start..i]);
        let mut run = i;
        loop {
            match b.get(i) {
                None => return Err(JsonError("unterminated string")),
                Some(b'"') => {
                    out.push_str(&self.text[run..i]);
                    self.pos = i + 1;
                    return Ok(CowStr(Cow::Owned(out)));
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run..i]);
                    i = self.escape(i + 1, &mut out)?;
                    run = i;
                }
                Some(&c) if c < 0x20 => return Err(JsonError("control character in string")),
                Some(_) => i += 1,
            }
        }
    }

    /// Decodes the escape after a backslash at `i`; returns the next index.
    fn escape(&self, i: usize, out: &mut String) -> Result<usize> {
        let b = self.bytes();
        let c = match b.get(i) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4(i + 1)?;
                let (code, next) = match hi {
                    0xD800..=0xDBFF => {
                        if b.get(i + 5) != Some(&b'\\') || b.get(i + 6) != Some(&b'u') {
                            return Err(JsonError("lone surrogate"));
                        }
                        let lo = self.hex4(i + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(JsonError("lone surrogate"));
                        }
                        (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), i + 11)
                    }
                    0xDC00..=0xDFFF => return Err(JsonError("lone surrogate")),
                    _ => (hi, i + 5),
                };
                out.push(char::from_u32(code).ok_or(JsonError("invalid escape"))?);
                return Ok(next);
            }
            _ => return Err(JsonError("invalid escape")),
        };
        out.push(c);
        Ok(i + 1)
    }

    fn hex4(&self, i: usize) -> Result<u32> {
        let digits = self
            .bytes()
            .get(i..i + 4)
            .ok_or(JsonError("truncated escape"))?;
        digits.iter().try_fold(0u32, |acc, &d| {
            let v = (d as char)
                .to_digit(16)
                .ok_or(JsonError("invalid escape"))?;
            Ok(acc << 4 | v)
        })
    }

    /// A number per the JSON grammar.
    pub(crate) fn number(&mut self) -> Result<Number> {
        self.peek();
        let b = self.bytes();
        let start = self.pos;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(b, i),
            _ => return Err(JsonError("invalid number")),
        }
        let mut integral = true;
        if b.get(i) == Some(&b'.') {
            integral = false;
            let end = digits(b, i + 1);
            if end == i + 1 {
                return Err(JsonError("invalid number"));
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            integral = false;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(b, i);
            if end == i {
                return Err(JsonError("invalid number"));
            }
            i = end;
        }
        self.pos = i;
        let text = &self.text[start..i];
        if integral && let Ok(v) = text.parse::<i64>() {
            return Ok(Number::Int(v));
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Number::Float(v)),
            _ => Err(JsonError("number out of range")),
        }
    }

    /// Validates and discards any value at `depth`.
    pub(crate) fn skip(&mut self, depth: u8) -> Result<()> {
        match self.peek() {
            Some(b'{') => {
                let mut names = super::json::MemberNames::default();
                self.object(depth, |s, name, inner| {
                    names.insert(name)?;
                    s.skip(inner)
                })
            }
            Some(b'[') => self.array(depth, |s, inner| s.skip(inner)),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(_) => self.number().map(drop),
            None => Err(JsonError("unexpected end")),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<()> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(JsonError("invalid literal"))
        }
    }
}

/// The index of the first `"`, `\\` or control character, eight bytes at a
/// time (SWAR): string scanning was the largest cost of the claims pass.
fn first_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The lowest flagged byte of each test is exact (borrows only run upward).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let v = u64::from_le_bytes(chunk);
        let hits = below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1)
            | below(v, 0x20);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn deeper(depth: u8) -> Result<u8> {
    if depth >= MAX_JSON_DEPTH {
        Err(JsonError("nesting too deep"))
    } else {
        Ok(depth + 1)
    }
}

/// Validates a whole document that must be an object.
#[cfg(test)]
pub(crate) fn validate_object(bytes: &[u8]) -> Result<()> {
    let mut s = Scanner::new(bytes)?;
    if s.peek() != Some(b'{') {
        return Err(JsonError("not an object"));
    }
    s.skip(0)?;
    s.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::json::parse_object;
    use proptest::prelude::*;

    fn agree(doc: &[u8]) {
        assert_eq!(
            validate_object(doc).is_ok(),
            parse_object(doc).is_ok(),
            "scanner and reference disagree on {:?}",
            String::from_utf8_lossy(doc)
        );
    }

    #[test]
    fn edge_cases_agree_with_the_reference() {
        for doc in [
            &br#"{}"#[..],
            br#" { "a" : [ 1 , -0.5e+3 , true , false , null , "x" ] } "#,
            br#"{"a":1,"a":2}"#,
            br#"{"a":1,"\u0061":2}"#,
            br#"{"x":{"b":[{"c":1,"c":1}]}}"#,
            br#"{"a":"\ud83d\ude00"}"#,
            br#"{"a":"\ud83d"}"#,
            br#"{"a":"\ude00"}"#,
            br#"{"a":"\ud83dx"}"#,
            br#"{"a":"\u00e9\n\t\"\\\/\b\f\r"}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a":01}"#,
            br#"{"a":-}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":1e}"#,
            br#"{"a":+1}"#,
            br#"{"a":1E+2}"#,
            br#"{"a":123456789012345678901234567890}"#,
            br#"{"a":1e400}"#,
            br#"{"a":tru}"#,
            br#"{"a":truex}"#,
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{,}"#,
            br#"{"a" 1}"#,
            br#"{"a":1} x"#,
            br#"{"a":1"#,
            br#"{"a":"#,
            br#"[1]"#,
            br#""s""#,
            b"",
            b"{\"a\":1}\x00",
        ] {
            agree(doc);
        }
    }

    #[test]
    fn depth_is_bounded_like_the_reference() {
        for n in [14, 15, 16, 17] {
            let doc = format!(r#"{{"a":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
            agree(doc.as_bytes());
        }
    }

    fn first_special_reference(b: &[u8]) -> Option<usize> {
        b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
    }

    proptest! {
        #[test]
        fn first_special_finds_the_first_quote_backslash_or_control(
            b in proptest::collection::vec(
                prop_oneof![1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 30 => 0x20u8..=0xff],
                0..40,
            )
        ) {
            prop_assert_eq!(first_special(&b), first_special_reference(&b));
        }

        #[test]
        fn random_documents_agree_with_the_reference(doc in json_like()) {
            agree(doc.as_bytes());
        }

        #[test]
        fn generated_json_values_agree_with_the_reference(v in json_value()) {
            let doc = serde_json::json!({ "v": v, "w": [v] }).to_string();
            agree(doc.as_bytes());
            prop_assert!(validate_object(doc.as_bytes()).is_ok() || doc.matches('[').count() > 12);
        }

        #[test]
        fn random_bytes_agree_with_the_reference(doc in proptest::collection::vec(any::<u8>(), 0..40)) {
            agree(&doc);
        }
    }

    /// Any JSON value: strings with escapes and non-ASCII, numbers of every
    /// form, nested arrays and objects.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}|[\"\\\u{0}-\u{1f}\u{e9}\u{1F600}]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c\u{e9}]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Near-JSON text: valid documents with random tokens spliced in.
    fn json_like() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\"a\"".to_owned()),
            Just("\"b\"".to_owned()),
            Just("\"\\u0061\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            Just("\"\\n\"".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("-0".to_owned()),
            Just("1.5e3".to_owned()),
            Just("01".to_owned()),
            "[a-z0-9\"\\\\{}\\[\\]:,.eE+-]{1,3}",
        ];
        proptest::collection::vec(token, 0..24).prop_map(|t| format!("{{{}}}", t.concat()))
    }
}
