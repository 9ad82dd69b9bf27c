//! The router's outbound side: requests the server sends on its own behalf, for the
//! services (the [`Deliverer`] they are given): a stored MESSAGE delivered to a user's
//! devices when they sign in (RFC 3428 as a UAC, forked like any request to an AoR),
//! requests in dialogs a service holds (NOTIFY, BYE, conference MESSAGEs) and Lync
//! conference invitations; and the path logic the router shares with it (which flow
//! reaches a binding, which addresses are our own).
//!
//! It is built before the services, from what it needs (the transaction layer, the
//! location service, our host names), and the router ([`crate::Core`]) is built after
//! them around it: no service holds the router, so the run-time graph has no ring.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use sip_message::{HeaderName, Host, Message, Method, NameAddr, StartLine, Uri};
use sip_transaction::mailbox::mailbox;
use sip_transaction::{new_branch, ClientEvent, TransactionLayer};
use sip_transport::{ConnectionId, Source, Target, TransportKind};
use switchboard_core::seam::{Deliverer, Delivery, Flow};
use switchboard_registrar::{Binding, Location};

use crate::flow::{flow_of, kind_of, source_of};
use crate::routing::{host_of, Hop};
use crate::ProxyConfig;

/// The outbound side (see the module header). Cheap to clone: every clone is the same
/// state, which the router shares.
#[derive(Clone)]
pub struct Outbound(Arc<Paths>);

/// What the outbound side and the router both read: the way to a binding, and what
/// names this server.
pub struct Paths {
    pub(crate) layer: TransactionLayer,
    pub(crate) location: Arc<Location>,
    /// Extra host names that mean "this server" (`ProxyConfig::hostnames`).
    hostnames: Vec<String>,
    /// Addresses that are "us" (learned from the listeners, [`Outbound::learn_listeners`]).
    own_addrs: RwLock<Vec<SocketAddr>>,
    /// Which IP addresses are this host's (asked of the kernel once each).
    local_ips: Mutex<HashMap<IpAddr, bool>>,
    /// The association each signed-in Lync connection signs on (by `opaque`): the router
    /// writes it at sign-in, and Lync-only requests go to those connections only.
    pub(crate) sa_flows: RwLock<HashMap<ConnectionId, String>>,
    /// Connections another member of the pool sent vouched-for requests over, with its
    /// id: requests a service here sends back over one are vouched for to that member.
    pub(crate) member_links: RwLock<HashMap<ConnectionId, u32>>,
    /// The pool this front end belongs to (none: a standalone server).
    pub(crate) pool: Option<crate::pool::PoolLink>,
    /// This front end's registrations not yet written to the pool.
    pub(crate) registrations: Arc<crate::pool::Registrations>,
    /// What probing other members found (`Paths::member_reachable`).
    pub(crate) probes: crate::pool::Probes,
}

impl Deref for Outbound {
    type Target = Paths;
    fn deref(&self) -> &Paths {
        &self.0
    }
}

impl Outbound {
    /// The outbound side of a standalone server (`pool` none) or of a pool's front end.
    pub fn new(
        layer: TransactionLayer,
        location: Arc<Location>,
        config: &ProxyConfig,
        pool: Option<crate::pool::PoolLink>,
    ) -> Self {
        let out = Outbound(Arc::new(Paths {
            layer,
            location,
            hostnames: config.hostnames.clone(),
            own_addrs: RwLock::new(Vec::new()),
            local_ips: Mutex::new(HashMap::new()),
            sa_flows: RwLock::new(HashMap::new()),
            member_links: RwLock::new(HashMap::new()),
            pool,
            registrations: Default::default(),
            probes: Default::default(),
        }));
        if out.pool.is_some() {
            tokio::spawn(crate::pool::write_registrations(
                Arc::downgrade(&out.0),
                out.registrations.clone(),
            ));
        }
        out
    }

    /// This front end's pool, if it is one.
    pub fn pool(&self) -> Option<&switchboard_pool::Pool> {
        self.pool.as_ref().map(|l| &l.pool)
    }

    /// Learns our listening addresses (once the listeners are bound): they are "us".
    pub(crate) fn learn_listeners(&self) {
        for kind in [TransportKind::Udp, TransportKind::Tcp, TransportKind::Tls] {
            if let Some(a) = self.layer.transports().listening(kind) {
                self.own_addrs.write().push(a);
            }
        }
        if let Some(link) = &self.pool {
            self.own_addrs.write().push(link.pool.config().sip_addr);
        }
    }
}

impl Paths {
    /// The path to a binding. Over a stream: the connection it registered on while that is
    /// open (connection reuse: the only way to reach NATed and TLS clients), else its
    /// Contact when that is on the host the REGISTER came from. Over UDP: its Contact when that is on the address the REGISTER came from,
    /// else the REGISTER's source address (a Contact behind NAT, `;alias` style).
    pub(crate) fn hop_for(&self, b: &Binding) -> Hop {
        if let Some(hop) = self.path_hop(b) {
            return hop;
        }
        let flow: Source = source_of(b.flow);
        let contact = b.contact_addr().map(|(t, a)| (kind_of(t), a));
        let (target, transport) = match flow.connection {
            // Its flow's address (an open connection to it, or a new one), whatever the
            // Contact says.
            _ if b.pinned => (Target::Addr(flow.transport, flow.remote), flow.transport),
            Some(id) => {
                // Never another host than the one that registered (see
                // `Binding::reachable_without_flow`).
                let fallback =
                    contact.filter(|(_, a)| *a != flow.remote && a.ip() == flow.remote.ip());
                (Target::Connection { id, fallback }, flow.transport)
            }
            None => match contact {
                // A stream contact that never registered over a connection (a dialog's
                // remote target): an open connection to it, or a new one.
                Some((kind, a)) if kind != TransportKind::Udp && flow.transport == kind => {
                    (Target::Addr(kind, a), kind)
                }
                Some((TransportKind::Udp, a)) if a.ip() == flow.remote.ip() => {
                    (Target::Addr(TransportKind::Udp, a), TransportKind::Udp)
                }
                _ => (
                    Target::Addr(TransportKind::Udp, flow.remote),
                    TransportKind::Udp,
                ),
            },
        };
        // Via and Record-Route name our listening address for the transport.
        let listen = self
            .layer
            .transports()
            .listening(transport)
            .unwrap_or(flow.local);
        let local = if listen.ip().is_unspecified() {
            SocketAddr::new(
                self.layer.transports().local_ip_for(flow.remote.ip()),
                listen.port(),
            )
        } else {
            listen
        };
        Hop {
            target,
            transport,
            local,
            path: None,
        }
    }

    /// A binding reached through another front end (its path): over TCP to that front
    /// end's pool-internal address.
    fn path_hop(&self, b: &Binding) -> Option<Hop> {
        let path = b.path.as_ref()?;
        let addr = b.flow.conn().remote;
        let local = self
            .pool
            .as_ref()
            .map(|l| l.pool.config().sip_addr)
            .or_else(|| self.layer.transports().listening(TransportKind::Tcp))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Some(Hop {
            target: Target::Addr(TransportKind::Tcp, addr),
            transport: TransportKind::Tcp,
            local,
            path: Some(path.clone()),
        })
    }

    /// Puts the Route to a binding's path (a device on another front end) on `m`.
    pub(crate) fn route_path(&self, hop: &Hop, m: &mut Message) {
        if let Some(path) = &hop.path {
            if let Some(route) = self.path_route(path, m.call_id().unwrap_or("")) {
                m.headers.push_front(HeaderName::Route, route);
            }
        }
    }

    /// A Contact naming this server itself would make the request loop.
    pub(crate) fn is_own_hop(&self, hop: &Hop) -> bool {
        match hop.target {
            Target::Addr(_, _) if hop.path.is_some() => false,
            Target::Addr(_, a) => self.is_own(&host_of(a), Some(a.port())),
            Target::Connection { .. } => false,
        }
    }

    /// A dialog's remote target reached over the flow the dialog came from (whatever
    /// its Contact says: it may name no IP address at all, e.g. `*.invalid`).
    pub(crate) fn flow_target(ruri: &sip_message::SipUri, flow: Source) -> Binding {
        // Routed by the flow alone: a contact naming the flow's far end, so a Contact
        // without a port (or naming a host of ours, like a GRUU) cannot send it elsewhere.
        let mut via_flow = ruri.clone();
        via_flow.host = host_of(flow.remote);
        via_flow.port = Some(flow.remote.port());
        via_flow
            .params
            .set("transport", Some(flow.transport.param()));
        let mut b = Self::unregistered_binding(&via_flow);
        b.flow = flow_of(&flow);
        b
    }

    /// The registered device a GRUU (RFC 5627) Request-URI names, if it is one of ours.
    pub(crate) fn gruu_binding(&self, ruri: &sip_message::SipUri) -> Option<Binding> {
        let gr = ruri.params.get("gr");
        let user = ruri.user_unescaped().unwrap_or_default();
        if gr.is_none() && !user.starts_with("tgruu.") {
            return None;
        }
        let aor = format!("sip:{user}@{}", ruri.host);
        self.location
            .lookup_gruu(&aor, gr.flatten(), &user)
            .map(|(_, b)| b)
    }

    pub(crate) fn unregistered_binding(ruri: &sip_message::SipUri) -> Binding {
        let contact = NameAddr::new(Uri::Sip(ruri.clone()));
        Binding {
            contact_key: contact.uri.to_string(),
            contact,
            expires_at: tokio::time::Instant::now(),
            call_id: String::new(),
            cseq: 0,
            instance: None,
            reg_id: None,
            flow: flow_of(&Source {
                transport: TransportKind::Udp,
                remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                local: SocketAddr::from(([0, 0, 0, 0], 0)),
                connection: None,
            }),
            temp_gruu: None,
            pinned: false,
            path: None,
        }
    }

    /// Does this host (and port) name this server itself?
    pub(crate) fn is_own(&self, host: &Host, port: Option<u16>) -> bool {
        let ip: Option<IpAddr> = match host {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Domain(d) => {
                if self.hostnames.iter().any(|h| h.eq_ignore_ascii_case(d)) {
                    return port.is_none()
                        || self.own_addrs.read().iter().any(|a| Some(a.port()) == port);
                }
                None
            }
        };
        let Some(ip) = ip else { return false };
        let addrs = self.own_addrs.read();
        addrs.iter().any(|a| {
            let ip_ok = a.ip() == ip
                || (a.ip().is_unspecified() && (ip.is_loopback() || self.is_local_ip(ip)));
            let port_ok = match port {
                Some(p) => a.port() == p,
                None => a.port() == 5060 || a.port() == 5061,
            };
            ip_ok && port_ok
        })
    }

    fn is_local_ip(&self, ip: IpAddr) -> bool {
        if let Some(known) = self.local_ips.lock().get(&ip) {
            return *known;
        }
        // An address of one of our interfaces: binding a socket to it succeeds.
        let local = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
        let mut cache = self.local_ips.lock();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(ip, local);
        local
    }

    /// Does `flow` carry a Lync security association (its device speaks the Lync dialect)?
    pub(crate) fn on_association(&self, flow: Flow) -> bool {
        source_of(flow)
            .connection
            .is_some_and(|id| self.sa_flows.read().contains_key(&id))
    }
}

impl Outbound {
    /// Sends `d` to every device of `d.to` in parallel; the first 2xx wins, else the
    /// lowest final status (408 for no answer, 480 for no device).
    pub async fn originate_message(self, d: Delivery) -> u16 {
        let bindings = match self.all_bindings(&d.to).await {
            Ok(b) => b,
            Err(_) => return 503,
        };
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
            self.route_path(&hop, &mut m);
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

impl Outbound {
    /// Sends a request the server originates to a registered device: the contact (or
    /// GRUU) the Request-URI names, over its flow. Nothing else: an address a client
    /// merely wrote in a Contact is reached only over the flow it came from
    /// ([`Outbound::send_own_request_on`]), so no client can aim us at a third party.
    pub async fn send_own_request(self, request: Message) -> u16 {
        self.send_own_request_on(request, None).await
    }

    /// [`Outbound::send_own_request`], falling back to `flow` (where the dialog came from)
    /// when the Request-URI is not a registered contact.
    pub async fn send_own_request_on(self, mut request: Message, flow: Option<Source>) -> u16 {
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
            .or_else(|| flow.map(|f| Paths::flow_target(&target, f)));
        let Some(b) = binding else { return 480 };
        let hop = self.hop_for(&b);
        // Over a link to another front end of the pool (the dialog came through it): that
        // front end is told this service sends it.
        if let Some(fe) = self.member_on(b.flow) {
            let from = request
                .from_header()
                .map(|f| f.uri.to_string())
                .unwrap_or_default();
            self.vouch(&mut request, &from, fe);
        }
        self.route_path(&hop, &mut request);
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

impl Outbound {
    /// Invites `to`'s Lync devices (those on a security association) into the conference
    /// `focus` with an `ms-conf-invite` INVITE from `from` (MS-CONFIM §3.2.5.1), the
    /// client then joining by itself; acknowledges a 2xx (§13.2.2.4). The first 2xx wins;
    /// 480 when `to` has no Lync device.
    pub async fn originate_conference_invite(
        self,
        from: String,
        to: String,
        focus: String,
        body: bytes::Bytes,
    ) -> u16 {
        let bindings: Vec<_> = match self.all_bindings(&to).await {
            Ok(b) => b,
            Err(_) => return 503,
        }
        .into_iter()
        .filter(|b| self.speaks_lync(b))
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
            self.route_path(&hop, &mut m);
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
                            self.route_path(hop, &mut ack);
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

impl Deliverer for Outbound {
    fn invite_to_conference(
        &self,
        from: String,
        to: String,
        focus: String,
        body: bytes::Bytes,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(
            self.clone()
                .originate_conference_invite(from, to, focus, body),
        )
    }

    fn send_request(
        &self,
        request: Message,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(self.clone().send_own_request(request))
    }

    fn send_request_on(
        &self,
        request: Message,
        flow: Flow,
    ) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(
            self.clone()
                .send_own_request_on(request, Some(source_of(flow))),
        )
    }

    fn deliver(&self, d: Delivery) -> Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        Box::pin(self.clone().originate_message(d))
    }
}
