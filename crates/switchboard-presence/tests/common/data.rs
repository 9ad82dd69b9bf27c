//! A data layer for tests: the real SQLite store behind the data traits, with a switch
//! that makes chosen calls fail as a database that cannot answer does
//! (`DataError::Unavailable`), and gates that hold back one read's answer until the test
//! lets it go. Shared by the presence service's tests and the server's socket-level tests
//! (included there by path), so both fail the same way.
#![allow(dead_code)] // each test binary uses part of it

use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use switchboard_core::{
    Address, CalendarEntry, ContactCard, ContactData, ContactEntry, ContactList, DataError,
    Directory, ManualState, PresenceData, Relationship, StoredPresence, UserRecord,
};
use tokio::sync::Notify;

/// The reads a presentity is built from (a user's stored state, contact list and
/// groups, and directory entry).
pub const USER_READS: &[&str] = &["load", "contact_list", "contact_groups", "find"];

/// Stands for every call.
const EVERYTHING: &str = "*";

/// One read held back: the test learns it was reached, and lets it answer.
#[derive(Default)]
pub struct Gate {
    reached: Notify,
    release: Notify,
}

impl Gate {
    /// Waits until the read has been made (and is held back).
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the read answer (what it read before it was held back).
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// A store behind the traits, with calls that fail on demand and reads that wait on
/// gates.
pub struct TestData {
    directory: Arc<dyn Directory>,
    contacts: Arc<dyn ContactData>,
    presence: Arc<dyn PresenceData>,
    failing: Mutex<Vec<&'static str>>,
    gates: Mutex<Vec<(&'static str, String, Arc<Gate>)>>,
}

impl TestData {
    /// In front of one store that is all three.
    pub fn new<S: Directory + ContactData + PresenceData>(store: Arc<S>) -> Arc<TestData> {
        TestData::over(store.clone(), store.clone(), store)
    }

    /// In front of these.
    pub fn over(
        directory: Arc<dyn Directory>,
        contacts: Arc<dyn ContactData>,
        presence: Arc<dyn PresenceData>,
    ) -> Arc<TestData> {
        Arc::new(TestData {
            directory,
            contacts,
            presence,
            failing: Mutex::new(Vec::new()),
            gates: Mutex::new(Vec::new()),
        })
    }

    /// The store itself, as another process (the CLI) writes to it: no failures, no
    /// gates.
    pub fn straight(&self) -> (&Arc<dyn ContactData>, &Arc<dyn PresenceData>) {
        (&self.contacts, &self.presence)
    }

    /// These calls fail (`Unavailable`) until [`TestData::recover`].
    pub fn fail(&self, calls: &[&'static str]) {
        self.failing.lock().unwrap().extend_from_slice(calls);
    }

    /// Every call fails: the database is gone.
    pub fn fail_everything(&self) {
        self.fail(&[EVERYTHING]);
    }

    /// Every call answers again.
    pub fn recover(&self) {
        self.failing.lock().unwrap().clear();
    }

    /// The next `call` about `key` (an address, `user@domain`) reads, then waits for the
    /// gate before it answers: what it answers may be stale by then.
    pub fn park(&self, call: &'static str, key: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.gates
            .lock()
            .unwrap()
            .push((call, key.to_owned(), gate.clone()));
        gate
    }

    async fn call<T>(
        &self,
        call: &'static str,
        key: &str,
        read: impl Future<Output = Result<T, DataError>>,
    ) -> Result<T, DataError> {
        let fails = {
            let failing = self.failing.lock().unwrap();
            failing.iter().any(|c| *c == call || *c == EVERYTHING)
        };
        if fails {
            return Err(DataError::Unavailable(format!("test: {call} fails")));
        }
        let answer = read.await;
        let gate = {
            let mut gates = self.gates.lock().unwrap();
            let i = gates.iter().position(|(c, k, _)| *c == call && k == key);
            i.map(|i| gates.remove(i).2)
        };
        if let Some(gate) = gate {
            gate.reached.notify_one();
            gate.release.notified().await;
        }
        answer
    }
}

#[async_trait]
impl Directory for TestData {
    async fn find(&self, address: &Address) -> Result<Option<UserRecord>, DataError> {
        let key = address.to_string();
        self.call("find", &key, self.directory.find(address)).await
    }
    async fn domains(&self) -> Result<Vec<String>, DataError> {
        self.call("domains", "", self.directory.domains()).await
    }
    async fn has_domain(&self, domain: &str) -> Result<bool, DataError> {
        self.call("has_domain", domain, self.directory.has_domain(domain))
            .await
    }
    async fn add(
        &self,
        address: &Address,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserRecord, DataError> {
        let key = address.to_string();
        let write = self.directory.add(address, password, display_name);
        self.call("add", &key, write).await
    }
    async fn set_password(&self, address: &Address, password: &str) -> Result<(), DataError> {
        let key = address.to_string();
        let write = self.directory.set_password(address, password);
        self.call("set_password", &key, write).await
    }
    async fn set_enabled(&self, address: &Address, enabled: bool) -> Result<(), DataError> {
        let key = address.to_string();
        let write = self.directory.set_enabled(address, enabled);
        self.call("set_enabled", &key, write).await
    }
    async fn remove(&self, address: &Address) -> Result<(), DataError> {
        let key = address.to_string();
        self.call("remove", &key, self.directory.remove(address))
            .await
    }
    async fn list(&self) -> Result<Vec<UserRecord>, DataError> {
        self.call("list", "", self.directory.list()).await
    }
    async fn upsert_many(
        &self,
        users: &[(Address, String, Option<String>)],
    ) -> Result<usize, DataError> {
        self.call("upsert_many", "", self.directory.upsert_many(users))
            .await
    }
}

#[async_trait]
impl ContactData for TestData {
    async fn contact_list(&self, owner: &str) -> Result<ContactList, DataError> {
        self.call("contact_list", owner, self.contacts.contact_list(owner))
            .await
    }
    async fn relationship(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Relationship>, DataError> {
        let read = self.contacts.relationship(owner, contact);
        self.call("relationship", owner, read).await
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
        let write = self
            .contacts
            .add_contact(owner, contact, group, relationship, default, now_ms);
        self.call("add_contact", owner, write).await
    }
    async fn set_relationship(
        &self,
        owner: &str,
        contact: &str,
        relationship: Relationship,
        default: Relationship,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let write = self
            .contacts
            .set_relationship(owner, contact, relationship, default, now_ms);
        self.call("set_relationship", owner, write).await
    }
    async fn remove_contact(
        &self,
        owner: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        let write = self.contacts.remove_contact(owner, contact, now_ms);
        self.call("remove_contact", owner, write).await
    }
    async fn contact_groups(&self, owner: &str) -> Result<Vec<(i64, String)>, DataError> {
        self.call("contact_groups", owner, self.contacts.contact_groups(owner))
            .await
    }
    async fn add_group(&self, owner: &str, name: &str, now_ms: i64) -> Result<i64, DataError> {
        let write = self.contacts.add_group(owner, name, now_ms);
        self.call("add_group", owner, write).await
    }
    async fn rename_group(
        &self,
        owner: &str,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        let write = self.contacts.rename_group(owner, id, name, now_ms);
        self.call("rename_group", owner, write).await
    }
    async fn delete_group(&self, owner: &str, id: i64, now_ms: i64) -> Result<bool, DataError> {
        let write = self.contacts.delete_group(owner, id, now_ms);
        self.call("delete_group", owner, write).await
    }
    async fn set_contact_groups(
        &self,
        owner: &str,
        contact: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<(), DataError> {
        let write = self
            .contacts
            .set_contact_groups(owner, contact, ids, now_ms);
        self.call("set_contact_groups", owner, write).await
    }
}

#[async_trait]
impl PresenceData for TestData {
    async fn set_manual(&self, address: &str, state: &ManualState) -> Result<(), DataError> {
        let write = self.presence.set_manual(address, state);
        self.call("set_manual", address, write).await
    }
    async fn clear_manual(&self, address: &str, now_ms: i64) -> Result<bool, DataError> {
        let write = self.presence.clear_manual(address, now_ms);
        self.call("clear_manual", address, write).await
    }
    async fn add_calendar_entry(
        &self,
        address: &str,
        entry: &CalendarEntry,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let write = self.presence.add_calendar_entry(address, entry, now_ms);
        self.call("add_calendar_entry", address, write).await
    }
    async fn set_card(
        &self,
        address: &str,
        card: &ContactCard,
        now_ms: i64,
    ) -> Result<(), DataError> {
        let write = self.presence.set_card(address, card, now_ms);
        self.call("set_card", address, write).await
    }
    async fn set_last_active(&self, address: &str, at_ms: i64) -> Result<(), DataError> {
        let write = self.presence.set_last_active(address, at_ms);
        self.call("set_last_active", address, write).await
    }
    async fn set_last_active_many(&self, rows: &[(String, i64)]) -> Result<(), DataError> {
        let write = self.presence.set_last_active_many(rows);
        self.call("set_last_active_many", "", write).await
    }
    async fn load(&self, address: &str, now_ms: i64) -> Result<StoredPresence, DataError> {
        self.call("load", address, self.presence.load(address, now_ms))
            .await
    }
    async fn latest_change(&self) -> Result<i64, DataError> {
        self.call("latest_change", "", self.presence.latest_change())
            .await
    }
    async fn changes_since(&self, seq: i64) -> Result<(i64, Vec<String>), DataError> {
        self.call("changes_since", "", self.presence.changes_since(seq))
            .await
    }
    async fn prune(&self, before_ms: i64) -> Result<(), DataError> {
        self.call("prune", "", self.presence.prune(before_ms)).await
    }
}
