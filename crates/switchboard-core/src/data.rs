//! Each service's durable state, in the service's own terms. Async so that a service
//! decides under its lock, awaits its data outside it, and applies the result; the store
//! crate implements every trait for each backend, and one conformance suite
//! (`crates/switchboard-store/tests/conformance.rs`) holds every backend to the same
//! behaviour.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller (so tests and a
//! pool agree on one clock). Addresses are `user@domain`, lower case.

use async_trait::async_trait;

use crate::{
    Address, CalendarEntry, ContactCard, ContactEntry, ContactList, DataError, Keep, ManualState,
    OfflineMessage, ParticipantRecord, Relationship, Run, SessionFilter, SessionRecord,
    StoredPresence, UserRecord,
};

/// The user directory: who may sign in, with which credential hashes, in which domains.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The account, enabled or not; `None` when there is none.
    async fn find(&self, address: &Address) -> Result<Option<UserRecord>, DataError>;
    /// Every domain that has at least one account, sorted.
    async fn domains(&self) -> Result<Vec<String>, DataError>;
    async fn has_domain(&self, domain: &str) -> Result<bool, DataError>;
    /// A new account; [`DataError::UserExists`] if there is one.
    async fn add(
        &self,
        address: &Address,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserRecord, DataError>;
    /// [`DataError::NoSuchUser`] if there is no such account.
    async fn set_password(&self, address: &Address, password: &str) -> Result<(), DataError>;
    async fn set_enabled(&self, address: &Address, enabled: bool) -> Result<(), DataError>;
    async fn remove(&self, address: &Address) -> Result<(), DataError>;
    /// Every account, by domain then user.
    async fn list(&self) -> Result<Vec<UserRecord>, DataError>;
    /// Adds or updates many accounts (address, password, display name) in one
    /// transaction; returns how many were written.
    async fn upsert_many(
        &self,
        users: &[(Address, String, Option<String>)],
    ) -> Result<usize, DataError>;
}

/// Call detail records of IM sessions (never message content).
#[async_trait]
pub trait CdrData: Send + Sync + 'static {
    /// Records that server `owner` starts (again) at `at_ms`: its run, with an epoch
    /// greater than every run's before it, whatever their owner.
    async fn begin_run(&self, owner: &str, at_ms: i64) -> Result<Run, DataError>;
    /// Records a session of `run` as it starts, with its first participants. Idempotent: a
    /// session id already recorded keeps its first record (so a replayed spool is safe).
    async fn start_session(
        &self,
        run: &Run,
        session: &SessionRecord,
        participants: &[ParticipantRecord],
    ) -> Result<(), DataError>;
    /// [`CdrData::start_session`] for several sessions in one transaction (a group
    /// commit: when many conversations start at once, each need not wait for its own):
    /// all are recorded or none.
    async fn start_sessions(
        &self,
        run: &Run,
        sessions: &[(SessionRecord, Vec<ParticipantRecord>)],
    ) -> Result<(), DataError>;
    /// Adds or updates participants: `(session id, participant)`, one row per session
    /// and address (an update replaces device, times and counts).
    async fn update_participants(
        &self,
        rows: &[(String, ParticipantRecord)],
    ) -> Result<(), DataError>;
    /// The two-party session a conference grew from.
    async fn set_escalated_from(&self, id: &str, from: &str) -> Result<(), DataError>;
    /// Ends a session (a session already ended keeps its first end).
    async fn end_session(&self, id: &str, ended_at_ms: i64, reason: &str) -> Result<(), DataError>;
    /// Ends every session still open that `run.owner` started in an earlier run (a crash
    /// left it open); sessions of other owners, and of this run, are left alone. Returns
    /// how many.
    async fn close_open_sessions(
        &self,
        run: &Run,
        at_ms: i64,
        reason: &str,
    ) -> Result<usize, DataError>;
    /// Sessions matching `filter`, oldest first (then by id), at most `filter.limit`.
    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, DataError>;
    async fn session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRecord, Vec<ParticipantRecord>)>, DataError>;
}

/// Messages kept for users who were offline.
#[async_trait]
pub trait OfflineData: Send + Sync + 'static {
    /// Keeps `message` unless the recipient holds `max_per_user` messages, or
    /// `max_per_sender` from this sender, already.
    async fn store_offline(
        &self,
        message: &OfflineMessage,
        max_per_user: usize,
        max_per_sender: usize,
    ) -> Result<Keep, DataError>;
    /// What waits for `recipient`, oldest first.
    async fn offline_for(&self, recipient: &str) -> Result<Vec<OfflineMessage>, DataError>;
    async fn delete_offline(&self, id: i64) -> Result<(), DataError>;
    /// Drops messages received before `before_ms`; returns how many.
    async fn expire_offline(&self, before_ms: i64) -> Result<usize, DataError>;
}

/// Contact lists, their groups, and the privacy relationship of each contact.
#[async_trait]
pub trait ContactData: Send + Sync + 'static {
    /// `owner`'s list (empty, version 0, when they never had one).
    async fn contact_list(&self, owner: &str) -> Result<ContactList, DataError>;
    /// The relationship `owner` gave `contact`, if any.
    async fn relationship(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Relationship>, DataError>;
    /// Adds `contact` to the list (into `group`, created if new), with `relationship`,
    /// or `default` for a new entry.
    async fn add_contact(
        &self,
        owner: &str,
        contact: &str,
        group: Option<&str>,
        relationship: Option<Relationship>,
        default: Relationship,
        now_ms: i64,
    ) -> Result<ContactEntry, DataError>;
    /// Gives `contact` a relationship, keeping it off the list if it was not on it.
    async fn set_relationship(
        &self,
        owner: &str,
        contact: &str,
        relationship: Relationship,
        default: Relationship,
        now_ms: i64,
    ) -> Result<(), DataError>;
    /// Whether there was such a contact.
    async fn remove_contact(
        &self,
        owner: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, DataError>;
    /// `(id, name)` of each group, in creation order.
    async fn contact_groups(&self, owner: &str) -> Result<Vec<(i64, String)>, DataError>;
    /// The new (or existing) group's id.
    async fn add_group(&self, owner: &str, name: &str, now_ms: i64) -> Result<i64, DataError>;
    async fn rename_group(
        &self,
        owner: &str,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, DataError>;
    async fn delete_group(&self, owner: &str, id: i64, now_ms: i64) -> Result<bool, DataError>;
    /// Puts `contact` in exactly the groups `ids`.
    async fn set_contact_groups(
        &self,
        owner: &str,
        contact: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<(), DataError>;
}

/// Presence set without a client, and the change log watchers are notified from.
#[async_trait]
pub trait PresenceData: Send + Sync + 'static {
    async fn set_manual(&self, address: &str, state: &ManualState) -> Result<(), DataError>;
    /// Whether there was a manual state.
    async fn clear_manual(&self, address: &str, now_ms: i64) -> Result<bool, DataError>;
    async fn add_calendar_entry(
        &self,
        address: &str,
        entry: &CalendarEntry,
        now_ms: i64,
    ) -> Result<(), DataError>;
    async fn set_card(
        &self,
        address: &str,
        card: &ContactCard,
        now_ms: i64,
    ) -> Result<(), DataError>;
    async fn set_last_active(&self, address: &str, at_ms: i64) -> Result<(), DataError>;
    async fn set_last_active_many(&self, rows: &[(String, i64)]) -> Result<(), DataError>;
    /// Everything stored about `address`'s presence that still holds at `now_ms`.
    async fn load(&self, address: &str, now_ms: i64) -> Result<StoredPresence, DataError>;
    /// The newest change-log sequence number (0 for none).
    async fn latest_change(&self) -> Result<i64, DataError>;
    /// Addresses changed after `seq`, and the sequence number to ask from next.
    async fn changes_since(&self, seq: i64) -> Result<(i64, Vec<String>), DataError>;
    /// Drops change-log entries and ended calendar entries older than `before_ms`.
    async fn prune(&self, before_ms: i64) -> Result<(), DataError>;
}
