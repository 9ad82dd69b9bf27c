//! Signature inputs and signatures of the pidgin-sipe sign-in captured against a test server
//! (messages in `tests/data`, from `../shared/interop/sipe/captured/ocs2007-ntlm.sip.log`;
//! password `pw-alice`): the client's signatures verify, and the server's signatures we
//! compute are the ones sipe accepted, on responses and on a server-originated NOTIFY.

use base64::Engine as _;
use sip_message::{parse_datagram, AuthHeader, HeaderName, Message};
use sipae::{server_signature, signature_input, verify_client, SignatureContext};

const CHALLENGE: &str = "TlRMTVNTUAACAAAADgAOADgAAABVgpnibyljPLj+AW0AAAAAAAAAAGQAZABGAAAABgGxHQAAAA9FAFgAQQBNAFAATABFAAIADgBFAFgAQQBNAFAATABFAAEACABMAFkATgBDAAQAGABlAHgAYQBtAHAAbABlAC4AdABlAHMAdAADACIAbAB5AG4AYwAuAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAAAAAA=";

fn message(name: &str) -> Message {
    let path = format!("{}/tests/data/{name}.sip", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    // Bodies were left out of the data files; what is signed is in the header.
    let head: Vec<&str> = text
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Content-Length:") {
                "Content-Length: 0"
            } else {
                l
            }
        })
        .collect();
    parse_datagram(head.join("\r\n").as_bytes()).unwrap()
}

fn param(msg: &Message, header: &str, name: &str) -> String {
    let v = msg.headers.get(&HeaderName::from_wire(header)).unwrap();
    AuthHeader::parse(v)
        .unwrap()
        .param(name)
        .unwrap()
        .to_owned()
}

fn session(register: &Message) -> ntlm::Session {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    let auth =
        ntlm::AuthenticateMessage::parse(&b64(&param(register, "Authorization", "gssapi-data")))
            .unwrap();
    let challenge: [u8; 8] = b64(CHALLENGE)[24..32].try_into().unwrap();
    ntlm::accept(&auth, &challenge, &ntlm::nt_hash("pw-alice")).unwrap()
}

fn ctx<'a>(rand: &'a str, num: &'a str) -> SignatureContext<'a> {
    SignatureContext {
        protocol: "NTLM",
        rand,
        num,
        realm: "SIP Communications Service",
        targetname: "lync.example.test",
        version: 4,
    }
}

#[test]
fn client_signatures_verify() {
    let register = message("register_authenticate");
    let s = session(&register);
    let (crand, cnum) = (
        param(&register, "Authorization", "crand"),
        param(&register, "Authorization", "cnum"),
    );
    assert_eq!(
        signature_input(&register, &ctx(&crand, &cnum)),
        "<NTLM><fe8271a6><1><SIP Communications Service><lync.example.test>\
         <9E75gD014a3408i8C5EmBAA6tD56Bb4C02x8DDCx><3><REGISTER><sip:alice@example.test>\
         <324415842><sip:alice@example.test><><><><>"
    );
    assert!(verify_client(
        &s,
        &register,
        &ctx(&crand, &cnum),
        &param(&register, "Authorization", "response")
    ));
    let sub = message("subscribe");
    let (crand, cnum) = (
        param(&sub, "Authorization", "crand"),
        param(&sub, "Authorization", "cnum"),
    );
    assert!(verify_client(
        &s,
        &sub,
        &ctx(&crand, &cnum),
        &param(&sub, "Authorization", "response")
    ));
    // Another message's signature does not fit this one.
    assert!(!verify_client(
        &s,
        &sub,
        &ctx(&crand, &cnum),
        &param(&register, "Authorization", "response")
    ));
}

#[test]
fn server_signatures_are_the_ones_sipe_accepted() {
    let s = session(&message("register_authenticate"));
    for name in ["register_200", "subscribe_200", "notify"] {
        let m = message(name);
        let (srand, snum) = (
            param(&m, "Authentication-Info", "srand"),
            param(&m, "Authentication-Info", "snum"),
        );
        assert_eq!(
            server_signature(&s, &m, &ctx(&srand, &snum)),
            param(&m, "Authentication-Info", "rspauth"),
            "{name}: {}",
            signature_input(&m, &ctx(&srand, &snum))
        );
    }
}
