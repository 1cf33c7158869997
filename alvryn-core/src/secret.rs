//! Types that hold secrets: zeroized on drop, never printed.
//!
//! Every key, token secret and password in Alvryn lives in one of these.
//! They implement neither `Display` nor `Serialize`, and their `Debug`
//! output is `[redacted]`, so a secret cannot reach a log line, an error
//! body or a panic message by accident. Reading the value is an explicit
//! call to [`SecretBytes::expose`] / [`SecretString::expose`], which is
//! easy to find in review.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Secret bytes (keys, HMAC secrets). Zeroized on drop.
#[derive(Clone)]
pub struct SecretBytes(Box<[u8]>);

// Wipe through `[u8]`, which zeroize clears in bulk; the derive would go
// through `Box<[Z]>`, which clears one element at a time (10x slower on a
// 1 MiB value).
impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.as_mut().zeroize();
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl SecretBytes {
    /// Takes ownership of `bytes`; the vector's buffer becomes the secret's
    /// and is wiped when the secret is dropped.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes.into_boxed_slice())
    }

    /// Copies `bytes` into a new secret. The caller remains responsible
    /// for wiping its own copy.
    #[must_use]
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self(Box::from(bytes))
    }

    /// Fills a new secret of `len` bytes from the operating system's
    /// random number generator.
    ///
    /// # Errors
    /// Fails only if the operating system cannot provide randomness.
    pub fn random(len: usize) -> Result<Self, RandomError> {
        let mut buf = Zeroizing::new(vec![0u8; len]);
        rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut buf).map_err(|_| RandomError)?;
        Ok(Self::copy_from(&buf))
    }

    /// The secret value. Keep the borrow short and never log it.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Constant-time comparison: the time taken does not depend on where the
/// values first differ.
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretBytes {}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

/// A secret string (passwords, API keys, client secrets). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(Box<str>);

impl SecretString {
    /// Takes ownership of `value`.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value.into_boxed_str())
    }

    /// The secret value. Keep the borrow short and never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Constant-time comparison.
impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for SecretString {}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(Box::from(value))
    }
}

/// Reading a secret from a request body is allowed; writing one out is not
/// (there is no `Serialize`).
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// The operating system could not provide random bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let b = SecretBytes::copy_from(b"hunter2-bytes");
        let s = SecretString::from("hunter2-string");
        assert_eq!(format!("{b:?}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:#?}", Some(&s)), "Some(\n    [redacted],\n)");
    }

    #[test]
    fn zeroize_wipes_contents() {
        let mut s = SecretBytes::copy_from(&[7u8; 32]);
        s.zeroize();
        assert!(s.expose().iter().all(|b| *b == 0));
        let mut t = SecretString::from("password");
        t.zeroize();
        assert!(t.expose().bytes().all(|b| b == 0));
    }

    #[test]
    fn random_secrets_differ_and_have_the_length_asked() {
        let a = SecretBytes::random(32).unwrap();
        let b = SecretBytes::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(SecretString::from("a"), SecretString::from("a"));
        assert_ne!(SecretString::from("a"), SecretString::from("ab"));
    }
}
