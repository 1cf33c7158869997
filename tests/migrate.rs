//! `alvryn migrate encrypt-refresh-tokens` and `alvryn migrate rewrap`
//! end to end, on the embedded store (a real file), on the MongoDB
//! stand-in, and on a real MongoDB when `ALVRYN_TEST_MONGODB_URI` is set:
//! 10,000 users with plaintext provider tokens (1,000 on the stand-in:
//! seeding 10,000 users there took 330 s, 16 ms a write, and the whole
//! scenario would not fit the CI budget; 1,000 take under 2 minutes); a
//! dry run
//! changes nothing; runs killed with `kill -9` part-way, at several
//! points, then rerun, leave every token sealed exactly once and opening
//! to its original value; a rerun finds nothing to do. The same for
//! `rewrap` after a key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alvryn::core::crypto::{FieldCipher, FieldContext, KeyMaterial, KeySet, MemoryLedger};
use alvryn::core::oauth::{
    Provider, STATUS_FIRST_SEALED, STATUS_PLAINTEXT, TOKEN_COLLECTION, TOKEN_NS, TokenRecord,
    token_key,
};
use alvryn::core::secret::SecretBytes;
use alvryn::core::store::mongo::MongoStore;
use alvryn::core::store::sqlite::SqliteStore;
use alvryn::core::store::{Record, RecordCursor, RecordFilter, StoreBackend, User};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt as _;
use support::{alvryn, service};

/// Users on the embedded store and a real MongoDB.
const USERS: usize = 10_000;
/// Users on the MongoDB stand-in (see the module docs).
const STANDIN_USERS: usize = 1_000;
const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];
const JWT: &str = "migrate-access-secret-0123456789abcdef01234";
const JWT_REFRESH: &str = "migrate-refresh-secret-0123456789abcdef0123";

fn b64(k: &[u8; 32]) -> String {
    STANDARD.encode(k)
}

/// The original plaintext token of user `i`.
fn original(i: usize) -> String {
    format!(
        "1//0plain-google-refresh-token-of-user-{i:05}-{}",
        i * 7919 % 10007
    )
}

fn user_id(i: usize) -> String {
    format!("user{i:05}")
}

/// Where the data lives and how the CLI reaches it.
struct Target {
    users: usize,
    store: Arc<dyn StoreBackend>,
    dir: tempfile::TempDir,
    mongo_uri: Option<String>,
}

impl Target {
    /// The CLI with this target's store and the given keys.
    fn cli(&self, args: &[&str], active: &[u8; 32], previous: Option<&[u8; 32]>) -> Command {
        let mut c = alvryn();
        c.current_dir(self.dir.path())
            .arg("migrate")
            .args(args)
            .args(["--batch", "50"])
            .env("FIELD_ENCRYPTION_KEY", b64(active))
            .env("ALVRYN_LOG", "warn");
        if let Some(p) = previous {
            c.env("FIELD_ENCRYPTION_PREVIOUS_KEYS", b64(p));
        }
        if let Some(uri) = &self.mongo_uri {
            c.env("MONGO_URI", uri)
                .env("JWT_SECRET", JWT)
                .env("JWT_REFRESH_SECRET", JWT_REFRESH);
        }
        c
    }

    async fn all(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .records(
                    TOKEN_NS,
                    &RecordFilter {
                        limit: 1000,
                        after: after.take(),
                        ..RecordFilter::default()
                    },
                    now_ms(),
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(RecordCursor::of(last));
            out.extend(page);
        }
        out
    }

    /// How many records have a status of at least `status`, up to `cap`.
    async fn at_least(&self, status: u32, cap: usize) -> usize {
        let mut n = 0;
        for s in status..status + 4 {
            let page = self
                .store
                .records(
                    TOKEN_NS,
                    &RecordFilter {
                        status: Some(s.into()),
                        limit: cap,
                        ..RecordFilter::default()
                    },
                    now_ms(),
                )
                .await
                .unwrap();
            n += page.len();
        }
        n
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn cipher() -> FieldCipher {
    let key = |k: &[u8; 32]| KeyMaterial::fingerprinted(SecretBytes::copy_from(k));
    FieldCipher::builder(
        KeySet::single(key(&K2)).with_previous(key(&K1)),
        Arc::new(MemoryLedger::new()),
    )
    .build()
    .unwrap()
}

fn key_id(k: &[u8; 32]) -> String {
    KeyMaterial::fingerprinted(SecretBytes::copy_from(k))
        .id()
        .to_string()
}

/// 10,000 users, each with a plaintext Google refresh token as an older
/// version stored it.
async fn seed(store: &Arc<dyn StoreBackend>, users: usize) {
    let base = now_ms();
    futures_util::stream::iter(0..users)
        .map(|i| {
            let store = Arc::clone(store);
            async move {
                let id = user_id(i);
                store
                    .create_user(&User {
                        id: id.clone(),
                        email: format!("{id}@example.com"),
                        password_hash: None,
                        plan: alvryn::core::billing::PlanName::free(),
                        created_at_ms: base,
                    })
                    .await
                    .unwrap();
                let data = TokenRecord {
                    refresh_token: Some(original(i)),
                    scope: Some("openid email".into()),
                    ..TokenRecord::default()
                };
                store
                    .insert_if_absent(&Record {
                        ns: TOKEN_NS.into(),
                        key: token_key(&id, Provider::Google),
                        owner: Some(id),
                        status: STATUS_PLAINTEXT,
                        data: data.to_bytes(),
                        created_at_ms: base + i64::try_from(i).unwrap(),
                        updated_at_ms: base,
                        expires_at_ms: None,
                    })
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

/// Every record is intact: plaintext and unchanged, or sealed once under
/// one of `keys` and opening to the original. Returns (plaintext, sealed
/// per key id).
async fn check_every_token(t: &Target, keys: &[&[u8; 32]]) -> (usize, Vec<(String, usize)>) {
    let cipher = cipher();
    let ids: Vec<String> = keys.iter().map(|k| key_id(k)).collect();
    let mut plain = 0;
    let mut sealed = vec![0usize; keys.len()];
    let records = t.all().await;
    assert_eq!(records.len(), t.users, "no record lost or added");
    for r in records {
        let i: usize = r.key[4..9].parse().unwrap();
        let tr = TokenRecord::from_record(&r).unwrap();
        let value = tr.refresh_token.unwrap();
        if r.status == STATUS_PLAINTEXT {
            assert_eq!(value, original(i), "a plaintext token changed");
            plain += 1;
            continue;
        }
        assert!(r.status >= STATUS_FIRST_SEALED);
        let id = FieldCipher::key_id_of(&value).unwrap().to_string();
        let k = ids
            .iter()
            .position(|x| *x == id)
            .expect("sealed under a known key");
        sealed[k] += 1;
        let owner = user_id(i);
        let ctx = FieldContext::new(TOKEN_COLLECTION, &owner, "google.refresh_token");
        let opened = cipher
            .decrypt(&ctx, &value)
            .expect("opens for its own user");
        // Sealed exactly once: the plaintext is the token, not another
        // ciphertext.
        assert_eq!(opened.expose(), original(i).as_bytes());
        // Bound to its user: the same value on another user does not open.
        let other = user_id((i + 1) % t.users);
        let elsewhere = FieldContext::new(TOKEN_COLLECTION, &other, "google.refresh_token");
        assert!(cipher.decrypt(&elsewhere, &value).is_err());
    }
    (plain, ids.into_iter().zip(sealed).collect())
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `c` and kills it with SIGKILL once `progress()` reaches
/// `threshold`; `true` if it was killed part-way, `false` if it had
/// already finished.
async fn kill_at<F, Fut>(mut c: Command, threshold: usize, progress: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = usize>,
{
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if progress().await >= threshold {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "the migration made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn scenario(t: Target) {
    let users = t.users;
    let share = |percent: usize| users * percent / 100;
    let started = Instant::now();
    seed(&t.store, users).await;
    eprintln!("seeded {users} users in {:?}", started.elapsed());

    // A dry run counts and writes nothing.
    let out = t
        .cli(&["encrypt-refresh-tokens"], &K1, None)
        .output()
        .unwrap();
    let s = summary(&out);
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["needed"], users);
    assert_eq!(s["migrated"], 0);
    assert_eq!(s["plaintext_left"], users);
    assert_eq!(check_every_token(&t, &[&K1]).await.0, users);

    // Killed part-way at several points; each time every token is either
    // untouched or sealed once.
    let mut killed = 0;
    for threshold in [share(5), share(30), share(65)] {
        let c = t.cli(&["encrypt-refresh-tokens", "--run"], &K1, None);
        if kill_at(c, threshold, || t.at_least(STATUS_FIRST_SEALED, threshold)).await {
            killed += 1;
        }
        let (plain, sealed) = check_every_token(&t, &[&K1]).await;
        assert_eq!(plain + sealed[0].1, users);
        assert!(sealed[0].1 >= threshold);
    }
    assert!(killed >= 2, "only {killed} of 3 runs were caught part-way");
    eprintln!("encrypt kills done at {:?}", started.elapsed());

    // A rerun finishes the job.
    let s = summary(
        &t.cli(&["encrypt-refresh-tokens", "--run"], &K1, None)
            .output()
            .unwrap(),
    );
    assert_eq!(s["plaintext_left"], 0);
    assert_eq!(s["failed"], 0);
    let (plain, sealed) = check_every_token(&t, &[&K1]).await;
    assert_eq!((plain, sealed[0].1), (0, users));

    // And another finds nothing to do.
    let s = summary(
        &t.cli(&["encrypt-refresh-tokens", "--run"], &K1, None)
            .output()
            .unwrap(),
    );
    assert_eq!(
        (s["needed"].as_u64(), s["migrated"].as_u64()),
        (Some(0), Some(0))
    );

    // Rotation: K2 active, K1 previous. The dry run reports what is left
    // under K1.
    let s = summary(&t.cli(&["rewrap"], &K2, Some(&K1)).output().unwrap());
    assert_eq!(s["needed"], users);
    assert_eq!(s["values_by_key"][key_id(&K1)], users);
    assert_eq!(s["migrated"], 0);

    // A rewrap moves each record one status on (2 to 3).
    let mut killed = 0;
    for threshold in [share(8), share(50)] {
        let c = t.cli(&["rewrap", "--run"], &K2, Some(&K1));
        if kill_at(c, threshold, || {
            t.at_least(STATUS_FIRST_SEALED + 1, threshold)
        })
        .await
        {
            killed += 1;
        }
        let (plain, sealed) = check_every_token(&t, &[&K1, &K2]).await;
        assert_eq!(plain, 0);
        assert_eq!(sealed[0].1 + sealed[1].1, users);
        assert!(sealed[1].1 >= threshold);
    }
    assert!(killed >= 1, "no rewrap run was caught part-way");

    let s = summary(
        &t.cli(&["rewrap", "--run"], &K2, Some(&K1))
            .output()
            .unwrap(),
    );
    assert_eq!(s["failed"], 0);
    assert_eq!(s["values_by_key"][key_id(&K2)], users);
    assert!(s["values_by_key"].get(key_id(&K1)).is_none(), "{s}");
    let (_, sealed) = check_every_token(&t, &[&K1, &K2]).await;
    assert_eq!((sealed[0].1, sealed[1].1), (0, users));
    let s = summary(
        &t.cli(&["rewrap", "--run"], &K2, Some(&K1))
            .output()
            .unwrap(),
    );
    assert_eq!(
        (s["needed"].as_u64(), s["migrated"].as_u64()),
        (Some(0), Some(0))
    );
    eprintln!("{users} users: done in {:?}", started.elapsed());
}

/// A fresh database on the MongoDB at `base`, the scenario on it, and the
/// database dropped.
async fn on_mongo(base: &str, users: usize) {
    let mut suffix = [0u8; 6];
    rand::fill(&mut suffix[..]);
    let db: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let db = format!("migrate_{db}");
    let uri = match base.split_once("/?") {
        Some((host, query)) => format!("{host}/{db}?{query}"),
        None => format!("{}/{db}", base.trim_end_matches('/')),
    };
    let store: Arc<dyn StoreBackend> = Arc::new(MongoStore::connect(&uri).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    scenario(Target {
        users,
        store,
        dir,
        mongo_uri: Some(uri.clone()),
    })
    .await;
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("alvryn-data");
    std::fs::create_dir_all(&data).unwrap();
    let store: Arc<dyn StoreBackend> =
        Arc::new(SqliteStore::open(data.join("alvryn.db")).await.unwrap());
    scenario(Target {
        users: USERS,
        store,
        dir,
        mongo_uri: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_on_the_mongodb_stand_in() {
    let Some(base) = service("ALVRYN_TEST_MONGO_STANDIN_URI") else {
        return;
    };
    let users = std::env::var("ALVRYN_TEST_MIGRATE_STANDIN_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STANDIN_USERS);
    on_mongo(&base, users).await;
}

/// Only when `ALVRYN_TEST_MONGODB_URI` names a real MongoDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_on_a_real_mongodb() {
    let Some(base) = std::env::var("ALVRYN_TEST_MONGODB_URI")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!("SKIPPED: ALVRYN_TEST_MONGODB_URI not set");
        return;
    };
    on_mongo(&base, USERS).await;
}

#[test]
fn migrations_refuse_to_run_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.current_dir(dir.path())
        .args(["migrate", "encrypt-refresh-tokens", "--run"]);
    let out = support::run(c);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("FIELD_ENCRYPTION_KEY"),
        "{}",
        out.stderr
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is created"
    );
}
