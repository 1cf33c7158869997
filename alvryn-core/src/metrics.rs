//! What the library counts, through the [`metrics`] facade.
//!
//! The library never installs a recorder: an embedding service that
//! installs one (`metrics-exporter-prometheus`, say) gets these for free,
//! and one that does not pays a relaxed atomic load per emit point. The
//! reference server installs a Prometheus recorder and serves `/metrics`.
//!
//! Names follow Prometheus's conventions (counters end in `_total`, times
//! are `_seconds`), and every label takes a value from a short, fixed
//! set: no user id, email, token, event id or key material ever becomes
//! a label (a key is named by its fingerprint, `k` + 16 hex digits).
//! [`describe`] registers a help text for each name; call it once after
//! installing a recorder.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter: sign-ups, by `outcome` (`ok`, `refused`: invalid email, weak
/// password or taken email; `error`: busy or the store failed).
pub const AUTH_SIGNUPS: &str = "auth_signups_total";
/// Counter: password logins, by `outcome` (`ok`, `failed`: unknown email
/// or wrong password; `error`: busy or the store failed).
pub const AUTH_LOGINS: &str = "auth_logins_total";
/// Counter: refreshes, by `outcome` (`ok`, grace-window answers
/// included; `invalid`; `reused`; `error`: the store failed).
pub const AUTH_REFRESHES: &str = "auth_refreshes_total";
/// Counter: retired refresh tokens presented again (the session is
/// revoked); the same as `auth_refreshes_total{outcome="reused"}`, on its
/// own for alerting.
pub const AUTH_REFRESH_REUSE: &str = "auth_refresh_token_reuse_total";
/// Counter: Stripe webhook events made durable, by `type` (a known type,
/// else `other`) and `outcome` (`applied`, `duplicate`, `stale`,
/// `quarantined`, `ignored`, `failed`, `dead`), retries included.
pub const WEBHOOK_EVENTS: &str = "webhook_events_total";
/// Counter: webhook deliveries refused before they were made durable, by
/// `reason` (`signature`, `invalid_event`, `unavailable`).
pub const WEBHOOK_REJECTED: &str = "webhook_deliveries_rejected_total";
/// Counter: raw events that S3 did not take and the database kept for
/// re-archival.
pub const ARCHIVE_FALLBACKS: &str = "archive_fallbacks_total";
/// Counter: raw events the worker moved from the database to S3, by
/// `outcome` (`uploaded`, `failed`).
pub const ARCHIVE_REUPLOADS: &str = "archive_reuploads_total";
/// Gauge: encryptions counted against a field key (every process's
/// reservations in the usage ledger, as last seen here: errs high), by
/// `key_id` (the key's fingerprint).
pub const FIELD_ENCRYPTIONS: &str = "field_encryptions";
/// Gauge: the encryptions a field key may perform, by `key_id`.
pub const FIELD_ENCRYPTION_LIMIT: &str = "field_encryption_limit";
/// Counter: finished job runs, by `job`.
pub const JOB_RUNS: &str = "worker_job_runs_total";
/// Counter: job runs that failed (an error, or the lease lost), by `job`.
pub const JOB_FAILURES: &str = "worker_job_failures_total";
/// Histogram: how long job runs take, by `job`.
pub const JOB_DURATION: &str = "worker_job_duration_seconds";
/// Gauge: when a job last succeeded, Unix seconds, by `job`.
pub const JOB_LAST_SUCCESS: &str = "worker_job_last_success_timestamp_seconds";
/// Counter: job leases taken from another holder that had not released
/// them (it crashed, stalled or lost the store), by `job`.
pub const LEASE_TAKEOVERS: &str = "worker_lease_takeovers_total";

/// Registers the help text and unit of every metric above with the
/// installed recorder. Harmless without one, and when called twice.
pub fn describe() {
    describe_counter!(AUTH_SIGNUPS, Unit::Count, "Sign-ups, by outcome.");
    describe_counter!(AUTH_LOGINS, Unit::Count, "Password logins, by outcome.");
    describe_counter!(
        AUTH_REFRESHES,
        Unit::Count,
        "Refresh-token exchanges, by outcome."
    );
    describe_counter!(
        AUTH_REFRESH_REUSE,
        Unit::Count,
        "Retired refresh tokens presented again; each revoked its session."
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        Unit::Count,
        "Stripe webhook events made durable, by type and outcome (retries included)."
    );
    describe_counter!(
        WEBHOOK_REJECTED,
        Unit::Count,
        "Stripe webhook deliveries refused before they were made durable, by reason."
    );
    describe_counter!(
        ARCHIVE_FALLBACKS,
        Unit::Count,
        "Raw events S3 did not take, kept in the database for re-archival."
    );
    describe_counter!(
        ARCHIVE_REUPLOADS,
        Unit::Count,
        "Raw events moved from the database to S3 by the worker, by outcome."
    );
    describe_gauge!(
        FIELD_ENCRYPTIONS,
        Unit::Count,
        "Encryptions counted against a field key in the usage ledger (errs high), by key fingerprint."
    );
    describe_gauge!(
        FIELD_ENCRYPTION_LIMIT,
        Unit::Count,
        "Encryptions a field key may perform, by key fingerprint."
    );
    describe_counter!(JOB_RUNS, Unit::Count, "Finished worker job runs, by job.");
    describe_counter!(
        JOB_FAILURES,
        Unit::Count,
        "Worker job runs that failed or lost their lease, by job."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "How long worker job runs take, by job."
    );
    describe_gauge!(
        JOB_LAST_SUCCESS,
        Unit::Seconds,
        "When a worker job last succeeded, Unix seconds, by job."
    );
    describe_counter!(
        LEASE_TAKEOVERS,
        Unit::Count,
        "Job leases taken from a holder that had not released them, by job."
    );
}

/// The Stripe event types counted under their own name; every other type
/// is `other`, so a sender cannot grow the number of series.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.expired",
    "customer.created",
    "customer.deleted",
    "customer.updated",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.upcoming",
    "payment_intent.payment_failed",
    "payment_intent.succeeded",
];

/// The `type` label of a Stripe event type: itself when known, else
/// `other`.
#[must_use]
pub fn event_type_label(event_type: &str) -> &'static str {
    KNOWN_EVENT_TYPES
        .iter()
        .find(|t| **t == event_type)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_outside_the_list_are_other() {
        assert_eq!(event_type_label("invoice.paid"), "invoice.paid");
        assert_eq!(event_type_label("evt_made.up"), "other");
        assert_eq!(event_type_label(""), "other");
        assert_eq!(event_type_label("invoice.paid\"} 1\n"), "other");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let counters = [
            AUTH_SIGNUPS,
            AUTH_LOGINS,
            AUTH_REFRESHES,
            AUTH_REFRESH_REUSE,
            WEBHOOK_EVENTS,
            WEBHOOK_REJECTED,
            ARCHIVE_FALLBACKS,
            ARCHIVE_REUPLOADS,
            JOB_RUNS,
            JOB_FAILURES,
            LEASE_TAKEOVERS,
        ];
        for c in counters {
            assert!(c.ends_with("_total"), "{c}");
        }
        for g in [
            FIELD_ENCRYPTIONS,
            FIELD_ENCRYPTION_LIMIT,
            JOB_DURATION,
            JOB_LAST_SUCCESS,
        ] {
            assert!(!g.contains("total"), "{g}");
        }
    }
}
