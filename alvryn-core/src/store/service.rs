//! The [`tower::Service`] view of a [`TokenStore`], and the adapter back.
//!
//! Wrap a store in [`TokenStoreService`], add layers (timeouts,
//! concurrency limits, metrics), and hand the stack to anything that
//! wants a store through [`ServiceTokenStore`]:
//!
//! ```
//! # use std::time::Duration;
//! use alvryn_core::store::{MemoryStore, ServiceTokenStore, TokenStore, TokenStoreService};
//! let svc = tower::ServiceBuilder::new()
//!     .concurrency_limit(64)
//!     .timeout(Duration::from_secs(2))
//!     .service(TokenStoreService::new(MemoryStore::new()));
//! let store: ServiceTokenStore<_> = ServiceTokenStore::new(svc);
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

use super::{AuditEvent, RefreshFamily, RevokeReason, Rotation, StoreError, TokenStore, User};

/// One [`TokenStore`] call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreRequest {
    /// [`TokenStore::create_user`].
    CreateUser(User),
    /// [`TokenStore::user_by_id`].
    UserById(String),
    /// [`TokenStore::user_by_email`].
    UserByEmail(String),
    /// [`TokenStore::set_password_hash`] (user id, PHC string).
    SetPasswordHash(String, String),
    /// [`TokenStore::create_family`].
    CreateFamily(RefreshFamily),
    /// [`TokenStore::family`].
    Family(String),
    /// [`TokenStore::rotate_family`].
    RotateFamily(Rotation),
    /// [`TokenStore::revoke_family`].
    RevokeFamily(String, RevokeReason, i64),
    /// [`TokenStore::revoke_user_families`].
    RevokeUserFamilies(String, RevokeReason, i64),
    /// [`TokenStore::active_families`].
    ActiveFamilies(String, i64),
    /// [`TokenStore::record_audit`].
    RecordAudit(AuditEvent),
    /// [`TokenStore::audit_events`].
    AuditEvents(String),
}

/// The answer to a [`StoreRequest`], variant for variant.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StoreResponse {
    /// Done, nothing to return.
    Done,
    /// A user or none.
    User(Option<User>),
    /// A family or none.
    Family(Option<RefreshFamily>),
    /// Whether something changed.
    Changed(bool),
    /// How many records changed.
    Count(u64),
    /// Families.
    Families(Vec<RefreshFamily>),
    /// Audit events.
    AuditEvents(Vec<AuditEvent>),
}

/// A [`TokenStore`] as a `tower::Service<StoreRequest>`.
pub struct TokenStoreService<S> {
    store: Arc<S>,
}

impl<S> TokenStoreService<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> Self {
        Self {
            store: Arc::new(store),
        }
    }
}

impl<S> Clone for TokenStoreService<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
        }
    }
}

impl<S> std::fmt::Debug for TokenStoreService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStoreService").finish_non_exhaustive()
    }
}

impl<S: TokenStore> tower::Service<StoreRequest> for TokenStoreService<S> {
    type Response = StoreResponse;
    type Error = StoreError;
    type Future = Pin<Box<dyn Future<Output = Result<StoreResponse, StoreError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: StoreRequest) -> Self::Future {
        let s = Arc::clone(&self.store);
        Box::pin(async move {
            use StoreRequest as Q;
            use StoreResponse as A;
            Ok(match req {
                Q::CreateUser(u) => s.create_user(&u).await.map(|()| A::Done)?,
                Q::UserById(id) => A::User(s.user_by_id(&id).await?),
                Q::UserByEmail(e) => A::User(s.user_by_email(&e).await?),
                Q::SetPasswordHash(id, phc) => {
                    s.set_password_hash(&id, &phc).await.map(|()| A::Done)?
                }
                Q::CreateFamily(f) => s.create_family(&f).await.map(|()| A::Done)?,
                Q::Family(id) => A::Family(s.family(&id).await?),
                Q::RotateFamily(r) => A::Family(s.rotate_family(&r).await?),
                Q::RevokeFamily(id, why, at) => A::Changed(s.revoke_family(&id, why, at).await?),
                Q::RevokeUserFamilies(id, why, at) => {
                    A::Count(s.revoke_user_families(&id, why, at).await?)
                }
                Q::ActiveFamilies(id, now) => A::Families(s.active_families(&id, now).await?),
                Q::RecordAudit(e) => s.record_audit(&e).await.map(|()| A::Done)?,
                Q::AuditEvents(id) => A::AuditEvents(s.audit_events(&id).await?),
            })
        })
    }
}

/// A `tower::Service<StoreRequest>` used as a [`TokenStore`].
#[derive(Clone)]
pub struct ServiceTokenStore<T> {
    service: T,
}

impl<T> std::fmt::Debug for ServiceTokenStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenStore").finish_non_exhaustive()
    }
}

impl<T> ServiceTokenStore<T> {
    /// Wraps `service`.
    pub fn new(service: T) -> Self {
        Self { service }
    }
}

fn mismatch() -> StoreError {
    StoreError::Corrupt("the store service answered a different request".into())
}

impl<T> ServiceTokenStore<T>
where
    T: tower::Service<StoreRequest, Response = StoreResponse> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Future: Send,
{
    async fn call(&self, req: StoreRequest) -> Result<StoreResponse, StoreError> {
        use tower::ServiceExt as _;
        self.service
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| crate::service::from_layer(e, StoreError::Unavailable))
    }
}

#[async_trait]
impl<T> TokenStore for ServiceTokenStore<T>
where
    T: tower::Service<StoreRequest, Response = StoreResponse> + Clone + Send + Sync + 'static,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Future: Send,
{
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        match self.call(StoreRequest::CreateUser(user.clone())).await? {
            StoreResponse::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        match self.call(StoreRequest::UserById(id.to_owned())).await? {
            StoreResponse::User(u) => Ok(u),
            _ => Err(mismatch()),
        }
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self
            .call(StoreRequest::UserByEmail(email.to_owned()))
            .await?
        {
            StoreResponse::User(u) => Ok(u),
            _ => Err(mismatch()),
        }
    }
    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        match self
            .call(StoreRequest::SetPasswordHash(
                user_id.to_owned(),
                phc.to_owned(),
            ))
            .await?
        {
            StoreResponse::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        match self
            .call(StoreRequest::CreateFamily(family.clone()))
            .await?
        {
            StoreResponse::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }
    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        match self.call(StoreRequest::Family(id.to_owned())).await? {
            StoreResponse::Family(f) => Ok(f),
            _ => Err(mismatch()),
        }
    }
    async fn rotate_family(
        &self,
        rotation: &Rotation,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        match self
            .call(StoreRequest::RotateFamily(rotation.clone()))
            .await?
        {
            StoreResponse::Family(f) => Ok(f),
            _ => Err(mismatch()),
        }
    }
    async fn revoke_family(
        &self,
        id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        match self
            .call(StoreRequest::RevokeFamily(id.to_owned(), reason, at_ms))
            .await?
        {
            StoreResponse::Changed(b) => Ok(b),
            _ => Err(mismatch()),
        }
    }
    async fn revoke_user_families(
        &self,
        user_id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        match self
            .call(StoreRequest::RevokeUserFamilies(
                user_id.to_owned(),
                reason,
                at_ms,
            ))
            .await?
        {
            StoreResponse::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }
    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        match self
            .call(StoreRequest::ActiveFamilies(user_id.to_owned(), now_ms))
            .await?
        {
            StoreResponse::Families(v) => Ok(v),
            _ => Err(mismatch()),
        }
    }
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        match self.call(StoreRequest::RecordAudit(event.clone())).await? {
            StoreResponse::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }
    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        match self
            .call(StoreRequest::AuditEvents(user_id.to_owned()))
            .await?
        {
            StoreResponse::AuditEvents(v) => Ok(v),
            _ => Err(mismatch()),
        }
    }
}
