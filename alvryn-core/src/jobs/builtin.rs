//! The jobs the reference worker runs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Job, JobContext, JobError, JobReport};
use crate::billing::WebhookPipeline;
use crate::billing::archive::{ARCHIVE_NS, Archived, EventArchive, PENDING_UPLOAD, RawEvent};
use crate::metrics as m;
use crate::store::{Purge, RecordFilter, RecordStore};

/// Moves raw Stripe events that the [`FallbackArchive`] kept in the
/// database (S3 was down) to S3, oldest first, `batch` per run.
///
/// For each pending record: upload the body ([`EventArchive::archive`] of
/// the S3 archive, which writes only if the object is absent, so an event
/// a crashed run uploaded is not uploaded twice), then advance the record
/// to [`IN_S3`](crate::billing::archive::IN_S3) with the object key as
/// its data, which drops the raw body from the database. A status only
/// moves forward: of two runs that raced (a stalled worker whose lease
/// was taken over), exactly one moves it. An upload that fails leaves the record pending for a later run.
///
/// [`FallbackArchive`]: crate::billing::FallbackArchive
pub struct ArchiveDrain {
    records: Arc<dyn RecordStore>,
    s3: Arc<dyn EventArchive>,
    batch: usize,
    pause: Duration,
    every: Duration,
}

impl fmt::Debug for ArchiveDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveDrain")
            .field("batch", &self.batch)
            .field("pause", &self.pause)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl ArchiveDrain {
    /// The job's name (its lease is `job:archive_drain`).
    pub const NAME: &'static str = "archive_drain";

    /// Drains the records of `records` to `s3` (an [`S3Archive`], under
    /// layers if wanted): 100 per run, every 60 s, no pause.
    ///
    /// [`S3Archive`]: crate::billing::archive
    #[must_use]
    pub fn new(records: Arc<dyn RecordStore>, s3: Arc<dyn EventArchive>) -> Self {
        Self {
            records,
            s3,
            batch: 100,
            pause: Duration::ZERO,
            every: Duration::from_secs(60),
        }
    }

    /// Records per run (at least 1); a full batch runs again at once.
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// A pause between uploads, to spread the load on S3.
    #[must_use]
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// The period.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }
}

/// The `created` of a raw event (dates its S3 key); 0 when the body does
/// not say (it was verified when it arrived, so it does).
fn created_of(body: &[u8]) -> i64 {
    #[derive(serde::Deserialize)]
    struct Created {
        #[serde(default)]
        created: i64,
    }
    serde_json::from_slice::<Created>(body).map_or(0, |c| c.created)
}

#[async_trait]
impl Job for ArchiveDrain {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn every(&self) -> Duration {
        self.every
    }

    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let filter = RecordFilter {
            status: Some(PENDING_UPLOAD.into()),
            limit: self.batch,
            ..RecordFilter::default()
        };
        let pending = self
            .records
            .records(ARCHIVE_NS, &filter, ctx.now_ms())
            .await?;
        let mut report = JobReport::default();
        let full = pending.len() >= self.batch;
        for (i, record) in pending.into_iter().enumerate() {
            if i > 0 && !self.pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(self.pause) => {}
                    () = ctx.stopped() => {}
                }
            }
            ctx.check()?;
            let event = RawEvent {
                created: created_of(&record.data),
                id: record.key,
                body: record.data,
            };
            match self.s3.archive(&event).await {
                Ok(Archived::S3 { key }) => {
                    let moved = crate::billing::archive::moved_to_s3(
                        self.records.as_ref(),
                        &event.id,
                        key.into_bytes(),
                        ctx.now_ms(),
                    )
                    .await?;
                    if moved {
                        metrics::counter!(m::ARCHIVE_REUPLOADS, "outcome" => "uploaded")
                            .increment(1);
                        tracing::info!(event_id = %event.id, "raw event moved from the database to S3");
                    }
                    report.done += 1;
                }
                Ok(Archived::Database { .. }) => {
                    // Not an S3 archive: a composition mistake, not a
                    // passing failure.
                    return Err(JobError::Failed(
                        "the archive drain was given an archive that does not write to S3".into(),
                    ));
                }
                Err(e) => {
                    metrics::counter!(m::ARCHIVE_REUPLOADS, "outcome" => "failed").increment(1);
                    tracing::warn!(event_id = %event.id, error = %e, "could not upload a pending raw event; it stays in the database");
                    report.failed += 1;
                }
            }
        }
        // S3 failing: wait for the period rather than hammer it.
        report.more = full && report.failed == 0;
        Ok(report)
    }
}

/// Applies webhook events that are due again
/// ([`WebhookPipeline::retry_due`]): those that failed (with backoff) and
/// those whose delivery crashed before applying. A full batch runs again
/// at once.
pub struct RetryWebhookEvents {
    pipeline: Arc<WebhookPipeline>,
    limit: usize,
    every: Duration,
}

impl fmt::Debug for RetryWebhookEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryWebhookEvents")
            .field("limit", &self.limit)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl RetryWebhookEvents {
    /// The job's name (its lease is `job:webhook_retry`).
    pub const NAME: &'static str = "webhook_retry";

    /// Retries `pipeline`'s due events, 200 per run, every 15 s.
    #[must_use]
    pub fn new(pipeline: Arc<WebhookPipeline>) -> Self {
        Self {
            pipeline,
            limit: 200,
            every: Duration::from_secs(15),
        }
    }

    /// The period.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }
}

#[async_trait]
impl Job for RetryWebhookEvents {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn every(&self) -> Duration {
        self.every
    }

    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let r = self.pipeline.retry_due(ctx.now_ms(), self.limit).await?;
        Ok(JobReport {
            done: r.applied + r.unchanged + r.quarantined + r.ignored,
            failed: r.failed + r.missing,
            more: usize::try_from(r.seen).unwrap_or(usize::MAX) >= self.limit
                && r.failed == 0
                && r.missing == 0,
        })
    }
}

/// Deletes what has expired: sessions, one-time items, records and
/// window counters ([`Purge::purge_expired`]). Correctness never depends
/// on it; it reclaims space.
pub struct PurgeExpired {
    store: Arc<dyn Purge>,
    every: Duration,
}

impl fmt::Debug for PurgeExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeExpired")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl PurgeExpired {
    /// The job's name (its lease is `job:purge_expired`).
    pub const NAME: &'static str = "purge_expired";

    /// Purges `store` every 10 minutes.
    #[must_use]
    pub fn new(store: Arc<dyn Purge>) -> Self {
        Self {
            store,
            every: Duration::from_secs(600),
        }
    }

    /// The period.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }
}

#[async_trait]
impl Job for PurgeExpired {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn every(&self) -> Duration {
        self.every
    }

    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let p = self.store.purge_expired(ctx.now_ms()).await?;
        Ok(JobReport {
            done: p.one_time + p.records + p.counters + p.sessions,
            failed: 0,
            more: false,
        })
    }
}
