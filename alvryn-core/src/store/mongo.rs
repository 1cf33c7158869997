//! The MongoDB store (official `mongodb` driver), used when `MONGO_URI`
//! is set.
//!
//! * Indexes are created when the store opens: unique `email` on users,
//!   `(user_id, created_at)` and a TTL index on `expires_at` for
//!   sessions. The TTL monitor only tidies up (it runs once a minute on a
//!   real server, maybe never on a stand-in): every query checks expiry
//!   itself.
//! * Rotation is one `findOneAndUpdate` whose filter is the presented
//!   token's hash, so of concurrent rotations exactly one matches; no
//!   read-modify-write.
//! * The usage ledger is a compare-and-swap loop on `key_usage.reserved`.
//!
//! Times are stored as BSON dates (millisecond precision); token hashes
//! as BSON binary.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt as _;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    AuditEvent, PreviousSlot, RefreshFamily, RefreshSlot, RevokeReason, Rotation, StoreError,
    TokenHash, TokenStore, User,
};
use crate::billing::PlanName;
use crate::crypto::ledger::grant;
use crate::crypto::{KeyId, LedgerError, Reservation, UsageLedger};

/// The MongoDB store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::unavailable(e)
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::Command(ce) => ce.code == 11000,
        _ => false,
    }
}

fn bin(h: &TokenHash) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: h.0.to_vec(),
    })
}

fn date(ms: i64) -> DateTime {
    DateTime::from_millis(ms)
}

impl MongoStore {
    /// Connects with `uri` and uses its default database (or `alvryn`),
    /// then creates the indexes. Connection attempts are bounded by the
    /// driver's server-selection timeout (default 30 s; set
    /// `serverSelectionTimeoutMS` in the URI to change it).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached or
    /// an index cannot be created.
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(uri).await.map_err(unavailable)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("alvryn"));
        Self::open(db).await
    }

    /// Uses `db`, creating the indexes.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when an index cannot be created.
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        let store = Self { db };
        store
            .users()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "email": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .map_err(unavailable)?;
        store
            .families()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "user_id": 1, "created_at": -1 })
                    .build(),
            )
            .await
            .map_err(unavailable)?;
        store
            .families()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires_at": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(Duration::from_secs(0))
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(unavailable)?;
        store
            .audit()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "user_id": 1, "at": 1 })
                    .build(),
            )
            .await
            .map_err(unavailable)?;
        Ok(store)
    }

    fn users(&self) -> Collection<Document> {
        self.db.collection("users")
    }
    fn families(&self) -> Collection<Document> {
        self.db.collection("refresh_families")
    }
    fn audit(&self) -> Collection<Document> {
        self.db.collection("audit_events")
    }
    fn usage(&self) -> Collection<Document> {
        self.db.collection("key_usage")
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("a stored record has an invalid {what}"))
}

fn user_from(d: &Document) -> Result<User, StoreError> {
    Ok(User {
        id: d.get_str("_id").map_err(|_| corrupt("user id"))?.to_owned(),
        email: d.get_str("email").map_err(|_| corrupt("email"))?.to_owned(),
        password_hash: d.get_str("password_hash").ok().map(str::to_owned),
        plan: PlanName::new(d.get_str("plan").map_err(|_| corrupt("plan"))?)
            .map_err(|_| corrupt("plan"))?,
        created_at_ms: d
            .get_datetime("created_at")
            .map_err(|_| corrupt("date"))?
            .timestamp_millis(),
    })
}

fn user_doc(u: &User) -> Document {
    let mut d = doc! {
        "_id": &u.id,
        "email": &u.email,
        "plan": u.plan.as_str(),
        "created_at": date(u.created_at_ms),
    };
    if let Some(h) = &u.password_hash {
        d.insert("password_hash", h);
    }
    d
}

fn hash_from(d: &Document, key: &str) -> Result<TokenHash, StoreError> {
    d.get_binary_generic(key)
        .ok()
        .and_then(|b| TokenHash::from_slice(b))
        .ok_or_else(|| corrupt("token hash"))
}

fn family_from(d: &Document) -> Result<RefreshFamily, StoreError> {
    let dt = |k: &str| {
        d.get_datetime(k)
            .map(|t| t.timestamp_millis())
            .map_err(|_| corrupt("date"))
    };
    let cur = d.get_document("current").map_err(|_| corrupt("session"))?;
    let previous = match d.get_document("previous") {
        Ok(p) => Some(PreviousSlot {
            token_hash: hash_from(p, "hash")?,
            rotated_at_ms: p
                .get_datetime("rotated_at")
                .map_err(|_| corrupt("date"))?
                .timestamp_millis(),
        }),
        Err(_) => None,
    };
    let revoke_reason = match d.get_str("revoke_reason") {
        Ok(s) => Some(RevokeReason::parse(s).ok_or_else(|| corrupt("revoke reason"))?),
        Err(_) => None,
    };
    Ok(RefreshFamily {
        id: d
            .get_str("_id")
            .map_err(|_| corrupt("session id"))?
            .to_owned(),
        user_id: d
            .get_str("user_id")
            .map_err(|_| corrupt("user id"))?
            .to_owned(),
        created_at_ms: dt("created_at")?,
        last_used_at_ms: dt("last_used_at")?,
        expires_at_ms: dt("expires_at")?,
        user_agent: d.get_str("user_agent").ok().map(str::to_owned),
        current: RefreshSlot {
            token_hash: hash_from(cur, "hash")?,
            jti: cur.get_str("jti").map_err(|_| corrupt("jti"))?.to_owned(),
            issued_at: cur.get_i64("issued_at").map_err(|_| corrupt("issued_at"))?,
        },
        previous,
        revoked_at_ms: d
            .get_datetime("revoked_at")
            .ok()
            .map(|t| t.timestamp_millis()),
        revoke_reason,
        generation: d.get_i64("generation").map_err(|_| corrupt("generation"))?,
    })
}

fn slot_doc(s: &RefreshSlot) -> Document {
    doc! { "hash": bin(&s.token_hash), "jti": &s.jti, "issued_at": s.issued_at }
}

fn family_doc(f: &RefreshFamily) -> Document {
    let mut d = doc! {
        "_id": &f.id,
        "user_id": &f.user_id,
        "created_at": date(f.created_at_ms),
        "last_used_at": date(f.last_used_at_ms),
        "expires_at": date(f.expires_at_ms),
        "current": slot_doc(&f.current),
        "revoked_at": Bson::Null,
        "generation": f.generation,
    };
    if let Some(ua) = &f.user_agent {
        d.insert("user_agent", ua);
    }
    if let Some(p) = &f.previous {
        d.insert(
            "previous",
            doc! { "hash": bin(&p.token_hash), "rotated_at": date(p.rotated_at_ms) },
        );
    }
    if let (Some(at), Some(reason)) = (f.revoked_at_ms, f.revoke_reason) {
        d.insert("revoked_at", date(at));
        d.insert("revoke_reason", reason.as_str());
    }
    d
}

#[async_trait]
impl TokenStore for MongoStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.users()
            .insert_one(user_doc(user))
            .await
            .map(|_| ())
            .map_err(|e| {
                if is_duplicate_key(&e) {
                    StoreError::EmailTaken
                } else {
                    unavailable(e)
                }
            })
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.users()
            .find_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.users()
            .find_one(doc! { "email": email })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let r = self
            .users()
            .update_one(
                doc! { "_id": user_id },
                doc! { "$set": { "password_hash": phc } },
            )
            .await
            .map_err(unavailable)?;
        if r.matched_count == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        self.families()
            .insert_one(family_doc(family))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        self.families()
            .find_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(family_from)
            .transpose()
    }

    async fn rotate_family(&self, r: &Rotation) -> Result<Option<RefreshFamily>, StoreError> {
        let filter = doc! {
            "_id": &r.family_id,
            "current.hash": bin(&r.expected),
            "revoked_at": Bson::Null,
            "expires_at": { "$gt": date(r.now_ms) },
        };
        let update = doc! {
            "$set": {
                "previous": { "hash": bin(&r.expected), "rotated_at": date(r.now_ms) },
                "current": slot_doc(&r.next),
                "last_used_at": date(r.now_ms),
                "expires_at": date(r.expires_at_ms),
            },
            "$inc": { "generation": 1_i64 },
        };
        self.families()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(family_from)
            .transpose()
    }

    async fn revoke_family(
        &self,
        id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = self
            .families()
            .update_one(
                doc! { "_id": id, "revoked_at": Bson::Null },
                doc! { "$set": { "revoked_at": date(at_ms), "revoke_reason": reason.as_str() } },
            )
            .await
            .map_err(unavailable)?;
        Ok(r.modified_count == 1)
    }

    async fn revoke_user_families(
        &self,
        user_id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let r = self
            .families()
            .update_many(
                doc! { "user_id": user_id, "revoked_at": Bson::Null },
                doc! { "$set": { "revoked_at": date(at_ms), "revoke_reason": reason.as_str() } },
            )
            .await
            .map_err(unavailable)?;
        Ok(r.modified_count)
    }

    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let docs: Vec<Document> = self
            .families()
            .find(doc! { "user_id": user_id, "revoked_at": Bson::Null, "expires_at": { "$gt": date(now_ms) } })
            .sort(doc! { "created_at": -1, "_id": -1 })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        docs.iter().map(family_from).collect()
    }

    async fn record_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let mut d = doc! { "at": date(e.at_ms), "kind": &e.kind, "user_id": &e.user_id };
        if let Some(f) = &e.family_id {
            d.insert("family_id", f);
        }
        self.audit()
            .insert_one(d)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let docs: Vec<Document> = self
            .audit()
            .find(doc! { "user_id": user_id })
            .sort(doc! { "at": 1, "_id": 1 })
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        docs.iter()
            .map(|d| {
                Ok(AuditEvent {
                    at_ms: d
                        .get_datetime("at")
                        .map_err(|_| corrupt("date"))?
                        .timestamp_millis(),
                    kind: d.get_str("kind").map_err(|_| corrupt("kind"))?.to_owned(),
                    user_id: d
                        .get_str("user_id")
                        .map_err(|_| corrupt("user id"))?
                        .to_owned(),
                    family_id: d.get_str("family_id").ok().map(str::to_owned),
                })
            })
            .collect()
    }
}

fn ledger_err(e: mongodb::error::Error) -> LedgerError {
    LedgerError::Storage(Box::new(e))
}

#[async_trait]
impl UsageLedger for MongoStore {
    async fn reserve(
        &self,
        key: &KeyId,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        // Compare-and-swap on the stored total; a lost race retries with
        // the new total. Bounded so a pathological contention cannot spin.
        for _ in 0..64 {
            let current = self.reserved(key).await?;
            let r = grant(current, count, limit, key)?;
            let result = if current == 0 {
                self.usage()
                    .update_one(
                        doc! { "_id": key.as_str(), "reserved": { "$in": [0_i64, Bson::Null] } },
                        doc! { "$set": { "reserved": to_i64(r.total) } },
                    )
                    .upsert(true)
                    .await
            } else {
                self.usage()
                    .update_one(
                        doc! { "_id": key.as_str(), "reserved": to_i64(current) },
                        doc! { "$set": { "reserved": to_i64(r.total) } },
                    )
                    .await
            };
            match result {
                Ok(u) if u.modified_count == 1 || u.upserted_id.is_some() => return Ok(r),
                Ok(_) => continue,
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(ledger_err(e)),
            }
        }
        Err(LedgerError::Storage(
            "the usage ledger is under too much contention".into(),
        ))
    }

    async fn reserved(&self, key: &KeyId) -> Result<u64, LedgerError> {
        let d = self
            .usage()
            .find_one(doc! { "_id": key.as_str() })
            .await
            .map_err(ledger_err)?;
        Ok(d.and_then(|d| d.get_i64("reserved").ok())
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}
