//! Alvryn inside your own axum service, without the reference server:
//! issue and verify tokens, verify Stripe webhooks, encrypt a field. Each
//! handler is the whole integration; copy the one you need.
//!
//! The example starts the service on 127.0.0.1 (a free port), calls it
//! with a tiny HTTP client, prints what came back and exits.
//!
//! Run: `cargo run --example embed_axum`

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alvryn_core::billing::webhook::{self, WebhookSecrets};
use alvryn_core::crypto::{FieldCipher, FieldContext, FileLedger, KeyMaterial, KeySet};
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings, TokenKind};
use alvryn_core::{SecretBytes, SecretString};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the handlers share. In production every secret comes from your
/// secret manager (or `alvryn_core::key::kms` for the field key).
struct App {
    tokens: JwtKeys,
    stripe_secrets: WebhookSecrets,
    cipher: FieldCipher,
}

type Shared = State<Arc<App>>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Token issue: `POST /token {"user": "..."}` (after your own login).
async fn issue(State(app): Shared, Json(body): Json<Value>) -> Result<Json<Value>, StatusCode> {
    let user = body["user"].as_str().ok_or(StatusCode::BAD_REQUEST)?;
    let jti = format!("{:x}", rand::random::<u128>());
    let claims = app
        .tokens
        .claims(TokenKind::Access, user, "session-1", &jti, now());
    let token = app
        .tokens
        .sign(&claims)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(
        json!({ "access_token": token, "expires_in": claims.exp - claims.iat }),
    ))
}

/// Token verify: `GET /whoami` with `Authorization: Bearer ...`.
async fn whoami(State(app): Shared, headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = app
        .tokens
        .verify(TokenKind::Access, token, now())
        .map_err(|_| StatusCode::UNAUTHORIZED)?;
    Ok(Json(json!({ "user": claims.sub })))
}

/// Stripe webhook: verify the signature over the raw body, then read it.
async fn stripe_webhook(
    State(app): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, StatusCode> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    webhook::verify(
        &body,
        signature,
        &app.stripe_secrets,
        webhook::DEFAULT_TOLERANCE,
        now(),
    )
    .map_err(|_| StatusCode::BAD_REQUEST)?;
    let event = webhook::parse_event(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    // Record event.id once (insert-if-absent) before acting on it.
    Ok(Json(
        json!({ "received": event.id, "type": event.event_type }),
    ))
}

/// Field encryption: seal a customer's tax id, bound to that customer.
async fn seal(State(app): Shared, Json(body): Json<Value>) -> Result<Json<Value>, StatusCode> {
    let (Some(customer), Some(tax_id)) = (body["customer"].as_str(), body["tax_id"].as_str())
    else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let ctx = FieldContext::new("customers", customer, "tax_id");
    let sealed = app
        .cipher
        .encrypt(&ctx, tax_id.as_bytes())
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(json!({ "sealed": sealed })))
}

/// Field decryption: a value moved to another customer does not open.
async fn open(State(app): Shared, Json(body): Json<Value>) -> Result<Json<Value>, StatusCode> {
    let (Some(customer), Some(sealed)) = (body["customer"].as_str(), body["sealed"].as_str())
    else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let ctx = FieldContext::new("customers", customer, "tax_id");
    let plain = app
        .cipher
        .decrypt(&ctx, sealed)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let tax_id = String::from_utf8(plain.expose().to_vec()).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(Json(json!({ "tax_id": tax_id })))
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/token", post(issue))
        .route("/whoami", get(whoami))
        .route("/stripe/webhook", post(stripe_webhook))
        .route("/tax-id", post(seal))
        .route("/tax-id/open", post(open))
        .with_state(app)
}

/// A tiny HTTP/1.1 client: one request per connection; status and body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer)).await??;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let whsec = SecretString::from("whsec_example_0123456789abcdef");
    let app = Arc::new(App {
        tokens: JwtKeys::new(
            JwtSettings::new("https://api.example.com", "example-app"),
            HmacSecrets::new(&SecretBytes::random(32)?, None)?,
            HmacSecrets::new(&SecretBytes::random(32)?, None)?,
        ),
        stripe_secrets: WebhookSecrets::parse(whsec.expose())?,
        cipher: FieldCipher::builder(
            KeySet::single(KeyMaterial::fingerprinted(SecretBytes::random(32)?)),
            // Counts each key's encryptions durably (the 2^32 bound).
            Arc::new(FileLedger::new(dir.path().join("usage.json"))),
        )
        .build()?,
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
    println!("listening on {addr}");

    // Tokens.
    let (status, body) = call(addr, "POST", "/token", &[JSON], br#"{"user":"user_42"}"#).await?;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body)?["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let (status, body) = call(addr, "GET", "/whoami", &[("Authorization", &bearer)], b"").await?;
    assert_eq!((status, body.as_str()), (200, r#"{"user":"user_42"}"#));
    println!("token issued and verified: {body}");
    let tampered = format!("{bearer}x");
    let (status, _) = call(addr, "GET", "/whoami", &[("Authorization", &tampered)], b"").await?;
    assert_eq!(status, 401);
    println!("a tampered token: {status}");

    // Stripe webhooks.
    let event = format!(
        r#"{{"id":"evt_example","object":"event","type":"customer.created","created":{},"livemode":false,"data":{{"object":{{"id":"cus_example","object":"customer"}}}}}}"#,
        now()
    );
    let signature = webhook::sign(event.as_bytes(), &whsec, now());
    let headers = [JSON, ("Stripe-Signature", signature.as_str())];
    let (status, body) = call(addr, "POST", "/stripe/webhook", &headers, event.as_bytes()).await?;
    assert_eq!(status, 200, "{body}");
    println!("signed webhook accepted: {body}");
    let forged = event.replace("cus_example", "cus_attacker");
    let (status, _) = call(addr, "POST", "/stripe/webhook", &headers, forged.as_bytes()).await?;
    assert_eq!(status, 400);
    println!("an altered webhook body: {status}");

    // Field encryption.
    let request = br#"{"customer":"cus_example","tax_id":"DE123456789"}"#;
    let (status, body) = call(addr, "POST", "/tax-id", &[JSON], request).await?;
    assert_eq!(status, 200, "{body}");
    let sealed = serde_json::from_str::<Value>(&body)?["sealed"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("sealed tax id: {sealed}");
    let reopen = |customer: &str| json!({ "customer": customer, "sealed": sealed }).to_string();
    let (status, body) = call(
        addr,
        "POST",
        "/tax-id/open",
        &[JSON],
        reopen("cus_example").as_bytes(),
    )
    .await?;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"tax_id":"DE123456789"}"#)
    );
    println!("opened for its customer: {body}");
    let (status, _) = call(
        addr,
        "POST",
        "/tax-id/open",
        &[JSON],
        reopen("cus_other").as_bytes(),
    )
    .await?;
    assert_eq!(status, 400);
    println!("copied onto another customer: {status}");

    server.abort();
    Ok(())
}
