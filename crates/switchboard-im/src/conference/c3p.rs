//! Lync conferencing (C3P: MS-CONFBAS, MS-CONFIM) over the group chats of
//! `mod.rs`: one conference is one group chat, whichever dialect its members speak.
//!
//! - **Focus factory** `sip:switchboard@<domain>;gruu;opaque=app:conf:focusfactory`
//!   (named in provisioning-v2): SERVICE `getConferencingCapabilities` (we host `chat`)
//!   and `addConference` (a new conference; the answer names its focus).
//! - **Focus** `sip:chat-<id>@<domain>;gruu;opaque=app:conf:focus:id:<id>`: INVITE with
//!   `addUser` joins the conference (the focus dialog); SUBSCRIBE `conference` gives the
//!   conference document naming the IM MCU; INFO carries `deleteUser`, `modifyUserRoles`
//!   and `modifyConferenceLock`; BYE leaves the conference.
//! - **IM MCU** `sip:chat-<id>@<domain>;gruu;opaque=app:conf:chat:id:<id>`: the group
//!   chat itself (`mod.rs`): INVITE `m=message` joins the chat, MESSAGEs fan out
//!   with `Ms-Sender`, failed deliveries come back as `ms-imdn` reports.
//! - Standard clients use the plain `sip:chat-<id>@<domain>` of the same conference: a
//!   Lync user's `ms-conf-invite` to a user with no Lync device adds that user to the chat
//!   in pager mode (`before_invite`), and they see and write the same messages.
//!
//! The organiser is a presenter (leader), everyone else an attendee until a presenter
//! promotes them; only presenters eject others or lock the conference.
//!
//! Methods of [`Conferences`] (`mod.rs`): its state and its lock rule are there.

use std::collections::HashMap;

use bytes::Bytes;
use msrtc::cccp::{self, Command, Outcome, Request, RosterUser};
use sip_message::{HeaderName, Message, Method, NameAddr, Uri};
use switchboard_core::seam::{Flow, ServiceAnswer};

use super::Conferences;
use crate::caps::Place;
use crate::conference::{Conference, MemberDialog};
use crate::refused;

const CCCP: &str = "application/cccp+xml";
/// People in one conference at a time (Lync Server 2013's shared-pool figure).
pub(crate) const MAX_PARTICIPANTS: usize = 250;
const PRESENTER: &str = "presenter";
const ATTENDEE: &str = "attendee";

/// Which part of the conferencing service a request is for, by its Request-URI's
/// `opaque` parameter (MS-CONFBAS §3.1.4.1 conference URIs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    FocusFactory,
    Focus,
    /// The IM MCU, or the plain conference address standard clients use.
    Chat,
}

pub(crate) fn part_of(msg: &Message) -> Part {
    let opaque = msg
        .request_uri()
        .and_then(Uri::as_sip)
        .and_then(|u| u.params.value("opaque").map(str::to_owned));
    match opaque.as_deref() {
        Some("app:conf:focusfactory") => Part::FocusFactory,
        Some(o) if o.starts_with("app:conf:focus:") => Part::Focus,
        _ => Part::Chat,
    }
}

/// The focus factory of `domain`, for provisioning.
pub fn focus_factory_uri(domain: &str) -> String {
    format!(
        "sip:{}@{domain};gruu;opaque=app:conf:focusfactory",
        crate::conference::SERVICE_USER
    )
}

fn conference_id(conf_aor: &str) -> &str {
    conf_aor
        .strip_prefix("sip:")
        .and_then(|a| a.split('@').next())
        .and_then(|u| u.strip_prefix(crate::conference::CONF_PREFIX))
        .unwrap_or("")
}

pub(crate) fn focus_uri(conf_aor: &str) -> String {
    format!(
        "{conf_aor};gruu;opaque=app:conf:focus:id:{}",
        conference_id(conf_aor)
    )
}

pub(crate) fn chat_uri(conf_aor: &str) -> String {
    format!(
        "{conf_aor};gruu;opaque=app:conf:chat:id:{}",
        conference_id(conf_aor)
    )
}

/// The conference AoR a focus or MCU URI belongs to (`sip:chat-<id>@<domain>`).
pub fn conference_of(uri: &str) -> Option<String> {
    match Uri::parse(uri).ok()? {
        Uri::Sip(u) => Some(u.aor()),
        _ => None,
    }
}

/// The C3P side of a conference: who joined the focus, roles, lock.
#[derive(Default)]
pub(crate) struct Focus {
    pub(crate) subject: String,
    /// Users joined to the focus, with the focus dialog the service holds with each of
    /// their endpoints (never an empty list).
    pub(crate) joined: HashMap<String, Vec<MemberDialog>>,
    pub(crate) roles: HashMap<String, &'static str>,
    pub(crate) locked: bool,
    /// Everyone who has been in the conference, in order: a user who left is listed as
    /// `deleted` so clients take them off their roster.
    pub(crate) seen: Vec<String>,
    /// Messages held for users the service invited in (`bring_in`) who have not joined
    /// the chat yet: replayed in their session when they join, or sent to them as pager
    /// messages if they do not.
    pub(crate) waiting: HashMap<String, Vec<Held>>,
}

/// A group message as members receive it (held for a user on their way into the chat).
#[derive(Clone)]
pub(crate) struct Held {
    pub(crate) content_type: String,
    pub(crate) body: Bytes,
    /// The text with its author's name in front, for clients that show only From.
    pub(crate) text: String,
    pub(crate) author: String,
}

/// How long a Lync client that accepted an invitation has to join the chat before what
/// was held for it goes to it as pager messages.
const JOIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl Focus {
    pub(crate) fn saw(&mut self, who: &str) {
        if !self.seen.iter().any(|s| s == who) {
            self.seen.push(who.to_owned());
        }
    }
}

fn same_user(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("sip:").to_ascii_lowercase();
    strip(a) == strip(b)
}

fn cccp_answer(status: u16, doc: String) -> ServiceAnswer {
    let mut a = ServiceAnswer::status(status);
    a.body = Some((CCCP.into(), Bytes::from(doc.into_bytes())));
    a
}

fn read_request(msg: &Message) -> Result<Request, ServiceAnswer> {
    let ct = msg
        .headers
        .get(&HeaderName::ContentType)
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with(CCCP) {
        let mut a = refused(415, "conference control takes application/cccp+xml");
        a.headers.push(("Accept".into(), CCCP.into()));
        return Err(a);
    }
    cccp::parse_request(&msg.body).map_err(|e| refused(400, &e.to_string()))
}

impl Conferences {
    /// Whether `who` is a presenter of `conf`.
    fn is_presenter(conf: &Conference, who: &str) -> bool {
        conf.focus.roles.get(who).copied() == Some(PRESENTER)
    }

    /// SERVICE to the focus factory (MS-CONFBAS §3.2.5).
    pub(crate) fn focus_factory(&self, msg: &Message, from: &str) -> ServiceAnswer {
        if msg.method() != Some(&Method::Service) {
            return ServiceAnswer::status(405);
        }
        let req = match read_request(msg) {
            Ok(r) => r,
            Err(a) => return a,
        };
        match &req.command {
            Command::GetConferencingCapabilities => cccp_answer(
                200,
                cccp::response(&req, Outcome::Success, &cccp::capabilities(&["chat"])),
            ),
            Command::AddConference { subject, .. } => {
                // Audio/video views asked for alongside chat are not hosted; the
                // conference is created with its chat (clients then use what exists).
                // Refused (403) past the organiser's cap on open group chats.
                let aor = match self.new_conference(from, None, &[], subject.clone()) {
                    Ok(aor) => aor,
                    Err(refusal) => return refusal,
                };
                tracing::info!(conference = %aor, organiser = from, "conference created by C3P");
                cccp_answer(
                    200,
                    cccp::response(
                        &req,
                        Outcome::Success,
                        &cccp::added_conference(&focus_uri(&aor)),
                    ),
                )
            }
            _ => cccp_answer(
                200,
                cccp::response(&req, Outcome::Failure("otherFailure"), ""),
            ),
        }
    }

    /// A request to a conference's focus (MS-CONFBAS §3.3.5).
    pub(super) fn to_focus<'p>(
        &self,
        msg: &Message,
        from: &str,
        conf_aor: &str,
        flow: Flow,
        place: impl FnOnce() -> Result<Place<'p>, ServiceAnswer>,
    ) -> ServiceAnswer {
        let in_dialog = msg
            .to_header()
            .ok()
            .and_then(|t| t.tag().map(str::to_owned))
            .is_some();
        match msg.method() {
            Some(Method::Invite) if !in_dialog => self.focus_join(msg, from, conf_aor, flow, place),
            Some(Method::Subscribe) => self.subscribe(msg, from, conf_aor, flow),
            Some(Method::Info) => self.focus_info(msg, from, conf_aor),
            Some(Method::Bye) => self.focus_bye(msg, from, conf_aor),
            // A re-INVITE refreshing the focus dialog: nothing changes.
            Some(Method::Invite) => ServiceAnswer::status(200),
            Some(Method::Options) => ServiceAnswer::status(200),
            _ => ServiceAnswer::status(405),
        }
    }

    /// INVITE `addUser`: `from` joins the conference; the focus dialog is created.
    fn focus_join<'p>(
        &self,
        msg: &Message,
        from: &str,
        conf_aor: &str,
        flow: Flow,
        place: impl FnOnce() -> Result<Place<'p>, ServiceAnswer>,
    ) -> ServiceAnswer {
        let req = match read_request(msg) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let Command::AddUser { user, .. } = &req.command else {
            return refused(400, "an INVITE to a focus carries addUser");
        };
        if !user.is_empty() && !same_user(user, from) {
            return refused(403, "users join conferences themselves");
        }
        let Some(dialog) = MemberDialog::from_invite(msg, flow) else {
            return ServiceAnswer::status(400);
        };
        // A focus dialog is a session the service holds for the user: taken before the
        // lock below (see `Place`), held until the dialog is kept.
        let _place = match place() {
            Ok(p) => p,
            Err(refusal) => return refusal,
        };
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(conf_aor) else {
            return refused(404, "no such conference");
        };
        if conf.focus.locked && !Self::is_presenter(conf, from) {
            return refused(403, "the conference is locked");
        }
        if !conf.has_room_for(from) {
            return refused(403, "the conference is full");
        }
        let our_tag = dialog.our_tag.clone();
        conf.focus
            .joined
            .entry(from.to_owned())
            .or_default()
            .push(dialog);
        conf.focus.saw(from);
        let role = if from == conf.organiser {
            PRESENTER
        } else {
            ATTENDEE
        };
        conf.focus.roles.entry(from.to_owned()).or_insert(role);
        conf.conv.last_activity = tokio::time::Instant::now();
        self.notify_roster(conf_aor, conf);
        let inner = format!(
            "<conferenceKeys confEntity=\"{}\"/><user xmlns=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{}\"><roles><entry>{}</entry></roles></user>",
            msrtc::escape(&focus_uri(conf_aor)),
            msrtc::escape(from),
            conf.focus.roles.get(from).copied().unwrap_or(ATTENDEE)
        );
        let mut a = cccp_answer(200, cccp::response(&req, Outcome::Success, &inner));
        a.to_tag = Some(our_tag);
        a.headers
            .push(("Contact".into(), format!("<{}>", focus_uri(conf_aor))));
        a
    }

    /// INFO with a C3P command in the focus dialog.
    fn focus_info(&self, msg: &Message, from: &str, conf_aor: &str) -> ServiceAnswer {
        let req = match read_request(msg) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(conf_aor) else {
            return ServiceAnswer::status(481);
        };
        if !conf.focus.joined.contains_key(from) {
            return ServiceAnswer::status(481);
        }
        let presenter = Self::is_presenter(conf, from);
        let outcome = match &req.command {
            Command::DeleteUser { user, .. } => {
                let target = conf.focus.seen.iter().find(|s| same_user(s, user)).cloned();
                match target {
                    None => Outcome::Failure("userDoesNotExist"),
                    Some(t) if t != from && !presenter => Outcome::Failure("notAuthorized"),
                    Some(t) => {
                        self.eject(conf_aor, conf, &t);
                        Outcome::Success
                    }
                }
            }
            Command::ModifyUserRoles { user, roles, .. } => {
                let target = conf.focus.seen.iter().find(|s| same_user(s, user)).cloned();
                match target {
                    None => Outcome::Failure("userDoesNotExist"),
                    Some(_) if !presenter => Outcome::Failure("notAuthorized"),
                    Some(t) => {
                        let role = if roles.iter().any(|r| r == PRESENTER) {
                            PRESENTER
                        } else {
                            ATTENDEE
                        };
                        conf.focus.roles.insert(t, role);
                        self.notify_roster(conf_aor, conf);
                        Outcome::Success
                    }
                }
            }
            Command::ModifyConferenceLock { locked, .. } => {
                if presenter {
                    conf.focus.locked = *locked;
                    self.notify_roster(conf_aor, conf);
                    Outcome::Success
                } else {
                    Outcome::Failure("notAuthorized")
                }
            }
            _ => Outcome::Failure("otherFailure"),
        };
        conf.conv.last_activity = tokio::time::Instant::now();
        cccp_answer(200, cccp::response(&req, outcome, ""))
    }

    /// Takes `who` out of the conference: their chat and focus dialogs are ended by BYE
    /// (MS-CONFIM §3.2.5.4) and the roster shows them gone.
    fn eject(&self, conf_aor: &str, conf: &mut Conference, who: &str) {
        for d in conf.focus.joined.remove(who).unwrap_or_default() {
            self.send_bye(d);
        }
        for d in conf.dialogs.remove(who).unwrap_or_default() {
            self.send_bye(d);
        }
        if conf.members().iter().any(|m| m == who) {
            self.leave(conf_aor, conf, who);
        } else {
            self.notify_roster(conf_aor, conf);
        }
        tracing::info!(conference = conf_aor, who, "ejected from the conference");
    }

    /// The conference is ending: every focus and chat dialog members hold with it is
    /// ended by BYE, so their clients close the conversation.
    pub(crate) fn end_sessions(&self, conf: &mut Conference) {
        for d in conf.focus.joined.drain().flat_map(|(_, ds)| ds) {
            self.send_bye(d);
        }
        for d in conf.dialogs.drain().flat_map(|(_, ds)| ds) {
            self.send_bye(d);
        }
    }

    pub(crate) fn send_bye(&self, mut d: MemberDialog) {
        let deliverer = self.deliverer.clone();
        d.cseq += 1;
        let bye = d.request(Method::Bye);
        let flow = d.flow;
        tokio::spawn(async move {
            deliverer.send_request_on(bye, flow).await;
        });
    }

    /// BYE in a focus dialog: that endpoint leaves the conference, its chat session with
    /// it; the user leaves when no endpoint of theirs is left in it.
    fn focus_bye(&self, msg: &Message, from: &str, conf_aor: &str) -> ServiceAnswer {
        let call_id = msg.call_id().unwrap_or("");
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(conf_aor) else {
            return ServiceAnswer::status(481);
        };
        let Some(ds) = conf.focus.joined.get_mut(from) else {
            return ServiceAnswer::status(481);
        };
        let Some(i) = ds.iter().position(|d| d.call_id == call_id) else {
            return ServiceAnswer::status(481);
        };
        let endpoint = ds.remove(i).target;
        if ds.is_empty() {
            conf.focus.joined.remove(from);
        }
        let in_focus = conf.focus.joined.contains_key(from);
        // The same endpoint's chat session (same Contact) ends with it.
        let in_chat = {
            let left = conf.dialogs.get_mut(from).map(|ds| {
                ds.retain(|d| d.target != endpoint);
                ds.len()
            });
            if left == Some(0) {
                conf.dialogs.remove(from);
            }
            left.unwrap_or(0) > 0
        };
        if in_focus || in_chat {
            self.notify_roster(conf_aor, conf);
            return ServiceAnswer::status(200);
        }
        drop(confs);
        self.leave_conference(conf_aor, from);
        ServiceAnswer::status(200)
    }

    /// The conference document for a Lync watcher (MS-CONFBAS §2.2.3): everyone who has
    /// been in it, with whether they are joined to the focus and to the chat.
    pub(crate) fn lync_roster(&self, conf_aor: &str, conf: &Conference, version: u32) -> String {
        let members = conf.members();
        let mut everyone = conf.focus.seen.clone();
        for m in &members {
            if !everyone.contains(m) {
                everyone.push(m.clone());
            }
        }
        let users: Vec<RosterUser> = everyone
            .iter()
            .map(|u| RosterUser {
                entity: u.clone(),
                display: self.display_name(u),
                roles: vec![conf
                    .focus
                    .roles
                    .get(u)
                    .copied()
                    .unwrap_or(ATTENDEE)
                    .to_owned()],
                in_focus: conf.focus.joined.contains_key(u),
                in_chat: members.contains(u),
            })
            .collect();
        cccp::conference_info(
            &focus_uri(conf_aor),
            version,
            &conf.focus.subject,
            &chat_uri(conf_aor),
            &self.display_name(&conf.organiser),
            &users,
            conf.focus.locked,
        )
    }

    /// An `ms-conf-invite` INVITE from `from` to `to` (MS-CONFIM §3.2.5.1). A user with a
    /// Lync device gets it and joins by themselves (`None`: relay it). A user with only
    /// standard devices is put in the chat by the service, in pager mode, and the INVITE
    /// is answered for them. `escalated_from` is the open session-mode session between
    /// the two, which the conference then grew out of.
    pub(crate) fn conference_invitation(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        session_im: bool,
        escalated_from: Option<String>,
    ) -> Option<ServiceAnswer> {
        let inv = match cccp::parse_conf_invite(&msg.body) {
            Ok(i) => i,
            Err(e) => return Some(refused(400, &e.to_string())),
        };
        let Some(conf_aor) = conference_of(&inv.focus_uri) else {
            return Some(refused(404, "no such conference"));
        };
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(&conf_aor) else {
            return Some(refused(404, "no such conference"));
        };
        let inviter_in =
            conf.focus.joined.contains_key(from) || conf.members().iter().any(|m| m == from);
        if !inviter_in {
            return Some(refused(403, "only participants invite others"));
        }
        if conf.focus.locked && !Self::is_presenter(conf, from) {
            return Some(refused(403, "the conference is locked"));
        }
        if !conf.has_room_for(to) {
            return Some(refused(403, "the conference is full"));
        }
        // Escalation (two-party to conference): the conference's CDR names the session
        // it grew out of.
        if let (Some(id), None) = (escalated_from, conf.escalated_from.as_ref()) {
            self.cdr.write(crate::cdr::CdrWrite::Escalated {
                id: conf.conv.id.clone(),
                from: id.clone(),
            });
            conf.escalated_from = Some(id);
        }
        if session_im {
            return None;
        }
        conf.focus.saw(to);
        self.join(&conf_aor, conf, to);
        let names: Vec<String> = conf
            .members()
            .iter()
            .map(|m| self.display_name(m))
            .collect();
        self.say(
            &conf_aor,
            conf,
            to,
            format!(
                "*** {} added you to a group chat with {}. Reply here to talk to everyone; /help for commands.",
                self.display_name(from),
                names.join(", ")
            ),
            None,
        );
        let mut a = ServiceAnswer::status(200);
        a.to_tag = Some(format!("{:016x}", rand::random::<u64>()));
        a.headers.push(("Contact".into(), format!("<{conf_aor}>")));
        Some(a)
    }

    /// Brings `who` into a conference the service put them in: a Lync client gets an
    /// `ms-conf-invite` and joins by itself; failing that (no Lync device, or it
    /// declined), `notice` goes to them as a pager MESSAGE from the conference. Messages
    /// written meanwhile are held for them (`Focus::waiting`), so none is lost.
    pub(crate) fn bring_in(
        &self,
        conf_aor: &str,
        conf: &mut Conference,
        who: &str,
        notice: String,
    ) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let deliverer = self.deliverer.clone();
        conf.focus.waiting.entry(who.to_owned()).or_default();
        let subject = if conf.focus.subject.is_empty() {
            "Group chat"
        } else {
            conf.focus.subject.as_str()
        };
        let focus = focus_uri(conf_aor);
        let body = Bytes::from(cccp::conf_invite(&focus, subject).into_bytes());
        let (conf, who) = (conf_aor.to_owned(), who.to_owned());
        tokio::spawn(async move {
            let status = deliverer
                .invite_to_conference(conf.clone(), who.clone(), focus, body)
                .await;
            if (200..300).contains(&status) {
                tokio::time::sleep(JOIN_GRACE).await;
                me.release(&conf, &who, None).await;
            } else {
                me.release(&conf, &who, Some(notice)).await;
            }
        });
    }

    /// `who` will not join the chat in a session (or has not in time): the notice and the
    /// messages held for them go to them in pager mode, in order.
    async fn release(&self, conf_aor: &str, who: &str, notice: Option<String>) {
        let held = match self.conferences.lock().get_mut(conf_aor) {
            Some(c) => c.focus.waiting.remove(who),
            None => None,
        };
        let Some(held) = held else {
            // Joined meanwhile: they had it all in their session.
            return;
        };
        let mut queue: Vec<(String, Option<String>)> = Vec::new();
        if let Some(n) = notice {
            queue.push((n, None));
        }
        queue.extend(held.into_iter().map(|h| (h.text, Some(h.author))));
        for (text, author) in queue {
            self.say_now(conf_aor, who, text, author.as_deref()).await;
        }
    }

    /// Replays what was held for `who` in the chat session (`call_id`) they just opened.
    pub(crate) fn replay_held(&self, conf: &mut Conference, who: &str, call_id: &str) {
        let Some(held) = conf.focus.waiting.remove(who) else {
            return;
        };
        let deliverer = self.deliverer.clone();
        let (requests, flow): (Vec<Message>, Flow) = {
            let Some(d) = conf
                .dialogs
                .get_mut(who)
                .and_then(|ds| ds.iter_mut().find(|d| d.call_id == call_id))
            else {
                return;
            };
            (held.iter().map(|h| d.group_message(h)).collect(), d.flow)
        };
        tokio::spawn(async move {
            for r in requests {
                deliverer.send_request_on(r, flow).await;
            }
        });
    }
}

impl MemberDialog {
    /// The dialog a dialog-creating INVITE from a member sets up with the service (which
    /// is its UAS): their tag and Contact, our new tag, the URI they addressed.
    pub(crate) fn from_invite(msg: &Message, flow: Flow) -> Option<MemberDialog> {
        let call_id = msg.call_id()?;
        let from = msg.from_header().ok()?;
        let to = msg.to_header().ok()?;
        let target = msg
            .headers
            .get(&HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| c.uri.to_string())?;
        let ms_sender = msg
            .headers
            .values(&HeaderName::Supported)
            .any(|o| o.eq_ignore_ascii_case("ms-sender"));
        Some(MemberDialog {
            call_id: call_id.to_owned(),
            our_tag: format!("{:016x}", rand::random::<u64>()),
            their_tag: from.tag().unwrap_or("").to_owned(),
            their_uri: from.uri.to_string(),
            local_uri: to.uri.to_string(),
            target,
            flow,
            cseq: 0,
            ms_sender,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conference_uris_name_their_part() {
        let aor = "sip:chat-1a2b@example.test";
        assert_eq!(
            focus_uri(aor),
            "sip:chat-1a2b@example.test;gruu;opaque=app:conf:focus:id:1a2b"
        );
        assert_eq!(conference_of(&focus_uri(aor)).as_deref(), Some(aor));
        assert_eq!(conference_of(&chat_uri(aor)).as_deref(), Some(aor));
        let req = |uri: &str| {
            let mut m = Message::request(Method::Service, Uri::parse(uri).unwrap());
            m.headers.push(HeaderName::CallId, "x");
            m
        };
        assert_eq!(part_of(&req(&focus_uri(aor))), Part::Focus);
        assert_eq!(part_of(&req(&chat_uri(aor))), Part::Chat);
        assert_eq!(part_of(&req(aor)), Part::Chat);
        assert_eq!(
            part_of(&req(&focus_factory_uri("example.test"))),
            Part::FocusFactory
        );
    }

    #[test]
    fn users_compare_without_scheme_or_case() {
        assert!(same_user("sip:Alice@Example.test", "alice@example.test"));
        assert!(!same_user("sip:alice@example.test", "sip:bob@example.test"));
    }
}
