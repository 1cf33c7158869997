#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicI64;

use alvryn_core::store::{MemoryStore, StoreError, WindowCount};

use super::*;

fn trusted(list: &str) -> TrustedProxies {
    TrustedProxies::parse(list).unwrap()
}

fn xff(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
    }
    h
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The client of a request from `peer` with one `X-Forwarded-For`.
fn client(peer: &str, header: &str, proxies: &str) -> IpAddr {
    client_ip(ip(peer), &xff(&[header.as_bytes()]), &trusted(proxies))
}

#[test]
fn an_untrusted_peer_is_the_client_whatever_its_header_says() {
    assert_eq!(client("198.51.100.9", "1.2.3.4", ""), ip("198.51.100.9"));
    assert_eq!(
        client("198.51.100.9", "1.2.3.4", "10.0.0.0/8"),
        ip("198.51.100.9")
    );
    assert_eq!(
        client_ip(ip("198.51.100.9"), &HeaderMap::new(), &trusted("")),
        ip("198.51.100.9")
    );
}

#[test]
fn from_a_trusted_peer_the_rightmost_untrusted_entry_is_the_client() {
    let proxies = "10.0.0.0/8, 127.0.0.1";
    assert_eq!(
        client("10.0.0.1", "203.0.113.5", proxies),
        ip("203.0.113.5")
    );
    // Whatever the client wrote itself sits to the left: never believed.
    assert_eq!(
        client("10.0.0.1", "6.6.6.6, 203.0.113.5", proxies),
        ip("203.0.113.5")
    );
    // A chain of trusted proxies is walked past.
    assert_eq!(
        client(
            "127.0.0.1",
            "6.6.6.6, 203.0.113.5, 10.1.2.3, 10.9.9.9",
            proxies
        ),
        ip("203.0.113.5")
    );
    // Every entry trusted, or no header: the last trusted hop reached.
    assert_eq!(
        client("10.0.0.1", "10.2.2.2, 10.3.3.3", proxies),
        ip("10.2.2.2")
    );
    assert_eq!(
        client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted(proxies)),
        ip("10.0.0.1")
    );
}

#[test]
fn entries_may_carry_ports_brackets_spaces_and_ipv6() {
    let p = "10.0.0.0/8";
    assert_eq!(client("10.0.0.1", "203.0.113.5:4711", p), ip("203.0.113.5"));
    assert_eq!(client("10.0.0.1", "2001:db8::7", p), ip("2001:db8::7"));
    assert_eq!(client("10.0.0.1", "[2001:db8::7]", p), ip("2001:db8::7"));
    assert_eq!(
        client("10.0.0.1", "[2001:db8::7]:443", p),
        ip("2001:db8::7")
    );
    assert_eq!(
        client("10.0.0.1", " \t203.0.113.5 ,\t10.4.4.4  ", p),
        ip("203.0.113.5")
    );
    // Empty list elements are ignored (RFC 9110 §5.6.1).
    assert_eq!(client("10.0.0.1", "203.0.113.5,, ,", p), ip("203.0.113.5"));
    // An IPv4-mapped IPv6 address is its IPv4 address, as peer and entry.
    assert_eq!(
        client("::ffff:10.0.0.1", "::ffff:203.0.113.5", p),
        ip("203.0.113.5")
    );
    // A trusted IPv6 range.
    assert_eq!(
        client("fd00::1", "2001:db8::9, fd00::2", "fd00::/8"),
        ip("2001:db8::9")
    );
}

#[test]
fn garbage_stops_the_walk_at_the_last_trusted_hop() {
    let p = "10.0.0.0/8";
    for garbage in [
        "unknown",
        "_hidden",
        "203.0.113.5.6",
        "2001:db8::7%eth0",
        "[2001:db8::7",
        "203.0.113.5:port",
        "999.1.1.1",
        "\"203.0.113.5\"",
    ] {
        assert_eq!(
            client("10.0.0.1", &format!("203.0.113.5, {garbage}"), p),
            ip("10.0.0.1"),
            "{garbage:?}"
        );
        assert_eq!(
            client("10.0.0.1", &format!("{garbage}, 10.7.7.7"), p),
            ip("10.7.7.7"),
            "{garbage:?}"
        );
    }
    // A value that is not text.
    assert_eq!(
        client_ip(
            ip("10.0.0.1"),
            &xff(&[b"203.0.113.5", b"\xff\xfe"]),
            &trusted(p)
        ),
        ip("10.0.0.1")
    );
}

#[test]
fn several_headers_are_one_list_in_order() {
    let h = xff(&[b"6.6.6.6", b"203.0.113.5, 10.1.1.1"]);
    assert_eq!(
        client_ip(ip("10.0.0.1"), &h, &trusted("10.0.0.0/8")),
        ip("203.0.113.5")
    );
    let h = xff(&[b"203.0.113.5", b"10.1.1.1"]);
    assert_eq!(
        client_ip(ip("10.0.0.1"), &h, &trusted("10.0.0.0/8")),
        ip("203.0.113.5")
    );
}

#[test]
fn a_walk_is_capped_at_max_forwarded_hops() {
    let p = "10.0.0.0/8";
    // The client just within the cap is found.
    let mut entries: Vec<String> = vec!["203.0.113.5".into()];
    entries.extend((1..MAX_FORWARDED_HOPS).map(|i| format!("10.0.0.{i}")));
    assert_eq!(client("10.0.0.1", &entries.join(","), p), ip("203.0.113.5"));
    // One trusted hop more and the walk stops at the last one it read.
    let mut entries: Vec<String> = vec!["203.0.113.5".into()];
    entries.extend((1..=MAX_FORWARDED_HOPS).map(|i| format!("10.0.0.{i}")));
    assert_eq!(client("10.0.0.1", &entries.join(","), p), ip("10.0.0.1"));
    // Thousands of entries cost no more than the cap.
    let long = vec!["10.9.9.9"; 5000].join(",");
    assert_eq!(client("10.0.0.1", &long, p), ip("10.9.9.9"));
}

#[test]
fn ipv6_clients_are_counted_by_their_64() {
    assert_eq!(ip_subject(ip("203.0.113.5")), "203.0.113.5");
    assert_eq!(ip_subject(ip("::ffff:203.0.113.5")), "203.0.113.5");
    assert_eq!(
        ip_subject(ip("2001:db8:1:2:aaaa::1")),
        ip_subject(ip("2001:db8:1:2:bbbb::9"))
    );
    assert_eq!(ip_subject(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
    assert_ne!(
        ip_subject(ip("2001:db8:1:2::1")),
        ip_subject(ip("2001:db8:1:3::1"))
    );
}

#[test]
fn accounts_are_counted_by_a_hash_of_the_normalized_email() {
    let a = account_subject("alice@example.com");
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!a.contains("alice"));
    assert_eq!(account_subject("  Alice@EXAMPLE.com "), a);
    assert_eq!(
        account_subject("alice@xn--bcher-kva.example"),
        account_subject("alice@bücher.example")
    );
    assert_ne!(account_subject("bob@example.com"), a);
    // Not an address: still counted, by its own hash.
    assert_eq!(
        account_subject(" Not An Email "),
        account_subject("not an email")
    );
    assert_ne!(account_subject("not an email"), a);
}

#[test]
fn limits_parse_and_refuse_what_is_not_one() {
    let l = |r, s| {
        Some(Limit {
            requests: r,
            window: Duration::from_secs(s),
        })
    };
    assert_eq!(Limit::parse("30/5m").unwrap(), l(30, 300));
    assert_eq!(Limit::parse(" 150 / 300 ").unwrap(), l(150, 300));
    assert_eq!(Limit::parse("1/1s").unwrap(), l(1, 1));
    assert_eq!(Limit::parse("10/1h 30m").unwrap(), l(10, 5400));
    assert_eq!(Limit::parse("1000000/24h").unwrap(), l(1_000_000, 86_400));
    assert_eq!(Limit::parse("OFF").unwrap(), None);
    for bad in [
        "",
        "30",
        "0/5m",
        "-1/5m",
        "1000001/5m",
        "30/0",
        "30/0s",
        "30/1500ms",
        "30/25h",
        "30/5 fortnights",
        "x/5m",
        "30/5m/2",
        "on",
    ] {
        let err = Limit::parse(bad).expect_err(bad);
        assert!(err.contains("30/5m"), "{bad:?}: {err}");
    }
    assert_eq!(l(30, 300).unwrap().to_string(), "30 per 5m");
}

#[test]
fn trusted_proxies_parse_and_report_every_problem() {
    let t = trusted(" 10.0.0.0/8 ,127.0.0.1, fd00::/8,,2001:db8::1 ");
    assert_eq!(t.ranges().len(), 4);
    assert!(t.contains(ip("10.200.0.1")));
    assert!(t.contains(ip("127.0.0.1")));
    assert!(!t.contains(ip("127.0.0.2")));
    assert!(t.contains(ip("::ffff:10.0.0.5")));
    assert!(t.contains(ip("fd12::1")));
    assert!(!t.contains(ip("2001:db8::2")));
    assert!(TrustedProxies::parse("").unwrap().is_empty());

    let problems = TrustedProxies::parse("10.0.0.1/8, banana, 0.0.0.0/0, ::/0, 10.0.0.0/33")
        .expect_err("bad list");
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert!(problems[0].contains("entry 1") && problems[0].contains("10.0.0.0/8"));
    assert!(problems[1].contains("entry 2") && !problems[1].contains("banana"));
    assert!(problems[2].contains("every address"));
    assert!(problems[3].contains("every address"));
    assert!(problems[4].contains("entry 5"));
    let many = vec!["10.0.0.1"; MAX_TRUSTED_RANGES + 1].join(",");
    assert!(TrustedProxies::parse(&many).unwrap_err()[0].contains("at most"));
}

#[test]
fn routes_belong_to_their_groups_and_health_checks_to_none() {
    let cases = [
        ("/auth/signup", Some(Group::Signup)),
        ("/auth/login", Some(Group::Login)),
        ("/auth/refresh", Some(Group::Refresh)),
        ("/auth/logout", Some(Group::Refresh)),
        ("/auth/oauth/{provider}/start", Some(Group::OAuth)),
        ("/auth/oauth/{provider}/callback", Some(Group::OAuth)),
        ("/auth/oauth/exchange", Some(Group::OAuth)),
        ("/billing/checkout", Some(Group::Billing)),
        ("/billing/portal", Some(Group::Billing)),
        ("/billing/subscription", Some(Group::Billing)),
        ("/webhooks/stripe", Some(Group::Webhook)),
        ("/healthz", None),
        ("/readyz", None),
        ("/metrics", None),
        // Served next to the documented routes, not among them.
        ("/openapi.json", None),
        ("/auth/me", None),
        ("/auth/sessions", None),
        ("/auth/sessions/{id}", None),
        ("/auth/logout-all", None),
        ("/auth/oauth/{provider}", None),
    ];
    for (path, group) in cases {
        assert_eq!(Group::of_route(path), group, "{path}");
    }
    // Every route the API serves is among them: a new route has to say
    // whether it is limited, and which group's budget it spends.
    let (_, api) = crate::routes::documented().split_for_parts();
    let served: Vec<&String> = api.paths.paths.keys().collect();
    for path in &served {
        assert!(
            cases.iter().any(|(p, _)| p == path),
            "{path} is served but not classified here"
        );
    }
    // And none of them is a route that no longer exists.
    for (path, _) in cases {
        assert!(
            path == "/openapi.json" || served.iter().any(|s| *s == path),
            "{path} is classified but not served"
        );
    }
    // Every group has its own slot, variable and counter name.
    for (i, g) in Group::ALL.iter().enumerate() {
        assert_eq!(*g as usize, i, "{g:?}");
    }
    let vars: std::collections::HashSet<_> = Group::ALL.iter().map(|g| g.var()).collect();
    let names: std::collections::HashSet<_> = Group::ALL.iter().map(|g| g.name()).collect();
    assert_eq!(vars.len(), Group::ALL.len());
    assert_eq!(names.len(), Group::ALL.len());
}

/// A clock the test moves.
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn limiter(
    store: Arc<dyn WindowCounters>,
    group: Group,
    limit: &str,
) -> (RateLimiter, Arc<TestClock>) {
    let mut settings = RateLimitSettings::default();
    settings.set(group, Limit::parse(limit).unwrap());
    // 10 s into a 60 s window.
    let clock = Arc::new(TestClock(AtomicI64::new(1_800_000_010_000)));
    (
        RateLimiter::new(store, settings).with_clock(clock.clone()),
        clock,
    )
}

#[tokio::test]
async fn the_limit_allows_n_then_refuses_until_the_window_ends() {
    let (l, clock) = limiter(Arc::new(MemoryStore::new()), Group::Refresh, "3/1m");
    for remaining in [2, 1, 0] {
        assert_eq!(
            l.hit(Group::Refresh, "203.0.113.5").await,
            Verdict::Allowed(Quota {
                limit: 3,
                remaining,
                reset_secs: 50
            })
        );
    }
    assert_eq!(
        l.hit(Group::Refresh, "203.0.113.5").await,
        Verdict::Limited(Quota {
            limit: 3,
            remaining: 0,
            reset_secs: 50
        })
    );
    // Another subject and another group have budgets of their own.
    assert!(matches!(
        l.hit(Group::Refresh, "203.0.113.6").await,
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        l.hit(Group::Login, "203.0.113.5").await,
        Verdict::Allowed(_)
    ));
    // 0.5 s before the end, the wait rounds up to a whole second.
    clock.0.store(1_800_000_059_500, Ordering::SeqCst);
    let Verdict::Limited(q) = l.hit(Group::Refresh, "203.0.113.5").await else {
        panic!("not limited");
    };
    assert_eq!(q.reset_secs, 1);
    // The next window starts afresh.
    clock.0.store(1_800_000_060_000, Ordering::SeqCst);
    assert_eq!(
        l.hit(Group::Refresh, "203.0.113.5").await,
        Verdict::Allowed(Quota {
            limit: 3,
            remaining: 2,
            reset_secs: 60
        })
    );
}

#[tokio::test]
async fn a_group_that_is_off_counts_nothing() {
    let (l, _) = limiter(Arc::new(MemoryStore::new()), Group::Refresh, "off");
    for _ in 0..5 {
        assert_eq!(l.hit(Group::Refresh, "x").await, Verdict::Unlimited);
    }
    assert_eq!(
        l.client(Group::Refresh, Some(ip("203.0.113.5")), &HeaderMap::new())
            .await,
        Verdict::Unlimited
    );
}

#[tokio::test]
async fn without_a_peer_the_ip_limit_does_not_apply() {
    let (l, _) = limiter(Arc::new(MemoryStore::new()), Group::Refresh, "1/1m");
    for _ in 0..3 {
        assert_eq!(
            l.client(Group::Refresh, None, &xff(&[b"203.0.113.5"]))
                .await,
            Verdict::Unlimited
        );
    }
    let peer = Some(ip("203.0.113.5"));
    assert!(matches!(
        l.client(Group::Refresh, peer, &HeaderMap::new()).await,
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        l.client(Group::Refresh, peer, &HeaderMap::new()).await,
        Verdict::Limited(_)
    ));
}

/// A store that is down.
struct Down;

#[async_trait::async_trait]
impl WindowCounters for Down {
    async fn hit(&self, _: &str, _: i64, _: i64) -> Result<WindowCount, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

/// A store that never answers.
struct Stuck;

#[async_trait::async_trait]
impl WindowCounters for Stuck {
    async fn hit(&self, _: &str, _: i64, _: i64) -> Result<WindowCount, StoreError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_failing_store_lets_requests_through_and_counts_the_failures() {
    let (l, _) = limiter(Arc::new(Down), Group::Refresh, "1/1m");
    for _ in 0..3 {
        assert_eq!(
            l.hit(Group::Refresh, "203.0.113.5").await,
            Verdict::Unlimited
        );
    }
    assert_eq!(l.store_failures(), 3);
}

#[tokio::test]
async fn a_store_that_does_not_answer_lets_requests_through_after_the_timeout() {
    let (l, _) = limiter(Arc::new(Stuck), Group::Refresh, "1/1m");
    assert_eq!(
        l.hit(Group::Refresh, "203.0.113.5").await,
        Verdict::Unlimited
    );
    assert_eq!(l.store_failures(), 1);
}

/// Answers as a memory store does, two seconds late.
struct Slow(MemoryStore);

#[async_trait::async_trait]
impl WindowCounters for Slow {
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.0.hit(key, window_ms, now_ms).await
    }
}

/// The bound is the setting's: a 2 s answer is too slow for the default
/// second, in time for a bound of 5 s.
#[tokio::test(start_paused = true)]
async fn the_store_timeout_is_the_configured_one() {
    let (default, _) = limiter(Arc::new(Slow(MemoryStore::new())), Group::Refresh, "3/1m");
    assert_eq!(default.settings().store_timeout(), DEFAULT_STORE_TIMEOUT);
    assert_eq!(
        default.hit(Group::Refresh, "203.0.113.5").await,
        Verdict::Unlimited
    );
    assert_eq!(default.store_failures(), 1);

    let mut settings = RateLimitSettings::default();
    settings.set(Group::Refresh, Limit::parse("3/1m").unwrap());
    settings.set_store_timeout(Duration::from_secs(5));
    let patient = RateLimiter::new(Arc::new(Slow(MemoryStore::new())), settings);
    assert!(matches!(
        patient.hit(Group::Refresh, "203.0.113.5").await,
        Verdict::Allowed(Quota { remaining: 2, .. })
    ));
    assert_eq!(patient.store_failures(), 0);

    // Outside the range: brought back into it.
    for (asked, got) in [
        (Duration::ZERO, *STORE_TIMEOUT_RANGE.start()),
        (Duration::from_secs(3600), *STORE_TIMEOUT_RANGE.end()),
    ] {
        let mut settings = RateLimitSettings::default();
        settings.set_store_timeout(asked);
        assert_eq!(settings.store_timeout(), got);
    }
}

#[test]
fn a_refusal_is_429_with_retry_after_and_the_ratelimit_headers() {
    let q = Quota {
        limit: 3,
        remaining: 0,
        reset_secs: 42,
    };
    let resp = q.refusal();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = resp.headers();
    assert_eq!(h["retry-after"], "42");
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "42");
    // A response that has them keeps its own.
    let mut headers = resp.headers().clone();
    Quota {
        limit: 30,
        remaining: 29,
        reset_secs: 300,
    }
    .add_headers(&mut headers);
    assert_eq!(headers["ratelimit-limit"], "3");
}
