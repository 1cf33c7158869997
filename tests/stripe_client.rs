//! `StripeClient` over HTTP, from the outside.
//!
//! * Against a test double of the Stripe endpoints localstripe lacks
//!   (Checkout Sessions, billing-portal sessions; also a subscription in
//!   the current API shape): an axum server on 127.0.0.1:0 inside each
//!   test that checks the exact headers and form fields Stripe documents,
//!   answers with Stripe's published fixtures (`testdata/stripe/fixtures3.json`)
//!   and records every request, so retries are counted, never timed. A
//!   per-test script makes it fail first (429, 500, hang, endless body...).
//! * Against localstripe (`ALVRYN_TEST_LOCALSTRIPE_URL`, started by
//!   `scripts/test`): a real customer, and a subscription the test creates
//!   by hand (playing Stripe Checkout), read back active, then canceled.
//!   Without the variable these tests print SKIPPED and pass, unless
//!   `ALVRYN_TEST_REQUIRE_SERVICES` is set.
//!
//! Every error any test gets is checked for the secret key in its
//! `Display` and `Debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;
mod support;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alvryn::core::SecretString;
use alvryn::core::billing::stripe::STRIPE_VERSION;
use alvryn::core::billing::{
    Billing, BillingError, BillingService, CheckoutRequest, HostedSession, NewCustomer,
    PortalRequest, PriceId, RetryPolicy, ServiceBilling, StripeClient,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt as _;
use rand::RngExt as _;
use serde_json::{Value, json};

/// The secret key every client here uses; no error or `Debug` may show it.
const KEY: &str = "sk_test_DoNotLeak1234567890";
/// The part of [`KEY`] that must never be printed.
const KEY_SECRET_PART: &str = "DoNotLeak";
const LOCALSTRIPE: &str = "ALVRYN_TEST_LOCALSTRIPE_URL";
/// One chunk of an endless answer (the client reads at most 1 MiB).
const PAD_CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Shared helpers

use stripe_support::resource;

/// `n` random characters from `[a-z0-9]`, like the tail of a Stripe id.
fn random_tail(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// A retry policy with small delays; `max_retry_after` stays at 10 s.
fn fast(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(10),
    }
}

fn client_for(base: &str, policy: RetryPolicy) -> StripeClient {
    StripeClient::new(&SecretString::from(KEY), base)
        .unwrap()
        .with_retry(policy)
}

/// Fails if `text` shows the secret key.
fn assert_no_key(text: &str) {
    assert!(
        !text.contains(KEY_SECRET_PART),
        "the secret key leaked: {text}"
    );
}

/// The error of `result`, after checking it does not show the key.
fn error_of<T: std::fmt::Debug>(result: Result<T, BillingError>) -> BillingError {
    let e = result.expect_err("the call should have failed");
    assert_no_key(&e.to_string());
    assert_no_key(&format!("{e:?}"));
    e
}

/// The body Stripe sends with an error.
fn error_body(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Value {
    let mut e = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        e["code"] = json!(code);
    }
    if let Some(param) = param {
        e["param"] = json!(param);
    }
    json!({ "error": e })
}

fn checkout_request() -> CheckoutRequest {
    CheckoutRequest {
        customer: "cus_QXg1o8vcGmoR32".into(),
        user_id: "u_7f3a9c".into(),
        price: PriceId::new("price_1PgafmB7WZ01zgkW6dKueIc5").unwrap(),
        // `?`, `=`, `&` and `{}` must survive the form encoding.
        success_url:
            "https://app.example/billing/done?session_id={CHECKOUT_SESSION_ID}&from=alvryn".into(),
        cancel_url: "https://app.example/billing".into(),
        idempotency_key: "checkout-u_7f3a9c-1".into(),
    }
}

fn portal_request() -> PortalRequest {
    PortalRequest {
        customer: "cus_QXg1o8vcGmoR32".into(),
        return_url: "https://app.example/account?tab=billing".into(),
        idempotency_key: "portal-u_7f3a9c-1".into(),
    }
}

// ---------------------------------------------------------------------------
// The Stripe test double

/// What the double does with the next request.
#[derive(Clone)]
enum Step {
    /// Checks the request and answers as Stripe does.
    Stripe,
    /// Answers this, whatever was asked.
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        content_type: &'static str,
        body: String,
    },
    /// Never answers.
    Hang,
    /// This status with a JSON body that never ends.
    Endless(u16),
}

impl Step {
    fn json(status: u16, body: &Value) -> Step {
        Step::Reply {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    fn text(status: u16, body: &str) -> Step {
        Step::Reply {
            status,
            headers: Vec::new(),
            content_type: "text/html",
            body: body.into(),
        }
    }

    /// A Stripe error answer.
    fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Step {
        Step::json(status, &error_body(kind, code, message, None))
    }

    fn header(mut self, name: &'static str, value: &str) -> Step {
        if let Step::Reply { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }
}

/// One request the double received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    form: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn form_map(&self) -> BTreeMap<&str, &str> {
        self.form
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

struct Shared {
    script: Mutex<VecDeque<Step>>,
    /// What to do once the script is used up.
    then: Step,
    seen: Mutex<Vec<Seen>>,
}

struct Mock {
    base: String,
    shared: Arc<Shared>,
}

impl Mock {
    /// A double that plays `script`, then `then` for every later request.
    async fn start(script: impl IntoIterator<Item = Step>, then: Step) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into_iter().collect()),
            then,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock {
            base: format!("http://{addr}"),
            shared,
        }
    }

    /// A double that answers every request as Stripe does.
    async fn stripe() -> Mock {
        Mock::start([], Step::Stripe).await
    }

    fn client(&self, policy: RetryPolicy) -> StripeClient {
        client_for(&self.base, policy)
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method,
        path: uri.path().to_owned(),
        headers,
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    shared.seen.lock().unwrap().push(seen.clone());
    let step = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| shared.then.clone());
    match step {
        Step::Stripe => match like_stripe(&seen) {
            Ok(object) => stripe_json(StatusCode::OK, &object),
            Err((status, error)) => stripe_json(status, &error),
        },
        Step::Reply {
            status,
            headers,
            content_type,
            body,
        } => {
            let mut r = Response::builder()
                .status(status)
                .header("content-type", content_type);
            for (name, value) in headers {
                r = r.header(name, value);
            }
            r.body(Body::from(body)).unwrap()
        }
        Step::Hang => std::future::pending().await,
        Step::Endless(status) => {
            let head = futures_util::stream::once(async {
                Ok::<_, Infallible>(Bytes::from_static(b"{\"id\":\"cs_test_big\",\"pad\":\""))
            });
            let pad = futures_util::stream::repeat_with(|| Ok(Bytes::from(vec![b'x'; PAD_CHUNK])));
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from_stream(head.chain(pad)))
                .unwrap()
        }
    }
}

fn stripe_json(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", format!("req_{}", random_tail(14)))
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// An error Stripe would answer: the status and the error body.
type Refusal = (StatusCode, Value);

/// Stripe's 400 `invalid_request_error` about `param`.
fn invalid(message: &str, param: &str) -> Refusal {
    (
        StatusCode::BAD_REQUEST,
        error_body("invalid_request_error", None, message, Some(param)),
    )
}

/// The fields of a Checkout Session in subscription mode, as alvryn
/// creates it (names from Stripe's API reference).
const CHECKOUT_FIELDS: [&str; 9] = [
    "mode",
    "customer",
    "client_reference_id",
    "line_items[0][price]",
    "line_items[0][quantity]",
    "success_url",
    "cancel_url",
    "metadata[alvryn_user_id]",
    "subscription_data[metadata][alvryn_user_id]",
];
const CHECKOUT_FIXED: [(&str, &str); 2] =
    [("mode", "subscription"), ("line_items[0][quantity]", "1")];
const PORTAL_FIELDS: [&str; 2] = ["customer", "return_url"];

/// The object Stripe would answer `seen` with, or its refusal.
fn like_stripe(seen: &Seen) -> Result<Value, Refusal> {
    check_common_headers(seen)?;
    let path = seen.path.as_str();
    if seen.method == Method::POST && path == "/v1/checkout/sessions" {
        let form = check_form(seen, &CHECKOUT_FIELDS, &CHECKOUT_FIXED)?;
        return Ok(checkout_session(&form));
    }
    if seen.method == Method::POST && path == "/v1/billing_portal/sessions" {
        let form = check_form(seen, &PORTAL_FIELDS, &[])?;
        return Ok(portal_session(&form));
    }
    if seen.method == Method::GET
        && let Some(id) = path.strip_prefix("/v1/subscriptions/")
    {
        return Ok(subscription_object(id));
    }
    Err((
        StatusCode::NOT_FOUND,
        error_body(
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({}: {path}).", seen.method),
            None,
        ),
    ))
}

fn check_common_headers(seen: &Seen) -> Result<(), Refusal> {
    if seen.header("authorization") != Some(&format!("Bearer {KEY}")) {
        return Err((
            StatusCode::UNAUTHORIZED,
            error_body(
                "invalid_request_error",
                None,
                "You did not provide a valid API key.",
                None,
            ),
        ));
    }
    if seen.header("stripe-version") != Some(STRIPE_VERSION) {
        return Err(invalid("Invalid Stripe API version.", "Stripe-Version"));
    }
    if seen.method == Method::POST {
        if seen.header("content-type") != Some("application/x-www-form-urlencoded") {
            return Err(invalid(
                "Requests must be application/x-www-form-urlencoded.",
                "Content-Type",
            ));
        }
        if seen.header("idempotency-key").is_none_or(str::is_empty) {
            return Err(invalid(
                "This test double requires an Idempotency-Key on every POST.",
                "Idempotency-Key",
            ));
        }
    }
    Ok(())
}

/// The form as a map, when it has exactly `fields` (each once, none
/// empty) and the `fixed` values.
fn check_form<'a>(
    seen: &'a Seen,
    fields: &[&str],
    fixed: &[(&str, &str)],
) -> Result<BTreeMap<&'a str, &'a str>, Refusal> {
    let mut form = BTreeMap::new();
    for (k, v) in &seen.form {
        if !fields.contains(&k.as_str()) {
            return Err(invalid(&format!("Received unknown parameter: {k}"), k));
        }
        if form.insert(k.as_str(), v.as_str()).is_some() {
            return Err(invalid(&format!("Received {k} more than once."), k));
        }
        if v.is_empty() {
            return Err(invalid(
                &format!("You passed an empty string for '{k}'."),
                k,
            ));
        }
    }
    if let Some(missing) = fields.iter().find(|f| !form.contains_key(*f)) {
        return Err(invalid(
            &format!("Missing required param: {missing}."),
            missing,
        ));
    }
    if let Some((k, want)) = fixed.iter().find(|(k, want)| form[k] != *want) {
        return Err(invalid(&format!("Invalid {k}: must be {want}"), k));
    }
    Ok(form)
}

fn checkout_session(form: &BTreeMap<&str, &str>) -> Value {
    let mut s = resource("checkout.session");
    let id = format!("cs_test_{}", random_tail(58));
    s["url"] = json!(format!("https://checkout.stripe.com/c/pay/{id}"));
    s["id"] = json!(id);
    s["livemode"] = json!(false);
    s["mode"] = json!("subscription");
    s["payment_intent"] = Value::Null;
    s["customer"] = json!(form["customer"]);
    s["client_reference_id"] = json!(form["client_reference_id"]);
    s["success_url"] = json!(form["success_url"]);
    s["cancel_url"] = json!(form["cancel_url"]);
    s["metadata"] = json!({ "alvryn_user_id": form["metadata[alvryn_user_id]"] });
    s
}

fn portal_session(form: &BTreeMap<&str, &str>) -> Value {
    let mut s = resource("billing_portal.session");
    s["id"] = json!(format!("bps_{}", random_tail(24)));
    s["url"] = json!(format!(
        "https://billing.stripe.com/p/session/test_{}",
        random_tail(32)
    ));
    s["livemode"] = json!(false);
    s["flow"] = Value::Null;
    s["customer"] = json!(form["customer"]);
    s["return_url"] = json!(form["return_url"]);
    s
}

/// The user id the double's subscriptions carry in their metadata.
const FIXTURE_USER: &str = "u_fixture";

fn subscription_object(id: &str) -> Value {
    let mut s = resource("subscription");
    s["id"] = json!(id);
    s["metadata"] = json!({ "alvryn_user_id": FIXTURE_USER });
    s
}

/// Runs a checkout against a double playing `script` then `then`; returns
/// the outcome and every request the double saw.
async fn checkout_against(
    script: impl IntoIterator<Item = Step>,
    then: Step,
    policy: RetryPolicy,
) -> (Result<HostedSession, BillingError>, Vec<Seen>) {
    let mock = Mock::start(script, then).await;
    let result = mock
        .client(policy)
        .create_checkout_session(&checkout_request())
        .await;
    (result, mock.seen())
}

fn assert_unavailable(e: &BillingError) {
    assert!(matches!(e, BillingError::Unavailable(_)), "{e:?}");
}

// ---------------------------------------------------------------------------
// Requests as Stripe documents them

#[tokio::test]
async fn checkout_session_sends_exactly_the_documented_form_and_headers() {
    let mock = Mock::stripe().await;
    let r = checkout_request();
    let session = mock
        .client(fast(1))
        .create_checkout_session(&r)
        .await
        .unwrap();

    assert!(session.id.starts_with("cs_test_"), "{session:?}");
    assert_eq!(
        session.url,
        format!("https://checkout.stripe.com/c/pay/{}", session.id)
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v1/checkout/sessions");
    assert_eq!(req.header("stripe-version"), Some(STRIPE_VERSION));
    assert_eq!(
        req.header("idempotency-key"),
        Some(r.idempotency_key.as_str())
    );
    assert_eq!(req.header("authorization"), Some(&*format!("Bearer {KEY}")));
    assert_eq!(
        req.form_map(),
        BTreeMap::from([
            ("mode", "subscription"),
            ("customer", r.customer.as_str()),
            ("client_reference_id", r.user_id.as_str()),
            ("line_items[0][price]", r.price.as_str()),
            ("line_items[0][quantity]", "1"),
            ("success_url", r.success_url.as_str()),
            ("cancel_url", r.cancel_url.as_str()),
            ("metadata[alvryn_user_id]", r.user_id.as_str()),
            (
                "subscription_data[metadata][alvryn_user_id]",
                r.user_id.as_str()
            ),
        ])
    );
}

#[tokio::test]
async fn portal_session_sends_exactly_the_documented_form_and_headers() {
    let mock = Mock::stripe().await;
    let r = portal_request();
    let session = mock
        .client(fast(1))
        .create_portal_session(&r)
        .await
        .unwrap();

    assert!(session.id.starts_with("bps_"), "{session:?}");
    assert!(
        session
            .url
            .starts_with("https://billing.stripe.com/p/session/test_"),
        "{session:?}"
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/billing_portal/sessions");
    assert_eq!(
        seen[0].header("idempotency-key"),
        Some(r.idempotency_key.as_str())
    );
    assert_eq!(
        seen[0].form_map(),
        BTreeMap::from([
            ("customer", r.customer.as_str()),
            ("return_url", r.return_url.as_str()),
        ])
    );
}

#[tokio::test]
async fn a_subscription_in_the_current_api_shape_is_read() {
    // Since 2025-03-31.basil the period is on the items and each item
    // names a `price` object: Stripe's own fixture has exactly that.
    let mock = Mock::stripe().await;
    let sub = mock
        .client(fast(1))
        .subscription("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
        .await
        .unwrap();

    assert_eq!(sub.id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
    assert_eq!(sub.customer, "cus_QXg1o8vcGmoR32");
    assert_eq!(sub.status, "active");
    assert_eq!(sub.prices, ["price_1PgafmB7WZ01zgkW6dKueIc5"]);
    assert_eq!(sub.current_period_end, Some(976_287_773));
    assert!(sub.cancel_at_period_end);
    assert_eq!(sub.user_id.as_deref(), Some(FIXTURE_USER));
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(
        seen[0].path,
        "/v1/subscriptions/sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
    );
}

#[tokio::test]
async fn ids_that_would_change_the_path_are_refused_without_a_request() {
    let mock = Mock::stripe().await;
    let client = mock.client(fast(1));
    for id in [
        "sub_1/../customers",
        "sub_1/../../v1/customers",
        "../customers",
        "sub_1%2F..%2Fcustomers",
        "sub_1?expand[]=customer",
        "sub_1#x",
        "",
    ] {
        let e = error_of(client.subscription(id).await);
        assert!(e.is_not_found(), "{id}: {e:?}");
    }
    assert_eq!(mock.seen().len(), 0, "{:?}", mock.seen());
}

// ---------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn throttled_then_failing_then_ok_is_retried_with_one_idempotency_key() {
    let throttled = Step::error(
        429,
        "invalid_request_error",
        Some("rate_limit"),
        "Too many requests hit the API too quickly.",
    )
    .header("retry-after", "1");
    let failing = Step::error(
        500,
        "api_error",
        None,
        "Something went wrong on Stripe's end.",
    );
    let (result, seen) = checkout_against([throttled, failing], Step::Stripe, fast(4)).await;

    let session = result.unwrap();
    assert!(session.id.starts_with("cs_test_"), "{session:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    let keys: Vec<_> = seen.iter().map(|s| s.header("idempotency-key")).collect();
    assert_eq!(keys, [Some(checkout_request().idempotency_key.as_str()); 3]);
    // Every attempt is the same request.
    assert!(seen.iter().all(|s| s.form == seen[0].form), "{seen:?}");
}

#[tokio::test]
async fn a_stripe_failing_forever_is_unavailable_after_max_attempts() {
    // localstripe's text/plain 500: an error body that is not JSON.
    let broken = Step::text(
        500,
        "500 Internal Server Error\n\nServer got itself in trouble",
    );
    let (result, seen) = checkout_against([], broken, fast(3)).await;

    let e = error_of(result);
    assert_unavailable(&e);
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn stripe_should_retry_false_stops_the_retries() {
    let no_retry = Step::error(
        500,
        "api_error",
        None,
        "The request failed and will not succeed.",
    )
    .header("stripe-should-retry", "false");
    let (result, seen) = checkout_against([], no_retry, fast(4)).await;

    assert_unavailable(&error_of(result));
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_gives_up_at_once() {
    let throttled = Step::error(
        429,
        "invalid_request_error",
        Some("rate_limit"),
        "Too many requests hit the API too quickly.",
    )
    .header("retry-after", "3600");
    let (result, seen) = checkout_against([], throttled, fast(4)).await;

    assert_unavailable(&error_of(result));
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_refusal_is_a_typed_stripe_error_and_is_not_retried() {
    let refusal = Step::json(
        400,
        &error_body(
            "invalid_request_error",
            Some("resource_missing"),
            "No such price: 'price_1PgafmB7WZ01zgkW6dKueIc5'",
            Some("line_items[0][price]"),
        ),
    );
    let (result, seen) = checkout_against([], refusal, fast(4)).await;

    match error_of(result) {
        BillingError::Stripe {
            status,
            kind,
            code,
            message,
        } => {
            assert_eq!(status, 400);
            assert_eq!(kind, "invalid_request_error");
            assert_eq!(code.as_deref(), Some("resource_missing"));
            assert_eq!(message, "No such price: 'price_1PgafmB7WZ01zgkW6dKueIc5'");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let e = error_of(
        client_for(&closed, fast(3))
            .create_checkout_session(&checkout_request())
            .await,
    );
    assert_unavailable(&e);
}

#[tokio::test]
async fn dropped_connections_are_retried_up_to_max_attempts() {
    // A server that accepts and hangs up at once: every attempt is a
    // transport failure, and each one is one accepted connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let e = error_of(
        client_for(&format!("http://{addr}"), fast(3))
            .create_checkout_session(&checkout_request())
            .await,
    );
    assert_unavailable(&e);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------
// Answers the client cannot use

#[tokio::test]
async fn a_success_that_is_not_json_is_an_invalid_response() {
    let html = Step::text(200, "<html><body>Welcome to nginx!</body></html>");
    let (result, seen) = checkout_against([], html, fast(4)).await;

    let e = error_of(result);
    assert!(matches!(e, BillingError::InvalidResponse(_)), "{e:?}");
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn an_endless_answer_is_cut_at_the_size_limit() {
    // Without the limit the client would read until its 30 s timeout and
    // call Stripe unavailable; with it, it stops after 1 MiB, at once.
    let (result, seen) = checkout_against([], Step::Endless(200), fast(4)).await;

    let e = error_of(result);
    assert!(matches!(e, BillingError::InvalidResponse(_)), "{e:?}");
    assert!(e.to_string().contains("larger than"), "{e}");
    assert_eq!(seen.len(), 1, "a too-large answer is not asked for again");
}

#[tokio::test]
async fn an_endless_error_answer_is_judged_by_its_status() {
    // A 400 is final whatever its body; a 503 is retried, then unavailable.
    let (result, seen) = checkout_against([], Step::Endless(400), fast(4)).await;
    let e = error_of(result);
    assert!(
        matches!(e, BillingError::Stripe { status: 400, .. }),
        "{e:?}"
    );
    assert_eq!(seen.len(), 1);

    let (result, seen) = checkout_against([], Step::Endless(503), fast(3)).await;
    assert_unavailable(&error_of(result));
    assert_eq!(seen.len(), 3);
}

// ---------------------------------------------------------------------------
// The key stays secret

#[tokio::test]
async fn a_stripe_message_echoing_the_key_is_masked() {
    let echo = Step::error(
        401,
        "invalid_request_error",
        None,
        &format!("Invalid API Key provided: {KEY}"),
    );
    let (result, _) = checkout_against([], echo, fast(4)).await;

    match error_of(result) {
        BillingError::Stripe {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            assert_eq!(message, "Invalid API Key provided: sk_test_***");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_key_is_not_in_the_debug_of_the_client_or_its_tower_view() {
    let client = client_for("https://api.stripe.com", fast(1));
    let printed = format!("{client:?}");
    assert!(printed.contains("api.stripe.com"), "{printed}");
    assert_no_key(&printed);
    let service = BillingService::new(Arc::new(client));
    assert_no_key(&format!("{service:?}"));
    assert_no_key(&format!("{:?}", ServiceBilling::new(service)));
}

// ---------------------------------------------------------------------------
// The tower view

/// The client behind `BillingService`, a `Timeout` layer and
/// `ServiceBilling`.
fn with_timeout(client: StripeClient, timeout: Duration) -> impl Billing {
    ServiceBilling::new(
        tower::ServiceBuilder::new()
            .timeout(timeout)
            .service(BillingService::new(Arc::new(client))),
    )
}

#[tokio::test]
async fn a_tower_timeout_turns_a_hanging_stripe_into_unavailable() {
    let mock = Mock::start([], Step::Hang).await;
    // Long enough that the request surely reaches the mock first on a
    // loaded machine; the mock hangs for ever anyway.
    let billing = with_timeout(mock.client(fast(1)), Duration::from_secs(3));

    let e = error_of(billing.create_checkout_session(&checkout_request()).await);
    assert_unavailable(&e);
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(
        mock.seen().len(),
        1,
        "the request reached Stripe, then hung"
    );
}

#[tokio::test]
async fn the_tower_view_passes_sessions_and_stripe_errors_through() {
    let refusal = Step::error(
        400,
        "invalid_request_error",
        Some("resource_missing"),
        "No such customer: 'cus_QXg1o8vcGmoR32'",
    );
    let mock = Mock::start([refusal], Step::Stripe).await;
    let billing = with_timeout(mock.client(fast(1)), Duration::from_secs(10));

    // Stripe's refusal keeps its type through the layers (not flattened
    // into "unavailable").
    let e = error_of(billing.create_checkout_session(&checkout_request()).await);
    assert!(
        matches!(&e, BillingError::Stripe { status: 400, code: Some(c), .. } if c == "resource_missing"),
        "{e:?}"
    );
    let portal = billing
        .create_portal_session(&portal_request())
        .await
        .unwrap();
    assert!(portal.id.starts_with("bps_"), "{portal:?}");
    let sub = billing
        .subscription("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
        .await
        .unwrap();
    assert_eq!(sub.user_id.as_deref(), Some(FIXTURE_USER));
    assert_eq!(mock.seen().len(), 3);
}

// ---------------------------------------------------------------------------
// localstripe

/// A successful localstripe request with the test key; its JSON.
fn localstripe_ok(base: &str, method: &str, path: &str, form: &[(&str, &str)]) -> Value {
    support::localstripe_ok(base, KEY, method, path, form)
}

/// A fresh user of ours and their Stripe customer, created by the client.
async fn localstripe_customer(client: &StripeClient) -> (String, String, String) {
    let user = format!("u_{}", random_tail(12));
    let email = format!("{user}@example.com");
    let customer = client
        .create_customer(&NewCustomer {
            user_id: user.clone(),
            email: email.clone(),
            idempotency_key: format!("customer-{user}"),
        })
        .await
        .unwrap();
    (user, email, customer)
}

#[tokio::test]
async fn localstripe_create_customer_makes_a_real_customer() {
    let Some(base) = support::service(LOCALSTRIPE) else {
        return;
    };
    let client = client_for(&base, fast(2));
    let (user, email, id) = localstripe_customer(&client).await;

    assert!(id.starts_with("cus_"), "{id}");
    let c = localstripe_ok(&base, "GET", &format!("/v1/customers/{id}"), &[]);
    assert_eq!(c["email"], json!(email));
    assert_eq!(c["metadata"]["alvryn_user_id"], json!(user));
}

#[tokio::test]
async fn localstripe_subscription_reads_active_then_canceled() {
    let Some(base) = support::service(LOCALSTRIPE) else {
        return;
    };
    let client = client_for(&base, fast(2));
    let (user, _, customer) = localstripe_customer(&client).await;
    // The test plays Stripe Checkout.
    let price = format!("price_{}", random_tail(12));
    let created = support::localstripe_subscribe(&base, KEY, &customer, &user, &price);
    let id = created["id"].as_str().unwrap();

    let sub = client.subscription(id).await.unwrap();
    assert_eq!(sub.id, id);
    assert_eq!(sub.customer, customer);
    assert_eq!(sub.status, "active");
    assert!(sub.grants_access());
    assert_eq!(sub.prices, [price.as_str()]);
    assert!(
        sub.current_period_end.is_some_and(|end| end > sub.created),
        "{sub:?}"
    );
    assert!(!sub.cancel_at_period_end);
    assert_eq!(sub.user_id.as_deref(), Some(user.as_str()));

    localstripe_ok(&base, "DELETE", &format!("/v1/subscriptions/{id}"), &[]);
    let canceled = client.subscription(id).await.unwrap();
    assert_eq!(canceled.status, "canceled");
    assert!(!canceled.grants_access());
}

#[tokio::test]
async fn localstripe_unknown_subscription_is_not_found() {
    let Some(base) = support::service(LOCALSTRIPE) else {
        return;
    };
    let client = client_for(&base, fast(3));
    let e = error_of(
        client
            .subscription(&format!("sub_{}", random_tail(14)))
            .await,
    );
    assert!(e.is_not_found(), "{e:?}");
    match e {
        BillingError::Stripe {
            status,
            kind,
            message,
            ..
        } => {
            assert_eq!(status, 404);
            assert_eq!(kind, "invalid_request_error");
            assert_eq!(message, "Not Found");
        }
        other => panic!("{other:?}"),
    }
}
