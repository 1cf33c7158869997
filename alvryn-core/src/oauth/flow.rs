//! The login flow: start (authorization request), callback (code
//! exchange, ID token, account), exchange (our tokens, once).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse as _, TokenUrl,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::links::{self, ProviderLink};
use super::oidc::{IdTokenClaims, OidcProvider, OidcSettings, ProviderMetadata, http_client};
use super::tokens::{Granted, ProviderTokens, TOKEN_NS, token_key};
use super::{OAuthError, Provider, ProviderSettings, provider_error_code};
use crate::auth::{Auth, Clock, Issued, SystemClock, normalize_email};
use crate::billing::PlanName;
use crate::crypto::FieldCipher;
use crate::secret::{SecretBytes, SecretString};
use crate::store::{OneTimeItem, StoreBackend, StoreError, User};

/// Namespace of logins in progress.
const STATE_NS: &str = "oauth_state";
/// Namespace of codes handed to the frontend.
const CODE_NS: &str = "oauth_code";
/// How long a login may take at the provider.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// How long the frontend has to exchange its code.
const CODE_TTL_MS: i64 = 2 * 60 * 1000;

/// A configured provider: its settings and its OpenID metadata and keys.
pub(crate) struct Configured {
    pub settings: ProviderSettings,
    pub oidc: OidcProvider,
}

pub(crate) type Providers = Arc<BTreeMap<Provider, Configured>>;

/// The token endpoint's extra field: the ID token.
#[derive(Clone, Default, Deserialize, Serialize)]
pub(crate) struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenFields").finish_non_exhaustive()
    }
}

impl oauth2::ExtraTokenFields for IdTokenFields {}

type IdTokenResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;

pub(crate) type Client = oauth2::Client<
    BasicErrorResponse,
    IdTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The OAuth client of a provider, at the endpoints discovery found.
pub(crate) fn oauth_client(
    settings: &ProviderSettings,
    metadata: &ProviderMetadata,
    redirect: Option<&url::Url>,
) -> Result<Client, OAuthError> {
    let unavailable = |what: &str| {
        OAuthError::ProviderUnavailable(format!("the provider's {what} is not a URL").into())
    };
    let client = oauth2::Client::new(ClientId::new(settings.client_id.clone()))
        .set_client_secret(ClientSecret::new(
            settings.client_secret.expose().to_owned(),
        ))
        .set_auth_uri(
            AuthUrl::new(metadata.authorization_endpoint.to_string())
                .map_err(|_| unavailable("authorization endpoint"))?,
        )
        .set_token_uri(
            TokenUrl::new(metadata.token_endpoint.to_string())
                .map_err(|_| unavailable("token endpoint"))?,
        );
    Ok(match redirect {
        Some(r) => client.set_redirect_uri(RedirectUrl::from_url(r.clone())),
        None => client,
    })
}

/// A failed token request as an [`OAuthError`]: a refusal by the
/// provider (`invalid_grant`, ...) or a failure to reach it.
pub(crate) fn grant_error<RE: std::error::Error + Send + Sync + 'static>(
    e: RequestTokenError<RE, BasicErrorResponse>,
) -> OAuthError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            tracing::info!(error = %r.error(), "the provider refused a grant");
            OAuthError::GrantRefused
        }
        RequestTokenError::Request(e) => OAuthError::ProviderUnavailable(Box::new(e)),
        RequestTokenError::Parse(e, _) => OAuthError::ProviderUnavailable(Box::new(e)),
        RequestTokenError::Other(m) => OAuthError::ProviderUnavailable(m.into()),
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}

/// The store key of a bearer value: its SHA-256, so the store never holds
/// a value that would let its reader finish someone's login.
fn hashed(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// What a login in progress keeps in the store.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    provider: String,
    verifier: String,
    nonce: String,
    return_to: String,
    /// SHA-256 of the browser binding (see [`LoginStarted`]).
    binding: String,
}

/// What an exchange code stands for.
#[derive(Serialize, Deserialize)]
struct PendingCode {
    user_id: String,
    /// When it was issued, Unix milliseconds.
    #[serde(default)]
    issued_at_ms: i64,
}

/// Namespace of the time a user's sessions were last all signed out by
/// the login flow (versioned: the newest time wins).
const SIGNED_OUT_NS: &str = "oauth_signed_out";

/// The query of the provider's redirect back to us.
#[derive(Clone, Default, Deserialize)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` we sent.
    pub state: Option<String>,
    /// The provider's error, when it did not authorize.
    pub error: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A started login.
#[derive(Clone, Debug)]
pub struct LoginStarted {
    /// Where to send the browser: the provider's authorization endpoint.
    pub authorization_url: url::Url,
    /// A secret for the browser that started the login, to be kept where
    /// only that browser sends it back to the callback (the server sets
    /// it as an `HttpOnly`, `SameSite=Lax` cookie named
    /// [`LoginStarted::cookie_name`]). Without it the callback refuses
    /// the login (`browser_mismatch`): a callback URL sent to someone else
    /// cannot sign them into the sender's account (login CSRF, RFC 6749
    /// §10.12).
    pub browser_binding: SecretString,
    /// The cookie's name: unique to this login, so logins in two tabs do
    /// not overwrite each other's.
    pub cookie_name: String,
}

/// The name of the cookie holding the browser binding of the login whose
/// `state` this is.
#[must_use]
pub fn binding_cookie_name(state: &str) -> String {
    format!("alvryn_login_{}", &hashed(state)[..16])
}

struct Inner {
    providers: Providers,
    store: Arc<dyn StoreBackend>,
    auth: Auth,
    tokens: ProviderTokens,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    backend: url::Url,
    frontend: url::Url,
}

/// Provider sign-in for an [`Auth`]: the three steps of the flow, the
/// user's links, and the provider tokens. Cheap to clone.
#[derive(Clone)]
pub struct OAuthLogin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OAuthLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthLogin")
            .field(
                "providers",
                &self.inner.providers.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuthLogin`].
pub struct OAuthLoginBuilder {
    store: Arc<dyn StoreBackend>,
    auth: Auth,
    cipher: FieldCipher,
    backend: url::Url,
    frontend: url::Url,
    settings: Vec<ProviderSettings>,
    http: Option<reqwest::Client>,
    clock: Arc<dyn Clock>,
    jwks_refetch_interval: Option<std::time::Duration>,
}

impl std::fmt::Debug for OAuthLoginBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthLoginBuilder").finish_non_exhaustive()
    }
}

impl OAuthLoginBuilder {
    /// Adds a provider.
    #[must_use]
    pub fn provider(mut self, settings: ProviderSettings) -> Self {
        self.settings.retain(|s| s.provider != settings.provider);
        self.settings.push(settings);
        self
    }

    /// The HTTP client for the providers (default:
    /// [`oidc::http_client`](super::oidc::http_client)).
    #[must_use]
    pub fn http(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The clock (default: the system's).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// At most one JWKS refetch for an unknown key per this interval.
    #[must_use]
    pub fn jwks_refetch_interval(mut self, interval: std::time::Duration) -> Self {
        self.jwks_refetch_interval = Some(interval);
        self
    }

    /// The login. Nothing is fetched until the first login.
    #[must_use]
    pub fn build(self) -> OAuthLogin {
        let http = self.http.unwrap_or_else(http_client);
        let providers: BTreeMap<_, _> = self
            .settings
            .into_iter()
            .map(|settings| {
                let mut oidc = OidcSettings::new(
                    settings.discovery_url.clone(),
                    settings.issuer.clone(),
                    settings.client_id.clone(),
                );
                if let Some(i) = self.jwks_refetch_interval {
                    oidc.jwks_refetch_interval = i;
                }
                let oidc = OidcProvider::new(oidc, http.clone());
                (settings.provider, Configured { settings, oidc })
            })
            .collect();
        let providers = Arc::new(providers);
        let tokens = ProviderTokens::new(
            Arc::clone(&self.store),
            self.cipher,
            Arc::clone(&providers),
            http.clone(),
            Arc::clone(&self.clock),
        );
        OAuthLogin {
            inner: Arc::new(Inner {
                providers,
                store: self.store,
                auth: self.auth,
                tokens,
                http,
                clock: self.clock,
                backend: self.backend,
                frontend: self.frontend,
            }),
        }
    }
}

impl OAuthLogin {
    /// Starts building: `backend_url` is where the provider sends the
    /// browser back (`{backend_url}/auth/oauth/{provider}/callback`),
    /// `frontend_url` where the browser lands after.
    #[must_use]
    pub fn builder(
        store: Arc<dyn StoreBackend>,
        auth: Auth,
        cipher: FieldCipher,
        backend_url: url::Url,
        frontend_url: url::Url,
    ) -> OAuthLoginBuilder {
        OAuthLoginBuilder {
            store,
            auth,
            cipher,
            backend: backend_url,
            frontend: frontend_url,
            settings: Vec::new(),
            http: None,
            clock: Arc::new(SystemClock),
            jwks_refetch_interval: None,
        }
    }

    /// Whether `provider` has a client configured.
    #[must_use]
    pub fn is_configured(&self, provider: Provider) -> bool {
        self.inner.providers.contains_key(&provider)
    }

    /// The provider tokens of users, for an embedding service.
    #[must_use]
    pub fn tokens(&self) -> &ProviderTokens {
        &self.inner.tokens
    }

    fn configured(&self, provider: Provider) -> Result<&Configured, OAuthError> {
        self.inner
            .providers
            .get(&provider)
            .ok_or(OAuthError::NotConfigured(provider))
    }

    /// The provider's client for the login flow: discovered endpoints and
    /// our callback as the redirect URI.
    async fn login_client(&self, provider: Provider) -> Result<(&Configured, Client), OAuthError> {
        let configured = self.configured(provider)?;
        let metadata = configured.oidc.metadata().await?;
        let client = oauth_client(
            &configured.settings,
            &metadata,
            Some(&self.callback_url(provider)?),
        )?;
        Ok((configured, client))
    }

    fn callback_url(&self, provider: Provider) -> Result<url::Url, OAuthError> {
        let base = self.inner.backend.as_str().trim_end_matches('/');
        url::Url::parse(&format!("{base}/auth/oauth/{provider}/callback"))
            .map_err(|_| OAuthError::InvalidRedirect)
    }

    /// Where to land after the login: `redirect_to` if it is on the
    /// frontend's origin (an absolute URL there, or a path), else the
    /// frontend URL.
    fn return_to(&self, redirect_to: Option<&str>) -> Result<url::Url, OAuthError> {
        let Some(r) = redirect_to.filter(|r| !r.is_empty()) else {
            return Ok(self.inner.frontend.clone());
        };
        // `//host` and `\\host` are other origins to a browser.
        if r.starts_with("//") || r.starts_with("/\\") || r.contains(['\r', '\n']) {
            return Err(OAuthError::InvalidRedirect);
        }
        let url = if r.starts_with('/') {
            self.inner.frontend.join(r)
        } else {
            url::Url::parse(r)
        }
        .map_err(|_| OAuthError::InvalidRedirect)?;
        if url.origin() != self.inner.frontend.origin() || !url.username().is_empty() {
            return Err(OAuthError::InvalidRedirect);
        }
        // `code` and `error` are ours to add: a destination that already
        // carries one would hand the frontend two.
        if url.query_pairs().any(|(k, _)| k == "code" || k == "error") {
            return Err(OAuthError::InvalidRedirect);
        }
        Ok(url)
    }

    /// Starts a login: keeps the PKCE verifier, `nonce` and destination
    /// as a one-time item under the `state`, and answers where to send
    /// the browser.
    ///
    /// # Errors
    /// [`OAuthError::NotConfigured`], [`OAuthError::InvalidRedirect`],
    /// [`OAuthError::ProviderUnavailable`] (discovery failed), the store's.
    pub async fn start(
        &self,
        provider: Provider,
        redirect_to: Option<&str>,
    ) -> Result<LoginStarted, OAuthError> {
        let return_to = self.return_to(redirect_to)?;
        let (configured, client) = self.login_client(provider).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = random_token();
        let nonce = random_token();
        let binding = random_token();
        let mut request = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .add_scopes(configured.settings.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("nonce", nonce.clone())
            .set_pkce_challenge(challenge);
        for (k, v) in &configured.settings.auth_params {
            request = request.add_extra_param(k.clone(), v.clone());
        }
        let (authorization_url, _) = request.url();
        let pending = PendingLogin {
            provider: provider.as_str().to_owned(),
            verifier: verifier.secret().clone(),
            nonce,
            return_to: return_to.to_string(),
            binding: hashed(&binding),
        };
        self.put_item(STATE_NS, &state, &pending, STATE_TTL_MS)
            .await?;
        Ok(LoginStarted {
            authorization_url,
            browser_binding: SecretString::new(binding),
            cookie_name: binding_cookie_name(&state),
        })
    }

    /// Keeps `value` (JSON) as a one-time item under the SHA-256 of the
    /// bearer value `key`, for `ttl_ms`.
    async fn put_item(
        &self,
        ns: &str,
        key: &str,
        value: &impl Serialize,
        ttl_ms: i64,
    ) -> Result<(), OAuthError> {
        let now_ms = self.inner.clock.now_ms();
        let value = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.inner
            .store
            .put_once(
                &OneTimeItem {
                    ns: ns.to_owned(),
                    key: hashed(key),
                    value: SecretBytes::new(value),
                    expires_at_ms: now_ms + ttl_ms,
                },
                now_ms,
            )
            .await?;
        Ok(())
    }

    /// Takes the one-time item under the bearer value `key`, once; `None`
    /// when there is none (never put, expired, taken) or it does not
    /// parse.
    async fn take_item<T: serde::de::DeserializeOwned>(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<T>, OAuthError> {
        let value = self.inner.store.take_once(ns, &hashed(key), now_ms).await?;
        Ok(value.and_then(|v| serde_json::from_slice(v.expose()).ok()))
    }

    /// Finishes a login at the provider's redirect back, and answers
    /// where to send the browser: the frontend with `code` (for
    /// [`OAuthLogin::exchange`]) on success, or with `error` (a stable
    /// code, see [`OAuthError::code`]). Never our tokens in a URL.
    pub async fn callback(
        &self,
        provider: Provider,
        params: &CallbackParams,
        browser_binding: Option<&str>,
    ) -> url::Url {
        let (result, return_to) = self.finish(provider, params, browser_binding).await;
        let mut url = return_to.unwrap_or_else(|| self.inner.frontend.clone());
        match result {
            Ok(code) => {
                url.query_pairs_mut().append_pair("code", &code);
            }
            Err(e) => {
                match &e {
                    OAuthError::Store(_)
                    | OAuthError::Cipher(_)
                    | OAuthError::Auth(_)
                    | OAuthError::ProviderUnavailable(_) => {
                        tracing::error!(%provider, error = %e, "provider sign-in failed");
                    }
                    _ => tracing::info!(%provider, error = %e, "provider sign-in refused"),
                }
                url.query_pairs_mut().append_pair("error", e.code());
            }
        }
        url
    }

    async fn finish(
        &self,
        provider: Provider,
        params: &CallbackParams,
        browser_binding: Option<&str>,
    ) -> (Result<String, OAuthError>, Option<url::Url>) {
        let now_ms = self.inner.clock.now_ms();
        let pending = match self
            .take_state(provider, params.state.as_deref(), now_ms)
            .await
        {
            Ok(p) => p,
            Err(e) => return (Err(e), None),
        };
        let return_to = url::Url::parse(&pending.return_to).ok();
        // The state is spent either way: a leaked callback URL is useless
        // to its sender too once someone else opened it.
        let same_browser = browser_binding.is_some_and(|b| {
            use subtle::ConstantTimeEq as _;
            bool::from(hashed(b).as_bytes().ct_eq(pending.binding.as_bytes()))
        });
        if !same_browser {
            return (Err(OAuthError::BrowserMismatch), return_to);
        }
        (
            self.finish_pending(provider, params, pending).await,
            return_to,
        )
    }

    async fn take_state(
        &self,
        provider: Provider,
        state: Option<&str>,
        now_ms: i64,
    ) -> Result<PendingLogin, OAuthError> {
        let state = state.filter(|s| !s.is_empty() && s.len() <= 256);
        let Some(state) = state else {
            return Err(OAuthError::InvalidState);
        };
        let pending: PendingLogin = self
            .take_item(STATE_NS, state, now_ms)
            .await?
            .ok_or(OAuthError::InvalidState)?;
        if pending.provider != provider.as_str() {
            return Err(OAuthError::InvalidState);
        }
        Ok(pending)
    }

    async fn finish_pending(
        &self,
        provider: Provider,
        params: &CallbackParams,
        pending: PendingLogin,
    ) -> Result<String, OAuthError> {
        if let Some(error) = &params.error {
            return Err(OAuthError::ProviderDenied(provider_error_code(error)));
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or(OAuthError::ProviderDenied("provider_error"))?;
        let (configured, client) = self.login_client(provider).await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.inner.http)
            .await
            .map_err(grant_error)?;
        let id_token = response
            .extra_fields()
            .id_token
            .as_deref()
            .ok_or(OAuthError::InvalidIdToken("missing"))?;
        let now_s = self.inner.clock.now_ms().div_euclid(1000);
        let claims = configured
            .oidc
            .verify_id_token(id_token, &pending.nonce, now_s)
            .await?;
        let user = self.account_for(&configured.settings, &claims).await?;
        let refresh = response.refresh_token().map(|t| t.secret().clone());
        self.inner
            .tokens
            .save(
                &user.id,
                provider,
                &Granted {
                    refresh_token: refresh.as_deref(),
                    access_token: response.access_token().secret(),
                    expires_in: response.expires_in(),
                    scope: response
                        .scopes()
                        .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
                },
            )
            .await?;
        let code = random_token();
        let pending = PendingCode {
            user_id: user.id.clone(),
            issued_at_ms: self.inner.clock.now_ms(),
        };
        self.put_item(CODE_NS, &code, &pending, CODE_TTL_MS).await?;
        Ok(code)
    }

    /// The account a verified ID token signs into: the linked one; else
    /// the account with its email, linked now if the provider proves the
    /// email; else a new account. An email the provider does not prove
    /// never links to an existing account.
    async fn account_for(
        &self,
        settings: &ProviderSettings,
        claims: &IdTokenClaims,
    ) -> Result<User, OAuthError> {
        let store = self.inner.store.as_ref();
        let provider = settings.provider;
        let now_ms = self.inner.clock.now_ms();
        if let Some(link) = links::find(store, provider, &claims.sub, now_ms).await?
            && let Some(user) = store.user_by_id(&link.user_id).await?
        {
            return Ok(user);
        }
        let email = claims
            .email
            .as_deref()
            .and_then(|e| normalize_email(e).ok())
            .ok_or(OAuthError::MissingEmail)?;
        let verified = settings.email_is_verified(claims);
        // Twice at most: a racer may create the account between our look
        // and our insert; then it exists, and the verified rule decides,
        // unless the racer was this same provider account (two tabs of
        // one first login), which is linked by now.
        for attempt in 0..2 {
            if attempt > 0
                && let Some(link) = links::find(store, provider, &claims.sub, now_ms).await?
                && let Some(user) = store.user_by_id(&link.user_id).await?
            {
                return Ok(user);
            }
            if let Some(user) = store.user_by_email(&email).await? {
                if !verified {
                    return Err(OAuthError::EmailNotVerified);
                }
                return self.join_proven(user, provider, &claims.sub, &email).await;
            }
            let user = User {
                id: crate::auth::random_id(),
                email: email.clone(),
                password_hash: None,
                plan: PlanName::free(),
                created_at_ms: now_ms,
            };
            match store.create_user(&user).await {
                Ok(()) => {
                    let link = links::link(
                        store,
                        provider,
                        &claims.sub,
                        Some(&email),
                        verified,
                        &user.id,
                        now_ms,
                    )
                    .await?;
                    return self.linked_user(link, user).await;
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OAuthError::Store(StoreError::Conflict))
    }

    /// The email's proven owner signs into the account that has the
    /// email. Against account pre-hijacking (someone claimed the email
    /// first, through a provider that does not prove it, or by signing up
    /// with a password, which does not prove it either): links whose email
    /// was never proven go first, with their tokens, whatever their
    /// provider (only this very provider account is kept); then the link
    /// is made; and when the account had no proven link before, every
    /// session it has is signed out, so whoever made them keeps none. A
    /// password is kept (the README's security notes say why).
    async fn join_proven(
        &self,
        user: User,
        provider: Provider,
        subject: &str,
        email: &str,
    ) -> Result<User, OAuthError> {
        let store = self.inner.store.as_ref();
        let now_ms = self.inner.clock.now_ms();
        let before = links::of_user(store, &user.id, now_ms).await?;
        let proven_before = before.iter().any(|l| l.email_verified);
        let mut evicted = 0;
        for link in &before {
            if link.email_verified || (link.provider == provider && link.subject == subject) {
                continue;
            }
            links::unlink(store, link).await?;
            store
                .remove_record(TOKEN_NS, &token_key(&user.id, link.provider))
                .await?;
            evicted += 1;
        }
        let link = links::link(
            store,
            provider,
            subject,
            Some(email),
            true,
            &user.id,
            now_ms,
        )
        .await?;
        let user = self.linked_user(link, user).await?;
        if evicted > 0 {
            tracing::warn!(
                user_id = %user.id,
                evicted,
                "provider links with an unproven email removed when the email's owner signed in"
            );
        }
        if evicted > 0 || !proven_before {
            // Exchange codes issued before this moment (to whoever claimed
            // the email first) are refused from now on.
            self.mark_signed_out(&user.id, now_ms).await?;
            store
                .revoke(&crate::store::Revocation {
                    user_id: user.id.clone(),
                    family_id: None,
                    reason: crate::store::RevokeReason::LogoutAll,
                    at_ms: now_ms,
                })
                .await?;
        }
        Ok(user)
    }

    /// Records that every session of the user was signed out at `now_ms`.
    async fn mark_signed_out(&self, user_id: &str, now_ms: i64) -> Result<(), OAuthError> {
        self.inner
            .store
            .upsert_versioned(&crate::store::Versioned {
                ns: SIGNED_OUT_NS.to_owned(),
                key: user_id.to_owned(),
                version: now_ms,
                data: Vec::new(),
                updated_at_ms: now_ms,
            })
            .await?;
        Ok(())
    }

    /// The user a link (possibly made by a racer) belongs to.
    async fn linked_user(&self, link: ProviderLink, ours: User) -> Result<User, OAuthError> {
        if link.user_id == ours.id {
            return Ok(ours);
        }
        self.inner
            .store
            .user_by_id(&link.user_id)
            .await?
            .ok_or(OAuthError::Store(StoreError::NotFound))
    }

    /// Exchanges a code from [`OAuthLogin::callback`] for our tokens,
    /// once.
    ///
    /// # Errors
    /// [`OAuthError::InvalidCode`] for an unknown, expired or used code;
    /// the store's; [`OAuthError::Auth`].
    pub async fn exchange(
        &self,
        code: &SecretString,
        user_agent: Option<&str>,
    ) -> Result<Issued, OAuthError> {
        let code = code.expose();
        if code.is_empty() || code.len() > 256 {
            return Err(OAuthError::InvalidCode);
        }
        let now_ms = self.inner.clock.now_ms();
        let pending: PendingCode = self
            .take_item(CODE_NS, code, now_ms)
            .await?
            .ok_or(OAuthError::InvalidCode)?;
        if let Some(out) = self
            .inner
            .store
            .versioned(SIGNED_OUT_NS, &pending.user_id)
            .await?
            && pending.issued_at_ms < out.version
        {
            return Err(OAuthError::InvalidCode);
        }
        match self
            .inner
            .auth
            .start_session_for(&pending.user_id, user_agent)
            .await
        {
            Ok(issued) => Ok(issued),
            // The user was deleted since the callback.
            Err(crate::auth::AuthError::InvalidToken) => Err(OAuthError::InvalidCode),
            Err(e) => Err(e.into()),
        }
    }

    /// The user's provider links, oldest first.
    ///
    /// # Errors
    /// The store's.
    pub async fn links(&self, user_id: &str) -> Result<Vec<ProviderLink>, OAuthError> {
        let now_ms = self.inner.clock.now_ms();
        Ok(links::of_user(self.inner.store.as_ref(), user_id, now_ms).await?)
    }

    /// Unlinks `provider` from the user and deletes its tokens, unless it
    /// is the user's last way to sign in (no password, no other link).
    ///
    /// # Errors
    /// [`OAuthError::NotLinked`], [`OAuthError::LastSignInMethod`], the
    /// store's.
    pub async fn unlink(&self, user_id: &str, provider: Provider) -> Result<(), OAuthError> {
        // One unlink of a user at a time, on every instance: two
        // concurrent unlinks of the last two providers would each see the
        // other still there.
        let store = self.inner.store.as_ref();
        let lease = self.user_lease(user_id).await?;
        let result = self.unlink_held(user_id, provider).await;
        let _ = store.release(&lease).await;
        result
    }

    /// Takes the user's account lease (a few seconds), waiting up to two
    /// seconds for another holder.
    async fn user_lease(&self, user_id: &str) -> Result<crate::store::Lease, OAuthError> {
        let store = self.inner.store.as_ref();
        let holder = random_token();
        for _ in 0..40 {
            let request = crate::store::NewLease {
                name: format!("oauth_account:{user_id}"),
                holder: holder.clone(),
                ttl_ms: 10_000,
                now_ms: self.inner.clock.now_ms(),
            };
            if let Some(lease) = store.acquire(&request).await? {
                return Ok(lease);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(OAuthError::Store(StoreError::Conflict))
    }

    async fn unlink_held(&self, user_id: &str, provider: Provider) -> Result<(), OAuthError> {
        let store = self.inner.store.as_ref();
        let all = self.links(user_id).await?;
        let link = all
            .iter()
            .find(|l| l.provider == provider)
            .ok_or(OAuthError::NotLinked(provider))?;
        let has_password = store
            .user_by_id(user_id)
            .await?
            .is_some_and(|u| u.password_hash.is_some());
        if !has_password && all.len() < 2 {
            return Err(OAuthError::LastSignInMethod);
        }
        links::unlink(store, link).await?;
        store
            .remove_record(TOKEN_NS, &token_key(user_id, provider))
            .await?;
        Ok(())
    }
}
