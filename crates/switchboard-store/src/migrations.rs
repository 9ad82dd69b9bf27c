//! Numbered schema migrations. Append only: never edit a migration that has shipped.

use rusqlite::Connection;

use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the user directory.
    "CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        username      TEXT NOT NULL,
        domain        TEXT NOT NULL,
        display_name  TEXT,
        ha1_md5       TEXT NOT NULL,
        ha1_sha256    TEXT NOT NULL,
        nt_hash       TEXT NOT NULL,
        enabled       INTEGER NOT NULL DEFAULT 1,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        UNIQUE (username, domain)
    );",
    // 2: call detail records of IM sessions, and messages kept for offline users.
    "CREATE TABLE cdr_sessions (
        id              TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,          -- 'two-party' | 'conference'
        started_at_ms   INTEGER NOT NULL,
        ended_at_ms     INTEGER,
        end_reason      TEXT,                   -- 'bye' | 'timeout' | 'server restart' | 'error' | ...
        initiator       TEXT NOT NULL,
        organiser       TEXT,
        escalated_from  TEXT REFERENCES cdr_sessions(id)
    );
    CREATE INDEX cdr_sessions_started ON cdr_sessions (started_at_ms);
    CREATE TABLE cdr_participants (
        session_id      TEXT NOT NULL REFERENCES cdr_sessions(id) ON DELETE CASCADE,
        address         TEXT NOT NULL,
        device          TEXT NOT NULL DEFAULT '',
        joined_at_ms    INTEGER NOT NULL,
        left_at_ms      INTEGER,
        messages        INTEGER NOT NULL DEFAULT 0,
        bytes           INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, address)
    );
    CREATE INDEX cdr_participants_address ON cdr_participants (address);
    CREATE TABLE offline_messages (
        id              INTEGER PRIMARY KEY,
        recipient       TEXT NOT NULL,
        sender          TEXT NOT NULL,
        content_type    TEXT NOT NULL,
        body            BLOB NOT NULL,
        received_at_ms  INTEGER NOT NULL,
        session_id      TEXT
    );
    CREATE INDEX offline_messages_recipient ON offline_messages (recipient, id);",
    // 3: presence: contact lists with privacy relationships, state set without a client
    // (manual, calendar), contact cards, and a change log the running server follows.
    "CREATE TABLE contact_lists (
        owner           TEXT PRIMARY KEY,
        version         INTEGER NOT NULL
    );
    CREATE TABLE contact_groups (
        id              INTEGER PRIMARY KEY,
        owner           TEXT NOT NULL,
        name            TEXT NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE contacts (
        owner           TEXT NOT NULL,
        contact         TEXT NOT NULL,
        relationship    TEXT NOT NULL,          -- blocked | external | colleagues | workgroup | friends
        added_at_ms     INTEGER NOT NULL,
        PRIMARY KEY (owner, contact)
    );
    CREATE INDEX contacts_contact ON contacts (contact);
    CREATE TABLE contact_group_members (
        owner           TEXT NOT NULL,
        contact         TEXT NOT NULL,
        group_id        INTEGER NOT NULL REFERENCES contact_groups(id) ON DELETE CASCADE,
        PRIMARY KEY (owner, contact, group_id),
        FOREIGN KEY (owner, contact) REFERENCES contacts(owner, contact) ON DELETE CASCADE
    );
    CREATE TABLE presence_manual (
        address         TEXT PRIMARY KEY,
        availability    TEXT NOT NULL,
        note            TEXT,
        until_ms        INTEGER,
        set_at_ms       INTEGER NOT NULL
    );
    CREATE TABLE calendar_entries (
        id              INTEGER PRIMARY KEY,
        address         TEXT NOT NULL,
        kind            TEXT NOT NULL,          -- meeting | out-of-office
        from_ms         INTEGER NOT NULL,
        to_ms           INTEGER NOT NULL,
        subject         TEXT,
        location        TEXT,
        note            TEXT
    );
    CREATE INDEX calendar_entries_address ON calendar_entries (address, to_ms);
    CREATE TABLE contact_cards (
        address         TEXT PRIMARY KEY,
        title           TEXT,
        email           TEXT,
        work_phone      TEXT,
        personal_phone  TEXT
    );
    CREATE TABLE presence_last_active (
        address         TEXT PRIMARY KEY,
        at_ms           INTEGER NOT NULL
    );
    CREATE TABLE presence_changes (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        address         TEXT NOT NULL,
        at_ms           INTEGER NOT NULL
    );",
    // 4: a change counter of the users table alone, so the user cache survives the
    // writes other services make to other tables (CDR, presence).
    "CREATE TABLE users_version (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        version         INTEGER NOT NULL
    );
    INSERT INTO users_version (id, version) VALUES (1, 0);
    CREATE TRIGGER users_changed_insert AFTER INSERT ON users
        BEGIN UPDATE users_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER users_changed_update AFTER UPDATE ON users
        BEGIN UPDATE users_version SET version = version + 1 WHERE id = 1; END;
    CREATE TRIGGER users_changed_delete AFTER DELETE ON users
        BEGIN UPDATE users_version SET version = version + 1 WHERE id = 1; END;",
    // 5: a relationship without a place on the list (a user blocked, or put in a
    // container, without being added as a contact: MS-PRES §3.7.4.1).
    "ALTER TABLE contacts ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;",
    // 6: messages kept for one recipient from one sender are bounded too; this index
    // counts them (and the recipient's total) from the index alone, on every message
    // kept, without reading the rows.
    "CREATE INDEX offline_messages_sender ON offline_messages (recipient, sender);",
    // 7: every session names the server run that started it (owner id and epoch), so a
    // restart closes only what its own earlier runs left open. Sessions from before are
    // the standalone server's, from run 0.
    "CREATE TABLE server_runs (
        epoch           INTEGER PRIMARY KEY AUTOINCREMENT,
        owner           TEXT NOT NULL,
        started_at_ms   INTEGER NOT NULL
    );
    ALTER TABLE cdr_sessions ADD COLUMN owner TEXT NOT NULL DEFAULT 'standalone';
    ALTER TABLE cdr_sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX cdr_sessions_open ON cdr_sessions (owner, epoch) WHERE ended_at_ms IS NULL;",
    // 8: PostgreSQL notifies changes to users (its servers cache lookups); here every
    // connection sees a commit through the WAL and users_version, so nothing changes.
    // Numbered all the same: a schema version means the same on both backends.
    "SELECT 1;",
    // 9: an Enterprise pool's membership and shared registrations live in PostgreSQL
    // only (a Standard Edition has no pool); numbered all the same.
    "SELECT 1;",
    // 10: the pool's shared presence devices: PostgreSQL only, as 9.
    "SELECT 1;",
    // 11: PostgreSQL notifies changes to the pool's registrations: PostgreSQL only, as 9.
    "SELECT 1;",
    // 12: PostgreSQL's notices of user changes name the user: nothing to do here, as 8.
    "SELECT 1;",
];

/// The schema version this build migrates to.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version `conn`'s database is at, without migrating it: 0 for a database
/// never migrated.
pub(crate) fn version(conn: &Connection) -> Result<i64, StoreError> {
    let tracked: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !tracked {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

pub(crate) fn apply(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        // Each migration and its bookkeeping row commit together; a concurrent opener
        // waits on the write lock and then sees the migration done.
        let tx = conn.unchecked_transaction()?;
        let done: i64 = tx.query_row(
            "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
            [i as i64 + 1],
            |r| r.get(0),
        )?;
        if done == 0 {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
                [i as i64 + 1],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}
