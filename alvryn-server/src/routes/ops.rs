//! Operational endpoints: liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::AppState;

/// `/healthz`: the process is up and serving. `/readyz`: its store, its
/// field key and (when billing archives there) its S3 bucket answer; see
/// [`crate::ready`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 `{"status": "ready", "checks": {...}}`, or 503 with
/// `"status": "not_ready"`, the same checks, and the API's error shape
/// naming the checks that failed (never their causes, which are logged).
async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.report().await;
    let checks: Map<String, Value> = report
        .checks
        .iter()
        .map(|(name, check)| ((*name).to_owned(), Value::from(check.as_str())))
        .collect();
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    if report.ready() {
        return (
            StatusCode::OK,
            no_store,
            Json(json!({ "status": "ready", "checks": checks })),
        )
            .into_response();
    }
    let failed = report.failed();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        no_store,
        Json(json!({
            "status": "not_ready",
            "checks": checks,
            "error": {
                "code": "not_ready",
                "message": format!("not ready: {}", failed.join(", ")),
            },
        })),
    )
        .into_response()
}
