//! Two-party IM between a Lync client and a user whose devices only do pager mode.
//!
//! A Lync client starts a chat with an INVITE `m=message … sip`, the first message riding
//! in its `ms-text-format` header, and then sends MESSAGEs inside that dialog (MS-SIP
//! §3.1.4). A standard client such as baresip refuses such an INVITE. When the callee has
//! no Lync device, the service answers the INVITE itself and becomes the other end of the
//! dialog: each message the Lync user writes is delivered to the callee as a pager-mode
//! MESSAGE (RFC 3428) from the Lync user; the callee's pager replies reach the Lync client
//! as they would anyway. Both directions count in one two-party CDR session, the same one
//! a pager conversation between the two has.
//!
//! Owns the bridged sessions ([`Bridges`]); the pager side it writes to (conversation,
//! CDR, offline store) is passed in by the caller ([`ToPager`]).
//!
//! Lock rule: one lock (`open`), held only to read or change the map, never across an
//! await or a call into another part: a request is decided under it, and what it sends
//! on is done after it is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use sip_message::{HeaderName, Message, Method};
use switchboard_core::seam::{Delivery, Flow, ServiceAnswer};
use tokio::time::Instant;

use crate::caps::Place;
use crate::cdr::CdrLog;
use crate::conference::MemberDialog;
use crate::offline::Offline;
use crate::pager::Pager;
use crate::{device_of, now_ms};

/// Bridged sessions one user may have open at a time: the service answers these INVITEs
/// itself, so nothing but this bounds what one client can make it hold.
const MAX_BRIDGES_PER_CALLER: usize = 100;

/// A Lync user's session-mode dialog with the service, standing in for a pager user.
struct Bridge {
    caller: String,
    callee: String,
    last_activity: Instant,
}

/// Is this INVITE in the Lync style (MS-SIP): the first message in `ms-text-format`, or
/// a client that names authors by `Ms-Sender`? Standard clients offering `m=message` to
/// each other are relayed untouched.
pub(crate) fn lync_style(invite: &Message) -> bool {
    invite
        .headers
        .get(&HeaderName::from_wire("ms-text-format"))
        .is_some()
        || invite
            .headers
            .values(&HeaderName::Supported)
            .any(|o| o.eq_ignore_ascii_case("ms-sender"))
}

/// Reads `ms-text-format: text/plain; charset=UTF-8; msgr=…; ms-body=<base64>` into the
/// message's content type and text.
pub fn first_message(header: &str) -> Option<(String, Vec<u8>)> {
    let mut parts = header.split(';');
    let content_type = parts.next()?.trim().to_owned();
    let mut charset = None;
    let mut body = None;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "ms-body" => {
                body = base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()
            }
            "charset" => charset = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let body = body?;
    let ct = match charset {
        Some(c) => format!("{content_type};charset={c}"),
        None => content_type,
    };
    // The type becomes the Content-Type of MESSAGEs to others: a control character (a
    // bare CR, which a header value may hold) has no place in a media type and could end
    // the header early for a lenient reader.
    if ct.chars().any(char::is_control) {
        return None;
    }
    Some((ct, body))
}

/// The service's side of a bridged session: where a Lync user's messages go on as
/// pager mode (the pair's conversation, its CDR, and delivery or keeping).
pub(crate) struct ToPager<'a> {
    pub(crate) pager: &'a Pager,
    pub(crate) cdr: &'a CdrLog,
    pub(crate) offline: &'a Arc<Offline>,
}

impl ToPager<'_> {
    /// Delivers one message as pager mode, counting it; kept for later if no device
    /// takes it.
    fn relay(&self, from: &str, to: &str, content_type: String, body: Vec<u8>, device: String) {
        self.pager.record(self.cdr, from, to, device, body.len());
        let d = Delivery {
            from: from.to_owned(),
            to: to.to_owned(),
            content_type,
            body: Bytes::from(body),
            sent_at_ms: now_ms(),
            from_display: None,
            extra_headers: Vec::new(),
        };
        let session_id = self.pager.id(from, to);
        let offline = self.offline.clone();
        tokio::spawn(async move { offline.deliver_or_keep(d, session_id).await });
    }
}

/// What a request in a bridged dialog comes to, beyond what [`Bridges::request`] did.
pub(crate) enum Step {
    /// Answer it so.
    Answer(ServiceAnswer),
    /// A chat command typed in the session with `callee`: for the service, as in pager
    /// mode.
    Command { callee: String, command: String },
    /// A BYE ended the session (answered 200; the caller remembers the Call-ID).
    Ended,
}

/// The Lync sessions the service answers for pager-only users, by Call-ID.
#[derive(Default)]
pub(crate) struct Bridges {
    open: Mutex<HashMap<String, Bridge>>,
}

impl Bridges {
    /// Bridged sessions `caller` opened.
    pub(crate) fn opened_by(&self, caller: &str) -> usize {
        self.open
            .lock()
            .values()
            .filter(|b| b.caller == caller)
            .count()
    }

    /// Answers a Lync INVITE to `to` (who has no Lync device) as the other end. `place`
    /// takes the caller's place under the sessions cap (or refuses).
    pub(crate) async fn invite<'p>(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
        place: impl FnOnce() -> Result<Place<'p>, ServiceAnswer>,
        side: ToPager<'_>,
    ) -> ServiceAnswer {
        let (Some(dialog), Some(call_id)) = (MemberDialog::from_invite(msg, flow), msg.call_id())
        else {
            return ServiceAnswer::status(400);
        };
        // Held until the bridge is in `open`, where it counts from then on.
        let place = match place() {
            Ok(p) => p,
            Err(refusal) => return refusal,
        };
        if self.opened_by(from) >= MAX_BRIDGES_PER_CALLER {
            return crate::refused(
                403,
                "too many open chats with users who have no Lync device",
            );
        }
        if !side.pager.ensure(side.cdr, from, to).await {
            return crate::cannot_record();
        }
        let first = msg
            .headers
            .get(&HeaderName::from_wire("ms-text-format"))
            .and_then(first_message);
        let took_first = first.is_some();
        if let Some((content_type, body)) = first {
            side.relay(from, to, content_type, body, device_of(msg));
        }
        self.open.lock().insert(
            call_id.to_owned(),
            Bridge {
                caller: from.to_owned(),
                callee: to.to_owned(),
                last_activity: Instant::now(),
            },
        );
        drop(place);
        tracing::info!(from, to, "Lync session bridged to pager mode");
        let domain = to.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
        let sdp = format!("v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=session\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=message 5060 sip {to}\r\na=accept-types:text/plain text/html application/im-iscomposing+xml\r\n");
        let mut a = ServiceAnswer::status(200);
        a.to_tag = Some(dialog.our_tag);
        a.headers.push((
            "Contact".into(),
            format!("<sip:{}@{domain}>", crate::conference::SERVICE_USER),
        ));
        if took_first {
            // MS-SIP §2.2.1: the first message was taken from the INVITE; not resent.
            a.headers
                .push(("Supported".into(), "ms-text-format".into()));
        }
        a.body = Some(("application/sdp".into(), Bytes::from(sdp.into_bytes())));
        a
    }

    /// A request in a bridged dialog, if `msg` belongs to one: decided under the lock,
    /// its message (if any) carried on after it.
    pub(crate) fn request(&self, msg: &Message, from: &str, side: ToPager<'_>) -> Option<Step> {
        let call_id = msg.call_id()?;
        let callee = {
            let mut open = self.open.lock();
            let b = open.get_mut(call_id)?;
            if b.caller != from {
                return Some(Step::Answer(ServiceAnswer::status(403)));
            }
            b.last_activity = Instant::now();
            if msg.method() == Some(&Method::Bye) {
                open.remove(call_id);
                return Some(Step::Ended);
            }
            b.callee.clone()
        };
        if msg.method() == Some(&Method::Message) {
            if let Some(command) = crate::conference::command_of(msg) {
                return Some(Step::Command { callee, command });
            }
            if crate::is_instant_message(msg) {
                let ct = msg
                    .headers
                    .get(&HeaderName::ContentType)
                    .unwrap_or("text/plain")
                    .to_owned();
                side.relay(from, &callee, ct, msg.body.to_vec(), device_of(msg));
            }
        }
        // Typing notices (INFO), keep-alive re-INVITEs, OPTIONS: nothing to carry.
        Some(Step::Answer(ServiceAnswer::status(200)))
    }

    /// Forgets the bridges idle for `idle`.
    pub(crate) fn sweep(&self, now: Instant, idle: Duration) {
        self.open
            .lock()
            .retain(|_, b| now.duration_since(b.last_activity) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_message_from_ms_text_format() {
        let (ct, body) =
            first_message("text/plain; charset=UTF-8;msgr=WAAtAE0ATQBTAA;ms-body=aGVsbG8gYm9i")
                .unwrap();
        assert_eq!(ct, "text/plain;charset=UTF-8");
        assert_eq!(body, b"hello bob");
        assert!(first_message("text/plain; charset=UTF-8").is_none());
        assert!(first_message("text/plain; ms-body=!!!").is_none());
    }

    /// Found by fuzzing (sdp): a CR inside the type or charset was carried into the
    /// Content-Type of the MESSAGE delivered to the other user.
    #[test]
    fn refuses_control_characters_in_the_type() {
        assert!(first_message("text\r/plain; ms-body=aGk=").is_none());
        assert!(first_message("text/plain; charset=UTF-8\rX-Evil: 1; ms-body=aGk=").is_none());
        assert!(first_message("text/plain; charset=UTF-\r\n\r\ngr=x;ms-body=aGk=").is_none());
        assert_eq!(
            first_message("text/plain\r; ms-body=aGk="),
            Some(("text/plain".into(), b"hi".to_vec()))
        );
    }
}
