//! # sip-transaction: the transaction layer of RFC 3261 §17
//!
//! Sits between the transports and the transaction user (the proxy core):
//! - **server transactions** (§17.2): matched by branch, sent-by and method (§17.2.3,
//!   with an RFC 2543 fallback key for branches without the magic cookie); retransmitted
//!   requests are absorbed or answered with the last response; INVITE final responses
//!   are retransmitted over UDP (Timer G) until ACK (Timer H, then Timer I); non-INVITE
//!   transactions linger for Timer J; a 2xx to INVITE keeps the transaction in the
//!   Accepted state of RFC 6026 §8.7 for 64·T1 to absorb retransmitted INVITEs.
//! - **client transactions** (§17.1): requests retransmitted over UDP (Timers A/E), timed
//!   out by Timers B/F, ACK generated for non-2xx final responses to INVITE (§17.1.1.3),
//!   late final responses absorbed (Timers D/K), 2xx retransmissions passed up during
//!   Timer M (RFC 6026).
//! - §18.2.1 Via processing: `received` and `rport` (RFC 3581) are added to the top Via of
//!   every request received; responses go back per §18.2.2 (same connection for streams).
//!
//! Every timer is a tokio timer, so tests pause time and advance it.
#![forbid(unsafe_code)]

mod client;
pub mod mailbox;
mod server;
mod shards;

pub use client::{cancel_for, ClientEvent, ClientTransaction};
pub use server::{ServerRequest, ServerTxHandle};

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use sip_message::{HeaderName, Message, Method, Via, BRANCH_COOKIE};
use sip_transport::{
    ConnectionId, Handler, Inbound, Source, Target, TransportKind, Transports, Work,
};

/// RFC 3261 §17.1.1.1 timer values.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Adds what a message needs to be accepted on the path it is sent over: MS-SIPAE
/// message signatures for a client that signed in with NTLM (every message the server
/// sends on that security association is signed, MS-SIPAE §3.2.5.2). Consulted for every
/// message the layer sends; must be quick when there is nothing to do.
pub trait OutboundSigner: Send + Sync + 'static {
    /// A signed copy of `msg` for `target`, or `None` when it goes out as it is.
    fn sign(&self, target: &Target, msg: &Message) -> Option<Message>;
    /// Whether a response that arrived over `source` may be taken. On a security
    /// association the client signs its responses too (MS-SIPAE §3.3.5.2); one whose
    /// signature fails is dropped here, as if it had been lost.
    fn accept_response(&self, _source: &Source, _msg: &Message) -> bool {
        true
    }
}

/// What the transaction user (the proxy/registrar core) receives.
pub trait TransactionUser: Send + Sync + 'static {
    /// A new request (not ACK) with its server transaction. Returned work runs on the
    /// reading task (see [`sip_transport::Handler`]); spawn anything that waits long.
    fn on_request(&self, request: ServerRequest) -> Option<Work>;
    /// An ACK that matched no server transaction (the ACK for a 2xx, RFC 3261 §17.1.1.3).
    fn on_ack(&self, ack: Inbound) -> Option<Work>;
    /// A response that matched no client transaction (e.g. a retransmitted 2xx).
    fn on_stray_response(&self, _response: Inbound) -> Option<Work> {
        None
    }
    /// A stream connection closed.
    fn on_connection_closed(&self, _id: ConnectionId) {}
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TxKey {
    branch: String,
    sent_by: String,
    method: Method,
}

pub(crate) struct Inner {
    pub(crate) transports: Transports,
    pub(crate) timers: Timers,
    pub(crate) server: shards::ShardedMap<TxKey, Arc<server::ServerTx>>,
    pub(crate) client: Mutex<HashMap<(String, Method), mailbox::Sender<Inbound>>>,
    pub(crate) tu: OnceLock<Arc<dyn TransactionUser>>,
    pub(crate) signer: OnceLock<Arc<dyn OutboundSigner>>,
    /// Completed transactions waiting out Timer J / L, in deadline order.
    pub(crate) linger:
        Mutex<std::collections::VecDeque<(tokio::time::Instant, Arc<server::ServerTx>)>>,
}

/// The transaction layer. Cheap to clone.
#[derive(Clone)]
pub struct TransactionLayer {
    pub(crate) inner: Arc<Inner>,
}

impl TransactionLayer {
    /// Creates the layer and makes it the handler of `transports`.
    pub fn new(transports: Transports, timers: Timers) -> Self {
        let layer = TransactionLayer {
            inner: Arc::new(Inner {
                transports: transports.clone(),
                timers,
                server: shards::ShardedMap::new(),
                client: Mutex::new(HashMap::new()),
                tu: OnceLock::new(),
                signer: OnceLock::new(),
                linger: Mutex::new(std::collections::VecDeque::new()),
            }),
        };
        transports.set_handler(Arc::new(layer.clone()));
        tokio::spawn(server::sweep_lingering(Arc::downgrade(&layer.inner)));
        layer
    }

    pub fn set_user(&self, tu: Arc<dyn TransactionUser>) {
        let _ = self.inner.tu.set(tu);
    }

    /// Installs the signer every outgoing message passes (once).
    pub fn set_signer(&self, signer: Arc<dyn OutboundSigner>) {
        let _ = self.inner.signer.set(signer);
    }

    pub fn transports(&self) -> &Transports {
        &self.inner.transports
    }

    pub fn timers(&self) -> Timers {
        self.inner.timers
    }

    /// Number of live server and client transactions (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        (self.inner.server.len(), self.inner.client.lock().len())
    }

    /// The INVITE server transaction a CANCEL refers to (RFC 3261 §9.2: same key as the
    /// CANCEL but with method INVITE).
    pub fn invite_for_cancel(&self, cancel: &Message) -> Option<ServerTxHandle> {
        let key = server_key(cancel, &cancel.top_via().ok()?, Method::Invite)?;
        let tx = self.inner.server.get(&key)?;
        Some(ServerTxHandle {
            tx,
            layer: self.clone(),
        })
    }

    /// Sends a response outside any transaction (to a stray ACK... or a 2xx
    /// retransmission being forwarded upstream, RFC 3261 §16.7).
    pub async fn send_stateless(&self, target: Target, msg: &Message) {
        if let Err(e) = self
            .inner
            .transports
            .send(target, self.inner.wire(&target, msg))
            .await
        {
            tracing::debug!(error = %e, "stateless send failed");
        }
    }
}

impl Inner {
    /// The bytes of `msg` as sent to `target` (signed when the path needs it).
    pub(crate) fn wire(&self, target: &Target, msg: &Message) -> bytes::Bytes {
        if let Some(signed) = self.signer.get().and_then(|s| s.sign(target, msg)) {
            return signed.encode().into();
        }
        msg.encode().into()
    }
}

/// A fresh RFC 3261 branch (magic cookie + 96 random bits).
pub fn new_branch() -> String {
    format!("{BRANCH_COOKIE}{:024x}", rand::random::<u128>() >> 32)
}

/// RFC 3261 §17.2.3 matching key of `msg`, whose top Via is `via` (parsed once by the
/// caller: parsing is most of the cost here); `method` is the method to match (INVITE for
/// ACK/CANCEL lookups).
pub(crate) fn server_key(msg: &Message, via: &Via, method: Method) -> Option<TxKey> {
    let sent_by = match via.port {
        Some(p) => format!("{}:{p}", via.host),
        None => via.host.to_string(),
    };
    if via.has_rfc3261_branch() {
        return Some(TxKey {
            branch: via.branch()?.to_owned(),
            sent_by,
            method,
        });
    }
    // RFC 2543 fallback (§17.2.3): Request-URI, From tag, Call-ID, CSeq number, top Via.
    let from_tag = msg
        .from_header()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .unwrap_or_default();
    let ruri = msg.request_uri().map(|u| u.to_string()).unwrap_or_default();
    let seq = msg.cseq().ok()?.seq;
    let branch = format!("2543|{ruri}|{from_tag}|{}|{seq}|{}", msg.call_id()?, via);
    Some(TxKey {
        branch,
        sent_by,
        method,
    })
}

/// §18.2.2: where the responses of a server transaction go. Streams: back over the same
/// connection. UDP: to the source address and port, whether or not the client asked for
/// `rport` (RFC 3581 §4 applied to everyone: it is the only address that works through
/// NAT, and the one a client without a listening socket can read).
pub(crate) fn response_target(via: &Via, source: &Source) -> Target {
    match source.connection {
        Some(id) => {
            let port = via.port.unwrap_or(5060);
            let fallback = std::net::SocketAddr::new(source.remote.ip(), port);
            Target::Connection {
                id,
                fallback: Some((source.transport, fallback)),
            }
        }
        None => Target::Addr(TransportKind::Udp, source.remote),
    }
}

/// §18.2.1 / RFC 3581 §4: records where the request really came from in its top Via.
fn stamp_received(msg: &mut Message, source: &Source) -> Option<Via> {
    let mut via = msg.top_via().ok()?;
    let ip = source.remote.ip();
    let host_is_ip = match &via.host {
        sip_message::Host::V4(a) => std::net::IpAddr::V4(*a) == ip,
        sip_message::Host::V6(a) => std::net::IpAddr::V6(*a) == ip,
        sip_message::Host::Domain(_) => false,
    };
    let wants_rport = via.params.has("rport");
    if host_is_ip && !wants_rport {
        return Some(via);
    }
    if !host_is_ip || wants_rport {
        let ip_text = match ip {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
        };
        via.params.set("received", Some(&ip_text));
    }
    if wants_rport {
        via.params
            .set("rport", Some(&source.remote.port().to_string()));
    }
    msg.headers.pop_first_value(&HeaderName::Via);
    msg.headers.insert_first(HeaderName::Via, via.to_string());
    Some(via)
}

/// Runs a TU's work on its own task: forwarding a stray message may open a connection,
/// and a receive loop must not wait for that.
fn spawned(work: Option<Work>) -> Option<Work> {
    if let Some(w) = work {
        tokio::spawn(w);
    }
    None
}

impl Handler for TransactionLayer {
    fn on_message(&self, inbound: Inbound) -> Option<Work> {
        let Inbound {
            mut message,
            source,
        } = inbound;
        let tu = self.inner.tu.get().cloned()?;
        match message.method().cloned() {
            Some(method) => {
                let via = stamp_received(&mut message, &source)?;
                if method == Method::Ack {
                    if let Some(key) = server_key(&message, &via, Method::Invite) {
                        let tx = self.inner.server.get(&key);
                        if tx.is_some_and(|tx| tx.on_ack()) {
                            return None;
                        }
                    }
                    // Forwarding an ACK may open a connection: never on the reading task.
                    if let Some(work) = tu.on_ack(Inbound { message, source }) {
                        tokio::spawn(work);
                    }
                    return None;
                }
                let key = server_key(&message, &via, method.clone())?;
                let existing = self.inner.server.get(&key);
                if let Some(tx) = existing {
                    // A retransmission (§17.2.1, §17.2.2).
                    let layer = self.clone();
                    return Some(Box::pin(async move { tx.on_retransmission(&layer).await }));
                }
                let target = response_target(&via, &source);
                let tx = Arc::new(server::ServerTx::new(
                    key.clone(),
                    method == Method::Invite,
                    source.transport.is_reliable(),
                    target,
                ));
                self.inner.server.insert(key, tx.clone());
                tu.on_request(ServerRequest {
                    message,
                    source,
                    tx: ServerTxHandle {
                        tx,
                        layer: self.clone(),
                    },
                })
            }
            None => {
                if let Some(signer) = self.inner.signer.get() {
                    if !signer.accept_response(&source, &message) {
                        return None;
                    }
                }
                let via = message.top_via().ok()?;
                let Some(branch) = via.branch() else {
                    return spawned(tu.on_stray_response(Inbound { message, source }));
                };
                let cseq = message.cseq().ok()?;
                let key = (branch.to_owned(), cseq.method);
                let chan = self.inner.client.lock().get(&key).cloned();
                match chan {
                    Some(ch)
                        if ch
                            .send(Inbound {
                                message: message.clone(),
                                source,
                            })
                            .is_ok() =>
                    {
                        None
                    }
                    _ => spawned(tu.on_stray_response(Inbound { message, source })),
                }
            }
        }
    }

    fn on_connection_closed(&self, id: ConnectionId) {
        if let Some(tu) = self.inner.tu.get() {
            tu.on_connection_closed(id);
        }
    }
}
