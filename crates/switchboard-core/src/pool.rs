//! An Enterprise pool's shared soft state, in the pool's own terms: which front ends
//! are members (each start of one is a new *epoch*), and where each user's devices are
//! connected. Every row a front end writes names its (front end, epoch): when the
//! front end is reaped, or restarts, one statement removes all of it, and a front end
//! that was reaped while it slept cannot write under its old epoch again (fencing).
//!
//! Times here are the database's clock (`now()` of PostgreSQL), never a front end's, so
//! clock skew between front ends cannot make one look dead.

use std::time::Duration;

use async_trait::async_trait;

use crate::DataError;

/// This front end's place in the pool: its id and the epoch of this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Membership {
    pub fe: u32,
    pub epoch: i64,
}

/// What a front end carries, reported with each heartbeat (for `pool status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberLoad {
    /// Open client connections.
    pub connections: u64,
    /// Users with at least one device registered here.
    pub registered: u64,
    /// Presence subscriptions this front end notifies.
    pub subscriptions: u64,
}

/// One member as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberRecord {
    pub fe: u32,
    pub epoch: i64,
    /// Its pool-internal SIP address (host:port, over TCP).
    pub sip_addr: String,
    pub joined_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// How long ago its last heartbeat was, by the database's clock.
    pub heartbeat_age_ms: i64,
    pub load: MemberLoad,
}

/// A member the reaper removed, with what went with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedMember {
    pub fe: u32,
    pub epoch: i64,
    /// Users who had a device registered on it (their watchers are told).
    pub users: Vec<String>,
    /// Its CDR sessions that were still open, now closed.
    pub sessions_closed: usize,
}

/// A device registered on some front end of the pool, as another front end reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBinding {
    /// The user (`sip:user@domain`).
    pub aor: String,
    /// The front end holding the device's connection, and its epoch.
    pub fe: u32,
    pub epoch: i64,
    /// That front end's pool-internal SIP address.
    pub fe_addr: String,
    /// The device's connection number on that front end.
    pub connection: u64,
    /// The Contact as registered (name-addr with its parameters).
    pub contact: String,
    /// Seconds it stays registered.
    pub expires_in: u32,
    /// The device speaks the Lync dialect (signed in over a security association).
    pub lync: bool,
}

/// A device of this front end, as it publishes it to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnBinding {
    pub connection: u64,
    pub contact: String,
    pub expires_in: u32,
    pub lync: bool,
}

/// Membership of the pool: joining, heartbeats, the reaper, and the pool's secret.
#[async_trait]
pub trait MembershipData: Send + Sync + 'static {
    /// Joins as front end `fe` at `sip_addr` with a new epoch, greater than any before.
    /// A row this id left behind (an earlier start) is replaced, and everything tied to
    /// it goes with it; but while that row heartbeated within `alive_within` another
    /// process holds the id, and the join is refused ([`DataError::MemberAlive`]).
    async fn join(
        &self,
        fe: u32,
        sip_addr: &str,
        alive_within: Duration,
    ) -> Result<Membership, DataError>;
    /// Records a heartbeat (the database's clock) with the front end's load. `false`
    /// when the membership is gone: the front end was reaped and must fence itself.
    async fn heartbeat(&self, member: Membership, load: MemberLoad) -> Result<bool, DataError>;
    /// Removes every member whose last heartbeat is older than `stale_after`, with their
    /// registrations, and closes their open CDR sessions with `reason` at `at_ms`; in one
    /// transaction, so exactly one caller gets each dead member.
    async fn reap(
        &self,
        stale_after: Duration,
        reason: &str,
        at_ms: i64,
    ) -> Result<Vec<ReapedMember>, DataError>;
    /// Leaves the pool (a clean stop): as a reap of this member alone, at once.
    async fn leave(&self, member: Membership, reason: &str, at_ms: i64) -> Result<(), DataError>;
    /// Every member, by id.
    async fn members(&self) -> Result<Vec<MemberRecord>, DataError>;
    /// The key front ends authenticate pool-internal requests with: made once, at random,
    /// by the first front end to ask.
    async fn pool_secret(&self) -> Result<[u8; 32], DataError>;
}

/// Where users' devices are connected, across the pool.
#[async_trait]
pub trait PoolLocationData: Send + Sync + 'static {
    /// For each `(aor, bindings)`, replaces what `member` has registered for `aor` with
    /// `bindings` (none: the user has no device here any more); all in one transaction.
    /// [`DataError::NotMember`] when the membership is gone.
    async fn set_bindings(
        &self,
        member: Membership,
        updates: &[(String, Vec<OwnBinding>)],
    ) -> Result<(), DataError>;
    /// Every unexpired device of `aor` on every live front end. A store may answer from
    /// a cache kept true by notifications: a change made on another front end may then
    /// be seen a moment (milliseconds) late.
    async fn bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, DataError>;
    /// As [`PoolLocationData::bindings`], never from a cache: for a decision a late
    /// answer must not make (taking a user with no device for offline).
    async fn fresh_bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, DataError> {
        self.bindings(aor).await
    }
}

/// The presence a front end's devices publish, shared with the pool: every front end
/// holding a user reads the others' in `crate::StoredPresence::pool_devices`, and hears
/// of a change through the presence change log (`crate::PresenceData::changes_since`),
/// which every write here appends to.
#[async_trait]
pub trait PoolPresenceData: Send + Sync + 'static {
    /// For each `(address, devices)`, replaces what `member` publishes for the user
    /// (`address` as `user@domain`; `devices` the presence service's JSON, `None` when
    /// the user has no device here any more) and notes the change in the log; all in
    /// one transaction. [`DataError::NotMember`] when the membership is gone.
    async fn set_devices(
        &self,
        member: Membership,
        updates: &[(String, Option<String>)],
        at_ms: i64,
    ) -> Result<(), DataError>;
}

/// The CDR owner id of front end `fe` (its runs and sessions carry it).
pub fn cdr_owner(fe: u32) -> String {
    format!("fe-{fe}")
}
