//! Embed Alvryn's field encryption in your own service, with keys from
//! your own source.
//!
//! Here the "source" is a key file your deploy tooling writes (think of a
//! Vault agent or a Kubernetes secret volume). Implement `KeyProvider`,
//! build a `FieldCipher` with a durable usage ledger, and encrypt fields
//! bound to the record they live in.
//!
//! Run: `cargo run --example custom_key_provider`

use std::path::PathBuf;
use std::sync::Arc;

use alvryn_core::crypto::{FieldCipher, FieldContext, FileLedger, KeyMaterial, KeySet};
use alvryn_core::key::{KeyError, KeyProvider, parse_key};
use async_trait::async_trait;

/// Reads the active key (and optional previous keys, one per line after
/// the first) from a file, base64 per line.
struct KeyFileProvider {
    path: PathBuf,
}

#[async_trait]
impl KeyProvider for KeyFileProvider {
    async fn load(&self) -> Result<KeySet, KeyError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| KeyError::Unavailable(Box::new(e)))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or_else(|| KeyError::Malformed {
            source_name: self.path.display().to_string(),
            problem: "is empty".into(),
        })?;
        let mut set = KeySet::single(KeyMaterial::fingerprinted(parse_key(
            "key file line 1",
            first.as_bytes(),
        )?));
        for (i, line) in lines.enumerate() {
            let name = format!("key file line {}", i + 2);
            set.previous.push(KeyMaterial::fingerprinted(parse_key(
                &name,
                line.as_bytes(),
            )?));
        }
        Ok(set)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("field.key");
    // In production this file is written by your secret tooling.
    let key = alvryn_core::SecretBytes::random(32)?;
    use base64::Engine as _;
    std::fs::write(
        &key_file,
        base64::engine::general_purpose::STANDARD.encode(key.expose()),
    )?;

    let provider = KeyFileProvider { path: key_file };
    let keys = provider.load().await?;
    // The ledger counts encryptions durably so no key seals more than 2^32
    // values; the builder requires one.
    let ledger = Arc::new(FileLedger::new(dir.path().join("usage.json")));
    let cipher = FieldCipher::builder(keys, ledger).build()?;

    // Store `sealed` in your database; the context ties it to this record.
    let ctx = FieldContext::new("customers", "cus_QXg1o8vcGmoR32", "tax_id");
    let sealed = cipher.encrypt(&ctx, b"DE123456789").await?;
    println!("stored value: {sealed}");

    let opened = cipher.decrypt(&ctx, &sealed)?;
    assert_eq!(opened.expose(), b"DE123456789");
    println!(
        "decrypted: {} bytes; key {}",
        opened.len(),
        cipher.active_key_id()
    );

    // Copied into another record, the value does not decrypt.
    let elsewhere = FieldContext::new("customers", "cus_someone_else", "tax_id");
    assert!(cipher.decrypt(&elsewhere, &sealed).is_err());
    println!("moved to another record: refused, as it should be");

    let usage = cipher.usage();
    println!(
        "encryptions reserved for key {}: {} of {}",
        usage.key_id, usage.reserved_total, usage.limit
    );
    Ok(())
}
