//! Field encryption: AES-256-GCM with random 96-bit nonces, in a
//! versioned, self-describing envelope bound to where the value lives.
//!
//! # Format
//!
//! The binary form (for a BSON binary or BLOB column):
//!
//! | offset   | bytes | content                                   |
//! |----------|-------|-------------------------------------------|
//! | 0        | 1     | format version, `0x01`                    |
//! | 1        | 1     | key id length `L`, 1..=64                 |
//! | 2        | L     | key id, ASCII `A-Z a-z 0-9 . _ -`         |
//! | 2+L      | 12    | nonce, random                             |
//! | 14+L     | n     | ciphertext (same length as the plaintext) |
//! | 14+L+n   | 16    | GCM tag                                   |
//!
//! The text form (for a string field) is `av1:` followed by the binary
//! form in unpadded URL-safe base64 (RFC 4648 §5).
//!
//! The associated data, authenticated but not stored, is
//! `"alvryn.field.v1" 0x00 || bytes[0..2+L] || u32be(len(collection)) ||
//! collection || u32be(len(record_id)) || record_id || u32be(len(field)) ||
//! field`. A value copied to another record, field or collection, or
//! re-labelled with another key id, fails to decrypt.
//!
//! # Keys and rotation
//!
//! A [`FieldCipher`] holds one active key, which encrypts, and any number
//! of previous keys, which only decrypt; the key id in each ciphertext
//! selects the key. To rotate, make the new key active and keep the old
//! one as previous until every value has been re-encrypted.
//!
//! # The 2^32 bound
//!
//! Every encryption is counted against a durable [`UsageLedger`]; see the
//! [`ledger`] module. At [`MAX_ENCRYPTIONS_PER_KEY`] (or the configured
//! limit) the cipher refuses to encrypt with
//! [`CipherError::KeyExhausted`]; it logs a warning from 90% on.
//!
//! # Randomness
//!
//! Nonces come from `rand`'s thread-local ChaCha12 generator, seeded and
//! periodically reseeded from the operating system. It is not reseeded on
//! `fork()`: do not fork a process after it has encrypted and then encrypt
//! in both halves.

pub mod backend;
pub mod keys;
pub mod ledger;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use backend::{AeadBackend, AeadError, AeadKey, KEY_LEN, NONCE_LEN, TAG_LEN};
pub use keys::{InvalidKeyId, KeyId, KeyMaterial, KeySet, MAX_KEY_ID_LEN};
pub use ledger::{
    FileLedger, LedgerError, LedgerRequest, LedgerResponse, LedgerService, MAX_ENCRYPTIONS_PER_KEY,
    MemoryLedger, Reservation, ServiceLedger, UsageLedger,
};

use crate::secret::SecretBytes;

/// The envelope format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Prefix of the text form.
pub const TEXT_PREFIX: &str = "av1:";
/// Encryptions reserved from the ledger per durable write, by default.
pub const DEFAULT_BLOCK: u64 = 1 << 16;

const AAD_CONTEXT: &[u8] = b"alvryn.field.v1\0";

/// Where an encrypted value lives. Bound into the ciphertext as
/// associated data, so it must be the same at encryption and decryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldContext<'a> {
    /// Collection or table, e.g. `provider_tokens`.
    pub collection: &'a str,
    /// The record's primary key, e.g. a user id.
    pub record_id: &'a str,
    /// The field name, e.g. `refresh_token`.
    pub field: &'a str,
}

impl<'a> FieldContext<'a> {
    /// Builds a context.
    #[must_use]
    pub fn new(collection: &'a str, record_id: &'a str, field: &'a str) -> Self {
        Self {
            collection,
            record_id,
            field,
        }
    }
}

/// Errors of [`FieldCipher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CipherError {
    /// The input is not a ciphertext this cipher can open: malformed,
    /// truncated, altered, sealed for another place, or under a key that
    /// is not configured. Deliberately says no more.
    #[error("the value could not be decrypted")]
    Decrypt,
    /// The active key has sealed as many values as it safely may.
    #[error(
        "field-encryption key {key_id} has reached its limit of {limit} encryptions; rotate the key"
    )]
    KeyExhausted {
        /// The exhausted key.
        key_id: KeyId,
        /// Its limit.
        limit: u64,
    },
    /// The usage ledger could not record the encryption, so none was made.
    #[error("the encryption usage ledger is unavailable; refusing to encrypt uncounted")]
    Ledger(#[source] LedgerError),
    /// The key set cannot be used (duplicate ids, wrong key length).
    #[error("invalid key set: {0}")]
    InvalidKeySet(String),
    /// The plaintext is longer than AES-GCM can seal.
    #[error("the value is too large to encrypt")]
    TooLarge,
}

/// Encryption counts for one key, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    /// The active key.
    pub key_id: KeyId,
    /// Encryptions reserved by every process, as last seen in the ledger.
    pub reserved_total: u64,
    /// Encryptions performed by this cipher (this process).
    pub performed_here: u64,
    /// The limit after which the key refuses to encrypt.
    pub limit: u64,
}

struct ActiveKey {
    id: KeyId,
    /// `version || L || key id`: the stored header, precomputed.
    header: Box<[u8]>,
    /// `AAD_CONTEXT || header`: the fixed start of the associated data.
    aad_prefix: Box<[u8]>,
    aead: Arc<AeadKey>,
    remaining: AtomicU64,
    granted_here: AtomicU64,
    reserved_total: AtomicU64,
    exhausted: AtomicBool,
    refill: tokio::sync::Mutex<()>,
}

struct Inner {
    active: ActiveKey,
    /// Every key, active included, with its associated-data prefix.
    keys: HashMap<KeyId, (Arc<AeadKey>, Box<[u8]>)>,
    ledger: Arc<dyn UsageLedger>,
    block: u64,
    limit: u64,
}

/// Encrypts and decrypts individual fields. Cheap to clone; share one.
#[derive(Clone)]
pub struct FieldCipher {
    inner: Arc<Inner>,
}

impl fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.inner.keys.keys().map(KeyId::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("FieldCipher")
            .field("active", &self.inner.active.id)
            .field("keys", &ids)
            .field("backend", &self.inner.active.aead.backend())
            .finish_non_exhaustive()
    }
}

/// Builds a [`FieldCipher`].
pub struct FieldCipherBuilder {
    keys: KeySet,
    backend: AeadBackend,
    ledger: Arc<dyn UsageLedger>,
    block: u64,
    limit: u64,
}

impl FieldCipherBuilder {
    /// The AEAD implementation (default: [`AeadBackend::default`]).
    #[must_use]
    pub fn backend(mut self, backend: AeadBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The durable usage ledger (default: a [`MemoryLedger`], which does
    /// not survive restarts; production code must set a durable one).
    #[must_use]
    pub fn ledger(mut self, ledger: Arc<dyn UsageLedger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Encryptions reserved per durable ledger write (default 65 536, at
    /// least 1).
    #[must_use]
    pub fn block_size(mut self, block: u64) -> Self {
        self.block = block.max(1);
        self
    }

    /// The per-key limit (default and maximum [`MAX_ENCRYPTIONS_PER_KEY`]).
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit.min(MAX_ENCRYPTIONS_PER_KEY);
        self
    }

    /// Initialises every key.
    ///
    /// # Errors
    /// [`CipherError::InvalidKeySet`] when a key is not 32 bytes or two
    /// keys share an id.
    pub fn build(self) -> Result<FieldCipher, CipherError> {
        let mut keys = HashMap::new();
        for km in self.keys.iter() {
            let aead = AeadKey::new(self.backend, km.key())
                .map_err(|e| CipherError::InvalidKeySet(format!("key {}: {e}", km.id())))?;
            let prefix = [AAD_CONTEXT, &header_of(km.id())]
                .concat()
                .into_boxed_slice();
            if keys
                .insert(km.id().clone(), (Arc::new(aead), prefix))
                .is_some()
            {
                return Err(CipherError::InvalidKeySet(format!(
                    "key id {} appears twice",
                    km.id()
                )));
            }
        }
        let id = self.keys.active.id().clone();
        let header = header_of(&id);
        let (aead, aad_prefix) = keys
            .get(&id)
            .map(|(k, p)| (Arc::clone(k), p.clone()))
            .ok_or_else(|| CipherError::InvalidKeySet("no active key".into()))?;
        Ok(FieldCipher {
            inner: Arc::new(Inner {
                active: ActiveKey {
                    id,
                    aad_prefix,
                    header,
                    aead,
                    remaining: AtomicU64::new(0),
                    granted_here: AtomicU64::new(0),
                    reserved_total: AtomicU64::new(0),
                    exhausted: AtomicBool::new(false),
                    refill: tokio::sync::Mutex::new(()),
                },
                keys,
                ledger: self.ledger,
                block: self.block,
                limit: self.limit,
            }),
        })
    }
}

/// `version || L || key id`. Key ids are at most 64 bytes, so `L` fits.
fn header_of(id: &KeyId) -> Box<[u8]> {
    let id = id.as_str().as_bytes();
    let mut h = Vec::with_capacity(2 + id.len());
    h.push(FORMAT_VERSION);
    h.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    h.extend_from_slice(id);
    h.into_boxed_slice()
}

/// Associated data is built on the stack when it fits.
const AAD_STACK: usize = 256;

/// Calls `f` with the associated data: `prefix` (`AAD_CONTEXT || header`)
/// then each context part with its u32 big-endian length.
fn with_aad<R>(prefix: &[u8], ctx: &FieldContext<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
    let parts = [
        ctx.collection.as_bytes(),
        ctx.record_id.as_bytes(),
        ctx.field.as_bytes(),
    ];
    let len = prefix.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let write = |buf: &mut [u8]| {
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut at = prefix.len();
        for p in parts {
            // Lengths above u32::MAX cannot occur for in-memory strings on
            // the platforms we build for; saturate rather than panic.
            buf[at..at + 4]
                .copy_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
            buf[at + 4..at + 4 + p.len()].copy_from_slice(p);
            at += 4 + p.len();
        }
    };
    if len <= AAD_STACK {
        let mut buf = [0u8; AAD_STACK];
        write(&mut buf[..len]);
        f(&buf[..len])
    } else {
        let mut buf = vec![0u8; len];
        write(&mut buf);
        f(&buf)
    }
}

/// The parts of a binary envelope, located without copying.
struct Parsed<'a> {
    key_id: &'a str,
    header: &'a [u8],
    nonce: [u8; NONCE_LEN],
    ciphertext: std::ops::Range<usize>,
    tag: [u8; TAG_LEN],
}

fn parse(blob: &[u8]) -> Result<Parsed<'_>, CipherError> {
    let (&version, rest) = blob.split_first().ok_or(CipherError::Decrypt)?;
    if version != FORMAT_VERSION {
        return Err(CipherError::Decrypt);
    }
    let (&id_len, _) = rest.split_first().ok_or(CipherError::Decrypt)?;
    let id_len = usize::from(id_len);
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(CipherError::Decrypt);
    }
    let header_len = 2 + id_len;
    let min = header_len + NONCE_LEN + TAG_LEN;
    if blob.len() < min {
        return Err(CipherError::Decrypt);
    }
    let key_id = std::str::from_utf8(&blob[2..header_len]).map_err(|_| CipherError::Decrypt)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&blob[header_len..header_len + NONCE_LEN]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&blob[blob.len() - TAG_LEN..]);
    Ok(Parsed {
        key_id,
        header: &blob[..header_len],
        nonce,
        ciphertext: header_len + NONCE_LEN..blob.len() - TAG_LEN,
        tag,
    })
}

impl FieldCipher {
    /// Starts building a cipher over `keys`.
    #[must_use]
    pub fn builder(keys: KeySet) -> FieldCipherBuilder {
        FieldCipherBuilder {
            keys,
            backend: AeadBackend::default(),
            ledger: Arc::new(MemoryLedger::new()),
            block: DEFAULT_BLOCK,
            limit: MAX_ENCRYPTIONS_PER_KEY,
        }
    }

    /// The id of the key that encrypts.
    #[must_use]
    pub fn active_key_id(&self) -> &KeyId {
        &self.inner.active.id
    }

    /// Encryption counts of the active key, for metrics.
    #[must_use]
    pub fn usage(&self) -> KeyUsage {
        let a = &self.inner.active;
        let granted = a.granted_here.load(Ordering::Acquire);
        let remaining = a.remaining.load(Ordering::Acquire);
        KeyUsage {
            key_id: a.id.clone(),
            reserved_total: a.reserved_total.load(Ordering::Acquire),
            performed_here: granted.saturating_sub(remaining),
            limit: self.inner.limit,
        }
    }

    /// The key id a ciphertext (text form) names, without decrypting it.
    /// For migrations that look for values still under an old key.
    #[must_use]
    pub fn key_id_of(text: &str) -> Option<KeyId> {
        let b64 = text.strip_prefix(TEXT_PREFIX)?.as_bytes();
        // The header fits in the first 88 characters (66 bytes); decode
        // whole 4-character groups only. Non-ASCII input fails to decode.
        let head = &b64[..b64.len().min(88)];
        let bytes = URL_SAFE_NO_PAD
            .decode(&head[..head.len() - head.len() % 4])
            .ok()?;
        let id_len = usize::from(*bytes.get(1)?);
        KeyId::new(std::str::from_utf8(bytes.get(2..2 + id_len)?).ok()?).ok()
    }

    /// The hot path: take one encryption from the local block, if any.
    #[inline]
    fn try_take_slot(&self) -> bool {
        self.inner
            .active
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .is_ok()
    }

    /// The slow path: refill the local block from the ledger (one durable
    /// write), then take one encryption.
    async fn take_slot(&self) -> Result<(), CipherError> {
        let a = &self.inner.active;
        loop {
            if self.try_take_slot() {
                return Ok(());
            }
            if a.exhausted.load(Ordering::Acquire) {
                return Err(CipherError::KeyExhausted {
                    key_id: a.id.clone(),
                    limit: self.inner.limit,
                });
            }
            let _refill = a.refill.lock().await;
            if a.remaining.load(Ordering::Acquire) > 0 {
                continue;
            }
            match self
                .inner
                .ledger
                .reserve(&a.id, self.inner.block, self.inner.limit)
                .await
            {
                Ok(r) => {
                    a.reserved_total.fetch_max(r.total, Ordering::AcqRel);
                    a.granted_here.fetch_add(r.granted, Ordering::AcqRel);
                    a.remaining.fetch_add(r.granted, Ordering::AcqRel);
                    if r.total >= self.inner.limit / 10 * 9 {
                        tracing::warn!(
                            key_id = %a.id,
                            reserved = r.total,
                            limit = self.inner.limit,
                            "field-encryption key is near its encryption limit; rotate it"
                        );
                    }
                }
                Err(LedgerError::LimitReached { .. }) => {
                    a.exhausted.store(true, Ordering::Release);
                    a.reserved_total
                        .fetch_max(self.inner.limit, Ordering::AcqRel);
                    tracing::error!(key_id = %a.id, "field-encryption key exhausted; rotate it");
                }
                Err(e) => return Err(CipherError::Ledger(e)),
            }
        }
    }

    /// Encrypts `plaintext` for `ctx` into the binary form.
    ///
    /// # Errors
    /// [`CipherError::KeyExhausted`] or [`CipherError::Ledger`] when the
    /// encryption cannot be counted; [`CipherError::TooLarge`] for input
    /// beyond AES-GCM's limit. Nothing is returned on error.
    pub async fn encrypt_bytes(
        &self,
        ctx: &FieldContext<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        if !self.try_take_slot() {
            self.take_slot().await?;
        }
        self.seal(ctx, plaintext)
    }

    /// Seals under the active key; the caller has taken a slot.
    fn seal(&self, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let a = &self.inner.active;
        let header_len = a.header.len();
        let mut out = Vec::with_capacity(header_len + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&a.header);
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = with_aad(&a.aad_prefix, ctx, |aad| {
            a.aead
                .seal_in_place(&nonce, aad, &mut out[header_len + NONCE_LEN..])
        })
        .map_err(|_| CipherError::TooLarge)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Encrypts `plaintext` for `ctx` into the text form (`av1:...`).
    ///
    /// # Errors
    /// As [`FieldCipher::encrypt_bytes`].
    pub async fn encrypt(
        &self,
        ctx: &FieldContext<'_>,
        plaintext: &[u8],
    ) -> Result<String, CipherError> {
        let blob = self.encrypt_bytes(ctx, plaintext).await?;
        let mut text = String::with_capacity(TEXT_PREFIX.len() + blob.len().div_ceil(3) * 4);
        text.push_str(TEXT_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&blob, &mut text);
        Ok(text)
    }

    /// Decrypts a binary-form value sealed for `ctx`.
    ///
    /// # Errors
    /// [`CipherError::Decrypt`] for anything but an authentic ciphertext
    /// for `ctx` under a configured key. Never panics on any input.
    pub fn decrypt_bytes(
        &self,
        ctx: &FieldContext<'_>,
        blob: &[u8],
    ) -> Result<SecretBytes, CipherError> {
        let p = parse(blob)?;
        let a = &self.inner.active;
        // The active key is the common case: compare header bytes, no lookup.
        let (aead, prefix) = if p.header == &a.header[..] {
            (&a.aead, &a.aad_prefix)
        } else {
            let (k, prefix) = self.inner.keys.get(p.key_id).ok_or(CipherError::Decrypt)?;
            (k, prefix)
        };
        let mut buf = blob[p.ciphertext.clone()].to_vec();
        let opened = with_aad(prefix, ctx, |aad| {
            aead.open_in_place(&p.nonce, aad, &mut buf, &p.tag)
        });
        let secret = SecretBytes::new(buf);
        opened.map_err(|_| CipherError::Decrypt)?;
        Ok(secret)
    }

    /// Decrypts a text-form value sealed for `ctx`.
    ///
    /// # Errors
    /// As [`FieldCipher::decrypt_bytes`].
    pub fn decrypt(&self, ctx: &FieldContext<'_>, text: &str) -> Result<SecretBytes, CipherError> {
        let b64 = text.strip_prefix(TEXT_PREFIX).ok_or(CipherError::Decrypt)?;
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CipherError::Decrypt)?;
        self.decrypt_bytes(ctx, &blob)
    }
}

#[cfg(test)]
mod tests;
