//! Expiry with paused tokio time: publications (RFC 3903 §6 step 5) and subscriptions
//! (RFC 6665 §4.2.2 `timeout`) run out on their own, and so does a hand-set state, and
//! the watchers hear of each. The service is driven through its hook with real SIP
//! messages; NOTIFYs are captured where the SIP core would send them.

use std::sync::Arc;
use std::time::Duration;

use sip_message::{HeaderName, Message};
use switchboard_presence::{PresenceConfig, PresenceService};
use switchboard_store::{ManualState, PresenceStore};

mod common;
use common::{request, Captured};

const OPEN: &str = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:alice@x.test\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>";

fn state(m: &Message) -> (&str, String) {
    (
        m.headers
            .get(&HeaderName::from_wire("Subscription-State"))
            .unwrap(),
        String::from_utf8_lossy(&m.body).into_owned(),
    )
}

async fn setup() -> (
    tempfile::TempDir,
    Arc<PresenceService>,
    Arc<Captured>,
    Arc<PresenceStore>,
) {
    let (dir, store) = common::store_with(&["alice@x.test", "bob@x.test"]);
    let cfg = PresenceConfig {
        notify_interval: Duration::ZERO,
        ..Default::default()
    };
    let (svc, captured) = common::start(store.clone(), cfg).await;
    (dir, svc, captured, store.presence.clone())
}

async fn settle() {
    // Let spawned NOTIFY tasks run (paused time moves only when everything waits).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn publications_and_subscriptions_expire() {
    let (_dir, svc, notifies, _) = setup().await;
    let publish = request(
        "PUBLISH",
        "alice@x.test",
        "alice@x.test",
        "Event: presence\r\nExpires: 60\r\nContent-Type: application/pidf+xml\r\n",
        OPEN,
    );
    let a = common::handle(&svc, &publish, "sip:alice@x.test", "sip:alice@x.test").await;
    assert_eq!(a.status, 200);
    let sub = request(
        "SUBSCRIBE",
        "bob@x.test",
        "alice@x.test",
        "Event: presence\r\nExpires: 120\r\n",
        "",
    );
    let a = common::handle(&svc, &sub, "sip:bob@x.test", "sip:alice@x.test").await;
    assert_eq!(a.status, 200);
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1);
    assert!(state(&n[0]).0.starts_with("active;expires=120"));
    assert!(state(&n[0]).1.contains("<basic>open</basic>"));

    // The publication runs out after 60 s: the watcher sees offline.
    tokio::time::sleep(Duration::from_secs(62)).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1, "one NOTIFY for the expired publication");
    assert!(state(&n[0]).1.contains("<basic>closed</basic>"));
    assert_eq!(svc.counts().1, 0, "no publication left");

    // The subscription runs out after 120 s: a final NOTIFY with reason timeout.
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1);
    assert_eq!(state(&n[0]).0, "terminated;reason=timeout");
    assert_eq!(svc.counts(), (0, 0, 0), "nothing held for nobody");
}

#[tokio::test(start_paused = true)]
async fn a_hand_set_state_runs_out_at_its_time() {
    let (_dir, svc, notifies, store) = setup().await;
    let publish = request(
        "PUBLISH",
        "alice@x.test",
        "alice@x.test",
        "Event: presence\r\nExpires: 3600\r\nContent-Type: application/pidf+xml\r\n",
        OPEN,
    );
    assert_eq!(
        common::handle(&svc, &publish, "sip:alice@x.test", "sip:alice@x.test")
            .await
            .status,
        200
    );
    let sub = request(
        "SUBSCRIBE",
        "bob@x.test",
        "alice@x.test",
        "Event: presence\r\nExpires: 3600\r\n",
        "",
    );
    assert_eq!(
        common::handle(&svc, &sub, "sip:bob@x.test", "sip:alice@x.test")
            .await
            .status,
        200
    );
    settle().await;
    notifies.take();
    let now = svc.now_ms();
    store
        .set_manual(
            "alice@x.test",
            &ManualState {
                availability: "brb".into(),
                note: None,
                until_ms: Some(now + 30_000),
                set_at_ms: now,
            },
        )
        .unwrap();
    // The change log is followed within a quarter second.
    tokio::time::sleep(Duration::from_millis(600)).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1);
    assert!(state(&n[0]).1.contains("availability=\"brb\""));
    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    let n = notifies.take();
    assert_eq!(n.len(), 1, "the by-hand state ran out");
    assert!(state(&n[0]).1.contains("availability=\"available\""));
}
