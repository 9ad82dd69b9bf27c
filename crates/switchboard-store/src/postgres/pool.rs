//! An Enterprise pool's membership and shared registrations in PostgreSQL (migration
//! 9): `pool_members`, `pool_secret`, `pool_bindings`.
//!
//! Heartbeats, the reaper and joins go over a connection pool of their own (two
//! connections, short deadlines): a burst of registrations holding every connection of
//! the main pool must not delay a heartbeat long enough to look dead.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use switchboard_core::pool::{
    cdr_owner, MemberLoad, MemberRecord, Membership, MembershipData, OwnBinding, PoolBinding,
    PoolLocationData, PoolPresenceData, ReapedMember,
};
use switchboard_core::DataError;
use tokio_postgres::types::ToSql;

use super::directory::PIPELINE;
use super::{on_connection, Failure, PostgresStore};

/// How long a membership call may take: well under the reap timeout, so a slow
/// database shows as a failed heartbeat rather than a stuck loop.
const CONTROL_DEADLINE: Duration = Duration::from_secs(2);

/// Closes a member's open CDR sessions and their participants (`$1` at, `$2` reason,
/// `$3` owner, `$4` epoch): every run of that owner up to the epoch.
const CLOSE_PARTICIPANTS: &str = "UPDATE cdr_participants SET left_at_ms = $1
     WHERE left_at_ms IS NULL AND session_id IN
       (SELECT id FROM cdr_sessions WHERE ended_at_ms IS NULL AND owner = $2 AND epoch <= $3)";
const CLOSE_SESSIONS: &str = "UPDATE cdr_sessions SET ended_at_ms = $1, end_reason = $2
     WHERE ended_at_ms IS NULL AND owner = $3 AND epoch <= $4";

/// Removes one member in `tx`: its registrations (by cascade) and its open CDR
/// sessions. Returns the users it had registered and how many sessions were closed.
async fn remove_member(
    tx: &deadpool_postgres::Transaction<'_>,
    fe: i32,
    epoch: i64,
    reason: &str,
    at_ms: i64,
) -> Result<(Vec<String>, usize), Failure> {
    // Every front end holding a user whose devices were here re-reads them (the
    // presence change log), and sees what is left.
    tx.execute(
        "INSERT INTO presence_changes (address, at_ms)
         SELECT address, $3 FROM pool_presence WHERE fe_id = $1 AND epoch = $2",
        &[&fe, &epoch, &at_ms],
    )
    .await?;
    let users = tx
        .query(
            "SELECT DISTINCT aor FROM pool_bindings WHERE fe_id = $1 AND epoch = $2 ORDER BY aor",
            &[&fe, &epoch],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
    tx.execute(
        "DELETE FROM pool_members WHERE fe_id = $1 AND epoch = $2",
        &[&fe, &epoch],
    )
    .await?;
    let owner = cdr_owner(fe as u32);
    tx.execute(CLOSE_PARTICIPANTS, &[&at_ms, &owner, &epoch])
        .await?;
    let closed = tx
        .execute(CLOSE_SESSIONS, &[&at_ms, &reason, &owner, &epoch])
        .await?;
    Ok((users, super::count(closed)))
}

/// A write under `member` that failed the foreign key to its membership (23503: the
/// member row is gone, reaped or replaced by a newer start) is a fenced front end's.
fn fenced_if_gone(member: Membership, written: Result<(), DataError>) -> Result<(), DataError> {
    match written {
        Err(DataError::Backend(what)) if what.contains("23503") => Err(DataError::NotMember {
            fe: member.fe,
            epoch: member.epoch,
        }),
        other => other,
    }
}

fn fe_id(fe: u32) -> Result<i32, DataError> {
    i32::try_from(fe).map_err(|_| DataError::Backend(format!("front end id {fe} is too large")))
}

#[async_trait]
impl MembershipData for PostgresStore {
    async fn join(
        &self,
        fe: u32,
        sip_addr: &str,
        alive_within: Duration,
    ) -> Result<Membership, DataError> {
        let id = fe_id(fe)?;
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            // A start of front end `fe`: a server run, whose epoch is the membership's.
            let started_at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let epoch: i64 = tx
                .query_one(
                    "INSERT INTO server_runs (owner, started_at_ms) VALUES ($1, $2) RETURNING epoch",
                    &[&cdr_owner(fe), &started_at_ms],
                )
                .await?
                .try_get(0)?;
            // What an earlier start of this id left (its row locked, so a reaper or a
            // second process joining as the same id waits for this one).
            if let Some(old) = tx
                .query_opt(
                    "SELECT epoch, sip_addr, (EXTRACT(EPOCH FROM now() - heartbeat_at) * 1000)::BIGINT
                       FROM pool_members WHERE fe_id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
            {
                let old_epoch: i64 = old.try_get(0)?;
                let old_addr: String = old.try_get(1)?;
                let age_ms: i64 = old.try_get(2)?;
                if age_ms < alive_within.as_millis() as i64 {
                    return Err(DataError::MemberAlive(format!(
                        "front end {fe} is already running at {old_addr} (its last heartbeat \
                         was {:.1} s ago): give this one another --front-end id, or stop \
                         that one first",
                        age_ms as f64 / 1000.0
                    ))
                    .into());
                }
                tx.execute(
                    "DELETE FROM pool_members WHERE fe_id = $1 AND epoch = $2",
                    &[&id, &old_epoch],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO pool_members (fe_id, epoch, sip_addr) VALUES ($1, $2, $3)",
                &[&id, &epoch, &sip_addr],
            )
            .await?;
            tx.commit().await?;
            Ok(Membership { fe, epoch })
        })
    }

    async fn heartbeat(&self, member: Membership, load: MemberLoad) -> Result<bool, DataError> {
        let id = fe_id(member.fe)?;
        let counts = [load.connections, load.registered, load.subscriptions]
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        on_connection!(self.control(), CONTROL_DEADLINE, |c| {
            let st = c
                .prepare_cached(
                    "UPDATE pool_members SET heartbeat_at = now(),
                            connections = $3, registered = $4, subscriptions = $5
                      WHERE fe_id = $1 AND epoch = $2",
                )
                .await?;
            let n = c
                .execute(
                    &st,
                    &[&id, &member.epoch, &counts[0], &counts[1], &counts[2]],
                )
                .await?;
            Ok(n == 1)
        })
    }

    async fn reap(
        &self,
        stale_after: Duration,
        reason: &str,
        at_ms: i64,
    ) -> Result<Vec<ReapedMember>, DataError> {
        let reaped = on_connection!(self.control(), CONTROL_DEADLINE, |c| {
            let tx = c.transaction().await?;
            // Locked and skipped when locked: two reapers never take the same member,
            // and a member heartbeating right now is left to its heartbeat.
            let dead = tx
                .query(
                    "SELECT fe_id, epoch FROM pool_members
                      WHERE heartbeat_at < now() - make_interval(secs => $1)
                      ORDER BY fe_id FOR UPDATE SKIP LOCKED",
                    &[&stale_after.as_secs_f64()],
                )
                .await?;
            let mut reaped = Vec::with_capacity(dead.len());
            for row in dead {
                let (fe, epoch): (i32, i64) = (row.try_get(0)?, row.try_get(1)?);
                let (users, sessions_closed) = remove_member(&tx, fe, epoch, reason, at_ms).await?;
                reaped.push(ReapedMember {
                    fe: fe as u32,
                    epoch,
                    users,
                    sessions_closed,
                });
            }
            tx.commit().await?;
            Ok(reaped)
        });
        // Seen here at once, not only when the notices come back.
        if !matches!(&reaped, Ok(r) if r.is_empty()) {
            self.caches.bindings.forget_all();
        }
        reaped
    }

    async fn leave(&self, member: Membership, reason: &str, at_ms: i64) -> Result<(), DataError> {
        let id = fe_id(member.fe)?;
        let left = on_connection!(self.control(), CONTROL_DEADLINE, |c| {
            let tx = c.transaction().await?;
            remove_member(&tx, id, member.epoch, reason, at_ms).await?;
            tx.commit().await?;
            Ok(())
        });
        self.caches.bindings.forget_all();
        left
    }

    async fn members(&self) -> Result<Vec<MemberRecord>, DataError> {
        on_connection!(self.control(), CONTROL_DEADLINE, |c| {
            let rows = c
                .query(
                    "SELECT fe_id, epoch, sip_addr,
                            (EXTRACT(EPOCH FROM joined_at) * 1000)::BIGINT,
                            (EXTRACT(EPOCH FROM heartbeat_at) * 1000)::BIGINT,
                            (EXTRACT(EPOCH FROM now() - heartbeat_at) * 1000)::BIGINT,
                            connections, registered, subscriptions
                       FROM pool_members ORDER BY fe_id",
                    &[],
                )
                .await?;
            let count = |r: &tokio_postgres::Row, i| -> Result<u64, Failure> {
                Ok(r.try_get::<_, i64>(i)?.max(0) as u64)
            };
            rows.iter()
                .map(|r| {
                    Ok(MemberRecord {
                        fe: r.try_get::<_, i32>(0)? as u32,
                        epoch: r.try_get(1)?,
                        sip_addr: r.try_get(2)?,
                        joined_at_ms: r.try_get(3)?,
                        heartbeat_at_ms: r.try_get(4)?,
                        heartbeat_age_ms: r.try_get(5)?,
                        load: MemberLoad {
                            connections: count(r, 6)?,
                            registered: count(r, 7)?,
                            subscriptions: count(r, 8)?,
                        },
                    })
                })
                .collect()
        })
    }

    async fn pool_secret(&self) -> Result<[u8; 32], DataError> {
        let fresh: [u8; 32] = rand::random();
        let secret: Vec<u8> = on_connection!(self.control(), CONTROL_DEADLINE, |c| {
            c.execute(
                "INSERT INTO pool_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                &[&fresh.as_slice()],
            )
            .await?;
            Ok(
                c.query_one("SELECT secret FROM pool_secret WHERE id = 1", &[])
                    .await?
                    .try_get(0)?,
            )
        })?;
        secret
            .try_into()
            .map_err(|_| DataError::Backend("the pool secret in the database is damaged".into()))
    }
}

#[async_trait]
impl PoolLocationData for PostgresStore {
    async fn set_bindings(
        &self,
        member: Membership,
        updates: &[(String, Vec<OwnBinding>)],
    ) -> Result<(), DataError> {
        let id = fe_id(member.fe)?;
        let written = on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let (delete, insert) = futures_util::future::try_join(
                tx.prepare_cached(
                    "DELETE FROM pool_bindings WHERE aor = $1 AND fe_id = $2 AND epoch = $3",
                ),
                tx.prepare_cached(
                    "INSERT INTO pool_bindings (aor, fe_id, epoch, connection, contact, expires_at, lync)
                     VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)",
                ),
            )
            .await?;
            for chunk in updates.chunks(PIPELINE) {
                try_join_all(chunk.iter().map(|(aor, _)| {
                    tx.execute_raw(&delete, [aor as &(dyn ToSql + Sync), &id, &member.epoch])
                }))
                .await?;
            }
            let rows: Vec<(&String, &OwnBinding, i64, f64)> = updates
                .iter()
                .flat_map(|(aor, bs)| {
                    bs.iter().map(move |b| {
                        (
                            aor,
                            b,
                            i64::try_from(b.connection).unwrap_or(i64::MAX),
                            f64::from(b.expires_in),
                        )
                    })
                })
                .collect();
            for chunk in rows.chunks(PIPELINE) {
                try_join_all(chunk.iter().map(|(aor, b, conn, secs)| {
                    tx.execute_raw(
                        &insert,
                        [
                            aor as &(dyn ToSql + Sync),
                            &id,
                            &member.epoch,
                            conn,
                            &b.contact,
                            secs,
                            &b.lync,
                        ],
                    )
                }))
                .await?;
            }
            tx.commit().await?;
            Ok(())
        });
        // This store's own writes are seen here at once (or, not knowing whether a
        // failed write committed, asked of the database again).
        for (aor, _) in updates {
            self.caches.bindings.changed(aor);
        }
        fenced_if_gone(member, written)
    }

    async fn bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, DataError> {
        let ticket = match self.caches.bindings.bindings(aor) {
            Ok(hit) => return Ok(hit),
            Err(ticket) => ticket,
        };
        let asked = std::time::Instant::now();
        let rows = self.read_bindings(aor).await?;
        self.caches.bindings.remember(ticket, aor, asked, &rows);
        Ok(rows)
    }

    async fn fresh_bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, DataError> {
        self.read_bindings(aor).await
    }
}

impl PostgresStore {
    /// The bindings of `aor` in force, as the database has them (see `bindings_cache`).
    async fn read_bindings(&self, aor: &str) -> Result<Vec<PoolBinding>, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(
                    "SELECT b.fe_id, b.epoch, m.sip_addr, b.connection, b.contact,
                            CEIL(EXTRACT(EPOCH FROM b.expires_at - now()))::BIGINT, b.lync
                       FROM pool_bindings b JOIN pool_members m USING (fe_id, epoch)
                      WHERE b.aor = $1 AND b.expires_at > now()
                      ORDER BY b.fe_id, b.connection, b.contact",
                )
                .await?;
            let rows = c.query(&st, &[&aor]).await?;
            rows.iter()
                .map(|r| {
                    Ok(PoolBinding {
                        aor: aor.to_owned(),
                        fe: r.try_get::<_, i32>(0)? as u32,
                        epoch: r.try_get(1)?,
                        fe_addr: r.try_get(2)?,
                        connection: r.try_get::<_, i64>(3)?.max(0) as u64,
                        contact: r.try_get(4)?,
                        expires_in: r.try_get::<_, i64>(5)?.clamp(0, u32::MAX as i64) as u32,
                        lync: r.try_get(6)?,
                    })
                })
                .collect()
        })
    }
}

#[async_trait]
impl PoolPresenceData for PostgresStore {
    async fn set_devices(
        &self,
        member: Membership,
        updates: &[(String, Option<String>)],
        at_ms: i64,
    ) -> Result<(), DataError> {
        let id = fe_id(member.fe)?;
        let written = on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let (upsert, delete, changed) = futures_util::future::try_join3(
                tx.prepare_cached(
                    "INSERT INTO pool_presence (address, fe_id, epoch, devices) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (address, fe_id) DO UPDATE
                       SET epoch = excluded.epoch, devices = excluded.devices",
                ),
                tx.prepare_cached(
                    "DELETE FROM pool_presence WHERE address = $1 AND fe_id = $2 AND epoch = $3",
                ),
                tx.prepare_cached("INSERT INTO presence_changes (address, at_ms) VALUES ($1, $2)"),
            )
            .await?;
            for chunk in updates.chunks(PIPELINE) {
                try_join_all(chunk.iter().map(|(address, devices)| async {
                    match devices {
                        Some(d) => {
                            tx.execute(&upsert, &[address, &id, &member.epoch, d])
                                .await?
                        }
                        None => tx.execute(&delete, &[address, &id, &member.epoch]).await?,
                    };
                    tx.execute(&changed, &[address, &at_ms]).await
                }))
                .await?;
            }
            tx.commit().await?;
            Ok(())
        });
        fenced_if_gone(member, written)
    }
}
