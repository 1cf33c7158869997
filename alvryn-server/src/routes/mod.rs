//! HTTP routes, one resource per module.

pub mod ops;

use axum::Router;

use crate::{ApiError, AppState};

/// Every route; unknown paths answer a JSON 404.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(ops::router())
        .fallback(|| async { ApiError::not_found() })
}
