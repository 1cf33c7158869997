//! Billing: plans and the Stripe prices that grant them.
//!
//! The `Billing` trait and the Stripe client arrive with the billing work;
//! this module holds the plan vocabulary the rest of the system shares.

pub mod plans;

pub use plans::{PlanName, PriceId, PriceMap, PriceMapError};
