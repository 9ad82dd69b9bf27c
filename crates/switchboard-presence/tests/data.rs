//! The service and its data: nothing is shown from data that could not be read (a
//! blocked watcher never sees more than offline, whatever fails), no lock is held while
//! a read is awaited, and presentities read by two requests at once, or read before a
//! change, end up as one presentity holding the newest state. The data is the real
//! SQLite store behind a layer that fails or holds back reads on demand
//! (`common::data`); requests go through the hook, NOTIFYs are captured.

use std::sync::Arc;
use std::time::Duration;

use sip_message::{HeaderName, Message};
use switchboard_core::seam::ServiceAnswer;
use switchboard_core::{ManualState, Relationship};
use switchboard_presence::{PresenceConfig, PresenceService};
use tokio::task::JoinHandle;

mod common;
use common::data::{Gate, TestData, USER_READS};
use common::{request, Captured};

const ALICE: &str = "alice@x.test";
const BOB: &str = "bob@x.test";
const CAROL: &str = "carol@x.test";
const DAVE: &str = "dave@x.test";

const SUBSCRIBE: &str = "Event: presence\r\nExpires: 600\r\n";
const PUBLISH: &str = "Event: presence\r\nExpires: 600\r\nContent-Type: application/pidf+xml\r\n";

/// What `user` publishes: open, with a note nobody below colleague may read.
fn open_with_note(user: &str) -> String {
    format!("<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{user}\"><tuple id=\"t\"><status><basic>open</basic></status><note>at the lake</note></tuple></presence>")
}

/// Alice, Bob, Carol and Dave; Alice blocked Bob. Reads go through a layer the test
/// controls.
async fn setup() -> (
    tempfile::TempDir,
    Arc<TestData>,
    Arc<PresenceService>,
    Arc<Captured>,
) {
    let (dir, store) = common::store_with(&[ALICE, BOB, CAROL, DAVE]);
    store
        .presence
        .set_relationship(
            ALICE,
            BOB,
            Relationship::Blocked,
            Relationship::Colleagues,
            0,
        )
        .unwrap();
    let data = TestData::new(store);
    let cfg = PresenceConfig {
        notify_interval: Duration::ZERO,
        ..Default::default()
    };
    let (svc, captured) = common::start(data.clone(), cfg).await;
    (dir, data, svc, captured)
}

async fn publish(svc: &PresenceService, user: &str) -> ServiceAnswer {
    let m = request("PUBLISH", user, user, PUBLISH, &open_with_note(user));
    let to = format!("sip:{user}");
    common::handle(svc, &m, &to, &to).await
}

/// A SUBSCRIBE from `watcher` to `user`, answered (and, when accepted, notified).
async fn subscribe(svc: &PresenceService, watcher: &str, user: &str) -> ServiceAnswer {
    let m = request("SUBSCRIBE", watcher, user, SUBSCRIBE, "");
    let from = format!("sip:{watcher}");
    let a = common::handle(svc, &m, &from, &format!("sip:{user}")).await;
    a
}

/// Starts `watcher`'s SUBSCRIBE to Alice with the `call` read of her held back, and
/// returns once it is: the gate lets the read answer, the task ends with the status.
async fn subscribe_held_back(
    data: &TestData,
    svc: &Arc<PresenceService>,
    call: &'static str,
    watcher: &'static str,
) -> (Arc<Gate>, JoinHandle<u16>) {
    let gate = data.park(call, ALICE);
    let waiting = tokio::spawn({
        let svc = svc.clone();
        async move { subscribe(&svc, watcher, ALICE).await.status }
    });
    gate.reached().await;
    (gate, waiting)
}

fn retry_after(a: &ServiceAnswer) -> Option<&str> {
    a.headers
        .iter()
        .find(|(n, _)| n == "Retry-After")
        .map(|(_, v)| v.as_str())
}

/// 503 with Retry-After: what a request meets when the data cannot be read.
fn assert_try_later(a: &ServiceAnswer, what: &str) {
    assert_eq!(a.status, 503, "{what}");
    assert!(retry_after(a).is_some(), "{what}: no Retry-After");
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The NOTIFYs to `watcher` captured within a few seconds, at least `n` of them (the
/// others captured meanwhile are dropped).
async fn notifies_to(captured: &Captured, watcher: &str, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(captured.take().into_iter().filter(|m| {
            m.headers
                .get(&HeaderName::To)
                .is_some_and(|t| t.contains(watcher))
        }));
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        got.len() >= n,
        "{} NOTIFYs to {watcher}, not {n}",
        got.len()
    );
    got
}

/// Offline and nothing else: what a blocked watcher sees, and anyone while the data
/// cannot be read.
fn assert_offline_only(m: &Message) {
    let b = body(m);
    assert!(b.contains("<basic>closed</basic>"), "{b}");
    assert!(!b.contains("<basic>open</basic>"), "{b}");
    assert!(!b.contains("at the lake"), "the note leaked: {b}");
}

fn assert_open_with_note(m: &Message) {
    let b = body(m);
    assert!(b.contains("<basic>open</basic>"), "{b}");
    assert!(b.contains("at the lake"), "{b}");
}

/// The database cannot answer: nobody is shown anything (503 with Retry-After, nothing
/// held from failed reads), least of all the watcher Alice blocked, who would otherwise
/// be taken for a colleague (no contact list read, no relationship). Once it answers
/// again, a colleague sees Alice's state and Bob still sees her offline.
#[tokio::test]
async fn a_blocked_watcher_sees_nothing_while_the_data_cannot_be_read() {
    let (_dir, data, svc, captured) = setup().await;
    data.fail(USER_READS);
    let published = publish(&svc, ALICE).await;
    let subscribed = subscribe(&svc, BOB, ALICE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Never more than offline, whatever the answers...
    for m in captured.take() {
        assert_offline_only(&m);
    }
    // ...and here, nothing at all: both are told to try later.
    assert_try_later(&published, "PUBLISH");
    assert_try_later(&subscribed, "SUBSCRIBE");
    // A SERVICE that needs the contact list (Lync's setContact) is refused the same way.
    let soap = format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><m:setContact xmlns:m=\"http://schemas.microsoft.com/winrtc/2002/11/sip\"><m:displayName/><m:groups>1</m:groups><m:subscribed>true</m:subscribed><m:URI>{CAROL}</m:URI><m:externalURI/><m:deltaNum>1</m:deltaNum></m:setContact></s:Body></s:Envelope>"
    );
    let edit = request(
        "SERVICE",
        ALICE,
        ALICE,
        "Content-Type: application/SOAP+xml\r\n",
        &soap,
    );
    let alice = format!("sip:{ALICE}");
    assert_try_later(
        &common::handle(&svc, &edit, &alice, &alice).await,
        "SERVICE",
    );
    assert!(
        svc.view(&alice, Some(&format!("sip:{BOB}"))).await.is_err(),
        "no view from failed reads"
    );
    assert!(captured.take().is_empty());
    assert_eq!(svc.counts(), (0, 0, 0), "nothing held from failed reads");

    data.recover();
    assert_eq!(publish(&svc, ALICE).await.status, 200);
    assert_eq!(subscribe(&svc, CAROL, ALICE).await.status, 200);
    assert_open_with_note(&notifies_to(&captured, CAROL, 1).await[0]);
    assert_eq!(subscribe(&svc, BOB, ALICE).await.status, 200);
    assert_offline_only(&notifies_to(&captured, BOB, 1).await[0]);
}

/// Alice is held (watched, publishing) when her data changes and can no longer be read:
/// her watchers see her offline (what she allows each is not known any more), a new
/// SUBSCRIBE to her gets 503, and once a read succeeds everyone sees what their
/// relationship allows again.
#[tokio::test]
async fn a_held_user_whose_read_fails_shows_offline_until_read_again() {
    let (_dir, data, svc, captured) = setup().await;
    assert_eq!(publish(&svc, ALICE).await.status, 200);
    assert_eq!(subscribe(&svc, CAROL, ALICE).await.status, 200);
    assert_open_with_note(&notifies_to(&captured, CAROL, 1).await[0]);
    assert_eq!(subscribe(&svc, BOB, ALICE).await.status, 200);
    assert_offline_only(&notifies_to(&captured, BOB, 1).await[0]);

    data.fail(USER_READS);
    // A change the running server must read (the CLI's way: straight to the database).
    data.straight()
        .1
        .set_manual(
            ALICE,
            &ManualState {
                availability: "away".into(),
                note: None,
                until_ms: None,
                set_at_ms: svc.now_ms(),
            },
        )
        .await
        .unwrap();
    let seen = notifies_to(&captured, CAROL, 1).await;
    assert_offline_only(seen.last().unwrap());
    assert_try_later(&subscribe(&svc, DAVE, ALICE).await, "new SUBSCRIBE");
    for m in captured.take() {
        assert_offline_only(&m);
    }

    data.recover();
    // Housekeeping reads her again within a second or so.
    let seen = notifies_to(&captured, CAROL, 1).await;
    let b = body(seen.last().unwrap());
    assert!(
        b.contains("<basic>open</basic>") && b.contains("away"),
        "{b}"
    );
    assert_eq!(subscribe(&svc, BOB, ALICE).await.status, 200);
    for m in notifies_to(&captured, BOB, 1).await {
        assert_offline_only(&m);
    }
}

/// A read held back for one user holds up nobody else: no lock is held across it.
#[tokio::test]
async fn a_read_under_way_holds_up_no_other_request() {
    let (_dir, data, svc, captured) = setup().await;
    let (gate, waiting) = subscribe_held_back(&data, &svc, "load", CAROL).await;
    let others = async {
        assert_eq!(publish(&svc, DAVE).await.status, 200);
        assert_eq!(subscribe(&svc, BOB, DAVE).await.status, 200);
        assert_open_with_note(&notifies_to(&captured, BOB, 1).await[0]);
        svc.counts()
    };
    let counts = tokio::time::timeout(Duration::from_secs(5), others)
        .await
        .expect("requests for others went through while Alice's read waited");
    assert_eq!(
        counts,
        (1, 1, 1),
        "Dave, with his publication and Bob's watch"
    );
    assert!(!waiting.is_finished());
    gate.release();
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(svc.counts(), (2, 1, 2));
}

/// Carol's SUBSCRIBE reads Alice; meanwhile Alice's PUBLISH reads her too and puts her
/// in first. One presentity results, holding both the publication and the watcher.
#[tokio::test]
async fn two_requests_reading_one_user_make_one_presentity() {
    let (_dir, data, svc, captured) = setup().await;
    let (gate, waiting) = subscribe_held_back(&data, &svc, "load", CAROL).await;
    let published = tokio::time::timeout(Duration::from_secs(5), publish(&svc, ALICE))
        .await
        .expect("Alice's PUBLISH did not wait for Carol's read");
    assert_eq!(published.status, 200);
    gate.release();
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(
        svc.counts(),
        (1, 1, 1),
        "one Alice, one publication, one watch"
    );
    assert_open_with_note(&notifies_to(&captured, CAROL, 1).await[0]);
    // Still watched: her next change reaches Carol.
    assert_eq!(publish(&svc, ALICE).await.status, 200);
    assert_eq!(svc.counts(), (1, 2, 1));
}

/// Dave's SUBSCRIBE read Alice's contact list (Dave not on it: a colleague), and while
/// that read waited, Alice blocked him. The change log reports it before the read is
/// used: Alice is read again, and Dave sees her offline.
#[tokio::test]
async fn a_read_that_predates_a_change_is_read_again() {
    let (_dir, data, svc, captured) = setup().await;
    data.straight()
        .1
        .set_manual(
            ALICE,
            &ManualState {
                availability: "busy".into(),
                note: Some("at the lake".into()),
                until_ms: None,
                set_at_ms: svc.now_ms(),
            },
        )
        .await
        .unwrap();
    let (gate, waiting) = subscribe_held_back(&data, &svc, "contact_list", DAVE).await;
    data.straight()
        .0
        .set_relationship(
            ALICE,
            DAVE,
            Relationship::Blocked,
            Relationship::Colleagues,
            0,
        )
        .await
        .unwrap();
    // The change log is followed every quarter second.
    tokio::time::sleep(Duration::from_millis(800)).await;
    gate.release();
    assert_eq!(waiting.await.unwrap(), 200);
    let seen = notifies_to(&captured, DAVE, 1).await;
    assert_offline_only(&seen[0]);
    assert!(!body(&seen[0]).contains("busy"));
}
