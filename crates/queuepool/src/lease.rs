//! [`Lease`]: one slot of the pool as an RAII value.

use std::sync::Arc;

use crate::inner::{Conn, Inner};
use crate::manager::Manager;
use crate::stats::CloseReason;

/// One slot of the pool, held by a checkout before it has a connection to lend, by a
/// refill, or by a reset in progress. Dropping it frees the slot.
pub(crate) struct Lease<M: Manager> {
    pub(crate) inner: Arc<Inner<M>>,
    armed: bool,
    refill: bool,
}

impl<M: Manager> Lease<M> {
    /// Wraps a slot the caller holds.
    pub(crate) fn new(inner: Arc<Inner<M>>) -> Self {
        Lease {
            inner,
            armed: true,
            refill: false,
        }
    }

    /// Wraps a slot taken by the background refill.
    pub(crate) fn refill(inner: Arc<Inner<M>>) -> Self {
        Lease {
            inner,
            armed: true,
            refill: true,
        }
    }

    /// Forgets the slot without giving it back (the caller accounts for it).
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Hands the slot over to a guard, which gives it back itself.
    pub(crate) fn into_inner(mut self) -> Arc<Inner<M>> {
        self.disarm();
        self.finish_refill();
        self.inner.clone()
    }

    /// Puts a clean connection back into the pool through this slot.
    pub(crate) fn put_back(mut self, conn: Conn<M::Connection>) {
        self.disarm();
        self.finish_refill();
        self.inner.put_back(conn);
    }

    /// Discards a connection held through this slot.
    pub(crate) fn discard(mut self, conn: Conn<M::Connection>, reason: CloseReason) {
        self.disarm();
        self.finish_refill();
        self.inner.discard(conn, reason);
    }

    fn finish_refill(&mut self) {
        if std::mem::take(&mut self.refill) {
            self.inner.end_refill();
        }
    }
}

impl<M: Manager> Drop for Lease<M> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.finish_refill();
        self.inner.release_slot();
    }
}
