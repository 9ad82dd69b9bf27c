//! Any text as a header value: every typed view (Via, name-addr, CSeq, auth params, URIs)
//! returns a value or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = sip_message::Via::parse_list(s);
    let _ = sip_message::NameAddr::parse_list(s);
    let _ = sip_message::ContactValue::parse(s);
    let _ = sip_message::CSeq::parse(s);
    let _ = sip_message::AuthHeader::parse(s);
    if let Ok(uri) = sip_message::Uri::parse(s) {
        let again = sip_message::Uri::parse(&uri.to_string()).expect("printed URI re-parses");
        assert_eq!(again.to_string(), uri.to_string());
    }
    let _ = sip_message::uri::unescape(s);
    let _ = sip_digest::Algorithm::from_param(Some(s));
});
