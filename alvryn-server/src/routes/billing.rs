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
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Bearer, no_store};
use crate::extract::{JsonBody, RawBody};
use crate::{ApiError, AppState};

/// The billing routes and the Stripe webhook.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/billing/checkout", post(checkout))
        .route("/billing/portal", post(portal))
        .route("/billing/subscription", get(subscription))
        .route(
            "/webhooks/stripe",
            post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES)),
        )
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    plan: String,
}

fn frontend(s: &AppState, path: &str) -> String {
    format!(
        "{}{path}",
        s.config.frontend_url.as_str().trim_end_matches('/')
    )
}

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
    Ok(no_store(Json(json!({ "url": session.url }))))
}

async fn portal(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    let pipeline = pipeline(&s)?;
    let session = pipeline
        .subscriptions()
        .portal(&p.user, &frontend(&s, "/billing"))
        .await?;
    Ok(no_store(Json(json!({ "url": session.url }))))
}

/// The user's plan as billing set it (`free` without a subscription).
pub(crate) async fn plan_view(s: &AppState, user_id: &str) -> Result<Option<PlanView>, ApiError> {
    match &s.billing {
        None => Ok(None),
        Some(p) => Ok(Some(p.subscriptions().view(user_id).await?)),
    }
}

async fn subscription(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    pipeline(&s)?;
    let view = plan_view(&s, &p.user.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(no_store(Json(json!({
        "plan": view.plan,
        "status": view.status,
        "current_period_end": view.current_period_end,
        "cancel_at_period_end": view.cancel_at_period_end,
    }))))
}

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
    Ok(no_store(Json(json!({
        "received": true,
        "id": ingested.event_id,
        "outcome": outcome,
    }))))
}
