//! The shared state of a pool and its accounting: every connection is either idle or
//! belongs to one *slot*, and `idle + slots <= pool_size + max_overflow` always.
//!
//! A slot is held by a checkout from the moment it is granted until its connection is
//! back in the idle queue (or closed); it is represented by a [`Lease`], whose `Drop`
//! gives the slot (and the connection, if any) back, so a cancelled future or a dropped
//! guard can never leak one. At the limit, checkouts queue in arrival order and a freed
//! slot is handed to the first one directly, with its connection: nobody can overtake
//! a waiter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::time::Duration;

use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;

use crate::config::{Order, PoolConfig};
use crate::manager::{Health, Manager};
use crate::rt::{self, Mutex, lock};
use crate::stats::{CloseReason, Counters, LoanStats, MetricHandles, Stats, Status};

pub(crate) const LOG: &str = "queuepool::pool";

/// Connections used within this long are lent without a pre-ping.
pub(crate) const PING_SKIP: Duration = Duration::from_secs(1);

/// A pooled connection and what the pool knows about it.
pub(crate) struct Conn<C> {
    pub(crate) raw: C,
    pub(crate) id: u64,
    /// The pool's invalidation generation when the connection was opened.
    pub(crate) generation: u64,
    pub(crate) expires: Option<Instant>,
    pub(crate) last_used: Instant,
    /// Returned without a reset (no runtime to run it on): reset before the next lend.
    pub(crate) needs_reset: bool,
    /// How long the last borrower held it, recorded when it is put back or discarded.
    pub(crate) usage: Option<Duration>,
}

/// What a checkout gets from the state machine without waiting.
pub(crate) enum Acquire<M: Manager> {
    /// An idle connection that needs no check, with a slot, counted as a checkout
    /// that waited 0 (same ownership rule as `Idle`).
    Ready(Conn<M::Connection>),
    /// An idle connection, with a slot: the caller owns the slot from here on and
    /// must wrap it (in a [`Lease`] or a guard) before its next await.
    Idle(Conn<M::Connection>),
    /// A slot and the right to open a connection (same ownership rule).
    Connect,
    /// The limit is reached: wait for a slot in arrival order.
    Wait(oneshot::Receiver<Lease<M>>),
    /// The pool is closed.
    Closed,
}

/// A checkout waiting at the limit. Deadlines are `arrival + pool_timeout`, so the
/// queue is sorted by deadline and one timer (the reaper's) serves every waiter.
struct Waiter<M: Manager> {
    #[cfg_attr(feature = "model-check", allow(dead_code))]
    deadline: Instant,
    tx: oneshot::Sender<Lease<M>>,
}

pub(crate) struct State<M: Manager> {
    idle: VecDeque<Conn<M::Connection>>,
    /// Slots held: checkouts (lent, connecting, pinging, resetting, being handed over)
    /// and background refills.
    slots: usize,
    /// Slots held by the background refill.
    refilling: usize,
    /// Slot holders waiting for a `max_connecting` permit.
    connect_waiting: usize,
    waiters: VecDeque<Waiter<M>>,
    closed: bool,
    /// Last time more than `pool_size` connections were needed at once.
    last_overflow_use: Instant,
    loans: LoanStats,
}

pub(crate) struct Inner<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: PoolConfig,
    pub(crate) limit: usize,
    state: Mutex<State<M>>,
    pub(crate) counters: Counters,
    pub(crate) metrics: MetricHandles,
    pub(crate) connect_sem: Semaphore,
    /// Signalled when a connection becomes idle while a slot holder waits to connect.
    pub(crate) idle_notify: Notify,
    /// Wakes the maintenance task (refill needed, pool dropped).
    pub(crate) maintenance: Arc<Notify>,
    /// Wakes the reaper (a waiter arrived in an empty queue, pool dropped).
    pub(crate) reaper: Arc<Notify>,
    /// Signalled when the last slot is released after `close()`.
    pub(crate) drained: Notify,
    /// Bumped by every pool-wide invalidation: connections of an older generation
    /// were opened before it and are suspect. (A counter, not a timestamp: it orders
    /// events exactly even when the clock does not move between them.)
    generation: AtomicU64,
    next_id: AtomicU64,
    /// `state.closed`, readable without the lock on the return path.
    closed_flag: std::sync::atomic::AtomicBool,
}

impl<M: Manager> Inner<M> {
    pub(crate) fn new(manager: M, config: PoolConfig) -> Self {
        let now = Instant::now();
        Inner {
            limit: config.max_connections(),
            connect_sem: Semaphore::new(config.max_connecting as usize),
            metrics: MetricHandles::new(&config.name),
            manager,
            config,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                slots: 0,
                refilling: 0,
                connect_waiting: 0,
                waiters: VecDeque::new(),
                closed: false,
                last_overflow_use: now,
                loans: LoanStats::new(),
            }),
            counters: Counters::new(),
            idle_notify: Notify::new(),
            maintenance: Arc::new(Notify::new()),
            reaper: Arc::new(Notify::new()),
            drained: Notify::new(),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            closed_flag: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes an idle connection, or a slot to open one, or a place in the queue.
    pub(crate) fn acquire(self: &Arc<Self>, now: Instant) -> Acquire<M> {
        let mut st = lock(&self.state);
        if st.closed {
            return Acquire::Closed;
        }
        if let Some(mut conn) = self.pop_idle(&mut st) {
            st.slots += 1;
            self.note_usage(&mut st);
            if self.ready(&mut conn, now) {
                st.loans.checkouts += 1;
                st.loans.wait.record(Duration::ZERO);
                return Acquire::Ready(conn);
            }
            return Acquire::Idle(conn);
        }
        if st.idle.len() + st.slots < self.limit {
            st.slots += 1;
            self.note_usage(&mut st);
            drop(st);
            return Acquire::Connect;
        }
        let (tx, rx) = oneshot::channel();
        // Prune abandoned places (cancelled waiters) only when the queue doubles:
        // amortized O(1); `put_back` skips closed senders anyway.
        let n = st.waiters.len();
        if n >= 16 && n.is_power_of_two() {
            st.waiters.retain(|w| !w.tx.is_closed());
        }
        if st.waiters.is_empty() {
            self.reaper.notify_one();
        }
        st.waiters.push_back(Waiter {
            deadline: now + self.config.pool_timeout,
            tx,
        });
        self.publish(&st);
        Acquire::Wait(rx)
    }

    /// Whether an idle connection can be lent as it is: no reset, ping or replacement.
    /// The manager's `health` is consulted too: it sees a connection the server closed
    /// while it sat idle (a terminated backend) for free, even within `PING_SKIP`.
    pub(crate) fn ready(&self, conn: &mut Conn<M::Connection>, now: Instant) -> bool {
        let stale = now.saturating_duration_since(conn.last_used) >= PING_SKIP;
        self.manager.health(&mut conn.raw) == Health::Ok
            && !conn.needs_reset
            && conn.expires.is_none_or(|e| e > now)
            && !self.is_suspect(conn)
            && (!self.config.pre_ping || !stale)
    }

    /// Counts a checkout that went through the slow path.
    pub(crate) fn record_lend(&self, waited: Duration) {
        let mut st = lock(&self.state);
        st.loans.checkouts += 1;
        st.loans.wait.record(waited);
    }

    /// Records how long a connection that is not put back was held.
    pub(crate) fn record_usage(&self, conn: &mut Conn<M::Connection>) {
        if let Some(held) = conn.usage.take() {
            lock(&self.state).loans.usage.record(held);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let loans = lock(&self.state).loans.clone();
        self.counters.snapshot(&loans)
    }

    /// For a slot holder without a connection: an idle connection if one appeared.
    pub(crate) fn take_idle(&self) -> Option<Conn<M::Connection>> {
        let mut st = lock(&self.state);
        let conn = self.pop_idle(&mut st);
        if conn.is_some() {
            self.publish(&st);
        }
        conn
    }

    /// Registers (or unregisters) a slot holder waiting for a connect permit; while one
    /// waits, returns signal `idle_notify`.
    pub(crate) fn set_connect_waiting(&self, waiting: bool) {
        let mut st = lock(&self.state);
        if waiting {
            st.connect_waiting += 1;
        } else {
            st.connect_waiting -= 1;
        }
    }

    fn pop_idle(&self, st: &mut State<M>) -> Option<Conn<M::Connection>> {
        match self.config.order {
            Order::Fifo => st.idle.pop_front(),
            Order::Lifo => st.idle.pop_back(),
        }
    }

    /// Notes when more than `pool_size` connections are lent at once: overflow is
    /// still needed. (Open but idle overflow connections do not count, or light
    /// traffic would keep every one of them alive.)
    fn note_usage(&self, st: &mut State<M>) {
        if st.slots - st.refilling > self.config.pool_size as usize {
            st.last_overflow_use = Instant::now();
        }
        self.publish(st);
    }

    /// Gives back a clean connection: to the first waiter, else to the idle queue (or
    /// closes it if it is overflow no longer needed, or the pool is closed).
    pub(crate) fn put_back(self: &Arc<Self>, mut conn: Conn<M::Connection>) {
        let mut st = lock(&self.state);
        if let Some(held) = conn.usage.take() {
            st.loans.usage.record(held);
        }
        if !st.closed {
            while let Some(waiter) = st.waiters.pop_front() {
                let mut lease = Lease::new(self.clone());
                lease.conn = Some(conn);
                match waiter.tx.send(lease) {
                    Ok(()) => {
                        self.publish(&st);
                        return;
                    }
                    Err(mut lease) => {
                        conn = lease
                            .disarm()
                            .expect("the lease was just given a connection")
                    }
                }
            }
        }
        st.slots -= 1;
        let surplus = st.idle.len() + st.slots >= self.config.pool_size as usize
            && self.config.overflow_idle.is_zero();
        if st.closed || surplus {
            self.after_release(&st);
            drop(st);
            let reason = if surplus {
                CloseReason::Overflow
            } else {
                CloseReason::PoolClosed
            };
            self.close_conn(conn, reason);
            return;
        }
        st.idle.push_back(conn);
        if st.connect_waiting > 0 {
            self.idle_notify.notify_waiters();
        }
        self.publish(&st);
    }

    /// Gives back an empty slot: to the first waiter (who will open a connection), else
    /// frees it.
    pub(crate) fn release_slot(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        if !st.closed {
            while let Some(waiter) = st.waiters.pop_front() {
                match waiter.tx.send(Lease::new(self.clone())) {
                    Ok(()) => return,
                    Err(mut lease) => {
                        lease.disarm();
                    }
                }
            }
        }
        st.slots -= 1;
        self.after_release(&st);
        if st.idle.len() + st.slots < self.config.pool_size as usize {
            self.maintenance.notify_one();
        }
    }

    fn after_release(&self, st: &State<M>) {
        if st.closed && st.slots == 0 {
            self.drained.notify_waiters();
        }
        self.publish(st);
    }

    /// Counts and logs the closing of connection `id`.
    pub(crate) fn note_close(&self, id: u64, reason: CloseReason) {
        match reason {
            CloseReason::Recycled => {
                tracing::debug!(target: LOG, pool = %self.config.name, conn = id, "Connection exceeded timeout; recycling");
                self.counters.recycled.fetch_add(1, Relaxed);
            }
            CloseReason::Invalidated => {
                tracing::debug!(target: LOG, pool = %self.config.name, conn = id, "Invalidate connection");
                self.counters.invalidated.fetch_add(1, Relaxed);
            }
            CloseReason::Overflow | CloseReason::PoolClosed => {}
        }
        self.counters.closed.fetch_add(1, Relaxed);
        self.metrics.closed(reason).increment(1);
        if reason == CloseReason::Invalidated {
            tracing::debug!(target: LOG, pool = %self.config.name, conn = id, "Hard-closing connection");
        } else {
            tracing::debug!(target: LOG, pool = %self.config.name, conn = id, "Closing connection");
        }
    }

    /// Closes a connection that holds no slot.
    pub(crate) fn close_conn(self: &Arc<Self>, conn: Conn<M::Connection>, reason: CloseReason) {
        self.note_close(conn.id, reason);
        let hard = reason == CloseReason::Invalidated;
        let inner = self.clone();
        // A broken connection is dropped at once: a polite close could hang on it.
        if !hard {
            rt::spawn(async move { inner.manager.close(conn.raw).await });
        }
    }

    /// Discards a connection that holds a slot: frees the slot, closes the connection.
    pub(crate) fn discard(self: &Arc<Self>, mut conn: Conn<M::Connection>, reason: CloseReason) {
        self.record_usage(&mut conn);
        self.release_slot();
        self.close_conn(conn, reason);
    }

    /// Marks every connection opened until now as suspect, after a disconnect error on
    /// `culprit`. A disconnect on a connection that is already suspect says nothing new
    /// and is ignored, so one restart invalidates the pool once.
    pub(crate) fn invalidate_all(&self, culprit: Option<&Conn<M::Connection>>) {
        if culprit.is_some_and(|c| self.is_suspect(c)) {
            return;
        }
        self.generation.fetch_add(1, Relaxed);
        self.counters.pool_invalidations.fetch_add(1, Relaxed);
        tracing::warn!(
            target: LOG,
            pool = %self.config.name,
            "Disconnection detected on checkout, invalidating all pooled connections prior to current timestamp"
        );
        self.maintenance.notify_one();
    }

    /// Whether `conn` was opened before the last pool-wide invalidation.
    pub(crate) fn is_suspect(&self, conn: &Conn<M::Connection>) -> bool {
        conn.generation < self.generation.load(Relaxed)
    }

    pub(crate) fn new_conn(&self, raw: M::Connection) -> Conn<M::Connection> {
        let now = Instant::now();
        let expires = self.config.pool_recycle.map(|r| {
            // ±2.5 % so connections opened together do not expire together.
            let jitter: f64 = rand::random_range(-0.025..=0.025);
            now + r.mul_f64(1.0 + jitter)
        });
        Conn {
            raw,
            id: self.next_id.fetch_add(1, Relaxed),
            generation: self.generation.load(Relaxed),
            expires,
            last_used: now,
            needs_reset: false,
            usage: None,
        }
    }

    pub(crate) fn status(&self) -> Status {
        let st = lock(&self.state);
        self.status_locked(&st)
    }

    fn status_locked(&self, st: &State<M>) -> Status {
        let open = st.idle.len() + st.slots;
        Status {
            pool_size: self.config.pool_size,
            idle: st.idle.len(),
            checked_out: st.slots - st.refilling,
            overflow: open as i64 - i64::from(self.config.pool_size),
            connecting: self.config.max_connecting as usize - self.connect_sem.available_permits(),
            waiting: st.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
        }
    }

    fn publish(&self, st: &State<M>) {
        self.metrics.idle.set(st.idle.len() as f64);
        self.metrics.in_use.set((st.slots - st.refilling) as f64);
        self.metrics.pending.set(st.waiters.len() as f64);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed_flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ends the wait of every waiter whose deadline has passed (their checkouts fail
    /// with a timeout); returns the next deadline, if anyone still waits.
    #[cfg_attr(feature = "model-check", allow(dead_code))]
    pub(crate) fn expire_waiters(&self, now: Instant) -> Option<Instant> {
        let mut st = lock(&self.state);
        while let Some(front) = st.waiters.front() {
            if front.deadline > now && !front.tx.is_closed() {
                return Some(front.deadline);
            }
            // Dropping the sender wakes the waiter with an error.
            st.waiters.pop_front();
        }
        self.publish(&st);
        None
    }

    /// Refuses new checkouts, fails the waiters, takes every idle connection out.
    pub(crate) fn shut(&self) -> (Vec<Conn<M::Connection>>, usize) {
        let mut st = lock(&self.state);
        st.closed = true;
        self.closed_flag
            .store(true, std::sync::atomic::Ordering::Release);
        st.waiters.clear();
        let idle = st.idle.drain(..).collect();
        self.publish(&st);
        (idle, st.slots)
    }

    pub(crate) fn lent(&self) -> usize {
        lock(&self.state).slots
    }

    /// A slot for the background refill, if the pool holds fewer than `pool_size`.
    pub(crate) fn refill_slot(self: &Arc<Self>) -> Option<Lease<M>> {
        let mut st = lock(&self.state);
        let open = st.idle.len() + st.slots;
        if st.closed || open >= self.config.pool_size as usize || open >= self.limit {
            return None;
        }
        st.slots += 1;
        st.refilling += 1;
        let mut lease = Lease::new(self.clone());
        lease.refill = true;
        Some(lease)
    }

    fn end_refill(&self) {
        lock(&self.state).refilling -= 1;
    }

    /// Idle connections the maintenance task must close: expired ones, suspects, and
    /// overflow unused for `overflow_idle`.
    #[cfg_attr(feature = "model-check", allow(dead_code))]
    pub(crate) fn take_for_maintenance(
        &self,
        now: Instant,
    ) -> Vec<(Conn<M::Connection>, CloseReason)> {
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(st.idle.len());
        let mut disconnected = false;
        while let Some(mut conn) = st.idle.pop_front() {
            let health = self.manager.health(&mut conn.raw);
            disconnected |= health == Health::Disconnected;
            if health != Health::Ok {
                out.push((conn, CloseReason::Invalidated));
            } else if conn.expires.is_some_and(|e| e <= now) {
                out.push((conn, CloseReason::Recycled));
            } else if self.is_suspect(&conn) {
                out.push((conn, CloseReason::Invalidated));
            } else {
                kept.push_back(conn);
            }
        }
        st.idle = kept;
        let pool_size = self.config.pool_size as usize;
        if now.saturating_duration_since(st.last_overflow_use) >= self.config.overflow_idle {
            // Close the least recently used first.
            while st.idle.len() + st.slots > pool_size {
                // Returns push at the back in both orders: the front is the coldest.
                match st.idle.pop_front() {
                    Some(conn) => out.push((conn, CloseReason::Overflow)),
                    None => break,
                }
            }
        }
        self.publish(&st);
        drop(st);
        if disconnected {
            // The server went away under an idle connection: every other one is suspect.
            self.invalidate_all(None);
        }
        out
    }
}

impl<M: Manager> Drop for Inner<M> {
    fn drop(&mut self) {
        // Lets the background tasks (which only hold weak references) end now.
        self.maintenance.notify_one();
        self.reaper.notify_one();
    }
}

/// One slot of the pool, and the connection that goes with it once there is one.
/// Dropping it gives both back.
pub(crate) struct Lease<M: Manager> {
    pub(crate) inner: Arc<Inner<M>>,
    pub(crate) conn: Option<Conn<M::Connection>>,
    armed: bool,
    refill: bool,
}

impl<M: Manager> Lease<M> {
    /// Wraps a slot the caller holds.
    pub(crate) fn new(inner: Arc<Inner<M>>) -> Self {
        Lease {
            inner,
            conn: None,
            armed: true,
            refill: false,
        }
    }

    /// Forgets the slot without giving it back (the caller accounts for it).
    pub(crate) fn disarm(&mut self) -> Option<Conn<M::Connection>> {
        self.armed = false;
        self.conn.take()
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
        match self.conn.take() {
            Some(conn) => self.inner.put_back(conn),
            None => self.inner.release_slot(),
        }
    }
}
