//! Where raw Stripe events are kept: S3, the database, or S3 with the
//! database as a fallback.
//!
//! The webhook answers Stripe with 2xx only once [`EventArchive::archive`]
//! has returned: an event is durable before it is acknowledged. Every
//! implementation is idempotent by event id (Stripe delivers at least
//! once): archiving an event twice is harmless.
//!
//! | implementation | where the raw body goes | what the database keeps |
//! |---|---|---|
//! | [`S3Archive`] (feature `s3`) | `s3://bucket/{prefix}YYYY/MM/DD/{event id}.json`, its SHA-256 in the object's metadata, written only if absent (`If-None-Match: *`): the first body of an event is kept | nothing |
//! | [`DatabaseArchive`] | the store (`stripe_event_archive` records) | the raw body |
//! | [`FallbackArchive`] | S3 when it answers | only the S3 key; the raw body, flagged for re-archival, when S3 failed for any reason |
//!
//! The database records' status says which: [`PENDING_UPLOAD`] (raw body
//! kept, to be uploaded to S3 by the worker), [`KEPT_IN_DATABASE`] (raw
//! body kept, no bucket configured), [`IN_S3`] (the S3 key only). A
//! status only moves forward, so a worker that uploads a pending body
//! moves it to `IN_S3` exactly once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

use crate::store::{Advance, Record, RecordStore, StoreBackend, StoreError};

/// Namespace of the archive's database records (key: the event id).
pub const ARCHIVE_NS: &str = "stripe_event_archive";
/// Status: the raw body is in the database, waiting to be uploaded.
pub const PENDING_UPLOAD: u32 = 1;
/// Status: the raw body is in the database, and no bucket is configured.
pub const KEPT_IN_DATABASE: u32 = 2;
/// Status: the body is in S3; the record's data is its key.
pub const IN_S3: u32 = 3;

/// A raw event as Stripe delivered it, after its signature was verified.
#[derive(Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The event id (`evt_...`).
    pub id: String,
    /// The event's `created`, Unix seconds (dates the S3 key).
    pub created: i64,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

impl fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may carry personal data: only its size.
        f.debug_struct("RawEvent")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl RawEvent {
    /// SHA-256 of the body, lowercase hex.
    #[must_use]
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.body))
    }

    /// `{prefix}YYYY/MM/DD/{id}.json`, dated by `created` (UTC).
    #[must_use]
    pub fn s3_key(&self, prefix: &str) -> String {
        s3_key(&self.id, self.created, prefix)
    }
}

/// The S3 key of the event `id` created at `created` (see
/// [`RawEvent::s3_key`]).
fn s3_key(id: &str, created: i64, prefix: &str) -> String {
    let (y, m, d) = civil_date(created.div_euclid(86_400));
    // Event ids are `evt_` and alphanumerics; anything else is
    // replaced so a key never leaves its folder.
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}{y:04}/{m:02}/{d:02}/{id}.json")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Where an event ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archived {
    /// In S3 under this key.
    S3 {
        /// The object key.
        key: String,
    },
    /// In the database.
    Database {
        /// The body waits there to be uploaded to S3.
        pending_upload: bool,
    },
}

/// Why an event could not be made durable. The webhook answers 5xx, so
/// Stripe delivers it again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The archive (S3, the database, or a layer over them) failed;
    /// nothing durable was written.
    #[error("the event archive is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ArchiveError {
    fn from(e: StoreError) -> Self {
        ArchiveError::Unavailable(Box::new(e))
    }
}

/// Keeps raw events durably.
///
/// # Failure modes
/// `archive` returns `Ok` only once the event is durable where the
/// returned [`Archived`] says; on `Err` the caller must not acknowledge
/// the event. Archiving the same event again is harmless (same key, same
/// record).
#[async_trait]
pub trait EventArchive: Send + Sync + 'static {
    /// Makes `event` durable.
    ///
    /// # Errors
    /// [`ArchiveError::Unavailable`].
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError>;

    /// The raw body of an archived event (`created` as in [`RawEvent`]),
    /// from wherever [`archive`](EventArchive::archive) put it; `None`
    /// when this archive does not hold it.
    ///
    /// # Errors
    /// [`ArchiveError::Unavailable`].
    async fn retrieve(&self, key: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError>;
}

/// Names an archived event: its id and its `created` (which dates its S3
/// key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventKey {
    /// The event id.
    pub id: String,
    /// The event's `created`, Unix seconds (0 when unknown).
    pub created: i64,
    /// The S3 object key, when known (the database records it); without
    /// it [`S3Archive`] derives the key from `created`.
    pub s3_key: Option<String>,
}

impl EventKey {
    /// The event `id` created at `created`.
    #[must_use]
    pub fn new(id: impl Into<String>, created: i64) -> Self {
        Self {
            id: id.into(),
            created,
            s3_key: None,
        }
    }
}

/// Raw events in the store.
#[derive(Clone)]
pub struct DatabaseArchive {
    store: Arc<dyn StoreBackend>,
    status: u32,
}

impl fmt::Debug for DatabaseArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArchive")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl DatabaseArchive {
    /// Keeps raw bodies in `store` (no bucket configured).
    #[must_use]
    pub fn new(store: Arc<dyn StoreBackend>) -> Self {
        Self {
            store,
            status: KEPT_IN_DATABASE,
        }
    }

    /// The raw body kept in the database (`Ok(Ok(body))`), or the S3 key
    /// it records instead (`Ok(Err(Some(key)))`), or nothing.
    async fn kept(&self, id: &str) -> Result<Result<Vec<u8>, Option<String>>, StoreError> {
        let record = self.store.record(ARCHIVE_NS, id, super::now_ms()).await?;
        Ok(match record {
            Some(r) if r.status == PENDING_UPLOAD || r.status == KEPT_IN_DATABASE => Ok(r.data),
            Some(r) if r.status == IN_S3 => Err(String::from_utf8(r.data).ok()),
            _ => Err(None),
        })
    }

    /// Keeps `data` for `event` at `status`; an existing record of the
    /// event is left as it is (the event was archived before).
    async fn keep(&self, event: &RawEvent, status: u32, data: Vec<u8>) -> Result<(), StoreError> {
        let now = super::now_ms();
        let record = Record {
            ns: ARCHIVE_NS.to_owned(),
            key: event.id.clone(),
            owner: None,
            status,
            data,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: None,
        };
        match self.store.insert_if_absent(&record).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => {
                // Archived before; a raw body pending upload that now
                // reached S3 moves on to the key.
                if status == IN_S3 {
                    moved_to_s3(self.store.as_ref(), &event.id, record.data, now).await?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Moves the archive record of event `id` on to [`IN_S3`], its data
/// becoming the S3 object key `key` (the raw body it held is dropped).
/// `Ok(false)` when it was there already.
///
/// # Errors
/// [`StoreError::NotFound`] without a record; the store's errors.
pub(crate) async fn moved_to_s3(
    store: &dyn RecordStore,
    id: &str,
    key: Vec<u8>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    store
        .advance(&Advance {
            ns: ARCHIVE_NS.to_owned(),
            key: id.to_owned(),
            to: IN_S3,
            data: Some(key),
            now_ms,
        })
        .await
}

#[async_trait]
impl EventArchive for DatabaseArchive {
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError> {
        self.keep(event, self.status, event.body.clone()).await?;
        Ok(Archived::Database {
            pending_upload: self.status == PENDING_UPLOAD,
        })
    }

    async fn retrieve(&self, key: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
        Ok(self.kept(&key.id).await?.ok())
    }
}

/// S3 first; when S3 fails for any reason, the raw body goes to the
/// database flagged for re-archival. On success the database keeps only
/// the key. Fails only when the database fails too (or, after an S3
/// success, cannot record the key).
pub struct FallbackArchive {
    primary: Arc<dyn EventArchive>,
    database: DatabaseArchive,
}

impl fmt::Debug for FallbackArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackArchive").finish_non_exhaustive()
    }
}

impl FallbackArchive {
    /// `primary` (an [`S3Archive`], possibly under layers), falling back
    /// to `store`.
    #[must_use]
    pub fn new(primary: Arc<dyn EventArchive>, store: Arc<dyn StoreBackend>) -> Self {
        Self {
            primary,
            database: DatabaseArchive {
                store,
                status: PENDING_UPLOAD,
            },
        }
    }
}

#[async_trait]
impl EventArchive for FallbackArchive {
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError> {
        match self.primary.archive(event).await {
            Ok(Archived::S3 { key }) => {
                self.database
                    .keep(event, IN_S3, key.clone().into_bytes())
                    .await?;
                Ok(Archived::S3 { key })
            }
            Ok(other) => Ok(other),
            Err(e) => {
                metrics::counter!(crate::metrics::ARCHIVE_FALLBACKS).increment(1);
                tracing::warn!(
                    event_id = %event.id,
                    error = %e,
                    "S3 archive failed; the raw event is kept in the database for re-archival"
                );
                self.database
                    .keep(event, PENDING_UPLOAD, event.body.clone())
                    .await?;
                Ok(Archived::Database {
                    pending_upload: true,
                })
            }
        }
    }

    async fn retrieve(&self, key: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self.database.kept(&key.id).await? {
            Ok(body) => Ok(Some(body)),
            // In S3: where the database says, whatever `created` the
            // caller knows.
            Err(Some(s3_key)) => {
                let key = EventKey {
                    s3_key: Some(s3_key),
                    ..key.clone()
                };
                self.primary.retrieve(&key).await
            }
            Err(None) => self.primary.retrieve(key).await,
        }
    }
}

/// Raw events in an S3 bucket (aws-sdk-s3, the standard credential chain,
/// `AWS_ENDPOINT_URL` honoured by the client's configuration).
#[cfg(feature = "s3")]
#[derive(Clone)]
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

#[cfg(feature = "s3")]
impl fmt::Debug for S3Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Archive")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "s3")]
impl S3Archive {
    /// Events go to `bucket` under `prefix` (e.g. `stripe/events/`).
    #[must_use]
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }
}

#[cfg(feature = "s3")]
#[async_trait]
impl EventArchive for S3Archive {
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError> {
        let key = event.s3_key(&self.prefix);
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            // Written only if absent: an event is uploaded once, however
            // often it is delivered or a crashed worker's upload is
            // redone, and the first body kept (redeliveries may differ in
            // fields such as `pending_webhooks`).
            .if_none_match("*")
            .content_type("application/json")
            .metadata("sha256", event.sha256_hex())
            .metadata("event-id", &event.id)
            .body(aws_sdk_s3::primitives::ByteStream::from(event.body.clone()))
            .send()
            .await;
        match put {
            Ok(_) => {}
            // 412 Precondition Failed: the object is there already.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {}
            Err(e) => {
                return Err(ArchiveError::Unavailable(
                    aws_sdk_s3::error::DisplayErrorContext(e).to_string().into(),
                ));
            }
        }
        Ok(Archived::S3 { key })
    }

    async fn retrieve(&self, key: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
        let object = key
            .s3_key
            .clone()
            .unwrap_or_else(|| s3_key(&key.id, key.created, &self.prefix));
        let unavailable = |e: String| ArchiveError::Unavailable(e.into());
        let got = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(got) => got,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => {
                return Err(unavailable(
                    aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                ));
            }
        };
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .into_bytes()
            .to_vec();
        Ok(Some(body))
    }
}

/// An [`EventArchive`] seen as a `tower::Service<RawEvent>`.
pub struct ArchiveService<A: ?Sized> {
    archive: Arc<A>,
}

impl<A: ?Sized> ArchiveService<A> {
    /// Wraps a shared archive.
    pub fn new(archive: Arc<A>) -> Self {
        Self { archive }
    }
}

impl<A: ?Sized> Clone for ArchiveService<A> {
    fn clone(&self) -> Self {
        Self {
            archive: Arc::clone(&self.archive),
        }
    }
}

impl<A: ?Sized> fmt::Debug for ArchiveService<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveService").finish_non_exhaustive()
    }
}

impl<A: EventArchive + ?Sized> tower::Service<RawEvent> for ArchiveService<A> {
    type Response = Archived;
    type Error = ArchiveError;
    type Future = Pin<Box<dyn Future<Output = Result<Archived, ArchiveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ArchiveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: RawEvent) -> Self::Future {
        let archive = Arc::clone(&self.archive);
        Box::pin(async move { archive.archive(&event).await })
    }
}

impl<A: EventArchive + ?Sized> tower::Service<EventKey> for ArchiveService<A> {
    type Response = Option<Vec<u8>>;
    type Error = ArchiveError;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, ArchiveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ArchiveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: EventKey) -> Self::Future {
        let archive = Arc::clone(&self.archive);
        Box::pin(async move { archive.retrieve(&key).await })
    }
}

/// A `tower::Service<RawEvent>` and `tower::Service<EventKey>` (an
/// [`ArchiveService`] under layers) used
/// where an [`EventArchive`] is expected. A layer's error (a timeout)
/// becomes [`ArchiveError::Unavailable`]: under a [`FallbackArchive`], an
/// S3 upload that takes too long falls back to the database.
#[derive(Clone)]
pub struct ServiceArchive<S> {
    service: S,
}

impl<S> ServiceArchive<S> {
    /// Wraps `service`.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> fmt::Debug for ServiceArchive<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceArchive").finish_non_exhaustive()
    }
}

#[async_trait]
impl<S> EventArchive for ServiceArchive<S>
where
    S: tower::Service<RawEvent, Response = Archived>
        + tower::Service<EventKey, Response = Option<Vec<u8>>>
        + Clone
        + Send
        + Sync
        + 'static,
    <S as tower::Service<RawEvent>>::Error: Into<crate::service::BoxError>,
    <S as tower::Service<RawEvent>>::Future: Send,
    <S as tower::Service<EventKey>>::Error: Into<crate::service::BoxError>,
    <S as tower::Service<EventKey>>::Future: Send,
{
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError> {
        tower::ServiceExt::<RawEvent>::oneshot(self.service.clone(), event.clone())
            .await
            .map_err(|e| crate::service::from_layer(e, ArchiveError::Unavailable))
    }

    async fn retrieve(&self, key: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
        tower::ServiceExt::<EventKey>::oneshot(self.service.clone(), key.clone())
            .await
            .map_err(|e| crate::service::from_layer(e, ArchiveError::Unavailable))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::MemoryStore;

    fn event(id: &str) -> RawEvent {
        RawEvent {
            id: id.into(),
            // 2026-11-30T07:00:00Z
            created: 1_796_022_000,
            body: br#"{"id":"evt_1","object":"event"}"#.to_vec(),
        }
    }

    /// A primary that always fails, as S3 does when it is down.
    struct Down;

    #[async_trait]
    impl EventArchive for Down {
        async fn archive(&self, _: &RawEvent) -> Result<Archived, ArchiveError> {
            Err(ArchiveError::Unavailable("connection refused".into()))
        }

        async fn retrieve(&self, _: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
            Err(ArchiveError::Unavailable("connection refused".into()))
        }
    }

    /// A primary that succeeds without storing anything.
    struct Up;

    #[async_trait]
    impl EventArchive for Up {
        async fn archive(&self, e: &RawEvent) -> Result<Archived, ArchiveError> {
            Ok(Archived::S3 {
                key: e.s3_key("p/"),
            })
        }

        async fn retrieve(&self, _: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
            Ok(None)
        }
    }

    #[test]
    fn keys_are_dated_by_the_event_and_stay_in_their_folder() {
        assert_eq!(
            event("evt_1").s3_key("stripe/"),
            "stripe/2026/11/30/evt_1.json"
        );
        assert_eq!(event("evt/../x").s3_key(""), "2026/11/30/evt----x.json");
        let epoch = RawEvent {
            created: 0,
            ..event("e")
        };
        assert_eq!(epoch.s3_key(""), "1970/01/01/e.json");
        let leap = RawEvent {
            created: 951_782_400, // 2000-02-29
            ..event("e")
        };
        assert_eq!(leap.s3_key(""), "2000/02/29/e.json");
    }

    #[tokio::test]
    async fn s3_down_keeps_the_raw_body_flagged_then_an_upload_moves_it_on() {
        let store: Arc<dyn StoreBackend> = Arc::new(MemoryStore::new());
        let down = FallbackArchive::new(Arc::new(Down), Arc::clone(&store));
        let e = event("evt_1");
        assert_eq!(
            down.archive(&e).await.unwrap(),
            Archived::Database {
                pending_upload: true
            }
        );
        let r = store.record(ARCHIVE_NS, "evt_1", 0).await.unwrap().unwrap();
        assert_eq!((r.status, r.data), (PENDING_UPLOAD, e.body.clone()));
        // Delivered again while S3 is back: the record moves to the key.
        let up = FallbackArchive::new(Arc::new(Up), Arc::clone(&store));
        assert!(matches!(up.archive(&e).await.unwrap(), Archived::S3 { .. }));
        let r = store.record(ARCHIVE_NS, "evt_1", 0).await.unwrap().unwrap();
        assert_eq!(r.status, IN_S3);
        assert_eq!(r.data, b"p/2026/11/30/evt_1.json");
        // And a later failure never moves it back.
        down.archive(&e).await.unwrap();
        let r = store.record(ARCHIVE_NS, "evt_1", 0).await.unwrap().unwrap();
        assert_eq!(r.status, IN_S3);
    }

    #[tokio::test]
    async fn without_a_bucket_events_stay_in_the_database_unflagged() {
        let store: Arc<dyn StoreBackend> = Arc::new(MemoryStore::new());
        let db = DatabaseArchive::new(Arc::clone(&store));
        let e = event("evt_2");
        assert_eq!(
            db.archive(&e).await.unwrap(),
            Archived::Database {
                pending_upload: false
            }
        );
        assert_eq!(
            db.archive(&e).await.unwrap(),
            Archived::Database {
                pending_upload: false
            }
        );
        let r = store.record(ARCHIVE_NS, "evt_2", 0).await.unwrap().unwrap();
        assert_eq!((r.status, r.data), (KEPT_IN_DATABASE, e.body));
    }

    #[test]
    fn debug_shows_no_body() {
        let s = format!("{:?}", event("evt_1"));
        assert!(!s.contains("object"), "{s}");
    }
}
