//! The [`tower::Service`] view of the store traits, one request type per
//! operation, and the adapter back.
//!
//! [`StoreService`] implements `Service<Op>` for every operation struct
//! below whose trait its store implements ([`CreateUser`],
//! [`RotateFamily`], [`TakeOnce`], ...), each with its own `Response`:
//! the type system matches requests to answers, so there is no runtime
//! mismatch. Add layers (timeouts, concurrency limits, metrics) and hand
//! the stack to anything that wants a store through [`ServiceStore`],
//! which implements each trait whose operations the stack serves:
//!
//! ```
//! # use std::time::Duration;
//! use alvryn_core::store::{MemoryStore, ServiceStore, StoreService, TokenStore};
//! let svc = tower::ServiceBuilder::new()
//!     .concurrency_limit(64)
//!     .timeout(Duration::from_secs(2))
//!     .service(StoreService::new(MemoryStore::new()));
//! let store = ServiceStore::new(svc);
//! # fn takes(_: impl TokenStore) {}
//! # takes(store);
//! ```
//!
//! Errors raised by layers (a timeout, an overloaded limit) reach the
//! caller as [`StoreError::Unavailable`]; the store's own errors pass
//! through unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;

use super::{
    Advance, AuditEvent, AuditLog, CasOutcome, Lease, LeaseStore, NewLease, OneTimeItem,
    OneTimeStore, Purge, Purged, Record, RecordFilter, RecordStore, RefreshFamily, Revocation,
    Rotation, SessionStore, StoreError, User, UserStore, Versioned, VersionedStore, WindowCount,
    WindowCounters,
};
use crate::crypto::{KeyFingerprint, LedgerError, Reservation, UsageLedger};
use crate::secret::SecretBytes;
use crate::service::BoxError;

/// A store operation: a request type with its answer and its error.
pub trait Operation: Send + 'static {
    /// What the operation returns.
    type Response: Send + 'static;
    /// How it fails: [`StoreError`], or the ledger's [`LedgerError`].
    type Error: std::error::Error + Send + Sync + 'static;
    /// The error a layer raised (a timeout, an overloaded limit), in this
    /// operation's error type: the store counts as unavailable.
    fn layer_error(e: BoxError) -> Self::Error;
}

/// A (layered) service that answers the operation `R`; what
/// [`ServiceStore`] needs of its stack for each operation.
pub trait Handles<R: Operation>:
    tower::Service<R, Response = R::Response, Error: Into<BoxError>, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T, R> Handles<R> for T
where
    R: Operation,
    T: tower::Service<R, Response = R::Response> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
{
}

/// The store traits as `tower::Service<Op>` for each operation.
pub struct StoreService<S: ?Sized> {
    store: Arc<S>,
}

impl<S> StoreService<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

impl<S: ?Sized> StoreService<S> {
    /// Wraps a shared store (e.g. an `Arc<dyn StoreBackend>`).
    pub fn from_arc(store: Arc<S>) -> Self {
        Self { store }
    }
}

impl<S: ?Sized> Clone for StoreService<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
        }
    }
}

impl<S: ?Sized> std::fmt::Debug for StoreService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreService").finish_non_exhaustive()
    }
}

macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $trait:ident => $Op:ident { $( $(#[$fdoc:meta])* $field:ident : $fty:ty ),* $(,)? } -> $Resp:ty
            $(, or $Err:ident :: $wrap:ident)?
            = |$s:ident, $r:ident| $call:expr;
    )*) => {$(
        // Without `or Error::Variant`, an operation fails with
        // `StoreError` and a layer's error is `StoreError::Unavailable`:
        // the given names come first, the defaults fill in.
        operations!(@one
            $(#[$doc])*
            $trait => $Op { $( $(#[$fdoc])* $field : $fty ),* } -> $Resp,
            or ($($Err)? StoreError) ($($wrap)? Unavailable)
            = |$s, $r| $call
        );
    )*};
    (@one
        $(#[$doc:meta])*
        $trait:ident => $Op:ident { $( $(#[$fdoc:meta])* $field:ident : $fty:ty ),* } -> $Resp:ty,
        or ($Err:ident $($_default_err:ident)?) ($wrap:ident $($_default_wrap:ident)?)
        = |$s:ident, $r:ident| $call:expr
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        #[non_exhaustive]
        pub struct $Op { $( $(#[$fdoc])* pub $field: $fty ),* }

        // Only the operation's name: a request may carry a secret key (a
        // one-time code) or a password hash.
        impl std::fmt::Debug for $Op {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($Op)).finish_non_exhaustive()
            }
        }

        impl $Op {
            /// The request.
            #[must_use]
            #[allow(clippy::too_many_arguments)]
            pub fn new($($field: $fty),*) -> Self {
                Self { $($field),* }
            }
        }

        impl Operation for $Op {
            type Response = $Resp;
            type Error = $Err;
            fn layer_error(e: BoxError) -> $Err {
                $Err::$wrap(e)
            }
        }

        impl<S: $trait + ?Sized> tower::Service<$Op> for StoreService<S> {
            type Response = $Resp;
            type Error = $Err;
            type Future = Pin<Box<dyn Future<Output = Result<$Resp, $Err>> + Send>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), $Err>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, $r: $Op) -> Self::Future {
                let $s = Arc::clone(&self.store);
                Box::pin(async move { $call.await })
            }
        }
    };
}

operations! {
    /// [`UserStore::create_user`].
    UserStore => CreateUser { /** The user. */ user: User } -> ()
        = |s, r| s.create_user(&r.user);
    /// [`UserStore::user_by_id`].
    UserStore => UserById { /** The id. */ id: String } -> Option<User>
        = |s, r| s.user_by_id(&r.id);
    /// [`UserStore::user_by_email`].
    UserStore => UserByEmail { /** The normalized email. */ email: String } -> Option<User>
        = |s, r| s.user_by_email(&r.email);
    /// [`UserStore::set_password_hash`].
    UserStore => SetPasswordHash {
        /** The user. */ user_id: String,
        /** The PHC string. */ phc: String,
    } -> () = |s, r| s.set_password_hash(&r.user_id, &r.phc);
    /// [`UserStore::active_session_user`].
    UserStore => ActiveSessionUser {
        /** The session. */ family_id: String,
        /** Its user. */ user_id: String,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Option<User> = |s, r| s.active_session_user(&r.family_id, &r.user_id, r.now_ms);

    /// [`SessionStore::create_family`].
    SessionStore => CreateFamily { /** The family. */ family: RefreshFamily } -> ()
        = |s, r| s.create_family(&r.family);
    /// [`SessionStore::family`].
    SessionStore => GetFamily { /** The family id. */ id: String } -> Option<RefreshFamily>
        = |s, r| s.family(&r.id);
    /// [`SessionStore::rotate_family`].
    SessionStore => RotateFamily { /** The rotation. */ rotation: Rotation } -> Option<RefreshFamily>
        = |s, r| s.rotate_family(&r.rotation);
    /// [`SessionStore::revoke`].
    SessionStore => Revoke { /** What to revoke. */ revocation: Revocation } -> u64
        = |s, r| s.revoke(&r.revocation);
    /// [`SessionStore::active_families`].
    SessionStore => ActiveFamilies {
        /** The user. */ user_id: String,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Vec<RefreshFamily> = |s, r| s.active_families(&r.user_id, r.now_ms);

    /// [`AuditLog::record_audit`].
    AuditLog => RecordAudit { /** The event. */ event: AuditEvent } -> ()
        = |s, r| s.record_audit(&r.event);
    /// [`AuditLog::audit_events`].
    AuditLog => AuditEvents { /** The user. */ user_id: String } -> Vec<AuditEvent>
        = |s, r| s.audit_events(&r.user_id);

    /// [`OneTimeStore::put_once`].
    OneTimeStore => PutOnce {
        /** The item. */ item: OneTimeItem,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> () = |s, r| s.put_once(&r.item, r.now_ms);
    /// [`OneTimeStore::take_once`].
    OneTimeStore => TakeOnce {
        /** Namespace. */ ns: String,
        /** Key. */ key: String,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Option<SecretBytes> = |s, r| s.take_once(&r.ns, &r.key, r.now_ms);

    /// [`RecordStore::insert_if_absent`].
    RecordStore => InsertIfAbsent { /** The record. */ record: Record } -> ()
        = |s, r| s.insert_if_absent(&r.record);
    /// [`RecordStore::record`].
    RecordStore => GetRecord {
        /** Namespace. */ ns: String,
        /** Key. */ key: String,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Option<Record> = |s, r| s.record(&r.ns, &r.key, r.now_ms);
    /// [`RecordStore::advance`].
    RecordStore => AdvanceRecord { /** The move. */ advance: Advance } -> bool
        = |s, r| s.advance(&r.advance);
    /// [`RecordStore::records`].
    RecordStore => ListRecords {
        /** Namespace. */ ns: String,
        /** Which. */ filter: RecordFilter,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Vec<Record> = |s, r| s.records(&r.ns, &r.filter, r.now_ms);
    /// [`RecordStore::remove_record`].
    RecordStore => RemoveRecord {
        /** Namespace. */ ns: String,
        /** Key. */ key: String,
    } -> bool = |s, r| s.remove_record(&r.ns, &r.key);

    /// [`VersionedStore::upsert_versioned`].
    VersionedStore => UpsertVersioned { /** The value. */ value: Versioned } -> CasOutcome
        = |s, r| s.upsert_versioned(&r.value);
    /// [`VersionedStore::versioned`].
    VersionedStore => GetVersioned {
        /** Namespace. */ ns: String,
        /** Key. */ key: String,
    } -> Option<Versioned> = |s, r| s.versioned(&r.ns, &r.key);

    /// [`LeaseStore::acquire`].
    LeaseStore => AcquireLease { /** The request. */ request: NewLease } -> Option<Lease>
        = |s, r| s.acquire(&r.request);
    /// [`LeaseStore::renew`].
    LeaseStore => RenewLease {
        /** The held lease. */ lease: Lease,
        /** New time to live, milliseconds. */ ttl_ms: i64,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> Lease = |s, r| s.renew(&r.lease, r.ttl_ms, r.now_ms);
    /// [`LeaseStore::release`].
    LeaseStore => ReleaseLease { /** The held lease. */ lease: Lease } -> bool
        = |s, r| s.release(&r.lease);
    /// [`LeaseStore::lease`].
    LeaseStore => GetLease { /** The job's name. */ name: String } -> Option<Lease>
        = |s, r| s.lease(&r.name);

    /// [`WindowCounters::hit`].
    WindowCounters => Hit {
        /** The counter. */ key: String,
        /** Window length, milliseconds. */ window_ms: i64,
        /** Now, Unix milliseconds. */ now_ms: i64,
    } -> WindowCount = |s, r| s.hit(&r.key, r.window_ms, r.now_ms);

    /// [`Purge::purge_expired`].
    Purge => PurgeExpired { /** Now, Unix milliseconds. */ now_ms: i64 } -> Purged
        = |s, r| s.purge_expired(r.now_ms);

    /// [`UsageLedger::reserve`].
    UsageLedger => Reserve {
        /** The key's fingerprint. */ key: KeyFingerprint,
        /** Encryptions asked for. */ count: u64,
        /** The key's limit. */ limit: u64,
    } -> Reservation, or LedgerError::Storage = |s, r| s.reserve(&r.key, r.count, r.limit);
    /// [`UsageLedger::reserved`].
    UsageLedger => Reserved { /** The key's fingerprint. */ key: KeyFingerprint } -> u64, or LedgerError::Storage
        = |s, r| s.reserved(&r.key);
}

/// A (layered) [`StoreService`] used as the store traits: it implements
/// each trait whose operations the stack answers.
#[derive(Clone)]
pub struct ServiceStore<T> {
    service: T,
}

impl<T> std::fmt::Debug for ServiceStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceStore").finish_non_exhaustive()
    }
}

impl<T> ServiceStore<T> {
    /// Wraps `service`.
    pub fn new(service: T) -> Self {
        Self { service }
    }

    async fn op<R: Operation>(&self, req: R) -> Result<R::Response, R::Error>
    where
        T: Handles<R>,
    {
        use tower::ServiceExt as _;
        self.service
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| crate::service::from_layer(e, R::layer_error))
    }
}

#[async_trait]
impl<T> UserStore for ServiceStore<T>
where
    T: Handles<CreateUser>
        + Handles<UserById>
        + Handles<UserByEmail>
        + Handles<SetPasswordHash>
        + Handles<ActiveSessionUser>,
{
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.op(CreateUser::new(user.clone())).await
    }
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.op(UserById::new(id.to_owned())).await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.op(UserByEmail::new(email.to_owned())).await
    }
    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        self.op(SetPasswordHash::new(user_id.to_owned(), phc.to_owned()))
            .await
    }
    async fn active_session_user(
        &self,
        family_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<User>, StoreError> {
        self.op(ActiveSessionUser::new(
            family_id.to_owned(),
            user_id.to_owned(),
            now_ms,
        ))
        .await
    }
}

#[async_trait]
impl<T> SessionStore for ServiceStore<T>
where
    T: Handles<CreateFamily>
        + Handles<GetFamily>
        + Handles<RotateFamily>
        + Handles<Revoke>
        + Handles<ActiveFamilies>,
{
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        self.op(CreateFamily::new(family.clone())).await
    }
    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        self.op(GetFamily::new(id.to_owned())).await
    }
    async fn rotate_family(
        &self,
        rotation: &Rotation,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        self.op(RotateFamily::new(rotation.clone())).await
    }
    async fn revoke(&self, revocation: &Revocation) -> Result<u64, StoreError> {
        self.op(Revoke::new(revocation.clone())).await
    }
    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        self.op(ActiveFamilies::new(user_id.to_owned(), now_ms))
            .await
    }
}

#[async_trait]
impl<T> AuditLog for ServiceStore<T>
where
    T: Handles<RecordAudit> + Handles<AuditEvents>,
{
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.op(RecordAudit::new(event.clone())).await
    }
    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        self.op(AuditEvents::new(user_id.to_owned())).await
    }
}

#[async_trait]
impl<T> OneTimeStore for ServiceStore<T>
where
    T: Handles<PutOnce> + Handles<TakeOnce>,
{
    async fn put_once(&self, item: &OneTimeItem, now_ms: i64) -> Result<(), StoreError> {
        self.op(PutOnce::new(item.clone(), now_ms)).await
    }
    async fn take_once(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SecretBytes>, StoreError> {
        self.op(TakeOnce::new(ns.to_owned(), key.to_owned(), now_ms))
            .await
    }
}

#[async_trait]
impl<T> RecordStore for ServiceStore<T>
where
    T: Handles<InsertIfAbsent>
        + Handles<GetRecord>
        + Handles<AdvanceRecord>
        + Handles<ListRecords>
        + Handles<RemoveRecord>,
{
    async fn insert_if_absent(&self, record: &Record) -> Result<(), StoreError> {
        self.op(InsertIfAbsent::new(record.clone())).await
    }
    async fn record(&self, ns: &str, key: &str, now_ms: i64) -> Result<Option<Record>, StoreError> {
        self.op(GetRecord::new(ns.to_owned(), key.to_owned(), now_ms))
            .await
    }
    async fn advance(&self, advance: &Advance) -> Result<bool, StoreError> {
        self.op(AdvanceRecord::new(advance.clone())).await
    }
    async fn records(
        &self,
        ns: &str,
        filter: &RecordFilter,
        now_ms: i64,
    ) -> Result<Vec<Record>, StoreError> {
        self.op(ListRecords::new(ns.to_owned(), filter.clone(), now_ms))
            .await
    }
    async fn remove_record(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        self.op(RemoveRecord::new(ns.to_owned(), key.to_owned()))
            .await
    }
}

#[async_trait]
impl<T> VersionedStore for ServiceStore<T>
where
    T: Handles<UpsertVersioned> + Handles<GetVersioned>,
{
    async fn upsert_versioned(&self, value: &Versioned) -> Result<CasOutcome, StoreError> {
        self.op(UpsertVersioned::new(value.clone())).await
    }
    async fn versioned(&self, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.op(GetVersioned::new(ns.to_owned(), key.to_owned()))
            .await
    }
}

#[async_trait]
impl<T> LeaseStore for ServiceStore<T>
where
    T: Handles<AcquireLease> + Handles<RenewLease> + Handles<ReleaseLease> + Handles<GetLease>,
{
    async fn acquire(&self, request: &NewLease) -> Result<Option<Lease>, StoreError> {
        self.op(AcquireLease::new(request.clone())).await
    }
    async fn renew(&self, lease: &Lease, ttl_ms: i64, now_ms: i64) -> Result<Lease, StoreError> {
        self.op(RenewLease::new(lease.clone(), ttl_ms, now_ms))
            .await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.op(ReleaseLease::new(lease.clone())).await
    }
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.op(GetLease::new(name.to_owned())).await
    }
}

#[async_trait]
impl<T> WindowCounters for ServiceStore<T>
where
    T: Handles<Hit>,
{
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError> {
        self.op(Hit::new(key.to_owned(), window_ms, now_ms)).await
    }
}

#[async_trait]
impl<T> Purge for ServiceStore<T>
where
    T: Handles<PurgeExpired>,
{
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        self.op(PurgeExpired::new(now_ms)).await
    }
}

#[async_trait]
impl<T> UsageLedger for ServiceStore<T>
where
    T: Handles<Reserve> + Handles<Reserved>,
{
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        self.op(Reserve::new(key.clone(), count, limit)).await
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        self.op(Reserved::new(key.clone())).await
    }
}
