//! Background jobs, run by a [`Worker`] under store leases so that of
//! many workers on many machines one at a time runs each job.
//!
//! A job is a small trait ([`Job`]): a name, a period, and a `run` that
//! does one bounded pass of work. The worker, for each run:
//!
//! 1. takes the lease `job:{name}` ([`LeaseStore::acquire`]) for the
//!    worker's lease TTL; while another holder has it, the run is skipped
//!    and tried again when that lease would expire (so a standby takes
//!    over soon after a holder dies, whatever the job's period);
//! 2. runs the job, renewing the lease every third of its TTL, so a long
//!    run keeps it;
//! 3. releases the lease, and sleeps the job's period (or runs again at
//!    once when the job reported more work waiting).
//!
//! # Failure modes
//!
//! - **A worker dies** (`kill -9`, a lost machine): its lease expires
//!   after the TTL and another worker takes it over, counted in
//!   `worker_lease_takeovers_total`. The dead worker's run stopped
//!   anywhere: every job must be idempotent and resumable (the built-in
//!   ones move records forward only, and re-doing a step is harmless).
//! - **A worker stalls** (a long pause, a partition from the store) and
//!   its lease is taken over meanwhile: its next renewal fails with
//!   `Conflict`, and the job is told to stop ([`JobContext::should_stop`],
//!   [`JobContext::stopped`]). If renewals fail for another reason (the
//!   store is down), the job is told to stop once the lease would have
//!   expired, since another worker may hold it by then. Jobs check between
//!   steps and return [`JobError::LeaseLost`]; a write that must never
//!   come from a stale holder is fenced with [`JobContext::fence`]
//!   (`VersionedStore` with the fence as the version).
//! - **The store is down**: the lease cannot be taken; the run is skipped
//!   (logged), and tried again after the job's period.
//! - **A job fails**: the error is logged and counted
//!   (`worker_job_failures_total`); the lease is released and the job
//!   runs again after its period.
//! - **Shutdown** ([`Worker::run`]'s future completes, on SIGTERM in the
//!   server): no new run starts; a run in progress finishes (its lease
//!   still renewed), its lease is released, and `run` returns.
//!
//! Built-in jobs: [`ArchiveDrain`] (raw events the archive kept in the
//! database, to S3), [`RetryWebhookEvents`] (webhook events that failed to apply)
//! and [`PurgeExpired`] (expired sessions, one-time items, records and
//! counters).

mod builtin;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::auth::{Clock, SystemClock};
use crate::metrics as m;
use crate::store::{Lease, LeaseStore, NewLease, StoreError};

pub use builtin::{ArchiveDrain, PurgeExpired, RetryWebhookEvents};

/// A piece of background work.
///
/// `run` does one bounded pass (a batch of records, say) and returns; the
/// worker calls it again after [`every`](Job::every), or at once when the
/// report says [`more`](JobReport::more). It may be stopped anywhere (a
/// crash), so it must leave the store consistent after every step and
/// resume from what it finds.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// A short stable name: the lease is `job:{name}`, and it labels
    /// metrics and logs. ASCII letters, digits and `_`.
    fn name(&self) -> &str;

    /// How long to wait between runs.
    fn every(&self) -> Duration;

    /// One pass of work.
    ///
    /// Check [`JobContext::should_stop`] between steps (or race
    /// [`JobContext::stopped`]): once it is true another worker may run
    /// the job, so stop and return [`JobError::LeaseLost`].
    ///
    /// # Errors
    /// [`JobError`]: the worker logs it, counts it, and runs the job
    /// again after its period.
    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError>;
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobReport {
    /// Items handled.
    pub done: u64,
    /// Items that failed (and stay for a later run).
    pub failed: u64,
    /// More work is waiting now: run again at once instead of after the
    /// period.
    pub more: bool,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job stopped because its lease was lost (taken over, or not
    /// renewable before it expired).
    #[error("the job's lease was lost; it stopped")]
    LeaseLost,
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[source] StoreError),
    /// Anything else.
    #[error("{0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Store(e)
    }
}

/// What a job sees of its run: the lease it holds, the time, and whether
/// it must stop.
pub struct JobContext {
    lease: Lease,
    stop: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("lease", &self.lease)
            .field("should_stop", &self.should_stop())
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// A context for running a job outside a worker (tests, a one-off
    /// command): a lease nobody else knows, never told to stop. The
    /// sender it returns tells it to stop when sent `true`.
    #[must_use]
    pub fn detached(name: &str, clock: Arc<dyn Clock>) -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let ctx = Self {
            lease: Lease {
                name: lease_name(name),
                holder: "detached".to_owned(),
                fence: 0,
                expires_at_ms: i64::MAX,
            },
            stop: rx,
            clock,
        };
        (ctx, tx)
    }

    /// The lease this run holds (as first taken; renewals move only its
    /// expiry).
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lease's fencing counter: a write versioned with it
    /// ([`VersionedStore`](crate::store::VersionedStore)) is refused once
    /// a later holder has written.
    #[must_use]
    pub fn fence(&self) -> i64 {
        self.lease.fence
    }

    /// Now, Unix milliseconds, from the worker's clock.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether the job must stop: its lease is lost.
    #[must_use]
    pub fn should_stop(&self) -> bool {
        *self.stop.borrow()
    }

    /// `Err(JobError::LeaseLost)` when the job must stop; for `?` between
    /// steps.
    ///
    /// # Errors
    /// [`JobError::LeaseLost`].
    pub fn check(&self) -> Result<(), JobError> {
        if self.should_stop() {
            Err(JobError::LeaseLost)
        } else {
            Ok(())
        }
    }

    /// Resolves when the job must stop (never, while the lease is held).
    pub async fn stopped(&self) {
        let mut rx = self.stop.clone();
        if rx.wait_for(|stop| *stop).await.is_err() {
            // The worker went away without a word: nobody renews the
            // lease any more.
        }
    }
}

/// The lease a job runs under.
#[must_use]
pub fn lease_name(job: &str) -> String {
    format!("job:{job}")
}

/// What [`Worker::run_once`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The job ran.
    Ran {
        /// Its report, or why it failed.
        result: Result<JobReport, JobError>,
        /// The lease was taken over from a holder that had not released
        /// it.
        took_over: bool,
    },
    /// Another holder has the lease.
    Busy {
        /// When its lease expires, Unix milliseconds, as last seen.
        until_ms: Option<i64>,
    },
}

/// Runs jobs under leases; see the [module docs](self).
pub struct Worker {
    leases: Arc<dyn LeaseStore>,
    holder: String,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    jobs: Vec<Arc<dyn Job>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jobs: Vec<&str> = self.jobs.iter().map(|j| j.name()).collect();
        f.debug_struct("Worker")
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .field("jobs", &jobs)
            .finish_non_exhaustive()
    }
}

/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

impl Worker {
    /// A worker taking leases in `leases` as `holder` (unique per process:
    /// a host name, the process id and a random suffix), with a lease TTL
    /// of [`DEFAULT_LEASE_TTL`] and the system clock.
    #[must_use]
    pub fn new(leases: Arc<dyn LeaseStore>, holder: impl Into<String>) -> Self {
        Self {
            leases,
            holder: holder.into(),
            ttl: DEFAULT_LEASE_TTL,
            clock: Arc::new(SystemClock),
            jobs: Vec::new(),
        }
    }

    /// How long a lease lasts without renewal: how soon another worker
    /// takes over a job from a dead one (at least 1 s). Renewed every
    /// third of it.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Replaces the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds a job.
    #[must_use]
    pub fn job(mut self, job: Arc<dyn Job>) -> Self {
        self.jobs.push(job);
        self
    }

    /// The jobs, in the order added.
    #[must_use]
    pub fn jobs(&self) -> &[Arc<dyn Job>] {
        &self.jobs
    }

    /// Who this worker is in the leases.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Runs `job` once if its lease is free: acquire, run (renewing),
    /// release. Counts the run in the metrics.
    ///
    /// # Errors
    /// [`StoreError`] when the lease cannot be read or taken; the job did
    /// not run.
    pub async fn run_once(&self, job: &dyn Job) -> Result<RunOutcome, StoreError> {
        let name = lease_name(job.name());
        let before = self.leases.lease(&name).await?;
        let now = self.clock.now_ms();
        let Some(lease) = self
            .leases
            .acquire(&NewLease {
                name: name.clone(),
                holder: self.holder.clone(),
                ttl_ms: self.ttl_ms(),
                now_ms: now,
            })
            .await?
        else {
            return Ok(RunOutcome::Busy {
                until_ms: before.map(|l| l.expires_at_ms),
            });
        };
        let label = job.name().to_owned();
        // Taken from another holder that had not released it, with no
        // one in between (the fence moved by one).
        let took_over = before.as_ref().is_some_and(|b| {
            b.holder != self.holder && b.expires_at_ms != 0 && b.fence + 1 == lease.fence
        });
        if took_over {
            metrics::counter!(m::LEASE_TAKEOVERS, "job" => label.clone()).increment(1);
            tracing::warn!(
                job = %label,
                previous_holder = before.as_ref().map_or("", |b| b.holder.as_str()),
                fence = lease.fence,
                "took over a job whose holder did not release it (it crashed or stalled)"
            );
        }
        let started = std::time::Instant::now();
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = JobContext {
            lease: lease.clone(),
            stop: stop_rx,
            clock: Arc::clone(&self.clock),
        };
        let mut current = lease;
        let result = {
            let run = job.run(&ctx);
            tokio::pin!(run);
            let renewing = self.keep_renewed(&mut current, &label);
            tokio::pin!(renewing);
            tokio::select! {
                r = &mut run => r,
                () = &mut renewing => {
                    // Lost: tell the job, and wait for it to stop.
                    let _ = stop_tx.send(true);
                    run.await
                }
            }
        };
        let lost = *stop_tx.borrow();
        if !lost {
            match self.leases.release(&current).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %label, error = %e, "could not release the lease; it expires by itself")
                }
            }
        }
        let elapsed = started.elapsed();
        metrics::counter!(m::JOB_RUNS, "job" => label.clone()).increment(1);
        metrics::histogram!(m::JOB_DURATION, "job" => label.clone()).record(elapsed.as_secs_f64());
        match &result {
            Ok(report) => {
                #[allow(clippy::cast_precision_loss)]
                let now_s = self.clock.now_ms() as f64 / 1000.0;
                metrics::gauge!(m::JOB_LAST_SUCCESS, "job" => label.clone()).set(now_s);
                if report.done > 0 || report.failed > 0 {
                    tracing::info!(job = %label, done = report.done, failed = report.failed, more = report.more, "job ran");
                } else {
                    tracing::debug!(job = %label, "job ran; nothing to do");
                }
            }
            Err(e) => {
                metrics::counter!(m::JOB_FAILURES, "job" => label.clone()).increment(1);
                tracing::warn!(job = %label, error = %e, "job failed");
            }
        }
        Ok(RunOutcome::Ran { result, took_over })
    }

    /// Renews `lease` every third of the TTL; returns once it is lost
    /// (taken over, or not renewed before it expired).
    async fn keep_renewed(&self, lease: &mut Lease, job: &str) {
        let period = self.ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            let now = self.clock.now_ms();
            match self.leases.renew(lease, self.ttl_ms(), now).await {
                Ok(renewed) => *lease = renewed,
                Err(StoreError::Conflict) => {
                    tracing::warn!(job = %job, "the job's lease was taken over; telling it to stop");
                    return;
                }
                Err(e) if now >= lease.expires_at_ms => {
                    tracing::warn!(job = %job, error = %e, "the job's lease could not be renewed before it expired; telling it to stop");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %job, error = %e, "could not renew the job's lease; trying again");
                }
            }
        }
    }

    /// Runs every job on its period until `shutdown` completes; then lets
    /// the runs in progress finish (and release their leases) and
    /// returns. Each job has its own loop: a slow job never delays
    /// another.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let this = Arc::new(self);
        let mut loops = tokio::task::JoinSet::new();
        for job in this.jobs.clone() {
            let worker = Arc::clone(&this);
            let stop = stop_rx.clone();
            loops.spawn(async move { worker.job_loop(job, stop).await });
        }
        tracing::info!(
            holder = %this.holder,
            jobs = ?this.jobs.iter().map(|j| j.name()).collect::<Vec<_>>(),
            "worker started"
        );
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("worker stopping: finishing the jobs in progress");
                let _ = stop_tx.send(true);
            }
            _ = async { while loops.join_next().await.is_some() {} } => {}
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a job loop ended abnormally");
            }
        }
        tracing::info!("worker stopped");
    }

    async fn job_loop(&self, job: Arc<dyn Job>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.run_once(job.as_ref()).await {
                Ok(RunOutcome::Ran {
                    result: Ok(report), ..
                }) if report.more => Duration::ZERO,
                Ok(RunOutcome::Ran { .. }) => job.every(),
                Ok(RunOutcome::Busy { until_ms }) => {
                    // Look again when the holder's lease would expire
                    // (a little after), but at least every period.
                    let left = until_ms.map_or(0, |u| u.saturating_sub(self.clock.now_ms()));
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    (left + Duration::from_millis(100)).min(job.every())
                }
                Err(e) => {
                    tracing::warn!(job = %job.name(), error = %e, "could not take the job's lease");
                    job.every()
                }
            };
            if wait.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
