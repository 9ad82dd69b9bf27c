//! What the transport's socket tests share: a minimal OPTIONS request and a bounded wait.

use std::time::Duration;

/// An OPTIONS request whose Call-ID (and branch) is `call_id`.
pub fn request(call_id: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{call_id}\r\n\
         From: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Waits until `f` holds, at most 5 s; panics naming `what` otherwise.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}
