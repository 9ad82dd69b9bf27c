//! # switchboard-proxy: the SIP core of a Switchboard front end
//!
//! The transaction user that every request reaches. In order (RFC 3261 §16.3–§16.7):
//! 1. request validation: URI scheme (416), Max-Forwards (483), Proxy-Require (420), loop
//!    detection (482), our own Route entries removed (§16.4);
//! 2. REGISTER → authentication (401) → the registrar ([`switchboard_registrar`]);
//! 3. OPTIONS addressed to the server → answered here (§11.2);
//! 4. everything else → authentication of the sender (407) → routing: only to users of
//!    the domains served (403 otherwise: **not an open relay**), 404 for an unknown user,
//!    480 for a user with no device → forked in parallel to every registered device over
//!    the flow it registered on, with Record-Route on dialog-creating requests, and the
//!    best response returned (§16.7).
//!
//! Pager-mode MESSAGE passes through an [`ImHook`], where the IM service attaches;
//! SUBSCRIBE and PUBLISH for users go to an [`EventHook`], where presence attaches. Both
//! seams, and the [`Deliverer`](switchboard_core::seam::Deliverer) this crate's
//! [`Outbound`] side implements for them, live in [`switchboard_core::seam`]: the
//! services never see this crate. [`Outbound`] is built first and given to the services;
//! [`Core`] is built last, from the outbound side and the services, so nothing the
//! router calls holds the router.
//!
//! ## Layout
//! - `auth`: Digest challenges and verification.
//! - `routing`: target selection, the forwarded request, the response context.
//! - `outbound`: requests the server originates for the services, and the path to a
//!   binding that routing shares with them.
//! - `relay`: a request the IM service holds while it decides (its `Relay`), and the
//!   order kept around it.
//! - `flow`: the transport's `Source`/`ConnectionId` turned into the core's `Flow` and
//!   back, at this crate's edge.
//!
//! Arrows: depends on the SIP stack (sip-message, sip-digest, ntlm, sipae,
//! sip-transport, sip-transaction), switchboard-core (domain, data traits, seams) and
//! switchboard-registrar; only the binary depends on it. It names no service crate.
#![forbid(unsafe_code)]

mod auth;
mod cookie;
mod flow;
mod ntlm_auth;
mod outbound;
mod pool;
mod relay;
mod routing;

pub use outbound::Outbound;
pub use pool::PoolLink;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use md5::{Digest as _, Md5};
use parking_lot::Mutex;
use sip_digest::{Algorithm, NonceIssuer, ReplayGuard};
use sip_message::{HeaderName, Message, Method, Uri};
use sip_transaction::{ServerRequest, TransactionLayer, TransactionUser};
use sip_transport::{ConnectionId, Inbound, Work};
use switchboard_core::seam::{EventHook, ImHook};
use switchboard_core::{Address, DataError, Directory};
use switchboard_registrar::{Location, RegisterError};
use tokio::sync::Notify;

/// Methods this server handles or relays, for Allow headers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, REFER, NOTIFY, SUBSCRIBE, PUBLISH, UPDATE, PRACK, SERVICE, BENOTIFY";

/// Core settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Domains served in addition to those of the users in the directory.
    pub domains: Vec<String>,
    /// Digest algorithms offered in challenges, most preferred first. Responses computed
    /// with MD5 or SHA-256 are accepted whichever was offered.
    pub digest_algorithms: Vec<Algorithm>,
    pub nonce_lifetime: Duration,
    /// Server / User-Agent product token.
    pub server_name: String,
    /// Extra host names that mean "this server" in Request-URIs and Routes.
    pub hostnames: Vec<String>,
    /// Key of the cookies in our Record-Route and Via branches (see `cookie`); random
    /// when not given (dialogs then do not survive a restart).
    pub route_secret: Option<[u8; 32]>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            domains: Vec::new(),
            digest_algorithms: vec![Algorithm::Md5],
            nonce_lifetime: Duration::from_secs(300),
            server_name: format!("Switchboard/{}", env!("CARGO_PKG_VERSION")),
            hostnames: Vec::new(),
            route_secret: None,
        }
    }
}

/// The SIP core (the router). Create with [`Core::new`] around the [`Outbound`] side the
/// services were given and the services themselves, then [`Core::attach`] it.
pub struct Core {
    pub(crate) layer: TransactionLayer,
    pub(crate) users: Arc<dyn Directory>,
    pub(crate) location: Arc<Location>,
    pub(crate) config: ProxyConfig,
    pub(crate) nonces: NonceIssuer,
    pub(crate) replay: ReplayGuard,
    pub(crate) hook: Arc<dyn ImHook>,
    /// NTLM security associations of Lync-dialect clients, by `opaque`.
    pub(crate) ntlm: Mutex<ntlm_auth::NtlmState>,
    /// The event-state service (presence).
    pub(crate) events: Arc<dyn EventHook>,
    /// The outbound side, whose paths (and Lync connections) the router shares.
    pub(crate) out: Outbound,
    epoch: tokio::time::Instant,
    /// INVITEs being forwarded, by (branch, Call-ID), so CANCEL can reach them.
    pub(crate) pending_invites: Mutex<HashMap<(String, String), Arc<Notify>>>,
    pub(crate) me: Weak<Core>,
    pub(crate) cookies: cookie::Cookies,
    /// Part of every loop hash: this front end's own (see `routing::loop_hash`).
    pub(crate) loop_salt: String,
}

/// What the Route entries naming us said (see [`Core::pop_own_routes`]).
#[derive(Debug, Default)]
pub(crate) struct OwnRoute {
    /// There was at least one: the request belongs to a dialog we record-routed.
    pub(crate) popped: bool,
    /// The dialog cookie our Record-Route carried.
    pub(crate) cookie: Option<String>,
    /// The flow token of a request another front end of the pool proxied to a device
    /// here (see `pool`).
    pub(crate) pool_flow: Option<String>,
}

impl Core {
    /// The router over `out` (whose transaction layer and location service it uses),
    /// handing IM to `hook` and event state to `events`.
    pub fn new(
        users: Arc<dyn Directory>,
        config: ProxyConfig,
        out: Outbound,
        hook: Arc<dyn ImHook>,
        events: Arc<dyn EventHook>,
    ) -> Arc<Core> {
        let lifetime = config.nonce_lifetime.as_secs();
        let cookies = cookie::Cookies::new(config.route_secret.unwrap_or_else(rand::random));
        let loop_salt = out
            .pool()
            .map(|p| format!("fe{}", p.config().fe))
            .unwrap_or_default();
        Arc::new_cyclic(|me| Core {
            cookies,
            loop_salt,
            me: me.clone(),
            layer: out.layer.clone(),
            location: out.location.clone(),
            out,
            users,
            nonces: NonceIssuer::new(lifetime),
            replay: ReplayGuard::new(lifetime),
            config,
            hook,
            events,
            ntlm: Mutex::new(Default::default()),
            epoch: tokio::time::Instant::now(),
            pending_invites: Mutex::new(HashMap::new()),
        })
    }

    /// Makes this core the transaction user and starts housekeeping (binding expiry,
    /// nonce-count memory).
    pub fn attach(self: &Arc<Self>) {
        self.layer.set_user(self.clone());
        self.layer.set_signer(self.clone());
        self.out.learn_listeners();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { return };
                core.ntlm.lock().sweep(std::time::Instant::now());
                core.replay.sweep(core.now_secs());
                let gone = core.location.sweep();
                if !gone.is_empty() {
                    tracing::debug!(users = gone.len(), "bindings expired");
                    // In a pool, the pool's table forgets them too.
                    core.out.unpublish(gone);
                }
            }
        });
    }

    /// The user directory the core authenticates and routes against.
    pub fn users(&self) -> &Arc<dyn Directory> {
        &self.users
    }

    /// This front end's pool membership, when it is one.
    pub fn pool(&self) -> Option<&switchboard_pool::Pool> {
        self.out.pool()
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Digest nonce-counts remembered against replay (bounded by the nonce lifetime: about
    /// two lifetimes of challenges).
    pub fn nonce_counts_remembered(&self) -> usize {
        self.replay.len()
    }

    /// NTLM handshakes in progress and established Lync security associations.
    pub fn ntlm_counts(&self) -> (usize, usize) {
        self.ntlm.lock().counts()
    }

    pub(crate) fn now_secs(&self) -> u64 {
        // tokio time, so tests that pause the clock can expire nonces.
        self.epoch.elapsed().as_secs() + 1_000_000
    }

    /// A To tag for responses we generate, stable across retransmissions of a request.
    pub(crate) fn to_tag(&self, msg: &Message) -> String {
        let mut h = Md5::new();
        h.update(msg.call_id().unwrap_or("").as_bytes());
        h.update(msg.headers.get(&HeaderName::Via).unwrap_or("").as_bytes());
        h.update(msg.headers.get(&HeaderName::CSeq).unwrap_or("").as_bytes());
        hex::encode(&h.finalize()[..6])
    }

    /// Is `domain` served here (a configured domain or the domain of some user)? An
    /// error when the directory cannot say (the caller answers 503: fail closed).
    pub async fn serves_domain(&self, domain: &str) -> Result<bool, DataError> {
        let d = domain.to_ascii_lowercase();
        if self
            .config
            .domains
            .iter()
            .any(|x| x.eq_ignore_ascii_case(&d))
        {
            return Ok(true);
        }
        self.users.has_domain(&d).await.inspect_err(|e| {
            tracing::error!(error = %e, "user directory unavailable");
        })
    }

    async fn respond(&self, req: &ServerRequest, status: u16) {
        let resp = self.response(&req.message, status);
        req.tx.respond(&resp).await;
    }

    pub(crate) fn response(&self, msg: &Message, status: u16) -> Message {
        let mut resp = msg.response(status, Some(&self.to_tag(msg)));
        resp.headers
            .push(HeaderName::Server, self.config.server_name.clone());
        resp
    }

    async fn respond_warning(&self, req: &ServerRequest, status: u16, text: &str) {
        let mut resp = self.response(&req.message, status);
        resp.headers
            .push(HeaderName::Warning, format!("399 switchboard \"{text}\""));
        req.tx.respond(&resp).await;
    }

    async fn handle(self: Arc<Self>, mut req: ServerRequest) {
        let method = req.message.method().cloned().unwrap_or(Method::Options);
        // RFC 3261 §16.3 step 2 / RFC 4475 §3.3.2: only sip/sips Request-URIs.
        if !matches!(req.message.request_uri(), Some(Uri::Sip(_))) {
            return self.respond(&req, 416).await;
        }
        // §16.3 step 6: Proxy-Require lists extensions a proxy must support; we support
        // only `ms-benotify` (MS-SIP §3.7: best-effort NOTIFY, which Lync clients require
        // of every subscription; we may send BENOTIFY and never need to).
        let proxy_require: Vec<String> = req
            .message
            .headers
            .values(&HeaderName::ProxyRequire)
            .filter(|o| !o.eq_ignore_ascii_case("ms-benotify"))
            .map(str::to_owned)
            .collect();
        if !proxy_require.is_empty() {
            let mut resp = self.response(&req.message, 420);
            resp.headers
                .push(HeaderName::Unsupported, proxy_require.join(", "));
            return req.tx.respond(&resp).await;
        }
        if self.is_loop(&req.message) {
            return self.respond(&req, 482).await;
        }
        let own_route = self.pop_own_routes(&mut req.message);
        match method {
            Method::Cancel => self.handle_cancel(req).await,
            Method::Register => self.handle_register(req).await,
            _ => self.handle_routed(req, own_route).await,
        }
    }

    /// §16.4: Route entries naming us were put there by our Record-Route; drop them.
    /// Returns whether there was one (the request claims to belong to a dialog we are in)
    /// and the cookie that can prove it.
    pub(crate) fn pop_own_routes(&self, msg: &mut Message) -> OwnRoute {
        let mut out = OwnRoute::default();
        loop {
            let Ok(routes) = msg.name_addrs(&HeaderName::Route) else {
                return out;
            };
            let Some(first) = routes.first() else {
                return out;
            };
            let Some(uri) = first
                .uri
                .as_sip()
                .filter(|u| self.out.is_own(&u.host, u.port))
            else {
                return out;
            };
            if out.cookie.is_none() {
                out.cookie = uri.params.value(cookie::ROUTE_PARAM).map(str::to_owned);
            }
            if out.pool_flow.is_none() {
                out.pool_flow = uri.params.value(pool::FLOW_PARAM).map(str::to_owned);
            }
            msg.headers.pop_first_value(&HeaderName::Route);
            out.popped = true;
        }
    }

    /// §10.3 and §11: requests we answer as a UAS must not require unknown extensions.
    fn unsupported_required(&self, msg: &Message) -> Option<Vec<String>> {
        let unknown: Vec<String> = msg
            .headers
            .values(&HeaderName::Require)
            .filter(|o| !o.eq_ignore_ascii_case("gruu"))
            .map(str::to_owned)
            .collect();
        (!unknown.is_empty()).then_some(unknown)
    }

    async fn handle_cancel(&self, req: ServerRequest) {
        // §16.10 / §9.2: find the INVITE; answer the CANCEL; cancel its branches.
        match self.layer.invite_for_cancel(&req.message) {
            Some(invite_tx) => {
                self.respond(&req, 200).await;
                let key = routing::invite_key(&req.message);
                let notify = self.pending_invites.lock().get(&key).cloned();
                match notify {
                    Some(n) => n.notify_one(),
                    None if !invite_tx.is_final() => {
                        let resp = self.response(&req.message, 487);
                        // The 487 answers the INVITE (its CSeq method is INVITE).
                        let mut resp = resp;
                        if let Ok(c) = req.message.cseq() {
                            resp.headers
                                .set(HeaderName::CSeq, format!("{} INVITE", c.seq));
                        }
                        invite_tx.respond(&resp).await;
                    }
                    None => {}
                }
            }
            None => self.respond(&req, 481).await,
        }
    }

    async fn handle_register(&self, req: ServerRequest) {
        let msg = &req.message;
        let Ok(to) = msg.to_header() else {
            return self.respond(&req, 400).await;
        };
        // RFC 4475 §3.3.4: a registrar needs a SIP To.
        let Some(to_uri) = to.uri.as_sip() else {
            return self.respond_warning(&req, 400, "To is not a SIP URI").await;
        };
        let Some(user) = to_uri.user_unescaped() else {
            return self.respond_warning(&req, 400, "To has no user part").await;
        };
        let domain = to_uri.host.to_string();
        match self.serves_domain(&domain).await {
            Ok(true) => {}
            Ok(false) => {
                return self
                    .respond_warning(&req, 403, "domain not served here")
                    .await
            }
            Err(_) => return self.respond_unavailable(&req).await,
        }
        if let Some(unknown) = self.unsupported_required(msg) {
            let mut resp = self.response(msg, 420);
            resp.headers
                .push(HeaderName::Unsupported, unknown.join(", "));
            return req.tx.respond(&resp).await;
        }
        // Lync-dialect clients sign in with NTLM (MS-SIPAE); everyone else with Digest.
        let mut ntlm_sa = None;
        let authed = match self.ntlm_register(msg, &domain, &req.source).await {
            ntlm_auth::NtlmOutcome::Authenticated { user, opaque } => {
                ntlm_sa = Some(opaque);
                user
            }
            ntlm_auth::NtlmOutcome::Answer(resp) => return req.tx.respond(&resp).await,
            ntlm_auth::NtlmOutcome::Refused(resp, delay) => {
                return self.respond_later(&req, resp, delay).await
            }
            ntlm_auth::NtlmOutcome::NotNtlm => {
                match self
                    .authenticate(msg, &domain, req.source.remote.ip())
                    .await
                {
                    auth::AuthResult::Ok(a) => a,
                    auth::AuthResult::Challenge { stale } => {
                        let mut ch = self.challenge(msg, &domain, stale, req.source.remote.ip());
                        if ntlm_auth::speaks_lync(msg) {
                            ch.headers
                                .push(HeaderName::WwwAuthenticate, self.ntlm_offer(msg));
                            ch.headers.push(
                                HeaderName::Date,
                                httpdate::fmt_http_date(std::time::SystemTime::now()),
                            );
                        }
                        return req.tx.respond(&ch).await;
                    }
                    auth::AuthResult::Forbidden { why, delay } => {
                        return self.refuse_after(&req, why, delay).await;
                    }
                    auth::AuthResult::Unavailable => return self.respond_unavailable(&req).await,
                }
            }
        };
        let aor_addr = match Address::parse(&format!("{user}@{domain}")) {
            Ok(a) => a,
            Err(_) => {
                return self
                    .respond_warning(&req, 400, "bad address of record")
                    .await
            }
        };
        if !ntlm_auth::instance_fits_epid(msg) {
            return self
                .respond_warning(&req, 400, "+sip.instance is not the one derived from epid")
                .await;
        }
        if authed != aor_addr {
            return self
                .respond_warning(&req, 403, "credentials do not match the To address")
                .await;
        }
        if !self.admit_user(&req, &authed).await {
            return;
        }
        let aor = format!("sip:{aor_addr}");
        match self
            .location
            .register(&aor, msg, flow::flow_of(&req.source))
        {
            Ok(outcome) => {
                let mut resp = self.response(msg, 200);
                for c in self.location.contact_values(
                    &aor,
                    &outcome.bindings,
                    &domain,
                    ntlm_sa.is_some(),
                ) {
                    resp.headers.push(HeaderName::Contact, c);
                }
                resp.headers.push(
                    HeaderName::Date,
                    httpdate::fmt_http_date(std::time::SystemTime::now()),
                );
                resp.headers.push(HeaderName::Supported, "gruu");
                if let Some(opaque) = &ntlm_sa {
                    // Lync clients need the granted lifetime in an Expires header.
                    let granted = outcome
                        .bindings
                        .iter()
                        .map(|b| b.remaining(tokio::time::Instant::now()))
                        .max()
                        .unwrap_or(0);
                    resp.headers.push(HeaderName::Expires, granted.to_string());
                    self.lync_register_extras(&mut resp);
                    match req.source.connection {
                        // Everything on this connection is signed from now on.
                        Some(id) => self.bind_association(id, opaque),
                        None => {
                            self.ntlm_sign(opaque, &mut resp);
                        }
                    }
                }
                let (added, devices) = (outcome.added, outcome.bindings.len());
                if self.out.pool.is_some() {
                    // In a pool, the device is found from every front end before the
                    // client hears it is registered. The commit is waited for on a task
                    // of its own, so a connection's next requests are not held up behind
                    // it (they are read in order; the group commit then takes many).
                    let Some(core) = self.self_arc() else { return };
                    let remote = req.source.remote;
                    self.layer.transports().spawn_work(
                        remote,
                        Box::pin(async move {
                            if let Err(e) = core.out.publish_bindings(&aor).await {
                                tracing::warn!(error = %e, aor, "registration not written to the pool");
                                return core.respond_unavailable(&req).await;
                            }
                            req.tx.respond(&resp).await;
                            core.registered(&aor, added, devices);
                        }),
                    );
                    return;
                }
                req.tx.respond(&resp).await;
                self.registered(&aor, added, devices);
            }
            Err(e) => {
                let mut resp = self.response(msg, e.status());
                if let RegisterError::IntervalTooBrief { min_expires } = e {
                    resp.headers
                        .push(HeaderName::MinExpires, min_expires.to_string());
                } else {
                    resp.headers
                        .push(HeaderName::Warning, format!("399 switchboard \"{e}\""));
                }
                req.tx.respond(&resp).await;
            }
        }
    }

    /// A REGISTER was answered 200: a new device is logged and the IM service told.
    fn registered(&self, aor: &str, added: bool, devices: usize) {
        if added {
            tracing::info!(aor, devices, "registered");
            self.hook.on_registered(aor);
        }
    }

    /// MS-SIPREGE §3.1.5 / MS-CONMGMT §2.2.1: what a Lync client reads from its REGISTER
    /// 200: the enhanced-presence and batched-subscription extensions (without
    /// `msrtc-event-categories` pidgin-sipe falls back to the 2005 dialect), the events it
    /// may subscribe to (it subscribes to nothing else) and the keep-alive interval. (The
    /// registrar writes the GRUU in the draft-10 `gruu` parameter it looks for.)
    fn lync_register_extras(&self, resp: &mut Message) {
        // pidgin-sipe compares each Supported header's whole value with one option, and
        // Allow-Events entries split at commas without trimming them.
        resp.headers
            .push(HeaderName::Supported, "msrtc-event-categories");
        resp.headers.push(HeaderName::Supported, "adhoclist");
        resp.headers.push(
            HeaderName::AllowEvents,
            self.events.allow_events().replace(", ", ","),
        );
        resp.headers.push(
            HeaderName::from_wire("ms-keep-alive"),
            "UAS; tcp=no; hop-hop=yes; end-end=no; timeout=300",
        );
    }

    /// §11.2: OPTIONS to the server itself.
    async fn answer_options(&self, req: &ServerRequest) {
        if let Some(unknown) = self.unsupported_required(&req.message) {
            let mut resp = self.response(&req.message, 420);
            resp.headers
                .push(HeaderName::Unsupported, unknown.join(", "));
            return req.tx.respond(&resp).await;
        }
        let mut resp = self.response(&req.message, 200);
        resp.headers.push(HeaderName::Allow, ALLOW);
        resp.headers.push(
            HeaderName::Accept,
            "application/sdp, text/plain, application/pidf+xml",
        );
        resp.headers.push(HeaderName::Supported, "gruu");
        req.tx.respond(&resp).await;
    }
}

impl TransactionUser for Core {
    // Handling may await the user directory and the services' data (a database that can
    // be slow or failing over). A stream connection's requests are handled on its reading
    // task, one after another: a client's requests keep their order (a Lync client's
    // signed exchange depends on it), and a wait holds up only that connection. On a UDP
    // socket, shared by everyone (datagrams have no order), the receive loop runs the
    // handling until it would wait and hands the rest to a task of its own
    // (sip-transport's `run_or_detach`); forwarding is always spawned by `handle_routed`.
    fn on_request(&self, request: ServerRequest) -> Option<Work> {
        let core = self.self_arc()?;
        Some(Box::pin(core.handle(request)))
    }

    fn on_ack(&self, ack: Inbound) -> Option<Work> {
        let core = self.self_arc()?;
        Some(Box::pin(async move { core.forward_ack(ack).await }))
    }

    fn on_stray_response(&self, response: Inbound) -> Option<Work> {
        let core = self.self_arc()?;
        Some(Box::pin(async move {
            core.forward_stray_response(response).await
        }))
    }

    fn on_connection_closed(&self, id: ConnectionId) {
        self.connection_gone(id);
        self.events.flow_closed(flow::connection_of(id));
        let gone = self.location.flow_closed(flow::connection_of(id));
        if !gone.is_empty() {
            tracing::debug!(?gone, "flow closed; bindings removed");
            self.out.unpublish(gone);
        }
    }
}

impl Core {
    fn self_arc(&self) -> Option<Arc<Core>> {
        self.me.upgrade()
    }
}
