//! The `alvryn` binary end to end: start-up, configuration errors, key
//! generation, and hostile command lines. Runs the real binary over real
//! sockets and files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::{Server, alvryn, run};

#[test]
fn serve_starts_with_no_configuration_and_answers_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.current_dir(dir.path());
    let server = Server::start(c);
    let (status, body) = server.request("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    // Development mode says so loudly and keeps its secrets privately in ./alvryn-data.
    assert!(
        server.log().contains("DEVELOPMENT MODE"),
        "{}",
        server.log()
    );
    let secrets = dir.path().join("alvryn-data/dev-secrets.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Unknown routes answer the JSON error shape.
    let (status, body) = server.request("GET", "/no/such/thing", None);
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[test]
fn restarts_reuse_the_generated_key_and_spend_no_encryptions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_id = |log: &str| {
        log.lines()
            .find(|l| l.contains("field encryption ready"))
            .and_then(|l| l.split("key_id=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no key id in log:\n{log}"))
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = alvryn();
        c.env("ALVRYN_DATA_DIR", &data);
        let server = Server::start(c);
        assert!(
            server.log_with(&["reserved=0"]).contains("reserved=0"),
            "{}",
            server.log()
        );
        ids.push(key_id(&server.log()));
    }
    assert_eq!(
        ids[0], ids[1],
        "the development key changed across restarts"
    );
    // The usage ledger lives in the embedded store; read it from this
    // process, as a worker would.
    let reserved = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use alvryn_core::crypto::UsageLedger as _;
        let store = alvryn_core::store::sqlite::SqliteStore::open(data.join("alvryn.db"))
            .await
            .unwrap();
        store
            .reserved(&alvryn_core::crypto::KeyFingerprint::parse(&ids[0]).unwrap())
            .await
            .unwrap()
    });
    // Starting checks the cipher without spending the key's encryptions:
    // however often the server restarts, nothing is reserved until a
    // value is really encrypted.
    assert_eq!(reserved, 0);
}

/// An instance of one deployment on the embedded store in `data`: every
/// instance (and every restart) shares the data folder and the public URL,
/// so the tokens one issues the others accept.
fn instance_on(data: &std::path::Path) -> Server {
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", data)
        .env("BACKEND_URL", "http://api.localhost");
    Server::start(c)
}

#[test]
fn two_processes_share_the_embedded_store() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two instances of one deployment: one data folder, one public URL.
    let (a, b) = (instance_on(&data), instance_on(&data));
    let pw = "correct horse battery staple";
    let signup = support::post_json(
        a.addr,
        "/auth/signup",
        &json!({"email": "two@example.com", "password": pw}),
        None,
    );
    assert_eq!(signup.status, 201, "{}", signup.body);
    // The other process sees the account, and the session it started.
    let login = support::post_json(
        b.addr,
        "/auth/login",
        &json!({"email": "two@example.com", "password": pw}),
        None,
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let refreshed = support::post_json(
        b.addr,
        "/auth/refresh",
        &json!({"refresh_token": signup.json()["refresh_token"]}),
        None,
    );
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let me = support::with_bearer(
        a.addr,
        "GET",
        "/auth/me",
        refreshed.json()["access_token"].as_str().unwrap(),
    );
    assert_eq!(me.status, 200, "{}", me.body);
    // Interleaved writes from both processes never fail with a lock error.
    let mut token = refreshed.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        let r = support::post_json(
            server.addr,
            "/auth/refresh",
            &json!({"refresh_token": token}),
            None,
        );
        assert_eq!(r.status, 200, "round {i}: {}", r.body);
        token = r.json()["refresh_token"].as_str().unwrap().to_owned();
    }
}

/// A rotation the server answered is on disk: kill -9 the server the
/// moment the response arrives, and the restarted server (and the file
/// itself) hold the successor as the session's current token.
#[test]
fn an_acknowledged_rotation_survives_kill_9() {
    use alvryn_core::store::{SessionStore as _, TokenHash};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || instance_on(&data);
    let server = start();
    let signup = support::post_json(
        server.addr,
        "/auth/signup",
        &json!({"email": "durable@example.com", "password": "correct horse battery staple"}),
        None,
    );
    assert_eq!(signup.status, 201, "{}", signup.body);
    let mut token = signup.json()["refresh_token"].as_str().unwrap().to_owned();
    // The session id is the refresh token's `sid` claim.
    let session = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sid"].as_str().unwrap().to_owned()
    };
    let mut server = Some(server);
    for round in 0..5 {
        let s = server.take().unwrap_or_else(start);
        let r = support::post_json(
            s.addr,
            "/auth/refresh",
            &json!({"refresh_token": token}),
            None,
        );
        // No graceful stop: SIGKILL as soon as the answer is in.
        drop(s);
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        token = r.json()["refresh_token"].as_str().unwrap().to_owned();
        let current = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = alvryn_core::store::sqlite::SqliteStore::open(data.join("alvryn.db"))
                .await
                .unwrap();
            store.family(&session).await.unwrap().unwrap().current
        });
        assert_eq!(
            current.token_hash,
            TokenHash::of(&token),
            "round {round}: the acknowledged rotation was lost"
        );
    }
    // And the restarted server accepts the last successor.
    let s = start();
    let r = support::post_json(
        s.addr,
        "/auth/refresh",
        &json!({"refresh_token": token}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

const SECRET_JWT: &str = "a-jwt-secret-that-must-never-be-printed-0001";

#[test]
fn production_without_configuration_fails_naming_every_problem_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["serve", "--bind", "127.0.0.1:0"][..],
        &["config", "check"][..],
    ] {
        let mut c = alvryn();
        c.current_dir(dir.path())
            .args(args)
            .env("ALVRYN_ENV", "production")
            .env("JWT_SECRET", SECRET_JWT)
            .env("FIELD_ENCRYPTION_KEY", "0123456789abcdef0123456789abcde");
        let out = run(c);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        for var in [
            "MONGO_URI",
            "JWT_REFRESH_SECRET",
            "BACKEND_URL",
            "FRONTEND_URL",
            "STRIPE_SECRET_KEY",
            "STRIPE_WEBHOOK_SECRET",
            "STRIPE_PRICE_MAP",
        ] {
            assert!(
                out.stderr.contains(&format!("{var}: ")),
                "{var} missing from:\n{}",
                out.stderr
            );
        }
        assert!(
            out.stderr
                .contains("FIELD_ENCRYPTION_KEY: is 31 bytes long"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains(SECRET_JWT) && !out.stdout.contains(SECRET_JWT));
        assert!(!out.stderr.contains("0123456789abcde"), "{}", out.stderr);
        // No data folder is created for a configuration that is refused.
        assert!(!dir.path().join("alvryn-data").exists());
    }
}

#[test]
fn config_check_prints_the_effective_configuration_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let key = STANDARD.encode([42u8; 32]);
    let mut c = alvryn();
    c.current_dir(dir.path())
        .args(["config", "check"])
        .env("JWT_SECRET", SECRET_JWT)
        .env("FIELD_ENCRYPTION_KEY", &key)
        .env("STRIPE_SECRET_KEY", "sk_test_never_print_me_123")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_never_print_me_456")
        .env(
            "STRIPE_PRICE_MAP_JSON",
            r#"{"price_1PgafmB7WZ01zgkW6dKueIc5":"pro"}"#,
        );
    let out = run(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("JWT_SECRET") && out.stdout.contains("set (44 bytes, redacted)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("price_1PgafmB7WZ01zgkW6dKueIc5:pro"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("field keys: active k"),
        "{}",
        out.stdout
    );
    for secret in [SECRET_JWT, key.as_str(), "never_print_me"] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "{secret} printed"
        );
    }
}

#[test]
fn keys_generate_without_kms_prints_a_fresh_base64_key() {
    let a = run({
        let mut c = alvryn();
        c.args(["keys", "generate"]);
        c
    });
    let b = run({
        let mut c = alvryn();
        c.args(["keys", "generate"]);
        c
    });
    assert_eq!(a.code, 0, "{}", a.stderr);
    let key = STANDARD.decode(a.stdout.trim()).unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(a.stdout, b.stdout);
    assert!(a.stderr.contains("only this once"));
    // The printed key is accepted as FIELD_ENCRYPTION_KEY.
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.args(["config", "check"])
        .env("FIELD_ENCRYPTION_KEY", a.stdout.trim())
        .current_dir(dir.path());
    assert_eq!(run(c).code, 0);
}

#[test]
fn hostile_command_lines_get_clear_errors_and_no_panic() {
    let cases: &[(&[&str], &[(&str, &str)], i32, &str)] = &[
        (
            &["serve", "--bind", "not-an-address"],
            &[],
            2,
            "invalid value",
        ),
        (
            &["serve", "--bind", "127.0.0.1:99999"],
            &[],
            2,
            "invalid value",
        ),
        (
            &["keys", "generate", "--kms-key-id", "alias/x"],
            &[],
            2,
            "--output",
        ),
        (&["no-such-command"], &[], 2, "unrecognized subcommand"),
        (
            &["config", "check"],
            &[("ALVRYN_ENV", "staging")],
            2,
            "ALVRYN_ENV: must be production or development",
        ),
        (
            &["config", "check"],
            &[("FIELD_ENCRYPTION_KEY", "\u{202e}\u{feff}x")],
            2,
            "FIELD_ENCRYPTION_KEY",
        ),
        (
            &["config", "check"],
            &[("BACKEND_URL", &"x".repeat(100_000))],
            2,
            "BACKEND_URL: must be an absolute",
        ),
        (
            &["config", "check"],
            &[("STRIPE_PRICE_MAP", "price_a:pro,,,")],
            2,
            "STRIPE_PRICE_MAP: entry 2",
        ),
    ];
    for (args, env, code, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut c = alvryn();
        c.args(*args).current_dir(dir.path());
        for (k, v) in *env {
            c.env(k, v);
        }
        let out = run(c);
        assert_eq!(out.code, *code, "{args:?} {env:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn a_taken_port_or_an_unusable_data_folder_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // The port is tried first: with a KMS-wrapped key configured against
    // a KMS that does not answer, the failure is still the port's, at
    // once, and nothing is created.
    let mut c = alvryn();
    c.current_dir(dir.path())
        .args(["serve", "--bind", &addr])
        .env("FIELD_ENCRYPTION_KEY_ENC", "AQIDBAUGBwgJCgsMDQ4PEA==")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", format!("http://{addr}"));
    let out = run(c);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("could not listen on {addr}")),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("KMS"),
        "KMS was called: {}",
        out.stderr
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "files were created before the port was bound"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut c = alvryn();
    c.args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(file.join("sub"));
    let out = run(c);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("data folder"), "{}", out.stderr);
}

/// Without `ALVRYN_ENV`, an instance that shares a database is refused
/// before it generates a secret of its own, naming what to set.
#[test]
fn development_mode_is_refused_on_a_shared_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.current_dir(dir.path())
        .env("MONGO_URI", "mongodb://app:dbpassword@127.0.0.1:1/alvryn")
        .args(["serve", "--bind", "127.0.0.1:0"]);
    let out = run(c);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for var in ["JWT_SECRET", "JWT_REFRESH_SECRET", "FIELD_ENCRYPTION_KEY"] {
        assert!(out.stderr.contains(var), "{var} not named: {}", out.stderr);
    }
    assert!(!out.stderr.contains("dbpassword"), "{}", out.stderr);
    assert!(
        !dir.path().join("alvryn-data").exists(),
        "nothing is generated"
    );
}
