//! Per-user and server-wide bounds of the presence service, over sockets: publications
//! per user, entries of a user's resource lists (RFC 4662 contact lists and Lync batched
//! subscriptions), no presentity for entries naming nobody, presentities dropped once
//! unwatched, and the server-wide presentity bound.

use std::time::Duration;

use sip_message::{HeaderName, Message, NameAddr};
use switchboard_store::Relationship;

use crate::support::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn tweak(
    f: impl FnOnce(&mut switchboard_presence::PresenceConfig),
) -> impl FnOnce(&mut switchboard::config::ServerConfig) {
    |c| {
        c.presence.notify_interval = Duration::ZERO;
        f(&mut c.presence);
    }
}

async fn registered(s: &TestServer, t: Transport, user: &str) -> Client {
    let mut c = s.client(t, user).await;
    assert_eq!(status(&c.register(None).await), 200);
    c
}

fn warning(r: &Message) -> String {
    r.headers
        .get(&HeaderName::Warning)
        .unwrap_or_default()
        .to_owned()
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// Presentities the server holds now.
fn presentities(s: &TestServer) -> usize {
    s.server.presence.counts().0
}

async fn publish(c: &mut Client, etag: Option<&str>, with_body: bool, expires: u32) -> Message {
    let aor = c.aor();
    let mut m = c.request("PUBLISH", &aor, &aor);
    m.headers.remove(&HeaderName::Contact);
    m.headers.push(HeaderName::Event, "presence");
    m.headers.push(HeaderName::Expires, expires.to_string());
    if let Some(t) = etag {
        m.headers.push(HeaderName::from_wire("SIP-If-Match"), t);
    }
    if with_body {
        let doc = format!(
            "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{aor}\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>"
        );
        m.headers
            .push(HeaderName::ContentType, "application/pidf+xml");
        m.body = bytes::Bytes::from(doc.into_bytes());
    }
    c.send_authenticated(m).await
}

fn etag(r: &Message) -> String {
    r.headers
        .get(&HeaderName::from_wire("SIP-ETag"))
        .expect("SIP-ETag")
        .to_owned()
}

/// A SUBSCRIBE to one's own presence as a list: RFC 4662 (`body` None: the stored
/// contact list) or a Lync batched subscription naming `body`'s resources.
async fn subscribe_list(c: &mut Client, batch: Option<&[String]>) -> (Message, Message) {
    let aor = c.aor();
    c.call_id = format!("{}@test", rand_hex());
    let mut m = c.request("SUBSCRIBE", &aor, &aor);
    m.headers.push(HeaderName::Event, "presence");
    m.headers.push(HeaderName::Expires, "600");
    m.headers.push(HeaderName::Supported, "eventlist");
    match batch {
        None => m.headers.push(
            HeaderName::Accept,
            "application/pidf+xml, application/rlmi+xml, multipart/related",
        ),
        Some(resources) => {
            let list: String = resources
                .iter()
                .map(|r| format!("<resource uri=\"{r}\"/>"))
                .collect();
            let doc = format!(
                "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"{aor}\" name=\"\"><action name=\"subscribe\" id=\"1\"><adhocList>{list}</adhocList><categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\"><category name=\"state\"/></categoryList></action></batchSub>"
            );
            m.headers.push(
                HeaderName::ContentType,
                "application/msrtc-adrl-categorylist+xml",
            );
            m.body = bytes::Bytes::from(doc.into_bytes());
        }
    }
    let r = c.send_authenticated(m.clone()).await;
    (m, r)
}

/// Ends the subscription `request` opened (answered `answer`) with `Expires: 0`.
async fn unsubscribe(c: &mut Client, request: &Message, answer: &Message) -> Message {
    let to_tag = NameAddr::parse(answer.headers.get(&HeaderName::To).unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let mut m = request.clone();
    let to = m.headers.get(&HeaderName::To).unwrap().to_owned();
    m.headers.set(HeaderName::To, format!("{to};tag={to_tag}"));
    m.headers.set(HeaderName::Expires, "0");
    c.cseq += 10;
    m.headers
        .set(HeaderName::CSeq, format!("{} SUBSCRIBE", c.cseq));
    m.headers.set(
        HeaderName::Via,
        format!(
            "SIP/2.0/{} 127.0.0.1:{};branch=z9hG4bK{};rport",
            c.transport.via(),
            c.local.port(),
            rand_hex()
        ),
    );
    c.send_authenticated(m).await
}

async fn next_notify(c: &mut Client) -> Message {
    if let Some(i) = c
        .inbox
        .iter()
        .position(|m| m.method().map(|m| m.as_str()) == Some("NOTIFY"))
    {
        return c.inbox.remove(i).unwrap();
    }
    loop {
        let m = c.recv().await.expect("a NOTIFY");
        if m.is_request() {
            c.send(&m.response(200, Some("watcher"))).await;
            if m.method().map(|m| m.as_str()) == Some("NOTIFY") {
                return m;
            }
        }
    }
}

/// Waits (housekeeping sweeps once a second) until the server holds `n` presentities.
async fn presentities_become(s: &TestServer, n: usize) {
    for _ in 0..50 {
        if presentities(s) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("presentities stayed {} (wanted {n})", presentities(s));
}

fn ghosts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 10 == 9 {
                // Another domain: nobody we know either.
                format!("sip:ghost{i}@elsewhere.test")
            } else {
                format!("sip:ghost{i}@example.com")
            }
        })
        .collect()
}

async fn add_contacts(s: &TestServer, owner: &str, contacts: &[String]) {
    let st = s.data().await.contacts;
    for c in contacts {
        st.add_contact(
            owner,
            c.strip_prefix("sip:").unwrap(),
            None,
            None,
            Relationship::Colleagues,
            now_ms(),
        )
        .await
        .unwrap();
    }
}

/// Each initial PUBLISH is a new device; past the cap the next one is refused with a
/// Warning that says why, while the devices already publishing keep refreshing and
/// changing their state; a removed publication makes room again.
#[tokio::test]
async fn publications_per_user_are_capped() {
    let s = TestServer::start_with(&["alice"], tweak(|p| p.max_publications_per_user = 4)).await;
    let mut a = registered(&s, Transport::Udp, "alice").await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        let r = publish(&mut a, None, true, 600).await;
        assert_eq!(status(&r), 200, "{r}");
        tags.push(etag(&r));
    }
    let r = publish(&mut a, None, true, 600).await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(
        warning(&r),
        "399 switchboard \"too many publications for this user\""
    );
    assert_eq!(s.server.presence.counts().1, 4);
    // Refresh (no body) and modify (body) of a held entity tag still work.
    let r = publish(&mut a, Some(&tags[0]), false, 600).await;
    assert_eq!(status(&r), 200, "{r}");
    tags[0] = etag(&r);
    let r = publish(&mut a, Some(&tags[1]), true, 600).await;
    assert_eq!(status(&r), 200, "{r}");
    // One device leaves: a new one may come.
    let r = publish(&mut a, Some(&tags[2]), false, 0).await;
    assert_eq!(status(&r), 200, "{r}");
    let r = publish(&mut a, None, true, 600).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(s.server.presence.counts().1, 4);
}

/// Entries naming users who do not exist (here or in other domains) make no presentity,
/// in an RFC 4662 contact-list subscription and in a Lync batched one; the subscriber
/// still gets its NOTIFY, with those entries offline; once the subscriptions end, the
/// presentities of the real users go too.
#[tokio::test]
async fn unknown_list_entries_hold_nothing() {
    let s = TestServer::start_with(&["alice", "bob"], tweak(|_| {})).await;
    let mut entries = ghosts(60);
    entries.push("sip:bob@example.com".into());
    add_contacts(&s, "alice@example.com", &entries).await;
    let mut a = registered(&s, Transport::Tcp, "alice").await;
    let before = presentities(&s);

    // RFC 4662: the stored contact list.
    let (req, r) = subscribe_list(&mut a, None).await;
    assert_eq!(status(&r), 200, "{r}");
    let n = next_notify(&mut a).await;
    let doc = body(&n);
    assert!(doc.contains("fullState=\"true\""), "{doc}");
    assert!(
        doc.contains("<resource uri=\"sip:ghost0@example.com\">"),
        "{doc}"
    );
    assert!(
        doc.contains("<resource uri=\"sip:ghost9@elsewhere.test\">"),
        "{doc}"
    );
    assert!(
        doc.contains("<resource uri=\"sip:bob@example.com\">"),
        "{doc}"
    );
    assert_eq!(
        doc.matches("Content-Type: application/pidf+xml").count(),
        61,
        "every entry reported"
    );
    let ghost = doc
        .split("--sb-")
        .find(|p| p.contains("entity=\"sip:ghost0@example.com\""))
        .expect("the unknown entry's document");
    assert!(ghost.contains("<basic>closed</basic>"), "{ghost}");
    // Alice (the list's owner) and Bob: nobody else.
    assert_eq!(presentities(&s), before + 2);

    // Lync batched subscription naming the same nobodies (and Bob, spelt otherwise).
    let mut b = registered(&s, Transport::Tcp, "alice").await;
    let mut batch = ghosts(60);
    batch.push("sip:Bob@Example.COM".into());
    let (breq, br) = subscribe_list(&mut b, Some(&batch)).await;
    assert_eq!(status(&br), 200, "{br}");
    let n = next_notify(&mut b).await;
    let doc = body(&n);
    assert!(
        doc.contains("<resource uri=\"sip:ghost1@example.com\">"),
        "{doc}"
    );
    assert!(
        doc.contains("<resource uri=\"sip:bob@example.com\">"),
        "{doc}"
    );
    assert_eq!(
        doc.matches("application/msrtc-event-categories+xml")
            .count(),
        61,
        "{doc}"
    );
    assert_eq!(presentities(&s), before + 2);

    // Both end: Bob's and Alice's presentities go (nobody watches, nobody publishes).
    assert_eq!(status(&unsubscribe(&mut a, &req, &r).await), 200);
    assert_eq!(status(&unsubscribe(&mut b, &breq, &br).await), 200);
    presentities_become(&s, before).await;
}

/// A list naming more entries than a user may watch is refused whole with a Warning that
/// names the limit; entries count once however many of the user's lists name them, and a
/// list that ends gives its entries back.
#[tokio::test]
async fn too_many_list_entries_are_refused() {
    let s = TestServer::start_with(
        &["alice", "bob"],
        tweak(|p| p.max_list_entries_per_user = 10),
    )
    .await;
    let mut a = registered(&s, Transport::Tcp, "alice").await;
    let warned = "399 switchboard \"too many list entries for this user (at most 10)\"";

    // A batched subscription with 11 entries.
    let (_, r) = subscribe_list(&mut a, Some(&ghosts(11))).await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(warning(&r), warned);
    assert_eq!(s.server.presence.counts().2, 0, "no subscription kept");

    // Ten are fine; another list naming the same ten too (they count once)...
    let (first_req, first) = subscribe_list(&mut a, Some(&ghosts(10))).await;
    assert_eq!(status(&first), 200, "{first}");
    next_notify(&mut a).await;
    let mut b = registered(&s, Transport::Tcp, "alice").await;
    let (second_req, second) = subscribe_list(&mut b, Some(&ghosts(10))).await;
    assert_eq!(status(&second), 200, "{second}");
    next_notify(&mut b).await;
    // ... but one more entry on any list is over.
    let mut c = registered(&s, Transport::Tcp, "alice").await;
    let bob = vec!["sip:bob@example.com".to_owned()];
    let (_, r) = subscribe_list(&mut c, Some(&bob)).await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(warning(&r), warned);
    // The RFC 4662 contact list counts the same way (once the service has followed the
    // change the store logged).
    add_contacts(&s, "alice@example.com", &bob).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, r) = subscribe_list(&mut c, None).await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(warning(&r), warned);

    // The first list ends: its entries are still on the second, so still no room; once
    // the second ends too they are given back and the same request fits.
    assert_eq!(status(&unsubscribe(&mut a, &first_req, &first).await), 200);
    let (_, r) = subscribe_list(&mut c, None).await;
    assert_eq!(status(&r), 403, "{r}");
    assert_eq!(
        status(&unsubscribe(&mut b, &second_req, &second).await),
        200
    );
    let (_, r) = subscribe_list(&mut c, None).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(body(&next_notify(&mut c).await).contains("sip:bob@example.com"));
}

/// Past the server-wide bound, a subscription that would hold more presentities is
/// refused for a while (503 with Retry-After); one that needs none more is not.
#[tokio::test]
async fn presentities_are_bounded_server_wide() {
    let s = TestServer::start_with(
        &["alice", "bob", "carol"],
        tweak(|p| p.max_presentities = 2),
    )
    .await;
    let mut a = registered(&s, Transport::Tcp, "alice").await;
    // Alice's list needs Alice, Bob and Carol: three.
    let both = vec![
        "sip:bob@example.com".to_owned(),
        "sip:carol@example.com".to_owned(),
    ];
    let (_, r) = subscribe_list(&mut a, Some(&both)).await;
    assert_eq!(status(&r), 503, "{r}");
    assert!(r
        .headers
        .get(&HeaderName::from_wire("Retry-After"))
        .is_some());
    assert_eq!(presentities(&s), 0);
    // Bob alone (with nobodies, who need nothing) fits.
    let mut one = ghosts(5);
    one.push("sip:bob@example.com".into());
    let (_, r) = subscribe_list(&mut a, Some(&one)).await;
    assert_eq!(status(&r), 200, "{r}");
    next_notify(&mut a).await;
    assert_eq!(presentities(&s), 2);
}
