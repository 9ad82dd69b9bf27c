//! TCP and TLS connections: accept, frame, read, write, close.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use sip_message::{frame_stream, parse_stream_message, read_request_head, Frame, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

use crate::table::Conn;
use crate::{ConnectionId, Inbound, Source, Target, TransportKind, Transports};

pub(crate) async fn accept_loop(
    transports: Transports,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let mut shutdown = transports.inner.shutdown.subscribe();
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = transports.inner.conn_slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; refusing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let _ =
                    spawn_connection(transports.clone(), stream, TransportKind::Tcp, Some(permit));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let transports = transports.clone();
                tokio::spawn(async move {
                    let local = match stream.local_addr() {
                        Ok(a) => a,
                        Err(_) => return,
                    };
                    let timeout = transports.inner.config.tls_handshake_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            start(
                                transports,
                                tls,
                                TransportKind::Tls,
                                remote,
                                local,
                                Some(permit),
                            );
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Starts serving an outbound (or accepted plain) TCP connection; returns its id at once.
pub(crate) fn spawn_connection(
    transports: Transports,
    stream: TcpStream,
    kind: TransportKind,
    permit: Option<OwnedSemaphorePermit>,
) -> std::io::Result<ConnectionId> {
    let remote = stream.peer_addr()?;
    let local = stream.local_addr()?;
    Ok(start(transports, stream, kind, remote, local, permit))
}

/// Registers a connection and spawns its writer and reader; returns its id.
fn start<S>(
    transports: Transports,
    stream: S,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) -> ConnectionId
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(1024);
    let id = transports.register_conn(Conn {
        tx: tx.clone(),
        kind,
        remote,
        local,
    });
    tokio::spawn(write_loop(w, rx));
    tokio::spawn(read_loop(
        transports, r, tx, id, kind, remote, local, permit,
    ));
    id
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(first) = rx.recv().await {
        if w.write_all(&first).await.is_err() {
            return;
        }
        // Drain what is queued before flushing: fewer syscalls under load.
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: AsyncRead + Unpin>(
    transports: Transports,
    mut r: R,
    tx: mpsc::Sender<Bytes>,
    id: ConnectionId,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let max = transports.inner.config.max_message_size;
    let idle = transports.inner.config.idle_timeout;
    let mut shutdown = transports.inner.shutdown.subscribe();
    let mut buf = BytesMut::with_capacity(8192);
    let source = Source {
        transport: kind,
        remote,
        local,
        connection: Some(id),
    };
    let reply = Target::Connection { id, fallback: None };
    'conn: loop {
        // Frame and hand over everything complete in the buffer.
        loop {
            match frame_stream(&buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping(n)) => {
                    let _ = buf.split_to(n);
                    // RFC 5626 §4.4.1: answer a double-CRLF ping with a single CRLF pong.
                    let _ = tx.send(Bytes::from_static(b"\r\n")).await;
                }
                Ok(Frame::Skip(n)) => {
                    let _ = buf.split_to(n);
                }
                Ok(Frame::Message(n)) => {
                    let bytes = buf.split_to(n);
                    match parse_stream_message(&bytes) {
                        Ok(message) => {
                            let work = transports
                                .inner
                                .handler
                                .get()
                                .and_then(|h| h.on_message(Inbound { message, source }));
                            if let Some(w) = work {
                                w.await;
                            }
                        }
                        Err(rej) => {
                            tracing::debug!(%remote, error = %rej.error, "rejected message");
                            if let Some(head) = rej.head {
                                transports
                                    .answer_rejected(
                                        &head,
                                        rej.error.status,
                                        &rej.error.reason,
                                        reply,
                                    )
                                    .await;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "unframeable stream; closing");
                    let (status, head_len) = match &e {
                        FrameError::TooLarge { head_len, .. } => (513, *head_len),
                        FrameError::MissingContentLength { head_len } => (400, Some(*head_len)),
                        FrameError::BadContentLength(_, head_len) => (400, Some(*head_len)),
                    };
                    if let Some(head) = head_len.and_then(|n| read_request_head(&buf[..n])) {
                        transports
                            .answer_rejected(&head, status, &e.to_string(), reply)
                            .await;
                    }
                    break 'conn;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let read = tokio::select! {
            r = tokio::time::timeout(idle, r.read_buf(&mut buf)) => r,
            _ = shutdown.changed() => break 'conn,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(%remote, "idle connection closed");
                break;
            }
        }
    }
    drop(tx);
    transports.unregister_conn(id);
}
