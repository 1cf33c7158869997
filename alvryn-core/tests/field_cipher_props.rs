//! Property tests of `FieldCipher` on every compiled-in AEAD backend.
//!
//! Each test creates one current-thread tokio runtime and one proptest
//! runner and blocks on the async `encrypt`/`encrypt_bytes` per case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::fmt::Debug;

use alvryn_core::crypto::{
    AeadBackend, CipherError, FieldCipher, FieldContext, KEY_LEN, KeyId, KeyMaterial, KeySet,
    MemoryLedger,
};
use alvryn_core::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

type Key = [u8; KEY_LEN];

/// Bytes of associated data the cipher builds on the stack (see
/// `with_aad` in `crypto/mod.rs`); above it, on the heap.
const AAD_STACK: usize = 128;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Runs `test` over `cases` inputs from `strategy`; panics with the
/// minimal failing input. No regression files are written.
fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn material(key: &Key) -> KeyMaterial {
    KeyMaterial::fingerprinted(SecretBytes::copy_from(key))
}

fn cipher_with(keys: KeySet, backend: AeadBackend) -> FieldCipher {
    FieldCipher::builder(keys, std::sync::Arc::new(MemoryLedger::new()))
        .backend(backend)
        .build()
        .unwrap()
}

fn cipher(key: &Key, backend: AeadBackend) -> FieldCipher {
    cipher_with(KeySet::single(material(key)), backend)
}

/// Any Unicode, 0..300 chars; half the time short, so that whole
/// contexts fit the stack buffer as well as overflow it.
fn ctx_string() -> impl Strategy<Value = String> {
    prop_oneof![vec(any::<char>(), 0..16), vec(any::<char>(), 0..300)]
        .prop_map(|chars| chars.into_iter().collect::<String>())
}

fn ctx_strings() -> impl Strategy<Value = (String, String, String)> {
    (ctx_string(), ctx_string(), ctx_string())
}

fn ctx(parts: &(String, String, String)) -> FieldContext<'_> {
    FieldContext::new(&parts.0, &parts.1, &parts.2)
}

/// The padded length of the associated data for `ctx` (the layout is in
/// the README): version, each part after its LEB128 length, zeros to a
/// multiple of 64.
fn aad_len(ctx: &FieldContext<'_>) -> usize {
    let varint = |n: usize| (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize;
    let parts = [ctx.collection, ctx.record_id, ctx.field];
    (1 + parts
        .iter()
        .map(|p| varint(p.len()) + p.len())
        .sum::<usize>())
    .next_multiple_of(64)
}

/// The opened plaintext, or the error's message.
fn plain(opened: Result<SecretBytes, CipherError>) -> Result<Vec<u8>, String> {
    opened
        .map(|p| p.expose().to_vec())
        .map_err(|e| e.to_string())
}

fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

// (a) ---------------------------------------------------------------

#[test]
fn round_trip_on_every_backend_and_across_backends() {
    let rt = runtime();
    let (stack, heap) = (Cell::new(0u32), Cell::new(0u32));
    check(
        256,
        (any::<Key>(), vec(any::<u8>(), 0..4096), ctx_strings()),
        |(key, pt, parts)| {
            let ctx = ctx(&parts);
            let ciphers: Vec<_> = AeadBackend::ALL.iter().map(|&b| cipher(&key, b)).collect();
            if aad_len(&ctx) <= AAD_STACK {
                stack.set(stack.get() + 1);
            } else {
                heap.set(heap.get() + 1);
            }
            for sealer in &ciphers {
                let text = rt.block_on(sealer.encrypt(&ctx, &pt)).unwrap();
                let blob = rt.block_on(sealer.encrypt_bytes(&ctx, &pt)).unwrap();
                prop_assert!(text.starts_with("av1:"));
                prop_assert_eq!(
                    FieldCipher::key_id_of(&text),
                    Some(sealer.active_key_id().clone())
                );
                for opener in &ciphers {
                    prop_assert_eq!(plain(opener.decrypt(&ctx, &text)), Ok(pt.clone()));
                    prop_assert_eq!(plain(opener.decrypt_bytes(&ctx, &blob)), Ok(pt.clone()));
                }
            }
            Ok(())
        },
    );
    println!(
        "AAD on the stack in {} cases, on the heap in {}",
        stack.get(),
        heap.get()
    );
    assert!(stack.get() > 0, "the stack AAD path was never exercised");
    assert!(heap.get() > 0, "the heap AAD path was never exercised");
}

// (b) ---------------------------------------------------------------

#[test]
fn any_single_bit_flip_in_the_text_form_is_rejected() {
    let rt = runtime();
    check(
        256,
        (
            any::<Key>(),
            vec(any::<u8>(), 0..256),
            ctx_strings(),
            any::<Index>(),
        ),
        |(key, pt, parts, bit)| {
            let ctx = ctx(&parts);
            for &b in AeadBackend::ALL {
                let c = cipher(&key, b);
                let text = rt.block_on(c.encrypt(&ctx, &pt)).unwrap();
                let mut bytes = text.into_bytes();
                let bit = bit.index(bytes.len() * 8);
                flip(&mut bytes, bit);
                // Not UTF-8 any more: a `&str` API cannot even be handed it.
                if let Ok(altered) = String::from_utf8(bytes) {
                    prop_assert!(
                        c.decrypt(&ctx, &altered).is_err(),
                        "{}: bit {} flipped, still decrypts",
                        b.name(),
                        bit
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn any_single_bit_flip_in_the_binary_form_is_rejected() {
    let rt = runtime();
    check(
        256,
        (
            any::<Key>(),
            vec(any::<u8>(), 0..256),
            ctx_strings(),
            any::<Index>(),
        ),
        |(key, pt, parts, bit)| {
            let ctx = ctx(&parts);
            for &b in AeadBackend::ALL {
                let c = cipher(&key, b);
                let mut blob = rt.block_on(c.encrypt_bytes(&ctx, &pt)).unwrap();
                let bit = bit.index(blob.len() * 8);
                flip(&mut blob, bit);
                prop_assert!(
                    c.decrypt_bytes(&ctx, &blob).is_err(),
                    "{}: bit {} flipped, still decrypts",
                    b.name(),
                    bit
                );
            }
            Ok(())
        },
    );
}

// (c) ---------------------------------------------------------------

#[test]
fn another_record_id_is_rejected() {
    let rt = runtime();
    check(
        256,
        (
            any::<Key>(),
            vec(any::<u8>(), 0..256),
            ctx_strings(),
            ctx_string(),
        ),
        |(key, pt, parts, other_id)| {
            prop_assume!(other_id != parts.1);
            let ctx = ctx(&parts);
            let other = FieldContext::new(&parts.0, &other_id, &parts.2);
            for &b in AeadBackend::ALL {
                let c = cipher(&key, b);
                let text = rt.block_on(c.encrypt(&ctx, &pt)).unwrap();
                let blob = rt.block_on(c.encrypt_bytes(&ctx, &pt)).unwrap();
                prop_assert!(c.decrypt(&other, &text).is_err(), "{}", b.name());
                prop_assert!(c.decrypt_bytes(&other, &blob).is_err(), "{}", b.name());
                // And the original context still opens it.
                prop_assert_eq!(plain(c.decrypt(&ctx, &text)), Ok(pt.clone()));
            }
            Ok(())
        },
    );
}

// (d) ---------------------------------------------------------------

#[test]
fn rotation_reads_old_values_and_seals_new_ones_under_the_new_key() {
    let rt = runtime();
    check(
        64,
        (
            any::<Key>(),
            any::<Key>(),
            vec(any::<u8>(), 0..512),
            ctx_strings(),
        ),
        |(a, b, pt, parts)| {
            prop_assume!(a != b);
            let ctx = ctx(&parts);
            let id_a = KeyId::fingerprint(&SecretBytes::copy_from(&a));
            let id_b = KeyId::fingerprint(&SecretBytes::copy_from(&b));
            for &sealer in AeadBackend::ALL {
                let before = cipher(&a, sealer);
                let old = rt.block_on(before.encrypt(&ctx, &pt)).unwrap();
                prop_assert_eq!(FieldCipher::key_id_of(&old), Some(id_a.clone()));
                for &opener in AeadBackend::ALL {
                    let only_a = cipher(&a, opener);
                    let after = cipher_with(
                        KeySet::single(material(&b)).with_previous(material(&a)),
                        opener,
                    );
                    prop_assert_eq!(after.active_key_id(), &id_b);
                    prop_assert_eq!(plain(after.decrypt(&ctx, &old)), Ok(pt.clone()));

                    let new = rt.block_on(after.encrypt(&ctx, &pt)).unwrap();
                    prop_assert_eq!(FieldCipher::key_id_of(&new), Some(id_b.clone()));
                    prop_assert!(
                        only_a.decrypt(&ctx, &new).is_err(),
                        "{} -> {}: the old key alone read a new value",
                        sealer.name(),
                        opener.name()
                    );
                    prop_assert_eq!(plain(after.decrypt(&ctx, &new)), Ok(pt.clone()));
                }
            }
            Ok(())
        },
    );
}

// (e) ---------------------------------------------------------------

/// Arbitrary blobs, some shaped like an envelope under `key_id` (right
/// version and key id, random nonce/ciphertext/tag) so that they reach
/// the AEAD rather than failing the parse.
fn garbage_blob(key_id: String) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..128)).prop_map(|(v, l, rest)| {
            let mut blob = vec![v, l];
            blob.extend(rest);
            blob
        }),
        vec(any::<u8>(), 0..256).prop_map(move |rest| {
            let mut blob = vec![1, u8::try_from(key_id.len()).unwrap()];
            blob.extend_from_slice(key_id.as_bytes());
            blob.extend(rest);
            blob
        }),
    ]
}

#[test]
fn garbage_bytes_are_rejected_without_panicking() {
    let key = [7u8; KEY_LEN];
    let id = KeyId::fingerprint(&SecretBytes::copy_from(&key));
    let ciphers: Vec<_> = AeadBackend::ALL.iter().map(|&b| cipher(&key, b)).collect();
    check(
        256,
        (garbage_blob(id.as_str().to_owned()), ctx_strings()),
        |(blob, parts)| {
            let ctx = ctx(&parts);
            for c in &ciphers {
                prop_assert!(c.decrypt_bytes(&ctx, &blob).is_err());
            }
            Ok(())
        },
    );
}

#[test]
fn garbage_text_is_rejected_without_panicking() {
    let key = [7u8; KEY_LEN];
    let id = KeyId::fingerprint(&SecretBytes::copy_from(&key));
    let ciphers: Vec<_> = AeadBackend::ALL.iter().map(|&b| cipher(&key, b)).collect();
    let text = prop_oneof![
        any::<String>(),
        ctx_string().prop_map(|s| format!("av1:{s}")),
        garbage_blob(id.as_str().to_owned())
            .prop_map(|blob| format!("av1:{}", URL_SAFE_NO_PAD.encode(blob))),
    ];
    check(256, (text, ctx_strings()), |(text, parts)| {
        let ctx = ctx(&parts);
        for c in &ciphers {
            prop_assert!(c.decrypt(&ctx, &text).is_err());
        }
        Ok(())
    });
}

/// `FieldCipher::key_id_of` reads only the head of the text; non-ASCII
/// input there once made it slice inside a character and panic
/// (`"av1:aaa\u{e9}"`). It must answer `None`, never panic.
#[test]
fn key_id_of_never_panics() {
    assert_eq!(FieldCipher::key_id_of("av1:aaa\u{e9}"), None);
    check(
        256,
        prop_oneof![
            any::<String>(),
            ctx_string().prop_map(|s| format!("av1:{s}"))
        ],
        |text| {
            let _ = FieldCipher::key_id_of(&text);
            Ok(())
        },
    );
}
