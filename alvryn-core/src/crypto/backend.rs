//! The raw AEAD: AES-256-GCM with a 96-bit nonce and a 128-bit tag, from
//! one of two implementations behind one API.
//!
//! * [`AeadBackend::RustCrypto`]: the pure-Rust `aes-gcm` crate, always
//!   available; the default for embedders.
//! * [`AeadBackend::AwsLc`]: `aws-lc-rs` (feature `aws-lc`), several times
//!   faster on CPUs with AES-NI/VAES; the reference server enables it.
//!
//! Both produce byte-identical output for the same key, nonce, associated
//! data and plaintext, so a value sealed by one opens with the other.
//!
//! Each backend also draws the random nonces for its keys
//! ([`AeadKey::random_nonce`]) from a generator that a `fork()` cannot
//! make repeat the parent's output:
//!
//! * `AwsLc`: `aws_lc_rs::rand` (AWS-LC's `RAND_bytes`): a per-thread
//!   CTR-DRBG that checks AWS-LC's "uniqueness-breaking event" generation
//!   number before every draw. On Linux that number lives in a page
//!   marked `MADV_WIPEONFORK` (`MAP_INHERIT_ZERO` on the BSDs): the
//!   kernel hands the child of any fork (`fork()`, or a raw `clone`
//!   without `CLONE_VM`) a zeroed copy, the generation no longer matches,
//!   and the child's generator reseeds from the OS before its first
//!   output. Where that detection is unavailable, AWS-LC reseeds every
//!   state that is not freshly seeded on every call
//!   (`rand_check_ctr_drbg_uniqueness` in `crypto/fipsmodule/rand/rand.c`).
//! * `RustCrypto`: the operating system, on every nonce (`getrandom`:
//!   the `getrandom(2)` system call on Linux). The generator's state is
//!   in the kernel, not in the process, so a fork copies none of it.
//!   This costs a system call per encryption where glibc has no vDSO
//!   `getrandom` (before 2.41); the field-encryption benches measure it.
//!   A faster userspace generator would have to detect forks itself,
//!   which takes `madvise` or `pthread_atfork`, both `unsafe` to call
//!   (this workspace forbids `unsafe`), or a pid check, which is itself a
//!   system call and misses a grandchild that reuses a pid.
//!
//! This is the building block under [`FieldCipher`](super::FieldCipher);
//! it is public so tests can run known-answer vectors and benchmarks can
//! measure the envelope's cost against it.

use std::fmt;

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};

use crate::secret::{RandomError, SecretBytes};

/// Key length of AES-256 in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Which AES-256-GCM implementation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AeadBackend {
    /// The pure-Rust `aes-gcm` crate.
    RustCrypto,
    /// `aws-lc-rs` (cargo feature `aws-lc`).
    #[cfg(feature = "aws-lc")]
    AwsLc,
}

impl AeadBackend {
    /// Every backend compiled into this build.
    pub const ALL: &'static [AeadBackend] = &[
        AeadBackend::RustCrypto,
        #[cfg(feature = "aws-lc")]
        AeadBackend::AwsLc,
    ];

    /// A short, stable name (`rustcrypto`, `aws-lc`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AeadBackend::RustCrypto => "rustcrypto",
            #[cfg(feature = "aws-lc")]
            AeadBackend::AwsLc => "aws-lc",
        }
    }
}

impl Default for AeadBackend {
    /// `AwsLc` when the `aws-lc` feature is on, otherwise `RustCrypto`.
    fn default() -> Self {
        #[cfg(feature = "aws-lc")]
        {
            AeadBackend::AwsLc
        }
        #[cfg(not(feature = "aws-lc"))]
        {
            AeadBackend::RustCrypto
        }
    }
}

/// The key was not 32 bytes long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an AES-256 key must be {KEY_LEN} bytes, found {found}")]
pub struct KeyLengthError {
    /// The length that was found.
    pub found: usize,
}

/// Sealing failed (input longer than AES-GCM allows) or opening failed
/// (wrong key, wrong associated data, or altered input). Deliberately
/// carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD operation failed")]
pub struct AeadError;

/// An initialised AES-256-GCM key for one backend. The key schedule is
/// computed once here, not per message.
pub struct AeadKey {
    inner: Inner,
}

enum Inner {
    // Boxed: the expanded key schedule is large, and `aes-gcm` zeroizes
    // it on drop only with its `zeroize` feature, which we enable.
    RustCrypto(Box<Aes256Gcm>),
    #[cfg(feature = "aws-lc")]
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl AeadKey {
    /// Initialises `key` (exactly 32 bytes) for `backend`.
    ///
    /// # Errors
    /// [`KeyLengthError`] when `key` is not 32 bytes.
    pub fn new(backend: AeadBackend, key: &SecretBytes) -> Result<Self, KeyLengthError> {
        let bytes = key.expose();
        if bytes.len() != KEY_LEN {
            return Err(KeyLengthError { found: bytes.len() });
        }
        let inner = match backend {
            AeadBackend::RustCrypto => {
                let k = aes_gcm::Key::<Aes256Gcm>::try_from(bytes)
                    .map_err(|_| KeyLengthError { found: bytes.len() })?;
                Inner::RustCrypto(Box::new(Aes256Gcm::new(&k)))
            }
            #[cfg(feature = "aws-lc")]
            AeadBackend::AwsLc => {
                let unbound =
                    aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes)
                        .map_err(|_| KeyLengthError { found: bytes.len() })?;
                Inner::AwsLc(aws_lc_rs::aead::LessSafeKey::new(unbound))
            }
        };
        Ok(Self { inner })
    }

    /// The backend this key runs on.
    #[must_use]
    pub fn backend(&self) -> AeadBackend {
        match self.inner {
            Inner::RustCrypto(_) => AeadBackend::RustCrypto,
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(_) => AeadBackend::AwsLc,
        }
    }

    /// A fresh random nonce from this backend's fork-safe generator (see
    /// the module documentation).
    ///
    /// # Errors
    /// [`RandomError`] when the generator fails (the operating system
    /// cannot provide randomness); no nonce is returned.
    #[inline]
    pub fn random_nonce(&self) -> Result<[u8; NONCE_LEN], RandomError> {
        let mut nonce = [0u8; NONCE_LEN];
        match self.inner {
            Inner::RustCrypto(_) => getrandom::fill(&mut nonce).map_err(|_| RandomError)?,
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(_) => aws_lc_rs::rand::fill(&mut nonce).map_err(|_| RandomError)?,
        }
        Ok(nonce)
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// # Errors
    /// [`AeadError`] only when the input exceeds AES-GCM's length limit.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        match &self.inner {
            Inner::RustCrypto(k) => {
                let tag = k
                    .encrypt_inout_detached(&(*nonce).into(), aad, in_out.into())
                    .map_err(|_| AeadError)?;
                Ok(tag.into())
            }
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), in_out)
                    .map_err(|_| AeadError)?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
        }
    }

    /// Decrypts `in_out` in place after checking `tag`. On failure the
    /// contents of `in_out` are unspecified and must be discarded.
    ///
    /// # Errors
    /// [`AeadError`] when the tag does not verify.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        match &self.inner {
            Inner::RustCrypto(k) => k
                .decrypt_inout_detached(&(*nonce).into(), aad, in_out.into(), &(*tag).into())
                .map_err(|_| AeadError),
            #[cfg(feature = "aws-lc")]
            Inner::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(*nonce);
                k.open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), tag, in_out)
                    .map(|_| ())
                    .map_err(|_| AeadError)
            }
        }
    }
}
