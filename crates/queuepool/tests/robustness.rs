//! What users meet when things go wrong: `close()` during connects, suspects after an
//! invalidation, a manager that panics, a runtime that is gone. Fake database, virtual
//! time.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{FakeConn, FakeError, FakeManager, config, pool, settle};
use queuepool::{Health, Manager, Pool, PoolError, PooledConn};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn close_fails_checkouts_that_are_connecting_or_waiting_to_connect_at_once() {
    let (pool, server) = pool(
        config()
            .pool_size(1)
            .max_overflow(10)
            .max_connecting(3)
            .prefill(false),
    )
    .await;
    server.connect_ms.store(5_000, SeqCst);
    // The refill and two checkouts connect, eight checkouts wait for a connect permit.
    let checkouts: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(|c| PooledConn::id(&c)) })
        })
        .collect();
    settle().await;
    assert_eq!(pool.status().connecting, 3);
    let started = Instant::now();
    let lent = pool.close(10 * S).await;
    assert_eq!(lent, 0);
    assert_eq!(started.elapsed(), Duration::ZERO, "close did not wait");
    for c in checkouts {
        let result = c.await.unwrap();
        assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "every checkout failed at once"
    );
    tokio::time::sleep(10 * S).await;
    assert_eq!(
        server.connects.load(SeqCst),
        0,
        "no connection opened after close"
    );
    assert_eq!(pool.status().checked_out, 0);
}

#[tokio::test(start_paused = true)]
async fn a_suspect_connection_that_answers_its_ping_is_trusted_again() {
    let (pool, server) = pool(config().pool_size(1).pool_recycle(None)).await;
    pool.invalidate_all();
    for _ in 0..200 {
        drop(pool.get().await.unwrap());
        tokio::time::sleep(10 * MS).await;
    }
    assert_eq!(server.pings.load(SeqCst), 1, "pinged once, then trusted");
    assert_eq!(server.connects.load(SeqCst), 1);
}

/// 8 tasks loop on a pool of 2 (always waiters) for 2 s; `invalidate_all()` after
/// 100 ms. Returns the ids lent after it, and the ids opened before it.
async fn saturated_after_invalidation(pre_ping: bool) -> (Vec<u64>, u64, Arc<common::Server>) {
    let (pool, server) = pool(
        config()
            .pool_size(2)
            .max_overflow(0)
            .pre_ping(pre_ping)
            .pool_recycle(None),
    )
    .await;
    let after = Arc::new(Mutex::new(None::<Vec<u64>>));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (pool, after) = (pool.clone(), after.clone());
            tokio::spawn(async move {
                let end = Instant::now() + 2 * S;
                while Instant::now() < end {
                    let mut conn = pool.get().await.unwrap();
                    if let Some(ids) = after.lock().unwrap().as_mut() {
                        ids.push(PooledConn::id(&conn));
                    }
                    conn.query(5 * MS).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(100 * MS).await;
    assert!(pool.status().waiting > 0, "saturated");
    pool.invalidate_all();
    *after.lock().unwrap() = Some(Vec::new());
    for t in tasks {
        t.await.unwrap();
    }
    let ids = after.lock().unwrap().take().unwrap();
    assert!(ids.len() > 400, "{} loans", ids.len());
    (ids, 2, server)
}

#[tokio::test(start_paused = true)]
async fn under_saturation_suspects_are_replaced_on_their_next_lend_without_pre_ping() {
    let (ids, opened_before, _) = saturated_after_invalidation(false).await;
    let stale = ids.iter().filter(|&&id| id <= opened_before).count();
    assert_eq!(stale, 0, "{stale} of {} loans were suspects", ids.len());
}

#[tokio::test(start_paused = true)]
async fn under_saturation_suspects_are_pinged_on_their_next_lend_with_pre_ping() {
    let (ids, _, server) = saturated_after_invalidation(true).await;
    // Each of the two suspects was pinged once at its next lend, then trusted.
    assert_eq!(server.pings.load(SeqCst), 2, "{} loans", ids.len());
    assert_eq!(server.connects.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn one_dead_idle_connection_does_not_close_a_healthy_pool_with_pre_ping() {
    let (pool, server) = pool(config().pool_size(5).pool_recycle(None)).await;
    // The server closed connection 1 only (a terminated backend, an idle timeout).
    server.severed_up_to.store(1, SeqCst);
    // A maintenance round (within a second of use: no ping for staleness later).
    tokio::time::sleep(300 * MS).await;
    assert_eq!(pool.stats().invalidated, 1);
    assert_eq!(
        server.connects.load(SeqCst),
        6,
        "only the dead one was replaced"
    );
    // The four suspects are pinged at their next checkout, and kept.
    let held: Vec<_> = futures(&pool, 5).await;
    assert_eq!(server.pings.load(SeqCst), 4);
    assert_eq!(pool.stats().invalidated, 1);
    drop(held);
}

async fn futures<M: Manager>(pool: &Pool<M>, n: usize) -> Vec<PooledConn<M>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.get().await.unwrap());
    }
    v
}

// ------------------------------------------------------------------ panicking manager

const CONNECT: u32 = 1;
const IS_VALID: u32 = 2;
const RESET: u32 = 4;
const HEALTH: u32 = 8;
const CLOSE: u32 = 16;
const IS_DISCONNECT: u32 = 32;

/// The fake database, with a panic on demand in any method.
#[derive(Clone, Default)]
struct Panicky {
    fake: FakeManager,
    panic_in: Arc<AtomicU32>,
}

impl Panicky {
    fn check(&self, method: u32) {
        if self.panic_in.load(SeqCst) & method != 0 {
            panic!("panic on demand ({method})");
        }
    }
}

impl Manager for Panicky {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn connect(&self) -> Result<FakeConn, FakeError> {
        self.check(CONNECT);
        self.fake.connect().await
    }
    async fn is_valid(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.check(IS_VALID);
        self.fake.is_valid(conn).await
    }
    async fn reset(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        self.check(RESET);
        self.fake.reset(conn).await
    }
    fn needs_reset(&self, conn: &FakeConn) -> bool {
        self.fake.needs_reset(conn)
    }
    fn health(&self, conn: &mut FakeConn) -> Health {
        self.check(HEALTH);
        self.fake.health(conn)
    }
    fn is_disconnect(&self, error: &FakeError) -> bool {
        self.check(IS_DISCONNECT);
        self.fake.is_disconnect(error)
    }
    async fn close(&self, conn: FakeConn) {
        self.check(CLOSE);
        self.fake.close(conn).await
    }
}

async fn panicky(builder: queuepool::ConfigBuilder) -> (Pool<Panicky>, Arc<AtomicU32>) {
    let manager = Panicky::default();
    let panic_in = manager.panic_in.clone();
    let pool = Pool::new(manager, builder.build().unwrap()).await.unwrap();
    (pool, panic_in)
}

/// Nothing checked out, and the whole limit can be checked out at once.
async fn full_capacity(pool: &Pool<Panicky>, limit: usize) {
    settle().await;
    assert_eq!(pool.status().checked_out, 0, "{}", pool.status());
    let held = futures(pool, limit).await;
    assert!(pool.get().await.unwrap_err().is_timeout());
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_connect_fails_the_checkout_and_frees_its_slot() {
    let (pool, panic_in) = panicky(config().pool_size(1).max_overflow(1)).await;
    let held = pool.get().await.unwrap();
    panic_in.store(CONNECT, SeqCst);
    let err = pool.get().await.unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::ManagerPanic {
                method: "connect",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(pool.status().checked_out, 1);
    panic_in.store(0, SeqCst);
    drop(held);
    full_capacity(&pool, 2).await;
    assert_eq!(pool.stats().manager_panics, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_health_check_discards_the_connection_and_frees_its_slot() {
    let (pool, panic_in) = panicky(config().pool_size(2).max_overflow(0).pool_recycle(None)).await;
    panic_in.store(HEALTH, SeqCst);
    // At checkout (under the pool's lock, and again before lending) and at return.
    let conn = pool.get().await.unwrap();
    drop(conn);
    // In a maintenance round.
    tokio::time::sleep(S).await;
    panic_in.store(0, SeqCst);
    tokio::time::sleep(S).await;
    assert_eq!(
        pool.status().idle,
        2,
        "the refill replaced what was discarded"
    );
    full_capacity(&pool, 2).await;
    assert!(pool.stats().manager_panics >= 3, "{:?}", pool.stats());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_ping_or_reset_discards_the_connection_and_frees_its_slot() {
    let (pool, panic_in) = panicky(config().pool_size(1).max_overflow(1)).await;
    tokio::time::sleep(2 * S).await;
    panic_in.store(IS_VALID, SeqCst);
    // The stale connection's ping panics: it is replaced, the checkout goes on.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(PooledConn::id(&conn), 2);
    panic_in.store(RESET, SeqCst);
    conn.begin();
    drop(conn); // the rollback-on-return panics, polled inside `drop`
    panic_in.store(0, SeqCst);
    full_capacity(&pool, 2).await;
    assert_eq!(pool.stats().manager_panics, 2);
    assert_eq!(pool.stats().invalidated, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_close_or_is_disconnect_leaks_nothing() {
    let (pool, panic_in) = panicky(
        config()
            .pool_size(1)
            .max_overflow(1)
            .overflow_idle(Duration::ZERO),
    )
    .await;
    panic_in.store(CLOSE | IS_DISCONNECT, SeqCst);
    let mut a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(!PooledConn::report_error(&mut a, &FakeError::Disconnected));
    drop(a);
    drop(b); // overflow, closed on return: the close panics in its task
    settle().await;
    panic_in.store(0, SeqCst);
    full_capacity(&pool, 2).await;
    assert_eq!(pool.stats().manager_panics, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_background_refill_does_not_stop_it() {
    let (pool, panic_in) = panicky(config().pool_size(3).pool_recycle(Some(10 * S))).await;
    panic_in.store(CONNECT, SeqCst);
    // Recycling empties the pool; every refill attempt panics for 20 s.
    tokio::time::sleep(30 * S).await;
    assert_eq!(pool.status().idle, 0);
    assert!(pool.stats().manager_panics >= 3);
    panic_in.store(0, SeqCst);
    tokio::time::sleep(7 * S).await;
    assert_eq!(pool.status().idle, 3, "refilled after the panics stopped");
}

// ------------------------------------------------------------ a runtime that is gone

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_waiting_checkout_times_out_after_pool_timeout_when_the_pools_runtime_is_gone() {
    let first = paused_runtime();
    let (pool, _) = first.block_on(pool(
        config().pool_size(1).max_overflow(0).pool_timeout(2 * S),
    ));
    let held = first.block_on(pool.get()).unwrap();
    drop(first);
    let second = paused_runtime();
    second.block_on(async {
        let started = Instant::now();
        let result = tokio::time::timeout(10 * S, pool.get()).await;
        let err = result.expect("the wait ended by itself").unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert_eq!(started.elapsed(), 2 * S);
    });
    drop(held);
}

#[test]
fn a_checkout_handed_a_connection_returned_without_a_runtime_ends_within_its_bound() {
    let first = paused_runtime();
    let (pool, server) = first.block_on(pool(
        config()
            .pool_size(1)
            .max_overflow(0)
            .pool_timeout(S)
            .connect_timeout(S),
    ));
    let mut held = first.block_on(pool.get()).unwrap();
    held.begin();
    drop(first);
    server.reset_ms.store(60_000, SeqCst);
    server.connect_ms.store(60_000, SeqCst);
    let second = paused_runtime();
    second.block_on(async {
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = tokio::time::timeout(10 * S, pool.get()).await;
                (result.map(|r| r.map(drop)), started.elapsed())
            })
        };
        tokio::time::sleep(900 * MS).await;
        // Returned where no runtime runs: the rollback is left to the next checkout.
        std::thread::spawn(move || drop(held)).join().unwrap();
        let (result, took) = waiter.await.unwrap();
        let err = result.expect("the checkout ended by itself").unwrap_err();
        assert!(err.is_connect() || err.is_timeout(), "{err}");
        assert!(
            took <= 2 * S,
            "took {took:?}, bound pool_timeout + connect_timeout = 2 s"
        );
    });
}

// ------------------------------------------------------------ the waiters' timeouts

/// The reaper wakes a waiter through the waker it last saw: a checkout future first
/// polled in one place (here a no-op waker) and then moved into a task still times out
/// on time.
#[tokio::test(start_paused = true)]
async fn a_waiter_polled_by_another_waker_still_times_out_on_time() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0).pool_timeout(2 * S)).await;
    let _held = pool.get().await.unwrap();
    let other = pool.clone();
    let started = Instant::now();
    let mut waiting = Box::pin(async move { other.get().await.map(drop) });
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(waiting.as_mut().poll(&mut cx).is_pending(), "it waits");
    let result = tokio::time::timeout(10 * S, tokio::spawn(waiting))
        .await
        .expect("the waiter was woken at its deadline")
        .unwrap();
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(started.elapsed(), 2 * S);
}

/// Waiters time out in arrival order, each at its own deadline, with one timer.
#[tokio::test(start_paused = true)]
async fn waiters_arriving_apart_each_time_out_at_their_own_deadline() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0).pool_timeout(2 * S)).await;
    let _held = pool.get().await.unwrap();
    let started = Instant::now();
    let mut waiters = Vec::new();
    for i in 0..3u32 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move {
            let err = p.get().await.map(drop).unwrap_err();
            assert!(err.is_timeout(), "{err}");
            Instant::now()
        }));
        if i < 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for (i, waiter) in waiters.into_iter().enumerate() {
        let ended = waiter.await.unwrap();
        let expected = Duration::from_millis(500) * i as u32 + 2 * S;
        assert_eq!(ended - started, expected, "waiter {i}");
    }
    assert_eq!(pool.status().waiting, 0);
}

/// A permit handed to a waiter that leaves before claiming it goes back to the free
/// permits: the background refill can use it at once (it never takes a waiter's).
#[tokio::test(start_paused = true)]
async fn a_permit_handed_to_a_waiter_that_left_is_free_again() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0).pool_timeout(60 * S)).await;
    let mut held = pool.get().await.unwrap();
    let other = pool.clone();
    let waiter = tokio::spawn(async move { other.get().await.map(drop) });
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    // The connection is discarded: its slot's permit goes to the waiter, which is
    // cancelled before it runs.
    PooledConn::invalidate(&mut held);
    drop(held);
    waiter.abort();
    settle().await;
    tokio::time::sleep(S).await;
    let status = pool.status();
    assert_eq!((status.waiting, status.checked_out), (0, 0));
    assert_eq!(status.idle, 1, "the refill reopened the pool's connection");
}

/// Two returns while one checkout waits: the first permit goes to the waiter, the
/// second is free, and a checkout arriving before the waiter has run takes it at once
/// (it overtakes nobody). Registering it as a second waiter instead would leave that
/// permit free with someone waiting: it would wait until the next return, or time out
/// beside an idle connection (under steady load, one client always waiting).
#[tokio::test(start_paused = true)]
async fn a_free_permit_is_taken_at_once_while_every_waiter_has_one_on_its_way() {
    let (pool, _) = pool(config().pool_size(2).max_overflow(0).pool_timeout(5 * S)).await;
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let other = pool.clone();
    // The waiter keeps what it gets: nothing is returned after the two returns below.
    let waiter = tokio::spawn(async move { other.get().await });
    settle().await;
    assert_eq!(pool.status().waiting, 1);
    drop(a);
    drop(b);
    // Polled before the waiter's task runs again.
    let late = tokio::time::timeout(MS, pool.get())
        .await
        .expect("served at once: a connection is idle and no waiter lacks a permit")
        .unwrap();
    let served = waiter.await.unwrap().expect("the waiter is served too");
    drop((late, served));
    let status = pool.status();
    assert_eq!((status.waiting, status.checked_out, status.idle), (0, 0, 2));
}

/// A waiter served (the return took the connection for it) and cancelled before it ran
/// gives the connection back: the next waiter gets it, and nothing is counted twice.
#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_waiter_that_left_goes_to_the_next_waiter() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0).pool_timeout(60 * S)).await;
    let held = pool.get().await.unwrap();
    let id = held.id;
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await }
    });
    settle().await;
    assert_eq!(pool.status().waiting, 2);
    drop(held);
    first.abort();
    let got = tokio::time::timeout(S, second)
        .await
        .expect("the second waiter is served without waiting for a timeout")
        .unwrap()
        .unwrap();
    assert_eq!(
        got.id, id,
        "the same connection, given back by the first waiter"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.checkouts, stats.wait.count),
        (2, 2),
        "two loans (the held one and the second waiter's), not three"
    );
    let status = pool.status();
    assert_eq!((status.waiting, status.checked_out, status.idle), (0, 1, 0));
    drop(got);
    assert_eq!(pool.status().idle, 1);
}
