//! Composition of billing: the Stripe client, the event archive (S3 with
//! the database as fallback, or the database alone) and the webhook
//! pipeline, from the configuration.

use std::sync::Arc;
use std::time::Duration;

use alvryn_core::billing::{
    ArchiveService, Billing, DatabaseArchive, EventArchive, FallbackArchive, S3Archive,
    ServiceArchive, StripeClient, StripeSetupError, Subscriptions, WebhookPipeline,
};
use alvryn_core::store::StoreBackend;

use crate::config::{Config, StripeConfig};

/// How long an S3 upload may take before the event falls back to the
/// database (the delivery is waiting on it).
pub const S3_UPLOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// An S3 client from the standard credential chain and region settings
/// (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` override the endpoint,
/// and then path-style addressing is used, as S3-compatible stores
/// need), with bounded attempts.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(4))
        .operation_timeout(Duration::from_secs(10))
        .build();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
        .load()
        .await;
    let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(custom_endpoint)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An S3 client ([`s3_client`]) when the configuration names a bucket
/// for raw events (`STRIPE_EVENT_S3_BUCKET`), else `None`.
pub async fn s3_client_for(config: &Config) -> Option<aws_sdk_s3::Client> {
    match &config.stripe_event_bucket {
        Some(_) => Some(s3_client().await),
        None => None,
    }
}

/// The S3 archive of raw events in `bucket`, each upload bounded by
/// [`S3_UPLOAD_TIMEOUT`].
pub fn bounded_s3(
    client: aws_sdk_s3::Client,
    bucket: &str,
    stripe: &StripeConfig,
) -> Arc<dyn EventArchive> {
    let s3 = S3Archive::new(client, bucket, &stripe.event_prefix);
    let bounded = tower::ServiceBuilder::new()
        .timeout(S3_UPLOAD_TIMEOUT)
        .service(ArchiveService::new(Arc::new(s3)));
    Arc::new(ServiceArchive::new(bounded))
}

/// The archive the configuration names: with `STRIPE_EVENT_S3_BUCKET`,
/// S3 ([`bounded_s3`]) falling back to the database; without, the
/// database.
pub async fn archive(
    config: &Config,
    stripe: &StripeConfig,
    store: &Arc<dyn StoreBackend>,
) -> Arc<dyn EventArchive> {
    let client = s3_client_for(config).await;
    archive_over(store, s3_archive(config, stripe, client.as_ref()))
}

/// The S3 archive of raw events ([`bounded_s3`]) over `client`, when the
/// configuration names a bucket (`STRIPE_EVENT_S3_BUCKET`) and there is
/// a client; else `None`.
pub fn s3_archive(
    config: &Config,
    stripe: &StripeConfig,
    client: Option<&aws_sdk_s3::Client>,
) -> Option<Arc<dyn EventArchive>> {
    let bucket = config.stripe_event_bucket.as_deref()?;
    Some(bounded_s3(client?.clone(), bucket, stripe))
}

/// `s3` falling back to the database in `store`; without `s3`, the
/// database alone.
pub fn archive_over(
    store: &Arc<dyn StoreBackend>,
    s3: Option<Arc<dyn EventArchive>>,
) -> Arc<dyn EventArchive> {
    match s3 {
        Some(s3) => Arc::new(FallbackArchive::new(s3, Arc::clone(store))),
        None => Arc::new(DatabaseArchive::new(Arc::clone(store))),
    }
}

/// The Stripe client of the configuration.
///
/// # Errors
/// [`StripeSetupError`] (the configuration check refuses the same
/// values first).
pub fn stripe_client(stripe: &StripeConfig) -> Result<Arc<dyn Billing>, StripeSetupError> {
    Ok(Arc::new(StripeClient::new(
        &stripe.secret_key,
        &stripe.api_base,
    )?))
}

/// The webhook pipeline over the given parts.
pub fn pipeline(
    stripe: &StripeConfig,
    store: Arc<dyn StoreBackend>,
    billing: Arc<dyn Billing>,
    archive: Arc<dyn EventArchive>,
) -> WebhookPipeline {
    let subscriptions = Subscriptions::new(Arc::clone(&store), billing, stripe.price_map.clone());
    WebhookPipeline::new(
        stripe.webhook_secrets.clone(),
        archive,
        store,
        subscriptions,
    )
    .with_tolerance(stripe.webhook_tolerance)
}
