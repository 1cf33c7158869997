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

/// A token record to migrate: its payload, user and provider.
struct Token {
    record: Record,
    data: TokenRecord,
    user: String,
    provider: Provider,
}

impl Token {
    /// The record parsed, with the user and provider its key names
    /// (`user:provider`); `None` for a damaged record.
    fn parse(record: Record) -> Option<Self> {
        let data = TokenRecord::from_record(&record).ok()?;
        let (user, provider) = record.key.rsplit_once(':')?;
        let provider = Provider::parse(provider)?;
        let user = (!user.is_empty()).then(|| user.to_owned())?;
        Some(Self {
            record,
            data,
            user,
            provider,
        })
    }

    /// Replaces each stored token that `pick` selects with what `f` makes
    /// of it; `false` (logged) when `f` fails for one.
    async fn rewrite<F, Fut>(&mut self, pick: impl Fn(&str) -> bool, f: F) -> bool
    where
        F: Fn(&'static str, String) -> Fut,
        Fut: Future<Output = Result<String, OAuthError>>,
    {
        for (which, value) in [
            ("refresh_token", &mut self.data.refresh_token),
            ("access_token", &mut self.data.access_token),
        ] {
            let Some(v) = value.clone().filter(|v| pick(v)) else {
                continue;
            };
            match f(which, v).await {
                Ok(new) => *value = Some(new),
                Err(e) => {
                    tracing::warn!(error = %e, "a provider token could not be migrated");
                    return false;
                }
            }
        }
        true
    }

    /// Writes the rewritten payload at status `to`, if the record is still
    /// what was read.
    async fn write(&self, store: &dyn StoreBackend, to: u32, now_ms: i64) -> Outcome {
        let moved = store
            .advance(&Advance {
                ns: TOKEN_NS.to_owned(),
                key: self.record.key.clone(),
                to,
                data: Some(self.data.to_bytes()),
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
}

impl TokenRecord {
    /// The stored tokens, refresh then access.
    fn values(&self) -> impl Iterator<Item = &str> {
        [&self.refresh_token, &self.access_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

fn is_plain(v: &str) -> bool {
    !v.starts_with(TEXT_PREFIX)
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
                    status: self.status.map(Into::into),
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
    /// A dry run found that it needs the migration.
    WouldMigrate,
}

/// One record's outcome, and whether it needed the migration (a record
/// that did may still end `ChangedMeanwhile` or `Failed`).
struct Step {
    outcome: Outcome,
    needed: bool,
}

impl From<Outcome> for Step {
    fn from(outcome: Outcome) -> Self {
        let needed = matches!(outcome, Outcome::WouldMigrate);
        Self { outcome, needed }
    }
}

impl Step {
    /// A record that needed the migration and ended so.
    fn needed(outcome: Outcome) -> Self {
        Self {
            outcome,
            needed: true,
        }
    }
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
/// time, `concurrency` at once, reporting progress after each page, and
/// tallies the steps into `report`; then takes the census.
async fn run_steps<F, Fut>(
    store: &dyn StoreBackend,
    status: Option<u32>,
    options: &MigrationOptions,
    now_ms: &dyn Fn() -> i64,
    progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    mut report: MigrationReport,
    step: F,
) -> Result<MigrationReport, OAuthError>
where
    F: Fn(Record) -> Fut,
    Fut: Future<Output = Step>,
{
    let batch = options.batch.max(1);
    let total = count(store, status, batch, now_ms()).await?;
    progress(MigrationProgress { done: 0, total });
    let mut pages = Pager::new(status, batch);
    while let Some(page) = pages.next(store, now_ms()).await? {
        report.scanned += page.len() as u64;
        let mut steps = futures_util::stream::iter(page.into_iter().map(&step))
            .buffer_unordered(options.concurrency.max(1));
        while let Some(s) = steps.next().await {
            report.needed += u64::from(s.needed);
            match s.outcome {
                Outcome::Migrated => report.migrated += 1,
                Outcome::AlreadyDone => report.already_done += 1,
                Outcome::ChangedMeanwhile => report.changed_meanwhile += 1,
                Outcome::Failed => report.failed += 1,
                Outcome::WouldMigrate => {}
            }
        }
        progress(MigrationProgress {
            done: report.scanned,
            total: total.max(report.scanned),
        });
    }
    census(store, options, now_ms(), &mut report).await?;
    Ok(report)
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
            if t.values().any(is_plain) {
                report.plaintext_left += 1;
            }
            for id in t.values().filter_map(FieldCipher::key_id_of) {
                *report.values_by_key.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    Ok(())
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
    // A dry run also counts the sealed ones; a run visits only the
    // plaintext ones.
    let status = options.run.then_some(STATUS_PLAINTEXT);
    run_steps(
        store,
        status,
        &options,
        now_ms,
        progress,
        report,
        |r| async move {
            let Some(mut t) = Token::parse(r) else {
                return Outcome::Failed.into();
            };
            if t.record.status != STATUS_PLAINTEXT {
                return Outcome::AlreadyDone.into();
            }
            if !t.data.values().any(is_plain) {
                if !options.run {
                    return Outcome::AlreadyDone.into();
                }
                // Marked plaintext, holds none: just mark it sealed.
                return match t.write(store, STATUS_FIRST_SEALED, now_ms()).await {
                    Outcome::Migrated => Outcome::AlreadyDone,
                    other => other,
                }
                .into();
            }
            if !options.run {
                return Outcome::WouldMigrate.into();
            }
            let (user, provider) = (t.user.clone(), t.provider);
            let sealed = t
                .rewrite(is_plain, |which, v| {
                    let user = &user;
                    async move { seal(cipher, user, provider, which, &v).await }
                })
                .await;
            if !sealed {
                return Step::needed(Outcome::Failed);
            }
            Step::needed(t.write(store, STATUS_FIRST_SEALED, now_ms()).await)
        },
    )
    .await
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
    let stale = |v: &str| FieldCipher::key_id_of(v).is_some_and(|id| id != active);
    run_steps(
        store,
        None,
        &options,
        now_ms,
        progress,
        report,
        |r| async move {
            let Some(mut t) = Token::parse(r) else {
                return Outcome::Failed.into();
            };
            // Plaintext records are not this migration's (see the census).
            if t.record.status < STATUS_FIRST_SEALED || !t.data.values().any(stale) {
                return Outcome::AlreadyDone.into();
            }
            if !options.run {
                return Outcome::WouldMigrate.into();
            }
            let (user, provider) = (t.user.clone(), t.provider);
            let resealed = t
                .rewrite(stale, |which, v| {
                    let user = &user;
                    async move {
                        let plain = open(cipher, user, provider, which, &v)?;
                        seal(cipher, user, provider, which, plain.expose()).await
                    }
                })
                .await;
            if !resealed {
                return Step::needed(Outcome::Failed);
            }
            let to = t.record.status + 1;
            Step::needed(t.write(store, to, now_ms()).await)
        },
    )
    .await
}
