//! The same key loading through the `tower::Service` view, so timeouts,
//! retries and concurrency limits are ordinary layers.
//!
//! `KeyProviderService` turns any `KeyProvider` into a
//! `Service<LoadKeys>`; `ServiceKeyProvider` turns the layered service
//! back into a `KeyProvider` that `FieldCipher` and the server accept.
//!
//! Run: `cargo run --example tower_key_provider`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alvryn_core::crypto::{FieldCipher, FieldContext, KeyMaterial, KeySet, MemoryLedger};
use alvryn_core::key::{KeyError, KeyProvider, KeyProviderService, ServiceKeyProvider};
use async_trait::async_trait;
use tower::ServiceBuilder;

/// A provider backed by a remote secret store that is slow at first: the
/// first call hangs, as a real network call sometimes does.
struct FlakyRemote {
    calls: AtomicUsize,
    key: KeyMaterial,
}

#[async_trait]
impl KeyProvider for FlakyRemote {
    async fn load(&self) -> Result<KeySet, KeyError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(KeySet::single(self.key.clone()))
    }
}

/// Retry a load that failed for lack of availability, up to the given number of extra times.
#[derive(Clone)]
struct RetryUnavailable(usize);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for RetryUnavailable {
    type Future = std::future::Ready<()>;
    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let remote = FlakyRemote {
        calls: AtomicUsize::new(0),
        key: KeyMaterial::fingerprinted(alvryn_core::SecretBytes::random(32)?),
    };
    let remote = Arc::new(remote);

    // Each attempt gets 200 ms; a timed-out attempt is retried twice.
    let svc = ServiceBuilder::new()
        .retry(RetryUnavailable(2))
        .timeout(Duration::from_millis(200))
        .service(KeyProviderService::new(Arc::clone(&remote)));
    let provider = ServiceKeyProvider::new(svc);

    let keys = provider.load().await?;
    println!(
        "loaded key {} after {} attempt(s)",
        keys.active.id(),
        remote.calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        remote.calls.load(Ordering::SeqCst),
        2,
        "the first attempt timed out and was retried"
    );

    // An in-memory ledger is enough for an example; a real deployment
    // passes its store (or a `FileLedger`) so counts survive restarts.
    let cipher = FieldCipher::builder(keys, Arc::new(MemoryLedger::new())).build()?;
    let ctx = FieldContext::new("users", "user-7", "phone");
    let sealed = cipher.encrypt(&ctx, b"+44 20 7946 0000").await?;
    assert_eq!(cipher.decrypt(&ctx, &sealed)?.expose(), b"+44 20 7946 0000");
    println!("round trip ok: {sealed}");

    // With no retries, a hung provider surfaces as `Unavailable`, in bounded time.
    let hung = Arc::new(FlakyRemote {
        calls: AtomicUsize::new(0),
        key: KeyMaterial::fingerprinted(alvryn_core::SecretBytes::random(32)?),
    });
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(KeyProviderService::new(hung));
    match ServiceKeyProvider::new(svc).load().await {
        Err(KeyError::Unavailable(_)) => println!("hung provider: unavailable after the timeout"),
        other => return Err(format!("expected Unavailable, got {other:?}").into()),
    }
    Ok(())
}
