//! `alvryn worker`: the background jobs, in a process of their own, under
//! store leases (see [`alvryn_core::jobs`]), with `/metrics` and
//! `/healthz` on a listener of their own.
//!
//! Jobs, from the configuration:
//!
//! | job | when | what |
//! |---|---|---|
//! | `archive_drain` | Stripe and `STRIPE_EVENT_S3_BUCKET` set; every 60 s, at once while a full batch was moved | raw events the archive kept in the database while S3 failed, to S3 |
//! | `webhook_retry` | Stripe set; every 15 s | webhook events that failed to apply, with backoff; dead letters after 12 attempts |
//! | `purge_expired` | always; every 10 min | expired sessions, one-time items, records, window counters |
//!
//! Any number of workers may run against one store: each job runs in
//! one of them at a time. SIGTERM (or SIGINT) lets the runs in progress
//! finish, releases their leases, and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alvryn_core::jobs::{ArchiveDrain, Job, PurgeExpired, RetryWebhookEvents, Worker};
use alvryn_core::store::StoreBackend;
use axum::Router;
use axum::routing::get;

use crate::config::Config;
use crate::{StartupError, billing};

/// The jobs the configuration asks for, over `store`.
///
/// # Errors
/// [`StartupError::Stripe`] when the Stripe client cannot be set up.
pub async fn jobs(
    config: &Config,
    store: &Arc<dyn StoreBackend>,
) -> Result<Vec<Arc<dyn Job>>, StartupError> {
    let mut jobs: Vec<Arc<dyn Job>> = Vec::new();
    if let Some(stripe) = &config.stripe {
        let client = billing::s3_client_for(config).await;
        // One bounded S3 archive: the drain's, and the retries' fallback.
        let s3 = billing::s3_archive(config, stripe, client.as_ref());
        if let Some(s3) = &s3 {
            jobs.push(Arc::new(
                ArchiveDrain::new(Arc::clone(store) as _, Arc::clone(s3))
                    .batch(config.worker.archive_batch)
                    .pause(config.worker.upload_pause),
            ));
        } else {
            tracing::info!(
                "no STRIPE_EVENT_S3_BUCKET: raw events stay in the database, nothing to drain"
            );
        }
        let client = billing::stripe_client(stripe).map_err(StartupError::Stripe)?;
        let archive = billing::archive_over(store, s3);
        let pipeline = billing::pipeline(stripe, Arc::clone(store), client, archive);
        jobs.push(Arc::new(RetryWebhookEvents::new(Arc::new(pipeline))));
    }
    jobs.push(Arc::new(PurgeExpired::new(Arc::clone(store) as _)));
    Ok(jobs)
}

/// Who this process is in the leases: host, process id, and a random
/// suffix (a restarted process is someone else).
#[must_use]
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The worker's own HTTP surface: `/healthz` and `/metrics`, nothing else.
fn ops_router() -> Router {
    Router::new()
        .route("/healthz", get(crate::routes::ops::healthz))
        .route("/metrics", get(|| async { crate::prometheus::response() }))
        .fallback(|| async { crate::ApiError::not_found() })
}

/// Runs the worker: binds `metrics_bind` first (a taken port fails before
/// anything else), opens the store, and runs the jobs until `shutdown`
/// completes; then lets the runs in progress finish and returns.
///
/// # Errors
/// [`StartupError`]: the port, the store, the Stripe client.
pub async fn run(
    config: Config,
    metrics_bind: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    crate::prometheus::install();
    let listener = crate::bind(metrics_bind).await?;
    let local = listener.local_addr().map_err(StartupError::Serve)?;
    let store = crate::open_store(&config).await?;
    let mut worker =
        Worker::new(Arc::clone(&store) as _, holder_id()).lease_ttl(config.worker.lease_ttl);
    for job in jobs(&config, &store).await? {
        worker = worker.job(job);
    }
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    tracing::info!(%local, "worker metrics listening");
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, ops_router())
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the worker's metrics listener failed");
        }
    });
    worker.run(shutdown).await;
    // Scrapes are answered until the last run is done.
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    Ok(())
}
