//! In-flight tracking against the real server: a clean return costs no round trip, and
//! a connection is never lent inside a transaction, with a query pending or with a
//! `COPY` open, whichever query path the borrower used and wherever its future was
//! dropped.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{TestResult, bounded};
use futures_util::{SinkExt, StreamExt};
use queuepool::{Pool, PoolConfig, ResetOnReturn};
use queuepool_postgres::{PgConnection, PgManager, TxStatus};
use queuepool_testkit::TestDb;
use tokio_postgres::Error;
use tokio_postgres::types::Type;

const SLOW: &str = "SELECT pg_sleep(0.03)";

/// Each query path a borrower can take, run inside `BEGIN` ... `COMMIT`, so that a drop
/// anywhere leaves an open transaction, a running query or an open `COPY` behind.
#[derive(Debug, Clone, Copy)]
enum Path {
    Query,
    QueryOne,
    QueryTyped,
    Execute,
    SimpleQuery,
    BatchExecute,
    Prepare,
    QueryRaw,
    SimpleQueryRaw,
    CopyOut,
    CopyIn,
    Transaction,
}

const PATHS: [Path; 12] = [
    Path::Query,
    Path::QueryOne,
    Path::QueryTyped,
    Path::Execute,
    Path::SimpleQuery,
    Path::BatchExecute,
    Path::Prepare,
    Path::QueryRaw,
    Path::SimpleQueryRaw,
    Path::CopyOut,
    Path::CopyIn,
    Path::Transaction,
];

async fn run_path(path: Path, conn: &mut PgConnection) -> Result<(), Error> {
    if let Path::Transaction = path {
        let tx = conn.transaction().await?;
        tx.execute(SLOW, &[]).await?;
        tx.batch_execute("INSERT INTO t VALUES (1)").await?;
        return tx.commit().await;
    }
    conn.batch_execute("BEGIN").await?;
    match path {
        Path::Query => drop(conn.query(SLOW, &[]).await?),
        Path::QueryOne => drop(conn.query_one(SLOW, &[]).await?),
        Path::QueryTyped => drop(conn.query_typed(SLOW, &[]).await?),
        Path::Execute => drop(conn.execute(SLOW, &[]).await?),
        Path::SimpleQuery => drop(conn.simple_query(SLOW).await?),
        Path::BatchExecute => conn.batch_execute(SLOW).await?,
        Path::Prepare => drop(conn.prepare("SELECT $1::int4 FROM pg_sleep(0.03)").await?),
        Path::QueryRaw => {
            let mut rows = pin!(
                conn.query_raw("SELECT generate_series(1, 20000)", [0i32; 0])
                    .await?
            );
            while let Some(row) = rows.next().await {
                row?;
            }
        }
        Path::SimpleQueryRaw => {
            let mut rows = pin!(
                conn.simple_query_raw("SELECT generate_series(1, 20000)")
                    .await?
            );
            while let Some(m) = rows.next().await {
                m?;
            }
        }
        Path::CopyOut => {
            let mut data = pin!(
                conn.copy_out("COPY (SELECT generate_series(1, 20000)) TO STDOUT")
                    .await?
            );
            while let Some(chunk) = data.next().await {
                chunk?;
            }
        }
        Path::CopyIn => {
            let mut sink = conn.copy_in("COPY t FROM STDIN").await?;
            for i in 0..3 {
                sink.send(bytes::Bytes::from(format!("{i}\n"))).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sink.finish().await?;
        }
        Path::Transaction => unreachable!("handled above"),
    }
    conn.batch_execute("COMMIT").await
}

/// Polls `fut` `polls` times, letting the driver run between polls; returns its output
/// if it completed. Otherwise it is dropped right after its last poll (`linger`
/// false: its request was just sent) or 1 ms later (`linger` true: the server may
/// have answered).
async fn poll_then_drop<F: Future>(fut: F, polls: usize, linger: bool) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for i in 0..polls {
        let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = polled {
            return Some(out);
        }
        if linger || i + 1 < polls {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    None
}

/// One connection, so every checkout gets the one the previous borrower returned.
async fn single(
    db: &TestDb,
    reset: ResetOnReturn,
) -> Result<Pool<PgManager>, Box<dyn std::error::Error + Send + Sync>> {
    let config = PoolConfig::builder()
        .pool_size(1)
        .max_overflow(0)
        .reset_on_return(reset)
        .pool_timeout(Duration::from_secs(10))
        .build()?;
    Ok(Pool::new(db.manager()?, config).await?)
}

/// What the next borrower sees: no transaction (the server says so in the
/// `ReadyForQuery` of its first query), no queued request in front of it.
async fn assert_clean(pool: &Pool<PgManager>, what: &str) -> TestResult {
    let started = Instant::now();
    let conn = pool.get().await?;
    let rows = conn.simple_query("SELECT 1").await?;
    assert!(!rows.is_empty(), "{what}");
    assert_eq!(
        conn.transaction_status(),
        TxStatus::Idle,
        "{what}: lent inside a transaction"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what}: the next borrower waited {:?} behind an abandoned request",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_lends_a_connection_mid_transaction_mid_query_or_mid_copy_wherever_dropped()
-> TestResult {
    bounded(240, async {
        let db = TestDb::create().await?;
        let pool = single(&db, ResetOnReturn::Rollback).await?;
        pool.get()
            .await?
            .batch_execute("CREATE TABLE t (i int)")
            .await?;
        for (path, linger) in PATHS.into_iter().flat_map(|p| [(p, false), (p, true)]) {
            let mut polls = 1;
            loop {
                let mut conn = pool.get().await?;
                let outcome = poll_then_drop(run_path(path, &mut conn), polls, linger).await;
                drop(conn);
                let what = format!("{path:?} dropped after {polls} polls (linger: {linger})");
                assert_clean(&pool, &what).await?;
                if let Some(result) = outcome {
                    result.map_err(|e| {
                        format!(
                            "{path:?} after {polls} polls: {}",
                            queuepool_postgres::PgError::from(e)
                        )
                    })?;
                    break;
                }
                polls += 1;
                assert!(polls < 400, "{path:?} never completed");
            }
            // BEGIN, the path's request(s), COMMIT: at least three places to drop it
            // (typically 4 to 20 polls, as the driver delivers messages).
            assert!(
                polls >= 3,
                "{path:?}: the matrix dropped it at {polls} points only"
            );
        }
        pool.close(Duration::from_secs(5)).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_long_query_is_cancelled_before_the_connection_is_lent_again() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let pool = single(&db, ResetOnReturn::Rollback).await?;
        let pid: i32 = {
            let conn = pool.get().await?;
            conn.query_typed_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0)
        };
        for path in [Path::Query, Path::SimpleQuery, Path::BatchExecute] {
            let conn = pool.get().await?;
            let sleep = "SELECT pg_sleep(30)";
            let fut = async {
                match path {
                    Path::Query => conn.query(sleep, &[]).await.map(drop),
                    Path::SimpleQuery => conn.simple_query(sleep).await.map(drop),
                    _ => conn.batch_execute(sleep).await,
                }
            };
            // Long enough for the query to be running on the server.
            let _ = tokio::time::timeout(Duration::from_millis(200), fut).await;
            drop(conn);
            assert_clean(&pool, &format!("{path:?} abandoned in pg_sleep(30)")).await?;
            let conn = pool.get().await?;
            let same: i32 = conn
                .query_typed_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            assert_eq!(same, pid, "settled and kept, not discarded");
        }
        pool.close(Duration::from_secs(5)).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_return_sends_nothing_and_the_raw_client_costs_one_empty_query() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let pool = single(&db, ResetOnReturn::Rollback).await?;
        let obs = db.observer().await?;
        let last_query = || async {
            // pg_stat_activity shows the last statement each backend received; a reset
            // (empty query or ROLLBACK) would replace it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let row = obs
                .query_typed_one(
                    "SELECT query FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                    &[(&db.name(), Type::TEXT), (&db.application_name(), Type::TEXT)],
                )
                .await?;
            Ok::<String, Box<dyn std::error::Error + Send + Sync>>(row.get(0))
        };
        {
            let conn = pool.get().await?;
            conn.query_typed_one("SELECT 1 AS tracked_marker", &[]).await?;
            conn.simple_query("SELECT 2 AS tracked_marker").await?;
        }
        assert_eq!(last_query().await?, "SELECT 2 AS tracked_marker", "no round trip on return");
        {
            let conn = pool.get().await?;
            conn.batch_execute("BEGIN; SELECT 3 AS in_tx").await?;
        }
        assert_eq!(last_query().await?, "ROLLBACK", "an open transaction gets ROLLBACK only");
        {
            let conn = pool.get().await?;
            conn.client_ref().simple_query("SELECT 4 AS raw_marker").await?;
        }
        assert_eq!(last_query().await?, "", "the raw client is settled by one empty query");
        {
            let conn = pool.get().await?;
            let err = conn.simple_query("SELECT 1/0").await;
            assert!(err.is_err());
        }
        assert_eq!(last_query().await?, "", "a failed request is settled by one empty query");
        assert_clean(&pool, "after the error").await?;
        pool.close(Duration::from_secs(5)).await;
        Ok(())
    })
    .await
}

/// On record: what a pool that does not reset (SQLAlchemy's `reset_on_return=None`)
/// hands the next borrower after a return inside `BEGIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reset_the_next_borrower_inherits_the_open_transaction() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let pool = single(&db, ResetOnReturn::None).await?;
        {
            let conn = pool.get().await?;
            conn.batch_execute("BEGIN").await?;
        }
        let conn = pool.get().await?;
        conn.simple_query("SELECT 1").await?;
        assert_eq!(conn.transaction_status(), TxStatus::InTransaction);
        drop(conn);
        pool.close(Duration::from_secs(5)).await;
        Ok(())
    })
    .await
}
