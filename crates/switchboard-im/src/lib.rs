//! # switchboard-im: the IM service (the "IM MCU")
//!
//! Every instant message between users passes through here, which is what makes call
//! detail records possible (the seed: "the IM MCU sits in the middle of every IM, even
//! two-party"). The service attaches to the router as its [`ImHook`]: the router hands
//! it each pager-mode MESSAGE (RFC 3428) with a [`Relay`], which the service answers or
//! lets go on, learning the outcome in the same call; the service originates MESSAGEs
//! through the router's [`Deliverer`] to deliver stored ones.
//! Both seams are `switchboard-core`'s (`seam`): this crate depends on core, sip-message
//! and msrtc, never on the router or a transport.
//!
//! ## Layout: one part per concern, each with its own state
//! [`ImService`] owns no map of its own: it builds the parts, implements the router's
//! [`ImHook`] by dispatching to them, runs the periodic sweep (each part's `sweep`) and
//! the shutdown. Each part owns its state behind its own lock:
//! - `pager.rs` `pager::Pager`: two-party pager conversations, by pair.
//! - `session.rs` `session::Sessions`: session-mode dialogs by Call-ID, the Call-IDs
//!   of ended ones (481), INVITEs on the way and the places under the sessions cap.
//! - `offline.rs` `offline::Offline`: keeping, delivering and expiring offline
//!   messages, and who is being delivered to now.
//! - `bridge.rs` `bridge::Bridges`: Lync sessions bridged to pager-only users.
//! - `conference/` `conference::Conferences`: group chats (`mod.rs`), Lync
//!   conferencing (`c3p.rs`) and the roster (`roster.rs`): conferences with their
//!   members' dialogs, the places under the group-chat cap.
//! - `cdr.rs` `cdr::CdrLog`: the ordered CDR writer, and `spool.rs` its local spool;
//!   `directory.rs` `directory::Names`: display names and user lookups; `caps.rs`: the
//!   per-user caps.
//!
//! Parts never hold the service: what one needs of another comes in as an argument (a
//! `&CdrLog`, the pager side of a bridge, a closure taking a sessions-cap place) or as a
//! shared handle (`Arc<CdrLog>`, `Arc<Names>`, `Arc<Offline>`, the deliverer).
//!
//! ## Its data, and its locks
//! The service holds its data as the traits of switchboard-core (`CdrData`,
//! `OfflineData`, `Directory`), never a store or SQL crate, and it never awaits them
//! while holding a lock: CDR writes are queued (`cdr.rs`), offline messages are read
//! and written at the async entry points (`offline.rs`), and what it needs of the
//! directory (display names, whether an `/invite` target is a user) is looked up there
//! and kept in memory (`directory.rs`). Lock rule: a part takes only its own lock, holds
//! it only to decide or apply (never across an await, a data call or a network send:
//! sends are spawned after), and calls no other part's method while holding it, except
//! the in-memory `directory::Names` cache and the CDR queue, which take no other
//! lock. One exception, written in its header: a place under a per-user cap (`caps.rs`)
//! is taken under the places' lock, with the parts' locks taken only inside its count.
//!
//! ## What it does
//! - **Pager-mode conversations**: MESSAGEs between the same two users form one
//!   conversation (a two-party session) until it has been idle for `pager_idle`. Each has
//!   a CDR: start, end, end reason, initiator, every participant with device, join and
//!   leave times, messages and bytes per participant. Message content is never recorded.
//! - **CDR durability** (`cdr.rs`): a pager conversation's session row is written
//!   before its first message is relayed (a failure refuses the message with 503 and
//!   Retry-After: the service is never bypassed); counters are flushed every
//!   `flush_interval`; the end is written when it ends. Those later writes go through
//!   one ordered writer task. While the database cannot answer, writes (a new
//!   conversation's start too, which then is not refused) go to a local fsync'd spool
//!   (`spool.rs`, `ImConfig::cdr_spool`), replayed in order when it answers again and at
//!   the next start; without a spool they are retried in memory. Sessions
//!   that a crash left open are closed with reason `server restart` at the next start; a
//!   graceful stop closes them with `server shutdown` and waits for the writes.
//! - **Offline messages**: a MESSAGE to a known user with no device signed in is kept
//!   (answered 202 Accepted), bounded per user and in age, and delivered in order, once
//!   (deleted only after a device accepted it), when the user next registers
//!   (`offline.rs`).
//! - **Session-mode IM** (`session.rs`; INVITE `m=message`, MESSAGE in the dialog,
//!   BYE): a two-party session per dialog, counted per sender; 481 for requests in an
//!   ended session.
//! - **Conferences** (`conference/mod.rs`) with their own URIs, joined by MESSAGE or
//!   INVITE, escalated from two-party chats by `/invite` or REFER, and their roster by
//!   subscription (RFC 4575, `conference/roster.rs`).
//! - **Lync conferencing** (C3P, `conference/c3p.rs`): focus factory, focus and IM MCU
//!   over the same conferences, so Lync and standard users share one group chat.
//! - **Bridging** (`bridge.rs`): a Lync user's session-mode chat with a user whose devices
//!   only do pager mode.
//! - **Per-user caps** (`caps.rs`): group chats a user organises, session-mode sessions a
//!   user opened, and messages kept for one recipient from one sender are bounded.
//!
//! ## Why a dialog-stateful proxy, not a B2BUA, for two-party sessions
//! The core record-routes every INVITE, so each in-dialog request of a two-party session
//! passes through the server; the service watches and counts them by Call-ID. That keeps
//! the clients' own dialog (tags, CSeq, route set) intact end to end, which Lync clients
//! sign (MS-SIPAE) and which standard clients expect, with no second dialog to keep in
//! step or to lose in a crash, while still giving what a B2BUA would: the server in the
//! path of every message, the session's state and CDR, and the power to refuse (481
//! after BYE, 503 when the CDR cannot be written). For conferences the service does act
//! as an endpoint (the conference URI), because there it really is one party of many.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sip_message::{HeaderName, Message};
use switchboard_core::seam::{Deliverer, Flow, ImHook, Reach, Relay, Responder, ServiceAnswer};
use switchboard_core::{
    CdrData, DataError, Directory, OfflineData, OfflineMessage, ParticipantRecord, Run,
};

mod bridge;
mod caps;
mod cdr;
mod conference;
mod directory;
mod offline;
mod pager;
mod session;
mod spool;

pub use conference::c3p::focus_factory_uri;

/// The readers of untrusted input that are otherwise private to this crate, for the fuzz
/// targets in `fuzz/`. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::bridge::first_message;
    pub use crate::conference::c3p::conference_of;
    pub use crate::conference::command_of;
    pub use crate::conference::roster::roster_document;
    pub use crate::offers_message_media;
}
use tokio::time::Instant;

/// IM service settings.
#[derive(Debug, Clone)]
pub struct ImConfig {
    /// A pager-mode conversation ends after this long without a message.
    pub pager_idle: Duration,
    /// A session-mode session (INVITE) with no traffic for this long is ended (a client
    /// that vanished without BYE).
    pub session_idle: Duration,
    /// Messages kept per offline user at most; further ones are refused (480).
    pub offline_max_per_user: usize,
    /// Messages kept for one offline user from one sender at most: further ones from that
    /// sender are refused (480) while others can still leave theirs.
    pub offline_max_per_sender: usize,
    /// Open group chats one user may organise (by `/invite`, REFER or C3P); the next is
    /// refused (403).
    pub max_group_chats_per_user: usize,
    /// Open session-mode IM sessions one user may have opened (INVITEs they sent that the
    /// service tracks or answers); the next INVITE is refused (403).
    pub max_sessions_per_user: usize,
    /// Kept messages older than this are dropped undelivered.
    pub offline_max_age: Duration,
    /// How often message counters are written to the CDR: what a crash (a front end
    /// killed) can lose of them, at most. Session rows are written before their first
    /// message and are never lost.
    pub flush_interval: Duration,
    /// The local file CDR writes are spooled to (fsync'd) while the database cannot take
    /// them, replayed when it can and at the next start. `None`: they are held in memory
    /// only, and a new conversation is refused while the database is down.
    pub cdr_spool: Option<PathBuf>,
    /// This server's id as a front end of an Enterprise pool: the conferences it creates
    /// carry it in their address, so every front end routes them here.
    pub front_end: Option<u32>,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            pager_idle: Duration::from_secs(600),
            session_idle: Duration::from_secs(3600),
            offline_max_per_user: 200,
            offline_max_per_sender: 20,
            max_group_chats_per_user: 100,
            max_sessions_per_user: 200,
            offline_max_age: Duration::from_secs(14 * 24 * 3600),
            // A quarter second: a killed front end loses at most that much of its
            // conversations' counts (measured at 1 s: 0.4–1 % of messages over ten kills),
            // for four small batched writes a second.
            flush_interval: Duration::from_millis(250),
            cdr_spool: None,
            front_end: None,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Participant {
    device: String,
    joined_at_ms: i64,
    /// Set when a conference participant leaves.
    left_at_ms: Option<i64>,
    messages: i64,
    bytes: i64,
    dirty: bool,
}

struct Conversation {
    id: String,
    /// Who started it (for a session-mode session: who sent the INVITE).
    initiator: String,
    last_activity: Instant,
    participants: HashMap<String, Participant>,
}

impl Participant {
    fn new(device: String, joined_at_ms: i64) -> Self {
        Participant {
            device,
            joined_at_ms,
            left_at_ms: None,
            messages: 0,
            bytes: 0,
            dirty: false,
        }
    }
}

impl Conversation {
    /// Makes `who` an active participant: a newcomer, or someone who left coming back
    /// (keeping their earlier counts). Returns whether they were not active before.
    fn admit(&mut self, who: &str) -> bool {
        match self.participants.get_mut(who) {
            Some(p) if p.left_at_ms.is_none() => false,
            Some(p) => {
                p.left_at_ms = None;
                p.dirty = true;
                true
            }
            None => {
                let mut p = Participant::new(String::new(), now_ms());
                p.dirty = true;
                self.participants.insert(who.to_owned(), p);
                true
            }
        }
    }

    fn records(
        &self,
        left_at_ms: Option<i64>,
        only_dirty: bool,
    ) -> Vec<(String, ParticipantRecord)> {
        self.participants
            .iter()
            .filter(|(_, p)| !only_dirty || p.dirty)
            .map(|(a, p)| {
                (
                    self.id.clone(),
                    ParticipantRecord {
                        address: a.clone(),
                        device: p.device.clone(),
                        joined_at_ms: p.joined_at_ms,
                        left_at_ms: p.left_at_ms.or(left_at_ms),
                        messages: p.messages,
                        bytes: p.bytes,
                    },
                )
            })
            .collect()
    }
}

/// The IM service. Create with [`ImService::start`], giving it the router's outbound
/// side as its [`Deliverer`], then give it to the router as its hook.
pub struct ImService {
    /// CDR writes, applied in order behind the request path.
    cdr: Arc<cdr::CdrLog>,
    /// Offline messages: kept, delivered on registration, expired.
    offline: Arc<offline::Offline>,
    config: ImConfig,
    /// Two-party pager conversations.
    pager: pager::Pager,
    /// Session-mode IM sessions, the ended ones' Call-IDs, INVITEs on the way.
    sessions: session::Sessions,
    /// Group chats: conferences, members' dialogs with them, Lync conferencing.
    conferences: Arc<conference::Conferences>,
    /// Lync sessions the service answers for pager-only users.
    bridges: bridge::Bridges,
    /// Display names and user lookups (read outside locks, kept in memory).
    names: Arc<directory::Names>,
}

type Rows = Vec<(String, ParticipantRecord)>;

/// Removes the conversations idle for `idle` (their final rows go to `ended`) and collects
/// the changed counters of the others into `dirty`. Returns the removed keys.
fn sweep<K: Clone + std::hash::Hash + Eq>(
    map: &mut HashMap<K, Conversation>,
    now: Instant,
    idle: Duration,
    ended: &mut Vec<(String, Rows)>,
    dirty: &mut Rows,
) -> Vec<K> {
    let mut gone = Vec::new();
    map.retain(|key, c| {
        if now.duration_since(c.last_activity) >= idle {
            ended.push((c.id.clone(), c.records(None, false)));
            gone.push(key.clone());
            false
        } else {
            dirty.extend(c.records(None, true));
            for p in c.participants.values_mut() {
                p.dirty = false;
            }
            true
        }
    });
    gone
}

/// Counts one message from `from` in `conv`.
fn count(conv: &mut Conversation, from: &str, device: String, bytes: usize) {
    conv.last_activity = Instant::now();
    if let Some(p) = conv.participants.get_mut(from) {
        p.messages += 1;
        p.bytes += bytes as i64;
        if !device.is_empty() {
            p.device = device;
        }
        p.dirty = true;
    }
}

/// Is this MESSAGE an instant message a person wrote (text, or CPIM-wrapped)? Receipts
/// (`message/imdn+xml`) and typing notices (`application/im-iscomposing+xml`) are relayed
/// but neither counted nor stored nor fanned out to groups.
pub(crate) fn is_instant_message(msg: &Message) -> bool {
    match msg.headers.get(&HeaderName::ContentType) {
        None => !msg.body.is_empty(),
        Some(ct) => {
            let ct = ct.trim().to_ascii_lowercase();
            ct.starts_with("text/") || ct.starts_with("message/cpim")
        }
    }
}

/// Does this SDP offer an MSRP-less IM session (`m=message ... sip`, the Lync style)?
pub fn offers_message_media(invite: &Message) -> bool {
    std::str::from_utf8(&invite.body)
        .map(|sdp| {
            sdp.lines()
                .any(|l| l.trim_start().to_ascii_lowercase().starts_with("m=message"))
        })
        .unwrap_or(false)
}

/// A refusal as the core's answer to a request the hook decides on.
/// What the service decides about a request the router holds for it (a [`Relay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Let it go on its way.
    Relay,
    /// Answer it with this status instead (e.g. 202 when stored for later delivery).
    Respond(u16),
    /// Answer it with this status and these extra header fields.
    RespondWith(u16, Vec<(String, String)>),
}

/// Carries out `decision` on `relay`: the final status when it was relayed.
async fn carry_out(relay: Relay, decision: Decision) -> Option<u16> {
    match decision {
        Decision::Relay => relay.forward().await,
        Decision::Respond(status) => {
            relay.respond(status, Vec::new()).await;
            None
        }
        Decision::RespondWith(status, headers) => {
            relay.respond(status, headers).await;
            None
        }
    }
}

pub(crate) fn decision(a: ServiceAnswer) -> Decision {
    Decision::RespondWith(a.status, a.headers)
}

/// An answer refusing a request with `status` and a Warning saying why (RFC 3261 §20.43).
pub(crate) fn refused(status: u16, why: &str) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers.push((
        "Warning".into(),
        format!("399 switchboard \"{}\"", why.replace('"', "'")),
    ));
    a
}

/// The service cannot record a new conversation now: 503 with Retry-After.
pub(crate) fn cannot_record() -> ServiceAnswer {
    let mut a = refused(503, "the IM service cannot record this conversation now");
    a.headers.push(("Retry-After".into(), "10".into()));
    a
}

/// The IM service's data cannot answer: 503 with Retry-After (fail closed).
pub(crate) fn data_unavailable(e: &DataError) -> ServiceAnswer {
    tracing::error!(error = %e, "IM data unavailable");
    let mut a = refused(
        503,
        "the IM service's data is unavailable; try again shortly",
    );
    a.headers.push(("Retry-After".into(), "10".into()));
    a
}

fn device_of(msg: &Message) -> String {
    msg.headers
        .get(&HeaderName::UserAgent)
        .map(|ua| ua.chars().take(120).collect())
        .unwrap_or_default()
}

impl ImService {
    /// Opens the service over its data for this server `run`, replaying the CDR spool an
    /// earlier run left (if `config.cdr_spool` names one), closing the sessions this
    /// server's earlier runs left open (a crash; never another server's), and starts its
    /// housekeeping (counter flushes, idle ends, offline expiry). What it originates
    /// (stored messages, conference traffic) leaves through `deliverer`.
    pub async fn start(
        run: Run,
        cdr: Arc<dyn CdrData>,
        offline: Arc<dyn OfflineData>,
        users: Arc<dyn Directory>,
        config: ImConfig,
        deliverer: Arc<dyn Deliverer>,
    ) -> Arc<ImService> {
        // A spool a crashed run left is replayed before its sessions are closed.
        let spool = config
            .cdr_spool
            .clone()
            .map(|path| Arc::new(spool::Spool::new(path)));
        cdr::recover(cdr.as_ref(), &run, spool.as_ref()).await;
        // The parts, each given what it needs of the others (no part holds the service).
        let cdr = Arc::new(cdr::CdrLog::start(cdr, run, spool));
        let names = Arc::new(directory::Names::new(users));
        let offline = Arc::new(offline::Offline::new(offline, deliverer.clone(), &config));
        let conferences = conference::Conferences::new(
            config.clone(),
            cdr.clone(),
            names.clone(),
            offline.clone(),
            deliverer,
        );
        let svc = Arc::new(ImService {
            cdr,
            offline,
            config,
            pager: Default::default(),
            sessions: Default::default(),
            conferences,
            bridges: Default::default(),
            names,
        });
        let weak = Arc::downgrade(&svc);
        tokio::spawn(async move {
            let period = weak
                .upgrade()
                .map(|s| s.config.flush_interval)
                .unwrap_or(Duration::from_secs(1));
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                svc.housekeeping().await;
            }
        });
        svc
    }

    /// Writes counters, ends idle conversations, drops expired offline messages.
    pub async fn housekeeping(&self) {
        let now = Instant::now();
        let mut dirty = Vec::new();
        let mut ended = Vec::new();
        self.pager
            .sweep(now, self.config.pager_idle, &mut ended, &mut dirty);
        self.sessions
            .sweep(now, self.config.session_idle, &mut ended, &mut dirty);
        self.bridges.sweep(now, self.config.session_idle);
        self.conferences.sweep(now, &mut ended, &mut dirty);
        if !dirty.is_empty() {
            self.cdr.write(cdr::CdrWrite::Participants(dirty));
        }
        let at = now_ms();
        for (id, rows) in ended {
            self.cdr.finish(&id, rows, at, "timeout");
        }
        self.offline.expire(at).await;
    }

    /// Ends every open conversation (graceful stop) and waits, at most five seconds, for
    /// the CDR to hold it.
    pub async fn shutdown(&self) {
        self.end_all("server shutdown");
        if !self.cdr.flush(Duration::from_secs(5)).await {
            tracing::error!("CDR writes still pending at shutdown; they are lost");
        }
    }

    /// Ends every open conversation without waiting for the CDR writes.
    pub fn end_all(&self, reason: &str) {
        let mut convs = self.pager.drain();
        convs.extend(self.sessions.drain());
        convs.extend(self.conferences.drain());
        let at = now_ms();
        for c in convs {
            self.cdr.finish(&c.id, c.records(None, false), at, reason);
        }
    }

    /// This pool front end was fenced (reaped while it could not heartbeat): its
    /// conversations end here, as the reaper ended their sessions (whose end stays the
    /// reaper's; the counts are written).
    pub fn fenced(&self) {
        self.end_all("front end fenced");
    }

    /// This pool front end rejoined after a fence: what it records from now on is
    /// `run`'s (its new epoch), and sessions its earlier runs left open (begun while it
    /// was being fenced) are closed.
    pub fn rejoined(&self, run: Run) {
        self.cdr.new_run(run);
    }

    /// Waits until every CDR write queued so far is applied (tests, status).
    pub async fn flush_records(&self) {
        self.cdr.flush(Duration::from_secs(30)).await;
    }

    /// The open conversation between two users, if any (for tests and the status page).
    pub fn conversation_id(&self, a: &str, b: &str) -> Option<String> {
        self.pager.id(a, b)
    }

    /// The AoRs of a conference's active members (for tests and status).
    pub fn conference_members(&self, aor: &str) -> Option<Vec<String>> {
        self.conferences.conference_members(aor)
    }

    /// The conferences open now.
    pub fn conferences(&self) -> Vec<String> {
        self.conferences.conferences()
    }
}

impl ImService {
    /// How to answer a request to one of the service's resources (see `to_service`).
    async fn service_answer(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
    ) -> ServiceAnswer {
        self.names.learn(&[from]).await;
        let command = conference::command_of(msg);
        let invited = self.names.invitee_of(command.as_deref()).await;
        match self.bridges.request(msg, from, self.to_pager()) {
            None => {}
            Some(bridge::Step::Answer(a)) => return a,
            Some(bridge::Step::Ended) => {
                // RFC 3261 §12.2.2: later requests in this dialog get 481.
                self.sessions.mark_ended(msg.call_id().unwrap_or(""));
                return ServiceAnswer::status(200);
            }
            Some(bridge::Step::Command { callee, command }) => {
                let pair_session = self.pager.id(from, &callee);
                return self
                    .conferences
                    .pair_command(from, &callee, command, invited, pair_session)
                    .unwrap_or(ServiceAnswer::status(200));
            }
        }
        self.conferences
            .answer(msg, from, to, flow, invited, || self.session_place(from))
    }

    /// What to do with a pager-mode MESSAGE before it is relayed (see `message`).
    async fn decide_message(&self, msg: &Message, from: &str, to: &str, online: bool) -> Decision {
        if let Some(command) = conference::command_of(msg) {
            // Chat commands are answered by the service, never delivered.
            self.names.learn(&[from, to]).await;
            let invited = self.names.invitee_of(Some(&command)).await;
            let pair_session = self.pager.id(from, to);
            return match self
                .conferences
                .pair_command(from, to, command, invited, pair_session)
            {
                None => Decision::Respond(200),
                Some(refusal) => decision(refusal),
            };
        }
        if online {
            if is_instant_message(msg) && !self.pager.ensure(&self.cdr, from, to).await {
                return decision(cannot_record());
            }
            return Decision::Relay;
        }
        if !is_instant_message(msg) {
            // A receipt or typing notice for someone offline is not worth keeping.
            return Decision::Respond(480);
        }
        let stored = OfflineMessage {
            id: 0,
            recipient: to.to_owned(),
            sender: from.to_owned(),
            content_type: msg
                .headers
                .get(&HeaderName::ContentType)
                .unwrap_or("text/plain")
                .to_owned(),
            body: msg.body.to_vec(),
            received_at_ms: now_ms(),
            session_id: self.conversation_id(from, to),
        };
        match self.offline.keep(&stored).await {
            // RFC 3428 §7: 202 Accepted, the message will be delivered later.
            Ok(()) => {
                self.pager
                    .record(&self.cdr, from, to, device_of(msg), msg.body.len());
                Decision::Respond(202)
            }
            Err(refusal) => decision(refusal),
        }
    }

    /// A relayed MESSAGE got `status`: a delivered one counts.
    fn count_message(&self, msg: &Message, from: &str, to: &str, status: u16) {
        if (200..300).contains(&status) && is_instant_message(msg) {
            self.pager
                .record(&self.cdr, from, to, device_of(msg), msg.body.len());
        }
    }

    /// What to do with a request in a dialog before it is relayed (see `in_dialog`).
    async fn decide_in_dialog(&self, msg: &Message, from: &str) -> Decision {
        let Some(call_id) = msg.call_id() else {
            return Decision::Relay;
        };
        if let Some((session_id, members)) = self.sessions.find(call_id) {
            if msg.method() == Some(&sip_message::Method::Refer) {
                let target = conference::refer_target(msg);
                let third = match &target {
                    Some(t) => Some(self.names.user(t.trim_start_matches("sip:")).await),
                    None => None,
                };
                return self.conferences.refer(from, session_id, members, third);
            }
            return Decision::Relay;
        }
        if self.sessions.has_ended(call_id) {
            // RFC 3261 §12.2.2: the session is gone.
            return Decision::Respond(481);
        }
        Decision::Relay
    }

    /// A relayed request in a dialog got `status`: messages count, a BYE ends the
    /// session.
    fn after_in_dialog(&self, msg: &Message, from: &str, status: u16) {
        if let Some(conv) = self.sessions.after(msg, from, status) {
            self.cdr
                .finish(&conv.id, conv.records(None, false), now_ms(), "bye");
        }
    }

    /// Session-mode dialogs `user` opened that the service tracks or holds: two-party
    /// sessions relayed, INVITEs of theirs still on the way, sessions bridged to a pager
    /// user, and their endpoints' chat and focus dialogs with conferences. A session
    /// counts against whoever sent the INVITE, so nobody can use up another user's
    /// allowance by inviting them.
    ///
    /// Each map is read under its own lock in turn (the caller holds none of them).
    /// This runs once per dialog-creating INVITE, never per message.
    pub(crate) fn open_sessions(&self, user: &str) -> usize {
        self.sessions.opened_by(user)
            + self.bridges.opened_by(user)
            + self.conferences.sessions_of(user)
    }

    /// A place for one more session-mode session of `user`, or the 403 that refuses it.
    /// Call it holding no service lock.
    pub(crate) fn session_place(&self, user: &str) -> Result<caps::Place<'_>, ServiceAnswer> {
        self.sessions
            .place(user, self.config.max_sessions_per_user, || {
                self.open_sessions(user)
            })
    }

    /// The pager side a bridged session writes to.
    fn to_pager(&self) -> bridge::ToPager<'_> {
        bridge::ToPager {
            pager: &self.pager,
            cdr: &self.cdr,
            offline: &self.offline,
        }
    }
}

#[async_trait::async_trait]
impl ImHook for ImService {
    async fn message(&self, msg: &Message, from: &str, to: &str, reach: Reach, relay: Relay) {
        let decision = match reach {
            // A GRUU names one device: the message goes to it as addressed; only its
            // outcome counts.
            Reach::Device => Decision::Relay,
            Reach::Online => self.decide_message(msg, from, to, true).await,
            Reach::Offline => self.decide_message(msg, from, to, false).await,
        };
        if let Some(status) = carry_out(relay, decision).await {
            self.count_message(msg, from, to, status);
        }
    }

    async fn in_dialog(&self, msg: &Message, from: &str, relay: Relay) {
        let decision = self.decide_in_dialog(msg, from).await;
        if let Some(status) = carry_out(relay, decision).await {
            self.after_in_dialog(msg, from, status);
        }
    }

    async fn on_invite_answered(
        &self,
        invite: &Message,
        answer: &Message,
        caller: &str,
        callee: &str,
    ) {
        if !offers_message_media(invite) {
            return;
        }
        let Some(call_id) = invite.call_id() else {
            return;
        };
        let callee_device = answer
            .headers
            .get(&HeaderName::UserAgent)
            .or(answer.headers.get(&HeaderName::Server))
            .map(|d| d.chars().take(120).collect())
            .unwrap_or_default();
        self.names.learn(&[caller, callee]).await;
        // Already answered: recorded whatever the CDR's state (it holds the write).
        let mut conv = self.cdr.begin_two_party(
            caller,
            &[(caller, device_of(invite)), (callee, callee_device)],
        );
        // MS-SIP: the first message rode in the INVITE's ms-text-format. It counts here
        // when the callee says it took it; otherwise the caller sends it again as a
        // MESSAGE, counted then.
        let took_first = answer
            .headers
            .values(&HeaderName::Supported)
            .any(|o| o.eq_ignore_ascii_case("ms-text-format"));
        let first = invite
            .headers
            .get(&HeaderName::from_wire("ms-text-format"))
            .and_then(bridge::first_message);
        if let (true, Some((_, body))) = (took_first, first) {
            count(&mut conv, caller, device_of(invite), body.len());
        }
        self.sessions.answered(call_id, caller, conv);
    }

    async fn admit_invite(&self, msg: &Message, from: &str, _to: &str) -> Option<ServiceAnswer> {
        if !offers_message_media(msg) {
            return None;
        }
        let call_id = msg.call_id()?;
        let place = match self.session_place(from) {
            Ok(p) => p,
            Err(refusal) => return Some(refusal),
        };
        // Until the answer, the INVITE itself holds the place (`pending_invites`).
        self.sessions.hold_invite(call_id, from);
        drop(place);
        None
    }

    async fn invite_failed(&self, msg: &Message, from: &str, _to: &str) {
        if let Some(call_id) = msg.call_id() {
            self.sessions.release_invite(call_id, from);
        }
    }

    fn serves(&self, aor: &str) -> bool {
        conference::is_service_aor(aor)
    }

    fn home_of(&self, msg: &Message, to: &str) -> Option<u32> {
        conference::home_of(to).or_else(|| conference::invitation_home(msg))
    }

    async fn before_invite(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        online: bool,
        session_im: bool,
        flow: Flow,
    ) -> Option<ServiceAnswer> {
        let content_type = msg
            .headers
            .get(&HeaderName::ContentType)
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.names.learn(&[from, to]).await;
        if content_type.starts_with("application/ms-conf-invite+xml") {
            let escalated_from = self.sessions.two_party(from, to);
            return self.conferences.conference_invitation(
                msg,
                from,
                to,
                session_im,
                escalated_from,
            );
        }
        if online && !session_im && offers_message_media(msg) && bridge::lync_style(msg) {
            let answer = self
                .bridges
                .invite(
                    msg,
                    from,
                    to,
                    flow,
                    || self.session_place(from),
                    self.to_pager(),
                )
                .await;
            return Some(answer);
        }
        None
    }

    async fn to_service(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
        responder: Responder<'_>,
    ) {
        let status = responder
            .send(self.service_answer(msg, from, to, flow).await)
            .await;
        // A member just joined the chat by INVITE: what was held for them follows the 2xx.
        if msg.method() == Some(&sip_message::Method::Invite)
            && (200..300).contains(&status)
            && conference::c3p::part_of(msg) == conference::c3p::Part::Chat
        {
            self.conferences
                .joined_by_invite(to, from, msg.call_id().unwrap_or(""));
        }
    }

    fn on_registered(&self, aor: &str) {
        tokio::spawn(self.offline.clone().deliver_stored(aor.to_owned()));
    }
}
