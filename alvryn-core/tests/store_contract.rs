//! The store contract: every `TokenStore` backend must pass every case.
//!
//! Backends: the in-memory store and the embedded SQLite store (on real
//! files) always; MongoDB through the protocol-compatible stand-in that
//! `scripts/test` starts (`ALVRYN_TEST_MONGO_STANDIN_URI`, secantusdb);
//! and a real MongoDB whenever `ALVRYN_TEST_MONGODB_URI` is set. Each
//! Mongo case runs in a fresh database.
//!
//! The cases cover the stores directly (compare-and-swap, uniqueness,
//! ledger) and the `Auth` service on top of them (50 concurrent refreshes,
//! reuse detection), since races are properties of the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use alvryn_core::auth::{AUDIT_REFRESH_REUSED, Auth, AuthError, Clock, HashParams, PasswordHasher};
use alvryn_core::billing::PlanName;
use alvryn_core::crypto::{KeyId, LedgerError};
use alvryn_core::secret::{SecretBytes, SecretString};
use alvryn_core::store::mongo::MongoStore;
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::store::{
    MemoryStore, RefreshFamily, RefreshSlot, RevokeReason, Rotation, StoreError, TokenHash,
    TokenStore, User,
};
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings};

use alvryn_core::crypto::UsageLedger;
use alvryn_core::store::{ServiceTokenStore, TokenStoreService};

/// A backend under test, with whatever keeps it alive (a temp folder).
struct Backend {
    store: Arc<dyn TokenStore>,
    ledger: Arc<dyn UsageLedger>,
    _guard: Option<tempfile::TempDir>,
}

fn require_services() -> bool {
    std::env::var_os("ALVRYN_TEST_REQUIRE_SERVICES").is_some()
}

async fn memory() -> Option<Backend> {
    let store = Arc::new(MemoryStore::new());
    Some(Backend {
        store: store.clone(),
        ledger: store,
        _guard: None,
    })
}

async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("alvryn.db"))
            .await
            .unwrap(),
    );
    Some(Backend {
        store: store.clone(),
        ledger: store,
        _guard: Some(dir),
    })
}

/// The SQLite store seen through its `tower::Service` view under a
/// timeout and a concurrency limit, and back through `ServiceTokenStore`:
/// the layered stack must keep every promise of the plain store.
async fn sqlite_via_tower() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("alvryn.db"))
        .await
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .concurrency_limit(8)
        .timeout(std::time::Duration::from_secs(10))
        .service(TokenStoreService::new(store.clone()));
    Some(Backend {
        store: Arc::new(ServiceTokenStore::new(svc)),
        ledger: Arc::new(store),
        _guard: Some(dir),
    })
}

async fn mongo_at(var: &str, required: bool) -> Option<Backend> {
    let Ok(uri) = std::env::var(var) else {
        assert!(
            !required,
            "{var} is not set: run the suite with scripts/test"
        );
        eprintln!("SKIPPED: {var} not set");
        return None;
    };
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let mut name = [0u8; 8];
    rand::fill(&mut name[..]);
    let db = client.database(&format!(
        "contract_{}",
        name.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let store = Arc::new(MongoStore::open(db).await.unwrap());
    Some(Backend {
        store: store.clone(),
        ledger: store,
        _guard: None,
    })
}

async fn mongo_standin() -> Option<Backend> {
    mongo_at("ALVRYN_TEST_MONGO_STANDIN_URI", require_services()).await
}

async fn mongo_real() -> Option<Backend> {
    // Optional everywhere: only run when a real MongoDB is offered.
    mongo_at("ALVRYN_TEST_MONGODB_URI", false).await
}

const NOW: i64 = 1_790_000_000_000;

fn user(id: &str, email: &str) -> User {
    User {
        id: id.into(),
        email: email.into(),
        password_hash: Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        plan: PlanName::free(),
        created_at_ms: NOW,
    }
}

fn family(id: &str, user_id: &str, token: &str, created: i64) -> RefreshFamily {
    RefreshFamily {
        id: id.into(),
        user_id: user_id.into(),
        created_at_ms: created,
        last_used_at_ms: created,
        expires_at_ms: created + 30 * 86_400_000,
        user_agent: Some("Mozilla/5.0 test".into()),
        current: RefreshSlot {
            token_hash: TokenHash::of(token),
            jti: format!("jti-{token}"),
            issued_at: created / 1000,
        },
        previous: None,
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
        expires_at_ms: now_ms + 30 * 86_400_000,
    }
}

// ---------------------------------------------------------------- cases

async fn users_round_trip(b: &Backend) {
    let s = Arc::clone(&b.store);
    let u = user("u1", "alice@example.com");
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
        ..user("u2", "carol@example.com")
    };
    s.create_user(&oauth_only).await.unwrap();
    assert_eq!(s.user_by_id("u2").await.unwrap(), Some(oauth_only));
    // Same email, other id: taken.
    assert!(matches!(
        s.create_user(&user("u3", "alice@example.com")).await,
        Err(StoreError::EmailTaken)
    ));
}

async fn unique_email_under_20_concurrent_signups(b: &Backend) {
    let s = Arc::clone(&b.store);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                s.create_user(&user(&format!("racer-{i}"), "race@example.com"))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::EmailTaken) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one concurrent sign-up must win");
    assert!(s.user_by_email("race@example.com").await.unwrap().is_some());
}

async fn rotation_is_compare_and_swap(b: &Backend) {
    let s = Arc::clone(&b.store);
    s.create_user(&user("u1", "a@example.com")).await.unwrap();
    s.create_family(&family("f1", "u1", "t0", NOW))
        .await
        .unwrap();
    assert_eq!(
        s.family("f1").await.unwrap().unwrap(),
        family("f1", "u1", "t0", NOW)
    );
    // Wrong expected token: nothing changes.
    assert_eq!(
        s.rotate_family(&rotation("f1", "nope", "t1", NOW + 1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.rotate_family(&rotation("unknown", "t0", "t1", NOW + 1))
            .await
            .unwrap(),
        None
    );
    let after = s
        .rotate_family(&rotation("f1", "t0", "t1", NOW + 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.current.token_hash, TokenHash::of("t1"));
    assert_eq!(after.current.jti, "jti-t1");
    let prev = after.previous.clone().unwrap();
    assert_eq!(
        (prev.token_hash, prev.rotated_at_ms),
        (TokenHash::of("t0"), NOW + 5)
    );
    assert_eq!((after.generation, after.last_used_at_ms), (1, NOW + 5));
    assert_eq!(s.family("f1").await.unwrap().unwrap(), after);
    // The old token cannot rotate again.
    assert_eq!(
        s.rotate_family(&rotation("f1", "t0", "t9", NOW + 6))
            .await
            .unwrap(),
        None
    );
    // Expired families do not rotate.
    let mut f2 = family("f2", "u1", "x0", NOW);
    f2.expires_at_ms = NOW + 10;
    s.create_family(&f2).await.unwrap();
    assert_eq!(
        s.rotate_family(&rotation("f2", "x0", "x1", NOW + 10))
            .await
            .unwrap(),
        None
    );
    // Revoked families do not rotate.
    assert!(
        s.revoke_family("f1", RevokeReason::Logout, NOW + 7)
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_family("f1", RevokeReason::Logout, NOW + 8)
            .await
            .unwrap(),
        "already revoked"
    );
    assert_eq!(
        s.rotate_family(&rotation("f1", "t1", "t2", NOW + 9))
            .await
            .unwrap(),
        None
    );
    let f = s.family("f1").await.unwrap().unwrap();
    assert_eq!(
        (f.revoked_at_ms, f.revoke_reason),
        (Some(NOW + 7), Some(RevokeReason::Logout))
    );
}

async fn exactly_one_of_50_concurrent_rotations_wins(b: &Backend) {
    let s = Arc::clone(&b.store);
    s.create_user(&user("u1", "a@example.com")).await.unwrap();
    s.create_family(&family("f1", "u1", "t0", NOW))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                s.rotate_family(&rotation("f1", "t0", &format!("t1-{i}"), NOW + 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(f) = t.await.unwrap() {
            winners.push(f);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation may win");
    let stored = s.family("f1").await.unwrap().unwrap();
    assert_eq!(stored.current, winners[0].current);
    assert_eq!(stored.generation, 1);
}

async fn sessions_listing_and_revocation(b: &Backend) {
    let s = Arc::clone(&b.store);
    s.create_user(&user("u1", "a@example.com")).await.unwrap();
    s.create_user(&user("u2", "b@example.com")).await.unwrap();
    for (i, fid) in ["f1", "f2", "f3"].iter().enumerate() {
        s.create_family(&family(
            fid,
            "u1",
            &format!("t{i}"),
            NOW + i64::try_from(i).unwrap() * 1000,
        ))
        .await
        .unwrap();
    }
    let mut expired = family("f4", "u1", "t4", NOW);
    expired.expires_at_ms = NOW + 500;
    s.create_family(&expired).await.unwrap();
    s.create_family(&family("g1", "u2", "g", NOW))
        .await
        .unwrap();
    let ids = |v: Vec<RefreshFamily>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.active_families("u1", NOW + 5000).await.unwrap()),
        ["f3", "f2", "f1"],
        "newest first, expired excluded"
    );
    assert!(
        s.revoke_family("f2", RevokeReason::Revoked, NOW + 6000)
            .await
            .unwrap()
    );
    assert_eq!(
        ids(s.active_families("u1", NOW + 7000).await.unwrap()),
        ["f3", "f1"]
    );
    assert_eq!(
        s.revoke_user_families("u1", RevokeReason::LogoutAll, NOW + 8000)
            .await
            .unwrap(),
        3,
        "f1, f3 and the expired f4"
    );
    assert!(
        s.active_families("u1", NOW + 9000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.active_families("u2", NOW + 9000).await.unwrap()),
        ["g1"],
        "other users untouched"
    );
    assert_eq!(
        s.family("f2").await.unwrap().unwrap().revoke_reason,
        Some(RevokeReason::Revoked)
    );
}

async fn audit_events_are_kept_in_order(b: &Backend) {
    let s = Arc::clone(&b.store);
    use alvryn_core::store::AuditEvent;
    for (i, kind) in ["a", "b", "c"].iter().enumerate() {
        let e = AuditEvent {
            at_ms: NOW + i64::try_from(i).unwrap(),
            kind: (*kind).into(),
            user_id: "u1".into(),
            family_id: (i == 1).then(|| "f1".into()),
        };
        s.record_audit(&e).await.unwrap();
    }
    s.record_audit(&AuditEvent {
        at_ms: NOW,
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
    assert_eq!(events[0].family_id, None);
}

async fn the_ledger_never_grants_past_the_limit(b: &Backend) {
    let s = Arc::clone(&b.ledger);
    let key = KeyId::new("k-contract").unwrap();
    assert_eq!(s.reserved(&key).await.unwrap(), 0);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = Arc::clone(&s);
            let key = key.clone();
            tokio::spawn(async move { s.reserve(&key, 7, 100).await })
        })
        .collect();
    let mut granted = 0;
    let mut totals = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
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
    assert_eq!(s.reserved(&key).await.unwrap(), 100);
    assert!(matches!(
        s.reserve(&key, 1, 100).await,
        Err(LedgerError::LimitReached { .. })
    ));
}

// ------------------------------------------------------- auth on top

struct ManualClock(AtomicI64);
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn auth(store: Arc<dyn TokenStore>) -> (Auth, Arc<ManualClock>) {
    let keys = JwtKeys::new(
        JwtSettings::new("https://api.example.com", "alvryn"),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"access-secret-for-the-contract-suite-0001"),
            None,
        ),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"refresh-secret-for-the-contract-suite-001"),
            None,
        ),
    );
    let clock = Arc::new(ManualClock(AtomicI64::new(NOW)));
    let hasher = PasswordHasher::new(HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    })
    .unwrap();
    (
        Auth::new(store, Arc::new(keys), hasher).with_clock(clock.clone()),
        clock,
    )
}

const PASSWORD: &str = "correct horse battery staple";

async fn fifty_concurrent_refreshes_get_one_successor(b: &Backend) {
    let s = Arc::clone(&b.store);
    let (auth, clock) = auth(Arc::clone(&s));
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
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let auth = auth.clone();
            let token = token.clone();
            tokio::spawn(async move { auth.refresh(&token).await })
        })
        .collect();
    let mut successors = Vec::new();
    for t in tasks {
        let issued = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a concurrent refresh failed: {e}"));
        successors.push(issued.refresh_token.expose().to_owned());
    }
    successors.dedup();
    assert_eq!(
        successors.len(),
        1,
        "every tab must receive the same successor"
    );
    assert_ne!(successors[0], token);
    let sessions = s
        .active_families(&first.user.id, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1, "one family survives");
    assert_eq!(sessions[0].generation, 1, "rotated exactly once");
    // The successor works and rotates on.
    let next = auth.refresh(&successors[0]).await.unwrap();
    assert_ne!(next.refresh_token.expose(), successors[0]);
}

async fn reuse_after_the_grace_window_revokes_the_family(b: &Backend) {
    let s = Arc::clone(&b.store);
    let (auth, clock) = auth(Arc::clone(&s));
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
    let events = s.audit_events(&first.user.id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, AUDIT_REFRESH_REUSED);
    assert_eq!(
        events[0].family_id.as_deref(),
        Some(first.session_id.as_str())
    );
    let f = s.family(&first.session_id).await.unwrap().unwrap();
    assert_eq!(f.revoke_reason, Some(RevokeReason::Reuse));
}

async fn expired_and_revoked_tokens_are_rejected(b: &Backend) {
    let s = Arc::clone(&b.store);
    let (auth, clock) = auth(Arc::clone(&s));
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
    let c = auth.refresh(b.refresh_token.expose()).await.unwrap();
    clock.0.fetch_add(31 * 86_400_000, Ordering::SeqCst);
    assert!(matches!(
        auth.refresh(c.refresh_token.expose()).await,
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

async fn twenty_concurrent_signups_one_winner(b: &Backend) {
    let s = Arc::clone(&b.store);
    let (auth, _) = auth(s);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move {
                auth.signup("Same@Example.com", &SecretString::from(PASSWORD), None)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(AuthError::EmailTaken) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
}

async fn login_upgrades_outdated_password_hashes(b: &Backend) {
    let s = Arc::clone(&b.store);
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
        ..user("old-user", "old@example.com")
    })
    .await
    .unwrap();
    let (auth, _) = auth(Arc::clone(&s));
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

// ------------------------------------------------------- the matrix

macro_rules! contract {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let Some(b) = super::$backend().await else {
                            return;
                        };
                        super::$name(&b).await;
                    }
                };
            }
            case!(users_round_trip);
            case!(unique_email_under_20_concurrent_signups);
            case!(rotation_is_compare_and_swap);
            case!(exactly_one_of_50_concurrent_rotations_wins);
            case!(sessions_listing_and_revocation);
            case!(audit_events_are_kept_in_order);
            case!(the_ledger_never_grants_past_the_limit);
            case!(fifty_concurrent_refreshes_get_one_successor);
            case!(reuse_after_the_grace_window_revokes_the_family);
            case!(expired_and_revoked_tokens_are_rejected);
            case!(twenty_concurrent_signups_one_winner);
            case!(login_upgrades_outdated_password_hashes);
        }
    };
}

contract!(memory);
contract!(sqlite);
contract!(sqlite_via_tower);
contract!(mongo_standin);
contract!(mongo_real);
