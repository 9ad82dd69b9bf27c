//! The `switchboard` command: `serve` runs the server (`--front-end` makes it a front
//! end of an Enterprise pool); `user`, `cdr`, `contacts`, `presence`, `pool` and `db`
//! work on the database, through the data traits of whichever
//! backend `--database` names (SQLite in the data directory when none), on a Tokio
//! runtime of their own.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard::config::{FileConfig, Listen, ServerConfig};
use switchboard_store::{Address, Data, Database};

mod presence_cli;

// The SIP hot path allocates many small strings per message; mimalloc's thread-local
// free lists cost a fraction of glibc malloc's (measured: malloc was ~20 % of CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "IM and presence server (SIP/SIMPLE and the Lync dialect)"
)]
struct Cli {
    /// Data directory (database, generated TLS certificate).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "./switchboard-data"
    )]
    data_dir: PathBuf,
    /// The database: postgres://… or postgresql://… for PostgreSQL; unset (or sqlite:)
    /// for SQLite in the data directory. Overrides the config file's [database] url.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, env = "SWITCHBOARD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter (e.g. info, debug, switchboard_proxy=debug); RUST_LOG also works.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Read call detail records of IM sessions.
    #[command(subcommand)]
    Cdr(CdrCommand),
    /// Manage users' contact lists (groups, contacts, privacy relationships).
    #[command(subcommand)]
    Contacts(presence_cli::ContactsCommand),
    /// Set and show presence without a client (by hand, calendar, out of office).
    #[command(subcommand)]
    Presence(presence_cli::PresenceCommand),
    /// Manage the database itself.
    #[command(subcommand)]
    Db(DbCommand),
    /// An Enterprise pool's front ends (PostgreSQL).
    #[command(subcommand)]
    Pool(PoolCommand),
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Every front end of the pool: epoch, address, last heartbeat, connections,
    /// registered users and subscriptions.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply every schema migration this build knows (the server and the other commands
    /// do so too when they open the database) and print the schema version.
    Migrate,
}

#[derive(Subcommand)]
enum CdrCommand {
    /// List sessions, oldest first.
    List {
        /// Only sessions started at or after TIME (RFC 3339, e.g. 2026-11-25T08:00:00Z).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only sessions this user took part in.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// One session with its participants.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("'{s}' is not an RFC 3339 time like 2026-11-25T08:00:00Z ({e})"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

fn fmt_time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
        )
        .to_string(),
        None => String::new(),
    }
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A domain to serve (repeatable); the domains of the users are always served.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// SIP over UDP: ADDR or off [default 0.0.0.0:5060].
    #[arg(long)]
    sip_udp: Option<Listen>,
    /// SIP over TCP: ADDR or off [default 0.0.0.0:5060].
    #[arg(long)]
    sip_tcp: Option<Listen>,
    /// SIP over TLS: ADDR or off [default 0.0.0.0:5061].
    #[arg(long)]
    sip_tls: Option<Listen>,
    /// HTTP status endpoints: ADDR or off [default 127.0.0.1:8060].
    #[arg(long)]
    http: Option<Listen>,
    /// Join an Enterprise pool as front end ID (1 or more, unique in the pool); needs a
    /// PostgreSQL --database shared by every front end.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    front_end: Option<u32>,
    /// The pool-internal SIP/TCP address other front ends reach this one at [default:
    /// the --sip-tcp address].
    #[arg(long, value_name = "ADDR")]
    pool_listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct PasswordArgs {
    /// The password (visible to other local users in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user: ADDRESS is alice@example.com or sip:alice@example.com.
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Stop a user from signing in (existing data kept).
    Disable { address: String },
    /// Let a disabled user sign in again.
    Enable { address: String },
    /// Delete a user.
    Remove { address: String },
    /// Add or update many users from a CSV file (`address,password[,display name]` per
    /// line; `-` reads standard input). Existing users get the new password.
    Import { file: PathBuf },
}

fn read_password(p: &PasswordArgs) -> Result<String> {
    let pw = match (&p.password, p.password_stdin) {
        (Some(pw), false) => pw.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        _ => bail!("give the password with --password PW or --password-stdin"),
    };
    if pw.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(pw)
}

fn init_logging(
    format: Option<LogFormat>,
    level: Option<&str>,
    file_format: Option<&str>,
    file_level: Option<&str>,
) {
    use tracing_subscriber::EnvFilter;
    let filter = match level.or(file_level) {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => file_format == Some("json"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("switchboard: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let command = match cli.command {
        Command::Serve(args) => {
            return serve(
                cli.data_dir,
                cli.database,
                cli.log_format,
                cli.log_level,
                args,
            )
        }
        other => other,
    };
    let db = Database::parse(cli.database.as_deref(), &cli.data_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Serve(_) => unreachable!("served above"),
            Command::Db(DbCommand::Migrate) => migrate(&db).await,
            Command::User(cmd) => user(&open(&db).await?, cmd).await,
            Command::Cdr(cmd) => cdr(&open(&db).await?, cmd).await,
            Command::Contacts(cmd) => presence_cli::contacts(&open(&db).await?, cmd).await,
            Command::Presence(cmd) => presence_cli::presence(&open(&db).await?, cmd).await,
            Command::Pool(PoolCommand::Status { json }) => pool_status(&db, json).await,
        }
    })
}

/// Every data trait of the database (created and migrated if need be); a schema newer
/// than this build knows is refused.
async fn open(db: &Database) -> Result<Data> {
    db.open()
        .await
        .with_context(|| format!("cannot open {}", db.describe()))
}

/// `pool status`: one line per front end (or JSON).
async fn pool_status(db: &Database, json: bool) -> Result<()> {
    let data = open(db).await?;
    let Some(pool) = &data.pool else {
        bail!(
            "{} is SQLite: a Standard Edition server, not a pool (a pool's front ends share a \
             PostgreSQL database: --database postgres://…)",
            db.describe()
        );
    };
    let members = pool.membership.members().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "members": members }))?
        );
        return Ok(());
    }
    if members.is_empty() {
        println!("no front end is running (start one with: switchboard --database URL serve --front-end 1)");
        return Ok(());
    }
    println!(
        "{:>5} {:>8} {:<24} {:<24} {:>10} {:>11} {:>10} {:>13}",
        "FE",
        "EPOCH",
        "ADDRESS",
        "JOINED",
        "HEARTBEAT",
        "CONNECTIONS",
        "REGISTERED",
        "SUBSCRIPTIONS"
    );
    for m in &members {
        let joined = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.joined_at_ms.max(0) as u64),
        );
        println!(
            "{:>5} {:>8} {:<24} {:<24} {:>10} {:>11} {:>10} {:>13}",
            m.fe,
            m.epoch,
            m.sip_addr,
            joined.to_string(),
            format!("{:.1} s ago", m.heartbeat_age_ms as f64 / 1000.0),
            m.load.connections,
            m.load.registered,
            m.load.subscriptions
        );
    }
    Ok(())
}

async fn migrate(db: &Database) -> Result<()> {
    let (from, to) = db
        .migrate()
        .await
        .with_context(|| format!("cannot migrate {}", db.describe()))?;
    println!("schema version {to} (was {from})");
    Ok(())
}

async fn cdr(data: &Data, cmd: CdrCommand) -> Result<()> {
    let store = &data.cdr;
    match cmd {
        CdrCommand::List {
            since,
            user,
            json,
            csv,
        } => {
            let participant = match user {
                Some(u) => Some(format!("sip:{}", Address::parse(&u)?)),
                None => None,
            };
            let filter = switchboard_store::SessionFilter {
                since_ms: since,
                participant,
                limit: None,
            };
            let sessions = store.sessions(&filter).await?;
            if json {
                let mut rows: Vec<serde_json::Value> = Vec::with_capacity(sessions.len());
                for s in &sessions {
                    let participants = store
                        .session(&s.id)
                        .await
                        .ok()
                        .flatten()
                        .map(|(_, p)| p)
                        .unwrap_or_default();
                    rows.push(serde_json::json!({
                        "id": s.id, "kind": s.kind, "started": fmt_time(Some(s.started_at_ms)),
                        "ended": s.ended_at_ms.map(|m| fmt_time(Some(m))), "end_reason": s.end_reason,
                        "initiator": s.initiator, "organiser": s.organiser, "escalated_from": s.escalated_from,
                        "participants": participants,
                    }));
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if csv {
                println!("id,kind,started,ended,end_reason,initiator,participants,messages,bytes");
                for s in &sessions {
                    let ps = store
                        .session(&s.id)
                        .await?
                        .map(|(_, p)| p)
                        .unwrap_or_default();
                    let names: Vec<&str> = ps.iter().map(|p| p.address.as_str()).collect();
                    println!(
                        "{},{},{},{},{},{},{},{},{}",
                        s.id,
                        s.kind,
                        fmt_time(Some(s.started_at_ms)),
                        fmt_time(s.ended_at_ms),
                        s.end_reason.clone().unwrap_or_default(),
                        s.initiator,
                        names.join(" "),
                        ps.iter().map(|p| p.messages).sum::<i64>(),
                        ps.iter().map(|p| p.bytes).sum::<i64>()
                    );
                }
            } else if sessions.is_empty() {
                println!("no sessions");
            } else {
                println!(
                    "{:<32} {:<10} {:<24} {:<24} {:<16} INITIATOR",
                    "ID", "KIND", "STARTED", "ENDED", "REASON"
                );
                for s in &sessions {
                    println!(
                        "{:<32} {:<10} {:<24} {:<24} {:<16} {}",
                        s.id,
                        s.kind,
                        fmt_time(Some(s.started_at_ms)),
                        fmt_time(s.ended_at_ms),
                        s.end_reason.clone().unwrap_or_else(|| "(open)".into()),
                        s.initiator
                    );
                }
            }
        }
        CdrCommand::Show { id, json } => {
            let Some((s, ps)) = store.session(&id).await? else {
                bail!("no session with id {id}")
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "session": s, "participants": ps })
                    )?
                );
            } else {
                println!("session     {}", s.id);
                println!("kind        {}", s.kind);
                println!("started     {}", fmt_time(Some(s.started_at_ms)));
                println!("ended       {}", fmt_time(s.ended_at_ms));
                println!(
                    "end reason  {}",
                    s.end_reason.unwrap_or_else(|| "(open)".into())
                );
                println!("initiator   {}", s.initiator);
                if let Some(o) = s.organiser {
                    println!("organiser   {o}");
                }
                if let Some(e) = s.escalated_from {
                    println!("escalated from {e}");
                }
                println!();
                println!(
                    "{:<36} {:>8} {:>10} {:<24} {:<24} DEVICE",
                    "PARTICIPANT", "MESSAGES", "BYTES", "JOINED", "LEFT"
                );
                for p in ps {
                    println!(
                        "{:<36} {:>8} {:>10} {:<24} {:<24} {}",
                        p.address,
                        p.messages,
                        p.bytes,
                        fmt_time(Some(p.joined_at_ms)),
                        fmt_time(p.left_at_ms),
                        p.device
                    );
                }
            }
        }
    }
    Ok(())
}

fn serve(
    data_dir: PathBuf,
    database: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    args: ServeArgs,
) -> Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let (file_format, file_level) = file
        .log
        .as_ref()
        .map(|l| (l.format.clone(), l.level.clone()))
        .unwrap_or_default();
    if let Some(f) = &file_format {
        if f != "human" && f != "json" {
            bail!("log.format must be \"human\" or \"json\", not \"{f}\"");
        }
    }
    init_logging(
        log_format,
        log_level.as_deref(),
        file_format.as_deref(),
        file_level.as_deref(),
    );
    let mut cfg = ServerConfig::with_defaults(data_dir);
    cfg.apply_file(file)?;
    // --database and SWITCHBOARD_DATABASE win over the file's [database] url.
    if database.is_some() {
        cfg.database = database;
    }
    // A setting that names no database is refused before anything starts.
    Database::parse(cfg.database.as_deref(), &cfg.data_dir)?;
    cfg.domains.extend(args.domains);
    cfg.sip_udp = args.sip_udp.unwrap_or(cfg.sip_udp);
    cfg.sip_tcp = args.sip_tcp.unwrap_or(cfg.sip_tcp);
    cfg.sip_tls = args.sip_tls.unwrap_or(cfg.sip_tls);
    cfg.http = args.http.unwrap_or(cfg.http);
    cfg.front_end = args.front_end.or(cfg.front_end);
    cfg.pool_listen = args.pool_listen.or(cfg.pool_listen);
    if [cfg.sip_udp, cfg.sip_tcp, cfg.sip_tls]
        .iter()
        .all(|l| *l == Listen::Off)
    {
        bail!("every SIP transport is off; turn at least one on (--sip-udp, --sip-tcp, --sip-tls)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = switchboard::server::start(cfg.clone()).await?;
        if let Some(ca) = &server.ca_cert {
            tracing::info!(ca = %ca.display(), "TLS uses a generated certificate; give clients this CA file to trust");
        }
        if let Some(h) = server.http {
            tracing::info!(address = %h, "HTTP status at /healthz and /status");
        }
        let domains = server.core.location().counts();
        tracing::info!(data_dir = %cfg.data_dir.display(), registered = domains.1, "switchboard ready");
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.end_subscriptions();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server.shutdown().await;
        // Let writers flush final responses and connections close.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok::<_, anyhow::Error>(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn user(data: &Data, cmd: UserCommand) -> Result<()> {
    let dir = &data.directory;
    let parse = |a: &str| Address::parse(a).map_err(anyhow::Error::from);
    match cmd {
        UserCommand::Add {
            address,
            password,
            display_name,
        } => {
            let a = parse(&address)?;
            let pw = read_password(&password)?;
            dir.add(&a, &pw, display_name.as_deref()).await?;
            println!("added sip:{a}");
        }
        UserCommand::List { json } => {
            let users = dir.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else if users.is_empty() {
                println!("no users; add one with: switchboard user add alice@example.com --password-stdin");
            } else {
                println!("{:<40} {:<8} DISPLAY NAME", "ADDRESS", "STATE");
                for u in users {
                    let state = if u.enabled { "enabled" } else { "disabled" };
                    println!(
                        "{:<40} {:<8} {}",
                        format!("sip:{}", u.address),
                        state,
                        u.display_name.unwrap_or_default()
                    );
                }
            }
        }
        UserCommand::Passwd { address, password } => {
            let a = parse(&address)?;
            let pw = read_password(&password)?;
            dir.set_password(&a, &pw).await?;
            println!("password changed for sip:{a}");
        }
        UserCommand::Disable { address } => {
            let a = parse(&address)?;
            dir.set_enabled(&a, false).await?;
            println!("disabled sip:{a}");
        }
        UserCommand::Enable { address } => {
            let a = parse(&address)?;
            dir.set_enabled(&a, true).await?;
            println!("enabled sip:{a}");
        }
        UserCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let mut users = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut fields = line.splitn(3, ',');
                let (Some(addr), Some(pw)) = (fields.next(), fields.next()) else {
                    bail!("line {}: expected address,password[,display name]", n + 1);
                };
                if pw.is_empty() {
                    bail!("line {}: empty password", n + 1);
                }
                let a = parse(addr).with_context(|| format!("line {}", n + 1))?;
                users.push((a, pw.to_owned(), fields.next().map(str::to_owned)));
            }
            let n = dir.upsert_many(&users).await?;
            println!("imported {n} users");
        }
        UserCommand::Remove { address } => {
            let a = parse(&address)?;
            dir.remove(&a).await?;
            println!("removed sip:{a}");
        }
    }
    Ok(())
}
