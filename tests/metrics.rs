//! `/metrics` on the real server, after a scripted session of traffic:
//! Prometheus's own checker (`promtool check metrics`) accepts the
//! exposition, and each counter moved by exactly what the session did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;
mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::json;
use support::{Server, alvryn, post_json, raw_request, service};

const WHSEC: &str = "whsec_alvrynMetricsEndToEnd0123456789";
const KEY: &str = "sk_test_alvrynMetricsDoNotLeak";
/// base64 of the 32 bytes "metrics-field-key-0123456789abcd".
const FIELD_KEY_RAW: &[u8; 32] = b"metrics-field-key-0123456789abcd";

/// One parsed sample: name and labels.
type Series = (String, BTreeMap<String, String>);

/// The samples of a Prometheus text exposition.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_owned(), parse_labels(body))
            }
        };
        out.insert((name, labels), value);
    }
    out
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end..].trim_start_matches(',');
    }
    labels
}

/// The value of `name{labels}`, 0 when absent (a counter never moved).
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn scrape(addr: SocketAddr) -> String {
    let r = raw_request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.body
}

/// `promtool check metrics` on `text`: its output, empty when it passes.
fn promtool_check(promtool: &str, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn metrics_after_a_scripted_session_pass_promtool_and_count_exactly_what_happened() {
    let Some(promtool) = service("ALVRYN_TEST_PROMTOOL") else {
        return;
    };
    let Some(script) = stripe_support::signer() else {
        return;
    };
    use base64::Engine as _;
    let field_key = base64::engine::general_purpose::STANDARD.encode(FIELD_KEY_RAW);
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let mut c = alvryn();
    c.env("ALVRYN_REFRESH_GRACE_SECONDS", "0")
        .env("FIELD_ENCRYPTION_KEY", &field_key);
    support::billing_env(
        &mut c,
        dir.path(),
        KEY,
        WHSEC,
        "price_alvrynPro:pro",
        Some(&dead),
    );
    // S3 down: each event falls back to the database.
    support::s3_archive_env(&mut c, "alvryn-metrics-e2e", &dead);
    let server = Server::start(c);
    let addr = server.addr;

    let before_text = scrape(addr);
    let before = parse(&before_text);

    // The session.
    let email = "metrics-user@example.com";
    let password = "correct horse battery staple";
    let r = post_json(
        addr,
        "/auth/signup",
        &json!({"email": email, "password": password}),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let signed_up = r.json();
    let user_id = signed_up["user"]["id"].as_str().unwrap().to_owned();
    let r = post_json(
        addr,
        "/auth/login",
        &json!({"email": email, "password": password}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first_refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let r = post_json(
        addr,
        "/auth/login",
        &json!({"email": email, "password": "not the password at all"}),
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = post_json(
        addr,
        "/auth/refresh",
        &json!({"refresh_token": first_refresh}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let second_refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    // The retired token again (no grace window here): reuse.
    let r = post_json(
        addr,
        "/auth/refresh",
        &json!({"refresh_token": first_refresh}),
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (401, "token_reused"));
    let r = raw_request(addr, "GET", "/no/such/route", &[], b"");
    assert_eq!(r.status, 404);
    // A session id in a path: counted under the route's template.
    let access = signed_up["access_token"].as_str().unwrap();
    let r = support::with_bearer(addr, "DELETE", "/auth/sessions/not-a-session", access);
    assert!(
        r.status == 404 || r.status == 401,
        "{} {}",
        r.status,
        r.body
    );
    let deleted_status = r.status.to_string();
    // Signed webhooks: a known type (S3 down: archived in the database),
    // a type outside the known list, and a bad signature.
    let now = stripe_support::now();
    let known = serde_json::to_string(&stripe_support::envelope(
        "evt_metrics_known",
        "customer.created",
        now,
        stripe_support::resource("customer"),
    ))
    .unwrap();
    let odd = serde_json::to_string(&stripe_support::envelope(
        "evt_metrics_odd",
        "radar.early_fraud_warning.created",
        now,
        stripe_support::resource("customer"),
    ))
    .unwrap();
    let sigs = stripe_support::sign_all(
        &script,
        &[
            stripe_support::req(&known, WHSEC, now),
            stripe_support::req(&odd, WHSEC, now),
        ],
    );
    for (body, sig) in [(&known, &sigs[0]), (&odd, &sigs[1])] {
        let r = raw_request(
            addr,
            "POST",
            "/webhooks/stripe",
            &[
                ("Content-Type", "application/json"),
                ("Stripe-Signature", sig),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["outcome"], "ignored");
    }
    let r = raw_request(
        addr,
        "POST",
        "/webhooks/stripe",
        &[
            ("Content-Type", "application/json"),
            ("Stripe-Signature", "t=1,v1=00"),
        ],
        known.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let after_text = scrape(addr);
    let after = parse(&after_text);

    // Prometheus's own checker: format and naming conventions (counters
    // end in _total, base units, help text on every metric).
    let (ok, said) = promtool_check(&promtool, &after_text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool: {said}\n{after_text}"
    );

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    fn http<'a>(method: &'a str, route: &'a str, status: &'a str) -> [(&'a str, &'a str); 3] {
        [("method", method), ("route", route), ("status", status)]
    }
    /// A metric, its labels, and how much it must have moved.
    type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
    let expected: Vec<Expected> = vec![
        ("auth_signups_total", vec![("outcome", "ok")], 1.0),
        ("auth_signups_total", vec![("outcome", "refused")], 0.0),
        ("auth_logins_total", vec![("outcome", "ok")], 1.0),
        ("auth_logins_total", vec![("outcome", "failed")], 1.0),
        ("auth_refreshes_total", vec![("outcome", "ok")], 1.0),
        ("auth_refreshes_total", vec![("outcome", "reused")], 1.0),
        ("auth_refreshes_total", vec![("outcome", "invalid")], 0.0),
        ("auth_refresh_token_reuse_total", vec![], 1.0),
        (
            "webhook_events_total",
            vec![("type", "customer.created"), ("outcome", "ignored")],
            1.0,
        ),
        (
            "webhook_events_total",
            vec![("type", "other"), ("outcome", "ignored")],
            1.0,
        ),
        (
            "webhook_deliveries_rejected_total",
            vec![("reason", "signature")],
            1.0,
        ),
        ("archive_fallbacks_total", vec![], 2.0),
        (
            "http_requests_total",
            http("POST", "/auth/signup", "201").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("POST", "/auth/login", "200").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("POST", "/auth/login", "401").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("POST", "/auth/refresh", "200").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("POST", "/auth/refresh", "401").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("GET", "unmatched", "404").to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("DELETE", "/auth/sessions/{id}", &deleted_status).to_vec(),
            1.0,
        ),
        (
            "http_requests_total",
            http("POST", "/webhooks/stripe", "200").to_vec(),
            2.0,
        ),
        (
            "http_requests_total",
            http("POST", "/webhooks/stripe", "400").to_vec(),
            1.0,
        ),
        // The first scrape, counted once it was answered.
        (
            "http_requests_total",
            http("GET", "/metrics", "200").to_vec(),
            1.0,
        ),
        (
            "http_request_duration_seconds_count",
            http("POST", "/auth/login", "401").to_vec(),
            1.0,
        ),
        (
            "http_request_duration_seconds_count",
            http("POST", "/auth/signup", "201").to_vec(),
            1.0,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, labels, want) in &expected {
        let got = delta(name, labels);
        if (got - want).abs() > f64::EPSILON {
            wrong.push(format!("{name}{labels:?}: moved by {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n{after_text}", wrong.join("\n"));

    // The latency histogram has buckets and a +Inf bucket equal to its count.
    let inf = value(
        &after,
        "http_request_duration_seconds_bucket",
        &[
            ("method", "POST"),
            ("route", "/auth/login"),
            ("status", "200"),
            ("le", "+Inf"),
        ],
    );
    let count = value(
        &after,
        "http_request_duration_seconds_count",
        &http("POST", "/auth/login", "200"),
    );
    assert!(
        count >= 1.0 && (inf - count).abs() < f64::EPSILON,
        "{after_text}"
    );

    // The field key's usage against its limit, under its fingerprint.
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"alvryn.key-id.v1");
    h.update(FIELD_KEY_RAW);
    let fingerprint: String = std::iter::once("k".to_owned())
        .chain(h.finalize()[..8].iter().map(|b| format!("{b:02x}")))
        .collect();
    let limit = value(
        &after,
        "field_encryption_limit",
        &[("key_id", &fingerprint)],
    );
    assert!((limit - 4_294_967_296.0).abs() < 1.0, "{after_text}");
    let keys: Vec<&BTreeMap<String, String>> = after
        .keys()
        .filter(|(name, _)| name == "field_encryptions")
        .map(|(_, labels)| labels)
        .collect();
    assert_eq!(
        keys,
        [&BTreeMap::from([(
            "key_id".to_owned(),
            fingerprint.clone()
        )])],
        "the configured key only (not the start-up self-test's): {after_text}"
    );

    // Only bounded labels: no email, user id, token, event id or key.
    for secret in [
        email,
        user_id.as_str(),
        first_refresh.as_str(),
        second_refresh.as_str(),
        access,
        "evt_metrics",
        "not-a-session",
        "no/such/route",
        "radar.early_fraud_warning",
        field_key.as_str(),
        KEY,
        WHSEC,
    ] {
        assert!(!after_text.contains(secret), "{secret} is in /metrics");
    }
}
