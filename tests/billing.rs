//! Billing end to end, against the `alvryn` binary over real sockets:
//! real webhook deliveries from localstripe, Checkout and the portal
//! against a test server that answers as Stripe documents, the S3 archive
//! on moto with its faults, hostile deliveries, `alvryn events`, and a
//! `kill -9` in the middle of a burst.
//!
//! Webhook bodies are Stripe's published fixtures
//! (`testdata/stripe/fixtures3.json`) in Stripe's event envelope, signed
//! by Stripe's own library (`scripts/stripe-sign`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake_stripe.rs"]
mod fake_stripe;
#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{
    Response, Server, alvryn, eventually, post_json, raw_request, run, service, with_bearer,
};

const WHSEC: &str = "whsec_alvrynBillingEndToEnd0123456789";
const KEY: &str = "sk_test_alvrynBillingEndToEndDoNotLeak";

use stripe_support::now as now_s;

/// `alvryn` with billing configured against `api_base` and a fresh data
/// folder, plus `extra` variables.
fn billing_cmd(
    dir: &std::path::Path,
    api_base: &str,
    prices: &str,
    extra: &[(&str, &str)],
) -> Command {
    let mut c = alvryn();
    support::billing_env(&mut c, dir, KEY, WHSEC, prices, Some(api_base));
    c.env("FRONTEND_URL", "https://app.example.com");
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// Signs up and returns the access token and the user id.
fn signup(addr: SocketAddr) -> (String, String) {
    let email = format!("{}@example.com", support::unique("billing-"));
    let r = support::signed_up(addr, &email);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let me = with_bearer(addr, "GET", "/auth/me", &token).json();
    (token, me["id"].as_str().unwrap().to_owned())
}

/// Stripe's fixture event around `object`, as Stripe sends it.
fn event(id: &str, event_type: &str, created: i64, object: Value) -> String {
    serde_json::to_string_pretty(&stripe_support::envelope(id, event_type, created, object))
        .unwrap()
}

/// Stripe's fixture subscription for `user` on `price`.
fn subscription(id: &str, user: &str, price: &str, status: &str, created: i64) -> Value {
    let mut s = stripe_support::resource("subscription");
    s["id"] = json!(id);
    s["status"] = json!(status);
    s["created"] = json!(created);
    s["metadata"] = json!({ "alvryn_user_id": user });
    s["items"]["data"][0]["price"]["id"] = json!(price);
    s["items"]["data"][0]["current_period_end"] = json!(created + 30 * 86_400);
    s
}

fn deliver(addr: SocketAddr, body: &str, signature: Option<&str>) -> Response {
    let mut headers = vec![("Content-Type", "application/json; charset=utf-8")];
    if let Some(s) = signature {
        headers.push(("Stripe-Signature", s));
    }
    raw_request(addr, "POST", "/webhooks/stripe", &headers, body.as_bytes())
}

/// Delivers `body` signed now with [`WHSEC`] by Stripe's library.
fn deliver_signed(addr: SocketAddr, script: &str, body: &str) -> Response {
    let sig = stripe_support::sign_one(script, body, WHSEC, now_s());
    deliver(addr, body, Some(&sig))
}

/// `alvryn events list` as JSON.
fn events_list(dir: &std::path::Path, api_base: &str, prices: &str, args: &[&str]) -> Vec<Value> {
    let mut c = billing_cmd(dir, api_base, prices, &[]);
    c.args(["events", "list"]).args(args);
    let out = run(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str::<Vec<Value>>(&out.stdout).unwrap()
}

/// An address where nothing listens: Stripe "down".
fn dead_base() -> String {
    format!("http://127.0.0.1:{}", support::free_port())
}

// ------------------------------------------------------------ not configured

#[test]
fn without_stripe_settings_every_billing_route_is_503_billing_not_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path());
    let server = Server::start(c);
    let (token, _) = signup(server.addr);
    let checks = [
        post_json(
            server.addr,
            "/billing/checkout",
            &json!({"plan": "pro"}),
            Some(&token),
        ),
        post_json(server.addr, "/billing/portal", &json!({}), Some(&token)),
        with_bearer(server.addr, "GET", "/billing/subscription", &token),
        deliver(server.addr, "{}", Some("t=1,v1=00")),
    ];
    for r in checks {
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.code(), "billing_not_configured", "{}", r.body);
    }
    // The plan is the account's own.
    let me = with_bearer(server.addr, "GET", "/auth/me", &token).json();
    assert_eq!(me["plan"], "free");
    // Billing routes still need a caller.
    let r = with_bearer(server.addr, "GET", "/billing/subscription", "not-a-token");
    assert_eq!(r.status, 401, "{}", r.body);
}

// ------------------------------------------------------------ hostile deliveries

#[test]
fn hostile_deliveries_get_4xx_and_leave_nothing_behind() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dead_base();
    let prices = "price_alvrynPro:pro";
    let server = Server::start(billing_cmd(dir.path(), &base, prices, &[]));
    let addr = server.addr;
    let body = event(
        &support::unique("evt_hostile"),
        "customer.created",
        now_s(),
        stripe_support::resource("customer"),
    );

    // No header, a garbage header, the wrong secret, stale and future
    // timestamps: 400 invalid_signature. The exact 300 s boundary is the
    // verifier's unit test (`tolerance_both_ways`, on a fixed clock); here
    // the clock runs while the signatures are made and delivered, so the
    // future one is far enough ahead that no delay brings it back inside.
    let wrong = stripe_support::sign_one(&script, &body, "whsec_someoneElse0123456789", now_s());
    let stale = stripe_support::sign_one(&script, &body, WHSEC, now_s() - 301);
    let future = stripe_support::sign_one(&script, &body, WHSEC, now_s() + 3600);
    for (what, sig) in [
        ("missing", None),
        ("garbage", Some("definitely not a signature")),
        ("wrong secret", Some(wrong.as_str())),
        ("stale", Some(stale.as_str())),
        ("future", Some(future.as_str())),
    ] {
        let r = deliver(addr, &body, sig);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.code(), "invalid_signature", "{what}: {}", r.body);
    }
    // A tampered body under a good signature.
    let good = stripe_support::sign_one(&script, &body, WHSEC, now_s());
    let tampered = body.replacen("customer", "Customer", 1);
    let r = deliver(addr, &tampered, Some(&good));
    assert_eq!(r.status, 400, "{}", r.body);

    // Verified, but not an event: 4xx, never 5xx.
    let r = deliver_signed(addr, &script, r#"{"hello":"world"}"#);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_event"),
        "{}",
        r.body
    );
    let r = deliver_signed(addr, &script, "not json at all");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_event"),
        "{}",
        r.body
    );

    // Larger than Stripe ever sends (1 MiB): 413, declared or not.
    let huge = "x".repeat(1024 * 1024 + 1);
    let r = deliver(addr, &huge, Some(&good));
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "payload_too_large"),
        "{}",
        r.body
    );
    // A real event of 200 KiB (Stripe's are far below 1 MiB) is fine:
    // the webhook has its own body limit, not the JSON API's 16 KiB.
    let mut customer = stripe_support::resource("customer");
    customer["metadata"] = json!({ "padding": "y".repeat(200 * 1024) });
    let big = event(
        &support::unique("evt_big"),
        "customer.created",
        now_s(),
        customer,
    );
    let r = deliver_signed(addr, &script, &big);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "ignored");

    // Nothing refused was recorded; the accepted one was, once.
    let listed = events_list(dir.path(), &base, prices, &["--limit", "0"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "ignored");
    // The same delivery again (Stripe retries): acknowledged, not redone.
    let r = deliver_signed(addr, &script, &big);
    assert_eq!(r.json()["outcome"], "duplicate", "{}", r.body);
    assert!(
        !server.log().contains(KEY),
        "the secret key reached the log"
    );
    assert!(
        !server.log().contains(WHSEC),
        "the webhook secret reached the log"
    );
}

// ------------------------------------------------------------ localstripe

/// A form request to localstripe with our key.
fn stripe_form(base: &str, method: &str, path: &str, form: &[(&str, &str)]) -> Value {
    support::localstripe_ok(base, KEY, method, path, form)
}

fn plan_of(addr: SocketAddr, token: &str) -> Value {
    with_bearer(addr, "GET", "/billing/subscription", token).json()
}

#[test]
fn localstripe_deliveries_set_the_plan_and_cancellation_takes_it_away() {
    let Some(ls) = service("ALVRYN_TEST_LOCALSTRIPE_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let price = support::unique("price_alvrynE2e");
    let prices = format!("{price}:pro");
    let server = Server::start(billing_cmd(dir.path(), &ls, &prices, &[]));
    let addr = server.addr;
    let (token, user) = signup(addr);

    // localstripe delivers signed webhooks to the running server.
    let hook = support::unique("alvryn_e2e_");
    let hook_path = format!("/_config/webhooks/{hook}");
    let url = format!("http://{addr}/webhooks/stripe");
    stripe_form(
        &ls,
        "POST",
        &hook_path,
        &[
            ("url", &url),
            ("secret", WHSEC),
            ("events[]", "customer.subscription.created"),
            ("events[]", "customer.subscription.deleted"),
        ],
    );

    // What Checkout would do: a customer with a card, a subscription that
    // carries our user id.
    let email = format!("{user}@example.com");
    let customer = stripe_form(
        &ls,
        "POST",
        "/v1/customers",
        &[("email", &email), ("metadata[alvryn_user_id]", &user)],
    );
    let sub =
        support::localstripe_subscribe(&ls, KEY, customer["id"].as_str().unwrap(), &user, &price);
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    let view = eventually(20, || {
        let v = plan_of(addr, &token);
        (v["plan"] == "pro").then_some(v)
    })
    .unwrap_or_else(|| panic!("the plan never became pro:\n{}", server.log()));
    assert_eq!(view["status"], "active");
    assert_eq!(view["current_period_end"], sub["current_period_end"]);
    assert_eq!(view["cancel_at_period_end"], false);
    let me = with_bearer(addr, "GET", "/auth/me", &token).json();
    assert_eq!(me["plan"], "pro");
    // Subscribed: another checkout is refused (plan changes go through
    // the portal).
    let r = post_json(
        addr,
        "/billing/checkout",
        &json!({"plan": "pro"}),
        Some(&token),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "already_subscribed"),
        "{}",
        r.body
    );

    stripe_form(&ls, "DELETE", &format!("/v1/subscriptions/{sub_id}"), &[]);
    let view = eventually(20, || {
        let v = plan_of(addr, &token);
        (v["plan"] == "free").then_some(v)
    })
    .unwrap_or_else(|| panic!("cancellation never arrived:\n{}", server.log()));
    assert_eq!(view["status"], "canceled");

    // Mute the hook: localstripe has no delete, and this server is going.
    let mute = json!({"url": url, "secret": WHSEC, "events": []}).to_string();
    support::localstripe_request(&ls, KEY, "POST", &hook_path, "application/json", &mute);
    let applied = events_list(dir.path(), &ls, &prices, &["--status", "applied"]);
    let types: BTreeSet<&str> = applied.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types.contains("customer.subscription.created"),
        "{applied:?}"
    );
    assert!(
        types.contains("customer.subscription.deleted"),
        "{applied:?}"
    );
}

// ------------------------------------------------------------ Checkout and the portal

#[test]
fn checkout_creates_the_customer_once_and_the_portal_reuses_it() {
    let stripe = fake_stripe::start(KEY);
    let dir = tempfile::tempdir().unwrap();
    let prices = "price_alvrynYearly:pro,price_alvrynMonthly:pro,price_alvrynTeam:team";
    let server = Server::start(billing_cmd(dir.path(), &stripe.base, prices, &[]));
    let addr = server.addr;
    let (token, user) = signup(addr);

    // No customer yet: the portal has nothing to show.
    let r = post_json(addr, "/billing/portal", &json!({}), Some(&token));
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "no_billing_account"),
        "{}",
        r.body
    );
    // A plan nobody sells, a malformed one, a body of the wrong shape.
    for (body, status, want) in [
        (json!({"plan": "gold"}), 400, "unknown_plan"),
        (json!({"plan": "Pro!"}), 400, "unknown_plan"),
        (json!({"plan": 7}), 400, "invalid_request"),
        (
            json!({"plan": "pro", "price": "price_x"}),
            400,
            "invalid_request",
        ),
    ] {
        let r = post_json(addr, "/billing/checkout", &body, Some(&token));
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, want),
            "{body}: {}",
            r.body
        );
    }
    assert!(
        stripe.seen.lock().unwrap().customers.is_empty(),
        "nothing reached Stripe"
    );

    // Two checkouts: one customer, two sessions, each with its own key.
    for _ in 0..2 {
        let r = post_json(
            addr,
            "/billing/checkout",
            &json!({"plan": "pro"}),
            Some(&token),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.json()["url"]
                .as_str()
                .unwrap()
                .starts_with("https://checkout.stripe.com/c/pay/cs_test_fake"),
            "{}",
            r.body
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let r = post_json(addr, "/billing/portal", &json!({}), Some(&token));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["url"]
            .as_str()
            .unwrap()
            .starts_with("https://billing.stripe.com/p/session/bps_fake")
    );

    let seen = stripe.seen.lock().unwrap();
    assert_eq!(seen.customers.len(), 1, "the customer is created once");
    assert_eq!(seen.customers[0]["metadata[alvryn_user_id]"], user);
    assert_eq!(seen.checkouts.len(), 2);
    let form = &seen.checkouts[0];
    let want: HashMap<String, String> = [
        ("mode", "subscription"),
        ("customer", "cus_fake1"),
        ("client_reference_id", user.as_str()),
        ("line_items[0][price]", "price_alvrynYearly"),
        ("line_items[0][quantity]", "1"),
        (
            "success_url",
            "https://app.example.com/billing/success?session_id={CHECKOUT_SESSION_ID}",
        ),
        ("cancel_url", "https://app.example.com/billing/cancel"),
        ("metadata[alvryn_user_id]", user.as_str()),
        ("subscription_data[metadata][alvryn_user_id]", user.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(form, &want, "the first price listed for the plan is sold");
    assert_eq!(seen.portals[0]["customer"], "cus_fake1");
    assert_eq!(
        seen.portals[0]["return_url"],
        "https://app.example.com/billing"
    );
    let keys: BTreeSet<&String> = seen.idempotency_keys.iter().collect();
    assert_eq!(
        keys.len(),
        seen.idempotency_keys.len(),
        "every creation has its own key"
    );
    assert_eq!(seen.idempotency_keys.len(), 4);
}

#[test]
fn stripe_down_is_503_billing_unavailable_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(billing_cmd(
        dir.path(),
        &dead_base(),
        "price_alvrynPro:pro",
        &[],
    ));
    let (token, _) = signup(server.addr);
    let r = post_json(
        server.addr,
        "/billing/checkout",
        &json!({"plan": "pro"}),
        Some(&token),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "billing_unavailable"),
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(!r.body.contains("127.0.0.1"), "{}", r.body);
    assert!(!server.log().contains(KEY));
}

// ------------------------------------------------------------ the archive on S3

/// A server archiving to `bucket` at the S3 endpoint `endpoint`.
fn s3_server(dir: &std::path::Path, endpoint: &str, bucket: &str) -> Server {
    let mut c = billing_cmd(dir, &dead_base(), "price_alvrynPro:pro", &[]);
    support::s3_archive_env(&mut c, bucket, endpoint);
    Server::start(c)
}

#[test]
fn events_reach_s3_and_every_s3_fault_ends_with_the_raw_payload_in_the_database() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = support::s3_client(&moto);
    let bucket = support::unique("alvryn-e2e-");
    rt.block_on(s3.create_bucket().bucket(&bucket).send())
        .unwrap();

    let body = |id: &str| {
        event(
            id,
            "customer.created",
            now_s(),
            stripe_support::resource("customer"),
        )
    };
    // S3 up: the body is in the bucket, the database keeps the key only.
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server(dir.path(), &moto, &bucket);
    let id = support::unique("evt_s3ok");
    let sent = body(&id);
    let r = deliver_signed(server.addr, &script, &sent);
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = rt
        .block_on(
            s3.list_objects_v2()
                .bucket(&bucket)
                .prefix("stripe/events/")
                .send(),
        )
        .unwrap();
    let key = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .find(|k| k.ends_with(&format!("/{id}.json")))
        .unwrap_or_else(|| panic!("{id} not in the bucket"))
        .to_owned();
    let got = rt
        .block_on(s3.get_object().bucket(&bucket).key(&key).send())
        .unwrap();
    let sha = got.metadata().and_then(|m| m.get("sha256")).cloned();
    let stored = rt.block_on(got.body.collect()).unwrap().into_bytes();
    assert_eq!(stored.as_ref(), sent.as_bytes(), "byte for byte");
    use sha2::Digest as _;
    let want: String = sha2::Sha256::digest(sent.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha.as_deref(), Some(want.as_str()));
    drop(server);
    // Replayed from S3 (the database keeps only the key).
    let mut c = billing_cmd(dir.path(), &dead_base(), "price_alvrynPro:pro", &[]);
    support::s3_archive_env(&mut c, &bucket, &moto);
    c.args(["events", "replay", "--id", &id, "--run"]);
    let out = run(c);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (
            report["report"]["ignored"].as_u64(),
            report["report"]["missing"].as_u64()
        ),
        (Some(1), Some(0)),
        "{report}"
    );

    // Faults: a bucket that does not exist, an endpoint that is down.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    for (what, endpoint, bucket) in [
        ("missing bucket", moto.as_str(), "alvryn-no-such-bucket-e2e"),
        ("endpoint down", dead.as_str(), bucket.as_str()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = s3_server(dir.path(), endpoint, bucket);
        let id = support::unique("evt_s3fault");
        let sent = body(&id);
        let r = deliver_signed(server.addr, &script, &sent);
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        drop(server);
        // The raw payload is in the database, flagged for upload: a
        // replay reads it back from there (S3 still failing).
        let db = rusqlite::Connection::open(dir.path().join("alvryn.db")).unwrap();
        let (status, data): (u32, Vec<u8>) = db
            .query_row(
                "SELECT status, data FROM records WHERE ns = 'stripe_event_archive' AND key = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("{what}: {id} is not in the database: {e}"));
        assert_eq!(status, 1, "{what}: flagged for re-archival");
        assert_eq!(
            data,
            sent.as_bytes(),
            "{what}: the raw payload, byte for byte"
        );
    }
}

// ------------------------------------------------------------ quarantine and replay

#[test]
fn unknown_prices_are_quarantined_listed_and_replayed_after_the_map_is_fixed() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dead_base();
    let server = Server::start(billing_cmd(dir.path(), &base, "price_alvrynPro:pro", &[]));
    let (token, user) = signup(server.addr);
    let id = support::unique("evt_quarantine");
    let sub = subscription(
        &support::unique("sub_q"),
        &user,
        "price_alvrynUnmapped",
        "active",
        now_s(),
    );
    let r = deliver_signed(
        server.addr,
        &script,
        &event(&id, "customer.subscription.created", now_s(), sub),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "quarantined");
    assert_eq!(
        plan_of(server.addr, &token)["plan"],
        "free",
        "never a default plan"
    );
    assert!(
        server.log_with(&["quarantined"]).contains("quarantined"),
        "{}",
        server.log()
    );
    // The commands below work on the same store while the server runs.

    let listed = events_list(
        dir.path(),
        &base,
        "price_alvrynPro:pro",
        &["--status", "quarantined"],
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["price"], "price_alvrynUnmapped");

    // Name nothing: refused. A dry run changes nothing.
    let fixed = "price_alvrynPro:pro,price_alvrynUnmapped:team";
    let mut c = billing_cmd(dir.path(), &base, fixed, &[]);
    c.args(["events", "replay"]);
    assert_eq!(run(c).code, 2);
    let mut c = billing_cmd(dir.path(), &base, fixed, &[]);
    c.args(["events", "replay", "--status", "quarantined"]);
    let out = run(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["report"]["ids"], json!([id]));
    assert_eq!(
        events_list(dir.path(), &base, fixed, &["--status", "quarantined"]).len(),
        1
    );

    let mut c = billing_cmd(dir.path(), &base, fixed, &[]);
    c.args(["events", "replay", "--id", &id, "--run"]);
    let out = run(c);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["report"]["applied"], 1, "{report}");
    let view = plan_of(server.addr, &token);
    assert_eq!(view["plan"], "team", "{view}");
    // Replaying again changes nothing.
    let mut c = billing_cmd(dir.path(), &base, fixed, &[]);
    c.args(["events", "replay", "--id", &id, "--run"]);
    let report: Value = serde_json::from_str(&run(c).stdout).unwrap();
    assert_eq!(report["report"]["applied"], 0, "{report}");
    assert_eq!(report["report"]["unchanged"], 1, "{report}");
}

// ------------------------------------------------------------ concurrency and crashes

#[test]
fn a_hundred_concurrent_deliveries_of_one_event_apply_it_once() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dead_base();
    let server = Server::start(billing_cmd(dir.path(), &base, "price_alvrynPro:pro", &[]));
    let (token, user) = signup(server.addr);
    let id = support::unique("evt_hundred");
    let body = event(
        &id,
        "customer.subscription.created",
        now_s(),
        subscription(
            &support::unique("sub_h"),
            &user,
            "price_alvrynPro",
            "active",
            now_s(),
        ),
    );
    let sig = stripe_support::sign_one(&script, &body, WHSEC, now_s());
    let addr = server.addr;
    let outcomes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (body, sig) = (&body, &sig);
                s.spawn(move || {
                    let r = deliver(addr, body, Some(sig));
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["outcome"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied = outcomes.iter().filter(|o| *o == "applied").count();
    let duplicates = outcomes.iter().filter(|o| *o == "duplicate").count();
    assert_eq!((applied, duplicates), (1, 99), "{outcomes:?}");
    assert_eq!(plan_of(addr, &token)["plan"], "pro");
    drop(server);
    // One plan change in the audit log.
    let db = rusqlite::Connection::open(dir.path().join("alvryn.db")).unwrap();
    let changes: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit_events WHERE user_id = ?1 AND kind = 'billing_plan_changed'",
            [&user],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(changes, 1);
}

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_event() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dead_base();
    let prices = "price_alvrynPro:pro";
    let mut server = Server::start(billing_cmd(dir.path(), &base, prices, &[]));
    let addr = server.addr;
    let bodies: Vec<(String, String)> = (0..400)
        .map(|_| {
            let id = support::unique("evt_burst");
            let body = event(
                &id,
                "customer.created",
                now_s(),
                stripe_support::resource("customer"),
            );
            (id, body)
        })
        .collect();
    let t = now_s();
    let requests: Vec<_> = bodies
        .iter()
        .map(|(_, b)| stripe_support::req(b, WHSEC, t))
        .collect();
    let sigs = stripe_support::sign_all(&script, &requests);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let deliveries: Vec<_> = bodies.iter().zip(&sigs).collect();
    std::thread::scope(|s| {
        for chunk in deliveries.chunks(50) {
            let acked = Arc::clone(&acked);
            s.spawn(move || {
                for ((id, body), sig) in chunk {
                    // A refused or cut connection is fine: Stripe retries it.
                    let r = std::panic::catch_unwind(|| deliver(addr, body, Some(sig)));
                    if r.is_ok_and(|r| r.status == 200) {
                        acked.lock().unwrap().push(id.clone());
                    }
                }
            });
        }
        // Kill the server once some deliveries were acknowledged.
        eventually(30, || (acked.lock().unwrap().len() >= 100).then_some(()))
            .expect("no deliveries were acknowledged");
        server.child.kill().unwrap();
    });
    server.child.wait().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100 && acked.len() < 400,
        "{} acknowledged",
        acked.len()
    );
    // Every acknowledged event is in the archive (the database here).
    let db = rusqlite::Connection::open(dir.path().join("alvryn.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT key FROM records WHERE ns = 'stripe_event_archive'")
        .unwrap();
    let archived: BTreeSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lost: Vec<&String> = acked.iter().filter(|id| !archived.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}
