//! Session-mode IM (INVITE `m=message`, MESSAGE in the dialog, BYE; MS-SIP §3.1.4):
//! the two-party sessions the service watches by Call-ID as the record-routing proxy in
//! their path, counted per sender; the Call-IDs of sessions that ended, so later
//! requests in them get 481 (RFC 3261 §12.2.2); and the INVITEs let through and not yet
//! answered, each holding its caller's place under `max_sessions_per_user` (`caps.rs`).
//!
//! Lock rule: one lock (`state`), held only to read or change the maps, never across an
//! await or a call into another part. What ends here is handed back to the caller, who
//! writes its CDR. `places` is the caps lock: taken first, with this part's lock (and
//! the other parts' locks) taken only inside its count, never the other way round.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use sip_message::{Message, Method};
use switchboard_core::seam::ServiceAnswer;
use tokio::time::Instant;

use crate::caps::{Place, Places, PENDING_INVITE_MAX};
use crate::{count, device_of, is_instant_message, refused, sweep, Conversation, Rows};

/// How long the Call-ID of an ended session is remembered (answered 481).
const ENDED_MEMORY: Duration = Duration::from_secs(300);

/// The session-mode IM sessions (see the module header).
#[derive(Default)]
pub(crate) struct Sessions {
    state: Mutex<State>,
    /// Places being taken under `max_sessions_per_user`.
    places: Places,
}

#[derive(Default)]
struct State {
    /// Sessions by Call-ID.
    dialogs: HashMap<String, Conversation>,
    /// Call-IDs of recently ended sessions, with when they ended.
    ended: HashMap<String, Instant>,
    /// INVITEs let through and not yet answered, by (Call-ID, caller), with when they
    /// were.
    pending: HashMap<(String, String), Instant>,
}

impl Sessions {
    /// The session `call_id` names, if open: its CDR id and its participants.
    pub(crate) fn find(&self, call_id: &str) -> Option<(String, Vec<String>)> {
        self.state.lock().dialogs.get(call_id).map(|c| {
            (
                c.id.clone(),
                c.participants.keys().cloned().collect::<Vec<_>>(),
            )
        })
    }

    /// The open session between `a` and `b` alone, if any: its CDR id.
    pub(crate) fn two_party(&self, a: &str, b: &str) -> Option<String> {
        self.state
            .lock()
            .dialogs
            .values()
            .find(|c| {
                c.participants.len() == 2
                    && c.participants.contains_key(a)
                    && c.participants.contains_key(b)
            })
            .map(|c| c.id.clone())
    }

    /// Whether `call_id` names a session that ended a moment ago.
    pub(crate) fn has_ended(&self, call_id: &str) -> bool {
        self.state.lock().ended.contains_key(call_id)
    }

    /// Remembers that the dialog `call_id` ended (later requests in it get 481).
    pub(crate) fn mark_ended(&self, call_id: &str) {
        self.state
            .lock()
            .ended
            .insert(call_id.to_owned(), Instant::now());
    }

    /// The INVITE `call_id` of `caller` was answered: `conv` is its session from now on,
    /// and the place the INVITE held is given back in the same step, so the session is
    /// counted all along.
    pub(crate) fn answered(&self, call_id: &str, caller: &str, conv: Conversation) {
        let mut state = self.state.lock();
        state.dialogs.insert(call_id.to_owned(), conv);
        state
            .pending
            .remove(&(call_id.to_owned(), caller.to_owned()));
    }

    /// An INVITE of `caller`'s let through now holds its place here until its outcome.
    pub(crate) fn hold_invite(&self, call_id: &str, caller: &str) {
        self.state
            .lock()
            .pending
            .insert((call_id.to_owned(), caller.to_owned()), Instant::now());
    }

    /// The INVITE's outcome is known: its place is given back.
    pub(crate) fn release_invite(&self, call_id: &str, caller: &str) {
        self.state
            .lock()
            .pending
            .remove(&(call_id.to_owned(), caller.to_owned()));
    }

    /// A relayed request `msg` from `from` in a dialog got `status`: messages count, a
    /// BYE ends the session. Returns the session it ended (the caller writes its end).
    pub(crate) fn after(&self, msg: &Message, from: &str, status: u16) -> Option<Conversation> {
        let call_id = msg.call_id()?;
        let mut state = self.state.lock();
        let conv = state.dialogs.get_mut(call_id)?;
        match msg.method() {
            Some(Method::Message) if (200..300).contains(&status) && is_instant_message(msg) => {
                count(conv, from, device_of(msg), msg.body.len());
                None
            }
            Some(Method::Bye) if status >= 200 => {
                let conv = state.dialogs.remove(call_id);
                state.ended.insert(call_id.to_owned(), Instant::now());
                conv
            }
            _ => {
                conv.last_activity = Instant::now();
                None
            }
        }
    }

    /// Sessions `user` opened (sent the INVITE of) that are open or on the way.
    pub(crate) fn opened_by(&self, user: &str) -> usize {
        let state = self.state.lock();
        let relayed = state
            .dialogs
            .values()
            .filter(|c| c.initiator == user)
            .count();
        let on_the_way = state
            .pending
            .keys()
            .filter(|(_, caller)| caller == user)
            .count();
        relayed + on_the_way
    }

    /// A place for one more session-mode session of `user`, given what they have `open`
    /// (counted over every part, see `ImService::open_sessions`), or the 403 that refuses
    /// it. Call it holding no lock.
    pub(crate) fn place(
        &self,
        user: &str,
        max: usize,
        open: impl FnOnce() -> usize,
    ) -> Result<Place<'_>, ServiceAnswer> {
        self.places.take(user, max, open).ok_or_else(|| {
            tracing::info!(user, max, "IM session refused: the user's cap is reached");
            refused(
                403,
                &format!("too many open IM sessions for this user (limit {max})"),
            )
        })
    }

    /// Ends the sessions idle for `idle` (final rows into `ended`, their Call-IDs
    /// remembered), collects the others' changed counters into `dirty`, forgets old
    /// ended Call-IDs and clears INVITEs whose outcome never came.
    pub(crate) fn sweep(
        &self,
        now: Instant,
        idle: Duration,
        ended: &mut Vec<(String, Rows)>,
        dirty: &mut Rows,
    ) {
        let mut state = self.state.lock();
        let gone = sweep(&mut state.dialogs, now, idle, ended, dirty);
        for g in gone {
            state.ended.insert(g, now);
        }
        state
            .ended
            .retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
        // The core reports every INVITE's outcome; this only clears one it never did.
        state
            .pending
            .retain(|_, at| now.duration_since(*at) < PENDING_INVITE_MAX);
    }

    /// Every open session, taken out (a stop).
    pub(crate) fn drain(&self) -> Vec<Conversation> {
        self.state.lock().dialogs.drain().map(|(_, c)| c).collect()
    }
}
