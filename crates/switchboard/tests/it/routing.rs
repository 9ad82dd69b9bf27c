//! Routing: pager MESSAGE to every device, 404/480, authentication of senders, no relay,
//! connection reuse, flows that close, Max-Forwards, OPTIONS, INVITE with CANCEL.

use std::time::Duration;

use sip_message::{HeaderName, Message};

use crate::support::*;

#[tokio::test]
async fn message_reaches_every_device_of_the_recipient() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut b1 = s.client(Transport::Udp, "bob").await;
    let mut b2 = s.client(Transport::Tcp, "bob").await;
    let mut b3 = s.client(Transport::Tls, "bob").await;
    for b in [&mut b1, &mut b2, &mut b3] {
        assert_eq!(status(&b.register(None).await), 200);
    }
    let mut alice = s.client(Transport::Tcp, "alice").await;
    assert_eq!(status(&alice.register(None).await), 200);
    let m = alice.message_to("bob", "hello on every device");
    alice.send(&m).await;
    let ch = alice.final_response().await;
    assert_eq!(status(&ch), 407, "a MESSAGE needs credentials");
    let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
    alice.send(&again).await;
    for b in [&mut b1, &mut b2, &mut b3] {
        let got = b
            .answer_next_request(200)
            .await
            .expect("each device gets the MESSAGE");
        assert_eq!(&got.body[..], b"hello on every device");
        assert_eq!(
            got.headers.get(&HeaderName::ContentType),
            Some("text/plain")
        );
        assert!(got
            .from_header()
            .unwrap()
            .uri
            .to_string()
            .contains("alice@example.com"));
        assert!(
            !got.headers.has(&HeaderName::ProxyAuthorization),
            "credentials are not passed on"
        );
        let vias = got.vias().unwrap();
        assert_eq!(vias.len(), 2, "server Via on top of alice's");
    }
    let final_resp = alice.final_response().await;
    assert_eq!(status(&final_resp), 200);
    assert_eq!(final_resp.vias().unwrap().len(), 1, "server's Via removed");
}

#[tokio::test]
async fn unknown_user_404_and_offline_user_480() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    let m = alice.message_to("nobody", "hi");
    assert_eq!(status(&alice.send_authenticated(m).await), 404);
    let m = alice.options_to("bob");
    assert_eq!(status(&alice.send_authenticated(m).await), 480);
    // A MESSAGE is kept for later instead (the IM service's offline store).
    let m = alice.message_to("bob", "hi");
    assert_eq!(status(&alice.send_authenticated(m).await), 202);
}

#[tokio::test]
async fn no_relay_to_foreign_domains() {
    let s = TestServer::start(&["alice"]).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    let mut m = alice.message_to("bob", "relay me");
    let foreign = "sip:bob@foreign.example";
    m.start = sip_message::StartLine::Request {
        method: sip_message::Method::Message,
        uri: sip_message::Uri::parse(foreign).unwrap(),
    };
    m.headers.set(HeaderName::To, format!("<{foreign}>"));
    // Refused before any authentication is asked for: nothing is relayed off-box.
    alice.send(&m).await;
    assert_eq!(status(&alice.final_response().await), 403);
    // And a sender of a foreign domain cannot use us either.
    let mut stranger = s.client(Transport::Udp, "alice").await;
    let mut m = stranger.message_to("alice", "hi");
    m.headers
        .set(HeaderName::From, "<sip:eve@foreign.example>;tag=1");
    stranger.send(&m).await;
    assert_eq!(status(&stranger.final_response().await), 403);
}

#[tokio::test]
async fn sender_must_be_who_they_authenticate_as() {
    let s = TestServer::start(&["alice", "bob", "carol"]).await;
    let mut carol = s.client(Transport::Udp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);
    let mut alice = s.client(Transport::Udp, "alice").await;
    let mut m = alice.message_to("carol", "I am bob, honest");
    m.headers
        .set(HeaderName::From, "<sip:bob@example.com>;tag=forged");
    let resp = alice.send_authenticated(m).await;
    // alice's password answers a challenge for bob's From: refused.
    assert_eq!(status(&resp), 403);
}

#[tokio::test]
async fn requests_go_back_over_the_registration_connection() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    // A Contact port where nothing listens: only connection reuse can reach bob.
    bob.contact_port = 9;
    assert_eq!(status(&bob.register(None).await), 200);
    let mut alice = s.client(Transport::Udp, "alice").await;
    let m = alice.message_to("bob", "via your connection");
    alice.send(&m).await;
    let ch = alice.final_response().await;
    let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
    alice.send(&again).await;
    let got = bob
        .answer_next_request(200)
        .await
        .expect("delivered over the registered TCP connection");
    assert_eq!(&got.body[..], b"via your connection");
    assert_eq!(status(&alice.final_response().await), 200);
}

#[tokio::test]
async fn a_closed_flow_removes_its_binding() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    assert_eq!(status(&bob.register(None).await), 200);
    drop(bob);
    for _ in 0..50 {
        if s.server.core.location().counts().1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.server.core.location().counts().1, 0);
    let mut alice = s.client(Transport::Udp, "alice").await;
    let m = alice.options_to("bob");
    assert_eq!(status(&alice.send_authenticated(m).await), 480);
}

#[tokio::test]
async fn unanswered_device_times_out_and_the_best_response_wins() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut b1 = s.client(Transport::Tcp, "bob").await;
    let mut b2 = s.client(Transport::Tcp, "bob").await;
    b1.register(None).await;
    b2.register(None).await;
    let mut alice = s.client(Transport::Tcp, "alice").await;
    let m = alice.message_to("bob", "who answers?");
    alice.send(&m).await;
    let ch = alice.final_response().await;
    let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
    alice.send(&again).await;
    b1.answer_next_request(486).await.unwrap();
    b2.answer_next_request(603).await.unwrap();
    // §16.7: a 6xx wins over a 4xx.
    assert_eq!(status(&alice.final_response().await), 603);
}

#[tokio::test]
async fn max_forwards_zero_is_483() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut bob = s.client(Transport::Udp, "bob").await;
    bob.register(None).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    let mut m = alice.message_to("bob", "hops");
    m.headers.set(HeaderName::MaxForwards, "0");
    alice.send(&m).await;
    assert_eq!(status(&alice.final_response().await), 483);
}

#[tokio::test]
async fn options_to_the_server() {
    let s = TestServer::start(&["alice"]).await;
    for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        let mut c = s.client(t, "alice").await;
        let addr = s.addr(t);
        let uri = format!("sip:{addr}");
        let m = c.request("OPTIONS", &uri, &uri);
        c.send(&m).await;
        let resp = c.final_response().await;
        assert_eq!(status(&resp), 200);
        assert!(resp
            .headers
            .get(&HeaderName::Allow)
            .unwrap()
            .contains("MESSAGE"));
    }
}

#[tokio::test]
async fn users_added_and_changed_by_another_process_are_seen_at_once() {
    let s = TestServer::start(&["alice"]).await;
    // The CLI opens its own connection to the same database, as here.
    let cli = s.data().await.directory;
    let dave = switchboard_store::Address::parse("sip:dave@example.com").unwrap();
    cli.add(&dave, "pw-dave", Some("Dave")).await.unwrap();
    let mut c = s.client(Transport::Udp, "dave").await;
    assert_eq!(status(&c.register(None).await), 200);
    cli.set_password(&dave, "changed").await.unwrap();
    assert_eq!(
        status(&c.register(None).await),
        403,
        "old password no longer works"
    );
    let r = c.register_request(None);
    assert_eq!(
        status(&c.send_authenticated_with(r, Some("changed")).await),
        200
    );
    // A new domain is served as soon as it has a user.
    let erin = switchboard_store::Address::parse("erin@second.example").unwrap();
    cli.add(&erin, "pw-erin", None).await.unwrap();
    assert!(s.server.core.serves_domain("second.example").await.unwrap());
    cli.remove(&dave).await.unwrap();
    assert_eq!(status(&c.register(None).await), 403);
}

fn invite(c: &mut Client, to_user: &str) -> Message {
    let to = format!("sip:{to_user}@example.com");
    let mut m = c.request("INVITE", &to, &to);
    m.headers.push(HeaderName::ContentType, "application/sdp");
    m.body = bytes::Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip sip:x@127.0.0.1\r\n");
    m
}

#[tokio::test]
async fn invite_is_record_routed_and_can_be_cancelled() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    bob.register(None).await;
    let mut alice = s.client(Transport::Tcp, "alice").await;
    let inv = invite(&mut alice, "bob");
    alice.send(&inv).await;
    let ch = alice.final_response().await;
    assert_eq!(status(&ch), 407);
    let inv = alice.with_credentials(&inv, &ch, "pw-alice", "MD5", 1);
    alice.send(&inv).await;
    let got = bob.recv().await.unwrap();
    assert_eq!(got.method(), Some(&sip_message::Method::Invite));
    assert!(
        got.headers.has(&HeaderName::RecordRoute),
        "the server stays in the dialog"
    );
    let ringing = got.response(180, Some("bobtag"));
    bob.send(&ringing).await;
    // alice sees 100 then 180
    let mut saw_180 = false;
    while let Some(m) = alice.recv().await {
        if m.status() == Some(180) {
            saw_180 = true;
            break;
        }
    }
    assert!(saw_180);
    // CANCEL (same branch and CSeq number as the INVITE, §9.1)
    let mut cancel = sip_transaction::cancel_for(&inv);
    cancel.headers.remove(&HeaderName::ProxyAuthorization);
    alice.send(&cancel).await;
    let c200 = alice.recv().await.unwrap();
    assert_eq!(status(&c200), 200);
    assert_eq!(c200.cseq().unwrap().method, sip_message::Method::Cancel);
    let bob_cancel = bob.recv().await.unwrap();
    assert_eq!(bob_cancel.method(), Some(&sip_message::Method::Cancel));
    bob.send(&bob_cancel.response(200, Some("bobtag"))).await;
    bob.send(&got.response(487, Some("bobtag"))).await;
    // bob's transaction layer role: the ACK for 487 comes from the server
    let ack = bob.recv().await.unwrap();
    assert_eq!(ack.method(), Some(&sip_message::Method::Ack));
    let fin = alice.final_response().await;
    assert_eq!(status(&fin), 487);
}

#[tokio::test]
async fn subscribe_and_publish_are_not_forked_to_devices() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut bob = s.client(Transport::Udp, "bob").await;
    bob.register(None).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    // The presence service answers (a subscription; no publishing for someone else),
    // and an event package nobody serves is 489: never the user's devices.
    for (method, event, want) in [
        ("SUBSCRIBE", "presence", 200),
        ("PUBLISH", "presence", 403),
        ("SUBSCRIBE", "dialog", 489),
        ("PUBLISH", "dialog", 489),
    ] {
        let to = "sip:bob@example.com";
        let mut m = alice.request(method, to, to);
        m.headers.push(HeaderName::Event, event);
        if method == "PUBLISH" {
            m.headers
                .push(HeaderName::ContentType, "application/pidf+xml");
            m.body = bytes::Bytes::from_static(
                b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:bob@example.com'/>",
            );
        }
        assert_eq!(
            status(&alice.send_authenticated(m).await),
            want,
            "{method} {event}"
        );
    }
    assert!(
        bob.recv_within(Duration::from_millis(200)).await.is_none(),
        "nothing reached bob's device"
    );
}
