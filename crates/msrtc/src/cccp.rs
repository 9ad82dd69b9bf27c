//! C3P, the conference control protocol of Lync conferencing (draft-levin-xcon-cccp,
//! MS-CONFBAS §2.2): requests and responses in `application/cccp+xml`, carried in SERVICE
//! (to the focus factory), INVITE and INFO (to a conference's focus); the conference
//! state document (RFC 4575 `conference-info` with the `msci` extensions, MS-CONFBAS
//! §2.2.3); the `ms-conf-invite` invitation (MS-CONFIM §2.2.1); and the IM MCU's delivery
//! reports (`application/ms-imdn+xml`, MS-CONFIM §2.2.2).
//!
//! Text elements are written without surrounding white space: clients compare their
//! content byte for byte (a `purpose` of `" chat"` is not `chat`).

use crate::tree::{escape, parse_root, Element};
use crate::MsrtcError;

const CCCP_NS: &str = "urn:ietf:params:xml:ns:cccp";
const MSCP_NS: &str = "http://schemas.microsoft.com/rtc/2005/08/cccpextensions";
const CI_NS: &str = "urn:ietf:params:xml:ns:conference-info";
const MSCI_NS: &str = "http://schemas.microsoft.com/rtc/2005/08/confinfoextensions";

/// A C3P request (draft-levin-xcon-cccp §5.1): who sent it, to which conference object,
/// and the one command it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_id: String,
    pub from: String,
    pub to: String,
    pub command: Command,
}

/// The commands a chat-only focus and focus factory act on (MS-CONFBAS §3.2.5, §3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    GetConferencingCapabilities,
    /// Create a conference; `entity_views` are the MCU types asked for (`chat`, ...).
    AddConference {
        conference_id: Option<String>,
        subject: Option<String>,
        entity_views: Vec<String>,
    },
    /// Join the conference (the user named is normally the sender).
    AddUser {
        conf_entity: String,
        user: String,
        roles: Vec<String>,
    },
    /// Eject a user.
    DeleteUser {
        conf_entity: String,
        user: String,
    },
    /// Change a user's roles (`presenter` makes them a leader).
    ModifyUserRoles {
        conf_entity: String,
        user: String,
        roles: Vec<String>,
    },
    ModifyConferenceLock {
        conf_entity: String,
        locked: bool,
    },
    /// A command this server does not implement (answered with a failure).
    Other(String),
}

impl Command {
    /// The command's element name, which the response repeats.
    pub fn name(&self) -> &str {
        match self {
            Command::GetConferencingCapabilities => "getConferencingCapabilities",
            Command::AddConference { .. } => "addConference",
            Command::AddUser { .. } => "addUser",
            Command::DeleteUser { .. } => "deleteUser",
            Command::ModifyUserRoles { .. } => "modifyUserRoles",
            Command::ModifyConferenceLock { .. } => "modifyConferenceLock",
            Command::Other(name) => name,
        }
    }
}

fn roles_of(e: Option<&Element>) -> Vec<String> {
    e.map(|r| {
        r.children_named("entry")
            .map(|x| x.text.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn attr_or_empty(e: Option<&Element>, name: &str) -> String {
    e.and_then(|e| e.attr(name)).unwrap_or("").to_owned()
}

/// Reads a C3P request (draft-levin-xcon-cccp §5.1).
pub fn parse_request(body: &[u8]) -> Result<Request, MsrtcError> {
    let root = parse_root(body, "request")?;
    let Some(cmd) = root.children.first() else {
        return Err(MsrtcError::Unexpected(
            "a C3P request without a command".into(),
        ));
    };
    let command = match cmd.name.as_str() {
        "getConferencingCapabilities" => Command::GetConferencingCapabilities,
        "addConference" => {
            let info = cmd.child("conference-info");
            let desc = info.and_then(|i| i.child("conference-description"));
            Command::AddConference {
                conference_id: desc.and_then(|d| d.text_at("conference-id").map(str::to_owned)),
                subject: desc.and_then(|d| d.text_at("subject").map(str::to_owned)),
                entity_views: info
                    .and_then(|i| i.child("conference-view"))
                    .map(|v| {
                        v.children_named("entity-view")
                            .filter_map(|e| e.attr("entity").map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
        "addUser" => {
            let user = cmd.child("user");
            Command::AddUser {
                conf_entity: attr_or_empty(cmd.child("conferenceKeys"), "confEntity"),
                user: attr_or_empty(user, "entity"),
                roles: roles_of(user.and_then(|u| u.child("roles"))),
            }
        }
        "deleteUser" => {
            let keys = cmd.child("userKeys");
            Command::DeleteUser {
                conf_entity: attr_or_empty(keys, "confEntity"),
                user: attr_or_empty(keys, "userEntity"),
            }
        }
        "modifyUserRoles" => {
            let keys = cmd.child("userKeys");
            Command::ModifyUserRoles {
                conf_entity: attr_or_empty(keys, "confEntity"),
                user: attr_or_empty(keys, "userEntity"),
                roles: roles_of(cmd.child("user-roles")),
            }
        }
        "modifyConferenceLock" => Command::ModifyConferenceLock {
            conf_entity: attr_or_empty(cmd.child("conferenceKeys"), "confEntity"),
            locked: cmd.text_at("locked") == Some("true"),
        },
        other => Command::Other(other.to_owned()),
    };
    Ok(Request {
        request_id: root.attr("requestId").unwrap_or("0").to_owned(),
        from: root.attr("from").unwrap_or("").to_owned(),
        to: root.attr("to").unwrap_or("").to_owned(),
        command,
    })
}

/// How a request ended (draft-levin-xcon-cccp §5.2 `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Accepted, the result follows as a conference notification (202 to INFO).
    Pending,
    /// Refused; the reason is one of the draft's tokens (`requestMalformed`,
    /// `conferenceDoesNotExist`, `userDoesNotExist`, `notAuthorized`, `otherFailure`...).
    Failure(&'static str),
}

/// The response to `req`: `code`, the request's identifiers mirrored, and `inner` (the
/// command's result) inside the command's element.
pub fn response(req: &Request, outcome: Outcome, inner: &str) -> String {
    let (code, reason) = match outcome {
        Outcome::Success => ("success", None),
        Outcome::Pending => ("pending", None),
        Outcome::Failure(r) => ("failure", Some(r)),
    };
    let reason = reason
        .map(|r| format!(" reason=\"{r}\""))
        .unwrap_or_default();
    let name = req.command.name();
    let body = if inner.is_empty() {
        format!("<{name}/>")
    } else {
        format!("<{name}>{inner}</{name}>")
    };
    format!(
        "<?xml version=\"1.0\"?><response xmlns=\"{CCCP_NS}\" xmlns:mscp=\"{MSCP_NS}\" requestId=\"{}\" C3PVersion=\"1\" from=\"{}\" to=\"{}\" code=\"{code}\"{reason}>{body}</response>",
        escape(&req.request_id),
        escape(&req.to),
        escape(&req.from),
    )
}

/// The result of `getConferencingCapabilities`: the MCU types this server hosts.
pub fn capabilities(mcu_types: &[&str]) -> String {
    let types: String = mcu_types
        .iter()
        .map(|t| format!("<mcuType>{}</mcuType>", escape(t)))
        .collect();
    format!("<mcu-types>{types}</mcu-types>")
}

/// The result of `addConference`: the new conference's focus URI.
pub fn added_conference(focus: &str) -> String {
    format!(
        "<conference-info xmlns=\"{CI_NS}\" entity=\"{}\"/>",
        escape(focus)
    )
}

/// An `ms-conf-invite` (MS-CONFIM §2.2.1): the conference someone is asked to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfInvite {
    pub focus_uri: String,
    pub subject: Option<String>,
}

pub fn parse_conf_invite(body: &[u8]) -> Result<ConfInvite, MsrtcError> {
    let root = parse_root(body, "Conferencing")?;
    let focus_uri = root
        .text_at("focus-uri")
        .ok_or_else(|| MsrtcError::Unexpected("an invitation without a focus-uri".into()))?;
    Ok(ConfInvite {
        focus_uri: focus_uri.to_owned(),
        subject: root.text_at("subject").map(str::to_owned),
    })
}

pub fn conf_invite(focus: &str, subject: &str) -> String {
    format!(
        "<Conferencing version=\"2.0\"><focus-uri>{}</focus-uri><subject>{}</subject><im available=\"true\"><first-im/></im></Conferencing>",
        escape(focus),
        escape(subject)
    )
}

/// One user in a conference document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterUser {
    pub entity: String,
    pub display: String,
    pub roles: Vec<String>,
    /// Connected to the focus (joined the conference).
    pub in_focus: bool,
    /// Connected to the IM MCU (in the chat).
    pub in_chat: bool,
}

/// The conference state, full (RFC 4575 §5 with MS-CONFBAS §2.2.3 extensions): `entity`
/// is the focus URI the watcher subscribed to; `chat_uri` the IM MCU's URI, given as the
/// `conf-uris` entry with purpose `chat` (where clients send their chat INVITE).
pub fn conference_info(
    entity: &str,
    version: u32,
    subject: &str,
    chat_uri: &str,
    organizer: &str,
    users: &[RosterUser],
    locked: bool,
) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><conference-info xmlns=\"{CI_NS}\" xmlns:msci=\"{MSCI_NS}\" entity=\"{}\" state=\"full\" version=\"{version}\">",
        escape(entity)
    );
    x.push_str(&format!(
        "<conference-description><subject>{}</subject><organizer><display-name>{}</display-name></organizer><conf-uris><entry><uri>{}</uri><display-text>chat</display-text><purpose>chat</purpose></entry></conf-uris></conference-description>",
        escape(subject),
        escape(organizer),
        escape(chat_uri)
    ));
    let active = users.iter().filter(|u| u.in_focus || u.in_chat).count();
    x.push_str(&format!(
        "<conference-state><user-count>{active}</user-count><active>true</active><locked>{locked}</locked></conference-state><users>"
    ));
    for u in users {
        let state = if u.in_focus || u.in_chat {
            "full"
        } else {
            "deleted"
        };
        x.push_str(&format!(
            "<user entity=\"{}\" state=\"{state}\"><display-text>{}</display-text><roles>",
            escape(&u.entity),
            escape(&u.display)
        ));
        for r in &u.roles {
            x.push_str(&format!("<entry>{}</entry>", escape(r)));
        }
        x.push_str("</roles>");
        if u.in_focus {
            x.push_str(&format!(
                "<endpoint entity=\"{}\" msci:session-type=\"focus\"><status>connected</status></endpoint>",
                escape(&u.entity)
            ));
        }
        if u.in_chat {
            x.push_str(&format!(
                "<endpoint entity=\"{}\" msci:session-type=\"chat\"><status>connected</status><media id=\"1\"><type>chat</type><status>sendrecv</status></media></endpoint>",
                escape(&u.entity)
            ));
        }
        x.push_str("</user>");
    }
    x.push_str(&format!(
        "</users><msci:conference-view><msci:entity-view entity=\"{}\"><msci:entity-state><msci:locked>{locked}</msci:locked><msci:media><entry><type>chat</type><status>sendrecv</status></entry></msci:media></msci:entity-state></msci:entity-view></msci:conference-view></conference-info>",
        escape(chat_uri)
    ));
    x
}

/// An IM MCU delivery report (MS-CONFIM §2.2.2): message `message_id` did not reach these
/// recipients, each with the SIP status their delivery ended with.
pub fn imdn(message_id: &str, failed: &[(String, u16)]) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\"?><imdn><message-id>{}</message-id>",
        escape(message_id)
    );
    for (uri, status) in failed {
        x.push_str(&format!(
            "<recipient><uri>{}</uri><status>{status}</status></recipient>",
            escape(uri)
        ));
    }
    x.push_str("</imdn>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::parse;

    // The shapes pidgin-sipe writes (sipe-conf.c), in our own words.
    const ADD_CONFERENCE: &str = r#"<?xml version="1.0"?><request xmlns="urn:ietf:params:xml:ns:cccp" xmlns:mscp="http://schemas.microsoft.com/rtc/2005/08/cccpextensions" C3PVersion="1" to="sip:switchboard@example.test;gruu;opaque=app:conf:focusfactory" from="sip:alice@example.test" requestId="77"><addConference><ci:conference-info xmlns:ci="urn:ietf:params:xml:ns:conference-info" entity="" xmlns:msci="http://schemas.microsoft.com/rtc/2005/08/confinfoextensions"><ci:conference-description><ci:subject/><msci:conference-id>AB12</msci:conference-id><msci:expiry-time>2026-12-01T20:00:00Z</msci:expiry-time><msci:admission-policy>openAuthenticated</msci:admission-policy></ci:conference-description><msci:conference-view><msci:entity-view entity="chat"/></msci:conference-view></ci:conference-info></addConference></request>"#;

    #[test]
    fn reads_add_conference() {
        let r = parse_request(ADD_CONFERENCE.as_bytes()).unwrap();
        assert_eq!(r.request_id, "77");
        assert_eq!(r.from, "sip:alice@example.test");
        assert_eq!(
            r.command,
            Command::AddConference {
                conference_id: Some("AB12".into()),
                subject: None,
                entity_views: vec!["chat".into()],
            }
        );
    }

    #[test]
    fn reads_add_user_delete_user_and_roles() {
        let add = r#"<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="sip:bob@x" requestId="3"><addUser><conferenceKeys confEntity="F"/><ci:user xmlns:ci="urn:ietf:params:xml:ns:conference-info" entity="sip:bob@x"><ci:roles><ci:entry>attendee</ci:entry></ci:roles><ci:endpoint entity="{1234}"/></ci:user></addUser></request>"#;
        assert_eq!(
            parse_request(add.as_bytes()).unwrap().command,
            Command::AddUser {
                conf_entity: "F".into(),
                user: "sip:bob@x".into(),
                roles: vec!["attendee".into()]
            }
        );
        let del = r#"<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="a" requestId="4"><deleteUser><userKeys confEntity="F" userEntity="sip:bob@x"/></deleteUser></request>"#;
        assert_eq!(
            parse_request(del.as_bytes()).unwrap().command,
            Command::DeleteUser {
                conf_entity: "F".into(),
                user: "sip:bob@x".into()
            }
        );
        let roles = r#"<request xmlns="urn:ietf:params:xml:ns:cccp" C3PVersion="1" to="F" from="a" requestId="5"><modifyUserRoles><userKeys confEntity="F" userEntity="sip:bob@x"/><user-roles xmlns="urn:ietf:params:xml:ns:conference-info"><entry>presenter</entry></user-roles></modifyUserRoles></request>"#;
        assert_eq!(
            parse_request(roles.as_bytes()).unwrap().command,
            Command::ModifyUserRoles {
                conf_entity: "F".into(),
                user: "sip:bob@x".into(),
                roles: vec!["presenter".into()]
            }
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        assert!(parse_request(b"<response/>").is_err());
        assert!(parse_request(b"<request/>").is_err());
        assert!(parse_request(b"<request").is_err());
    }

    #[test]
    fn response_mirrors_the_request_and_carries_the_result() {
        let r = parse_request(ADD_CONFERENCE.as_bytes()).unwrap();
        let doc = response(
            &r,
            Outcome::Success,
            &added_conference("sip:chat-1@example.test;gruu;opaque=app:conf:focus:id:1"),
        );
        let root = parse(doc.as_bytes()).unwrap();
        assert_eq!(root.attr("code"), Some("success"));
        assert_eq!(root.attr("requestId"), Some("77"));
        assert_eq!(root.attr("to"), Some("sip:alice@example.test"));
        assert_eq!(
            root.path("addConference/conference-info")
                .and_then(|c| c.attr("entity")),
            Some("sip:chat-1@example.test;gruu;opaque=app:conf:focus:id:1")
        );
        let failed = response(&r, Outcome::Failure("notAuthorized"), "");
        let root = parse(failed.as_bytes()).unwrap();
        assert_eq!(root.attr("code"), Some("failure"));
        assert_eq!(root.attr("reason"), Some("notAuthorized"));
    }

    #[test]
    fn capabilities_list_chat() {
        let r = Request {
            request_id: "1".into(),
            from: "a".into(),
            to: "f".into(),
            command: Command::GetConferencingCapabilities,
        };
        let doc = response(&r, Outcome::Success, &capabilities(&["chat"]));
        let root = parse(doc.as_bytes()).unwrap();
        assert_eq!(
            root.text_at("getConferencingCapabilities/mcu-types/mcuType"),
            Some("chat")
        );
    }

    #[test]
    fn invitation_round_trip() {
        let doc = conf_invite(
            "sip:chat-1@d;gruu;opaque=app:conf:focus:id:1",
            "Plans & <ideas>",
        );
        let inv = parse_conf_invite(doc.as_bytes()).unwrap();
        assert_eq!(
            inv.focus_uri,
            "sip:chat-1@d;gruu;opaque=app:conf:focus:id:1"
        );
        assert_eq!(inv.subject.as_deref(), Some("Plans & <ideas>"));
        assert!(parse_conf_invite(b"<Conferencing version=\"2.0\"/>").is_err());
    }

    #[test]
    fn conference_document_names_the_chat_mcu_and_who_is_in_it() {
        let users = vec![
            RosterUser {
                entity: "sip:alice@d".into(),
                display: "Alice".into(),
                roles: vec!["presenter".into()],
                in_focus: true,
                in_chat: true,
            },
            RosterUser {
                entity: "sip:carol@d".into(),
                display: "Carol".into(),
                roles: vec!["attendee".into()],
                in_focus: false,
                in_chat: true,
            },
            RosterUser {
                entity: "sip:bob@d".into(),
                display: "Bob".into(),
                roles: vec!["attendee".into()],
                in_focus: false,
                in_chat: false,
            },
        ];
        let doc = conference_info("F", 3, "", "M", "Alice", &users, false);
        let root = parse(doc.as_bytes()).unwrap();
        assert_eq!(root.attr("entity"), Some("F"));
        let entry = root.path("conference-description/conf-uris/entry").unwrap();
        // Exact text: clients compare it byte for byte.
        assert_eq!(entry.child("purpose").unwrap().text, "chat");
        assert_eq!(entry.child("uri").unwrap().text, "M");
        let users: Vec<&Element> = root
            .child("users")
            .unwrap()
            .children_named("user")
            .collect();
        assert_eq!(users.len(), 3);
        let chat_of = |u: &Element| {
            u.children_named("endpoint").any(|e| {
                e.attr("session-type") == Some("chat") && e.text_at("status") == Some("connected")
            })
        };
        assert!(chat_of(users[0]) && chat_of(users[1]) && !chat_of(users[2]));
        assert_eq!(users[2].attr("state"), Some("deleted"));
        assert_eq!(users[0].text_at("roles/entry"), Some("presenter"));
    }

    #[test]
    fn delivery_report_lists_failed_recipients() {
        let doc = imdn("m-1", &[("sip:bob@d".into(), 480)]);
        let root = parse(doc.as_bytes()).unwrap();
        assert_eq!(root.text_at("message-id"), Some("m-1"));
        assert_eq!(root.text_at("recipient/uri"), Some("sip:bob@d"));
        assert_eq!(root.text_at("recipient/status"), Some("480"));
    }
}
