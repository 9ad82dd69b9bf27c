//! Lync IM over TCP, by Rust clients that sign in and sign every request as pidgin-sipe
//! does: a two-party session between two Lync clients (first message inline, in-dialog
//! MESSAGE both ways, typing INFO, BYE, CDR); and conferencing (C3P, MS-CONFBAS /
//! MS-CONFIM) and bridging: provisioning names the focus
//! factory; SERVICE getConferencingCapabilities and addConference; INVITE addUser at the
//! focus; the conference document naming the IM MCU; INVITE to the MCU; an ms-conf-invite
//! relayed to a Lync user and answered for a Digest user (who gets the chat in pager mode);
//! fan-out with Ms-Sender, signed; an ms-imdn report when a member's delivery fails;
//! roles and ejection by INFO; and a Lync INVITE to a Digest-only user bridged to pager mode.

use base64::Engine as _;
use sip_message::{HeaderName, Message, NameAddr};

use crate::lync::{lync_client, Association};
use crate::support::*;

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=message 5060 sip null\r\na=accept-types:text/plain\r\n";

/// A new dialog-creating (or out-of-dialog) request with its own Call-ID.
pub(crate) fn fresh(c: &mut Client, method: &str, uri: &str, to: &str) -> Message {
    let mut m = c.request(method, uri, to);
    m.headers
        .set(HeaderName::CallId, format!("{}@test", rand_hex()));
    m
}

pub(crate) fn with_body(mut m: Message, content_type: &str, body: &str) -> Message {
    m.headers.push(HeaderName::ContentType, content_type);
    m.body = bytes::Bytes::from(body.as_bytes().to_vec());
    m
}

/// A request inside the dialog `first` created (answered by `answer`).
pub(crate) fn in_dialog(
    c: &mut Client,
    first: &Message,
    answer: &Message,
    method: &str,
) -> Message {
    let target = NameAddr::parse(answer.headers.get(&HeaderName::Contact).unwrap())
        .unwrap()
        .uri
        .to_string();
    let mut m = c.request(method, &target, "sip:x@example.com");
    for h in [HeaderName::From, HeaderName::CallId] {
        m.headers.set(h.clone(), first.headers.get(&h).unwrap());
    }
    m.headers
        .set(HeaderName::To, answer.headers.get(&HeaderName::To).unwrap());
    m
}

/// Sends a signed request and returns its signed final response.
pub(crate) async fn signed(c: &mut Client, sa: &mut Association, mut m: Message) -> Message {
    sa.sign(&mut m);
    c.send(&m).await;
    let r = c.final_response().await;
    sa.check(&r);
    r
}

/// The next request `pick` accepts: from those already answered 200 while waiting, or
/// else the next to arrive (answered `status`, or not at all with `None`). Other
/// requests meanwhile are answered 200.
pub(crate) async fn next_request(
    c: &mut Client,
    pick: impl Fn(&Message) -> bool,
    status: Option<u16>,
) -> Message {
    if let Some(i) = c.inbox.iter().position(&pick) {
        return c.inbox.remove(i).unwrap();
    }
    loop {
        let m = c.recv().await.expect("a request");
        if !m.is_request() {
            continue;
        }
        if pick(&m) {
            if let Some(s) = status {
                let r = m.response(s, Some("uas"));
                c.send(&r).await;
            }
            return m;
        }
        let r = m.response(200, Some("uas"));
        c.send(&r).await;
    }
}

pub(crate) fn is(method: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.method().is_some_and(|x| x.to_string() == method)
}

pub(crate) fn body(m: &Message) -> msrtc::Element {
    msrtc::tree::parse(&m.body).unwrap_or_else(|e| panic!("{e}: {m}"))
}

pub(crate) fn cccp(op: &str, to: &str, from: &str, inner: &str) -> String {
    format!("<?xml version=\"1.0\"?><request xmlns=\"urn:ietf:params:xml:ns:cccp\" C3PVersion=\"1\" to=\"{to}\" from=\"{from}\" requestId=\"7\"><{op}>{inner}</{op}></request>")
}

/// A Lync chat INVITE from `c` to `to`, the first message `text` inline (MS-SIP
/// `ms-text-format`), unsigned.
fn chat_invite(c: &mut Client, to: &str, text: &str) -> Message {
    let first = base64::engine::general_purpose::STANDARD.encode(text);
    let mut invite = with_body(fresh(c, "INVITE", to, to), "application/sdp", SDP);
    invite.headers.push(
        HeaderName::from_wire("ms-text-format"),
        format!("text/plain; charset=UTF-8;ms-body={first}"),
    );
    invite.headers.push(HeaderName::Supported, "ms-sender");
    invite
}

/// Creates a conference at the focus factory as `c`; returns its focus URI.
pub(crate) async fn create_conference(c: &mut Client, sa: &mut Association) -> String {
    let me = c.aor();
    let factory = "sip:switchboard@example.com;gruu;opaque=app:conf:focusfactory";
    let add = with_body(
        fresh(c, "SERVICE", factory, factory),
        "application/cccp+xml",
        &cccp("addConference", factory, &me, ""),
    );
    let r = signed(c, sa, add).await;
    body(&r)
        .path("addConference/conference-info")
        .and_then(|c| c.attr("entity").map(str::to_owned))
        .expect("the focus URI")
}

/// Waits for the service to end both of a member's dialogs (chat and focus) by BYE.
async fn expect_both_ended(c: &mut Client, sa: &Association, chat: &Message, focus: &Message) {
    let mut ended = Vec::new();
    for _ in 0..2 {
        let bye = next_request(c, is("BYE"), Some(200)).await;
        sa.check(&bye);
        ended.push(bye.call_id().unwrap().to_owned());
    }
    ended.sort();
    let mut expected = vec![
        chat.call_id().unwrap().to_owned(),
        focus.call_id().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(ended, expected);
}

/// Joins the focus and the chat as a Lync client does; returns the chat INVITE and answer.
pub(crate) async fn join(
    c: &mut Client,
    sa: &mut Association,
    focus: &str,
    mcu: Option<&str>,
) -> (Message, Message, Message, Message) {
    let me = c.aor();
    let add_user = cccp(
        "addUser",
        focus,
        &me,
        &format!("<conferenceKeys confEntity=\"{focus}\"/><ci:user xmlns:ci=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{me}\"><ci:roles><ci:entry>attendee</ci:entry></ci:roles><ci:endpoint entity=\"{{1234}}\"/></ci:user>"),
    );
    let invite = with_body(
        fresh(c, "INVITE", focus, focus),
        "application/cccp+xml",
        &add_user,
    );
    let joined = signed(c, sa, invite.clone()).await;
    assert_eq!(status(&joined), 200, "{joined}");
    assert_eq!(body(&joined).attr("code"), Some("success"), "{joined}");
    let mcu = match mcu {
        Some(m) => m.to_owned(),
        None => {
            // The conference document names the IM MCU.
            let mut sub = fresh(c, "SUBSCRIBE", focus, focus);
            sub.headers.push(HeaderName::Event, "conference");
            sub.headers
                .push(HeaderName::Accept, "application/conference-info+xml");
            let r = signed(c, sa, sub).await;
            assert_eq!(status(&r), 200, "{r}");
            let notify = next_request(c, is("NOTIFY"), Some(200)).await;
            sa.check(&notify);
            let doc = body(&notify);
            assert_eq!(doc.attr("entity"), Some(focus));
            let entry = doc.path("conference-description/conf-uris/entry").unwrap();
            assert_eq!(entry.child("purpose").unwrap().text, "chat");
            entry.child("uri").unwrap().text.clone()
        }
    };
    let mut chat = with_body(fresh(c, "INVITE", &mcu, &mcu), "application/sdp", SDP);
    chat.headers.push(HeaderName::Supported, "ms-sender");
    let answer = signed(c, sa, chat.clone()).await;
    assert_eq!(status(&answer), 200, "{answer}");
    (invite, joined, chat, answer)
}

#[tokio::test]
async fn lync_conference_shared_with_a_standard_client() {
    let s = TestServer::start(&["alice", "bob", "carol"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let mut carol = s.client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);
    let me = alice.aor();

    // Provisioning names the focus factory.
    let mut prov = fresh(&mut alice, "SUBSCRIBE", &me, &me);
    prov.headers
        .push(HeaderName::Event, "vnd-microsoft-provisioning-v2");
    let r = signed(&mut alice, &mut a_sa, prov).await;
    let factory = body(&r)
        .children_named("provisionGroup")
        .find_map(|g| g.text_at("focusFactoryUri").map(str::to_owned))
        .expect("focusFactoryUri");
    assert_eq!(
        factory,
        "sip:switchboard@example.com;gruu;opaque=app:conf:focusfactory"
    );

    // The focus factory: capabilities, then a new conference.
    let caps = with_body(
        fresh(&mut alice, "SERVICE", &factory, &factory),
        "application/cccp+xml",
        &cccp("getConferencingCapabilities", &factory, &me, ""),
    );
    let r = signed(&mut alice, &mut a_sa, caps).await;
    assert_eq!(
        body(&r).text_at("getConferencingCapabilities/mcu-types/mcuType"),
        Some("chat"),
        "{r}"
    );
    let add = with_body(
        fresh(&mut alice, "SERVICE", &factory, &factory),
        "application/cccp+xml",
        &cccp(
            "addConference",
            &factory,
            &me,
            "<ci:conference-info xmlns:ci=\"urn:ietf:params:xml:ns:conference-info\" entity=\"\"><ci:conference-description><ci:subject>Plans</ci:subject></ci:conference-description></ci:conference-info>",
        ),
    );
    let r = signed(&mut alice, &mut a_sa, add).await;
    let focus = body(&r)
        .path("addConference/conference-info")
        .and_then(|c| c.attr("entity").map(str::to_owned))
        .expect("the focus URI");
    assert!(
        focus.contains(";opaque=app:conf:focus:id:"),
        "focus: {focus}"
    );
    let conf_aor = focus.split(';').next().unwrap().to_owned();

    // alice joins the focus and the chat.
    let (a_focus, a_focus_ok, a_chat, a_answer) = join(&mut alice, &mut a_sa, &focus, None).await;
    let mcu = a_chat.request_uri().unwrap().to_string();

    // alice invites bob (a Lync client): relayed to him; he joins by himself.
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
    assert_eq!(
        msrtc::cccp::parse_conf_invite(&got.body).unwrap().focus_uri,
        focus
    );
    assert_eq!(status(&alice.final_response().await), 200);
    let (b_focus, b_focus_ok, b_chat, _) = join(&mut bob, &mut b_sa, &focus, Some(&mcu)).await;

    // alice invites carol, who has no Lync device: the service answers and puts her in
    // the chat in pager mode.
    let inv = with_body(
        fresh(&mut alice, "INVITE", &carol.aor(), &carol.aor()),
        "application/ms-conf-invite+xml",
        &invite_xml,
    );
    let r = signed(&mut alice, &mut a_sa, inv).await;
    assert_eq!(status(&r), 200, "{r}");
    let told = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert!(told
        .headers
        .get(&HeaderName::From)
        .unwrap()
        .contains(&conf_aor));
    assert!(String::from_utf8_lossy(&told.body).contains("added you to a group chat"));

    // alice's roster shows all three in the chat, alice a presenter.
    let mut last = None;
    for _ in 0..10 {
        let n = next_request(&mut alice, is("NOTIFY"), Some(200)).await;
        let in_chat = body(&n)
            .child("users")
            .unwrap()
            .children_named("user")
            .filter(|u| {
                u.children_named("endpoint")
                    .any(|e| e.attr("session-type") == Some("chat"))
            })
            .count();
        last = Some(n);
        if in_chat == 3 {
            break;
        }
    }
    let roster = body(last.as_ref().unwrap());
    let alice_user = roster
        .child("users")
        .unwrap()
        .children_named("user")
        .find(|u| u.attr("entity") == Some(me.as_str()))
        .unwrap();
    assert_eq!(alice_user.text_at("roles/entry"), Some("presenter"));
    assert_eq!(
        roster
            .child("users")
            .unwrap()
            .children_named("user")
            .filter(|u| u
                .children_named("endpoint")
                .any(|e| e.attr("session-type") == Some("chat")))
            .count(),
        3,
        "{}",
        last.unwrap()
    );

    // alice writes: bob gets it as written with Ms-Sender, signed; carol as pager text.
    let msg = with_body(
        in_dialog(&mut alice, &a_chat, &a_answer, "MESSAGE"),
        "text/plain; charset=UTF-8",
        "hello both",
    );
    let r = signed(&mut alice, &mut a_sa, msg).await;
    assert_eq!(status(&r), 200);
    assert!(r.headers.has(&HeaderName::from_wire("Message-Id")), "{r}");
    let got = next_request(&mut bob, is("MESSAGE"), Some(200)).await;
    b_sa.check(&got);
    assert_eq!(&got.body[..], b"hello both");
    assert_eq!(
        got.headers.get(&HeaderName::from_wire("Ms-Sender")),
        Some(format!("<{me}>").as_str())
    );
    assert_eq!(got.call_id(), b_chat.call_id(), "inside bob's chat session");
    let got = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"alice: hello both");

    // bob's client fails the next delivery: alice gets an ms-imdn report naming him.
    let msg = with_body(
        in_dialog(&mut alice, &a_chat, &a_answer, "MESSAGE"),
        "text/plain; charset=UTF-8",
        "are you there?",
    );
    let mut msg_signed = msg;
    a_sa.sign(&mut msg_signed);
    alice.send(&msg_signed).await;
    next_request(&mut bob, is("MESSAGE"), Some(480)).await;
    let report = next_request(
        &mut alice,
        |m| {
            m.headers
                .get(&HeaderName::ContentType)
                .is_some_and(|c| c.starts_with("application/ms-imdn+xml"))
        },
        Some(200),
    )
    .await;
    a_sa.check(&report);
    let imdn = body(&report);
    assert_eq!(imdn.text_at("recipient/uri"), Some(bob.aor().as_str()));
    assert_eq!(imdn.text_at("recipient/status"), Some("480"));

    // carol writes to the conference (pager mode): both Lync clients get it from her.
    let mut m = carol.message_to("x", "carol here");
    m.start = sip_message::StartLine::Request {
        method: sip_message::Method::Message,
        uri: sip_message::Uri::parse(&conf_aor).unwrap(),
    };
    m.headers.set(HeaderName::To, format!("<{conf_aor}>"));
    assert_eq!(status(&carol.send_authenticated(m).await), 200);
    for (c, sa) in [(&mut alice, &a_sa), (&mut bob, &b_sa)] {
        let got = next_request(c, is("MESSAGE"), Some(200)).await;
        sa.check(&got);
        assert_eq!(&got.body[..], b"carol here");
        assert_eq!(
            got.headers.get(&HeaderName::from_wire("Ms-Sender")),
            Some("<sip:carol@example.com>")
        );
    }

    // Roles: bob, an attendee, may not eject anyone; alice, the organiser, may.
    let eject = |who: &str| {
        cccp(
            "deleteUser",
            &focus,
            "x",
            &format!("<userKeys confEntity=\"{focus}\" userEntity=\"{who}\"/>"),
        )
    };
    let info = with_body(
        in_dialog(&mut bob, &b_focus, &b_focus_ok, "INFO"),
        "application/cccp+xml",
        &eject("sip:carol@example.com"),
    );
    let r = signed(&mut bob, &mut b_sa, info).await;
    assert_eq!(status(&r), 200);
    assert_eq!(body(&r).attr("code"), Some("failure"), "{r}");
    assert_eq!(body(&r).attr("reason"), Some("notAuthorized"));
    let lock = with_body(
        in_dialog(&mut alice, &a_focus, &a_focus_ok, "INFO"),
        "application/cccp+xml",
        &cccp(
            "modifyConferenceLock",
            &focus,
            &me,
            &format!("<conferenceKeys confEntity=\"{focus}\"/><locked>true</locked>"),
        ),
    );
    let r = signed(&mut alice, &mut a_sa, lock).await;
    assert_eq!(body(&r).attr("code"), Some("success"), "{r}");
    let info = with_body(
        in_dialog(&mut alice, &a_focus, &a_focus_ok, "INFO"),
        "application/cccp+xml",
        &eject(&bob.aor()),
    );
    let r = signed(&mut alice, &mut a_sa, info).await;
    assert_eq!(body(&r).attr("code"), Some("success"), "{r}");
    // bob's chat and focus dialogs are ended by the service.
    expect_both_ended(&mut bob, &b_sa, &b_chat, &b_focus).await;
    // The conference is locked: bob cannot come back.
    let add_user = cccp(
        "addUser",
        &focus,
        &bob.aor(),
        &format!(
            "<conferenceKeys confEntity=\"{focus}\"/><ci:user xmlns:ci=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{}\"/>",
            bob.aor()
        ),
    );
    let again = with_body(
        fresh(&mut bob, "INVITE", &focus, &focus),
        "application/cccp+xml",
        &add_user,
    );
    assert_eq!(status(&signed(&mut bob, &mut b_sa, again).await), 403);

    // The CDR: one conference organised by alice with the three of them.
    let sessions = s
        .data()
        .await
        .cdr
        .sessions(&Default::default())
        .await
        .unwrap();
    let conf = sessions.iter().find(|x| x.kind == "conference").unwrap();
    assert_eq!(conf.organiser.as_deref(), Some(me.as_str()));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, people) = s.data().await.cdr.session(&conf.id).await.unwrap().unwrap();
    let row = |who: &str| {
        people
            .iter()
            .find(|p| p.address == who)
            .map(|p| (p.messages, p.left_at_ms.is_some()))
    };
    assert_eq!(row(&me), Some((2, false)), "{people:?}");
    assert_eq!(row("sip:bob@example.com"), Some((0, true)), "ejected");
    assert_eq!(row("sip:carol@example.com"), Some((1, false)));
}

#[tokio::test]
async fn lync_session_to_a_pager_only_user_is_bridged() {
    let s = TestServer::start(&["alice", "carol"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let mut carol = s.client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);

    let to = carol.aor();
    let invite = chat_invite(&mut alice, &to, "hello carol");
    let answer = signed(&mut alice, &mut a_sa, invite.clone()).await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(
        answer
            .headers
            .values(&HeaderName::Supported)
            .any(|v| v == "ms-text-format"),
        "the first message was taken: {answer}"
    );
    let got = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"hello carol");
    assert!(got
        .headers
        .get(&HeaderName::From)
        .unwrap()
        .contains("sip:alice@example.com"));

    let msg = with_body(
        in_dialog(&mut alice, &invite, &answer, "MESSAGE"),
        "text/plain; charset=UTF-8",
        "second line",
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, msg).await), 200);
    let got = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"second line");

    // carol's pager reply reaches alice's client.
    let reply = carol.message_to("alice", "hi alice");
    carol.send(&reply).await;
    let challenge = carol.final_response().await;
    let reply = carol.with_credentials(&reply, &challenge, "pw-carol", "MD5", 1);
    carol.send(&reply).await;
    let got = next_request(&mut alice, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"hi alice");
    assert_eq!(status(&carol.final_response().await), 200);

    let bye = in_dialog(&mut alice, &invite, &answer, "BYE");
    assert_eq!(status(&signed(&mut alice, &mut a_sa, bye).await), 200);
    // After BYE the dialog is gone: the service no longer knows it.
    let late = with_body(
        in_dialog(&mut alice, &invite, &answer, "MESSAGE"),
        "text/plain",
        "late",
    );
    let r = signed(&mut alice, &mut a_sa, late).await;
    assert_eq!(status(&r), 481, "{r}");

    // One two-party session, both sides counted.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let store = s.data().await.cdr;
    let sessions = store.sessions(&Default::default()).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].kind, "two-party");
    let (_, people) = store.session(&sessions[0].id).await.unwrap().unwrap();
    let count = |who: &str| people.iter().find(|p| p.address == who).map(|p| p.messages);
    assert_eq!(count("sip:alice@example.com"), Some(2));
    assert_eq!(count("sip:carol@example.com"), Some(1));
}

/// A member whose client no longer knows its chat session (481 to a fan-out MESSAGE) is
/// out of the chat; a conference whose members have all gone quiet for the session idle
/// time ends, and every member's focus and chat dialogs are ended by BYE.
#[tokio::test]
async fn dead_sessions_leave_and_idle_conferences_end() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        c.im.session_idle = std::time::Duration::from_secs(2);
    })
    .await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let me = alice.aor();
    let focus = create_conference(&mut alice, &mut a_sa).await;
    let conf_aor = focus.split(';').next().unwrap().to_owned();
    let (a_focus, _, a_chat, a_answer) = join(&mut alice, &mut a_sa, &focus, None).await;
    let mcu = a_chat.request_uri().unwrap().to_string();
    join(&mut bob, &mut b_sa, &focus, Some(&mcu)).await;
    let members = || {
        s.server
            .im
            .conference_members(&conf_aor)
            .unwrap_or_default()
    };
    assert_eq!(members().len(), 2);

    let msg = with_body(
        in_dialog(&mut alice, &a_chat, &a_answer, "MESSAGE"),
        "text/plain",
        "still there?",
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, msg).await), 200);
    next_request(&mut bob, is("MESSAGE"), Some(481)).await;
    for _ in 0..100 {
        if members().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(members(), vec![me.clone()], "bob is out of the chat");

    // Nobody speaks: after the session idle time the conference ends, and alice's
    // focus and chat dialogs are ended by the service.
    expect_both_ended(&mut alice, &a_sa, &a_chat, &a_focus).await;
    assert!(s.server.im.conferences().is_empty());
}

/// Two Lync clients chat in session mode through the server (MS-SIP §3.1.4): the INVITE
/// carries the first message in `ms-text-format`; MESSAGE both ways and a typing INFO in
/// the dialog; BYE. Every message the server relays to a Lync client is signed on that
/// client's association; the CDR counts each side's messages.
#[tokio::test]
async fn two_party_session_between_lync_clients() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let to = bob.aor();
    let invite = chat_invite(&mut alice, &to, "hi bob");
    let first = base64::engine::general_purpose::STANDARD.encode("hi bob");
    let mut sent = invite.clone();
    a_sa.sign(&mut sent);
    alice.send(&sent).await;
    let got = next_request(&mut bob, is("INVITE"), None).await;
    b_sa.check(&got);
    assert!(got
        .headers
        .get(&HeaderName::from_wire("ms-text-format"))
        .unwrap()
        .ends_with(&first));
    let mut ok = got.response(200, Some("bobtag"));
    ok.headers.push(HeaderName::Contact, bob.contact());
    ok.headers.push(HeaderName::Supported, "ms-text-format");
    ok.headers.push(HeaderName::ContentType, "application/sdp");
    ok.body = bytes::Bytes::from_static(SDP.as_bytes());
    bob.send(&ok).await;
    let answer = alice.final_response().await;
    a_sa.check(&answer);
    assert_eq!(status(&answer), 200, "{answer}");

    // alice writes in the dialog, then shows she is typing.
    let msg = with_body(
        in_dialog(&mut alice, &invite, &answer, "MESSAGE"),
        "text/plain; charset=UTF-8",
        "second line",
    );
    let mut sent = msg;
    a_sa.sign(&mut sent);
    alice.send(&sent).await;
    let got = next_request(&mut bob, is("MESSAGE"), Some(200)).await;
    b_sa.check(&got);
    assert_eq!(&got.body[..], b"second line");
    let r = alice.final_response().await;
    a_sa.check(&r);
    assert_eq!(status(&r), 200);
    let typing = with_body(
        in_dialog(&mut alice, &invite, &answer, "INFO"),
        "application/xml",
        "<?xml version=\"1.0\"?><KeyboardActivity><status status=\"type\" /></KeyboardActivity>",
    );
    let mut sent = typing;
    a_sa.sign(&mut sent);
    alice.send(&sent).await;
    let got = next_request(&mut bob, is("INFO"), Some(200)).await;
    assert!(String::from_utf8_lossy(&got.body).contains("KeyboardActivity"));
    assert_eq!(status(&alice.final_response().await), 200);

    // bob answers inside the same dialog (towards alice's Contact).
    let mut reply = bob.request(
        "MESSAGE",
        alice.contact().trim_matches(['<', '>']),
        &alice.aor(),
    );
    reply
        .headers
        .set(HeaderName::CallId, invite.call_id().unwrap());
    reply
        .headers
        .set(HeaderName::From, format!("<{}>;tag=bobtag", bob.aor()));
    reply.headers.set(
        HeaderName::To,
        invite.headers.get(&HeaderName::From).unwrap(),
    );
    let reply = with_body(reply, "text/plain; charset=UTF-8", "hello alice");
    let mut sent = reply;
    b_sa.sign(&mut sent);
    bob.send(&sent).await;
    let got = next_request(&mut alice, is("MESSAGE"), Some(200)).await;
    a_sa.check(&got);
    assert_eq!(&got.body[..], b"hello alice");
    assert_eq!(status(&bob.final_response().await), 200);

    let bye = in_dialog(&mut alice, &invite, &answer, "BYE");
    let mut sent = bye;
    a_sa.sign(&mut sent);
    alice.send(&sent).await;
    next_request(&mut bob, is("BYE"), Some(200)).await;
    assert_eq!(status(&alice.final_response().await), 200);

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let store = s.data().await.cdr;
    let sessions = store.sessions(&Default::default()).await.unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].end_reason.as_deref(), Some("bye"));
    let (_, people) = store.session(&sessions[0].id).await.unwrap().unwrap();
    let count = |who: &str| people.iter().find(|p| p.address == who).map(|p| p.messages);
    assert_eq!(count("sip:alice@example.com"), Some(2), "{people:?}");
    assert_eq!(count("sip:bob@example.com"), Some(1), "{people:?}");
}

/// A standard client turns its chat into a group chat (`/invite`): the Lync users put in
/// it are invited into the conference with an `ms-conf-invite` from it (acknowledged by
/// the server once they accept) and join it as a Lync conference; the standard user
/// gets the pager notice; then everyone's messages reach everyone.
#[tokio::test]
async fn standard_user_brings_lync_users_into_a_conference() {
    let s = TestServer::start(&["alice", "bob", "carol"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let mut carol = s.client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);

    let cmd = carol.message_to("alice", "/invite bob@example.com");
    assert_eq!(status(&carol.send_authenticated(cmd).await), 200);
    let mut focus = String::new();
    for (c, sa) in [(&mut alice, &a_sa), (&mut bob, &b_sa)] {
        let inv = next_request(c, is("INVITE"), None).await;
        sa.check(&inv);
        assert!(inv
            .headers
            .get(&HeaderName::ContentType)
            .unwrap()
            .starts_with("application/ms-conf-invite+xml"));
        focus = msrtc::cccp::parse_conf_invite(&inv.body).unwrap().focus_uri;
        let mut ok = inv.response(200, Some("accepts"));
        ok.headers.push(HeaderName::Contact, c.contact());
        c.send(&ok).await;
        let ack = next_request(c, is("ACK"), None).await;
        assert_eq!(ack.call_id(), inv.call_id());
    }
    let conf_aor = focus.split(';').next().unwrap().to_owned();
    let told = next_request(&mut carol, is("MESSAGE"), Some(200)).await;
    assert!(String::from_utf8_lossy(&told.body).contains("started a group chat"));
    assert!(told
        .headers
        .get(&HeaderName::From)
        .unwrap()
        .contains(&conf_aor));

    let to_group = |carol: &mut Client, text: &str| {
        let mut m = carol.message_to("x", text);
        m.start = sip_message::StartLine::Request {
            method: sip_message::Method::Message,
            uri: sip_message::Uri::parse(&conf_aor).unwrap(),
        };
        m.headers.set(HeaderName::To, format!("<{conf_aor}>"));
        m
    };
    // carol writes before the Lync clients are in the chat: it is held for them.
    let early = to_group(&mut carol, "early bird");
    assert_eq!(status(&carol.send_authenticated(early).await), 200);

    // The Lync clients join the conference they were invited to, and get what was held.
    let (_, _, a_chat, _) = join(&mut alice, &mut a_sa, &focus, None).await;
    let mcu = a_chat.request_uri().unwrap().to_string();
    join(&mut bob, &mut b_sa, &focus, Some(&mcu)).await;
    let later = to_group(&mut carol, "hello Lync people");
    assert_eq!(status(&carol.send_authenticated(later).await), 200);
    for (c, sa) in [(&mut alice, &a_sa), (&mut bob, &b_sa)] {
        for text in ["early bird", "hello Lync people"] {
            let got = next_request(c, is("MESSAGE"), Some(200)).await;
            sa.check(&got);
            assert_eq!(String::from_utf8_lossy(&got.body), text);
            assert_eq!(
                got.headers.get(&HeaderName::from_wire("Ms-Sender")),
                Some("<sip:carol@example.com>")
            );
        }
    }
}

/// A user in a conference from two Lync endpoints (MPOP): each endpoint has its own focus
/// and chat sessions; both get what others write, each gets a copy of what the other
/// wrote; one endpoint leaving leaves the user in the chat on the other.
#[tokio::test]
async fn one_user_in_a_conference_from_two_endpoints() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let (mut desk, mut d_sa) = lync_client(&s, "alice").await;
    let (mut laptop, mut l_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let me = desk.aor();
    let focus = create_conference(&mut desk, &mut d_sa).await;
    let conf_aor = focus.split(';').next().unwrap().to_owned();
    let (d_focus, d_focus_ok, d_chat, d_answer) = join(&mut desk, &mut d_sa, &focus, None).await;
    let mcu = d_chat.request_uri().unwrap().to_string();
    let (_, _, l_chat, l_answer) = join(&mut laptop, &mut l_sa, &focus, Some(&mcu)).await;
    let (_, _, b_chat, b_answer) = join(&mut bob, &mut b_sa, &focus, Some(&mcu)).await;

    // bob writes: both of alice's endpoints get it.
    let msg = with_body(
        in_dialog(&mut bob, &b_chat, &b_answer, "MESSAGE"),
        "text/plain",
        "to both of you",
    );
    assert_eq!(status(&signed(&mut bob, &mut b_sa, msg).await), 200);
    for (c, sa) in [(&mut desk, &d_sa), (&mut laptop, &l_sa)] {
        let got = next_request(c, is("MESSAGE"), Some(200)).await;
        sa.check(&got);
        assert_eq!(&got.body[..], b"to both of you");
    }
    // alice writes from her desk: bob gets it, and her laptop a copy.
    let msg = with_body(
        in_dialog(&mut desk, &d_chat, &d_answer, "MESSAGE"),
        "text/plain",
        "from the desk",
    );
    assert_eq!(status(&signed(&mut desk, &mut d_sa, msg).await), 200);
    for (c, sa, call_id) in [
        (&mut bob, &b_sa, b_chat.call_id().unwrap()),
        (&mut laptop, &l_sa, l_chat.call_id().unwrap()),
    ] {
        let got = next_request(c, is("MESSAGE"), Some(200)).await;
        sa.check(&got);
        assert_eq!(&got.body[..], b"from the desk");
        assert_eq!(got.call_id(), Some(call_id));
    }

    // The desk leaves (focus, then chat); alice is still in the chat on her laptop.
    let bye = in_dialog(&mut desk, &d_focus, &d_focus_ok, "BYE");
    assert_eq!(status(&signed(&mut desk, &mut d_sa, bye).await), 200);
    let bye = in_dialog(&mut desk, &d_chat, &d_answer, "BYE");
    assert_eq!(status(&signed(&mut desk, &mut d_sa, bye).await), 200);
    let members = s.server.im.conference_members(&conf_aor).unwrap();
    assert!(members.contains(&me), "{members:?}");
    let msg = with_body(
        in_dialog(&mut bob, &b_chat, &b_answer, "MESSAGE"),
        "text/plain",
        "still there?",
    );
    assert_eq!(status(&signed(&mut bob, &mut b_sa, msg).await), 200);
    let got = next_request(&mut laptop, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"still there?");
    // And the laptop writes on.
    let msg = with_body(
        in_dialog(&mut laptop, &l_chat, &l_answer, "MESSAGE"),
        "text/plain",
        "yes",
    );
    assert_eq!(status(&signed(&mut laptop, &mut l_sa, msg).await), 200);
    let got = next_request(&mut bob, is("MESSAGE"), Some(200)).await;
    assert_eq!(&got.body[..], b"yes");
}

/// Bad conference requests get clear errors: a body that is not C3P (415), C3P that does
/// not parse (400), a focus that does not exist (404), someone joining in another's name
/// (403), INFO from outside the conference (481), an unparsable or unknown invitation
/// (400, 404), and an invitation from someone not in the conference (403).
#[tokio::test]
async fn bad_conference_requests_get_clear_errors() {
    let s = TestServer::start(&["alice", "bob", "carol"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let mut carol = s.client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);
    let me = alice.aor();
    let factory = "sip:switchboard@example.com;gruu;opaque=app:conf:focusfactory";

    let m = with_body(
        fresh(&mut alice, "SERVICE", factory, factory),
        "text/plain",
        "addConference please",
    );
    let r = signed(&mut alice, &mut a_sa, m).await;
    assert_eq!(status(&r), 415, "{r}");
    assert_eq!(
        r.headers.get(&HeaderName::Accept),
        Some("application/cccp+xml")
    );
    let m = with_body(
        fresh(&mut alice, "SERVICE", factory, factory),
        "application/cccp+xml",
        "<request><addConference",
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, m).await), 400);

    let nowhere = "sip:chat-00000000@example.com;gruu;opaque=app:conf:focus:id:00000000";
    let add_user = |who: &str, focus: &str| {
        cccp(
            "addUser",
            focus,
            who,
            &format!("<conferenceKeys confEntity=\"{focus}\"/><ci:user xmlns:ci=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{who}\"/>"),
        )
    };
    let m = with_body(
        fresh(&mut alice, "INVITE", nowhere, nowhere),
        "application/cccp+xml",
        &add_user(&me, nowhere),
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, m).await), 404);

    // A real conference, which alice joins.
    let focus = create_conference(&mut alice, &mut a_sa).await;
    join(&mut alice, &mut a_sa, &focus, None).await;

    // bob may not join as alice, nor steer a conference he is not in.
    let m = with_body(
        fresh(&mut bob, "INVITE", &focus, &focus),
        "application/cccp+xml",
        &add_user(&me, &focus),
    );
    assert_eq!(status(&signed(&mut bob, &mut b_sa, m).await), 403);
    let mut info = with_body(
        fresh(&mut bob, "INFO", &focus, &focus),
        "application/cccp+xml",
        &cccp(
            "modifyConferenceLock",
            &focus,
            &bob.aor(),
            "<locked>true</locked>",
        ),
    );
    info.headers
        .set(HeaderName::To, format!("<{focus}>;tag=not-a-dialog"));
    assert_eq!(status(&signed(&mut bob, &mut b_sa, info).await), 481);

    // Invitations: unparsable, to a conference that does not exist, from an outsider.
    let invite = |c: &mut Client, to: &str, body: &str| {
        with_body(
            fresh(c, "INVITE", to, to),
            "application/ms-conf-invite+xml",
            body,
        )
    };
    let carol_aor = carol.aor();
    let m = invite(&mut alice, &carol_aor, "<Conferencing");
    assert_eq!(status(&signed(&mut alice, &mut a_sa, m).await), 400);
    let m = invite(
        &mut alice,
        &carol_aor,
        &msrtc::cccp::conf_invite(nowhere, "x"),
    );
    assert_eq!(status(&signed(&mut alice, &mut a_sa, m).await), 404);
    let m = invite(&mut bob, &carol_aor, &msrtc::cccp::conf_invite(&focus, "x"));
    assert_eq!(status(&signed(&mut bob, &mut b_sa, m).await), 403);
}

/// MS-SIPAE §3.3.5.2: a Lync client signs its responses too. An unsigned one is not
/// taken (the server drops it as if lost) and ends the client's association: its next
/// request, however well signed, is challenged (407) like any unauthenticated one, and
/// the client must sign in again.
#[tokio::test]
async fn unsigned_response_from_a_lync_client_is_refused() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let (mut bob, mut b_sa) = lync_client(&s, "bob").await;
    let bob_aor = bob.aor();
    let m = with_body(
        fresh(&mut alice, "MESSAGE", &bob_aor, &bob_aor),
        "text/plain",
        "hello",
    );
    let mut m = m;
    a_sa.sign(&mut m);
    alice.send(&m).await;
    bob.response_signer = None;
    next_request(&mut bob, is("MESSAGE"), Some(200)).await;
    let mut sub = fresh(&mut bob, "SUBSCRIBE", &bob_aor, &bob_aor);
    sub.headers
        .push(HeaderName::Event, "vnd-microsoft-roaming-contacts");
    b_sa.sign(&mut sub);
    bob.send(&sub).await;
    assert_eq!(status(&bob.final_response().await), 407);
}

/// Creating conferences costs a client nothing and each holds state until it idles out:
/// one user may organise 100 at a time; the next addConference is refused with a reason.
#[tokio::test]
async fn one_user_cannot_open_conferences_without_end() {
    let s = TestServer::start(&["alice"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    for _ in 0..100 {
        create_conference(&mut alice, &mut a_sa).await;
    }
    let me = alice.aor();
    let factory = "sip:switchboard@example.com;gruu;opaque=app:conf:focusfactory";
    let add = with_body(
        fresh(&mut alice, "SERVICE", factory, factory),
        "application/cccp+xml",
        &cccp("addConference", factory, &me, ""),
    );
    let r = signed(&mut alice, &mut a_sa, add).await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(r
        .headers
        .get(&HeaderName::Warning)
        .unwrap()
        .contains("too many open group chats"));
    assert_eq!(s.server.im.conferences().len(), 100);
}

/// The service answers bridged INVITEs itself, so one caller may hold only 100 bridged
/// sessions at a time; the next is refused with a reason.
#[tokio::test]
async fn one_user_cannot_open_bridges_without_end() {
    let s = TestServer::start(&["alice", "carol"]).await;
    let (mut alice, mut a_sa) = lync_client(&s, "alice").await;
    let mut carol = s.client(Transport::Tcp, "carol").await;
    assert_eq!(status(&carol.register(None).await), 200);
    let to = carol.aor();
    let bridged = |alice: &mut Client| {
        let mut invite = with_body(fresh(alice, "INVITE", &to, &to), "application/sdp", SDP);
        invite.headers.push(HeaderName::Supported, "ms-sender");
        invite
    };
    for _ in 0..100 {
        let invite = bridged(&mut alice);
        assert_eq!(status(&signed(&mut alice, &mut a_sa, invite).await), 200);
    }
    let invite = bridged(&mut alice);
    let r = signed(&mut alice, &mut a_sa, invite).await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(r
        .headers
        .get(&HeaderName::Warning)
        .unwrap()
        .contains("too many"));
}
