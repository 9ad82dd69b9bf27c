//! What the IM service reads of an INVITE or MESSAGE (crates/switchboard-im, through its
//! `fuzzing` module): whether the SDP offers `m=message` (session-mode IM), the first
//! message of a Lync INVITE (`ms-text-format`, MS-SIP), chat commands in a MESSAGE, and
//! the conference a focus or MCU URI belongs to.
//!
//! Input: a SIP message (a datagram). Checks:
//! - the `m=message` verdict does not depend on line endings (CRLF or LF) and is false for
//!   a body that is not UTF-8 text;
//! - `ms-text-format` read gives back the decoded `ms-body` and a content type with no
//!   control character (it becomes the Content-Type of MESSAGEs to others), and writing
//!   what was read into a header reads back the same; arbitrary header text never panics;
//! - a chat command is the trimmed body, starting with one of the four commands;
//! - the conference AoR found for a URI is a `sip:` AoR that names itself (but for user
//!   parts that need escaping: see `check_conference`).
#![no_main]
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sip_message::{HeaderName, Message};
use switchboard_im::fuzzing::{command_of, conference_of, first_message, offers_message_media};

fn check_first_message(header: &str) {
    let Some((ct, body)) = first_message(header) else { return };
    assert!(!ct.chars().any(char::is_control), "{ct:?}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
    let written = format!("{ct}; msgr=x; ms-body={b64}");
    assert_eq!(first_message(&written), Some((ct, body)), "{written}");
}

/// RFC 3261 §25.1 characters a SIP URI's user part may hold unescaped.
fn user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c)
}

fn check_conference(uri: &str) {
    let Some(aor) = conference_of(uri) else { return };
    assert!(aor.starts_with("sip:"), "{aor}");
    // `SipUri::aor` writes the user part in one canonical escaping (it once wrote it
    // unescaped: `sip:alice%3Ax@d` became user alice with password x).
    let user = aor["sip:".len()..].rsplit_once('@').map_or("", |(u, _)| u);
    assert!(
        user.chars().all(|c| user_char(c) || c == '%' || c.is_ascii_hexdigit()),
        "{aor}"
    );
    assert_eq!(conference_of(&aor).as_deref(), Some(aor.as_str()), "the AoR of {uri} names another");
}

fuzz_target!(|data: &[u8]| {
    // Header text on its own (what `ms-text-format` may hold).
    if let Ok(s) = std::str::from_utf8(data) {
        check_first_message(s);
        check_conference(s);
    }
    let Ok(msg) = sip_message::parse_datagram(data) else { return };
    let offers = offers_message_media(&msg);
    match std::str::from_utf8(&msg.body) {
        Ok(text) => {
            for endings in [text.replace("\r\n", "\n"), text.replace("\r\n", "\n").replace('\n', "\r\n")] {
                let other = Message { body: endings.into_bytes().into(), ..msg.clone() };
                assert_eq!(offers_message_media(&other), offers, "line endings changed the verdict");
            }
        }
        Err(_) => assert!(!offers, "a body that is not text offered m=message"),
    }
    if let Some(h) = msg.headers.get(&HeaderName::from_wire("ms-text-format")) {
        check_first_message(h);
    }
    if let Some(cmd) = command_of(&msg) {
        let text = std::str::from_utf8(&msg.body).expect("a command is text").trim();
        assert_eq!(cmd, text);
        assert!(["/invite", "/who", "/leave", "/help"].iter().any(|c| cmd.starts_with(c)));
    }
    if let Some(u) = msg.request_uri() {
        check_conference(&u.to_string());
    }
    for na in [msg.from_header(), msg.to_header()].into_iter().flatten() {
        check_conference(&na.uri.to_string());
    }
});
