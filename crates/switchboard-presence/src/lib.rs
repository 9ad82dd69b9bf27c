//! # switchboard-presence: the presence service
//!
//! Keeps one presence model per user ([`model`]) fed by every device's publications, the
//! state a user sets by hand and their calendar, aggregates it by written rules
//! ([`aggregate`](mod@aggregate)), and shows each watcher what their relationship allows
//! ([`privacy`]).
//!
//! Standard SIP/SIMPLE on top, attached to the SIP core as its [`EventHook`]:
//! - PUBLISH (RFC 3903) of PIDF/RPID ([`pidf`]): ETags, refresh, modify, remove, expiry;
//! - SUBSCRIBE/NOTIFY (RFC 6665, RFC 3856) to a user's presence, with refresh,
//!   termination, expiry, `Subscription-State` reasons and a NOTIFY rate limit per
//!   subscription (at most one in flight, at most one per `notify_interval`, the newest
//!   state always);
//! - resource lists (RFC 4662): a user SUBSCRIBEs to their own address with
//!   `Supported: eventlist` and gets their whole contact list in batched
//!   `multipart/related` RLMI NOTIFYs, full state first and changed resources after;
//! - watcher information (RFC 3857/3858): `Event: presence.winfo` to one's own address
//!   lists who watches; watchers not on the user's contact list are `pending` until the
//!   user places them (any relationship), blocked ones are `terminated`/`rejected`.
//!
//! The seam ([`EventHook`], and the [`Deliverer`] its NOTIFYs leave through) and the
//! [`Flow`] a subscription's NOTIFYs go back over are `switchboard-core`'s: this crate
//! depends on core, sip-message and msrtc, never on the router or a transport.
//!
//! Blocking is polite (the Lync behaviour): a blocked watcher's subscription is accepted
//! and sees the user offline, so it cannot tell it was blocked.
//!
//! Contact lists, hand-set and calendar state live in the database, reached through the
//! data traits of `switchboard-core` ([`ContactData`], [`PresenceData`], [`Directory`]):
//! the service never names a backend. The CLI writes there and appends to a change log
//! this service follows, so watchers hear about CLI changes too. Publications and
//! subscriptions are kept in memory: clients refresh both.
//!
//! **Layout.** Each concern is a struct that owns its state, behind one state lock
//! (`State`):
//! - `publications` — `publications::Publications`, one user's RFC 3903 publications
//!   (entity tags, expiry, the per-user cap) and what they aggregate to; the PUBLISH
//!   handler;
//! - `notifier` — `notifier::Notifier`, subscriptions and their dialogs (RFC 6665),
//!   watcher lists (RFC 3857), resource lists (RFC 4662), NOTIFY pacing, rendering and
//!   delivery over each subscription's flow (`notifier/mod.rs`); the SUBSCRIBE handler
//!   and list membership (`notifier/subscribe.rs`); NOTIFY bodies (`notifier/render.rs`);
//! - `lync` — MS-PRES category publications and endpoint flows (`lync/publish.rs`),
//!   roaming-self and containers (`lync/roaming.rs`), roaming contacts and SOAP edits
//!   (`lync/contacts.rs`), provisioning and the SERVICE dispatch (`lync/mod.rs`);
//! - `fetch` — loading presentities outside the lock and failing closed; `caps` — the
//!   bounds on what one user can make the service hold;
//! - pure, no state: [`model`], [`aggregate`](mod@aggregate), [`privacy`], [`pidf`],
//!   `documents`.
//!
//! [`PresenceService`] keeps the wiring, the [`EventHook`] that dispatches to the parts,
//! housekeeping, shutdown and the loading of presentities (`fetch`); so its request
//! handlers stay with it, each thin: read the request (a part's function), await what
//! it needs, then hand it to the part under the lock. The parts never hold the service: the notifier's paced
//! NOTIFYs hold a weak reference to the state lock, and a part that needs another's
//! state is given it as an argument (the notifier is given the presentities it renders).
//!
//! **One state lock.** A change and the notifications it triggers are decided together:
//! a PUBLISH re-aggregates and marks every watcher's subscription in the same step, so a
//! watcher is never sent a state older than one it was already sent, and a subscription
//! and the presentity links it makes appear at once. So presentities, publications,
//! subscriptions and Lync flows share one `parking_lot` mutex, each part's state a field
//! of it. The rule under it: decide under the lock, await outside it, apply. Never held
//! across an await, a data call, or a deliverer (network) call: NOTIFYs are handed to
//! spawned tasks, and their answers take the lock again. The only other locks are
//! leaves: `fetch::Reads` is asked briefly under this one and never takes it; the
//! change-log position and the prune time are never held with it.
//!
//! **No data call under a lock.** A request decides under the state lock which
//! presentities it needs that are not held, releases the lock, reads them, and applies
//! itself under the lock again (module `fetch`); a presentity another request loaded
//! meanwhile is kept and the copy read for this one dropped (it holds no watcher and no
//! publication), and a copy read before the change log reported a change to that user
//! is read again.
//!
//! **Failing closed.** A presentity is built only from reads that all succeeded; nothing
//! half-read is held. When its stored state, its owner's contact list or the directory
//! cannot be read:
//! - a SUBSCRIBE that needs it is answered **503 with `Retry-After`**, so the watcher
//!   learns nothing, not even a default relationship's view (a blocked watcher would
//!   otherwise be taken for a colleague); the same for PUBLISH, SERVICE and list
//!   subscriptions that need data they cannot read, and for writes that fail;
//! - a presentity already held whose re-read (after a change) fails shows **offline to
//!   every watcher** but its owner, new SUBSCRIBEs to it get 503, and housekeeping reads
//!   it again until it succeeds; then every watcher gets the view their relationship
//!   allows again.
//!
//! Every [`DataError`] becomes that one answer in one place (`fetch::unavailable`);
//! [`PresenceService::view`] (the HTTP API) returns the error instead of a view.
//!
//! What one user can make the service hold is bounded ([`PresenceConfig`]): publications
//! per user, distinct entries over a user's lists, presentities server-wide. A presentity
//! exists only for a user the directory knows, and only while it is watched or publishes;
//! list entries naming anybody else show offline and hold nothing.
#![forbid(unsafe_code)]

pub mod aggregate;
mod caps;
mod documents;
mod fetch;
mod lync;
pub mod model;
mod notifier;
pub mod pidf;
mod pool;
pub mod privacy;
mod publications;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sip_message::Message;
use switchboard_core::seam::{Connection, Deliverer, EventHook, Flow, Responder, ServiceAnswer};
use switchboard_core::{
    ContactData, ContactList, DataError, Directory, PresenceData, Relationship, StoredPresence,
};
use tokio::time::Instant;

pub use aggregate::{aggregate, AggregationRules};
pub use model::{Activity, Availability, DeviceState, Presence};
pub use privacy::{Audience, View};

/// The event packages the service keeps state for (the Lync ones are its own
/// roaming data, contact list and provisioning, MS-SIP §2.2.2).
pub(crate) const ALLOW_EVENTS: &str = "presence, presence.winfo, vnd-microsoft-roaming-contacts, vnd-microsoft-roaming-self, vnd-microsoft-provisioning-v2";

/// Presence settings.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub rules: AggregationRules,
    /// At most one NOTIFY per subscription this often (RFC 6665 §4.2.2 throttling); the
    /// newest state is sent when the interval is over. Zero: no pacing.
    pub notify_interval: Duration,
    /// Bounds of subscription and publication lifetimes (423 below the minimum).
    pub min_expires: u32,
    pub max_expires: u32,
    /// Subscriptions a user may hold at once (a runaway client gets 503 beyond it).
    pub max_subscriptions_per_watcher: usize,
    /// Publications (devices, one entity tag each) a user may hold at once: a PUBLISH
    /// that would start one more gets 403; refreshing or changing one always works.
    pub max_publications_per_user: usize,
    /// Distinct entries of all of a user's resource lists and batched subscriptions
    /// together (Lync's `MaxContacts`): a list subscription naming more gets 403.
    pub max_list_entries_per_user: usize,
    /// Presentities held in memory, server-wide: a request that would need more gets
    /// 503 with Retry-After.
    pub max_presentities: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            rules: AggregationRules::default(),
            notify_interval: Duration::from_secs(1),
            min_expires: 60,
            max_expires: 3600,
            max_subscriptions_per_watcher: 1000,
            // One per device, as many as the registrar lets a user register.
            max_publications_per_user: 32,
            max_list_entries_per_user: 1000,
            max_presentities: 200_000,
        }
    }
}

/// Everything the service holds about one user while anyone looks at them.
struct Presentity {
    publications: publications::Publications,
    stored: StoredPresence,
    display_name: Option<String>,
    /// The user's own contact list: the relationship they gave each contact.
    contacts: ContactList,
    /// The user's contact groups with their stored ids (Lync numbers groups by them).
    groups: Vec<(i64, String)>,
    /// Subscriptions watching this user: presence, and lists that include them.
    watchers: Vec<u64>,
    /// This user's own watcher-information subscriptions.
    winfo: Vec<u64>,
    /// This user's own contact-list subscriptions.
    lists: Vec<u64>,
    /// What the user's Lync clients published.
    lync: lync::LyncData,
    /// The entries of this user's own list subscriptions, each with how many of those
    /// lists name it: what counts against `max_list_entries_per_user`.
    list_entries: HashMap<String, u32>,
    /// The last read of the user's data failed: what is held may no longer be what they
    /// allow (they may just have blocked someone), so every watcher but the user sees
    /// them offline until a read succeeds (housekeeping keeps trying).
    unreadable: bool,
}

impl Presentity {
    fn relationship_of(&self, watcher: &str) -> Option<Relationship> {
        let bare = watcher.strip_prefix("sip:").unwrap_or(watcher);
        self.contacts
            .contacts
            .iter()
            .find(|c| c.contact == bare)
            .map(|c| c.relationship)
    }
}

/// Everything behind the service's one state lock, each concern in its own part.
///
/// One lock remains because a change and the notifications it triggers are decided
/// together: a PUBLISH re-aggregates and marks every watcher's subscription dirty in one
/// step, so no watcher can be sent a state older than one it was already sent. The parts
/// never lock anything themselves and never await.
pub(crate) struct State {
    /// The users held, each with their publications (`publications::Publications`),
    /// stored data and Lync data ([`lync::LyncData`]).
    presentities: Presentities,
    /// Subscriptions and their dialogs (RFC 6665).
    notifier: notifier::Notifier,
    /// The users whose Lync endpoint instances each connection carries.
    lync_flows: lync::EndpointFlows,
    /// Last-active times not yet written (written in batches by housekeeping).
    last_active: HashMap<String, i64>,
    /// In a pool: users (`user@domain`) whose devices here changed and are not yet
    /// written for the other front ends (JSON; `None`: no device here any more).
    pool_dirty: Option<HashMap<String, Option<String>>>,
}

/// The users held, by address.
pub(crate) type Presentities = HashMap<Arc<str>, Presentity>;

impl State {
    /// Recomputes `aor`'s aggregate from its publications; when it changed, its
    /// watchers and its owner's Lync endpoints hear of it.
    fn reaggregate(&mut self, aor: &str, rules: &AggregationRules, now: i64) {
        let Some(p) = self.presentities.get_mut(aor) else {
            return;
        };
        if let Some(dirty) = &mut self.pool_dirty {
            // The other front ends of the pool hear of what changed here (`pool`).
            let devices = p.publications.devices();
            let json =
                (!devices.is_empty()).then(|| serde_json::to_string(&devices).unwrap_or_default());
            if json != p.publications.pool_written
                && (json.is_some() || p.publications.pool_written.is_some())
            {
                p.publications.pool_written = json.clone();
                dirty.insert(bare(aor).to_owned(), json);
            }
        }
        let Some(publications::Gone(gone)) = p.publications.reaggregate(&mut p.stored, rules, now)
        else {
            return;
        };
        if gone {
            // A6: remember when the last device went away (written by housekeeping, off
            // the request path, a batch at a time).
            self.last_active.insert(bare(aor).to_owned(), now);
        }
        self.notifier.presence_changed(&mut self.presentities, aor);
    }
}

/// A clock in milliseconds since the epoch that follows tokio time, so tests that pause
/// time move calendar and expiry together.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    wall_at_start_ms: i64,
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall_at_start_ms: wall_ms(),
            start: Instant::now(),
        }
    }
    fn now_ms(&self) -> i64 {
        self.wall_at_start_ms + self.start.elapsed().as_millis() as i64
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn bare(aor: &str) -> &str {
    aor.strip_prefix("sip:").unwrap_or(aor)
}

/// The contacts on a user's list (not those only given a relationship), as `sip:` URIs:
/// what their contact-list subscriptions name.
fn listed_uris(contacts: &ContactList) -> Vec<String> {
    contacts
        .contacts
        .iter()
        .filter(|c| c.listed)
        .map(|c| format!("sip:{}", c.contact))
        .collect()
}

fn domain_of(aor: &str) -> &str {
    bare(aor).rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// A presentity with nobody watching yet, its presence aggregated from what it has.
fn presentity(data: fetch::UserData, rules: &AggregationRules, now: i64) -> Presentity {
    Presentity {
        publications: publications::Publications::new(&data.stored, rules, now),
        stored: data.stored,
        display_name: data.display_name,
        contacts: data.contacts,
        groups: data.groups,
        watchers: Vec::new(),
        winfo: Vec::new(),
        lists: Vec::new(),
        lync: lync::LyncData::default(),
        list_entries: HashMap::new(),
        unreadable: false,
    }
}

/// What stands for a list entry that names no user we know: offline with nothing stored,
/// as such an entry has always been shown, but held nowhere (nothing per entry in memory).
fn unknown_presentity(rules: &AggregationRules, now: i64) -> Presentity {
    presentity(fetch::UserData::default(), rules, now)
}

/// Whom `watcher` counts as for `aor`: the user themself, or their relationship (the
/// default one for the domains when the user gave none).
fn audience(aor: &str, p: &Presentity, watcher: &str) -> Audience {
    if bare(watcher) == bare(aor) {
        return Audience::Own;
    }
    if p.unreadable {
        // Fail closed: what the user allows this watcher is not known now.
        return Audience::Watcher(Relationship::Blocked);
    }
    Audience::Watcher(
        p.relationship_of(watcher)
            .unwrap_or_else(|| Audience::default_for(domain_of(aor), domain_of(watcher))),
    )
}

/// What `watcher` may see of `aor`, held as `p`.
fn view_of(aor: &str, p: &Presentity, watcher: &str) -> View {
    View::of(
        aor,
        p.publications.presence(),
        p.display_name.as_deref(),
        &p.stored.card,
        audience(aor, p, watcher),
    )
}

/// What `watcher` may see of `aor` from what the database holds about them (read by the
/// caller: `stored`, their contact list, their display name), with no device online:
/// the answer when no server is running (its devices are then all gone).
pub fn stored_view(
    rules: &AggregationRules,
    aor: &str,
    watcher: Option<&str>,
    stored: StoredPresence,
    contacts: ContactList,
    display_name: Option<String>,
    now_ms: i64,
) -> View {
    let data = fetch::UserData {
        stored,
        contacts,
        groups: Vec::new(),
        display_name,
    };
    let p = presentity(data, rules, now_ms);
    View::of(
        aor,
        p.publications.presence(),
        p.display_name.as_deref(),
        &p.stored.card,
        audience(aor, &p, watcher.unwrap_or(aor)),
    )
}

/// The presence service. Create with [`PresenceService::start`], giving it the router's
/// outbound side as its [`Deliverer`], then give it to the router as its event hook.
pub struct PresenceService {
    /// Itself, for the presentity reads it spawns from `&self` (module `fetch`); they
    /// end when the service is dropped.
    me: Weak<PresenceService>,
    contacts: Arc<dyn ContactData>,
    presence: Arc<dyn PresenceData>,
    directory: Arc<dyn Directory>,
    config: PresenceConfig,
    clock: Clock,
    /// The one state lock (see [`State`]); shared with the notifier's paced NOTIFYs.
    state: Arc<Mutex<State>>,
    /// Reads of presentities under way (never locked while `state` is awaited on).
    reads: fetch::Reads,
    /// The change-log position already applied.
    change_seq: Mutex<i64>,
    /// When the store was last pruned.
    pruned_at: Mutex<Instant>,
    /// The conferencing focus factory's URI for a user, when conferences are offered
    /// (written in Lync provisioning).
    focus_factory: Option<FocusFactory>,
    /// This server's Enterprise pool, when it is a front end of one.
    pool: Option<PoolPresence>,
}

/// A front end's share of its pool's presence: its users' devices are written for the
/// other front ends, and theirs are read with each user's stored state (see `pool`).
pub struct PoolPresence {
    pub data: Arc<dyn switchboard_core::pool::PoolPresenceData>,
    /// This front end's membership now (its epoch changes when it rejoins).
    pub member: Arc<dyn Fn() -> switchboard_core::pool::Membership + Send + Sync>,
}

/// Names the focus factory for a user (`sip:…`).
pub type FocusFactory = Box<dyn Fn(&str) -> String + Send + Sync>;

impl PresenceService {
    /// Opens the service over its data and starts its housekeeping (expiry of
    /// publications and subscriptions, time-driven changes, following the change log,
    /// reading again what could not be read). NOTIFYs leave through `deliverer`;
    /// `focus_factory`, when given, offers conferences to Lync clients (provisioning
    /// names the focus factory it returns for a user).
    pub async fn start(
        contacts: Arc<dyn ContactData>,
        presence: Arc<dyn PresenceData>,
        directory: Arc<dyn Directory>,
        config: PresenceConfig,
        deliverer: Arc<dyn Deliverer>,
        focus_factory: Option<FocusFactory>,
        pool: Option<PoolPresence>,
    ) -> Arc<PresenceService> {
        // Unreadable: follow from the start of the log (nothing is held yet, so that
        // only costs a longer first read).
        let seq = presence.latest_change().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the presence change log");
            0
        });
        let clock = Clock::new();
        // NOTIFYs leave through the router's outbound side, which does not hold the
        // service (no ring); paced ones take the state lock when they fire.
        let state = Arc::new_cyclic(|weak| {
            Mutex::new(State {
                presentities: HashMap::new(),
                notifier: notifier::Notifier::new(config.clone(), clock, deliverer, weak.clone()),
                lync_flows: lync::EndpointFlows::default(),
                last_active: HashMap::new(),
                pool_dirty: pool.is_some().then(HashMap::new),
            })
        });
        let svc = Arc::new_cyclic(|me| PresenceService {
            me: me.clone(),
            contacts,
            presence,
            directory,
            config,
            clock,
            state,
            reads: fetch::Reads::default(),
            change_seq: Mutex::new(seq),
            pruned_at: Mutex::new(Instant::now()),
            focus_factory,
            pool,
        });
        if svc.pool.is_some() {
            tokio::spawn(pool::write_devices(Arc::downgrade(&svc)));
        }
        let weak = Arc::downgrade(&svc);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                svc.follow_changes().await;
                if n.is_multiple_of(4) {
                    svc.expire().await;
                    svc.read_unreadable().await;
                }
                n += 1;
            }
        });
        svc
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Numbers for `/status`: presentities held, publications, subscriptions.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock();
        let pubs = st.presentities.values().map(|p| p.publications.len()).sum();
        (st.presentities.len(), pubs, st.notifier.len())
    }

    /// What `watcher` (an AoR; `None` for the user themself) may see of `aor` now: the
    /// path the HTTP API and the CLI use. A user nobody holds is read for the answer and
    /// not kept (API lookups must not fill the table); unreadable data is an error, not a
    /// guess.
    pub async fn view(&self, aor: &str, watcher: Option<&str>) -> Result<View, DataError> {
        let watcher = watcher.unwrap_or(aor);
        let held = {
            let st = self.state.lock();
            st.presentities.get(aor).map(|p| view_of(aor, p, watcher))
        };
        if let Some(v) = held {
            return Ok(v);
        }
        let now = self.now_ms();
        let data = self.read_user(aor, now).await?;
        let p = presentity(data, &self.config.rules, now);
        Ok(view_of(aor, &p, watcher))
    }

    /// Applies changes the CLI (or another process) logged: reloads each user's stored
    /// state and contact list and tells whoever is affected.
    async fn follow_changes(&self) {
        let since = *self.change_seq.lock();
        let (last, changed) = match self.presence.changes_since(since).await {
            Ok(x) => x,
            Err(e) => {
                // Read again from the same position next time: nothing is lost, and what
                // is held was read whole.
                tracing::warn!(error = %e, "cannot read the presence change log");
                return;
            }
        };
        *self.change_seq.lock() = last;
        for addr in changed {
            let aor = format!("sip:{addr}");
            // Reads under way may have read the user before this change: they read again.
            self.reads.changed(&aor);
            self.reload(&aor).await;
        }
    }

    /// Re-reads `aor`'s stored state and contact list (they changed in the database).
    /// When that fails, watchers see the user offline until a read succeeds.
    pub async fn reload(&self, aor: &str) {
        if let Err(e) = self.try_reload(aor).await {
            tracing::warn!(error = %e, aor, "cannot read presence data: watchers see offline until it is read");
        }
    }

    /// Reads again every presentity whose last read failed, while reads succeed (one
    /// failure means the data is still unavailable: the rest wait for the next round).
    async fn read_unreadable(&self) {
        let unreadable: Vec<String> = {
            let st = self.state.lock();
            st.presentities
                .iter()
                .filter(|(_, p)| p.unreadable)
                .map(|(aor, _)| aor.to_string())
                .collect()
        };
        for aor in unreadable {
            if self.try_reload(&aor).await.is_err() {
                return;
            }
        }
    }

    /// Expires publications and subscriptions; applies time-driven changes.
    async fn expire(&self) {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let last_active: Vec<(String, i64)> = {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let mut touched = Vec::new();
            for (aor, p) in st.presentities.iter_mut() {
                let expired = p.publications.expire(now);
                if expired
                    || p.publications
                        .presence()
                        .next_change_ms
                        .is_some_and(|t| t <= now_ms)
                {
                    touched.push(aor.clone());
                }
            }
            for aor in touched {
                st.reaggregate(&aor, &self.config.rules, now_ms);
            }
            let expired = st.notifier.expired(now);
            for id in expired {
                st.notifier.terminate(&mut st.presentities, id, "timeout");
            }
            // Forget users nobody watches and who publish nothing.
            st.presentities.retain(|_, p| {
                !p.publications.is_empty()
                    || !p.watchers.is_empty()
                    || !p.winfo.is_empty()
                    || !p.lists.is_empty()
            });
            st.last_active.drain().collect()
        };
        if !last_active.is_empty() {
            if let Err(e) = self.presence.set_last_active_many(&last_active).await {
                tracing::warn!(error = %e, "cannot store last-active times: trying again later");
                // Kept for the next round, unless a newer time was noted meanwhile.
                let mut st = self.state.lock();
                for (aor, at) in last_active {
                    st.last_active.entry(aor).or_insert(at);
                }
            }
        }
        // Once an hour: change-log rows older than a day, calendar entries that ended.
        let prune = {
            let mut pruned = self.pruned_at.lock();
            let due = now.duration_since(*pruned) >= Duration::from_secs(3600);
            if due {
                *pruned = now;
            }
            due
        };
        if prune {
            if let Err(e) = self.presence.prune(now_ms - 86_400_000).await {
                tracing::warn!(error = %e, "cannot prune presence change log");
            }
        }
    }

    /// This front end was fenced out of its pool (reaped while it could not heartbeat):
    /// the publications its devices made are no longer the pool's (its clients reconnect
    /// and publish again, here or elsewhere), so they go, and its users are aggregated
    /// from what the pool holds. Their subscriptions went with the connections.
    pub fn fenced(&self) {
        let now_ms = self.now_ms();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let held: Vec<Arc<str>> = st.presentities.keys().cloned().collect();
        for aor in held {
            if let Some(p) = st.presentities.get_mut(&aor) {
                p.publications.clear();
                // Written again under the new epoch once devices publish here again.
                p.publications.pool_written = None;
            }
            st.reaggregate(&aor, &self.config.rules, now_ms);
        }
        if let Some(dirty) = &mut st.pool_dirty {
            dirty.clear();
        }
    }

    /// Ends every subscription (the server is stopping): RFC 6665 §4.2.2 `noresource`
    /// would make clients give up, so `deactivated` invites them to resubscribe.
    pub fn shutdown(&self) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        for id in st.notifier.ids() {
            st.notifier
                .terminate(&mut st.presentities, id, "deactivated");
        }
    }
}

#[async_trait::async_trait]
impl EventHook for PresenceService {
    fn serves_event(&self, event: &str) -> bool {
        ALLOW_EVENTS.split(", ").any(|e| e == event)
    }

    fn allow_events(&self) -> String {
        ALLOW_EVENTS.into()
    }

    async fn handle(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        source: Flow,
        responder: Responder<'_>,
    ) {
        let answer = match msg.method() {
            Some(sip_message::Method::Publish) => self.publish(msg, from, to).await,
            Some(sip_message::Method::Subscribe) => self.subscribe(msg, from, to, source).await,
            Some(sip_message::Method::Service) => self.service(msg, from, to, source).await,
            _ => ServiceAnswer::status(405),
        };
        let status = responder.send(answer).await;
        // RFC 6665 §4.2.1.2: the first NOTIFY goes once the 200 has.
        if (200..300).contains(&status) && msg.method() == Some(&sip_message::Method::Subscribe) {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            st.notifier
                .answered_subscribe(&mut st.presentities, msg, from);
        }
    }

    fn flow_closed(&self, id: Connection) {
        self.lync_flow_closed(id);
    }
}
