//! The provider-token migrations on the embedded store: tokens per second
//! and memory, for `encrypt-refresh-tokens` and then `rewrap`.
//!
//! `cargo bench --bench migration` seeds 1,000,000 plaintext tokens
//! (`ALVRYN_BENCH_TOKENS` to change it) in a SQLite file in a temporary
//! folder, runs each migration in-process the way `alvryn migrate ... --run`
//! does (pages of 1,000, 64 writes at once), and prints a markdown table:
//! tokens per second, and the resident memory at the start of the run and
//! its highest sample during it (read from `/proc/self/status` after every
//! page), which stays flat when memory does not grow with the number of
//! tokens. Under `cargo test` (no `--bench` argument) it runs 2,000 tokens
//! as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use alvryn::core::auth::{Clock as _, SystemClock};
use alvryn::core::crypto::{FieldCipher, KeyMaterial, KeySet};
use alvryn::core::oauth::migrate::{MigrationOptions, encrypt_refresh_tokens, rewrap};
use alvryn::core::oauth::{Provider, STATUS_PLAINTEXT, TOKEN_NS, TokenRecord, token_key};
use alvryn::core::secret::SecretBytes;
use alvryn::core::store::sqlite::SqliteStore;
use alvryn::core::store::{Record, StoreBackend};
use futures_util::StreamExt as _;

/// Resident memory now, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cipher(store: &Arc<dyn StoreBackend>, active: u8, previous: Option<u8>) -> FieldCipher {
    let key = |b: u8| KeyMaterial::fingerprinted(SecretBytes::copy_from(&[b; 32]));
    let mut keys = KeySet::single(key(active));
    if let Some(p) = previous {
        keys = keys.with_previous(key(p));
    }
    FieldCipher::builder(keys, Arc::clone(store) as _)
        .build()
        .unwrap()
}

async fn seed(store: &Arc<dyn StoreBackend>, n: usize) {
    let base = SystemClock.now_ms();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let store = Arc::clone(store);
            async move {
                let user = format!("user{i:08}");
                let data = TokenRecord {
                    refresh_token: Some(format!("1//0plain-refresh-token-{i:08}-abcdefghijklmnop")),
                    ..TokenRecord::default()
                };
                store
                    .insert_if_absent(&Record {
                        ns: TOKEN_NS.into(),
                        key: token_key(&user, Provider::Google),
                        owner: Some(user),
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
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("ALVRYN_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000_000 } else { 2_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StoreBackend> = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .unwrap(),
        );
        let t = Instant::now();
        seed(&store, n).await;
        let seeded = t.elapsed();
        let options = MigrationOptions {
            run: true,
            ..MigrationOptions::default()
        };
        let now = || SystemClock.now_ms();
        println!("{n} tokens on the embedded store (seeded in {seeded:.1?})\n");
        println!("| migration | time | tokens/s | RSS at start | highest RSS during |");
        println!("|---|---|---|---|---|");
        for step in ["encrypt-refresh-tokens", "rewrap"] {
            let start_rss = rss_kib();
            let peak = AtomicU64::new(start_rss);
            let on_progress = |_| {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
            };
            let t = Instant::now();
            let report = match step {
                "encrypt-refresh-tokens" => {
                    let c = cipher(&store, 1, None);
                    encrypt_refresh_tokens(store.as_ref(), &c, options, &now, &on_progress).await
                }
                _ => {
                    let c = cipher(&store, 2, Some(1));
                    rewrap(store.as_ref(), &c, options, &now, &on_progress).await
                }
            }
            .unwrap();
            let took = t.elapsed();
            assert_eq!(report.migrated, n as u64, "{report:?}");
            assert_eq!(report.failed, 0);
            println!(
                "| {step} | {:.1} s | {:.0} | {} MiB | {} MiB |",
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64(),
                start_rss / 1024,
                peak.load(Ordering::Relaxed) / 1024
            );
        }
    });
}
