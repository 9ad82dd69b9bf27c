//! The user directory: accounts, their credential hashes, enable/disable.

use std::collections::HashMap;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{self, now_secs as now, user_columns};
use crate::StoreError;
use switchboard_core::{Address, Credentials, UserRecord};

struct Cache {
    data_version: i64,
    /// `users_version` (bumped by triggers on every change to `users`) when last read.
    users_version: i64,
    /// (size, mtime, mtime_nsec, inode) of the WAL file when last checked.
    wal_stamp: Option<(u64, i64, i64, u64)>,
    checked_at: std::time::Instant,
    users: HashMap<Address, Option<UserRecord>>,
    domains: Option<Vec<String>>,
}

/// The user directory over one SQLite connection, with a lookup cache that is dropped
/// whenever any connection (the CLI's included) commits a change to the users table.
pub struct UserDirectory {
    wal_path: Option<std::path::PathBuf>,
    conn: Mutex<Connection>,
    cache: Mutex<Cache>,
}

impl UserDirectory {
    pub(crate) fn new(conn: Connection, wal_path: Option<std::path::PathBuf>) -> Self {
        UserDirectory {
            wal_path,
            conn: Mutex::new(conn),
            cache: Mutex::new(Cache {
                data_version: -1,
                users_version: -1,
                wal_stamp: None,
                checked_at: std::time::Instant::now(),
                users: HashMap::new(),
                domains: None,
            }),
        }
    }

    /// Drops the cache if the database changed since it was filled. `data_version` moves
    /// on every commit by another connection (SQLite's documented contract).
    ///
    /// Asking SQLite takes its shared lock (several fcntl calls, ~10 % of a REGISTER's
    /// CPU), so first one `stat` of the write-ahead log: every commit by any connection
    /// appends to it or rewrites it, changing its size or modification time. Only when
    /// that identity changed (or half a second passed, as a backstop) is SQLite asked.
    fn revalidate(&self, conn: &Connection, cache: &mut Cache) -> Result<(), StoreError> {
        let stamp = self
            .wal_path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.size(), m.mtime(), m.mtime_nsec(), m.ino())
            });
        let now = std::time::Instant::now();
        if stamp.is_some()
            && stamp == cache.wal_stamp
            && now.duration_since(cache.checked_at) < std::time::Duration::from_millis(500)
        {
            return Ok(());
        }
        cache.wal_stamp = stamp;
        cache.checked_at = now;
        let v: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if v != cache.data_version {
            cache.data_version = v;
            // Something was committed, maybe to another table (CDR, presence): the cache
            // goes only when the users table itself changed.
            let users: i64 = conn
                .prepare_cached("SELECT version FROM users_version WHERE id = 1")?
                .query_row([], |r| r.get(0))?;
            if users != cache.users_version {
                cache.users.clear();
                cache.domains = None;
                cache.users_version = users;
            }
        }
        Ok(())
    }

    fn invalidate(&self) {
        let mut c = self.cache.lock();
        c.users.clear();
        c.domains = None;
    }

    /// Looks a user up (cached).
    pub fn find(&self, address: &Address) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut cache = self.cache.lock();
        self.revalidate(&conn, &mut cache)?;
        if let Some(hit) = cache.users.get(address) {
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
        if cache.users.len() > 200_000 {
            cache.users.clear();
        }
        cache.users.insert(address.clone(), user.clone());
        Ok(user)
    }

    /// [`UserDirectory::find`] when it can answer at once from the cache: `None` when
    /// the connection is busy (a write on another thread) or the user is not cached, so
    /// the caller never waits here (an async worker may call it).
    pub fn find_cached(&self, address: &Address) -> Option<Option<UserRecord>> {
        let conn = self.conn.try_lock()?;
        let mut cache = self.cache.try_lock()?;
        self.revalidate(&conn, &mut cache).ok()?;
        cache.users.get(address).cloned()
    }

    /// [`UserDirectory::has_domain`] when the domain list is cached; `None` otherwise
    /// (see [`UserDirectory::find_cached`]).
    pub fn has_domain_cached(&self, domain: &str) -> Option<bool> {
        let conn = self.conn.try_lock()?;
        let mut cache = self.cache.try_lock()?;
        self.revalidate(&conn, &mut cache).ok()?;
        cache
            .domains
            .as_ref()
            .map(|d| d.iter().any(|x| x == domain))
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
        let mut cache = self.cache.lock();
        self.revalidate(&conn, &mut cache)?;
        if cache.domains.is_none() {
            let mut stmt =
                conn.prepare_cached("SELECT DISTINCT domain FROM users ORDER BY domain")?;
            let d = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            cache.domains = Some(d);
        }
        Ok(f(cache.domains.as_deref().unwrap_or_default()))
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
