//! Rate limits against the real binary over real sockets: the limit per
//! client address, shared by two processes on one store, client
//! addresses taken from `X-Forwarded-For` only through trusted proxies,
//! and the per-account login limit (which says nothing about which
//! accounts exist, and keeps no email in the store).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::{Response, Server, alvryn, raw_request, raw_request_from};

/// The window every test here uses: an hour.
const WINDOW_SECS: u64 = 3600;

/// Windows start at multiples of their length: a test that began in the
/// last seconds of one would see its counters start again. Waits for the
/// next window when that close to the end.
fn clear_of_window_end() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.as_secs() % WINDOW_SECS;
    if into > WINDOW_SECS - 30 {
        std::thread::sleep(Duration::from_secs(WINDOW_SECS - into + 1));
    }
}

fn server(data: &Path, env: &[(&str, &str)]) -> Server {
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", data);
    // Every hit counted: a synced write slower than the default bound
    // (a loaded machine) would let its request through uncounted.
    c.env("ALVRYN_RATE_LIMIT_STORE_TIMEOUT", "20s");
    for (k, v) in env {
        c.env(k, v);
    }
    Server::start(c)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `POST /auth/refresh` with a token that is no token: 401 while within
/// the limit, cheap for the server.
fn refresh(addr: SocketAddr, forwarded_for: Option<&str>) -> Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(xff) = forwarded_for {
        headers.push(("X-Forwarded-For", xff));
    }
    raw_request(
        addr,
        "POST",
        "/auth/refresh",
        &headers,
        br#"{"refresh_token":"not-a-token"}"#,
    )
}

fn assert_counted(r: &Response, remaining: u32) {
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.code(), "invalid_token");
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some(remaining.to_string().as_str())
    );
}

/// A 429 as documented: the JSON error, `Retry-After` a whole number of
/// seconds within the window, and the `RateLimit-*` headers.
fn assert_limited(r: &Response, limit: u32) {
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After is a number of seconds");
    assert!((1..=WINDOW_SECS).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("ratelimit-limit"),
        Some(limit.to_string().as_str())
    );
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("ratelimit-reset"),
        Some(retry.to_string().as_str())
    );
}

#[test]
fn the_limit_holds_per_ip_and_other_ips_and_groups_keep_their_own() {
    clear_of_window_end();
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[("ALVRYN_RATE_LIMIT_REFRESH", "3/1h")]);
    let a = s.addr;
    for remaining in [2, 1, 0] {
        assert_counted(&refresh(a, None), remaining);
    }
    let r = refresh(a, None);
    assert_limited(&r, 3);
    // Logout is in the same group.
    let r = raw_request(
        a,
        "POST",
        "/auth/logout",
        &[("Content-Type", "application/json")],
        br#"{"refresh_token":"not-a-token"}"#,
    );
    assert_limited(&r, 3);

    // Another address has a budget of its own.
    let other = raw_request_from(
        ip("127.0.0.2"),
        a,
        "POST",
        "/auth/refresh",
        &[("Content-Type", "application/json")],
        br#"{"refresh_token":"not-a-token"}"#,
    );
    assert_counted(&other, 2);

    // Other groups are untouched, and health checks are never limited.
    let exchange = support::post_json(a, "/auth/oauth/exchange", &json!({"code": "nope"}), None);
    assert_eq!(exchange.status, 400, "{}", exchange.body);
    assert_eq!(exchange.code(), "invalid_code");
    assert_eq!(exchange.header("ratelimit-limit"), Some("90"));
    for _ in 0..10 {
        let h = raw_request(a, "GET", "/healthz", &[], b"");
        assert_eq!(h.status, 200);
        assert_eq!(h.header("ratelimit-limit"), None);
    }
    // Routes behind an access token carry no limit of their own.
    let me = raw_request(a, "GET", "/auth/me", &[], b"");
    assert_eq!(me.status, 401);
    assert_eq!(me.header("ratelimit-limit"), None);
    // And the limited client is still limited.
    assert_limited(&refresh(a, None), 3);
}

#[test]
fn two_processes_on_one_store_share_one_limit() {
    clear_of_window_end();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("ALVRYN_RATE_LIMIT_REFRESH", "4/1h")];
    let (a, b) = (server(&data, &env), server(&data, &env));
    // Two from each, alternating: four in all.
    for (i, remaining) in [3, 2, 1, 0].into_iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        assert_counted(&refresh(s.addr, None), remaining);
    }
    // Each has seen only two, and each refuses the fifth.
    assert_limited(&refresh(a.addr, None), 4);
    assert_limited(&refresh(b.addr, None), 4);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_changes_nothing() {
    clear_of_window_end();
    // No trusted proxy, and a trusted range the peer is not in.
    for proxies in ["", "10.0.0.0/8"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(
            dir.path(),
            &[
                ("ALVRYN_RATE_LIMIT_REFRESH", "3/1h"),
                ("ALVRYN_TRUSTED_PROXIES", proxies),
            ],
        );
        for (xff, remaining) in [("203.0.113.1", 2), ("203.0.113.2", 1), ("10.0.0.1", 0)] {
            assert_counted(&refresh(s.addr, Some(xff)), remaining);
        }
        for xff in ["203.0.113.3", "198.51.100.1, 10.0.0.2", "garbage"] {
            assert_limited(&refresh(s.addr, Some(xff)), 3);
        }
        assert_limited(&refresh(s.addr, None), 3);
    }
}

#[test]
fn through_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
    clear_of_window_end();
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &[
            ("ALVRYN_RATE_LIMIT_REFRESH", "3/1h"),
            ("ALVRYN_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8"),
        ],
    );
    let a = s.addr;
    for remaining in [2, 1, 0] {
        assert_counted(&refresh(a, Some("203.0.113.1")), remaining);
    }
    assert_limited(&refresh(a, Some("203.0.113.1")), 3);
    // Another forwarded address is another client.
    assert_counted(&refresh(a, Some("203.0.113.2")), 2);
    // The same client behind a chain of trusted proxies, with a port,
    // and with an address it wrote itself to the left: still the client.
    for xff in [
        "203.0.113.1, 10.1.2.3",
        "203.0.113.1:51234",
        "198.51.100.77, 203.0.113.1",
        "198.51.100.77, 203.0.113.1, 10.9.9.9",
    ] {
        assert_limited(&refresh(a, Some(xff)), 3);
    }
    // The proxy itself (no header) is a client of its own.
    assert_counted(&refresh(a, None), 2);
    // IPv6 clients are counted by their /64.
    for (xff, remaining) in [
        ("2001:db8:1:2::1", 2),
        ("[2001:db8:1:2::2]:443", 1),
        ("2001:db8:1:2:ffff::3", 0),
    ] {
        assert_counted(&refresh(a, Some(xff)), remaining);
    }
    assert_limited(&refresh(a, Some("2001:db8:1:2::4")), 3);
    assert_counted(&refresh(a, Some("2001:db8:1:3::1")), 2);
}

fn login(addr: SocketAddr, from: &str, email: &str, password: &str) -> Response {
    raw_request(
        addr,
        "POST",
        "/auth/login",
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", from),
        ],
        json!({"email": email, "password": password})
            .to_string()
            .as_bytes(),
    )
}

fn header_names(r: &Response) -> Vec<String> {
    let mut names: Vec<String> = r
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| k != "date" && k != "content-length")
        .collect();
    names.sort();
    names
}

#[test]
fn logins_are_limited_per_account_from_any_address_and_unknown_emails_alike() {
    clear_of_window_end();
    const PW: &str = "correct horse battery staple";
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        &[
            ("ALVRYN_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("ALVRYN_RATE_LIMIT_LOGIN_ACCOUNT", "3/1h"),
        ],
    );
    let a = s.addr;
    for email in ["victim@example.com", "bystander@example.com"] {
        let r = support::post_json(
            a,
            "/auth/signup",
            &json!({"email": email, "password": PW}),
            None,
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // Three wrong guesses, each from another address.
    for i in 1..=3 {
        let r = login(
            a,
            &format!("203.0.113.{i}"),
            "victim@example.com",
            "wrong guess",
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // The fourth is refused from a fresh address, in any spelling of the
    // email, even with the right password: no password is checked.
    let known = login(a, "203.0.113.4", "  Victim@EXAMPLE.com ", PW);
    assert_limited(&known, 3);
    // Another account is unaffected.
    let r = login(a, "203.0.113.4", "bystander@example.com", PW);
    assert_eq!(r.status, 200, "{}", r.body);

    // An email no account has is limited the same way, with the same
    // answer: a 429 tells nothing about which accounts exist.
    for i in 5..=7 {
        let r = login(a, &format!("203.0.113.{i}"), "ghost@example.com", "guess");
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.code(), "invalid_credentials");
    }
    let unknown = login(a, "203.0.113.8", "ghost@example.com", "guess");
    assert_limited(&unknown, 3);
    assert_eq!(header_names(&unknown), header_names(&known));
    assert_eq!(unknown.code(), known.code());

    // The counters name accounts by a hash, never by the email.
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("alvryn.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let keys: Vec<String> = db
        .prepare("SELECT key FROM window_counters")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let accounts: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("rl:login_account:"))
        .collect();
    assert_eq!(accounts.len(), 3, "{keys:?}");
    for k in &keys {
        assert!(
            !k.contains('@') && !k.contains("victim") && !k.contains("ghost"),
            "{k}"
        );
    }
    // The per-IP login counters are the forwarded clients.
    assert!(keys.iter().any(|k| k == "rl:login:203.0.113.1"), "{keys:?}");
}
