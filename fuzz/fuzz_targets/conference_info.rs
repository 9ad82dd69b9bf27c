//! The RFC 4575 conference documents every participant's client receives, built from what
//! participants control (their AoRs, display names, the subject an organiser chose, role
//! names): the Lync conference document (msrtc `cccp::conference_info`, MS-CONFBAS
//! §2.2.3), the standard roster (switchboard-im `roster_document`), the `ms-conf-invite`
//! and the IM MCU's delivery report. Each, on arbitrary strings, must be well-formed XML
//! 1.0 (one participant must not be able to make the roster unreadable for all the
//! others) and must carry every value back unchanged when read (but for characters XML
//! cannot carry at all, which become U+FFFD).
//!
//! (crates/switchboard-presence reads no resource list or RLMI document: it only writes
//! them, from server-side data.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use msrtc::cccp::{self, RosterUser};
use msrtc::tree::{self, Element};

#[path = "../common/mod.rs"]
mod common;

type User = (String, String, Vec<String>, bool, bool);

fn text<'a>(e: &'a Element, path: &str) -> Option<&'a str> {
    e.path(path).map(|x| x.text.as_str())
}

fn well_formed(doc: &str) -> Element {
    assert!(common::xml_chars_ok(doc), "not XML 1.0: {doc:?}");
    tree::parse(doc.as_bytes()).unwrap_or_else(|e| panic!("does not parse ({e}): {doc:?}"))
}

fuzz_target!(|input: (String, u32, String, String, String, Vec<User>, bool, String)| {
    let (entity, version, subject, chat, organizer, users, locked, message_id) = input;
    let users: Vec<RosterUser> = users
        .into_iter()
        .take(16)
        .map(|(entity, display, roles, in_focus, in_chat)| RosterUser { entity, display, roles, in_focus, in_chat })
        .collect();
    // What the documents should carry back.
    let x = common::xml_sanitized;
    let (entity_x, subject_x, chat_x, organizer_x, message_id_x) = (x(&entity), x(&subject), x(&chat), x(&organizer), x(&message_id));

    // The Lync conference document.
    let doc = cccp::conference_info(&entity, version, &subject, &chat, &organizer, &users, locked);
    let root = well_formed(&doc);
    assert_eq!(root.name, "conference-info");
    assert_eq!(root.attr("entity"), Some(entity_x.as_str()));
    assert_eq!(root.attr("version"), Some(version.to_string().as_str()));
    assert_eq!(text(&root, "conference-description/subject"), Some(subject_x.as_str()));
    assert_eq!(text(&root, "conference-description/organizer/display-name"), Some(organizer_x.as_str()));
    assert_eq!(text(&root, "conference-description/conf-uris/entry/uri"), Some(chat_x.as_str()));
    let active = users.iter().filter(|u| u.in_focus || u.in_chat).count();
    assert_eq!(text(&root, "conference-state/user-count"), Some(active.to_string().as_str()));
    assert_eq!(text(&root, "conference-state/locked"), Some(if locked { "true" } else { "false" }));
    let read: Vec<&Element> = root.child("users").expect("users").children_named("user").collect();
    assert_eq!(read.len(), users.len());
    for (u, e) in users.iter().zip(&read) {
        assert_eq!(e.attr("entity"), Some(x(&u.entity).as_str()));
        assert_eq!(text(e, "display-text"), Some(x(&u.display).as_str()));
        let roles: Vec<String> = e.child("roles").expect("roles").children_named("entry").map(|r| r.text.clone()).collect();
        assert_eq!(roles, u.roles.iter().map(|r| x(r)).collect::<Vec<_>>());
        let session = |t: &str| e.children_named("endpoint").any(|p| p.attr("session-type") == Some(t));
        assert_eq!((session("focus"), session("chat")), (u.in_focus, u.in_chat));
        assert_eq!(e.attr("state"), Some(if u.in_focus || u.in_chat { "full" } else { "deleted" }));
    }
    assert_eq!(root.path("conference-view/entity-view").and_then(|v| v.attr("entity")), Some(chat_x.as_str()));

    // The standard roster.
    let members: Vec<(&str, String)> = users.iter().map(|u| (u.entity.as_str(), u.display.clone())).collect();
    let doc = switchboard_im::fuzzing::roster_document(&entity, &members, version);
    let root = well_formed(&doc);
    assert_eq!(root.attr("entity"), Some(entity_x.as_str()));
    assert_eq!(text(&root, "conference-state/user-count"), Some(members.len().to_string().as_str()));
    let read: Vec<&Element> = root.child("users").expect("users").children_named("user").collect();
    assert_eq!(read.len(), members.len());
    for ((aor, display), e) in members.iter().zip(&read) {
        assert_eq!(e.attr("entity"), Some(x(aor).as_str()));
        assert_eq!(text(e, "display-text"), Some(x(display).as_str()));
        assert_eq!(e.child("endpoint").and_then(|p| p.attr("entity")), Some(x(aor).as_str()));
    }

    // The invitation, as the invitee reads it (values trimmed, empty ones absent).
    let doc = cccp::conf_invite(&chat, &subject);
    well_formed(&doc);
    match cccp::parse_conf_invite(doc.as_bytes()) {
        Ok(inv) => {
            assert_eq!(inv.focus_uri, chat_x.trim());
            assert_eq!(inv.subject.as_deref(), Some(subject_x.trim()).filter(|s| !s.is_empty()));
        }
        Err(_) => assert!(chat_x.trim().is_empty(), "an invitation to {chat:?} does not read"),
    }

    // The delivery report.
    let failed: Vec<(String, u16)> = users.iter().map(|u| (u.entity.clone(), 480)).collect();
    let doc = cccp::imdn(&message_id, &failed);
    let root = well_formed(&doc);
    assert_eq!(text(&root, "message-id"), Some(message_id_x.as_str()));
    let uris: Vec<String> = root.children_named("recipient").filter_map(|r| text(r, "uri").map(str::to_owned)).collect();
    assert_eq!(uris, failed.iter().map(|f| x(&f.0)).collect::<Vec<_>>());
});
