//! Digest authentication of requests (RFC 3261 §22, RFC 8760): challenges with 401 for
//! REGISTER and 407 for everything else, verification against the stored HA1s, nonce
//! expiry (`stale=true`) and nonce-count replay protection.

use sip_digest::{digests_equal, response, Algorithm, DigestResponse, NonceState};
use sip_message::{AuthHeader, HeaderName, Message};
use sip_transaction::ServerRequest;
use switchboard_store::Address;

use crate::Core;

/// The outcome of checking a request's credentials.
pub(crate) enum AuthResult {
    /// Authenticated as this user.
    Ok(Address),
    /// Answer with a challenge (401/407); `stale` per RFC 7616 §3.3.
    Challenge { stale: bool },
    /// Answer 403: wrong password, unknown or disabled user.
    Forbidden(&'static str),
}

impl Core {
    /// Authenticates the request for `realm`, or answers it (401/407 challenge, 403) and
    /// returns `None`.
    pub(crate) async fn authenticate_or_answer(
        &self,
        req: &ServerRequest,
        realm: &str,
    ) -> Option<Address> {
        match self.authenticate(&req.message, realm) {
            AuthResult::Ok(a) => Some(a),
            AuthResult::Challenge { stale } => {
                let ch = self.challenge(&req.message, realm, stale);
                req.tx.respond(&ch).await;
                None
            }
            AuthResult::Forbidden(why) => {
                self.respond_warning(req, 403, why).await;
                None
            }
        }
    }

    /// Checks the credentials for `realm` in `msg` (Authorization for REGISTER,
    /// Proxy-Authorization otherwise).
    pub(crate) fn authenticate(&self, msg: &Message, realm: &str) -> AuthResult {
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
        let Ok(address) = Address::parse(&format!("{username}@{realm}")) else {
            return AuthResult::Forbidden("bad credentials");
        };
        let user = match self.users.find(&address) {
            Ok(Some(u)) => u,
            Ok(None) => return AuthResult::Forbidden("bad credentials"),
            Err(e) => {
                tracing::error!(error = %e, "user directory unavailable");
                return AuthResult::Forbidden("user directory unavailable");
            }
        };
        if !user.enabled {
            return AuthResult::Forbidden("account disabled");
        }
        let method = msg.method().map(|m| m.as_str()).unwrap_or("");
        let params = DigestResponse {
            method,
            uri,
            nonce,
            qop,
            nc: creds.param("nc"),
            cnonce: creds.param("cnonce"),
        };
        let expected = response(alg, user.credentials.ha1(alg), &params);
        let correct = digests_equal(&expected, given);
        let now = self.now_secs();
        match self.nonces.check(nonce, now) {
            NonceState::Fresh => {}
            // RFC 7616 §3.3: a right answer to an old nonce earns a fresh one.
            _ if correct => return AuthResult::Challenge { stale: true },
            _ => return AuthResult::Forbidden("bad credentials"),
        }
        if !correct {
            return AuthResult::Forbidden("bad credentials");
        }
        if !self.replay.accept(nonce, params.nc, now) {
            tracing::info!(user = %address, "replayed nonce-count refused");
            return AuthResult::Challenge { stale: true };
        }
        AuthResult::Ok(address)
    }

    /// A 401 or 407 carrying one challenge per configured algorithm, preferred first
    /// (RFC 8760 §2.4).
    pub(crate) fn challenge(&self, msg: &Message, realm: &str, stale: bool) -> Message {
        let is_register = msg.method() == Some(&sip_message::Method::Register);
        let (status, header) = if is_register {
            (401, HeaderName::WwwAuthenticate)
        } else {
            (407, HeaderName::ProxyAuthenticate)
        };
        let mut resp = msg.response(status, Some(&self.to_tag(msg)));
        let nonce = self.nonces.issue(self.now_secs());
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
