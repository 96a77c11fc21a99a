//! The waiters' queue: arrival order, hand-offs and timeouts, without a timer each.
//!
//! A checkout at the limit is entered, under the pool's lock, in a queue of tickets in
//! arrival order, with a small *hand-off slot* of its own (one allocation per wait). A
//! freed permit goes to the oldest entry still waiting, in the critical section that
//! frees it: that section also takes the connection for the waiter (the idle one, or
//! the right to open one, exactly as a checkout below the limit would) and moves the
//! waiter's slot out of its entry; once the pool's lock is released, the returning
//! thread leaves what it took in the slot and wakes the waiter (`Inner::hand_off`). The
//! slot's cache line was last written by the waiter's thread: writing it after the
//! unlock keeps that miss out of the critical section, which both workers of a
//! saturated pool queue for (measured in docs/BENCHMARKS.md). A waiter that leaves
//! between the two (cancelled, or timed out on its own timer) finds its entry served
//! and its slot still waiting: it marks the slot done, and the hand-off, finding it
//! so, gives back what it carried, as a waiter that leaves after it was served does.
//! The waiter picks up what it was served from its slot without taking the pool's
//! lock: a waited checkout takes the pool's lock twice (to register, and in the return
//! that serves it), as one below the limit does (to take, to return). Every step is
//! O(1) per waiter under the lock: a cursor (`serve_from`) skips the entries no longer
//! waiting, and they are dropped from the front.
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
use crate::rt::{Mutex, lock};

/// What a waiter's hand-off slot holds.
pub(crate) enum Hand<C> {
    /// Still waiting; the waker to wake when that changes.
    Waiting(Option<Waker>),
    /// Served at the instant given: what a checkout holding a permit takes (the caller
    /// owns the slot it counts, see [`Take`]). Counted when the waiter picks it up
    /// (`Inner::picked_up`), which also works out how long it waited: neither is done
    /// under the pool's lock.
    Served(Take<C>, Instant),
    /// The deadline passed before it was served.
    Expired,
    /// The pool closed before it was served.
    Closed,
    /// Picked up, or given back.
    Done,
}

/// A waiter's hand-off slot: shared by the waiter and its queue entry (then the
/// hand-off that serves it). Locked by the pool under the pool's lock, by a hand-off
/// after it, and by the waiter on its own (lock order: the pool's, then a slot's; the
/// pool's is never taken while a slot's is held).
pub(crate) type Slot<C> = Arc<Mutex<Hand<C>>>;

/// A hand-off decided under the pool's lock and completed once it is released: the
/// waiter's slot and what it was served (see [`Inner::hand_off`]).
pub(crate) type HandOff<C> = (Slot<C>, Hand<C>);

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
        self.deferred = true;
        self.wake.push(waker);
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
        let slot = Arc::new(Mutex::new(Hand::Waiting(Some(waker.clone()))));
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
        let slot = loop {
            let Some(entry) = st.entry(ticket) else {
                st.serve_from = ticket;
                debug_assert_eq!(st.unserved, 0, "a waiter counted as waiting is not queued");
                return false;
            };
            if let Some(slot) = entry.slot.take() {
                break slot;
            }
            ticket += 1;
        };
        st.serve_from = ticket + 1;
        self.unserve(st, 1);
        // The wait it ended is worked out and counted by the waiter (`picked_up`): no
        // clock arithmetic here, where both workers of a saturated pool queue.
        let now = now.unwrap_or_else(Instant::now);
        let take = self.take_locked(st, now);
        let served = Hand::Served(take, now);
        if st.handoff.is_none() {
            // Left in the slot once the lock is released (`hand_off`).
            st.handoff = Some((slot, served));
            st.deferred = true;
            return true;
        }
        st.end_wait(&slot, served);
        true
    }

    /// Completes a hand-off decided under the lock (`serve_next`), after the lock is
    /// released: leaves what the waiter was served in its slot and wakes it. If the
    /// waiter left in between (timed out on its own timer, or cancelled: `leave` found
    /// its entry already served and marked the slot done), what it was served goes back
    /// as a waiter's that leaves does.
    pub(super) fn hand_off(&self, slot: &Slot<M::Connection>, served: Hand<M::Connection>) {
        let mut hand = lock(slot);
        if let Hand::Waiting(waker) = &mut *hand {
            let waker = waker.take();
            *hand = served;
            drop(hand);
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
        debug_assert!(
            matches!(*hand, Hand::Done),
            "a hand-off in flight is only ever left by its waiter"
        );
        drop(hand);
        let Hand::Served(take, _) = served else {
            unreachable!("a hand-off carries what was served")
        };
        // The pool is alive: `self` is borrowed from it.
        let inner = self.me.upgrade().expect("a pool serving a waiter is alive");
        inner.give_back(take);
    }

    /// Gives back what a waiter that left was served (never counted: it did not pick
    /// it up): the connection to the pool, the slot to the next waiter or the free
    /// permits.
    pub(super) fn give_back(self: &Arc<Self>, take: Take<M::Connection>) {
        match take {
            Take::Idle(conn) => self.put_back(conn),
            Take::Connect => self.release_slot(),
            Take::Closed => {}
        }
    }

    /// A waiter that started at `start` picks up what it was served `at`: counts it
    /// as a served checkout if it is an idle connection (a connection to open is
    /// counted when it is lent), with how long it waited, which it returns. Off the
    /// pool's lock: on the waiter's thread, under a lock of the served waits alone.
    pub(super) fn picked_up(
        &self,
        take: &Take<M::Connection>,
        start: Instant,
        at: Instant,
    ) -> Duration {
        let waited = at.saturating_duration_since(start);
        if matches!(take, Take::Idle(_)) {
            lock(&self.served_waits.0).record(waited);
        }
        waited
    }

    /// One poll of a registered waiter that started at `start`, on its slot alone:
    /// what it was served (with the instant and how long it waited: counted, see
    /// [`Inner::picked_up`]), or how its wait ended, or `Pending` with `waker` kept.
    #[allow(clippy::type_complexity)]
    pub(super) fn poll_slot(
        &self,
        slot: &Slot<M::Connection>,
        start: Instant,
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
                Hand::Served(take, at) => {
                    drop(hand);
                    let waited = self.picked_up(&take, start, at);
                    Poll::Ready(Ok((take, at, waited)))
                }
                _ => unreachable!("matched as served"),
            },
        }
    }

    /// A waiter leaves without picking up its slot (timed out, pool closed, cancelled):
    /// unregistered if it still waited; what it was served, if anything, is returned
    /// to be given back (the caller does, outside the lock, with [`Inner::give_back`]).
    pub(super) fn leave(
        &self,
        st: &mut State<M::Connection>,
        ticket: u64,
        slot: &Slot<M::Connection>,
    ) -> Option<Take<M::Connection>> {
        match std::mem::replace(&mut *lock(slot), Hand::Done) {
            Hand::Waiting(_) => {
                // Still queued: it no longer waits. Else it was served under the lock
                // and its hand-off is in flight (`hand_off`), which finds the slot done
                // and gives back what it was served.
                if let Some(entry) = st.entry(ticket).filter(|e| e.slot.is_some()) {
                    entry.slot = None;
                    self.unserve(st, 1);
                }
                None
            }
            Hand::Served(take, _) => Some(take),
            Hand::Expired | Hand::Closed | Hand::Done => None,
        }
    }

    /// Ends every wait still waiting (`close`: the pool closed), or only wakes them (the
    /// reaper ended: each keeps its own deadline from now on).
    pub(super) fn wake_waiting(&self, st: &mut State<M::Connection>, close: bool) {
        let State { queue, wake, .. } = st;
        let mut ended = 0;
        for entry in queue.iter_mut() {
            let Some(slot) = &entry.slot else { continue };
            let mut hand = lock(slot);
            if let Hand::Waiting(waker) = &mut *hand {
                if close {
                    wake.extend(waker.take());
                    *hand = Hand::Closed;
                    drop(hand);
                    entry.slot = None;
                    ended += 1;
                } else {
                    wake.extend(waker.clone());
                }
            }
        }
        st.deferred |= !st.wake.is_empty();
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
        Inner::new(Unit, config)
    }

    /// A checkout below the limit: the right to open a connection, opened here.
    fn connect(inner: &Inner<Unit>) -> crate::inner::Conn<()> {
        match inner.take_first(Instant::now(), Waker::noop()) {
            Ok(Take::Connect) => inner.new_conn((), 0),
            _ => panic!("below the limit a checkout connects"),
        }
    }

    /// A served waiter picks up its connection and returns it: the next waiter is
    /// served by that return.
    fn pick_up_and_return(inner: &Arc<Inner<Unit>>, slot: &super::Slot<()>) {
        match inner.poll_slot(slot, Instant::now(), Waker::noop()) {
            Poll::Ready(Ok((Take::Idle(conn), ..))) => inner.put_back(conn),
            _ => panic!("the waiter was not served a ready connection"),
        }
    }

    /// A pool of one whose connection is lent, a waiter registered behind it (its
    /// ticket and slot), and the return that serves the waiter stopped between its
    /// critical section and the hand-off (what the returning thread holds then).
    fn hand_off_in_flight() -> (Arc<Inner<Unit>>, u64, super::Slot<()>, super::HandOff<()>) {
        let inner = pool_of(1);
        let conn = connect(&inner);
        let Err((ticket, slot)) = inner.take_first(Instant::now(), Waker::noop()) else {
            panic!("at the limit a checkout waits");
        };
        // `put_back`'s critical section, keeping what `Locked` would hand off.
        let mut st = inner.state();
        st.idle.push_back(conn);
        inner.free_slot(&mut st, Some(Instant::now()));
        let (handoff, wake) = st.take_deferred();
        assert!(wake.is_empty(), "the waiter is woken by the hand-off");
        let in_flight = handoff.expect("a return that serves defers the hand-off");
        drop(st);
        (inner, ticket, slot, in_flight)
    }

    /// The hand-off of a served waiter happens after the pool's lock is released; a
    /// waiter polled in between keeps waiting, and is served when it lands.
    #[tokio::test]
    async fn a_waiter_polled_before_its_hand_off_lands_waits_for_it() {
        let (inner, _, slot, (to, hand)) = hand_off_in_flight();
        assert_eq!(inner.status().waiting, 0, "served under the lock");
        assert!(
            inner
                .poll_slot(&slot, Instant::now(), Waker::noop())
                .is_pending()
        );
        inner.hand_off(&to, hand);
        pick_up_and_return(&inner, &slot);
        let status = inner.status();
        assert_eq!((status.idle, status.checked_out, status.waiting), (1, 0, 0));
        assert_eq!(inner.stats().checkouts, 1);
    }

    /// A waiter that leaves (cancelled, or timed out on its own timer) while its
    /// hand-off is in flight is not uncounted twice, and the hand-off, finding it gone,
    /// gives back what it was served: the connection is idle again, the permit free,
    /// and nobody was counted as served.
    #[tokio::test]
    async fn a_waiter_that_leaves_while_its_hand_off_is_in_flight_gets_it_given_back() {
        let (inner, ticket, slot, (to, hand)) = hand_off_in_flight();
        let mut st = inner.state();
        assert!(
            inner.leave(&mut st, ticket, &slot).is_none(),
            "nothing to give back yet: the hand-off has not landed"
        );
        drop(st);
        assert_eq!(inner.status().waiting, 0);
        inner.hand_off(&to, hand);
        let status = inner.status();
        assert_eq!((status.idle, status.checked_out, status.waiting), (1, 0, 0));
        assert_eq!(inner.stats().checkouts, 0, "nobody was served");
        assert!(
            matches!(
                inner.take_first(Instant::now(), Waker::noop()),
                Ok(Take::Idle(_))
            ),
            "the connection given back is lent at once"
        );
    }
}
