//! Framing and parsing: datagrams (RFC 3261 §18.3: Content-Length optional, trailing
//! octets ignored), streams (Content-Length mandatory; CRLF keep-alives of RFC 5626
//! §4.4.1), and the validation that turns the RFC 4475 torture tests into verdicts.

use bytes::Bytes;

use crate::cursor::is_word_char;
use crate::error::{ParseError, Rejected, RejectedHead};
use crate::header::{Header, HeaderName, Headers};
use crate::message::{Message, Method, StartLine};
use crate::typed::{parse_u32, CSeq, ContactValue, NameAddr};
use crate::uri::{is_token, Uri};

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A double-CRLF keep-alive ping of this many bytes; answer with a single CRLF pong
    /// (RFC 5626 §4.4.1).
    Ping(usize),
    /// A lone CRLF (a pong, or empty lines before a message, RFC 3261 §7.5) to skip.
    Skip(usize),
    /// A complete message of this many bytes.
    Message(usize),
}

/// Why a stream cannot be framed; the connection should be closed after answering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {limit} bytes")]
    TooLarge {
        limit: usize,
        head_len: Option<usize>,
    },
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength { head_len: usize },
    #[error("bad Content-Length: {0}")]
    BadContentLength(String, usize),
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Scans a header section for Content-Length (or `l`), without a full parse.
fn scan_content_length(head: &[u8]) -> Result<Option<usize>, String> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v =
                std::str::from_utf8(line[colon + 1..].trim_ascii()).map_err(|e| e.to_string())?;
            let n = parse_u32(v, "Content-Length").map_err(|e| e.reason)? as usize;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length values".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Frames the next message of a stream (TCP, TLS). `max` bounds a whole message.
/// Stateless: it scans `buf` from the start; a reader that calls it after every read
/// should keep a [`StreamFramer`] instead, which resumes where it stopped.
pub fn frame_stream(buf: &[u8], max: usize) -> Result<Frame, FrameError> {
    StreamFramer::default().next_frame(buf, max)
}

/// Framing state of one stream. A peer that trickles a large header one octet per
/// read must not make every read rescan everything it sent so far (quadratic work): the
/// framer remembers how far it searched for the end of the header section and, once
/// that is found, the frame's length. Call [`StreamFramer::next_frame`] with the whole
/// unconsumed buffer; after a frame is consumed, the framer starts afresh by itself.
#[derive(Debug, Default, Clone)]
pub struct StreamFramer {
    /// Bytes at the front of the buffer known to hold no end of header section.
    searched: usize,
    /// Length of the frame at the front, once its head was read.
    total: Option<usize>,
}

impl StreamFramer {
    pub fn next_frame(&mut self, buf: &[u8], max: usize) -> Result<Frame, FrameError> {
        if let Some(total) = self.total {
            return Ok(if buf.len() >= total {
                self.reset();
                Frame::Message(total)
            } else {
                Frame::Incomplete
            });
        }
        if buf.starts_with(b"\r\n\r\n") {
            return Ok(Frame::Ping(4));
        }
        if buf.starts_with(b"\r\n") {
            // "\r\n" or "\r\n\r" may still become a ping: wait for the next octet.
            let undecided = buf.len() == 2 || (buf.len() == 3 && buf[2] == b'\r');
            return Ok(if undecided {
                Frame::Incomplete
            } else {
                Frame::Skip(2)
            });
        }
        if buf == b"\r" {
            return Ok(Frame::Incomplete);
        }
        // Resume the search three octets back: the terminator may straddle two reads.
        let from = self.searched.saturating_sub(3).min(buf.len());
        let Some(head_len) = find_head_end(&buf[from..]).map(|n| n + from) else {
            self.searched = buf.len();
            if buf.len() > max {
                return Err(FrameError::TooLarge {
                    limit: max,
                    head_len: None,
                });
            }
            return Ok(Frame::Incomplete);
        };
        // A head over the limit is that, however the stream was read (in pieces it is
        // caught above before its end arrives).
        if head_len > max {
            return Err(FrameError::TooLarge {
                limit: max,
                head_len: Some(head_len),
            });
        }
        let cl = scan_content_length(&buf[..head_len])
            .map_err(|e| FrameError::BadContentLength(e, head_len))?
            .ok_or(FrameError::MissingContentLength { head_len })?;
        let total = head_len + cl;
        if total > max {
            return Err(FrameError::TooLarge {
                limit: max,
                head_len: Some(head_len),
            });
        }
        if buf.len() >= total {
            self.reset();
            Ok(Frame::Message(total))
        } else {
            self.total = Some(total);
            Ok(Frame::Incomplete)
        }
    }

    /// Whether part of a message (not just keep-alive CRLFs) has been seen.
    pub fn in_message(&self) -> bool {
        self.searched > 0 || self.total.is_some()
    }

    fn reset(&mut self) {
        *self = StreamFramer::default();
    }
}

/// Parses one whole datagram. Trailing octets beyond Content-Length are ignored; without
/// Content-Length the body is the rest of the datagram (RFC 3261 §18.3).
pub fn parse_datagram(data: &[u8]) -> Result<Message, Rejected> {
    let Some(head_len) = find_head_end(data) else {
        // Only a request is answered; a truncated response is dropped like any bad one.
        let head = split_head(data).ok().filter(|h| h.method.is_some());
        return Err(Rejected {
            error: ParseError::syntax("truncated message: no end of header section"),
            head,
        });
    };
    parse_framed(data, head_len, true)
}

/// Parses a message framed by [`frame_stream`].
pub fn parse_stream_message(data: &[u8]) -> Result<Message, Rejected> {
    let head_len = find_head_end(data).ok_or_else(|| Rejected {
        error: ParseError::syntax("no end of header section"),
        head: None,
    })?;
    parse_framed(data, head_len, false)
}

/// Reads just the start line and header lines of a request head, for answering a
/// message that cannot be framed or is too large. `None` for responses and garbage.
pub fn read_request_head(head: &[u8]) -> Option<RejectedHead> {
    split_head(head).ok().filter(|h| h.method.is_some())
}

/// The raw split of a header section: start line plus unfolded header lines.
fn split_head(head: &[u8]) -> Result<RejectedHead, ParseError> {
    let (_, method, headers) = split_lines(head)?;
    Ok(RejectedHead { method, headers })
}

fn split_lines(head: &[u8]) -> Result<(String, Option<String>, Headers), ParseError> {
    let text =
        std::str::from_utf8(head).map_err(|_| ParseError::syntax("header section is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().unwrap_or("").to_owned();
    if start.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::syntax("control character in the start line"));
    }
    let method = if start.starts_with("SIP/") {
        None
    } else {
        start.split(' ').next().map(str::to_owned)
    };
    let mut headers = Headers::new();
    let mut current: Option<(String, String)> = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        // RFC 3261 §25.1: no control character but HTAB in a header line (a bare CR, a
        // NUL), except escaped in a quoted string (quoted-pair, never CR or LF): it would
        // be carried into every message built from this one.
        if has_bare_control(line) {
            return Err(ParseError::syntax("control character in a header line"));
        }
        if line.starts_with([' ', '\t']) {
            // RFC 3261 §7.3.1: a continuation line; folding is equivalent to one SP.
            match current.as_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim_start_matches([' ', '\t']));
                }
                None => return Err(ParseError::syntax("continuation line before any header")),
            }
            continue;
        }
        if let Some((n, v)) = current.take() {
            headers.0.push(make_header(&n, v)?);
        }
        let colon = line
            .find(':')
            .ok_or_else(|| ParseError::syntax(format!("header line without ':': {line}")))?;
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::syntax(format!("bad header name '{name}'")));
        }
        current = Some((name.to_owned(), line[colon + 1..].to_owned()));
    }
    if let Some((n, v)) = current.take() {
        headers.0.push(make_header(&n, v)?);
    }
    Ok((start, method, headers))
}

/// A control character (but HTAB) outside a quoted-pair, or a CR or LF anywhere.
fn has_bare_control(line: &str) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for b in line.bytes() {
        let control = (b < 0x20 && b != b'\t') || b == 0x7f;
        if b == b'\r' || b == b'\n' || (control && !escaped) {
            return true;
        }
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        }
    }
    false
}

fn make_header(name: &str, value: String) -> Result<Header, ParseError> {
    let trimmed = value.trim_matches([' ', '\t']);
    let value = if trimmed.len() == value.len() {
        value
    } else {
        trimmed.to_owned()
    };
    Ok(Header {
        name: HeaderName::from_wire(name),
        value,
    })
}

fn parse_framed(data: &[u8], head_len: usize, datagram: bool) -> Result<Message, Rejected> {
    let head_bytes = &data[..head_len];
    let (start, method, headers) =
        split_lines(head_bytes).map_err(|error| Rejected { error, head: None })?;
    // Only requests are answered; a bad response is dropped (RFC 4475 §3.1.2.19).
    let reject = |error: ParseError, headers: &Headers| Rejected {
        error,
        head: method.as_ref().map(|m| RejectedHead {
            method: Some(m.clone()),
            headers: headers.clone(),
        }),
    };
    let start_line = match parse_start_line(&start) {
        Ok(s) => s,
        Err(e) => return Err(reject(e, &headers)),
    };
    let is_request = matches!(start_line, StartLine::Request { .. });
    let rest = &data[head_len..];
    let body = match content_length(&headers) {
        Ok(Some(cl)) if cl <= rest.len() => Bytes::copy_from_slice(&rest[..cl]),
        Ok(Some(cl)) => {
            return Err(reject(
                ParseError::syntax(format!(
                    "Content-Length {cl} is larger than the {} octets received",
                    rest.len()
                )),
                &headers,
            ))
        }
        Ok(None) if datagram => Bytes::copy_from_slice(rest),
        Ok(None) => Bytes::new(),
        Err(e) => return Err(reject(e, &headers)),
    };
    let msg = Message {
        start: start_line,
        headers,
        body,
    };
    if let Err(e) = validate(&msg) {
        let headers = msg.headers;
        return Err(if is_request {
            reject(e, &headers)
        } else {
            Rejected {
                error: e,
                head: None,
            }
        });
    }
    Ok(msg)
}

fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut found: Option<u32> = None;
    for v in headers.get_all(&HeaderName::ContentLength) {
        let n = parse_u32(v, "Content-Length")?;
        if found.is_some() {
            // RFC 4475 §3.3.9: there is no way to know which value is right.
            return Err(ParseError::syntax("more than one Content-Length"));
        }
        found = Some(n);
    }
    Ok(found.map(|n| n as usize))
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        // RFC 3261 §7.2: SIP-Version SP Status-Code SP Reason-Phrase.
        let (version, rest) = rest
            .split_once(' ')
            .ok_or_else(|| ParseError::syntax("bad Status-Line"))?;
        if version != "2.0" {
            return Err(ParseError::syntax("unsupported SIP version in response"));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::syntax("bad status code"));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ParseError::syntax("bad status code"))?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::syntax("status code out of range"));
        }
        return Ok(StartLine::Response {
            status,
            reason: reason.to_owned(),
        });
    }
    // RFC 3261 §7.1: Method SP Request-URI SP SIP-Version, single spaces, no LWS.
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(ParseError::syntax("malformed Request-Line"));
    }
    if !is_token(parts[0]) {
        return Err(ParseError::syntax("bad method"));
    }
    let version = parts[2];
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        // Bytes, not a `&str` slice: the version is network input and may hold
        // multi-byte characters (`SIPé` once panicked here).
        let bytes = version.as_bytes();
        if bytes.len() > 4 && bytes[..4].eq_ignore_ascii_case(b"SIP/") {
            return Err(ParseError::with_status(505, "SIP version not supported"));
        }
        return Err(ParseError::syntax("bad SIP version"));
    }
    let uri = Uri::parse(parts[1])?;
    Ok(StartLine::Request {
        method: Method::from_token(parts[0]),
        uri,
    })
}

/// Header checks that make a message well-formed (RFC 3261 §8.1.1, §20; RFC 4475).
fn validate(msg: &Message) -> Result<(), ParseError> {
    let h = &msg.headers;
    for (name, what) in [
        (HeaderName::CallId, "Call-ID"),
        (HeaderName::CSeq, "CSeq"),
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
    ] {
        match h.count(&name) {
            0 => return Err(ParseError::syntax(format!("missing {what}"))),
            1 => {}
            _ => return Err(ParseError::syntax(format!("more than one {what}"))),
        }
    }
    for (name, what) in [
        (HeaderName::MaxForwards, "Max-Forwards"),
        (HeaderName::Expires, "Expires"),
        (HeaderName::ContentType, "Content-Type"),
        (HeaderName::MinExpires, "Min-Expires"),
    ] {
        if h.count(&name) > 1 {
            return Err(ParseError::syntax(format!("more than one {what}")));
        }
    }
    let call_id = h.get(&HeaderName::CallId).unwrap_or("");
    if call_id.is_empty() || !call_id.chars().all(|c| is_word_char(c) || c == '@') {
        return Err(ParseError::syntax("bad Call-ID"));
    }
    let cseq = CSeq::parse(h.get(&HeaderName::CSeq).unwrap_or(""))?;
    NameAddr::parse(h.get(&HeaderName::From).unwrap_or(""))?;
    NameAddr::parse(h.get(&HeaderName::To).unwrap_or(""))?;
    let vias = msg.vias()?;
    if vias.is_empty() {
        return Err(ParseError::syntax("missing Via"));
    }
    msg.header_u32(&HeaderName::MaxForwards)?;
    msg.header_u32(&HeaderName::Expires)?;
    for v in h.get_all(&HeaderName::Contact) {
        ContactValue::parse(v)?;
    }
    msg.name_addrs(&HeaderName::Route)?;
    msg.name_addrs(&HeaderName::RecordRoute)?;
    if let Some(date) = h.get(&HeaderName::Date) {
        // RFC 3261 §20.17: rfc1123-date, always in GMT.
        if !date.ends_with(" GMT") || httpdate::parse_http_date(date).is_err() {
            return Err(ParseError::syntax("bad Date"));
        }
    }
    if let StartLine::Request { method, uri } = &msg.start {
        if cseq.method != *method {
            return Err(ParseError::syntax(
                "CSeq method does not match the request method",
            ));
        }
        if let Uri::Sip(sip) = uri {
            // RFC 3261 §19.1.5: headers are not allowed in a Request-URI.
            if sip.headers.is_some() {
                return Err(ParseError::syntax("headers in Request-URI"));
            }
        }
    }
    Ok(())
}
