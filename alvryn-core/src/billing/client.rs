//! The [`Billing`] trait: the few calls to the payment provider the
//! backend makes, with a [`tower::Service`] view.
//!
//! [`StripeClient`](super::StripeClient) (feature `stripe`) implements it
//! over Stripe's HTTP API; tests and embedders may put their own behind
//! it. Everything that decides *what* to call (one customer per user, the
//! price of a plan, the URLs) lives in [`Subscriptions`](super::Subscriptions).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;

use super::PriceId;
use super::subscription::{ObjectError, Subscription};

/// A customer to create at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCustomer {
    /// Our user id (kept in the customer's metadata as `alvryn_user_id`).
    pub user_id: String,
    /// The user's email.
    pub email: String,
    /// The idempotency key of the creation: the same key never creates a
    /// second customer (Stripe keeps keys for at least 24 hours).
    pub idempotency_key: String,
}

/// A Checkout Session to create, in subscription mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// The customer (created once per user, then reused).
    pub customer: String,
    /// Our user id: the session's `client_reference_id`, and the
    /// `alvryn_user_id` metadata of the session and of the subscription.
    pub user_id: String,
    /// The price of the plan.
    pub price: PriceId,
    /// Where Stripe sends the browser after payment.
    pub success_url: String,
    /// Where Stripe sends the browser when the user gives up.
    pub cancel_url: String,
    /// The idempotency key of this creation (a fresh one per user action,
    /// reused by every retry of it).
    pub idempotency_key: String,
}

/// A billing-portal session to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalRequest {
    /// The customer.
    pub customer: String,
    /// Where the portal's "return" link goes.
    pub return_url: String,
    /// The idempotency key of this creation.
    pub idempotency_key: String,
}

/// A hosted page (Checkout or the billing portal) to send the browser to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedSession {
    /// The session id (`cs_...`, `bps_...`).
    pub id: String,
    /// The page's URL.
    pub url: String,
}

/// How a call to the payment provider failed. No variant ever carries the
/// API key; Stripe's own messages are kept because they say what to fix
/// (with anything that looks like a key masked).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BillingError {
    /// Stripe answered with an error body (after retries, for 429 and
    /// 5xx).
    #[error("Stripe refused the request ({status}, {kind}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Stripe {
        /// The HTTP status.
        status: u16,
        /// Stripe's `error.type`, e.g. `invalid_request_error`.
        kind: String,
        /// Stripe's `error.code`, e.g. `resource_missing`.
        code: Option<String>,
        /// Stripe's `error.message`, keys masked.
        message: String,
    },
    /// Stripe could not be reached, or kept failing (connection errors,
    /// timeouts, 429 or 5xx on every attempt).
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe answered 2xx with a body this client cannot read.
    #[error("Stripe's answer could not be read: {0}")]
    InvalidResponse(String),
}

impl BillingError {
    /// Whether the object asked for does not exist (Stripe's 404 with
    /// `resource_missing`).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, BillingError::Stripe { status: 404, .. })
    }
}

impl From<ObjectError> for BillingError {
    fn from(e: ObjectError) -> Self {
        BillingError::InvalidResponse(e.to_string())
    }
}

/// The payment provider.
///
/// # Failure modes
/// Every method returns [`BillingError::Stripe`] when the provider
/// refuses (its message says why), [`BillingError::Unavailable`] when it
/// cannot be reached or keeps failing after the implementation's retries,
/// and [`BillingError::InvalidResponse`] when its answer is unreadable.
/// Creations carry an idempotency key, so a creation retried after an
/// unknown outcome never creates twice.
#[async_trait]
pub trait Billing: Send + Sync + 'static {
    /// Creates a customer; returns its id (`cus_...`).
    async fn create_customer(&self, customer: &NewCustomer) -> Result<String, BillingError>;

    /// Creates a Checkout Session in subscription mode.
    async fn create_checkout_session(
        &self,
        request: &CheckoutRequest,
    ) -> Result<HostedSession, BillingError>;

    /// Creates a billing-portal session.
    async fn create_portal_session(
        &self,
        request: &PortalRequest,
    ) -> Result<HostedSession, BillingError>;

    /// Reads a subscription as it is now.
    async fn subscription(&self, id: &str) -> Result<Subscription, BillingError>;
}

/// One call to a [`Billing`], as a [`tower::Service`] request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BillingRequest {
    /// [`Billing::create_customer`].
    CreateCustomer(NewCustomer),
    /// [`Billing::create_checkout_session`].
    Checkout(CheckoutRequest),
    /// [`Billing::create_portal_session`].
    Portal(PortalRequest),
    /// [`Billing::subscription`].
    Subscription(String),
}

/// The answer to a [`BillingRequest`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BillingResponse {
    /// A customer id.
    Customer(String),
    /// A Checkout or portal session.
    Session(HostedSession),
    /// A subscription.
    Subscription(Box<Subscription>),
}

/// The [`tower::Service`] view of a [`Billing`]: put timeouts, retries or
/// limits around the provider as layers, then turn the stack back into a
/// [`Billing`] with [`ServiceBilling`].
pub struct BillingService<B: ?Sized> {
    inner: Arc<B>,
}

impl<B: ?Sized> BillingService<B> {
    /// A service calling `billing`.
    pub fn new(billing: Arc<B>) -> Self {
        Self { inner: billing }
    }
}

impl<B: ?Sized> Clone for BillingService<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: ?Sized> fmt::Debug for BillingService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingService").finish_non_exhaustive()
    }
}

impl<B: Billing + ?Sized> tower::Service<BillingRequest> for BillingService<B> {
    type Response = BillingResponse;
    type Error = BillingError;
    type Future = Pin<Box<dyn Future<Output = Result<BillingResponse, BillingError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BillingError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: BillingRequest) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            Ok(match request {
                BillingRequest::CreateCustomer(c) => {
                    BillingResponse::Customer(inner.create_customer(&c).await?)
                }
                BillingRequest::Checkout(c) => {
                    BillingResponse::Session(inner.create_checkout_session(&c).await?)
                }
                BillingRequest::Portal(p) => {
                    BillingResponse::Session(inner.create_portal_session(&p).await?)
                }
                BillingRequest::Subscription(id) => {
                    BillingResponse::Subscription(Box::new(inner.subscription(&id).await?))
                }
            })
        })
    }
}

/// A [`Billing`] made of a [`tower::Service`] stack over
/// [`BillingService`]. Errors of the layers (a timeout, a shed load)
/// become [`BillingError::Unavailable`].
pub struct ServiceBilling<S> {
    service: S,
}

impl<S> ServiceBilling<S> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> fmt::Debug for ServiceBilling<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBilling").finish_non_exhaustive()
    }
}

impl<S> ServiceBilling<S>
where
    S: tower::Service<BillingRequest, Response = BillingResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
{
    async fn call(&self, request: BillingRequest) -> Result<BillingResponse, BillingError> {
        use tower::ServiceExt as _;
        self.service.clone().oneshot(request).await.map_err(|e| {
            match e.into().downcast::<BillingError>() {
                Ok(e) => *e,
                Err(other) => BillingError::Unavailable(other.to_string()),
            }
        })
    }
}

fn unexpected(r: &BillingResponse) -> BillingError {
    BillingError::InvalidResponse(format!("a layer answered with the wrong kind: {r:?}"))
}

#[async_trait]
impl<S> Billing for ServiceBilling<S>
where
    S: tower::Service<BillingRequest, Response = BillingResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
{
    async fn create_customer(&self, customer: &NewCustomer) -> Result<String, BillingError> {
        match self
            .call(BillingRequest::CreateCustomer(customer.clone()))
            .await?
        {
            BillingResponse::Customer(id) => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    async fn create_checkout_session(
        &self,
        request: &CheckoutRequest,
    ) -> Result<HostedSession, BillingError> {
        match self.call(BillingRequest::Checkout(request.clone())).await? {
            BillingResponse::Session(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    async fn create_portal_session(
        &self,
        request: &PortalRequest,
    ) -> Result<HostedSession, BillingError> {
        match self.call(BillingRequest::Portal(request.clone())).await? {
            BillingResponse::Session(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    async fn subscription(&self, id: &str) -> Result<Subscription, BillingError> {
        match self
            .call(BillingRequest::Subscription(id.to_owned()))
            .await?
        {
            BillingResponse::Subscription(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }
}
