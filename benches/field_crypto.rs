//! Field encryption throughput: the envelope (`FieldCipher`) against the
//! raw AEAD under it, per backend and size.
//!
//! Benchmark ids read `seal/<backend>/<variant>/<size>` and
//! `open/<backend>/<variant>/<size>`, with variants
//!
//! * `raw`: `AeadKey` alone, fixed nonce, no associated data: one
//!   allocation, seal (or open) in place, append the tag. The floor any
//!   caller of the AEAD pays.
//! * `raw_bound`: `AeadKey` alone doing the same cryptographic job as the
//!   envelope: a fresh random nonce per seal, drawn as the envelope draws
//!   it, and the same associated-data bytes (built once, outside the
//!   loop). What a caller binding values to their place by hand would pay;
//!   the difference to `envelope` is the envelope's own cost (header, key
//!   ring, usage counting, building the associated data).
//! * `envelope`: `FieldCipher::encrypt_bytes` / `decrypt_bytes` (binary
//!   form: header, random nonce, bound context, usage counting; opening
//!   returns `SecretBytes`, which wipes the plaintext when dropped).
//! * `envelope_text`: `FieldCipher::encrypt` / `decrypt` (the same plus
//!   base64), reported apart since base64 is a transport cost.
//!
//! `encrypt` is async; it is driven by a current-thread tokio runtime
//! entered once per batch (`iter_custom`), so per iteration it adds a
//! future poll and nothing else.
//!
//! `scripts/bench/field-crypto` runs this bench and prints the README's
//! table with the ratios.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use alvryn::core::crypto::AeadBackend;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use criterion::{criterion_group, criterion_main};

mod common;
use common::{
    bound_aad, context, field_cipher, open_raw, plaintext, raw_key, run_async, runtime, seal_bound,
    seal_raw, sealed,
};

const SIZES: &[(usize, &str)] = &[
    (64, "64B"),
    (1 << 10, "1KiB"),
    (16 << 10, "16KiB"),
    (1 << 20, "1MiB"),
];

fn id(backend: AeadBackend, variant: &str, size: &str) -> BenchmarkId {
    BenchmarkId::new(format!("{}/{variant}", backend.name()), size)
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

fn seal(c: &mut Criterion) {
    let rt = runtime();
    let ctx = context();
    let mut group = c.benchmark_group("seal");
    configure(&mut group);
    for &backend in AeadBackend::ALL {
        for &(len, size) in SIZES {
            let pt = plaintext(len);
            group.throughput(Throughput::Bytes(len as u64));

            let key = raw_key(backend);
            group.bench_function(id(backend, "raw", size), |b| {
                b.iter(|| seal_raw(&key, &pt));
            });

            let aad = bound_aad();
            group.bench_function(id(backend, "raw_bound", size), |b| {
                b.iter(|| seal_bound(&key, &aad, &pt));
            });

            let cipher = field_cipher(backend);
            group.bench_function(id(backend, "envelope", size), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    run_async(&rt, iters, || {
                        cipher.encrypt_bytes(black_box(&ctx), black_box(&pt))
                    });
                    start.elapsed()
                });
            });

            let cipher = field_cipher(backend);
            group.bench_function(id(backend, "envelope_text", size), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    run_async(&rt, iters, || {
                        cipher.encrypt(black_box(&ctx), black_box(&pt))
                    });
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let rt = runtime();
    let ctx = context();
    let mut group = c.benchmark_group("open");
    configure(&mut group);
    for &backend in AeadBackend::ALL {
        for &(len, size) in SIZES {
            let pt = plaintext(len);
            group.throughput(Throughput::Bytes(len as u64));

            let key = raw_key(backend);
            let (ct, tag) = sealed(&key, &[], &pt);
            group.bench_function(id(backend, "raw", size), |b| {
                b.iter(|| open_raw(&key, &[], &ct, &tag));
            });

            let aad = bound_aad();
            let (bound_ct, bound_tag) = sealed(&key, &aad, &pt);
            group.bench_function(id(backend, "raw_bound", size), |b| {
                b.iter(|| open_raw(&key, &aad, &bound_ct, &bound_tag));
            });

            let cipher = field_cipher(backend);
            let blob = rt.block_on(cipher.encrypt_bytes(&ctx, &pt)).unwrap();
            group.bench_function(id(backend, "envelope", size), |b| {
                b.iter(|| {
                    cipher
                        .decrypt_bytes(black_box(&ctx), black_box(&blob))
                        .unwrap()
                });
            });

            let text = rt.block_on(cipher.encrypt(&ctx, &pt)).unwrap();
            group.bench_function(id(backend, "envelope_text", size), |b| {
                b.iter(|| cipher.decrypt(black_box(&ctx), black_box(&text)).unwrap());
            });
        }
    }
    group.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
