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

use base64::Engine;
use bytes::Bytes;
use sip_message::{HeaderName, Message, Method};
use switchboard_core::seam::{Delivery, Flow, ServiceAnswer};
use tokio::time::Instant;

use crate::conference::MemberDialog;
use crate::{device_of, now_ms, ImService};

/// Bridged sessions one user may have open at a time: the service answers these INVITEs
/// itself, so nothing but this bounds what one client can make it hold.
const MAX_BRIDGES_PER_CALLER: usize = 100;

/// A Lync user's session-mode dialog with the service, standing in for a pager user.
pub(crate) struct Bridge {
    pub(crate) caller: String,
    callee: String,
    pub(crate) last_activity: Instant,
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

impl ImService {
    /// Answers a Lync INVITE to `to` (who has no Lync device) as the other end.
    pub(crate) async fn bridge_invite(
        &self,
        msg: &Message,
        from: &str,
        to: &str,
        flow: Flow,
    ) -> ServiceAnswer {
        let (Some(dialog), Some(call_id)) = (MemberDialog::from_invite(msg, flow), msg.call_id())
        else {
            return ServiceAnswer::status(400);
        };
        // Held until the bridge is in `bridges`, where it counts from then on.
        let place = match self.session_place(from) {
            Ok(p) => p,
            Err(refusal) => return refusal,
        };
        let open = self
            .bridges
            .lock()
            .values()
            .filter(|b| b.caller == from)
            .count();
        if open >= MAX_BRIDGES_PER_CALLER {
            return crate::refused(
                403,
                "too many open chats with users who have no Lync device",
            );
        }
        if !self.ensure_conversation(from, to).await {
            return Self::cannot_record();
        }
        let first = msg
            .headers
            .get(&HeaderName::from_wire("ms-text-format"))
            .and_then(first_message);
        let took_first = first.is_some();
        if let Some((content_type, body)) = first {
            self.relay_to_pager(from, to, content_type, body, device_of(msg));
        }
        self.bridges.lock().insert(
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

    /// A request in a bridged dialog, if `msg` belongs to one; `invited` is what the
    /// directory said of an `/invite` target in it.
    pub(crate) fn bridged(
        &self,
        msg: &Message,
        from: &str,
        invited: Option<Result<String, String>>,
    ) -> Option<ServiceAnswer> {
        let call_id = msg.call_id()?;
        let mut bridges = self.bridges.lock();
        let b = bridges.get_mut(call_id)?;
        if b.caller != from {
            return Some(ServiceAnswer::status(403));
        }
        b.last_activity = Instant::now();
        let callee = b.callee.clone();
        match msg.method() {
            Some(Method::Message) => {
                drop(bridges);
                if let Some(command) = crate::conference::command_of(msg) {
                    // Chat commands are for the service, as in pager mode.
                    if let Some(refusal) = self.pair_command(from, &callee, command, invited) {
                        return Some(refusal);
                    }
                } else if crate::is_instant_message(msg) {
                    let ct = msg
                        .headers
                        .get(&HeaderName::ContentType)
                        .unwrap_or("text/plain")
                        .to_owned();
                    self.relay_to_pager(from, &callee, ct, msg.body.to_vec(), device_of(msg));
                }
                Some(ServiceAnswer::status(200))
            }
            Some(Method::Bye) => {
                bridges.remove(call_id);
                drop(bridges);
                // RFC 3261 §12.2.2: later requests in this dialog get 481.
                self.ended_dialogs
                    .lock()
                    .insert(call_id.to_owned(), Instant::now());
                Some(ServiceAnswer::status(200))
            }
            // Typing notices (INFO), keep-alive re-INVITEs, OPTIONS: nothing to carry.
            _ => Some(ServiceAnswer::status(200)),
        }
    }

    /// Delivers one message as pager mode, counting it; kept for later if no device takes it.
    fn relay_to_pager(
        &self,
        from: &str,
        to: &str,
        content_type: String,
        body: Vec<u8>,
        device: String,
    ) {
        self.record(from, to, device, body.len());
        let Some(me) = self.me.upgrade() else { return };
        let d = Delivery {
            from: from.to_owned(),
            to: to.to_owned(),
            content_type,
            body: Bytes::from(body),
            sent_at_ms: now_ms(),
            from_display: None,
            extra_headers: Vec::new(),
        };
        let session_id = self.conversation_id(from, to);
        tokio::spawn(async move { me.deliver_or_keep(d, session_id).await });
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
