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

use alvryn::core::crypto::AeadBackend;

mod common;
use common::{
    bound_aad, context, field_cipher, open_raw, plaintext, raw_key, run_async, runtime, seal_bound,
    seal_raw, sealed,
};

const SIZES: &[(usize, &str)] = &[
    (64, "64 B"),
    (1 << 10, "1 KiB"),
    (16 << 10, "16 KiB"),
    (1 << 20, "1 MiB"),
];

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
    let rt = runtime();
    let ctx = context();
    let aad = bound_aad();
    let (mut seal_rows, mut open_rows) = (Vec::new(), Vec::new());
    for &backend in AeadBackend::ALL {
        let key = raw_key(backend);
        let cipher = field_cipher(backend);
        for &(len, size) in sizes {
            let pt = plaintext(len);

            let mut raw = |n: u64| {
                for _ in 0..n {
                    black_box(seal_raw(&key, &pt));
                }
            };
            let mut bound = |n: u64| {
                for _ in 0..n {
                    black_box(seal_bound(&key, &aad, &pt));
                }
            };
            let mut envelope = |n: u64| {
                run_async(&rt, n, || {
                    cipher.encrypt_bytes(black_box(&ctx), black_box(&pt))
                });
            };
            seal_rows.push(measure(
                backend.name(),
                size,
                rounds,
                target,
                &mut [&mut raw, &mut bound, &mut envelope],
            ));

            let (ct, tag) = sealed(&key, &[], &pt);
            let (bound_ct, bound_tag) = sealed(&key, &aad, &pt);
            let blob = rt.block_on(cipher.encrypt_bytes(&ctx, &pt)).unwrap();
            let mut raw = |n: u64| {
                for _ in 0..n {
                    black_box(open_raw(&key, &[], &ct, &tag));
                }
            };
            let mut bound = |n: u64| {
                for _ in 0..n {
                    black_box(open_raw(&key, &aad, &bound_ct, &bound_tag));
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
