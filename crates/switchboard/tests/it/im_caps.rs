//! Per-user caps of the IM service over sockets: group chats a user organises, session-mode
//! sessions a user opens, and messages one sender may leave in someone's mailbox. Each is
//! refused past its cap with a Warning naming the limit, while other users are unaffected.

use sip_message::{HeaderName, Message};

use crate::support::*;

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n";

async fn registered(s: &TestServer, t: Transport, user: &str) -> Client {
    let mut c = s.client(t, user).await;
    assert_eq!(status(&c.register(None).await), 200);
    c
}

fn warning(r: &Message) -> String {
    r.headers
        .get(&HeaderName::Warning)
        .unwrap_or_else(|| panic!("a Warning in {r}"))
        .to_owned()
}

/// A pager MESSAGE from `c` to `to_user`; the final response (after the challenge).
async fn message(c: &mut Client, to_user: &str, text: &str) -> Message {
    let m = c.message_to(to_user, text);
    c.send_authenticated(m).await
}

/// A session-mode IM session as its caller holds it.
struct Session {
    call_id: String,
    from: String,
    to: String,
    route: String,
    target: String,
}

/// Sends a new INVITE with an `m=message` offer to `to_user` (answering the challenge);
/// the callee's part is left to the caller of this function.
async fn send_invite(c: &mut Client, to_user: &str) -> Message {
    let to = format!("sip:{to_user}@example.com");
    c.call_id = format!("{}@test", rand_hex());
    let mut invite = c.request("INVITE", &to, &to);
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(SDP.as_bytes());
    c.send(&invite).await;
    let ch = c.final_response().await;
    assert_eq!(status(&ch), 407, "{ch}");
    let pw = format!("pw-{}", c.user);
    let invite = c.with_credentials(&invite, &ch, &pw, "MD5", 1);
    c.send(&invite).await;
    invite
}

/// The next request `c` receives in dialog `call_id`, unanswered. Others that arrive
/// meanwhile (group chat notices) are accepted and set aside.
async fn request_in(c: &mut Client, call_id: &str) -> Message {
    loop {
        let m = c.recv().await.expect("a request arrives");
        if !m.is_request() {
            continue;
        }
        if m.call_id() == Some(call_id) {
            return m;
        }
        if m.method() == Some(&sip_message::Method::Ack) {
            // The ACK the server sends for a refusal: no answer, nothing to keep.
            continue;
        }
        c.send(&m.response(200, Some("aside"))).await;
        c.inbox.push_back(m);
    }
}

/// `caller` INVITEs `callee`, who answers `answer`; returns the caller's final response,
/// and the session when it was accepted (ACKed).
async fn invite(
    caller: &mut Client,
    callee: &mut Client,
    answer: u16,
) -> (Message, Option<Session>) {
    let sent = send_invite(caller, &callee.user.clone()).await;
    let got = request_in(callee, sent.call_id().unwrap()).await;
    assert_eq!(got.method(), Some(&sip_message::Method::Invite));
    let rr = got
        .headers
        .get(&HeaderName::RecordRoute)
        .expect("record-routed")
        .to_owned();
    let mut resp = got.response(answer, Some(&rand_hex()));
    if answer == 200 {
        resp.headers.push(HeaderName::RecordRoute, rr.clone());
        resp.headers.push(HeaderName::Contact, callee.contact());
    }
    callee.send(&resp).await;
    let r = caller.final_response().await;
    if status(&r) != 200 {
        return (r, None);
    }
    let s = Session {
        call_id: sent.call_id().unwrap().to_owned(),
        from: sent.headers.get(&HeaderName::From).unwrap().to_owned(),
        to: r.headers.get(&HeaderName::To).unwrap().to_owned(),
        // The caller's route set is the 2xx's Record-Route (the server sealed the
        // callee's target into it).
        route: r
            .headers
            .get(&HeaderName::RecordRoute)
            .unwrap_or(&rr)
            .to_owned(),
        target: callee.contact().trim_matches(['<', '>']).to_owned(),
    };
    let ack = in_dialog(caller, &s, "ACK", 2);
    caller.send(&ack).await;
    let got = request_in(callee, &s.call_id).await;
    assert_eq!(got.method(), Some(&sip_message::Method::Ack));
    (r, Some(s))
}

/// A request in `s` from its caller, written out by hand (Route from the Record-Route).
fn in_dialog(c: &Client, s: &Session, method: &str, cseq: u32) -> Message {
    let text = format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/{} 127.0.0.1:{};branch=z9hG4bK{};rport\r\nRoute: {}\r\n\
         Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         Contact: {}\r\nContent-Length: 0\r\n\r\n",
        s.target,
        c.transport.via(),
        c.local.port(),
        rand_hex(),
        s.route,
        s.from,
        s.to,
        s.call_id,
        c.contact(),
    );
    sip_message::parse_datagram(text.as_bytes()).unwrap()
}

/// Sends an in-dialog request, answering the challenge; the final response.
async fn send_in_dialog(c: &mut Client, m: Message) -> Message {
    c.send(&m).await;
    let first = c.final_response().await;
    if status(&first) != 407 {
        return first;
    }
    let pw = format!("pw-{}", c.user);
    let again = c.with_credentials(&m, &first, &pw, "MD5", 1);
    c.send(&again).await;
    c.final_response().await
}

#[tokio::test]
async fn group_chats_a_user_organises_are_capped() {
    let s = TestServer::start_with(&["alice", "bob", "carol"], |c| {
        c.im.max_group_chats_per_user = 2;
    })
    .await;
    let mut alice = registered(&s, Transport::Tcp, "alice").await;
    let mut bob = registered(&s, Transport::Tcp, "bob").await;
    for _ in 0..2 {
        let r = message(&mut alice, "bob", "/invite carol@example.com").await;
        assert_eq!(status(&r), 200, "{r}");
    }
    assert_eq!(s.server.im.conferences().len(), 2);

    // The third /invite would make alice the organiser of a third open group chat.
    let r = message(&mut alice, "bob", "/invite carol@example.com").await;
    assert_eq!(status(&r), 403, "{r}");
    let w = warning(&r);
    assert!(w.starts_with("399 switchboard \""), "{w}");
    assert!(
        w.contains("too many open group chats") && w.contains("limit 2"),
        "{w}"
    );
    assert_eq!(s.server.im.conferences().len(), 2);

    // Escalating a session by REFER is the same: refused for her.
    let (_, session) = invite(&mut alice, &mut bob, 200).await;
    let mut refer = in_dialog(&alice, &session.unwrap(), "REFER", 3);
    refer
        .headers
        .push(HeaderName::ReferTo, "<sip:carol@example.com>");
    let r = send_in_dialog(&mut alice, refer).await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(warning(&r).contains("too many open group chats"), "{r}");
    assert_eq!(s.server.im.conferences().len(), 2);

    // The cap is alice's: bob can still start a group chat.
    let r = message(&mut bob, "alice", "/invite carol@example.com").await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(s.server.im.conferences().len(), 3);
}

#[tokio::test]
async fn session_mode_sessions_a_user_opens_are_capped() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        c.im.max_sessions_per_user = 2;
    })
    .await;
    let mut alice = registered(&s, Transport::Tcp, "alice").await;
    let mut bob = registered(&s, Transport::Tcp, "bob").await;

    // An INVITE declined holds no place once it is over.
    let (r, _) = invite(&mut alice, &mut bob, 603).await;
    assert_eq!(status(&r), 603);
    let (r, first) = invite(&mut alice, &mut bob, 200).await;
    assert_eq!(status(&r), 200, "{r}");
    let (r, _) = invite(&mut alice, &mut bob, 200).await;
    assert_eq!(status(&r), 200, "{r}");

    // A third open session: refused by the server, never reaching bob.
    send_invite(&mut alice, "bob").await;
    let r = alice.final_response().await;
    assert_eq!(status(&r), 403, "{r}");
    let w = warning(&r);
    assert!(
        w.contains("too many open IM sessions") && w.contains("limit 2"),
        "{w}"
    );
    assert!(
        bob.recv_within(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "the refused INVITE is not forked"
    );

    // Sessions count against whoever opened them: bob, who accepted both, can still open
    // his own (alice accepting it costs her nothing).
    let (r, _) = invite(&mut bob, &mut alice, 200).await;
    assert_eq!(status(&r), 200, "{r}");

    // Ending one of alice's gives her its place back.
    let first = first.unwrap();
    let bye = in_dialog(&alice, &first, "BYE", 3);
    alice.send(&bye).await;
    let ch = alice.final_response().await;
    let bye = alice.with_credentials(&bye, &ch, "pw-alice", "MD5", 1);
    alice.send(&bye).await;
    let got = request_in(&mut bob, &first.call_id).await;
    assert_eq!(got.method(), Some(&sip_message::Method::Bye));
    bob.send(&got.response(200, None)).await;
    assert_eq!(status(&alice.final_response().await), 200);
    let (r, _) = invite(&mut alice, &mut bob, 200).await;
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn one_sender_cannot_fill_a_mailbox_for_everyone() {
    let s = TestServer::start_with(&["alice", "bob", "mallory"], |c| {
        c.im.offline_max_per_user = 10;
        c.im.offline_max_per_sender = 2;
    })
    .await;
    let mut mallory = registered(&s, Transport::Udp, "mallory").await;
    for text in ["spam 1", "spam 2"] {
        let r = message(&mut mallory, "bob", text).await;
        assert_eq!(status(&r), 202, "{r}");
    }
    let r = message(&mut mallory, "bob", "spam 3").await;
    assert_eq!(status(&r), 480, "{r}");
    let w = warning(&r);
    assert!(
        w.contains("mailbox is full for messages from this sender") && w.contains("limit 2"),
        "{w}"
    );

    // Another sender can still leave bob a message.
    let mut alice = registered(&s, Transport::Udp, "alice").await;
    let r = message(&mut alice, "bob", "from alice").await;
    assert_eq!(status(&r), 202, "{r}");

    // And bob gets it when he signs in, after mallory's two.
    let mut bob = s.client(Transport::Udp, "bob").await;
    let req = bob.register_request(None);
    bob.send(&req).await;
    let ch = bob.final_response().await;
    let again = bob.with_credentials(&req, &ch, "pw-bob", "MD5", 1);
    bob.send(&again).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = bob.recv().await.expect("kept messages arrive");
        if m.is_request() {
            bob.send(&m.response(200, Some("b"))).await;
            got.push(String::from_utf8_lossy(&m.body).into_owned());
        }
    }
    assert_eq!(got, ["spam 1", "spam 2", "from alice"]);
}
