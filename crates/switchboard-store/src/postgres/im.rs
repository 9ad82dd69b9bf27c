//! Call detail records and offline messages in PostgreSQL.
//!
//! Several servers may keep messages for one recipient at once: the mailbox caps are
//! checked and the message kept under a per-recipient advisory lock, so concurrent
//! senders cannot overfill it (SQLite gets the same from its single writer).

use async_trait::async_trait;
use futures_util::future::{try_join, try_join_all};
use switchboard_core::{
    CdrData, DataError, Keep, OfflineData, OfflineMessage, ParticipantRecord, Run, SessionFilter,
    SessionRecord,
};
use tokio_postgres::types::ToSql;

use super::directory::PIPELINE;
use super::{all, count, on_connection, Failure, PostgresStore, XACT_LOCK};
use crate::rows::{self, offline_columns, participant_columns, session_columns};

/// The first key of the per-recipient mailbox lock (the second is the recipient's
/// hash): the bytes of "mbox".
const MAILBOX_LOCK: i32 = 0x6d62_6f78;

const UPSERT_PARTICIPANT: &str =
    "INSERT INTO cdr_participants (session_id, address, device, joined_at_ms, left_at_ms, messages, bytes)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (session_id, address) DO UPDATE SET
       device = excluded.device, left_at_ms = excluded.left_at_ms,
       messages = excluded.messages, bytes = excluded.bytes";

/// Writes `rows` (session id, participant) in the transaction, pipelined.
async fn upsert_participants<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: impl Iterator<Item = (&'a str, &'a ParticipantRecord)>,
) -> Result<(), Failure> {
    let st = tx.prepare_cached(UPSERT_PARTICIPANT).await?;
    let rows: Vec<_> = rows.collect();
    for chunk in rows.chunks(PIPELINE) {
        try_join_all(chunk.iter().map(|(id, p)| {
            tx.execute_raw(
                &st,
                [
                    id as &(dyn ToSql + Sync),
                    &p.address,
                    &p.device,
                    &p.joined_at_ms,
                    &p.left_at_ms,
                    &p.messages,
                    &p.bytes,
                ],
            )
        }))
        .await?;
    }
    Ok(())
}

#[async_trait]
impl CdrData for PostgresStore {
    async fn begin_run(&self, owner: &str, at_ms: i64) -> Result<Run, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(
                    "INSERT INTO server_runs (owner, started_at_ms) VALUES ($1, $2) RETURNING epoch",
                )
                .await?;
            let row = c.query_one(&st, &[&owner, &at_ms]).await?;
            Ok(Run {
                owner: owner.to_owned(),
                epoch: row.try_get(0)?,
            })
        })
    }

    async fn start_session(
        &self,
        run: &Run,
        s: &SessionRecord,
        participants: &[ParticipantRecord],
    ) -> Result<(), DataError> {
        self.start_sessions(run, &[(s.clone(), participants.to_vec())])
            .await
    }

    async fn start_sessions(
        &self,
        run: &Run,
        sessions: &[(SessionRecord, Vec<ParticipantRecord>)],
    ) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let st = tx
                .prepare_cached(concat!(
                    "INSERT INTO cdr_sessions (",
                    session_columns!(),
                    ", owner, epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (id) DO NOTHING"
                ))
                .await?;
            // Sent together, answers awaited after (pipelined, one transaction).
            try_join_all(sessions.iter().map(|(s, _)| {
                tx.execute_raw(
                    &st,
                    [
                        &s.id as &(dyn ToSql + Sync),
                        &s.kind,
                        &s.started_at_ms,
                        &s.ended_at_ms,
                        &s.end_reason,
                        &s.initiator,
                        &s.organiser,
                        &s.escalated_from,
                        &run.owner,
                        &run.epoch,
                    ],
                )
            }))
            .await?;
            let rows: Vec<(&str, &ParticipantRecord)> = sessions
                .iter()
                .flat_map(|(s, ps)| ps.iter().map(|p| (s.id.as_str(), p)))
                .collect();
            upsert_participants(&tx, rows.into_iter()).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn update_participants(
        &self,
        rows: &[(String, ParticipantRecord)],
    ) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            upsert_participants(&tx, rows.iter().map(|(id, p)| (id.as_str(), p))).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn set_escalated_from(&self, id: &str, from: &str) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(
                    "UPDATE cdr_sessions SET escalated_from = $2
                      WHERE id = $1 AND escalated_from IS NULL",
                )
                .await?;
            c.execute(&st, &[&id, &from]).await?;
            Ok(())
        })
    }

    async fn end_session(&self, id: &str, ended_at_ms: i64, reason: &str) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let (session, participants) = try_join(
                tx.prepare_cached(
                    "UPDATE cdr_sessions SET ended_at_ms = $2, end_reason = $3
                      WHERE id = $1 AND ended_at_ms IS NULL",
                ),
                tx.prepare_cached(
                    "UPDATE cdr_participants SET left_at_ms = $2
                      WHERE session_id = $1 AND left_at_ms IS NULL",
                ),
            )
            .await?;
            try_join(
                tx.execute(&session, &[&id, &ended_at_ms, &reason]),
                tx.execute(&participants, &[&id, &ended_at_ms]),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    async fn close_open_sessions(
        &self,
        run: &Run,
        at_ms: i64,
        reason: &str,
    ) -> Result<usize, DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let (participants, sessions) = try_join(
                tx.prepare_cached(
                    "UPDATE cdr_participants SET left_at_ms = $1 WHERE left_at_ms IS NULL
                       AND session_id IN (SELECT id FROM cdr_sessions
                                           WHERE ended_at_ms IS NULL AND owner = $2 AND epoch < $3)",
                ),
                tx.prepare_cached(
                    "UPDATE cdr_sessions SET ended_at_ms = $1, end_reason = $2
                      WHERE ended_at_ms IS NULL AND owner = $3 AND epoch < $4",
                ),
            )
            .await?;
            let (_, n) = try_join(
                tx.execute(&participants, &[&at_ms, &run.owner, &run.epoch]),
                tx.execute(&sessions, &[&at_ms, &reason, &run.owner, &run.epoch]),
            )
            .await?;
            tx.commit().await?;
            Ok(count(n))
        })
    }

    async fn sessions(&self, f: &SessionFilter) -> Result<Vec<SessionRecord>, DataError> {
        let limit = f.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM cdr_sessions s
                     WHERE ($1::BIGINT IS NULL OR started_at_ms >= $1)
                       AND ($2::TEXT IS NULL OR EXISTS (SELECT 1 FROM cdr_participants p
                                                        WHERE p.session_id = s.id AND p.address = $2))
                     ORDER BY started_at_ms, id
                     LIMIT $3"
                ))
                .await?;
            let found = c.query(&st, &[&f.since_ms, &f.participant, &limit]).await?;
            all(found, rows::session)
        })
    }

    async fn session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRecord, Vec<ParticipantRecord>)>, DataError> {
        on_connection!(self, |c| {
            let (session, participants) = try_join(
                c.prepare_cached(concat!(
                    "SELECT ",
                    session_columns!(),
                    " FROM cdr_sessions WHERE id = $1"
                )),
                c.prepare_cached(concat!(
                    "SELECT ",
                    participant_columns!(),
                    " FROM cdr_participants WHERE session_id = $1 ORDER BY joined_at_ms, address"
                )),
            )
            .await?;
            let (session, participants) = try_join(
                c.query_opt(&session, &[&id]),
                c.query(&participants, &[&id]),
            )
            .await?;
            let Some(session) = session else {
                return Ok(None);
            };
            Ok(Some((
                rows::session(&session)?,
                all(participants, rows::participant)?,
            )))
        })
    }
}

#[async_trait]
impl OfflineData for PostgresStore {
    async fn store_offline(
        &self,
        m: &OfflineMessage,
        max_per_user: usize,
        max_per_sender: usize,
    ) -> Result<Keep, DataError> {
        on_connection!(self, |c| {
            let tx = c.transaction().await?;
            let (lock, counts, insert) = futures_util::future::try_join3(
                tx.prepare_cached(XACT_LOCK),
                // Both counts come from the (recipient, sender) index alone.
                tx.prepare_cached(
                    "SELECT COUNT(*) FILTER (WHERE sender = $2), COUNT(*)
                       FROM offline_messages WHERE recipient = $1",
                ),
                tx.prepare_cached(
                    "INSERT INTO offline_messages (recipient, sender, content_type, body, received_at_ms, session_id)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                ),
            )
            .await?;
            // Sent together; the count runs once the lock is held, so it sees every
            // message kept before.
            let (_, counts) = try_join(
                tx.execute(&lock, &[&MAILBOX_LOCK, &m.recipient]),
                tx.query_one(&counts, &[&m.recipient, &m.sender]),
            )
            .await?;
            let keep = rows::keep(
                counts.try_get(0)?,
                counts.try_get(1)?,
                max_per_user,
                max_per_sender,
            );
            if keep == Keep::Kept {
                tx.execute(
                    &insert,
                    &[
                        &m.recipient,
                        &m.sender,
                        &m.content_type,
                        &m.body,
                        &m.received_at_ms,
                        &m.session_id,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(keep)
        })
    }

    async fn offline_for(&self, recipient: &str) -> Result<Vec<OfflineMessage>, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    offline_columns!(),
                    " FROM offline_messages WHERE recipient = $1 ORDER BY id"
                ))
                .await?;
            all(c.query(&st, &[&recipient]).await?, rows::offline_message)
        })
    }

    async fn delete_offline(&self, id: i64) -> Result<(), DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached("DELETE FROM offline_messages WHERE id = $1")
                .await?;
            c.execute(&st, &[&id]).await?;
            Ok(())
        })
    }

    async fn expire_offline(&self, before_ms: i64) -> Result<usize, DataError> {
        on_connection!(self, |c| {
            let st = c
                .prepare_cached("DELETE FROM offline_messages WHERE received_at_ms < $1")
                .await?;
            Ok(count(c.execute(&st, &[&before_ms]).await?))
        })
    }
}
