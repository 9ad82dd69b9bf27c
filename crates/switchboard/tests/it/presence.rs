//! The presence service over sockets: PUBLISH (RFC 3903), SUBSCRIBE/NOTIFY (RFC 6665,
//! RFC 3856), aggregation over devices, privacy levels, resource lists (RFC 4662),
//! watcher information (RFC 3857/3858), and the CLI and HTTP paths.

use std::time::Duration;

use sip_message::{HeaderName, Message, NameAddr};
use switchboard_store::{
    Address, CalendarEntry, CalendarKind, ContactCard, ManualState, Relationship,
};

use crate::support::*;
use crate::test_data::{TestData, USER_READS};
use switchboard::server::PresenceSources;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// No pacing, so each change is one NOTIFY (the pacing test sets its own).
fn unpaced(c: &mut switchboard::config::ServerConfig) {
    c.presence.notify_interval = Duration::ZERO;
}

async fn registered(s: &TestServer, user: &str) -> Client {
    let mut c = s.client(Transport::Udp, user).await;
    assert_eq!(status(&c.register(None).await), 200);
    c
}

pub(crate) fn pidf(entity: &str, basic: &str, person: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{entity}\"><tuple id=\"t\"><status><basic>{basic}</basic></status></tuple><dm:person id=\"p\">{person}</dm:person></presence>"
    )
}

/// A PUBLISH of the client's own presence: body (PIDF) and/or SIP-If-Match.
pub(crate) fn publish_request(
    c: &mut Client,
    body: Option<&str>,
    etag: Option<&str>,
    expires: Option<u32>,
) -> Message {
    let aor = c.aor();
    let mut m = c.request("PUBLISH", &aor, &aor);
    m.headers.remove(&HeaderName::Contact);
    m.headers.push(HeaderName::Event, "presence");
    if let Some(e) = expires {
        m.headers.push(HeaderName::Expires, e.to_string());
    }
    if let Some(t) = etag {
        m.headers.push(HeaderName::from_wire("SIP-If-Match"), t);
    }
    if let Some(b) = body {
        m.headers
            .push(HeaderName::ContentType, "application/pidf+xml");
        m.body = bytes::Bytes::from(b.as_bytes().to_vec());
    }
    m
}

pub(crate) async fn publish(
    c: &mut Client,
    body: Option<&str>,
    etag: Option<&str>,
    expires: Option<u32>,
) -> (u16, Option<String>) {
    let m = publish_request(c, body, etag, expires);
    let r = c.send_authenticated(m).await;
    (
        status(&r),
        r.headers
            .get(&HeaderName::from_wire("SIP-ETag"))
            .map(str::to_owned),
    )
}

pub(crate) async fn publish_state(c: &mut Client, basic: &str, person: &str) -> String {
    let body = pidf(&c.aor(), basic, person);
    let (st, etag) = publish(c, Some(&body), None, Some(600)).await;
    assert_eq!(st, 200);
    etag.expect("SIP-ETag")
}

/// A subscription as the subscriber holds it.
pub(crate) struct Sub {
    request: Message,
    to_tag: String,
}

pub(crate) async fn subscribe_with(
    c: &mut Client,
    to_user: &str,
    event: &str,
    extra: &[(&str, &str)],
    expires: u32,
) -> (Message, Option<Sub>) {
    let to = if to_user.contains('@') {
        format!("sip:{to_user}")
    } else {
        format!("sip:{to_user}@example.com")
    };
    c.call_id = format!("{}@test", rand_hex());
    let mut m = c.request("SUBSCRIBE", &to, &to);
    m.headers.push(HeaderName::Event, event);
    m.headers.push(HeaderName::Expires, expires.to_string());
    for (n, v) in extra {
        m.headers.push(HeaderName::from_wire(n), *v);
    }
    let r = c.send_authenticated(m.clone()).await;
    let sub = (status(&r) == 200).then(|| Sub {
        // The request as finally sent carries the From tag the server keeps.
        request: m,
        to_tag: NameAddr::parse(r.headers.get(&HeaderName::To).unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_owned(),
    });
    (r, sub)
}

pub(crate) async fn subscribe(c: &mut Client, to_user: &str) -> Sub {
    let (r, sub) = subscribe_with(c, to_user, "presence", &[], 600).await;
    assert_eq!(status(&r), 200, "{r}");
    sub.unwrap()
}

/// A refresh (or with 0, an end) inside the subscription's dialog.
async fn resubscribe(c: &mut Client, sub: &Sub, expires: u32) -> Message {
    let mut m = sub.request.clone();
    let to = m.headers.get(&HeaderName::To).unwrap().to_owned();
    m.headers
        .set(HeaderName::To, format!("{to};tag={}", sub.to_tag));
    m.headers.set(HeaderName::Expires, expires.to_string());
    c.cseq += 10;
    m.headers
        .set(HeaderName::CSeq, format!("{} SUBSCRIBE", c.cseq));
    m.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK{};rport",
            c.local.port(),
            rand_hex()
        ),
    );
    c.send_authenticated(m).await
}

/// The next NOTIFY (answered `answer`), from what arrived meanwhile or the wire.
pub(crate) async fn next_notify_answered(c: &mut Client, answer: u16) -> Option<Message> {
    if let Some(i) = c
        .inbox
        .iter()
        .position(|m| m.method().map(|m| m.as_str()) == Some("NOTIFY"))
    {
        return c.inbox.remove(i);
    }
    loop {
        let m = c.recv().await?;
        if m.is_request() {
            let resp = m.response(answer, Some("watcher"));
            c.send(&resp).await;
            if m.method().map(|m| m.as_str()) == Some("NOTIFY") {
                return Some(m);
            }
        }
    }
}

async fn next_notify(c: &mut Client) -> Message {
    next_notify_answered(c, 200).await.expect("a NOTIFY")
}

pub(crate) fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// NOTIFYs until one whose body satisfies `pred` (state changes may arrive in steps).
pub(crate) async fn notify_until(
    c: &mut Client,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Message {
    for _ in 0..10 {
        let n = next_notify_answered(c, 200)
            .await
            .unwrap_or_else(|| panic!("no NOTIFY showing {what}"));
        if pred(&body(&n)) {
            return n;
        }
    }
    panic!("no NOTIFY showing {what}");
}

pub(crate) fn availability(doc: &str) -> &str {
    let i = doc.find("availability=\"").expect("sb:state") + 14;
    let j = doc[i..].find('"').unwrap();
    &doc[i..i + j]
}

fn sub_state(m: &Message) -> String {
    m.headers
        .get(&HeaderName::from_wire("Subscription-State"))
        .unwrap()
        .to_owned()
}

/// What the service shows `aor` of their own availability.
async fn own_availability(s: &TestServer, aor: &str) -> String {
    let view = s.server.presence.view(aor, None).await.unwrap();
    view.availability.as_str().to_owned()
}

/// The server's data, as the CLI writes it.
async fn store(s: &TestServer) -> switchboard_store::data::Data {
    s.data().await
}

#[tokio::test]
async fn publish_etags_refresh_modify_remove_and_errors() {
    let s = TestServer::start(&["alice", "bob"]).await;
    let mut a = registered(&s, "alice").await;
    let open = pidf(&a.aor(), "open", "");
    // RFC 3903 §6: an initial PUBLISH needs a body; the body must be PIDF and parse.
    assert_eq!(publish(&mut a, None, None, Some(600)).await.0, 400);
    let mut m = publish_request(&mut a, Some(&open), None, Some(600));
    m.headers.set(HeaderName::ContentType, "text/plain");
    let r = a.send_authenticated(m).await;
    assert_eq!(status(&r), 415);
    assert!(r
        .headers
        .get(&HeaderName::Accept)
        .unwrap()
        .contains("application/pidf+xml"));
    assert_eq!(
        publish(&mut a, Some("<presence><tuple>"), None, Some(600))
            .await
            .0,
        400
    );
    let m = publish_request(&mut a, Some(&open), None, Some(5));
    let r = a.send_authenticated(m).await;
    assert_eq!(status(&r), 423);
    assert_eq!(r.headers.get(&HeaderName::MinExpires), Some("60"));
    let mut m = publish_request(&mut a, Some(&open), None, Some(600));
    m.headers.set(HeaderName::Event, "dialog");
    let r = a.send_authenticated(m).await;
    assert_eq!(status(&r), 489);
    assert!(r
        .headers
        .get(&HeaderName::AllowEvents)
        .unwrap()
        .contains("presence"));
    // Only the user publishes their own presence.
    let mut m = publish_request(&mut a, Some(&open), None, Some(600));
    if let sip_message::StartLine::Request { uri, .. } = &mut m.start {
        *uri = sip_message::Uri::parse("sip:bob@example.com").unwrap();
    }
    assert_eq!(status(&a.send_authenticated(m).await), 403);

    // Initial, refresh (new tag each time), modify, stale tag, remove.
    let m = publish_request(&mut a, Some(&open), None, Some(99_999));
    let r = a.send_authenticated(m).await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        r.headers.get(&HeaderName::Expires),
        Some("3600"),
        "clamped to the maximum"
    );
    let t1 = r
        .headers
        .get(&HeaderName::from_wire("SIP-ETag"))
        .unwrap()
        .to_owned();
    let (st, t2) = publish(&mut a, None, Some(&t1), Some(600)).await;
    assert_eq!(st, 200);
    let t2 = t2.unwrap();
    assert_ne!(t1, t2);
    assert_eq!(
        publish(&mut a, None, Some(&t1), Some(600)).await.0,
        412,
        "old tag"
    );
    let busy = pidf(
        &a.aor(),
        "open",
        "<rpid:activities><rpid:busy/></rpid:activities>",
    );
    let (st, t3) = publish(&mut a, Some(&busy), Some(&t2), Some(600)).await;
    assert_eq!(st, 200);
    let alice = "sip:alice@example.com";
    assert_eq!(own_availability(&s, alice).await, "busy");
    assert_eq!(publish(&mut a, None, t3.as_deref(), Some(0)).await.0, 200);
    assert_eq!(own_availability(&s, alice).await, "offline");
    assert_eq!(
        publish(&mut a, None, t3.as_deref(), Some(600)).await.0,
        412,
        "removed"
    );
}

#[tokio::test]
async fn subscribe_notify_refresh_unsubscribe_and_errors() {
    let s = TestServer::start_with(&["alice", "bob", "carol"], unpaced).await;
    let mut b = registered(&s, "bob").await;
    // Nobody published: offline, not an error.
    let sub = subscribe(&mut b, "alice").await;
    let n = next_notify(&mut b).await;
    assert!(sub_state(&n).starts_with("active;expires="), "{n}");
    assert_eq!(n.headers.get(&HeaderName::Event), Some("presence"));
    assert_eq!(
        n.headers.get(&HeaderName::ContentType),
        Some("application/pidf+xml")
    );
    assert!(body(&n).contains("<basic>closed</basic>"));
    // The NOTIFY belongs to the dialog the 200 created.
    let from = NameAddr::parse(n.headers.get(&HeaderName::From).unwrap()).unwrap();
    assert_eq!(from.tag(), Some(sub.to_tag.as_str()));
    assert_eq!(n.call_id(), sub.request.call_id());

    // Refresh: 200 and a NOTIFY (RFC 6665 §4.2.1.2).
    let r = resubscribe(&mut b, &sub, 300).await;
    assert_eq!(status(&r), 200);
    assert_eq!(r.headers.get(&HeaderName::Expires), Some("300"));
    assert!(sub_state(&next_notify(&mut b).await).starts_with("active"));
    // Someone else cannot take the dialog over, even knowing its Call-ID and tags: for
    // them there is no such dialog (a dialog is its subscriber's).
    let mut c = registered(&s, "carol").await;
    let mut stolen = sub.request.clone();
    let tag = NameAddr::parse(stolen.headers.get(&HeaderName::From).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    stolen.headers.set(
        HeaderName::From,
        format!("<sip:carol@example.com>;tag={tag}"),
    );
    let r = resubscribe(
        &mut c,
        &Sub {
            request: stolen.clone(),
            to_tag: sub.to_tag.clone(),
        },
        0,
    )
    .await;
    assert_eq!(status(&r), 481);
    // A client of carol's that happens to pick bob's Call-ID and tag (two pidgin-sipe
    // started in the same second do) gets a subscription of its own, beside bob's.
    stolen.headers.set(HeaderName::Contact, c.contact());
    c.cseq += 10;
    stolen
        .headers
        .set(HeaderName::CSeq, format!("{} SUBSCRIBE", c.cseq));
    stolen.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK{};rport",
            c.local.port(),
            rand_hex()
        ),
    );
    let r = c.send_authenticated(stolen.clone()).await;
    assert_eq!(status(&r), 200);
    assert!(sub_state(&next_notify(&mut c).await).starts_with("active"));
    let carols = Sub {
        request: stolen,
        to_tag: NameAddr::parse(r.headers.get(&HeaderName::To).unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_owned(),
    };
    assert_eq!(status(&resubscribe(&mut c, &carols, 0).await), 200);
    assert_eq!(
        sub_state(&next_notify(&mut c).await),
        "terminated;reason=timeout"
    );
    // Unsubscribe: a final NOTIFY, then the dialog is gone.
    assert_eq!(status(&resubscribe(&mut b, &sub, 0).await), 200);
    let n = next_notify(&mut b).await;
    assert_eq!(sub_state(&n), "terminated;reason=timeout");
    assert_eq!(status(&resubscribe(&mut b, &sub, 300).await), 481);

    // Errors: unknown package, too short, unknown user, winfo of someone else, Accept.
    let (r, _) = subscribe_with(&mut b, "alice", "dialog", &[], 600).await;
    assert_eq!(status(&r), 489);
    assert!(r
        .headers
        .get(&HeaderName::AllowEvents)
        .unwrap()
        .contains("presence.winfo"));
    let (r, _) = subscribe_with(&mut b, "alice", "presence", &[], 10).await;
    assert_eq!(status(&r), 423);
    let (r, _) = subscribe_with(&mut b, "nobody", "presence", &[], 600).await;
    assert_eq!(status(&r), 404);
    let (r, _) = subscribe_with(&mut b, "alice", "presence.winfo", &[], 600).await;
    assert_eq!(status(&r), 403);
    let (r, _) = subscribe_with(
        &mut b,
        "alice",
        "presence",
        &[("Accept", "text/plain")],
        600,
    )
    .await;
    assert_eq!(status(&r), 406);

    // A fetch (Expires: 0): one NOTIFY with the state, terminated.
    let (r, _) = subscribe_with(&mut b, "alice", "presence", &[], 0).await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        sub_state(&next_notify(&mut b).await),
        "terminated;reason=timeout"
    );

    // A NOTIFY answered 481 ends the subscription (RFC 6665 §4.2.2).
    let _sub = subscribe(&mut c, "alice").await;
    next_notify_answered(&mut c, 481).await.unwrap();
    for _ in 0..50 {
        if s.server.presence.counts().2 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.server.presence.counts().2, 0, "all subscriptions gone");
}

/// Aggregation over two devices, the calendar and a hand-set state, as watchers see it.
#[tokio::test]
async fn two_devices_aggregate_into_one_presence() {
    let s = TestServer::start_with(&["alice", "bob"], unpaced).await;
    let mut watcher = registered(&s, "bob").await;
    let mut phone = registered(&s, "alice").await;
    let mut desk = s.client(Transport::Tcp, "alice").await;
    assert_eq!(status(&desk.register(None).await), 200);
    let _sub = subscribe(&mut watcher, "alice").await;
    assert_eq!(
        availability(&body(&next_notify(&mut watcher).await)),
        "offline"
    );

    // A1/A2: the most available device wins.
    let away = publish_state(
        &mut phone,
        "open",
        "<rpid:activities><rpid:away/></rpid:activities>",
    )
    .await;
    notify_until(&mut watcher, "away", |b| availability(b) == "away").await;
    let desk_tag = publish_state(&mut desk, "open", "").await;
    notify_until(&mut watcher, "available", |b| {
        availability(b) == "available"
    })
    .await;
    // A3: a call on any device shows busy, in a call.
    let (st, call_tag) = publish(
        &mut phone,
        Some(&pidf(
            "sip:alice@example.com",
            "open",
            "<rpid:activities><rpid:on-the-phone/></rpid:activities>",
        )),
        Some(&away),
        Some(600),
    )
    .await;
    assert_eq!(st, 200);
    let call_tag = call_tag.unwrap();
    let n = notify_until(&mut watcher, "in a call", |b| b.contains("in-a-call")).await;
    assert_eq!(availability(&body(&n)), "busy");
    assert!(body(&n).contains("<rpid:on-the-phone/>"));

    // A4: a meeting (from the calendar, through the change log) while otherwise available.
    let st = store(&s).await;
    let (st_tag, _) = publish(&mut phone, None, None, None).await; // 400: no body, no tag
    assert_eq!(st_tag, 400);
    st.presence
        .add_calendar_entry(
            "alice@example.com",
            &CalendarEntry {
                kind: CalendarKind::Meeting,
                from_ms: now_ms() - 60_000,
                to_ms: now_ms() + 3_600_000,
                subject: Some("Budget".into()),
                location: Some("Room 4".into()),
                note: None,
            },
            now_ms(),
        )
        .await
        .unwrap();
    // The phone's call still wins over the meeting; when it ends, the meeting shows.
    let (st_mod, phone_tag) = publish(
        &mut phone,
        Some(&pidf("sip:alice@example.com", "closed", "")),
        Some(&call_tag),
        Some(600),
    )
    .await;
    assert_eq!(st_mod, 200);
    let phone_tag = phone_tag.unwrap();
    let n = notify_until(&mut watcher, "in a meeting", |b| b.contains("in-a-meeting")).await;
    assert_eq!(availability(&body(&n)), "busy");
    assert!(body(&n).contains("<rpid:meeting/>"));
    assert!(
        !body(&n).contains("Budget"),
        "colleagues see free/busy, not the subject"
    );

    // A5: by hand wins (and its note), until cleared.
    st.presence
        .set_manual(
            "alice@example.com",
            &ManualState {
                availability: "dnd".into(),
                note: Some("Deadline".into()),
                until_ms: None,
                set_at_ms: now_ms(),
            },
        )
        .await
        .unwrap();
    let n = notify_until(&mut watcher, "dnd", |b| availability(b) == "dnd").await;
    assert!(body(&n).contains("Deadline"));
    assert!(!body(&n).contains("in-a-meeting"));
    st.presence
        .clear_manual("alice@example.com", now_ms())
        .await
        .unwrap();
    notify_until(&mut watcher, "meeting again", |b| {
        b.contains("in-a-meeting")
    })
    .await;

    // A6: all devices gone → offline, with the last-active time.
    assert_eq!(
        publish(&mut desk, None, Some(&desk_tag), Some(0)).await.0,
        200
    );
    assert_eq!(
        publish(&mut phone, None, Some(&phone_tag), Some(0)).await.0,
        200
    );
    let n = notify_until(&mut watcher, "offline", |b| availability(b) == "offline").await;
    assert!(body(&n).contains("last-active=\""), "{}", body(&n));
    assert!(body(&n).contains("<basic>closed</basic>"));
    // A7: out of office beside any availability, with its note.
    st.presence
        .add_calendar_entry(
            "alice@example.com",
            &CalendarEntry {
                kind: CalendarKind::OutOfOffice,
                from_ms: now_ms() - 1000,
                to_ms: now_ms() + 86_400_000,
                subject: None,
                location: None,
                note: Some("Back Monday".into()),
            },
            now_ms(),
        )
        .await
        .unwrap();
    let n = notify_until(&mut watcher, "out of office", |b| {
        b.contains("out-of-office")
    })
    .await;
    assert!(body(&n).contains("Back Monday"));
    assert_eq!(availability(&body(&n)), "offline");
}

/// Idle times (A1), configured short: an idle device shows inactive, then away.
#[tokio::test]
async fn idle_device_turns_inactive_then_away() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        unpaced(c);
        c.presence.rules.inactive_after_ms = 60_000;
        c.presence.rules.away_after_ms = 120_000;
    })
    .await;
    let mut a = registered(&s, "alice").await;
    let mut b = registered(&s, "bob").await;
    let _sub = subscribe(&mut b, "alice").await;
    next_notify(&mut b).await;
    let idle = |mins: u64| {
        let t = std::time::SystemTime::now() - Duration::from_secs(mins * 60);
        format!(
            "<rpid:user-input last-input=\"{}\">idle</rpid:user-input>",
            humantime::format_rfc3339_seconds(t)
        )
    };
    publish_state(&mut a, "open", &idle(1)).await;
    let n = notify_until(&mut b, "inactive", |d| availability(d) == "inactive").await;
    assert!(body(&n).contains("last-input="));
    publish_state(&mut a, "open", &idle(3)).await;
    // The away device and the inactive one: the more available (inactive) wins.
    assert_eq!(
        own_availability(&s, "sip:alice@example.com").await,
        "inactive"
    );
}

async fn add_user(s: &TestServer, address: &str) {
    s.data()
        .await
        .directory
        .add(
            &Address::parse(address).unwrap(),
            &format!("pw-{}", address.split('@').next().unwrap()),
            None,
        )
        .await
        .unwrap();
}

/// Every relationship level, watching over a NOTIFY, sees its own fields and no more.
#[tokio::test]
async fn each_relationship_level_sees_what_it_may() {
    let s = TestServer::start_with(
        &["alice", "blocked", "colleague", "workmate", "friend"],
        unpaced,
    )
    .await;
    add_user(&s, "outsider@other.org").await;
    let st = store(&s).await;
    let now = now_ms();
    for (who, rel) in [
        ("blocked@example.com", Relationship::Blocked),
        ("workmate@example.com", Relationship::Workgroup),
        ("friend@example.com", Relationship::Friends),
    ] {
        st.contacts
            .add_contact(
                "alice@example.com",
                who,
                None,
                Some(rel),
                Relationship::Colleagues,
                now,
            )
            .await
            .unwrap();
    }
    st.presence
        .set_card(
            "alice@example.com",
            &ContactCard {
                title: Some("Engineer".into()),
                email: Some("alice@example.com".into()),
                work_phone: Some("tel:+15550100".into()),
                personal_phone: Some("tel:+15550199".into()),
            },
            now,
        )
        .await
        .unwrap();
    st.presence
        .add_calendar_entry(
            "alice@example.com",
            &CalendarEntry {
                kind: CalendarKind::Meeting,
                from_ms: now - 60_000,
                to_ms: now + 3_600_000,
                subject: Some("Merger talks".into()),
                location: Some("Board room".into()),
                note: None,
            },
            now,
        )
        .await
        .unwrap();
    let mut a = registered(&s, "alice").await;
    publish_state(&mut a, "open", "<dm:note>Working on the launch</dm:note>").await;

    let secrets_by_level: [(&str, &[&str], &[&str]); 5] = [
        // (watcher, must see, must not see)
        (
            "blocked",
            &["availability=\"offline\"", "<basic>closed</basic>"],
            &[
                "Working",
                "Engineer",
                "tel:",
                "Merger",
                "meeting",
                "last-active",
            ],
        ),
        (
            "outsider@other.org",
            &["availability=\"busy\""],
            &[
                "Working",
                "Engineer",
                "tel:",
                "Merger",
                "meeting",
                "last-active",
            ],
        ),
        (
            "colleague",
            &[
                "availability=\"busy\"",
                "Working",
                "Engineer",
                "tel:+15550100",
                "<sb:meeting",
            ],
            &["Merger", "Board room", "tel:+15550199"],
        ),
        (
            "workmate",
            &["Merger", "Board room", "tel:+15550100"],
            &["tel:+15550199"],
        ),
        ("friend", &["Merger", "tel:+15550199"], &[]),
    ];
    for (who, seen, hidden) in secrets_by_level {
        let mut w = if who.contains('@') {
            // A user of another organisation signs in to their own domain here.
            let mut c = s.client(Transport::Udp, "outsider").await;
            let mut r = c.register_request(None);
            let aor = "sip:outsider@other.org";
            r.headers.set(HeaderName::From, format!("<{aor}>;tag=x1"));
            r.headers.set(HeaderName::To, format!("<{aor}>"));
            if let sip_message::StartLine::Request { uri, .. } = &mut r.start {
                *uri = sip_message::Uri::parse("sip:other.org").unwrap();
            }
            assert_eq!(status(&c.send_authenticated(r).await), 200);
            c
        } else {
            registered(&s, who).await
        };
        let (r, _) = if who.contains('@') {
            let mut m = w.request(
                "SUBSCRIBE",
                "sip:alice@example.com",
                "sip:alice@example.com",
            );
            m.headers
                .set(HeaderName::From, format!("<sip:{who}>;tag=o1"));
            m.headers.push(HeaderName::Event, "presence");
            (w.send_authenticated(m).await, ())
        } else {
            let (r, _) = subscribe_with(&mut w, "alice", "presence", &[], 600).await;
            (r, ())
        };
        assert_eq!(status(&r), 200, "{who}: {r}");
        let doc = body(&next_notify(&mut w).await);
        for x in seen {
            assert!(doc.contains(x), "{who} should see {x}: {doc}");
        }
        for x in hidden {
            assert!(!doc.contains(x), "{who} must not see {x}: {doc}");
        }
        // The API path shows the same as the NOTIFY.
        let watcher = if who.contains('@') {
            format!("sip:{who}")
        } else {
            format!("sip:{who}@example.com")
        };
        let v = serde_json::to_string(
            &s.server
                .presence
                .view("sip:alice@example.com", Some(&watcher))
                .await
                .unwrap(),
        )
        .unwrap();
        for x in hidden
            .iter()
            .filter(|x| !x.starts_with('<') && !x.contains('='))
        {
            assert!(!v.contains(x), "API shows {who} {x}: {v}");
        }
    }
}

/// RFC 4662: one subscription to one's own contact list; full state first, then only the
/// resources that changed; blocked contacts show offline inside the batch too.
#[tokio::test]
async fn resource_list_batches_full_then_partial() {
    let s = TestServer::start_with(&["alice", "bob", "carol"], unpaced).await;
    let st = store(&s).await;
    let now = now_ms();
    st.contacts
        .add_contact(
            "alice@example.com",
            "bob@example.com",
            Some("Team"),
            None,
            Relationship::Colleagues,
            now,
        )
        .await
        .unwrap();
    st.contacts
        .add_contact(
            "alice@example.com",
            "carol@example.com",
            Some("Team"),
            None,
            Relationship::Colleagues,
            now,
        )
        .await
        .unwrap();
    // Carol blocks Alice.
    st.contacts
        .add_contact(
            "carol@example.com",
            "alice@example.com",
            None,
            Some(Relationship::Blocked),
            Relationship::Colleagues,
            now,
        )
        .await
        .unwrap();
    let mut b = registered(&s, "bob").await;
    let mut c = registered(&s, "carol").await;
    publish_state(&mut c, "open", "<dm:note>carol's secret</dm:note>").await;

    let mut a = registered(&s, "alice").await;
    let extra = [
        ("Supported", "eventlist"),
        (
            "Accept",
            "application/pidf+xml, application/rlmi+xml, multipart/related",
        ),
    ];
    let (r, _) = subscribe_with(&mut a, "alice", "presence", &extra, 600).await;
    assert_eq!(status(&r), 200);
    let n = next_notify(&mut a).await;
    assert_eq!(n.headers.get(&HeaderName::Require), Some("eventlist"));
    assert!(n
        .headers
        .get(&HeaderName::ContentType)
        .unwrap()
        .starts_with("multipart/related"));
    let doc = body(&n);
    assert!(doc.contains("fullState=\"true\""), "{doc}");
    assert!(doc.contains("<resource uri=\"sip:bob@example.com\">"));
    assert!(doc.contains("<resource uri=\"sip:carol@example.com\">"));
    assert_eq!(doc.matches("Content-Type: application/pidf+xml").count(), 2);
    assert!(
        !doc.contains("carol's secret"),
        "blocked: nothing leaks in the batch"
    );
    let carol_part = doc
        .split("--sb-")
        .find(|p| p.contains("entity=\"sip:carol@example.com\""))
        .expect("carol's document");
    assert!(carol_part.contains("<basic>closed</basic>"), "{carol_part}");

    // A change of one contact: a partial notification with that resource only.
    publish_state(
        &mut b,
        "open",
        "<rpid:activities><rpid:busy/></rpid:activities>",
    )
    .await;
    let n = notify_until(&mut a, "bob busy", |d| d.contains("availability=\"busy\"")).await;
    let doc = body(&n);
    assert!(doc.contains("fullState=\"false\""), "{doc}");
    assert!(
        doc.contains("sip:bob@example.com") && !doc.contains("sip:carol@example.com"),
        "{doc}"
    );
    // A contact added to the list: full state again, with the new resource.
    add_user(&s, "dave@example.com").await;
    st.contacts
        .add_contact(
            "alice@example.com",
            "dave@example.com",
            None,
            None,
            Relationship::Colleagues,
            now_ms(),
        )
        .await
        .unwrap();
    let n = notify_until(&mut a, "dave", |d| d.contains("sip:dave@example.com")).await;
    assert!(body(&n).contains("fullState=\"true\""));
}

/// RFC 3857/3858: the user sees who watches; outsiders to the list are pending until
/// placed; blocked ones show as rejected.
#[tokio::test]
async fn watcher_info_shows_pending_until_accepted() {
    let s = TestServer::start_with(&["alice", "bob", "carol"], unpaced).await;
    let mut a = registered(&s, "alice").await;
    let (r, _) = subscribe_with(&mut a, "alice", "presence.winfo", &[], 600).await;
    assert_eq!(status(&r), 200);
    let n = next_notify(&mut a).await;
    assert_eq!(
        n.headers.get(&HeaderName::ContentType),
        Some("application/watcherinfo+xml")
    );
    assert!(!body(&n).contains("<watcher "));

    let mut b = registered(&s, "bob").await;
    let _sub = subscribe(&mut b, "alice").await;
    let n = notify_until(&mut a, "bob pending", |d| d.contains("sip:bob@example.com")).await;
    assert!(body(&n).contains("status=\"pending\""), "{}", body(&n));
    // Accepting = placing the watcher in a relationship.
    let st = store(&s).await;
    st.contacts
        .add_contact(
            "alice@example.com",
            "bob@example.com",
            None,
            Some(Relationship::Friends),
            Relationship::Colleagues,
            now_ms(),
        )
        .await
        .unwrap();
    notify_until(&mut a, "bob active", |d| {
        d.contains("status=\"active\"") && d.contains("event=\"approved\"")
    })
    .await;
    st.contacts
        .add_contact(
            "alice@example.com",
            "bob@example.com",
            None,
            Some(Relationship::Blocked),
            Relationship::Colleagues,
            now_ms(),
        )
        .await
        .unwrap();
    notify_until(&mut a, "bob rejected", |d| {
        d.contains("status=\"terminated\"")
    })
    .await;
    // Bob, blocked, now sees Alice offline (polite blocking: his subscription stays).
    publish_state(&mut a, "open", "").await;
    let n = notify_until(&mut b, "offline for bob", |d| availability(d) == "offline").await;
    assert!(sub_state(&n).starts_with("active"));
}

/// At most one NOTIFY per interval; what comes after the interval is the newest state.
#[tokio::test]
async fn notifies_are_paced_per_subscription() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        c.presence.notify_interval = Duration::from_millis(1500);
    })
    .await;
    let mut a = registered(&s, "alice").await;
    let mut b = registered(&s, "bob").await;
    let _sub = subscribe(&mut b, "alice").await;
    let first = next_notify(&mut b).await;
    assert_eq!(availability(&body(&first)), "offline");
    let t0 = std::time::Instant::now();
    let tag = publish_state(&mut a, "open", "").await;
    let busy = pidf(
        &a.aor(),
        "open",
        "<rpid:activities><rpid:busy/></rpid:activities>",
    );
    let (st, _) = publish(&mut a, Some(&busy), Some(&tag), Some(600)).await;
    assert_eq!(st, 200);
    let n = next_notify(&mut b).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "held back by the pacing"
    );
    assert_eq!(
        availability(&body(&n)),
        "busy",
        "the newest state, not each step"
    );
    assert!(
        b.recv_within(Duration::from_millis(300)).await.is_none(),
        "one NOTIFY for both changes"
    );
}

/// The `switchboard` binary run against a test server's data directory and HTTP API.
struct Cli {
    data_dir: std::path::PathBuf,
    database: Option<String>,
    http: std::net::SocketAddr,
}

impl Cli {
    /// (success, stdout, stderr); run off the async workers, which serve the server.
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env("SWITCHBOARD_HTTP", self.http.to_string());
        if let Some(url) = &self.database {
            cmd.env("SWITCHBOARD_DATABASE", url);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The CLI contract: contacts and presence commands, `presence show --as` through the
/// running server's API, and the stored view when no server runs.
#[tokio::test]
async fn cli_contacts_and_presence() {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = TestServer::start_with(&["alice", "bob", "carol"], move |c| {
        unpaced(c);
        c.http = switchboard::config::Listen::On(http);
    })
    .await;
    let cli = Cli {
        data_dir: s.data_dir(),
        database: s.home().database(),
        http,
    };
    let mut b = registered(&s, "bob").await;
    let _sub = subscribe(&mut b, "alice").await;
    next_notify(&mut b).await;

    let (ok, out, _) = cli
        .run(&[
            "contacts",
            "add",
            "alice@example.com",
            "bob@example.com",
            "--group",
            "Team",
            "--relationship",
            "friends",
        ])
        .await;
    assert!(ok, "{out}");
    let (ok, out, _) = cli
        .run(&["contacts", "list", "alice@example.com", "--json"])
        .await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["contacts"][0]["contact"], "bob@example.com");
    assert_eq!(v["contacts"][0]["relationship"], "friends");
    assert_eq!(v["contacts"][0]["groups"][0], "Team");

    let (ok, _, err) = cli
        .run(&[
            "presence",
            "set",
            "alice@example.com",
            "--availability",
            "busy",
            "--note",
            "In the lab",
            "--until",
            "2999-01-01T00:00:00Z",
        ])
        .await;
    assert!(ok, "{err}");
    // Watchers are notified of CLI changes.
    let n = notify_until(&mut b, "busy by hand", |d| availability(d) == "busy").await;
    assert!(body(&n).contains("In the lab"));

    let (ok, _, err) = cli
        .run(&[
            "presence",
            "meeting",
            "carol@example.com",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2999-01-01T00:00:00Z",
            "--subject",
            "Offsite",
        ])
        .await;
    assert!(ok, "{err}");
    let mut c = registered(&s, "carol").await;
    publish_state(&mut c, "open", "").await;
    // `show --as` prints exactly what that watcher may see.
    let (ok, out, err) = cli
        .run(&[
            "presence",
            "show",
            "carol@example.com",
            "--as",
            "alice@example.com",
            "--json",
        ])
        .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["availability"], "busy");
    assert_eq!(v["activities"][0], "in-a-meeting");
    assert!(
        v["meeting"]["subject"].is_null(),
        "colleagues do not see the subject: {out}"
    );
    let (_, out, _) = cli.run(&["presence", "show", "carol@example.com"]).await;
    assert!(
        out.contains("Offsite") && out.contains("availability: busy"),
        "{out}"
    );

    // Errors are one clear line.
    let refused: [(&[&str], &str); 4] = [
        (
            &[
                "presence",
                "set",
                "nobody@example.com",
                "--availability",
                "busy",
            ],
            "no such user",
        ),
        (
            &[
                "presence",
                "set",
                "alice@example.com",
                "--availability",
                "sleepy",
            ],
            "not an availability",
        ),
        (
            &[
                "contacts",
                "add",
                "alice@example.com",
                "bob@example.com",
                "--relationship",
                "enemies",
            ],
            "not a relationship",
        ),
        (
            &[
                "presence",
                "oof",
                "alice@example.com",
                "--from",
                "2030-01-02T00:00:00Z",
                "--to",
                "2030-01-01T00:00:00Z",
            ],
            "after --from",
        ),
    ];
    for (args, why) in refused {
        let (ok, _, err) = cli.run(args).await;
        assert!(
            !ok && err.lines().next().unwrap_or("").contains(why),
            "{args:?}: {err}"
        );
    }

    // No server: the stored state, every device gone.
    let (ok, _, _) = cli.run(&["presence", "clear", "alice@example.com"]).await;
    assert!(ok);
    let _dir = s.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out, err) = cli
        .run(&["presence", "show", "carol@example.com", "--json"])
        .await;
    assert!(ok, "{err}");
    assert!(err.contains("stored state"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["availability"], "offline");
    let (ok, out, _) = cli
        .run(&["contacts", "remove", "alice@example.com", "bob@example.com"])
        .await;
    assert!(ok, "{out}");
}

/// The database cannot answer the presence service (its data layer is made to fail: the
/// tests run as root, whom a read-only database file does not stop). A watcher Alice
/// blocked gets 503 with Retry-After and never her presence, and neither does anyone
/// else; once the database answers, a colleague sees her and Bob still sees her offline.
#[tokio::test]
async fn a_blocked_watcher_gets_nothing_while_the_database_fails() {
    let mut layer = None;
    let s = TestServer::start_over(
        Home::new().await,
        &["alice", "bob", "carol"],
        unpaced,
        |sources| {
            let data = TestData::over(sources.directory, sources.contacts, sources.presence);
            layer = Some(data.clone());
            PresenceSources {
                directory: data.clone(),
                contacts: data.clone(),
                presence: data,
            }
        },
    )
    .await;
    let data = layer.unwrap();
    store(&s)
        .await
        .contacts
        .set_relationship(
            "alice@example.com",
            "bob@example.com",
            Relationship::Blocked,
            Relationship::Colleagues,
            now_ms(),
        )
        .await
        .unwrap();
    let mut a = registered(&s, "alice").await;
    let mut b = registered(&s, "bob").await;
    let mut c = registered(&s, "carol").await;
    let open = pidf(&a.aor(), "open", "<dm:note>at the lake</dm:note>");

    data.fail(USER_READS);
    let published = publish(&mut a, Some(&open), None, Some(600)).await.0;
    let (r, sub) = subscribe_with(&mut b, "alice", "presence", &[], 600).await;
    // Never more than offline, whatever the answers...
    while let Some(m) = b.recv_within(Duration::from_millis(500)).await {
        assert!(!body(&m).contains("<basic>open</basic>"), "{m}");
        assert!(!body(&m).contains("at the lake"), "{m}");
    }
    // ...and here, nothing at all: both are told to try later.
    assert_eq!(published, 503);
    assert_eq!(status(&r), 503, "{r}");
    assert!(
        r.headers
            .get(&HeaderName::from_wire("Retry-After"))
            .is_some(),
        "{r}"
    );
    assert!(sub.is_none());

    data.recover();
    assert_eq!(publish(&mut a, Some(&open), None, Some(600)).await.0, 200);
    subscribe(&mut c, "alice").await;
    let n = notify_until(&mut c, "Alice open", |d| d.contains("<basic>open</basic>")).await;
    assert!(body(&n).contains("at the lake"));
    subscribe(&mut b, "alice").await;
    let n = next_notify(&mut b).await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{n}");
    assert!(!body(&n).contains("at the lake"), "{n}");
}
