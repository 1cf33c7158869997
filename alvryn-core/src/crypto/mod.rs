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
//! Every encryption is counted against a durable [`UsageLedger`], which
//! the caller always names ([`FieldCipher::builder`] takes it; there is no
//! default), under the key's [`KeyFingerprint`]: two labels for the same
//! key bytes share one count. See the [`ledger`] module. The cipher
//! reserves blocks from the ledger, starting at [`DEFAULT_FIRST_BLOCK`]
//! and doubling on each refill up to [`DEFAULT_BLOCK`], and each thread
//! takes 32 encryptions at a time from the block, so the hot path is a
//! thread-local decrement (no atomic instruction). At
//! [`MAX_ENCRYPTIONS_PER_KEY`] (or the configured limit) the cipher
//! refuses to encrypt with [`CipherError::KeyExhausted`]; it logs a
//! warning from 90% on.
//!
//! # Randomness
//!
//! Nonces come from the active key's backend, from a generator a `fork()`
//! cannot make repeat ([`AeadKey::random_nonce`]), so a library loaded by
//! a pre-forking host (a worker forked after the parent encrypted) never
//! reuses the parent's nonces:
//!
//! * aws-lc: `aws_lc_rs::rand`, AWS-LC's per-thread CTR-DRBG, which
//!   detects forks through a `MADV_WIPEONFORK` page and reseeds in the
//!   child before its first output (and reseeds on every call where fork
//!   detection is unavailable);
//! * rustcrypto: the operating system on every nonce (`getrandom(2)`):
//!   no generator state in the process, so nothing for a fork to copy.
//!
//! The backend module documents the argument in full. No test forks: it
//! would take `unsafe` (`libc::fork`), which this workspace forbids, and a
//! child started with `std::process::Command` is a new program, not a
//! fork.

pub mod backend;
pub mod keys;
pub mod ledger;
mod slots;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64_simd::{AsOut as _, URL_SAFE_NO_PAD};

pub use backend::{AeadBackend, AeadError, AeadKey, KEY_LEN, NONCE_LEN, TAG_LEN};
pub use keys::{InvalidKeyId, KeyFingerprint, KeyId, KeyMaterial, KeySet, MAX_KEY_ID_LEN};
pub use ledger::{
    FileLedger, LedgerError, MAX_ENCRYPTIONS_PER_KEY, MemoryLedger, Reservation, UsageLedger,
};

use crate::secret::{RandomError, SecretBytes};

/// The envelope format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Prefix of the text form.
pub const TEXT_PREFIX: &str = "av1:";
/// The largest block of encryptions reserved from the ledger in one
/// durable write, by default ([`FieldCipherBuilder::block_size`]).
pub const DEFAULT_BLOCK: u64 = 1 << 16;
/// The first block a cipher reserves, by default
/// ([`FieldCipherBuilder::first_block`]); each refill doubles it, up to
/// the largest block.
pub const DEFAULT_FIRST_BLOCK: u64 = 256;

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
    /// No random nonce could be drawn; nothing was encrypted.
    #[error("no random nonce could be drawn; refusing to encrypt")]
    Randomness(#[source] RandomError),
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
    /// What the ledger counts this key under.
    fingerprint: KeyFingerprint,
    /// `version || L || key id`: the stored header, precomputed.
    header: Box<[u8]>,
    aead: Arc<AeadKey>,
    /// Encryptions granted by the ledger and not yet spent.
    slots: Arc<slots::Slots>,
    granted_here: AtomicU64,
    reserved_total: AtomicU64,
    exhausted: AtomicBool,
    refill: tokio::sync::Mutex<Refill>,
}

/// What the refill path remembers between refills (behind its lock).
struct Refill {
    /// The size of the next block asked of the ledger.
    next_block: u64,
    /// Whether a count under the key's label has been looked for and, if
    /// found, carried over to its fingerprint (see the `ledger` module).
    label_checked: bool,
}

struct Inner {
    active: ActiveKey,
    /// Every key, active included.
    keys: HashMap<KeyId, Arc<AeadKey>>,
    ledger: Arc<dyn UsageLedger>,
    /// The largest block.
    block: u64,
    limit: u64,
    /// Whether encryptions publish the usage gauges.
    publish: bool,
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

/// Builds a [`FieldCipher`]; made by [`FieldCipher::builder`].
pub struct FieldCipherBuilder {
    keys: KeySet,
    backend: AeadBackend,
    ledger: Arc<dyn UsageLedger>,
    first_block: u64,
    block: u64,
    limit: u64,
    publish: bool,
}

impl FieldCipherBuilder {
    /// The AEAD implementation (default: [`AeadBackend::default`]).
    #[must_use]
    pub fn backend(mut self, backend: AeadBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The largest block of encryptions reserved per durable ledger
    /// write (default [`DEFAULT_BLOCK`], 65 536; at least 1). Blocks start
    /// at [`first_block`](Self::first_block) and double up to this.
    #[must_use]
    pub fn block_size(mut self, block: u64) -> Self {
        self.block = block.max(1);
        self
    }

    /// The first block reserved (default [`DEFAULT_FIRST_BLOCK`], 256; at
    /// least 1, and never more than [`block_size`](Self::block_size)).
    /// A process that starts, encrypts a few values and exits spends this
    /// many of the key's encryptions, not a whole block.
    #[must_use]
    pub fn first_block(mut self, first: u64) -> Self {
        self.first_block = first.max(1);
        self
    }

    /// Whether this cipher publishes its key's usage as the
    /// `field_encryptions` and `field_encryption_limit` gauges (default
    /// yes). Off for a cipher whose key protects nothing, such as a
    /// start-up self-test's, so it never shows up next to the real keys.
    #[must_use]
    pub fn publish_metrics(mut self, publish: bool) -> Self {
        self.publish = publish;
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
        let fingerprint = self.keys.active.fingerprint().clone();
        let header = header_of(&id);
        let aead = keys
            .get(&id)
            .map(Arc::clone)
            .ok_or_else(|| CipherError::InvalidKeySet("no active key".into()))?;
        Ok(FieldCipher {
            inner: Arc::new(Inner {
                active: ActiveKey {
                    id,
                    fingerprint,
                    header,
                    aead,
                    slots: Arc::default(),
                    granted_here: AtomicU64::new(0),
                    reserved_total: AtomicU64::new(0),
                    exhausted: AtomicBool::new(false),
                    refill: tokio::sync::Mutex::new(Refill {
                        next_block: self.first_block.min(self.block),
                        label_checked: false,
                    }),
                },
                keys,
                ledger: self.ledger,
                block: self.block,
                limit: self.limit,
                publish: self.publish,
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
    /// Starts building a cipher over `keys`, counting its encryptions in
    /// `ledger`.
    ///
    /// The ledger is what keeps each key under its 2^32 bound across
    /// restarts and processes, so it is not optional: pass the store's
    /// ledger (SQLite, MongoDB), a [`FileLedger`], or, in tests and for
    /// keys that protect nothing, a [`MemoryLedger`] (which forgets on
    /// restart).
    #[must_use]
    pub fn builder(keys: KeySet, ledger: Arc<dyn UsageLedger>) -> FieldCipherBuilder {
        FieldCipherBuilder {
            keys,
            backend: AeadBackend::default(),
            ledger,
            first_block: DEFAULT_FIRST_BLOCK,
            block: DEFAULT_BLOCK,
            limit: MAX_ENCRYPTIONS_PER_KEY,
            publish: true,
        }
    }

    /// The id of the key that encrypts.
    #[must_use]
    pub fn active_key_id(&self) -> &KeyId {
        &self.inner.active.id
    }

    /// What the ledger counts the active key's encryptions under.
    #[must_use]
    pub fn active_key_fingerprint(&self) -> &KeyFingerprint {
        &self.inner.active.fingerprint
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

    /// Reads the active key's count from the usage ledger (every
    /// process's reservations) and publishes it, with the key's limit, as
    /// the gauges `field_encryptions{key_id}` and
    /// `field_encryption_limit{key_id}` (the key's fingerprint, never its
    /// material). Encryptions publish them too, at each reservation; this
    /// is for a scrape, so a process that has not encrypted yet still
    /// shows the key's count.
    ///
    /// # Errors
    /// [`CipherError::Ledger`] when the ledger cannot be read; nothing is
    /// published.
    pub async fn publish_usage(&self) -> Result<KeyUsage, CipherError> {
        let a = &self.inner.active;
        let total = self
            .inner
            .ledger
            .reserved(&a.fingerprint)
            .await
            .map_err(CipherError::Ledger)?;
        a.reserved_total.fetch_max(total, Ordering::AcqRel);
        self.set_usage_gauges(a.reserved_total.load(Ordering::Acquire));
        Ok(self.usage())
    }

    #[allow(clippy::cast_precision_loss)]
    fn set_usage_gauges(&self, total: u64) {
        if !self.inner.publish {
            return;
        }
        let id = self.inner.active.fingerprint.as_str().to_owned();
        metrics::gauge!(crate::metrics::FIELD_ENCRYPTIONS, "key_id" => id.clone())
            .set(total as f64);
        metrics::gauge!(crate::metrics::FIELD_ENCRYPTION_LIMIT, "key_id" => id)
            .set(self.inner.limit as f64);
    }

    /// The key id a ciphertext (text form) names, without decrypting it.
    /// For migrations that look for values still under an old key.
    #[must_use]
    pub fn key_id_of(text: &str) -> Option<KeyId> {
        let b64 = text.strip_prefix(TEXT_PREFIX)?.as_bytes();
        // The header fits in the first 88 characters (66 bytes); decode
        // whole 4-character groups only. Non-ASCII input fails to decode.
        let head = &b64[..b64.len().min(88)];
        let mut bytes = [0u8; 66];
        let bytes = URL_SAFE_NO_PAD
            .decode(
                &head[..head.len() - head.len() % 4],
                bytes.as_mut_slice().as_out(),
            )
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
            let mut refill = a.refill.lock().await;
            if a.slots.pooled() > 0 {
                continue;
            }
            let carried = if refill.label_checked {
                0
            } else {
                self.label_count().await?
            };
            let block = refill.next_block;
            match self
                .inner
                .ledger
                .reserve(
                    &a.fingerprint,
                    block.saturating_add(carried),
                    self.inner.limit,
                )
                .await
            {
                Ok(r) => {
                    refill.label_checked = true;
                    refill.next_block = block.saturating_mul(2).min(self.inner.block);
                    // The carried count is reserved and never used.
                    let usable = r.granted.saturating_sub(carried);
                    a.reserved_total.fetch_max(r.total, Ordering::AcqRel);
                    a.granted_here.fetch_add(usable, Ordering::AcqRel);
                    a.slots.add(usable);
                    self.set_usage_gauges(a.reserved_total.load(Ordering::Acquire));
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
                    self.set_usage_gauges(self.inner.limit);
                    tracing::error!(key_id = %a.id, "field-encryption key exhausted; rotate it");
                }
                Err(e) => return Err(CipherError::Ledger(e)),
            }
        }
    }

    /// The count an earlier version kept under the active key's label,
    /// when its fingerprint has none yet (0 otherwise): the first
    /// reservation under the fingerprint adds it, so a key's count never
    /// goes down when the ledger's keying changes. Two ledger reads, once
    /// per cipher, and only for a key whose label is not its fingerprint.
    async fn label_count(&self) -> Result<u64, CipherError> {
        let a = &self.inner.active;
        let legacy = KeyFingerprint::legacy_label(&a.id);
        if legacy == a.fingerprint {
            return Ok(0);
        }
        let ledger = &self.inner.ledger;
        if ledger
            .reserved(&a.fingerprint)
            .await
            .map_err(CipherError::Ledger)?
            > 0
        {
            return Ok(0);
        }
        ledger.reserved(&legacy).await.map_err(CipherError::Ledger)
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
        let nonce = a.aead.random_nonce().map_err(CipherError::Randomness)?;
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
        let mut text =
            String::with_capacity(TEXT_PREFIX.len() + URL_SAFE_NO_PAD.encoded_length(blob.len()));
        text.push_str(TEXT_PREFIX);
        URL_SAFE_NO_PAD.encode_append(&blob, &mut text);
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
        let Some(aead) = self.key_for(p.header) else {
            return Err(CipherError::Decrypt);
        };
        let buf = blob[p.ciphertext.clone()].to_vec();
        open_into(aead, ctx, &p.nonce, buf, &p.tag)
    }

    /// The configured key a header (`version || L || key id`) names.
    #[inline]
    fn key_for(&self, header: &[u8]) -> Option<&AeadKey> {
        let a = &self.inner.active;
        // The active key is the common case: compare header bytes, no lookup.
        if header == &a.header[..] {
            return Some(&a.aead);
        }
        let id = std::str::from_utf8(header.get(2..)?).ok()?;
        self.inner.keys.get(id).map(|k| &**k)
    }

    /// Decrypts a text-form value sealed for `ctx`.
    ///
    /// # Errors
    /// As [`FieldCipher::decrypt_bytes`].
    pub fn decrypt(&self, ctx: &FieldContext<'_>, text: &str) -> Result<SecretBytes, CipherError> {
        let Some(b64) = text.strip_prefix(TEXT_PREFIX) else {
            return Err(CipherError::Decrypt);
        };
        let Some(t) = split_text(b64.as_bytes()) else {
            return Err(CipherError::Decrypt);
        };
        let Some(aead) = self.key_for(&t.head[..t.header_len]) else {
            return Err(CipherError::Decrypt);
        };
        open_into(aead, ctx, &t.nonce, t.ciphertext, &t.tag)
    }
}

/// Opens `buf` (the ciphertext, to become the plaintext) in place.
/// `buf` must have no spare capacity, so that the plaintext is not copied
/// again when it becomes a `SecretBytes`.
#[inline]
fn open_into(
    aead: &AeadKey,
    ctx: &FieldContext<'_>,
    nonce: &[u8; NONCE_LEN],
    mut buf: Vec<u8>,
    tag: &[u8; TAG_LEN],
) -> Result<SecretBytes, CipherError> {
    match with_aad(ctx, |aad| aead.open_in_place(nonce, aad, &mut buf, tag)) {
        Some(Ok(())) => Ok(SecretBytes::new(buf)),
        _ => {
            // What the AEAD left in the buffer is unspecified: wipe it.
            zeroize::Zeroize::zeroize(buf.as_mut_slice());
            Err(CipherError::Decrypt)
        }
    }
}

/// The most bytes of a text-form value before the first whole base64
/// group inside its ciphertext: the longest header and the nonce, plus
/// the two bytes of a partial group.
const HEAD_MAX: usize = 2 + MAX_KEY_ID_LEN + NONCE_LEN + 2;
/// The most bytes from the last whole base64 group inside the ciphertext
/// to the end: two bytes of a partial group and the tag.
const TAIL_MAX: usize = 2 + TAG_LEN;

/// A text-form value decoded for opening in place.
struct TextParts {
    /// The first bytes, header and nonce included.
    head: [u8; HEAD_MAX + 1],
    header_len: usize,
    nonce: [u8; NONCE_LEN],
    /// Exactly the ciphertext, in a buffer of exactly its length.
    ciphertext: Vec<u8>,
    tag: [u8; TAG_LEN],
}

/// Decodes the base64 of a text-form value (after `av1:`) so that the
/// ciphertext lands, alone, in a buffer of exactly its length, where it
/// can be opened in place and handed out as the plaintext: no second
/// copy of the value, no allocation but that buffer.
///
/// Base64 maps each group of 4 characters to 3 bytes, so the groups that
/// lie wholly inside the ciphertext decode straight into the buffer; the
/// few groups around them (header and nonce before, tag after) decode
/// into small arrays on the stack, and the at most two ciphertext bytes
/// each edge group holds are copied from there. Decoding group-aligned
/// pieces gives exactly the bytes decoding the whole would, and the last
/// piece ends where the text does, so non-canonical trailing bits are
/// still rejected. `None` for anything that cannot be a value.
fn split_text(b64: &[u8]) -> Option<TextParts> {
    let chars = b64.len();
    let total = match chars % 4 {
        0 => chars / 4 * 3,
        2 => chars / 4 * 3 + 1,
        3 => chars / 4 * 3 + 2,
        _ => return None,
    };
    // The first group holds the version and the key id's length.
    let mut first = [0u8; 3];
    URL_SAFE_NO_PAD
        .decode(b64.get(..4)?, first.as_mut_slice().as_out())
        .ok()?;
    let [version, id_len, _] = first;
    let id_len = usize::from(id_len);
    if version != FORMAT_VERSION || id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return None;
    }
    let header_len = 2 + id_len;
    let start = header_len + NONCE_LEN;
    let end = total.checked_sub(TAG_LEN)?;
    if end < start {
        return None;
    }
    // Whole groups `a..b` lie inside the ciphertext `start..end`.
    let (a, b) = (start.div_ceil(3), end / 3);
    let mut head = [0u8; HEAD_MAX + 1];
    let mut ciphertext = Vec::with_capacity(end - start);
    let mut tag = [0u8; TAG_LEN];
    if a < b {
        let head = URL_SAFE_NO_PAD
            .decode(&b64[..4 * a], head.as_mut_slice().as_out())
            .ok()?;
        ciphertext.extend_from_slice(&head[start..]);
        URL_SAFE_NO_PAD
            .decode_append(&b64[4 * a..4 * b], &mut ciphertext)
            .ok()?;
        let mut tail = [0u8; TAIL_MAX];
        let tail = URL_SAFE_NO_PAD
            .decode(&b64[4 * b..], tail.as_mut_slice().as_out())
            .ok()?;
        let (ct_tail, t) = tail.split_at(end - 3 * b);
        ciphertext.extend_from_slice(ct_tail);
        tag.copy_from_slice(t);
    } else {
        // A ciphertext of a few bytes: the value is short, decode it whole.
        let mut all = [0u8; HEAD_MAX + TAIL_MAX];
        let all = URL_SAFE_NO_PAD
            .decode(b64, all.as_mut_slice().as_out())
            .ok()?;
        head[..start].copy_from_slice(&all[..start]);
        ciphertext.extend_from_slice(&all[start..end]);
        tag.copy_from_slice(&all[end..]);
    }
    let nonce = head[header_len..start].try_into().ok()?;
    Some(TextParts {
        head,
        header_len,
        nonce,
        ciphertext,
        tag,
    })
}

#[cfg(test)]
mod tests;
