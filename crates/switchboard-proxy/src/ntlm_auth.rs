//! NTLM sign-in of Lync clients on REGISTER (MS-SIPAE §3.2.5.1, connectionless NTLMv2):
//! 1. a REGISTER without credentials from a client that shows Microsoft extensions gets a
//!    401 offering `NTLM realm="SIP Communications Service", targetname, version` beside
//!    Digest, and a `Date`;
//! 2. `Authorization: NTLM … gssapi-data=""` gets a 401 carrying the CHALLENGE and an
//!    `opaque` naming the security association being built;
//! 3. the AUTHENTICATE is checked against the user's NT hash (403 with a Warning the client
//!    shows when the password is wrong), the REGISTER's own signature is checked, and the
//!    association is kept under its `opaque`; later REGISTERs carry only a signature
//!    (`crand`, `cnum`, `response`), and a bad one drops the association (401).
//!
//! Once established, the association belongs to the connection the client signed in
//! over: every message the server sends on that connection is signed (`Authentication-Info
//! … rspauth, srand, snum`, by the transaction layer's [`OutboundSigner`]), and every
//! request the client sends on it must carry a valid signature (`crand`, `cnum`,
//! `response`), which is what authenticates it; a bad or missing one is answered 401 and
//! the association is dropped (MS-SIPAE §3.2.5.2, §3.3.5.2).
//!
//! Against strangers: handshakes in progress are kept apart from established
//! associations, one per flow (connection, or UDP source address), bounded in number and
//! expired oldest-first in O(1); an association answers only on the connection it was
//! made on (an `opaque` guessed from elsewhere neither signs in nor ends anything); a
//! signed REGISTER's `cnum` must grow like any request's; an unknown user and a wrong
//! password get the same answer after the same work; failures go to the guard (delays,
//! lockout per user and source, bans).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sip_message::{AuthHeader, HeaderName, Message};
use sip_transaction::{OutboundSigner, ServerRequest};
use sip_transport::{ConnectionId, Target};
use sipae::SignatureContext;
use switchboard_core::Address;

/// The realm MS-SIPAE fixes.
pub(crate) const NTLM_REALM: &str = "SIP Communications Service";
const VERSION: u32 = 4;
/// Associations last 8 hours (MS-SIPAE §3.2.2: clients re-authenticate before that).
const SA_LIFETIME: Duration = Duration::from_secs(8 * 3600);
const HANDSHAKE_LIFETIME: Duration = Duration::from_secs(60);
/// Handshakes in progress at most (each is one flow's: a connection or a UDP address).
const MAX_HANDSHAKES: usize = 20_000;
/// ... from one source address (an office behind NAT signs in a few users at a time).
const MAX_HANDSHAKES_PER_SOURCE: usize = 64;

/// Where a handshake or an association lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FlowKey {
    Connection(ConnectionId),
    Udp(std::net::SocketAddr),
}

impl FlowKey {
    pub(crate) fn of(source: &sip_transport::Source) -> FlowKey {
        match source.connection {
            Some(id) => FlowKey::Connection(id),
            None => FlowKey::Udp(source.remote),
        }
    }
}

/// Step 2 done, waiting for the AUTHENTICATE.
pub(crate) struct Handshake {
    server_challenge: [u8; 8],
    flow: FlowKey,
    /// The address it came from.
    ip: std::net::IpAddr,
}

/// A signed-in Lync endpoint's security association.
pub(crate) struct Association {
    /// Shared so that signing and checking run outside the associations' lock.
    session: Arc<ntlm::Session>,
    user: Address,
    since: Instant,
    /// The server's message counter (`snum`).
    snum: u32,
    /// The highest `cnum` of the client's messages accepted so far: each must carry a
    /// higher one (a replayed request, signature and all, is refused).
    client_num: u32,
    /// As the client names them in its signatures (they are part of the input).
    targetname: String,
    version: u32,
    /// The flow it was made on, the only one it answers on.
    flow: FlowKey,
}

/// Handshakes and associations, apart: strangers can fill only the first, which is
/// bounded and expires in O(1).
#[derive(Default)]
pub(crate) struct NtlmState {
    handshakes: HashMap<String, Handshake>,
    /// Handshakes by start time, oldest first (entries already gone are skipped).
    order: std::collections::VecDeque<(Instant, String)>,
    /// The pending handshake of each flow: a new one replaces it.
    by_flow: HashMap<FlowKey, String>,
    /// Handshakes in progress per source address: one address cannot fill the table.
    per_source: HashMap<std::net::IpAddr, usize>,
    associations: HashMap<String, Association>,
}

impl NtlmState {
    /// Handshakes past their lifetime go, oldest first. (Only by age: evicting young
    /// ones to make room would let a flood of strangers cancel everyone's sign-in.)
    fn expire_handshakes(&mut self, now: Instant) {
        while let Some((since, opaque)) = self.order.front() {
            if now.saturating_duration_since(*since) < HANDSHAKE_LIFETIME {
                break;
            }
            let opaque = opaque.clone();
            self.order.pop_front();
            self.remove_handshake(&opaque);
        }
        // Entries of handshakes replaced or finished early linger in `order`: keep it
        // within a constant factor of the table.
        if self.order.len() > 2 * MAX_HANDSHAKES.max(self.handshakes.len()) {
            let live = &self.handshakes;
            self.order.retain(|(_, o)| live.contains_key(o));
        }
    }

    fn remove_handshake(&mut self, opaque: &str) -> Option<Handshake> {
        let h = self.handshakes.remove(opaque)?;
        if self.by_flow.get(&h.flow).is_some_and(|o| o == opaque) {
            self.by_flow.remove(&h.flow);
        }
        if let Some(n) = self.per_source.get_mut(&h.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&h.ip);
            }
        }
        Some(h)
    }

    fn unused_opaque(&self) -> String {
        loop {
            let o = format!("{:08X}", rand::random::<u32>());
            if !self.handshakes.contains_key(&o) && !self.associations.contains_key(&o) {
                return o;
            }
        }
    }

    /// Handshakes and associations held (for tests and status).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.handshakes.len(), self.associations.len())
    }

    /// Drops associations past their lifetime (those on connections end with them).
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.expire_handshakes(now);
        self.associations
            .retain(|_, a| now.saturating_duration_since(a.since) < SA_LIFETIME);
    }
}

/// How a request that arrived over a connection with an association stands.
pub(crate) enum SignedRequest {
    /// The connection has no association: Digest authenticates the request.
    NoAssociation,
    /// Signed correctly by this user.
    Valid(Address),
    /// Unsigned or badly signed: answered 401 and the association dropped.
    Invalid,
}

/// What the REGISTER's NTLM credentials lead to.
pub(crate) enum NtlmOutcome {
    /// Not an NTLM REGISTER: Digest handles it.
    NotNtlm,
    /// Answer with this (401 with a challenge, 403, 401 for a bad signature).
    Answer(Message),
    /// A failed sign-in: answer with this 403 after the delay the guard set.
    Refused(Message, std::time::Duration),
    /// Signed in (or refreshed) as this user on association `opaque`.
    Authenticated { user: Address, opaque: String },
}

/// The NTLM credentials of a request: in Authorization (REGISTER, and what pidgin-sipe
/// sends everywhere) or Proxy-Authorization (MS-SIPAE §2.2.2 allows either).
fn ntlm_params(msg: &Message) -> Option<AuthHeader> {
    msg.headers
        .get_all(&HeaderName::Authorization)
        .chain(msg.headers.get_all(&HeaderName::ProxyAuthorization))
        .filter_map(|v| AuthHeader::parse(v).ok())
        .find(|a| a.scheme.eq_ignore_ascii_case("NTLM"))
}

/// Removes what signs a message on one hop's association (the client's NTLM
/// credentials, our Authentication-Info): meaningless, and misleading, on the next hop.
pub(crate) fn strip_hop_signatures(msg: &mut Message) {
    let not_ntlm = |v: &str| {
        !v.trim_start()
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("NTLM "))
    };
    msg.headers
        .retain_lines(&HeaderName::Authorization, not_ntlm);
    msg.headers
        .retain_lines(&HeaderName::ProxyAuthorization, not_ntlm);
    msg.headers
        .remove(&HeaderName::from_wire("Authentication-Info"));
}

/// MS-SIPAE §3.3.5.2: a REGISTER naming its endpoint (`epid` in From) must register the
/// `+sip.instance` derived from it; `false` when a Contact carries another one. (The GRUU
/// is issued for that instance, so it then belongs to that endpoint too.)
pub(crate) fn instance_fits_epid(msg: &Message) -> bool {
    let Some(epid) = msg
        .from_header()
        .ok()
        .and_then(|f| f.params.value("epid").map(str::to_owned))
    else {
        return true;
    };
    match msg.contacts() {
        Ok(sip_message::ContactValue::List(list)) => list.iter().all(|c| {
            c.params
                .value("+sip.instance")
                .is_none_or(|i| sipae::instance::instance_matches_epid(i, &epid))
        }),
        _ => true,
    }
}

/// Does the client show the Microsoft extensions that tell it is a Lync-dialect client?
/// (Only those are offered NTLM: baresip gives up on any challenge it does not know.)
pub(crate) fn speaks_lync(msg: &Message) -> bool {
    msg.headers.has(&HeaderName::from_wire("ms-keep-alive"))
        || msg
            .headers
            .values(&HeaderName::Supported)
            .any(|v| v.eq_ignore_ascii_case("msrtc-event-categories"))
}

impl crate::Core {
    fn targetname(&self, msg: &Message) -> String {
        self.config.hostnames.first().cloned().unwrap_or_else(|| {
            msg.to_header()
                .ok()
                .and_then(|t| t.uri.as_sip().map(|u| u.host.to_string()))
                .unwrap_or_else(|| "switchboard".into())
        })
    }

    /// The `WWW-Authenticate: NTLM` offer of step 1.
    pub(crate) fn ntlm_offer(&self, msg: &Message) -> String {
        format!(
            "NTLM realm=\"{NTLM_REALM}\", targetname=\"{}\", version={VERSION}",
            self.targetname(msg)
        )
    }

    fn ntlm_401(&self, msg: &Message, extra: Option<(&str, &[u8])>) -> Message {
        let mut resp = self.response(msg, 401);
        let v = match extra {
            // Step 2: the CHALLENGE, and the association's name.
            Some((opaque, challenge)) => format!(
                "NTLM opaque=\"{opaque}\", gssapi-data=\"{}\", targetname=\"{}\", realm=\"{NTLM_REALM}\", version={VERSION}",
                base64::engine::general_purpose::STANDARD.encode(challenge),
                self.targetname(msg)
            ),
            None => self.ntlm_offer(msg),
        };
        resp.headers.push(HeaderName::WwwAuthenticate, v);
        resp.headers.push(
            HeaderName::Date,
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
        resp
    }

    fn forbidden(&self, msg: &Message, text: &str) -> Message {
        let mut resp = self.response(msg, 403);
        resp.headers
            .push(HeaderName::Warning, format!("310 switchboard \"{text}\""));
        resp
    }

    /// Steps 2 and 3 of the sign-in, and signed refreshes, for a REGISTER from `source`.
    pub(crate) async fn ntlm_register(
        &self,
        msg: &Message,
        domain: &str,
        source: &sip_transport::Source,
    ) -> NtlmOutcome {
        let Some(creds) = ntlm_params(msg) else {
            return NtlmOutcome::NotNtlm;
        };
        let flow = FlowKey::of(source);
        let now = Instant::now();
        let gssapi = creds.param("gssapi-data").unwrap_or("");
        let opaque = creds.param("opaque").map(str::to_owned);
        let Some(opaque) =
            opaque.filter(|_| !gssapi.is_empty() || creds.param("response").is_some())
        else {
            return self.ntlm_challenge(msg, domain, flow, source.remote.ip(), now);
        };
        // A handshake of this flow, step 3.
        let handshake = {
            let mut st = self.ntlm.lock();
            st.expire_handshakes(now);
            let mine = st.handshakes.get(&opaque).is_some_and(|h| h.flow == flow);
            if mine && !gssapi.is_empty() {
                st.remove_handshake(&opaque)
            } else {
                None
            }
        };
        if let Some(h) = handshake {
            return self
                .ntlm_authenticate(msg, domain, source, &opaque, gssapi, h, &creds)
                .await;
        }
        // A signed refresh on this flow's association: checked like any signed request,
        // `cnum` included (MS-SIPAE §3.3.5.2).
        let on_this_flow = matches!(
            self.ntlm.lock().associations.get(&opaque),
            Some(a) if a.flow == flow
        );
        if on_this_flow {
            if let Some(user) = self.verify_signed(&opaque, msg) {
                return NtlmOutcome::Authenticated { user, opaque };
            }
            // A bad signature ends the association (MS-SIPAE §3.2.5.2).
            self.ntlm.lock().associations.remove(&opaque);
        }
        // Unknown here (another flow's, expired, or guessed): the client starts over.
        // Nothing of another flow is touched.
        NtlmOutcome::Answer(self.ntlm_401(msg, None))
    }

    /// Step 2: a new handshake for `flow` (replacing the flow's earlier one).
    fn ntlm_challenge(
        &self,
        msg: &Message,
        domain: &str,
        flow: FlowKey,
        ip: std::net::IpAddr,
        now: Instant,
    ) -> NtlmOutcome {
        let server_challenge: [u8; 8] = rand::random();
        let opaque = {
            let mut st = self.ntlm.lock();
            st.expire_handshakes(now);
            if let Some(old) = st.by_flow.get(&flow).cloned() {
                st.remove_handshake(&old);
            }
            let from_here = st.per_source.get(&ip).copied().unwrap_or(0);
            if st.handshakes.len() >= MAX_HANDSHAKES || from_here >= MAX_HANDSHAKES_PER_SOURCE {
                drop(st);
                let mut busy = self.response(msg, 503);
                busy.headers
                    .push(HeaderName::from_wire("Retry-After"), "30");
                return NtlmOutcome::Answer(busy);
            }
            let opaque = st.unused_opaque();
            st.handshakes.insert(
                opaque.clone(),
                Handshake {
                    server_challenge,
                    flow,
                    ip,
                },
            );
            st.order.push_back((now, opaque.clone()));
            st.by_flow.insert(flow, opaque.clone());
            *st.per_source.entry(ip).or_default() += 1;
            opaque
        };
        let host = self.targetname(msg);
        let netbios: String = domain
            .split('.')
            .next()
            .unwrap_or("SWITCHBOARD")
            .to_ascii_uppercase();
        let challenge = ntlm::challenge_message(
            server_challenge,
            &ntlm::TargetInfo {
                netbios_domain: netbios,
                netbios_computer: host.split('.').next().unwrap_or("").to_ascii_uppercase(),
                dns_domain: domain.to_owned(),
                dns_computer: host,
            },
        );
        NtlmOutcome::Answer(self.ntlm_401(msg, Some((&opaque, &challenge))))
    }

    /// Step 3: the AUTHENTICATE checked against the user's NT hash, and the REGISTER's
    /// own signature; the association is kept for this flow.
    #[allow(clippy::too_many_arguments)]
    async fn ntlm_authenticate(
        &self,
        msg: &Message,
        domain: &str,
        source: &sip_transport::Source,
        opaque: &str,
        gssapi: &str,
        handshake: Handshake,
        creds: &AuthHeader,
    ) -> NtlmOutcome {
        let b64 = base64::engine::general_purpose::STANDARD;
        let Ok(bytes) = b64.decode(gssapi) else {
            return NtlmOutcome::Answer(self.response(msg, 400));
        };
        let Ok(auth) = ntlm::AuthenticateMessage::parse(&bytes) else {
            return NtlmOutcome::Answer(self.response(msg, 400));
        };
        let name = auth.user.rsplit('\\').next().unwrap_or("").to_owned();
        let account = if name.contains('@') {
            name.to_ascii_lowercase()
        } else {
            format!("{name}@{domain}").to_ascii_lowercase()
        };
        let ip = source.remote.ip();
        let guard = self.layer.transports().guard();
        if let Some(left) = guard.auth_locked(&account, ip) {
            tracing::info!(source = %ip, user = %account, "NTLM sign-in refused: locked out");
            return NtlmOutcome::Answer(self.forbidden(msg, crate::auth::locked_text(left)));
        }
        let address = Address::parse(&account).ok();
        let found = match &address {
            Some(a) => Some(self.users.find(a).await),
            None => None,
        };
        let user = match found {
            Some(Ok(Some(u))) if u.enabled => Some(u),
            Some(Ok(_)) | None => None,
            Some(Err(e)) => {
                tracing::error!(error = %e, "user directory unavailable");
                let mut busy = self.response(msg, 503);
                busy.headers
                    .push(HeaderName::from_wire("Retry-After"), "30");
                return NtlmOutcome::Answer(busy);
            }
        };
        // An unknown or disabled user is checked against a hash nobody has: the same
        // work and the same answer as a wrong password (no user enumeration).
        let mut nt_hash = [0x5au8; 16];
        if let Some(u) = &user {
            if hex::decode_to_slice(&u.credentials.nt_hash, &mut nt_hash).is_err() {
                return NtlmOutcome::Answer(self.response(msg, 500));
            }
        }
        let accepted = ntlm::accept(&auth, &handshake.server_challenge, &nt_hash);
        let (session, address) = match (accepted, user, address) {
            (Ok(s), Some(_), Some(a)) => (s, a),
            (result, _, _) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "NTLM check failed");
                }
                let penalty = guard.auth_failed(&account, ip, "ntlm");
                return NtlmOutcome::Refused(
                    self.forbidden(msg, crate::auth::BAD_CREDENTIALS),
                    penalty.delay,
                );
            }
        };
        let (Some(crand), Some(cnum), Some(response)) = (
            creds.param("crand"),
            creds.param("cnum"),
            creds.param("response"),
        ) else {
            return NtlmOutcome::Answer(self.ntlm_401(msg, None));
        };
        let ctx = SignatureContext {
            protocol: "NTLM",
            rand: crand,
            num: cnum,
            realm: NTLM_REALM,
            targetname: creds.param("targetname").unwrap_or(""),
            version: creds
                .param("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(VERSION),
        };
        if !sipae::verify_client(&session, msg, &ctx, response) {
            return NtlmOutcome::Answer(self.ntlm_401(msg, None));
        }
        guard.auth_succeeded(&account, ip);
        self.ntlm.lock().associations.insert(
            opaque.to_owned(),
            Association {
                session: Arc::new(session),
                user: address.clone(),
                since: Instant::now(),
                snum: 0,
                client_num: cnum.parse().unwrap_or(0),
                targetname: ctx.targetname.to_owned(),
                version: ctx.version,
                flow: FlowKey::of(source),
            },
        );
        NtlmOutcome::Authenticated {
            user: address,
            opaque: opaque.to_owned(),
        }
    }

    /// Signs `msg` on association `opaque` (`Authentication-Info`, MS-SIPAE §3.2.5.2);
    /// false when the association is gone.
    pub(crate) fn ntlm_sign(&self, opaque: &str, msg: &mut Message) -> bool {
        // The counter moves under the lock; the signature is made outside it.
        let (session, snum, targetname, version) = {
            let mut st = self.ntlm.lock();
            let Some(a) = st.associations.get_mut(opaque) else {
                return false;
            };
            a.snum = a.snum.wrapping_add(1);
            (a.session.clone(), a.snum, a.targetname.clone(), a.version)
        };
        let srand = format!("{:08X}", rand::random::<u32>());
        let snum_s = snum.to_string();
        let ctx = SignatureContext {
            protocol: "NTLM",
            rand: &srand,
            num: &snum_s,
            realm: NTLM_REALM,
            targetname: &targetname,
            version,
        };
        let rspauth = sipae::server_signature(&session, msg, &ctx);
        msg.headers.push_front(
            HeaderName::from_wire("Authentication-Info"),
            format!("NTLM rspauth=\"{rspauth}\", srand=\"{srand}\", snum=\"{snum_s}\", opaque=\"{opaque}\", qop=\"auth\", targetname=\"{targetname}\", realm=\"{NTLM_REALM}\""),
        );
        true
    }

    /// From now on, messages over `connection` are signed on association `opaque`.
    pub(crate) fn bind_association(&self, connection: ConnectionId, opaque: &str) {
        let replaced = self
            .out
            .sa_flows
            .write()
            .insert(connection, opaque.to_owned());
        // A re-authentication (MS-SIPAE §3.2.2) supersedes the connection's old
        // association: it signs and verifies nothing any more.
        if let Some(old) = replaced.filter(|o| o != opaque) {
            self.ntlm.lock().associations.remove(&old);
        }
    }

    /// The connection closed: its association ends with it (the client signs in again
    /// over a new connection).
    pub(crate) fn connection_gone(&self, connection: ConnectionId) {
        self.out.member_links.write().remove(&connection);
        let gone = self.out.sa_flows.write().remove(&connection);
        let mut st = self.ntlm.lock();
        if let Some(opaque) = gone {
            st.associations.remove(&opaque);
        }
        // A handshake the connection had begun ends with it too.
        if let Some(pending) = st.by_flow.get(&FlowKey::Connection(connection)).cloned() {
            st.remove_handshake(&pending);
        }
    }

    /// The association of the connection a request came over, if any.
    pub(crate) fn association_of(&self, req: &ServerRequest) -> Option<String> {
        let id = req.source.connection?;
        let flows = self.out.sa_flows.read();
        if flows.is_empty() {
            return None;
        }
        flows.get(&id).cloned()
    }

    /// MS-SIPAE §3.3.5.2: a request over a connection with an association must carry the
    /// client's valid signature; that signature is what authenticates it.
    pub(crate) fn check_signed_request(&self, req: &ServerRequest) -> SignedRequest {
        let Some(opaque) = self.association_of(req) else {
            return SignedRequest::NoAssociation;
        };
        match self.verify_signed(&opaque, &req.message) {
            Some(user) => SignedRequest::Valid(user),
            None => {
                if let Some(id) = req.source.connection {
                    self.connection_gone(id);
                }
                SignedRequest::Invalid
            }
        }
    }

    /// Checks the client's signature on `msg` (a request or a response) against
    /// association `opaque`, and that its sequence number moved on: the user it
    /// authenticates, or `None`.
    fn verify_signed(&self, opaque: &str, msg: &Message) -> Option<Address> {
        let creds = ntlm_params(msg)?;
        if creds.param("opaque") != Some(opaque) {
            return None;
        }
        let (crand, cnum, response) = (
            creds.param("crand")?,
            creds.param("cnum")?,
            creds.param("response")?,
        );
        // MS-SIPAE §3.3.5.2: the client's sequence number only grows (one counter for
        // everything it sends, delivered in order on the stream); an old one is a replay.
        let num: u32 = cnum.parse().ok()?;
        let seen_before = |st: &NtlmState| match st.associations.get(opaque) {
            Some(a) => num <= a.client_num,
            None => true,
        };
        let (session, user, targetname, version) = {
            let st = self.ntlm.lock();
            if seen_before(&st) {
                return None;
            }
            let a = st.associations.get(opaque)?;
            (
                a.session.clone(),
                a.user.clone(),
                a.targetname.clone(),
                a.version,
            )
        };
        // The check itself runs outside the lock.
        let ctx = SignatureContext {
            protocol: "NTLM",
            rand: crand,
            num: cnum,
            realm: NTLM_REALM,
            targetname: creds.param("targetname").unwrap_or(&targetname),
            version: creds
                .param("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(version),
        };
        if !sipae::verify_client(&session, msg, &ctx, response) {
            return None;
        }
        let mut st = self.ntlm.lock();
        if seen_before(&st) {
            return None;
        }
        if let Some(a) = st.associations.get_mut(opaque) {
            a.client_num = num;
        }
        Some(user)
    }

    /// The 401 for a request whose signature failed: the client signs in again.
    pub(crate) fn signature_refused(&self, msg: &Message) -> Message {
        self.ntlm_401(msg, None)
    }
}

impl OutboundSigner for crate::Core {
    /// A response from a client on an association must be signed like its requests; one
    /// that is not ends the association (the client signs in again) and is dropped.
    fn accept_response(&self, source: &sip_transport::Source, msg: &Message) -> bool {
        let Some(id) = source.connection else {
            return true;
        };
        let opaque = {
            let flows = self.out.sa_flows.read();
            if flows.is_empty() {
                return true;
            }
            match flows.get(&id) {
                Some(o) => o.clone(),
                None => return true,
            }
        };
        if self.verify_signed(&opaque, msg).is_some() {
            return true;
        }
        tracing::warn!(
            status = msg.status(),
            "unsigned or badly signed response on a Lync association; association dropped"
        );
        self.connection_gone(id);
        false
    }

    fn sign(&self, target: &Target, msg: &Message) -> Option<Message> {
        let Target::Connection { id, .. } = target else {
            return None;
        };
        let opaque = {
            let flows = self.out.sa_flows.read();
            if flows.is_empty() {
                return None;
            }
            flows.get(id)?.clone()
        };
        // 100 Trying is hop-by-hop noise the client does not check; everything else is
        // signed (pidgin-sipe drops unsigned requests and final responses).
        if msg.status() == Some(100) {
            return None;
        }
        let mut signed = msg.clone();
        strip_hop_signatures(&mut signed);
        self.ntlm_sign(&opaque, &mut signed).then_some(signed)
    }
}
