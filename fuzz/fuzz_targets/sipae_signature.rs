//! The MS-SIPAE reader side: a message off the network, its signature input, and the
//! check of the `response` its NTLM credentials carry, against a fixed security
//! association (the one pidgin-sipe established in the captured sign-in of
//! crates/sipae/tests, so the captured REGISTER and SUBSCRIBE seeds verify).
//!
//! Checks:
//! - the signature input starts with the association's fields and is the same after the
//!   message is encoded and parsed again (what is signed is what the wire carries);
//! - a `response` verifies only if it is the client's signature in hex (32 hex digits,
//!   either case), never some other spelling of it;
//! - the right signature verifies, and one with a character respelled verifies exactly
//!   when only its case changed (the position and the new character, one of the hex
//!   digits of either case, `+`, `-`, ` `, `x`, come from bytes 1 and 2 mixed with a hash
//!   of the message, so every new message tries another respelling);
//! - the `+sip.instance` of an `epid` (MS-SIPAE §3.3.5.2) is a version-5 UUID that matches
//!   that epid; matching arbitrary Contact instances against arbitrary epids never panics.
//!
//! Input: byte 0 is the protocol version used when the credentials name none, bytes 1
//! and 2 choose the respelling, then the message.
#![no_main]
use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sip_message::{parse_datagram, AuthHeader, ContactValue, HeaderName, Message};
use sipae::{server_signature, signature_input, verify_client, SignatureContext};

const REALM: &str = "SIP Communications Service";
const CHALLENGE: &str = "TlRMTVNTUAACAAAADgAOADgAAABVgpnibyljPLj+AW0AAAAAAAAAAGQAZABGAAAABgGxHQAAAA9FAFgAQQBNAFAATABFAAIADgBFAFgAQQBNAFAATABFAAEACABMAFkATgBDAAQAGABlAHgAYQBtAHAAbABlAC4AdABlAHMAdAADACIAbAB5AG4AYwAuAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAAAAAA=";
const AUTHENTICATE: &str = "TlRMTVNTUAADAAAAGAAYAHAAAACUAJQAiAAAAAAAAABIAAAAJAAkAEgAAAAEAAQAbAAAABAAEAAcAQAAVYKYYgUBKAoAAAAPYQBsAGkAYwBlAEAAZQB4AGEAbQBwAGwAZQAuAHQAZQBzAHQAVgBNAA72APtWC8/az44nMSuSlc5HAqt/m6cAlfePY7cpSKtoORgkYJk8Xi0BAQAAAAAAAADGOZx2fN0BRwKrf5unAJUAAAAAAgAOAEUAWABBAE0AUABMAEUAAQAIAEwAWQBOAEMABAAYAGUAeABhAG0AcABsAGUALgB0AGUAcwB0AAMAIgBsAHkAbgBjAC4AZQB4AGEAbQBwAGwAZQAuAHQAZQBzAHQAAAAAAAAAAACWuUaTztnM/WItdYXizZDD";

fn session() -> &'static ntlm::Session {
    static S: OnceLock<ntlm::Session> = OnceLock::new();
    S.get_or_init(|| {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let auth = ntlm::AuthenticateMessage::parse(&b64(AUTHENTICATE)).unwrap();
        let challenge: [u8; 8] = b64(CHALLENGE)[24..32].try_into().unwrap();
        ntlm::accept(&auth, &challenge, &ntlm::nt_hash("pw-alice")).unwrap()
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// The NTLM credentials of a request, as the proxy finds them.
fn ntlm_params(msg: &Message) -> Option<AuthHeader> {
    msg.headers
        .get_all(&HeaderName::Authorization)
        .chain(msg.headers.get_all(&HeaderName::ProxyAuthorization))
        .filter_map(|v| AuthHeader::parse(v).ok())
        .find(|a| a.scheme.eq_ignore_ascii_case("NTLM"))
}

/// `verify_client` said `ok` of `response` on `input`: only the exact signature passes.
fn check_verdict(input: &str, response: &str, ok: bool) {
    if !ok {
        return;
    }
    assert!(
        response.len() == 32 && response.bytes().all(|b| b.is_ascii_hexdigit()),
        "accepted a response that is not 32 hex digits: {response:?}"
    );
    let seq = u32::from_str_radix(&response[24..26], 16).unwrap()
        | u32::from_str_radix(&response[26..28], 16).unwrap() << 8
        | u32::from_str_radix(&response[28..30], 16).unwrap() << 16
        | u32::from_str_radix(&response[30..32], 16).unwrap() << 24;
    let expected = hex(&session().client_signature(seq, input.as_bytes()));
    assert!(response.eq_ignore_ascii_case(&expected), "accepted {response} for {expected}");
}

/// What a respelled hex digit may become.
const SPELLINGS: &[u8] = b"0123456789abcdefABCDEF+- x";

fn check(msg: &Message, ctx: &SignatureContext<'_>, response: Option<&str>, edit: (usize, u8)) {
    let s = session();
    let input = signature_input(msg, ctx);
    let head = format!(
        "<{}><{}><{}><{}><{}>",
        ctx.protocol, ctx.rand, ctx.num, ctx.realm, ctx.targetname
    );
    assert!(input.starts_with(&head), "{input}");
    if let Some(code) = msg.status() {
        assert!(input.ends_with(&format!("<{code}>")), "{input}");
    }
    // What is signed is what the wire carries.
    let again = parse_datagram(&msg.encode()).expect("encoded message re-parses");
    assert_eq!(signature_input(&again, ctx), input, "signature input changed by encoding");

    if let Some(r) = response {
        check_verdict(&input, r, verify_client(s, msg, ctx, r));
    }
    let good = hex(&s.client_signature(100, input.as_bytes()));
    assert!(verify_client(s, msg, ctx, &good));
    assert!(verify_client(s, msg, ctx, &good.to_ascii_lowercase()));
    let mut edited = good.clone().into_bytes();
    let at = edit.0 % edited.len();
    edited[at] = SPELLINGS[edit.1 as usize % SPELLINGS.len()];
    let edited = String::from_utf8(edited).expect("ASCII");
    let ok = verify_client(s, msg, ctx, &edited);
    check_verdict(&input, &edited, ok);
    assert_eq!(ok, edited.eq_ignore_ascii_case(&good), "{edited:?} against {good}");
    let sig = server_signature(s, msg, ctx);
    assert_eq!(sig, hex(&s.sign(100, input.as_bytes())));
}

fn check_instances(msg: &Message) {
    let epid = msg
        .from_header()
        .ok()
        .and_then(|f| f.params.value("epid").map(str::to_owned));
    if let Some(epid) = &epid {
        let uuid = sipae::instance::instance_from_epid(epid);
        let b = uuid.as_bytes();
        assert_eq!(b.len(), 36);
        assert!([8, 13, 18, 23].iter().all(|&i| b[i] == b'-'));
        assert_eq!(b[14], b'5', "version 5");
        assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "RFC 4122 variant");
        for form in [format!("\"<urn:uuid:{uuid}>\""), format!("<urn:uuid:{}>", uuid.to_uppercase()), uuid.clone()] {
            assert!(sipae::instance::instance_matches_epid(&form, epid), "{form}");
        }
    }
    if let Ok(ContactValue::List(list)) = msg.contacts() {
        for c in &list {
            if let Some(i) = c.params.value("+sip.instance") {
                let _ = sipae::instance::instance_matches_epid(i, epid.as_deref().unwrap_or(""));
                let _ = sipae::instance::instance_matches_epid(i, i);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(3..) else { return };
    let version = data[0] as u32 % 6;
    let Ok(msg) = parse_datagram(bytes) else { return };
    // FNV-1a of the message: each new message tries another respelling.
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    let edit = ((data[1] as u64 ^ h) as usize, (data[2] as u64 ^ (h >> 8)) as u8);
    check_instances(&msg);

    let creds = ntlm_params(&msg);
    let param = |name: &str| creds.as_ref().and_then(|c| c.param(name)).unwrap_or("");
    // As the proxy builds it: the credentials' own targetname and version.
    let ctx = SignatureContext {
        protocol: "NTLM",
        rand: param("crand"),
        num: param("cnum"),
        realm: REALM,
        targetname: param("targetname"),
        version: param("version").parse().unwrap_or(version),
    };
    let response = creds.as_ref().and_then(|c| c.param("response"));
    check(&msg, &ctx, response, edit);
    // And at the version the input chose (the To URI and P-Asserted-Identity come and go).
    let ctx = SignatureContext { version, ..ctx };
    check(&msg, &ctx, response, (edit.0 / 7, edit.1.wrapping_add(5)));
});
