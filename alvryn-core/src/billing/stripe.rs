//! [`StripeClient`]: the [`Billing`] calls over Stripe's HTTP API.
//!
//! * Authenticated with the secret key as a bearer token; the header is
//!   marked sensitive, and the key appears in no error, log or `Debug`.
//! * Every request pins [`STRIPE_VERSION`], so the objects' shape does
//!   not change under us when the account's default version moves.
//! * Every POST carries an `Idempotency-Key` (the caller's), the same on
//!   every retry of that POST.
//! * 429, 5xx, 409 and connection failures are retried with exponential
//!   backoff and jitter ([`RetryPolicy`]), waiting what `Retry-After`
//!   asks (up to a limit), and never when Stripe answers
//!   `Stripe-Should-Retry: false`.
//! * Stripe's error bodies become [`BillingError::Stripe`] with its type,
//!   code and message.
//! * The API base is configurable (`STRIPE_API_BASE` in the server), but
//!   plain `http` only to a loopback address: the key never crosses a
//!   network in clear text.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use rand::RngExt as _;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use url::Url;

use super::client::{
    Billing, BillingError, CheckoutRequest, HostedSession, NewCustomer, PortalRequest,
};
use super::subscription::Subscription;
use crate::secret::SecretString;

/// Stripe's API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The API version every request pins (`Stripe-Version`).
pub const STRIPE_VERSION: &str = "2025-03-31.basil";
/// The largest answer read from Stripe.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// When and how often a failed call is tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The first backoff; each retry doubles it.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first): the
    /// doubled backoff, capped, with "equal jitter" (half fixed, half
    /// random) so clients that failed together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = super::doubling_delay(self.base_delay, retry, self.max_delay);
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

/// Why a [`StripeClient`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StripeSetupError {
    /// The API base is not an absolute `https` URL (or `http` to a
    /// loopback address).
    #[error("the Stripe API base must be an https URL (plain http only to a loopback address)")]
    InsecureBase,
    /// The secret key cannot be sent in a header.
    #[error("the Stripe secret key contains characters that cannot be sent")]
    BadKey,
    /// The HTTP client could not be built.
    #[error("{0}")]
    Http(String),
}

/// Stripe's HTTP API.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    retry: RetryPolicy,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base.as_str())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may carry the key: https, or http to a loopback host.
fn secure_enough(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Checks an API base as [`StripeClient::new`] does.
///
/// # Errors
/// [`StripeSetupError::InsecureBase`].
pub fn check_api_base(api_base: &str) -> Result<Url, StripeSetupError> {
    let base = Url::parse(api_base).map_err(|_| StripeSetupError::InsecureBase)?;
    if !secure_enough(&base) || base.cannot_be_a_base() {
        return Err(StripeSetupError::InsecureBase);
    }
    Ok(base)
}

impl StripeClient {
    /// A client for `api_base` (normally [`DEFAULT_API_BASE`]) with the
    /// secret key `key`, 15 s per attempt, the default [`RetryPolicy`].
    ///
    /// # Errors
    /// [`StripeSetupError`].
    pub fn new(key: &SecretString, api_base: &str) -> Result<Self, StripeSetupError> {
        let base = check_api_base(api_base)?;
        let mut auth = HeaderValue::try_from(format!("Bearer {}", key.expose()))
            .map_err(|_| StripeSetupError::BadKey)?;
        auth.set_sensitive(true);
        let http = crate::http::client(Duration::from_secs(15)).map_err(StripeSetupError::Http)?;
        Ok(Self {
            http,
            base,
            auth,
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn url(&self, path: &str) -> Result<Url, BillingError> {
        self.base
            .join(path)
            .map_err(|e| BillingError::InvalidResponse(format!("bad request path: {e}")))
    }

    /// POSTs `form` to `path` with the idempotency key; returns the JSON
    /// answer.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<Value, BillingError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let url = self.url(path)?;
        let idem = HeaderValue::try_from(idempotency_key).map_err(|_| {
            BillingError::InvalidResponse("the idempotency key cannot be sent".into())
        })?;
        self.send(|| {
            self.http
                .post(url.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header("Idempotency-Key", idem.clone())
                .body(body.clone())
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Value, BillingError> {
        let url = self.url(path)?;
        self.send(|| self.http.get(url.clone())).await
    }

    /// Sends the request `build` makes, retrying as the policy says.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, BillingError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts.max(1);
            let request = build()
                .header(reqwest::header::AUTHORIZATION, self.auth.clone())
                .header("Stripe-Version", STRIPE_VERSION);
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let why = format!("{}", e.without_url());
                    if last {
                        return Err(BillingError::Unavailable(why));
                    }
                    tracing::warn!(attempt, error = %why, "Stripe unreachable; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let body = match read_capped(response).await {
                Ok(Some(b)) => b,
                // Too large is no transient failure: asking again gets the
                // same answer.
                Ok(None) if status.is_success() => {
                    return Err(BillingError::InvalidResponse(format!(
                        "{status} with an answer larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                // An error answer is judged by its status alone.
                Ok(None) => Vec::new(),
                Err(why) if !last => {
                    tracing::warn!(attempt, error = %why, "reading Stripe's answer failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(why) => return Err(BillingError::Unavailable(why)),
            };
            if status.is_success() {
                return serde_json::from_slice(&body).map_err(|_| {
                    BillingError::InvalidResponse(format!("{status} with a body that is not JSON"))
                });
            }
            let error = stripe_error(status.as_u16(), &body);
            match retry_decision(status.as_u16(), &headers, &self.retry, attempt) {
                Some(wait) if !last => {
                    tracing::warn!(
                        attempt,
                        status = status.as_u16(),
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "Stripe answered with a retryable error; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Some(_) | None if is_retryable_status(status.as_u16()) => {
                    return Err(BillingError::Unavailable(error.to_string()));
                }
                _ => return Err(error),
            }
        }
    }
}

fn is_retryable_status(status: u16) -> bool {
    status == 429 || status == 409 || status >= 500
}

/// How long to wait before retrying an error answer, or `None` for no
/// retry.
fn retry_decision(
    status: u16,
    headers: &HeaderMap,
    policy: &RetryPolicy,
    attempt: u32,
) -> Option<Duration> {
    let should = headers
        .get("stripe-should-retry")
        .and_then(|v| v.to_str().ok());
    match should {
        Some("false") => return None,
        Some("true") => {}
        _ if !is_retryable_status(status) => return None,
        _ => {}
    }
    let backoff = policy.backoff(attempt);
    match headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
    {
        Some(asked) if asked > policy.max_retry_after => None,
        Some(asked) => Some(asked.max(backoff)),
        None => Some(backoff),
    }
}

/// The answer's body, `None` when it is larger than
/// [`MAX_RESPONSE_BYTES`], or why it could not be read.
async fn read_capped(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Stripe's `{"error": {"type", "code", "message"}}`, keys masked.
fn stripe_error(status: u16, body: &[u8]) -> BillingError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&Value::Null);
    let field = |name: &str| e.get(name).and_then(Value::as_str).map(mask_keys);
    BillingError::Stripe {
        status,
        kind: field("type").unwrap_or_else(|| "unknown_error".into()),
        code: field("code"),
        message: field("message").unwrap_or_else(|| format!("HTTP {status} without an error body")),
    }
}

/// Replaces anything shaped like a Stripe key (`sk_live_...`,
/// `rk_test_...`, `whsec_...`) by its prefix and `***`.
fn mask_keys(text: &str) -> String {
    const PREFIXES: [&str; 7] = [
        "sk_live_", "sk_test_", "rk_live_", "rk_test_", "pk_live_", "pk_test_", "whsec_",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str(prefix);
        out.push_str("***");
        let tail = &rest[at + prefix.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '*'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn session(v: &Value, prefix: &str) -> Result<HostedSession, BillingError> {
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| s.starts_with(prefix));
    let url = v
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    match (id, url) {
        (Some(id), Some(url)) => Ok(HostedSession {
            id: id.to_owned(),
            url: url.to_owned(),
        }),
        _ => Err(BillingError::InvalidResponse(format!(
            "a session without a `{prefix}` id or a URL"
        ))),
    }
}

/// Whether `id` may go into a URL path as one segment.
fn is_object_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The form field of our user id in an object's metadata.
const METADATA_USER: &str = "metadata[alvryn_user_id]";

#[async_trait]
impl Billing for StripeClient {
    async fn create_customer(&self, customer: &NewCustomer) -> Result<String, BillingError> {
        let v = self
            .post(
                "/v1/customers",
                &[
                    ("email", &customer.email),
                    (METADATA_USER, &customer.user_id),
                ],
                &customer.idempotency_key,
            )
            .await?;
        v.get("id")
            .and_then(Value::as_str)
            .filter(|id| id.starts_with("cus_"))
            .map(str::to_owned)
            .ok_or_else(|| BillingError::InvalidResponse("a customer without a `cus_` id".into()))
    }

    async fn create_checkout_session(
        &self,
        r: &CheckoutRequest,
    ) -> Result<HostedSession, BillingError> {
        let v = self
            .post(
                "/v1/checkout/sessions",
                &[
                    ("mode", "subscription"),
                    ("customer", &r.customer),
                    ("client_reference_id", &r.user_id),
                    ("line_items[0][price]", r.price.as_str()),
                    ("line_items[0][quantity]", "1"),
                    ("success_url", &r.success_url),
                    ("cancel_url", &r.cancel_url),
                    (METADATA_USER, &r.user_id),
                    ("subscription_data[metadata][alvryn_user_id]", &r.user_id),
                ],
                &r.idempotency_key,
            )
            .await?;
        session(&v, "cs_")
    }

    async fn create_portal_session(
        &self,
        r: &PortalRequest,
    ) -> Result<HostedSession, BillingError> {
        let v = self
            .post(
                "/v1/billing_portal/sessions",
                &[("customer", &r.customer), ("return_url", &r.return_url)],
                &r.idempotency_key,
            )
            .await?;
        session(&v, "bps_")
    }

    async fn subscription(&self, id: &str) -> Result<Subscription, BillingError> {
        if !is_object_id(id) {
            return Err(BillingError::Stripe {
                status: 404,
                kind: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                message: "not a subscription id".into(),
            });
        }
        let v = self.get(&format!("/v1/subscriptions/{id}")).await?;
        Ok(Subscription::from_json(&v)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_field_names_the_shared_key() {
        let key = crate::billing::subscription::USER_METADATA_KEY;
        assert_eq!(METADATA_USER, format!("metadata[{key}]"));
    }

    #[test]
    fn keys_are_masked_in_stripe_messages() {
        assert_eq!(
            mask_keys("Invalid API Key provided: sk_test_abc123XYZ, also whsec_q1w2."),
            "Invalid API Key provided: sk_test_***, also whsec_***."
        );
        assert_eq!(mask_keys("sk_test_****1234"), "sk_test_***");
        assert_eq!(mask_keys("no key here"), "no key here");
    }

    #[test]
    fn only_https_or_loopback_http_may_carry_the_key() {
        let key = SecretString::from("sk_test_x");
        assert!(StripeClient::new(&key, "https://api.stripe.com").is_ok());
        assert!(StripeClient::new(&key, "http://127.0.0.1:12111").is_ok());
        assert!(StripeClient::new(&key, "http://localhost:1").is_ok());
        for bad in [
            "http://stripe.example.com",
            "ftp://x",
            "not a url",
            "http://10.0.0.1",
        ] {
            assert!(
                matches!(
                    StripeClient::new(&key, bad),
                    Err(StripeSetupError::InsecureBase)
                ),
                "{bad}"
            );
        }
        let printed = format!("{:?}", StripeClient::new(&key, DEFAULT_API_BASE).unwrap());
        assert!(!printed.contains("sk_test_x"), "{printed}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy::default();
        for retry in 1..10 {
            let exp = p
                .base_delay
                .saturating_mul(1 << (retry - 1))
                .min(p.max_delay);
            let d = p.backoff(retry);
            assert!(d >= exp / 2 && d <= exp, "retry {retry}: {d:?} vs {exp:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit_and_should_retry_wins() {
        let p = RetryPolicy::default();
        let mut h = HeaderMap::new();
        assert!(retry_decision(400, &h, &p, 1).is_none());
        assert!(retry_decision(500, &h, &p, 1).is_some());
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_decision(429, &h, &p, 1), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(retry_decision(429, &h, &p, 1), None);
        h.remove("retry-after");
        h.insert("stripe-should-retry", HeaderValue::from_static("false"));
        assert_eq!(retry_decision(503, &h, &p, 1), None);
        h.insert("stripe-should-retry", HeaderValue::from_static("true"));
        assert!(retry_decision(400, &h, &p, 1).is_some());
    }

    #[test]
    fn error_bodies_become_typed_errors() {
        let e = stripe_error(
            404,
            br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such subscription: 'sub_x'"}}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "Stripe refused the request (404, invalid_request_error, resource_missing): No such subscription: 'sub_x'"
        );
        let e = stripe_error(502, b"<html>bad gateway</html>");
        assert!(e.to_string().contains("HTTP 502 without an error body"));
    }
}
