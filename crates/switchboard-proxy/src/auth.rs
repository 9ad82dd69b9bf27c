//! Digest authentication of requests (RFC 3261 §22, RFC 8760): challenges with 401 for
//! REGISTER and 407 for everything else, verification against the stored HA1s, nonce
//! expiry (`stale=true`) and nonce-count replay protection.
//!
//! Resisting guessing: nonces are bound to the client's address and burned by a wrong
//! answer (each guess costs a new challenge and is counted); an unknown user and a wrong
//! password get the same answer after the same work; every failure is logged and counted
//! per (user, source) and per source by the guard, which slows the answers down, then
//! locks that user out *from that source* (403 with a Warning), then bans the source.

use std::net::IpAddr;
use std::time::Duration;

use sip_digest::{digests_equal, response, Algorithm, DigestResponse, NonceState};
use sip_message::{AuthHeader, HeaderName, Message};
use sip_transaction::ServerRequest;
use switchboard_core::Address;

use crate::Core;

/// The outcome of checking a request's credentials.
pub(crate) enum AuthResult {
    /// Authenticated as this user.
    Ok(Address),
    /// Answer with a challenge (401/407); `stale` per RFC 7616 §3.3.
    Challenge { stale: bool },
    /// Answer 403 with this Warning text, after `delay` (a failed guess).
    Forbidden { why: &'static str, delay: Duration },
    /// The user directory cannot answer: 503, nobody is let in.
    Unavailable,
}

/// What an unknown user's answer is checked against (it never matches: `correct`
/// also requires a user).
const DUMMY_HA1: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The same text for an unknown user and a wrong password: no user enumeration.
pub(crate) const BAD_CREDENTIALS: &str = "wrong user name or password";

/// The binding of a nonce: the client's address.
fn binding(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => a.octets().to_vec(),
        },
    }
}

impl Core {
    /// Authenticates the request for `realm`, or answers it (401/407 challenge, 403) and
    /// returns `None`.
    pub(crate) async fn authenticate_or_answer(
        &self,
        req: &ServerRequest,
        realm: &str,
    ) -> Option<Address> {
        match self
            .authenticate(&req.message, realm, req.source.remote.ip())
            .await
        {
            AuthResult::Ok(a) => Some(a),
            AuthResult::Challenge { stale } => {
                let ch = self.challenge(&req.message, realm, stale, req.source.remote.ip());
                req.tx.respond(&ch).await;
                None
            }
            AuthResult::Forbidden { why, delay } => {
                self.refuse_after(req, why, delay).await;
                None
            }
            AuthResult::Unavailable => {
                self.respond_unavailable(req).await;
                None
            }
        }
    }

    /// 503 with Retry-After: the store cannot answer (fail closed).
    pub(crate) async fn respond_unavailable(&self, req: &ServerRequest) {
        let mut resp = self.response(&req.message, 503);
        resp.headers
            .push(HeaderName::from_wire("Retry-After"), "30");
        req.tx.respond(&resp).await;
    }

    /// Answers 403 with `why`; after `delay` when there is one, on a task of its own
    /// (the request may have come in on a receive loop that serves everyone).
    pub(crate) async fn refuse_after(&self, req: &ServerRequest, why: &str, delay: Duration) {
        let mut resp = self.response(&req.message, 403);
        resp.headers
            .push(HeaderName::Warning, format!("399 switchboard \"{why}\""));
        self.respond_later(req, resp, delay).await;
    }

    /// Sends `resp` after `delay`, on a task of its own when there is a delay.
    pub(crate) async fn respond_later(&self, req: &ServerRequest, resp: Message, delay: Duration) {
        if delay.is_zero() {
            return req.tx.respond(&resp).await;
        }
        let tx = req.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            tx.respond(&resp).await;
        });
    }

    /// Checks the credentials for `realm` in `msg` (Authorization for REGISTER,
    /// Proxy-Authorization otherwise), sent from `source`.
    pub(crate) async fn authenticate(
        &self,
        msg: &Message,
        realm: &str,
        source: IpAddr,
    ) -> AuthResult {
        let is_register = msg.method() == Some(&sip_message::Method::Register);
        let header = if is_register {
            HeaderName::Authorization
        } else {
            HeaderName::ProxyAuthorization
        };
        // Several credentials may be present (one per realm, §22.3); take ours. Unknown
        // schemes are ignored and the client is challenged (RFC 4475 §3.3.7).
        let creds = msg
            .headers
            .get_all(&header)
            .filter_map(|v| AuthHeader::parse(v).ok())
            .find(|a| {
                a.scheme.eq_ignore_ascii_case("Digest")
                    && a.param("realm")
                        .is_some_and(|r| r.eq_ignore_ascii_case(realm))
            });
        let Some(creds) = creds else {
            return AuthResult::Challenge { stale: false };
        };
        let (Some(username), Some(nonce), Some(uri), Some(given)) = (
            creds.param("username"),
            creds.param("nonce"),
            creds.param("uri"),
            creds.param("response"),
        ) else {
            return AuthResult::Challenge { stale: false };
        };
        let Some(alg) = Algorithm::from_param(creds.param("algorithm")) else {
            return AuthResult::Challenge { stale: false };
        };
        let qop = creds.param("qop");
        if qop.is_some_and(|q| !q.eq_ignore_ascii_case("auth")) {
            return AuthResult::Challenge { stale: false };
        }
        let guard = self.layer.transports().guard();
        let account = format!("{username}@{realm}").to_ascii_lowercase();
        if let Some(left) = guard.auth_locked(&account, source) {
            tracing::info!(%source, user = %account, "sign-in refused: locked out");
            return AuthResult::Forbidden {
                why: locked_text(left),
                delay: Duration::ZERO,
            };
        }
        let address = Address::parse(&account).ok();
        let found = match &address {
            Some(a) => Some(self.users.find(a).await),
            None => None,
        };
        let user = match found {
            Some(Ok(Some(u))) => address.map(|a| (u, a)),
            Some(Ok(None)) | None => None,
            Some(Err(e)) => {
                // Fail closed: nobody is let in while the directory cannot answer.
                tracing::error!(error = %e, "user directory unavailable");
                return AuthResult::Unavailable;
            }
        };
        let method = msg.method().map(|m| m.as_str()).unwrap_or("");
        let params = DigestResponse {
            method,
            uri,
            nonce,
            qop,
            nc: creds.param("nc"),
            cnonce: creds.param("cnonce"),
        };
        // An unknown user costs the same work as a known one, and fails the same way.
        let ha1: &str = match &user {
            Some((u, _)) => u.credentials.ha1(alg),
            None => match alg {
                Algorithm::Md5 => &DUMMY_HA1[..32],
                Algorithm::Sha256 => DUMMY_HA1,
            },
        };
        let expected = response(alg, ha1, &params);
        let correct = user.is_some() && digests_equal(&expected, given);
        let now = self.now_secs();
        // Only a nonce we issued (its MAC checked) is filed: forged ones cost no memory.
        let issued = match self.nonces.check_bound(nonce, now, &binding(source)) {
            NonceState::Fresh => self.nonces.issued_at(nonce),
            _ => None,
        };
        let fail = |why| {
            if let Some(issued) = issued {
                self.replay.burn(nonce, issued, now);
            }
            let penalty = guard.auth_failed(&account, source, "digest");
            AuthResult::Forbidden {
                why,
                delay: penalty.delay,
            }
        };
        match issued {
            // A replayed nonce-count or a nonce burned by an earlier wrong answer gets a
            // new challenge *before* the answer is looked at: otherwise one nonce would
            // tell right guesses (stale) from wrong ones (403) without limit.
            Some(at) if !self.replay.accept(nonce, params.nc, at, now) => {
                tracing::debug!(user = %account, "replayed or burned nonce");
                return AuthResult::Challenge { stale: true };
            }
            Some(_) => {}
            // An old nonce, one issued to another address (a client that moved) or one
            // we never issued: a fresh challenge (RFC 7616 §3.3), the answer not judged
            // and nothing counted. Only a guess on a nonce this address was given counts,
            // so a spoofed datagram cannot lock a user out or get an address banned.
            None => return AuthResult::Challenge { stale: true },
        }
        if !correct {
            return fail(BAD_CREDENTIALS);
        }
        let Some((user, address)) = user else {
            return fail(BAD_CREDENTIALS);
        };
        if !user.enabled {
            // Said only to whoever knows the password.
            return AuthResult::Forbidden {
                why: "account disabled",
                delay: Duration::ZERO,
            };
        }
        guard.auth_succeeded(&account, source);
        AuthResult::Ok(address)
    }

    /// A 401 or 407 carrying one challenge per configured algorithm, preferred first
    /// (RFC 8760 §2.4).
    pub(crate) fn challenge(
        &self,
        msg: &Message,
        realm: &str,
        stale: bool,
        source: IpAddr,
    ) -> Message {
        let is_register = msg.method() == Some(&sip_message::Method::Register);
        let (status, header) = if is_register {
            (401, HeaderName::WwwAuthenticate)
        } else {
            (407, HeaderName::ProxyAuthenticate)
        };
        let mut resp = msg.response(status, Some(&self.to_tag(msg)));
        let nonce = self.nonces.issue_bound(self.now_secs(), &binding(source));
        for alg in &self.config.digest_algorithms {
            let mut v = format!(
                "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                alg.name()
            );
            if stale {
                v.push_str(", stale=true");
            }
            resp.headers.push(header.clone(), v);
        }
        resp
    }
}

/// The Warning of a sign-in refused during a lockout.
pub(crate) fn locked_text(left: Duration) -> &'static str {
    if left > Duration::from_secs(120) {
        "too many failed sign-ins from this address; try again in a few minutes"
    } else {
        "too many failed sign-ins from this address; try again shortly"
    }
}
