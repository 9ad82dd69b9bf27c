//! The server relays only what it created: ACKs and in-dialog requests for dialogs its
//! Record-Route cookie proves, stray responses whose branch MAC proves where they go.
//! Each attack below was an open relay / reflector before the cookies.

use std::net::SocketAddr;
use std::time::Duration;

use sip_message::{HeaderName, Message, Method};
use tokio::net::{TcpListener, UdpSocket};

use crate::support::*;

/// A UDP socket and a TCP listener standing for "some host on the internet".
pub(crate) struct Bystander {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Bystander {
    pub(crate) async fn new() -> Bystander {
        Bystander {
            udp: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }
    pub(crate) fn udp_addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap()
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap()
    }
    /// Nothing arrives, over UDP or as a TCP connection, for a while.
    pub(crate) async fn hears_nothing(&self) {
        let mut buf = [0u8; 4096];
        let heard = tokio::time::timeout(Duration::from_millis(1500), async {
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => format!("a datagram: {:?}", r.map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())),
                r = self.tcp.accept() => format!("a connection from {:?}", r.map(|(_, a)| a)),
            }
        })
        .await;
        assert!(
            heard.is_err(),
            "the server relayed to a bystander: {heard:?}"
        );
    }
}

fn attacker_ack(server: SocketAddr, target: &str) -> String {
    format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5099;branch=z9hG4bK-evil{}\r\n\
         Route: <sip:{server};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:mallory@example.com>;tag=m1\r\n\
         To: <sip:victim@example.com>;tag=v1\r\nCall-ID: evil-{}@x\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        rand_hex(),
        rand_hex()
    )
}

#[tokio::test]
async fn an_unauthenticated_ack_is_not_relayed_anywhere() {
    let s = TestServer::start(&["alice"]).await;
    let by = Bystander::new().await;
    let server = s.addr(Transport::Udp);
    let attacker = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for target in [
        format!("sip:x@{}", by.udp_addr()),
        format!("sip:x@{};transport=tcp", by.tcp_addr()),
    ] {
        attacker
            .send_to(attacker_ack(server, &target).as_bytes(), server)
            .await
            .unwrap();
        // Also with a Route that looks like ours, cookie and all, but forged.
        let forged = attacker_ack(server, &target).replace(";lr>", ";lr;sbt=0011223344556677>");
        attacker.send_to(forged.as_bytes(), server).await.unwrap();
    }
    by.hears_nothing().await;
    // UDP still answers.
    let mut c = s.client(Transport::Udp, "alice").await;
    assert_eq!(status(&c.register(None).await), 200);
}

#[tokio::test]
async fn a_stray_response_with_our_branch_prefix_is_not_relayed() {
    let s = TestServer::start(&["alice"]).await;
    let by = Bystander::new().await;
    let server = s.addr(Transport::Udp);
    let attacker = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    for (kind, next) in [("UDP", by.udp_addr()), ("TCP", by.tcp_addr())] {
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {server};branch=z9hG4bKsb0123456789abcdef.0.0011223344556677\r\n\
             Via: SIP/2.0/{kind} {next};branch=z9hG4bK-victim\r\nFrom: <sip:a@example.com>;tag=1\r\n\
             To: <sip:b@example.com>;tag=2\r\nCall-ID: stray-{}@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            rand_hex()
        );
        attacker.send_to(resp.as_bytes(), server).await.unwrap();
    }
    by.hears_nothing().await;
}

/// INVITE from a caller that never registered (SIPp style) to a registered callee: the
/// dialog's own requests still flow both ways through the cookies, each to the other
/// party's flow. The Request-URI never picks the address: a caller whose Contact names
/// some third host, or a request in the dialog aimed at one, reaches the other party
/// only, and the third host hears nothing.
#[tokio::test]
async fn dialogs_route_both_ways_to_their_parties_flows_only() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let by = Bystander::new().await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    assert_eq!(status(&bob.register(None).await), 200);
    let mut alice = s.client(Transport::Udp, "alice").await;
    let to = "sip:bob@example.com";
    let mut inv = alice.request("INVITE", to, to);
    // alice's Contact names the bystander, not herself.
    let alice_contact = format!("sip:alice@{};transport=udp", by.udp_addr());
    inv.headers
        .set(HeaderName::Contact, format!("<{alice_contact}>"));
    inv.headers.push(HeaderName::ContentType, "application/sdp");
    inv.body = bytes::Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip sip:x@127.0.0.1\r\n");
    alice.send(&inv).await;
    let ch = alice.final_response().await;
    assert_eq!(status(&ch), 407);
    let inv = alice.with_credentials(&inv, &ch, "pw-alice", "MD5", 1);
    alice.send(&inv).await;
    let got = bob.recv().await.expect("bob gets the INVITE");
    assert_eq!(got.method(), Some(&Method::Invite));
    let rr: Vec<String> = got
        .headers
        .get_all(&HeaderName::RecordRoute)
        .map(str::to_owned)
        .collect();
    assert!(rr.iter().all(|r| r.contains(";sbt=")), "{rr:?}");
    let mut ok = got.response(200, Some("bobtag"));
    // A UAS copies the Record-Route into its 2xx (RFC 3261 §12.1.1).
    for r in &rr {
        ok.headers.push(HeaderName::RecordRoute, r.clone());
    }
    let bob_contact = format!("sip:bob@127.0.0.1:{};transport=tcp", bob.local.port());
    ok.headers
        .push(HeaderName::Contact, format!("<{bob_contact}>"));
    bob.send(&ok).await;
    let ok_at_alice = alice.final_response().await;
    assert_eq!(status(&ok_at_alice), 200);
    // alice's route set: the Record-Route of the 2xx, reversed (one entry each way here).
    let mut ack = alice.request("ACK", &bob_contact, to);
    set_dialog(&mut ack, &inv, &ok_at_alice, true);
    alice.send(&ack).await;
    let acked = bob.recv().await.expect("the ACK reaches bob");
    assert_eq!(acked.method(), Some(&Method::Ack));

    // alice aims a request of the dialog at the bystander's TCP port: it reaches bob.
    let aimed = format!("sip:bob@{};transport=tcp", by.tcp_addr());
    let mut info = alice.request("INFO", &aimed, to);
    set_dialog(&mut info, &inv, &ok_at_alice, true);
    let (answer, at_bob) =
        tokio::join!(alice.send_authenticated(info), bob.answer_next_request(200));
    assert_eq!(status(&answer), 200, "{answer}");
    let at_bob = at_bob.expect("bob gets the INFO");
    assert_eq!(at_bob.method(), Some(&Method::Info));
    assert_eq!(
        at_bob.request_uri().unwrap().to_string(),
        aimed,
        "the Request-URI is untouched"
    );

    // bob hangs up, to alice's Contact: the BYE goes to alice's flow, not the bystander.
    let mut bye = bob.request("BYE", &alice_contact, "sip:alice@example.com");
    set_dialog(&mut bye, &inv, &got, false);
    let (answer, at_alice) =
        tokio::join!(bob.send_authenticated(bye), alice.answer_next_request(200));
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(
        at_alice.expect("the BYE reaches alice").method(),
        Some(&Method::Bye)
    );
    by.hears_nothing().await;

    // A stranger with the dialog's Route (cookie and all) but other tags: refused.
    let mut mallory = s.client(Transport::Udp, "bob").await;
    let mut stray = mallory.request("BYE", &alice_contact, "sip:alice@example.com");
    set_dialog(&mut stray, &inv, &got, false);
    stray
        .headers
        .set(HeaderName::From, "<sip:bob@example.com>;tag=other");
    stray
        .headers
        .set(HeaderName::To, "<sip:alice@example.com>;tag=nottheirs");
    let refused = mallory.send_authenticated(stray).await;
    assert_eq!(status(&refused), 403, "{refused}");
    by.hears_nothing().await;
}

/// Makes `m` a request in the dialog of `invite`: its Call-ID and tags, and the route set
/// from `with_rr` (reversed for the caller, as received for the callee).
fn set_dialog(m: &mut Message, invite: &Message, with_rr: &Message, caller: bool) {
    let h = |n: &HeaderName, msg: &Message| msg.headers.get(n).unwrap().to_owned();
    m.headers
        .set(HeaderName::CallId, h(&HeaderName::CallId, invite));
    let (from, to) = if caller {
        (h(&HeaderName::From, invite), h(&HeaderName::To, with_rr))
    } else {
        // The callee's From is the INVITE's To with its tag.
        (
            format!("{};tag=bobtag", h(&HeaderName::To, invite)),
            h(&HeaderName::From, invite),
        )
    };
    m.headers.set(HeaderName::From, from);
    m.headers.set(HeaderName::To, to);
    let mut routes: Vec<String> = with_rr
        .headers
        .get_all(&HeaderName::RecordRoute)
        .flat_map(|v| sip_message::NameAddr::parse_list(v).unwrap())
        .map(|n| n.to_string())
        .collect();
    if caller {
        routes.reverse();
    }
    for r in routes {
        m.headers.push(HeaderName::Route, r);
    }
}

/// Registering someone else's Contact URI used to re-point the contact index: in-dialog
/// requests to alice's device then reached mallory. Each user now keeps their own.
#[tokio::test]
async fn a_second_user_registering_your_contact_does_not_take_your_requests() {
    let s = TestServer::start(&["alice", "bob", "mallory"]).await;
    let shared = "<sip:device@127.0.0.1:5999;transport=tcp>";
    let mut alice = s.client(Transport::Tcp, "alice").await;
    let mut mallory = s.client(Transport::Tcp, "mallory").await;
    for c in [&mut alice, &mut mallory] {
        let mut r = c.register_request(None);
        r.headers.set(HeaderName::Contact, shared);
        assert_eq!(status(&c.send_authenticated(r).await), 200);
    }
    // bob, in a dialog with alice, sends to her device's contact.
    let mut bob = s.client(Transport::Udp, "bob").await;
    let mut m = bob.request(
        "MESSAGE",
        "sip:device@127.0.0.1:5999;transport=tcp",
        "sip:alice@example.com",
    );
    let to = format!("{};tag=alicetag", m.headers.get(&HeaderName::To).unwrap());
    m.headers.set(HeaderName::To, to);
    m.headers.remove(&HeaderName::Contact);
    m.headers.push(HeaderName::ContentType, "text/plain");
    m.body = bytes::Bytes::from_static(b"for alice only");
    bob.send(&m).await;
    let ch = bob.final_response().await;
    let m = bob.with_credentials(&m, &ch, "pw-bob", "MD5", 1);
    bob.send(&m).await;
    let got = alice.recv().await.expect("alice's device gets it");
    assert_eq!(got.body.as_ref(), b"for alice only");
    alice.send(&got.response(200, Some("alicetag"))).await;
    assert_eq!(status(&bob.final_response().await), 200);
    assert!(
        mallory
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "mallory must not get alice's request"
    );
}
