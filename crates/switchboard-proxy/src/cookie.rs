//! Unforgeable marks on what this proxy creates, so that it relays only those
//! (not an open relay, a port scanner or a reflector):
//! - **Record-Route cookie** (`sbt=` on our Record-Route URI): an HMAC of the dialog's
//!   Call-ID, then of each remote target the dialog established — the caller's Contact,
//!   added when the dialog-creating request passes, and the callee's, added to the
//!   Record-Route of the response on its way back (a proxy may rewrite its own
//!   Record-Route in responses, RFC 3261 §16.7 step 4). An in-dialog request that names
//!   us in its Route is sent to an unregistered remote target only when the cookie proves
//!   that target belongs to that dialog; an ACK is forwarded only with a cookie for its
//!   Call-ID.
//! - **Branch cookie**: our Via branch carries an HMAC of the Via below it (where the
//!   response goes next), so a stray response is relayed only to where the request really
//!   came from.
//!
//! The key is the server's route secret (kept in the data directory, so a restart keeps
//! established dialogs working). MACs are HMAC-SHA-256 truncated to 64 bits: enough
//! against online guessing, which the per-source limits slow further.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sip_message::{SipUri, Via};

/// What of a remote target a cookie covers: where requests to it go (scheme, user,
/// host, port, transport), not parameters a client might reorder.
pub(crate) fn target_key(uri: &SipUri) -> String {
    format!(
        "{:?}|{}|{}|{}|{}",
        uri.scheme,
        uri.user.as_deref().unwrap_or(""),
        uri.host.to_string().to_ascii_lowercase(),
        uri.port.map(|p| p.to_string()).unwrap_or_default(),
        uri.params
            .value("transport")
            .unwrap_or("")
            .to_ascii_lowercase()
    )
}

/// The Record-Route URI parameter that carries the cookie.
pub(crate) const ROUTE_PARAM: &str = "sbt";

pub(crate) struct Cookies {
    key: [u8; 32],
}

impl Cookies {
    pub(crate) fn new(key: [u8; 32]) -> Cookies {
        Cookies { key }
    }

    fn mac(&self, label: &str, parts: &[&str]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(label.as_bytes());
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p.as_bytes());
        }
        hex::encode(&m.finalize().into_bytes()[..8])
    }

    fn dialog_mac(&self, call_id: &str) -> String {
        self.mac("dialog", &[call_id])
    }

    fn target_mac(&self, call_id: &str, target: &str) -> String {
        self.mac("target", &[call_id, target])
    }

    /// The cookie of a dialog-creating request whose sender's Contact is `caller`.
    pub(crate) fn route_cookie(&self, call_id: &str, caller: Option<&str>) -> String {
        let mut c = self.dialog_mac(call_id);
        if let Some(t) = caller {
            c.push('.');
            c.push_str(&self.target_mac(call_id, t));
        }
        c
    }

    /// `cookie` with the callee's Contact added (the response's Record-Route).
    pub(crate) fn with_callee(&self, cookie: &str, call_id: &str, callee: &str) -> String {
        let mac = self.target_mac(call_id, callee);
        if cookie.split('.').skip(1).any(|m| m == mac) {
            return cookie.to_owned();
        }
        format!("{cookie}.{mac}")
    }

    /// Whether `cookie` was made by us for this Call-ID.
    pub(crate) fn dialog_ok(&self, cookie: &str, call_id: &str) -> bool {
        let first = cookie.split('.').next().unwrap_or("");
        constant_eq(first, &self.dialog_mac(call_id))
    }

    /// Whether `cookie` names `target` as a remote target of this Call-ID's dialog.
    pub(crate) fn target_ok(&self, cookie: &str, call_id: &str, target: &str) -> bool {
        if !self.dialog_ok(cookie, call_id) {
            return false;
        }
        let mac = self.target_mac(call_id, target);
        cookie.split('.').skip(1).any(|m| constant_eq(m, &mac))
    }

    /// The MAC our branch carries for the Via below ours.
    pub(crate) fn branch_mac(&self, upstream: &Via) -> String {
        let port = upstream.port.map(|p| p.to_string()).unwrap_or_default();
        self.mac(
            "branch",
            &[
                &upstream.transport.to_ascii_uppercase(),
                &upstream.host.to_string(),
                &port,
                upstream.params.value("received").unwrap_or(""),
                upstream.params.value("rport").unwrap_or(""),
                upstream.branch().unwrap_or(""),
            ],
        )
    }
}

pub(crate) fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_prove_the_dialog_and_its_targets_only() {
        let c = Cookies::new([7; 32]);
        let caller = "sip:alice@192.0.2.1:5060";
        let callee = "sip:bob@192.0.2.2:5070;transport=tcp";
        let cookie = c.route_cookie("call-1", Some(caller));
        assert!(c.dialog_ok(&cookie, "call-1"));
        assert!(c.target_ok(&cookie, "call-1", caller));
        assert!(!c.target_ok(&cookie, "call-1", callee));
        let both = c.with_callee(&cookie, "call-1", callee);
        assert!(c.target_ok(&both, "call-1", callee));
        assert!(c.target_ok(&both, "call-1", caller));
        assert_eq!(c.with_callee(&both, "call-1", callee), both, "idempotent");
        // Another dialog, another target, another key: all refused.
        assert!(!c.dialog_ok(&both, "call-2"));
        assert!(!c.target_ok(&both, "call-2", caller));
        assert!(!c.target_ok(&both, "call-1", "sip:x@203.0.113.7:9"));
        assert!(!Cookies::new([8; 32]).dialog_ok(&both, "call-1"));
        assert!(!c.dialog_ok("", "call-1"));
        assert!(!c.target_ok("..", "call-1", caller));
    }

    #[test]
    fn branch_mac_covers_where_the_response_goes() {
        let c = Cookies::new([1; 32]);
        let v = |s: &str| Via::parse(s).unwrap();
        let real = c.branch_mac(&v(
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=5060;received=192.0.2.1",
        ));
        let moved = c.branch_mac(&v(
            "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK1;rport=5060;received=203.0.113.9",
        ));
        assert_ne!(real, moved);
        assert_eq!(
            real,
            c.branch_mac(&v(
                "SIP/2.0/udp 192.0.2.1:5060;received=192.0.2.1;rport=5060;branch=z9hG4bK1"
            )),
            "parameter order and transport case do not matter"
        );
    }
}
