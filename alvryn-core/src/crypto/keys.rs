//! Key identities and key sets.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::secret::SecretBytes;

/// Longest key id accepted, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// The identity of a field-encryption key, stored in every ciphertext so
/// the right key is found at decryption.
///
/// 1 to 64 characters from `A-Z a-z 0-9 . _ -`. Not secret. Use
/// [`KeyId::fingerprint`] to derive one from the key itself, so that
/// nobody has to invent and keep track of names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Box<str>);

impl KeyId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`InvalidKeyId`] when `id` is empty, longer than 64 bytes, or has a
    /// character outside `A-Z a-z 0-9 . _ -`.
    pub fn new(id: &str) -> Result<Self, InvalidKeyId> {
        let ok = !id.is_empty()
            && id.len() <= MAX_KEY_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(id.into()))
        } else {
            Err(InvalidKeyId)
        }
    }

    /// A stable id derived from the key: `k` followed by the first 8 bytes
    /// of `SHA-256("alvryn.key-id.v1" || key)` in hex. The hash is one-way,
    /// so the id reveals nothing usable about the key.
    #[must_use]
    pub fn fingerprint(key: &SecretBytes) -> Self {
        Self(fingerprint_of(key))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `k` followed by the first 8 bytes of `SHA-256("alvryn.key-id.v1" ||
/// key)` in hex: 17 characters.
fn fingerprint_of(key: &SecretBytes) -> Box<str> {
    let mut h = Sha256::new();
    h.update(b"alvryn.key-id.v1");
    h.update(key.expose());
    let digest = h.finalize();
    format!("k{}", hex::encode(&digest[..8])).into()
}

/// What the [usage ledger](super::ledger) counts encryptions under: a
/// fingerprint of the key *bytes*, not the key's label.
///
/// Two labels for the same key bytes share one count (they seal under the
/// same key, so they share its 2^32 bound); two different keys that happen
/// to carry the same label never do. The text is the same as the default
/// key id, [`KeyId::fingerprint`]: `k` followed by 16 hex digits of
/// `SHA-256("alvryn.key-id.v1" || key)`. That hash is one-way and already
/// public in every ciphertext of a fingerprinted key, so the ledger learns
/// nothing about the key; and a ledger written when counts were kept under
/// labels, by a deployment using the default ids, carries on under the
/// very same entries.
///
/// Failure modes: two different keys whose fingerprints collide (64 bits
/// of SHA-256: about 2^-64 for any one pair) share a count, which retires
/// both early; a count is never split, so the bound holds.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyFingerprint(Box<str>);

impl KeyFingerprint {
    /// The fingerprint of `key`.
    #[must_use]
    pub fn of(key: &SecretBytes) -> Self {
        Self(fingerprint_of(key))
    }

    /// Reads a fingerprint back from its text (`k` and 16 lowercase hex
    /// digits), e.g. from a ledger or a log line; `None` otherwise.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix('k')?;
        (hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.into()))
    }

    /// The ledger entry under which versions before fingerprints counted
    /// the key labelled `id`. Only read, to carry an old count over to the
    /// fingerprint (see [`FieldCipher`](super::FieldCipher)); never
    /// reserved under.
    pub(crate) fn legacy_label(id: &KeyId) -> Self {
        Self(id.as_str().into())
    }

    /// The fingerprint as text: the ledger's key for this key's count.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({})", self.0)
    }
}

/// Lets maps keyed by `KeyId` be searched with a `&str` (no allocation).
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A key id was empty, too long, or had a character outside
/// `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key id must be 1 to {MAX_KEY_ID_LEN} characters from A-Z a-z 0-9 . _ -")]
pub struct InvalidKeyId;

/// One 32-byte field-encryption key with its id. `Debug` never shows the key.
#[derive(Clone)]
pub struct KeyMaterial {
    id: KeyId,
    key: SecretBytes,
    fingerprint: KeyFingerprint,
}

impl KeyMaterial {
    /// Pairs a key with an explicit id.
    #[must_use]
    pub fn new(id: KeyId, key: SecretBytes) -> Self {
        let fingerprint = KeyFingerprint::of(&key);
        Self {
            id,
            key,
            fingerprint,
        }
    }

    /// A key whose id is its [`KeyId::fingerprint`].
    #[must_use]
    pub fn fingerprinted(key: SecretBytes) -> Self {
        let fingerprint = KeyFingerprint::of(&key);
        Self {
            id: KeyId(fingerprint.0.clone()),
            key,
            fingerprint,
        }
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key bytes.
    #[must_use]
    pub fn key(&self) -> &SecretBytes {
        &self.key
    }

    /// What the usage ledger counts this key's encryptions under.
    #[must_use]
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

/// What a [`KeyProvider`](crate::key::KeyProvider) yields: the active key,
/// which encrypts, and any number of previous keys, which only decrypt, so
/// that keys rotate without downtime.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// Encrypts every new value and decrypts values sealed under it.
    pub active: KeyMaterial,
    /// Decrypt-only keys from before a rotation.
    pub previous: Vec<KeyMaterial>,
}

impl KeySet {
    /// A set with one key and no previous keys.
    #[must_use]
    pub fn single(active: KeyMaterial) -> Self {
        Self {
            active,
            previous: Vec::new(),
        }
    }

    /// Adds a decrypt-only previous key.
    #[must_use]
    pub fn with_previous(mut self, key: KeyMaterial) -> Self {
        self.previous.push(key);
        self
    }

    /// Every key, the active one first.
    pub fn iter(&self) -> impl Iterator<Item = &KeyMaterial> {
        std::iter::once(&self.active).chain(self.previous.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_validated() {
        assert!(KeyId::new("2026-11.primary_A").is_ok());
        assert_eq!(KeyId::new(""), Err(InvalidKeyId));
        assert_eq!(KeyId::new("has space"), Err(InvalidKeyId));
        assert_eq!(KeyId::new("é"), Err(InvalidKeyId));
        assert_eq!(KeyId::new(&"a".repeat(65)), Err(InvalidKeyId));
        assert!(KeyId::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        let a = SecretBytes::copy_from(&[1u8; 32]);
        let b = SecretBytes::copy_from(&[2u8; 32]);
        assert_eq!(KeyId::fingerprint(&a), KeyId::fingerprint(&a.clone()));
        assert_ne!(KeyId::fingerprint(&a), KeyId::fingerprint(&b));
        let id = KeyId::fingerprint(&a);
        assert_eq!(id.as_str().len(), 17);
        assert!(KeyId::new(id.as_str()).is_ok());
    }

    #[test]
    fn ledger_fingerprints_follow_the_bytes_not_the_label() {
        let bytes = SecretBytes::copy_from(&[3u8; 32]);
        let a = KeyMaterial::new(KeyId::new("a").unwrap(), bytes.clone());
        let b = KeyMaterial::new(KeyId::new("b").unwrap(), bytes.clone());
        let other = KeyMaterial::new(KeyId::new("a").unwrap(), SecretBytes::copy_from(&[4u8; 32]));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), other.fingerprint());
        // The same text as the default key id, and it parses back.
        let f = KeyMaterial::fingerprinted(bytes);
        assert_eq!(f.fingerprint().as_str(), f.id().as_str());
        assert_eq!(
            KeyFingerprint::parse(f.id().as_str()).as_ref(),
            Some(a.fingerprint())
        );
        for bad in [
            "",
            "k",
            "k0123456789abcdeF",
            "x0123456789abcdef",
            "k0123456789abcdef0",
        ] {
            assert_eq!(KeyFingerprint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_material_debug_hides_the_key() {
        let km =
            KeyMaterial::fingerprinted(SecretBytes::copy_from(b"0123456789abcdef0123456789abcdef"));
        let dbg = format!("{km:?}");
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains("0123456789"));
    }
}
