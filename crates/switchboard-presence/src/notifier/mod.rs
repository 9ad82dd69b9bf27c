//! The notifier (RFC 6665 §4.2, RFC 3856 §6): subscriptions to a user's presence, to
//! one's own contact list (RFC 4662) and to one's watchers (RFC 3857), and the Lync
//! roaming subscriptions (MS-SIP §2.2.2).
//!
//! [`Notifier`] owns the subscriptions, their dialog and per-watcher indexes, NOTIFY
//! pacing (at most one in flight, at most one per `notify_interval`, the newest state)
//! and delivery through the [`Deliverer`]. It sits in the service's state, beside the
//! presentities, which its methods are given: a subscription is linked from the
//! presentities it watches (`watchers`, `winfo`, `lists`). Bodies are rendered under the
//! lock and sent by a spawned task; the answer takes the lock again. Timers and answers
//! hold a weak reference to the state lock, never the service.
//!
//! The SUBSCRIBE handler reads and checks the request, resolves list entries against
//! the directory and reads the presentities it needs with no lock held, then decides
//! under the lock ([`Notifier::subscribe`]); the first NOTIFY goes once the 200 has.
//!
//! Layout: this file holds the subscriptions, their indexes and pacing; `subscribe.rs`
//! reads a SUBSCRIBE and decides it (and list membership); `render.rs` renders NOTIFY
//! bodies and requests.

mod render;
mod subscribe;

pub(crate) use subscribe::content_type;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sip_message::{HeaderName, Message, Method, NameAddr, StartLine, Uri};
use switchboard_core::seam::{Deliverer, Flow, ServiceAnswer, SubscribeRequest};
use tokio::time::Instant;

use switchboard_core::DataError;

use crate::caps::{self, Known};
use crate::documents::{self, ListResource, WatcherEntry};
use crate::fetch::{self, Fetched};
use crate::{
    bare, pidf, view_of, Clock, PresenceConfig, PresenceService, Presentities, Presentity, State,
};

/// What a subscription watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A user's presence (RFC 3856).
    Presence,
    /// The subscriber's own contact list, batched (RFC 4662).
    List,
    /// The subscriber's own watchers (RFC 3857).
    Winfo,
    /// The subscriber's own contact list, Lync style (`vnd-microsoft-roaming-contacts`).
    RoamingContacts,
    /// The subscriber's own categories, containers and watchers
    /// (`vnd-microsoft-roaming-self`).
    RoamingSelf,
}

pub(crate) struct Subscription {
    pub(crate) kind: Kind,
    /// The user watched (for lists and watcher info: the subscriber themself); shared
    /// with the presentity table's key.
    pub(crate) resource: Arc<str>,
    /// Shared with the per-watcher table's key.
    pub(crate) watcher: Arc<str>,
    /// The Event header as subscribed when it is more than `presence` (an `id`
    /// parameter), echoed in NOTIFYs.
    event: Option<Box<str>>,
    /// The subscriber's Contact, and the flow the SUBSCRIBE came over.
    target: Box<str>,
    flow: Flow,
    call_id: Box<str>,
    their_tag: Box<str>,
    our_tag: u64,
    cseq: u32,
    version: u32,
    pub(crate) expires_at: Instant,
    last_sent: Option<Instant>,
    /// Ends right after the answer (an `Expires: 0` SUBSCRIBE).
    ending: bool,
    // Pacing: one NOTIFY in flight, at most one per interval, the newest state.
    in_flight: bool,
    dirty: bool,
    timer_armed: bool,
    /// The next NOTIFY carries full state (lists).
    full: bool,
    /// Lists only.
    list: Option<Box<ListState>>,
    /// The subscriber reads MS-PRES categories rather than PIDF (a Lync client).
    msrtc: bool,
    /// The first NOTIFY went in the SUBSCRIBE's 200 (`ms-piggyback-first-notify`).
    piggybacked: bool,
    /// Roaming contacts: the list as last sent, for deltas.
    pub(crate) sent_contacts: Option<Box<msrtc::contacts::List>>,
}

/// A contact-list subscription's resources, and those changed since the last NOTIFY.
#[derive(Default)]
struct ListState {
    resources: Vec<String>,
    pending: Vec<String>,
    /// An ad hoc list named in the SUBSCRIBE body (MS-PRES batched subscription), not
    /// the subscriber's contact list.
    adhoc: bool,
}

/// The subscriptions (RFC 6665 dialogs) and their indexes (by dialog, and per watcher
/// for the per-watcher limit), their NOTIFY pacing and where NOTIFYs leave. Owns no
/// presentity: which users a subscription watches is linked from the presentities
/// (`watchers`, `winfo`, `lists`), which its methods are given.
pub(crate) struct Notifier {
    config: PresenceConfig,
    clock: Clock,
    /// Where NOTIFYs leave (the router's outbound side).
    deliverer: Arc<dyn Deliverer>,
    /// The state lock this notifier sits behind, for its paced NOTIFYs and the answers
    /// to those in flight: they take the lock when they fire, and end when the service
    /// is gone.
    state: Weak<Mutex<State>>,
    subs: HashMap<u64, Subscription>,
    /// Hash of (subscriber, Call-ID, subscriber's tag) → subscription ([`dialog_key`]).
    by_dialog: HashMap<u64, u64>,
    hasher: RandomState,
    /// Subscriptions each watcher holds, for the per-watcher limit.
    per_watcher: HashMap<Arc<str>, usize>,
    next_id: u64,
}

impl Notifier {
    pub(crate) fn new(
        config: PresenceConfig,
        clock: Clock,
        deliverer: Arc<dyn Deliverer>,
        state: Weak<Mutex<State>>,
    ) -> Notifier {
        Notifier {
            config,
            clock,
            deliverer,
            state,
            subs: HashMap::new(),
            by_dialog: HashMap::new(),
            hasher: RandomState::new(),
            per_watcher: HashMap::new(),
            next_id: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.subs.len()
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&Subscription> {
        self.subs.get(id)
    }

    /// Every subscription's id.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.subs.keys().copied().collect()
    }

    /// `aor`'s presentity, put in `ps` from `fetched` if it is not held (see
    /// [`fetch::ensure`]).
    fn ensure<'p>(
        &self,
        ps: &'p mut Presentities,
        fetched: &mut Fetched<'_>,
        aor: &str,
    ) -> &'p mut Presentity {
        fetch::ensure(ps, fetched, aor, &self.config.rules, self.clock.now_ms())
    }

    /// Whether holding `needed` more presentities would pass `max_presentities`.
    fn full(&self, ps: &Presentities, needed: usize) -> bool {
        caps::full(ps, needed, self.config.max_presentities)
    }

    /// The subscriptions whose lifetime is over at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<u64> {
        self.subs
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn key(&self, watcher: &str, call_id: &str, their_tag: &str) -> u64 {
        dialog_key(&self.hasher, watcher, call_id, their_tag)
    }

    /// The subscription of this dialog, checked against the hash's collisions.
    fn find(&self, watcher: &str, call_id: &str, their_tag: &str) -> Option<u64> {
        let key = self.key(watcher, call_id, their_tag);
        self.by_dialog.get(&key).copied().filter(|id| {
            let s = &self.subs[id];
            *s.call_id == *call_id && *s.their_tag == *their_tag && *s.watcher == *watcher
        })
    }

    /// How many subscriptions `watcher` holds.
    fn held_by(&self, watcher: &str) -> usize {
        self.per_watcher.get(watcher).copied().unwrap_or(0)
    }

    /// Files a new subscription under its dialog and its watcher; its id.
    fn insert(&mut self, key: u64, s: Subscription) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        *self.per_watcher.entry(s.watcher.clone()).or_default() += 1;
        self.by_dialog.insert(key, id);
        self.subs.insert(id, s);
        id
    }

    /// The watcher's name as the per-watcher table shares it (one allocation per watcher).
    fn watcher_key(&self, watcher: &str) -> Arc<str> {
        match self.per_watcher.get_key_value(watcher) {
            Some((k, _)) => k.clone(),
            None => Arc::from(watcher),
        }
    }

    /// Takes a subscription out of the subscription tables (the presentities' links are
    /// the caller's to undo).
    fn take(&mut self, id: u64) -> Option<Subscription> {
        let s = self.subs.remove(&id)?;
        let key = self.key(&s.watcher, &s.call_id, &s.their_tag);
        self.by_dialog.remove(&key);
        if let Some(n) = self.per_watcher.get_mut(&*s.watcher) {
            *n -= 1;
            if *n == 0 {
                self.per_watcher.remove(&*s.watcher);
            }
        }
        Some(s)
    }
}

/// Subscriptions are found by (subscriber, Call-ID, subscriber's tag): a dialog is its
/// subscriber's, and two clients that happen to pick the same Call-ID and tag (pidgin-sipe
/// seeds its generator with the time: two started in the same second do) must not meet.
/// The table keeps only a hash (memory per subscription matters at 100,000) and every
/// hit is checked.
pub(crate) fn dialog_key(
    hasher: &RandomState,
    watcher: &str,
    call_id: &str,
    their_tag: &str,
) -> u64 {
    let mut h = hasher.build_hasher();
    watcher.hash(&mut h);
    call_id.hash(&mut h);
    their_tag.hash(&mut h);
    h.finish()
}

impl Notifier {
    /// Called once the SUBSCRIBE was answered 2xx: the NOTIFY it calls for goes now.
    pub(crate) fn answered_subscribe(
        &mut self,
        ps: &mut Presentities,
        msg: &Message,
        watcher: &str,
    ) {
        let (Some(call_id), Ok(from)) = (msg.call_id(), msg.from_header()) else {
            return;
        };
        let key = self.key(watcher, call_id, from.tag().unwrap_or(""));
        let Some(&id) = self.by_dialog.get(&key) else {
            return;
        };
        if self.subs[&id].ending {
            self.terminate(ps, id, "timeout");
        } else if std::mem::take(&mut self.subs.get_mut(&id).expect("present").piggybacked) {
            // Its content went in the 200.
            self.subs.get_mut(&id).expect("present").dirty = false;
        } else {
            // First NOTIFY (or the one after a refresh) is not held back by pacing.
            let s = self.subs.get_mut(&id).expect("present");
            s.last_sent = None;
            self.kick(ps, id);
        }
    }

    /// `aor`'s aggregate changed: its watchers hear of it, and so do the owner's Lync
    /// endpoints, which show it as their own status.
    pub(crate) fn presence_changed(&mut self, ps: &mut Presentities, aor: &str) {
        let watchers = ps.get(aor).map(|p| p.watchers.clone()).unwrap_or_default();
        for id in watchers {
            self.changed(ps, id, Some(aor));
        }
        self.kick_own(ps, aor);
    }

    /// The user's own roaming-self subscriptions (every endpoint) hear of a change.
    pub(crate) fn kick_own(&mut self, ps: &mut Presentities, aor: &str) {
        self.kick_own_kinds(ps, aor, &[Kind::RoamingSelf]);
    }

    /// The user's watchers changed: watcher-information and roaming-self subscriptions
    /// (which list watchers) hear of it.
    fn kick_winfo(&mut self, ps: &mut Presentities, aor: &str) {
        self.kick_own_kinds(ps, aor, &[Kind::Winfo, Kind::RoamingSelf]);
    }

    /// Kicks `aor`'s own subscriptions (watcher info, roaming data) of these kinds.
    pub(crate) fn kick_own_kinds(&mut self, ps: &mut Presentities, aor: &str, kinds: &[Kind]) {
        let ids = ps.get(aor).map(|p| p.winfo.clone()).unwrap_or_default();
        for id in ids {
            if self.subs.get(&id).is_some_and(|s| kinds.contains(&s.kind)) {
                self.kick(ps, id);
            }
        }
    }

    /// Something subscription `id` shows changed (`resource`, for a list).
    pub(crate) fn changed(&mut self, ps: &mut Presentities, id: u64, resource: Option<&str>) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if let (Some(list), Some(r)) = (s.list.as_mut(), resource) {
            if !list.pending.iter().any(|p| p == r) {
                list.pending.push(r.to_owned());
            }
        }
        self.kick(ps, id);
    }

    /// RFC 6665 §4.2.2 pacing: send now, or when the interval is over, or when the
    /// NOTIFY in flight is answered; the state sent is the newest at that moment.
    pub(crate) fn kick(&mut self, ps: &mut Presentities, id: u64) {
        let interval = self.config.notify_interval;
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        s.dirty = true;
        if s.in_flight || s.timer_armed {
            return;
        }
        let now = Instant::now();
        let due = s.last_sent.map(|t| t + interval).unwrap_or(now);
        if due <= now {
            self.send(ps, id);
            return;
        }
        s.timer_armed = true;
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let Some(state) = state.upgrade() else { return };
            let mut guard = state.lock();
            let st = &mut *guard;
            if let Some(s) = st.notifier.subs.get_mut(&id) {
                s.timer_armed = false;
                if s.dirty && !s.in_flight {
                    st.notifier.send(&mut st.presentities, id);
                }
            }
        });
    }

    /// Sends the subscription's NOTIFY now, with the current state.
    fn send(&mut self, ps: &mut Presentities, id: u64) {
        let deliverer = self.deliverer.clone();
        let Some(body) = self.render(ps, id) else {
            // Nothing to tell (a contact list without changes).
            self.subs.get_mut(&id).expect("present").dirty = false;
            return;
        };
        let now = Instant::now();
        let s = self.subs.get_mut(&id).expect("present");
        s.cseq += 1;
        s.dirty = false;
        s.in_flight = true;
        s.last_sent = Some(now);
        let left = s.expires_at.saturating_duration_since(now).as_secs();
        let Some(m) = Self::notify_request(s, format!("active;expires={left}"), body) else {
            s.in_flight = false;
            return;
        };
        s.version += 1;
        s.full = false;
        if let Some(list) = s.list.as_mut() {
            list.pending.clear();
        }
        let flow = s.flow;
        let state = self.state.clone();
        tokio::spawn(async move {
            let status = deliverer.send_request_on(m, flow).await;
            if let Some(state) = state.upgrade() {
                let mut guard = state.lock();
                let st = &mut *guard;
                st.notifier
                    .notify_answered(&mut st.presentities, id, status);
            }
        });
    }

    /// RFC 6665 §4.2.2: a NOTIFY answered 481 or not answered at all ends the
    /// subscription; otherwise the next NOTIFY may go.
    fn notify_answered(&mut self, ps: &mut Presentities, id: u64, status: u16) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        s.in_flight = false;
        if status >= 300 && !matches!(status, 491 | 500) {
            tracing::debug!(status, watcher = %s.watcher, "NOTIFY refused: subscription removed");
            self.remove(ps, id);
            return;
        }
        if s.dirty {
            self.kick(ps, id);
        }
    }

    /// Takes a subscription out of every table.
    fn remove(&mut self, ps: &mut Presentities, id: u64) -> Option<Subscription> {
        let s = self.take(id)?;
        let watched: Vec<String> = match (&s.kind, &s.list) {
            (Kind::Presence, _) => vec![s.resource.to_string()],
            (Kind::List, Some(list)) => list.resources.clone(),
            _ => Vec::new(),
        };
        for r in &watched {
            if let Some(p) = ps.get_mut(r.as_str()) {
                p.watchers.retain(|w| *w != id);
            }
            self.kick_winfo(ps, r);
        }
        if let Some(p) = ps.get_mut(&*s.resource) {
            p.winfo.retain(|w| *w != id);
            p.lists.retain(|w| *w != id);
            if let Some(list) = &s.list {
                caps::drop_entries(p, &list.resources);
            }
        }
        Some(s)
    }

    /// Ends a subscription with a final NOTIFY (`terminated;reason=...`, RFC 6665 §4.2.2).
    pub(crate) fn terminate(&mut self, ps: &mut Presentities, id: u64, reason: &str) {
        let deliverer = self.deliverer.clone();
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        s.full = true;
        s.cseq += 1;
        let body = {
            let s = &self.subs[&id];
            self.body(ps, s)
        };
        let Some(s) = self.remove(ps, id) else { return };
        let Some(m) = Self::notify_request(&s, format!("terminated;reason={reason}"), body) else {
            return;
        };
        tracing::debug!(watcher = %bare(&s.watcher), reason, "subscription ended");
        let flow = s.flow;
        tokio::spawn(async move {
            let _ = deliverer.send_request_on(m, flow).await;
        });
    }
}
