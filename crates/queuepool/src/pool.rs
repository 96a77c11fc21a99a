//! [`Pool`]: building, checking out, status and closing.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::error::PoolError;
use crate::guard::{PooledConn, reset};
use crate::home::{Home, Homes};
use crate::inner::{Conn, Inner, LOG, Lease, PING_SKIP, Slot, Take, WaitEnd};
#[cfg(not(feature = "model-check"))]
use crate::maintenance;
use crate::manager::{Health, Manager};
use crate::rt;
use crate::stats::{CloseReason, Stats, Status};

/// An async connection pool. Cheap to clone: clones share the same connections.
pub struct Pool<M: Manager> {
    inner: Arc<Inner<M>>,
    /// The references to `inner` that guards hold, one per thread (see `home`).
    homes: Homes<M>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
            homes: self.homes.clone(),
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.config.name)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Pool<M> {
    /// Builds a pool and, with `prefill` (the default), opens `pool_size` connections,
    /// failing fast if the database cannot be reached. Starts the maintenance task
    /// (refill, recycling, overflow trimming) on the current tokio runtime.
    ///
    /// The configuration is validated here too ([`PoolError::Config`]): its fields are
    /// public, so one changed after [`ConfigBuilder::build`](crate::ConfigBuilder::build)
    /// is checked before it can make a pool that never lends.
    ///
    /// # Cancel safety
    /// Cancelling it drops the half-built pool and the connections opened so far.
    pub async fn new(manager: M, config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        let inner = Inner::new(manager, config);
        let pool = Pool {
            homes: Homes::new(&inner),
            inner,
        };
        if pool.inner.config.prefill {
            pool.prefill().await?;
        }
        #[cfg(not(feature = "model-check"))]
        {
            tokio::spawn(maintenance::run(
                Arc::downgrade(&pool.inner),
                pool.inner.maintenance.clone(),
            ));
            pool.inner.reaper_started();
            tokio::spawn(crate::inner::run_reaper(
                Arc::downgrade(&pool.inner),
                pool.inner.reaper.clone(),
            ));
        }
        tracing::debug!(target: LOG, pool = %pool.inner.config.name, status = %pool.status(), "Pool created");
        Ok(pool)
    }

    async fn prefill(&self) -> Result<(), PoolError> {
        let parallel = self.inner.config.max_connecting.max(1) as usize;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < parallel {
                let Some(lease) = self.inner.refill_slot() else {
                    break;
                };
                let inner = self.inner.clone();
                tasks.spawn(async move {
                    let deadline = Instant::now() + inner.config.connect_timeout;
                    open(&inner, deadline)
                        .await
                        .map(|conn| lease.put_back(conn))
                });
            }
            match tasks.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(join)) => {
                    // `open` contains the manager's panics; only a cancelled runtime
                    // gets here.
                    return Err(if join.is_panic() {
                        PoolError::ManagerPanic {
                            method: "connect",
                            message: rt::panic_message(&*join.into_panic()).to_owned(),
                        }
                    } else {
                        PoolError::Closed
                    });
                }
            }
        }
    }

    /// Checks out a connection.
    ///
    /// Below the limit it never queues: it takes an idle connection (pre-pinged if
    /// unused for a second, replaced if past `pool_recycle`) or opens one. At the limit
    /// it waits, in arrival order, for at most `pool_timeout`, then fails with
    /// [`PoolError::Timeout`]. It ends within `pool_timeout + connect_timeout`, and at
    /// once with [`PoolError::Closed`] when the pool is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future at any await point (waiting, connecting,
    /// pinging, resetting) frees its slot; a connection it was pinging or resetting is
    /// discarded, never lent half-checked.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConn<M>, PoolError>> + Send + '_ {
        // `#[track_caller]` does not reach into an `async fn`: capture the location here.
        let caller = Location::caller();
        async move {
            let start = Instant::now();
            // The guard's hold on the pool (its thread's home), taken before the lock
            // rather than after it: the same increment, but one task ran 1.0-3.6 %
            // faster with it here, beside the clock read, than after the critical
            // section (four A/Bs, docs/BENCHMARKS.md). A checkout that ends without a
            // guard drops it.
            let home = self.homes.here();
            let inner = &self.inner;
            let first =
                std::future::poll_fn(|cx| Poll::Ready(inner.take_first(start, cx.waker()))).await;
            // A checkout served at once waited for nothing: no clock arithmetic.
            // (`served`: how long it waited, if a hand-off served it.)
            let (take, now, served) = match first {
                // Waiting at the limit, inline: boxing it kept `get()`'s future at 104
                // bytes instead of 296, but cost an allocation per wait. (Registered as
                // a waiter by `take_first`; `wait_slot` unregisters it however it
                // ends.)
                Err((ticket, slot)) => {
                    let (take, now, waited) = self.wait_slot(start, ticket, slot).await?;
                    (take, now, Some(waited))
                }
                Ok(take) => (take, start, None),
            };
            // We hold a slot: it is wrapped (guard or lease) before the next await.
            match take {
                // An idle connection (already counted): lent at once, without an await,
                // when it needs no ping, reset or replacement (the common case).
                Take::Idle(mut conn) => {
                    if inner.ready(&mut conn, now) {
                        let waited = served.unwrap_or_default();
                        return Ok(self.hand_over(home, conn, waited, caller, now));
                    }
                    // Counted again when it is lent, after its check.
                    inner.uncount_lend(served);
                    let lease = Lease::new(inner.clone());
                    Box::pin(self.checkout(lease, Some(conn), start, caller, home)).await
                }
                Take::Connect => {
                    let lease = Lease::new(inner.clone());
                    Box::pin(self.checkout(lease, None, start, caller, home)).await
                }
                Take::Closed => Err(PoolError::Closed),
            }
        }
    }

    /// Waits at the limit, in arrival order, for a slot, at most `pool_timeout`; then
    /// takes what [`Inner::take_first`] would have.
    async fn wait_slot(
        &self,
        start: Instant,
        ticket: u64,
        slot: Slot<M::Connection>,
    ) -> Result<(Take<M::Connection>, Instant, Duration), PoolError> {
        match self.inner.wait_take(start, ticket, slot).await {
            Ok(taken) => Ok(taken),
            Err(WaitEnd::Timeout) => Err(self.timeout_error()),
            Err(WaitEnd::Closed) => Err(PoolError::Closed),
        }
    }

    /// The slow path of a checkout that holds a slot: checks the idle connection it
    /// took, or opens one, until one can be lent; stops at once if the pool is closed.
    async fn checkout(
        &self,
        lease: Lease<M>,
        conn: Option<Conn<M::Connection>>,
        start: Instant,
        caller: &'static Location<'static>,
        home: Arc<Home<M>>,
    ) -> Result<PooledConn<M>, PoolError> {
        let inner = &self.inner;
        let closing = inner.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if inner.is_closed() {
            return Err(PoolError::Closed);
        }
        let find = self.find(conn, start);
        tokio::select! {
            biased;
            found = find => {
                let conn = found?;
                let now = Instant::now();
                if inner.is_closed() {
                    // Opened or checked while the pool closed: never lent.
                    lease.discard(conn, CloseReason::PoolClosed);
                    return Err(PoolError::Closed);
                }
                lease.hand_over();
                Ok(self.lend(home, conn, start, caller, now))
            }
            // Dropping `find` drops a connection being opened, pinged or reset; the
            // lease frees the slot.
            () = closing => Err(PoolError::Closed),
        }
    }

    /// Checks idle connections (starting with `conn`) or opens one, within
    /// `pool_timeout + connect_timeout` of `start`.
    async fn find(
        &self,
        mut conn: Option<Conn<M::Connection>>,
        start: Instant,
    ) -> Result<Conn<M::Connection>, PoolError> {
        let inner = &self.inner;
        let deadline = start + inner.config.pool_timeout + inner.config.connect_timeout;
        loop {
            if Instant::now() >= deadline {
                // Every candidate so far failed its checks: out of time.
                return Err(PoolError::ConnectTimeout(inner.config.connect_timeout));
            }
            let candidate = match conn.take().or_else(|| inner.take_idle()) {
                Some(c) => c,
                None => match wait_connect_slot(inner, start + inner.config.pool_timeout).await? {
                    ConnectSlot::Idle(c) => c,
                    ConnectSlot::Permit(permit) => return open_with(inner, deadline, permit).await,
                },
            };
            if let Some(c) = self.prepare(candidate, deadline).await {
                return Ok(c);
            }
        }
    }

    /// Counts a checkout that started at `start` and is served `now`, and gives it its
    /// guard.
    fn lend(
        &self,
        home: Arc<Home<M>>,
        conn: Conn<M::Connection>,
        start: Instant,
        caller: &'static Location<'static>,
        now: Instant,
    ) -> PooledConn<M> {
        let waited = now - start;
        self.inner.record_lend(waited);
        self.hand_over(home, conn, waited, caller, now)
    }

    /// Gives a counted checkout, which holds a slot, its guard, with the home of the
    /// thread the checkout started on (see `home`).
    #[inline]
    fn hand_over(
        &self,
        home: Arc<Home<M>>,
        conn: Conn<M::Connection>,
        waited: Duration,
        caller: &'static Location<'static>,
        now: Instant,
    ) -> PooledConn<M> {
        let inner = &self.inner;
        inner.metrics.acquire.record(waited.as_secs_f64());
        tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, "Connection checked out from pool");
        PooledConn::new(home, conn, caller, now)
    }

    /// Checks an idle connection before lending it, all within `deadline`; `None` if
    /// it was closed instead.
    async fn prepare(
        &self,
        mut conn: Conn<M::Connection>,
        deadline: Instant,
    ) -> Option<Conn<M::Connection>> {
        let inner = &self.inner;
        let now = Instant::now();
        match inner.health(&mut conn) {
            Health::Ok => {}
            Health::Broken => {
                inner.close_conn(conn, CloseReason::Invalidated);
                return None;
            }
            Health::Disconnected => {
                inner.invalidate_all(Some(&conn));
                inner.close_conn(conn, CloseReason::Invalidated);
                return None;
            }
        }
        if conn.expires.is_some_and(|e| e <= now) {
            inner.close_conn(conn, CloseReason::Recycled);
            return None;
        }
        let suspect = inner.is_suspect(&conn);
        if suspect && !inner.config.pre_ping {
            inner.close_conn(conn, CloseReason::Invalidated);
            return None;
        }
        if conn.needs_reset && reset(inner, &mut conn, deadline).await.is_err() {
            inner.close_conn(conn, CloseReason::Invalidated);
            return None;
        }
        let stale = now.saturating_duration_since(conn.last_used) >= PING_SKIP;
        if suspect || (inner.config.pre_ping && stale) {
            tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, "Pool pre-ping on connection");
            let bound = deadline.min(Instant::now() + inner.config.connect_timeout);
            let generation = inner.generation();
            let ping = AssertUnwindSafe(inner.manager.is_valid(&mut conn.raw)).catch_unwind();
            match rt::deadline(bound, ping).await {
                Ok(Ok(Ok(()))) => {
                    // It answered: no longer suspect (unless invalidated meanwhile).
                    inner.clear_suspicion(&mut conn, generation);
                }
                Ok(Ok(Err(e))) => {
                    tracing::info!(target: LOG, pool = %inner.config.name, conn = conn.id, error = %e, "Pool pre-ping failed");
                    if inner.is_disconnect(&e) {
                        inner.invalidate_all(Some(&conn));
                    }
                    inner.close_conn(conn, CloseReason::Invalidated);
                    return None;
                }
                Ok(Err(panic)) => {
                    inner.note_panic("is_valid", &*panic);
                    inner.close_conn(conn, CloseReason::Invalidated);
                    return None;
                }
                Err(_) => {
                    inner.close_conn(conn, CloseReason::Invalidated);
                    return None;
                }
            }
        }
        Some(conn)
    }

    fn timeout_error(&self) -> PoolError {
        let inner = &self.inner;
        inner.counters.timeouts.fetch_add(1, Relaxed);
        inner.metrics.timeouts.increment(1);
        let status = inner.status();
        let err = PoolError::Timeout {
            pool_size: inner.config.pool_size,
            max_overflow: inner.config.max_overflow,
            timeout: inner.config.pool_timeout,
            waiting: status.waiting,
            checked_out: status.checked_out,
        };
        tracing::warn!(target: LOG, pool = %inner.config.name, "{err}");
        err
    }

    /// Occupancy now; its `Display` is SQLAlchemy's `status()` line.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Counters and time histograms since the pool was built.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The manager.
    pub fn manager(&self) -> &M {
        &self.inner.manager
    }

    /// Treats every connection opened until now as suspect: idle ones are replaced by
    /// the maintenance task or pinged before their next lend. Use it after a failover.
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all(None);
    }

    /// Closes the pool: new checkouts, waiters and checkouts still connecting or
    /// checking a connection fail with [`PoolError::Closed`] at once (a connection
    /// opened after this is closed, never lent); idle connections are closed at once,
    /// lent ones when they come back, waiting at most `grace` for them. Returns how many
    /// were still lent when `grace` ran out.
    ///
    /// # Cancel safety
    /// Cancel safe: the pool is closed from the first poll; cancelling only stops the
    /// wait for lent connections (they are closed when returned).
    pub async fn close(&self, grace: Duration) -> usize {
        let inner = &self.inner;
        for conn in inner.shut() {
            inner.close_conn(conn, CloseReason::PoolClosed);
        }
        let deadline = Instant::now() + grace;
        loop {
            let drained = inner.drained.notified();
            let lent = inner.lent();
            if lent == 0 {
                tracing::debug!(target: LOG, pool = %inner.config.name, "Pool closed");
                return 0;
            }
            if rt::deadline(deadline, drained).await.is_err() {
                let lent = inner.lent();
                tracing::warn!(target: LOG, pool = %inner.config.name, lent, "Pool closed with connections still lent; they are closed when returned");
                return lent;
            }
        }
    }
}

/// What a slot holder without a connection gets: a permit to connect, or an idle
/// connection returned while it waited for one.
enum ConnectSlot<'a, C> {
    Permit(SemaphorePermit<'a>),
    Idle(Conn<C>),
}

/// For a slot holder without a connection: waits (until `deadline`) for a
/// `max_connecting` permit, or takes an idle connection that is returned meanwhile.
async fn wait_connect_slot<M: Manager>(
    inner: &Arc<Inner<M>>,
    deadline: Instant,
) -> Result<ConnectSlot<'_, M::Connection>, PoolError> {
    if let Ok(permit) = inner.connect_sem.try_acquire() {
        return Ok(ConnectSlot::Permit(permit));
    }
    inner.set_connect_waiting(true);
    struct Unregister<'a, M: Manager>(&'a Inner<M>);
    impl<M: Manager> Drop for Unregister<'_, M> {
        fn drop(&mut self) {
            self.0.set_connect_waiting(false);
        }
    }
    let _unregister = Unregister(inner);
    let wait = async {
        loop {
            let notified = inner.idle_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(conn) = inner.take_idle() {
                return Ok(ConnectSlot::Idle(conn));
            }
            tokio::select! {
                permit = inner.connect_sem.acquire() => {
                    return permit.map(ConnectSlot::Permit).map_err(|_| PoolError::Closed);
                }
                () = &mut notified => {}
            }
        }
    };
    match rt::deadline(deadline, wait).await {
        Ok(slot) => slot,
        Err(_) => {
            inner.counters.timeouts.fetch_add(1, Relaxed);
            inner.metrics.timeouts.increment(1);
            Err(PoolError::ConnectQueueTimeout {
                timeout: inner.config.pool_timeout,
                connecting: inner.config.max_connecting as usize,
            })
        }
    }
}

/// Opens one connection for the background refill or prefill: waits for a
/// `max_connecting` permit, all within `connect_timeout` and `deadline`; stops at once
/// when the pool is closed.
pub(crate) async fn open<M: Manager>(
    inner: &Arc<Inner<M>>,
    deadline: Instant,
) -> Result<Conn<M::Connection>, PoolError> {
    let closing = inner.closing.notified();
    tokio::pin!(closing);
    closing.as_mut().enable();
    if inner.is_closed() {
        return Err(PoolError::Closed);
    }
    let bound = deadline.min(Instant::now() + inner.config.connect_timeout);
    let open = async {
        match rt::deadline(bound, inner.connect_sem.acquire()).await {
            Ok(Ok(permit)) => open_with(inner, bound, permit).await,
            Ok(Err(_)) => Err(PoolError::Closed),
            Err(_) => Err(PoolError::ConnectTimeout(inner.config.connect_timeout)),
        }
    };
    tokio::select! {
        biased;
        conn = open => conn,
        // `close()` does not wait for a refill to finish connecting.
        () = closing => Err(PoolError::Closed),
    }
}

/// Opens one connection with a `max_connecting` permit, within `connect_timeout` and
/// `deadline`.
async fn open_with<M: Manager>(
    inner: &Arc<Inner<M>>,
    deadline: Instant,
    permit: SemaphorePermit<'_>,
) -> Result<Conn<M::Connection>, PoolError> {
    let started = Instant::now();
    let bound = deadline.min(started + inner.config.connect_timeout);
    // A connection opened while an invalidation happens is suspect too.
    let generation = inner.generation();
    let connect = AssertUnwindSafe(inner.manager.connect()).catch_unwind();
    let result = rt::deadline(bound, connect).await;
    drop(permit);
    let took = started.elapsed();
    match result {
        Ok(Err(panic)) => {
            inner.counters.connect_errors.fetch_add(1, Relaxed);
            inner.note_panic("connect", &*panic);
            Err(PoolError::ManagerPanic {
                method: "connect",
                message: rt::panic_message(&*panic).to_owned(),
            })
        }
        Ok(Ok(Ok(raw))) => {
            inner.counters.created.fetch_add(1, Relaxed);
            inner.metrics.created.increment(1);
            inner.metrics.connect.record(took.as_secs_f64());
            let conn = inner.new_conn(raw, generation);
            tracing::debug!(target: LOG, pool = %inner.config.name, conn = conn.id, connect_ms = took.as_millis() as u64, "Created new connection");
            Ok(conn)
        }
        Ok(Ok(Err(e))) => {
            inner.counters.connect_errors.fetch_add(1, Relaxed);
            tracing::warn!(target: LOG, pool = %inner.config.name, error = %e, "Connection attempt failed");
            Err(PoolError::Connect(Box::new(e)))
        }
        Err(_) => {
            inner.counters.connect_errors.fetch_add(1, Relaxed);
            tracing::warn!(target: LOG, pool = %inner.config.name, "Connection attempt timed out");
            Err(PoolError::ConnectTimeout(inner.config.connect_timeout))
        }
    }
}

#[cfg(all(test, not(feature = "model-check")))]
mod tests {
    use super::*;
    use crate::test_unit::Unit;

    /// A fast checkout and a return write one cache line of the pool's state that both
    /// threads write, the first (mutex, idle queue, permits, zero-wait count), and a
    /// return its own thread's usage histogram; the second and third lines are only
    /// read (`State`'s layout). Reordering
    /// the fields would make each loan move more lines between cores (8-task scenario:
    /// ~8 % fewer loans a second before the three-line layout).
    // The offsets assume std's futex mutex (one word before the data): Linux.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_fast_path_fields_sit_on_their_three_cache_lines() {
        let pool = Pool::new(Unit, PoolConfig::default()).await.unwrap();
        let lines = pool.inner.hot_offsets();
        for (line, fields) in lines.iter().enumerate() {
            for &(name, offset) in fields {
                assert_eq!(offset / 64, line, "{name} at byte {offset}");
            }
        }
    }

    /// A pool on a runtime of its own, for tests that check out from two OS threads
    /// (`rt.block_on` on each).
    fn pool_on_a_runtime() -> (tokio::runtime::Runtime, Pool<Unit>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pool = rt.block_on(Pool::new(Unit, PoolConfig::default())).unwrap();
        (rt, pool)
    }

    /// A loan holds the pool through its thread's home, so neither the checkout nor
    /// the return writes the pool's shared reference count (which every other loan on
    /// every other core would write too); guards lent on different threads hold
    /// different homes (`home`).
    #[test]
    fn loans_on_different_threads_hold_the_pool_through_different_homes() {
        let (rt, pool) = pool_on_a_runtime();
        let shared = Arc::strong_count(&pool.inner);
        let here = rt.block_on(pool.get()).unwrap();
        assert_eq!(
            Arc::strong_count(&pool.inner),
            shared,
            "a checkout cloned the pool's own reference"
        );
        let home = |guard: &PooledConn<Unit>| pool.homes.index_of(PooledConn::home(guard));
        let mine = home(&here).expect("the guard holds one of the pool's homes");
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                let guard = rt.block_on(pool.get()).unwrap();
                let other = home(&guard);
                drop(guard);
                other
            })
            .join()
            .unwrap()
        });
        if pool.homes.len() > 1 {
            assert_ne!(other, Some(mine), "two threads, one home");
        }
        drop(here);
        assert_eq!(
            Arc::strong_count(&pool.inner),
            shared,
            "a return dropped a reference it did not take"
        );
    }

    /// A return records its loan's usage in its own thread's shard of the usage
    /// histogram (so the line it writes stays with its core), and `stats()` adds the
    /// shards up.
    #[test]
    fn returns_on_different_threads_record_usage_in_different_shards() {
        let (rt, pool) = pool_on_a_runtime();
        drop(rt.block_on(pool.get()).unwrap());
        std::thread::scope(|s| {
            s.spawn(|| drop(rt.block_on(pool.get()).unwrap()));
        });
        let shards = pool.inner.usage_shard_counts();
        assert_eq!(shards.iter().sum::<u64>(), 2, "{shards:?}");
        if shards.len() > 1 {
            assert_eq!(
                shards.iter().filter(|&&n| n == 1).count(),
                2,
                "two threads, one shard: {shards:?}"
            );
        }
        assert_eq!(pool.stats().usage.count, 2);
    }

    /// Homes hold the pool, the pool does not hold them: once the handles and the
    /// guards are gone, the pool is freed (no cycle), even if a guard outlives every
    /// handle.
    #[tokio::test]
    async fn a_guard_that_outlives_the_pool_handles_frees_the_pool_when_dropped() {
        let pool = Pool::new(Unit, PoolConfig::default()).await.unwrap();
        let weak = Arc::downgrade(&pool.inner);
        let guard = pool.get().await.unwrap();
        let clone = pool.clone();
        drop(pool);
        drop(clone);
        assert!(weak.upgrade().is_some(), "the guard keeps the pool alive");
        drop(guard);
        assert!(
            weak.upgrade().is_none(),
            "the pool outlived its handles and guards"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_lend_limit_takes_effect_as_lent_connections_come_back() {
        let config = PoolConfig::builder()
            .pool_size(3)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let pool = Pool::new(Unit, config).await.unwrap();
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        // One free slot is withdrawn at once, one is owed by a borrower.
        pool.inner.set_lend_limit(1);
        assert!(pool.get().await.unwrap_err().is_timeout());
        drop(a); // pays the debt: still nothing to lend
        assert!(pool.get().await.unwrap_err().is_timeout());
        drop(b);
        let c = pool.get().await.unwrap();
        assert!(pool.get().await.unwrap_err().is_timeout(), "limit 1");
        drop(c);
        pool.inner.set_lend_limit(3);
        let all = [
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
        ];
        assert!(pool.get().await.unwrap_err().is_timeout());
        drop(all);
    }
}
