//! The user directory: accounts, their credential hashes, enable/disable.

use std::collections::HashMap;

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{self, now_secs as now, user_columns};
use crate::StoreError;
use switchboard_core::{Address, Credentials, UserRecord};

/// Identity of the write-ahead log file: (size, mtime, mtime_nsec, inode).
type WalStamp = (u64, i64, i64, u64);

struct Cache {
    data_version: i64,
    /// `users_version` (bumped by triggers on every change to `users`) when last read.
    users_version: i64,
    /// The WAL file's identity when last checked.
    wal_stamp: Option<WalStamp>,
    checked_at: std::time::Instant,
    users: HashMap<Address, Option<UserRecord>>,
    domains: Option<Vec<String>>,
}

impl Cache {
    /// Whether nothing can have been committed since the cache was checked: the WAL is
    /// the same file, unchanged, and the half-second backstop has not passed.
    fn fresh(&self, stamp: Option<WalStamp>, now: std::time::Instant) -> bool {
        stamp.is_some()
            && stamp == self.wal_stamp
            && now.duration_since(self.checked_at) < std::time::Duration::from_millis(500)
    }
}

/// The user directory over one SQLite connection, with a lookup cache that is dropped
/// whenever any connection (the CLI's included) commits a change to the users table.
///
/// Lookups are asked on every request, from async workers: a fresh cache answers under
/// a read lock only, without the connection, so workers looking users up at the same
/// time neither wait for each other nor fall back to a blocking thread. Lock order:
/// the connection, then the cache; the cache is never held across an SQL statement.
pub struct UserDirectory {
    wal_path: Option<std::path::PathBuf>,
    conn: Mutex<Connection>,
    cache: RwLock<Cache>,
}

impl UserDirectory {
    pub(crate) fn new(conn: Connection, wal_path: Option<std::path::PathBuf>) -> Self {
        UserDirectory {
            wal_path,
            conn: Mutex::new(conn),
            cache: RwLock::new(Cache {
                data_version: -1,
                users_version: -1,
                wal_stamp: None,
                checked_at: std::time::Instant::now(),
                users: HashMap::new(),
                domains: None,
            }),
        }
    }

    /// Asking SQLite whether anything changed takes its shared lock (several fcntl calls,
    /// ~10 % of a REGISTER's CPU), so first one `stat` of the write-ahead log: every
    /// commit by any connection appends to it or rewrites it, changing its size or
    /// modification time.
    fn wal_stamp(&self) -> Option<WalStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.wal_path.as_ref()?).ok()?;
        Some((m.size(), m.mtime(), m.mtime_nsec(), m.ino()))
    }

    /// Drops the cache if the database changed since it was filled. `data_version` moves
    /// on every commit by another connection (SQLite's documented contract). Only when
    /// the WAL's identity changed (or half a second passed, as a backstop) is SQLite asked.
    fn revalidate(&self, conn: &Connection) -> Result<(), StoreError> {
        let stamp = self.wal_stamp();
        let now = std::time::Instant::now();
        let data_version = {
            let cache = self.cache.read();
            if cache.fresh(stamp, now) {
                return Ok(());
            }
            cache.data_version
        };
        let v: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        // Something was committed, maybe to another table (CDR, presence): the cache
        // goes only when the users table itself changed.
        let users = if v != data_version {
            Some(
                conn.prepare_cached("SELECT version FROM users_version WHERE id = 1")?
                    .query_row([], |r| r.get::<_, i64>(0))?,
            )
        } else {
            None
        };
        let mut cache = self.cache.write();
        cache.wal_stamp = stamp;
        cache.checked_at = now;
        cache.data_version = v;
        if let Some(users) = users {
            if users != cache.users_version {
                cache.users.clear();
                cache.domains = None;
                cache.users_version = users;
            }
        }
        Ok(())
    }

    fn invalidate(&self) {
        let mut c = self.cache.write();
        c.users.clear();
        c.domains = None;
    }

    /// Looks a user up (cached).
    pub fn find(&self, address: &Address) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.conn.lock();
        self.revalidate(&conn)?;
        if let Some(hit) = self.cache.read().users.get(address) {
            return Ok(hit.clone());
        }
        let user = conn
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = ?1 AND domain = ?2"
            ))?
            .query_row(params![address.user, address.domain], |r| rows::user(r))
            .optional()?;
        let mut cache = self.cache.write();
        if cache.users.len() > 200_000 {
            cache.users.clear();
        }
        cache.users.insert(address.clone(), user.clone());
        Ok(user)
    }

    /// Answers from the cache when it is fresh, under its read lock only; when it may be
    /// stale, revalidates first if the connection is free. `None` when it cannot answer
    /// at once (connection busy with a write on another thread, or not cached): the
    /// caller, an async worker, then asks on a blocking thread instead of waiting here.
    fn cached<T>(&self, read: impl Fn(&Cache) -> Option<T>) -> Option<T> {
        let stamp = self.wal_stamp();
        {
            let cache = self.cache.try_read()?;
            if cache.fresh(stamp, std::time::Instant::now()) {
                return read(&cache);
            }
        }
        let conn = self.conn.try_lock()?;
        self.revalidate(&conn).ok()?;
        drop(conn);
        read(&*self.cache.try_read()?)
    }

    /// [`UserDirectory::find`] when it can answer at once from the cache (see `cached`).
    pub fn find_cached(&self, address: &Address) -> Option<Option<UserRecord>> {
        self.cached(|c| c.users.get(address).cloned())
    }

    /// [`UserDirectory::has_domain`] when the domain list is cached (see `cached`).
    pub fn has_domain_cached(&self, domain: &str) -> Option<bool> {
        self.cached(|c| c.domains.as_ref().map(|d| d.iter().any(|x| x == domain)))
    }

    /// Every domain that has at least one user (cached).
    pub fn domains(&self) -> Result<Vec<String>, StoreError> {
        self.with_domains(|d| d.to_vec())
    }

    /// Whether some user has this (lower-case) domain; asked on every routed request, so
    /// it reads the cached list in place instead of copying it.
    pub fn has_domain(&self, domain: &str) -> Result<bool, StoreError> {
        self.with_domains(|d| d.iter().any(|x| x == domain))
    }

    fn with_domains<T>(&self, f: impl FnOnce(&[String]) -> T) -> Result<T, StoreError> {
        let conn = self.conn.lock();
        self.revalidate(&conn)?;
        if let Some(d) = self.cache.read().domains.as_deref() {
            return Ok(f(d));
        }
        let mut stmt = conn.prepare_cached("SELECT DISTINCT domain FROM users ORDER BY domain")?;
        let d = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        let out = f(&d);
        self.cache.write().domains = Some(d);
        Ok(out)
    }

    pub fn add(
        &self,
        address: &Address,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserRecord, StoreError> {
        let creds = Credentials::derive(address, password);
        let t = now();
        let r = self.conn.lock().execute(
            "INSERT INTO users (username, domain, display_name, ha1_md5, ha1_sha256, nt_hash, enabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)",
            params![address.user, address.domain, display_name, creds.ha1_md5, creds.ha1_sha256, creds.nt_hash, t],
        );
        self.invalidate();
        match r {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::UserExists(address.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        self.find(address)?
            .ok_or_else(|| StoreError::NoSuchUser(address.to_string()))
    }

    fn update(
        &self,
        address: &Address,
        sql: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .lock()
            .execute(sql, params![value, now(), address.user, address.domain])?;
        self.invalidate();
        if n == 0 {
            return Err(StoreError::NoSuchUser(address.to_string()));
        }
        Ok(())
    }

    pub fn set_password(&self, address: &Address, password: &str) -> Result<(), StoreError> {
        let c = Credentials::derive(address, password);
        let n = self.conn.lock().execute(
            "UPDATE users SET ha1_md5 = ?1, ha1_sha256 = ?2, nt_hash = ?3, updated_at = ?4 WHERE username = ?5 AND domain = ?6",
            params![c.ha1_md5, c.ha1_sha256, c.nt_hash, now(), address.user, address.domain],
        )?;
        self.invalidate();
        if n == 0 {
            return Err(StoreError::NoSuchUser(address.to_string()));
        }
        Ok(())
    }

    pub fn set_enabled(&self, address: &Address, enabled: bool) -> Result<(), StoreError> {
        self.update(
            address,
            "UPDATE users SET enabled = ?1, updated_at = ?2 WHERE username = ?3 AND domain = ?4",
            &(enabled as i64),
        )
    }

    pub fn remove(&self, address: &Address) -> Result<(), StoreError> {
        let n = self.conn.lock().execute(
            "DELETE FROM users WHERE username = ?1 AND domain = ?2",
            params![address.user, address.domain],
        )?;
        self.invalidate();
        if n == 0 {
            return Err(StoreError::NoSuchUser(address.to_string()));
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY domain, username"
        ))?;
        let users = stmt
            .query_map([], |r| rows::user(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(users)
    }

    /// Adds or updates many users in one transaction (imports, benchmarks).
    pub fn upsert_many(
        &self,
        users: &[(Address, String, Option<String>)],
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let t = now();
        let mut n = 0;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO users (username, domain, display_name, ha1_md5, ha1_sha256, nt_hash, enabled, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)
                 ON CONFLICT (username, domain) DO UPDATE SET
                   display_name = COALESCE(excluded.display_name, users.display_name),
                   ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256,
                   nt_hash = excluded.nt_hash, updated_at = excluded.updated_at",
            )?;
            for (a, pw, display) in users {
                let c = Credentials::derive(a, pw);
                n += stmt.execute(params![
                    a.user,
                    a.domain,
                    display,
                    c.ha1_md5,
                    c.ha1_sha256,
                    c.nt_hash,
                    t
                ])?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.invalidate();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn nt_hash_matches_ms_nlmp_vector() {
        // MS-NLMP §4.2.2.1.2: NTOWFv1("Password").
        let c = Credentials::derive(&addr("user@domain"), "Password");
        assert_eq!(c.nt_hash, "a4f49c406510bdcab6824ee7c30fd852");
    }

    #[test]
    fn no_plaintext_and_other_connections_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let a = crate::open(dir.path()).unwrap();
        let b = crate::open(dir.path()).unwrap();
        let alice = addr("sip:Alice@Example.com");
        assert_eq!(a.find(&alice).unwrap(), None);
        b.add(&alice, "s3cret-pw", Some("Alice")).unwrap();
        let found = a.find(&alice).unwrap().expect("seen through data_version");
        assert_eq!(found.address.to_string(), "alice@example.com");
        assert_eq!(a.domains().unwrap(), vec!["example.com".to_string()]);
        b.set_password(&alice, "new-pw").unwrap();
        assert_eq!(
            a.find(&alice).unwrap().unwrap().credentials,
            Credentials::derive(&alice, "new-pw")
        );
        b.set_enabled(&alice, false).unwrap();
        assert!(!a.find(&alice).unwrap().unwrap().enabled);
        assert!(matches!(
            b.add(&alice, "x", None),
            Err(StoreError::UserExists(_))
        ));
        b.remove(&alice).unwrap();
        assert_eq!(a.find(&alice).unwrap(), None);
        assert!(matches!(b.remove(&alice), Err(StoreError::NoSuchUser(_))));
        let raw = std::fs::read(dir.path().join("switchboard.db")).unwrap();
        let wal = std::fs::read(dir.path().join("switchboard.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(9).any(|w| w == b"s3cret-pw"));
        }
    }
}
