//! The server-stored contact list as Lync clients see it (`vnd-microsoft-roaming-contacts`,
//! MS-SIP §2.2.2): the whole list once, then deltas; and the SOAP edits clients send
//! over SERVICE (MS-SIP §2.2.3: `setContact`, `deleteContact`, `addGroup`,
//! `modifyGroup`, `deleteGroup`).

use crate::tree::{self, escape};
use crate::MsrtcError;

/// A group as clients number it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u32,
    /// `~` is the default group ("Other Contacts").
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Without `sip:`.
    pub uri: String,
    pub name: Option<String>,
    pub groups: Vec<u32>,
}

/// A contact list with the number clients track changes by (never zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub delta: u64,
    pub groups: Vec<Group>,
    pub contacts: Vec<Contact>,
}

fn group_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn contact_attrs(c: &Contact) -> String {
    format!(
        "uri=\"{}\" name=\"{}\" groups=\"{}\" subscribed=\"true\"",
        escape(&c.uri),
        escape(c.name.as_deref().unwrap_or("")),
        group_ids(&c.groups)
    )
}

/// The whole list (`<contactList>`). No `ucsmode`: with it Lync 2013 clients move the
/// list to Exchange.
pub fn contact_list(list: &List) -> String {
    let mut s = format!(
        "<contactList deltaNum=\"{}\" xmlns=\"http://schemas.microsoft.com/2006/09/sip/contactlist\">",
        list.delta.max(1)
    );
    for g in &list.groups {
        s.push_str(&format!(
            "<group id=\"{}\" name=\"{}\" externalURI=\"\"/>",
            g.id,
            escape(&g.name)
        ));
    }
    for c in &list.contacts {
        s.push_str(&format!("<contact {} externalURI=\"\"/>", contact_attrs(c)));
    }
    s.push_str("</contactList>");
    s
}

/// What changed between two lists (`<contactDelta>`), or `None` when nothing did.
pub fn contact_delta(old: &List, new: &List) -> Option<String> {
    let mut body = String::new();
    for g in &new.groups {
        match old.groups.iter().find(|o| o.id == g.id) {
            None => body.push_str(&format!(
                "<addedGroup id=\"{}\" name=\"{}\" externalURI=\"\"/>",
                g.id,
                escape(&g.name)
            )),
            Some(o) if o.name != g.name => body.push_str(&format!(
                "<modifiedGroup id=\"{}\" name=\"{}\" externalURI=\"\"/>",
                g.id,
                escape(&g.name)
            )),
            Some(_) => {}
        }
    }
    for c in &new.contacts {
        match old.contacts.iter().find(|o| o.uri == c.uri) {
            None => body.push_str(&format!(
                "<addedContact {} externalURI=\"\"/>",
                contact_attrs(&Contact {
                    uri: format!("sip:{}", c.uri),
                    ..c.clone()
                })
            )),
            Some(o) if o != c => body.push_str(&format!(
                "<modifiedContact {} externalURI=\"\"/>",
                contact_attrs(&Contact {
                    uri: format!("sip:{}", c.uri),
                    ..c.clone()
                })
            )),
            Some(_) => {}
        }
    }
    for o in &old.contacts {
        if !new.contacts.iter().any(|c| c.uri == o.uri) {
            body.push_str(&format!("<deletedContact uri=\"sip:{}\"/>", escape(&o.uri)));
        }
    }
    for o in &old.groups {
        if !new.groups.iter().any(|g| g.id == o.id) {
            body.push_str(&format!("<deletedGroup id=\"{}\"/>", o.id));
        }
    }
    if body.is_empty() {
        return None;
    }
    Some(format!(
        "<contactDelta deltaNum=\"{}\" prevDeltaNum=\"{}\" xmlns=\"http://schemas.microsoft.com/2006/09/sip/contactlist\">{body}</contactDelta>",
        new.delta.max(1),
        old.delta.max(1)
    ))
}

/// A contact-list edit sent as SOAP over SERVICE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Add or update a contact: its display name and the groups it is in.
    SetContact {
        uri: String,
        name: Option<String>,
        groups: Vec<u32>,
    },
    DeleteContact {
        uri: String,
    },
    AddGroup {
        name: String,
    },
    ModifyGroup {
        id: u32,
        name: String,
    },
    DeleteGroup {
        id: u32,
    },
}

fn strip_sip(u: &str) -> String {
    u.trim().strip_prefix("sip:").unwrap_or(u.trim()).to_owned()
}

/// Reads a SOAP contact-list edit.
pub fn parse_edit(body: &[u8]) -> Result<Edit, MsrtcError> {
    let root = tree::parse(body)?;
    let call = root
        .path("Body")
        .and_then(|b| b.children.first())
        .ok_or_else(|| MsrtcError::Unexpected("no SOAP Body".into()))?;
    let need = |name: &str| {
        call.text_at(name)
            .map(str::to_owned)
            .ok_or_else(|| MsrtcError::Unexpected(format!("{} without {name}", call.name)))
    };
    let id = |name: &str| -> Result<u32, MsrtcError> {
        need(name)?
            .parse()
            .map_err(|_| MsrtcError::Unexpected(format!("{name} is not a number")))
    };
    Ok(match call.name.as_str() {
        "setContact" => Edit::SetContact {
            uri: strip_sip(&need("URI")?),
            name: call.text_at("displayName").map(str::to_owned),
            groups: call
                .text_at("groups")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect(),
        },
        "deleteContact" => Edit::DeleteContact {
            uri: strip_sip(&need("URI")?),
        },
        "addGroup" => Edit::AddGroup {
            name: need("name")?,
        },
        "modifyGroup" => Edit::ModifyGroup {
            id: id("groupID")?,
            name: need("name")?,
        },
        "deleteGroup" => Edit::DeleteGroup { id: id("groupID")? },
        other => return Err(MsrtcError::Unexpected(format!("SOAP method {other}"))),
    })
}

/// The answer to `addGroup`: the new group's id.
pub fn add_group_answer(id: u32) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/winrtc/2002/11/sip\"><s:Body><m:addGroup><m:groupID>{id}</m:groupID></m:addGroup></s:Body></s:Envelope>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(delta: u64, contacts: &[(&str, &[u32])]) -> List {
        List {
            delta,
            groups: vec![
                Group {
                    id: 1,
                    name: "~".into(),
                },
                Group {
                    id: 2,
                    name: "Team".into(),
                },
            ],
            contacts: contacts
                .iter()
                .map(|(u, g)| Contact {
                    uri: u.to_string(),
                    name: None,
                    groups: g.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn whole_list() {
        let doc = contact_list(&list(3, &[("bob@example.test", &[1, 2])]));
        let root = tree::parse(doc.as_bytes()).unwrap();
        assert_eq!(root.name, "contactList");
        assert_eq!(root.attr("deltaNum"), Some("3"));
        assert!(root.attr("ucsmode").is_none());
        let c = root.child("contact").unwrap();
        assert_eq!(
            (c.attr("uri"), c.attr("groups")),
            (Some("bob@example.test"), Some("1 2"))
        );
        assert_eq!(root.children_named("group").count(), 2);
    }

    #[test]
    fn deltas_name_what_changed() {
        let old = list(3, &[("bob@example.test", &[1]), ("eve@example.test", &[1])]);
        let mut new = list(
            4,
            &[("bob@example.test", &[2]), ("carol@example.test", &[1])],
        );
        new.groups[1].name = "Friends".into();
        let doc = contact_delta(&old, &new).unwrap();
        let root = tree::parse(doc.as_bytes()).unwrap();
        assert_eq!(root.attr("deltaNum"), Some("4"));
        assert_eq!(
            root.child("addedContact").unwrap().attr("uri"),
            Some("sip:carol@example.test")
        );
        assert_eq!(
            root.child("modifiedContact").unwrap().attr("groups"),
            Some("2")
        );
        assert_eq!(
            root.child("deletedContact").unwrap().attr("uri"),
            Some("sip:eve@example.test")
        );
        assert_eq!(
            root.child("modifiedGroup").unwrap().attr("name"),
            Some("Friends")
        );
        assert!(contact_delta(&new, &new).is_none());
    }

    #[test]
    fn soap_edits() {
        let env = |inner: &str| {
            format!("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"http://schemas.microsoft.com/winrtc/2002/11/sip\"><s:Body>{inner}</s:Body></s:Envelope>")
        };
        let e = parse_edit(env("<m:setContact><m:displayName>Carol</m:displayName><m:groups>1 2</m:groups><m:subscribed>true</m:subscribed><m:URI>sip:carol@example.test</m:URI><m:externalURI /><m:deltaNum>5</m:deltaNum></m:setContact>").as_bytes()).unwrap();
        assert_eq!(
            e,
            Edit::SetContact {
                uri: "carol@example.test".into(),
                name: Some("Carol".into()),
                groups: vec![1, 2]
            }
        );
        assert_eq!(
            parse_edit(
                env("<m:addGroup><m:name>Team</m:name><m:externalURI /></m:addGroup>").as_bytes()
            )
            .unwrap(),
            Edit::AddGroup {
                name: "Team".into()
            }
        );
        assert_eq!(
            parse_edit(env("<m:deleteGroup><m:groupID>2</m:groupID></m:deleteGroup>").as_bytes())
                .unwrap(),
            Edit::DeleteGroup { id: 2 }
        );
        assert!(parse_edit(env("<m:setACE/>").as_bytes()).is_err());
        assert!(parse_edit(
            env("<m:modifyGroup><m:groupID>x</m:groupID><m:name>a</m:name></m:modifyGroup>")
                .as_bytes()
        )
        .is_err());
    }
}
