//! Sign-in with Google and Microsoft end to end: the real `alvryn` binary
//! against the real test OpenID provider (`scripts/oidc-mock`, which
//! `scripts/test` starts and names in `ALVRYN_TEST_OIDC_URL`), each case
//! for both provider configurations.
//!
//! A test plays the browser by hand and follows no redirect on its own:
//! `GET /auth/oauth/{provider}/start` (our 302 to the provider), the
//! provider's authorize endpoint (its 302 back to our callback, with
//! `code` and `state`), our callback (a 302 to the frontend with `code` or
//! `error`), then `POST /auth/oauth/exchange`. The provider's control API
//! scripts what the next ID token says.
//!
//! Each test runs its own server with its own data folder and its own
//! client id (the provider's next-token queues are per client id). The
//! provider's signing key and its counters are global: the two tests that
//! count requests at the provider (key rotation, single-flight refresh)
//! hold [`EXCLUSIVE`] for writing, every other test holds it for reading.
//! That lock is per test binary; `cargo test` runs test binaries one after
//! another, so `alvryn-core/tests/oidc.rs` (which rotates the same key)
//! never runs beside these.
//!
//! Without `ALVRYN_TEST_OIDC_URL` the tests print SKIPPED and pass, unless
//! `ALVRYN_TEST_REQUIRE_SERVICES` is set (as `scripts/test` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use alvryn::core::crypto::FieldContext;
use alvryn::core::oauth::{OAuthError, Provider, TOKEN_COLLECTION, TOKEN_NS, token_key};
use alvryn::server::AppState;
use alvryn::server::config::{Config, Overrides};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::{Response, Server, alvryn, post_json, raw_request, service, with_bearer};
use url::Url;

const JWT: &str = "oauth-e2e-access-secret-0123456789abcdef0123";
const JWT_REFRESH: &str = "oauth-e2e-refresh-secret-0123456789abcdef012";
const FIELD_KEY: [u8; 32] = [0x5a; 32];
const FRONTEND: &str = "http://app.alvryn.test";
const PASSWORD: &str = "correct horse battery staple";
const TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Held for writing by the tests that count the provider's requests or
/// rotate its key; for reading by every other test.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The two provider configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// Google: one fixed issuer, `email_verified` proves the email.
    Google,
    /// Microsoft multi-tenant: `iss` follows `{tenantid}` and `tid`; only
    /// `xms_edov` proves the email.
    Microsoft,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Google => "google",
            Flavor::Microsoft => "microsoft",
        }
    }

    fn provider(self) -> Provider {
        match self {
            Flavor::Google => Provider::Google,
            Flavor::Microsoft => Provider::Microsoft,
        }
    }

    fn other(self) -> Flavor {
        match self {
            Flavor::Google => Flavor::Microsoft,
            Flavor::Microsoft => Flavor::Google,
        }
    }

    /// The claims that prove the email to this provider's rule.
    fn verified(self) -> Value {
        match self {
            Flavor::Google => json!({"email_verified": true}),
            Flavor::Microsoft => json!({"xms_edov": true}),
        }
    }

    /// Claims that do not prove the email to this provider's rule.
    fn unverified(self) -> Value {
        match self {
            Flavor::Google => json!({"email_verified": false}),
            // Microsoft's `email_verified` is not trusted: only xms_edov.
            Flavor::Microsoft => json!({"email_verified": true, "xms_edov": null}),
        }
    }
}

/// The test OpenID provider and its control API.
struct Mock {
    base: String,
    addr: SocketAddr,
}

impl Mock {
    fn from_env() -> Option<Mock> {
        let base = service("ALVRYN_TEST_OIDC_URL")?
            .trim_end_matches('/')
            .to_owned();
        let url = Url::parse(&base).unwrap();
        let addr = url.socket_addrs(|| None).unwrap()[0];
        Some(Mock { base, addr })
    }

    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base)
    }

    /// The claims this flavor's tokens always carry beyond the mock's
    /// defaults.
    fn flavor_claims(&self, flavor: Flavor) -> Value {
        match flavor {
            Flavor::Google => json!({}),
            Flavor::Microsoft => json!({
                "iss": format!("{}/{TENANT}/v2.0", self.base),
                "tid": TENANT,
            }),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let r = post_json(self.addr, path, body, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        json_of(&r)
    }

    /// Queues what the next ID token issued to `client_id` says.
    fn next(&self, client_id: &str, flavor: Flavor, claims: &Value, mode: &str, hmac: &str) {
        let mut all = self.flavor_claims(flavor);
        merge(&mut all, claims);
        self.post(
            "/__control/next",
            &json!({"client_id": client_id, "claims": all, "mode": mode, "hmac_key": hmac}),
        );
    }

    fn stats(&self) -> Value {
        let r = raw_request(self.addr, "GET", "/__control/stats", &[], b"");
        assert_eq!(r.status, 200, "{}", r.body);
        json_of(&r)
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap()
    }

    fn rotate(&self) {
        self.post("/__control/rotate", &json!({}));
    }

    /// The last access and refresh token the provider issued to a client.
    fn last_tokens(&self, client_id: &str) -> (String, String) {
        let r = raw_request(
            self.addr,
            "GET",
            &format!("/__control/last_tokens?client_id={client_id}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json_of(&r);
        (
            v["access_token"].as_str().unwrap().to_owned(),
            v["refresh_token"].as_str().unwrap().to_owned(),
        )
    }
}

/// The JSON body of a response of the mock (Node answers chunked).
fn json_of(r: &Response) -> Value {
    let chunked = r
        .header("Transfer-Encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return r.json();
    }
    let mut body = String::new();
    let mut rest = r.body.as_str();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A GET of `url` sent to `addr` (the browser following a `Location`;
/// `addr` differs from the URL's host only to play a load balancer).
fn get_at(addr: SocketAddr, url: &Url) -> Response {
    let target = &url[url::Position::BeforePath..];
    raw_request(addr, "GET", target, &[], b"")
}

fn get(url: &Url) -> Response {
    get_at(url.socket_addrs(|| None).unwrap()[0], url)
}

/// The `Location` of a 302.
fn location(r: &Response) -> Url {
    assert_eq!(
        r.status, 302,
        "expected a redirect: {} {}",
        r.status, r.body
    );
    Url::parse(r.header("Location").expect("a Location")).unwrap()
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Where the browser landed on the frontend.
#[derive(Debug)]
struct Landed {
    url: Url,
}

impl Landed {
    fn code(&self) -> String {
        assert!(
            self.url.as_str().starts_with(FRONTEND),
            "not on the frontend: {}",
            self.url
        );
        assert_eq!(query(&self.url, "error"), None, "{}", self.url);
        query(&self.url, "code").unwrap_or_else(|| panic!("no code in {}", self.url))
    }

    fn error(&self) -> String {
        assert!(
            self.url.as_str().starts_with(FRONTEND),
            "not on the frontend: {}",
            self.url
        );
        assert_eq!(query(&self.url, "code"), None, "{}", self.url);
        query(&self.url, "error").unwrap_or_else(|| panic!("no error in {}", self.url))
    }
}

/// One server configured for one provider at the mock, with its own data
/// folder and client id.
struct Env {
    mock: Mock,
    flavor: Flavor,
    client_id: String,
    dir: tempfile::TempDir,
    server: Option<Server>,
    /// The browser's cookies for the backend (name, value).
    jar: std::sync::Mutex<Vec<(String, String)>>,
}

impl Env {
    fn start(flavor: Flavor) -> Option<Env> {
        let mock = Mock::from_env()?;
        let client_id = unique(&format!("alvryn-e2e-{}", flavor.name()));
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(command(&mock, flavor, &client_id, dir.path(), None));
        Some(Env {
            mock,
            flavor,
            client_id,
            dir,
            server: Some(server),
            jar: Default::default(),
        })
    }

    /// A server with both providers configured (one client id for both);
    /// `flavor` is the one the helpers use until the test switches it.
    fn start_both(flavor: Flavor) -> Option<Env> {
        let mock = Mock::from_env()?;
        let client_id = unique("alvryn-e2e-both");
        let dir = tempfile::tempdir().unwrap();
        let mut c = alvryn();
        c.current_dir(dir.path()).env("ALVRYN_LOG", "debug");
        for f in [Flavor::Google, Flavor::Microsoft] {
            for (k, v) in env_vars(&mock, f, &client_id, None) {
                c.env(k, v);
            }
        }
        let server = Server::start(c);
        Some(Env {
            mock,
            flavor,
            client_id,
            dir,
            server: Some(server),
            jar: Default::default(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("the server runs").addr
    }

    /// Stops the server; answers its log.
    fn stop(&mut self) -> String {
        let server = self.server.take().expect("the server runs");
        let log = server.log();
        drop(server);
        log
    }

    fn p(&self) -> &'static str {
        self.flavor.name()
    }

    /// Queues the next ID token's claims (on top of the flavor's).
    fn next(&self, claims: &Value) {
        self.mock
            .next(&self.client_id, self.flavor, claims, "normal", "pem");
    }

    fn next_mode(&self, claims: &Value, mode: &str, hmac: &str) {
        self.mock
            .next(&self.client_id, self.flavor, claims, mode, hmac);
    }

    /// `GET start`: answers the provider's authorization URL.
    fn start_login(&self, addr: SocketAddr, redirect_to: Option<&str>) -> Url {
        let r = self.start_raw(addr, redirect_to);
        let auth = location(&r);
        assert!(
            auth.as_str()
                .starts_with(&format!("{}/authorize?", self.mock.base)),
            "{auth}"
        );
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        assert_eq!(query(&auth, "client_id").as_deref(), Some(&*self.client_id));
        assert_eq!(
            query(&auth, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert!(query(&auth, "nonce").is_some_and(|n| n.len() >= 32));
        assert!(query(&auth, "state").is_some_and(|s| s.len() >= 32));
        auth
    }

    fn start_raw(&self, addr: SocketAddr, redirect_to: Option<&str>) -> Response {
        let mut path = format!("/auth/oauth/{}/start", self.p());
        if let Some(r) = redirect_to {
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("redirect_to", r)
                .finish();
            path = format!("{path}?{q}");
        }
        let r = raw_request(addr, "GET", &path, &[], b"");
        self.keep_cookies(&r);
        r
    }

    /// Keeps the cookies a backend answer sets (an empty value or
    /// `Max-Age=0` deletes one), as a browser does.
    fn keep_cookies(&self, r: &Response) {
        let mut jar = self.jar.lock().unwrap();
        for (k, v) in &r.headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let pair = v.split(';').next().unwrap_or("");
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            jar.retain(|(n, _)| n != name);
            if !value.is_empty() && !v.contains("Max-Age=0") {
                jar.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// The `Cookie` header this browser sends to the backend.
    fn cookie_header(&self) -> String {
        let jar = self.jar.lock().unwrap();
        jar.iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The provider's authorize endpoint: answers our callback URL.
    fn authorize(&self, auth: &Url) -> Url {
        let back = location(&get(auth));
        assert_eq!(
            back.path(),
            format!("/auth/oauth/{}/callback", self.p()),
            "{back}"
        );
        back
    }

    /// Our callback, sent to `addr`: where the browser lands.
    fn callback_at(&self, addr: SocketAddr, back: &Url) -> Landed {
        let cookies = self.cookie_header();
        let target = &back[url::Position::BeforePath..];
        let r = raw_request(addr, "GET", target, &[("Cookie", &cookies)], b"");
        self.keep_cookies(&r);
        Landed { url: location(&r) }
    }

    /// Our callback opened by another browser (no cookies of ours).
    fn callback_elsewhere(&self, back: &Url) -> Landed {
        Landed {
            url: location(&get_at(self.addr(), back)),
        }
    }

    /// A whole browser login on this server, with the given claims.
    fn login(&self, claims: &Value) -> Landed {
        self.next(claims);
        self.browse(None)
    }

    /// A whole browser login on this server, with what is queued.
    fn browse(&self, redirect_to: Option<&str>) -> Landed {
        let auth = self.start_login(self.addr(), redirect_to);
        let back = self.authorize(&auth);
        self.callback_at(self.addr(), &back)
    }

    fn exchange_at(&self, addr: SocketAddr, code: &str) -> Response {
        post_json(addr, "/auth/oauth/exchange", &json!({"code": code}), None)
    }

    /// Logs in with `claims` and exchanges the code: our tokens.
    fn login_ok(&self, claims: &Value) -> Value {
        let code = self.login(claims).code();
        let r = self.exchange_at(self.addr(), &code);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        r.json()
    }

    fn me(&self, access: &str) -> Response {
        let r = with_bearer(self.addr(), "GET", "/auth/me", access);
        assert_eq!(r.status, 200, "{}", r.body);
        r
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

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("alvryn-data").join("alvryn.db")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    fn user_count(&self) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    }

    fn link_count(&self) -> i64 {
        self.db()
            .query_row(
                "SELECT count(*) FROM records WHERE ns = 'oauth_link'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The stored provider-token record of a user, as JSON.
    fn token_record(&self, user_id: &str) -> Option<Value> {
        let key = token_key(user_id, self.flavor.provider());
        let data: Option<Vec<u8>> = self
            .db()
            .query_row(
                "SELECT data FROM records WHERE ns = ?1 AND key = ?2",
                [TOKEN_NS, &key],
                |r| r.get(0),
            )
            .ok();
        data.map(|d| serde_json::from_slice(&d).unwrap())
    }

    /// Overwrites a user's provider-token record (the server stopped).
    fn write_token_record(&self, user_id: &str, record: &Value) {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        let key = token_key(user_id, self.flavor.provider());
        let n = conn
            .execute(
                "UPDATE records SET data = ?1 WHERE ns = ?2 AND key = ?3",
                rusqlite::params![serde_json::to_vec(record).unwrap(), TOKEN_NS, key],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// The server's state built in this process over the same data folder
    /// and configuration.
    async fn in_process(&self) -> AppState {
        let vars = env_vars(&self.mock, self.flavor, &self.client_id, None);
        let config = Config::from_lookup(
            &|name| {
                vars.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| OsString::from(v))
            },
            &Overrides {
                data_dir: Some(self.dir.path().join("alvryn-data")),
                ..Overrides::default()
            },
        )
        .unwrap();
        AppState::new(config).await.unwrap()
    }
}

/// The server's environment for one provider at the mock.
fn env_vars(
    mock: &Mock,
    flavor: Flavor,
    client_id: &str,
    backend: Option<&str>,
) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vec![
        ("JWT_SECRET".into(), JWT.into()),
        ("JWT_REFRESH_SECRET".into(), JWT_REFRESH.into()),
        ("FIELD_ENCRYPTION_KEY".into(), STANDARD.encode(FIELD_KEY)),
        ("FRONTEND_URL".into(), FRONTEND.into()),
    ];
    let (prefix, issuer) = match flavor {
        Flavor::Google => ("GOOGLE", mock.base.clone()),
        Flavor::Microsoft => ("MICROSOFT", format!("{}/{{tenantid}}/v2.0", mock.base)),
    };
    v.push((format!("{prefix}_CLIENT_ID"), client_id.into()));
    v.push((
        format!("{prefix}_CLIENT_SECRET"),
        "e2e-client-secret".into(),
    ));
    v.push((format!("{prefix}_DISCOVERY_URL"), mock.discovery_url()));
    v.push((format!("{prefix}_ISSUER"), issuer));
    if let Some(b) = backend {
        v.push(("BACKEND_URL".into(), b.into()));
    }
    v
}

fn command(
    mock: &Mock,
    flavor: Flavor,
    client_id: &str,
    dir: &std::path::Path,
    backend: Option<&str>,
) -> Command {
    let mut c = alvryn();
    c.current_dir(dir).env("ALVRYN_LOG", "debug");
    for (k, v) in env_vars(mock, flavor, client_id, backend) {
        c.env(k, v);
    }
    c
}

/// Sets every claim of `extra` on `claims` (an object), replacing any
/// already there.
fn merge(claims: &mut Value, extra: &Value) {
    for (k, v) in extra.as_object().expect("claims are an object") {
        claims[k] = v.clone();
    }
}

/// Runs `case` for both provider configurations, one test each.
macro_rules! both {
    ($case:ident: $google:ident, $microsoft:ident) => {
        #[test]
        fn $google() {
            $case(Flavor::Google);
        }
        #[test]
        fn $microsoft() {
            $case(Flavor::Microsoft);
        }
    };
}

fn user_id(tokens: &Value) -> String {
    tokens["user"]["id"].as_str().unwrap().to_owned()
}

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

fn providers(me: &Value) -> Vec<String> {
    me["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider"].as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------ cases

/// 1. A first login creates the account: our tokens work, `/auth/me` lists
///    the provider with its email and link time, and holds no token.
fn new_user(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    assert_eq!(env.user_count(), 0);
    let tokens = env.login_ok(&json!({"sub": "sub-new", "email": "New.User@Example.com"}));
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["user"]["email"], "new.user@example.com");
    assert_eq!(env.user_count(), 1);
    let me = env.me(&access(&tokens));
    let body = me.json();
    assert_eq!(body["id"], tokens["user"]["id"]);
    assert_eq!(body["email"], "new.user@example.com");
    assert_eq!(body["has_password"], false);
    let list = body["providers"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["provider"], flavor.name());
    assert_eq!(list[0]["email"], "new.user@example.com");
    let linked_at = list[0]["linked_at"].as_str().unwrap();
    assert!(
        linked_at.len() == 20 && linked_at.ends_with('Z') && linked_at.contains('T'),
        "{linked_at}"
    );
    // Neither the provider's tokens nor anything named like a token.
    let (provider_access, provider_refresh) = env.mock.last_tokens(&env.client_id);
    for text in [&me.body, &serde_json::to_string(&tokens).unwrap()] {
        assert!(!text.contains(&provider_access), "{text}");
        assert!(!text.contains(&provider_refresh), "{text}");
    }
    assert!(!me.body.contains("token"), "{}", me.body);
    // The refresh token we issued works too.
    let r = post_json(
        env.addr(),
        "/auth/refresh",
        &json!({"refresh_token": tokens["refresh_token"]}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
both!(new_user: oauth_new_user_google, oauth_new_user_microsoft);

/// 2. The same `sub` signs into the same account, even after its email
///    changed at the provider; no second account.
fn returning_user(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let first = env.login_ok(&json!({"sub": "sub-back", "email": "back@example.com"}));
    let second = env.login_ok(&json!({"sub": "sub-back", "email": "back@example.com"}));
    let third = env.login_ok(&json!({"sub": "sub-back", "email": "renamed@example.com"}));
    assert_eq!(user_id(&first), user_id(&second));
    assert_eq!(user_id(&first), user_id(&third));
    assert_eq!(third["user"]["email"], "back@example.com");
    assert_eq!(env.user_count(), 1);
    assert_eq!(env.link_count(), 1);
    // Another subject with another email is another account.
    let other = env.login_ok(&json!({"sub": "sub-other", "email": "other@example.com"}));
    assert_ne!(user_id(&first), user_id(&other));
    assert_eq!(env.user_count(), 2);
}
both!(returning_user: oauth_returning_user_google, oauth_returning_user_microsoft);

/// 3. An existing password account is linked when the provider proves the
///    email (Google `email_verified`, Microsoft `xms_edov`); Microsoft's
///    `email_verified` alone is refused and links nothing.
fn links_on_verified_email(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let signed_up = env.signup("pat@example.com");
    let uid = user_id(&signed_up);
    if flavor == Flavor::Microsoft {
        let mut claims = json!({"sub": "sub-pat", "email": "pat@example.com"});
        merge(&mut claims, &flavor.unverified());
        assert_eq!(env.login(&claims).error(), "email_not_verified");
        assert_eq!(env.link_count(), 0);
        assert!(env.token_record(&uid).is_none());
        let me = env.me(&access(&signed_up)).json();
        assert_eq!(providers(&me), Vec::<String>::new());
    }
    let mut claims = json!({"sub": "sub-pat", "email": "PAT@example.com"});
    merge(&mut claims, &flavor.verified());
    let tokens = env.login_ok(&claims);
    assert_eq!(user_id(&tokens), uid);
    assert_eq!(env.user_count(), 1);
    let me = env.me(&access(&tokens)).json();
    assert_eq!(providers(&me), vec![flavor.name().to_owned()]);
    assert_eq!(me["has_password"], true);
    assert_eq!(me["providers"][0]["email"], "pat@example.com");
    // The password still works.
    let r = post_json(
        env.addr(),
        "/auth/login",
        &json!({"email": "pat@example.com", "password": PASSWORD}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user_id(&r.json()), uid);
}
both!(links_on_verified_email: oauth_links_verified_email_google, oauth_links_verified_email_microsoft);

/// 4. An email the provider does not prove never signs into the account
///    that has it.
fn refuses_unverified_email(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let signed_up = env.signup("victim@example.com");
    let mut claims = json!({"sub": "sub-attacker", "email": "victim@example.com"});
    merge(&mut claims, &flavor.unverified());
    assert_eq!(env.login(&claims).error(), "email_not_verified");
    assert_eq!(env.user_count(), 1);
    assert_eq!(env.link_count(), 0);
    assert!(env.token_record(&user_id(&signed_up)).is_none());
    let me = env.me(&access(&signed_up)).json();
    assert_eq!(providers(&me), Vec::<String>::new());
}
both!(refuses_unverified_email: oauth_refuses_unverified_email_google, oauth_refuses_unverified_email_microsoft);

/// 5. A callback URL used twice: the second finds no login in progress.
fn replayed_state(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    env.next(&json!({"sub": "sub-replay", "email": "replay@example.com"}));
    let auth = env.start_login(env.addr(), None);
    let back = env.authorize(&auth);
    let first = env.callback_at(env.addr(), &back);
    first.code();
    // The provider's code is single-use too, so a replay that got past
    // the state would end in `grant_refused`: this is the state check.
    let second = env.callback_at(env.addr(), &back);
    assert_eq!(second.error(), "invalid_state");
    // A made-up state, and none at all.
    let mut forged = back.clone();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", "whatever")
        .append_pair("state", "forged-state-forged-state-forged-state");
    assert_eq!(
        env.callback_at(env.addr(), &forged).error(),
        "invalid_state"
    );
    let mut bare = back.clone();
    bare.set_query(Some("code=whatever"));
    assert_eq!(env.callback_at(env.addr(), &bare).error(), "invalid_state");
    // A callback on the path of a provider this server does not have is
    // 404 and does not use the state up: the real callback then works.
    env.next(&json!({"sub": "sub-replay"}));
    let auth = env.start_login(env.addr(), None);
    let back = env.authorize(&auth);
    let mut elsewhere = back.clone();
    elsewhere.set_path(&format!("/auth/oauth/{}/callback", flavor.other().name()));
    let r = get_at(env.addr(), &elsewhere);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.code(), "provider_not_configured");
    env.callback_at(env.addr(), &back).code();
    assert_eq!(env.user_count(), 1);
}
both!(replayed_state: oauth_replayed_state_google, oauth_replayed_state_microsoft);

/// Asserts a login whose ID token is bad is refused with
/// `invalid_id_token` and creates nothing.
fn refused(env: &Env, claims: &Value, mode: &str, hmac: &str) {
    env.next_mode(claims, mode, hmac);
    let landed = env.browse(None);
    assert_eq!(
        landed.error(),
        "invalid_id_token",
        "mode {mode} claims {claims} hmac {hmac}"
    );
    assert_eq!(env.user_count(), 0, "mode {mode} claims {claims}");
    assert_eq!(env.link_count(), 0);
}

/// 6. and 7. The ID token is checked: nonce, signature, expiry, audience,
///    algorithm; each failure is `invalid_id_token` and creates no account.
fn bad_id_tokens(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let who = json!({"sub": "sub-bad", "email": "bad@example.com"});
    let with = |extra: Value| {
        let mut c = who.clone();
        merge(&mut c, &extra);
        c
    };
    refused(&env, &with(json!({"nonce": "other"})), "normal", "pem");
    refused(&env, &with(json!({"nonce": null})), "normal", "pem");
    refused(&env, &who, "tamper", "pem");
    refused(&env, &who, "expired", "pem");
    refused(
        &env,
        &with(json!({"aud": "another-client"})),
        "normal",
        "pem",
    );
    refused(&env, &who, "hs256_public_key", "pem");
    refused(&env, &who, "hs256_public_key", "jwk_n");
    refused(&env, &who, "alg_none", "pem");
    if flavor == Flavor::Microsoft {
        // An issuer that does not follow the token's own tenant.
        refused(
            &env,
            &with(json!({"tid": "00000000-0000-0000-0000-000000000000"})),
            "normal",
            "pem",
        );
    } else {
        refused(
            &env,
            &with(json!({"iss": "https://accounts.example.invalid"})),
            "normal",
            "pem",
        );
    }
    // The same provider account then signs in normally.
    let tokens = env.login_ok(&who);
    assert_eq!(tokens["user"]["email"], "bad@example.com");
    assert_eq!(env.user_count(), 1);
}
both!(bad_id_tokens: oauth_bad_id_tokens_google, oauth_bad_id_tokens_microsoft);

/// 8. The provider rotates its key: the next login meets an unknown `kid`,
///    refetches the JWKS once, and succeeds.
fn key_rotation(flavor: Flavor) {
    let _g = alone();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let before = env.mock.stat("jwks_fetches");
    env.login_ok(&json!({"sub": "sub-rot", "email": "rot@example.com"}));
    let fetched = env.mock.stat("jwks_fetches");
    assert_eq!(fetched, before + 1, "the first login fetches the JWKS once");
    env.login_ok(&json!({"sub": "sub-rot"}));
    assert_eq!(env.mock.stat("jwks_fetches"), fetched, "keys are cached");
    env.mock.rotate();
    let tokens = env.login_ok(&json!({"sub": "sub-rot"}));
    assert_eq!(tokens["user"]["email"], "rot@example.com");
    assert_eq!(
        env.mock.stat("jwks_fetches"),
        fetched + 1,
        "one refetch for the new kid"
    );
    assert_eq!(env.user_count(), 1);
}
both!(key_rotation: oauth_key_rotation_refetches_jwks_once_google, oauth_key_rotation_refetches_jwks_once_microsoft);

/// 9. A login begun on one instance finishes on another: the state and the
///    exchange code live in the shared store.
fn two_instances(flavor: Flavor) {
    let _g = shared();
    let Some(mock) = Mock::from_env() else {
        return;
    };
    let client_id = unique(&format!("alvryn-e2e-two-{}", flavor.name()));
    let dir = tempfile::tempdir().unwrap();
    // Behind one public URL, as behind a load balancer.
    let backend = "http://api.alvryn.test";
    let a = Server::start(command(
        &mock,
        flavor,
        &client_id,
        dir.path(),
        Some(backend),
    ));
    let b = Server::start(command(
        &mock,
        flavor,
        &client_id,
        dir.path(),
        Some(backend),
    ));
    let env = Env {
        mock,
        flavor,
        client_id,
        dir,
        server: Some(a),
        jar: Default::default(),
    };
    env.next(&json!({"sub": "sub-two", "email": "two@example.com"}));
    let auth = env.start_login(env.addr(), None);
    assert_eq!(
        query(&auth, "redirect_uri").as_deref(),
        Some(&*format!("{backend}/auth/oauth/{}/callback", flavor.name()))
    );
    let back = env.authorize(&auth);
    assert_eq!(back.host_str(), Some("api.alvryn.test"));
    let landed = env.callback_at(b.addr, &back);
    let code = landed.code();
    let r = env.exchange_at(env.addr(), &code);
    assert_eq!(r.status, 200, "{}", r.body);
    let tokens = r.json();
    // B accepts A's tokens and sees the link B made.
    let me = with_bearer(b.addr, "GET", "/auth/me", &access(&tokens));
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(providers(&me.json()), vec![flavor.name().to_owned()]);
    // The code was used on A: B refuses it too.
    let again = env.exchange_at(b.addr, &code);
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(again.code(), "invalid_code");
    // The other way round: start on B, callback on A, exchange on B.
    env.next(&json!({"sub": "sub-two"}));
    let auth = env.start_login(b.addr, None);
    let back = env.authorize(&auth);
    let code = env.callback_at(env.addr(), &back).code();
    let r = env.exchange_at(b.addr, &code);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(user_id(&r.json()), user_id(&tokens));
    drop(b);
}
both!(two_instances: oauth_login_finishes_on_another_instance_google, oauth_login_finishes_on_another_instance_microsoft);

/// 10. The provider's refusal reaches the frontend as its code, never as
///     a server error, and uses up the state.
fn provider_error(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let auth = env.start_login(env.addr(), Some("/after-login"));
    let state = query(&auth, "state").unwrap();
    let path = format!(
        "/auth/oauth/{}/callback?error=access_denied&error_description=The+user+declined&state={state}",
        env.p()
    );
    let r = raw_request(
        env.addr(),
        "GET",
        &path,
        &[("Cookie", &env.cookie_header())],
        b"",
    );
    let landed = Landed { url: location(&r) };
    assert_eq!(landed.error(), "access_denied");
    assert_eq!(landed.url.path(), "/after-login");
    assert!(!landed.url.as_str().contains("declined"), "{}", landed.url);
    // The state is used up.
    let r = raw_request(
        env.addr(),
        "GET",
        &path,
        &[("Cookie", &env.cookie_header())],
        b"",
    );
    assert_eq!(Landed { url: location(&r) }.error(), "invalid_state");
    // An error code the API does not pass on becomes provider_error.
    let auth = env.start_login(env.addr(), None);
    let state = query(&auth, "state").unwrap();
    let r = raw_request(
        env.addr(),
        "GET",
        &format!(
            "/auth/oauth/{}/callback?error=%3Cscript%3E&state={state}",
            env.p()
        ),
        &[("Cookie", &env.cookie_header())],
        b"",
    );
    assert_eq!(Landed { url: location(&r) }.error(), "provider_error");
    assert_eq!(env.user_count(), 0);
}
both!(provider_error: oauth_provider_error_reaches_frontend_google, oauth_provider_error_reaches_frontend_microsoft);

/// 11. `redirect_to` must be on the frontend's origin; there, the login
///     ends there.
fn redirect_to(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    for bad in [
        "https://evil.example/steal",
        "//evil.example/steal",
        "/\\evil.example",
        "http://app.alvryn.test.evil.example/",
        "https://app.alvryn.test/",
        "http://user@app.alvryn.test/",
        "javascript:alert(1)",
    ] {
        let r = env.start_raw(env.addr(), Some(bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.code(), "invalid_redirect", "{bad}");
    }
    env.next(&json!({"sub": "sub-redir", "email": "redir@example.com"}));
    let landed = env.browse(Some(&format!("{FRONTEND}/account/settings?tab=security")));
    assert_eq!(landed.url.path(), "/account/settings");
    assert_eq!(query(&landed.url, "tab").as_deref(), Some("security"));
    landed.code();
    env.next(&json!({"sub": "sub-redir"}));
    let landed = env.browse(Some("/welcome"));
    assert_eq!(
        landed.url.as_str().split('?').next(),
        Some(&*format!("{FRONTEND}/welcome"))
    );
    landed.code();
    // No redirect_to: the frontend URL itself.
    env.next(&json!({"sub": "sub-redir"}));
    let landed = env.browse(None);
    assert_eq!(landed.url.path(), "/");
    landed.code();
}
both!(redirect_to: oauth_redirect_to_google, oauth_redirect_to_microsoft);

/// 12. A provider without a client is 404 `provider_not_configured`; a
///     name that is no provider is 404.
fn unconfigured(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let other = flavor.other().name();
    for path in [
        format!("/auth/oauth/{other}/start"),
        format!("/auth/oauth/{other}/callback?code=x&state=y"),
    ] {
        let r = raw_request(env.addr(), "GET", &path, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.code(), "provider_not_configured", "{path}");
    }
    for path in [
        "/auth/oauth/github/start",
        "/auth/oauth/github/callback?code=x&state=y",
        "/auth/oauth/GOOGLE/start",
    ] {
        let r = raw_request(env.addr(), "GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_ne!(r.code(), "internal");
    }
}
both!(unconfigured: oauth_unconfigured_provider_google, oauth_unconfigured_provider_microsoft);

/// 13. An exchange code works once.
fn exchange_once(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let code = env
        .login(&json!({"sub": "sub-once", "email": "once@example.com"}))
        .code();
    let first = env.exchange_at(env.addr(), &code);
    assert_eq!(first.status, 200, "{}", first.body);
    let second = env.exchange_at(env.addr(), &code);
    assert_eq!(second.status, 400, "{}", second.body);
    assert_eq!(second.code(), "invalid_code");
    for bogus in ["", "not-a-code", &"x".repeat(300)] {
        let r = env.exchange_at(env.addr(), bogus);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.code(), "invalid_code");
    }
}
both!(exchange_once: oauth_exchange_code_works_once_google, oauth_exchange_code_works_once_microsoft);

/// 17. Account pre-hijacking undone: someone signs up first through the
///     other provider with the victim's email, unproven (Google with
///     `email_verified: false`, Microsoft without `xms_edov`); when the
///     email's proven owner signs in, they get the account, the unproven
///     link is removed, and every session made before is signed out.
fn pre_hijacking_is_undone(flavor: Flavor) {
    let _g = shared();
    // Through the other provider, then through the same one.
    for attacker_side in [flavor.other(), flavor] {
        pre_hijacking_through(flavor, attacker_side);
    }
}

fn pre_hijacking_through(flavor: Flavor, attacker_side: Flavor) {
    let Some(mut env) = Env::start_both(attacker_side) else {
        return;
    };
    let mut claims = json!({"sub": unique("sub-mallory"), "email": "owner@example.com"});
    merge(&mut claims, &attacker_side.unverified());
    let attacker = env.login_ok(&claims);
    let uid = user_id(&attacker);
    // And a code of a second login, kept for later.
    let kept_code = env.login(&claims).code();
    assert_eq!(
        providers(&env.me(&access(&attacker)).json()),
        vec![attacker_side.name().to_owned()]
    );

    env.flavor = flavor;
    let mut claims = json!({"sub": unique("sub-owner"), "email": "owner@example.com"});
    merge(&mut claims, &flavor.verified());
    let owner = env.login_ok(&claims);
    assert_eq!(user_id(&owner), uid, "the email's owner gets the account");
    let me = env.me(&access(&owner)).json();
    assert_eq!(providers(&me), vec![flavor.name().to_owned()]);
    // The attacker's session is over: refresh and access both refused.
    let r = post_json(
        env.addr(),
        "/auth/refresh",
        &json!({"refresh_token": attacker["refresh_token"]}),
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = with_bearer(env.addr(), "GET", "/auth/me", &access(&attacker));
    assert_eq!(r.status, 401, "{}", r.body);
    // A code issued to the attacker before the owner came is worthless.
    let r = env.exchange_at(env.addr(), &kept_code);
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_code".into()),
        "{}",
        r.body
    );
    // And signing in again through the removed link is a new account's
    // business, not this one's: the link is gone.
    assert_eq!(env.link_count(), 1);
}
both!(pre_hijacking_is_undone: oauth_pre_hijacking_is_undone_google, oauth_pre_hijacking_is_undone_microsoft);

/// 18. Login CSRF: a callback URL opened by another browser than the one
///     that started the login (an attacker's finished authorization sent
///     to a victim) is refused `browser_mismatch`; no account is made, the
///     victim is not signed into anything, and the URL is spent for its
///     sender too. The binding cookie is `HttpOnly` and `SameSite=Lax`.
fn login_csrf_is_refused(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let mut claims = json!({"sub": unique("sub-csrf"), "email": "mallory@example.com"});
    merge(&mut claims, &flavor.verified());
    env.next(&claims);
    let start = env.start_raw(env.addr(), None);
    let set_cookie = start
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .expect("start sets the binding cookie");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let back = env.authorize(&location(&start));
    // The victim's browser: no binding cookie.
    assert_eq!(env.callback_elsewhere(&back).error(), "browser_mismatch");
    assert_eq!(env.user_count(), 0);
    // A forged cookie of the right name does not help either.
    env.next(&claims);
    let back2 = env.authorize(&env.start_login(env.addr(), None));
    let state = query(&back2, "state").unwrap();
    let name = alvryn::core::oauth::binding_cookie_name(&state);
    let target = &back2[url::Position::BeforePath..];
    let forged = format!("{name}=not-the-binding");
    let r = raw_request(env.addr(), "GET", target, &[("Cookie", &forged)], b"");
    let landed = Landed { url: location(&r) };
    assert_eq!(landed.error(), "browser_mismatch");
    // And the sender's own browser cannot use the spent URL afterwards.
    assert_eq!(env.callback_at(env.addr(), &back).error(), "invalid_state");
    assert_eq!(env.user_count(), 0);
    // The right browser still signs in.
    let tokens = env.login_ok(&claims);
    assert_eq!(env.user_count(), 1);
    assert!(!user_id(&tokens).is_empty());
}
both!(login_csrf_is_refused: oauth_login_csrf_is_refused_google, oauth_login_csrf_is_refused_microsoft);

/// Every text and blob value of every table of the database.
fn every_value(conn: &rusqlite::Connection) -> Vec<(String, Vec<u8>)> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.iter().any(|t| t == "records"), "{tables:?}");
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                let bytes = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.to_vec()
                    }
                    _ => continue,
                };
                out.push((table.clone(), bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// 14. The store holds the provider's tokens only sealed, and a sealed
///     token copied onto another user does not open.
fn store_holds_no_plaintext(flavor: Flavor) {
    let _g = shared();
    let Some(mut env) = Env::start(flavor) else {
        return;
    };
    let a = env.login_ok(&json!({"sub": "sub-a", "email": "a@example.com"}));
    let (a_access, a_refresh) = env.mock.last_tokens(&env.client_id);
    let b = env.login_ok(&json!({"sub": "sub-b", "email": "b@example.com"}));
    let (b_access, b_refresh) = env.mock.last_tokens(&env.client_id);
    let (a_id, b_id) = (user_id(&a), user_id(&b));
    let secrets = [&a_access, &a_refresh, &b_access, &b_refresh];

    // Through SQLite, with the server still running (WAL included)...
    let values = every_value(&env.db());
    let sealed: Vec<_> = values.iter().filter(|(t, _)| t == "records").collect();
    assert!(!sealed.is_empty());
    for (table, value) in &values {
        for s in secrets {
            assert!(!contains(value, s), "a provider token in table {table}");
        }
    }
    // ... and every byte of every file of the data folder, and the log.
    let log = env.stop();
    let mut files = 0;
    for entry in std::fs::read_dir(env.dir.path().join("alvryn-data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for s in secrets {
                assert!(
                    !contains(&bytes, s),
                    "a provider token in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files >= 1);
    for s in secrets {
        assert!(!log.contains(s.as_str()), "a provider token in the log");
    }

    // A's record holds sealed tokens that open, under A's context only,
    // to what the provider issued.
    let a_rec = env.token_record(&a_id).unwrap();
    let b_rec = env.token_record(&b_id).unwrap();
    let sealed_refresh = a_rec["refresh_token"].as_str().unwrap().to_owned();
    assert!(sealed_refresh.starts_with("av1:"), "{sealed_refresh}");
    assert!(a_rec["access_token"].as_str().unwrap().starts_with("av1:"));
    let field = format!("{}.refresh_token", flavor.name());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let state = env.in_process().await;
        let opened = state
            .cipher
            .decrypt(
                &FieldContext::new(TOKEN_COLLECTION, &a_id, &field),
                &sealed_refresh,
            )
            .unwrap();
        assert_eq!(opened.expose(), a_refresh.as_bytes());
        // Under B's context, or as another field, it does not open.
        assert!(
            state
                .cipher
                .decrypt(
                    &FieldContext::new(TOKEN_COLLECTION, &b_id, &field),
                    &sealed_refresh,
                )
                .is_err()
        );
        assert!(
            state
                .cipher
                .decrypt(
                    &FieldContext::new(
                        TOKEN_COLLECTION,
                        &a_id,
                        &format!("{}.access_token", flavor.name())
                    ),
                    &sealed_refresh,
                )
                .is_err()
        );
    });

    // Copied onto B's record (with B's access token expired, so that B's
    // refresh token is needed), it is refused, and nothing reaches the
    // provider with A's token.
    let mut forged = b_rec.clone();
    forged["refresh_token"] = Value::String(sealed_refresh.clone());
    forged["access_expires_at_ms"] = json!(0);
    env.write_token_record(&b_id, &forged);
    rt.block_on(async {
        let state = env.in_process().await;
        let r = state
            .oauth
            .tokens()
            .access_token(&b_id, flavor.provider())
            .await;
        assert!(matches!(r, Err(OAuthError::Cipher(_))), "{r:?}");
    });
    // A's own token still refreshes at the provider (it was never used).
    let mut expired = a_rec.clone();
    expired["access_expires_at_ms"] = json!(0);
    env.write_token_record(&a_id, &expired);
    rt.block_on(async {
        let state = env.in_process().await;
        let fresh = state
            .oauth
            .tokens()
            .access_token(&a_id, flavor.provider())
            .await
            .unwrap();
        let (issued, _) = env.mock.last_tokens(&env.client_id);
        assert_eq!(fresh.expose(), issued);
    });
}
both!(store_holds_no_plaintext: oauth_store_holds_no_plaintext_token_google, oauth_store_holds_no_plaintext_token_microsoft);

/// 15. Unlinking: allowed while a password remains (the link and the
///     provider's tokens go), refused for a provider-only account's only
///     provider.
fn unlink(flavor: Flavor) {
    let _g = shared();
    let Some(env) = Env::start(flavor) else {
        return;
    };
    let p = env.p();
    let signed_up = env.signup("both@example.com");
    let uid = user_id(&signed_up);
    let mut claims = json!({"sub": "sub-both", "email": "both@example.com"});
    merge(&mut claims, &flavor.verified());
    let tokens = env.login_ok(&claims);
    assert_eq!(user_id(&tokens), uid);
    assert!(env.token_record(&uid).is_some());
    let bearer = access(&tokens);
    let path = format!("/auth/oauth/{p}");
    let r = with_bearer(env.addr(), "DELETE", &path, &bearer);
    assert_eq!(r.status, 204, "{}", r.body);
    let me = env.me(&bearer).json();
    assert_eq!(providers(&me), Vec::<String>::new());
    assert!(env.token_record(&uid).is_none(), "the tokens went too");
    assert_eq!(env.link_count(), 0);
    let r = with_bearer(env.addr(), "DELETE", &path, &bearer);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.code(), "not_linked");
    // Without a token: 401.
    let r = raw_request(env.addr(), "DELETE", &path, &[], b"");
    assert_eq!(r.status, 401, "{}", r.body);

    // A provider-only account keeps its only way to sign in.
    let only = env.login_ok(&json!({"sub": "sub-only", "email": "only@example.com"}));
    let bearer = access(&only);
    let r = with_bearer(env.addr(), "DELETE", &path, &bearer);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.code(), "last_sign_in_method");
    let me = env.me(&bearer).json();
    assert_eq!(providers(&me), vec![p.to_owned()]);
    assert_eq!(me["has_password"], false);
    assert!(env.token_record(&user_id(&only)).is_some());
}
both!(unlink: oauth_unlink_google, oauth_unlink_microsoft);

/// 16. `ProviderTokens::access_token`: with the stored access token
///     expired, ten concurrent callers cause one refresh grant at the
///     provider, all get its new access token, and the rotated refresh
///     token is stored sealed; a later call uses the stored token.
fn access_token_single_flight(flavor: Flavor) {
    let _g = alone();
    let Some(mut env) = Env::start(flavor) else {
        return;
    };
    let tokens = env.login_ok(&json!({"sub": "sub-api", "email": "api@example.com"}));
    let uid = user_id(&tokens);
    let (_, first_refresh) = env.mock.last_tokens(&env.client_id);
    env.stop();
    let before = env.token_record(&uid).unwrap();
    let mut expired = before.clone();
    expired["access_expires_at_ms"] = json!(0);
    env.write_token_record(&uid, &expired);
    let status = |env: &Env| -> i64 {
        env.db()
            .query_row(
                "SELECT status FROM records WHERE ns = ?1 AND key = ?2",
                [TOKEN_NS, &token_key(&uid, flavor.provider())],
                |r| r.get(0),
            )
            .unwrap()
    };
    let status_before = status(&env);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let requests_before = env.mock.stat("token_requests");
    let got = rt.block_on(async {
        // Two instances over one store (two handles on the file, two
        // in-process gates), five callers each: still one refresh grant.
        let state = env.in_process().await;
        let other = env.in_process().await;
        let calls = (0..10).map(|i| {
            let tokens = if i % 2 == 0 {
                state.oauth.tokens().clone()
            } else {
                other.oauth.tokens().clone()
            };
            let uid = uid.clone();
            tokio::spawn(async move { tokens.access_token(&uid, flavor.provider()).await })
        });
        let got: Vec<String> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap().expose().to_owned())
            .collect();
        // Fresh now: no request.
        let again = state
            .oauth
            .tokens()
            .access_token(&uid, flavor.provider())
            .await
            .unwrap();
        assert_eq!(again.expose(), got[0]);
        got
    });
    assert_eq!(
        env.mock.stat("token_requests"),
        requests_before + 1,
        "one refresh grant for ten callers"
    );
    let (issued_access, issued_refresh) = env.mock.last_tokens(&env.client_id);
    assert!(got.iter().all(|t| *t == issued_access), "{got:?}");
    assert_ne!(issued_refresh, first_refresh, "the provider rotated it");

    let after = env.token_record(&uid).unwrap();
    assert!(status(&env) > status_before);
    let sealed = after["refresh_token"].as_str().unwrap();
    assert!(sealed.starts_with("av1:"), "{sealed}");
    assert_ne!(Some(sealed), before["refresh_token"].as_str());
    assert!(after["access_expires_at_ms"].as_i64().unwrap() > 0);
    for (_, value) in every_value(&env.db()) {
        assert!(!contains(&value, &issued_refresh));
        assert!(!contains(&value, &issued_access));
    }
    rt.block_on(async {
        let state = env.in_process().await;
        let field = format!("{}.refresh_token", flavor.name());
        let opened = state
            .cipher
            .decrypt(&FieldContext::new(TOKEN_COLLECTION, &uid, &field), sealed)
            .unwrap();
        assert_eq!(opened.expose(), issued_refresh.as_bytes());
    });
}
both!(access_token_single_flight: oauth_access_token_single_flight_google, oauth_access_token_single_flight_microsoft);
