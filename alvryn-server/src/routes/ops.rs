//! Operational endpoints.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// `/healthz`: the process is up and serving. `/metrics`: Prometheus's
/// text format (see [`crate::prometheus`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    // The field key's count as the ledger has it now (every process's
    // reservations), not only as of this process's last reservation.
    if let Err(e) = state.cipher.publish_usage().await {
        tracing::warn!(error = %e, "could not read the field-key usage for /metrics");
    }
    match crate::prometheus::render() {
        Some(text) => ([(CONTENT_TYPE, crate::prometheus::CONTENT_TYPE)], text).into_response(),
        None => ApiError::not_found().into_response(),
    }
}
