//! Call detail records, written behind the request path, in order, by one writer task.
//!
//! The IM service decides under its locks and never waits there: it hands each CDR write
//! (a session started, counters, an escalation, a session ended) to [`CdrLog`], and one
//! task applies them to [`CdrData`] in the order given. A write the database cannot take
//! now ([`DataError::is_unavailable`]) is retried, in order, with backoff until it can,
//! so nothing is lost while the process lives (a crash loses what is still queued; the
//! pool's fsync'd spool will close that gap).
//!
//! A new pager conversation is different: its start is written **before** its first
//! message is relayed ([`CdrLog::write_now`], tried once, the caller waits), and a
//! failure refuses the message (503), so no conversation goes unrecorded. After a
//! failure, or while the queue is long, [`CdrLog::accepting`] is false for a few
//! seconds and new sessions are refused at once rather than each waiting on a database
//! that just failed; then one is tried again. No session is refused for a counter
//! update.
//!
//! Counter updates carry totals (last value wins), so when the queue is over its bound
//! an update is dropped: a later one carries the same totals. Starts, escalations and
//! ends are never dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use switchboard_core::{CdrData, DataError, ParticipantRecord, Run, SessionRecord};

use crate::{now_ms, Conversation, Participant};
use tokio::sync::{mpsc, oneshot};

/// Queued writes beyond which sessions are not started and counter updates dropped.
const QUEUE_BOUND: usize = 100_000;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// After a failed write, new sessions are refused at once for this long.
const REFUSE_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Sessions' starts written in one transaction at most.
const START_BATCH: usize = 256;
/// How long a session's start may wait on the database.
const START_WAIT: Duration = Duration::from_secs(5);

/// A new session of `kind` and the CDR write that records its start.
pub(crate) fn new_session(
    kind: &str,
    initiator: &str,
    organiser: Option<String>,
    escalated_from: Option<String>,
    participants: &[(&str, String)],
) -> (Conversation, CdrWrite) {
    let id = format!("{:032x}", rand::random::<u128>());
    let at = now_ms();
    let participants = participants
        .iter()
        .map(|(a, device)| ((*a).to_owned(), Participant::new(device.clone(), at)))
        .collect();
    let rec = SessionRecord {
        id: id.clone(),
        kind: kind.into(),
        started_at_ms: at,
        ended_at_ms: None,
        end_reason: None,
        initiator: initiator.to_owned(),
        organiser,
        escalated_from,
    };
    let conv = Conversation {
        id,
        initiator: initiator.to_owned(),
        last_activity: tokio::time::Instant::now(),
        participants,
    };
    let rows: Vec<ParticipantRecord> = conv
        .records(None, false)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    tracing::debug!(session = %rec.id, kind, initiator, "IM session started");
    (conv, CdrWrite::Start(rec, rows))
}

/// One CDR write.
#[derive(Debug, Clone)]
pub(crate) enum CdrWrite {
    Start(SessionRecord, Vec<ParticipantRecord>),
    Participants(Vec<(String, ParticipantRecord)>),
    Escalated {
        id: String,
        from: String,
    },
    End {
        id: String,
        rows: Vec<(String, ParticipantRecord)>,
        at_ms: i64,
        reason: String,
    },
}

enum Job {
    Write(CdrWrite),
    /// Tried once; the outcome goes back to the one waiting.
    WriteNow(CdrWrite, oneshot::Sender<Result<(), DataError>>),
    /// Answered once every write queued before it was applied (or given up).
    Flush(oneshot::Sender<()>),
}

/// The ordered CDR writer (see the module header).
pub(crate) struct CdrLog {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
}

/// When a write last failed because the database could not answer.
#[derive(Default)]
struct Health {
    failed_at: Mutex<Option<Instant>>,
}

impl Health {
    fn failed(&self) {
        *self.failed_at.lock() = Some(Instant::now());
    }

    /// Clears a failure; true when there was one.
    fn recovered(&self) -> bool {
        self.failed_at.lock().take().is_some()
    }

    fn refusing(&self) -> bool {
        self.failed_at
            .lock()
            .is_some_and(|at| at.elapsed() < REFUSE_AFTER_FAILURE)
    }
}

impl CdrLog {
    /// Starts the writer over `data`, recording sessions as `run`'s.
    pub(crate) fn start(data: Arc<dyn CdrData>, run: Run) -> CdrLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Health::default());
        tokio::spawn(writer(data, run, rx, queued.clone(), health.clone()));
        CdrLog { tx, queued, health }
    }

    /// Whether a new session may be started now: no write failed a moment ago and the
    /// queue is short.
    pub(crate) fn accepting(&self) -> bool {
        !self.health.refusing() && self.queued.load(Ordering::Relaxed) < QUEUE_BOUND
    }

    /// Writes `w` after everything queued before it, trying once, and says whether it
    /// was written (waiting at most a few seconds).
    pub(crate) async fn write_now(&self, w: CdrWrite) -> Result<(), DataError> {
        let (done, outcome) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Job::WriteNow(w, done)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(DataError::Unavailable("the CDR writer has stopped".into()));
        }
        match tokio::time::timeout(START_WAIT, outcome).await {
            Ok(Ok(r)) => r,
            // Still queued behind writes the database does not take: it may be written
            // later (a session with no messages), never a message relayed unrecorded.
            _ => Err(DataError::Unavailable("the CDR writes are held up".into())),
        }
    }

    /// A new session of `kind`, its start queued. Whoever may refuse it asks
    /// [`CdrLog::accepting`] first.
    pub(crate) fn begin(
        &self,
        kind: &str,
        initiator: &str,
        organiser: Option<String>,
        escalated_from: Option<String>,
        participants: &[(&str, String)],
    ) -> Conversation {
        let (conv, start) = new_session(kind, initiator, organiser, escalated_from, participants);
        self.write(start);
        conv
    }

    /// A new two-party session, its start queued.
    pub(crate) fn begin_two_party(
        &self,
        initiator: &str,
        participants: &[(&str, String)],
    ) -> Conversation {
        self.begin("two-party", initiator, None, None, participants)
    }

    /// Queues the end of session `id` with its final `rows`.
    pub(crate) fn finish(
        &self,
        id: &str,
        rows: Vec<(String, ParticipantRecord)>,
        at: i64,
        reason: &str,
    ) {
        tracing::debug!(session = id, reason, "IM session ended");
        self.write(CdrWrite::End {
            id: id.to_owned(),
            rows,
            at_ms: at,
            reason: reason.to_owned(),
        });
    }

    /// Queues `w` (see the module header for what an over-long queue drops).
    pub(crate) fn write(&self, w: CdrWrite) {
        if matches!(w, CdrWrite::Participants(_))
            && self.queued.load(Ordering::Relaxed) >= QUEUE_BOUND
        {
            tracing::warn!(
                "CDR queue full; a counter update is dropped (a later one carries its totals)"
            );
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Job::Write(w)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits until everything queued so far is written, at most `limit`; false when
    /// time ran out.
    pub(crate) async fn flush(&self, limit: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_err() {
            return true;
        }
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

async fn writer(
    data: Arc<dyn CdrData>,
    run: Run,
    mut rx: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
) {
    // A job taken off the queue while gathering starts, to be handled next (in order).
    let mut carried: Option<Job> = None;
    loop {
        let job = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let w = match job {
            Job::Write(w) => w,
            Job::WriteNow(CdrWrite::Start(s, parts), done) => {
                // Group commit: the starts queued right behind this one (many pairs
                // beginning at once, a server just started) go in one transaction, each
                // waiter answered with its outcome, instead of one transaction each.
                let mut starts = vec![(s, parts)];
                let mut waiters = vec![done];
                while starts.len() < START_BATCH {
                    match rx.try_recv() {
                        Ok(Job::WriteNow(CdrWrite::Start(s, parts), done)) => {
                            starts.push((s, parts));
                            waiters.push(done);
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let r = data.start_sessions(&run, &starts).await;
                note_outcome(&health, &r);
                let outcomes = match r {
                    // The database refused the batch itself (not a passing failure): one
                    // bad row must not refuse the conversations batched with it, so each
                    // is tried alone.
                    Err(e) if !e.is_unavailable() && starts.len() > 1 => {
                        let mut each = Vec::with_capacity(starts.len());
                        for (s, parts) in &starts {
                            each.push(data.start_session(&run, s, parts).await);
                        }
                        each
                    }
                    r => vec![r; starts.len()],
                };
                for (done, r) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(r);
                    queued.fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
            Job::WriteNow(w, done) => {
                let r = apply(data.as_ref(), &run, &w).await;
                note_outcome(&health, &r);
                let _ = done.send(r);
                queued.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut wait = RETRY_FIRST;
        let mut told = false;
        loop {
            match apply(data.as_ref(), &run, &w).await {
                Ok(()) => {
                    if health.recovered() {
                        tracing::info!("CDR writes go through again");
                    }
                    break;
                }
                Err(e) if e.is_unavailable() => {
                    health.failed();
                    if !told {
                        told = true;
                        tracing::error!(error = %e, "cannot write CDR now; holding writes in order and refusing new IM sessions until it can");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    // Not a passing failure: retrying would block every write behind it.
                    tracing::error!(error = %e, write = ?w, "CDR write refused by the database; dropped");
                    break;
                }
            }
        }
        queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a write tried once says of the database's health.
fn note_outcome(health: &Health, r: &Result<(), DataError>) {
    match r {
        Ok(()) => {
            if health.recovered() {
                tracing::info!("CDR writes go through again");
            }
        }
        Err(e) if e.is_unavailable() => health.failed(),
        Err(_) => {}
    }
}

async fn apply(data: &dyn CdrData, run: &Run, w: &CdrWrite) -> Result<(), DataError> {
    match w {
        CdrWrite::Start(s, parts) => data.start_session(run, s, parts).await,
        CdrWrite::Participants(rows) => data.update_participants(rows).await,
        CdrWrite::Escalated { id, from } => data.set_escalated_from(id, from).await,
        CdrWrite::End {
            id,
            rows,
            at_ms,
            reason,
        } => {
            data.update_participants(rows).await?;
            data.end_session(id, *at_ms, reason).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::SessionFilter;

    /// Records starts; refuses (not transiently) any batch or start of the initiator
    /// "bad@x"; holds every counter update until `gate` opens, so starts queue up behind.
    #[derive(Default)]
    struct Fake {
        gate: tokio::sync::Notify,
        batches: Mutex<Vec<usize>>,
        started: Mutex<Vec<String>>,
    }

    fn refused(s: &SessionRecord) -> bool {
        s.initiator == "bad@x"
    }

    #[async_trait::async_trait]
    impl CdrData for Fake {
        async fn begin_run(&self, owner: &str, _: i64) -> Result<Run, DataError> {
            Ok(Run {
                owner: owner.into(),
                epoch: 1,
            })
        }
        async fn start_session(
            &self,
            _: &Run,
            s: &SessionRecord,
            _: &[ParticipantRecord],
        ) -> Result<(), DataError> {
            if refused(s) {
                return Err(DataError::Backend("refused".into()));
            }
            self.started.lock().push(s.initiator.clone());
            Ok(())
        }
        async fn start_sessions(
            &self,
            _: &Run,
            all: &[(SessionRecord, Vec<ParticipantRecord>)],
        ) -> Result<(), DataError> {
            self.batches.lock().push(all.len());
            if all.iter().any(|(s, _)| refused(s)) {
                return Err(DataError::Backend("refused".into()));
            }
            self.started
                .lock()
                .extend(all.iter().map(|(s, _)| s.initiator.clone()));
            Ok(())
        }
        async fn update_participants(
            &self,
            _: &[(String, ParticipantRecord)],
        ) -> Result<(), DataError> {
            self.gate.notified().await;
            Ok(())
        }
        async fn set_escalated_from(&self, _: &str, _: &str) -> Result<(), DataError> {
            Ok(())
        }
        async fn end_session(&self, _: &str, _: i64, _: &str) -> Result<(), DataError> {
            Ok(())
        }
        async fn close_open_sessions(&self, _: &Run, _: i64, _: &str) -> Result<usize, DataError> {
            Ok(0)
        }
        async fn sessions(&self, _: &SessionFilter) -> Result<Vec<SessionRecord>, DataError> {
            Ok(Vec::new())
        }
        async fn session(
            &self,
            _: &str,
        ) -> Result<Option<(SessionRecord, Vec<ParticipantRecord>)>, DataError> {
            Ok(None)
        }
    }

    fn start(initiator: &str) -> CdrWrite {
        new_session(
            "two-party",
            initiator,
            None,
            None,
            &[(initiator, "d".into())],
        )
        .1
    }

    /// Starts queued together go in one batch; a batch the database refuses is tried one
    /// start at a time, so only the refused start fails.
    #[tokio::test]
    async fn queued_starts_are_written_together_and_one_refusal_stays_its_own() {
        let fake = Arc::new(Fake::default());
        let log = Arc::new(CdrLog::start(
            fake.clone(),
            Run {
                owner: Run::STANDALONE.into(),
                epoch: 1,
            },
        ));
        // The writer is held on a counter update while the starts queue behind it.
        log.write(CdrWrite::Participants(Vec::new()));
        let mut waiting = Vec::new();
        for who in ["a@x", "b@x", "bad@x", "c@x"] {
            let log = log.clone();
            waiting.push(tokio::spawn(async move { log.write_now(start(who)).await }));
        }
        tokio::task::yield_now().await;
        while log.queued.load(Ordering::Relaxed) < 5 {
            tokio::task::yield_now().await;
        }
        fake.gate.notify_one();
        let mut outcomes = Vec::new();
        for w in waiting {
            outcomes.push(w.await.unwrap().is_ok());
        }
        assert_eq!(outcomes, [true, true, false, true]);
        assert_eq!(*fake.batches.lock(), [4], "one batch of every queued start");
        let mut started = fake.started.lock().clone();
        started.sort();
        assert_eq!(started, ["a@x", "b@x", "c@x"]);
    }
}
