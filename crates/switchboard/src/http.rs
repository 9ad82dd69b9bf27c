//! The HTTP listener (loopback by default): health and status for operators and load
//! balancers, and the presence API (`GET /presence/{address}?as={watcher}`: what that
//! watcher is allowed to see, through the same privacy filter as every NOTIFY).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
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
    }))
}

fn error(status: StatusCode, text: String) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(json!({ "error": text })))
}

/// The presence of `address` as `as` (a user address; absent: the user themself) sees it.
async fn presence_of(
    State(s): State<AppState>,
    Path(address): Path<String>,
    RawQuery(query): RawQuery,
) -> (StatusCode, Json<serde_json::Value>) {
    let Ok(addr) = Address::parse(&address) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("'{address}' is not a user address"),
        );
    };
    let mut watcher = None;
    for pair in query.as_deref().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("as=") {
            let v = v
                .replace("%40", "@")
                .replace("%3A", ":")
                .replace("%3a", ":");
            match Address::parse(&v) {
                Ok(w) => watcher = Some(format!("sip:{w}")),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("'{v}' is not a user address"),
                    )
                }
            }
        }
    }
    match s.core.users().find(&addr) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no such user: {addr}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let view = s.presence.view(&format!("sip:{addr}"), watcher.as_deref());
    (
        StatusCode::OK,
        Json(serde_json::to_value(view).unwrap_or_default()),
    )
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
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
