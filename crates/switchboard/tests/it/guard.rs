//! Per-source accounting over real sockets: password guessing is slowed and locked out
//! for the guessing source only, nonces are bound and burned, floods are dropped and
//! banned, connections per source are capped, slow and non-reading peers are closed.
//! Attackers send from 127.0.0.2, the legitimate user from 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sip_message::{AuthHeader, HeaderName, Message};
use switchboard::config::{Listen, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::support::*;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];

fn attacker() -> IpAddr {
    IpAddr::from(ATTACKER)
}

fn warning(m: &Message) -> String {
    m.headers.get(&HeaderName::Warning).unwrap_or("").to_owned()
}

/// A REGISTER answered once with `pw`: the final response.
async fn register_with(c: &mut Client, pw: &str) -> Message {
    let reg = c.register_request(None);
    c.send_authenticated_with(reg, Some(pw)).await
}

#[tokio::test]
async fn digest_guessing_is_slowed_then_locked_out_for_the_guessing_source_only() {
    let s = TestServer::start_with(&["alice"], |c| {
        c.limits.auth_free_failures = 2;
        c.limits.auth_lockout_after = 4;
    })
    .await;
    let mut mallory = Client::connect_from(&s, Transport::Udp, "alice", attacker()).await;
    let mut answers = Vec::new();
    for i in 0..4 {
        let started = tokio::time::Instant::now();
        let r = register_with(&mut mallory, &format!("guess-{i}")).await;
        answers.push((status(&r), warning(&r), started.elapsed()));
    }
    assert!(answers.iter().all(|(st, _, _)| *st == 403), "{answers:?}");
    assert!(answers[0].1.contains("wrong user name or password"));
    // The third failure is answered after the guard's delay (0.5 s by default); the first
    // two at once. (Ordering, not a timing threshold: delayed vs not delayed.)
    assert!(
        answers[2].2 > answers[0].2 + Duration::from_millis(300),
        "{answers:?}"
    );
    // Locked out now, even with the right password, from this address...
    let r = register_with(&mut mallory, "pw-alice").await;
    assert_eq!(status(&r), 403);
    assert!(warning(&r).contains("too many failed sign-ins"), "{r}");
    // ...but the real alice, elsewhere, signs in.
    let mut alice = s.client(Transport::Udp, "alice").await;
    assert_eq!(status(&alice.register(None).await), 200);
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_same_answer() {
    let s = TestServer::start(&["alice"]).await;
    let mut known = s.client(Transport::Tcp, "alice").await;
    let mut unknown = s.client(Transport::Tcp, "nobody").await;
    let a = register_with(&mut known, "wrong").await;
    let b = register_with(&mut unknown, "wrong").await;
    assert_eq!((status(&a), warning(&a)), (status(&b), warning(&b)));
}

/// The nonce of a 401 and the first answer's parts.
async fn challenge_of(c: &mut Client) -> (Message, Message) {
    let reg = c.register_request(None);
    c.send(&reg).await;
    let ch = c.final_response().await;
    assert_eq!(status(&ch), 401);
    (reg, ch)
}

#[tokio::test]
async fn a_nonce_answered_wrongly_is_burned_and_gives_no_oracle() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Udp, "alice").await;
    let (reg, ch) = challenge_of(&mut c).await;
    let wrong = c.with_credentials(&reg, &ch, "guess", "MD5", 1);
    c.send(&wrong).await;
    assert_eq!(status(&c.final_response().await), 403);
    // The same nonce again, right or wrong: a new challenge, the answer not judged.
    for (pw, nc) in [("pw-alice", 2), ("guess-2", 3)] {
        let again = c.with_credentials(&reg, &ch, pw, "MD5", nc);
        c.send(&again).await;
        let r = c.final_response().await;
        assert_eq!(status(&r), 401, "{pw}: {r}");
        let stale = r
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .filter_map(|v| AuthHeader::parse(v).ok())
            .any(|a| {
                a.param("stale")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            });
        assert!(stale, "{r}");
    }
}

#[tokio::test]
async fn a_nonce_issued_to_another_address_does_not_sign_in() {
    let s = TestServer::start(&["alice"]).await;
    let mut mallory = Client::connect_from(&s, Transport::Udp, "alice", attacker()).await;
    let (_, ch) = challenge_of(&mut mallory).await;
    let mut alice = s.client(Transport::Udp, "alice").await;
    let reg = alice.register_request(None);
    let answered = alice.with_credentials(&reg, &ch, "pw-alice", "MD5", 1);
    alice.send(&answered).await;
    let r = alice.final_response().await;
    assert_eq!(status(&r), 401, "a fresh challenge, not a sign-in: {r}");
}

fn options_from(ip: [u8; 4], port: u16, n: usize) -> String {
    format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {}:{port};branch=z9hG4bK-f{n}-{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:flood@example.com>;tag=f\r\nTo: <sip:example.com>\r\n\
         Call-ID: flood-{n}-{}@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        IpAddr::from(ip),
        rand_hex(),
        rand_hex()
    )
}

async fn http_status(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let json = body.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str(json).unwrap()
}

fn with_http(c: &mut ServerConfig) {
    c.http = Listen::On(SocketAddr::from(([127, 0, 0, 1], 0)));
}

#[tokio::test]
async fn a_flooding_source_is_dropped_then_banned_while_others_are_served() {
    let s = TestServer::start_with(&["alice"], |c| {
        with_http(c);
        c.limits.source_requests_per_sec = 20;
        c.limits.source_request_burst = 20;
        c.limits.ban_after_dropped = 50;
    })
    .await;
    let server = s.addr(Transport::Udp);
    let flood = UdpSocket::bind(SocketAddr::from((ATTACKER, 0)))
        .await
        .unwrap();
    let port = flood.local_addr().unwrap().port();
    for n in 0..300 {
        let _ = flood
            .send_to(options_from(ATTACKER, port, n).as_bytes(), server)
            .await;
    }
    // At most the burst (and what refilled meanwhile) was answered.
    let mut answered = 0;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), flood.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    assert!(
        (1..100).contains(&answered),
        "{answered} answers to 300 requests"
    );
    // Banned over UDP: nothing more is answered there. Datagrams can be spoofed, so the
    // address's TCP (which cannot) is still served: a forged flood in someone's name
    // does not cut them off.
    flood
        .send_to(options_from(ATTACKER, port, 999).as_bytes(), server)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), flood.recv_from(&mut buf))
            .await
            .is_err(),
        "a banned source is not answered over UDP"
    );
    let mut over_tcp = Client::connect_from(&s, Transport::Tcp, "alice", attacker()).await;
    assert_eq!(status(&over_tcp.register(None).await), 200);
    // alice, elsewhere, is served as usual.
    let mut alice = s.client(Transport::Udp, "alice").await;
    assert_eq!(status(&alice.register(None).await), 200);
    let st = http_status(s.server.http.unwrap()).await;
    let p = &st["protection"];
    assert!(p["bans"].as_u64().unwrap() >= 1, "{st}");
    assert!(p["active_bans"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        p["requests_dropped_over_rate"].as_u64().unwrap() >= 50,
        "{st}"
    );
}

#[tokio::test]
async fn one_source_cannot_hold_every_connection() {
    let s = TestServer::start_with(&["alice"], |c| {
        c.limits.max_connections_per_source = 5;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((ATTACKER, 0))).unwrap();
        held.push(sock.connect(s.addr(Transport::Tcp)).await.unwrap());
    }
    // Let the server accept them all before the sixth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((ATTACKER, 0))).unwrap();
    let mut sixth = sock.connect(s.addr(Transport::Tcp)).await.unwrap();
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(WAIT, sixth.read(&mut one)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "sixth refused: {r:?}");
    // The five are still served, and so is alice from another address.
    let mut alice = s.client(Transport::Tcp, "alice").await;
    assert_eq!(status(&alice.register(None).await), 200);
    drop(held);
}

#[tokio::test]
async fn slow_peers_are_closed_at_their_deadlines() {
    let s = TestServer::start_with(&["alice"], |c| {
        c.first_message_secs = 1;
        c.message_secs = 2;
    })
    .await;
    // Says nothing at all.
    let mut silent = TcpStream::connect(s.addr(Transport::Tcp)).await.unwrap();
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(WAIT, silent.read(&mut one)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    // Trickles a header one byte every 300 ms (slowloris).
    let mut slow = TcpStream::connect(s.addr(Transport::Tcp)).await.unwrap();
    let text = options_from([127, 0, 0, 1], 5060, 1);
    let mut closed = false;
    for b in text.as_bytes().iter().take(40) {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut one)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a message begun must be finished in time");
    let mut alice = s.client(Transport::Tcp, "alice").await;
    assert_eq!(status(&alice.register(None).await), 200);
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_closed_not_buffered_for() {
    let s = TestServer::start_with(&["alice", "bob"], |c| {
        with_http(c);
        c.max_message_size = 16 * 1024;
        c.write_queue_bytes = 64 * 1024;
        c.limits.user_requests_per_sec = 0;
    })
    .await;
    // bob registers over TCP with a tiny receive buffer, then never reads again.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(s.addr(Transport::Tcp)).await.unwrap();
    let mut bob = Client::from_stream(&s, stream, "bob");
    assert_eq!(status(&bob.register(None).await), 200);
    let mut alice = s.client(Transport::Udp, "alice").await;
    let body = "x".repeat(12 * 1024);
    // One challenge, then many authenticated MESSAGEs (rising nonce-counts) sent
    // without waiting: bob never answers them.
    let first = alice.message_to("bob", &body);
    alice.send(&first).await;
    let ch = alice.final_response().await;
    assert_eq!(status(&ch), 407);
    let http = s.server.http.unwrap();
    let mut closed = 0;
    for round in 0..10u32 {
        for i in 0..100u32 {
            let m = alice.message_to("bob", &body);
            let m = alice.with_credentials(&m, &ch, "pw-alice", "MD5", 2 + round * 100 + i);
            alice.send(&m).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        closed = http_status(http).await["protection"]["connections_closed_not_reading"]
            .as_u64()
            .unwrap();
        if closed > 0 {
            break;
        }
    }
    assert!(closed >= 1, "bob's connection was closed for not reading");
    drop(bob);
}
