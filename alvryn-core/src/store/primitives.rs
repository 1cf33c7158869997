//! The generic primitives later capabilities build on, instead of growing
//! storage of their own. Every backend implements every one; the contract
//! suite holds them to the same behaviour.
//!
//! Keys are scoped by a namespace (`ns`), so one OAuth `state` can never
//! be taken as an exchange code, and one webhook id never collides with a
//! provider link. Times are Unix milliseconds from the caller's clock.

use async_trait::async_trait;

use super::StoreError;
use crate::secret::SecretBytes;

/// A one-time item: put once, taken at most once, never after it expires.
/// Its `Debug` shows neither the key (an exchange code is a bearer
/// secret) nor the value.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeItem {
    /// Namespace, e.g. `oauth_state`.
    pub ns: String,
    /// Key within the namespace (an unguessable value).
    pub key: String,
    /// The secret payload (a PKCE verifier and nonce, say).
    pub value: SecretBytes,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for OneTimeItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimeItem")
            .field("ns", &self.ns)
            .field("key", &"[redacted]")
            .field("value", &self.value)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// One-time items with a time to live.
#[async_trait]
pub trait OneTimeStore: Send + Sync + 'static {
    /// Stores `item`. An expired item under the same key is replaced.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a live item (unexpired at `now_ms`)
    /// has the key; [`StoreError::Unavailable`].
    async fn put_once(&self, item: &OneTimeItem, now_ms: i64) -> Result<(), StoreError>;

    /// Removes the item and returns its value, atomically: of concurrent
    /// takers exactly one gets it; a later take gets `None`, and so does
    /// any take of an item expired at `now_ms`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn take_once(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SecretBytes>, StoreError>;
}

/// A record inserted once by key, whose status only moves forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Namespace, e.g. `stripe_event`.
    pub ns: String,
    /// Key within the namespace, e.g. an event id or `google:SUBJECT`.
    pub key: String,
    /// An optional owner to list by, e.g. the user a provider link belongs to.
    pub owner: Option<String>,
    /// The status; higher is further along. Meaning is the caller's.
    pub status: u32,
    /// The caller's payload.
    pub data: Vec<u8>,
    /// Creation time, Unix milliseconds. Also the "now" against which an
    /// insert judges whether an existing record has expired.
    pub created_at_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
    /// After this the record counts as absent everywhere (and may be
    /// purged); `None` keeps it for ever.
    pub expires_at_ms: Option<i64>,
}

impl Record {
    pub(crate) fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|e| e > now_ms)
    }
}

/// A forward move of a record's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advance {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// The new status: applied only if strictly greater than the stored one.
    pub to: u32,
    /// A payload to store with it, or `None` to keep the stored one.
    pub data: Option<Vec<u8>>,
    /// Now, Unix milliseconds (becomes `updated_at_ms`).
    pub now_ms: i64,
}

/// Which records to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only this owner's.
    pub owner: Option<String>,
    /// Only those with a status in this range (one status:
    /// `Some(status.into())`).
    pub status: Option<StatusRange>,
    /// At most this many (0 means no limit).
    pub limit: usize,
    /// Only records after this one in the listing order (oldest first,
    /// then by key): the next page after a page that ended with it. Pages
    /// read this way visit every record that stays live once, with flat
    /// memory, whatever else changes meanwhile (a record whose status
    /// moves keeps its place).
    pub after: Option<RecordCursor>,
}

/// The statuses a listing takes, `from` to `to` inclusive; see
/// [`RecordFilter::status`]. A range of one status is read from the
/// status index in listing order; a wider range reads what the range
/// holds and sorts it, so use one for statuses with few records (the
/// failed events of a retry pass), not for the bulk of a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// The lowest status taken.
    pub from: u32,
    /// The highest status taken.
    pub to: u32,
}

impl StatusRange {
    /// `from` to `to`, inclusive (empty when `from > to`).
    #[must_use]
    pub const fn new(from: u32, to: u32) -> Self {
        Self { from, to }
    }

    /// Whether `status` is in the range.
    #[must_use]
    pub const fn contains(&self, status: u32) -> bool {
        self.from <= status && status <= self.to
    }

    /// Whether the range is one status.
    #[must_use]
    pub const fn is_single(&self) -> bool {
        self.from == self.to
    }
}

impl From<u32> for StatusRange {
    fn from(status: u32) -> Self {
        Self::new(status, status)
    }
}

/// A place in a namespace's listing order; see [`RecordFilter::after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordCursor {
    /// The record's creation time.
    pub created_at_ms: i64,
    /// Its key.
    pub key: String,
}

impl RecordCursor {
    /// The place of `record`.
    #[must_use]
    pub fn of(record: &Record) -> Self {
        Self {
            created_at_ms: record.created_at_ms,
            key: record.key.clone(),
        }
    }

    /// Whether `record` comes after this place.
    #[must_use]
    pub fn precedes(&self, record: &Record) -> bool {
        (record.created_at_ms, record.key.as_str()) > (self.created_at_ms, self.key.as_str())
    }
}

/// Insert-if-absent by key, with a status that only moves forward.
///
/// A record expired at the caller's `now_ms` counts as absent for every
/// method.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Inserts `record` unless a live record has its key.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the key is taken (under concurrent
    /// inserts, all but exactly one); [`StoreError::Unavailable`].
    async fn insert_if_absent(&self, record: &Record) -> Result<(), StoreError>;

    /// The live record with the key.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn record(&self, ns: &str, key: &str, now_ms: i64) -> Result<Option<Record>, StoreError>;

    /// Moves the status forward. `Ok(true)` when it moved; `Ok(false)` when
    /// the stored status is already at or past `to` (nothing changes), so
    /// of concurrent moves to one status exactly one sees `true`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no live record has the key.
    async fn advance(&self, advance: &Advance) -> Result<bool, StoreError>;

    /// Live records of a namespace matching `filter`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn records(
        &self,
        ns: &str,
        filter: &RecordFilter,
        now_ms: i64,
    ) -> Result<Vec<Record>, StoreError>;

    /// Deletes the record; `false` if there was none.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn remove_record(&self, ns: &str, key: &str) -> Result<bool, StoreError>;
}

/// A value with a version, replaced only by a newer version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// Namespace, e.g. `subscription`.
    pub ns: String,
    /// Key, e.g. a subscription id.
    pub key: String,
    /// The version, e.g. the event's creation time.
    pub version: i64,
    /// The caller's payload.
    pub data: Vec<u8>,
    /// When it was written, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// What a compare-and-swap upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// Stored: the key was absent or held an older version.
    Applied,
    /// Refused: the stored version is at least as new. Nothing changed.
    Stale {
        /// The stored version.
        current: i64,
    },
}

/// Compare-and-swap upsert by version.
///
/// Also the fenced write of a [`LeaseStore`] holder: writing with
/// `version = lease.fence` refuses a holder whose lease was taken over
/// once the new holder has written.
#[async_trait]
pub trait VersionedStore: Send + Sync + 'static {
    /// Stores `value` if the key is absent or holds a strictly older
    /// version; atomic under concurrent writers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn upsert_versioned(&self, value: &Versioned) -> Result<CasOutcome, StoreError>;

    /// The stored value.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn versioned(&self, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError>;
}

/// A lease on a named job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// Fencing counter: grows by one each time the lease changes hands,
    /// never reused, even after a release.
    pub fence: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A request for a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLease {
    /// The job's name.
    pub name: String,
    /// Who asks.
    pub holder: String,
    /// For how long, milliseconds.
    pub ttl_ms: i64,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
}

/// Leases with expiry and a fencing counter.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease if it is free, released or expired at `now_ms`,
    /// with the next fence; `None` while anyone (the asker included) holds
    /// it unexpired. Of concurrent acquirers at most one succeeds.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn acquire(&self, request: &NewLease) -> Result<Option<Lease>, StoreError>;

    /// Extends a held lease to `now_ms + ttl_ms`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the lease is lost: expired at
    /// `now_ms`, released, or taken by another (its fence moved on).
    async fn renew(&self, lease: &Lease, ttl_ms: i64, now_ms: i64) -> Result<Lease, StoreError>;

    /// Gives the lease up; `false` (and nothing changes) when `lease` is
    /// no longer the current one, so a late release never frees a lease
    /// another holder has taken.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn release(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// The lease as stored (possibly expired or released: a released
    /// lease has `expires_at_ms` 0), or `None` if never taken.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;
}

/// A counter's state after a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCount {
    /// Hits in this window, this one included.
    pub count: u64,
    /// When the window ends (and the count starts again), Unix milliseconds.
    pub resets_at_ms: i64,
}

/// Counters in fixed windows: a window of `window_ms` starts at every
/// multiple of `window_ms` since the epoch, so every instance agrees on
/// its bounds. A counter is named by its key *and* its window length: one
/// key counted over a minute and over an hour gives two counters.
#[async_trait]
pub trait WindowCounters: Send + Sync + 'static {
    /// Adds one to the counter of `key` in the window containing `now_ms`
    /// and returns the new count; exact under concurrent hits.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; `window_ms` below 1 is treated as 1.
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError>;
}

/// What [`Purge::purge_expired`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// One-time items.
    pub one_time: u64,
    /// Records past their expiry.
    pub records: u64,
    /// Window counters whose window has ended.
    pub counters: u64,
    /// Sessions (refresh families) past their expiry.
    pub sessions: u64,
}

/// Reclaims the space of what has expired. Correctness never depends on
/// it: every query checks expiry itself. Leases are never purged, so
/// fences never repeat.
#[async_trait]
pub trait Purge: Send + Sync + 'static {
    /// Deletes everything expired at `now_ms`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; what was deleted before the failure
    /// stays deleted.
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError>;
}

/// The length a window of `window_ms` really has: at least 1 ms. Part of
/// a counter's identity in every backend.
pub(crate) fn window_len(window_ms: i64) -> i64 {
    window_ms.max(1)
}

/// The window containing `now_ms`: its start and end.
pub(crate) fn window_bounds(window_ms: i64, now_ms: i64) -> (i64, i64) {
    let w = window_len(window_ms);
    let start = now_ms.div_euclid(w) * w;
    (start, start.saturating_add(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_time_item_prints_neither_key_nor_value() {
        let item = OneTimeItem {
            ns: "exchange_code".into(),
            key: "code-4f1c2a".into(),
            value: SecretBytes::copy_from(b"verifier-and-nonce"),
            expires_at_ms: 1,
        };
        let printed = format!("{item:?}");
        assert!(!printed.contains("code-4f1c2a"), "{printed}");
        assert!(!printed.contains("verifier"), "{printed}");
        let op =
            crate::store::service::TakeOnce::new("exchange_code".into(), "code-4f1c2a".into(), 1);
        assert!(!format!("{op:?}").contains("code-4f1c2a"));
    }

    #[test]
    fn windows_start_at_multiples_of_their_length() {
        assert_eq!(window_bounds(60_000, 125_000), (120_000, 180_000));
        assert_eq!(window_bounds(60_000, 120_000), (120_000, 180_000));
        assert_eq!(window_bounds(0, 5), (5, 6), "a zero length counts as 1 ms");
        assert_eq!(window_bounds(1000, -1), (-1000, 0));
    }
}
