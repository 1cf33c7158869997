//! Request extractors whose rejections use the API's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A JSON body. Requires `Content-Type: application/json`; answers 415,
/// 413, or 400 with a stable code otherwise.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // A declared length over the limit is refused before the body is
        // touched: no `100 Continue` invites a client to send it.
        if declared_length(&req).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON with Content-Type: application/json",
                ),
                JsonRejection::JsonSyntaxError(_) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "the body is not valid JSON",
                ),
                JsonRejection::JsonDataError(e) => {
                    // serde names the missing field, which is safe to repeat;
                    // a type mismatch would quote the value, which is not.
                    let text = e.body_text();
                    let detail = text
                        .split("missing field ")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .map_or_else(
                            || "a field has the wrong type".to_owned(),
                            |field| format!("missing field {field}"),
                        );
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("the body is not the expected shape: {detail}"),
                    )
                }
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    too_large()
                }
                // The body could not be read: the client stopped sending
                // it in time, or the connection failed. The transport's
                // own words stay here; the client gets a fixed message.
                other if caused_by_timeout(&other) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                ),
                other => {
                    tracing::debug!(error = %other, "request body unreadable");
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the request body could not be read",
                    )
                }
            }),
        }
    }
}

/// The body length a request declares (`Content-Length`), if any.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether the body timeout is somewhere in `e`'s causes.
fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>())
}

/// A path parameter. A segment that does not decode (bad percent-encoding,
/// not UTF-8, not the expected type) answers 400 `invalid_path` in the
/// API's error shape instead of axum's plain text.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PathParam<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "a path segment is not valid",
            )),
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body must be at most {MAX_BODY_BYTES} bytes"),
    )
}

/// A raw body of at most `MAX` bytes, byte for byte (a webhook's
/// signature covers the exact bytes). A declared or actual length over
/// `MAX` answers 413 before more is read; a body that stalls, 408.
pub struct RawBody<const MAX: usize>(pub axum::body::Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for RawBody<MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body must be at most {MAX} bytes"),
            )
        };
        if declared_length(&req).is_some_and(|n| n > MAX as u64) {
            return Err(too_large());
        }
        match axum::body::to_bytes(req.into_body(), MAX).await {
            Ok(b) => Ok(Self(b)),
            Err(e) => {
                let over =
                    std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                        e.source()
                    })
                    .any(|e| e.is::<http_body_util::LengthLimitError>());
                Err(if over {
                    too_large()
                } else if caused_by_timeout(&e) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the request body did not arrive in time",
                    )
                } else {
                    tracing::debug!(error = %e, "request body unreadable");
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the request body could not be read",
                    )
                })
            }
        }
    }
}
