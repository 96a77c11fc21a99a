//! Failover when the primary goes silent (blackholed, not stopped) and the standby is
//! promoted, against a real primary + streaming standby behind fault proxies.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::{TestResult, bounded};
use queuepool::{Pool, PoolConfig, PooledConn};
use queuepool_postgres::PgManager;
use queuepool_testkit::ReplicaSet;
use tokio::sync::Mutex;
use tokio_postgres::types::Type;

const PING_TIMEOUT: Duration = Duration::from_millis(500);

fn node_label(set: &ReplicaSet, i: usize) -> String {
    format!("127.0.0.1:{}", set.proxy(i).port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_a_silent_host_are_dropped_not_pinged_one_by_one() -> TestResult {
    bounded(90, async {
        let set = ReplicaSet::new(1).await?;
        let url = set.url(&[("connect_timeout", "1")]);
        let manager = PgManager::from_url(&url)?.ping_timeout(PING_TIMEOUT);
        let config = PoolConfig::builder()
            .pool_size(4)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        let pool = Pool::new(manager, config).await?;
        assert_eq!(pool.status().idle, 4);
        // Idle long enough to be pre-pinged at the next checkout.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        set.blackhole(0);

        let started = Instant::now();
        let conn = pool.get().await?;
        let took = started.elapsed();
        // One ping waits for its timeout and condemns the host; the 3 other idle
        // connections are closed without a ping (else 4 × 500 ms), and the new one goes
        // to the host that answers (the silent one is tried last).
        assert!(took >= PING_TIMEOUT, "{took:?}");
        assert!(
            took < PING_TIMEOUT * 2 + Duration::from_millis(200),
            "{took:?}"
        );
        assert_eq!(conn.host(), Some(node_label(&set, 1).as_str()));
        conn.simple_query("SELECT 1").await?;
        assert_eq!(pool.stats().invalidated, 4, "{:?}", pool.stats());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_timeout_sends_new_connections_to_the_other_hosts_first() -> TestResult {
    bounded(90, async {
        let set = ReplicaSet::new(1).await?;
        let url = set.url(&[("connect_timeout", "1")]);
        let manager = PgManager::from_url(&url)?;
        let conn = manager.connect_one().await?;
        assert_eq!(conn.host(), Some(node_label(&set, 0).as_str()));
        set.blackhole(0);
        let silent = conn
            .timeout(Duration::from_millis(300), conn.simple_query("SELECT 1"))
            .await;
        assert!(silent.is_err(), "a blackholed host cannot answer");
        // Without the mark, node 0 comes first again and costs its connect_timeout.
        let started = Instant::now();
        let next = manager.connect_one().await?;
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(next.host(), Some(node_label(&set, 1).as_str()));
        Ok(())
    })
    .await
}

/// One write of the load: when it ended, how long it took, the id if acknowledged.
#[derive(Debug, Clone)]
struct Write {
    ended: Instant,
    took: Duration,
    acked: Option<i64>,
    error: Option<String>,
}

async fn writer(
    pool: Pool<PgManager>,
    next: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let id = next.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result: Result<(), String> = async {
            let mut conn = pool.get().await.map_err(|e| format!("checkout: {e}"))?;
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] =
                [(&id, Type::INT8)];
            let insert = conn.query_typed("INSERT INTO acks(id) VALUES ($1)", &params);
            match conn.timeout(Duration::from_secs(1), insert).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    PooledConn::report_error(&mut conn, &e);
                    Err(format!("insert: {e}"))
                }
            }
        }
        .await;
        let write = Write {
            ended: Instant::now(),
            took: started.elapsed(),
            acked: result.is_ok().then_some(id),
            error: result.err(),
        };
        let failed = write.error.is_some();
        log.lock().await.push(write);
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_move_to_the_promoted_standby_when_the_primary_goes_silent() -> TestResult {
    bounded(120, async {
        let set = ReplicaSet::new(1).await?;
        let url = set.url(&[
            ("target_session_attrs", "read-write"),
            ("connect_timeout", "1"),
        ]);
        let pool_timeout = Duration::from_secs(2);
        let connect_timeout = Duration::from_secs(3);
        let manager = PgManager::from_url(&url)?.ping_timeout(PING_TIMEOUT);
        let config = PoolConfig::builder()
            .pool_size(4)
            .max_overflow(0)
            .pool_timeout(pool_timeout)
            .connect_timeout(connect_timeout)
            .build()?;
        let pool = Pool::new(manager, config).await?;
        pool.get()
            .await?
            .batch_execute("CREATE TABLE acks(id bigint PRIMARY KEY)")
            .await?;

        let next = Arc::new(AtomicI64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(writer(
                    pool.clone(),
                    next.clone(),
                    stop.clone(),
                    log.clone(),
                ))
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(1)).await;
        set.blackhole(0);
        // As an operator would before promoting: the standby has what the primary
        // acknowledged (asynchronous replication; replication does not go through the
        // proxy, so the silent primary still streams).
        set.wait_caught_up(0, 1, Duration::from_secs(10)).await?;
        let promote_called = Instant::now();
        set.promote(1).await?;
        let promoted = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await?;
        }

        let log = log.lock().await.clone();
        let acked: Vec<i64> = log.iter().filter_map(|w| w.acked).collect();
        let first_after = log
            .iter()
            .filter(|w| w.acked.is_some() && w.ended > promoted)
            .map(|w| w.ended - promoted)
            .min()
            .ok_or("no write acknowledged after the promotion")?;
        let max_took = log.iter().map(|w| w.took).max().unwrap_or_default();
        let failed = log.iter().filter(|w| w.error.is_some()).count();
        let new_primary = set.cluster(1).admin().await?;
        let rows = new_primary.query("SELECT id FROM acks", &[]).await?;
        let stored: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let lost = acked.iter().filter(|id| !stored.contains(id)).count();
        eprintln!(
            "failover (library): promote took {:?}; first acknowledged write {:?} after it; \
             {} writes, {} acknowledged, {failed} failed, {lost} acknowledged lost; \
             slowest {:?}; errors: {:?}",
            promoted - promote_called,
            first_after,
            log.len(),
            acked.len(),
            max_took,
            log.iter()
                .filter_map(|w| w.error.clone())
                .collect::<std::collections::BTreeSet<_>>()
        );
        assert_eq!(lost, 0, "acknowledged writes lost");
        assert!(
            first_after <= connect_timeout + Duration::from_secs(2),
            "first write after the promotion took {first_after:?}"
        );
        assert!(
            max_took <= pool_timeout + connect_timeout,
            "a write took {max_took:?}"
        );
        // Everything after the promotion settles on the new primary.
        let late_failures = log
            .iter()
            .filter(|w| {
                w.error.is_some() && w.ended > promoted + connect_timeout + Duration::from_secs(2)
            })
            .count();
        assert_eq!(
            late_failures, 0,
            "writes still failing long after the promotion"
        );
        let conn = pool.get().await?;
        assert_eq!(conn.host(), Some(node_label(&set, 1).as_str()));
        Ok(())
    })
    .await
}
