//! # alvryn-core
//!
//! The security and billing plumbing of a SaaS backend, as a library:
//! field encryption with rotating keys ([`crypto`]), where keys come from
//! ([`key`]), and the secret types everything else is built on
//! ([`secret`]).
//!
//! Each pluggable part is a small `async` trait with written failure
//! modes, plus a [`tower::Service`] view of it so timeouts, retries and
//! limits are ordinary layers, and an adapter back from a service to the
//! trait.
//!
//! ```
//! use std::sync::Arc;
//! use alvryn_core::crypto::{FieldCipher, FieldContext, FileLedger, KeyMaterial, KeySet};
//! use alvryn_core::secret::SecretBytes;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = KeyMaterial::fingerprinted(SecretBytes::random(32)?);
//! # let dir = tempfile::tempdir()?;
//! // The ledger counts each key's encryptions durably; it is always named.
//! let ledger = Arc::new(FileLedger::new(dir.path().join("usage.json")));
//! let cipher = FieldCipher::builder(KeySet::single(key), ledger).build()?;
//! let ctx = FieldContext::new("users", "user-42", "ssn");
//! let stored: String = cipher.encrypt(&ctx, b"078-05-1120").await?;
//! assert_eq!(cipher.decrypt(&ctx, &stored)?.expose(), b"078-05-1120");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod billing;
pub mod crypto;
#[cfg(any(feature = "oauth", feature = "stripe"))]
pub mod http;
pub mod jobs;
pub mod key;
pub mod metrics;
#[cfg(feature = "oauth")]
pub mod oauth;
pub mod secret;
mod service;
pub mod store;
pub mod token;

pub use crypto::{FieldCipher, FieldContext};
pub use secret::{SecretBytes, SecretString};

/// `n` random bytes (from the thread's CSPRNG) as lowercase hexadecimal:
/// unguessable ids, idempotency keys, temporary file names.
#[must_use]
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::fill(&mut b[..]);
    hex::encode(b)
}
