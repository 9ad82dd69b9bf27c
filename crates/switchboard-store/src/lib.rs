//! # switchboard-store: the durable state of a server
//!
//! Two backends of every data trait of switchboard-core, held to one behaviour by the
//! conformance suite (`tests/conformance.rs`):
//! - **SQLite** ([`SqliteStore`], the Standard Edition): one database (`switchboard.db`)
//!   in the data directory, in WAL mode so the CLI can change users while the server
//!   runs. Schema changes are numbered migrations ([`migrations`]) applied at open.
//! - **PostgreSQL** ([`PostgresStore`], for a pool of servers sharing one database):
//!   the same schema version by version ([`postgres`]), migrated at connect or by
//!   [`postgres::migrate`].
//!
//! **One opener for every caller** ([`data::open`]): a database URL picks the backend
//! (none or `sqlite:` for SQLite in the data directory, `postgres://…`/`postgresql://…`
//! for PostgreSQL) and every data trait comes back as one [`Data`], so a caller never
//! names a backend; [`data::migrate`] brings either schema up to date and reports the
//! versions. [`testing`] makes throwaway PostgreSQL databases for the tests of any crate.
//!
//! Why these libraries: **rusqlite** stays for SQLite, so the default edition keeps its
//! exact behaviour (the stores below, run on Tokio's blocking pool). **tokio-postgres**
//! speaks PostgreSQL natively async, pipelines the statements of one call into one round
//! trip, and reads libpq URLs with several hosts and `target_session_attrs=read-write`,
//! which finds the primary again after a failover. **deadpool-postgres** is a small,
//! well-kept pool over it, with a per-connection cache of prepared statements and
//! timeouts on waiting for and creating connections (a dead database is reported as
//! unavailable within seconds, never waited on). Rows are turned into domain values by
//! one set of functions shared by both backends (the private `rows` module).
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

pub mod data;
mod im;
mod migrations;
pub mod postgres;
mod presence;
mod rows;
mod sqlite;
pub mod testing;
mod users;

pub use data::{Backend, Data, Database, PoolData, SCHEMA_VERSION};
pub use im::ImStore;
pub use postgres::PostgresStore;
pub use presence::PresenceStore;
pub use sqlite::SqliteStore;
pub use users::UserDirectory;
// The domain types and data traits live in switchboard-core; re-exported for the
// store's callers.
pub use switchboard_core::{
    Address, AddressError, CalendarEntry, CalendarKind, CdrData, ContactCard, ContactData,
    ContactEntry, ContactList, Credentials, DataError, Directory, Keep, ManualState, OfflineData,
    OfflineMessage, ParticipantRecord, PresenceData, Relationship, RelationshipError, Run,
    SessionFilter, SessionRecord, StoredPresence, UserRecord,
};

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
    let path = data_dir.join("switchboard.db");
    make_private(data_dir, &path).map_err(|source| StoreError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every transaction here reads and then writes. A deferred one that read while another
    // process (the CLI, a test) committed cannot upgrade to a writer: SQLite answers
    // SQLITE_BUSY at once, without waiting on busy_timeout. IMMEDIATE takes the write lock
    // at BEGIN, where the wait applies.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::apply(&conn)?;
    Ok(conn)
}

/// The companions SQLite keeps beside the database, as readable as it is.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Makes the data directory (owner only, when we create it) and the database file owner
/// only before SQLite opens it: the file holds password-equivalent hashes. SQLite gives
/// the `-wal`/`-shm` files it creates the database file's mode, so creating that file
/// 0600 first covers them; files left readable by older versions are tightened here.
/// Per file, not by umask, which is process-wide.
#[cfg(unix)]
fn make_private(data_dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    // Only a missing file is opened here: POSIX record locks belong to the process, so
    // closing any descriptor of a database this process already has open would drop the
    // locks SQLite holds through its own. The existing files are changed by path below.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mut files = vec![db.to_path_buf()];
    for suffix in COMPANIONS {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        files.push(p.into());
    }
    for p in files {
        let mode = match std::fs::metadata(&p) {
            Ok(m) => m.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(data_dir: &Path, _db: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_and_its_directory_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let users = crate::open(&dir).unwrap();
        let a = crate::Address::parse("alice@example.com").unwrap();
        users.add(&a, "pw-alice", None).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("switchboard.db");
        assert_eq!(mode(&db), 0o600);
        // SQLite made these after the write, in WAL mode.
        for suffix in ["-wal", "-shm"] {
            let p = dir.join(format!("switchboard.db{suffix}"));
            assert_eq!(mode(&p), 0o600, "{suffix}");
        }
        // The other stores open the same file the same way.
        crate::ImStore::open(&dir).unwrap();
        crate::PresenceStore::open(&dir).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn a_readable_database_is_tightened_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let a = crate::Address::parse("alice@example.com").unwrap();
        crate::open(dir.path())
            .unwrap()
            .add(&a, "pw-alice", None)
            .unwrap();
        let files: Vec<_> = ["", "-wal", "-shm"]
            .iter()
            .map(|s| dir.path().join(format!("switchboard.db{s}")))
            .collect();
        for f in &files {
            if !f.exists() {
                std::fs::write(f, b"").unwrap();
            }
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // The data directory the operator made is left as it is.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let users = crate::open(dir.path()).unwrap();
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        assert_eq!(mode(dir.path()), 0o750);
        assert!(users.find(&a).unwrap().is_some(), "the data is intact");
    }

    /// A write transaction holds the write lock from BEGIN: another process's commit
    /// cannot slip between its read and its write and make it fail at once with
    /// "database is locked" (which the CLI adding a contact while the server wrote did).
    #[test]
    fn a_transaction_takes_the_write_lock_when_it_begins() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = super::connect(dir.path()).unwrap();
        let second = super::connect(dir.path()).unwrap();
        second
            .busy_timeout(std::time::Duration::from_millis(20))
            .unwrap();
        let tx = first.transaction().unwrap();
        let _: i64 = tx
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
            .unwrap();
        let meanwhile = second.execute(
            "INSERT INTO contact_groups (owner, name) VALUES ('a', 'b')",
            [],
        );
        assert!(
            matches!(&meanwhile, Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy),
            "the other writer waits for this transaction: {meanwhile:?}"
        );
        tx.execute(
            "INSERT INTO contact_groups (owner, name) VALUES ('a', 'c')",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
        second
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        second
            .execute(
                "INSERT INTO contact_groups (owner, name) VALUES ('a', 'b')",
                [],
            )
            .unwrap();
    }
}
