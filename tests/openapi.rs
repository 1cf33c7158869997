//! `GET /openapi.json`: generated from the routes themselves
//! (`utoipa_axum`), checked here for what it must say, and then held to by
//! schemathesis (PyPI, installed by `scripts/test`): generated requests
//! against the running server find no 5xx, and every answer matches the
//! status, content type and schema the description gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake_stripe.rs"]
mod fake_stripe;
#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;
mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::{Server, alvryn, post_json, run, service};

const KEY: &str = "sk_test_alvrynOpenApiDoNotLeak";

/// A server with billing configured against the test Stripe.
fn server(dir: &std::path::Path, stripe: &str) -> Server {
    let mut c = alvryn();
    support::billing_env(
        &mut c,
        dir,
        KEY,
        "whsec_alvrynOpenApi0123456789",
        "price_alvrynOpenApi:pro",
        Some(stripe),
    );
    Server::start(c)
}

fn document(server: &Server) -> Value {
    let (status, body) = server.request("GET", "/openapi.json", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_description_names_every_route_its_bodies_its_errors_and_its_auth() {
    let stripe = fake_stripe::start(KEY);
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &stripe.base);
    let doc = document(&server);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let operations: BTreeSet<String> = support::documented_operations(server.addr)
        .into_iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    let expected: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "POST /auth/signup",
        "POST /auth/login",
        "POST /auth/refresh",
        "POST /auth/logout",
        "POST /auth/logout-all",
        "GET /auth/me",
        "GET /auth/sessions",
        "DELETE /auth/sessions/{id}",
        "GET /auth/oauth/{provider}/start",
        "GET /auth/oauth/{provider}/callback",
        "POST /auth/oauth/exchange",
        "DELETE /auth/oauth/{provider}",
        "POST /billing/checkout",
        "POST /billing/portal",
        "GET /billing/subscription",
        "POST /webhooks/stripe",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let missing: Vec<_> = expected.difference(&operations).collect();
    assert!(missing.is_empty(), "undocumented: {missing:?}");

    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let o = &doc["paths"][path][method.to_lowercase()];
        let responses = o["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{op}: no success answer"
        );
        for status in ["400", "413", "429", "500", "503"] {
            let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
            // `/readyz`'s 503 is its check list with the error beside it.
            let want = if op == "GET /readyz" && status == "503" {
                "#/components/schemas/Readiness"
            } else {
                "#/components/schemas/ErrorBody"
            };
            assert_eq!(schema, want, "{op}: {status} is not the error body");
        }
        // The route is really served: not the router's 404 or 405.
        let concrete = path.replace("{provider}", "google").replace("{id}", "x");
        let (got, body) = server.request(method, &concrete, None);
        assert!(
            got != 405 && !(got == 404 && body.contains("no such resource")),
            "{op}: {got} {body}"
        );
    }
    // Who needs a token says so.
    for op in [
        "GET /auth/me",
        "POST /billing/checkout",
        "DELETE /auth/sessions/{id}",
    ] {
        let (method, path) = op.split_once(' ').unwrap();
        let security = &doc["paths"][path][method.to_lowercase()]["security"];
        assert_eq!(security, &json!([{ "bearer": [] }]), "{op}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let readiness = &doc["components"]["schemas"]["Readiness"]["properties"];
    assert!(
        readiness["error"].to_string().contains("ErrorDetail"),
        "{readiness}"
    );
    // Bodies are the handlers' own types.
    let credentials = &doc["components"]["schemas"]["Credentials"];
    assert_eq!(credentials["required"], json!(["email", "password"]));
    let tokens = &doc["components"]["schemas"]["TokensBody"]["properties"];
    for field in [
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "user",
    ] {
        assert!(tokens.get(field).is_some(), "TokensBody lacks {field}");
    }
    // And the document matches what a handler really answers.
    let r = post_json(
        server.addr,
        "/auth/signup",
        &json!({"email": "doc@example.com", "password": "correct horse battery staple"}),
        None,
    );
    let answered: BTreeSet<String> = r.json().as_object().unwrap().keys().cloned().collect();
    let documented: BTreeSet<String> = tokens.as_object().unwrap().keys().cloned().collect();
    assert_eq!(answered, documented);
}

#[test]
fn schemathesis_finds_no_server_error_and_every_answer_matches_the_description() {
    let Some(st) = service("ALVRYN_TEST_SCHEMATHESIS") else {
        return;
    };
    let stripe = fake_stripe::start(KEY);
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), &stripe.base);
    let r = post_json(
        server.addr,
        "/auth/signup",
        &json!({"email": "fuzz@example.com", "password": "correct horse battery staple"}),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();

    let mut c = std::process::Command::new(st);
    c.args([
        "run",
        &format!("http://{}/openapi.json", server.addr),
        "--header",
        &format!("Authorization: Bearer {token}"),
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples",
        "25",
        "--request-timeout",
        "20",
        "--seed",
        "20261130",
        "--no-color",
    ])
    .env("SCHEMATHESIS_HOOKS", "")
    .current_dir(dir.path());
    let out = run(c);
    assert_eq!(
        out.code,
        0,
        "schemathesis found problems:\n{}\n{}\nserver log:\n{}",
        out.stdout,
        out.stderr,
        server.log()
    );
    // It really ran against the API.
    assert!(
        out.stdout.contains("generated"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}
