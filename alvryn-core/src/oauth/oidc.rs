//! OpenID Connect discovery, the provider's signing keys (JWKS) and the
//! ID-token check.
//!
//! [`OidcProvider`] fetches the discovery document
//! (`/.well-known/openid-configuration`) and the JWKS it names lazily, on
//! first use, and keeps both. [`OidcProvider::verify_id_token`] checks, in
//! this order:
//!
//! 1. the header: `alg` is an asymmetric algorithm (RS*, PS*, ES*, EdDSA)
//!    that the discovery document lists (OpenID's default, `RS256`, when it
//!    lists none) and that the key declares in its own `alg` (or, for a key
//!    without `alg`, that fits its key type). `none` and HS* are refused
//!    whatever the header or the key says, so a public key is never used
//!    as an HMAC secret;
//! 2. the key: the JWK whose `kid` the header names (keys whose `use` is
//!    not `sig` and symmetric keys are skipped); a token without `kid` only
//!    when the set has exactly one usable key. An unknown `kid` refetches
//!    the JWKS once (the provider rotated its keys), but at most once per
//!    [`OidcSettings::jwks_refetch_interval`], so a stream of forged `kid`s
//!    cannot turn us into a JWKS fetching loop; concurrent refetches share
//!    one request. The first fetch does not count against the interval;
//! 3. the signature;
//! 4. the claims: `iss` per [`IssuerRule`], `aud` is our client id (when
//!    `aud` names several audiences, `azp` must be our client id), `exp`
//!    and `iat` within [`OidcSettings::leeway`], `nbf` (when present),
//!    `nonce` (compared in constant time) and a non-empty `sub`.
//!
//! # Failure modes
//!
//! * Discovery or JWKS fetch fails (network, timeout, non-2xx, a body over
//!   1 MiB, bad JSON, a document with non-http(s) endpoints):
//!   [`OidcError::Unavailable`]. A failed discovery fetch is not cached: the
//!   next call tries again. A failed JWKS refetch keeps the previous keys.
//! * Anything wrong with the token: [`OidcError::InvalidToken`] with a short
//!   fixed reason. The token itself is never logged nor put in an error.
//!
//! # HTTP client
//!
//! reqwest is built with rustls but without a crypto provider (the
//! workspace uses aws-lc-rs, not ring): a client made with
//! `reqwest::Client::new()` or a bare builder panics on first use unless a
//! process-wide rustls provider is installed. Make clients with
//! [`http_client`] (or [`try_http_client`]), which hand reqwest a ready
//! aws-lc-rs TLS configuration.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;
use url::Url;

/// The largest discovery document or JWKS accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// The placeholder a [`IssuerRule::TenantTemplate`] contains.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

// ------------------------------------------------------------ HTTP client

/// An HTTP client for talking to an OpenID provider: follows no
/// redirects, 5 s connect timeout, 10 s total timeout, user agent
/// `alvryn/<version>`, rustls on aws-lc-rs with the webpki (Mozilla) roots.
///
/// # Errors
///
/// [`OidcError::Unavailable`] when the TLS configuration cannot be built
/// (it can only fail if aws-lc-rs offers no safe protocol version).
pub fn try_http_client() -> Result<reqwest::Client, OidcError> {
    crate::http::client(Duration::from_secs(10)).map_err(OidcError::Unavailable)
}

/// [`try_http_client`], for callers that cannot handle its (practically
/// impossible) failure.
///
/// # Panics
///
/// When [`try_http_client`] fails, as `reqwest::Client::new()` would.
#[allow(clippy::expect_used)]
pub fn http_client() -> reqwest::Client {
    try_http_client().expect("the aws-lc-rs TLS configuration builds")
}

// ------------------------------------------------------------ settings

/// How the `iss` claim is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerRule {
    /// `iss` must equal this string (Google: `https://accounts.google.com`).
    Exact(String),
    /// A template containing [`TENANT_PLACEHOLDER`] (`{tenantid}`), filled
    /// with the token's `tid` claim; the result must equal `iss` (Microsoft
    /// multi-tenant: `https://login.microsoftonline.com/{tenantid}/v2.0`).
    /// `tid` must be present and look like a tenant id: 1 to 64 ASCII
    /// letters, digits and `-`.
    TenantTemplate(String),
    /// `iss` must equal one of these (Google documents both
    /// `https://accounts.google.com` and `accounts.google.com`).
    AnyOf(Vec<String>),
}

impl IssuerRule {
    /// Whether `iss` (with `tid`, the token's tenant claim) satisfies this
    /// rule.
    pub fn accepts(&self, iss: &str, tid: Option<&str>) -> bool {
        match self {
            IssuerRule::Exact(want) => iss == want,
            IssuerRule::AnyOf(wanted) => wanted.iter().any(|w| w == iss),
            IssuerRule::TenantTemplate(template) => {
                let Some(tid) = tid.filter(|t| is_tenant_id(t)) else {
                    return false;
                };
                template.contains(TENANT_PLACEHOLDER)
                    && template.replace(TENANT_PLACEHOLDER, tid) == iss
            }
        }
    }
}

fn is_tenant_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Where a provider is and what its ID tokens must say.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// The discovery document's URL
    /// (`https://accounts.google.com/.well-known/openid-configuration`).
    pub discovery_url: Url,
    /// How `iss` is checked.
    pub issuer: IssuerRule,
    /// Our client id: the audience the tokens must be for.
    pub client_id: String,
    /// Clock skew allowed for `exp`, `iat` and `nbf` (default 60 s).
    pub leeway: Duration,
    /// At most one JWKS refetch for an unknown `kid` per this interval
    /// (default 60 s).
    pub jwks_refetch_interval: Duration,
}

impl OidcSettings {
    /// Settings with the default leeway and refetch interval (60 s each).
    pub fn new(discovery_url: Url, issuer: IssuerRule, client_id: impl Into<String>) -> Self {
        OidcSettings {
            discovery_url,
            issuer,
            client_id: client_id.into(),
            leeway: Duration::from_secs(60),
            jwks_refetch_interval: Duration::from_secs(60),
        }
    }
}

// ------------------------------------------------------------ errors

/// What went wrong discovering a provider or checking an ID token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The discovery document or the JWKS could not be fetched or read
    /// (network, timeout, non-2xx, bad JSON, bad endpoints). The message
    /// says which and why, and holds no secret.
    #[error("OpenID provider unavailable: {0}")]
    Unavailable(String),
    /// The ID token was refused; the reason is a short fixed string
    /// (`"malformed"`, `"algorithm"`, `"unknown key"`, `"signature"`,
    /// `"issuer"`, `"audience"`, `"expired"`, `"issued in the future"`,
    /// `"not yet valid"`, `"nonce"`, `"subject"`).
    #[error("ID token refused: {0}")]
    InvalidToken(&'static str),
}

// ------------------------------------------------------------ metadata

/// The parts of the discovery document we use.
#[derive(Clone, Debug)]
pub struct ProviderMetadata {
    /// The issuer the provider announces (for Microsoft's multi-tenant
    /// endpoints, the `{tenantid}` template itself).
    pub issuer: String,
    /// Where the user is sent to log in.
    pub authorization_endpoint: Url,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: Url,
    /// The provider's signing keys.
    pub jwks_uri: Url,
    /// The algorithms ID tokens may be signed with (`["RS256"]` when the
    /// document lists none, OpenID's default).
    pub id_token_signing_alg_values_supported: Vec<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Option<Vec<String>>,
}

impl ProviderMetadata {
    /// Parses and checks a discovery document.
    ///
    /// # Errors
    ///
    /// [`OidcError::Unavailable`] for bad JSON, a missing field or an
    /// endpoint that is not an absolute http(s) URL.
    pub fn from_json(body: &[u8]) -> Result<Self, OidcError> {
        let raw: RawMetadata = serde_json::from_slice(body)
            .map_err(|e| OidcError::Unavailable(format!("discovery document: {e}")))?;
        let algs = raw
            .id_token_signing_alg_values_supported
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| vec!["RS256".to_owned()]);
        Ok(ProviderMetadata {
            issuer: raw.issuer,
            authorization_endpoint: http_url(
                "authorization_endpoint",
                &raw.authorization_endpoint,
            )?,
            token_endpoint: http_url("token_endpoint", &raw.token_endpoint)?,
            jwks_uri: http_url("jwks_uri", &raw.jwks_uri)?,
            id_token_signing_alg_values_supported: algs,
        })
    }
}

fn http_url(field: &str, value: &str) -> Result<Url, OidcError> {
    let url = Url::parse(value)
        .map_err(|_| OidcError::Unavailable(format!("discovery document: {field} is not a URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(OidcError::Unavailable(format!(
            "discovery document: {field} is not an http(s) URL"
        )));
    }
    Ok(url)
}

// ------------------------------------------------------------ keys

/// One usable signing key from the JWKS.
struct SigningKey {
    kid: Option<String>,
    /// The `alg` the key declares, if any.
    alg: Option<String>,
    family: KeyFamily,
    key: DecodingKey,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    Ec,
    Okp,
}

/// The usable keys of one JWKS fetch.
struct KeySet {
    keys: Vec<SigningKey>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable for signatures:
    /// asymmetric, `use` absent or `sig`, parseable. Unusable entries are
    /// skipped, not fatal (providers publish encryption keys too).
    fn from_json(body: &[u8]) -> Result<Self, OidcError> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(body)
            .map_err(|e| OidcError::Unavailable(format!("JWKS: {e}")))?;
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| SigningKey::from_jwk(&jwk))
            .collect();
        Ok(KeySet { keys })
    }

    /// The key a token's header designates, if any.
    fn find(&self, kid: Option<&str>) -> Option<&SigningKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => match self.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }
}

impl SigningKey {
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => return None,
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Okp,
            // Symmetric ("oct") and unknown key types never verify ID tokens.
            _ => return None,
        };
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(serde_json::to_value(a).ok()?.as_str().map(str::to_owned)?),
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(SigningKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        })
    }
}

/// The asymmetric algorithms an ID token may use, with their key family.
fn asymmetric_alg(alg: &str) -> Option<(Algorithm, KeyFamily)> {
    Some(match alg {
        "RS256" => (Algorithm::RS256, KeyFamily::Rsa),
        "RS384" => (Algorithm::RS384, KeyFamily::Rsa),
        "RS512" => (Algorithm::RS512, KeyFamily::Rsa),
        "PS256" => (Algorithm::PS256, KeyFamily::Rsa),
        "PS384" => (Algorithm::PS384, KeyFamily::Rsa),
        "PS512" => (Algorithm::PS512, KeyFamily::Rsa),
        "ES256" => (Algorithm::ES256, KeyFamily::Ec),
        "ES384" => (Algorithm::ES384, KeyFamily::Ec),
        "EdDSA" => (Algorithm::EdDSA, KeyFamily::Okp),
        // HS256/384/512, "none" and anything unknown.
        _ => return None,
    })
}

// ------------------------------------------------------------ header

/// The two header fields we read, parsed by hand so that `none`, HS* and
/// unknown algorithms all come out as `"algorithm"`, not `"malformed"`.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<TokenHeader, OidcError> {
    let malformed = OidcError::InvalidToken("malformed");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| OidcError::InvalidToken("malformed"))?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(malformed);
    };
    let Some(Value::String(alg)) = map.get("alg") else {
        return Err(malformed);
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed),
    };
    Ok(TokenHeader {
        alg: alg.clone(),
        kid,
    })
}

// ------------------------------------------------------------ claims

/// What a verified ID token says about the user.
#[derive(Clone, Debug)]
pub struct IdTokenClaims {
    /// The issuer (for Microsoft, with the tenant filled in).
    pub iss: String,
    /// The user's id at the provider (stable, non-empty).
    pub sub: String,
    /// The email address, if the provider sent one.
    pub email: Option<String>,
    /// `email_verified` was JSON `true` or the string `"true"`.
    pub email_verified: bool,
    /// Microsoft's tenant id.
    pub tid: Option<String>,
    /// Microsoft's `xms_edov` ("email domain owner verified") was JSON
    /// `true`, `"true"` or `1`.
    pub xms_edov: bool,
    /// The display name, if sent.
    pub name: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// What the claim checks need beyond the claims themselves.
struct ClaimRules<'a> {
    issuer: &'a IssuerRule,
    client_id: &'a str,
    leeway_s: i64,
    expected_nonce: &'a str,
    now_s: i64,
}

fn opt_string(map: &Map<String, Value>, name: &str) -> Option<String> {
    match map.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn number(map: &Map<String, Value>, name: &str) -> Option<i64> {
    match map.get(name)? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.floor() as i64)
        }),
        _ => None,
    }
}

fn is_true(v: Option<&Value>, allow_one: bool) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        Some(Value::Number(n)) => allow_one && n.as_u64() == Some(1),
        _ => false,
    }
}

fn check_audience(map: &Map<String, Value>, client_id: &str) -> bool {
    match map.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => {
            let mut names = Vec::with_capacity(auds.len());
            for a in auds {
                let Value::String(a) = a else { return false };
                names.push(a.as_str());
            }
            if !names.contains(&client_id) {
                return false;
            }
            names.len() == 1 || map.get("azp").and_then(Value::as_str) == Some(client_id)
        }
        _ => false,
    }
}

/// Checks the claims of a token whose signature has been verified.
fn check_claims(
    map: &Map<String, Value>,
    rules: &ClaimRules<'_>,
) -> Result<IdTokenClaims, OidcError> {
    let iss = opt_string(map, "iss").ok_or(OidcError::InvalidToken("issuer"))?;
    let tid = opt_string(map, "tid");
    if !rules.issuer.accepts(&iss, tid.as_deref()) {
        return Err(OidcError::InvalidToken("issuer"));
    }
    if !check_audience(map, rules.client_id) {
        return Err(OidcError::InvalidToken("audience"));
    }
    let exp = number(map, "exp").ok_or(OidcError::InvalidToken("expired"))?;
    if exp <= rules.now_s.saturating_sub(rules.leeway_s) {
        return Err(OidcError::InvalidToken("expired"));
    }
    let iat = number(map, "iat").ok_or(OidcError::InvalidToken("malformed"))?;
    if iat > rules.now_s.saturating_add(rules.leeway_s) {
        return Err(OidcError::InvalidToken("issued in the future"));
    }
    if map.contains_key("nbf") {
        let nbf = number(map, "nbf").ok_or(OidcError::InvalidToken("malformed"))?;
        if nbf > rules.now_s.saturating_add(rules.leeway_s) {
            return Err(OidcError::InvalidToken("not yet valid"));
        }
    }
    let nonce = opt_string(map, "nonce").unwrap_or_default();
    if rules.expected_nonce.is_empty()
        || !bool::from(nonce.as_bytes().ct_eq(rules.expected_nonce.as_bytes()))
    {
        return Err(OidcError::InvalidToken("nonce"));
    }
    let sub = opt_string(map, "sub")
        .filter(|s| !s.is_empty())
        .ok_or(OidcError::InvalidToken("subject"))?;
    Ok(IdTokenClaims {
        iss,
        sub,
        email: opt_string(map, "email"),
        email_verified: is_true(map.get("email_verified"), false),
        tid,
        xms_edov: is_true(map.get("xms_edov"), true),
        name: opt_string(map, "name"),
        iat,
        exp,
    })
}

// ------------------------------------------------------------ provider

/// One OpenID provider: its discovery document and keys, fetched lazily
/// and cached. Cheap to clone (an `Arc` inside); clones share the caches.
#[derive(Clone)]
pub struct OidcProvider {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    http: reqwest::Client,
    metadata: OnceCell<Arc<ProviderMetadata>>,
    jwks: Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    keys: Option<Arc<KeySet>>,
    /// When the last unknown-`kid` refetch started.
    last_refetch: Option<Instant>,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("discovery_url", &self.inner.settings.discovery_url.as_str())
            .field("issuer", &self.inner.settings.issuer)
            .field("client_id", &self.inner.settings.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// A provider; nothing is fetched until the first call that needs it.
    /// Make `http` with [`http_client`].
    pub fn new(settings: OidcSettings, http: reqwest::Client) -> Self {
        OidcProvider {
            inner: Arc::new(Inner {
                settings,
                http,
                metadata: OnceCell::new(),
                jwks: Mutex::new(JwksState::default()),
            }),
        }
    }

    /// The settings this provider was made with.
    pub fn settings(&self) -> &OidcSettings {
        &self.inner.settings
    }

    /// The discovery document, fetched on first call and then cached.
    /// Concurrent first callers share one fetch; a failed fetch is not
    /// cached.
    ///
    /// # Errors
    ///
    /// [`OidcError::Unavailable`] when the document cannot be fetched or
    /// is not valid.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, OidcError> {
        self.inner
            .metadata
            .get_or_try_init(|| async {
                let body = self
                    .fetch("discovery", &self.inner.settings.discovery_url)
                    .await?;
                ProviderMetadata::from_json(&body).map(Arc::new)
            })
            .await
            .cloned()
    }

    /// Verifies an ID token (see the module docs for every check) and
    /// returns its claims. `now_s` is the current Unix time in seconds.
    ///
    /// # Errors
    ///
    /// [`OidcError::InvalidToken`] when the token is refused,
    /// [`OidcError::Unavailable`] when the discovery document or the keys
    /// cannot be fetched.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        expected_nonce: &str,
        now_s: i64,
    ) -> Result<IdTokenClaims, OidcError> {
        let header = parse_header(id_token)?;
        let (alg, family) =
            asymmetric_alg(&header.alg).ok_or(OidcError::InvalidToken("algorithm"))?;
        let metadata = self.metadata().await?;
        if !metadata
            .id_token_signing_alg_values_supported
            .contains(&header.alg)
        {
            return Err(OidcError::InvalidToken("algorithm"));
        }
        let keys = self.current_keys(&metadata).await?;
        let keys = match keys.find(header.kid.as_deref()) {
            Some(_) => keys,
            None if header.kid.is_some() => self.refetch_keys(&metadata, &keys).await?,
            None => return Err(OidcError::InvalidToken("unknown key")),
        };
        let key = keys
            .find(header.kid.as_deref())
            .ok_or(OidcError::InvalidToken("unknown key"))?;
        if key.family != family || key.alg.as_deref().is_some_and(|a| a != header.alg) {
            return Err(OidcError::InvalidToken("algorithm"));
        }

        // Signature only: the claims are checked below, by our rules.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(id_token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                OidcError::InvalidToken(match e.kind() {
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm",
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => "malformed",
                    _ => "signature",
                })
            })?;
        let settings = &self.inner.settings;
        check_claims(
            &data.claims,
            &ClaimRules {
                issuer: &settings.issuer,
                client_id: &settings.client_id,
                leeway_s: i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX),
                expected_nonce,
                now_s,
            },
        )
    }

    /// The cached keys, fetched on first use (the first fetch does not
    /// count against the refetch interval).
    async fn current_keys(&self, metadata: &ProviderMetadata) -> Result<Arc<KeySet>, OidcError> {
        let mut state = self.inner.jwks.lock().await;
        if let Some(keys) = &state.keys {
            return Ok(keys.clone());
        }
        let keys = Arc::new(self.fetch_keys(metadata).await?);
        state.keys = Some(keys.clone());
        Ok(keys)
    }

    /// Refetches the keys after `seen` lacked a token's `kid`, unless
    /// someone refetched meanwhile (then their keys are returned) or the
    /// last refetch is more recent than the interval (then `seen`).
    async fn refetch_keys(
        &self,
        metadata: &ProviderMetadata,
        seen: &Arc<KeySet>,
    ) -> Result<Arc<KeySet>, OidcError> {
        let mut state = self.inner.jwks.lock().await;
        if let Some(keys) = &state.keys
            && !Arc::ptr_eq(keys, seen)
        {
            return Ok(keys.clone());
        }
        let now = Instant::now();
        if state
            .last_refetch
            .is_some_and(|t| now.duration_since(t) < self.inner.settings.jwks_refetch_interval)
        {
            return Ok(seen.clone());
        }
        state.last_refetch = Some(now);
        let keys = Arc::new(self.fetch_keys(metadata).await?);
        tracing::info!(
            discovery_url = %self.inner.settings.discovery_url,
            keys = keys.keys.len(),
            "refetched the OpenID provider's JWKS for an unknown key id"
        );
        state.keys = Some(keys.clone());
        Ok(keys)
    }

    async fn fetch_keys(&self, metadata: &ProviderMetadata) -> Result<KeySet, OidcError> {
        let body = self.fetch("JWKS", &metadata.jwks_uri).await?;
        KeySet::from_json(&body)
    }

    /// GETs a JSON document of at most [`MAX_DOCUMENT_BYTES`].
    async fn fetch(&self, what: &str, url: &Url) -> Result<Vec<u8>, OidcError> {
        let unavailable =
            |why: String| OidcError::Unavailable(format!("{what} fetch from {url}: {why}"));
        let mut resp = self
            .inner
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(unavailable("document too large".to_owned()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(unavailable("document too large".to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    const MS: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";
    const TID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn good() -> Value {
        json!({
            "iss": "https://accounts.google.com",
            "sub": "110169484474386276334",
            "aud": "client-1",
            "exp": 2_000,
            "iat": 1_000,
            "nonce": "n-0S6_WzA2Mj",
            "email": "jane@example.com",
            "email_verified": true,
            "name": "Jane Doe",
        })
    }

    fn check(v: Value) -> Result<IdTokenClaims, OidcError> {
        check_with(
            v,
            &IssuerRule::Exact("https://accounts.google.com".into()),
            1_500,
        )
    }

    fn check_with(v: Value, issuer: &IssuerRule, now_s: i64) -> Result<IdTokenClaims, OidcError> {
        check_claims(
            &obj(v),
            &ClaimRules {
                issuer,
                client_id: "client-1",
                leeway_s: 60,
                expected_nonce: "n-0S6_WzA2Mj",
                now_s,
            },
        )
    }

    fn reason(r: Result<IdTokenClaims, OidcError>) -> &'static str {
        match r {
            Err(OidcError::InvalidToken(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        if value.is_null() {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = value;
        }
        v
    }

    #[test]
    fn exact_issuer() {
        let rule = IssuerRule::Exact("https://accounts.google.com".into());
        assert!(rule.accepts("https://accounts.google.com", None));
        assert!(!rule.accepts("https://accounts.google.com/", None));
        assert!(!rule.accepts("accounts.google.com", None));
    }

    #[test]
    fn google_settings_accept_both_documented_issuers_and_nothing_else() {
        let google = crate::oauth::ProviderSettings::google(
            "id",
            crate::secret::SecretString::new("secret".into()),
        );
        assert!(google.issuer.accepts("https://accounts.google.com", None));
        assert!(google.issuer.accepts("accounts.google.com", None));
        assert!(
            !google
                .issuer
                .accepts("https://accounts.google.com.evil", None)
        );
        assert!(!google.issuer.accepts("http://accounts.google.com", None));
        assert!(!google.issuer.accepts("", None));
    }

    #[test]
    fn tenant_template_fills_tid() {
        let rule = IssuerRule::TenantTemplate(MS.into());
        let iss = format!("https://login.microsoftonline.com/{TID}/v2.0");
        assert!(rule.accepts(&iss, Some(TID)));
        // tid missing, different, empty, too long or with other characters.
        assert!(!rule.accepts(&iss, None));
        assert!(!rule.accepts(&iss, Some("72f988bf-86f1-41af-91ab-2d7cd011db47")));
        assert!(!rule.accepts("https://login.microsoftonline.com//v2.0", Some("")));
        let long = "a".repeat(65);
        assert!(!rule.accepts(
            &format!("https://login.microsoftonline.com/{long}/v2.0"),
            Some(&long)
        ));
        let ok64 = "a".repeat(64);
        assert!(rule.accepts(
            &format!("https://login.microsoftonline.com/{ok64}/v2.0"),
            Some(&ok64)
        ));
        // A tid that would change the URL's shape.
        let evil = "x/v2.0?";
        assert!(!rule.accepts(
            &format!("https://login.microsoftonline.com/{evil}/v2.0"),
            Some(evil)
        ));
        assert!(!rule.accepts(
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            Some("{tenantid}")
        ));
        // A template without the placeholder accepts nothing.
        let no_placeholder = IssuerRule::TenantTemplate("https://issuer.example".into());
        assert!(!no_placeholder.accepts("https://issuer.example", Some(TID)));
    }

    #[test]
    fn good_claims_parse() {
        let c = check(good()).unwrap();
        assert_eq!(c.sub, "110169484474386276334");
        assert_eq!(c.email.as_deref(), Some("jane@example.com"));
        assert!(c.email_verified);
        assert_eq!(c.name.as_deref(), Some("Jane Doe"));
        assert_eq!((c.iat, c.exp), (1_000, 2_000));
        assert!(!c.xms_edov);
        assert_eq!(c.tid, None);
    }

    #[test]
    fn email_verified_and_xms_edov_are_strict() {
        for (v, want) in [
            (json!(true), true),
            (json!("true"), true),
            (json!(false), false),
            (json!("false"), false),
            (json!("TRUE"), false),
            (json!(1), false),
            (json!("yes"), false),
            (Value::Null, false),
        ] {
            let c = check(with(good(), "email_verified", v.clone())).unwrap();
            assert_eq!(c.email_verified, want, "email_verified = {v}");
        }
        for (v, want) in [
            (json!(true), true),
            (json!("true"), true),
            (json!(1), true),
            (json!(0), false),
            (json!(2), false),
            (json!("1"), false),
            (json!(false), false),
            (Value::Null, false),
        ] {
            let c = check(with(good(), "xms_edov", v.clone())).unwrap();
            assert_eq!(c.xms_edov, want, "xms_edov = {v}");
        }
    }

    #[test]
    fn audience_rules() {
        assert!(check(with(good(), "aud", json!(["client-1"]))).is_ok());
        assert_eq!(
            reason(check(with(good(), "aud", json!("client-2")))),
            "audience"
        );
        assert_eq!(reason(check(with(good(), "aud", Value::Null))), "audience");
        assert_eq!(
            reason(check(with(good(), "aud", json!(["client-2"])))),
            "audience"
        );
        assert_eq!(reason(check(with(good(), "aud", json!([1])))), "audience");
        // Several audiences: azp must be us.
        let multi = with(good(), "aud", json!(["client-1", "other"]));
        assert_eq!(reason(check(multi.clone())), "audience");
        assert_eq!(
            reason(check(with(multi.clone(), "azp", json!("other")))),
            "audience"
        );
        assert!(check(with(multi, "azp", json!("client-1"))).is_ok());
    }

    #[test]
    fn time_rules() {
        let rule = IssuerRule::Exact("https://accounts.google.com".into());
        // exp 2000: fine until now - 60 reaches it.
        assert!(check_with(good(), &rule, 2_059).is_ok());
        assert_eq!(reason(check_with(good(), &rule, 2_060)), "expired");
        // iat 1000: fine from now + 60 >= 1000.
        assert!(check_with(good(), &rule, 940).is_ok());
        assert_eq!(
            reason(check_with(good(), &rule, 939)),
            "issued in the future"
        );
        assert_eq!(reason(check(with(good(), "exp", Value::Null))), "expired");
        assert_eq!(reason(check(with(good(), "exp", json!("2000")))), "expired");
        assert_eq!(reason(check(with(good(), "iat", Value::Null))), "malformed");
        assert_eq!(
            reason(check(with(good(), "nbf", json!(1_561)))),
            "not yet valid"
        );
        assert!(check(with(good(), "nbf", json!(1_560))).is_ok());
    }

    #[test]
    fn nonce_and_subject() {
        assert_eq!(
            reason(check(with(good(), "nonce", json!("other")))),
            "nonce"
        );
        assert_eq!(reason(check(with(good(), "nonce", Value::Null))), "nonce");
        assert_eq!(reason(check(with(good(), "nonce", json!("")))), "nonce");
        assert_eq!(reason(check(with(good(), "sub", json!("")))), "subject");
        assert_eq!(reason(check(with(good(), "sub", Value::Null))), "subject");
        // An empty expected nonce never matches, not even an empty claim.
        let r = check_claims(
            &obj(with(good(), "nonce", json!(""))),
            &ClaimRules {
                issuer: &IssuerRule::Exact("https://accounts.google.com".into()),
                client_id: "client-1",
                leeway_s: 60,
                expected_nonce: "",
                now_s: 1_500,
            },
        );
        assert_eq!(reason(r), "nonce");
    }

    #[test]
    fn microsoft_issuer_in_claims() {
        let rule = IssuerRule::TenantTemplate(MS.into());
        let iss = format!("https://login.microsoftonline.com/{TID}/v2.0");
        let ms = with(with(good(), "iss", json!(iss)), "tid", json!(TID));
        let c = check_with(with(ms.clone(), "xms_edov", json!(1)), &rule, 1_500).unwrap();
        assert_eq!(c.tid.as_deref(), Some(TID));
        assert!(c.xms_edov);
        assert_eq!(
            reason(check_with(
                with(ms.clone(), "tid", Value::Null),
                &rule,
                1_500
            )),
            "issuer"
        );
        assert_eq!(
            reason(check_with(
                with(ms, "tid", json!("72f988bf-86f1-41af-91ab-2d7cd011db47")),
                &rule,
                1_500
            )),
            "issuer"
        );
    }

    #[test]
    fn headers() {
        let h = |v: Value| {
            let enc = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
            parse_header(&format!("{enc}.e30.c2ln"))
        };
        let ok = h(json!({"alg": "RS256", "kid": "k1"})).unwrap();
        assert_eq!((ok.alg.as_str(), ok.kid.as_deref()), ("RS256", Some("k1")));
        assert!(h(json!({"alg": "RS256"})).unwrap().kid.is_none());
        assert!(h(json!({"kid": "k1"})).is_err());
        assert!(h(json!({"alg": "RS256", "kid": 5})).is_err());
        assert!(parse_header("a.b").is_err());
        assert!(parse_header("a.b.c.d").is_err());
        assert!(parse_header("!!.b.c").is_err());
        for alg in ["none", "HS256", "HS384", "HS512", "rs256", ""] {
            assert!(asymmetric_alg(alg).is_none(), "{alg}");
        }
        assert!(matches!(
            asymmetric_alg("RS256"),
            Some((Algorithm::RS256, KeyFamily::Rsa))
        ));
    }

    #[test]
    fn metadata_endpoints_must_be_http() {
        let doc = |jwks: &str| {
            serde_json::to_vec(&json!({
                "issuer": "https://accounts.google.com",
                "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
                "token_endpoint": "https://oauth2.googleapis.com/token",
                "jwks_uri": jwks,
            }))
            .unwrap()
        };
        let m = ProviderMetadata::from_json(&doc("https://www.googleapis.com/oauth2/v3/certs"))
            .unwrap();
        assert_eq!(
            m.id_token_signing_alg_values_supported,
            vec!["RS256".to_owned()]
        );
        for bad in [
            "file:///etc/passwd",
            "/oauth2/v3/certs",
            "data:,{}",
            "ftp://x.example/k",
        ] {
            assert!(
                matches!(
                    ProviderMetadata::from_json(&doc(bad)),
                    Err(OidcError::Unavailable(_))
                ),
                "{bad}"
            );
        }
        assert!(ProviderMetadata::from_json(b"{}").is_err());
        assert!(ProviderMetadata::from_json(b"not json").is_err());
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "weird", "kid": "w"},
            {"kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"},
        ]});
        let keys = KeySet::from_json(&serde_json::to_vec(&set).unwrap()).unwrap();
        assert_eq!(keys.keys.len(), 1);
        let only = keys.find(None).unwrap();
        assert_eq!(only.kid.as_deref(), Some("sig"));
        assert_eq!(only.alg.as_deref(), Some("RS256"));
        assert!(keys.find(Some("hmac")).is_none());
        assert!(keys.find(Some("enc")).is_none());
    }
}
