//! Rate limits of the public endpoints, counted in the store so that
//! every instance sharing it shares the limit.
//!
//! Each route group ([`Group`]) has its own limit, a number of requests
//! per fixed window ([`Limit`], set by an `ALVRYN_RATE_LIMIT_*`
//! variable). A request of a limited group adds one to the counter of its
//! client (the address [`client_ip`] picks) in the store's
//! [`WindowCounters`]; windows start at multiples of their length since
//! the epoch, so every instance agrees on them. Past the limit the answer
//! is 429 `rate_limited` with `Retry-After` (seconds until the window
//! ends); limited answers carry `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset` (IETF draft `ratelimit-headers`).
//!
//! Logins are also counted per account ([`Group::LoginAccount`]): by the
//! SHA-256 of the normalized email, whether or not an account has it, so
//! the limit says nothing about which accounts exist and the store never
//! holds the email the counter is for.
//!
//! Failure modes:
//! - **the store fails or takes longer than its bound**
//!   ([`RateLimitSettings::store_timeout`], [`DEFAULT_STORE_TIMEOUT`]
//!   unless `ALVRYN_RATE_LIMIT_STORE_TIMEOUT` says otherwise; shorter
//!   than the request timeout, or that would answer first): the
//!   request goes through unlimited (fail open), a warning is logged at
//!   most once a minute with the number of checks skipped, and
//!   [`RateLimiter::store_failures`] counts them. A store that is down
//!   fails the routes themselves with 503 anyway; a limiter that failed
//!   closed would lock every client out with a misleading 429.
//! - **no peer address** (the app driven without a socket, or embedded
//!   behind a server that does not insert
//!   [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo)): per-IP
//!   limits do not apply (one shared "unknown" counter would let one
//!   client lock out everybody); a warning is logged once. The
//!   per-account login limit still applies. [`crate::serve_on`] always
//!   supplies the peer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alvryn_core::auth::{Clock, SystemClock, normalize_email};
use alvryn_core::store::WindowCounters;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::{IpNet, Ipv6Net};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// `RateLimit-Limit`: the requests a window allows.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: the requests left in the window.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: whole seconds until the window ends.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// Where proxies name the client ([`client_ip`]).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How long a counter update may take before the request goes through
/// unlimited, unless configured ([`RateLimitSettings::set_store_timeout`]).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// The range `ALVRYN_RATE_LIMIT_STORE_TIMEOUT` accepts: long enough for
/// one counter update, short enough that a slow store cannot hold a
/// request for long.
pub const STORE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_secs(30);

/// The most `X-Forwarded-For` entries looked at, from the right; a
/// longer chain of trusted proxies is counted as its last one looked at.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// The most ranges `ALVRYN_TRUSTED_PROXIES` may list.
pub const MAX_TRUSTED_RANGES: usize = 64;

/// The largest number of requests a limit may allow per window.
pub const MAX_REQUESTS: u32 = 1_000_000;

/// The longest window a limit may have.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// A group of routes sharing one limit per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Group {
    /// `POST /auth/signup`, per IP.
    Signup,
    /// `POST /auth/login`, per IP.
    Login,
    /// `POST /auth/login`, per account (normalized email).
    LoginAccount,
    /// `POST /auth/refresh` and `POST /auth/logout`, per IP.
    Refresh,
    /// `GET /auth/oauth/{provider}/start`, `.../callback` and
    /// `POST /auth/oauth/exchange`, per IP.
    OAuth,
    /// `/billing/*`, per IP.
    Billing,
    /// `POST /webhooks/stripe`, per IP; off by default.
    Webhook,
}

impl Group {
    /// Every group, in the order of the README's table.
    pub const ALL: [Group; 7] = [
        Group::Signup,
        Group::Login,
        Group::LoginAccount,
        Group::Refresh,
        Group::OAuth,
        Group::Billing,
        Group::Webhook,
    ];

    /// The group's name in counter keys.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Group::Signup => "signup",
            Group::Login => "login",
            Group::LoginAccount => "login_account",
            Group::Refresh => "refresh",
            Group::OAuth => "oauth",
            Group::Billing => "billing",
            Group::Webhook => "webhook",
        }
    }

    /// The variable that sets the group's limit.
    #[must_use]
    pub fn var(self) -> &'static str {
        match self {
            Group::Signup => "ALVRYN_RATE_LIMIT_SIGNUP",
            Group::Login => "ALVRYN_RATE_LIMIT_LOGIN",
            Group::LoginAccount => "ALVRYN_RATE_LIMIT_LOGIN_ACCOUNT",
            Group::Refresh => "ALVRYN_RATE_LIMIT_REFRESH",
            Group::OAuth => "ALVRYN_RATE_LIMIT_OAUTH",
            Group::Billing => "ALVRYN_RATE_LIMIT_BILLING",
            Group::Webhook => "ALVRYN_RATE_LIMIT_WEBHOOK",
        }
    }

    /// The limit without configuration; `None` is unlimited.
    #[must_use]
    pub fn default_limit(self) -> Option<Limit> {
        let min = |m: u64| Duration::from_secs(m * 60);
        let limit = |requests, window| Some(Limit { requests, window });
        match self {
            Group::Signup => limit(30, min(60)),
            Group::Login => limit(30, min(5)),
            Group::LoginAccount => limit(10, min(5)),
            Group::Refresh => limit(150, min(5)),
            // Three requests per sign-in: 30 sign-ins.
            Group::OAuth => limit(90, min(5)),
            Group::Billing => limit(100, min(5)),
            // Stripe delivers from many addresses in bursts, and an
            // unsigned delivery is refused before any store work: a
            // counter would cost more than what it protects.
            Group::Webhook => None,
        }
    }

    /// The per-IP group of a route, by its matched path (the operators'
    /// `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the routes
    /// that need an access token have none).
    #[must_use]
    pub fn of_route(path: &str) -> Option<Group> {
        Some(match path {
            "/auth/signup" => Group::Signup,
            "/auth/login" => Group::Login,
            "/auth/refresh" | "/auth/logout" => Group::Refresh,
            "/auth/oauth/{provider}/start"
            | "/auth/oauth/{provider}/callback"
            | "/auth/oauth/exchange" => Group::OAuth,
            "/webhooks/stripe" => Group::Webhook,
            p if p.starts_with("/billing/") => Group::Billing,
            _ => return None,
        })
    }
}

/// At most `requests` requests per fixed `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per window, 1 to [`MAX_REQUESTS`].
    pub requests: u32,
    /// The window: whole seconds, 1 s to [`MAX_WINDOW`].
    pub window: Duration,
}

impl Limit {
    /// Reads `off` (unlimited: `None`) or `REQUESTS/WINDOW`, the window in
    /// seconds or as a duration like `5m`, `1h`, `90s`.
    ///
    /// # Errors
    /// A message saying what is accepted (it never repeats the input).
    pub fn parse(text: &str) -> Result<Option<Limit>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || {
            format!(
                "must be off or REQUESTS/WINDOW like 30/5m: 1 to {MAX_REQUESTS} requests per \
                 a window of whole seconds from 1s to 24h"
            )
        };
        let (requests, window) = text.split_once('/').ok_or_else(bad)?;
        let requests = requests
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_REQUESTS).contains(n))
            .ok_or_else(bad)?;
        let window = crate::config::seconds_or_duration(window)
            .filter(|w| w.subsec_nanos() == 0 && *w >= Duration::from_secs(1) && *w <= MAX_WINDOW)
            .ok_or_else(bad)?;
        Ok(Some(Limit { requests, window }))
    }

    fn window_ms(self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {}",
            self.requests,
            humantime::format_duration(self.window)
        )
    }
}

/// The proxies whose `X-Forwarded-For` is believed
/// (`ALVRYN_TRUSTED_PROXIES`): address ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Reads a comma-separated list of ranges (`10.0.0.0/8`,
    /// `fd00::/8`) or single addresses.
    ///
    /// # Errors
    /// Every problem, one message each: an entry that is not an address
    /// or range, a range with host bits set, a range of every address
    /// (`/0`, which would believe anyone), more than
    /// [`MAX_TRUSTED_RANGES`] entries.
    pub fn parse(list: &str) -> Result<Self, Vec<String>> {
        let mut ranges = Vec::new();
        let mut problems = Vec::new();
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.len() > MAX_TRUSTED_RANGES {
            problems.push(format!(
                "lists {} ranges; at most {MAX_TRUSTED_RANGES}",
                entries.len()
            ));
        }
        for (i, entry) in entries.iter().enumerate() {
            let n = i + 1;
            let net = entry
                .parse::<IpNet>()
                .ok()
                .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                None => problems.push(format!(
                    "entry {n} is not an address or a range like 10.0.0.0/8 or fd00::/8"
                )),
                Some(net) if net.prefix_len() == 0 => problems.push(format!(
                    "entry {n} is every address: X-Forwarded-For would be believed from anyone; \
                     list your proxies' ranges"
                )),
                Some(net) if net.trunc() != net => problems.push(format!(
                    "entry {n} has host bits set; the range is {}",
                    net.trunc()
                )),
                Some(net) => ranges.push(net),
            }
        }
        if problems.is_empty() {
            Ok(Self(ranges))
        } else {
            Err(problems)
        }
    }

    /// Whether `ip` is in one of the ranges (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// No proxy is trusted: `X-Forwarded-For` is ignored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges.
    #[must_use]
    pub fn ranges(&self) -> &[IpNet] {
        &self.0
    }
}

/// Every rate-limit setting: the trusted proxies and each group's limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    store_timeout: Duration,
    limits: [Option<Limit>; Group::ALL.len()],
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::default(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            limits: Group::ALL.map(Group::default_limit),
        }
    }
}

impl RateLimitSettings {
    /// `Group::ALL` lists the groups in declaration order.
    fn index(group: Group) -> usize {
        group as usize
    }

    /// How long a counter update may take before the request goes
    /// through unlimited ([`DEFAULT_STORE_TIMEOUT`] unless set).
    #[must_use]
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Sets [`Self::store_timeout`], brought into
    /// [`STORE_TIMEOUT_RANGE`]. Keep it below the request timeout: past
    /// that the request fails with `timeout` instead of going through.
    pub fn set_store_timeout(&mut self, timeout: Duration) {
        self.store_timeout =
            timeout.clamp(*STORE_TIMEOUT_RANGE.start(), *STORE_TIMEOUT_RANGE.end());
    }

    /// The group's limit; `None` is unlimited.
    #[must_use]
    pub fn limit(&self, group: Group) -> Option<Limit> {
        self.limits[Self::index(group)]
    }

    /// Sets the group's limit; `None` is unlimited.
    pub fn set(&mut self, group: Group, limit: Option<Limit>) {
        self.limits[Self::index(group)] = limit;
    }
}

/// The address in one `X-Forwarded-For` entry: an IPv4 or IPv6 address,
/// with or without a port (`1.2.3.4:80`, `[::1]:443`, `[::1]`).
fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches(|c| c == ' ' || c == '\t');
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
        .map(|ip| ip.to_canonical())
}

/// The address a request is counted under.
///
/// A peer outside the trusted ranges is the client: its
/// `X-Forwarded-For` is ignored, whatever it says. From a trusted peer,
/// `X-Forwarded-For` (every such header, in order, as one list) is
/// walked from the right, past addresses inside the trusted ranges; the
/// first address outside them is the client. An entry that is not an
/// address, or a walk longer than [`MAX_FORWARDED_HOPS`], stops it: the
/// client is then the last trusted hop reached (never something the
/// client could have written itself), as it is when every entry is
/// trusted or there is none.
#[must_use]
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut last_trusted = peer;
    let mut hops = 0;
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return last_trusted;
        };
        for entry in value.rsplit(',') {
            hops += 1;
            if hops > MAX_FORWARDED_HOPS {
                return last_trusted;
            }
            if entry.trim().is_empty() {
                continue;
            }
            match forwarded_entry(entry) {
                None => return last_trusted,
                Some(ip) if trusted.contains(ip) => last_trusted = ip,
                Some(ip) => return ip,
            }
        }
    }
    last_trusted
}

/// How an address is named in a counter key: an IPv4 address as it is,
/// an IPv6 address by its /64 (one subscriber's usual allocation, so a
/// client cannot take a fresh budget from each of its addresses).
#[must_use]
pub fn ip_subject(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match Ipv6Net::new(v6, 64) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => v6.to_string(),
        },
    }
}

/// How an email is named in a counter key: the first 128 bits of the
/// SHA-256 of its normalized form (of its trimmed, lower-cased form when
/// it is not a valid address), in hex. Never the email itself.
#[must_use]
pub fn account_subject(email: &str) -> String {
    let normalized = normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    let digest = Sha256::digest(normalized.as_bytes());
    hex::encode(&digest[..16])
}

/// A counter's standing after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The limit's requests per window.
    pub limit: u32,
    /// Requests left in this window.
    pub remaining: u32,
    /// Whole seconds until the window ends (at least 1).
    pub reset_secs: u64,
}

impl Quota {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset`, unless a response already has them (the
    /// per-account login limit's refusal carries its own).
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if headers.contains_key(RATELIMIT_LIMIT) {
            return;
        }
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(self.reset_secs));
    }

    /// The 429 answer: `rate_limited`, `Retry-After` and the
    /// `RateLimit-*` headers.
    #[must_use]
    pub fn refusal(&self) -> Response {
        let secs = u32::try_from(self.reset_secs).unwrap_or(u32::MAX);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; try again in {secs} seconds"),
        )
        .retry_after(secs)
        .into_response();
        self.add_headers(resp.headers_mut());
        resp
    }
}

/// What the limiter decided about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No limit applies (the group is off, there is no peer address, or
    /// the store failed).
    Unlimited,
    /// Within the limit.
    Allowed(Quota),
    /// Over the limit: answer [`Quota::refusal`].
    Limited(Quota),
}

/// Counts requests in the store's window counters; see the module docs.
pub struct RateLimiter {
    counters: Arc<dyn WindowCounters>,
    settings: RateLimitSettings,
    clock: Arc<dyn Clock>,
    store_failures: AtomicU64,
    failure_log: Mutex<FailureLog>,
    warned_no_peer: AtomicBool,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("settings", &self.settings)
            .field("store_failures", &self.store_failures())
            .finish_non_exhaustive()
    }
}

/// Logs store failures at most once a minute, with how many.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    skipped: u64,
}

impl RateLimiter {
    /// A limiter counting in `counters` (the store every instance
    /// shares) with the system clock.
    #[must_use]
    pub fn new(counters: Arc<dyn WindowCounters>, settings: RateLimitSettings) -> Self {
        Self {
            counters,
            settings,
            clock: Arc::new(SystemClock),
            store_failures: AtomicU64::new(0),
            failure_log: Mutex::new(FailureLog::default()),
            warned_no_peer: AtomicBool::new(false),
        }
    }

    /// Uses `clock` instead of the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// How many checks the store failed (or was too slow for) since
    /// start-up: each let its request through unlimited.
    #[must_use]
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    /// Counts one request of `group` by `subject` (an [`ip_subject`] or
    /// an [`account_subject`]).
    pub async fn hit(&self, group: Group, subject: &str) -> Verdict {
        let Some(limit) = self.settings.limit(group) else {
            return Verdict::Unlimited;
        };
        let key = format!("rl:{}:{subject}", group.name());
        let now_ms = self.clock.now_ms();
        let counted = tokio::time::timeout(
            self.settings.store_timeout,
            self.counters.hit(&key, limit.window_ms(), now_ms),
        )
        .await;
        let count = match counted {
            Ok(Ok(count)) => count,
            Ok(Err(e)) => {
                self.store_failed(&e);
                return Verdict::Unlimited;
            }
            Err(_) => {
                self.store_failed(&"no answer within the rate limiter's timeout");
                return Verdict::Unlimited;
            }
        };
        let left_ms = u64::try_from(count.resets_at_ms.saturating_sub(now_ms)).unwrap_or(0);
        let quota = Quota {
            limit: limit.requests,
            remaining: u32::try_from(u64::from(limit.requests).saturating_sub(count.count))
                .unwrap_or(0),
            reset_secs: left_ms
                .div_ceil(1000)
                .clamp(1, limit.window.as_secs().max(1)),
        };
        if count.count > u64::from(limit.requests) {
            Verdict::Limited(quota)
        } else {
            Verdict::Allowed(quota)
        }
    }

    /// Counts one request of `group` by its client (see [`client_ip`]);
    /// without a peer address, [`Verdict::Unlimited`].
    pub async fn client(&self, group: Group, peer: Option<IpAddr>, headers: &HeaderMap) -> Verdict {
        if self.settings.limit(group).is_none() {
            return Verdict::Unlimited;
        }
        let Some(peer) = peer else {
            if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a request arrived without its peer address (no ConnectInfo): \
                     per-IP rate limits do not apply to such requests"
                );
            }
            return Verdict::Unlimited;
        };
        let ip = client_ip(peer, headers, &self.settings.trusted_proxies);
        self.hit(group, &ip_subject(ip)).await
    }

    /// Counts one login attempt for `email`, whether or not an account
    /// has it.
    pub async fn login_account(&self, email: &str) -> Verdict {
        if self.settings.limit(Group::LoginAccount).is_none() {
            return Verdict::Unlimited;
        }
        self.hit(Group::LoginAccount, &account_subject(email)).await
    }

    fn store_failed(&self, error: &dyn fmt::Display) {
        let total = self.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut log) = self.failure_log.lock() else {
            return;
        };
        log.skipped += 1;
        if log
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                error = %error,
                skipped = log.skipped,
                total,
                "the rate-limit store failed; requests go through unlimited"
            );
            log.last = Some(Instant::now());
            log.skipped = 0;
        }
    }
}

/// Middleware (a route layer of [`crate::routes::router`], which takes
/// the limiter, so a router cannot be built without its limits): counts
/// each request of a limited group by its client and answers 429 past
/// the limit. The peer comes from [`ConnectInfo<SocketAddr>`] (which
/// [`crate::serve_on`] inserts).
pub async fn by_client_ip(
    State(limiter): State<Arc<RateLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    let group = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| Group::of_route(p.as_str()));
    let Some(group) = group else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match limiter.client(group, peer, req.headers()).await {
        Verdict::Limited(quota) => quota.refusal(),
        Verdict::Allowed(quota) => {
            let mut resp = next.run(req).await;
            quota.add_headers(resp.headers_mut());
            resp
        }
        Verdict::Unlimited => next.run(req).await,
    }
}

#[cfg(test)]
mod tests;
