//! Where the field-encryption keys come from.
//!
//! A [`KeyProvider`] yields a [`KeySet`]: the active key and any previous,
//! decrypt-only keys. Two providers ship:
//!
//! * [`StaticKeyProvider`]: keys given directly, e.g. parsed from
//!   `FIELD_ENCRYPTION_KEY` with [`parse_key`] (32 raw bytes, or base64 of
//!   32 bytes).
//! * [`KmsKeyProvider`] (feature `kms`): keys stored as AWS KMS ciphertext
//!   blobs (`FIELD_ENCRYPTION_KEY_ENC`) and unwrapped with `kms:Decrypt`
//!   once at startup.
//!
//! [`KeyProviderService`] is the [`tower::Service`] view of any provider,
//! and [`ServiceKeyProvider`] turns a (layered) service back into a
//! provider:
//!
//! ```
//! use std::time::Duration;
//! use alvryn_core::key::{KeyProvider, KeyProviderService, LoadKeys, ServiceKeyProvider, StaticKeyProvider};
//! use alvryn_core::crypto::{KeyMaterial, KeySet};
//! use alvryn_core::secret::SecretBytes;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let provider = StaticKeyProvider::new(KeySet::single(KeyMaterial::fingerprinted(SecretBytes::copy_from(&[7; 32]))));
//! let svc = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(5))
//!     .service(KeyProviderService::new(provider));
//! let provider = ServiceKeyProvider::new(svc);
//! let keys = provider.load().await.unwrap();
//! assert!(keys.previous.is_empty());
//! # }
//! ```

#[cfg(feature = "kms")]
pub mod kms;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use base64::Engine as _;

use crate::crypto::{KEY_LEN, KeyMaterial, KeySet};
use crate::secret::SecretBytes;

#[cfg(feature = "kms")]
pub use kms::KmsKeyProvider;

/// Why keys could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key value is malformed. `source_name` names where it came from
    /// (e.g. the environment variable); the value itself is never shown.
    #[error("{source_name}: {problem}")]
    Malformed {
        /// Where the value came from, e.g. `FIELD_ENCRYPTION_KEY`.
        source_name: String,
        /// What is wrong, without the value.
        problem: String,
    },
    /// The key service refused: no permission, wrong key, or a blob that
    /// is not one of its ciphertexts.
    #[error("the key service refused to unwrap {source_name}: {reason}")]
    Refused {
        /// Which wrapped key was refused.
        source_name: String,
        /// The service's reason, e.g. `AccessDeniedException`.
        reason: String,
    },
    /// The key service could not be reached or did not answer in time.
    #[error("the key service is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Parses a key given as exactly 32 raw bytes, or as base64 (standard or
/// URL-safe, padded or not) of 32 bytes. Leading and trailing whitespace
/// around base64 is ignored.
///
/// # Errors
/// [`KeyError::Malformed`] naming `source_name` and the length found;
/// never the value.
pub fn parse_key(source_name: &str, value: &[u8]) -> Result<SecretBytes, KeyError> {
    if value.len() == KEY_LEN {
        return Ok(SecretBytes::copy_from(value));
    }
    let malformed = |problem: String| KeyError::Malformed {
        source_name: source_name.to_owned(),
        problem,
    };
    let trimmed = value.trim_ascii();
    if trimmed.is_empty() {
        return Err(malformed(
            "is empty; expected 32 raw bytes or base64 of 32 bytes".into(),
        ));
    }
    let decoded = decode_base64(trimmed).ok_or_else(|| {
        malformed(format!(
            "is {} bytes long and not valid base64; expected 32 raw bytes or base64 of 32 bytes",
            value.len()
        ))
    })?;
    let decoded = SecretBytes::new(decoded);
    if decoded.len() != KEY_LEN {
        return Err(malformed(format!(
            "decodes from base64 to {} bytes; expected exactly 32",
            decoded.len()
        )));
    }
    Ok(decoded)
}

/// Decodes standard or URL-safe base64, padded or not.
pub(crate) fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

/// A source of field-encryption keys.
///
/// Called once at startup (and again on a deliberate reload); it may be
/// slow (a network call) but must not be called per request.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// Loads the active key and the previous keys.
    ///
    /// # Errors
    /// * [`KeyError::Malformed`]: a configured value is not a valid key.
    /// * [`KeyError::Refused`]: the key service answered but refused.
    /// * [`KeyError::Unavailable`]: the key service could not be reached.
    async fn load(&self) -> Result<KeySet, KeyError>;
}

#[async_trait]
impl<P: KeyProvider + ?Sized> KeyProvider for Arc<P> {
    async fn load(&self) -> Result<KeySet, KeyError> {
        (**self).load().await
    }
}

#[async_trait]
impl<P: KeyProvider + ?Sized> KeyProvider for Box<P> {
    async fn load(&self) -> Result<KeySet, KeyError> {
        (**self).load().await
    }
}

/// Keys known up front.
#[derive(Clone, Debug)]
pub struct StaticKeyProvider {
    keys: KeySet,
}

impl StaticKeyProvider {
    /// Serves `keys` as they are.
    #[must_use]
    pub fn new(keys: KeySet) -> Self {
        Self { keys }
    }

    /// Parses an active key and previous keys, each as [`parse_key`]
    /// accepts, naming the source in any error. Ids are fingerprints.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] for the first malformed value.
    pub fn from_values<'a>(
        active: (&str, &[u8]),
        previous: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, KeyError> {
        let mut set = KeySet::single(KeyMaterial::fingerprinted(parse_key(active.0, active.1)?));
        for (name, value) in previous {
            set.previous
                .push(KeyMaterial::fingerprinted(parse_key(name, value)?));
        }
        Ok(Self { keys: set })
    }
}

#[async_trait]
impl KeyProvider for StaticKeyProvider {
    async fn load(&self) -> Result<KeySet, KeyError> {
        Ok(self.keys.clone())
    }
}

/// The request of the [`tower::Service`] view: load the key set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadKeys;

/// A [`KeyProvider`] seen as a `tower::Service<LoadKeys>`.
pub struct KeyProviderService<P> {
    provider: Arc<P>,
}

impl<P> KeyProviderService<P> {
    /// Wraps `provider`.
    pub fn new(provider: P) -> Self {
        Self {
            provider: Arc::new(provider),
        }
    }
}

impl<P> Clone for KeyProviderService<P> {
    fn clone(&self) -> Self {
        Self {
            provider: Arc::clone(&self.provider),
        }
    }
}

impl<P> fmt::Debug for KeyProviderService<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyProviderService").finish_non_exhaustive()
    }
}

impl<P: KeyProvider + 'static> tower::Service<LoadKeys> for KeyProviderService<P> {
    type Response = KeySet;
    type Error = KeyError;
    type Future = Pin<Box<dyn Future<Output = Result<KeySet, KeyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), KeyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: LoadKeys) -> Self::Future {
        let provider = Arc::clone(&self.provider);
        Box::pin(async move { provider.load().await })
    }
}

/// A `tower::Service<LoadKeys>` (typically a [`KeyProviderService`] under
/// layers) used where a [`KeyProvider`] is expected. Errors from layers
/// (a timeout, a load-shed) become [`KeyError::Unavailable`]; a
/// [`KeyError`] from the inner provider passes through unchanged.
#[derive(Clone)]
pub struct ServiceKeyProvider<S> {
    service: S,
}

impl<S> ServiceKeyProvider<S> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> fmt::Debug for ServiceKeyProvider<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKeyProvider").finish_non_exhaustive()
    }
}

#[async_trait]
impl<S> KeyProvider for ServiceKeyProvider<S>
where
    S: tower::Service<LoadKeys, Response = KeySet> + Clone + Send + Sync + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
{
    async fn load(&self) -> Result<KeySet, KeyError> {
        use tower::ServiceExt as _;
        self.service
            .clone()
            .oneshot(LoadKeys)
            .await
            .map_err(|e| crate::service::from_layer(e, KeyError::Unavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use std::time::Duration;

    const RAW: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn raw_and_base64_keys_parse_to_the_same_bytes() {
        let raw = parse_key("K", RAW).unwrap();
        let b64 = parse_key("K", STANDARD.encode(RAW).as_bytes()).unwrap();
        let url = parse_key("K", URL_SAFE_NO_PAD.encode(RAW).as_bytes()).unwrap();
        let spaced = parse_key("K", format!(" {}\n", STANDARD.encode(RAW)).as_bytes()).unwrap();
        assert_eq!(raw, b64);
        assert_eq!(raw, url);
        assert_eq!(raw, spaced);
    }

    #[test]
    fn wrong_lengths_name_the_variable_and_length_not_the_value() {
        let e = parse_key("FIELD_ENCRYPTION_KEY", &RAW[..31])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FIELD_ENCRYPTION_KEY") && e.contains("31 bytes"),
            "{e}"
        );
        assert!(!e.contains("0123456789"), "{e}");
        let short_b64 = STANDARD.encode(&RAW[..31]);
        let e = parse_key("FIELD_ENCRYPTION_KEY", short_b64.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("decodes from base64 to 31 bytes"), "{e}");
        assert!(!e.contains(&short_b64), "{e}");
        let e = parse_key("X", b"not base64 at all!")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid base64") && !e.contains("at all"),
            "{e}"
        );
        assert!(
            parse_key("X", b"   ")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[tokio::test]
    async fn the_service_view_round_trips_and_maps_layer_errors() {
        let provider = StaticKeyProvider::from_values(("A", RAW), [("B", &[1u8; 32][..])]).unwrap();
        let svc = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(1))
            .service(KeyProviderService::new(provider));
        let keys = ServiceKeyProvider::new(svc).load().await.unwrap();
        assert_eq!(keys.previous.len(), 1);

        struct Slow;
        #[async_trait]
        impl KeyProvider for Slow {
            async fn load(&self) -> Result<KeySet, KeyError> {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err(KeyError::Unavailable("never".into()))
            }
        }
        let svc = tower::ServiceBuilder::new()
            .timeout(Duration::from_millis(10))
            .service(KeyProviderService::new(Slow));
        let err = ServiceKeyProvider::new(svc).load().await.unwrap_err();
        assert!(matches!(err, KeyError::Unavailable(_)), "{err:?}");

        struct Refusing;
        #[async_trait]
        impl KeyProvider for Refusing {
            async fn load(&self) -> Result<KeySet, KeyError> {
                Err(KeyError::Refused {
                    source_name: "X".into(),
                    reason: "AccessDenied".into(),
                })
            }
        }
        let svc = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(1))
            .service(KeyProviderService::new(Refusing));
        let err = ServiceKeyProvider::new(svc).load().await.unwrap_err();
        assert!(matches!(err, KeyError::Refused { .. }), "{err:?}");
    }
}
