//! Where users, sessions (refresh-token families) and audit events live.
//!
//! [`TokenStore`] is the one storage trait of the auth core. Three
//! implementations ship: [`MemoryStore`] (tests, examples), the embedded
//! [`SqliteStore`](sqlite::SqliteStore) (the default: one SQLite file in
//! WAL mode, shared safely by the server and the worker) and
//! [`MongoStore`](mongo::MongoStore) (when `MONGO_URI` is set). All three
//! pass one contract suite (`alvryn-core/tests/store_contract.rs`) and all
//! three also implement [`UsageLedger`](crate::crypto::UsageLedger), so
//! the field cipher's per-key bound holds across processes and machines.
//!
//! Refresh tokens are never stored: only their SHA-256 ([`TokenHash`]).
//!
//! Failure modes every implementation shares:
//! * a unique email taken by a concurrent sign-up: [`StoreError::EmailTaken`],
//!   for all but exactly one of the racers;
//! * rotation is a compare-and-swap on the family's current token hash:
//!   of concurrent rotations presenting the same token exactly one wins,
//!   the others see `Ok(None)` and no partial update;
//! * the backend is unreachable or fails: [`StoreError::Unavailable`],
//!   with nothing written.

pub mod memory;
pub mod mongo;
pub mod service;
pub mod sqlite;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::billing::PlanName;

pub use memory::MemoryStore;
pub use service::{ServiceTokenStore, StoreRequest, StoreResponse, TokenStoreService};

/// SHA-256 of a refresh token: what the store keeps instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token.
    #[must_use]
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// From stored bytes.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A user account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Normalized email, unique.
    pub email: String,
    /// Argon2id PHC string; `None` for accounts that only sign in with a
    /// provider.
    pub password_hash: Option<String>,
    /// The user's plan.
    pub plan: PlanName,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "[redacted]"),
            )
            .field("plan", &self.plan)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// The refresh token a family currently accepts. `jti` and `issued_at`
/// let the server re-sign the identical token for concurrent requests
/// inside the grace window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshSlot {
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `iat`, Unix seconds.
    pub issued_at: i64,
}

/// The token a family accepted just before the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousSlot {
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// When it was exchanged, Unix milliseconds.
    pub rotated_at_ms: i64,
}

/// Why a family was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevokeReason {
    /// The user logged out of this session.
    Logout,
    /// The user logged out everywhere.
    LogoutAll,
    /// The user revoked this session from the sessions list.
    Revoked,
    /// A retired refresh token was presented again: likely theft.
    Reuse,
}

impl RevokeReason {
    /// Stable text form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::Revoked => "revoked",
            RevokeReason::Reuse => "reuse",
        }
    }

    /// Parses [`RevokeReason::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "logout" => RevokeReason::Logout,
            "logout_all" => RevokeReason::LogoutAll,
            "revoked" => RevokeReason::Revoked,
            "reuse" => RevokeReason::Reuse,
            _ => return None,
        })
    }
}

/// A session: the chain of refresh tokens issued from one login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshFamily {
    /// Session id (the `sid` claim).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Login time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last refresh, Unix milliseconds.
    pub last_used_at_ms: i64,
    /// When the current refresh token expires, Unix milliseconds.
    pub expires_at_ms: i64,
    /// The login's `User-Agent`, truncated.
    pub user_agent: Option<String>,
    /// The token the family accepts now.
    pub current: RefreshSlot,
    /// The token it accepted before.
    pub previous: Option<PreviousSlot>,
    /// Revocation time, if revoked.
    pub revoked_at_ms: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<RevokeReason>,
    /// Number of rotations so far.
    pub generation: i64,
}

impl RefreshFamily {
    /// Usable at `now_ms`: not revoked, not expired.
    #[must_use]
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms > now_ms
    }
}

/// A compare-and-swap rotation: replace `expected` by `next` if, and only
/// if, `expected` is still the family's current token and the family is
/// active at `now_ms`.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// The family.
    pub family_id: String,
    /// The hash of the presented token.
    pub expected: TokenHash,
    /// The successor.
    pub next: RefreshSlot,
    /// Now, Unix milliseconds (becomes `previous.rotated_at_ms` and
    /// `last_used_at_ms`).
    pub now_ms: i64,
    /// The successor's expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A security-relevant event, kept for the user and for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// What, e.g. `refresh_token_reused`.
    pub kind: String,
    /// Whose account.
    pub user_id: String,
    /// Which session, if any.
    pub family_id: Option<String>,
}

/// Errors of a [`TokenStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another account has this email.
    #[error("the email is already registered")]
    EmailTaken,
    /// The record to update does not exist.
    #[error("no such record")]
    NotFound,
    /// A stored record could not be read back (schema drift, damage).
    #[error("a stored record is damaged: {0}")]
    Corrupt(String),
    /// The backend failed or could not be reached; nothing was written.
    #[error("the store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// A complete storage backend: accounts and sessions plus the field
/// cipher's usage ledger. `Arc<dyn StoreBackend>` upcasts to both
/// `Arc<dyn TokenStore>` and `Arc<dyn UsageLedger>`.
pub trait StoreBackend: TokenStore + crate::crypto::UsageLedger {}
impl<T: TokenStore + crate::crypto::UsageLedger> StoreBackend for T {}

/// Users, sessions and audit events.
///
/// Every method either does all it says or nothing, and reports
/// [`StoreError::Unavailable`] when the backend fails.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Inserts a user.
    ///
    /// # Errors
    /// [`StoreError::EmailTaken`] when the email exists (also under a
    /// concurrent insert of the same email: exactly one insert wins).
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;

    /// The user with `id`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError>;

    /// The user with the normalized `email`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Replaces a user's password hash (after a parameter upgrade).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user.
    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError>;

    /// Inserts a new family (at login or sign-up).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError>;

    /// The family with `id`, active or not.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError>;

    /// Atomically applies `rotation`. Returns the family after the update,
    /// or `None` when the compare-and-swap failed (the presented token is
    /// not current, or the family is revoked or expired, or unknown).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn rotate_family(&self, rotation: &Rotation)
    -> Result<Option<RefreshFamily>, StoreError>;

    /// Revokes one family; `false` if it was unknown or already revoked.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn revoke_family(
        &self,
        id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Revokes every unrevoked family of a user; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn revoke_user_families(
        &self,
        user_id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<u64, StoreError>;

    /// The user's families that are active at `now_ms`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError>;

    /// Appends an audit event.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// A user's audit events, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError>;
}
