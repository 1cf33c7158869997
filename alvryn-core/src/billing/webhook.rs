//! Stripe webhook deliveries: the `Stripe-Signature` check and the event
//! envelope.
//!
//! Stripe signs each delivery with every signing secret the endpoint has
//! (several while a secret is being rolled) and sends
//!
//! ```text
//! Stripe-Signature: t=1614556800,v1=5257a869...,v1=9d54c843...,v0=...
//! ```
//!
//! where each `v1` is the lowercase hex HMAC-SHA256, keyed with the whole
//! secret string (`whsec_...` included, as Stripe's libraries do), of the
//! bytes `{t}.{raw body}`. [`verify`] accepts a delivery when any `v1`
//! matches any of the local [`WebhookSecrets`] (so both sides can roll a
//! secret without a gap) and `t` is within the tolerance of now, in either
//! direction. Failure modes, each a [`SignatureError`]:
//!
//! - no header, or an empty one: [`SignatureError::MissingHeader`];
//! - a header longer than [`MAX_HEADER_BYTES`], without a `t`, with a `t`
//!   that is not decimal digits, with two `t`, or with more than
//!   [`MAX_SIGNATURES`] `v1` values: [`SignatureError::MalformedHeader`];
//! - no `v1` at all (a `v0`-only header included), or none that matches:
//!   [`SignatureError::NoMatchingSignature`];
//! - a matching signature whose `t` is more than the tolerance away from
//!   now, in the past (a replay) or in the future:
//!   [`SignatureError::TimestampOutsideTolerance`];
//! - a body over [`MAX_WEBHOOK_BYTES`]: [`SignatureError::PayloadTooLarge`],
//!   before any HMAC is computed.
//!
//! Stripe's documentation asks for a 400 on every one of these.
//!
//! The header is parsed as stripe-node parses it: items split on `,`, each
//! split at its first `=`, no whitespace trimmed (Stripe sends none, and
//! stripe-node treats ` v1` as an unknown scheme), unknown schemes and items
//! without `=` ignored. Two deliberate differences, both stricter: `t` must
//! be plain decimal digits and appear once (stripe-node's `parseInt` would
//! read `12abc` as 12 and keep the last of two), and a timestamp too far in
//! the future is refused, not only a stale one.
//!
//! Only after verification is the body read as an event, by
//! [`parse_event`]; a verified body that is not an event is an
//! [`EventError`], which a server answers with a 4xx, never a 5xx.
//!
//! Every comparison of a signature is constant-time, and every `v1` is
//! compared with every secret's HMAC whatever the earlier comparisons gave.
//! No error message carries a secret, a signature or the body.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::secret::SecretString;

/// Stripe's default tolerance between the signed timestamp and now.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The largest webhook body accepted, 1 MiB. Stripe's event payloads are
/// at most a few hundred KiB (an event carries one API object, whose
/// embedded lists are truncated); a webhook route needs a body limit of its
/// own this size, not the JSON API's.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

/// The longest `Stripe-Signature` header accepted, 8 KiB: Stripe's is about
/// 150 bytes per signature.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The most `v1` signatures one header may carry. Stripe sends one per
/// signing secret of the endpoint, and an endpoint has at most a few at a
/// time (the current one and those being rolled).
pub const MAX_SIGNATURES: usize = 16;

/// The most local secrets a [`WebhookSecrets`] holds. Each one costs an
/// HMAC over the whole body on every delivery.
pub const MAX_SECRETS: usize = 8;

/// The prefix of every Stripe webhook signing secret.
const SECRET_PREFIX: &str = "whsec_";

/// The webhook signing secrets accepted at once: the current one, and
/// during a roll the next or the previous one too.
///
/// Each secret is kept as Stripe hands it out (`whsec_...`): the HMAC key
/// is that whole string's bytes. Held in [`SecretString`]s, so zeroized on
/// drop; `Debug` prints only how many there are.
#[derive(Clone)]
pub struct WebhookSecrets(Vec<SecretString>);

impl WebhookSecrets {
    /// Parses a comma-separated list of secrets, as in
    /// `STRIPE_WEBHOOK_SECRET=whsec_new,whsec_old`. Spaces around each
    /// entry are ignored.
    ///
    /// # Errors
    /// [`SecretsError`] when the list is empty, has more than
    /// [`MAX_SECRETS`] entries, or an entry that is empty, does not start
    /// with `whsec_`, has nothing after it, or contains whitespace. The
    /// error names the entry's position, never its value.
    pub fn parse(list: &str) -> Result<Self, SecretsError> {
        let secrets = list
            .split(',')
            .map(|entry| SecretString::from(entry.trim()))
            .collect();
        Self::from_secrets(secrets)
    }

    /// Takes secrets one by one, checked as [`WebhookSecrets::parse`]
    /// checks each entry.
    ///
    /// # Errors
    /// As [`WebhookSecrets::parse`].
    pub fn from_secrets(secrets: Vec<SecretString>) -> Result<Self, SecretsError> {
        if secrets.is_empty() || secrets.iter().all(SecretString::is_empty) {
            return Err(SecretsError::Empty);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(SecretsError::TooMany { max: MAX_SECRETS });
        }
        for (i, s) in secrets.iter().enumerate() {
            let s = s.expose();
            let ok = s.len() > SECRET_PREFIX.len()
                && s.starts_with(SECRET_PREFIX)
                && !s.chars().any(char::is_whitespace);
            if !ok {
                return Err(SecretsError::NotAWebhookSecret { position: i + 1 });
            }
        }
        Ok(Self(secrets))
    }

    /// How many secrets there are (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: there is at least one secret.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("count", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// A list of webhook secrets that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// No secret at all.
    #[error("no Stripe webhook signing secret given")]
    Empty,
    /// More secrets than [`MAX_SECRETS`].
    #[error("more than {max} Stripe webhook signing secrets given")]
    TooMany {
        /// The most accepted.
        max: usize,
    },
    /// An entry is not a `whsec_...` secret.
    #[error(
        "entry {position} of the Stripe webhook signing secrets is not a secret of the form whsec_... (no spaces)"
    )]
    NotAWebhookSecret {
        /// Its 1-based position in the list.
        position: usize,
    },
}

/// Why a delivery's signature was refused. Answer each with a 400.
///
/// The messages carry no secret, signature, header or body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// There is no `Stripe-Signature` header, or it is empty.
    #[error("the Stripe-Signature header is missing")]
    MissingHeader,
    /// The header is too long, has no or several `t`, a `t` that is not a
    /// timestamp, or too many signatures.
    #[error("the Stripe-Signature header is malformed")]
    MalformedHeader,
    /// No `v1` signature matches any of the secrets (or there is none).
    #[error("no Stripe-Signature signature matches the payload")]
    NoMatchingSignature,
    /// A signature matches, but its timestamp is too far from now.
    #[error("the Stripe-Signature timestamp is outside the tolerance")]
    TimestampOutsideTolerance,
    /// The body is longer than [`MAX_WEBHOOK_BYTES`].
    #[error("the webhook payload is larger than {max} bytes")]
    PayloadTooLarge {
        /// The limit.
        max: usize,
    },
}

/// The parts of a `Stripe-Signature` header that [`verify`] uses.
struct ParsedHeader<'a> {
    timestamp: i64,
    v1: Vec<&'a str>,
}

fn parse_header(header: Option<&str>) -> Result<ParsedHeader<'_>, SignatureError> {
    let header = match header {
        None | Some("") => return Err(SignatureError::MissingHeader),
        Some(h) => h,
    };
    if header.len() > MAX_HEADER_BYTES {
        return Err(SignatureError::MalformedHeader);
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                let valid = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                let parsed = value.parse::<i64>().ok().filter(|_| valid);
                match (timestamp, parsed) {
                    (None, Some(t)) => timestamp = Some(t),
                    _ => return Err(SignatureError::MalformedHeader),
                }
            }
            "v1" => {
                if v1.len() == MAX_SIGNATURES {
                    return Err(SignatureError::MalformedHeader);
                }
                v1.push(value);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MalformedHeader)?;
    Ok(ParsedHeader { timestamp, v1 })
}

/// Decodes a lowercase hex HMAC-SHA256 (64 characters), as Stripe writes
/// it. Anything else is `None`: it can match nothing.
fn decode_signature(hex: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Checks a delivery's `Stripe-Signature` header against its raw body.
///
/// `payload` is the request body exactly as received (before any JSON
/// parsing or re-encoding), `header` the `Stripe-Signature` value, `now_s`
/// the current Unix time in seconds. The delivery is accepted when a `v1`
/// signature matches one of `secrets` and the signed timestamp `t` is at
/// most `tolerance` (whole seconds; [`DEFAULT_TOLERANCE`] is Stripe's)
/// before or after `now_s`. A zero tolerance accepts only `t == now_s`;
/// there is no value that turns the timestamp check off.
///
/// ```
/// use alvryn_core::billing::webhook::{verify, WebhookSecrets, DEFAULT_TOLERANCE};
///
/// let secrets = WebhookSecrets::parse("whsec_plJ3nmyCDGBKInavdmVxTDlJ5Jy1W7Vb").unwrap();
/// let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
/// let header = "t=1614556800,v1=9d54c8436d9dc7baa9af28c82ecc98de5f644548041cea8c22cf4bc3c9a98458";
/// assert!(verify(body, Some(header), &secrets, DEFAULT_TOLERANCE, 1614556800 + 60).is_ok());
/// ```
///
/// # Errors
/// A [`SignatureError`] for each failure mode in the module docs.
pub fn verify(
    payload: &[u8],
    header: Option<&str>,
    secrets: &WebhookSecrets,
    tolerance: Duration,
    now_s: i64,
) -> Result<(), SignatureError> {
    if payload.len() > MAX_WEBHOOK_BYTES {
        return Err(SignatureError::PayloadTooLarge {
            max: MAX_WEBHOOK_BYTES,
        });
    }
    let parsed = parse_header(header)?;
    if parsed.v1.is_empty() {
        return Err(SignatureError::NoMatchingSignature);
    }
    let candidates: Vec<Option<[u8; 32]>> = parsed.v1.iter().map(|s| decode_signature(s)).collect();
    let timestamp = parsed.timestamp.to_string();

    let mut matched = Choice::from(0);
    for secret in &secrets.0 {
        // HMAC takes keys of any length; this `else` cannot happen.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            continue;
        };
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(payload);
        let expected = mac.finalize().into_bytes();
        for candidate in &candidates {
            // A candidate that is not 64 lowercase hex digits is compared
            // as all zeros and can never count as a match.
            let (bytes, well_formed) = match candidate {
                Some(b) => (*b, Choice::from(1)),
                None => ([0u8; 32], Choice::from(0)),
            };
            matched |= expected.as_slice().ct_eq(&bytes) & well_formed;
        }
    }
    if !bool::from(matched) {
        return Err(SignatureError::NoMatchingSignature);
    }

    let age = i128::from(now_s) - i128::from(parsed.timestamp);
    if age.unsigned_abs() > u128::from(tolerance.as_secs()) {
        return Err(SignatureError::TimestampOutsideTolerance);
    }
    Ok(())
}

/// The `Stripe-Signature` header Stripe would send for `payload` at
/// `timestamp_s` (Unix seconds), signed with `secret` (the whole
/// `whsec_...` string): `t={timestamp},v1={hex HMAC-SHA256 of
/// "{timestamp}.{payload}"}`. For tests and post-deploy checks that send
/// a delivery of their own ([`verify`] accepts it).
///
/// ```
/// use alvryn_core::billing::webhook::sign;
/// use alvryn_core::SecretString;
///
/// let secret = SecretString::from("whsec_plJ3nmyCDGBKInavdmVxTDlJ5Jy1W7Vb");
/// let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
/// assert_eq!(
///     sign(body, &secret, 1614556800),
///     "t=1614556800,v1=9d54c8436d9dc7baa9af28c82ecc98de5f644548041cea8c22cf4bc3c9a98458"
/// );
/// ```
#[must_use]
pub fn sign(payload: &[u8], secret: &SecretString, timestamp_s: i64) -> String {
    let timestamp = timestamp_s.to_string();
    let mut header = format!("t={timestamp},v1=");
    // HMAC takes keys of any length: this cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(payload);
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

/// A Stripe event, as delivered to a webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WebhookEvent {
    /// The event's id, `evt_...`: the key for processing each event once.
    pub id: String,
    /// The event type, e.g. `checkout.session.completed`.
    pub event_type: String,
    /// When Stripe created the event, Unix seconds.
    pub created: i64,
    /// Whether the event is from live mode (false for test mode).
    pub livemode: bool,
    /// The API version the object was rendered with (null for some
    /// events, e.g. those of an endpoint without a pinned version).
    pub api_version: Option<String>,
    /// The `data` member.
    pub data: EventData,
}

/// An event's `data`: the object it is about, as Stripe sent it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EventData {
    /// `data.object`, a JSON object (a checkout session, a subscription,
    /// an invoice, ...), left raw for the handler of `event_type` to read.
    pub object: serde_json::Value,
    /// `data.previous_attributes` on `*.updated` events: the changed
    /// fields' old values.
    pub previous_attributes: Option<serde_json::Value>,
}

/// A verified body that is not a Stripe event. Answer with a 4xx (400 or
/// 422), never a 5xx: Stripe retries 5xx answers for days.
///
/// The messages carry nothing from the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The body is longer than [`MAX_WEBHOOK_BYTES`].
    #[error("the webhook payload is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The body is not JSON (or not UTF-8).
    #[error("the webhook payload is not JSON")]
    NotJson,
    /// The body is JSON but not an event: `object` is not `"event"`, a
    /// member is missing or of the wrong type, `id` does not start with
    /// `evt_`, `type` is empty, or `data.object` is not a JSON object.
    #[error("the webhook payload is not a Stripe event")]
    NotAnEvent,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    object: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    livemode: bool,
    #[serde(default)]
    api_version: Option<String>,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    previous_attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads a verified webhook body as a Stripe event. Call it only after
/// [`verify`] has accepted the same bytes.
///
/// Members other than those of [`WebhookEvent`] (`pending_webhooks`,
/// `request`, `account`, ...) are ignored.
///
/// # Errors
/// An [`EventError`] when the body is too large, not JSON, or not an event.
pub fn parse_event(payload: &[u8]) -> Result<WebhookEvent, EventError> {
    if payload.len() > MAX_WEBHOOK_BYTES {
        return Err(EventError::TooLarge {
            max: MAX_WEBHOOK_BYTES,
        });
    }
    // serde_json's messages can quote the body; only the category is kept.
    let raw: RawEvent = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EventError::NotAnEvent,
        _ => EventError::NotJson,
    })?;
    if raw.object != "event"
        || !raw.id.starts_with("evt_")
        || raw.id.len() == "evt_".len()
        || raw.event_type.is_empty()
    {
        return Err(EventError::NotAnEvent);
    }
    Ok(WebhookEvent {
        id: raw.id,
        event_type: raw.event_type,
        created: raw.created,
        livemode: raw.livemode,
        api_version: raw.api_version,
        data: EventData {
            object: serde_json::Value::Object(raw.data.object),
            previous_attributes: raw.data.previous_attributes.map(serde_json::Value::Object),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_delivery_verifies_and_a_changed_one_does_not() {
        let secret = SecretString::from("whsec_sign_round_trip");
        let secrets = WebhookSecrets::parse(secret.expose()).unwrap();
        let header = sign(BODY, &secret, T);
        assert!(verify(BODY, Some(&header), &secrets, DEFAULT_TOLERANCE, T + 10).is_ok());
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert!(matches!(
            verify(&changed, Some(&header), &secrets, DEFAULT_TOLERANCE, T + 10),
            Err(SignatureError::NoMatchingSignature)
        ));
        // The known-answer vector above, through `sign`.
        assert_eq!(
            sign(BODY, &SecretString::from(SECRET_1), T),
            format!("t={T},v1={SIG_1}")
        );
    }

    // Known-answer vector, computed independently of this code with
    // Python's standard library:
    //   python3 -c 'import hmac,hashlib; print(hmac.new(
    //     b"whsec_plJ3nmyCDGBKInavdmVxTDlJ5Jy1W7Vb",
    //     b"1614556800." + b"{\"id\":\"evt_test_webhook\",\"object\":\"event\"}",
    //     hashlib.sha256).hexdigest())'
    // and the same with key b"whsec_second_secret_for_rolling" for SIG_2.
    const SECRET_1: &str = "whsec_plJ3nmyCDGBKInavdmVxTDlJ5Jy1W7Vb";
    const SECRET_2: &str = "whsec_second_secret_for_rolling";
    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const T: i64 = 1_614_556_800;
    const SIG_1: &str = "9d54c8436d9dc7baa9af28c82ecc98de5f644548041cea8c22cf4bc3c9a98458";
    const SIG_2: &str = "d46dc2836b68aadfe6a959e50d0dc0059fa305a6f36e3511d8a820225c673a11";

    fn one(secret: &str) -> WebhookSecrets {
        WebhookSecrets::parse(secret).unwrap()
    }

    fn check(header: &str, secrets: &WebhookSecrets) -> Result<(), SignatureError> {
        verify(BODY, Some(header), secrets, DEFAULT_TOLERANCE, T)
    }

    #[test]
    fn known_vector_is_accepted() {
        check(&format!("t={T},v1={SIG_1}"), &one(SECRET_1)).unwrap();
        check(&format!("t={T},v1={SIG_2}"), &one(SECRET_2)).unwrap();
    }

    #[test]
    fn order_of_items_and_other_schemes_do_not_matter() {
        let s = one(SECRET_1);
        check(&format!("v0=abc,v1={SIG_1},t={T}"), &s).unwrap();
        check(&format!("t={T},foo=bar,novalue,v1={SIG_1},v0={SIG_1}"), &s).unwrap();
    }

    #[test]
    fn every_v1_and_every_secret_is_tried() {
        // The first v1 is the other secret's, the second ours.
        check(&format!("t={T},v1={SIG_2},v1={SIG_1}"), &one(SECRET_1)).unwrap();
        // Only the second local secret signed it.
        let both = WebhookSecrets::parse(&format!("whsec_unrelated, {SECRET_2}")).unwrap();
        assert_eq!(both.len(), 2);
        check(&format!("t={T},v1={SIG_2}"), &both).unwrap();
    }

    #[test]
    fn one_flipped_byte_anywhere_is_refused() {
        let s = one(SECRET_1);
        let header = format!("t={T},v1={SIG_1}");
        for i in 0..BODY.len() {
            let mut body = BODY.to_vec();
            body[i] ^= 0x01;
            assert_eq!(
                verify(&body, Some(&header), &s, DEFAULT_TOLERANCE, T),
                Err(SignatureError::NoMatchingSignature),
                "byte {i}"
            );
        }
        for i in 0..SIG_1.len() {
            let mut sig = SIG_1.as_bytes().to_vec();
            sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
            let sig = String::from_utf8(sig).unwrap();
            assert_eq!(
                check(&format!("t={T},v1={sig}"), &s),
                Err(SignatureError::NoMatchingSignature)
            );
        }
        // The timestamp is signed too.
        assert_eq!(
            check(&format!("t={},v1={SIG_1}", T + 1), &s),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn signatures_in_another_form_do_not_match() {
        let s = one(SECRET_1);
        for sig in [
            SIG_1.to_uppercase(),
            format!("{SIG_1}00"),
            SIG_1[..62].to_owned(),
            format!(" {SIG_1}"),
            String::new(),
        ] {
            assert_eq!(
                check(&format!("t={T},v1={sig}"), &s),
                Err(SignatureError::NoMatchingSignature)
            );
        }
        // Whitespace around an item makes it an unknown scheme, as in
        // stripe-node: the v1 is not seen at all.
        assert_eq!(
            check(&format!("t={T}, v1={SIG_1}"), &s),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn header_shapes() {
        let s = one(SECRET_1);
        assert_eq!(
            verify(BODY, None, &s, DEFAULT_TOLERANCE, T),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(check("", &s), Err(SignatureError::MissingHeader));
        for bad in [
            format!("v1={SIG_1}"),
            format!("t=,v1={SIG_1}"),
            format!("t=-{T},v1={SIG_1}"),
            format!("t=+{T},v1={SIG_1}"),
            format!("t={T}x,v1={SIG_1}"),
            format!("t= {T},v1={SIG_1}"),
            format!("t=99999999999999999999,v1={SIG_1}"),
            format!("t={T},t={T},v1={SIG_1}"),
            "garbage".to_owned(),
            ",,,".to_owned(),
        ] {
            assert_eq!(
                check(&bad, &s),
                Err(SignatureError::MalformedHeader),
                "{bad}"
            );
        }
        // v0 only, or t only: nothing to match.
        assert_eq!(
            check(&format!("t={T},v0={SIG_1}"), &s),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check(&format!("t={T}"), &s),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn header_and_signature_count_are_capped() {
        let s = one(SECRET_1);
        let mut many = format!("t={T}");
        for _ in 0..MAX_SIGNATURES - 1 {
            many.push_str(&format!(",v1={SIG_2}"));
        }
        many.push_str(&format!(",v1={SIG_1}"));
        check(&many, &s).unwrap();
        many.push_str(&format!(",v1={SIG_1}"));
        assert_eq!(check(&many, &s), Err(SignatureError::MalformedHeader));

        let long = format!("t={T},v1={SIG_1},x={}", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(check(&long, &s), Err(SignatureError::MalformedHeader));
    }

    #[test]
    fn tolerance_both_ways() {
        let s = one(SECRET_1);
        let h = format!("t={T},v1={SIG_1}");
        let at = |now, tol| verify(BODY, Some(&h), &s, Duration::from_secs(tol), now);
        at(T - 300, 300).unwrap();
        at(T + 300, 300).unwrap();
        assert_eq!(
            at(T + 301, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        assert_eq!(
            at(T - 301, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        at(T + 301, 600).unwrap();
        at(T, 0).unwrap();
        assert_eq!(at(T + 1, 0), Err(SignatureError::TimestampOutsideTolerance));
        assert_eq!(
            at(i64::MIN, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        assert_eq!(
            at(i64::MAX, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        // A forged signature is reported as such, whatever its timestamp.
        let forged = format!("t={},v1={SIG_2}", T - 10_000);
        assert_eq!(check(&forged, &s), Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn oversized_payload_is_refused_before_hashing() {
        let s = one(SECRET_1);
        let big = vec![b' '; MAX_WEBHOOK_BYTES + 1];
        assert_eq!(
            verify(
                &big,
                Some(&format!("t={T},v1={SIG_1}")),
                &s,
                DEFAULT_TOLERANCE,
                T
            ),
            Err(SignatureError::PayloadTooLarge {
                max: MAX_WEBHOOK_BYTES
            })
        );
        assert_eq!(
            parse_event(&big),
            Err(EventError::TooLarge {
                max: MAX_WEBHOOK_BYTES
            })
        );
    }

    #[test]
    fn secrets_parse_and_never_print() {
        let s = WebhookSecrets::parse(&format!("{SECRET_1},{SECRET_2}")).unwrap();
        let debug = format!("{s:?} {s:#?}");
        assert!(!debug.contains("whsec"), "{debug}");
        assert!(debug.contains("count"), "{debug}");

        assert_eq!(WebhookSecrets::parse("").unwrap_err(), SecretsError::Empty);
        assert_eq!(
            WebhookSecrets::parse(" , ").unwrap_err(),
            SecretsError::Empty
        );
        for (list, position) in [
            ("sk_test_123", 1),
            ("whsec_", 1),
            ("whsec_a,", 2),
            ("whsec_a,,whsec_b", 2),
            ("whsec_a b", 1),
            ("whsec_a,sk_live_secretvalue", 2),
        ] {
            let err = WebhookSecrets::parse(list).unwrap_err();
            assert_eq!(err, SecretsError::NotAWebhookSecret { position }, "{list}");
            assert!(!err.to_string().contains("secretvalue"));
        }
        let nine = ["whsec_x"; MAX_SECRETS + 1].join(",");
        assert_eq!(
            WebhookSecrets::parse(&nine).unwrap_err(),
            SecretsError::TooMany { max: MAX_SECRETS }
        );
    }

    #[test]
    fn error_messages_carry_no_secret_or_signature() {
        for e in [
            SignatureError::MissingHeader,
            SignatureError::MalformedHeader,
            SignatureError::NoMatchingSignature,
            SignatureError::TimestampOutsideTolerance,
            SignatureError::PayloadTooLarge { max: 1 },
        ] {
            let m = format!("{e} {e:?}");
            assert!(!m.contains("whsec") && !m.contains(&SIG_1[..8]), "{m}");
        }
    }

    #[test]
    fn parse_event_errors_keep_nothing_of_the_body() {
        assert_eq!(
            parse_event(b"not json secret-ish"),
            Err(EventError::NotJson)
        );
        assert_eq!(parse_event(b"\xff\xfe"), Err(EventError::NotJson));
        assert_eq!(parse_event(b"{}"), Err(EventError::NotAnEvent));
        assert_eq!(parse_event(b"[]"), Err(EventError::NotAnEvent));
        let wrong_type = br#"{"id":"evt_1","object":"event","type":"x","created":"secret-ish","livemode":false,"data":{"object":{}}}"#;
        let e = parse_event(wrong_type).unwrap_err();
        assert_eq!(e, EventError::NotAnEvent);
        assert!(!format!("{e} {e:?}").contains("secret-ish"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic(header in ".{0,300}", now in proptest::num::i64::ANY) {
            let s = one(SECRET_1);
            let _ = verify(BODY, Some(&header), &s, DEFAULT_TOLERANCE, now);
        }

        #[test]
        fn header_like_strings_never_panic(
            items in proptest::collection::vec(
                ("(t|v1|v0|x| t|)", "(=|==|)", "[0-9a-f=, -]{0,70}"), 0..20),
            now in proptest::num::i64::ANY,
            tol in proptest::num::u64::ANY,
        ) {
            let header: Vec<String> =
                items.iter().map(|(k, eq, v)| format!("{k}{eq}{v}")).collect();
            let s = one(SECRET_1);
            let _ = verify(BODY, Some(&header.join(",")), &s, Duration::from_secs(tol), now);
        }

        #[test]
        fn arbitrary_bodies_never_panic_parse_event(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_event(&body);
        }
    }
}
