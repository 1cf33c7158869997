//! The OpenAPI description of the API, generated from the code: every
//! route is registered through `utoipa_axum`'s `OpenApiRouter` with the
//! `#[utoipa::path]` of its handler, and bodies are the typed structs the
//! handlers serialize, so the description cannot drift from the routes.
//! Served at `GET /openapi.json`.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's stable code and public message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, e.g. `invalid_credentials`.
    pub code: String,
    /// For people; never a secret or an internal cause.
    pub message: String,
}

/// The answers any route may give whatever it does: a request the HTTP
/// layer refuses (400, 414, 431), a body that is too slow, too large or
/// not JSON (408, 413, 415), too many requests (429), a panic (500), a
/// store outage or the request timeout (503).
const COMMON_ERRORS: [(&str, &str); 9] = [
    ("400", "The request is malformed."),
    ("408", "The request body did not arrive in time."),
    ("413", "The body is too large."),
    ("414", "The request target is too long."),
    ("415", "The body is not JSON."),
    ("429", "Too many requests; see `Retry-After`."),
    ("431", "The request headers are too large."),
    ("500", "Internal error (nothing about the cause)."),
    (
        "503",
        "Temporarily unavailable, or the request took too long.",
    ),
];

/// Adds the bearer scheme and the [`COMMON_ERRORS`] to every operation.
struct Common;

impl Modify for Common {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // `/metrics` when `ALVRYN_METRICS_TOKEN` is set.
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = ResponseBuilder::new()
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build();
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in COMMON_ERRORS {
                    let mut response = error.clone();
                    response.description = description.to_owned();
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Alvryn",
        description = "Accounts, sessions, sign-in with Google and Microsoft, and Stripe billing."
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct Base;

/// The description of `paths` (the routes' own), with the shared parts.
#[must_use]
pub fn document(paths: OpenApi) -> OpenApi {
    let mut api = <Base as utoipa::OpenApi>::openapi();
    api.merge(paths);
    Common.modify(&mut api);
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    api
}
