//! Requests the server sends on its own behalf: a stored MESSAGE delivered to a user's
//! devices when they sign in (RFC 3428 as a UAC, forked like any request to an AoR).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use sip_message::{HeaderName, Message, Method, StartLine, Uri};
use sip_transaction::mailbox::mailbox;
use sip_transaction::{new_branch, ClientEvent};
use sip_transport::Source;

use switchboard_core::seam::{Deliverer, Delivery, Flow};

use crate::flow::source_of;
use crate::Core;

impl Core {
    /// Sends `d` to every device of `d.to` in parallel; the first 2xx wins, else the
    /// lowest final status (408 for no answer, 480 for no device).
    pub async fn originate_message(self: Arc<Self>, d: Delivery) -> u16 {
        let bindings = self.location.lookup(&d.to);
        let (tx, mut rx) = mailbox::<(usize, ClientEvent)>();
        let call_id = format!("{:032x}@switchboard", rand::random::<u128>());
        let from_tag = format!("{:016x}", rand::random::<u64>());
        let mut sent = 0;
        for b in &bindings {
            let hop = self.hop_for(b);
            if self.is_own_hop(&hop) {
                continue;
            }
            let Ok(to_uri) = Uri::parse(&d.to) else {
                return 400;
            };
            let mut target = b.contact.uri.clone();
            if let Some(u) = target.as_sip_mut() {
                u.headers = None;
            }
            let mut m = Message::request(Method::Message, to_uri.clone());
            m.start = StartLine::Request {
                method: Method::Message,
                uri: target,
            };
            m.headers.push(HeaderName::Via, hop.via(&new_branch()));
            m.headers.push(HeaderName::MaxForwards, "70");
            let from = match &d.from_display {
                Some(name) => format!("{} <{}>;tag={from_tag}", sip_message::quote(name), d.from),
                None => format!("<{}>;tag={from_tag}", d.from),
            };
            m.headers.push(HeaderName::From, from);
            m.headers.push(HeaderName::To, format!("<{}>", d.to));
            m.headers.push(HeaderName::CallId, call_id.clone());
            m.headers.push(HeaderName::CSeq, "1 MESSAGE");
            // RFC 3428 §9 / RFC 3261 §20.17: when the sender sent it.
            let sent_at = UNIX_EPOCH + Duration::from_millis(d.sent_at_ms.max(0) as u64);
            m.headers
                .push(HeaderName::Date, httpdate::fmt_http_date(sent_at));
            m.headers
                .push(HeaderName::ContentType, d.content_type.clone());
            for (name, value) in &d.extra_headers {
                m.headers.push(HeaderName::from_wire(name), value.clone());
            }
            m.body = d.body.clone();
            self.layer
                .send_request_tagged(m, hop.target, sent, tx.clone());
            sent += 1;
        }
        drop(tx);
        if sent == 0 {
            return 480;
        }
        let mut best = 408;
        while let Some((_, ev)) = rx.recv().await {
            let status = match ev {
                ClientEvent::Response(r) => r.message.status().unwrap_or(500),
                ClientEvent::Timeout => 408,
                ClientEvent::TransportError(_) => 503,
            };
            if (200..300).contains(&status) {
                return status;
            }
            if status >= 300 && (best == 408 || status < best) {
                best = status;
            }
        }
        best
    }
}

impl Core {
    /// Sends a request the server originates to a registered device: the contact (or
    /// GRUU) the Request-URI names, over its flow. Nothing else: an address a client
    /// merely wrote in a Contact is reached only over the flow it came from
    /// ([`Core::send_own_request_on`]), so no client can aim us at a third party.
    pub async fn send_own_request(self: Arc<Self>, request: Message) -> u16 {
        self.send_own_request_on(request, None).await
    }

    /// [`Core::send_own_request`], falling back to `flow` (where the dialog came from)
    /// when the Request-URI is not a registered contact.
    pub async fn send_own_request_on(
        self: Arc<Self>,
        mut request: Message,
        flow: Option<Source>,
    ) -> u16 {
        let Some(Uri::Sip(target)) = request.request_uri().cloned() else {
            return 416;
        };
        let binding = self
            .location
            .binding_for_contact(
                &Uri::Sip(target.clone()),
                crate::routing::to_aor(&request).as_deref(),
            )
            .or_else(|| self.gruu_binding(&target))
            // The client's own flow: the only way back to a NATed or TLS client.
            .or_else(|| flow.map(|f| Core::flow_target(&target, f)));
        let Some(b) = binding else { return 480 };
        let hop = self.hop_for(&b);
        request
            .headers
            .push_front(HeaderName::Via, hop.via(&new_branch()));
        let (tx, mut rx) = mailbox::<(usize, ClientEvent)>();
        self.layer.send_request_tagged(request, hop.target, 0, tx);
        let mut last = 408;
        while let Some((_, ev)) = rx.recv().await {
            match ev {
                ClientEvent::Response(inbound) => {
                    let r = inbound.message;
                    let status = r.status().unwrap_or(500);
                    if status >= 200 {
                        return status;
                    }
                }
                ClientEvent::Timeout => last = 408,
                ClientEvent::TransportError(_) => last = 503,
            }
        }
        last
    }
}

impl Core {
    /// Invites `to`'s Lync devices (those on a security association) into the conference
    /// `focus` with an `ms-conf-invite` INVITE from `from` (MS-CONFIM §3.2.5.1), the
    /// client then joining by itself; acknowledges a 2xx (§13.2.2.4). The first 2xx wins;
    /// 480 when `to` has no Lync device.
    pub async fn originate_conference_invite(
        self: Arc<Self>,
        from: String,
        to: String,
        focus: String,
        body: bytes::Bytes,
    ) -> u16 {
        let bindings: Vec<_> = self
            .location
            .lookup(&to)
            .into_iter()
            .filter(|b| self.on_association(b.flow))
            .collect();
        let (tx, mut rx) = mailbox::<(usize, ClientEvent)>();
        let call_id = format!("{:032x}@switchboard", rand::random::<u128>());
        let from_tag = format!("{:016x}", rand::random::<u64>());
        let mut hops = Vec::new();
        for b in &bindings {
            let hop = self.hop_for(b);
            if self.is_own_hop(&hop) {
                continue;
            }
            let mut target = b.contact.uri.clone();
            if let Some(u) = target.as_sip_mut() {
                u.headers = None;
            }
            let mut m = Message::request(Method::Invite, target);
            m.headers.push(HeaderName::Via, hop.via(&new_branch()));
            m.headers.push(HeaderName::MaxForwards, "70");
            m.headers
                .push(HeaderName::From, format!("<{from}>;tag={from_tag}"));
            m.headers.push(HeaderName::To, format!("<{to}>"));
            m.headers.push(HeaderName::CallId, call_id.clone());
            m.headers.push(HeaderName::CSeq, "1 INVITE");
            m.headers.push(HeaderName::Contact, format!("<{focus}>"));
            m.headers
                .push(HeaderName::ContentType, "application/ms-conf-invite+xml");
            m.body = body.clone();
            self.layer
                .send_request_tagged(m, hop.target, hops.len(), tx.clone());
            hops.push(hop);
        }
        drop(tx);
        if hops.is_empty() {
            return 480;
        }
        let mut best = 408;
        let mut accepted = false;
        while let Some((i, ev)) = rx.recv().await {
            let status = match ev {
                ClientEvent::Response(inbound) => {
                    let r = inbound.message;
                    let status = r.status().unwrap_or(500);
                    if (200..300).contains(&status) {
                        // The ACK of a 2xx is ours to send, to the answer's Contact.
                        let ack_uri = r
                            .headers
                            .get(&HeaderName::Contact)
                            .and_then(|c| sip_message::NameAddr::parse(c).ok())
                            .map(|c| c.uri)
                            .or_else(|| Uri::parse(&to).ok());
                        if let (Some(uri), Some(hop)) = (ack_uri, hops.get(i)) {
                            let mut ack = Message::request(Method::Ack, uri);
                            ack.headers.push(HeaderName::Via, hop.via(&new_branch()));
                            ack.headers.push(HeaderName::MaxForwards, "70");
                            for h in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
                                if let Some(v) = r.headers.get(&h) {
                                    ack.headers.push(h.clone(), v.to_owned());
                                }
                            }
                            ack.headers.push(HeaderName::CSeq, "1 ACK");
                            self.layer.send_stateless(hop.target, &ack).await;
                        }
                        accepted = true;
                    }
                    status
                }
                ClientEvent::Timeout => 408,
                ClientEvent::TransportError(_) => 503,
            };
            if status >= 300 && (best == 408 || status < best) {
                best = status;
            }
        }
        if accepted {
            200
        } else {
            best
        }
    }
}

impl Deliverer for Core {
    fn invite_to_conference(
        &self,
        from: String,
        to: String,
        focus: String,
        body: bytes::Bytes,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        match self.me.upgrade() {
            Some(core) => Box::pin(core.originate_conference_invite(from, to, focus, body)),
            None => Box::pin(async { 503 }),
        }
    }

    fn send_request(
        &self,
        request: Message,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        match self.me.upgrade() {
            Some(core) => Box::pin(core.send_own_request(request)),
            None => Box::pin(async { 503 }),
        }
    }

    fn send_request_on(
        &self,
        request: Message,
        flow: Flow,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        match self.me.upgrade() {
            Some(core) => Box::pin(core.send_own_request_on(request, Some(source_of(flow)))),
            None => Box::pin(async { 503 }),
        }
    }

    fn deliver(&self, d: Delivery) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        match self.me.upgrade() {
            Some(core) => Box::pin(core.originate_message(d)),
            None => Box::pin(async { 503 }),
        }
    }
}
