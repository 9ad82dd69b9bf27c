//! # switchboard-pool: a front end's membership of an Enterprise pool
//!
//! Several front ends share one PostgreSQL database; each is a peer running the same
//! code (no master, no replication of our own: the only quorum is PostgreSQL's). This
//! crate keeps one front end's place in the pool, through
//! [`switchboard_core::pool::MembershipData`]:
//!
//! - **Joining**: a front end id given by the operator, a new *epoch* at every start
//!   (also its CDR run, so its sessions are known by it) and its pool-internal SIP
//!   address. A row an earlier start of the same id left is replaced, with everything
//!   tied to it; a row that still heartbeats belongs to a live process, and joining
//!   waits for it to go stale (a restart right after a crash) or, after the timeout,
//!   fails with a clear error (two processes given one id).
//! - **Heartbeat**: every [`PoolConfig::heartbeat`] (1 s), on the database's clock, with
//!   the front end's load (`pool status` shows it).
//! - **Fencing**: a heartbeat that finds its row gone means this front end was reaped
//!   (it was stopped, or cut off from the database, longer than the timeout) and the
//!   pool has removed its registrations. It then fences itself: [`PoolEvent::Fenced`]
//!   tells the server to close its client connections (its clients reconnect and
//!   register again, somewhere), and it rejoins with a new epoch
//!   ([`PoolEvent::Rejoined`]). Whatever it tries to write under the old epoch fails the
//!   foreign key to its membership, so a zombie writes nothing stale.
//!
//!   A heartbeat that *fails* (the database is unreachable) does not fence: while the
//!   database is down for everyone, closing every client connection of every front end
//!   would turn a short outage into a reconnection storm, and in-dialog IM and presence
//!   already held keep working without the database. The front end learns whether it
//!   was reaped from its first heartbeat that gets through, and fences then if it was.
//! - **Reaper**: every front end runs it, after each heartbeat, and removes members
//!   whose heartbeat is older than [`PoolConfig::dead_after`] (4 s: with the reaper
//!   running every second, a dead front end is gone within 5 s of its last heartbeat), with their
//!   registrations and subscription rows, closing their open CDR sessions as `front end
//!   lost` — in one transaction that exactly one reaper wins. A front end reaps only
//!   after its own heartbeats have succeeded for the whole timeout: when the database
//!   comes back from an outage every heartbeat is stale, and nobody may mistake that
//!   for a dead pool.
//! - **Pool-internal tokens**: a request one front end proxies to a device connected to
//!   another names that device's flow in a token (RFC 5626 §5.2 style: front end, epoch,
//!   connection) with an HMAC under the pool secret, so the receiving front end relays
//!   only what a member sent ([`Pool::flow_token`], [`Pool::open_flow_token`]).
//!
//! Arrows: depends on switchboard-core (the membership trait); the router and the binary
//! depend on it. No transport, no SQL.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use sha2::Sha256;
use switchboard_core::pool::{MemberLoad, MemberRecord, Membership, MembershipData, ReapedMember};
use switchboard_core::DataError;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The CDR end reason of the sessions of a front end the pool lost.
pub const FRONT_END_LOST: &str = "front end lost";

/// A front end's pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// This front end's id (1 or more), unique in the pool.
    pub fe: u32,
    /// Where other front ends reach this one (SIP over TCP).
    pub sip_addr: SocketAddr,
    /// How often the heartbeat is written.
    pub heartbeat: Duration,
    /// A member whose heartbeat is older than this is dead (reaped).
    pub dead_after: Duration,
}

impl PoolConfig {
    pub fn new(fe: u32, sip_addr: SocketAddr) -> PoolConfig {
        PoolConfig {
            fe,
            sip_addr,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(4),
        }
    }
}

/// Why a front end could not take its place in the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("front end ids start at 1 (0 means a standalone server)")]
    BadId,
    #[error(transparent)]
    Data(#[from] DataError),
}

/// What happened to this front end's membership, for the server to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// Reaped while it could not heartbeat: close every client connection and forget
    /// local registrations; a rejoin follows.
    Fenced { old: Membership },
    /// A member again, with a new epoch.
    Rejoined { new: Membership },
    /// This front end's reaper removed a dead member.
    Reaped(ReapedMember),
    /// The pool's members changed (joined, left, reaped, restarted).
    Members(Vec<MemberRecord>),
}

/// A front end's membership (see the crate header). Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    data: Arc<dyn MembershipData>,
    member: RwLock<Membership>,
    /// The key of flow tokens (the pool secret), keyed once.
    mac: Hmac<Sha256>,
    /// The members as last read, by id.
    members: RwLock<Vec<MemberRecord>>,
    /// When `members` was read.
    members_read: Mutex<Instant>,
    health: Mutex<Health>,
    /// Left the pool: the heartbeat stops (and never rejoins).
    left: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    /// The last heartbeat that was written.
    last_ok: Instant,
    /// Since when every heartbeat has been written (none: the last one failed).
    healthy_since: Option<Instant>,
}

impl Pool {
    /// Joins the pool (see the crate header): waits up to the timeout for a previous
    /// process with this id to go stale; fails then, or when the database cannot answer.
    pub async fn join(
        config: PoolConfig,
        data: Arc<dyn MembershipData>,
    ) -> Result<Pool, PoolError> {
        if config.fe == 0 {
            return Err(PoolError::BadId);
        }
        let member = join_waiting(&config, data.as_ref()).await?;
        let secret = data.pool_secret().await?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("HMAC takes any key");
        let members = data.members().await.unwrap_or_default();
        tracing::info!(fe = member.fe, epoch = member.epoch, address = %config.sip_addr, "joined the pool");
        Ok(Pool {
            inner: Arc::new(Inner {
                config,
                data,
                member: RwLock::new(member),
                mac,
                members: RwLock::new(members),
                members_read: Mutex::new(Instant::now()),
                health: Mutex::new(Health {
                    last_ok: Instant::now(),
                    healthy_since: None,
                }),
                left: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// This front end's current membership (its epoch changes when it rejoins).
    pub fn member(&self) -> Membership {
        *self.inner.member.read()
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Starts the heartbeat and the reaper; `load` is asked at each heartbeat. The
    /// events say what the server must do (see [`PoolEvent`]). Runs until the receiver
    /// is dropped.
    pub fn run(
        &self,
        load: impl Fn() -> MemberLoad + Send + Sync + 'static,
    ) -> mpsc::UnboundedReceiver<PoolEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().heartbeats(load, tx));
        rx
    }

    /// Whether this front end's last heartbeat got through within the timeout: while not,
    /// the pool may have reaped it.
    pub fn in_good_standing(&self) -> bool {
        self.inner.health.lock().last_ok.elapsed() < self.inner.config.dead_after
    }

    /// The pool-internal SIP address of member `fe`, as last read.
    pub fn member_addr(&self, fe: u32) -> Option<String> {
        self.inner
            .members
            .read()
            .iter()
            .find(|m| m.fe == fe)
            .map(|m| m.sip_addr.clone())
    }

    /// Whether `addr` is another member's pool-internal address.
    pub fn is_peer(&self, addr: SocketAddr) -> bool {
        let me = self.inner.config.fe;
        self.inner
            .members
            .read()
            .iter()
            .any(|m| m.fe != me && m.sip_addr.parse::<SocketAddr>().ok() == Some(addr))
    }

    /// The members as last read.
    pub fn members(&self) -> Vec<MemberRecord> {
        self.inner.members.read().clone()
    }

    /// A token naming connection `connection` of member (`fe`, `epoch`) for a request of
    /// dialog or transaction `call_id`.
    pub fn flow_token(&self, fe: u32, epoch: i64, connection: u64, call_id: &str) -> String {
        let mac = self.token_mac(fe, epoch, connection, call_id);
        format!("{fe}.{epoch}.{connection}.{mac}")
    }

    /// The connection a token names, when it is for this front end's current epoch and
    /// its MAC holds for `call_id`.
    pub fn open_flow_token(&self, token: &str, call_id: &str) -> Option<u64> {
        let mut parts = token.split('.');
        let fe: u32 = parts.next()?.parse().ok()?;
        let epoch: i64 = parts.next()?.parse().ok()?;
        let connection: u64 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if parts.next().is_some() || self.member() != (Membership { fe, epoch }) {
            return None;
        }
        let expected = self.token_mac(fe, epoch, connection, call_id);
        // Both are hex of the same length: compare without an early exit.
        let same = mac.len() == expected.len()
            && mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0;
        same.then_some(connection)
    }

    /// An HMAC under the pool secret of `parts` (each length-prefixed, so no two lists
    /// give the same input), for what one member vouches for to another.
    pub fn mac(&self, parts: &[&str]) -> String {
        let mut m = self.inner.mac.clone();
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p.as_bytes());
        }
        hex::encode(&m.finalize().into_bytes()[..12])
    }

    /// Whether `mac` is [`Pool::mac`] of `parts` (compared without an early exit).
    pub fn mac_ok(&self, parts: &[&str], mac: &str) -> bool {
        let expected = self.mac(parts);
        mac.len() == expected.len()
            && mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    }

    /// Of the members as last read, the one that keeps `key` (rendezvous hashing: every
    /// member computes the same owner from the same list, and a member joining or
    /// leaving moves only the keys it wins or held). Its id and address.
    ///
    /// A member whose heartbeat is older than the timeout less one heartbeat interval
    /// (as last read, plus the time since) is passed over: it may be dead and not reaped
    /// yet, and a key moved a moment early costs less than requests sent to a front end
    /// that does not answer. Not sooner: a live member's heartbeat is up to one interval
    /// old when read, and the view up to one interval old when used, so two intervals
    /// are normal (with half the 4 s timeout as the bound, busy front ends passed over
    /// live members and split a pair's conversation in two).
    pub fn owner_of(&self, key: &str) -> Option<(u32, String)> {
        self.keeper_among(key, &[])
    }

    /// As [`Pool::owner_of`], among the members `candidates` only (those of them that
    /// are live); among all of them when none of `candidates` is.
    pub fn keeper_among(&self, key: &str, candidates: &[u32]) -> Option<(u32, String)> {
        let since_read = self.inner.members_read.lock().elapsed().as_millis() as i64;
        let fresh_within = self
            .inner
            .config
            .dead_after
            .saturating_sub(self.inner.config.heartbeat)
            .max(self.inner.config.heartbeat * 2)
            .as_millis() as i64;
        let me = self.inner.config.fe;
        let members = self.inner.members.read();
        let mut ids: Vec<u32> = members
            .iter()
            .filter(|m| m.fe == me || m.heartbeat_age_ms + since_read < fresh_within)
            .map(|m| m.fe)
            .collect();
        if ids.iter().any(|fe| candidates.contains(fe)) {
            ids.retain(|fe| candidates.contains(fe));
        } else if !candidates.is_empty() {
            tracing::debug!(
                ?candidates,
                since_read,
                "no candidate keeper is live; any member keeps it"
            );
        }
        let owner = rendezvous_owner(key, &ids)?;
        members
            .iter()
            .find(|m| m.fe == owner)
            .map(|m| (m.fe, m.sip_addr.clone()))
    }

    fn token_mac(&self, fe: u32, epoch: i64, connection: u64, call_id: &str) -> String {
        let mut m = self.inner.mac.clone();
        m.update(format!("flow|{fe}|{epoch}|{connection}|").as_bytes());
        m.update(call_id.as_bytes());
        hex::encode(&m.finalize().into_bytes()[..8])
    }

    /// Leaves the pool (a clean stop): this member's rows go at once.
    pub async fn leave(&self, reason: &str) -> Result<(), DataError> {
        self.inner
            .left
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.data.leave(self.member(), reason, now_ms()).await
    }

    /// Stops heartbeating without leaving, as a crash would: the pool reaps this front
    /// end once its heartbeat is stale (for tests).
    pub fn halt(&self) {
        self.inner
            .left
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn has_left(&self) -> bool {
        self.inner.left.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn heartbeats(
        self,
        load: impl Fn() -> MemberLoad + Send + Sync + 'static,
        events: mpsc::UnboundedSender<PoolEvent>,
    ) {
        let cfg = self.inner.config.clone();
        let mut tick = tokio::time::interval(cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            if events.is_closed() || self.has_left() {
                return;
            }
            let member = self.member();
            match self.inner.data.heartbeat(member, load()).await {
                Ok(true) => {
                    let now = Instant::now();
                    let mut h = self.inner.health.lock();
                    // A gap longer than the timeout (the process was stopped) restarts
                    // the count before this front end may reap.
                    if now.duration_since(h.last_ok) > cfg.dead_after {
                        h.healthy_since = None;
                    }
                    h.last_ok = now;
                    h.healthy_since.get_or_insert(now);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after = ?since.elapsed(),
                            "pool heartbeat written again"
                        );
                    }
                }
                Ok(false) if self.has_left() => return,
                Ok(false) => {
                    self.fence(member, &events).await;
                    continue;
                }
                Err(e) => {
                    self.inner.health.lock().healthy_since = None;
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(error = %e, "pool heartbeat not written; retrying");
                    }
                    continue;
                }
            }
            self.refresh_members(&events).await;
            let may_reap = self
                .inner
                .health
                .lock()
                .healthy_since
                .is_some_and(|t| t.elapsed() >= cfg.dead_after);
            if may_reap {
                match self
                    .inner
                    .data
                    .reap(cfg.dead_after, FRONT_END_LOST, now_ms())
                    .await
                {
                    Ok(reaped) if !reaped.is_empty() => {
                        for r in reaped {
                            tracing::warn!(
                                fe = r.fe,
                                epoch = r.epoch,
                                users = r.users.len(),
                                sessions_closed = r.sessions_closed,
                                "front end lost: removed from the pool"
                            );
                            let _ = events.send(PoolEvent::Reaped(r));
                        }
                        self.refresh_members(&events).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pool reaper could not run"),
                }
            }
        }
    }

    /// Reaped: tell the server, then rejoin with a new epoch (retrying until the
    /// database lets us).
    async fn fence(&self, old: Membership, events: &mpsc::UnboundedSender<PoolEvent>) {
        tracing::error!(
            fe = old.fe,
            epoch = old.epoch,
            "this front end was removed from the pool (it could not heartbeat in time): \
             fencing (closing client connections) and rejoining"
        );
        let _ = events.send(PoolEvent::Fenced { old });
        let cfg = &self.inner.config;
        loop {
            match self
                .inner
                .data
                .join(cfg.fe, &cfg.sip_addr.to_string(), cfg.dead_after)
                .await
            {
                Ok(new) => {
                    *self.inner.member.write() = new;
                    *self.inner.health.lock() = Health {
                        last_ok: Instant::now(),
                        healthy_since: None,
                    };
                    tracing::info!(fe = new.fe, epoch = new.epoch, "rejoined the pool");
                    let _ = events.send(PoolEvent::Rejoined { new });
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rejoin the pool yet; retrying");
                    tokio::time::sleep(cfg.heartbeat).await;
                }
            }
        }
    }

    async fn refresh_members(&self, events: &mpsc::UnboundedSender<PoolEvent>) {
        let Ok(now) = self.inner.data.members().await else {
            return;
        };
        let key = |ms: &[MemberRecord]| -> Vec<(u32, i64, String)> {
            ms.iter()
                .map(|m| (m.fe, m.epoch, m.sip_addr.clone()))
                .collect()
        };
        let changed = key(&self.inner.members.read()) != key(&now);
        *self.inner.members.write() = now.clone();
        *self.inner.members_read.lock() = Instant::now();
        if changed {
            let _ = events.send(PoolEvent::Members(now));
        }
    }
}

/// Joins, waiting while a previous process with this id still heartbeats (at most the
/// timeout and a heartbeat: longer means that process is alive).
async fn join_waiting(
    config: &PoolConfig,
    data: &dyn MembershipData,
) -> Result<Membership, PoolError> {
    let give_up = Instant::now() + config.dead_after + config.heartbeat;
    let addr = config.sip_addr.to_string();
    let mut told = false;
    loop {
        match data.join(config.fe, &addr, config.dead_after).await {
            Err(DataError::MemberAlive(why)) if Instant::now() < give_up => {
                if !told {
                    tracing::info!("{why}; waiting for its heartbeat to go stale");
                    told = true;
                }
                tokio::time::sleep(config.heartbeat / 2).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The key of the pager conversation of two users (either order).
pub fn pager_pair(a: &str, b: &str) -> String {
    if a <= b {
        format!("pager|{a}|{b}")
    } else {
        format!("pager|{b}|{a}")
    }
}

/// Which of the front ends `ids` keeps `key` (rendezvous, or highest-random-weight,
/// hashing): the one whose hash with the key is highest.
pub fn rendezvous_owner(key: &str, ids: &[u32]) -> Option<u32> {
    use sha2::Digest as _;
    ids.iter().copied().max_by_key(|fe| {
        let h = Sha256::new()
            .chain_update(key.as_bytes())
            .chain_update(fe.to_be_bytes())
            .finalize();
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
