//! The pool's rules, one test each, on a fake database and virtual time.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{Logs, config, pool, settle};
use queuepool::{Order, PoolError, PooledConn, ResetOnReturn};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn prefill_opens_pool_size_connections() {
    let (pool, server) = pool(config().pool_size(5)).await;
    assert_eq!(server.connects.load(SeqCst), 5);
    assert_eq!(
        pool.status().to_string(),
        "Pool size: 5  Connections in pool: 5 Current Overflow: 0 Current Checked out connections: 0"
    );
}

#[tokio::test(start_paused = true)]
async fn prefill_fails_fast_when_the_database_is_down() {
    let manager = common::FakeManager::default();
    manager.server.down.store(true, SeqCst);
    let started = Instant::now();
    let err = queuepool::Pool::new(manager, config().build().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    assert!(started.elapsed() < S);
}

#[tokio::test(start_paused = true)]
async fn checkout_below_limit_never_waits() {
    let (pool, server) = pool(config().pool_size(5).max_overflow(10)).await;
    server.connect_ms.store(0, SeqCst);
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(pool.get().await.unwrap());
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no checkout below the limit may wait"
    );
    assert_eq!(
        pool.status().to_string(),
        "Pool size: 5  Connections in pool: 0 Current Overflow: 10 Current Checked out connections: 15"
    );
}

#[tokio::test(start_paused = true)]
async fn checkout_at_limit_times_out_after_pool_timeout() {
    let (pool, _) = pool(config().pool_size(5).max_overflow(10).pool_timeout(30 * S)).await;
    let _held: Vec<_> = futures_all(&pool, 15).await;
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(started.elapsed(), 30 * S);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("pool_size") && msg.contains("max_overflow") && msg.contains("pool_timeout"),
        "{msg}"
    );
    assert!(err.is_timeout());
    assert_eq!(pool.stats().timeouts, 1);
}

async fn futures_all(
    pool: &queuepool::Pool<common::FakeManager>,
    n: usize,
) -> Vec<PooledConn<common::FakeManager>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.get().await.unwrap());
    }
    v
}

#[tokio::test(start_paused = true)]
async fn each_waiter_times_out_pool_timeout_after_its_own_arrival() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0).pool_timeout(10 * S)).await;
    let _held = pool.get().await.unwrap();
    let started = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let pool = pool.clone();
        waiters.push(tokio::spawn(async move {
            let arrived = Instant::now();
            let err = pool.get().await.unwrap_err();
            (err.is_timeout(), arrived.elapsed(), Instant::now())
        }));
        tokio::time::sleep(3 * S).await;
    }
    for (i, w) in waiters.into_iter().enumerate() {
        let (timed_out, waited, at) = w.await.unwrap();
        assert!(timed_out);
        assert_eq!(waited, 10 * S, "waiter {i}");
        assert_eq!(at - started, (10 + 3 * i as u32) * S, "waiter {i}");
    }
    assert_eq!(pool.status().waiting, 0);
    assert_eq!(pool.stats().timeouts, 3);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0)).await;
    let held = pool.get().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..5 {
        let pool = pool.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(conn);
        });
        // Arrive one after the other.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(pool.status().waiting, 5);
    drop(held);
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_new_checkout_cannot_overtake_a_waiter() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0)).await;
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        // The task's output keeps the guard alive until the handle is awaited.
        tokio::spawn(async move { pool.get().await })
    };
    settle().await;
    let id = PooledConn::id(&held);
    drop(held);
    // The connection went to the waiter, not to whoever asks next.
    assert!(pool.get().await.is_err_and(|e| e.is_timeout()));
    assert_eq!(PooledConn::id(&waiter.await.unwrap().unwrap()), id);
}

#[tokio::test(start_paused = true)]
async fn connections_are_recycled_after_pool_recycle_with_jitter() {
    let (pool, server) = pool(
        config()
            .pool_size(20)
            .pool_recycle(Some(100 * S))
            .overflow_idle(Duration::ZERO),
    )
    .await;
    tokio::time::sleep(96 * S).await;
    assert_eq!(
        pool.stats().recycled,
        0,
        "nothing expires before recycle - 2.5 %"
    );
    tokio::time::sleep(4 * S).await;
    let half = pool.stats().recycled;
    assert!(
        half > 0 && half < 20,
        "jitter spreads expiry: {half} of 20 expired at 100 s"
    );
    tokio::time::sleep(4 * S).await;
    assert_eq!(pool.stats().recycled, 20);
    settle().await;
    assert_eq!(
        server.connects.load(SeqCst),
        40,
        "the refill replaced every recycled connection"
    );
    assert_eq!(pool.status().idle, 20);
}

#[tokio::test(start_paused = true)]
async fn an_expired_connection_is_replaced_at_checkout() {
    let logs = Logs::capture();
    let (pool, _) = pool(config().pool_size(1).pool_recycle(Some(10 * S))).await;
    let first = PooledConn::id(&pool.get().await.unwrap());
    // Hold it past its lifetime so the maintenance task cannot recycle it while idle.
    let conn = pool.get().await.unwrap();
    tokio::time::sleep(11 * S).await;
    drop(conn);
    let next = pool.get().await.unwrap();
    assert_ne!(PooledConn::id(&next), first);
    assert_eq!(logs.count("Connection exceeded timeout; recycling"), 1);
}

#[tokio::test(start_paused = true)]
async fn pre_ping_skips_connections_used_within_a_second() {
    let logs = Logs::capture();
    let (pool, server) = pool(config().pool_size(1)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(server.pings.load(SeqCst), 0, "just opened: no ping");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(server.pings.load(SeqCst), 0, "used 0.5 s ago: no ping");
    tokio::time::sleep(2 * S).await;
    drop(pool.get().await.unwrap());
    assert_eq!(server.pings.load(SeqCst), 1, "idle 2 s: pinged");
    assert_eq!(logs.count("Pool pre-ping on connection"), 1);
}

#[tokio::test(start_paused = true)]
async fn pre_ping_off_never_pings() {
    let (pool, server) = pool(config().pool_size(1).pre_ping(false)).await;
    tokio::time::sleep(5 * S).await;
    drop(pool.get().await.unwrap());
    assert_eq!(server.pings.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_pre_ping_replaces_every_stale_connection_without_a_failure() {
    let logs = Logs::capture();
    let (pool, server) = pool(config().pool_size(5).pool_recycle(None)).await;
    tokio::time::sleep(2 * S).await;
    server.restart();
    for _ in 0..20 {
        let mut conn = pool.get().await.unwrap();
        conn.query(Duration::ZERO)
            .await
            .expect("a pinged connection works");
    }
    assert_eq!(logs.count("Disconnection detected on checkout, invalidating all pooled connections prior to current timestamp"), 1);
    // One ping found the restart; the other stale connections were replaced as suspects.
    assert!(pool.stats().invalidated >= 5);
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_server_closed_while_idle_is_not_lent_even_if_just_used() {
    let (pool, server) = pool(config().pool_size(3)).await;
    for _ in 0..3 {
        drop(pool.get().await.unwrap());
    }
    server.sever_all();
    // Used less than a second ago, so no pre-ping: the manager's health check sees it.
    for _ in 0..5 {
        let mut conn = pool.get().await.unwrap();
        conn.query(Duration::ZERO)
            .await
            .expect("never lent a closed connection");
    }
    assert_eq!(pool.stats().pool_invalidations, 1);
    assert_eq!(server.pings.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_the_server_closed_are_replaced_in_the_background() {
    let (pool, server) = pool(config().pool_size(3)).await;
    server.sever_all();
    tokio::time::sleep(S).await;
    assert_eq!(pool.stats().invalidated, 3);
    assert_eq!(server.connects.load(SeqCst), 6);
    assert_eq!(pool.status().idle, 3);
}

#[tokio::test(start_paused = true)]
async fn without_pre_ping_one_reported_disconnect_replaces_the_whole_pool() {
    let (pool, server) = pool(config().pool_size(5).pre_ping(false).pool_recycle(None)).await;
    server.restart();
    let mut failures = 0;
    for _ in 0..20 {
        let mut conn = pool.get().await.unwrap();
        if let Err(e) = conn.query(Duration::ZERO).await {
            assert!(PooledConn::report_error(&mut conn, &e));
            failures += 1;
        }
    }
    assert_eq!(
        failures, 1,
        "only the first request after the restart fails"
    );
    tokio::time::sleep(S).await;
    assert_eq!(
        pool.stats().invalidated,
        5,
        "every stale connection was closed"
    );
    assert_eq!(server.connects.load(SeqCst), 10, "and replaced");
    assert_eq!(pool.status().idle, 5);
}

#[tokio::test(start_paused = true)]
async fn a_connection_returned_in_a_transaction_is_rolled_back_before_reuse() {
    let logs = Logs::capture();
    let (pool, server) = pool(config().pool_size(1).max_overflow(0)).await;
    server.reset_ms.store(50, SeqCst);
    let mut conn = pool.get().await.unwrap();
    conn.begin();
    drop(conn);
    // The next borrower waits for the rollback rather than seeing the transaction.
    let next = pool.get().await.unwrap();
    assert!(!next.in_tx);
    assert_eq!(server.resets.load(SeqCst), 1);
    assert_eq!(logs.count("Connection rollback-on-return"), 1);
    assert_eq!(logs.count("Connection being returned to pool"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_reset_fails_is_closed_not_lent() {
    let (pool, server) = pool(config().pool_size(1)).await;
    server.fail_reset.store(true, SeqCst);
    let mut conn = pool.get().await.unwrap();
    let id = PooledConn::id(&conn);
    conn.begin();
    drop(conn);
    let next = pool.get().await.unwrap();
    assert_ne!(PooledConn::id(&next), id);
    assert!(!next.in_tx);
    settle().await;
    assert_eq!(pool.stats().invalidated, 1);
}

#[tokio::test(start_paused = true)]
async fn a_reset_that_hangs_is_cut_at_connect_timeout_and_the_connection_closed() {
    let (pool, server) = pool(config().pool_size(1).max_overflow(0).connect_timeout(3 * S)).await;
    server.reset_ms.store(60_000, SeqCst);
    let mut conn = pool.get().await.unwrap();
    let id = PooledConn::id(&conn);
    conn.begin();
    drop(conn);
    let started = Instant::now();
    // The only slot is held by the hanging reset until connect_timeout.
    let next = pool.get().await.unwrap();
    assert_eq!(started.elapsed(), 3 * S);
    assert_ne!(PooledConn::id(&next), id);
    assert!(!next.in_tx);
    assert_eq!(pool.stats().invalidated, 1);
}

#[tokio::test(start_paused = true)]
async fn reset_on_return_none_leaves_the_connection_as_it_is() {
    let (pool, server) = pool(config().pool_size(1).reset_on_return(ResetOnReturn::None)).await;
    let mut conn = pool.get().await.unwrap();
    conn.begin();
    drop(conn);
    assert!(pool.get().await.unwrap().in_tx);
    assert_eq!(server.resets.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_guard_returned_outside_a_runtime_is_reset_at_the_next_checkout() {
    let (pool, server) = pool(config().pool_size(1)).await;
    let mut conn = pool.get().await.unwrap();
    conn.begin();
    std::thread::spawn(move || drop(conn)).join().unwrap();
    assert_eq!(server.resets.load(SeqCst), 0);
    assert!(!pool.get().await.unwrap().in_tx);
    assert_eq!(server.resets.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn fifo_rotates_and_lifo_reuses_the_hottest() {
    let ids = |order| async move {
        let (pool, _) = pool(config().pool_size(3).order(order)).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(PooledConn::id(&pool.get().await.unwrap()));
        }
        seen
    };
    assert_eq!(ids(Order::Fifo).await, vec![1, 2, 3, 1]);
    let lifo = ids(Order::Lifo).await;
    assert!(lifo.iter().all(|&id| id == lifo[0]), "{lifo:?}");
}

#[tokio::test(start_paused = true)]
async fn overflow_connections_close_after_overflow_idle() {
    let (pool, _) = pool(config().pool_size(5).max_overflow(10).overflow_idle(10 * S)).await;
    drop(futures_all(&pool, 15).await);
    settle().await;
    assert_eq!(
        pool.status().idle,
        15,
        "kept for reuse while overflow_idle has not passed"
    );
    tokio::time::sleep(5 * S).await;
    assert_eq!(pool.status().idle, 15);
    tokio::time::sleep(6 * S).await;
    assert_eq!(pool.status().idle, 5);
    assert_eq!(pool.status().overflow, 0);
}

#[tokio::test(start_paused = true)]
async fn overflow_is_trimmed_under_light_traffic_too() {
    let (pool, _) = pool(config().pool_size(5).max_overflow(10).overflow_idle(10 * S)).await;
    drop(futures_all(&pool, 15).await);
    // One request a second needs one connection, not fifteen.
    for _ in 0..12 {
        tokio::time::sleep(S).await;
        drop(pool.get().await.unwrap());
    }
    assert_eq!(pool.status().idle, 5, "{}", pool.status());
}

#[tokio::test(start_paused = true)]
async fn zero_overflow_idle_closes_overflow_on_return_like_sqlalchemy() {
    let (pool, server) = pool(
        config()
            .pool_size(5)
            .max_overflow(10)
            .overflow_idle(Duration::ZERO),
    )
    .await;
    drop(futures_all(&pool, 15).await);
    settle().await;
    assert_eq!(pool.status().idle, 5);
    assert_eq!(server.closes.load(SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn unlimited_overflow_never_waits() {
    let (pool, _) = pool(config().pool_size(2).unlimited_overflow()).await;
    let started = Instant::now();
    let held = futures_all(&pool, 100).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(pool.status().overflow, 98);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn at_most_max_connecting_attempts_are_in_flight() {
    let (pool, server) = pool(
        config()
            .pool_size(1)
            .max_overflow(9)
            .max_connecting(2)
            .prefill(false),
    )
    .await;
    server.connect_ms.store(100, SeqCst);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(server.max_connecting_seen.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_connection_attempt_is_bounded_by_connect_timeout() {
    let (pool, server) = pool(
        config()
            .pool_size(1)
            .max_overflow(1)
            .prefill(false)
            .connect_timeout(3 * S),
    )
    .await;
    server.connect_ms.store(60_000, SeqCst);
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, PoolError::ConnectTimeout(_)), "{err}");
    assert_eq!(started.elapsed(), 3 * S);
    assert_eq!(pool.status().checked_out, 0);
}

#[tokio::test(start_paused = true)]
async fn while_the_database_refuses_waiters_fail_fast_with_the_cause() {
    let (pool, server) = pool(config().pool_size(1).max_overflow(0).pool_timeout(30 * S)).await;
    let held = pool.get().await.unwrap();
    let id = PooledConn::id(&held);
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (pool.get().await.map(|_| ()), started.elapsed())
        })
    };
    settle().await;
    server.down.store(true, SeqCst);
    server.connect_ms.store(100, SeqCst);
    let mut held = held;
    PooledConn::invalidate(&mut held);
    drop(held);
    let (result, waited) = waiter.await.unwrap();
    assert!(matches!(result, Err(PoolError::Connect(_))), "{result:?}");
    assert!(
        waited < S,
        "failed after {waited:?}, not after pool_timeout"
    );
    assert!(id > 0);
    assert_eq!(pool.status().checked_out, 0);
}

#[tokio::test(start_paused = true)]
async fn refill_backs_off_while_the_database_is_down_and_recovers() {
    let (pool, server) = pool(config().pool_size(3).pool_recycle(Some(10 * S))).await;
    server.down.store(true, SeqCst);
    let before = server.connect_attempts.load(SeqCst);
    // Recycling empties the pool; the refill retries with backoff 10 ms .. 5 s.
    tokio::time::sleep(40 * S).await;
    let attempts = server.connect_attempts.load(SeqCst) - before;
    assert!(
        (8..=25).contains(&attempts),
        "{attempts} attempts in 30 s of outage"
    );
    server.down.store(false, SeqCst);
    tokio::time::sleep(7 * S).await;
    assert_eq!(pool.status().idle, 3, "refilled within the longest backoff");
}

#[tokio::test(start_paused = true)]
async fn a_leaked_connection_is_reported_with_the_holders_location() {
    let logs = Logs::capture();
    let (pool, _) = pool(config().pool_size(1).leak_threshold(Some(2 * S))).await;
    let conn = pool.get().await.unwrap();
    let line = line!() - 1;
    tokio::time::sleep(S).await;
    assert_eq!(logs.count("leak detection"), 0);
    tokio::time::sleep(2 * S).await;
    settle().await;
    assert_eq!(logs.count("leak detection"), 1, "{}", logs.all());
    assert!(
        logs.all().contains(&format!("tests/pool.rs:{line}")),
        "{}",
        logs.all()
    );
    assert_eq!(pool.stats().leaks, 1);
    drop(conn);
    // A connection returned in time is not reported.
    let quick = pool.get().await.unwrap();
    drop(quick);
    tokio::time::sleep(5 * S).await;
    assert_eq!(pool.stats().leaks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_leak_warning_names_the_holder_set_by_a_framework() {
    let logs = Logs::capture();
    let (pool, _) = pool(config().pool_size(1).leak_threshold(Some(S))).await;
    let mut conn = pool.get().await.unwrap();
    PooledConn::set_holder(&mut conn, "GET /items/{id}");
    tokio::time::sleep(2 * S).await;
    settle().await;
    assert!(
        logs.all().contains("by GET /items/{id} held longer"),
        "{}",
        logs.all()
    );
}

#[tokio::test(start_paused = true)]
async fn a_guard_dropped_mid_query_discards_its_connection() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0)).await;
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let id = PooledConn::id(&conn);
            let _ = tokio::time::timeout(Duration::from_millis(10), conn.query(10 * S)).await;
            id
        })
    };
    let id = task.await.unwrap();
    let next = pool.get().await.unwrap();
    assert_ne!(
        PooledConn::id(&next),
        id,
        "the interrupted connection was not reused"
    );
    assert_eq!(pool.stats().invalidated, 1);
}

#[tokio::test(start_paused = true)]
async fn a_guard_dropped_during_a_panic_is_discarded() {
    let (pool, _) = pool(config().pool_size(1)).await;
    let p = pool.clone();
    let id = tokio::spawn(async move {
        let conn = p.get().await.unwrap();
        if PooledConn::id(&conn) > 0 {
            panic!("handler failed");
        }
    })
    .await;
    assert!(id.is_err());
    assert_eq!(pool.status().checked_out, 0);
    assert_eq!(pool.stats().invalidated, 1);
    assert_eq!(PooledConn::id(&pool.get().await.unwrap()), 2);
}

#[tokio::test(start_paused = true)]
async fn detach_takes_the_connection_out_of_the_accounting() {
    let (pool, server) = pool(config().pool_size(1).max_overflow(0)).await;
    let raw = PooledConn::detach(pool.get().await.unwrap());
    assert_eq!(pool.status().checked_out, 0);
    let next = pool.get().await.unwrap();
    assert_ne!(next.id, raw.id);
    assert_eq!(server.connects.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_and_closes_connections_as_they_return() {
    let (pool, server) = pool(config().pool_size(2).max_overflow(0)).await;
    let held = futures_all(&pool, 2).await;
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(drop) })
    };
    settle().await;
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.close(10 * S).await })
    };
    settle().await;
    assert!(waiter.await.unwrap().unwrap_err().is_closed());
    assert!(pool.get().await.unwrap_err().is_closed());
    drop(held);
    assert_eq!(
        closing.await.unwrap(),
        0,
        "close returned once everything came back"
    );
    settle().await;
    assert_eq!(server.closes.load(SeqCst), 2);
    assert_eq!(pool.status().idle, 0);
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_on_lent_connections_after_its_grace() {
    let (pool, _) = pool(config().pool_size(1)).await;
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    assert_eq!(pool.close(2 * S).await, 1);
    assert_eq!(started.elapsed(), 2 * S);
    drop(held);
    assert_eq!(pool.status().checked_out, 0);
}

#[tokio::test(start_paused = true)]
async fn pool_logs_the_lines_the_tutorial_reads() {
    let logs = Logs::capture();
    let (pool, _) = pool(config().pool_size(1)).await;
    let mut conn = pool.get().await.unwrap();
    conn.begin();
    drop(conn);
    settle().await;
    pool.close(S).await;
    settle().await;
    for line in [
        "Created new connection",
        "Connection checked out from pool",
        "Connection being returned to pool",
        "Connection rollback-on-return",
        "Closing connection",
    ] {
        assert!(logs.count(line) >= 1, "missing {line:?} in\n{}", logs.all());
    }
    assert!(logs.all().contains("queuepool::pool"));
}

#[tokio::test(start_paused = true)]
async fn stats_count_checkouts_and_time() {
    let (pool, _) = pool(config().pool_size(1).max_overflow(0)).await;
    let conn = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(2 * S).await;
    drop(conn);
    waiter.await.unwrap();
    let stats = pool.stats();
    assert_eq!(stats.checkouts, 2);
    assert_eq!(stats.connections_created, 1);
    assert_eq!(stats.wait.count, 2);
    assert_eq!(stats.wait.max, 2 * S);
    assert_eq!(stats.usage.max, 2 * S);
}

/// A waiter served an idle connection by a hand-off counts its checkout when it picks
/// the connection up, off the pool's lock; if the connection then needs a check (a
/// ping: here it became suspect while the waiter waited), that count is taken back and
/// the checkout is counted once, when it is lent after the ping.
#[tokio::test(start_paused = true)]
async fn a_served_waiter_whose_connection_needs_a_ping_is_counted_once() {
    let (pool, server) = pool(config().pool_size(1).max_overflow(0).pre_ping(true)).await;
    let conn = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    tokio::time::sleep(2 * S).await;
    pool.invalidate_all();
    let pings = server.pings.load(SeqCst);
    drop(conn);
    waiter.await.unwrap();
    assert_eq!(
        server.pings.load(SeqCst),
        pings + 1,
        "the suspect was pinged"
    );
    let stats = pool.stats();
    assert_eq!(stats.checkouts, 2, "{stats:?}");
    assert_eq!(stats.wait.count, 2);
    assert_eq!(stats.wait.max, 2 * S);
}
