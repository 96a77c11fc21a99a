//! Pool rules proven against the real PostgreSQL server (DATABASE_URL or 127.0.0.1:5432).

mod common;

use std::time::Duration;

use common::{TestResult, bounded, eventually};
use queuepool::{Pool, PoolConfig, PooledConn};
use queuepool_postgres::{PgError, PgManager, ResetMode, TxStatus};
use queuepool_testkit::TestDb;

async fn backend_pid(conn: &queuepool_postgres::PgConnection) -> Result<i32, PgError> {
    let row = conn.query_typed_one("SELECT pg_backend_pid()", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_overflow_and_fall_back_are_visible_in_pg_stat_activity() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let app = db.application_name().to_owned();
        let config = PoolConfig::builder()
            .pool_size(5)
            .max_overflow(10)
            .overflow_idle(Duration::from_millis(300))
            .pool_timeout(Duration::from_secs(10))
            .build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        assert_eq!(
            db.count_connections(&app).await?,
            5,
            "prefill opens pool_size connections"
        );

        let mut holders = Vec::new();
        for _ in 0..15 {
            holders.push(pool.get().await?);
        }
        let mut pids = Vec::new();
        for conn in &holders {
            pids.push(backend_pid(conn).await?);
        }
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 15, "15 holders use 15 distinct backends");
        assert_eq!(db.count_connections(&app).await?, 15);
        assert_eq!(pool.status().overflow, 10);
        drop(holders);

        let fell_back = eventually(Duration::from_secs(5), || async {
            Ok(db.count_connections(&app).await? == 5)
        })
        .await?;
        assert!(
            fell_back,
            "overflow connections closed after overflow_idle, pool_size kept"
        );
        assert_eq!(pool.status().idle, 5);
        pool.close(Duration::from_secs(1)).await;
        Ok(())
    })
    .await
}

/// Runs `n` sequential requests (`SELECT 1`), reporting errors to the pool as a service
/// would; returns the number that failed.
async fn run_requests(pool: &Pool<PgManager>, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        match pool.get().await {
            Ok(mut conn) => {
                if let Err(e) = conn.simple_query("SELECT 1").await {
                    let e = PgError::from(e);
                    PooledConn::report_error(&mut conn, &e);
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    failed
}

async fn terminated_pool(
    pre_ping: bool,
) -> Result<(TestDb, Pool<PgManager>, Vec<i32>), Box<dyn std::error::Error + Send + Sync>> {
    let db = TestDb::create().await?;
    let config = PoolConfig::builder()
        .pool_size(5)
        .max_overflow(5)
        .pre_ping(pre_ping)
        .build()?;
    let pool = Pool::new(db.manager()?, config).await?;
    let app = db.application_name().to_owned();
    let before = db.backend_pids(&app).await?;
    assert_eq!(before.len(), 5);
    assert_eq!(db.terminate_all(&app).await?, 5);
    // Past the pool's "used within the last second" ping exemption, and let the
    // backends go.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Ok((db, pool, before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_with_pre_ping_fail_no_request() -> TestResult {
    bounded(60, async {
        let (db, pool, before) = terminated_pool(true).await?;
        let failed = run_requests(&pool, 100).await;
        assert_eq!(failed, 0, "pre-ping hides every terminated connection");
        let after = db.backend_pids(db.application_name()).await?;
        assert!(
            after.iter().all(|p| !before.contains(p)),
            "all replaced: {before:?} -> {after:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_without_pre_ping_fail_at_most_one_request_and_pool_is_replaced()
-> TestResult {
    bounded(60, async {
        let (db, pool, before) = terminated_pool(false).await?;
        let failed = run_requests(&pool, 100).await;
        assert!(
            failed <= 1,
            "{failed} requests failed; pool-wide invalidation allows one"
        );
        let after = db.backend_pids(db.application_name()).await?;
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|p| !before.contains(p)),
            "all replaced: {before:?} -> {after:?}"
        );
        assert!(pool.stats().invalidated >= 4, "stats: {:?}", pool.stats());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_older_than_pool_recycle_is_replaced() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let config = PoolConfig::builder()
            .pool_size(1)
            .max_overflow(0)
            .pool_recycle(Some(Duration::from_secs(1)))
            .build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        let first = backend_pid(&*pool.get().await?).await?;
        let again = backend_pid(&*pool.get().await?).await?;
        assert_eq!(first, again, "reused before pool_recycle");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let later = backend_pid(&*pool.get().await?).await?;
        assert_ne!(first, later, "recycled after pool_recycle");
        assert!(pool.stats().recycled >= 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_open_transaction_is_rolled_back_before_the_next_borrower() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let observer = db.observer().await?;
        observer.batch_execute("CREATE TABLE t (v int)").await?;
        let config = PoolConfig::builder().pool_size(1).max_overflow(0).build()?;
        let pool = Pool::new(db.manager()?, config).await?;

        let pid = {
            let conn = pool.get().await?;
            conn.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
                .await?;
            assert_eq!(conn.transaction_status(), TxStatus::InTransaction);
            backend_pid(&conn).await?
        }; // returned with the transaction open

        let conn = pool.get().await?;
        assert_eq!(
            backend_pid(&conn).await?,
            pid,
            "same connection, reset not discarded"
        );
        assert_eq!(
            conn.transaction_status(),
            TxStatus::Idle,
            "next borrower is not in a transaction"
        );
        conn.batch_execute("INSERT INTO t VALUES (2)").await?; // autocommits
        drop(conn);
        let rows = observer.query("SELECT v FROM t ORDER BY v", &[]).await?;
        let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(values, vec![2], "the uncommitted row was rolled back");
        Ok(())
    })
    .await
}

/// The last statement the server ran for `pid`, once it differs from `not`.
async fn last_query(
    db: &TestDb,
    pid: i32,
    not: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let obs = db.observer().await?;
    let mut last = String::new();
    for _ in 0..40 {
        let row = obs
            .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await?;
        last = row.get(0);
        if last != not {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_sends_rollback_only_when_the_server_reports_a_transaction() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let config = PoolConfig::builder().pool_size(1).max_overflow(0).build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        let pid = backend_pid(&*pool.get().await?).await?;

        {
            let conn = pool.get().await?;
            conn.simple_query("SELECT 42").await?;
        }
        // A clean connection whose requests all completed gets no round trip at all
        // (no ROLLBACK, no server warning, not even an empty query).
        assert_eq!(last_query(&db, pid, "SELECT 42").await?, "SELECT 42");

        {
            let conn = pool.get().await?;
            conn.simple_query("BEGIN").await?;
        }
        assert_eq!(last_query(&db, pid, "BEGIN").await?, "ROLLBACK");

        {
            let conn = pool.get().await?;
            // A failed transaction ('E') is rolled back too. tokio-postgres returns the
            // error at the server's ErrorResponse; the ReadyForQuery that carries the
            // status follows it and may not have been read yet (what the reset's
            // settling query is for), so the status is awaited, bounded.
            let _ = conn.simple_query("BEGIN; SELECT 1/0").await;
            eventually(Duration::from_secs(5), || async {
                Ok(conn.transaction_status() == TxStatus::Failed)
            })
            .await?;
            assert_eq!(conn.transaction_status(), TxStatus::Failed);
        }
        assert_eq!(last_query(&db, pid, "BEGIN; SELECT 1/0").await?, "ROLLBACK");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_mode_resets_session_state() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let config = PoolConfig::builder().pool_size(1).max_overflow(0).build()?;
        let manager = db.manager()?.reset_mode(ResetMode::DiscardAll);
        let pool = Pool::new(manager, config).await?;
        {
            let conn = pool.get().await?;
            conn.batch_execute("SET search_path TO pg_catalog; CREATE TEMP TABLE tmp (v int)")
                .await?;
        }
        let conn = pool.get().await?;
        let row = conn.query_typed_one("SHOW search_path", &[]).await?;
        assert_eq!(row.get::<_, String>(0), "\"$user\", public");
        assert!(
            conn.simple_query("SELECT * FROM tmp").await.is_err(),
            "temp table discarded"
        );
        Ok(())
    })
    .await
}

/// tokio-postgres looks custom types up with named statements it prepares once per
/// connection and keeps; a real `DISCARD ALL` deallocates them behind its back, and the
/// second custom type after a reset failed with `prepared statement "s1" does not exist`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_mode_keeps_the_driver_type_lookups_working() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let config = PoolConfig::builder().pool_size(1).max_overflow(0).build()?;
        let manager = db.manager()?.reset_mode(ResetMode::DiscardAll);
        let pool = Pool::new(manager, config).await?;
        pool.get()
            .await?
            .batch_execute(
                "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TYPE color AS ENUM ('red', 'blue'); \
                 CREATE TYPE pair AS (a int4, b text)",
            )
            .await?;
        for (i, sql) in ["SELECT $1::mood", "SELECT $1::color", "SELECT $1::pair", "SELECT $1::mood[]"]
            .into_iter()
            .enumerate()
        {
            let conn = pool.get().await?;
            conn.batch_execute("SET application_name = 'changed'").await?;
            let stmt = conn
                .prepare(sql)
                .await
                .map_err(|e| format!("custom type #{} after {i} resets: {}", i + 1, PgError::from(e)))?;
            assert_eq!(stmt.params().len(), 1);
        }
        let conn = pool.get().await?;
        let row = conn.query_typed_one("SHOW application_name", &[]).await?;
        assert_eq!(row.get::<_, String>(0), db.application_name(), "the session was reset");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_keeps_one_named_statement_per_sql() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let count_sql = "SELECT count(*)::int4 FROM pg_prepared_statements";

        let mut cached = db
            .manager()?
            .statement_cache_capacity(8)
            .connect_one()
            .await?;
        for i in 0..3 {
            let stmt = cached.prepare_cached("SELECT $1::int4 + 1").await?;
            let row = cached.query_one(&stmt, &[&i]).await?;
            assert_eq!(row.get::<_, i32>(0), i + 1);
        }
        assert_eq!(cached.cached_statements(), 1);
        let n: i32 = cached.query_typed_one(count_sql, &[]).await?.get(0);
        assert_eq!(n, 1, "one server-side statement reused");

        let mut uncached = db.manager()?.connect_one().await?;
        for _ in 0..3 {
            let stmt = uncached.prepare_cached("SELECT $1::int4 + 1").await?;
            uncached.query_one(&stmt, &[&1i32]).await?;
        }
        assert_eq!(uncached.cached_statements(), 0);
        let n: i32 = uncached.query_typed_one(count_sql, &[]).await?.get(0);
        assert_eq!(n, 0, "without the cache each statement is closed after use");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_defaults_to_queuepool_on_the_server() -> TestResult {
    bounded(60, async {
        let manager = PgManager::from_url(&queuepool_testkit::database_url())?;
        let default = PgManager::from_url("postgres://u@h/db")?;
        assert_eq!(default.application_name(), "queuepool");
        let conn = manager.connect_one().await?;
        let row = conn.query_typed_one("SHOW application_name", &[]).await?;
        assert_eq!(row.get::<_, String>(0), manager.application_name());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_message_and_sqlstate_and_are_not_disconnects() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let conn = db.manager()?.connect_one().await?;
        let err = PgError::from(
            conn.simple_query("SELECT * FROM no_such_table")
                .await
                .err()
                .ok_or("expected an error")?,
        );
        assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
        assert!(
            err.to_string()
                .contains("relation \"no_such_table\" does not exist"),
            "{err}"
        );
        assert!(!err.is_disconnect());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shutdown_of_a_connection_is_a_disconnect() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let conn = db.manager()?.connect_one().await?;
        assert_eq!(db.terminate_all(db.application_name()).await?, 1);
        let err = PgError::from(
            conn.simple_query("SELECT 1")
                .await
                .err()
                .ok_or("expected an error")?,
        );
        assert!(err.is_disconnect(), "{err:?}");
        let closed = eventually(Duration::from_secs(2), || async { Ok(conn.is_closed()) }).await?;
        assert!(closed, "the client sees its connection closed");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_helper_cancels_the_query_on_the_server() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let conn = db.manager()?.connect_one().await?;
        let pid = backend_pid(&conn).await?;
        let started = std::time::Instant::now();
        let err = conn
            .timeout(
                Duration::from_millis(300),
                conn.simple_query("SELECT pg_sleep(20)"),
            )
            .await
            .err()
            .ok_or("pg_sleep(20) cannot finish in 300 ms")?;
        assert!(matches!(err, PgError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(conn.is_broken(), "a timed-out connection is not reused");
        let obs = db.observer().await?;
        let cancelled = eventually(Duration::from_secs(3), || async {
            let row = obs
                .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await?;
            Ok(row.get::<_, Option<String>>(0).as_deref() == Some("idle"))
        })
        .await?;
        assert!(
            cancelled,
            "the cancel request stopped pg_sleep on the server"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_option_is_enforced_by_the_server() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let conn = db
            .manager()?
            .statement_timeout(Duration::from_millis(200))
            .connect_one()
            .await?;
        let err = PgError::from(
            conn.simple_query("SELECT pg_sleep(5)")
                .await
                .err()
                .ok_or("statement_timeout must cancel pg_sleep(5)")?,
        );
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        assert!(!err.is_disconnect());
        conn.simple_query("SELECT 1").await?; // the connection is still usable
        Ok(())
    })
    .await
}

/// When `pid` last changed state, and its last query.
async fn state_change(
    obs: &queuepool_postgres::PgConnection,
    pid: i32,
) -> Result<(String, String), tokio_postgres::Error> {
    let row = obs
        .client_ref()
        .query_one(
            "SELECT state_change::text, query FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_checkout_skips_the_reset_round_trip() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let config = PoolConfig::builder().pool_size(1).max_overflow(0).build()?;
        let pool = Pool::new(db.manager()?, config).await?;
        let pid = backend_pid(&*pool.get().await?).await?;
        let obs = db.observer().await?;
        // The used connection went back without a round trip: its last query stays.
        let idle = eventually(Duration::from_secs(2), || async {
            Ok(state_change(&obs, pid).await?.1 == "SELECT pg_backend_pid()")
        })
        .await?;
        assert!(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = state_change(&obs, pid).await?;
        for _ in 0..5 {
            let conn = pool.get().await?;
            assert_eq!(conn.transaction_status(), TxStatus::Idle);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            state_change(&obs, pid).await?,
            before,
            "no round trip for unused checkouts"
        );
        Ok(())
    })
    .await
}
