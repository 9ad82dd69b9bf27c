//! The message model (RFC 3261 §7): start line, header fields, body; typed accessors;
//! serialization; building responses (§8.2.6).

use std::fmt;

use bytes::Bytes;

use crate::error::ParseError;
use crate::header::{HeaderName, Headers};
use crate::typed::{CSeq, ContactValue, NameAddr, Via};
use crate::uri::Uri;

/// A request method. Extension methods (RFC 3261 §27.4 and the Lync dialect's SERVICE,
/// BENOTIFY, NEGOTIATE) are ordinary values; unknown ones keep their spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Prack,
    Update,
    Subscribe,
    Notify,
    Publish,
    Message,
    Refer,
    Service,
    Benotify,
    Negotiate,
    Other(String),
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            "MESSAGE" => Method::Message,
            "REFER" => Method::Refer,
            "SERVICE" => Method::Service,
            "BENOTIFY" => Method::Benotify,
            "NEGOTIATE" => Method::Negotiate,
            other => Method::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Message => "MESSAGE",
            Method::Refer => "REFER",
            Method::Service => "SERVICE",
            Method::Benotify => "BENOTIFY",
            Method::Negotiate => "NEGOTIATE",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request-Line or Status-Line (RFC 3261 §7.1, §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: Uri },
    Response { status: u16, reason: String },
}

/// A SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Bytes,
}

/// The standard reason phrase for a status code (RFC 3261 §21 and extensions).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}

impl Message {
    pub fn request(method: Method, uri: Uri) -> Message {
        Message {
            start: StartLine::Request { method, uri },
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn call_id(&self) -> Option<&str> {
        self.headers.get(&HeaderName::CallId)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(self.required(&HeaderName::CSeq)?)
    }

    pub fn from_header(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(self.required(&HeaderName::From)?)
    }

    pub fn to_header(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(self.required(&HeaderName::To)?)
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        let mut out = Vec::new();
        for v in self.headers.get_all(&HeaderName::Via) {
            out.extend(Via::parse_list(v)?);
        }
        Ok(out)
    }

    pub fn top_via(&self) -> Result<Via, ParseError> {
        let first = self.required(&HeaderName::Via)?;
        Via::parse_list(first)?
            .into_iter()
            .next()
            .ok_or_else(|| ParseError::syntax("empty Via"))
    }

    /// Every Contact value; `Star` when the header is `*`.
    pub fn contacts(&self) -> Result<ContactValue, ParseError> {
        let mut list = Vec::new();
        for v in self.headers.get_all(&HeaderName::Contact) {
            match ContactValue::parse(v)? {
                ContactValue::Star => return Ok(ContactValue::Star),
                ContactValue::List(l) => list.extend(l),
            }
        }
        Ok(ContactValue::List(list))
    }

    /// Route or Record-Route values in order.
    pub fn name_addrs(&self, name: &HeaderName) -> Result<Vec<NameAddr>, ParseError> {
        let mut out = Vec::new();
        for v in self.headers.get_all(name) {
            out.extend(NameAddr::parse_list(v)?);
        }
        Ok(out)
    }

    /// A numeric single-value header (Expires, Max-Forwards, Min-Expires...).
    pub fn header_u32(&self, name: &HeaderName) -> Result<Option<u32>, ParseError> {
        self.headers
            .get(name)
            .map(|v| crate::typed::parse_u32(v, name.as_str()))
            .transpose()
    }

    fn required(&self, name: &HeaderName) -> Result<&str, ParseError> {
        self.headers
            .get(name)
            .ok_or_else(|| ParseError::syntax(format!("missing {name}")))
    }

    /// Builds a response to this request (RFC 3261 §8.2.6.2): copies Via, From, To,
    /// Call-ID and CSeq; adds a To tag when the request had none and `to_tag` is given.
    pub fn response(&self, status: u16, to_tag: Option<&str>) -> Message {
        response_from_headers(&self.headers, status, reason_phrase(status), to_tag)
    }

    /// Serializes the message. Content-Length is always written from the body's length,
    /// so stream framing (RFC 3261 §18.3) can rely on it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.to_string().as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { status, reason } => {
                out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
            }
        }
        for h in &self.headers.0 {
            if h.name == HeaderName::ContentLength {
                continue;
            }
            out.extend_from_slice(h.name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Builds a response from the headers of a request (also used for requests that failed
/// validation, where only the raw headers are known).
pub fn response_from_headers(
    req: &Headers,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Message {
    let mut headers = Headers::new();
    for h in &req.0 {
        if matches!(
            h.name,
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
        ) {
            headers.0.push(h.clone());
        } else if h.name == HeaderName::To {
            let mut value = h.value.clone();
            if let Some(tag) = to_tag {
                let has_tag = NameAddr::parse(&value)
                    .map(|n| n.tag().is_some())
                    .unwrap_or(true);
                if !has_tag && status > 100 {
                    value.push_str(";tag=");
                    value.push_str(tag);
                }
            }
            headers.push(HeaderName::To, value);
        }
    }
    Message {
        start: StartLine::Response {
            status,
            reason: reason.to_owned(),
        },
        headers,
        body: Bytes::new(),
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.encode()))
    }
}
