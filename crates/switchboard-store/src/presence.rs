//! The presence service's durable state: contact lists (groups, contacts and the privacy
//! relationship of each), state a user set without a client (manual availability and
//! note, calendar meetings and out-of-office), contact cards, last-active times, and a
//! change log.
//!
//! The CLI writes here while the server runs; every write that changes what watchers see
//! appends the address to `presence_changes`, which the server follows
//! ([`PresenceStore::changes_since`]) to notify watchers.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{self, calendar_columns, CHANGES_PAGE};
use crate::StoreError;
use switchboard_core::{
    CalendarEntry, ContactCard, ContactEntry, ContactList, ManualState, Relationship,
    StoredPresence,
};

/// Presence state over its own SQLite connection.
pub struct PresenceStore {
    conn: Mutex<Connection>,
}

impl PresenceStore {
    pub fn open(data_dir: &Path) -> Result<PresenceStore, StoreError> {
        let conn = crate::connect(data_dir)?;
        Ok(PresenceStore {
            conn: Mutex::new(conn),
        })
    }

    /// A user's contact list (empty, version 0, when they never had one).
    pub fn contact_list(&self, owner: &str) -> Result<ContactList, StoreError> {
        let conn = self.conn.lock();
        let version: i64 = conn
            .query_row(
                "SELECT version FROM contact_lists WHERE owner = ?1",
                [owner],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let mut groups = Vec::new();
        let mut stmt =
            conn.prepare_cached("SELECT name FROM contact_groups WHERE owner = ?1 ORDER BY id")?;
        for name in stmt.query_map([owner], |r| r.get::<_, String>(0))? {
            groups.push(name?);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT c.contact, c.relationship, c.added_at_ms,
                    (SELECT group_concat(g.name, char(31)) FROM contact_group_members m
                       JOIN contact_groups g ON g.id = m.group_id
                      WHERE m.owner = c.owner AND m.contact = c.contact),
                    c.listed
               FROM contacts c WHERE c.owner = ?1 ORDER BY c.contact",
        )?;
        let contacts = stmt
            .query_map([owner], |r| rows::contact_entry(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ContactList {
            version,
            groups,
            contacts,
        })
    }

    /// The relationship `owner` gave `contact`, if `contact` is on their list.
    pub fn relationship(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Relationship>, StoreError> {
        let conn = self.conn.lock();
        let rel: Option<String> = conn
            .prepare_cached("SELECT relationship FROM contacts WHERE owner = ?1 AND contact = ?2")?
            .query_row([owner, contact], |r| r.get(0))
            .optional()?;
        Ok(rel.and_then(|r| r.parse().ok()))
    }

    /// Adds `contact` to `owner`'s list, or updates it: `relationship` (when given)
    /// replaces the current one; `group` (when given) is created if needed and the contact
    /// added to it. A new contact without a relationship gets `default`.
    pub fn add_contact(
        &self,
        owner: &str,
        contact: &str,
        group: Option<&str>,
        relationship: Option<Relationship>,
        default: Relationship,
        now_ms: i64,
    ) -> Result<ContactEntry, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT relationship FROM contacts WHERE owner = ?1 AND contact = ?2",
                [owner, contact],
                |r| r.get(0),
            )
            .optional()?;
        let rel = rows::chosen_relationship(relationship, existing.as_deref(), default);
        tx.execute(
            "INSERT INTO contacts (owner, contact, relationship, added_at_ms, listed) VALUES (?1, ?2, ?3, ?4, 1)
             ON CONFLICT (owner, contact) DO UPDATE SET relationship = excluded.relationship, listed = 1",
            params![owner, contact, rel.as_str(), now_ms],
        )?;
        if let Some(g) = group {
            tx.execute(
                "INSERT OR IGNORE INTO contact_groups (owner, name) VALUES (?1, ?2)",
                [owner, g],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO contact_group_members (owner, contact, group_id)
                 SELECT ?1, ?2, id FROM contact_groups WHERE owner = ?1 AND name = ?3",
                [owner, contact, g],
            )?;
        }
        bump_version(&tx, owner)?;
        // The contact's view of the owner may have changed (relationship), and so may the
        // owner's watcher list.
        log_change(&tx, owner, now_ms)?;
        tx.commit()?;
        drop(conn);
        let list = self.contact_list(owner)?;
        Ok(list
            .contacts
            .into_iter()
            .find(|c| c.contact == contact)
            .expect("just written"))
    }

    /// Gives `contact` the relationship `rel` without putting them on `owner`'s list (a
    /// Lync client's `setContainerMembers`, MS-PRES §3.7.4.1); a contact on the list keeps
    /// its place. An entry off the list that is back at `default` is forgotten.
    pub fn set_relationship(
        &self,
        owner: &str,
        contact: &str,
        rel: Relationship,
        default: Relationship,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            if rel == default {
                let n = tx.execute(
                    "DELETE FROM contacts WHERE owner = ?1 AND contact = ?2 AND listed = 0",
                    [owner, contact],
                )?;
                if n > 0 {
                    return Ok(((), true));
                }
            }
            let n = tx.execute(
                "INSERT INTO contacts (owner, contact, relationship, added_at_ms, listed)
                 VALUES (?1, ?2, ?3, ?4, 0)
                 ON CONFLICT (owner, contact) DO UPDATE SET relationship = excluded.relationship
                 WHERE relationship != excluded.relationship",
                params![owner, contact, rel.as_str(), now_ms],
            )?;
            Ok(((), n > 0))
        })
    }

    /// Runs one edit of `owner`'s contact list in a transaction; when `edit` says it
    /// changed something, the list's version is bumped and the change logged (watchers
    /// and the running server follow the log).
    fn edit_list<T>(
        &self,
        owner: &str,
        now_ms: i64,
        edit: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let (out, changed) = edit(&tx)?;
        if changed {
            bump_version(&tx, owner)?;
            log_change(&tx, owner, now_ms)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Removes `contact` from `owner`'s list; false when it was not there.
    pub fn remove_contact(
        &self,
        owner: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            let n = tx.execute(
                "DELETE FROM contacts WHERE owner = ?1 AND contact = ?2",
                [owner, contact],
            )?;
            Ok((n > 0, n > 0))
        })
    }

    /// The owner's groups with their ids (stable: Lync clients number groups by them).
    pub fn contact_groups(&self, owner: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT id, name FROM contact_groups WHERE owner = ?1 ORDER BY id")?;
        let rows = stmt.query_map([owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates a group (or finds the one of that name); returns its id.
    pub fn add_group(&self, owner: &str, name: &str, now_ms: i64) -> Result<i64, StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO contact_groups (owner, name) VALUES (?1, ?2)",
                [owner, name],
            )?;
            let id: i64 = tx.query_row(
                "SELECT id FROM contact_groups WHERE owner = ?1 AND name = ?2",
                [owner, name],
                |r| r.get(0),
            )?;
            Ok((id, n > 0))
        })
    }

    /// Renames group `id`; false when the owner has no such group (or the name is taken).
    pub fn rename_group(
        &self,
        owner: &str,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            let n = tx.execute(
                "UPDATE OR IGNORE contact_groups SET name = ?3 WHERE owner = ?1 AND id = ?2",
                params![owner, id, name],
            )?;
            Ok((n > 0, n > 0))
        })
    }

    /// Deletes group `id` (its contacts stay on the list); false when there is none.
    pub fn delete_group(&self, owner: &str, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            tx.execute(
                "DELETE FROM contact_group_members WHERE owner = ?1 AND group_id = ?2",
                params![owner, id],
            )?;
            let n = tx.execute(
                "DELETE FROM contact_groups WHERE owner = ?1 AND id = ?2",
                params![owner, id],
            )?;
            Ok((n > 0, n > 0))
        })
    }

    /// Puts `contact` (already on the list) in exactly the groups `ids` of the owner's.
    pub fn set_contact_groups(
        &self,
        owner: &str,
        contact: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.edit_list(owner, now_ms, |tx| {
            tx.execute(
                "DELETE FROM contact_group_members WHERE owner = ?1 AND contact = ?2",
                [owner, contact],
            )?;
            for id in ids {
                tx.execute(
                    "INSERT OR IGNORE INTO contact_group_members (owner, contact, group_id)
                     SELECT ?1, ?2, id FROM contact_groups WHERE owner = ?1 AND id = ?3",
                    params![owner, contact, id],
                )?;
            }
            Ok(((), true))
        })
    }

    /// Sets the user's manual state (replacing any earlier one).
    pub fn set_manual(&self, address: &str, m: &ManualState) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO presence_manual (address, availability, note, until_ms, set_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (address) DO UPDATE SET availability = excluded.availability, note = excluded.note,
               until_ms = excluded.until_ms, set_at_ms = excluded.set_at_ms",
            params![address, m.availability, m.note, m.until_ms, m.set_at_ms],
        )?;
        log_change(&tx, address, m.set_at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Clears the manual state; false when there was none.
    pub fn clear_manual(&self, address: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM presence_manual WHERE address = ?1", [address])?;
        log_change(&tx, address, now_ms)?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Adds a meeting or an out-of-office period.
    pub fn add_calendar_entry(
        &self,
        address: &str,
        e: &CalendarEntry,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO calendar_entries (address, kind, from_ms, to_ms, subject, location, note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                address,
                e.kind.as_str(),
                e.from_ms,
                e.to_ms,
                e.subject,
                e.location,
                e.note
            ],
        )?;
        log_change(&tx, address, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the contact-card fields given (others are kept).
    pub fn set_card(
        &self,
        address: &str,
        card: &ContactCard,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO contact_cards (address, title, email, work_phone, personal_phone) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (address) DO UPDATE SET
               title = COALESCE(excluded.title, title), email = COALESCE(excluded.email, email),
               work_phone = COALESCE(excluded.work_phone, work_phone),
               personal_phone = COALESCE(excluded.personal_phone, personal_phone)",
            params![address, card.title, card.email, card.work_phone, card.personal_phone],
        )?;
        log_change(&tx, address, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Remembers when the user's last device went away.
    pub fn set_last_active(&self, address: &str, at_ms: i64) -> Result<(), StoreError> {
        self.set_last_active_many(&[(address.to_owned(), at_ms)])
    }

    /// [`PresenceStore::set_last_active`] for many users in one transaction.
    pub fn set_last_active_many(&self, rows: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for (address, at_ms) in rows {
            tx.execute(
                "INSERT INTO presence_last_active (address, at_ms) VALUES (?1, ?2)
                 ON CONFLICT (address) DO UPDATE SET at_ms = MAX(at_ms, excluded.at_ms)",
                params![address, at_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Everything stored about `address`; calendar entries that ended before `now_ms` are
    /// left out.
    pub fn load(&self, address: &str, now_ms: i64) -> Result<StoredPresence, StoreError> {
        let conn = self.conn.lock();
        let manual = conn
            .prepare_cached(
                "SELECT availability, note, until_ms, set_at_ms FROM presence_manual WHERE address = ?1",
            )?
            .query_row([address], |r| rows::manual(r))
            .optional()?;
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            calendar_columns!(),
            " FROM calendar_entries WHERE address = ?1 AND to_ms > ?2 ORDER BY from_ms, id"
        ))?;
        let calendar = stmt
            .query_map(params![address, now_ms], |r| rows::calendar_entry(r))?
            .collect::<Result<Vec<_>, _>>()?;
        let card = conn
            .prepare_cached(
                "SELECT title, email, work_phone, personal_phone FROM contact_cards WHERE address = ?1",
            )?
            .query_row([address], |r| rows::card(r))
            .optional()?
            .unwrap_or_default();
        let last_active_ms = conn
            .prepare_cached("SELECT at_ms FROM presence_last_active WHERE address = ?1")?
            .query_row([address], |r| r.get(0))
            .optional()?;
        Ok(StoredPresence {
            manual,
            calendar,
            card,
            last_active_ms,
            // A Standard Edition has no pool.
            pool_devices: Vec::new(),
        })
    }

    /// The newest change's sequence number (0 when none).
    pub fn latest_change(&self) -> Result<i64, StoreError> {
        Ok(self.conn.lock().query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM presence_changes",
            [],
            |r| r.get(0),
        )?)
    }

    /// Addresses changed after `seq`, with the newest sequence number seen.
    pub fn changes_since(&self, seq: i64) -> Result<(i64, Vec<String>), StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, address FROM presence_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map([seq, CHANGES_PAGE], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows::changed_addresses(seq, rows)?)
    }

    /// Forgets old change-log rows and calendar entries that have ended.
    pub fn prune(&self, before_ms: i64) -> Result<(), StoreError> {
        let conn = self.conn.lock();
        // Keep the newest row so the sequence never goes backwards for a follower.
        conn.execute(
            "DELETE FROM presence_changes WHERE at_ms < ?1 AND seq < (SELECT MAX(seq) FROM presence_changes)",
            [before_ms],
        )?;
        conn.execute("DELETE FROM calendar_entries WHERE to_ms < ?1", [before_ms])?;
        Ok(())
    }
}

fn bump_version(tx: &rusqlite::Transaction<'_>, owner: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO contact_lists (owner, version) VALUES (?1, 1)
         ON CONFLICT (owner) DO UPDATE SET version = version + 1",
        [owner],
    )?;
    Ok(())
}

fn log_change(tx: &rusqlite::Transaction<'_>, address: &str, at_ms: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO presence_changes (address, at_ms) VALUES (?1, ?2)",
        params![address, at_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::CalendarKind;

    #[test]
    fn groups_by_id_add_rename_delete_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let s = PresenceStore::open(dir.path()).unwrap();
        s.add_contact("a@x", "b@x", None, None, Relationship::Colleagues, 1)
            .unwrap();
        let team = s.add_group("a@x", "Team", 2).unwrap();
        assert_eq!(
            s.add_group("a@x", "Team", 3).unwrap(),
            team,
            "found, not made twice"
        );
        let pals = s.add_group("a@x", "Pals", 4).unwrap();
        s.set_contact_groups("a@x", "b@x", &[team, pals], 5)
            .unwrap();
        let v = s.contact_list("a@x").unwrap().version;
        assert_eq!(
            s.contact_list("a@x").unwrap().contacts[0].groups,
            ["Team", "Pals"]
        );
        assert!(s.rename_group("a@x", pals, "Friends", 6).unwrap());
        assert!(
            !s.rename_group("a@x", pals, "Team", 7).unwrap(),
            "name taken"
        );
        assert!(
            !s.rename_group("z@x", team, "Mine", 7).unwrap(),
            "not the owner's"
        );
        assert!(s.delete_group("a@x", team, 8).unwrap());
        assert!(!s.delete_group("a@x", team, 9).unwrap());
        let list = s.contact_list("a@x").unwrap();
        assert_eq!(list.groups, ["Friends"]);
        assert_eq!(list.contacts[0].groups, ["Friends"]);
        assert!(list.version > v, "every change bumps the version");
        assert_eq!(
            s.contact_groups("a@x").unwrap(),
            [(pals, "Friends".to_owned())]
        );
    }

    #[test]
    fn relationships_off_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = PresenceStore::open(dir.path()).unwrap();
        let (blocked, colleagues) = (Relationship::Blocked, Relationship::Colleagues);
        s.set_relationship("a@x", "e@y", blocked, colleagues, 1)
            .unwrap();
        let list = s.contact_list("a@x").unwrap();
        assert_eq!(list.contacts.len(), 1);
        assert!(!list.contacts[0].listed);
        assert_eq!(s.relationship("a@x", "e@y").unwrap(), Some(blocked));
        // Back to the default: forgotten.
        s.set_relationship("a@x", "e@y", colleagues, colleagues, 2)
            .unwrap();
        assert!(s.contact_list("a@x").unwrap().contacts.is_empty());
        // A listed contact keeps its place whatever its relationship.
        s.add_contact("a@x", "b@x", None, None, colleagues, 3)
            .unwrap();
        s.set_relationship("a@x", "b@x", blocked, colleagues, 4)
            .unwrap();
        s.set_relationship("a@x", "b@x", colleagues, colleagues, 5)
            .unwrap();
        let list = s.contact_list("a@x").unwrap();
        assert_eq!(list.contacts.len(), 1);
        assert!(list.contacts[0].listed);
        // Adding someone who had only a relationship lists them, keeping it.
        s.set_relationship("a@x", "e@y", blocked, colleagues, 6)
            .unwrap();
        s.add_contact("a@x", "e@y", None, None, colleagues, 7)
            .unwrap();
        let e = s
            .contact_list("a@x")
            .unwrap()
            .contacts
            .into_iter()
            .find(|c| c.contact == "e@y")
            .unwrap();
        assert!(e.listed);
        assert_eq!(e.relationship, blocked);
    }

    #[test]
    fn contacts_groups_and_relationships_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = PresenceStore::open(dir.path()).unwrap();
        assert_eq!(s.contact_list("a@x").unwrap(), ContactList::default());
        let before = s.latest_change().unwrap();
        s.add_contact(
            "a@x",
            "b@x",
            Some("Team"),
            None,
            Relationship::Colleagues,
            1,
        )
        .unwrap();
        s.add_contact(
            "a@x",
            "b@x",
            Some("Friends"),
            Some(Relationship::Friends),
            Relationship::Colleagues,
            2,
        )
        .unwrap();
        s.add_contact(
            "a@x",
            "c@y",
            None,
            Some(Relationship::Blocked),
            Relationship::Colleagues,
            3,
        )
        .unwrap();
        let list = s.contact_list("a@x").unwrap();
        assert_eq!(list.version, 3);
        assert_eq!(list.groups, vec!["Team", "Friends"]);
        assert_eq!(list.contacts[0].contact, "b@x");
        assert_eq!(list.contacts[0].relationship, Relationship::Friends);
        assert_eq!(list.contacts[0].groups.len(), 2);
        assert_eq!(list.contacts[1].relationship, Relationship::Blocked);
        assert_eq!(
            s.relationship("a@x", "c@y").unwrap(),
            Some(Relationship::Blocked)
        );
        assert_eq!(s.relationship("c@y", "a@x").unwrap(), None);
        let (seq, changed) = s.changes_since(before).unwrap();
        assert!(seq > before);
        assert_eq!(changed, vec!["a@x"]);
        assert!(s.remove_contact("a@x", "b@x", 4).unwrap());
        assert!(!s.remove_contact("a@x", "b@x", 5).unwrap());
        assert_eq!(s.contact_list("a@x").unwrap().contacts.len(), 1);
    }

    #[test]
    fn manual_calendar_and_card() {
        let dir = tempfile::tempdir().unwrap();
        let s = PresenceStore::open(dir.path()).unwrap();
        s.set_manual(
            "a@x",
            &ManualState {
                availability: "busy".into(),
                note: Some("heads down".into()),
                until_ms: Some(50),
                set_at_ms: 10,
            },
        )
        .unwrap();
        for (from, to) in [(0, 5), (20, 30)] {
            s.add_calendar_entry(
                "a@x",
                &CalendarEntry {
                    kind: CalendarKind::Meeting,
                    from_ms: from,
                    to_ms: to,
                    subject: Some("Review".into()),
                    location: None,
                    note: None,
                },
                1,
            )
            .unwrap();
        }
        s.set_card(
            "a@x",
            &ContactCard {
                title: Some("Eng".into()),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        s.set_card(
            "a@x",
            &ContactCard {
                email: Some("a@x".into()),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        s.set_last_active("a@x", 7).unwrap();
        let p = s.load("a@x", 10).unwrap();
        assert_eq!(p.manual.as_ref().unwrap().availability, "busy");
        assert_eq!(p.calendar.len(), 1, "the entry that ended is left out");
        assert_eq!(p.card.title.as_deref(), Some("Eng"));
        assert_eq!(p.card.email.as_deref(), Some("a@x"));
        assert_eq!(p.last_active_ms, Some(7));
        assert!(s.clear_manual("a@x", 11).unwrap());
        assert!(s.load("a@x", 10).unwrap().manual.is_none());
    }
}
