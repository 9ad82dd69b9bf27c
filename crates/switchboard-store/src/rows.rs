//! What the SQLite and PostgreSQL backends share, written once so they cannot drift
//! apart: the columns each query reads, turning a row into a domain value, and the
//! decisions taken on what was read (which mailbox cap a message hits, which addresses a
//! page of the change log names).

use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_core::{
    Address, CalendarEntry, CalendarKind, ContactCard, ContactEntry, Credentials, Keep,
    ManualState, OfflineMessage, ParticipantRecord, Relationship, SessionRecord, UserRecord,
};

/// The columns [`user`] reads, in its order.
macro_rules! user_columns {
    () => {
        "username, domain, display_name, ha1_md5, ha1_sha256, nt_hash, enabled, created_at, updated_at"
    };
}
/// The columns [`session`] reads, in its order.
macro_rules! session_columns {
    () => {
        "id, kind, started_at_ms, ended_at_ms, end_reason, initiator, organiser, escalated_from"
    };
}
/// The columns [`participant`] reads, in its order.
macro_rules! participant_columns {
    () => {
        "address, device, joined_at_ms, left_at_ms, messages, bytes"
    };
}
/// The columns [`offline_message`] reads, in its order.
macro_rules! offline_columns {
    () => {
        "id, recipient, sender, content_type, body, received_at_ms, session_id"
    };
}
/// The columns [`calendar_entry`] reads, in its order.
macro_rules! calendar_columns {
    () => {
        "kind, from_ms, to_ms, subject, location, note"
    };
}
pub(crate) use {
    calendar_columns, offline_columns, participant_columns, session_columns, user_columns,
};

/// How many change-log rows one `changes_since` reads at most.
pub(crate) const CHANGES_PAGE: i64 = 10_000;

/// One row of a query, read by column index, whichever backend produced it.
pub(crate) trait Columns {
    type Error;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn flag(&self, i: usize) -> Result<bool, Self::Error>;
    fn blob(&self, i: usize) -> Result<Vec<u8>, Self::Error>;
    /// A list of names (a contact's groups): an array in PostgreSQL, names joined by
    /// U+001F (or NULL for none) in SQLite.
    fn names(&self, i: usize) -> Result<Vec<String>, Self::Error>;
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn flag(&self, i: usize) -> rusqlite::Result<bool> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
    fn blob(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(i)
    }
    fn names(&self, i: usize) -> rusqlite::Result<Vec<String>> {
        Ok(self
            .get::<_, Option<String>>(i)?
            .map(|g| g.split('\u{1f}').map(str::to_owned).collect())
            .unwrap_or_default())
    }
}

/// Seconds since the Unix epoch: the users table's `created_at`/`updated_at`.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A row of [`user_columns`].
pub(crate) fn user<R: Columns>(r: &R) -> Result<UserRecord, R::Error> {
    Ok(UserRecord {
        address: Address {
            user: r.text(0)?,
            domain: r.text(1)?,
        },
        display_name: r.opt_text(2)?,
        credentials: Credentials {
            ha1_md5: r.text(3)?,
            ha1_sha256: r.text(4)?,
            nt_hash: r.text(5)?,
        },
        enabled: r.flag(6)?,
        created_at: r.int(7)?,
        updated_at: r.int(8)?,
    })
}

/// A row of [`session_columns`].
pub(crate) fn session<R: Columns>(r: &R) -> Result<SessionRecord, R::Error> {
    Ok(SessionRecord {
        id: r.text(0)?,
        kind: r.text(1)?,
        started_at_ms: r.int(2)?,
        ended_at_ms: r.opt_int(3)?,
        end_reason: r.opt_text(4)?,
        initiator: r.text(5)?,
        organiser: r.opt_text(6)?,
        escalated_from: r.opt_text(7)?,
    })
}

/// A row of [`participant_columns`].
pub(crate) fn participant<R: Columns>(r: &R) -> Result<ParticipantRecord, R::Error> {
    Ok(ParticipantRecord {
        address: r.text(0)?,
        device: r.text(1)?,
        joined_at_ms: r.int(2)?,
        left_at_ms: r.opt_int(3)?,
        messages: r.int(4)?,
        bytes: r.int(5)?,
    })
}

/// A row of [`offline_columns`].
pub(crate) fn offline_message<R: Columns>(r: &R) -> Result<OfflineMessage, R::Error> {
    Ok(OfflineMessage {
        id: r.int(0)?,
        recipient: r.text(1)?,
        sender: r.text(2)?,
        content_type: r.text(3)?,
        body: r.blob(4)?,
        received_at_ms: r.int(5)?,
        session_id: r.opt_text(6)?,
    })
}

/// A row of `availability, note, until_ms, set_at_ms`.
pub(crate) fn manual<R: Columns>(r: &R) -> Result<ManualState, R::Error> {
    Ok(ManualState {
        availability: r.text(0)?,
        note: r.opt_text(1)?,
        until_ms: r.opt_int(2)?,
        set_at_ms: r.int(3)?,
    })
}

/// A row of [`calendar_columns`].
pub(crate) fn calendar_entry<R: Columns>(r: &R) -> Result<CalendarEntry, R::Error> {
    Ok(CalendarEntry {
        kind: if r.text(0)? == CalendarKind::OutOfOffice.as_str() {
            CalendarKind::OutOfOffice
        } else {
            CalendarKind::Meeting
        },
        from_ms: r.int(1)?,
        to_ms: r.int(2)?,
        subject: r.opt_text(3)?,
        location: r.opt_text(4)?,
        note: r.opt_text(5)?,
    })
}

/// A row of `title, email, work_phone, personal_phone`.
pub(crate) fn card<R: Columns>(r: &R) -> Result<ContactCard, R::Error> {
    Ok(ContactCard {
        title: r.opt_text(0)?,
        email: r.opt_text(1)?,
        work_phone: r.opt_text(2)?,
        personal_phone: r.opt_text(3)?,
    })
}

/// A row of `contact, relationship, added_at_ms, <group names>, listed`. A relationship
/// this build does not know reads as colleagues (the default inside one organisation).
pub(crate) fn contact_entry<R: Columns>(r: &R) -> Result<ContactEntry, R::Error> {
    Ok(ContactEntry {
        contact: r.text(0)?,
        relationship: r.text(1)?.parse().unwrap_or(Relationship::Colleagues),
        added_at_ms: r.int(2)?,
        groups: r.names(3)?,
        listed: r.flag(4)?,
    })
}

/// The relationship `add_contact` writes: the one given, else the one the entry has,
/// else `default` for a new entry.
pub(crate) fn chosen_relationship(
    given: Option<Relationship>,
    existing: Option<&str>,
    default: Relationship,
) -> Relationship {
    given
        .or_else(|| existing.and_then(|r| r.parse().ok()))
        .unwrap_or(default)
}

/// Whether a message may be kept, given how many the recipient holds from its sender
/// and in all. The per-sender cap is checked first: one sender cannot fill a mailbox
/// for everyone, and is told so.
pub(crate) fn keep(
    from_sender: i64,
    waiting: i64,
    max_per_user: usize,
    max_per_sender: usize,
) -> Keep {
    if from_sender as usize >= max_per_sender {
        Keep::SenderFull
    } else if waiting as usize >= max_per_user {
        Keep::MailboxFull
    } else {
        Keep::Kept
    }
}

/// A page of the change log, `(seq, address)` in order, as `changes_since` reports it:
/// the last sequence number read (`after` when none) and each address once, in the order
/// it first changed.
pub(crate) fn changed_addresses<E>(
    after: i64,
    rows: impl IntoIterator<Item = Result<(i64, String), E>>,
) -> Result<(i64, Vec<String>), E> {
    let mut last = after;
    let mut addresses: Vec<String> = Vec::new();
    for row in rows {
        let (seq, address) = row?;
        last = seq;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    Ok((last, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_cap_is_checked_before_the_mailbox_cap() {
        assert_eq!(keep(0, 0, 3, 2), Keep::Kept);
        assert_eq!(keep(2, 2, 3, 2), Keep::SenderFull);
        assert_eq!(keep(2, 3, 3, 2), Keep::SenderFull);
        assert_eq!(keep(1, 3, 3, 2), Keep::MailboxFull);
    }

    #[test]
    fn a_change_log_page_names_each_address_once_in_first_order() {
        let rows = [(5, "b"), (6, "a"), (7, "b")].map(|(s, a)| Ok::<_, ()>((s, a.to_owned())));
        assert_eq!(
            changed_addresses(4, rows),
            Ok((7, vec!["b".to_owned(), "a".to_owned()]))
        );
        assert_eq!(changed_addresses::<()>(9, []), Ok((9, vec![])));
    }
}
