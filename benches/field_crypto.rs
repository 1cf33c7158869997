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

use alvryn::core::crypto::{
    AeadBackend, AeadKey, FieldCipher, FieldContext, KEY_LEN, KeyMaterial, KeySet, NONCE_LEN,
    TAG_LEN,
};
use alvryn::core::secret::SecretBytes;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};
use criterion::{criterion_group, criterion_main};

const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
const FIXED_NONCE: [u8; NONCE_LEN] = [0x24; NONCE_LEN];
const SIZES: &[(usize, &str)] = &[
    (64, "64B"),
    (1 << 10, "1KiB"),
    (16 << 10, "16KiB"),
    (1 << 20, "1MiB"),
];

fn context() -> FieldContext<'static> {
    FieldContext::new(
        "provider_tokens",
        "65f1c0ffee0123456789abcd",
        "refresh_token",
    )
}

/// The associated data the envelope builds for `context()` (its layout
/// is documented in `alvryn_core::crypto`): the format version, each
/// part after its length (all below 128, so one varint byte each), zero
/// padding to a multiple of 64 bytes.
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

/// A fresh random nonce, drawn as the envelope draws it.
fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u32().to_le_bytes());
    nonce
}

fn raw_key(backend: AeadBackend) -> AeadKey {
    AeadKey::new(backend, &SecretBytes::copy_from(&KEY)).unwrap()
}

/// A fresh cipher per benchmark, so no key comes anywhere near its 2^32
/// limit; ledger blocks of 2^20 make (in-memory) refills rare.
fn field_cipher(backend: AeadBackend) -> FieldCipher {
    let key = KeyMaterial::fingerprinted(SecretBytes::copy_from(&KEY));
    FieldCipher::builder(KeySet::single(key))
        .backend(backend)
        .block_size(1 << 20)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

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
                b.iter(|| {
                    let mut buf = Vec::with_capacity(pt.len() + TAG_LEN);
                    buf.extend_from_slice(black_box(&pt));
                    let tag = key.seal_in_place(&FIXED_NONCE, &[], &mut buf).unwrap();
                    buf.extend_from_slice(&tag);
                    buf
                });
            });

            let aad = bound_aad();
            group.bench_function(id(backend, "raw_bound", size), |b| {
                b.iter(|| {
                    let nonce = random_nonce();
                    let mut buf = Vec::with_capacity(NONCE_LEN + pt.len() + TAG_LEN);
                    buf.extend_from_slice(&nonce);
                    buf.extend_from_slice(black_box(&pt));
                    let tag = key
                        .seal_in_place(&nonce, black_box(&aad), &mut buf[NONCE_LEN..])
                        .unwrap();
                    buf.extend_from_slice(&tag);
                    buf
                });
            });

            let cipher = field_cipher(backend);
            group.bench_function(id(backend, "envelope", size), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    rt.block_on(async {
                        for _ in 0..iters {
                            black_box(
                                cipher
                                    .encrypt_bytes(black_box(&ctx), black_box(&pt))
                                    .await
                                    .unwrap(),
                            );
                        }
                    });
                    start.elapsed()
                });
            });

            let cipher = field_cipher(backend);
            group.bench_function(id(backend, "envelope_text", size), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    rt.block_on(async {
                        for _ in 0..iters {
                            black_box(
                                cipher
                                    .encrypt(black_box(&ctx), black_box(&pt))
                                    .await
                                    .unwrap(),
                            );
                        }
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
            let mut ct = pt.clone();
            let tag = key.seal_in_place(&FIXED_NONCE, &[], &mut ct).unwrap();
            group.bench_function(id(backend, "raw", size), |b| {
                b.iter(|| {
                    let mut buf = black_box(&ct).to_vec();
                    key.open_in_place(&FIXED_NONCE, &[], &mut buf, &tag)
                        .unwrap();
                    buf
                });
            });

            let aad = bound_aad();
            let mut bound_ct = pt.clone();
            let bound_tag = key
                .seal_in_place(&FIXED_NONCE, &aad, &mut bound_ct)
                .unwrap();
            group.bench_function(id(backend, "raw_bound", size), |b| {
                b.iter(|| {
                    let mut buf = black_box(&bound_ct).to_vec();
                    key.open_in_place(&FIXED_NONCE, black_box(&aad), &mut buf, &bound_tag)
                        .unwrap();
                    buf
                });
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
