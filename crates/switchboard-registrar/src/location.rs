//! Bindings, REGISTER processing (RFC 3261 §10.3 steps 6–8), expiry, GRUU lookups.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use parking_lot::RwLock;
use sip_message::{quote, ContactValue, HeaderName, Host, Message, NameAddr, Scheme, Uri};
use switchboard_core::seam::{Connection, Flow, Transport};
use tokio::time::Instant;

/// Registrar limits.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Used when the request gives no expiry.
    pub default_expires: u32,
    /// Requests for shorter (non-zero) expiry get 423 with Min-Expires (§10.3 step 7).
    pub min_expires: u32,
    /// Longer requested expiries are cut to this.
    pub max_expires: u32,
    /// Devices per user at most.
    pub max_bindings_per_aor: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_bindings_per_aor: 32,
        }
    }
}

/// One registered contact of one AoR.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The Contact as registered (URI plus header parameters such as `+sip.instance`).
    pub contact: NameAddr,
    /// The contact URI in its canonical printed form (binding identity, §10.3 step 7).
    pub contact_key: String,
    pub expires_at: Instant,
    pub call_id: String,
    pub cseq: u32,
    /// `+sip.instance` (RFC 5626 §4.1), unquoted, e.g. `<urn:uuid:...>`.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// The flow the REGISTER arrived on: requests for this binding go back over it.
    pub flow: Flow,
    /// RFC 5627 temporary GRUU user part, if one was issued.
    pub temp_gruu: Option<String>,
    /// Reached over `flow` only, never at the address its Contact names: set on a
    /// dialog's remote target that the proxy proved by the flow it came from (a
    /// registration's binding is reached at its Contact when its connection is gone).
    pub pinned: bool,
    /// The first hop a request for this binding takes (RFC 3327 Path), when it is not
    /// this server's own: a device connected to another front end of a pool is reached
    /// through that front end, at this URI (see switchboard-proxy's `pool`).
    pub path: Option<String>,
}

impl Binding {
    pub fn remaining(&self, now: Instant) -> u32 {
        self.expires_at.saturating_duration_since(now).as_secs() as u32
    }

    /// The contact's transport (`transport=` parameter; UDP by default for `sip:`,
    /// RFC 3263 §4.1 without DNS) and socket address, when its host is an IP address.
    pub fn contact_addr(&self) -> Option<(Transport, SocketAddr)> {
        let uri = self.contact.uri.as_sip()?;
        let ip: IpAddr = match &uri.host {
            Host::V4(a) => IpAddr::V4(*a),
            Host::V6(a) => IpAddr::V6(*a),
            Host::Domain(_) => return None,
        };
        let kind = match uri.transport() {
            Some(t) => Transport::from_name(&t)?,
            None if uri.scheme == Scheme::Sips => Transport::Tls,
            None => Transport::Udp,
        };
        let default_port = if kind == Transport::Tls { 5061 } else { 5060 };
        Some((kind, SocketAddr::new(ip, uri.port.unwrap_or(default_port))))
    }

    /// Whether the device can still be reached once its registration connection is gone:
    /// only if its Contact names another address we can open a TCP connection to. A
    /// Contact equal to the connection's own address, a TLS Contact (we open no outbound
    /// TLS) or an RFC 5626 outbound registration (reg-id) cannot.
    pub fn reachable_without_flow(&self) -> bool {
        let from = self.flow.remote();
        // Only on the host the REGISTER came from: a Contact naming another host would
        // have this server connect wherever a user asked (a reflector, a port scanner).
        self.reg_id.is_none()
            && matches!(self.contact_addr(),
                Some((Transport::Tcp, a)) if a != from && a.ip() == from.ip())
    }
}

/// Why a REGISTER failed, with the status to answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Bad(String),
    #[error("interval too brief")]
    IntervalTooBrief { min_expires: u32 },
    #[error("too many registered devices (at most {0})")]
    TooManyBindings(usize),
}

impl RegisterError {
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::Bad(_) => 400,
            RegisterError::IntervalTooBrief { .. } => 423,
            RegisterError::TooManyBindings(_) => 403,
        }
    }
}

/// The result of a successful REGISTER: the AoR's bindings after the change.
#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    pub bindings: Vec<Binding>,
    /// True when this REGISTER added a binding that did not exist.
    pub added: bool,
}

/// The location service.
pub struct Location {
    config: RegistrarConfig,
    aors: RwLock<HashMap<String, Vec<Binding>>>,
    /// temp-GRUU user part -> (AoR, instance)
    temp_gruus: RwLock<HashMap<String, (String, String)>>,
    /// contact key -> the AoRs that registered it, for in-dialog requests addressed to
    /// a contact. Usually one; two users may register the same Contact URI (say
    /// `sip:192.168.1.10:5060` behind two different NATs), and then each keeps its own:
    /// a request reaches the one its To names, never whoever registered last.
    by_contact: RwLock<HashMap<String, Vec<String>>>,
}

/// Takes `aor` off the owners of `key`.
fn unindex(index: &mut HashMap<String, Vec<String>>, key: &str, aor: &str) {
    if let Some(owners) = index.get_mut(key) {
        owners.retain(|a| a != aor);
        if owners.is_empty() {
            index.remove(key);
        }
    }
}

/// The `+sip.instance` of a Contact, unquoted (as [`Binding::instance`] holds it).
pub fn instance_of(c: &NameAddr) -> Option<String> {
    c.params
        .value("+sip.instance")
        .map(|v| sip_message::unquote(v.trim_matches('"')))
}

/// Canonical contact key: the URI without the header params (§19.1.4 is approximated by
/// the normalised print: scheme, user, lower-cased host, port, params).
fn contact_key(uri: &Uri) -> String {
    uri.to_string()
}

impl Location {
    pub fn new(config: RegistrarConfig) -> Self {
        Location {
            config,
            aors: RwLock::new(HashMap::new()),
            temp_gruus: RwLock::new(HashMap::new()),
            by_contact: RwLock::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// Applies a REGISTER for `aor` (already authenticated) that arrived over `flow`.
    pub fn register(
        &self,
        aor: &str,
        req: &Message,
        flow: Flow,
    ) -> Result<RegisterOutcome, RegisterError> {
        let now = Instant::now();
        let call_id = req.call_id().unwrap_or("").to_owned();
        let cseq = req.cseq().map_err(|e| RegisterError::Bad(e.reason))?.seq;
        let header_expires = req
            .header_u32(&HeaderName::Expires)
            .map_err(|e| RegisterError::Bad(e.reason))?;
        let contacts = req.contacts().map_err(|e| RegisterError::Bad(e.reason))?;
        let mut aors = self.aors.write();
        let existing = aors.entry(aor.to_owned()).or_default();
        // Bindings that go (expired, or removed by this REGISTER): their index entries and
        // temporary GRUUs go with them.
        let mut removed: Vec<Binding> = Vec::new();
        existing.retain(|b| {
            let live = b.expires_at > now;
            if !live {
                removed.push(b.clone());
            }
            live
        });
        // Expired bindings are gone whatever this REGISTER turns out to be (it may yet be
        // refused): their index entries and temporary GRUUs go now.
        if !removed.is_empty() {
            let mut index = self.by_contact.write();
            for gone in removed.drain(..) {
                if !existing.iter().any(|b| b.contact_key == gone.contact_key) {
                    unindex(&mut index, &gone.contact_key, aor);
                }
                if let Some(g) = &gone.temp_gruu {
                    self.temp_gruus.write().remove(g);
                }
            }
        }
        let mut added = false;
        match contacts {
            ContactValue::Star => {
                // §10.3 step 6: '*' only with Expires: 0 and alone.
                if header_expires != Some(0) || req.headers.count(&HeaderName::Contact) != 1 {
                    return Err(RegisterError::Bad("Contact: * requires Expires: 0".into()));
                }
                if existing
                    .iter()
                    .any(|b| b.call_id == call_id && b.cseq >= cseq)
                {
                    return Err(RegisterError::Bad("CSeq out of order".into()));
                }
                removed.append(existing);
            }
            ContactValue::List(list) => {
                // Check everything first so a failing REGISTER changes nothing.
                let mut planned = Vec::with_capacity(list.len());
                for c in &list {
                    match &c.uri {
                        Uri::Sip(_) => {}
                        _ => return Err(RegisterError::Bad("contact is not a SIP URI".into())),
                    }
                    let expires = match c.params.value("expires") {
                        Some(v) => v
                            .parse::<u64>()
                            .map(|v| v.min(u32::MAX as u64) as u32)
                            .map_err(|_| RegisterError::Bad("bad expires parameter".into()))?,
                        None => header_expires.unwrap_or(self.config.default_expires),
                    };
                    if expires != 0 && expires < self.config.min_expires {
                        return Err(RegisterError::IntervalTooBrief {
                            min_expires: self.config.min_expires,
                        });
                    }
                    planned.push((c, expires.min(self.config.max_expires)));
                }
                let mut final_count = existing.len() as isize;
                for (c, expires) in &planned {
                    let key = contact_key(&c.uri);
                    let inst = instance_of(c);
                    match existing.iter().find(|b| same_binding(b, &key, &inst, c)) {
                        Some(b) if b.call_id == call_id && b.cseq >= cseq => {
                            return Err(RegisterError::Bad("CSeq out of order".into()));
                        }
                        Some(_) if *expires == 0 => final_count -= 1,
                        None if *expires > 0 => final_count += 1,
                        _ => {}
                    }
                }
                if final_count > self.config.max_bindings_per_aor as isize {
                    return Err(RegisterError::TooManyBindings(
                        self.config.max_bindings_per_aor,
                    ));
                }
                for (c, expires) in planned {
                    let key = contact_key(&c.uri);
                    let inst = instance_of(c);
                    let pos = existing
                        .iter()
                        .position(|b| same_binding(b, &key, &inst, c));
                    if expires == 0 {
                        if let Some(p) = pos {
                            removed.push(existing.remove(p));
                        }
                        continue;
                    }
                    let reg_id = c.params.value("reg-id").and_then(|v| v.parse().ok());
                    let mut binding = Binding {
                        contact: c.clone(),
                        contact_key: key,
                        expires_at: now + Duration::from_secs(expires as u64),
                        call_id: call_id.clone(),
                        cseq,
                        instance: inst.clone(),
                        reg_id,
                        flow,
                        temp_gruu: None,
                        pinned: false,
                        path: None,
                    };
                    match pos {
                        Some(p) => {
                            binding.temp_gruu = existing[p].temp_gruu.clone();
                            let old = std::mem::replace(&mut existing[p], binding);
                            // The same device (instance) under a new Contact: the old
                            // Contact leaves the index.
                            if old.contact_key != existing[p].contact_key {
                                removed.push(Binding {
                                    temp_gruu: None,
                                    pinned: false,
                                    ..old
                                });
                            }
                        }
                        None => {
                            added = true;
                            existing.push(binding);
                        }
                    }
                }
            }
        }
        // RFC 5627 §5: a temporary GRUU for each instance (kept across refreshes).
        if let Some(list) = aors.get_mut(aor) {
            for b in list.iter_mut() {
                if let (Some(inst), None) = (&b.instance, &b.temp_gruu) {
                    let t = format!("tgruu.{:016x}", rand::random::<u64>());
                    self.temp_gruus
                        .write()
                        .insert(t.clone(), (aor.to_owned(), inst.clone()));
                    b.temp_gruu = Some(t);
                }
            }
        }
        let bindings = aors.get(aor).cloned().unwrap_or_default();
        if bindings.is_empty() {
            aors.remove(aor);
        }
        {
            let mut index = self.by_contact.write();
            for gone in &removed {
                if !bindings.iter().any(|b| b.contact_key == gone.contact_key) {
                    unindex(&mut index, &gone.contact_key, aor);
                }
            }
            for b in &bindings {
                let owners = index.entry(b.contact_key.clone()).or_default();
                if !owners.iter().any(|a| a == aor) {
                    owners.push(aor.to_owned());
                }
            }
        }
        let dead_gruus: Vec<&String> = removed
            .iter()
            .filter_map(|b| b.temp_gruu.as_ref())
            .filter(|g| !bindings.iter().any(|b| b.temp_gruu.as_ref() == Some(*g)))
            .collect();
        let dead_gruus: Vec<String> = dead_gruus.into_iter().cloned().collect();
        self.forget_gruus(&dead_gruus);
        Ok(RegisterOutcome { bindings, added })
    }

    /// The live bindings of an AoR.
    pub fn lookup(&self, aor: &str) -> Vec<Binding> {
        let now = Instant::now();
        self.aors
            .read()
            .get(aor)
            .map(|v| v.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Resolves a GRUU (RFC 5627 §3): a public GRUU `aor;gr=<instance>` or a temporary
    /// one; returns the AoR and the one binding it names.
    pub fn lookup_gruu(
        &self,
        aor: &str,
        gr: Option<&str>,
        user: &str,
    ) -> Option<(String, Binding)> {
        let (aor, instance) = match gr {
            Some(inst) if !inst.is_empty() && !user.starts_with("tgruu.") => {
                (aor.to_owned(), sip_message::uri::unescape(inst))
            }
            _ => self.temp_gruus.read().get(user).cloned()?,
        };
        let b = self.lookup(&aor).into_iter().find(|b| {
            b.instance.as_deref().map(|i| i.trim_matches(['<', '>']))
                == Some(instance.trim_matches(['<', '>']))
        })?;
        Some((aor, b))
    }

    /// Finds the binding whose contact URI is `uri` (in-dialog requests sent to a
    /// registered contact go back over its flow). When several users registered that
    /// URI, the one `to_aor` (the request's To) names; with no such hint, none.
    pub fn binding_for_contact(&self, uri: &Uri, to_aor: Option<&str>) -> Option<Binding> {
        let key = contact_key(uri);
        let aor = {
            let index = self.by_contact.read();
            match index.get(&key)?.as_slice() {
                [only] => only.clone(),
                many => many
                    .iter()
                    .find(|a| to_aor.is_some_and(|t| t.eq_ignore_ascii_case(a)))?
                    .clone(),
            }
        };
        let now = Instant::now();
        self.aors
            .read()
            .get(&aor)?
            .iter()
            .find(|b| b.contact_key == key && b.expires_at > now)
            .cloned()
    }

    /// Forgets index entries of bindings that are gone (only those: no scan).
    fn unindex_all(&self, gone: &[(String, String)]) {
        if gone.is_empty() {
            return;
        }
        let aors = self.aors.read();
        let mut index = self.by_contact.write();
        for (aor, key) in gone {
            let still = aors
                .get(aor)
                .is_some_and(|list| list.iter().any(|b| &b.contact_key == key));
            if !still {
                unindex(&mut index, key, aor);
            }
        }
    }

    /// RFC 5626 §5.4: a flow that failed makes its bindings unusable; they are removed,
    /// unless their Contact can be reached another way.
    /// Returns the AoRs that lost bindings.
    pub fn flow_closed(&self, connection: Connection) -> Vec<String> {
        let mut affected = Vec::new();
        let mut gone = Vec::new();
        let mut gruus = Vec::new();
        let mut aors = self.aors.write();
        aors.retain(|aor, list| {
            let before = list.len();
            list.retain(|b| {
                let keep = b.flow.connection() != Some(connection) || b.reachable_without_flow();
                if !keep {
                    gone.push((aor.clone(), b.contact_key.clone()));
                    gruus.extend(b.temp_gruu.clone());
                }
                keep
            });
            if list.len() != before {
                affected.push(aor.clone());
            }
            !list.is_empty()
        });
        drop(aors);
        self.forget_gruus(&gruus);
        self.unindex_all(&gone);
        affected
    }

    fn forget_gruus(&self, gruus: &[String]) {
        if !gruus.is_empty() {
            let mut t = self.temp_gruus.write();
            for g in gruus {
                t.remove(g);
            }
        }
    }

    /// Drops expired bindings; returns the AoRs that lost one. Run periodically.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut gruus = Vec::new();
        let mut aors = self.aors.write();
        aors.retain(|aor, list| {
            list.retain(|b| {
                let keep = b.expires_at > now;
                if !keep {
                    gone.push((aor.clone(), b.contact_key.clone()));
                    gruus.extend(b.temp_gruu.clone());
                }
                keep
            });
            !list.is_empty()
        });
        drop(aors);
        self.forget_gruus(&gruus);
        self.unindex_all(&gone);
        let mut users: Vec<String> = gone.into_iter().map(|(aor, _)| aor).collect();
        users.dedup();
        users
    }

    /// Forgets every binding (a pool front end fenced: its registrations are no longer
    /// its own); returns the AoRs that had one.
    pub fn clear(&self) -> Vec<String> {
        let gone: Vec<String> = {
            let mut aors = self.aors.write();
            aors.drain().map(|(aor, _)| aor).collect()
        };
        self.temp_gruus.write().clear();
        self.by_contact.write().clear();
        gone
    }

    /// Number of AoRs and bindings.
    pub fn counts(&self) -> (usize, usize) {
        let aors = self.aors.read();
        (aors.len(), aors.values().map(Vec::len).sum())
    }

    /// The Contact header values of a 200 OK to REGISTER (§10.3 step 8), with each
    /// binding's remaining time and, for instances, its GRUUs (RFC 5627 §5). With
    /// `draft_gruu` the public GRUU is also given as `gruu`, the parameter of the GRUU
    /// draft (draft-ietf-sip-gruu-10) that Lync clients read.
    pub fn contact_values(
        &self,
        aor: &str,
        bindings: &[Binding],
        domain: &str,
        draft_gruu: bool,
    ) -> Vec<String> {
        let now = Instant::now();
        bindings
            .iter()
            .map(|b| {
                let mut c = NameAddr::new(b.contact.uri.clone());
                c.params = b.contact.params.clone();
                c.params
                    .set("expires", Some(&b.remaining(now).max(1).to_string()));
                if let Some(inst) = &b.instance {
                    let inst_uri = inst.trim_matches(['<', '>']);
                    let gruu = quote(&format!("{aor};gr={inst_uri}"));
                    c.params.set("pub-gruu", Some(&gruu));
                    if draft_gruu {
                        c.params.set("gruu", Some(&gruu));
                    }
                    if let Some(t) = &b.temp_gruu {
                        c.params
                            .set("temp-gruu", Some(&quote(&format!("sip:{t}@{domain};gr"))));
                    }
                }
                c.to_string()
            })
            .collect()
    }
}

fn same_binding(b: &Binding, key: &str, inst: &Option<String>, c: &NameAddr) -> bool {
    match (inst, &b.instance) {
        // RFC 5626 §6: instance (and reg-id) identify the binding.
        (Some(i), Some(bi)) => {
            i == bi && c.params.value("reg-id").and_then(|v| v.parse::<u32>().ok()) == b.reg_id
        }
        _ => b.contact_key == key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::seam::{Conn, FrontEnd};

    fn flow(port: u16, conn: Option<u64>) -> Flow {
        Flow::new(
            FrontEnd::LOCAL,
            Conn {
                transport: if conn.is_some() {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                remote: SocketAddr::from(([127, 0, 0, 1], port)),
                local: SocketAddr::from(([127, 0, 0, 1], 5060)),
                number: conn,
            },
        )
    }

    fn connection(number: u64) -> Connection {
        Connection {
            fe: FrontEnd::LOCAL,
            number,
        }
    }

    fn register(call_id: &str, cseq: u32, contacts: &[&str], expires: Option<u32>) -> Message {
        let mut text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx{cseq}\r\n\
             From: <sip:bob@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for c in contacts {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        sip_message::parse_datagram(text.as_bytes()).unwrap()
    }

    const AOR: &str = "sip:bob@example.com";

    /// The contact index holds only live contacts: a device that moves to a new Contact,
    /// or whose binding expired before a REGISTER that is then refused, leaves nothing
    /// behind (the index is no longer swept whole).
    #[tokio::test(start_paused = true)]
    async fn the_index_keeps_no_contact_a_device_left() {
        let loc = Location::new(RegistrarConfig::default());
        let inst = ";+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\"";
        let old = format!("<sip:bob@127.0.0.1:40001;transport=tcp>{inst}");
        let new = format!("<sip:bob@127.0.0.1:40002;transport=tcp>{inst}");
        loc.register(
            AOR,
            &register("a", 1, &[&old], Some(120)),
            flow(40001, Some(1)),
        )
        .unwrap();
        loc.register(
            AOR,
            &register("a", 2, &[&new], Some(120)),
            flow(40002, Some(2)),
        )
        .unwrap();
        let at = |port| Uri::parse(&format!("sip:bob@127.0.0.1:{port};transport=tcp")).unwrap();
        assert!(loc.binding_for_contact(&at(40001), None).is_none());
        assert!(loc.binding_for_contact(&at(40002), None).is_some());
        assert_eq!(loc.by_contact.read().len(), 1);
        // Expired, then a refused REGISTER (interval too brief): the index is clean.
        tokio::time::advance(Duration::from_secs(121)).await;
        let brief = register("b", 1, &["<sip:bob@127.0.0.1:5099>"], Some(1));
        assert!(loc.register(AOR, &brief, flow(5099, None)).is_err());
        assert!(loc.by_contact.read().is_empty());
        assert!(loc.temp_gruus.read().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_expire_on_tokio_time() {
        let loc = Location::new(RegistrarConfig::default());
        let r = register("a", 1, &["<sip:bob@127.0.0.1:5070>"], Some(120));
        assert_eq!(
            loc.register(AOR, &r, flow(5070, None))
                .unwrap()
                .bindings
                .len(),
            1
        );
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(loc.lookup(AOR).len(), 1);
        assert_eq!(loc.lookup(AOR)[0].remaining(Instant::now()), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(loc.lookup(AOR).is_empty());
        assert_eq!(loc.sweep().len(), 1);
        assert_eq!(loc.counts(), (0, 0));
    }

    #[tokio::test]
    async fn refresh_ordering_and_limits() {
        let loc = Location::new(RegistrarConfig {
            max_bindings_per_aor: 2,
            ..Default::default()
        });
        let r = register("a", 5, &["<sip:bob@127.0.0.1:5070>"], None);
        loc.register(AOR, &r, flow(5070, None)).unwrap();
        // Same Call-ID, older CSeq: refused (RFC 3261 §10.3 step 7).
        let old = register("a", 4, &["<sip:bob@127.0.0.1:5070>"], None);
        assert!(matches!(
            loc.register(AOR, &old, flow(5070, None)),
            Err(RegisterError::Bad(_))
        ));
        // Two more devices at once would exceed the limit: nothing changes.
        let two = register(
            "b",
            1,
            &["<sip:bob@127.0.0.1:5071>", "<sip:bob@127.0.0.1:5072>"],
            None,
        );
        assert!(matches!(
            loc.register(AOR, &two, flow(5071, None)),
            Err(RegisterError::TooManyBindings(2))
        ));
        assert_eq!(loc.lookup(AOR).len(), 1);
        // Expiry below the minimum: 423.
        let brief = register("c", 1, &["<sip:bob@127.0.0.1:5073>"], Some(5));
        assert!(matches!(
            loc.register(AOR, &brief, flow(5073, None)),
            Err(RegisterError::IntervalTooBrief { min_expires: 60 })
        ));
        // Expiry above the maximum is cut down.
        let long = register("d", 1, &["<sip:bob@127.0.0.1:5074>"], Some(999_999));
        let out = loc.register(AOR, &long, flow(5074, None)).unwrap();
        assert!(out
            .bindings
            .iter()
            .all(|b| b.remaining(Instant::now()) <= 7200));
    }

    #[tokio::test]
    async fn contact_index_and_flows() {
        let loc = Location::new(RegistrarConfig::default());
        // Over TCP with a Contact equal to the connection's address: only the flow reaches it.
        let r = register("a", 1, &["<sip:bob@127.0.0.1:40000;transport=tcp>"], None);
        loc.register(AOR, &r, flow(40000, Some(7))).unwrap();
        // Over TCP with a listening Contact elsewhere: reachable after the flow closes.
        let r = register("b", 1, &["<sip:bob@127.0.0.1:5080;transport=tcp>"], None);
        loc.register(AOR, &r, flow(40001, Some(8))).unwrap();
        let uri = Uri::parse("sip:bob@127.0.0.1:40000;transport=tcp").unwrap();
        assert!(loc.binding_for_contact(&uri, None).is_some());
        assert_eq!(loc.flow_closed(connection(7)), vec![AOR.to_string()]);
        assert!(loc.binding_for_contact(&uri, None).is_none());
        assert!(loc.flow_closed(connection(8)).is_empty());
        assert_eq!(loc.lookup(AOR).len(), 1);
        // A listening Contact on another host is not: the server never connects there.
        let r = register("c", 1, &["<sip:bob@192.0.2.7:5080;transport=tcp>"], None);
        loc.register(AOR, &r, flow(40002, Some(9))).unwrap();
        assert_eq!(loc.flow_closed(connection(9)), vec![AOR.to_string()]);
        assert_eq!(loc.lookup(AOR).len(), 1);
        // '*' removes everything and the index follows.
        let star = register("b", 2, &["*"], Some(0));
        loc.register(AOR, &star, flow(40001, None)).unwrap();
        assert!(loc
            .binding_for_contact(
                &Uri::parse("sip:bob@127.0.0.1:5080;transport=tcp").unwrap(),
                None,
            )
            .is_none());
    }

    #[tokio::test]
    async fn instances_are_one_binding_and_get_gruus() {
        let loc = Location::new(RegistrarConfig::default());
        let inst = "+sip.instance=\"<urn:uuid:1234>\"";
        let r = register("a", 1, &[&format!("<sip:bob@127.0.0.1:5070>;{inst}")], None);
        loc.register(AOR, &r, flow(5070, None)).unwrap();
        // The same instance from a new address replaces the binding (RFC 5626 §6).
        let r = register("b", 1, &[&format!("<sip:bob@127.0.0.1:6000>;{inst}")], None);
        let out = loc.register(AOR, &r, flow(6000, None)).unwrap();
        assert_eq!(out.bindings.len(), 1);
        let (_, b) = loc.lookup_gruu(AOR, Some("urn:uuid:1234"), "bob").unwrap();
        assert_eq!(b.contact.uri.as_sip().unwrap().port, Some(6000));
        let t = out.bindings[0].temp_gruu.clone().unwrap();
        assert!(loc.lookup_gruu(AOR, None, &t).is_some());
        let values = loc.contact_values(AOR, &out.bindings, "example.com", false);
        assert!(
            values[0].contains("pub-gruu=\"sip:bob@example.com;gr=urn:uuid:1234\""),
            "{}",
            values[0]
        );
    }
}
