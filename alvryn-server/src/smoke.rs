//! `alvryn smoke --url URL`: the post-deploy check.
//!
//! Runs, against a deployed server, what a user and Stripe would do, and
//! prints one line per step:
//!
//! ```text
//! PASS health 3ms
//! SKIP readiness: /readyz not served (404)
//! PASS signup 41ms
//! FAIL login: 401 invalid_credentials
//! ```
//!
//! Steps: `health` (`/healthz`), `readiness` (`/readyz`; 404 is a skip),
//! `signup` (a throwaway account `smoke+<random>@example.invalid` with a
//! random password), `login`, `me` (`/auth/me` with the new access
//! token), `refresh`, `logout` (and the access token refused right
//! after), with `--webhook-secret` `webhook` (a signed `customer.created`
//! event, which the pipeline archives and ignores, so it changes nothing)
//! and `webhook-forgery` (the same with a wrong signature must be 400
//! `invalid_signature`), and `metrics` (`/metrics`; 404 is a skip).
//! A step that needs an earlier one that failed is skipped; a server that
//! cannot be reached stops the run at its first step. The exit code is 1
//! if any step failed, 2 for invalid arguments.
//!
//! The throwaway account stays in the database, signed out. Nothing
//! secret is printed: not the password, the tokens or the webhook secret.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use alvryn_core::SecretString;
use serde_json::{Value, json};
use url::Url;

use crate::cli::{EXIT_CONFIG, EXIT_FAILURE};

/// What `alvryn smoke` was asked.
#[derive(Debug, Clone)]
pub struct SmokeOptions {
    /// The server's public URL (a path prefix is kept).
    pub url: Url,
    /// Stripe's webhook signing secret of the deployment (`whsec_...`).
    pub webhook_secret: Option<SecretString>,
    /// Per request.
    pub timeout: Duration,
    /// Only `/healthz` (a container health check).
    pub health_only: bool,
}

/// Reads the secret of `--webhook-secret-file`: its first line, trimmed.
///
/// # Errors
/// The I/O error, naming the file (never its content).
pub fn read_secret_file(path: &PathBuf) -> Result<SecretString, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    Ok(SecretString::from(
        text.lines().next().unwrap_or("").trim().to_owned(),
    ))
}

enum Outcome {
    Pass(Option<String>),
    Fail(String),
    Skip(String),
}

struct Client {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

/// What came back: status and body (JSON when it parses).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// `401 invalid_credentials`, or the status alone.
    fn describe(&self) -> String {
        match self.body["error"]["code"].as_str() {
            Some(code) => format!("{} {code}", self.status),
            None => format!("{} (no JSON error body)", self.status),
        }
    }

    fn str(&self, field: &str) -> Option<String> {
        self.body[field].as_str().map(str::to_owned)
    }
}

/// Why a request got no answer: the root cause, without the URL's
/// credentials (the URL has none: they are refused up front).
fn transport(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f32());
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if e.is_connect() {
        format!("cannot connect: {root}")
    } else {
        format!("request failed: {root}")
    }
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Answer, String> {
        let url = self
            .base
            .join(path)
            .map_err(|e| format!("bad path {path}: {e}"))?;
        let mut req = self.http.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| transport(&e, self.timeout))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&e, self.timeout))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    async fn get(&self, path: &str, bearer: Option<&SecretString>) -> Result<Answer, String> {
        let headers: Vec<(&str, String)> = bearer
            .map(|t| vec![("authorization", format!("Bearer {}", t.expose()))])
            .unwrap_or_default();
        self.call(reqwest::Method::GET, path, None, &headers).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.call(
            reqwest::Method::POST,
            path,
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await
    }
}

use alvryn_core::random_hex;

fn unix_now() -> i64 {
    use alvryn_core::auth::Clock as _;
    alvryn_core::auth::SystemClock.now_ms() / 1000
}

/// The tokens of a token response.
struct Tokens {
    access: SecretString,
    refresh: SecretString,
}

fn tokens(a: &Answer) -> Option<Tokens> {
    Some(Tokens {
        access: SecretString::new(a.str("access_token")?),
        refresh: SecretString::new(a.str("refresh_token")?),
    })
}

/// Reports `step`, whose `answer` must have `status` and a token pair
/// that `fresh` accepts; returns the pair when it passed.
fn token_step(
    report: &mut Report,
    step: &str,
    started: Instant,
    answer: Result<Answer, String>,
    status: u16,
    fresh: impl FnOnce(&Tokens) -> bool,
) -> Option<Tokens> {
    let outcome = match answer {
        Ok(a) if a.status == status => match tokens(&a) {
            Some(pair) if fresh(&pair) => {
                report.line(step, started, Outcome::Pass(None));
                return Some(pair);
            }
            Some(_) => Outcome::Fail(format!("{status} without a new token pair")),
            None => Outcome::Fail(format!("{status} without tokens")),
        },
        Ok(a) => Outcome::Fail(a.describe()),
        Err(why) => Outcome::Fail(why),
    };
    report.line(step, started, outcome);
    None
}

/// The tally, printed as it goes.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Report {
    fn line(&mut self, step: &str, started: Instant, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Pass(note) => {
                self.passed += 1;
                let ms = started.elapsed().as_millis();
                match note {
                    Some(n) => println!("PASS {step} {ms}ms ({n})"),
                    None => println!("PASS {step} {ms}ms"),
                }
                true
            }
            Outcome::Fail(why) => {
                self.failed += 1;
                println!("FAIL {step}: {why}");
                false
            }
            Outcome::Skip(why) => {
                self.skipped += 1;
                println!("SKIP {step}: {why}");
                false
            }
        }
    }
}

/// Runs the check; see the [module docs](self).
pub async fn run(options: SmokeOptions) -> ExitCode {
    let mut base = options.url.clone();
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        eprintln!("alvryn: --url must be an http:// or https:// URL");
        return ExitCode::from(EXIT_CONFIG);
    }
    if !base.username().is_empty() || base.password().is_some() {
        eprintln!("alvryn: --url must not carry credentials");
        return ExitCode::from(EXIT_CONFIG);
    }
    base.set_query(None);
    base.set_fragment(None);
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    let secret = match options.webhook_secret {
        Some(s) => {
            let first = s.expose().split(',').next().unwrap_or("").trim().to_owned();
            if !first.starts_with("whsec_") || first.len() < 10 {
                eprintln!(
                    "alvryn: --webhook-secret must be the endpoint's signing secret (whsec_...)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            Some(SecretString::new(first))
        }
        None => None,
    };
    let http = match alvryn_core::http::client(options.timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("alvryn: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let client = Client {
        http,
        base: base.clone(),
        timeout: options.timeout,
    };
    println!("smoke test of {base}");
    let mut report = Report::default();

    // health: a transport failure stops everything.
    let t = Instant::now();
    let (outcome, reachable) = match client.get("healthz", None).await {
        Ok(a) if a.status == 200 && a.body["status"] == "ok" => (Outcome::Pass(None), true),
        Ok(a) if a.status == 200 => (
            Outcome::Fail("200 without {\"status\":\"ok\"}".into()),
            true,
        ),
        Ok(a) => (Outcome::Fail(a.describe()), true),
        Err(why) => (Outcome::Fail(why), false),
    };
    report.line("health", t, outcome);
    if !reachable {
        println!("smoke: stopped: the server cannot be reached");
    } else if !options.health_only {
        steps(&client, secret.as_ref(), &mut report).await;
    }
    println!(
        "smoke: {} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// An optional endpoint: 200 passes, 404 skips.
async fn optional(client: &Client, step: &str, path: &str, report: &mut Report) {
    let t = Instant::now();
    let outcome = match client.get(path, None).await {
        Ok(a) if a.status == 200 => Outcome::Pass(None),
        Ok(a) if a.status == 404 => Outcome::Skip(format!("/{path} not served (404)")),
        Ok(a) => Outcome::Fail(a.describe()),
        Err(why) => Outcome::Fail(why),
    };
    report.line(step, t, outcome);
}

async fn steps(client: &Client, secret: Option<&SecretString>, report: &mut Report) {
    optional(client, "readiness", "readyz", report).await;

    let email = format!("smoke+{}@example.invalid", random_hex(8));
    let password = SecretString::new(format!("smoke-{}", random_hex(16)));
    let credentials = json!({"email": email, "password": password.expose()});

    let t = Instant::now();
    let answer = client.post("auth/signup", &credentials).await;
    let signed_up = token_step(report, "signup", t, answer, 201, |_| true).is_some();

    let t = Instant::now();
    let login = if signed_up {
        let answer = client.post("auth/login", &credentials).await;
        token_step(report, "login", t, answer, 200, |_| true)
    } else {
        report.line("login", t, Outcome::Skip("needs signup".into()));
        None
    };

    let t = Instant::now();
    match &login {
        Some(tokens) => {
            let outcome = match client.get("auth/me", Some(&tokens.access)).await {
                Ok(a) if a.status == 200 && a.str("email").as_deref() == Some(email.as_str()) => {
                    Outcome::Pass(None)
                }
                Ok(a) if a.status == 200 => Outcome::Fail("200 for another account".into()),
                Ok(a) => Outcome::Fail(a.describe()),
                Err(why) => Outcome::Fail(why),
            };
            report.line("me", t, outcome);
        }
        None => {
            report.line("me", t, Outcome::Skip("needs login".into()));
        }
    }

    let t = Instant::now();
    let refreshed = match &login {
        Some(tokens) => {
            let body = json!({"refresh_token": tokens.refresh.expose()});
            let answer = client.post("auth/refresh", &body).await;
            // A refresh rotates: the pair must be a new one.
            token_step(report, "refresh", t, answer, 200, |next| {
                next.refresh != tokens.refresh
            })
        }
        None => {
            report.line("refresh", t, Outcome::Skip("needs login".into()));
            None
        }
    };

    let t = Instant::now();
    match &refreshed {
        Some(tokens) => {
            let body = json!({"refresh_token": tokens.refresh.expose()});
            let outcome = match client.post("auth/logout", &body).await {
                Ok(a) if a.status == 204 => {
                    // Logout is immediate: the access token is refused now.
                    match client.get("auth/me", Some(&tokens.access)).await {
                        Ok(me) if me.status == 401 => Outcome::Pass(None),
                        Ok(me) => Outcome::Fail(format!(
                            "204, but the access token still gets {}",
                            me.status
                        )),
                        Err(why) => Outcome::Fail(why),
                    }
                }
                Ok(a) => Outcome::Fail(a.describe()),
                Err(why) => Outcome::Fail(why),
            };
            report.line("logout", t, outcome);
        }
        None => {
            report.line("logout", t, Outcome::Skip("needs refresh".into()));
        }
    }

    match secret {
        Some(secret) => webhook(client, secret, &email, report).await,
        None => {
            report.line(
                "webhook",
                Instant::now(),
                Outcome::Skip("no --webhook-secret given".into()),
            );
        }
    }

    optional(client, "metrics", "metrics", report).await;
}

/// A `customer.created` event, which the pipeline archives and ignores.
fn test_event(email: &str) -> Vec<u8> {
    json!({
        "id": format!("evt_smoke_{}", random_hex(12)),
        "object": "event",
        "type": "customer.created",
        "api_version": "2025-03-31.basil",
        "created": unix_now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {
            "id": format!("cus_smoke_{}", random_hex(8)),
            "object": "customer",
            "email": email,
            "metadata": {"alvryn_smoke": "true"}
        }}
    })
    .to_string()
    .into_bytes()
}

async fn webhook(client: &Client, secret: &SecretString, email: &str, report: &mut Report) {
    let t = Instant::now();
    let outcome = match deliver(client, email, secret).await {
        Ok(a) if a.status == 200 => Outcome::Pass(a.str("outcome")),
        Ok(a) => Outcome::Fail(a.describe()),
        Err(why) => Outcome::Fail(why),
    };
    report.line("webhook", t, outcome);

    // The same kind of delivery, signed with another secret: refused.
    let t = Instant::now();
    let forged = SecretString::new(format!("whsec_{}", random_hex(16)));
    let outcome = match deliver(client, email, &forged).await {
        Ok(a) if a.status == 400 && a.body["error"]["code"] == "invalid_signature" => {
            Outcome::Pass(Some("refused".into()))
        }
        Ok(a) => Outcome::Fail(format!("a forged signature got {}", a.describe())),
        Err(why) => Outcome::Fail(why),
    };
    report.line("webhook-forgery", t, outcome);
}

/// Delivers a new [`test_event`] signed with `secret`, now.
async fn deliver(client: &Client, email: &str, secret: &SecretString) -> Result<Answer, String> {
    let body = test_event(email);
    let header = alvryn_core::billing::webhook::sign(&body, secret, unix_now());
    client
        .call(
            reqwest::Method::POST,
            "webhooks/stripe",
            Some(body),
            &[("stripe-signature", header)],
        )
        .await
}
