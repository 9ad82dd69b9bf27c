//! Front ends of an Enterprise pool, in one process, sharing one PostgreSQL database
//! (on the server `SWITCHBOARD_TEST_PG_URL` names; `scripts/test.sh` starts one; without
//! it each test says it was skipped and passes). Front end N listens on 127.0.0.(N+1),
//! as the pool's processes would on separate hosts; its pool link is its SIP TCP
//! listener. Killing and stopping whole processes is `tests/pool/` (a harness of
//! processes); here a "crash" stops a front end's transports and heartbeat without
//! leaving the pool.

use std::net::SocketAddr;
use std::time::Duration;

use sip_message::HeaderName;
use switchboard::config::Listen;
use switchboard_store::testing::{eventually, pg_server, PgDatabase};
use switchboard_store::SessionFilter;

use crate::support::*;

struct Pool {
    db: PgDatabase,
    fes: Vec<Option<TestServer>>,
}

impl Pool {
    /// `n` front ends (ids 1..=n) over a fresh database with `users` (`pw-<name>`).
    async fn start(test: &str, n: u32, users: &[&str]) -> Option<Pool> {
        if pg_server().is_none() {
            eprintln!("skipped: {test} needs SWITCHBOARD_TEST_PG_URL (a PostgreSQL server)");
            return None;
        }
        let db = PgDatabase::create().await;
        let data = switchboard_store::data::open(Some(&db.url), std::path::Path::new("unused"))
            .await
            .unwrap();
        for u in users {
            let a = switchboard_store::Address::parse(&format!("{u}@example.com")).unwrap();
            data.directory
                .add(&a, &format!("pw-{u}"), None)
                .await
                .unwrap();
        }
        let mut fes = Vec::new();
        for id in 1..=n {
            fes.push(Some(Self::front_end(&db.url, id).await));
        }
        // Each front end learns the others at its next heartbeat.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for fe in fes.iter().flatten() {
            let pool = fe.server.pool.as_ref().unwrap();
            while pool.members().len() < n as usize {
                assert!(std::time::Instant::now() < deadline, "members never seen");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(Pool { db, fes })
    }

    async fn front_end(url: &str, id: u32) -> TestServer {
        let ip = [127, 0, 0, id as u8 + 1];
        let url = url.to_owned();
        TestServer::start_in(Home::dir_only(), &[], move |c| {
            c.database = Some(url);
            c.front_end = Some(id);
            // CDR counts are written within a tenth of a second.
            c.im.flush_interval = Duration::from_millis(100);
            c.sip_udp = Listen::On(SocketAddr::from((ip, 0)));
            c.sip_tcp = Listen::On(SocketAddr::from((ip, 0)));
            c.sip_tls = Listen::On(SocketAddr::from((ip, 0)));
        })
        .await
    }

    fn fe(&self, id: u32) -> &TestServer {
        self.fes[id as usize - 1].as_ref().expect("running")
    }

    async fn data(&self) -> switchboard_store::Data {
        switchboard_store::data::open(Some(&self.db.url), std::path::Path::new("unused"))
            .await
            .unwrap()
    }

    /// The front end that keeps the conversation of `a` and `b` whose devices are on
    /// the front ends `on` (every front end computes the same).
    fn keeper(&self, a: &str, b: &str, on: &[u32]) -> u32 {
        let pair = switchboard_pool::pager_pair(
            &format!("sip:{a}@example.com"),
            &format!("sip:{b}@example.com"),
        );
        let p = self.fes.iter().flatten().next().expect("a front end runs");
        p.server
            .pool
            .as_ref()
            .unwrap()
            .keeper_among(&pair, on)
            .unwrap()
            .0
    }

    /// `user` registered over TCP on front end `id`.
    async fn client(&self, id: u32, user: &str) -> Client {
        let mut c = self.fe(id).client(Transport::Tcp, user).await;
        assert_eq!(status(&c.register(Some(600)).await), 200);
        c
    }
}

#[tokio::test]
async fn a_message_reaches_a_device_on_another_front_end_and_is_recorded_once() {
    let Some(pool) = Pool::start("pool::a_message_reaches…", 3, &["alice", "bob", "carol"]).await
    else {
        return;
    };
    let mut alice = pool.client(1, "alice").await;
    let mut bob = pool.client(2, "bob").await;
    // Bob has a second device, on front end 3: both get it (forked across the pool).
    let mut bob2 = pool.client(3, "bob").await;
    let m = alice.message_to("bob", "hello across the pool");
    send_challenged(&mut alice, m).await;
    let got = bob
        .answer_next_request(200)
        .await
        .expect("bob's device on FE 2");
    let got2 = bob2
        .answer_next_request(200)
        .await
        .expect("bob's device on FE 3");
    assert_eq!(status(&alice.final_response().await), 200);
    for g in [&got, &got2] {
        assert_eq!(&g.body[..], b"hello across the pool");
        assert!(
            g.headers
                .get(&HeaderName::From)
                .unwrap()
                .contains("alice@example.com"),
            "{g}"
        );
        // The pool's Route and token stop at the front end that holds the device.
        assert!(!g.to_string().contains("sbf="), "{g}");
    }
    // Bob answers from front end 2, twice; alice gets both.
    for text in ["hi alice", "from FE 2"] {
        let m = bob.message_to("alice", text);
        send_challenged(&mut bob, m).await;
        let got = alice
            .answer_next_request(200)
            .await
            .expect("alice's device on FE 1");
        assert_eq!(&got.body[..], text.as_bytes());
        assert_eq!(status(&bob.final_response().await), 200);
    }
    // One conversation, one CDR session, kept by one front end (whichever the pair
    // hashes to), with both directions counted: not one per front end.
    let data = pool.data().await;
    eventually("one CDR session with three messages", async || {
        let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
        match sessions.as_slice() {
            [s] => data
                .cdr
                .session(&s.id)
                .await
                .unwrap()
                .is_some_and(|(_, ps)| ps.iter().map(|p| p.messages).sum::<i64>() == 3),
            _ => false,
        }
    })
    .await;
    let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].initiator, "sip:alice@example.com");
    let (_, ps) = data.cdr.session(&sessions[0].id).await.unwrap().unwrap();
    let count = |who: &str| ps.iter().find(|p| p.address == who).map(|p| p.messages);
    assert_eq!(count("sip:alice@example.com"), Some(1));
    assert_eq!(count("sip:bob@example.com"), Some(2));
    // The devices are where the pool says: 2 users, bob on two front ends.
    let rows = data
        .pool
        .as_ref()
        .unwrap()
        .location
        .bindings("sip:bob@example.com")
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.fe).collect::<Vec<_>>(), [2, 3]);
}

#[tokio::test]
async fn a_pair_on_two_front_ends_is_kept_by_one_of_them_never_a_third() {
    let users = ["alice", "r0", "r1", "r2", "r3", "r4", "r5"];
    let Some(pool) = Pool::start("pool::a_pair_on_two_front_ends…", 3, &users).await else {
        return;
    };
    // alice on front end 1 writes to six users, on front ends 2 and 3 by turns.
    let mut alice = pool.client(1, "alice").await;
    let mut kept = Vec::new();
    for (i, r) in users[1..].iter().enumerate() {
        let fe = 2 + (i as u32 % 2);
        let mut c = pool.client(fe, r).await;
        let m = alice.message_to(r, "hello");
        send_challenged(&mut alice, m).await;
        c.answer_next_request(200).await.expect("delivered");
        assert_eq!(status(&alice.final_response().await), 200);
        kept.push((
            format!("sip:{r}@example.com"),
            pool.keeper("alice", r, &[1, fe]),
            fe,
        ));
    }
    // Each conversation's session is kept by front end 1 or the recipient's: the message
    // crossed the pool once, never through the third front end.
    let db = pool.db.client().await;
    let owners = async || {
        let rows = db
            .query(
                "SELECT p.address, s.owner FROM cdr_sessions s
                   JOIN cdr_participants p ON p.session_id = s.id
                  WHERE p.address <> 'sip:alice@example.com' ORDER BY p.address",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    eventually("six sessions recorded", async || owners().await.len() == 6).await;
    for ((aor, owner), (expected_aor, keeper, fe)) in owners().await.into_iter().zip(&kept) {
        assert_eq!(&aor, expected_aor);
        assert_eq!(owner, format!("fe-{keeper}"), "{aor} on front end {fe}");
        assert!(*keeper == 1 || keeper == fe);
    }
}

#[tokio::test]
async fn a_public_gruu_reaches_its_device_on_another_front_end_only() {
    let Some(pool) = Pool::start("pool::a_public_gruu…", 3, &["alice", "bob"]).await else {
        return;
    };
    // bob's device with an instance id on front end 2, another device on front end 3.
    let mut b1 = pool.fe(2).client(Transport::Tcp, "bob").await;
    let r = b1.gruu_register_request(Some(600), "00000000-0000-0000-0000-0000000000b1");
    assert_eq!(status(&b1.send_authenticated(r).await), 200);
    let mut b2 = pool.client(3, "bob").await;
    let mut alice = pool.client(1, "alice").await;
    let gruu = "sip:bob@example.com;gr=urn:uuid:00000000-0000-0000-0000-0000000000b1";
    let mut m = alice.message_to("bob", "just device 1");
    m.start = sip_message::StartLine::Request {
        method: sip_message::Method::Message,
        uri: sip_message::Uri::parse(gruu).unwrap(),
    };
    send_challenged(&mut alice, m).await;
    let Some(got) = b1.answer_next_request(200).await else {
        panic!(
            "device 1 got nothing; alice got {}",
            alice.final_response().await
        );
    };
    assert_eq!(&got.body[..], b"just device 1");
    assert_eq!(status(&alice.final_response().await), 200);
    assert!(
        b2.recv_within(Duration::from_millis(300)).await.is_none(),
        "device 2 must not"
    );
    // An instance nobody registered: no such device, anywhere.
    let mut m = alice.message_to("bob", "nobody");
    m.start = sip_message::StartLine::Request {
        method: sip_message::Method::Message,
        uri: sip_message::Uri::parse(
            "sip:bob@example.com;gr=urn:uuid:00000000-0000-0000-0000-0000000000ff",
        )
        .unwrap(),
    };
    assert_eq!(status(&alice.send_authenticated(m).await), 480);
}

/// A request in a dialog, written out by hand, with the dialog's route set.
#[allow(clippy::too_many_arguments)]
fn in_dialog(
    c: &Client,
    method: &str,
    target: &str,
    routes: &[String],
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    body: &str,
) -> sip_message::Message {
    let text = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TCP {}:{};branch=z9hG4bK{};rport\r\nRoute: {}\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        c.local.ip(),
        c.local.port(),
        rand_hex(),
        routes.join(", "),
        body.len()
    );
    sip_message::parse_datagram(text.as_bytes()).unwrap()
}

/// Sends an in-dialog request, answers its challenge, lets `peer` accept it; what the
/// peer got.
async fn through(
    sender: &mut Client,
    peer: &mut Client,
    m: sip_message::Message,
) -> sip_message::Message {
    send_challenged(sender, m).await;
    let got = peer
        .answer_next_request(200)
        .await
        .expect("relayed to the peer");
    assert_eq!(status(&sender.final_response().await), 200);
    got
}

#[tokio::test]
async fn a_session_crosses_front_ends_both_ways_and_is_recorded_once() {
    let Some(pool) = Pool::start("pool::a_session_crosses…", 2, &["alice", "bob"]).await else {
        return;
    };
    let mut alice = pool.client(1, "alice").await;
    let mut bob = pool.client(2, "bob").await;
    let to = "sip:bob@example.com";
    let mut invite = alice.request("INVITE", to, to);
    invite
        .headers
        .push(HeaderName::ContentType, "application/sdp");
    invite.body = bytes::Bytes::from_static(
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\n",
    );
    send_challenged(&mut alice, invite.clone()).await;
    let got = loop {
        let m = bob
            .recv()
            .await
            .expect("the INVITE reaches bob on front end 2");
        if m.is_request() {
            break m;
        }
    };
    // Both front ends record-route it; the token never reaches the device.
    let rr: Vec<String> = got
        .headers
        .get_all(&HeaderName::RecordRoute)
        .map(str::to_owned)
        .collect();
    assert_eq!(rr.len(), 2, "{got}");
    assert!(!got.to_string().contains("sbf="), "{got}");
    let mut ok = got.response(200, Some("bobtag"));
    for r in &rr {
        ok.headers.push(HeaderName::RecordRoute, r.clone());
    }
    ok.headers.push(HeaderName::Contact, bob.contact());
    bob.send(&ok).await;
    let answer = alice.final_response().await;
    assert_eq!(status(&answer), 200, "{answer}");
    let mut alice_routes: Vec<String> = answer
        .headers
        .get_all(&HeaderName::RecordRoute)
        .map(str::to_owned)
        .collect();
    alice_routes.reverse();
    let bob_routes = rr;
    let from = got.headers.get(&HeaderName::From).unwrap().to_owned();
    let to_hdr = answer.headers.get(&HeaderName::To).unwrap().to_owned();
    let call_id = got.call_id().unwrap().to_owned();
    let bob_target = bob.contact().trim_matches(['<', '>']).to_owned();
    let alice_target = alice.contact().trim_matches(['<', '>']).to_owned();
    let ack = in_dialog(
        &alice,
        "ACK",
        &bob_target,
        &alice_routes,
        &from,
        &to_hdr,
        &call_id,
        2,
        "",
    );
    alice.send(&ack).await;
    let got_ack = bob.recv().await.expect("the ACK crosses the pool");
    assert_eq!(got_ack.method(), Some(&sip_message::Method::Ack));
    // MESSAGE in the dialog, each way, across the two front ends.
    let m = in_dialog(
        &alice,
        "MESSAGE",
        &bob_target,
        &alice_routes,
        &from,
        &to_hdr,
        &call_id,
        3,
        "hello in session",
    );
    assert_eq!(
        &through(&mut alice, &mut bob, m).await.body[..],
        b"hello in session"
    );
    let m = in_dialog(
        &bob,
        "MESSAGE",
        &alice_target,
        &bob_routes,
        &to_hdr,
        &from,
        &call_id,
        1,
        "hi back",
    );
    assert_eq!(&through(&mut bob, &mut alice, m).await.body[..], b"hi back");
    let bye = in_dialog(
        &alice,
        "BYE",
        &bob_target,
        &alice_routes,
        &from,
        &to_hdr,
        &call_id,
        5,
        "",
    );
    through(&mut alice, &mut bob, bye).await;
    // One session, recorded once, both directions counted, ended by the BYE.
    let data = pool.data().await;
    eventually("the session recorded and ended", async || {
        let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
        sessions.len() == 1 && sessions[0].end_reason.as_deref() == Some("bye")
    })
    .await;
    let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
    let (_, ps) = data.cdr.session(&sessions[0].id).await.unwrap().unwrap();
    let count = |who: &str| ps.iter().find(|p| p.address == who).map(|p| p.messages);
    assert_eq!(count("sip:alice@example.com"), Some(1), "{ps:?}");
    assert_eq!(count("sip:bob@example.com"), Some(1), "{ps:?}");
}

#[tokio::test]
async fn a_group_chat_with_members_on_three_front_ends_lives_on_one() {
    let Some(pool) = Pool::start("pool::a_group_chat…", 3, &["alice", "bob", "carol"]).await
    else {
        return;
    };
    let mut alice = pool.client(1, "alice").await;
    let mut bob = pool.client(2, "bob").await;
    let mut carol = pool.client(3, "carol").await;
    let m = alice.message_to("bob", "hi bob");
    send_challenged(&mut alice, m).await;
    assert_eq!(&take(&mut bob, 1).await[0].body[..], b"hi bob");
    assert_eq!(status(&alice.final_response().await), 200);
    // alice makes it a group chat with carol: it lives on the front end that keeps the
    // alice-bob conversation, and its address says which.
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
        let text = String::from_utf8_lossy(&got[0].body).into_owned();
        assert!(text.contains("started a group chat"), "{text}");
        conf = got[0].from_header().unwrap().uri.to_string();
    }
    // (Of the front ends holding their devices: 1 and 2.)
    let keeper = pool.keeper("alice", "bob", &[1, 2]);
    assert!(conf.starts_with(&format!("sip:chat-f{keeper}-")), "{conf}");
    // Each member writes to it from their own front end; the others get it once.
    let mut members = [("alice", alice), ("bob", bob), ("carol", carol)];
    for i in 0..3 {
        let text = format!("from {}", members[i].0);
        assert_eq!(write_to(&mut members[i].1, &conf, &text).await, 200);
        for (j, (_, c)) in members.iter_mut().enumerate() {
            if j == i {
                continue;
            }
            let got = take(c, 1).await;
            assert_eq!(
                String::from_utf8_lossy(&got[0].body),
                format!("{}: {text}", ["alice", "bob", "carol"][i])
            );
        }
    }
    for (_, c) in members.iter_mut() {
        assert!(
            c.recv_within(Duration::from_millis(300)).await.is_none(),
            "no echo, no double"
        );
    }
    // The CDR: the pair's session and the conference grown from it, once each.
    let data = pool.data().await;
    eventually("the conference's counts", async || {
        let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
        let Some(c) = sessions.iter().find(|s| s.kind == "conference") else {
            return false;
        };
        data.cdr
            .session(&c.id)
            .await
            .unwrap()
            .is_some_and(|(_, ps)| ps.iter().map(|p| p.messages).sum::<i64>() == 3)
    })
    .await;
    let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let conference = sessions.iter().find(|s| s.kind == "conference").unwrap();
    let pair = sessions.iter().find(|s| s.kind == "two-party").unwrap();
    assert_eq!(conference.escalated_from.as_deref(), Some(pair.id.as_str()));
}

#[tokio::test]
async fn a_lync_conference_on_one_front_end_with_members_on_three() {
    use crate::lync::lync_client;
    use crate::lync_im::{
        body, create_conference, fresh, in_dialog, is, join, next_request, signed, with_body,
    };
    let Some(pool) = Pool::start("pool::a_lync_conference…", 3, &["alice", "bob", "carol"]).await
    else {
        return;
    };
    let (mut alice, mut a_sa) = lync_client(pool.fe(1), "alice").await;
    let (mut bob, mut b_sa) = lync_client(pool.fe(2), "bob").await;
    let mut carol = pool.client(3, "carol").await;
    let me = alice.aor();
    // alice creates a conference at the focus factory (on her front end): its address
    // says front end 1 hosts it.
    let focus = create_conference(&mut alice, &mut a_sa).await;
    let conf_aor = focus.split(';').next().unwrap().to_owned();
    assert!(conf_aor.starts_with("sip:chat-f1-"), "{focus}");
    let (_, _, a_chat, a_answer) = join(&mut alice, &mut a_sa, &focus, None).await;
    let mcu = a_chat.request_uri().unwrap().to_string();
    // She invites bob (Lync, front end 2): he gets the invitation, signed by his front
    // end, and joins; his requests for the conference go to front end 1.
    let invite_xml = msrtc::cccp::conf_invite(&focus, "Plans");
    let inv = with_body(
        fresh(&mut alice, "INVITE", &bob.aor(), &bob.aor()),
        "application/ms-conf-invite+xml",
        &invite_xml,
    );
    let mut inv_signed = inv.clone();
    a_sa.sign(&mut inv_signed);
    alice.send(&inv_signed).await;
    let got = next_request(&mut bob, is("INVITE"), Some(200)).await;
    b_sa.check(&got);
    assert_eq!(status(&alice.final_response().await), 200);
    let (_, _, b_chat, _) = join(&mut bob, &mut b_sa, &focus, Some(&mcu)).await;
    // And carol (standard, front end 3): the conference answers for her and puts her in
    // the chat in pager mode.
    let inv = with_body(
        fresh(&mut alice, "INVITE", &carol.aor(), &carol.aor()),
        "application/ms-conf-invite+xml",
        &invite_xml,
    );
    let r = signed(&mut alice, &mut a_sa, inv).await;
    assert_eq!(status(&r), 200, "{r}");
    let told = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert!(String::from_utf8_lossy(&told.body).contains("added you to a group chat"));
    // alice writes in the chat: bob gets it in his chat session (signed by front end 2),
    // carol as pager text (through front end 3).
    let msg = with_body(
        in_dialog(&mut alice, &a_chat, &a_answer, "MESSAGE"),
        "text/plain; charset=UTF-8",
        "hello both",
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, msg).await), 200);
    let got = next_request(&mut bob, is("MESSAGE"), Some(200)).await;
    b_sa.check(&got);
    assert_eq!(&got.body[..], b"hello both");
    assert_eq!(got.call_id(), b_chat.call_id(), "inside bob's chat session");
    let got = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"alice: hello both");
    // carol writes to the conference from front end 3: both Lync members get it.
    assert_eq!(write_to(&mut carol, &conf_aor, "carol here").await, 200);
    for (c, sa) in [(&mut alice, &a_sa), (&mut bob, &b_sa)] {
        let got = next_request(c, is("MESSAGE"), Some(200)).await;
        sa.check(&got);
        assert_eq!(&got.body[..], b"carol here");
    }
    // One conference in the CDR, organised by alice, with the three of them.
    let data = pool.data().await;
    eventually("the conference's counts", async || {
        let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
        let Some(c) = sessions.iter().find(|s| s.kind == "conference") else {
            return false;
        };
        data.cdr
            .session(&c.id)
            .await
            .unwrap()
            .is_some_and(|(_, ps)| ps.len() == 3 && ps.iter().map(|p| p.messages).sum::<i64>() == 2)
    })
    .await;
    let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
    let conferences: Vec<_> = sessions.iter().filter(|s| s.kind == "conference").collect();
    assert_eq!(conferences.len(), 1, "{sessions:?}");
    assert_eq!(conferences[0].organiser.as_deref(), Some(me.as_str()));
    let _ = body;
}

#[tokio::test]
async fn a_forged_or_stale_flow_token_is_refused() {
    let Some(pool) = Pool::start("pool::a_forged_or_stale_flow_token…", 2, &["alice", "bob"]).await
    else {
        return;
    };
    let mut bob = pool.client(2, "bob").await;
    let fe2 = pool.fe(2);
    let member = fe2.server.pool.as_ref().unwrap().member();
    // A stranger (not a front end) aims a request at bob's connection with a made-up
    // token, straight at front end 2.
    let mut stranger = fe2.client(Transport::Tcp, "alice").await;
    let mut m = stranger.message_to("bob", "forged");
    m.headers.push_front(
        HeaderName::Route,
        format!(
            "<sip:{};transport=tcp;lr;sbf={}.{}.1.0123456789abcdef>",
            fe2.addr(Transport::Tcp),
            member.fe,
            member.epoch
        ),
    );
    stranger.send(&m).await;
    let r = stranger.final_response().await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(bob.recv_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_crashed_front_end_is_reaped_its_devices_forgotten_and_its_sessions_closed() {
    let Some(mut pool) =
        Pool::start("pool::a_crashed_front_end…", 3, &["alice", "bob", "carol"]).await
    else {
        return;
    };
    // alice is on front end 1, bob on 2; the one of the two that keeps their
    // conversation dies, with carol on it too. Its user comes back on front end 3.
    let owner = pool.keeper("alice", "bob", &[1, 2]);
    let others: Vec<u32> = (1..=3).filter(|&id| id != owner).collect();
    let mut alice = pool.client(1, "alice").await;
    let mut bob = pool.client(2, "bob").await;
    let _carol = pool.client(owner, "carol").await;
    let m = bob.message_to("alice", "before the crash");
    send_challenged(&mut bob, m).await;
    alice.answer_next_request(200).await.expect("delivered");
    assert_eq!(status(&bob.final_response().await), 200);
    let data = pool.data().await;
    eventually("the conversation's session recorded", async || {
        data.cdr
            .sessions(&SessionFilter::default())
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    let dead_epoch = pool.fe(owner).server.pool.as_ref().unwrap().member().epoch;
    // It dies: no heartbeat, no goodbye.
    pool.fes[owner as usize - 1].take().unwrap().crash();
    let crashed = std::time::Instant::now();
    let membership = &data.pool.as_ref().unwrap().membership;
    loop {
        let ids: Vec<u32> = membership
            .members()
            .await
            .unwrap()
            .iter()
            .map(|m| m.fe)
            .collect();
        if ids == others {
            break;
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(8),
            "front end {owner} not reaped within 8 s: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Detected after the timeout (4 s) since its last heartbeat (at most a second before
    // the crash), not before.
    assert!(
        crashed.elapsed() >= Duration::from_secs(3),
        "{:?}",
        crashed.elapsed()
    );
    let sessions = data.cdr.sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].end_reason.as_deref(), Some("front end lost"));
    assert!(sessions[0].ended_at_ms.is_some());
    // Carol's device went with it.
    assert!(data
        .pool
        .as_ref()
        .unwrap()
        .location
        .bindings("sip:carol@example.com")
        .await
        .unwrap()
        .is_empty());
    // The survivors learn the pool has two members (at their next heartbeat).
    for id in &others {
        let p = pool.fe(*id).server.pool.as_ref().unwrap();
        eventually("the survivors see two members", async || {
            p.members().len() == 2
        })
        .await;
    }
    // Whichever of alice and bob was on it signs in on front end 3.
    if owner == 1 {
        alice = pool.client(3, "alice").await;
    } else {
        bob = pool.client(3, "bob").await;
    }
    // A message to carol is kept for when she is back...
    let m = alice.message_to("carol", "while you were away");
    let r = alice.send_authenticated(m).await;
    assert_eq!(status(&r), 202, "stored for later: {r}");
    // ...and alice and bob's next message opens a new session on a survivor.
    let m = bob.message_to("alice", "after the crash");
    send_challenged(&mut bob, m).await;
    alice.answer_next_request(200).await.expect("delivered");
    assert_eq!(status(&bob.final_response().await), 200);
    // Carol comes back on another front end and gets it, once.
    let mut carol = pool.fe(3).client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(Some(600)).await), 200);
    let got = match carol.inbox.pop_front() {
        Some(m) => m,
        None => carol
            .answer_next_request(200)
            .await
            .expect("the stored message"),
    };
    assert_eq!(&got.body[..], b"while you were away");
    assert!(carol
        .recv_within(Duration::from_millis(500))
        .await
        .is_none());
    // The dead front end's epoch is gone for good: nothing can be written under it.
    let stale = switchboard_core::pool::Membership {
        fe: owner,
        epoch: dead_epoch,
    };
    let device = switchboard_core::pool::OwnBinding {
        connection: 1,
        contact: "<sip:carol@192.0.2.1>".into(),
        expires_in: 600,
        lync: false,
    };
    assert!(data
        .pool
        .as_ref()
        .unwrap()
        .location
        .set_bindings(stale, &[("sip:carol@example.com".into(), vec![device])])
        .await
        .is_err());
}

#[tokio::test]
async fn a_watcher_sees_presence_published_on_another_front_end_and_its_loss() {
    use crate::presence::{availability, notify_until, publish_state, subscribe};
    let Some(mut pool) = Pool::start("pool::a_watcher_sees_presence…", 3, &["alice", "bob"]).await
    else {
        return;
    };
    let mut alice = pool.client(1, "alice").await;
    let mut bob = pool.client(2, "bob").await;
    let mut bob3 = pool.client(3, "bob").await;
    // Alice, on front end 1, watches bob: offline at first.
    let _sub = subscribe(&mut alice, "bob").await;
    notify_until(&mut alice, "bob offline", |d| availability(d) == "offline").await;
    // Bob's device on front end 2 publishes: alice sees it (one re-read on front end 1).
    publish_state(
        &mut bob,
        "open",
        "<rpid:activities><rpid:busy/></rpid:activities>",
    )
    .await;
    notify_until(&mut alice, "bob busy", |d| availability(d) == "busy").await;
    // His device on front end 3 says available: the aggregate across front ends.
    publish_state(&mut bob3, "open", "").await;
    notify_until(&mut alice, "bob available", |d| {
        availability(d) == "available"
    })
    .await;
    // Front end 3 dies: its device goes with it, bob is busy again for alice.
    pool.fes[2].take().unwrap().crash();
    let crashed = std::time::Instant::now();
    // (Reaped within five seconds of its last heartbeat: the client waits five per
    // NOTIFY.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    notify_until(&mut alice, "bob busy again", |d| availability(d) == "busy").await;
    assert!(
        crashed.elapsed() < Duration::from_secs(8),
        "{:?}",
        crashed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_lists_every_front_end_with_its_load() {
    let Some(pool) = Pool::start("pool::pool_status…", 3, &["alice"]).await else {
        return;
    };
    let _alice = pool.client(3, "alice").await;
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let status_json = || {
        let out = std::process::Command::new(bin)
            .args(["--database", &pool.db.url, "pool", "status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Within a heartbeat or two front end 3 reports alice registered there.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let v = loop {
        let v = status_json();
        if v["members"][2]["load"]["registered"] == 1 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["fe"], i as u64 + 1);
        let addr = pool.fe(i as u32 + 1).addr(Transport::Tcp).to_string();
        assert_eq!(m["sip_addr"], addr.as_str());
        assert!(m["heartbeat_age_ms"].as_i64().unwrap() < 3_000, "{m}");
    }
    assert!(members[2]["load"]["connections"].as_u64().unwrap() >= 1);
    // The table for people.
    let out = std::process::Command::new(bin)
        .args(["--database", &pool.db.url, "pool", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("   FE    EPOCH ADDRESS"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    // SQLite has no pool, and says so.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["--data-dir", dir.path().to_str().unwrap(), "pool", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pool"), "{err}");
}

#[tokio::test]
async fn a_front_end_on_sqlite_is_refused_with_a_reason() {
    let home = Home::dir_only();
    let mut cfg = switchboard::config::ServerConfig::with_defaults(home.dir.path().to_path_buf());
    cfg.front_end = Some(1);
    let lo = Listen::On(SocketAddr::from(([127, 0, 0, 1], 0)));
    (cfg.sip_udp, cfg.sip_tcp, cfg.sip_tls, cfg.http) = (lo, lo, lo, Listen::Off);
    let err = switchboard::server::start(cfg)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("--front-end needs a PostgreSQL database"),
        "{text}"
    );
}
