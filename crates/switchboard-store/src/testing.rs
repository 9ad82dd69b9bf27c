//! Test support shared by every crate that tests against PostgreSQL (this crate's
//! conformance suite, the binary's CLI tests): a fresh database per test on the server
//! `SWITCHBOARD_TEST_PG_URL` names (`postgres://postgres@127.0.0.1:PORT/postgres`, as
//! `scripts/pg-cluster.sh start DIR` prints), dropped with the test. Not for production
//! use: it panics on any failure, as a test should.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable naming the test server.
pub const PG_URL_VAR: &str = "SWITCHBOARD_TEST_PG_URL";

/// The test server's URL, when one is given.
pub fn pg_server() -> Option<String> {
    std::env::var(PG_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// A database of its own for one test, on the test server, dropped with it.
pub struct PgDatabase {
    /// The server's URL, as given.
    server: String,
    /// The database's name.
    pub name: String,
    /// The URL of this database.
    pub url: String,
}

impl PgDatabase {
    /// A fresh empty database on the test server; panics when none is given.
    pub async fn create() -> PgDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = pg_server().unwrap_or_else(|| {
            panic!("{PG_URL_VAR}=postgres://... is needed (scripts/pg-cluster.sh start DIR prints one)")
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "sb_test_{}_{}_{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin(&server).await;
        // Sorted the ICU way, which differs from bytes (`a_b` before `a-b`): the schema
        // must sort by bytes as SQLite does. A server without ICU gets its default.
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        );
        if admin.batch_execute(&icu).await.is_err() {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
        let url = with_database(&server, &name);
        PgDatabase { server, name, url }
    }

    /// [`PgDatabase::create`] for a synchronous test, on a runtime of its own.
    pub fn create_blocking() -> PgDatabase {
        on_own_runtime(PgDatabase::create()).expect("cannot create a test database")
    }

    /// A client of this database of the test's own, outside any store.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }

    /// A failover in miniature: makes the database take no writes (as a standby does,
    /// SQLSTATE 25006) or take them again, and ends every other session on it, so the
    /// next ones find it so.
    pub async fn set_read_only(&self, on: bool) {
        let admin = self.client().await;
        // This session writes whatever the database's default is now (a statement of
        // its own: several in one batch share one transaction, begun read-only).
        admin
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .unwrap();
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = {on}",
                self.name
            ))
            .await
            .unwrap();
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
    }

    /// Runs `sql` (one or more statements) on this database, from a synchronous test.
    pub fn execute_blocking(&self, sql: &str) {
        let (url, statements) = (self.url.clone(), sql.to_owned());
        let done =
            on_own_runtime(async move { admin(&url).await.batch_execute(&statements).await });
        if !matches!(done, Ok(Ok(()))) {
            panic!("cannot run {sql:?} on the test database: {done:?}");
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = on_own_runtime(async move {
            admin(&server)
                .await
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
        });
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Runs `f` to its end on a runtime of its own, on a thread of its own (so it works
/// inside a test's runtime and outside any); `Err` when it panicked.
fn on_own_runtime<F>(f: F) -> std::thread::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
}

/// A plain connection to `url`, its connection driven on the current runtime.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    tokio::spawn(connection);
    client
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_at = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_at..].find('/') {
        Some(i) => &base[..authority_at + i],
        None => base,
    };
    format!("{root}/{name}{query}")
}

/// Asks `f` until it holds, at most 5 s; panics naming `what` otherwise. For what another
/// connection wrote: on SQLite it is seen at the next read, on PostgreSQL a cached lookup
/// sees it once the change's notification arrives (a moment later).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("never: {what}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "t"),
            "postgres://u@h:1/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "t"), "postgres://u@h:1/t");
    }
}
