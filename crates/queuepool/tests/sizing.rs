//! Sizing rules held to SQLAlchemy's `QueuePool` (test/engine/test_pool.py) and the
//! validation of a configuration, on a fake database and virtual time.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{config, pool, settle};
use queuepool::{Pool, PoolError, PooledConn};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn zero_overflow_idle_closes_a_return_only_when_the_idle_queue_holds_pool_size() {
    let (pool, server) = pool(
        config()
            .pool_size(3)
            .max_overflow(10)
            .overflow_idle(Duration::ZERO),
    )
    .await;
    // 200 checkouts at a steady concurrency of 4.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let mut conn = pool.get().await.unwrap();
                    conn.query(10 * MS).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    settle().await;
    assert_eq!(pool.stats().checkouts, 200);
    // SQLAlchemy: 4 opened, 1 closed (the fourth return finds 3 idle).
    assert_eq!(server.connects.load(SeqCst), 4);
    assert_eq!(server.closes.load(SeqCst), 1);
    assert_eq!(pool.status().idle, 3);
}

/// `(pool.size(), pool.checkedin(), pool.overflow(), pool.checkedout())`
fn walk(pool: &Pool<common::FakeManager>) -> (u32, usize, i64, usize) {
    let s = pool.status();
    (s.pool_size, s.idle, s.overflow, s.checked_out)
}

#[tokio::test(start_paused = true)]
async fn the_status_walk_of_sqlalchemys_test_queuepool_close_reads_the_same() {
    // pool_size=3, max_overflow=-1, an empty pool, overflow closed on return.
    let (pool, _) = pool(
        config()
            .pool_size(3)
            .unlimited_overflow()
            .overflow_idle(Duration::ZERO)
            .prefill(false),
    )
    .await;
    let mut held = Vec::new();
    for expected in [
        (3, 0, -2, 1),
        (3, 0, -1, 2),
        (3, 0, 0, 3),
        (3, 0, 1, 4),
        (3, 0, 2, 5),
        (3, 0, 3, 6),
    ] {
        held.push(Some(pool.get().await.unwrap()));
        assert_eq!(walk(&pool), expected);
    }
    // c4, c3, c2 returned.
    for i in [3, 2, 1] {
        held[i] = None;
    }
    assert_eq!(walk(&pool), (3, 3, 3, 3));
    // c1, c5, c6 returned: the overflow is closed.
    for i in [0, 4, 5] {
        held[i] = None;
    }
    assert_eq!(walk(&pool), (3, 3, 0, 0));
    let c1 = pool.get().await.unwrap();
    let c2 = pool.get().await.unwrap();
    assert_eq!(walk(&pool), (3, 1, 0, 2));
    drop(c2);
    assert_eq!(walk(&pool), (3, 2, 0, 1));
    drop(c1);
    assert_eq!(walk(&pool), (3, 3, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn pool_size_zero_is_rejected_with_a_pointer_to_unlimited_overflow() {
    let err = config().pool_size(0).max_overflow(5).build().unwrap_err();
    assert!(err.to_string().contains("unlimited_overflow()"), "{err}");
    // Set after `build()`: `Pool::new` refuses it the same way.
    let mut cfg = config().build().unwrap();
    cfg.pool_size = 0;
    let err = Pool::new(common::FakeManager::default(), cfg)
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("unlimited_overflow()"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn pool_new_rejects_a_configuration_made_invalid_after_build() {
    let manager = common::FakeManager::default();
    let server = manager.server.clone();
    let mut cfg = config().build().unwrap();
    cfg.max_connecting = 0;
    let err = Pool::new(manager, cfg).await.unwrap_err();
    assert!(
        matches!(err, PoolError::Config(_)) && err.to_string().contains("max_connecting"),
        "{err}"
    );
    assert_eq!(
        server.connect_attempts.load(SeqCst),
        0,
        "nothing opened for it"
    );
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_waiters_time_out_together_and_status_stays_exact() {
    let (pool, _) = pool(
        config()
            .pool_size(1)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(1)),
    )
    .await;
    let held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..10_000)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    while pool.status().waiting < 10_000 {
        tokio::task::yield_now().await;
    }
    let mut timed_out = 0;
    for w in waiters {
        if let Err(PoolError::Timeout { .. }) = w.await.unwrap() {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 10_000);
    assert_eq!(pool.status().waiting, 0);
    assert_eq!(pool.stats().timeouts, 10_000);
    // The queue is empty and the slot still works.
    let id = PooledConn::id(&held);
    drop(held);
    assert_eq!(PooledConn::id(&pool.get().await.unwrap()), id);
}
