//! Token and session throughput: access-token issue and verify, a full
//! refresh rotation on the embedded (SQLite) store, and login with an
//! unknown email against login with a wrong password (they should cost
//! the same: both run one argon2id verification).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use alvryn_core::auth::{Auth, HashParams, PasswordHasher};
use alvryn_core::secret::{SecretBytes, SecretString};
use alvryn_core::store::TokenStore;
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings, TokenKind};
use criterion::{Criterion, criterion_group, criterion_main};

fn keys() -> JwtKeys {
    JwtKeys::new(
        JwtSettings::new("https://api.example.com", "alvryn"),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"bench-access-secret-0123456789abcdef01234"),
            None,
        )
        .unwrap(),
        HmacSecrets::new(
            &SecretBytes::copy_from(b"bench-refresh-secret-0123456789abcdef0123"),
            None,
        )
        .unwrap(),
    )
}

fn tokens(c: &mut Criterion) {
    let k = keys();
    let now = 1_790_000_000;
    let claims = k.claims(
        TokenKind::Access,
        "eskDXOV7R2c511pTTEEn8w",
        "WRovHd6tlAE_JEFeR2DYSQ",
        "SzDVOyqIaWQgIz3lmktDIg",
        now,
    );
    let token = k.sign(&claims).unwrap();
    let mut g = c.benchmark_group("jwt");
    g.bench_function("access_issue", |b| {
        b.iter(|| k.sign(std::hint::black_box(&claims)).unwrap())
    });
    // First sight: parse, MAC and claims (the path `verify` takes for a
    // token this thread has not verified before).
    g.bench_function("access_verify_first_sight", |b| {
        b.iter(|| {
            k.verify_ignoring_expiry(TokenKind::Access, std::hint::black_box(&token))
                .unwrap()
        })
    });
    // Every later request with the same token: SHA-256, a lookup and the
    // time checks.
    g.bench_function("access_verify_remembered", |b| {
        b.iter(|| {
            k.verify(TokenKind::Access, std::hint::black_box(&token), now + 1)
                .unwrap()
        })
    });
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn rotation(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (auth, mut refresh) = rt.block_on(async {
        let store: Arc<dyn TokenStore> = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .unwrap(),
        );
        let hasher = PasswordHasher::new(HashParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        let auth = Auth::new(store, Arc::new(keys()), hasher);
        let issued = auth
            .signup(
                "bench@example.com",
                &SecretString::from("correct horse battery staple"),
                None,
            )
            .await
            .unwrap();
        (auth, issued.refresh_token.expose().to_owned())
    });
    let mut g = c.benchmark_group("session");
    g.bench_function("refresh_rotation_sqlite", |b| {
        b.iter(|| {
            let issued = rt.block_on(auth.refresh(&refresh)).unwrap();
            refresh = issued.refresh_token.expose().to_owned();
        });
    });
    g.finish();
}

fn login(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let auth = rt.block_on(async {
        let store: Arc<dyn TokenStore> = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .unwrap(),
        );
        let auth = Auth::new(
            store,
            Arc::new(keys()),
            PasswordHasher::new(HashParams::OWASP).unwrap(),
        );
        auth.signup(
            "known@example.com",
            &SecretString::from("correct horse battery staple"),
            None,
        )
        .await
        .unwrap();
        auth
    });
    let wrong = SecretString::from("not the right password");
    let mut g = c.benchmark_group("login_owasp_argon2id");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    g.bench_function("wrong_password", |b| {
        b.iter(|| {
            assert!(
                rt.block_on(auth.login("known@example.com", &wrong, None))
                    .is_err()
            )
        })
    });
    g.bench_function("unknown_email", |b| {
        b.iter(|| {
            assert!(
                rt.block_on(auth.login("unknown@example.com", &wrong, None))
                    .is_err()
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = tokens, rotation, login
}
criterion_main!(benches);
