//! Billing: plans and the Stripe prices that grant them, and Stripe
//! webhook verification.
//!
//! The `Billing` trait and the Stripe client arrive with the billing work;
//! this module holds the plan vocabulary the rest of the system shares and
//! the `Stripe-Signature` check ([`webhook`]).

pub mod archive;
pub mod plans;
pub mod webhook;

#[cfg(feature = "s3")]
pub use archive::S3Archive;
pub use archive::{
    ArchiveError, ArchiveService, Archived, DatabaseArchive, EventArchive, FallbackArchive,
    RawEvent, ServiceArchive,
};
pub use plans::{PlanName, PriceId, PriceMap, PriceMapError};
pub use webhook::{
    EventData, EventError, SecretsError, SignatureError, WebhookEvent, WebhookSecrets, parse_event,
    verify,
};
