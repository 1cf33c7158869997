//! What the field-encryption benches share: the key, the context, the
//! baselines' associated data and nonce, the cipher under test.

use std::hint::black_box;

use std::sync::Arc;

use alvryn::core::crypto::{
    AeadBackend, AeadKey, FieldCipher, FieldContext, KEY_LEN, KeyMaterial, KeySet, MemoryLedger,
    NONCE_LEN, TAG_LEN,
};
use alvryn::core::secret::SecretBytes;

pub const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
pub const FIXED_NONCE: [u8; NONCE_LEN] = [0x24; NONCE_LEN];

pub fn context() -> FieldContext<'static> {
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
pub fn bound_aad() -> Vec<u8> {
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

/// A fresh random nonce, drawn as the envelope draws it: from the
/// backend's fork-safe generator (`aws_lc_rs::rand` on aws-lc, the
/// operating system on rustcrypto).
#[inline]
pub fn random_nonce(key: &AeadKey) -> [u8; NONCE_LEN] {
    key.random_nonce().unwrap()
}

pub fn raw_key(backend: AeadBackend) -> AeadKey {
    AeadKey::new(backend, &SecretBytes::copy_from(&KEY)).unwrap()
}

/// A fresh cipher, so no key comes anywhere near its 2^32 limit; ledger
/// blocks of 2^24 from the first make (in-memory) refills rare.
pub fn field_cipher(backend: AeadBackend) -> FieldCipher {
    let key = KeyMaterial::fingerprinted(SecretBytes::copy_from(&KEY));
    FieldCipher::builder(KeySet::single(key), Arc::new(MemoryLedger::new()))
        .backend(backend)
        .first_block(1 << 24)
        .block_size(1 << 24)
        .build()
        .unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

pub fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `raw` seal: one allocation, seal in place under a fixed nonce with no
/// associated data, append the tag.
#[inline]
pub fn seal_raw(key: &AeadKey, pt: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(pt.len() + TAG_LEN);
    buf.extend_from_slice(black_box(pt));
    let tag = key.seal_in_place(&FIXED_NONCE, &[], &mut buf).unwrap();
    buf.extend_from_slice(&tag);
    buf
}

/// `raw_bound` seal: the envelope's AEAD job by hand, a fresh nonce and
/// the prebuilt associated data `aad`.
#[inline]
pub fn seal_bound(key: &AeadKey, aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let nonce = random_nonce(key);
    let mut buf = Vec::with_capacity(NONCE_LEN + pt.len() + TAG_LEN);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(black_box(pt));
    let tag = key
        .seal_in_place(&nonce, black_box(aad), &mut buf[NONCE_LEN..])
        .unwrap();
    buf.extend_from_slice(&tag);
    buf
}

/// A ciphertext and tag for the open baselines, under `FIXED_NONCE`.
pub fn sealed(key: &AeadKey, aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
    let mut ct = pt.to_vec();
    let tag = key.seal_in_place(&FIXED_NONCE, aad, &mut ct).unwrap();
    (ct, tag)
}

/// `raw` and `raw_bound` open: copy the ciphertext, open in place.
#[inline]
pub fn open_raw(key: &AeadKey, aad: &[u8], ct: &[u8], tag: &[u8; TAG_LEN]) -> Vec<u8> {
    let mut buf = black_box(ct).to_vec();
    key.open_in_place(&FIXED_NONCE, black_box(aad), &mut buf, tag)
        .unwrap();
    buf
}

/// Drives `n` calls of the async `f` on `rt` (entered once), keeping
/// each result alive until the next call; panics on an error.
pub fn run_async<F, Fut, T, E>(rt: &tokio::runtime::Runtime, n: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    rt.block_on(async {
        for _ in 0..n {
            black_box(f().await.unwrap());
        }
    });
}
