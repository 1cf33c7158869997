//! Billing: plans and the Stripe prices that grant them, the payment
//! provider ([`Billing`], [`StripeClient`]), users' subscriptions
//! ([`Subscriptions`]), and the webhook pipeline that keeps them in step
//! with Stripe ([`WebhookPipeline`]): signature verification
//! ([`webhook`]), a durable archive of every raw event ([`archive`]), and
//! ordered, exactly-once application ([`pipeline`]).

pub mod archive;
pub mod client;
pub mod pipeline;
pub mod plans;
pub mod state;
#[cfg(feature = "stripe")]
pub mod stripe;
pub mod subscription;
pub mod webhook;

#[cfg(feature = "s3")]
pub use archive::S3Archive;
pub use archive::{
    ArchiveError, ArchiveService, Archived, DatabaseArchive, EventArchive, EventKey,
    FallbackArchive, RawEvent, ServiceArchive,
};
pub use client::{
    Billing, BillingError, BillingRequest, BillingResponse, BillingService, CheckoutRequest,
    HostedSession, NewCustomer, PortalRequest, ServiceBilling,
};
pub use pipeline::{
    EventRetry, EventStatus, EventSummary, IngestError, Ingested, Outcome, PipelineStats,
    ReplaySelection, Report, WebhookPipeline,
};
pub use plans::{PlanName, PriceId, PriceMap, PriceMapError};
pub use state::{ApplyError, ApplyOutcome, CheckoutUrls, PlanView, SessionError, Subscriptions};
#[cfg(feature = "stripe")]
pub use stripe::{RetryPolicy, StripeClient, StripeSetupError};
pub use subscription::Subscription;
pub use webhook::{
    EventData, EventError, SecretsError, SignatureError, WebhookEvent, WebhookSecrets, parse_event,
    verify,
};

/// The delay before try number `attempt` (1 for the first retry):
/// `base` doubled at each attempt, at most `max`.
pub(crate) fn doubling_delay(
    base: std::time::Duration,
    attempt: u32,
    max: std::time::Duration,
) -> std::time::Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max)
}

/// Now, Unix milliseconds, from the system clock.
pub(crate) fn now_ms() -> i64 {
    use crate::auth::Clock as _;
    crate::auth::SystemClock.now_ms()
}
