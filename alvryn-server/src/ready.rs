//! Readiness: can this instance serve requests now?
//!
//! `GET /readyz` runs, at once and each within [`CHECK_TIMEOUT`]:
//!
//! | check | what | failure modes |
//! |---|---|---|
//! | `store` | one read by key (a user id no user has) | the store answers an error, or nothing in time |
//! | `field_key` | the active field key opens a value it sealed (sealed once per process, then only opened) | the key cannot seal (its encryption ledger, in the store, is unreachable, or the key is exhausted) or open |
//! | `s3` | `HeadBucket` on the webhook archive's bucket, only when billing archives to S3 | S3 answers an error (bucket missing, no access) or nothing in time |
//!
//! Each check answers `ok`, `failed` or `timeout` (`not_configured` for an
//! S3 archive there is none of); the cause goes to the log at WARN, never
//! into the answer. A result is reused for [`CACHE_FOR`], so a flood of
//! probes makes at most one round of calls to the store and to S3 in that
//! time (concurrent probes wait for the same round).
//!
//! Note that S3 being down does not stop webhooks (their archive falls
//! back to the database); an instance reports not ready for it anyway, as
//! the operator asked for the bucket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alvryn_core::crypto::{FieldCipher, FieldContext};
use alvryn_core::store::StoreBackend;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

/// How long each check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a result is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// The probe value's context: no record has this collection.
const PROBE: FieldContext<'static> = FieldContext {
    collection: "alvryn_readiness",
    record_id: "probe",
    field: "probe",
};
const PROBE_PLAINTEXT: &[u8] = b"alvryn readiness probe";
/// The user id the store check looks up (no user has it: ids are UUIDs).
const PROBE_USER: &str = "readiness-probe";

/// One check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Passed.
    Ok,
    /// The dependency answered an error.
    Failed,
    /// No answer within [`CHECK_TIMEOUT`].
    Timeout,
    /// Nothing to check (no S3 archive).
    NotConfigured,
}

impl Check {
    /// The word in the answer.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Ok => "ok",
            Check::Failed => "failed",
            Check::Timeout => "timeout",
            Check::NotConfigured => "not_configured",
        }
    }

    fn passed(self) -> bool {
        matches!(self, Check::Ok | Check::NotConfigured)
    }
}

/// The outcome of one round of checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Each check by name (`store`, `field_key`, `s3`).
    pub checks: BTreeMap<&'static str, Check>,
}

impl Report {
    /// Whether every check passed.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.checks.values().all(|c| c.passed())
    }

    /// The names of the checks that did not pass.
    #[must_use]
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, c)| !c.passed())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// The S3 bucket the webhook archive writes to, and a client for it.
#[derive(Clone, Debug)]
pub struct S3Target {
    /// The client the archive uses.
    pub client: aws_sdk_s3::Client,
    /// `STRIPE_EVENT_S3_BUCKET`.
    pub bucket: String,
}

/// What `/readyz` checks, and its last result.
pub struct Readiness {
    store: Arc<dyn StoreBackend>,
    cipher: FieldCipher,
    s3: Option<S3Target>,
    sealed: OnceCell<Vec<u8>>,
    last: Mutex<Option<(Instant, Report)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("s3_bucket", &self.s3.as_ref().map(|s| &s.bucket))
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Checks `store`, `cipher` and, when given, the S3 bucket.
    #[must_use]
    pub fn new(store: Arc<dyn StoreBackend>, cipher: FieldCipher, s3: Option<S3Target>) -> Self {
        Self {
            store,
            cipher,
            s3,
            sealed: OnceCell::new(),
            last: Mutex::new(None),
        }
    }

    /// The current report: the last one if it is younger than
    /// [`CACHE_FOR`], else a new round of checks (one at a time).
    pub async fn report(&self) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return report.clone();
        }
        let (store, field_key, s3) =
            tokio::join!(self.check_store(), self.check_field_key(), self.check_s3());
        let report = Report {
            checks: BTreeMap::from([("store", store), ("field_key", field_key), ("s3", s3)]),
        };
        *last = Some((Instant::now(), report.clone()));
        report
    }

    async fn check_store(&self) -> Check {
        bounded("store", self.store.user_by_id(PROBE_USER)).await
    }

    async fn check_field_key(&self) -> Check {
        let probe = async {
            let sealed = self
                .sealed
                .get_or_try_init(|| self.cipher.encrypt_bytes(&PROBE, PROBE_PLAINTEXT))
                .await?;
            let opened = self.cipher.decrypt_bytes(&PROBE, sealed)?;
            if opened.expose() == PROBE_PLAINTEXT {
                Ok(())
            } else {
                Err(alvryn_core::crypto::CipherError::Decrypt)
            }
        };
        bounded("field_key", probe).await
    }

    async fn check_s3(&self) -> Check {
        let Some(s3) = &self.s3 else {
            return Check::NotConfigured;
        };
        let head = async {
            s3.client
                .head_bucket()
                .bucket(&s3.bucket)
                .send()
                .await
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
        };
        bounded("s3", head).await
    }
}

/// Runs one check within [`CHECK_TIMEOUT`]; logs why it did not pass.
async fn bounded<T, E: std::fmt::Display>(
    name: &'static str,
    check: impl std::future::Future<Output = Result<T, E>>,
) -> Check {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => Check::Ok,
        Ok(Err(e)) => {
            tracing::warn!(check = name, error = %e, "readiness check failed");
            Check::Failed
        }
        Err(_) => {
            tracing::warn!(
                check = name,
                timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            Check::Timeout
        }
    }
}
