//! # sip-transport: getting SIP messages on and off the wire
//!
//! - UDP sockets (RFC 3261 §18.2.1/§18.2.2): one datagram, one message.
//! - TCP and TLS connections (rustls): stream framing with mandatory Content-Length
//!   (§18.3), CRLF keep-alive pings answered with a pong (RFC 5626 §4.4.1), a size limit
//!   per message (413/513 answered when the head can be read, then the connection closed).
//! - A connection table, so requests for a registered endpoint and responses go back over
//!   the connection the endpoint opened (connection reuse; clients behind NAT and TLS
//!   clients without a listening certificate can be reached only that way).
//!
//! Malformed requests are answered here, statelessly, with the status the parser chose
//! (400, 505, ...); malformed responses are dropped (RFC 4475 §3.1.2.19). Everything that
//! parses is handed to a [`Handler`] (the transaction layer).
//!
//! WebSocket (RFC 7118) will be one more [`TransportKind`] feeding the same handler.
//!
//! ## Facing hostile peers
//! Every source is accounted by a [`sip_guard::Guard`] before its bytes are parsed: its
//! request rate (over it, requests are dropped; persistently over it, the source is
//! banned), its share of connections, and bans. Streams are bounded in time (TLS
//! handshake, first message, any begun message) and in the bytes queued for a peer that
//! does not read. Sending never waits on a peer: bytes for a connection are queued or the
//! connection is closed; only opening a new outbound TCP connection waits (bounded by
//! `connect_timeout`), and nothing on a receive loop does that.
//!
//! ## Panics
//! A panic while parsing or handling one message is **caught, logged and counted, and the
//! server goes on**: a UDP receive loop drops that datagram and keeps receiving; a stream
//! connection whose message caused it is closed (its slot and writer released). The
//! alternative, aborting the process so a service manager restarts it, would turn any
//! such bug into a remote kill switch for every signed-in user (registrations and
//! dialogs live in memory) that one datagram can pull again and again. Catching is sound
//! here because shared state is behind `parking_lot` locks, which do not poison and are
//! released while unwinding, and because one message's work does not leave another's
//! half-done. Work a handler hands a UDP receive loop runs there until it would wait, and
//! then on a task of its own (`run_or_detach`); that, and work spawned with
//! [`Transports::spawn_work`] (the handling of a request, which may wait on a database),
//! is contained the same way, logged and counted:
//! that request goes unanswered (its transaction times out at the peer) and its
//! connection stays open. Other spawned tasks are contained by tokio (a panicking task
//! ends, the runtime goes on). The count is in [`TransportStats::panics_contained`]: a
//! non-zero value is a bug to report.
#![forbid(unsafe_code)]

mod stream;
mod table;
mod udp;

pub use table::{ConnectionId, TransportStats, Transports, TransportsConfig};

/// Binds a UDP socket for SIP with large kernel buffers: bursts of requests arriving
/// while the readers are busy must wait in the socket, not be dropped (a dropped request
/// costs the client a 500 ms retransmission). The kernel caps the size at
/// `net.core.rmem_max` / `wmem_max`.
pub fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

use std::fmt;
use std::net::SocketAddr;

use sip_message::Message;

/// The transport protocols of a Via header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls,
}

impl TransportKind {
    /// The Via transport token (RFC 3261 §20.42).
    pub fn via_name(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }

    /// The `transport=` URI parameter value.
    pub fn param(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
        }
    }

    /// Parses a Via transport or `transport=` value (case-insensitive; pidgin-sipe writes
    /// `SIP/2.0/tls`).
    pub fn from_name(s: &str) -> Option<TransportKind> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(TransportKind::Udp),
            "tcp" => Some(TransportKind::Tcp),
            "tls" => Some(TransportKind::Tls),
            _ => None,
        }
    }

    pub fn is_reliable(self) -> bool {
        !matches!(self, TransportKind::Udp)
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.param())
    }
}

/// Where a message came from, and how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub transport: TransportKind,
    pub remote: SocketAddr,
    /// Our address the message arrived on (a real address for streams; for UDP on a
    /// wildcard socket, the wildcard).
    pub local: SocketAddr,
    /// The stream connection, if any.
    pub connection: Option<ConnectionId>,
}

/// Where to send a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Over an existing connection; falls back to `fallback` if it is gone.
    Connection {
        id: ConnectionId,
        fallback: Option<(TransportKind, SocketAddr)>,
    },
    /// To an address; streams reuse an open connection to it or open a new TCP one.
    Addr(TransportKind, SocketAddr),
}

/// A parsed message and its source.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub message: Message,
    pub source: Source,
}

/// Work a handler hands back to the reading task, which runs it before reading on.
pub type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// Receives everything the transports read. Called on the reading task, in wire order per
/// connection; the returned work is awaited there before the next message is read, so a
/// handler that may wait on the network (forwarding, opening a connection) must spawn
/// that part itself: a UDP receive loop serves every UDP peer. Running short work in
/// place saves a task spawn and a cross-thread wake-up per message.
pub trait Handler: Send + Sync + 'static {
    fn on_message(&self, inbound: Inbound) -> Option<Work>;
    /// A stream connection closed (RFC 5626 §5.4: its flow is gone).
    fn on_connection_closed(&self, _id: ConnectionId) {}
}

/// Runs `f`, containing a panic (see the crate header): `None` when it panicked.
pub(crate) fn contain<T>(
    transports: &Transports,
    remote: SocketAddr,
    f: impl FnOnce() -> T,
) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(panic) => {
            panic_caught(transports, remote, &panic);
            None
        }
    }
}

/// Runs a handler's work on a UDP receive loop as far as it goes without waiting, and
/// the rest of it (work that waits on a database, or the network) on a task of its own:
/// the socket, shared by every peer, is never held up, and work that needs no wait (a
/// challenge, a lookup and a send) costs no task and no wake-up of another worker. A
/// future moved to another task after a first poll re-registers its waker when polled
/// there (the `Future` contract), so nothing is lost by the move. Panics are contained as
/// in [`contain_work`].
pub(crate) async fn run_or_detach(transports: &Transports, remote: SocketAddr, work: Work) {
    let mut work = Some(work);
    let first = std::future::poll_fn(|cx| {
        let Some(w) = work.as_mut() else {
            return std::task::Poll::Ready(Ok(std::task::Poll::Ready(())));
        };
        std::task::Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || w.as_mut().poll(cx),
        )))
    })
    .await;
    match first {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            if let Some(w) = work.take() {
                transports.spawn_work(remote, w);
            }
        }
        Err(panic) => panic_caught(transports, remote, &panic),
    }
}

/// Awaits a handler's work, containing a panic: false when it panicked.
pub(crate) async fn contain_work(transports: &Transports, remote: SocketAddr, work: Work) -> bool {
    let mut work = work;
    let outcome = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await;
    match outcome {
        Ok(()) => true,
        Err(panic) => {
            panic_caught(transports, remote, &panic);
            false
        }
    }
}

fn panic_caught(
    transports: &Transports,
    remote: SocketAddr,
    panic: &Box<dyn std::any::Any + Send>,
) {
    transports.inner.count(table::Counter::PanicsContained);
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(%remote, panic = %what, "panic while handling a message; contained (please report this bug)");
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no {0} transport is listening")]
    NoTransport(TransportKind),
    #[error("connection {0:?} is closed")]
    ConnectionClosed(ConnectionId),
    #[error("no connection to {1} over {0}, and new outbound {0} connections are not made")]
    NoOutbound(TransportKind, SocketAddr),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
}
