//! The README's description of the ciphertext format is enough for
//! another language: a 40-line Python program (tests/interop/) written
//! from it decrypts what FieldCipher seals, and refuses a moved value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use std::sync::Arc;

use alvryn_core::crypto::{
    AeadBackend, FieldCipher, FieldContext, KeyId, KeyMaterial, KeySet, MemoryLedger,
};
use alvryn_core::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

fn python_decrypt(python: &str, key: &[u8], ctx: &FieldContext<'_>, text: &str) -> Option<Vec<u8>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/decrypt_field.py"
    );
    let out = Command::new(python)
        .args([
            script,
            &STANDARD.encode(key),
            ctx.collection,
            ctx.record_id,
            ctx.field,
            text,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("does not decrypt"),
            "python failed unexpectedly: {stderr}"
        );
        return None;
    }
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim();
    Some(
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
    )
}

#[tokio::test]
async fn python_decrypts_what_rust_encrypts_from_the_documented_format() {
    let Some(python) = support::service("ALVRYN_TEST_PYTHON") else {
        return;
    };
    let key = [0x5au8; 32];
    // Over 127 bytes: a two-byte length and more than one padding block.
    let long_id = "r".repeat(300);
    for &backend in AeadBackend::ALL {
        for (active, ctx, plain) in [
            (
                KeyMaterial::fingerprinted(SecretBytes::copy_from(&key)),
                FieldContext::new("users", "u-1", "ssn"),
                &b"078-05-1120"[..],
            ),
            (
                KeyMaterial::new(
                    KeyId::new("2026-11.primary").unwrap(),
                    SecretBytes::copy_from(&key),
                ),
                FieldContext::new(
                    "provider_tokens",
                    "65f1c0ffee",
                    "refresh_token \u{1F511} \u{e9}",
                ),
                &[0u8, 255, 1, 2, 3][..],
            ),
            (
                KeyMaterial::fingerprinted(SecretBytes::copy_from(&key)),
                FieldContext::new("", "", ""),
                &b""[..],
            ),
            (
                KeyMaterial::fingerprinted(SecretBytes::copy_from(&key)),
                FieldContext::new("users", &long_id, "note"),
                &b"long record id"[..],
            ),
        ] {
            let cipher =
                FieldCipher::builder(KeySet::single(active), Arc::new(MemoryLedger::new()))
                    .backend(backend)
                    .build()
                    .unwrap();
            let text = cipher.encrypt(&ctx, plain).await.unwrap();
            assert_eq!(
                python_decrypt(&python, &key, &ctx, &text).as_deref(),
                Some(plain),
                "{backend:?} {ctx:?}"
            );
            let moved = FieldContext {
                record_id: "someone-else",
                ..ctx
            };
            assert_eq!(python_decrypt(&python, &key, &moved, &text), None);
        }
    }
}
