//! # sip-guard: per-source accounting, rate limits, bans and sign-in lockout
//!
//! What Kamailio's `pike` + `htable` + `ratelimit` modules do, built in, for a server that
//! faces the internet:
//! - **request rate per source address** (token bucket): requests over the rate are
//!   dropped before they are parsed; a source that keeps being dropped is **banned** for a
//!   while (every datagram dropped, every connection closed at accept);
//! - **connections per source address**, so one address cannot hold every slot;
//! - **request rate per authenticated user** (token bucket): over it, the proxy answers 503;
//! - **failed sign-ins**, counted per (user, source) and per source: growing delays before
//!   the answer, then a temporary lockout of that user *from that source* only — the real
//!   user signing in from elsewhere is not locked out by an attacker's guesses (as Active
//!   Directory's smart lockout and Lync's security filter behave) — and, past a higher
//!   threshold, a ban of the source.
//!
//! A source is an IPv4 address, or an IPv6 /64 (one subscriber's allocation: per-address
//! accounting would let one host rotate through 2^64 addresses). Every table is bounded:
//! when one is full, idle entries are swept and, failing that, new sources share one
//! overflow entry (still limited, never unbounded memory). Time is tokio's, so tests can
//! pause it. Nothing here does I/O; every lock is held only for a map update.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Limits; every one is configurable (`[limits]` in the server's config file).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Sustained requests per second from one source (0: unlimited).
    pub source_requests_per_sec: u32,
    /// Requests a source may send at once above the sustained rate.
    pub source_request_burst: u32,
    /// A source that has this many requests dropped for its rate within
    /// [`GuardConfig::window`] is banned.
    pub ban_after_dropped: u32,
    /// How long a ban lasts.
    pub ban_duration: Duration,
    /// Open connections from one source at most (0: unlimited).
    pub max_connections_per_source: u32,
    /// Sustained requests per second from one authenticated user (0: unlimited).
    pub user_requests_per_sec: u32,
    pub user_request_burst: u32,
    /// Failed sign-ins of one user from one source that are answered at once; each one
    /// after that waits twice as long as the one before (from `auth_base_delay`).
    pub auth_free_failures: u32,
    pub auth_base_delay: Duration,
    pub auth_max_delay: Duration,
    /// Failed sign-ins of one user from one source before that pair is locked out.
    pub auth_lockout_after: u32,
    pub auth_lockout_duration: Duration,
    /// Failed sign-ins from one source (any users) before the source is banned.
    pub auth_ban_source_after: u32,
    /// Counters are forgotten after this long without a new event.
    pub window: Duration,
    /// Sources (address/prefix) that no rate, cap or ban applies to.
    pub exempt: Vec<Network>,
    /// Entries each table holds at most.
    pub max_tracked: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            // An organisation's NAT puts many users behind one address: the per-source
            // limits are generous, the per-user and sign-in ones are tight.
            source_requests_per_sec: 500,
            source_request_burst: 1000,
            ban_after_dropped: 2000,
            ban_duration: Duration::from_secs(120),
            max_connections_per_source: 250,
            user_requests_per_sec: 30,
            user_request_burst: 300,
            auth_free_failures: 3,
            auth_base_delay: Duration::from_millis(500),
            auth_max_delay: Duration::from_secs(8),
            auth_lockout_after: 10,
            auth_lockout_duration: Duration::from_secs(900),
            auth_ban_source_after: 50,
            window: Duration::from_secs(900),
            exempt: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

/// An address prefix (`10.0.0.0/8`, `::1/128`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not an address or prefix like 192.0.2.0/24");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Network { addr, prefix })
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What accounting is keyed by: an IPv4 address, an IPv6 /64, or the shared overflow
/// entry used when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6Prefix(u64),
    Overflow,
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match canonical(ip) {
            IpAddr::V4(a) => SourceKey::V4(u32::from(a)),
            IpAddr::V6(a) => SourceKey::V6Prefix((u128::from(a) >> 64) as u64),
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst.max(1)),
            at: now,
        }
    }

    fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst.max(1)));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct SourceState {
    bucket: Bucket,
    dropped: u32,
    auth_failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Banned for a flood over UDP only: spoofable evidence, so the source's TCP and TLS
    /// (which a spoofer cannot open) stay served.
    udp_banned_until: Option<Instant>,
    connections: u32,
    last_seen: Instant,
    /// This is the shared overflow entry.
    overflow: bool,
}

impl SourceState {
    fn new(cfg: &GuardConfig, now: Instant) -> Self {
        SourceState {
            bucket: Bucket::full(cfg.source_request_burst, now),
            dropped: 0,
            auth_failures: 0,
            window_start: now,
            banned_until: None,
            udp_banned_until: None,
            connections: 0,
            last_seen: now,
            overflow: false,
        }
    }

    fn roll_window(&mut self, window: Duration, now: Instant) {
        if now.saturating_duration_since(self.window_start) > window {
            self.window_start = now;
            self.dropped = 0;
            self.auth_failures = 0;
        }
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|t| t > now)
    }

    fn udp_banned(&self, now: Instant) -> bool {
        self.udp_banned_until.is_some_and(|t| t > now)
    }

    /// Nothing worth keeping after `quiet` without traffic: no connection, no ban, no
    /// recent failed sign-in.
    fn idle(&self, window: Duration, quiet: Duration, now: Instant) -> bool {
        self.connections == 0
            && !self.banned(now)
            && !self.udp_banned(now)
            && now.saturating_duration_since(self.last_seen) > quiet
            && (self.auth_failures == 0
                || now.saturating_duration_since(self.window_start) > window)
    }
}

#[derive(Debug)]
struct FailState {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The verdict on one request from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Over the source's rate: drop it (no answer: answering a flood feeds it).
    OverRate,
    /// The source is banned.
    Banned,
}

/// A failed sign-in's consequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// Wait this long before answering.
    pub delay: Duration,
    /// The user is now locked out from this source for this long.
    pub locked_for: Option<Duration>,
    /// The source has just been banned.
    pub source_banned: bool,
}

/// Counters for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardStats {
    pub dropped_over_rate: u64,
    pub dropped_banned: u64,
    pub bans: u64,
    pub active_bans: u64,
    pub connections_refused: u64,
    pub user_rate_limited: u64,
    pub auth_failures: u64,
    pub auth_lockouts: u64,
    pub auth_refused_locked: u64,
    pub tracked_sources: u64,
}

const SHARDS: usize = 16;

struct Sharded<K, V> {
    shards: Vec<Mutex<HashMap<K, V>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, k: &K) -> &Mutex<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(k) as usize) % SHARDS]
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The accounting of one server. Shared by the transports (sources, connections) and
/// the proxy (users, sign-ins).
pub struct Guard {
    cfg: GuardConfig,
    sources: Sharded<SourceKey, SourceState>,
    users: Sharded<String, Bucket>,
    pairs: Sharded<(String, SourceKey), FailState>,
    dropped_over_rate: AtomicU64,
    dropped_banned: AtomicU64,
    bans: AtomicU64,
    connections_refused: AtomicU64,
    user_rate_limited: AtomicU64,
    auth_failures: AtomicU64,
    auth_lockouts: AtomicU64,
    auth_refused_locked: AtomicU64,
    last_sweep: Mutex<Option<Instant>>,
    /// Other servers of the same pool: exempt like `exempt`, but learned at run time
    /// (front ends join and leave). Their requests were limited where they entered.
    peers: parking_lot::RwLock<Vec<IpAddr>>,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            sources: Sharded::new(),
            users: Sharded::new(),
            pairs: Sharded::new(),
            dropped_over_rate: AtomicU64::new(0),
            dropped_banned: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            user_rate_limited: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            auth_lockouts: AtomicU64::new(0),
            auth_refused_locked: AtomicU64::new(0),
            last_sweep: Mutex::new(None),
            peers: parking_lot::RwLock::new(Vec::new()),
        }
    }

    /// The addresses of the other servers of this server's pool (replacing those before):
    /// exempt from every limit.
    pub fn set_peers(&self, peers: Vec<IpAddr>) {
        *self.peers.write() = peers;
    }

    /// No limits at all (tests and tools that need a guard but no policy).
    pub fn unlimited() -> Guard {
        Guard::new(GuardConfig {
            source_requests_per_sec: 0,
            max_connections_per_source: 0,
            user_requests_per_sec: 0,
            auth_lockout_after: u32::MAX,
            auth_ban_source_after: u32::MAX,
            auth_free_failures: u32::MAX,
            ..GuardConfig::default()
        })
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        (!self.cfg.exempt.is_empty() && self.cfg.exempt.iter().any(|n| n.contains(ip)))
            || self.peers.read().contains(&ip)
    }

    /// Runs `f` on the source's entry, creating it (or using the overflow entry when the
    /// table is full even after idle entries were evicted); also gives the key charged.
    fn with_source<T>(
        &self,
        ip: IpAddr,
        f: impl FnOnce(&mut SourceState, Instant) -> T,
    ) -> (SourceKey, T) {
        let now = Instant::now();
        let mut key = SourceKey::of(ip);
        let known = self.sources.shard(&key).lock().contains_key(&key);
        if !known && self.sources.len() >= self.cfg.max_tracked {
            // Under pressure, entries quiet for a few seconds make room.
            self.sweep_if_due(Duration::from_secs(5));
            if self.sources.len() >= self.cfg.max_tracked {
                key = SourceKey::Overflow;
            }
        }
        let mut shard = self.sources.shard(&key).lock();
        let st = shard.entry(key).or_insert_with(|| {
            let mut st = SourceState::new(&self.cfg, now);
            st.overflow = key == SourceKey::Overflow;
            st
        });
        st.last_seen = now;
        st.roll_window(self.cfg.window, now);
        (key, f(st, now))
    }

    fn ban(&self, st: &mut SourceState, ip: IpAddr, now: Instant, reason: &str, udp_only: bool) {
        if st.overflow {
            // The entry new sources share when the table is full: banning it would shut
            // out everyone not yet tracked.
            return;
        }
        let until = Some(now + self.cfg.ban_duration);
        if udp_only {
            st.udp_banned_until = until;
        } else {
            st.banned_until = until;
        }
        self.bans.fetch_add(1, Ordering::Relaxed);
        // One line per ban, fail2ban-ready: `source banned source=<ip>`.
        let scope = if udp_only { "udp" } else { "all" };
        tracing::warn!(source = %ip, reason, scope, secs = self.cfg.ban_duration.as_secs(), "source banned");
    }

    /// Is the source banned now? (Cheap: for the accept loop and every datagram.)
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        if self.exempt(ip) {
            return false;
        }
        let key = SourceKey::of(ip);
        let now = Instant::now();
        self.sources
            .shard(&key)
            .lock()
            .get(&key)
            .is_some_and(|s| s.banned(now))
    }

    /// Accounts one request (or datagram) from `ip`; `reliable` when it came over a
    /// connection (TCP, TLS: the address is real), not a datagram (which can be spoofed).
    pub fn admit_request(&self, ip: IpAddr, reliable: bool) -> Admission {
        let rate = self.cfg.source_requests_per_sec;
        if self.exempt(ip) {
            return Admission::Admit;
        }
        let (_, verdict) = self.with_source(ip, |st, now| {
            if st.banned(now) || (!reliable && st.udp_banned(now)) {
                return Admission::Banned;
            }
            if rate == 0 || st.bucket.take(rate, self.cfg.source_request_burst, now) {
                return Admission::Admit;
            }
            st.dropped += 1;
            if st.dropped >= self.cfg.ban_after_dropped {
                st.dropped = 0;
                self.ban(st, ip, now, "request rate", !reliable);
            }
            Admission::OverRate
        });
        match verdict {
            Admission::Admit => {}
            Admission::OverRate => {
                self.dropped_over_rate.fetch_add(1, Ordering::Relaxed);
            }
            Admission::Banned => {
                self.dropped_banned.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// A connection from `ip` is being accepted: the key it is charged to, or `None` (and
    /// counted) when the source is banned or already holds its share of connections. Pair
    /// with [`Guard::connection_closed`] with that key.
    pub fn connection_opened(&self, ip: IpAddr) -> Option<SourceKey> {
        let cap = self.cfg.max_connections_per_source;
        let exempt = self.exempt(ip);
        let (key, ok) = self.with_source(ip, |st, now| {
            let capped = !st.overflow && cap != 0 && st.connections >= cap;
            if !exempt && (st.banned(now) || capped) {
                return false;
            }
            st.connections += 1;
            true
        });
        if !ok {
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
        }
        ok.then_some(key)
    }

    /// A connection charged to `key` closed.
    pub fn connection_closed(&self, key: SourceKey) {
        if let Some(st) = self.sources.shard(&key).lock().get_mut(&key) {
            st.connections = st.connections.saturating_sub(1);
        }
    }

    /// Accounts one request of an authenticated user; false when over the user's rate.
    pub fn admit_user(&self, user: &str) -> bool {
        let rate = self.cfg.user_requests_per_sec;
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let key = user.to_ascii_lowercase();
        let full = self.users.shard(&key).lock().get(&key).is_none()
            && self.users.len() >= self.cfg.max_tracked;
        if full {
            self.sweep_if_due(Duration::from_secs(60));
        }
        let mut shard = self.users.shard(&key).lock();
        let burst = self.cfg.user_request_burst;
        let ok = shard
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(rate, burst, now);
        if !ok {
            self.user_rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Before checking a sign-in of `user` from `ip`: how long that pair stays locked
    /// out, if it is.
    pub fn auth_locked(&self, user: &str, ip: IpAddr) -> Option<Duration> {
        let key = (user.to_ascii_lowercase(), SourceKey::of(ip));
        let now = Instant::now();
        let locked = self
            .pairs
            .shard(&key)
            .lock()
            .get(&key)
            .and_then(|f| f.locked_until)
            .filter(|t| *t > now)
            .map(|t| t - now);
        if locked.is_some() {
            self.auth_refused_locked.fetch_add(1, Ordering::Relaxed);
        }
        locked
    }

    /// A sign-in of `user` from `ip` failed (wrong password, unknown user, bad
    /// signature). Logged: one line per failure, fail2ban-ready.
    pub fn auth_failed(&self, user: &str, ip: IpAddr, method: &str) -> Penalty {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let key = (user.to_ascii_lowercase(), SourceKey::of(ip));
        let known = self.pairs.shard(&key).lock().contains_key(&key);
        let track = known || self.pairs.len() < self.cfg.max_tracked || {
            self.sweep_if_due(Duration::from_secs(60));
            self.pairs.len() < self.cfg.max_tracked
        };
        let (failures, locked_for) = {
            let mut shard = self.pairs.shard(&key).lock();
            let f = track.then(|| {
                shard.entry(key).or_insert(FailState {
                    failures: 0,
                    last: now,
                    locked_until: None,
                })
            });
            match f {
                Some(f) => {
                    if now.saturating_duration_since(f.last) > self.cfg.window {
                        f.failures = 0;
                    }
                    f.failures = f.failures.saturating_add(1);
                    f.last = now;
                    let mut locked_for = None;
                    if f.failures >= self.cfg.auth_lockout_after {
                        f.locked_until = Some(now + self.cfg.auth_lockout_duration);
                        f.failures = 0;
                        locked_for = Some(self.cfg.auth_lockout_duration);
                    }
                    (f.failures, locked_for)
                }
                // Table full even after a sweep: the per-source counters still apply.
                None => (0, None),
            }
        };
        let exempt = self.exempt(ip);
        let source_banned = !exempt
            && self
                .with_source(ip, |st, now| {
                    st.auth_failures = st.auth_failures.saturating_add(1);
                    if st.auth_failures >= self.cfg.auth_ban_source_after
                        && !st.banned(now)
                        && !st.overflow
                    {
                        st.auth_failures = 0;
                        self.ban(st, ip, now, "failed sign-ins", false);
                        return true;
                    }
                    false
                })
                .1;
        tracing::warn!(source = %ip, user, method, failures, "sign-in failed");
        if let Some(d) = locked_for {
            self.auth_lockouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source = %ip, user, secs = d.as_secs(), "sign-in locked out");
        }
        let delay = if failures <= self.cfg.auth_free_failures && locked_for.is_none() {
            Duration::ZERO
        } else {
            let steps = failures.saturating_sub(self.cfg.auth_free_failures).min(16);
            (self.cfg.auth_base_delay * 2u32.saturating_pow(steps.saturating_sub(1)))
                .min(self.cfg.auth_max_delay)
        };
        Penalty {
            delay,
            locked_for,
            source_banned,
        }
    }

    /// A sign-in succeeded: the pair's failures are forgotten.
    pub fn auth_succeeded(&self, user: &str, ip: IpAddr) {
        let key = (user.to_ascii_lowercase(), SourceKey::of(ip));
        let now = Instant::now();
        let mut shard = self.pairs.shard(&key).lock();
        // Forget the failures, unless a lockout is still running.
        if shard
            .get(&key)
            .is_some_and(|f| f.locked_until.is_none_or(|t| t <= now))
        {
            shard.remove(&key);
        }
    }

    /// A full table is swept at most once a second: a flood of spoofed sources must not
    /// turn every datagram into a scan of the table.
    fn sweep_if_due(&self, quiet: Duration) {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock();
            if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        self.sweep_quiet(quiet);
    }

    /// Forgets idle entries. Call every few seconds; also called when a table fills.
    pub fn sweep(&self) {
        self.sweep_quiet(Duration::from_secs(60));
    }

    fn sweep_quiet(&self, quiet: Duration) {
        let now = Instant::now();
        let window = self.cfg.window;
        for s in &self.sources.shards {
            s.lock().retain(|_, st| !st.idle(window, quiet, now));
        }
        let (rate, burst) = (self.cfg.user_requests_per_sec, self.cfg.user_request_burst);
        for s in &self.users.shards {
            // A bucket that has refilled holds nothing worth keeping.
            s.lock().retain(|_, b| {
                let refill = f64::from(burst.max(1)) / f64::from(rate.max(1));
                now.saturating_duration_since(b.at).as_secs_f64() < refill
            });
        }
        for s in &self.pairs.shards {
            s.lock().retain(|_, f| {
                f.locked_until.is_some_and(|t| t > now)
                    || now.saturating_duration_since(f.last) <= window
            });
        }
    }

    pub fn stats(&self) -> GuardStats {
        let now = Instant::now();
        let mut active_bans = 0;
        for s in &self.sources.shards {
            active_bans += s
                .lock()
                .values()
                .filter(|st| st.banned(now) || st.udp_banned(now))
                .count() as u64;
        }
        GuardStats {
            dropped_over_rate: self.dropped_over_rate.load(Ordering::Relaxed),
            dropped_banned: self.dropped_banned.load(Ordering::Relaxed),
            bans: self.bans.load(Ordering::Relaxed),
            active_bans,
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            user_rate_limited: self.user_rate_limited.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            auth_lockouts: self.auth_lockouts.load(Ordering::Relaxed),
            auth_refused_locked: self.auth_refused_locked.load(Ordering::Relaxed),
            tracked_sources: self.sources.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> GuardConfig {
        GuardConfig {
            source_requests_per_sec: 10,
            source_request_burst: 20,
            ban_after_dropped: 50,
            ban_duration: Duration::from_secs(60),
            max_connections_per_source: 3,
            ..GuardConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_source_is_limited_then_banned_and_the_ban_expires() {
        let g = Guard::new(cfg());
        let (bad, good) = (ip("127.0.0.2"), ip("127.0.0.1"));
        let admitted = (0..100)
            .filter(|_| g.admit_request(bad, true) == Admission::Admit)
            .count();
        assert_eq!(admitted, 20, "the burst, then nothing");
        assert_eq!(
            g.admit_request(good, true),
            Admission::Admit,
            "others unaffected"
        );
        for _ in 0..100 {
            g.admit_request(bad, true);
        }
        assert!(g.is_banned(bad));
        assert!(
            g.connection_opened(bad).is_none(),
            "a banned source cannot connect"
        );
        assert_eq!(g.stats().bans, 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!g.is_banned(bad));
        assert_eq!(g.admit_request(bad, true), Admission::Admit);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills() {
        let g = Guard::new(cfg());
        let a = ip("192.0.2.1");
        while g.admit_request(a, true) == Admission::Admit {}
        tokio::time::advance(Duration::from_millis(500)).await;
        let n = (0..100)
            .filter(|_| g.admit_request(a, true) == Admission::Admit)
            .count();
        assert_eq!(n, 5, "10/s for half a second");
    }

    #[tokio::test(start_paused = true)]
    async fn connections_per_source_are_capped_and_released() {
        let g = Guard::new(cfg());
        let a = ip("192.0.2.1");
        let keys: Vec<SourceKey> = (0..3).filter_map(|_| g.connection_opened(a)).collect();
        assert_eq!(keys.len(), 3);
        assert!(g.connection_opened(a).is_none());
        assert!(g.connection_opened(ip("192.0.2.2")).is_some());
        g.connection_closed(keys[0]);
        assert!(g.connection_opened(a).is_some());
        assert_eq!(g.stats().connections_refused, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_sources_are_counted_per_64() {
        let g = Guard::new(cfg());
        for i in 0..3 {
            assert!(g.connection_opened(ip(&format!("2001:db8::{i}"))).is_some());
        }
        assert!(
            g.connection_opened(ip("2001:db8::ffff:1")).is_none(),
            "same /64"
        );
        assert!(
            g.connection_opened(ip("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exempt_networks_are_not_limited() {
        let g = Guard::new(GuardConfig {
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..cfg()
        });
        assert!((0..1000).all(|_| g.admit_request(ip("10.1.2.3"), true) == Admission::Admit));
        assert_ne!(g.admit_request(ip("11.0.0.1"), true), Admission::Banned);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_sign_ins_slow_down_then_lock_the_pair_only() {
        let g = Guard::new(GuardConfig {
            auth_free_failures: 2,
            auth_base_delay: Duration::from_millis(100),
            auth_max_delay: Duration::from_secs(1),
            auth_lockout_after: 6,
            auth_lockout_duration: Duration::from_secs(300),
            auth_ban_source_after: 100,
            ..cfg()
        });
        let (attacker, home) = (ip("203.0.113.9"), ip("198.51.100.1"));
        let delays: Vec<u128> = (0..5)
            .map(|_| {
                g.auth_failed("alice@example.com", attacker, "digest")
                    .delay
                    .as_millis()
            })
            .collect();
        assert_eq!(delays, vec![0, 0, 100, 200, 400]);
        let last = g.auth_failed("alice@example.com", attacker, "digest");
        assert_eq!(last.locked_for, Some(Duration::from_secs(300)));
        assert!(g.auth_locked("Alice@example.com", attacker).is_some());
        assert!(
            g.auth_locked("alice@example.com", home).is_none(),
            "the real user elsewhere is not locked out"
        );
        assert!(g.auth_locked("bob@example.com", attacker).is_none());
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(g.auth_locked("alice@example.com", attacker).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_guessing_many_users_is_banned() {
        let g = Guard::new(GuardConfig {
            auth_ban_source_after: 10,
            ..cfg()
        });
        let a = ip("203.0.113.9");
        let banned = (0..10)
            .map(|i| g.auth_failed(&format!("u{i}@example.com"), a, "ntlm"))
            .any(|p| p.source_banned);
        assert!(banned);
        assert!(g.is_banned(a));
    }

    #[tokio::test(start_paused = true)]
    async fn success_forgets_failures() {
        let g = Guard::new(cfg());
        let a = ip("198.51.100.1");
        for _ in 0..5 {
            g.auth_failed("bob@example.com", a, "digest");
        }
        g.auth_succeeded("bob@example.com", a);
        assert_eq!(
            g.auth_failed("bob@example.com", a, "digest").delay,
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tables_stay_bounded_under_spoofed_sources() {
        let g = Guard::new(GuardConfig {
            max_tracked: 100,
            ..cfg()
        });
        for i in 0..10_000u32 {
            g.admit_request(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), true);
        }
        assert!(g.stats().tracked_sources <= 101, "{:?}", g.stats());
    }

    #[tokio::test(start_paused = true)]
    async fn users_over_their_rate_are_refused() {
        let g = Guard::new(GuardConfig {
            user_requests_per_sec: 5,
            user_request_burst: 10,
            ..cfg()
        });
        let n = (0..50)
            .filter(|_| g.admit_user("carol@example.com"))
            .count();
        assert_eq!(n, 10);
        assert!(g.admit_user("dave@example.com"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_udp_flood_bans_udp_only_and_the_overflow_entry_is_never_banned() {
        let g = Guard::new(cfg());
        let nat = ip("198.51.100.7");
        for _ in 0..200 {
            g.admit_request(nat, false);
        }
        assert_eq!(g.admit_request(nat, false), Admission::Banned);
        assert!(
            !g.is_banned(nat),
            "spoofable evidence: TCP and TLS still served"
        );
        assert!(g.connection_opened(nat).is_some());
        assert_ne!(g.admit_request(nat, true), Admission::Banned);
        // A full table: newcomers share the overflow entry, which floods cannot ban.
        let g = Guard::new(GuardConfig {
            max_tracked: 4,
            ..cfg()
        });
        for i in 0..4u32 {
            g.admit_request(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), true);
        }
        for _ in 0..500 {
            g.admit_request(ip("203.0.113.1"), true);
        }
        assert_eq!(g.stats().bans, 0);
        // Connections charged to the overflow entry are released there.
        let k = g.connection_opened(ip("203.0.113.2")).unwrap();
        assert_eq!(k, SourceKey::Overflow);
        g.connection_closed(k);
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains(ip("192.0.2.200")));
        assert!(!n.contains(ip("192.0.3.1")));
        assert!(n.contains(ip("::ffff:192.0.2.1")));
        let one: Network = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
    }
}
