//! Shared by the Stripe tests: signatures made by Stripe's own library
//! (npm `stripe`, `webhooks.generateTestHeaderString`) and event bodies
//! built from Stripe's published object fixtures
//! (`testdata/stripe/fixtures3.json`).
//!
//! The signer is `node $ALVRYN_TEST_STRIPE_SIGN` (scripts/stripe-sign,
//! installed and exported by scripts/test). Without it the tests skip
//! with a printed reason, unless `ALVRYN_TEST_REQUIRE_SERVICES` is set to
//! anything but `0`, when they fail.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The endpoint secret the tests verify with.
pub const SECRET: &str = "whsec_alvrynTestCurrentSecret0123456789";
/// Another endpoint's secret.
pub const OTHER_SECRET: &str = "whsec_alvrynTestOtherSecret9876543210";
/// A third, unrelated secret.
pub const THIRD_SECRET: &str = "whsec_alvrynTestUnrelatedSecret5555";

/// The signer script, or `None` (test skipped) when it is not configured.
pub fn signer() -> Option<String> {
    const VAR: &str = "ALVRYN_TEST_STRIPE_SIGN";
    match std::env::var(VAR) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("ALVRYN_TEST_REQUIRE_SERVICES").is_none_or(|v| v == "0"),
                "{VAR} is not set: run the suite with scripts/test, which installs Stripe's library"
            );
            eprintln!(
                "SKIPPED: {VAR} not set (run scripts/test, or `npm ci` in scripts/stripe-sign and \
                 set it to scripts/stripe-sign/sign.js)"
            );
            None
        }
    }
}

/// One payload for Stripe's library to sign.
pub struct ToSign<'a> {
    pub payload: &'a str,
    pub secret: &'a str,
    pub timestamp: i64,
    pub scheme: Option<&'a str>,
}

/// A v1 signature of `payload` with `secret` at `timestamp`.
pub fn req<'a>(payload: &'a str, secret: &'a str, timestamp: i64) -> ToSign<'a> {
    ToSign {
        payload,
        secret,
        timestamp,
        scheme: None,
    }
}

/// Signs every request with one run of the node script; one header each.
pub fn sign_all(script: &str, requests: &[ToSign<'_>]) -> Vec<String> {
    let mut input = String::new();
    for r in requests {
        let mut line = json!({"payload": r.payload, "secret": r.secret, "timestamp": r.timestamp});
        if let Some(scheme) = r.scheme {
            line["scheme"] = json!(scheme);
        }
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (is Node.js on PATH?)");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let headers: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .collect::<Result<_, _>>()
        .unwrap();
    writer.join().unwrap().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the signer failed: {status}");
    assert_eq!(headers.len(), requests.len(), "one header per request");
    headers
}

/// One signature header.
pub fn sign_one(script: &str, payload: &str, secret: &str, timestamp: i64) -> String {
    sign_all(script, &[req(payload, secret, timestamp)]).remove(0)
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The whole of `fixtures3.json`.
pub fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        // From alvryn-core's tests, and from the root package's (which
        // include this module by path).
        let path = [
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../testdata/stripe/fixtures3.json"
            ),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/stripe/fixtures3.json"
            ),
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("testdata/stripe/fixtures3.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    })
}

/// A fixture object, e.g. `subscription` or `checkout.session`.
pub fn resource(name: &str) -> Value {
    let r = fixtures()["resources"][name].clone();
    assert!(r.is_object(), "fixtures3.json has no resource {name}");
    r
}

/// Stripe's `event` fixture as the envelope around `object`, with the
/// given id, type and `created`, rendered with a pinned API version.
pub fn envelope(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    let mut event = resource("event");
    event["id"] = json!(id);
    event["type"] = json!(event_type);
    event["created"] = json!(created);
    event["api_version"] = json!("2025-06-30.basil");
    event["data"] = json!({ "object": object });
    event
}
