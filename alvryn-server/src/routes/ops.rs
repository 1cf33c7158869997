//! Operational endpoints: liveness and readiness.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{ErrorBody, ErrorDetail};
use crate::{ApiError, AppState};

/// `/healthz`: the process is up and serving. `/readyz`: its store, its
/// field key and (when billing archives there) its S3 bucket answer; see
/// [`crate::ready`]. `/metrics`: Prometheus's text format (see
/// [`crate::prometheus`]).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses(
    (status = 200, description = "Up.", body = Health),
))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Whether the server can serve, check by check.
#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Each check (`store`, `field_key`, `s3` when configured): `ok`, or
    /// what failed, without its cause (which is logged).
    checks: BTreeMap<String, String>,
    /// When not ready, the API's error naming the failed checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

/// 200 `{"status": "ready", "checks": {...}}`, or 503 with
/// `"status": "not_ready"`, the same checks, and the API's error shape
/// naming the checks that failed (never their causes, which are logged).
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready.", body = Readiness),
    (status = 503, description = "Not ready: `error` names the failed checks.", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.report().await;
    let checks = report
        .checks
        .iter()
        .map(|(name, check)| ((*name).to_owned(), check.as_str().to_owned()))
        .collect();
    let (status, word, error) = if report.ready() {
        (StatusCode::OK, "ready", None)
    } else {
        let error = ErrorDetail {
            code: "not_ready".to_owned(),
            message: format!("not ready: {}", report.failed().join(", ")),
        };
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready", Some(error))
    };
    let body = Readiness {
        status: word,
        checks,
        error,
    };
    super::auth::no_store((status, Json(body)))
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in
/// constant time).
fn bearer_matches(headers: &axum::http::HeaderMap, token: &alvryn_core::SecretString) -> bool {
    use subtle::ConstantTimeEq as _;
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(super::auth::bearer_token)
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.expose().as_bytes())))
}

/// The process's metrics, in Prometheus's text format. With
/// `ALVRYN_METRICS_TOKEN` set, only for `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", tag = "ops", security((), ("metrics_token" = [])), responses(
    (status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain; version=0.0.4"),
    (status = 401, description = "`ALVRYN_METRICS_TOKEN` is set and the request does not carry it.", body = ErrorBody),
    (status = 404, description = "No metrics recorder in this process.", body = ErrorBody),
))]
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token
        && !bearer_matches(&headers, token)
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the metrics token is required",
        )
        .into_response();
    }
    // The field key's count as the ledger has it now (every process's
    // reservations), not only as of this process's last reservation.
    if let Err(e) = state.cipher.publish_usage().await {
        tracing::warn!(error = %e, "could not read the field-key usage for /metrics");
    }
    crate::prometheus::response()
}
