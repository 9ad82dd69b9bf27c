//! Any bytes as a UDP datagram: parsing never panics, and whatever parses serializes to
//! something that parses again to the same start line and body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match sip_message::parse_datagram(data) {
        Ok(msg) => {
            let again = sip_message::parse_datagram(&msg.encode()).expect("encoded message re-parses");
            assert_eq!(again.start, msg.start);
            assert_eq!(again.body, msg.body);
            let _ = msg.vias();
            let _ = msg.contacts();
            let _ = msg.from_header();
        }
        Err(rej) => {
            if let Some(head) = rej.head {
                let _ = sip_message::response_from_headers(&head.headers, rej.error.status, "x", Some("t")).encode();
            }
        }
    }
});
