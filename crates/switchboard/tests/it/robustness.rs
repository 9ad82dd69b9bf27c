//! Bad input: every RFC 4475 message over UDP gets its verdict and the server carries on;
//! oversized and unframeable stream input is answered or closed; keep-alives answered.

use std::time::Duration;

use crate::support::*;

const TORTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../sip-message/tests/data/rfc4475"
);

fn torture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{TORTURE}/{name}")).unwrap()
}

/// The status each torture message must get from this server (a proxy/registrar for
/// example.com), or None where it must be dropped silently (responses).
fn expected(name: &str) -> Option<&'static [u16]> {
    Some(match name {
        // RFC 4475 §3.1.2: malformed → 400 (badvers 505).
        "badinv01.dat" | "clerr.dat" | "ncl.dat" | "scalar02.dat" | "quotbal.dat"
        | "ltgtruri.dat" | "lwsruri.dat" | "lwsstart.dat" | "trws.dat" | "escruri.dat"
        | "baddate.dat" | "regbadct.dat" | "badaspec.dat" | "mismatch01.dat" | "mismatch02.dat"
        | "insuf.dat" | "multi01.dat" | "mcl01.dat" => &[400],
        "badvers.dat" => &[505],
        // No empty line ends its header section: still a readable request, answered 400.
        "baddn.dat" => &[400],
        "scalarlg.dat" | "bigcode.dat" | "bcast.dat" | "unreason.dat" | "noreason.dat" => {
            return None
        }
        "unkscm.dat" | "novelsc.dat" => &[416],
        "unksm2.dat" => &[400],
        "bext01.dat" => &[420],
        "zeromf.dat" => &[483],
        "regaut01.dat" => &[401],
        // REGISTERs for example.com: need credentials first.
        "cparam01.dat" | "cparam02.dat" | "regescrt.dat" | "escnull.dat" | "dblreq.dat" => &[401],
        // Requests from foreign senders to foreign or local domains: never relayed.
        _ => &[403, 404, 407, 480],
    })
}

#[tokio::test]
async fn every_torture_message_over_udp() {
    let mut names: Vec<String> = std::fs::read_dir(TORTURE)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 49);
    for name in names {
        // A server each: several messages share a branch and sent-by, and would rightly be
        // taken for retransmissions of one another (RFC 3261 §17.2.3).
        let s = TestServer::start(&["user", "j.user"]).await;
        let mut c = s.client(Transport::Udp, "user").await;
        c.send_raw(&torture(&name)).await;
        let got = c
            .recv_within(Duration::from_millis(if expected(&name).is_none() {
                200
            } else {
                3000
            }))
            .await;
        match expected(&name) {
            None => assert!(
                got.is_none(),
                "{name}: a response must be dropped, got {got:?}"
            ),
            Some(codes) => {
                let got = got.unwrap_or_else(|| panic!("{name}: no answer"));
                assert!(
                    codes.contains(&status(&got)),
                    "{name}: got {}",
                    status(&got)
                );
            }
        }
        // Still serving.
        assert_eq!(
            status(&c.register(None).await),
            200,
            "{name}: server still serves"
        );
    }
}

#[tokio::test]
async fn garbage_over_udp_and_tcp_is_survived() {
    let s = TestServer::start(&["alice"]).await;
    let mut u = s.client(Transport::Udp, "alice").await;
    for junk in [
        &b"\x00\x01\x02garbage"[..],
        b"SIP/2.0",
        b"INVITE",
        b"\r\n\r\n\r\n",
        &[0xffu8; 2000][..],
    ] {
        u.send_raw(junk).await;
    }
    let mut t = s.client(Transport::Tcp, "alice").await;
    t.send_raw(b"NOT SIP AT ALL\r\nfoo\r\n\r\n").await;
    // No Content-Length on a stream: answered 400 (if the head parses) and closed.
    assert!(t
        .recv_within(Duration::from_secs(2))
        .await
        .is_none_or(|m| m.status() == Some(400)));
    assert!(
        t.read_raw(Duration::from_secs(2))
            .await
            .is_none_or(|b| b.is_empty()),
        "connection closed"
    );
    assert_eq!(status(&u.register(None).await), 200);
}

#[tokio::test]
async fn oversized_stream_message_is_answered_513_and_closed() {
    let s = TestServer::start_with(&["alice", "bob"], |c| c.max_message_size = 4096).await;
    let mut c = s.client(Transport::Tcp, "alice").await;
    let mut m = c.message_to("bob", &"x".repeat(10_000));
    m.headers
        .set(sip_message::HeaderName::ContentType, "text/plain");
    c.send(&m).await;
    let resp = c.recv().await.expect("an answer before the close");
    assert_eq!(status(&resp), 513);
    assert!(c
        .read_raw(Duration::from_secs(2))
        .await
        .is_none_or(|b| b.is_empty()));
    // A header section that never ends is cut off too.
    let mut c = s.client(Transport::Tcp, "alice").await;
    c.send_raw(
        format!(
            "OPTIONS sip:example.com SIP/2.0\r\nX-Long: {}",
            "y".repeat(8000)
        )
        .as_bytes(),
    )
    .await;
    assert!(c
        .read_raw(Duration::from_secs(2))
        .await
        .is_none_or(|b| b.is_empty()));
    // Over UDP: 513 as well.
    let mut u = s.client(Transport::Udp, "alice").await;
    let m = u.message_to("bob", &"z".repeat(6000));
    u.send(&m).await;
    assert_eq!(status(&u.recv().await.unwrap()), 513);
}

#[tokio::test]
async fn crlf_keepalive_ping_gets_a_pong() {
    let s = TestServer::start(&["alice"]).await;
    for t in [Transport::Tcp, Transport::Tls] {
        let mut c = s.client(t, "alice").await;
        c.send_raw(b"\r\n\r\n").await;
        assert_eq!(
            c.read_raw(Duration::from_secs(2)).await.as_deref(),
            Some(&b"\r\n"[..])
        );
        // The connection still carries SIP.
        assert_eq!(status(&c.register(None).await), 200);
    }
}

#[tokio::test]
async fn bad_request_over_tcp_keeps_the_connection() {
    let s = TestServer::start(&["alice"]).await;
    let mut c = s.client(Transport::Tcp, "alice").await;
    // Framed (has Content-Length) but malformed: 400, and the stream goes on.
    c.send_raw(&torture("mismatch01.dat")).await;
    assert_eq!(status(&c.recv().await.unwrap()), 400);
    assert_eq!(status(&c.register(None).await), 200);
}
