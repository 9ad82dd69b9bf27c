//! Checks shared by several fuzz targets.
#![allow(dead_code)]

use sip_message::{ContactValue, HeaderName, Message, StartLine, Uri};

/// XML 1.0 §2.2 `Char`: what a well-formed document may contain at all. A document with
/// anything else (most C0 controls, U+FFFE, U+FFFF) is refused by a conforming reader
/// (MSXML in Lync, libxml2 in pidgin-sipe), whatever it means.
pub fn xml_chars_ok(doc: &str) -> bool {
    doc.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

/// What a document can carry of `s`: characters XML does not allow become U+FFFD (the
/// writers' escape, msrtc::escape, does that).
pub fn xml_sanitized(s: &str) -> String {
    s.chars()
        .map(|c| if xml_chars_ok(c.encode_utf8(&mut [0; 4])) { c } else { char::REPLACEMENT_CHARACTER })
        .collect()
}

/// Every typed view of a URI: values or errors, never a panic.
pub fn uri_views(uri: &Uri) {
    let printed = uri.to_string();
    match uri {
        Uri::Sip(u) => {
            let _ = u.user_unescaped();
            let _ = u.transport();
            let _ = u.aor();
            for p in ["opaque", "gruu", "lr", "maddr", "transport", "user", "ttl", "method"] {
                let _ = u.params.get(p);
                let _ = u.params.value(p);
            }
            let _ = u.headers.as_deref().map(sip_message::uri::unescape);
            assert!(printed.starts_with("sip:") || printed.starts_with("sips:"));
        }
        Uri::Tel(t) => {
            let _ = t.params.value("phone-context");
            assert!(printed.starts_with("tel:"));
        }
        Uri::Other(s) => assert_eq!(&printed, s),
    }
}

/// The header names whose values are numbers (RFC 3261 §20 and extensions).
pub const NUMERIC: &[&str] = &[
    "Max-Forwards",
    "Expires",
    "Min-Expires",
    "Content-Length",
    "Session-Expires",
    "Min-SE",
    "Retry-After",
    "RSeq",
    "ms-keep-alive",
];

/// Names of the name-addr list headers.
pub const NAME_ADDR_LISTS: &[&str] = &[
    "Route",
    "Record-Route",
    "Path",
    "Service-Route",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Refer-To",
    "Referred-By",
    "Ms-Sender",
];

/// Every typed accessor of a message, on whatever it holds: a value or an error, never a
/// panic.
pub fn exercise(msg: &Message) {
    if let Ok(vias) = msg.vias() {
        for v in &vias {
            let _ = v.branch();
            let _ = v.has_rfc3261_branch();
            let _ = v.params.value("received");
            let _ = v.params.value("rport");
            let _ = v.to_string();
        }
    }
    let _ = msg.top_via();
    match msg.contacts() {
        Ok(ContactValue::List(l)) => {
            for c in &l {
                let _ = c.tag();
                let _ = c.params.value("expires");
                let _ = c.params.value("+sip.instance");
                let _ = c.params.value("q");
                uri_views(&c.uri);
                let _ = c.to_string();
            }
        }
        Ok(ContactValue::Star) | Err(_) => {}
    }
    for name in NAME_ADDR_LISTS {
        if let Ok(l) = msg.name_addrs(&HeaderName::from_wire(name)) {
            for na in &l {
                let _ = na.tag();
                uri_views(&na.uri);
                let _ = na.to_string();
            }
        }
    }
    let _ = msg.cseq().map(|c| c.to_string());
    for na in [msg.from_header(), msg.to_header()].into_iter().flatten() {
        let _ = na.tag();
        let _ = na.params.value("epid");
        uri_views(&na.uri);
    }
    for name in NUMERIC {
        let _ = msg.header_u32(&HeaderName::from_wire(name));
    }
    // Every header line, as a number and as an auth header and split at commas.
    for h in &msg.headers.0 {
        let _ = msg.header_u32(&h.name);
        let _ = msg.headers.values(&h.name).count();
        if let Ok(a) = sip_message::AuthHeader::parse(&h.value) {
            for p in ["realm", "nonce", "opaque", "gssapi-data", "crand", "cnum", "response"] {
                let _ = a.param(p);
            }
        }
    }
    let mut h = msg.headers.clone();
    while h.pop_first_value(&HeaderName::Via).is_some() {}
    if let Some(u) = msg.request_uri() {
        uri_views(u);
    }
    let _ = msg.call_id();
    let _ = msg.response(486, Some("t")).encode();
    let _ = msg.to_string();
}

/// What [`sip_message::parse_datagram`]'s validation promises of a message it accepted.
pub fn check_valid(msg: &Message) {
    let cseq = msg.cseq().expect("an accepted message has a CSeq");
    msg.from_header().expect("an accepted message has a From");
    msg.to_header().expect("an accepted message has a To");
    assert!(!msg.vias().expect("Vias parse").is_empty(), "at least one Via");
    msg.top_via().expect("top Via parses");
    assert!(msg.call_id().is_some_and(|c| !c.is_empty()));
    msg.header_u32(&HeaderName::MaxForwards).expect("Max-Forwards is a number");
    msg.header_u32(&HeaderName::Expires).expect("Expires is a number");
    msg.contacts().expect("Contacts parse");
    msg.name_addrs(&HeaderName::Route).expect("Route parses");
    msg.name_addrs(&HeaderName::RecordRoute).expect("Record-Route parses");
    if let Some(cl) = msg.header_u32(&HeaderName::ContentLength).expect("Content-Length is a number") {
        assert_eq!(cl as usize, msg.body.len(), "the body is what Content-Length says");
    }
    match &msg.start {
        StartLine::Request { method, .. } => assert_eq!(&cseq.method, method),
        StartLine::Response { status, .. } => assert!((100..=699).contains(status)),
    }
}

/// The header lines of a message but Content-Length (which encoding rewrites).
pub fn headers_but_length(msg: &Message) -> Vec<(String, String)> {
    msg.headers
        .0
        .iter()
        .filter(|h| h.name != HeaderName::ContentLength)
        .map(|h| (h.name.as_str().to_ascii_lowercase(), h.value.clone()))
        .collect()
}
