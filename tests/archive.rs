//! The raw-event archive against S3 (moto's server mode over HTTP) and the
//! embedded store on a real file: an event reaches S3 with its SHA-256;
//! when the bucket is missing, the endpoint is down, S3 answers 500, or
//! an upload hangs past a timeout layer, the raw body lands in the
//! database flagged for re-archival and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use alvryn::core::billing::archive::{ARCHIVE_NS, IN_S3, PENDING_UPLOAD};
use alvryn::core::billing::{
    ArchiveService, Archived, EventArchive, FallbackArchive, RawEvent, S3Archive, ServiceArchive,
};
use alvryn::core::store::StoreBackend;
use alvryn::core::store::sqlite::SqliteStore;
use sha2::{Digest as _, Sha256};
use support::{s3_client, service};

fn event(id: &str) -> RawEvent {
    RawEvent {
        id: id.into(),
        created: 1_796_022_000,
        body: format!(r#"{{"id":"{id}","object":"event","type":"invoice.paid"}}"#).into_bytes(),
    }
}

async fn store() -> (Arc<dyn StoreBackend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("archive.db"))
        .await
        .unwrap();
    (Arc::new(s), dir)
}

/// Archiving `e` must fall back: answered as kept in the database, and
/// its record holding the raw body, flagged for upload.
async fn assert_falls_back(archive: &FallbackArchive, store: &Arc<dyn StoreBackend>, e: &RawEvent) {
    assert_eq!(
        archive.archive(e).await.unwrap(),
        Archived::Database {
            pending_upload: true
        }
    );
    assert_kept_raw(store, e).await;
}

/// The record of `event` must hold its raw body, flagged for upload.
async fn assert_kept_raw(store: &Arc<dyn StoreBackend>, e: &RawEvent) {
    let r = store
        .record(ARCHIVE_NS, &e.id, 0)
        .await
        .unwrap()
        .expect("the event is in the database");
    assert_eq!(r.status, PENDING_UPLOAD);
    assert_eq!(r.data, e.body, "the raw body, byte for byte");
}

#[tokio::test]
async fn an_event_reaches_s3_with_its_sha256_and_the_database_keeps_only_the_key() {
    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let client = s3_client(&moto);
    let bucket = support::unique("events-");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let (store, _dir) = store().await;
    let archive = FallbackArchive::new(
        Arc::new(S3Archive::new(client.clone(), &bucket, "stripe/")),
        Arc::clone(&store),
    );
    let e = event(&support::unique("evt-"));
    let Archived::S3 { key } = archive.archive(&e).await.unwrap() else {
        panic!("not in S3");
    };
    assert!(key.starts_with("stripe/2026/11/30/evt-"), "{key}");
    let object = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let sha = object.metadata().unwrap().get("sha256").unwrap().clone();
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], &e.body[..]);
    let want: String = Sha256::digest(&e.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha, want);
    let r = store.record(ARCHIVE_NS, &e.id, 0).await.unwrap().unwrap();
    assert_eq!((r.status, r.data), (IN_S3, key.into_bytes()));
    // Delivered again: the same key, still one record.
    assert!(matches!(
        archive.archive(&e).await.unwrap(),
        Archived::S3 { .. }
    ));
}

#[tokio::test]
async fn a_missing_bucket_falls_back_to_the_database() {
    let Some(moto) = service("ALVRYN_TEST_MOTO_URL") else {
        return;
    };
    let (store, _dir) = store().await;
    let archive = FallbackArchive::new(
        Arc::new(S3Archive::new(
            s3_client(&moto),
            support::unique("no-such-bucket-"),
            "",
        )),
        Arc::clone(&store),
    );
    let e = event(&support::unique("evt-"));
    assert_falls_back(&archive, &store, &e).await;
}

#[tokio::test]
async fn an_endpoint_that_is_down_falls_back_to_the_database() {
    // A port nothing listens on.
    let port = support::free_port();
    let (store, _dir) = store().await;
    let archive = FallbackArchive::new(
        Arc::new(S3Archive::new(
            s3_client(&format!("http://127.0.0.1:{port}")),
            "events",
            "",
        )),
        Arc::clone(&store),
    );
    let e = event("evt_down");
    assert_falls_back(&archive, &store, &e).await;
}

/// A real HTTP server that answers every request with `status` (or, with
/// `None`, reads the request and never answers).
fn fake_s3(status: Option<u16>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.read(&mut buf);
                match status {
                    Some(code) => {
                        let body = "<Error><Code>InternalError</Code></Error>";
                        let _ = write!(
                            s,
                            "HTTP/1.1 {code} Internal Server Error\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    None => std::thread::sleep(Duration::from_secs(60)),
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn s3_answering_500_falls_back_to_the_database() {
    let (store, _dir) = store().await;
    let archive = FallbackArchive::new(
        Arc::new(S3Archive::new(s3_client(&fake_s3(Some(500))), "events", "")),
        Arc::clone(&store),
    );
    let e = event("evt_500");
    assert_falls_back(&archive, &store, &e).await;
}

#[tokio::test]
async fn an_upload_that_hangs_past_a_timeout_layer_falls_back() {
    let (store, _dir) = store().await;
    let s3 = S3Archive::new(s3_client(&fake_s3(None)), "events", "");
    let layered = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .service(ArchiveService::new(Arc::new(s3)));
    let archive = FallbackArchive::new(Arc::new(ServiceArchive::new(layered)), Arc::clone(&store));
    let e = event("evt_hang");
    assert_falls_back(&archive, &store, &e).await;
}
