//! The waiters' timeouts without a timer each.
//!
//! A checkout at the limit waits in the semaphore's FIFO queue. Its `pool_timeout` is
//! kept by the *reaper*, one background task per pool with one timer: every waiter is
//! also entered, under the pool's lock, in a queue of tickets in arrival order, and
//! since every waiter has the same `pool_timeout`, their deadlines come in that order
//! too. The reaper sleeps until the oldest waiter's deadline, marks every ticket whose
//! deadline has passed as expired (one watermark, [`Inner::expired_upto`]) and wakes
//! them; a woken waiter that finds its ticket expired fails with a timeout. A waiter
//! that leaves (served, timed out, cancelled) marks its entry gone; gone entries are
//! dropped from the front. Every step is O(1) per waiter under the lock.
//!
//! A waiter does not depend on the reaper alone: if the reaper's task ends (the
//! runtime that built the pool is gone), it wakes every waiter, and from then on each
//! waiter keeps its own deadline with its own timer, as one would without a reaper.

// Under the model check the reaper does not run (waiters time out at random instead).
#![cfg_attr(feature = "model-check", allow(dead_code))]

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Weak};
use std::task::Waker;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Inner, State};
use crate::manager::Manager;

/// A registered waiter, in arrival order.
pub(crate) struct Entry {
    pub(super) deadline: Instant,
    /// Woken when the ticket expires or the reaper ends; `None` once taken or gone.
    pub(super) waker: Option<Waker>,
    pub(super) gone: bool,
}

impl<M: Manager> Inner<M> {
    /// Enters a waiter (under the lock); returns its ticket and whether the reaper must
    /// be woken to keep its deadline (it had none to keep).
    pub(super) fn enqueue(
        &self,
        st: &mut State<M::Connection>,
        deadline: Instant,
        waker: &Waker,
    ) -> (u64, bool) {
        let ticket = st.queue_base + st.queue.len() as u64;
        st.queue.push_back(Entry {
            deadline,
            waker: Some(waker.clone()),
            gone: false,
        });
        let wake_reaper = !st.reaper_armed;
        st.reaper_armed = true;
        (ticket, wake_reaper)
    }

    /// Marks a waiter's entry gone (under the lock) and drops gone entries from the
    /// front.
    pub(super) fn dequeue(&self, st: &mut State<M::Connection>, ticket: u64) {
        if let Some(entry) = ticket
            .checked_sub(st.queue_base)
            .and_then(|i| st.queue.get_mut(i as usize))
        {
            entry.gone = true;
            entry.waker = None;
        }
        while st.queue.front().is_some_and(|e| e.gone) {
            st.queue.pop_front();
            st.queue_base += 1;
        }
    }

    /// A waiter polled with another waker than the one it entered with: the reaper
    /// must wake this one.
    pub(super) fn rewake(&self, ticket: u64, waker: &Waker) {
        let mut st = self.state();
        if let Some(entry) = ticket
            .checked_sub(st.queue_base)
            .and_then(|i| st.queue.get_mut(i as usize))
            && !entry.gone
            && entry.waker.is_some()
        {
            entry.waker = Some(waker.clone());
        }
    }

    /// Whether a waiter's ticket has expired.
    pub(super) fn expired(&self, ticket: u64) -> bool {
        ticket < self.expired_upto.load(Acquire)
    }

    /// Whether the reaper keeps the waiters' deadlines (else each keeps its own).
    pub(super) fn reaper_alive(&self) -> bool {
        self.reaper_alive.load(Acquire)
    }

    /// The reaper's round at `now`: expires every ticket whose deadline has passed and
    /// wakes its waiter; returns the next deadline to wake at, if any waiter is left.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut wake = Vec::new();
        let mut st = self.state();
        let mut ticket = self.expired_upto.load(Relaxed).max(st.queue_base);
        let next = loop {
            let index = (ticket - st.queue_base) as usize;
            let Some(entry) = st.queue.get_mut(index) else {
                break None;
            };
            if entry.deadline > now {
                break Some(entry.deadline);
            }
            wake.extend(entry.waker.take());
            ticket += 1;
        };
        self.expired_upto.store(ticket, Release);
        st.reaper_armed = next.is_some();
        drop(st);
        for waker in wake {
            waker.wake();
        }
        next
    }

    /// The reaper ended: every waiter keeps its own deadline from now on.
    fn reaper_gone(&self) {
        let mut st = self.state();
        self.reaper_alive.store(false, Release);
        let wake: Vec<Waker> = st.queue.iter_mut().filter_map(|e| e.waker.take()).collect();
        drop(st);
        for waker in wake {
            waker.wake();
        }
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
