//! Pager-mode conferences: group chats hosted by the IM service, each with its own SIP
//! URI (`sip:chat-<id>@domain`), and the chat commands that create and steer them.
//!
//! - `/invite ADDRESS` typed in a two-party chat escalates it: a conference is created
//!   with both original participants and the invitee already in it (nobody has to join
//!   by hand); its CDR names the organiser and links the two-party session it came from.
//!   Typed in a conference, it adds the invitee.
//! - `/who` lists the participants; `/leave` leaves a conference; `/help` explains.
//! - A MESSAGE to the conference URI goes to every other participant, from the
//!   conference URI (so replies come back to it), with the author named in an
//!   `Ms-Sender` header and, for clients that show only From, in front of the text.
//!   Someone who writes to a conference they are not in joins it.
//! - Join and leave notices go to everyone; the conference ends when the last
//!   participant leaves or after the pager idle time.
//!
//! - Session mode: an INVITE to the conference URI with an `m=message` offer joins it; the
//!   service is the UAS of that dialog, sends the member the group's messages inside it, and
//!   BYE leaves. Clients may SUBSCRIBE to the roster (RFC 4575, `roster.rs`).
//!
//! Replies to commands come from `sip:switchboard@<domain>` (a service identity) or from
//! the conference. A participant with no device signed in gets them as offline messages.
//!
//! Owns, in [`Conferences`]: the conferences by AoR (each with its CDR conversation,
//! roster watchers, Lync focus state and the members' chat dialogs with it), and the
//! places under `max_group_chats_per_user`. `c3p.rs` and `roster.rs` are more of its methods.
//! It holds the CDR log, the names, the offline store and the deliverer as shared
//! handles; what it needs of other parts (the pair's pager conversation, a two-party
//! session, a place under the sessions cap) comes in as arguments.
//!
//! Lock rule: one lock (`conferences`), taken at the entry points only; the helpers
//! that work on a conference are handed it (`&mut Conference`) and never lock. It is not
//! held across an await, a data call or a network send: messages, NOTIFYs and BYEs are
//! built under it and sent from spawned tasks, and undelivered ones are kept by
//! `Offline` in those tasks. Under it the part calls only the in-memory `Names` cache
//! and the CDR queue. The group-chat places (`caps.rs`) are taken before it.

pub(crate) mod c3p;
pub(crate) mod roster;

use std::collections::HashMap;

use bytes::Bytes;
use sip_message::{HeaderName, Message};
use switchboard_core::seam::{Delivery, Flow, ServiceAnswer};

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use switchboard_core::seam::Deliverer;

use crate::caps::{Place, Places};
use crate::cdr::CdrLog;
use crate::directory::Names;
use crate::offline::Offline;
use crate::{count, now_ms, Conversation, ImConfig, Participant, Rows};

/// The user part of the service identity that answers commands.
pub(crate) const SERVICE_USER: &str = "switchboard";
pub(crate) const CONF_PREFIX: &str = "chat-";

/// A dialog a member set up with the conference (the service is its UAS): their chat
/// session, or for Lync members also their focus dialog.
pub(crate) struct MemberDialog {
    pub(crate) call_id: String,
    pub(crate) our_tag: String,
    pub(crate) their_tag: String,
    /// The member's From URI (our To in requests we send).
    pub(crate) their_uri: String,
    /// The URI they addressed (our From in requests we send): the conference, its MCU
    /// or its focus.
    pub(crate) local_uri: String,
    /// The member's Contact: the Request-URI of our in-dialog requests.
    pub(crate) target: String,
    /// Where the member's INVITE came from: our in-dialog requests go back over it
    /// (when the Contact is not one of their registered devices), never to an address
    /// the Contact merely names.
    pub(crate) flow: Flow,
    pub(crate) cseq: u32,
    /// The member's client names a message's author from `Ms-Sender` (MS-CONFIM
    /// §2.2.3): it gets the author's text as written, and no notices (its roster shows
    /// who comes and goes).
    pub(crate) ms_sender: bool,
}

impl MemberDialog {
    /// A request of ours in this dialog; the caller has advanced `cseq`.
    pub(crate) fn request(&self, method: sip_message::Method) -> Message {
        let uri = sip_message::Uri::parse(&self.target)
            .unwrap_or_else(|_| sip_message::Uri::Other(self.target.clone()));
        let name = method.to_string();
        let mut m = Message::request(method, uri);
        m.headers.push(HeaderName::MaxForwards, "70");
        m.headers.push(
            HeaderName::From,
            format!("\"Group chat\" <{}>;tag={}", self.local_uri, self.our_tag),
        );
        m.headers.push(
            HeaderName::To,
            format!("<{}>;tag={}", self.their_uri, self.their_tag),
        );
        m.headers.push(HeaderName::CallId, self.call_id.clone());
        // Our own CSeq space in this dialog (RFC 3261 §12.2.1.1).
        m.headers
            .push(HeaderName::CSeq, format!("{} {name}", self.cseq));
        m
    }

    /// Our next MESSAGE carrying group message `h`: as written for a Lync client (which
    /// names the author from `Ms-Sender`), headed by the author's name for others.
    pub(crate) fn group_message(&mut self, h: &crate::conference::c3p::Held) -> Message {
        self.cseq += 1;
        if self.ms_sender {
            self.message(&h.content_type, h.body.clone(), Some(&h.author))
        } else {
            self.message(
                "text/plain;charset=UTF-8",
                Bytes::from(h.text.clone().into_bytes()),
                Some(&h.author),
            )
        }
    }

    pub(crate) fn message(&self, content_type: &str, body: Bytes, author: Option<&str>) -> Message {
        let mut m = self.request(sip_message::Method::Message);
        if let Some(a) = author {
            m.headers
                .push(HeaderName::from_wire("Ms-Sender"), format!("<{a}>"));
        }
        m.headers.push(HeaderName::ContentType, content_type);
        m.body = body;
        m
    }
}

pub(crate) struct Conference {
    pub(crate) conv: Conversation,
    /// Subscriptions to the roster (RFC 4575).
    pub(crate) watchers: Vec<crate::conference::roster::Watcher>,
    pub(crate) organiser: String,
    /// The two-party session this conference grew out of, once known.
    pub(crate) escalated_from: Option<String>,
    /// The Lync (C3P) side: focus members, roles, lock.
    pub(crate) focus: crate::conference::c3p::Focus,
    /// Members' session-mode dialogs with it, by member AoR: one per endpoint the
    /// member is in the chat from (never an empty list).
    pub(crate) dialogs: HashMap<String, Vec<MemberDialog>>,
}

impl Conference {
    /// Whether `who` is in the chat with a Lync client (which learns of comings and
    /// goings from its roster, not from notices).
    pub(crate) fn in_lync_session(&self, who: &str) -> bool {
        self.dialogs
            .get(who)
            .is_some_and(|ds| ds.iter().any(|d| d.ms_sender))
    }

    /// Whether `who` is in, or may come in without the conference going over
    /// [`crate::conference::c3p::MAX_PARTICIPANTS`].
    pub(crate) fn has_room_for(&self, who: &str) -> bool {
        let active = self
            .conv
            .participants
            .values()
            .filter(|p| p.left_at_ms.is_none())
            .count();
        let inside = self
            .conv
            .participants
            .get(who)
            .is_some_and(|p| p.left_at_ms.is_none())
            || self.focus.joined.contains_key(who);
        inside || active.max(self.focus.joined.len()) < crate::conference::c3p::MAX_PARTICIPANTS
    }

    pub(crate) fn members(&self) -> Vec<String> {
        let mut m: Vec<(&String, &Participant)> = self
            .conv
            .participants
            .iter()
            .filter(|(_, p)| p.left_at_ms.is_none())
            .collect();
        m.sort_by_key(|(a, p)| (p.joined_at_ms, (*a).clone()));
        m.into_iter().map(|(a, _)| a.clone()).collect()
    }
}

/// The group chats (see the module header): conferences by AoR, with the members'
/// dialogs in each, and the places being taken under `max_group_chats_per_user`. What it needs of
/// the rest of the service it holds as shared handles (the CDR log, names, the offline
/// store, the deliverer), never the service itself.
pub(crate) struct Conferences {
    /// Conferences by their AoR.
    conferences: Mutex<HashMap<String, Conference>>,
    /// Places being taken under `max_group_chats_per_user`.
    chat_places: Places,
    config: ImConfig,
    cdr: Arc<CdrLog>,
    names: Arc<Names>,
    offline: Arc<Offline>,
    /// Where the requests the conferences originate leave.
    deliverer: Arc<dyn Deliverer>,
    /// Itself, for the tasks it spawns from `&self` (held messages, delivery reports).
    me: Weak<Conferences>,
}

impl Conferences {
    pub(crate) fn new(
        config: ImConfig,
        cdr: Arc<CdrLog>,
        names: Arc<Names>,
        offline: Arc<Offline>,
        deliverer: Arc<dyn Deliverer>,
    ) -> Arc<Conferences> {
        Arc::new_cyclic(|me| Conferences {
            conferences: Mutex::new(HashMap::new()),
            chat_places: Places::default(),
            config,
            cdr,
            names,
            offline,
            deliverer,
            me: me.clone(),
        })
    }
}

/// A chat command in a text MESSAGE, if that is what it is.
pub fn command_of(msg: &Message) -> Option<String> {
    let ct = msg
        .headers
        .get(&HeaderName::ContentType)
        .unwrap_or("text/plain");
    if !ct.to_ascii_lowercase().starts_with("text/plain") {
        return None;
    }
    let text = std::str::from_utf8(&msg.body).ok()?.trim();
    let word = text.split_whitespace().next()?;
    matches!(word, "/invite" | "/who" | "/leave" | "/help").then(|| text.to_owned())
}

/// Does this AoR name a resource of the IM service?
pub(crate) fn is_service_aor(aor: &str) -> bool {
    aor.strip_prefix("sip:")
        .and_then(|a| a.split_once('@'))
        .is_some_and(|(user, _)| user == SERVICE_USER || user.starts_with(CONF_PREFIX))
}

/// The pool front end a conference address names (`sip:chat-f<fe>-<id>@domain`).
pub(crate) fn home_of(aor: &str) -> Option<u32> {
    let user = aor.strip_prefix("sip:")?.split('@').next()?;
    let rest = user.strip_prefix(CONF_PREFIX)?.strip_prefix('f')?;
    rest.split_once('-')?.0.parse().ok()
}

/// For an invitation into a conference (`application/ms-conf-invite+xml`, MS-CONFIM
/// §2.2.1), the front end hosting the conference its focus names.
pub(crate) fn invitation_home(msg: &sip_message::Message) -> Option<u32> {
    let invitation = msg
        .headers
        .get(&sip_message::HeaderName::ContentType)?
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/ms-conf-invite+xml");
    if !invitation {
        return None;
    }
    let focus = msrtc::cccp::parse_conf_invite(&msg.body).ok()?.focus_uri;
    home_of(&c3p::conference_of(&focus)?)
}

fn domain_of(aor: &str) -> &str {
    aor.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost")
}

const HELP: &str = "Commands: /invite ADDRESS adds someone (in a two-person chat it starts a group chat with all three of you); /who lists who is here; /leave leaves a group chat; /help shows this.";

/// A pager MESSAGE from a conference (or the service) to one of its members.
fn group_delivery(
    from: &str,
    display: Option<&str>,
    to: &str,
    text: String,
    author: Option<&str>,
) -> Delivery {
    Delivery {
        from: from.to_owned(),
        to: to.to_owned(),
        content_type: "text/plain;charset=UTF-8".into(),
        body: Bytes::from(text.into_bytes()),
        sent_at_ms: now_ms(),
        from_display: display.map(str::to_owned),
        extra_headers: author
            .map(|a| vec![("Ms-Sender".to_owned(), format!("<{a}>"))])
            .unwrap_or_default(),
    }
}

impl Conferences {
    /// `aor`'s display name as last read from the directory, or its user part.
    pub(crate) fn display_name(&self, aor: &str) -> String {
        self.names.display(aor)
    }

    /// Sends `text` from the conference `conf_aor` to `to`: inside `to`'s chat sessions
    /// with it (each endpoint) when they joined by INVITE, else as a pager MESSAGE, or
    /// kept for them.
    pub(crate) fn say(
        &self,
        conf_aor: &str,
        conf: &mut Conference,
        to: &str,
        text: String,
        author: Option<&str>,
    ) {
        let Some(ds) = conf.dialogs.get_mut(to) else {
            self.deliver_later(conf_aor, Some("Group chat"), to, text, author);
            return;
        };
        for d in ds.iter_mut() {
            d.cseq += 1;
            // A Lync client needs an author for every message: the conference itself.
            let author = author.or(d.ms_sender.then_some(conf_aor));
            let m = d.message(
                "text/plain;charset=UTF-8",
                Bytes::from(text.clone().into_bytes()),
                author,
            );
            let deliverer = self.deliverer.clone();
            let flow = d.flow;
            tokio::spawn(async move {
                let status = deliverer.send_request_on(m, flow).await;
                if status >= 300 {
                    tracing::debug!(status, "in-session conference message not accepted");
                }
            });
        }
    }

    /// Sends `text` to `to` from `from` (a conference or the service) as a pager MESSAGE,
    /// from a task, or keeps it for them.
    fn deliver_later(
        &self,
        from: &str,
        display: Option<&str>,
        to: &str,
        text: String,
        author: Option<&str>,
    ) {
        let d = group_delivery(from, display, to, text, author);
        let offline = self.offline.clone();
        tokio::spawn(async move { offline.deliver_or_keep(d, None).await });
    }

    /// Sends `text` from the conference to `who` as a pager MESSAGE now (in order with
    /// others awaited the same way), or keeps it for them.
    pub(crate) async fn say_now(&self, conf: &str, who: &str, text: String, author: Option<&str>) {
        self.offline
            .deliver_or_keep(
                group_delivery(conf, Some("Group chat"), who, text, author),
                None,
            )
            .await;
    }

    fn reply(&self, to: &str, text: String) {
        let service = format!("sip:{SERVICE_USER}@{}", domain_of(to));
        self.deliver_later(&service, Some("Switchboard"), to, text, None);
    }

    /// A command typed in the two-party chat between `from` and `to`; `invited` is what
    /// the directory said of an `/invite` target. Returns the answer refusing it, if it
    /// is refused (a group chat over the organiser's cap). `pair_session` is the pair's
    /// open conversation, which a group chat started by `/invite` grows out of.
    pub(crate) fn pair_command(
        &self,
        from: &str,
        to: &str,
        command: String,
        invited: Option<Result<String, String>>,
        pair_session: Option<String>,
    ) -> Option<ServiceAnswer> {
        let mut words = command.split_whitespace();
        match (words.next(), words.next(), invited) {
            (Some("/invite"), Some(target), Some(invited)) => match invited {
                Ok(third) if third == from || third == to => self.reply(
                    from,
                    format!("{} is already in this chat.", self.display_name(&third)),
                ),
                Ok(third) => {
                    if let Err(refusal) =
                        self.open_conference(from, pair_session, &[from, to, &third])
                    {
                        return Some(refusal);
                    }
                }
                Err(e) => self.reply(from, format!("Cannot invite {target}: {e}.")),
            },
            (Some("/invite"), _, _) => self.reply(from, "Usage: /invite alice@example.com".into()),
            (Some("/who"), _, _) => self.reply(
                from,
                format!(
                    "In this chat: {}, {}.",
                    self.display_name(from),
                    self.display_name(to)
                ),
            ),
            (Some("/leave"), _, _) => self.reply(
                from,
                "/leave leaves a group chat; this is a two-person chat.".into(),
            ),
            _ => self.reply(from, HELP.into()),
        }
        None
    }

    /// REFER inside a session-mode IM session (RFC 3515, `Refer-To: <sip:carol@…>`): the
    /// session escalates to a group chat holding both participants and the referred user.
    /// Answered here with 202 and `Refer-Sub: false` (RFC 4488): a proxy in the dialog
    /// cannot send the NOTIFYs an implicit subscription would need.
    /// `third` is what the directory said of the Refer-To target (`None`: there is none).
    pub(crate) fn refer(
        &self,
        from: &str,
        session_id: String,
        members: Vec<String>,
        third: Option<Result<String, String>>,
    ) -> crate::Decision {
        let third = match third {
            None => return crate::Decision::Respond(400),
            Some(Ok(t)) => t,
            Some(Err(_)) => return crate::Decision::Respond(404),
        };
        let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
        if !all.contains(&third.as_str()) {
            all.push(&third);
        }
        match self.open_conference(from, Some(session_id), &all) {
            Ok(_) => crate::Decision::RespondWith(202, vec![("Refer-Sub".into(), "false".into())]),
            Err(refusal) => crate::decision(refusal),
        }
    }

    /// A new conference holding `members`, with its CDR session started. Returns its AoR,
    /// or the 403 refusing it when `organiser` already organises as many open group chats
    /// as one user may (every way of creating one comes here).
    pub(crate) fn new_conference(
        &self,
        organiser: &str,
        escalated_from: Option<String>,
        members: &[&str],
        subject: Option<String>,
    ) -> Result<String, ServiceAnswer> {
        if !self.cdr.accepting() {
            return Err(crate::cannot_record());
        }
        // Held until the conference is in `conferences`, where it counts from then on.
        let _place = self.group_chat_place(organiser)?;
        // In a pool the address names the front end hosting it (`home_of`).
        let home = self
            .config
            .front_end
            .map(|fe| format!("f{fe}-"))
            .unwrap_or_default();
        let aor = format!(
            "sip:{CONF_PREFIX}{home}{:08x}@{}",
            rand::random::<u32>(),
            domain_of(organiser)
        );
        let parts: Vec<(&str, String)> = members.iter().map(|m| (*m, String::new())).collect();
        let conv = self.cdr.begin(
            "conference",
            organiser,
            Some(organiser.to_owned()),
            escalated_from.clone(),
            &parts,
        );
        let mut focus = crate::conference::c3p::Focus {
            subject: subject.unwrap_or_default(),
            ..Default::default()
        };
        for m in members {
            focus.saw(m);
        }
        self.conferences.lock().insert(
            aor.clone(),
            Conference {
                conv,
                watchers: Vec::new(),
                organiser: organiser.to_owned(),
                escalated_from,
                focus,
                dialogs: HashMap::new(),
            },
        );
        Ok(aor)
    }

    fn open_conference(
        &self,
        organiser: &str,
        escalated_from: Option<String>,
        members: &[&str],
    ) -> Result<String, ServiceAnswer> {
        let aor = self.new_conference(organiser, escalated_from, members, None)?;
        let names: Vec<String> = members.iter().map(|m| self.display_name(m)).collect();
        let text = format!(
            "*** {} started a group chat with {}. Reply here to talk to everyone; /help for commands.",
            self.display_name(organiser),
            names.join(", ")
        );
        if let Some(conf) = self.conferences.lock().get_mut(&aor) {
            for m in members {
                self.bring_in(&aor, conf, m, text.clone());
            }
        }
        tracing::info!(conference = %aor, organiser, "group chat started");
        Ok(aor)
    }

    /// Sends a notice to every active member except `except`.
    fn notice(
        &self,
        conf_aor: &str,
        conf: &mut Conference,
        members: &[String],
        except: Option<&str>,
        text: &str,
    ) {
        for m in members {
            if Some(m.as_str()) != except && !conf.in_lync_session(m) {
                self.say(conf_aor, conf, m, format!("*** {text}"), None);
            }
        }
    }

    /// A MESSAGE from `from` to the service or a conference; `invited` is what the
    /// directory said of an `/invite` target. Returns the status to answer.
    pub(crate) fn conference_message(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        invited: Option<Result<String, String>>,
    ) -> ServiceAnswer {
        let text = String::from_utf8_lossy(&msg.body).trim().to_owned();
        if to.starts_with(&format!("sip:{SERVICE_USER}@")) {
            self.reply(from, HELP.into());
            return ServiceAnswer::status(200);
        }
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(to) else {
            return ServiceAnswer::status(404);
        };
        if !crate::is_instant_message(msg) {
            // Receipts and typing notices addressed to the group: accepted, not spread.
            return ServiceAnswer::status(200);
        }
        let member = conf.members().iter().any(|m| m == from);
        if (conf.focus.locked || !conf.has_room_for(from)) && !member {
            return ServiceAnswer::status(403);
        }
        let mut answer = ServiceAnswer::status(200);
        // Writing to a conference joins it.
        self.join(to, conf, from);
        let name = self.display_name(from);
        let mut members = conf.members();
        let command = command_of(msg);
        let mut words = text.split_whitespace();
        match (command.as_ref().and(words.next()), words.next(), invited) {
            (Some("/invite"), Some(target), Some(invited)) => match invited {
                Ok(who) if members.contains(&who) => self.say(
                    to,
                    conf,
                    from,
                    format!("*** {} is already here.", self.display_name(&who)),
                    None,
                ),
                Ok(_) if !conf.has_room_for("") => {
                    self.say(to, conf, from, "*** This group chat is full.".into(), None)
                }
                Ok(who) => {
                    conf.conv.admit(&who);
                    conf.focus.saw(&who);
                    let text = format!(
                        "{name} added {}. Reply here to talk to everyone.",
                        self.display_name(&who)
                    );
                    self.notice(to, conf, &members, None, &text);
                    self.bring_in(to, conf, &who, format!("*** {text}"));
                    members.push(who.clone());
                    self.notify_roster(to, conf);
                }
                Err(e) => self.say(
                    to,
                    conf,
                    from,
                    format!("*** Cannot invite {target}: {e}."),
                    None,
                ),
            },
            (Some("/who"), _, _) => {
                let names: Vec<String> = members.iter().map(|m| self.display_name(m)).collect();
                self.say(
                    to,
                    conf,
                    from,
                    format!("*** In this group chat: {}.", names.join(", ")),
                    None,
                );
            }
            (Some("/leave"), _, _) => {
                drop(confs);
                self.leave_conference(to, from);
            }
            (Some(_), _, _) => self.say(to, conf, from, HELP.into(), None),
            (None, _, _) => {
                count(&mut conf.conv, from, crate::device_of(msg), msg.body.len());
                let id = self.fan_out(to, conf, from, &name, msg, &members);
                // MS-CONFIM §3.2.5.2: the id a later delivery report refers to.
                if conf.in_lync_session(from) {
                    answer.headers.push(("Message-Id".into(), id));
                }
            }
        }
        answer
    }

    /// Sends an instant message from `author` to every other member: Lync members get it
    /// as written with `Ms-Sender`, others as text headed by the author's name. Members
    /// in a session whose delivery fails are reported back to a Lync author in an
    /// `ms-imdn` report (MS-CONFIM §3.2.5.3); pager members' messages are kept for them.
    fn fan_out(
        &self,
        conf_aor: &str,
        conf: &mut Conference,
        author: &str,
        name: &str,
        msg: &Message,
        members: &[String],
    ) -> String {
        let message_id = format!("{:016x}", rand::random::<u64>());
        let group = crate::conference::c3p::Held {
            content_type: msg
                .headers
                .get(&HeaderName::ContentType)
                .unwrap_or("text/plain;charset=UTF-8")
                .to_owned(),
            body: msg.body.clone(),
            text: format!("{name}: {}", String::from_utf8_lossy(&msg.body).trim()),
            author: author.to_owned(),
        };
        let deliverer = self.deliverer.clone();
        let came_on = msg.call_id().unwrap_or("").to_owned();
        let mut pending = Vec::new();
        // Everyone else, and the author's other endpoints (so each of their clients shows
        // the conversation whole).
        for m in members.iter() {
            let in_session: Vec<(String, Message, Flow)> = conf
                .dialogs
                .get_mut(m)
                .map(|ds| {
                    ds.iter_mut()
                        .filter(|d| m != author || d.call_id != came_on)
                        .map(|d| (d.call_id.clone(), d.group_message(&group), d.flow))
                        .collect()
                })
                .unwrap_or_default();
            if m == author {
                for (call_id, request, flow) in in_session {
                    let deliverer = deliverer.clone();
                    tokio::spawn(async move {
                        let status = deliverer.send_request_on(request, flow).await;
                        tracing::debug!(status, call_id, "copy to the author's other endpoint");
                    });
                }
                continue;
            }
            if !in_session.is_empty() {
                for (call_id, request, flow) in in_session {
                    let deliverer = deliverer.clone();
                    let who = m.clone();
                    pending.push(tokio::spawn(async move {
                        (who, call_id, deliverer.send_request_on(request, flow).await)
                    }));
                }
            } else if let Some(held) = conf.focus.waiting.get_mut(m) {
                // On their way in: held until they join (or are given it as pager).
                held.push(group.clone());
            } else {
                // Not in a session (checked above): a pager MESSAGE.
                self.deliver_later(
                    conf_aor,
                    Some("Group chat"),
                    m,
                    group.text.clone(),
                    Some(author),
                );
            }
        }
        let report_to = conf
            .dialogs
            .get(author)
            .and_then(|ds| ds.iter().find(|d| d.call_id == came_on && d.ms_sender))
            .map(|d| (d.call_id.clone(), d.our_tag.clone()));
        // Pager members were handed to `say`; only session deliveries have outcomes to
        // wait for.
        let Some(me) = self.me.upgrade().filter(|_| !pending.is_empty()) else {
            return message_id;
        };
        let id = message_id.clone();
        let conf = conf_aor.to_owned();
        let author = author.to_owned();
        tokio::spawn(async move {
            // Per member: delivered if any endpoint took it, else the best failure.
            let mut outcome: HashMap<String, u16> = HashMap::new();
            for p in pending {
                let Ok((who, call_id, status)) = p.await else {
                    continue;
                };
                if matches!(status, 408 | 481) {
                    // That endpoint no longer knows the session (481) or is gone (408):
                    // it is out of the chat, as a client drops such a dialog.
                    me.drop_endpoint(&conf, &who, &call_id);
                }
                let best = outcome.entry(who).or_insert(status);
                if status < *best {
                    *best = status;
                }
            }
            let failed: Vec<(String, u16)> =
                outcome.into_iter().filter(|(_, s)| *s >= 300).collect();
            let Some((call_id, tag)) = report_to.filter(|_| !failed.is_empty()) else {
                return;
            };
            let report = {
                let mut confs = me.conferences.lock();
                // The same session still (not a new one since).
                confs
                    .get_mut(&conf)
                    .and_then(|c| c.dialogs.get_mut(&author))
                    .and_then(|ds| {
                        ds.iter_mut()
                            .find(|d| d.call_id == call_id && d.our_tag == tag)
                    })
                    .map(|d| {
                        d.cseq += 1;
                        let report = d.message(
                            "application/ms-imdn+xml",
                            Bytes::from(msrtc::cccp::imdn(&id, &failed).into_bytes()),
                            None,
                        );
                        (report, d.flow)
                    })
            };
            if let Some((r, flow)) = report {
                deliverer.send_request_on(r, flow).await;
            }
        });
        message_id
    }

    /// One endpoint's chat session with `conf` is over: its dialog goes, and the user leaves
    /// the chat when it was their last endpoint in it.
    pub(crate) fn drop_endpoint(&self, conf: &str, who: &str, call_id: &str) {
        let last = {
            let mut confs = self.conferences.lock();
            let Some(c) = confs.get_mut(conf) else {
                return;
            };
            match c.dialogs.get_mut(who) {
                Some(ds) => {
                    ds.retain(|d| d.call_id != call_id);
                    let empty = ds.is_empty();
                    if empty {
                        c.dialogs.remove(who);
                    }
                    empty
                }
                None => false,
            }
        };
        if last {
            self.leave_conference(conf, who);
        }
    }

    /// Puts `who` in the conference (again); tells the others and the roster watchers.
    /// Returns whether they were not in it before.
    pub(crate) fn join(&self, conf_aor: &str, conf: &mut Conference, who: &str) -> bool {
        let joined = conf.conv.admit(who);
        if joined {
            let members = conf.members();
            self.notice(
                conf_aor,
                conf,
                &members,
                Some(who),
                &format!("{} joined", self.display_name(who)),
            );
            self.notify_roster(conf_aor, conf);
        }
        joined
    }

    /// Takes `who` out of the conference and tells the others. Returns whether nobody is
    /// left (the caller then ends the conference).
    pub(crate) fn leave(&self, conf_aor: &str, conf: &mut Conference, who: &str) -> bool {
        let mut was_in = false;
        if let Some(p) = conf.conv.participants.get_mut(who) {
            if p.left_at_ms.is_none() {
                p.left_at_ms = Some(now_ms());
                p.dirty = true;
                was_in = true;
            }
        }
        conf.dialogs.remove(who);
        self.notify_roster(conf_aor, conf);
        let rest = conf.members();
        if was_in {
            self.notice(
                conf_aor,
                conf,
                &rest,
                None,
                &format!("{} left", self.display_name(who)),
            );
        }
        // A Lync member joined to the focus is still in the conference without its chat.
        let empty = rest.is_empty() && conf.focus.joined.is_empty();
        if empty {
            self.end_watchers(conf_aor, conf, "noresource");
        }
        empty
    }

    /// `who` leaves; the conference ends (CDR "all left") when nobody is left.
    pub(crate) fn leave_conference(&self, conf_aor: &str, who: &str) {
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(conf_aor) else {
            return;
        };
        if self.leave(conf_aor, conf, who) {
            let conf = confs.remove(conf_aor).expect("present above");
            drop(confs);
            let now = now_ms();
            self.cdr.finish(
                &conf.conv.id,
                conf.conv.records(Some(now), false),
                now,
                "all left",
            );
        }
    }

    /// INVITE to a conference (session mode): the service answers as the conference's
    /// endpoint, holds the dialog, and sends the member the group's messages inside it.
    fn conference_invite<'p>(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
        place: impl FnOnce() -> Result<Place<'p>, ServiceAnswer>,
    ) -> ServiceAnswer {
        if !crate::offers_message_media(msg) {
            return ServiceAnswer::status(488);
        }
        let Some(dialog) = MemberDialog::from_invite(msg, flow) else {
            return ServiceAnswer::status(400);
        };
        // Taken before the lock below (see `Place`); held until the dialog is kept.
        let _place = match place() {
            Ok(p) => p,
            Err(refusal) => return refusal,
        };
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(to) else {
            return ServiceAnswer::status(404);
        };
        let admitted =
            conf.focus.joined.contains_key(from) || conf.members().iter().any(|m| m == from);
        if (conf.focus.locked || !conf.has_room_for(from)) && !admitted {
            return ServiceAnswer::status(403);
        }
        conf.focus.saw(from);
        let our_tag = dialog.our_tag.clone();
        // One entry per endpoint of the user (MPOP): each has its own session.
        conf.dialogs
            .entry(from.to_owned())
            .or_default()
            .push(dialog);
        self.join(to, conf, from);
        let sdp = format!("v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=group chat\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=message 5060 sip {to}\r\n");
        ServiceAnswer {
            status: 200,
            to_tag: Some(our_tag),
            headers: vec![("Contact".into(), format!("<{to}>"))],
            body: Some(("application/sdp".into(), Bytes::from(sdp.into_bytes()))),
        }
    }

    /// BYE in a member's session with the conference: that endpoint leaves the chat (the
    /// user, when it was their last).
    pub(crate) fn conference_bye(&self, msg: &Message, from: &str, to: &str) -> ServiceAnswer {
        let call_id = msg.call_id().unwrap_or("");
        let (known, was_in) = match self.conferences.lock().get(to) {
            Some(c) => (
                c.dialogs
                    .get(from)
                    .is_some_and(|ds| ds.iter().any(|d| d.call_id == call_id)),
                c.conv.participants.contains_key(from),
            ),
            None => (false, false),
        };
        if !known {
            // Leaving the focus first (a Lync client's BYE order) already took this
            // endpoint out of the chat: this BYE ends nothing more, and is no error.
            return ServiceAnswer::status(if was_in { 200 } else { 481 });
        }
        self.drop_endpoint(to, from, call_id);
        ServiceAnswer::status(200)
    }

    /// Answers a request to one of the service's resources (`to`: a conference, its
    /// focus or MCU, or the focus factory). `invited` is what the directory said of an
    /// `/invite` target in it; `place` takes the sender's place under the sessions cap
    /// when the request opens a dialog.
    pub(crate) fn answer<'p>(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
        invited: Option<Result<String, String>>,
        place: impl FnOnce() -> Result<Place<'p>, ServiceAnswer>,
    ) -> ServiceAnswer {
        match c3p::part_of(msg) {
            c3p::Part::FocusFactory => return self.focus_factory(msg, from),
            c3p::Part::Focus => return self.to_focus(msg, from, to, flow, place),
            c3p::Part::Chat => {}
        }
        match msg.method() {
            Some(sip_message::Method::Message) => self.conference_message(msg, from, to, invited),
            Some(sip_message::Method::Subscribe) => self.subscribe(msg, from, to, flow),
            Some(sip_message::Method::Invite)
                if msg
                    .to_header()
                    .ok()
                    .and_then(|t| t.tag().map(str::to_owned))
                    .is_none() =>
            {
                self.conference_invite(msg, from, to, flow, place)
            }
            Some(sip_message::Method::Bye) => self.conference_bye(msg, from, to),
            // Typing notices in a member's chat session: accepted, not spread.
            Some(sip_message::Method::Info)
                if self
                    .conferences
                    .lock()
                    .get(to)
                    .is_some_and(|c| c.dialogs.contains_key(from)) =>
            {
                ServiceAnswer::status(200)
            }
            // re-INVITE, INFO and the rest: not part of a group chat.
            _ => ServiceAnswer::status(501),
        }
    }

    /// `from` just joined the chat `to` by the INVITE `call_id` (answered 2xx): what was
    /// held for them follows.
    pub(crate) fn joined_by_invite(&self, to: &str, from: &str, call_id: &str) {
        if let Some(conf) = self.conferences.lock().get_mut(to) {
            self.replay_held(conf, from, call_id);
        }
    }

    /// Session-mode dialogs `user` holds with conferences: chat sessions and Lync focus
    /// dialogs, one per endpoint (for the sessions cap, `caps.rs`).
    pub(crate) fn sessions_of(&self, user: &str) -> usize {
        self.conferences
            .lock()
            .values()
            .map(|c| {
                let chats = c.dialogs.get(user).map_or(0, Vec::len);
                let focus = c.focus.joined.get(user).map_or(0, Vec::len);
                chats + focus
            })
            .sum()
    }

    /// A place for one more group chat organised by `organiser`, or the 403 that refuses
    /// it. Call it holding no lock.
    pub(crate) fn group_chat_place(&self, organiser: &str) -> Result<Place<'_>, ServiceAnswer> {
        let max = self.config.max_group_chats_per_user;
        self.chat_places
            .take(organiser, max, || {
                self.conferences
                    .lock()
                    .values()
                    .filter(|c| c.organiser == organiser)
                    .count()
            })
            .ok_or_else(|| {
                tracing::info!(
                    organiser,
                    max,
                    "group chat refused: the user's cap is reached"
                );
                crate::refused(
                    403,
                    &format!("too many open group chats organised by this user (limit {max})"),
                )
            })
    }

    /// Ends the conferences idle long enough (final rows into `ended`, their watchers
    /// and sessions ended), expires roster subscriptions and collects the others'
    /// changed counters into `dirty`.
    pub(crate) fn sweep(
        &self,
        now: tokio::time::Instant,
        ended: &mut Vec<(String, Rows)>,
        dirty: &mut Rows,
    ) {
        let mut confs = self.conferences.lock();
        confs.retain(|aor, c| {
            // Members in sessions (Lync focus and chat dialogs) are connected; only
            // silence as long as a session's idle time means they are gone.
            let in_sessions = !c.focus.joined.is_empty() || !c.dialogs.is_empty();
            let idle = if in_sessions {
                self.config.session_idle
            } else {
                self.config.pager_idle
            };
            if now.duration_since(c.conv.last_activity) >= idle {
                self.end_watchers(aor, c, "noresource");
                self.end_sessions(c);
                ended.push((c.conv.id.clone(), c.conv.records(None, false)));
                false
            } else {
                self.expire_watchers(aor, c);
                dirty.extend(c.conv.records(None, true));
                for p in c.conv.participants.values_mut() {
                    p.dirty = false;
                }
                true
            }
        });
    }

    /// Every open conference's session, taken out (a stop).
    pub(crate) fn drain(&self) -> Vec<Conversation> {
        self.conferences
            .lock()
            .drain()
            .map(|(_, c)| c.conv)
            .collect()
    }

    /// The AoRs of a conference's active members (for tests and status).
    pub fn conference_members(&self, aor: &str) -> Option<Vec<String>> {
        self.conferences.lock().get(aor).map(Conference::members)
    }

    /// The conferences open now.
    pub fn conferences(&self) -> Vec<String> {
        self.conferences.lock().keys().cloned().collect()
    }
}

/// The AoR a REFER's Refer-To names (RFC 3515 §2.1), if any.
pub(crate) fn refer_target(msg: &Message) -> Option<String> {
    msg.headers
        .get(&HeaderName::ReferTo)
        .and_then(|v| sip_message::NameAddr::parse(v).ok())
        .and_then(|n| n.uri.as_sip().map(|u| u.aor()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn conference_of(n: usize) -> Conference {
        let participants = (0..n)
            .map(|i| (format!("sip:u{i}@x"), Participant::new(String::new(), 0)))
            .collect();
        Conference {
            conv: Conversation {
                id: "c".into(),
                initiator: "sip:u0@x".into(),
                last_activity: Instant::now(),
                participants,
            },
            watchers: Vec::new(),
            organiser: "sip:u0@x".into(),
            escalated_from: None,
            focus: Default::default(),
            dialogs: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn a_full_conference_has_room_only_for_those_in_it() {
        let max = crate::conference::c3p::MAX_PARTICIPANTS;
        assert!(conference_of(max - 1).has_room_for("sip:new@x"));
        let mut full = conference_of(max);
        assert!(!full.has_room_for("sip:new@x"));
        assert!(full.has_room_for("sip:u7@x"), "already in");
        // Someone leaving makes room.
        full.conv
            .participants
            .get_mut("sip:u3@x")
            .unwrap()
            .left_at_ms = Some(1);
        assert!(full.has_room_for("sip:new@x"));
    }
}
