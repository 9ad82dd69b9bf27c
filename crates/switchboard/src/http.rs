//! The HTTP listener (loopback by default): health and status for operators and load
//! balancers, and the presence API (`GET /presence/{address}?as={watcher}`: what that
//! watcher is allowed to see, through the same privacy filter as every NOTIFY).
//!
//! The presence API has no authentication yet, so it is served to loopback peers only
//! (whoever can run commands on the host can read the database anyway), and it always
//! answers as a named watcher: the owner's own view (devices, personal phone, meeting
//! subjects) only when `as=` names the owner.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::{ExtensionRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sip_transaction::TransactionLayer;
use sip_transport::Transports;
use switchboard_presence::PresenceService;
use switchboard_proxy::Core;
use switchboard_store::Address;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    presence: Arc<PresenceService>,
    transports: Transports,
    layer: TransactionLayer,
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(State(s): State<AppState>) -> Json<serde_json::Value> {
    let (aors, bindings) = s.core.location().counts();
    let (server_tx, client_tx) = s.layer.counts();
    let (presentities, publications, subscriptions) = s.presence.counts();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "registered_users": aors,
        "registered_devices": bindings,
        "connections": s.transports.connection_count(),
        "server_transactions": server_tx,
        "client_transactions": client_tx,
        "presentities": presentities,
        "publications": publications,
        "subscriptions": subscriptions,
        "nonce_counts_remembered": s.core.nonce_counts_remembered(),
        "protection": protection(&s),
        "pool": s.core.pool().map(|p| {
            let member = p.member();
            json!({
                "front_end": member.fe,
                "epoch": member.epoch,
                // Its last heartbeat got through within the timeout: it is a member.
                "in_good_standing": p.in_good_standing(),
                "members": p.members().iter().map(|m| m.fe).collect::<Vec<_>>(),
            })
        }),
    }))
}

type Answer = (StatusCode, Json<serde_json::Value>);

/// What the per-source accounting and the transports refused, dropped and survived.
fn protection(s: &AppState) -> serde_json::Value {
    let g = s.transports.guard().stats();
    let t = s.transports.stats();
    let (handshakes, associations) = s.core.ntlm_counts();
    json!({
        "requests_dropped_over_rate": g.dropped_over_rate,
        "requests_dropped_banned": g.dropped_banned,
        "bans": g.bans,
        "active_bans": g.active_bans,
        "connections_refused_per_source": g.connections_refused,
        "connections_refused_full": t.refused_full,
        "outbound_connections_refused": t.outbound_refused,
        "connections_closed_slow": t.closed_slow,
        "connections_closed_not_reading": t.closed_write_queue,
        "user_requests_refused_over_rate": g.user_rate_limited,
        "sign_in_failures": g.auth_failures,
        "sign_in_lockouts": g.auth_lockouts,
        "sign_ins_refused_locked": g.auth_refused_locked,
        "tracked_sources": g.tracked_sources,
        "ntlm_handshakes": handshakes,
        "ntlm_associations": associations,
        "panics_contained": t.panics_contained,
    })
}

fn error(status: StatusCode, text: String) -> Answer {
    (status, Json(json!({ "error": text })))
}

/// Whether a peer may use the presence API: loopback only until the API has tokens.
/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`, seen on a dual-stack `[::]` listener) counts as
/// the IPv4 address it carries.
fn presence_peer_allowed(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Percent-decodes a whole query component (RFC 3986). `+` stays a plus: SIP user parts
/// may hold one (`+15551234@example.com`), and no address holds a space. `None` for a
/// `%` not followed by two hex digits, or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let digit = |j: usize| (*b.get(j)? as char).to_digit(16);
            // Two hex digits exactly (from_str_radix would also take "%+5").
            out.push((digit(i + 1)? * 16 + digit(i + 2)?) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The watcher named by `as=` in a raw query: exactly one, decoded and a user address.
fn watcher_of(query: Option<&str>) -> Result<Address, String> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || format!("bad percent-encoding in '{pair}'");
        if percent_decode(k).ok_or_else(bad)? != "as" {
            continue;
        }
        if found.is_some() {
            return Err("give ?as=WATCHER once".into());
        }
        found = Some(percent_decode(v).ok_or_else(bad)?);
    }
    let Some(v) = found else {
        return Err(
            "?as=WATCHER is required: the user address whose view to show \
             (name the user themself for their own view)"
                .into(),
        );
    };
    Address::parse(&v).map_err(|e| e.to_string())
}

/// The presence of `address` as the watcher `as=` names sees it.
async fn presence_of(
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    State(s): State<AppState>,
    address: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Answer {
    // Checked first, so other peers learn nothing, not even whether a user exists. No
    // peer address (a listener served without it) is refused, never let through.
    match peer {
        Ok(ConnectInfo(p)) if presence_peer_allowed(p.ip()) => {}
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                "the presence API is served to loopback clients only".into(),
            )
        }
    }
    let address = match address {
        Ok(Path(a)) => a,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let Ok(addr) = Address::parse(&address) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'{address}' is not a user address"),
        );
    };
    let watcher = match watcher_of(query.as_deref()) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.core.users().find(&addr).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no such user: {addr}")),
        Err(e) if e.is_unavailable() => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    // Always a named watcher: the service reads "no watcher" as the owner.
    let view = match s
        .presence
        .view(&format!("sip:{addr}"), Some(&format!("sip:{watcher}")))
        .await
    {
        Ok(v) => v,
        // Fail closed: no view from data that could not be read.
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    match serde_json::to_value(view) {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    presence: Arc<PresenceService>,
    transports: Transports,
    layer: TransactionLayer,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/status", get(status))
        .route("/presence/{address}", get(presence_of))
        .with_state(AppState {
            core,
            presence,
            transports,
            layer,
        });
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    // With the peer address, which the presence API checks.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_get_presence() {
        for ok in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(presence_peer_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "192.0.2.2",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "fd00::2",
            "::ffff:192.0.2.2",
        ] {
            assert!(!presence_peer_allowed(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn as_is_required_once_and_fully_decoded() {
        let w = |q: &str| watcher_of(Some(q)).map(|a| a.to_string());
        assert!(watcher_of(None)
            .unwrap_err()
            .contains("?as=WATCHER is required"));
        assert!(w("").is_err());
        assert!(w("x=1").unwrap_err().contains("required"));
        assert_eq!(w("as=bob@example.com").unwrap(), "bob@example.com");
        assert_eq!(
            w("x=1&as=sip%3Abob%40Example.com").unwrap(),
            "bob@example.com"
        );
        assert_eq!(w("%61s=%62ob@example.com").unwrap(), "bob@example.com");
        // Every escape, not only %40 and %3A; and '+' is not a space.
        assert_eq!(w("as=a%26b%2Bc@example.com").unwrap(), "a&b+c@example.com");
        assert_eq!(w("as=+1555@example.com").unwrap(), "+1555@example.com");
        for bad in [
            "as=bob%4@example.com",
            "as=bob%zz@example.com",
            "as=bob%",
            "as=bob%+4@example.com",
            "as=%ff%fe@example.com",
        ] {
            assert!(w(bad).unwrap_err().contains("percent-encoding"), "{bad}");
        }
        assert!(w("as=").unwrap_err().contains("not a user address"));
        assert!(w("as=a@example.com&as=b@example.com")
            .unwrap_err()
            .contains("once"));
    }
}
