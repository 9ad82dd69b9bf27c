//! One way in for every caller (the CLI, the server, tests): [`open`] reads which
//! database to use from a URL and hands back every data trait of it as [`Data`], so the
//! caller never names a backend; [`migrate`] brings either backend's schema up to date.
//!
//! The accepted forms ([`Database::parse`]):
//! - nothing (no URL, or an empty one), `sqlite:` or `sqlite://`: SQLite, the database
//!   `switchboard.db` in the data directory, created with the directory if needed;
//! - `postgres://…` or `postgresql://…`: PostgreSQL, any libpq URL tokio-postgres reads
//!   (several hosts and `target_session_attrs=read-write` included);
//! - anything else is refused with an error naming these forms.
//!
//! A database whose schema is newer than this build knows is refused by both backends
//! with [`DataError::SchemaTooNew`], by [`open`] and by [`migrate`] alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchboard_core::pool::{MembershipData, PoolLocationData, PoolPresenceData};
use switchboard_core::{CdrData, ContactData, DataError, Directory, OfflineData, PresenceData};

use crate::postgres::{self, PostgresStore};
use crate::sqlite::blocking;
use crate::{migrations, SqliteStore, StoreError};

/// The schema version this build migrates either backend to: their migrations are
/// numbered alike, version by version.
pub const SCHEMA_VERSION: i64 = postgres::SCHEMA_VERSION;
const _: () = assert!(
    migrations::SCHEMA_VERSION == postgres::SCHEMA_VERSION,
    "the SQLite and PostgreSQL migrations must be numbered alike"
);

/// Which database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `DATA_DIR/switchboard.db`.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL URL, as given (it may hold a password: show [`Database::describe`]).
    Postgres { url: String },
}

/// What a URL may look like, for errors.
const ACCEPTED: &str = "postgres://… or postgresql://… for PostgreSQL, or sqlite: (or no \
                        database at all) for SQLite in the data directory";

impl Database {
    /// The database `database` names, with `data_dir` for SQLite; the URL's syntax is
    /// checked here, nothing is connected to.
    pub fn parse(database: Option<&str>, data_dir: &Path) -> Result<Database, DataError> {
        let url = database.map(str::trim).unwrap_or("");
        let sqlite = || Database::Sqlite {
            data_dir: data_dir.to_path_buf(),
        };
        let Some((scheme, rest)) = url.split_once(':') else {
            if url.is_empty() {
                return Ok(sqlite());
            }
            // No scheme: perhaps libpq's `host=… password=…` form; never echoed.
            return Err(DataError::Backend(format!(
                "the database must be a URL: {ACCEPTED}"
            )));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if rest.is_empty() || rest == "//" => Ok(sqlite()),
            "sqlite" => Err(DataError::Backend(format!(
                "sqlite: takes no path: the SQLite database is switchboard.db in the data \
                 directory (--data-dir), now {}",
                data_dir.display()
            ))),
            "postgres" | "postgresql" => {
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| DataError::Backend(format!("not a PostgreSQL URL: {e}")))?;
                Ok(Database::Postgres {
                    url: url.to_owned(),
                })
            }
            _ => Err(DataError::Backend(format!(
                "unsupported database URL '{scheme}:…': use {ACCEPTED}"
            ))),
        }
    }

    /// The database in words, without the password a URL may hold: "the data directory
    /// DIR" or "the PostgreSQL database NAME on HOST:PORT".
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { data_dir } => format!("the data directory {}", data_dir.display()),
            Database::Postgres { url } => match url.parse::<tokio_postgres::Config>() {
                Ok(c) => {
                    let ports = c.get_ports();
                    let mut hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                                format!("[{name}]")
                            }
                            tokio_postgres::config::Host::Tcp(name) => name.clone(),
                            #[cfg(unix)]
                            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect();
                    if hosts.is_empty() {
                        hosts = c.get_hostaddrs().iter().map(|a| a.to_string()).collect();
                    }
                    // One port for every host, or one each; 5432 when none is given.
                    let on: Vec<String> = hosts
                        .iter()
                        .enumerate()
                        .map(|(i, host)| {
                            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                            format!("{host}:{port}")
                        })
                        .collect();
                    let name = c.get_dbname().or(c.get_user()).unwrap_or("postgres");
                    format!("the PostgreSQL database {name} on {}", on.join(","))
                }
                Err(_) => "the PostgreSQL database".to_owned(),
            },
        }
    }

    /// Opens this database (creating and migrating it if needed).
    pub async fn open(&self) -> Result<Data, DataError> {
        match self {
            Database::Sqlite { data_dir } => {
                let dir = data_dir.clone();
                let store = blocking(move || SqliteStore::open(&dir)).await?;
                Ok(Data::of(Backend::Sqlite(store)))
            }
            Database::Postgres { url } => {
                let store = PostgresStore::connect(url).await?;
                Ok(Data::of(Backend::Postgres(store)))
            }
        }
    }

    /// Applies every migration this build knows; returns the schema version before and
    /// after (equal when there was nothing to do; 0 before for a new database).
    pub async fn migrate(&self) -> Result<(i64, i64), DataError> {
        match self {
            Database::Sqlite { data_dir } => {
                let dir = data_dir.clone();
                blocking(move || {
                    let before = sqlite_version(&dir)?;
                    let conn = crate::connect(&dir)?;
                    Ok((before, migrations::version(&conn)?))
                })
                .await
            }
            Database::Postgres { url } => {
                let before = postgres::schema_version(url).await?;
                Ok((before, postgres::migrate(url).await?))
            }
        }
    }
}

/// Opens the database `database` names (see [`Database::parse`]), SQLite in `data_dir`
/// when it names none.
pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Data, DataError> {
    Database::parse(database, data_dir)?.open().await
}

/// Migrates the database `database` names (see [`Database::parse`]) to this build's
/// schema; returns the schema version (before, after).
pub async fn migrate(database: Option<&str>, data_dir: &Path) -> Result<(i64, i64), DataError> {
    Database::parse(database, data_dir)?.migrate().await
}

/// The store behind a [`Data`], for a caller that needs what only one backend has.
#[derive(Clone)]
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Every data trait of one database.
#[derive(Clone)]
pub struct Data {
    pub directory: Arc<dyn Directory>,
    pub cdr: Arc<dyn CdrData>,
    pub offline: Arc<dyn OfflineData>,
    pub contacts: Arc<dyn ContactData>,
    pub presence: Arc<dyn PresenceData>,
    /// An Enterprise pool's shared state: on PostgreSQL only (`None` on SQLite, which
    /// serves one Standard Edition server).
    pub pool: Option<PoolData>,
    pub backend: Backend,
}

/// The data of an Enterprise pool (see [`switchboard_core::pool`]).
#[derive(Clone)]
pub struct PoolData {
    pub membership: Arc<dyn MembershipData>,
    pub location: Arc<dyn PoolLocationData>,
    pub presence: Arc<dyn PoolPresenceData>,
}

impl Data {
    fn of(backend: Backend) -> Data {
        match &backend {
            Backend::Sqlite(s) => Data::traits_of(Arc::new(s.clone()), None, backend),
            Backend::Postgres(s) => {
                let store = Arc::new(s.clone());
                let pool = PoolData {
                    membership: store.clone(),
                    location: store.clone(),
                    presence: store.clone(),
                };
                Data::traits_of(store, Some(pool), backend)
            }
        }
    }

    fn traits_of<S>(s: Arc<S>, pool: Option<PoolData>, backend: Backend) -> Data
    where
        S: Directory + CdrData + OfflineData + ContactData + PresenceData,
    {
        Data {
            directory: s.clone(),
            cdr: s.clone(),
            offline: s.clone(),
            contacts: s.clone(),
            presence: s,
            pool,
            backend,
        }
    }
}

/// The schema version of the SQLite database in `data_dir`, without migrating it: 0
/// when there is none yet.
fn sqlite_version(data_dir: &Path) -> Result<i64, StoreError> {
    let path = data_dir.join("switchboard.db");
    if !path.exists() {
        return Ok(0);
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrations::version(&conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: Option<&str>) -> Result<Database, DataError> {
        Database::parse(url, Path::new("/data"))
    }

    #[test]
    fn every_accepted_form_and_a_clear_refusal_of_the_rest() {
        let sqlite = Database::Sqlite {
            data_dir: PathBuf::from("/data"),
        };
        for url in [
            None,
            Some(""),
            Some("  "),
            Some("sqlite:"),
            Some("SQLite://"),
        ] {
            assert_eq!(parse(url), Ok(sqlite.clone()), "{url:?}");
        }
        for url in [
            "postgres://u@db.example/sb",
            "postgresql://u:secret@a:5432,b:5433/sb?target_session_attrs=read-write",
        ] {
            assert_eq!(parse(Some(url)), Ok(Database::Postgres { url: url.into() }));
        }
        for (url, says) in [
            ("mysql://root:secret@h/db", "'mysql:…'"),
            ("host=h password=secret", "must be a URL"),
            ("sqlite:/var/lib/sb.db", "takes no path"),
            ("postgres://h:notaport/db", "not a PostgreSQL URL"),
        ] {
            let e = parse(Some(url)).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
            if !url.starts_with("sqlite") && !url.starts_with("postgres") {
                assert!(e.contains("postgres://") && e.contains("sqlite:"), "{e}");
            }
        }
    }

    #[test]
    fn a_description_keeps_the_password_out() {
        let d = parse(Some("postgres://sb:secret@a,b:6000/switchboard")).unwrap();
        assert_eq!(
            d.describe(),
            "the PostgreSQL database switchboard on a:5432,b:6000"
        );
        let d = parse(Some("postgresql://sb:secret@a:1,b:2/x")).unwrap();
        assert_eq!(d.describe(), "the PostgreSQL database x on a:1,b:2");
        assert_eq!(parse(None).unwrap().describe(), "the data directory /data");
    }

    #[tokio::test]
    async fn sqlite_migrates_from_an_empty_directory_and_reports_versions() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new");
        let known = SCHEMA_VERSION;
        assert_eq!(migrate(None, &dir).await, Ok((0, known)));
        assert_eq!(migrate(Some("sqlite:"), &dir).await, Ok((known, known)));
        let data = open(None, &dir).await.unwrap();
        assert!(matches!(data.backend, Backend::Sqlite(_)));
        let a = crate::Address::parse("alice@example.com").unwrap();
        data.directory.add(&a, "pw", None).await.unwrap();
        // What one store wrote, another opened the same way reads.
        let again = open(Some("sqlite://"), &dir).await.unwrap();
        assert!(again.directory.find(&a).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sqlite_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let known = SCHEMA_VERSION;
        migrate(None, dir.path()).await.unwrap();
        rusqlite::Connection::open(dir.path().join("switchboard.db"))
            .unwrap()
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                [known + 1],
            )
            .unwrap();
        let too_new = DataError::SchemaTooNew {
            found: known + 1,
            known,
        };
        assert_eq!(open(None, dir.path()).await.err(), Some(too_new.clone()));
        assert_eq!(migrate(None, dir.path()).await, Err(too_new));
    }
}
