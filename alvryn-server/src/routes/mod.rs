//! HTTP routes, one resource per module.

pub mod auth;
pub mod ops;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::extract::MAX_BODY_BYTES;
use crate::{ApiError, AppState};

/// Every route; unknown paths and methods answer JSON errors, bodies are
/// capped, panics become a JSON 500.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(ops::router())
        .merge(auth::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // 5xx answers are not errors of their own: a real failure is
        // logged where it happens (with its cause), and a `busy` under a
        // flood must not flood the log.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }))
}
