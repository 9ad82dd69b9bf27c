//! UDP: one datagram carries one message (RFC 3261 §18.3).

use std::sync::Arc;

use sip_guard::Admission;
use sip_message::{parse_datagram, read_request_head};
use tokio::net::UdpSocket;

use crate::{contain, run_or_detach, Inbound, Source, Target, TransportKind, Transports};

pub(crate) async fn receive_loop(transports: Transports, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut shutdown = transports.inner.shutdown.subscribe();
    loop {
        let (n, remote) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                // ICMP errors surface as recv errors on some systems; keep serving.
                Err(e) => { tracing::trace!(error = %e, "udp recv"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let data = &buf[..n];
        // Keep-alive CRLFs (RFC 5626 §3.5.1 uses STUN on UDP, but bare CRLFs are common).
        if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue;
        }
        // Before any parsing: a banned source or one over its rate costs one map lookup.
        if transports.inner.guard.admit_request(remote.ip(), false) != Admission::Admit {
            continue;
        }
        let target = Target::Addr(TransportKind::Udp, remote);
        if n > transports.inner.config.max_message_size {
            let head_end = data
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4)
                .unwrap_or(n);
            if let Some(Some(head)) =
                contain(&transports, remote, || read_request_head(&data[..head_end]))
            {
                transports
                    .answer_rejected(&head, 513, "message too large", target)
                    .await;
            }
            continue;
        }
        let Some(parsed) = contain(&transports, remote, || parse_datagram(data)) else {
            continue;
        };
        match parsed {
            Ok(message) => {
                let Some(h) = transports.inner.handler.get().cloned() else {
                    continue;
                };
                let source = Source {
                    transport: TransportKind::Udp,
                    remote,
                    local,
                    connection: None,
                };
                let work = contain(&transports, remote, || {
                    h.on_message(Inbound { message, source })
                });
                if let Some(Some(w)) = work {
                    run_or_detach(&transports, remote, w).await;
                }
            }
            Err(rej) => {
                tracing::debug!(%remote, error = %rej.error, "rejected datagram");
                if let Some(head) = rej.head {
                    transports
                        .answer_rejected(&head, rej.error.status, &rej.error.reason, target)
                        .await;
                }
            }
        }
    }
}
