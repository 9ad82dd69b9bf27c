//! The HTTP listener: health and status for operators and load balancers. (The presence
//! API and web client of later issues mount here.)

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sip_transaction::TransactionLayer;
use sip_transport::Transports;
use switchboard_proxy::Core;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    transports: Transports,
    layer: TransactionLayer,
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(State(s): State<AppState>) -> Json<serde_json::Value> {
    let (aors, bindings) = s.core.location().counts();
    let (server_tx, client_tx) = s.layer.counts();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "registered_users": aors,
        "registered_devices": bindings,
        "connections": s.transports.connection_count(),
        "server_transactions": server_tx,
        "client_transactions": client_tx,
    }))
}

pub(crate) async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    transports: Transports,
    layer: TransactionLayer,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/status", get(status))
        .with_state(AppState {
            core,
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
