//! Password hashing with argon2id, on a bounded pool.
//!
//! Parameters default to OWASP's recommendation for argon2id (19 MiB of
//! memory, 2 iterations, 1 lane). Hashes are PHC strings, so they carry
//! their parameters: a hash made with older parameters still verifies, and
//! [`Verdict::needs_rehash`] tells the caller to replace it.
//!
//! Hashing takes ~14 ms of one core, so it runs on Tokio's blocking pool
//! behind a semaphore with one permit per core: a burst of logins queues
//! instead of starving other requests, and a caller that waits longer
//! than the queue timeout gets [`PasswordError::Busy`].
//!
//! Unknown users are checked against a dummy hash made with the same
//! parameters, so "no such email" and "wrong password" take the same time.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

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
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
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

impl PasswordHasher {
    /// A hasher with `params`, one concurrent hash per core, and a queue
    /// timeout of 10 s. Computes the dummy hash (one hash's time).
    ///
    /// # Errors
    /// [`PasswordError::Internal`] for parameters argon2 rejects.
    pub fn new(params: HashParams) -> Result<Self, PasswordError> {
        let argon = argon(params)?;
        let dummy = hash_blocking(&argon, "alvryn dummy password for unknown users")?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Ok(Self {
            params,
            argon: Arc::new(argon),
            permits: Arc::new(Semaphore::new(cores)),
            queue_timeout: Duration::from_secs(10),
            dummy: dummy.into(),
        })
    }

    /// How long a hash may wait for a free core before [`PasswordError::Busy`].
    #[must_use]
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// The parameters new hashes use.
    #[must_use]
    pub fn params(&self) -> HashParams {
        self.params
    }

    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(
            self.queue_timeout,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .map_err(|_| PasswordError::Busy)?
        .map_err(|_| PasswordError::Internal)?;
        let argon = Arc::clone(&self.argon);
        let out = tokio::task::spawn_blocking(move || {
            let out = f(&argon);
            drop(permit);
            out
        })
        .await
        .map_err(|_| PasswordError::Internal)?;
        Ok(out)
    }

    /// A PHC string for `password`.
    ///
    /// # Errors
    /// [`PasswordError::Busy`], [`PasswordError::Internal`].
    pub async fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        let pw = password.clone();
        self.on_pool(move |a| hash_blocking(a, pw.expose())).await?
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
        self.on_pool(move |a| {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Verdict {
                    valid: false,
                    needs_rehash: false,
                };
            };
            let ok = a.verify_password(pw.expose().as_bytes(), &parsed).is_ok();
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
    async fn a_full_queue_is_busy_not_a_hang() {
        let h = PasswordHasher::new(FAST)
            .unwrap()
            .queue_timeout(Duration::from_millis(1));
        // Hold every permit.
        let held: Vec<_> = (0..h.permits.available_permits())
            .map(|_| h.permits.clone().try_acquire_owned().unwrap())
            .collect();
        let err = h.hash(&SecretString::from("x")).await.unwrap_err();
        assert!(matches!(err, PasswordError::Busy));
        drop(held);
        assert!(h.hash(&SecretString::from("x")).await.is_ok());
    }
}
