//! Where everything durable lives: users, sessions (refresh-token
//! families), audit events, the field cipher's usage ledger, and the
//! generic primitives every later capability builds on.
//!
//! # Small traits, one value
//!
//! Storage is split by area into small traits, each with its failure
//! modes written on its methods:
//!
//! | trait | what |
//! |---|---|
//! | [`UserStore`] | accounts |
//! | [`SessionStore`] | refresh-token families and their compare-and-swap rotation |
//! | [`AuditLog`] | security events per user |
//! | [`UsageLedger`](crate::crypto::UsageLedger) | encryptions per key, across processes |
//! | [`OneTimeStore`] | one-time items with a time to live, taken at most once (OAuth `state`, exchange codes) |
//! | [`RecordStore`] | insert-if-absent by key, with a status that only moves forward (webhook event ids, provider links) |
//! | [`VersionedStore`] | compare-and-swap upsert that only moves to a newer version (subscription state) |
//! | [`LeaseStore`] | leases with expiry and a fencing counter (worker jobs) |
//! | [`WindowCounters`] | counters in fixed windows (rate limits shared by every instance) |
//! | [`Purge`] | deletes what has expired; the worker calls it |
//!
//! One store value implements all of them per backend, and
//! [`StoreBackend`] names that whole set: [`MemoryStore`] (tests,
//! examples), the embedded [`SqliteStore`](sqlite::SqliteStore) (feature
//! `sqlite`: one file, one writer thread that commits concurrent writes
//! together, a pool of readers) and [`MongoStore`](mongo::MongoStore)
//! (feature `mongodb`: majority writes with journal, primary reads). All
//! three pass one contract suite (`alvryn-core/tests/store_contract.rs`).
//! Each trait also has a [`tower::Service`] view, one request type per
//! operation (see [`service`]).
//!
//! # Failure modes every implementation shares
//!
//! * A key that is taken (an email, an id, an inserted record, a live
//!   one-time item): [`StoreError::Conflict`], for all but exactly one of
//!   concurrent writers.
//! * A record to update or to attach to does not exist:
//!   [`StoreError::NotFound`].
//! * A stored record cannot be read back (a field of the wrong type,
//!   damage, schema drift): [`StoreError::Corrupt`]. Decoding fails
//!   closed: a `revoked_at` that is not a time is an error, never "not
//!   revoked".
//! * The backend is unreachable or fails: [`StoreError::Unavailable`],
//!   and the write was not applied, with one exception: a write already
//!   handed to the backend when a layer gave up on it (a timeout) or the
//!   server failed its write concern has an unknown outcome. The
//!   embedded store never runs a write whose caller has gone. A write
//!   that returned `Ok` is durable.
//! * Expiry is checked in every query against the caller's clock
//!   (`now_ms`); nothing relies on a TTL monitor for correctness.
//!   [`Purge::purge_expired`] only reclaims space.
//!
//! Refresh tokens are never stored: only their SHA-256 ([`TokenHash`]).

#[cfg(feature = "mongodb")]
pub mod mongo;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub mod memory;
mod primitives;
pub mod service;

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::billing::PlanName;

pub use memory::MemoryStore;
pub use primitives::{
    Advance, CasOutcome, Lease, LeaseStore, NewLease, OneTimeItem, OneTimeStore, Purge, Purged,
    Record, RecordCursor, RecordFilter, RecordStore, StatusRange, Versioned, VersionedStore,
    WindowCount, WindowCounters,
};
pub use service::{ServiceStore, StoreService};

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
    /// The token it accepted before `previous`: a slow tab may still hold
    /// it for the grace window after it was retired.
    pub older: Option<PreviousSlot>,
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

/// Errors of every store trait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key is taken: an email or id that exists, a record inserted
    /// before, a one-time item still live, a lease held by another.
    #[error("the key is already taken")]
    Conflict,
    /// The record to update, or to attach to, does not exist.
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
    #[cfg_attr(not(any(feature = "sqlite", feature = "mongodb")), allow(dead_code))]
    pub(crate) fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// Accounts.
///
/// Every method either does all it says or nothing, and reports
/// [`StoreError::Unavailable`] when the backend fails.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts a user.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the email or the id exists (also
    /// under concurrent inserts: exactly one wins).
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

    /// The user of an authenticated request: `Some` only if the session
    /// `family_id` belongs to `user_id` and is active (unrevoked,
    /// unexpired) at `now_ms`. One read where the backend can join.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn active_session_user(
        &self,
        family_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<User>, StoreError>;
}

/// Sessions: refresh-token families.
///
/// A family is returned by [`family`](SessionStore::family), active or
/// not, until it is purged; [`active_families`], rotation and
/// [`UserStore::active_session_user`] are what look at expiry and
/// revocation.
///
/// [`active_families`]: SessionStore::active_families
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new family (at login or sign-up).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the id exists;
    /// [`StoreError::NotFound`] when its user does not exist.
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError>;

    /// The family with `id`, active or not.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError>;

    /// Atomically applies `rotation`. Returns the family after the update,
    /// or `None` when the compare-and-swap failed (the presented token is
    /// not current, or the family is revoked or expired, or unknown). A
    /// rotation that returned is durable.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn rotate_family(&self, rotation: &Rotation)
    -> Result<Option<RefreshFamily>, StoreError>;

    /// Revokes one family (`Some(id)`) or every unrevoked family of the
    /// user (`None`); returns how many were revoked (0 for an unknown or
    /// already revoked family).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn revoke(&self, revocation: &Revocation) -> Result<u64, StoreError>;

    /// The user's families that are active at `now_ms`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError>;
}

/// What to revoke: one family of a user, or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Whose sessions.
    pub user_id: String,
    /// One family, or `None` for every unrevoked family of the user.
    pub family_id: Option<String>,
    /// Why.
    pub reason: RevokeReason,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// Security-relevant events per user.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends an audit event.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// A user's audit events, oldest first (by time; events of one
    /// instant in the order recorded).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError>;
}

/// What the accounts core needs: users, sessions and audit events.
/// `Arc<dyn StoreBackend>` upcasts to `Arc<dyn TokenStore>`.
pub trait TokenStore: UserStore + SessionStore + AuditLog {}
impl<T: UserStore + SessionStore + AuditLog> TokenStore for T {}

/// A complete storage backend: every store trait and the field cipher's
/// usage ledger. `Arc<dyn StoreBackend>` upcasts to each of them.
pub trait StoreBackend:
    TokenStore
    + crate::crypto::UsageLedger
    + OneTimeStore
    + RecordStore
    + VersionedStore
    + LeaseStore
    + WindowCounters
    + Purge
{
}
impl<T> StoreBackend for T where
    T: TokenStore
        + crate::crypto::UsageLedger
        + OneTimeStore
        + RecordStore
        + VersionedStore
        + LeaseStore
        + WindowCounters
        + Purge
{
}
