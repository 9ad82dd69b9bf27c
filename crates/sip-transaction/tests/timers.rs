//! Transaction timers over real UDP sockets, with tokio time paused (it auto-advances
//! whenever every task waits, so 32 s of Timer F take no wall time).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sip_message::{parse_datagram, HeaderName, Message, Method, Uri};
use sip_transaction::{
    new_branch, ClientEvent, ServerRequest, Timers, TransactionLayer, TransactionUser,
};
use sip_transport::{Inbound, Target, TransportKind, Transports, TransportsConfig, Work};
use tokio::net::UdpSocket;

/// Answers every request with `.0`, after a 180 when `.2` is set.
struct Answer(u16, Mutex<Vec<String>>, bool);

impl TransactionUser for Answer {
    fn on_request(&self, req: ServerRequest) -> Option<Work> {
        self.1
            .lock()
            .push(req.message.method().unwrap().to_string());
        let resp = req.message.response(self.0, Some("srv"));
        let ringing = self.2.then(|| req.message.response(180, Some("srv")));
        Some(Box::pin(async move {
            if let Some(r) = ringing {
                req.tx.respond(&r).await;
            }
            req.tx.respond(&resp).await
        }))
    }
    fn on_ack(&self, _ack: Inbound) -> Option<Work> {
        self.1.lock().push("stray ACK".into());
        None
    }
}

async fn layer(status: u16) -> (TransactionLayer, Arc<Answer>, std::net::SocketAddr) {
    layer_with(status, false).await
}

async fn layer_with(
    status: u16,
    provisional: bool,
) -> (TransactionLayer, Arc<Answer>, std::net::SocketAddr) {
    let transports = Transports::new(TransportsConfig::default());
    let layer = TransactionLayer::new(transports.clone(), Timers::default());
    let tu = Arc::new(Answer(status, Mutex::new(Vec::new()), provisional));
    layer.set_user(tu.clone());
    let addr = transports
        .add_udp(UdpSocket::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    (layer, tu, addr)
}

fn request(method: &str, branch: &str, peer: std::net::SocketAddr) -> Vec<u8> {
    format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch={branch};rport\r\n\
         From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1@x\r\n\
         CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn drain(sock: &UdpSocket) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
        out.push(parse_datagram(&buf[..n]).unwrap());
    }
    out
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn non_invite_client_retransmits_then_times_out() {
    let (layer, _tu, _) = layer(200).await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer = silent.local_addr().unwrap();
    let mut req = Message::request(Method::Message, Uri::parse("sip:bob@example.com").unwrap());
    req.headers.push(
        HeaderName::Via,
        format!("SIP/2.0/UDP 127.0.0.1:1;branch={}", new_branch()),
    );
    for (n, v) in [
        ("From", "<sip:a@x>;tag=1"),
        ("To", "<sip:b@x>"),
        ("Call-ID", "z@x"),
        ("CSeq", "1 MESSAGE"),
    ] {
        req.headers.push(HeaderName::from_wire(n), v);
    }
    let started = tokio::time::Instant::now();
    let mut tx = layer.send_request(req, Target::Addr(TransportKind::Udp, peer));
    let mut got = None;
    while let Some(ev) = tx.events.recv().await {
        got = Some(ev);
    }
    assert!(matches!(got, Some(ClientEvent::Timeout)));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(32),
        "Timer F = 64*T1"
    );
    // Timer E: 0, .5, 1.5, 3.5, 7.5, then every T2 (4 s) up to 31.5 s: 11 sends.
    assert_eq!(drain(&silent).len(), 11);
}

/// A final response that no provisional one preceded (a challenge or a refusal to a
/// possibly spoofed INVITE) is sent once per copy of the INVITE that arrives: never
/// more answers than requests (no reflector), and a lost answer is recovered by the
/// client's own retransmission.
#[tokio::test(start_paused = true)]
async fn invite_refused_at_once_is_answered_once_per_copy() {
    let (_layer, tu, addr) = layer(407).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    let branch = new_branch();
    client
        .send_to(&request("INVITE", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(drain(&client).len(), 1, "no Timer G without a provisional");
    client
        .send_to(&request("INVITE", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    let again = drain(&client);
    assert_eq!(
        again.len(),
        1,
        "a retransmitted INVITE gets the answer again"
    );
    assert_eq!(again[0].status(), Some(407));
    tokio::time::sleep(Duration::from_secs(40)).await;
    settle().await;
    assert!(drain(&client).is_empty());
    assert_eq!(*tu.1.lock(), vec!["INVITE".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn invite_server_retransmits_final_until_ack() {
    let (_layer, tu, addr) = layer_with(486, true).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    let branch = new_branch();
    client
        .send_to(&request("INVITE", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    // Retransmitted INVITE: absorbed, answered with the same 486, not passed up.
    client
        .send_to(&request("INVITE", &branch, me), addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    settle().await;
    let got: Vec<Message> = drain(&client)
        .into_iter()
        .filter(|m| m.status() != Some(180))
        .collect();
    assert!(got.iter().all(|m| m.status() == Some(486)));
    // first send + retransmission answer + Timer G at 0.5 s and 1.5 s
    assert_eq!(got.len(), 4, "{got:?}");
    let via = got[0].headers.get(&HeaderName::Via).unwrap();
    assert!(
        via.contains(&format!("rport={}", me.port())),
        "RFC 3581 rport filled in: {via}"
    );
    let to = got[0].headers.get(&HeaderName::To).unwrap().to_owned();
    let ack = String::from_utf8(request("ACK", &branch, me))
        .unwrap()
        .replace("To: <sip:bob@example.com>", &format!("To: {to}"));
    client.send_to(ack.as_bytes(), addr).await.unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    settle().await;
    assert!(drain(&client).is_empty(), "no retransmission after ACK");
    assert_eq!(*tu.1.lock(), vec!["INVITE".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn non_invite_server_answers_retransmissions_then_forgets() {
    let (layer, tu, addr) = layer(200).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    let branch = new_branch();
    client
        .send_to(&request("OPTIONS", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    client
        .send_to(&request("OPTIONS", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    assert_eq!(drain(&client).len(), 2);
    assert_eq!(layer.counts().0, 1);
    tokio::time::sleep(Duration::from_secs(33)).await;
    settle().await;
    assert_eq!(layer.counts().0, 0, "Timer J removed the transaction");
    assert_eq!(tu.1.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_challenge_is_not_kept_for_timer_j() {
    let (layer, tu, addr) = layer(407).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    let branch = new_branch();
    client
        .send_to(&request("MESSAGE", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    assert_eq!(drain(&client).len(), 1);
    assert_eq!(layer.counts().0, 0, "no lingering transaction for a 407");
    // A retransmission is a new request and gets an equivalent challenge.
    client
        .send_to(&request("MESSAGE", &branch, me), addr)
        .await
        .unwrap();
    settle().await;
    assert_eq!(drain(&client)[0].status(), Some(407));
    assert_eq!(tu.1.lock().len(), 2);
}
