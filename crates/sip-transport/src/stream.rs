//! TCP and TLS connections: accept, frame, read, write, close.
//!
//! Each connection is bounded in every dimension a peer controls: its source's share of
//! connections (at accept), the time to finish the TLS handshake, to send its first
//! complete message and to finish any message it has begun (slowloris), the bytes of a
//! message, the request rate of its source, and the bytes waiting in its write queue (a
//! peer that does not read is closed, not buffered for).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sip_guard::Admission;
use sip_message::{parse_stream_message, read_request_head, Frame, FrameError, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::table::{Conn, Counter};
use crate::{contain, ConnectionId, Inbound, Source, Target, TransportKind, Transports};

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
        // Per-source share first (a banned or greedy source is refused without taking a
        // slot), then the server-wide limit.
        let Some(key) = transports.inner.guard.connection_opened(remote.ip()) else {
            tracing::debug!(%remote, "connection refused: source banned or at its connection cap");
            continue;
        };
        let source_slot = SourceSlot {
            transports: transports.clone(),
            key,
        };
        let Ok(permit) = transports.inner.conn_slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; refusing");
            transports.inner.count(Counter::RefusedFull);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot {
            _permit: permit,
            _source: Some(source_slot),
        };
        match &tls {
            None => {
                let _ = spawn_connection(transports.clone(), stream, TransportKind::Tcp, slot);
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
                            start(transports, tls, TransportKind::Tls, remote, local, slot);
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            transports.inner.count(Counter::ClosedSlow);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// A connection's claim on the server-wide slots and on its source's share; released
/// when the connection's reader ends.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

impl Slot {
    /// An outbound connection: it takes a server-wide slot, not a share of the remote
    /// address (we chose to open it).
    pub(crate) fn outbound(permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            _permit: permit,
            _source: None,
        }
    }
}

pub(crate) struct SourceSlot {
    transports: Transports,
    /// The accounting entry the connection was charged to (released there).
    key: sip_guard::SourceKey,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.transports.inner.guard.connection_closed(self.key);
    }
}

impl Slot {
    /// Whether the connection was accepted (not opened by us).
    fn inbound(&self) -> bool {
        self._source.is_some()
    }
}

/// Starts serving an outbound (or accepted plain) TCP connection; returns its id at once.
pub(crate) fn spawn_connection(
    transports: Transports,
    stream: TcpStream,
    kind: TransportKind,
    slot: Slot,
) -> std::io::Result<ConnectionId> {
    let remote = stream.peer_addr()?;
    let local = stream.local_addr()?;
    Ok(start(transports, stream, kind, remote, local, slot))
}

/// Registers a connection and spawns its writer and reader; returns its id.
fn start<S>(
    transports: Transports,
    stream: S,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    slot: Slot,
) -> ConnectionId
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let queued_for_reader = queued.clone();
    let (close, closed) = watch::channel(false);
    let close = Arc::new(close);
    let id = transports.register_conn(Conn {
        tx: tx.clone(),
        queued: queued.clone(),
        close: close.clone(),
        kind,
        remote,
        local,
    });
    // The slot is released when both halves are gone (the socket closes then).
    let slot = Arc::new(slot);
    tokio::spawn(write_loop(
        transports.clone(),
        w,
        rx,
        queued,
        close.clone(),
        closed.clone(),
        slot.clone(),
    ));
    tokio::spawn(read_loop(
        transports,
        r,
        Link {
            tx,
            queued: queued_for_reader,
            close,
            closed,
            id,
            kind,
            remote,
            local,
        },
        slot,
    ));
    id
}

async fn write_loop<W: AsyncWrite + Unpin>(
    transports: Transports,
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    close: Arc<watch::Sender<bool>>,
    mut closed: watch::Receiver<bool>,
    _slot: Arc<Slot>,
) {
    let stall = transports.inner.config.write_stall_timeout;
    'conn: loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = closed.changed() => break,
        };
        if !write_within(&mut w, first, stall, &queued).await {
            break;
        }
        // Drain what is queued before flushing: fewer syscalls under load.
        while let Ok(more) = rx.try_recv() {
            if !write_within(&mut w, more, stall, &queued).await {
                break 'conn;
            }
        }
        if !matches!(tokio::time::timeout(stall, w.flush()).await, Ok(Ok(()))) {
            break;
        }
    }
    // Whatever ended the writer ends the connection.
    let _ = close.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Writes one queued message; false when the peer made no progress for `stall` (it
/// stopped reading) or the write failed.
async fn write_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: Bytes,
    stall: Duration,
    queued: &AtomicUsize,
) -> bool {
    let ok = matches!(
        tokio::time::timeout(stall, w.write_all(&bytes)).await,
        Ok(Ok(()))
    );
    queued.fetch_sub(crate::table::charge(bytes.len()), Ordering::Relaxed);
    ok
}

/// What the reader knows of its connection.
struct Link {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    close: Arc<watch::Sender<bool>>,
    closed: watch::Receiver<bool>,
    id: ConnectionId,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
}

async fn read_loop<R: AsyncRead + Unpin>(
    transports: Transports,
    mut r: R,
    link: Link,
    slot: Arc<Slot>,
) {
    let cfg = &transports.inner.config;
    let (max, idle) = (cfg.max_message_size, cfg.idle_timeout);
    let mut shutdown = transports.inner.shutdown.subscribe();
    let mut closed = link.closed.clone();
    let remote = link.remote;
    let mut buf = BytesMut::with_capacity(8192);
    let mut framer = StreamFramer::default();
    let source = Source {
        transport: link.kind,
        remote,
        local: link.local,
        connection: Some(link.id),
    };
    let reply = Target::Connection {
        id: link.id,
        fallback: None,
    };
    // Slowloris bounds: the first complete message is due this soon after the
    // connection opened, and any message once begun must be complete this soon.
    let mut first_message_due = slot
        .inbound()
        .then(|| Instant::now() + cfg.first_message_timeout);
    let mut message_due: Option<Instant> = None;
    'conn: loop {
        // Frame and hand over everything complete in the buffer.
        loop {
            match framer.next_frame(&buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping(n)) => {
                    let _ = buf.split_to(n);
                    // RFC 5626 §4.4.1: answer a double-CRLF ping with a single CRLF pong.
                    transports.queue(&link.tx, Bytes::from_static(b"\r\n"), link.id);
                }
                Ok(Frame::Skip(n)) => {
                    let _ = buf.split_to(n);
                }
                Ok(Frame::Message(n)) => {
                    let bytes = buf.split_to(n).freeze();
                    first_message_due = None;
                    message_due = None;
                    match transports.inner.guard.admit_request(remote.ip(), true) {
                        Admission::Admit => {}
                        // Over the source's rate: dropped unread (a reliable transport's
                        // client retransmits nothing; it sees a timeout, as it would on
                        // an overloaded server).
                        Admission::OverRate => continue,
                        Admission::Banned => break 'conn,
                    }
                    if !deliver(&transports, &bytes, source, reply).await {
                        // A panic while handling this peer's message: its connection is
                        // not trusted further.
                        break 'conn;
                    }
                }
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "unframeable stream; closing");
                    let (status, head_len) = match &e {
                        FrameError::TooLarge { head_len, .. } => (513, *head_len),
                        FrameError::MissingContentLength { head_len } => (400, Some(*head_len)),
                        FrameError::BadContentLength(_, head_len) => (400, Some(*head_len)),
                    };
                    let head = head_len.and_then(|n| read_request_head(&buf[..n]));
                    if let Some(head) = head {
                        transports
                            .answer_rejected(&head, status, &e.to_string(), reply)
                            .await;
                    }
                    break 'conn;
                }
            }
        }
        if framer.in_message() && message_due.is_none() {
            message_due = Some(Instant::now() + cfg.message_timeout);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let deadline = [first_message_due, message_due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + idle)
            .min(Instant::now() + idle);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, r.read_buf(&mut buf)) => r,
            _ = shutdown.changed() => break 'conn,
            _ = closed.changed() => break 'conn,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                let slow = first_message_due.is_some_and(|t| t <= Instant::now())
                    || message_due.is_some_and(|t| t <= Instant::now());
                if slow {
                    transports.inner.count(Counter::ClosedSlow);
                    tracing::info!(%remote, "connection closed: too slow to send a complete message");
                } else {
                    tracing::debug!(%remote, "idle connection closed");
                }
                break;
            }
        }
    }
    // The writer sends what is already queued (a last 513, say), then closes: its queue
    // ends once the table's and our senders are gone. A peer that reads that slowly gets
    // one stall period in all, not one per queued message.
    drop(link.tx);
    if link.queued.load(Ordering::Relaxed) > 0 {
        let stall = cfg.write_stall_timeout;
        let close = link.close;
        tokio::spawn(async move {
            tokio::time::sleep(stall).await;
            let _ = close.send(true);
        });
    }
    transports.unregister_conn(link.id);
    drop(slot);
}

/// Parses one framed message and hands it to the handler, answering what cannot be
/// parsed. False when handling it panicked (the panic was contained and counted).
async fn deliver(transports: &Transports, bytes: &[u8], source: Source, reply: Target) -> bool {
    let remote = source.remote;
    let parsed = contain(transports, remote, || parse_stream_message(bytes));
    let Some(parsed) = parsed else { return false };
    match parsed {
        Ok(message) => {
            let handler = transports.inner.handler.get().cloned();
            let Some(h) = handler else { return true };
            let work = contain(transports, remote, || {
                h.on_message(Inbound { message, source })
            });
            match work {
                None => false,
                Some(None) => true,
                Some(Some(w)) => crate::contain_work(transports, remote, w).await,
            }
        }
        Err(rej) => {
            tracing::debug!(%remote, error = %rej.error, "rejected message");
            if let Some(head) = rej.head {
                transports
                    .answer_rejected(&head, rej.error.status, &rej.error.reason, reply)
                    .await;
            }
            true
        }
    }
}
