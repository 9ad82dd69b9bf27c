//! The SQLite backend of every data trait: the synchronous stores of this crate, each
//! call run on Tokio's blocking pool so no async worker waits on SQLite (a busy
//! database waits up to its `busy_timeout` there, not on the request path).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::{
    Address, CalendarEntry, CdrData, ContactCard, ContactData, ContactEntry, ContactList,
    DataError, Directory, Keep, ManualState, OfflineData, OfflineMessage, ParticipantRecord,
    PresenceData, Relationship, Run, SessionFilter, SessionRecord, StoredPresence, UserRecord,
};

use crate::{ImStore, PresenceStore, StoreError, UserDirectory};

/// Every data trait over one SQLite database in a data directory.
#[derive(Clone)]
pub struct SqliteStore {
    pub users: Arc<UserDirectory>,
    pub im: Arc<ImStore>,
    pub presence: Arc<PresenceStore>,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) `DATA_DIR/switchboard.db`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            users: Arc::new(crate::open(data_dir)?),
            im: Arc::new(ImStore::open(data_dir)?),
            presence: Arc::new(PresenceStore::open(data_dir)?),
        })
    }
}

impl From<StoreError> for DataError {
    fn from(e: StoreError) -> DataError {
        use rusqlite::ErrorCode as C;
        match e {
            StoreError::UserExists(u) => DataError::UserExists(u),
            StoreError::NoSuchUser(u) => DataError::NoSuchUser(u),
            StoreError::SchemaTooNew { found, known } => DataError::SchemaTooNew { found, known },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, ref msg))
                if matches!(
                    f.code,
                    C::DatabaseBusy
                        | C::DatabaseLocked
                        | C::ReadOnly
                        | C::SystemIoFailure
                        | C::CannotOpen
                        | C::DiskFull
                        | C::OutOfMemory
                ) =>
            {
                DataError::Unavailable(msg.clone().unwrap_or_else(|| f.to_string()))
            }
            StoreError::DataDir { .. } => DataError::Unavailable(e.to_string()),
            other => DataError::Backend(other.to_string()),
        }
    }
}

/// Runs one store call on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, DataError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(DataError::from),
        Err(e) => Err(DataError::Backend(format!("store call failed: {e}"))),
    }
}

#[async_trait]
impl Directory for SqliteStore {
    async fn find(&self, address: &Address) -> Result<Option<UserRecord>, DataError> {
        // Asked on every request: a cache hit answers here, without a thread hop.
        if let Some(hit) = self.users.find_cached(address) {
            return Ok(hit);
        }
        let (users, a) = (self.users.clone(), address.clone());
        blocking(move || users.find(&a)).await
    }
    async fn domains(&self) -> Result<Vec<String>, DataError> {
        let users = self.users.clone();
        blocking(move || users.domains()).await
    }
    async fn has_domain(&self, domain: &str) -> Result<bool, DataError> {
        if let Some(hit) = self.users.has_domain_cached(domain) {
            return Ok(hit);
        }
        let (users, d) = (self.users.clone(), domain.to_owned());
        blocking(move || users.has_domain(&d)).await
    }
    async fn add(
        &self,
        address: &Address,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserRecord, DataError> {
        let (users, a, p, n) = (
            self.users.clone(),
            address.clone(),
            password.to_owned(),
            display_name.map(str::to_owned),
        );
        blocking(move || users.add(&a, &p, n.as_deref())).await
    }
    async fn set_password(&self, address: &Address, password: &str) -> Result<(), DataError> {
        let (users, a, p) = (self.users.clone(), address.clone(), password.to_owned());
        blocking(move || users.set_password(&a, &p)).await
    }
    async fn set_enabled(&self, address: &Address, enabled: bool) -> Result<(), DataError> {
        let (users, a) = (self.users.clone(), address.clone());
        blocking(move || users.set_enabled(&a, enabled)).await
    }
    async fn remove(&self, address: &Address) -> Result<(), DataError> {
        let (users, a) = (self.users.clone(), address.clone());
        blocking(move || users.remove(&a)).await
    }
    async fn list(&self) -> Result<Vec<UserRecord>, DataError> {
        let users = self.users.clone();
        blocking(move || users.list()).await
    }
    async fn upsert_many(
        &self,
        rows: &[(Address, String, Option<String>)],
    ) -> Result<usize, DataError> {
        let (users, rows) = (self.users.clone(), rows.to_vec());
        blocking(move || users.upsert_many(&rows)).await
    }
}

#[async_trait]
impl CdrData for SqliteStore {
    async fn begin_run(&self, owner: &str, at_ms: i64) -> Result<Run, DataError> {
        let (im, owner) = (self.im.clone(), owner.to_owned());
        blocking(move || im.begin_run(&owner, at_ms)).await
    }
    async fn start_session(
        &self,
        run: &Run,
        session: &SessionRecord,
        participants: &[ParticipantRecord],
    ) -> Result<(), DataError> {
        let (im, r, s, p) = (
            self.im.clone(),
            run.clone(),
            session.clone(),
            participants.to_vec(),
        );
        blocking(move || im.start_session(&r, &s, &p)).await
    }
    async fn start_sessions(
        &self,
        run: &Run,
        sessions: &[(SessionRecord, Vec<ParticipantRecord>)],
    ) -> Result<(), DataError> {
        let (im, r, all) = (self.im.clone(), run.clone(), sessions.to_vec());
        blocking(move || im.start_sessions(&r, all.iter().map(|(s, p)| (s, p.as_slice())))).await
    }
    async fn update_participants(
        &self,
        rows: &[(String, ParticipantRecord)],
    ) -> Result<(), DataError> {
        let (im, rows) = (self.im.clone(), rows.to_vec());
        blocking(move || im.update_participants(&rows)).await
    }
    async fn set_escalated_from(&self, id: &str, from: &str) -> Result<(), DataError> {
        let (im, id, from) = (self.im.clone(), id.to_owned(), from.to_owned());
        blocking(move || im.set_escalated_from(&id, &from)).await
    }
    async fn end_session(&self, id: &str, ended_at_ms: i64, reason: &str) -> Result<(), DataError> {
        let (im, id, reason) = (self.im.clone(), id.to_owned(), reason.to_owned());
        blocking(move || im.end_session(&id, ended_at_ms, &reason)).await
    }
    async fn close_open_sessions(
        &self,
        run: &Run,
        at_ms: i64,
        reason: &str,
    ) -> Result<usize, DataError> {
        let (im, run, reason) = (self.im.clone(), run.clone(), reason.to_owned());
        blocking(move || im.close_open_sessions(&run, at_ms, &reason)).await
    }
    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, DataError> {
        let (im, f) = (self.im.clone(), filter.clone());
        blocking(move || im.sessions(&f)).await
    }
    async fn session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRecord, Vec<ParticipantRecord>)>, DataError> {
        let (im, id) = (self.im.clone(), id.to_owned());
        blocking(move || im.session(&id)).await
    }
}

#[async_trait]
impl OfflineData for SqliteStore {
    async fn store_offline(
        &self,
        message: &OfflineMessage,
        max_per_user: usize,
        max_per_sender: usize,
    ) -> Result<Keep, DataError> {
        let (im, m) = (self.im.clone(), message.clone());
        blocking(move || im.store_offline(&m, max_per_user, max_per_sender)).await
    }
    async fn offline_for(&self, recipient: &str) -> Result<Vec<OfflineMessage>, DataError> {
        let (im, r) = (self.im.clone(), recipient.to_owned());
        blocking(move || im.offline_for(&r)).await
    }
    async fn delete_offline(&self, id: i64) -> Result<(), DataError> {
        let im = self.im.clone();
        blocking(move || im.delete_offline(id)).await
    }
    async fn expire_offline(&self, before_ms: i64) -> Result<usize, DataError> {
        let im = self.im.clone();
        blocking(move || im.expire_offline(before_ms)).await
    }
}

#[async_trait]
impl ContactData for SqliteStore {
    async fn contact_list(&self, owner: &str) -> Result<ContactList, DataError> {
        let (p, o) = (self.presence.clone(), owner.to_owned());
        blocking(move || p.contact_list(&o)).await
    }
    async fn relationship(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Relationship>, DataError> {
        let (p, o, c) = (self.presence.clone(), owner.to_owned(), contact.to_owned());
        blocking(move || p.relationship(&o, &c)).await
    }
    async fn add_contact(
        &self,
        owner: &str,
        contact: &str,
        group: Option<&str>,
        relationship: Option<Relationship>,
        default: Relationship,
        now_ms: i64,
    ) -> Result<ContactEntry, DataError> {
        let (p, o, c, g) = (
            self.presence.clone(),
            owner.to_owned(),
            contact.to_owned(),
            group.map(str::to_owned),
        );
        blocking(move || p.add_contact(&o, &c, g.as_deref(), relationship, default, now_ms)).await
    }
    async fn set_relationship(
        &self,
        owner: &str,
        contact: &str,
        relationship: Relationship,
        default: Relationship,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let (p, o, c) = (self.presence.clone(), owner.to_owned(), contact.to_owned());
        blocking(move || p.set_relationship(&o, &c, relationship, default, now_ms)).await
    }
    async fn remove_contact(
        &self,
        owner: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        let (p, o, c) = (self.presence.clone(), owner.to_owned(), contact.to_owned());
        blocking(move || p.remove_contact(&o, &c, now_ms)).await
    }
    async fn contact_groups(&self, owner: &str) -> Result<Vec<(i64, String)>, DataError> {
        let (p, o) = (self.presence.clone(), owner.to_owned());
        blocking(move || p.contact_groups(&o)).await
    }
    async fn add_group(&self, owner: &str, name: &str, now_ms: i64) -> Result<i64, DataError> {
        let (p, o, n) = (self.presence.clone(), owner.to_owned(), name.to_owned());
        blocking(move || p.add_group(&o, &n, now_ms)).await
    }
    async fn rename_group(
        &self,
        owner: &str,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        let (p, o, n) = (self.presence.clone(), owner.to_owned(), name.to_owned());
        blocking(move || p.rename_group(&o, id, &n, now_ms)).await
    }
    async fn delete_group(&self, owner: &str, id: i64, now_ms: i64) -> Result<bool, DataError> {
        let (p, o) = (self.presence.clone(), owner.to_owned());
        blocking(move || p.delete_group(&o, id, now_ms)).await
    }
    async fn set_contact_groups(
        &self,
        owner: &str,
        contact: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<(), DataError> {
        let (p, o, c, ids) = (
            self.presence.clone(),
            owner.to_owned(),
            contact.to_owned(),
            ids.to_vec(),
        );
        blocking(move || p.set_contact_groups(&o, &c, &ids, now_ms)).await
    }
}

#[async_trait]
impl PresenceData for SqliteStore {
    async fn set_manual(&self, address: &str, state: &ManualState) -> Result<(), DataError> {
        let (p, a, m) = (self.presence.clone(), address.to_owned(), state.clone());
        blocking(move || p.set_manual(&a, &m)).await
    }
    async fn clear_manual(&self, address: &str, now_ms: i64) -> Result<bool, DataError> {
        let (p, a) = (self.presence.clone(), address.to_owned());
        blocking(move || p.clear_manual(&a, now_ms)).await
    }
    async fn add_calendar_entry(
        &self,
        address: &str,
        entry: &CalendarEntry,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let (p, a, e) = (self.presence.clone(), address.to_owned(), entry.clone());
        blocking(move || p.add_calendar_entry(&a, &e, now_ms)).await
    }
    async fn set_card(
        &self,
        address: &str,
        card: &ContactCard,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let (p, a, c) = (self.presence.clone(), address.to_owned(), card.clone());
        blocking(move || p.set_card(&a, &c, now_ms)).await
    }
    async fn set_last_active(&self, address: &str, at_ms: i64) -> Result<(), DataError> {
        let (p, a) = (self.presence.clone(), address.to_owned());
        blocking(move || p.set_last_active(&a, at_ms)).await
    }
    async fn set_last_active_many(&self, rows: &[(String, i64)]) -> Result<(), DataError> {
        let (p, rows) = (self.presence.clone(), rows.to_vec());
        blocking(move || p.set_last_active_many(&rows)).await
    }
    async fn load(&self, address: &str, now_ms: i64) -> Result<StoredPresence, DataError> {
        let (p, a) = (self.presence.clone(), address.to_owned());
        blocking(move || p.load(&a, now_ms)).await
    }
    async fn latest_change(&self) -> Result<i64, DataError> {
        let p = self.presence.clone();
        blocking(move || p.latest_change()).await
    }
    async fn changes_since(&self, seq: i64) -> Result<(i64, Vec<String>), DataError> {
        let p = self.presence.clone();
        blocking(move || p.changes_since(seq)).await
    }
    async fn prune(&self, before_ms: i64) -> Result<(), DataError> {
        let p = self.presence.clone();
        blocking(move || p.prune(before_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::ffi::c_int) -> DataError {
        DataError::from(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        )))
    }

    #[test]
    fn a_database_that_cannot_answer_now_is_unavailable_not_a_bug() {
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_FULL,
        ] {
            assert!(failure(code).is_unavailable(), "{code}");
        }
        assert!(!failure(rusqlite::ffi::SQLITE_CONSTRAINT).is_unavailable());
        assert_eq!(
            DataError::from(StoreError::NoSuchUser("x".into())),
            DataError::NoSuchUser("x".into())
        );
    }
}
