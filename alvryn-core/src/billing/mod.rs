//! Billing: plans and the Stripe prices that grant them.
//!
//! The `Billing` trait and the Stripe client arrive with the billing work;
//! this module holds the plan vocabulary the rest of the system shares.

pub mod archive;
pub mod plans;

#[cfg(feature = "s3")]
pub use archive::S3Archive;
pub use archive::{
    ArchiveError, ArchiveService, Archived, DatabaseArchive, EventArchive, FallbackArchive,
    RawEvent, ServiceArchive,
};
pub use plans::{PlanName, PriceId, PriceMap, PriceMapError};
