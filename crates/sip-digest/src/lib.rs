//! # sip-digest: Digest authentication for SIP, with no I/O
//!
//! - [`Algorithm`], [`ha1`] and [`response`]: RFC 7616 §3.4.1–§3.4.3 computations for
//!   MD5 and SHA-256 (RFC 8760 brings SHA-256 to SIP), with `qop=auth` and the RFC 2069
//!   form without qop.
//! - [`NonceIssuer`]: self-validating nonces (timestamp + random + truncated HMAC), so a
//!   nonce proves it came from us and how old it is without per-nonce state; an expired
//!   nonce gets `stale=true` (RFC 7616 §3.3).
//! - [`ReplayGuard`]: nonce-count tracking (RFC 7616 §3.4: the server should refuse a
//!   repeated or decreasing nc for a nonce).
//!
//! Time is passed in as seconds so callers (and tests) own the clock.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use parking_lot::Mutex;
use sha2::Sha256;

/// Digest hash algorithm (RFC 8760 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// Parses the `algorithm` parameter; absent means MD5 (RFC 7616 §3.3).
    pub fn from_param(p: Option<&str>) -> Option<Algorithm> {
        match p {
            None => Some(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data)),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
        }
    }
}

/// H(username ":" realm ":" password), the value stored instead of the password.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash(format!("{username}:{realm}:{password}").as_bytes())
}

/// The parameters of one Authorization / Proxy-Authorization response.
#[derive(Debug, Clone, Default)]
pub struct DigestResponse<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a str,
    /// `Some("auth")` with qop, `None` for the RFC 2069 form.
    pub qop: Option<&'a str>,
    pub nc: Option<&'a str>,
    pub cnonce: Option<&'a str>,
}

/// The request-digest a client computes (RFC 7616 §3.4.1) from the stored HA1.
pub fn response(alg: Algorithm, ha1: &str, r: &DigestResponse<'_>) -> String {
    let ha2 = alg.hash(format!("{}:{}", r.method, r.uri).as_bytes());
    match r.qop {
        Some(qop) => alg.hash(
            format!(
                "{ha1}:{}:{}:{}:{qop}:{ha2}",
                r.nonce,
                r.nc.unwrap_or(""),
                r.cnonce.unwrap_or("")
            )
            .as_bytes(),
        ),
        None => alg.hash(format!("{ha1}:{}:{ha2}", r.nonce).as_bytes()),
    }
}

/// Compares two digests without an early exit, so timing does not leak the match length.
pub fn digests_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    }) == 0
}

/// What a nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Ours and within its lifetime.
    Fresh,
    /// Ours but older than its lifetime: answer with `stale=true`.
    Expired,
    /// Not ours (forged, or from before a restart).
    Unknown,
}

/// Issues and checks nonces: base64url(issued_at[8] ‖ random[8] ‖ HMAC-SHA256(key)[..12]).
pub struct NonceIssuer {
    /// HMAC-SHA256 keyed once: each MAC clones it instead of hashing the key's two pads
    /// again (half the compressions of a short MAC; one is made or checked per request).
    keyed: Hmac<Sha256>,
    lifetime_secs: u64,
}

const NONCE_RAW: usize = 8 + 8 + 12;

impl NonceIssuer {
    pub fn new(lifetime_secs: u64) -> Self {
        NonceIssuer {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&rand::random::<[u8; 32]>())
                .expect("HMAC takes a key of any length"),
            lifetime_secs,
        }
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    pub fn issue(&self, now_secs: u64) -> String {
        self.issue_bound(now_secs, b"")
    }

    /// A nonce that is valid only when checked with the same `binding` (the client's
    /// address): a nonce handed to one host is no use to another.
    pub fn issue_bound(&self, now_secs: u64, binding: &[u8]) -> String {
        let mut raw = [0u8; NONCE_RAW];
        raw[..8].copy_from_slice(&now_secs.to_be_bytes());
        raw[8..16].copy_from_slice(&rand::random::<[u8; 8]>());
        let mac = self.mac_bound(&raw[..16], binding);
        raw[16..].copy_from_slice(&mac[..12]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn mac_bound(&self, data: &[u8], binding: &[u8]) -> [u8; 32] {
        if binding.is_empty() {
            return self.mac(data);
        }
        let mut mac = self.keyed.clone();
        mac.update(data);
        mac.update(b"|bound|");
        mac.update(binding);
        mac.finalize().into_bytes().into()
    }

    pub fn check(&self, nonce: &str, now_secs: u64) -> NonceState {
        self.check_bound(nonce, now_secs, b"")
    }

    /// When a nonce says it was issued (check it first: this reads, it does not verify).
    pub fn issued_at(&self, nonce: &str) -> Option<u64> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        Some(u64::from_be_bytes(raw.get(..8)?.try_into().ok()?))
    }

    /// Checks a nonce issued by [`NonceIssuer::issue_bound`] with `binding`.
    pub fn check_bound(&self, nonce: &str, now_secs: u64, binding: &[u8]) -> NonceState {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceState::Unknown;
        };
        if raw.len() != NONCE_RAW {
            return NonceState::Unknown;
        }
        let mac = self.mac_bound(&raw[..16], binding);
        if !digests_equal(&hex::encode(&mac[..12]), &hex::encode(&raw[16..])) {
            return NonceState::Unknown;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().unwrap_or([0; 8]));
        if now_secs.saturating_sub(issued) > self.lifetime_secs || issued > now_secs + 5 {
            NonceState::Expired
        } else {
            NonceState::Fresh
        }
    }
}

/// Remembers the highest nonce-count used with each nonce, for as long as the nonce can be
/// valid and no longer.
///
/// Entries are a 64-bit hash of the nonce and the count (a hash collision, ~2^-64 a pair,
/// can only cost a client one extra challenge). They are filed by when their nonce was
/// issued, in 30-second slots, and a slot is dropped whole once every nonce in it is past
/// its lifetime: an entry lives at most a lifetime and a slot (about 330 s by default),
/// nothing is ever scanned, and the maps are split in sixteen shards so no lock is held for
/// long when a map grows. Only nonces this server issued (their MAC checked) are filed,
/// so forged ones cost nothing.
pub struct ReplayGuard {
    shards: Vec<Mutex<Slots>>,
    hasher: std::hash::RandomState,
    lifetime_secs: u64,
}

/// One shard's entries by issue slot (slot index, nonce hash → highest count), oldest
/// slot first.
type Slots = VecDeque<(u64, HashMap<u64, u32>)>;

const REPLAY_SHARDS: usize = 16;
const SLOT_SECS: u64 = 30;

impl ReplayGuard {
    pub fn new(lifetime_secs: u64) -> Self {
        ReplayGuard {
            shards: (0..REPLAY_SHARDS)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            hasher: Default::default(),
            lifetime_secs,
        }
    }

    /// Accepts `nc` for `nonce` (issued at `issued_secs`) only if it is higher than any
    /// accepted before. `nc = None` (no qop) makes the nonce single-use.
    pub fn accept(&self, nonce: &str, nc: Option<&str>, issued_secs: u64, now_secs: u64) -> bool {
        let nc = match nc {
            Some(h) => match u32::from_str_radix(h, 16) {
                Ok(n) if h.len() == 8 && n > 0 && n < u32::MAX => n,
                _ => return false,
            },
            None => u32::MAX,
        };
        self.record(nonce, issued_secs, now_secs, |last| match last {
            Some(last) if *last >= nc => false,
            _ => {
                *last = Some(nc);
                true
            }
        })
    }

    /// Makes `nonce` (issued at `issued_secs`) unusable with any nonce-count (after a
    /// wrong answer: each guess then costs the guesser a new challenge, and is counted).
    pub fn burn(&self, nonce: &str, issued_secs: u64, now_secs: u64) {
        self.record(nonce, issued_secs, now_secs, |last| {
            *last = Some(u32::MAX);
            true
        });
    }

    /// Runs `f` on the nonce's entry (None when new; what it leaves is stored).
    fn record(
        &self,
        nonce: &str,
        issued_secs: u64,
        now_secs: u64,
        f: impl FnOnce(&mut Option<u32>) -> bool,
    ) -> bool {
        use std::hash::BuildHasher;
        // A nonce past its lifetime is refused before it gets here; never file one.
        if issued_secs + self.lifetime_secs < now_secs {
            return false;
        }
        let key = self.hasher.hash_one(nonce);
        let slot = issued_secs / SLOT_SECS;
        let mut slots = self.shards[key as usize % REPLAY_SHARDS].lock();
        self.expire(&mut slots, now_secs);
        let at = match slots.binary_search_by_key(&slot, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                slots.insert(i, (slot, HashMap::new()));
                i
            }
        };
        let map = &mut slots[at].1;
        let mut entry = map.get(&key).copied();
        let ok = f(&mut entry);
        if let Some(v) = entry {
            map.insert(key, v);
        }
        ok
    }

    /// Slots whose every nonce has expired go, whole.
    fn expire(&self, slots: &mut Slots, now_secs: u64) {
        while slots
            .front()
            .is_some_and(|(s, _)| (s + 1) * SLOT_SECS + self.lifetime_secs + 5 < now_secs)
        {
            slots.pop_front();
        }
    }

    /// Drops expired slots in every shard (a shard nobody touches keeps them otherwise);
    /// call every few seconds.
    pub fn sweep(&self, now_secs: u64) {
        for shard in &self.shards {
            self.expire(&mut shard.lock(), now_secs);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().iter().map(|(_, m)| m.len()).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5 (MD5, qop=auth).
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &h,
            &DigestResponse {
                method: "GET",
                uri: "/dir/index.html",
                nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                qop: Some("auth"),
                nc: Some("00000001"),
                cnonce: Some("0a4f113b"),
            },
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_example() {
        // RFC 7616 §3.9.1 (SHA-256, qop=auth).
        let h = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let r = response(
            Algorithm::Sha256,
            &h,
            &DigestResponse {
                method: "GET",
                uri: "/dir/index.html",
                nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                qop: Some("auth"),
                nc: Some("00000001"),
                cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"),
            },
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn nonces_expire_and_resist_forgery() {
        let n = NonceIssuer::new(300);
        let nonce = n.issue(1000);
        assert_eq!(n.check(&nonce, 1000), NonceState::Fresh);
        assert_eq!(n.check(&nonce, 1301), NonceState::Expired);
        let mut forged = nonce.clone().into_bytes();
        forged[2] ^= 1;
        assert_eq!(
            n.check(std::str::from_utf8(&forged).unwrap(), 1000),
            NonceState::Unknown
        );
        assert_eq!(
            NonceIssuer::new(300).check(&nonce, 1000),
            NonceState::Unknown
        );
    }

    #[test]
    fn bound_nonces_work_only_for_their_binding() {
        let issuer = NonceIssuer::new(300);
        let n = issuer.issue_bound(1000, &[127, 0, 0, 1]);
        assert_eq!(
            issuer.check_bound(&n, 1001, &[127, 0, 0, 1]),
            NonceState::Fresh
        );
        assert_eq!(
            issuer.check_bound(&n, 1001, &[127, 0, 0, 2]),
            NonceState::Unknown
        );
        assert_eq!(issuer.check(&n, 1001), NonceState::Unknown);
    }

    #[test]
    fn a_burned_nonce_takes_no_count() {
        let g = ReplayGuard::new(300);
        assert!(g.accept("n1", Some("00000001"), 10, 10));
        g.burn("n1", 10, 11);
        assert!(!g.accept("n1", Some("00000002"), 10, 12));
        g.burn("n2", 12, 12);
        assert!(!g.accept("n2", Some("00000001"), 12, 12));
        assert!(!g.accept("n2", None, 12, 12));
    }

    #[test]
    fn nonce_counts_must_increase() {
        let g = ReplayGuard::new(300);
        assert!(g.accept("n", Some("00000001"), 0, 1));
        assert!(!g.accept("n", Some("00000001"), 0, 1));
        assert!(g.accept("n", Some("00000002"), 0, 1));
        assert!(!g.accept("n", Some("00000001"), 0, 1));
        assert!(g.accept("m", None, 0, 1));
        assert!(!g.accept("m", None, 0, 1));
        assert!(!g.accept("k", Some("zz"), 0, 1));
        // Remembered for the nonce's whole lifetime; a nonce past it is never filed.
        assert!(!g.accept("n", Some("00000002"), 0, 299));
        assert!(!g.accept("n", Some("00000009"), 0, 301));
    }

    #[test]
    fn entries_go_once_their_nonces_are_past_their_lifetime() {
        let g = ReplayGuard::new(300);
        for i in 0..1000u64 {
            // Issued over 100 s, used at once.
            assert!(g.accept(&format!("n{i}"), Some("00000001"), i / 10, i / 10));
        }
        assert_eq!(g.len(), 1000);
        // Out of order: a nonce issued earlier than the newest slot.
        assert!(g.accept("late", Some("00000001"), 5, 100));
        assert!(!g.accept("late", Some("00000001"), 5, 101));
        // Every slot of those nonces ends by lifetime + slot: one new entry remains.
        assert!(g.accept("fresh", Some("00000001"), 500, 500));
        g.sweep(500);
        assert_eq!(g.len(), 1, "only the fresh nonce is remembered");
    }

    #[test]
    fn issued_at_reads_the_nonce() {
        let issuer = NonceIssuer::new(300);
        let n = issuer.issue_bound(12345, b"x");
        assert_eq!(issuer.issued_at(&n), Some(12345));
        assert_eq!(issuer.issued_at("!!"), None);
        assert_eq!(issuer.issued_at(""), None);
    }
}
