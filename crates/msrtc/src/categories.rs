//! What the server writes about presence: the categories a watcher receives
//! (MS-PRES §2.2.2.1) and the owner's roaming data (§2.2.2.2).

use crate::escape;
use crate::publish::aggregate_state;

/// One category instance as stored or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    pub name: String,
    pub instance: u32,
    pub container: u32,
    pub version: u32,
    pub expire_type: String,
    pub publish_time: String,
    /// The category element (`<state …>…</state>`); empty for a removed instance.
    pub payload: String,
}

fn write_category(out: &mut String, c: &Category) {
    out.push_str(&format!(
        "<category name=\"{}\" instance=\"{}\" publishTime=\"{}\" container=\"{}\" version=\"{}\" expireType=\"{}\">{}</category>",
        escape(&c.name),
        c.instance,
        escape(&c.publish_time),
        c.container,
        c.version,
        escape(&c.expire_type),
        c.payload
    ));
}

/// A presentity as one watcher may see it, ready to be written as categories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `sip:user@domain`.
    pub uri: String,
    pub availability: u32,
    pub activity: Option<String>,
    /// Meeting subject and location, when the watcher may see them.
    pub meeting: Option<(Option<String>, Option<String>)>,
    /// Note text and whether it is an out-of-office note.
    pub note: Option<(String, bool)>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub title: Option<String>,
    pub work_phone: Option<String>,
    pub personal_phone: Option<String>,
    /// The container the watcher's relationship maps to (100 … 400, 32000).
    pub container: u32,
    pub publish_time: String,
    /// Bumped by the server whenever the snapshot changes.
    pub version: u32,
}

/// The `state` category of a snapshot (the server's aggregate).
pub fn state_category(s: &Snapshot, container: u32) -> Category {
    Category {
        name: "state".into(),
        instance: 0,
        container,
        version: s.version,
        expire_type: "static".into(),
        publish_time: s.publish_time.clone(),
        payload: aggregate_state(
            s.availability,
            s.activity.as_deref(),
            s.meeting
                .as_ref()
                .map(|(a, b)| (a.as_deref(), b.as_deref())),
        ),
    }
}

fn note_payload(text: &str, oof: bool) -> String {
    format!(
        "<note xmlns=\"http://schemas.microsoft.com/2006/10/sip/note\"><body type=\"{}\" uri=\"\">{}</body></note>",
        if oof { "OOF" } else { "personal" },
        escape(text)
    )
}

fn card_payload(s: &Snapshot) -> Option<String> {
    if s.display_name.is_none() && s.email.is_none() && s.title.is_none() {
        return None;
    }
    let mut c = String::from(
        "<contactCard xmlns=\"http://schemas.microsoft.com/2006/09/sip/contactcard\"><identity>",
    );
    if let Some(n) = &s.display_name {
        c.push_str(&format!(
            "<name><displayName>{}</displayName></name>",
            escape(n)
        ));
    }
    if let Some(e) = &s.email {
        c.push_str(&format!("<email>{}</email>", escape(e)));
    }
    c.push_str("</identity>");
    if let Some(t) = &s.title {
        c.push_str(&format!("<title>{}</title>", escape(t)));
    }
    for (kind, phone) in [("work", &s.work_phone), ("home", &s.personal_phone)] {
        if let Some(p) = phone {
            c.push_str(&format!(
                "<phone type=\"{kind}\"><uri>{}</uri><displayString>{}</displayString></phone>",
                escape(&tel_uri(p)),
                escape(p)
            ));
        }
    }
    c.push_str("</contactCard>");
    Some(c)
}

fn tel_uri(p: &str) -> String {
    if p.starts_with("tel:") {
        p.to_owned()
    } else {
        format!("tel:{}", p.replace([' ', '-', '(', ')'], ""))
    }
}

/// The categories a watcher receives (`application/msrtc-event-categories+xml`).
pub fn event_categories(s: &Snapshot) -> String {
    let mut out = format!(
        "<categories xmlns=\"http://schemas.microsoft.com/2006/09/sip/categories\" uri=\"{}\">",
        escape(&s.uri)
    );
    write_category(&mut out, &state_category(s, s.container));
    // A note category is always written: without a body it tells the watcher the
    // note was cleared.
    let note = match &s.note {
        Some((text, oof)) => note_payload(text, *oof),
        None => String::new(),
    };
    write_category(
        &mut out,
        &Category {
            name: "note".into(),
            instance: 0,
            container: s.container,
            version: s.version,
            expire_type: "static".into(),
            publish_time: s.publish_time.clone(),
            payload: note,
        },
    );
    if let Some(card) = card_payload(s) {
        write_category(
            &mut out,
            &Category {
                name: "contactCard".into(),
                instance: 0,
                container: s.container,
                version: s.version,
                expire_type: "static".into(),
                publish_time: s.publish_time.clone(),
                payload: card,
            },
        );
    }
    out.push_str("</categories>");
    out
}

/// One container of the roaming data, with its members (`type`, optional `value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: u32,
    pub version: u32,
    pub members: Vec<(String, Option<String>)>,
}

/// One watcher in the roaming data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// Without `sip:`.
    pub user: String,
    pub display_name: Option<String>,
    pub acknowledged: bool,
    pub same_enterprise: bool,
}

/// The owner's roaming data (`application/vnd-microsoft-roaming-self+xml`): their own
/// category instances, the containers with their members, and who watches them.
pub fn roaming_self(
    uri: &str,
    categories: &[Category],
    containers: &[Container],
    subscribers: &[Subscriber],
) -> String {
    let mut out = String::from(
        "<roamingData xmlns=\"http://schemas.microsoft.com/2006/09/sip/roaming-self\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">",
    );
    out.push_str(&format!(
        "<categories xmlns=\"http://schemas.microsoft.com/2006/09/sip/categories\" uri=\"{}\">",
        escape(uri)
    ));
    for c in categories {
        write_category(&mut out, c);
    }
    out.push_str("</categories><containers xmlns=\"http://schemas.microsoft.com/2006/09/sip/container-management\">");
    for c in containers {
        out.push_str(&format!(
            "<container id=\"{}\" version=\"{}\">",
            c.id, c.version
        ));
        for (kind, value) in &c.members {
            match value {
                Some(v) => out.push_str(&format!(
                    "<member type=\"{}\" value=\"{}\"/>",
                    escape(kind),
                    escape(v)
                )),
                None => out.push_str(&format!("<member type=\"{}\"/>", escape(kind))),
            }
        }
        out.push_str("</container>");
    }
    out.push_str("</containers><subscribers xmlns=\"http://schemas.microsoft.com/2006/09/sip/presence-subscribers\">");
    for s in subscribers {
        out.push_str(&format!(
            "<subscriber user=\"{}\"{} acknowledged=\"{}\" type=\"{}\"/>",
            escape(&s.user),
            s.display_name
                .as_deref()
                .map(|n| format!(" displayName=\"{}\"", escape(n)))
                .unwrap_or_default(),
            s.acknowledged,
            if s.same_enterprise {
                "sameEnterprise"
            } else {
                "federated"
            }
        ));
    }
    out.push_str("</subscribers></roamingData>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree;

    fn snapshot() -> Snapshot {
        Snapshot {
            uri: "sip:bob@example.test".into(),
            availability: 6500,
            activity: Some("in-a-meeting".into()),
            meeting: Some((Some("Plans & <budget>".into()), None)),
            note: Some(("back at 3".into(), false)),
            display_name: Some("Bob".into()),
            email: Some("bob@example.test".into()),
            title: None,
            work_phone: Some("+1 555 0100".into()),
            personal_phone: None,
            container: 300,
            publish_time: "2026-12-01T10:00:00Z".into(),
            version: 4,
        }
    }

    #[test]
    fn a_watcher_reads_state_note_and_card() {
        let doc = event_categories(&snapshot());
        let root = tree::parse(doc.as_bytes()).unwrap();
        assert_eq!(root.attr("uri"), Some("sip:bob@example.test"));
        let cats: Vec<_> = root.children_named("category").collect();
        assert_eq!(cats.len(), 3);
        let state = cats[0].child("state").unwrap();
        assert_eq!(state.attr("type"), Some("aggregateState"));
        assert_eq!(state.text_at("availability"), Some("6500"));
        assert_eq!(
            state.child("activity").unwrap().attr("token"),
            Some("in-a-meeting")
        );
        assert_eq!(state.text_at("meetingSubject"), Some("Plans & <budget>"));
        assert_eq!(cats[0].attr("container"), Some("300"));
        assert_eq!(cats[1].text_at("note/body"), Some("back at 3"));
        assert_eq!(
            cats[2].text_at("contactCard/identity/name/displayName"),
            Some("Bob")
        );
        assert_eq!(
            cats[2].text_at("contactCard/phone/uri"),
            Some("tel:+15550100")
        );
    }

    #[test]
    fn roaming_data_lists_categories_containers_subscribers() {
        let s = snapshot();
        let doc = roaming_self(
            "sip:bob@example.test",
            &[state_category(&s, 2)],
            &[Container {
                id: 32000,
                version: 2,
                members: vec![("user".into(), Some("eve@example.test".into()))],
            }],
            &[Subscriber {
                user: "alice@example.test".into(),
                display_name: Some("Alice".into()),
                acknowledged: false,
                same_enterprise: true,
            }],
        );
        let root = tree::parse(doc.as_bytes()).unwrap();
        let cat = root.path("categories/category").unwrap();
        assert_eq!(cat.attr("container"), Some("2"));
        assert_eq!(
            cat.path("state").unwrap().attr("type"),
            Some("aggregateState")
        );
        let m = root.path("containers/container/member").unwrap();
        assert_eq!(m.attr("value"), Some("eve@example.test"));
        let sub = root.path("subscribers/subscriber").unwrap();
        assert_eq!(sub.attr("acknowledged"), Some("false"));
    }
}
