//! Sign-in with Google and Microsoft (OpenID Connect over the OAuth 2.0
//! authorization code flow with PKCE), provider links, and the providers'
//! refresh tokens kept encrypted.
//!
//! Everything is kept in the store's primitives, never in storage of its
//! own:
//!
//! | what | primitive | namespace, key |
//! |------|-----------|----------------|
//! | a login in progress: PKCE verifier, `nonce`, where to return | one-time item, 10 min | `oauth_state`, SHA-256 of `state` |
//! | the code handed to the frontend | one-time item, 2 min | `oauth_code`, SHA-256 of the code |
//! | a link of a provider account to a user | record (insert-if-absent), owner = user | `oauth_link`, `provider:subject` |
//! | a user's provider tokens | record, owner = user; status = generation | `provider_token`, `user:provider` |
//!
//! Any instance can finish a login another began (the state is in the
//! store), and a replayed `state` or code finds nothing.
//!
//! Provider tokens are sealed with the [`FieldCipher`](crate::FieldCipher)
//! under the context (`provider_tokens`, user id, `provider.field`), so a
//! ciphertext copied onto another user or provider does not decrypt. They
//! are never returned by an endpoint and never logged; an embedding service
//! asks [`ProviderTokens::access_token`] for a fresh access token.

pub mod oidc;

mod flow;
mod links;
pub mod migrate;
mod tokens;

pub use flow::{CallbackParams, LoginStarted, OAuthLogin, binding_cookie_name};
pub use links::ProviderLink;
pub use tokens::{
    ProviderTokens, STATUS_FIRST_SEALED, STATUS_PLAINTEXT, TOKEN_COLLECTION, TOKEN_NS, TokenRecord,
    token_key,
};

use crate::secret::SecretString;
use oidc::IssuerRule;

/// A supported identity provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Google accounts.
    Google,
    /// Microsoft accounts (work, school and personal).
    Microsoft,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 2] = [Provider::Google, Provider::Microsoft];

    /// `google` or `microsoft`, as in routes and stored keys.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Microsoft => "microsoft",
        }
    }

    /// The provider named `name` (as [`Provider::as_str`] spells it).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Google's OpenID discovery document.
pub const GOOGLE_DISCOVERY: &str = "https://accounts.google.com/.well-known/openid-configuration";
/// The issuer of Google's ID tokens.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The other issuer Google documents for its ID tokens.
pub const GOOGLE_ISSUER_BARE: &str = "accounts.google.com";
/// Microsoft's multi-tenant issuer: `{tenantid}` is the token's `tid`.
pub const MICROSOFT_ISSUER_TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

/// One provider's client registration and endpoints.
#[derive(Clone)]
pub struct ProviderSettings {
    /// Which provider.
    pub provider: Provider,
    /// The public client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretString,
    /// The OpenID discovery document.
    pub discovery_url: url::Url,
    /// What the ID token's `iss` must be.
    pub issuer: IssuerRule,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request (Google's
    /// `access_type=offline`).
    pub auth_params: Vec<(String, String)>,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .field("discovery_url", &self.discovery_url.as_str())
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A URL that is known to parse.
fn fixed_url(s: &str) -> url::Url {
    // Only called on the constants above and strings built from a tenant
    // that was checked to be URL-safe.
    url::Url::parse(s).unwrap_or_else(|_| unreachable!("a fixed URL parses: {s}"))
}

impl ProviderSettings {
    /// Google: `openid email profile`, offline access (a refresh token),
    /// and the consent screen so Google returns one on every login.
    #[must_use]
    pub fn google(client_id: impl Into<String>, client_secret: SecretString) -> Self {
        Self {
            provider: Provider::Google,
            client_id: client_id.into(),
            client_secret,
            discovery_url: fixed_url(GOOGLE_DISCOVERY),
            issuer: IssuerRule::AnyOf(vec![
                GOOGLE_ISSUER.to_owned(),
                GOOGLE_ISSUER_BARE.to_owned(),
            ]),
            scopes: ["openid", "email", "profile"].map(String::from).to_vec(),
            auth_params: vec![
                ("access_type".into(), "offline".into()),
                ("prompt".into(), "consent".into()),
            ],
        }
    }

    /// Microsoft identity platform v2 for `tenant` (`common`,
    /// `organizations`, `consumers`, a tenant id or a domain):
    /// `openid email profile offline_access`. The issuer follows
    /// Microsoft's multi-tenant template; a tenant given as an id also
    /// pins `iss` to that tenant.
    ///
    /// # Errors
    /// [`InvalidTenant`] when `tenant` is not a tenant name.
    pub fn microsoft(
        client_id: impl Into<String>,
        client_secret: SecretString,
        tenant: &str,
    ) -> Result<Self, InvalidTenant> {
        let ok = !tenant.is_empty()
            && tenant.len() <= 256
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !ok {
            return Err(InvalidTenant);
        }
        let pinned = tenant.len() == 36 && tenant.chars().filter(|&c| c == '-').count() == 4;
        let issuer = if pinned {
            IssuerRule::Exact(MICROSOFT_ISSUER_TEMPLATE.replace("{tenantid}", tenant))
        } else {
            IssuerRule::TenantTemplate(MICROSOFT_ISSUER_TEMPLATE.to_owned())
        };
        Ok(Self {
            provider: Provider::Microsoft,
            client_id: client_id.into(),
            client_secret,
            discovery_url: fixed_url(&format!(
                "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
            )),
            issuer,
            scopes: ["openid", "email", "profile", "offline_access"]
                .map(String::from)
                .to_vec(),
            auth_params: Vec::new(),
        })
    }

    /// Points discovery and the issuer elsewhere (a sovereign cloud, a
    /// test provider).
    #[must_use]
    pub fn with_endpoints(mut self, discovery_url: url::Url, issuer: IssuerRule) -> Self {
        self.discovery_url = discovery_url;
        self.issuer = issuer;
        self
    }

    /// Whether the ID token proves the email belongs to the signer. Google
    /// says so in `email_verified`; for Microsoft only `xms_edov` (the
    /// email's domain is verified by its owner) does, and `email_verified`
    /// is not trusted.
    #[must_use]
    pub fn email_is_verified(&self, claims: &oidc::IdTokenClaims) -> bool {
        match self.provider {
            Provider::Google => claims.email_verified,
            Provider::Microsoft => claims.xms_edov,
        }
    }
}

/// A Microsoft tenant that is not a tenant name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a Microsoft tenant is common, organizations, consumers, a tenant id or a domain")]
pub struct InvalidTenant;

/// Why a provider login or a provider-token request failed. Each variant
/// is a stable, public reason; none carries a token or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// The provider has no client configured.
    #[error("{0} sign-in is not configured")]
    NotConfigured(Provider),
    /// `redirect_to` is not on the frontend's origin.
    #[error("redirect_to must be on the frontend's origin")]
    InvalidRedirect,
    /// The `state` is unknown, expired, already used, or for another
    /// provider.
    #[error("the sign-in attempt is unknown, expired or already finished")]
    InvalidState,
    /// The callback came from another browser than the one that started
    /// the login (no binding cookie, or another's).
    #[error("the sign-in was started in another browser")]
    BrowserMismatch,
    /// The provider answered the authorization request with an error
    /// (`access_denied` when the user declined).
    #[error("the provider refused the sign-in: {0}")]
    ProviderDenied(&'static str),
    /// The provider refused the authorization code or refresh token
    /// (`invalid_grant`).
    #[error("the provider refused the grant")]
    GrantRefused,
    /// The provider could not be reached or answered nonsense.
    #[error("the provider is unavailable")]
    ProviderUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The ID token failed verification.
    #[error("the provider's ID token is invalid: {0}")]
    InvalidIdToken(&'static str),
    /// The token names no email, and no account is linked to it.
    #[error("the provider did not share an email address")]
    MissingEmail,
    /// An account has this email, and the provider does not prove the
    /// signer owns it: never linked silently.
    #[error("an account with this email exists, and the provider does not verify the email")]
    EmailNotVerified,
    /// The user already has another account of this provider linked.
    #[error("another account of this provider is already linked")]
    AlreadyLinked,
    /// The exchange code is unknown, expired or used.
    #[error("the code is unknown, expired or already used")]
    InvalidCode,
    /// Unlinking would leave the user no way to sign in.
    #[error("this is the account's last way to sign in")]
    LastSignInMethod,
    /// The user has no link to this provider (or no provider token).
    #[error("no {0} account is linked")]
    NotLinked(Provider),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Sealing or opening a provider token failed.
    #[error("a provider token could not be sealed or opened")]
    Cipher(#[from] crate::crypto::CipherError),
    /// Starting our session failed.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

impl OAuthError {
    /// A stable code for the error, as the API and the frontend redirect
    /// carry it.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::NotConfigured(_) => "provider_not_configured",
            OAuthError::InvalidRedirect => "invalid_redirect",
            OAuthError::InvalidState => "invalid_state",
            OAuthError::BrowserMismatch => "browser_mismatch",
            OAuthError::ProviderDenied(code) => code,
            OAuthError::GrantRefused => "grant_refused",
            OAuthError::ProviderUnavailable(_) => "provider_unavailable",
            OAuthError::InvalidIdToken(_) => "invalid_id_token",
            OAuthError::MissingEmail => "missing_email",
            OAuthError::EmailNotVerified => "email_not_verified",
            OAuthError::AlreadyLinked => "provider_already_linked",
            OAuthError::InvalidCode => "invalid_code",
            OAuthError::LastSignInMethod => "last_sign_in_method",
            OAuthError::NotLinked(_) => "not_linked",
            OAuthError::Store(_) => "unavailable",
            OAuthError::Cipher(_) | OAuthError::Auth(_) => "internal",
        }
    }
}

impl From<oidc::OidcError> for OAuthError {
    fn from(e: oidc::OidcError) -> Self {
        match e {
            oidc::OidcError::InvalidToken(reason) => OAuthError::InvalidIdToken(reason),
            other => OAuthError::ProviderUnavailable(Box::new(other)),
        }
    }
}

/// The provider error codes of RFC 6749 §4.1.2.1 passed on to the
/// frontend; anything else becomes `provider_error`.
pub(crate) fn provider_error_code(code: &str) -> &'static str {
    match code {
        "access_denied" => "access_denied",
        "consent_required" => "consent_required",
        "interaction_required" => "interaction_required",
        "login_required" => "login_required",
        "temporarily_unavailable" => "temporarily_unavailable",
        "server_error" => "provider_server_error",
        _ => "provider_error",
    }
}
