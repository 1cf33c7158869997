//! The store contract: every [`StoreBackend`] must pass every case.
//!
//! # Backends
//!
//! | name | what |
//! |---|---|
//! | `memory` | [`MemoryStore`], the reference semantics |
//! | `sqlite` | [`SqliteStore`] on a real file in a temp folder |
//! | `sqlite_two_handles` | two `SqliteStore::open` on one file, each request sent to them in turn by a test-local tower [`RoundRobin`] and used back through [`ServiceStore`]: every concurrent step of a case races across two writer threads |
//! | `sqlite_via_tower` | [`StoreService`] under `concurrency_limit(8)` and `timeout(10s)`, back through [`ServiceStore`]: the layered stack keeps every promise of the plain store |
//! | `mongo_standin` | `MongoStore` on the protocol-compatible stand-in (secantusdb) that `scripts/test` starts, at `ALVRYN_TEST_MONGO_STANDIN_URI` |
//! | `mongo_real` | `MongoStore` on a real MongoDB, whenever `ALVRYN_TEST_MONGODB_URI` is set |
//!
//! Each trial (one case on one backend, named `backend::case`) builds its
//! own multi-thread runtime (4 workers) and a fresh backend: a new file,
//! or a new random Mongo database (`contract_<hex>`, dropped at the end).
//! Fixture times come from the real clock, read once per trial; the
//! `Auth` cases drive a manual clock that starts at that real time. No
//! case asserts how long anything takes.
//!
//! The `sqlite_two_processes::*` trials start two copies of this binary
//! (`ALVRYN_CONTRACT_CHILD=<op>`, see [`child_main`]) on one SQLite file,
//! each making 25 concurrent attempts, and check the combined outcome:
//! the guarantees hold across processes, not only across threads.
//!
//! The cases cover the stores directly (compare-and-swap, uniqueness,
//! expiry, fencing, the ledger, damaged records) and the `Auth` service on
//! top of them (50 concurrent refreshes, reuse detection), since races are
//! properties of the backend.
//!
//! # Skip policy
//!
//! A backend whose service is absent is never reported as passed:
//!
//! * its trials are marked *ignored*, so the summary counts them as
//!   ignored, and one line on stdout says which variable is missing;
//! * when `ALVRYN_TEST_REQUIRE_SERVICES` is set (to anything but `0`,
//!   as `scripts/test` does), a missing stand-in makes each of its trials
//!   **fail** with a message naming the variable. A real MongoDB is
//!   optional even then: `mongo_real` is only ignored.
//!
//! A service that is configured but cannot be reached (one `ping` when the
//! binary starts) fails all its trials at once, REQUIRE or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alvryn_core::auth::{
    AUDIT_REFRESH_GRACE, AUDIT_REFRESH_REUSED, Auth, AuthError, Clock, HashParams, PasswordHasher,
};
use alvryn_core::billing::PlanName;
use alvryn_core::crypto::{KeyFingerprint, LedgerError, UsageLedger};
use alvryn_core::secret::{SecretBytes, SecretString};
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::store::{
    Advance, AuditEvent, CasOutcome, Lease, MemoryStore, NewLease, OneTimeItem, Purged, Record,
    RecordCursor, RecordFilter, RefreshFamily, RefreshSlot, Revocation, RevokeReason, Rotation,
    ServiceStore, StatusRange, StoreBackend, StoreError, StoreService, TokenHash, TokenStore, User,
    Versioned,
};
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings, TokenKind};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

// ------------------------------------------------------------ services

/// Set (to anything but `0`) to make a missing stand-in fail its trials.
const REQUIRE_VAR: &str = "ALVRYN_TEST_REQUIRE_SERVICES";
/// The MongoDB stand-in `scripts/test` starts.
const STANDIN_VAR: &str = "ALVRYN_TEST_MONGO_STANDIN_URI";
/// A real MongoDB, optional everywhere.
const MONGODB_VAR: &str = "ALVRYN_TEST_MONGODB_URI";

fn require_services() -> bool {
    std::env::var_os(REQUIRE_VAR).is_some_and(|v| v != "0")
}

fn env_uri(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// The backends of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Sqlite,
    SqliteTwoHandles,
    SqliteViaTower,
    MongoStandin,
    MongoReal,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Memory,
        Kind::Sqlite,
        Kind::SqliteTwoHandles,
        Kind::SqliteViaTower,
        Kind::MongoStandin,
        Kind::MongoReal,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::SqliteTwoHandles => "sqlite_two_handles",
            Kind::SqliteViaTower => "sqlite_via_tower",
            Kind::MongoStandin => "mongo_standin",
            Kind::MongoReal => "mongo_real",
        }
    }

    /// Whether the test can reach the backend's storage with its raw
    /// driver (to write damaged records).
    fn has_raw_driver(self) -> bool {
        matches!(self, Kind::Sqlite | Kind::MongoStandin | Kind::MongoReal)
    }

    /// Whether the backend's service is here, and what to do otherwise.
    /// With `probe`, a configured service is pinged once first: one that
    /// cannot be reached fails every trial at once, instead of each trial
    /// waiting out the driver's server-selection timeout.
    fn availability(self, probe: bool) -> Availability {
        let (var, required) = match self {
            Kind::Memory | Kind::Sqlite | Kind::SqliteTwoHandles | Kind::SqliteViaTower => {
                return Availability::Ready(None);
            }
            Kind::MongoStandin => (STANDIN_VAR, require_services()),
            // Only run whenever a real MongoDB is offered, REQUIRE or not.
            Kind::MongoReal => (MONGODB_VAR, false),
        };
        let uri = env_uri(var);
        let absent = if !cfg!(feature = "mongodb") {
            "this test binary was built without the `mongodb` feature".to_owned()
        } else if let Some(uri) = uri {
            return match probe.then(|| ping_mongo(&uri)).transpose() {
                Ok(_) => Availability::Ready(Some(uri)),
                Err(e) => Availability::Missing(format!(
                    "{var} is set, but the server cannot be reached: {e}"
                )),
            };
        } else {
            format!("{var} is not set")
        };
        if required {
            Availability::Missing(format!(
                "{absent}, and {REQUIRE_VAR} is set: this backend must run. \
                 Start the services (scripts/test does) or unset {REQUIRE_VAR}"
            ))
        } else {
            Availability::Ignored(absent)
        }
    }
}

enum Availability {
    /// Run, with the service's URI if it has one.
    Ready(Option<String>),
    /// Absent and optional: the trials are ignored.
    Ignored(String),
    /// Absent and required: the trials fail.
    Missing(String),
}

/// Now, Unix milliseconds, from the real clock.
fn real_now_ms() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------ backends

/// What a case gets: the store under test, the trial's "now", and raw
/// access to the storage where the backend has one.
#[derive(Clone)]
struct Ctx {
    store: Arc<dyn StoreBackend>,
    now: i64,
    raw: Raw,
}

#[derive(Clone)]
enum Raw {
    None,
    Sqlite(PathBuf),
    #[cfg(feature = "mongodb")]
    Mongo(mongodb::Database),
}

/// An open backend and what keeps it alive.
struct Opened {
    store: Arc<dyn StoreBackend>,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

impl Opened {
    /// Drops the trial's Mongo database; nothing to do elsewhere.
    async fn cleanup(&self) {
        #[cfg(feature = "mongodb")]
        if let Raw::Mongo(db) = &self.raw {
            let _ = db.drop().await;
        }
    }
}

/// Forwards each request to one of two services in turn. Used to make
/// two store handles on one file race on every step of a case.
#[derive(Clone)]
struct RoundRobin<S> {
    services: [S; 2],
    turn: Arc<AtomicUsize>,
    /// The service chosen by the last `poll_ready`, for the next `call`.
    picked: Option<usize>,
}

impl<S> RoundRobin<S> {
    fn new(a: S, b: S) -> Self {
        Self {
            services: [a, b],
            turn: Arc::new(AtomicUsize::new(0)),
            picked: None,
        }
    }
}

impl<R, S: tower::Service<R> + Clone> tower::Service<R> for RoundRobin<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let turn = &self.turn;
        let i = *self
            .picked
            .get_or_insert_with(|| turn.fetch_add(1, Ordering::Relaxed) % 2);
        self.services[i].poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        let i = self
            .picked
            .take()
            .expect("RoundRobin::call without poll_ready");
        self.services[i].call(req)
    }
}

async fn open_backend(kind: Kind, uri: Option<&str>) -> Opened {
    let sqlite_file = || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alvryn.db");
        (dir, path)
    };
    match kind {
        Kind::Memory => Opened {
            store: Arc::new(MemoryStore::new()),
            raw: Raw::None,
            _dir: None,
        },
        Kind::Sqlite => {
            let (dir, path) = sqlite_file();
            Opened {
                store: Arc::new(SqliteStore::open(&path).await.unwrap()),
                raw: Raw::Sqlite(path),
                _dir: Some(dir),
            }
        }
        Kind::SqliteTwoHandles => {
            let (dir, path) = sqlite_file();
            let a = SqliteStore::open(&path).await.unwrap();
            let b = SqliteStore::open(&path).await.unwrap();
            let svc = RoundRobin::new(StoreService::new(a), StoreService::new(b));
            Opened {
                store: Arc::new(ServiceStore::new(svc)),
                raw: Raw::None,
                _dir: Some(dir),
            }
        }
        Kind::SqliteViaTower => {
            let (dir, path) = sqlite_file();
            let svc = tower::ServiceBuilder::new()
                .concurrency_limit(8)
                .timeout(Duration::from_secs(10))
                .service(StoreService::new(SqliteStore::open(&path).await.unwrap()));
            Opened {
                store: Arc::new(ServiceStore::new(svc)),
                raw: Raw::None,
                _dir: Some(dir),
            }
        }
        Kind::MongoStandin | Kind::MongoReal => open_mongo(uri.expect("a Mongo URI")).await,
    }
}

#[cfg(feature = "mongodb")]
async fn open_mongo(uri: &str) -> Opened {
    use alvryn_core::store::mongo::MongoStore;
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .unwrap_or_else(|e| panic!("cannot use the MongoDB at {uri}: {e}"));
    let mut name = [0u8; 8];
    rand::fill(&mut name[..]);
    let db = client.database(&format!("contract_{}", hex(&name)));
    let store = MongoStore::open(db.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot open the store at {uri}: {e}"));
    Opened {
        store: Arc::new(store),
        raw: Raw::Mongo(db),
        _dir: None,
    }
}

/// One `ping` to the server at `uri`.
#[cfg(feature = "mongodb")]
fn ping_mongo(uri: &str) -> Result<(), String> {
    runtime().block_on(async {
        let client = mongodb::Client::with_uri_str(uri)
            .await
            .map_err(|e| e.to_string())?;
        client
            .database("admin")
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[cfg(not(feature = "mongodb"))]
fn ping_mongo(_uri: &str) -> Result<(), String> {
    unreachable!("Mongo backends are never ready without the `mongodb` feature")
}

#[cfg(not(feature = "mongodb"))]
async fn open_mongo(_uri: &str) -> Opened {
    unreachable!("Mongo backends are never ready without the `mongodb` feature")
}

// ------------------------------------------------------------ fixtures

fn user(id: &str, email: &str, now: i64) -> User {
    User {
        id: id.into(),
        email: email.into(),
        password_hash: Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        plan: PlanName::free(),
        created_at_ms: now,
    }
}

const DAY_MS: i64 = 86_400_000;

fn family(id: &str, user_id: &str, token: &str, created: i64) -> RefreshFamily {
    RefreshFamily {
        id: id.into(),
        user_id: user_id.into(),
        created_at_ms: created,
        last_used_at_ms: created,
        expires_at_ms: created + 30 * DAY_MS,
        user_agent: Some("Mozilla/5.0 test".into()),
        current: RefreshSlot {
            token_hash: TokenHash::of(token),
            jti: format!("jti-{token}"),
            issued_at: created / 1000,
        },
        previous: None,
        older: None,
        revoked_at_ms: None,
        revoke_reason: None,
        generation: 0,
    }
}

fn rotation(fid: &str, from: &str, to: &str, now_ms: i64) -> Rotation {
    Rotation {
        family_id: fid.into(),
        expected: TokenHash::of(from),
        next: RefreshSlot {
            token_hash: TokenHash::of(to),
            jti: format!("jti-{to}"),
            issued_at: now_ms / 1000,
        },
        now_ms,
        expires_at_ms: now_ms + 30 * DAY_MS,
    }
}

fn revocation(user_id: &str, family_id: Option<&str>, reason: RevokeReason, at: i64) -> Revocation {
    Revocation {
        user_id: user_id.into(),
        family_id: family_id.map(Into::into),
        reason,
        at_ms: at,
    }
}

fn item(ns: &str, key: &str, value: &[u8], expires_at_ms: i64) -> OneTimeItem {
    OneTimeItem {
        ns: ns.into(),
        key: key.into(),
        value: SecretBytes::copy_from(value),
        expires_at_ms,
    }
}

fn record(ns: &str, key: &str, data: &str, created: i64, expires: Option<i64>) -> Record {
    Record {
        ns: ns.into(),
        key: key.into(),
        owner: None,
        status: 0,
        data: data.as_bytes().to_vec(),
        created_at_ms: created,
        updated_at_ms: created,
        expires_at_ms: expires,
    }
}

fn versioned(key: &str, version: i64, now: i64) -> Versioned {
    Versioned {
        ns: "subscription".into(),
        key: key.into(),
        version,
        data: format!("v{version}").into_bytes(),
        updated_at_ms: now,
    }
}

fn new_lease(name: &str, holder: &str, ttl_ms: i64, now_ms: i64) -> NewLease {
    NewLease {
        name: name.into(),
        holder: holder.into(),
        ttl_ms,
        now_ms,
    }
}

/// Runs `n` copies of `f(i)` as concurrent tasks and returns their
/// results in order.
async fn concurrently<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

// ------------------------------------------------------------ cases: accounts and sessions

async fn users_round_trip(c: Ctx) {
    let s = &c.store;
    let u = user("u1", "alice@example.com", c.now);
    s.create_user(&u).await.unwrap();
    assert_eq!(s.user_by_id("u1").await.unwrap().as_ref(), Some(&u));
    assert_eq!(
        s.user_by_email("alice@example.com").await.unwrap().as_ref(),
        Some(&u)
    );
    assert_eq!(s.user_by_email("bob@example.com").await.unwrap(), None);
    assert_eq!(s.user_by_id("nobody").await.unwrap(), None);
    s.set_password_hash("u1", "$argon2id$new").await.unwrap();
    assert_eq!(
        s.user_by_id("u1")
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$new")
    );
    assert!(matches!(
        s.set_password_hash("nobody", "x").await,
        Err(StoreError::NotFound)
    ));
    // A user without a password (provider-only) round-trips too.
    let oauth_only = User {
        password_hash: None,
        ..user("u2", "carol@example.com", c.now)
    };
    s.create_user(&oauth_only).await.unwrap();
    assert_eq!(s.user_by_id("u2").await.unwrap(), Some(oauth_only));
    // Same email, other id: taken.
    let r = s.create_user(&user("u3", "alice@example.com", c.now)).await;
    assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    assert_eq!(s.user_by_id("u3").await.unwrap(), None);
}

async fn unique_email_under_20_concurrent_signups(c: Ctx) {
    let now = c.now;
    let results = concurrently(20, |i| {
        let s = Arc::clone(&c.store);
        async move {
            s.create_user(&user(&format!("racer-{i}"), "race@example.com", now))
                .await
        }
    })
    .await;
    let mut won = 0;
    for r in results {
        match r {
            Ok(()) => won += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one concurrent sign-up must win");
    assert!(
        c.store
            .user_by_email("race@example.com")
            .await
            .unwrap()
            .is_some()
    );
}

async fn duplicate_ids(c: Ctx) {
    let s = &c.store;
    let first = user("u1", "a@example.com", c.now);
    s.create_user(&first).await.unwrap();
    let r = s.create_user(&user("u1", "other@example.com", c.now)).await;
    assert!(matches!(r, Err(StoreError::Conflict)), "same id: {r:?}");
    assert_eq!(s.user_by_id("u1").await.unwrap(), Some(first));
    assert_eq!(s.user_by_email("other@example.com").await.unwrap(), None);

    let f = family("f1", "u1", "t0", c.now);
    s.create_family(&f).await.unwrap();
    let r = s
        .create_family(&family("f1", "u1", "another", c.now + 1))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)), "same id: {r:?}");
    assert_eq!(s.family("f1").await.unwrap(), Some(f));
}

async fn family_for_unknown_user(c: Ctx) {
    let r = c
        .store
        .create_family(&family("f1", "ghost", "t0", c.now))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(c.store.family("f1").await.unwrap(), None);
}

async fn rotation_is_compare_and_swap(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    s.create_family(&family("f1", "u1", "t0", now))
        .await
        .unwrap();
    assert_eq!(
        s.family("f1").await.unwrap().unwrap(),
        family("f1", "u1", "t0", now)
    );
    // Wrong expected token: nothing changes.
    assert_eq!(
        s.rotate_family(&rotation("f1", "nope", "t1", now + 1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.rotate_family(&rotation("unknown", "t0", "t1", now + 1))
            .await
            .unwrap(),
        None
    );
    let after = s
        .rotate_family(&rotation("f1", "t0", "t1", now + 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.current.token_hash, TokenHash::of("t1"));
    assert_eq!(after.current.jti, "jti-t1");
    let prev = after.previous.clone().unwrap();
    assert_eq!(
        (prev.token_hash, prev.rotated_at_ms),
        (TokenHash::of("t0"), now + 5)
    );
    assert_eq!((after.generation, after.last_used_at_ms), (1, now + 5));
    assert_eq!(after.expires_at_ms, now + 5 + 30 * DAY_MS);
    assert_eq!(s.family("f1").await.unwrap().unwrap(), after);
    // The old token cannot rotate again.
    assert_eq!(
        s.rotate_family(&rotation("f1", "t0", "t9", now + 6))
            .await
            .unwrap(),
        None
    );
    // Expired families do not rotate.
    let mut f2 = family("f2", "u1", "x0", now);
    f2.expires_at_ms = now + 10;
    s.create_family(&f2).await.unwrap();
    assert_eq!(
        s.rotate_family(&rotation("f2", "x0", "x1", now + 10))
            .await
            .unwrap(),
        None
    );
    // Revoked families do not rotate.
    let logout = |at| revocation("u1", Some("f1"), RevokeReason::Logout, at);
    assert_eq!(s.revoke(&logout(now + 7)).await.unwrap(), 1);
    assert_eq!(
        s.revoke(&logout(now + 8)).await.unwrap(),
        0,
        "already revoked"
    );
    assert_eq!(
        s.rotate_family(&rotation("f1", "t1", "t2", now + 9))
            .await
            .unwrap(),
        None
    );
    let f = s.family("f1").await.unwrap().unwrap();
    assert_eq!(
        (f.revoked_at_ms, f.revoke_reason),
        (Some(now + 7), Some(RevokeReason::Logout))
    );
    assert_eq!(f.current.token_hash, TokenHash::of("t1"), "unchanged");
}

async fn exactly_one_of_50_concurrent_rotations_wins(c: Ctx) {
    let now = c.now;
    c.store
        .create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    c.store
        .create_family(&family("f1", "u1", "t0", now))
        .await
        .unwrap();
    let results = concurrently(50, |i| {
        let s = Arc::clone(&c.store);
        async move {
            s.rotate_family(&rotation("f1", "t0", &format!("t1-{i}"), now + 1))
                .await
                .unwrap()
        }
    })
    .await;
    let winners: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "exactly one rotation may win");
    let stored = c.store.family("f1").await.unwrap().unwrap();
    assert_eq!(stored.current, winners[0].current);
    assert_eq!(stored.generation, 1);
}

async fn sessions_listing_and_revocation(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    s.create_user(&user("u2", "b@example.com", now))
        .await
        .unwrap();
    for (i, fid) in ["f1", "f2", "f3"].iter().enumerate() {
        s.create_family(&family(
            fid,
            "u1",
            &format!("t{i}"),
            now + i64::try_from(i).unwrap() * 1000,
        ))
        .await
        .unwrap();
    }
    let mut expired = family("f4", "u1", "t4", now);
    expired.expires_at_ms = now + 500;
    s.create_family(&expired).await.unwrap();
    s.create_family(&family("g1", "u2", "g", now))
        .await
        .unwrap();
    let ids = |v: Vec<RefreshFamily>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.active_families("u1", now + 5000).await.unwrap()),
        ["f3", "f2", "f1"],
        "newest first, expired excluded"
    );
    assert_eq!(
        s.revoke(&revocation(
            "u2",
            Some("f2"),
            RevokeReason::Revoked,
            now + 5500
        ))
        .await
        .unwrap(),
        0,
        "a family is only revoked for its own user"
    );
    assert_eq!(
        s.revoke(&revocation(
            "u1",
            Some("f2"),
            RevokeReason::Revoked,
            now + 6000
        ))
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        ids(s.active_families("u1", now + 7000).await.unwrap()),
        ["f3", "f1"]
    );
    assert_eq!(
        s.revoke(&revocation("u1", None, RevokeReason::LogoutAll, now + 8000))
            .await
            .unwrap(),
        3,
        "f1, f3 and the expired f4"
    );
    assert!(
        s.active_families("u1", now + 9000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.active_families("u2", now + 9000).await.unwrap()),
        ["g1"],
        "other users untouched"
    );
    let f2 = s.family("f2").await.unwrap().unwrap();
    assert_eq!(
        (f2.revoked_at_ms, f2.revoke_reason),
        (Some(now + 6000), Some(RevokeReason::Revoked)),
        "a second revocation does not overwrite the first"
    );
    assert_eq!(
        s.family("f4").await.unwrap().unwrap().revoke_reason,
        Some(RevokeReason::LogoutAll)
    );
}

async fn expired_records_agree(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    let mut f = family("f1", "u1", "t0", now);
    f.expires_at_ms = now + 1000;
    s.create_family(&f).await.unwrap();
    let at = now + 1000;
    assert_eq!(
        s.family("f1").await.unwrap().as_ref(),
        Some(&f),
        "family() returns an expired family"
    );
    assert!(
        s.active_families("u1", at).await.unwrap().is_empty(),
        "but it is not active"
    );
    assert_eq!(
        s.rotate_family(&rotation("f1", "t0", "t1", at))
            .await
            .unwrap(),
        None,
        "and does not rotate"
    );
    assert_eq!(s.family("f1").await.unwrap(), Some(f), "unchanged");
    // One millisecond earlier it was active.
    assert_eq!(s.active_families("u1", at - 1).await.unwrap().len(), 1);
}

async fn audit_events_are_kept_in_order(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    for (i, kind) in ["a", "b", "c"].iter().enumerate() {
        let e = AuditEvent {
            at_ms: now + i64::try_from(i).unwrap(),
            kind: (*kind).into(),
            user_id: "u1".into(),
            family_id: (i == 1).then(|| "f1".into()),
        };
        s.record_audit(&e).await.unwrap();
    }
    s.record_audit(&AuditEvent {
        at_ms: now,
        kind: "x".into(),
        user_id: "u2".into(),
        family_id: None,
    })
    .await
    .unwrap();
    let events = s.audit_events("u1").await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(events[1].family_id.as_deref(), Some("f1"));
    assert_eq!(events[1].at_ms, now + 1);
    assert_eq!(events[0].family_id, None);
}

async fn the_ledger_never_grants_past_the_limit(c: Ctx) {
    let key = ledger_key_of("k-contract");
    assert_eq!(c.store.reserved(&key).await.unwrap(), 0);
    let results = concurrently(16, |_| {
        let s = Arc::clone(&c.store);
        let key = key.clone();
        async move { s.reserve(&key, 7, 100).await }
    })
    .await;
    let mut granted = 0;
    let mut totals = Vec::new();
    for r in results {
        match r {
            Ok(r) => {
                granted += r.granted;
                totals.push(r.total);
            }
            Err(LedgerError::LimitReached { .. }) => {}
            Err(e) => panic!("unexpected ledger error: {e}"),
        }
    }
    let n = totals.len();
    totals.sort_unstable();
    totals.dedup();
    assert_eq!(totals.len(), n, "overlapping grants");
    assert_eq!(granted, 100);
    assert_eq!(c.store.reserved(&key).await.unwrap(), 100);
    assert!(matches!(
        c.store.reserve(&key, 1, 100).await,
        Err(LedgerError::LimitReached { .. })
    ));
}

// ------------------------------------------------------------ cases: primitives

async fn take_once_under_50_concurrent_takers(c: Ctx) {
    let now = c.now;
    c.store
        .put_once(
            &item("oauth_state", "s1", b"verifier+nonce", now + 60_000),
            now,
        )
        .await
        .unwrap();
    let results = concurrently(50, |_| {
        let s = Arc::clone(&c.store);
        async move { s.take_once("oauth_state", "s1", now + 1).await.unwrap() }
    })
    .await;
    let got: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "exactly one taker gets the item");
    assert_eq!(got[0].expose(), b"verifier+nonce");
    assert_eq!(
        c.store
            .take_once("oauth_state", "s1", now + 2)
            .await
            .unwrap(),
        None,
        "a later take gets nothing"
    );
}

async fn expired_one_time_items_never_returned(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    // Taken exactly at its expiry, and after it.
    s.put_once(&item("code", "at", b"a", now + 1000), now)
        .await
        .unwrap();
    s.put_once(&item("code", "after", b"b", now + 1000), now)
        .await
        .unwrap();
    assert_eq!(s.take_once("code", "at", now + 1000).await.unwrap(), None);
    assert_eq!(
        s.take_once("code", "after", now + 5000).await.unwrap(),
        None
    );
    // One millisecond before its expiry it is still there.
    s.put_once(&item("code", "before", b"c", now + 1000), now)
        .await
        .unwrap();
    assert_eq!(
        s.take_once("code", "before", now + 999)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        b"c"
    );
    // Namespaces are separate.
    s.put_once(&item("code", "k", b"code", now + 60_000), now)
        .await
        .unwrap();
    s.put_once(&item("oauth_state", "k", b"state", now + 60_000), now)
        .await
        .unwrap();
    // Over a live item: taken, the first value stays.
    let r = s
        .put_once(&item("code", "k", b"intruder", now + 90_000), now + 1)
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    assert_eq!(
        s.take_once("code", "k", now + 2)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        b"code"
    );
    assert_eq!(
        s.take_once("oauth_state", "k", now + 2)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        b"state"
    );
    // Over an expired item: replaced, and the new one is takeable.
    s.put_once(&item("code", "old", b"old", now + 1000), now)
        .await
        .unwrap();
    s.put_once(&item("code", "old", b"new", now + 60_000), now + 1000)
        .await
        .unwrap();
    assert_eq!(
        s.take_once("code", "old", now + 1001)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        b"new"
    );
}

async fn insert_if_absent_under_50_concurrent_inserts(c: Ctx) {
    let now = c.now;
    let results = concurrently(50, |i| {
        let s = Arc::clone(&c.store);
        async move {
            let data = format!("writer-{i}");
            let r = s
                .insert_if_absent(&record("stripe_event", "evt_1", &data, now, None))
                .await;
            (data, r)
        }
    })
    .await;
    let mut winners = Vec::new();
    for (data, r) in results {
        match r {
            Ok(()) => winners.push(data),
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one insert wins: {winners:?}");
    let stored = c
        .store
        .record("stripe_event", "evt_1", now + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.data, winners[0].as_bytes(), "the winner's data");

    let s = &c.store;
    // A record expired at the insert's time is replaced.
    s.insert_if_absent(&record("link", "k2", "first", now, Some(now + 1000)))
        .await
        .unwrap();
    let r = s
        .insert_if_absent(&record("link", "k2", "early", now + 999, None))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)), "still live: {r:?}");
    s.insert_if_absent(&record("link", "k2", "second", now + 1000, None))
        .await
        .unwrap();
    let k2 = s.record("link", "k2", now + 2000).await.unwrap().unwrap();
    assert_eq!(
        (k2.data.as_slice(), k2.created_at_ms, k2.expires_at_ms),
        (&b"second"[..], now + 1000, None)
    );
    // record() hides an expired record.
    s.insert_if_absent(&record("link", "k3", "x", now, Some(now + 500)))
        .await
        .unwrap();
    assert!(s.record("link", "k3", now + 499).await.unwrap().is_some());
    assert_eq!(s.record("link", "k3", now + 500).await.unwrap(), None);
}

async fn status_never_moves_backwards(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    let mut r = record("stripe_event", "evt", "a", now, None);
    r.status = 1;
    s.insert_if_absent(&r).await.unwrap();
    let adv = |to: u32, data: Option<&str>, at: i64| Advance {
        ns: "stripe_event".into(),
        key: "evt".into(),
        to,
        data: data.map(|d| d.as_bytes().to_vec()),
        now_ms: at,
    };
    let get = || async {
        s.record("stripe_event", "evt", now + 100)
            .await
            .unwrap()
            .unwrap()
    };

    assert!(s.advance(&adv(2, Some("b"), now + 1)).await.unwrap());
    let got = get().await;
    assert_eq!(
        (got.status, got.data.as_slice(), got.updated_at_ms),
        (2, &b"b"[..], now + 1),
        "data replaced"
    );
    assert!(s.advance(&adv(3, None, now + 2)).await.unwrap());
    let got = get().await;
    assert_eq!(
        (got.status, got.data.as_slice(), got.updated_at_ms),
        (3, &b"b"[..], now + 2),
        "data kept"
    );
    assert!(!s.advance(&adv(3, Some("same"), now + 3)).await.unwrap());
    assert!(!s.advance(&adv(1, Some("lower"), now + 4)).await.unwrap());
    let got = get().await;
    assert_eq!(
        (got.status, got.data.as_slice(), got.updated_at_ms),
        (3, &b"b"[..], now + 2),
        "nothing changed"
    );
    // Unknown (or expired) keys.
    let unknown = Advance {
        key: "nope".into(),
        ..adv(9, None, now)
    };
    let e = s.advance(&unknown).await;
    assert!(matches!(e, Err(StoreError::NotFound)), "{e:?}");
    s.insert_if_absent(&record("stripe_event", "gone", "x", now, Some(now + 10)))
        .await
        .unwrap();
    let gone = Advance {
        key: "gone".into(),
        ..adv(9, None, now + 10)
    };
    let e = s.advance(&gone).await;
    assert!(matches!(e, Err(StoreError::NotFound)), "expired: {e:?}");

    // 50 concurrent moves to one status: exactly one sees `true`.
    let moved = concurrently(50, |i| {
        let s = Arc::clone(&c.store);
        let a = adv(4, Some(&format!("mover-{i}")), now + 10);
        async move { (i, s.advance(&a).await.unwrap()) }
    })
    .await;
    let winners: Vec<_> = moved.into_iter().filter(|(_, m)| *m).collect();
    assert_eq!(winners.len(), 1, "exactly one move to 4 wins");
    let got = get().await;
    assert_eq!(got.status, 4);
    assert_eq!(got.data, format!("mover-{}", winners[0].0).into_bytes());
}

/// Pages (`after` the last record of the previous page) visit every
/// record once, in order, with or without a status, also while the
/// statuses of visited records move on between pages (as a migration's
/// do); ties on the creation time are broken by key.
async fn records_page_through_a_namespace(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    // 60 records over 20 distinct creation times (three share each),
    // inserted in a scrambled order; a third start at status 1.
    let mut expected = Vec::new();
    for i in 0..60u32 {
        let j = (i * 37) % 60;
        let key = format!("k{j:02}");
        let r = Record {
            owner: Some("u".into()),
            status: if j % 3 == 0 { 1 } else { 2 },
            ..record("tokens", &key, "x", now + i64::from(j / 3), None)
        };
        s.insert_if_absent(&r).await.unwrap();
        expected.push(r);
    }
    expected.sort_by(|a, b| (a.created_at_ms, &a.key).cmp(&(b.created_at_ms, &b.key)));
    let all_keys: Vec<String> = expected.iter().map(|r| r.key.clone()).collect();
    s.insert_if_absent(&record("other", "k00", "x", now, None))
        .await
        .unwrap();
    let pages = |status: Option<StatusRange>, advance: bool| async move {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let filter = RecordFilter {
                status,
                limit: 7,
                after: after.clone(),
                ..RecordFilter::default()
            };
            let page = s.records("tokens", &filter, now + 100).await.unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            after = Some(RecordCursor::of(last));
            for r in &page {
                seen.push(r.key.clone());
                if advance {
                    let moved = s
                        .advance(&Advance {
                            ns: "tokens".into(),
                            key: r.key.clone(),
                            to: r.status + 10,
                            data: None,
                            now_ms: now + 100,
                        })
                        .await
                        .unwrap();
                    assert!(moved);
                }
            }
        }
        seen
    };
    assert_eq!(
        pages(None, false).await,
        all_keys,
        "every record once, in order"
    );
    let ones: Vec<String> = expected
        .iter()
        .filter(|r| r.status == 1)
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(ones.len(), 20);
    assert_eq!(pages(Some(1.into()), false).await, ones, "status 1 only");
    assert_eq!(
        pages(Some(StatusRange::new(1, 2)), false).await,
        all_keys,
        "a range of statuses pages in the same order"
    );
    // Moving each visited record's status on does not skip or repeat
    // any (each is advanced exactly once: `advance` asserts it moved).
    assert_eq!(pages(None, true).await, all_keys);
    assert_eq!(pages(Some(1.into()), false).await, Vec::<String>::new());
    assert_eq!(pages(Some(11.into()), false).await, ones);
    assert_eq!(pages(Some(StatusRange::new(11, 12)), false).await, all_keys);
    assert_eq!(
        pages(Some(StatusRange::new(12, 40)), false).await,
        all_keys
            .iter()
            .filter(|k| !ones.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
        "the range's ends are inclusive"
    );
    assert_eq!(
        pages(Some(StatusRange::new(3, 10)), false).await,
        Vec::<String>::new()
    );
}

async fn records_list_and_remove(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    let mk = |key: &str, owner: &str, status: u32, created: i64, expires: Option<i64>| Record {
        owner: Some(owner.into()),
        status,
        ..record("link", key, key, created, expires)
    };
    // Inserted out of order; listed oldest first.
    for r in [
        mk("c", "alice", 1, now + 3, None),
        mk("a", "alice", 0, now + 1, None),
        mk("b", "bob", 1, now + 2, None),
        mk("d", "alice", 1, now + 4, Some(now + 500)),
        mk("e", "alice", 1, now + 5, Some(now + 60_000)),
        Record {
            ns: "other".into(),
            ..mk("z", "alice", 1, now, None)
        },
    ] {
        s.insert_if_absent(&r).await.unwrap();
    }
    let at = now + 1000; // `d` has expired
    let keys = |v: Vec<Record>| v.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let list = |owner: Option<&str>, status: Option<u32>, limit: usize| RecordFilter {
        owner: owner.map(Into::into),
        status: status.map(Into::into),
        limit,
        after: None,
    };
    let ranged = |owner: Option<&str>, from: u32, to: u32, limit: usize| RecordFilter {
        owner: owner.map(Into::into),
        status: Some(StatusRange::new(from, to)),
        limit,
        after: None,
    };
    for (owner, from, to, limit, expected) in [
        (None, 0, 1, 0, &["a", "b", "c", "e"][..]),
        (None, 0, 0, 0, &["a"][..]),
        (None, 1, 9, 0, &["b", "c", "e"][..]),
        (None, 0, 1, 2, &["a", "b"][..]),
        (None, 2, 9, 0, &[][..]),
        (None, 1, 0, 0, &[][..]),
        (Some("alice"), 0, 1, 0, &["a", "c", "e"][..]),
        (Some("alice"), 1, 1, 0, &["c", "e"][..]),
        (Some("alice"), 1, 5, 1, &["c"][..]),
    ] {
        assert_eq!(
            keys(
                s.records("link", &ranged(owner, from, to, limit), at)
                    .await
                    .unwrap()
            ),
            expected,
            "{owner:?} statuses {from}..={to}, limit {limit}"
        );
    }
    assert_eq!(
        keys(s.records("link", &list(None, None, 0), at).await.unwrap()),
        ["a", "b", "c", "e"]
    );
    assert_eq!(
        keys(
            s.records("link", &list(Some("alice"), None, 0), at)
                .await
                .unwrap()
        ),
        ["a", "c", "e"]
    );
    assert_eq!(
        keys(
            s.records("link", &list(None, Some(1), 0), at)
                .await
                .unwrap()
        ),
        ["b", "c", "e"]
    );
    assert_eq!(
        keys(
            s.records("link", &list(Some("alice"), Some(1), 1), at)
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        keys(s.records("link", &list(None, None, 2), at).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        keys(
            s.records("link", &list(None, None, 0), now + 10)
                .await
                .unwrap()
        ),
        ["a", "b", "c", "d", "e"],
        "`d` is listed while live"
    );
    let full = s
        .records("link", &list(Some("bob"), None, 0), at)
        .await
        .unwrap();
    assert_eq!(
        full,
        vec![mk("b", "bob", 1, now + 2, None)],
        "whole records"
    );

    assert!(s.remove_record("link", "c").await.unwrap());
    assert!(!s.remove_record("link", "c").await.unwrap());
    assert!(!s.remove_record("link", "never").await.unwrap());
    assert_eq!(s.record("link", "c", at).await.unwrap(), None);
    assert_eq!(
        keys(
            s.records("link", &list(Some("alice"), None, 0), at)
                .await
                .unwrap()
        ),
        ["a", "e"]
    );
    assert!(
        s.record("other", "z", at).await.unwrap().is_some(),
        "other namespaces untouched"
    );
}

async fn cas_upsert_refuses_older_version(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    assert_eq!(s.versioned("subscription", "sub_1").await.unwrap(), None);
    assert_eq!(
        s.upsert_versioned(&versioned("sub_1", 5, now))
            .await
            .unwrap(),
        CasOutcome::Applied
    );
    assert_eq!(
        s.upsert_versioned(&versioned("sub_1", 3, now + 1))
            .await
            .unwrap(),
        CasOutcome::Stale { current: 5 }
    );
    assert_eq!(
        s.versioned("subscription", "sub_1").await.unwrap(),
        Some(versioned("sub_1", 5, now)),
        "data unchanged"
    );
    assert_eq!(
        s.upsert_versioned(&versioned("sub_1", 5, now + 2))
            .await
            .unwrap(),
        CasOutcome::Stale { current: 5 }
    );
    assert_eq!(
        s.upsert_versioned(&versioned("sub_1", 6, now + 3))
            .await
            .unwrap(),
        CasOutcome::Applied
    );
    assert_eq!(
        s.versioned("subscription", "sub_1").await.unwrap(),
        Some(versioned("sub_1", 6, now + 3))
    );

    // 50 concurrent writers with versions 1..=50: the newest stays.
    let outcomes = concurrently(50, |i| {
        let s = Arc::clone(&c.store);
        let v = versioned("sub_2", i64::try_from(i).unwrap() + 1, now);
        async move { (v.version, s.upsert_versioned(&v).await.unwrap()) }
    })
    .await;
    for (version, outcome) in &outcomes {
        if let CasOutcome::Stale { current } = outcome {
            assert!(current >= version, "refused {version} for older {current}");
        }
    }
    assert!(outcomes.contains(&(50, CasOutcome::Applied)));
    assert_eq!(
        s.versioned("subscription", "sub_2").await.unwrap(),
        Some(versioned("sub_2", 50, now))
    );
}

async fn lease_taken_after_expiry_and_old_holder_refused(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    let job = "nightly";
    assert_eq!(s.lease(job).await.unwrap(), None);
    let a = s
        .acquire(&new_lease(job, "A", 10_000, now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.holder.as_str(), a.fence, a.expires_at_ms),
        ("A", 1, now + 10_000)
    );
    assert_eq!(
        s.acquire(&new_lease(job, "B", 10_000, now + 1))
            .await
            .unwrap(),
        None,
        "held"
    );
    assert_eq!(
        s.acquire(&new_lease(job, "A", 10_000, now + 1))
            .await
            .unwrap(),
        None,
        "held, also for its holder"
    );
    let a = s.renew(&a, 10_000, now + 5_000).await.unwrap();
    assert_eq!((a.fence, a.expires_at_ms), (1, now + 15_000));
    // A's fenced write.
    let write = |fence: i64, by: &str| Versioned {
        ns: "job_output".into(),
        key: job.into(),
        version: fence,
        data: by.as_bytes().to_vec(),
        updated_at_ms: now,
    };
    assert_eq!(
        s.upsert_versioned(&write(a.fence, "A")).await.unwrap(),
        CasOutcome::Applied
    );
    // Expired: B takes it over with the next fence.
    let b = s
        .acquire(&new_lease(job, "B", 10_000, now + 15_000))
        .await
        .unwrap()
        .expect("an expired lease can be taken");
    assert_eq!(
        (b.holder.as_str(), b.fence, b.expires_at_ms),
        ("B", 2, now + 25_000)
    );
    let r = s.renew(&a, 10_000, now + 15_001).await;
    assert!(matches!(r, Err(StoreError::Conflict)), "A lost it: {r:?}");
    assert!(!s.release(&a).await.unwrap(), "A's late release");
    assert_eq!(s.lease(job).await.unwrap(), Some(b.clone()), "B holds it");
    assert_eq!(
        s.upsert_versioned(&write(b.fence, "B")).await.unwrap(),
        CasOutcome::Applied
    );
    assert_eq!(
        s.upsert_versioned(&write(a.fence, "A late")).await.unwrap(),
        CasOutcome::Stale { current: 2 }
    );
    assert_eq!(
        s.versioned("job_output", job).await.unwrap().unwrap().data,
        b"B"
    );
    // Released: free at once, and the fence still moves on.
    assert!(s.release(&b).await.unwrap());
    assert!(!s.release(&b).await.unwrap(), "released twice");
    assert_eq!(s.lease(job).await.unwrap().unwrap().expires_at_ms, 0);
    let r = s.renew(&b, 10_000, now + 15_002).await;
    assert!(matches!(r, Err(StoreError::Conflict)), "released: {r:?}");
    let next = s
        .acquire(&new_lease(job, "A", 10_000, now + 15_003))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.fence, 3, "fences are never reused");

    // 50 concurrent acquirers of a fresh lease: one wins.
    let got = concurrently(50, |i| {
        let s = Arc::clone(&c.store);
        async move {
            s.acquire(&new_lease("fresh", &format!("w{i}"), 60_000, now))
                .await
                .unwrap()
        }
    })
    .await;
    let winners: Vec<Lease> = got.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "exactly one acquirer wins");
    assert_eq!(winners[0].fence, 1);
    assert_eq!(s.lease("fresh").await.unwrap(), Some(winners[0].clone()));
}

async fn window_counters_exact_under_50_concurrent_hits(c: Ctx) {
    let now = c.now;
    let w = 60_000;
    let end = now.div_euclid(w) * w + w;
    let hits = concurrently(50, |_| {
        let s = Arc::clone(&c.store);
        async move { s.hit("login:1.2.3.4", w, now).await.unwrap() }
    })
    .await;
    let mut counts: Vec<u64> = hits.iter().map(|h| h.count).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=50).collect::<Vec<u64>>());
    assert!(hits.iter().all(|h| h.resets_at_ms == end), "{hits:?}");
    // The same window, later in it.
    let h = c.store.hit("login:1.2.3.4", w, end - 1).await.unwrap();
    assert_eq!((h.count, h.resets_at_ms), (51, end));
    // The next window starts again at 1.
    let h = c.store.hit("login:1.2.3.4", w, end).await.unwrap();
    assert_eq!((h.count, h.resets_at_ms), (1, end + w));
    // Another key is independent.
    let h = c.store.hit("login:5.6.7.8", w, now).await.unwrap();
    assert_eq!((h.count, h.resets_at_ms), (1, end));
    // So is the same key counted over another window length, even when
    // both windows start at the same instant (an hour starts on a minute).
    let hour = 3_600_000;
    let start = now.div_euclid(hour) * hour;
    let h = c.store.hit("login:1.2.3.4", hour, start).await.unwrap();
    assert_eq!((h.count, h.resets_at_ms), (1, start + hour));
    let h = c.store.hit("login:1.2.3.4", w, start).await.unwrap();
    assert_eq!(h.resets_at_ms, start + w);
    let h2 = c.store.hit("login:1.2.3.4", hour, start).await.unwrap();
    assert_eq!(
        h2.count, 2,
        "the hour counter did not see the minute's hits"
    );
}

async fn purge_removes_only_expired(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    let at = now + 10_000;
    // One-time items.
    s.put_once(&item("code", "dead", b"x", now + 5_000), now)
        .await
        .unwrap();
    s.put_once(&item("code", "live", b"y", at + 60_000), now)
        .await
        .unwrap();
    // Records.
    s.insert_if_absent(&record("evt", "dead", "x", now, Some(now + 5_000)))
        .await
        .unwrap();
    s.insert_if_absent(&record("evt", "live", "y", now, Some(at + 60_000)))
        .await
        .unwrap();
    s.insert_if_absent(&record("evt", "forever", "z", now, None))
        .await
        .unwrap();
    // Counters: a window that ended before `at`, one that contains it.
    s.hit("ended", 1_000, now).await.unwrap();
    s.hit("current", 60_000, at).await.unwrap();
    // Sessions.
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    let mut dead = family("f-dead", "u1", "t0", now);
    dead.expires_at_ms = now + 5_000;
    s.create_family(&dead).await.unwrap();
    s.create_family(&family("f-live", "u1", "t1", now))
        .await
        .unwrap();
    // Leases, expired and released: never purged.
    let expired = s
        .acquire(&new_lease("expired", "A", 1_000, now))
        .await
        .unwrap()
        .unwrap();
    let released = s
        .acquire(&new_lease("released", "A", 60_000, now))
        .await
        .unwrap()
        .unwrap();
    assert!(s.release(&released).await.unwrap());

    assert_eq!(
        s.purge_expired(at).await.unwrap(),
        Purged {
            one_time: 1,
            records: 1,
            counters: 1,
            sessions: 1,
        }
    );
    assert_eq!(
        s.purge_expired(at).await.unwrap(),
        Purged::default(),
        "nothing left to purge"
    );

    assert_eq!(
        s.take_once("code", "live", at)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        b"y"
    );
    assert!(s.record("evt", "live", at).await.unwrap().is_some());
    assert!(s.record("evt", "forever", at).await.unwrap().is_some());
    assert_eq!(s.hit("current", 60_000, at).await.unwrap().count, 2);
    assert_eq!(s.family("f-dead").await.unwrap(), None);
    assert!(s.family("f-live").await.unwrap().is_some());
    assert_eq!(s.lease("expired").await.unwrap(), Some(expired.clone()));
    assert_eq!(s.lease("released").await.unwrap().unwrap().fence, 1);
    let again = s
        .acquire(&new_lease("expired", "B", 1_000, at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.fence, 2, "the fence survives a purge");
    let again = s
        .acquire(&new_lease("released", "B", 1_000, at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.fence, 2, "the fence survives a purge");
}

/// The authenticated-request read: the user only while the session is
/// theirs and active.
async fn active_session_user_only_for_an_active_session(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    let alice = user("u1", "a@example.com", now);
    s.create_user(&alice).await.unwrap();
    s.create_user(&user("u2", "b@example.com", now))
        .await
        .unwrap();
    s.create_family(&family("f1", "u1", "t0", now))
        .await
        .unwrap();
    assert_eq!(
        s.active_session_user("f1", "u1", now + 1).await.unwrap(),
        Some(alice)
    );
    assert_eq!(
        s.active_session_user("f1", "u2", now + 1).await.unwrap(),
        None,
        "another user's session"
    );
    assert_eq!(
        s.active_session_user("nope", "u1", now + 1).await.unwrap(),
        None,
        "an unknown session"
    );
    let expires = s.family("f1").await.unwrap().unwrap().expires_at_ms;
    assert_eq!(
        s.active_session_user("f1", "u1", expires).await.unwrap(),
        None,
        "an expired session"
    );
    s.revoke(&revocation("u1", Some("f1"), RevokeReason::Logout, now + 2))
        .await
        .unwrap();
    assert_eq!(
        s.active_session_user("f1", "u1", now + 3).await.unwrap(),
        None,
        "a revoked session fails its very next check"
    );
}

// ------------------------------------------------------------ cases: damaged records

/// Records damaged behind the store's back decode to
/// `StoreError::Corrupt`, never to "absent" or "not revoked".
async fn corrupt_records_decode_to_errors(c: Ctx) {
    let (s, now) = (&c.store, c.now);
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    s.create_user(&user("u-bad", "bad@example.com", now))
        .await
        .unwrap();
    s.create_family(&family("f-revoked", "u1", "t0", now))
        .await
        .unwrap();
    match &c.raw {
        Raw::Sqlite(path) => corrupt_sqlite(&c, path).await,
        #[cfg(feature = "mongodb")]
        Raw::Mongo(db) => corrupt_mongo(&c, db).await,
        Raw::None => unreachable!("only run on backends with a raw driver"),
    }
}

/// Another connection (a worker in another process, say) holds the
/// write lock: reads still answer at once, and a write waits for the lock
/// and then lands. SQLite only: on MongoDB the server schedules writers.
async fn a_slow_writer_never_stalls_reads(c: Ctx) {
    let Raw::Sqlite(path) = &c.raw else {
        unreachable!("only run on the SQLite backend");
    };
    let (s, now) = (&c.store, c.now);
    s.create_user(&user("u1", "a@example.com", now))
        .await
        .unwrap();
    s.create_family(&family("f1", "u1", "t0", now))
        .await
        .unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let path = path.clone();
    let holder = std::thread::spawn(move || {
        let db = rusqlite::Connection::open(path).unwrap();
        db.execute_batch("BEGIN IMMEDIATE; UPDATE users SET plan = plan WHERE id = 'u1';")
            .unwrap();
        locked_tx.send(()).unwrap();
        // Held until the reads below are done; if they waited for this
        // lock, the case would never get here (the channel guards the
        // whole suite with a deadline instead of hanging).
        release_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        db.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    // Reads while the write lock is held by someone else.
    assert!(s.user_by_id("u1").await.unwrap().is_some());
    assert!(s.family("f1").await.unwrap().is_some());
    assert!(
        s.active_session_user("f1", "u1", now + 1)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.active_families("u1", now + 1).await.unwrap().len(), 1);
    // A write queues behind the lock, and lands once it is released.
    let store = Arc::clone(s);
    let write =
        tokio::spawn(async move { store.create_user(&user("u2", "b@example.com", now)).await });
    release_tx.send(()).unwrap();
    write.await.unwrap().unwrap();
    holder.join().unwrap();
    assert!(s.user_by_id("u2").await.unwrap().is_some());
}

/// A caller that gives up (a timeout layer) while its write waits for
/// the lock: the write is never applied later behind its back.
async fn a_write_whose_caller_gave_up_is_not_applied(c: Ctx) {
    let Raw::Sqlite(path) = &c.raw else {
        unreachable!("only run on the SQLite backend");
    };
    let (s, now) = (&c.store, c.now);
    let impatient = ServiceStore::new(
        tower::ServiceBuilder::new()
            .timeout(Duration::from_millis(50))
            .service(StoreService::from_arc(Arc::clone(s))),
    );
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = alvryn_core::store::UserStore::create_user(
        &impatient,
        &user("u-late", "late@example.com", now),
    )
    .await;
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "the timeout layer answers: {r:?}"
    );
    db.execute_batch("COMMIT").unwrap();
    // Writes run in order: once this one is done, so is the abandoned one.
    s.create_user(&user("u-next", "next@example.com", now))
        .await
        .unwrap();
    assert_eq!(
        s.user_by_id("u-late").await.unwrap(),
        None,
        "a write whose caller had gone was applied"
    );
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::Corrupt(_))),
        "{what}: expected StoreError::Corrupt, got {r:?}"
    );
}

async fn corrupt_sqlite(c: &Ctx, path: &Path) {
    let (s, now) = (&c.store, c.now);
    s.create_family(&family("f-hash", "u1", "t1", now))
        .await
        .unwrap();
    s.create_family(&family("f-prev", "u1", "t2", now))
        .await
        .unwrap();
    s.insert_if_absent(&record("evt", "bad", "x", now, None))
        .await
        .unwrap();
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(&format!(
        "UPDATE refresh_families SET revoked_at_ms = {now}, revoke_reason = 'banana' WHERE id = 'f-revoked';
         UPDATE refresh_families SET current_hash = x'010203' WHERE id = 'f-hash';
         UPDATE refresh_families SET previous_hash = current_hash WHERE id = 'f-prev';
         UPDATE users SET plan = 'Not A Plan!' WHERE id = 'u-bad';
         UPDATE records SET status = -1 WHERE ns = 'evt' AND key = 'bad';"
    ))
    .unwrap();
    drop(db);
    assert_corrupt(s.family("f-revoked").await, "revoke_reason 'banana'");
    assert_corrupt(s.family("f-hash").await, "a 3-byte current_hash");
    assert_corrupt(
        s.family("f-prev").await,
        "previous_hash without previous_rotated_at_ms",
    );
    assert_corrupt(
        s.active_families("u1", now + 1).await,
        "active_families over damaged rows",
    );
    assert_corrupt(s.user_by_id("u-bad").await, "an invalid plan name");
    assert_corrupt(
        s.user_by_email("bad@example.com").await,
        "an invalid plan name, by email",
    );
    assert_corrupt(s.record("evt", "bad", now + 1).await, "a negative status");
    assert_corrupt(
        s.records("evt", &RecordFilter::default(), now + 1).await,
        "a negative status, listed",
    );
    // What is not damaged still reads.
    assert!(s.user_by_id("u1").await.unwrap().is_some());
}

#[cfg(feature = "mongodb")]
async fn corrupt_mongo(c: &Ctx, db: &mongodb::Database) {
    use mongodb::bson::{Document, doc};
    let (s, now) = (&c.store, c.now);
    let set = |coll: &str, id: &str, update: Document| {
        let coll = db.collection::<Document>(coll);
        let id = id.to_owned();
        async move {
            let r = coll
                .update_one(doc! { "_id": id }, doc! { "$set": update })
                .await
                .unwrap();
            assert_eq!(r.matched_count, 1, "the raw write found its document");
        }
    };
    set(
        "refresh_families",
        "f-revoked",
        doc! { "revoked_at": "yes" },
    )
    .await;
    set("users", "u-bad", doc! { "email": 42_i32 }).await;
    assert_corrupt(s.family("f-revoked").await, "revoked_at \"yes\"");
    // Fail closed: a family whose revocation cannot be read never acts
    // as active.
    let rotated = s
        .rotate_family(&rotation("f-revoked", "t0", "t1", now + 1))
        .await;
    assert!(
        !matches!(rotated, Ok(Some(_))),
        "a family with revoked_at \"yes\" rotated: {rotated:?}"
    );
    match s.active_families("u1", now + 1).await {
        Ok(v) => assert!(
            v.iter().all(|f| f.id != "f-revoked"),
            "a family with revoked_at \"yes\" is listed as active: {v:?}"
        ),
        Err(e) => assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
    }
    assert_corrupt(s.user_by_id("u-bad").await, "an email that is a number");
    assert!(s.user_by_id("u1").await.unwrap().is_some());
}

// ------------------------------------------------------------ cases: auth on top

struct ManualClock(AtomicI64);
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An `Auth` over the store, with a manual clock starting at the trial's
/// real "now".
fn auth(c: &Ctx) -> (Auth, Arc<ManualClock>) {
    let keys = JwtKeys::new(
        JwtSettings::new("https://api.example.com", "alvryn"),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"access-secret-for-the-contract-suite-0001"),
            None,
        )
        .unwrap(),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"refresh-secret-for-the-contract-suite-001"),
            None,
        )
        .unwrap(),
    );
    let clock = Arc::new(ManualClock(AtomicI64::new(c.now)));
    let hasher = PasswordHasher::new(HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    })
    .unwrap();
    let store: Arc<dyn TokenStore> = c.store.clone();
    (
        Auth::new(store, Arc::new(keys), hasher).with_clock(clock.clone()),
        clock,
    )
}

const PASSWORD: &str = "correct horse battery staple";

async fn fifty_concurrent_refreshes_get_one_successor(c: Ctx) {
    let (auth, clock) = auth(&c);
    let first = auth
        .signup(
            "tabs@example.com",
            &SecretString::from(PASSWORD),
            Some("test"),
        )
        .await
        .unwrap();
    let token = first.refresh_token.expose().to_owned();
    clock.0.fetch_add(2000, Ordering::SeqCst);
    let results = concurrently(50, |_| {
        let auth = auth.clone();
        let token = token.clone();
        async move { auth.refresh(&token).await }
    })
    .await;
    let mut successors: Vec<String> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| panic!("a concurrent refresh failed: {e}"))
                .refresh_token
                .expose()
                .to_owned()
        })
        .collect();
    successors.sort_unstable();
    successors.dedup();
    assert_eq!(
        successors.len(),
        1,
        "every tab must receive the same successor"
    );
    assert_ne!(successors[0], token);
    let sessions = c
        .store
        .active_families(&first.user.id, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1, "one family survives");
    assert_eq!(sessions[0].generation, 1, "rotated exactly once");
    // The successor works and rotates on.
    let next = auth.refresh(&successors[0]).await.unwrap();
    assert_ne!(next.refresh_token.expose(), successors[0]);
}

async fn reuse_after_the_grace_window_revokes_the_family(c: Ctx) {
    let (auth, clock) = auth(&c);
    let first = auth
        .signup("victim@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let stolen = first.refresh_token.expose().to_owned();
    let second = auth.refresh(&stolen).await.unwrap();
    // Inside the window the retired token still yields the same successor.
    clock.0.fetch_add(9_000, Ordering::SeqCst);
    assert_eq!(
        auth.refresh(&stolen).await.unwrap().refresh_token.expose(),
        second.refresh_token.expose()
    );
    // After it, the retired token is reuse: the family dies.
    clock.0.fetch_add(2_000, Ordering::SeqCst);
    assert!(matches!(
        auth.refresh(&stolen).await,
        Err(AuthError::TokenReused)
    ));
    assert!(
        matches!(
            auth.refresh(second.refresh_token.expose()).await,
            Err(AuthError::InvalidToken)
        ),
        "the successor stops working"
    );
    assert!(
        matches!(
            auth.authenticate(second.access_token.expose()).await,
            Err(AuthError::InvalidToken)
        ),
        "and so do its access tokens"
    );
    let events = c.store.audit_events(&first.user.id).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [AUDIT_REFRESH_GRACE, AUDIT_REFRESH_REUSED],
        "the grace-window hit, then the reuse"
    );
    assert!(
        events
            .iter()
            .all(|e| e.family_id.as_deref() == Some(first.session_id.as_str()))
    );
    let f = c.store.family(&first.session_id).await.unwrap().unwrap();
    assert_eq!(f.revoke_reason, Some(RevokeReason::Reuse));
}

/// A slow tab presents a token two rotations back while another tab's
/// refreshes went through: inside the grace window it gets the current
/// successor, not a sign-out; after the window, or three back, it is
/// reuse.
async fn a_slow_tab_two_rotations_back_is_not_theft(c: Ctx) {
    let (auth, clock) = auth(&c);
    // The reported race, ten times over: refresh A to B, then send B and
    // A together. Whichever lands first, both tabs stay signed in.
    for i in 0..10 {
        let s = auth
            .signup(
                &format!("tabs{i}@example.com"),
                &SecretString::from(PASSWORD),
                None,
            )
            .await
            .unwrap();
        let a = s.refresh_token.expose().to_owned();
        let b = auth
            .refresh(&a)
            .await
            .unwrap()
            .refresh_token
            .expose()
            .to_owned();
        clock.0.fetch_add(1000, Ordering::SeqCst);
        let (auth_b, auth_a) = (auth.clone(), auth.clone());
        let tb = tokio::spawn(async move { auth_b.refresh(&b).await });
        let ta = tokio::spawn(async move { auth_a.refresh(&a).await });
        let (rb, ra) = (tb.await.unwrap(), ta.await.unwrap());
        assert!(rb.is_ok(), "round {i}: B refused: {:?}", rb.err());
        assert!(ra.is_ok(), "round {i}: A refused: {:?}", ra.err());
        let f = c.store.family(&s.session_id).await.unwrap().unwrap();
        assert_eq!(f.revoked_at_ms, None, "round {i}: signed out");
    }

    // Sequentially: A -> B -> C, then A (two back) inside the window.
    let s = auth
        .signup("slow@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let a = s.refresh_token.expose().to_owned();
    clock.0.fetch_add(1000, Ordering::SeqCst);
    let b = auth
        .refresh(&a)
        .await
        .unwrap()
        .refresh_token
        .expose()
        .to_owned();
    clock.0.fetch_add(1000, Ordering::SeqCst);
    let cc = auth
        .refresh(&b)
        .await
        .unwrap()
        .refresh_token
        .expose()
        .to_owned();
    clock.0.fetch_add(1000, Ordering::SeqCst);
    let slow = auth.refresh(&a).await.unwrap();
    assert_eq!(
        slow.refresh_token.expose(),
        cc,
        "the slow tab gets the current successor"
    );
    let kinds: Vec<String> = c
        .store
        .audit_events(&s.user.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [AUDIT_REFRESH_GRACE]);
    // Past the window from A's retirement: reuse, the family dies.
    clock.0.fetch_add(9_000, Ordering::SeqCst);
    assert!(matches!(
        auth.refresh(&a).await,
        Err(AuthError::TokenReused)
    ));
    assert!(matches!(
        auth.refresh(&cc).await,
        Err(AuthError::InvalidToken)
    ));

    // Three rotations back is reuse even at once.
    let s = auth
        .signup("three@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let a = s.refresh_token.expose().to_owned();
    let b = auth
        .refresh(&a)
        .await
        .unwrap()
        .refresh_token
        .expose()
        .to_owned();
    let cc = auth
        .refresh(&b)
        .await
        .unwrap()
        .refresh_token
        .expose()
        .to_owned();
    auth.refresh(&cc).await.unwrap();
    assert!(matches!(
        auth.refresh(&a).await,
        Err(AuthError::TokenReused)
    ));
}

/// A session ends its absolute lifetime after login, however often it
/// is refreshed: rotation never extends it, and the refresh token never
/// outlives it.
async fn the_absolute_session_lifetime_is_never_extended(c: Ctx) {
    let (auth, clock) = auth(&c);
    let day = std::time::Duration::from_secs(86_400);
    let auth = auth.with_session_max_age(Some(day));
    let first = auth
        .signup("lifetime@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let started = c.now;
    let end_ms = started.div_euclid(1000) * 1000 + 86_400_000;
    let mut token = first.refresh_token.expose().to_owned();
    // Every six hours, a refresh: each within the day, none extends it.
    for _ in 0..3 {
        clock.0.fetch_add(6 * 3_600_000, Ordering::SeqCst);
        let next = auth.refresh(&token).await.unwrap();
        token = next.refresh_token.expose().to_owned();
        let claims = auth
            .keys()
            .verify_ignoring_expiry(TokenKind::Refresh, &token)
            .unwrap();
        assert_eq!(claims.exp * 1000, end_ms, "the token outlives the session");
        let f = c.store.family(&first.session_id).await.unwrap().unwrap();
        assert_eq!(f.expires_at_ms, end_ms, "rotation extended the session");
        assert!(auth.authenticate(next.access_token.expose()).await.is_ok());
    }
    // Past the day: the session is over, for refresh and for access.
    clock.0.store(end_ms + 1_000, Ordering::SeqCst);
    assert!(matches!(
        auth.refresh(&token).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        auth.authenticate(first.access_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    // Without a limit, refreshes extend a session with each rotation.
    let endless = auth.clone().with_session_max_age(None);
    let again = endless
        .login("lifetime@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    assert_ne!(again.session_id, first.session_id);
    clock.0.fetch_add(29 * 86_400_000, Ordering::SeqCst);
    let r = endless.refresh(again.refresh_token.expose()).await.unwrap();
    let f = c.store.family(&again.session_id).await.unwrap().unwrap();
    assert_eq!(
        f.expires_at_ms,
        (clock.now_ms().div_euclid(1000) + 30 * 86_400) * 1000
    );
    assert!(endless.authenticate(r.access_token.expose()).await.is_ok());
}

async fn expired_and_revoked_tokens_are_rejected(c: Ctx) {
    let (auth, clock) = auth(&c);
    let a = auth
        .signup("exp@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let b = auth
        .login("exp@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    assert!(auth.authenticate(a.access_token.expose()).await.is_ok());
    // Logout revokes that session only.
    auth.logout(a.refresh_token.expose()).await.unwrap();
    assert!(matches!(
        auth.refresh(a.refresh_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        auth.authenticate(a.access_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(auth.authenticate(b.access_token.expose()).await.is_ok());
    // Access tokens expire after 15 minutes (plus leeway).
    clock.0.fetch_add(16 * 60 * 1000, Ordering::SeqCst);
    assert!(matches!(
        auth.authenticate(b.access_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    // Refresh tokens after 30 days.
    let c2 = auth.refresh(b.refresh_token.expose()).await.unwrap();
    clock.0.fetch_add(31 * DAY_MS, Ordering::SeqCst);
    assert!(matches!(
        auth.refresh(c2.refresh_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    // Log out everywhere.
    let d = auth
        .login("exp@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let principal = auth.authenticate(d.access_token.expose()).await.unwrap();
    assert_eq!(
        auth.logout_all(&principal).await.unwrap(),
        2,
        "the expired, unrevoked session b and d"
    );
    assert!(matches!(
        auth.refresh(d.refresh_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
}

async fn twenty_concurrent_signups_one_winner(c: Ctx) {
    let (auth, _) = auth(&c);
    let results = concurrently(20, |_| {
        let auth = auth.clone();
        async move {
            auth.signup("Same@Example.com", &SecretString::from(PASSWORD), None)
                .await
        }
    })
    .await;
    let mut won = 0;
    for r in results {
        match r {
            Ok(_) => won += 1,
            Err(AuthError::EmailTaken) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
}

async fn login_upgrades_outdated_password_hashes(c: Ctx) {
    let s = &c.store;
    // An account whose hash was made with weaker parameters than today's.
    let old = PasswordHasher::new(HashParams {
        memory_kib: 128,
        iterations: 1,
        parallelism: 1,
    })
    .unwrap();
    let old_phc = old.hash(&SecretString::from(PASSWORD)).await.unwrap();
    s.create_user(&User {
        password_hash: Some(old_phc.clone()),
        ..user("old-user", "old@example.com", c.now)
    })
    .await
    .unwrap();
    let (auth, _) = auth(&c);
    // A wrong password changes nothing.
    assert!(matches!(
        auth.login(
            "old@example.com",
            &SecretString::from("wrong password"),
            None
        )
        .await,
        Err(AuthError::InvalidCredentials)
    ));
    assert_eq!(
        s.user_by_id("old-user")
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some(old_phc.as_str())
    );
    // The right one logs in and replaces the hash with today's parameters.
    auth.login("old@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
    let new_phc = s
        .user_by_id("old-user")
        .await
        .unwrap()
        .unwrap()
        .password_hash
        .unwrap();
    assert!(
        new_phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"),
        "{new_phc}"
    );
    // And the new hash works.
    auth.login("old@example.com", &SecretString::from(PASSWORD), None)
        .await
        .unwrap();
}

// ------------------------------------------------------------ the matrix

type CaseFn = fn(Ctx) -> Pin<Box<dyn Future<Output = ()>>>;

struct Case {
    name: &'static str,
    run: CaseFn,
    /// Writes damaged records with the backend's own driver.
    needs_raw_driver: bool,
    /// Holds SQLite's write lock from a connection of its own.
    sqlite_only: bool,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$(Case {
            name: stringify!($name),
            run: |c| Box::pin($name(c)),
            needs_raw_driver: false,
            sqlite_only: false,
        }),*]
    };
}

fn cases() -> Vec<Case> {
    let mut all = cases![
        users_round_trip,
        unique_email_under_20_concurrent_signups,
        duplicate_ids,
        family_for_unknown_user,
        rotation_is_compare_and_swap,
        exactly_one_of_50_concurrent_rotations_wins,
        sessions_listing_and_revocation,
        expired_records_agree,
        audit_events_are_kept_in_order,
        the_ledger_never_grants_past_the_limit,
        take_once_under_50_concurrent_takers,
        expired_one_time_items_never_returned,
        insert_if_absent_under_50_concurrent_inserts,
        status_never_moves_backwards,
        records_list_and_remove,
        records_page_through_a_namespace,
        cas_upsert_refuses_older_version,
        lease_taken_after_expiry_and_old_holder_refused,
        window_counters_exact_under_50_concurrent_hits,
        purge_removes_only_expired,
        fifty_concurrent_refreshes_get_one_successor,
        reuse_after_the_grace_window_revokes_the_family,
        expired_and_revoked_tokens_are_rejected,
        twenty_concurrent_signups_one_winner,
        login_upgrades_outdated_password_hashes,
        active_session_user_only_for_an_active_session,
        the_absolute_session_lifetime_is_never_extended,
        a_slow_tab_two_rotations_back_is_not_theft,
    ];
    all.push(Case {
        name: "a_write_whose_caller_gave_up_is_not_applied",
        run: |c| Box::pin(a_write_whose_caller_gave_up_is_not_applied(c)),
        needs_raw_driver: true,
        sqlite_only: true,
    });
    all.push(Case {
        name: "a_slow_writer_never_stalls_reads",
        run: |c| Box::pin(a_slow_writer_never_stalls_reads(c)),
        needs_raw_driver: true,
        sqlite_only: true,
    });
    all.push(Case {
        name: "corrupt_records_decode_to_errors",
        run: |c| Box::pin(corrupt_records_decode_to_errors(c)),
        needs_raw_driver: true,
        sqlite_only: false,
    });
    all
}

/// One case on a fresh backend, in its own runtime. A Mongo database is
/// dropped even when the case fails.
fn run_trial(kind: Kind, uri: Option<&str>, case: CaseFn) -> Result<(), Failed> {
    let rt = runtime();
    let _enter = rt.enter();
    let now = real_now_ms();
    let opened = rt.block_on(open_backend(kind, uri));
    let ctx = Ctx {
        store: Arc::clone(&opened.store),
        now,
        raw: opened.raw.clone(),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| rt.block_on(case(ctx))));
    rt.block_on(opened.cleanup());
    drop(opened);
    match outcome {
        Ok(()) => Ok(()),
        Err(panic) => resume_unwind(panic),
    }
}

fn backend_trials(kind: Kind, cases: &[Case], probe: bool) -> Vec<Trial> {
    let cases: Vec<&Case> = cases
        .iter()
        .filter(|c| !c.needs_raw_driver || kind.has_raw_driver())
        .filter(|c| !c.sqlite_only || matches!(kind, Kind::Sqlite))
        .collect();
    let name = |c: &Case| format!("{}::{}", kind.name(), c.name);
    match kind.availability(probe) {
        Availability::Ready(uri) => cases
            .iter()
            .map(|c| {
                let (run, uri) = (c.run, uri.clone());
                Trial::test(name(c), move || run_trial(kind, uri.as_deref(), run))
            })
            .collect(),
        Availability::Ignored(why) => {
            println!(
                "{}: {why}; its {} cases are ignored",
                kind.name(),
                cases.len()
            );
            cases
                .iter()
                .map(|c| {
                    let why = why.clone();
                    // Even when run with --include-ignored, it reports
                    // "ignored", never "ok".
                    Trial::ignorable_test(name(c), move || Ok(Completion::ignored_with(why)))
                        .with_ignored_flag(true)
                })
                .collect()
        }
        Availability::Missing(why) => {
            println!("{}: {why}; its {} cases fail", kind.name(), cases.len());
            cases
                .iter()
                .map(|c| {
                    let why = why.clone();
                    Trial::test(name(c), move || Err(Failed::from(why)))
                })
                .collect()
        }
    }
}

fn main() -> ExitCode {
    if let Ok(op) = std::env::var(CHILD_OP_VAR) {
        return child_main(&op);
    }
    let args = Arguments::from_args();
    let cases = cases();
    let mut trials: Vec<Trial> = Kind::ALL
        .iter()
        .flat_map(|&kind| backend_trials(kind, &cases, !args.list))
        .collect();
    trials.extend(ProcOp::ALL.iter().map(|&op| {
        Trial::test(format!("sqlite_two_processes::{}", op.name()), move || {
            two_processes(op)
        })
    }));
    libtest_mimic::run(&args, trials).exit_code()
}

// ------------------------------------------------------------ two processes on one file

/// Set in a child: the operation to attempt (see [`ProcOp`]).
const CHILD_OP_VAR: &str = "ALVRYN_CONTRACT_CHILD";
/// The SQLite file the children share.
const CHILD_DB_VAR: &str = "ALVRYN_CONTRACT_DB";
/// The parent's "now", so both children agree on windows and expiry.
const CHILD_NOW_VAR: &str = "ALVRYN_CONTRACT_NOW";
/// 0 or 1: which child, to make values unique.
const CHILD_ID_VAR: &str = "ALVRYN_CONTRACT_CHILD_ID";

/// Concurrent attempts per child.
const ATTEMPTS: usize = 25;

/// What the two children race on.
#[derive(Clone, Copy, Debug)]
enum ProcOp {
    TakeOnce,
    InsertIfAbsent,
    WindowHits,
    RotateFamily,
    LeaseAcquire,
    LedgerReserve,
    CreateUser,
    Advance,
    UpsertVersioned,
}

impl ProcOp {
    const ALL: [ProcOp; 9] = [
        ProcOp::TakeOnce,
        ProcOp::InsertIfAbsent,
        ProcOp::WindowHits,
        ProcOp::RotateFamily,
        ProcOp::LeaseAcquire,
        ProcOp::LedgerReserve,
        ProcOp::CreateUser,
        ProcOp::Advance,
        ProcOp::UpsertVersioned,
    ];

    fn name(self) -> &'static str {
        match self {
            ProcOp::TakeOnce => "take_once",
            ProcOp::InsertIfAbsent => "insert_if_absent",
            ProcOp::WindowHits => "window_hits",
            ProcOp::RotateFamily => "rotate_family",
            ProcOp::LeaseAcquire => "lease_acquire",
            ProcOp::LedgerReserve => "ledger_reserve",
            ProcOp::CreateUser => "create_user",
            ProcOp::Advance => "advance",
            ProcOp::UpsertVersioned => "upsert_versioned",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == s)
    }

    /// Concurrent attempts per child: 8 reservations of 7 for the ledger
    /// (16 × 7 > 100 across both), 25 otherwise.
    fn attempts(self) -> usize {
        match self {
            ProcOp::LedgerReserve => 8,
            _ => ATTEMPTS,
        }
    }
}

const TAKE_VALUE: &[u8] = b"the one verifier";
const WINDOW_MS: i64 = 60_000;

fn ledger_key() -> KeyFingerprint {
    ledger_key_of("k-two-processes")
}

/// The ledger's key for the key made of `seed`'s bytes, repeated.
fn ledger_key_of(seed: &str) -> KeyFingerprint {
    let bytes: Vec<u8> = seed.bytes().cycle().take(32).collect();
    KeyFingerprint::of(&alvryn_core::secret::SecretBytes::new(bytes))
}

/// A child's role: open the shared file, say `ready`, wait for `go` on
/// stdin, make the attempts concurrently, print one result per line.
fn child_main(op: &str) -> ExitCode {
    let op = ProcOp::parse(op).unwrap_or_else(|| panic!("unknown child operation {op:?}"));
    let path = std::env::var(CHILD_DB_VAR).expect(CHILD_DB_VAR);
    let now: i64 = std::env::var(CHILD_NOW_VAR)
        .expect(CHILD_NOW_VAR)
        .parse()
        .unwrap();
    let id: usize = std::env::var(CHILD_ID_VAR)
        .expect(CHILD_ID_VAR)
        .parse()
        .unwrap();
    let rt = runtime();
    let lines = rt.block_on(async {
        let store = Arc::new(SqliteStore::open(&path).await.unwrap());
        println!("ready");
        std::io::stdout().flush().unwrap();
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        assert_eq!(go.trim(), "go");
        concurrently(op.attempts(), |i| {
            child_attempt(op, Arc::clone(&store), format!("c{id}-{i}"), now)
        })
        .await
    });
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    ExitCode::SUCCESS
}

/// One attempt in a child; the line it prints.
async fn child_attempt(op: ProcOp, s: Arc<SqliteStore>, me: String, now: i64) -> String {
    use alvryn_core::store::{LeaseStore, OneTimeStore, RecordStore, SessionStore, WindowCounters};
    match op {
        ProcOp::TakeOnce => match s.take_once("oauth_state", "s1", now + 1).await.unwrap() {
            Some(v) => format!("some:{}", hex(v.expose())),
            None => "none".into(),
        },
        ProcOp::InsertIfAbsent => {
            match s
                .insert_if_absent(&record("stripe_event", "evt_1", &me, now, None))
                .await
            {
                Ok(()) => format!("ok:{me}"),
                Err(StoreError::Conflict) => "conflict".into(),
                Err(e) => panic!("insert_if_absent: {e:?}"),
            }
        }
        ProcOp::WindowHits => {
            let h = s.hit("login:1.2.3.4", WINDOW_MS, now).await.unwrap();
            format!("{}:{}", h.count, h.resets_at_ms)
        }
        ProcOp::RotateFamily => {
            let to = format!("t1-{me}");
            match s
                .rotate_family(&rotation("f1", "t0", &to, now + 1))
                .await
                .unwrap()
            {
                Some(_) => format!("won:{to}"),
                None => "lost".into(),
            }
        }
        ProcOp::LeaseAcquire => match s
            .acquire(&new_lease("nightly", &me, 60_000, now))
            .await
            .unwrap()
        {
            Some(l) => format!("won:{}:{}", l.holder, l.fence),
            None => "none".into(),
        },
        ProcOp::LedgerReserve => match s.reserve(&ledger_key(), 7, 100).await {
            Ok(r) => format!("granted:{}:{}", r.granted, r.total),
            Err(LedgerError::LimitReached { .. }) => "limit".into(),
            Err(e) => panic!("reserve: {e}"),
        },
        ProcOp::CreateUser => {
            use alvryn_core::store::UserStore;
            match s.create_user(&user(&me, "race@example.com", now)).await {
                Ok(()) => format!("won:{me}"),
                Err(StoreError::Conflict) => "conflict".into(),
                Err(e) => panic!("create_user: {e:?}"),
            }
        }
        ProcOp::Advance => {
            let a = Advance {
                ns: "stripe_event".into(),
                key: "evt_1".into(),
                to: 1,
                data: Some(me.clone().into_bytes()),
                now_ms: now + 1,
            };
            match s.advance(&a).await.unwrap() {
                true => format!("moved:{me}"),
                false => "stale".into(),
            }
        }
        ProcOp::UpsertVersioned => {
            use alvryn_core::store::VersionedStore;
            let version = versioned_attempt(&me);
            let mut v = versioned("sub_1", version, now);
            v.data = me.clone().into_bytes();
            match s.upsert_versioned(&v).await.unwrap() {
                CasOutcome::Applied => format!("applied:{version}"),
                CasOutcome::Stale { current } => {
                    assert!(current >= version, "{current} refused {version}");
                    format!("stale:{version}")
                }
            }
        }
    }
}

/// Attempt `c{child}-{i}` writes version `child * 25 + i + 1`: the two
/// children together write every version from 1 to 50 once.
fn versioned_attempt(me: &str) -> i64 {
    let (child, i) = me.trim_start_matches('c').split_once('-').unwrap();
    child.parse::<i64>().unwrap() * i64::try_from(ATTEMPTS).unwrap() + i.parse::<i64>().unwrap() + 1
}

/// A started child: its stdin, its stdout lines, where its stderr goes.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl Kid {
    fn spawn(op: ProcOp, db: &Path, now: i64, id: usize, dir: &Path) -> Self {
        let stderr = dir.join(format!("child-{id}.stderr"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_OP_VAR, op.name())
            .env(CHILD_DB_VAR, db)
            .env(CHILD_NOW_VAR, now.to_string())
            .env(CHILD_ID_VAR, id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line).unwrap() {
            0 => None,
            _ => Some(line.trim_end().to_owned()),
        }
    }

    fn expect_ready(&mut self) {
        let line = self.read_line();
        assert_eq!(
            line.as_deref(),
            Some("ready"),
            "child did not start: {}",
            self.stderr_text()
        );
    }

    fn go(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Every remaining line, once the child has exited successfully.
    fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(l) = self.read_line() {
            lines.push(l);
        }
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "child failed ({status}): {}",
            self.stderr_text()
        );
        lines
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        // A child still running here means the parent failed: stop it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two processes, each with its own `SqliteStore` on one file, race on
/// `op`; the combined outcome must be what one process would see.
fn two_processes(op: ProcOp) -> Result<(), Failed> {
    let rt = runtime();
    let now = real_now_ms();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alvryn.db");
    let store = rt.block_on(SqliteStore::open(&path)).unwrap();
    rt.block_on(two_processes_setup(op, &store, now));

    let mut kids: Vec<Kid> = (0..2)
        .map(|id| Kid::spawn(op, &path, now, id, dir.path()))
        .collect();
    kids.iter_mut().for_each(Kid::expect_ready);
    kids.iter_mut().for_each(Kid::go);
    let per_kid: Vec<Vec<String>> = kids.iter_mut().map(Kid::finish).collect();
    for lines in &per_kid {
        assert_eq!(
            lines.len(),
            op.attempts(),
            "one line per attempt: {lines:?}"
        );
    }
    let lines: Vec<String> = per_kid.into_iter().flatten().collect();
    rt.block_on(two_processes_check(op, &store, now, &lines));
    Ok(())
}

async fn two_processes_setup(op: ProcOp, s: &SqliteStore, now: i64) {
    use alvryn_core::store::{OneTimeStore, SessionStore, UserStore};
    match op {
        ProcOp::TakeOnce => s
            .put_once(&item("oauth_state", "s1", TAKE_VALUE, now + 60_000), now)
            .await
            .unwrap(),
        ProcOp::RotateFamily => {
            s.create_user(&user("u1", "a@example.com", now))
                .await
                .unwrap();
            s.create_family(&family("f1", "u1", "t0", now))
                .await
                .unwrap();
        }
        ProcOp::Advance => {
            use alvryn_core::store::RecordStore;
            s.insert_if_absent(&record("stripe_event", "evt_1", "received", now, None))
                .await
                .unwrap();
        }
        ProcOp::InsertIfAbsent
        | ProcOp::WindowHits
        | ProcOp::LeaseAcquire
        | ProcOp::LedgerReserve
        | ProcOp::CreateUser
        | ProcOp::UpsertVersioned => {}
    }
}

async fn two_processes_check(op: ProcOp, s: &SqliteStore, now: i64, lines: &[String]) {
    use alvryn_core::store::{LeaseStore, OneTimeStore, RecordStore, SessionStore};
    let won = |prefix: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    };
    match op {
        ProcOp::TakeOnce => {
            assert_eq!(
                won("some:"),
                [hex(TAKE_VALUE).as_str()],
                "exactly one of 50 takers gets the item: {lines:?}"
            );
            assert_eq!(won("none").len(), 49, "{lines:?}");
            assert_eq!(
                s.take_once("oauth_state", "s1", now + 2).await.unwrap(),
                None
            );
        }
        ProcOp::InsertIfAbsent => {
            let winners = won("ok:");
            assert_eq!(winners.len(), 1, "exactly one insert wins: {lines:?}");
            assert_eq!(won("conflict").len(), 49, "{lines:?}");
            let stored = s
                .record("stripe_event", "evt_1", now + 1)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.data, winners[0].as_bytes());
        }
        ProcOp::WindowHits => {
            let end = now.div_euclid(WINDOW_MS) * WINDOW_MS + WINDOW_MS;
            let mut counts: Vec<u64> = lines
                .iter()
                .map(|l| {
                    let (count, resets) = l.split_once(':').unwrap();
                    assert_eq!(resets.parse::<i64>().unwrap(), end, "{l}");
                    count.parse().unwrap()
                })
                .collect();
            counts.sort_unstable();
            assert_eq!(counts, (1..=50).collect::<Vec<u64>>());
        }
        ProcOp::RotateFamily => {
            let winners = won("won:");
            assert_eq!(winners.len(), 1, "exactly one rotation wins: {lines:?}");
            assert_eq!(won("lost").len(), 49, "{lines:?}");
            let f = s.family("f1").await.unwrap().unwrap();
            assert_eq!(f.generation, 1);
            assert_eq!(f.current.token_hash, TokenHash::of(winners[0]));
        }
        ProcOp::LeaseAcquire => {
            let winners = won("won:");
            assert_eq!(winners.len(), 1, "exactly one acquirer wins: {lines:?}");
            assert_eq!(won("none").len(), 49, "{lines:?}");
            let (holder, fence) = winners[0].rsplit_once(':').unwrap();
            assert_eq!(fence, "1");
            let l = s.lease("nightly").await.unwrap().unwrap();
            assert_eq!((l.holder.as_str(), l.fence), (holder, 1));
        }
        ProcOp::LedgerReserve => {
            let mut granted = 0;
            let mut totals = Vec::new();
            for l in lines {
                if l == "limit" {
                    continue;
                }
                let mut parts = l.strip_prefix("granted:").unwrap().split(':');
                granted += parts.next().unwrap().parse::<u64>().unwrap();
                totals.push(parts.next().unwrap().parse::<u64>().unwrap());
            }
            let n = totals.len();
            totals.sort_unstable();
            totals.dedup();
            assert_eq!(totals.len(), n, "overlapping grants: {lines:?}");
            assert_eq!(granted, 100, "{lines:?}");
            assert_eq!(s.reserved(&ledger_key()).await.unwrap(), 100);
        }
        ProcOp::CreateUser => {
            use alvryn_core::store::UserStore;
            let winners = won("won:");
            assert_eq!(winners.len(), 1, "exactly one sign-up wins: {lines:?}");
            assert_eq!(won("conflict").len(), 49, "{lines:?}");
            let u = s.user_by_email("race@example.com").await.unwrap().unwrap();
            assert_eq!(u.id, winners[0]);
        }
        ProcOp::Advance => {
            let winners = won("moved:");
            assert_eq!(winners.len(), 1, "exactly one move wins: {lines:?}");
            assert_eq!(won("stale").len(), 49, "{lines:?}");
            let r = s
                .record("stripe_event", "evt_1", now + 2)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((r.status, r.data.as_slice()), (1, winners[0].as_bytes()));
        }
        ProcOp::UpsertVersioned => {
            use alvryn_core::store::VersionedStore;
            // Version 50 is the newest: whatever the order, it is applied
            // and it is what stays.
            assert!(
                lines.iter().any(|l| l == "applied:50"),
                "the newest version was refused: {lines:?}"
            );
            let v = s.versioned("subscription", "sub_1").await.unwrap().unwrap();
            assert_eq!((v.version, v.data.as_slice()), (50, b"c1-24".as_slice()));
        }
    }
}
