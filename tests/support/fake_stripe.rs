//! A stand-in for the Stripe endpoints localstripe lacks (customers,
//! Checkout Sessions, billing-portal sessions), answering with Stripe's
//! fixture objects and recording what it was sent. Included by path
//! from the tests that need it (with `stripe_support` beside it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::stripe_support;

/// What the test Stripe saw.
#[derive(Default)]
pub struct Seen {
    pub customers: Vec<HashMap<String, String>>,
    pub checkouts: Vec<HashMap<String, String>>,
    pub portals: Vec<HashMap<String, String>>,
    pub idempotency_keys: Vec<String>,
}

/// A stand-in for the Stripe endpoints localstripe lacks (Checkout,
/// billing portal), answering with Stripe's fixture objects.
pub struct FakeStripe {
    pub base: String,
    pub seen: Arc<Mutex<Seen>>,
    _rt: tokio::runtime::Runtime,
}

/// Starts the stand-in; requests must carry `key`.
pub fn start(key: &'static str) -> FakeStripe {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let s = Arc::clone(&seen);
    let record = move |which: fn(&mut Seen) -> &mut Vec<HashMap<String, String>>| {
        let s = Arc::clone(&s);
        move |headers: axum::http::HeaderMap, body: String| {
            let s = Arc::clone(&s);
            async move {
                let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                let mut seen = s.lock().unwrap();
                if let Some(k) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
                    seen.idempotency_keys.push(k.to_owned());
                }
                let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {key}"));
                which(&mut seen).push(form);
                let n = which(&mut seen).len();
                (auth_ok, n)
            }
        }
    };
    let answer = |resource: &'static str, id: String, url: Option<String>| {
        let mut o = stripe_support::resource(resource);
        o["id"] = json!(id);
        if let Some(u) = url {
            o["url"] = json!(u);
        }
        axum::Json(o)
    };
    let customers = record(|s| &mut s.customers);
    let checkouts = record(|s| &mut s.checkouts);
    let portals = record(|s| &mut s.portals);
    let app = axum::Router::new()
        .route(
            "/v1/customers",
            post(move |h, b| async move {
                let (ok, n) = customers(h, b).await;
                assert!(ok);
                answer("customer", format!("cus_fake{n}"), None)
            }),
        )
        .route(
            "/v1/checkout/sessions",
            post(move |h, b| async move {
                let (ok, n) = checkouts(h, b).await;
                assert!(ok);
                let id = format!("cs_test_fake{n}");
                let url = format!("https://checkout.stripe.com/c/pay/{id}");
                answer("checkout.session", id, Some(url))
            }),
        )
        .route(
            "/v1/billing_portal/sessions",
            post(move |h, b| async move {
                let (ok, n) = portals(h, b).await;
                assert!(ok);
                let id = format!("bps_fake{n}");
                let url = format!("https://billing.stripe.com/p/session/{id}");
                answer("billing_portal.session", id, Some(url))
            }),
        );
    rt.spawn(async move { axum::serve(listener, app).await });
    FakeStripe {
        base,
        seen,
        _rt: rt,
    }
}
