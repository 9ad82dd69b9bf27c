//! Any bytes as a UDP datagram: parsing never panics; what parses
//! - holds what validation promises (CSeq, From, To, Via, Call-ID present and readable,
//!   CSeq method = request method, Content-Length = body length),
//! - answers every typed accessor (Vias, Contacts, Route/Record-Route/..., CSeq, From/To,
//!   every numeric header, Request-URI parameters) without panicking,
//! - encodes to bytes that parse again, as a datagram and as a stream message, to the same
//!   start line, header lines and body, and encode again to the same bytes;
//!
//! what is refused carries an answerable head only for a request (a bad response is
//! dropped, RFC 4475 §3.1.2.19), and that head builds a response.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip_message::{frame_stream, parse_datagram, parse_stream_message, Frame};

#[path = "../common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match parse_datagram(data) {
        Ok(msg) => {
            common::check_valid(&msg);
            common::exercise(&msg);
            let enc = msg.encode();
            let again = parse_datagram(&enc).expect("encoded message re-parses");
            assert_eq!(again.start, msg.start);
            assert_eq!(again.body, msg.body);
            assert_eq!(common::headers_but_length(&again), common::headers_but_length(&msg));
            assert_eq!(again.encode(), enc, "encoding is stable");
            // On a stream the encoded message frames as exactly itself and reads the same.
            assert_eq!(frame_stream(&enc, usize::MAX), Ok(Frame::Message(enc.len())));
            let streamed = parse_stream_message(&enc).expect("encoded message parses on a stream");
            assert_eq!(streamed, again);
        }
        Err(rej) => {
            assert!((300..=699).contains(&rej.error.status));
            if let Some(head) = rej.head {
                assert!(head.method.is_some(), "a refused response must not be answered");
                let _ = sip_message::response_from_headers(&head.headers, rej.error.status, "x", Some("t")).encode();
            }
        }
    }
});
