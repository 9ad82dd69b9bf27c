//! Numbered schema migrations for PostgreSQL. Append only: never edit a migration that
//! has shipped. Version N here makes the same tables, columns, keys and triggers as
//! SQLite's migration N (`crate::migrations`), so `schema_migrations` means the same on
//! both; the types are PostgreSQL's: BIGINT for millisecond times and counts, BYTEA for
//! bodies, BOOLEAN for flags, identity columns for generated ids, plpgsql for triggers.
//!
//! Text that is sorted or joined on is `COLLATE "C"`: SQLite compares text by its bytes,
//! and so must this backend, whatever the locale the database was created with (a
//! locale's collation would list `a_b@x` before `a-b@x`).

use tokio_postgres::Client;

use super::Failure;
use switchboard_core::DataError;

const MIGRATIONS: &[&str] = &[
    // 1: the user directory. The unique key leads with the domain, so the same index
    // answers `has_domain` and lists users by domain.
    r#"CREATE TABLE users (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        username      TEXT COLLATE "C" NOT NULL,
        domain        TEXT COLLATE "C" NOT NULL,
        display_name  TEXT,
        ha1_md5       TEXT NOT NULL,
        ha1_sha256    TEXT NOT NULL,
        nt_hash       TEXT NOT NULL,
        enabled       BOOLEAN NOT NULL DEFAULT TRUE,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        UNIQUE (domain, username)
    );"#,
    // 2: call detail records of IM sessions, and messages kept for offline users.
    r#"CREATE TABLE cdr_sessions (
        id              TEXT COLLATE "C" PRIMARY KEY,
        kind            TEXT NOT NULL,
        started_at_ms   BIGINT NOT NULL,
        ended_at_ms     BIGINT,
        end_reason      TEXT,
        initiator       TEXT NOT NULL,
        organiser       TEXT,
        escalated_from  TEXT COLLATE "C" REFERENCES cdr_sessions(id)
    );
    CREATE INDEX cdr_sessions_started ON cdr_sessions (started_at_ms);
    CREATE TABLE cdr_participants (
        session_id      TEXT COLLATE "C" NOT NULL REFERENCES cdr_sessions(id) ON DELETE CASCADE,
        address         TEXT COLLATE "C" NOT NULL,
        device          TEXT NOT NULL DEFAULT '',
        joined_at_ms    BIGINT NOT NULL,
        left_at_ms      BIGINT,
        messages        BIGINT NOT NULL DEFAULT 0,
        bytes           BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, address)
    );
    CREATE INDEX cdr_participants_address ON cdr_participants (address);
    CREATE TABLE offline_messages (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        recipient       TEXT NOT NULL,
        sender          TEXT NOT NULL,
        content_type    TEXT NOT NULL,
        body            BYTEA NOT NULL,
        received_at_ms  BIGINT NOT NULL,
        session_id      TEXT
    );
    CREATE INDEX offline_messages_recipient ON offline_messages (recipient, id);"#,
    // 3: presence: contact lists with privacy relationships, state set without a client
    // (manual, calendar), contact cards, and a change log the running servers follow.
    r#"CREATE TABLE contact_lists (
        owner           TEXT PRIMARY KEY,
        version         BIGINT NOT NULL
    );
    CREATE TABLE contact_groups (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner           TEXT NOT NULL,
        name            TEXT NOT NULL,
        UNIQUE (owner, name)
    );
    CREATE TABLE contacts (
        owner           TEXT NOT NULL,
        contact         TEXT COLLATE "C" NOT NULL,
        relationship    TEXT NOT NULL,
        added_at_ms     BIGINT NOT NULL,
        PRIMARY KEY (owner, contact)
    );
    CREATE INDEX contacts_contact ON contacts (contact);
    CREATE TABLE contact_group_members (
        owner           TEXT NOT NULL,
        contact         TEXT COLLATE "C" NOT NULL,
        group_id        BIGINT NOT NULL REFERENCES contact_groups(id) ON DELETE CASCADE,
        PRIMARY KEY (owner, contact, group_id),
        FOREIGN KEY (owner, contact) REFERENCES contacts(owner, contact) ON DELETE CASCADE
    );
    CREATE TABLE presence_manual (
        address         TEXT PRIMARY KEY,
        availability    TEXT NOT NULL,
        note            TEXT,
        until_ms        BIGINT,
        set_at_ms       BIGINT NOT NULL
    );
    CREATE TABLE calendar_entries (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        address         TEXT NOT NULL,
        kind            TEXT NOT NULL,
        from_ms         BIGINT NOT NULL,
        to_ms           BIGINT NOT NULL,
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
        at_ms           BIGINT NOT NULL
    );
    CREATE TABLE presence_changes (
        seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        address         TEXT NOT NULL,
        at_ms           BIGINT NOT NULL
    );"#,
    // 4: a change counter of the users table alone, bumped once per row written, as
    // SQLite's three triggers do.
    r#"CREATE TABLE users_version (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        version         BIGINT NOT NULL
    );
    INSERT INTO users_version (id, version) VALUES (1, 0);
    CREATE FUNCTION users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE users_version SET version = version + 1 WHERE id = 1;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
        FOR EACH ROW EXECUTE FUNCTION users_changed();"#,
    // 5: a relationship without a place on the list (a user blocked, or put in a
    // container, without being added as a contact: MS-PRES §3.7.4.1).
    "ALTER TABLE contacts ADD COLUMN listed BOOLEAN NOT NULL DEFAULT TRUE;",
    // 6: messages kept for one recipient from one sender are bounded too; this index
    // counts them (and the recipient's total) without reading the rows.
    "CREATE INDEX offline_messages_sender ON offline_messages (recipient, sender);",
    // 7: every session names the server run that started it (owner id and epoch), so a
    // restart closes only what its own earlier runs left open. Sessions from before are
    // the standalone server's, from run 0.
    r#"CREATE TABLE server_runs (
        epoch           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner           TEXT COLLATE "C" NOT NULL,
        started_at_ms   BIGINT NOT NULL
    );
    ALTER TABLE cdr_sessions ADD COLUMN owner TEXT COLLATE "C" NOT NULL DEFAULT 'standalone';
    ALTER TABLE cdr_sessions ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX cdr_sessions_open ON cdr_sessions (owner, epoch) WHERE ended_at_ms IS NULL;"#,
    // 8: every change to users is also notified (one notice per transaction: PostgreSQL
    // folds identical ones), so servers caching lookups drop them (directory_cache).
    r#"CREATE OR REPLACE FUNCTION users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE users_version SET version = version + 1 WHERE id = 1;
        PERFORM pg_notify('switchboard_users', '');
        RETURN NULL;
    END
    $$;"#,
    // 9: an Enterprise pool. Its members (one row per running front end: each start is
    // a new epoch, a server run of owner 'fe-N', so its CDR sessions are known by it),
    // the key pool-internal requests are authenticated with, and where every device is
    // connected. Registrations cascade from their member's (id, epoch): one DELETE
    // removes a dead front end's, and a front end reaped while it slept cannot insert
    // under its old epoch again. High-churn rows leave room for HOT updates.
    r#"CREATE TABLE pool_members (
        fe_id           INTEGER PRIMARY KEY,
        epoch           BIGINT NOT NULL UNIQUE,
        sip_addr        TEXT NOT NULL,
        joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        connections     BIGINT NOT NULL DEFAULT 0,
        registered      BIGINT NOT NULL DEFAULT 0,
        subscriptions   BIGINT NOT NULL DEFAULT 0,
        UNIQUE (fe_id, epoch)
    ) WITH (fillfactor = 50);
    CREATE TABLE pool_secret (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        secret          BYTEA NOT NULL
    );
    CREATE TABLE pool_bindings (
        aor             TEXT COLLATE "C" NOT NULL,
        fe_id           INTEGER NOT NULL,
        epoch           BIGINT NOT NULL,
        connection      BIGINT NOT NULL,
        contact         TEXT NOT NULL,
        expires_at      TIMESTAMPTZ NOT NULL,
        lync            BOOLEAN NOT NULL,
        FOREIGN KEY (fe_id, epoch) REFERENCES pool_members (fe_id, epoch) ON DELETE CASCADE
    ) WITH (fillfactor = 80);
    CREATE INDEX pool_bindings_aor ON pool_bindings (aor);
    CREATE INDEX pool_bindings_member ON pool_bindings (fe_id, epoch);"#,
    // 10: the devices each front end publishes for a user (JSON, the presence service's),
    // tied to the member like registrations. Every write also appends to
    // presence_changes, which every front end follows.
    r#"CREATE TABLE pool_presence (
        address         TEXT COLLATE "C" NOT NULL,
        fe_id           INTEGER NOT NULL,
        epoch           BIGINT NOT NULL,
        devices         TEXT NOT NULL,
        PRIMARY KEY (address, fe_id),
        FOREIGN KEY (fe_id, epoch) REFERENCES pool_members (fe_id, epoch) ON DELETE CASCADE
    ) WITH (fillfactor = 70);
    CREATE INDEX pool_presence_member ON pool_presence (fe_id, epoch);"#,
    // 11: every change to a registration in the pool notifies its address of record
    // (PostgreSQL folds identical notices of one transaction), so front ends caching
    // lookups drop them (bindings_cache). A trigger, not the writer, so that a reaped
    // member's registrations, gone by cascade, are notified too.
    r#"CREATE FUNCTION pool_bindings_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('switchboard_pool_bindings', OLD.aor);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('switchboard_pool_bindings', NEW.aor);
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER pool_bindings_changed AFTER INSERT OR UPDATE OR DELETE ON pool_bindings
        FOR EACH ROW EXECUTE FUNCTION pool_bindings_changed();"#,
    // 12: a notice of a user change names the user (`user@domain`), so caches drop that
    // user alone rather than every user (directory_cache): one change by an operator
    // must not send every front end's lookups to the database at once.
    r#"CREATE OR REPLACE FUNCTION users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE users_version SET version = version + 1 WHERE id = 1;
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('switchboard_users', OLD.username || '@' || OLD.domain);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('switchboard_users', NEW.username || '@' || NEW.domain);
        END IF;
        RETURN NULL;
    END
    $$;"#,
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock every migrating process takes first (one per database): the bytes
/// of "swbd" and "migr".
const MIGRATION_LOCK: i64 = 0x7377_6264_6d69_6772;

/// Brings the database to [`SCHEMA_VERSION`] in one transaction, under an advisory lock:
/// a second process starting at the same time waits, then finds nothing left to do.
/// Returns the schema version; [`DataError::SchemaTooNew`] when a newer build migrated
/// the database further than this one knows.
pub(super) async fn apply(client: &mut Client) -> Result<i64, Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version     BIGINT PRIMARY KEY,
            applied_at  BIGINT NOT NULL
        )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if current > SCHEMA_VERSION {
        return Err(DataError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        }
        .into());
    }
    for (version, sql) in (1_i64..).zip(MIGRATIONS).skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(SCHEMA_VERSION)
}

/// The schema version the database is at, without migrating it: 0 for a database never
/// migrated.
pub(super) async fn version(client: &Client) -> Result<i64, Failure> {
    let tracked: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !tracked {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?)
}
