//! An in-memory store for tests and examples. Forgets everything on drop;
//! passes the same contract suite as the real stores. One mutex guards
//! the whole state, so every method is trivially atomic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::primitives::{window_bounds, window_len};
use super::{
    Advance, AuditEvent, AuditLog, CasOutcome, Lease, LeaseStore, NewLease, OneTimeItem,
    OneTimeStore, PreviousSlot, Purge, Purged, Record, RecordFilter, RecordStore, RefreshFamily,
    Revocation, Rotation, SessionStore, StoreError, User, UserStore, Versioned, VersionedStore,
    WindowCount, WindowCounters,
};
use crate::crypto::{KeyFingerprint, LedgerError, MemoryLedger, Reservation, UsageLedger};
use crate::secret::SecretBytes;

type NsKey = (String, String);

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    families: HashMap<String, RefreshFamily>,
    audit: Vec<AuditEvent>,
    one_time: HashMap<NsKey, OneTimeItem>,
    records: BTreeMap<NsKey, Record>,
    versioned: HashMap<NsKey, Versioned>,
    leases: HashMap<String, Lease>,
    /// (key, window length, window start) -> (count, window end).
    counters: HashMap<(String, i64, i64), (u64, i64)>,
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

fn nk(ns: &str, key: &str) -> NsKey {
    (ns.to_owned(), key.to_owned())
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.users.contains_key(&user.id) || s.users.values().any(|u| u.email == user.email) {
            return Err(StoreError::Conflict);
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

    async fn active_session_user(
        &self,
        family_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<User>, StoreError> {
        let s = self.lock();
        Ok(s.families
            .get(family_id)
            .filter(|f| f.user_id == user_id && f.is_active(now_ms))
            .and_then(|_| s.users.get(user_id).cloned()))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        let mut s = self.lock();
        if !s.users.contains_key(&family.user_id) {
            return Err(StoreError::NotFound);
        }
        if s.families.contains_key(&family.id) {
            return Err(StoreError::Conflict);
        }
        s.families.insert(family.id.clone(), family.clone());
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
        f.older = f.previous.take();
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

    async fn revoke(&self, r: &Revocation) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let mut n = 0;
        for f in s.families.values_mut().filter(|f| {
            f.user_id == r.user_id
                && f.revoked_at_ms.is_none()
                && r.family_id.as_ref().is_none_or(|id| *id == f.id)
        }) {
            f.revoked_at_ms = Some(r.at_ms);
            f.revoke_reason = Some(r.reason);
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
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.lock().audit.push(event.clone());
        Ok(())
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let mut v: Vec<AuditEvent> = self
            .lock()
            .audit
            .iter()
            .filter(|e| e.user_id == user_id)
            .cloned()
            .collect();
        // Stable: events at one instant stay in the order recorded.
        v.sort_by_key(|e| e.at_ms);
        Ok(v)
    }
}

#[async_trait]
impl UsageLedger for MemoryStore {
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        self.ledger.reserve(key, count, limit).await
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        self.ledger.reserved(key).await
    }
}

#[async_trait]
impl OneTimeStore for MemoryStore {
    async fn put_once(&self, item: &OneTimeItem, now_ms: i64) -> Result<(), StoreError> {
        let mut s = self.lock();
        let k = nk(&item.ns, &item.key);
        if s.one_time.get(&k).is_some_and(|i| i.expires_at_ms > now_ms) {
            return Err(StoreError::Conflict);
        }
        s.one_time.insert(k, item.clone());
        Ok(())
    }

    async fn take_once(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SecretBytes>, StoreError> {
        Ok(self
            .lock()
            .one_time
            .remove(&nk(ns, key))
            .filter(|i| i.expires_at_ms > now_ms)
            .map(|i| i.value))
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn insert_if_absent(&self, record: &Record) -> Result<(), StoreError> {
        let mut s = self.lock();
        let k = nk(&record.ns, &record.key);
        if s.records
            .get(&k)
            .is_some_and(|r| r.is_live(record.created_at_ms))
        {
            return Err(StoreError::Conflict);
        }
        s.records.insert(k, record.clone());
        Ok(())
    }

    async fn record(&self, ns: &str, key: &str, now_ms: i64) -> Result<Option<Record>, StoreError> {
        Ok(self
            .lock()
            .records
            .get(&nk(ns, key))
            .filter(|r| r.is_live(now_ms))
            .cloned())
    }

    async fn advance(&self, a: &Advance) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let r = s
            .records
            .get_mut(&nk(&a.ns, &a.key))
            .filter(|r| r.is_live(a.now_ms))
            .ok_or(StoreError::NotFound)?;
        if r.status >= a.to {
            return Ok(false);
        }
        r.status = a.to;
        r.updated_at_ms = a.now_ms;
        if let Some(d) = &a.data {
            r.data.clone_from(d);
        }
        Ok(true)
    }

    async fn records(
        &self,
        ns: &str,
        filter: &RecordFilter,
        now_ms: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let s = self.lock();
        let mut v: Vec<Record> = s
            .records
            .values()
            .filter(|r| {
                r.ns == ns
                    && r.is_live(now_ms)
                    && filter
                        .owner
                        .as_ref()
                        .is_none_or(|o| r.owner.as_ref() == Some(o))
                    && filter.status.is_none_or(|st| st.contains(r.status))
                    && filter.after.as_ref().is_none_or(|c| c.precedes(r))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            a.created_at_ms
                .cmp(&b.created_at_ms)
                .then_with(|| a.key.cmp(&b.key))
        });
        if filter.limit > 0 {
            v.truncate(filter.limit);
        }
        Ok(v)
    }

    async fn remove_record(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self.lock().records.remove(&nk(ns, key)).is_some())
    }
}

#[async_trait]
impl VersionedStore for MemoryStore {
    async fn upsert_versioned(&self, value: &Versioned) -> Result<CasOutcome, StoreError> {
        let mut s = self.lock();
        let k = nk(&value.ns, &value.key);
        if let Some(cur) = s.versioned.get(&k)
            && cur.version >= value.version
        {
            return Ok(CasOutcome::Stale {
                current: cur.version,
            });
        }
        s.versioned.insert(k, value.clone());
        Ok(CasOutcome::Applied)
    }

    async fn versioned(&self, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().versioned.get(&nk(ns, key)).cloned())
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire(&self, req: &NewLease) -> Result<Option<Lease>, StoreError> {
        let mut s = self.lock();
        let fence = match s.leases.get(&req.name) {
            Some(l) if l.expires_at_ms > req.now_ms => return Ok(None),
            Some(l) => l.fence + 1,
            None => 1,
        };
        let lease = Lease {
            name: req.name.clone(),
            holder: req.holder.clone(),
            fence,
            expires_at_ms: req.now_ms.saturating_add(req.ttl_ms),
        };
        s.leases.insert(req.name.clone(), lease.clone());
        Ok(Some(lease))
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64, now_ms: i64) -> Result<Lease, StoreError> {
        let mut s = self.lock();
        match s.leases.get_mut(&lease.name) {
            Some(l)
                if l.fence == lease.fence
                    && l.holder == lease.holder
                    && l.expires_at_ms > now_ms =>
            {
                l.expires_at_ms = now_ms.saturating_add(ttl_ms);
                Ok(l.clone())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.leases.get_mut(&lease.name) {
            Some(l)
                if l.fence == lease.fence && l.holder == lease.holder && l.expires_at_ms > 0 =>
            {
                l.expires_at_ms = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        Ok(self.lock().leases.get(name).cloned())
    }
}

#[async_trait]
impl WindowCounters for MemoryStore {
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError> {
        let (start, end) = window_bounds(window_ms, now_ms);
        let mut s = self.lock();
        let c = s
            .counters
            .entry((key.to_owned(), window_len(window_ms), start))
            .or_insert((0, end));
        c.0 += 1;
        Ok(WindowCount {
            count: c.0,
            resets_at_ms: end,
        })
    }
}

#[async_trait]
impl Purge for MemoryStore {
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        let mut s = self.lock();
        let mut p = Purged::default();
        let before = s.one_time.len();
        s.one_time.retain(|_, i| i.expires_at_ms > now_ms);
        p.one_time = (before - s.one_time.len()) as u64;
        let before = s.records.len();
        s.records.retain(|_, r| r.is_live(now_ms));
        p.records = (before - s.records.len()) as u64;
        let before = s.counters.len();
        s.counters.retain(|_, c| c.1 > now_ms);
        p.counters = (before - s.counters.len()) as u64;
        let before = s.families.len();
        s.families.retain(|_, f| f.expires_at_ms > now_ms);
        p.sessions = (before - s.families.len()) as u64;
        Ok(p)
    }
}
