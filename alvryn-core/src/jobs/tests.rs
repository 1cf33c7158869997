#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::*;
use crate::billing::EventArchive;
use crate::billing::archive::{
    ARCHIVE_NS, ArchiveError, Archived, EventKey, IN_S3, PENDING_UPLOAD, RawEvent,
};
use crate::store::{LeaseStore, MemoryStore, Record, RecordStore};

/// A clock the test moves by hand, starting at the real time.
struct ManualClock(AtomicI64);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(SystemClock.now_ms())))
    }
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A clock that follows tokio's timers, starting at the real time. In
/// a test whose runtime starts paused, time moves only when every task
/// waits on a timer, so a lease renewal is never late however loaded
/// the machine is.
struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base_ms: SystemClock.now_ms(),
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// Sleeps for `took` (or until told to stop), counting its runs.
struct Sleepy {
    name: &'static str,
    took: Duration,
    runs: AtomicU64,
    finished: AtomicU64,
}

impl Sleepy {
    fn new(name: &'static str, took: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            took,
            runs: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Job for Sleepy {
    fn name(&self) -> &str {
        self.name
    }
    fn every(&self) -> Duration {
        Duration::from_secs(3600)
    }
    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep(self.took) => {}
            () = ctx.stopped() => return Err(JobError::LeaseLost),
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(JobReport {
            done: 1,
            ..JobReport::default()
        })
    }
}

struct Failing;

#[async_trait]
impl Job for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn every(&self) -> Duration {
        Duration::from_secs(3600)
    }
    async fn run(&self, _: &JobContext) -> Result<JobReport, JobError> {
        Err(JobError::Failed("it broke".into()))
    }
}

fn leases() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

/// Workers `a` (shared, to run in a task) and `b` on `store`, with
/// leases of `ttl` on `clock`.
fn workers_a_and_b(
    store: &Arc<MemoryStore>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
) -> (Arc<Worker>, Worker) {
    let worker = |name: &str| {
        Worker::new(store.clone(), name)
            .lease_ttl(ttl)
            .with_clock(Arc::clone(&clock))
    };
    (Arc::new(worker("a")), worker("b"))
}

#[tokio::test]
async fn a_run_takes_the_lease_and_releases_it_after() {
    let store = leases();
    let worker = Worker::new(store.clone(), "w1");
    let job = Sleepy::new("quick", Duration::from_millis(1));
    let outcome = worker.run_once(job.as_ref()).await.unwrap();
    let RunOutcome::Ran { result, took_over } = outcome else {
        panic!("the lease was free: {outcome:?}");
    };
    assert_eq!(result.unwrap().done, 1);
    assert!(!took_over);
    let lease = store.lease("job:quick").await.unwrap().unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.expires_at_ms),
        ("w1", 0),
        "released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_keeps_other_workers_out_and_a_long_run_keeps_it() {
    let store = leases();
    // A run three times as long as the lease lasts unrenewed.
    let (a, b) = workers_a_and_b(&store, Duration::from_secs(2), TokioClock::new());
    let job = Sleepy::new("long", Duration::from_millis(6200));
    let running = {
        let (a, job) = (Arc::clone(&a), Arc::clone(&job));
        tokio::spawn(async move { a.run_once(job.as_ref()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // b asks repeatedly, past several of the lease's TTLs.
    for _ in 0..24 {
        match b.run_once(job.as_ref()).await.unwrap() {
            RunOutcome::Busy { until_ms } => assert!(until_ms.is_some()),
            other => panic!("b ran a job a holds: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let RunOutcome::Ran { result, .. } = running.await.unwrap().unwrap() else {
        panic!("a did not run");
    };
    assert_eq!(result.unwrap().done, 1, "a kept its lease to the end");
    assert_eq!(job.runs.load(Ordering::SeqCst), 1);
    // Free again: b runs it now, without a takeover (a released it).
    let job2 = Sleepy::new("long", Duration::from_millis(1));
    let RunOutcome::Ran { took_over, .. } = b.run_once(job2.as_ref()).await.unwrap() else {
        panic!("free after a released it");
    };
    assert!(!took_over);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_over_tells_the_stalled_job_to_stop() {
    let store = leases();
    let clock = ManualClock::new();
    let (a, b) = workers_a_and_b(&store, Duration::from_secs(3), clock.clone());
    let stalled = Sleepy::new("stall", Duration::from_secs(3600));
    let running = {
        let (a, job) = (Arc::clone(&a), Arc::clone(&stalled));
        tokio::spawn(async move { a.run_once(job.as_ref()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // a stalls past its lease (as far as the store's clock goes) before
    // its first renewal: b takes the job over.
    clock.advance(10_000);
    let quick = Sleepy::new("stall", Duration::from_millis(1));
    let RunOutcome::Ran { result, took_over } = b.run_once(quick.as_ref()).await.unwrap() else {
        panic!("a's lease had expired");
    };
    assert!(took_over, "taken from a, who never released it");
    assert!(result.is_ok());
    // a's renewal (after a third of the TTL) finds the lease moved on,
    // and its job is told to stop.
    let RunOutcome::Ran { result, took_over } =
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("a's job stopped")
            .unwrap()
            .unwrap()
    else {
        panic!("a ran");
    };
    assert!(!took_over);
    assert!(matches!(result, Err(JobError::LeaseLost)), "{result:?}");
    assert_eq!(stalled.finished.load(Ordering::SeqCst), 0);
    // a did not release what b now holds... and b released it after its run.
    let lease = store.lease("job:stall").await.unwrap().unwrap();
    assert_eq!(lease.holder, "b");
}

#[tokio::test]
async fn a_failed_run_releases_its_lease() {
    let store = leases();
    let worker = Worker::new(store.clone(), "w");
    let RunOutcome::Ran { result, .. } = worker.run_once(&Failing).await.unwrap() else {
        panic!("free");
    };
    assert!(matches!(result, Err(JobError::Failed(_))));
    let other = Worker::new(store.clone(), "other");
    assert!(matches!(
        other.run_once(&Failing).await.unwrap(),
        RunOutcome::Ran {
            took_over: false,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_run_in_progress_finish_and_release() {
    let store = leases();
    let job = Sleepy::new("finishing", Duration::from_millis(600));
    let worker = Worker::new(store.clone(), "w")
        .lease_ttl(Duration::from_secs(1))
        .with_clock(TokioClock::new())
        .job(job.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    // Shut down while the first run is in progress.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(job.runs.load(Ordering::SeqCst), 1);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stopped")
        .unwrap();
    assert_eq!(job.finished.load(Ordering::SeqCst), 1, "the run finished");
    assert_eq!(job.runs.load(Ordering::SeqCst), 1, "and no other started");
    let lease = store.lease("job:finishing").await.unwrap().unwrap();
    assert_eq!(lease.expires_at_ms, 0, "released");
}

/// An S3 stand-in for the drain's logic: writes an object only when
/// absent, like a conditional PUT, and counts the writes.
#[derive(Default)]
struct Bucket {
    objects: Mutex<Vec<(String, Vec<u8>)>>,
    writes: AtomicU64,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl EventArchive for Bucket {
    async fn archive(&self, event: &RawEvent) -> Result<Archived, ArchiveError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ArchiveError::Unavailable("connection refused".into()));
        }
        let key = event.s3_key("p/");
        let mut objects = self.objects.lock().unwrap();
        if !objects.iter().any(|(k, _)| *k == key) {
            self.writes.fetch_add(1, Ordering::SeqCst);
            objects.push((key.clone(), event.body.clone()));
        }
        Ok(Archived::S3 { key })
    }
    async fn retrieve(&self, _: &EventKey) -> Result<Option<Vec<u8>>, ArchiveError> {
        Ok(None)
    }
}

async fn pending(store: &MemoryStore, n: usize) {
    for i in 0..n {
        let body = format!(r#"{{"id":"evt_{i}","object":"event","created":1796022000}}"#);
        store
            .insert_if_absent(&Record {
                ns: ARCHIVE_NS.into(),
                key: format!("evt_{i}"),
                owner: None,
                status: PENDING_UPLOAD,
                data: body.into_bytes(),
                created_at_ms: i64::try_from(i).unwrap(),
                updated_at_ms: 0,
                expires_at_ms: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_drain_uploads_each_pending_event_once_and_keeps_only_the_key() {
    let store = Arc::new(MemoryStore::new());
    pending(&store, 5).await;
    let bucket = Arc::new(Bucket::default());
    let drain = ArchiveDrain::new(store.clone(), bucket.clone()).batch(2);
    let (ctx, _stop) = JobContext::detached(ArchiveDrain::NAME, Arc::new(SystemClock));
    let mut runs = 0;
    loop {
        let report = drain.run(&ctx).await.unwrap();
        runs += 1;
        if !report.more {
            break;
        }
    }
    assert_eq!(runs, 3, "two full batches, then the last one");
    assert_eq!(bucket.writes.load(Ordering::SeqCst), 5);
    for i in 0..5 {
        let r = store
            .record(ARCHIVE_NS, &format!("evt_{i}"), 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, IN_S3);
        assert_eq!(r.data, format!("p/2026/11/30/evt_{i}.json").into_bytes());
    }
    // Nothing left: a run does nothing.
    let report = drain.run(&ctx).await.unwrap();
    assert_eq!(report, JobReport::default());
    assert_eq!(bucket.writes.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn an_upload_that_fails_leaves_the_event_pending_and_the_run_waits() {
    let store = Arc::new(MemoryStore::new());
    pending(&store, 3).await;
    let bucket = Arc::new(Bucket::default());
    bucket.down.store(true, Ordering::SeqCst);
    let drain = ArchiveDrain::new(store.clone(), bucket.clone()).batch(3);
    let (ctx, _stop) = JobContext::detached(ArchiveDrain::NAME, Arc::new(SystemClock));
    let report = drain.run(&ctx).await.unwrap();
    assert_eq!((report.done, report.failed, report.more), (0, 3, false));
    let r = store.record(ARCHIVE_NS, "evt_1", 0).await.unwrap().unwrap();
    assert_eq!(r.status, PENDING_UPLOAD);
    assert!(r.data.starts_with(b"{"), "the raw body is still there");
    bucket.down.store(false, Ordering::SeqCst);
    let report = drain.run(&ctx).await.unwrap();
    assert_eq!((report.done, report.failed), (3, 0));
}

#[tokio::test]
async fn a_drain_told_to_stop_stops_between_events() {
    let store = Arc::new(MemoryStore::new());
    pending(&store, 4).await;
    let bucket = Arc::new(Bucket::default());
    let drain = ArchiveDrain::new(store.clone(), bucket.clone())
        .batch(4)
        .pause(Duration::from_secs(3600));
    let (ctx, stop) = JobContext::detached(ArchiveDrain::NAME, Arc::new(SystemClock));
    let run = drain.run(&ctx);
    tokio::pin!(run);
    // The first upload happens, then the pause; stop during it.
    tokio::select! {
        _ = &mut run => panic!("the pause is an hour"),
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    stop.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stopped at once");
    assert!(matches!(result, Err(JobError::LeaseLost)), "{result:?}");
    assert_eq!(bucket.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn purge_reports_what_it_deleted() {
    let store = Arc::new(MemoryStore::new());
    store
        .insert_if_absent(&Record {
            ns: "x".into(),
            key: "gone".into(),
            owner: None,
            status: 1,
            data: vec![],
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: Some(1),
        })
        .await
        .unwrap();
    let (ctx, _stop) = JobContext::detached(PurgeExpired::NAME, Arc::new(SystemClock));
    let report = PurgeExpired::new(store.clone()).run(&ctx).await.unwrap();
    assert_eq!(report.done, 1);
    assert!(store.record("x", "gone", 0).await.unwrap().is_none());
}
