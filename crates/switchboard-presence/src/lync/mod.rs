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
//!
//! Layout: this file holds what a user's Lync clients published ([`LyncData`], one per
//! presentity, and [`EndpointFlows`], which users each connection carries) and how the
//! aggregate is shown as categories; [`publish`] applies category publications and
//! endpoint departures, [`roaming`] renders roaming-self and places users in containers,
//! [`contacts`] renders roaming contacts and applies SOAP edits. All of it runs under the
//! service's state lock and never awaits there.

mod contacts;
mod publish;
mod roaming;

pub(crate) use contacts::{contacts_document, next_contacts_document};
pub(crate) use roaming::roaming_self_body;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use msrtc::categories::{Category, Container, Snapshot, Subscriber};
use msrtc::publish::{PublishedState, StateKind};
use msrtc::{band, Band};
use sip_message::Message;
use switchboard_core::seam::ServiceAnswer;
use switchboard_core::seam::{Connection, Flow};
use switchboard_core::{DataError, ManualState, Relationship};

use crate::caps::with_warning;
use crate::fetch::{self, Fetched};
use crate::model::{Activity, Availability, DeviceState, NoteKind};
use crate::notifier::Kind;
use crate::privacy::{Audience, View};
use crate::{bare, domain_of, PresenceService, Presentity, State};

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

/// The users whose Lync endpoint instances each connection carries: when a connection
/// closes, those instances go (MS-PRES §3.7.5.1, `expireType="endpoint"`).
#[derive(Default)]
pub(crate) struct EndpointFlows(HashMap<Connection, Vec<Arc<str>>>);

impl EndpointFlows {
    /// `owner` has endpoint instances on connection `id`.
    fn record(&mut self, id: Connection, owner: &Arc<str>) {
        let owners = self.0.entry(id).or_default();
        if !owners.iter().any(|o| **o == **owner) {
            owners.push(owner.clone());
        }
    }

    /// The users connection `id` carried, forgotten (it closed).
    fn take(&mut self, id: Connection) -> Option<Vec<Arc<str>>> {
        self.0.remove(&id)
    }
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

/// `vnd-microsoft-provisioning-v2` is a fetch (`Expires: 0`): the answer carries the
/// configuration itself (piggy-backed, MS-SIP §3.13) and no subscription is kept.
pub(crate) fn provisioning(
    msg: &Message,
    from: &str,
    to: &str,
    focus: Option<String>,
) -> ServiceAnswer {
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
    a.body = Some((
        "application/vnd-microsoft-roaming-provisioning-v2+xml".into(),
        bytes::Bytes::from(msrtc::provisioning::provisioning(focus.as_deref()).into_bytes()),
    ));
    a
}

impl PresenceService {
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
        match crate::notifier::content_type(msg).as_str() {
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
}
