//! The MongoDB store (official `mongodb` driver), used when `MONGO_URI`
//! is set. One [`MongoStore`] implements every store trait and the field
//! cipher's usage ledger.
//!
//! # Durability
//!
//! Every collection is opened with [`MongoOptions`], by default majority
//! writes with journal (`w: "majority", j: true`), primary reads and
//! majority read concern: a write that returned `Ok` survives a failover
//! and a crash, and a read on the primary sees every write acknowledged
//! before it. An embedder may relax them with
//! [`MongoStore::open_with`]; the store's promises then hold only as far
//! as the chosen concerns do. A write whose write concern fails (a
//! `wtimeout`, say) is reported as [`StoreError::Unavailable`] although
//! the server may have applied it: MongoDB does not roll such writes back.
//!
//! # Decoding fails closed
//!
//! A field that is absent or `null` reads as "not set"; a field present
//! with the wrong type is [`StoreError::Corrupt`], never a default. A
//! `revoked_at` that is a string is not "not revoked": the session
//! cannot be read, rotated or listed as active. Filters follow the same
//! rule: rotation only matches a `null` `revoked_at`, and the listings
//! (`active_families`, `records`) also fetch documents whose expiry is
//! not a date, so that a damaged one is reported instead of silently
//! skipped.
//!
//! # Expiry
//!
//! No TTL index is created, and one left by an older version on
//! `refresh_families` (`expires_at_1`) is dropped when the store opens:
//! an expired session must stay readable by [`SessionStore::family`]
//! until [`Purge::purge_expired`] removes it, as on every backend. Every
//! query checks expiry against the caller's `now_ms`.
//!
//! # Atomicity
//!
//! Every decision (who wins a key, a rotation, a lease, a grant) is made
//! by one atomic single-document command on the server; where an
//! operation takes more than one round trip, the others only read what
//! the decision left, or retry after losing a race:
//!
//! * Rotation is one `findOneAndUpdate` whose filter is the presented
//!   token's hash, so of concurrent rotations exactly one matches.
//! * Unique keys (user id and email, family id, one-time item, record)
//!   are inserts; a duplicate key (code 11000) is
//!   [`StoreError::Conflict`], except that an expired one-time item or
//!   record is replaced by a `replaceOne` whose filter re-checks the
//!   expiry, so of concurrent inserters exactly one wins.
//! * Versioned values are one `updateOne` filtered on an older version,
//!   with upsert; the duplicate key of a refused upsert means "stale"
//!   unless the stored version is older after all (a concurrent first
//!   insert), in which case the update is retried.
//! * `create_family` reads the user, then inserts: correct while users
//!   are never deleted (no API deletes one yet).
//! * A rotation or lease whose returned document cannot be decoded has
//!   been applied on the server and is reported as
//!   [`StoreError::Corrupt`].
//! * The usage ledger grants with one aggregation-pipeline update that
//!   computes `min(limit, reserved + count)` on the server.
//! * The ledger, window counters and leases first update the existing
//!   document (`findOneAndUpdate` without upsert) and insert it only when
//!   it is missing, then retry the update if a concurrent insert won.
//!   A `findOneAndUpdate` with upsert would do in one round trip on
//!   MongoDB, but the protocol stand-in the tests use (secantusdb) answers
//!   the loser of a concurrent first upsert with no document although it
//!   applied the update, which would lose a grant or a count. Both
//!   orders are equally atomic on MongoDB; this one costs a second round
//!   trip only for the first use of a key.
//!
//! Times are BSON dates (millisecond precision); token hashes and
//! payloads are BSON binary (generic subtype).

use async_trait::async_trait;
use futures_util::TryStreamExt as _;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    CollectionOptions, IndexOptions, ReadConcern, ReadPreference, ReturnDocument,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};

use super::primitives::{window_bounds, window_len};
use super::{
    Advance, AuditEvent, AuditLog, CasOutcome, Lease, LeaseStore, NewLease, OneTimeItem,
    OneTimeStore, PreviousSlot, Purge, Purged, Record, RecordFilter, RecordStore, RefreshFamily,
    RefreshSlot, Revocation, RevokeReason, Rotation, SessionStore, StoreError, TokenHash, User,
    UserStore, Versioned, VersionedStore, WindowCount, WindowCounters,
};
use crate::billing::PlanName;
use crate::crypto::{KeyFingerprint, LedgerError, Reservation, UsageLedger};
use crate::secret::SecretBytes;

const USERS: &str = "users";
const FAMILIES: &str = "refresh_families";
const AUDIT: &str = "audit_events";
const USAGE: &str = "key_usage";
const ONE_TIME: &str = "one_time";
const RECORDS: &str = "records";
const VERSIONED: &str = "versioned";
const LEASES: &str = "leases";
const COUNTERS: &str = "window_counters";

/// The TTL index older versions created on `refresh_families`.
const OLD_TTL_INDEX: &str = "expires_at_1";

/// Read and write concerns every collection of a [`MongoStore`] uses.
///
/// [`Default`] is the durable setting the store's contract assumes:
/// majority writes with journal, primary reads, majority read concern.
/// `None` leaves the setting to the database handle (and so to the
/// client and the connection string).
///
/// ```
/// # use alvryn_core::store::mongo::MongoOptions;
/// let mut options = MongoOptions::default();
/// options.read_concern = None; // use the server's default read concern
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MongoOptions {
    /// Write concern of every write.
    pub write_concern: Option<WriteConcern>,
    /// Which members reads go to.
    pub selection_criteria: Option<SelectionCriteria>,
    /// Read concern of every read.
    pub read_concern: Option<ReadConcern>,
}

impl Default for MongoOptions {
    fn default() -> Self {
        let mut write_concern = WriteConcern::majority();
        write_concern.journal = Some(true);
        Self {
            write_concern: Some(write_concern),
            selection_criteria: Some(SelectionCriteria::ReadPreference(ReadPreference::Primary)),
            read_concern: Some(ReadConcern::majority()),
        }
    }
}

impl MongoOptions {
    fn collection_options(&self) -> CollectionOptions {
        CollectionOptions::builder()
            .write_concern(self.write_concern.clone())
            .selection_criteria(self.selection_criteria.clone())
            .read_concern(self.read_concern.clone())
            .build()
    }
}

/// The MongoDB store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    collection_options: CollectionOptions,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::unavailable(e)
}

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(we)) => Some(we.code),
        ErrorKind::Command(ce) => Some(ce.code),
        _ => None,
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    error_code(e) == Some(11000)
}

/// `NamespaceNotFound` (26) or `IndexNotFound` (27).
fn is_not_found(e: &mongodb::error::Error) -> bool {
    matches!(error_code(e), Some(26 | 27))
}

fn binary(bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    })
}

fn hash_bin(h: &TokenHash) -> Bson {
    binary(&h.0)
}

fn date(ms: i64) -> DateTime {
    DateTime::from_millis(ms)
}

/// The `_id` of a namespaced item. Always built here, so the field order
/// (which sub-document equality depends on) never varies.
fn ns_key(ns: &str, key: &str) -> Document {
    doc! { "ns": ns, "key": key }
}

/// A filter for "live at `now_ms`" on an optional expiry, that also
/// matches an expiry of the wrong type so decoding reports it.
fn live_or_damaged(now_ms: i64) -> Document {
    doc! { "$or": [
        { "expires_at": { "$not": { "$type": "date" } } },
        { "expires_at": { "$gt": date(now_ms) } },
    ] }
}

fn no_document() -> StoreError {
    StoreError::Unavailable("the server returned no document for an upsert".into())
}

impl MongoStore {
    /// Connects with `uri` and uses its default database (or `alvryn`),
    /// with the durable [`MongoOptions::default`], then prepares the
    /// indexes. Connection attempts are bounded by the driver's
    /// server-selection timeout (default 30 s; set
    /// `serverSelectionTimeoutMS` in the URI to change it).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached or
    /// an index cannot be created.
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        Self::connect_with(uri, MongoOptions::default()).await
    }

    /// [`connect`](Self::connect) with the given concerns.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with(uri: &str, options: MongoOptions) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(uri).await.map_err(unavailable)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("alvryn"));
        Self::open_with(db, options).await
    }

    /// Uses `db` with the durable [`MongoOptions::default`], preparing the
    /// indexes.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when an index cannot be created.
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        Self::open_with(db, MongoOptions::default()).await
    }

    /// Uses `db` with the given concerns, preparing the indexes: unique
    /// `email` on users; `(user_id, created_at)` and `expires_at` on
    /// sessions (dropping the TTL index of older versions first);
    /// `(user_id, at)` on audit events; `(ns, created_at, key)`,
    /// `(ns, owner, created_at)` and `expires_at` on records;
    /// `expires_at` on one-time items and window counters.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when an index cannot be listed,
    /// dropped or created.
    pub async fn open_with(db: Database, options: MongoOptions) -> Result<Self, StoreError> {
        let store = Self {
            db,
            collection_options: options.collection_options(),
        };
        store.drop_old_ttl_index().await?;
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        let indexes = [
            (
                USERS,
                vec![
                    IndexModel::builder()
                        .keys(doc! { "email": 1 })
                        .options(IndexOptions::builder().unique(true).build())
                        .build(),
                ],
            ),
            (
                FAMILIES,
                vec![
                    plain(doc! { "user_id": 1, "created_at": -1 }),
                    plain(doc! { "expires_at": 1 }),
                ],
            ),
            (AUDIT, vec![plain(doc! { "user_id": 1, "at": 1 })]),
            (ONE_TIME, vec![plain(doc! { "expires_at": 1 })]),
            (
                RECORDS,
                vec![
                    plain(doc! { "_id.ns": 1, "created_at": 1, "_id.key": 1 }),
                    plain(doc! { "_id.ns": 1, "status": 1, "created_at": 1, "_id.key": 1 }),
                    plain(doc! { "_id.ns": 1, "owner": 1, "created_at": 1 }),
                    plain(doc! { "expires_at": 1 }),
                ],
            ),
            (COUNTERS, vec![plain(doc! { "expires_at": 1 })]),
        ];
        for (name, models) in indexes {
            store
                .coll(name)
                .create_indexes(models)
                .await
                .map_err(unavailable)?;
        }
        Ok(store)
    }

    /// Older versions kept a TTL index on `refresh_families.expires_at`,
    /// which deletes expired sessions behind the store's back. Drop it
    /// (a concurrent opener may have dropped it first: fine).
    async fn drop_old_ttl_index(&self) -> Result<(), StoreError> {
        let families = self.coll(FAMILIES);
        let models: Vec<IndexModel> = match families.list_indexes().await {
            Ok(cursor) => cursor.try_collect().await.map_err(unavailable)?,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(unavailable(e)),
        };
        let has_old_ttl = models.iter().any(|m| {
            m.options.as_ref().is_some_and(|o| {
                o.name.as_deref() == Some(OLD_TTL_INDEX) && o.expire_after.is_some()
            })
        });
        if has_old_ttl {
            match families.drop_index(OLD_TTL_INDEX).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db
            .collection_with_options(name, self.collection_options.clone())
    }
}

// ---------------------------------------------------------------------
// Decoding: absent or null is "not set"; the wrong type is Corrupt.
// ---------------------------------------------------------------------

/// The fields of one stored document, read with fail-closed typing.
struct Fields<'a> {
    doc: &'a Document,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(doc: &'a Document, what: &'static str) -> Self {
        Self { doc, what }
    }

    fn corrupt(&self, key: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "a stored {} has a missing or invalid `{key}`",
            self.what
        ))
    }

    /// `None` when `key` is absent or null; [`StoreError::Corrupt`] when it
    /// is present but `get` rejects it.
    fn optional<T>(
        &self,
        key: &str,
        get: impl FnOnce(&'a Bson) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        match self.doc.get(key) {
            None | Some(Bson::Null) => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| self.corrupt(key)),
        }
    }

    fn required<T>(
        &self,
        key: &str,
        get: impl FnOnce(&'a Bson) -> Option<T>,
    ) -> Result<T, StoreError> {
        self.optional(key, get)?.ok_or_else(|| self.corrupt(key))
    }

    fn string(&self, key: &str) -> Result<String, StoreError> {
        self.required(key, Bson::as_str).map(str::to_owned)
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.optional(key, Bson::as_str)?.map(str::to_owned))
    }

    fn millis(&self, key: &str) -> Result<i64, StoreError> {
        self.required(key, as_millis)
    }

    fn opt_millis(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.optional(key, as_millis)
    }

    fn int(&self, key: &str) -> Result<i64, StoreError> {
        self.required(key, as_int)
    }

    /// A non-negative integer.
    fn count(&self, key: &str) -> Result<u64, StoreError> {
        u64::try_from(self.int(key)?).map_err(|_| self.corrupt(key))
    }

    fn bytes(&self, key: &str) -> Result<&'a [u8], StoreError> {
        self.required(key, as_bytes)
    }

    fn hash(&self, key: &str) -> Result<TokenHash, StoreError> {
        TokenHash::from_slice(self.bytes(key)?).ok_or_else(|| self.corrupt(key))
    }

    fn sub(&self, key: &str, what: &'static str) -> Result<Fields<'a>, StoreError> {
        Ok(Fields::new(self.required(key, Bson::as_document)?, what))
    }

    fn opt_sub(&self, key: &str, what: &'static str) -> Result<Option<Fields<'a>>, StoreError> {
        Ok(self
            .optional(key, Bson::as_document)?
            .map(|d| Fields::new(d, what)))
    }
}

fn as_millis(b: &Bson) -> Option<i64> {
    b.as_datetime().map(|t| t.timestamp_millis())
}

fn as_int(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn as_bytes(b: &Bson) -> Option<&[u8]> {
    match b {
        Bson::Binary(bin) if bin.subtype == BinarySubtype::Generic => Some(&bin.bytes),
        _ => None,
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn collect(cursor: mongodb::Cursor<Document>) -> Result<Vec<Document>, StoreError> {
    cursor.try_collect().await.map_err(unavailable)
}

// ---------------------------------------------------------------------
// Users, sessions, audit events.
// ---------------------------------------------------------------------

fn user_from(d: &Document) -> Result<User, StoreError> {
    let f = Fields::new(d, "user");
    Ok(User {
        id: f.string("_id")?,
        email: f.string("email")?,
        password_hash: f.opt_string("password_hash")?,
        plan: PlanName::new(&f.string("plan")?).map_err(|_| f.corrupt("plan"))?,
        created_at_ms: f.millis("created_at")?,
    })
}

fn user_doc(u: &User) -> Document {
    doc! {
        "_id": &u.id,
        "email": &u.email,
        "password_hash": u.password_hash.as_deref(),
        "plan": u.plan.as_str(),
        "created_at": date(u.created_at_ms),
    }
}

fn family_from(d: &Document) -> Result<RefreshFamily, StoreError> {
    let f = Fields::new(d, "session");
    let cur = f.sub("current", "session token")?;
    let slot = |name: &str, what: &'static str| -> Result<Option<PreviousSlot>, StoreError> {
        Ok(match f.opt_sub(name, what)? {
            Some(p) => Some(PreviousSlot {
                token_hash: p.hash("hash")?,
                rotated_at_ms: p.millis("rotated_at")?,
            }),
            None => None,
        })
    };
    let previous = slot("previous", "previous session token")?;
    let older = slot("older", "older session token")?;
    let revoke_reason = match f.optional("revoke_reason", Bson::as_str)? {
        Some(s) => Some(RevokeReason::parse(s).ok_or_else(|| f.corrupt("revoke_reason"))?),
        None => None,
    };
    Ok(RefreshFamily {
        id: f.string("_id")?,
        user_id: f.string("user_id")?,
        created_at_ms: f.millis("created_at")?,
        last_used_at_ms: f.millis("last_used_at")?,
        expires_at_ms: f.millis("expires_at")?,
        user_agent: f.opt_string("user_agent")?,
        current: RefreshSlot {
            token_hash: cur.hash("hash")?,
            jti: cur.string("jti")?,
            issued_at: cur.int("issued_at")?,
        },
        previous,
        older,
        revoked_at_ms: f.opt_millis("revoked_at")?,
        revoke_reason,
        generation: f.int("generation")?,
    })
}

fn slot_at_doc(p: &PreviousSlot) -> Document {
    doc! { "hash": hash_bin(&p.token_hash), "rotated_at": date(p.rotated_at_ms) }
}

fn slot_doc(s: &RefreshSlot) -> Document {
    doc! { "hash": hash_bin(&s.token_hash), "jti": &s.jti, "issued_at": s.issued_at }
}

fn family_doc(f: &RefreshFamily) -> Document {
    doc! {
        "_id": &f.id,
        "user_id": &f.user_id,
        "created_at": date(f.created_at_ms),
        "last_used_at": date(f.last_used_at_ms),
        "expires_at": date(f.expires_at_ms),
        "user_agent": f.user_agent.as_deref(),
        "current": slot_doc(&f.current),
        "previous": f.previous.as_ref().map(slot_at_doc),
        "older": f.older.as_ref().map(slot_at_doc),
        "revoked_at": f.revoked_at_ms.map(date),
        "revoke_reason": f.revoke_reason.map(RevokeReason::as_str),
        "generation": f.generation,
    }
}

#[async_trait]
impl UserStore for MongoStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        // `_id` and the unique `email` index: a duplicate of either is 11000.
        match self.coll(USERS).insert_one(user_doc(user)).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.coll(USERS)
            .find_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn active_session_user(
        &self,
        family_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<User>, StoreError> {
        // The whole family is decoded, so a damaged one is an error, not
        // a session.
        match self.family(family_id).await? {
            Some(f) if f.user_id == user_id && f.is_active(now_ms) => {
                self.user_by_id(user_id).await
            }
            _ => Ok(None),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.coll(USERS)
            .find_one(doc! { "email": email })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let r = self
            .coll(USERS)
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
}

#[async_trait]
impl SessionStore for MongoStore {
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        // Users are never deleted, so checking first leaves no gap.
        let owner = self
            .coll(USERS)
            .find_one(doc! { "_id": &family.user_id })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(unavailable)?;
        if owner.is_none() {
            return Err(StoreError::NotFound);
        }
        match self.coll(FAMILIES).insert_one(family_doc(family)).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        self.coll(FAMILIES)
            .find_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(family_from)
            .transpose()
    }

    async fn rotate_family(&self, r: &Rotation) -> Result<Option<RefreshFamily>, StoreError> {
        // `revoked_at: null` matches absent or null only: a damaged
        // `revoked_at` never rotates.
        let filter = doc! {
            "_id": &r.family_id,
            "current.hash": hash_bin(&r.expected),
            "revoked_at": Bson::Null,
            "expires_at": { "$gt": date(r.now_ms) },
        };
        // A pipeline update, so the retired `previous` moves to `older` in
        // the same atomic step; our values go in as literals.
        let previous = PreviousSlot {
            token_hash: r.expected,
            rotated_at_ms: r.now_ms,
        };
        let update = vec![doc! {
            "$set": {
                "older": "$previous",
                "previous": { "$literal": slot_at_doc(&previous) },
                "current": { "$literal": slot_doc(&r.next) },
                "last_used_at": { "$literal": date(r.now_ms) },
                "expires_at": { "$literal": date(r.expires_at_ms) },
                "generation": { "$add": ["$generation", 1_i64] },
            },
        }];
        self.coll(FAMILIES)
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(family_from)
            .transpose()
    }

    async fn revoke(&self, r: &Revocation) -> Result<u64, StoreError> {
        // Everything not validly revoked, a damaged `revoked_at` included:
        // revoking is the safe direction.
        let mut filter = doc! {
            "user_id": &r.user_id,
            "revoked_at": { "$not": { "$type": "date" } },
        };
        if let Some(id) = &r.family_id {
            filter.insert("_id", id);
        }
        let res = self
            .coll(FAMILIES)
            .update_many(
                filter,
                doc! { "$set": { "revoked_at": date(r.at_ms), "revoke_reason": r.reason.as_str() } },
            )
            .await
            .map_err(unavailable)?;
        Ok(res.modified_count)
    }

    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        // Also fetch documents whose `revoked_at` or `expires_at` has the
        // wrong type, so that decoding reports them.
        let mut filter = live_or_damaged(now_ms);
        filter.insert("user_id", user_id);
        filter.insert("revoked_at", doc! { "$not": { "$type": "date" } });
        let docs = collect(
            self.coll(FAMILIES)
                .find(filter)
                .sort(doc! { "created_at": -1, "_id": -1 })
                .await
                .map_err(unavailable)?,
        )
        .await?;
        let mut families = docs
            .iter()
            .map(family_from)
            .collect::<Result<Vec<_>, _>>()?;
        families.retain(|f| f.is_active(now_ms));
        Ok(families)
    }
}

#[async_trait]
impl AuditLog for MongoStore {
    async fn record_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let d = doc! {
            "at": date(e.at_ms),
            "kind": &e.kind,
            "user_id": &e.user_id,
            "family_id": e.family_id.as_deref(),
        };
        self.coll(AUDIT)
            .insert_one(d)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let docs = collect(
            self.coll(AUDIT)
                .find(doc! { "user_id": user_id })
                .sort(doc! { "at": 1, "_id": 1 })
                .await
                .map_err(unavailable)?,
        )
        .await?;
        docs.iter()
            .map(|d| {
                let f = Fields::new(d, "audit event");
                Ok(AuditEvent {
                    at_ms: f.millis("at")?,
                    kind: f.string("kind")?,
                    user_id: f.string("user_id")?,
                    family_id: f.opt_string("family_id")?,
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------
// The usage ledger.
// ---------------------------------------------------------------------

fn ledger_err(e: mongodb::error::Error) -> LedgerError {
    LedgerError::Storage(Box::new(e))
}

fn ledger_corrupt(e: StoreError) -> LedgerError {
    LedgerError::Storage(Box::new(e))
}

#[async_trait]
impl UsageLedger for MongoStore {
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        // Same arithmetic as `crypto::ledger::grant`, done by the server in
        // one update. Capped so `reserved + count` cannot overflow an i64
        // on the server; a limit beyond 2^62 is never reached anyway.
        let cap = limit.min(u64::MAX >> 2);
        let count = count.min(cap);
        let exhausted = || LedgerError::LimitReached {
            fingerprint: key.clone(),
            limit,
        };
        if count == 0 {
            return Err(exhausted());
        }
        let (cap_i, count_i) = (to_i64(cap), to_i64(count));
        // In one `$set` stage every expression sees the document as it was
        // before the stage, so `$reserved` below is the old total. `$max`
        // keeps a total that is already past a (lowered) limit.
        let total = doc! { "$max": [
            "$reserved",
            { "$min": [cap_i, { "$add": ["$reserved", count_i] }] },
        ] };
        let update = vec![doc! { "$set": {
            "reserved": total.clone(),
            "last_grant": { "$subtract": [total, "$reserved"] },
        } }];
        // Only an integer total is added to: a damaged one matches nothing,
        // its insert collides, and the second round reports it.
        let filter = doc! { "_id": key.as_str(), "reserved": { "$type": ["int", "long"] } };
        let usage = self.coll(USAGE);
        for _ in 0..2 {
            let updated = usage
                .find_one_and_update(filter.clone(), update.clone())
                .return_document(ReturnDocument::After)
                .await
                .map_err(ledger_err)?;
            if let Some(d) = updated {
                let f = Fields::new(&d, "usage ledger entry");
                let total = f.count("reserved").map_err(ledger_corrupt)?;
                let granted = f.count("last_grant").map_err(ledger_corrupt)?;
                if granted > count {
                    return Err(ledger_corrupt(f.corrupt("last_grant")));
                }
                if granted == 0 {
                    return Err(exhausted());
                }
                return Ok(Reservation { granted, total });
            }
            // The key's first grant: nothing reserved yet, so all of
            // `count` (at most the limit) is granted.
            let first = doc! { "_id": key.as_str(), "reserved": count_i, "last_grant": count_i };
            match usage.insert_one(first).await {
                Ok(_) => {
                    return Ok(Reservation {
                        granted: count,
                        total: count,
                    });
                }
                // A concurrent first grant won: add to its total.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(ledger_err(e)),
            }
        }
        Err(ledger_corrupt(StoreError::Corrupt(
            "a stored usage ledger entry has a missing or invalid `reserved`".into(),
        )))
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        let d = self
            .coll(USAGE)
            .find_one(doc! { "_id": key.as_str() })
            .await
            .map_err(ledger_err)?;
        match d {
            None => Ok(0),
            Some(d) => Fields::new(&d, "usage ledger entry")
                .count("reserved")
                .map_err(ledger_corrupt),
        }
    }
}

// ---------------------------------------------------------------------
// One-time items.
// ---------------------------------------------------------------------

fn one_time_doc(item: &OneTimeItem) -> Document {
    doc! {
        "_id": ns_key(&item.ns, &item.key),
        "value": binary(item.value.expose()),
        "expires_at": date(item.expires_at_ms),
    }
}

/// Inserts `d` unless a live document holds its `_id`: a document whose
/// `expires_at` is at or before `now_ms` is replaced, re-checked
/// atomically by the replace's filter (`$lte` never matches a null, i.e.
/// everlasting, expiry), so of concurrent inserters exactly one wins. An
/// insert that collides, then a replace that finds nothing, means the
/// holder was removed in between: the key is free again, go round. The
/// holder that refused us is decoded by `check`, so a damaged one is
/// [`StoreError::Corrupt`], not a conflict.
async fn insert_unless_live(
    coll: &Collection<Document>,
    d: Document,
    now_ms: i64,
    check: impl Fn(&Document) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
    for _ in 0..3 {
        match coll.insert_one(&d).await {
            Ok(_) => return Ok(()),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let r = coll
            .replace_one(
                doc! { "_id": id.clone(), "expires_at": { "$lte": date(now_ms) } },
                d.clone(),
            )
            .await
            .map_err(unavailable)?;
        if r.matched_count == 1 {
            return Ok(());
        }
        if let Some(existing) = coll
            .find_one(doc! { "_id": id.clone() })
            .await
            .map_err(unavailable)?
        {
            check(&existing)?;
            return Err(StoreError::Conflict);
        }
    }
    Err(StoreError::Conflict)
}

#[async_trait]
impl OneTimeStore for MongoStore {
    async fn put_once(&self, item: &OneTimeItem, now_ms: i64) -> Result<(), StoreError> {
        insert_unless_live(
            &self.coll(ONE_TIME),
            one_time_doc(item),
            now_ms,
            |existing| {
                Fields::new(existing, "one-time item")
                    .millis("expires_at")
                    .map(|_| ())
            },
        )
        .await
    }

    async fn take_once(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SecretBytes>, StoreError> {
        let Some(mut d) = self
            .coll(ONE_TIME)
            .find_one_and_delete(doc! { "_id": ns_key(ns, key) })
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let expires_at_ms = Fields::new(&d, "one-time item").millis("expires_at")?;
        // Move the payload out rather than copy it.
        let value = match d.remove("value") {
            Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Generic => {
                SecretBytes::new(b.bytes)
            }
            _ => {
                return Err(StoreError::Corrupt(
                    "a stored one-time item has a missing or invalid `value`".into(),
                ));
            }
        };
        Ok((expires_at_ms > now_ms).then_some(value))
    }
}

// ---------------------------------------------------------------------
// Records.
// ---------------------------------------------------------------------

fn record_doc(r: &Record) -> Document {
    doc! {
        "_id": ns_key(&r.ns, &r.key),
        "owner": r.owner.as_deref(),
        "status": i64::from(r.status),
        "data": binary(&r.data),
        "created_at": date(r.created_at_ms),
        "updated_at": date(r.updated_at_ms),
        "expires_at": r.expires_at_ms.map(date),
    }
}

fn record_from(d: &Document) -> Result<Record, StoreError> {
    let f = Fields::new(d, "record");
    let id = f.sub("_id", "record key")?;
    Ok(Record {
        ns: id.string("ns")?,
        key: id.string("key")?,
        owner: f.opt_string("owner")?,
        status: u32::try_from(f.int("status")?).map_err(|_| f.corrupt("status"))?,
        data: f.bytes("data")?.to_vec(),
        created_at_ms: f.millis("created_at")?,
        updated_at_ms: f.millis("updated_at")?,
        expires_at_ms: f.opt_millis("expires_at")?,
    })
}

#[async_trait]
impl RecordStore for MongoStore {
    async fn insert_if_absent(&self, record: &Record) -> Result<(), StoreError> {
        insert_unless_live(
            &self.coll(RECORDS),
            record_doc(record),
            record.created_at_ms,
            |existing| record_from(existing).map(|_| ()),
        )
        .await
    }

    async fn record(&self, ns: &str, key: &str, now_ms: i64) -> Result<Option<Record>, StoreError> {
        let Some(d) = self
            .coll(RECORDS)
            .find_one(doc! { "_id": ns_key(ns, key) })
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        Ok(Some(record_from(&d)?).filter(|r| r.is_live(now_ms)))
    }

    async fn advance(&self, a: &Advance) -> Result<bool, StoreError> {
        let to = i64::from(a.to);
        let mut set = doc! { "status": to, "updated_at": date(a.now_ms) };
        if let Some(data) = &a.data {
            set.insert("data", binary(data));
        }
        let filter = doc! {
            "_id": ns_key(&a.ns, &a.key),
            "status": { "$lt": to },
            "$or": [
                { "expires_at": Bson::Null },
                { "expires_at": { "$gt": date(a.now_ms) } },
            ],
        };
        let r = self
            .coll(RECORDS)
            .update_one(filter, doc! { "$set": set })
            .await
            .map_err(unavailable)?;
        if r.matched_count == 1 {
            return Ok(true);
        }
        // Nothing moved: already there, or no live record (or a damaged
        // one, which reading reports).
        match self.record(&a.ns, &a.key, a.now_ms).await? {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound),
        }
    }

    async fn records(
        &self,
        ns: &str,
        filter: &RecordFilter,
        now_ms: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let mut query = live_or_damaged(now_ms);
        query.insert("_id.ns", ns);
        if let Some(owner) = &filter.owner {
            query.insert("owner", owner);
        }
        match filter.status {
            Some(s) if s.is_single() => {
                query.insert("status", i64::from(s.from));
            }
            Some(s) => {
                query.insert(
                    "status",
                    doc! { "$gte": i64::from(s.from), "$lte": i64::from(s.to) },
                );
            }
            None => {}
        }
        if let Some(after) = &filter.after {
            query.insert(
                "$and",
                vec![doc! { "$or": [
                    { "created_at": { "$gt": date(after.created_at_ms) } },
                    { "created_at": date(after.created_at_ms), "_id.key": { "$gt": &after.key } },
                ] }],
            );
        }
        // A limit of 0 is "no limit" for MongoDB too.
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let docs = collect(
            self.coll(RECORDS)
                .find(query)
                .sort(doc! { "created_at": 1, "_id.key": 1 })
                .limit(limit)
                .await
                .map_err(unavailable)?,
        )
        .await?;
        let mut records = docs
            .iter()
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        records.retain(|r| r.is_live(now_ms));
        Ok(records)
    }

    async fn remove_record(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let r = self
            .coll(RECORDS)
            .delete_one(doc! { "_id": ns_key(ns, key) })
            .await
            .map_err(unavailable)?;
        Ok(r.deleted_count == 1)
    }
}

// ---------------------------------------------------------------------
// Versioned values.
// ---------------------------------------------------------------------

#[async_trait]
impl VersionedStore for MongoStore {
    async fn upsert_versioned(&self, value: &Versioned) -> Result<CasOutcome, StoreError> {
        // Versioned values are never deleted, so after a refused upsert
        // the stored one is there to read. Each round either returns or
        // lost to a concurrent writer, and versions only grow, so a few
        // rounds settle any race.
        for _ in 0..8 {
            let r = self
                .coll(VERSIONED)
                .update_one(
                    doc! {
                        "_id": ns_key(&value.ns, &value.key),
                        "version": { "$lt": value.version },
                    },
                    doc! { "$set": {
                        "version": value.version,
                        "data": binary(&value.data),
                        "updated_at": date(value.updated_at_ms),
                    } },
                )
                .upsert(true)
                .await;
            match r {
                Ok(r) if r.matched_count > 0 || r.upserted_id.is_some() => {
                    return Ok(CasOutcome::Applied);
                }
                Ok(_) => return Err(no_document()),
                // The key holds a version at least as new (or a damaged
                // one, which reading reports).
                // A concurrent upsert may have created the key first with
                // an *older* version: then ours must still be applied, so
                // go round again; the update now finds the document.
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(current) = self.versioned(&value.ns, &value.key).await?
                        && current.version >= value.version
                    {
                        return Ok(CasOutcome::Stale {
                            current: current.version,
                        });
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(
            "a versioned value kept vanishing during an upsert".into(),
        ))
    }

    async fn versioned(&self, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        let Some(d) = self
            .coll(VERSIONED)
            .find_one(doc! { "_id": ns_key(ns, key) })
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let f = Fields::new(&d, "versioned value");
        let id = f.sub("_id", "versioned value key")?;
        Ok(Some(Versioned {
            ns: id.string("ns")?,
            key: id.string("key")?,
            version: f.int("version")?,
            data: f.bytes("data")?.to_vec(),
            updated_at_ms: f.millis("updated_at")?,
        }))
    }
}

// ---------------------------------------------------------------------
// Leases.
// ---------------------------------------------------------------------

fn lease_from(d: &Document) -> Result<Lease, StoreError> {
    let f = Fields::new(d, "lease");
    Ok(Lease {
        name: f.string("_id")?,
        holder: f.string("holder")?,
        fence: f.int("fence")?,
        expires_at_ms: f.millis("expires_at")?,
    })
}

impl MongoStore {
    /// Takes an existing lease that is free at `now_ms`, moving its fence.
    async fn take_lease(&self, req: &NewLease) -> Result<Option<Lease>, StoreError> {
        self.coll(LEASES)
            .find_one_and_update(
                doc! { "_id": &req.name, "expires_at": { "$lte": date(req.now_ms) } },
                doc! {
                    "$inc": { "fence": 1_i64 },
                    "$set": {
                        "holder": &req.holder,
                        "expires_at": date(req.now_ms.saturating_add(req.ttl_ms)),
                    },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(lease_from)
            .transpose()
    }
}

#[async_trait]
impl LeaseStore for MongoStore {
    async fn acquire(&self, req: &NewLease) -> Result<Option<Lease>, StoreError> {
        if let Some(lease) = self.take_lease(req).await? {
            return Ok(Some(lease));
        }
        // Free leases match above, so it is held or was never taken.
        let lease = Lease {
            name: req.name.clone(),
            holder: req.holder.clone(),
            fence: 1,
            expires_at_ms: req.now_ms.saturating_add(req.ttl_ms),
        };
        let first = doc! {
            "_id": &lease.name,
            "holder": &lease.holder,
            "fence": lease.fence,
            "expires_at": date(lease.expires_at_ms),
        };
        match self.coll(LEASES).insert_one(first).await {
            Ok(_) => Ok(Some(lease)),
            // It exists: held, or taken by a concurrent first acquirer
            // (with a ttl that may already have run out at our `now_ms`).
            Err(e) if is_duplicate_key(&e) => self.take_lease(req).await,
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64, now_ms: i64) -> Result<Lease, StoreError> {
        self.coll(LEASES)
            .find_one_and_update(
                doc! {
                    "_id": &lease.name,
                    "fence": lease.fence,
                    "holder": &lease.holder,
                    "expires_at": { "$gt": date(now_ms) },
                },
                doc! { "$set": { "expires_at": date(now_ms.saturating_add(ttl_ms)) } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(lease_from)
            .transpose()?
            .ok_or(StoreError::Conflict)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let r = self
            .coll(LEASES)
            .update_one(
                doc! {
                    "_id": &lease.name,
                    "fence": lease.fence,
                    "holder": &lease.holder,
                    "expires_at": { "$gt": date(0) },
                },
                doc! { "$set": { "expires_at": date(0) } },
            )
            .await
            .map_err(unavailable)?;
        Ok(r.matched_count == 1)
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.coll(LEASES)
            .find_one(doc! { "_id": name })
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(lease_from)
            .transpose()
    }
}

// ---------------------------------------------------------------------
// Window counters.
// ---------------------------------------------------------------------

#[async_trait]
impl WindowCounters for MongoStore {
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError> {
        let (start, end) = window_bounds(window_ms, now_ms);
        let id = doc! { "key": key, "window_ms": window_len(window_ms), "start": date(start) };
        let coll = self.coll(COUNTERS);
        let counted = |d: &Document| {
            Ok(WindowCount {
                count: Fields::new(d, "window counter").count("count")?,
                resets_at_ms: end,
            })
        };
        // Bounded: the insert only collides when a concurrent hit created
        // the counter, so the next update finds it (unless a purge with a
        // clock past the window removes it in between).
        for _ in 0..3 {
            let hit = coll
                .find_one_and_update(doc! { "_id": &id }, doc! { "$inc": { "count": 1_i64 } })
                .return_document(ReturnDocument::After)
                .await
                .map_err(unavailable)?;
            if let Some(d) = hit {
                return counted(&d);
            }
            let first = doc! { "_id": &id, "count": 1_i64, "expires_at": date(end) };
            match coll.insert_one(first).await {
                Ok(_) => {
                    return Ok(WindowCount {
                        count: 1,
                        resets_at_ms: end,
                    });
                }
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(no_document())
    }
}

// ---------------------------------------------------------------------
// Purge.
// ---------------------------------------------------------------------

#[async_trait]
impl Purge for MongoStore {
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        // `$lte` on a date never matches null or another type: records
        // kept for ever, and damaged documents, stay.
        let expired = doc! { "expires_at": { "$lte": date(now_ms) } };
        let purge = |name: &'static str| {
            let expired = expired.clone();
            async move {
                self.coll(name)
                    .delete_many(expired)
                    .await
                    .map(|r| r.deleted_count)
                    .map_err(unavailable)
            }
        };
        Ok(Purged {
            one_time: purge(ONE_TIME).await?,
            records: purge(RECORDS).await?,
            counters: purge(COUNTERS).await?,
            sessions: purge(FAMILIES).await?,
        })
    }
}
