//! The envelope's cost as a ratio to the raw AEAD, measured paired.
//!
//! `benches/field_crypto.rs` (criterion) gives each variant's time, but
//! it times variants one after another, seconds apart; on a shared
//! machine whose speed drifts by ±10% over seconds, the ratio of two such
//! medians inherits the drift. This bench interleaves: each round times
//! a short batch of every variant back to back (in rotating order), takes
//! the ratio within the round, and reports the median of the per-round
//! ratios, so drift cancels out. The variants are the same as in
//! `field_crypto.rs` (`raw`, `raw_bound`, `envelope`).
//!
//! `cargo bench --bench field_crypto_ratio` prints a markdown table; under
//! `cargo test` (no `--bench` argument) it runs one tiny round at 64 B as
//! a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use alvryn::core::crypto::{
    AeadBackend, AeadKey, FieldCipher, FieldContext, KEY_LEN, KeyMaterial, KeySet, NONCE_LEN,
    TAG_LEN,
};
use alvryn::core::secret::SecretBytes;

const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
const FIXED_NONCE: [u8; NONCE_LEN] = [0x24; NONCE_LEN];
const SIZES: &[(usize, &str)] = &[
    (64, "64 B"),
    (1 << 10, "1 KiB"),
    (16 << 10, "16 KiB"),
    (1 << 20, "1 MiB"),
];

fn context() -> FieldContext<'static> {
    FieldContext::new(
        "provider_tokens",
        "65f1c0ffee0123456789abcd",
        "refresh_token",
    )
}

/// As in `field_crypto.rs`: the envelope's associated data for
/// `context()`, built once.
fn bound_aad() -> Vec<u8> {
    let ctx = context();
    let mut aad = vec![1u8];
    for part in [ctx.collection, ctx.record_id, ctx.field] {
        // One-byte LEB128 lengths only (all parts here are shorter).
        assert!(part.len() < 0x80);
        aad.push(part.len() as u8);
        aad.extend_from_slice(part.as_bytes());
    }
    aad.resize(aad.len().next_multiple_of(64), 0);
    aad
}

fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u32().to_le_bytes());
    nonce
}

/// Times `iters` calls of `f`; nanoseconds per call.
fn batch(iters: u64, f: &mut dyn FnMut(u64)) -> f64 {
    let start = Instant::now();
    f(iters);
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    backend: &'static str,
    size: &'static str,
    /// Median ns per call of raw, raw_bound, envelope.
    times: [f64; 3],
    /// Median per-round ratio of envelope to raw and to raw_bound.
    ratios: [f64; 2],
}

/// Runs `rounds` rounds of the three variants, each batch about
/// `target` long.
fn measure(
    backend: &'static str,
    size: &'static str,
    rounds: usize,
    target: Duration,
    variants: &mut [&mut dyn FnMut(u64); 3],
) -> Row {
    // Calibrate on the envelope, the slowest.
    let mut iters = 1u64;
    while iters < 1 << 30 {
        let t = batch(iters, variants[2]) * iters as f64;
        if t >= target.as_nanos() as f64 {
            break;
        }
        iters *= 2;
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let mut t = [0.0; 3];
        for k in 0..3 {
            let v = (round + k) % 3;
            t[v] = batch(iters, variants[v]);
        }
        for v in 0..3 {
            times[v].push(t[v]);
        }
        ratios[0].push(t[2] / t[0]);
        ratios[1].push(t[2] / t[1]);
    }
    let [a, b, c] = times;
    let [r0, r1] = ratios;
    Row {
        backend,
        size,
        times: [median(a), median(b), median(c)],
        ratios: [median(r0), median(r1)],
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_pct(r: f64) -> String {
    format!("{:+.0}%", (r - 1.0) * 100.0).replace('-', "−")
}

fn print(op: &str, rows: &[Row]) {
    println!("{op} (median of paired rounds):\n");
    println!(
        "| backend | size | raw | raw_bound | envelope | envelope vs raw | envelope vs raw_bound |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.size,
            fmt_ns(r.times[0]),
            fmt_ns(r.times[1]),
            fmt_ns(r.times[2]),
            fmt_pct(r.ratios[0]),
            fmt_pct(r.ratios[1]),
        );
    }
    println!();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Under `cargo test` (a debug build): one round of the smallest size.
    let (rounds, target, sizes) = if full {
        (41, Duration::from_millis(2), SIZES)
    } else {
        (1, Duration::from_micros(50), &SIZES[..1])
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ctx = context();
    let aad = bound_aad();
    let (mut seal_rows, mut open_rows) = (Vec::new(), Vec::new());
    for &backend in AeadBackend::ALL {
        let key = AeadKey::new(backend, &SecretBytes::copy_from(&KEY)).unwrap();
        let cipher = FieldCipher::builder(KeySet::single(KeyMaterial::fingerprinted(
            SecretBytes::copy_from(&KEY),
        )))
        .backend(backend)
        .block_size(1 << 24)
        .build()
        .unwrap();
        for &(len, size) in sizes {
            let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();

            let mut raw = |n: u64| {
                for _ in 0..n {
                    let mut buf = Vec::with_capacity(pt.len() + TAG_LEN);
                    buf.extend_from_slice(black_box(&pt));
                    let tag = key.seal_in_place(&FIXED_NONCE, &[], &mut buf).unwrap();
                    buf.extend_from_slice(&tag);
                    black_box(buf);
                }
            };
            let mut bound = |n: u64| {
                for _ in 0..n {
                    let nonce = random_nonce();
                    let mut buf = Vec::with_capacity(NONCE_LEN + pt.len() + TAG_LEN);
                    buf.extend_from_slice(&nonce);
                    buf.extend_from_slice(black_box(&pt));
                    let tag = key
                        .seal_in_place(&nonce, black_box(&aad), &mut buf[NONCE_LEN..])
                        .unwrap();
                    buf.extend_from_slice(&tag);
                    black_box(buf);
                }
            };
            let mut envelope = |n: u64| {
                rt.block_on(async {
                    for _ in 0..n {
                        black_box(
                            cipher
                                .encrypt_bytes(black_box(&ctx), black_box(&pt))
                                .await
                                .unwrap(),
                        );
                    }
                });
            };
            seal_rows.push(measure(
                backend.name(),
                size,
                rounds,
                target,
                &mut [&mut raw, &mut bound, &mut envelope],
            ));

            let mut ct = pt.clone();
            let tag = key.seal_in_place(&FIXED_NONCE, &[], &mut ct).unwrap();
            let mut bound_ct = pt.clone();
            let bound_tag = key
                .seal_in_place(&FIXED_NONCE, &aad, &mut bound_ct)
                .unwrap();
            let blob = rt.block_on(cipher.encrypt_bytes(&ctx, &pt)).unwrap();
            let mut raw = |n: u64| {
                for _ in 0..n {
                    let mut buf = black_box(&ct).to_vec();
                    key.open_in_place(&FIXED_NONCE, &[], &mut buf, &tag)
                        .unwrap();
                    black_box(buf);
                }
            };
            let mut bound = |n: u64| {
                for _ in 0..n {
                    let mut buf = black_box(&bound_ct).to_vec();
                    key.open_in_place(&FIXED_NONCE, black_box(&aad), &mut buf, &bound_tag)
                        .unwrap();
                    black_box(buf);
                }
            };
            let mut envelope = |n: u64| {
                for _ in 0..n {
                    black_box(
                        cipher
                            .decrypt_bytes(black_box(&ctx), black_box(&blob))
                            .unwrap(),
                    );
                }
            };
            open_rows.push(measure(
                backend.name(),
                size,
                rounds,
                target,
                &mut [&mut raw, &mut bound, &mut envelope],
            ));
        }
    }
    print("Seal", &seal_rows);
    print("Open", &open_rows);
}
