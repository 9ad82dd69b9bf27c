//! The user directory in PostgreSQL. `find` and `has_domain` run on every SIP request,
//! so their answers are cached (`directory_cache`: kept true by LISTEN/NOTIFY, off
//! while it cannot listen); a miss is one round trip (a statement prepared once per
//! connection). A user the CLI or another server added, disabled or removed is seen once
//! the change's notification arrives; one this store changed, at once.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use switchboard_core::{Address, Credentials, DataError, Directory, UserRecord};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{all, on_connection, PostgresStore, CALL_DEADLINE};
use crate::rows::{self, now_secs, user_columns};

const FIND: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE username = $1 AND domain = $2"
);

/// A new user: `$1` user, `$2` domain, `$3` display name, `$4`–`$6` the hashes, `$7` now.
macro_rules! insert_user {
    () => {
        "INSERT INTO users (username, domain, display_name, ha1_md5, ha1_sha256, nt_hash, enabled, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7)"
    };
}

/// How many rows of a bulk write go to the server before their answers are awaited.
pub(super) const PIPELINE: usize = 256;

#[async_trait]
impl Directory for PostgresStore {
    async fn find(&self, address: &Address) -> Result<Option<UserRecord>, DataError> {
        let ticket = match self.caches.users.user(address) {
            Ok(hit) => return Ok(hit),
            Err(ticket) => ticket,
        };
        let user = on_connection!(self, |c| {
            let st = c.prepare_cached(FIND).await?;
            let row = c.query_opt(&st, &[&address.user, &address.domain]).await?;
            Ok(row.as_ref().map(rows::user).transpose()?)
        })?;
        self.caches.users.remember_user(ticket, address, &user);
        Ok(user)
    }

    async fn domains(&self) -> Result<Vec<String>, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached("SELECT DISTINCT domain FROM users ORDER BY domain")
                .await?;
            let domains = c.query(&st, &[]).await?;
            Ok(domains
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    async fn has_domain(&self, domain: &str) -> Result<bool, DataError> {
        let ticket = match self.caches.users.domain(domain) {
            Ok(hit) => return Ok(hit),
            Err(ticket) => ticket,
        };
        let served = on_connection!(self, |c| {
            let st = c
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE domain = $1)")
                .await?;
            Ok(c.query_one(&st, &[&domain]).await?.try_get(0)?)
        })?;
        self.caches.users.remember_domain(ticket, domain, served);
        Ok(served)
    }

    async fn add(
        &self,
        address: &Address,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<UserRecord, DataError> {
        let creds = Credentials::derive(address, password);
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(concat!(insert_user!(), " RETURNING ", user_columns!()))
                .await?;
            let row = c
                .query_one(
                    &st,
                    &[
                        &address.user,
                        &address.domain,
                        &display_name,
                        &creds.ha1_md5,
                        &creds.ha1_sha256,
                        &creds.nt_hash,
                        &now_secs(),
                    ],
                )
                .await;
            match row {
                Ok(row) => {
                    self.caches.users.changed();
                    Ok(rows::user(&row)?)
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(DataError::UserExists(address.to_string()).into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    async fn set_password(&self, address: &Address, password: &str) -> Result<(), DataError> {
        let c = Credentials::derive(address, password);
        self.update_user(
            address,
            "UPDATE users SET ha1_md5 = $3, ha1_sha256 = $4, nt_hash = $5, updated_at = $6
              WHERE username = $1 AND domain = $2",
            &[&c.ha1_md5, &c.ha1_sha256, &c.nt_hash, &now_secs()],
        )
        .await
    }

    async fn set_enabled(&self, address: &Address, enabled: bool) -> Result<(), DataError> {
        self.update_user(
            address,
            "UPDATE users SET enabled = $3, updated_at = $4 WHERE username = $1 AND domain = $2",
            &[&enabled, &now_secs()],
        )
        .await
    }

    async fn remove(&self, address: &Address) -> Result<(), DataError> {
        self.update_user(
            address,
            "DELETE FROM users WHERE username = $1 AND domain = $2",
            &[],
        )
        .await
    }

    async fn list(&self) -> Result<Vec<UserRecord>, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users ORDER BY domain, username"
                ))
                .await?;
            all(c.query(&st, &[]).await?, rows::user)
        })
    }

    async fn upsert_many(
        &self,
        users: &[(Address, String, Option<String>)],
    ) -> Result<usize, DataError> {
        // A bulk import: a millisecond a row beyond the usual deadline.
        let deadline = CALL_DEADLINE + Duration::from_millis(users.len() as u64);
        let t = now_secs();
        on_connection!(self, deadline, |c| {
            let tx = c.transaction().await?;
            let st = tx
                .prepare_cached(concat!(
                    insert_user!(),
                    " ON CONFLICT (username, domain) DO UPDATE SET
                       display_name = COALESCE(excluded.display_name, users.display_name),
                       ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256,
                       nt_hash = excluded.nt_hash, updated_at = excluded.updated_at"
                ))
                .await?;
            let mut n = 0;
            for chunk in users.chunks(PIPELINE) {
                let creds: Vec<Credentials> = chunk
                    .iter()
                    .map(|(a, pw, _)| Credentials::derive(a, pw))
                    .collect();
                let written = try_join_all(chunk.iter().zip(&creds).map(|((a, _, name), c)| {
                    tx.execute_raw(
                        &st,
                        [
                            &a.user as &(dyn ToSql + Sync),
                            &a.domain,
                            name,
                            &c.ha1_md5,
                            &c.ha1_sha256,
                            &c.nt_hash,
                            &t,
                        ],
                    )
                }))
                .await?;
                n += written.iter().sum::<u64>();
            }
            tx.commit().await?;
            self.caches.users.changed();
            Ok(super::count(n))
        })
    }
}

impl PostgresStore {
    /// Runs `sql` (an UPDATE or DELETE of one user: `$1` the user, `$2` the domain,
    /// `params` from `$3` on); [`DataError::NoSuchUser`] when there is no such user.
    async fn update_user(
        &self,
        address: &Address,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let st = c.prepare_cached(sql).await?;
            let mut all: Vec<&(dyn ToSql + Sync)> = vec![&address.user, &address.domain];
            all.extend_from_slice(params);
            if c.execute(&st, &all).await? == 0 {
                return Err(DataError::NoSuchUser(address.to_string()).into());
            }
            self.caches.users.changed();
            Ok(())
        })
    }
}
