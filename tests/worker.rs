//! `alvryn worker` end to end: raw webhook events the server kept in the
//! database while S3 was down (real signed deliveries to the real server
//! with its S3 endpoint dead) are moved to S3 (moto) by worker processes
//! sharing the embedded store, each exactly once (the bucket is
//! versioned: every write would be a version), also when the worker doing
//! it is killed with `kill -9` half way and another takes its lease over;
//! SIGTERM lets the job in progress finish and exits 0; the worker's
//! `/metrics` shows the runs and the takeover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../alvryn-core/tests/stripe_support/mod.rs"]
mod stripe_support;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Server, alvryn, raw_request, service};

const WHSEC: &str = "whsec_alvrynWorkerEndToEnd0123456789";
const KEY: &str = "sk_test_alvrynWorkerDoNotLeak";
const PENDING_UPLOAD: i64 = 1;
const IN_S3: i64 = 3;

/// `alvryn` with billing and the S3 archive at `s3_endpoint`.
fn cmd(dir: &Path, s3_endpoint: &str, bucket: &str, extra: &[(&str, &str)]) -> Command {
    let mut c = alvryn();
    support::billing_env(&mut c, dir, KEY, WHSEC, "price_alvrynPro:pro", None);
    support::s3_archive_env(&mut c, bucket, s3_endpoint);
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// Delivers `n` signed events to a server whose S3 is down: each is kept
/// in the database, flagged for upload. Returns (id, body) of each.
fn pending_events(dir: &Path, script: &str, bucket: &str, n: usize) -> Vec<(String, String)> {
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let server = Server::start(cmd(dir, &dead, bucket, &[]));
    let now = stripe_support::now();
    let events: Vec<(String, String)> = (0..n)
        .map(|i| {
            let id = support::unique(&format!("evt_worker{i}_"));
            let body = serde_json::to_string_pretty(&stripe_support::envelope(
                &id,
                "customer.created",
                now,
                stripe_support::resource("customer"),
            ))
            .unwrap();
            (id, body)
        })
        .collect();
    let requests: Vec<_> = events
        .iter()
        .map(|(_, body)| stripe_support::req(body, WHSEC, now))
        .collect();
    let signatures = stripe_support::sign_all(script, &requests);
    for ((id, body), sig) in events.iter().zip(&signatures) {
        let r = raw_request(
            server.addr,
            "POST",
            "/webhooks/stripe",
            &[
                ("Content-Type", "application/json"),
                ("Stripe-Signature", sig),
            ],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{id}: {}", r.body);
    }
    drop(server);
    for (id, body) in &events {
        let (status, data) = archive_record(dir, id);
        assert_eq!(status, PENDING_UPLOAD, "{id} is flagged for upload");
        assert_eq!(
            data,
            body.as_bytes(),
            "{id}: the raw body is in the database"
        );
    }
    events
}

fn db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("alvryn.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// The archive record of an event: (status, data).
fn archive_record(dir: &Path, id: &str) -> (i64, Vec<u8>) {
    db(dir)
        .query_row(
            "SELECT status, data FROM records WHERE ns = 'stripe_event_archive' AND key = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("{id} has no archive record: {e}"))
}

fn in_s3_count(dir: &Path) -> i64 {
    db(dir)
        .query_row(
            "SELECT count(*) FROM records WHERE ns = 'stripe_event_archive' AND status = ?1",
            [IN_S3],
            |r| r.get(0),
        )
        .unwrap()
}

/// The holder and expiry of a lease, as stored.
fn lease(dir: &Path, name: &str) -> Option<(String, i64)> {
    db(dir)
        .query_row(
            "SELECT holder, expires_at_ms FROM leases WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

/// A bucket with versioning on: every write of a key is a version, so a
/// second upload of an event cannot hide behind the first.
fn versioned_bucket(rt: &tokio::runtime::Runtime, s3: &aws_sdk_s3::Client) -> String {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let bucket = support::unique("alvryn-worker-");
    rt.block_on(s3.create_bucket().bucket(&bucket).send())
        .unwrap();
    rt.block_on(
        s3.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    bucket
}

/// Every version of every object in the bucket: key -> versions.
fn versions(
    rt: &tokio::runtime::Runtime,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> BTreeMap<String, usize> {
    let out = rt
        .block_on(s3.list_object_versions().bucket(bucket).send())
        .unwrap();
    assert!(!out.is_truncated().unwrap_or(false));
    let mut by_key = BTreeMap::new();
    for v in out.versions() {
        *by_key.entry(v.key().unwrap().to_owned()).or_insert(0) += 1;
    }
    by_key
}

fn wait_for<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    support::eventually(secs, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Checks that every event is in S3 exactly once, byte for byte, and
/// that the database keeps only its key.
fn assert_each_in_s3_once(
    rt: &tokio::runtime::Runtime,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    dir: &Path,
    events: &[(String, String)],
) {
    let by_key = versions(rt, s3, bucket);
    assert_eq!(by_key.len(), events.len(), "{by_key:?}");
    for (id, body) in events {
        let (status, data) = archive_record(dir, id);
        assert_eq!(status, IN_S3, "{id}");
        let key = String::from_utf8(data).unwrap();
        assert!(
            key.starts_with("stripe/events/") && key.ends_with(&format!("/{id}.json")),
            "the database keeps the key only: {key}"
        );
        assert_eq!(by_key.get(&key), Some(&1), "{id}: one write");
        let got = rt
            .block_on(s3.get_object().bucket(bucket).key(&key).send())
            .unwrap();
        let stored = rt.block_on(got.body.collect()).unwrap().into_bytes();
        assert_eq!(stored.as_ref(), body.as_bytes(), "{id}: byte for byte");
    }
}

fn start_worker(c: Command) -> Server {
    Server::start_with(c, &["worker", "--metrics-bind", "127.0.0.1:0"])
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn two_workers_upload_each_fallback_event_once_and_one_finishes_after_the_other_is_killed() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = support::s3_client(&moto);
    let bucket = versioned_bucket(&rt, &s3);
    let dir = tempfile::tempdir().unwrap();
    let events = pending_events(dir.path(), &script, &bucket, 6);

    // Two workers on the one store; one run moves all six, slowly (the
    // test must see one upload and kill the holder before the last), and
    // a lease outlives its holder by at most 10 s. Both are generous: on
    // a loaded machine a renewal (a synced write, every third of the
    // TTL) can be late by seconds, and a lease lost that way would end
    // the run early.
    let settings = [
        ("ALVRYN_WORKER_ARCHIVE_BATCH", "6"),
        ("ALVRYN_WORKER_UPLOAD_PAUSE_MS", "2000"),
        ("ALVRYN_WORKER_LEASE_TTL_SECONDS", "10"),
    ];
    let mut workers = vec![
        start_worker(cmd(dir.path(), &moto, &bucket, &settings)),
        start_worker(cmd(dir.path(), &moto, &bucket, &settings)),
    ];

    // Mid-job: some events in S3, not all. Kill the lease's holder.
    wait_for(30, "the first upload", || {
        (!versions(&rt, &s3, &bucket).is_empty()).then_some(())
    });
    let (holder, _) = lease(dir.path(), "job:archive_drain").expect("the drain's lease");
    let victim = workers
        .iter()
        .position(|w| holder.contains(&format!("-{}-", w.child.id())))
        .unwrap_or_else(|| panic!("no worker holds {holder}"));
    let mut victim = workers.remove(victim);
    let survivor = workers.remove(0);
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let done_at_kill = in_s3_count(dir.path());
    assert!(
        done_at_kill < 6,
        "killed mid-job ({done_at_kill} of 6 done)"
    );

    // The survivor takes the lease over once it expires, and finishes.
    wait_for(60, "the survivor to finish the drain", || {
        (in_s3_count(dir.path()) == 6).then_some(())
    });
    assert_each_in_s3_once(&rt, &s3, &bucket, dir.path(), &events);
    let (holder_now, _) = lease(dir.path(), "job:archive_drain").unwrap();
    assert!(
        holder_now.contains(&format!("-{}-", survivor.child.id())),
        "{holder_now}"
    );

    // Its /metrics: the drain ran, and its lease was taken over from the
    // killed worker (named in the log).
    let text = wait_for(10, "the survivor's metrics", || {
        let r = raw_request(survivor.addr, "GET", "/metrics", &[], b"");
        // The run ends just after its last record moved.
        (r.status == 200
            && metric(
                &r.body,
                "worker_lease_takeovers_total{job=\"archive_drain\"}",
            ) >= 1.0
            && metric(&r.body, "worker_job_runs_total{job=\"archive_drain\"}") >= 1.0)
            .then_some(r.body)
    });
    assert!(
        metric(&text, "worker_job_runs_total{job=\"purge_expired\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "archive_reuploads_total{outcome=\"uploaded\"}") >= 1.0,
        "{text}"
    );
    let log = survivor.log();
    assert!(
        log.lines()
            .any(|l| l.contains("took over") && l.contains(&holder)),
        "{log}"
    );
    let health = raw_request(survivor.addr, "GET", "/healthz", &[], b"");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let other = raw_request(survivor.addr, "GET", "/auth/me", &[], b"");
    assert_eq!(other.status, 404, "the worker serves nothing else");
    assert!(
        !log.contains(KEY) && !log.contains(WHSEC),
        "no secret in the log"
    );

    // And a third worker later finds nothing to do: still one write each.
    drop(survivor);
    let late = start_worker(cmd(dir.path(), &moto, &bucket, &settings));
    wait_for(30, "the late worker's drain run", || {
        let r = raw_request(late.addr, "GET", "/metrics", &[], b"");
        (metric(&r.body, "worker_job_runs_total{job=\"archive_drain\"}") >= 1.0).then_some(())
    });
    assert_each_in_s3_once(&rt, &s3, &bucket, dir.path(), &events);
}

#[test]
fn sigterm_lets_the_job_in_progress_finish_then_exits_0() {
    let Some(script) = stripe_support::signer() else {
        return;
    };
    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = support::s3_client(&moto);
    let bucket = versioned_bucket(&rt, &s3);
    let dir = tempfile::tempdir().unwrap();
    let events = pending_events(dir.path(), &script, &bucket, 4);
    let mut worker = start_worker(cmd(
        dir.path(),
        &moto,
        &bucket,
        &[
            // As above: room to signal mid-run, and renewals that may
            // be late by seconds without losing the lease.
            ("ALVRYN_WORKER_ARCHIVE_BATCH", "4"),
            ("ALVRYN_WORKER_UPLOAD_PAUSE_MS", "2000"),
            ("ALVRYN_WORKER_LEASE_TTL_SECONDS", "10"),
        ],
    ));
    wait_for(30, "the first upload", || {
        (!versions(&rt, &s3, &bucket).is_empty()).then_some(())
    });
    let done_at_signal = in_s3_count(dir.path());
    sigterm(worker.child.id());
    assert!(
        done_at_signal < 4,
        "signalled mid-job ({done_at_signal} of 4)"
    );
    let status = wait_for(30, "the worker to exit", || {
        worker.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", worker.log());
    // The run it was in finished: every event is in S3, once.
    assert_each_in_s3_once(&rt, &s3, &bucket, dir.path(), &events);
    let (_, expires) = lease(dir.path(), "job:archive_drain").unwrap();
    assert_eq!(expires, 0, "the lease was released, not left to expire");
    let log = worker.log();
    assert!(log.contains("worker stopping"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
}

/// The window a `kill -9` may hit: a worker uploaded an event and died
/// before recording it. The next run finds the record still pending and
/// uploads again: the conditional write (`If-None-Match: *`) leaves the
/// object as the first upload wrote it, and the record moves on. Driven
/// in process, on the embedded store on a real file and moto, so the
/// window is hit every time rather than by chance.
#[tokio::test]
async fn an_upload_made_before_a_crash_is_not_written_again() {
    use std::sync::Arc;

    use alvryn::core::billing::archive::{ARCHIVE_NS, IN_S3 as STATUS_IN_S3, PENDING_UPLOAD};
    use alvryn::core::billing::{Archived, EventArchive, RawEvent, S3Archive};
    use alvryn::core::jobs::{ArchiveDrain, RunOutcome, Worker};
    use alvryn::core::store::sqlite::SqliteStore;
    use alvryn::core::store::{Record, StoreBackend};
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};

    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let s3 = support::s3_client(&moto);
    let bucket = support::unique("alvryn-crash-window-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StoreBackend> = Arc::new(
        SqliteStore::open(dir.path().join("alvryn.db"))
            .await
            .unwrap(),
    );
    let id = support::unique("evt_crash_");
    let first =
        format!(r#"{{"id":"{id}","object":"event","created":1796022000,"pending_webhooks":2}}"#);
    store
        .insert_if_absent(&Record {
            ns: ARCHIVE_NS.into(),
            key: id.clone(),
            owner: None,
            status: PENDING_UPLOAD,
            data: first.clone().into_bytes(),
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at_ms: None,
        })
        .await
        .unwrap();
    let archive = Arc::new(S3Archive::new(s3.clone(), &bucket, "stripe/events/"));
    // The dead worker's upload.
    let raw = RawEvent {
        id: id.clone(),
        created: 1_796_022_000,
        body: first.clone().into_bytes(),
    };
    let Archived::S3 { key } = archive.archive(&raw).await.unwrap() else {
        panic!("S3 is up");
    };
    // A redelivery with a body that differs (Stripe's `pending_webhooks`
    // moves): the object keeps the first body.
    let redelivered = RawEvent {
        body: first
            .replace("\"pending_webhooks\":2", "\"pending_webhooks\":1")
            .into_bytes(),
        ..raw.clone()
    };
    assert_eq!(
        archive.archive(&redelivered).await.unwrap(),
        Archived::S3 { key: key.clone() }
    );
    // The next worker's run.
    let worker = Worker::new(Arc::clone(&store) as _, "next-worker");
    let drain = ArchiveDrain::new(Arc::clone(&store) as _, archive);
    let RunOutcome::Ran { result, .. } = worker.run_once(&drain).await.unwrap() else {
        panic!("the lease is free");
    };
    assert_eq!(result.unwrap().done, 1);
    let r = store.record(ARCHIVE_NS, &id, 0).await.unwrap().unwrap();
    assert_eq!((r.status, r.data), (STATUS_IN_S3, key.clone().into_bytes()));
    let listed = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.versions().len(), 1, "one write: {listed:?}");
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.as_ref(), first.as_bytes(), "the first body");
}

#[test]
fn a_taken_metrics_port_exits_1_and_a_bad_setting_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path())
        .args(["worker", "--metrics-bind", &addr]);
    let out = support::run(c);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains(&addr), "{}", out.stderr);

    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", dir.path())
        .env("ALVRYN_WORKER_LEASE_TTL_SECONDS", "0")
        .env("ALVRYN_WORKER_ARCHIVE_BATCH", "many")
        .args(["worker", "--metrics-bind", "127.0.0.1:0"]);
    let out = support::run(c);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for var in [
        "ALVRYN_WORKER_LEASE_TTL_SECONDS",
        "ALVRYN_WORKER_ARCHIVE_BATCH",
    ] {
        assert!(out.stderr.contains(var), "{}", out.stderr);
    }
}
