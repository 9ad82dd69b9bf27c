//! Any text as a header value. Every typed view (Via, name-addr, Contact, CSeq, auth
//! params, URIs, numbers) returns a value or an error, never a panic; what parses prints
//! to text that parses again to the same value. Then the value is put, under a header
//! name the first byte chooses, into an otherwise valid request, and every typed
//! accessor of the message runs on it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip_message::{AuthHeader, CSeq, ContactValue, HeaderName, NameAddr, Uri, Via};

#[path = "../common/mod.rs"]
mod common;

const BASE: &str = "OPTIONS sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

const NAMES: &[&str] = &[
    "Via", "Contact", "Route", "Record-Route", "Path", "From", "To", "CSeq", "Call-ID",
    "Max-Forwards", "Expires", "Min-Expires", "Content-Length", "Session-Expires",
    "Authorization", "Proxy-Authorization", "WWW-Authenticate", "Authentication-Info",
    "P-Asserted-Identity", "Refer-To", "Referred-By", "Ms-Sender", "Supported", "Event",
    "Content-Type", "ms-text-format", "Date", "Retry-After", "v", "m", "f", "t", "i", "l",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(s) = std::str::from_utf8(rest) else { return };
    if let Ok(vias) = Via::parse_list(s) {
        for v in &vias {
            let again = Via::parse(&v.to_string()).expect("printed Via re-parses");
            assert_eq!(&again, v);
        }
    }
    if let Ok(nas) = NameAddr::parse_list(s) {
        for na in &nas {
            let again = NameAddr::parse(&na.to_string()).expect("printed name-addr re-parses");
            assert_eq!(again.uri.to_string(), na.uri.to_string());
            assert_eq!(again.params, na.params);
            assert_eq!(again.display, na.display);
        }
    }
    let _ = ContactValue::parse(s);
    if let Ok(c) = CSeq::parse(s) {
        assert_eq!(CSeq::parse(&c.to_string()).as_ref(), Ok(&c));
    }
    if let Ok(a) = AuthHeader::parse(s) {
        assert!(!a.scheme.is_empty());
        let _ = a.param("realm");
    }
    if let Ok(uri) = Uri::parse(s) {
        let again = Uri::parse(&uri.to_string()).expect("printed URI re-parses");
        assert_eq!(again.to_string(), uri.to_string());
        common::uri_views(&uri);
    }
    let _ = sip_message::uri::unescape(s);
    let _ = sip_message::Host::parse(s);
    let _ = sip_message::typed::parse_u32(s, "x");
    let _ = sip_digest::Algorithm::from_param(Some(s));

    // The value inside a request, under one of the names above.
    if s.contains(['\r', '\n']) {
        return;
    }
    let name = NAMES[pick as usize % NAMES.len()];
    let text = BASE.replacen("Content-Length: 0\r\n", &format!("{name}: {s}\r\nContent-Length: 0\r\n"), 1);
    match sip_message::parse_datagram(text.as_bytes()) {
        Ok(msg) => {
            common::check_valid(&msg);
            common::exercise(&msg);
        }
        Err(_) => {
            // Refused as a whole: the typed views still run on the raw lines.
            let mut msg = sip_message::parse_datagram(BASE.as_bytes()).expect("base parses");
            msg.headers.push(HeaderName::from_wire(name), s.trim());
            common::exercise(&msg);
        }
    }
});
