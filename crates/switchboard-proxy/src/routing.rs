//! Routing and forwarding (RFC 3261 §16.5–§16.7): choosing targets, building each
//! branch's request, forking in parallel, and picking the response to return.

use std::net::SocketAddr;
use std::sync::Arc;

use md5::{Digest as _, Md5};
use sip_message::{HeaderName, Host, Message, Method, NameAddr, Uri, Via};
use sip_transaction::mailbox::mailbox;
use sip_transaction::{cancel_for, new_branch, ClientEvent, ServerRequest};
use sip_transport::{Inbound, Source, Target, TransportKind};
use switchboard_core::seam::Flow;
use switchboard_core::Address;
use switchboard_registrar::Binding;
use tokio::sync::Notify;

use std::sync::atomic::{AtomicBool, Ordering};

use switchboard_core::seam::{AnswerPort, Reach, Responder, ServiceAnswer};

use crate::flow::{flow_of, transport_of};
use crate::ntlm_auth::{strip_hop_signatures, SignedRequest};
use crate::relay::{Next, Settle};
use crate::Core;

/// Prefix of the branches we generate; the loop-detection hash follows it.
const OUR_BRANCH: &str = "z9hG4bKsb";

/// (top Via branch, Call-ID): identifies an INVITE and its CANCEL (§9.2).
pub(crate) fn invite_key(msg: &Message) -> (String, String) {
    let branch = msg
        .top_via()
        .ok()
        .and_then(|v| v.branch().map(str::to_owned))
        .unwrap_or_default();
    (branch, msg.call_id().unwrap_or("").to_owned())
}

/// §16.6 step 8: the part of our branch that is the same each time the same request
/// passes through (Request-URI as received, tags, Call-ID, CSeq number).
///
/// `salt` tells this server's branches from those of another front end of its pool,
/// which computes the same hash for a request it proxied here.
fn loop_hash(msg: &Message, salt: &str) -> String {
    let mut h = Md5::new();
    h.update(salt.as_bytes());
    h.update(
        msg.request_uri()
            .map(|u| u.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    for name in [HeaderName::From, HeaderName::To] {
        let tag = msg
            .headers
            .get(&name)
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|n| n.tag().map(str::to_owned));
        h.update(tag.unwrap_or_default().as_bytes());
        h.update(b"|");
    }
    h.update(msg.call_id().unwrap_or("").as_bytes());
    h.update(
        msg.cseq()
            .map(|c| c.seq.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    hex::encode(&h.finalize()[..8])
}

/// Where an outbound request goes and what we say about ourselves on that path.
/// What [`Core::classify`] found a routed request to be.
pub(crate) struct Classified {
    method: Method,
    ruri: sip_message::SipUri,
    /// It carries a To tag.
    in_dialog: bool,
    /// Its Request-URI names a user of a domain served here.
    domain_target: bool,
    /// In a dialog: the device (or the dialog's other party) it goes to.
    contact_binding: Option<Binding>,
    /// Another member of the pool passed it here to handle, vouching for its sender:
    /// handled here, never passed on again.
    vouched: bool,
    /// Its route set goes on through this member of the pool, which is told who sent it.
    via_peer: Option<u32>,
}

/// The router's side of a [`Responder`] for `req`: the service's answer goes out as
/// the final response, and [`Answering::finish`] answers 500 when there was none.
struct Answering<'a> {
    core: &'a Core,
    req: &'a ServerRequest,
    sent: AtomicBool,
}

impl<'a> Answering<'a> {
    fn new(core: &'a Core, req: &'a ServerRequest) -> Self {
        Answering {
            core,
            req,
            sent: AtomicBool::new(false),
        }
    }

    /// The service returned: a request it left unanswered gets 500 (never no answer).
    async fn finish(self) {
        if !self.sent.load(Ordering::Acquire) {
            tracing::error!(
                method = ?self.req.message.method(),
                "a service returned without answering; answered 500"
            );
            self.core.respond(self.req, 500).await;
        }
    }
}

#[async_trait::async_trait]
impl AnswerPort for Answering<'_> {
    async fn answer(&self, answer: ServiceAnswer) -> u16 {
        self.sent.store(true, Ordering::Release);
        let status = answer.status;
        self.core.answer_service(self.req, answer).await;
        status
    }
}

/// One branch of a forked request (§16.6): what was sent where, and how far it got.
struct Branch {
    request: Message,
    hop: Hop,
    /// A provisional response came back (it may be CANCELled, §9.1).
    provisional: bool,
    /// Its final response came back (or it failed).
    done: bool,
}

pub(crate) struct Hop {
    pub(crate) target: Target,
    pub(crate) transport: TransportKind,
    /// Our address on this path, for Via and Record-Route.
    pub(crate) local: SocketAddr,
    /// The binding's path (a device on another front end): the request carries a Route
    /// to it (see `pool`).
    pub(crate) path: Option<String>,
}

impl Hop {
    /// Our Via for a request sent on this hop (§16.6 step 8, §8.1.1.7).
    pub(crate) fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport.via_name(),
            fmt_addr(self.local)
        )
    }
}

impl Core {
    /// §16.3 step 4: one of the Vias is ours with the same loop hash → a loop, not a spiral.
    pub(crate) fn is_loop(&self, msg: &Message) -> bool {
        // Most requests carry no branch of ours at all: say so without parsing a Via.
        if !msg
            .headers
            .get_all(&HeaderName::Via)
            .any(|v| v.contains(OUR_BRANCH))
        {
            return false;
        }
        let Ok(vias) = msg.vias() else { return false };
        let mine: Vec<&Via> = vias
            .iter()
            .filter(|v| v.branch().is_some_and(|b| b.starts_with(OUR_BRANCH)))
            .collect();
        if mine.is_empty() {
            return false;
        }
        let hash = loop_hash(msg, &self.loop_salt);
        mine.iter().any(|v| {
            self.out.is_own(&v.host, v.port)
                && v.branch()
                    .is_some_and(|b| b[OUR_BRANCH.len()..].starts_with(&hash))
        })
    }

    /// A routed request (our own Route entries taken off, `own_route`), step by step:
    /// what it is and where it may go, who sent it, then who takes it.
    pub(crate) async fn handle_routed(
        self: Arc<Self>,
        mut req: ServerRequest,
        own_route: crate::OwnRoute,
    ) {
        if let Some(token) = &own_route.pool_flow {
            return self.from_pool_member(req, token).await;
        }
        let Some(mut target) = self.classify(&req, &own_route).await else {
            return;
        };
        // A member of the pool vouches for a sender it authenticated; anyone else
        // answers for themselves.
        let from_aor = match self.pool_sender(&mut req.message, &req.source) {
            crate::pool::Vouched::Sender(aor) => {
                target.vouched = true;
                aor
            }
            crate::pool::Vouched::Forged => {
                return self
                    .respond_warning(&req, 403, "pool sender assertion refused")
                    .await
            }
            crate::pool::Vouched::None => match self.authenticate_sender(&req).await {
                Some(aor) => aor,
                None => return,
            },
        };
        self.dispatch(req, target, from_aor).await
    }

    /// What the request is and whether it may go anywhere (§16.3): answered here (and
    /// `None`) when addressed to the server itself, out of hops, routed elsewhere, or
    /// aimed at nothing this server serves or a dialog of ours established.
    async fn classify(
        &self,
        req: &ServerRequest,
        own_route: &crate::OwnRoute,
    ) -> Option<Classified> {
        let msg = &req.message;
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let Some(ruri) = msg.request_uri().and_then(Uri::as_sip).cloned() else {
            self.respond(req, 416).await;
            return None;
        };
        // Requests addressed to the server itself (no user part).
        let addressed_to_us = ruri.user.is_none()
            && (self.out.is_own(&ruri.host, ruri.port)
                || match self.serves_domain(&ruri.host.to_string()).await {
                    Ok(served) => served,
                    Err(_) => {
                        self.respond_unavailable(req).await;
                        return None;
                    }
                });
        if addressed_to_us {
            match method {
                Method::Options => self.answer_options(req).await,
                _ => {
                    let mut resp = self.response(msg, 405);
                    resp.headers.push(HeaderName::Allow, "OPTIONS, REGISTER");
                    req.tx.respond(&resp).await
                }
            };
            return None;
        }
        // §16.3 step 3.
        match msg.header_u32(&HeaderName::MaxForwards) {
            Ok(Some(0)) => {
                self.respond(req, 483).await;
                return None;
            }
            Ok(_) => {}
            Err(_) => {
                self.respond(req, 400).await;
                return None;
            }
        }
        // Routes that remain after ours were removed point elsewhere: we relay nothing
        // off this server, but for a dialog whose route set goes on through another front
        // end of our pool (both record-routed it).
        let peer_route = if msg.headers.has(&HeaderName::Route) {
            match self.peer_route(msg) {
                Some(peer) if own_route.popped => Some(peer),
                _ => {
                    self.respond_warning(req, 403, "relaying denied").await;
                    return None;
                }
            }
        } else {
            None
        };
        // In-dialog request to a registered contact: send it over that device's flow.
        let in_dialog = msg.to_header().ok().is_some_and(|t| t.tag().is_some());
        let domain_target = ruri.user.is_some()
            && match self.serves_domain(&ruri.host.to_string()).await {
                Ok(served) => served,
                Err(_) => {
                    self.respond_unavailable(req).await;
                    return None;
                }
            };
        // In a dialog: the device's registered contact, or else, when our Record-Route's
        // cookie proves the Request-URI is a remote target this dialog established, that
        // target itself (a caller that never registered). Nothing else is relayed.
        let contact_binding = if let Some(peer) = &peer_route {
            Some(self.peer_binding(&ruri, peer))
        } else if in_dialog && !domain_target {
            self.location
                .binding_for_contact(&Uri::Sip(ruri.clone()), to_aor(msg).as_deref())
                .or_else(|| self.proven_peer(msg, &ruri, own_route))
        } else {
            None
        };
        if !domain_target && contact_binding.is_none() {
            self.respond_warning(req, 403, "relaying denied: domain not served here")
                .await;
            return None;
        }
        Some(Classified {
            method,
            ruri,
            in_dialog,
            domain_target,
            contact_binding,
            vouched: false,
            via_peer: peer_route.map(|(fe, _)| fe),
        })
    }

    /// Who sent it: a user of a domain served here, by MS-SIPAE signature or Digest
    /// (§22.3, 407), whose From matches the credentials and who is within their rate.
    /// Their AoR, or `None` when answered here.
    async fn authenticate_sender(&self, req: &ServerRequest) -> Option<String> {
        let msg = &req.message;
        // Authenticate the sender: a user of a domain we serve (§22.3, 407).
        let Ok(from) = msg.from_header() else {
            self.respond(req, 400).await;
            return None;
        };
        let Some(from_uri) = from.uri.as_sip() else {
            self.respond_warning(req, 403, "sender is not a SIP user")
                .await;
            return None;
        };
        let from_domain = from_uri.host.to_string();
        match self.serves_domain(&from_domain).await {
            Ok(true) => {}
            Ok(false) => {
                self.respond_warning(req, 403, "sender's domain is not served here")
                    .await;
                return None;
            }
            Err(_) => {
                self.respond_unavailable(req).await;
                return None;
            }
        }
        // A Lync client's signature on its association authenticates it (MS-SIPAE);
        // everyone else answers a Digest challenge.
        let sender = match self.check_signed_request(req) {
            SignedRequest::Valid(user) => user,
            SignedRequest::Invalid => {
                let refused = self.signature_refused(msg);
                {
                    req.tx.respond(&refused).await;
                    return None;
                }
            }
            SignedRequest::NoAssociation => {
                match self.authenticate_or_answer(req, &from_domain).await {
                    Some(user) => user,
                    None => return None,
                }
            }
        };
        let from_addr = from_uri
            .user_unescaped()
            .and_then(|u| Address::parse(&format!("{u}@{from_domain}")).ok());
        if from_addr.as_ref() != Some(&sender) {
            self.respond_warning(req, 403, "From does not match the credentials")
                .await;
            return None;
        }
        if !self.admit_user(req, &sender).await {
            return None;
        }
        Some(format!("sip:{sender}"))
    }

    /// Who takes it: an event service, the IM service (which sees every request in a
    /// dialog first), the dialog's other party, or the target user's devices.
    async fn dispatch(self: Arc<Self>, req: ServerRequest, target: Classified, from_aor: String) {
        // A conference another front end of the pool hosts: everything for it goes there.
        if target.domain_target && !target.vouched {
            let aor = target.ruri.aor();
            match self.elsewhere(&req.message, &aor) {
                Some(Ok(home)) => return self.to_member(req, home, from_aor),
                Some(Err(fe)) => {
                    return self
                        .respond_warning(&req, 480, &format!("front end {fe} hosting it is gone"))
                        .await
                }
                None => {}
            }
        }
        if matches!(
            target.method,
            Method::Subscribe | Method::Publish | Method::Service
        ) && target.domain_target
        {
            if let Some(answered) = self.to_event_service(&req, &target.ruri, &from_aor).await {
                return answered;
            }
        }
        if target.in_dialog {
            let (hook, msg, from) = (self.hook.clone(), req.message.clone(), from_aor.clone());
            return self
                .through_service(
                    req,
                    &from_aor,
                    Next::Route(Box::new(target)),
                    |relay| async move { hook.in_dialog(&msg, &from, relay).await },
                )
                .await;
        }
        self.route(req, target, from_aor, None).await
    }

    /// Routes a request no service answered: to a resource of the IM service, the
    /// dialog's other party, or the target user's devices (forked, §16.6). `settle`
    /// carries a relayed request's final status to the IM service holding it.
    pub(crate) async fn route(
        self: Arc<Self>,
        req: ServerRequest,
        target: Classified,
        from_aor: String,
        settle: Option<Settle>,
    ) {
        let Classified {
            method,
            ruri,
            in_dialog,
            domain_target: _,
            contact_binding,
            vouched,
            via_peer,
        } = target;
        if let Some(b) = contact_binding {
            let mut req = req;
            if let Some(fe) = via_peer {
                self.vouch(&mut req.message, &from_aor, fe);
            }
            return self.spawn_forward(req, vec![b], from_aor, None, settle);
        }
        let msg = &req.message;

        // Target: a GRUU (one device) or an AoR (all devices).
        let user = ruri.user_unescaped().unwrap_or_default();
        let domain = ruri.host.to_string();
        let aor_addr = match Address::parse(&format!("{user}@{domain}")) {
            Ok(a) => a,
            Err(_) => return self.respond(&req, 404).await,
        };
        let aor = format!("sip:{aor_addr}");
        let gr = ruri.params.get("gr");
        if gr.is_some() || user.starts_with("tgruu.") {
            let mut found = self.location.lookup_gruu(&aor, gr.flatten(), &user);
            // A public GRUU names its device wherever it is connected; a temporary one is
            // known only to the front end that made it.
            if let (None, Some(Some(instance))) = (&found, gr) {
                if !instance.is_empty() && !user.starts_with("tgruu.") {
                    match self.out.remote_gruu(&aor, instance).await {
                        Ok(b) => found = b.map(|b| (aor.clone(), b)),
                        Err(e) => {
                            tracing::error!(error = %e, "pool location unavailable");
                            return self.respond_unavailable(&req).await;
                        }
                    }
                }
            }
            return match found {
                Some((aor, b)) => {
                    if method == Method::Invite && !in_dialog {
                        if let Some(refusal) = self.hook.admit_invite(msg, &from_aor, &aor).await {
                            return self.answer_service(&req, refusal).await;
                        }
                    }
                    if method == Method::Message && !in_dialog {
                        let next = Next::Fork {
                            bindings: vec![b],
                            to_aor: aor.clone(),
                        };
                        return self
                            .message_to_service(req, from_aor, aor, Reach::Device, next)
                            .await;
                    }
                    self.spawn_forward(req, vec![b], from_aor, Some(aor), settle)
                }
                None => self.respond(&req, 480).await,
            };
        }
        if self.hook.serves(&aor) {
            let port = Answering::new(&self, &req);
            self.hook
                .to_service(
                    msg,
                    &from_aor,
                    &aor,
                    flow_of(&req.source),
                    Responder::new(&port),
                )
                .await;
            return port.finish().await;
        }
        // Event state (presence, and anything else published or subscribed to) is kept by
        // a service on the server, never forked to the user's own devices; an event no
        // service keeps is RFC 6665 §8.2.1 / RFC 3903 §6: 489 Bad Event.
        if !in_dialog && matches!(method, Method::Subscribe | Method::Publish) {
            let mut resp = self.response(msg, 489);
            resp.headers
                .push(HeaderName::AllowEvents, self.events.allow_events());
            resp.headers.push(
                HeaderName::Warning,
                "399 switchboard \"event package not served\"",
            );
            return req.tx.respond(&resp).await;
        }
        // In a pool one front end keeps each pair's conversation (its pager state, its
        // sessions, a Lync session bridged to pager mode, and their CDR): a MESSAGE or
        // INVITE that entered elsewhere goes there first.
        if self.out.pool.is_some()
            && matches!(method, Method::Message | Method::Invite)
            && !in_dialog
            && !vouched
            // An invitation into a conference belongs where the conference is (and that
            // is here, or it would not have been routed here).
            && self.hook.home_of(msg, &aor).is_none()
        {
            if let Some(owner) = self.pager_owner(&from_aor, &aor).await {
                let reachable = match owner.1.parse() {
                    Ok(addr) => self.out.member_reachable(addr).await,
                    Err(_) => false,
                };
                if reachable {
                    return self.to_member(req, owner, from_aor);
                }
                // It does not take connections (it died a moment ago, and is not reaped
                // yet): this front end keeps the conversation instead.
                tracing::info!(
                    fe = owner.0,
                    "pager conversation's keeper unreachable; kept here"
                );
            }
        }
        match self.users.find(&aor_addr).await {
            Ok(Some(u)) if u.enabled => {}
            Ok(_) => return self.respond(&req, 404).await,
            Err(e) => {
                tracing::error!(error = %e, "user directory unavailable");
                return self.respond_unavailable(&req).await;
            }
        }
        let bindings = match self.out.all_bindings(&aor).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "pool location unavailable");
                return self.respond_unavailable(&req).await;
            }
        };
        if method == Method::Message && !in_dialog {
            let reach = if bindings.is_empty() {
                Reach::Offline
            } else {
                Reach::Online
            };
            let next = Next::Fork {
                bindings,
                to_aor: aor.clone(),
            };
            return self
                .message_to_service(req, from_aor, aor, reach, next)
                .await;
        }
        if method == Method::Invite && !in_dialog {
            let session_im = bindings.iter().any(|b| self.out.speaks_lync(b));
            let answer = self
                .hook
                .before_invite(
                    msg,
                    &from_aor,
                    &aor,
                    !bindings.is_empty(),
                    session_im,
                    flow_of(&req.source),
                )
                .await;
            if let Some(answer) = answer {
                return self.answer_service(&req, answer).await;
            }
        }
        if bindings.is_empty() {
            return self.respond(&req, 480).await;
        }
        if method == Method::Invite && !in_dialog {
            if let Some(refusal) = self.hook.admit_invite(msg, &from_aor, &aor).await {
                return self.answer_service(&req, refusal).await;
            }
        }
        self.spawn_forward(req, bindings, from_aor, Some(aor), settle)
    }

    /// A pager-mode MESSAGE to the user `to_aor`: the IM service relays it (`next`) or
    /// answers it.
    async fn message_to_service(
        self: Arc<Self>,
        req: ServerRequest,
        from_aor: String,
        to_aor: String,
        reach: Reach,
        next: Next,
    ) {
        let (hook, msg, from) = (self.hook.clone(), req.message.clone(), from_aor.clone());
        self.through_service(req, &from_aor, next, |relay| async move {
            hook.message(&msg, &from, &to_aor, reach, relay).await
        })
        .await
    }

    /// Answers a request a service took, with the service's To tag, headers and body.
    async fn answer_service(&self, req: &ServerRequest, answer: ServiceAnswer) {
        let msg = &req.message;
        let tag = answer.to_tag.unwrap_or_else(|| self.to_tag(msg));
        let mut resp = msg.response(answer.status, Some(&tag));
        resp.headers
            .push(HeaderName::Server, self.config.server_name.clone());
        for (name, value) in answer.headers {
            resp.headers.push(HeaderName::from_wire(&name), value);
        }
        if let Some((content_type, body)) = answer.body {
            resp.headers.push(HeaderName::ContentType, content_type);
            resp.body = body;
        }
        req.tx.respond(&resp).await
    }

    /// SUBSCRIBE/PUBLISH for a user's address whose event a service keeps: answered by
    /// it. `None` when no service takes the event (the caller goes on routing).
    async fn to_event_service(
        &self,
        req: &ServerRequest,
        ruri: &sip_message::SipUri,
        from_aor: &str,
    ) -> Option<()> {
        let events = &self.events;
        let event = req
            .message
            .headers
            .get(&HeaderName::Event)
            .map(|e| {
                e.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            // RFC 6665 §8.2.1: no Event header means the `PINT` package; not ours.
            .unwrap_or_default();
        // SERVICE (MS-SIP §3.10) carries a Lync client's own presence, permissions and
        // contact-list edits to the service that keeps them; it has no Event header.
        let service = req.message.method() == Some(&Method::Service);
        if !service && !events.serves_event(&event) {
            return None;
        }
        let user = ruri.user_unescaped().unwrap_or_default();
        let Ok(to) = Address::parse(&format!("{user}@{}", ruri.host)) else {
            self.respond(req, 404).await;
            return Some(());
        };
        let to_aor = format!("sip:{to}");
        if self.hook.serves(&to_aor) {
            // A conference: the IM service answers for its own event packages.
            return None;
        }
        match self.users.find(&to).await {
            Ok(Some(u)) if u.enabled => {}
            Ok(_) => {
                self.respond(req, 404).await;
                return Some(());
            }
            Err(e) => {
                tracing::error!(error = %e, "user directory unavailable");
                self.respond_unavailable(req).await;
                return Some(());
            }
        }
        let port = Answering::new(self, req);
        events
            .handle(
                &req.message,
                from_aor,
                &to_aor,
                flow_of(&req.source),
                Responder::new(&port),
            )
            .await;
        port.finish().await;
        Some(())
    }

    /// Accounts one request of an authenticated user; over the user's rate it is
    /// answered 503 with Retry-After (false).
    pub(crate) async fn admit_user(&self, req: &ServerRequest, user: &Address) -> bool {
        if self
            .layer
            .transports()
            .guard()
            .admit_user(&user.to_string())
        {
            return true;
        }
        tracing::info!(%user, "request over the user's rate refused");
        let mut resp = self.response(&req.message, 503);
        resp.headers.push(HeaderName::from_wire("Retry-After"), "5");
        resp.headers.push(
            HeaderName::Warning,
            "399 switchboard \"too many requests from this user; slow down\"",
        );
        req.tx.respond(&resp).await;
        false
    }

    /// Where an in-dialog request whose Request-URI is no registered contact goes: the
    /// flow of the dialog's other party, as our Record-Route's cookie proves it. The
    /// Request-URI travels unchanged; it never chooses the address.
    pub(crate) fn proven_peer(
        &self,
        msg: &Message,
        ruri: &sip_message::SipUri,
        own_route: &crate::OwnRoute,
    ) -> Option<Binding> {
        let flow = self.cookie_peer_flow(msg, own_route)?;
        Some(self.pinned_target(ruri, flow))
    }

    /// The other party's flow, from the cookie our Record-Route carried in `msg`.
    pub(crate) fn cookie_peer_flow(
        &self,
        msg: &Message,
        own_route: &crate::OwnRoute,
    ) -> Option<crate::cookie::FlowKey> {
        let cookie = own_route.cookie.as_deref()?;
        let from_tag = msg.from_header().ok()?.tag()?.to_owned();
        let to_tag = msg.to_header().ok()?.tag()?.to_owned();
        self.cookies
            .peer_flow(cookie, msg.call_id().unwrap_or(""), &from_tag, &to_tag)
    }

    /// A binding for `ruri` reached over `flow` only.
    pub(crate) fn pinned_target(
        &self,
        ruri: &sip_message::SipUri,
        flow: crate::cookie::FlowKey,
    ) -> Binding {
        let mut b = crate::outbound::Paths::unregistered_binding(ruri);
        let mut conn = b.flow.conn();
        conn.transport = transport_of(flow.transport);
        conn.remote = flow.remote;
        if let Some(local) = self.layer.transports().listening(flow.transport) {
            conn.local = local;
        }
        b.flow = Flow::new(b.flow.fe(), conn);
        b.pinned = true;
        b
    }

    /// Adds the callee's flow (where the dialog-creating request went, and its 2xx came
    /// from) to the cookie of our Record-Route entries in that 2xx (RFC 3261 §16.7 step 4
    /// lets a proxy rewrite its own Record-Route in responses).
    pub(crate) fn seal_record_routes(
        &self,
        mut resp: Message,
        callee: crate::cookie::FlowKey,
    ) -> Message {
        let Ok(mut routes) = resp.name_addrs(&HeaderName::RecordRoute) else {
            return resp;
        };
        let call_id = resp.call_id().unwrap_or("").to_owned();
        let Some(caller_tag) = resp
            .from_header()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned))
        else {
            return resp;
        };
        let mut changed = false;
        for r in &mut routes {
            let Some(u) = r.uri.as_sip_mut() else {
                continue;
            };
            if !self.out.is_own(&u.host, u.port) {
                continue;
            }
            let Some(cookie) = u.params.value(crate::cookie::ROUTE_PARAM) else {
                continue;
            };
            if !self.cookies.dialog_ok(cookie, &call_id, &caller_tag) {
                continue;
            }
            let sealed = self
                .cookies
                .with_callee(cookie, &call_id, &caller_tag, callee);
            u.params.set(crate::cookie::ROUTE_PARAM, Some(&sealed));
            changed = true;
        }
        if changed {
            resp.headers.remove(&HeaderName::RecordRoute);
            for r in routes {
                resp.headers.push(HeaderName::RecordRoute, r.to_string());
            }
        }
        resp
    }

    /// §16.6: the request for one branch.
    fn branch_request(
        &self,
        incoming: &Message,
        in_source: &Source,
        b: &Binding,
        hop: &Hop,
        hash: &str,
        idx: usize,
    ) -> (Message, String) {
        let mut out = incoming.clone();
        let mut target_uri = b.contact.uri.clone();
        if let Some(u) = target_uri.as_sip_mut() {
            u.headers = None;
        }
        if let sip_message::StartLine::Request { uri, .. } = &mut out.start {
            *uri = target_uri;
        }
        let mf = incoming
            .header_u32(&HeaderName::MaxForwards)
            .ok()
            .flatten()
            .unwrap_or(70);
        out.headers
            .set(HeaderName::MaxForwards, mf.saturating_sub(1).to_string());
        let method = incoming.method().cloned().unwrap_or(Method::Options);
        let in_dialog = incoming.to_header().ok().is_some_and(|t| t.tag().is_some());
        if !in_dialog && matches!(method, Method::Invite | Method::Subscribe | Method::Refer) {
            // §16.6 step 4, with double Record-Route when the transports differ (RFC 5658).
            // The cookie proves later requests in this dialog came through it.
            let caller_tag = incoming
                .from_header()
                .ok()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default();
            let cookie = self.cookies.route_cookie(
                incoming.call_id().unwrap_or(""),
                &caller_tag,
                crate::cookie::FlowKey {
                    transport: in_source.transport,
                    remote: in_source.remote,
                },
            );
            let rr = |local: SocketAddr, t: TransportKind| {
                format!(
                    "<sip:{};transport={};lr;{}={cookie}>",
                    fmt_addr(local),
                    t.param(),
                    crate::cookie::ROUTE_PARAM
                )
            };
            let out_rr = rr(hop.local, hop.transport);
            if in_source.transport != hop.transport || in_source.local.port() != hop.local.port() {
                let in_local = if in_source.local.ip().is_unspecified() {
                    SocketAddr::new(
                        self.layer.transports().local_ip_for(in_source.remote.ip()),
                        in_source.local.port(),
                    )
                } else {
                    in_source.local
                };
                let in_rr = rr(in_local, in_source.transport);
                out.headers.insert_first(HeaderName::RecordRoute, in_rr);
            }
            out.headers.insert_first(HeaderName::RecordRoute, out_rr);
        }
        // §16.6 step 8: our Via on top, with a branch carrying the loop hash and a MAC of
        // the Via below (the only place a stray response to it may be relayed).
        let mac = incoming
            .top_via()
            .map(|v| self.cookies.branch_mac(&v))
            .unwrap_or_default();
        let branch = format!("{OUR_BRANCH}{hash}.{idx}.{mac}");
        out.headers.push_front(HeaderName::Via, hop.via(&branch));
        self.out.route_path(hop, &mut out);
        // Credentials for our realm stop here (§22.3): the next hop cannot use them.
        out.headers.remove(&HeaderName::ProxyAuthorization);
        strip_hop_signatures(&mut out);
        (out, branch)
    }

    /// Forwarding waits for devices to answer: it runs as its own task so the connection
    /// it came from keeps being read.
    pub(crate) fn spawn_forward(
        self: Arc<Self>,
        req: ServerRequest,
        bindings: Vec<Binding>,
        from_aor: String,
        to_aor: Option<String>,
        settle: Option<Settle>,
    ) {
        tokio::spawn(self.forward(req, bindings, from_aor, to_aor, settle));
    }

    /// Forks `req` to `bindings` in parallel and returns the best response (§16.7). A
    /// non-INVITE's final status goes to the IM service holding it (`settle`) first.
    pub(crate) async fn forward(
        self: Arc<Self>,
        req: ServerRequest,
        bindings: Vec<Binding>,
        from_aor: String,
        to_aor: Option<String>,
        mut settle: Option<Settle>,
    ) {
        let method = req.message.method().cloned().unwrap_or(Method::Options);
        let is_invite = method == Method::Invite;
        let record_routed = !in_dialog_request(&req.message)
            && matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        let hash = loop_hash(&req.message, &self.loop_salt);
        let (ev_tx, mut ev_rx) = mailbox::<(usize, ClientEvent)>();
        let mut branches: Vec<Branch> = Vec::new();
        for b in &bindings {
            let hop = self.out.hop_for(b);
            if self.out.is_own_hop(&hop) {
                continue;
            }
            let idx = branches.len();
            let (out, _branch) =
                self.branch_request(&req.message, &req.source, b, &hop, &hash, idx);
            self.layer
                .send_request_tagged(out.clone(), hop.target, idx, ev_tx.clone());
            branches.push(Branch {
                request: out,
                hop,
                provisional: false,
                done: false,
            });
        }
        drop(ev_tx);
        // A dialog-creating INVITE to a user that gets no 2xx: the IM service gives back
        // what it set aside for the session (`admit_invite`).
        let fails_for = to_aor
            .clone()
            .filter(|_| is_invite && !in_dialog_request(&req.message));
        if branches.is_empty() {
            if let Some(to) = &fails_for {
                self.hook.invite_failed(&req.message, &from_aor, to).await;
            }
            return self.respond(&req, 480).await;
        }
        if is_invite {
            // §16.2: a stateful proxy answers INVITE with 100 Trying at once.
            let trying = req.message.response(100, None);
            req.tx.respond(&trying).await;
        }
        let cancel = Arc::new(Notify::new());
        // Only an INVITE can be cancelled (§9.1): only its key is worth a Via parse.
        let key = is_invite.then(|| invite_key(&req.message));
        if let Some(key) = &key {
            self.pending_invites
                .lock()
                .insert(key.clone(), cancel.clone());
        }
        let mut best: Option<Message> = None;
        let mut got_2xx = false;
        let mut cancelled = false;
        let mut pending = branches.len();
        while pending > 0 {
            let (idx, ev) = tokio::select! {
                ev = ev_rx.recv() => match ev { Some(e) => e, None => break },
                _ = cancel.notified(), if !cancelled => {
                    cancelled = true;
                    self.cancel_branches(&mut branches);
                    continue;
                }
            };
            let (resp, came_over) = match ev {
                ClientEvent::Response(r) => (r.message, Some(r.source)),
                ClientEvent::Timeout => (synthetic(&branches[idx].request, 408), None),
                ClientEvent::TransportError(e) => {
                    tracing::debug!(error = %e, "branch failed");
                    (synthetic(&branches[idx].request, 503), None)
                }
            };
            let status = resp.status().unwrap_or(500);
            let resp = if let (true, Some(flow)) =
                (record_routed && status > 100 && status < 300, came_over)
            {
                // The callee is where its answer came from (a registration's connection
                // may have closed, and the request gone to its Contact instead).
                self.seal_record_routes(
                    resp,
                    crate::cookie::FlowKey {
                        transport: flow.transport,
                        remote: flow.remote,
                    },
                )
            } else {
                resp
            };
            if status < 200 {
                branches[idx].provisional = true;
                if (got_2xx || cancelled) && is_invite {
                    // A provisional after we decided: now the branch can be cancelled.
                    let c = cancel_for(&branches[idx].request);
                    let _ = self.layer.send_request(c, branches[idx].hop.target);
                }
                if status > 100 && !got_2xx {
                    if let Some(up) = strip_our_via(resp) {
                        req.tx.respond(&up).await;
                    }
                }
                continue;
            }
            if !branches[idx].done {
                branches[idx].done = true;
                pending -= 1;
            }
            if (200..300).contains(&status) {
                let first = !got_2xx;
                got_2xx = true;
                // The IM service learns of the outcome before the sender does, so the
                // sender's next request (ACK, MESSAGE in the new dialog) finds it ready.
                if first && is_invite && !in_dialog_request(&req.message) {
                    if let Some(to) = to_aor.as_deref() {
                        self.hook
                            .on_invite_answered(&req.message, &resp, &from_aor, to)
                            .await;
                    }
                }
                if !is_invite && first {
                    if let Some(settle) = settle.take() {
                        settle.settled(status).await;
                    }
                }
                if let Some(up) = strip_our_via(resp) {
                    if first || is_invite {
                        req.tx.respond(&up).await;
                    }
                }
                if first && is_invite {
                    self.cancel_branches(&mut branches);
                }
                continue;
            }
            best = Some(pick_best(best, resp));
        }
        if let Some(key) = &key {
            self.pending_invites.lock().remove(key);
        }
        if got_2xx {
            return;
        }
        if let Some(to) = &fails_for {
            self.hook.invite_failed(&req.message, &from_aor, to).await;
        }
        // §16.7 step 9: the chosen response goes upstream without our Via.
        let mut resp = best
            .and_then(strip_our_via)
            .unwrap_or_else(|| self.response(&req.message, 408));
        let mut status = resp.status().unwrap_or(500);
        if status == 503 {
            // §16.7 step 6: a 503 from downstream becomes 500 upstream.
            status = 500;
            resp = self.response(&req.message, 500);
        } else if cancelled && is_invite && status != 487 {
            status = 487;
            resp = self.response(&req.message, 487);
        }
        if !is_invite {
            if let Some(settle) = settle.take() {
                settle.settled(status).await;
            }
        }
        req.tx.respond(&resp).await;
    }

    fn cancel_branches(&self, branches: &mut [Branch]) {
        for Branch {
            request: out,
            hop,
            provisional,
            done,
        } in branches.iter()
        {
            // §9.1: CANCEL only branches that answered provisionally and are not done.
            if *provisional && !*done {
                let _ = self.layer.send_request(cancel_for(out), hop.target);
            }
        }
    }

    /// ACK for a 2xx (no transaction, §16.7 / §13.2.2.4): forwarded statelessly to the
    /// device over its flow — only when our Record-Route's cookie proves the dialog is
    /// one we record-routed (an ACK cannot be challenged, so the cookie is all that keeps
    /// a stranger from using us as a relay).
    pub(crate) async fn forward_ack(&self, ack: Inbound) {
        let mut msg = ack.message;
        let own_route = self.pop_own_routes(&mut msg);
        let Some(b) = self.ack_target(&msg, &own_route) else {
            tracing::debug!(source = %ack.source.remote, "ACK for no dialog of ours dropped");
            return;
        };
        let hop = self.out.hop_for(&b);
        let mf = msg
            .header_u32(&HeaderName::MaxForwards)
            .ok()
            .flatten()
            .unwrap_or(70);
        if mf == 0 {
            return;
        }
        msg.headers
            .set(HeaderName::MaxForwards, (mf - 1).to_string());
        strip_hop_signatures(&mut msg);
        msg.headers.push_front(
            HeaderName::Via,
            format!(
                "SIP/2.0/{} {};branch={}",
                hop.transport.via_name(),
                fmt_addr(hop.local),
                new_branch()
            ),
        );
        self.layer.send_stateless(hop.target, &msg).await;
    }

    /// Where an ACK goes, when anything proves it may: on to another front end of the
    /// pool when the dialog's route set goes on through it and our cookie proves the
    /// dialog; to a device here a member's flow token names; else to a registered contact
    /// or the callee's flow our cookie names (sealed into the 2xx's Record-Route: a cookie
    /// of one dialog opens no other door).
    fn ack_target(&self, msg: &Message, own_route: &crate::OwnRoute) -> Option<Binding> {
        let Some(Uri::Sip(ruri)) = msg.request_uri().cloned() else {
            return None;
        };
        if msg.headers.has(&HeaderName::Route) {
            let peer = self.peer_route(msg)?;
            self.cookie_peer_flow(msg, own_route)?;
            return Some(self.peer_binding(&ruri, &peer));
        }
        if let Some(token) = &own_route.pool_flow {
            return match self.pool_target(msg, token) {
                crate::pool::PoolTarget::Device(b) => Some(*b),
                _ => None,
            };
        }
        let peer = self.cookie_peer_flow(msg, own_route)?;
        Some(
            self.location
                .binding_for_contact(&Uri::Sip(ruri.clone()), to_aor(msg).as_deref())
                .or_else(|| self.out.gruu_binding(&ruri))
                .unwrap_or_else(|| self.pinned_target(&ruri, peer)),
        )
    }

    /// A response with no client transaction (a retransmitted 2xx to an INVITE, the only
    /// response that legitimately outlives its transaction): forwarded statelessly to the
    /// next Via (§16.7, §18.2.2) when our branch's MAC proves that Via is the one the
    /// request came with. Anything else is dropped: relaying a response to whatever Via
    /// it names would make us a reflector.
    pub(crate) async fn forward_stray_response(&self, resp: Inbound) {
        let msg = resp.message;
        let is_invite_2xx = msg.status().is_some_and(|s| (200..300).contains(&s))
            && msg.cseq().is_ok_and(|c| c.method == Method::Invite);
        if !is_invite_2xx {
            return;
        }
        let Ok(vias) = msg.vias() else { return };
        let (Some(top), Some(next)) = (vias.first(), vias.get(1)) else {
            return;
        };
        let Some(mac) = top
            .branch()
            .and_then(|b| b.strip_prefix(OUR_BRANCH))
            .and_then(|rest| rest.split('.').nth(2))
        else {
            return;
        };
        if !self.out.is_own(&top.host, top.port)
            || !crate::cookie::constant_eq(mac, &self.cookies.branch_mac(next))
        {
            tracing::debug!(source = %resp.source.remote, "stray response not ours dropped");
            return;
        }
        let msg = self.seal_record_routes(
            msg,
            crate::cookie::FlowKey {
                transport: resp.source.transport,
                remote: resp.source.remote,
            },
        );
        let Some(up) = strip_our_via(msg) else { return };
        let Ok(next) = up.top_via() else { return };
        let Some(kind) = TransportKind::from_name(&next.transport) else {
            return;
        };
        let ip = next
            .params
            .value("received")
            .and_then(|r| r.trim_matches(['[', ']']).parse().ok())
            .or(match &next.host {
                Host::V4(a) => Some(std::net::IpAddr::V4(*a)),
                Host::V6(a) => Some(std::net::IpAddr::V6(*a)),
                Host::Domain(_) => None,
            });
        let Some(ip) = ip else { return };
        let port = next
            .params
            .value("rport")
            .and_then(|p| p.parse().ok())
            .or(next.port)
            .unwrap_or(5060);
        self.layer
            .send_stateless(Target::Addr(kind, SocketAddr::new(ip, port)), &up)
            .await;
    }
}

/// The AoR a request's To names (`sip:user@domain`), the user a contact lookup is for.
pub(crate) fn to_aor(msg: &Message) -> Option<String> {
    let to = msg.to_header().ok()?;
    let uri = to.uri.as_sip()?;
    let user = uri.user_unescaped()?;
    Address::parse(&format!("{user}@{}", uri.host))
        .ok()
        .map(|a| format!("sip:{a}"))
}

pub(crate) fn host_of(a: SocketAddr) -> Host {
    match a.ip() {
        std::net::IpAddr::V4(v) => Host::V4(v),
        std::net::IpAddr::V6(v) => Host::V6(v),
    }
}

fn fmt_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

fn in_dialog_request(msg: &Message) -> bool {
    msg.to_header().ok().is_some_and(|t| t.tag().is_some())
}

/// Removes our top Via from a response (§16.7 step 3); `None` if nothing is left.
fn strip_our_via(mut resp: Message) -> Option<Message> {
    resp.headers.pop_first_value(&HeaderName::Via)?;
    strip_hop_signatures(&mut resp);
    resp.headers.has(&HeaderName::Via).then_some(resp)
}

/// A response we make up for a branch (timeout, transport failure), §16.7 step 5/6.
fn synthetic(req: &Message, status: u16) -> Message {
    req.response(status, Some("sb-synthetic"))
}

/// §16.7 step 6: 6xx wins; otherwise the lowest class; within a class the first seen.
fn pick_best(current: Option<Message>, new: Message) -> Message {
    let Some(cur) = current else { return new };
    let (a, b) = (cur.status().unwrap_or(500), new.status().unwrap_or(500));
    let rank = |s: u16| if s >= 600 { 0 } else { s / 100 };
    if rank(b) < rank(a) || (rank(b) == rank(a) && a == 408 && b != 408) {
        new
    } else {
        cur
    }
}
