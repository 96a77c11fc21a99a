//! The shared state of a pool and its accounting: every connection is either idle or
//! belongs to one *slot*, and `idle + slots <= limit` always.
//!
//! Slots are permits, counted under the pool's one mutex, which also holds the idle
//! queue. Below the limit a checkout takes a free permit and an idle connection in one
//! critical section (no atomic read-modify-write besides the lock, no await, no timer),
//! and a return gives both back in one. At the limit a checkout registers as a waiter,
//! under the same lock, in the pool's own queue of waiters (arrival order), bounded by
//! `pool_timeout` (see `waiters`). A freed permit is handed, in the critical section
//! that frees it, to the oldest waiter still waiting for one (marked served, woken once
//! the lock is released), never to the free count while one waits: nobody can overtake
//! a waiter. (A checkout that finds a free permit while every waiter is already served
//! takes it: it overtakes nobody.) The critical section that serves a waiter also
//! takes its connection for it and leaves it in the waiter's own hand-off slot, where
//! the waiter picks it up without the pool's lock. A return
//! puts its connection into the idle queue *before* it frees the permit, so the waiter
//! that receives the permit finds the connection there.
//!
//! A slot is held from the moment its permit is taken until its connection is back in
//! the idle queue (or closed); it is represented by a [`Lease`] (or a guard), whose
//! `Drop` gives the slot (and the connection, if any) back, so a cancelled future or a
//! dropped guard can never leak one.
//!
//! The number of slots can be lowered at run time without taking a connection away
//! from its borrower (`set_lend_limit`): the permits still free are withdrawn at once,
//! the others as their slots are released.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::task::Waker;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::autosize::{AutoSize, Governor, LimitChange};
use crate::config::{Order, PoolConfig};
pub(crate) use crate::lease::Lease;
use crate::manager::{Health, Manager};
use crate::rt::{self, Mutex, lock};
use crate::stats::{
    AutoSizeStats, CloseReason, Counters, Histogram, LoanStats, MetricHandles, Stats, Status,
};

mod waiters;
pub(crate) use waiters::Slot;

/// A checkout registered as a waiter: its ticket and its hand-off slot.
pub(crate) type Registered<C> = (u64, Slot<C>);
#[cfg_attr(feature = "model-check", allow(unused_imports))]
pub(crate) use waiters::run as run_reaper;

pub(crate) const LOG: &str = "queuepool::pool";

/// Connections used within this long are lent without a pre-ping.
pub(crate) const PING_SKIP: Duration = Duration::from_secs(1);

/// A pooled connection and what the pool knows about it, boxed: it moves through the
/// idle queue, the checkout's future and the guard as one pointer, whatever the size
/// of the driver's connection.
pub(crate) type Conn<C> = Box<ConnData<C>>;

/// What [`Conn`] points to.
pub(crate) struct ConnData<C> {
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

/// What a checkout that holds a permit finds.
pub(crate) enum Take<C> {
    /// An idle connection, counted as a served checkout (by `take_first` at once; by
    /// the waiter when it picks it up, after a hand-off). The caller owns the slot from
    /// here on and must wrap it (in a [`Lease`] or a guard) before its next await. It
    /// asks [`Inner::ready`] once the lock is released (the connection's line was last
    /// written by whichever thread returned it: reading it under the lock would make
    /// every other checkout wait for that miss); a connection that is not ready (to
    /// ping, reset or replace) is uncounted ([`Inner::uncount_lend`]) and checked on the
    /// slow path.
    Idle(Conn<C>),
    /// No idle connection: the right to open one (same ownership rule).
    Connect,
    /// The pool is closed (the permit was given back).
    Closed,
}

/// `repr(C)`, hot fields first. With [`Inner`] aligned to a cache line (the mutex at
/// its start), a fast checkout and a return write one line of it, the first (the
/// mutex, the idle queue, the permit counts and the zero-wait count), and a return its
/// own thread's usage shard besides, on lines of their own. The second and third are
/// only read on the fast path (so they stay shared between cores instead of moving on
/// every loan). Rarely used fields follow. (The checkout count is not kept: it is the wait
/// histogram's count, zero waits included.)
#[repr(C)]
pub(crate) struct State<C> {
    // Line 1 (after the mutex's own word).
    idle: VecDeque<Conn<C>>,
    /// Slots held: checkouts (lent, connecting, pinging, resetting) and background
    /// refills.
    slots: usize,
    /// Permits held by nobody and not handed to a waiter: what a checkout takes without
    /// waiting. Zero whenever a waiter still waits for a permit (`unserved > 0`): a
    /// permit is freed only when every waiter has one.
    free: usize,
    /// Checkouts served without waiting: counted here and added to the wait
    /// histogram's zero bucket when it is read (no histogram line to write).
    zero_waits: u64,
    // Line 2: read on the fast path, written only on slower ones.
    closed: bool,
    /// The reaper has a deadline to wake at: a new waiter need not wake it.
    reaper_armed: bool,
    /// This critical section served a waiter or has a waker to wake: `handoff` or
    /// `wake` is set, and the unlock ([`Locked`]) completes them. The one field an
    /// unlock reads.
    deferred: bool,
    /// Checkouts registered as waiters and still waiting for a permit (from the moment
    /// they found none until they are served, expire or leave): what
    /// `status().waiting` shows.
    unserved: usize,
    /// Slots held by the background refill.
    refilling: usize,
    /// Permits to withhold as slots are released: the lend limit was lowered below the
    /// slots in use.
    debt: usize,
    /// Slot holders waiting for a `max_connecting` permit.
    connect_waiting: usize,
    /// The current number of slots (`limit` unless lowered by `set_lend_limit`).
    lend_limit: usize,
    /// The ticket of the first entry of `queue`; with `serve_from`, the end of line 2:
    /// written only when waiters are served, in the critical sections that write
    /// `unserved` too.
    queue_base: u64,
    /// No waiter below this ticket still waits for a permit: where the next hand-off
    /// starts looking.
    serve_from: u64,
    // Line 3: read by every return, written only on slower paths.
    /// The loans' usage times, one histogram per thread shard (`home::shard`), each on
    /// lines of its own: a return records into its thread's (under the lock, as
    /// before), so the line it writes stays with the core that writes it instead of
    /// moving between cores on every return. `stats()` adds them up.
    usage: Box<[CacheLine<Histogram>]>,
    /// The waits of checkouts served by the slow path (those served at once are
    /// counted in `zero_waits`, those served by a hand-off in `served_waits`; all are
    /// added when read).
    wait: Histogram,
    // Colder fields.
    /// Waiters whose wait ended in this critical section (served beside a hand-off
    /// when the limit was raised, expired, closed), woken when the lock is released
    /// ([`Locked`]): waking a waiter (which may unpark another worker thread) never
    /// happens under the pool's lock. The first waiter served by a return goes to
    /// `handoff` instead.
    wake: Vec<Waker>,
    /// The first waiter served in this critical section and what it was served: left
    /// in its hand-off slot, and the waiter woken, once the pool's lock is released
    /// (`Inner::hand_off`), so the critical section does not wait for the slot's cache
    /// line, which the waiter's thread last wrote.
    handoff: Option<waiters::HandOff<C>>,
    /// Last time more than `pool_size` connections were needed at once.
    last_overflow_use: Instant,
    /// The waiters in arrival order (see `waiters`): entry `i` has ticket
    /// `queue_base + i`.
    queue: VecDeque<waiters::Entry<C>>,
    /// The reaper has expired every waiting ticket below this one.
    reaped_upto: u64,
    /// `pool_size = auto`: the controller that moves `lend_limit`.
    auto: Option<Governor>,
}

/// A value on cache lines of its own.
#[repr(align(64))]
pub(crate) struct CacheLine<T>(pub(crate) T);

/// `repr(C)` with the state first, on its own cache lines (see [`State`]).
#[repr(C, align(64))]
pub(crate) struct Inner<M: Manager> {
    state: Mutex<State<M::Connection>>,
    pub(crate) manager: M,
    pub(crate) config: PoolConfig,
    /// `pool_size + max_overflow` (capped when unlimited).
    pub(crate) limit: usize,
    pub(crate) counters: Counters,
    pub(crate) metrics: MetricHandles,
    pub(crate) connect_sem: Semaphore,
    /// Signalled when a connection becomes idle while a slot holder waits to connect.
    pub(crate) idle_notify: Notify,
    /// Wakes the maintenance task (refill needed, pool dropped).
    pub(crate) maintenance: Arc<Notify>,
    /// Signalled when the last slot is released after `close()`.
    pub(crate) drained: Notify,
    /// Signalled by `close()`: checkouts that are connecting, pinging or resetting stop.
    pub(crate) closing: Notify,
    /// Bumped by every pool-wide invalidation: connections of an older generation
    /// were opened before it and are suspect. (A counter, not a timestamp: it orders
    /// events exactly even when the clock does not move between them.)
    generation: AtomicU64,
    next_id: AtomicU64,
    /// `state.closed`, readable without the lock.
    closed_flag: std::sync::atomic::AtomicBool,
    /// The reaper keeps the waiters' deadlines (else each waiter keeps its own).
    reaper_alive: std::sync::atomic::AtomicBool,
    /// Wakes the reaper (a first waiter, the pool dropped).
    pub(crate) reaper: Arc<Notify>,
    /// The waits of checkouts served by a hand-off, recorded by the waiter when it picks
    /// up its connection (see `waiters`): not under the pool's lock, on a line of its
    /// own. `stats()` adds them to the wait histogram.
    served_waits: CacheLine<Mutex<Histogram>>,
    /// Per-thread shards of the usage histogram and homes (`home::shards`).
    pub(crate) shards: usize,
    /// The pool itself, for the rare path that must give back a hand-off whose waiter
    /// left while it was in flight (see `Locked`), which runs where only `&self` is.
    me: std::sync::Weak<Inner<M>>,
}

impl<M: Manager> Inner<M> {
    /// Locks the pool's state; the guard wakes the waiters served under it once the
    /// lock is released.
    fn state(&self) -> Locked<'_, M> {
        Locked {
            guard: Some(lock(&self.state)),
            inner: self,
        }
    }

    pub(crate) fn new(manager: M, config: PoolConfig) -> Arc<Self> {
        let now = Instant::now();
        let shards = crate::home::shards();
        let limit = config.max_connections().min(Semaphore::MAX_PERMITS);
        let auto = config.auto_size.map(|(floor, ceiling)| {
            Governor::new(AutoSize::new(
                floor as usize,
                ceiling as usize,
                config.pool_size as usize,
                now,
            ))
        });
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            limit,
            connect_sem: Semaphore::new(config.max_connecting as usize),
            metrics: MetricHandles::new(&config.name),
            manager,
            config,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                slots: 0,
                refilling: 0,
                connect_waiting: 0,
                zero_waits: 0,
                queue: VecDeque::new(),
                queue_base: 0,
                serve_from: 0,
                reaped_upto: 0,
                reaper_armed: false,
                deferred: false,
                wake: Vec::new(),
                handoff: None,
                closed: false,
                last_overflow_use: now,
                usage: (0..shards).map(|_| CacheLine(Histogram::new())).collect(),
                wait: Histogram::new(),
                lend_limit: limit,
                debt: 0,
                free: limit,
                unserved: 0,
                auto,
            }),
            counters: Counters::new(),
            idle_notify: Notify::new(),
            maintenance: Arc::new(Notify::new()),
            drained: Notify::new(),
            closing: Notify::new(),
            generation: AtomicU64::new(0),
            served_waits: CacheLine(Mutex::new(Histogram::new())),
            shards,
            next_id: AtomicU64::new(1),
            closed_flag: std::sync::atomic::AtomicBool::new(false),
            reaper_alive: std::sync::atomic::AtomicBool::new(false),
            reaper: Arc::new(Notify::new()),
        });
        let start = inner.state().auto.as_ref().map(|g| g.ctl.effective_limit());
        if let Some(start) = start {
            inner.set_lend_limit(start);
        }
        inner.metrics.limit.set(start.unwrap_or(limit) as f64);
        inner
    }

    /// A checkout's first step, in one critical section: takes a free permit (if no
    /// waiter still waits for one), then an idle connection or the right to open one
    /// (see [`Take`]); a ready connection is counted as served with no wait. `Err`: no
    /// free permit, or a waiter still waits for one; the checkout is now registered as a
    /// waiter (the ticket) and must wait with [`Inner::wait_take`], which unregisters it
    /// however it ends.
    pub(crate) fn take_first(
        &self,
        now: Instant,
        waker: &Waker,
    ) -> Result<Take<M::Connection>, Registered<M::Connection>> {
        let mut st = self.state();
        if st.closed {
            return Ok(Take::Closed);
        }
        // Waiters already served overtake nobody's permit: a free one is ours. (Waiting
        // beside a free permit would strand it: only returns hand permits to waiters.)
        if st.free == 0 || st.unserved > 0 {
            let (ticket, slot, wake_reaper) = self.enqueue(&mut st, now, waker);
            drop(st);
            if wake_reaper {
                self.reaper.notify_one();
            }
            return Err((ticket, slot));
        }
        st.free -= 1;
        let take = self.take_locked(&mut st, now);
        if matches!(take, Take::Idle(_)) {
            st.zero_waits += 1;
        }
        Ok(take)
    }

    /// Waits in arrival order, until `pool_timeout` after `start`, for a checkout that
    /// [`Inner::take_first`] registered as a waiter: the return that serves it takes for
    /// it what `take_first` would have and leaves it in its slot, with the instant it
    /// was served and how long it waited. Either way the checkout is no longer
    /// registered.
    ///
    /// Cancel safe: what a dropped wait was served goes back (the connection to the
    /// pool, the permit to the next waiter or the free ones).
    pub(crate) async fn wait_take(
        self: &Arc<Self>,
        start: Instant,
        ticket: u64,
        slot: Slot<M::Connection>,
    ) -> Result<(Take<M::Connection>, Instant, Duration), WaitEnd> {
        // Unregisters the checkout if the wait ends without picking up its slot
        // (timeout, close, cancellation), giving back what it was served.
        let mut wait = Waiter {
            inner: self,
            ticket,
            slot: &slot,
            picked: false,
        };
        #[cfg(feature = "model-check")]
        let outcome = {
            let step = std::future::poll_fn(|cx| self.poll_slot(&slot, start, cx.waker()));
            rt::wait_deadline(start + self.config.pool_timeout, step)
                .await
                .unwrap_or(Err(WaitEnd::Timeout))
        };
        #[cfg(not(feature = "model-check"))]
        let outcome = {
            let deadline = start + self.config.pool_timeout;
            // Only if the reaper is gone: this waiter's own timer.
            let mut own: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(end) = self.poll_slot(&slot, start, cx.waker()) {
                    return std::task::Poll::Ready(end);
                }
                if !self.reaper_alive() {
                    let own =
                        own.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if own.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(Err(WaitEnd::Timeout));
                    }
                }
                std::task::Poll::Pending
            })
            .await
        };
        wait.picked = outcome.is_ok();
        outcome
    }

    /// Gives a permit back under the lock: to the oldest waiter still waiting for one,
    /// if any (served at `now`, when the caller has read the clock already), else to the
    /// free permits; withheld instead while the lend limit is being lowered.
    #[inline]
    fn release_permit(&self, st: &mut State<M::Connection>, now: Option<Instant>) {
        // The common case inline: nobody waits, the limit is not being lowered.
        if st.unserved == 0 && st.debt == 0 {
            st.free += 1;
            return;
        }
        self.release_permit_contended(st, now);
    }

    /// [`Inner::release_permit`] when a waiter may be served or a permit withheld.
    #[inline(never)]
    fn release_permit_contended(&self, st: &mut State<M::Connection>, now: Option<Instant>) {
        if st.debt == 0 && st.unserved > 0 && self.serve_next(st, now) {
            return;
        }
        Self::keep_permit(st);
    }

    /// A permit no waiter gets: withheld while the lend limit is being lowered, else
    /// free.
    fn keep_permit(st: &mut State<M::Connection>) {
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            st.free += 1;
        }
    }

    /// Takes, for a checkout that holds a permit, an idle connection or the right to
    /// open one (not counted here: see `take_first` and `Inner::picked_up`).
    #[inline(always)]
    fn take_locked(&self, st: &mut State<M::Connection>, now: Instant) -> Take<M::Connection> {
        if st.closed {
            self.release_permit(st, None);
            return Take::Closed;
        }
        let conn = self.pop_idle(st);
        st.slots += 1;
        self.note_usage(st, now);
        match conn {
            Some(conn) => Take::Idle(conn),
            None => Take::Connect,
        }
    }

    /// Takes back the count of a checkout served an idle connection ([`Take::Idle`])
    /// that is not lent (it needs a check first, and is counted when it is lent): at
    /// once by `take_first`, or, `waited`, by a hand-off (`Inner::picked_up`).
    pub(crate) fn uncount_lend(&self, waited: Option<Duration>) {
        match waited {
            None => self.state().zero_waits -= 1,
            Some(waited) => lock(&self.served_waits.0).unrecord(waited),
        }
    }

    /// Whether an idle connection can be lent as it is: no reset, ping or replacement.
    /// The manager's `health` is consulted too: it sees a connection the server closed
    /// while it sat idle (a terminated backend) for free, even within `PING_SKIP`.
    pub(crate) fn ready(&self, conn: &mut Conn<M::Connection>, now: Instant) -> bool {
        // `last_used + PING_SKIP > now`: one addition and a comparison, cheaper than
        // the subtraction into a `Duration` (this runs on every fast checkout).
        !conn.needs_reset
            && conn.expires.is_none_or(|e| e > now)
            && !self.is_suspect(conn)
            && (!self.config.pre_ping || conn.last_used + PING_SKIP > now)
            && self.health(conn) == Health::Ok
    }

    /// Counts a checkout that went through the slow path.
    pub(crate) fn record_lend(&self, waited: Duration) {
        let mut st = self.state();
        st.wait.record(waited);
    }

    /// Records how long a connection that is not put back was held.
    pub(crate) fn record_usage(&self, conn: &mut Conn<M::Connection>) {
        if let Some(held) = conn.usage.take() {
            let mut st = self.state();
            st.record_usage(held);
            let moved = if self.config.auto_size.is_some() {
                self.feed_auto(&mut st, held, Instant::now())
            } else {
                None
            };
            drop(st);
            if let Some(moved) = moved {
                self.log_limit(moved);
            }
        }
    }

    /// `pool_size = auto`: gives a return (held for `held`, ended at `now`) to the
    /// controller, under the lock, and applies the limit it decides; returns the move
    /// to log, if any (logged after the lock is released).
    fn feed_auto(
        &self,
        st: &mut State<M::Connection>,
        held: Duration,
        now: Instant,
    ) -> Option<(LimitChange, u64)> {
        let in_use = st.slots - st.refilling;
        let queued = st.unserved > 0;
        let gov = st.auto.as_mut()?;
        let change = gov.ctl.on_return(held, in_use, queued, now);
        let target = gov.ctl.effective_limit();
        let logged = change.and_then(|c| gov.note(c, now));
        if change.is_some() {
            self.metrics.limit.set(gov.ctl.limit() as f64);
        }
        if target != st.lend_limit {
            self.apply_lend_limit(st, target);
        }
        logged
    }

    fn log_limit(&self, (change, suppressed): (LimitChange, u64)) {
        tracing::debug!(target: LOG, pool = %self.config.name, suppressed, "Pool {change}");
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.state();
        let mut loans = LoanStats {
            usage: Histogram::new(),
            wait: st.wait.clone(),
        };
        for shard in &st.usage {
            loans.usage.merge(&shard.0);
        }
        loans.wait.record_zeros(st.zero_waits);
        loans.wait.merge(&lock(&self.served_waits.0));
        let auto = st.auto.as_ref().map(|g| {
            let (floor, ceiling) = g.ctl.bounds();
            AutoSizeStats {
                limit: g.ctl.limit(),
                floor,
                ceiling,
                reason: g.ctl.reason(),
                last_change: g.ctl.last_change(),
                baseline: g.ctl.baseline(),
                changes: g.changes,
            }
        });
        drop(st);
        let mut stats = self.counters.snapshot(&loans);
        stats.auto_size = auto;
        stats
    }

    /// For a slot holder without a connection: an idle connection if one appeared.
    pub(crate) fn take_idle(&self) -> Option<Conn<M::Connection>> {
        let mut st = self.state();
        let conn = self.pop_idle(&mut st);
        if conn.is_some() {
            self.publish(&st);
        }
        conn
    }

    /// Registers (or unregisters) a slot holder waiting for a connect permit; while one
    /// waits, returns signal `idle_notify`.
    pub(crate) fn set_connect_waiting(&self, waiting: bool) {
        let mut st = self.state();
        if waiting {
            st.connect_waiting += 1;
        } else {
            st.connect_waiting -= 1;
        }
    }

    fn pop_idle(&self, st: &mut State<M::Connection>) -> Option<Conn<M::Connection>> {
        match self.config.order {
            Order::Fifo => st.idle.pop_front(),
            Order::Lifo => st.idle.pop_back(),
        }
    }

    /// Notes when more than `pool_size` connections are lent at once: overflow is
    /// still needed. (Open but idle overflow connections do not count, or light
    /// traffic would keep every one of them alive.)
    fn note_usage(&self, st: &mut State<M::Connection>, now: Instant) {
        if st.slots - st.refilling > self.config.pool_size as usize {
            // The checkout's own instant: no clock read under the lock. (Read before
            // the lock, it can be a hair older than another checkout's: keep the later.)
            st.last_overflow_use = st.last_overflow_use.max(now);
        }
        self.publish(st);
    }

    /// Frees one slot under the lock, and its permit; `now` is the time of the return,
    /// if read (a waiter served by it is served then, without a clock read under the
    /// lock).
    fn free_slot(&self, st: &mut State<M::Connection>, now: Option<Instant>) {
        st.slots -= 1;
        if st.closed && st.slots == 0 {
            self.drained.notify_waiters();
        }
        self.release_permit(st, now);
    }

    /// Gives back a clean connection through its slot: into the idle queue for the next
    /// checkout (the oldest waiter receives the freed permit), or closes it if the pool
    /// is closed or, with `overflow_idle` zero, the idle queue already holds
    /// `pool_size` connections (SQLAlchemy's rule).
    pub(crate) fn put_back(self: &Arc<Self>, mut conn: Conn<M::Connection>) {
        let mut st = self.state();
        let mut moved = None;
        if let Some(held) = conn.usage.take() {
            st.record_usage(held);
            if self.config.auto_size.is_some() {
                moved = self.feed_auto(&mut st, held, conn.last_used);
            }
        }
        let returned = conn.last_used;
        let surplus =
            self.config.overflow_idle.is_zero() && st.idle.len() >= self.config.pool_size as usize;
        let close = if st.closed {
            Some((conn, CloseReason::PoolClosed))
        } else if surplus {
            Some((conn, CloseReason::Overflow))
        } else {
            st.idle.push_back(conn);
            None
        };
        self.free_slot(&mut st, Some(returned));
        if close.is_none() && st.connect_waiting > 0 {
            self.idle_notify.notify_waiters();
        }
        self.publish(&st);
        drop(st);
        if let Some((conn, reason)) = close {
            self.close_conn(conn, reason);
        }
        if let Some(moved) = moved {
            self.log_limit(moved);
        }
    }

    /// Gives back an empty slot (its connection was closed or detached).
    pub(crate) fn release_slot(self: &Arc<Self>) {
        let mut st = self.state();
        self.free_slot(&mut st, None);
        let refill = !st.closed && st.idle.len() + st.slots < self.config.pool_size as usize;
        self.publish(&st);
        drop(st);
        if refill {
            self.maintenance.notify_one();
        }
    }

    /// Changes how many slots may be held at once, between 1 and `limit` (for the
    /// pool-size controller of issue 14). Raising it frees permits at once; lowering it
    /// withdraws free permits at once and the others as their slots are released, so
    /// no connection is taken from its borrower.
    pub(crate) fn set_lend_limit(&self, target: usize) {
        let mut st = self.state();
        self.apply_lend_limit(&mut st, target);
    }

    fn apply_lend_limit(&self, st: &mut State<M::Connection>, target: usize) {
        let target = target.clamp(1, self.limit);
        if target >= st.lend_limit {
            for _ in st.lend_limit..target {
                self.release_permit(st, None);
            }
        } else {
            let remove = st.lend_limit - target;
            let removed = remove.min(st.free);
            st.free -= removed;
            st.debt += remove - removed;
        }
        st.lend_limit = target;
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
            rt::spawn(async move {
                let close = std::panic::AssertUnwindSafe(inner.manager.close(conn.raw));
                if let Err(panic) = futures_util::FutureExt::catch_unwind(close).await {
                    inner.note_panic("close", &*panic);
                }
            });
        }
    }

    /// Discards a connection that holds a slot: closes it, then frees the slot.
    ///
    /// The slot stays taken while [`Manager::close`] runs (bounded by
    /// `connect_timeout`, then the close is dropped), so no replacement opens while the
    /// server still holds the old connection (a query ending after its cancel request):
    /// the pool's limit stays the server's. A close that completes without waiting
    /// frees the slot at once, as before.
    pub(crate) fn discard(self: &Arc<Self>, mut conn: Conn<M::Connection>, reason: CloseReason) {
        self.record_usage(&mut conn);
        self.note_close(conn.id, reason);
        // The lease frees the slot when dropped: after the close, or when the close
        // is cut at the deadline or its task cancelled.
        let lease = Lease::new(self.clone());
        let deadline = Instant::now() + self.config.connect_timeout;
        let mut op = Box::pin(async move {
            lease.inner().manager.close(conn.raw).await;
            lease
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match op.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(lease) => drop(lease),
            std::task::Poll::Pending if rt::can_spawn() => rt::spawn(async move {
                let _ = rt::deadline(deadline, op).await;
            }),
            std::task::Poll::Pending => drop(op),
        }
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

    /// Whether `conn` was opened before the last pool-wide invalidation (and has not
    /// passed a ping since).
    pub(crate) fn is_suspect(&self, conn: &Conn<M::Connection>) -> bool {
        conn.generation < self.generation.load(Relaxed)
    }

    /// A suspect connection that answered a ping is as good as a new one.
    pub(crate) fn clear_suspicion(&self, conn: &mut Conn<M::Connection>, pinged_at: u64) {
        conn.generation = conn.generation.max(pinged_at);
    }

    /// The current invalidation generation (read before a ping starts: an invalidation
    /// during the ping keeps the connection suspect).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub(crate) fn new_conn(&self, raw: M::Connection, generation: u64) -> Conn<M::Connection> {
        let now = Instant::now();
        let expires = self.config.pool_recycle.map(|r| {
            // ±2.5 % so connections opened together do not expire together.
            let jitter: f64 = rand::random_range(-0.025..=0.025);
            now + r.mul_f64(1.0 + jitter)
        });
        Box::new(ConnData {
            raw,
            id: self.next_id.fetch_add(1, Relaxed),
            generation,
            expires,
            last_used: now,
            needs_reset: false,
            usage: None,
        })
    }

    /// Occupancy now, in O(1).
    pub(crate) fn status(&self) -> Status {
        let st = self.state();
        let open = st.idle.len() + st.slots;
        Status {
            pool_size: self.config.pool_size,
            idle: st.idle.len(),
            checked_out: st.slots - st.refilling,
            overflow: open as i64 - i64::from(self.config.pool_size),
            connecting: self.config.max_connecting as usize - self.connect_sem.available_permits(),
            waiting: st.unserved,
            limit: st.auto.as_ref().map_or(st.lend_limit, |g| g.ctl.limit()),
        }
    }

    fn publish(&self, st: &State<M::Connection>) {
        self.metrics.idle.set(st.idle.len() as f64);
        self.metrics.in_use.set((st.slots - st.refilling) as f64);
    }

    /// Byte offsets, from the start of `Inner`, of the fields a fast checkout or return
    /// touches, by the cache line `State` means them to share (the layout test in
    /// `pool.rs`, Linux only).
    #[cfg(all(test, not(feature = "model-check"), target_os = "linux"))]
    pub(crate) fn hot_offsets(&self) -> [Vec<(&'static str, usize)>; 3] {
        let base = std::ptr::from_ref(self).addr();
        let st = self.state();
        let at = |name, field: *const u8| (name, field.addr() - base);
        let p = |r: &dyn std::any::Any| std::ptr::from_ref(r).cast::<u8>();
        [
            vec![
                at("idle", p(&st.idle)),
                at("slots", p(&st.slots)),
                at("free", p(&st.free)),
                at("zero_waits", p(&st.zero_waits)),
            ],
            vec![
                at("closed", p(&st.closed)),
                at("unserved", p(&st.unserved)),
                at("refilling", p(&st.refilling)),
                at("debt", p(&st.debt)),
                at("connect_waiting", p(&st.connect_waiting)),
                at("deferred", p(&st.deferred)),
            ],
            // Read by a return: which usage histogram is its thread's.
            vec![at("usage", p(&st.usage))],
        ]
    }

    /// How many loans each thread shard of the usage histogram holds.
    #[cfg(all(test, not(feature = "model-check")))]
    pub(crate) fn usage_shard_counts(&self) -> Vec<u64> {
        self.state().usage.iter().map(|h| h.0.count()).collect()
    }

    /// The reaper's task is about to be spawned: the waiters rely on it.
    #[cfg_attr(feature = "model-check", allow(dead_code))]
    pub(crate) fn reaper_started(&self) {
        self.reaper_alive
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed_flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses new checkouts, fails the waiters and the checkouts still connecting or
    /// checking a connection, takes every idle connection out.
    pub(crate) fn shut(&self) -> Vec<Conn<M::Connection>> {
        let mut st = self.state();
        st.closed = true;
        self.closed_flag
            .store(true, std::sync::atomic::Ordering::Release);
        let idle = st.idle.drain(..).collect();
        self.publish(&st);
        // Every waiter still waiting fails now (a served one picks up its connection
        // and the checkout then finds the pool closed).
        self.wake_waiting(&mut st, true);
        drop(st);
        self.connect_sem.close();
        self.closing.notify_waiters();
        self.maintenance.notify_one();
        idle
    }

    pub(crate) fn lent(&self) -> usize {
        self.state().slots
    }

    /// A slot for the background refill, if the pool holds fewer than `pool_size`.
    /// It never waits: at the limit, checkouts open what they need themselves.
    pub(crate) fn refill_slot(self: &Arc<Self>) -> Option<Lease<M>> {
        let mut st = self.state();
        let open = st.idle.len() + st.slots;
        if st.closed || st.free == 0 || st.unserved > 0 || open >= self.config.pool_size as usize {
            return None;
        }
        st.free -= 1;
        st.slots += 1;
        st.refilling += 1;
        drop(st);
        Some(Lease::refill(self.clone()))
    }

    pub(crate) fn end_refill(&self) {
        self.state().refilling -= 1;
    }

    /// Idle connections the maintenance task must close: expired ones, broken ones,
    /// suspects when `pre_ping` is off (with `pre_ping` on they are pinged at their next
    /// checkout instead: one dead connection must not close a healthy pool), and
    /// overflow unused for `overflow_idle`.
    #[cfg_attr(feature = "model-check", allow(dead_code))]
    pub(crate) fn take_for_maintenance(
        &self,
        now: Instant,
    ) -> Vec<(Conn<M::Connection>, CloseReason)> {
        let mut st = self.state();
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(st.idle.len());
        let mut disconnected = false;
        while let Some(mut conn) = st.idle.pop_front() {
            let health = self.health(&mut conn);
            disconnected |= health == Health::Disconnected;
            if health != Health::Ok {
                out.push((conn, CloseReason::Invalidated));
            } else if conn.expires.is_some_and(|e| e <= now) {
                out.push((conn, CloseReason::Recycled));
            } else if !self.config.pre_ping && self.is_suspect(&conn) {
                out.push((conn, CloseReason::Invalidated));
            } else {
                kept.push_back(conn);
            }
        }
        st.idle = kept;
        let pool_size = self.config.pool_size as usize;
        // With `overflow_idle` zero the return path already applies SQLAlchemy's rule
        // (close when the idle queue holds `pool_size`): trimming here too would close
        // connections that steady load needs.
        if !self.config.overflow_idle.is_zero()
            && now.saturating_duration_since(st.last_overflow_use) >= self.config.overflow_idle
        {
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

impl<C> State<C> {
    /// Records a loan's usage time in the calling thread's shard.
    #[inline]
    fn record_usage(&mut self, held: Duration) {
        let i = crate::home::shard(self.usage.len());
        self.usage[i].0.record(held);
    }

    /// What the critical section left for the unlock to do (see `deferred`): the
    /// hand-off and the wakers.
    fn take_deferred(&mut self) -> (Option<waiters::HandOff<C>>, Vec<Waker>) {
        self.deferred = false;
        (self.handoff.take(), std::mem::take(&mut self.wake))
    }
}

/// The pool's lock, held (see [`Inner::state`]). Released, it completes what the
/// critical section deferred (`State::deferred`): the hand-off to a waiter served, the
/// wake-ups.
struct Locked<'a, M: Manager> {
    guard: Option<rt::MutexGuard<'a, State<M::Connection>>>,
    inner: &'a Inner<M>,
}

impl<M: Manager> std::ops::Deref for Locked<'_, M> {
    type Target = State<M::Connection>;
    fn deref(&self) -> &State<M::Connection> {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl<M: Manager> std::ops::DerefMut for Locked<'_, M> {
    fn deref_mut(&mut self) -> &mut State<M::Connection> {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl<M: Manager> Drop for Locked<'_, M> {
    #[inline]
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            // No permit is free while a waiter still waits for one (see `take_first`).
            debug_assert!(
                guard.free == 0 || guard.unserved == 0,
                "a free permit beside a waiter without one: free {}, unserved {}",
                guard.free,
                guard.unserved
            );
            debug_assert_eq!(
                guard.deferred,
                !guard.wake.is_empty() || guard.handoff.is_some(),
                "`deferred` says whether anything waits for the unlock"
            );
            // A lock that served nobody unlocks after one read of a line the fast path
            // never writes (see `State`), inline.
            if guard.deferred {
                self.complete(guard);
            }
        }
    }
}

impl<M: Manager> Locked<'_, M> {
    /// Unlocks, then completes what the critical section deferred: the hand-off, the
    /// wake-ups (out of line: the fast path has none).
    #[inline(never)]
    fn complete(&self, mut guard: rt::MutexGuard<'_, State<M::Connection>>) {
        let (handoff, wake) = guard.take_deferred();
        drop(guard);
        if let Some((slot, hand)) = handoff {
            self.inner.hand_off(&slot, hand);
        }
        for waker in wake {
            waker.wake();
        }
    }
}

/// How a wait for a permit ended without one.
#[derive(Debug)]
pub(crate) enum WaitEnd {
    /// `pool_timeout` passed.
    Timeout,
    /// The pool was closed.
    Closed,
}

/// A checkout registered as a waiter, while it waits; dropped without picking up its
/// slot (timed out, closed, cancelled), it unregisters the checkout, and gives back what
/// it was served: the connection to the pool, the permit to the next waiter.
struct Waiter<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    ticket: u64,
    slot: &'a Slot<M::Connection>,
    picked: bool,
}

impl<M: Manager> Drop for Waiter<'_, M> {
    fn drop(&mut self) {
        if self.picked {
            return;
        }
        let mut st = self.inner.state();
        let served = self.inner.leave(&mut st, self.ticket, self.slot);
        drop(st);
        if let Some(take) = served {
            self.inner.give_back(take);
        }
    }
}

impl<M: Manager> Drop for Inner<M> {
    fn drop(&mut self) {
        // Lets the background tasks (which only hold weak references) end now.
        self.maintenance.notify_one();
        self.reaper.notify_one();
    }
}
