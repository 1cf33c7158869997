//! Field-encryption keys for the server: from the configuration to a
//! ready [`FieldCipher`].

use std::sync::Arc;
use std::time::Duration;

use alvryn_core::crypto::{
    FieldCipher, FieldContext, KeyMaterial, KeySet, MemoryLedger, UsageLedger,
};
use alvryn_core::key::{KeyError, KeyProvider, KmsKeyProvider, StaticKeyProvider};
use alvryn_core::secret::SecretBytes;

use crate::config::{Config, FieldKeys};

/// Why keys could not be made ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The provider failed (malformed, refused by KMS, KMS unreachable).
    #[error(transparent)]
    Provider(#[from] KeyError),
    /// Development mode without a generated key (internal error).
    #[error("no development key was provided")]
    NoDevKey,
    /// The keys loaded but the cipher rejected them, or the start-up
    /// self-test (encrypt then decrypt) failed.
    #[error("the field cipher failed its start-up check: {0}")]
    SelfTest(#[source] alvryn_core::crypto::CipherError),
    /// The usage ledger could not be read at start-up.
    #[error("the encryption usage ledger could not be read: {0}")]
    Ledger(#[source] alvryn_core::crypto::LedgerError),
}

/// An AWS KMS client from the standard credential chain and region
/// settings (`AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL` override the
/// endpoint), with bounded attempts: 3 tries, 5 s each, 15 s in all.
pub async fn kms_client() -> aws_sdk_kms::Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(15))
        .build();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .load()
        .await;
    aws_sdk_kms::Client::new(&shared)
}

/// Loads the key set the configuration names (calling KMS if needed).
/// `dev_key` is the generated key used when the configuration has none.
///
/// # Errors
/// See [`KeysError`].
pub async fn load_key_set(
    config: &Config,
    dev_key: Option<&SecretBytes>,
) -> Result<KeySet, KeysError> {
    match &config.field_keys {
        FieldKeys::Static { active, previous } => {
            let mut set = KeySet::single(KeyMaterial::fingerprinted(active.clone()));
            set.previous
                .extend(previous.iter().cloned().map(KeyMaterial::fingerprinted));
            Ok(StaticKeyProvider::new(set).load().await?)
        }
        FieldKeys::Kms {
            active,
            previous,
            expected_key_id,
        } => {
            let mut provider =
                KmsKeyProvider::new(kms_client().await, active.clone(), previous.clone());
            if let Some(id) = expected_key_id {
                provider = provider.expected_key_id(id);
            }
            Ok(provider.load().await?)
        }
        FieldKeys::DevGenerated => {
            let key = dev_key.ok_or(KeysError::NoDevKey)?;
            Ok(KeySet::single(KeyMaterial::fingerprinted(key.clone())))
        }
    }
}

/// Builds the cipher over `keys` with `ledger` counting encryptions, and
/// checks it without spending any of the key's encryptions: the AEAD
/// backend passes a round trip under a throwaway key, and the ledger
/// answers for the active key (a read, nothing reserved). The first real
/// encryption reserves the first block.
///
/// # Errors
/// [`KeysError::SelfTest`] when the backend fails its round trip;
/// [`KeysError::Ledger`] when the ledger cannot be read.
pub async fn field_cipher(
    keys: KeySet,
    ledger: Arc<dyn UsageLedger>,
) -> Result<FieldCipher, KeysError> {
    let cipher = FieldCipher::builder(keys, Arc::clone(&ledger))
        .build()
        .map_err(KeysError::SelfTest)?;
    // A public probe key that protects nothing, counted in a ledger of
    // its own in memory (deliberately: its count has nothing to protect).
    let probe_key = SecretBytes::copy_from(&[0x5a; 32]);
    let probe = FieldCipher::builder(
        KeySet::single(KeyMaterial::fingerprinted(probe_key)),
        Arc::new(MemoryLedger::new()),
    )
    .publish_metrics(false)
    .build()
    .map_err(KeysError::SelfTest)?;
    let ctx = FieldContext::new("alvryn", "startup", "self-test");
    let sealed = probe
        .encrypt(&ctx, b"ok")
        .await
        .map_err(KeysError::SelfTest)?;
    probe.decrypt(&ctx, &sealed).map_err(KeysError::SelfTest)?;
    let reserved = ledger
        .reserved(cipher.active_key_fingerprint())
        .await
        .map_err(KeysError::Ledger)?;
    tracing::info!(
        key_id = %cipher.active_key_id(),
        fingerprint = %cipher.active_key_fingerprint(),
        reserved,
        "field encryption ready"
    );
    Ok(cipher)
}
