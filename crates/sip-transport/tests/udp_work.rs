//! Work a handler hands a UDP receive loop runs there only until it would wait: a request
//! whose handling waits (on a database, say) never holds up the datagrams behind it, and
//! it still completes, or has its panic contained and counted, on a task of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use common::{eventually, request};
use sip_transport::{Handler, Inbound, Transports, TransportsConfig, Work};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// "wait-…" requests wait for `release` and then count (or panic, "wait-boom-…");
/// "quick-…" requests count at once.
struct Waiting {
    release: Arc<Notify>,
    waited: Arc<AtomicUsize>,
    quick: Arc<AtomicUsize>,
}

impl Handler for Waiting {
    fn on_message(&self, inbound: Inbound) -> Option<Work> {
        let call_id = inbound.message.call_id().unwrap_or("").to_owned();
        let (release, waited, quick) = (
            self.release.clone(),
            self.waited.clone(),
            self.quick.clone(),
        );
        Some(Box::pin(async move {
            if call_id.starts_with("wait-") {
                release.notified().await;
                if call_id.starts_with("wait-boom-") {
                    panic!("work panicked after waiting");
                }
                waited.fetch_add(1, Ordering::SeqCst);
            } else {
                quick.fetch_add(1, Ordering::SeqCst);
            }
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_work_leaves_the_receive_loop_free() {
    let transports = Transports::new(TransportsConfig::default());
    let handler = Arc::new(Waiting {
        release: Arc::new(Notify::new()),
        waited: Arc::new(AtomicUsize::new(0)),
        quick: Arc::new(AtomicUsize::new(0)),
    });
    transports.set_handler(handler.clone());
    let udp = transports
        .add_udp(UdpSocket::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // More waiting requests than there are receive loops, then quick ones: were the
    // waiting work run on the loops to its end, the quick ones would never be read.
    for i in 0..6 {
        client
            .send_to(&request(&format!("wait-{i}")), udp)
            .await
            .unwrap();
    }
    client.send_to(&request("wait-boom-1"), udp).await.unwrap();
    for i in 0..3 {
        client
            .send_to(&request(&format!("quick-{i}")), udp)
            .await
            .unwrap();
    }
    eventually(
        "the quick requests are handled while the others wait",
        || handler.quick.load(Ordering::SeqCst) == 3,
    )
    .await;
    assert_eq!(handler.waited.load(Ordering::SeqCst), 0);
    // The waiting work goes on where it was moved, and finishes when released.
    handler.release.notify_waiters();
    eventually("the waiting requests complete", || {
        handler.waited.load(Ordering::SeqCst) == 6
    })
    .await;
    eventually("the panic after the wait is contained and counted", || {
        transports.stats().panics_contained == 1
    })
    .await;
}
