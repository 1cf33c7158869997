//! The HTTP application in process, driven with `tower::ServiceExt::oneshot`
//! and no socket: what socket tests cannot arrange. The state is built
//! from parts (`AppState::from_parts`) over a memory store behind a
//! fault-injecting tower layer, so a test can make the store fail, panic
//! or hang on demand, and send request bodies that fail mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use alvryn::core::SecretBytes;
use alvryn::core::auth::{HashParams, PasswordHasher};
use alvryn::core::billing::DatabaseArchive;
use alvryn::core::crypto::{FieldCipher, KeyMaterial, KeySet};
use alvryn::core::store::{MemoryStore, ServiceStore, StoreBackend, StoreService};
use alvryn::core::token::{HmacSecrets, JwtKeys, JwtSettings};
use alvryn::server::config::{Config, Overrides};
use alvryn::server::{AppState, Parts, app};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Words that appear only in the injected failures: a client must never
/// see them.
const STORE_SECRET: &str = "mongodb://app:hunter2@db.internal";
const TRANSPORT_SECRET: &str = "reset by 10.0.0.7:51544 while reading secret-frame";

/// What the store does with the next operation.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Mode {
    Serve = 0,
    Fail = 1,
    Panic = 2,
    Hang = 3,
}

/// A tower layer over the store's service view that serves, fails,
/// panics or never answers, as the test switches it.
#[derive(Clone)]
struct Faulty<S> {
    inner: S,
    mode: Arc<AtomicU8>,
}

impl<S, R> tower::Service<R> for Faulty<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let mode = self.mode.load(Ordering::SeqCst);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match mode {
                m if m == Mode::Fail as u8 => Err(format!(
                    "connection refused: {STORE_SECRET} (server selection timeout)"
                )
                .into()),
                m if m == Mode::Panic as u8 => panic!("the store exploded: {STORE_SECRET}"),
                m if m == Mode::Hang as u8 => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => fut.await.map_err(Into::into),
            }
        })
    }
}

struct Harness {
    state: AppState,
    mode: Arc<AtomicU8>,
}

impl Harness {
    /// A state over a memory store, with 1 s request and body timeouts.
    fn new() -> Harness {
        Self::with_vars(&[])
    }

    /// As [`Harness::new`], with more configuration; Stripe settings
    /// add billing, with the event archive in the (faulty) store.
    fn with_vars(extra: &[(&'static str, &'static str)]) -> Harness {
        let mut vars: HashMap<&str, &str> = [
            ("ALVRYN_REQUEST_TIMEOUT_SECONDS", "1"),
            ("ALVRYN_BODY_TIMEOUT_SECONDS", "1"),
        ]
        .into();
        vars.extend(extra.iter().copied());
        let config = Config::from_lookup(
            &|name| vars.get(name).map(OsString::from),
            &Overrides::default(),
        )
        .unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Serve as u8));
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn StoreBackend> = Arc::new(ServiceStore::new(Faulty {
            inner: StoreService::from_arc(memory),
            mode: Arc::clone(&mode),
        }));
        let cipher = FieldCipher::builder(
            KeySet::single(KeyMaterial::fingerprinted(SecretBytes::copy_from(&[7; 32]))),
            Arc::clone(&store) as _,
        )
        .build()
        .unwrap();
        let secret = |b: u8| HmacSecrets::new(&SecretBytes::copy_from(&[b; 32]), None).unwrap();
        let jwt = JwtKeys::new(
            JwtSettings::new("http://in-process.test", "alvryn"),
            secret(1),
            secret(2),
        );
        // Small argon2 parameters: these tests are about the HTTP layer.
        let hasher = PasswordHasher::new(HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        let mut parts = Parts::new(config, Arc::clone(&store), cipher, jwt, hasher);
        if let Some(stripe) = &parts.config.stripe {
            let client = alvryn::server::billing::stripe_client(stripe).unwrap();
            parts = parts.with_billing(client, Arc::new(DatabaseArchive::new(store)));
        }
        Harness {
            state: AppState::from_parts(parts),
            mode,
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value, String) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let json_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(json_type, "{status}: not JSON: {text}");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body, text)
    }

    /// Signs up (the store serving) and returns the access token.
    async fn signup(&self, email: &str) -> String {
        self.signup_tokens(email).await.0
    }

    /// Signs up and returns the access and refresh tokens.
    async fn signup_tokens(&self, email: &str) -> (String, String) {
        let (status, body, text) = self
            .send(json_post(
                "/auth/signup",
                &json!({"email": email, "password": "correct horse battery staple"}),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let token = |name: &str| body[name].as_str().unwrap().to_owned();
        (token("access_token"), token("refresh_token"))
    }
}

fn json_post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_bearer(method: &str, path: &str, token: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_store_outage_is_503_unavailable_and_names_nothing_inside() {
    let h = Harness::new();
    let (token, refresh) = h.signup_tokens("outage@example.com").await;
    h.set(Mode::Fail);
    let requests = [
        json_post(
            "/auth/signup",
            &json!({"email": "new@example.com", "password": "correct horse battery staple"}),
        ),
        json_post(
            "/auth/login",
            &json!({"email": "outage@example.com", "password": "correct horse battery staple"}),
        ),
        json_post("/auth/refresh", &json!({ "refresh_token": refresh })),
        with_bearer("GET", "/auth/me", &token),
        with_bearer("GET", "/auth/sessions", &token),
    ];
    for req in requests {
        let path = req.uri().path().to_owned();
        let (status, body, text) = h.send(req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {text}");
        assert_eq!(code(&body), "unavailable", "{path}: {text}");
        assert!(!text.contains("hunter2"), "{path}: {text}");
        assert!(!text.contains("connection refused"), "{path}: {text}");
    }
    // Back up: nothing was lost, the same tokens work again.
    h.set(Mode::Serve);
    let (status, _, text) = h.send(with_bearer("GET", "/auth/me", &token)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _, text) = h
        .send(json_post(
            "/auth/refresh",
            &json!({ "refresh_token": refresh }),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn a_panic_is_a_json_500_and_the_server_goes_on() {
    let h = Harness::new();
    let token = h.signup("panic@example.com").await;
    h.set(Mode::Panic);
    let (status, body, text) = h.send(with_bearer("GET", "/auth/me", &token)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert_eq!(code(&body), "internal");
    assert!(
        !text.contains("exploded") && !text.contains("hunter2"),
        "{text}"
    );
    h.set(Mode::Serve);
    let (status, _, text) = h.send(with_bearer("GET", "/auth/me", &token)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn a_hanging_store_is_503_timeout_within_the_request_timeout() {
    let h = Harness::new();
    let token = h.signup("hang@example.com").await;
    h.set(Mode::Hang);
    let (status, body, text) = h.send(with_bearer("GET", "/auth/me", &token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(code(&body), "timeout", "{text}");
}

#[tokio::test]
async fn a_bad_path_segment_is_a_json_400() {
    let h = Harness::new();
    let token = h.signup("path@example.com").await;
    // Percent-encoding that is not UTF-8, and one that is cut short.
    for path in ["/auth/sessions/%FF%FE", "/auth/sessions/%C3"] {
        let (status, body, text) = h.send(with_bearer("DELETE", path, &token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert_eq!(code(&body), "invalid_path", "{path}: {text}");
    }
    // A well-formed id that names no session is still a 404.
    let (status, body, _) = h
        .send(with_bearer("DELETE", "/auth/sessions/nope", &token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "not_found");
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_is_a_400_without_the_transport_error() {
    let h = Harness::new();
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
        Ok(r#"{"email":"a@example.com","#),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            TRANSPORT_SECRET,
        )),
    ];
    let req = Request::post("/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let (status, body, text) = h.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(code(&body), "invalid_request", "{text}");
    assert!(
        !text.contains("secret-frame") && !text.contains("10.0.0.7"),
        "{text}"
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_408_body_timeout() {
    // The request timeout well past the body's 1 s, so the body timeout
    // is the one that fires (with both at 1 s they raced).
    let h = Harness::with_vars(&[("ALVRYN_REQUEST_TIMEOUT_SECONDS", "5")]);
    let first: Result<&'static str, std::io::Error> = Ok(r#"{"email":"#);
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::iter(vec![first]),
        futures_util::stream::pending(),
    );
    let req = Request::post("/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let (status, body, text) = h.send(req).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
    assert_eq!(code(&body), "body_timeout", "{text}");
}

#[tokio::test]
async fn a_webhook_that_cannot_be_made_durable_is_503_and_succeeds_when_redelivered() {
    const WHSEC: &str = "whsec_inProcessOutage0123456789";
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let h = Harness::with_vars(&[
        ("STRIPE_SECRET_KEY", "sk_test_inProcess"),
        ("STRIPE_WEBHOOK_SECRET", WHSEC),
        ("STRIPE_PRICE_MAP", "price_inProcess:pro"),
        // Nothing listens there: this event never needs Stripe.
        ("STRIPE_API_BASE", "http://127.0.0.1:9"),
    ]);
    let mut event = stripe_support::resource("event");
    event["id"] = json!("evt_inProcessOutage1");
    event["type"] = json!("customer.created");
    let body = event.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = stripe_support::sign_one(&script, &body, WHSEC, i64::try_from(now).unwrap());
    let delivery = || {
        Request::post("/webhooks/stripe")
            .header(header::CONTENT_TYPE, "application/json")
            .header("stripe-signature", &signature)
            .body(Body::from(body.clone()))
            .unwrap()
    };
    h.set(Mode::Fail);
    let (status, answer, text) = h.send(delivery()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(code(&answer), "unavailable", "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("connection refused"),
        "{text}"
    );
    // Stripe delivers again once the database is back: durable, applied.
    h.set(Mode::Serve);
    let (status, answer, text) = h.send(delivery()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(answer["outcome"], "ignored", "{text}");
}

/// The whole answer: status, headers, JSON body.
async fn send_full(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app(h.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, body)
}

/// `req` as if it came from `peer` over a socket (what `serve_on` adds).
fn from_peer(mut req: Request<Body>, peer: &str) -> Request<Body> {
    let peer: std::net::SocketAddr = format!("{peer}:40000").parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    req
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn readyz_is_503_naming_the_store_when_it_fails_or_hangs_and_200_again_after() {
    let h = Harness::new();
    let (status, _, body) = send_full(&h, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"store": "ok", "field_key": "ok", "s3": "not_configured"}})
    );

    // A fresh state (no result to reuse) whose store fails.
    let h = Harness::new();
    h.set(Mode::Fail);
    let (status, _, body) = send_full(&h, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["store"], "failed", "{body}");
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("store"), "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("connection refused"),
        "{text}"
    );

    // Back up: ready again once the last result is older than its second.
    h.set(Mode::Serve);
    tokio::time::sleep(alvryn::server::ready::CACHE_FOR + std::time::Duration::from_millis(100))
        .await;
    let (status, _, body) = send_full(&h, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A store that never answers: each check gives up after its bound
    // (within a request timeout longer than it), and says so.
    let h = Harness::with_vars(&[("ALVRYN_REQUEST_TIMEOUT_SECONDS", "10")]);
    h.set(Mode::Hang);
    let (status, _, body) = send_full(&h, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["store"], "timeout", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("store"),
        "{body}"
    );
}

#[tokio::test]
async fn a_panic_and_a_timeout_still_carry_the_security_headers_and_a_request_id() {
    let h = Harness::new();
    let token = h.signup("headers@example.com").await;
    for (mode, status, want) in [
        (Mode::Panic, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        (Mode::Hang, StatusCode::SERVICE_UNAVAILABLE, "timeout"),
    ] {
        h.set(mode);
        let mut req = with_bearer("GET", "/auth/me", &token);
        req.headers_mut()
            .insert("x-request-id", "in-process-1".parse().unwrap());
        let (got, headers, body) = send_full(&h, req).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(code(&body), want, "{body}");
        assert_eq!(headers["x-request-id"], "in-process-1");
        for name in [
            "strict-transport-security",
            "content-security-policy",
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "cross-origin-opener-policy",
            "cross-origin-resource-policy",
        ] {
            assert!(headers.contains_key(name), "{want}: no {name}: {headers:?}");
        }
    }
}

/// Every limited route group answers 429 past its limit, per client
/// address; without a peer address (no socket) the per-IP limits do
/// not apply. (The rate-limit tests here count on the real clock, in day
/// windows: only a run across midnight UTC would see its counts reset.)
#[tokio::test]
async fn each_route_group_is_limited_per_client_and_not_without_a_peer() {
    let h = Harness::with_vars(&[
        ("ALVRYN_RATE_LIMIT_SIGNUP", "1/24h"),
        ("ALVRYN_RATE_LIMIT_LOGIN", "1/24h"),
        ("ALVRYN_RATE_LIMIT_REFRESH", "1/24h"),
        ("ALVRYN_RATE_LIMIT_OAUTH", "1/24h"),
        ("ALVRYN_RATE_LIMIT_BILLING", "1/24h"),
        ("ALVRYN_RATE_LIMIT_WEBHOOK", "1/24h"),
    ]);
    const PASSWORD: &str = "correct horse battery staple";
    type MakeRequest = Box<dyn Fn(usize) -> Request<Body>>;
    let routes: Vec<(&str, MakeRequest)> = vec![
        (
            "signup",
            Box::new(|i| {
                json_post(
                    "/auth/signup",
                    &json!({"email": format!("s{i}@example.com"), "password": PASSWORD}),
                )
            }),
        ),
        (
            "login",
            Box::new(|i| {
                json_post(
                    "/auth/login",
                    &json!({"email": format!("l{i}@example.com"), "password": PASSWORD}),
                )
            }),
        ),
        (
            "refresh",
            Box::new(|_| json_post("/auth/refresh", &json!({"refresh_token": "x"}))),
        ),
        (
            "logout",
            Box::new(|_| json_post("/auth/logout", &json!({"refresh_token": "x"}))),
        ),
        ("oauth start", Box::new(|_| get("/auth/oauth/google/start"))),
        (
            "oauth callback",
            Box::new(|_| get("/auth/oauth/google/callback")),
        ),
        (
            "oauth exchange",
            Box::new(|_| json_post("/auth/oauth/exchange", &json!({"code": "x"}))),
        ),
        ("billing", Box::new(|_| get("/billing/subscription"))),
        (
            "billing",
            Box::new(|_| json_post("/billing/checkout", &json!({}))),
        ),
        (
            "webhook",
            Box::new(|_| json_post("/webhooks/stripe", &json!({}))),
        ),
    ];
    let mut first_of_group = std::collections::HashSet::new();
    for (i, (name, make)) in routes.iter().enumerate() {
        // `refresh` and `logout` share a group, as do the OAuth and the
        // billing routes: only a group's first request is allowed.
        let group = match *name {
            "logout" => "refresh",
            n if n.starts_with("oauth") => "oauth",
            n => n,
        };
        let (status, body, text) = h.send(from_peer(make(i), "203.0.113.7")).await;
        if first_of_group.insert(group) {
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{name}: {text}");
            let (status, body, text) = h.send(from_peer(make(i + 100), "203.0.113.7")).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{name}: {text}");
            assert_eq!(code(&body), "rate_limited", "{name}: {text}");
            // Another client is not limited by the first one's requests.
            let (status, _, text) = h.send(from_peer(make(i + 200), "198.51.100.8")).await;
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{name}: {text}");
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{name}: {text}");
            assert_eq!(code(&body), "rate_limited", "{name}: {text}");
        }
        // Without a peer address, never limited per IP.
        for j in 0..3 {
            let (status, _, text) = h.send(make(i + 300 + j)).await;
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{name}: {text}");
        }
    }
    // Health checks are never limited.
    for _ in 0..5 {
        let (status, _, _) = h.send(from_peer(get("/healthz"), "203.0.113.7")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// The per-account login limit needs no peer address.
#[tokio::test]
async fn the_login_account_limit_applies_without_a_peer() {
    let h = Harness::with_vars(&[("ALVRYN_RATE_LIMIT_LOGIN_ACCOUNT", "2/24h")]);
    let attempt = |email: &str| {
        json_post(
            "/auth/login",
            &json!({"email": email, "password": "wrong password here"}),
        )
    };
    for _ in 0..2 {
        let (status, _, text) = h.send(attempt("who@example.com")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    }
    let (status, body, text) = h.send(attempt("WHO@example.com")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert_eq!(code(&body), "rate_limited");
    let (status, _, text) = h.send(attempt("other@example.com")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
}

/// The store failing (or not answering) under the limiter lets requests
/// through unlimited, counted and logged: never a 500, never a 429 that
/// locks everybody out. What needs the store still answers 503.
#[tokio::test]
async fn a_failing_rate_limit_store_lets_requests_through_never_a_500() {
    let h = Harness::with_vars(&[
        ("ALVRYN_RATE_LIMIT_OAUTH", "1/24h"),
        ("ALVRYN_RATE_LIMIT_LOGIN", "1/24h"),
        // Longer than the limiter's own store timeout.
        ("ALVRYN_REQUEST_TIMEOUT_SECONDS", "5"),
    ]);
    // No provider is configured: `start` answers 404 without the store.
    let start = || from_peer(get("/auth/oauth/google/start"), "203.0.113.9");
    let (status, body, _) = h.send(start()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "provider_not_configured");
    let (status, body, _) = h.send(start()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), "rate_limited");
    assert_eq!(h.state.limiter.store_failures(), 0);

    for (mode, failures) in [(Mode::Fail, 1), (Mode::Hang, 2)] {
        h.set(mode);
        let (status, body, text) = h.send(start()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert_eq!(code(&body), "provider_not_configured", "{text}");
        assert_eq!(h.state.limiter.store_failures(), failures);
    }
    // A login needs the store itself: 503, as without a limiter.
    h.set(Mode::Fail);
    let login = json_post(
        "/auth/login",
        &json!({"email": "down@example.com", "password": "correct horse battery staple"}),
    );
    let (status, body, text) = h.send(from_peer(login, "203.0.113.9")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(code(&body), "unavailable", "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // Back up: the counts made before the outage still hold.
    h.set(Mode::Serve);
    let (status, _, _) = h.send(start()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn with_a_metrics_token_metrics_answer_only_its_bearer() {
    const TOKEN: &str = "metrics-token-0123456789abcdef";
    let h = Harness::with_vars(&[("ALVRYN_METRICS_TOKEN", TOKEN)]);
    let ask = |auth: Option<&str>| {
        let mut req = Request::get("/metrics");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        app(h.state.clone()).oneshot(req.body(Body::empty()).unwrap())
    };
    for refused in [
        None,
        Some("Bearer wrong-token-0123456789abc"),
        Some("Basic eA=="),
    ] {
        let resp = ask(refused).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
    }
    let resp = ask(Some(&format!("Bearer {TOKEN}"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("# TYPE"));
    // Without the setting, /metrics is open (the default, for a scraper
    // on a private network).
    let open = Harness::new();
    let resp = app(open.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
