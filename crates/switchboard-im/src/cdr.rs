//! Call detail records, written behind the request path, in order, by one writer task.
//!
//! The IM service decides under its locks and never waits there: it hands each CDR write
//! (a session started, counters, an escalation, a session ended) to [`CdrLog`], and one
//! task applies them to [`CdrData`] in the order given. A write the database cannot take
//! now ([`DataError::is_unavailable`]) goes to the local spool (`spool.rs`, fsync'd),
//! when the service has one; without one it is retried in memory, in order, with backoff
//! until it can (a crash loses what is still queued).
//!
//! The spool keeps the order: once a write went there, every later write goes there too
//! until the writer has drained it (tried with backoff, 100 ms to 5 s): its records
//! applied in order, each under the run that made it, and the file removed. Nothing goes
//! straight to the database while the spool holds records. A server's start replays a
//! spool an earlier run left before closing that run's open sessions ([`recover`]).
//!
//! A new pager conversation is different: its start is written **before** its first
//! message is relayed ([`CdrLog::write_now`], tried once, the caller waits), and a
//! failure refuses the message (503), so no conversation goes unrecorded. A start the
//! spool took (on disk) is written: the message goes on. After a failure (of the
//! database without a spool, of the spool with one), or while the queue is long,
//! [`CdrLog::accepting`] is false for a few seconds and new sessions are refused at once
//! rather than each waiting on what just failed; then one is tried again. No session is
//! refused for a counter update.
//!
//! Counter updates carry totals (last value wins), so when the queue is over its bound
//! an update is dropped: a later one carries the same totals. Starts, escalations and
//! ends are never dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use switchboard_core::{CdrData, DataError, ParticipantRecord, Run, SessionRecord};

use crate::spool::{Record, Spool, SpoolError};
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
/// How often closing an earlier run's sessions is tried again while it fails.
const CLOSE_RETRY: Duration = Duration::from_secs(5);
/// Spooled records read at once.
const REPLAY_CHUNK: usize = 512;
/// Spooled records applied before the writer turns to the jobs queued meanwhile.
const DRAIN_BUDGET: usize = 2048;

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

/// One CDR write (as spooled, too).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

type Waiter = oneshot::Sender<Result<(), DataError>>;

enum Job {
    Write(CdrWrite),
    /// Tried once; the outcome goes back to the one waiting.
    WriteNow(CdrWrite, Waiter),
    /// Answered once every write queued before it was applied, spooled (safe on disk) or
    /// given up.
    Flush(oneshot::Sender<()>),
    /// What follows is recorded under this run (a pool front end rejoined after being
    /// fenced); sessions its earlier runs left open are closed.
    NewRun(Run),
}

/// The ordered CDR writer (see the module header).
pub(crate) struct CdrLog {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
}

/// When a write last failed because neither the database nor the spool could take it.
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
    /// Starts the writer over `data`, recording sessions as `run`'s, spooling to `spool`
    /// (if any) what the database cannot take. Records a spool already holds are
    /// drained first (see [`recover`], which a server runs before this).
    pub(crate) fn start(data: Arc<dyn CdrData>, run: Run, spool: Option<Arc<Spool>>) -> CdrLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Health::default());
        let writer = Writer {
            data,
            run,
            queued: queued.clone(),
            health: health.clone(),
            spool: spool.map(|file| Spooling {
                file,
                pending: false,
                progress: Progress::default(),
                next_drain: tokio::time::Instant::now(),
                wait: RETRY_FIRST,
            }),
            close_due: None,
        };
        tokio::spawn(writer.run(rx));
        CdrLog { tx, queued, health }
    }

    /// Records what follows under `run` (a pool front end's new epoch after a fence),
    /// after everything queued before; then closes what earlier runs left open.
    pub(crate) fn new_run(&self, run: Run) {
        let _ = self.tx.send(Job::NewRun(run));
    }

    /// Whether a new session may be started now: no write failed a moment ago and the
    /// queue is short. With a spool, the database being down is no failure: the spool
    /// takes the writes; only a spool that cannot be written is.
    pub(crate) fn accepting(&self) -> bool {
        !self.health.refusing() && self.queued.load(Ordering::Relaxed) < QUEUE_BOUND
    }

    /// Writes `w` after everything queued before it, trying once, and says whether it
    /// was written, to the database or safely to the spool (waiting at most a few
    /// seconds).
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

    /// Waits until everything queued so far is written (to the database or the spool),
    /// at most `limit`; false when time ran out.
    pub(crate) async fn flush(&self, limit: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_err() {
            return true;
        }
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// The spool as the writer keeps it.
struct Spooling {
    file: Arc<Spool>,
    /// Records wait in the file. Until they are drained every write goes there too, so
    /// the database takes the writes in the order they were made.
    pending: bool,
    /// How far the file was applied already (the next drain goes on from there).
    progress: Progress,
    next_drain: tokio::time::Instant,
    wait: Duration,
}

/// The writer task's state (see the module header).
struct Writer {
    data: Arc<dyn CdrData>,
    run: Run,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
    spool: Option<Spooling>,
    /// When to close the sessions earlier runs left open (after a new run, until done).
    close_due: Option<tokio::time::Instant>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        if let Some(s) = &mut self.spool {
            let file = s.file.clone();
            // A spool that cannot even be looked at holds nothing this run can replay:
            // writes go to the database, and only when it fails too is a conversation
            // refused (taking it for a spool with records would refuse them all, forever).
            s.pending = match blocking(move || file.is_empty()).await {
                Ok(empty) => !empty,
                Err(e) => {
                    tracing::error!(error = %e, path = %s.file.path().display(), "cannot read the CDR spool; it is not used until it can be");
                    false
                }
            };
        }
        // A job taken off the queue while gathering others, to be handled next (in order).
        let mut carried: Option<Job> = None;
        loop {
            if self.drain_due() {
                self.drain().await;
            }
            if self
                .close_due
                .is_some_and(|at| at <= tokio::time::Instant::now())
            {
                self.close_earlier_runs().await;
            }
            let job = match carried.take() {
                Some(job) => job,
                None => match [self.next_drain(), self.close_due]
                    .into_iter()
                    .flatten()
                    .min()
                {
                    Some(at) => tokio::select! {
                        job = rx.recv() => match job {
                            Some(job) => job,
                            None => return,
                        },
                        () = tokio::time::sleep_until(at) => continue,
                    },
                    None => match rx.recv().await {
                        Some(job) => job,
                        None => return,
                    },
                },
            };
            match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                }
                Job::NewRun(run) => {
                    self.run = run;
                    self.close_due = Some(tokio::time::Instant::now());
                }
                job if self.spooling() => {
                    // Everything queued goes to the spool behind what waits there, in one
                    // append (one fsync) for as many writes as are queued.
                    let mut jobs = vec![job];
                    while jobs.len() < START_BATCH {
                        match rx.try_recv() {
                            Ok(job @ (Job::Flush(_) | Job::NewRun(_))) => {
                                carried = Some(job);
                                break;
                            }
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    self.spool_jobs(jobs).await;
                }
                Job::WriteNow(CdrWrite::Start(s, parts), done) => {
                    // Group commit: the starts queued right behind this one (many pairs
                    // beginning at once, a server just started) go in one transaction,
                    // each waiter answered with its outcome, instead of one transaction
                    // each.
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
                    let (batch, began) = (starts.len(), Instant::now());
                    let outcomes = self.start_now(starts).await;
                    tracing::debug!(
                        batch,
                        ms = began.elapsed().as_millis() as u64,
                        "CDR starts written"
                    );
                    for (done, r) in waiters.into_iter().zip(outcomes) {
                        let _ = done.send(r);
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Job::WriteNow(w, done) => {
                    let mut r = apply(self.data.as_ref(), &self.run, &w).await;
                    if self.spool_takes(&r) {
                        r = self.append(&[w]).await;
                    } else {
                        note_outcome(&self.health, &r);
                    }
                    let _ = done.send(r);
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                }
                Job::Write(w) => self.settle(VecDeque::from([w])).await,
            }
        }
    }

    /// Closes the sessions this owner's earlier runs left open (a fenced front end's:
    /// the reaper closed those it knew of; any begun while it was being fenced are
    /// closed here). Retried every few seconds while the database cannot answer.
    async fn close_earlier_runs(&mut self) {
        match self
            .data
            .close_open_sessions(&self.run, now_ms(), "front end fenced")
            .await
        {
            Ok(n) => {
                self.close_due = None;
                if n > 0 {
                    tracing::info!(
                        sessions = n,
                        "closed IM sessions of the run before the fence"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot close the IM sessions of the run before the fence yet");
                self.close_due = Some(tokio::time::Instant::now() + CLOSE_RETRY);
            }
        }
    }

    /// Writes sessions' starts in one transaction; when the database cannot answer, to
    /// the spool. One outcome per start.
    async fn start_now(
        &mut self,
        starts: Vec<(SessionRecord, Vec<ParticipantRecord>)>,
    ) -> Vec<Result<(), DataError>> {
        let r = self.data.start_sessions(&self.run, &starts).await;
        if self.spool_takes(&r) {
            let writes: Vec<CdrWrite> = starts
                .into_iter()
                .map(|(s, parts)| CdrWrite::Start(s, parts))
                .collect();
            let n = writes.len();
            return vec![self.append(&writes).await; n];
        }
        note_outcome(&self.health, &r);
        match r {
            // The database refused the batch itself (not a passing failure): one bad row
            // must not refuse the conversations batched with it, so each is tried alone.
            Err(e) if !e.is_unavailable() && starts.len() > 1 => {
                let mut each = Vec::with_capacity(starts.len());
                for (s, parts) in &starts {
                    each.push(self.data.start_session(&self.run, s, parts).await);
                }
                each
            }
            r => vec![r; starts.len()],
        }
    }

    /// Spools queued jobs while earlier writes wait in the spool; a waiter learns whether
    /// its write is safe. Should the spool fail, the other writes are held in memory.
    async fn spool_jobs(&mut self, jobs: Vec<Job>) {
        let mut writes = Vec::with_capacity(jobs.len());
        let mut waiters = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Write(w) => {
                    writes.push(w);
                    waiters.push(None);
                }
                Job::WriteNow(w, done) => {
                    writes.push(w);
                    waiters.push(Some(done));
                }
                // Never gathered (they are carried instead).
                Job::Flush(done) => {
                    let _ = done.send(());
                }
                Job::NewRun(_) => {}
            }
        }
        let r = self.append(&writes).await;
        let mut held = VecDeque::new();
        for (w, done) in writes.into_iter().zip(waiters) {
            match done {
                Some(done) => {
                    let _ = done.send(r.clone());
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                }
                None if r.is_ok() => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                }
                None => held.push_back(w),
            }
        }
        self.settle(held).await;
    }

    /// Writes `ws` in order: to the database while nothing waits in the spool, otherwise
    /// (or once the database cannot answer) to the spool; retried with backoff while
    /// neither takes them, in memory. A write the database refuses outright is dropped.
    async fn settle(&mut self, mut ws: VecDeque<CdrWrite>) {
        let mut wait = RETRY_FIRST;
        let mut told = false;
        while let Some(w) = ws.front() {
            if !self.spooling() {
                let began = Instant::now();
                let r = apply(self.data.as_ref(), &self.run, w).await;
                if let CdrWrite::Participants(rows) = w {
                    tracing::debug!(
                        rows = rows.len(),
                        ms = began.elapsed().as_millis() as u64,
                        "CDR counters written"
                    );
                }
                match r {
                    Ok(()) => {
                        note_outcome(&self.health, &r);
                        ws.pop_front();
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) if e.is_unavailable() => {
                        if self.spool.is_none() {
                            self.health.failed();
                            if !told {
                                told = true;
                                tracing::error!(error = %e, "cannot write CDR now; holding writes in order and refusing new IM sessions until it can");
                            }
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(RETRY_MAX);
                            continue;
                        }
                        // The spool takes this write and every later one.
                    }
                    Err(e) => {
                        // Not a passing failure: retrying would block every write behind it.
                        tracing::error!(error = %e, write = ?w, "CDR write refused by the database; dropped");
                        ws.pop_front();
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let all: Vec<CdrWrite> = ws.iter().cloned().collect();
            if self.append(&all).await.is_ok() {
                self.queued.fetch_sub(ws.len(), Ordering::Relaxed);
                return;
            }
            if !told {
                told = true;
                tracing::error!("cannot write CDR to the database nor to its spool; holding writes in memory, in order, and refusing new IM sessions until one takes them");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            if self.drain_due() {
                self.drain().await;
            }
        }
    }

    /// Whether `r` is the database being unavailable and there is a spool to take the
    /// write instead.
    fn spool_takes(&self, r: &Result<(), DataError>) -> bool {
        self.spool.is_some() && matches!(r, Err(e) if e.is_unavailable())
    }

    fn spooling(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| s.pending)
    }

    /// When the spool is to be drained next, while it holds records.
    fn next_drain(&self) -> Option<tokio::time::Instant> {
        self.spool
            .as_ref()
            .filter(|s| s.pending)
            .map(|s| s.next_drain)
    }

    fn drain_due(&self) -> bool {
        self.next_drain()
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// Appends `writes` to the spool as this run's; Ok once they are on disk.
    async fn append(&mut self, writes: &[CdrWrite]) -> Result<(), DataError> {
        let Some(s) = &mut self.spool else {
            return Err(DataError::Unavailable("no CDR spool".into()));
        };
        let records: Vec<Record> = writes
            .iter()
            .map(|w| Record {
                run: self.run.clone(),
                write: w.clone(),
            })
            .collect();
        let file = s.file.clone();
        match blocking(move || file.append(&records)).await {
            Ok(()) => {
                if !s.pending {
                    s.pending = true;
                    s.wait = RETRY_FIRST;
                    s.next_drain = tokio::time::Instant::now() + RETRY_FIRST;
                    tracing::warn!(path = %s.file.path().display(), "the database cannot take CDR writes; spooling them until it can");
                }
                if self.health.recovered() {
                    tracing::info!("CDR writes go through again (to the spool)");
                }
                Ok(())
            }
            Err(e) => {
                self.health.failed();
                tracing::error!(error = %e, path = %s.file.path().display(), "cannot write the CDR spool");
                Err(DataError::Unavailable(e.to_string()))
            }
        }
    }

    /// Applies part of the spool to the database; once all of it went in, the spool is
    /// removed and writes go to the database again.
    async fn drain(&mut self) {
        let Some(s) = &mut self.spool else { return };
        match replay(
            self.data.as_ref(),
            &s.file,
            &mut s.progress,
            &self.run,
            DRAIN_BUDGET,
        )
        .await
        {
            Ok(true) => {
                let done = std::mem::take(&mut s.progress);
                s.pending = false;
                s.wait = RETRY_FIRST;
                tracing::info!(
                    records = done.applied,
                    "CDR spool drained into the database; writing to it directly again"
                );
                if done.foreign {
                    // Sessions of an earlier run were recorded only now: close them as its
                    // start would have.
                    close_left_open(self.data.as_ref(), &self.run).await;
                }
            }
            // More to do: after the jobs waiting now.
            Ok(false) => s.next_drain = tokio::time::Instant::now(),
            Err(e) => {
                tracing::debug!(error = %e, "CDR spool not drained yet");
                s.next_drain = tokio::time::Instant::now() + s.wait;
                s.wait = (s.wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// How far a replay of the spool got.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The offset up to which every record was applied.
    to: u64,
    applied: usize,
    /// Whether records of a run other than the replaying one were applied.
    foreign: bool,
}

/// Applies the spool's records from `progress.to` on, in order, each under the run that
/// made it, at most `budget` of them, then removes the file once it is all applied
/// (`Ok(true)`; `Ok(false)`: the budget ran out). Stops at the first record the database
/// cannot take now (`Err`; the file stays and `progress` says how far it got). Re-applying
/// a record is harmless (the data trait's writes are idempotent or last-value-wins, and the
/// records go in their order), so a crash at any point only causes records to be applied
/// again, never lost.
pub(crate) async fn replay(
    data: &dyn CdrData,
    spool: &Arc<Spool>,
    progress: &mut Progress,
    own: &Run,
    budget: usize,
) -> Result<bool, DataError> {
    let mut left = budget;
    loop {
        let (file, from) = (spool.clone(), progress.to);
        let chunk = blocking(move || file.read_from(from, REPLAY_CHUNK))
            .await
            .map_err(|e| DataError::Unavailable(e.to_string()))?;
        for (after, rec) in chunk.records {
            match apply(data, &rec.run, &rec.write).await {
                Ok(()) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, write = ?rec.write, "spooled CDR write refused by the database; dropped")
                }
            }
            progress.to = after;
            progress.applied += 1;
            progress.foreign |= rec.run != *own;
            left = left.saturating_sub(1);
        }
        // Past any torn or damaged line read after the last record.
        progress.to = chunk.next;
        if chunk.end {
            break;
        }
        if left == 0 {
            return Ok(false);
        }
    }
    let file = spool.clone();
    blocking(move || file.remove())
        .await
        .map_err(|e| DataError::Unavailable(e.to_string()))?;
    Ok(true)
}

/// What a server does with its CDR before it takes requests: replays the spool an
/// earlier run left (it crashed during an outage), each record under its own run, then
/// closes the sessions this server's earlier runs left open, so a session only the spool
/// knew of is recorded and then closed as a restart. When the database cannot take the
/// spool now, the file stays and the writer drains it later (closing then what it
/// recorded).
pub(crate) async fn recover(data: &dyn CdrData, run: &Run, spool: Option<&Arc<Spool>>) {
    if let Some(spool) = spool {
        let mut progress = Progress::default();
        match replay(data, spool, &mut progress, run, usize::MAX).await {
            Ok(_) if progress.applied > 0 => tracing::info!(
                records = progress.applied,
                path = %spool.path().display(),
                "replayed the CDR spool an earlier run left"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                path = %spool.path().display(),
                "cannot replay the CDR spool now; it is kept and replayed once the database answers"
            ),
        }
    }
    close_left_open(data, run).await;
}

/// Closes the sessions this server's earlier runs left open (a crash).
async fn close_left_open(data: &dyn CdrData, run: &Run) {
    match data
        .close_open_sessions(run, now_ms(), "server restart")
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(sessions = n, "closed IM sessions left open by the last run"),
        Err(e) => tracing::error!(error = %e, "cannot close IM sessions of the last run"),
    }
}

/// Runs a spool operation off the async workers (it blocks on the file system).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SpoolError::Io(std::io::Error::other(e))))
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
            None,
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

    /// A database like the real one where it matters to a replay: a session id keeps its
    /// first start, a session its first end, participants are upserted; every call fails
    /// as unavailable while `down`. `log` lists what each call changed, in order.
    #[derive(Default)]
    struct Db {
        down: std::sync::atomic::AtomicBool,
        log: Mutex<Vec<String>>,
        sessions: Mutex<Vec<(Run, SessionRecord)>>,
        parts: Mutex<std::collections::BTreeMap<(String, String), i64>>,
    }

    impl Db {
        fn up(&self) -> Result<(), DataError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(DataError::Unavailable("down".into()));
            }
            Ok(())
        }
        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().clone()
        }
        /// Each session: id, its run's epoch, end reason.
        fn sessions(&self) -> Vec<(String, i64, Option<String>)> {
            self.sessions
                .lock()
                .iter()
                .map(|(r, s)| (s.id.clone(), r.epoch, s.end_reason.clone()))
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl CdrData for Db {
        async fn begin_run(&self, owner: &str, _: i64) -> Result<Run, DataError> {
            Ok(Run {
                owner: owner.into(),
                epoch: 1,
            })
        }
        async fn start_session(
            &self,
            run: &Run,
            s: &SessionRecord,
            _: &[ParticipantRecord],
        ) -> Result<(), DataError> {
            self.up()?;
            let mut all = self.sessions.lock();
            if !all.iter().any(|(_, x)| x.id == s.id) {
                all.push((run.clone(), s.clone()));
                self.log
                    .lock()
                    .push(format!("start {} run{}", s.id, run.epoch));
            }
            Ok(())
        }
        async fn start_sessions(
            &self,
            run: &Run,
            all: &[(SessionRecord, Vec<ParticipantRecord>)],
        ) -> Result<(), DataError> {
            self.up()?;
            for (s, p) in all {
                self.start_session(run, s, p).await?;
            }
            Ok(())
        }
        async fn update_participants(
            &self,
            rows: &[(String, ParticipantRecord)],
        ) -> Result<(), DataError> {
            self.up()?;
            for (id, p) in rows {
                self.parts
                    .lock()
                    .insert((id.clone(), p.address.clone()), p.messages);
                self.log
                    .lock()
                    .push(format!("count {id} {} {}", p.address, p.messages));
            }
            Ok(())
        }
        async fn set_escalated_from(&self, _: &str, _: &str) -> Result<(), DataError> {
            self.up()
        }
        async fn end_session(&self, id: &str, at: i64, reason: &str) -> Result<(), DataError> {
            self.up()?;
            let mut all = self.sessions.lock();
            if let Some((_, s)) = all.iter_mut().find(|(_, s)| s.id == id) {
                if s.ended_at_ms.is_none() {
                    s.ended_at_ms = Some(at);
                    s.end_reason = Some(reason.into());
                    self.log.lock().push(format!("end {id} {reason}"));
                }
            }
            Ok(())
        }
        async fn close_open_sessions(
            &self,
            run: &Run,
            at: i64,
            reason: &str,
        ) -> Result<usize, DataError> {
            self.up()?;
            let mut n = 0;
            for (r, s) in self.sessions.lock().iter_mut() {
                if r.owner == run.owner && r.epoch < run.epoch && s.ended_at_ms.is_none() {
                    s.ended_at_ms = Some(at);
                    s.end_reason = Some(reason.into());
                    self.log.lock().push(format!("end {} {reason}", s.id));
                    n += 1;
                }
            }
            self.log.lock().push(format!("closed run{}", run.epoch));
            Ok(n)
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

    fn run(epoch: i64) -> Run {
        Run {
            owner: "fe1".into(),
            epoch,
        }
    }

    /// A write of session `start`'s counters: `who` sent `messages`.
    fn counts(start: &CdrWrite, who: &str, messages: i64) -> Vec<(String, ParticipantRecord)> {
        let CdrWrite::Start(s, _) = start else {
            panic!("not a start")
        };
        vec![(
            s.id.clone(),
            ParticipantRecord {
                address: who.into(),
                device: String::new(),
                joined_at_ms: s.started_at_ms,
                left_at_ms: None,
                messages,
                bytes: messages,
            },
        )]
    }

    fn id(start: &CdrWrite) -> String {
        match start {
            CdrWrite::Start(s, _) => s.id.clone(),
            _ => panic!("not a start"),
        }
    }

    fn end(start: &CdrWrite, who: &str, messages: i64, reason: &str) -> CdrWrite {
        CdrWrite::End {
            id: id(start),
            rows: counts(start, who, messages),
            at_ms: 5,
            reason: reason.into(),
        }
    }

    fn spooled(spool: &Spool) -> Vec<Record> {
        spool
            .read_from(0, usize::MAX)
            .unwrap()
            .records
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// Waits (real time: the writer backs off from 100 ms) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// During an outage every write, a new conversation's start too, goes to the spool in
    /// order and the start is answered Ok; new sessions are still accepted. When the
    /// database is back the spool is drained in order, each record once, the file removed,
    /// and writes go straight to the database again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_spooled_in_order_and_drained_once_the_database_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::new(dir.path().join("cdr-spool")));
        let db = Arc::new(Db::default());
        db.set_down(true);
        let log = CdrLog::start(db.clone(), run(2), Some(spool.clone()));
        let a = start("a@x");
        let b = start("b@x");
        log.write_now(a.clone()).await.expect("spooled start is Ok");
        log.write(CdrWrite::Participants(counts(&a, "a@x", 1)));
        log.write(end(&a, "a@x", 2, "timeout"));
        assert!(log.accepting(), "a healthy spool keeps sessions starting");
        log.write_now(b.clone()).await.expect("spooled start is Ok");
        assert!(log.flush(Duration::from_secs(5)).await);
        assert!(db.log().is_empty(), "nothing reached the database");
        let kinds: Vec<String> = spooled(&spool)
            .iter()
            .map(|r| {
                assert_eq!(r.run, run(2));
                match &r.write {
                    CdrWrite::Start(s, _) => format!("start {}", s.id),
                    CdrWrite::Participants(_) => "count".into(),
                    CdrWrite::End { id, .. } => format!("end {id}"),
                    CdrWrite::Escalated { .. } => "escalated".into(),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                format!("start {}", id(&a)),
                "count".into(),
                format!("end {}", id(&a)),
                format!("start {}", id(&b)),
            ]
        );

        db.set_down(false);
        // Written while the spool still holds records: it must go behind them.
        let c = start("c@x");
        log.write_now(c.clone()).await.unwrap();
        until("the spool is drained", || !spool.path().exists()).await;
        assert!(log.flush(Duration::from_secs(5)).await);
        let d = start("d@x");
        log.write_now(d.clone()).await.unwrap();
        assert_eq!(
            db.log(),
            [
                format!("start {} run2", id(&a)),
                format!("count {} a@x 1", id(&a)),
                format!("count {} a@x 2", id(&a)),
                format!("end {} timeout", id(&a)),
                format!("start {} run2", id(&b)),
                format!("start {} run2", id(&c)),
                format!("start {} run2", id(&d)),
            ]
        );
        assert!(
            !spool.path().exists(),
            "a write after the drain went direct"
        );
    }

    /// A spool a crashed run left (sessions only it knew of) is replayed under that run
    /// before the new run closes what earlier runs left open.
    #[tokio::test]
    async fn a_crashed_runs_spool_is_replayed_under_its_run_before_sessions_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::new(dir.path().join("cdr-spool")));
        let (a, b) = (start("a@x"), start("b@x"));
        spool
            .append(&[
                Record {
                    run: run(1),
                    write: a.clone(),
                },
                Record {
                    run: run(1),
                    write: CdrWrite::Participants(counts(&a, "a@x", 3)),
                },
                Record {
                    run: run(1),
                    write: b.clone(),
                },
                Record {
                    run: run(1),
                    write: end(&b, "b@x", 1, "bye"),
                },
            ])
            .unwrap();
        let db = Db::default();
        recover(&db, &run(2), Some(&spool)).await;
        assert_eq!(
            db.log(),
            [
                format!("start {} run1", id(&a)),
                format!("count {} a@x 3", id(&a)),
                format!("start {} run1", id(&b)),
                format!("count {} b@x 1", id(&b)),
                format!("end {} bye", id(&b)),
                format!("end {} server restart", id(&a)),
                "closed run2".into(),
            ]
        );
        assert!(!spool.path().exists());
    }

    /// The database is down when the new run starts: the spool is kept, and the writer
    /// drains it once the database answers, under the old run, then closes the old run's
    /// sessions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_kept_through_an_outage_at_start_is_drained_later_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::new(dir.path().join("cdr-spool")));
        let a = start("a@x");
        spool
            .append(&[Record {
                run: run(1),
                write: a.clone(),
            }])
            .unwrap();
        let db = Arc::new(Db::default());
        db.set_down(true);
        recover(db.as_ref(), &run(2), Some(&spool)).await;
        assert!(spool.path().exists(), "kept for later");
        let log = CdrLog::start(db.clone(), run(2), Some(spool.clone()));
        // Behind the spooled start, so it goes to the spool too.
        let b = start("b@x");
        log.write_now(b.clone()).await.unwrap();
        db.set_down(false);
        until("the spool is drained", || !spool.path().exists()).await;
        until("the old run is closed", || {
            db.log().last().map(String::as_str) == Some("closed run2")
        })
        .await;
        assert_eq!(
            db.log(),
            [
                format!("start {} run1", id(&a)),
                format!("start {} run2", id(&b)),
                format!("end {} server restart", id(&a)),
                "closed run2".into(),
            ]
        );
    }

    /// A fenced front end's new run: what follows is recorded under it, and sessions of
    /// earlier runs still open are closed, retried while the database cannot answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_run_records_under_it_and_closes_what_earlier_runs_left_open() {
        let db = Arc::new(Db::default());
        let log = CdrLog::start(db.clone(), run(1), None);
        let a = start("a@x");
        log.write_now(a.clone()).await.unwrap();
        db.set_down(true);
        log.new_run(run(2));
        // Tried at once, refused; tried again a few seconds later, once it can be.
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.set_down(false);
        let b = start("b@x");
        log.write_now(b.clone()).await.unwrap();
        until("the earlier run is closed", || {
            db.log().last().map(String::as_str) == Some("closed run2")
        })
        .await;
        assert_eq!(
            db.log(),
            [
                format!("start {} run1", id(&a)),
                format!("start {} run2", id(&b)),
                format!("end {} front end fenced", id(&a)),
                "closed run2".into(),
            ]
        );
        assert_eq!(
            db.sessions(),
            [
                (id(&a), 1, Some("front end fenced".into())),
                (id(&b), 2, None)
            ]
        );
    }

    /// A crash mid-append leaves a torn last line: the replay applies the whole records and
    /// skips it, without a panic.
    #[tokio::test]
    async fn a_torn_last_line_is_skipped_on_replay() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::new(dir.path().join("cdr-spool")));
        let (a, b) = (start("a@x"), start("b@x"));
        spool
            .append(&[Record {
                run: run(1),
                write: a.clone(),
            }])
            .unwrap();
        let torn = serde_json::to_string(&Record {
            run: run(1),
            write: b.clone(),
        })
        .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(spool.path())
            .unwrap();
        f.write_all(&torn.as_bytes()[..torn.len() - 7]).unwrap();
        drop(f);
        let db = Db::default();
        recover(&db, &run(2), Some(&spool)).await;
        assert_eq!(
            db.sessions(),
            [(id(&a), 1, Some("server restart".to_owned()))]
        );
        assert!(!spool.path().exists());
    }

    /// A crash after the records were applied but before the file was removed replays
    /// them again: the records stay as the first replay left them.
    #[tokio::test]
    async fn replaying_a_spool_twice_leaves_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::new(dir.path().join("cdr-spool")));
        let a = start("a@x");
        let records = [
            Record {
                run: run(1),
                write: a.clone(),
            },
            Record {
                run: run(1),
                write: CdrWrite::Participants(counts(&a, "a@x", 1)),
            },
            Record {
                run: run(1),
                write: end(&a, "a@x", 4, "bye"),
            },
        ];
        spool.append(&records).unwrap();
        let bytes = std::fs::read(spool.path()).unwrap();
        let db = Db::default();
        let mut progress = Progress::default();
        assert!(replay(&db, &spool, &mut progress, &run(2), usize::MAX)
            .await
            .unwrap());
        let first = (db.sessions(), db.parts.lock().clone());
        assert_eq!(first.0, [(id(&a), 1, Some("bye".to_owned()))]);
        // The removal never reached the disk.
        std::fs::write(spool.path(), &bytes).unwrap();
        recover(&db, &run(2), Some(&spool)).await;
        assert_eq!((db.sessions(), db.parts.lock().clone()), first);
        assert_eq!(
            db.parts.lock().get(&(id(&a), "a@x".to_owned())),
            Some(&4),
            "the last counters win again"
        );
    }

    /// A spool that cannot take a write (full) refuses the new conversation and makes the
    /// service refuse new sessions for a while; the database being down alone does not.
    #[tokio::test]
    async fn a_spool_that_cannot_be_written_refuses_new_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::with_limit(dir.path().join("cdr-spool"), 10));
        let db = Arc::new(Db::default());
        db.set_down(true);
        let log = CdrLog::start(db.clone(), run(2), Some(spool.clone()));
        assert!(log.write_now(start("a@x")).await.is_err());
        assert!(!log.accepting());
        assert!(!spool.path().exists() || spooled(&spool).is_empty());
    }
}
