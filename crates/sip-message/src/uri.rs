//! SIP, SIPS and tel URIs and other absolute URIs (RFC 3261 §19.1, §25.1; RFC 3966;
//! IPv6 references per RFC 5118).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::cursor::is_token_char;
use crate::error::ParseError;

/// A URI as found in a Request-URI or a name-addr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    Sip(SipUri),
    Tel(TelUri),
    /// Any other absolute URI (RFC 3261 §25.1 `absoluteURI`), kept verbatim.
    Other(String),
}

/// `sip:` or `sips:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
}

/// The host part of a SIP URI or Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// RFC 3261 §25.1 `host`: hostname / IPv4address / IPv6reference.
    pub fn parse(s: &str) -> Result<Host, ParseError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| ParseError::syntax("unterminated IPv6 reference"))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::V6)
                .map_err(|_| ParseError::syntax("bad IPv6 reference"));
        }
        if s.is_empty() {
            return Err(ParseError::syntax("empty host"));
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            if let Ok(v4) = s.parse::<Ipv4Addr>() {
                return Ok(Host::V4(v4));
            }
        }
        let ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !s.starts_with(['.', '-']);
        if ok {
            Ok(Host::Domain(s.to_ascii_lowercase()))
        } else {
            Err(ParseError::syntax(format!("bad host '{s}'")))
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Splits `host[:port]`, honouring IPv6 brackets.
pub(crate) fn parse_hostport(s: &str) -> Result<(Host, Option<u16>), ParseError> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => {
                let (h, rest) = s.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if rest.is_empty() => (h, None),
                    None => return Err(ParseError::syntax("junk after IPv6 reference")),
                }
            }
            None => return Err(ParseError::syntax("unterminated IPv6 reference")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ParseError::syntax(format!("bad port '{p}'")))?,
        ),
        None => None,
    };
    Ok((Host::parse(host)?, port))
}

/// Parameters (`;name[=value]`) in order, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
    /// The value of a parameter that has one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_owned);
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = v,
            None => self.0.push((name.to_owned(), v)),
        }
    }
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        Ok(())
    }
}

/// A `sip:` / `sips:` URI (RFC 3261 §19.1.1). User and password are kept escaped, as
/// written; [`SipUri::user_unescaped`] gives the decoded form used for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    /// `?name=value&...` headers, kept escaped.
    pub headers: Option<String>,
}

/// RFC 3261 §25.1 characters allowed anywhere in a SIP URI once escapes are accounted for.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()%;/?:@&=+$,[]".contains(c)
}

/// Checks `%HH` escapes (RFC 3261 §25.1 `escaped`).
fn check_escapes(s: &str) -> Result<(), ParseError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return Err(ParseError::syntax("truncated %-escape"));
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return Err(ParseError::syntax("bad %-escape"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Decodes `%HH` escapes; invalid UTF-8 after decoding is replaced.
/// Escapes what a user part may not hold as it is (RFC 3261 §25.1: `user = 1*( unreserved
/// / escaped / user-unreserved )`).
pub fn escape_user(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let c = b as char;
        let plain = c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c);
        if plain {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, ParseError> {
        // `get` rather than indexing: a multi-byte character may straddle the cut.
        let prefix = |n: usize| s.get(..n).filter(|_| s.len() > n);
        let (scheme, rest) = if prefix(4).is_some_and(|p| p.eq_ignore_ascii_case("sip:")) {
            (Scheme::Sip, &s[4..])
        } else if prefix(5).is_some_and(|p| p.eq_ignore_ascii_case("sips:")) {
            (Scheme::Sips, &s[5..])
        } else {
            return Err(ParseError::syntax("not a sip: or sips: URI"));
        };
        if let Some(bad) = rest.chars().find(|&c| !is_uri_char(c)) {
            return Err(ParseError::syntax(format!(
                "character {bad:?} not allowed in a SIP URI"
            )));
        }
        check_escapes(rest)?;
        // userinfo ends at the first '@' (user-unreserved may contain ';' and '?').
        let (user, password, hostpart) = match rest.find('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (u, p) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p.to_owned())),
                    None => (userinfo, None),
                };
                if u.is_empty() {
                    return Err(ParseError::syntax("empty user part"));
                }
                (Some(u.to_owned()), p, &rest[at + 1..])
            }
            None => (None, None, rest),
        };
        let (before_headers, headers) = match hostpart.split_once('?') {
            Some((a, h)) => (a, Some(h.to_owned())),
            None => (hostpart, None),
        };
        let mut parts = before_headers.split(';');
        let hostport = parts.next().unwrap_or("");
        let (host, port) = parse_hostport(hostport)?;
        let mut params = Params::default();
        for p in parts {
            if p.is_empty() {
                return Err(ParseError::syntax("empty URI parameter"));
            }
            match p.split_once('=') {
                Some((k, v)) if !k.is_empty() => params.0.push((k.to_owned(), Some(v.to_owned()))),
                Some(_) => return Err(ParseError::syntax("URI parameter without a name")),
                None => params.0.push((p.to_owned(), None)),
            }
        }
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// A URI for `user@host`.
    pub fn new(user: Option<&str>, host: Host, port: Option<u16>) -> SipUri {
        SipUri {
            scheme: Scheme::Sip,
            user: user.map(str::to_owned),
            password: None,
            host,
            port,
            params: Params::default(),
            headers: None,
        }
    }

    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(unescape)
    }

    /// The `transport` URI parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.params
            .value("transport")
            .map(|t| t.to_ascii_lowercase())
    }

    /// The address-of-record form `sip:user@host` (no port, params or headers), as used
    /// for registrar keys (RFC 3261 §10.3 step 5). The user part is written in one
    /// canonical escaping: unescaped where RFC 3261 §25.1 allows a character in a user
    /// part, escaped otherwise, so `sip:alice%3Ax@h` stays user `alice:x` (printing it
    /// unescaped would read back as user `alice` with password `x`).
    pub fn aor(&self) -> String {
        match self.user_unescaped() {
            Some(u) => format!("sip:{}@{}", escape_user(&u), self.host),
            None => format!("sip:{}", self.host),
        }
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Sip => "sip:",
            Scheme::Sips => "sips:",
        })?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// A `tel:` URI (RFC 3966), kept as number plus parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    pub number: String,
    pub params: Params,
}

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        let colon = s
            .find(':')
            .ok_or_else(|| ParseError::syntax(format!("'{s}' is not a URI")))?;
        let scheme = &s[..colon];
        let scheme_ok = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok {
            return Err(ParseError::syntax(format!("bad URI scheme in '{s}'")));
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            return SipUri::parse(s).map(Uri::Sip);
        }
        let rest = &s[colon + 1..];
        if rest.is_empty()
            || rest
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == '"')
        {
            return Err(ParseError::syntax(format!("bad URI '{s}'")));
        }
        if scheme.eq_ignore_ascii_case("tel") {
            let mut parts = rest.split(';');
            let number = parts.next().unwrap_or("").to_owned();
            let mut params = Params::default();
            for p in parts {
                match p.split_once('=') {
                    Some((k, v)) => params.0.push((k.to_owned(), Some(v.to_owned()))),
                    None => params.0.push((p.to_owned(), None)),
                }
            }
            return Ok(Uri::Tel(TelUri { number, params }));
        }
        Ok(Uri::Other(s.to_owned()))
    }

    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_sip_mut(&mut self) -> Option<&mut SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => write!(f, "{u}"),
            Uri::Tel(t) => write!(f, "tel:{}{}", t.number, t.params),
            Uri::Other(s) => f.write_str(s),
        }
    }
}

/// True when `s` is a valid RFC 3261 `token` (used for parameter names and methods).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}
