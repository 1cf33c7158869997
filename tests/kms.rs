//! The KMS key provider and `alvryn keys generate` against moto's KMS
//! over real HTTP (started by `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use alvryn_core::crypto::{FieldCipher, FieldContext, KeyId, KeyMaterial, KeySet, MemoryLedger};
use alvryn_core::key::kms::{WrappedKey, generate_wrapped_key};
use alvryn_core::key::{KeyError, KeyProvider, KmsKeyProvider};
use alvryn_core::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use support::{Server, alvryn, create_kms_key, kms_client, moto_env, run, service};

fn moto() -> Option<String> {
    service("ALVRYN_TEST_MOTO_URL")
}

const CTX: FieldContext<'static> = FieldContext {
    collection: "provider_tokens",
    record_id: "user-1",
    field: "access_token",
};

#[tokio::test]
async fn a_kms_wrapped_key_unwraps_and_encrypts_fields() {
    let Some(moto) = moto() else { return };
    let client = kms_client(&moto);
    let kms_key = create_kms_key(&client).await;
    let (plain, blob) = generate_wrapped_key(&client, &kms_key).await.unwrap();

    let provider = KmsKeyProvider::new(
        client.clone(),
        WrappedKey::new("FIELD_ENCRYPTION_KEY_ENC", blob),
        vec![],
    )
    .expected_key_id(&kms_key);
    let keys = provider.load().await.unwrap();
    assert_eq!(keys.active.key(), &plain);
    assert_eq!(keys.active.id(), &KeyId::fingerprint(&plain));

    let from_kms = FieldCipher::builder(keys, Arc::new(MemoryLedger::new()))
        .build()
        .unwrap();
    let sealed = from_kms
        .encrypt(&CTX, b"ya29.provider-access-token")
        .await
        .unwrap();
    assert_eq!(
        from_kms.decrypt(&CTX, &sealed).unwrap().expose(),
        b"ya29.provider-access-token"
    );
    // The plaintext copy is the same key: it opens what the KMS key sealed.
    let from_copy = FieldCipher::builder(
        KeySet::single(KeyMaterial::fingerprinted(plain)),
        Arc::new(MemoryLedger::new()),
    )
    .build()
    .unwrap();
    assert_eq!(
        from_copy.decrypt(&CTX, &sealed).unwrap().expose(),
        b"ya29.provider-access-token"
    );
}

#[tokio::test]
async fn kms_refusals_are_clear_errors() {
    let Some(moto) = moto() else { return };
    let client = kms_client(&moto);
    let key_a = create_kms_key(&client).await;
    let key_b = create_kms_key(&client).await;
    let (_, blob_b) = generate_wrapped_key(&client, &key_b).await.unwrap();

    // A blob from another KMS key than the one pinned.
    let err = KmsKeyProvider::new(
        client.clone(),
        WrappedKey::new("FIELD_ENCRYPTION_KEY_ENC", blob_b.clone()),
        vec![],
    )
    .expected_key_id(&key_a)
    .load()
    .await
    .unwrap_err();
    match &err {
        KeyError::Refused {
            source_name,
            reason,
        } => {
            assert_eq!(source_name, "FIELD_ENCRYPTION_KEY_ENC");
            assert!(reason.contains("AccessDenied"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("refused to unwrap FIELD_ENCRYPTION_KEY_ENC"),
        "{err}"
    );

    // A damaged blob.
    let mut damaged = blob_b.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let err = KmsKeyProvider::new(
        client.clone(),
        WrappedKey::new("FIELD_ENCRYPTION_PREVIOUS_KEYS_ENC entry 1", damaged),
        vec![],
    )
    .load()
    .await
    .unwrap_err();
    assert!(
        matches!(&err, KeyError::Refused { reason, .. } if reason.contains("InvalidCiphertext")),
        "{err:?}"
    );

    // A previous key that fails fails the whole load, naming it.
    let err = KmsKeyProvider::new(
        client.clone(),
        WrappedKey::new("FIELD_ENCRYPTION_KEY_ENC", blob_b),
        vec![WrappedKey::new(
            "FIELD_ENCRYPTION_PREVIOUS_KEYS_ENC entry 1",
            b"garbage".to_vec(),
        )],
    )
    .load()
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("FIELD_ENCRYPTION_PREVIOUS_KEYS_ENC entry 1"),
        "{err}"
    );

    // Encrypting under a KMS key that does not exist.
    let err = generate_wrapped_key(&client, "alias/does-not-exist")
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::Refused { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_kms_is_unavailable_within_the_timeout() {
    let port = support::free_port(); // nothing listens here
    let client = kms_client(&format!("http://127.0.0.1:{port}"));
    let err = KmsKeyProvider::new(
        client,
        WrappedKey::new("FIELD_ENCRYPTION_KEY_ENC", vec![1, 2, 3]),
        vec![],
    )
    .timeout(std::time::Duration::from_secs(10))
    .load()
    .await
    .unwrap_err();
    assert!(matches!(err, KeyError::Unavailable(_)), "{err:?}");
    assert_eq!(err.to_string(), "the key service is unavailable");
}

#[tokio::test]
async fn keys_generate_then_serve_with_the_wrapped_key() {
    let Some(moto) = moto() else { return };
    let client = kms_client(&moto);
    let kms_key = create_kms_key(&client).await;
    let other_key = create_kms_key(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("field-key.enc");

    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.args(["keys", "generate", "--kms-key-id", &kms_key, "--output"])
        .arg(&out_file);
    let out = run(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("only this once"),
        "{}",
        out.stderr
    );
    let plain = STANDARD.decode(out.stdout.trim()).unwrap();
    assert_eq!(plain.len(), 32);
    let blob_b64 = std::fs::read_to_string(&out_file).unwrap();
    assert!(!blob_b64.contains(out.stdout.trim()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let expected_id = KeyId::fingerprint(&SecretBytes::new(plain));

    // It refuses to overwrite the blob.
    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.args(["keys", "generate", "--kms-key-id", &kms_key, "--output"])
        .arg(&out_file);
    let again = run(c);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--force"));
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), blob_b64);

    // The server starts on it, pinned to the right KMS key.
    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.current_dir(dir.path())
        .env("FIELD_ENCRYPTION_KEY_ENC", blob_b64.trim())
        .env("FIELD_ENCRYPTION_KMS_KEY_ID", &kms_key);
    let server = Server::start(c);
    assert_eq!(server.request("GET", "/healthz", None).0, 200);
    let expected = format!("key_id={expected_id}");
    assert!(
        server.log_with(&[&expected]).contains(&expected),
        "{}",
        server.log()
    );
    drop(server);

    // config check unwraps it too and names the key.
    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.current_dir(dir.path())
        .args(["config", "check"])
        .env("FIELD_ENCRYPTION_KEY_ENC", blob_b64.trim());
    let out = run(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("unwrapped with KMS; active {expected_id}")),
        "{}",
        out.stdout
    );

    // Pinned to another KMS key, start-up fails clearly and creates nothing.
    let fresh = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.current_dir(fresh.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("FIELD_ENCRYPTION_KEY_ENC", blob_b64.trim())
        .env("FIELD_ENCRYPTION_KMS_KEY_ID", &other_key);
    let out = run(c);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("refused to unwrap FIELD_ENCRYPTION_KEY_ENC")
            && out.stderr.contains("AccessDenied"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(blob_b64.trim()));
}

#[test]
fn keys_generate_reports_kms_failures_and_leaves_no_file() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("k.enc");
    let mut c = alvryn();
    moto_env(&mut c, &moto);
    c.args([
        "keys",
        "generate",
        "--kms-key-id",
        "alias/no-such-key",
        "--output",
    ])
    .arg(&out_file);
    let out = run(c);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(
        out.stdout.is_empty(),
        "a key was printed although KMS refused: {}",
        out.stdout
    );
    assert!(!out_file.exists());
}

/// `--force` replaces a blob only once the new one is written: with KMS
/// refusing, the old blob is intact and nothing else is left in the
/// folder; with KMS answering, the blob is replaced whole.
#[tokio::test(flavor = "multi_thread")]
async fn keys_generate_force_never_destroys_the_old_blob() {
    let Some(moto) = moto() else { return };
    let client = kms_client(&moto);
    let kms_key = create_kms_key(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("field-key.enc");
    std::fs::write(&out_file, "OLD-BLOB\n").unwrap();
    let generate = |key: &str| {
        let mut c = alvryn();
        moto_env(&mut c, &moto);
        c.args([
            "keys",
            "generate",
            "--force",
            "--kms-key-id",
            key,
            "--output",
        ])
        .arg(&out_file);
        run(c)
    };
    let failed = generate("alias/no-such-key");
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "OLD-BLOB\n");
    let names = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(dir.path()),
        ["field-key.enc"],
        "no temporary file left"
    );

    let ok = generate(&kms_key);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let blob = std::fs::read_to_string(&out_file).unwrap();
    assert_ne!(blob, "OLD-BLOB\n");
    assert!(STANDARD.decode(blob.trim()).is_ok(), "{blob}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(names(dir.path()), ["field-key.enc"]);
}
