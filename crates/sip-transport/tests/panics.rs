//! The panic policy of the crate header, over real sockets: a handler that panics on one
//! message costs that message (UDP) or that connection (TCP), never the receive loop or
//! the server; the panic is counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{eventually, request};
use sip_transport::{Handler, Inbound, Transports, TransportsConfig, Work};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Panics on requests whose Call-ID starts with "boom", in place or in its work.
struct Fragile {
    handled: AtomicUsize,
}

impl Handler for Fragile {
    fn on_message(&self, inbound: Inbound) -> Option<Work> {
        let call_id = inbound.message.call_id().unwrap_or("").to_owned();
        if call_id.starts_with("boom-now") {
            panic!("handler panicked in place");
        }
        if call_id.starts_with("boom-later") {
            return Some(Box::pin(async { panic!("handler work panicked") }));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_message_costs_itself_not_the_receive_loop() {
    let transports = Transports::new(TransportsConfig::default());
    let handler = Arc::new(Fragile {
        handled: AtomicUsize::new(0),
    });
    transports.set_handler(handler.clone());
    let udp = transports
        .add_udp(UdpSocket::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let tcp = transports
        .add_tcp_listener(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();

    // UDP: more poison datagrams than there are receive loops, then a good one.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..8 {
        let kind = if i % 2 == 0 { "boom-now" } else { "boom-later" };
        client
            .send_to(&request(&format!("{kind}-{i}")), udp)
            .await
            .unwrap();
    }
    client.send_to(&request("fine-1"), udp).await.unwrap();
    eventually("the UDP loops go on after panics", || {
        handler.handled.load(Ordering::SeqCst) == 1
    })
    .await;
    // Two receive loops: the good datagram may be handled before the last poison one.
    eventually("every panic counted", || {
        transports.stats().panics_contained == 8
    })
    .await;

    // TCP: the connection whose message panicked is closed and released; others go on.
    let mut poisoned = TcpStream::connect(tcp).await.unwrap();
    eventually("connection registered", || {
        transports.connection_count() == 1
    })
    .await;
    poisoned.write_all(&request("boom-now-tcp")).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), poisoned.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "closed: {r:?}");
    eventually("the slot is released", || {
        transports.connection_count() == 0
    })
    .await;
    let mut good = TcpStream::connect(tcp).await.unwrap();
    good.write_all(&request("fine-2")).await.unwrap();
    eventually("another connection is served", || {
        handler.handled.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("the TCP panic counted too", || {
        transports.stats().panics_contained == 9
    })
    .await;
}
