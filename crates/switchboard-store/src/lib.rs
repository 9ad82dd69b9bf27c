//! # switchboard-store: the durable state of a Standard Edition server
//!
//! One SQLite database (`switchboard.db`) in the data directory, in WAL mode so the CLI
//! can change users while the server runs. Schema changes are numbered migrations
//! ([`migrations`]) applied at open.
//!
//! The user directory stores **no passwords**: only the Digest HA1 for MD5 and SHA-256
//! (RFC 8760; realm = the user's domain) and the NT hash (MD4 of UTF-16LE, MS-NLMP §3.3.1)
//! the NTLM sign-in of the Lync dialect needs.
//!
//! [`ImStore`] holds the IM service's call detail records (never message content) and
//! the messages kept for offline users, on a connection of its own.
//!
//! [`PresenceStore`] holds contact lists with privacy relationships, presence state set
//! without a client (manual, calendar), contact cards and the presence change log.
//!
//! [`UserDirectory`] caches lookups for the SIP hot path and notices other processes'
//! writes through SQLite's `PRAGMA data_version`, so a user added or a password changed
//! with the CLI is seen by the running server on its next request.
#![forbid(unsafe_code)]

mod address;
mod im;
mod migrations;
mod presence;
mod users;

pub use address::{Address, AddressError};
pub use im::{ImStore, OfflineMessage, ParticipantRecord, SessionFilter, SessionRecord};
pub use presence::{
    CalendarEntry, CalendarKind, ContactCard, ContactEntry, ContactList, ManualState,
    PresenceStore, Relationship, RelationshipError, StoredPresence,
};
pub use users::{Credentials, UserDirectory, UserRecord};

use std::path::Path;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("database schema version {found} is newer than this program knows ({known}); upgrade switchboard")]
    SchemaTooNew { found: i64, known: i64 },
}

/// Opens (creating if needed) the database in `data_dir`: the user directory.
pub fn open(data_dir: &Path) -> Result<UserDirectory, StoreError> {
    let conn = connect(data_dir)?;
    Ok(UserDirectory::new(
        conn,
        Some(data_dir.join("switchboard.db-wal")),
    ))
}

/// One connection to the database, migrated to the current schema.
pub(crate) fn connect(data_dir: &Path) -> Result<rusqlite::Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let path = data_dir.join("switchboard.db");
    let conn = rusqlite::Connection::open(&path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::apply(&conn)?;
    Ok(conn)
}
