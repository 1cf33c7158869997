//! The webhook pipeline end to end: Stripe's fixture objects in Stripe's
//! fixture event envelope, signed by Stripe's own library (see
//! `stripe_support`), ingested, retried, replayed and listed, on the
//! embedded store over a real SQLite file and, where cheap, on the memory
//! store.
//!
//! The payment provider is `FakeBilling`, a small in-memory `Billing`
//! that answers with the subscriptions a test sets, records what it was
//! asked and can be switched off; the Stripe client itself is tested
//! elsewhere. Store outages are injected by `Faulty`, a layer over the
//! store's own `tower::Service` view.
//!
//! Time is the harness's clock (`Harness::now_ms`), moved by the tests:
//! nothing here waits on or measures wall time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stripe_support;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use alvryn_core::billing::archive::ARCHIVE_NS;
use alvryn_core::billing::pipeline::EVENT_NS;
use alvryn_core::billing::state::{BILLING_STATE_NS, PLAN_CHANGED};
use alvryn_core::billing::{
    Billing, BillingError, CheckoutRequest, DatabaseArchive, EventArchive, EventError, EventKey,
    EventRetry, EventStatus, EventSummary, HostedSession, IngestError, Ingested, NewCustomer,
    Outcome, PlanView, PortalRequest, PriceMap, ReplaySelection, Report, SignatureError,
    Subscription, Subscriptions, WebhookPipeline, WebhookSecrets,
};
use alvryn_core::store::service::{GetVersioned, InsertIfAbsent, Operation};
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::store::{
    MemoryStore, Record, RecordFilter, ServiceStore, StoreBackend, StoreService,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use stripe_support::{OTHER_SECRET, SECRET, envelope, now, req, resource, sign_all, signer};
use tempfile::TempDir;
use tokio::sync::{Barrier, Notify};

/// The price map of a deployment that sells `pro` and `team`.
const PRICES: &str = "price_pro:pro,price_team:team";
const PRO: &str = "price_pro";
const TEAM: &str = "price_team";
/// A price the map above does not know.
const ENTERPRISE: &str = "price_enterprise";

const USER: &str = "user_7f3a";
const CUSTOMER: &str = "cus_Alvryn7f3a";
const SUB: &str = "sub_1AlvrynFirst";
const SUB2: &str = "sub_1AlvrynSecond";
/// Stripe's `created` of the first event of a scenario, Unix seconds.
const T: i64 = 1_750_000_000;

/// How every harness retries: three attempts, a second after the first
/// failure, five seconds' grace for a delivery that stopped halfway.
fn retry() -> EventRetry {
    EventRetry {
        max_attempts: 3,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        received_grace: Duration::from_secs(5),
    }
}

// ---------------------------------------------------------------------------
// Event bodies: Stripe's fixtures with only what a scenario needs changed.

/// Stripe's `event` fixture around `object`, pretty-printed as Stripe
/// sends it.
fn event(id: &str, event_type: &str, created: i64, object: Value) -> String {
    serde_json::to_string_pretty(&envelope(id, event_type, created, object)).unwrap()
}

/// Stripe's subscription fixture as `id`, of `CUSTOMER`, for `USER` (the
/// metadata our Checkout sets), at `status`, on `price`.
fn subscription(id: &str, status: &str, price: &str) -> Value {
    let mut s = resource("subscription");
    s["id"] = json!(id);
    s["customer"] = json!(CUSTOMER);
    s["status"] = json!(status);
    s["metadata"] = json!({ "alvryn_user_id": USER });
    s["items"]["data"][0]["price"]["id"] = json!(price);
    s["items"]["data"][0]["subscription"] = json!(id);
    s
}

/// Stripe's Checkout Session fixture, completed by `USER` as `CUSTOMER`,
/// starting `subscription`.
fn checkout_session(subscription: &str) -> Value {
    let mut s = resource("checkout.session");
    s["mode"] = json!("subscription");
    s["status"] = json!("complete");
    s["payment_status"] = json!("paid");
    s["client_reference_id"] = json!(USER);
    s["metadata"] = json!({ "alvryn_user_id": USER });
    s["customer"] = json!(CUSTOMER);
    s["subscription"] = json!(subscription);
    s
}

/// Stripe's invoice fixture, of `CUSTOMER`, billing `subscription` (the
/// current API's shape: `parent.subscription_details`).
fn invoice(subscription: &str, status: &str) -> Value {
    let mut i = resource("invoice");
    i["customer"] = json!(CUSTOMER);
    i["status"] = json!(status);
    i["parent"]["type"] = json!("subscription_details");
    i["parent"]["quote_details"] = json!(null);
    i["parent"]["subscription_details"]["subscription"] = json!(subscription);
    i
}

// ---------------------------------------------------------------------------
// The payment provider.

/// A `Billing` that answers `subscription(id)` with what the test set,
/// records every such call, and fails with `Unavailable` while down.
#[derive(Default)]
struct FakeBilling {
    subscriptions: Mutex<HashMap<String, Subscription>>,
    fetched: Mutex<Vec<String>>,
    down: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeBilling {
    /// Stripe has `object` (a subscription fixture) now.
    fn set(&self, object: &Value) {
        let sub = Subscription::from_json(object).unwrap();
        lock(&self.subscriptions).insert(sub.id.clone(), sub);
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many times `subscription(id)` was asked for.
    fn fetches(&self, id: &str) -> usize {
        lock(&self.fetched).iter().filter(|f| *f == id).count()
    }
}

#[async_trait]
impl Billing for FakeBilling {
    async fn create_customer(&self, _: &NewCustomer) -> Result<String, BillingError> {
        unreachable!("the webhook pipeline never creates customers")
    }

    async fn create_checkout_session(
        &self,
        _: &CheckoutRequest,
    ) -> Result<HostedSession, BillingError> {
        unreachable!("the webhook pipeline never starts a checkout")
    }

    async fn create_portal_session(
        &self,
        _: &PortalRequest,
    ) -> Result<HostedSession, BillingError> {
        unreachable!("the webhook pipeline never opens the portal")
    }

    async fn subscription(&self, id: &str) -> Result<Subscription, BillingError> {
        lock(&self.fetched).push(id.to_owned());
        if self.down.load(Ordering::SeqCst) {
            return Err(BillingError::Unavailable("connection refused".into()));
        }
        lock(&self.subscriptions)
            .get(id)
            .cloned()
            .ok_or_else(|| BillingError::Stripe {
                status: 404,
                kind: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                message: format!("No such subscription: '{id}'"),
            })
    }
}

// ---------------------------------------------------------------------------
// Store outages, injected as a layer over the store's service view.

/// What the store should get wrong.
#[derive(Default)]
struct Faults {
    /// Inserts into this record namespace fail: the store is down.
    refuse_inserts_into: Mutex<Option<&'static str>>,
    /// Reads of a user's billing state never answer (the process stops
    /// there); the notify fires when one is asked for.
    stall_state_reads: Mutex<Option<Arc<Notify>>>,
}

impl Faults {
    fn refuse_inserts_into(&self, ns: Option<&'static str>) {
        *lock(&self.refuse_inserts_into) = ns;
    }

    /// Stalls every later read of billing state; the notify says one came.
    fn stall_state_reads(&self) -> Arc<Notify> {
        let reached = Arc::new(Notify::new());
        *lock(&self.stall_state_reads) = Some(Arc::clone(&reached));
        reached
    }
}

type OpFuture<R> = Pin<
    Box<dyn Future<Output = Result<<R as Operation>::Response, <R as Operation>::Error>> + Send>,
>;

/// Passes every store operation through, except those `Faults` names.
#[derive(Clone)]
struct Faulty<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<R, S> tower::Service<R> for Faulty<S>
where
    R: Operation,
    S: tower::Service<R, Response = R::Response, Error = R::Error>,
    S::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = OpFuture<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> OpFuture<R> {
        let op: &dyn Any = &request;
        if let Some(insert) = op.downcast_ref::<InsertIfAbsent>()
            && *lock(&self.faults.refuse_inserts_into) == Some(insert.record.ns.as_str())
        {
            return Box::pin(async { Err(R::layer_error("injected: the store is down".into())) });
        }
        if let Some(read) = op.downcast_ref::<GetVersioned>()
            && read.ns == BILLING_STATE_NS
            && let Some(reached) = lock(&self.faults.stall_state_reads).clone()
        {
            reached.notify_one();
            return Box::pin(std::future::pending());
        }
        Box::pin(self.inner.call(request))
    }
}

// ---------------------------------------------------------------------------
// The harness.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Memory,
}

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Memory];

/// A pipeline over one store (wrapped in `Faulty`), one `FakeBilling`,
/// a database archive and the test's clock.
struct Harness {
    signer: String,
    backend: Backend,
    dir: TempDir,
    faults: Arc<Faults>,
    store: Arc<dyn StoreBackend>,
    billing: Arc<FakeBilling>,
    pipeline: Arc<WebhookPipeline>,
    /// When deliveries are signed, Unix seconds.
    signed_at: i64,
    /// The clock handed to the pipeline, Unix milliseconds.
    clock: AtomicI64,
}

async fn open_store(backend: Backend, dir: &Path) -> Arc<dyn StoreBackend> {
    match backend {
        Backend::Sqlite => Arc::new(SqliteStore::open(dir.join("alvryn.db")).await.unwrap()),
        Backend::Memory => Arc::new(MemoryStore::new()),
    }
}

/// A pipeline over `store` with `billing`, a database archive in the same
/// store, the price map `prices` and the test's retry policy.
fn pipeline(
    store: &Arc<dyn StoreBackend>,
    billing: &Arc<FakeBilling>,
    prices: &str,
) -> WebhookPipeline {
    let billing: Arc<dyn Billing> = billing.clone();
    let subscriptions = Subscriptions::new(
        Arc::clone(store),
        billing,
        PriceMap::parse_pairs(prices).unwrap(),
    );
    WebhookPipeline::new(
        WebhookSecrets::parse(SECRET).unwrap(),
        Arc::new(DatabaseArchive::new(Arc::clone(store))),
        Arc::clone(store),
        subscriptions,
    )
    .with_retry(retry())
}

impl Harness {
    /// `None` (the test skips) without Stripe's signing library.
    async fn new(backend: Backend) -> Option<Self> {
        let signer = signer()?;
        let dir = tempfile::tempdir().unwrap();
        Some(Self::over(signer, backend, dir, Arc::default(), now() * 1000).await)
    }

    async fn over(
        signer: String,
        backend: Backend,
        dir: TempDir,
        billing: Arc<FakeBilling>,
        now_ms: i64,
    ) -> Self {
        let faults = Arc::new(Faults::default());
        let store: Arc<dyn StoreBackend> = Arc::new(ServiceStore::new(Faulty {
            inner: StoreService::from_arc(open_store(backend, dir.path()).await),
            faults: Arc::clone(&faults),
        }));
        Self {
            pipeline: Arc::new(pipeline(&store, &billing, PRICES)),
            signer,
            backend,
            dir,
            faults,
            store,
            billing,
            signed_at: now_ms.div_euclid(1000),
            clock: AtomicI64::new(now_ms),
        }
    }

    /// The process stops and starts again on the same SQLite file: only
    /// what is on disk survives (the provider and the clock go on).
    async fn restart(self) -> Self {
        assert_eq!(self.backend, Backend::Sqlite, "only a file survives");
        let Self {
            signer,
            backend,
            dir,
            faults,
            store,
            billing,
            pipeline,
            signed_at: _,
            clock,
        } = self;
        drop((pipeline, store, faults));
        Self::over(signer, backend, dir, billing, clock.into_inner()).await
    }

    /// Another pipeline over the same store, provider and archive, with
    /// the price map `prices`.
    fn pipeline_with(&self, prices: &str) -> WebhookPipeline {
        pipeline(&self.store, &self.billing, prices)
    }

    fn archive(&self) -> DatabaseArchive {
        DatabaseArchive::new(Arc::clone(&self.store))
    }

    fn now_ms(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap();
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// Stripe-Signature headers for `bodies`, made by Stripe's library
    /// with the endpoint's secret.
    fn sign<B: AsRef<str>>(&self, bodies: &[B]) -> Vec<String> {
        let requests: Vec<_> = bodies
            .iter()
            .map(|b| req(b.as_ref(), SECRET, self.signed_at))
            .collect();
        sign_all(&self.signer, &requests)
    }

    async fn ingest(&self, body: &str, header: &str) -> Result<Ingested, IngestError> {
        self.pipeline
            .ingest(body.as_bytes(), Some(header), self.now_ms())
            .await
    }

    /// Signs `bodies`, delivers them in order, and returns what became
    /// of each.
    async fn deliver<B: AsRef<str>>(&self, bodies: &[B]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (body, header) in bodies.iter().zip(self.sign(bodies)) {
            outcomes.push(self.ingest(body.as_ref(), &header).await.unwrap().outcome);
        }
        outcomes
    }

    async fn view(&self) -> PlanView {
        self.pipeline.subscriptions().view(USER).await.unwrap()
    }

    /// How many `billing_plan_changed` audit events the user has.
    async fn plan_changes(&self) -> usize {
        let events = self.store.audit_events(USER).await.unwrap();
        events.iter().filter(|e| e.kind == PLAN_CHANGED).count()
    }

    async fn listed(&self, status: Option<EventStatus>) -> Vec<EventSummary> {
        self.pipeline.list(status, 0, self.now_ms()).await.unwrap()
    }

    /// The live records of a namespace, as stored.
    async fn records(&self, ns: &str) -> Vec<Record> {
        let all = RecordFilter::default();
        self.store.records(ns, &all, self.now_ms()).await.unwrap()
    }

    async fn retry_due(&self) -> Report {
        self.pipeline.retry_due(self.now_ms(), 100).await.unwrap()
    }
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

fn ids(events: &[EventSummary]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn only(id: &str) -> ReplaySelection {
    ReplaySelection {
        ids: vec![id.to_owned()],
        ..ReplaySelection::default()
    }
}

// ---------------------------------------------------------------------------
// a) Exactly once under concurrent deliveries.

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn one_event_delivered_a_hundred_times_at_once_is_applied_once() {
    for backend in BACKENDS {
        let Some(h) = Harness::new(backend).await else {
            return;
        };
        let body: Arc<str> = event(
            "evt_1AlvrynConcurrent",
            "customer.subscription.created",
            T,
            subscription(SUB, "active", PRO),
        )
        .into();
        let header: Arc<str> = h.sign(&[&body]).remove(0).into();
        let start = Arc::new(Barrier::new(100));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (pipeline, body, header) = (h.pipeline.clone(), body.clone(), header.clone());
            let (start, now_ms) = (start.clone(), h.now_ms());
            tasks.spawn(async move {
                start.wait().await;
                pipeline
                    .ingest(body.as_bytes(), Some(&header), now_ms)
                    .await
            });
        }
        let outcomes: Vec<Outcome> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|r| r.unwrap().outcome)
            .collect();

        let of = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
        assert_eq!(of(Outcome::Applied), 1, "{backend:?}: {outcomes:?}");
        assert_eq!(of(Outcome::Duplicate), 99, "{backend:?}: {outcomes:?}");
        assert_eq!(h.plan_changes().await, 1, "{backend:?}");
        let stats = h.pipeline.stats();
        assert_eq!(count(&stats.applied), 1, "{backend:?}");
        assert_eq!(count(&stats.received), 1, "{backend:?}");
        assert_eq!(count(&stats.duplicates), 99, "{backend:?}");
        let view = h.view().await;
        assert_eq!(view.plan.as_str(), "pro", "{backend:?}");
        assert_eq!(view.status.as_deref(), Some("active"), "{backend:?}");
        assert_eq!(view.subscription.as_deref(), Some(SUB), "{backend:?}");
        let listed = h.listed(None).await;
        assert_eq!(ids(&listed), ["evt_1AlvrynConcurrent"], "{backend:?}");
        assert_eq!(listed[0].status, EventStatus::Applied, "{backend:?}");
    }
}

// ---------------------------------------------------------------------------
// b) c) Ordering.

#[tokio::test]
async fn a_newer_update_delivered_first_is_not_undone_by_the_older_creation() {
    for backend in BACKENDS {
        let Some(h) = Harness::new(backend).await else {
            return;
        };
        let updated = event(
            "evt_1AlvrynUpdated",
            "customer.subscription.updated",
            T + 10,
            subscription(SUB, "past_due", TEAM),
        );
        let created = event(
            "evt_1AlvrynCreated",
            "customer.subscription.created",
            T,
            subscription(SUB, "active", PRO),
        );

        let outcomes = h.deliver(&[&updated, &created]).await;

        assert_eq!(outcomes, [Outcome::Applied, Outcome::Stale], "{backend:?}");
        let view = h.view().await;
        assert_eq!(view.plan.as_str(), "team", "{backend:?}");
        assert_eq!(view.status.as_deref(), Some("past_due"), "{backend:?}");
        let mut listed = h.listed(Some(EventStatus::Applied)).await;
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            ids(&listed),
            ["evt_1AlvrynCreated", "evt_1AlvrynUpdated"],
            "{backend:?}"
        );
        assert_eq!(h.listed(None).await.len(), 2, "{backend:?}");
        assert_eq!(count(&h.pipeline.stats().stale), 1, "{backend:?}");
        assert_eq!(h.billing.fetches(SUB), 0, "no tie, no fetch ({backend:?})");
    }
}

#[tokio::test]
async fn a_same_second_tie_is_settled_by_reading_the_subscription_from_stripe() {
    for backend in BACKENDS {
        let Some(h) = Harness::new(backend).await else {
            return;
        };
        let first = event(
            "evt_1AlvrynTieA",
            "customer.subscription.created",
            T,
            subscription(SUB, "active", PRO),
        );
        // Another event of the same second, saying something else again.
        let second = event(
            "evt_1AlvrynTieB",
            "customer.subscription.updated",
            T,
            subscription(SUB, "past_due", PRO),
        );
        // What Stripe says now.
        h.billing.set(&subscription(SUB, "active", TEAM));
        let headers = h.sign(&[&first, &second]);

        let a = h.ingest(&first, &headers[0]).await.unwrap();
        assert_eq!(a.outcome, Outcome::Applied, "{backend:?}");
        assert_eq!(h.billing.fetches(SUB), 0, "{backend:?}");
        let b = h.ingest(&second, &headers[1]).await.unwrap();
        assert_eq!(b.outcome, Outcome::Applied, "{backend:?}");
        assert_eq!(h.billing.fetches(SUB), 1, "{backend:?}");

        let view = h.view().await;
        assert_eq!(
            view.plan.as_str(),
            "team",
            "Stripe's state wins ({backend:?})"
        );
        assert_eq!(view.status.as_deref(), Some("active"), "{backend:?}");
        // Delivered again: a duplicate, and no second fetch.
        let again = h.ingest(&second, &headers[1]).await.unwrap();
        assert_eq!(again.outcome, Outcome::Duplicate, "{backend:?}");
        assert_eq!(h.billing.fetches(SUB), 1, "{backend:?}");
    }
}

// ---------------------------------------------------------------------------
// d) Quarantine.

#[tokio::test]
async fn an_unknown_price_is_quarantined_until_the_price_map_knows_it() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let pro = event(
        "evt_1AlvrynPro",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", PRO),
    );
    // A newer subscription on a price nobody put in the map.
    let mut newer = subscription(SUB2, "active", ENTERPRISE);
    newer["created"] = json!(T + 5);
    let unknown = event(
        "evt_1AlvrynEnterprise",
        "customer.subscription.created",
        T + 5,
        newer,
    );

    let outcomes = h.deliver(&[&pro, &unknown]).await;

    assert_eq!(outcomes, [Outcome::Applied, Outcome::Quarantined]);
    let quarantined = h.listed(Some(EventStatus::Quarantined)).await;
    assert_eq!(ids(&quarantined), ["evt_1AlvrynEnterprise"]);
    assert_eq!(quarantined[0].price.as_deref(), Some(ENTERPRISE));
    assert_eq!(count(&h.pipeline.stats().quarantined), 1);
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "pro", "never a default plan");
    assert_eq!(view.subscription.as_deref(), Some(SUB));
    assert_eq!(h.plan_changes().await, 1);

    // The operator adds the price and replays the event.
    let fixed = h.pipeline_with(&format!("{PRICES},{ENTERPRISE}:enterprise"));
    let selection = only("evt_1AlvrynEnterprise");
    let dry = fixed.replay(&selection, true, h.now_ms()).await.unwrap();
    assert_eq!(dry.ids, ["evt_1AlvrynEnterprise"]);
    assert_eq!((dry.seen, dry.applied), (1, 0));
    assert_eq!(
        h.view().await.plan.as_str(),
        "pro",
        "a dry run changes nothing"
    );
    assert_eq!(h.listed(Some(EventStatus::Quarantined)).await.len(), 1);

    let real = fixed.replay(&selection, false, h.now_ms()).await.unwrap();
    assert_eq!((real.seen, real.applied), (1, 1), "{real:?}");
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "enterprise");
    assert_eq!(view.subscription.as_deref(), Some(SUB2));
    assert!(h.listed(Some(EventStatus::Quarantined)).await.is_empty());
    let applied = h.listed(Some(EventStatus::Applied)).await;
    assert!(ids(&applied).contains(&"evt_1AlvrynEnterprise"));
    // Replaying again changes nothing.
    let again = fixed.replay(&selection, false, h.now_ms()).await.unwrap();
    assert_eq!((again.applied, again.unchanged), (0, 1), "{again:?}");
    assert_eq!(h.plan_changes().await, 2);
}

// ---------------------------------------------------------------------------
// e) Failures to apply: retries and dead letters.

#[tokio::test]
async fn an_event_that_failed_to_apply_is_retried_when_due() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    h.billing.set(&subscription(SUB, "active", PRO));
    h.billing.set_down(true);
    let completed = event(
        "evt_1AlvrynCheckout",
        "checkout.session.completed",
        T,
        checkout_session(SUB),
    );

    assert_eq!(h.deliver(&[&completed]).await, [Outcome::Failed]);

    let failed = h.listed(Some(EventStatus::Failed)).await;
    assert_eq!(ids(&failed), ["evt_1AlvrynCheckout"]);
    assert_eq!(failed[0].attempts, 1);
    let error = failed[0].error.as_deref().unwrap();
    assert!(error.contains("unavailable"), "{error}");
    let next_at = failed[0].next_at_ms.unwrap();
    assert_eq!(next_at, h.now_ms() + 1000, "the policy's first delay");
    assert_eq!(h.view().await.plan.as_str(), "free");

    // Stripe is back, but the event is not due yet.
    h.billing.set_down(false);
    h.advance(Duration::from_millis(999));
    assert_eq!(h.retry_due().await.seen, 0);
    assert_eq!(h.billing.fetches(SUB), 1, "not tried before its time");

    h.advance(Duration::from_millis(1));
    let report = h.retry_due().await;
    assert_eq!((report.seen, report.applied), (1, 1), "{report:?}");
    assert_eq!(h.view().await.plan.as_str(), "pro");
    let subscriptions = h.pipeline.subscriptions();
    assert_eq!(
        subscriptions.user_of_customer(CUSTOMER).await.unwrap(),
        Some(USER.to_owned())
    );
    assert_eq!(
        subscriptions.customer_of(USER).await.unwrap(),
        Some(CUSTOMER.to_owned())
    );
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Applied)).await),
        ["evt_1AlvrynCheckout"]
    );
    assert_eq!(h.retry_due().await.seen, 0, "nothing left to do");
}

/// A user who subscribes and cancels again and again: the state keeps
/// the newest endings only, a late event about a forgotten one is stale,
/// and a new subscription still applies.
#[tokio::test]
async fn a_user_with_many_ended_subscriptions_keeps_a_small_state() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let ended: Vec<String> = (0..40_i64)
        .map(|i| {
            event(
                &format!("evt_1AlvrynEnded{i:02}"),
                "customer.subscription.deleted",
                T + i,
                subscription(&format!("sub_1AlvrynEnded{i:02}"), "canceled", PRO),
            )
        })
        .collect();
    let outcomes = h.deliver(&ended).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let stored = h
        .store
        .versioned(BILLING_STATE_NS, USER)
        .await
        .unwrap()
        .unwrap();
    let kept = String::from_utf8(stored.data).unwrap();
    assert!(!kept.contains("sub_1AlvrynEnded00"), "{kept}");
    assert!(kept.contains("sub_1AlvrynEnded39"), "{kept}");
    // The one `/billing/subscription` shows (the newest), and the 16
    // others that ended last.
    assert_eq!(kept.matches("sub_1AlvrynEnded").count(), 17, "{kept}");

    // A late update of a forgotten subscription, from before it ended,
    // would make it active again: Stripe says it has ended, so stale.
    h.billing
        .set(&subscription("sub_1AlvrynEnded05", "canceled", PRO));
    let late = event(
        "evt_1AlvrynLateRevival",
        "customer.subscription.updated",
        T + 3,
        subscription("sub_1AlvrynEnded05", "active", PRO),
    );
    assert_eq!(h.deliver(&[&late]).await, [Outcome::Stale]);
    assert_eq!(h.view().await.plan.as_str(), "free");
    assert_eq!(h.billing.fetches("sub_1AlvrynEnded05"), 1);

    // A new subscription whose creation is delivered as late: Stripe
    // says it is live, so it applies.
    h.billing.set(&subscription(SUB, "active", PRO));
    let new_but_late = event(
        "evt_1AlvrynNewButLate",
        "customer.subscription.created",
        T + 4,
        subscription(SUB, "active", PRO),
    );
    assert_eq!(h.deliver(&[&new_but_late]).await, [Outcome::Applied]);
    assert_eq!(h.view().await.plan.as_str(), "pro");

    let new = event(
        "evt_1AlvrynComeBack",
        "customer.subscription.created",
        T + 100,
        subscription(SUB2, "active", TEAM),
    );
    assert_eq!(h.deliver(&[&new]).await, [Outcome::Applied]);
    assert_eq!(h.billing.fetches(SUB2), 0, "newer than what was forgotten");
    assert_eq!(h.view().await.plan.as_str(), "team");
}

/// Events not due yet, received before one that is and at the same
/// status, do not hide it from a retry pass smaller than they are.
#[tokio::test]
async fn a_due_event_behind_events_not_yet_due_is_retried() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    h.billing.set(&subscription(SUB, "active", PRO));
    let completed = |id: &str| event(id, "checkout.session.completed", T, checkout_session(SUB));
    // Three deliveries recorded, then cut off before applying: they stay
    // `received` until the worker's grace has passed.
    let early: Vec<String> = (1..=3)
        .map(|i| completed(&format!("evt_1AlvrynEarly{i}")))
        .collect();
    let reached = h.faults.stall_state_reads();
    for (body, header) in early.iter().zip(h.sign(&early)) {
        tokio::select! {
            done = h.ingest(body, &header) => panic!("the delivery finished: {done:?}"),
            () = reached.notified() => {}
        }
    }
    let h = h.restart().await;
    let grace = retry().received_grace;

    // Stripe goes down; a later delivery fails at once, its first retry
    // due in 1 s, before the grace of the early ones ends.
    h.billing.set_down(true);
    h.advance(grace - Duration::from_millis(500));
    assert_eq!(
        h.deliver(&[completed("evt_1AlvrynLate")]).await,
        [Outcome::Failed]
    );
    // The grace ends: the early ones are tried, fail, and wait 1 s too,
    // now behind the late one's time but ahead of it in the listing.
    h.advance(Duration::from_millis(500));
    let report = h.pipeline.retry_due(h.now_ms(), 10).await.unwrap();
    assert_eq!((report.seen, report.failed), (3, 3), "{report:?}");
    let failed = h.listed(Some(EventStatus::Failed)).await;
    assert_eq!(
        ids(&failed),
        [
            "evt_1AlvrynEarly1",
            "evt_1AlvrynEarly2",
            "evt_1AlvrynEarly3",
            "evt_1AlvrynLate"
        ]
    );
    assert!(failed.iter().all(|e| e.attempts == 1), "{failed:?}");
    let late_due = failed[3].next_at_ms.unwrap();
    assert!(
        failed[..3].iter().all(|e| e.next_at_ms.unwrap() > late_due),
        "{failed:?}"
    );

    h.billing.set_down(false);
    h.advance(Duration::from_millis(
        u64::try_from(late_due - h.now_ms()).unwrap(),
    ));
    // A pass of two: the three early ones fill more than its first page.
    let report = h.pipeline.retry_due(h.now_ms(), 2).await.unwrap();
    assert_eq!((report.seen, report.applied), (1, 1), "{report:?}");
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Applied)).await),
        ["evt_1AlvrynLate"]
    );
    assert_eq!(h.view().await.plan.as_str(), "pro");
}

#[tokio::test]
async fn an_event_that_keeps_failing_becomes_a_dead_letter_and_replay_applies_it() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    h.billing.set(&subscription(SUB, "active", PRO));
    h.billing.set_down(true);
    let completed = event(
        "evt_1AlvrynDoomed",
        "checkout.session.completed",
        T,
        checkout_session(SUB),
    );
    assert_eq!(h.deliver(&[&completed]).await, [Outcome::Failed]);

    // Attempts 2 and 3, each when due: the third is the policy's last.
    for attempt in 2..=3 {
        let due = h.listed(Some(EventStatus::Failed)).await[0]
            .next_at_ms
            .unwrap();
        h.advance(Duration::from_millis(
            u64::try_from(due - h.now_ms()).unwrap(),
        ));
        let report = h.retry_due().await;
        assert_eq!((report.seen, report.failed), (1, 1), "attempt {attempt}");
    }

    let dead = h.listed(Some(EventStatus::Dead)).await;
    assert_eq!(ids(&dead), ["evt_1AlvrynDoomed"]);
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0].error.is_some());
    assert!(h.listed(Some(EventStatus::Failed)).await.is_empty());
    assert_eq!(count(&h.pipeline.stats().dead), 1);
    // The worker leaves dead letters alone, however long it waits.
    h.advance(Duration::from_secs(24 * 3600));
    assert_eq!(h.retry_due().await.seen, 0);
    assert_eq!(h.billing.fetches(SUB), 3);
    assert_eq!(h.view().await.plan.as_str(), "free");

    h.billing.set_down(false);
    let report = h
        .pipeline
        .replay(&only("evt_1AlvrynDoomed"), false, h.now_ms())
        .await
        .unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(h.view().await.plan.as_str(), "pro");
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Applied)).await),
        ["evt_1AlvrynDoomed"]
    );
}

// ---------------------------------------------------------------------------
// f) Types the pipeline does not act on.

#[tokio::test]
async fn an_event_type_not_acted_on_is_ignored_and_archived_byte_for_byte() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let mut customer = resource("customer");
    customer["id"] = json!(CUSTOMER);
    // Non-ASCII text: the archive must keep the exact UTF-8 bytes.
    customer["metadata"] = json!({ "name": "Zoë Müller", "note": "€ 10 — 日本" });
    let body = event("evt_1AlvrynCustomer", "customer.created", T, customer);

    assert_eq!(h.deliver(&[&body]).await, [Outcome::Ignored]);

    let ignored = h.listed(Some(EventStatus::Ignored)).await;
    assert_eq!(ids(&ignored), ["evt_1AlvrynCustomer"]);
    assert_eq!(ignored[0].event_type, "customer.created");
    let key = EventKey::new("evt_1AlvrynCustomer", T);
    let archived = h.archive().retrieve(&key).await.unwrap();
    assert_eq!(archived.as_deref(), Some(body.as_bytes()));
    assert_eq!(count(&h.pipeline.stats().ignored), 1);
    assert_eq!(h.view().await.plan.as_str(), "free");
    assert_eq!(h.billing.fetches(CUSTOMER), 0);
}

// ---------------------------------------------------------------------------
// g) h) Refusals: nothing stored, or Stripe asked to deliver again.

#[tokio::test]
async fn deliveries_that_fail_verification_or_are_not_events_store_nothing() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let body = event(
        "evt_1AlvrynForged",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", PRO),
    );
    let not_an_event = serde_json::to_string_pretty(&subscription(SUB, "active", PRO)).unwrap();
    let t = h.signed_at;
    let headers = sign_all(
        &h.signer,
        &[
            req(&body, OTHER_SECRET, t),
            req(&body, SECRET, t - 301),
            req(&not_an_event, SECRET, t),
            req(&body, SECRET, t),
        ],
    );

    let wrong_secret = h.ingest(&body, &headers[0]).await;
    assert!(
        matches!(
            wrong_secret,
            Err(IngestError::Signature(SignatureError::NoMatchingSignature))
        ),
        "{wrong_secret:?}"
    );
    let stale = h.ingest(&body, &headers[1]).await;
    assert!(
        matches!(
            stale,
            Err(IngestError::Signature(
                SignatureError::TimestampOutsideTolerance
            ))
        ),
        "{stale:?}"
    );
    let unsigned = h.pipeline.ingest(body.as_bytes(), None, h.now_ms()).await;
    assert!(
        matches!(
            unsigned,
            Err(IngestError::Signature(SignatureError::MissingHeader))
        ),
        "{unsigned:?}"
    );
    let not_event = h.ingest(&not_an_event, &headers[2]).await;
    assert!(
        matches!(not_event, Err(IngestError::Event(EventError::NotAnEvent))),
        "{not_event:?}"
    );

    assert!(h.records(ARCHIVE_NS).await.is_empty());
    assert!(h.records(EVENT_NS).await.is_empty());
    assert_eq!(count(&h.pipeline.stats().received), 0);
    assert_eq!(h.view().await.plan.as_str(), "free");

    // The same body, properly signed, is taken: the refusals were the
    // signatures'.
    let signed = h.ingest(&body, &headers[3]).await.unwrap();
    assert_eq!(signed.outcome, Outcome::Applied);
    assert_eq!(h.records(ARCHIVE_NS).await.len(), 1);
}

#[tokio::test]
async fn archive_or_store_outages_ask_stripe_to_deliver_again() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let body = event(
        "evt_1AlvrynOutage",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", PRO),
    );
    let header = h.sign(&[&body]).remove(0);

    // The archive cannot write: nothing is recorded.
    h.faults.refuse_inserts_into(Some(ARCHIVE_NS));
    let refused = h.ingest(&body, &header).await;
    assert!(
        matches!(refused, Err(IngestError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(h.records(ARCHIVE_NS).await.is_empty());
    assert!(h.records(EVENT_NS).await.is_empty());

    // Archived, but the event cannot be recorded: still refused.
    h.faults.refuse_inserts_into(Some(EVENT_NS));
    let refused = h.ingest(&body, &header).await;
    assert!(
        matches!(refused, Err(IngestError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(h.records(ARCHIVE_NS).await.len(), 1);
    assert!(h.records(EVENT_NS).await.is_empty());
    assert_eq!(h.view().await.plan.as_str(), "free");
    assert_eq!(count(&h.pipeline.stats().received), 0);

    // The store is back: Stripe's next delivery is applied, once.
    h.faults.refuse_inserts_into(None);
    let delivered = h.ingest(&body, &header).await.unwrap();
    assert_eq!(delivered.outcome, Outcome::Applied);
    assert_eq!(h.view().await.plan.as_str(), "pro");
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Applied)).await),
        ["evt_1AlvrynOutage"]
    );
    let again = h.ingest(&body, &header).await.unwrap();
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert_eq!(h.plan_changes().await, 1);
}

#[tokio::test]
async fn an_archived_event_that_was_never_recorded_is_applied_by_replay() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let body = event(
        "evt_1AlvrynUnrecorded",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", PRO),
    );
    let header = h.sign(&[&body]).remove(0);
    h.faults.refuse_inserts_into(Some(EVENT_NS));
    assert!(h.ingest(&body, &header).await.is_err());
    h.faults.refuse_inserts_into(None);
    let delivered_at = h.now_ms();
    h.advance(Duration::from_secs(3600));

    // Beyond Stripe's retries: the operator replays it by id.
    let report = h
        .pipeline
        .replay(&only("evt_1AlvrynUnrecorded"), false, h.now_ms())
        .await
        .unwrap();

    assert_eq!((report.seen, report.applied), (1, 1), "{report:?}");
    assert_eq!(h.view().await.plan.as_str(), "pro");
    let listed = h.listed(Some(EventStatus::Applied)).await;
    assert_eq!(ids(&listed), ["evt_1AlvrynUnrecorded"]);
    // Dated by the archive, when it came, not by the replay (nor 1970).
    let received = listed[0].received_at_ms;
    assert!(
        (delivered_at..h.now_ms()).contains(&received),
        "received at {received} ms; delivered at {delivered_at} ms, replayed at {} ms",
        h.now_ms()
    );
}

// ---------------------------------------------------------------------------
// i) Invoices and cancellation.

#[tokio::test]
async fn invoices_refresh_the_subscription_and_a_deletion_ends_the_plan() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let paid = event(
        "evt_1AlvrynPaid",
        "invoice.paid",
        T + 1,
        invoice(SUB, "paid"),
    );
    let failed = event(
        "evt_1AlvrynPaymentFailed",
        "invoice.payment_failed",
        T + 2,
        invoice(SUB, "open"),
    );
    let deleted = event(
        "evt_1AlvrynDeleted",
        "customer.subscription.deleted",
        T + 3,
        subscription(SUB, "canceled", PRO),
    );
    let headers = h.sign(&[&paid, &failed, &deleted]);

    h.billing.set(&subscription(SUB, "active", PRO));
    assert_eq!(
        h.ingest(&paid, &headers[0]).await.unwrap().outcome,
        Outcome::Applied
    );
    assert_eq!(h.billing.fetches(SUB), 1);
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "pro");
    assert_eq!(view.status.as_deref(), Some("active"));

    // The renewal fails: Stripe retries the payment, the plan stays.
    h.billing.set(&subscription(SUB, "past_due", PRO));
    let outcome = h.ingest(&failed, &headers[1]).await.unwrap().outcome;
    assert_eq!(outcome, Outcome::Applied);
    assert_eq!(h.billing.fetches(SUB), 2);
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "pro");
    assert_eq!(view.status.as_deref(), Some("past_due"));

    let outcome = h.ingest(&deleted, &headers[2]).await.unwrap().outcome;
    assert_eq!(outcome, Outcome::Applied);
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "free");
    assert_eq!(view.status.as_deref(), Some("canceled"));
    assert_eq!(h.billing.fetches(SUB), 2, "the deletion carries its state");
    assert_eq!(h.plan_changes().await, 2, "free to pro, pro to free");
}

// ---------------------------------------------------------------------------
// j) A delivery that stopped between recording and applying.

#[tokio::test]
async fn a_delivery_cut_off_after_recording_is_applied_by_the_worker_after_the_grace() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    let body = event(
        "evt_1AlvrynCutOff",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", PRO),
    );
    let header = h.sign(&[&body]).remove(0);

    // The delivery records the event, then stops for good as it starts
    // applying: its future is dropped there.
    let reached = h.faults.stall_state_reads();
    tokio::select! {
        done = h.ingest(&body, &header) => panic!("the delivery finished: {done:?}"),
        () = reached.notified() => {}
    }
    let received = h.listed(Some(EventStatus::Received)).await;
    assert_eq!(ids(&received), ["evt_1AlvrynCutOff"]);

    let h = h.restart().await;
    assert_eq!(h.view().await.plan.as_str(), "free");
    h.advance(retry().received_grace - Duration::from_millis(1));
    assert_eq!(h.retry_due().await.seen, 0, "still within the grace");

    h.advance(Duration::from_millis(1));
    let report = h.retry_due().await;
    assert_eq!((report.seen, report.applied), (1, 1), "{report:?}");
    assert_eq!(h.view().await.plan.as_str(), "pro");
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Applied)).await),
        ["evt_1AlvrynCutOff"]
    );
    assert_eq!(h.plan_changes().await, 1);
}

#[tokio::test]
async fn a_checkout_this_backend_did_not_start_grants_nothing() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    h.billing.set(&subscription(SUB, "active", PRO));
    // A Payment Link session: whoever opened the link chose the
    // `client_reference_id`; only our own sessions carry the metadata.
    let mut session = checkout_session(SUB);
    session["metadata"] = json!({});
    let link = event(
        "evt_1AlvrynPaymentLink",
        "checkout.session.completed",
        T,
        session,
    );
    assert_eq!(h.deliver(&[&link]).await, [Outcome::Ignored]);
    assert_eq!(h.view().await.plan.as_str(), "free");
    assert_eq!(h.billing.fetches(SUB), 0);
    let subscriptions = h.pipeline.subscriptions();
    assert_eq!(subscriptions.customer_of(USER).await.unwrap(), None);
    assert_eq!(
        ids(&h.listed(Some(EventStatus::Ignored)).await),
        ["evt_1AlvrynPaymentLink"]
    );
}

#[tokio::test]
async fn a_cancellation_is_applied_even_when_its_price_has_left_the_map() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    const RETIRED: &str = "price_retired";
    // Sold while the map still listed it.
    let before = h.pipeline_with(&format!("{RETIRED}:pro"));
    let created = event(
        "evt_1AlvrynRetiredOn",
        "customer.subscription.created",
        T,
        subscription(SUB, "active", RETIRED),
    );
    let header = h.sign(&[&created]).remove(0);
    let got = before
        .ingest(created.as_bytes(), Some(&header), h.now_ms())
        .await
        .unwrap();
    assert_eq!(got.outcome, Outcome::Applied);
    assert_eq!(h.view().await.plan.as_str(), "pro");

    // The operator retires the price from the map; the customer cancels.
    let mut canceled = subscription(SUB, "canceled", RETIRED);
    canceled["created"] = json!(T);
    let deleted = event(
        "evt_1AlvrynRetiredOff",
        "customer.subscription.deleted",
        T + 10,
        canceled,
    );
    assert_eq!(h.deliver(&[&deleted]).await, [Outcome::Applied]);
    let view = h.view().await;
    assert_eq!(view.plan.as_str(), "free", "not kept on a paid plan");
    assert_eq!(view.status.as_deref(), Some("canceled"));
    // Granting access through an unknown price is still quarantined.
    let back = event(
        "evt_1AlvrynRetiredAgain",
        "customer.subscription.updated",
        T + 20,
        subscription(SUB, "active", RETIRED),
    );
    assert_eq!(h.deliver(&[&back]).await, [Outcome::Quarantined]);
    assert_eq!(h.view().await.plan.as_str(), "free");
}

#[tokio::test]
async fn an_event_whose_body_is_gone_becomes_a_dead_letter_and_stops_taking_retries() {
    let Some(h) = Harness::new(Backend::Sqlite).await else {
        return;
    };
    h.billing.set(&subscription(SUB, "active", PRO));
    h.billing.set_down(true);
    let completed = event(
        "evt_1AlvrynBodyGone",
        "checkout.session.completed",
        T,
        checkout_session(SUB),
    );
    assert_eq!(h.deliver(&[&completed]).await, [Outcome::Failed]);
    // Its raw body disappears (a lifecycle rule, a changed archive).
    assert!(
        h.store
            .remove_record(ARCHIVE_NS, "evt_1AlvrynBodyGone")
            .await
            .unwrap()
    );
    h.billing.set_down(false);
    h.advance(Duration::from_secs(3600));

    let report = h.retry_due().await;
    assert_eq!((report.seen, report.missing), (1, 1), "{report:?}");
    let dead = h.listed(Some(EventStatus::Dead)).await;
    assert_eq!(ids(&dead), ["evt_1AlvrynBodyGone"]);
    assert!(
        dead[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not in the archive"),
        "{dead:?}"
    );
    // It no longer comes back in every pass.
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.retry_due().await.seen, 0);
}
