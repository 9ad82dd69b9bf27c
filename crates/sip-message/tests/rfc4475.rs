//! RFC 4475 torture tests: every message, with the verdict MANIFEST.tsv gives it.

use sip_message::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");

fn load(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap()
}

fn manifest() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DIR}/MANIFEST.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[3].to_owned())
        })
        .collect()
}

/// Messages the parser itself must refuse. The rest of the "semantic" class parse and
/// get their verdict from the server (tested over sockets in the server's suite).
const PARSER_REJECTS: &[&str] = &["insuf.dat", "multi01.dat", "mcl01.dat"];

#[test]
fn every_message_gets_its_verdict() {
    let m = manifest();
    assert_eq!(m.len(), 49);
    for (file, class) in m {
        let data = load(&file);
        let result = parse_datagram(&data);
        let must_reject = class == "invalid" || PARSER_REJECTS.contains(&file.as_str());
        match (&result, must_reject) {
            (Ok(msg), false) => {
                // Serialize and parse again: the same message comes back.
                let again = parse_datagram(&msg.encode())
                    .unwrap_or_else(|e| panic!("{file} round trip: {e}"));
                assert_eq!(again.start, msg.start, "{file}");
                assert_eq!(again.body, msg.body, "{file}");
                assert_eq!(
                    again.headers.0.len(),
                    msg.headers.0.len() + usize::from(!msg.headers.has(&HeaderName::ContentLength)),
                    "{file}"
                );
            }
            (Err(rej), true) => {
                let is_response = data.starts_with(b"SIP/");
                if is_response {
                    assert!(
                        rej.head.is_none(),
                        "{file}: a bad response is dropped, not answered"
                    );
                } else if file != "baddn.dat" {
                    let head = rej
                        .head
                        .as_ref()
                        .unwrap_or_else(|| panic!("{file}: no head to answer"));
                    let expected = if file == "badvers.dat" { 505 } else { 400 };
                    assert_eq!(rej.error.status, expected, "{file}: {}", rej.error);
                    let resp =
                        response_from_headers(&head.headers, rej.error.status, "x", Some("t"));
                    assert_eq!(resp.status(), Some(expected));
                }
            }
            (Ok(_), true) => panic!("{file} ({class}) parsed but must be rejected"),
            (Err(e), false) => panic!("{file} ({class}) rejected: {e}"),
        }
    }
}

fn ok(name: &str) -> Message {
    parse_datagram(&load(name)).unwrap()
}

#[test]
fn details_of_valid_messages() {
    let m = ok("wsinv.dat");
    assert_eq!(m.vias().unwrap().len(), 3);
    assert_eq!(m.cseq().unwrap().seq, 9);
    assert_eq!(m.header_u32(&HeaderName::MaxForwards).unwrap(), Some(68));
    assert_eq!(
        m.from_header().unwrap().display.as_deref(),
        Some("J Rosenberg \\\"")
    );
    assert_eq!(m.to_header().unwrap().tag(), Some("1918181833n"));
    assert_eq!(m.body.len(), 150);
    match m.contacts().unwrap() {
        ContactValue::List(l) => {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].params.value("q"), Some("0.33"));
        }
        ContactValue::Star => panic!(),
    }

    let m = ok("semiuri.dat");
    let uri = m.request_uri().unwrap().as_sip().unwrap();
    assert_eq!(uri.user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(
        uri.user_unescaped().as_deref(),
        Some("user;par=u@example.net")
    );

    let m = ok("escnull.dat");
    match m.contacts().unwrap() {
        ContactValue::List(l) => {
            assert_eq!(l.len(), 2);
            assert_ne!(l[0].uri, l[1].uri);
        }
        ContactValue::Star => panic!(),
    }

    let m = ok("esc02.dat");
    assert_eq!(m.method(), Some(&Method::Other("RE%47IST%45R".into())));
    assert_eq!(
        m.headers.count(&HeaderName::Contact),
        2,
        "C%6Fntact is another header"
    );

    assert_eq!(ok("transports.dat").vias().unwrap().len(), 5);
    assert_eq!(ok("mpart01.dat").body.len(), 553);
    assert_eq!(ok("dblreq.dat").body.len(), 0, "trailing octets ignored");
    assert!(
        !ok("inv2543.dat").body.is_empty(),
        "no Content-Length: body is the rest"
    );
    assert_eq!(ok("noreason.dat").status(), Some(100));
    match ok("unreason.dat").start {
        StartLine::Response { status, reason } => {
            assert_eq!(status, 200);
            assert!(reason.contains("простое"));
        }
        _ => panic!(),
    }
    let m = ok("lwsdisp.dat");
    assert_eq!(m.from_header().unwrap().display.as_deref(), Some("caller"));
    let m = ok("intmeth.dat");
    assert!(matches!(m.method(), Some(Method::Other(_))));
    let m = ok("unksm2.dat");
    assert!(matches!(m.to_header().unwrap().uri, Uri::Other(_)));
    let m = ok("regescrt.dat");
    match m.contacts().unwrap() {
        ContactValue::List(l) => assert!(l[0].uri.as_sip().unwrap().headers.is_some()),
        ContactValue::Star => panic!(),
    }
}

#[test]
fn stream_framing() {
    // Content-Length larger than what arrived: wait for more (RFC 4475 §3.1.2.2).
    assert_eq!(
        frame_stream(&load("clerr.dat"), 65536),
        Ok(Frame::Incomplete)
    );
    assert!(matches!(
        frame_stream(&load("ncl.dat"), 65536),
        Err(FrameError::BadContentLength(..))
    ));
    assert!(matches!(
        frame_stream(&load("mcl01.dat"), 65536),
        Err(FrameError::BadContentLength(..))
    ));
    assert!(matches!(
        frame_stream(&load("inv2543.dat"), 65536),
        Err(FrameError::MissingContentLength { .. })
    ));
    let wsinv = load("wsinv.dat");
    assert_eq!(frame_stream(&wsinv, 65536), Ok(Frame::Message(wsinv.len())));
    assert!(matches!(
        frame_stream(&wsinv, 100),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(frame_stream(b"\r\n\r\n", 100), Ok(Frame::Ping(4)));
    assert_eq!(frame_stream(b"\r\n", 100), Ok(Frame::Incomplete));
    assert_eq!(frame_stream(b"\r\nOPTIONS", 100), Ok(Frame::Skip(2)));
}

#[test]
fn nothing_panics_on_truncations() {
    for (file, _) in manifest() {
        let data = load(&file);
        for n in 0..data.len() {
            let _ = parse_datagram(&data[..n]);
            let _ = frame_stream(&data[..n], 4096);
        }
    }
}
