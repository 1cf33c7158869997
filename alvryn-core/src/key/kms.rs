//! Keys wrapped by AWS KMS.
//!
//! `FIELD_ENCRYPTION_KEY_ENC` holds base64 of a KMS ciphertext blob whose
//! plaintext is the 32-byte field key. [`KmsKeyProvider::load`] calls
//! `kms:Decrypt` once per wrapped key, under a bounded overall timeout
//! (the SDK client's own retry and attempt-timeout settings apply inside
//! it), checks the plaintext is 32 bytes, and moves it straight into a
//! [`SecretBytes`], which is wiped on drop.
//!
//! Failure modes:
//! * KMS answers with an error (no `kms:Decrypt` permission, a blob from
//!   another key than [`KmsKeyProvider::expected_key_id`], a damaged blob,
//!   a disabled key): [`KeyError::Refused`] naming the
//!   wrapped key's source and KMS's error code.
//! * KMS cannot be reached, or does not answer within the timeout:
//!   [`KeyError::Unavailable`].
//! * The unwrapped key is not 32 bytes: [`KeyError::Malformed`].
//!
//! The SDK's HTTP response buffer, which briefly held the plaintext, is
//! freed by the SDK without wiping; this is outside our control.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::Blob;

use super::{KeyError, KeyProvider, decode_base64};
use crate::crypto::{KEY_LEN, KeyMaterial, KeySet};
use crate::secret::SecretBytes;

/// Default bound on one whole [`KmsKeyProvider::load`], retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// A KMS ciphertext blob and where it came from (for error messages).
#[derive(Clone)]
pub struct WrappedKey {
    source_name: String,
    blob: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("source_name", &self.source_name)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

impl WrappedKey {
    /// A raw KMS ciphertext blob.
    #[must_use]
    pub fn new(source_name: impl Into<String>, blob: Vec<u8>) -> Self {
        Self {
            source_name: source_name.into(),
            blob,
        }
    }

    /// Parses base64 (standard or URL-safe, padded or not) of a blob.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] when the text is empty or not base64.
    pub fn from_base64(source_name: &str, text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let malformed = |problem: &str| KeyError::Malformed {
            source_name: source_name.to_owned(),
            problem: problem.to_owned(),
        };
        if text.is_empty() {
            return Err(malformed(
                "is empty; expected base64 of a KMS ciphertext blob",
            ));
        }
        let blob = decode_base64(text.as_bytes()).ok_or_else(|| {
            malformed("is not valid base64; expected base64 of a KMS ciphertext blob")
        })?;
        Ok(Self::new(source_name, blob))
    }

    /// Where the blob came from.
    #[must_use]
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

/// Unwraps field keys with AWS KMS.
#[derive(Clone)]
pub struct KmsKeyProvider {
    client: aws_sdk_kms::Client,
    active: WrappedKey,
    previous: Vec<WrappedKey>,
    expected_key_id: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for KmsKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsKeyProvider")
            .field("active", &self.active)
            .field("previous", &self.previous)
            .field("expected_key_id", &self.expected_key_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KmsKeyProvider {
    /// A provider that unwraps `active` and `previous` with `client`.
    #[must_use]
    pub fn new(client: aws_sdk_kms::Client, active: WrappedKey, previous: Vec<WrappedKey>) -> Self {
        Self {
            client,
            active,
            previous,
            expected_key_id: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Only accept blobs wrapped by this KMS key (id, ARN or alias), as AWS
    /// recommends: KMS refuses a blob from any other key.
    #[must_use]
    pub fn expected_key_id(mut self, kms_key_id: impl Into<String>) -> Self {
        self.expected_key_id = Some(kms_key_id.into());
        self
    }

    /// Bounds one whole `load` (all keys, all retries).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn unwrap_one(&self, wrapped: &WrappedKey) -> Result<KeyMaterial, KeyError> {
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_key_id(self.expected_key_id.clone())
            .send()
            .await
            .map_err(|e| sdk_error(&wrapped.source_name, e))?;
        let plaintext = out.plaintext.map(Blob::into_inner).unwrap_or_default();
        let key = SecretBytes::new(plaintext);
        if key.len() != KEY_LEN {
            return Err(KeyError::Malformed {
                source_name: wrapped.source_name.clone(),
                problem: format!("unwraps to {} bytes; expected exactly {KEY_LEN}", key.len()),
            });
        }
        Ok(KeyMaterial::fingerprinted(key))
    }

    async fn load_all(&self) -> Result<KeySet, KeyError> {
        let mut set = KeySet::single(self.unwrap_one(&self.active).await?);
        for w in &self.previous {
            set.previous.push(self.unwrap_one(w).await?);
        }
        Ok(set)
    }
}

fn sdk_error<E, R>(source_name: &str, e: SdkError<E, R>) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown error").to_owned();
            let reason = match err.message() {
                Some(m) => format!("{code}: {m}"),
                None => code,
            };
            KeyError::Refused {
                source_name: source_name.to_owned(),
                reason,
            }
        }
        other => KeyError::Unavailable(Box::new(other)),
    }
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    async fn load(&self) -> Result<KeySet, KeyError> {
        match tokio::time::timeout(self.timeout, self.load_all()).await {
            Ok(result) => result,
            Err(elapsed) => Err(KeyError::Unavailable(Box::new(elapsed))),
        }
    }
}

/// A fresh random 32-byte key wrapped under `kms_key_id`: the plaintext
/// (show it once, then drop it) and the KMS ciphertext blob (store it as
/// `FIELD_ENCRYPTION_KEY_ENC`).
///
/// # Errors
/// [`KeyError::Refused`] when KMS refuses `kms:Encrypt` (unknown key,
/// no permission), [`KeyError::Unavailable`] when it cannot be reached.
pub async fn generate_wrapped_key(
    client: &aws_sdk_kms::Client,
    kms_key_id: &str,
) -> Result<(SecretBytes, Vec<u8>), KeyError> {
    let key = SecretBytes::random(KEY_LEN).map_err(|e| KeyError::Unavailable(Box::new(e)))?;
    let out = client
        .encrypt()
        .key_id(kms_key_id)
        .plaintext(Blob::new(key.expose().to_vec()))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("KMS key {kms_key_id}"), e))?;
    let blob = out
        .ciphertext_blob
        .map(Blob::into_inner)
        .ok_or_else(|| KeyError::Refused {
            source_name: format!("KMS key {kms_key_id}"),
            reason: "KMS returned no ciphertext".into(),
        })?;
    Ok((key, blob))
}
