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

/// A SUBSCRIBE as read and checked with no lock held, to be decided under it.
struct NewSubscribe<'m> {
    msg: &'m Message,
    kind: Kind,
    from: &'m str,
    to: &'m str,
    event: String,
    call_id: String,
    their_tag: String,
    /// Our tag, when the SUBSCRIBE is inside a dialog.
    our_tag: Option<String>,
    contact: Option<String>,
    expires: u32,
    source: Flow,
    /// The subscriber reads MS-PRES categories.
    msrtc: bool,
    /// A batched subscription's entries (MS-PRES §3.7.5.6), canonical.
    adhoc: Option<Vec<String>>,
    /// Which list entries are users: resolved against the directory after reading,
    /// before the lock is taken.
    known: Known,
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

/// A list naming more entries than its owner may watch: refused whole, with the limit
/// named (a clear error beats silently watching only some).
fn too_many_entries(cap: usize) -> ServiceAnswer {
    caps::with_warning(
        403,
        &format!("too many list entries for this user (at most {cap})"),
    )
}

fn status_with(status: u16, name: &str, value: String) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers.push((name.into(), value));
    a
}

/// Does the Accept header (absent: the package default) allow `types`?
fn accepts(msg: &Message, types: &[&str]) -> bool {
    let listed: Vec<String> = msg
        .headers
        .values(&HeaderName::Accept)
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
        .collect();
    listed.is_empty()
        || types.iter().all(|t| {
            listed.iter().any(|l| {
                l == t || l == "*/*" || l.strip_suffix("/*").is_some_and(|p| t.starts_with(p))
            })
        })
}

fn supports(msg: &Message, option: &str) -> bool {
    msg.headers
        .values(&HeaderName::Supported)
        .any(|v| v.trim().eq_ignore_ascii_case(option))
}

fn supports_eventlist(msg: &Message) -> bool {
    supports(msg, "eventlist")
}

/// The media type of the body, lower case, without parameters.
pub(crate) fn content_type(msg: &Message) -> String {
    msg.headers
        .get(&HeaderName::ContentType)
        .and_then(|c| c.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Lync clients list the MS-PRES category document in Accept.
fn wants_categories(msg: &Message) -> bool {
    msg.headers.values(&HeaderName::Accept).any(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(crate::lync::CATEGORIES))
    })
}

impl<'m> NewSubscribe<'m> {
    /// Reads and checks a SUBSCRIBE (RFC 6665 §4.2.1.1, RFC 3856 §6.1): which package and
    /// kind of subscription, the dialog, the lifetime. `None` for a provisioning fetch
    /// (`vnd-microsoft-provisioning-v2`, answered at once, no subscription kept); a
    /// request that cannot be served gets its answer.
    fn read(
        msg: &'m Message,
        from: &'m str,
        to: &'m str,
        source: Flow,
        config: &PresenceConfig,
    ) -> Result<Option<NewSubscribe<'m>>, ServiceAnswer> {
        let event = msg
            .headers
            .get(&HeaderName::Event)
            .unwrap_or("")
            .trim()
            .to_owned();
        let package = event
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let batched = content_type(msg) == "application/msrtc-adrl-categorylist+xml";
        let kind = match package.as_str() {
            "presence" if from == to && (supports_eventlist(msg) || batched) => Kind::List,
            "presence" => Kind::Presence,
            "presence.winfo" => Kind::Winfo,
            "vnd-microsoft-roaming-contacts" => Kind::RoamingContacts,
            "vnd-microsoft-roaming-self" => Kind::RoamingSelf,
            "vnd-microsoft-provisioning-v2" => return Ok(None),
            _ => return Err(status_with(489, "Allow-Events", crate::ALLOW_EVENTS.into())),
        };
        if matches!(
            kind,
            Kind::Winfo | Kind::RoamingContacts | Kind::RoamingSelf
        ) && from != to
        {
            return Err(caps::with_warning(
                403,
                "only the user may subscribe to their own data",
            ));
        }
        let msrtc = matches!(kind, Kind::RoamingContacts | Kind::RoamingSelf)
            || (matches!(kind, Kind::Presence | Kind::List) && (batched || wants_categories(msg)));
        let adhoc: Option<Vec<String>> = if batched {
            match msrtc::publish::parse_batch_subscribe(&msg.body) {
                Ok(b) => Some(b.resources),
                Err(e) => return Err(caps::with_warning(400, &e.to_string())),
            }
        } else {
            None
        };
        let types: &[&str] = match kind {
            _ if msrtc => &[],
            Kind::Presence => &["application/pidf+xml"],
            Kind::Winfo => &["application/watcherinfo+xml"],
            Kind::List => &[
                "multipart/related",
                "application/rlmi+xml",
                "application/pidf+xml",
            ],
            Kind::RoamingContacts | Kind::RoamingSelf => &[],
        };
        if !accepts(msg, types) {
            // RFC 6665 §4.2.1.1: none of the Accept types can be produced.
            return Err(status_with(406, "Accept", types.join(", ")));
        }
        let req = SubscribeRequest::read(msg, config.min_expires, config.max_expires)?;
        let SubscribeRequest {
            expires,
            call_id,
            their_tag,
            our_tag: our_tag_in,
        } = req;
        let contact = msg
            .headers
            .get(&HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri.to_string());
        Ok(Some(NewSubscribe {
            msg,
            kind,
            from,
            to,
            event,
            call_id,
            their_tag,
            our_tag: our_tag_in,
            contact,
            expires,
            source,
            msrtc,
            adhoc,
            known: Known::default(),
        }))
    }
}

impl PresenceService {
    /// A SUBSCRIBE: read and checked, its list entries resolved and the presentities it
    /// needs read with no lock held, then decided under the lock by the notifier.
    pub(crate) async fn subscribe(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        source: Flow,
    ) -> ServiceAnswer {
        let mut req = match NewSubscribe::read(msg, from, to, source, &self.config) {
            Ok(Some(req)) => req,
            Ok(None) => {
                let focus = self.focus_factory.as_ref().map(|f| f(to));
                return crate::lync::provisioning(msg, from, to, focus);
            }
            Err(refused) => return refused,
        };
        // A list's entries are counted and looked up in the user directory before the
        // lock is taken (no data call under a lock): only users who exist get a
        // presentity. What cannot be read refuses the SUBSCRIBE (fail closed).
        let cap = self.config.max_list_entries_per_user;
        req.known = if req.kind == Kind::List {
            let stored;
            let raw: &[String] = match &req.adhoc {
                Some(entries) => entries,
                None if req.our_tag.is_none() => {
                    stored = match self.contacts.contact_list(bare(to)).await {
                        Ok(list) => crate::listed_uris(&list),
                        Err(e) => return fetch::unavailable(&e),
                    };
                    &stored
                }
                None => &[],
            };
            if caps::distinct(raw.iter().map(String::as_str)) > cap {
                return too_many_entries(cap);
            }
            match self.known_users(raw).await {
                Ok(k) => k,
                Err(e) => return fetch::unavailable(&e),
            }
        } else {
            Known::default()
        };
        let known = &req.known;
        req.adhoc = req
            .adhoc
            .take()
            .map(|raw| known.entries(raw.iter().map(String::as_str)));
        // The resource (or the list's owner) and the users the list names are read
        // before the lock is taken again; whatever cannot be read answers 503.
        let mut needed = vec![to.to_owned()];
        needed.extend(req.known.users());
        let answer = self
            .with_presentities(&needed, |st, fetched| {
                st.notifier.subscribe(&mut st.presentities, fetched, req)
            })
            .await;
        answer.unwrap_or_else(|e| fetch::unavailable(&e))
    }
}

impl Notifier {
    /// A SUBSCRIBE under the state lock (RFC 6665 §4.2.1): a new dialog, a refresh, or
    /// the end of one; the answer. Its first NOTIFY goes once the 200 has
    /// ([`Notifier::answered_subscribe`]), unless it went in the 200 itself.
    fn subscribe(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        req: NewSubscribe<'_>,
    ) -> ServiceAnswer {
        let cap = self.config.max_list_entries_per_user;
        let key = self.key(req.from, &req.call_id, &req.their_tag);
        let existing = self.find(req.from, &req.call_id, &req.their_tag);
        let id = match (req.our_tag, existing) {
            (Some(tag), Some(id)) if format!("{:016x}", self.subs[&id].our_tag) == tag => id,
            // RFC 6665 §4.2.1.2: a refresh of a subscription that does not exist (for
            // this subscriber: someone else's dialog cannot be refreshed or ended).
            (Some(_), _) => return ServiceAnswer::status(481),
            // The same SUBSCRIBE again without our tag (its answer was lost): same dialog.
            (None, Some(id)) => id,
            (None, None) => {
                let Some(target) = req.contact.clone() else {
                    return ServiceAnswer::status(400);
                };
                if req.kind == Kind::Presence
                    && bare(req.from) != bare(req.to)
                    && ps.get(req.to).is_some_and(|p| p.unreadable)
                {
                    // Fail closed: what the user allows this watcher cannot be read
                    // now (their watchers already see them offline).
                    return fetch::unavailable(&DataError::Unavailable(format!(
                        "the last read of {} failed",
                        req.to
                    )));
                }
                if req.expires == 0 {
                    // A fetch: one NOTIFY with the state, then the subscription is over.
                } else if self.held_by(req.from) >= self.config.max_subscriptions_per_watcher {
                    return status_with(503, "Retry-After", "60".into());
                }
                if self.by_dialog.contains_key(&key) {
                    // Two live dialogs whose (Call-ID, tag) hash alike: vanishingly rare;
                    // the client retries with another Call-ID.
                    return status_with(500, "Retry-After", "1".into());
                }
                let owner_held = ps.contains_key(req.to);
                let list = match (req.kind, req.adhoc.as_ref()) {
                    (Kind::List, Some(entries)) => Some((entries.clone(), true)),
                    (Kind::List, None) => {
                        // The owner's contact list as held (loaded now if need be).
                        if !owner_held && self.full(ps, 1) {
                            return caps::full_answer();
                        }
                        let owner = self.ensure(ps, fetched, req.to);
                        let uris = crate::listed_uris(&owner.contacts);
                        Some((req.known.entries(uris.iter().map(String::as_str)), false))
                    }
                    _ => None,
                };
                if let Some((entries, _)) = &list {
                    let total = match ps.get(req.to) {
                        Some(owner) => caps::entries_after(owner, &[], entries),
                        None => entries.len(),
                    };
                    if total > cap {
                        return too_many_entries(cap);
                    }
                }
                let needed = usize::from(!ps.contains_key(req.to))
                    + list
                        .as_ref()
                        .map(|(e, _)| caps::new_presentities(ps, e, &req.known))
                        .unwrap_or(0);
                if self.full(ps, needed) {
                    return caps::full_answer();
                }
                let dialog = (req.call_id.into(), req.their_tag.clone().into_boxed_str());
                let id = self.create(
                    ps, fetched, req.kind, req.to, req.from, &req.event, target, req.source, key,
                    dialog, list, &req.known,
                );
                self.subs.get_mut(&id).expect("created").msrtc = req.msrtc;
                id
            }
        };
        if let (Some(entries), true) = (req.adhoc, existing.is_some()) {
            // A batched SUBSCRIBE inside the dialog replaces the ad hoc list, within the
            // same bounds as a new one (refused: the list stays as it was).
            if let Some(answer) = self.check_replacement(ps, id, &entries, &req.known) {
                return answer;
            }
            self.set_adhoc(ps, fetched, id, entries, &req.known);
        }
        let s = self.subs.get_mut(&id).expect("present");
        if let Some(c) = req.contact {
            // RFC 6665 §4.1.2.1: a refresh may update the remote target.
            s.target = c.into_boxed_str();
            s.flow = req.source;
        }
        s.expires_at = Instant::now() + Duration::from_secs(req.expires as u64);
        s.ending = req.expires == 0;
        // RFC 6665 §4.2.1.2: every accepted SUBSCRIBE gets a NOTIFY (sent after the 200).
        s.dirty = true;
        if s.kind == Kind::List {
            s.full = true;
        }
        let mut a = ServiceAnswer::status(200);
        a.to_tag = Some(format!("{:016x}", s.our_tag));
        a.headers.push(("Expires".into(), req.expires.to_string()));
        a.headers.push(("Contact".into(), format!("<{}>", req.to)));
        a.headers
            .push(("Allow-Events".into(), crate::ALLOW_EVENTS.into()));
        // MS-SIP §3.13: a Lync client that allows it gets the first NOTIFY's content in
        // the 200 itself (one round trip less at sign-in, for three subscriptions).
        if s.msrtc && req.expires > 0 && supports(req.msg, "ms-piggyback-first-notify") {
            let (ctype, body) = self.render(ps, id).unwrap_or_default();
            let cseq = req.msg.cseq().map(|c| c.seq).unwrap_or(1);
            a.headers.push(("Event".into(), req.event.clone()));
            a.headers
                .push(("ms-piggyback-cseq".into(), cseq.to_string()));
            a.body = Some((ctype, bytes::Bytes::from(body.into_bytes())));
            let s = self.subs.get_mut(&id).expect("present");
            s.piggybacked = true;
            s.version += 1;
            s.full = false;
            if let Some(list) = s.list.as_mut() {
                list.pending.clear();
            }
        }
        a
    }

    /// Why list subscription `id` may not name `entries` instead of what it names now:
    /// too many entries for its owner (403), or no room for their presentities (503).
    fn check_replacement(
        &self,
        ps: &Presentities,
        id: u64,
        entries: &[String],
        known: &Known,
    ) -> Option<ServiceAnswer> {
        let s = self.subs.get(&id)?;
        let list = s.list.as_ref()?;
        let owner = ps.get(&*s.resource)?;
        let cap = self.config.max_list_entries_per_user;
        if caps::entries_after(owner, &list.resources, entries) > cap {
            return Some(too_many_entries(cap));
        }
        if self.full(ps, caps::new_presentities(ps, entries, known)) {
            return Some(caps::full_answer());
        }
        None
    }

    /// A batched subscription's resources (MS-PRES §3.7.5.6): watched as a list. Only
    /// entries naming known users are linked to (and make) a presentity.
    fn set_adhoc(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        resources: Vec<String>,
        known: &Known,
    ) {
        let Some(list) = self.subs.get_mut(&id).and_then(|s| s.list.as_mut()) else {
            // Not a list dialog: the body has nothing to replace (and nothing may be
            // linked that removing the subscription would not unlink).
            return;
        };
        list.adhoc = true;
        self.relink(ps, fetched, id, resources, known);
    }

    /// List subscription `id` names `fresh` from now on: entries it no longer names are
    /// unlinked, new ones naming known users linked (a presentity each, while there is
    /// room: otherwise they show offline, as entries naming nobody do), its owner's
    /// entry count follows, and its next NOTIFY carries full state.
    fn relink(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        fresh: Vec<String>,
        known: &Known,
    ) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        let owner = s.resource.clone();
        let Some(list) = s.list.as_mut() else {
            return;
        };
        let old = std::mem::take(&mut list.resources);
        let new_set: HashSet<&str> = fresh.iter().map(String::as_str).collect();
        let old_set: HashSet<&str> = old.iter().map(String::as_str).collect();
        for r in old.iter().filter(|r| !new_set.contains(r.as_str())) {
            if let Some(p) = ps.get_mut(r.as_str()) {
                p.watchers.retain(|w| *w != id);
            }
            self.kick_winfo(ps, r);
        }
        for r in fresh.iter().filter(|r| !old_set.contains(r.as_str())) {
            if !known.contains(r) {
                continue;
            }
            if !ps.contains_key(r.as_str()) && self.full(ps, 1) {
                tracing::warn!(entry = %r, "presentity limit reached: list entry not watched");
                continue;
            }
            self.ensure(ps, fetched, r).watchers.push(id);
            self.kick_winfo(ps, r);
        }
        if let Some(p) = ps.get_mut(&*owner) {
            caps::drop_entries(p, &old);
            caps::add_entries(p, &fresh);
        }
        let s = self.subs.get_mut(&id).expect("present");
        if let Some(list) = s.list.as_mut() {
            list.resources = fresh;
        }
        s.full = true;
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        kind: Kind,
        resource: &str,
        watcher: &str,
        event: &str,
        target: String,
        flow: Flow,
        key: u64,
        dialog: (Box<str>, Box<str>),
        list: Option<(Vec<String>, bool)>,
        known: &Known,
    ) -> u64 {
        self.ensure(ps, fetched, resource);
        let resource: Arc<str> = ps
            .get_key_value(resource)
            .map(|(k, _)| k.clone())
            .expect("ensured");
        let list = list
            .filter(|_| kind == Kind::List)
            .map(|(resources, adhoc)| {
                Box::new(ListState {
                    resources,
                    pending: Vec::new(),
                    adhoc,
                })
            });
        let resources = list
            .as_ref()
            .map(|l| l.resources.clone())
            .unwrap_or_default();
        let watcher = self.watcher_key(watcher);
        let id = self.insert(
            key,
            Subscription {
                kind,
                resource: resource.clone(),
                watcher,
                event: (!event.eq_ignore_ascii_case("presence")).then(|| event.into()),
                target: target.into_boxed_str(),
                flow,
                call_id: dialog.0,
                their_tag: dialog.1,
                our_tag: rand::random::<u64>(),
                cseq: 0,
                version: 0,
                expires_at: Instant::now(),
                last_sent: None,
                ending: false,
                in_flight: false,
                dirty: true,
                timer_armed: false,
                full: true,
                list,
                msrtc: false,
                piggybacked: false,
                sent_contacts: None,
            },
        );
        match kind {
            Kind::Presence => {
                self.ensure(ps, fetched, &resource).watchers.push(id);
                // The user's watcher list changed.
                self.kick_winfo(ps, &resource);
            }
            Kind::Winfo | Kind::RoamingContacts | Kind::RoamingSelf => {
                self.ensure(ps, fetched, &resource).winfo.push(id)
            }
            Kind::List => {
                let owner = self.ensure(ps, fetched, &resource);
                owner.lists.push(id);
                caps::add_entries(owner, &resources);
                // Entries naming nobody we know hold nothing: they show offline.
                for r in resources.iter().filter(|r| known.contains(r)) {
                    self.ensure(ps, fetched, r).watchers.push(id);
                    self.kick_winfo(ps, r);
                }
            }
        }
        id
    }

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

    /// The owner's contact list changed: the list subscription follows it, full state next.
    /// `known` says which of the list's entries are users, `fetched` holds the new ones'
    /// presentities (both read outside the lock).
    pub(crate) fn list_membership_changed(
        &mut self,
        ps: &mut Presentities,
        fetched: &mut Fetched<'_>,
        id: u64,
        known: &Known,
    ) {
        let Some(owner) = self.subs.get(&id).map(|s| s.resource.clone()) else {
            return;
        };
        let Some(owner_p) = ps.get(&*owner) else {
            return;
        };
        let fresh = known.entries(
            crate::listed_uris(&owner_p.contacts)
                .iter()
                .map(String::as_str),
        );
        let Some(list) = self.subs.get(&id).and_then(|s| s.list.as_ref()) else {
            return;
        };
        if list.adhoc {
            // The client names its own resources; the stored list does not change them.
            return;
        }
        let cap = self.config.max_list_entries_per_user;
        if caps::entries_after(owner_p, &list.resources, &fresh) > cap {
            // The list grew past the limit (the CLI does not enforce it): the client is
            // invited to subscribe again, and that SUBSCRIBE gets the 403 that says why.
            tracing::info!(owner = %bare(&owner), cap, "contact list over the entry limit: list subscription ended");
            self.terminate(ps, id, "deactivated");
            return;
        }
        self.relink(ps, fetched, id, fresh, known);
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

    /// The next NOTIFY body of subscription `id`, recorded as sent where that matters
    /// (contact-list deltas); `None` when there is nothing new to send.
    fn render(&mut self, ps: &Presentities, id: u64) -> Option<(String, String)> {
        let s = self.subs.get_mut(&id)?;
        if s.kind == Kind::RoamingContacts {
            return crate::lync::next_contacts_document(ps, s);
        }
        Some(self.body(ps, &self.subs[&id]))
    }

    /// The NOTIFY body for a subscription as things stand: (Content-Type, body).
    pub(crate) fn body(&self, ps: &Presentities, s: &Subscription) -> (String, String) {
        match s.kind {
            Kind::RoamingContacts => crate::lync::contacts_document(ps, &s.resource),
            Kind::RoamingSelf => crate::lync::roaming_self_body(ps, self, &s.resource),
            Kind::Presence if s.msrtc => {
                let p = &ps[&*s.resource];
                let v = view_of(&s.resource, p, &s.watcher);
                (
                    crate::lync::CATEGORIES.into(),
                    crate::lync::categories(&v, p),
                )
            }
            Kind::Presence => {
                let p = &ps[&*s.resource];
                let v = view_of(&s.resource, p, &s.watcher);
                ("application/pidf+xml".into(), pidf::render(&v))
            }
            Kind::Winfo => {
                let p = &ps[&*s.resource];
                let mut entries: Vec<WatcherEntry> = Vec::new();
                for wid in &p.watchers {
                    let Some(w) = self.subs.get(wid) else {
                        continue;
                    };
                    if entries.iter().any(|e| *e.uri == *w.watcher) || w.watcher == s.resource {
                        continue;
                    }
                    let (status, event) = match p.relationship_of(&w.watcher) {
                        None => ("pending", "subscribe"),
                        Some(switchboard_core::Relationship::Blocked) => ("terminated", "rejected"),
                        Some(_) => ("active", "approved"),
                    };
                    entries.push(WatcherEntry {
                        id: format!("w{wid}"),
                        uri: w.watcher.to_string(),
                        status,
                        event,
                    });
                }
                (
                    "application/watcherinfo+xml".into(),
                    documents::watcherinfo(&s.resource, s.version, &entries),
                )
            }
            Kind::List => {
                let empty = ListState::default();
                let list = s.list.as_deref().unwrap_or(&empty);
                let shown: Vec<&String> = if s.full {
                    list.resources.iter().collect()
                } else {
                    list.resources
                        .iter()
                        .filter(|r| list.pending.contains(r))
                        .collect()
                };
                // Entries naming nobody we know (or a user beyond the presentity limit)
                // have no presentity: they show offline, built here and held nowhere.
                let absent = shown
                    .iter()
                    .any(|r| !ps.contains_key(r.as_str()))
                    .then(|| crate::unknown_presentity(&self.config.rules, self.clock.now_ms()));
                let resources: Vec<ListResource> = shown
                    .into_iter()
                    .filter_map(|r| {
                        let p = ps.get(r.as_str()).or(absent.as_ref())?;
                        let v = view_of(r, p, &s.watcher);
                        let (content_type, body) = if s.msrtc {
                            (crate::lync::CATEGORIES, crate::lync::categories(&v, p))
                        } else {
                            ("application/pidf+xml", pidf::render(&v))
                        };
                        Some(ListResource {
                            uri: r.clone(),
                            name: v.card.display_name.clone(),
                            content_type,
                            body,
                        })
                    })
                    .collect();
                documents::rlmi(&s.resource, s.version, s.full, &resources, s.msrtc)
            }
        }
    }

    fn notify_request(s: &Subscription, state: String, body: (String, String)) -> Option<Message> {
        let target = Uri::parse(&s.target).ok()?;
        let mut m = Message::request(Method::Notify, target.clone());
        m.start = StartLine::Request {
            method: Method::Notify,
            uri: target,
        };
        m.headers.push(HeaderName::MaxForwards, "70");
        m.headers.push(
            HeaderName::From,
            format!("<{}>;tag={:016x}", s.resource, s.our_tag),
        );
        let to = if s.their_tag.is_empty() {
            format!("<{}>", s.watcher)
        } else {
            format!("<{}>;tag={}", s.watcher, s.their_tag)
        };
        m.headers.push(HeaderName::To, to);
        m.headers.push(HeaderName::CallId, s.call_id.to_string());
        m.headers
            .push(HeaderName::CSeq, format!("{} NOTIFY", s.cseq));
        m.headers
            .push(HeaderName::Contact, format!("<{}>", s.resource));
        m.headers
            .push(HeaderName::Event, s.event.as_deref().unwrap_or("presence"));
        m.headers
            .push(HeaderName::from_wire("Subscription-State"), state);
        if s.kind == Kind::List && !s.msrtc {
            m.headers.push(HeaderName::Require, "eventlist");
        }
        m.headers.push(HeaderName::ContentType, body.0);
        m.body = bytes::Bytes::from(body.1.into_bytes());
        Some(m)
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
