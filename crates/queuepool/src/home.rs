//! [`Home`]: the per-thread references to a pool that guards hold.
//!
//! A guard must keep its pool alive, so it holds a counted reference. Were that a
//! clone of the pool's own `Arc`, every loan would increment and decrement one shared
//! reference count: at 8 tasks on two cores its cache line moves between the cores
//! twice per loan, beside the lock's. Instead each [`Pool`](crate::Pool) handle holds a
//! few homes, each a separately allocated reference to the pool on its own cache line,
//! and a checkout clones the home of the thread it runs on: loans on different threads
//! write different reference counts. (Threads beyond the number of homes share them;
//! a guard dropped on another thread than it was lent on writes its home's count from
//! there. Both are correct, only slower.) A home is reached from the guard through one
//! more pointer, read-only and shared.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::inner::Inner;
use crate::manager::Manager;

/// One counted reference to a pool, on a cache line of its own.
#[repr(align(64))]
pub(crate) struct Home<M: Manager> {
    pub(crate) inner: Arc<Inner<M>>,
}

/// The homes of a pool: a power of two of them, indexed by a thread's number. (Shared
/// by the pool's handles; a handle holds the slice's pointer and length itself, so a
/// checkout reaches its home in two loads.)
pub(crate) struct Homes<M: Manager> {
    each: Arc<[Arc<Home<M>>]>,
}

// Not derived: that would ask `M: Clone`.
impl<M: Manager> Clone for Homes<M> {
    fn clone(&self) -> Self {
        Homes {
            each: self.each.clone(),
        }
    }
}

/// Homes per pool at most (memory: 128 bytes each, and a usage histogram of 384).
const MAX_HOMES: usize = 64;

impl<M: Manager> Homes<M> {
    /// One home per shard of the pool ([`shards`]).
    pub(crate) fn new(inner: &Arc<Inner<M>>) -> Self {
        Homes {
            each: (0..inner.shards)
                .map(|_| {
                    Arc::new(Home {
                        inner: inner.clone(),
                    })
                })
                .collect(),
        }
    }

    /// The home of the calling thread.
    #[inline]
    pub(crate) fn here(&self) -> Arc<Home<M>> {
        self.each[shard(self.each.len())].clone()
    }

    #[cfg(all(test, not(feature = "model-check")))]
    pub(crate) fn len(&self) -> usize {
        self.each.len()
    }

    #[cfg(all(test, not(feature = "model-check")))]
    pub(crate) fn index_of(&self, home: &Arc<Home<M>>) -> Option<usize> {
        self.each.iter().position(|h| Arc::ptr_eq(h, home))
    }
}

/// How many per-thread shards a pool keeps (homes, usage histograms): one per hardware
/// thread, rounded up to a power of two, at most [`MAX_HOMES`].
pub(crate) fn shards() -> usize {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    threads.next_power_of_two().min(MAX_HOMES)
}

/// The calling thread's shard among `n` (a power of two).
#[inline]
pub(crate) fn shard(n: usize) -> usize {
    thread_number() & (n - 1)
}

/// A number per thread, given in the order threads first ask (from 1; 0 is "none
/// yet": a constant-initialized thread local is one load, with no lazy-init check).
#[inline]
fn thread_number() -> usize {
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(0) };
    }
    NUMBER.with(|n| match n.get() {
        0 => {
            static NEXT: AtomicUsize = AtomicUsize::new(1);
            let number = NEXT.fetch_add(1, Relaxed);
            n.set(number);
            number
        }
        number => number,
    })
}
