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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sip_message::{AuthHeader, HeaderName, Message};
use sip_transaction::{OutboundSigner, ServerRequest};
use sip_transport::{ConnectionId, Target};
use sipae::SignatureContext;
use switchboard_store::Address;

/// The realm MS-SIPAE fixes.
pub(crate) const NTLM_REALM: &str = "SIP Communications Service";
const VERSION: u32 = 4;
/// Associations last 8 hours (MS-SIPAE §3.2.2: clients re-authenticate before that).
const SA_LIFETIME: Duration = Duration::from_secs(8 * 3600);
const HANDSHAKE_LIFETIME: Duration = Duration::from_secs(60);
const MAX_ASSOCIATIONS: usize = 200_000;

pub(crate) enum SecurityAssociation {
    Challenged {
        server_challenge: [u8; 8],
        since: Instant,
    },
    Established {
        /// Shared so that signing and checking run outside the associations' lock.
        session: Arc<ntlm::Session>,
        user: Address,
        since: Instant,
        /// The server's message counter (`snum`).
        snum: u32,
        /// The highest `cnum` of the client's requests accepted so far: each request must
        /// carry a higher one (a replayed request, signature and all, is refused).
        client_num: u32,
        /// As the client names them in its signatures (they are part of the input).
        targetname: String,
        version: u32,
    },
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

    /// Steps 2 and 3 of the sign-in, and signed refreshes.
    pub(crate) fn ntlm_register(&self, msg: &Message, domain: &str) -> NtlmOutcome {
        let Some(creds) = ntlm_params(msg) else {
            return NtlmOutcome::NotNtlm;
        };
        let now = Instant::now();
        let mut sas = self.ntlm.lock();
        sas.retain(|_, sa| match sa {
            SecurityAssociation::Challenged { since, .. } => now - *since < HANDSHAKE_LIFETIME,
            SecurityAssociation::Established { since, .. } => now - *since < SA_LIFETIME,
        });
        let gssapi = creds.param("gssapi-data").unwrap_or("");
        let opaque = creds.param("opaque").map(str::to_owned);
        if opaque.is_none() || (gssapi.is_empty() && creds.param("response").is_none()) {
            // Step 2: a new association. Unauthenticated clients create these, so their
            // number is bounded (they also expire after a minute).
            if sas.len() >= MAX_ASSOCIATIONS {
                let mut busy = self.response(msg, 503);
                busy.headers
                    .push(HeaderName::from_wire("Retry-After"), "30");
                return NtlmOutcome::Answer(busy);
            }
            let opaque = format!("{:08X}", rand::random::<u32>());
            let server_challenge: [u8; 8] = rand::random();
            let host = self.targetname(msg);
            let netbios: String = domain
                .split('.')
                .next()
                .unwrap_or("SWITCHBOARD")
                .to_ascii_uppercase();
            let challenge = ntlm::challenge_message(
                server_challenge,
                &ntlm::TargetInfo {
                    netbios_domain: netbios.clone(),
                    netbios_computer: host.split('.').next().unwrap_or("").to_ascii_uppercase(),
                    dns_domain: domain.to_owned(),
                    dns_computer: host,
                },
            );
            sas.insert(
                opaque.clone(),
                SecurityAssociation::Challenged {
                    server_challenge,
                    since: now,
                },
            );
            return NtlmOutcome::Answer(self.ntlm_401(msg, Some((&opaque, &challenge))));
        }
        let opaque = opaque.expect("checked above");
        let sig_ctx = |rand, num| SignatureContext {
            protocol: "NTLM",
            rand,
            num,
            realm: NTLM_REALM,
            targetname: creds.param("targetname").unwrap_or(""),
            version: creds
                .param("version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(VERSION),
        };
        let signed_ok = |session: &ntlm::Session| {
            let (Some(crand), Some(cnum), Some(response)) = (
                creds.param("crand"),
                creds.param("cnum"),
                creds.param("response"),
            ) else {
                return false;
            };
            sipae::verify_client(session, msg, &sig_ctx(crand, cnum), response)
        };
        match sas.get(&opaque) {
            Some(SecurityAssociation::Challenged {
                server_challenge, ..
            }) if !gssapi.is_empty() => {
                // Step 3.
                let server_challenge = *server_challenge;
                let b64 = base64::engine::general_purpose::STANDARD;
                let Ok(bytes) = b64.decode(gssapi) else {
                    return NtlmOutcome::Answer(self.response(msg, 400));
                };
                let Ok(auth) = ntlm::AuthenticateMessage::parse(&bytes) else {
                    return NtlmOutcome::Answer(self.response(msg, 400));
                };
                let name = auth.user.rsplit('\\').next().unwrap_or("").to_owned();
                let address = if name.contains('@') {
                    Address::parse(&name)
                } else {
                    Address::parse(&format!("{name}@{domain}"))
                };
                let Ok(address) = address else {
                    return NtlmOutcome::Answer(self.forbidden(msg, "unknown user"));
                };
                let user = match self.users.find(&address) {
                    Ok(Some(u)) if u.enabled => u,
                    Ok(_) => return NtlmOutcome::Answer(self.forbidden(msg, "unknown user")),
                    Err(e) => {
                        tracing::error!(error = %e, "user directory unavailable");
                        return NtlmOutcome::Answer(self.response(msg, 500));
                    }
                };
                let mut nt_hash = [0u8; 16];
                if hex::decode_to_slice(&user.credentials.nt_hash, &mut nt_hash).is_err() {
                    return NtlmOutcome::Answer(self.response(msg, 500));
                }
                let session = match ntlm::accept(&auth, &server_challenge, &nt_hash) {
                    Ok(s) => s,
                    Err(e) => {
                        sas.remove(&opaque);
                        tracing::info!(user = %address, error = %e, "NTLM sign-in refused");
                        return NtlmOutcome::Answer(
                            self.forbidden(msg, "wrong user name or password"),
                        );
                    }
                };
                if !signed_ok(&session) {
                    sas.remove(&opaque);
                    return NtlmOutcome::Answer(self.ntlm_401(msg, None));
                }
                let ctx = sig_ctx("", "");
                sas.insert(
                    opaque.clone(),
                    SecurityAssociation::Established {
                        session: Arc::new(session),
                        user: address.clone(),
                        since: now,
                        snum: 0,
                        client_num: 0,
                        targetname: ctx.targetname.to_owned(),
                        version: ctx.version,
                    },
                );
                NtlmOutcome::Authenticated {
                    user: address,
                    opaque,
                }
            }
            Some(SecurityAssociation::Established { session, user, .. }) => {
                if signed_ok(session) {
                    NtlmOutcome::Authenticated {
                        user: user.clone(),
                        opaque,
                    }
                } else {
                    // A bad signature ends the association (MS-SIPAE §3.2.5.2).
                    sas.remove(&opaque);
                    NtlmOutcome::Answer(self.ntlm_401(msg, None))
                }
            }
            _ => {
                sas.remove(&opaque);
                NtlmOutcome::Answer(self.ntlm_401(msg, None))
            }
        }
    }

    /// Signs `msg` on association `opaque` (`Authentication-Info`, MS-SIPAE §3.2.5.2);
    /// false when the association is gone.
    pub(crate) fn ntlm_sign(&self, opaque: &str, msg: &mut Message) -> bool {
        // The counter moves under the lock; the signature is made outside it.
        let (session, snum, targetname, version) = {
            let mut sas = self.ntlm.lock();
            let Some(SecurityAssociation::Established {
                session,
                snum,
                targetname,
                version,
                ..
            }) = sas.get_mut(opaque)
            else {
                return false;
            };
            *snum = snum.wrapping_add(1);
            (session.clone(), *snum, targetname.clone(), *version)
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
        let replaced = self.sa_flows.write().insert(connection, opaque.to_owned());
        // A re-authentication (MS-SIPAE §3.2.2) supersedes the connection's old
        // association: it signs and verifies nothing any more.
        if let Some(old) = replaced.filter(|o| o != opaque) {
            self.ntlm.lock().remove(&old);
        }
    }

    /// The connection closed: its association ends with it (the client signs in again
    /// over a new connection).
    pub(crate) fn connection_gone(&self, connection: ConnectionId) {
        let gone = self.sa_flows.write().remove(&connection);
        if let Some(opaque) = gone {
            self.ntlm.lock().remove(&opaque);
        }
    }

    /// Does `flow` carry a Lync security association (its device speaks the Lync dialect)?
    pub(crate) fn on_association(&self, flow: sip_transport::Source) -> bool {
        flow.connection
            .is_some_and(|id| self.sa_flows.read().contains_key(&id))
    }

    /// The association of the connection a request came over, if any.
    pub(crate) fn association_of(&self, req: &ServerRequest) -> Option<String> {
        let id = req.source.connection?;
        let flows = self.sa_flows.read();
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
        let seen_before = |sas: &SecurityAssociations| match sas.get(opaque) {
            Some(SecurityAssociation::Established { client_num, .. }) => num <= *client_num,
            _ => true,
        };
        let (session, user, targetname, version) = {
            let sas = self.ntlm.lock();
            if seen_before(&sas) {
                return None;
            }
            let Some(SecurityAssociation::Established {
                session,
                user,
                targetname,
                version,
                ..
            }) = sas.get(opaque)
            else {
                return None;
            };
            (session.clone(), user.clone(), targetname.clone(), *version)
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
        let mut sas = self.ntlm.lock();
        if seen_before(&sas) {
            return None;
        }
        if let Some(SecurityAssociation::Established { client_num, .. }) = sas.get_mut(opaque) {
            *client_num = num;
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
            let flows = self.sa_flows.read();
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
            let flows = self.sa_flows.read();
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

pub(crate) type SecurityAssociations = HashMap<String, SecurityAssociation>;
