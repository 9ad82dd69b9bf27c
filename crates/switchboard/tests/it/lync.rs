//! The Lync dialect's NTLM sign-in (MS-SIPAE §3.2.5.1) over TCP, by a Rust client that
//! signs in as pidgin-sipe does: 401 offering NTLM beside Digest, 401 with the CHALLENGE,
//! the AUTHENTICATE and a signed REGISTER, a 200 signed by the server; a wrong password
//! and a bad signature refused. (Signing of the other messages is a later step.)

use base64::Engine as _;
use sip_message::{AuthHeader, HeaderName, Message};
use sipae::{signature_input, SignatureContext};

use crate::support::*;

const REALM: &str = "SIP Communications Service";

fn lync_register(c: &mut Client) -> Message {
    let mut m = c.register_request(None);
    m.headers.push(
        HeaderName::Supported,
        "gruu-10, adhoclist, msrtc-event-categories",
    );
    m.headers
        .push(HeaderName::from_wire("ms-keep-alive"), "UAC;hop-hop=yes");
    m
}

fn www_ntlm(resp: &Message) -> AuthHeader {
    resp.headers
        .get_all(&HeaderName::WwwAuthenticate)
        .filter_map(|v| AuthHeader::parse(v).ok())
        .find(|a| a.scheme == "NTLM")
        .unwrap_or_else(|| panic!("an NTLM challenge in {resp}"))
}

fn ctx<'a>(rand: &'a str, num: &'a str, targetname: &'a str) -> SignatureContext<'a> {
    SignatureContext {
        protocol: "NTLM",
        rand,
        num,
        realm: REALM,
        targetname,
        version: 4,
    }
}

/// Runs the handshake with `password`; returns the last answer and the client's session.
async fn sign_in(
    c: &mut Client,
    password: &str,
) -> (Message, Option<(ntlm::Session, String, String)>) {
    let first = lync_register(c);
    c.send(&first).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 401);
    assert!(
        r.headers
            .get_all(&HeaderName::WwwAuthenticate)
            .any(|v| v.starts_with("Digest")),
        "Digest still offered"
    );
    let offer = www_ntlm(&r);
    assert_eq!(offer.param("realm"), Some(REALM));
    assert!(
        r.headers.has(&HeaderName::Date),
        "MS-SIPAE: a Date on the 401"
    );
    let targetname = offer.param("targetname").unwrap().to_owned();

    let mut m = lync_register(c);
    c.cseq += 1;
    m.headers.push(
        HeaderName::Authorization,
        format!("NTLM qop=\"auth\", realm=\"{REALM}\", targetname=\"{targetname}\", gssapi-data=\"\", version=4"),
    );
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 401);
    let ch = www_ntlm(&r);
    let opaque = ch.param("opaque").unwrap().to_owned();
    let b64 = base64::engine::general_purpose::STANDARD;
    let challenge =
        ntlm::client::Challenge::parse(&b64.decode(ch.param("gssapi-data").unwrap()).unwrap())
            .unwrap();
    let (_, auth, session) = ntlm::client::authenticate(
        &challenge,
        &ntlm::client::Credentials {
            user: &format!("{}@example.com", c.user),
            domain: "",
            workstation: "TEST",
            nt_hash: ntlm::nt_hash(password),
            client_challenge: rand::random(),
            timestamp: 0,
            random_session_key: rand::random(),
        },
    );
    let mut m = lync_register(c);
    c.cseq += 1;
    m.headers
        .set(HeaderName::CSeq, format!("{} REGISTER", c.cseq));
    let sig = session.client_signature(
        100,
        signature_input(&m, &ctx("0a1b2c3d", "1", &targetname)).as_bytes(),
    );
    m.headers.push(
        HeaderName::Authorization,
        format!(
            "NTLM qop=\"auth\", opaque=\"{opaque}\", realm=\"{REALM}\", targetname=\"{targetname}\", gssapi-data=\"{}\", version=4, crand=\"0a1b2c3d\", cnum=\"1\", response=\"{}\"",
            b64.encode(auth),
            hex::encode_upper(sig)
        ),
    );
    c.send(&m).await;
    let r = c.final_response().await;
    let ok = status(&r) == 200;
    (r, ok.then_some((session, opaque, targetname)))
}

#[tokio::test]
async fn ntlm_sign_in_signed_answers_and_refusals() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Tcp, "alice").await;
    let (ok, sa) = sign_in(&mut c, "pw-alice").await;
    assert_eq!(status(&ok), 200, "{ok}");
    let (session, opaque, targetname) = sa.unwrap();
    assert!(ok.headers.has(&HeaderName::Expires), "sipe needs Expires");
    // The server's signature on the 200, checked as the client checks it.
    let info = AuthHeader::parse(
        ok.headers
            .get(&HeaderName::from_wire("Authentication-Info"))
            .unwrap(),
    )
    .unwrap();
    let (srand, snum) = (info.param("srand").unwrap(), info.param("snum").unwrap());
    let expected = session.sign(
        100,
        signature_input(&ok, &ctx(srand, snum, &targetname)).as_bytes(),
    );
    assert_eq!(info.param("rspauth").unwrap(), hex::encode_upper(expected));
    assert_eq!(s.server.core.location().counts(), (1, 1));

    // A refresh with a signature that does not fit: 401, and the association is gone.
    let mut m = lync_register(&mut c);
    c.cseq += 1;
    m.headers.push(
        HeaderName::Authorization,
        format!("NTLM qop=\"auth\", opaque=\"{opaque}\", realm=\"{REALM}\", targetname=\"{targetname}\", version=4, crand=\"00000001\", cnum=\"2\", response=\"01000000000000000000000064000000\""),
    );
    c.send(&m).await;
    assert_eq!(status(&c.final_response().await), 401);

    // A wrong password: 403 with a Warning the client shows.
    let mut c2 = s.client(Transport::Tcp, "alice").await;
    let (refused, sa) = sign_in(&mut c2, "pw-wrong").await;
    assert!(sa.is_none());
    assert_eq!(status(&refused), 403);
    assert!(refused
        .headers
        .get(&HeaderName::Warning)
        .unwrap()
        .contains("password"));
}

#[tokio::test]
async fn plain_sip_clients_are_not_offered_ntlm() {
    let s = TestServer::start(&["bob"]).await;
    let mut c = s.client(Transport::Udp, "bob").await;
    let m = c.register_request(None);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 401);
    assert!(r
        .headers
        .get_all(&HeaderName::WwwAuthenticate)
        .all(|v| v.starts_with("Digest")));
}
