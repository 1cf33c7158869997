//! [`Subscriptions`]: what each user pays for, kept in the store's
//! primitives, and the calls that start or manage a payment.
//!
//! # What is stored
//!
//! | where | key | what |
//! |---|---|---|
//! | record `billing_customer` | user id | the user's Stripe customer id (created once) |
//! | record `billing_customer_user` | customer id | owner: the user (to place subscription events) |
//! | versioned `billing_user` | user id | every subscription of the user, each as of the newest event applied |
//!
//! The per-user value is written by compare-and-swap on a revision
//! counter, so concurrent events for one user serialize. Inside it, each
//! subscription remembers the `created` of the event it reflects: an
//! older event never overwrites a newer state, and an event of the same
//! second as the stored one (Stripe's timestamps are in seconds) settles
//! the tie by reading the subscription from Stripe as it is now.
//!
//! The user's plan is the plan of their newest subscription that grants
//! access (`active`, `trialing`, `past_due`); with none, `free`. A price
//! the price map does not know is never mapped to a default: the event is
//! quarantined.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::client::{
    Billing, BillingError, CheckoutRequest, HostedSession, NewCustomer, PortalRequest,
};
use super::subscription::Subscription;
use super::{PlanName, PriceId, PriceMap, now_ms};
use crate::store::{AuditEvent, CasOutcome, Record, StoreBackend, StoreError, User, Versioned};

/// Record namespace: user id → Stripe customer id.
pub const CUSTOMER_NS: &str = "billing_customer";
/// Record namespace: Stripe customer id → user (the record's owner).
pub const CUSTOMER_OWNER_NS: &str = "billing_customer_user";
/// Versioned namespace: user id → the user's subscriptions.
pub const BILLING_STATE_NS: &str = "billing_user";
/// The audit event recorded when a user's plan changes.
pub const PLAN_CHANGED: &str = "billing_plan_changed";

/// How many times a compare-and-swap is retried against concurrent
/// writers before giving up.
const CAS_ATTEMPTS: usize = 64;

/// One subscription as the last applied event (or Stripe) showed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SubState {
    /// `created` of the event this reflects, Unix seconds.
    as_of: i64,
    /// That event's id.
    event_id: String,
    status: String,
    plan: String,
    current_period_end: Option<i64>,
    cancel_at_period_end: bool,
    /// The subscription's own creation time, Unix seconds.
    created: i64,
}

/// How many ended subscriptions a user's state keeps; see
/// [`UserBilling::forget_old_endings`].
const KEPT_ENDED: usize = 16;

/// Whether Stripe will never change a subscription in this status again.
fn has_ended(status: &str) -> bool {
    matches!(status, "canceled" | "incomplete_expired")
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UserBilling {
    subs: BTreeMap<String, SubState>,
    /// The newest `as_of` of the subscriptions forgotten: an event about
    /// a subscription not kept, no newer than this, may be about one of
    /// them (see [`Self::forget_old_endings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forgotten_until: Option<i64>,
}

impl UserBilling {
    /// Forgets the ended subscriptions beyond the [`KEPT_ENDED`] that
    /// ended last (never the one [`Self::effective`] shows). The state is
    /// read and rewritten at each of the user's events: without this, a
    /// user who subscribes and cancels again and again would make every
    /// later event slower. What is forgotten grants nothing and cannot
    /// change. An event about a subscription the state does not hold, no
    /// newer than `forgotten_until`, is settled by Stripe: stale if the
    /// subscription has ended, applied as Stripe has it otherwise (a new
    /// subscription delivered late).
    fn forget_old_endings(&mut self) {
        let shown = self.effective().map(|(id, _)| id.to_owned());
        let mut ended: Vec<(i64, String)> = self
            .subs
            .iter()
            .filter(|(id, s)| has_ended(&s.status) && Some(*id) != shown.as_ref())
            .map(|(id, s)| (s.as_of, id.clone()))
            .collect();
        let Some(excess) = ended.len().checked_sub(KEPT_ENDED) else {
            return;
        };
        ended.sort_unstable();
        for (as_of, id) in ended.into_iter().take(excess) {
            self.subs.remove(&id);
            self.forgotten_until = Some(self.forgotten_until.map_or(as_of, |h| h.max(as_of)));
        }
    }

    /// The subscription that decides the plan: the newest granting
    /// access, else the newest of all.
    fn effective(&self) -> Option<(&str, &SubState)> {
        let newest = |grants: bool| {
            self.subs
                .iter()
                .filter(|(_, s)| !grants || grants_access(&s.status))
                .max_by(|a, b| (a.1.created, a.0).cmp(&(b.1.created, b.0)))
                .map(|(id, s)| (id.as_str(), s))
        };
        newest(true).or_else(|| newest(false))
    }

    fn view(&self) -> PlanView {
        match self.effective() {
            Some((id, s)) => PlanView {
                plan: if grants_access(&s.status) {
                    PlanName::new(&s.plan).unwrap_or_else(|_| PlanName::free())
                } else {
                    PlanName::free()
                },
                status: Some(s.status.clone()),
                current_period_end: s.current_period_end,
                cancel_at_period_end: s.cancel_at_period_end,
                subscription: Some(id.to_owned()),
            },
            None => PlanView::free(),
        }
    }
}

fn grants_access(status: &str) -> bool {
    matches!(status, "active" | "trialing" | "past_due")
}

/// A user's plan and the subscription behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanView {
    /// The plan: the newest access-granting subscription's, else `free`.
    pub plan: PlanName,
    /// That subscription's Stripe status (`None` without subscriptions).
    pub status: Option<String>,
    /// End of its current period, Unix seconds.
    pub current_period_end: Option<i64>,
    /// Whether it ends at the period's end.
    pub cancel_at_period_end: bool,
    /// Its id.
    pub subscription: Option<String>,
}

impl PlanView {
    fn free() -> Self {
        Self {
            plan: PlanName::free(),
            status: None,
            current_period_end: None,
            cancel_at_period_end: false,
            subscription: None,
        }
    }
}

/// What applying a subscription state did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Stored; `plan_changed` when the user's plan moved (and an audit
    /// event says so).
    Applied {
        /// Whether the user's plan changed.
        plan_changed: bool,
    },
    /// Already stored (the same event applied before).
    AlreadyApplied,
    /// A newer state is stored; nothing changed.
    Stale,
    /// A price the price map does not know: nothing changed.
    Quarantined {
        /// The unknown price id.
        price: String,
    },
}

/// Why a subscription state could not be applied; the event is kept and
/// tried again later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the subscription from Stripe failed.
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// Neither the subscription's metadata nor a known customer names a
    /// user (yet: `checkout.session.completed` may still be on its way).
    #[error("no user is known for this customer yet")]
    UnknownCustomer,
    /// Concurrent writers kept winning the compare-and-swap.
    #[error("the billing state kept changing under this write")]
    Contended,
    /// The stored billing state cannot be read.
    #[error("the stored billing state is damaged")]
    Corrupt,
}

/// Why checkout or the portal could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The plan is not sold (no price maps to it).
    #[error("no price is configured for this plan")]
    UnknownPlan,
    /// The user already has a subscription that grants access: plan
    /// changes go through the billing portal.
    #[error("already subscribed; change plans in the billing portal")]
    AlreadySubscribed,
    /// The user has no Stripe customer yet (never checked out).
    #[error("no billing account yet")]
    NoCustomer,
    /// Stripe refused or failed.
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where Checkout sends the browser back to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutUrls {
    /// After payment.
    pub success_url: String,
    /// When the user gives up.
    pub cancel_url: String,
}

/// Users' subscriptions and plans, and the Stripe calls around them.
#[derive(Clone)]
pub struct Subscriptions {
    store: Arc<dyn StoreBackend>,
    billing: Arc<dyn Billing>,
    prices: Arc<PriceMap>,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field("prices", &self.prices.len())
            .finish_non_exhaustive()
    }
}

fn fresh_key(what: &str) -> String {
    format!("alvryn-{what}-{}", crate::random_hex(16))
}

impl Subscriptions {
    /// Subscriptions kept in `store`, read from `billing`, priced by
    /// `prices`.
    #[must_use]
    pub fn new(store: Arc<dyn StoreBackend>, billing: Arc<dyn Billing>, prices: PriceMap) -> Self {
        Self {
            store,
            billing,
            prices: Arc::new(prices),
        }
    }

    /// The provider.
    #[must_use]
    pub fn billing(&self) -> &Arc<dyn Billing> {
        &self.billing
    }

    /// The price map.
    #[must_use]
    pub fn prices(&self) -> &PriceMap {
        &self.prices
    }

    /// The user's plan and subscription.
    ///
    /// # Errors
    /// [`StoreError`]; a damaged value is [`StoreError::Corrupt`].
    pub async fn view(&self, user_id: &str) -> Result<PlanView, StoreError> {
        Ok(self.load(user_id).await?.1.view())
    }

    async fn load(&self, user_id: &str) -> Result<(i64, UserBilling), StoreError> {
        match self.store.versioned(BILLING_STATE_NS, user_id).await? {
            None => Ok((0, UserBilling::default())),
            Some(v) => serde_json::from_slice(&v.data)
                .map(|b| (v.version, b))
                .map_err(|_| StoreError::Corrupt(format!("{BILLING_STATE_NS} of a user"))),
        }
    }

    /// The user's Stripe customer id, if they have one.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn customer_of(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        Ok(self
            .store
            .record(CUSTOMER_NS, user_id, now)
            .await?
            .and_then(|r| String::from_utf8(r.data).ok()))
    }

    /// The user a Stripe customer belongs to, if known.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn user_of_customer(&self, customer: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .record(CUSTOMER_OWNER_NS, customer, now_ms())
            .await?
            .and_then(|r| r.owner))
    }

    /// Records that `customer` is `user_id`'s (both directions; a user's
    /// first customer stays theirs). Returns the user's customer.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn link_customer(&self, user_id: &str, customer: &str) -> Result<String, StoreError> {
        let now = now_ms();
        let record = |ns: &str, key: &str, owner: Option<&str>, data: &str| Record {
            ns: ns.to_owned(),
            key: key.to_owned(),
            owner: owner.map(str::to_owned),
            status: 1,
            data: data.as_bytes().to_vec(),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: None,
        };
        match self
            .store
            .insert_if_absent(&record(CUSTOMER_OWNER_NS, customer, Some(user_id), user_id))
            .await
        {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
        match self
            .store
            .insert_if_absent(&record(CUSTOMER_NS, user_id, None, customer))
            .await
        {
            Ok(()) => Ok(customer.to_owned()),
            Err(StoreError::Conflict) => Ok(self
                .customer_of(user_id)
                .await?
                .unwrap_or_else(|| customer.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// The user's customer, created at Stripe the first time (with an
    /// idempotency key derived from the user, so concurrent first
    /// checkouts create one customer).
    async fn customer_for(&self, user: &User) -> Result<String, SessionError> {
        if let Some(c) = self.customer_of(&user.id).await? {
            return Ok(c);
        }
        let created = self
            .billing
            .create_customer(&NewCustomer {
                user_id: user.id.clone(),
                email: user.email.clone(),
                idempotency_key: format!("alvryn-customer-{}", user.id),
            })
            .await?;
        Ok(self.link_customer(&user.id, &created).await?)
    }

    /// Starts a Checkout Session for `plan`.
    ///
    /// # Errors
    /// [`SessionError::UnknownPlan`], [`SessionError::AlreadySubscribed`],
    /// and Stripe's or the store's failures.
    pub async fn checkout(
        &self,
        user: &User,
        plan: &PlanName,
        urls: &CheckoutUrls,
    ) -> Result<HostedSession, SessionError> {
        let price: PriceId = self
            .prices
            .price_for(plan)
            .cloned()
            .ok_or(SessionError::UnknownPlan)?;
        let (_, state) = self.load(&user.id).await?;
        if state.subs.values().any(|s| grants_access(&s.status)) {
            return Err(SessionError::AlreadySubscribed);
        }
        let customer = self.customer_for(user).await?;
        Ok(self
            .billing
            .create_checkout_session(&CheckoutRequest {
                customer,
                user_id: user.id.clone(),
                price,
                success_url: urls.success_url.clone(),
                cancel_url: urls.cancel_url.clone(),
                idempotency_key: fresh_key("checkout"),
            })
            .await?)
    }

    /// Opens the billing portal for the user's customer.
    ///
    /// # Errors
    /// [`SessionError::NoCustomer`], and Stripe's or the store's failures.
    pub async fn portal(
        &self,
        user: &User,
        return_url: &str,
    ) -> Result<HostedSession, SessionError> {
        let customer = self
            .customer_of(&user.id)
            .await?
            .ok_or(SessionError::NoCustomer)?;
        Ok(self
            .billing
            .create_portal_session(&PortalRequest {
                customer,
                return_url: return_url.to_owned(),
                idempotency_key: fresh_key("portal"),
            })
            .await?)
    }

    /// The user a subscription belongs to: its `alvryn_user_id`
    /// metadata, else its customer's owner.
    ///
    /// # Errors
    /// [`ApplyError::UnknownCustomer`], [`ApplyError::Store`].
    pub async fn user_of(&self, sub: &Subscription) -> Result<String, ApplyError> {
        if let Some(u) = &sub.user_id {
            return Ok(u.clone());
        }
        self.user_of_customer(&sub.customer)
            .await?
            .ok_or(ApplyError::UnknownCustomer)
    }

    /// The plan of a subscription's prices; `Err(price)` for the first
    /// price the map does not know (or an empty string without items).
    fn plan_of(&self, sub: &Subscription) -> Result<PlanName, String> {
        let mut plan = None;
        for price in &sub.prices {
            let mapped = PriceId::new(price)
                .ok()
                .and_then(|p| self.prices.plan_for(&p).cloned())
                .ok_or_else(|| price.clone())?;
            plan.get_or_insert(mapped);
        }
        plan.ok_or_else(String::new)
    }

    /// Applies `sub` as of an event created at `as_of` (Unix seconds)
    /// with id `event_id`, to `user_id`'s state: never over a newer state,
    /// settling a same-second tie by reading the subscription from Stripe.
    ///
    /// # Errors
    /// [`ApplyError`]; nothing was changed.
    pub async fn apply(
        &self,
        user_id: &str,
        sub: &Subscription,
        as_of: i64,
        event_id: &str,
    ) -> Result<ApplyOutcome, ApplyError> {
        let mut sub = sub.clone();
        let mut fetched = false;
        for _ in 0..CAS_ATTEMPTS {
            let (rev, mut state) = self.load(user_id).await.map_err(|e| match e {
                StoreError::Corrupt(_) => ApplyError::Corrupt,
                e => ApplyError::Store(e),
            })?;
            // Not kept, and no newer than the newest ending forgotten: it
            // may be about a forgotten subscription (whose newer state is
            // gone) or a new one delivered late. Stripe says which: an
            // ended subscription changes nothing, a live one is applied
            // as Stripe has it now.
            let unknown = !state.subs.contains_key(&sub.id)
                && state.forgotten_until.is_some_and(|until| as_of <= until);
            if unknown {
                if !fetched {
                    sub = self.billing.subscription(&sub.id).await?;
                    fetched = true;
                    continue;
                }
                if has_ended(&sub.status) {
                    return Ok(ApplyOutcome::Stale);
                }
            }
            if let Some(stored) = state.subs.get(&sub.id) {
                if stored.as_of > as_of {
                    return Ok(ApplyOutcome::Stale);
                }
                if stored.as_of == as_of {
                    if stored.event_id == event_id {
                        return Ok(ApplyOutcome::AlreadyApplied);
                    }
                    if !fetched {
                        // Same second, another event: Stripe says which
                        // state is the newest.
                        sub = self.billing.subscription(&sub.id).await?;
                        fetched = true;
                        continue;
                    }
                }
            }
            let plan = if sub.grants_access() {
                match self.plan_of(&sub) {
                    Ok(p) => p,
                    Err(price) => return Ok(ApplyOutcome::Quarantined { price }),
                }
            } else {
                // A subscription that grants nothing needs no plan: an
                // ending (cancelled, unpaid) is never held back by a
                // price the map no longer lists.
                state
                    .subs
                    .get(&sub.id)
                    .and_then(|s| PlanName::new(&s.plan).ok())
                    .or_else(|| self.plan_of(&sub).ok())
                    .unwrap_or_else(PlanName::free)
            };
            let before = state.view();
            state.subs.insert(
                sub.id.clone(),
                SubState {
                    as_of,
                    event_id: event_id.to_owned(),
                    status: sub.status.clone(),
                    plan: plan.as_str().to_owned(),
                    current_period_end: sub.current_period_end,
                    cancel_at_period_end: sub.cancel_at_period_end,
                    created: sub.created,
                },
            );
            state.forget_old_endings();
            let after = state.view();
            let data = serde_json::to_vec(&state).map_err(|_| ApplyError::Corrupt)?;
            let now = now_ms();
            match self
                .store
                .upsert_versioned(&Versioned {
                    ns: BILLING_STATE_NS.to_owned(),
                    key: user_id.to_owned(),
                    version: rev + 1,
                    data,
                    updated_at_ms: now,
                })
                .await?
            {
                CasOutcome::Stale { .. } => continue,
                CasOutcome::Applied => {}
            }
            let plan_changed = before.plan != after.plan;
            if plan_changed {
                tracing::info!(from = %before.plan, to = %after.plan, "a user's plan changed");
                if let Err(e) = self
                    .store
                    .record_audit(&AuditEvent {
                        at_ms: now,
                        kind: PLAN_CHANGED.to_owned(),
                        user_id: user_id.to_owned(),
                        family_id: None,
                    })
                    .await
                {
                    tracing::warn!(error = %e, "the plan change was applied but not audited");
                }
            }
            return Ok(ApplyOutcome::Applied { plan_changed });
        }
        Err(ApplyError::Contended)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sub(as_of: i64, created: i64, status: &str) -> SubState {
        SubState {
            as_of,
            event_id: format!("evt_{as_of}"),
            status: status.to_owned(),
            plan: "pro".to_owned(),
            current_period_end: None,
            cancel_at_period_end: false,
            created,
        }
    }

    #[test]
    fn only_the_endings_past_the_kept_number_are_forgotten_oldest_first() {
        let mut state = UserBilling::default();
        // 30 ended (ended at 100..130), one active and one past due.
        for i in 0..30 {
            let status = if i % 2 == 0 {
                "canceled"
            } else {
                "incomplete_expired"
            };
            state
                .subs
                .insert(format!("sub_e{i:02}"), sub(100 + i, i, status));
        }
        state.subs.insert("sub_active".into(), sub(50, 1, "active"));
        state.subs.insert("sub_late".into(), sub(40, 2, "past_due"));
        let shown = state.view();
        state.forget_old_endings();

        assert_eq!(state.subs.len(), KEPT_ENDED + 2);
        assert!(state.subs.contains_key("sub_active") && state.subs.contains_key("sub_late"));
        for i in 0..30 {
            let kept = state.subs.contains_key(&format!("sub_e{i:02}"));
            assert_eq!(kept, i >= 30 - 16, "sub_e{i:02}");
        }
        assert_eq!(
            state.forgotten_until,
            Some(113),
            "the newest ending forgotten"
        );
        assert_eq!(state.view(), shown, "the plan shown is unchanged");

        // Under the bound: nothing more is forgotten.
        let before = state.clone();
        state.forget_old_endings();
        assert_eq!(state, before);
    }

    #[test]
    fn the_subscription_shown_is_kept_even_when_it_ended_first() {
        let mut state = UserBilling::default();
        // All ended; the newest created ended first.
        state
            .subs
            .insert("sub_newest".into(), sub(10, 1_000, "canceled"));
        for i in 0..20 {
            state
                .subs
                .insert(format!("sub_{i:02}"), sub(100 + i, i, "canceled"));
        }
        let shown = state.view();
        assert_eq!(shown.subscription.as_deref(), Some("sub_newest"));
        state.forget_old_endings();
        assert!(state.subs.contains_key("sub_newest"));
        assert_eq!(state.subs.len(), KEPT_ENDED + 1);
        assert_eq!(state.view(), shown);
    }

    #[test]
    fn a_state_written_before_forgetting_existed_still_reads() {
        let old = r#"{"subs":{"sub_1":{"as_of":5,"event_id":"evt_1","status":"active","plan":"pro","current_period_end":null,"cancel_at_period_end":false,"created":1}}}"#;
        let state: UserBilling = serde_json::from_str(old).unwrap();
        assert_eq!(state.forgotten_until, None);
        assert_eq!(state.view().plan.as_str(), "pro");
        assert!(
            !serde_json::to_string(&state)
                .unwrap()
                .contains("forgotten_until")
        );
    }
}
