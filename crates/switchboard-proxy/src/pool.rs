//! The router as a front end of an Enterprise pool (see switchboard-pool).
//!
//! - **Registrations are published** to the pool's location table: after a REGISTER
//!   changes a user's bindings here (or a connection closes), the user is marked, and
//!   one writer sends every marked user's bindings *as they are at write time* in one
//!   transaction (a group commit: under load many REGISTERs share one round trip, and a
//!   later write never carries an older state). A REGISTER is answered once its write
//!   is committed, so any front end can find the device when the client sees 200.
//! - **Devices on other front ends** are read from that table per request and become
//!   bindings whose *path* (RFC 3327) is that front end's pool-internal address, with a
//!   flow parameter naming the member, epoch and connection. The request for them is
//!   forked like any other, with a Route to that front end carrying a flow token (RFC
//!   5626 §5.2 style) whose HMAC, under the pool secret, covers the Call-ID.
//! - **A member vouches for a sender**: a request one front end passes to another for
//!   the other to handle (a pager conversation another front end keeps, a conference
//!   it hosts) carries `Sb-Pool-Sender: <aor>;fe=N;mac=…`, an HMAC under the pool
//!   secret of the sender, the member and the request's Call-ID, CSeq and From tag. The
//!   receiving front end takes the sender as authenticated (the member challenged it,
//!   or checked its Lync signature); the header never leaves the pool.
//! - **One front end keeps each pair's conversation** (pager mode, sessions, a Lync
//!   session bridged to pager mode, and their CDR): the one the pair hashes to among the
//!   members with a fresh heartbeat that hold either user's devices (rendezvous hashing,
//!   the same answer on every front end; see `Core::pager_owner` for why among theirs).
//!   A MESSAGE or INVITE that entered elsewhere is passed there first, vouched for;
//!   when that member refuses connections (it just died) the conversation is kept where
//!   the request entered.
//! - **A conference lives on the front end that created it** (its address, or an
//!   invitation's focus, says which: `ImHook::home_of`); everything for it is passed
//!   there, vouched for, and what it sends back over a member's link is vouched for too.
//! - **A front end that takes no connections** (dead, not reaped yet) reaches none of its
//!   devices: they are left out of a fork, so a user with no other device is offline.
//! - **A request arriving with a flow token** for this front end and epoch was sent by a
//!   member: the sending front end authenticated its sender, ran the IM service (so CDR,
//!   pager state and offline storage happen once, there) and chose the device; this one
//!   only relays it to that device. A token for another epoch (this front end restarted
//!   or was fenced since) or with a bad MAC is refused with 403.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use sip_message::{NameAddr, Uri};
use switchboard_core::pool::{OwnBinding, PoolLocationData};
use switchboard_core::seam::{Conn, Flow, FrontEnd, Transport};
use switchboard_core::DataError;
use switchboard_pool::Pool;
use switchboard_registrar::Binding;
use tokio::sync::{oneshot, Notify};

use crate::outbound::Paths;
use crate::routing::to_aor;
use crate::Core;

/// The Route (and path) URI parameter naming a device's flow on another front end.
pub(crate) const FLOW_PARAM: &str = "sbf";
/// The path URI parameter marking a device that speaks the Lync dialect.
const LYNC_PARAM: &str = "sblync";
/// The header in which a member vouches for the sender it authenticated.
const SENDER_HEADER: &str = "Sb-Pool-Sender";
/// Users whose bindings one transaction writes at most.
const BATCH: usize = 512;

/// A front end's link to its pool: its membership and the shared location table.
#[derive(Clone)]
pub struct PoolLink {
    pub pool: Pool,
    pub location: Arc<dyn PoolLocationData>,
}

/// Who waits for a user's bindings to be written (a REGISTER's answer).
type Waiter = oneshot::Sender<Result<(), DataError>>;

/// Users whose bindings changed here and are not yet written, with who waits for it.
#[derive(Default)]
pub(crate) struct Registrations {
    dirty: Mutex<HashMap<String, Vec<Waiter>>>,
    wake: Notify,
}

impl Paths {
    /// Says to member `fe`, on `msg`, that this front end authenticated `from_aor` (or
    /// that a service here sends it, in its own name).
    pub(crate) fn vouch(&self, msg: &mut sip_message::Message, from_aor: &str, fe: u32) {
        let Some(pool) = self.pool.as_ref().map(|l| &l.pool) else {
            return;
        };
        let [call_id, cseq, tag] = vouched_parts(msg);
        let me = pool.config().fe.to_string();
        let to = fe.to_string();
        let mac = pool.mac(&[from_aor, &me, &to, &call_id, &cseq, &tag]);
        msg.headers.push(
            sip_message::HeaderName::from_wire(SENDER_HEADER),
            format!("<{from_aor}>;fe={me};mac={mac}"),
        );
    }

    /// The member at the far end of `flow`: a connection a member sent vouched-for
    /// requests over, or an address of a member's host.
    pub(crate) fn member_on(&self, flow: Flow) -> Option<u32> {
        let pool = &self.pool.as_ref()?.pool;
        if let Some(fe) = flow.conn().number.and_then(|n| {
            self.member_links
                .read()
                .get(&sip_transport::ConnectionId(n))
                .copied()
        }) {
            return Some(fe);
        }
        let me = pool.config().fe;
        let ip = flow.remote().ip();
        pool.members()
            .iter()
            .filter(|m| m.fe != me)
            .find(|m| m.sip_addr.parse::<SocketAddr>().is_ok_and(|a| a.ip() == ip))
            .map(|m| m.fe)
    }

    /// Marks `aor`'s bindings here as changed and waits until they are written to the
    /// pool (at once, without a pool).
    pub(crate) async fn publish_bindings(&self, aor: &str) -> Result<(), DataError> {
        if self.pool.is_none() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.registrations
            .dirty
            .lock()
            .entry(aor.to_owned())
            .or_default()
            .push(tx);
        self.registrations.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err(DataError::Unavailable("the pool writer stopped".into())))
    }

    /// [`Paths::publish_bindings`] for users whose devices went away (nobody waits).
    pub(crate) fn unpublish(&self, aors: impl IntoIterator<Item = String>) {
        if self.pool.is_none() {
            return;
        }
        let mut dirty = self.registrations.dirty.lock();
        for aor in aors {
            dirty.entry(aor).or_default();
        }
        drop(dirty);
        self.registrations.wake.notify_one();
    }

    /// The devices of `aor` connected to other front ends of the pool (none without a
    /// pool).
    pub(crate) async fn remote_bindings(&self, aor: &str) -> Result<Vec<Binding>, DataError> {
        self.remote_bindings_as(aor, false).await
    }

    /// As [`Paths::remote_bindings`]; `fresh`: asked of the database, not of its cache.
    async fn remote_bindings_as(&self, aor: &str, fresh: bool) -> Result<Vec<Binding>, DataError> {
        let Some(link) = &self.pool else {
            return Ok(Vec::new());
        };
        let me = link.pool.member().fe;
        let rows = if fresh {
            link.location.fresh_bindings(aor).await?
        } else {
            link.location.bindings(aor).await?
        };
        let now = tokio::time::Instant::now();
        Ok(rows
            .into_iter()
            .filter(|r| r.fe != me)
            .filter_map(|r| {
                let contact = NameAddr::parse(&r.contact).ok()?;
                let fe_addr: SocketAddr = r.fe_addr.parse().ok()?;
                let mut path = format!(
                    "sip:{fe_addr};transport=tcp;lr;{FLOW_PARAM}={}.{}.{}",
                    r.fe, r.epoch, r.connection
                );
                if r.lync {
                    path.push_str(&format!(";{LYNC_PARAM}"));
                }
                Some(Binding {
                    contact_key: contact.uri.to_string(),
                    instance: switchboard_registrar::instance_of(&contact),
                    contact,
                    expires_at: now + std::time::Duration::from_secs(r.expires_in.into()),
                    call_id: String::new(),
                    cseq: 0,
                    reg_id: None,
                    flow: Flow::new(
                        FrontEnd(r.fe),
                        Conn {
                            transport: Transport::Tcp,
                            remote: fe_addr,
                            local: SocketAddr::from(([0, 0, 0, 0], 0)),
                            number: None,
                        },
                    ),
                    temp_gruu: None,
                    pinned: false,
                    path: Some(path),
                })
            })
            .collect())
    }

    /// The device of `aor` with the instance `instance` (a public GRUU, RFC 5627 §3.1)
    /// connected to another front end of the pool, if there is one.
    pub(crate) async fn remote_gruu(
        &self,
        aor: &str,
        instance: &str,
    ) -> Result<Option<Binding>, DataError> {
        let wanted = sip_message::uri::unescape(instance);
        let wanted = wanted.trim_matches(['<', '>']);
        Ok(self
            .remote_bindings(aor)
            .await?
            .into_iter()
            .find(|b| b.instance.as_deref().map(|i| i.trim_matches(['<', '>'])) == Some(wanted)))
    }

    /// Every device of `aor`: this front end's, then the pool's others. Only this front
    /// end's when the pool's table cannot be read (logged): a device here is still
    /// reached.
    pub(crate) async fn all_bindings(&self, aor: &str) -> Result<Vec<Binding>, DataError> {
        let mut bindings = self.location.lookup(aor);
        let mut remote = self.remote_bindings(aor).await?;
        // A device registered elsewhere a moment ago may not be in the cache yet: before
        // the user is taken for offline (a message kept for later), the database is asked.
        if bindings.is_empty() && remote.is_empty() && self.pool.is_some() {
            remote = self.remote_bindings_as(aor, true).await?;
        }
        // A front end that takes no connections (it died a moment ago and is not reaped
        // yet) reaches none of its devices: they are left out, so a user with no other
        // device is offline (a message is kept for them) rather than unreachable.
        let mut down: Vec<u32> = Vec::new();
        let mut up: Vec<u32> = Vec::new();
        for b in &remote {
            let fe = b.flow.fe().0;
            if down.contains(&fe) || up.contains(&fe) {
                continue;
            }
            if self.member_reachable(b.flow.conn().remote).await {
                up.push(fe);
            } else {
                down.push(fe);
            }
        }
        remote.retain(|b| !down.contains(&b.flow.fe().0));
        bindings.extend(remote);
        Ok(bindings)
    }

    /// Whether the member at `addr` can be reached: a connection to it is open, or one
    /// can be opened within a second (a front end that just died refuses it).
    ///
    /// A probe's answer stands for [`PROBE_FRESH`], and callers asking while one runs
    /// wait for it: a burst of new conversations before the first connection to a member
    /// is open would otherwise open (and drop) a connection each, and a member that
    /// refuses them would be probed by every request.
    pub(crate) async fn member_reachable(&self, addr: SocketAddr) -> bool {
        let connected = || {
            self.layer
                .transports()
                .has_connection(sip_transport::TransportKind::Tcp, addr)
        };
        if connected() {
            return true;
        }
        let (mut running, mine) = {
            let mut probes = self.probes.0.lock();
            match probes.get(&addr) {
                Some(Probe::Done { at, reachable }) if at.elapsed() < PROBE_FRESH => {
                    return *reachable
                }
                // Its prober is still at it (a prober that went away left a closed one).
                Some(Probe::Running(rx)) if rx.has_changed().is_ok() => (rx.clone(), None),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    probes.insert(addr, Probe::Running(rx.clone()));
                    (rx, Some(tx))
                }
            }
        };
        let Some(tx) = mine else {
            if let Ok(answer) = running.wait_for(Option::is_some).await {
                return answer.unwrap_or(false);
            }
            // The prober went away before it knew: ask for ourselves.
            return connected() || probe(addr).await;
        };
        let reachable = connected() || probe(addr).await;
        self.probes.0.lock().insert(
            addr,
            Probe::Done {
                at: std::time::Instant::now(),
                reachable,
            },
        );
        let _ = tx.send(Some(reachable));
        reachable
    }

    /// Whether `b` is a device that speaks the Lync dialect (signed in over a security
    /// association), here or on another front end.
    pub(crate) fn speaks_lync(&self, b: &Binding) -> bool {
        match &b.path {
            Some(path) => path.split(';').any(|p| p == LYNC_PARAM),
            None => self.on_association(b.flow),
        }
    }

    /// The Route a request for a binding with `path` carries: the path with the flow
    /// token completed for `call_id`.
    pub(crate) fn path_route(&self, path: &str, call_id: &str) -> Option<String> {
        let link = self.pool.as_ref()?;
        let mut uri = match Uri::parse(path).ok()? {
            Uri::Sip(u) => u,
            _ => return None,
        };
        let flow = uri.params.value(FLOW_PARAM)?.to_owned();
        let mut parts = flow.split('.');
        let fe: u32 = parts.next()?.parse().ok()?;
        let epoch: i64 = parts.next()?.parse().ok()?;
        let connection: u64 = parts.next()?.parse().ok()?;
        let token = link.pool.flow_token(fe, epoch, connection, call_id);
        uri.params.set(FLOW_PARAM, Some(&token));
        uri.params.remove(LYNC_PARAM);
        Some(format!("<{uri}>"))
    }

    /// This front end's bindings of `aor` as the pool's table holds them.
    fn own_bindings(&self, aor: &str) -> Vec<OwnBinding> {
        let now = tokio::time::Instant::now();
        self.location
            .lookup(aor)
            .into_iter()
            .filter(|b| b.flow.fe() == FrontEnd::LOCAL)
            .map(|b| OwnBinding {
                connection: b.flow.conn().number.unwrap_or(0),
                contact: b.contact.to_string(),
                expires_in: b.remaining(now),
                lync: self.on_association(b.flow),
            })
            .collect()
    }
}

/// How long a probe's answer about a member stands (see [`Paths::member_reachable`]).
const PROBE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The last probe of each member's address, or the one running.
#[derive(Default)]
pub(crate) struct Probes(Mutex<HashMap<SocketAddr, Probe>>);

enum Probe {
    /// Its answer, when it comes, is sent here.
    Running(tokio::sync::watch::Receiver<Option<bool>>),
    Done {
        at: std::time::Instant,
        reachable: bool,
    },
}

/// Whether a TCP connection to `addr` opens within a second (then dropped).
async fn probe(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// The writer of [`Registrations`]: runs while the outbound side lives.
pub(crate) async fn write_registrations(paths: Weak<Paths>, reg: Arc<Registrations>) {
    loop {
        // A mark made while the last batch was written left a permit: nothing is missed.
        reg.wake.notified().await;
        loop {
            let batch: Vec<(String, Vec<Waiter>)> = {
                let mut dirty = reg.dirty.lock();
                let keys: Vec<String> = dirty.keys().take(BATCH).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| dirty.remove_entry(&k))
                    .collect()
            };
            if batch.is_empty() {
                break;
            }
            let Some(p) = paths.upgrade() else { return };
            let Some(link) = p.pool.clone() else { return };
            // Read as they are now: a change after this is marked again and written next.
            let updates: Vec<(String, Vec<OwnBinding>)> = batch
                .iter()
                .map(|(aor, _)| (aor.clone(), p.own_bindings(aor)))
                .collect();
            let member = link.pool.member();
            drop(p);
            let result = link.location.set_bindings(member, &updates).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, users = updates.len(), "registrations not written to the pool");
            }
            let unavailable = result.as_ref().is_err_and(DataError::is_unavailable);
            for (aor, waiters) in batch {
                if unavailable && waiters.is_empty() {
                    // Nobody waits to be told (a device went away): try again later,
                    // or the pool would keep routing to it until it expires.
                    reg.dirty.lock().entry(aor).or_default();
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            if unavailable {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

impl Core {
    /// A request a member proxied to a device here (its Route carried `token`): relayed
    /// to that device, or refused (see the module header).
    pub(crate) async fn from_pool_member(
        self: Arc<Self>,
        req: sip_transaction::ServerRequest,
        token: &str,
    ) {
        let b = match self.pool_target(&req.message, token) {
            PoolTarget::Device(b) => b,
            PoolTarget::Refused => {
                return self
                    .respond_warning(&req, 403, "pool flow token refused")
                    .await
            }
            // The sending member forks on to the user's other devices, or keeps the
            // message: this one is just not reachable any more.
            PoolTarget::Gone => return self.respond(&req, 480).await,
        };
        let from = req
            .message
            .from_header()
            .map(|f| f.uri.to_string())
            .unwrap_or_default();
        self.spawn_forward(req, vec![*b], from, None, None);
    }

    /// The device a flow token names for `msg`: its registration here (by the contact
    /// the Request-URI names), else the connection the token names while it is open.
    pub(crate) fn pool_target(&self, msg: &sip_message::Message, token: &str) -> PoolTarget {
        let Some(pool) = self.out.pool() else {
            return PoolTarget::Refused;
        };
        let Some(connection) = pool.open_flow_token(token, msg.call_id().unwrap_or("")) else {
            return PoolTarget::Refused;
        };
        let Some(ruri) = msg.request_uri().and_then(Uri::as_sip).cloned() else {
            return PoolTarget::Refused;
        };
        if let Some(b) = self
            .location
            .binding_for_contact(&Uri::Sip(ruri.clone()), to_aor(msg).as_deref())
        {
            return PoolTarget::Device(Box::new(b));
        }
        match self
            .layer
            .transports()
            .connection(sip_transport::ConnectionId(connection))
        {
            Some((kind, remote, _)) => PoolTarget::Device(Box::new(self.pinned_target(
                &ruri,
                crate::cookie::FlowKey {
                    transport: kind,
                    remote,
                },
            ))),
            None => PoolTarget::Gone,
        }
    }
}

/// Where a request a member sent with a flow token goes.
pub(crate) enum PoolTarget {
    /// The token is not this front end's, for this epoch and call: no member made it.
    Refused,
    /// A genuine token, but the device has gone from here.
    Gone,
    Device(Box<Binding>),
}

/// What a request's [`SENDER_HEADER`] says.
pub(crate) enum Vouched {
    /// None (or no pool: the header means nothing here and is dropped).
    None,
    /// A member vouches for this sender.
    Sender(String),
    /// A header no member made.
    Forged,
}

/// What a member's MAC covers for `aor` on `msg`.
fn vouched_parts(msg: &sip_message::Message) -> [String; 3] {
    let cseq = msg
        .cseq()
        .map(|c| format!("{} {}", c.seq, c.method))
        .unwrap_or_default();
    let from_tag = msg
        .from_header()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .unwrap_or_default();
    [msg.call_id().unwrap_or("").to_owned(), cseq, from_tag]
}

impl Core {
    /// The sender another member vouches for on `msg`, which came over `source` (see the
    /// module header); that connection is then known as the member's link. The header is
    /// taken off either way.
    pub(crate) fn pool_sender(
        &self,
        msg: &mut sip_message::Message,
        source: &sip_transport::Source,
    ) -> Vouched {
        let name = sip_message::HeaderName::from_wire(SENDER_HEADER);
        let Some(value) = msg.headers.get(&name).map(str::to_owned) else {
            return Vouched::None;
        };
        msg.headers.remove(&name);
        let Some(pool) = self.out.pool() else {
            return Vouched::None;
        };
        let Ok(claim) = NameAddr::parse(&value) else {
            return Vouched::Forged;
        };
        let (Some(fe), Some(mac)) = (claim.params.value("fe"), claim.params.value("mac")) else {
            return Vouched::Forged;
        };
        let aor = claim.uri.to_string();
        let [call_id, cseq, tag] = vouched_parts(msg);
        let me = pool.config().fe.to_string();
        if fe == me || !pool.mac_ok(&[&aor, fe, &me, &call_id, &cseq, &tag], mac) {
            tracing::warn!(%aor, fe, "pool sender assertion refused");
            return Vouched::Forged;
        }
        if let (Some(id), Ok(fe)) = (source.connection, fe.parse::<u32>()) {
            self.out.member_links.write().insert(id, fe);
        }
        Vouched::Sender(aor)
    }

    /// The member that keeps the pager conversation of `from` and `to`, when it is not
    /// this front end: of the members holding a device of either (any member when
    /// neither has one), the pair's by rendezvous hashing.
    ///
    /// Why among theirs: a message then crosses the pool once (the sender's front end,
    /// then the recipient's keeping the conversation, or the other way round), not
    /// through a third front end as well, which a hash over the whole pool would choose
    /// for most pairs of a large pool. What it costs: the keeper moves when a user's
    /// devices move to other front ends; the conversation then goes on in a new session
    /// there (its CDR a second session, each message counted once) while the old one
    /// ends when idle. Both directions agree as long as both front ends see the same
    /// registrations, which they do within a notification's delay (`bindings_cache`).
    pub(crate) async fn pager_owner(&self, from: &str, to: &str) -> Option<(u32, String)> {
        let pool = self.out.pool()?;
        let me = pool.config().fe;
        let mut fes = Vec::new();
        for aor in [from, to] {
            if !self.out.location.lookup(aor).is_empty() {
                fes.push(me);
            }
            // Unreadable (the database is away): that user's front ends are not known,
            // and the request is answered 503 further on wherever it goes.
            if let Ok(remote) = self.out.remote_bindings(aor).await {
                fes.extend(remote.iter().map(|b| b.flow.fe().0));
            }
        }
        let pair = switchboard_pool::pager_pair(from, to);
        let (fe, addr) = pool.keeper_among(&pair, &fes)?;
        (fe != me).then_some((fe, addr))
    }

    /// Passes `req` (from `from_aor`, authenticated here) to member `owner` to handle,
    /// vouching for its sender; the member's answer goes back to the sender.
    pub(crate) fn to_member(
        self: Arc<Self>,
        mut req: sip_transaction::ServerRequest,
        owner: (u32, String),
        from_aor: String,
    ) {
        let Ok(addr) = owner.1.parse::<SocketAddr>() else {
            return;
        };
        let Some(ruri) = req.message.request_uri().cloned() else {
            return;
        };
        self.vouch(&mut req.message, &from_aor, owner.0);
        let Uri::Sip(ruri) = ruri else { return };
        let member = self.peer_binding(&ruri, &(owner.0, addr));
        self.spawn_forward(req, vec![member], from_aor, None, None);
    }

    /// Says to member `fe`, on `msg`, that this front end authenticated `from_aor`.
    pub(crate) fn vouch(&self, msg: &mut sip_message::Message, from_aor: &str, fe: u32) {
        self.out.vouch(msg, from_aor, fe);
    }

    /// The front end that must handle `msg` for `aor` (a conference's), when it is
    /// another member: its id and address (or, when that member is gone, its id). `None`
    /// when it is this front end, or the request names none.
    pub(crate) fn elsewhere(
        &self,
        msg: &sip_message::Message,
        aor: &str,
    ) -> Option<Result<(u32, String), u32>> {
        let pool = self.out.pool()?;
        let fe = self.hook.home_of(msg, aor)?;
        if fe == pool.config().fe {
            return None;
        }
        Some(pool.member_addr(fe).map(|a| (fe, a)).ok_or(fe))
    }

    /// The member the first Route names, when it names one (its id and address).
    pub(crate) fn peer_route(&self, msg: &sip_message::Message) -> Option<(u32, SocketAddr)> {
        let pool = self.out.pool()?;
        let routes = msg.name_addrs(&sip_message::HeaderName::Route).ok()?;
        let uri = routes.first()?.uri.as_sip()?.clone();
        let ip: std::net::IpAddr = match uri.host {
            sip_message::Host::V4(a) => a.into(),
            sip_message::Host::V6(a) => a.into(),
            sip_message::Host::Domain(_) => return None,
        };
        let addr = SocketAddr::new(ip, uri.port.unwrap_or(5060));
        pool.members()
            .iter()
            .find(|m| {
                m.fe != pool.config().fe && m.sip_addr.parse::<SocketAddr>().ok() == Some(addr)
            })
            .map(|m| (m.fe, addr))
    }

    /// A request for `ruri` (unchanged) sent on to member `peer`.
    pub(crate) fn peer_binding(
        &self,
        ruri: &sip_message::SipUri,
        peer: &(u32, SocketAddr),
    ) -> Binding {
        let (fe, addr) = *peer;
        let mut b = Paths::unregistered_binding(ruri);
        b.flow = Flow::new(
            FrontEnd(fe),
            Conn {
                transport: Transport::Tcp,
                remote: addr,
                local: SocketAddr::from(([0, 0, 0, 0], 0)),
                number: None,
            },
        );
        b.path = Some(format!("sip:{addr};transport=tcp;lr"));
        b
    }
}
