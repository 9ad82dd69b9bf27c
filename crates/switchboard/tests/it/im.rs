//! The IM service over sockets: pager conversations recorded as CDR with per-participant
//! counts, idle ends, restart recovery, offline messages delivered in order once.

use std::time::Duration;

use switchboard_store::data::Data;
use switchboard_store::SessionFilter;

use crate::support::*;

fn quick(c: &mut switchboard::config::ServerConfig) {
    c.im.flush_interval = Duration::from_millis(100);
}

async fn registered(s: &TestServer, user: &str) -> Client {
    let mut c = s.client(Transport::Udp, user).await;
    assert_eq!(status(&c.register(None).await), 200);
    c
}

async fn send(from: &mut Client, to: &mut Client, to_user: &str, text: &str) {
    let m = from.message_to(to_user, text);
    from.send(&m).await;
    let ch = from.final_response().await;
    let again = from.with_credentials(&m, &ch, &format!("pw-{}", from.user), "MD5", 1);
    from.send(&again).await;
    let got = to.answer_next_request(200).await.expect("delivered");
    assert_eq!(&got.body[..], text.as_bytes());
    assert_eq!(status(&from.final_response().await), 200);
}

/// Waits (up to five seconds) until the server's data, read as the CLI would, passes
/// `pred`.
async fn settle(s: &TestServer, pred: impl AsyncFn(&Data) -> bool) {
    for _ in 0..100 {
        if pred(&s.data().await).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("CDR never reached the expected state");
}

#[tokio::test]
async fn a_pager_conversation_is_one_session_with_counts() {
    let s = TestServer::start_with(&["alice", "bob"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    for text in ["hi bob", "how are you?", "lunch?"] {
        send(&mut alice, &mut bob, "bob", text).await;
    }
    for text in ["hi alice", "yes!"] {
        send(&mut bob, &mut alice, "alice", text).await;
    }
    let id = s
        .server
        .im
        .conversation_id("sip:alice@example.com", "sip:bob@example.com")
        .expect("open conversation");
    settle(&s, async |st| {
        st.cdr
            .session(&id)
            .await
            .unwrap()
            .is_some_and(|(_, ps)| ps.iter().map(|p| p.messages).sum::<i64>() == 5)
    })
    .await;
    let (session, ps) = s.data().await.cdr.session(&id).await.unwrap().unwrap();
    assert_eq!(session.kind, "two-party");
    assert_eq!(session.initiator, "sip:alice@example.com");
    assert_eq!(session.ended_at_ms, None);
    let a = ps
        .iter()
        .find(|p| p.address == "sip:alice@example.com")
        .unwrap();
    let b = ps
        .iter()
        .find(|p| p.address == "sip:bob@example.com")
        .unwrap();
    assert_eq!(
        (a.messages, a.bytes),
        (
            3,
            ("hi bob".len() + "how are you?".len() + "lunch?".len()) as i64
        )
    );
    assert_eq!(
        (b.messages, b.bytes),
        (2, ("hi alice".len() + "yes!".len()) as i64)
    );
    // Only one session for the pair, both directions.
    assert_eq!(
        s.data()
            .await
            .cdr
            .sessions(&SessionFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // The CLI reads the same records.
    let out = s
        .cli()
        .args(["cdr", "list", "--user", "bob@example.com", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["participants"].as_array().unwrap().len(), 2);
    let out = s.cli().args(["cdr", "show", &id]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sip:alice@example.com") && text.contains("two-party"),
        "{text}"
    );
    let out = s
        .cli()
        .args(["cdr", "list", "--since", "2999-01-01T00:00:00Z", "--csv"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "header only"
    );

    // A graceful stop ends it.
    s.server.shutdown().await;
    let (session, ps) = s.data().await.cdr.session(&id).await.unwrap().unwrap();
    assert_eq!(session.end_reason.as_deref(), Some("server shutdown"));
    assert!(ps.iter().all(|p| p.left_at_ms.is_some()));
}

#[tokio::test]
async fn an_idle_conversation_ends_with_timeout() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        quick(c);
        c.im.pager_idle = Duration::from_secs(1);
    })
    .await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    send(&mut alice, &mut bob, "bob", "ping").await;
    let id = s
        .server
        .im
        .conversation_id("sip:alice@example.com", "sip:bob@example.com")
        .unwrap();
    settle(&s, async |st| {
        st.cdr
            .session(&id)
            .await
            .unwrap()
            .unwrap()
            .0
            .end_reason
            .as_deref()
            == Some("timeout")
    })
    .await;
    // The next message starts a new session.
    send(&mut alice, &mut bob, "bob", "again").await;
    assert_ne!(
        s.server
            .im
            .conversation_id("sip:alice@example.com", "sip:bob@example.com")
            .unwrap(),
        id
    );
}

#[tokio::test]
async fn sessions_open_at_a_crash_are_closed_at_the_next_start() {
    let s = TestServer::start_with(&["alice", "bob"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    send(&mut alice, &mut bob, "bob", "before the crash").await;
    let id = s
        .server
        .im
        .conversation_id("sip:alice@example.com", "sip:bob@example.com")
        .unwrap();
    settle(&s, async |st| {
        st.cdr
            .session(&id)
            .await
            .unwrap()
            .is_some_and(|(_, ps)| ps.iter().any(|p| p.messages == 1))
    })
    .await;
    let dir = s.crash();
    assert_eq!(
        dir.data()
            .await
            .cdr
            .session(&id)
            .await
            .unwrap()
            .unwrap()
            .0
            .ended_at_ms,
        None
    );
    let s = TestServer::start_in(dir, &["alice", "bob"], quick).await;
    let (session, ps) = s.data().await.cdr.session(&id).await.unwrap().unwrap();
    assert_eq!(session.end_reason.as_deref(), Some("server restart"));
    assert_eq!(
        ps.iter()
            .find(|p| p.address.contains("alice"))
            .unwrap()
            .messages,
        1,
        "counts kept"
    );
}

#[tokio::test]
async fn offline_messages_are_stored_then_delivered_in_order_once() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        quick(c);
        c.im.offline_max_per_user = 3;
    })
    .await;
    let mut alice = registered(&s, "alice").await;
    for text in ["one", "two", "three"] {
        let m = alice.message_to("bob", text);
        let resp = alice.send_authenticated(m).await;
        assert_eq!(status(&resp), 202, "kept for later (RFC 3428 §7)");
    }
    let m = alice.message_to("bob", "four");
    assert_eq!(
        status(&alice.send_authenticated(m).await),
        480,
        "the per-user bound holds"
    );
    assert_eq!(
        s.data()
            .await
            .offline
            .offline_for("sip:bob@example.com")
            .await
            .unwrap()
            .len(),
        3
    );

    let mut bob = s.client(Transport::Udp, "bob").await;
    let req = bob.register_request(None);
    bob.send(&req).await;
    let ch = bob.final_response().await;
    let again = bob.with_credentials(&req, &ch, "pw-bob", "MD5", 1);
    bob.send(&again).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = bob.recv().await.expect("stored messages arrive");
        if m.is_request() {
            assert!(
                m.headers.has(&sip_message::HeaderName::Date),
                "original time kept"
            );
            assert!(m
                .from_header()
                .unwrap()
                .uri
                .to_string()
                .contains("alice@example.com"));
            bob.send(&m.response(200, Some("b"))).await;
            got.push(String::from_utf8_lossy(&m.body).into_owned());
        }
    }
    assert_eq!(got, vec!["one", "two", "three"]);
    settle(&s, async |st| {
        st.offline
            .offline_for("sip:bob@example.com")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    // Registering again delivers nothing more.
    assert_eq!(status(&bob.register(None).await), 200);
    assert!(bob
        .recv_within(Duration::from_millis(500))
        .await
        .is_none_or(|m| !m.is_request()));
    // The sender's CDR shows the three messages.
    let id = s
        .server
        .im
        .conversation_id("sip:alice@example.com", "sip:bob@example.com")
        .unwrap();
    settle(&s, async |st| {
        st.cdr
            .session(&id)
            .await
            .unwrap()
            .unwrap()
            .1
            .iter()
            .any(|p| p.address.contains("alice") && p.messages == 3)
    })
    .await;
}

/// A request inside the dialog, written out by hand (Route from the Record-Route).
#[allow(clippy::too_many_arguments)]
fn in_dialog(
    c: &Client,
    method: &str,
    target: &str,
    route: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    body: &str,
) -> sip_message::Message {
    let text = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{} 127.0.0.1:{};branch=z9hG4bK{};rport\r\nRoute: {route}\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        c.transport.via(),
        c.local.port(),
        rand_hex(),
        body.len()
    );
    sip_message::parse_datagram(text.as_bytes()).unwrap()
}

/// The dialog state both sides of a session-mode IM session need.
struct Dialog {
    rr: String,
    from: String,
    to: String,
    call_id: String,
    bob_target: String,
    alice_target: String,
}

/// alice INVITEs bob with an m=message offer through the server; bob answers 200; ACK.
async fn establish_session(alice: &mut Client, bob: &mut Client) -> Dialog {
    use sip_message::HeaderName;
    // INVITE with m=message (RFC 3261 + the Lync IM offer).
    let to = "sip:bob@example.com";
    let mut invite = alice.request("INVITE", to, to);
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n");
    alice.send(&invite).await;
    let ch = alice.final_response().await;
    let invite = alice.with_credentials(&invite, &ch, "pw-alice", "MD5", 1);
    alice.send(&invite).await;
    let got = loop {
        let m = bob.recv().await.expect("INVITE reaches bob");
        if m.is_request() {
            break m;
        }
    };
    let rr = got
        .headers
        .get(&HeaderName::RecordRoute)
        .expect("record-routed")
        .to_owned();
    let mut ok = got.response(200, Some("bobtag"));
    ok.headers.push(HeaderName::RecordRoute, rr.clone());
    ok.headers.push(HeaderName::Contact, bob.contact());
    bob.send(&ok).await;
    let answer = alice.final_response().await;
    assert_eq!(status(&answer), 200);
    // The route set from the 2xx, as a caller takes it: the server sealed the callee's
    // target into its Record-Route cookie on the way (a superset of the request's).
    let rr = answer
        .headers
        .get(&HeaderName::RecordRoute)
        .expect("record-routed 2xx")
        .to_owned();
    let from = invite.headers.get(&HeaderName::From).unwrap().to_owned();
    let to_hdr = answer.headers.get(&HeaderName::To).unwrap().to_owned();
    let call_id = invite.call_id().unwrap().to_owned();
    let bob_target = bob.contact().trim_matches(['<', '>']).to_owned();
    let alice_target = alice.contact().trim_matches(['<', '>']).to_owned();
    let ack = in_dialog(
        alice,
        "ACK",
        &bob_target,
        &rr,
        &from,
        &to_hdr,
        &call_id,
        2,
        "",
    );
    alice.send(&ack).await;
    let got_ack = bob.recv().await.unwrap();
    assert_eq!(got_ack.method(), Some(&sip_message::Method::Ack));

    Dialog {
        rr,
        from,
        to: to_hdr,
        call_id,
        bob_target,
        alice_target,
    }
}

/// Sends an in-dialog request through the server, which challenges it (in-dialog requests
/// are authenticated too); the peer receives and accepts it. Returns what the peer got.
async fn relay_in_dialog(
    sender: &mut Client,
    peer: &mut Client,
    m: sip_message::Message,
) -> sip_message::Message {
    sender.send(&m).await;
    let first = sender.final_response().await;
    assert_eq!(
        status(&first),
        407,
        "in-dialog requests are authenticated too"
    );
    let pw = format!("pw-{}", sender.user);
    let m = sender.with_credentials(&m, &first, &pw, "MD5", 1);
    sender.send(&m).await;
    let got = peer
        .answer_next_request(200)
        .await
        .expect("relayed to the peer");
    assert_eq!(status(&sender.final_response().await), 200);
    got
}

/// Sends an in-dialog request, answering a 407 challenge if one comes.
async fn send_in_dialog(c: &mut Client, m: sip_message::Message) -> sip_message::Message {
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
async fn session_mode_im_is_anchored_recorded_and_481_after_bye() {
    let s = TestServer::start_with(&["alice", "bob"], quick).await;
    let mut alice = s.client(Transport::Tcp, "alice").await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    assert_eq!(status(&alice.register(None).await), 200);
    assert_eq!(status(&bob.register(None).await), 200);

    let d = establish_session(&mut alice, &mut bob).await;
    let (rr, from, to_hdr, call_id, bob_target, alice_target) = (
        d.rr.clone(),
        d.from.clone(),
        d.to.clone(),
        d.call_id.clone(),
        d.bob_target.clone(),
        d.alice_target.clone(),
    );

    // MESSAGE in the dialog, both ways, through the server.
    let m = in_dialog(
        &alice,
        "MESSAGE",
        &bob_target,
        &rr,
        &from,
        &to_hdr,
        &call_id,
        3,
        "hello in session",
    );
    let got = relay_in_dialog(&mut alice, &mut bob, m).await;
    assert_eq!(&got.body[..], b"hello in session");
    let m = in_dialog(
        &bob,
        "MESSAGE",
        &alice_target,
        &rr,
        &to_hdr,
        &from,
        &call_id,
        1,
        "hi back",
    );
    let got = relay_in_dialog(&mut bob, &mut alice, m).await;
    assert_eq!(&got.body[..], b"hi back");

    // BYE ends it; anything later in the dialog gets 481.
    let bye = in_dialog(
        &alice,
        "BYE",
        &bob_target,
        &rr,
        &from,
        &to_hdr,
        &call_id,
        5,
        "",
    );
    alice.send(&bye).await;
    let first = alice.final_response().await;
    let bye = alice.with_credentials(&bye, &first, "pw-alice", "MD5", 2);
    alice.send(&bye).await;
    bob.answer_next_request(200).await.unwrap();
    assert_eq!(status(&alice.final_response().await), 200);
    let late = in_dialog(
        &alice,
        "MESSAGE",
        &bob_target,
        &rr,
        &from,
        &to_hdr,
        &call_id,
        7,
        "anyone?",
    );
    assert_eq!(status(&send_in_dialog(&mut alice, late).await), 481);

    let sessions = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let (session, ps) = s
        .data()
        .await
        .cdr
        .session(&sessions[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.end_reason.as_deref(), Some("bye"));
    assert_eq!(session.initiator, "sip:alice@example.com");
    let count = |who: &str| {
        ps.iter()
            .find(|p| p.address.contains(who))
            .unwrap()
            .messages
    };
    assert_eq!((count("alice"), count("bob")), (1, 1));
}

fn body(m: &sip_message::Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// alice, bob and carol signed in, and the group chat alice made of her chat with bob by
/// inviting carol (each has taken the opening notice); with the group's URI.
async fn group_of_three(s: &TestServer) -> (Client, Client, Client, String) {
    let mut alice = registered(s, "alice").await;
    let mut bob = registered(s, "bob").await;
    let mut carol = registered(s, "carol").await;
    assert_eq!(
        write_to(
            &mut alice,
            "sip:bob@example.com",
            "/invite carol@example.com"
        )
        .await,
        200
    );
    let mut conf = String::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        conf = take(c, 1).await[0].from_header().unwrap().uri.to_string();
    }
    (alice, bob, carol, conf)
}

#[tokio::test]
async fn invite_command_escalates_a_chat_to_a_conference() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob", "carol"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    let mut carol = registered(&s, "carol").await;
    send(&mut alice, &mut bob, "bob", "hi bob").await;
    let pair = s
        .server
        .im
        .conversation_id("sip:alice@example.com", "sip:bob@example.com")
        .unwrap();

    // The command is answered by the service and never delivered to bob as text.
    assert_eq!(
        write_to(
            &mut alice,
            "sip:bob@example.com",
            "/invite carol@example.com"
        )
        .await,
        200
    );
    let mut conf = String::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        let got = take(c, 1).await;
        assert!(
            body(&got[0]).contains("started a group chat"),
            "{}",
            body(&got[0])
        );
        assert!(!body(&got[0]).starts_with("/invite"));
        conf = got[0].from_header().unwrap().uri.to_string();
        assert!(conf.starts_with("sip:chat-"), "{conf}");
    }
    let members = s.server.im.conference_members(&conf).unwrap();
    assert_eq!(
        members.len(),
        3,
        "both original participants are in it without rejoining"
    );

    // bob writes to the conference: alice and carol get it, author named.
    assert_eq!(write_to(&mut bob, &conf, "hello everyone").await, 200);
    for c in [&mut alice, &mut carol] {
        let got = take(c, 1).await;
        assert_eq!(body(&got[0]), "bob: hello everyone");
        assert_eq!(
            got[0].headers.get(&HeaderName::Other("Ms-Sender".into())),
            Some("<sip:bob@example.com>")
        );
        assert_eq!(got[0].from_header().unwrap().uri.to_string(), conf);
    }
    assert!(
        bob.recv_within(Duration::from_millis(300)).await.is_none(),
        "no echo to the author"
    );

    // /who answers the asker only; /leave tells the others.
    assert_eq!(write_to(&mut carol, &conf, "/who").await, 200);
    let who = take(&mut carol, 1).await;
    assert!(
        body(&who[0]).contains("alice") && body(&who[0]).contains("carol"),
        "{}",
        body(&who[0])
    );
    assert_eq!(write_to(&mut carol, &conf, "/leave").await, 200);
    for c in [&mut alice, &mut bob] {
        assert!(body(&take(c, 1).await[0]).contains("carol left"));
    }
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 2);

    // CDR: a conference session, organised by alice, escalated from the two-party chat.
    let sessions = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap();
    let c = sessions
        .iter()
        .find(|x| x.kind == "conference")
        .expect("conference CDR");
    assert_eq!(c.organiser.as_deref(), Some("sip:alice@example.com"));
    assert_eq!(c.escalated_from.as_deref(), Some(pair.as_str()));
    let id = c.id.clone();
    settle(&s, async |st| {
        let (_, ps) = st.cdr.session(&id).await.unwrap().unwrap();
        ps.iter()
            .any(|p| p.address.contains("bob") && p.messages == 1)
            && ps
                .iter()
                .any(|p| p.address.contains("carol") && p.left_at_ms.is_some())
    })
    .await;
}

#[tokio::test]
async fn a_conference_of_five() {
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let s =
        TestServer::start_with(&["alice", "bob", "carol", "dave", "erin", "frank"], quick).await;
    let mut clients = Vec::new();
    for u in users {
        clients.push(registered(&s, u).await);
    }
    assert_eq!(
        write_to(
            &mut clients[0],
            "sip:bob@example.com",
            "/invite carol@example.com"
        )
        .await,
        200
    );
    let mut conf = String::new();
    for c in clients.iter_mut().take(3) {
        conf = take(c, 1).await[0].from_header().unwrap().uri.to_string();
    }
    for who in ["dave@example.com", "erin@example.com"] {
        assert_eq!(
            write_to(&mut clients[0], &conf, &format!("/invite {who}")).await,
            200
        );
    }
    // Notices: the first three see both additions, dave sees erin's, erin her own.
    for (i, n) in [(0, 2), (1, 2), (2, 2), (3, 2), (4, 1)] {
        take(&mut clients[i], n).await;
    }
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 5);
    assert_eq!(
        write_to(&mut clients[4], &conf, "hi all, erin here").await,
        200
    );
    for c in clients.iter_mut().take(4) {
        assert_eq!(body(&take(c, 1).await[0]), "erin: hi all, erin here");
    }
    // Someone who was not invited writes in, and so joins.
    let mut frank = registered(&s, "frank").await;
    assert_eq!(write_to(&mut frank, &conf, "hello?").await, 200);
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 6);
    for c in clients.iter_mut() {
        // Two deliveries in flight at once: either order.
        let mut got: Vec<String> = take(c, 2).await.iter().map(body).collect();
        got.sort();
        assert_eq!(
            got,
            vec!["*** frank joined".to_string(), "frank: hello?".to_string()]
        );
    }
}

#[tokio::test]
async fn typing_notices_and_receipts_are_relayed_but_not_counted() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    for (ct, text) in [
        (
            "application/im-iscomposing+xml",
            "<isComposing><state>active</state></isComposing>",
        ),
        ("message/imdn+xml", "<imdn><delivery-notification/></imdn>"),
    ] {
        let mut m = alice.message_to("bob", text);
        m.headers.set(HeaderName::ContentType, ct);
        alice.send(&m).await;
        let ch = alice.final_response().await;
        let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
        alice.send(&again).await;
        let got = bob.answer_next_request(200).await.expect("relayed");
        assert_eq!(got.headers.get(&HeaderName::ContentType), Some(ct));
        assert_eq!(status(&alice.final_response().await), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.server
            .im
            .conversation_id("sip:alice@example.com", "sip:bob@example.com")
            .is_none(),
        "no IM session from notices alone"
    );
    assert!(s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn refer_in_a_session_escalates_it_to_a_group_chat() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob", "carol"], quick).await;
    let mut alice = s.client(Transport::Tcp, "alice").await;
    let mut bob = s.client(Transport::Tcp, "bob").await;
    let mut carol = s.client(Transport::Udp, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(status(&c.register(None).await), 200);
    }
    let d = establish_session(&mut alice, &mut bob).await;
    let session = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap()[0]
        .id
        .clone();
    let mut refer = in_dialog(
        &alice,
        "REFER",
        &d.bob_target,
        &d.rr,
        &d.from,
        &d.to,
        &d.call_id,
        4,
        "",
    );
    refer
        .headers
        .push(HeaderName::ReferTo, "<sip:carol@example.com>");
    let resp = send_in_dialog(&mut alice, refer).await;
    assert_eq!(status(&resp), 202);
    assert_eq!(
        resp.headers.get(&HeaderName::Other("Refer-Sub".into())),
        Some("false"),
        "RFC 4488: no implicit subscription"
    );
    let mut conf = String::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        let got = take(c, 1).await;
        assert!(
            body(&got[0]).contains("started a group chat"),
            "{}",
            body(&got[0])
        );
        conf = got[0].from_header().unwrap().uri.to_string();
    }
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 3);
    let sessions = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap();
    let c = sessions.iter().find(|x| x.kind == "conference").unwrap();
    assert_eq!(c.escalated_from.as_deref(), Some(session.as_str()));
    // The group works for all three.
    assert_eq!(
        write_to(&mut carol, &conf, "carol joined by REFER").await,
        200
    );
    for c in [&mut alice, &mut bob] {
        assert_eq!(body(&take(c, 1).await[0]), "carol: carol joined by REFER");
    }
}

#[tokio::test]
async fn the_conference_roster_by_subscription() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob", "carol"], quick).await;
    let (_alice, _bob, mut carol, conf) = group_of_three(&s).await;
    // A watcher's own subscription: SUBSCRIBE Event: conference (RFC 4575).
    let mut watcher = s.client(Transport::Udp, "alice").await;
    let mut sub = watcher.request("SUBSCRIBE", &conf, &conf);
    sub.headers.push(HeaderName::Event, "conference");
    sub.headers.push(HeaderName::Expires, "600");
    let ok = watcher.send_authenticated(sub.clone()).await;
    assert_eq!(status(&ok), 200);
    assert_eq!(ok.headers.get(&HeaderName::Expires), Some("600"));
    let to_tag = ok
        .to_header()
        .unwrap()
        .tag()
        .expect("dialog tag")
        .to_owned();
    let first = take(&mut watcher, 1).await;
    assert_eq!(first[0].method(), Some(&sip_message::Method::Notify));
    assert_eq!(first[0].headers.get(&HeaderName::Event), Some("conference"));
    assert!(first[0]
        .headers
        .get(&HeaderName::Other("Subscription-State".into()))
        .unwrap()
        .starts_with("active"));
    let xml = body(&first[0]);
    assert!(
        xml.contains("urn:ietf:params:xml:ns:conference-info") && xml.contains("state=\"full\""),
        "{xml}"
    );
    for who in ["alice", "bob", "carol"] {
        assert!(
            xml.contains(&format!("entity=\"sip:{who}@example.com\"")),
            "{who} in {xml}"
        );
    }
    // carol leaves: a new roster without her.
    assert_eq!(write_to(&mut carol, &conf, "/leave").await, 200);
    let next = take(&mut watcher, 1).await;
    let xml = body(&next[0]);
    assert!(
        !xml.contains("sip:carol@example.com") && xml.contains("version=\"2\""),
        "{xml}"
    );
    // Unsubscribe inside the dialog: 200, then a final NOTIFY.
    let mut unsub = watcher.request("SUBSCRIBE", &conf, &conf);
    unsub.headers.set(
        HeaderName::From,
        sub.headers.get(&HeaderName::From).unwrap(),
    );
    unsub
        .headers
        .set(HeaderName::To, format!("<{conf}>;tag={to_tag}"));
    unsub
        .headers
        .set(HeaderName::CallId, sub.call_id().unwrap());
    unsub.headers.push(HeaderName::Event, "conference");
    unsub.headers.push(HeaderName::Expires, "0");
    assert_eq!(status(&watcher.send_authenticated(unsub).await), 200);
    let last = take(&mut watcher, 1).await;
    assert!(last[0]
        .headers
        .get(&HeaderName::Other("Subscription-State".into()))
        .unwrap()
        .starts_with("terminated"));
    // Another event package is refused.
    let mut other = watcher.request("SUBSCRIBE", &conf, &conf);
    other.headers.push(HeaderName::Event, "presence");
    assert_eq!(status(&watcher.send_authenticated(other).await), 489);
}

#[tokio::test]
async fn joining_a_conference_by_invite() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob", "carol", "dave"], quick).await;
    let (mut alice, mut bob, mut carol, conf) = group_of_three(&s).await;
    let mut dave = s.client(Transport::Tcp, "dave").await;
    assert_eq!(status(&dave.register(None).await), 200);
    // Session mode: INVITE the conference with an m=message offer.
    let mut invite = dave.request("INVITE", &conf, &conf);
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n");
    let ok = dave.send_authenticated(invite.clone()).await;
    assert_eq!(status(&ok), 200);
    assert!(body(&ok).contains("m=message"), "an SDP answer");
    let conf_tag = ok.to_header().unwrap().tag().unwrap().to_owned();
    for c in [&mut alice, &mut bob, &mut carol] {
        assert!(body(&take(c, 1).await[0]).contains("dave joined"));
    }
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 4);
    // The group's messages reach dave inside his session.
    assert_eq!(write_to(&mut alice, &conf, "welcome dave").await, 200);
    for c in [&mut bob, &mut carol] {
        take(c, 1).await;
    }
    let got = take(&mut dave, 1).await;
    assert_eq!(body(&got[0]), "alice: welcome dave");
    assert_eq!(got[0].call_id(), invite.call_id(), "in dave's dialog");
    assert_eq!(got[0].from_header().unwrap().tag(), Some(conf_tag.as_str()));
    // dave writes inside his session; BYE takes him out.
    let from = invite.headers.get(&HeaderName::From).unwrap().to_owned();
    let to = format!("<{conf}>;tag={conf_tag}");
    let m = in_dialog(
        &dave,
        "MESSAGE",
        &conf,
        "<sip:127.0.0.1;lr>",
        &from,
        &to,
        invite.call_id().unwrap(),
        10,
        "thanks!",
    );
    let mut m = m;
    m.headers.remove(&HeaderName::Route);
    assert_eq!(status(&send_in_dialog(&mut dave, m).await), 200);
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(body(&take(c, 1).await[0]), "dave: thanks!");
    }
    let mut bye = in_dialog(
        &dave,
        "BYE",
        &conf,
        "<sip:127.0.0.1;lr>",
        &from,
        &to,
        invite.call_id().unwrap(),
        11,
        "",
    );
    bye.headers.remove(&HeaderName::Route);
    assert_eq!(status(&send_in_dialog(&mut dave, bye).await), 200);
    for c in [&mut alice, &mut bob, &mut carol] {
        assert!(body(&take(c, 1).await[0]).contains("dave left"));
    }
}

/// Makes the database take no CDR writes: on SQLite another process holds its write lock
/// (the IM store gives up on it after a quarter second); on PostgreSQL it has failed over
/// to a server that takes no writes. Undone by [`unlock_database`].
async fn lock_database(s: &TestServer) -> Option<rusqlite::Connection> {
    match s.home().pg() {
        Some(pg) => {
            pg.set_read_only(true).await;
            None
        }
        None => {
            let c = rusqlite::Connection::open(s.data_dir().join("switchboard.db")).unwrap();
            c.execute_batch("BEGIN EXCLUSIVE").unwrap();
            Some(c)
        }
    }
}

async fn unlock_database(s: &TestServer, sqlite_lock: Option<rusqlite::Connection>) {
    match (&sqlite_lock, s.home().pg()) {
        (Some(c), _) => c.execute_batch("ROLLBACK").unwrap(),
        (None, Some(pg)) => pg.set_read_only(false).await,
        (None, None) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_recorded_before_it_is_relayed_even_while_the_database_is_away() {
    let s = TestServer::start_with(&["alice", "bob"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    let sqlite_lock = lock_database(&s).await;
    // The conversation's start goes to the spool in the data directory (fsync'd) first,
    // and then the message is relayed. (A 503 before the challenge: a session a
    // failover ended answered it, then retired; asked again.)
    let mut challenged = None;
    for _ in 0..20 {
        let m = alice.message_to("bob", "spooled first");
        alice.send(&m).await;
        let ch = alice.final_response().await;
        if status(&ch) != 503 {
            challenged = Some((m, ch));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (m, ch) = challenged.expect("a challenge");
    let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
    alice.send(&again).await;
    let got = bob.answer_next_request(200).await.expect("relayed");
    assert_eq!(&got.body[..], b"spooled first");
    assert_eq!(status(&alice.final_response().await), 200);
    let spool = s.data_dir().join("cdr-spool");
    assert!(
        std::fs::metadata(&spool).is_ok_and(|m| m.len() > 0),
        "the start waits in the spool"
    );
    unlock_database(&s, sqlite_lock).await;
    // Once the database takes writes again the spool is drained into it.
    settle(&s, async |st| {
        let sessions = st.cdr.sessions(&SessionFilter::default()).await.unwrap();
        match sessions.as_slice() {
            [one] => st
                .cdr
                .session(&one.id)
                .await
                .unwrap()
                .is_some_and(|(_, ps)| {
                    ps.iter()
                        .any(|p| p.address.contains("alice") && p.messages == 1)
                }),
            _ => false,
        }
    })
    .await;
    for _ in 0..100 {
        if !spool.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!spool.exists(), "the spool is gone once drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_im_service_cannot_record_is_refused_not_bypassed() {
    use sip_message::HeaderName;
    // Neither the database nor the spool takes the record: the spool's place in the
    // data directory is taken by a directory.
    let home = Home::new().await;
    std::fs::create_dir_all(home.dir.path().join("cdr-spool")).unwrap();
    let s = TestServer::start_in(home, &["alice", "bob"], quick).await;
    let mut alice = registered(&s, "alice").await;
    let mut bob = registered(&s, "bob").await;
    let sqlite_lock = lock_database(&s).await;
    // Sessions a failover ended may answer a request or two with 503 (then retired):
    // asked again until the challenge comes.
    let mut challenged = None;
    for _ in 0..20 {
        let m = alice.message_to("bob", "unrecorded?");
        alice.send(&m).await;
        let ch = alice.final_response().await;
        if status(&ch) != 503 {
            challenged = Some((m, ch));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (m, ch) = challenged.expect("a challenge");
    let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
    alice.send(&again).await;
    let resp = alice
        .recv_within(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(status(&resp), 503);
    assert!(resp
        .headers
        .get(&HeaderName::Warning)
        .unwrap()
        .contains("IM service"));
    assert!(
        bob.recv_within(Duration::from_millis(300)).await.is_none(),
        "not relayed around the IM service"
    );
    unlock_database(&s, sqlite_lock).await;
    // Right after a failure new conversations are refused at once for a moment (503 with
    // Retry-After), then tried again: the chat goes through, recorded.
    let mut delivered = None;
    for _ in 0..20 {
        let m = alice.message_to("bob", "recorded now");
        alice.send(&m).await;
        let ch = alice.final_response().await;
        if status(&ch) == 503 {
            // A session the failover ended answered this one (the store then retires
            // it): told to retry, and the next goes through.
            assert!(ch
                .headers
                .get(&HeaderName::from_wire("Retry-After"))
                .is_some());
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let again = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 1);
        alice.send(&again).await;
        tokio::select! {
            refused = alice.recv_within(Duration::from_secs(5)) => {
                let refused = refused.expect("an answer");
                assert_eq!(status(&refused), 503);
                assert!(refused.headers.get(&HeaderName::from_wire("Retry-After")).is_some());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            got = bob.answer_next_request(200) => {
                delivered = got;
                break;
            }
        }
    }
    assert_eq!(&delivered.expect("delivered").body[..], b"recorded now");
    assert_eq!(status(&alice.final_response().await), 200);
    let sessions = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "one conversation, recorded; none for the refused message"
    );
}

#[tokio::test]
async fn someone_invited_back_keeps_their_counts() {
    let s = TestServer::start_with(&["alice", "bob", "carol"], quick).await;
    let (mut alice, mut bob, mut carol, conf) = group_of_three(&s).await;
    assert_eq!(write_to(&mut carol, &conf, "one from carol").await, 200);
    for c in [&mut alice, &mut bob] {
        take(c, 1).await;
    }
    assert_eq!(write_to(&mut carol, &conf, "/leave").await, 200);
    for c in [&mut alice, &mut bob] {
        take(c, 1).await;
    }
    assert_eq!(
        write_to(&mut alice, &conf, "/invite carol@example.com").await,
        200
    );
    assert_eq!(s.server.im.conference_members(&conf).unwrap().len(), 3);
    let id = s
        .data()
        .await
        .cdr
        .sessions(&SessionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.kind == "conference")
        .unwrap()
        .id;
    settle(&s, async |st| {
        st.cdr
            .session(&id)
            .await
            .unwrap()
            .unwrap()
            .1
            .iter()
            .any(|p| p.address.contains("carol") && p.messages == 1 && p.left_at_ms.is_none())
    })
    .await;
}

/// A member who never registered joins by INVITE with a Contact naming some third host:
/// the conference's messages reach the member over the flow the INVITE came from, and
/// the third host hears nothing (the server sends nowhere a client merely names).
#[tokio::test]
async fn a_conference_member_is_reached_over_their_flow_not_their_contact() {
    use sip_message::HeaderName;
    let s = TestServer::start_with(&["alice", "bob", "carol", "dave"], quick).await;
    let (mut alice, mut bob, mut carol, conf) = group_of_three(&s).await;
    let by = crate::relay::Bystander::new().await;
    let mut dave = s.client(Transport::Udp, "dave").await;
    let mut invite = dave.request("INVITE", &conf, &conf);
    invite.headers.set(
        HeaderName::Contact,
        format!("<sip:dave@{};transport=udp>", by.udp_addr()),
    );
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n");
    assert_eq!(status(&dave.send_authenticated(invite.clone()).await), 200);
    for c in [&mut alice, &mut bob, &mut carol] {
        assert!(body(&take(c, 1).await[0]).contains("dave joined"));
    }
    assert_eq!(write_to(&mut alice, &conf, "welcome dave").await, 200);
    for c in [&mut bob, &mut carol] {
        take(c, 1).await;
    }
    let got = take(&mut dave, 1).await;
    assert_eq!(body(&got[0]), "alice: welcome dave");
    assert_eq!(got[0].call_id(), invite.call_id(), "in dave's dialog");
    by.hears_nothing().await;
}
