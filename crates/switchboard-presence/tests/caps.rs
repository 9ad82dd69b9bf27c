//! The per-user bounds on the paths sockets reach only slowly: a contact list that grows
//! past the entry limit behind a subscription's back, a batched list replaced inside its
//! dialog, and Lync contact-list edits. Driven through the hook with real SIP messages;
//! NOTIFYs are captured where the SIP core would send them.

use std::sync::Arc;
use std::time::Duration;

use sip_message::{parse_datagram, HeaderName, Message};
use switchboard_core::seam::ServiceAnswer;
use switchboard_presence::{PresenceConfig, PresenceService};
use switchboard_store::{PresenceStore, Relationship};

mod common;
use common::Captured;

const ALICE: &str = "sip:alice@x.test";

/// A request from Alice to herself in dialog `call` (with our tag when in the dialog).
fn request(method: &str, call: &str, to_tag: Option<&str>, extra: &str, body: &str) -> Message {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} {ALICE} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{n}\r\nMax-Forwards: 70\r\n\
         From: <{ALICE}>;tag=f-{call}\r\nTo: <{ALICE}>{to_tag}\r\nCall-ID: {call}@test\r\nCSeq: {n} {method}\r\n\
         Contact: <sip:alice@127.0.0.1:5099>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        n = rand::random::<u16>(),
    );
    parse_datagram(text.as_bytes()).unwrap()
}

fn batch(resources: &[&str]) -> String {
    let list: String = resources
        .iter()
        .map(|r| format!("<resource uri=\"{r}\"/>"))
        .collect();
    format!(
        "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"{ALICE}\" name=\"\"><action name=\"subscribe\" id=\"1\"><adhocList>{list}</adhocList></action></batchSub>"
    )
}

const BATCHED: &str =
    "Event: presence\r\nExpires: 600\r\nContent-Type: application/msrtc-adrl-categorylist+xml\r\n";
const EVENTLIST: &str = "Event: presence\r\nExpires: 600\r\nSupported: eventlist\r\n";

fn warning(a: &ServiceAnswer) -> Option<&str> {
    a.headers
        .iter()
        .find(|(n, _)| n == "Warning")
        .map(|(_, v)| v.as_str())
}

async fn setup(
    cap: usize,
) -> (
    tempfile::TempDir,
    Arc<PresenceService>,
    Arc<Captured>,
    Arc<PresenceStore>,
) {
    let (dir, store) = common::store_with(&["alice@x.test", "bob@x.test", "carol@x.test"]);
    let cfg = PresenceConfig {
        notify_interval: Duration::ZERO,
        max_list_entries_per_user: cap,
        ..Default::default()
    };
    let (svc, captured) = common::start(store.clone(), cfg).await;
    (dir, svc, captured, store.presence.clone())
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn add_contact(store: &PresenceStore, contact: &str) {
    store
        .add_contact(
            "alice@x.test",
            contact,
            None,
            None,
            Relationship::Colleagues,
            0,
        )
        .unwrap();
}

fn sub_state(m: &Message) -> &str {
    m.headers
        .get(&HeaderName::from_wire("Subscription-State"))
        .unwrap()
}

/// The CLI does not know the limit: a contact list grown past it ends the list
/// subscription (`deactivated`, so the client asks again) and the new SUBSCRIBE is
/// refused with the Warning that says why.
#[tokio::test(start_paused = true)]
async fn a_contact_list_grown_past_the_limit_ends_its_subscription() {
    let (_dir, svc, notifies, store) = setup(3).await;
    add_contact(&store, "bob@x.test");
    add_contact(&store, "nobody@x.test");
    let sub = request("SUBSCRIBE", "l1", None, EVENTLIST, "");
    let a = common::handle(&svc, &sub, ALICE, ALICE).await;
    assert_eq!(a.status, 200);
    settle().await;
    assert_eq!(notifies.take().len(), 1);
    // Alice and Bob; the nobody holds nothing.
    assert_eq!(svc.counts(), (2, 0, 1));

    add_contact(&store, "carol@x.test");
    svc.reload(ALICE).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1, "carol joins the list");
    assert!(String::from_utf8_lossy(&n[0].body).contains("sip:carol@x.test"));
    assert_eq!(svc.counts().0, 3);

    add_contact(&store, "dave@x.test");
    svc.reload(ALICE).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1);
    assert_eq!(sub_state(&n[0]), "terminated;reason=deactivated");
    assert_eq!(svc.counts().2, 0);

    let again = request("SUBSCRIBE", "l2", None, EVENTLIST, "");
    let a = common::handle(&svc, &again, ALICE, ALICE).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        warning(&a),
        Some("399 switchboard \"too many list entries for this user (at most 3)\"")
    );
}

/// A batched SUBSCRIBE inside the dialog replaces the list within the same bounds: over
/// the limit it is refused and the list stays as it was; within it, it replaces it.
#[tokio::test(start_paused = true)]
async fn a_batched_list_replaced_in_its_dialog_keeps_the_bounds() {
    let (_dir, svc, notifies, _store) = setup(3).await;
    let first = request(
        "SUBSCRIBE",
        "b1",
        None,
        BATCHED,
        &batch(&["sip:bob@x.test", "sip:ghost@x.test"]),
    );
    let a = common::handle(&svc, &first, ALICE, ALICE).await;
    assert_eq!(a.status, 200);
    let tag = a.to_tag.clone().unwrap();
    settle().await;
    notifies.take();
    assert_eq!(svc.counts().0, 2);

    let four = batch(&[
        "sip:bob@x.test",
        "sip:carol@x.test",
        "sip:ghost@x.test",
        "sip:ghost2@x.test",
    ]);
    let over = request("SUBSCRIBE", "b1", Some(&tag), BATCHED, &four);
    let a = common::handle(&svc, &over, ALICE, ALICE).await;
    assert_eq!(a.status, 403);
    assert_eq!(svc.counts().0, 2, "carol not watched");

    // Three, one of them new and real: Carol is watched, Bob no longer.
    let three = batch(&["sip:carol@x.test", "sip:ghost@x.test", "sip:ghost2@x.test"]);
    let within = request("SUBSCRIBE", "b1", Some(&tag), BATCHED, &three);
    let a = common::handle(&svc, &within, ALICE, ALICE).await;
    assert_eq!(a.status, 200);
    settle().await;
    let n = notifies.take();
    let doc = String::from_utf8_lossy(&n.last().unwrap().body).into_owned();
    assert!(
        doc.contains("sip:carol@x.test") && !doc.contains("sip:bob@x.test"),
        "{doc}"
    );
    // Housekeeping drops Bob's presentity, now unwatched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(svc.counts().0, 2, "Alice and Carol");
}

/// Lync's MaxContacts: `setContact` of one contact too many is refused; changing a
/// contact already on the list is not.
#[tokio::test(start_paused = true)]
async fn a_lync_contact_list_does_not_grow_past_the_limit() {
    let (_dir, svc, _notifies, store) = setup(1).await;
    let set_contact = |uri: &str| {
        format!(
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><m:setContact xmlns:m=\"http://schemas.microsoft.com/winrtc/2002/11/sip\"><m:displayName/><m:groups>1</m:groups><m:subscribed>true</m:subscribed><m:URI>{uri}</m:URI><m:externalURI/><m:deltaNum>1</m:deltaNum></m:setContact></s:Body></s:Envelope>"
        )
    };
    let soap = "Content-Type: application/SOAP+xml\r\n";
    let bob = request("SERVICE", "s1", None, soap, &set_contact("bob@x.test"));
    assert_eq!(common::handle(&svc, &bob, ALICE, ALICE).await.status, 200);
    let carol = request("SERVICE", "s2", None, soap, &set_contact("carol@x.test"));
    let a = common::handle(&svc, &carol, ALICE, ALICE).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        warning(&a),
        Some("399 switchboard \"too many contacts for this user (at most 1)\"")
    );
    let bob_again = request("SERVICE", "s3", None, soap, &set_contact("bob@x.test"));
    assert_eq!(
        common::handle(&svc, &bob_again, ALICE, ALICE).await.status,
        200
    );
    let list = store.contact_list("alice@x.test").unwrap();
    let contacts: Vec<&str> = list.contacts.iter().map(|c| c.contact.as_str()).collect();
    assert_eq!(contacts, ["bob@x.test"]);
}
