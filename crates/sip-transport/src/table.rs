//! The set of transports and the table of open stream connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sip_guard::Guard;
use sip_message::{reason_phrase, response_from_headers, HeaderName, RejectedHead};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{Handler, Source, Target, TransportError, TransportKind};

/// Identifies one stream connection for as long as it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Limits of the transport layer.
#[derive(Debug, Clone)]
pub struct TransportsConfig {
    /// Largest message accepted, head and body (answered 513 above it).
    pub max_message_size: usize,
    /// A stream connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Open stream connections at most; further ones are refused at accept.
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// A new connection must deliver its first complete message within this.
    pub first_message_timeout: Duration,
    /// A message, once begun, must be complete within this (slowloris).
    pub message_timeout: Duration,
    /// Bytes queued for one connection at most; a peer that lets more pile up (it does
    /// not read) is closed.
    pub max_write_queue_bytes: usize,
    /// A write that makes no progress for this long closes the connection.
    pub write_stall_timeout: Duration,
}

impl Default for TransportsConfig {
    fn default() -> Self {
        TransportsConfig {
            max_message_size: 128 * 1024,
            idle_timeout: Duration::from_secs(3900),
            max_connections: 20_000,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            first_message_timeout: Duration::from_secs(20),
            message_timeout: Duration::from_secs(30),
            max_write_queue_bytes: 2 << 20,
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Conn {
    pub(crate) tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes in `tx` not yet written.
    pub(crate) queued: Arc<AtomicUsize>,
    /// Set to end the connection (reader and writer both watch it).
    pub(crate) close: Arc<watch::Sender<bool>>,
    pub(crate) kind: TransportKind,
    pub(crate) remote: SocketAddr,
    pub(crate) local: SocketAddr,
}

pub(crate) struct Inner {
    pub(crate) config: TransportsConfig,
    pub(crate) handler: OnceLock<Arc<dyn Handler>>,
    /// UDP sockets with their local address (asking the kernel per send is a syscall).
    udp: RwLock<Vec<(Arc<UdpSocket>, SocketAddr)>>,
    listening: RwLock<HashMap<TransportKind, SocketAddr>>,
    pub(crate) conns: RwLock<HashMap<ConnectionId, Conn>>,
    by_remote: RwLock<HashMap<(TransportKind, SocketAddr), ConnectionId>>,
    next_id: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) conn_slots: Arc<Semaphore>,
    local_ip_cache: Mutex<HashMap<IpAddr, IpAddr>>,
    pub(crate) guard: Arc<Guard>,
    counters: [AtomicU64; Counter::COUNT],
}

/// What a queued message costs against a write queue's bound: its bytes, but at least
/// what its queue node costs (a flood of 2-byte pongs is not free).
pub(crate) fn charge(len: usize) -> usize {
    len.max(64)
}

/// Events the transports count for `status`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    PanicsContained,
    ClosedSlow,
    ClosedWriteQueue,
    RefusedFull,
    OutboundRefused,
}

impl Counter {
    const COUNT: usize = 5;
}

/// What the transports counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Panics while reading or handling a message, caught and survived.
    pub panics_contained: u64,
    /// Connections closed for not finishing a TLS handshake or a message in time.
    pub closed_slow: u64,
    /// Connections closed because their peer did not read what was sent.
    pub closed_write_queue: u64,
    /// Connections refused because every slot was taken.
    pub refused_full: u64,
    /// Outbound connections not opened because every slot was taken.
    pub outbound_refused: u64,
    pub connections: u64,
}

impl Inner {
    pub(crate) fn count(&self, c: Counter) {
        self.counters[c as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// All transports of one server. Cheap to clone.
#[derive(Clone)]
pub struct Transports {
    pub(crate) inner: Arc<Inner>,
}

impl Transports {
    /// Transports with no per-source limits (tests, tools).
    pub fn new(config: TransportsConfig) -> Self {
        Self::with_guard(config, Arc::new(Guard::unlimited()))
    }

    /// Transports that account every source with `guard`.
    pub fn with_guard(config: TransportsConfig, guard: Arc<Guard>) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_connections));
        Transports {
            inner: Arc::new(Inner {
                config,
                handler: OnceLock::new(),
                udp: RwLock::new(Vec::new()),
                listening: RwLock::new(HashMap::new()),
                conns: RwLock::new(HashMap::new()),
                by_remote: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
                conn_slots: slots,
                local_ip_cache: Mutex::new(HashMap::new()),
                guard,
                counters: Default::default(),
            }),
        }
    }

    /// Sets the receiver of inbound messages; call once, before adding listeners.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        let _ = self.inner.handler.set(handler);
    }

    pub fn config(&self) -> &TransportsConfig {
        &self.inner.config
    }

    /// Serves a bound UDP socket.
    pub fn add_udp(&self, socket: UdpSocket) -> std::io::Result<SocketAddr> {
        let addr = socket.local_addr()?;
        let socket = Arc::new(socket);
        self.inner.udp.write().push((socket.clone(), addr));
        self.inner
            .listening
            .write()
            .entry(TransportKind::Udp)
            .or_insert(addr);
        // Two receive loops per socket so parsing can use both cores.
        let readers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        for _ in 0..readers {
            tokio::spawn(crate::udp::receive_loop(self.clone(), socket.clone()));
        }
        Ok(addr)
    }

    /// Serves a bound TCP listener (plain SIP over TCP).
    pub fn add_tcp_listener(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.inner
            .listening
            .write()
            .entry(TransportKind::Tcp)
            .or_insert(addr);
        tokio::spawn(crate::stream::accept_loop(self.clone(), listener, None));
        Ok(addr)
    }

    /// Serves a bound TCP listener with TLS.
    pub fn add_tls_listener(
        &self,
        listener: TcpListener,
        acceptor: TlsAcceptor,
    ) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.inner
            .listening
            .write()
            .entry(TransportKind::Tls)
            .or_insert(addr);
        tokio::spawn(crate::stream::accept_loop(
            self.clone(),
            listener,
            Some(acceptor),
        ));
        Ok(addr)
    }

    /// The address a transport listens on.
    pub fn listening(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.inner.listening.read().get(&kind).copied()
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// Runs a handler's work on a task of its own (not on the reading task), containing
    /// a panic as the crate header says: for work that may wait (a database, the
    /// network), which must never hold up the reading of other messages.
    pub fn spawn_work(&self, remote: SocketAddr, work: crate::Work) {
        let transports = self.clone();
        tokio::spawn(async move {
            crate::contain_work(&transports, remote, work).await;
        });
    }

    /// Whether a connection to `addr` over `kind` is open.
    pub fn has_connection(&self, kind: TransportKind, addr: SocketAddr) -> bool {
        self.inner.by_remote.read().contains_key(&(kind, addr))
    }

    /// Closes every open connection, listeners staying open (a fenced pool front end:
    /// its clients reconnect and register again). Returns how many.
    pub fn close_connections(&self) -> usize {
        let conns = self.inner.conns.read();
        for c in conns.values() {
            let _ = c.close.send(true);
        }
        conns.len()
    }

    pub fn connection_count(&self) -> usize {
        self.inner.conns.read().len()
    }

    /// The per-source accounting these transports apply.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.inner.guard
    }

    pub fn stats(&self) -> TransportStats {
        let c = |k: Counter| self.inner.counters[k as usize].load(Ordering::Relaxed);
        TransportStats {
            panics_contained: c(Counter::PanicsContained),
            closed_slow: c(Counter::ClosedSlow),
            closed_write_queue: c(Counter::ClosedWriteQueue),
            refused_full: c(Counter::RefusedFull),
            outbound_refused: c(Counter::OutboundRefused),
            connections: self.connection_count() as u64,
        }
    }

    /// Queues bytes on a connection's writer without waiting. A connection whose queue
    /// would exceed its byte bound is closed instead (its peer is not reading). False
    /// when the bytes were not queued.
    pub(crate) fn queue(
        &self,
        tx: &mpsc::UnboundedSender<Bytes>,
        data: Bytes,
        id: ConnectionId,
    ) -> bool {
        let (queued, close) = {
            let conns = self.inner.conns.read();
            match conns.get(&id) {
                Some(c) => (c.queued.clone(), c.close.clone()),
                None => return false,
            }
        };
        self.push(tx, &queued, &close, data, id)
    }

    fn push(
        &self,
        tx: &mpsc::UnboundedSender<Bytes>,
        queued: &AtomicUsize,
        close: &watch::Sender<bool>,
        data: Bytes,
        id: ConnectionId,
    ) -> bool {
        let n = charge(data.len());
        let before = queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.inner.config.max_write_queue_bytes {
            queued.fetch_sub(n, Ordering::Relaxed);
            if !*close.borrow() {
                self.inner.count(Counter::ClosedWriteQueue);
                tracing::info!(
                    connection = id.0,
                    queued = before,
                    "connection closed: its peer does not read"
                );
            }
            let _ = close.send(true);
            return false;
        }
        if tx.send(data).is_err() {
            queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Transport, remote and local address of an open connection.
    pub fn connection(&self, id: ConnectionId) -> Option<(TransportKind, SocketAddr, SocketAddr)> {
        self.inner
            .conns
            .read()
            .get(&id)
            .map(|c| (c.kind, c.remote, c.local))
    }

    /// The local IP address this host uses to reach `remote` (for Via and Record-Route
    /// when listening on a wildcard address).
    pub fn local_ip_for(&self, remote: IpAddr) -> IpAddr {
        if let Some(ip) = self.inner.local_ip_cache.lock().get(&remote) {
            return *ip;
        }
        let probe = if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let ip = std::net::UdpSocket::bind(probe)
            .and_then(|s| s.connect((remote, 9)).map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .unwrap_or(remote);
        self.inner.local_ip_cache.lock().insert(remote, ip);
        ip
    }

    pub(crate) fn register_conn(&self, conn: Conn) -> ConnectionId {
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        self.inner
            .by_remote
            .write()
            .insert((conn.kind, conn.remote), id);
        self.inner.conns.write().insert(id, conn);
        id
    }

    pub(crate) fn unregister_conn(&self, id: ConnectionId) {
        if let Some(c) = self.inner.conns.write().remove(&id) {
            let mut by = self.inner.by_remote.write();
            if by.get(&(c.kind, c.remote)) == Some(&id) {
                by.remove(&(c.kind, c.remote));
            }
        }
        if let Some(h) = self.inner.handler.get() {
            h.on_connection_closed(id);
        }
    }

    /// Sends bytes. Returns the source description of the path used (for Via).
    pub async fn send(&self, target: Target, data: Bytes) -> Result<Source, TransportError> {
        match target {
            Target::Connection { id, fallback } => match self.send_on(id, data.clone()).await {
                Ok(s) => Ok(s),
                Err(e) => match fallback {
                    Some((kind, addr)) => Box::pin(self.send(Target::Addr(kind, addr), data)).await,
                    None => Err(e),
                },
            },
            Target::Addr(TransportKind::Udp, addr) => {
                let (socket, local) = {
                    let socks = self.inner.udp.read();
                    socks
                        .iter()
                        .find(|(_, l)| l.is_ipv4() == addr.is_ipv4())
                        .or_else(|| socks.first())
                        .cloned()
                        .ok_or(TransportError::NoTransport(TransportKind::Udp))?
                };
                socket.send_to(&data, addr).await?;
                Ok(Source {
                    transport: TransportKind::Udp,
                    remote: addr,
                    local,
                    connection: None,
                })
            }
            Target::Addr(kind, addr) => {
                let existing = self.inner.by_remote.read().get(&(kind, addr)).copied();
                if let Some(id) = existing {
                    if let Ok(s) = self.send_on(id, data.clone()).await {
                        return Ok(s);
                    }
                }
                if kind != TransportKind::Tcp {
                    return Err(TransportError::NoOutbound(kind, addr));
                }
                // Outbound connections count against the same limit as inbound ones.
                let Ok(permit) = self.inner.conn_slots.clone().try_acquire_owned() else {
                    self.inner.count(Counter::OutboundRefused);
                    return Err(TransportError::NoOutbound(kind, addr));
                };
                let stream = tokio::time::timeout(
                    self.inner.config.connect_timeout,
                    TcpStream::connect(addr),
                )
                .await
                .map_err(|_| TransportError::ConnectTimeout(addr))??;
                let id = crate::stream::spawn_connection(
                    self.clone(),
                    stream,
                    kind,
                    crate::stream::Slot::outbound(permit),
                )?;
                self.send_on(id, data).await
            }
        }
    }

    async fn send_on(&self, id: ConnectionId, data: Bytes) -> Result<Source, TransportError> {
        let (tx, queued, close, source) = {
            let conns = self.inner.conns.read();
            let c = conns.get(&id).ok_or(TransportError::ConnectionClosed(id))?;
            (
                c.tx.clone(),
                c.queued.clone(),
                c.close.clone(),
                Source {
                    transport: c.kind,
                    remote: c.remote,
                    local: c.local,
                    connection: Some(id),
                },
            )
        };
        // Never waits: a connection that cannot take more is closed, not waited for.
        if self.push(&tx, &queued, &close, data, id) {
            Ok(source)
        } else {
            Err(TransportError::ConnectionClosed(id))
        }
    }

    /// Answers a request that could not be accepted, statelessly (RFC 3261 §8.2: a
    /// request that cannot be processed still gets a final response). ACK is never
    /// answered.
    pub(crate) async fn answer_rejected(
        &self,
        head: &RejectedHead,
        status: u16,
        detail: &str,
        to: Target,
    ) {
        // ACK is never answered; without a Via there is nobody to address an answer to.
        if head.method.as_deref() == Some("ACK") || !head.headers.has(&HeaderName::Via) {
            return;
        }
        let tag: u64 = rand_tag();
        let mut resp = response_from_headers(
            &head.headers,
            status,
            reason_phrase(status),
            Some(&format!("{tag:x}")),
        );
        let detail: String = detail
            .chars()
            .filter(|c| *c != '"' && !c.is_control())
            .take(200)
            .collect();
        resp.headers
            .push(HeaderName::Warning, format!("399 switchboard \"{detail}\""));
        if let Err(e) = self.send(to, Bytes::from(resp.encode())).await {
            tracing::debug!(error = %e, "could not answer a rejected message");
        }
    }
}

fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}
