//! Password hashing with argon2id, on a bounded pool.
//!
//! Parameters default to OWASP's recommendation for argon2id (19 MiB of
//! memory, 2 iterations, 1 lane). Hashes are PHC strings, so they carry
//! their parameters: a hash made with older parameters still verifies, and
//! [`Verdict::needs_rehash`] tells the caller to replace it.
//!
//! Hashing takes ~14 ms of one core and 19 MiB of memory, so it runs on
//! a fixed set of worker threads (one per core by default) behind a
//! bounded queue: a burst of logins queues up to the bound, and every
//! request beyond it gets [`PasswordError::Busy`] at once, without a
//! thread or a memory block of its own. Each worker keeps its argon2
//! memory and reuses it for every verification, so memory after any burst
//! stays near the idle figure plus one block per worker.
//!
//! Unknown users are checked against a dummy hash made with the same
//! parameters, so "no such email" and "wrong password" take the same time.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq as _;

use crate::secret::SecretString;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl HashParams {
    /// OWASP's recommendation: m=19456 KiB, t=2, p=1.
    pub const OWASP: HashParams = HashParams {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP
    }
}

/// Why hashing or verifying could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Too many hashes queued; try again shortly.
    #[error("the password hashing pool is busy")]
    Busy,
    /// Hashing failed (invalid parameters, blocking pool gone).
    #[error("password hashing failed")]
    Internal,
}

/// The outcome of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The password matched.
    pub valid: bool,
    /// It matched, but the stored hash uses other parameters or another
    /// algorithm: store a fresh hash.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct PasswordHasher {
    params: HashParams,
    argon: Arc<Argon2<'static>>,
    pool: Arc<Pool>,
    dummy: Arc<str>,
}

/// A job for a hashing worker, given the worker's reusable memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The workers and their bounded queue. Dropping the last handle ends
/// them.
struct Pool {
    jobs: SyncSender<Job>,
    workers: usize,
}

impl Pool {
    fn start(workers: usize, queue: usize) -> Result<Self, PasswordError> {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("alvryn-argon2-{i}"))
                .spawn(move || work(&rx))
                .map_err(|_| PasswordError::Internal)?;
        }
        Ok(Self { jobs, workers })
    }
}

/// A worker: one job at a time, its memory kept between jobs.
fn work(rx: &Mutex<Receiver<Job>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        // A panicking job loses its answer (the caller sees Internal),
        // not the worker.
        let _ = catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
    }
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("workers", &self.pool.workers)
            .finish_non_exhaustive()
    }
}

fn argon(params: HashParams) -> Result<Argon2<'static>, PasswordError> {
    let p = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|_| PasswordError::Internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
}

fn hash_blocking(argon: &Argon2<'_>, password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|_| PasswordError::Internal)?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Internal)
}

/// Verifies `password` against a parsed PHC hash, computing in `memory`
/// (grown once to the largest cost seen, then reused).
fn verify_in(memory: &mut Vec<Block>, password: &[u8], phc: &PasswordHash<'_>) -> bool {
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(phc), phc.hash, phc.salt)
    else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let need = params.block_count();
    if memory.len() < need {
        memory.resize(need, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..need])
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

impl PasswordHasher {
    /// A hasher with `params`, one worker per core and a queue of 16
    /// hashes per worker. Computes the dummy hash (one hash's time).
    ///
    /// # Errors
    /// [`PasswordError::Internal`] for parameters argon2 rejects, or when
    /// the workers cannot be started.
    pub fn new(params: HashParams) -> Result<Self, PasswordError> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self::with_workers(params, cores, cores * 16)
    }

    /// A hasher with `workers` threads and room for `queue` waiting
    /// hashes; beyond that, [`PasswordError::Busy`] at once.
    ///
    /// # Errors
    /// As [`PasswordHasher::new`].
    pub fn with_workers(
        params: HashParams,
        workers: usize,
        queue: usize,
    ) -> Result<Self, PasswordError> {
        let argon = argon(params)?;
        let dummy = hash_blocking(&argon, "alvryn dummy password for unknown users")?;
        Ok(Self {
            params,
            argon: Arc::new(argon),
            pool: Arc::new(Pool::start(workers.max(1), queue)?),
            dummy: dummy.into(),
        })
    }

    /// The parameters new hashes use.
    #[must_use]
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Runs `f` on a worker, or answers [`PasswordError::Busy`] at once
    /// when the queue is full.
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>, &mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let argon = Arc::clone(&self.argon);
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(f(&argon, memory));
        });
        self.pool.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PasswordError::Busy,
            TrySendError::Disconnected(_) => PasswordError::Internal,
        })?;
        rx.await.map_err(|_| PasswordError::Internal)
    }

    /// Checks a new password ([`check_password`](super::check_password):
    /// zxcvbn is CPU-heavy too) and hashes it, both on a worker, so
    /// neither runs on the async executor.
    ///
    /// # Errors
    /// [`PasswordError::Busy`], [`PasswordError::Internal`]; a weak
    /// password is `Ok(Err(_))`.
    pub async fn hash_new(
        &self,
        password: &SecretString,
        email: &str,
    ) -> Result<Result<String, super::WeakPassword>, PasswordError> {
        let (pw, email) = (password.clone(), email.to_owned());
        let outcome: Result<Result<String, PasswordError>, super::WeakPassword> = self
            .on_pool(move |a, _| {
                super::check_password(pw.expose(), &email)?;
                Ok(hash_blocking(a, pw.expose()))
            })
            .await?;
        match outcome {
            Err(weak) => Ok(Err(weak)),
            Ok(hashed) => hashed.map(Ok),
        }
    }

    /// A PHC string for `password`.
    ///
    /// # Errors
    /// [`PasswordError::Busy`], [`PasswordError::Internal`].
    pub async fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        let pw = password.clone();
        self.on_pool(move |a, _| hash_blocking(a, pw.expose()))
            .await?
    }

    /// Checks `password` against `phc`, or against the dummy hash when
    /// `phc` is `None` (unknown user: same work, always invalid).
    ///
    /// # Errors
    /// [`PasswordError::Busy`], [`PasswordError::Internal`]. A malformed
    /// stored hash is an invalid password, not an error.
    pub async fn verify(
        &self,
        password: &SecretString,
        phc: Option<&str>,
    ) -> Result<Verdict, PasswordError> {
        let pw = password.clone();
        let known = phc.is_some();
        let phc: Arc<str> = phc.map_or_else(|| Arc::clone(&self.dummy), Arc::from);
        let want = self.params;
        self.on_pool(move |_, memory| {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Verdict {
                    valid: false,
                    needs_rehash: false,
                };
            };
            let ok = verify_in(memory, pw.expose().as_bytes(), &parsed);
            let current = parsed.algorithm.as_str() == "argon2id"
                && Params::try_from(&parsed).is_ok_and(|p| {
                    p.m_cost() == want.memory_kib
                        && p.t_cost() == want.iterations
                        && p.p_cost() == want.parallelism
                });
            Verdict {
                valid: ok && known,
                needs_rehash: ok && known && !current,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Small parameters keep unit tests fast; the defaults are tested in
    // the end-to-end suite.
    const FAST: HashParams = HashParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hash_and_verify() {
        let h = PasswordHasher::new(FAST).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert_ne!(h.hash(&pw).await.unwrap(), phc, "salted");
        assert_eq!(
            h.verify(&pw, Some(&phc)).await.unwrap(),
            Verdict {
                valid: true,
                needs_rehash: false
            }
        );
        let wrong = SecretString::from("Correct horse battery staple");
        assert!(!h.verify(&wrong, Some(&phc)).await.unwrap().valid);
        assert!(!h.verify(&pw, Some("not a phc string")).await.unwrap().valid);
        assert!(
            !h.verify(&pw, None).await.unwrap().valid,
            "unknown users never verify"
        );
    }

    #[tokio::test]
    async fn changed_parameters_ask_for_a_rehash() {
        let old = PasswordHasher::new(FAST).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        let phc = old.hash(&pw).await.unwrap();
        let new = PasswordHasher::new(HashParams {
            memory_kib: 512,
            ..FAST
        })
        .unwrap();
        assert_eq!(
            new.verify(&pw, Some(&phc)).await.unwrap(),
            Verdict {
                valid: true,
                needs_rehash: true
            }
        );
        let wrong = SecretString::from("nope");
        assert_eq!(
            new.verify(&wrong, Some(&phc)).await.unwrap(),
            Verdict {
                valid: false,
                needs_rehash: false
            }
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_at_once() {
        // Costly enough that nothing finishes while the burst is queued.
        let slow = HashParams {
            memory_kib: 8 * 1024,
            iterations: 4,
            parallelism: 1,
        };
        let h = PasswordHasher::with_workers(slow, 1, 2).unwrap();
        let phc = h.hash(&SecretString::from("pw")).await.unwrap();
        let pw = SecretString::from("pw");
        let burst = (0..40).map(|_| h.verify(&pw, Some(&phc)));
        let results = futures_util::future::join_all(burst).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(PasswordError::Busy)))
            .count();
        let valid = results
            .iter()
            .filter(|r| matches!(r, Ok(v) if v.valid))
            .count();
        assert_eq!(busy + valid, 40, "{results:?}");
        // One running and two queued, give or take one the worker took
        // off the queue while the burst was being submitted.
        assert!((2..=4).contains(&valid), "{valid} accepted: {results:?}");
        // And the pool serves again once the burst is over.
        assert!(h.verify(&pw, Some(&phc)).await.unwrap().valid);
    }

    /// `check_password` asserts (in debug builds) that it is not on the
    /// executor: these calls from inside a runtime prove `hash_new` moved
    /// it to a worker, 1 KiB passwords included.
    #[tokio::test]
    async fn new_passwords_are_judged_and_hashed_off_the_executor() {
        let h = PasswordHasher::new(FAST).unwrap();
        let long = SecretString::from("correct horse battery staple ".repeat(35).trim_end());
        assert!(long.expose().len() > 1000);
        let phc = h.hash_new(&long, "a@b.co").await.unwrap().unwrap();
        assert!(h.verify(&long, Some(&phc)).await.unwrap().valid);
        let weak = SecretString::from("password123");
        assert_eq!(
            h.hash_new(&weak, "a@b.co").await.unwrap(),
            Err(super::super::WeakPassword::Guessable)
        );
    }

    #[tokio::test]
    async fn older_parameters_verify_in_reused_memory() {
        let h = PasswordHasher::with_workers(FAST, 1, 4).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        // Bigger, then smaller, then equal memory than the worker holds.
        for memory_kib in [1024, 128, 256] {
            let other =
                PasswordHasher::with_workers(HashParams { memory_kib, ..FAST }, 1, 1).unwrap();
            let phc = other.hash(&pw).await.unwrap();
            assert!(h.verify(&pw, Some(&phc)).await.unwrap().valid, "{phc}");
            let wrong = SecretString::from("correct horse battery stapler");
            assert!(!h.verify(&wrong, Some(&phc)).await.unwrap().valid);
        }
    }
}
