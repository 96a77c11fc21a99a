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

/// The test enum `mood`, read as its label (tokio-postgres has no `FromSql` for a type
/// it learned at run time; this is what a derive would generate).
#[derive(Debug, PartialEq)]
struct Mood(String);

impl<'a> tokio_postgres::types::FromSql<'a> for Mood {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Mood(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "mood" && matches!(ty.kind(), tokio_postgres::types::Kind::Enum(_))
    }
}

/// What 32 tasks saw running `query` on fresh client connections (each iteration's
/// connection is discarded, so each starts with tokio-postgres' type cache empty)
/// until `stop_at_first_error` or `for_how_long`: successes and error texts.
async fn fresh_connection_load<F>(
    pool: &Pool<PgManager>,
    for_how_long: Duration,
    stop_at_first_error: bool,
    query: F,
) -> (usize, Vec<String>)
where
    F: Fn(
            PooledConn<PgManager>,
        )
            -> futures_util::future::BoxFuture<'static, (PooledConn<PgManager>, Result<(), PgError>)>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let until = Instant::now() + for_how_long;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, ok, errors) = (pool.clone(), ok.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    if stop_at_first_error
                        && !errors.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
                    {
                        break;
                    }
                    let conn = match pool.get().await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let text = format!("checkout: {e}");
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(text);
                            continue;
                        }
                    };
                    let (mut conn, result) = query(conn).await;
                    match result {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(e.to_string()),
                    }
                    // The next checkout opens a new client connection: a new lookup.
                    PooledConn::invalidate(&mut conn);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (ok.load(Ordering::Relaxed), errors)
}

async fn mood_db() -> Result<TestDb, Box<dyn std::error::Error + Send + Sync>> {
    let db = TestDb::create().await?;
    db.observer()
        .await?
        .batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await?;
    Ok(db)
}

/// Pins the documented failure (crate docs, "PgBouncer"): a custom enum in a typed
/// query through PgBouncer 1.18 in transaction mode. `query_typed` itself is one round
/// trip, but the enum's OID sends tokio-postgres to its type lookup, a *named*
/// statement prepared in one round trip and executed in the next, which PgBouncer may
/// run on another server connection: `prepared statement "sN" does not exist` (or,
/// when another client's lookup left the same name there, `already exists`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_enum_in_a_typed_query_through_pgbouncer_loses_its_type_lookup() -> TestResult {
    bounded(60, async {
        let db = mood_db().await?;
        let (bouncer, pool) = bouncer_pool(&db).await?;
        let (ok, errors) = fresh_connection_load(&pool, Duration::from_secs(20), true, |conn| {
            Box::pin(async move {
                let result = async {
                    let row = conn.query_typed_one("SELECT 'happy'::mood", &[]).await?;
                    assert_eq!(row.try_get::<_, Mood>(0)?, Mood("happy".into()));
                    Ok::<(), PgError>(())
                }
                .await;
                (conn, result)
            })
        })
        .await;
        let first = errors.first().ok_or_else(|| {
            format!(
                "{ok} lookups through PgBouncer and none failed: the documented failure \
                 did not show (a PgBouncer that keeps prepared statements?); log: {}",
                bouncer.log()
            )
        })?;
        for e in &errors {
            assert!(
                e.contains("prepared statement")
                    && (e.contains("does not exist") || e.contains("already exists")),
                "an error other than the documented one: {e}"
            );
        }
        eprintln!("{ok} lookups succeeded before: {first}");
        Ok(())
    })
    .await
}

/// What the crate docs say works there instead: the enum sent and read as text in a
/// typed query, and the simple protocol. Same load as above (fresh connections, so
/// each would need its own lookup), no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_enum_as_text_through_pgbouncer_transaction_mode_works() -> TestResult {
    bounded(60, async {
        let db = mood_db().await?;
        let (bouncer, pool) = bouncer_pool(&db).await?;
        let (ok, errors) = fresh_connection_load(&pool, Duration::from_secs(4), false, |conn| {
            Box::pin(async move {
                let result = async {
                    let row = conn
                        .query_typed_one(
                            "SELECT $1::text::mood::text AS m, pg_typeof($1::text::mood)::text",
                            &[(&"ok", Type::TEXT)],
                        )
                        .await?;
                    assert_eq!(row.try_get::<_, String>(0)?, "ok");
                    assert_eq!(row.try_get::<_, String>(1)?, "mood", "the value was a mood");
                    let simple = conn.simple_query("SELECT 'sad'::mood").await?;
                    let label = simple.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    assert_eq!(label.as_deref(), Some("sad"));
                    Ok::<(), PgError>(())
                }
                .await;
                (conn, result)
            })
        })
        .await;
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}; pgbouncer log: {}",
            errors.len(),
            errors.first(),
            bouncer.log()
        );
        assert!(ok > 50, "only {ok} iterations in 4 s");
        Ok(())
    })
    .await
}
