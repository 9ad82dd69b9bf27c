//! The NTLM sign-in of pidgin-sipe 1.25 (Debian 12) captured against a test server
//! (`../shared/interop/sipe/captured/ocs2007-ntlm.sip.log`, user alice@example.test, password
//! `pw-alice`): the CHALLENGE the server sent, sipe's AUTHENTICATE, and the MS-SIPAE
//! signatures on both sides. The signed strings are the MS-SIPAE §3.2.5.1.1 breakdowns of
//! those messages, written out here.

use base64::Engine as _;
use ntlm::{accept, nt_hash, AuthenticateMessage, NtlmError};

const CHALLENGE: &str = "TlRMTVNTUAACAAAADgAOADgAAABVgpnibyljPLj+AW0AAAAAAAAAAGQAZABGAAAABgGxHQAAAA9FAFgAQQBNAFAATABFAAIADgBFAFgAQQBNAFAATABFAAEACABMAFkATgBDAAQAGABlAHgAYQBtAHAAbABlAC4AdABlAHMAdAADACIAbAB5AG4AYwAuAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAAAAAA=";
const AUTHENTICATE: &str = "TlRMTVNTUAADAAAAGAAYAHAAAACUAJQAiAAAAAAAAABIAAAAJAAkAEgAAAAEAAQAbAAAABAAEAAcAQAAVYKYYgUBKAoAAAAPYQBsAGkAYwBlAEAAZQB4AGEAbQBwAGwAZQAuAHQAZQBzAHQAVgBNAA72APtWC8/az44nMSuSlc5HAqt/m6cAlfePY7cpSKtoORgkYJk8Xi0BAQAAAAAAAADGOZx2fN0BRwKrf5unAJUAAAAAAgAOAEUAWABBAE0AUABMAEUAAQAIAEwAWQBOAEMABAAYAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAMAIgBsAHkAbgBjAC4AZQB4AGEAbQBwAGwAZQAuAHQAZQBzAHQAAAAAAAAAAACWuUaTztnM/WItdYXizZDD";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn server_challenge() -> [u8; 8] {
    b64(CHALLENGE)[24..32].try_into().unwrap()
}

fn hex16(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn sipe_authenticate_is_accepted_and_its_signatures_verify() {
    let auth = AuthenticateMessage::parse(&b64(AUTHENTICATE)).unwrap();
    assert_eq!(auth.user, "alice@example.test");
    assert_eq!(auth.domain, "");
    assert!(auth.flags & ntlm::flags::DATAGRAM != 0, "connectionless");
    let session = accept(&auth, &server_challenge(), &nt_hash("pw-alice")).unwrap();

    // The REGISTER carrying the AUTHENTICATE: crand fe8271a6, cnum 1.
    let register = "<NTLM><fe8271a6><1><SIP Communications Service><lync.example.test>\
        <9E75gD014a3408i8C5EmBAA6tD56Bb4C02x8DDCx><3><REGISTER><sip:alice@example.test>\
        <324415842><sip:alice@example.test><><><><>";
    assert!(session.verify(
        register.as_bytes(),
        &hex16("01000000DB9EF30E454B5AA264000000")
    ));
    // Sequence number 100, as sipe always uses.
    assert_eq!(
        &hex16("01000000DB9EF30E454B5AA264000000")[12..],
        &100u32.to_le_bytes()
    );
    // One character changed: refused.
    let tampered = register.replace("<3><REGISTER>", "<4><REGISTER>");
    assert!(!session.verify(
        tampered.as_bytes(),
        &hex16("01000000DB9EF30E454B5AA264000000")
    ));

    // The next request, a SUBSCRIBE (crand 1049a9e9, cnum 2).
    let subscribe = "<NTLM><1049a9e9><2><SIP Communications Service><lync.example.test>\
        <7C9Ag2282a345Ei1852mA3C9t1D8Cb8B9Ax47C9x><1><SUBSCRIBE><sip:alice@example.test>\
        <5416159673><sip:alice@example.test><><><><>";
    assert!(session.verify(
        subscribe.as_bytes(),
        &hex16("0100000086DFCB955839294A64000000")
    ));

    // The server's 200 to the REGISTER (srand 2B8486A7, snum 1): the rspauth sipe accepted.
    let ok = "<NTLM><2B8486A7><1><SIP Communications Service><lync.example.test>\
        <9E75gD014a3408i8C5EmBAA6tD56Bb4C02x8DDCx><3><REGISTER><sip:alice@example.test>\
        <324415842><sip:alice@example.test><c53c9dbfd7><><><7200><200>";
    assert_eq!(
        session.sign(100, ok.as_bytes()).to_vec(),
        hex16("010000009A5931EE8AA893EE64000000")
    );
}

#[test]
fn a_wrong_password_is_refused() {
    let auth = AuthenticateMessage::parse(&b64(AUTHENTICATE)).unwrap();
    assert_eq!(
        accept(&auth, &server_challenge(), &nt_hash("pw-alicE")).err(),
        Some(NtlmError::WrongPassword)
    );
}

#[test]
fn our_challenge_has_the_layout_sipe_reads() {
    let target = ntlm::TargetInfo {
        netbios_domain: "EXAMPLE".into(),
        netbios_computer: "LYNC".into(),
        dns_domain: "example.test".into(),
        dns_computer: "lync.example.test".into(),
    };
    let ours = ntlm::challenge_message(server_challenge(), &target);
    // The captured server built the same message from the same inputs.
    assert_eq!(ours, b64(CHALLENGE));
}
