//! The Lync dialect of the presence service (MS-PRES, MS-SIP): the same presence model,
//! read and written as Microsoft documents ([`msrtc`]).
//!
//! - SERVICE `msrtc-category-publish+xml`: a client's category instances are kept with
//!   versions (a stale version gets 409 `WrongDelta`, MS-PRES §3.7.5.4). The states it
//!   publishes into the aggregation containers become input to the one aggregation
//!   (MS-PRES §3.7.5.5 done by our rules): each endpoint's `machineState` is a device;
//!   a `userState` is the hand-set state (shared with `presence set`) while the user has
//!   a Lync endpoint signed in; `phoneState`
//!   on the phone is a call; the personal `note` is the devices' note.
//! - Watchers that read categories get the aggregate `state` with its activity token,
//!   `note` and `contactCard`, filtered by their relationship exactly as PIDF watchers
//!   are, in the container that relationship maps to.
//! - `vnd-microsoft-roaming-self`: own instances, the aggregate (container 2), the
//!   containers (their members are the relationships of the contact list) and watchers.
//! - `vnd-microsoft-roaming-contacts`: the stored contact list, then deltas; SOAP edits
//!   over SERVICE change it.
//! - `setContainerMembers` puts users in containers, which are our relationships:
//!   100 external, 200 colleagues, 300 workgroup, 400 friends, 32000 blocked.

use std::collections::HashSet;
use std::sync::Arc;

use msrtc::categories::{Category, Container, Snapshot, Subscriber};
use msrtc::publish::{PublishedState, StateKind};
use msrtc::{band, Band};
use sip_message::Message;
use switchboard_core::seam::ServiceAnswer;
use switchboard_core::seam::{Connection, Flow};
use switchboard_core::{DataError, ManualState, Relationship};
use tokio::time::Instant;

use crate::fetch::{self, Fetched};
use crate::model::{Activity, Availability, DeviceState, NoteKind};
use crate::privacy::{Audience, View};
use crate::subscribe::Kind;
use crate::{bare, domain_of, PresenceService, Presentity, Publication, State};

pub(crate) const CATEGORIES: &str = "application/msrtc-event-categories+xml";
const ROAMING_SELF: &str = "application/vnd-microsoft-roaming-self+xml";
const ROAMING_CONTACTS: &str = "application/vnd-microsoft-roaming-contacts+xml";
/// Names the devices that stand for Lync endpoints (`msrtc:<machine state instance>`).
const DEVICE_PREFIX: &str = "msrtc:";

/// What a user's Lync clients published, and whom they acknowledged as watchers.
#[derive(Default)]
pub(crate) struct LyncData {
    pub(crate) categories: Vec<StoredCategory>,
    acknowledged: HashSet<String>,
    /// Bumped whenever anything in the roaming data changes.
    version: u32,
    /// When a client's user state last became the hand-set state (its `set_at_ms`): it
    /// lasts while the user has a Lync endpoint, as in Lync, where signing out of the
    /// last one shows offline whatever was set.
    client_manual_at: Option<i64>,
}

pub(crate) struct StoredCategory {
    cat: Category,
    /// The connection of the endpoint that published it (`endpoint` instances end with it).
    flow: Option<Connection>,
    /// What a `state` instance says, read once when published.
    state: Option<PublishedState>,
    /// What a `note` instance says (text, out of office).
    note: Option<(String, bool)>,
}

impl StoredCategory {
    /// A state instance of the aggregation's input container 2 (MS-PRES §3.7.5.5; the
    /// same states published into container 3 are its copy for the workgroup).
    fn aggregation_state(&self) -> Option<&PublishedState> {
        self.state.as_ref().filter(|_| self.cat.container == 2)
    }
}

fn with_warning(status: u16, text: &str) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.headers
        .push(("Warning".into(), format!("399 switchboard \"{text}\"")));
    a
}

fn availability_of(b: Band) -> Availability {
    match b {
        Band::Available => Availability::Available,
        Band::Idle => Availability::Inactive,
        Band::Busy | Band::BusyIdle => Availability::Busy,
        Band::DoNotDisturb => Availability::DoNotDisturb,
        Band::BeRightBack => Availability::BeRightBack,
        Band::Away => Availability::Away,
        Band::Offline => Availability::Offline,
    }
}

fn activity_of(token: &str) -> Option<Activity> {
    match token {
        "on-the-phone" => Some(Activity::InACall),
        "in-a-meeting" => Some(Activity::InAMeeting),
        "in-a-conference" => Some(Activity::InAConference),
        "in-presentation" => Some(Activity::Presenting),
        "out-of-office" => Some(Activity::OutOfOffice),
        _ => None,
    }
}

/// The activity token Lync shows for the most telling activity.
fn token_of(activities: &[Activity]) -> Option<&'static str> {
    [
        (Activity::Presenting, "in-presentation"),
        (Activity::InAConference, "in-a-conference"),
        (Activity::InACall, "on-the-phone"),
        (Activity::InAMeeting, "in-a-meeting"),
        (Activity::OutOfOffice, "out-of-office"),
    ]
    .into_iter()
    .find(|(a, _)| activities.contains(a))
    .map(|(_, t)| t)
}

/// The container a watcher's relationship maps to (MS-PRES §3.7.4.1).
fn container_of(audience: Audience) -> u32 {
    match audience {
        Audience::Own => 2,
        Audience::Watcher(Relationship::Blocked) => 32000,
        Audience::Watcher(Relationship::External) => 100,
        Audience::Watcher(Relationship::Colleagues) => 200,
        Audience::Watcher(Relationship::Workgroup) => 300,
        Audience::Watcher(Relationship::Friends) => 400,
    }
}

fn relationship_of(container: u32) -> Option<Relationship> {
    Some(match container {
        32000 => Relationship::Blocked,
        100 => Relationship::External,
        200 => Relationship::Colleagues,
        300 => Relationship::Workgroup,
        400 => Relationship::Friends,
        _ => return None,
    })
}

fn snapshot(v: &View, version: u32) -> Snapshot {
    let number = if v.availability == Availability::Offline {
        18500
    } else {
        v.availability.lync_number()
    };
    Snapshot {
        uri: v.entity.clone(),
        availability: number,
        activity: token_of(&v.activities).map(str::to_owned),
        meeting: v
            .meeting
            .as_ref()
            .map(|m| (m.subject.clone(), m.location.clone())),
        note: v
            .note
            .as_ref()
            .map(|n| (n.text.clone(), n.kind == NoteKind::OutOfOffice)),
        display_name: v.card.display_name.clone(),
        email: v.card.email.clone(),
        title: v.card.title.clone(),
        work_phone: v.card.work_phone.clone(),
        personal_phone: v.card.personal_phone.clone(),
        container: container_of(v.audience),
        publish_time: crate::pidf::fmt_rfc3339(crate::wall_ms()),
        version,
    }
}

/// What one watcher may see of a presentity, as categories.
pub(crate) fn categories(v: &View, p: &Presentity) -> String {
    msrtc::categories::event_categories(&snapshot(v, p.lync.version.max(1)))
}

/// One SERVICE `msrtc-category-publish+xml`, as parsed.
struct CategoryPublish<'a> {
    aor: &'a str,
    pubs: &'a [msrtc::publish::Publication],
    source: Flow,
    now: i64,
}

/// What a category publication does to the hand-set state.
enum HandSet {
    Set(ManualState),
    Clear,
}

/// Where a category publication stands after a look under the lock.
enum Step {
    Done(ServiceAnswer),
    /// The hand-set state must be written to the store first (outside the lock).
    Write(HandSet),
}

/// The hand-set state is the user's, kept with `presence set`'s: a client that signs in
/// publishes "available" by hand, which must not undo a state set elsewhere, so only a
/// change away from its own earlier state counts.
fn hand_set_change(
    p: &Presentity,
    pubs: &[msrtc::publish::Publication],
    now: i64,
) -> Option<HandSet> {
    let had_user_state = p.lync.categories.iter().any(|c| {
        c.aggregation_state()
            .is_some_and(|s| s.kind == StateKind::User)
    });
    let mut user_state: Option<Option<Band>> = None;
    for x in pubs.iter().filter(|x| x.container == 2) {
        if let Some(s) = msrtc::publish::read_state(x).filter(|s| s.kind == StateKind::User) {
            user_state = Some(if x.remove {
                None
            } else {
                s.availability.map(band)
            });
        }
    }
    match user_state {
        Some(Some(b)) if b != Band::Available => {
            let token = match availability_of(b) {
                Availability::Busy => "busy",
                Availability::DoNotDisturb => "dnd",
                Availability::BeRightBack => "brb",
                Availability::Offline => "offline",
                _ => "away",
            };
            Some(HandSet::Set(ManualState {
                availability: token.into(),
                note: None,
                until_ms: None,
                set_at_ms: now,
            }))
        }
        Some(_) if had_user_state => Some(HandSet::Clear),
        _ => None,
    }
}

impl PresenceService {
    /// `vnd-microsoft-provisioning-v2` is a fetch (`Expires: 0`): the answer carries the
    /// configuration itself (piggy-backed, MS-SIP §3.13) and no subscription is kept.
    pub(crate) fn provisioning(&self, msg: &Message, from: &str, to: &str) -> ServiceAnswer {
        if from != to {
            return with_warning(403, "only the user may read their own provisioning");
        }
        let mut a = ServiceAnswer::status(200);
        a.to_tag = Some(format!("{:016x}", rand::random::<u64>()));
        a.headers.push(("Expires".into(), "0".into()));
        a.headers
            .push(("Event".into(), "vnd-microsoft-provisioning-v2".into()));
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(1);
        a.headers
            .push(("ms-piggyback-cseq".into(), cseq.to_string()));
        let focus = self.focus_factory.as_ref().map(|f| f(to));
        a.body = Some((
            "application/vnd-microsoft-roaming-provisioning-v2+xml".into(),
            bytes::Bytes::from(msrtc::provisioning::provisioning(focus.as_deref()).into_bytes()),
        ));
        a
    }

    /// The owner's contact list as a Lync client numbers it: the default group `~` is 1,
    /// stored groups are their id + 1.
    pub(crate) fn lync_contact_list(&self, st: &State, owner: &str) -> msrtc::contacts::List {
        let Some(p) = st.presentities.get(owner) else {
            return msrtc::contacts::List {
                delta: 1,
                groups: Vec::new(),
                contacts: Vec::new(),
            };
        };
        // The groups as read with the list (read again whenever the list changes).
        let groups = &p.groups;
        let id_of = |name: &str| {
            groups
                .iter()
                .find(|(_, n)| n == name)
                .map(|(id, _)| *id as u32 + 1)
        };
        let mut list_groups = vec![msrtc::contacts::Group {
            id: 1,
            name: "~".into(),
        }];
        list_groups.extend(groups.iter().map(|(id, name)| msrtc::contacts::Group {
            id: *id as u32 + 1,
            name: name.clone(),
        }));
        let contacts = p
            .contacts
            .contacts
            .iter()
            .filter(|c| c.listed)
            .map(|c| {
                let mut ids: Vec<u32> = c.groups.iter().filter_map(|g| id_of(g)).collect();
                if ids.is_empty() {
                    ids.push(1);
                }
                msrtc::contacts::Contact {
                    uri: c.contact.clone(),
                    name: None,
                    groups: ids,
                }
            })
            .collect();
        msrtc::contacts::List {
            delta: p.contacts.version as u64 + 1,
            groups: list_groups,
            contacts,
        }
    }

    /// The next roaming-contacts document for subscription `id`, recorded as sent: the
    /// whole list first, then deltas; `None` when the list has not changed since.
    pub(crate) fn next_contacts_document(
        &self,
        st: &mut State,
        id: u64,
    ) -> Option<(String, String)> {
        let s = st.subs.get(&id)?;
        let now = self.lync_contact_list(st, &s.resource);
        let body = match s.sent_contacts.as_deref() {
            Some(old) => msrtc::contacts::contact_delta(old, &now)?,
            None => msrtc::contacts::contact_list(&now),
        };
        st.subs.get_mut(&id)?.sent_contacts = Some(Box::new(now));
        Some((ROAMING_CONTACTS.into(), body))
    }

    /// The whole contact list (what a subscription's last NOTIFY carries).
    pub(crate) fn contacts_document(&self, st: &State, owner: &str) -> (String, String) {
        let list = self.lync_contact_list(st, owner);
        (
            ROAMING_CONTACTS.into(),
            msrtc::contacts::contact_list(&list),
        )
    }

    /// The owner's roaming data.
    pub(crate) fn roaming_self_body(&self, st: &State, aor: &str) -> (String, String) {
        let Some(p) = st.presentities.get(aor) else {
            return (
                ROAMING_SELF.into(),
                msrtc::categories::roaming_self(aor, &[], &[], &[]),
            );
        };
        let own = self.view_of(aor, p, aor);
        let version = p.lync.version.max(1);
        let mut cats: Vec<Category> = p.lync.categories.iter().map(|c| c.cat.clone()).collect();
        let snap = snapshot(&own, version);
        cats.push(msrtc::categories::state_category(&snap, 2));
        // Containers: the defaults every user has (colleagues inside the domain,
        // external outside), then each contact in the container of its relationship.
        let mut containers = vec![
            Container {
                id: 100,
                version,
                members: vec![("federated".into(), None)],
            },
            Container {
                id: 200,
                version,
                members: vec![("sameEnterprise".into(), None)],
            },
            Container {
                id: 300,
                version,
                members: Vec::new(),
            },
            Container {
                id: 400,
                version,
                members: Vec::new(),
            },
            Container {
                id: 32000,
                version,
                members: Vec::new(),
            },
        ];
        for c in &p.contacts.contacts {
            let id = container_of(Audience::Watcher(c.relationship));
            if let Some(container) = containers.iter_mut().find(|x| x.id == id) {
                container
                    .members
                    .push(("user".into(), Some(c.contact.clone())));
            }
        }
        let mut subscribers: Vec<Subscriber> = Vec::new();
        for wid in &p.watchers {
            let Some(w) = st.subs.get(wid) else { continue };
            let user = bare(&w.watcher).to_owned();
            if *w.watcher == *aor || subscribers.iter().any(|s| s.user == user) {
                continue;
            }
            subscribers.push(Subscriber {
                acknowledged: p.relationship_of(&w.watcher).is_some()
                    || p.lync.acknowledged.contains(&user),
                same_enterprise: domain_of(&w.watcher) == domain_of(aor),
                display_name: None,
                user,
            });
        }
        (
            ROAMING_SELF.into(),
            msrtc::categories::roaming_self(aor, &cats, &containers, &subscribers),
        )
    }

    /// SERVICE from a Lync client to its own address (MS-SIP §3.10, MS-PRES §3.7).
    pub(crate) async fn service(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        source: Flow,
    ) -> ServiceAnswer {
        if from != to {
            return with_warning(403, "only the user may change their own presence");
        }
        match crate::subscribe::content_type(msg).as_str() {
            "application/msrtc-category-publish+xml" => {
                self.publish_categories(msg, to, source).await
            }
            "application/msrtc-setcontainermembers+xml" => {
                self.set_container_members(msg, to).await
            }
            "application/msrtc-presence-setsubscriber+xml" => self.set_subscribers(msg, to).await,
            "application/soap+xml" => self.contact_edit(msg, to).await,
            _ => {
                let mut a = ServiceAnswer::status(415);
                a.headers.push((
                    "Accept".into(),
                    "application/msrtc-category-publish+xml, application/msrtc-setcontainermembers+xml, application/msrtc-presence-setsubscriber+xml, application/SOAP+xml".into(),
                ));
                a
            }
        }
    }

    async fn publish_categories(&self, msg: &Message, aor: &str, source: Flow) -> ServiceAnswer {
        let pubs = match msrtc::publish::parse_publish(&msg.body) {
            Ok(p) => p,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        if pubs.len() > 256 {
            return with_warning(413, "too many publications in one request");
        }
        let req = CategoryPublish {
            aor,
            pubs: &pubs,
            source,
            now: self.now_ms(),
        };
        let aors = [aor.to_owned()];
        let first = self
            .with_presentities(&aors, |st, fetched| {
                self.categories_step(st, fetched, &req, None)
            })
            .await;
        let hand_set = match first {
            Ok(Step::Done(answer)) => return answer,
            Ok(Step::Write(h)) => h,
            Err(e) => return fetch::unavailable(&e),
        };
        // The hand-set state is the user's, kept with `presence set`'s, in the store: it
        // is written (outside the lock) before anything is applied, so a write that
        // fails changes nothing and the client may send the same versions again.
        let written = match &hand_set {
            HandSet::Set(m) => self.presence.set_manual(bare(aor), m).await,
            HandSet::Clear => self
                .presence
                .clear_manual(bare(aor), req.now)
                .await
                .map(|_| ()),
        };
        if let Err(e) = written {
            return fetch::unavailable(&e);
        }
        // Checked again under the lock: another publication may have come first.
        let second = self
            .with_presentities(&aors, |st, fetched| {
                self.categories_step(st, fetched, &req, Some(hand_set))
            })
            .await;
        match second {
            Ok(Step::Done(answer)) => answer,
            Ok(Step::Write(_)) => unreachable!("the hand-set state was written"),
            Err(e) => fetch::unavailable(&e),
        }
    }

    /// A category publication under the state lock. MS-PRES §3.7.5.4: all or nothing,
    /// every stale version named. Applied at once unless it changes the hand-set state
    /// and that is not written yet (`written`: what was).
    fn categories_step(
        &self,
        st: &mut State,
        fetched: &mut Fetched<'_>,
        req: &CategoryPublish<'_>,
        written: Option<HandSet>,
    ) -> Step {
        let aor = req.aor;
        if !st.presentities.contains_key(aor) && self.full(st, 1) {
            return Step::Done(crate::caps::full_answer());
        }
        let p = self.ensure(st, fetched, aor);
        let stale: Vec<(usize, u32)> = req
            .pubs
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let cur = p.lync.categories.iter().find(|c| {
                    c.cat.name == x.category
                        && c.cat.instance == x.instance
                        && c.cat.container == x.container
                })?;
                (cur.cat.version != x.version).then_some((i + 1, cur.cat.version))
            })
            .collect();
        if !stale.is_empty() {
            let mut a = ServiceAnswer::status(409);
            a.body = Some((
                "application/msrtc-fault+xml".into(),
                bytes::Bytes::from(msrtc::publish::wrong_delta_fault(&stale).into_bytes()),
            ));
            return Step::Done(a);
        }
        let hand_set = match written {
            Some(h) => Some(h),
            None => match hand_set_change(p, req.pubs, req.now) {
                Some(h) => return Step::Write(h),
                None => None,
            },
        };
        Step::Done(self.apply_categories(st, req, hand_set))
    }

    /// Keeps the published instances (their versions checked), and the hand-set state
    /// already written to the store; the 200 carries the roaming data.
    fn apply_categories(
        &self,
        st: &mut State,
        req: &CategoryPublish<'_>,
        hand_set: Option<HandSet>,
    ) -> ServiceAnswer {
        let (aor, now) = (req.aor, req.now);
        let p = st.presentities.get_mut(aor).expect("ensured");
        for x in req.pubs {
            let pos = p.lync.categories.iter().position(|c| {
                c.cat.name == x.category
                    && c.cat.instance == x.instance
                    && c.cat.container == x.container
            });
            if x.remove {
                if let Some(i) = pos {
                    p.lync.categories.remove(i);
                }
                continue;
            }
            let version = pos
                .map(|i| p.lync.categories[i].cat.version + 1)
                .unwrap_or(1);
            let stored = StoredCategory {
                cat: Category {
                    name: x.category.clone(),
                    instance: x.instance,
                    container: x.container,
                    version,
                    expire_type: x.expire_type.clone(),
                    publish_time: crate::pidf::fmt_rfc3339(now),
                    payload: x.payload.clone(),
                },
                flow: (x.expire_type == "endpoint")
                    .then_some(req.source.connection())
                    .flatten(),
                state: msrtc::publish::read_state(x),
                note: msrtc::publish::read_note(x),
            };
            match pos {
                Some(i) => p.lync.categories[i] = stored,
                None => p.lync.categories.push(stored),
            }
        }
        p.lync.version += 1;
        let flows: Vec<Connection> = p.lync.categories.iter().filter_map(|c| c.flow).collect();
        self.rebuild_lync_devices(p, now);
        match hand_set {
            Some(HandSet::Set(m)) => {
                p.stored.manual = Some(m);
                p.lync.client_manual_at = Some(now);
            }
            Some(HandSet::Clear) => p.stored.manual = None,
            None => {}
        }
        let key: Arc<str> = st
            .presentities
            .get_key_value(aor)
            .map(|(k, _)| k.clone())
            .expect("ensured");
        for f in flows {
            let owners = st.lync_flows.entry(f).or_default();
            if !owners.iter().any(|o| **o == *aor) {
                owners.push(key.clone());
            }
        }
        self.reaggregate(st, aor);
        self.kick_own(st, aor);
        // The 200 carries the roaming data, so the client learns the new versions now.
        let (ctype, body) = self.roaming_self_body(st, aor);
        let mut a = ServiceAnswer::status(200);
        a.body = Some((ctype, bytes::Bytes::from(body.into_bytes())));
        a
    }

    /// The devices a user's Lync endpoints stand for, from their machine states.
    fn rebuild_lync_devices(&self, p: &mut Presentity, now: i64) {
        p.publications
            .retain(|x| !x.etag.starts_with(DEVICE_PREFIX));
        let note = p
            .lync
            .categories
            .iter()
            .filter(|c| c.cat.container == 200)
            .find_map(|c| c.note.as_ref().map(|(text, _)| text.clone()));
        let on_phone = p.lync.categories.iter().any(|c| {
            c.aggregation_state().is_some_and(|s| {
                s.kind == StateKind::Phone && s.activity.as_deref() == Some("on-the-phone")
            })
        });
        let mut devices = Vec::new();
        for c in &p.lync.categories {
            let Some(state) = c
                .aggregation_state()
                .filter(|s| s.kind == StateKind::Machine)
            else {
                continue;
            };
            let mut d = DeviceState::new(
                format!("{DEVICE_PREFIX}{}", c.cat.instance),
                availability_of(band(state.availability.unwrap_or(18500))),
                now,
            );
            if let Some(a) = state.activity.as_deref().and_then(activity_of) {
                d.activities.push(a);
            }
            if on_phone {
                d.activities.push(Activity::InACall);
            }
            d.note = note.clone();
            devices.push(d);
        }
        for d in devices {
            p.publications.push(Publication {
                etag: d.device.clone(),
                state: d,
                // Endpoint instances last as long as the endpoint's connection.
                expires_at: Instant::now() + std::time::Duration::from_secs(86_400),
            });
        }
    }

    /// The user's own roaming-self subscriptions (every endpoint) hear of a change.
    pub(crate) fn kick_own(&self, st: &mut State, aor: &str) {
        self.kick_own_kinds(st, aor, &[Kind::RoamingSelf]);
    }

    /// MS-PRES §3.7.4: users placed in containers are given that relationship.
    async fn set_container_members(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let changes = match msrtc::publish::parse_set_container_members(&msg.body) {
            Ok(c) => c,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        let now = self.now_ms();
        let owner = bare(aor);
        for c in changes.iter().filter(|c| c.kind == "user") {
            let Some(user) = c
                .value
                .as_deref()
                .map(|v| v.strip_prefix("sip:").unwrap_or(v))
            else {
                continue;
            };
            let default = Audience::default_for(domain_of(aor), domain_of(user));
            let rel = match (c.add, relationship_of(c.container)) {
                (true, Some(r)) => r,
                (true, None) => continue,
                // Taken out of a container: back to what the domains imply.
                (false, _) => default,
            };
            // A relationship, not a place on the list (MS-PRES §3.7.4.1).
            if let Err(e) = self
                .contacts
                .set_relationship(owner, user, rel, default, now)
                .await
            {
                return fetch::unavailable(&e);
            }
        }
        // Other member types (sameEnterprise, federated, …) are what our defaults are.
        self.reload(aor).await;
        let mut st = self.state.lock();
        self.kick_own(&mut st, aor);
        ServiceAnswer::status(200)
    }

    async fn set_subscribers(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let users = match msrtc::publish::parse_set_subscribers(&msg.body) {
            Ok(u) => u,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        let applied = self
            .with_presentities(&[aor.to_owned()], |st, fetched| {
                if !st.presentities.contains_key(aor) && self.full(st, 1) {
                    return crate::caps::full_answer();
                }
                let p = self.ensure(st, fetched, aor);
                for u in users.into_iter().take(1000) {
                    p.lync.acknowledged.insert(u);
                }
                self.kick_own(st, aor);
                ServiceAnswer::status(200)
            })
            .await;
        applied.unwrap_or_else(|e| fetch::unavailable(&e))
    }

    /// SOAP contact-list edits (MS-SIP §2.2.3); watchers of the list hear the delta.
    async fn contact_edit(&self, msg: &Message, aor: &str) -> ServiceAnswer {
        let edit = match msrtc::contacts::parse_edit(&msg.body) {
            Ok(e) => e,
            Err(e) => return with_warning(400, &e.to_string()),
        };
        if let msrtc::contacts::Edit::SetContact { uri, .. } = &edit {
            // Lync's MaxContacts: a contact list the user's list subscriptions could not
            // watch whole is not let grow (changing a contact already on it always works).
            let cap = self.config.max_list_entries_per_user;
            match self.contacts.contact_list(bare(aor)).await {
                Ok(list) => {
                    let listed: Vec<&str> = list
                        .contacts
                        .iter()
                        .filter(|c| c.listed)
                        .map(|c| c.contact.as_str())
                        .collect();
                    if !listed.contains(&uri.as_str()) && listed.len() >= cap {
                        return with_warning(
                            403,
                            &format!("too many contacts for this user (at most {cap})"),
                        );
                    }
                }
                Err(e) => return fetch::unavailable(&e),
            }
        }
        match self.apply_edit(&edit, aor).await {
            Ok(answer) => {
                self.reload(aor).await;
                let mut st = self.state.lock();
                self.kick_own_kinds(&mut st, aor, &[Kind::RoamingContacts]);
                let mut a = ServiceAnswer::status(200);
                if let Some(body) = answer {
                    a.body = Some((
                        "application/SOAP+xml".into(),
                        bytes::Bytes::from(body.into_bytes()),
                    ));
                }
                a
            }
            Err(e) => fetch::unavailable(&e),
        }
    }

    /// Carries out one contact-list edit; the answer body, for `addGroup`.
    async fn apply_edit(
        &self,
        edit: &msrtc::contacts::Edit,
        aor: &str,
    ) -> Result<Option<String>, DataError> {
        use msrtc::contacts::Edit;
        let owner = bare(aor);
        let now = self.now_ms();
        // Client group ids are stored ids + 1 (1 is the default group).
        let stored = |id: u32| id as i64 - 1;
        match edit {
            Edit::SetContact { uri, groups, .. } => {
                let default = Audience::default_for(domain_of(aor), domain_of(uri));
                self.contacts
                    .add_contact(owner, uri, None, None, default, now)
                    .await?;
                let ids: Vec<i64> = groups
                    .iter()
                    .filter(|i| **i > 1)
                    .map(|i| stored(*i))
                    .collect();
                self.contacts
                    .set_contact_groups(owner, uri, &ids, now)
                    .await?;
                Ok(None)
            }
            Edit::DeleteContact { uri } => {
                self.contacts.remove_contact(owner, uri, now).await?;
                Ok(None)
            }
            Edit::AddGroup { name } => {
                let id = self.contacts.add_group(owner, name, now).await?;
                Ok(Some(msrtc::contacts::add_group_answer(id as u32 + 1)))
            }
            Edit::ModifyGroup { id, name } => {
                self.contacts
                    .rename_group(owner, stored(*id), name, now)
                    .await?;
                Ok(None)
            }
            Edit::DeleteGroup { id } => {
                self.contacts.delete_group(owner, stored(*id), now).await?;
                Ok(None)
            }
        }
    }

    /// An endpoint's connection closed: its endpoint instances (and the device they
    /// stand for) are gone (MS-PRES §3.7.5.1: `expireType="endpoint"`).
    pub(crate) fn lync_flow_closed(&self, id: Connection) {
        let mut st = self.state.lock();
        let Some(owners) = st.lync_flows.remove(&id) else {
            return;
        };
        let now = self.now_ms();
        let mut cleared = Vec::new();
        for aor in owners {
            let Some(p) = st.presentities.get_mut(&*aor) else {
                continue;
            };
            p.lync.categories.retain(|c| c.flow != Some(id));
            p.lync.version += 1;
            self.rebuild_lync_devices(p, now);
            let last_endpoint = !p.lync.categories.iter().any(|c| c.flow.is_some());
            let clients_state = p.lync.client_manual_at.is_some()
                && p.stored.manual.as_ref().map(|m| m.set_at_ms) == p.lync.client_manual_at;
            if last_endpoint && clients_state {
                // Set by the client that just left (not since replaced by `presence set`).
                p.lync.client_manual_at = None;
                p.stored.manual = None;
                cleared.push(bare(&aor).to_owned());
            }
            self.reaggregate(&mut st, &aor);
            self.kick_own(&mut st, &aor);
        }
        drop(st);
        if cleared.is_empty() {
            return;
        }
        // Written outside the lock, off the transport's path.
        let presence = self.presence.clone();
        tokio::spawn(async move {
            for addr in cleared {
                if let Err(e) = presence.clear_manual(&addr, now).await {
                    tracing::warn!(error = %e, "cannot clear the hand-set state");
                }
            }
        });
    }
}
