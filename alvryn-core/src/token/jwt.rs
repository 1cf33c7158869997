//! Issuing and checking JWTs: HS256 only, two secrets (access and
//! refresh), each with an optional previous secret that still verifies.
//!
//! Checking happens in two stages, both strict:
//!
//! 1. [`JwtKeys::verify_signature`]: compact serialization with exactly
//!    three non-empty parts, canonical unpadded base64url, a header whose
//!    `alg` is exactly `HS256` (so `none`, `HS384`/`HS512` and any RS/HS
//!    confusion are refused before any key is touched), no `crit`, `jku`,
//!    `jwk`, `x5u` or `x5c`, then the MAC under the current and previous
//!    secret, compared in constant time by `jsonwebtoken`.
//! 2. The claims: `iss`, `aud`, `typ` must match exactly, `exp` must be in
//!    the future and `iat` not in the future (a small leeway for clock
//!    skew applies to both), `sub`, `sid` and `jti` present.
//!
//! Every failure is one opaque [`TokenError::Invalid`]; expiry is the only
//! distinction a client may see, as [`TokenError::Expired`].
//!
//! An access token is sent with every request, so each thread remembers
//! the access tokens it has verified (by their SHA-256, at most
//! [`VERIFIED_PER_THREAD`], for the [`JwtKeys`] that verified them): the
//! same bytes verify the same way under the same keys, so a repeat skips
//! the parsing and the MAC, never the time checks, which run on every use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::secret::SecretBytes;

/// The most verified access tokens a thread remembers; when full it
/// forgets them all. About 2 MB per thread at most.
pub const VERIFIED_PER_THREAD: usize = 4096;
/// Longer tokens are refused unread.
const MAX_TOKEN_LEN: usize = 8 * 1024;

thread_local! {
    /// (keys id, SHA-256 of the token) of verified access tokens.
    static VERIFIED: RefCell<HashMap<(u64, [u8; 32]), Claims>> = RefCell::new(HashMap::new());
}

/// A JSON object whose keys are all different. `serde_json` keeps the
/// last of repeated keys; two readers that disagree on which one wins
/// (`"alg":"HS256","alg":"none"`) are how confusion attacks start, so a
/// header with a repeated key is refused outright.
struct UniqueKeys(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object without repeated keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom("a repeated key"));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueKeys(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Gives every `JwtKeys` its own cache namespace.
static NEXT_KEYS_ID: AtomicU64 = AtomicU64::new(1);

/// Which of the two token kinds a token is. Each is signed with its own
/// secret and carries its kind in the `typ` claim, so one can never be
/// used as the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Short-lived, sent with every API call.
    Access,
    /// Long-lived, exchanged only at `/auth/refresh`.
    Refresh,
}

/// The claims of every Alvryn token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (the backend URL).
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// Session (refresh-token family) id.
    pub sid: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// Access or refresh.
    pub typ: TokenKind,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Malformed, wrong signature, wrong kind, issuer or audience. Opaque
    /// on purpose.
    #[error("the token is invalid")]
    Invalid,
    /// Well-formed and authentic but past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Signing failed (should not happen with an HMAC key).
    #[error("the token could not be signed")]
    Signing,
}

/// One HMAC secret and, optionally, the previous one (verify only).
pub struct HmacSecrets {
    current_enc: EncodingKey,
    current_dec: DecodingKey,
    previous_dec: Option<DecodingKey>,
}

impl fmt::Debug for HmacSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacSecrets")
            .field("current", &"[redacted]")
            .field(
                "previous",
                &self.previous_dec.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The shortest HMAC secret accepted: 32 bytes, HS256's output size
/// (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// An HMAC secret shorter than [`MIN_SECRET_BYTES`]. Names neither secret
/// nor its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an HMAC secret must be at least {MIN_SECRET_BYTES} bytes; this one is {len}")]
pub struct ShortSecret {
    /// The length found.
    pub len: usize,
}

impl HmacSecrets {
    /// A secret that signs and verifies, and an optional previous secret
    /// that only verifies (so secrets rotate without logging anyone out).
    ///
    /// # Errors
    /// [`ShortSecret`] when either is under 32 bytes: a short HMAC key is
    /// guessable offline from any one token.
    pub fn new(current: &SecretBytes, previous: Option<&SecretBytes>) -> Result<Self, ShortSecret> {
        for s in std::iter::once(current).chain(previous) {
            if s.len() < MIN_SECRET_BYTES {
                return Err(ShortSecret { len: s.len() });
            }
        }
        Ok(Self {
            current_enc: EncodingKey::from_secret(current.expose()),
            current_dec: DecodingKey::from_secret(current.expose()),
            previous_dec: previous.map(|p| DecodingKey::from_secret(p.expose())),
        })
    }
}

/// Token lifetimes and identity.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// `iss`: who issues (the backend URL).
    pub issuer: String,
    /// `aud`: who the tokens are for.
    pub audience: String,
    /// Access-token lifetime in seconds (default 15 minutes).
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime in seconds (default 30 days).
    pub refresh_ttl_secs: i64,
    /// Clock-skew allowance in seconds for `exp` and `iat` (default 30).
    pub leeway_secs: i64,
}

impl JwtSettings {
    /// Defaults: 15 minutes, 30 days, 30 s leeway.
    #[must_use]
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            leeway_secs: 30,
        }
    }

    /// Lifetime of `kind`.
    #[must_use]
    pub fn ttl(&self, kind: TokenKind) -> i64 {
        match kind {
            TokenKind::Access => self.access_ttl_secs,
            TokenKind::Refresh => self.refresh_ttl_secs,
        }
    }
}

/// Signs and checks access and refresh tokens.
#[derive(Debug)]
pub struct JwtKeys {
    settings: JwtSettings,
    access: HmacSecrets,
    refresh: HmacSecrets,
    /// Names this key set in the per-thread cache of verified tokens.
    id: u64,
}

const FORBIDDEN_HEADER_FIELDS: &[&str] =
    &["crit", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "b64"];

impl JwtKeys {
    /// Keys for both kinds.
    #[must_use]
    pub fn new(settings: JwtSettings, access: HmacSecrets, refresh: HmacSecrets) -> Self {
        Self {
            settings,
            access,
            refresh,
            id: NEXT_KEYS_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    fn secrets(&self, kind: TokenKind) -> &HmacSecrets {
        match kind {
            TokenKind::Access => &self.access,
            TokenKind::Refresh => &self.refresh,
        }
    }

    /// Claims for a new token of `kind` issued at `iat`.
    #[must_use]
    pub fn claims(&self, kind: TokenKind, sub: &str, sid: &str, jti: &str, iat: i64) -> Claims {
        Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: sub.to_owned(),
            sid: sid.to_owned(),
            iat,
            exp: iat + self.settings.ttl(kind),
            jti: jti.to_owned(),
            typ: kind,
        }
    }

    /// Signs `claims` with the current secret of `claims.typ`. HMAC is
    /// deterministic: the same claims always give the same token.
    ///
    /// # Errors
    /// [`TokenError::Signing`] (not expected with HMAC keys).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.secrets(claims.typ).current_enc)
            .map_err(|_| TokenError::Signing)
    }

    /// Stage 1: checks the form, the header and the MAC for `kind`, and
    /// returns the raw payload bytes.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for anything but an authentic HS256 JWS.
    pub fn verify_signature(&self, kind: TokenKind, token: &str) -> Result<Vec<u8>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(TokenError::Invalid);
        }
        let header_json = URL_SAFE_NO_PAD.decode(h).map_err(|_| TokenError::Invalid)?;
        let UniqueKeys(header) =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Invalid)?;
        if header.get("alg").and_then(serde_json::Value::as_str) != Some("HS256") {
            return Err(TokenError::Invalid);
        }
        if FORBIDDEN_HEADER_FIELDS
            .iter()
            .any(|f| header.contains_key(*f))
        {
            return Err(TokenError::Invalid);
        }
        if let Some(typ) = header.get("typ")
            && typ.as_str().map(str::to_ascii_uppercase).as_deref() != Some("JWT")
        {
            return Err(TokenError::Invalid);
        }
        // Canonical base64url for the signature and the payload.
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Invalid)?;
        if sig.len() != 32 {
            return Err(TokenError::Invalid);
        }
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Invalid)?;
        let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
        let secrets = self.secrets(kind);
        let ok = |key: &DecodingKey| {
            jsonwebtoken::crypto::verify(s, signing_input, key, Algorithm::HS256).unwrap_or(false)
        };
        if ok(&secrets.current_dec) || secrets.previous_dec.as_ref().is_some_and(ok) {
            Ok(payload)
        } else {
            Err(TokenError::Invalid)
        }
    }

    /// Both stages: an authentic token of `kind`, unexpired at `now`
    /// (seconds), for our issuer and audience.
    ///
    /// # Errors
    /// [`TokenError::Expired`] for an authentic expired token,
    /// [`TokenError::Invalid`] for everything else.
    pub fn verify(&self, kind: TokenKind, token: &str, now: i64) -> Result<Claims, TokenError> {
        if kind != TokenKind::Access || token.len() > MAX_TOKEN_LEN {
            // Refresh tokens are used once: remembering them gains nothing.
            return self.check(kind, token, Some(now));
        }
        let key = (self.id, Sha256::digest(token.as_bytes()).into());
        if let Some(claims) = VERIFIED.with_borrow(|v| v.get(&key).cloned()) {
            self.check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = self.check(kind, token, Some(now))?;
        VERIFIED.with_borrow_mut(|v| {
            if v.len() >= VERIFIED_PER_THREAD {
                v.clear();
            }
            v.insert(key, claims.clone());
        });
        Ok(claims)
    }

    /// Like [`JwtKeys::verify`] but accepts expired tokens: for logout,
    /// where an expired refresh token still names the session to end.
    ///
    /// # Errors
    /// [`TokenError::Invalid`].
    pub fn verify_ignoring_expiry(
        &self,
        kind: TokenKind,
        token: &str,
    ) -> Result<Claims, TokenError> {
        self.check(kind, token, None)
    }

    fn check(&self, kind: TokenKind, token: &str, now: Option<i64>) -> Result<Claims, TokenError> {
        let payload = self.verify_signature(kind, token)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
        let s = &self.settings;
        if claims.typ != kind
            || claims.iss != s.issuer
            || claims.aud != s.audience
            || claims.sub.is_empty()
            || claims.sid.is_empty()
            || claims.jti.is_empty()
            || claims.exp <= claims.iat
        {
            return Err(TokenError::Invalid);
        }
        if let Some(now) = now {
            self.check_times(&claims, now)?;
        }
        Ok(claims)
    }

    /// `iat` not in the future and `exp` not past, at `now` (seconds),
    /// within the leeway.
    fn check_times(&self, claims: &Claims, now: i64) -> Result<(), TokenError> {
        let leeway = self.settings.leeway_secs;
        if claims.iat > now + leeway {
            return Err(TokenError::Invalid);
        }
        if claims.exp + leeway <= now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(access: &[u8], refresh: &[u8], prev: Option<&[u8]>) -> JwtKeys {
        let prev = prev.map(SecretBytes::copy_from);
        JwtKeys::new(
            JwtSettings::new("https://api.example.com", "alvryn"),
            HmacSecrets::new(&SecretBytes::copy_from(access), prev.as_ref()).unwrap(),
            HmacSecrets::new(&SecretBytes::copy_from(refresh), None).unwrap(),
        )
    }

    const A: &[u8] = b"access-secret-0123456789abcdef0123456789";
    const R: &[u8] = b"refresh-secret-0123456789abcdef012345678";
    const NOW: i64 = 1_790_000_000;

    #[test]
    fn round_trip_and_determinism() {
        let k = keys(A, R, None);
        let c = k.claims(TokenKind::Access, "u1", "s1", "j1", NOW);
        let t = k.sign(&c).unwrap();
        assert_eq!(k.sign(&c).unwrap(), t, "HMAC signing is deterministic");
        assert_eq!(k.verify(TokenKind::Access, &t, NOW + 10).unwrap(), c);
    }

    #[test]
    fn a_remembered_token_still_expires_and_stays_with_its_keys() {
        let k = keys(A, R, None);
        let t = k
            .sign(&k.claims(TokenKind::Access, "u1", "s1", "j1", NOW))
            .unwrap();
        assert!(k.verify(TokenKind::Access, &t, NOW).is_ok());
        // Remembered now; the time checks still run on every use.
        assert!(k.verify(TokenKind::Access, &t, NOW + 60).is_ok());
        assert_eq!(
            k.verify(TokenKind::Access, &t, NOW + 15 * 60 + 31),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(TokenKind::Access, &t, NOW - 31),
            Err(TokenError::Invalid),
            "issued in the future"
        );
        // Other keys, even with the same settings, verify it afresh.
        let other = keys(b"another-access-secret-0123456789abcdef01", R, None);
        assert_eq!(
            other.verify(TokenKind::Access, &t, NOW),
            Err(TokenError::Invalid)
        );
        // One byte changed is another token, verified afresh.
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            k.verify(
                TokenKind::Access,
                std::str::from_utf8(&forged).unwrap(),
                NOW
            ),
            Err(TokenError::Invalid)
        );
        // Never as the other kind.
        assert_eq!(
            k.verify(TokenKind::Refresh, &t, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let short = SecretBytes::copy_from(&[7u8; 31]);
        let ok = SecretBytes::copy_from(&[7u8; 32]);
        assert_eq!(
            HmacSecrets::new(&short, None).err(),
            Some(ShortSecret { len: 31 })
        );
        assert_eq!(
            HmacSecrets::new(&ok, Some(&short)).err(),
            Some(ShortSecret { len: 31 }),
            "a previous secret too"
        );
        assert!(HmacSecrets::new(&ok, Some(&ok)).is_ok());
        let printed = format!("{}", ShortSecret { len: 31 });
        assert!(!printed.contains("\u{7}"), "{printed}");
    }

    #[test]
    fn a_header_with_a_repeated_key_is_refused() {
        use base64::Engine as _;
        let k = keys(A, R, None);
        let good = k
            .sign(&k.claims(TokenKind::Access, "u1", "s1", "j1", NOW))
            .unwrap();
        let payload = good.split('.').nth(1).unwrap();
        let sign = |header: &str| {
            // A correct MAC over the doctored header: only the header's
            // form can refuse it.
            let input = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
            let mac = jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &EncodingKey::from_secret(A),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{input}.{mac}")
        };
        assert!(
            k.verify(
                TokenKind::Access,
                &sign(r#"{"alg":"HS256","typ":"JWT"}"#),
                NOW
            )
            .is_ok(),
            "the same header without a repeat verifies"
        );
        for header in [
            r#"{"alg":"HS256","alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"none","alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#,
            r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
        ] {
            assert_eq!(
                k.verify(TokenKind::Access, &sign(header), NOW),
                Err(TokenError::Invalid),
                "{header}"
            );
        }
    }

    #[test]
    fn kinds_cannot_be_swapped() {
        let k = keys(A, R, None);
        let refresh = k
            .sign(&k.claims(TokenKind::Refresh, "u1", "s1", "j1", NOW))
            .unwrap();
        assert_eq!(
            k.verify(TokenKind::Access, &refresh, NOW),
            Err(TokenError::Invalid)
        );
        // Even with both kinds under one secret, the typ claim separates them.
        let same = keys(A, A, None);
        let refresh = same
            .sign(&same.claims(TokenKind::Refresh, "u1", "s1", "j1", NOW))
            .unwrap();
        assert_eq!(
            same.verify(TokenKind::Access, &refresh, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expiry_issuer_audience_and_future_iat() {
        let k = keys(A, R, None);
        let t = k
            .sign(&k.claims(TokenKind::Access, "u1", "s1", "j1", NOW))
            .unwrap();
        assert_eq!(
            k.verify(TokenKind::Access, &t, NOW + 15 * 60 + 31),
            Err(TokenError::Expired)
        );
        assert!(
            k.verify(TokenKind::Access, &t, NOW + 15 * 60 + 29).is_ok(),
            "leeway"
        );
        assert_eq!(
            k.verify(TokenKind::Access, &t, NOW - 31),
            Err(TokenError::Invalid),
            "issued in the future"
        );
        let mut c = k.claims(TokenKind::Access, "u1", "s1", "j1", NOW);
        c.aud = "other-service".into();
        assert_eq!(
            k.verify(TokenKind::Access, &k.sign(&c).unwrap(), NOW),
            Err(TokenError::Invalid)
        );
        let mut c = k.claims(TokenKind::Access, "u1", "s1", "j1", NOW);
        c.iss = "https://evil.example".into();
        assert_eq!(
            k.verify(TokenKind::Access, &k.sign(&c).unwrap(), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn previous_secret_verifies_but_does_not_sign() {
        let old = keys(b"old-access-secret-0123456789abcdef012345", R, None);
        let t = old
            .sign(&old.claims(TokenKind::Access, "u1", "s1", "j1", NOW))
            .unwrap();
        let rotated = keys(A, R, Some(b"old-access-secret-0123456789abcdef012345"));
        assert!(rotated.verify(TokenKind::Access, &t, NOW).is_ok());
        let fresh = rotated
            .sign(&rotated.claims(TokenKind::Access, "u1", "s1", "j1", NOW))
            .unwrap();
        assert_ne!(fresh, t);
        assert_eq!(
            old.verify(TokenKind::Access, &fresh, NOW),
            Err(TokenError::Invalid)
        );
        let unrelated = keys(A, R, None);
        assert_eq!(
            unrelated.verify(TokenKind::Access, &t, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn other_algorithms_and_headers_are_refused() {
        let k = keys(A, R, None);
        let c = k.claims(TokenKind::Access, "u1", "s1", "j1", NOW);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"hs256","typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","jku":"https://evil.example/jwks"}"#,
            r#"{"alg":"HS256","typ":"JWE"}"#,
        ] {
            let h = URL_SAFE_NO_PAD.encode(header);
            let input = format!("{h}.{payload}");
            // Sign the forged header correctly with the real secret (an
            // attacker could not, but the header alone must be refused).
            let sig = jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &EncodingKey::from_secret(A),
                Algorithm::HS256,
            )
            .unwrap();
            assert_eq!(
                k.verify(TokenKind::Access, &format!("{input}.{sig}"), NOW),
                Err(TokenError::Invalid),
                "{header}"
            );
            assert_eq!(
                k.verify(TokenKind::Access, &format!("{input}."), NOW),
                Err(TokenError::Invalid),
                "{header}"
            );
        }
        // HS512 with the same secret is refused too.
        let mut hdr = Header::new(Algorithm::HS512);
        hdr.typ = Some("JWT".into());
        let t = jsonwebtoken::encode(&hdr, &c, &EncodingKey::from_secret(A)).unwrap();
        assert_eq!(
            k.verify(TokenKind::Access, &t, NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let k = keys(A, R, None);
        for t in [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b.c.d",
            "\u{0}.\u{0}.\u{0}",
            "eyJ.eyJ.",
            &"A".repeat(100_000),
        ] {
            assert_eq!(
                k.verify(TokenKind::Access, t, NOW),
                Err(TokenError::Invalid),
                "{t:.20}"
            );
        }
    }
}
