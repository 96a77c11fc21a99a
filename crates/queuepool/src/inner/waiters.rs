//! The waiters' queue: arrival order, hand-offs and timeouts, without a timer each.
//!
//! A checkout at the limit is entered, under the pool's lock, in a queue of tickets in
//! arrival order, with a small *hand-off slot* of its own (reused from an earlier
//! waiter that has let go of it, so a wait does not allocate). A freed permit goes to the
//! oldest entry still waiting, in the critical section that frees it: that section
//! also takes the connection for the waiter (the idle one, or the right to open one,
//! exactly as a checkout below the limit would) and leaves it in the waiter's slot,
//! whose waker is woken once the pool's lock is released. The waiter then picks it up
//! from its slot without taking the pool's lock: a waited checkout takes the pool's
//! lock twice (to register, and in the return that serves it), as one below the limit
//! does (to take, to return). Every step is O(1) per waiter under the lock: a cursor
//! (`serve_from`) skips the entries no longer waiting, and they are dropped from the
//! front.
//!
//! `pool_timeout` is kept by the *reaper*, one background task per pool with one timer:
//! since every waiter has the same `pool_timeout`, deadlines come in ticket order, so
//! the reaper sleeps until the oldest deadline, marks every entry still waiting whose
//! deadline has passed as *expired* (a second cursor, `reaped_upto`) and wakes it; the
//! waiter then fails with a timeout. A served entry is never expired: it has its
//! connection.
//!
//! A waiter does not depend on the reaper alone: if the reaper's task ends (the
//! runtime that built the pool is gone), it wakes every waiter, and from then on each
//! waiter keeps its own deadline with its own timer, as one would without a reaper.

// Under the model check the reaper does not run (waiters time out at random instead).
#![cfg_attr(feature = "model-check", allow(dead_code))]

use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Inner, State, Take, WaitEnd};
use crate::manager::Manager;
use crate::rt::{self, Mutex, lock};

/// What a waiter's hand-off slot holds.
pub(crate) enum Hand<C> {
    /// Still waiting; the waker to wake when that changes.
    Waiting(Option<Waker>),
    /// Served at the instant given, after waiting the duration given: what a checkout
    /// holding a permit takes (the caller owns the slot it counts, see [`Take`]).
    Served(Take<C>, Instant, Duration),
    /// The deadline passed before it was served.
    Expired,
    /// The pool closed before it was served.
    Closed,
    /// Picked up, or given back.
    Done,
}

/// A waiter's hand-off slot: shared by the waiter and its queue entry. Locked only
/// under the pool's lock by the pool, and on its own by the waiter (lock order: the
/// pool's, then a slot's).
pub(crate) type Slot<C> = Arc<Mutex<Hand<C>>>;

/// Hand-off slots kept for reuse, at most: a served waiter's slot is reused once the
/// waiter has picked its connection up, so waits at the limit do not allocate.
const SPARE_SLOTS: usize = 64;

/// A registered waiter, in arrival order.
pub(crate) struct Entry<C> {
    /// When the checkout started: its deadline is `pool_timeout` later (kept as the
    /// start, which a hand-off needs for the wait time, so neither the hand-off nor the
    /// registration does clock arithmetic; only the reaper adds the timeout).
    pub(super) start: Instant,
    /// The waiter's hand-off slot while it waits (neither served, expired, closed nor
    /// gone: counted in `unserved`); taken out (a move, no reference count touched)
    /// when that ends.
    pub(super) slot: Option<Slot<C>>,
}

impl<C> State<C> {
    fn entry(&mut self, ticket: u64) -> Option<&mut Entry<C>> {
        let i = ticket.checked_sub(self.queue_base)?;
        self.queue.get_mut(usize::try_from(i).ok()?)
    }

    /// Queues a waker to wake once the lock is released.
    fn wake_later(&mut self, waker: Waker) {
        if self.wake.is_none() {
            self.wake = Some(waker);
        } else {
            self.wake_more.push(waker);
        }
    }

    /// Ends a wait whose slot was taken out of its entry: leaves `hand` in the slot and
    /// queues the waiter's waker, if it still had one, to wake once the lock is
    /// released.
    fn end_wait(&mut self, slot: &Slot<C>, hand: Hand<C>) {
        if let Hand::Waiting(Some(waker)) = std::mem::replace(&mut *lock(slot), hand) {
            self.wake_later(waker);
        }
    }

    /// Drops the entries that no longer wait from the front of the queue.
    fn drop_done(&mut self) {
        while self.queue.front().is_some_and(|e| e.slot.is_none()) {
            self.queue.pop_front();
            self.queue_base += 1;
        }
    }
}

impl<M: Manager> Inner<M> {
    /// Enters a waiter that started at `start` (under the lock); returns its ticket,
    /// its hand-off slot and whether the reaper must be woken to keep its deadline (it
    /// had none to keep).
    pub(super) fn enqueue(
        &self,
        st: &mut State<M::Connection>,
        start: Instant,
        waker: &Waker,
    ) -> (u64, Slot<M::Connection>, bool) {
        let ticket = st.queue_base + st.queue.len() as u64;
        let waiting = Hand::Waiting(Some(waker.clone()));
        let slot = match st.spare_slots.pop_front() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                // The oldest spare, no longer shared: its waiter is gone. (`get_mut`
                // proves it: the waiter's clone was dropped, with a release the check
                // acquires.)
                Some(hand) => {
                    *rt::get_mut(hand) = waiting;
                    spare
                }
                // Its waiter has not picked up yet (or never will: a future leaked
                // while served): to the back, so it cannot hold up the others' reuse.
                None => {
                    st.spare_slots.push_back(spare);
                    Arc::new(Mutex::new(waiting))
                }
            },
            None => Arc::new(Mutex::new(waiting)),
        };
        st.queue.push_back(Entry {
            start,
            slot: Some(slot.clone()),
        });
        st.unserved += 1;
        self.metrics.pending.set(st.unserved as f64);
        let wake_reaper = !st.reaper_armed;
        st.reaper_armed = true;
        (ticket, slot, wake_reaper)
    }

    /// `n` waiters no longer wait for a permit (served, expired, closed or gone), their
    /// entries' slots taken out: uncounts them and drops finished entries from the front.
    fn unserve(&self, st: &mut State<M::Connection>, n: usize) {
        st.unserved -= n;
        st.drop_done();
        self.metrics.pending.set(st.unserved as f64);
    }

    /// Hands a permit to the oldest waiter still waiting (under the lock), with what
    /// it takes, served at `now` (read here if the caller has not); `false` if there is
    /// none.
    pub(super) fn serve_next(&self, st: &mut State<M::Connection>, now: Option<Instant>) -> bool {
        if st.closed {
            return false;
        }
        let mut ticket = st.serve_from.max(st.queue_base);
        let (slot, start) = loop {
            let Some(entry) = st.entry(ticket) else {
                st.serve_from = ticket;
                debug_assert_eq!(st.unserved, 0, "a waiter counted as waiting is not queued");
                return false;
            };
            if let Some(slot) = entry.slot.take() {
                break (slot, entry.start);
            }
            ticket += 1;
        };
        st.serve_from = ticket + 1;
        self.unserve(st, 1);
        let now = now.unwrap_or_else(Instant::now);
        let waited = now.saturating_duration_since(start);
        let take = self.take_locked(st, waited, now);
        st.end_wait(&slot, Hand::Served(take, now, waited));
        // Kept for a later waiter once this one has picked its connection up: a wait
        // then allocates no slot (see `enqueue`).
        if st.spare_slots.len() < SPARE_SLOTS {
            st.spare_slots.push_back(slot);
        }
        true
    }

    /// One poll of a registered waiter, on its slot alone: what it was served (with
    /// the instant and how long it waited), or how its wait ended, or `Pending` with
    /// `waker` kept.
    #[allow(clippy::type_complexity)]
    pub(super) fn poll_slot(
        slot: &Slot<M::Connection>,
        waker: &Waker,
    ) -> Poll<Result<(Take<M::Connection>, Instant, Duration), WaitEnd>> {
        let mut hand = lock(slot);
        match &mut *hand {
            Hand::Waiting(kept) => {
                if !kept.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *kept = Some(waker.clone());
                }
                Poll::Pending
            }
            Hand::Expired => Poll::Ready(Err(WaitEnd::Timeout)),
            Hand::Closed | Hand::Done => Poll::Ready(Err(WaitEnd::Closed)),
            Hand::Served(..) => match std::mem::replace(&mut *hand, Hand::Done) {
                Hand::Served(take, at, waited) => Poll::Ready(Ok((take, at, waited))),
                _ => unreachable!("matched as served"),
            },
        }
    }

    /// A waiter leaves without picking up its slot (timed out, pool closed, cancelled):
    /// unregistered if it still waited; what it was served, if anything, is returned
    /// to be given back (the caller does, outside the lock).
    pub(super) fn leave(
        &self,
        st: &mut State<M::Connection>,
        ticket: u64,
        slot: &Slot<M::Connection>,
    ) -> Option<Take<M::Connection>> {
        match std::mem::replace(&mut *lock(slot), Hand::Done) {
            Hand::Waiting(_) => {
                if let Some(entry) = st.entry(ticket) {
                    entry.slot = None;
                }
                self.unserve(st, 1);
                None
            }
            Hand::Served(take, _, waited) => {
                if matches!(take, Take::Ready(_)) {
                    // Counted as a served checkout when it was taken for the waiter:
                    // nobody was served.
                    self.uncount_served(st, waited);
                }
                Some(take)
            }
            Hand::Expired | Hand::Closed | Hand::Done => None,
        }
    }

    /// Ends every wait still waiting (`close`: the pool closed), or only wakes them (the
    /// reaper ended: each keeps its own deadline from now on).
    pub(super) fn wake_waiting(&self, st: &mut State<M::Connection>, close: bool) {
        let State {
            queue, wake_more, ..
        } = st;
        let mut ended = 0;
        for entry in queue.iter_mut() {
            let Some(slot) = &entry.slot else { continue };
            let mut hand = lock(slot);
            if let Hand::Waiting(waker) = &mut *hand {
                if close {
                    wake_more.extend(waker.take());
                    *hand = Hand::Closed;
                    drop(hand);
                    entry.slot = None;
                    ended += 1;
                } else {
                    wake_more.extend(waker.clone());
                }
            }
        }
        // Keep `Locked`'s one-branch fast path true: more wakers only beside `wake`.
        if st.wake.is_none() {
            st.wake = st.wake_more.pop();
        }
        self.unserve(st, ended);
    }

    /// Whether the reaper keeps the waiters' deadlines (else each keeps its own).
    pub(super) fn reaper_alive(&self) -> bool {
        self.reaper_alive.load(Acquire)
    }

    /// The reaper's round at `now`: expires every waiter still waiting whose deadline
    /// has passed and wakes it; returns the next deadline to wake at, if any waiter is
    /// left.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state();
        let mut ticket = st.reaped_upto.max(st.queue_base);
        let mut expired = 0;
        let next = loop {
            let Some(entry) = st.entry(ticket) else {
                break None;
            };
            let deadline = entry.start + self.config.pool_timeout;
            if deadline > now {
                break Some(deadline);
            }
            if let Some(slot) = entry.slot.take() {
                st.end_wait(&slot, Hand::Expired);
                expired += 1;
            }
            ticket += 1;
        };
        self.unserve(&mut st, expired);
        st.reaped_upto = ticket;
        st.reaper_armed = next.is_some();
        next
    }

    /// The reaper ended: every waiter keeps its own deadline from now on.
    fn reaper_gone(&self) {
        let mut st = self.state();
        self.reaper_alive.store(false, Release);
        self.wake_waiting(&mut st, false);
    }
}

/// The reaper's task. Holds only a weak reference between rounds, so dropping every
/// `Pool` handle and guard frees the pool; ends then, or when the pool is closed (the
/// waiters fail at once), or when its runtime drops it, even before its first poll.
pub(crate) fn run<M: Manager>(
    pool: Weak<Inner<M>>,
    wake: Arc<Notify>,
) -> impl std::future::Future<Output = ()> + Send {
    // Made here, not in the async block: a task dropped before its first poll (its
    // runtime shut down) must still tell the waiters.
    let alive = Alive(pool.clone());
    async move {
        let _alive = alive;
        loop {
            let next = {
                let Some(inner) = pool.upgrade() else { return };
                if inner.is_closed() {
                    return;
                }
                inner.reap(Instant::now())
            };
            match next {
                // A wake-up before the deadline (a first waiter) is harmless: the next
                // round computes the deadline again.
                Some(deadline) => {
                    let _ = tokio::time::timeout_at(deadline, wake.notified()).await;
                }
                None => wake.notified().await,
            }
        }
    }
}

/// Tells the waiters when the reaper's task ends, however it ends.
struct Alive<M: Manager>(Weak<Inner<M>>);

impl<M: Manager> Drop for Alive<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.reaper_gone();
        }
    }
}

#[cfg(all(test, not(feature = "model-check")))]
mod tests {
    use std::sync::Arc;
    use std::task::{Poll, Waker};
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::PoolConfig;
    use crate::inner::{Inner, Take};
    use crate::test_unit::Unit;

    /// A pool of `size` connections, no overflow, that no test here waits out.
    fn pool_of(size: u32) -> Arc<Inner<Unit>> {
        let config = PoolConfig::builder()
            .pool_size(size)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Arc::new(Inner::new(Unit, config))
    }

    /// A checkout below the limit: the right to open a connection, opened here.
    fn connect(inner: &Inner<Unit>) -> crate::inner::Conn<()> {
        match inner.take_first(Instant::now(), Waker::noop()) {
            Ok(Take::Connect) => inner.new_conn((), 0),
            _ => panic!("below the limit a checkout connects"),
        }
    }

    /// A checkout at the limit: registered as a waiter, its hand-off slot.
    fn register(inner: &Inner<Unit>) -> super::Slot<()> {
        match inner.take_first(Instant::now(), Waker::noop()) {
            Err((_, slot)) => slot,
            Ok(_) => panic!("at the limit a checkout waits"),
        }
    }

    /// A served waiter picks up its connection and returns it: the next waiter is
    /// served by that return.
    fn pick_up_and_return(inner: &Arc<Inner<Unit>>, slot: &super::Slot<()>) {
        match Inner::<Unit>::poll_slot(slot, Waker::noop()) {
            Poll::Ready(Ok((Take::Ready(conn), ..))) => inner.put_back(conn),
            _ => panic!("the waiter was not served a ready connection"),
        }
    }

    /// A hand-off slot is reused for a later waiter only once its own waiter has let go
    /// of it, and the reused slot starts waiting afresh (no stale connection, no stale
    /// waker): waits at the limit allocate no slot, and share none.
    #[tokio::test]
    async fn a_served_waiters_slot_is_reused_only_after_its_waiter_lets_go() {
        let inner = pool_of(1);
        let spares = || inner.state().spare_slots.len();
        let conn = connect(&inner);
        let register = || register(&inner);
        let a = register();
        inner.put_back(conn); // serves A
        assert_eq!(spares(), 1, "a served waiter's slot is kept for reuse");
        let b = register();
        assert!(
            !Arc::ptr_eq(&a, &b),
            "B got the slot A has not picked up yet"
        );
        assert_eq!(spares(), 1);
        pick_up_and_return(&inner, &a); // serves B
        let reused = Arc::as_ptr(&a);
        drop(a);
        let c = register();
        assert_eq!(Arc::as_ptr(&c), reused, "C did not reuse A's slot");
        assert_eq!(spares(), 1, "A's slot left the spares, B's joined them");
        assert!(
            Inner::<Unit>::poll_slot(&c, Waker::noop()).is_pending(),
            "a reused slot starts waiting"
        );
        pick_up_and_return(&inner, &b); // serves C
        pick_up_and_return(&inner, &c);
        let status = inner.status();
        assert_eq!((status.idle, status.checked_out, status.waiting), (1, 0, 0));
    }

    /// A served slot whose waiter never picks it up (a future leaked while served) does
    /// not stop the reuse of the slots behind it.
    #[tokio::test]
    async fn a_slot_never_let_go_of_does_not_hold_up_the_reuse_of_the_others() {
        let inner = pool_of(2);
        let register = || register(&inner);
        let (first, second) = (connect(&inner), connect(&inner));
        let stuck = register();
        inner.put_back(first); // serves `stuck`, which is never picked up
        let b = register();
        inner.put_back(second); // serves B
        pick_up_and_return(&inner, &b); // nobody waits: B's connection goes idle
        let held = match inner.take_first(Instant::now(), Waker::noop()) {
            Ok(Take::Ready(conn)) => conn,
            _ => panic!("the idle connection is lent at once"),
        };
        let b_slot = Arc::as_ptr(&b);
        drop(b);
        let c = register(); // finds `stuck` at the front: sent to the back
        let d = register(); // finds B's slot
        assert_eq!(Arc::as_ptr(&d), b_slot, "B's slot was not reused");
        assert!(!Arc::ptr_eq(&c, &stuck));
        drop((c, d, held, stuck));
    }
}
