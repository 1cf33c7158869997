//! HTTP routes, one resource per module.

pub mod auth;
pub mod billing;
pub mod oauth;
pub mod ops;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;

use crate::extract::MAX_BODY_BYTES;
use crate::ratelimit::RateLimiter;
use crate::{ApiError, AppState};

/// Every route; unknown paths and methods answer JSON errors, bodies are
/// capped, panics become a JSON 500, public routes are rate limited by
/// `limiter` ([`crate::ratelimit`]). `GET /openapi.json` describes them
/// all (see [`crate::openapi`]).
pub fn router(limiter: Arc<RateLimiter>) -> Router<AppState> {
    let (routes, api) = documented().split_for_parts();
    let document = axum::body::Bytes::from(
        serde_json::to_vec(&crate::openapi::document(api)).unwrap_or_default(),
    );
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            }),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
        // Innermost, on matched routes only: a 429 still passes every
        // layer below (logging, headers, panics).
        .route_layer(axum::middleware::from_fn_with_state(
            limiter,
            crate::ratelimit::by_client_ip,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(head_limits))
        // Requests are logged by `crate::web` (one access line each, no
        // query, no headers). 5xx answers are not errors of their own: a
        // real failure is logged where it happens (with its cause), and a
        // `busy` under a flood must not flood the log.
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }))
}

/// Every route of the API, each with its OpenAPI description.
pub(crate) fn documented() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .merge(ops::router())
        .merge(auth::router())
        .merge(oauth::router())
        .merge(billing::router())
}

/// The longest request target (path and query) accepted, in bytes; 414
/// beyond it.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header bytes (names and values) accepted; 431 beyond it.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses request heads the API never needs, with its JSON errors: a
/// target over [`MAX_URI_BYTES`] (414) and headers over
/// [`MAX_HEADER_BYTES`] (431). The HTTP layer's own limits, which answer
/// the same way, sit above these.
async fn head_limits(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;

    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target must be at most {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers must be at most {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}
