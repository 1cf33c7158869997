//! `Stripe-Signature` verification against signatures made by Stripe's own
//! library (npm `stripe`, `webhooks.generateTestHeaderString`), on event
//! bodies built from Stripe's published object fixtures
//! (`testdata/stripe/fixtures3.json`).
//!
//! The signer is `node $ALVRYN_TEST_STRIPE_SIGN` (scripts/stripe-sign,
//! installed and exported by scripts/test). Without it these tests skip
//! with a printed reason, unless `ALVRYN_TEST_REQUIRE_SERVICES` is set to
//! anything but `0`, when they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod stripe_support;

use std::time::Duration;

use alvryn_core::billing::webhook::{
    DEFAULT_TOLERANCE, EventError, MAX_HEADER_BYTES, MAX_WEBHOOK_BYTES, SignatureError,
    WebhookSecrets, parse_event, verify,
};
use serde_json::{Value, json};
use stripe_support::{
    OTHER_SECRET, SECRET, THIRD_SECRET, ToSign, envelope, now, req, resource, sign_all, sign_one,
    signer,
};

fn secrets(list: &str) -> WebhookSecrets {
    WebhookSecrets::parse(list).unwrap()
}

/// What an event body is expected to parse to.
struct Expected {
    id: String,
    event_type: String,
    created: i64,
    object: Value,
    previous_attributes: Option<Value>,
}

/// Stripe's `event` fixture as the envelope around another fixture object,
/// pretty-printed as Stripe sends it.
fn event_body(
    n: u32,
    event_type: &str,
    object: Value,
    previous: Option<Value>,
) -> (String, Expected) {
    let id = format!("evt_1AlvrynFixture{n:04}");
    let created = 1_700_000_000 + i64::from(n);
    let mut event = envelope(&id, event_type, created, object.clone());
    if let Some(p) = &previous {
        event["data"]["previous_attributes"] = p.clone();
    }
    let body = serde_json::to_string_pretty(&event).unwrap();
    let expected = Expected {
        id,
        event_type: event_type.to_owned(),
        created,
        object,
        previous_attributes: previous,
    };
    (body, expected)
}

/// Event bodies for what billing handles, from the fixtures, plus the
/// fixture event itself, verbatim.
fn fixture_events() -> Vec<(String, Expected)> {
    let mut customer = resource("customer");
    // Non-ASCII text: both sides must sign the same UTF-8 bytes.
    customer["metadata"] = json!({"name": "Zoë Müller", "note": "€ 10 — 日本"});
    let mut subscription = resource("subscription");
    subscription["status"] = json!("active");
    let mut events = vec![
        event_body(
            1,
            "checkout.session.completed",
            resource("checkout.session"),
            None,
        ),
        event_body(
            2,
            "customer.subscription.created",
            resource("subscription"),
            None,
        ),
        event_body(
            3,
            "customer.subscription.updated",
            subscription,
            Some(json!({"status": "trialing", "cancel_at_period_end": true})),
        ),
        event_body(
            4,
            "customer.subscription.deleted",
            resource("subscription"),
            None,
        ),
        event_body(5, "invoice.paid", resource("invoice"), None),
        event_body(6, "invoice.payment_failed", resource("invoice"), None),
        event_body(7, "customer.created", customer, None),
    ];
    let verbatim = resource("event");
    events.push((
        serde_json::to_string(&verbatim).unwrap(),
        Expected {
            id: verbatim["id"].as_str().unwrap().to_owned(),
            event_type: verbatim["type"].as_str().unwrap().to_owned(),
            created: verbatim["created"].as_i64().unwrap(),
            object: verbatim["data"]["object"].clone(),
            previous_attributes: None,
        },
    ));
    events
}

#[test]
fn library_signatures_on_fixture_events_are_accepted_and_parsed() {
    let Some(script) = signer() else { return };
    let events = fixture_events();
    let t = now();
    let requests: Vec<_> = events.iter().map(|(b, _)| req(b, SECRET, t)).collect();
    let headers = sign_all(&script, &requests);
    let s = secrets(SECRET);
    for ((body, want), header) in events.iter().zip(&headers) {
        assert!(header.starts_with(&format!("t={t},v1=")), "{header}");
        verify(body.as_bytes(), Some(header), &s, DEFAULT_TOLERANCE, now())
            .unwrap_or_else(|e| panic!("{}: {e}", want.event_type));
        let event = parse_event(body.as_bytes()).unwrap();
        assert_eq!(event.id, want.id);
        assert_eq!(event.event_type, want.event_type);
        assert_eq!(event.created, want.created);
        assert!(!event.livemode);
        assert_eq!(event.data.object, want.object);
        assert_eq!(event.data.previous_attributes, want.previous_attributes);
    }
    // The verbatim fixture event has a null api_version; ours carry one.
    let verbatim = parse_event(events[7].0.as_bytes()).unwrap();
    assert_eq!(verbatim.api_version, None);
    assert_eq!(verbatim.event_type, "plan.created");
    let first = parse_event(events[0].0.as_bytes()).unwrap();
    assert_eq!(first.api_version.as_deref(), Some("2025-06-30.basil"));
    assert_eq!(first.data.object["object"], "checkout.session");
}

#[test]
fn tampered_bodies_are_refused() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(10, "invoice.paid", resource("invoice"), None);
    let t = now();
    let header = sign_one(&script, &body, SECRET, t);
    let s = secrets(SECRET);
    verify(body.as_bytes(), Some(&header), &s, DEFAULT_TOLERANCE, t).unwrap();

    let refused = |b: &[u8]| verify(b, Some(&header), &s, DEFAULT_TOLERANCE, t);
    // A changed amount.
    let changed = body.replacen("\"amount_due\": 1000", "\"amount_due\": 1", 1);
    assert_ne!(changed, body);
    assert_eq!(
        refused(changed.as_bytes()),
        Err(SignatureError::NoMatchingSignature)
    );
    // Re-encoded (same JSON value, other bytes): the raw body is what is signed.
    let reencoded = serde_json::to_string(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    assert_eq!(
        refused(reencoded.as_bytes()),
        Err(SignatureError::NoMatchingSignature)
    );
    // One flipped bit at the start, middle and end; a byte added; truncated.
    for i in [0, body.len() / 2, body.len() - 1] {
        let mut b = body.clone().into_bytes();
        b[i] ^= 0x20;
        assert_eq!(
            refused(&b),
            Err(SignatureError::NoMatchingSignature),
            "byte {i}"
        );
    }
    assert_eq!(
        refused(format!("{body}\n").as_bytes()),
        Err(SignatureError::NoMatchingSignature)
    );
    assert_eq!(
        refused(&body.as_bytes()[..body.len() - 1]),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn wrong_secret_is_refused() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(11, "customer.created", resource("customer"), None);
    let t = now();
    let header = sign_one(&script, &body, OTHER_SECRET, t);
    assert_eq!(
        verify(
            body.as_bytes(),
            Some(&header),
            &secrets(SECRET),
            DEFAULT_TOLERANCE,
            t
        ),
        Err(SignatureError::NoMatchingSignature)
    );
    // The key is the whole secret string, prefix included: the same secret
    // without `whsec_` (or with another prefix) is another key.
    let bare = sign_one(&script, &body, SECRET.trim_start_matches("whsec_"), t);
    assert_eq!(
        verify(
            body.as_bytes(),
            Some(&bare),
            &secrets(SECRET),
            DEFAULT_TOLERANCE,
            t
        ),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(
        12,
        "checkout.session.completed",
        resource("checkout.session"),
        None,
    );
    let t = now();
    let offsets = [-301, -300, 0, 300, 301];
    let requests: Vec<_> = offsets.iter().map(|o| req(&body, SECRET, t + o)).collect();
    let headers = sign_all(&script, &requests);
    let s = secrets(SECRET);
    let tol = Duration::from_secs(300);
    for (offset, header) in offsets.iter().zip(&headers) {
        let got = verify(body.as_bytes(), Some(header), &s, tol, t);
        if offset.abs() > 300 {
            assert_eq!(
                got,
                Err(SignatureError::TimestampOutsideTolerance),
                "t{offset:+}"
            );
        } else {
            assert_eq!(got, Ok(()), "t{offset:+}");
        }
    }
    assert_eq!(DEFAULT_TOLERANCE, tol);
}

#[test]
fn tolerance_is_configurable() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(13, "invoice.paid", resource("invoice"), None);
    let t = now();
    let header = sign_one(&script, &body, SECRET, t - 1000);
    let s = secrets(SECRET);
    let at = |tol: u64| {
        verify(
            body.as_bytes(),
            Some(&header),
            &s,
            Duration::from_secs(tol),
            t,
        )
    };
    assert_eq!(at(300), Err(SignatureError::TimestampOutsideTolerance));
    assert_eq!(at(999), Err(SignatureError::TimestampOutsideTolerance));
    assert_eq!(at(1000), Ok(()));
    assert_eq!(at(3600), Ok(()));
}

#[test]
fn missing_garbage_and_oversized_headers_are_refused() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(14, "customer.created", resource("customer"), None);
    let t = now();
    let header = sign_one(&script, &body, SECRET, t);
    let s = secrets(SECRET);
    let check = |h: Option<&str>| verify(body.as_bytes(), h, &s, DEFAULT_TOLERANCE, t);
    assert_eq!(check(None), Err(SignatureError::MissingHeader));
    assert_eq!(check(Some("")), Err(SignatureError::MissingHeader));
    for garbage in [
        "garbage",
        "t=",
        "t=abc,v1=abc",
        "v1=deadbeef",
        "\u{0}\u{ffff}",
        ",=,=,",
    ] {
        assert_eq!(
            check(Some(garbage)),
            Err(SignatureError::MalformedHeader),
            "{garbage:?}"
        );
    }
    // The library's header without its timestamp.
    let v1_only = header.split(',').nth(1).unwrap();
    assert_eq!(check(Some(v1_only)), Err(SignatureError::MalformedHeader));
    // The library's valid header, padded past the cap with an unknown scheme.
    let padded = format!("{header},x={}", "a".repeat(MAX_HEADER_BYTES));
    assert_eq!(check(Some(&padded)), Err(SignatureError::MalformedHeader));
    // Padded to just under it, it still verifies.
    let fits = format!(
        "{header},x={}",
        "a".repeat(MAX_HEADER_BYTES - header.len() - 3)
    );
    assert_eq!(fits.len(), MAX_HEADER_BYTES);
    assert_eq!(check(Some(&fits)), Ok(()));
}

#[test]
fn two_v1_values_where_only_the_second_matches() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(
        15,
        "customer.subscription.updated",
        resource("subscription"),
        None,
    );
    let t = now();
    let headers = sign_all(
        &script,
        &[req(&body, OTHER_SECRET, t), req(&body, SECRET, t)],
    );
    let v1 = |h: &str| h.split_once(",v1=").unwrap().1.to_owned();
    // As Stripe sends it while the endpoint's secret is rolled.
    let rolled = format!("t={t},v1={},v1={}", v1(&headers[0]), v1(&headers[1]));
    let check = |list: &str| {
        verify(
            body.as_bytes(),
            Some(&rolled),
            &secrets(list),
            DEFAULT_TOLERANCE,
            t,
        )
    };
    assert_eq!(check(SECRET), Ok(()));
    assert_eq!(check(OTHER_SECRET), Ok(()));
    assert_eq!(
        check(THIRD_SECRET),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn two_local_secrets_where_only_the_second_matches() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(16, "invoice.payment_failed", resource("invoice"), None);
    let t = now();
    let header = sign_one(&script, &body, SECRET, t);
    let both = secrets(&format!("{THIRD_SECRET},{SECRET}"));
    assert_eq!(both.len(), 2);
    assert_eq!(
        verify(body.as_bytes(), Some(&header), &both, DEFAULT_TOLERANCE, t),
        Ok(())
    );
    // With spaces, as an operator may write STRIPE_WEBHOOK_SECRET.
    let spaced = secrets(&format!(" {THIRD_SECRET} , {SECRET} "));
    assert_eq!(
        verify(
            body.as_bytes(),
            Some(&header),
            &spaced,
            DEFAULT_TOLERANCE,
            t
        ),
        Ok(())
    );
    let neither = secrets(&format!("{THIRD_SECRET},{OTHER_SECRET}"));
    assert_eq!(
        verify(
            body.as_bytes(),
            Some(&header),
            &neither,
            DEFAULT_TOLERANCE,
            t
        ),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn a_v0_only_header_is_refused() {
    let Some(script) = signer() else { return };
    let (body, _) = event_body(17, "customer.created", resource("customer"), None);
    let t = now();
    let v0 = sign_all(
        &script,
        &[ToSign {
            scheme: Some("v0"),
            ..req(&body, SECRET, t)
        }],
    )
    .remove(0);
    assert!(v0.starts_with(&format!("t={t},v0=")), "{v0}");
    assert_eq!(
        verify(
            body.as_bytes(),
            Some(&v0),
            &secrets(SECRET),
            DEFAULT_TOLERANCE,
            t
        ),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn large_bodies_up_to_the_limit() {
    let Some(script) = signer() else { return };
    // A customer event padded with metadata to just under the limit.
    let mut customer = resource("customer");
    let (small, _) = event_body(18, "customer.updated", customer.clone(), None);
    let pad = MAX_WEBHOOK_BYTES - small.len() - 200;
    customer["metadata"] = json!({ "padding": "x".repeat(pad) });
    let (body, want) = event_body(18, "customer.updated", customer, None);
    assert!(body.len() <= MAX_WEBHOOK_BYTES && body.len() > MAX_WEBHOOK_BYTES - 1024);
    let too_big = format!("{body}{}", " ".repeat(MAX_WEBHOOK_BYTES + 1 - body.len()));
    let t = now();
    let headers = sign_all(&script, &[req(&body, SECRET, t), req(&too_big, SECRET, t)]);
    let s = secrets(SECRET);
    assert_eq!(
        verify(body.as_bytes(), Some(&headers[0]), &s, DEFAULT_TOLERANCE, t),
        Ok(())
    );
    assert_eq!(parse_event(body.as_bytes()).unwrap().id, want.id);
    assert_eq!(
        verify(
            too_big.as_bytes(),
            Some(&headers[1]),
            &s,
            DEFAULT_TOLERANCE,
            t
        ),
        Err(SignatureError::PayloadTooLarge {
            max: MAX_WEBHOOK_BYTES
        })
    );
}

#[test]
fn verified_bodies_that_are_not_events_are_event_errors() {
    let Some(script) = signer() else { return };
    let mut not_events: Vec<(String, EventError)> = vec![
        ("{}".to_owned(), EventError::NotAnEvent),
        ("[]".to_owned(), EventError::NotAnEvent),
        ("null".to_owned(), EventError::NotAnEvent),
        ("{\"id\": \"evt_1\"".to_owned(), EventError::NotJson),
        ("not json".to_owned(), EventError::NotJson),
    ];
    // Fixture objects that are not events.
    for name in ["customer", "checkout.session", "subscription", "invoice"] {
        not_events.push((
            serde_json::to_string_pretty(&resource(name)).unwrap(),
            EventError::NotAnEvent,
        ));
    }
    // The event fixture, broken one member at a time.
    let broken: [(&str, Value); 6] = [
        ("object", json!("customer")),
        ("id", json!("cus_QXg1o8vcGmoR32")),
        ("type", json!("")),
        ("created", json!("1234567890")),
        ("livemode", json!(null)),
        ("data", json!({"object": "price_123"})),
    ];
    for (member, value) in broken {
        let mut e = resource("event");
        e[member] = value;
        not_events.push((
            serde_json::to_string_pretty(&e).unwrap(),
            EventError::NotAnEvent,
        ));
    }
    let mut no_data = resource("event");
    no_data.as_object_mut().unwrap().remove("data");
    not_events.push((
        serde_json::to_string(&no_data).unwrap(),
        EventError::NotAnEvent,
    ));

    let t = now();
    let requests: Vec<_> = not_events.iter().map(|(b, _)| req(b, SECRET, t)).collect();
    let headers = sign_all(&script, &requests);
    let s = secrets(SECRET);
    for ((body, want), header) in not_events.iter().zip(&headers) {
        // Authentic, so the signature check passes; only the event check fails.
        assert_eq!(
            verify(body.as_bytes(), Some(header), &s, DEFAULT_TOLERANCE, t),
            Ok(())
        );
        assert_eq!(
            parse_event(body.as_bytes()).as_ref().err(),
            Some(want),
            "{body:.80}"
        );
    }
}
