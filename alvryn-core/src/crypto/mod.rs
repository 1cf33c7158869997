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
//! `0x01 || leb128(len(collection)) || collection || leb128(len(record_id))
//! || record_id || leb128(len(field)) || field`, zero-padded to a multiple
//! of 64 bytes (lengths in bytes of the UTF-8, as unsigned LEB128). A value
//! copied to another record, field or collection fails to decrypt. The key
//! id is not in it: the key itself authenticates the ciphertext, so a
//! value relabelled with another key's id fails to decrypt as well (two
//! ids for the same key bytes are interchangeable, which reveals nothing).
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
//! [`ledger`] module. The cipher reserves blocks from the ledger, and each
//! thread takes 32 encryptions at a time from the block, so the hot path
//! is a thread-local decrement (no atomic instruction). At
//! [`MAX_ENCRYPTIONS_PER_KEY`] (or the configured limit) the cipher
//! refuses to encrypt with [`CipherError::KeyExhausted`]; it logs a
//! warning from 90% on.
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
mod slots;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use backend::{AeadBackend, AeadError, AeadKey, KEY_LEN, NONCE_LEN, TAG_LEN};
pub use keys::{InvalidKeyId, KeyId, KeyMaterial, KeySet, MAX_KEY_ID_LEN};
pub use ledger::{
    FileLedger, LedgerError, MAX_ENCRYPTIONS_PER_KEY, MemoryLedger, Reservation, UsageLedger,
};

use crate::secret::SecretBytes;

/// The envelope format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Prefix of the text form.
pub const TEXT_PREFIX: &str = "av1:";
/// Encryptions reserved from the ledger per durable write, by default.
pub const DEFAULT_BLOCK: u64 = 1 << 16;

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
    /// The plaintext is longer than AES-GCM can seal, or the context too
    /// long to encode (on 32-bit targets only).
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
    /// Encryptions performed by this cipher (this process). Exact for
    /// the calling thread; each other thread that encrypted may hold up
    /// to 31 taken but unspent, counted here until it gives them back.
    pub performed_here: u64,
    /// The limit after which the key refuses to encrypt.
    pub limit: u64,
}

struct ActiveKey {
    id: KeyId,
    /// `version || L || key id`: the stored header, precomputed.
    header: Box<[u8]>,
    aead: Arc<AeadKey>,
    /// Encryptions granted by the ledger and not yet spent.
    slots: Arc<slots::Slots>,
    granted_here: AtomicU64,
    reserved_total: AtomicU64,
    exhausted: AtomicBool,
    refill: tokio::sync::Mutex<()>,
}

struct Inner {
    active: ActiveKey,
    /// Every key, active included.
    keys: HashMap<KeyId, Arc<AeadKey>>,
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
            if keys.insert(km.id().clone(), Arc::new(aead)).is_some() {
                return Err(CipherError::InvalidKeySet(format!(
                    "key id {} appears twice",
                    km.id()
                )));
            }
        }
        let id = self.keys.active.id().clone();
        let header = header_of(&id);
        let aead = keys
            .get(&id)
            .map(Arc::clone)
            .ok_or_else(|| CipherError::InvalidKeySet("no active key".into()))?;
        Ok(FieldCipher {
            inner: Arc::new(Inner {
                active: ActiveKey {
                    id,
                    header,
                    aead,
                    slots: Arc::default(),
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
const AAD_STACK: usize = 128;
/// The associated data is zero-padded to a multiple of this many bytes:
/// the AEAD then never authenticates a partial block of it, and the
/// pure-Rust GHASH works on whole groups of four blocks. Measured on the
/// rustcrypto seal of 64 B: 64 bytes of associated data add 7 ns, 48
/// bytes 33 ns, 112 bytes 46 ns.
const AAD_ALIGN: usize = 64;

/// Bytes of `n` as an unsigned LEB128 varint.
#[inline]
fn varint_len(n: usize) -> usize {
    // 7 bits per byte; `| 1` makes zero take one byte.
    ((usize::BITS - (n | 1).leading_zeros()) as usize).div_ceil(7)
}

/// Writes `n` as an unsigned LEB128 varint at `buf[at..]`; returns the
/// position after it.
#[inline]
fn put_varint(buf: &mut [u8], mut at: usize, mut n: usize) -> usize {
    while n >= 0x80 {
        buf[at] = (n as u8) | 0x80;
        n >>= 7;
        at += 1;
    }
    buf[at] = n as u8;
    at + 1
}

/// Calls `f` with the associated data for `ctx`: the format version,
/// then collection, record id and field, each preceded by its length as
/// an unsigned LEB128 varint, then zeros up to a multiple of 64 bytes
/// (none when already a multiple). The encoding is prefix-free, so two
/// contexts never share it. The version byte comes first so that a later
/// format, which must do the same, can never share associated data with
/// this one.
///
/// `None` only when the context is too large to encode (three parts
/// longer together than the address space: possible on 32-bit targets
/// only, with the same huge string passed three times).
#[inline]
fn with_aad<R>(ctx: &FieldContext<'_>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let parts = [
        ctx.collection.as_bytes(),
        ctx.record_id.as_bytes(),
        ctx.field.as_bytes(),
    ];
    let len = parts.iter().fold(1usize, |len, p| {
        len.saturating_add(varint_len(p.len()))
            .saturating_add(p.len())
    });
    // Writes into a zeroed buffer of at least `len` bytes; the rest of
    // it stays zero and is the padding.
    let write = |buf: &mut [u8]| {
        buf[0] = FORMAT_VERSION;
        let mut at = 1;
        for p in parts {
            at = put_varint(buf, at, p.len());
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
    };
    // A saturated `len` (usize::MAX) has no next multiple: None.
    let padded = len.checked_next_multiple_of(AAD_ALIGN)?;
    if padded <= AAD_STACK {
        let mut buf = [0u8; AAD_STACK];
        write(&mut buf);
        Some(f(&buf[..padded]))
    } else {
        let mut buf = vec![0u8; padded];
        write(&mut buf);
        Some(f(&buf))
    }
}

/// A fresh random nonce from the thread-local generator. Two words
/// rather than `fill` on 12 bytes: half the cost.
#[inline]
fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&rng.next_u32().to_le_bytes());
    nonce
}

/// The parts of a binary envelope, located without copying.
struct Parsed<'a> {
    /// `version || L || key id` (the id not yet checked to be UTF-8).
    header: &'a [u8],
    nonce: [u8; NONCE_LEN],
    ciphertext: std::ops::Range<usize>,
    tag: [u8; TAG_LEN],
}

/// Locates the parts of a binary envelope; `None` if it cannot be one.
/// (An `Option`, not a `Result`: building an error value on the success
/// path costs a drop on every call.)
fn parse(blob: &[u8]) -> Option<Parsed<'_>> {
    let [version, id_len, ..] = *blob else {
        return None;
    };
    let id_len = usize::from(id_len);
    if version != FORMAT_VERSION || id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return None;
    }
    let header_len = 2 + id_len;
    let start = header_len + NONCE_LEN;
    let end = blob.len().checked_sub(TAG_LEN)?;
    if end < start {
        return None;
    }
    let nonce = blob[header_len..start].try_into().ok()?;
    let tag = blob[end..].try_into().ok()?;
    Some(Parsed {
        header: &blob[..header_len],
        nonce,
        ciphertext: start..end,
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
        // The pool before the grants: a refill in between then makes the
        // figure err high, never low.
        a.slots.flush_local();
        let remaining = a.slots.pooled();
        let granted = a.granted_here.load(Ordering::Acquire);
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

    /// The hot path: take one encryption from what this process holds,
    /// if any (see the `slots` module).
    #[inline]
    fn try_take_slot(&self) -> bool {
        self.inner.active.slots.try_take()
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
            if a.slots.pooled() > 0 {
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
                    a.slots.add(r.granted);
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
    #[inline]
    pub async fn encrypt_bytes(
        &self,
        ctx: &FieldContext<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        if !self.try_take_slot() {
            // Boxed: the refill future is large, and holding it inline
            // would make every call's future as large.
            Box::pin(self.take_slot()).await?;
        }
        self.seal(ctx, plaintext)
    }

    /// Seals under the active key; the caller has taken a slot.
    #[inline(always)]
    fn seal(&self, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let a = &self.inner.active;
        let header_len = a.header.len();
        let mut out = Vec::with_capacity(header_len + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&a.header);
        let nonce = random_nonce();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let Some(Ok(tag)) = with_aad(ctx, |aad| {
            a.aead
                .seal_in_place(&nonce, aad, &mut out[header_len + NONCE_LEN..])
        }) else {
            return Err(CipherError::TooLarge);
        };
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
        let Some(p) = parse(blob) else {
            return Err(CipherError::Decrypt);
        };
        let a = &self.inner.active;
        // The active key is the common case: compare header bytes, no lookup.
        let aead = if p.header == &a.header[..] {
            &a.aead
        } else {
            let id = std::str::from_utf8(&p.header[2..]).ok();
            let Some(k) = id.and_then(|id| self.inner.keys.get(id)) else {
                return Err(CipherError::Decrypt);
            };
            k
        };
        let mut buf = blob[p.ciphertext.clone()].to_vec();
        match with_aad(ctx, |aad| {
            aead.open_in_place(&p.nonce, aad, &mut buf, &p.tag)
        }) {
            Some(Ok(())) => Ok(SecretBytes::new(buf)),
            _ => {
                // What the AEAD left in the buffer is unspecified: wipe it.
                zeroize::Zeroize::zeroize(buf.as_mut_slice());
                Err(CipherError::Decrypt)
            }
        }
    }

    /// Decrypts a text-form value sealed for `ctx`.
    ///
    /// # Errors
    /// As [`FieldCipher::decrypt_bytes`].
    pub fn decrypt(&self, ctx: &FieldContext<'_>, text: &str) -> Result<SecretBytes, CipherError> {
        let Some(b64) = text.strip_prefix(TEXT_PREFIX) else {
            return Err(CipherError::Decrypt);
        };
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CipherError::Decrypt)?;
        self.decrypt_bytes(ctx, &blob)
    }
}

#[cfg(test)]
mod tests;
