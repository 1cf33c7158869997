//! What every answer carries, end to end against the real binary over
//! real sockets: the security headers on every route and every error,
//! CORS for the listed origins only, request ids in answers and logs,
//! JSON logs without secrets, and `/readyz` against real S3 (moto).
//!
//! The OAuth routes run against the test OpenID provider and S3 against
//! moto, both started by `scripts/test` (`ALVRYN_TEST_OIDC_URL`,
//! `ALVRYN_TEST_MOTO_URL`); without them those tests print SKIPPED,
//! unless `ALVRYN_TEST_REQUIRE_SERVICES` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::{Value, json};
use support::{
    PASSWORD, Response, Server, alvryn, free_port, post_json, raw_bytes, raw_request, service,
    signed_up as signup, with_bearer,
};
use url::Url;

const FRONTEND: &str = "https://app.example.com";
const JWT: &str = "web-hardening-access-secret-0123456789abcdef";
const JWT_REFRESH: &str = "web-hardening-refresh-secret-0123456789abcdef";
const STRIPE_KEY: &str = "sk_test_webHardeningDoNotLeak";
const WHSEC: &str = "whsec_webHardeningDoNotLeak0123456789";

/// Billing on `c` with this file's secrets, Stripe's API where nothing
/// listens.
fn billing(c: &mut std::process::Command, dir: &std::path::Path) {
    support::billing_env(c, dir, STRIPE_KEY, WHSEC, "price_webHardening:pro", None);
}

/// The headers every answer must carry, with their exact values (written
/// out here, not taken from the server's code, so a change there shows).
const SECURITY: [(&str, &str); 12] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-dns-prefetch-control", "off"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-download-options", "noopen"),
    ("origin-agent-cluster", "?1"),
    ("x-xss-protection", "0"),
];

/// Every value of header `name` in `r` (case-insensitive name).
fn all(r: &Response, name: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Each security header exactly once with its value, and no banner.
fn assert_security_headers(what: &str, r: &Response) {
    for (name, value) in SECURITY {
        assert_eq!(
            all(r, name),
            [value],
            "{what}: {name} (status {}, headers {:?})",
            r.status,
            r.headers
        );
    }
    for banner in ["server", "x-powered-by"] {
        assert!(
            all(r, banner).is_empty(),
            "{what}: {banner} sent: {:?}",
            r.headers
        );
    }
}

/// The request id of an answer of the service: exactly one, sane.
fn request_id(what: &str, r: &Response) -> String {
    let ids = all(r, "x-request-id");
    assert_eq!(ids.len(), 1, "{what}: x-request-id {:?}", r.headers);
    let id = ids[0].clone();
    assert!(
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')),
        "{what}: {id:?}"
    );
    id
}

/// A generated id: a UUID (8-4-4-4-12 hex digits).
fn is_uuid(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()))
}

fn tokens(r: &Response) -> (String, String) {
    let v = r.json();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// The routes the server declares: every operation of its
/// `/openapi.json` (the router is built from that description, see
/// `alvryn-server/src/openapi.rs`), and the description itself. A route
/// added and missing from the header test fails it.
fn declared_routes(addr: std::net::SocketAddr) -> BTreeSet<(String, String)> {
    let mut routes = support::documented_operations(addr);
    routes.insert(("GET".to_owned(), "/openapi.json".to_owned()));
    assert!(routes.len() >= 10, "{routes:?}");
    routes
}

// ------------------------------------------------------------ security headers

/// One answer of the header test: the route template it exercised (if
/// any), what it was, the answer and its expected status.
struct Seen {
    route: Option<(&'static str, &'static str)>,
    what: String,
    response: Response,
    status: u16,
}

fn seen(route: Option<(&'static str, &'static str)>, what: &str, r: Response, status: u16) -> Seen {
    Seen {
        route,
        what: what.to_owned(),
        response: r,
        status,
    }
}

#[test]
fn every_route_and_every_error_carries_the_security_headers() {
    let Some(oidc) = service("ALVRYN_TEST_OIDC_URL") else {
        return;
    };
    let oidc = oidc.trim_end_matches('/').to_owned();
    let oidc_addr = Url::parse(&oidc).unwrap().socket_addrs(|| None).unwrap()[0];
    let client_id = support::unique("alvryn-web-");
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path())
        .env("FRONTEND_URL", FRONTEND)
        .env("GOOGLE_CLIENT_ID", &client_id)
        .env("GOOGLE_CLIENT_SECRET", "web-hardening-client-secret")
        .env(
            "GOOGLE_DISCOVERY_URL",
            format!("{oidc}/.well-known/openid-configuration"),
        )
        .env("GOOGLE_ISSUER", &oidc);
    // No request below reaches Stripe.
    billing(&mut c, dir.path());
    let server = Server::start(c);
    let a = server.addr;
    let mut seen_all: Vec<Seen> = Vec::new();
    // Keeps an answer with a JSON body; answers the body.
    let see = |all: &mut Vec<Seen>, route, what: &str, r: Response, status| {
        let out = r.json();
        all.push(seen(route, what, r, status));
        out
    };

    // Operations.
    let r = raw_request(a, "GET", "/openapi.json", &[], b"");
    assert!(r.json()["paths"].is_object(), "{}", r.body);
    seen_all.push(seen(Some(("GET", "/openapi.json")), "openapi", r, 200));
    let r = raw_request(a, "GET", "/metrics", &[], b"");
    assert!(r.body.contains("# TYPE"), "{}", r.body);
    seen_all.push(seen(Some(("GET", "/metrics")), "metrics", r, 200));
    see(
        &mut seen_all,
        Some(("GET", "/healthz")),
        "healthz",
        raw_request(a, "GET", "/healthz", &[], b""),
        200,
    );
    see(
        &mut seen_all,
        Some(("GET", "/readyz")),
        "readyz",
        raw_request(a, "GET", "/readyz", &[], b""),
        200,
    );

    // Accounts and sessions.
    let email = format!("{}@example.com", support::unique("web-"));
    let r = signup(a, &email);
    let (access, refresh) = tokens(&r);
    see(
        &mut seen_all,
        Some(("POST", "/auth/signup")),
        "signup",
        r,
        201,
    );
    let r = post_json(
        a,
        "/auth/login",
        &json!({"email": email, "password": PASSWORD}),
        None,
    );
    let (_, refresh2) = tokens(&r);
    see(
        &mut seen_all,
        Some(("POST", "/auth/login")),
        "login",
        r,
        200,
    );
    let r = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": refresh2}),
        None,
    );
    see(
        &mut seen_all,
        Some(("POST", "/auth/refresh")),
        "refresh",
        r,
        200,
    );
    see(
        &mut seen_all,
        Some(("GET", "/auth/me")),
        "me",
        with_bearer(a, "GET", "/auth/me", &access),
        200,
    );
    let sessions = see(
        &mut seen_all,
        Some(("GET", "/auth/sessions")),
        "sessions",
        with_bearer(a, "GET", "/auth/sessions", &access),
        200,
    );
    let other = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .expect("the login's session")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = with_bearer(a, "DELETE", &format!("/auth/sessions/{other}"), &access);
    seen_all.push(seen(
        Some(("DELETE", "/auth/sessions/{id}")),
        "revoke a session",
        r,
        204,
    ));

    // Sign-in with a provider: the browser's redirects.
    let r = post_json(
        oidc_addr,
        "/__control/next",
        &json!({
            "client_id": client_id,
            "claims": {"sub": support::unique("sub-"), "email": support::unique("oidc-") + "@example.com", "email_verified": true},
            "mode": "normal",
            "hmac_key": "pem",
        }),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let start = raw_request(
        a,
        "GET",
        "/auth/oauth/google/start?redirect_to=/after",
        &[],
        b"",
    );
    let cookie = start
        .header("set-cookie")
        .expect("start sets the login cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let to_provider = Url::parse(start.header("location").expect("a Location")).unwrap();
    assert!(to_provider.as_str().starts_with(&oidc), "{to_provider}");
    seen_all.push(seen(
        Some(("GET", "/auth/oauth/{provider}/start")),
        "oauth start",
        start,
        302,
    ));
    let at_provider = raw_request(
        oidc_addr,
        "GET",
        &to_provider[url::Position::BeforePath..],
        &[],
        b"",
    );
    assert_eq!(at_provider.status, 302, "{}", at_provider.body);
    let back = Url::parse(at_provider.header("location").unwrap()).unwrap();
    let callback = raw_request(
        a,
        "GET",
        &back[url::Position::BeforePath..],
        &[("Cookie", &cookie)],
        b"",
    );
    let landed = Url::parse(callback.header("location").expect("a Location")).unwrap();
    assert_eq!(landed.origin().ascii_serialization(), FRONTEND, "{landed}");
    assert_eq!(landed.path(), "/after", "{landed}");
    let code = landed
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {landed}"))
        .1
        .into_owned();
    seen_all.push(seen(
        Some(("GET", "/auth/oauth/{provider}/callback")),
        "oauth callback",
        callback,
        302,
    ));
    let r = post_json(a, "/auth/oauth/exchange", &json!({"code": code}), None);
    let (oauth_access, _) = tokens(&r);
    see(
        &mut seen_all,
        Some(("POST", "/auth/oauth/exchange")),
        "oauth exchange",
        r,
        200,
    );
    // The provider's only sign-in method: the link stays.
    let r = with_bearer(a, "DELETE", "/auth/oauth/google", &oauth_access);
    assert_eq!(r.code(), "last_sign_in_method", "{}", r.body);
    see(
        &mut seen_all,
        Some(("DELETE", "/auth/oauth/{provider}")),
        "oauth unlink",
        r,
        409,
    );

    // Billing and the webhook (no request reaches Stripe).
    let r = post_json(
        a,
        "/billing/checkout",
        &json!({"plan": "gold"}),
        Some(&access),
    );
    assert_eq!(r.code(), "unknown_plan", "{}", r.body);
    see(
        &mut seen_all,
        Some(("POST", "/billing/checkout")),
        "checkout",
        r,
        400,
    );
    let r = post_json(a, "/billing/portal", &json!({}), Some(&access));
    assert_eq!(r.code(), "no_billing_account", "{}", r.body);
    see(
        &mut seen_all,
        Some(("POST", "/billing/portal")),
        "portal",
        r,
        409,
    );
    see(
        &mut seen_all,
        Some(("GET", "/billing/subscription")),
        "subscription",
        with_bearer(a, "GET", "/billing/subscription", &access),
        200,
    );
    let r = raw_request(
        a,
        "POST",
        "/webhooks/stripe",
        &[
            ("Content-Type", "application/json"),
            ("Stripe-Signature", "t=1,v1=00"),
        ],
        b"{}",
    );
    assert_eq!(r.code(), "invalid_signature", "{}", r.body);
    see(
        &mut seen_all,
        Some(("POST", "/webhooks/stripe")),
        "webhook",
        r,
        400,
    );

    // The ends of sessions.
    let r = post_json(a, "/auth/logout", &json!({"refresh_token": refresh}), None);
    seen_all.push(seen(Some(("POST", "/auth/logout")), "logout", r, 204));
    let r = with_bearer(a, "POST", "/auth/logout-all", &oauth_access);
    seen_all.push(seen(
        Some(("POST", "/auth/logout-all")),
        "logout-all",
        r,
        204,
    ));

    // Errors the service answers.
    let json_ct = [("Content-Type", "application/json")];
    for (what, r, status, code) in [
        (
            "400 invalid_json",
            raw_request(a, "POST", "/auth/login", &json_ct, b"{"),
            400,
            "invalid_json",
        ),
        (
            "401 no token",
            raw_request(a, "GET", "/auth/me", &[], b""),
            401,
            "unauthorized",
        ),
        (
            "404 unknown path",
            raw_request(a, "GET", "/no/such/path", &[], b""),
            404,
            "not_found",
        ),
        (
            "405 wrong method",
            raw_request(a, "GET", "/auth/login", &[], b""),
            405,
            "method_not_allowed",
        ),
        (
            "413 body too large",
            raw_request(a, "POST", "/auth/login", &json_ct, &vec![b' '; 17 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            "415 not JSON",
            raw_request(
                a,
                "POST",
                "/auth/login",
                &[("Content-Type", "text/plain")],
                b"{}",
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "414 target over 8 KiB",
            raw_request(
                a,
                "GET",
                &format!("/healthz?{}", "a".repeat(9 * 1024)),
                &[],
                b"",
            ),
            414,
            "uri_too_long",
        ),
        (
            "431 headers over 32 KiB",
            raw_request(
                a,
                "GET",
                "/healthz",
                &[("X-Big", &"b".repeat(40 * 1024))],
                b"",
            ),
            431,
            "headers_too_large",
        ),
    ] {
        assert_eq!(r.code(), code, "{what}: {}", r.body);
        seen_all.push(seen(None, what, r, status));
    }
    // A CORS preflight is answered before any route.
    let r = raw_request(
        a,
        "OPTIONS",
        "/auth/login",
        &[
            ("Origin", FRONTEND),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    seen_all.push(seen(None, "preflight", r, 200));

    // Billing not configured: another server.
    let bare_dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", bare_dir.path());
    let bare = Server::start(c);
    let r = raw_request(
        bare.addr,
        "POST",
        "/webhooks/stripe",
        &[
            ("Content-Type", "application/json"),
            ("Stripe-Signature", "t=1,v1=00"),
        ],
        b"{}",
    );
    assert_eq!(r.code(), "billing_not_configured", "{}", r.body);
    seen_all.push(seen(None, "503 billing_not_configured", r, 503));

    let mut exercised = BTreeSet::new();
    for s in &seen_all {
        assert_eq!(
            s.response.status, s.status,
            "{}: {}",
            s.what, s.response.body
        );
        assert_security_headers(&s.what, &s.response);
        request_id(&s.what, &s.response);
        if let Some((m, p)) = s.route {
            exercised.insert((m.to_owned(), p.to_owned()));
        }
    }
    assert_eq!(
        exercised,
        declared_routes(a),
        "the header test must exercise exactly the routes the server declares"
    );

    // What the HTTP layer answers by itself (no request id: no request).
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (what, bytes, status) in [
        ("hyper 400", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "hyper 414",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(70_000)).into_bytes(),
            414,
        ),
        (
            "hyper 431",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
            431,
        ),
    ] {
        let r = raw_bytes(a, &bytes);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        r.code();
        assert_security_headers(what, &r);
        assert_eq!(
            r.header("content-length").and_then(|l| l.parse().ok()),
            Some(r.body.len()),
            "{what}"
        );
    }
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

// ------------------------------------------------------------ CORS

fn preflight(a: SocketAddr, origin: &str) -> Response {
    raw_request(
        a,
        "OPTIONS",
        "/auth/login",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,authorization",
            ),
        ],
        b"",
    )
}

fn lower_list(r: &Response, name: &str) -> Vec<String> {
    all(r, name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn cors_allows_the_listed_origins_with_credentials_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path())
        .env("FRONTEND_URL", format!("{FRONTEND}/web/"))
        .env(
            "CORS_ORIGINS",
            "https://admin.example.com, http://localhost:5173",
        );
    let server = Server::start(c);
    let a = server.addr;

    for origin in [
        FRONTEND,
        "https://admin.example.com",
        "http://localhost:5173",
    ] {
        let r = preflight(a, origin);
        assert_eq!(r.status, 200, "{origin}: {}", r.body);
        assert_eq!(all(&r, "access-control-allow-origin"), [origin], "{origin}");
        assert_eq!(
            all(&r, "access-control-allow-credentials"),
            ["true"],
            "{origin}"
        );
        let methods = lower_list(&r, "access-control-allow-methods");
        assert!(methods.contains(&"post".to_owned()), "{methods:?}");
        assert!(
            methods
                .iter()
                .all(|m| ["get", "post", "delete"].contains(&m.as_str())),
            "{methods:?}"
        );
        let headers = lower_list(&r, "access-control-allow-headers");
        assert_eq!(
            headers.iter().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from(["authorization".to_owned(), "content-type".to_owned()]),
            "{origin}"
        );
        assert_eq!(all(&r, "access-control-max-age"), ["600"], "{origin}");
        assert!(
            lower_list(&r, "vary").contains(&"origin".to_owned()),
            "{:?}",
            r.headers
        );
        assert_security_headers(origin, &r);
    }

    // Origins not on the list, some of them close: no allow-origin, no
    // credentials, in a preflight or in a request.
    let signed_up = signup(a, &format!("{}@example.com", support::unique("cors-")));
    let (access, _) = tokens(&signed_up);
    for origin in [
        "https://evil.example.com",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://admin.example.com.",
        "null",
        "*",
    ] {
        let r = preflight(a, origin);
        assert!(
            all(&r, "access-control-allow-origin").is_empty(),
            "{origin}: {:?}",
            r.headers
        );
        assert!(
            all(&r, "access-control-allow-credentials").is_empty(),
            "{origin}: {:?}",
            r.headers
        );
        let r = raw_request(
            a,
            "GET",
            "/auth/me",
            &[
                ("Origin", origin),
                ("Authorization", &format!("Bearer {access}")),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            all(&r, "access-control-allow-origin").is_empty(),
            "{origin}: {:?}",
            r.headers
        );
        assert!(
            all(&r, "access-control-allow-credentials").is_empty(),
            "{origin}: {:?}",
            r.headers
        );
        assert!(
            !r.headers
                .iter()
                .any(|(_, v)| v.contains(origin) && origin.len() > 4),
            "{origin} reflected: {:?}",
            r.headers
        );
        assert!(
            lower_list(&r, "vary").contains(&"origin".to_owned()),
            "{:?}",
            r.headers
        );
    }

    // A request from the frontend can read its answer and its request id.
    let r = raw_request(
        a,
        "GET",
        "/auth/me",
        &[
            ("Origin", FRONTEND),
            ("Authorization", &format!("Bearer {access}")),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(all(&r, "access-control-allow-origin"), [FRONTEND]);
    assert_eq!(all(&r, "access-control-allow-credentials"), ["true"]);
    let exposed = lower_list(&r, "access-control-expose-headers");
    for name in [
        "x-request-id",
        "retry-after",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        assert!(
            exposed.contains(&name.to_owned()),
            "{name} not exposed: {exposed:?}"
        );
    }

    // Stripe's webhook calls come from no browser: no Origin, no CORS,
    // the route answers for itself.
    let r = raw_request(
        a,
        "POST",
        "/webhooks/stripe",
        &[
            ("Content-Type", "application/json"),
            ("Stripe-Signature", "t=1,v1=00"),
        ],
        b"{}",
    );
    assert_eq!(r.code(), "billing_not_configured", "{}", r.body);
    assert!(all(&r, "access-control-allow-origin").is_empty());
}

// ------------------------------------------------------------ request ids

/// A server whose `/readyz` logs a warning inside the request (its S3
/// bucket is at an endpoint where nothing listens).
fn server_with_dead_s3(dir: &std::path::Path, json_logs: bool) -> Server {
    let mut c = alvryn();
    billing(&mut c, dir);
    support::s3_archive_env(
        &mut c,
        "alvryn-web-hardening",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    if json_logs {
        c.env("ALVRYN_LOG_FORMAT", "json");
    }
    Server::start(c)
}

#[test]
fn request_ids_are_echoed_when_sane_replaced_when_not_and_name_every_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_dead_s3(dir.path(), false);
    let a = server.addr;

    // A sane id: echoed, and on every line the request logged (the
    // readiness warnings and the access line).
    let sane = "client-7f3a.b_42";
    let r = raw_request(a, "GET", "/readyz", &[("X-Request-Id", sane)], b"");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(request_id("readyz", &r), sane);
    let log = server.log_with(&["route=/readyz"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(sane)).collect();
    assert!(
        lines.iter().any(|l| l.contains("readiness check failed")),
        "the warning names the request:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains("alvryn::access")
            && l.contains("route=/readyz")
            && l.contains("status=503")),
        "the access line names it:\n{log}"
    );
    for l in log.lines().filter(|l| l.contains("readiness check failed")) {
        assert!(
            l.contains(&format!("request_id={sane}")),
            "a line of the request without its id: {l}"
        );
    }

    // Insane ids are replaced by generated ones and never logged.
    let long = "x".repeat(129);
    let insane: [(&str, Vec<(&str, &str)>); 5] = [
        ("too long", vec![("X-Request-Id", long.as_str())]),
        (
            "CRLF, encoded",
            vec![("X-Request-Id", "abc%0d%0aSet-Cookie:%20x=1")],
        ),
        ("spaces and a colon", vec![("X-Request-Id", "abc def: ghi")]),
        ("unicode", vec![("X-Request-Id", "réq-ünïcode")]),
        (
            "two of them",
            vec![("X-Request-Id", "first-id"), ("X-Request-Id", "second-id")],
        ),
    ];
    let mut generated = BTreeSet::new();
    for (what, headers) in &insane {
        let r = raw_request(a, "GET", "/healthz", headers, b"");
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        let id = request_id(what, &r);
        assert!(is_uuid(&id), "{what}: not a generated id: {id}");
        assert!(generated.insert(id), "{what}: an id was repeated");
    }
    // No id sent: one is made; each request its own.
    for _ in 0..3 {
        let r = raw_request(a, "GET", "/healthz", &[], b"");
        let id = request_id("none sent", &r);
        assert!(is_uuid(&id), "{id}");
        assert!(generated.insert(id));
    }
    let ids: Vec<String> = generated
        .iter()
        .map(|id| format!("request_id={id}"))
        .collect();
    let log = server.log_with(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    for bad in [
        long.as_str(),
        "%0d%0a",
        "abc def",
        "ünï",
        "first-id",
        "second-id",
    ] {
        assert!(!log.contains(bad), "{bad:?} reached the log:\n{log}");
    }
    for id in &generated {
        assert!(
            log.contains(&format!("request_id={id}")),
            "{id} not logged:\n{log}"
        );
    }
}

// ------------------------------------------------------------ JSON logs

#[test]
fn json_logs_are_one_object_a_line_with_route_templates_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path())
        .env("ALVRYN_LOG_FORMAT", "json")
        // Everything down to debug, to show that no level logs a secret.
        .env("ALVRYN_LOG", "debug")
        .env("JWT_SECRET", JWT)
        .env("JWT_REFRESH_SECRET", JWT_REFRESH);
    let server = Server::start(c);
    let a = server.addr;

    let email = format!("{}@example.com", support::unique("json-"));
    let mut secrets: Vec<String> =
        vec![PASSWORD.to_owned(), JWT.to_owned(), JWT_REFRESH.to_owned()];
    let r = signup(a, &email);
    let (access, refresh) = tokens(&r);
    secrets.extend([access.clone(), refresh.clone()]);
    let r = post_json(
        a,
        "/auth/login",
        &json!({"email": email, "password": PASSWORD}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (access2, refresh2) = tokens(&r);
    secrets.extend([access2.clone(), refresh2.clone()]);
    let r = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": refresh2}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (access3, refresh3) = tokens(&r);
    secrets.extend([access3.clone(), refresh3.clone()]);
    // A wrong password, a token in a query string and in a cookie.
    let wrong = "wrong horse battery staple 1234";
    secrets.push(wrong.to_owned());
    let r = post_json(
        a,
        "/auth/login",
        &json!({"email": email, "password": wrong}),
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = raw_request(
        a,
        "GET",
        &format!("/auth/me?access_token={access3}&token=query-secret-value"),
        &[
            ("Authorization", &format!("Bearer {access3}")),
            ("Cookie", "session=cookie-secret-value"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    secrets.extend([
        "query-secret-value".to_owned(),
        "cookie-secret-value".to_owned(),
    ]);
    // A real session id, revoked.
    let list = with_bearer(a, "GET", "/auth/sessions", &access3).json();
    let victim = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .expect("the sign-up's session")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = with_bearer(a, "DELETE", &format!("/auth/sessions/{victim}"), &access3);
    assert_eq!(r.status, 204, "{}", r.body);
    let revoke_id = request_id("revoke", &r);
    let r = raw_request(a, "GET", "/no/such/thing-with-an-id-123", &[], b"");
    assert_eq!(r.status, 404);
    let r = post_json(a, "/auth/logout", &json!({"refresh_token": refresh3}), None);
    assert_eq!(r.status, 204, "{}", r.body);

    // Let the last access line reach the log, then read it all.
    let log = server.log_with(&["\"route\":\"/auth/logout\""]);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            v
        })
        .collect();
    assert!(lines.len() > 10, "{log}");
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "a secret reached the log: {s}\n{log}"
        );
    }

    let access_lines: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "alvryn::access")
        .collect();
    // Every request got one line, with its fields.
    assert!(access_lines.len() >= 9, "{log}");
    for v in &access_lines {
        assert_eq!(v["level"], "INFO", "{v}");
        assert!(v["method"].is_string() && v["route"].is_string(), "{v}");
        assert!(v["status"].is_u64(), "{v}");
        assert!(v["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{v}");
        let id = v["request_id"].as_str().expect("request_id");
        assert_eq!(v["span"]["request_id"], id, "{v}");
        let route = v["route"].as_str().unwrap();
        assert!(!route.contains('?'), "{v}");
    }
    let revoke = access_lines
        .iter()
        .find(|v| v["request_id"] == revoke_id.as_str())
        .unwrap_or_else(|| panic!("no access line for {revoke_id}:\n{log}"));
    assert_eq!(revoke["method"], "DELETE");
    assert_eq!(revoke["route"], "/auth/sessions/{id}");
    assert_eq!(revoke["status"], 204);
    assert!(
        !log.contains(&victim),
        "the session id reached the log:\n{log}"
    );
    // Unknown paths are not written out.
    assert!(
        access_lines
            .iter()
            .any(|v| v["route"] == "unmatched" && v["status"] == 404)
    );
    assert!(!log.contains("thing-with-an-id-123"), "{log}");
    // The start-up lines are JSON too.
    assert!(lines.iter().any(|v| v["message"] == "listening"), "{log}");
}

// ------------------------------------------------------------ readiness

fn readyz(a: SocketAddr) -> (Response, Value) {
    let r = raw_request(a, "GET", "/readyz", &[], b"");
    let v = r.json();
    (r, v)
}

/// `/readyz` once `settled` holds for its answer, or its answer after
/// 20 s. Each check has a 2 s bound, and on a loaded machine a first
/// synced write or a first S3 call can take longer: a probe asks again,
/// and so does this.
fn readyz_once(a: SocketAddr, settled: impl Fn(&Value) -> bool) -> (Response, Value) {
    support::eventually(20, || {
        let (r, v) = readyz(a);
        settled(&v).then_some((r, v))
    })
    .unwrap_or_else(|| readyz(a))
}

fn is_ready(v: &Value) -> bool {
    v["status"] == "ready"
}

#[test]
fn readyz_is_200_when_all_is_well_without_s3() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path());
    let server = Server::start(c);
    let (r, v) = readyz_once(server.addr, is_ready);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        v,
        json!({"status": "ready", "checks": {"store": "ok", "field_key": "ok", "s3": "not_configured"}})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let (r, _) = readyz(server.addr);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = raw_request(server.addr, "GET", "/healthz", &[], b"");
    assert_eq!(r.json(), json!({"status": "ok"}));
}

fn s3_server(dir: &std::path::Path, endpoint: &str, bucket: &str) -> Server {
    let mut c = alvryn();
    billing(&mut c, dir);
    support::s3_archive_env(&mut c, bucket, endpoint);
    Server::start(c)
}

fn assert_not_ready_for_s3(server: &Server, what: &str) {
    // Once the store and key checks pass (they may time out at first);
    // S3 never does here.
    let (r, v) = readyz_once(server.addr, |v| {
        v["checks"]["store"] == "ok" && v["checks"]["field_key"] == "ok"
    });
    assert_eq!(r.status, 503, "{what}: {}", r.body);
    assert_eq!(v["status"], "not_ready", "{what}: {v}");
    assert_eq!(v["checks"]["store"], "ok", "{what}: {v}");
    assert_eq!(v["checks"]["field_key"], "ok", "{what}: {v}");
    assert!(
        matches!(v["checks"]["s3"].as_str(), Some("failed" | "timeout")),
        "{what}: {v}"
    );
    assert_eq!(v["error"]["code"], "not_ready", "{what}: {v}");
    assert_eq!(v["error"]["message"], "not ready: s3", "{what}: {v}");
    // The cause is in the log, not in the answer.
    for inner in [
        "127.0.0.1",
        "dispatch",
        "refused",
        "NoSuchBucket",
        "NotFound",
        "alvryn-",
    ] {
        assert!(!r.body.contains(inner), "{what}: {inner} in {}", r.body);
    }
    assert!(
        server
            .log_with(&["readiness check failed"])
            .contains("readiness check failed"),
        "{what}: {}",
        server.log()
    );
}

#[test]
fn readyz_checks_the_archive_bucket_on_s3() {
    // S3 down: nothing listens at the endpoint.
    let dir = tempfile::tempdir().unwrap();
    let dead = server_with_dead_s3(dir.path(), false);
    assert_not_ready_for_s3(&dead, "S3 down");
    drop(dead);

    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    // A bucket that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let missing = s3_server(dir.path(), &moto, &support::unique("alvryn-missing-"));
    assert_not_ready_for_s3(&missing, "bucket missing");
    drop(missing);

    // The bucket exists: ready.
    let bucket = support::unique("alvryn-ready-");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        support::s3_client(&moto)
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server(dir.path(), &moto, &bucket);
    let (r, v) = readyz_once(server.addr, is_ready);
    assert_eq!(r.status, 200, "{}\n{}", r.body, server.log());
    assert_eq!(
        v,
        json!({"status": "ready", "checks": {"store": "ok", "field_key": "ok", "s3": "ok"}})
    );
}

/// The log check every end-to-end server gets on drop (`tests/support`)
/// finds what it looks for.
#[test]
fn the_log_check_of_every_server_catches_each_kind_of_leak() {
    let clean = "INFO request{request_id=abc} route=/auth/login status=200";
    assert_eq!(support::leaked(clean, &[]), None);
    let configured = ["whsec_configuredSecret123".to_owned()];
    assert!(support::leaked("sig with whsec_configuredSecret123 in it", &configured).is_some());
    support::watch_secret("a-password-someone-sent-42");
    assert!(support::leaked("body: a-password-someone-sent-42", &[]).is_some());
    // Anything shaped like one of our JWTs.
    assert!(support::leaked("token eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.x", &[]).is_some());
    // Too short to watch without false alarms.
    support::watch_secret("short");
    assert_eq!(support::leaked("a short line", &[]), None);
}
