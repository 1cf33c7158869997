//! `/billing/*` (Bearer) and `POST /webhooks/stripe`.
//!
//! Without Stripe settings every one of them answers 503
//! `billing_not_configured`.

use std::sync::Arc;

use alvryn_core::auth::{Clock as _, SystemClock};
use alvryn_core::billing::webhook::MAX_WEBHOOK_BYTES;
use alvryn_core::billing::{
    BillingError, CheckoutUrls, EventError, IngestError, Outcome, PlanName, PlanView, SessionError,
    WebhookPipeline,
};
use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Bearer, no_store};
use crate::extract::{JsonBody, RawBody};
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// The billing routes and the Stripe webhook.
pub fn router() -> OpenApiRouter<AppState> {
    let (schemas, paths, webhook) = routes!(webhook);
    OpenApiRouter::new()
        .routes(routes!(checkout))
        .routes(routes!(portal))
        .routes(routes!(subscription))
        .routes((
            schemas,
            paths,
            webhook.layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES)),
        ))
}

fn pipeline(s: &AppState) -> Result<&Arc<WebhookPipeline>, ApiError> {
    s.billing.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing_not_configured",
            "billing is not configured on this server",
        )
    })
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::UnknownPlan => ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_plan",
                "no price is configured for this plan",
            ),
            SessionError::AlreadySubscribed => ApiError::new(
                StatusCode::CONFLICT,
                "already_subscribed",
                "you already have a subscription; change plans in the billing portal",
            ),
            SessionError::NoCustomer => ApiError::new(
                StatusCode::CONFLICT,
                "no_billing_account",
                "there is no billing account yet; subscribe to a plan first",
            ),
            SessionError::Billing(e) => billing_error(&e),
            SessionError::Store(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

/// Stripe's refusals are logged with Stripe's words (they name our
/// configuration: a price, a portal setting) and reach the client as a
/// fixed message.
fn billing_error(e: &BillingError) -> ApiError {
    match e {
        BillingError::Unavailable(_) => {
            tracing::warn!(error = %e, "Stripe is unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "billing_unavailable",
                "the payment provider is unavailable; try again shortly",
            )
            .retry_after(5)
        }
        _ => {
            tracing::error!(error = %e, "Stripe refused a request");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "billing_provider_error",
                "the payment provider refused the request",
            )
        }
    }
}

/// The plan to buy.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckoutBody {
    #[schema(example = "pro")]
    plan: String,
}

/// A hosted Stripe page to send the browser to.
#[derive(Serialize, ToSchema)]
pub(crate) struct UrlBody {
    url: String,
}

/// The caller's plan and the subscription behind it.
#[derive(Serialize, ToSchema)]
pub(crate) struct SubscriptionBody {
    #[schema(value_type = String, example = "pro")]
    plan: PlanName,
    /// Stripe's status (`active`, `past_due`, `canceled`, ...), or null
    /// without a subscription.
    status: Option<String>,
    /// End of the current period, Unix seconds.
    current_period_end: Option<i64>,
    cancel_at_period_end: bool,
}

/// A webhook delivery made durable.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookAck {
    /// Always true.
    received: bool,
    /// The event id.
    id: String,
    /// `applied`, `duplicate`, `stale`, `quarantined`, `ignored`,
    /// `kept_for_retry` or `dead_letter`.
    outcome: &'static str,
}

fn frontend(s: &AppState, path: &str) -> String {
    format!(
        "{}{path}",
        s.config.frontend_url.as_str().trim_end_matches('/')
    )
}

/// Starts a Stripe Checkout Session for a plan.
#[utoipa::path(post, path = "/billing/checkout", tag = "billing", security(("bearer" = [])), request_body = CheckoutBody, responses(
    (status = 200, description = "The Checkout page.", body = UrlBody),
    (status = 400, description = "`unknown_plan`, or a malformed body.", body = ErrorBody),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
    (status = 409, description = "`already_subscribed`.", body = ErrorBody),
    (status = 502, description = "`billing_provider_error`: Stripe refused.", body = ErrorBody),
    (status = 503, description = "`billing_not_configured`, `billing_unavailable`.", body = ErrorBody),
))]
async fn checkout(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    JsonBody(body): JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    let pipeline = pipeline(&s)?;
    let plan = PlanName::new(&body.plan).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_plan",
            "no price is configured for this plan",
        )
    })?;
    let urls = CheckoutUrls {
        success_url: frontend(&s, "/billing/success?session_id={CHECKOUT_SESSION_ID}"),
        cancel_url: frontend(&s, "/billing/cancel"),
    };
    let session = pipeline
        .subscriptions()
        .checkout(&p.user, &plan, &urls)
        .await?;
    Ok(no_store(Json(UrlBody { url: session.url })))
}

/// Opens the Stripe billing portal for the caller.
#[utoipa::path(post, path = "/billing/portal", tag = "billing", security(("bearer" = [])), responses(
    (status = 200, description = "The portal page.", body = UrlBody),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
    (status = 409, description = "`no_billing_account`.", body = ErrorBody),
    (status = 502, description = "`billing_provider_error`: Stripe refused.", body = ErrorBody),
    (status = 503, description = "`billing_not_configured`, `billing_unavailable`.", body = ErrorBody),
))]
async fn portal(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    let pipeline = pipeline(&s)?;
    let session = pipeline
        .subscriptions()
        .portal(&p.user, &frontend(&s, "/billing"))
        .await?;
    Ok(no_store(Json(UrlBody { url: session.url })))
}

/// The user's plan as billing set it (`free` without a subscription).
pub(crate) async fn plan_view(s: &AppState, user_id: &str) -> Result<Option<PlanView>, ApiError> {
    match &s.billing {
        None => Ok(None),
        Some(p) => Ok(Some(p.subscriptions().view(user_id).await?)),
    }
}

/// The caller's plan and subscription.
#[utoipa::path(get, path = "/billing/subscription", tag = "billing", security(("bearer" = [])), responses(
    (status = 200, description = "The plan.", body = SubscriptionBody),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
    (status = 503, description = "`billing_not_configured`.", body = ErrorBody),
))]
async fn subscription(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    pipeline(&s)?;
    let view = plan_view(&s, &p.user.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(no_store(Json(SubscriptionBody {
        plan: view.plan,
        status: view.status,
        current_period_end: view.current_period_end,
        cancel_at_period_end: view.cancel_at_period_end,
    })))
}

/// Stripe's webhook: verified, made durable, then applied once.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    params(("Stripe-Signature" = Option<String>, Header, description = "Stripe's signature of the raw body.")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event, byte for byte as Stripe sent it (at most 1 MiB)."),
    responses(
        (status = 200, description = "Durable (and applied, or kept for retry).", body = WebhookAck),
        (status = 400, description = "`invalid_signature` or `invalid_event`: Stripe will not retry.", body = ErrorBody),
        (status = 503, description = "`unavailable` (Stripe delivers again) or `billing_not_configured`.", body = ErrorBody),
    ))]
async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_WEBHOOK_BYTES>,
) -> Result<Response, ApiError> {
    let pipeline = pipeline(&s)?;
    let signature = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let ingested = pipeline
        .ingest(&body, signature, SystemClock.now_ms())
        .await
        .map_err(|e| match e {
            IngestError::Signature(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string())
            }
            IngestError::Event(EventError::TooLarge { max }) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body must be at most {max} bytes"),
            ),
            IngestError::Event(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", e.to_string())
            }
            IngestError::Unavailable(why) => {
                tracing::error!(error = %why, "a webhook event could not be made durable; Stripe will deliver it again");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event could not be stored; deliver it again",
                )
            }
            other => ApiError::internal(&other),
        })?;
    let outcome = match ingested.outcome {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Stale => "stale",
        Outcome::Quarantined => "quarantined",
        Outcome::Ignored => "ignored",
        Outcome::Failed => "kept_for_retry",
        Outcome::Dead => "dead_letter",
    };
    Ok(no_store(Json(WebhookAck {
        received: true,
        id: ingested.event_id,
        outcome,
    })))
}
