//! Server configuration: a TOML file whose every setting a command-line flag can
//! override (flags win), with defaults that need nothing else installed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A listener setting: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse::<SocketAddr>()
            .map(Listen::On)
            .map_err(|_| format!("'{s}' is not an address like 0.0.0.0:5060, [::]:5060 or 'off'"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The configuration file (all keys optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub domains: Option<Vec<String>>,
    pub hostnames: Option<Vec<String>>,
    pub sip: Option<SipSection>,
    pub tls: Option<TlsSection>,
    pub http: Option<HttpSection>,
    pub registrar: Option<RegistrarSection>,
    pub auth: Option<AuthSection>,
    pub im: Option<ImSection>,
    pub presence: Option<PresenceSection>,
    pub limits: Option<LimitsSection>,
    pub log: Option<LogSection>,
    pub database: Option<DatabaseSection>,
    pub pool: Option<PoolSection>,
}

/// Which database holds users, CDR, offline messages and presence.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `postgres://…` or `postgresql://…` for PostgreSQL; unset (or `sqlite:`) for SQLite
    /// in the data directory. `--database` and `SWITCHBOARD_DATABASE` win over it.
    pub url: Option<String>,
}

/// Per-source and per-user limits against abuse (all optional; see README).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub source_requests_per_sec: Option<u32>,
    pub source_request_burst: Option<u32>,
    pub ban_after_dropped: Option<u32>,
    pub ban_secs: Option<u64>,
    pub max_connections_per_source: Option<u32>,
    pub user_requests_per_sec: Option<u32>,
    pub user_request_burst: Option<u32>,
    pub first_message_secs: Option<u64>,
    pub message_secs: Option<u64>,
    pub tls_handshake_secs: Option<u64>,
    pub write_queue_bytes: Option<usize>,
    pub auth_free_failures: Option<u32>,
    pub auth_lockout_after: Option<u32>,
    pub auth_lockout_secs: Option<u64>,
    pub auth_ban_source_after: Option<u32>,
    /// Addresses or prefixes no source limit or ban applies to (a trusted gateway).
    pub exempt: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// An idle device that published "available" shows inactive after this many seconds.
    pub inactive_after_secs: Option<u64>,
    /// ... and away after this many seconds of idleness.
    pub away_after_secs: Option<u64>,
    /// At most one NOTIFY per subscription per this many milliseconds (0: no pacing).
    pub notify_interval_ms: Option<u64>,
    pub min_expires: Option<u32>,
    pub max_expires: Option<u32>,
    pub max_subscriptions_per_user: Option<usize>,
    /// Publications (devices) a user may hold at once; a new one beyond gets 403.
    pub max_publications_per_user: Option<usize>,
    /// Distinct entries of all of a user's resource lists together; beyond: 403.
    pub max_list_entries_per_user: Option<usize>,
    /// Presentities held in memory server-wide; beyond: 503 with Retry-After.
    pub max_presentities: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImSection {
    /// A pager-mode conversation ends after this many idle seconds.
    pub pager_idle_secs: Option<u64>,
    /// A session-mode (INVITE) session without traffic is ended after this many seconds.
    pub session_idle_secs: Option<u64>,
    pub offline_max_per_user: Option<usize>,
    /// Messages kept for one offline user from one sender (480 beyond, for that sender).
    pub offline_max_per_sender: Option<usize>,
    pub offline_max_age_days: Option<u64>,
    /// Open group chats one user may organise (403 beyond).
    pub max_group_chats_per_user: Option<usize>,
    /// Open session-mode IM sessions one user may have opened (403 beyond).
    pub max_sessions_per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSection {
    pub udp: Option<Listen>,
    pub tcp: Option<Listen>,
    pub tls: Option<Listen>,
    pub max_message_size: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: Option<Listen>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarSection {
    pub default_expires: Option<u32>,
    pub min_expires: Option<u32>,
    pub max_expires: Option<u32>,
    pub max_devices_per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Digest algorithms offered, preferred first: "SHA-256", "MD5".
    pub digest_algorithms: Option<Vec<String>>,
    pub nonce_lifetime_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// "human" or "json".
    pub format: Option<String>,
    /// A tracing filter, e.g. "info" or "switchboard_proxy=debug".
    pub level: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
    }
}

/// `[pool]`: this server as a front end of an Enterprise pool (PostgreSQL only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// This front end's id in the pool (1 or more; `--front-end`).
    pub front_end: Option<u32>,
    /// Where other front ends reach this one over SIP/TCP (`--pool-listen`); the SIP TCP
    /// listener's address when unset.
    pub listen: Option<SocketAddr>,
}

/// Everything `serve` needs, after file and flags are merged.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// The database URL, from `--database` or `SWITCHBOARD_DATABASE`, else the config
    /// file's `[database] url`: `None` (or `sqlite:`) for SQLite in `data_dir`,
    /// `postgres://…` or `postgresql://…` for PostgreSQL; what each form means is
    /// `switchboard_store::Database::parse`, and `switchboard_store::data::open` opens it.
    /// It may hold a password: show `Database::describe`, never the URL.
    pub database: Option<String>,
    pub domains: Vec<String>,
    pub hostnames: Vec<String>,
    pub sip_udp: Listen,
    pub sip_tcp: Listen,
    pub sip_tls: Listen,
    pub http: Listen,
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    pub max_message_size: usize,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub registrar: switchboard_registrar::RegistrarConfig,
    pub digest_algorithms: Vec<sip_digest::Algorithm>,
    pub nonce_lifetime_secs: u64,
    pub im: switchboard_im::ImConfig,
    pub presence: switchboard_presence::PresenceConfig,
    pub limits: sip_guard::GuardConfig,
    /// A new stream connection must send its first complete message within this.
    pub first_message_secs: u64,
    /// A message begun on a stream must be complete within this.
    pub message_secs: u64,
    pub tls_handshake_secs: u64,
    /// Bytes waiting to be written to one connection at most.
    pub write_queue_bytes: usize,
    /// This server's id as a front end of an Enterprise pool (`None`: standalone).
    pub front_end: Option<u32>,
    /// Its pool-internal SIP/TCP address (default: the SIP TCP listener's).
    pub pool_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Defaults: UDP and TCP on 0.0.0.0:5060, TLS on 0.0.0.0:5061, HTTP on 127.0.0.1:8060.
    pub fn with_defaults(data_dir: PathBuf) -> ServerConfig {
        let any = |p| Listen::On(SocketAddr::from(([0, 0, 0, 0], p)));
        ServerConfig {
            data_dir,
            database: None,
            domains: Vec::new(),
            hostnames: Vec::new(),
            sip_udp: any(5060),
            sip_tcp: any(5060),
            sip_tls: any(5061),
            http: Listen::On(SocketAddr::from(([127, 0, 0, 1], 8060))),
            tls_certificate: None,
            tls_private_key: None,
            max_message_size: 128 * 1024,
            idle_timeout_secs: 3900,
            max_connections: 20_000,
            registrar: Default::default(),
            // MD5 only by default: baresip 1.0 (libre) gives up ("Function not implemented")
            // when any challenge names another algorithm, and JsSIP reads only the first.
            // Credentials computed with SHA-256 are accepted whichever challenge was sent;
            // `auth.digest_algorithms = ["SHA-256", "MD5"]` offers both (RFC 8760 §2.4).
            digest_algorithms: vec![sip_digest::Algorithm::Md5],
            nonce_lifetime_secs: 300,
            im: Default::default(),
            presence: Default::default(),
            limits: Default::default(),
            first_message_secs: 20,
            message_secs: 30,
            tls_handshake_secs: 10,
            write_queue_bytes: 2 << 20,
            front_end: None,
            pool_listen: None,
        }
    }

    /// Applies a config file over the defaults.
    pub fn apply_file(&mut self, f: FileConfig) -> Result<()> {
        if let Some(d) = f.database {
            self.database = d.url.or(self.database.take());
        }
        if let Some(p) = f.pool {
            self.front_end = p.front_end.or(self.front_end);
            self.pool_listen = p.listen.or(self.pool_listen);
        }
        if let Some(d) = f.domains {
            self.domains = d;
        }
        if let Some(h) = f.hostnames {
            self.hostnames = h;
        }
        if let Some(s) = f.sip {
            self.sip_udp = s.udp.unwrap_or(self.sip_udp);
            self.sip_tcp = s.tcp.unwrap_or(self.sip_tcp);
            self.sip_tls = s.tls.unwrap_or(self.sip_tls);
            self.max_message_size = s.max_message_size.unwrap_or(self.max_message_size);
            self.idle_timeout_secs = s.idle_timeout_secs.unwrap_or(self.idle_timeout_secs);
            self.max_connections = s.max_connections.unwrap_or(self.max_connections);
        }
        if let Some(t) = f.tls {
            self.tls_certificate = t.certificate.or(self.tls_certificate.take());
            self.tls_private_key = t.private_key.or(self.tls_private_key.take());
        }
        if let Some(h) = f.http {
            self.http = h.listen.unwrap_or(self.http);
        }
        if let Some(r) = f.registrar {
            let reg = &mut self.registrar;
            reg.default_expires = r.default_expires.unwrap_or(reg.default_expires);
            reg.min_expires = r.min_expires.unwrap_or(reg.min_expires);
            reg.max_expires = r.max_expires.unwrap_or(reg.max_expires);
            reg.max_bindings_per_aor = r.max_devices_per_user.unwrap_or(reg.max_bindings_per_aor);
        }
        if let Some(a) = f.auth {
            if let Some(list) = a.digest_algorithms {
                let mut algs = Vec::new();
                for name in list {
                    match sip_digest::Algorithm::from_param(Some(&name)) {
                        Some(alg) => algs.push(alg),
                        None => {
                            bail!("unknown digest algorithm '{name}' (use \"SHA-256\" or \"MD5\")")
                        }
                    }
                }
                if algs.is_empty() {
                    bail!("auth.digest_algorithms must name at least one algorithm");
                }
                self.digest_algorithms = algs;
            }
            self.nonce_lifetime_secs = a.nonce_lifetime_secs.unwrap_or(self.nonce_lifetime_secs);
        }
        if let Some(i) = f.im {
            if let Some(s) = i.pager_idle_secs {
                self.im.pager_idle = std::time::Duration::from_secs(s);
            }
            if let Some(s) = i.session_idle_secs {
                self.im.session_idle = std::time::Duration::from_secs(s);
            }
            self.im.offline_max_per_user = i
                .offline_max_per_user
                .unwrap_or(self.im.offline_max_per_user);
            self.im.offline_max_per_sender = i
                .offline_max_per_sender
                .unwrap_or(self.im.offline_max_per_sender);
            self.im.max_group_chats_per_user = i
                .max_group_chats_per_user
                .unwrap_or(self.im.max_group_chats_per_user);
            self.im.max_sessions_per_user = i
                .max_sessions_per_user
                .unwrap_or(self.im.max_sessions_per_user);
            if let Some(d) = i.offline_max_age_days {
                self.im.offline_max_age = std::time::Duration::from_secs(d * 24 * 3600);
            }
        }
        if let Some(p) = f.presence {
            let c = &mut self.presence;
            if let Some(s) = p.inactive_after_secs {
                c.rules.inactive_after_ms = s as i64 * 1000;
            }
            if let Some(s) = p.away_after_secs {
                c.rules.away_after_ms = s as i64 * 1000;
            }
            if c.rules.away_after_ms < c.rules.inactive_after_ms {
                bail!(
                    "presence.away_after_secs must not be less than presence.inactive_after_secs"
                );
            }
            if let Some(ms) = p.notify_interval_ms {
                c.notify_interval = std::time::Duration::from_millis(ms);
            }
            c.min_expires = p.min_expires.unwrap_or(c.min_expires);
            c.max_expires = p.max_expires.unwrap_or(c.max_expires);
            if c.min_expires == 0 || c.max_expires < c.min_expires {
                bail!("presence.min_expires must be at least 1 and at most presence.max_expires");
            }
            c.max_subscriptions_per_watcher = p
                .max_subscriptions_per_user
                .unwrap_or(c.max_subscriptions_per_watcher);
            c.max_publications_per_user = p
                .max_publications_per_user
                .unwrap_or(c.max_publications_per_user);
            c.max_list_entries_per_user = p
                .max_list_entries_per_user
                .unwrap_or(c.max_list_entries_per_user);
            c.max_presentities = p.max_presentities.unwrap_or(c.max_presentities);
            if c.max_publications_per_user == 0 || c.max_presentities == 0 {
                bail!("presence.max_publications_per_user and presence.max_presentities must be at least 1");
            }
        }
        if let Some(l) = f.limits {
            self.apply_limits(l)?;
        }
        Ok(())
    }

    fn apply_limits(&mut self, l: LimitsSection) -> Result<()> {
        let g = &mut self.limits;
        let set = |v: Option<u32>, into: &mut u32| {
            if let Some(v) = v {
                *into = v;
            }
        };
        set(l.source_requests_per_sec, &mut g.source_requests_per_sec);
        set(l.source_request_burst, &mut g.source_request_burst);
        set(l.ban_after_dropped, &mut g.ban_after_dropped);
        set(
            l.max_connections_per_source,
            &mut g.max_connections_per_source,
        );
        set(l.user_requests_per_sec, &mut g.user_requests_per_sec);
        set(l.user_request_burst, &mut g.user_request_burst);
        set(l.auth_free_failures, &mut g.auth_free_failures);
        set(l.auth_lockout_after, &mut g.auth_lockout_after);
        set(l.auth_ban_source_after, &mut g.auth_ban_source_after);
        if let Some(s) = l.ban_secs {
            g.ban_duration = std::time::Duration::from_secs(s);
        }
        if let Some(s) = l.auth_lockout_secs {
            g.auth_lockout_duration = std::time::Duration::from_secs(s);
        }
        if let Some(list) = l.exempt {
            g.exempt = list
                .iter()
                .map(|n| {
                    n.parse()
                        .map_err(|e: String| anyhow::anyhow!("limits.exempt: {e}"))
                })
                .collect::<Result<_>>()?;
        }
        if g.source_requests_per_sec > 0 && g.source_request_burst == 0 {
            bail!("limits.source_request_burst must be at least 1");
        }
        if g.user_requests_per_sec > 0 && g.user_request_burst == 0 {
            bail!("limits.user_request_burst must be at least 1");
        }
        if g.auth_lockout_after == 0 || g.auth_ban_source_after == 0 {
            bail!("limits.auth_lockout_after and limits.auth_ban_source_after must be at least 1");
        }
        self.first_message_secs = l.first_message_secs.unwrap_or(self.first_message_secs);
        self.message_secs = l.message_secs.unwrap_or(self.message_secs);
        self.tls_handshake_secs = l.tls_handshake_secs.unwrap_or(self.tls_handshake_secs);
        self.write_queue_bytes = l.write_queue_bytes.unwrap_or(self.write_queue_bytes);
        if self.first_message_secs == 0 || self.message_secs == 0 || self.tls_handshake_secs == 0 {
            bail!(
                "limits.first_message_secs, message_secs and tls_handshake_secs must be at least 1"
            );
        }
        if self.write_queue_bytes < self.max_message_size {
            bail!("limits.write_queue_bytes must be at least sip.max_message_size");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_comes_from_the_file() {
        let mut c = ServerConfig::with_defaults(PathBuf::from("unused"));
        assert_eq!(c.database, None, "SQLite in the data directory by default");
        c.apply_file(toml::from_str("[database]\n").unwrap())
            .unwrap();
        assert_eq!(c.database, None);
        let f: FileConfig =
            toml::from_str("[database]\nurl = \"postgres://sb@db.example/switchboard\"\n").unwrap();
        c.apply_file(f).unwrap();
        assert_eq!(
            c.database.as_deref(),
            Some("postgres://sb@db.example/switchboard")
        );
        let unknown = toml::from_str::<FileConfig>("[database]\nuri = \"postgres://x\"\n");
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn im_caps_come_from_the_file() {
        let f: FileConfig = toml::from_str(
            "[im]\nmax_group_chats_per_user = 3\nmax_sessions_per_user = 4\noffline_max_per_sender = 5\n",
        )
        .unwrap();
        let mut c = ServerConfig::with_defaults(PathBuf::from("unused"));
        let defaults = c.im.clone();
        assert_eq!(
            (
                defaults.max_group_chats_per_user,
                defaults.max_sessions_per_user,
                defaults.offline_max_per_sender
            ),
            (100, 200, 20)
        );
        c.apply_file(f).unwrap();
        assert_eq!(
            (
                c.im.max_group_chats_per_user,
                c.im.max_sessions_per_user,
                c.im.offline_max_per_sender
            ),
            (3, 4, 5)
        );
        assert_eq!(c.im.offline_max_per_user, defaults.offline_max_per_user);
    }
}
