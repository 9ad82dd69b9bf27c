//! The conference event package (RFC 4575) for group chats: a client SUBSCRIBEs to a
//! conference URI with `Event: conference` and gets NOTIFYs carrying the roster as
//! `application/conference-info+xml`, full state each time (RFC 4575 §4.3 allows it),
//! whenever someone joins or leaves, until it unsubscribes, the subscription expires or
//! the conference ends (RFC 6665 §4.2 subscription lifecycle).
//!
//! Methods of [`Conferences`] (`mod.rs`): the watchers live in each conference, under
//! its lock (see the lock rule there); NOTIFYs are rendered under it and sent from
//! spawned tasks.

use std::time::Duration;

use sip_message::{HeaderName, Message, Method, NameAddr, StartLine, Uri};
use switchboard_core::seam::{Flow, ServiceAnswer, SubscribeRequest};
use tokio::time::Instant;

use super::Conferences;
use crate::conference::Conference;
// The Lync documents' escape: it also keeps out the characters XML does not allow.
use msrtc::escape as xml_escape;

const MAX_EXPIRES: u32 = 3600;
const MIN_EXPIRES: u32 = 60;

/// One subscription to a conference's roster.
pub(crate) struct Watcher {
    subscriber: String,
    /// The subscriber's Contact: the Request-URI of our NOTIFYs.
    target: String,
    /// Where the SUBSCRIBE came from: NOTIFYs go back over it when the Contact is not a
    /// registered device.
    flow: Flow,
    call_id: String,
    our_tag: String,
    their_tag: String,
    cseq: u32,
    version: u32,
    expires_at: Instant,
    /// Subscribed to the focus URI (a Lync client): gets the C3P conference document.
    lync: bool,
}

/// RFC 4575 §5: the conference-info document, full state, of `conf_aor` with its
/// members as `(AoR, display name)`.
pub fn roster_document(conf_aor: &str, members: &[(&str, String)], version: u32) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<conference-info xmlns=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{}\" state=\"full\" version=\"{version}\">\n  <conference-description><subject>Group chat</subject></conference-description>\n  <conference-state><user-count>{}</user-count><active>true</active></conference-state>\n  <users>\n",
        xml_escape(conf_aor),
        members.len()
    );
    for (m, display) in members {
        xml.push_str(&format!(
            "    <user entity=\"{e}\" state=\"full\"><display-text>{d}</display-text><endpoint entity=\"{e}\"><status>connected</status></endpoint></user>\n",
            e = xml_escape(m),
            d = xml_escape(display),
        ));
    }
    xml.push_str("  </users>\n</conference-info>\n");
    xml
}

impl Conferences {
    /// RFC 4575 §5: the conference-info document, full state.
    fn roster_xml(&self, conf_aor: &str, members: &[String], version: u32) -> String {
        let named: Vec<(&str, String)> = members
            .iter()
            .map(|m| (m.as_str(), self.display_name(m)))
            .collect();
        roster_document(conf_aor, &named, version)
    }

    /// Sends one NOTIFY to `w` (spawned; the subscriber's answer is not waited for).
    fn notify(&self, conf_aor: &str, conf: &Conference, w: &mut Watcher, state: String) {
        let deliverer = self.deliverer.clone();
        w.cseq += 1;
        w.version += 1;
        let Ok(target) = Uri::parse(&w.target) else {
            return;
        };
        let entity = if w.lync {
            crate::conference::c3p::focus_uri(conf_aor)
        } else {
            conf_aor.to_owned()
        };
        let body = if w.lync {
            self.lync_roster(conf_aor, conf, w.version)
        } else {
            self.roster_xml(conf_aor, &conf.members(), w.version)
        };
        let mut m = Message::request(Method::Notify, target.clone());
        m.start = StartLine::Request {
            method: Method::Notify,
            uri: target,
        };
        m.headers.push(HeaderName::MaxForwards, "70");
        m.headers
            .push(HeaderName::From, format!("<{entity}>;tag={}", w.our_tag));
        m.headers.push(
            HeaderName::To,
            format!("<{}>;tag={}", w.subscriber, w.their_tag),
        );
        m.headers.push(HeaderName::CallId, w.call_id.clone());
        m.headers
            .push(HeaderName::CSeq, format!("{} NOTIFY", w.cseq));
        m.headers.push(HeaderName::Contact, format!("<{entity}>"));
        m.headers.push(HeaderName::Event, "conference");
        m.headers
            .push(HeaderName::from_wire("Subscription-State"), state);
        m.headers
            .push(HeaderName::ContentType, "application/conference-info+xml");
        m.body = bytes::Bytes::from(body.into_bytes());
        let flow = w.flow;
        tokio::spawn(async move {
            let status = deliverer.send_request_on(m, flow).await;
            if status >= 300 {
                tracing::debug!(status, "conference NOTIFY not accepted");
            }
        });
    }

    /// Tells every watcher of `conf` the current roster.
    pub(crate) fn notify_roster(&self, conf_aor: &str, conf: &mut Conference) {
        let now = Instant::now();
        let mut watchers = std::mem::take(&mut conf.watchers);
        for w in watchers.iter_mut() {
            let left = w.expires_at.saturating_duration_since(now).as_secs();
            self.notify(conf_aor, conf, w, format!("active;expires={left}"));
        }
        conf.watchers = watchers;
    }

    /// Ends every subscription of a conference that is going away.
    pub(crate) fn end_watchers(&self, conf_aor: &str, conf: &mut Conference, reason: &str) {
        for mut w in std::mem::take(&mut conf.watchers) {
            self.notify(
                conf_aor,
                conf,
                &mut w,
                format!("terminated;reason={reason}"),
            );
        }
    }

    /// Drops expired subscriptions, telling their subscribers (RFC 6665 §4.2.2).
    pub(crate) fn expire_watchers(&self, conf_aor: &str, conf: &mut Conference) {
        let now = Instant::now();
        let (gone, kept): (Vec<Watcher>, Vec<Watcher>) = std::mem::take(&mut conf.watchers)
            .into_iter()
            .partition(|w| w.expires_at <= now);
        conf.watchers = kept;
        for mut w in gone {
            self.notify(conf_aor, conf, &mut w, "terminated;reason=timeout".into());
        }
    }

    /// A SUBSCRIBE to a conference (new, refresh, or Expires: 0 to end it).
    pub(crate) fn subscribe(
        &self,
        msg: &Message,
        from: &str,
        conf_aor: &str,
        flow: Flow,
    ) -> ServiceAnswer {
        let event = msg.headers.get(&HeaderName::Event).unwrap_or("");
        if !event
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("conference")
        {
            let mut a = ServiceAnswer::status(489);
            a.headers.push(("Allow-Events".into(), "conference".into()));
            return a;
        }
        let req = match SubscribeRequest::read(msg, MIN_EXPIRES, MAX_EXPIRES) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let SubscribeRequest {
            expires,
            call_id,
            their_tag,
            our_tag: our_tag_in,
        } = req;
        let mut confs = self.conferences.lock();
        let Some(conf) = confs.get_mut(conf_aor) else {
            // In a dialog for a conference that is gone: the subscription does not exist.
            return ServiceAnswer::status(if our_tag_in.is_some() { 481 } else { 404 });
        };
        let lync = crate::conference::c3p::part_of(msg) == crate::conference::c3p::Part::Focus;
        let existing = conf
            .watchers
            .iter()
            .position(|w| w.call_id == call_id && w.their_tag == their_tag);
        let our_tag = match (our_tag_in, existing) {
            (Some(tag), Some(i)) if conf.watchers[i].our_tag == tag => tag,
            (Some(_), _) => return ServiceAnswer::status(481),
            (None, Some(i)) => conf.watchers[i].our_tag.clone(),
            (None, None) => {
                let Some(target) = msg
                    .headers
                    .get(&HeaderName::Contact)
                    .and_then(|c| NameAddr::parse(c).ok())
                    .map(|c| c.uri.to_string())
                else {
                    return ServiceAnswer::status(400);
                };
                let tag = format!("{:016x}", rand::random::<u64>());
                conf.watchers.push(Watcher {
                    subscriber: from.to_owned(),
                    target,
                    flow,
                    call_id: call_id.clone(),
                    our_tag: tag.clone(),
                    their_tag: their_tag.clone(),
                    cseq: 0,
                    version: 0,
                    expires_at: Instant::now(),
                    lync,
                });
                tag
            }
        };
        let i = conf
            .watchers
            .iter()
            .position(|w| w.call_id == call_id && w.their_tag == their_tag)
            .expect("present: found or just added");
        if expires == 0 {
            let mut w = conf.watchers.remove(i);
            self.notify(conf_aor, conf, &mut w, "terminated;reason=timeout".into());
        } else {
            let mut w = conf.watchers.remove(i);
            w.expires_at = Instant::now() + Duration::from_secs(expires as u64);
            // RFC 6665 §4.2.1.2: every accepted SUBSCRIBE is followed by a NOTIFY.
            self.notify(conf_aor, conf, &mut w, format!("active;expires={expires}"));
            conf.watchers.insert(i, w);
        }
        let contact = if lync {
            crate::conference::c3p::focus_uri(conf_aor)
        } else {
            conf_aor.to_owned()
        };
        ServiceAnswer {
            status: 200,
            to_tag: Some(our_tag),
            body: None,
            headers: vec![
                ("Expires".into(), expires.to_string()),
                ("Event".into(), "conference".into()),
                ("Contact".into(), format!("<{contact}>")),
                ("Allow-Events".into(), "conference".into()),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (conference_info): a control character in a member's AoR or name
    /// made the roster not XML, for every watcher.
    #[test]
    fn roster_is_xml_whatever_the_names() {
        let doc = roster_document(
            "sip:chat-1@x",
            &[("sip:a\u{0}b@x", "A \u{1}\"&<".to_owned())],
            3,
        );
        let root = msrtc::tree::parse(doc.as_bytes()).unwrap();
        let user = root.path("users/user").unwrap();
        assert_eq!(user.attr("entity"), Some("sip:a\u{FFFD}b@x"));
        assert_eq!(user.text_at("display-text"), Some("A \u{FFFD}\"&<"));
        assert_eq!(root.text_at("conference-state/user-count"), Some("1"));
    }
}
