//! Unforgeable marks on what this proxy creates, so that it relays only those
//! (not an open relay, a port scanner or a reflector):
//! - **Record-Route cookie** (`sbt=` on our Record-Route URI): an HMAC of the dialog
//!   (its Call-ID and the caller's From tag), then one entry per party naming the
//!   **flow** the party reached us over (transport, address and port), with an HMAC of
//!   that flow in this dialog. The caller's entry is added as the dialog-creating request
//!   passes; the callee's as the 2xx comes back from the flow we sent the request over (a
//!   proxy may rewrite its own Record-Route in responses, RFC 3261 §16.7 step 4). An
//!   in-dialog request that names us in its Route and whose Request-URI is no registered
//!   contact goes to the *other* party's flow (the sender is the caller when its From
//!   tag is the one the cookie was made for) — never to the address its Request-URI or
//!   anyone's Contact names. So a party can change its remote target (a target refresh,
//!   RFC 3261 §12.2) and the dialog still routes, while the only addresses this server
//!   sends to are those that authenticated to it, or that it reached itself, in this
//!   dialog. An ACK is forwarded only with a valid cookie.
//! - **Branch cookie**: our Via branch carries an HMAC of the Via below it (where the
//!   response goes next), so a stray response is relayed only to where the request really
//!   came from.
//!
//! The key is the server's route secret (kept in the data directory, so a restart keeps
//! established dialogs working). MACs are HMAC-SHA-256 truncated to 64 bits: enough
//! against online guessing, which the per-source limits slow further.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sip_message::Via;
use sip_transport::TransportKind;

/// The Record-Route URI parameter that carries the cookie.
pub(crate) const ROUTE_PARAM: &str = "sbt";

/// Where a party of a dialog is reached: the transport and far address of its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    pub(crate) transport: TransportKind,
    pub(crate) remote: SocketAddr,
}

impl FlowKey {
    /// `u`/`t`/`s`, the address in hex (8 or 32 digits), the port in 4: URI-parameter
    /// safe, and no `.` or `-` (the cookie's separators).
    fn encode(self) -> String {
        let kind = match self.transport {
            TransportKind::Udp => 'u',
            TransportKind::Tcp => 't',
            TransportKind::Tls => 's',
        };
        let ip = match self.remote.ip() {
            IpAddr::V4(a) => hex::encode(a.octets()),
            IpAddr::V6(a) => hex::encode(a.octets()),
        };
        format!("{kind}{ip}{:04x}", self.remote.port())
    }

    fn decode(s: &str) -> Option<FlowKey> {
        let transport = match s.get(..1)? {
            "u" => TransportKind::Udp,
            "t" => TransportKind::Tcp,
            "s" => TransportKind::Tls,
            _ => return None,
        };
        let rest = s.get(1..)?;
        let (ip, port) = rest.split_at_checked(rest.len().checked_sub(4)?)?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip: IpAddr = match hex::decode(ip).ok()?.as_slice() {
            b if b.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(b).ok()?),
            b if b.len() == 16 => IpAddr::from(<[u8; 16]>::try_from(b).ok()?),
            _ => return None,
        };
        Some(FlowKey {
            transport,
            remote: SocketAddr::new(ip, port),
        })
    }
}

/// Which party of a dialog an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Caller,
    Callee,
}

impl Party {
    fn letter(self) -> char {
        match self {
            Party::Caller => 'c',
            Party::Callee => 'e',
        }
    }
}

pub(crate) struct Cookies {
    /// HMAC-SHA256 keyed once; each cookie clones it (the key's pads are not hashed again).
    keyed: Hmac<Sha256>,
}

impl Cookies {
    pub(crate) fn new(key: [u8; 32]) -> Cookies {
        Cookies {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length"),
        }
    }

    fn mac(&self, label: &str, parts: &[&str]) -> String {
        let mut m = self.keyed.clone();
        m.update(label.as_bytes());
        for p in parts {
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p.as_bytes());
        }
        hex::encode(&m.finalize().into_bytes()[..8])
    }

    fn dialog_mac(&self, call_id: &str, caller_tag: &str) -> String {
        self.mac("dialog", &[call_id, caller_tag])
    }

    fn entry(&self, call_id: &str, caller_tag: &str, party: Party, flow: FlowKey) -> String {
        let flow = flow.encode();
        let role = party.letter().to_string();
        let mac = self.mac("flow", &[call_id, caller_tag, &role, &flow]);
        format!("{role}{flow}-{mac}")
    }

    /// The cookie of a dialog-creating request from the caller whose From tag is
    /// `caller_tag`, which arrived over `caller_flow`.
    pub(crate) fn route_cookie(
        &self,
        call_id: &str,
        caller_tag: &str,
        caller_flow: FlowKey,
    ) -> String {
        format!(
            "{}.{}",
            self.dialog_mac(call_id, caller_tag),
            self.entry(call_id, caller_tag, Party::Caller, caller_flow)
        )
    }

    /// `cookie` with the callee's flow added (the Record-Route of its 2xx). A cookie that
    /// already names a callee is left alone.
    pub(crate) fn with_callee(
        &self,
        cookie: &str,
        call_id: &str,
        caller_tag: &str,
        callee_flow: FlowKey,
    ) -> String {
        if self
            .party_flow(cookie, call_id, caller_tag, Party::Callee)
            .is_some()
        {
            return cookie.to_owned();
        }
        let entry = self.entry(call_id, caller_tag, Party::Callee, callee_flow);
        format!("{cookie}.{entry}")
    }

    /// Whether `cookie` was made by us for this Call-ID and caller's tag.
    pub(crate) fn dialog_ok(&self, cookie: &str, call_id: &str, caller_tag: &str) -> bool {
        let first = cookie.split('.').next().unwrap_or("");
        constant_eq(first, &self.dialog_mac(call_id, caller_tag))
    }

    /// The flow of `party`, when `cookie` names one with a valid MAC.
    fn party_flow(
        &self,
        cookie: &str,
        call_id: &str,
        caller_tag: &str,
        party: Party,
    ) -> Option<FlowKey> {
        cookie.split('.').skip(1).find_map(|e| {
            let rest = e.strip_prefix(party.letter())?;
            let (flow, _) = rest.split_once('-')?;
            let flow = FlowKey::decode(flow)?;
            constant_eq(e, &self.entry(call_id, caller_tag, party, flow)).then_some(flow)
        })
    }

    /// Where an in-dialog request with these tags goes: the flow of the party that did
    /// not send it. `None` when the cookie is not ours for this dialog, or does not
    /// (yet) name that party.
    pub(crate) fn peer_flow(
        &self,
        cookie: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Option<FlowKey> {
        if self.dialog_ok(cookie, call_id, from_tag) {
            self.party_flow(cookie, call_id, from_tag, Party::Callee)
        } else if self.dialog_ok(cookie, call_id, to_tag) {
            self.party_flow(cookie, call_id, to_tag, Party::Caller)
        } else {
            None
        }
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

    fn flow(s: &str) -> FlowKey {
        FlowKey {
            transport: TransportKind::Udp,
            remote: s.parse().unwrap(),
        }
    }

    #[test]
    fn cookies_send_each_party_to_the_other_ones_flow_only() {
        let c = Cookies::new([7; 32]);
        let alice = flow("192.0.2.1:5060");
        let bob = FlowKey {
            transport: TransportKind::Tls,
            remote: "[2001:db8::2]:50123".parse().unwrap(),
        };
        let cookie = c.route_cookie("call-1", "atag", alice);
        assert!(c.dialog_ok(&cookie, "call-1", "atag"));
        assert!(!c.dialog_ok(&cookie, "call-1", "btag"));
        // Before the 2xx is sealed: the callee's requests (From btag, To atag) reach
        // alice; hers reach nobody yet.
        assert_eq!(c.peer_flow(&cookie, "call-1", "btag", "atag"), Some(alice));
        assert_eq!(c.peer_flow(&cookie, "call-1", "atag", "btag"), None);
        let both = c.with_callee(&cookie, "call-1", "atag", bob);
        assert_eq!(c.peer_flow(&both, "call-1", "atag", "btag"), Some(bob));
        assert_eq!(c.peer_flow(&both, "call-1", "btag", "atag"), Some(alice));
        // One callee per cookie: a second seal changes nothing.
        assert_eq!(
            c.with_callee(&both, "call-1", "atag", flow("203.0.113.7:9")),
            both
        );
        // Another dialog, other tags, another key: nothing.
        assert_eq!(c.peer_flow(&both, "call-2", "atag", "btag"), None);
        assert_eq!(c.peer_flow(&both, "call-1", "xtag", "ytag"), None);
        assert_eq!(
            Cookies::new([8; 32]).peer_flow(&both, "call-1", "atag", "btag"),
            None
        );
        assert!(!c.dialog_ok("", "call-1", "atag"));
        assert_eq!(c.peer_flow("..", "call-1", "atag", "btag"), None);
    }

    #[test]
    fn an_entry_moved_to_another_flow_or_party_is_refused() {
        let c = Cookies::new([7; 32]);
        let alice = flow("192.0.2.1:5060");
        let cookie = c.route_cookie("call-1", "atag", alice);
        let entry = cookie.split('.').nth(1).unwrap();
        let elsewhere = flow("203.0.113.9:5060").encode();
        let moved = cookie.replace(&alice.encode(), &elsewhere);
        assert_eq!(c.peer_flow(&moved, "call-1", "btag", "atag"), None);
        // The caller's entry relabelled as the callee's.
        let relabelled = format!("{cookie}.e{}", &entry[1..]);
        assert_eq!(c.peer_flow(&relabelled, "call-1", "atag", "btag"), None);
    }

    #[test]
    fn flow_keys_round_trip_and_refuse_junk() {
        for f in [
            flow("192.0.2.1:5060"),
            flow("[::1]:1"),
            FlowKey {
                transport: TransportKind::Tcp,
                remote: "10.0.0.1:65535".parse().unwrap(),
            },
        ] {
            assert_eq!(FlowKey::decode(&f.encode()), Some(f));
        }
        for junk in [
            "",
            "u",
            "x7f0000011f90",
            "u7f00001f90",
            "u7f0000011f9g",
            "ué7f000001",
        ] {
            assert_eq!(FlowKey::decode(junk), None, "{junk}");
        }
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
