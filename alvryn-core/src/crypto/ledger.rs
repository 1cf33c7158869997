//! How many encryptions each key has performed, across every process and
//! restart.
//!
//! AES-GCM with random 96-bit nonces stays within NIST SP 800-38D's bound
//! (nonce collision probability at most 2^-32) only while one key seals at
//! most 2^32 messages. A counter in memory forgets on restart and does not
//! see other processes, so the cipher *reserves* encryptions from a
//! durable ledger in blocks: one durable write per block (65 536 by
//! default), and the hot path is a single atomic decrement.
//!
//! Counts are kept per [`KeyFingerprint`], derived from the key bytes,
//! not per key label: the bound belongs to the key, whatever it is called.
//! The ledger is always an explicit choice (the second argument of
//! [`FieldCipher::builder`](super::FieldCipher::builder)); nothing falls
//! back to counting in memory.
//!
//! Blocks start small and grow: a cipher's first reservation is 256
//! encryptions, and each refill doubles it up to the block maximum
//! (65 536 by default), so a process that starts often and encrypts
//! little does not spend 65 536 encryptions of the key per start.
//!
//! Failure modes:
//! * Counts recorded by earlier versions under the key's label are not
//!   lost: when a key's fingerprint has no count yet and its label does,
//!   the cipher's first reservation under the fingerprint includes the
//!   label's count (reserved and never used). Two processes doing this at
//!   once both add it: the ledger over-counts, never under-counts. During
//!   a rolling upgrade, reservations an older process still makes under
//!   the label after that first reservation are not carried over: finish
//!   the upgrade before a key nears its limit.
//! * A block reserved by a process that then exits is never returned: the
//!   ledger over-counts, never under-counts. The bound holds; a key is
//!   retired a little early.
//! * When the ledger cannot be written (disk full, store down) the cipher
//!   refuses to encrypt rather than encrypt uncounted. Decryption never
//!   touches the ledger.
//! * Under layers (timeouts, limits), a ledger is served by
//!   [`StoreService`](crate::store::StoreService) as the typed operations
//!   [`Reserve`](crate::store::service::Reserve) and
//!   [`Reserved`](crate::store::service::Reserved), and
//!   [`ServiceStore`](crate::store::ServiceStore) adapts the stack back;
//!   a timeout there is [`LedgerError::Storage`]: nothing granted.
//! * At the limit, [`UsageLedger::reserve`] grants nothing and the cipher
//!   answers [`CipherError::KeyExhausted`](super::CipherError::KeyExhausted):
//!   rotate the key.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::keys::KeyFingerprint;

/// The most messages one key may seal: 2^32.
pub const MAX_ENCRYPTIONS_PER_KEY: u64 = 1 << 32;

/// A grant from the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Encryptions granted by this call (at most the count asked for; less
    /// only when the limit is near).
    pub granted: u64,
    /// Encryptions reserved for this key in total, by every process, after
    /// this call.
    pub total: u64,
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The key has reached its limit; nothing was granted.
    #[error("key {fingerprint} has used all {limit} encryptions it may perform")]
    LimitReached {
        /// The exhausted key's fingerprint.
        fingerprint: KeyFingerprint,
        /// The limit that was reached.
        limit: u64,
    },
    /// The ledger's storage failed; nothing was granted.
    #[error("the encryption usage ledger could not be read or written")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Durable per-key encryption counts, keyed by [`KeyFingerprint`].
///
/// Implementations must make a grant durable before returning it, and must
/// be safe against concurrent `reserve` calls from several processes
/// sharing the same storage: two callers never receive overlapping grants
/// that together exceed `limit`. Store the count under
/// [`KeyFingerprint::as_str`] (a short ASCII string): entries written by
/// earlier versions under a key label are then found by the same lookup.
#[async_trait]
pub trait UsageLedger: Send + Sync + 'static {
    /// Reserves up to `count` encryptions of the key fingerprinted `key`,
    /// never letting the key's total exceed `limit`.
    ///
    /// # Errors
    /// * [`LedgerError::LimitReached`] when the total already equals
    ///   `limit` (nothing granted).
    /// * [`LedgerError::Storage`] when the grant could not be made durable
    ///   (nothing granted).
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError>;

    /// The total reserved so far for the key fingerprinted `key` (0 for a
    /// key never used).
    ///
    /// # Errors
    /// [`LedgerError::Storage`] when the ledger cannot be read.
    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError>;
}

pub(crate) fn grant(
    current: u64,
    count: u64,
    limit: u64,
    key: &KeyFingerprint,
) -> Result<Reservation, LedgerError> {
    let left = limit.saturating_sub(current);
    let granted = count.min(left);
    if granted == 0 {
        return Err(LedgerError::LimitReached {
            fingerprint: key.clone(),
            limit,
        });
    }
    Ok(Reservation {
        granted,
        total: current + granted,
    })
}

/// A ledger in memory, for tests and examples. It forgets on restart, so
/// it does not enforce the bound across processes.
#[derive(Debug, Default, Clone)]
pub struct MemoryLedger {
    counts: Arc<Mutex<HashMap<KeyFingerprint, u64>>>,
}

impl MemoryLedger {
    /// An empty ledger.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl UsageLedger for MemoryLedger {
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = counts.get(key).copied().unwrap_or(0);
        let r = grant(current, count, limit, key)?;
        counts.insert(key.clone(), r.total);
        Ok(r)
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(counts.get(key).copied().unwrap_or(0))
    }
}

/// A ledger in one JSON file, shared safely by every process on the
/// machine that points at the same path (the server and its worker).
///
/// Each reservation takes an exclusive advisory lock on `<path>.lock`,
/// reads the file, writes the new totals to a temporary file, `fsync`s it
/// and renames it over the old one, so a crash leaves either the old or
/// the new totals, never a torn file. A file that exists but cannot be
/// parsed is an error, never silently reset to zero.
#[derive(Debug, Clone)]
pub struct FileLedger {
    path: Arc<PathBuf>,
}

impl FileLedger {
    /// A ledger stored at `path` (created on first reservation).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Arc::new(path.into()),
        }
    }

    /// Where the totals are kept.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn storage(e: impl std::error::Error + Send + Sync + 'static) -> LedgerError {
        LedgerError::Storage(Box::new(e))
    }

    fn lock(path: &Path) -> Result<File, LedgerError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_path))
            .map_err(Self::storage)?;
        f.lock().map_err(Self::storage)?;
        Ok(f)
    }

    fn read(path: &Path) -> Result<BTreeMap<String, u64>, LedgerError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(Self::storage),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Self::storage(e)),
        }
    }

    fn write(path: &Path, counts: &BTreeMap<String, u64>) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec_pretty(counts).map_err(Self::storage)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp).map_err(Self::storage)?;
        f.write_all(&bytes).map_err(Self::storage)?;
        f.sync_all().map_err(Self::storage)?;
        drop(f);
        fs::rename(&tmp, path).map_err(Self::storage)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Self::storage)?;
        }
        Ok(())
    }

    fn reserve_blocking(
        path: &Path,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let _lock = Self::lock(path)?;
        let mut counts = Self::read(path)?;
        let current = counts.get(key.as_str()).copied().unwrap_or(0);
        let r = grant(current, count, limit, key)?;
        counts.insert(key.as_str().to_owned(), r.total);
        Self::write(path, &counts)?;
        Ok(r)
    }
}

#[async_trait]
impl UsageLedger for FileLedger {
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let path = Arc::clone(&self.path);
        let key = key.clone();
        tokio::task::spawn_blocking(move || Self::reserve_blocking(&path, &key, count, limit))
            .await
            .map_err(Self::storage)?
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        let path = Arc::clone(&self.path);
        let counts = tokio::task::spawn_blocking(move || {
            let _lock = Self::lock(&path)?;
            Self::read(&path)
        })
        .await
        .map_err(Self::storage)??;
        Ok(counts.get(key.as_str()).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fingerprint standing for the key made of `s`'s bytes, repeated.
    fn kid(s: &str) -> KeyFingerprint {
        let bytes: Vec<u8> = s.bytes().cycle().take(32).collect();
        KeyFingerprint::of(&crate::secret::SecretBytes::new(bytes))
    }

    #[tokio::test]
    async fn grants_stop_exactly_at_the_limit() {
        let l = MemoryLedger::new();
        let k = kid("a");
        assert_eq!(
            l.reserve(&k, 4, 10).await.unwrap(),
            Reservation {
                granted: 4,
                total: 4
            }
        );
        assert_eq!(
            l.reserve(&k, 4, 10).await.unwrap(),
            Reservation {
                granted: 4,
                total: 8
            }
        );
        assert_eq!(
            l.reserve(&k, 4, 10).await.unwrap(),
            Reservation {
                granted: 2,
                total: 10
            }
        );
        assert!(matches!(
            l.reserve(&k, 4, 10).await,
            Err(LedgerError::LimitReached { limit: 10, .. })
        ));
        assert_eq!(l.reserved(&kid("other")).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn file_ledger_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let k = kid("k1");
        FileLedger::new(&path).reserve(&k, 100, 1000).await.unwrap();
        let reopened = FileLedger::new(&path);
        assert_eq!(reopened.reserved(&k).await.unwrap(), 100);
        assert_eq!(reopened.reserve(&k, 100, 1000).await.unwrap().total, 200);
    }

    #[tokio::test]
    async fn concurrent_reservations_never_overlap_or_exceed_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let k = kid("k1");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            // A fresh ledger per task, as separate processes would have.
            let l = FileLedger::new(&path);
            let k = k.clone();
            tasks.push(tokio::spawn(async move { l.reserve(&k, 7, 100).await }));
        }
        let mut granted = 0;
        let mut totals = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await.unwrap() {
                granted += r.granted;
                totals.push(r.total);
            }
        }
        let grants = totals.len();
        totals.sort_unstable();
        totals.dedup();
        assert_eq!(
            totals.len(),
            grants,
            "two grants ended at the same total: they overlapped"
        );
        assert_eq!(
            granted, 100,
            "every encryption up to the limit is granted once"
        );
        assert_eq!(FileLedger::new(&path).reserved(&k).await.unwrap(), 100);
    }

    #[tokio::test]
    async fn the_service_view_keeps_the_contract_and_layer_errors_refuse() {
        use std::time::Duration;
        let svc = tower::ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service(crate::store::StoreService::new(MemoryLedger::new()));
        let l = crate::store::ServiceStore::new(svc);
        let k = kid("k");
        assert_eq!(
            l.reserve(&k, 6, 10).await.unwrap(),
            Reservation {
                granted: 6,
                total: 6
            }
        );
        assert_eq!(
            l.reserve(&k, 6, 10).await.unwrap(),
            Reservation {
                granted: 4,
                total: 10
            }
        );
        assert!(matches!(
            l.reserve(&k, 1, 10).await,
            Err(LedgerError::LimitReached { .. })
        ));
        assert_eq!(l.reserved(&k).await.unwrap(), 10);

        // A ledger that hangs: the timeout layer turns it into a storage
        // error, so nothing is granted.
        struct Hung;
        #[async_trait]
        impl UsageLedger for Hung {
            async fn reserve(
                &self,
                _: &KeyFingerprint,
                _: u64,
                _: u64,
            ) -> Result<Reservation, LedgerError> {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                unreachable!("the timeout fires first")
            }
            async fn reserved(&self, _: &KeyFingerprint) -> Result<u64, LedgerError> {
                Ok(0)
            }
        }
        let svc = tower::ServiceBuilder::new()
            .timeout(Duration::from_millis(10))
            .service(crate::store::StoreService::new(Hung));
        assert!(matches!(
            crate::store::ServiceStore::new(svc)
                .reserve(&k, 1, 10)
                .await,
            Err(LedgerError::Storage(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupt_ledger_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        fs::write(&path, b"{not json").unwrap();
        let err = FileLedger::new(&path)
            .reserve(&kid("k"), 1, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::Storage(_)));
    }
}
