//! The provider-token migrations: seal the plaintext refresh tokens an
//! older version stored (`encrypt-refresh-tokens`), and re-seal every
//! token under the active key after a rotation (`rewrap`).
//!
//! Both page through the `provider_token` namespace in order
//! ([`RecordFilter::after`]), a batch at a time, so memory stays flat
//! whatever the number of users. Each record is rewritten on its own,
//! atomically, and only if it still holds what was read: the write is
//! `advance` from the status read to the next (a compare-and-set), so a
//! token the server rotated meanwhile is left to the server, and a run
//! killed at any moment (even `kill -9`) loses nothing: every record is
//! either as it was or fully migrated, and a rerun finishes the rest.
//! Both are idempotent: sealed values are recognised by their `av1:`
//! prefix and key id, and skipped.
//!
//! A dry run reads and counts, and writes nothing.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use serde::Serialize;

use super::tokens::{STATUS_FIRST_SEALED, STATUS_PLAINTEXT, TOKEN_NS, TokenRecord, open, seal};
use super::{OAuthError, Provider};
use crate::crypto::{FieldCipher, TEXT_PREFIX};
use crate::store::{Advance, Record, RecordCursor, RecordFilter, StoreBackend};

/// How a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationOptions {
    /// Write (`--run`); otherwise only count.
    pub run: bool,
    /// Records read per page.
    pub batch: usize,
    /// Records rewritten at once within a page.
    pub concurrency: usize,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            run: false,
            batch: 1000,
            concurrency: 64,
        }
    }
}

/// Where a migration is, for a progress bar or log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationProgress {
    /// Records looked at so far.
    pub done: u64,
    /// Records there are to look at (counted before starting).
    pub total: u64,
}

/// What a migration found and did; printed as the JSON summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// `encrypt-refresh-tokens` or `rewrap`.
    pub migration: &'static str,
    /// Nothing was written.
    pub dry_run: bool,
    /// Records looked at.
    pub scanned: u64,
    /// Records that needed the migration: to do (dry run), or found so
    /// (run; `migrated` of them were written).
    pub needed: u64,
    /// Records written by this run.
    pub migrated: u64,
    /// Records that did not need it (already sealed, or already under the
    /// active key).
    pub already_done: u64,
    /// Records another writer changed between our read and our write;
    /// left as that writer made them (a rerun looks again).
    pub changed_meanwhile: u64,
    /// Records that could not be read or opened (damaged, or sealed
    /// under a key that is not configured); left untouched.
    pub failed: u64,
    /// Records still holding a plaintext token (after a run: those that
    /// changed meanwhile or failed).
    pub plaintext_left: u64,
    /// Sealed values per key id after this run (for `rewrap`: how many
    /// values still use each old key; a key with none can be dropped).
    pub values_by_key: BTreeMap<String, u64>,
    /// The key that seals.
    pub active_key: String,
}

/// The user and provider of a token record (`user:provider`).
fn owner_of(r: &Record) -> Option<(String, Provider)> {
    let (user, provider) = r.key.rsplit_once(':')?;
    let provider = Provider::parse(provider)?;
    (!user.is_empty()).then(|| (user.to_owned(), provider))
}

fn is_plain(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|t| !t.starts_with(TEXT_PREFIX))
}

/// Pages through the namespace in order (with `status`, if given).
struct Pager {
    status: Option<u32>,
    batch: usize,
    after: Option<RecordCursor>,
}

impl Pager {
    fn new(status: Option<u32>, batch: usize) -> Self {
        Self {
            status,
            batch: batch.max(1),
            after: None,
        }
    }

    /// The next page; `None` after the last.
    async fn next(
        &mut self,
        store: &dyn StoreBackend,
        now_ms: i64,
    ) -> Result<Option<Vec<Record>>, OAuthError> {
        let page = store
            .records(
                TOKEN_NS,
                &RecordFilter {
                    status: self.status,
                    limit: self.batch,
                    after: self.after.take(),
                    ..RecordFilter::default()
                },
                now_ms,
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some(RecordCursor::of(last));
        Ok(Some(page))
    }
}

/// What became of one record.
enum Outcome {
    Migrated,
    AlreadyDone,
    ChangedMeanwhile,
    Failed,
}

/// Counts the records of the namespace (with `status`, if given).
async fn count(
    store: &dyn StoreBackend,
    status: Option<u32>,
    batch: usize,
    now_ms: i64,
) -> Result<u64, OAuthError> {
    let mut total = 0u64;
    let mut pages = Pager::new(status, batch);
    while let Some(page) = pages.next(store, now_ms).await? {
        total += page.len() as u64;
    }
    Ok(total)
}

/// Runs `step` on every record (with `status`, if given), a page at a
/// time, `concurrency` at once, reporting progress after each page.
async fn each_record<F, Fut>(
    store: &dyn StoreBackend,
    status: Option<u32>,
    options: &MigrationOptions,
    now_ms: &dyn Fn() -> i64,
    progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    step: F,
) -> Result<Vec<(Outcome, u64)>, OAuthError>
where
    F: Fn(Record) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let batch = options.batch.max(1);
    let total = count(store, status, batch, now_ms()).await?;
    progress(MigrationProgress { done: 0, total });
    let mut outcomes = [0u64; 4];
    let mut done = 0u64;
    let mut pages = Pager::new(status, batch);
    while let Some(page) = pages.next(store, now_ms()).await? {
        done += page.len() as u64;
        let mut results = futures_util::stream::iter(page.into_iter().map(&step))
            .buffer_unordered(options.concurrency.max(1));
        while let Some(outcome) = results.next().await {
            outcomes[outcome as usize] += 1;
        }
        progress(MigrationProgress {
            done,
            total: total.max(done),
        });
    }
    Ok(vec![
        (Outcome::Migrated, outcomes[0]),
        (Outcome::AlreadyDone, outcomes[1]),
        (Outcome::ChangedMeanwhile, outcomes[2]),
        (Outcome::Failed, outcomes[3]),
    ])
}

/// Writes `next` over `r` if `r` is still what was read.
async fn replace(
    store: &dyn StoreBackend,
    r: &Record,
    to: u32,
    next: &TokenRecord,
    now_ms: i64,
) -> Outcome {
    let moved = store
        .advance(&Advance {
            ns: TOKEN_NS.to_owned(),
            key: r.key.clone(),
            to,
            data: Some(next.to_bytes()),
            now_ms,
        })
        .await;
    match moved {
        Ok(true) => Outcome::Migrated,
        Ok(false) | Err(crate::store::StoreError::NotFound) => Outcome::ChangedMeanwhile,
        Err(e) => {
            tracing::warn!(error = %e, "a token record could not be written");
            Outcome::Failed
        }
    }
}

impl Outcome {
    fn tally(report: &mut MigrationReport, counts: Vec<(Outcome, u64)>) {
        for (o, n) in counts {
            match o {
                Outcome::Migrated => report.migrated += n,
                Outcome::AlreadyDone => report.already_done += n,
                Outcome::ChangedMeanwhile => report.changed_meanwhile += n,
                Outcome::Failed => report.failed += n,
            }
        }
    }
}

/// A final pass of counts: plaintext records left and sealed values per
/// key id.
async fn census(
    store: &dyn StoreBackend,
    options: &MigrationOptions,
    now_ms: i64,
    report: &mut MigrationReport,
) -> Result<(), OAuthError> {
    report.values_by_key.clear();
    report.plaintext_left = 0;
    let mut pages = Pager::new(None, options.batch);
    while let Some(page) = pages.next(store, now_ms).await? {
        for r in &page {
            let Ok(t) = TokenRecord::from_record(r) else {
                continue;
            };
            if is_plain(&t.refresh_token) || is_plain(&t.access_token) {
                report.plaintext_left += 1;
            }
            for v in [&t.refresh_token, &t.access_token].into_iter().flatten() {
                if let Some(id) = FieldCipher::key_id_of(v) {
                    *report.values_by_key.entry(id.to_string()).or_default() += 1;
                }
            }
        }
    }
    Ok(())
}

/// Completes a report from the tally and the counters, then takes the
/// census.
async fn finish(
    store: &dyn StoreBackend,
    options: &MigrationOptions,
    now_ms: i64,
    mut report: MigrationReport,
    counts: Vec<(Outcome, u64)>,
    needed: std::sync::atomic::AtomicU64,
    scanned: std::sync::atomic::AtomicU64,
) -> Result<MigrationReport, OAuthError> {
    Outcome::tally(&mut report, counts);
    report.needed = needed.into_inner();
    report.scanned = scanned.into_inner();
    if !options.run {
        // A dry run's step answers "already done" for what it would do,
        // to keep the tally simple.
        report.already_done -= report.needed;
    }
    census(store, options, now_ms, &mut report).await?;
    Ok(report)
}

/// `alvryn migrate encrypt-refresh-tokens`: seals every plaintext
/// provider token (records at [`STATUS_PLAINTEXT`]) under the active key
/// and moves the record to [`STATUS_FIRST_SEALED`].
///
/// # Errors
/// The store's, when a page cannot be read (what was written stays).
pub async fn encrypt_refresh_tokens(
    store: &dyn StoreBackend,
    cipher: &FieldCipher,
    options: MigrationOptions,
    now_ms: &dyn Fn() -> i64,
    progress: &(dyn Fn(MigrationProgress) + Send + Sync),
) -> Result<MigrationReport, OAuthError> {
    let report = MigrationReport {
        migration: "encrypt-refresh-tokens",
        dry_run: !options.run,
        active_key: cipher.active_key_id().to_string(),
        ..MigrationReport::default()
    };
    let needed = std::sync::atomic::AtomicU64::new(0);
    let scanned = std::sync::atomic::AtomicU64::new(0);
    let counts = each_record(
        store,
        // A dry run also counts the sealed ones; a run visits only the
        // plaintext ones.
        if options.run {
            Some(STATUS_PLAINTEXT)
        } else {
            None
        },
        &options,
        now_ms,
        progress,
        |r| {
            let (needed, scanned) = (&needed, &scanned);
            async move {
                use std::sync::atomic::Ordering::Relaxed;
                scanned.fetch_add(1, Relaxed);
                let Ok(mut t) = TokenRecord::from_record(&r) else {
                    return Outcome::Failed;
                };
                let Some((user, provider)) = owner_of(&r) else {
                    return Outcome::Failed;
                };
                let plain = r.status == STATUS_PLAINTEXT
                    && (is_plain(&t.refresh_token) || is_plain(&t.access_token));
                if !plain {
                    if !options.run || r.status != STATUS_PLAINTEXT {
                        return Outcome::AlreadyDone;
                    }
                    // Marked plaintext, holds none: just mark it sealed.
                    return match replace(store, &r, STATUS_FIRST_SEALED, &t, now_ms()).await {
                        Outcome::Migrated => Outcome::AlreadyDone,
                        other => other,
                    };
                }
                needed.fetch_add(1, Relaxed);
                if !options.run {
                    return Outcome::AlreadyDone;
                }
                for (which, value) in [
                    ("refresh_token", &mut t.refresh_token),
                    ("access_token", &mut t.access_token),
                ] {
                    if let Some(v) = value.as_ref().filter(|v| !v.starts_with(TEXT_PREFIX)) {
                        match seal(cipher, &user, provider, which, v).await {
                            Ok(sealed) => *value = Some(sealed),
                            Err(e) => {
                                tracing::warn!(error = %e, "a token could not be sealed");
                                return Outcome::Failed;
                            }
                        }
                    }
                }
                replace(store, &r, STATUS_FIRST_SEALED, &t, now_ms()).await
            }
        },
    )
    .await?;
    finish(store, &options, now_ms(), report, counts, needed, scanned).await
}

/// `alvryn migrate rewrap`: re-seals every sealed provider token that is
/// not under the active key (opened with the previous key its ciphertext
/// names). Plaintext records are left to `encrypt-refresh-tokens`.
///
/// # Errors
/// The store's, when a page cannot be read (what was written stays).
pub async fn rewrap(
    store: &dyn StoreBackend,
    cipher: &FieldCipher,
    options: MigrationOptions,
    now_ms: &dyn Fn() -> i64,
    progress: &(dyn Fn(MigrationProgress) + Send + Sync),
) -> Result<MigrationReport, OAuthError> {
    let active = cipher.active_key_id().clone();
    let report = MigrationReport {
        migration: "rewrap",
        dry_run: !options.run,
        active_key: active.to_string(),
        ..MigrationReport::default()
    };
    let needed = std::sync::atomic::AtomicU64::new(0);
    let scanned = std::sync::atomic::AtomicU64::new(0);
    let counts = each_record(store, None, &options, now_ms, progress, |r| {
        let (needed, scanned, active) = (&needed, &scanned, &active);
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            scanned.fetch_add(1, Relaxed);
            let Ok(mut t) = TokenRecord::from_record(&r) else {
                return Outcome::Failed;
            };
            let Some((user, provider)) = owner_of(&r) else {
                return Outcome::Failed;
            };
            if r.status < STATUS_FIRST_SEALED {
                // Plaintext: not this migration's (see the census).
                return Outcome::AlreadyDone;
            }
            let stale = |v: &str| FieldCipher::key_id_of(v).is_some_and(|id| &id != active);
            let any_stale = [&t.refresh_token, &t.access_token]
                .into_iter()
                .flatten()
                .any(|v| stale(v));
            if !any_stale {
                return Outcome::AlreadyDone;
            }
            needed.fetch_add(1, Relaxed);
            if !options.run {
                return Outcome::AlreadyDone;
            }
            for (which, value) in [
                ("refresh_token", &mut t.refresh_token),
                ("access_token", &mut t.access_token),
            ] {
                let Some(v) = value.as_ref().filter(|v| stale(v)) else {
                    continue;
                };
                let resealed = match open(cipher, &user, provider, which, v) {
                    Ok(plain) => seal(cipher, &user, provider, which, plain.expose()).await,
                    Err(e) => Err(e),
                };
                match resealed {
                    Ok(s) => *value = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "a token could not be re-sealed");
                        return Outcome::Failed;
                    }
                }
            }
            replace(store, &r, r.status + 1, &t, now_ms()).await
        }
    })
    .await?;
    finish(store, &options, now_ms(), report, counts, needed, scanned).await
}
