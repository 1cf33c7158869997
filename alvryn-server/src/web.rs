//! What every answer of the HTTP API carries, whatever answered it:
//! security headers, CORS for the listed browser origins, a request id,
//! and one access-log line per request.
//!
//! [`layers`] puts them around the whole router (routes, the 404 and 405
//! fallbacks, the request and body timeouts, the panic catcher), so a
//! JSON error, a timeout and a CORS preflight get them as a 200 does.
//! Outermost first:
//!
//! 1. the client's `x-request-id` is kept only if it is sane
//!    ([`is_sane_request_id`]: at most 128 characters of `A-Z a-z 0-9 .
//!    _ -`), otherwise dropped and replaced by a random UUID
//!    (tower-http's `SetRequestId`), and echoed on the answer
//!    (`PropagateRequestId`);
//! 2. `access_log`: the request runs inside a `request` span with its
//!    `request_id` (so every log line of the request names it), is
//!    counted and timed for `/metrics` ([`crate::prometheus::record`]),
//!    and one INFO line (target `alvryn::access`) follows it with the
//!    method, the route *template* (`/auth/sessions/{id}`, never the
//!    path with its ids, never the query), the status, the latency and
//!    the id; nothing from the headers or the body;
//! 3. [`SECURITY_HEADERS`], set over whatever the inner layers answered;
//! 4. CORS (tower-http's `CorsLayer`) for an explicit list of origins
//!    ([`Config::allowed_origins`]): an origin not on it gets no
//!    `Access-Control-Allow-Origin` and no `Access-Control-Allow-Credentials`.
//!    An `OPTIONS` request anywhere is answered here as a preflight (200,
//!    empty), never reaching a route.
//!
//! The answers hyper writes by itself to requests it cannot parse carry
//! the same security headers (see [`crate::wire`]); they have no request
//! id, since there was no request to name.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{Method, request::Parts};
use axum::middleware::Next;
use axum::response::Response;
use tower::ServiceBuilder;
use tower::util::{MapRequestLayer, MapResponseLayer};
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument as _;

use crate::Config;

/// The request id header, read from the client and echoed on every answer.
pub const REQUEST_ID: &str = "x-request-id";

/// The longest client request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// How long a browser may cache a preflight answer.
pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// The log target of the access lines (filter them with
/// `ALVRYN_LOG=info,alvryn::access=off`).
pub const ACCESS_TARGET: &str = "alvryn::access";

/// The headers on every answer: helmet's defaults, made strict for an API
/// that serves no pages (`DENY` rather than `SAMEORIGIN`, a
/// Content-Security-Policy that allows nothing). No `Server` or
/// `X-Powered-By` header is ever sent.
pub const SECURITY_HEADERS: [(&str, &str); 12] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-dns-prefetch-control", "off"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-download-options", "noopen"),
    ("origin-agent-cluster", "?1"),
    ("x-xss-protection", "0"),
];

/// Wraps every route and fallback of `router` in the layers this module
/// describes, configured from `config`.
pub fn layers(router: Router, config: &Config) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(drop_insane_request_id))
            .layer(SetRequestIdLayer::new(
                HeaderName::from_static(REQUEST_ID),
                RandomUuid,
            ))
            .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                REQUEST_ID,
            )))
            .layer(axum::middleware::from_fn(access_log))
            .layer(MapResponseLayer::new(set_security_headers))
            .layer(cors(config)),
    )
}

/// Sets every one of [`SECURITY_HEADERS`] on `response`, replacing what
/// an inner layer set. One layer for all twelve: axum clones a route's
/// whole layer stack for every request.
fn set_security_headers(mut response: Response) -> Response {
    static HEADERS: LazyLock<Vec<(HeaderName, HeaderValue)>> = LazyLock::new(|| {
        SECURITY_HEADERS
            .iter()
            .map(|&(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    });
    let headers = response.headers_mut();
    for (name, value) in HEADERS.iter() {
        headers.insert(name.clone(), value.clone());
    }
    response
}

/// CORS for the configured origins only, with credentials, for the API's
/// methods and the two request headers it reads.
fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .allowed_origins()
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let listed = origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        // Only with an allowed origin: tower-http's plain `true` would
        // send it to any origin.
        .allow_credentials(AllowCredentials::predicate(
            move |origin: &HeaderValue, _: &Parts| listed.contains(origin),
        ))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([AUTHORIZATION, CONTENT_TYPE])
        .expose_headers([
            HeaderName::from_static(REQUEST_ID),
            axum::http::header::RETRY_AFTER,
            // The rate limits' budget.
            crate::ratelimit::RATELIMIT_LIMIT,
            crate::ratelimit::RATELIMIT_REMAINING,
            crate::ratelimit::RATELIMIT_RESET,
        ])
        .max_age(CORS_MAX_AGE)
}

/// Makes request ids: random (version 4) UUIDs from the thread's random
/// generator, not a system call per request as `MakeRequestUuid`'s.
#[derive(Clone, Copy, Debug)]
struct RandomUuid;

impl MakeRequestId for RandomUuid {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let mut bytes = [0u8; 16];
        rand::fill(&mut bytes);
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// Whether a client's request id is kept: 1 to [`MAX_REQUEST_ID_LEN`]
/// characters of `A-Z a-z 0-9 . _ -`, safe in any log line.
#[must_use]
pub fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Removes the client's request id unless there is exactly one and it is
/// sane; `SetRequestId` then makes one.
fn drop_insane_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let headers = req.headers_mut();
    let mut ids = headers.get_all(REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (Some(one), None) => is_sane_request_id(one.as_bytes()),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(REQUEST_ID);
    }
    req
}

/// Runs the request in a `request` span naming its id, then writes its
/// access line and counts it ([`crate::prometheus::record`]).
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req.extensions().get::<RequestId>().cloned();
    let id = id
        .as_ref()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let method = req.method().clone();
    // The template the router matched; unknown paths are not written out.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let span = tracing::info_span!("request", request_id = %id);
    let response = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = response.status();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::prometheus::record(&method, route, status, took);
    tracing::info!(
        target: ACCESS_TARGET,
        parent: &span,
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_ms = took.as_micros() as f64 / 1000.0,
        request_id = %id,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        for ok in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "trace.id_1-2",
            &"x".repeat(128),
        ] {
            assert!(is_sane_request_id(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(129),
            "a b",
            "a\r\nb",
            "a\nset-cookie: x",
            "é",
            "a/b",
            "a;b",
            "{\"a\":1}",
            "a\u{0}",
        ] {
            assert!(!is_sane_request_id(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn two_request_ids_are_both_dropped() {
        let req = axum::http::Request::builder()
            .header(REQUEST_ID, "one")
            .header(REQUEST_ID, "two")
            .body(())
            .unwrap();
        let req = drop_insane_request_id(req);
        assert!(req.headers().get(REQUEST_ID).is_none());
        let req = axum::http::Request::builder()
            .header(REQUEST_ID, "one")
            .body(())
            .unwrap();
        let req = drop_insane_request_id(req);
        assert_eq!(
            req.headers().get(REQUEST_ID).map(|v| v.as_bytes()),
            Some(&b"one"[..])
        );
    }
}
