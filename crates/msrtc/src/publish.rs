//! What clients send about their own presence (MS-PRES §2.2.2.3–§2.2.2.5): category
//! publications, batched subscriptions, container members, subscriber acknowledgements.

use crate::tree::{self, escape, Element};
use crate::MsrtcError;

/// One `<publication>` of a category publish (MS-PRES §2.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub category: String,
    pub instance: u32,
    pub container: u32,
    /// The version the client believes is current (optimistic concurrency, §3.7.5.4).
    pub version: u32,
    /// `static`, `endpoint`, `user` or `time`.
    pub expire_type: String,
    /// `expires="0"` removes the instance.
    pub remove: bool,
    /// The category element as written (for `state`: `<state …>…</state>`).
    pub payload: String,
    /// The same, parsed.
    pub content: Option<Element>,
}

fn num(e: &Element, name: &str) -> Result<u32, MsrtcError> {
    e.attr(name)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| MsrtcError::Unexpected(format!("publication without a numeric {name}")))
}

/// Reads a `<publish>` document: the publications in order (the fault's indexes count
/// from 1 in that order).
pub fn parse_publish(body: &[u8]) -> Result<Vec<Publication>, MsrtcError> {
    let root = tree::parse_root(body, "publish")?;
    let pubs = root
        .child("publications")
        .ok_or_else(|| MsrtcError::Unexpected("no <publications>".into()))?;
    pubs.children_named("publication")
        .map(|p| {
            Ok(Publication {
                category: p
                    .attr("categoryName")
                    .ok_or_else(|| {
                        MsrtcError::Unexpected("publication without categoryName".into())
                    })?
                    .to_owned(),
                instance: num(p, "instance")?,
                container: num(p, "container")?,
                version: p.attr("version").and_then(|v| v.parse().ok()).unwrap_or(0),
                expire_type: p.attr("expireType").unwrap_or("static").to_owned(),
                remove: p.attr("expires").map(str::trim) == Some("0"),
                payload: p.inner.trim().to_owned(),
                content: p.children.first().cloned(),
            })
        })
        .collect()
}

/// The type of a published `state` (its `xsi:type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// The endpoint's own idea of the user (active, idle, away): MS-PRES §3.7.5.2.
    Machine,
    /// Set by the user by hand; overrides machine states.
    User,
    Calendar,
    Phone,
    Aggregate,
    Other,
}

/// A published `state` category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedState {
    pub kind: StateKind,
    pub availability: Option<u32>,
    /// The activity token (`in-a-meeting`, `on-the-phone`, …).
    pub activity: Option<String>,
}

/// Reads the `state` element of a publication.
pub fn read_state(p: &Publication) -> Option<PublishedState> {
    let state = p.content.as_ref().filter(|c| c.name == "state")?;
    let kind = match state.attr("type").unwrap_or("") {
        "machineState" => StateKind::Machine,
        "userState" => StateKind::User,
        "calendarState" => StateKind::Calendar,
        "phoneState" => StateKind::Phone,
        "aggregateState" => StateKind::Aggregate,
        _ => StateKind::Other,
    };
    Some(PublishedState {
        kind,
        availability: state.text_at("availability").and_then(|a| a.parse().ok()),
        activity: state
            .child("activity")
            .and_then(|a| a.attr("token"))
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    })
}

/// Reads a published `note`: its text and whether it is an out-of-office note.
pub fn read_note(p: &Publication) -> Option<(String, bool)> {
    let note = p.content.as_ref().filter(|c| c.name == "note")?;
    let body = note.child("body")?;
    Some((
        body.text.trim().to_owned(),
        body.attr("type") == Some("OOF"),
    ))
}

/// The 409 body for publications whose version was stale (MS-PRES §2.2.2.3.2):
/// `(index from 1, current version)` per failed publication.
pub fn wrong_delta_fault(failed: &[(usize, u32)]) -> String {
    let mut s = String::from(
        "<Fault xmlns=\"http://schemas.microsoft.com/2006/09/sip/error\"><Faultcode>Client.BadCall.WrongDelta</Faultcode><details>",
    );
    for (index, cur) in failed {
        s.push_str(&format!(
            "<operation index=\"{index}\" curVersion=\"{cur}\"/>"
        ));
    }
    s.push_str("</details></Fault>");
    s
}

/// A batched category subscription (MS-PRES §2.2.2.4.1): the resources and the
/// categories asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSubscribe {
    /// `subscribe` or `unsubscribe`.
    pub action: String,
    /// `sip:` URIs.
    pub resources: Vec<String>,
    pub categories: Vec<String>,
}

pub fn parse_batch_subscribe(body: &[u8]) -> Result<BatchSubscribe, MsrtcError> {
    let root = tree::parse_root(body, "batchSub")?;
    let action = root
        .child("action")
        .ok_or_else(|| MsrtcError::Unexpected("no <action>".into()))?;
    let resources = action
        .child("adhocList")
        .map(|l| {
            l.children_named("resource")
                .filter_map(|r| r.attr("uri"))
                .map(|u| {
                    if u.starts_with("sip:") {
                        u.to_owned()
                    } else {
                        format!("sip:{u}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let categories = action
        .child("categoryList")
        .map(|l| {
            l.children_named("category")
                .filter_map(|c| c.attr("name"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(BatchSubscribe {
        action: action.attr("name").unwrap_or("subscribe").to_owned(),
        resources,
        categories,
    })
}

/// One member change of `setContainerMembers` (MS-PRES §2.2.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub container: u32,
    /// `add` or `remove`.
    pub add: bool,
    /// `user`, `domain`, `sameEnterprise`, `federated`, `publicCloud`, `everyone`.
    pub kind: String,
    pub value: Option<String>,
}

pub fn parse_set_container_members(body: &[u8]) -> Result<Vec<MemberChange>, MsrtcError> {
    let root = tree::parse_root(body, "setContainerMembers")?;
    let mut out = Vec::new();
    for c in root.children_named("container") {
        let container = num(c, "id")?;
        for m in c.children_named("member") {
            out.push(MemberChange {
                container,
                add: m.attr("action") != Some("remove"),
                kind: m.attr("type").unwrap_or("").to_owned(),
                value: m.attr("value").map(str::to_owned),
            });
        }
    }
    Ok(out)
}

/// The users a `setSubscribers` acknowledges (without `sip:`).
pub fn parse_set_subscribers(body: &[u8]) -> Result<Vec<String>, MsrtcError> {
    let root = tree::parse_root(body, "setSubscribers")?;
    Ok(root
        .children_named("subscriber")
        .filter_map(|s| s.attr("user"))
        .map(|u| u.strip_prefix("sip:").unwrap_or(u).to_owned())
        .collect())
}

/// A state payload as the server publishes it: the aggregate (MS-PRES §3.7.5.5).
pub fn aggregate_state(
    availability: u32,
    activity: Option<&str>,
    meeting: Option<(Option<&str>, Option<&str>)>,
) -> String {
    let mut s = format!(
        "<state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"aggregateState\"><availability>{availability}</availability>"
    );
    if let Some(token) = activity {
        s.push_str(&format!("<activity token=\"{}\"/>", escape(token)));
    }
    if let Some((subject, location)) = meeting {
        if let Some(subject) = subject {
            s.push_str(&format!(
                "<meetingSubject>{}</meetingSubject>",
                escape(subject)
            ));
        }
        if let Some(location) = location {
            s.push_str(&format!(
                "<meetingLocation>{}</meetingLocation>",
                escape(location)
            ));
        }
    }
    s.push_str("</state>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // What pidgin-sipe 1.25 publishes after sign-in (captured), shortened.
    const INITIAL: &str = r#"<publish xmlns="http://schemas.microsoft.com/2006/09/sip/rich-presence"><publications uri="sip:alice@example.test"><publication categoryName="device" instance="3008035694" container="2" version="0" expireType="endpoint"><device xmlns="http://schemas.microsoft.com/2006/09/sip/device" endpointId="085e0bd8"><machineName>vm</machineName></device></publication><publication categoryName="state" instance="993308598" container="2" version="0" expireType="endpoint"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state" manual="false" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="machineState"><availability>3500</availability><endpointLocation/></state></publication><publication categoryName="state" instance="536870912" container="3" version="2" expireType="static"><state xmlns="http://schemas.microsoft.com/2006/09/sip/state" manual="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="userState"><availability>6500</availability><activity token="in-a-meeting"/></state></publication><publication categoryName="note" instance="0" container="200" version="0" expireType="static" expires="0"/></publications></publish>"#;

    #[test]
    fn reads_what_pidgin_sipe_publishes() {
        let pubs = parse_publish(INITIAL.as_bytes()).unwrap();
        assert_eq!(pubs.len(), 4);
        assert_eq!(pubs[0].category, "device");
        assert_eq!(pubs[0].instance, 3008035694);
        assert!(pubs[0].payload.starts_with("<device "));
        let machine = read_state(&pubs[1]).unwrap();
        assert_eq!(machine.kind, StateKind::Machine);
        assert_eq!(machine.availability, Some(3500));
        assert_eq!(pubs[1].expire_type, "endpoint");
        let user = read_state(&pubs[2]).unwrap();
        assert_eq!(
            (user.kind, user.availability, user.activity.as_deref()),
            (StateKind::User, Some(6500), Some("in-a-meeting"))
        );
        assert_eq!((pubs[2].container, pubs[2].version), (3, 2));
        assert!(pubs[3].remove && pubs[3].content.is_none());
    }

    #[test]
    fn refuses_what_is_not_a_publish() {
        assert!(parse_publish(b"<presence/>").is_err());
        assert!(parse_publish(b"<publish><publications><publication categoryName=\"state\" container=\"2\"/></publications></publish>").is_err());
        assert!(parse_publish(b"<publish>").is_err());
    }

    #[test]
    fn batched_subscription() {
        let body = r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:alice@example.test" name="">
<action name="subscribe" id="63792024"><adhocList>
<resource uri="sip:bob@example.test"/><resource uri="carol@example.test"/>
</adhocList>
<categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist">
<category name="calendarData"/><category name="state"/>
</categoryList></action></batchSub>"#;
        let b = parse_batch_subscribe(body.as_bytes()).unwrap();
        assert_eq!(b.action, "subscribe");
        assert_eq!(
            b.resources,
            ["sip:bob@example.test", "sip:carol@example.test"]
        );
        assert_eq!(b.categories, ["calendarData", "state"]);
    }

    #[test]
    fn container_members_and_subscribers() {
        let body = r#"<setContainerMembers xmlns="http://schemas.microsoft.com/2006/09/sip/container-management"><container id="200" version="0"><member action="add" type="sameEnterprise"/></container><container id="32000" version="3"><member action="add" type="user" value="eve@example.test"/><member action="remove" type="user" value="bob@example.test"/></container></setContainerMembers>"#;
        let m = parse_set_container_members(body.as_bytes()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[1].container, m[1].add, m[1].value.as_deref()),
            (32000, true, Some("eve@example.test"))
        );
        assert!(!m[2].add);
        let s = parse_set_subscribers(br#"<setSubscribers xmlns="x"><subscriber user="bob@example.test" acknowledged="true"/></setSubscribers>"#).unwrap();
        assert_eq!(s, ["bob@example.test"]);
    }

    #[test]
    fn fault_names_each_stale_publication() {
        let f = wrong_delta_fault(&[(2, 5)]);
        let root = tree::parse(f.as_bytes()).unwrap();
        assert_eq!(root.text_at("Faultcode"), Some("Client.BadCall.WrongDelta"));
        let op = root.path("details/operation").unwrap();
        assert_eq!(
            (op.attr("index"), op.attr("curVersion")),
            (Some("2"), Some("5"))
        );
    }
}
