//! Wiring one Standard Edition server: store, transports, transactions, core, HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sip_transaction::{Timers, TransactionLayer};
use sip_transport::{TransportKind, Transports, TransportsConfig};
use switchboard_core::seam::Deliverer;
use switchboard_core::{ContactData, Directory, PresenceData};
use switchboard_im::ImService;
use switchboard_presence::{FocusFactory, PresenceService};
use switchboard_proxy::{Core, Outbound, ProxyConfig};
use switchboard_registrar::Location;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Listen, ServerConfig};

/// A started server: where it listens, and how to stop it.
pub struct RunningServer {
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    pub sip_tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The private CA that signed a generated TLS certificate, to hand to clients.
    pub ca_cert: Option<PathBuf>,
    pub core: Arc<Core>,
    pub im: Arc<ImService>,
    pub presence: Arc<PresenceService>,
    /// This server's pool membership, when it is a front end of one.
    pub pool: Option<switchboard_pool::Pool>,
    transports: Transports,
    stop: watch::Sender<bool>,
}

impl RunningServer {
    /// Tells every presence watcher their subscription ends (`deactivated`: subscribe
    /// again), while connections are still open; call before [`RunningServer::shutdown`]
    /// and give the NOTIFYs a moment to leave.
    pub fn end_subscriptions(&self) {
        self.presence.shutdown();
    }

    /// Stops listening and closes connections; open IM sessions end as "server shutdown",
    /// and their CDR is written before this returns (or five seconds have passed).
    pub async fn shutdown(&self) {
        self.presence.shutdown();
        self.transports.shutdown();
        self.im.shutdown().await;
        if let Some(pool) = &self.pool {
            // Its registrations go now, rather than when the reaper finds it silent.
            if let Err(e) = pool.leave("server shutdown").await {
                tracing::warn!(error = %e, "could not leave the pool; the reaper will remove this front end");
            }
        }
        let _ = self.stop.send(true);
    }

    /// [`RunningServer::shutdown`] without waiting for the CDR writes (from a `Drop`).
    pub fn shutdown_now(&self) {
        self.presence.shutdown();
        self.transports.shutdown();
        self.im.end_all("server shutdown");
        let _ = self.stop.send(true);
    }

    /// Stops serving without ending IM sessions, as a crash would (for tests): a pool
    /// front end stops heartbeating without leaving.
    pub fn abort(&self) {
        if let Some(pool) = &self.pool {
            pool.halt();
        }
        self.transports.shutdown();
        let _ = self.stop.send(true);
    }
}

/// A TCP listener with a deep accept queue: when a front end of a pool dies, its clients
/// all reconnect to the others at once, and the default queue (128) overflows (measured:
/// up to 228 connects dropped per kill, each then waiting a second for the kernel to try
/// again). The kernel caps it at `net.core.somaxconn`.
fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

fn listen_error(what: &str, flag: &str, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another program already uses this port; pick another with {flag} ADDR, or turn it off with {flag} off"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to bind this address (ports below 1024 need privileges); use {flag} ADDR"
        ),
        std::io::ErrorKind::AddrNotAvailable => "this host has no such address".to_string(),
        _ => format!("use {flag} ADDR or {flag} off"),
    };
    anyhow::anyhow!("cannot listen for {what} on {addr}: {e} ({hint})")
}

/// Creates `dir` (and its parents) owner-only if it is missing; an existing directory
/// is left as the operator made it.
fn make_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The key of the cookies in our Record-Route and Via branches, kept in the data
/// directory (owner-only) so dialogs established before a restart still route after it.
fn route_secret(data_dir: &std::path::Path) -> Result<[u8; 32]> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("route-secret");
    let parse = |text: &str| -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).ok()?;
        Some(key)
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return parse(&text).with_context(|| {
                format!("{} is damaged; delete it to make a new one", path.display())
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(hex::encode(key).as_bytes())?;
    f.sync_all()?;
    Ok(key)
}

/// What the presence service reads and writes: contact lists, presence state, the user
/// directory.
pub struct PresenceSources {
    pub contacts: Arc<dyn ContactData>,
    pub presence: Arc<dyn PresenceData>,
    pub directory: Arc<dyn Directory>,
}

/// Opens the data (SQLite in the data directory, or `cfg.database`), binds every
/// listener, and starts serving.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer> {
    start_with_data(cfg, |sources| sources).await
}

/// [`start`], with the presence service's data seen through `wrap`: the store itself, or
/// something in front of it (tests put a database that fails there).
pub async fn start_with_data(
    cfg: ServerConfig,
    wrap: impl FnOnce(PresenceSources) -> PresenceSources,
) -> Result<RunningServer> {
    // The data directory holds the route secret and the generated TLS key whatever the
    // database is: made owner-only when it does not exist yet (SQLite's opener does the
    // same; on PostgreSQL nothing else would make it).
    make_data_dir(&cfg.data_dir)
        .with_context(|| format!("cannot open the data directory {}", cfg.data_dir.display()))?;
    // Every service's data, behind the traits of switchboard-core; the backend is
    // chosen here and nowhere else.
    let database = switchboard_store::data::Database::parse(cfg.database.as_deref(), &cfg.data_dir)
        .context("cannot use the database setting")?;
    let data = database
        .open()
        .await
        .with_context(|| format!("cannot open {}", database.describe()))?;
    let guard = Arc::new(sip_guard::Guard::new(cfg.limits.clone()));
    let transports = Transports::with_guard(
        TransportsConfig {
            max_message_size: cfg.max_message_size,
            idle_timeout: Duration::from_secs(cfg.idle_timeout_secs),
            max_connections: cfg.max_connections,
            first_message_timeout: Duration::from_secs(cfg.first_message_secs),
            message_timeout: Duration::from_secs(cfg.message_secs),
            tls_handshake_timeout: Duration::from_secs(cfg.tls_handshake_secs),
            max_write_queue_bytes: cfg.write_queue_bytes,
            ..Default::default()
        },
        guard.clone(),
    );
    // Idle accounting entries are forgotten in the background.
    {
        let guard = Arc::downgrade(&guard);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(g) = guard.upgrade() else { return };
                g.sweep();
            }
        });
    }
    let layer = TransactionLayer::new(transports.clone(), Timers::default());

    // Bind everything before serving anything, so a bad address fails the start cleanly.
    let udp = match cfg.sip_udp {
        Listen::On(a) => Some(
            sip_transport::bind_udp(a)
                .map_err(|e| listen_error("SIP over UDP", "--sip-udp", a, e))?,
        ),
        Listen::Off => None,
    };
    let tcp = match cfg.sip_tcp {
        Listen::On(a) => {
            Some(listen_tcp(a).map_err(|e| listen_error("SIP over TCP", "--sip-tcp", a, e))?)
        }
        Listen::Off => None,
    };
    let tls = match cfg.sip_tls {
        Listen::On(a) => {
            Some(listen_tcp(a).map_err(|e| listen_error("SIP over TLS", "--sip-tls", a, e))?)
        }
        Listen::Off => None,
    };
    // A pool front end: where the other front ends reach it (the SIP TCP listener unless
    // --pool-listen names another address, which then gets a listener of its own).
    let pool_addr = match (cfg.front_end, cfg.pool_listen, &tcp) {
        (None, _, _) => None,
        (Some(_), Some(a), _) => Some(a),
        // The address bound (a port 0 in the settings is the one the kernel chose).
        (Some(_), None, Some(l)) => Some(l.local_addr()?),
        (Some(_), None, None) => anyhow::bail!(
            "a pool front end needs SIP over TCP for the pool link: turn on --sip-tcp, or give --pool-listen ADDR"
        ),
    };
    if let Some(a) = pool_addr {
        if a.ip().is_unspecified() || a.port() == 0 {
            anyhow::bail!(
                "the pool-internal address {a} is not one other front ends can reach: give --pool-listen IP:PORT (or --sip-tcp on a concrete address)"
            );
        }
    }
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let pool_listener = match (pool_addr, tcp_addr) {
        (Some(a), Some(tcp)) if tcp == a => None,
        (Some(a), _) => {
            Some(listen_tcp(a).map_err(|e| listen_error("the pool link", "--pool-listen", a, e))?)
        }
        (None, _) => None,
    };
    let http = match cfg.http {
        Listen::On(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| listen_error("HTTP", "--http", a, e))?,
        ),
        Listen::Off => None,
    };

    let mut ca_cert = None;
    let tls_acceptor = match (&tls, &cfg.tls_certificate, &cfg.tls_private_key) {
        (None, _, _) => None,
        (Some(_), Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        (Some(_), None, None) => {
            let mut names: Vec<String> = cfg.hostnames.clone();
            names.extend(cfg.domains.iter().cloned());
            names.extend(
                data.directory
                    .domains()
                    .await
                    .context("cannot read the served domains")?,
            );
            names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
            if let Listen::On(a) = cfg.sip_tls {
                if !a.ip().is_unspecified() {
                    names.push(a.ip().to_string());
                } else if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
                    names.push(h.trim().to_string());
                }
            }
            names.retain(|n| !n.is_empty());
            let paths = crate::tls::ensure_generated(&cfg.data_dir, &names)
                .context("cannot create the TLS certificate in the data directory")?;
            ca_cert = Some(paths.ca_cert.clone());
            Some(crate::tls::server_config(&paths.cert, &paths.key)?)
        }
        _ => anyhow::bail!("TLS needs both tls.certificate and tls.private_key in the config (or neither, to use a generated one)"),
    };

    // A front end joins its pool first: its epoch is also its CDR run.
    let pool = match (cfg.front_end, pool_addr) {
        (Some(fe), Some(addr)) => {
            let Some(pool_data) = data.pool.clone() else {
                anyhow::bail!(
                    "--front-end needs a PostgreSQL database shared by the pool's front ends (--database postgres://…); {} is SQLite, which serves one Standard Edition server",
                    database.describe()
                );
            };
            let pool = switchboard_pool::Pool::join(
                switchboard_pool::PoolConfig::new(fe, addr),
                pool_data.membership.clone(),
            )
            .await
            .context("cannot join the pool")?;
            Some((pool, pool_data.location))
        }
        _ => None,
    };
    // This start of the server: the CDR sessions it records are its own, and those its
    // earlier runs left open are closed (never another server's).
    let run = match &pool {
        Some((p, _)) => switchboard_core::Run {
            owner: switchboard_core::pool::cdr_owner(p.member().fe),
            epoch: p.member().epoch,
        },
        None => data
            .cdr
            .begin_run(switchboard_core::Run::STANDALONE, now_ms())
            .await
            .context("cannot record this server's start in the database")?,
    };
    // The wiring, in one place and one direction: the router's outbound side first
    // (what the services originate leaves through it), then the services over it, then
    // the router around both. Nothing holds the router but the transaction layer.
    let proxy_config = ProxyConfig {
        domains: cfg.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        digest_algorithms: cfg.digest_algorithms.clone(),
        nonce_lifetime: Duration::from_secs(cfg.nonce_lifetime_secs),
        hostnames: cfg.hostnames.clone(),
        route_secret: Some(route_secret(&cfg.data_dir)?),
        ..Default::default()
    };
    let location = Arc::new(Location::new(cfg.registrar.clone()));
    let outbound = Outbound::new(
        layer.clone(),
        location.clone(),
        &proxy_config,
        pool.as_ref()
            .map(|(pool, location)| switchboard_proxy::PoolLink {
                pool: pool.clone(),
                location: location.clone(),
            }),
    );
    let deliverer: Arc<dyn Deliverer> = Arc::new(outbound.clone());
    // CDR writes the database cannot take now wait, fsync'd, in the data directory.
    let mut im_config = cfg.im.clone();
    im_config.cdr_spool = Some(cfg.data_dir.join("cdr-spool"));
    im_config.front_end = pool.as_ref().map(|(p, _)| p.member().fe);
    let im = ImService::start(
        run,
        data.cdr.clone(),
        data.offline.clone(),
        data.directory.clone(),
        im_config,
        deliverer.clone(),
    )
    .await;
    let sources = wrap(PresenceSources {
        contacts: data.contacts.clone(),
        presence: data.presence.clone(),
        directory: data.directory.clone(),
    });
    // Lync clients learn where to create conferences from their provisioning document.
    let focus_factory: FocusFactory = Box::new(|aor: &str| {
        let domain = aor.rsplit_once('@').map(|(_, d)| d).unwrap_or(aor);
        switchboard_im::focus_factory_uri(domain)
    });
    let presence = PresenceService::start(
        sources.contacts,
        sources.presence,
        sources.directory,
        cfg.presence.clone(),
        deliverer,
        Some(focus_factory),
        pool.as_ref().and_then(|(p, _)| {
            let p = p.clone();
            data.pool
                .as_ref()
                .map(|d| switchboard_presence::PoolPresence {
                    data: d.presence.clone(),
                    member: Arc::new(move || p.member()),
                })
        }),
    )
    .await;
    let core = Core::new(
        data.directory.clone(),
        proxy_config,
        outbound,
        im.clone(),
        presence.clone(),
    );
    let sip_udp = match udp {
        Some(s) => Some(transports.add_udp(s)?),
        None => None,
    };
    let sip_tcp = match tcp {
        Some(l) => Some(transports.add_tcp_listener(l)?),
        None => None,
    };
    let sip_tls = match (tls, tls_acceptor) {
        (Some(l), Some(cfg)) => {
            Some(transports.add_tls_listener(l, tokio_rustls::TlsAcceptor::from(cfg))?)
        }
        _ => None,
    };
    if let Some(l) = pool_listener {
        transports.add_tcp_listener(l)?;
    }
    core.attach();
    let pool = pool.map(|(p, _)| p);
    if let Some(p) = &pool {
        run_pool(p, &transports, &location, &presence, &im, &guard);
    }

    let (stop, stop_rx) = watch::channel(false);
    let http_addr = match http {
        Some(l) => {
            let addr = l.local_addr()?;
            tokio::spawn(crate::http::serve(
                l,
                core.clone(),
                presence.clone(),
                transports.clone(),
                layer.clone(),
                stop_rx,
            ));
            Some(addr)
        }
        None => None,
    };
    for (kind, addr) in [
        (TransportKind::Udp, sip_udp),
        (TransportKind::Tcp, sip_tcp),
        (TransportKind::Tls, sip_tls),
    ] {
        if let Some(a) = addr {
            tracing::info!(transport = %kind, address = %a, "listening for SIP");
        }
    }
    Ok(RunningServer {
        sip_udp,
        sip_tcp,
        sip_tls,
        http: http_addr,
        ca_cert,
        core,
        im,
        presence,
        pool,
        transports,
        stop,
    })
}

/// Starts the pool heartbeat, and acts on what it says: fenced, this front end closes
/// every client connection and forgets its registrations and its devices' publications
/// (its clients register and publish again, on whichever front end they reach); the
/// other members are exempt from per-source limits.
fn run_pool(
    pool: &switchboard_pool::Pool,
    transports: &Transports,
    location: &Arc<Location>,
    presence: &Arc<PresenceService>,
    im: &Arc<ImService>,
    guard: &Arc<sip_guard::Guard>,
) {
    let load = {
        let (transports, location, presence) = (
            transports.clone(),
            location.clone(),
            Arc::downgrade(presence),
        );
        move || switchboard_core::pool::MemberLoad {
            connections: transports.connection_count() as u64,
            registered: location.counts().0 as u64,
            subscriptions: presence.upgrade().map_or(0, |p| p.counts().2 as u64),
        }
    };
    let mut events = pool.run(load);
    let (transports, location, guard) = (transports.clone(), location.clone(), guard.clone());
    let presence = Arc::downgrade(presence);
    let im = Arc::downgrade(im);
    let me = pool.member().fe;
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                switchboard_pool::PoolEvent::Fenced { .. } => {
                    let closed = transports.close_connections();
                    let users = location.clear().len();
                    if let Some(p) = presence.upgrade() {
                        p.fenced();
                    }
                    if let Some(im) = im.upgrade() {
                        im.fenced();
                    }
                    tracing::warn!(
                        closed,
                        users,
                        "fenced: client connections closed, registrations and conversations forgotten"
                    );
                }
                switchboard_pool::PoolEvent::Members(members) => {
                    let peers = members
                        .iter()
                        .filter(|m| m.fe != me)
                        .filter_map(|m| m.sip_addr.parse::<SocketAddr>().ok())
                        .map(|a| a.ip())
                        .collect();
                    guard.set_peers(peers);
                }
                switchboard_pool::PoolEvent::Rejoined { new } => {
                    if let Some(im) = im.upgrade() {
                        im.rejoined(switchboard_core::Run {
                            owner: switchboard_core::pool::cdr_owner(new.fe),
                            epoch: new.epoch,
                        });
                    }
                }
                switchboard_pool::PoolEvent::Reaped(_) => {}
            }
        }
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
