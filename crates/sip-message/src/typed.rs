//! Typed views of header values, parsed on demand from the raw text: Via (RFC 3261
//! §20.42), name-addr headers (From, To, Contact, Route, Record-Route: §20.10, §20.20,
//! §20.39), CSeq (§20.16), and the auth-param lists of Digest and NTLM (§25.1, RFC 8760).

use std::fmt;

use crate::cursor::{is_token_char, quote, unquote, Cursor};
use crate::error::ParseError;
use crate::message::Method;
use crate::uri::{parse_hostport, Host, Params, Uri};

/// Parses `*( SEMI generic-param )` (RFC 3261 §25.1), with LWS around `;` and `=`.
fn parse_params(c: &mut Cursor<'_>, what: &str) -> Result<Params, ParseError> {
    let mut params = Params::default();
    while c.eat_sep(';') {
        let name = c.token(what)?;
        let value = if c.eat_sep('=') {
            if c.peek() == Some('"') {
                let q = c.quoted_string()?;
                Some(format!("\"{q}\""))
            } else if c.peek() == Some('[') {
                // IPv6 reference as a gen-value (received=[::1]): only what an IPv6
                // reference holds, so what is printed parses back to itself.
                let v = c
                    .take_while(|ch| ch.is_ascii_hexdigit() || matches!(ch, ':' | '.' | '[' | ']'));
                if !v.ends_with(']') || v[1..].contains('[') || v[..v.len() - 1].contains(']') {
                    return Err(ParseError::syntax(format!("bad IPv6 reference in {what}")));
                }
                Some(v.to_owned())
            } else {
                Some(c.token(what)?.to_owned())
            }
        } else {
            None
        };
        params.0.push((name.to_owned(), value));
    }
    Ok(params)
}

/// Ensures only white space (or a comma, when `list`) remains.
fn finish(c: &mut Cursor<'_>, list: bool, what: &str) -> Result<(), ParseError> {
    c.skip_lws();
    if c.is_empty() || (list && c.peek() == Some(',')) {
        Ok(())
    } else {
        Err(ParseError::syntax(format!(
            "unexpected '{}' in {what}",
            c.rest()
        )))
    }
}

/// Runs `one` over a comma-separated list, rejecting empty elements.
fn parse_list<T>(
    s: &str,
    what: &str,
    one: impl Fn(&mut Cursor<'_>) -> Result<T, ParseError>,
) -> Result<Vec<T>, ParseError> {
    let mut c = Cursor::new(s);
    let mut out = Vec::new();
    loop {
        c.skip_lws();
        out.push(one(&mut c)?);
        finish(&mut c, true, what)?;
        if !c.eat_sep(',') {
            return Ok(out);
        }
    }
}

// === Via ===

/// One Via value: `SIP/2.0/<transport> host[:port];params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport as written, upper-cased (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, ...).
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

/// RFC 3261 §8.1.1.7 magic cookie.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

impl Via {
    fn parse_one(c: &mut Cursor<'_>) -> Result<Via, ParseError> {
        let proto = c.token("Via")?;
        if !proto.eq_ignore_ascii_case("SIP") {
            return Err(ParseError::syntax("Via protocol is not SIP"));
        }
        c.expect_sep('/', "Via")?;
        let version = c.token("Via")?;
        if version != "2.0" {
            return Err(ParseError::syntax("Via version is not 2.0"));
        }
        c.expect_sep('/', "Via")?;
        let transport = c.token("Via")?.to_ascii_uppercase();
        c.skip_lws();
        let sent_by = c.take_while(|ch| is_token_char(ch) || ch == ':' || ch == '[' || ch == ']');
        if sent_by.is_empty() {
            return Err(ParseError::syntax("Via has no sent-by"));
        }
        let (host, port) = parse_hostport(sent_by)?;
        let params = parse_params(c, "Via")?;
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let mut c = Cursor::new(s.trim());
        let v = Via::parse_one(&mut c)?;
        finish(&mut c, false, "Via")?;
        Ok(v)
    }

    pub fn parse_list(s: &str) -> Result<Vec<Via>, ParseError> {
        parse_list(s, "Via", Via::parse_one)
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// True when the branch carries the RFC 3261 magic cookie and something after it.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > BRANCH_COOKIE.len() && b.starts_with(BRANCH_COOKIE))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

// === name-addr ===

/// `[display-name] <uri>;params` or a bare addr-spec with params (RFC 3261 §20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn new(uri: Uri) -> Self {
        NameAddr {
            display: None,
            uri,
            params: Params::default(),
        }
    }

    fn parse_one(c: &mut Cursor<'_>) -> Result<NameAddr, ParseError> {
        c.skip_lws();
        let mut display = None;
        let angled;
        if c.peek() == Some('"') {
            display = Some(unquote(c.quoted_string()?));
            c.skip_lws();
            if !c.eat('<') {
                return Err(ParseError::syntax("display name not followed by <uri>"));
            }
            angled = true;
        } else if c.peek() == Some('<') {
            c.eat('<');
            angled = true;
        } else {
            // Either `*(token LWS) <uri>` (RFC 3261 §25.1 display-name) or a bare
            // addr-spec: scan words and see whether a '<' follows them.
            let mut look = Cursor::new(c.rest());
            let mut words = Vec::new();
            loop {
                let w = look.take_while(is_token_char);
                if w.is_empty() {
                    break;
                }
                words.push(w);
                look.skip_lws();
            }
            if !words.is_empty() && look.peek() == Some('<') {
                display = Some(words.join(" "));
                c.pos += look.pos + 1;
                angled = true;
            } else {
                angled = false;
            }
        }
        let uri = if angled {
            let inner = c.take_while(|ch| ch != '>');
            if !c.eat('>') {
                return Err(ParseError::syntax("missing '>'"));
            }
            Uri::parse(inner)?
        } else {
            // RFC 3261 §20.10: a bare addr-spec may not contain ',', '?' or ';'.
            let spec = c.take_while(|ch| !matches!(ch, ';' | ',' | ' ' | '\t'));
            if spec.contains('?') {
                return Err(ParseError::syntax(
                    "a URI with headers must be enclosed in <>",
                ));
            }
            Uri::parse(spec)?
        };
        let params = parse_params(c, "name-addr")?;
        Ok(NameAddr {
            display,
            uri,
            params,
        })
    }

    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let mut c = Cursor::new(s.trim());
        let v = NameAddr::parse_one(&mut c)?;
        finish(&mut c, false, "name-addr")?;
        Ok(v)
    }

    pub fn parse_list(s: &str) -> Result<Vec<NameAddr>, ParseError> {
        parse_list(s, "name-addr list", NameAddr::parse_one)
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{} ", quote(d))?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// A Contact header value: `*` or a list of name-addrs (RFC 3261 §20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactValue {
    Star,
    List(Vec<NameAddr>),
}

impl ContactValue {
    pub fn parse(s: &str) -> Result<ContactValue, ParseError> {
        if s.trim() == "*" {
            Ok(ContactValue::Star)
        } else {
            NameAddr::parse_list(s).map(ContactValue::List)
        }
    }
}

// === CSeq ===

/// `CSeq: <number> <method>`; the number is a 32-bit unsigned integer (RFC 3261 §8.1.1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(s: &str) -> Result<CSeq, ParseError> {
        let mut c = Cursor::new(s.trim());
        let digits = c.take_while(|ch| ch.is_ascii_digit());
        let seq = parse_u32(digits, "CSeq")?;
        c.skip_lws();
        let method = c.token("CSeq")?;
        finish(&mut c, false, "CSeq")?;
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// `1*DIGIT` that fits in 32 bits (RFC 3261 §25.1 delta-seconds, CSeq, Content-Length).
pub fn parse_u32(s: &str, what: &str) -> Result<u32, ParseError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::syntax(format!("{what} is not a number")));
    }
    s.parse::<u32>()
        .map_err(|_| ParseError::syntax(format!("{what} is too large")))
}

// === auth-params ===

/// A `scheme param=value, ...` header: Authorization, Proxy-Authorization,
/// WWW-Authenticate, Proxy-Authenticate (RFC 3261 §25.1, RFC 8760).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub scheme: String,
    /// Parameters in order; quoted values are unquoted.
    pub params: Vec<(String, String)>,
}

impl AuthHeader {
    pub fn parse(s: &str) -> Result<AuthHeader, ParseError> {
        let mut c = Cursor::new(s.trim());
        let scheme = c.token("auth scheme")?.to_owned();
        let mut params = Vec::new();
        c.skip_lws();
        while !c.is_empty() {
            let name = c.token("auth-param")?.to_owned();
            c.expect_sep('=', "auth-param")?;
            let value = if c.peek() == Some('"') {
                unquote(c.quoted_string()?)
            } else {
                c.token("auth-param")?.to_owned()
            };
            params.push((name, value));
            c.skip_lws();
            if c.is_empty() {
                break;
            }
            c.expect_sep(',', "auth-params")?;
        }
        Ok(AuthHeader { scheme, params })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
