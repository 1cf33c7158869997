//! The envelope's cost as a ratio to the raw AEAD, measured paired.
//!
//! `benches/field_crypto.rs` (criterion) gives each variant's time, but
//! it times variants one after another, seconds apart; on a shared
//! machine whose speed drifts by ±10% over seconds, the ratio of two such
//! medians inherits the drift. This bench interleaves: each round times
//! a short batch of every variant back to back (in rotating order), takes
//! the ratio within the round, and reports the median of the per-round
//! ratios, so drift cancels out. The variants are the same as in
//! `field_crypto.rs` (`raw`, `raw_bound`, `envelope`, `text`); opening
//! also times `wipe` (zeroizing a buffer of the value's size), what the
//! envelope's `SecretBytes` does on drop and the bare AEAD does not.
//!
//! Two figures per row, against the rules of issue 8: `envelope −
//! raw_bound` (less `wipe` when opening) in ns, budget 40 ns at every
//! size; and `text / envelope`, target at most 1.3 from 1 KiB up on
//! aws-lc.
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

/// One line of a table: median times and the paired figures.
struct Row {
    backend: &'static str,
    size: &'static str,
    /// Median ns per call of each variant, in `Variant` order.
    times: Vec<f64>,
    /// Median per-round `envelope - raw_bound` (minus `wipe` when
    /// measured), in ns: the envelope's own cost, budget 40 ns.
    over_bound: f64,
    /// Median per-round `text / envelope`: the text form's cost.
    text_ratio: f64,
}

// Indices of the variants (`raw` is 0).
const BOUND: usize = 1;
const ENVELOPE: usize = 2;
const TEXT: usize = 3;
const WIPE: usize = 4;

/// Runs `rounds` rounds of the variants, each batch about `target` long
/// (calibrated on the text form, the slowest), in rotating order.
fn measure(
    backend: &'static str,
    size: &'static str,
    rounds: usize,
    target: Duration,
    variants: &mut [&mut dyn FnMut(u64)],
) -> Row {
    let n = variants.len();
    let mut iters = 1u64;
    while iters < 1 << 30 {
        let t = batch(iters, variants[TEXT]) * iters as f64;
        if t >= target.as_nanos() as f64 {
            break;
        }
        iters *= 2;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); n];
    let (mut over, mut text) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut t = vec![0.0; n];
        for k in 0..n {
            let v = (round + k) % n;
            t[v] = batch(iters, variants[v]);
        }
        let wipe = t.get(WIPE).copied().unwrap_or(0.0);
        over.push(t[ENVELOPE] - t[BOUND] - wipe);
        text.push(t[TEXT] / t[ENVELOPE]);
        for (v, tv) in t.into_iter().enumerate() {
            times[v].push(tv);
        }
    }
    Row {
        backend,
        size,
        times: times.into_iter().map(median).collect(),
        over_bound: median(over),
        text_ratio: median(text),
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

fn print(op: &str, rows: &[Row]) {
    let wipe = rows.first().is_some_and(|r| r.times.len() > WIPE);
    println!("{op} (median of paired rounds):\n");
    if wipe {
        println!(
            "| backend | size | raw | raw_bound | envelope | text | wipe | envelope − raw_bound − wipe | text / envelope |"
        );
        println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    } else {
        println!(
            "| backend | size | raw | raw_bound | envelope | text | envelope − raw_bound | text / envelope |"
        );
        println!("|---|---|--:|--:|--:|--:|--:|--:|");
    }
    for r in rows {
        let times: Vec<String> = r.times.iter().map(|&t| fmt_ns(t)).collect();
        println!(
            "| {} | {} | {} | {:+.0} ns | {:.2}× |",
            r.backend,
            r.size,
            times.join(" | "),
            r.over_bound,
            r.text_ratio,
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
            let mut text = |n: u64| {
                run_async(&rt, n, || cipher.encrypt(black_box(&ctx), black_box(&pt)));
            };
            seal_rows.push(measure(
                backend.name(),
                size,
                rounds,
                target,
                &mut [&mut raw, &mut bound, &mut envelope, &mut text],
            ));

            let (ct, tag) = sealed(&key, &[], &pt);
            let (bound_ct, bound_tag) = sealed(&key, &aad, &pt);
            let blob = rt.block_on(cipher.encrypt_bytes(&ctx, &pt)).unwrap();
            let sealed_text = rt.block_on(cipher.encrypt(&ctx, &pt)).unwrap();
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
            let mut text = |n: u64| {
                for _ in 0..n {
                    black_box(
                        cipher
                            .decrypt(black_box(&ctx), black_box(&sealed_text))
                            .unwrap(),
                    );
                }
            };
            // What the envelope's `SecretBytes` does when it drops and the
            // AEAD alone does not: wipe the plaintext. Excluded from the
            // envelope's budget.
            let mut wiped = vec![0u8; len];
            let mut wipe = |n: u64| {
                for _ in 0..n {
                    zeroize::Zeroize::zeroize(black_box(wiped.as_mut_slice()));
                }
            };
            open_rows.push(measure(
                backend.name(),
                size,
                rounds,
                target,
                &mut [&mut raw, &mut bound, &mut envelope, &mut text, &mut wipe],
            ));
        }
    }
    print("Seal", &seal_rows);
    print("Open", &open_rows);
}
