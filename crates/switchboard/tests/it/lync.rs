//! The Lync dialect's NTLM sign-in (MS-SIPAE §3.2.5.1) over TCP, by a Rust client that
//! signs in as pidgin-sipe does: 401 offering NTLM beside Digest, 401 with the CHALLENGE,
//! the AUTHENTICATE and a signed REGISTER, a 200 signed by the server; a wrong password
//! and a bad signature refused; then signed requests on the association (the stored
//! contact list piggy-backed on the 200, a category publish, a stale one) each answered
//! with a valid server signature, and an unsigned request refused.

use base64::Engine as _;
use sip_message::{AuthHeader, HeaderName, Message};
use sipae::{signature_input, SignatureContext};

use crate::support::*;

const REALM: &str = "SIP Communications Service";

pub(crate) fn lync_register(c: &mut Client) -> Message {
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
pub(crate) async fn sign_in(
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

/// A Lync client signed in over TCP, signing its requests and responses.
pub(crate) async fn lync_client(s: &TestServer, user: &str) -> (Client, Association) {
    let mut c = s.client(Transport::Tcp, user).await;
    let (ok, sa) = sign_in(&mut c, &format!("pw-{user}")).await;
    assert_eq!(status(&ok), 200, "{ok}");
    let sa = Association::new(sa);
    sa.sign_responses_of(&mut c);
    (c, sa)
}

/// Signs `m` as a Lync client does: the next `cnum`, `crand`, the NTLM MAC of the
/// signature input, in Authorization.
fn sign_with(
    session: &ntlm::Session,
    opaque: &str,
    targetname: &str,
    counter: &std::sync::atomic::AtomicU32,
    m: &mut Message,
) {
    let cnum = (counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1).to_string();
    let sig = session.client_signature(
        100,
        signature_input(m, &ctx("5eed0001", &cnum, targetname)).as_bytes(),
    );
    m.headers.push(
        HeaderName::Authorization,
        format!(
            "NTLM qop=\"auth\", opaque=\"{opaque}\", realm=\"{REALM}\", targetname=\"{targetname}\", crand=\"5eed0001\", cnum=\"{cnum}\", response=\"{}\"",
            hex::encode_upper(sig)
        ),
    );
}

/// A client's association: signs its requests (and, through the client's response
/// signer, its responses: one sequence counter for both) and checks the server's signatures.
pub(crate) struct Association {
    pub(crate) session: ntlm::Session,
    pub(crate) opaque: String,
    pub(crate) targetname: String,
    cnum: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Association {
    /// The association a sign-in returned; its first signed message (the REGISTER) used
    /// cnum 1.
    pub(crate) fn new(sa: Option<(ntlm::Session, String, String)>) -> Association {
        let (session, opaque, targetname) = sa.expect("signed in");
        Association {
            session,
            opaque,
            targetname,
            cnum: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1)),
        }
    }

    pub(crate) fn sign(&mut self, m: &mut Message) {
        sign_with(&self.session, &self.opaque, &self.targetname, &self.cnum, m);
    }

    /// Makes `c` sign its responses on this association.
    pub(crate) fn sign_responses_of(&self, c: &mut Client) {
        let (session, opaque, targetname, cnum) = (
            self.session.clone(),
            self.opaque.clone(),
            self.targetname.clone(),
            self.cnum.clone(),
        );
        c.response_signer = Some(Box::new(move |m: &mut Message| {
            sign_with(&session, &opaque, &targetname, &cnum, m)
        }));
    }

    /// Asserts the server signed `m` on this association (MS-SIPAE §3.2.5.2).
    pub(crate) fn check(&self, m: &Message) {
        let info = AuthHeader::parse(
            m.headers
                .get(&HeaderName::from_wire("Authentication-Info"))
                .unwrap_or_else(|| panic!("unsigned: {m}")),
        )
        .unwrap();
        let expected = self.session.sign(
            100,
            signature_input(
                m,
                &ctx(
                    info.param("srand").unwrap(),
                    info.param("snum").unwrap(),
                    &self.targetname,
                ),
            )
            .as_bytes(),
        );
        assert_eq!(
            info.param("rspauth").unwrap(),
            hex::encode_upper(expected),
            "{m}"
        );
    }
}

#[tokio::test]
async fn signed_requests_roaming_contacts_and_category_publish() {
    let s = TestServer::start(&["alice", "bob"]).await;
    s.data()
        .await
        .contacts
        .add_contact(
            "alice@example.com",
            "bob@example.com",
            Some("Team"),
            None,
            switchboard_store::Relationship::Colleagues,
            0,
        )
        .await
        .unwrap();
    let mut c = s.client(Transport::Tcp, "alice").await;
    let (ok, sa) = sign_in(&mut c, "pw-alice").await;
    assert_eq!(status(&ok), 200);
    let lync_extras = ok
        .headers
        .values(&HeaderName::Supported)
        .any(|v| v == "msrtc-event-categories");
    assert!(lync_extras, "OCS2007+ mode needs this option: {ok}");
    assert!(ok
        .headers
        .get(&HeaderName::AllowEvents)
        .unwrap()
        .contains("vnd-microsoft-roaming-contacts"));
    let mut sa = Association::new(sa);
    sa.sign_responses_of(&mut c);
    let me = c.aor();

    // Unsigned on the association: refused (and the association is dropped).
    let mut unsigned = c.request("SUBSCRIBE", &me, &me);
    unsigned
        .headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    // (Sent after the signed requests below, on a second connection's association.)

    // The stored contact list, piggy-backed on the signed 200.
    let mut m = c.request("SUBSCRIBE", &me, &me);
    m.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    m.headers
        .push(HeaderName::Supported, "ms-piggyback-first-notify");
    m.headers.push(HeaderName::ProxyRequire, "ms-benotify");
    sa.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 200, "{r}");
    sa.check(&r);
    assert!(r.headers.has(&HeaderName::from_wire("ms-piggyback-cseq")));
    let list = msrtc::tree::parse(&r.body).unwrap();
    assert_eq!(list.name, "contactList");
    let contact = list.child("contact").unwrap();
    assert_eq!(contact.attr("uri"), Some("bob@example.com"));
    let team = list
        .children_named("group")
        .find(|g| g.attr("name") == Some("Team"))
        .unwrap();
    assert_eq!(contact.attr("groups"), team.attr("id"));

    // A category publish: the user state busy becomes alice's presence.
    let publish = format!(
        "<publish xmlns=\"http://schemas.microsoft.com/2006/09/sip/rich-presence\"><publications uri=\"{me}\">\
<publication categoryName=\"state\" instance=\"77\" container=\"2\" version=\"0\" expireType=\"endpoint\"><state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"machineState\"><availability>3500</availability></state></publication>\
<publication categoryName=\"state\" instance=\"536870912\" container=\"2\" version=\"0\" expireType=\"static\"><state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\" manual=\"true\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"userState\"><availability>6500</availability></state></publication>\
</publications></publish>"
    );
    let mut m = c.request("SERVICE", &me, &me);
    m.headers.push(
        HeaderName::ContentType,
        "application/msrtc-category-publish+xml",
    );
    m.body = publish.clone().into_bytes().into();
    sa.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 200, "{r}");
    sa.check(&r);
    let roaming = msrtc::tree::parse(&r.body).unwrap();
    let aggregate = roaming
        .path("categories")
        .unwrap()
        .children_named("category")
        .find(|c| c.inner.contains("aggregateState"))
        .unwrap();
    assert_eq!(aggregate.text_at("state/availability"), Some("6500"));
    let view = s
        .server
        .presence
        .view("sip:alice@example.com", None)
        .await
        .unwrap();
    assert_eq!(view.availability.as_str(), "busy");

    // The same publish again carries stale versions: 409 WrongDelta naming both.
    let mut m = c.request("SERVICE", &me, &me);
    m.headers.push(
        HeaderName::ContentType,
        "application/msrtc-category-publish+xml",
    );
    m.body = publish.into_bytes().into();
    sa.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 409, "{r}");
    sa.check(&r);
    let fault = msrtc::tree::parse(&r.body).unwrap();
    assert_eq!(
        fault.text_at("Faultcode"),
        Some("Client.BadCall.WrongDelta")
    );
    assert_eq!(fault.path("details").unwrap().children.len(), 2);

    // Unsigned: 401, and the association is gone.
    c.send(&unsigned).await;
    assert_eq!(status(&c.final_response().await), 401);

    // The client's connection closes: its endpoint is gone, and so is the state it set
    // by hand (as in Lync, signing out of the last endpoint shows offline).
    drop(c);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = s
            .server
            .presence
            .view("sip:alice@example.com", None)
            .await
            .unwrap()
            .availability
            .as_str()
            .to_owned();
        if seen == "offline" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "offline");
}

/// MS-SIPAE §3.3.5.2: the `+sip.instance` a client registers must be the one its `epid`
/// maps to (pidgin-sipe's captured pair: `b34afb6ebb23` → `085e0bd8-…`).
#[tokio::test]
async fn instance_must_be_derived_from_epid() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Tcp, "alice").await;
    let from = format!("<{}>;tag={};epid=b34afb6ebb23", c.aor(), rand_hex());
    let with_instance = |c: &mut Client, uuid: &str| {
        let mut m = c.register_request(None);
        m.headers.set(HeaderName::From, from.clone());
        m.headers.set(
            HeaderName::Contact,
            format!("{};+sip.instance=\"<urn:uuid:{uuid}>\"", c.contact()),
        );
        m
    };
    let wrong = with_instance(&mut c, "085e0bd8-031c-5a0d-8d9a-f149aae6954b");
    let r = c.send_authenticated(wrong).await;
    assert_eq!(status(&r), 400, "{r}");
    assert!(r
        .headers
        .get(&HeaderName::Warning)
        .unwrap()
        .contains("epid"));
    let right = with_instance(&mut c, "085e0bd8-031c-5a0d-8d9a-f149aae6954a");
    assert_eq!(status(&c.send_authenticated(right).await), 200);
}

/// MS-SIPAE §3.3.5.2: a signed request sent again (a new Via, the same signature and
/// `cnum`) is a replay: refused, and the association dropped.
#[tokio::test]
async fn replayed_signed_request_is_refused() {
    let s = TestServer::start(&["alice"]).await;
    let (mut c, mut sa) = lync_client(&s, "alice").await;
    let me = c.aor();
    let mut m = c.request("SUBSCRIBE", &me, &me);
    m.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    sa.sign(&mut m);
    c.send(&m).await;
    assert_eq!(status(&c.final_response().await), 200);
    let mut replay = m.clone();
    replay.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/TCP 127.0.0.1:{};branch=z9hG4bK{};rport",
            c.local.port(),
            rand_hex()
        ),
    );
    c.send(&replay).await;
    assert_eq!(status(&c.final_response().await), 401);
}

/// MS-PRES §3.7.4.1: a Lync client blocking someone who is not on its contact list
/// (setContainerMembers, container 32000) gives them that relationship (they see the
/// user offline) without adding them to the list; taking them out of the container
/// forgets them again.
#[tokio::test]
async fn blocking_a_stranger_does_not_list_them() {
    let s = TestServer::start(&["alice", "carol"]).await;
    let (mut c, mut sa) = lync_client(&s, "alice").await;
    let me = c.aor();
    let set = |c: &mut Client, sa: &mut Association, action: &str| {
        let mut m = c.request("SERVICE", &me, &me);
        m.headers.push(
            HeaderName::ContentType,
            "application/msrtc-setcontainermembers+xml",
        );
        m.body = format!(
            "<setContainerMembers xmlns=\"http://schemas.microsoft.com/2006/09/sip/container-management\"><container id=\"32000\" version=\"0\"><member action=\"{action}\" type=\"user\" value=\"carol@example.com\"/></container></setContainerMembers>"
        )
        .into_bytes()
        .into();
        sa.sign(&mut m);
        m
    };
    let block = set(&mut c, &mut sa, "add");
    c.send(&block).await;
    assert_eq!(status(&c.final_response().await), 200);
    let store = s.data().await.contacts;
    let list = store.contact_list("alice@example.com").await.unwrap();
    assert_eq!(list.contacts.len(), 1);
    assert_eq!(
        list.contacts[0].relationship,
        switchboard_store::Relationship::Blocked
    );
    assert!(!list.contacts[0].listed, "a relationship, not a contact");
    let seen = s
        .server
        .presence
        .view("sip:alice@example.com", Some("sip:carol@example.com"))
        .await
        .unwrap();
    assert_eq!(
        seen.availability.as_str(),
        "offline",
        "blocked sees offline"
    );

    // The Lync contact list does not show her.
    let mut m = c.request("SUBSCRIBE", &me, &me);
    m.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    m.headers
        .push(HeaderName::Supported, "ms-piggyback-first-notify");
    sa.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 200);
    let doc = msrtc::tree::parse(&r.body).unwrap();
    assert_eq!(doc.children_named("contact").count(), 0, "{r}");

    let unblock = set(&mut c, &mut sa, "remove");
    c.send(&unblock).await;
    assert_eq!(status(&c.final_response().await), 200);
    assert!(store
        .contact_list("alice@example.com")
        .await
        .unwrap()
        .contacts
        .is_empty());
}

/// MS-SIPAE §3.2.2: a client re-authenticates before its association expires by running
/// the handshake again on the same connection; from then on the new association signs
/// and verifies, and the old one no longer does.
#[tokio::test]
async fn re_authentication_replaces_the_association() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Tcp, "alice").await;
    let (ok, first) = sign_in(&mut c, "pw-alice").await;
    assert_eq!(status(&ok), 200);
    let (again, second) = sign_in(&mut c, "pw-alice").await;
    assert_eq!(status(&again), 200, "{again}");
    let (mut old, mut new) = (Association::new(first), Association::new(second));
    new.sign_responses_of(&mut c);
    assert_ne!(old.opaque, new.opaque);
    let me = c.aor();
    let mut m = c.request("SUBSCRIBE", &me, &me);
    m.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    new.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    assert_eq!(status(&r), 200, "{r}");
    new.check(&r);
    // Still registered once: the same binding, refreshed.
    assert_eq!(s.server.core.location().counts(), (1, 1));
    let mut m = c.request("SUBSCRIBE", &me, &me);
    m.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    old.sign(&mut m);
    c.send(&m).await;
    assert_eq!(
        status(&c.final_response().await),
        401,
        "the old association is gone"
    );
}
