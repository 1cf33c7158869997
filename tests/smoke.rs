//! `alvryn smoke`, the post-deploy check, against the real binary serving
//! on a real socket: it passes against a freshly started server, fails
//! with a clear line and exit 1 when the server is down or a step fails,
//! and with the webhook secret sends a signed event the pipeline records
//! and ignores (and a forged one that must be refused).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{Server, alvryn, run};

const WHSEC: &str = "whsec_smoke_test_0123456789abcdef";

fn smoke(url: &str, extra: &[&str]) -> support::Output {
    let mut c = alvryn();
    c.args(["smoke", "--url", url]).args(extra);
    run(c)
}

/// A `PASS step 12ms` line (with an optional note after the time).
fn passed(stdout: &str, step: &str) -> bool {
    stdout.lines().any(|l| {
        l.strip_prefix(&format!("PASS {step} "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|t| t.strip_suffix("ms"))
            .is_some_and(|n| n.parse::<u64>().is_ok())
    })
}

/// An optional endpoint another part of the server may serve: passed, or
/// skipped as not served.
fn passed_or_not_served(stdout: &str, step: &str, path: &str) -> bool {
    passed(stdout, step)
        || stdout
            .lines()
            .any(|l| l == format!("SKIP {step}: {path} not served (404)"))
}

/// As a deploy does: smoke once the server says it is ready (its first
/// checks may outlast their 2 s bound on a loaded machine).
fn wait_ready(server: &Server) {
    let ready = support::eventually(20, || {
        (support::raw_request(server.addr, "GET", "/readyz", &[], b"").status == 200).then_some(())
    });
    assert!(ready.is_some(), "never ready:\n{}", server.log());
}

/// A server with billing (ready: [`wait_ready`]).
fn billing_server(data: &Path) -> Server {
    let mut c = alvryn();
    // The test event is ignored: Stripe is never called.
    support::billing_env(
        &mut c,
        data,
        "sk_test_smoke",
        WHSEC,
        "price_smoke:pro",
        None,
    );
    let server = Server::start(c);
    wait_ready(&server);
    server
}

#[test]
fn smoke_passes_against_a_freshly_started_server() {
    smoke_passes_against_a_fresh(alvryn());
}

/// The same against the release build of the server, the build a deploy
/// runs (`scripts/test` builds it and names it in
/// `ALVRYN_TEST_RELEASE_ALVRYN`).
#[test]
fn smoke_passes_against_a_freshly_started_release_server() {
    let Some(release) = support::service("ALVRYN_TEST_RELEASE_ALVRYN") else {
        return;
    };
    smoke_passes_against_a_fresh(support::clean_command(release.into()));
}

/// Starts `c` as a server on a fresh data folder; every step of the smoke
/// check passes against it.
fn smoke_passes_against_a_fresh(mut c: Command) {
    let dir = tempfile::tempdir().unwrap();
    c.env("ALVRYN_DATA_DIR", dir.path());
    let server = Server::start(c);
    wait_ready(&server);
    let out = smoke(&format!("http://{}", server.addr), &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for step in ["health", "signup", "login", "me", "refresh", "logout"] {
        assert!(passed(&out.stdout, step), "{step}:\n{}", out.stdout);
    }
    assert!(
        passed_or_not_served(&out.stdout, "readiness", "/readyz"),
        "{}",
        out.stdout
    );
    assert!(
        passed_or_not_served(&out.stdout, "metrics", "/metrics"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "SKIP webhook: no --webhook-secret given"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    let last = out.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("smoke: ") && last.contains(" passed, 0 failed, "),
        "{last}"
    );
    // No token is printed (JWTs start with a base64 `{"`).
    assert!(!out.stdout.contains("eyJ") && !out.stderr.contains("eyJ"));
    // The throwaway account was really made, and its session ended.
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("alvryn.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (accounts, live_sessions): (i64, i64) = db
        .query_row(
            "SELECT count(DISTINCT u.id), count(f.id) FILTER (WHERE f.revoked_at_ms IS NULL) \
             FROM users u LEFT JOIN refresh_families f ON f.user_id = u.id \
             WHERE u.email LIKE 'smoke+%@example.invalid'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(accounts, 1);
    // Sign-up's session stays; login's was refreshed, then logged out.
    assert_eq!(live_sessions, 1);

    // --health-only is the container health check: one step.
    let out = smoke(&format!("http://{}", server.addr), &["--health-only"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(passed(&out.stdout, "health"));
    assert!(!passed(&out.stdout, "signup"), "{}", out.stdout);
}

#[test]
fn smoke_fails_with_a_clear_line_when_the_server_is_down() {
    let url = format!("http://127.0.0.1:{}", support::free_port());
    for extra in [&[][..], &["--health-only"][..]] {
        let out = smoke(&url, extra);
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("FAIL health: cannot connect")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .lines()
                .any(|l| l == "smoke: stopped: the server cannot be reached"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .lines()
                .any(|l| l == "smoke: 0 passed, 1 failed, 0 skipped"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn a_failing_step_is_one_fail_line_with_the_status_and_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path());
    let server = Server::start(c);
    // A path prefix the server does not serve: every call is its JSON 404.
    let out = smoke(&format!("http://{}/wrong-prefix/", server.addr), &[]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"FAIL health: 404 not_found"), "{lines:?}");
    assert!(lines.contains(&"FAIL signup: 404 not_found"), "{lines:?}");
    assert!(lines.contains(&"SKIP login: needs signup"), "{lines:?}");
    assert!(lines.contains(&"SKIP logout: needs refresh"), "{lines:?}");
}

#[test]
fn the_webhook_step_sends_a_signed_event_the_pipeline_ignores_and_a_forgery_it_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let server = billing_server(dir.path());
    let url = format!("http://{}", server.addr);

    let out = smoke(&url, &["--webhook-secret", WHSEC]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("PASS webhook ") && l.ends_with("ms (ignored)")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("PASS webhook-forgery ") && l.ends_with("ms (refused)")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(WHSEC) && !out.stderr.contains(WHSEC));

    // The same from a file, and the pipeline recorded both signed events
    // as ignored (the forged ones never reached it).
    let secret_file = dir.path().join("whsec");
    std::fs::write(&secret_file, format!("{WHSEC}\n")).unwrap();
    let out = smoke(
        &url,
        &["--webhook-secret-file", secret_file.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    let mut list = Command::new(support::alvryn_bin());
    list.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ALVRYN_DATA_DIR", dir.path())
        .env("STRIPE_SECRET_KEY", "sk_test_smoke")
        .env("STRIPE_WEBHOOK_SECRET", WHSEC)
        .env("STRIPE_PRICE_MAP", "price_smoke:pro")
        .args(["events", "list", "--limit", "0"]);
    let listed = run(list);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let events: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["type"], "customer.created");
        assert_eq!(e["status"], "ignored");
        assert!(e["id"].as_str().unwrap().starts_with("evt_smoke_"));
    }

    // A secret the server does not have: the signed event is refused,
    // and the check says so.
    let out = smoke(
        &url,
        &["--webhook-secret", "whsec_not_the_deployed_secret_0000"],
    );
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "FAIL webhook: 400 invalid_signature"),
        "{}",
        out.stdout
    );
}

#[test]
fn invalid_arguments_exit_2_without_echoing_secrets() {
    for (args, words) in [
        (
            &["--url", "ftp://127.0.0.1:1"][..],
            "must be an http:// or https:// URL",
        ),
        (
            &["--url", "http://admin:Hunter2-pw@127.0.0.1:1"][..],
            "must not carry credentials",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:1",
                "--webhook-secret",
                "sk_live_Hunter2-pw",
            ][..],
            "whsec_",
        ),
    ] {
        let mut c = alvryn();
        c.arg("smoke").args(args);
        let out = run(c);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(words), "{}", out.stderr);
        assert!(
            !out.stderr.contains("Hunter2") && !out.stdout.contains("Hunter2"),
            "{}",
            out.stderr
        );
    }
}
