//! [`PooledConn`], the guard a checkout returns.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::{AssertUnwindSafe, Location};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::config::ResetOnReturn;
use crate::home::Home;
use crate::inner::{Conn, Inner, LOG, Lease};
use crate::manager::{Health, Manager};
use crate::rt;
use crate::stats::CloseReason;

/// A connection lent by the pool. It derefs to the connection and goes back to the
/// pool when dropped: reset (rolled back), then lent again, or closed if it is broken.
///
/// Its own operations are associated functions (`PooledConn::detach(conn)`) so they
/// never shadow the connection's methods.
#[must_use = "a connection goes back to the pool as soon as the guard is dropped"]
pub struct PooledConn<M: Manager> {
    /// The loan, until the guard gives it back (dropped or detached). One `Option` for
    /// all of it: once given back, the guard's drop glue checks one field. (Kept small:
    /// guards are moved through every layer of futures above a checkout.)
    loan: Option<Loan<M>>,
}

/// What a guard holds: one slot of the pool and its connection.
struct Loan<M: Manager> {
    /// The pool, through the home of the thread that lent it (see `home`).
    home: Arc<Home<M>>,
    conn: Conn<M::Connection>,
    checked_out_at: Instant,
    broken: bool,
    leak: Option<Box<LeakWatch>>,
}

struct LeakWatch {
    task: tokio::task::AbortHandle,
    info: Arc<LeakInfo>,
}

/// Shared between a guard and its leak-watch task.
#[derive(Default)]
struct LeakInfo {
    reported: AtomicBool,
    /// Who holds the connection, when the checkout site does not say it (set by
    /// [`PooledConn::set_holder`]).
    holder: std::sync::Mutex<Option<String>>,
}

/// The invariant behind every `expect` on a guard's fields.
const HELD: &str = "a guard holds its slot and connection until it is dropped or detached";

impl<M: Manager> PooledConn<M> {
    #[inline]
    pub(crate) fn new(
        home: Arc<Home<M>>,
        conn: Conn<M::Connection>,
        caller: &'static Location<'static>,
        now: Instant,
    ) -> Self {
        let leak = home
            .inner
            .config
            .leak_threshold
            .and_then(|threshold| spawn_leak_watch(&home.inner, conn.id, threshold, caller));
        PooledConn {
            loan: Some(Loan {
                home,
                conn,
                checked_out_at: now,
                broken: false,
                leak,
            }),
        }
    }

    /// Takes the connection out of the pool: it no longer counts against the limit and
    /// is not returned on drop. Its slot is freed for another checkout.
    pub fn detach(mut this: Self) -> M::Connection {
        let Loan {
            home,
            mut conn,
            checked_out_at,
            leak,
            ..
        } = this.loan.take().expect(HELD);
        end_loan(&home.inner, &mut conn, checked_out_at, leak);
        home.inner.record_usage(&mut conn);
        home.inner.release_slot();
        conn.raw
    }

    /// Tells the pool that an operation on this connection failed. If the error means
    /// the connection is gone, the connection is discarded when the guard is dropped and
    /// every idle connection opened before now is treated as suspect (pinged or
    /// replaced): after a database restart the pool recovers as a whole, without one
    /// failed request per stale connection. Returns whether it was a disconnect.
    pub fn report_error(this: &mut Self, error: &M::Error) -> bool {
        let loan = this.loan.as_mut().expect(HELD);
        let disconnect = loan.home.inner.is_disconnect(error);
        if disconnect && !loan.broken {
            loan.broken = true;
            loan.home.inner.invalidate_all(Some(&loan.conn));
        }
        disconnect
    }

    /// Names who holds the connection, for the `leak_threshold` warning, when the
    /// checkout site is not enough: a framework's extractor calls `get()` for every
    /// handler, so it sets the route here. Free when `leak_threshold` is off.
    pub fn set_holder(this: &mut Self, holder: impl Into<String>) {
        if let Some(leak) = this.loan.as_ref().and_then(|loan| loan.leak.as_ref()) {
            *leak
                .info
                .holder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(holder.into());
        }
    }

    /// Marks the connection as unusable: it is closed instead of returned.
    pub fn invalidate(this: &mut Self) {
        this.loan.as_mut().expect(HELD).broken = true;
    }

    /// How long the connection has been checked out.
    pub fn held_for(this: &Self) -> std::time::Duration {
        this.loan.as_ref().expect(HELD).checked_out_at.elapsed()
    }

    /// The home through which this guard holds the pool.
    #[cfg(all(test, not(feature = "model-check")))]
    pub(crate) fn home(this: &Self) -> &Arc<Home<M>> {
        &this.loan.as_ref().expect(HELD).home
    }

    /// The pool's identifier of this connection (as in the log lines).
    pub fn id(this: &Self) -> u64 {
        this.loan.as_ref().map_or(0, |loan| loan.conn.id)
    }
}

/// Ends a loan that began at `checked_out_at`: reads the clock, records the usage time
/// (kept in the connection for the pool's histogram), stops the leak watch; returns
/// the instant of the end.
fn end_loan<M: Manager>(
    inner: &Inner<M>,
    conn: &mut Conn<M::Connection>,
    checked_out_at: Instant,
    leak: Option<Box<LeakWatch>>,
) -> Instant {
    let now = Instant::now();
    let held = now - checked_out_at;
    inner.metrics.usage.record(held.as_secs_f64());
    if let Some(leak) = leak {
        leak.task.abort();
        if leak.info.reported.load(Relaxed) {
            tracing::info!(target: LOG, pool = %inner.config.name, held_ms = held.as_millis() as u64,
                "Previously reported leaked connection returned to pool");
        }
    }
    conn.usage = Some(held);
    now
}

fn spawn_leak_watch<M: Manager>(
    inner: &Arc<Inner<M>>,
    conn: u64,
    threshold: std::time::Duration,
    caller: &'static Location<'static>,
) -> Option<Box<LeakWatch>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let info = Arc::new(LeakInfo::default());
    let shared = info.clone();
    let weak = Arc::downgrade(inner);
    let task = handle.spawn(async move {
        tokio::time::sleep(threshold).await;
        if let Some(inner) = weak.upgrade() {
            shared.reported.store(true, Relaxed);
            inner.counters.leaks.fetch_add(1, Relaxed);
            let holder = shared
                .holder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let holder = holder.map(|h| format!(" by {h}")).unwrap_or_default();
            tracing::warn!(
                target: LOG,
                pool = %inner.config.name,
                conn,
                location = %caller,
                threshold_ms = threshold.as_millis() as u64,
                "Connection leak detection triggered: connection checked out at {caller}{holder} held longer than leak_threshold"
            );
        }
    });
    Some(Box::new(LeakWatch {
        task: task.abort_handle(),
        info,
    }))
}

impl<M: Manager> Drop for PooledConn<M> {
    fn drop(&mut self) {
        let Some(Loan {
            home,
            mut conn,
            checked_out_at,
            broken,
            leak,
        }) = self.loan.take()
        else {
            return; // detached
        };
        // The slot is held by the lease from here on, whatever happens below.
        let lease = Lease::through(home);
        let inner = &**lease.inner();
        // What becomes of the connection is decided first, and the loan's end read
        // last, just before the pool's lock: the same clock read, but one task ran 1.5 %
        // and 2.6 % faster with it there than at the start of the return (two A/Bs,
        // docs/BENCHMARKS.md).
        let discard = broken
            || std::thread::panicking()
            || match inner.health(&mut conn) {
                Health::Ok => false,
                Health::Broken => true,
                Health::Disconnected => {
                    inner.invalidate_all(Some(&conn));
                    true
                }
            };
        let needs_reset = !discard
            && inner.config.reset_on_return == ResetOnReturn::Rollback
            && inner.needs_reset(&conn);
        let now = end_loan(inner, &mut conn, checked_out_at, leak);
        conn.last_used = now;
        if discard {
            return lease.discard(conn, CloseReason::Invalidated);
        }
        tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, "Connection being returned to pool");
        if !needs_reset || inner.is_closed() {
            return lease.put_back(conn);
        }
        // `Drop` cannot await: the reset runs in a task that holds the slot, so the
        // connection reaches the next borrower only once it is clean. If the task is
        // cancelled (runtime shutting down), the lease frees the slot and the
        // connection is dropped, never lent with an open transaction.
        if !rt::can_spawn() {
            // No runtime to run the reset on: it runs before the next lend instead.
            conn.needs_reset = true;
            return lease.put_back(conn);
        }
        // Poll the reset once here: a manager that can reset without I/O is done at
        // once, without a task; a real ROLLBACK is pending and goes on in a task
        // bounded by `connect_timeout`. Either way the connection goes back only after
        // its reset. The boxed future is small: the timer exists only in the task.
        tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, "Connection rollback-on-return");
        let deadline = now + inner.config.connect_timeout;
        let (pool, id) = (Arc::downgrade(lease.inner()), conn.id);
        let mut op = Box::pin(async move {
            // A panicking reset is contained: the connection is discarded, the slot freed.
            let reset = AssertUnwindSafe(lease.inner().manager.reset(&mut conn.raw));
            let result = reset.catch_unwind().await;
            (lease, conn, result)
        });
        let mut cx = Context::from_waker(Waker::noop());
        match op.as_mut().poll(&mut cx) {
            Poll::Ready((lease, conn, result)) => finish_reset(lease, conn, result),
            Poll::Pending => rt::spawn(async move {
                match rt::deadline(deadline, op).await {
                    Ok((lease, conn, result)) => finish_reset(lease, conn, result),
                    // The reset hung: the connection was dropped with the future, its
                    // slot freed by the lease inside.
                    Err(_) => {
                        if let Some(inner) = pool.upgrade() {
                            inner.note_close(id, CloseReason::Invalidated);
                        }
                    }
                }
            }),
        }
    }
}

/// Puts a connection back after its reset, or closes it if the reset failed or
/// panicked.
fn finish_reset<M: Manager>(
    lease: Lease<M, Arc<Home<M>>>,
    mut conn: Conn<M::Connection>,
    result: std::thread::Result<Result<(), M::Error>>,
) {
    let result = result
        .map_err(|panic| lease.inner().note_panic("reset", &*panic))
        .ok();
    match reset_outcome(lease.inner(), &mut conn, result) {
        Ok(()) => lease.put_back(conn),
        Err(()) => lease.discard(conn, CloseReason::Invalidated),
    }
}

/// Resets a connection (rollback) at checkout, bounded by `connect_timeout` and by the
/// checkout's `deadline`. A disconnect error invalidates the pool; a panic is contained.
pub(crate) async fn reset<M: Manager>(
    inner: &Arc<Inner<M>>,
    conn: &mut Conn<M::Connection>,
    deadline: Instant,
) -> Result<(), ()> {
    tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, "Connection rollback-on-return");
    let bound = deadline.min(Instant::now() + inner.config.connect_timeout);
    let reset = AssertUnwindSafe(inner.manager.reset(&mut conn.raw)).catch_unwind();
    let result = match rt::deadline(bound, reset).await {
        Ok(Ok(result)) => Some(result),
        Ok(Err(panic)) => {
            inner.note_panic("reset", &*panic);
            None
        }
        Err(_) => None,
    };
    reset_outcome(inner, conn, result)
}

/// What a reset's result (`None`: it timed out) means: `Ok` the connection is clean,
/// `Err` it must be closed. A disconnect error invalidates the pool.
fn reset_outcome<M: Manager>(
    inner: &Inner<M>,
    conn: &mut Conn<M::Connection>,
    result: Option<Result<(), M::Error>>,
) -> Result<(), ()> {
    match result {
        Some(Ok(())) => {
            conn.needs_reset = false;
            Ok(())
        }
        Some(Err(e)) => {
            tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, error = %e, "Connection reset failed");
            if inner.is_disconnect(&e) {
                inner.invalidate_all(Some(conn));
            }
            Err(())
        }
        None => Err(()),
    }
}

impl<M: Manager> Deref for PooledConn<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.loan.as_ref().expect(HELD).conn.raw
    }
}

impl<M: Manager> DerefMut for PooledConn<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.loan.as_mut().expect(HELD).conn.raw
    }
}

impl<M: Manager> fmt::Debug for PooledConn<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("id", &Self::id(self))
            .field("held_for", &Self::held_for(self))
            .finish_non_exhaustive()
    }
}
