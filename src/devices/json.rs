//! Just enough JSON for device commands and state reports, without allocating: a scanner over
//! one flat object (`{"value": 42}`, `{"power": "ON", "brightness": 128}`, a Zigbee2MQTT state
//! report) that yields each key with its scalar value (a nested value as its text, to be read
//! the same way), and a writer of escaped strings. Never panics on any input.

/// A scalar value as written: strings are raw (still escaped) text between the quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Str(&'a str),
    Num(&'a str),
    Bool(bool),
    Null,
    /// An object or array, as written.
    Nested(&'a str),
}

/// Iterate the members of the JSON object `text`. Yields `Err(())` once on malformed input.
pub fn members(text: &str) -> Members<'_> {
    let mut m = Members {
        s: text,
        pos: 0,
        state: State::Start,
    };
    m.ws();
    m
}

#[derive(PartialEq, Eq)]
enum State {
    Start,
    Next,
    Done,
}

pub struct Members<'a> {
    s: &'a str,
    pos: usize,
    state: State,
}

impl<'a> Members<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A string's raw contents; the cursor is on its opening quote.
    fn string(&mut self) -> Option<&'a str> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.pos + 1;
        let bytes = self.s.as_bytes();
        let mut i = start;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return self.s.get(start..i);
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
        None
    }

    fn scalar(&mut self) -> Option<Value<'a>> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b'{' | b'[' => {
                let start = self.pos;
                self.skip_nested()
                    .then(|| Value::Nested(&self.s[start..self.pos]))
            }
            b't' => self.word("true").then_some(Value::Bool(true)),
            b'f' => self.word("false").then_some(Value::Bool(false)),
            b'n' => self.word("null").then_some(Value::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                let n = &self.s[start..self.pos];
                n.parse::<f64>().is_ok().then_some(Value::Num(n))
            }
            _ => None,
        }
    }

    fn word(&mut self, w: &str) -> bool {
        if self.s[self.pos..].starts_with(w) {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    fn skip_nested(&mut self) -> bool {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    if self.string().is_none() {
                        return false;
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return true;
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        false
    }

    fn member(&mut self) -> Option<(&'a str, Value<'a>)> {
        match self.state {
            State::Start => {
                if !self.eat(b'{') {
                    return None;
                }
                if self.eat(b'}') {
                    self.state = State::Done;
                    return None;
                }
            }
            State::Next => {
                if self.eat(b'}') {
                    self.state = State::Done;
                    return None;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
            State::Done => return None,
        }
        self.ws();
        let key = self.string()?;
        if !self.eat(b':') {
            return None;
        }
        let value = self.scalar()?;
        self.state = State::Next;
        Some((key, value))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(&'a str, Value<'a>), ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Done {
            return None;
        }
        match self.member() {
            Some(m) => Some(Ok(m)),
            None if self.state == State::Done => {
                self.ws();
                (self.pos != self.s.len()).then_some(Err(()))
            }
            None => {
                self.state = State::Done;
                Some(Err(()))
            }
        }
    }
}

/// Decode a raw JSON string's escapes into `out` (appending). False on a bad escape.
pub fn unescape(raw: &str, out: &mut String) -> bool {
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = match chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                let mut code = 0u32;
                for _ in 0..4 {
                    match chars.next().and_then(|h| h.to_digit(16)) {
                        Some(d) => code = code * 16 + d,
                        None => return false,
                    }
                }
                match char::from_u32(code) {
                    Some(c) => c,
                    None => return false,
                }
            }
            _ => return false,
        };
        out.push(e);
    }
    true
}

/// Append `s` as a JSON string literal.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c as usize) >> 4]);
                out.push(HEX[(c as usize) & 0xf]);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &str) -> Vec<Result<(&str, Value<'_>), ()>> {
        members(s).collect()
    }

    #[test]
    fn flat_objects() {
        assert_eq!(
            all(r#"{"value": 42}"#),
            vec![Ok(("value", Value::Num("42")))]
        );
        assert_eq!(
            all(r#" { "power":"ON" , "b":1.5e2,"x":true,"y":null,"c":{"x":[1,"}"]},"z":false } "#),
            vec![
                Ok(("power", Value::Str("ON"))),
                Ok(("b", Value::Num("1.5e2"))),
                Ok(("x", Value::Bool(true))),
                Ok(("y", Value::Null)),
                Ok(("c", Value::Nested(r#"{"x":[1,"}"]}"#))),
                Ok(("z", Value::Bool(false))),
            ]
        );
        assert_eq!(all("{}"), vec![]);
        assert_eq!(
            all(r#"{"s":"a\"b"}"#),
            vec![Ok(("s", Value::Str(r#"a\"b"#)))]
        );
    }

    #[test]
    fn malformed_is_one_error() {
        for bad in [
            "",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            "[1]",
            r#"{"a":tru}"#,
            r#"{"a":"x"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":{"b":1}"#,
        ] {
            let v = all(bad);
            assert_eq!(v.last(), Some(&Err(())), "{bad:?}: {v:?}");
        }
    }

    #[test]
    fn escapes_both_ways() {
        let mut s = String::new();
        assert!(unescape(r#"a\"b\\c\n\u00e9"#, &mut s));
        assert_eq!(s, "a\"b\\c\né");
        assert!(!unescape(r#"\x"#, &mut String::new()));
        let mut v = Vec::new();
        push_str(&mut v, "a\"b\\\n\u{1}é");
        assert_eq!(String::from_utf8(v).unwrap(), r#""a\"b\\\n\u0001é""#);
    }
}
