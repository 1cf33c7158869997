//! Counting encryptions without a locked instruction per encryption.
//!
//! A [`FieldCipher`](super::FieldCipher) reserves blocks of encryptions
//! from the durable ledger into a shared [`Slots`] pool. Each thread takes
//! up to [`THREAD_BATCH`] slots from the pool at once into a thread-local
//! cache and spends them with a plain decrement: an atomic read-modify-write
//! per encryption costs more than the rest of the envelope's bookkeeping
//! together (it waits for the store buffer to drain).
//!
//! Slots are never created here, only moved, so no more encryptions happen
//! than the ledger granted. A thread gives its unspent slots back when it
//! switches to another pool, when it exits, and when [`Slots::flush_local`]
//! is called; until then they count as spent, which errs on the safe side
//! of the limit (at most `THREAD_BATCH` per thread).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Slots a thread takes from the pool at once.
pub(crate) const THREAD_BATCH: u64 = 32;

/// The shared pool of encryptions reserved from the ledger and not yet
/// handed to a thread.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    pool: AtomicU64,
}

struct ThreadCache {
    owner: Option<Weak<Slots>>,
    left: u64,
}

impl ThreadCache {
    fn owned_by(&self, slots: &Arc<Slots>) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(slots)))
    }

    /// Returns unspent slots to their pool, if it still exists.
    fn give_back(&mut self) {
        if let Some(owner) = self.owner.take().and_then(|w| w.upgrade())
            && self.left > 0
        {
            owner.pool.fetch_add(self.left, Ordering::AcqRel);
        }
        self.left = 0;
    }
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        self.give_back();
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const {
        RefCell::new(ThreadCache { owner: None, left: 0 })
    };
}

impl Slots {
    /// Adds slots granted by the ledger.
    pub(crate) fn add(&self, n: u64) {
        self.pool.fetch_add(n, Ordering::AcqRel);
    }

    /// Slots in the pool (not counting those held by threads).
    pub(crate) fn pooled(&self) -> u64 {
        self.pool.load(Ordering::Acquire)
    }

    /// Takes up to `want` slots from the pool; returns how many.
    fn take_from_pool(&self, want: u64) -> u64 {
        self.pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p > 0).then(|| p - p.min(want))
            })
            .map_or(0, |p| p.min(want))
    }

    /// Takes one slot: from this thread's cache when it holds slots of
    /// this pool, otherwise a batch from the pool. `false` when the pool
    /// is empty (the caller refills it from the ledger).
    #[inline]
    pub(crate) fn try_take(self: &Arc<Self>) -> bool {
        CACHE
            .try_with(|cache| {
                // Defensive: nothing called while the cache is borrowed
                // can come back here, but a re-entrant call must not panic.
                let Ok(mut cache) = cache.try_borrow_mut() else {
                    return self.take_from_pool(1) == 1;
                };
                if cache.left > 0 && cache.owned_by(self) {
                    cache.left -= 1;
                    return true;
                }
                let got = self.take_from_pool(THREAD_BATCH);
                if got == 0 {
                    return false;
                }
                if !cache.owned_by(self) {
                    cache.give_back();
                    cache.owner = Some(Arc::downgrade(self));
                }
                cache.left += got - 1;
                true
            })
            // The thread's cache is already destroyed (a thread-local
            // destructor is running): go to the pool.
            .unwrap_or_else(|_| self.take_from_pool(1) == 1)
    }

    /// Returns this thread's unspent slots of this pool to it, so the
    /// pool's count is exact as far as this thread is concerned.
    pub(crate) fn flush_local(self: &Arc<Self>) {
        let _ = CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut()
                && cache.owned_by(self)
            {
                let left = std::mem::take(&mut cache.left);
                self.pool.fetch_add(left, Ordering::AcqRel);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_more_than_was_added() {
        let slots = Arc::new(Slots::default());
        slots.add(70);
        let taken = (0..100).filter(|_| slots.try_take()).count();
        assert_eq!(taken, 70);
        assert!(!slots.try_take());
    }

    #[test]
    fn switching_pools_gives_the_unspent_slots_back() {
        let a = Arc::new(Slots::default());
        let b = Arc::new(Slots::default());
        a.add(100);
        b.add(100);
        assert!(a.try_take());
        assert_eq!(a.pooled(), 100 - THREAD_BATCH);
        assert!(b.try_take());
        // a's 31 unspent slots went back when the thread switched to b.
        assert_eq!(a.pooled(), 99);
        b.flush_local();
        assert_eq!(b.pooled(), 99);
    }

    #[test]
    fn threads_together_spend_exactly_the_pool() {
        let slots = Arc::new(Slots::default());
        slots.add(10_000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&slots);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while s.try_take() {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 10_000);
    }

    #[test]
    fn threads_switching_pools_never_overspend_and_lose_nothing_on_flush() {
        let pools = [Arc::new(Slots::default()), Arc::new(Slots::default())];
        for p in &pools {
            p.add(5_000);
        }
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let pools = pools.clone();
                std::thread::spawn(move || {
                    let mut taken = [0u64; 2];
                    for i in 0..4_000usize {
                        // Each thread alternates in its own rhythm and
                        // flushes now and then.
                        let k = (i / (t + 1)) % 2;
                        if pools[k].try_take() {
                            taken[k] += 1;
                        }
                        if i % (7 + t) == 0 {
                            pools[k].flush_local();
                        }
                    }
                    for p in &pools {
                        p.flush_local();
                    }
                    taken
                })
            })
            .collect();
        let mut taken = [0u64; 2];
        for h in handles {
            let t = h.join().unwrap();
            taken[0] += t[0];
            taken[1] += t[1];
        }
        for (k, p) in pools.iter().enumerate() {
            assert!(taken[k] <= 5_000, "pool {k} overspent: {}", taken[k]);
            // Every thread flushed before exiting: all unspent slots are
            // back in the pool.
            assert_eq!(p.pooled() + taken[k], 5_000, "pool {k}");
        }
        // About 12,000 attempts per pool of 5,000: each ran dry, except
        // for what threads held when their last attempt on it came, at
        // most THREAD_BATCH - 1 each.
        for t in taken {
            assert!(t >= 5_000 - 6 * (THREAD_BATCH - 1), "{taken:?}");
        }
    }

    #[test]
    fn an_exiting_thread_returns_its_slots() {
        let slots = Arc::new(Slots::default());
        slots.add(100);
        let s = Arc::clone(&slots);
        std::thread::spawn(move || assert!(s.try_take()))
            .join()
            .unwrap();
        assert_eq!(slots.pooled(), 99);
    }
}
