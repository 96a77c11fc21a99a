//! [`Lease`]: one slot of the pool as an RAII value.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::home::Home;
use crate::inner::{Conn, Inner};
use crate::manager::Manager;
use crate::stats::CloseReason;

/// One slot of the pool, held by a checkout before it has a connection to lend, by a
/// refill, or by a reset in progress. Dropping it frees the slot. It holds the pool
/// through `R`: its own reference, or the home of the guard it came from (so that a
/// guard's return does not touch the pool's shared reference count; see `home`).
pub(crate) struct Lease<M: Manager, R: PoolRef<M> = Arc<Inner<M>>> {
    pool: R,
    armed: bool,
    refill: bool,
    _manager: PhantomData<fn() -> M>,
}

/// A counted reference to a pool.
pub(crate) trait PoolRef<M: Manager> {
    fn pool(&self) -> &Arc<Inner<M>>;
}

impl<M: Manager> PoolRef<M> for Arc<Inner<M>> {
    #[inline]
    fn pool(&self) -> &Arc<Inner<M>> {
        self
    }
}

impl<M: Manager> PoolRef<M> for Arc<Home<M>> {
    #[inline]
    fn pool(&self) -> &Arc<Inner<M>> {
        &self.inner
    }
}

impl<M: Manager> Lease<M> {
    /// Wraps a slot the caller holds.
    pub(crate) fn new(inner: Arc<Inner<M>>) -> Self {
        Lease::through(inner)
    }

    /// Wraps a slot taken by the background refill.
    pub(crate) fn refill(inner: Arc<Inner<M>>) -> Self {
        let mut lease = Lease::through(inner);
        lease.refill = true;
        lease
    }
}

impl<M: Manager, R: PoolRef<M>> Lease<M, R> {
    /// Wraps a slot the caller holds, with the pool reached through `pool`.
    #[inline]
    pub(crate) fn through(pool: R) -> Self {
        Lease {
            pool,
            armed: true,
            refill: false,
            _manager: PhantomData,
        }
    }

    /// The pool.
    #[inline]
    pub(crate) fn inner(&self) -> &Arc<Inner<M>> {
        self.pool.pool()
    }

    /// Forgets the slot without giving it back (the caller accounts for it).
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Hands the slot over to a guard, which gives it back itself.
    pub(crate) fn hand_over(mut self) {
        self.disarm();
        self.finish_refill();
    }

    /// Puts a clean connection back into the pool through this slot.
    pub(crate) fn put_back(mut self, conn: Conn<M::Connection>) {
        self.disarm();
        self.finish_refill();
        self.inner().put_back(conn);
    }

    /// Discards a connection held through this slot.
    pub(crate) fn discard(mut self, conn: Conn<M::Connection>, reason: CloseReason) {
        self.disarm();
        self.finish_refill();
        self.inner().discard(conn, reason);
    }

    fn finish_refill(&mut self) {
        if std::mem::take(&mut self.refill) {
            self.inner().end_refill();
        }
    }
}

impl<M: Manager, R: PoolRef<M>> Drop for Lease<M, R> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.finish_refill();
        self.inner().release_slot();
    }
}
