//! The accounts API end to end: the real `alvryn` binary over a real
//! socket, tokens checked by PyJWT (an independent JWT library), and
//! hostile input of every kind the API accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod support;

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};
use support::{Server, alvryn, post_json, raw_bytes, raw_request, with_bearer};

const JWT: &str = "e2e-access-secret-0123456789abcdef0123456789";
const JWT_REFRESH: &str = "e2e-refresh-secret-0123456789abcdef012345678";
const PASSWORD: &str = "correct horse battery staple";

struct Api {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start(extra: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut c = alvryn();
        c.current_dir(dir.path())
            .env("JWT_SECRET", JWT)
            .env("JWT_REFRESH_SECRET", JWT_REFRESH)
            .env("ALVRYN_LOG", "debug");
        for (k, v) in extra {
            c.env(k, v);
        }
        Api {
            server: Server::start(c),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn signup(&self, email: &str) -> Value {
        let r = post_json(
            self.addr(),
            "/auth/signup",
            &json!({"email": email, "password": PASSWORD}),
            None,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()
    }
}

/// Verifies `token` with PyJWT; `Ok(claims)` or `Err(PyJWT error class)`.
fn pyjwt(token: &str, secret: &str, audience: &str, issuer: &str) -> Option<Result<Value, String>> {
    let python = support::service("ALVRYN_TEST_PYTHON")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/check_jwt.py");
    let out = Command::new(python)
        .args([script, token, secret, audience, issuer])
        .output()
        .unwrap();
    Some(if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    })
}

#[test]
fn signup_issues_tokens_an_independent_library_accepts() {
    let api = Api::start(&[]);
    let body = api.signup("Alice@Example.COM");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["user"]["plan"], "free");
    let (access, refresh) = (
        body["access_token"].as_str().unwrap(),
        body["refresh_token"].as_str().unwrap(),
    );

    let Some(checked) = pyjwt(access, JWT, "alvryn", &api.issuer()) else {
        return;
    };
    let v = checked.unwrap_or_else(|e| panic!("PyJWT rejected the access token: {e}"));
    let c = &v["claims"];
    assert_eq!(v["header"]["alg"], "HS256");
    assert_eq!(c["typ"], "access");
    assert_eq!(c["sub"], body["user"]["id"]);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        15 * 60
    );
    assert!(c["jti"].as_str().unwrap().len() >= 16 && c["sid"].is_string());

    let v = pyjwt(refresh, JWT_REFRESH, "alvryn", &api.issuer())
        .unwrap()
        .unwrap();
    assert_eq!(v["claims"]["typ"], "refresh");
    assert_eq!(
        v["claims"]["exp"].as_i64().unwrap() - v["claims"]["iat"].as_i64().unwrap(),
        30 * 86_400
    );
    assert_eq!(
        v["claims"]["sid"],
        pyjwt(access, JWT, "alvryn", &api.issuer())
            .unwrap()
            .unwrap()["claims"]["sid"]
    );

    // Each token is signed with its own secret, for our audience only.
    assert_eq!(
        pyjwt(access, JWT_REFRESH, "alvryn", &api.issuer())
            .unwrap()
            .unwrap_err(),
        "InvalidSignatureError"
    );
    assert_eq!(
        pyjwt(refresh, JWT, "alvryn", &api.issuer())
            .unwrap()
            .unwrap_err(),
        "InvalidSignatureError"
    );
    assert_eq!(
        pyjwt(access, JWT, "another-api", &api.issuer())
            .unwrap()
            .unwrap_err(),
        "InvalidAudienceError"
    );
}

#[test]
fn the_whole_session_lifecycle() {
    let api = Api::start(&[]);
    let a = api.addr();
    let first = api.signup("bob@example.com");
    let access = first["access_token"].as_str().unwrap();

    // Duplicate email, any case.
    let dup = post_json(
        a,
        "/auth/signup",
        &json!({"email": "BOB@example.com", "password": PASSWORD}),
        None,
    );
    assert_eq!((dup.status, dup.code()), (409, "email_taken".into()));

    // Me.
    let me = with_bearer(a, "GET", "/auth/me", access);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.json(),
        json!({"id": first["user"]["id"], "email": "bob@example.com", "plan": "free", "has_password": true, "providers": []})
    );

    // Wrong password and unknown email: the same answer, byte for byte.
    let wrong = post_json(
        a,
        "/auth/login",
        &json!({"email": "bob@example.com", "password": "not the password"}),
        None,
    );
    let unknown = post_json(
        a,
        "/auth/login",
        &json!({"email": "nobody@example.com", "password": "not the password"}),
        None,
    );
    assert_eq!((wrong.status, &wrong.body), (401, &unknown.body));
    assert_eq!(wrong.code(), "invalid_credentials");

    // A second device.
    let login = post_json(
        a,
        "/auth/login",
        &json!({"email": "bob@example.com", "password": PASSWORD}),
        None,
    );
    assert_eq!(login.status, 200);
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let second = login.json();
    assert_eq!(second["user"], first["user"]);

    // Refresh rotates; a second refresh of the same token within the
    // grace window gets the same successor.
    let r1 = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": first["refresh_token"]}),
        None,
    );
    assert_eq!(r1.status, 200, "{}", r1.body);
    let r2 = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": first["refresh_token"]}),
        None,
    );
    assert_eq!(r2.status, 200, "{}", r2.body);
    assert_eq!(r1.json()["refresh_token"], r2.json()["refresh_token"]);
    assert_ne!(r1.json()["refresh_token"], first["refresh_token"]);

    // Sessions: two, the caller's marked current.
    let s = with_bearer(
        a,
        "GET",
        "/auth/sessions",
        second["access_token"].as_str().unwrap(),
    );
    assert_eq!(s.status, 200);
    let sessions = s.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "{}", s.body);
    assert_eq!(sessions.iter().filter(|x| x["current"] == true).count(), 1);
    let other = sessions.iter().find(|x| x["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Revoke the first device's session from the second.
    let del = with_bearer(
        a,
        "DELETE",
        &format!("/auth/sessions/{other}"),
        second["access_token"].as_str().unwrap(),
    );
    assert_eq!(del.status, 204, "{}", del.body);
    let again = with_bearer(
        a,
        "DELETE",
        &format!("/auth/sessions/{other}"),
        second["access_token"].as_str().unwrap(),
    );
    assert_eq!((again.status, again.code()), (404, "not_found".into()));
    let dead = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": r1.json()["refresh_token"]}),
        None,
    );
    assert_eq!((dead.status, dead.code()), (401, "invalid_token".into()));
    assert_eq!(
        with_bearer(a, "GET", "/auth/me", access).status,
        401,
        "revocation is immediate for access tokens too"
    );

    // Logout, then log out everywhere.
    let third = post_json(
        a,
        "/auth/login",
        &json!({"email": "bob@example.com", "password": PASSWORD}),
        None,
    )
    .json();
    let out = post_json(
        a,
        "/auth/logout",
        &json!({"refresh_token": second["refresh_token"]}),
        None,
    );
    assert_eq!(out.status, 204, "{}", out.body);
    assert_eq!(
        with_bearer(
            a,
            "GET",
            "/auth/me",
            second["access_token"].as_str().unwrap()
        )
        .status,
        401
    );
    assert_eq!(
        with_bearer(
            a,
            "GET",
            "/auth/me",
            third["access_token"].as_str().unwrap()
        )
        .status,
        200
    );
    let all = post_json(
        a,
        "/auth/logout-all",
        &json!({}),
        Some(third["access_token"].as_str().unwrap()),
    );
    assert_eq!(all.status, 204, "{}", all.body);
    assert_eq!(
        with_bearer(
            a,
            "GET",
            "/auth/me",
            third["access_token"].as_str().unwrap()
        )
        .status,
        401
    );

    // No token ever reached the log.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = api.server.log();
    for t in [
        &first["access_token"],
        &first["refresh_token"],
        &second["refresh_token"],
        &third["access_token"],
    ] {
        let t = t.as_str().unwrap();
        assert!(
            !log.contains(t) && !log.contains(&t[t.len() - 20..]),
            "a token appeared in the log"
        );
    }
    assert!(!log.contains(PASSWORD));
}

#[test]
fn reuse_of_a_retired_refresh_token_signs_the_session_out() {
    let api = Api::start(&[("ALVRYN_REFRESH_GRACE_SECONDS", "0")]);
    let a = api.addr();
    let first = api.signup("carol@example.com");
    let r1 = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": first["refresh_token"]}),
        None,
    )
    .json();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let reuse = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": first["refresh_token"]}),
        None,
    );
    assert_eq!((reuse.status, reuse.code()), (401, "token_reused".into()));
    let after = post_json(
        a,
        "/auth/refresh",
        &json!({"refresh_token": r1["refresh_token"]}),
        None,
    );
    assert_eq!((after.status, after.code()), (401, "invalid_token".into()));
    assert_eq!(
        with_bearer(a, "GET", "/auth/me", r1["access_token"].as_str().unwrap()).status,
        401
    );
    assert!(
        api.server
            .log_with(&["refresh token reused"])
            .contains("refresh token reused"),
        "{}",
        api.server.log()
    );
}

fn forge(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use base64::Engine as _;
    let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", e(header), e(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let alg = match header["alg"].as_str() {
        Some("HS512") => jsonwebtoken::Algorithm::HS512,
        Some("HS384") => jsonwebtoken::Algorithm::HS384,
        _ => jsonwebtoken::Algorithm::HS256,
    };
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap();
    format!("{input}.{sig}")
}

#[test]
fn hostile_tokens_are_refused() {
    let api = Api::start(&[]);
    let a = api.addr();
    let s = api.signup("dave@example.com");
    let access = s["access_token"].as_str().unwrap();
    let refresh = s["refresh_token"].as_str().unwrap();
    let claims: Value = {
        use base64::Engine as _;
        let p = access.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("another-service");
    let mut other_iss = claims.clone();
    other_iss["iss"] = json!("https://evil.example");
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut as_refresh = claims.clone();
    as_refresh["typ"] = json!("refresh");
    let unsigned = {
        use base64::Engine as _;
        let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            e(&json!({"alg": "none", "typ": "JWT"})),
            e(&claims)
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("refresh token as access token", refresh.to_owned()),
        (
            "token for another audience",
            forge(&hs256, &other_aud, JWT.as_bytes()),
        ),
        (
            "token from another issuer",
            forge(&hs256, &other_iss, JWT.as_bytes()),
        ),
        ("no exp", forge(&hs256, &no_exp, JWT.as_bytes())),
        (
            "typ refresh under the access secret",
            forge(&hs256, &as_refresh, JWT.as_bytes()),
        ),
        (
            "signed with the refresh secret",
            forge(&hs256, &claims, JWT_REFRESH.as_bytes()),
        ),
        (
            "HS512 with the right secret",
            forge(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims,
                JWT.as_bytes(),
            ),
        ),
        ("alg none", unsigned),
        ("garbage", "not.a.token".into()),
        ("huge", "a".repeat(12_000)),
    ];
    for (what, token) in &cases {
        let r = with_bearer(a, "GET", "/auth/me", token);
        assert_eq!(
            (r.status, r.code()),
            (401, "invalid_token".into()),
            "{what}: {}",
            r.body
        );
    }
    // The genuine access token still works (the cases were refused for their flaw).
    assert_eq!(with_bearer(a, "GET", "/auth/me", access).status, 200);
    // An access token presented for refresh.
    let r = post_json(a, "/auth/refresh", &json!({"refresh_token": access}), None);
    assert_eq!((r.status, r.code()), (401, "invalid_token".into()));
    // Missing or malformed Authorization headers.
    let r = raw_request(a, "GET", "/auth/me", &[], b"");
    assert_eq!((r.status, r.code()), (401, "unauthorized".into()));
    for h in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer    ", "Token abc"] {
        let r = raw_request(a, "GET", "/auth/me", &[("Authorization", h)], b"");
        assert_eq!((r.status, r.code()), (401, "invalid_token".into()), "{h}");
    }
}

#[test]
fn hostile_bodies_get_their_documented_errors() {
    let api = Api::start(&[]);
    let a = api.addr();
    let json_ct = [("Content-Type", "application/json")];
    let cases: Vec<(&str, Vec<(&str, &str)>, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            json_ct.to_vec(),
            b"{\"email\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "not an object",
            json_ct.to_vec(),
            b"[1,2,3]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "missing field",
            json_ct.to_vec(),
            br#"{"email":"x@example.com"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "wrong type",
            json_ct.to_vec(),
            br#"{"email":"x@example.com","password":12345678}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "oversized",
            json_ct.to_vec(),
            format!(r#"{{"email":"{}"}}"#, "a".repeat(20_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "text/plain",
            vec![("Content-Type", "text/plain")],
            br#"{"email":"a@b.co","password":"x"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            vec![],
            br#"{"email":"a@b.co","password":"x"}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "form",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            b"email=a".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "invalid UTF-8",
            json_ct.to_vec(),
            b"{\"email\":\"\xff\xfe\",\"password\":\"x\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "10,000-character email",
            json_ct.to_vec(),
            json!({"email": format!("{}@example.com", "a".repeat(10_000)), "password": PASSWORD})
                .to_string()
                .into_bytes(),
            400,
            "invalid_email",
        ),
        (
            "10,000-character domain",
            json_ct.to_vec(),
            json!({"email": format!("a@{}.com", "b".repeat(10_000)), "password": PASSWORD})
                .to_string()
                .into_bytes(),
            400,
            "invalid_email",
        ),
        (
            "RTL override in email",
            json_ct.to_vec(),
            json!({"email": "evil\u{202e}moc.elgoog@example.com", "password": PASSWORD})
                .to_string()
                .into_bytes(),
            400,
            "invalid_email",
        ),
        (
            "zero-width space in email",
            json_ct.to_vec(),
            json!({"email": "ali\u{200b}ce@example.com", "password": PASSWORD})
                .to_string()
                .into_bytes(),
            400,
            "invalid_email",
        ),
        (
            "NUL in email",
            json_ct.to_vec(),
            br#"{"email":"a\u0000@example.com","password":"correct horse battery staple"}"#
                .to_vec(),
            400,
            "invalid_email",
        ),
        (
            "lone surrogate",
            json_ct.to_vec(),
            br#"{"email":"a\ud800@example.com","password":"x"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "short password",
            json_ct.to_vec(),
            json!({"email": "e@example.com", "password": "short"})
                .to_string()
                .into_bytes(),
            400,
            "weak_password",
        ),
        (
            "common password",
            json_ct.to_vec(),
            json!({"email": "e@example.com", "password": "password123"})
                .to_string()
                .into_bytes(),
            400,
            "weak_password",
        ),
        (
            "control chars in password",
            json_ct.to_vec(),
            json!({"email": "e@example.com", "password": "correct\u{7}horse\u{0}battery"})
                .to_string()
                .into_bytes(),
            400,
            "weak_password",
        ),
    ];
    for (what, headers, body, status, code) in &cases {
        let r = raw_request(a, "POST", "/auth/signup", headers, body);
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        assert_eq!(&r.code(), code, "{what}");
        // Error bodies never echo what was sent.
        assert!(
            !r.body.contains("aaaaaaaaaa")
                && !r.body.contains("12345678")
                && !r.body.contains("password123"),
            "{what}: {}",
            r.body
        );
    }
    // Unicode that is fine: an IDN domain and an emoji passphrase.
    let r = post_json(
        a,
        "/auth/signup",
        &json!({"email": "ünï@bücher.example", "password": PASSWORD}),
        None,
    );
    assert_eq!(
        r.status, 400,
        "non-ASCII local parts are refused: {}",
        r.body
    );
    let r = post_json(
        a,
        "/auth/signup",
        &json!({"email": "uni@bücher.example", "password": "🔑 my 🦀 crab key 🗝️ phrase"}),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["user"]["email"], "uni@xn--bcher-kva.example");
    let login = post_json(
        a,
        "/auth/login",
        &json!({"email": "UNI@BÜCHER.example", "password": "🔑 my 🦀 crab key 🗝️ phrase"}),
        None,
    );
    assert_eq!(login.status, 200, "{}", login.body);
    // Unknown paths and methods.
    assert_eq!(
        raw_request(a, "GET", "/auth/signup", &[], b"").code(),
        "method_not_allowed"
    );
    assert_eq!(
        raw_request(a, "GET", "/../../etc/passwd", &[], b"").status,
        404
    );
    let long_id = "x".repeat(5000);
    let s = api.signup("frank@example.com");
    let r = with_bearer(
        a,
        "DELETE",
        &format!("/auth/sessions/{long_id}"),
        s["access_token"].as_str().unwrap(),
    );
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    // The server is still healthy and nothing panicked.
    assert_eq!(support::http(a, "GET", "/healthz", None).0, 200);
    assert!(!api.server.log().contains("panicked"));
}

#[test]
fn concurrent_tabs_refreshing_at_once_stay_signed_in() {
    let api = Api::start(&[]);
    let a = api.addr();
    let s = api.signup("tabs@example.com");
    let token = s["refresh_token"].clone();
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                post_json(a, "/auth/refresh", &json!({"refresh_token": token}), None)
            })
        })
        .collect();
    let mut successors: Vec<String> = handles
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["refresh_token"].as_str().unwrap().to_owned()
        })
        .collect();
    successors.dedup();
    assert_eq!(successors.len(), 1);
    let sessions = with_bearer(
        a,
        "GET",
        "/auth/sessions",
        s["access_token"].as_str().unwrap(),
    )
    .json();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
}

/// The Bearer scheme in any case; every 401 names the scheme (RFC 6750),
/// and says `invalid_token` when a token was refused; personal data is
/// never cacheable.
#[test]
fn bearer_scheme_challenges_and_no_store() {
    let api = Api::start(&[]);
    let a = api.addr();
    let first = api.signup("scheme@example.com");
    let access = first["access_token"].as_str().unwrap();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = raw_request(
            a,
            "GET",
            "/auth/me",
            &[("Authorization", &format!("{scheme} {access}"))],
            b"",
        );
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{scheme}");
    }
    let sessions = with_bearer(a, "GET", "/auth/sessions", access);
    assert_eq!(sessions.status, 200, "{}", sessions.body);
    assert_eq!(sessions.header("cache-control"), Some("no-store"));

    // No credentials: the bare challenge.
    let none = raw_request(a, "GET", "/auth/me", &[], b"");
    assert_eq!((none.status, none.code()), (401, "unauthorized".into()));
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    // Another scheme, or a refused token: invalid_token.
    let basic = raw_request(
        a,
        "GET",
        "/auth/me",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        b"",
    );
    assert_eq!(basic.status, 401, "{}", basic.body);
    assert_eq!(
        basic.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    let forged = with_bearer(a, "GET", "/auth/me", "not.a.token");
    assert_eq!(
        (forged.status, forged.code()),
        (401, "invalid_token".into())
    );
    assert_eq!(
        forged.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    // A failed login is a 401 too, and names the scheme.
    let login = post_json(
        a,
        "/auth/login",
        &json!({"email": "scheme@example.com", "password": "wrong password entirely"}),
        None,
    );
    assert_eq!(login.status, 401, "{}", login.body);
    assert_eq!(login.header("www-authenticate"), Some("Bearer"));
}

/// What the HTTP layer refuses before any route sees it still answers in
/// the API's JSON error shape, with a length that matches the body.
#[test]
fn http_layer_errors_carry_the_json_error_body() {
    let api = Api::start(&[]);
    let a = api.addr();
    let long_target = format!("/auth/me?{}", "a".repeat(9 * 1024));
    let big_header = "b".repeat(40 * 1024);
    let huge_header = "c".repeat(200 * 1024);
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed_request"),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a bad method token",
            b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a target over 8 KiB",
            format!("GET {long_target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "a target over the HTTP layer's own limit",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "t".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "40 KiB of headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {big_header}\r\n\r\n")
                .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "200 KiB of headers",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {huge_header}\r\n\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "150 header fields",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let r = raw_bytes(a, &bytes);
        assert_eq!(r.status, status, "{what}: {} {:?}", r.body, r.headers);
        assert_eq!(r.code(), code, "{what}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        assert_eq!(
            r.header("content-length").and_then(|l| l.parse().ok()),
            Some(r.body.len()),
            "{what}: the declared length is the body's"
        );
    }
    // The server is unharmed and still answers normally.
    assert_eq!(api.server.request("GET", "/healthz", None).0, 200);
    assert!(!api.server.log().contains("panicked"));
}
