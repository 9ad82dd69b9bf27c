//! `switchboard contacts ...` and `switchboard presence ...`: contact lists and presence
//! state without a client. Changes go to the database and its change log, which the
//! running server follows within a quarter second, so watchers are notified.
//! `presence show` asks the running server (it alone knows the devices) over its HTTP
//! API, and falls back to the stored state (all devices gone) when none runs. Every
//! command goes through the data traits, so each works on either backend alike.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use switchboard_presence::{AggregationRules, Availability, View};
use switchboard_store::{
    Address, CalendarEntry, CalendarKind, ContactCard, Data, ManualState, Relationship,
};

use crate::{fmt_time, parse_time};

#[derive(Subcommand)]
pub(crate) enum ContactsCommand {
    /// A user's contact list: groups, contacts and the relationship of each.
    List {
        owner: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a contact (or change its group or relationship).
    Add {
        owner: String,
        contact: String,
        /// Group to put the contact in (created if needed).
        #[arg(long)]
        group: Option<String>,
        /// What the contact may see of the owner [default: colleagues inside the owner's
        /// domain, external outside it].
        #[arg(long)]
        relationship: Option<Relationship>,
    },
    /// Remove a contact.
    Remove { owner: String, contact: String },
}

#[derive(Subcommand)]
pub(crate) enum PresenceCommand {
    /// Set the availability by hand (it wins over what devices say until TIME or cleared).
    Set {
        address: String,
        #[arg(long)]
        availability: Availability,
        #[arg(long)]
        note: Option<String>,
        /// RFC 3339, e.g. 2026-11-25T17:00:00Z.
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
    },
    /// Clear the availability set by hand.
    Clear { address: String },
    /// Add a calendar meeting.
    Meeting {
        address: String,
        #[arg(long, value_parser = parse_time)]
        from: i64,
        #[arg(long, value_parser = parse_time)]
        to: i64,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        location: Option<String>,
    },
    /// Add an out-of-office period.
    Oof {
        address: String,
        #[arg(long, value_parser = parse_time)]
        from: i64,
        #[arg(long, value_parser = parse_time)]
        to: i64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Set contact-card details (the display name is the user's, see `user add`).
    Card {
        address: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        work_phone: Option<String>,
        #[arg(long)]
        personal_phone: Option<String>,
    },
    /// Show a user's presence, as WATCHER sees it (default: as the user sees it). The
    /// server's API answers loopback clients only.
    Show {
        address: String,
        #[arg(long = "as")]
        watcher: Option<String>,
        #[arg(long)]
        json: bool,
        /// The running server's HTTP address.
        #[arg(long, env = "SWITCHBOARD_HTTP", default_value = "127.0.0.1:8060")]
        server: String,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An address that must be a user of this server.
async fn user(s: &Data, address: &str) -> Result<Address> {
    let a = Address::parse(address)?;
    if s.directory.find(&a).await?.is_none() {
        bail!("no such user: {a}");
    }
    Ok(a)
}

pub(crate) async fn contacts(s: &Data, cmd: ContactsCommand) -> Result<()> {
    match cmd {
        ContactsCommand::List { owner, json } => {
            let owner = user(s, &owner).await?;
            let list = s.contacts.contact_list(&owner.to_string()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.contacts.is_empty() {
                println!("{owner} has no contacts");
            }
            for c in &list.contacts {
                // A relationship given without adding the user (a Lync client blocking
                // someone, or putting them in a container).
                let place = if c.listed {
                    c.groups.join(", ")
                } else {
                    "(not on the list)".to_owned()
                };
                println!(
                    "{:<32} {:<11} {}",
                    c.contact,
                    c.relationship.as_str(),
                    place
                );
            }
        }
        ContactsCommand::Add {
            owner,
            contact,
            group,
            relationship,
        } => {
            let owner = user(s, &owner).await?;
            let contact = Address::parse(&contact)?;
            if owner == contact {
                bail!("{owner} cannot be their own contact");
            }
            if group.as_deref().is_some_and(|g| g.trim().is_empty()) {
                bail!("the group name must not be empty");
            }
            let default =
                switchboard_presence::Audience::default_for(&owner.domain, &contact.domain);
            let e = s
                .contacts
                .add_contact(
                    &owner.to_string(),
                    &contact.to_string(),
                    group.as_deref().map(str::trim),
                    relationship,
                    default,
                    now_ms(),
                )
                .await?;
            println!("{owner}: {} ({})", e.contact, e.relationship);
        }
        ContactsCommand::Remove { owner, contact } => {
            let owner = user(s, &owner).await?;
            let contact = Address::parse(&contact)?;
            if !s
                .contacts
                .remove_contact(&owner.to_string(), &contact.to_string(), now_ms())
                .await?
            {
                bail!("{contact} is not a contact of {owner}");
            }
            println!("removed {contact} from the contacts of {owner}");
        }
    }
    Ok(())
}

pub(crate) async fn presence(s: &Data, cmd: PresenceCommand) -> Result<()> {
    let now = now_ms();
    match cmd {
        PresenceCommand::Set {
            address,
            availability,
            note,
            until,
        } => {
            let a = user(s, &address).await?;
            if until.is_some_and(|u| u <= now) {
                bail!("--until is in the past");
            }
            let state = ManualState {
                availability: availability.as_str().into(),
                note,
                until_ms: until,
                set_at_ms: now,
            };
            s.presence.set_manual(&a.to_string(), &state).await?;
            println!(
                "{a}: {availability}{}",
                until
                    .map(|u| format!(" until {}", fmt_time(Some(u))))
                    .unwrap_or_default()
            );
        }
        PresenceCommand::Clear { address } => {
            let a = user(s, &address).await?;
            if s.presence.clear_manual(&a.to_string(), now).await? {
                println!("{a}: availability set by hand cleared");
            } else {
                println!("{a}: no availability was set by hand");
            }
        }
        PresenceCommand::Meeting {
            address,
            from,
            to,
            subject,
            location,
        } => {
            calendar(
                s,
                &address,
                CalendarKind::Meeting,
                from,
                to,
                subject,
                location,
                None,
                now,
            )
            .await?
        }
        PresenceCommand::Oof {
            address,
            from,
            to,
            note,
        } => {
            calendar(
                s,
                &address,
                CalendarKind::OutOfOffice,
                from,
                to,
                None,
                None,
                note,
                now,
            )
            .await?
        }
        PresenceCommand::Card {
            address,
            title,
            email,
            work_phone,
            personal_phone,
        } => {
            let a = user(s, &address).await?;
            let card = ContactCard {
                title,
                email,
                work_phone,
                personal_phone,
            };
            s.presence.set_card(&a.to_string(), &card, now).await?;
            println!("{a}: contact card updated");
        }
        PresenceCommand::Show {
            address,
            watcher,
            json,
            server,
        } => {
            let a = user(s, &address).await?;
            // No --as: the user themself, named explicitly (the API never assumes it).
            let w = match watcher.as_deref() {
                Some(w) => Address::parse(w)?,
                None => a.clone(),
            };
            let asked = {
                let (server, a, w) = (server.clone(), a.clone(), w.clone());
                tokio::task::spawn_blocking(move || ask_server(&server, &a, &w)).await?
            };
            let (value, live) = match asked {
                Ok(v) => (v, true),
                Err(ServerAnswer::Unreachable) => {
                    let v = stored_view(s, &a, &w, now).await?;
                    (serde_json::to_value(v)?, false)
                }
                Err(ServerAnswer::Error(e)) => bail!("{e}"),
            };
            if !live {
                eprintln!(
                    "(no server answers at {server}: shown from stored state, no device online)"
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let v: View =
                    serde_json::from_value(value).context("unexpected answer from the server")?;
                print_view(&v);
            }
        }
    }
    Ok(())
}

/// What `watcher` may see of `a` from the database alone, with no device online: the
/// answer when no server runs (its devices are then all gone). The service's own
/// `stored_view` reads the SQLite stores; this reads the data traits, so it answers on
/// either backend, and reports a database that cannot answer instead of showing
/// nothing.
async fn stored_view(s: &Data, a: &Address, watcher: &Address, now: i64) -> Result<View> {
    // Shown only from whole reads: an error, never a guess.
    let owner = a.to_string();
    Ok(switchboard_presence::stored_view(
        &AggregationRules::default(),
        &format!("sip:{a}"),
        Some(&format!("sip:{watcher}")),
        s.presence.load(&owner, now).await?,
        s.contacts.contact_list(&owner).await?,
        s.directory.find(a).await?.and_then(|u| u.display_name),
        now,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn calendar(
    s: &Data,
    address: &str,
    kind: CalendarKind,
    from: i64,
    to: i64,
    subject: Option<String>,
    location: Option<String>,
    note: Option<String>,
    now: i64,
) -> Result<()> {
    let a = user(s, address).await?;
    if to <= from {
        bail!("--to must be after --from");
    }
    if to <= now {
        bail!("--to is in the past");
    }
    let entry = CalendarEntry {
        kind,
        from_ms: from,
        to_ms: to,
        subject,
        location,
        note,
    };
    s.presence
        .add_calendar_entry(&a.to_string(), &entry, now)
        .await?;
    let what = match kind {
        CalendarKind::Meeting => "meeting",
        CalendarKind::OutOfOffice => "out of office",
    };
    println!(
        "{a}: {what} from {} to {}",
        fmt_time(Some(from)),
        fmt_time(Some(to))
    );
    Ok(())
}

enum ServerAnswer {
    Unreachable,
    Error(String),
}

/// Percent-encodes an address for a URL path segment or query value: user parts may
/// hold `/`, `?`, `&`, `=` and `+`, which would otherwise change the request.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /presence/{a}?as={w}` on the running server (plain HTTP/1.1 on loopback).
fn ask_server(server: &str, a: &Address, w: &Address) -> Result<serde_json::Value, ServerAnswer> {
    let addr = server.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr).map_err(|_| ServerAnswer::Unreachable)?;
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let (a, w) = (url_encode(&a.to_string()), url_encode(&w.to_string()));
    let req =
        format!("GET /presence/{a}?as={w} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let io = |e: std::io::Error| ServerAnswer::Error(format!("server at {addr}: {e}"));
    conn.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ServerAnswer::Error(format!("server at {addr}: malformed answer")))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ServerAnswer::Error(format!("server at {addr}: {e}")))?;
    if status != "200" {
        let msg = value["error"].as_str().unwrap_or("error").to_owned();
        return Err(ServerAnswer::Error(msg));
    }
    Ok(value)
}

fn print_view(v: &View) {
    let who = match v.audience {
        switchboard_presence::Audience::Own => "themself".to_owned(),
        switchboard_presence::Audience::Watcher(r) => format!("a watcher at level {r}"),
    };
    println!("{} as seen by {who}", v.entity);
    println!("  availability: {}", v.availability);
    if !v.activities.is_empty() {
        let acts: Vec<&str> = v.activities.iter().map(|a| a.as_str()).collect();
        println!("  activities:   {}", acts.join(", "));
    }
    if let Some(n) = &v.note {
        println!("  note:         {}", n.text);
    }
    if let Some(m) = &v.meeting {
        print!(
            "  meeting:      {} to {}",
            fmt_time(Some(m.from_ms)),
            fmt_time(Some(m.to_ms))
        );
        if let Some(s) = &m.subject {
            print!(", \"{s}\"");
        }
        if let Some(l) = &m.location {
            print!(", in {l}");
        }
        println!();
    }
    if let Some(t) = v.out_of_office_until_ms {
        println!("  out of office until {}", fmt_time(Some(t)));
    }
    if let Some(t) = v.idle_since_ms {
        println!("  idle since:   {}", fmt_time(Some(t)));
    }
    if let Some(t) = v.last_active_ms {
        println!("  last active:  {}", fmt_time(Some(t)));
    }
    let c = &v.card;
    for (label, value) in [
        ("display name", &c.display_name),
        ("title", &c.title),
        ("email", &c.email),
        ("work phone", &c.work_phone),
        ("personal phone", &c.personal_phone),
    ] {
        if let Some(x) = value {
            println!("  {label}: {x}");
        }
    }
    for (d, state) in &v.devices {
        println!("  device {d}: {state:?}");
    }
}
