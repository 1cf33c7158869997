//! Accounts and sessions: sign-up, password login, refresh-token rotation
//! with reuse detection, logout, and the sessions list.
//!
//! # Refresh rotation
//!
//! Every login starts a *family* (a session). Each refresh presents the
//! family's current refresh token and receives a new pair; the store swaps
//! the family's current token hash atomically (compare-and-swap), so of
//! concurrent refreshes exactly one rotates. The others, if they present
//! the token that was just retired and arrive within the grace window
//! (default 10 s), receive **the same successor**: its `jti` and `iat` are
//! in the family record, and HMAC signing is deterministic, so it is
//! re-signed byte for byte. Two browser tabs refreshing at once therefore
//! never sign the user out.
//!
//! The same holds for the token retired just before that one (a slow
//! tab presenting A while another tab's refreshes took A to B and B to
//! C), again only within the window from its own retirement. Each such
//! answer is recorded as a [`AUDIT_REFRESH_GRACE`] audit event.
//!
//! A retired token presented after the window, or any older token, is
//! treated as stolen: the whole family is revoked (its current token stops
//! working too), an audit event `refresh_token_reused` is recorded, and
//! the caller gets [`AuthError::TokenReused`].
//!
//! Access tokens carry the family id (`sid`); [`Auth::authenticate`]
//! checks the family is still active, so logout takes effect at once, not
//! when the access token expires.

pub mod password;
pub mod validate;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::billing::PlanName;
use crate::secret::SecretString;
use crate::store::{
    AuditEvent, RefreshFamily, RefreshSlot, Revocation, RevokeReason, Rotation, StoreError,
    TokenHash, TokenStore, User,
};
use crate::token::{Claims, JwtKeys, TokenError, TokenKind};
pub use password::{HashParams, PasswordError, PasswordHasher, Verdict};
pub use validate::{InvalidEmail, WeakPassword, check_password, normalize_email};

/// The audit event recorded when a retired refresh token is presented.
pub const AUDIT_REFRESH_REUSED: &str = "refresh_token_reused";
/// The audit event recorded when a just-retired refresh token is
/// presented inside the grace window and answered with the successor.
pub const AUDIT_REFRESH_GRACE: &str = "refresh_token_grace";
/// The default absolute session lifetime: 90 days.
pub const DEFAULT_SESSION_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);
/// Longest `User-Agent` kept with a session, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// A source of the current time (Unix milliseconds). Tests use a manual
/// clock so that windows and expiries are tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Now, Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Errors of [`Auth`]; each maps to one stable API error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// `invalid_email`.
    #[error(transparent)]
    InvalidEmail(#[from] InvalidEmail),
    /// `weak_password`.
    #[error(transparent)]
    WeakPassword(#[from] WeakPassword),
    /// `email_taken`.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// `invalid_credentials`: unknown email or wrong password, never which.
    #[error("the email or password is wrong")]
    InvalidCredentials,
    /// `invalid_token`: malformed, forged, expired, revoked, wrong kind.
    #[error("the token is invalid or expired")]
    InvalidToken,
    /// `token_reused`: a retired refresh token came back; its session is
    /// now revoked.
    #[error("the refresh token was already used; the session has been revoked")]
    TokenReused,
    /// `busy`: the password hashing queue is full.
    #[error("too many logins at once; try again shortly")]
    Busy,
    /// `unavailable`: the store failed.
    #[error("the account store is unavailable")]
    Store(#[source] StoreError),
    /// `internal`.
    #[error("internal error")]
    Internal,
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => AuthError::Busy,
            _ => AuthError::Internal,
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e)
    }
}

/// A freshly issued token pair and its user.
pub struct Issued {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token.
    pub refresh_token: SecretString,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    /// The user.
    pub user: User,
    /// The session id.
    pub session_id: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .finish()
    }
}

/// The caller of an authenticated request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user, as stored now.
    pub user: User,
    /// The session the access token belongs to.
    pub session_id: String,
}

/// Accounts and sessions over a [`TokenStore`].
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn TokenStore>,
    keys: Arc<JwtKeys>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    grace_ms: i64,
    /// Absolute session lifetime in seconds from login; `None` for none.
    max_age_s: Option<i64>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("grace_ms", &self.grace_ms)
            .field("max_age_s", &self.max_age_s)
            .finish_non_exhaustive()
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}

fn truncate_ua(ua: Option<&str>) -> Option<String> {
    ua.map(|s| {
        s.chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT_CHARS)
            .collect()
    })
}

impl Auth {
    /// Sessions over `store`, tokens from `keys`, passwords through
    /// `hasher`; the system clock and a 10 s grace window.
    #[must_use]
    pub fn new(store: Arc<dyn TokenStore>, keys: Arc<JwtKeys>, hasher: PasswordHasher) -> Self {
        Self {
            store,
            keys,
            hasher,
            clock: Arc::new(SystemClock),
            grace_ms: 10_000,
            max_age_s: Some(secs(DEFAULT_SESSION_MAX_AGE)),
        }
    }

    /// Sets the absolute session lifetime: a session ends this long after
    /// its login, however often it is refreshed (rotation never extends
    /// it). `None` lets refreshes extend a session for ever.
    #[must_use]
    pub fn with_session_max_age(mut self, max_age: Option<std::time::Duration>) -> Self {
        self.max_age_s = max_age.map(secs);
        self
    }

    /// Replaces the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the window in which a just-retired refresh token still yields
    /// the same successor.
    #[must_use]
    pub fn with_grace(mut self, grace: std::time::Duration) -> Self {
        self.grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// The token keys.
    #[must_use]
    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    fn now(&self) -> (i64, i64) {
        let ms = self.clock.now_ms();
        (ms, ms.div_euclid(1000))
    }

    /// When a refresh token issued at `iat` (seconds) for a session that
    /// began at `created_ms` expires: its lifetime, cut at the session's
    /// absolute end. A function of the family's fields, so a successor
    /// re-signed inside the grace window is the same token.
    fn refresh_exp(&self, iat: i64, created_ms: i64) -> i64 {
        let ttl_end = iat.saturating_add(self.keys.settings().refresh_ttl_secs);
        match self.max_age_s {
            Some(max) => ttl_end.min(created_ms.div_euclid(1000).saturating_add(max)),
            None => ttl_end,
        }
    }

    fn sign_refresh(
        &self,
        user_id: &str,
        sid: &str,
        jti: &str,
        iat: i64,
        created_ms: i64,
    ) -> Result<String, AuthError> {
        let mut claims = self.keys.claims(TokenKind::Refresh, user_id, sid, jti, iat);
        claims.exp = self.refresh_exp(iat, created_ms);
        if claims.exp <= iat {
            // The session's absolute lifetime is over.
            return Err(AuthError::InvalidToken);
        }
        self.keys.sign(&claims).map_err(|_| AuthError::Internal)
    }

    fn issue(
        &self,
        user: User,
        sid: &str,
        refresh: String,
        now_s: i64,
    ) -> Result<Issued, AuthError> {
        let access = self
            .keys
            .sign(
                &self
                    .keys
                    .claims(TokenKind::Access, &user.id, sid, &random_id(), now_s),
            )
            .map_err(|_| AuthError::Internal)?;
        Ok(Issued {
            access_token: SecretString::new(access),
            refresh_token: SecretString::new(refresh),
            expires_in: self.keys.settings().access_ttl_secs,
            user,
            session_id: sid.to_owned(),
        })
    }

    async fn start_session(
        &self,
        user: User,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let (now_ms, now_s) = self.now();
        let sid = random_id();
        let jti = random_id();
        let refresh = self.sign_refresh(&user.id, &sid, &jti, now_s, now_ms)?;
        let family = RefreshFamily {
            id: sid.clone(),
            user_id: user.id.clone(),
            created_at_ms: now_ms,
            last_used_at_ms: now_ms,
            expires_at_ms: self.refresh_exp(now_s, now_ms) * 1000,
            user_agent: truncate_ua(user_agent),
            current: RefreshSlot {
                token_hash: TokenHash::of(&refresh),
                jti,
                issued_at: now_s,
            },
            previous: None,
            older: None,
            revoked_at_ms: None,
            revoke_reason: None,
            generation: 0,
        };
        self.store.create_family(&family).await?;
        self.issue(user, &sid, refresh, now_s)
    }

    /// Starts a session for a user who proved who they are another way
    /// (a provider login).
    ///
    /// # Errors
    /// `InvalidToken` when the user no longer exists; `Store`.
    pub async fn start_session_for(
        &self,
        user_id: &str,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let user = self
            .store
            .user_by_id(user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        self.start_session(user, user_agent).await
    }

    /// The clock this uses.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Creates an account and its first session.
    ///
    /// # Errors
    /// `InvalidEmail`, `WeakPassword`, `EmailTaken`, `Busy`, `Store`.
    pub async fn signup(
        &self,
        email: &str,
        password: &SecretString,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let result = self.signup_inner(email, password, user_agent).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(
                AuthError::InvalidEmail(_) | AuthError::WeakPassword(_) | AuthError::EmailTaken,
            ) => "refused",
            Err(_) => "error",
        };
        metrics::counter!(crate::metrics::AUTH_SIGNUPS, "outcome" => outcome).increment(1);
        result
    }

    async fn signup_inner(
        &self,
        email: &str,
        password: &SecretString,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let email = normalize_email(email)?;
        // Fail fast on a taken email before spending a hash; the unique
        // index still decides races.
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        // The strength check (zxcvbn) and the hash both run on a hashing
        // worker, never on the executor.
        let phc = self.hasher.hash_new(password, &email).await??;
        let user = User {
            id: random_id(),
            email,
            password_hash: Some(phc),
            plan: PlanName::free(),
            created_at_ms: self.clock.now_ms(),
        };
        match self.store.create_user(&user).await {
            Ok(()) => {}
            // Ids are random: a conflict is the email, taken by a racer.
            Err(StoreError::Conflict) => return Err(AuthError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        self.start_session(user, user_agent).await
    }

    /// Checks a password and starts a session. Unknown email and wrong
    /// password take the same work and give the same error. A hash made
    /// with outdated parameters is replaced.
    ///
    /// # Errors
    /// `InvalidCredentials`, `Busy`, `Store`.
    pub async fn login(
        &self,
        email: &str,
        password: &SecretString,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let result = self.login_inner(email, password, user_agent).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AuthError::InvalidCredentials) => "failed",
            Err(_) => "error",
        };
        metrics::counter!(crate::metrics::AUTH_LOGINS, "outcome" => outcome).increment(1);
        result
    }

    async fn login_inner(
        &self,
        email: &str,
        password: &SecretString,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        let user = match normalize_email(email) {
            Ok(e) => self.store.user_by_email(&e).await?,
            Err(_) => None,
        };
        let phc = user.as_ref().and_then(|u| u.password_hash.as_deref());
        let verdict = self.hasher.verify(password, phc).await?;
        let Some(mut user) = user.filter(|_| verdict.valid) else {
            return Err(AuthError::InvalidCredentials);
        };
        if verdict.needs_rehash {
            match self.hasher.hash(password).await {
                Ok(phc) => match self.store.set_password_hash(&user.id, &phc).await {
                    Ok(()) => user.password_hash = Some(phc),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store an upgraded password hash")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "could not compute an upgraded password hash"),
            }
        }
        self.start_session(user, user_agent).await
    }

    /// Exchanges a refresh token for a new pair (see the module docs).
    ///
    /// # Errors
    /// `InvalidToken`, `TokenReused`, `Store`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Issued, AuthError> {
        let result = self.refresh_inner(refresh_token).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AuthError::InvalidToken) => "invalid",
            Err(AuthError::TokenReused) => {
                metrics::counter!(crate::metrics::AUTH_REFRESH_REUSE).increment(1);
                "reused"
            }
            Err(_) => "error",
        };
        metrics::counter!(crate::metrics::AUTH_REFRESHES, "outcome" => outcome).increment(1);
        result
    }

    async fn refresh_inner(&self, refresh_token: &str) -> Result<Issued, AuthError> {
        let (now_ms, now_s) = self.now();
        let claims = self
            .keys
            .verify(TokenKind::Refresh, refresh_token, now_s)
            .map_err(|_| AuthError::InvalidToken)?;
        let presented = TokenHash::of(refresh_token);
        // The session's start bounds the successor's expiry (its absolute
        // lifetime), so read it first; the rotation below still decides.
        let started_ms = match self.store.family(&claims.sid).await? {
            Some(f) if f.user_id == claims.sub => f.created_at_ms,
            _ => return Err(AuthError::InvalidToken),
        };
        let next = RefreshSlot {
            token_hash: TokenHash([0; 32]),
            jti: random_id(),
            issued_at: now_s,
        };
        let successor =
            self.sign_refresh(&claims.sub, &claims.sid, &next.jti, now_s, started_ms)?;
        let rotation = Rotation {
            family_id: claims.sid.clone(),
            expected: presented,
            next: RefreshSlot {
                token_hash: TokenHash::of(&successor),
                ..next
            },
            now_ms,
            expires_at_ms: self.refresh_exp(now_s, started_ms) * 1000,
        };
        let (family, refresh) = match self.store.rotate_family(&rotation).await? {
            Some(f) => (f, successor),
            None => {
                let family = self
                    .store
                    .family(&claims.sid)
                    .await?
                    .ok_or(AuthError::InvalidToken)?;
                self.lost_rotation(&claims, presented, family, now_ms)
                    .await?
            }
        };
        let user = self
            .store
            .user_by_id(&family.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        self.issue(user, &family.id, refresh, now_s)
    }

    /// The compare-and-swap did not match: a concurrent refresh inside the
    /// grace window, or reuse.
    async fn lost_rotation(
        &self,
        claims: &Claims,
        presented: TokenHash,
        family: RefreshFamily,
        now_ms: i64,
    ) -> Result<(RefreshFamily, String), AuthError> {
        if family.user_id != claims.sub || !family.is_active(now_ms) {
            return Err(AuthError::InvalidToken);
        }
        // The token just retired, or the one before it (a slow tab that
        // sent it while another tab's refresh went through twice): either
        // counts only inside the grace window from its own retirement.
        let in_grace = [family.previous.as_ref(), family.older.as_ref()]
            .into_iter()
            .flatten()
            .any(|p| p.token_hash == presented && now_ms - p.rotated_at_ms <= self.grace_ms);
        if in_grace {
            let c = &family.current;
            let token = self.sign_refresh(
                &family.user_id,
                &family.id,
                &c.jti,
                c.issued_at,
                family.created_at_ms,
            )?;
            if TokenHash::of(&token) == c.token_hash {
                // Worth knowing (a slow tab, or a replay inside the
                // window), never worth failing the refresh for.
                let event = AuditEvent {
                    at_ms: now_ms,
                    kind: AUDIT_REFRESH_GRACE.into(),
                    user_id: family.user_id.clone(),
                    family_id: Some(family.id.clone()),
                };
                if let Err(e) = self.store.record_audit(&event).await {
                    tracing::warn!(error = %e, "could not record a grace-window refresh");
                }
                return Ok((family, token));
            }
            // Signed under a secret we no longer hold: cannot reproduce.
            return Err(AuthError::InvalidToken);
        }
        if family.current.token_hash == presented {
            // Current but not rotated: the family expired or was revoked
            // between the two reads.
            return Err(AuthError::InvalidToken);
        }
        self.store
            .revoke(&Revocation {
                user_id: family.user_id.clone(),
                family_id: Some(family.id.clone()),
                reason: RevokeReason::Reuse,
                at_ms: now_ms,
            })
            .await?;
        let event = AuditEvent {
            at_ms: now_ms,
            kind: AUDIT_REFRESH_REUSED.into(),
            user_id: family.user_id.clone(),
            family_id: Some(family.id.clone()),
        };
        if let Err(e) = self.store.record_audit(&event).await {
            tracing::error!(error = %e, "could not record a refresh-token reuse");
        }
        tracing::warn!(user_id = %family.user_id, session_id = %family.id, "refresh token reused; session revoked");
        Err(AuthError::TokenReused)
    }

    /// Revokes the session of a refresh token (expired tokens accepted).
    ///
    /// # Errors
    /// `InvalidToken` for a token that is not ours; `Store`.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        let (now_ms, _) = self.now();
        // Signature, kind, issuer and audience must hold; expiry need not.
        let claims = self
            .keys
            .verify_ignoring_expiry(TokenKind::Refresh, refresh_token)
            .map_err(|_| AuthError::InvalidToken)?;
        match self.store.family(&claims.sid).await? {
            Some(f) if f.user_id == claims.sub => {
                self.store
                    .revoke(&Revocation {
                        user_id: f.user_id,
                        family_id: Some(f.id),
                        reason: RevokeReason::Logout,
                        at_ms: now_ms,
                    })
                    .await?;
                Ok(())
            }
            _ => Err(AuthError::InvalidToken),
        }
    }

    /// Revokes every session of the caller.
    ///
    /// # Errors
    /// `Store`.
    pub async fn logout_all(&self, principal: &Principal) -> Result<u64, AuthError> {
        let (now_ms, _) = self.now();
        Ok(self
            .store
            .revoke(&Revocation {
                user_id: principal.user.id.clone(),
                family_id: None,
                reason: RevokeReason::LogoutAll,
                at_ms: now_ms,
            })
            .await?)
    }

    /// Checks an access token and that its session is still active.
    ///
    /// # Errors
    /// `InvalidToken`, `Store`.
    pub async fn authenticate(&self, access_token: &str) -> Result<Principal, AuthError> {
        let (now_ms, now_s) = self.now();
        let claims = self
            .keys
            .verify(TokenKind::Access, access_token, now_s)
            .map_err(|e| match e {
                TokenError::Expired | TokenError::Invalid | TokenError::Signing => {
                    AuthError::InvalidToken
                }
            })?;
        let user = self
            .store
            .active_session_user(&claims.sid, &claims.sub, now_ms)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        Ok(Principal {
            user,
            session_id: claims.sid,
        })
    }

    /// The caller's active sessions, newest first.
    ///
    /// # Errors
    /// `Store`.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<RefreshFamily>, AuthError> {
        let (now_ms, _) = self.now();
        Ok(self
            .store
            .active_families(&principal.user.id, now_ms)
            .await?)
    }

    /// Revokes one of the caller's sessions; `false` if it is not theirs
    /// or not active.
    ///
    /// # Errors
    /// `Store`.
    pub async fn revoke_session(
        &self,
        principal: &Principal,
        session_id: &str,
    ) -> Result<bool, AuthError> {
        let (now_ms, _) = self.now();
        match self.store.family(session_id).await? {
            Some(f) if f.user_id == principal.user.id && f.is_active(now_ms) => Ok(self
                .store
                .revoke(&Revocation {
                    user_id: f.user_id,
                    family_id: Some(f.id),
                    reason: RevokeReason::Revoked,
                    at_ms: now_ms,
                })
                .await?
                == 1),
            _ => Ok(false),
        }
    }
}
