//! A small lexer over header text: the LWS, token, quoted-string and separator rules of
//! RFC 3261 §25.1 that every typed header view is built from.

use crate::error::ParseError;

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Host name characters (RFC 3261 §25.1 `hostname`), plus `:` `[` `]` for IPv6 references.
pub(crate) fn is_word_char(c: char) -> bool {
    // RFC 3261 §25.1 `word` (used by Call-ID).
    is_token_char(c) || "()<>:\\\"/[]?{}".contains(c)
}

pub(crate) struct Cursor<'a> {
    pub(crate) s: &'a str,
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    pub(crate) fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Skips linear white space (after unfolding, only SP and HTAB remain).
    pub(crate) fn skip_lws(&mut self) {
        let rest = self.rest();
        let n = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        self.pos += n;
    }

    /// Consumes `c` surrounded by optional LWS (RFC 3261 §25.1 SEMI, EQUAL, COMMA, SLASH...).
    pub(crate) fn eat_sep(&mut self, c: char) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    pub(crate) fn expect_sep(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        if self.eat_sep(c) {
            Ok(())
        } else {
            Err(ParseError::syntax(format!("expected '{c}' in {what}")))
        }
    }

    pub(crate) fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Takes the longest run of characters matching `f`.
    pub(crate) fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let n = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += n;
        &rest[..n]
    }

    pub(crate) fn token(&mut self, what: &str) -> Result<&'a str, ParseError> {
        let t = self.take_while(is_token_char);
        if t.is_empty() {
            Err(ParseError::syntax(format!("expected a token in {what}")))
        } else {
            Ok(t)
        }
    }

    /// RFC 3261 §25.1 `quoted-string`: returns the text between the quotes, escapes kept
    /// as they were (so the raw form can be reproduced).
    pub(crate) fn quoted_string(&mut self) -> Result<&'a str, ParseError> {
        if !self.eat('"') {
            return Err(ParseError::syntax("expected a quoted string"));
        }
        let start = self.pos;
        let bytes = self.s.as_bytes();
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Ok(&self.s[start..i]);
                }
                _ => i += 1,
            }
        }
        Err(ParseError::syntax("unterminated quoted string"))
    }
}

/// Removes quoted-pair escapes (`\x` → `x`) from the inside of a quoted string.
pub fn unquote(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Wraps `s` in quotes, escaping `"` and `\` (RFC 3261 §25.1 quoted-pair).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits a header value at top-level commas (outside quotes and angle brackets), for the
/// multi-value headers of RFC 3261 §7.3.1.
pub fn split_commas(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let (mut in_quote, mut in_angle, mut start, mut i) = (false, false, 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => {
                out.push(value[start..i].trim_matches([' ', '\t']));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(value[start..].trim_matches([' ', '\t']));
    out
}
