//! Contact lists and presence state in PostgreSQL, and the change log the running
//! servers follow.
//!
//! Two orderings SQLite gets from its single writer are made explicit here:
//! - Edits of one owner's contact list take turns, under a per-owner advisory lock, so
//!   a read-then-write edit (a group renamed to a free name, a relationship kept) sees
//!   the edit before it.
//! - Change-log entries become visible in the order of their sequence numbers: every
//!   writer takes the change log's advisory lock (readers do not) before drawing its
//!   number, and holds it until it commits. Without it, a follower that read number 11
//!   while 10 was still uncommitted would skip 10 for ever.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use futures_util::future::{try_join, try_join3, try_join4, try_join_all};
use switchboard_core::{
    CalendarEntry, ContactCard, ContactData, ContactEntry, ContactList, DataError, ManualState,
    PresenceData, Relationship, StoredPresence,
};
use tokio_postgres::types::ToSql;

use super::directory::PIPELINE;
use super::{all, on_connection, Failure, PostgresStore, XACT_LOCK};
use crate::rows::{self, calendar_columns, CHANGES_PAGE};

/// The first key of the per-owner contact-list lock (the second is the owner's hash):
/// the bytes of "list".
const LIST_LOCK: i32 = 0x6c69_7374;
/// The first key of the change-log writers' lock: the bytes of "chng". An advisory lock
/// rather than a table lock: a table lock taken after the INSERT was prepared (which
/// locks the table already) would deadlock two writers.
const CHANGES_LOCK: i32 = 0x6368_6e67;

/// A contact's entry; `c` is the contacts row. Groups in creation order.
macro_rules! contact_entries {
    () => {
        "SELECT c.contact, c.relationship, c.added_at_ms,
                ARRAY(SELECT g.name FROM contact_group_members m
                        JOIN contact_groups g ON g.id = m.group_id
                       WHERE m.owner = c.owner AND m.contact = c.contact
                       ORDER BY g.id),
                c.listed
           FROM contacts c"
    };
}

/// Appends `address` to the change log (see the module's note on the lock).
async fn log_change(
    tx: &deadpool_postgres::Transaction<'_>,
    address: &str,
    at_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let (lock, insert) = try_join(
        tx.prepare_cached(XACT_LOCK),
        tx.prepare_cached("INSERT INTO presence_changes (address, at_ms) VALUES ($1, $2)"),
    )
    .await?;
    try_join(
        tx.execute(&lock, &[&CHANGES_LOCK, &"presence_changes"]),
        tx.execute(&insert, &[&address, &at_ms]),
    )
    .await?;
    Ok(())
}

/// The relationship `owner` gave `contact`, as stored.
async fn stored_relationship(
    c: &impl GenericClient,
    owner: &str,
    contact: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let st = c
        .prepare_cached("SELECT relationship FROM contacts WHERE owner = $1 AND contact = $2")
        .await?;
    c.query_opt(&st, &[&owner, &contact])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// One edit of an owner's contact list: a transaction that holds the owner's list lock.
struct ListEdit<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    owner: &'a str,
}

impl<'a> ListEdit<'a> {
    async fn begin(c: &'a mut deadpool_postgres::Object, owner: &'a str) -> Result<Self, Failure> {
        let tx = c.transaction().await?;
        let lock = tx.prepare_cached(XACT_LOCK).await?;
        tx.execute(&lock, &[&LIST_LOCK, &owner]).await?;
        Ok(ListEdit { tx, owner })
    }

    /// Commits the edit. When it changed the list, the list's version is bumped and the
    /// owner logged (their watchers, and the contacts' view of them, may have changed).
    async fn finish(self, changed: bool, now_ms: i64) -> Result<(), Failure> {
        if changed {
            let bump = self
                .tx
                .prepare_cached(
                    "INSERT INTO contact_lists (owner, version) VALUES ($1, 1)
                     ON CONFLICT (owner) DO UPDATE SET version = contact_lists.version + 1",
                )
                .await?;
            try_join(
                self.tx.execute(&bump, &[&self.owner]),
                log_change(&self.tx, self.owner, now_ms),
            )
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    /// Runs `sql` with `params`; how many rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Failure> {
        Ok(self.execute_in_order(&[(sql, params)]).await?[0])
    }

    /// Runs `statements` in their order, sent together once all are prepared (so none
    /// can overtake another); how many rows each changed.
    async fn execute_in_order(
        &self,
        statements: &[(&str, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<u64>, Failure> {
        let prepared = try_join_all(
            statements
                .iter()
                .map(|(sql, _)| self.tx.prepare_cached(sql)),
        )
        .await?;
        Ok(try_join_all(
            prepared
                .iter()
                .zip(statements)
                .map(|(st, (_, params))| self.tx.execute(st, params)),
        )
        .await?)
    }
}

#[async_trait]
impl ContactData for PostgresStore {
    async fn contact_list(&self, owner: &str) -> Result<ContactList, DataError> {
        on_connection!(self, |c| {
            let (version, groups, contacts) = try_join3(
                c.prepare_cached("SELECT version FROM contact_lists WHERE owner = $1"),
                c.prepare_cached("SELECT name FROM contact_groups WHERE owner = $1 ORDER BY id"),
                c.prepare_cached(concat!(
                    contact_entries!(),
                    " WHERE c.owner = $1 ORDER BY c.contact"
                )),
            )
            .await?;
            // The version is read first: a change landing in between shows as a newer
            // list under an older version, which the client fetches again.
            let (version, groups, contacts) = try_join3(
                c.query_opt(&version, &[&owner]),
                c.query(&groups, &[&owner]),
                c.query(&contacts, &[&owner]),
            )
            .await?;
            Ok(ContactList {
                version: version.map(|r| r.try_get(0)).transpose()?.unwrap_or(0),
                groups: groups
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?,
                contacts: all(contacts, rows::contact_entry)?,
            })
        })
    }

    async fn relationship(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Relationship>, DataError> {
        on_connection!(self, |c| {
            let rel = stored_relationship(&c, owner, contact).await?;
            Ok(rel.and_then(|r| r.parse().ok()))
        })
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
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            let tx = &edit.tx;
            let existing = stored_relationship(tx, owner, contact).await?;
            let rel = rows::chosen_relationship(relationship, existing.as_deref(), default);
            edit.execute(
                "INSERT INTO contacts (owner, contact, relationship, added_at_ms, listed)
                 VALUES ($1, $2, $3, $4, TRUE)
                 ON CONFLICT (owner, contact) DO UPDATE SET
                   relationship = excluded.relationship, listed = TRUE",
                &[&owner, &contact, &rel.as_str(), &now_ms],
            )
            .await?;
            if let Some(g) = group {
                edit.execute_in_order(&[
                    (
                        "INSERT INTO contact_groups (owner, name) VALUES ($1, $2)
                         ON CONFLICT (owner, name) DO NOTHING",
                        &[&owner, &g],
                    ),
                    (
                        "INSERT INTO contact_group_members (owner, contact, group_id)
                         SELECT $1, $2::TEXT, id FROM contact_groups WHERE owner = $1 AND name = $3
                         ON CONFLICT DO NOTHING",
                        &[&owner, &contact, &g],
                    ),
                ])
                .await?;
            }
            let entry = tx
                .prepare_cached(concat!(
                    contact_entries!(),
                    " WHERE c.owner = $1 AND c.contact = $2"
                ))
                .await?;
            let entry = rows::contact_entry(&tx.query_one(&entry, &[&owner, &contact]).await?)?;
            edit.finish(true, now_ms).await?;
            Ok(entry)
        })
    }

    async fn set_relationship(
        &self,
        owner: &str,
        contact: &str,
        rel: Relationship,
        default: Relationship,
        now_ms: i64,
    ) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            // An entry off the list that is back at the default is forgotten; one on the
            // list keeps its place whatever its relationship.
            let mut changed = rel == default
                && edit
                    .execute(
                        "DELETE FROM contacts WHERE owner = $1 AND contact = $2 AND NOT listed",
                        &[&owner, &contact],
                    )
                    .await?
                    > 0;
            if !changed {
                changed = edit
                    .execute(
                        "INSERT INTO contacts (owner, contact, relationship, added_at_ms, listed)
                         VALUES ($1, $2, $3, $4, FALSE)
                         ON CONFLICT (owner, contact) DO UPDATE SET relationship = excluded.relationship
                         WHERE contacts.relationship <> excluded.relationship",
                        &[&owner, &contact, &rel.as_str(), &now_ms],
                    )
                    .await?
                    > 0;
            }
            edit.finish(changed, now_ms).await
        })
    }

    async fn remove_contact(
        &self,
        owner: &str,
        contact: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            let removed = edit
                .execute(
                    "DELETE FROM contacts WHERE owner = $1 AND contact = $2",
                    &[&owner, &contact],
                )
                .await?
                > 0;
            edit.finish(removed, now_ms).await?;
            Ok(removed)
        })
    }

    async fn contact_groups(&self, owner: &str) -> Result<Vec<(i64, String)>, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached("SELECT id, name FROM contact_groups WHERE owner = $1 ORDER BY id")
                .await?;
            let groups = c.query(&st, &[&owner]).await?;
            Ok(groups
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()?)
        })
    }

    async fn add_group(&self, owner: &str, name: &str, now_ms: i64) -> Result<i64, DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            let (add, find) = try_join(
                edit.tx.prepare_cached(
                    "INSERT INTO contact_groups (owner, name) VALUES ($1, $2)
                     ON CONFLICT (owner, name) DO NOTHING",
                ),
                edit.tx
                    .prepare_cached("SELECT id FROM contact_groups WHERE owner = $1 AND name = $2"),
            )
            .await?;
            let (added, id) = try_join(
                edit.tx.execute(&add, &[&owner, &name]),
                edit.tx.query_one(&find, &[&owner, &name]),
            )
            .await?;
            edit.finish(added > 0, now_ms).await?;
            Ok(id.try_get(0)?)
        })
    }

    async fn rename_group(
        &self,
        owner: &str,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<bool, DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            // A name another of the owner's groups has is refused, as SQLite's
            // `UPDATE OR IGNORE` refuses it.
            let renamed = edit
                .execute(
                    "UPDATE contact_groups SET name = $3 WHERE owner = $1 AND id = $2
                       AND NOT EXISTS (SELECT 1 FROM contact_groups o
                                        WHERE o.owner = $1 AND o.name = $3 AND o.id <> $2)",
                    &[&owner, &id, &name],
                )
                .await?
                > 0;
            edit.finish(renamed, now_ms).await?;
            Ok(renamed)
        })
    }

    async fn delete_group(&self, owner: &str, id: i64, now_ms: i64) -> Result<bool, DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            let deleted = edit
                .execute_in_order(&[
                    (
                        "DELETE FROM contact_group_members WHERE owner = $1 AND group_id = $2",
                        &[&owner, &id],
                    ),
                    (
                        "DELETE FROM contact_groups WHERE owner = $1 AND id = $2",
                        &[&owner, &id],
                    ),
                ])
                .await?[1]
                > 0;
            edit.finish(deleted, now_ms).await?;
            Ok(deleted)
        })
    }

    async fn set_contact_groups(
        &self,
        owner: &str,
        contact: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let edit = ListEdit::begin(&mut c, owner).await?;
            edit.execute_in_order(&[
                (
                    "DELETE FROM contact_group_members WHERE owner = $1 AND contact = $2",
                    &[&owner, &contact],
                ),
                (
                    "INSERT INTO contact_group_members (owner, contact, group_id)
                     SELECT $1, $2::TEXT, id FROM contact_groups WHERE owner = $1 AND id = ANY($3)
                     ON CONFLICT DO NOTHING",
                    &[&owner, &contact, &ids],
                ),
            ])
            .await?;
            edit.finish(true, now_ms).await
        })
    }
}

impl PostgresStore {
    /// Runs `sql` with `params` and logs `address` as changed, in one transaction; how
    /// many rows `sql` changed.
    async fn write_logged(
        &self,
        address: &str,
        at_ms: i64,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let st = tx.prepare_cached(sql).await?;
            let (n, ()) =
                try_join(tx.execute(&st, params), log_change(&tx, address, at_ms)).await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}

#[async_trait]
impl PresenceData for PostgresStore {
    async fn set_manual(&self, address: &str, m: &ManualState) -> Result<(), DataError> {
        self.write_logged(
            address,
            m.set_at_ms,
            "INSERT INTO presence_manual (address, availability, note, until_ms, set_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (address) DO UPDATE SET availability = excluded.availability,
               note = excluded.note, until_ms = excluded.until_ms, set_at_ms = excluded.set_at_ms",
            &[
                &address,
                &m.availability,
                &m.note,
                &m.until_ms,
                &m.set_at_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn clear_manual(&self, address: &str, now_ms: i64) -> Result<bool, DataError> {
        let n = self
            .write_logged(
                address,
                now_ms,
                "DELETE FROM presence_manual WHERE address = $1",
                &[&address],
            )
            .await?;
        Ok(n > 0)
    }

    async fn add_calendar_entry(
        &self,
        address: &str,
        e: &CalendarEntry,
        now_ms: i64,
    ) -> Result<(), DataError> {
        self.write_logged(
            address,
            now_ms,
            concat!(
                "INSERT INTO calendar_entries (address, ",
                calendar_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[
                &address,
                &e.kind.as_str(),
                &e.from_ms,
                &e.to_ms,
                &e.subject,
                &e.location,
                &e.note,
            ],
        )
        .await?;
        Ok(())
    }

    async fn set_card(
        &self,
        address: &str,
        card: &ContactCard,
        now_ms: i64,
    ) -> Result<(), DataError> {
        // The fields given replace the stored ones; the others are kept.
        self.write_logged(
            address,
            now_ms,
            "INSERT INTO contact_cards (address, title, email, work_phone, personal_phone)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (address) DO UPDATE SET
               title = COALESCE(excluded.title, contact_cards.title),
               email = COALESCE(excluded.email, contact_cards.email),
               work_phone = COALESCE(excluded.work_phone, contact_cards.work_phone),
               personal_phone = COALESCE(excluded.personal_phone, contact_cards.personal_phone)",
            &[
                &address,
                &card.title,
                &card.email,
                &card.work_phone,
                &card.personal_phone,
            ],
        )
        .await?;
        Ok(())
    }

    async fn set_last_active(&self, address: &str, at_ms: i64) -> Result<(), DataError> {
        self.set_last_active_many(&[(address.to_owned(), at_ms)])
            .await
    }

    async fn set_last_active_many(&self, rows: &[(String, i64)]) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            // Never earlier than what is stored.
            let st = tx
                .prepare_cached(
                    "INSERT INTO presence_last_active (address, at_ms) VALUES ($1, $2)
                     ON CONFLICT (address) DO UPDATE
                       SET at_ms = GREATEST(presence_last_active.at_ms, excluded.at_ms)",
                )
                .await?;
            for chunk in rows.chunks(PIPELINE) {
                try_join_all(chunk.iter().map(|(address, at_ms)| {
                    tx.execute_raw(&st, [address as &(dyn ToSql + Sync), at_ms])
                }))
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn load(&self, address: &str, now_ms: i64) -> Result<StoredPresence, DataError> {
        on_connection!(self, |c| {
            let (manual, calendar, card, last_active) = try_join4(
                c.prepare_cached(
                    "SELECT availability, note, until_ms, set_at_ms
                       FROM presence_manual WHERE address = $1",
                ),
                c.prepare_cached(concat!(
                    "SELECT ",
                    calendar_columns!(),
                    " FROM calendar_entries WHERE address = $1 AND to_ms > $2 ORDER BY from_ms, id"
                )),
                c.prepare_cached(
                    "SELECT title, email, work_phone, personal_phone
                       FROM contact_cards WHERE address = $1",
                ),
                c.prepare_cached("SELECT at_ms FROM presence_last_active WHERE address = $1"),
            )
            .await?;
            let pool = c
                .prepare_cached(
                    "SELECT fe_id, devices FROM pool_presence WHERE address = $1 ORDER BY fe_id",
                )
                .await?;
            let ((manual, calendar, card, last_active), pool) = futures_util::future::try_join(
                try_join4(
                    c.query_opt(&manual, &[&address]),
                    c.query(&calendar, &[&address, &now_ms]),
                    c.query_opt(&card, &[&address]),
                    c.query_opt(&last_active, &[&address]),
                ),
                c.query(&pool, &[&address]),
            )
            .await?;
            let pool_devices = pool
                .iter()
                .map(|r| Ok((r.try_get::<_, i32>(0)? as u32, r.try_get(1)?)))
                .collect::<Result<Vec<(u32, String)>, tokio_postgres::Error>>()?;
            Ok(StoredPresence {
                manual: manual.as_ref().map(rows::manual).transpose()?,
                calendar: all(calendar, rows::calendar_entry)?,
                card: card
                    .as_ref()
                    .map(rows::card)
                    .transpose()?
                    .unwrap_or_default(),
                last_active_ms: last_active.map(|r| r.try_get(0)).transpose()?,
                pool_devices,
            })
        })
    }

    async fn latest_change(&self) -> Result<i64, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM presence_changes")
                .await?;
            Ok(c.query_one(&st, &[]).await?.try_get(0)?)
        })
    }

    async fn changes_since(&self, seq: i64) -> Result<(i64, Vec<String>), DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(
                    "SELECT seq, address FROM presence_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .await?;
            let page = c.query(&st, &[&seq, &CHANGES_PAGE]).await?;
            Ok(rows::changed_addresses(
                seq,
                page.iter().map(|r| -> Result<_, tokio_postgres::Error> {
                    Ok((r.try_get(0)?, r.try_get(1)?))
                }),
            )?)
        })
    }

    async fn prune(&self, before_ms: i64) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let (changes, calendar) = try_join(
                // The newest entry stays, so the sequence never goes back for a follower.
                c.prepare_cached(
                    "DELETE FROM presence_changes
                      WHERE at_ms < $1 AND seq < (SELECT MAX(seq) FROM presence_changes)",
                ),
                c.prepare_cached("DELETE FROM calendar_entries WHERE to_ms < $1"),
            )
            .await?;
            try_join(
                c.execute(&changes, &[&before_ms]),
                c.execute(&calendar, &[&before_ms]),
            )
            .await?;
            Ok(())
        })
    }
}
