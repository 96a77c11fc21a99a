//! Containing the manager's panics: every synchronous [`Manager`] method the pool calls
//! goes through these wrappers (the async ones through `FutureExt::catch_unwind` where
//! they are awaited). A panic is logged and counted, and the connection concerned is
//! treated as broken: no slot is lost and the background task goes on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;

use crate::inner::{Conn, Inner, LOG};
use crate::manager::{Health, Manager};
use crate::rt;

impl<M: Manager> Inner<M> {
    /// [`Manager::health`], with a panic contained: a manager that panics says the
    /// connection is broken.
    pub(crate) fn health(&self, conn: &mut Conn<M::Connection>) -> Health {
        let raw = &mut conn.raw;
        match catch_unwind(AssertUnwindSafe(|| self.manager.health(raw))) {
            Ok(health) => health,
            Err(panic) => {
                self.note_panic("health", &*panic);
                Health::Broken
            }
        }
    }

    /// [`Manager::is_disconnect`], with a panic contained (then: not a disconnect).
    pub(crate) fn is_disconnect(&self, error: &M::Error) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.manager.is_disconnect(error))).unwrap_or_else(
            |panic| {
                self.note_panic("is_disconnect", &*panic);
                false
            },
        )
    }

    /// [`Manager::needs_reset`], with a panic contained (then: reset it).
    pub(crate) fn needs_reset(&self, conn: &Conn<M::Connection>) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.manager.needs_reset(&conn.raw))).unwrap_or_else(
            |panic| {
                self.note_panic("needs_reset", &*panic);
                true
            },
        )
    }

    /// Logs and counts a panic of the manager that the pool contained.
    pub(crate) fn note_panic(&self, method: &'static str, panic: &(dyn std::any::Any + Send)) {
        self.counters.manager_panics.fetch_add(1, Relaxed);
        tracing::error!(target: LOG, pool = %self.config.name, method, panic = %rt::panic_message(panic), "Manager panicked; the connection is discarded and the pool goes on");
    }
}
