//! A background job of your own, run by the same `Worker` as the built-in
//! ones: under a store lease (so of many workers one runs it at a time),
//! renewed while it runs, and told to stop if the lease is lost.
//!
//! The job here closes trials that have ended: records of the namespace
//! `trial` at status OPEN whose end has passed move to CLOSED. A status
//! only moves forward, so a run that crashed half way, or two runs that
//! raced, leave each trial closed once.
//!
//! Run: `cargo run --example custom_job`

use std::sync::Arc;
use std::time::Duration;

use alvryn_core::jobs::{Job, JobContext, JobError, JobReport, PurgeExpired, RunOutcome, Worker};
use alvryn_core::store::{Advance, MemoryStore, Record, RecordFilter, RecordStore, StoreBackend};
use async_trait::async_trait;

const TRIALS: &str = "trial";
const OPEN: u32 = 1;
const CLOSED: u32 = 2;

struct CloseEndedTrials {
    records: Arc<dyn RecordStore>,
}

#[async_trait]
impl Job for CloseEndedTrials {
    fn name(&self) -> &str {
        "close_ended_trials"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn run(&self, ctx: &JobContext) -> Result<JobReport, JobError> {
        let now = ctx.now_ms();
        let open = RecordFilter {
            status: Some(OPEN.into()),
            limit: 500,
            ..RecordFilter::default()
        };
        let mut report = JobReport::default();
        for trial in self.records.records(TRIALS, &open, now).await? {
            // Between steps: stop if another worker has the job now.
            ctx.check()?;
            let ends_at: i64 = String::from_utf8_lossy(&trial.data).parse().unwrap_or(0);
            if ends_at > now {
                continue;
            }
            let moved = self
                .records
                .advance(&Advance {
                    ns: TRIALS.into(),
                    key: trial.key,
                    to: CLOSED,
                    data: None,
                    now_ms: now,
                })
                .await?;
            if moved {
                report.done += 1;
            }
        }
        Ok(report)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Any backend: MemoryStore here, SqliteStore or MongoStore for real.
    let store: Arc<dyn StoreBackend> = Arc::new(MemoryStore::new());
    for (user, ends_at) in [("u1", 0), ("u2", 1), ("u3", i64::MAX)] {
        store
            .insert_if_absent(&Record {
                ns: TRIALS.into(),
                key: user.into(),
                owner: Some(user.into()),
                status: OPEN,
                data: ends_at.to_string().into_bytes(),
                created_at_ms: 0,
                updated_at_ms: 0,
                expires_at_ms: None,
            })
            .await?;
    }
    let job = Arc::new(CloseEndedTrials {
        records: Arc::clone(&store) as _,
    });

    // One run, by hand: take the lease, run, release.
    let first = Worker::new(Arc::clone(&store) as _, "example-worker-1");
    match first.run_once(job.as_ref()).await? {
        RunOutcome::Ran { result, .. } => println!("closed {} ended trial(s)", result?.done),
        other => println!("not run: {other:?}"),
    }

    // Or a worker running it (and the built-in purge) on their periods
    // until shutdown, which lets a run in progress finish first.
    let worker = Worker::new(Arc::clone(&store) as _, "example-worker-2")
        .lease_ttl(Duration::from_secs(30))
        .job(job)
        .job(Arc::new(PurgeExpired::new(Arc::clone(&store) as _)));
    worker
        .run(tokio::time::sleep(Duration::from_millis(200)))
        .await;

    let closed = store
        .records(
            TRIALS,
            &RecordFilter {
                status: Some(CLOSED.into()),
                ..RecordFilter::default()
            },
            0,
        )
        .await?;
    let names: Vec<&str> = closed.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(names, ["u1", "u2"], "the trial still running stays open");
    println!("closed trials: {names:?}");
    Ok(())
}
