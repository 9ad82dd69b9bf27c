//! What each watcher may see (the Lync privacy model). Every path that shows presence to
//! someone — NOTIFY, resource-list NOTIFY, the CLI and HTTP API — goes through
//! [`View::of`], so a level's limits hold everywhere.
//!
//! | level | sees |
//! |---|---|
//! | blocked | offline, nothing else |
//! | external | availability |
//! | colleagues | + activities, note, out of office, meeting times (free/busy), idle and last-active times, display name, title, email, work phone |
//! | workgroup | + meeting subject and location |
//! | friends (and family) | + personal phone |
//! | self | everything, and the devices |

use switchboard_core::{ContactCard, Relationship};

use crate::model::{Activity, Availability, DeviceActivity, Meeting, Note, Presence};

/// Who is looking, relative to the presentity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Audience {
    /// The presentity looking at their own presence.
    Own,
    /// Another user, at the level the presentity gave them (or the default one).
    Watcher(Relationship),
}

impl Audience {
    /// The level of a watcher who is not on the presentity's contact list: colleagues
    /// inside the same organisation (domain), external otherwise.
    pub fn default_for(presentity_domain: &str, watcher_domain: &str) -> Relationship {
        if presentity_domain.eq_ignore_ascii_case(watcher_domain) {
            Relationship::Colleagues
        } else {
            Relationship::External
        }
    }

    fn at_least(self, r: Relationship) -> bool {
        match self {
            Audience::Own => true,
            Audience::Watcher(w) => w >= r,
        }
    }
}

/// The card details a view may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Card {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personal_phone: Option<String>,
}

/// One watcher's view of a presentity: everything not allowed is absent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    /// `sip:user@domain`.
    pub entity: String,
    pub audience: Audience,
    pub availability: Availability,
    pub activities: Vec<Activity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<Note>,
    /// Meeting times only, unless the level allows subject and location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meeting: Option<Meeting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_office_until_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active_ms: Option<i64>,
    pub card: Card,
    /// Left out when empty, and read back as empty when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<(String, DeviceActivity)>,
}

impl View {
    /// What `audience` may see of `p` (the presentity `entity`, with its card).
    pub fn of(
        entity: &str,
        p: &Presence,
        display_name: Option<&str>,
        card: &ContactCard,
        audience: Audience,
    ) -> View {
        let mut v = View {
            entity: entity.to_owned(),
            audience,
            availability: Availability::Offline,
            activities: Vec::new(),
            note: None,
            meeting: None,
            out_of_office_until_ms: None,
            idle_since_ms: None,
            last_active_ms: None,
            card: Card::default(),
            devices: Vec::new(),
        };
        if !audience.at_least(Relationship::External) {
            return v;
        }
        v.availability = p.availability;
        if !audience.at_least(Relationship::Colleagues) {
            return v;
        }
        v.activities = p.activities.clone();
        v.note = p.note.clone();
        v.out_of_office_until_ms = p.out_of_office_until_ms;
        v.idle_since_ms = p.idle_since_ms;
        v.last_active_ms = p.last_active_ms;
        v.meeting = p.meeting.as_ref().map(|m| Meeting {
            from_ms: m.from_ms,
            to_ms: m.to_ms,
            subject: None,
            location: None,
        });
        v.card = Card {
            display_name: display_name.map(str::to_owned),
            title: card.title.clone(),
            email: card.email.clone(),
            work_phone: card.work_phone.clone(),
            personal_phone: None,
        };
        if !audience.at_least(Relationship::Workgroup) {
            return v;
        }
        v.meeting = p.meeting.clone();
        if !audience.at_least(Relationship::Friends) {
            return v;
        }
        v.card.personal_phone = card.personal_phone.clone();
        if audience == Audience::Own {
            v.devices = p.devices.clone();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoteKind;

    fn full() -> (Presence, ContactCard) {
        let mut p = Presence::offline(Some(5));
        p.availability = Availability::Busy;
        p.activities = vec![Activity::InAMeeting, Activity::OutOfOffice];
        p.note = Some(Note {
            text: "note".into(),
            kind: NoteKind::Personal,
        });
        p.meeting = Some(Meeting {
            from_ms: 1,
            to_ms: 2,
            subject: Some("Secret plan".into()),
            location: Some("Room 9".into()),
        });
        p.out_of_office_until_ms = Some(9);
        p.devices = vec![("d".into(), DeviceActivity::Active)];
        let card = ContactCard {
            title: Some("Eng".into()),
            email: Some("e@x".into()),
            work_phone: Some("tel:+100".into()),
            personal_phone: Some("tel:+200".into()),
        };
        (p, card)
    }

    /// Every level sees exactly its own fields; the serialised view (what the API prints)
    /// carries nothing more.
    #[test]
    fn each_level_sees_its_own_fields_and_no_more() {
        let (p, card) = full();
        let view = |r| View::of("sip:b@x", &p, Some("Bob"), &card, Audience::Watcher(r));
        let json = |r| serde_json::to_string(&view(r)).unwrap();

        let blocked = view(Relationship::Blocked);
        assert_eq!(blocked.availability, Availability::Offline);
        for secret in [
            "note",
            "Bob",
            "Eng",
            "meeting",
            "last_active",
            "tel:",
            "out-of-office",
        ] {
            assert!(
                !json(Relationship::Blocked).contains(secret),
                "blocked sees {secret}"
            );
        }
        let external = view(Relationship::External);
        assert_eq!(external.availability, Availability::Busy);
        for secret in [
            "note",
            "Bob",
            "meeting",
            "last_active",
            "tel:",
            "in-a-meeting",
        ] {
            assert!(
                !json(Relationship::External).contains(secret),
                "external sees {secret}"
            );
        }
        let colleagues = json(Relationship::Colleagues);
        for seen in [
            "note",
            "Bob",
            "Eng",
            "tel:+100",
            "in-a-meeting",
            "out-of-office",
            "last_active",
        ] {
            assert!(colleagues.contains(seen), "colleagues miss {seen}");
        }
        for secret in ["Secret plan", "Room 9", "tel:+200"] {
            assert!(!colleagues.contains(secret), "colleagues see {secret}");
        }
        let workgroup = json(Relationship::Workgroup);
        assert!(workgroup.contains("Secret plan") && workgroup.contains("Room 9"));
        assert!(!workgroup.contains("tel:+200"));
        let friends = json(Relationship::Friends);
        assert!(friends.contains("tel:+200"));
        assert!(!friends.contains("devices"), "only the owner sees devices");
        let own = View::of("sip:b@x", &p, Some("Bob"), &card, Audience::Own);
        assert_eq!(own.devices.len(), 1);
    }

    #[test]
    fn default_levels() {
        assert_eq!(
            Audience::default_for("x.org", "X.org"),
            Relationship::Colleagues
        );
        assert_eq!(
            Audience::default_for("x.org", "y.org"),
            Relationship::External
        );
    }
}
