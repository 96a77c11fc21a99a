//! Behind PgBouncer in transaction mode (Debian package `pgbouncer`, started here).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestResult, bounded};
use queuepool::{Pool, PoolConfig, PooledConn};
use queuepool_postgres::{PgError, PgManager};
use queuepool_testkit::{PgBouncer, TestDb};
use tokio_postgres::types::Type;

/// Server connections PgBouncer may open: fewer than the pool's 8 client connections,
/// so consecutive statements of one client land on different server connections.
const SERVER_POOL: usize = 3;

async fn bouncer_pool(
    db: &TestDb,
) -> Result<(PgBouncer, Pool<PgManager>), Box<dyn std::error::Error + Send + Sync>> {
    let server = db.manager()?;
    let host = match server.pg_config().get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = server
        .pg_config()
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432);
    let bouncer = PgBouncer::start(&host, port, SERVER_POOL).await?;
    let manager = PgManager::from_url(&bouncer.url(db.name(), db.application_name()))?;
    let config = PoolConfig::builder()
        .pool_size(8)
        .max_overflow(0)
        .pool_timeout(Duration::from_secs(10))
        .build()?;
    let pool = Pool::new(manager, config).await?;
    Ok((bouncer, pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_queries_through_pgbouncer_transaction_mode_never_lose_statements() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        db.observer()
            .await?
            .batch_execute("CREATE TABLE t (task int, v int)")
            .await?;
        let (bouncer, pool) = bouncer_pool(&db).await?;
        let ok = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let until = Instant::now() + Duration::from_secs(4);
        let tasks: Vec<_> = (0..32)
            .map(|task: i32| {
                let (pool, ok, errors) = (pool.clone(), ok.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut i = 0i32;
                    while Instant::now() < until {
                        i += 1;
                        let result: Result<(), PgError> = async {
                            let mut conn = pool
                                .get()
                                .await
                                .map_err(|e| PgError::Client(e.to_string()))?;
                            let row = conn
                                .query_typed_one("SELECT $1::int4 * 2", &[(&i, Type::INT4)])
                                .await
                                .map_err(PgError::from)?;
                            if row.get::<_, i32>(0) != i * 2 {
                                return Err(PgError::Client("wrong result".into()));
                            }
                            // A transaction with parameters: one server connection throughout.
                            let tx = conn.transaction().await.map_err(PgError::from)?;
                            tx.query_typed(
                                "INSERT INTO t VALUES ($1, $2)",
                                &[(&task, Type::INT4), (&i, Type::INT4)],
                            )
                            .await
                            .map_err(PgError::from)?;
                            tx.commit().await.map_err(PgError::from)?;
                            Ok(())
                        }
                        .await;
                        match result {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}; pgbouncer log: {}",
            errors.len(),
            errors.first(),
            bouncer.log()
        );
        let done = ok.load(Ordering::Relaxed);
        eprintln!("{done} iterations (typed query + transaction) through PgBouncer in 4 s");
        assert!(done > 100, "only {done} iterations in 4 s");
        let rows: i64 = db
            .observer()
            .await?
            .query_one("SELECT count(*) FROM t", &[])
            .await?
            .get(0);
        assert_eq!(rows, done as i64, "every committed insert is there");
        Ok(())
    })
    .await
}

/// The hazard the default path avoids: tokio-postgres' `query(&str)` prepares a named
/// statement in one round trip and executes it in the next, which PgBouncer may send
/// to another server connection. This test proves the setup above really mixes server
/// connections (if it did not, the test above would prove nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_through_pgbouncer_transaction_mode_do_get_lost() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let (_bouncer, pool) = bouncer_pool(&db).await?;
        let seen = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (pool, seen) = (pool.clone(), seen.clone());
                tokio::spawn(async move {
                    while Instant::now() < until && seen.load(Ordering::Relaxed) == 0 {
                        let Ok(mut conn) = pool.get().await else {
                            continue;
                        };
                        if let Err(e) = conn.query("SELECT $1::int4", &[&1i32]).await {
                            let e = PgError::from(e);
                            if e.to_string().contains("prepared statement")
                                && e.to_string().contains("does not exist")
                            {
                                seen.fetch_add(1, Ordering::Relaxed);
                            }
                            PooledConn::report_error(&mut conn, &e);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        assert!(
            seen.load(Ordering::Relaxed) > 0,
            "expected `prepared statement .. does not exist` with named statements"
        );
        Ok(())
    })
    .await
}

/// PgBouncer here has no TLS: with `sslmode=prefer` it answers the SSLRequest with
/// `N` and the session continues in plaintext; the status must still be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_without_server_tls_falls_back_to_plaintext_and_tracks_status() -> TestResult {
    bounded(60, async {
        let db = TestDb::create().await?;
        let (bouncer, _pool) = bouncer_pool(&db).await?;
        let url = bouncer
            .url(db.name(), db.application_name())
            .replace("sslmode=disable", "sslmode=prefer");
        let conn = PgManager::from_url(&url)?.connect_one().await?;
        assert_eq!(
            conn.transaction_status(),
            queuepool_postgres::TxStatus::Idle
        );
        conn.simple_query("BEGIN").await?;
        assert_eq!(
            conn.transaction_status(),
            queuepool_postgres::TxStatus::InTransaction
        );
        conn.simple_query("COMMIT").await?;
        assert_eq!(
            conn.transaction_status(),
            queuepool_postgres::TxStatus::Idle
        );
        Ok(())
    })
    .await
}
