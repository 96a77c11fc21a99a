//! A discarded or abandoned connection leaves the server before its slot is reused:
//! `pg_stat_activity`, sampled every 50 ms, never shows more backends of the pool than
//! `pool_size + max_overflow`, and none after `close()`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestResult, bounded, eventually};
use queuepool::{Pool, PoolConfig};
use queuepool_postgres::PgError;
use queuepool_testkit::TestDb;

/// A statement that outlives its cancel request by 0.4 s (it catches the cancel and
/// sleeps on), as a query does that is slow to notice it was cancelled. While it runs,
/// its backend is still there: a pool that frees the slot at once opens one too many.
const LINGERING: &str = "DO $$ BEGIN PERFORM pg_sleep(10); \
     EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(0.4); END $$";

/// Counts the pool's backends every 50 ms until `stop`; returns the highest count.
fn sample(
    db: Arc<TestDb>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let obs = db.observer().await.map_err(|e| e.to_string())?;
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let row = obs
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                    &[&db.name(), &db.application_name()],
                )
                .await
                .map_err(|e| PgError::from(e).to_string())?;
            max = max.max(row.get::<_, i64>(0) as usize);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(max)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_dropped_mid_query_never_take_the_server_past_the_pool_limit() -> TestResult {
    bounded(90, async {
        let db = Arc::new(TestDb::create().await?);
        let limit = 2;
        let config = PoolConfig::builder()
            .pool_size(1)
            .max_overflow(limit - 1)
            .pool_timeout(Duration::from_secs(20))
            .build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample(db.clone(), stop.clone());
        let (timed_out, abandoned) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (pool, timed_out, abandoned) =
                    (pool.clone(), timed_out.clone(), abandoned.clone());
                tokio::spawn(async move {
                    for round in 0..4 {
                        let conn = pool.get().await?;
                        if (w + round) % 2 == 0 {
                            // The bounded query: cancel request, connection discarded.
                            let r = conn
                                .timeout(Duration::from_millis(150), conn.batch_execute(LINGERING))
                                .await;
                            assert!(matches!(r, Err(PgError::Timeout(_))), "{r:?}");
                            timed_out.fetch_add(1, Ordering::Relaxed);
                        } else {
                            // The borrower's future dropped (a client hanging up): the
                            // connection is abandoned, cancelled and settled on return.
                            let r = tokio::time::timeout(
                                Duration::from_millis(150),
                                conn.batch_execute(LINGERING),
                            )
                            .await;
                            assert!(r.is_err(), "the statement outlived the timeout");
                            abandoned.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(conn);
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .collect();
        for w in workers {
            w.await??;
        }
        assert!(timed_out.load(Ordering::Relaxed) >= 4 && abandoned.load(Ordering::Relaxed) >= 4);
        let conns = pool.close(Duration::from_secs(10)).await;
        assert_eq!(conns, 0, "nothing lent at close");
        let gone = eventually(Duration::from_secs(2), || async {
            Ok(db.count_connections(db.application_name()).await? == 0)
        })
        .await?;
        stop.store(true, Ordering::Relaxed);
        let max = sampler.await??;
        assert!(
            max <= limit as usize,
            "{max} backends of a pool limited to {limit}"
        );
        assert!(max >= 1, "the sampler saw the pool");
        assert!(gone, "backends left after close()");
        Ok(())
    })
    .await
}

/// Borrowers that hang up mid-query while `close()` waits for them: their connections
/// are closed as they come back (a cancel request first), so the server holds none of
/// the pool's backends soon after, though each statement would have run 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_dropped_mid_query_while_the_pool_closes_leave_the_server() -> TestResult {
    bounded(60, async {
        let db = Arc::new(TestDb::create().await?);
        let limit = 2;
        let config = PoolConfig::builder()
            .pool_size(limit)
            .max_overflow(0)
            .pool_timeout(Duration::from_secs(5))
            .build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample(db.clone(), stop.clone());
        let (hang_up, hung_up) = tokio::sync::watch::channel(false);
        let running = Arc::new(AtomicUsize::new(0));
        let borrowers: Vec<_> = (0..limit)
            .map(|_| {
                let (pool, running, mut hung_up) = (pool.clone(), running.clone(), hung_up.clone());
                tokio::spawn(async move {
                    let conn = pool.get().await?;
                    running.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        r = conn.batch_execute(LINGERING) => {
                            return Err(format!("the statement ended on its own: {r:?}").into());
                        }
                        _ = hung_up.wait_for(|h| *h) => {}
                    }
                    drop(conn);
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .collect();
        let both = eventually(Duration::from_secs(10), || async {
            let active = db
                .observer()
                .await?
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND query LIKE 'DO %' AND state = 'active'",
                    &[&db.application_name()],
                )
                .await?
                .get::<_, i64>(0);
            Ok(running.load(Ordering::SeqCst) == limit as usize && active == limit as i64)
        })
        .await?;
        assert!(both, "both statements run");

        let closing = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.close(Duration::from_secs(20)).await })
        };
        let closed = eventually(Duration::from_secs(5), || async {
            // Both slots are lent: before close() a checkout waits (and is dropped here).
            let checkout = tokio::time::timeout(Duration::from_millis(50), pool.get()).await;
            Ok(matches!(checkout, Ok(Err(e)) if e.is_closed()))
        })
        .await?;
        assert!(closed, "close() began");
        hang_up.send(true)?;
        for b in borrowers {
            b.await??;
        }
        let lent = tokio::time::timeout(Duration::from_secs(5), closing).await??;
        assert_eq!(lent, 0, "both guards came back within the grace");
        // The statements catch their cancel and linger 0.4 s; without the cancel they
        // would run for 10 s.
        let gone = eventually(Duration::from_secs(2), || async {
            Ok(db.count_connections(db.application_name()).await? == 0)
        })
        .await?;
        stop.store(true, Ordering::Relaxed);
        let max = sampler.await??;
        assert!(gone, "backends left after close()");
        assert!(
            max <= limit as usize,
            "{max} backends of a pool limited to {limit}"
        );
        assert!(max >= 1, "the sampler saw the pool");
        Ok(())
    })
    .await
}
