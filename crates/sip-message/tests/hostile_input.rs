//! Network input that once panicked the parser, and a deterministic sweep that puts a
//! multi-byte character at every offset of real messages: every variant must parse or be
//! rejected, never panic (a panic on a receive loop stops a transport).

use sip_message::{
    frame_stream, parse_datagram, parse_stream_message, read_request_head, Frame, HeaderName,
    NameAddr, SipUri, Uri,
};

const OPTIONS: &str = "OPTIONS sip:alice@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:mallory@example.com>;tag=1\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
Call-ID: c1@127.0.0.2\r\n\
CSeq: 1 OPTIONS\r\n\
Contact: <sip:mallory@127.0.0.2:5060;transport=udp>;expires=60\r\n\
Route: <sip:127.0.0.1;lr>\r\n\
Content-Length: 0\r\n\r\n";

#[test]
fn non_ascii_sip_version_is_a_400_not_a_panic() {
    for version in ["SIPé", "SIP/é", "SIé/2.0", "éSIP/2.0", "SIP/2.é"] {
        let text = format!(
            "OPTIONS sip:x {version}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
        );
        let rej = parse_datagram(text.as_bytes()).expect_err(version);
        let status = rej.error.status;
        assert!(status == 400 || status == 505, "{version}: {status}");
        assert!(
            rej.head.is_some(),
            "{version}: a bad request is still answered"
        );
    }
}

#[test]
fn non_ascii_uri_scheme_is_an_error_not_a_panic() {
    for s in ["aéé", "sié:x", "sipé", "sipsé:x", "éé:x", "s\u{1F600}"] {
        assert!(SipUri::parse(s).is_err(), "{s}");
        let _ = Uri::parse(s);
        let _ = NameAddr::parse(&format!("<{s}>"));
    }
}

/// Every byte offset of a real request, with a two-, three- and four-byte character
/// inserted there or put in place of the byte: parse, frame and read the head.
#[test]
fn multibyte_characters_anywhere_never_panic() {
    let base = OPTIONS.as_bytes();
    for ch in ["é", "€", "\u{1F600}"] {
        for at in 0..=base.len() {
            for replace in [false, true] {
                let mut v = base[..at].to_vec();
                v.extend_from_slice(ch.as_bytes());
                let rest = if replace && at < base.len() {
                    at + 1
                } else {
                    at
                };
                v.extend_from_slice(&base[rest..]);
                exercise(&v);
            }
        }
    }
}

fn exercise(bytes: &[u8]) {
    if let Ok(m) = parse_datagram(bytes) {
        // Every typed view of what parsed.
        let _ = m.top_via();
        let _ = m.vias();
        let _ = m.contacts();
        let _ = m.from_header();
        let _ = m.to_header();
        let _ = m.cseq();
        let _ = m.name_addrs(&HeaderName::Route);
        let _ = m.header_u32(&HeaderName::MaxForwards);
        let _ = m.encode();
    }
    let _ = read_request_head(bytes);
    let mut buf = bytes.to_vec();
    loop {
        match frame_stream(&buf, 4096) {
            Ok(Frame::Message(n)) => {
                let _ = parse_stream_message(&buf[..n]);
                buf.drain(..n);
            }
            Ok(Frame::Ping(n)) | Ok(Frame::Skip(n)) => {
                buf.drain(..n);
            }
            Ok(Frame::Incomplete) | Err(_) => break,
        }
    }
}

/// Found by fuzzing (fuzz/regressions/): each once broke an invariant.
#[test]
fn fuzz_findings_stay_fixed() {
    // A truncated response is dropped, never answered.
    let rej = parse_datagram(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n").unwrap_err();
    assert!(rej.head.is_none());
    // An IPv6 reference parameter holds an IPv6 reference and nothing else.
    assert!(sip_message::Via::parse("SIP/2.0/UDP h;received=[::1").is_err());
    assert!(sip_message::Via::parse("SIP/2.0/UDP h;received=[::1]x").is_err());
    let v = sip_message::Via::parse("SIP/2.0/UDP h;received=[2001:db8::1];rport").unwrap();
    assert_eq!(
        sip_message::Via::parse(&v.to_string()).unwrap().to_string(),
        v.to_string()
    );
    // An escaped colon in a user part stays in the user part of the AoR.
    let u = SipUri::parse("sip:alice%3Ax@example.test").unwrap();
    let aor = SipUri::parse(&u.aor()).unwrap();
    assert_eq!(aor.user_unescaped().as_deref(), Some("alice:x"));
    assert!(aor.password.is_none());
    let u = SipUri::parse("sip:a%40b@example.net").unwrap();
    assert_eq!(
        SipUri::parse(&u.aor()).unwrap().user_unescaped().as_deref(),
        Some("a@b")
    );
    // A head over the limit is TooLarge however the stream is read.
    let mut head = b"OPTIONS sip:x SIP/2.0\r\n".to_vec();
    head.extend_from_slice(&b"X: yyyyyyyy\r\n".repeat(20));
    head.extend_from_slice(b"\r\n");
    let max = 100;
    let whole = frame_stream(&head, max);
    let mut framer = sip_message::StreamFramer::default();
    let mut trickled = Ok(Frame::Incomplete);
    for end in 1..=head.len() {
        trickled = framer.next_frame(&head[..end], max);
        if trickled != Ok(Frame::Incomplete) {
            break;
        }
    }
    assert!(
        matches!(whole, Err(sip_message::FrameError::TooLarge { .. })),
        "{whole:?}"
    );
    assert!(
        matches!(trickled, Err(sip_message::FrameError::TooLarge { .. })),
        "{trickled:?}"
    );
    // A bare CR or a NUL in a header value is refused (a quoted-pair may escape a NUL).
    let with = |v: &str| {
        format!(
            "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nSubject: {v}\r\n\r\n"
        )
    };
    assert_eq!(
        parse_datagram(with("a\rb").as_bytes())
            .unwrap_err()
            .error
            .status,
        400
    );
    assert_eq!(
        parse_datagram(with("a\0b").as_bytes())
            .unwrap_err()
            .error
            .status,
        400
    );
    assert!(parse_datagram(with("\"a\\\0b\"").as_bytes()).is_ok());
}
