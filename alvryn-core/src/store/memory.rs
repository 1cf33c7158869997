//! An in-memory [`TokenStore`] for tests and examples. Forgets
//! everything on drop; passes the same contract suite as the real stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{
    AuditEvent, PreviousSlot, RefreshFamily, RevokeReason, Rotation, StoreError, TokenStore, User,
};
use crate::crypto::{KeyId, LedgerError, MemoryLedger, Reservation, UsageLedger};

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    families: HashMap<String, RefreshFamily>,
    audit: Vec<AuditEvent>,
}

/// In-memory store. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    ledger: MemoryLedger,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.users.values().any(|u| u.email == user.email) {
            return Err(StoreError::EmailTaken);
        }
        s.users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.get(id).cloned())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .lock()
            .users
            .values()
            .find(|u| u.email == email)
            .cloned())
    }

    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let mut s = self.lock();
        let u = s.users.get_mut(user_id).ok_or(StoreError::NotFound)?;
        u.password_hash = Some(phc.to_owned());
        Ok(())
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        self.lock()
            .families
            .insert(family.id.clone(), family.clone());
        Ok(())
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        Ok(self.lock().families.get(id).cloned())
    }

    async fn rotate_family(&self, r: &Rotation) -> Result<Option<RefreshFamily>, StoreError> {
        let mut s = self.lock();
        let Some(f) = s.families.get_mut(&r.family_id) else {
            return Ok(None);
        };
        if !f.is_active(r.now_ms) || f.current.token_hash != r.expected {
            return Ok(None);
        }
        f.previous = Some(PreviousSlot {
            token_hash: r.expected,
            rotated_at_ms: r.now_ms,
        });
        f.current = r.next.clone();
        f.last_used_at_ms = r.now_ms;
        f.expires_at_ms = r.expires_at_ms;
        f.generation += 1;
        Ok(Some(f.clone()))
    }

    async fn revoke_family(
        &self,
        id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.families.get_mut(id) {
            Some(f) if f.revoked_at_ms.is_none() => {
                f.revoked_at_ms = Some(at_ms);
                f.revoke_reason = Some(reason);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_families(
        &self,
        user_id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let mut n = 0;
        for f in s
            .families
            .values_mut()
            .filter(|f| f.user_id == user_id && f.revoked_at_ms.is_none())
        {
            f.revoked_at_ms = Some(at_ms);
            f.revoke_reason = Some(reason);
            n += 1;
        }
        Ok(n)
    }

    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let s = self.lock();
        let mut v: Vec<_> = s
            .families
            .values()
            .filter(|f| f.user_id == user_id && f.is_active(now_ms))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(v)
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.lock().audit.push(event.clone());
        Ok(())
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(self
            .lock()
            .audit
            .iter()
            .filter(|e| e.user_id == user_id)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl UsageLedger for MemoryStore {
    async fn reserve(
        &self,
        key: &KeyId,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        self.ledger.reserve(key, count, limit).await
    }

    async fn reserved(&self, key: &KeyId) -> Result<u64, LedgerError> {
        self.ledger.reserved(key).await
    }
}
