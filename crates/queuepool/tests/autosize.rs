//! `pool_size = auto` through the public API, in virtual time: a simulated database
//! whose queries slow down with concurrency beyond its cores.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use queuepool::autosize::LimitReason;
use tokio::time::Instant;

/// `clients` tasks run queries for `secs` of virtual time against a database of
/// `cores` cores: a query takes `work` times the number of queries running per core
/// (at least one). Returns the limit sampled every 100 ms after `settle` seconds, and
/// the most queries that ran at once.
async fn load(
    pool: &queuepool::Pool<common::FakeManager>,
    clients: usize,
    cores: usize,
    work: Duration,
    secs: u64,
    settle: u64,
) -> (Vec<usize>, usize) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let running = running.clone();
        let peak = peak.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut conn = pool.get().await.expect("no timeout at this load");
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                let slowdown = (now as f64 / cores as f64).max(1.0);
                conn.query(work.mul_f64(slowdown)).await.expect("query");
                running.fetch_sub(1, SeqCst);
            }
        }));
    }
    let mut limits = Vec::new();
    let sample_from = Instant::now() + Duration::from_secs(settle);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = pool.status();
        assert!(status.limit <= 32 && status.checked_out <= 32, "{status:?}");
        if Instant::now() >= sample_from {
            limits.push(status.limit);
        }
    }
    for t in tasks {
        t.await.expect("client");
    }
    (limits, peak.load(SeqCst))
}

#[tokio::test(start_paused = true)]
async fn auto_pool_settles_near_the_cores_of_a_busy_database_and_says_why() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let (pool, _) = common::pool(
        common::config()
            .pool_size(2)
            .auto_size(2, 32)
            .pool_timeout(Duration::from_secs(30))
            .name("auto-test"),
    )
    .await;
    assert_eq!(pool.status().limit, 2);
    let (limits, peak) = load(&pool, 48, 4, Duration::from_millis(2), 20, 8).await;
    let (lo, hi) = (limits.iter().min().unwrap(), limits.iter().max().unwrap());
    // The database has 4 cores; a fixed pool of 32 would run 32 queries at once, each
    // 8 times slower.
    assert!(*lo >= 4 && *hi <= 10, "limit {lo}..{hi}: {limits:?}");
    assert!(peak <= 32);
    let auto = pool.stats().auto_size.expect("auto pool reports its limit");
    assert_eq!((auto.floor, auto.ceiling), (2, 32));
    assert_eq!(auto.limit, pool.status().limit);
    assert!(auto.changes > 0 && auto.reason != LimitReason::Initial);
    let last = auto.last_change.expect("it moved");
    assert_eq!(last.to, auto.limit);
    assert!(auto.baseline.is_some());

    let snapshot = snapshotter.snapshot().into_vec();
    let gauge = snapshot
        .iter()
        .find(|(key, _, _, _)| {
            let k = key.key();
            k.name() == "queuepool_limit"
                && k.labels()
                    .any(|l| l.key() == "pool" && l.value() == "auto-test")
        })
        .map(|(_, _, _, v)| v)
        .expect("queuepool_limit gauge");
    assert_eq!(gauge, &DebugValue::Gauge((auto.limit as f64).into()));
}

#[tokio::test(start_paused = true)]
async fn checkouts_above_the_auto_limit_wait_and_time_out_like_at_a_fixed_limit() {
    let (pool, _) = common::pool(
        common::config()
            .pool_size(2)
            .auto_size(2, 8)
            .pool_timeout(Duration::from_secs(1)),
    )
    .await;
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    // The ceiling is 8, but the limit starts at 2 and nothing has been measured yet.
    let t0 = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    // A waiter is served, in order, by the next return.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    common::settle().await;
    assert_eq!(pool.status().waiting, 1);
    let id = a.id;
    drop(a);
    assert_eq!(waiter.await.unwrap().unwrap(), id);
    drop(b);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_pool_reports_its_limit_and_no_controller() {
    let (pool, _) = common::pool(common::config().pool_size(3).max_overflow(4)).await;
    assert_eq!(pool.status().limit, 7);
    assert_eq!(pool.stats().auto_size, None);
}

/// A database far away (every query takes 10 ms whatever the concurrency): the limit
/// climbs to the ceiling, and once there, with as many clients as the ceiling, nobody
/// waits, as with a fixed pool of that size. (Raising the limit while checkouts wait
/// once left a permit free beside a registered waiter: one client waited on every
/// round from then on, 5 % fewer queries and a p99 a round trip longer.)
#[tokio::test(start_paused = true)]
async fn at_its_ceiling_an_auto_pool_lends_as_much_as_a_fixed_pool_of_that_size() {
    let (pool, _) = common::pool(
        common::config()
            .pool_size(2)
            .auto_size(2, 16)
            .pool_timeout(Duration::from_secs(30)),
    )
    .await;
    let end = Instant::now() + Duration::from_secs(12);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        clients.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut conn = pool.get().await.expect("no timeout at this load");
                conn.query(Duration::from_millis(10)).await.expect("query");
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = Vec::new();
    while Instant::now() + Duration::from_millis(100) < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let status = pool.status();
        samples.push((status.limit, status.waiting));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(samples.iter().all(|&(limit, _)| limit == 16), "{samples:?}");
    let waited = samples.iter().filter(|&&(_, waiting)| waiting > 0).count();
    assert_eq!(waited, 0, "samples with a checkout waiting: {samples:?}");
}
