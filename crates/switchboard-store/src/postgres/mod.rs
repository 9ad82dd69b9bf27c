//! The PostgreSQL backend of every data trait, for a pool of servers sharing one
//! database: [`PostgresStore`] holds a small pool of connections (deadpool) over
//! tokio-postgres and behaves as the SQLite backend does (the conformance suite holds
//! both to it).
//!
//! - **Connecting**: any libpq URL tokio-postgres reads, several hosts included
//!   (`postgres://a,b/db?target_session_attrs=read-write` finds the primary after a
//!   failover). A database that cannot be reached gives [`DataError::Unavailable`] within
//!   the connect timeout (the URL's `connect_timeout`, else 5 s), never a hang; so does
//!   any call the database does not answer within 15 s.
//! - **Migrations** ([`migrate`], and on [`PostgresStore::connect`]): numbered like
//!   SQLite's, so `schema_version` means the same on both; applied in one transaction
//!   under an advisory lock, so servers starting together migrate once.
//! - **User lookups and the pool's registrations cached, kept true by LISTEN/NOTIFY**
//!   (`directory_cache`, `bindings_cache`, one `listener` connection for both): what the
//!   CLI or another front end changed is seen once its notification arrives; while the
//!   listening connection is down nothing is cached and every lookup asks the database.
//! - **Failover**: a connection that failed in a way that leaves it unusable (lost,
//!   timed out, or now talking to a standby) is dropped from the pool, so the next call
//!   connects afresh, to the new primary.

mod bindings_cache;
mod directory;
mod directory_cache;
mod im;
mod listener;
mod migrations;
mod pool;
mod presence;
mod tls;

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use switchboard_core::DataError;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::rows::Columns;

pub use migrations::SCHEMA_VERSION;

/// How many connections one store holds at most.
const POOL_SIZE: usize = 16;
/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take, from a pooled connection to its answer.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// Takes a transaction-scoped advisory lock: `$1` a class (what is locked), `$2` the
/// name hashed (whose).
const XACT_LOCK: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

/// Every data trait over one PostgreSQL database, through a pool of connections.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// A pool front end's heartbeats and reaper, apart from the busy main pool (see
    /// `pool`); its two connections are opened only when used.
    control: Control,
    caches: std::sync::Arc<Caches>,
    /// Stops the caches' listener when the last clone is dropped.
    _listener: std::sync::Arc<tokio::sync::watch::Sender<()>>,
}

/// The lookups a store caches, emptied by the notifications of its listener.
#[derive(Default)]
struct Caches {
    users: directory_cache::DirectoryCache,
    bindings: bindings_cache::BindingsCache,
}

impl listener::Follower for Caches {
    fn listening(&self, up: bool) {
        self.users.listening(up);
        self.bindings.listening(up);
    }

    fn notified(&self, channel: &str, payload: &str) {
        match channel {
            directory_cache::CHANNEL => self.users.notified(payload),
            bindings_cache::CHANNEL => self.bindings.changed(payload),
            _ => {}
        }
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and migrates it to this build's schema; the
    /// caches start listening for changes.
    pub async fn connect(url: &str) -> Result<PostgresStore, DataError> {
        let (config, link) = config(url)?;
        let pool = pool_of(config.clone(), link.clone(), POOL_SIZE)?;
        let mut client = pool.get().await.map_err(Failure::from)?;
        migrations::apply(&mut client).await?;
        drop(client);
        let caches = std::sync::Arc::new(Caches::default());
        let follower: std::sync::Arc<dyn listener::Follower> = caches.clone();
        let listener = listener::start(
            config.clone(),
            link.clone(),
            &[directory_cache::CHANNEL, bindings_cache::CHANNEL],
            std::sync::Arc::downgrade(&follower),
        );
        Ok(PostgresStore {
            pool,
            control: Control(pool_of(config, link, 2)?),
            caches,
            _listener: std::sync::Arc::new(listener),
        })
    }

    /// A connection from the pool.
    async fn connection(&self) -> Result<Object, Failure> {
        Ok(self.pool.get().await?)
    }

    /// The connections of pool membership (see `pool`).
    fn control(&self) -> &Control {
        &self.control
    }
}

/// A small connection pool kept apart from the main one (see `pool`).
#[derive(Clone)]
struct Control(Pool);

impl Control {
    async fn connection(&self) -> Result<Object, Failure> {
        Ok(self.0.get().await?)
    }
}

/// Migrates the database at `url` to this build's schema (what `db migrate` runs);
/// returns the schema version it is at.
pub async fn migrate(url: &str) -> Result<i64, DataError> {
    let pool = pool(url, 1)?;
    let mut client = pool.get().await.map_err(Failure::from)?;
    Ok(migrations::apply(&mut client).await?)
}

/// The schema version the database at `url` is at (0 for a database never migrated),
/// without migrating it: what `db migrate` reports it was.
pub async fn schema_version(url: &str) -> Result<i64, DataError> {
    let pool = pool(url, 1)?;
    let client = pool.get().await.map_err(Failure::from)?;
    Ok(migrations::version(&client).await?)
}

/// A pool of at most `size` connections to `url` (see [`pool_of`]).
fn pool(url: &str, size: usize) -> Result<Pool, DataError> {
    let (config, link) = config(url)?;
    pool_of(config, link, size)
}

/// What `url` says, with our defaults where it is silent (the connect timeout and the
/// application name), and how to reach the server (TLS or not, see `tls`).
fn config(url: &str) -> Result<(tokio_postgres::Config, tls::Link), DataError> {
    let (url, link) = tls::read(url)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| DataError::Backend(format!("not a PostgreSQL URL: {e}")))?;
    let connect = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    config.connect_timeout(connect);
    if config.get_application_name().is_none() {
        config.application_name("switchboard");
    }
    Ok((config, link))
}

/// A pool of at most `size` connections, each checked out without a round trip (only
/// whether its socket is still open is asked).
fn pool_of(
    config: tokio_postgres::Config,
    link: tls::Link,
    size: usize,
) -> Result<Pool, DataError> {
    let connect = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    // The connect timeout holds per host tried, and the sign-in after it takes a moment
    // too: a dead first host must leave time for the next.
    let hosts = config.get_hosts().len().max(1) as u32;
    let create = connect * (hosts + 1);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match link {
        tls::Link::Plain => Manager::from_config(config, NoTls, manager_config),
        tls::Link::Tls(tls) => Manager::from_config(config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(create))
        .create_timeout(Some(create))
        .recycle_timeout(Some(connect))
        .build()
        .map_err(|e| DataError::Backend(format!("cannot build the connection pool: {e}")))
}

/// Runs `$body` on a pooled connection bound to `$c`, within `$deadline`, and answers
/// with a [`DataError`]. A connection the body failed on in a way that leaves it
/// unusable is taken out of the pool rather than handed to the next caller.
macro_rules! on_connection {
    ($store:expr, $deadline:expr, |$c:ident| $body:block) => {{
        // The store, or another set of connections with a `connection()` of its own.
        let store = $store;
        let deadline: std::time::Duration = $deadline;
        let answer: Result<_, $crate::postgres::Failure> = async {
            #[allow(unused_mut)]
            let mut $c = store.connection().await?;
            let answer: Result<_, $crate::postgres::Failure> =
                match tokio::time::timeout(deadline, async { $body }).await {
                    Ok(answer) => answer,
                    Err(_) => Err($crate::postgres::Failure::Deadline(deadline)),
                };
            if answer.as_ref().is_err_and(|f| f.spoils_connection()) {
                drop(deadpool_postgres::Object::take($c));
            }
            answer
        }
        .await;
        answer.map_err(switchboard_core::DataError::from)
    }};
    ($store:expr, |$c:ident| $body:block) => {
        on_connection!($store, $crate::postgres::CALL_DEADLINE, |$c| $body)
    };
}
use on_connection;

/// What went wrong inside this backend, before it is told as a [`DataError`].
#[derive(Debug)]
pub(crate) enum Failure {
    Pg(tokio_postgres::Error),
    Pool(PoolError),
    Data(DataError),
    Deadline(Duration),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<PoolError> for Failure {
    fn from(e: PoolError) -> Self {
        Failure::Pool(e)
    }
}

impl From<DataError> for Failure {
    fn from(e: DataError) -> Self {
        Failure::Data(e)
    }
}

impl Failure {
    /// Whether the connection this happened on must not be used again: it is lost, may
    /// still be busy with what timed out, or now serves a standby (a failover happened).
    fn spoils_connection(&self) -> bool {
        match self {
            Failure::Pg(e) => match e.code() {
                Some(code) => spoils_session(code),
                None => true,
            },
            Failure::Deadline(_) => true,
            Failure::Pool(_) | Failure::Data(_) => false,
        }
    }
}

impl From<Failure> for DataError {
    fn from(f: Failure) -> DataError {
        match f {
            Failure::Pg(e) => from_pg(&e),
            Failure::Pool(PoolError::Backend(e)) => from_pg(&e),
            Failure::Pool(e @ (PoolError::Timeout(_) | PoolError::Closed)) => {
                DataError::Unavailable(format!("no connection to PostgreSQL: {e}"))
            }
            Failure::Pool(e) => DataError::Backend(format!("connection pool: {e}")),
            Failure::Data(e) => e,
            Failure::Deadline(d) => {
                DataError::Unavailable(format!("PostgreSQL did not answer within {d:?}"))
            }
        }
    }
}

/// A tokio-postgres error as a [`DataError`]: what the server said by its SQLSTATE; a
/// connection that failed or timed out without a word is unavailable; anything else (a
/// type mismatch, a row count) is a bug, not transient.
fn from_pg(e: &tokio_postgres::Error) -> DataError {
    if let Some(db) = e.as_db_error() {
        let what = format!("PostgreSQL {}: {}", db.code().code(), db.message());
        return if transient(db.code()) {
            DataError::Unavailable(what)
        } else {
            DataError::Backend(what)
        };
    }
    let mut source = std::error::Error::source(e);
    let mut io = false;
    while let Some(s) = source {
        io |= s.is::<std::io::Error>();
        source = s.source();
    }
    let what = match std::error::Error::source(e) {
        Some(s) => format!("PostgreSQL: {e}: {s}"),
        None => format!("PostgreSQL: {e}"),
    };
    // "timeout waiting for server": the connect timeout, which tokio-postgres reports
    // without a cause.
    if e.is_closed() || io || e.to_string().starts_with("timeout") {
        DataError::Unavailable(what)
    } else {
        DataError::Backend(what)
    }
}

/// SQLSTATEs that say the database cannot answer now but may soon: the connection
/// (class 08), resources (53), shutdown or restart (57P01–57P03), a cancelled statement
/// (57014, `statement_timeout`), serialization failures and deadlocks (40001, 40P01), a
/// lock not granted in time (55P03), and a read-only transaction (25006: the server is
/// a standby now, after a failover).
fn transient(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08")
        || c.starts_with("53")
        || matches!(
            c,
            "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03" | "25006"
        )
}

/// SQLSTATEs after which the session itself is no use: lost, shut down, or a standby.
fn spoils_session(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "25006")
}

impl Columns for tokio_postgres::Row {
    type Error = tokio_postgres::Error;
    fn text(&self, i: usize) -> Result<String, Self::Error> {
        self.try_get(i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<i64, Self::Error> {
        self.try_get(i)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(i)
    }
    fn flag(&self, i: usize) -> Result<bool, Self::Error> {
        self.try_get(i)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, Self::Error> {
        self.try_get(i)
    }
    fn names(&self, i: usize) -> Result<Vec<String>, Self::Error> {
        self.try_get(i)
    }
}

/// Each row through `map`, as a `Vec`.
fn all<T>(
    rows: Vec<tokio_postgres::Row>,
    map: fn(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, Failure> {
    Ok(rows.iter().map(map).collect::<Result<_, _>>()?)
}

/// A count of rows as the traits report it.
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_pass_is_unavailable_and_what_spoils_a_session_is_marked() {
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(transient(&code), "{code:?}");
        }
        for code in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_PASSWORD,
        ] {
            assert!(!transient(&code), "{code:?}");
        }
        assert!(spoils_session(&SqlState::ADMIN_SHUTDOWN));
        assert!(spoils_session(&SqlState::READ_ONLY_SQL_TRANSACTION));
        assert!(!spoils_session(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!spoils_session(&SqlState::UNIQUE_VIOLATION));
    }

    #[test]
    fn a_bad_url_is_a_backend_error() {
        assert!(matches!(
            pool("postgres://127.0.0.1:notaport/db", 1),
            Err(DataError::Backend(_))
        ));
    }
}
