//! PIDF (RFC 3863) with the data model of RFC 4479, RPID (RFC 4480) and CIPID (RFC 4482):
//! reading what a device publishes into a [`DeviceState`], and writing a watcher's
//! [`View`] as a document baresip, linphone and browser clients read.
//!
//! Standard elements carry what they can: `<basic>` open/closed, RPID activities (busy,
//! away, on-the-phone, meeting, presentation, vacation), `<rpid:user-input>` idle time,
//! notes, `<c:display-name>`. What the standards have no element for (do-not-disturb, be
//! right back, meeting subject, phones) travels in a `urn:x-switchboard:presence` element
//! that other clients ignore (RFC 3863 §5: unknown namespaces are skipped).

use quick_xml::events::Event;
use quick_xml::Reader;

use msrtc::tree::is_xml_char;

use crate::model::{Activity, Availability, DeviceState, NoteKind};
use crate::privacy::View;

/// Why a PIDF document was refused (answered 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PidfError {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("the document element is not <presence>")]
    NotPresence,
}

/// The state a PIDF document describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub availability: Availability,
    pub activities: Vec<Activity>,
    pub idle_since_ms: Option<i64>,
    pub note: Option<String>,
}

fn not_xml_char() -> PidfError {
    PidfError::Xml("a character XML does not allow".into())
}

fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|b| *b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

pub(crate) fn fmt_rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reads a published PIDF document at `now_ms` (for idle times without a last-input).
pub fn parse(body: &[u8], now_ms: i64) -> Result<Published, PidfError> {
    // A note goes to every watcher: a character XML does not allow (raw here, as a
    // reference below) would make their documents unreadable.
    if body
        .utf8_chunks()
        .any(|c| !c.valid().chars().all(is_xml_char))
    {
        return Err(not_xml_char());
    }
    let mut r = Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut basics: Vec<bool> = Vec::new();
    let mut rpid: Vec<String> = Vec::new();
    let mut other_text: Vec<String> = Vec::new();
    let mut our_availability: Option<Availability> = None;
    let mut idle: Option<i64> = None;
    let mut note: Option<String> = None;
    let mut buf = Vec::new();
    let mut saw_root = false;
    let mut text_buf = String::new();
    loop {
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| PidfError::Xml(e.to_string()))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = local(e.name().as_ref()).to_vec();
                if path.is_empty() {
                    if name != b"presence" {
                        return Err(PidfError::NotPresence);
                    }
                    saw_root = true;
                }
                let parent = path.last().map(Vec::as_slice).unwrap_or(b"");
                if parent == b"activities" && name != b"other" && name != b"note" {
                    rpid.push(String::from_utf8_lossy(&name).into_owned());
                }
                if name == b"user-input" {
                    for a in e.attributes().flatten() {
                        if local(a.key.as_ref()) == b"last-input" {
                            idle = rfc3339_ms(&a.unescape_value().unwrap_or_default());
                        }
                    }
                }
                if name == b"state" && e.name().as_ref().starts_with(b"sb:") {
                    for a in e.attributes().flatten() {
                        if a.key.as_ref() == b"availability" {
                            our_availability = a.unescape_value().ok().and_then(|v| v.parse().ok());
                        }
                    }
                }
                if let Event::Start(_) = ev {
                    path.push(name);
                    text_buf.clear();
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|e| PidfError::Xml(e.to_string()))?;
                text_buf.push_str(&text);
            }
            Event::CData(t) => text_buf.push_str(&String::from_utf8_lossy(&t)),
            Event::GeneralRef(r) => {
                // quick-xml reports entity references apart from the text around them.
                let name = r.decode().map_err(|e| PidfError::Xml(e.to_string()))?;
                let resolved = match name.as_ref() {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    _ => r.resolve_char_ref().ok().flatten(),
                };
                match resolved {
                    Some(c) if is_xml_char(c) => text_buf.push(c),
                    Some(_) => return Err(not_xml_char()),
                    None => return Err(PidfError::Xml(format!("unknown entity &{name};"))),
                }
            }
            Event::End(_) => {
                let text = std::mem::take(&mut text_buf);
                let text = text.trim();
                let here = path.last().map(Vec::as_slice).unwrap_or(b"");
                let parent = path
                    .len()
                    .checked_sub(2)
                    .map(|i| path[i].as_slice())
                    .unwrap_or(b"");
                match here {
                    b"basic" => basics.push(text.eq_ignore_ascii_case("open")),
                    b"note" if note.is_none() && parent != b"activities" && !text.is_empty() => {
                        note = Some(text.to_owned())
                    }
                    b"other" if parent == b"activities" => {
                        other_text.push(text.to_ascii_lowercase())
                    }
                    b"user-input" if text == "idle" && idle.is_none() => idle = Some(now_ms),
                    _ => {}
                }
                path.pop();
            }
            Event::Eof if !path.is_empty() => {
                return Err(PidfError::Xml("the document ends inside an element".into()))
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_root {
        return Err(PidfError::NotPresence);
    }
    let open = if basics.is_empty() {
        // No tuple: a person element alone still says the user is around.
        !rpid.is_empty()
    } else {
        basics.iter().any(|b| *b)
    };
    let mut activities = Vec::new();
    let mut availability = if open {
        Availability::Available
    } else {
        Availability::Offline
    };
    if open {
        for a in &rpid {
            match a.as_str() {
                "busy" => availability = availability.max(Availability::Busy),
                "away" | "sleeping" => availability = availability.max(Availability::Away),
                "in-transit" | "meal" | "lunch" | "breakfast" | "dinner" => {
                    availability = availability.max(Availability::BeRightBack)
                }
                "on-the-phone" => activities.push(Activity::InACall),
                "meeting" | "appointment" => activities.push(Activity::InAMeeting),
                "presentation" => activities.push(Activity::Presenting),
                "vacation" | "holiday" => activities.push(Activity::OutOfOffice),
                "permanent-absence" => availability = Availability::Offline,
                _ => {}
            }
        }
        for o in &other_text {
            match o.as_str() {
                "do-not-disturb" | "dnd" | "do not disturb" => {
                    availability = Availability::DoNotDisturb
                }
                "be-right-back" | "brb" | "be right back" => {
                    availability = Availability::BeRightBack
                }
                _ => {}
            }
        }
        if let Some(a) = our_availability.filter(|a| a.is_online()) {
            availability = a;
        }
    }
    activities.sort();
    activities.dedup();
    Ok(Published {
        availability,
        activities,
        idle_since_ms: idle.filter(|_| open),
        note: note.filter(|n| !n.is_empty()),
    })
}

impl Published {
    /// This publication as one device's state.
    pub fn into_device(self, device: String, now_ms: i64) -> DeviceState {
        DeviceState {
            device,
            availability: self.availability,
            activities: self.activities,
            idle_since_ms: self.idle_since_ms,
            note: self.note,
            updated_ms: now_ms,
        }
    }
}

/// Escapes like quick-xml, and writes U+FFFD for a character XML cannot carry at all.
pub(crate) fn escape(s: &str) -> String {
    msrtc::escape(s)
}

/// A watcher's view as a PIDF document.
pub fn render(v: &View) -> String {
    let entity = escape(&v.entity);
    let online = v.availability.is_online();
    let mut x = String::with_capacity(768);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" xmlns:sb=\"urn:x-switchboard:presence\" entity=\"");
    x.push_str(&entity);
    x.push_str("\">\n");
    // RFC 4479 §3.3: a service tuple; open while the user is reachable.
    x.push_str(&format!(
        " <tuple id=\"sb-im\"><status><basic>{}</basic></status><contact>{entity}</contact></tuple>\n",
        if online { "open" } else { "closed" }
    ));
    x.push_str(" <dm:person id=\"sb-person\">\n");
    // The availability first, the specific activities after it: linphone shows the last
    // activity it reads (a meeting as "Do not disturb"), baresip any busy or on-the-phone.
    let mut acts: Vec<&str> = Vec::new();
    match v.availability {
        Availability::Busy => acts.push("<rpid:busy/>"),
        Availability::DoNotDisturb => {
            acts.push("<rpid:busy/><rpid:other>do-not-disturb</rpid:other>")
        }
        Availability::BeRightBack => {
            acts.push("<rpid:away/><rpid:other>be-right-back</rpid:other>")
        }
        Availability::Away => acts.push("<rpid:away/>"),
        _ => {}
    }
    for a in &v.activities {
        acts.push(match a {
            Activity::InACall => "<rpid:on-the-phone/>",
            Activity::InAMeeting | Activity::InAConference => "<rpid:meeting/>",
            Activity::Presenting => "<rpid:presentation/>",
            Activity::OutOfOffice => "<rpid:vacation/>",
        });
    }
    if online && !acts.is_empty() {
        x.push_str("  <rpid:activities>");
        for a in acts {
            x.push_str(a);
        }
        x.push_str("</rpid:activities>\n");
    }
    if online {
        match v.idle_since_ms {
            Some(since) => x.push_str(&format!(
                "  <rpid:user-input last-input=\"{}\">idle</rpid:user-input>\n",
                fmt_rfc3339(since)
            )),
            None if v.availability != Availability::Inactive => {
                x.push_str("  <rpid:user-input>active</rpid:user-input>\n")
            }
            None => {}
        }
    }
    if let Some(n) = &v.note {
        x.push_str(&format!("  <dm:note>{}</dm:note>\n", escape(&n.text)));
    }
    if let Some(name) = &v.card.display_name {
        x.push_str(&format!(
            "  <c:display-name>{}</c:display-name>\n",
            escape(name)
        ));
    }
    x.push_str(&format!(
        "  <sb:state availability=\"{}\" lync=\"{}\"",
        v.availability,
        v.availability.lync_number()
    ));
    let attr = |x: &mut String, k: &str, val: &Option<String>| {
        if let Some(val) = val {
            x.push_str(&format!(" {k}=\"{}\"", escape(val)));
        }
    };
    if let Some(t) = v.last_active_ms {
        x.push_str(&format!(" last-active=\"{}\"", fmt_rfc3339(t)));
    }
    if let Some(t) = v.out_of_office_until_ms {
        x.push_str(&format!(" out-of-office-until=\"{}\"", fmt_rfc3339(t)));
    }
    if let Some(n) = &v.note {
        x.push_str(if n.kind == NoteKind::OutOfOffice {
            " note-kind=\"out-of-office\""
        } else {
            " note-kind=\"personal\""
        });
    }
    x.push('>');
    for a in &v.activities {
        x.push_str(&format!("<sb:activity>{}</sb:activity>", a.as_str()));
    }
    if let Some(m) = &v.meeting {
        x.push_str(&format!(
            "<sb:meeting from=\"{}\" to=\"{}\"",
            fmt_rfc3339(m.from_ms),
            fmt_rfc3339(m.to_ms)
        ));
        attr(&mut x, "subject", &m.subject);
        attr(&mut x, "location", &m.location);
        x.push_str("/>");
    }
    if v.card != Default::default() {
        x.push_str("<sb:card");
        attr(&mut x, "title", &v.card.title);
        attr(&mut x, "email", &v.card.email);
        attr(&mut x, "work-phone", &v.card.work_phone);
        attr(&mut x, "personal-phone", &v.card.personal_phone);
        x.push_str("/>");
    }
    x.push_str("</sb:state>\n </dm:person>\n</presence>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn reads_what_clients_publish() {
        let cases: &[(&str, Availability, &[Activity])] = &[
            // baresip / linphone: basic only.
            (
                r#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@x"><tuple id="1"><status><basic>open</basic></status></tuple></presence>"#,
                Availability::Available,
                &[],
            ),
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@x"><tuple id="1"><status><basic>closed</basic></status></tuple></presence>"#,
                Availability::Offline,
                &[],
            ),
            // RPID busy in a person element (the sipsak recipe).
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status></tuple><dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities></dm:person></presence>"#,
                Availability::Busy,
                &[],
            ),
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status></tuple><person xmlns="urn:ietf:params:xml:ns:pidf:data-model" id="p"><r:activities><r:on-the-phone/></r:activities></person></presence>"#,
                Availability::Available,
                &[Activity::InACall],
            ),
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status></tuple><person><rpid:activities><rpid:away/></rpid:activities></person></presence>"#,
                Availability::Away,
                &[],
            ),
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status></tuple><person><rpid:activities><rpid:other>Do Not Disturb</rpid:other></rpid:activities></person></presence>"#,
                Availability::DoNotDisturb,
                &[],
            ),
            (
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status></tuple><person><rpid:activities><rpid:meeting/><rpid:vacation/></rpid:activities></person></presence>"#,
                Availability::Available,
                &[Activity::InAMeeting, Activity::OutOfOffice],
            ),
        ];
        for (doc, want, acts) in cases {
            let p = parse(doc.as_bytes(), NOW).unwrap();
            assert_eq!(
                (p.availability, p.activities.as_slice()),
                (*want, *acts),
                "{doc}"
            );
        }
        let idle = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:c@x"><tuple id="t1"><status><basic>open</basic></status><note>at lunch &amp; back</note></tuple><dm:person id="p"><rpid:user-input last-input="2023-11-14T22:13:20Z">idle</rpid:user-input></dm:person></presence>"#;
        let p = parse(idle.as_bytes(), NOW).unwrap();
        assert_eq!(p.idle_since_ms, Some(NOW));
        assert_eq!(p.note.as_deref(), Some("at lunch & back"));
    }

    #[test]
    fn refuses_what_is_not_pidf() {
        assert_eq!(parse(b"<foo/>", NOW), Err(PidfError::NotPresence));
        assert_eq!(parse(b"", NOW), Err(PidfError::NotPresence));
        assert!(matches!(
            parse(b"<presence><tuple></presence>", NOW),
            Err(PidfError::Xml(_))
        ));
    }

    /// Found by fuzzing (pidf): a note holding a NUL (raw or `&#0;`-like) was read, and
    /// written into every watcher's document, which no XML reader then accepts.
    #[test]
    fn refuses_characters_xml_does_not_allow() {
        for bad in [
            &b"<presence><tuple id=\"1\"><status><basic>open</basic></status><note>a \0t lunch</note></tuple></presence>"[..],
            b"<presence><tuple id=\"1\"><note>a &#1; b</note></tuple></presence>",
            b"<presence><tuple id=\"1\"><note>\x1b[2J</note></tuple></presence>",
        ] {
            assert_eq!(
                parse(bad, NOW),
                Err(PidfError::Xml("a character XML does not allow".into()))
            );
        }
        assert_eq!(escape("a\0b\u{1}<"), "a\u{FFFD}b\u{FFFD}&lt;");
    }

    #[test]
    fn what_we_write_we_read_back() {
        use crate::model::{Note, Presence};
        use crate::privacy::{Audience, View};
        use switchboard_core::{ContactCard, Relationship};
        for a in [
            Availability::Available,
            Availability::Busy,
            Availability::DoNotDisturb,
            Availability::BeRightBack,
            Availability::Away,
            Availability::Offline,
        ] {
            let mut p = Presence::offline(None);
            p.availability = a;
            p.note = Some(Note {
                text: "<hi> & \"bye\"".into(),
                kind: NoteKind::Personal,
            });
            let v = View::of(
                "sip:a@x",
                &p,
                Some("A & B"),
                &ContactCard::default(),
                Audience::Watcher(Relationship::Colleagues),
            );
            let doc = render(&v);
            let back = parse(doc.as_bytes(), NOW).unwrap();
            assert_eq!(back.availability, a, "{doc}");
            if a.is_online() {
                assert_eq!(back.note.as_deref(), Some("<hi> & \"bye\""));
            }
        }
    }
}
