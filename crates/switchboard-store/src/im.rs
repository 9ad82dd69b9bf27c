//! The IM service's durable state: call detail records (no message content) and the
//! messages kept for users who were offline.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{self, offline_columns, participant_columns, session_columns};
use crate::StoreError;
use switchboard_core::{
    Keep, OfflineMessage, ParticipantRecord, Run, SessionFilter, SessionRecord,
};

/// CDR and offline messages over their own SQLite connection.
pub struct ImStore {
    conn: Mutex<Connection>,
}

impl ImStore {
    pub fn open(data_dir: &Path) -> Result<ImStore, StoreError> {
        let conn = crate::connect(data_dir)?;
        // These writes run on the SIP request path: when another process holds the write
        // lock, fail within a quarter second (the message is refused with a clear error)
        // rather than stall request handling for SQLite's usual seconds.
        conn.busy_timeout(std::time::Duration::from_millis(250))?;
        Ok(ImStore {
            conn: Mutex::new(conn),
        })
    }

    /// Records a new run of server `owner`.
    pub fn begin_run(&self, owner: &str, at_ms: i64) -> Result<Run, StoreError> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO server_runs (owner, started_at_ms) VALUES (?1, ?2)",
            params![owner, at_ms],
        )?;
        Ok(Run {
            owner: owner.to_owned(),
            epoch: conn.last_insert_rowid(),
        })
    }

    /// Records the start of a session of `run` and its first participants, in one
    /// transaction.
    pub fn start_session(
        &self,
        run: &Run,
        s: &SessionRecord,
        participants: &[ParticipantRecord],
    ) -> Result<(), StoreError> {
        self.start_sessions(run, std::iter::once((s, participants)))
    }

    /// Several sessions' starts in one transaction.
    pub fn start_sessions<'a>(
        &self,
        run: &Run,
        sessions: impl IntoIterator<Item = (&'a SessionRecord, &'a [ParticipantRecord])>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for (s, participants) in sessions {
            tx.prepare_cached(
                "INSERT INTO cdr_sessions (id, kind, started_at_ms, ended_at_ms, end_reason, initiator, organiser, escalated_from, owner, epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![s.id, s.kind, s.started_at_ms, s.ended_at_ms, s.end_reason, s.initiator, s.organiser, s.escalated_from, run.owner, run.epoch])?;
            for p in participants {
                upsert_participant(&tx, &s.id, p)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes the current counters of many participants at once (flushed periodically).
    pub fn update_participants(
        &self,
        rows: &[(String, ParticipantRecord)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        for (session_id, p) in rows {
            upsert_participant(&tx, session_id, p)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the two-party session a conference grew out of (learnt after it started:
    /// a Lync client creates the conference first and invites its peer afterwards).
    pub fn set_escalated_from(&self, id: &str, from: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock();
        conn.execute(
            "UPDATE cdr_sessions SET escalated_from = ?2 WHERE id = ?1 AND escalated_from IS NULL",
            params![id, from],
        )?;
        Ok(())
    }

    /// Closes a session: its end time and reason, and everyone still in it leaves then.
    pub fn end_session(&self, id: &str, ended_at_ms: i64, reason: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cdr_sessions SET ended_at_ms = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at_ms IS NULL",
            params![id, ended_at_ms, reason],
        )?;
        tx.execute(
            "UPDATE cdr_participants SET left_at_ms = ?2 WHERE session_id = ?1 AND left_at_ms IS NULL",
            params![id, ended_at_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// At startup: sessions `run.owner`'s earlier runs left open (a crash) are closed
    /// with `reason`. Returns how many.
    pub fn close_open_sessions(
        &self,
        run: &Run,
        at_ms: i64,
        reason: &str,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE cdr_participants SET left_at_ms = ?1 WHERE left_at_ms IS NULL
               AND session_id IN (SELECT id FROM cdr_sessions
                                   WHERE ended_at_ms IS NULL AND owner = ?2 AND epoch < ?3)",
            params![at_ms, run.owner, run.epoch],
        )?;
        let n = tx.execute(
            "UPDATE cdr_sessions SET ended_at_ms = ?1, end_reason = ?2
              WHERE ended_at_ms IS NULL AND owner = ?3 AND epoch < ?4",
            params![at_ms, reason, run.owner, run.epoch],
        )?;
        tx.commit()?;
        Ok(n)
    }

    pub fn sessions(&self, f: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            session_columns!(),
            " FROM cdr_sessions s
              WHERE (?1 IS NULL OR started_at_ms >= ?1)
                AND (?2 IS NULL OR EXISTS (SELECT 1 FROM cdr_participants p WHERE p.session_id = s.id AND p.address = ?2))
              ORDER BY started_at_ms, id
              LIMIT ?3"
        ))?;
        let limit = f.limit.map(|l| l as i64).unwrap_or(-1);
        let rows = stmt
            .query_map(params![f.since_ms, f.participant, limit], |r| {
                rows::session(r)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRecord, Vec<ParticipantRecord>)>, StoreError> {
        let conn = self.conn.lock();
        let s = conn
            .prepare_cached(concat!(
                "SELECT ",
                session_columns!(),
                " FROM cdr_sessions WHERE id = ?1"
            ))?
            .query_row([id], |r| rows::session(r))
            .optional()?;
        let Some(s) = s else { return Ok(None) };
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            participant_columns!(),
            " FROM cdr_participants WHERE session_id = ?1 ORDER BY joined_at_ms, address"
        ))?;
        let ps = stmt
            .query_map([id], |r| rows::participant(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((s, ps)))
    }

    /// Keeps a message for its recipient, unless they already have `max_per_sender`
    /// waiting from its sender (so one sender cannot fill the mailbox for everyone) or
    /// `max_per_user` in all. Counting and keeping happen under one lock, so concurrent
    /// senders cannot overfill it.
    pub fn store_offline(
        &self,
        m: &OfflineMessage,
        max_per_user: usize,
        max_per_sender: usize,
    ) -> Result<Keep, StoreError> {
        let conn = self.conn.lock();
        // Both counts come from the (recipient, sender) index alone.
        let from_sender: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM offline_messages WHERE recipient = ?1 AND sender = ?2",
            )?
            .query_row([&m.recipient, &m.sender], |r| r.get(0))?;
        let waiting: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM offline_messages WHERE recipient = ?1")?
            .query_row([&m.recipient], |r| r.get(0))?;
        let keep = rows::keep(from_sender, waiting, max_per_user, max_per_sender);
        if keep != Keep::Kept {
            return Ok(keep);
        }
        conn.prepare_cached(
            "INSERT INTO offline_messages (recipient, sender, content_type, body, received_at_ms, session_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![m.recipient, m.sender, m.content_type, m.body, m.received_at_ms, m.session_id])?;
        Ok(Keep::Kept)
    }

    /// Messages waiting for `recipient`, oldest first.
    pub fn offline_for(&self, recipient: &str) -> Result<Vec<OfflineMessage>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            offline_columns!(),
            " FROM offline_messages WHERE recipient = ?1 ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([recipient], |r| rows::offline_message(r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Removes a delivered message.
    pub fn delete_offline(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .lock()
            .prepare_cached("DELETE FROM offline_messages WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// Drops messages older than `before_ms`; returns how many.
    pub fn expire_offline(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .lock()
            .prepare_cached("DELETE FROM offline_messages WHERE received_at_ms < ?1")?
            .execute([before_ms])?)
    }
}

fn upsert_participant(
    tx: &rusqlite::Transaction<'_>,
    session_id: &str,
    p: &ParticipantRecord,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO cdr_participants (session_id, address, device, joined_at_ms, left_at_ms, messages, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (session_id, address) DO UPDATE SET
           device = excluded.device, left_at_ms = excluded.left_at_ms,
           messages = excluded.messages, bytes = excluded.bytes",
    )?
    .execute(params![session_id, p.address, p.device, p.joined_at_ms, p.left_at_ms, p.messages, p.bytes])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_participants_restart_and_offline() {
        let dir = tempfile::tempdir().unwrap();
        let _users = crate::open(dir.path()).unwrap();
        let s = ImStore::open(dir.path()).unwrap();
        let rec = SessionRecord {
            id: "s1".into(),
            kind: "two-party".into(),
            started_at_ms: 1000,
            ended_at_ms: None,
            end_reason: None,
            initiator: "sip:alice@example.com".into(),
            organiser: None,
            escalated_from: None,
        };
        let p = |a: &str, n| ParticipantRecord {
            address: a.into(),
            device: "d".into(),
            joined_at_ms: 1000,
            left_at_ms: None,
            messages: n,
            bytes: n * 10,
        };
        let run = s.begin_run(Run::STANDALONE, 500).unwrap();
        s.start_session(
            &run,
            &rec,
            &[p("sip:alice@example.com", 0), p("sip:bob@example.com", 0)],
        )
        .unwrap();
        s.update_participants(&[("s1".into(), p("sip:alice@example.com", 3))])
            .unwrap();
        let (got, ps) = s.session("s1").unwrap().unwrap();
        assert_eq!(got.ended_at_ms, None);
        assert_eq!(
            ps.iter()
                .find(|x| x.address.contains("alice"))
                .unwrap()
                .messages,
            3
        );
        // A crash leaves it open: the next run closes it.
        let next = s.begin_run(Run::STANDALONE, 4000).unwrap();
        assert!(next.epoch > run.epoch);
        assert_eq!(
            s.close_open_sessions(&next, 5000, "server restart")
                .unwrap(),
            1
        );
        let (got, ps) = s.session("s1").unwrap().unwrap();
        assert_eq!(got.end_reason.as_deref(), Some("server restart"));
        assert!(ps.iter().all(|x| x.left_at_ms == Some(5000)));
        let f = SessionFilter {
            participant: Some("sip:bob@example.com".into()),
            ..Default::default()
        };
        assert_eq!(s.sessions(&f).unwrap().len(), 1);
        let f = SessionFilter {
            since_ms: Some(2000),
            ..Default::default()
        };
        assert!(s.sessions(&f).unwrap().is_empty());

        let m = |body: &str| OfflineMessage {
            id: 0,
            recipient: "sip:bob@example.com".into(),
            sender: "sip:alice@example.com".into(),
            content_type: "text/plain".into(),
            body: body.as_bytes().to_vec(),
            received_at_ms: 10,
            session_id: None,
        };
        assert_eq!(s.store_offline(&m("one"), 2, 5).unwrap(), Keep::Kept);
        assert_eq!(s.store_offline(&m("two"), 2, 5).unwrap(), Keep::Kept);
        assert_eq!(
            s.store_offline(&m("three"), 2, 5).unwrap(),
            Keep::MailboxFull,
            "bounded per user"
        );
        let waiting = s.offline_for("sip:bob@example.com").unwrap();
        assert_eq!(
            waiting.iter().map(|w| w.body.clone()).collect::<Vec<_>>(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        s.delete_offline(waiting[0].id).unwrap();
        assert_eq!(s.expire_offline(11).unwrap(), 1);
        assert!(s.offline_for("sip:bob@example.com").unwrap().is_empty());
    }

    #[test]
    fn one_sender_cannot_fill_a_mailbox_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let _users = crate::open(dir.path()).unwrap();
        let s = ImStore::open(dir.path()).unwrap();
        let m = |from: &str, to: &str| OfflineMessage {
            id: 0,
            recipient: format!("sip:{to}@example.com"),
            sender: format!("sip:{from}@example.com"),
            content_type: "text/plain".into(),
            body: b"hi".to_vec(),
            received_at_ms: 10,
            session_id: None,
        };
        for _ in 0..2 {
            assert_eq!(
                s.store_offline(&m("mallory", "bob"), 3, 2).unwrap(),
                Keep::Kept
            );
        }
        assert_eq!(
            s.store_offline(&m("mallory", "bob"), 3, 2).unwrap(),
            Keep::SenderFull
        );
        // Per recipient: mallory may still write to carol; alice may still write to bob
        // until bob's mailbox as a whole is full.
        assert_eq!(
            s.store_offline(&m("mallory", "carol"), 3, 2).unwrap(),
            Keep::Kept
        );
        assert_eq!(
            s.store_offline(&m("alice", "bob"), 3, 2).unwrap(),
            Keep::Kept
        );
        assert_eq!(
            s.store_offline(&m("dave", "bob"), 3, 2).unwrap(),
            Keep::MailboxFull
        );
        let kept: Vec<String> = s
            .offline_for("sip:bob@example.com")
            .unwrap()
            .into_iter()
            .map(|w| w.sender)
            .collect();
        assert_eq!(
            kept,
            [
                "sip:mallory@example.com",
                "sip:mallory@example.com",
                "sip:alice@example.com"
            ]
        );
    }

    /// Counting runs on every message kept: it must read the index, not the rows.
    #[test]
    fn mailbox_counts_read_only_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let _users = crate::open(dir.path()).unwrap();
        let s = ImStore::open(dir.path()).unwrap();
        let conn = s.conn.lock();
        for sql in [
            "SELECT COUNT(*) FROM offline_messages WHERE recipient = ?1 AND sender = ?2",
            "SELECT COUNT(*) FROM offline_messages WHERE recipient = ?1",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(
                    rusqlite::params_from_iter(["r", "s"].iter().take(sql.matches('?').count())),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("USING COVERING INDEX")),
                "{sql}: {plan:?}"
            );
        }
    }
}
