//! The C3P (`application/cccp+xml`) and SOAP contact-edit readers of crates/msrtc, each on
//! its own (byte 0 picks: 0 C3P request, 1 `ms-conf-invite`, 2 SOAP edit; the seeds in
//! fuzz/seeds/c3p_soap carry that byte), with what a reader promises:
//!
//! - a C3P request read is answered by a response that parses, mirrors its requestId,
//!   from and to (swapped) and names its command; roles are trimmed, never empty; an
//!   `addConference` subject goes into a conference document every participant receives:
//!   that document is well-formed XML 1.0 and carries the subject back unchanged;
//! - an invitation read writes back (`conf_invite`) into one that reads the same;
//! - a SOAP edit read writes back into a SOAP edit that reads the same; the contact or
//!   group it names goes into the contact list the user's devices receive, which is
//!   well-formed and carries the names back unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use msrtc::cccp::{self, Command, Outcome, RosterUser};
use msrtc::contacts::{self, Contact, Edit, Group, List};
use msrtc::tree::{self, escape};

#[path = "../common/mod.rs"]
mod common;

fn c3p(body: &[u8]) {
    let Ok(req) = cccp::parse_request(body) else { return };
    let inners = [String::new(), cccp::capabilities(&["chat"]), cccp::added_conference(&req.from)];
    for (outcome, inner) in [
        (Outcome::Success, &inners[0]),
        (Outcome::Pending, &inners[1]),
        (Outcome::Failure("requestMalformed"), &inners[2]),
    ] {
        let doc = cccp::response(&req, outcome, inner);
        let root = tree::parse(doc.as_bytes()).unwrap_or_else(|e| panic!("our response does not parse ({e}): {doc}"));
        assert_eq!(root.name, "response");
        assert_eq!(root.attr("requestId"), Some(req.request_id.as_str()));
        assert_eq!(root.attr("from"), Some(req.to.as_str()));
        assert_eq!(root.attr("to"), Some(req.from.as_str()));
        assert_eq!(root.children.len(), 1, "{doc}");
        assert_eq!(root.children[0].name, req.command.name(), "{doc}");
    }
    match &req.command {
        Command::AddUser { roles, .. } | Command::ModifyUserRoles { roles, .. } => {
            assert!(roles.iter().all(|r| !r.is_empty() && r.trim() == r));
        }
        Command::AddConference { subject, conference_id, .. } => {
            for s in [subject, conference_id].into_iter().flatten() {
                assert!(!s.is_empty() && s.trim() == s);
            }
            let subject = subject.as_deref().unwrap_or("");
            let users = [RosterUser {
                entity: req.from.clone(),
                display: req.from.clone(),
                roles: vec!["presenter".into()],
                in_focus: true,
                in_chat: true,
            }];
            let doc = cccp::conference_info("sip:chat-1@x;gruu;opaque=app:conf:focus:id:1", 1, subject, "sip:chat-1@x", &req.from, &users, false);
            assert!(common::xml_chars_ok(&doc), "not XML 1.0: {doc:?}");
            let root = tree::parse(doc.as_bytes()).expect("conference document parses");
            assert_eq!(root.path("conference-description/subject").map(|s| s.text.as_str()), Some(subject));
            let user = root.path("users/user").expect("one user");
            assert_eq!(user.attr("entity"), Some(req.from.as_str()));
        }
        _ => {}
    }
}

fn invite(body: &[u8]) {
    let Ok(inv) = cccp::parse_conf_invite(body) else { return };
    assert!(!inv.focus_uri.is_empty() && inv.focus_uri.trim() == inv.focus_uri);
    let doc = cccp::conf_invite(&inv.focus_uri, inv.subject.as_deref().unwrap_or(""));
    assert!(common::xml_chars_ok(&doc), "not XML 1.0: {doc:?}");
    assert_eq!(cccp::parse_conf_invite(doc.as_bytes()).as_ref(), Ok(&inv), "{doc}");
}

fn envelope(inner: &str) -> String {
    format!("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/winrtc/2002/11/sip\"><s:Body>{inner}</s:Body></s:Envelope>")
}

/// The SOAP a client would send for `e`.
fn soap(e: &Edit) -> String {
    envelope(&match e {
        Edit::SetContact { uri, name, groups } => format!(
            "<m:setContact>{}<m:groups>{}</m:groups><m:subscribed>true</m:subscribed><m:URI>sip:{}</m:URI></m:setContact>",
            name.as_deref().map(|n| format!("<m:displayName>{}</m:displayName>", escape(n))).unwrap_or_default(),
            groups.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            escape(uri)
        ),
        Edit::DeleteContact { uri } => format!("<m:deleteContact><m:URI>sip:{}</m:URI></m:deleteContact>", escape(uri)),
        Edit::AddGroup { name } => format!("<m:addGroup><m:name>{}</m:name></m:addGroup>", escape(name)),
        Edit::ModifyGroup { id, name } => format!("<m:modifyGroup><m:groupID>{id}</m:groupID><m:name>{}</m:name></m:modifyGroup>", escape(name)),
        Edit::DeleteGroup { id } => format!("<m:deleteGroup><m:groupID>{id}</m:groupID></m:deleteGroup>"),
    })
}

fn soap_edit(body: &[u8]) {
    let Ok(edit) = contacts::parse_edit(body) else { return };
    let again = soap(&edit);
    assert_eq!(contacts::parse_edit(again.as_bytes()).as_ref(), Ok(&edit), "{again}");
    // What the edit puts in the list reaches the user's devices as written.
    let (contact, group) = match &edit {
        Edit::SetContact { uri, name, groups } => (Some(Contact { uri: uri.clone(), name: name.clone(), groups: groups.clone() }), None),
        Edit::DeleteContact { uri } => (Some(Contact { uri: uri.clone(), name: None, groups: vec![] }), None),
        Edit::AddGroup { name } | Edit::ModifyGroup { name, .. } => (None, Some(Group { id: 7, name: name.clone() })),
        Edit::DeleteGroup { .. } => (None, None),
    };
    let list = List { delta: 2, groups: group.into_iter().collect(), contacts: contact.into_iter().collect() };
    let doc = contacts::contact_list(&list);
    assert!(common::xml_chars_ok(&doc), "not XML 1.0: {doc:?}");
    let root = tree::parse(doc.as_bytes()).expect("contact list parses");
    for c in &list.contacts {
        let e = root.child("contact").expect("the contact");
        assert_eq!(e.attr("uri"), Some(c.uri.as_str()));
        assert_eq!(e.attr("name"), Some(c.name.as_deref().unwrap_or("")));
    }
    for g in &list.groups {
        assert_eq!(root.child("group").and_then(|e| e.attr("name")), Some(g.name.as_str()));
    }
    let empty = List { delta: 1, groups: vec![], contacts: vec![] };
    if let Some(delta) = contacts::contact_delta(&empty, &list) {
        assert!(common::xml_chars_ok(&delta), "not XML 1.0: {delta:?}");
        tree::parse(delta.as_bytes()).expect("contact delta parses");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => c3p(body),
        1 => invite(body),
        _ => soap_edit(body),
    }
});
