//! [`WebhookPipeline`]: Stripe's webhook deliveries, made durable before
//! they are acknowledged and applied exactly once.
//!
//! # A delivery
//!
//! 1. **Verify** the `Stripe-Signature` over the raw bytes
//!    ([`verify`](super::verify)): a failure is [`IngestError::Signature`]
//!    (answer 400).
//! 2. **Read** the event ([`parse_event`](super::parse_event)): a verified
//!    body that is not an event is [`IngestError::Event`] (a 4xx, never a
//!    5xx, or Stripe retries it for days).
//! 3. **Archive** the raw body ([`EventArchive`]): S3, or the database.
//! 4. **Record** the event id (record `stripe_event`, insert-if-absent):
//!    only the one delivery that inserts it goes on to apply, so the same
//!    event delivered twice, or a hundred times at once, is applied once.
//!    Steps 3 and 4 failing is [`IngestError::Unavailable`] (answer 5xx:
//!    Stripe delivers again). Anything after this point is durable, and
//!    the delivery is acknowledged whatever happens next.
//! 5. **Apply** it ([`Subscriptions::apply`]) and move the record's status
//!    on. A failure (Stripe or the store down, a customer not known yet)
//!    leaves the event `failed` with a time for its next try; the worker
//!    ([`WebhookPipeline::retry_due`]) tries again with exponential
//!    backoff and, after [`EventRetry::max_attempts`], moves it to
//!    `dead` (a dead letter, still replayable). A delivery that crashed
//!    between steps 4 and 5 leaves it `received`; the worker picks that
//!    up too.
//!
//! # Statuses
//!
//! A record's status only moves forward (the store's rule), so the
//! numbers are ordered: `received` (1) < `failed` (10 + attempts) <
//! `dead` (40) < `quarantined` (50) < `ignored` (55) < `applied` (60).
//! `ignored` is an event type the pipeline does not act on: archived and
//! acknowledged. `quarantined` is an event whose price the price map
//! does not know: kept, logged, counted and listed, never mapped to a
//! default plan; after the map is fixed, `alvryn events replay` applies
//! it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::archive::{ARCHIVE_NS, EventArchive, EventKey, RawEvent};
use super::state::{ApplyError, ApplyOutcome, Subscriptions};
use super::subscription::{CheckoutCompleted, InvoiceRef, Subscription};
use super::webhook::{self, EventError, SignatureError, WebhookEvent, WebhookSecrets};
use crate::store::{
    Advance, Record, RecordCursor, RecordFilter, StatusRange, StoreBackend, StoreError,
};

/// Record namespace of processed events (key: the event id).
pub const EVENT_NS: &str = "stripe_event";

const RECEIVED: u32 = 1;
const FAILED_BASE: u32 = 10;
const DEAD: u32 = 40;
const QUARANTINED: u32 = 50;
const IGNORED: u32 = 55;
const APPLIED: u32 = 60;
/// The most attempts a policy may allow (statuses 11..=39 are `failed`).
const MAX_ATTEMPTS: u32 = DEAD - FAILED_BASE - 1;

/// Where an event is in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Recorded; not applied yet.
    Received,
    /// Applying failed; it will be tried again.
    Failed,
    /// Applying failed too often; only a replay applies it.
    Dead,
    /// Its price is unknown to the price map.
    Quarantined,
    /// A type the pipeline does not act on.
    Ignored,
    /// Applied (or found older than the state it would have changed).
    Applied,
}

impl EventStatus {
    fn of(status: u32) -> Self {
        match status {
            RECEIVED => Self::Received,
            s if s < DEAD => Self::Failed,
            s if s < QUARANTINED => Self::Dead,
            s if s < IGNORED => Self::Quarantined,
            s if s < APPLIED => Self::Ignored,
            _ => Self::Applied,
        }
    }

    /// The stable lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Quarantined => "quarantined",
            Self::Ignored => "ignored",
            Self::Applied => "applied",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Received,
            Self::Failed,
            Self::Dead,
            Self::Quarantined,
            Self::Ignored,
            Self::Applied,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What the pipeline keeps with an event id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    next_at_ms: i64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    price: Option<String>,
}

/// An event as `alvryn events list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    /// `evt_...`.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's `created`, Unix seconds.
    pub created: i64,
    /// Where it is.
    pub status: EventStatus,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Next try (failed events), Unix milliseconds.
    pub next_at_ms: Option<i64>,
    /// The last failure.
    pub error: Option<String>,
    /// The unknown price (quarantined events).
    pub price: Option<String>,
    /// When it was received, Unix milliseconds.
    pub received_at_ms: i64,
}

/// What became of an event that was made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now.
    Applied,
    /// Received before (by another delivery): nothing done again.
    Duplicate,
    /// Older than the stored state: nothing changed.
    Stale,
    /// Its price is unknown; kept and listed.
    Quarantined,
    /// A type the pipeline does not act on; archived and acknowledged.
    Ignored,
    /// Applying failed; kept, and tried again by the worker.
    Failed,
    /// Applying failed too often; a dead letter.
    Dead,
}

impl Outcome {
    /// The stable lower-case name (the `outcome` label of
    /// `webhook_events_total`).
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Quarantined => "quarantined",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// A delivery that was made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// The event id.
    pub event_id: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// Why a delivery was refused. Only [`IngestError::Unavailable`] asks
/// Stripe to deliver again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The signature does not verify (answer 400).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A verified body that is not an event (answer 400, or 413 when too
    /// large).
    #[error(transparent)]
    Event(#[from] EventError),
    /// The event could not be made durable (answer 5xx).
    #[error("the event could not be stored: {0}")]
    Unavailable(String),
}

/// How the worker retries events that failed to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRetry {
    /// Attempts before an event is dead (at most 29).
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// How long an event may stay `received` (its delivery crashed before
    /// applying) before the worker applies it.
    pub received_grace: Duration,
}

impl Default for EventRetry {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(6 * 3600),
            received_grace: Duration::from_secs(60),
        }
    }
}

impl EventRetry {
    fn delay_ms(&self, attempts: u32) -> i64 {
        let d = super::doubling_delay(self.base_delay, attempts, self.max_delay);
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Counters of what the pipeline did since it started.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Deliveries made durable.
    pub received: AtomicU64,
    /// Deliveries of events received before.
    pub duplicates: AtomicU64,
    /// Events applied.
    pub applied: AtomicU64,
    /// Events found older than the stored state.
    pub stale: AtomicU64,
    /// Events quarantined.
    pub quarantined: AtomicU64,
    /// Events of types not acted on.
    pub ignored: AtomicU64,
    /// Failed attempts to apply.
    pub failures: AtomicU64,
    /// Events moved to the dead letters.
    pub dead: AtomicU64,
}

impl PipelineStats {
    fn count(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Applied => &self.applied,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Stale => &self.stale,
            Outcome::Quarantined => &self.quarantined,
            Outcome::Ignored => &self.ignored,
            Outcome::Failed => &self.failures,
            Outcome::Dead => &self.dead,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a pass of the worker, or a replay, did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Events looked at.
    pub seen: u64,
    /// Applied.
    pub applied: u64,
    /// Older than the stored state, or applied before.
    pub unchanged: u64,
    /// Quarantined.
    pub quarantined: u64,
    /// Ignored types.
    pub ignored: u64,
    /// Failed again.
    pub failed: u64,
    /// Not found in the archive.
    pub missing: u64,
    /// The ids (dry runs only: what would be replayed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// Which archived events to replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySelection {
    /// These events (empty: select by time instead).
    pub ids: Vec<String>,
    /// Received at or after, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// Received before, Unix milliseconds.
    pub until_ms: Option<i64>,
    /// Only events at this status (by time only).
    pub status: Option<EventStatus>,
}

/// The webhook pipeline.
pub struct WebhookPipeline {
    secrets: WebhookSecrets,
    tolerance: Duration,
    archive: Arc<dyn EventArchive>,
    store: Arc<dyn StoreBackend>,
    subscriptions: Subscriptions,
    retry: EventRetry,
    stats: PipelineStats,
}

impl fmt::Debug for WebhookPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookPipeline")
            .field("secrets", &self.secrets)
            .field("tolerance", &self.tolerance)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl fmt::Display) -> IngestError {
    IngestError::Unavailable(e.to_string())
}

impl WebhookPipeline {
    /// A pipeline verifying with `secrets` (tolerance
    /// [`webhook::DEFAULT_TOLERANCE`]), archiving to `archive`, recording
    /// in `store` and applying to `subscriptions`.
    #[must_use]
    pub fn new(
        secrets: WebhookSecrets,
        archive: Arc<dyn EventArchive>,
        store: Arc<dyn StoreBackend>,
        subscriptions: Subscriptions,
    ) -> Self {
        Self {
            secrets,
            tolerance: webhook::DEFAULT_TOLERANCE,
            archive,
            store,
            subscriptions,
            retry: EventRetry::default(),
            stats: PipelineStats::default(),
        }
    }

    /// Replaces the signature's timestamp tolerance.
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Replaces the retry policy (`max_attempts` is capped at 29).
    #[must_use]
    pub fn with_retry(mut self, mut retry: EventRetry) -> Self {
        retry.max_attempts = retry.max_attempts.clamp(1, MAX_ATTEMPTS);
        self.retry = retry;
        self
    }

    /// What the pipeline did since it started.
    #[must_use]
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// The store it records events in.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn StoreBackend> {
        &self.store
    }

    /// The subscriptions it applies to.
    #[must_use]
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// One delivery: `payload` exactly as received, `signature` the
    /// `Stripe-Signature` header. `Ok` means the event is durable:
    /// acknowledge it with a 2xx.
    ///
    /// # Errors
    /// [`IngestError`].
    pub async fn ingest(
        &self,
        payload: &[u8],
        signature: Option<&str>,
        now_ms: i64,
    ) -> Result<Ingested, IngestError> {
        let result = self.ingest_inner(payload, signature, now_ms).await;
        if let Err(e) = &result {
            let reason = match e {
                IngestError::Signature(_) => "signature",
                IngestError::Event(_) => "invalid_event",
                IngestError::Unavailable(_) => "unavailable",
            };
            metrics::counter!(crate::metrics::WEBHOOK_REJECTED, "reason" => reason).increment(1);
        }
        result
    }

    async fn ingest_inner(
        &self,
        payload: &[u8],
        signature: Option<&str>,
        now_ms: i64,
    ) -> Result<Ingested, IngestError> {
        webhook::verify(
            payload,
            signature,
            &self.secrets,
            self.tolerance,
            now_ms.div_euclid(1000),
        )?;
        let event = webhook::parse_event(payload)?;
        self.archive
            .archive(&RawEvent {
                id: event.id.clone(),
                created: event.created,
                body: payload.to_vec(),
            })
            .await
            .map_err(unavailable)?;
        let outcome = if self.record_received(&event, now_ms).await? {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            self.apply_recorded(&event, 0, now_ms).await
        } else {
            Outcome::Duplicate
        };
        self.count(&event.event_type, &outcome);
        Ok(Ingested {
            event_id: event.id,
            outcome,
        })
    }

    /// Counts an outcome in the stats and the metrics (the type label
    /// bounded to known types).
    fn count(&self, event_type: &str, outcome: &Outcome) {
        self.stats.count(outcome);
        metrics::counter!(
            crate::metrics::WEBHOOK_EVENTS,
            "type" => crate::metrics::event_type_label(event_type),
            "outcome" => outcome.as_str()
        )
        .increment(1);
    }

    /// Inserts the event's record; `false` when it was there already.
    async fn record_received(
        &self,
        event: &WebhookEvent,
        now_ms: i64,
    ) -> Result<bool, IngestError> {
        let meta = Meta {
            event_type: event.event_type.clone(),
            created: event.created,
            ..Meta::default()
        };
        let record = Record {
            ns: EVENT_NS.to_owned(),
            key: event.id.clone(),
            owner: None,
            status: RECEIVED,
            data: serde_json::to_vec(&meta).map_err(unavailable)?,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            expires_at_ms: None,
        };
        match self.store.insert_if_absent(&record).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Applies a recorded event and moves its record on; a failure is
    /// kept for the worker. `attempts`: failed attempts so far.
    async fn apply_recorded(&self, event: &WebhookEvent, attempts: u32, now_ms: i64) -> Outcome {
        let mut meta = Meta {
            event_type: event.event_type.clone(),
            created: event.created,
            attempts,
            ..Meta::default()
        };
        let (status, outcome) = match self.apply(event).await {
            Ok(Applied::Done(ApplyOutcome::Applied { .. })) => (APPLIED, Outcome::Applied),
            Ok(Applied::Done(ApplyOutcome::AlreadyApplied | ApplyOutcome::Stale)) => {
                (APPLIED, Outcome::Stale)
            }
            Ok(Applied::Done(ApplyOutcome::Quarantined { price })) => {
                tracing::warn!(
                    event_id = %event.id,
                    event_type = %event.event_type,
                    price = %price,
                    "event quarantined: its price is not in the price map (STRIPE_PRICE_MAP); \
                     fix the map, then `alvryn events replay`"
                );
                meta.price = Some(price);
                (QUARANTINED, Outcome::Quarantined)
            }
            Ok(Applied::Ignored) => (IGNORED, Outcome::Ignored),
            Err(e) => {
                meta.attempts = attempts + 1;
                meta.error = Some(e.to_string());
                meta.next_at_ms = now_ms.saturating_add(self.retry.delay_ms(meta.attempts));
                let dead = meta.attempts >= self.retry.max_attempts;
                tracing::warn!(
                    event_id = %event.id,
                    event_type = %event.event_type,
                    attempts = meta.attempts,
                    error = %e,
                    "{}",
                    if dead {
                        "applying the event failed too often; it is a dead letter now"
                    } else {
                        "applying the event failed; the worker will try again"
                    }
                );
                if dead {
                    (DEAD, Outcome::Dead)
                } else {
                    (FAILED_BASE + meta.attempts, Outcome::Failed)
                }
            }
        };
        let advance = Advance {
            ns: EVENT_NS.to_owned(),
            key: event.id.clone(),
            to: status,
            data: serde_json::to_vec(&meta).ok(),
            now_ms,
        };
        if let Err(e) = self.store.advance(&advance).await {
            // The state change (if any) is in; the record stays where it
            // was, and the worker applies it again, harmlessly.
            tracing::warn!(event_id = %event.id, error = %e, "could not record the event's outcome");
        }
        outcome
    }

    /// The state change an event asks for.
    async fn apply(&self, event: &WebhookEvent) -> Result<Applied, ApplyError> {
        let object = &event.data.object;
        let subs = &self.subscriptions;
        let sub = match event.event_type.as_str() {
            "checkout.session.completed" => {
                let session = match CheckoutCompleted::from_json(object) {
                    Ok(s) => s,
                    Err(e) => {
                        // Not a session this backend started (a Payment
                        // Link, another integration): nothing to apply.
                        tracing::warn!(event_id = %event.id, error = %e, "checkout session ignored");
                        return Ok(Applied::Ignored);
                    }
                };
                if let Some(customer) = &session.customer {
                    subs.link_customer(&session.user_id, customer).await?;
                }
                let Some(id) = session.subscription else {
                    return Ok(Applied::Ignored);
                };
                let sub = subs.billing().subscription(&id).await?;
                return subs
                    .apply(&session.user_id, &sub, event.created, &event.id)
                    .await
                    .map(Applied::Done);
            }
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted" => {
                Subscription::from_json(object).map_err(bad_object)?
            }
            "invoice.paid" | "invoice.payment_failed" => {
                let invoice = InvoiceRef::from_json(object).map_err(bad_object)?;
                let Some(id) = invoice.subscription else {
                    return Ok(Applied::Ignored);
                };
                // The invoice says a payment happened or failed; the
                // subscription as Stripe has it now says what that means.
                subs.billing().subscription(&id).await?
            }
            _ => return Ok(Applied::Ignored),
        };
        let user = subs.user_of(&sub).await?;
        subs.apply(&user, &sub, event.created, &event.id)
            .await
            .map(Applied::Done)
    }

    /// Applies what is due: events whose delivery crashed before applying
    /// (`received` for longer than the grace), and `failed` events whose
    /// next try has come. At most `limit` events per call.
    ///
    /// # Errors
    /// [`StoreError`] when the records cannot be listed.
    pub async fn retry_due(&self, now_ms: i64, limit: usize) -> Result<Report, StoreError> {
        let grace = i64::try_from(self.retry.received_grace.as_millis()).unwrap_or(i64::MAX);
        let mut report = Report::default();
        // Status by status (`received`, then each `failed` attempt), page
        // by page in the status index's order: events not due yet (a
        // later try, a delivery still in its grace) do not hide those
        // behind them, and each page costs its own size.
        let mut due = Vec::new();
        for status in std::iter::once(RECEIVED).chain(FAILED_BASE + 1..DEAD) {
            let mut after = None;
            while due.len() < limit {
                let filter = RecordFilter {
                    status: Some(status.into()),
                    limit,
                    after: after.take(),
                    ..RecordFilter::default()
                };
                let page = self.store.records(EVENT_NS, &filter, now_ms).await?;
                let full = page.len() == limit;
                after = page.last().map(RecordCursor::of);
                for r in page {
                    let Ok(meta) = serde_json::from_slice::<Meta>(&r.data) else {
                        continue;
                    };
                    let ready = if status == RECEIVED {
                        r.updated_at_ms.saturating_add(grace) <= now_ms
                    } else {
                        meta.next_at_ms <= now_ms
                    };
                    if ready && due.len() < limit {
                        due.push((r.key, meta));
                    }
                }
                if !full {
                    break;
                }
            }
        }
        for (id, meta) in due {
            report.seen += 1;
            self.reapply(&id, &meta, now_ms, &mut report).await;
        }
        Ok(report)
    }

    /// Fetches an event from the archive and applies it again.
    async fn reapply(&self, id: &str, meta: &Meta, now_ms: i64, report: &mut Report) {
        let key = EventKey::new(id, meta.created);
        let event = match self.archive.retrieve(&key).await {
            Ok(Some(body)) => match webhook::parse_event(&body) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(event_id = %id, error = %e, "an archived event no longer parses");
                    self.bury(id, meta, "the archived event no longer parses", now_ms)
                        .await;
                    report.missing += 1;
                    return;
                }
            },
            Ok(None) => {
                tracing::warn!(event_id = %id, "the event is not in the archive");
                self.bury(id, meta, "the event is not in the archive", now_ms)
                    .await;
                report.missing += 1;
                return;
            }
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "the archive is unavailable");
                report.failed += 1;
                return;
            }
        };
        let outcome = self.apply_recorded(&event, meta.attempts, now_ms).await;
        self.count(&event.event_type, &outcome);
        match outcome {
            Outcome::Applied => report.applied += 1,
            Outcome::Stale | Outcome::Duplicate => report.unchanged += 1,
            Outcome::Quarantined => report.quarantined += 1,
            Outcome::Ignored => report.ignored += 1,
            Outcome::Failed | Outcome::Dead => report.failed += 1,
        }
    }

    /// Moves an event the worker cannot apply (its body is gone) to the
    /// dead letters, so it stops taking a place in every retry pass; a
    /// replay still applies it if the body comes back.
    async fn bury(&self, id: &str, meta: &Meta, why: &str, now_ms: i64) {
        let meta = Meta {
            error: Some(why.to_owned()),
            ..meta.clone()
        };
        let advance = Advance {
            ns: EVENT_NS.to_owned(),
            key: id.to_owned(),
            to: DEAD,
            data: serde_json::to_vec(&meta).ok(),
            now_ms,
        };
        if let Err(e) = self.store.advance(&advance).await {
            tracing::warn!(event_id = %id, error = %e, "could not record the event as a dead letter");
        }
    }

    /// Re-applies archived events (from S3 or the database), for recovery
    /// beyond Stripe's retry window. Idempotent: an event applied before
    /// changes nothing. With `dry_run`, only lists what it would replay.
    ///
    /// # Errors
    /// [`StoreError`] when the archive's records cannot be listed.
    pub async fn replay(
        &self,
        selection: &ReplaySelection,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<Report, StoreError> {
        let mut report = Report::default();
        // With the time it was archived when selected by time; looked up
        // when selected by id.
        let targets: Vec<(String, Option<i64>)> = if selection.ids.is_empty() {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = self
                    .store
                    .records(
                        ARCHIVE_NS,
                        &RecordFilter {
                            limit: 500,
                            after: after.clone(),
                            ..RecordFilter::default()
                        },
                        now_ms,
                    )
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(RecordCursor::of(last));
                for r in page {
                    let in_range = selection.since_ms.is_none_or(|s| r.created_at_ms >= s)
                        && selection.until_ms.is_none_or(|u| r.created_at_ms < u);
                    if in_range {
                        out.push((r.key, Some(r.created_at_ms)));
                    }
                }
            }
            out
        } else {
            let unique: BTreeSet<&String> = selection.ids.iter().collect();
            unique.into_iter().map(|id| (id.clone(), None)).collect()
        };
        for (id, received_ms) in targets {
            let existing = self.store.record(EVENT_NS, &id, now_ms).await?;
            let meta = existing
                .as_ref()
                .and_then(|r| serde_json::from_slice::<Meta>(&r.data).ok());
            if let Some(want) = selection.status
                && existing.as_ref().map(|r| EventStatus::of(r.status)) != Some(want)
            {
                continue;
            }
            report.seen += 1;
            if dry_run {
                report.ids.push(id);
                continue;
            }
            let meta = match meta {
                Some(m) => m,
                None => {
                    // Archived, never recorded (its delivery failed after
                    // archiving): record it now, dated by the archive.
                    let Some(event) = self.fetch(&id, 0, &mut report).await else {
                        continue;
                    };
                    let received_ms = match received_ms {
                        Some(ms) => ms,
                        None => self
                            .store
                            .record(ARCHIVE_NS, &id, now_ms)
                            .await?
                            .map_or(now_ms, |r| r.created_at_ms),
                    };
                    if let Err(e) = self.record_received(&event, received_ms).await {
                        tracing::warn!(event_id = %id, error = %e, "could not record the event");
                        report.failed += 1;
                        continue;
                    }
                    Meta {
                        event_type: event.event_type,
                        created: event.created,
                        ..Meta::default()
                    }
                }
            };
            self.reapply(&id, &meta, now_ms, &mut report).await;
        }
        Ok(report)
    }

    async fn fetch(&self, id: &str, created: i64, report: &mut Report) -> Option<WebhookEvent> {
        let key = EventKey::new(id, created);
        match self.archive.retrieve(&key).await {
            Ok(Some(body)) => webhook::parse_event(&body).ok().or_else(|| {
                report.missing += 1;
                None
            }),
            Ok(None) => {
                report.missing += 1;
                None
            }
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "the archive is unavailable");
                report.failed += 1;
                None
            }
        }
    }

    /// Recorded events, oldest first, optionally only those at `status`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn list(
        &self,
        status: Option<EventStatus>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let statuses = status.map(|s| match s {
            EventStatus::Received => StatusRange::from(RECEIVED),
            EventStatus::Failed => StatusRange::new(FAILED_BASE + 1, DEAD - 1),
            EventStatus::Dead => DEAD.into(),
            EventStatus::Quarantined => QUARANTINED.into(),
            EventStatus::Ignored => IGNORED.into(),
            EventStatus::Applied => APPLIED.into(),
        });
        let filter = RecordFilter {
            status: statuses,
            limit,
            ..RecordFilter::default()
        };
        let records = self.store.records(EVENT_NS, &filter, now_ms).await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let meta: Meta = serde_json::from_slice(&r.data).unwrap_or_default();
                let status = EventStatus::of(r.status);
                EventSummary {
                    id: r.key,
                    event_type: meta.event_type,
                    created: meta.created,
                    status,
                    attempts: meta.attempts,
                    next_at_ms: (status == EventStatus::Failed).then_some(meta.next_at_ms),
                    error: meta.error,
                    price: meta.price,
                    received_at_ms: r.created_at_ms,
                }
            })
            .collect())
    }
}

/// What [`WebhookPipeline::apply`] did.
enum Applied {
    Done(ApplyOutcome),
    Ignored,
}

/// A verified event whose object lacks what its type needs: retrying will
/// not help, but it is kept (as failed, then dead) rather than dropped.
fn bad_object(e: super::subscription::ObjectError) -> ApplyError {
    ApplyError::Billing(super::BillingError::InvalidResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_ordered_and_named() {
        assert_eq!(EventStatus::of(RECEIVED), EventStatus::Received);
        assert_eq!(EventStatus::of(FAILED_BASE + 1), EventStatus::Failed);
        assert_eq!(
            EventStatus::of(FAILED_BASE + MAX_ATTEMPTS),
            EventStatus::Failed
        );
        assert_eq!(EventStatus::of(DEAD), EventStatus::Dead);
        assert_eq!(EventStatus::of(QUARANTINED), EventStatus::Quarantined);
        assert_eq!(EventStatus::of(IGNORED), EventStatus::Ignored);
        assert_eq!(EventStatus::of(APPLIED), EventStatus::Applied);
        for s in [
            "received",
            "failed",
            "dead",
            "quarantined",
            "ignored",
            "applied",
        ] {
            assert_eq!(EventStatus::parse(s).map(EventStatus::as_str), Some(s));
        }
        assert_eq!(EventStatus::parse("done"), None);
    }

    #[test]
    fn retry_delays_double_and_cap() {
        let p = EventRetry::default();
        assert_eq!(p.delay_ms(1), 30_000);
        assert_eq!(p.delay_ms(2), 60_000);
        assert_eq!(p.delay_ms(30), 6 * 3600 * 1000);
    }
}
